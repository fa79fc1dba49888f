"""Test cases for the calculator: ``{expr, expect, why}`` where ``expect``
is a number or ``{"error": "<code>"}``.

The deterministic strategy writes a first draft from a naive reading of
the goal, two of whose expectations are common misconceptions
(``2^3^2 = 64``, ``-2^2 = 4``). Given the reviewer's feedback it revises
exactly the cases the reviewer reported, adopting the calculator's result
and quoting the reviewer's rule. (The same cases and revision rules as the
Rust ``kamachiq-coder``, so the same reviewer rejects round 1 and approves
round 2.)
"""

from .core import BadInput, LlmFailure, Prompt, ask, compact, fallback_reason, is_number, is_u64, loads, trim
from .parts import extract_code

U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


def expectation(value):
    """An ``expect`` value read: ``("value", float)``, ``("error", code)``,
    or None when it is neither a number nor ``{"error": "<code>"}``."""
    if is_number(value):
        return ("value", float(value))
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return ("error", value["error"])
    return None


def _case(i, value):
    """One case as the Rust ``Case`` deserializes it (unknown keys dropped)."""
    if not isinstance(value, dict):
        raise ValueError(f"cases are not valid: case {i} must be an object {{expr, expect, why}}")
    for name in ("expr", "expect"):
        if name not in value:
            raise ValueError(f"cases are not valid: case {i}: missing field `{name}`")
    if not isinstance(value["expr"], str):
        raise ValueError(f"cases are not valid: case {i}: `expr` must be a string")
    why = value.get("why", "")
    if not isinstance(why, str):
        raise ValueError(f"cases are not valid: case {i}: `why` must be a string")
    return {"expr": value["expr"], "expect": value["expect"], "why": why}


def parse_cases(value):
    """Parse and check a list of cases: each has a non-empty ``expr`` and a
    readable ``expect``. Raises ValueError saying what is wrong."""
    if not isinstance(value, list):
        raise ValueError("cases are not valid: expected a list of {expr, expect, why}")
    cases = [_case(i, v) for i, v in enumerate(value)]
    for i, case in enumerate(cases):
        if not trim(case["expr"]):
            raise ValueError(f"case {i} has an empty expr")
        if expectation(case["expect"]) is None:
            raise ValueError(
                f"case {i} ({compact(case['expr'])}): expect must be a number or "
                f'{{"error": "<code>"}}, not {compact(case["expect"])}'
            )
    return cases


def first_draft():
    """The first draft: a naive reading of "build a command-line calculator".
    Cases 9 and 10 are honest mistakes a first draft makes."""

    def case(expr, expect, why):
        return {"expr": expr, "expect": expect, "why": why}

    def error(code):
        return {"error": code}

    return [
        case("1 + 2", 3, "addition"),
        case("7 - 10", -3, "subtraction can go below zero"),
        case("6 * 7", 42, "multiplication"),
        case("7 / 2", 3.5, "division is exact, not integer division"),
        case("1 + 2 * 3", 7, "* binds tighter than +"),
        case("(1 + 2) * 3", 9, "parentheses group first"),
        case("10 - 4 - 3", 3, "- is left-associative"),
        case("2 * (3 + 4) ^ 2", 98, "^ binds tighter than *"),
        case("2 ^ 3 ^ 2", 64, "operators of equal precedence go left to right"),
        case("-2 ^ 2", 4, "a negative number squared is positive"),
        case("1.5 + 2.25", 3.75, "decimals"),
        case("0.1 + 0.2", 0.3, "decimal sums, within a tolerance"),
        case("1 / 0", error("division-by-zero"), "dividing by zero is an error, not infinity"),
        case("2 * (3 + 4", error("syntax"), "an unclosed parenthesis is a syntax error"),
    ]


def parse_feedback(feedback):
    """A reviewer's feedback, as much of it as revising needs:
    ``{"mismatches": [{expr, actual, rule}], "revision": int | None}``."""
    if feedback is None:
        return None

    def bad(detail):
        return BadInput(f"feedback must be a reviewer's {{mismatches: [{{expr, actual, rule}}]}}: {detail}")

    if not isinstance(feedback, dict):
        raise bad(f"expected an object, not {compact(feedback)}")
    mismatches = feedback.get("mismatches", [])
    if not isinstance(mismatches, list):
        raise bad("`mismatches` must be a list")
    parsed = []
    for i, m in enumerate(mismatches):
        if not isinstance(m, dict):
            raise bad(f"mismatch {i} must be an object")
        if not isinstance(m.get("expr"), str):
            raise bad(f"mismatch {i}: `expr` must be a string")
        if "actual" not in m:
            raise bad(f"mismatch {i}: missing field `actual`")
        rule = m.get("rule", "")
        if not isinstance(rule, str):
            raise bad(f"mismatch {i}: `rule` must be a string")
        parsed.append({"expr": m["expr"], "actual": m["actual"], "rule": rule})
    revision = feedback.get("revision")
    if revision is not None and not is_u64(revision):
        raise bad("`revision` must be a non-negative integer")
    return {"mismatches": parsed, "revision": revision}


def expectation_of(actual):
    """The expectation the calculator's ``actual`` result implies."""
    if is_number(actual):
        return actual
    if isinstance(actual, dict) and isinstance(actual.get("error"), str):
        return {"error": actual["error"]}
    return None


def revise(cases, feedback):
    """Revise ``cases`` in place after ``feedback``: each reported case
    takes the actual result. Returns the revised expressions."""
    revised = []
    for m in feedback["mismatches"]:
        expect = expectation_of(m["actual"])
        if expect is None:
            continue
        for case in cases:
            if case["expr"] == m["expr"]:
                case["expect"] = expect
                case["why"] = (
                    f"revised after review: {m['rule']}"
                    if m["rule"]
                    else "revised after review: the calculator's result"
                )
                revised.append(case["expr"])
    return revised


SYSTEM = (
    "You write test cases for an arithmetic calculator. Reply with JSON only: "
    '{"cases": [{"expr": "...", "expect": <number> | {"error": "<code>"}, "why": "..."}]}. '
    "Error codes: syntax, division-by-zero, overflow, domain."
)


def llm_cases(reply):
    """Cases from an LLM reply: a JSON object with ``cases``, or a bare
    list, possibly inside a fenced block. Raises ValueError."""
    text = extract_code(reply)
    try:
        value = loads(trim(text))
    except ValueError:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end < start:
            raise ValueError("not JSON") from None
        try:
            value = loads(trim(text[start : end + 1]))
        except ValueError:
            raise ValueError("not JSON") from None
    if isinstance(value, dict) and "cases" in value:
        value = value["cases"]
    cases = parse_cases(value)
    if not cases:
        raise ValueError("no cases")
    return cases


def write(goal, feedback, model, chat):
    """Write the test cases: ask the LLM, or draft and revise deterministically."""
    parsed = parse_feedback(feedback)
    if parsed is None:
        revision = 1
    else:
        revision = min((parsed["revision"] if parsed["revision"] is not None else 1) + 1, U64_MAX)
    prompt = Prompt(
        model=model,
        system=SYSTEM,
        user=(
            f"Goal: {goal}\nWrite about 12 cases covering + - * / ^, precedence, associativity, "
            "unary minus, parentheses, decimals and errors."
            + (
                "\nThe reviewer checked your previous cases against the real calculator; "
                f"fix them:\n{compact(feedback)}"
                if feedback is not None
                else ""
            )
        ),
        max_tokens=2048,
    )
    try:
        reply = ask(chat, prompt)
    except LlmFailure as e:
        llm_note = fallback_reason(e)
    else:
        try:
            cases = llm_cases(reply.text)
        except ValueError as why:
            llm_note = f"the LLM reply was unusable ({why})"
        else:
            return {
                "task": "test-cases",
                "strategy": f"llm:{reply.model}",
                "note": f"written by the LLM model {reply.model}",
                "cases": cases,
                "revision": revision,
                "revised": [],
            }
    cases = first_draft()
    if parsed is None:
        revised = []
        note = (
            f"deterministic strategy: {llm_note}; first draft of {len(cases)} cases from a naive "
            "reading of the goal"
        )
    else:
        revised = revise(cases, parsed)
        note = (
            f"deterministic strategy: {llm_note}; revision {revision}: revised after review: "
            f"{len(revised)} of {len(parsed['mismatches'])} reported cases ({', '.join(revised)})"
        )
    return {
        "task": "test-cases",
        "strategy": "deterministic",
        "note": note,
        "cases": cases,
        "revision": revision,
        "revised": revised,
    }
