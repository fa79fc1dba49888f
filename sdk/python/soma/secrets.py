"""Secrets the operator or the caller's tenant granted this capsule.

Name every secret the capsule reads in ``describe()``
(``Info.wants_secret``); the host hands out a secret only if it was asked
for, is granted to this capsule and the DAG node allows it. Whatever the
call then emits has each value it read replaced by ``[REDACTED:name]``, so
use a secret (e.g. in a request header), do not return it."""

from componentize_py_types import Err as _Err

from ._capsule import CapsuleError, binding

_wit = binding("secrets", capability="secrets", ask=".wants_secret(NAME)")

_REASONS = {
    _wit.SecretError_Denied: "denied",
    _wit.SecretError_NotFound: "not-found",
    _wit.SecretError_Unavailable: "unavailable",
}


class SecretError(CapsuleError):
    """A secret could not be read. ``reason`` is ``denied``, ``not-found``
    or ``unavailable`` (retryable)."""

    def __init__(self, reason: str, message: str):
        super().__init__("secret", f"{reason}: {message}", retryable=reason == "unavailable")
        self.reason = reason


def get(name: str) -> str:
    """Read secret ``name``; raises :class:`SecretError` (never traps)."""
    try:
        return _wit.get(name)
    except _Err as e:
        raise SecretError(_REASONS.get(type(e.value), "unknown"), str(getattr(e.value, "value", e.value))) from None
