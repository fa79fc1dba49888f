//! The daemon's DAG runs on Temporal (`[orchestrator] engine =
//! "temporal"`): `POST /v1/runs` with a `dag` starts one workflow per run
//! on the configured task queue (served by `soma worker` processes), and
//! `GET /v1/runs/{id}`, its `/events` and `/cancel` answer from the
//! workflow (a query) or cancel it; a node's `/approval` is a signal. The daemon drives nothing itself.
//!
//! Tenant isolation: a Temporal run's id — also its workflow id — is
//! `TENANT.RUN` (tenant names are letters, digits, `-` and `_`; embedded
//! run ids have no `.`), so a route knows whose run it is before asking
//! Temporal, answers 404 to anyone else, and checks the tenant the
//! workflow's history records too.
//!
//! Every RPC is bounded (`orchestrator.connect_timeout_ms`,
//! `rpc_timeout_ms`); a Temporal that does not answer is a 503.

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    http::StatusCode,
    response::sse::{Event as SseEvent, KeepAlive, KeepAliveStream, Sse},
};
use futures_util::stream::{self, BoxStream, StreamExt as _};
use serde_json::Value;

use super::{
    Daemon,
    auth::Principal,
    contract::{ApprovalAnswer, ApprovalBody, CancelAnswer, CancelState},
    reply::ApiError,
};
use crate::{
    config::orchestrator::{OrchestratorConfig, OrchestratorEngine},
    dag::{
        approval::Offered,
        report::RunReport,
        scheduler::{self, Loaded},
        spec::Spec,
        state::RunState,
        status::RunPhase,
    },
    store::postgres::PgStore,
    temporal::{
        ApprovalOutcome, ApprovalSignal, Endpoint, RunInput, RunResult, TemporalError, client,
        payloads::Offload,
    },
};

/// A run's Server-Sent Events (either engine's).
pub(crate) type EventStream =
    Sse<KeepAliveStream<BoxStream<'static, Result<SseEvent, Infallible>>>>;

/// How often an event stream asks the workflow for new events.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// How long a run list waits for a running run's workflow to tell its
/// progress.
const LIVE_ROW_WAIT: Duration = Duration::from_secs(1);

/// How long a run this daemon started counts against its tenant's cap
/// by itself, whether or not Temporal's visibility store lists it yet.
const VISIBILITY_LAG: Duration = Duration::from_secs(5);

/// The daemon's connection to Temporal; connected on first use.
pub struct TemporalRuns {
    endpoint: Endpoint,
    client: tokio::sync::OnceCell<temporalio_client::Client>,
    connect_timeout: Duration,
    rpc_timeout: Duration,
    /// Per tenant: one start at a time (the cap's check and the start
    /// are one step on this daemon), and the runs started in the last
    /// [`VISIBILITY_LAG`].
    starts: std::sync::Mutex<HashMap<String, Arc<TenantStarts>>>,
}

/// One tenant's starts on this daemon.
#[derive(Debug, Default)]
struct TenantStarts {
    gate: tokio::sync::Mutex<()>,
    recent: std::sync::Mutex<Vec<(String, std::time::Instant)>>,
}

impl std::fmt::Debug for TemporalRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemporalRuns")
            .field("endpoint", &self.endpoint)
            .field("connected", &self.client.initialized())
            .finish_non_exhaustive()
    }
}

impl TemporalRuns {
    /// The runs of `config`, if its engine is Temporal. Cheap: nothing
    /// connects until the first request.
    pub fn of(config: &OrchestratorConfig, shared: Option<PgStore>) -> Option<Self> {
        if config.engine != OrchestratorEngine::Temporal {
            return None;
        }
        Some(Self {
            endpoint: Endpoint {
                address: config.address.clone().unwrap_or_default(),
                namespace: config.namespace.clone(),
                task_queue: config.task_queue.clone(),
                offload: shared
                    .filter(|_| config.payload_offload_bytes > 0)
                    .map(|store| {
                        Offload::new(
                            store,
                            config.payload_offload_bytes,
                            config.payload_retention_hours,
                        )
                    }),
            },
            client: tokio::sync::OnceCell::new(),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            rpc_timeout: Duration::from_millis(config.rpc_timeout_ms),
            starts: std::sync::Mutex::new(HashMap::new()),
        })
    }

    async fn client(&self) -> Result<&temporalio_client::Client, ApiError> {
        self.client
            .get_or_try_init(|| async {
                tokio::time::timeout(self.connect_timeout, self.endpoint.connect())
                    .await
                    .map_err(|_| unavailable(&self.endpoint, "connecting"))?
                    .map_err(|e| temporal_error(&e))
            })
            .await
    }

    /// One RPC, bounded by `rpc_timeout_ms`.
    async fn rpc<T>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, TemporalError>>,
    ) -> Result<T, ApiError> {
        tokio::time::timeout(self.rpc_timeout, f)
            .await
            .map_err(|_| unavailable(&self.endpoint, what))?
            .map_err(|e| temporal_error(&e))
    }

    /// Start a run of `spec` (capsules pinned as `loaded`) for `tenant`:
    /// its workflow on the task queue. Returns the run id (`TENANT.RUN`).
    pub(crate) async fn start(
        &self,
        daemon: &Daemon,
        tenant: &str,
        spec: &Spec,
        loaded: &std::collections::BTreeMap<String, Loaded>,
        input: &Value,
    ) -> Result<String, ApiError> {
        // Workers resolve capsules by reference: a catalog name becomes
        // where the catalog loaded it from (file path or pinned registry
        // reference); `market:` names are pinned references already.
        let mut names: Vec<String> = loaded.values().map(|l| l.reference.clone()).collect();
        names.sort();
        names.dedup();
        let mut loaded = loaded.clone();
        for l in loaded.values_mut() {
            if let Some(item) = daemon.capsule(&l.reference) {
                l.reference = item.origin;
            }
        }
        let created = scheduler::created(
            spec,
            "api",
            input,
            &loaded,
            &std::collections::BTreeMap::new(),
            tenant,
        )
        .map_err(|e| ApiError::bad(e.to_string(), Some("dag")))?;
        let run = format!("{tenant}.{}", crate::call::new_run_id());
        // Replaying the created event checks it as the workflow will.
        RunState::new(&run, &created).map_err(|e| ApiError::bad(e.to_string(), Some("dag")))?;
        let config = daemon.engine.config();
        let input = RunInput {
            capsule_names: Some(names),
            offload: self.endpoint.offload.is_some(),
            ..RunInput::new(run.clone(), created, config, None)
        };
        let c = self.client().await?;
        // The tenant's cap of runs not finished, as on the embedded engine:
        // its open workflows (Temporal's visibility store, shared by every
        // daemon) and those this daemon started too recently to be listed.
        let limit = daemon.runs.limits().max_runs_per_tenant;
        let starts = self.starts_of(tenant);
        let _one_at_a_time = starts.gate.lock().await;
        let mut open: std::collections::HashSet<String> = self
            .rpc(
                "counting the tenant's runs",
                client::open_runs(c, tenant, limit),
            )
            .await?
            .into_iter()
            .collect();
        {
            let mut recent = starts.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.retain(|(_, at)| at.elapsed() < VISIBILITY_LAG);
            open.extend(recent.iter().map(|(r, _)| r.clone()));
        }
        if open.len() >= limit {
            return Err(super::reply::full(
                "too-many-runs",
                super::runs::Full::Runs { limit }.to_string(),
            ));
        }
        self.rpc("starting a run", client::start(c, &self.endpoint, input))
            .await?;
        starts
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((run.clone(), std::time::Instant::now()));
        Ok(run)
    }

    /// `tenant`'s start gate and recent starts.
    fn starts_of(&self, tenant: &str) -> Arc<TenantStarts> {
        self.starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }

    /// A page of runs for the console's run list (`query.tenant` set for
    /// a tenant, `None` for an operator): [`client::list_runs`] over at
    /// most `scan` workflows. The rows of runs still going show their
    /// progress as of now: their workflows are asked (at once, each
    /// within a second; a row keeps its start's counts if its workflow
    /// does not answer in time).
    pub(crate) async fn list(
        &self,
        query: &crate::dag::journal::RunQuery,
        scan: usize,
    ) -> Result<crate::dag::journal::RunPage, ApiError> {
        let c = self.client().await?;
        let mut page = self
            .rpc("listing runs", client::list_runs(c, query, scan))
            .await?;
        let live = page.runs.iter().map(|row| async move {
            if row.status.is_finished() {
                return None;
            }
            let asked = tokio::time::timeout(LIVE_ROW_WAIT, client::status(c, &row.run));
            let state = asked.await.ok()?.ok()?.state().ok()?;
            Some(scheduler::summary(&state))
        });
        let now = futures_util::future::join_all(live).await;
        for (row, now) in page.runs.iter_mut().zip(now) {
            if let Some(now) = now
                && now.tenant == row.tenant
            {
                // The capsules as the requester named them stay the memo's.
                let capsules = std::mem::take(&mut row.capsules);
                *row = crate::dag::journal::RunSummary { capsules, ..now };
            }
        }
        Ok(page)
    }

    /// Run `run` so far, from its workflow, if `p` may see it.
    pub(crate) async fn result(
        &self,
        p: &Principal,
        run: &str,
    ) -> Result<(RunResult, RunState), ApiError> {
        let missing = || ApiError::not_found(&format!("run `{run}`"));
        let tenant = tenant_of(run).ok_or_else(missing)?;
        if !p.sees_tenant(tenant) {
            return Err(missing());
        }
        let c = self.client().await?;
        let result = self
            .rpc("asking the run's workflow", client::status(c, run))
            .await
            .map_err(|e| {
                if e.status == StatusCode::BAD_GATEWAY {
                    missing()
                } else {
                    e
                }
            })?;
        let state = result.state().map_err(|e| ApiError::failed(&e))?;
        if state.tenant != tenant {
            return Err(missing());
        }
        Ok((result, state))
    }

    /// `GET /v1/runs/{id}` of a Temporal run: its report, `running` while
    /// unfinished.
    pub(crate) async fn report(&self, p: &Principal, run: &str) -> Result<RunReport, ApiError> {
        let (_, state) = self.result(p, run).await?;
        Ok(report_of(&state))
    }

    /// `POST /v1/runs/{id}/cancel` of a Temporal run: the workflow is
    /// cancelled (202); a finished run is 409.
    pub(crate) async fn cancel(&self, p: &Principal, run: &str) -> Result<CancelAnswer, ApiError> {
        let (_, state) = self.result(p, run).await?;
        if let Some((status, ..)) = &state.finished {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("run `{run}` already {}", status.name()),
            ));
        }
        let c = self.client().await?;
        self.rpc("cancelling the run", client::cancel(c, run))
            .await?;
        Ok(CancelAnswer {
            run: Some(run.to_owned()),
            cancel: CancelState::Requested,
        })
    }

    /// `POST /v1/runs/{id}/nodes/{node}/approval` of a Temporal run: the
    /// run's tenant checked (a query), then the workflow checks the verdict
    /// and queues it in one step (its `approve` update), so of two racing
    /// verdicts exactly one is accepted.
    pub(crate) async fn approve(
        &self,
        p: &Principal,
        run: &str,
        node: &str,
        body: ApprovalBody,
    ) -> Result<ApprovalAnswer, ApiError> {
        self.result(p, run).await?;
        let verdict = body.verdict;
        let signal = ApprovalSignal {
            node: node.to_owned(),
            verdict,
            reason: body.reason,
            by: p.token.clone(),
            tenant: Some(p.tenant.clone()),
        };
        let c = self.client().await?;
        let state = match self
            .rpc(
                "handing the verdict to the run",
                client::approve(c, run, signal),
            )
            .await?
        {
            ApprovalOutcome::Accepted => Offered::Accepted,
            ApprovalOutcome::AlreadyGiven => Offered::AlreadyGiven,
            ApprovalOutcome::Refused { error } => {
                return Err(super::reply::approval_refused(&error));
            }
            ApprovalOutcome::Unavailable { message } => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "orchestrator",
                    message,
                ));
            }
        };
        Ok(ApprovalAnswer {
            run: run.to_owned(),
            node: node.to_owned(),
            state,
            verdict,
        })
    }

    /// `GET /v1/runs/{id}/events` of a Temporal run: its history so far,
    /// then new events as the workflow applies them (asked every 250 ms),
    /// until `finished`. `after` resumes past that sequence number. The
    /// stream holds one of the tenant's stream slots while open.
    pub(crate) async fn events(
        self: Arc<Self>,
        daemon: &Arc<Daemon>,
        p: &Principal,
        run: String,
        after: Option<u64>,
    ) -> Result<EventStream, ApiError> {
        self.result(p, &run).await?;
        let slot = super::runs::Runs::open_stream(daemon, &p.tenant).map_err(|e| {
            daemon.metrics.rejected("too-many-streams");
            super::reply::full("too-many-streams", e.to_string())
        })?;
        let daemon = daemon.clone();
        let principal = p.clone();
        let next = after.map_or(0, |a| a.saturating_add(1));
        let pending: std::collections::VecDeque<SseEvent> = std::collections::VecDeque::new();
        let cursor = (self, daemon, principal, run, next, pending, false, slot);
        let events = stream::unfold(cursor, |mut c| async move {
            let (runs, daemon, p, run, next, pending, ended, _slot) = &mut c;
            loop {
                if let Some(e) = pending.pop_front() {
                    return Some((Ok(e), c));
                }
                if *ended || daemon.runs.is_stopping() {
                    return None;
                }
                let Ok((result, _)) = runs.result(p, run).await else {
                    return None;
                };
                let from = usize::try_from(*next).unwrap_or(usize::MAX);
                for (seq, event) in result.history.iter().enumerate().skip(from) {
                    let Ok(json) = serde_json::to_string(event) else {
                        return None;
                    };
                    let kind = event_tag(&json);
                    *ended |= kind == "finished";
                    pending.push_back(
                        SseEvent::default()
                            .id(seq.to_string())
                            .event(kind)
                            .data(json),
                    );
                    *next = seq as u64 + 1;
                }
                if pending.is_empty() {
                    tokio::time::sleep(POLL_EVERY).await;
                }
            }
        });
        Ok(Sse::new(events.boxed()).keep_alive(KeepAlive::default()))
    }
}

/// The tenant a Temporal run id names (`TENANT.RUN`), if it is one.
pub(crate) fn tenant_of(run: &str) -> Option<&str> {
    let (tenant, rest) = run.split_once('.')?;
    (!tenant.is_empty() && !rest.is_empty()).then_some(tenant)
}

/// The report of a run on Temporal: unfinished is `running` (the
/// workflow is driving it), not `interrupted`.
fn report_of(state: &RunState) -> RunReport {
    let mut report = state.report();
    if state.finished.is_none() {
        report.status = RunPhase::Running;
    }
    report
}

fn event_tag(json: &str) -> String {
    serde_json::from_str::<Value>(json)
        .ok()
        .and_then(|v| v["event"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "event".into())
}

fn unavailable(endpoint: &Endpoint, what: &str) -> ApiError {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "orchestrator-unavailable",
            format!(
                "Temporal at {} did not answer in time ({what}); retry later",
                endpoint.address
            ),
        )
    }
}

fn temporal_error(e: &TemporalError) -> ApiError {
    let status = match e {
        TemporalError::Connect { .. } | TemporalError::Address { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(status, "orchestrator", super::error_chain(e))
}
