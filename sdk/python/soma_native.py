"""Run a Soma Python capsule natively (CPython on the host) with stand-ins
for the componentize-py bindings.

``soma build`` runs it to read what ``describe()`` asks for before it
componentizes, so the component imports only those capabilities::

    python3 soma_native.py describe APP_DIR [PYTHON_PATH ...]

prints ``{"name", "version", "kind", "capabilities": [{"name", "args"}]}``.

Tests import ``app.py`` against the real ``soma`` SDK with it::

    host = soma_native.install(llm_answer="hello")   # or ("Denied", "why")
    import app
    world = app.WitWorld()
    ...
    host.uninstall()

``host.requests`` holds the chat requests, ``host.logged`` the log lines
(level name, message), ``host.Err`` is ``componentize_py_types.Err``.
Capabilities other than ``llm`` and ``log`` are inert stand-ins. This is
not the host: limits, fuel and grants are Soma's and apply only in the
component (``soma run``).
"""

import enum
import importlib.abc
import importlib.util
import json
import sys
import types
from dataclasses import dataclass

__all__ = ["Host", "install", "describe"]


class _Stub(types.ModuleType):
    """A bindings module: named attributes set, anything else a dummy class."""

    def __getattr__(self, name):
        # wit_world and wit_world.imports hold modules: `from wit_world.imports
        # import log` must import the submodule, not get a dummy.
        if name.startswith("__") or self.__name__ in ("wit_world", "wit_world.imports"):
            raise AttributeError(name)
        cls = type(name, (), {"__init__": lambda self, *a, **k: setattr(self, "args", a)})
        setattr(self, name, cls)
        return cls


def _is_binding(name: str) -> bool:
    return name in ("componentize_py_types", "wit_world") or name.startswith("wit_world.imports")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes a stand-in for any ``wit_world.imports.*`` module asked for."""

    def __init__(self, host: "Host"):
        self.host = host

    def find_spec(self, fullname, path, target=None):
        if _is_binding(fullname):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return self.host.module(spec.name)

    def exec_module(self, module):
        pass


class Host:
    """The stand-in bindings and what the capsule did through them."""

    def __init__(self, llm_answer=None):
        self.llm_answer = llm_answer
        self.requests = []
        self.logged = []
        self.modules = {}
        self._finder = _Finder(self)
        self._saved = {}

        class Err(Exception):
            def __init__(self, value):
                super().__init__(value)
                self.value = value

        self.Err = Err

    def module(self, name: str) -> _Stub:
        """The stand-in for bindings module ``name`` (made on first use)."""
        if name in self.modules:
            return self.modules[name]
        module = _Stub(name)
        module.__path__ = []  # a package: the import system looks for submodules
        self.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(self.module(parent), child, module)
        leaf = name.rsplit(".", 1)[-1]
        getattr(self, f"_fill_{leaf}", lambda m: None)(module)
        return module

    def _fill_componentize_py_types(self, m):
        m.Err = self.Err

    def _fill_wit_world(self, m):
        m.WitWorld = type("WitWorld", (), {})

    def _fill_soma_capsule_types(self, t):
        t.CapsuleKind = enum.Enum("CapsuleKind", "WORKER PLANNER GATE")
        t.CapabilityRequest = _record("CapabilityRequest", "name args")
        t.LimitsRequest = _record("LimitsRequest", "fuel memory_mb timeout_ms")
        t.CapsuleInfo = _record(
            "CapsuleInfo",
            "name version description kind input_schema output_schema capabilities limits",
        )
        t.CapsuleError = _record("CapsuleError", "code message retryable")

    _fill_types = _fill_soma_capsule_types

    def _fill_log(self, m):
        m.Level = enum.Enum("Level", "TRACE DEBUG INFO WARN ERROR")
        m.log = lambda level, message, fields: self.logged.append((level.name, message))

    def _fill_llm(self, llm):
        llm.Role = enum.Enum("Role", "SYSTEM USER ASSISTANT")
        llm.ChatRequest = _record("ChatRequest", "model messages max_tokens temperature stop")
        llm.Message = _record("Message", "role content")
        llm.Completion = _record("Completion", "text model")
        for kind in ("BudgetExceeded", "Unavailable", "Denied", "Invalid"):
            setattr(llm, f"LlmError_{kind}", _record(f"LlmError_{kind}", "value"))

        def chat(request):
            self.requests.append(request)
            if self.llm_answer is None:
                raise self.Err(llm.LlmError_Unavailable("no LLM in soma_native"))
            if isinstance(self.llm_answer, tuple):
                kind, why = self.llm_answer
                raise self.Err(getattr(llm, f"LlmError_{kind}")(why))
            return llm.Completion(self.llm_answer, "fake-model")

        llm.chat = chat

    def install(self) -> "Host":
        """Put the stand-ins first on ``sys.meta_path`` and forget any
        ``soma``, ``app`` or bindings module imported before."""
        for name in list(sys.modules):
            if _is_binding(name) or name in ("soma", "app") or name.startswith("soma."):
                self._saved[name] = sys.modules.pop(name)
        sys.meta_path.insert(0, self._finder)
        return self

    def uninstall(self) -> None:
        """Undo :meth:`install`."""
        if self._finder in sys.meta_path:
            sys.meta_path.remove(self._finder)
        for name in list(sys.modules):
            if _is_binding(name) or name in ("soma", "app") or name.startswith("soma."):
                del sys.modules[name]
        sys.modules.update(self._saved)
        self._saved = {}


def _record(name: str, fields: str) -> type:
    return dataclass(type(name, (), {"__annotations__": {f: object for f in fields.split()}}))


def install(llm_answer=None) -> Host:
    """A :class:`Host` answering chats with ``llm_answer`` (a str, or
    ``(kind, why)`` for an ``LlmError_<kind>``), installed."""
    return Host(llm_answer).install()


def describe(app_dir: str, python_path=()) -> dict:
    """What ``app.py`` in ``app_dir``'s ``describe()`` returns, as a dict."""
    host = install()
    sys.path[:0] = [app_dir, *python_path]
    try:
        import app

        info = app.WitWorld().describe()
        return {
            "name": info.name,
            "version": info.version,
            "kind": info.kind.name.lower(),
            "capabilities": [{"name": c.name, "args": list(c.args)} for c in info.capabilities],
        }
    finally:
        del sys.path[: 1 + len(python_path)]
        host.uninstall()


def _main(argv) -> int:
    if len(argv) < 2 or argv[0] != "describe":
        print("usage: soma_native.py describe APP_DIR [PYTHON_PATH ...]", file=sys.stderr)
        return 2
    sys.dont_write_bytecode = True
    print(json.dumps(describe(argv[1], argv[2:])))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
