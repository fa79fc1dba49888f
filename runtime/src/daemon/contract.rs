//! The daemon's HTTP API as types: one request and one response type per
//! route, shared by the server ([`super::api`]) and the `--server` client
//! (`soma … --server URL`), and the source of the OpenAPI document
//! ([`super::openapi`]).
//!
//! This module names only data: it does not import the server, so a client
//! can use it without pulling the handlers in.
//!
//! **Key order.** An answer's keys come in the order its struct declares
//! its fields, and that order is part of the contract (the `--server
//! --json` client prints answers as sent): ids first (`run`, `id`, `name`,
//! `scope`), then kind and state (`kind`, `status`, `ok`, `class`), then
//! the details (output, failure, usage, logs, …). The `json!` maps these
//! structs replaced serialized in name order; the keys and values are the
//! same, only their order now reads top-down. A
//! `serde_json::Value` appears only where the data is free-form: capsule
//! input and output, a DAG spec, and a failure's class-specific detail.

pub mod analytics;
pub mod market;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

pub use super::auth::{TokenInfo, TokenScope};
pub use crate::{
    budget::{Account as BudgetAccount, Limit as BudgetLimit},
    call::{FailureClass, Usage},
    capsule::CapsuleKind,
    dag::{
        approval::Offered,
        history::NodeFailure,
        journal::RunSummary,
        report::{RunKind, RunReport, TimelineNode, VerdictRow},
        spec::ApprovalVerdict,
        status::{NodeFailureClass, NodeStatus, RunPhase},
    },
    ledger::{Entry as LedgerEntry, Kind as LedgerKind},
};

/// Every error answer: `{"error": {"code", "message", "field"?, "details"?}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The body of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, kebab-case code (`bad-request`, `not-found`,
    /// `rate-limited`, …).
    pub code: String,
    /// What happened and what to change.
    pub message: String,
    /// The request field at fault (a JSON path such as `dag.capsules`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every problem found, for an invalid DAG spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub details: Option<Value>,
}

/// `POST /v1/capsules/pull`: pull a registry reference through the trust
/// policy into the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// The name to serve it under.
    pub name: String,
    /// The registry reference (tag or digest).
    pub reference: String,
}

/// `POST /v1/capsules/pull` → 201.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PulledCapsule {
    /// The name it is served under.
    pub name: String,
    /// The component's digest, `sha256:<hex>`.
    pub digest: String,
    /// The pinned reference it came from.
    pub origin: String,
    /// The digest it replaced under that name, if another.
    pub replaced: Option<String>,
}

/// `DELETE /v1/capsules/{name}` → 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RemovedCapsule {
    /// The catalog name.
    pub name: String,
    /// The digest of the pulled component it no longer serves.
    pub digest: String,
    /// The pinned reference that pull came from.
    pub origin: String,
    /// The digest the name serves now (its `[[daemon.capsules]]` entry),
    /// if any.
    pub now: Option<String>,
}

/// One entry of `GET /v1/capsules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CatalogCapsule {
    /// The name it is served under.
    pub name: String,
    /// The component's digest, `sha256:<hex>`.
    pub digest: String,
    /// Worker, planner or gate.
    pub kind: CapsuleKind,
    /// The capsule's own name (`describe()`).
    pub capsule: String,
    /// Its version.
    pub version: String,
    /// Its description.
    pub description: String,
    /// Where it came from (a file path or a pinned reference).
    pub origin: String,
}

/// Per-call limits a request may ask for; each can only lower the
/// operator's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallLimits {
    /// Fuel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Linear memory, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Wall-clock deadline, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl CallLimits {
    fn is_unset(&self) -> bool {
        *self == Self::default()
    }
}

/// `POST /v1/runs`: exactly one of `capsule` (one call) or `dag` (a run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// A catalog capsule to call once…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capsule: Option<String>,
    /// …or a DAG spec (an object, or YAML/JSON text) to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub dag: Option<Value>,
    /// The input (any JSON; a string is passed as is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    /// Lower limits for a capsule call.
    #[serde(default, skip_serializing_if = "CallLimits::is_unset")]
    pub limits: CallLimits,
}

/// The capsule a call ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CalledCapsule {
    /// The catalog name it was called by.
    pub name: String,
    /// The component's digest, `sha256:<hex>`.
    pub digest: String,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallFailure {
    /// The one class of the failure (drives the CLI's exit code).
    pub class: FailureClass,
    /// What happened and what to change.
    pub message: String,
    /// The failure's fields (`class` and the class's own: `limit`,
    /// `advice`, `code`, …).
    #[schema(value_type = Object)]
    pub detail: Value,
}

/// One log line a capsule wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogRecord {
    /// Severity (`trace` … `error`).
    pub level: String,
    /// The (possibly truncated) message.
    pub message: String,
    /// Key/value fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Vec<String>>)]
    pub fields: Vec<(String, String)>,
}

/// A capsule call's result: `POST /v1/runs` with `capsule` → 200, and
/// `GET /v1/runs/{id}` while the daemon remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallReport {
    /// The run id (for the ledger and `GET /v1/runs/{id}`).
    pub run: String,
    /// Always `call`.
    pub kind: RunKind,
    /// The capsule called.
    pub capsule: CalledCapsule,
    /// Whether it returned an output.
    pub ok: bool,
    /// The output: JSON if it parses, else the text (`null` on failure).
    #[schema(value_type = Option<Object>)]
    pub output: Option<Value>,
    /// Why it failed (`null` on success).
    pub failure: Option<CallFailure>,
    /// What it consumed.
    pub usage: Usage,
    /// The capsule's log lines (capped).
    pub logs: Vec<LogRecord>,
}

/// `POST /v1/runs` with `dag` → 202: the run is queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DagRunAccepted {
    /// The run id.
    pub run: String,
    /// Always `dag`.
    pub kind: RunKind,
    /// Always `queued`.
    pub status: RunPhase,
    /// Where its Server-Sent Events are.
    pub events: String,
}

/// `GET /v1/runs/{id}` of a DAG run that is queued or being driven.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DagRunLive {
    /// The run id.
    pub run: String,
    /// Always `dag`.
    pub kind: RunKind,
    /// `queued` or `running`.
    pub status: RunPhase,
    /// The latest summary (`null` until a driver took it).
    pub summary: Option<RunSummary>,
}

/// `POST /v1/runs` → 200 (a call) or 202 (a DAG run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RunCreated {
    /// A capsule call, done.
    Call(Box<CallReport>),
    /// A DAG run, queued.
    Dag(DagRunAccepted),
}

/// `GET /v1/runs/{id}`: a recent call, a finished (or journaled) DAG run,
/// or a DAG run that is queued or running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RunView {
    /// A capsule call.
    Call(Box<CallReport>),
    /// A DAG run from its journal.
    Dag(Box<RunReport>),
    /// A DAG run that is queued or running.
    Live(DagRunLive),
}

impl RunView {
    /// Where the run is: a call is `succeeded` or `failed`.
    pub fn phase(&self) -> RunPhase {
        match self {
            Self::Call(c) if c.ok => RunPhase::Succeeded,
            Self::Call(_) => RunPhase::Failed,
            Self::Dag(r) => r.status,
            Self::Live(l) => l.status,
        }
    }
}

/// Where a cancellation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CancelState {
    /// The run's driver was told; it stops at its next step (202).
    Requested,
    /// The run was idle and is now cancelled (200).
    Done,
}

/// `POST /v1/runs/{id}/cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CancelAnswer {
    /// The run (when a live run was told).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Where the cancellation is.
    pub cancel: CancelState,
}

/// `POST /v1/runs/{id}/nodes/{node}/approval`: a human verdict on a node
/// awaiting approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBody {
    /// `approve` or `reject`.
    pub verdict: ApprovalVerdict,
    /// Why (needed to reject; at most 2000 bytes). Journaled with the
    /// verdict and shown in the run's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer to `POST /v1/runs/{id}/nodes/{node}/approval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalAnswer {
    /// The run.
    pub run: String,
    /// The node.
    pub node: String,
    /// `accepted` (the run records it next) or `already-given` (the same
    /// verdict was handed in before: nothing changed).
    pub state: Offered,
    /// The verdict.
    pub verdict: ApprovalVerdict,
}

/// `GET /v1/ledger` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LedgerQuery {
    /// Only this run's charges.
    pub run: Option<String>,
    /// Only this tenant's (an operator token; others see their own).
    pub tenant: Option<String>,
    /// At most this many (default 100, at most 10 000).
    pub limit: Option<usize>,
}

/// One entry of `GET /v1/budgets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BudgetRow {
    /// `tenant:T`, `capsule:sha256:…`, `run:R` or `node:R/N`.
    pub scope: String,
    /// Its limits, spending and reservations.
    pub account: BudgetAccount,
}

/// `PUT /v1/budgets`: set (or remove) one budget.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetRequest {
    /// `tenant:T`, `capsule:sha256:…`, `run:R` or `node:R/N`.
    pub scope: String,
    /// Tokens (input + output); absent = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Money, micro-units; absent = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub micros: Option<u64>,
    /// Remove the budget instead.
    #[serde(default)]
    pub remove: bool,
}

/// `PUT /v1/budgets` → 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BudgetSet {
    /// The scope's key.
    pub scope: String,
    /// The limit now (`null`: removed).
    pub limit: Option<BudgetLimit>,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The tenant it acts for.
    pub tenant: String,
    /// What it may do.
    pub scopes: Vec<TokenScope>,
    /// Refused this many seconds after creation…
    #[serde(default)]
    pub expires_in_s: Option<u64>,
    /// …or from this unix time (ms) on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

/// `POST /v1/tokens` → 201: the secret, shown once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// Public id (for `DELETE /v1/tokens/{id}`).
    pub id: String,
    /// The tenant it acts for.
    pub tenant: String,
    /// What it may do.
    pub scopes: Vec<TokenScope>,
    /// Unix ms after which it is refused, if it expires.
    pub expires_ms: Option<u64>,
    /// The secret (`Authorization: Bearer <token>`); not stored.
    pub token: String,
}

/// `GET /v1/tokens` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TokensQuery {
    /// Only this tenant's (an operator token; a tenant admin sees its own).
    pub tenant: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_views_deserialize_to_the_right_variant() {
        let call = serde_json::json!({
            "capsule": {"digest": "sha256:00", "name": "echo"},
            "failure": null, "kind": "call", "logs": [], "ok": true, "output": "hi",
            "run": "r1",
            "usage": {"fuel_consumed": 5, "wall_time_us": 7, "peak_memory_bytes": 65536},
        });
        let view: RunView = serde_json::from_value(call.clone()).expect("call");
        assert!(matches!(&view, RunView::Call(c) if c.ok && c.run == "r1"));
        assert_eq!(view.phase(), RunPhase::Succeeded);
        assert_eq!(serde_json::to_value(&view).expect("back"), call);

        let live =
            serde_json::json!({"kind": "dag", "run": "r2", "status": "queued", "summary": null});
        let view: RunView = serde_json::from_value(live.clone()).expect("live");
        assert!(matches!(view, RunView::Live(_)));
        assert_eq!(view.phase(), RunPhase::Queued);
        assert_eq!(serde_json::to_value(&view).expect("back"), live);

        let report = serde_json::json!({
            "auto_approval_rate": null, "error": "node a failed", "kind": "dag", "name": "n",
            "output": null, "run": "r3", "status": "failed", "tenant": "t",
            "timeline": [{
                "attempts": 1, "capsule": "c", "end_ms": 3, "fuel": 10, "node": "a",
                "round": 1, "start_ms": 1, "status": "failed", "wall_us": 5,
                "failure": {"class": "out-of-fuel", "message": "m", "retryable": false},
            }],
            "verdicts": [],
        });
        let view: RunView = serde_json::from_value(report.clone()).expect("report");
        assert!(matches!(view, RunView::Dag(_)));
        assert_eq!(view.phase(), RunPhase::Failed);
        assert_eq!(serde_json::to_value(&view).expect("back"), report);
    }

    #[test]
    fn answers_put_ids_first_then_state_then_details() {
        let accepted = DagRunAccepted {
            run: "r1".into(),
            kind: RunKind::Dag,
            status: RunPhase::Queued,
            events: "/v1/runs/r1/events".into(),
        };
        assert_eq!(
            serde_json::to_string(&accepted).expect("json"),
            r#"{"run":"r1","kind":"dag","status":"queued","events":"/v1/runs/r1/events"}"#
        );
        let error = ErrorBody {
            error: ErrorDetail {
                code: "bad-request".into(),
                message: "m".into(),
                field: Some("reference".into()),
                details: None,
            },
        };
        assert_eq!(
            serde_json::to_string(&error).expect("json"),
            r#"{"error":{"code":"bad-request","message":"m","field":"reference"}}"#
        );
        let call: CallReport = serde_json::from_value(serde_json::json!({
            "capsule": {"digest": "sha256:00", "name": "echo"},
            "failure": null, "kind": "call", "logs": [], "ok": true, "output": "hi",
            "run": "r1",
            "usage": {"fuel_consumed": 5, "wall_time_us": 7, "peak_memory_bytes": 65536},
        }))
        .expect("call");
        let text = serde_json::to_string(&call).expect("json");
        assert!(
            text.starts_with(r#"{"run":"r1","kind":"call","capsule":{"name":"echo","#),
            "{text}"
        );
    }

    #[test]
    fn requests_leave_out_what_is_not_set() {
        let req = RunRequest {
            capsule: Some("echo".into()),
            input: Some(Value::from("hi")),
            ..RunRequest::default()
        };
        assert_eq!(
            serde_json::to_string(&req).expect("json"),
            r#"{"capsule":"echo","input":"hi"}"#
        );
        let err: Result<RunRequest, _> = serde_json::from_str(r#"{"capsule":"a","nope":1}"#);
        assert!(err.is_err(), "unknown fields are refused");
        let answer = CancelAnswer {
            cancel: CancelState::Done,
            run: None,
        };
        assert_eq!(
            serde_json::to_string(&answer).expect("json"),
            r#"{"cancel":"done"}"#
        );
    }
}
