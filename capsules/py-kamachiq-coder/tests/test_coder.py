"""Native tests of the Python KAMACHIQ coder (python3 only, no SDK needed).

    python3 -m unittest discover -s capsules/py-kamachiq-coder/tests

They run every task with a fake LLM, assemble the deterministic parts into
a temporary directory, run the generated ``calculator.py`` with python3 on
the calculator capsule's own test expressions and run the generated
``test_calculator.py``. ``AppAdapter`` also imports ``app.py`` against the
real ``soma`` SDK with ``soma_native``'s stand-ins for the componentize-py bindings (skipped
when ``sdk/python`` is not found; ``SOMA_PYTHON_SDK`` names another copy).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

# No __pycache__ in the capsule's sources (componentize-py builds from them).
sys.dont_write_bytecode = True

HERE = os.path.dirname(os.path.abspath(__file__))
CAPSULE = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(CAPSULE))
sys.path.insert(0, CAPSULE)

import kamachiq_coder as kc  # noqa: E402
from kamachiq_coder import assemble as kassemble  # noqa: E402
from kamachiq_coder import cases as kcases  # noqa: E402
from kamachiq_coder import parts as kparts  # noqa: E402

GOAL = "build a command-line calculator"


class FakeChat:
    """An LLM that always gives the same answer: a reply text or a failure."""

    def __init__(self, answer):
        self.answer = answer
        self.prompts = []

    def __call__(self, prompt):
        self.prompts.append(prompt)
        if isinstance(self.answer, Exception):
            raise self.answer
        return kc.Reply(self.answer, "fake-model")

    @classmethod
    def denied(cls):
        return cls(kc.LlmFailure("llm-denied", "model kamachiq-coder is not granted"))


def run(doc, chat=None, logs=None):
    """Run the coder on ``doc`` (a dict, or a str passed as is)."""
    chat = chat if chat is not None else FakeChat.denied()
    text = doc if isinstance(doc, str) else json.dumps(doc)
    out = kc.run(text, chat, logs.append if logs is not None else None)
    json.dumps(out, allow_nan=False)  # the output is encodable, as the SDK requires
    return out


def error_code(doc, chat=None):
    """The error code ``doc`` fails with (as the capsule reports it)."""
    try:
        out = run(doc, chat)
    except kc.BadInput:
        return "bad-input"
    except kc.LlmFailure as e:
        return e.code
    raise AssertionError(f"expected an error, got {out}")


def deterministic_parts():
    return {part: run({"task": part, "goal": GOAL}) for part in kparts.ALL}


def reviewed_tests():
    """Round 2 as the DAG produces it: the draft revised after the review."""
    feedback = {
        "mismatches": [
            {"expr": "2 ^ 3 ^ 2", "expected": 64, "actual": 512, "rule": "^ is right-associative: 2^3^2 = 2^(3^2) = 512"},
            {"expr": "-2 ^ 2", "expected": 4, "actual": -4, "rule": "^ binds tighter than unary minus: -2^2 = -(2^2) = -4"},
        ],
        "summary": "2 of 14 cases disagree with the calculator: 2 ^ 3 ^ 2, -2 ^ 2",
        "matched": 12,
        "total": 14,
        "revision": 1,
    }
    return run({"task": "test-cases", "goal": GOAL, "feedback": feedback})


APPROVED = {"approved": True, "score": 1.0, "feedback": {"mismatches": [], "summary": "all 14 match"}}


class Tasks(unittest.TestCase):
    def test_without_an_llm_each_part_is_its_template(self):
        for part in kparts.ALL:
            chat, logs = FakeChat.denied(), []
            out = run({"task": part, "goal": "g"}, chat, logs)
            self.assertEqual(set(out), {"task", "strategy", "note", "file", "lines", "code"})
            self.assertEqual(out["task"], part)
            self.assertEqual(out["strategy"], "deterministic")
            self.assertEqual(out["file"], "calculator/calculator.py")
            self.assertEqual(out["code"], kparts.TEMPLATES[part])
            self.assertEqual(out["lines"], len(out["code"].splitlines()))
            self.assertEqual(
                out["note"],
                "deterministic strategy: no LLM configured (llm denied: model kamachiq-coder is not granted); "
                "built-in template",
            )
            self.assertEqual(kparts.missing_items(part, kparts.TEMPLATES[part]), [], part)
            self.assertEqual(len(chat.prompts), 1)
            self.assertEqual(chat.prompts[0].model, "kamachiq-coder")
            self.assertIn(f"Write the `{part}` part.", chat.prompts[0].user)
            self.assertEqual(logs, [f"{part}: strategy deterministic"])

    def test_unavailable_and_budget_exceeded_fall_back_and_say_so(self):
        out = run({"task": "cli", "goal": "g"}, FakeChat(kc.LlmFailure("llm-budget-exceeded", "run budget")))
        self.assertEqual(out["strategy"], "deterministic")
        self.assertIn("LLM budget exceeded (run budget)", out["note"])
        out = run({"task": "test-cases"}, FakeChat(kc.LlmFailure("llm-unavailable", "no provider")))
        self.assertEqual(out["strategy"], "deterministic")
        self.assertTrue(out["note"].startswith("deterministic strategy: no LLM configured (llm unavailable: no provider)"))

    def test_an_invalid_llm_request_is_an_error_not_a_fallback(self):
        for task in ("parser", "test-cases"):
            chat = FakeChat(kc.LlmFailure("llm-invalid", "max_tokens"))
            self.assertEqual(error_code({"task": task, "goal": "g"}, chat), "llm-invalid")

    def test_an_llm_part_is_used_when_it_defines_the_contracted_items(self):
        reply = "Here it is:\n```python\ndef calculate(text):\n    return 1.0\n\n\ndef evaluate(expr):\n    return 1.0\n```\nDone."
        chat = FakeChat(reply)
        out = run({"task": "evaluator", "goal": "g", "model": "m"}, chat)
        self.assertEqual(out["strategy"], "llm:fake-model")
        self.assertEqual(out["note"], "written by the LLM model fake-model")
        self.assertEqual(out["code"], "def calculate(text):\n    return 1.0\n\n\ndef evaluate(expr):\n    return 1.0\n")
        self.assertEqual(out["lines"], 6)
        self.assertEqual(chat.prompts[0].model, "m")

    def test_an_unusable_llm_part_falls_back_to_the_template(self):
        for reply, lacked in [
            ("```python\ndef nothing():\n    pass\n```", "def evaluate, def calculate"),
            # Mentioned, but not defined at the top level.
            ("# def evaluate(x) and def calculate(t)\nclass C:\n    def evaluate(self): pass\n", "def evaluate, def calculate"),
            ("```python\ndef evaluate(:\n```", "valid Python (SyntaxError"),
            ("```python\nfrom __future__ import annotations\ndef evaluate(e): pass\ndef calculate(t): pass\n```", "no `from __future__` import"),
            ("I cannot do that", "valid Python (SyntaxError"),
        ]:
            out = run({"task": "evaluator", "goal": "g"}, FakeChat(reply))
            self.assertEqual(out["strategy"], "deterministic", reply)
            self.assertEqual(out["code"], kparts.TEMPLATES["evaluator"])
            self.assertTrue(out["note"].startswith(f"deterministic strategy: the LLM reply lacked {lacked}"), out["note"])
        out = run({"task": "parser", "goal": "g"}, FakeChat("```python\nMAX_DEPTH: int = 9\ndef parse(text, build=None): pass\n```"))
        self.assertEqual(out["strategy"], "llm:fake-model")

    def test_feedback_to_a_part_is_noted(self):
        chat = FakeChat.denied()
        out = run({"task": "parser", "goal": "g", "feedback": {"note": "x"}}, chat)
        self.assertTrue(out["note"].endswith("built-in template (feedback noted; the template is fixed)"))
        self.assertIn('Reviewer feedback on the previous version:\n{"note":"x"}', chat.prompts[0].user)
        out = run({"task": "parser", "goal": "g", "feedback": None})
        self.assertNotIn("feedback", out["note"])

    def test_code_extraction(self):
        self.assertEqual(kparts.extract_code("def main(): pass"), "def main(): pass\n")
        self.assertEqual(kparts.extract_code("```\ndef a(): pass\n```"), "def a(): pass\n")
        self.assertEqual(kparts.extract_code("```python\ndef a(): pass"), "def a(): pass\n")
        self.assertEqual(kparts.extract_code("```"), "\n")

    def test_a_plan_for_another_language_is_refused_by_name(self):
        with self.assertRaises(kc.WrongLanguage) as e:
            run({"task": "parser", "goal": "g", "lang": "rust"}, FakeChat.denied())
        self.assertEqual(e.exception.code, "unsupported-language")
        self.assertIn("kamachiq.yaml", e.exception.message)
        out = run({"task": "parser", "goal": "g", "lang": "python"}, FakeChat.denied())
        self.assertEqual(out["task"], "parser")

    def test_bad_input_is_a_typed_error(self):
        for doc in [
            "not json",
            "[1]",
            '{"task": NaN}',
            {},
            {"task": "deploy"},
            {"task": 3},
            {"task": "cli", "goal": None},
            {"task": "cli", "goal": 7},
            {"task": "cli", "model": " "},
            {"task": "cli", "model": 5},
            {"task": "parser", "goal": "{{ input.x }}"},
            {"task": "test-cases", "feedback": "try harder"},
            {"task": "test-cases", "feedback": {"mismatches": [{"expr": 1}]}},
            {"task": "test-cases", "feedback": {"mismatches": [{"expr": "1"}]}},
            {"task": "test-cases", "feedback": {"mismatches": {}}},
            {"task": "test-cases", "feedback": {"mismatches": [], "revision": -1}},
            {"task": "test-cases", "feedback": {"mismatches": [{"expr": "1", "actual": 1, "rule": 3}]}},
            '{"task": "cli", "goal": "\\ud800"}',
            '{"task": "cli", "goal": "x", "n": 1e400}',
        ]:
            self.assertEqual(error_code(doc), "bad-input", doc)
        self.assertEqual(error_code({"task": "cli", "lang": 3}), "bad-input")
        # A null model is the default model.
        chat = FakeChat.denied()
        run({"task": "cli", "model": None}, chat)
        self.assertEqual(chat.prompts[0].model, "kamachiq-coder")


class Cases(unittest.TestCase):
    def expect(self, cases, expr):
        return next(c["expect"] for c in cases if c["expr"] == expr)

    def test_first_round_is_the_naive_draft(self):
        logs = []
        out = run({"task": "test-cases", "goal": "g"}, logs=logs)
        self.assertEqual(out["strategy"], "deterministic")
        self.assertEqual(out["revision"], 1)
        self.assertEqual(out["revised"], [])
        self.assertEqual(
            out["note"],
            "deterministic strategy: no LLM configured (llm denied: model kamachiq-coder is not granted); "
            "first draft of 14 cases from a naive reading of the goal",
        )
        cases = kcases.parse_cases(out["cases"])
        self.assertEqual(cases, kcases.first_draft())
        self.assertEqual(len(cases), 14)
        # The misconceptions a first draft makes.
        self.assertEqual(self.expect(cases, "2 ^ 3 ^ 2"), 64)
        self.assertEqual(self.expect(cases, "-2 ^ 2"), 4)
        self.assertEqual(self.expect(cases, "1 / 0"), {"error": "division-by-zero"})
        self.assertEqual(logs, ["test-cases: strategy deterministic, revision 1"])

    def test_the_draft_is_the_rust_coders(self):
        """Same cases as capsules/kamachiq-coder/src/cases.rs (when present)."""
        path = os.path.join(REPO, "capsules", "kamachiq-coder", "src", "cases.rs")
        if not os.path.exists(path):
            self.skipTest(f"{path} not found")
        with open(path, encoding="utf-8") as f:
            source = f.read()
        body = source[source.index("pub fn first_draft()") :]
        body = body[: body.index("\n}\n")]
        pattern = re.compile(
            r'case\(\s*"((?:[^"\\]|\\.)*)",\s*(?:json!\(([^)]*)\)|error\("([^"]+)"\)),\s*"((?:[^"\\]|\\.)*)",?\s*\)'
        )
        rust = [
            {"expr": expr, "expect": json.loads(value) if value else {"error": err}, "why": why}
            for expr, value, err, why in pattern.findall(body)
        ]
        self.assertEqual(len(rust), 14)
        self.assertEqual(kcases.first_draft(), rust)
        self.assertEqual(json.dumps(kcases.first_draft()), json.dumps(rust))  # ints stay ints

    def test_feedback_revises_exactly_the_reported_cases(self):
        feedback = {
            "mismatches": [
                {"expr": "2 ^ 3 ^ 2", "expected": 64, "actual": 512, "rule": "^ is right-associative: 2^3^2 = 2^(3^2) = 512"},
                {"expr": "-2 ^ 2", "expected": 4, "actual": -4, "rule": "unary minus binds looser than ^: -2^2 = -(2^2) = -4"},
                {"expr": "not in the draft", "expected": 1, "actual": 2, "rule": ""},
            ],
            "summary": "…",
            "revision": 1,
        }
        out = run({"task": "test-cases", "goal": "g", "feedback": feedback})
        self.assertEqual(out["revision"], 2)
        self.assertEqual(out["revised"], ["2 ^ 3 ^ 2", "-2 ^ 2"])
        cases = kcases.parse_cases(out["cases"])
        draft = kcases.first_draft()
        self.assertEqual(len(cases), len(draft))
        for new, old in zip(cases, draft):
            if new["expr"] == "2 ^ 3 ^ 2":
                self.assertEqual(new["expect"], 512)
                self.assertEqual(new["why"], "revised after review: ^ is right-associative: 2^3^2 = 2^(3^2) = 512")
            elif new["expr"] == "-2 ^ 2":
                self.assertEqual(new["expect"], -4)
            else:
                self.assertEqual(new, old)
        self.assertIn("revision 2: revised after review: 2 of 3 reported cases (2 ^ 3 ^ 2, -2 ^ 2)", out["note"])

    def test_an_error_result_becomes_an_error_expectation(self):
        feedback = {"mismatches": [{"expr": "7 / 2", "expected": 3.5, "actual": {"error": "division-by-zero", "message": "m"}, "rule": "r"}]}
        out = run({"task": "test-cases", "feedback": feedback})
        self.assertEqual(out["revision"], 2)
        self.assertEqual(out["cases"][3]["expect"], {"error": "division-by-zero"})
        self.assertEqual(out["cases"][3]["why"], "revised after review: r")
        # An unusable `actual` is skipped, an empty rule quotes the calculator.
        feedback = {"mismatches": [{"expr": "1 + 2", "actual": None}, {"expr": "6 * 7", "actual": 43}], "revision": 4}
        out = run({"task": "test-cases", "feedback": feedback})
        self.assertEqual((out["revision"], out["revised"]), (5, ["6 * 7"]))
        self.assertEqual(out["cases"][2]["why"], "revised after review: the calculator's result")
        out = run({"task": "test-cases", "feedback": {"revision": 2**64 - 1}})
        self.assertEqual(out["revision"], 2**64 - 1)

    def test_llm_cases_are_used_when_valid(self):
        reply = '```json\n{"cases": [{"expr": "1+1", "expect": 2, "why": "w", "extra": 1}]}\n```'
        out = run({"task": "test-cases", "goal": "g"}, FakeChat(reply))
        self.assertEqual(out["strategy"], "llm:fake-model")
        self.assertEqual(out["cases"], [{"expr": "1+1", "expect": 2, "why": "w"}])
        self.assertEqual((out["revision"], out["revised"]), (1, []))
        out = run({"task": "test-cases"}, FakeChat('Sure: [{"expr": "2^3", "expect": 8}]'))
        self.assertEqual(out["strategy"], "deterministic")  # a bare list inside prose is not found
        out = run({"task": "test-cases"}, FakeChat('[{"expr": "2^3", "expect": 8}]'))
        self.assertEqual(out["cases"], [{"expr": "2^3", "expect": 8, "why": ""}])
        for reply in ["I cannot do that", '{"cases": []}', '{"cases": [{"expr": "1", "expect": "1"}]}']:
            out = run({"task": "test-cases", "goal": "g"}, FakeChat(reply))
            self.assertEqual(out["strategy"], "deterministic", reply)
            self.assertIn("the LLM reply was unusable", out["note"])

    def test_case_validation(self):
        self.assertTrue(kcases.parse_cases([{"expr": "1", "expect": 1}]))
        for bad in [
            [{"expr": "", "expect": 1}],
            [{"expr": " \t", "expect": 1}],
            [{"expr": "1", "expect": "1"}],
            [{"expr": "1", "expect": True}],
            [{"expr": "1", "expect": {"error": 3}}],
            [{"expr": "1"}],
            [{"expr": "1", "expect": 1, "why": None}],
            {"expr": "1"},
            ["1"],
        ]:
            with self.assertRaises(ValueError, msg=bad):
                kcases.parse_cases(bad)


def assemble(parts=None, tests=None, review=None, goal=GOAL):
    doc = {"task": "assemble", "goal": goal, "parts": parts if parts is not None else deterministic_parts()}
    if tests is not None:
        doc["tests"] = tests
    if review is not None:
        doc["review"] = review
    return run(doc)


class Assemble(unittest.TestCase):
    def test_assembles_the_deterministic_parts_into_one_file(self):
        out = assemble(tests=reviewed_tests(), review=APPROVED, goal="build a\ncommand-line calculator")
        self.assertEqual(set(out), {"task", "strategy", "note", "files", "summary"})
        self.assertEqual((out["task"], out["strategy"]), ("assemble", "deterministic"))
        files = out["files"]
        self.assertEqual(
            list(files),
            [
                "calculator/README.md",
                "calculator/calculator.py",
                "calculator/test_calculator.py",
                "calculator/tests.json",
            ],
        )
        record = json.loads(files["calculator/tests.json"])
        self.assertEqual(record["cases"], reviewed_tests()["cases"])
        self.assertEqual(record["review"], {"approved": True, "score": APPROVED["score"]})
        program = files["calculator/calculator.py"]
        self.assertTrue(program.startswith('#!/usr/bin/env python3\n"""calculator: a command-line calculator'))
        self.assertIn("Goal: build a command-line calculator\n", program)
        at = 0
        for needle in [
            "# ---- tokenizer (deterministic) ----",
            "class CalcError(Exception):",
            "def tokenize(text):",
            "# ---- parser (deterministic) ----",
            "def parse(text, build=None):",
            "# ---- evaluator (deterministic) ----",
            "def calculate(text):",
            "# ---- cli (deterministic) ----",
            "def main(argv=None):",
            'if __name__ == "__main__":',
        ]:
            found = program.find(needle, at)
            self.assertGreaterEqual(found, 0, f"{needle!r} missing or out of order")
            at = found + len(needle)
        compile(program, "calculator.py", "exec")
        tests = files["calculator/test_calculator.py"]
        compile(tests, "test_calculator.py", "exec")
        for row in [
            "('2 ^ 3 ^ 2', ('value', 512.0)),",
            "('-2 ^ 2', ('value', -4.0)),",
            "('1 / 0', ('error', 'division-by-zero')),",
        ]:
            self.assertIn(row, tests)
        self.assertIn("(revision 2, approved, score 1.00)", tests)
        readme = files["calculator/README.md"]
        self.assertIn("approved (score 1.00): all 14 match", readme)
        self.assertIn("| `2 ^ 3 ^ 2` | 512 |", readme)
        self.assertIn("| `1 / 0` | error `division-by-zero` |", readme)
        self.assertEqual(
            out["note"],
            f"assembled 4 parts and 14 test cases into calculator/calculator.py "
            f"({len(program.splitlines())} lines); tests approved by the reviewer (score 1.00)",
        )
        summary = out["summary"]
        self.assertEqual(summary["goal"], "build a command-line calculator")
        self.assertEqual(summary["files"], list(files))
        self.assertEqual(summary["parts"]["parser"]["strategy"], "deterministic")
        self.assertEqual(summary["tests"], {"count": 14, "revision": 2})
        self.assertEqual(summary["review"], {"approved": True, "score": 1.0, "summary": "all 14 match"})

    def test_assemble_validates_its_input(self):
        self.assertEqual(error_code({"task": "assemble"}), "bad-input")
        self.assertEqual(error_code({"task": "assemble", "parts": []}), "bad-input")
        parts = deterministic_parts()
        broken = dict(parts, cli=dict(parts["cli"], code=" \n"))
        self.assertEqual(error_code({"task": "assemble", "parts": broken}), "bad-input")
        self.assertEqual(error_code({"task": "assemble", "parts": {k: parts[k] for k in ("tokenizer", "parser", "cli")}}), "bad-input")
        for tests in [{"cases": [{"expr": "1"}]}, {"revision": 1}, [1]]:
            self.assertEqual(error_code({"task": "assemble", "parts": parts, "tests": tests}), "bad-input")
        for review in [{"approved": "yes"}, {"score": 1}, True]:
            self.assertEqual(error_code({"task": "assemble", "parts": parts, "review": review}), "bad-input")
        # Tests and review are optional (null is absent).
        out = run({"task": "assemble", "parts": parts, "tests": None, "review": None})
        self.assertIn("tests not reviewed", out["note"])
        self.assertIn("CASES = [\n]", out["files"]["calculator/test_calculator.py"])
        self.assertIn("Revision ?; not reviewed.", out["files"]["calculator/README.md"])

    def test_odd_goals_and_strategies_stay_valid_python(self):
        parts = deterministic_parts()
        parts["cli"] = dict(parts["cli"], strategy='llm:"x"\\\r\nevil')
        tests = {"cases": [{"expr": "1'\"\\\n+\u0000 2", "expect": 3, "why": "quote ' \" \\ \r\n and NUL \u0000"}], "revision": 1}
        out = assemble(parts=parts, tests=tests, goal='a """ goal \\ with\u0000 odd\u2028chars \U0001f600')
        for name in ("calculator.py", "test_calculator.py"):
            text = out["files"][f"calculator/{name}"]
            compile(text, name, "exec")
            self.assertNotIn("\u0000", text)
            self.assertNotIn("\r", text)
        ns = {}
        exec(compile(out["files"]["calculator/test_calculator.py"].split("\n\n\ndef close")[0].split("import calculator")[1], "t", "exec"), ns)
        self.assertEqual(ns["CASES"], [("1'\"\\\n+\u0000 2", ("value", 3.0))])
        self.assertIn("odd chars \U0001f600", out["summary"]["goal"])


# ---- the generated program ----

MAX_DEPTH = 256


class GeneratedProgram(unittest.TestCase):
    """Expected results from the calculator capsule's own tests
    (capsules/calculator/src/eval.rs and lib.rs), printed as the Rust
    artifact prints them."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="py-kamachiq-coder-")
        out = assemble(tests=reviewed_tests(), review=APPROVED)
        for name, text in out["files"].items():
            path = os.path.join(cls.dir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        cls.app = os.path.join(cls.dir, "calculator")
        cls.program = os.path.join(cls.app, "calculator.py")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def calc(self, args, stdin=""):
        p = subprocess.run(
            [sys.executable, self.program, *args],
            input=stdin.encode("utf-8"),
            capture_output=True,
            timeout=60,
        )
        return p.returncode, p.stdout.decode("utf-8"), p.stderr.decode("utf-8")

    def assertValue(self, expr, printed):
        self.assertEqual(self.calc(["--", expr]), (0, printed + "\n", ""), expr)

    def assertError(self, expr, message, code):
        self.assertEqual(self.calc(["--", expr]), (1, "", f"error: {message} ({code})\n"), expr)

    def test_values(self):
        for expr, printed in [
            ("2*(3+4)^2", "98"),
            # numbers
            ("42", "42"),
            ("3.25", "3.25"),
            (".5", "0.5"),
            ("5.", "5"),
            ("007", "7"),
            ("0.1+0.2", "0.30000000000000004"),
            # precedence
            ("1+2*3", "7"),
            ("(1+2)*3", "9"),
            ("2*3^2", "18"),
            ("1+6/2*3", "10"),
            ("2^3*2", "16"),
            # left associativity
            ("10-4-3", "3"),
            ("64/4/2", "8"),
            ("2*3/4", "1.5"),
            # ^ is right-associative
            ("2^3^2", "512"),
            ("(2^3)^2", "64"),
            # unary signs
            ("-2^2", "-4"),
            ("(-2)^2", "4"),
            ("2^-1", "0.5"),
            ("2^-2^2", "0.0625"),
            ("-3*-2", "6"),
            ("2--3", "5"),
            ("--3", "3"),
            ("+3", "3"),
            ("-+-3", "3"),
            ("-(1+2)", "-3"),
            ("1-(-2)", "3"),
            # whitespace
            ("  1 +\t2 *\n3  ", "7"),
            ("( 2 ) ^ ( 3 )", "8"),
            ("1\u00a0+\u30002", "3"),
            # lib.rs: formatting
            ("-0", "0"),
            ("0*-1", "0"),
            ("2^53", "9007199254740992"),
            ("2^54", "18014398509481984"),
            ("7/2", "3.5"),
            ("10^21", "1000000000000000000000"),
            ("2^-20", "0.00000095367431640625"),
            ("1/3", "0.3333333333333333"),
            ("2^-1075", "0"),
            # exactly halfway between two shortest decimals: Rust rounds up, repr to even
            ("999999999999990.25", "999999999999990.3"),
            ("0.125+999999999999990.125", "999999999999990.3"),
            # nested parentheses and the depth cap
            ("((((1+2)*(3-4))/((5)))^2)", "0.36"),
            ("(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH, "1"),
            ("-" * MAX_DEPTH + "3", "3"),
            # long flat expressions are not deep
            ("+".join(["1"] * 10_000), "10000"),
            # the reviewed cases
            ("1.5 + 2.25", "3.75"),
            ("2 * (3 + 4) ^ 2", "98"),
        ]:
            with self.subTest(expr=expr[:40]):
                self.assertValue(expr, printed)

    def test_errors(self):
        for expr, message, code in [
            # division by zero names the operator
            ("1 + 4/(2-2)", "division by zero at position 5", "division-by-zero"),
            ("0/0", "division by zero at position 1", "division-by-zero"),
            ("1/-0", "division by zero at position 1", "division-by-zero"),
            ("0^-1", "division by zero at position 1", "division-by-zero"),
            ("1/0", "division by zero at position 1", "division-by-zero"),
            # syntax errors say what and where
            ("(1+2", "expected ')' at position 4", "syntax"),
            ("2*(3+4", "expected ')' at position 6", "syntax"),
            ("1+", "expected a number or '(' at position 2", "syntax"),
            ("*1", "expected a number or '(' at position 0", "syntax"),
            ("()", "expected a number or '(' at position 1", "syntax"),
            ("1+)", "expected a number or '(' at position 2", "syntax"),
            ("1)", "unmatched ')' at position 1", "syntax"),
            ("2 x", "unexpected character 'x' at position 2", "syntax"),
            ("1e5", "unexpected character 'e' at position 1", "syntax"),
            (".", "expected a digit at position 0", "syntax"),
            ("1 + .", "expected a digit at position 4", "syntax"),
            # positions count characters, not bytes
            ("1 + é", "unexpected character 'é' at position 4", "syntax"),
            ("(1 + 2) ×", "unexpected character '×' at position 8", "syntax"),
            ("\U0001f600 1", "unexpected character '\U0001f600' at position 0", "syntax"),
            # Rust's char Debug quoting
            ("1'", "unexpected character '\\'' at position 1", "syntax"),
            ("1\\", "unexpected character '\\\\' at position 1", "syntax"),
            ('1"', "unexpected character '\"' at position 1", "syntax"),
            ("1\u0301", "unexpected character '\\u{301}' at position 1", "syntax"),
            ("1\u200b", "unexpected character '\\u{200b}' at position 1", "syntax"),
            ("1\x1c", "unexpected character '\\u{1c}' at position 1", "syntax"),
            ("1\u0cc0", "unexpected character '\\u{cc0}' at position 1", "syntax"),  # Mc, but Grapheme_Extend
            # empty input
            ("", "expected a number or '(' at position 0", "syntax"),
            ("   ", "expected a number or '(' at position 3", "syntax"),
            # trailing garbage
            ("1 2", "expected an operator or end of input at position 2", "syntax"),
            ("(1)(2)", "expected an operator or end of input at position 3", "syntax"),
            ("1.2.3", "expected an operator or end of input at position 3", "syntax"),
            # overflow and domain (Python raises where C returns inf / NaN)
            ("10^400", "number too large at position 2", "overflow"),
            ("1+1" + "0" * 400, "number too large at position 2", "overflow"),
            ("(10^300)*(10^300)", "number too large at position 8", "overflow"),
            ("(10^200)/(10^-200)", "number too large at position 8", "overflow"),
            ("(-2)^1025", "number too large at position 4", "overflow"),
            ("(-8)^0.5", "result is not a real number at position 4", "domain"),
            ("(-8)^(1/3)", "result is not a real number at position 4", "domain"),
            ("(-1)^0.5", "result is not a real number at position 4", "domain"),
            # the depth cap
            ("(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1), "nesting deeper than 256 levels at position 256", "too-deep"),
            ("-" * 100_000, "nesting deeper than 256 levels at position 256", "too-deep"),
            ("2^" * 10_000, "nesting deeper than 256 levels at position 513", "too-deep"),
            ("(" * 100_000, "nesting deeper than 256 levels at position 256", "too-deep"),
            # evaluated while parsing, as the capsule does: the first error wins
            ("1/0+", "division by zero at position 1", "division-by-zero"),
            ("(1/0", "division by zero at position 2", "division-by-zero"),
            ("10^400 2", "number too large at position 2", "overflow"),
            ("1/0 + x", "unexpected character 'x' at position 6", "syntax"),  # the tokenizer runs first
            ("1/0 + 1" + "0" * 400, "number too large at position 6", "overflow"),
        ]:
            with self.subTest(expr=expr[:40]):
                self.assertError(expr, message, code)

    def test_command_line(self):
        ok = lambda out: (0, out, "")  # noqa: E731
        self.assertEqual(self.calc(["2", "^", "3", "^", "2"]), ok("512\n"))
        self.assertEqual(self.calc(["--", "-2^2"]), ok("-4\n"))
        self.assertEqual(self.calc(["-2^2"]), ok("-4\n"))
        self.assertEqual(self.calc([], "1+2\n\n2^-1\n"), ok("3\n0.5\n"))
        self.assertEqual(self.calc([], "1+2\r\n \t\r\n7/2"), ok("3\n3.5\n"))
        code, out, err = self.calc([], "1+\n4\n")
        self.assertEqual((code, out, err), (1, "4\n", "error: expected a number or '(' at position 2 (syntax)\n"))
        code, out, err = self.calc([], "1/0\n2^3^2\n")
        self.assertEqual((code, out, err), (1, "512\n", "error: division by zero at position 1 (division-by-zero)\n"))
        self.assertEqual(self.calc([], ""), ok(""))
        code, out, _ = self.calc(["--help"])
        self.assertEqual(code, 0)
        self.assertTrue(out.startswith("usage: calculator.py"))
        self.assertEqual(self.calc(["--", "-h"])[0], 0)
        p = subprocess.run([sys.executable, self.program], input=b"1+1\n\xff\n", capture_output=True, timeout=60)
        self.assertEqual((p.returncode, p.stdout), (2, b"2\n"))
        self.assertIn(b"error: cannot read stdin", p.stderr)

    def test_the_tree_evaluator_agrees(self):
        sys.path.insert(0, self.app)
        try:
            import calculator  # the generated module
        finally:
            sys.path.remove(self.app)
        try:
            for expr in ["2*(3+4)^2", "-2^2", "2^3^2", "2^-2^2", "--3", "1-(-2)", "+".join(["1"] * 10_000)]:
                self.assertEqual(calculator.evaluate(calculator.parse(expr)), calculator.calculate(expr), expr)
            tree = calculator.parse("-2^2")
            self.assertEqual(tree, calculator.Neg(calculator.Binary("^", calculator.Num(2.0), calculator.Num(2.0), 2)))
            # Parsing first, the syntax error wins; calculate reports the division, as the capsule does.
            with self.assertRaises(calculator.CalcError) as e:
                calculator.evaluate(calculator.parse("1/0+"))
            self.assertEqual(e.exception.code, "syntax")
            with self.assertRaises(calculator.CalcError) as e:
                calculator.calculate("1/0+")
            self.assertEqual((e.exception.code, e.exception.position), ("division-by-zero", 1))
        finally:
            sys.modules.pop("calculator", None)

    def test_the_generated_unittest_module_passes(self):
        p = subprocess.run(
            [sys.executable, "-m", "unittest", "-v", "test_calculator"],
            cwd=self.app,
            capture_output=True,
            timeout=120,
        )
        report = p.stderr.decode()
        self.assertEqual(p.returncode, 0, report)
        self.assertIn("test_every_reviewed_case_passes", report)
        self.assertIn("OK", report)

    def test_the_round_one_cases_fail_the_generated_unittest_module(self):
        round1 = run({"task": "test-cases", "goal": GOAL})
        out = assemble(tests=round1)
        d = tempfile.mkdtemp(prefix="py-kamachiq-coder-r1-")
        try:
            for name in ("calculator.py", "test_calculator.py"):
                with open(os.path.join(d, name), "w", encoding="utf-8") as f:
                    f.write(out["files"][f"calculator/{name}"])
            p = subprocess.run([sys.executable, "-m", "unittest", "test_calculator"], cwd=d, capture_output=True, timeout=120)
            report = p.stderr.decode()
            self.assertEqual(p.returncode, 1, report)
            self.assertIn("FAILED (failures=2)", report)
            self.assertIn("'2 ^ 3 ^ 2' = 512.0, expected 64.0", report)
            self.assertIn("'-2 ^ 2' = -4.0, expected 4.0", report)
        finally:
            shutil.rmtree(d, ignore_errors=True)


class AgainstTheCapsule(unittest.TestCase):
    """Differential: the generated program against the calculator capsule's
    own evaluator (capsules/calculator/src/eval.rs compiled with plain rustc
    into a temporary directory) on random expressions. Skipped without
    rustc or the Rust source."""

    def test_random_expressions_agree(self):
        import random

        eval_rs = os.path.join(REPO, "capsules", "calculator", "src", "eval.rs")
        rustc = shutil.which("rustc")
        if not (rustc and os.path.exists(eval_rs)):
            self.skipTest("needs rustc and capsules/calculator/src/eval.rs")
        d = tempfile.mkdtemp(prefix="py-kamachiq-coder-diff-")
        self.addCleanup(shutil.rmtree, d, True)
        with open(os.path.join(d, "main.rs"), "w", encoding="utf-8") as f:
            f.write(
                f"#[path = {json.dumps(eval_rs)}]\n#[allow(dead_code)]\nmod eval;\n"
                "use std::io::{BufRead, Write};\n"
                "fn main() {\n"
                "    let mut out = std::io::BufWriter::new(std::io::stdout());\n"
                "    for line in std::io::stdin().lock().lines() {\n"
                "        let expr = line.unwrap().replace('\\u{1}', \"\\n\");\n"
                "        match eval::evaluate(&expr) {\n"
                "            Ok(v) => writeln!(out, \"ok {}\", if v == 0.0 { \"0\".to_string() } else { format!(\"{v}\") }),\n"
                "            Err(e) => writeln!(out, \"err {} {}\", e.code(), e),\n"
                "        }.unwrap();\n"
                "    }\n"
                "}\n"
            )
        build = subprocess.run([rustc, "--edition", "2021", "-O", "main.rs", "-o", "eval"], cwd=d, capture_output=True, timeout=300)
        if build.returncode != 0:
            self.skipTest(f"rustc failed: {build.stderr.decode()[-500:]}")
        program = assemble()["files"]["calculator/calculator.py"]
        with open(os.path.join(d, "calculator.py"), "w", encoding="utf-8") as f:
            f.write(program)
        rnd = random.Random(19)
        atoms = ["0", "1", "2", "3", "10", "0.5", ".5", "5.", "007", "1.2.3", "300", "2.25", "0.1", "9" * 30, "1" + "0" * 320, "."]
        noise = list("+-*/^() \t\n") + ["é", "x", "'", "\\", "\u0301", "\u00a0", "\u200b", "\x1c"]

        def gen(depth=0):
            r = rnd.random()
            if depth > 6 or r < 0.3:
                return rnd.choice(atoms)
            if r < 0.45:
                return rnd.choice("-+") + gen(depth + 1)
            if r < 0.6:
                return "(" + gen(depth + 1) + ")"
            return gen(depth + 1) + rnd.choice("+-*/^^") + gen(depth + 1)

        exprs = []
        for _ in range(5000):
            e = list(gen())
            for _ in range(rnd.choice([0, 0, 1, 2])):
                e.insert(rnd.randint(0, len(e)), rnd.choice(noise + atoms))
            exprs.append("".join(e))
        rust = subprocess.run(
            [os.path.join(d, "eval")],
            input="".join(e.replace("\n", "\x01") + "\n" for e in exprs).encode(),
            capture_output=True,
            timeout=120,
        ).stdout.decode().split("\n")
        driver = (
            "import json, sys\nimport calculator as c\n"
            "for e in json.load(sys.stdin):\n"
            "    try:\n        print('ok ' + c.format_value(c.calculate(e)))\n"
            "    except c.CalcError as x:\n        print(f'err {x.code} {x}')\n"
        )
        py = subprocess.run(
            [sys.executable, "-c", driver], cwd=d, input=json.dumps(exprs).encode(), capture_output=True, timeout=120
        ).stdout.decode().split("\n")
        mismatches = [(e, r, p) for e, r, p in zip(exprs, rust, py) if r != p]
        self.assertEqual(len(rust[: len(exprs)]), len(exprs))
        self.assertEqual(mismatches, [])


# ---- app.py against the real SDK, with stand-ins for the bindings ----


def find_sdk():
    for candidate in (os.environ.get("SOMA_PYTHON_SDK"), os.path.join(REPO, "sdk", "python")):
        if candidate and os.path.isfile(os.path.join(candidate, "soma", "_capsule.py")):
            return candidate
    return None


@unittest.skipUnless(find_sdk(), "the soma Python SDK (sdk/python) is not found; set SOMA_PYTHON_SDK")
class AppAdapter(unittest.TestCase):
    def load(self, llm_answer):
        """Import app.py afresh against the SDK, with soma_native's stand-in
        bindings answering chats with ``llm_answer``."""
        sys.path[:0] = [find_sdk(), CAPSULE]
        self.addCleanup(lambda: [sys.path.remove(p) for p in (find_sdk(), CAPSULE)])
        import soma_native

        host = soma_native.install(llm_answer)
        self.addCleanup(host.uninstall)
        import app

        return app.WitWorld(), host.requests, host.logged, host.Err

    def test_describe(self):
        world, _, _, _ = self.load(("Denied", "x"))
        info = world.describe()
        self.assertEqual((info.name, info.version, info.kind.name), ("py-kamachiq-coder", "0.1.0", "WORKER"))
        self.assertEqual([(c.name, c.args) for c in info.capabilities], [("llm", ["kamachiq-coder"])])
        self.assertEqual(json.loads(info.input_schema)["properties"]["task"]["enum"], list(kc.TASKS))
        json.loads(info.output_schema)

    def test_run_without_an_llm_is_deterministic(self):
        world, requests, logged, _ = self.load(("Denied", "model kamachiq-coder is not granted"))
        out = json.loads(world.run(json.dumps({"task": "parser", "goal": GOAL})))
        self.assertEqual(out["strategy"], "deterministic")
        self.assertEqual(
            out["note"],
            "deterministic strategy: no LLM configured (llm denied: model kamachiq-coder is not granted); built-in template",
        )
        self.assertEqual(requests[0].model, "kamachiq-coder")
        self.assertEqual(requests[0].max_tokens, 4096)
        self.assertEqual(logged, [("INFO", "parser: strategy deterministic")])
        out = json.loads(world.run(json.dumps({"task": "test-cases", "goal": GOAL})))
        self.assertEqual((out["strategy"], out["revision"], len(out["cases"])), ("deterministic", 1, 14))

    def test_run_with_an_llm(self):
        world, _, _, _ = self.load("```python\ndef format_value(v): return str(v)\ndef main(argv=None): return 0\n```")
        out = json.loads(world.run(json.dumps({"task": "cli", "goal": GOAL})))
        self.assertEqual(out["strategy"], "llm:fake-model")

    def test_errors_are_capsule_errors(self):
        world, _, _, Err = self.load(("Invalid", "max_tokens too large"))
        for doc, code in [
            ("not json", "bad-input"),
            (json.dumps({"task": "deploy"}), "bad-input"),
            (json.dumps({"task": "assemble"}), "bad-input"),
            (json.dumps({"task": "cli"}), "llm-invalid"),
        ]:
            with self.assertRaises(Err, msg=doc) as e:
                world.run(doc)
            self.assertEqual(e.exception.value.code, code, doc)
        world, _, _, _ = self.load(("BudgetExceeded", "run budget"))
        out = json.loads(world.run(json.dumps({"task": "evaluator"})))
        self.assertIn("LLM budget exceeded (run budget)", out["note"])


if __name__ == "__main__":
    unittest.main()
