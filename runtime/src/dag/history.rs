//! A run's history: the events that are committed, in order, before the
//! scheduler acts on them. A run's state is a pure fold of its history
//! ([`super::state::RunState::apply`]), so a resumed run makes the same
//! decisions the interrupted one had recorded — the Temporal contract.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    spec::{ApprovalVerdict, Plan, Spec, Verdict},
    status::{NodeFailureClass, RunPhase},
};
use crate::capsule::CapsuleKind;

/// One capsule a run uses, pinned when the run is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapsuleRecord {
    /// The reference as written in the spec, resolved (a file path or a
    /// registry reference with its manifest digest).
    pub reference: String,
    /// sha256 of the component; a resume refuses a capsule that changed.
    pub digest: String,
    /// `worker`, `planner` or `gate`.
    pub kind: CapsuleKind,
    /// describe() name and version.
    pub name: String,
    /// describe() version.
    pub version: String,
    /// Set when the capsule could not be loaded and every node using it
    /// has `catch: true`: those nodes end with this as their caught
    /// `invalid-component` failure instead of the whole run failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_error: Option<String>,
}

/// Why a node's attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeFailure {
    /// The failure class (`out-of-fuel`, `capsule-error`, `template`,
    /// `invalid-plan`, `invalid-verdict`, `gate-rejected`, …).
    pub class: NodeFailureClass,
    /// The capsule's error code, for capsule errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// What happened.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl NodeFailure {
    /// A failure the scheduler itself found (not a call's).
    pub fn scheduler(class: NodeFailureClass, message: impl Into<String>) -> Self {
        Self {
            class,
            code: None,
            message: message.into(),
            retryable: false,
        }
    }

    /// From a call's failure.
    pub fn of_call(f: &crate::Failure) -> Self {
        let code = match f {
            crate::Failure::CapsuleError { code, .. } => Some(code.clone()),
            _ => None,
        };
        Self {
            class: f.class().into(),
            code,
            message: f.to_string(),
            retryable: f.is_retryable(),
        }
    }

    /// The output a `catch: true` node succeeds with instead.
    pub fn caught(&self) -> Value {
        serde_json::json!({
            "failed": true,
            "class": self.class,
            "code": self.code,
            "message": self.message,
        })
    }
}

/// What one call consumed and said, kept with its result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The attempt number (monotonic per node over the whole run).
    pub attempt: u32,
    /// Fuel consumed (`None` in epoch-only mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Wall time, µs.
    pub wall_us: u64,
    /// The capsule's log lines (`[level] message`), capped by the call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Every node succeeded (or was caught) and the output rendered.
    Succeeded,
    /// A node failed for good, or the output could not be rendered.
    Failed,
    /// Cancelled on request.
    Cancelled,
}

/// A finished run's phase.
impl From<RunStatus> for RunPhase {
    fn from(status: RunStatus) -> Self {
        match status {
            RunStatus::Succeeded => RunPhase::Succeeded,
            RunStatus::Failed => RunPhase::Failed,
            RunStatus::Cancelled => RunPhase::Cancelled,
        }
    }
}

impl RunStatus {
    /// Kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One recorded transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The run exists: its spec, bound input and pinned capsules.
    Created {
        /// The validated spec.
        spec: Box<Spec>,
        /// The bound input.
        input: Value,
        /// Capsules by alias.
        capsules: BTreeMap<String, CapsuleRecord>,
        /// Who pays.
        tenant: String,
        /// Where the spec came from (for display).
        origin: String,
        /// Unix ms.
        time_ms: u64,
    },
    /// An attempt of a node is handed to the workers, to be called with
    /// `input` (it may wait in their queue for a free worker).
    Started {
        /// Node id.
        node: String,
        /// Attempt number.
        attempt: u32,
        /// The rendered input.
        input: String,
        /// Unix ms.
        time_ms: u64,
    },
    /// An attempt that was in flight when the previous process stopped is
    /// called again (same attempt: the ledger counts it once).
    Restarted {
        /// Node id.
        node: String,
        /// Attempt number.
        attempt: u32,
        /// Unix ms.
        time_ms: u64,
    },
    /// A started attempt was taken back before any worker called it (the
    /// run was stopping: fail-fast, cancel or interrupt); the node waits again.
    Withdrawn {
        /// Node id.
        node: String,
        /// The attempt that never ran.
        attempt: u32,
        /// Unix ms.
        time_ms: u64,
    },
    /// A node's call succeeded (or failed and was caught).
    Succeeded {
        /// Node id.
        node: String,
        /// The call.
        call: CallRecord,
        /// The output (JSON if the capsule returned JSON, else a string).
        output: Value,
        /// Unix ms.
        time_ms: u64,
    },
    /// A node's call failed; `retry_at_ms` set = it will be retried.
    Failed {
        /// Node id.
        node: String,
        /// The call (attempt 0 and no usage when the call never ran).
        call: CallRecord,
        /// Why.
        failure: NodeFailure,
        /// When the retry starts (unix ms); `None` = final.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_at_ms: Option<u64>,
        /// Unix ms.
        time_ms: u64,
    },
    /// A planner's call returned a valid plan, spliced in under its id.
    Expanded {
        /// The planner node.
        node: String,
        /// The call.
        call: CallRecord,
        /// The validated plan.
        plan: Plan,
        /// Unix ms.
        time_ms: u64,
    },
    /// A `for_each` node fanned out into `count` instances `node[i]`.
    FannedOut {
        /// Node id.
        node: String,
        /// The items, one per instance.
        items: Vec<Value>,
        /// Unix ms.
        time_ms: u64,
    },
    /// A gate's call returned a verdict.
    Verdict {
        /// The gate node.
        node: String,
        /// The call.
        call: CallRecord,
        /// The round judged (1-based).
        round: u32,
        /// The verdict.
        verdict: Verdict,
        /// Unix ms.
        time_ms: u64,
    },
    /// A gate sent work back: `nodes` run again, the gated one with the
    /// gate's feedback, as round `round`.
    Reworked {
        /// The gate node.
        gate: String,
        /// The gated node.
        node: String,
        /// The new round (2-based).
        round: u32,
        /// Every node reset (the gated node, the nodes between it and the
        /// gate, and the gate).
        reset: Vec<String>,
        /// The gate's feedback, added to the gated node's input.
        feedback: Value,
        /// Unix ms.
        time_ms: u64,
    },
    /// A node's call succeeded (a gate's: approved) and, as its spec's
    /// `approval:` asks, its output waits for a human verdict; nothing that
    /// depends on it starts until [`Event::Approval`].
    AwaitingApproval {
        /// Node id.
        node: String,
        /// The call (no usage for a gate: its [`Event::Verdict`] has it).
        call: CallRecord,
        /// The output the node succeeds with if approved.
        output: Value,
        /// When `on_timeout` applies (unix ms); `None` = no timeout.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_ms: Option<u64>,
        /// Unix ms.
        time_ms: u64,
    },
    /// The verdict on a node awaiting approval: approve → it succeeds with
    /// its output; reject → it fails (`approval-rejected`).
    Approval {
        /// Node id.
        node: String,
        /// The verdict.
        verdict: ApprovalVerdict,
        /// Why (given with the verdict, or the timeout's note).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Who decided: an API token's id, `cli` (a local `soma dag
        /// approve`/`reject`) or `timeout` (`on_timeout` applied).
        by: String,
        /// The tenant of whoever decided, when it came through the daemon.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
        /// Unix ms.
        time_ms: u64,
    },
    /// Cancellation was asked for: nothing new starts.
    CancelRequested {
        /// Unix ms.
        time_ms: u64,
    },
    /// The run ended.
    Finished {
        /// How.
        status: RunStatus,
        /// The run's output (when it succeeded).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<Value>,
        /// Why it failed (when it did).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Unix ms.
        time_ms: u64,
    },
}

impl Event {
    /// When it happened (unix ms).
    pub fn time_ms(&self) -> u64 {
        match self {
            Self::Created { time_ms, .. }
            | Self::Started { time_ms, .. }
            | Self::Restarted { time_ms, .. }
            | Self::Withdrawn { time_ms, .. }
            | Self::Succeeded { time_ms, .. }
            | Self::Failed { time_ms, .. }
            | Self::Expanded { time_ms, .. }
            | Self::FannedOut { time_ms, .. }
            | Self::Verdict { time_ms, .. }
            | Self::Reworked { time_ms, .. }
            | Self::AwaitingApproval { time_ms, .. }
            | Self::Approval { time_ms, .. }
            | Self::CancelRequested { time_ms }
            | Self::Finished { time_ms, .. } => *time_ms,
        }
    }

    /// The node it is about, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            Self::Started { node, .. }
            | Self::Restarted { node, .. }
            | Self::Withdrawn { node, .. }
            | Self::Succeeded { node, .. }
            | Self::Failed { node, .. }
            | Self::Expanded { node, .. }
            | Self::FannedOut { node, .. }
            | Self::Verdict { node, .. }
            | Self::Reworked { node, .. }
            | Self::AwaitingApproval { node, .. }
            | Self::Approval { node, .. } => Some(node),
            _ => None,
        }
    }
}

/// Unix time in ms (0 before 1970).
pub use soma_host_api::meter::now_ms;
