//! Starting, awaiting, querying and cancelling DAG runs on Temporal: one
//! workflow per run, its workflow id the run id.

use temporalio_client::{
    Client, WorkflowCancelOptions, WorkflowExecuteUpdateOptions, WorkflowGetResultOptions,
    WorkflowListOptions, WorkflowQueryOptions, WorkflowStartOptions,
};

use temporalio_common::MemoValues;

use super::{
    ApprovalOutcome, ApprovalSignal, Endpoint, RunInput, RunResult, SUMMARY_MEMO, TemporalError,
    workflow::{CallBatchWorkflow, DagWorkflow},
};
use crate::dag::{
    journal::{RunPage, RunQuery, RunSummary},
    status::RunPhase,
};

/// Start run `input.run` as a workflow on `endpoint`'s task queue. Cost:
/// one RPC; nothing runs until a `soma worker` polls the queue.
pub async fn start(
    client: &Client,
    endpoint: &Endpoint,
    input: RunInput,
) -> Result<(), TemporalError> {
    let run = input.run.clone();
    // The run's listing row, for run lists (see [`list_runs`]).
    let mut memo = MemoValues::new();
    if let Ok(state) = crate::dag::state::RunState::new(&run, &input.created) {
        memo.insert(SUMMARY_MEMO, input.summary(&state));
    }
    let options = WorkflowStartOptions::new(endpoint.task_queue.clone(), run.clone())
        .memo(memo)
        .build();
    client
        .start_workflow(DagWorkflow::run, input, options)
        .await
        .map_err(|e| TemporalError::Start {
            run,
            source: Box::new(e),
        })?;
    Ok(())
}

/// Wait for run `run` to end; its history and charges.
pub async fn result(client: &Client, run: &str) -> Result<RunResult, TemporalError> {
    client
        .get_workflow_handle::<DagWorkflow>(run)
        .get_result(WorkflowGetResultOptions::default())
        .await
        .map_err(|e| TemporalError::Result {
            run: run.to_owned(),
            source: Box::new(e),
        })
}

/// Run `run` so far, from its workflow (a query: answered by a worker).
pub async fn status(client: &Client, run: &str) -> Result<RunResult, TemporalError> {
    client
        .get_workflow_handle::<DagWorkflow>(run)
        .query(DagWorkflow::report, (), WorkflowQueryOptions::default())
        .await
        .map_err(|e| TemporalError::Workflow {
            run: run.to_owned(),
            source: Box::new(e),
        })
}

/// Hand a verdict to run `run`'s workflow (its `approve` update): the
/// workflow checks it against the run and queues it in one step, and
/// answers what it did. A run that has ended takes no update: its
/// recorded verdicts answer instead (the same verdict again is
/// [`ApprovalOutcome::AlreadyGiven`], another one a refusal).
pub async fn approve(
    client: &Client,
    run: &str,
    signal: ApprovalSignal,
) -> Result<ApprovalOutcome, TemporalError> {
    let (node, verdict) = (signal.node.clone(), signal.verdict);
    let updated = client
        .get_workflow_handle::<DagWorkflow>(run)
        .execute_update(
            DagWorkflow::approve,
            signal,
            WorkflowExecuteUpdateOptions::default(),
        )
        .await;
    let failed = match updated {
        Ok(outcome) => return Ok(outcome),
        Err(e) => e,
    };
    // Ended (or unreachable): what the run recorded, if it can be read.
    if let Ok(so_far) = status(client, run).await
        && let Ok(state) = so_far.state()
        && state.finished.is_some()
    {
        match state.check_approval(&node, verdict) {
            Ok(None) => return Ok(ApprovalOutcome::AlreadyGiven),
            Err(error) => return Ok(ApprovalOutcome::Refused { error }),
            // A finished run awaits no verdict: not reached.
            Ok(Some(_)) => {}
        }
    }
    Err(TemporalError::Workflow {
        run: run.to_owned(),
        source: Box::new(failed),
    })
}

/// The workflow type of a run: what visibility queries list as runs (a
/// run's child workflows, [`CallBatchWorkflow`], share its id prefix).
fn run_workflow() -> String {
    use temporalio_common::WorkflowDefinition as _;
    DagWorkflow::run.name().to_owned()
}

/// The ids of `tenant`'s runs still open on Temporal (workflow ids
/// `TENANT.…` running), at most `limit`, from Temporal's visibility
/// store — which may trail a start by a moment.
///
/// # Errors
///
/// [`TemporalError::List`]: a tenant name a visibility query cannot hold
/// (Soma's are letters, digits, `-` and `_`), or the list failed.
pub async fn open_runs(
    client: &Client,
    tenant: &str,
    limit: usize,
) -> Result<Vec<String>, TemporalError> {
    use futures_util::StreamExt as _;
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| TemporalError::List {
        tenant: tenant.to_owned(),
        source,
    };
    if !crate::names::is_plain_id(tenant) {
        return Err(failed(
            "a tenant name of 1–64 letters, digits, `-` and `_` is needed".into(),
        ));
    }
    let query = format!(
        "ExecutionStatus = 'Running' AND WorkflowType = '{}' AND WorkflowId STARTS_WITH \
         '{tenant}.'",
        run_workflow()
    );
    let options = WorkflowListOptions::builder().limit(limit).build();
    let mut listed = client.list_workflows(query, options);
    let mut ids = Vec::new();
    while let Some(execution) = listed.next().await {
        ids.push(execution.map_err(|e| failed(Box::new(e)))?.id().to_owned());
    }
    Ok(ids)
}

/// A page of runs from Temporal's visibility store, filtered as the
/// journal lists the embedded engine's ([`RunQuery`]: tenant, phase,
/// failure class, capsule, creation window, offset and limit). Each row
/// is the run's summary memo — as of its start while it runs (its node
/// counts are then the start's), as of its end once it ended. A workflow
/// that closed without its final memo (terminated, timed out) is
/// `interrupted`. Executions that continued as new are skipped (the
/// run's latest one stands for it), and so are workflows without the memo.
///
/// The order is Temporal's: runs still going first, then by when they
/// ended, newest first (its SQL visibility stores sort by close time and
/// take no `ORDER BY`; sorting here by creation would mean reading every
/// row before the first page).
///
/// Tenant, phase (running or not) and the window are asked of Temporal;
/// failure class, capsule and the exact phase are checked here, over at
/// most `scan` listed workflows (`more` is set when the scan stopped
/// there).
///
/// # Errors
///
/// [`TemporalError::List`]: a tenant name a visibility query cannot hold,
/// or the list failed.
pub async fn list_runs(
    client: &Client,
    query: &RunQuery,
    scan: usize,
) -> Result<RunPage, TemporalError> {
    use futures_util::StreamExt as _;
    let who = query.tenant.clone().unwrap_or_else(|| "*".into());
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| TemporalError::List {
        tenant: who.clone(),
        source,
    };
    let mut clauses = vec![
        "ExecutionStatus != 'ContinuedAsNew'".to_owned(),
        format!("WorkflowType = '{}'", run_workflow()),
    ];
    if let Some(tenant) = &query.tenant {
        if !crate::names::is_plain_id(tenant) {
            return Err(failed(
                "a tenant name of 1–64 letters, digits, `-` and `_` is needed".into(),
            ));
        }
        clauses.push(format!("WorkflowId STARTS_WITH '{tenant}.'"));
    }
    match query.status {
        None => {}
        Some(RunPhase::Running | RunPhase::Queued) => {
            clauses.push("ExecutionStatus = 'Running'".into());
        }
        Some(_) => clauses.push("ExecutionStatus != 'Running'".into()),
    }
    let at = |ms: u64| {
        chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    if let Some(t) = query.since_ms.and_then(at) {
        clauses.push(format!("StartTime >= '{t}'"));
    }
    if let Some(t) = query.until_ms.and_then(at) {
        clauses.push(format!("StartTime < '{t}'"));
    }
    let options = WorkflowListOptions::builder().limit(scan).build();
    let mut listed = client.list_workflows(clauses.join(" AND "), options);
    let mut page = RunPage::default();
    let (mut skipped, mut scanned) = (0usize, 0usize);
    while let Some(execution) = listed.next().await {
        let execution = execution.map_err(|e| failed(Box::new(e)))?;
        scanned += 1;
        let Ok(Some(mut row)) = execution.memo().get::<RunSummary>(SUMMARY_MEMO) else {
            continue;
        };
        let open = matches!(
            execution.status(),
            temporalio_client::WorkflowExecutionStatus::Running
        );
        if !open && !row.status.is_finished() {
            row.status = RunPhase::Interrupted;
        }
        if row.run != execution.id() || !query.matches(&row) {
            continue;
        }
        if skipped < query.offset {
            skipped += 1;
            continue;
        }
        if page.runs.len() == query.limit {
            page.more = true;
            return Ok(page);
        }
        page.runs.push(row);
    }
    page.more = scanned >= scan;
    Ok(page)
}

/// Ask run `run` to stop: nothing new starts, calls in flight finish, the
/// run ends as cancelled.
pub async fn cancel(client: &Client, run: &str) -> Result<(), TemporalError> {
    client
        .get_workflow_handle::<DagWorkflow>(run)
        .cancel(
            WorkflowCancelOptions::builder()
                .reason("soma dag cancel")
                .build(),
        )
        .await
        .map_err(|e| TemporalError::Workflow {
            run: run.to_owned(),
            source: Box::new(e),
        })
}

/// Run a worker on `endpoint`'s task queue until it fails or `shutdown`
/// resolves: it hosts [`DagWorkflow`] and the call activities. A run's
/// next workflow task waits up to `sticky_timeout` for the worker that
/// served the run last before any worker may take it.
pub async fn work(
    endpoint: &Endpoint,
    activities: super::activity::CallActivities,
    sticky_timeout: std::time::Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TemporalError> {
    let worker_error = |e: Box<dyn std::error::Error + Send + Sync>| TemporalError::Worker(e);
    let client = endpoint.connect().await?;
    let runtime = temporalio_sdk::Runtime::from_current_tokio(Default::default())
        .map_err(|e| worker_error(e.into()))?;
    let options = temporalio_sdk::WorkerOptions::new(endpoint.task_queue.clone())
        .register_workflow::<DagWorkflow>()
        .map_err(|e| worker_error(Box::new(e)))?
        .register_workflow::<CallBatchWorkflow>()
        .map_err(|e| worker_error(Box::new(e)))?
        .register_activities(activities)
        .sticky_queue_schedule_to_start_timeout(sticky_timeout)
        .build();
    let mut worker = temporalio_sdk::Worker::new(&runtime, client, options)
        .map_err(|e| worker_error(e.into()))?;
    let handle = worker.shutdown_handle();
    let run = worker.run();
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => r.map_err(|e| worker_error(e.into())),
        () = shutdown => {
            handle();
            run.await.map_err(|e| worker_error(e.into()))
        }
    }
}

/// A multi-thread tokio runtime for the client ([`Blocking`]) and the
/// worker ([`work`]).
///
/// # Errors
///
/// [`TemporalError::Runtime`] if its threads cannot start.
pub fn runtime() -> Result<tokio::runtime::Runtime, TemporalError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("soma-temporal")
        .build()
        .map_err(TemporalError::Runtime)
}

/// The client's calls for code outside any async runtime (the CLI, the
/// benches): each call blocks on a runtime the client owns.
///
/// Not async and not generic on purpose: the client's RPC futures are
/// compiled in this crate (where the daemon's handlers need them anyway),
/// not again in each binary that would block on them itself (release
/// builds do not share generic instances across crates; docs/ci.md).
pub struct Blocking {
    runtime: tokio::runtime::Runtime,
    client: Client,
    endpoint: Endpoint,
}

impl std::fmt::Debug for Blocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocking")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Blocking {
    /// Connect to `endpoint`'s frontend.
    ///
    /// # Errors
    ///
    /// [`TemporalError::Runtime`]; [`Endpoint::connect`]'s.
    pub fn connect(endpoint: &Endpoint) -> Result<Self, TemporalError> {
        let runtime = runtime()?;
        let client = runtime.block_on(endpoint.connect())?;
        Ok(Self {
            runtime,
            client,
            endpoint: endpoint.clone(),
        })
    }

    /// [`start`] on this client's endpoint.
    ///
    /// # Errors
    ///
    /// [`start`]'s.
    pub fn start(&self, input: RunInput) -> Result<(), TemporalError> {
        self.runtime
            .block_on(start(&self.client, &self.endpoint, input))
    }

    /// [`result`]: waits for the run to end.
    ///
    /// # Errors
    ///
    /// [`result`]'s.
    pub fn result(&self, run: &str) -> Result<RunResult, TemporalError> {
        self.runtime.block_on(result(&self.client, run))
    }

    /// [`result`], handing `progress` the run so far (a [`status`] query)
    /// every `every` while it waits. A query that fails or takes longer
    /// than `every` (no worker polling yet, the server restarting) is
    /// skipped: the wait goes on, and only [`result`]'s error ends it.
    ///
    /// # Errors
    ///
    /// [`result`]'s.
    pub fn result_watching(
        &self,
        run: &str,
        every: std::time::Duration,
        progress: &mut dyn FnMut(&RunResult),
    ) -> Result<RunResult, TemporalError> {
        self.runtime.block_on(async {
            let done = result(&self.client, run);
            tokio::pin!(done);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    ended = &mut done => return ended,
                    _ = tick.tick() => {
                        let asked = tokio::time::timeout(every, status(&self.client, run));
                        if let Ok(Ok(so_far)) = asked.await {
                            progress(&so_far);
                        }
                    }
                }
            }
        })
    }

    /// [`status`]: the run so far.
    ///
    /// # Errors
    ///
    /// [`status`]'s.
    pub fn status(&self, run: &str) -> Result<RunResult, TemporalError> {
        self.runtime.block_on(status(&self.client, run))
    }

    /// [`approve`]: hand a verdict to the run.
    ///
    /// # Errors
    ///
    /// [`approve`]'s.
    pub fn approve(
        &self,
        run: &str,
        signal: ApprovalSignal,
    ) -> Result<ApprovalOutcome, TemporalError> {
        self.runtime.block_on(approve(&self.client, run, signal))
    }

    /// [`cancel`]: ask the run to stop.
    ///
    /// # Errors
    ///
    /// [`cancel`]'s.
    pub fn cancel(&self, run: &str) -> Result<(), TemporalError> {
        self.runtime.block_on(cancel(&self.client, run))
    }
}
