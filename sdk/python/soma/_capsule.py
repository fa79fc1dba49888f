"""The capsule base class, its description, its errors and the export."""

import importlib as _importlib
import json as _json
import traceback as _traceback

from componentize_py_types import Err as _Err

from wit_world import WitWorld as _WitWorld


def binding(*names: str, capability: str = "", ask: str = ""):
    """The componentize-py bindings module ``wit_world.imports.NAME``, the
    first of ``names`` that exists (componentize-py names a module by its
    interface, or by package and interface when two interfaces share a
    name, e.g. ``soma:capsule/types`` beside ``wasi:http/types``).

    ``soma build`` links a capability's interface only when ``describe()``
    asks for it; when none of ``names`` exists the ImportError says to add
    ``ask`` (e.g. ``.wants_kv()``) to ``describe()``."""
    for name in names:
        try:
            return _importlib.import_module(f"wit_world.imports.{name}")
        except ModuleNotFoundError:
            continue
    if not capability:
        raise ImportError(
            f"the bindings have no wit_world.imports.{names[0]}: build the capsule "
            "with soma build, against Soma's WIT"
        )
    raise ImportError(
        f"soma.{capability} needs the {capability} capability, which this capsule's "
        f"describe() does not ask for: add {ask} to describe() and rebuild "
        "(soma build links only the capabilities describe() asks for)"
    )


_types = binding("soma_capsule_types", "types")


class CapsuleError(Exception):
    """An error a capsule reports from :meth:`Capsule.run`.

    The host shows it to the caller as a ``capsule-error`` failure with this
    code and message, distinct from traps and host-enforced limits.
    Schedulers retry only retryable errors.
    """

    def __init__(self, code: str, message: str, retryable: bool = False):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable

    @classmethod
    def bad_input(cls, message: str) -> "CapsuleError":
        """The input could not be understood."""
        return cls("bad-input", message)

    def __repr__(self) -> str:
        return f"CapsuleError({self.code!r}, {self.message!r}, retryable={self.retryable})"


class Info:
    """What a capsule says about itself, built with :meth:`worker`,
    :meth:`planner` or :meth:`gate` and the chained setters."""

    def __init__(self, kind: "_types.CapsuleKind", name: str, version: str):
        self.name = name
        self.version = version
        self.kind = kind
        self._description = ""
        self._input_schema = "{}"
        self._output_schema = "{}"
        self._capabilities: list = []
        self._fuel = None
        self._memory_mb = None
        self._timeout_ms = None

    @classmethod
    def worker(cls, name: str, version: str) -> "Info":
        """A worker capsule: one unit of work."""
        return cls(_types.CapsuleKind.WORKER, name, version)

    @classmethod
    def planner(cls, name: str, version: str) -> "Info":
        """A planner capsule: returns a sub-DAG as JSON."""
        return cls(_types.CapsuleKind.PLANNER, name, version)

    @classmethod
    def gate(cls, name: str, version: str) -> "Info":
        """A gate capsule: returns ``{approved, score, feedback}`` as JSON."""
        return cls(_types.CapsuleKind.GATE, name, version)

    def description(self, text: str) -> "Info":
        """One-line human description."""
        self._description = text
        return self

    def input_schema(self, schema) -> "Info":
        """JSON Schema of the input: a JSON document (str) or a dict."""
        self._input_schema = schema if isinstance(schema, str) else _json.dumps(schema)
        return self

    def output_schema(self, schema) -> "Info":
        """JSON Schema of the output: a JSON document (str) or a dict."""
        self._output_schema = schema if isinstance(schema, str) else _json.dumps(schema)
        return self

    def wants(self, name: str, args=()) -> "Info":
        """Ask for capability ``name`` with ``args`` (see ``wit/capsule.wit``)."""
        self._capabilities.append(_types.CapabilityRequest(name, list(args)))
        return self

    def wants_kv(self) -> "Info":
        """Ask for the key-value store."""
        return self.wants("kv")

    def wants_llm_model(self, model: str) -> "Info":
        """Ask for LLM model (or operator alias) ``model``."""
        return self.wants("llm", [model])

    def wants_secret(self, name: str) -> "Info":
        """Ask for secret ``name``."""
        return self.wants("secrets", [name])

    def wants_http(self, patterns) -> "Info":
        """Ask for outbound HTTP to URLs matching ``patterns``."""
        return self.wants("http", list(patterns))

    def fuel(self, fuel: int) -> "Info":
        """Ask for at most ``fuel`` units per call (only lowers the operator's ceiling)."""
        self._fuel = fuel
        return self

    def memory_mb(self, mb: int) -> "Info":
        """Ask for at most ``mb`` MiB of memory (only lowers the operator's ceiling)."""
        self._memory_mb = mb
        return self

    def timeout_ms(self, ms: int) -> "Info":
        """Ask for a deadline of ``ms`` milliseconds (only lowers the operator's ceiling)."""
        self._timeout_ms = ms
        return self

    def to_wit(self) -> "_types.CapsuleInfo":
        """The WIT ``capsule-info`` record."""
        return _types.CapsuleInfo(
            name=self.name,
            version=self.version,
            description=self._description,
            kind=self.kind,
            input_schema=self._input_schema,
            output_schema=self._output_schema,
            capabilities=list(self._capabilities),
            limits=_types.LimitsRequest(
                fuel=self._fuel, memory_mb=self._memory_mb, timeout_ms=self._timeout_ms
            ),
        )


class Capsule:
    """A task capsule: describes itself and turns one input into one output.

    Subclass it, override :meth:`describe` and :meth:`run`, and export it
    from ``app.py`` with ``WitWorld = soma.export(MyCapsule)``.
    """

    def describe(self) -> Info:
        """What the capsule is: name, version, kind, schemas, wanted
        capabilities and limits. Called once when the host loads it."""
        raise NotImplementedError("a capsule overrides describe()")

    def run(self, input: str):
        """Run on one input (usually JSON, see :func:`soma.json.parse`) and
        return the output: a str, or a JSON-encodable value (encoded with
        :func:`soma.json.output`). Raise :class:`CapsuleError` to fail."""
        raise NotImplementedError("a capsule overrides run()")


def _uncaught(e: BaseException) -> "_types.CapsuleError":
    """An exception the capsule did not turn into a CapsuleError: reported as
    code ``python-exception`` with its type, message and innermost frame."""
    frames = _traceback.extract_tb(e.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return _types.CapsuleError(
        code="python-exception",
        message=f"{type(e).__name__}: {e}{where}",
        retryable=False,
    )


def export(capsule_class) -> type:
    """The class componentize-py exports for ``capsule_class`` (a
    :class:`Capsule` subclass). ``app.py`` names it ``WitWorld``.

    The capsule is instantiated once, when the module is imported (at build
    time: componentize-py snapshots the initialized interpreter)."""
    from . import json as _sdk_json

    capsule = capsule_class()

    class WitWorld(_WitWorld):
        def describe(self) -> "_types.CapsuleInfo":
            return capsule.describe().to_wit()

        def run(self, input: str) -> str:
            try:
                out = capsule.run(input)
                return out if isinstance(out, str) else _sdk_json.output(out)
            except CapsuleError as e:
                raise _Err(_types.CapsuleError(e.code, e.message, e.retryable))
            except _Err:
                raise
            except Exception as e:
                raise _Err(_uncaught(e))

    WitWorld.__name__ = "WitWorld"
    WitWorld.__qualname__ = f"WitWorld[{capsule_class.__name__}]"
    return WitWorld
