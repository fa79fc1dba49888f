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
"""

from ._capsule import Capsule, CapsuleError, Info, export
from . import events, json, kv, llm, log, secrets

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
