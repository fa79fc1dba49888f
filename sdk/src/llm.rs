//! Chat completions through the operator's LLM providers, metered per token.

use crate::bindings::soma::capsule::llm as wit;
pub use crate::bindings::soma::capsule::llm::{
    ChatRequest, Completion, LlmError, Message, Role, Usage,
};

impl From<LlmError> for crate::Error {
    fn from(e: LlmError) -> Self {
        let (code, retryable) = match &e {
            LlmError::BudgetExceeded(_) => ("llm-budget-exceeded", false),
            LlmError::Unavailable(_) => ("llm-unavailable", true),
            LlmError::Denied(_) => ("llm-denied", false),
            LlmError::Invalid(_) => ("llm-invalid", false),
        };
        let err = crate::Error::new(code, e.to_string());
        if retryable { err.retryable() } else { err }
    }
}

/// A chat request under construction.
///
/// ```ignore
/// let answer = soma_sdk::llm::Chat::new("default")
///     .system("You are terse.")
///     .user("Name three primes.")
///     .max_tokens(64)
///     .send()?;
/// ```
#[derive(Debug, Clone)]
pub struct Chat {
    request: ChatRequest,
}

impl Chat {
    /// Start a request to `model` (a model name or operator alias).
    pub fn new(model: &str) -> Self {
        Self {
            request: ChatRequest {
                model: model.to_owned(),
                messages: Vec::new(),
                max_tokens: None,
                temperature: None,
                stop: Vec::new(),
            },
        }
    }

    fn message(mut self, role: Role, content: &str) -> Self {
        self.request.messages.push(Message {
            role,
            content: content.to_owned(),
        });
        self
    }

    /// Add a system message.
    #[must_use]
    pub fn system(self, content: &str) -> Self {
        self.message(Role::System, content)
    }

    /// Add a user message.
    #[must_use]
    pub fn user(self, content: &str) -> Self {
        self.message(Role::User, content)
    }

    /// Add an assistant message.
    #[must_use]
    pub fn assistant(self, content: &str) -> Self {
        self.message(Role::Assistant, content)
    }

    /// Cap completion tokens (the host reserves budget for this many).
    #[must_use]
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.request.max_tokens = Some(n);
        self
    }

    /// Set the sampling temperature.
    #[must_use]
    pub fn temperature(mut self, t: f32) -> Self {
        self.request.temperature = Some(t);
        self
    }

    /// Add a stop sequence.
    #[must_use]
    pub fn stop(mut self, s: &str) -> Self {
        self.request.stop.push(s.to_owned());
        self
    }

    /// Send the request.
    pub fn send(self) -> Result<Completion, LlmError> {
        wit::chat(&self.request)
    }
}
