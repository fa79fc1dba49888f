"""Structured logging into the host's tracing, attached to the run.

Lines are size-capped by the host; past the per-call cap they are counted
and dropped, never an error."""

from wit_world.imports import log as _wit
from wit_world.imports.log import Level

__all__ = ["Level", "log", "trace", "debug", "info", "warn", "error"]


def log(level: Level, message: str, **fields) -> None:
    """Log ``message`` at ``level`` with key/value ``fields`` (values become str)."""
    _wit.log(level, message, [(k, str(v)) for k, v in fields.items()])


def trace(message: str, **fields) -> None:
    log(Level.TRACE, message, **fields)


def debug(message: str, **fields) -> None:
    log(Level.DEBUG, message, **fields)


def info(message: str, **fields) -> None:
    log(Level.INFO, message, **fields)


def warn(message: str, **fields) -> None:
    log(Level.WARN, message, **fields)


def error(message: str, **fields) -> None:
    log(Level.ERROR, message, **fields)
