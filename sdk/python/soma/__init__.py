"""The Soma capsule SDK for Python.

A capsule is a WebAssembly component implementing the ``soma:capsule`` world
(``wit/capsule.wit``), built from Python by componentize-py. With this
package a capsule is a :class:`Capsule` subclass plus one ``export`` line in
``app.py``::

    import soma

    class Greeter(soma.Capsule):
        def describe(self):
            return soma.Info.worker("greeter", "0.1.0").description("Says hello")

        def run(self, input):
            name = soma.json.field(soma.json.parse(input), "name", str)
            return soma.json.output({"greeting": f"hello, {name}"})

    WitWorld = soma.export(Greeter)

Build it with ``soma build``. Host capabilities are in :mod:`soma.log`,
:mod:`soma.kv`, :mod:`soma.llm`, :mod:`soma.events` and :mod:`soma.secrets`;
each call is checked against the grants the operator gave the capsule.

``soma build`` links a capability's interface only when ``describe()`` asks
for it (the marketplace review rejects a component importing what it does
not ask for), so :mod:`soma.kv`, :mod:`soma.llm` and :mod:`soma.secrets`
are imported here only when their bindings exist (componentize-py keeps
only what is imported at build time): using one that ``describe()`` does
not ask for raises an ``ImportError`` that says what to add.
"""

import importlib as _importlib

from ._capsule import Capsule, CapsuleError, Info, export
from . import events, json, log

_ON_REQUEST = ("kv", "llm", "secrets")

for _name in _ON_REQUEST:
    try:
        _importlib.import_module(f"{__name__}.{_name}")
    except ImportError:
        pass  # not linked: describe() does not ask for it


def __getattr__(name):
    # PEP 562: an unlinked capability raises its ImportError when used.
    if name in _ON_REQUEST:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Capsule",
    "CapsuleError",
    "Info",
    "export",
    "events",
    "json",
    "kv",
    "llm",
    "log",
    "secrets",
]
