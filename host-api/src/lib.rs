//! Soma's host capabilities: one module per capability.
//!
//! Each module follows the same three phases (see `../shared/STYLE.md`):
//!
//! | phase | how often | what |
//! |---|---|---|
//! | `Config` | once per process | the operator's TOML section, validated |
//! | `Shared` (where needed) | once per engine | pools, database handles |
//! | `State` | once per call | cheap per-call state built from the call's [`Grants`] |
//!
//! and one `add_to_linker` that wires the generated WIT bindings to the
//! per-call state through a small view trait. Each module says so by
//! implementing [`Capability`]; [`capabilities`] composes them — the one
//! place that lists every capability. No module reaches into another, and
//! the runtime sees only the composed [`Shared`], [`Wants`], [`Grants`],
//! [`State`] and [`Report`].

pub mod bindings;
pub mod capability;
pub mod capabilities;
mod compat;
pub mod events;
pub mod http;
pub mod kv;
pub mod llm;
pub mod log;
pub mod meter;
pub mod secrets;
pub mod storage;
pub mod wasi;

pub use capabilities::{
    CommitError, Grants, HasCapabilities, Policy, PrepareError, Report, SectionError, Sections,
    Shared, State, Wants, add_to_linker, add_to_linker_async, check_allow, provided,
};
pub use capability::{
    Allow, AllowError, CallContext, Capability, EngineContext, GrantScope, Redactor, Restriction,
};

/// Identifies a call in logs, events and kv: which capsule, which run.
#[derive(Debug, Clone)]
pub struct CallIdentity {
    /// The capsule's name (from `describe`) or file name.
    pub capsule: std::sync::Arc<str>,
    /// Run id; one `soma run` is one run.
    pub run: std::sync::Arc<str>,
}

/// Run `f` where blocking clients may run: on this thread, or — if this
/// thread is inside a tokio runtime (a capsule on the async call path, a
/// Temporal activity's blocking task) — on a scoped thread of its own
/// (one spawn, tens of µs). reqwest's blocking client and the synchronous
/// PostgreSQL driver each drive a runtime of their own and must not run
/// inside another. `Err`: the thread could not start, or panicked.
pub fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> Result<R, String> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(f());
    }
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("soma-blocking".into())
            .spawn_scoped(s, f)
            .map_err(|e| format!("cannot start a thread for a blocking host call: {e}"))?
            .join()
            .map_err(|_| "a blocking host call panicked".to_owned())
    })
}

/// `e` and its sources, `: `-separated (many errors, e.g. reqwest's, show
/// only the top of the chain in `Display`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
