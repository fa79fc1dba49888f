"""Analytics and progress events, returned with the call's outcome."""

import json as _json

from wit_world.imports import events as _wit


def emit(name: str, payload=None) -> None:
    """Emit event ``name`` with a JSON-encodable ``payload`` (``null`` if it
    cannot be encoded). Events past the host's per-call cap are dropped and
    counted."""
    try:
        text = _json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        text = "null"
    _wit.emit(name, text)


def progress(done: int, total: int, note: str = "") -> None:
    """Emit a progress event: ``done`` of ``total`` steps, with a note."""
    emit("progress", {"done": done, "total": total, "note": note})
