"""The key-value store: the capsule's own namespace and the run's blackboard.

Writes made during a call become durable atomically when the call succeeds
and are discarded when it fails. Every failure raises :class:`KvError`
(a :class:`soma.CapsuleError` with code ``kv``; retryable when the store is
unavailable), so a capsule that does not catch it fails with that error."""

import json as _json

from componentize_py_types import Err as _Err

from ._capsule import CapsuleError, binding

_wit = binding("kv", capability="kv", ask=".wants_kv()")
Scope = _wit.Scope

__all__ = ["Scope", "KvError", "get", "set", "delete", "list_keys", "get_json", "set_json"]

_REASONS = {
    _wit.KvError_Denied: "denied",
    _wit.KvError_QuotaExceeded: "quota-exceeded",
    _wit.KvError_Unavailable: "unavailable",
}


class KvError(CapsuleError):
    """A kv operation failed. ``reason`` is ``denied``, ``quota-exceeded``
    or ``unavailable``."""

    def __init__(self, reason: str, message: str):
        super().__init__("kv", f"{reason}: {message}", retryable=reason == "unavailable")
        self.reason = reason


def _call(f, *args):
    try:
        return f(*args)
    except _Err as e:
        raise KvError(_REASONS.get(type(e.value), "unknown"), str(getattr(e.value, "value", e.value))) from None


def get(scope: Scope, key: str):
    """Read ``key`` (bytes); ``None`` if unset."""
    return _call(_wit.get, scope, key)


def set(scope: Scope, key: str, value: bytes) -> None:
    """Set ``key`` to ``value`` (bytes; a str is encoded as UTF-8)."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    _call(_wit.set, scope, key, value)


def delete(scope: Scope, key: str) -> bool:
    """Delete ``key``; returns whether it existed."""
    return _call(_wit.delete, scope, key)


def list_keys(scope: Scope, prefix: str, limit: int):
    """Keys starting with ``prefix``, in byte order, at most ``limit``."""
    return _call(_wit.list_keys, scope, prefix, limit)


def get_json(scope: Scope, key: str):
    """Read ``key`` and decode it as JSON; ``None`` if unset."""
    raw = get(scope, key)
    if raw is None:
        return None
    try:
        return _json.loads(raw)
    except ValueError as e:
        raise CapsuleError("kv-decode", f"value of {key!r} is not valid JSON: {e}") from None


def set_json(scope: Scope, key: str, value) -> None:
    """Encode ``value`` as JSON and store it at ``key``."""
    try:
        raw = _json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise CapsuleError("kv-encode", f"could not encode {key!r}: {e}") from None
    set(scope, key, raw.encode("utf-8"))
