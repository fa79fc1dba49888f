//! `POST /v1/runs/{id}/nodes/{node}/approval`: a human verdict on a DAG
//! node awaiting approval (its spec's `approval:`), on either engine. The
//! run's tenant with the `run` scope (an operator any run); another
//! tenant's run is 404. A node that does not await a verdict is 409
//! `not-awaiting-approval`; a different verdict than one already given is
//! 409 `approval-conflict`; the same verdict again is 200 `already-given`.
//!
//! Embedded engine: the verdict goes to the journal's inbox and the run is
//! woken (a run parked for a verdict is queued for a driver again).
//! Temporal: the workflow's `approval` signal, after a query checked the
//! node.

use std::sync::Arc;

use super::{
    Daemon,
    auth::{Principal, TokenScope},
    contract::{ApprovalAnswer, ApprovalBody, ErrorBody},
    reply::{ApiError, Routes, approval_refused, parse, require},
};
use crate::dag::{
    approval::Offered,
    journal::{Journal, JournalError},
    scheduler::{self, DagError},
    spec::ApprovalVerdict,
};
use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::Method,
};

/// Most bytes a verdict's reason may hold.
pub const MAX_REASON_BYTES: usize = 2000;

/// The approval route.
pub(super) fn routes(routes: Routes) -> Routes {
    routes.add(
        Method::POST,
        "/v1/runs/{id}/nodes/{node}/approval",
        approve_node,
    )
}

/// `POST /v1/runs/{id}/nodes/{node}/approval`.
#[utoipa::path(post, path = "/v1/runs/{id}/nodes/{node}/approval", tag = "runs",
    operation_id = "approveNode",
    params(("id" = String, Path, description = "The run id"),
           ("node" = String, Path, description = "The node id (`plan.check[2]` for plan nodes and instances)")),
    request_body = ApprovalBody,
    responses(
        (status = 200, description = "Accepted (the run records it next), or the same verdict was given before", body = ApprovalAnswer),
        (status = 409, description = "The node does not await a verdict (`not-awaiting-approval`), or has a different one (`approval-conflict`)", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("run"))))]
pub(super) async fn approve_node(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path((id, node)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ApprovalAnswer>, ApiError> {
    require(&p, TokenScope::Run)?;
    let body: ApprovalBody = parse(body)?;
    check_reason(body.verdict, body.reason.as_deref())?;
    if let Some(temporal) = daemon
        .temporal
        .as_ref()
        .filter(|_| super::temporal::tenant_of(&id).is_some())
    {
        return temporal.approve(&p, &id, &node, body).await.map(Json);
    }
    let missing = || ApiError::not_found(&format!("run `{id}`"));
    let tenant = match daemon.runs.live(&id) {
        Some(live) => live.tenant.clone(),
        None => {
            let db = daemon.engine.data().database().clone();
            let run = id.clone();
            let summary = tokio::task::spawn_blocking(move || Journal::new(db).summary(&run))
                .await
                .map_err(|e| ApiError::failed(&e))?;
            match summary {
                Ok(s) => s.tenant,
                Err(JournalError::NotFound(_)) => return Err(missing()),
                Err(e) => return Err(ApiError::failed(&e)),
            }
        }
    };
    if !p.sees_tenant(&tenant) {
        return Err(missing());
    }
    let journal = Journal::new(daemon.engine.data().database().clone());
    let (run, at, verdict) = (id.clone(), node.clone(), body.verdict);
    let (by, by_tenant) = (p.token.clone(), p.tenant.clone());
    let offered = tokio::task::spawn_blocking(move || {
        scheduler::offer_approval(
            &journal,
            &run,
            &at,
            verdict,
            body.reason,
            &by,
            Some(by_tenant),
        )
    })
    .await
    .map_err(|e| ApiError::failed(&e))?
    .map_err(|e| match e {
        DagError::Approval(a) => approval_refused(&a),
        DagError::Journal(JournalError::NotFound(_)) => missing(),
        other => ApiError::failed(&other),
    })?;
    if offered == Offered::Accepted && !daemon.runs.wake(&id) {
        // No driver holds it (one gave it up on an error): queue it.
        if let Err(e) = daemon.runs.resume_idle(&id, &tenant) {
            tracing::warn!(run = %id, "the verdict waits until the run is resumed: {e}");
        }
    }
    Ok(Json(ApprovalAnswer {
        run: id,
        node,
        state: offered,
        verdict,
    }))
}

/// A reject needs a reason; a reason is bounded.
pub(crate) fn check_reason(verdict: ApprovalVerdict, reason: Option<&str>) -> Result<(), ApiError> {
    match reason {
        Some(r) if r.len() > MAX_REASON_BYTES => Err(ApiError::bad(
            format!(
                "the reason has {} bytes; at most {MAX_REASON_BYTES}",
                r.len()
            ),
            Some("reason"),
        )),
        None | Some("") if verdict == ApprovalVerdict::Reject => Err(ApiError::bad(
            "a rejection needs a reason (it is journaled and shown in the run's report)",
            Some("reason"),
        )),
        _ => Ok(()),
    }
}
