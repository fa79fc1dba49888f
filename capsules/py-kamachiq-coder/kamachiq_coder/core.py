"""What every task shares: the errors, the LLM request and reply, the
fallback reasons, strict JSON and Rust-compatible text helpers.

Pure Python (no SDK import), so the whole coder runs and is tested natively.
"""

import collections
import json

#: The LLM model (or operator alias) the coder asks for by default.
DEFAULT_MODEL = "kamachiq-coder"


class BadInput(Exception):
    """The input could not be understood (the capsule error ``bad-input``)."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


class WrongLanguage(Exception):
    """The plan asked for a program in another language (the capsule error
    ``unsupported-language``: not retryable, the spec picks the coder)."""

    code = "unsupported-language"

    def __init__(self, lang):
        self.message = (
            f"this coder writes Python, not {lang}: run a spec whose `coder` is the Rust "
            "kamachiq-coder (examples/kamachiq/kamachiq.yaml)"
        )
        super().__init__(self.message)


class LlmFailure(Exception):
    """A chat call failed. ``code`` is the SDK's: ``llm-denied``,
    ``llm-unavailable``, ``llm-budget-exceeded`` or ``llm-invalid``."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


#: A chat request (``chat`` callables receive one).
Prompt = collections.namedtuple("Prompt", "model system user max_tokens")

#: A chat reply: the completion text and the model that answered.
Reply = collections.namedtuple("Reply", "text model")


def fallback_reason(e):
    """Why the deterministic strategy is used after ``e``, for ``note``; an
    LLM failure that is a bug rather than a missing provider (``invalid``,
    or anything unknown) is raised again and fails the task."""
    if e.code == "llm-denied":
        return f"no LLM configured (llm denied: {e.message})"
    if e.code == "llm-unavailable":
        return f"no LLM configured (llm unavailable: {e.message})"
    if e.code == "llm-budget-exceeded":
        return f"LLM budget exceeded ({e.message})"
    raise e


def ask(chat, prompt):
    """``chat(prompt)`` as a :class:`Reply`, or the :class:`LlmFailure`."""
    reply = chat(prompt)
    if not isinstance(reply, Reply):
        reply = Reply(str(reply.text), str(reply.model))
    return reply


# ---- JSON, as strict as serde_json ----


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text):
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


def _int(text):
    value = int(text)
    try:
        float(value)
    except OverflowError:
        raise ValueError("number out of range") from None
    return value


def _has_lone_surrogate(doc):
    stack = [doc]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if any("\ud800" <= c <= "\udfff" for c in v):
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def loads(text):
    """Parse JSON like serde_json: no NaN/Infinity, no numbers out of the
    f64 range, no lone surrogates. Raises ValueError."""
    try:
        doc = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_int)
    except RecursionError:
        raise ValueError("recursion limit exceeded") from None
    if _has_lone_surrogate(doc):
        raise ValueError("lone surrogate in a string")
    return doc


def compact(value):
    """``value`` as compact JSON (how Rust's ``Value`` displays)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def is_number(value):
    """A JSON number (bool is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_u64(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFF_FFFF_FFFF_FFFF


# ---- text, as Rust's str does it ----

#: Unicode White_Space (Rust's ``char::is_whitespace``; ``str.isspace``
#: also counts U+001C..U+001F).
WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(chr(c) for c in range(0x2000, 0x200B))
)
_WS = "".join(sorted(WHITESPACE))


def trim(text):
    """Rust's ``str::trim``."""
    return text.strip(_WS)


def trim_end(text):
    """Rust's ``str::trim_end``."""
    return text.rstrip(_WS)


def one_line(text):
    """Rust's ``split_whitespace().join(" ")``."""
    words, word = [], []
    for c in text:
        if c in WHITESPACE:
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(c)
    if word:
        words.append("".join(word))
    return " ".join(words)


def line_count(text):
    """Rust's ``str::lines().count()``."""
    return text.count("\n") + (1 if text and not text.endswith("\n") else 0)
