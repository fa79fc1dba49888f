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
//! per-call state through a small view trait the runtime's store data
//! implements. No module reaches into another; the runtime composes them.

pub mod bindings;
pub mod events;
pub mod kv;
pub mod llm;
pub mod log;
pub mod storage;
pub mod wasi;

/// What one capsule call may do. Built by the runtime as the intersection of
/// the capsule's manifest request, the operator's policy and the DAG node.
/// `Grants::default()` denies everything.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// The kv namespaces the call may use; `None` denies kv.
    pub kv: Option<kv::Grant>,
    /// LLM models the call may use.
    pub llm: llm::Grant,
    /// Preopened directories.
    pub dirs: Vec<wasi::DirGrant>,
}

/// Identifies a call in logs, events and kv: which capsule, which run.
#[derive(Debug, Clone)]
pub struct CallIdentity {
    /// The capsule's name (from `describe`) or file name.
    pub capsule: std::sync::Arc<str>,
    /// Run id; one `soma run` is one run.
    pub run: std::sync::Arc<str>,
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
