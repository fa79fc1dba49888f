"""Chat completions through the operator's LLM providers, metered per token.

Failures raise :class:`LlmError`, a :class:`soma.CapsuleError` whose code is
``llm-budget-exceeded``, ``llm-unavailable`` (retryable), ``llm-denied`` or
``llm-invalid``, like the Rust SDK's."""

from componentize_py_types import Err as _Err

from ._capsule import CapsuleError, binding

_wit = binding("llm", capability="llm", ask=".wants_llm_model(MODEL)")
ChatRequest = _wit.ChatRequest
Completion = _wit.Completion
Message = _wit.Message
Role = _wit.Role
Usage = _wit.Usage

__all__ = ["Chat", "Completion", "LlmError", "Message", "Role", "Usage", "chat"]

_CODES = {
    _wit.LlmError_BudgetExceeded: "llm-budget-exceeded",
    _wit.LlmError_Unavailable: "llm-unavailable",
    _wit.LlmError_Denied: "llm-denied",
    _wit.LlmError_Invalid: "llm-invalid",
}


class LlmError(CapsuleError):
    """A chat call failed; ``code`` says why (see the module doc)."""

    @property
    def budget_exceeded(self) -> bool:
        return self.code == "llm-budget-exceeded"


def chat(request: ChatRequest) -> Completion:
    """Send one WIT ``chat-request``; raises :class:`LlmError`."""
    try:
        return _wit.chat(request)
    except _Err as e:
        code = _CODES.get(type(e.value), "llm-unknown")
        raise LlmError(code, str(getattr(e.value, "value", e.value)), retryable=code == "llm-unavailable") from None


class Chat:
    """A chat request under construction::

        answer = soma.llm.Chat("default").system("You are terse.").user("Name three primes.").max_tokens(64).send()
        print(answer.text)
    """

    def __init__(self, model: str):
        self._request = ChatRequest(model=model, messages=[], max_tokens=None, temperature=None, stop=[])

    def _message(self, role: Role, content: str) -> "Chat":
        self._request.messages.append(Message(role=role, content=content))
        return self

    def system(self, content: str) -> "Chat":
        return self._message(Role.SYSTEM, content)

    def user(self, content: str) -> "Chat":
        return self._message(Role.USER, content)

    def assistant(self, content: str) -> "Chat":
        return self._message(Role.ASSISTANT, content)

    def max_tokens(self, n: int) -> "Chat":
        """Cap completion tokens (the host reserves budget for this many)."""
        self._request.max_tokens = n
        return self

    def temperature(self, t: float) -> "Chat":
        self._request.temperature = t
        return self

    def stop(self, s: str) -> "Chat":
        self._request.stop.append(s)
        return self

    def send(self) -> Completion:
        """Send the request; raises :class:`LlmError`."""
        return chat(self._request)
