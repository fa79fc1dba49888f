"""JSON input and output helpers (compact output, like the Rust SDK's)."""

import json as _json

from ._capsule import CapsuleError


def parse(input: str):
    """Parse the run input as JSON. A parse failure raises a ``bad-input``
    :class:`CapsuleError` naming the line and column."""
    try:
        return _json.loads(input)
    except ValueError as e:
        raise CapsuleError.bad_input(f"input is not valid: {e}") from None


def field(doc, name: str, kind=None):
    """``doc[name]``, checked to be an object with that field (of type
    ``kind`` if given, e.g. ``str``); otherwise a ``bad-input`` error."""
    if not isinstance(doc, dict):
        raise CapsuleError.bad_input(f"input is not valid: expected an object with field `{name}`")
    if name not in doc:
        raise CapsuleError.bad_input(f"input is not valid: missing field `{name}`")
    value = doc[name]
    if kind is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise CapsuleError.bad_input(
            f"input is not valid: field `{name}` must be {kind.__name__}, not {type(value).__name__}"
        )
    return value


def output(value) -> str:
    """Encode ``value`` as the run output: compact JSON, UTF-8 kept as is."""
    try:
        return _json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise CapsuleError("output-encoding", f"could not encode output: {e}") from None
