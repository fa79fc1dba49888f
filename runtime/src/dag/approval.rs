//! Human approval of a node's output (a spec node's `approval:`): what a
//! run keeps of each verdict, what waits, and the verdicts handed in for a
//! run that is parked or driven elsewhere (the journal's inbox, see
//! [`Journal::offer_approval`](super::journal::Journal::offer_approval)).
//!
//! The verdict itself is an [`Event::Approval`](super::history::Event)
//! in the run's history, applied by the same fold on both engines: the
//! embedded driver takes it from the inbox, the Temporal workflow from a
//! signal.

use serde::{Deserialize, Serialize};

use super::{spec::ApprovalVerdict, status::NodeStatus};

/// One verdict a run recorded (for its report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalStat {
    /// The node.
    pub node: String,
    /// Its round (gates: the round approved).
    pub round: u32,
    /// The verdict.
    pub verdict: ApprovalVerdict,
    /// Why, if given.
    pub reason: Option<String>,
    /// Who: a token id, `cli` or `timeout`.
    pub by: String,
    /// The decider's tenant, through the daemon.
    pub tenant: Option<String>,
    /// Unix ms.
    pub time_ms: u64,
}

/// A node waiting for a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pending {
    /// The node id.
    pub node: String,
    /// The attempt whose output waits.
    pub attempt: u32,
    /// When `on_timeout` applies (unix ms), if it has a timeout.
    pub deadline_ms: Option<u64>,
}

/// A verdict handed in for a run and not yet recorded in its history:
/// what the run's driver records when it next looks (at once for a run it
/// drives, when woken for a parked one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// The verdict.
    pub verdict: ApprovalVerdict,
    /// Why, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who: a token id or `cli`.
    pub by: String,
    /// The decider's tenant, through the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The attempt whose output it judges (a verdict for an earlier
    /// round's output is dropped, not applied to a later one).
    pub attempt: u32,
    /// When it was handed in, unix ms.
    pub time_ms: u64,
}

/// Why a verdict is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ApprovalError {
    /// The run has no such node.
    #[error("run {run} has no node `{node}`")]
    UnknownNode {
        /// The run.
        run: String,
        /// The node asked for.
        node: String,
    },
    /// The node does not wait for a verdict (and none was given on it).
    #[error(
        "node `{node}` is not awaiting approval (it is {status}); only a node whose spec has \
         `approval:` and whose call has succeeded takes a verdict"
    )]
    NotAwaiting {
        /// The node.
        node: String,
        /// Where it is.
        status: NodeStatus,
    },
    /// A different verdict was given already.
    #[error("node `{node}` already has the verdict `{given}` (by {by}); it cannot be changed")]
    Conflict {
        /// The node.
        node: String,
        /// The verdict given.
        given: ApprovalVerdict,
        /// Who gave it.
        by: String,
    },
}

impl ApprovalError {
    /// The stable code the HTTP API answers with.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownNode { .. } => "unknown-node",
            Self::NotAwaiting { .. } => "not-awaiting-approval",
            Self::Conflict { .. } => "approval-conflict",
        }
    }
}

/// What handing in a verdict did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Offered {
    /// Stored for the run's driver, which records it next.
    Accepted,
    /// The same verdict was handed in or recorded already: nothing changed.
    AlreadyGiven,
}
