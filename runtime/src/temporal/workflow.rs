//! The DAG run as a Temporal workflow: the embedded engine's fold
//! (`RunState::schedule` → `apply`, `complete_with` → `apply`) driven by
//! workflow code. Deterministic: time is the workflow's, the retry jitter
//! comes from the workflow's seeded randomness, and the only I/O is
//! activities and timers.

// The SDK's macros generate a marker type per activity/workflow method,
// without `Debug`.
#![allow(missing_debug_implementations)]

use std::{
    future::{Future, poll_fn},
    pin::Pin,
    task::Poll,
    time::{Duration, UNIX_EPOCH},
};

use temporalio_common::{MemoValue, RetryPolicy};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityExecutionError, ActivityOptions, ApplicationFailure, CancellableFuture,
    ChildWorkflowOptions, ContinueAsNewOptions, SyncWorkflowContext, TimerResult,
    WaitConditionOptions, WorkflowCancellationToken, WorkflowContext, WorkflowContextView,
    WorkflowResult,
};

use super::{
    ApprovalOutcome, ApprovalSignal, BatchResult, BudgetRequest, CONTINUE_AS_NEW_AFTER, CallBatch,
    CallRequest, CallResult, Carried, Charges, HISTORY_EVENT_LIMIT, MAX_PENDING_ACTIVITIES,
    PAYLOAD_LIMIT_BYTES, RunInput, RunResult, SUMMARY_MEMO, activity::CallActivities,
    activity::HEARTBEAT_EVERY,
};
use crate::dag::{
    approval::ApprovalError,
    history::{CallRecord, CapsuleRecord, Event, NodeFailure, RunStatus},
    scheduler::{node_limits, plan_budgets, run_budgets},
    state::{Dispatch, RunState},
};

/// Calls at once when neither the run nor its spec says.
const DEFAULT_CONCURRENCY: usize = 4;

/// A call's result as the workflow applies it: (node, attempt, outcome).
type Done = (usize, u32, ActivityOutcome);
/// Started calls — one activity, or a child workflow's batch — resolving
/// to their results.
type Call<'a> = Pin<Box<dyn Future<Output = Vec<Done>> + 'a>>;
/// A run's calls in flight: (how many calls, their future).
type InFlight<'a> = Vec<(usize, Call<'a>)>;
/// The armed retry-backoff timer: (when it fires, unix ms; the timer).
type Timer<'a> = Option<(
    u64,
    Pin<Box<dyn CancellableFuture<Output = TimerResult> + 'a>>,
)>;

type ActivityOutcome = Result<CallResult, ActivityExecutionError>;

/// One DAG run. Its recorded state is the history it applied (queried by
/// `soma dag status --engine temporal`) and the charges its calls reported.
#[workflow]
#[derive(Debug, Default)]
pub struct DagWorkflow {
    run: String,
    history: Vec<Event>,
    charges: Charges,
    /// Verdicts signalled and not yet applied.
    inbox: Vec<ApprovalSignal>,
}

#[workflow_methods]
impl DagWorkflow {
    /// Drive the run to its end; the result is its whole history and the
    /// ledger entries of its calls.
    #[run]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: RunInput,
    ) -> WorkflowResult<RunResult> {
        let ctx: &WorkflowContext<Self> = ctx;
        // What the next execution starts from, should this one continue
        // as new (its `carried` is filled in then).
        let mut next = RunInput {
            carried: None,
            ..input.clone()
        };
        let RunInput {
            run,
            created,
            render_limit,
            ceilings,
            concurrency,
            heartbeat_timeout_ms,
            continue_after_events,
            carried,
            capsule_names: _,
            offload,
            child_batch,
        } = input;
        // Child workflows only when their results may exceed one payload.
        let child_batch = child_batch.filter(|&b| b > 0 && offload);
        let mut children: u32 = 0;
        let heartbeat = heartbeat_timeout_ms.map_or(HEARTBEAT_EVERY * 5, Duration::from_millis);
        let continue_after = continue_after_events.unwrap_or(CONTINUE_AS_NEW_AFTER);
        let mut state = RunState::new(&run, &created).map_err(invalid)?;
        state.render_limit = render_limit;
        state.ceilings = ceilings;
        let carried = carried.unwrap_or_default();
        for event in &carried.history {
            state.apply(event).map_err(invalid)?;
        }
        let executions = carried.executions;
        ctx.state_mut(|w| {
            w.run.clone_from(&run);
            w.history.push(created.clone());
            w.history.extend(carried.history);
            w.charges.add(carried.entries);
            w.inbox.extend(carried.inbox);
        });
        // At most this many of the run's activities are scheduled at once:
        // Temporal's task queue is the queue, and a worker with more slots
        // must not run more of this run's calls than it asked for. (The
        // embedded engine queues more per worker thread to batch its
        // commits, and withdraws what is queued when a fail-fast halts, so
        // both engines call the same nodes.)
        let slots = concurrency
            .or(state.spec.policy.concurrency)
            .unwrap_or(DEFAULT_CONCURRENCY)
            .clamp(1, MAX_PENDING_ACTIVITIES);
        let mut rng = fastrand::Rng::with_seed(ctx.random::<u64>());
        let budgets = run_budgets(&run, &state.spec);
        set_budgets(ctx, budgets).await?;

        let mut in_flight: InFlight<'_> = Vec::new();
        let mut cancelled = Box::pin(ctx.cancelled());
        let mut timer: Timer<'_> = None;
        // Results known without a call (a capsule that could not be loaded).
        let mut ready: Vec<(usize, u32, ActivityOutcome)> = Vec::new();
        let mut cancel_seen = false;
        loop {
            let now = workflow_ms(ctx, &state);
            let mut batch: Vec<Event> = Vec::new();
            let mut budgets = Vec::new();
            if cancel_seen && !state.cancel_requested {
                propose(
                    &mut state,
                    Event::CancelRequested { time_ms: now },
                    &mut batch,
                    &mut budgets,
                )?;
            }
            if state.finished.is_none() && ctx.history_length() >= HISTORY_EVENT_LIMIT {
                let error = format!(
                    "the run's Temporal history reached {} events ({HISTORY_EVENT_LIMIT} is the \
                     most this engine lets one execution use; Temporal refuses 51,200) before \
                     its calls in flight let it continue as new: lower its concurrency or \
                     [orchestrator] continue_as_new_after_events",
                    ctx.history_length()
                );
                let finished = Event::Finished {
                    status: RunStatus::Failed,
                    output: None,
                    error: Some(error),
                    time_ms: now,
                };
                propose(&mut state, finished, &mut batch, &mut budgets)?;
            }
            // Verdicts signalled since the last turn (in the order Temporal
            // delivered them: deterministic on replay).
            let signals = if ctx.state(|w| w.inbox.is_empty()) {
                Vec::new()
            } else {
                ctx.state_mut(|w| std::mem::take(&mut w.inbox))
            };
            for signal in signals {
                if let Some(event) = verdict_event(&state, signal, now) {
                    propose(&mut state, event, &mut batch, &mut budgets)?;
                }
            }
            // Past its history budget the execution starts nothing more;
            // once its calls in flight are in, it continues as new.
            let draining = state.finished.is_none()
                && (ctx.history_length() >= continue_after || ctx.continue_as_new_suggested());
            let mut dispatch: Vec<Dispatch> = Vec::new();
            while state.finished.is_none() {
                let free = if draining {
                    0
                } else {
                    slots.saturating_sub(calls_in(&in_flight) + dispatch.len())
                };
                let (events, starts) = state.schedule(now, free);
                if events.is_empty() {
                    break;
                }
                for e in events {
                    propose(&mut state, e, &mut batch, &mut budgets)?;
                }
                dispatch.extend(starts);
            }
            commit(ctx, batch, Vec::new());
            if state.finished.is_some() {
                break;
            }
            if draining && in_flight.is_empty() && ready.is_empty() && dispatch.is_empty() {
                match carry_over(ctx, executions, offload) {
                    Ok(carried) => {
                        if let Some((_, t)) = timer.take() {
                            t.cancel();
                        }
                        next.carried = Some(carried);
                        return match ctx.continue_as_new(next, ContinueAsNewOptions::default()) {
                            Err(continued) => Err(continued),
                            Ok(never) => match never {},
                        };
                    }
                    Err(error) => {
                        let finished = Event::Finished {
                            status: RunStatus::Failed,
                            output: None,
                            error: Some(error),
                            time_ms: now,
                        };
                        let mut batch = Vec::new();
                        propose(&mut state, finished, &mut batch, &mut Vec::new())?;
                        commit(ctx, batch, Vec::new());
                        break;
                    }
                }
            }
            set_budgets(ctx, budgets).await?;
            let mut requests = Vec::with_capacity(dispatch.len());
            for d in dispatch {
                match prepare(&state, d) {
                    Ok(r) => requests.push(r),
                    Err(done) => ready.push(*done),
                }
            }
            // A large turn (a fan-out) goes to child workflows in whole
            // batches; the rest, and every small turn, as activities.
            if let Some(size) = child_batch {
                while requests.len() >= size {
                    let calls: Vec<_> = requests.drain(..size).collect();
                    children += 1;
                    let id = format!("{}.calls-{executions}-{children}", ctx.workflow_id());
                    in_flight.push((calls.len(), start_batch(ctx, id, calls, heartbeat)));
                }
            }
            for (node, attempt, request) in requests {
                in_flight.push((1, call(ctx, node, attempt, request, heartbeat)));
            }
            // Wait for a result, the next retry time or a cancellation.
            let wakeup = state.next_wakeup();
            if timer.as_ref().map(|t| t.0) != wakeup {
                if let Some((_, old)) = timer.take() {
                    old.cancel();
                }
                timer = wakeup.map(|until| {
                    let wait = Duration::from_millis(until.saturating_sub(now).max(1));
                    let t: Pin<Box<dyn CancellableFuture<Output = TimerResult> + '_>> =
                        Box::pin(ctx.timer(wait));
                    (until, t)
                });
            }
            let mut done = std::mem::take(&mut ready);
            // A verdict signalled: never cancelled (a cancelled run still
            // records its calls in flight, as the embedded engine does).
            let mut signalled = Box::pin(
                ctx.wait_condition_with_options(
                    |w| !w.inbox.is_empty(),
                    WaitConditionOptions::builder()
                        .cancellation_token(WorkflowCancellationToken::new())
                        .build(),
                ),
            );
            if done.is_empty() {
                // Every call that has finished joins this turn, in start
                // order (deterministic; no wakers but the SDK's).
                let (finished, cancel, fired) = poll_fn(|cx| {
                    let mut finished = Vec::new();
                    let mut k = 0;
                    while k < in_flight.len() {
                        match in_flight[k].1.as_mut().poll(cx) {
                            Poll::Ready(d) => {
                                finished.extend(d);
                                drop(in_flight.remove(k));
                            }
                            Poll::Pending => k += 1,
                        }
                    }
                    let cancel = !cancel_seen && cancelled.as_mut().poll(cx).is_ready();
                    let fired = timer
                        .as_mut()
                        .is_some_and(|(_, t)| t.as_mut().poll(cx).is_ready());
                    let verdict = signalled.as_mut().poll(cx).is_ready();
                    if finished.is_empty() && !cancel && !fired && !verdict {
                        Poll::Pending
                    } else {
                        Poll::Ready((finished, cancel, fired))
                    }
                })
                .await;
                cancel_seen |= cancel;
                if fired {
                    timer = None;
                }
                done.extend(finished);
            }
            let now = workflow_ms(ctx, &state);
            let mut batch: Vec<Event> = Vec::new();
            let mut budgets = Vec::new();
            let mut entries = Vec::new();
            for (node, attempt, outcome) in done {
                let result = match outcome {
                    Ok(r) => r,
                    Err(e) => lost_call(&e),
                };
                entries.extend(result.entries);
                let call = CallRecord {
                    attempt,
                    fuel: result.fuel,
                    wall_us: result.wall_us,
                    logs: result.logs,
                };
                let events = state.complete_with(node, attempt, result.result, call, now, &mut rng);
                for e in events {
                    propose(&mut state, e, &mut batch, &mut budgets)?;
                }
            }
            commit(ctx, batch, entries);
            set_budgets(ctx, budgets).await?;
        }
        if let Some((_, t)) = timer.take() {
            t.cancel();
        }
        // The run's listing row, as it ended (for run lists).
        let mut row = next.summary(&state);
        row.updated_ms = workflow_ms(ctx, &state);
        if let Err(e) = ctx.upsert_memo([(SUMMARY_MEMO, Some(MemoValue::new(row)))]) {
            tracing::warn!(run = %run, "could not record the run's listing row: {e}");
        }
        let result = ctx.state(|w| RunResult {
            run: w.run.clone(),
            history: w.history.clone(),
            entries: w.charges.entries(),
        });
        let size = serde_json::to_vec(&result).map_or(0, |v| v.len());
        if !offload && size > PAYLOAD_LIMIT_BYTES {
            return Err(ApplicationFailure::non_retryable(format!(
                "run {run}'s report has {size} bytes; Temporal takes at most \
                 {PAYLOAD_LIMIT_BYTES} in one payload: run it with [store] backend = \
                 \"postgres\" (large payloads then go by reference) or on the embedded engine"
            ))
            .into());
        }
        Ok(result)
    }

    /// A human verdict handed in unchecked, as clients before the
    /// [`DagWorkflow::approve`] update did (Soma's own use the update):
    /// applied at the workflow's next turn; ignored if the node no longer
    /// awaits one.
    #[signal]
    pub fn approval(&mut self, _ctx: &mut SyncWorkflowContext<Self>, signal: ApprovalSignal) {
        self.inbox.push(signal);
    }

    /// A human verdict, checked and queued atomically (`soma dag approve
    /// --engine temporal`, the daemon's approval route): against the run
    /// as it stands and the verdicts queued but not applied yet, so two
    /// racing verdicts on one node cannot both be accepted (Temporal runs
    /// a workflow's update handlers one at a time). Refusals are answers,
    /// not failures: nothing is queued and the run's history gains no
    /// event (Temporal's own history records the update either way).
    #[update]
    pub fn approve(
        &mut self,
        _ctx: &mut SyncWorkflowContext<Self>,
        signal: ApprovalSignal,
    ) -> ApprovalOutcome {
        let state = match RunState::replay(&self.run, &self.history) {
            Ok(state) => state,
            Err(e) => {
                return ApprovalOutcome::Unavailable {
                    message: format!(
                        "run {} could not be rebuilt from its history: {e}",
                        self.run
                    ),
                };
            }
        };
        match state.check_approval(&signal.node, signal.verdict) {
            Err(error) => ApprovalOutcome::Refused { error },
            Ok(None) => ApprovalOutcome::AlreadyGiven,
            Ok(Some(_)) => match self.inbox.iter().find(|q| q.node == signal.node) {
                Some(queued) if queued.verdict == signal.verdict => ApprovalOutcome::AlreadyGiven,
                Some(queued) => ApprovalOutcome::Refused {
                    error: ApprovalError::Conflict {
                        node: signal.node,
                        given: queued.verdict,
                        by: queued.by.clone(),
                    },
                },
                None => {
                    self.inbox.push(signal);
                    ApprovalOutcome::Accepted
                }
            },
        }
    }

    /// The run so far: its history and the charges reported.
    #[query]
    pub fn report(&self, _ctx: &WorkflowContextView) -> RunResult {
        RunResult {
            run: self.run.clone(),
            history: self.history.clone(),
            entries: self.charges.entries(),
        }
    }
}

/// What this execution hands the next one, or why it cannot (the carried
/// events would not fit in one Temporal payload).
fn carry_over(
    ctx: &WorkflowContext<DagWorkflow>,
    executions: u32,
    offload: bool,
) -> Result<Carried, String> {
    let carried = ctx.state(|w| Carried {
        history: w.history.get(1..).unwrap_or_default().to_vec(),
        entries: w.charges.entries(),
        inbox: w.inbox.clone(),
        executions: executions.saturating_add(1),
    });
    let size = serde_json::to_vec(&carried).map_or(usize::MAX, |v| v.len());
    if !offload && size > PAYLOAD_LIMIT_BYTES {
        return Err(format!(
            "the run's history is {size} bytes, and continuing its workflow as new would carry \
             it in one Temporal payload (at most {PAYLOAD_LIMIT_BYTES}): run it with [store] \
             backend = \"postgres\" (large payloads then go by reference), on the embedded \
             engine, or split it"
        ));
    }
    Ok(carried)
}

/// The event a signalled verdict leads to, if its node awaits one.
fn verdict_event(state: &RunState, signal: ApprovalSignal, now: u64) -> Option<Event> {
    let pending = state
        .pending_approvals()
        .into_iter()
        .find(|p| p.node == signal.node)?;
    state.approval_event(
        &signal.node,
        pending.attempt,
        signal.verdict,
        signal.reason,
        &signal.by,
        signal.tenant,
        now,
    )
}

/// Apply one event and keep it for the commit; a plan's node budgets are
/// set before its nodes start.
fn propose(
    state: &mut RunState,
    event: Event,
    batch: &mut Vec<Event>,
    budgets: &mut Vec<(crate::budget::Scope, Option<crate::budget::Limit>)>,
) -> WorkflowResult<()> {
    if let Event::Expanded { node, plan, .. } = &event {
        budgets.extend(plan_budgets(&state.run, node, plan));
    }
    state.apply(&event).map_err(invalid)?;
    batch.push(event);
    Ok(())
}

/// Record applied events (and the charges that came with them) in the
/// workflow's queryable state.
fn commit(
    ctx: &WorkflowContext<DagWorkflow>,
    batch: Vec<Event>,
    entries: Vec<crate::ledger::Entry>,
) {
    if batch.is_empty() && entries.is_empty() {
        return;
    }
    ctx.state_mut(|w| {
        w.history.extend(batch);
        w.charges.add(entries);
    });
}

async fn set_budgets(
    ctx: &WorkflowContext<DagWorkflow>,
    limits: Vec<(crate::budget::Scope, Option<crate::budget::Limit>)>,
) -> WorkflowResult<()> {
    if limits.is_empty() {
        return Ok(());
    }
    let options = ActivityOptions::with_start_to_close_timeout(Duration::from_secs(60))
        .retry_policy(infra_retries())
        .cancellation_token(WorkflowCancellationToken::new())
        .build();
    ctx.execute_activity(CallActivities::budgets, BudgetRequest { limits }, options)
        .await?;
    Ok(())
}

/// The request of one call, or its result at once when its capsule could
/// not be loaded (as the embedded engine does).
fn prepare(state: &RunState, d: Dispatch) -> Result<(usize, u32, CallRequest), Box<Done>> {
    let record = state
        .capsules
        .get(&d.capsule)
        .cloned()
        .unwrap_or_else(|| unpinned(&d.capsule));
    if let Some(message) = record.load_error.clone() {
        let failure = NodeFailure::of_call(&crate::Failure::InvalidComponent { message });
        return Err(Box::new((d.node, d.attempt, Ok(known_failure(failure)))));
    }
    let Some(node) = state.nodes().get(d.node) else {
        let failure = NodeFailure::of_call(&crate::Failure::Host {
            message: format!("node {} is not in the run", d.id),
        });
        return Err(Box::new((d.node, d.attempt, Ok(known_failure(failure)))));
    };
    let limits = node_limits(&node.spec, &state.spec);
    let request = CallRequest {
        run: state.run.clone(),
        tenant: state.tenant.clone(),
        run_started_ms: state.created_ms,
        node: d.id.clone(),
        attempt: d.attempt,
        alias: d.capsule.clone(),
        capsule: record,
        input: d.input,
        limits,
        restriction: state.restriction(d.node),
    };
    Ok((d.node, d.attempt, request))
}

/// Start one call as an activity of the workflow `ctx` runs (the run's,
/// or a child's).
fn call<W>(
    ctx: &WorkflowContext<W>,
    node: usize,
    attempt: u32,
    request: CallRequest,
    heartbeat: Duration,
) -> Call<'_> {
    // The call's own deadline stops it; the activity's is a backstop for
    // a worker that hangs (heartbeats catch one that died).
    let deadline = request
        .limits
        .timeout_ms
        .map_or(Duration::from_secs(3600), |ms| {
            Duration::from_millis(ms.saturating_mul(2)).max(Duration::from_secs(60))
        });
    let options = ActivityOptions::with_start_to_close_timeout(deadline)
        .heartbeat_timeout(heartbeat)
        .retry_policy(infra_retries())
        .activity_id(format!("{}#{}", request.node, request.attempt))
        .summary(format!("{} attempt {}", request.node, request.attempt))
        // Like the embedded engine: a cancelled run lets its calls in
        // flight finish (and records them); nothing new starts.
        .cancellation_token(WorkflowCancellationToken::new())
        .build();
    let call = ctx.execute_activity(CallActivities::call, request, options);
    Box::pin(async move { vec![(node, attempt, call.await)] })
}

/// Start `calls` as child workflow `id` ([`CallBatchWorkflow`]); each
/// call's result when the child ends (a child that fails loses its calls,
/// as an activity whose retries are used up does).
fn start_batch(
    ctx: &WorkflowContext<DagWorkflow>,
    id: String,
    calls: Vec<(usize, u32, CallRequest)>,
    heartbeat: Duration,
) -> Call<'_> {
    let keys: Vec<(usize, u32)> = calls.iter().map(|(n, a, _)| (*n, *a)).collect();
    let summary = format!("{} calls of run {}", calls.len(), ctx.workflow_id());
    let batch = CallBatch {
        calls,
        heartbeat_timeout_ms: u64::try_from(heartbeat.as_millis()).unwrap_or(u64::MAX),
    };
    let options = ChildWorkflowOptions::builder()
        .workflow_id(id)
        .static_summary(summary)
        // Never cancelled with the run: its calls in flight finish.
        .cancellation_token(WorkflowCancellationToken::new())
        .build();
    let started = ctx.start_child_workflow(CallBatchWorkflow::run, batch, options);
    Box::pin(async move {
        let lost = |why: String| -> Vec<Done> {
            let result = lost(&why);
            keys.iter()
                .map(|&(n, a)| (n, a, Ok(result.clone())))
                .collect()
        };
        match started.await {
            Err(e) => lost(format!("its child workflow did not start: {e}")),
            Ok(child) => match child.result().await {
                Ok(results) => results.into_iter().map(|(n, a, r)| (n, a, Ok(r))).collect(),
                Err(e) => lost(format!("its child workflow failed: {e}")),
            },
        }
    })
}

/// A share of a run's calls (a large fan-out's), run at once as
/// activities in a child workflow of the run's: its history holds their
/// events, so the run's own grows by a few events per child.
#[workflow]
#[derive(Debug, Default)]
pub struct CallBatchWorkflow;

#[workflow_methods]
impl CallBatchWorkflow {
    /// Run every call of the batch; each one's result, in its order.
    #[run]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        batch: CallBatch,
    ) -> WorkflowResult<BatchResult> {
        let ctx: &WorkflowContext<Self> = ctx;
        let heartbeat = Duration::from_millis(batch.heartbeat_timeout_ms);
        let mut calls: Vec<Option<Call<'_>>> = batch
            .calls
            .into_iter()
            .map(|(node, attempt, request)| Some(call(ctx, node, attempt, request, heartbeat)))
            .collect();
        let mut done: Vec<Vec<Done>> = calls.iter().map(|_| Vec::new()).collect();
        // Every call polled with the SDK's own waker, in order (not
        // `join_all`: past 30 futures it polls through wakers of its own,
        // which the SDK refuses as nondeterministic).
        poll_fn(|cx| {
            let mut pending = false;
            for (slot, out) in calls.iter_mut().zip(done.iter_mut()) {
                if let Some(f) = slot {
                    match f.as_mut().poll(cx) {
                        Poll::Ready(d) => {
                            *out = d;
                            *slot = None;
                        }
                        Poll::Pending => pending = true,
                    }
                }
            }
            if pending {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        Ok(done
            .into_iter()
            .flatten()
            .map(|(node, attempt, outcome)| {
                (node, attempt, outcome.unwrap_or_else(|e| lost_call(&e)))
            })
            .collect())
    }
}

/// Calls in flight.
fn calls_in(in_flight: &InFlight<'_>) -> usize {
    in_flight.iter().map(|(n, _)| n).sum()
}

/// Temporal retries an attempt only when it could not be made at all (its
/// worker died, its capsule could not be fetched, the ledger could not be
/// written): the same attempt, so the ledger charges it once. A capsule's
/// own failures are results, retried (or not) by the fold.
fn infra_retries() -> RetryPolicy {
    RetryPolicy::builder()
        .initial_interval(Duration::from_secs(1))
        .maximum_interval(Duration::from_secs(10))
        .maximum_attempts(5)
        .build()
}

/// A call whose activity failed for good (Temporal's retries used up):
/// the node fails, not retried again by the fold.
fn lost_call(e: &ActivityExecutionError) -> CallResult {
    lost(&e.to_string())
}

/// A call that could not be made, for `why`: the node fails, not retried.
fn lost(why: &str) -> CallResult {
    let message = format!("the call could not be made on a Temporal worker: {why}");
    let failure = NodeFailure {
        retryable: false,
        ..NodeFailure::of_call(&crate::Failure::Host { message })
    };
    known_failure(failure)
}

fn known_failure(failure: NodeFailure) -> CallResult {
    CallResult {
        result: Err(failure),
        fuel: None,
        wall_us: 0,
        logs: Vec::new(),
        entries: Vec::new(),
    }
}

/// The workflow's time (deterministic), unix ms.
fn workflow_ms(ctx: &WorkflowContext<DagWorkflow>, state: &RunState) -> u64 {
    ctx.workflow_time()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(state.created_ms, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
        })
}

fn invalid(e: crate::dag::state::StateError) -> temporalio_sdk::WorkflowTermination {
    ApplicationFailure::non_retryable(e).into()
}

/// A capsule the run did not pin: a record whose load error says so.
fn unpinned(alias: &str) -> CapsuleRecord {
    CapsuleRecord {
        reference: alias.to_owned(),
        digest: String::new(),
        kind: crate::capsule::CapsuleKind::Worker,
        name: alias.to_owned(),
        version: String::new(),
        load_error: Some(format!("capsule `{alias}` is not pinned by the run")),
    }
}
