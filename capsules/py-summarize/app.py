"""``py-summarize``: the Python twin of the Rust ``summarize`` capsule.

Input: ``{"text": "...", "model": "default", "max_words": 60}``.
Output: ``{"summary": "...", "source": "llm" | "extractive", "model": ..., "usage": {...}, "note": ...}``.

When the LLM is unavailable or the budget is exhausted it does not fail: it
falls back to an extractive summary (the leading sentences) and says why in
``note``, so a DAG can continue and the operator sees the cause. Other LLM
errors (denied, invalid) fail the call with the SDK's ``llm-*`` codes.
"""

import soma

INPUT_SCHEMA = {
    "type": "object",
    "required": ["text"],
    "properties": {
        "text": {"type": "string"},
        "model": {"type": "string"},
        "max_words": {"type": "integer", "minimum": 1},
    },
}

SYSTEM = "Summarize the user's text faithfully and briefly. Reply with the summary only."


def extractive(text: str, max_words: int) -> str:
    """The leading sentences of ``text``, at most ``max_words`` words (the
    Rust capsule's rule: stop at a sentence end once half the words are in)."""
    out = []
    for word in text.split():
        if len(out) >= max_words:
            break
        out.append(word)
        if len(out) >= max_words // 2 and word.endswith((".", "!", "?")):
            break
    return " ".join(out)


class Summarize(soma.Capsule):
    def describe(self):
        return (
            soma.Info.worker("py-summarize", "0.1.0")
            .description("Summarizes text with an LLM, or extractively when none is available (Python)")
            .input_schema(INPUT_SCHEMA)
            .wants_llm_model("default")
        )

    def run(self, input):
        doc = soma.json.parse(input)
        text = soma.json.field(doc, "text", str)
        model = soma.json.field(doc, "model", str) if "model" in doc else "default"
        max_words = soma.json.field(doc, "max_words", int) if "max_words" in doc else 60
        if not 0 <= max_words <= 0xFFFF_FFFF:
            raise soma.CapsuleError.bad_input("max_words must be between 0 and 4294967295")
        if not text.strip():
            raise soma.CapsuleError.bad_input("text is empty")
        request = (
            soma.llm.Chat(model)
            .system(SYSTEM)
            .user(text)
            .max_tokens(min(max(max_words * 2, 16), 0xFFFF_FFFF))
        )
        try:
            c = request.send()
        except soma.llm.LlmError as e:
            if e.code == "llm-budget-exceeded":
                why = "budget exceeded"
            elif e.code == "llm-unavailable":
                why = "llm unavailable"
            else:
                raise
            soma.log.warn("falling back to an extractive summary", reason=e.code)
            detail = e.message
            return {"summary": extractive(text, max_words), "source": "extractive", "note": f"{why}: {detail}"}
        return {
            "summary": c.text.strip(),
            "source": "llm",
            "model": c.model,
            "usage": {
                "prompt_tokens": c.usage.prompt_tokens,
                "completion_tokens": c.usage.completion_tokens,
                "estimated": c.estimated,
            },
        }


WitWorld = soma.export(Summarize)
