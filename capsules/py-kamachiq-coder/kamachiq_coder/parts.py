"""The four parts of the calculator program: what each must provide (the
contract given to the LLM), the built-in template, and writing one."""

import ast

from . import templates
from .core import LlmFailure, Prompt, ask, compact, fallback_reason, line_count, trim, trim_end

#: Every part, in the order the program is assembled.
ALL = ("tokenizer", "parser", "evaluator", "cli")

#: Where every part lives: sections of one module.
FILE = "calculator/calculator.py"

TEMPLATES = {
    "tokenizer": templates.TOKENIZER,
    "parser": templates.PARSER,
    "evaluator": templates.EVALUATOR,
    "cli": templates.CLI,
}

#: What each part must define at its top level so the others fit, as
#: (kind, name); a reply lacking one of them is not used.
REQUIRED = {
    "tokenizer": (("class", "CalcError"), ("def", "tokenize")),
    "parser": (("=", "MAX_DEPTH"), ("def", "parse")),
    "evaluator": (("def", "evaluate"), ("def", "calculate")),
    "cli": (("def", "format_value"), ("def", "main")),
}

_SHARED = (
    "It is one section of a single Python 3 module, `calculator.py`, made of the sections "
    "tokenizer, parser, evaluator and cli in that order. The sections share the module's "
    "namespace: use the names earlier sections define directly, never import them; import "
    "the standard library modules you use in your section; no `from __future__` imports; "
    "define names only (no top-level code that runs work)."
)

CONTRACTS = {
    "tokenizer": (
        "Section `tokenizer`. Define:\n"
        "- `class CalcError(Exception)` with `__init__(self, code, position, what=None)` and the "
        "attributes `code`, `position`, `what`: `code` is syntax / division-by-zero / overflow / "
        "domain / too-deep, `position` the 0-based character position, `what` the description "
        "(default by code: `division by zero`, `number too large`, `result is not a real "
        "number`); `str(e)` is `<what> at position <position>`, e.g. `division by zero at "
        "position 1`;\n"
        "- `Token = collections.namedtuple(\"Token\", \"kind value pos\")`: kind `num` (value a "
        "float) or `sym` (value one of + - * / ^ ( ));\n"
        "- `def tokenize(text)` returning the list of tokens: numbers are ASCII digits with at "
        "most one '.', also `.5` and `5.` (a lone `.` is the syntax error `expected a digit`); a "
        "non-finite literal is overflow at its first character; Unicode whitespace is skipped; "
        "any other character c is the syntax error `unexpected character 'c'`."
    ),
    "parser": (
        "Section `parser`; use `tokenize`, `Token` and `CalcError`. Define `MAX_DEPTH = 256`; "
        "the tree nodes `Num(value)`, `Neg(operand)` and `Binary(op, lhs, rhs, pos)` "
        "(namedtuples; pos is the operator's position); `class TreeBuilder` with the methods "
        "`num(value)`, `neg(operand)` and `binary(op, lhs, rhs, pos)` returning those nodes; and "
        "`def parse(text, build=None)` (build defaults to a TreeBuilder), a recursive-descent "
        "parser for: expr = term (('+'|'-') term)*; term = unary (('*'|'/') unary)*; unary = "
        "('+'|'-') unary | power; power = primary ('^' unary)?; primary = number | '(' expr ')'. "
        "It calls build.num / build.neg / build.binary as soon as each construct is complete "
        "(so a builder that computes values evaluates in parse order) and returns the result. "
        "So ^ is right-associative and -2^2 = -(2^2). Each '(', sign and '^' nests one level; "
        "deeper than MAX_DEPTH is too-deep at that token (`nesting deeper than 256 levels`); "
        "syntax errors: `expected a number or '('` and `expected ')'` (at the next token, or "
        "len(text) at the end), `unmatched ')'`, `expected an operator or end of input`. Raise "
        "sys.setrecursionlimit if the recursion needs it."
    ),
    "evaluator": (
        "Section `evaluator`; use `parse`, `CalcError`, `Num`, `Neg` and `Binary`. Define `def "
        "evaluate(expr)`: the float value of a tree from parse (left operand first; no Python "
        "recursion per node, chains like 1+1+...+1 are deep), and `def calculate(text)`: the "
        "value of text, parsed with a builder that computes values so errors come in evaluation "
        "order. Rules: x/0 (also 0/0) and 0^negative are division-by-zero at the operator's "
        "pos; ^ uses math.pow (an OverflowError is overflow, a ValueError such as (-8)^0.5 is "
        "domain; never Python's **, which returns complex numbers); a NaN result is domain, an "
        "infinite one overflow; every returned value is finite."
    ),
    "cli": (
        "Section `cli`, the last; use `calculate` and `CalcError`. Define `def "
        "format_value(value)`: integral values without a fraction, others as the shortest "
        "decimal that reads back as the same float, never in exponent notation; -0 as 0. Define "
        "`def main(argv=None)` returning the exit code (argv defaults to sys.argv[1:]; do not "
        "call main: the assembler appends `if __name__ == \"__main__\": sys.exit(main())`): "
        "-h or --help anywhere prints usage and returns 0; a leading `--` is dropped; with "
        "arguments, join them with spaces and evaluate that one expression; without, evaluate "
        "each non-blank stdin line. Print each value on stdout with format_value; print errors "
        "on stderr as `error: <str(e)> (<e.code>)`; return 1 if any expression failed."
    ),
}

SYSTEM = (
    "You write one part of a single-file Python 3 program run with plain `python3 "
    "calculator.py` (standard library only). Reply with the Python code only, in one ```python "
    "fenced block."
)


def describe(item):
    kind, name = item
    return f"{name} =" if kind == "=" else f"{kind} {name}"


def missing_items(part, code):
    """The contracted items ``code`` lacks (all of them, with the reason,
    if it is not valid Python), as text; empty when it has them all."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError) as e:
        return [f"valid Python ({type(e).__name__}: {e})"]
    defined = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            defined.add(("class", node.name))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defined.add(("def", node.name))
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    defined.add(("=", target.id))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined.add(("=", node.target.id))
    missing = [describe(item) for item in REQUIRED[part] if item not in defined]
    if any(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in ast.walk(tree)):
        missing.append("no `from __future__` import")
    return missing


def extract_code(reply):
    """The code in a reply: the first fenced block if there is one, else all of it."""
    start = reply.find("```")
    if start < 0:
        return trim(reply) + "\n"
    after = reply[start + 3 :]
    nl = after.find("\n")
    # Skip the info string (`python`) up to the end of the fence line.
    body = after[nl + 1 :] if nl >= 0 else ""
    end = body.find("```")
    if end >= 0:
        body = body[:end]
    return trim_end(body) + "\n"


def write(part, goal, feedback, model, chat):
    """Write ``part``: ask the LLM, or fall back to the template."""
    prompt = Prompt(
        model=model,
        system=SYSTEM,
        user=(
            f"Goal: {goal}\n\nWrite the `{part}` part.\n{_SHARED}\n{CONTRACTS[part]}"
            + (f"\n\nReviewer feedback on the previous version:\n{compact(feedback)}" if feedback is not None else "")
        ),
        max_tokens=4096,
    )
    template = TEMPLATES[part]
    try:
        reply = ask(chat, prompt)
    except LlmFailure as e:
        strategy, code = "deterministic", template
        note = f"deterministic strategy: {fallback_reason(e)}; built-in template"
    else:
        code = extract_code(reply.text)
        missing = missing_items(part, code)
        if not missing:
            strategy, note = f"llm:{reply.model}", f"written by the LLM model {reply.model}"
        else:
            strategy, code = "deterministic", template
            note = f"deterministic strategy: the LLM reply lacked {', '.join(missing)}; built-in template"
    if feedback is not None and strategy == "deterministic":
        note += " (feedback noted; the template is fixed)"
    return {
        "task": part,
        "strategy": strategy,
        "note": note,
        "file": FILE,
        "lines": line_count(code),
        "code": code,
    }
