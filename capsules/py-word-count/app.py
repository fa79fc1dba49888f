"""``py-word-count``: the Python twin of the Rust ``word-count`` capsule.

Counts the words, lines, chars and bytes of a text and lists its most
frequent words, with the same contract and the same answers as
``capsules/word-count`` (``tests/tests/integration/python.rs`` checks it).

Input ``{"text": "..."}``, output
``{"words": N, "lines": N, "chars": N, "bytes": N, "top": [{"word": "the", "count": 3}, ...]}``.
See :func:`count` for the exact rules. Error code: ``bad-input``.
"""

import soma

from alnum import is_alphanumeric

#: How many of the most frequent words :func:`count` reports.
TOP_N = 5

APOSTROPHES = ("'", "\u2019")

INPUT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"text": {"type": "string", "description": "The text to count"}},
    "required": ["text"],
}

OUTPUT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "words": {"type": "integer", "minimum": 0, "description": "Runs of letters and digits (inner apostrophes kept)"},
        "lines": {"type": "integer", "minimum": 0, "description": "Newlines, plus one for a final unterminated line"},
        "chars": {"type": "integer", "minimum": 0, "description": "Unicode scalar values"},
        "bytes": {"type": "integer", "minimum": 0, "description": "UTF-8 bytes"},
        "top": {
            "type": "array",
            "maxItems": TOP_N,
            "description": "Most frequent lowercase words, ties broken alphabetically",
            "items": {
                "type": "object",
                "properties": {"word": {"type": "string"}, "count": {"type": "integer", "minimum": 1}},
                "required": ["word", "count"],
            },
        },
    },
    "required": ["words", "lines", "chars", "bytes", "top"],
}


def count(text: str) -> dict:
    """Count ``text``.

    - A word is a maximal run of alphanumeric chars (Unicode-aware, Rust's
      ``char::is_alphanumeric``); an apostrophe (``'`` or ``’``) between two
      alphanumerics belongs to the word, so ``don't`` is one word. Words are
      lowercased char by char (as Rust's ``char::to_lowercase``: no
      final-sigma rule) and ``’`` becomes ``'``.
    - Lines are newlines, plus one if the text does not end with a newline.
    - ``top`` holds the ``TOP_N`` most frequent words, ties broken by code
      point order.
    """
    freq: dict = {}
    words = 0
    word: list = []
    n = len(text)
    for i, c in enumerate(text):
        if is_alphanumeric(c):
            word.append(c.lower())
        elif c in APOSTROPHES and word and i + 1 < n and is_alphanumeric(text[i + 1]):
            word.append("'")
        elif word:
            words += 1
            w = "".join(word)
            freq[w] = freq.get(w, 0) + 1
            word = []
    if word:
        words += 1
        w = "".join(word)
        freq[w] = freq.get(w, 0) + 1

    top = sorted(freq.items(), key=lambda wc: (-wc[1], wc[0]))[:TOP_N]
    return {
        "words": words,
        "lines": text.count("\n") + (1 if text and not text.endswith("\n") else 0),
        "chars": n,
        "bytes": len(text.encode("utf-8")),
        "top": [{"word": w, "count": c} for w, c in top],
    }


class WordCount(soma.Capsule):
    def describe(self):
        return (
            soma.Info.worker("py-word-count", "0.1.0")
            .description("Counts words, lines, chars and bytes of a text and lists its most frequent words (Python)")
            .input_schema(INPUT_SCHEMA)
            .output_schema(OUTPUT_SCHEMA)
        )

    def run(self, input):
        text = soma.json.field(soma.json.parse(input), "text", str)
        return soma.json.output(count(text))


WitWorld = soma.export(WordCount)
