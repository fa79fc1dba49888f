//! What one host capability is: the [`Capability`] trait and the contexts
//! its phases receive. Below every capability module (each implements the
//! trait) and below their composition in [`crate::capabilities`], so no
//! capability module names the composition.
//!
//! Wiring a capability's interfaces into a linker is each module's own
//! `add_to_linker` (bounded by its view trait), called by the composition;
//! it is not a trait method, because its bound would have to name the
//! composed store data.

use std::sync::Arc;

use crate::{
    meter::{Meter, Spender},
    storage::LazyDatabase,
};

/// One host capability: its types and its phases. Implemented by a marker
/// type in the capability's module (`kv::Kv`, `llm::Llm`, …).
///
/// A capability never sees another's types; [`Shared`], [`Grants`] and
/// [`State`] hold one field per capability and call these phases.
pub trait Capability {
    /// The request name a capsule uses in `describe()` (`kv`, `llm`, `dir`).
    const NAME: &'static str;
    /// The `soma:capsule` interfaces it serves (for the unknown-import
    /// message); empty for a capability served through WASI.
    const INTERFACES: &'static [&'static str];

    /// Its `soma.toml` section (`[kv]`, `[llm]`, …).
    type Config;
    /// Why its section is inconsistent.
    type ConfigError: std::error::Error + Send + Sync + 'static;
    /// Its share of `[policy]`: what the operator allows capsules that ask.
    type Policy: ?Sized;
    /// State shared by every call (pools, database handles, provider
    /// clients). Built once per engine.
    type Shared;
    /// What one capsule asked for. Built once per capsule.
    type Wants: Default;
    /// What one call may use; `Default` denies everything.
    type Grant: Default;
    /// Per-call state, in the store.
    type State;
    /// Why its per-call state could not be built (the call is denied).
    type PrepareError: std::error::Error + Send + Sync + 'static;
    /// Why a successful call's effects could not be made durable.
    type CommitError: std::error::Error + Send + Sync + 'static;
    /// Its share of the call's report.
    type Report;

    /// Check the section's consistency. Once per config load (and by
    /// `soma config check`); cheap.
    fn check(config: &Self::Config) -> Result<(), Self::ConfigError>;

    /// Build the shared state. Once per engine; may read the environment,
    /// must not do I/O (open the database, connect) — do that lazily.
    fn shared(config: &Self::Config, engine: &EngineContext) -> Self::Shared;

    /// Record one request named [`Self::NAME`] with its arguments. Once per
    /// request when a capsule is loaded; requests of the same name add up.
    fn want(wants: &mut Self::Wants, args: &[String]);

    /// The capsule's wants as `name:arg` words for `soma inspect`.
    fn describe_wants(wants: &Self::Wants, out: &mut Vec<String>);

    /// The grant: the capsule's wants ∩ the operator's policy ∩ the
    /// scope (capsule, run). Once per run; cheap (clones a few strings).
    fn grant(wants: &Self::Wants, policy: &Self::Policy, scope: &GrantScope<'_>) -> Self::Grant;

    /// Move a grant to another run (a DAG run, a daemon call). Cheap.
    /// Default: the grant does not depend on the run.
    fn rescope(grant: &mut Self::Grant, run: &str) {
        let _ = (grant, run);
    }

    /// Build the per-call state. Once per call, on the hot path: must be
    /// cheap (no I/O, no lock; a few small allocations at most).
    fn prepare(
        shared: &Self::Shared,
        grant: &Self::Grant,
        call: &CallContext<'_>,
    ) -> Result<Self::State, Self::PrepareError>;

    /// Make a successful call's effects durable (kv's writes). Once per
    /// successful call; a failed call's state is dropped instead. Default:
    /// nothing to commit.
    fn commit(state: &mut Self::State) -> Result<(), Self::CommitError> {
        let _ = state;
        Ok(())
    }

    /// Its share of the report. Once per call, at the end.
    fn finish(state: Self::State) -> Self::Report;
}

/// What the runtime hands the capabilities once per engine.
#[derive(Debug, Clone)]
pub struct EngineContext {
    /// The node's database (opened on first use).
    pub db: Arc<LazyDatabase>,
    /// The node's budgets and ledger.
    pub meter: Arc<dyn Meter>,
}

/// Who a grant is for: the parts of a grant the runtime decides.
#[derive(Debug, Clone, Copy)]
pub struct GrantScope<'a> {
    /// The capsule's digest (`sha256:…`).
    pub capsule: &'a str,
    /// The run id.
    pub run: &'a str,
}

/// What every capability may read when one call's state is built. Borrowed;
/// built once per call by the runtime.
#[derive(Debug, Clone, Copy)]
pub struct CallContext<'a> {
    /// The capsule's name (for logs; escaped).
    pub capsule: &'a Arc<str>,
    /// The run id (for logs).
    pub run: &'a Arc<str>,
    /// Who pays (for llm's budgets).
    pub spender: &'a Spender,
    /// The caller's tenant (kv keys every entry by it).
    pub tenant: &'a Arc<str>,
    /// The call's memory limit, bytes (bounds host memory a call may pin).
    pub memory_limit_bytes: usize,
}
