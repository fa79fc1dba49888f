"""``py-kamachiq-coder``: the Python twin of the Rust ``kamachiq-coder``.

The KAMACHIQ worker, writing a Python command-line calculator
(``calculator/calculator.py``, ``calculator/test_calculator.py``,
``calculator/README.md``) instead of a Rust one. All logic is in the pure
package :mod:`kamachiq_coder` (tested natively by ``tests/test_coder.py``);
this module only adapts it to the SDK: the LLM through :mod:`soma.llm`, the
log through :mod:`soma.log`, errors as capsule errors (``bad-input``;
``llm-invalid`` fails the task; a denied, unavailable or over-budget LLM is
the deterministic strategy, said in ``note``).
"""

import soma

import kamachiq_coder


def chat(prompt: kamachiq_coder.Prompt) -> kamachiq_coder.Reply:
    """One chat call through the SDK; its errors as :class:`kamachiq_coder.LlmFailure`."""
    request = (
        soma.llm.Chat(prompt.model)
        .system(prompt.system)
        .user(prompt.user)
        .max_tokens(prompt.max_tokens)
        .temperature(0.2)
    )
    try:
        c = request.send()
    except soma.llm.LlmError as e:
        raise kamachiq_coder.LlmFailure(e.code, e.message) from None
    return kamachiq_coder.Reply(c.text, c.model)


class Coder(soma.Capsule):
    def describe(self):
        return (
            soma.Info.worker("py-kamachiq-coder", "0.1.0")
            .description(
                "KAMACHIQ coder (Python): writes the parts and test cases of a Python command-line "
                "calculator (LLM, or built-in templates without one) and assembles them"
            )
            .input_schema(kamachiq_coder.INPUT_SCHEMA)
            .output_schema(kamachiq_coder.OUTPUT_SCHEMA)
            .wants_llm_model(kamachiq_coder.DEFAULT_MODEL)
        )

    def run(self, input):
        try:
            out = kamachiq_coder.run(input, chat=chat, log=soma.log.info)
        except kamachiq_coder.BadInput as e:
            raise soma.CapsuleError.bad_input(e.message) from None
        except kamachiq_coder.WrongLanguage as e:
            raise soma.CapsuleError(e.code, e.message) from None
        except kamachiq_coder.LlmFailure as e:
            raise soma.CapsuleError(e.code, e.message, retryable=e.code == "llm-unavailable") from None
        return soma.json.output(out)


WitWorld = soma.export(Coder)
