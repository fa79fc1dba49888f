//! [`RunReport`]: a DAG run as `soma dag status --json`, `--out`/run.json
//! and the daemon's `GET /v1/runs/{id}` show it. Fields are declared in
//! name order, so the JSON is the same as the maps it replaced.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    history::NodeFailure,
    spec::ApprovalVerdict,
    status::{NodeStatus, RunPhase},
};

/// What a run is: one capsule call, or a DAG run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RunKind {
    /// One capsule call.
    Call,
    /// A DAG run.
    Dag,
}

impl RunKind {
    /// The name (the serde form and the metric label).
    pub fn name(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Dag => "dag",
        }
    }
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// A DAG run's state, from its journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunReport {
    /// Every human verdict (and applied `on_timeout`), in order; left out
    /// when there is none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalRow>,
    /// Share of gate verdicts that approved on the first round; `null`
    /// before any gate judged.
    pub auto_approval_rate: Option<f64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Always `dag`.
    pub kind: RunKind,
    /// The spec's name.
    pub name: String,
    /// The rendered output, once succeeded.
    #[schema(value_type = Object)]
    pub output: Option<Value>,
    /// The run id.
    pub run: String,
    /// How it ended, or `interrupted` while unfinished.
    pub status: RunPhase,
    /// Who pays.
    pub tenant: String,
    /// Every live node.
    pub timeline: Vec<TimelineNode>,
    /// Every gate verdict, in order.
    pub verdicts: Vec<VerdictRow>,
}

/// One gate verdict of a [`RunReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerdictRow {
    /// Approved?
    pub approved: bool,
    /// The gate node.
    pub gate: String,
    /// The round judged (1 for the first).
    pub round: u32,
    /// The score.
    pub score: f64,
}

/// One human verdict of a [`RunReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApprovalRow {
    /// When, ms since the run was created.
    pub at_ms: u64,
    /// Who: an API token's id, `cli` or `timeout`.
    pub by: String,
    /// The node.
    pub node: String,
    /// Why, if given.
    pub reason: Option<String>,
    /// The node's round.
    pub round: u32,
    /// The decider's tenant (through the daemon).
    pub tenant: Option<String>,
    /// `approve` or `reject`.
    pub verdict: ApprovalVerdict,
}

/// One node of a [`RunReport`]'s timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TimelineNode {
    /// Attempts started over the whole run.
    pub attempts: u32,
    /// The capsule alias it calls.
    pub capsule: String,
    /// Last end, ms since the run was created.
    pub end_ms: Option<u64>,
    /// Why it failed, if it did.
    pub failure: Option<NodeFailure>,
    /// Fuel consumed by all its attempts.
    pub fuel: u64,
    /// Full node id (`plan.tests`, `plan.check[3]`).
    pub node: String,
    /// Gate rounds: 1 for the first.
    pub round: u32,
    /// First start, ms since the run was created.
    pub start_ms: Option<u64>,
    /// Where it is.
    pub status: NodeStatus,
    /// Wall time of all its attempts, µs.
    pub wall_us: u64,
}
