//! `llm`: chat completions through operator-configured providers.
//!
//! This release has the full contract and the grant check; no provider
//! backend is wired yet, so a granted, well-formed request answers
//! `unavailable` saying so. Provider routing, metering and budgets come with
//! the token-economics work and plug in behind [`State`].

use serde::{Deserialize, Serialize};
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::soma::capsule::llm::{self as wit, ChatRequest, Completion, LlmError};

/// Operator settings (`[llm]` in `soma.toml`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Largest accepted request (sum of message bytes).
    pub max_request_bytes: Option<usize>,
}

impl Config {
    fn max_request_bytes(&self) -> usize {
        self.max_request_bytes.unwrap_or(1024 * 1024)
    }
}

/// The models a call may use. Empty denies every model.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Granted model names or aliases.
    pub models: Vec<String>,
}

/// Per-call LLM state.
#[derive(Debug)]
pub struct State {
    config: Config,
    grant: Grant,
}

impl State {
    /// Fresh state for one call.
    pub fn new(config: Config, grant: Grant) -> Self {
        Self { config, grant }
    }
}

/// Store data that hands out the per-call LLM state.
pub trait LlmView {
    /// The call's LLM state.
    fn llm_state(&mut self) -> &mut State;
}

/// Wire `soma:capsule/llm` into `linker`. Once per engine.
pub fn add_to_linker<T: LlmView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<State>>(linker, |t| t.llm_state())
}

impl wit::Host for State {
    fn chat(&mut self, request: ChatRequest) -> Result<Completion, LlmError> {
        if !self.grant.models.contains(&request.model) {
            return Err(LlmError::Denied(format!(
                "model {:?} is not granted to this capsule (granted: {:?}); \
                 ask for it in describe() and have the operator allow it",
                request.model, self.grant.models
            )));
        }
        if request.messages.is_empty() {
            return Err(LlmError::Invalid(
                "a chat request needs at least one message".into(),
            ));
        }
        let size: usize = request.messages.iter().map(|m| m.content.len()).sum();
        if size > self.config.max_request_bytes() {
            return Err(LlmError::Invalid(format!(
                "request is {size} bytes; the limit is {}",
                self.config.max_request_bytes()
            )));
        }
        Err(LlmError::Unavailable(
            "no LLM provider is configured on this host".into(),
        ))
    }
}
