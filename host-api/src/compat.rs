//! `soma:capsule@0.1.0`'s capability interfaces, served by the current
//! per-call states.
//!
//! The 0.1.0 interfaces `log`, `kv`, `llm` and `events` are identical to
//! 0.2.0's; only the package version (and so the import names and the
//! generated Rust types) differ. Each impl below converts the arguments,
//! calls the 0.2.0 host function and converts the result back: a 0.1.0
//! capsule gets exactly the behaviour, limits and errors of a 0.2.0 one.
//!
//! Frozen with the 0.1.0 contract: a capability added later exists only in
//! 0.2.0 and later and adds nothing here.

use wasmtime::component::{HasSelf, Linker};

use crate::{
    bindings::{soma::capsule as now, v0_1::soma::capsule as old},
    events, kv, llm, log,
};

/// Wire the 0.1.0 `log`, `kv`, `llm` and `events` interfaces into
/// `linker`, over the same per-call states as 0.2.0's. Once per engine.
pub fn add_to_linker<T>(linker: &mut Linker<T>) -> wasmtime::Result<()>
where
    T: log::LogView + kv::KvView + llm::LlmView + events::EventsView + 'static,
{
    old::log::add_to_linker::<T, HasSelf<log::State>>(linker, |t| t.log_state())?;
    old::kv::add_to_linker::<T, HasSelf<kv::State>>(linker, |t| t.kv_state())?;
    old::llm::add_to_linker::<T, HasSelf<llm::State>>(linker, |t| t.llm_state())?;
    old::events::add_to_linker::<T, HasSelf<events::State>>(linker, |t| t.events_state())
}

impl old::log::Host for log::State {
    fn log(&mut self, level: old::log::Level, message: String, fields: Vec<(String, String)>) {
        use old::log::Level as L;
        let level = match level {
            L::Trace => now::log::Level::Trace,
            L::Debug => now::log::Level::Debug,
            L::Info => now::log::Level::Info,
            L::Warn => now::log::Level::Warn,
            L::Error => now::log::Level::Error,
        };
        now::log::Host::log(self, level, message, fields);
    }
}

impl old::events::Host for events::State {
    fn emit(&mut self, name: String, payload: String) {
        now::events::Host::emit(self, name, payload);
    }
}

fn scope(s: old::kv::Scope) -> now::kv::Scope {
    match s {
        old::kv::Scope::Capsule => now::kv::Scope::Capsule,
        old::kv::Scope::Run => now::kv::Scope::Run,
    }
}

fn kv_error(e: now::kv::KvError) -> old::kv::KvError {
    match e {
        now::kv::KvError::Denied(m) => old::kv::KvError::Denied(m),
        now::kv::KvError::QuotaExceeded(m) => old::kv::KvError::QuotaExceeded(m),
        now::kv::KvError::Unavailable(m) => old::kv::KvError::Unavailable(m),
    }
}

impl old::kv::Host for kv::State {
    fn get(&mut self, s: old::kv::Scope, key: String) -> Result<Option<Vec<u8>>, old::kv::KvError> {
        now::kv::Host::get(self, scope(s), key).map_err(kv_error)
    }

    fn set(
        &mut self,
        s: old::kv::Scope,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), old::kv::KvError> {
        now::kv::Host::set(self, scope(s), key, value).map_err(kv_error)
    }

    fn delete(&mut self, s: old::kv::Scope, key: String) -> Result<bool, old::kv::KvError> {
        now::kv::Host::delete(self, scope(s), key).map_err(kv_error)
    }

    fn list_keys(
        &mut self,
        s: old::kv::Scope,
        prefix: String,
        limit: u32,
    ) -> Result<Vec<String>, old::kv::KvError> {
        now::kv::Host::list_keys(self, scope(s), prefix, limit).map_err(kv_error)
    }
}

impl old::llm::Host for llm::State {
    fn chat(
        &mut self,
        r: old::llm::ChatRequest,
    ) -> Result<old::llm::Completion, old::llm::LlmError> {
        use old::llm::Role as R;
        let request = now::llm::ChatRequest {
            model: r.model,
            messages: r
                .messages
                .into_iter()
                .map(|m| now::llm::Message {
                    role: match m.role {
                        R::System => now::llm::Role::System,
                        R::User => now::llm::Role::User,
                        R::Assistant => now::llm::Role::Assistant,
                    },
                    content: m.content,
                })
                .collect(),
            max_tokens: r.max_tokens,
            temperature: r.temperature,
            stop: r.stop,
        };
        match now::llm::Host::chat(self, request) {
            Ok(c) => Ok(old::llm::Completion {
                text: c.text,
                model: c.model,
                finish_reason: c.finish_reason,
                usage: old::llm::Usage {
                    prompt_tokens: c.usage.prompt_tokens,
                    completion_tokens: c.usage.completion_tokens,
                },
                estimated: c.estimated,
            }),
            Err(e) => Err(match e {
                now::llm::LlmError::BudgetExceeded(m) => old::llm::LlmError::BudgetExceeded(m),
                now::llm::LlmError::Unavailable(m) => old::llm::LlmError::Unavailable(m),
                now::llm::LlmError::Denied(m) => old::llm::LlmError::Denied(m),
                now::llm::LlmError::Invalid(m) => old::llm::LlmError::Invalid(m),
            }),
        }
    }
}
