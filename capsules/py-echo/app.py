"""``py-echo``: returns its input unchanged — the Python twin of ``echo``,
the trivial capsule the benches call (``benches/python.rs``: what CPython
in a component costs per call next to the Rust echo)."""

import soma


class Echo(soma.Capsule):
    def describe(self):
        return soma.Info.worker("py-echo", "0.1.0").description("Returns its input unchanged (Python)")

    def run(self, input):
        return input


WitWorld = soma.export(Echo)
