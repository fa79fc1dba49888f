"""The built-in templates of the four parts: sections of one Python module
(``calculator/calculator.py``), in the order :mod:`.assemble` joins them.

They share the module's namespace (no imports between sections) and only
define names; the assembler appends the ``__main__`` guard that calls
``main()``. Kept as string constants (not files) so they are part of the
capsule's bytecode: nothing is read from a filesystem at run time.
"""

TOKENIZER = r'''"""Tokenizer: splits an expression into numbers and the symbols
``+ - * / ^ ( )``, each with its 0-based character position, and defines
the error every stage raises."""

import collections
import math
import unicodedata


class CalcError(Exception):
    """Why an expression could not be evaluated. ``code`` is the Soma
    ``calculator`` capsule's: syntax, division-by-zero, overflow, domain or
    too-deep; ``position`` the 0-based character position; ``str(e)`` is
    e.g. ``division by zero at position 1``."""

    WHAT = {
        "division-by-zero": "division by zero",
        "overflow": "number too large",
        "domain": "result is not a real number",
    }

    def __init__(self, code, position, what=None):
        self.code = code
        self.position = position
        self.what = what if what is not None else self.WHAT.get(code, code)
        super().__init__(f"{self.what} at position {position}")


#: One token: ``kind`` is ``num`` (``value`` a float) or ``sym`` (``value``
#: one of ``+ - * / ^ ( )``); ``pos`` its character position.
Token = collections.namedtuple("Token", "kind value pos")

#: Unicode White_Space: what separates tokens.
WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
)

SYMBOLS = "+-*/^()"

# Grapheme extenders (Unicode 16, as Rust quotes them) that are not Mn or
# Me: Other_Grapheme_Extend and ZWNJ; and one Mn that no longer is one.
_EXTEND = frozenset(
    "\u09be\u09d7\u0b3e\u0b57\u0bbe\u0bd7\u0cc0\u0cc2\u0cc7\u0cc8\u0cca\u0ccb\u0cd5\u0cd6"
    "\u0d3e\u0d57\u0dcf\u0ddf\u1715\u1734\u1b35\u1b3b\u1b3d\u1b43\u1b44\u1baa\u1bf2\u1bf3"
    "\u200c\u302e\u302f\ua953\ua9c0\uff9e\uff9f"
    "\U000111c0\U00011235\U0001133e\U0001134d\U00011357\U000114b0\U000114bd\U000115af"
    "\U000116b6\U00011930\U0001193d\U00016ff0\U00016ff1\U0001d165\U0001d166\U0001d16d"
    + "".join(chr(c) for c in range(0x1D16E, 0x1D173))
)
_NOT_EXTEND = frozenset("\U0001171e")

_ESCAPES = {"\0": "\\0", "\t": "\\t", "\r": "\\r", "\n": "\\n", "\\": "\\\\", "'": "\\'"}


def quote_char(c):
    """``c`` quoted as in the calculator capsule's messages: ``'x'``, with
    ``\\n``-style or ``\\u{301}`` escapes for unprintable characters."""
    if c in _ESCAPES:
        return f"'{_ESCAPES[c]}'"
    extend = c in _EXTEND or (unicodedata.category(c) in ("Mn", "Me") and c not in _NOT_EXTEND)
    if extend or not c.isprintable():
        return "'\\u{%x}'" % ord(c)
    return f"'{c}'"


def tokenize(text):
    """The tokens of ``text``. Numbers are ASCII digits with at most one
    ``.`` (``12``, ``3.5``, ``.5``, ``5.``); whitespace is skipped; anything
    else is a syntax error."""
    tokens = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in WHITESPACE:
            i += 1
        elif c in SYMBOLS:
            tokens.append(Token("sym", c, i))
            i += 1
        elif "0" <= c <= "9" or c == ".":
            start = i
            seen_dot = c == "."
            i += 1
            while i < n and ("0" <= text[i] <= "9" or (text[i] == "." and not seen_dot)):
                seen_dot = seen_dot or text[i] == "."
                i += 1
            literal = text[start:i]
            if literal == ".":
                raise CalcError("syntax", start, "expected a digit")
            value = float(literal)
            if not math.isfinite(value):
                raise CalcError("overflow", start)
            tokens.append(Token("num", value, start))
        else:
            raise CalcError("syntax", i, f"unexpected character {quote_char(c)}")
    return tokens
'''

PARSER = r'''"""Parser: recursive descent from tokens to an expression tree (or, with
another builder, straight to a value).

Grammar, lowest precedence first::

    expr    = term (('+' | '-') term)*
    term    = unary (('*' | '/') unary)*
    unary   = ('+' | '-') unary | power
    power   = primary ('^' unary)?
    primary = number | '(' expr ')'

So ``^`` is right-associative (``2^3^2 = 2^(3^2)``) and binds tighter than
a sign on its left (``-2^2 = -(2^2)``), while its right operand may carry
a sign (``2^-1``)."""

import collections
import sys

#: Most nested parentheses, signs and exponents combined.
MAX_DEPTH = 256

# A nesting level takes up to six Python frames.
if sys.getrecursionlimit() < 10 * MAX_DEPTH + 1000:
    sys.setrecursionlimit(10 * MAX_DEPTH + 1000)

#: Tree nodes; ``pos`` is the operator's character position.
Num = collections.namedtuple("Num", "value")
Neg = collections.namedtuple("Neg", "operand")
Binary = collections.namedtuple("Binary", "op lhs rhs pos")


class TreeBuilder:
    """What the parser makes of each construct: here, tree nodes."""

    def num(self, value):
        return Num(value)

    def neg(self, operand):
        return Neg(operand)

    def binary(self, op, lhs, rhs, pos):
        return Binary(op, lhs, rhs, pos)


def parse(text, build=None):
    """Parse ``text``. ``build`` (default a :class:`TreeBuilder`) is called
    as soon as each number, negation or operation is complete, in the order
    the calculator capsule evaluates them; the result is what it returns
    for the whole expression."""
    parser = _Parser(tokenize(text), len(text), build if build is not None else TreeBuilder())
    result = parser.expr()
    token = parser.peek()
    if token is None:
        return result
    if token.kind == "sym" and token.value == ")":
        raise CalcError("syntax", token.pos, "unmatched ')'")
    raise CalcError("syntax", token.pos, "expected an operator or end of input")


class _Parser:
    def __init__(self, tokens, end, build):
        self.tokens = tokens
        self.next = 0
        self.end = end  # the position reported for the end of input
        self.depth = 0
        self.build = build

    def peek(self):
        return self.tokens[self.next] if self.next < len(self.tokens) else None

    def eat(self, symbols):
        """The next token if it is one of ``symbols``, consumed."""
        token = self.peek()
        if token is not None and token.kind == "sym" and token.value in symbols:
            self.next += 1
            return token
        return None

    def position(self):
        """The position of the next token, or of the end of input."""
        token = self.peek()
        return self.end if token is None else token.pos

    def nested(self, pos, parse_next):
        """``parse_next()`` one level deeper, too-deep at ``pos`` past MAX_DEPTH."""
        if self.depth >= MAX_DEPTH:
            raise CalcError("too-deep", pos, f"nesting deeper than {MAX_DEPTH} levels")
        self.depth += 1
        try:
            return parse_next()
        finally:
            self.depth -= 1

    def expr(self):
        lhs = self.term()
        while True:
            op = self.eat("+-")
            if op is None:
                return lhs
            lhs = self.build.binary(op.value, lhs, self.term(), op.pos)

    def term(self):
        lhs = self.unary()
        while True:
            op = self.eat("*/")
            if op is None:
                return lhs
            lhs = self.build.binary(op.value, lhs, self.unary(), op.pos)

    def unary(self):
        sign = self.eat("+-")
        if sign is None:
            return self.power()
        operand = self.nested(sign.pos, self.unary)
        return self.build.neg(operand) if sign.value == "-" else operand

    def power(self):
        base = self.primary()
        op = self.eat("^")
        if op is None:
            return base
        exponent = self.nested(op.pos, self.unary)
        return self.build.binary("^", base, exponent, op.pos)

    def primary(self):
        token = self.peek()
        if token is not None and token.kind == "num":
            self.next += 1
            return self.build.num(token.value)
        if token is not None and token.kind == "sym" and token.value == "(":
            self.next += 1
            inner = self.nested(token.pos, self.expr)
            if self.eat(")") is None:
                raise CalcError("syntax", self.position(), "expected ')'")
            return inner
        raise CalcError("syntax", self.position(), "expected a number or '('")
'''

EVALUATOR = r'''"""Evaluator: computes expressions as floats, rejecting division by zero
and any non-finite result, so every value it returns is finite."""

import math


def apply(op, a, b, pos):
    """``a op b`` for the operator at ``pos``."""
    if op == "+":
        value = a + b
    elif op == "-":
        value = a - b
    elif op == "*":
        value = a * b
    elif op == "/":
        if b == 0:
            raise CalcError("division-by-zero", pos)
        value = a / b
    elif op == "^":
        if a == 0 and b < 0:
            raise CalcError("division-by-zero", pos)
        # math.pow is C's pow, but raises where pow returns inf or NaN
        # (Python's ** would return a complex number for (-8)**0.5).
        try:
            value = math.pow(a, b)
        except OverflowError:
            raise CalcError("overflow", pos) from None
        except ValueError:
            raise CalcError("domain", pos) from None
    else:
        raise CalcError("syntax", pos, f"unknown operator {op!r}")
    if math.isnan(value):
        raise CalcError("domain", pos)
    if math.isinf(value):
        raise CalcError("overflow", pos)
    return value


class ValueBuilder:
    """Makes the parser compute values instead of tree nodes."""

    def num(self, value):
        return value

    def neg(self, operand):
        return -operand

    def binary(self, op, lhs, rhs, pos):
        return apply(op, lhs, rhs, pos)


def calculate(text):
    """The value of ``text``, e.g. ``calculate("2*(3+4)^2") == 98.0``;
    evaluated while parsing, so errors come in the calculator capsule's order."""
    return parse(text, ValueBuilder())


def evaluate(expr):
    """The value of a tree from ``parse(text)``, left operand first (an
    explicit stack: a long chain like ``1+1+...+1`` is a deep tree)."""
    values = []
    stack = [(expr, False)]
    while stack:
        node, done = stack.pop()
        if isinstance(node, Num):
            values.append(node.value)
        elif done and isinstance(node, Neg):
            values.append(-values.pop())
        elif done:
            rhs = values.pop()
            values.append(apply(node.op, values.pop(), rhs, node.pos))
        elif isinstance(node, Neg):
            stack += [(node, True), (node.operand, False)]
        else:
            stack += [(node, True), (node.rhs, False), (node.lhs, False)]
    return values.pop()
'''

CLI = r'''"""Command line: ``python3 calculator.py '2*(3+4)^2'`` prints ``98``. With
no arguments it reads one expression per line from stdin (blank lines are
skipped). An error goes to stderr as ``error: <what> at position <n>
(<code>)`` and the exit code is 1."""

import decimal
import fractions
import sys

USAGE = """usage: calculator.py [EXPRESSION...]
Evaluates an arithmetic expression: numbers, + - * / ^ (right-associative),
parentheses and unary signs; `-2^2` is -(2^2) = -4. With no EXPRESSION,
reads one expression per line from stdin. Exit code 1 on an error."""


def format_value(value):
    """Integral values without a fraction, others as the shortest decimal
    that reads back as the same float, never in exponent notation, exactly
    as Rust's ``{}`` prints an f64; ``-0`` prints as ``0``."""
    if value == 0:
        return "0"
    shortest = decimal.Decimal(repr(value))
    # When the float lies exactly halfway between two shortest decimals,
    # repr rounds the last digit to even and Rust up: take the upper one.
    sign, digits, exponent = shortest.as_tuple()
    upper = int("".join(map(str, digits))) + 1
    other = decimal.Decimal((sign, tuple(int(d) for d in str(upper)), exponent))
    exact = fractions.Fraction(value)
    if float(other) == value and abs(fractions.Fraction(other) - exact) == abs(fractions.Fraction(shortest) - exact):
        shortest = other
    text = format(shortest, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def report(text):
    """Evaluate ``text`` and print the value or the error; True on success."""
    try:
        value = calculate(text)
    except CalcError as e:
        sys.stdout.flush()
        print(f"error: {e} ({e.code})", file=sys.stderr, flush=True)
        return False
    try:
        print(format_value(value), flush=True)
    except OSError:  # e.g. stdout closed
        return False
    return True


def main(argv=None):
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(USAGE)
        return 0
    # `calculator.py -- -2^2` is the same as `calculator.py -2^2`.
    if args and args[0] == "--":
        args.pop(0)
    if args:
        return 0 if report(" ".join(args)) else 1
    ok = True
    for raw in sys.stdin.buffer:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            print(f"error: cannot read stdin: {e}", file=sys.stderr)
            return 2
        line = line[:-1] if line.endswith("\n") else line
        line = line[:-1] if line.endswith("\r") else line
        # Blank: only Unicode White_Space (str.isspace also counts \x1c-\x1f).
        if any(not c.isspace() or c in "\x1c\x1d\x1e\x1f" for c in line):
            ok = report(line) and ok
    return 0 if ok else 1
'''
