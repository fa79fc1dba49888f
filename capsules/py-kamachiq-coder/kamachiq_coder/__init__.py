"""The KAMACHIQ coder's logic, without the SDK: one entry point, :func:`run`.

| task | output |
|---|---|
| ``tokenizer``, ``parser``, ``evaluator``, ``cli`` | ``{task, strategy, note, file, lines, code}``: one section of a single-file Python calculator |
| ``test-cases`` | ``{task, strategy, note, cases: [{expr, expect, why}], revision, revised}`` |
| ``assemble`` | ``{task, strategy, note, files: {path: text}, summary}`` |

Input: ``{"task", "goal", "feedback"?, "model"?, "lang"?}`` (``lang``, set by
the planner when the goal names a language, must be ``python``); ``assemble`` also takes
``parts`` (the four part outputs by task), ``tests`` (the ``test-cases``
output) and ``review`` (the reviewer's verdict).

The LLM is a ``chat(Prompt) -> Reply`` callable raising :class:`LlmFailure`
(``app.py`` builds it from ``soma.llm``; tests fake it), the log an
``log(str)`` callable.
"""

from . import assemble as _assemble
from . import cases as _cases
from . import parts as _parts
from .core import DEFAULT_MODEL, BadInput, LlmFailure, Prompt, Reply, WrongLanguage, compact, loads, trim

__all__ = ["DEFAULT_MODEL", "INPUT_SCHEMA", "OUTPUT_SCHEMA", "TASKS", "BadInput", "LlmFailure", "Prompt", "Reply", "WrongLanguage", "run"]

#: Every task, parts first.
TASKS = (*_parts.ALL, "test-cases", "assemble")

INPUT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["task"],
    "properties": {
        "task": {"enum": list(TASKS)},
        "goal": {"type": "string"},
        "feedback": {"description": "A reviewer's feedback: {mismatches: [{expr, expected, actual, rule}], revision}"},
        "model": {"type": "string", "description": f"LLM model or alias; default {DEFAULT_MODEL}"},
        "lang": {"const": "python", "description": "The program's language, when the goal names one"},
        "parts": {"type": "object", "description": "assemble: the part outputs keyed tokenizer, parser, evaluator, cli"},
        "tests": {"type": "object", "description": "assemble: the test-cases output"},
        "review": {"type": "object", "description": "assemble: the reviewer's verdict"},
    },
}

OUTPUT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["task", "strategy", "note"],
    "properties": {
        "task": {"type": "string"},
        "strategy": {"type": "string", "description": "deterministic or llm:<model>"},
        "note": {"type": "string"},
        "file": {"type": "string"},
        "lines": {"type": "integer"},
        "code": {"type": "string"},
        "cases": {"type": "array"},
        "revision": {"type": "integer"},
        "revised": {"type": "array"},
        "files": {"type": "object", "additionalProperties": {"type": "string"}},
        "summary": {"type": "object"},
    },
}


def _field(doc, name, required=False):
    """A string field (None when absent, or null where Rust has an Option)."""
    if name not in doc:
        if required:
            raise BadInput(f"input is not valid: missing field `{name}`")
        return None
    value = doc[name]
    if not isinstance(value, str):
        raise BadInput(f"input is not valid: field `{name}` must be a string")
    return value


def run(input_text, chat, log=None):
    """Run one task on the JSON ``input_text``; the output as a dict.

    Raises :class:`BadInput` for input it cannot use, and the
    :class:`LlmFailure` of an ``llm-invalid`` (or unknown) chat error; a
    denied, unavailable or over-budget LLM is the deterministic strategy."""
    try:
        doc = loads(input_text)
    except ValueError as e:
        raise BadInput(f"input is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadInput("input is not valid: expected an object with field `task`")
    task = _field(doc, "task", required=True)
    goal = _field(doc, "goal") or ""
    model = None if doc.get("model") is None else _field(doc, "model")
    if task not in TASKS:
        raise BadInput(f"unknown task {compact(task)}: expected one of {', '.join(TASKS)}")
    if "{{" in goal:
        raise BadInput("goal must not contain template braces `{{`")
    lang = None if doc.get("lang") is None else _field(doc, "lang")
    if lang is not None and lang != "python":
        raise WrongLanguage(compact(lang))
    model = DEFAULT_MODEL if model is None else model
    if not trim(model):
        raise BadInput("model must not be empty")
    feedback = doc.get("feedback")  # null is no feedback

    if task in _parts.ALL:
        out = _parts.write(task, goal, feedback, model, chat)
    elif task == "test-cases":
        out = _cases.write(goal, feedback, model, chat)
    else:
        out = _assemble.assemble(goal, doc.get("parts"), doc.get("tests"), doc.get("review"))
    if log is not None:
        revision = out.get("revision")
        suffix = f", revision {revision}" if isinstance(revision, int) else ""
        log(f"{task}: strategy {out['strategy']}{suffix}")
    return out
