"""Assembling the artifact: the four parts as sections of one
``calculator.py``, the reviewed test cases as a ``unittest`` module beside
it, and a README."""

import json

from .cases import expectation, parse_cases
from .core import BadInput, compact, is_number, is_u64, line_count, one_line, trim, trim_end
from .parts import ALL

#: Directory of every file in the artifact (relative, no ``..``).
DIR = "calculator"


def source_text(text, comment=False):
    """``text`` safe inside a ``\"\"\"`` string of Python source (backslashes,
    quotes and unprintable characters escaped) or, with ``comment``, in a
    comment (unprintable characters escaped)."""
    out = []
    for c in text:
        if c == "\\" and not comment:
            out.append("\\\\")
        elif c == '"' and not comment:
            out.append('\\"')
        elif c.isprintable():
            out.append(c)
        elif ord(c) <= 0xFF:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) <= 0xFFFF:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return "".join(out)


def _text(output, key):
    value = output.get(key) if isinstance(output, dict) else None
    return value if isinstance(value, str) else ""


def parse_parts(parts):
    """The four part outputs, in assembly order: ``[{part, code, strategy, note}]``."""
    if not isinstance(parts, dict):
        raise BadInput(
            "assemble needs `parts`: an object with the tokenizer, parser, evaluator and cli outputs"
        )
    out = []
    for part in ALL:
        if part not in parts:
            raise BadInput(f"parts.{part} is missing")
        output = parts[part]
        code = _text(output, "code")
        if not trim(code):
            raise BadInput(f"parts.{part}.code must be a non-empty string")
        out.append(
            {"part": part, "code": code, "strategy": _text(output, "strategy"), "note": _text(output, "note")}
        )
    return out


def parse_review(review):
    """The review verdict ``{approved, score, summary}``, or None."""
    if review is None:
        return None
    approved = review.get("approved") if isinstance(review, dict) else None
    if not isinstance(approved, bool):
        raise BadInput("review.approved must be a boolean")
    score = review.get("score")
    feedback = review.get("feedback")
    summary = feedback.get("summary") if isinstance(feedback, dict) else None
    return {
        "approved": approved,
        "score": float(score) if is_number(score) else 0.0,
        "summary": summary if isinstance(summary, str) else "",
    }


def parse_tests(tests):
    """The reviewed cases and their revision (None if unknown)."""
    if tests is None:
        return [], None
    if not isinstance(tests, dict) or "cases" not in tests:
        raise BadInput("tests.cases is missing")
    try:
        cases = parse_cases(tests["cases"])
    except ValueError as e:
        raise BadInput(f"tests: {e}") from None
    revision = tests.get("revision")
    return cases, revision if is_u64(revision) else None


def verdict(review, long=False):
    if review is None:
        return "not reviewed"
    word = "approved" if review["approved"] else "NOT approved"
    if long:
        return f"{word} by the reviewer (score {review['score']:.2f})"
    return f"{word}, score {review['score']:.2f}"


def assemble(goal, parts, tests, review):
    """Assemble the artifact from the parts, the tests and the review."""
    parts = parse_parts(parts)
    cases, revision = parse_tests(tests)
    review = parse_review(review)
    goal = one_line(goal)

    program = calculator_py(goal, parts, cases)
    files = {
        f"{DIR}/README.md": readme(goal, parts, cases, revision, review),
        f"{DIR}/calculator.py": program,
        f"{DIR}/test_calculator.py": test_module(goal, cases, revision, review),
        # The same record as the Rust coder's: what the reviewer approved,
        # for a tool (or the demo's check) to replay against the program.
        f"{DIR}/tests.json": json.dumps(
            {
                "goal": goal,
                "revision": revision,
                "review": None if review is None else {"approved": review["approved"], "score": review["score"]},
                "cases": cases,
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n",
    }
    program_lines = line_count(program)
    return {
        "task": "assemble",
        "strategy": "deterministic",
        "note": (
            f"assembled {len(parts)} parts and {len(cases)} test cases into {DIR}/calculator.py "
            f"({program_lines} lines); tests {verdict(review, long=True)}"
        ),
        "files": files,
        "summary": {
            "goal": goal,
            "files": sorted(files),
            "calculator_py_lines": program_lines,
            "parts": {p["part"]: {"strategy": p["strategy"], "lines": line_count(p["code"])} for p in parts},
            "tests": {"count": len(cases), "revision": revision},
            "review": review,
            "run": f"python3 {DIR}/calculator.py '2*(3+4)^2'",
            "test": f"cd {DIR} && python3 -m unittest test_calculator",
        },
    }


def calculator_py(goal, parts, cases):
    """The program: a header, the sections in order, the entry point."""
    out = [
        "#!/usr/bin/env python3\n",
        '"""calculator: a command-line calculator, assembled by KAMACHIQ (generated file).\n\n',
        f"Goal: {source_text(goal)}\n\n",
        "Run:  python3 calculator.py '2*(3+4)^2'   (no arguments: one expression per line on stdin)\n",
        f"Test: python3 -m unittest test_calculator   (the {len(cases)} reviewed test cases)\n\n",
        "Standard library only. Sections, in this order:\n\n",
    ]
    for p in parts:
        out.append(f"- {p['part']}: {source_text(p['strategy']) or '?'}\n")
    out.append('"""\n')
    for p in parts:
        out.append(f"\n# ---- {p['part']} ({source_text(p['strategy'], comment=True) or '?'}) ----\n\n")
        out.append(trim_end(p["code"]) + "\n")
    out.append(
        "\n# ---- entry point (added by the assembler) ----\n\n"
        'if __name__ == "__main__":\n'
        "    import sys as _sys\n\n"
        "    _sys.exit(main())\n"
    )
    return "".join(out)


def test_module(goal, cases, revision, review):
    """A ``unittest`` module checking every case against ``calculate`` with
    the Rust coder's tolerance (relative 1e-9, absolute 1e-9 near zero)."""
    rows = []
    for case in cases:
        kind, want = expectation(case["expect"])
        why = f"  # {source_text(case['why'], comment=True)}" if case["why"] else ""
        rows.append(f"    ({case['expr']!r}, ({kind!r}, {want!r})),{why}\n")
    revision = "?" if revision is None else str(revision)
    return (
        f'"""The reviewed test cases of calculator.py (revision {revision}, {verdict(review)}),\n'
        "generated by KAMACHIQ.\n\n"
        f"Goal: {source_text(goal)}\n\n"
        "Run: python3 -m unittest test_calculator  (in this directory)\n"
        '"""\n\n'
        "import os\n"
        "import sys\n"
        "import unittest\n\n"
        "sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))\n\n"
        "import calculator  # noqa: E402\n\n"
        '#: (expression, ("value", number) or ("error", code)), as the reviewer approved them.\n'
        "CASES = [\n" + "".join(rows) + "]\n\n\n"
        "def close(got, want):\n"
        '    """Within a relative 1e-9 (absolute 1e-9 near zero)."""\n'
        "    return abs(got - want) <= 1e-9 * max(abs(want), abs(got), 1.0)\n\n\n"
        "class ReviewedCases(unittest.TestCase):\n"
        '    @unittest.skipUnless(CASES, "no reviewed test cases")\n'
        "    def test_every_reviewed_case_passes(self):\n"
        "        for expr, (kind, want) in CASES:\n"
        "            with self.subTest(expr=expr):\n"
        "                try:\n"
        "                    got = calculator.calculate(expr)\n"
        "                except calculator.CalcError as e:\n"
        '                    self.assertEqual((kind, want), ("error", e.code), f"{expr!r}: {e}")\n'
        "                    continue\n"
        '                self.assertEqual(kind, "value", f"{expr!r} = {got!r}, expected the error {want!r}")\n'
        '                self.assertTrue(close(got, want), f"{expr!r} = {got!r}, expected {want!r}")\n\n\n'
        'if __name__ == "__main__":\n'
        "    unittest.main()\n"
    )


def _markdown_cell(text):
    return text.replace("|", "\\|")


def readme(goal, parts, cases, revision, review):
    out = [
        "# calculator\n\n",
        f'A command-line calculator, built by the KAMACHIQ demo for the goal "{goal}".\n\n',
        "```sh\n",
        "python3 calculator.py '2*(3+4)^2'             # 98\n",
        "python3 calculator.py -- -2^2                 # -4: ^ binds tighter than unary minus\n",
        "printf '1/0\\n2^3^2\\n' | python3 calculator.py  # error: division by zero at position 1 "
        "(division-by-zero), then 512; exit 1\n",
        "python3 -m unittest test_calculator           # the reviewed cases\n",
        "```\n\n",
        "`+ - * / ^` (`^` right-associative), parentheses, unary signs, decimals; Python 3, "
        "standard library only. Errors print `error: <what> at position <n> (<code>)` on stderr "
        "and exit 1; codes: syntax, division-by-zero, overflow, domain, too-deep.\n\n",
        "## Parts\n\n",
        "All four are sections of `calculator.py`, in this order (one namespace; the entry point "
        "comes last).\n\n",
        "| part | strategy | lines |\n|---|---|---|\n",
    ]
    notes = []
    for p in parts:
        out.append(f"| {p['part']} | {_markdown_cell(p['strategy'])} | {line_count(p['code'])} |\n")
        if p["note"] and p["note"] not in notes:
            notes.append(p["note"])
    out.append("\n")
    out.extend(f"- {note}\n" for note in notes)
    out.append("\n## Test cases\n\n")
    revision = "?" if revision is None else str(revision)
    if review is None:
        out.append(f"Revision {revision}; not reviewed.\n\n")
    else:
        summary = f": {review['summary']}" if review["summary"] else ""
        word = "approved" if review["approved"] else "NOT approved"
        out.append(
            f"Revision {revision}, checked against the Soma `calculator` capsule by the reviewer: "
            f"{word} (score {review['score']:.2f}){summary}.\n\n"
        )
    out.append("`test_calculator.py` checks each of them against `calculator.calculate`.\n\n")
    out.append("| expression | expected | why |\n|---|---|---|\n")
    for case in cases:
        kind, want = expectation(case["expect"])
        expect = f"error `{want}`" if kind == "error" else compact(case["expect"])
        out.append(f"| `{_markdown_cell(case['expr'])}` | {expect} | {_markdown_cell(case['why'])} |\n")
    return "".join(out)

