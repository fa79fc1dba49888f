//! `[dag]`: the operator's ceilings on DAG specs, defined here (not in
//! `dag`) because [`crate::Engine`] holds the whole [`super::Config`] and
//! the DAG scheduler needs the engine; `crate::dag::spec` re-exports them
//! and holds specs to them (`Spec::within`, `Ceilings::budget`).

use serde::{Deserialize, Serialize};

/// Most rounds a gate may ask for.
pub const MAX_GATE_ROUNDS: u32 = 10;
/// Default `dag.max_run_rendered_bytes`: 256 MiB.
pub const DEFAULT_MAX_RUN_RENDERED_BYTES: u64 = 256 << 20;
/// Default `policy.max_fan_out` of a spec, and default `dag.max_fan_out`.
pub const DEFAULT_MAX_FAN_OUT: usize = 10_000;
/// Default `policy.max_nodes` of a spec, and default `dag.max_nodes`.
pub const DEFAULT_MAX_NODES: usize = 100_000;
/// Default parse budget: values in a loaded spec (`dag.max_spec_nodes`);
/// a 20,000-node spec uses about half.
pub const DEFAULT_MAX_SPEC_NODES: usize = 200_000;
/// Default parse budget: bytes in a loaded spec (`dag.max_spec_bytes`).
pub const DEFAULT_MAX_SPEC_BYTES: usize = 16 << 20;

/// Operator ceilings on what a spec may ask for (`[dag]` in `soma.toml`).
/// A spec can only lower them: a value a spec sets above its ceiling is
/// refused when the run is submitted ([`Spec::within`](crate::dag::spec::Spec::within)); a format default
/// above a ceiling is lowered to it. Also the budgets of parsing and
/// rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ceilings {
    /// Most values a spec document may hold once loaded, YAML aliases
    /// expanded (each use counts its anchor again). Default 200,000.
    pub max_spec_nodes: usize,
    /// Most bytes of strings, keys and position pointers a loaded spec may
    /// hold, aliases expanded. Default 16 MiB.
    pub max_spec_bytes: usize,
    /// Largest input a template may render for one node call (and largest
    /// rendered run output), bytes; never above `limits.max_input_bytes`.
    /// Default 1 MiB.
    pub max_rendered_input_bytes: usize,
    /// Highest `policy.concurrency` (calls of one run at once). Default 64.
    pub max_concurrency: usize,
    /// Highest `policy.max_fan_out`. Default 10,000.
    pub max_fan_out: usize,
    /// Highest `policy.max_nodes` (and most nodes a spec may list).
    /// Default 100,000.
    pub max_nodes: usize,
    /// Highest `policy.max_expansion_depth`. Default 4.
    pub max_expansion_depth: u32,
    /// Highest `policy.max_expansion_nodes`. Default 1,000.
    pub max_expansion_nodes: usize,
    /// Highest `retries.max` of any node. Default 10.
    pub max_retries: u32,
    /// Highest `retries.backoff_ms` and `retries.max_backoff_ms`, ms.
    /// Default 60,000.
    pub max_backoff_ms: u64,
    /// Highest `gate.max_rounds`. Default 10.
    pub max_rounds: u32,
    /// Most bytes of rendered node inputs one run may journal in all
    /// (every attempt, fan-out instance, planned node and gate round
    /// counts), so that many nodes each under `max_rendered_input_bytes`
    /// cannot together grow a run's history without bound; past it a node
    /// fails `render-limit`. Default 256 MiB.
    pub max_run_rendered_bytes: u64,
}

impl Default for Ceilings {
    fn default() -> Self {
        Self {
            max_spec_nodes: DEFAULT_MAX_SPEC_NODES,
            max_spec_bytes: DEFAULT_MAX_SPEC_BYTES,
            max_rendered_input_bytes: 1 << 20,
            max_concurrency: 64,
            max_fan_out: DEFAULT_MAX_FAN_OUT,
            max_nodes: DEFAULT_MAX_NODES,
            max_expansion_depth: 4,
            max_expansion_nodes: 1_000,
            max_retries: 10,
            max_backoff_ms: 60_000,
            max_rounds: MAX_GATE_ROUNDS,
            max_run_rendered_bytes: DEFAULT_MAX_RUN_RENDERED_BYTES,
        }
    }
}
