//! The embedded scheduler: one coordinator thread owns a run's state and
//! its journal; `concurrency` worker threads make the capsule calls.
//!
//! The loop, per turn: propose events (calls that finished → results,
//! retries, verdicts, plans; ready nodes → starts), **commit** them with the
//! finished calls' ledger charges in one durable transaction, then act
//! (dispatch the started calls). Everything that finished while a commit
//! was in flight goes into the next one, so commits are shared by as many
//! transitions as the workers produce — group commit without a timer.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use serde_json::Value;

use super::{
    approval::{ApprovalError, ApprovalRequest, Offered},
    history::{CallRecord, CapsuleRecord, Event, RunStatus, now_ms},
    journal::{Journal, JournalError, Offer, RunSummary},
    kinds::{KindError, check_kinds},
    spec::{ApprovalVerdict, BudgetSpec, NodeLimits, NodeSpec, Spec, SpecErrors},
    state::{Dispatch, RunState, StateError},
    status::RunPhase,
};
use crate::{
    CallOptions, Capsule, Engine, Outcome, budget, capsule::CapsuleKind, meter::CallCharge,
};

/// Why a run could not be created or driven.
#[derive(Debug, thiserror::Error)]
pub enum DagError {
    /// The spec or the input is invalid.
    #[error("{0}")]
    Spec(#[from] SpecErrors),
    /// A node uses a capsule of the wrong kind.
    #[error("node `{node}`: {message}")]
    Kind {
        /// The node.
        node: String,
        /// What is wrong.
        message: String,
    },
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The stored history does not replay.
    #[error(transparent)]
    State(#[from] StateError),
    /// A capsule's component is not the one the run was started with.
    #[error(
        "capsule `{alias}` changed since run {run} started (was {recorded}, now {found}); resume needs the same component"
    )]
    CapsuleChanged {
        /// The run.
        run: String,
        /// The alias.
        alias: String,
        /// Digest at creation.
        recorded: String,
        /// Digest now.
        found: String,
    },
    /// A capsule alias has no loaded component.
    #[error("capsule `{0}` is not loaded")]
    MissingCapsule(String),
    /// The run has ended already.
    #[error("run {run} already {status}")]
    Finished {
        /// The run.
        run: String,
        /// How it ended.
        status: &'static str,
    },
    /// A budget could not be set.
    #[error("could not set the run's budget")]
    Budget(#[source] budget::BudgetError),
    /// Every worker thread of a run stopped before it finished.
    #[error("every worker thread stopped")]
    WorkersStopped,
    /// A worker thread could not be started.
    #[error("could not start worker threads")]
    Threads(#[source] std::io::Error),
    /// The shared call pool refused a node's call (it is stopping).
    #[error("the call pool refused a node's call")]
    Pool(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A verdict was refused.
    #[error(transparent)]
    Approval(#[from] ApprovalError),
    /// The run's history kept growing while a verdict was handed in.
    #[error("run {0} kept changing while the verdict was handed in; try again")]
    Busy(String),
}

/// A capsule as a run pins it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The loaded component.
    pub capsule: Arc<Capsule>,
    /// The resolved reference (file path, or registry reference with digest).
    pub reference: String,
}

/// A capsule that could not be loaded, used only by `catch: true` nodes:
/// the run goes on and those nodes' failure (`invalid-component`) becomes
/// data like any other caught failure.
#[derive(Debug, Clone)]
pub struct Unloadable {
    /// The reference as written (or resolved as far as it got).
    pub reference: String,
    /// Why it could not be loaded.
    pub error: String,
}

/// Hears about every commit (for progress displays and live event streams).
pub trait Observer: Sync {
    /// `events` were just committed; `state` includes them.
    fn committed(&self, state: &RunState, events: &[Event]);
}

/// An observer that ignores everything.
#[derive(Debug)]
pub struct Quiet;

impl Observer for Quiet {
    fn committed(&self, _: &RunState, _: &[Event]) {}
}

/// A shared pool of threads that makes the capsule calls of many runs (the
/// daemon's call pool), instead of threads of the run's own.
pub trait Executor: Send + Sync + std::fmt::Debug {
    /// Queue `task` (one capsule call, given the engine to call with) in
    /// `tenant`'s lane `lane` (the run), of which at most `max_running` run
    /// at once. The task may be dropped unrun only if this returns an
    /// error or the pool stops.
    ///
    /// # Errors
    ///
    /// The pool has stopped.
    fn submit(
        &self,
        tenant: &str,
        lane: &str,
        max_running: usize,
        task: Box<dyn FnOnce(&Engine) + Send>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

/// Knobs for driving a run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Calls at once; `None` = the spec's policy, else the number of cores.
    pub concurrency: Option<usize>,
    /// Where the calls run: `None` = `concurrency` threads of this run's
    /// own (the CLI); `Some` = a shared pool (the daemon).
    pub executor: Option<Arc<dyn Executor>>,
    /// Most bytes a node's rendered input may hold
    /// (`dag.max_rendered_input_bytes`).
    pub render_limit: usize,
    /// The operator's `[dag]` ceilings, which planned nodes, fan-outs and
    /// the run's total rendered bytes are held to.
    pub ceilings: super::spec::Ceilings,
    /// When nothing is in flight and the next node waits in retry backoff,
    /// return [`Ended::Waiting`] instead of sleeping (a daemon driver
    /// serves other runs meanwhile and drives this one again later).
    pub release_when_waiting: bool,
    /// Set → stop starting nodes, let calls in flight finish and record
    /// them, and return (the run stays resumable). Ctrl-C / SIGTERM.
    pub interrupt: Arc<AtomicBool>,
    /// Set → record a cancellation and finish the run as cancelled.
    pub cancel: Arc<AtomicBool>,
    /// Set → a verdict was handed in ([`offer_approval`]): read the
    /// journal's inbox (it is also read when the drive starts).
    pub verdicts: Arc<AtomicBool>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            concurrency: None,
            executor: None,
            render_limit: super::template::DEFAULT_MAX_RENDERED_BYTES,
            ceilings: super::spec::Ceilings::default(),
            release_when_waiting: false,
            interrupt: Arc::new(AtomicBool::new(false)),
            cancel: Arc::new(AtomicBool::new(false)),
            verdicts: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// How driving a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The run finished.
    Finished(RunStatus),
    /// Interrupted; `soma dag resume` continues it.
    Interrupted,
    /// Nothing in flight, the next node waits in retry backoff until this
    /// time (unix ms); drive the run again then (only with
    /// [`Settings::release_when_waiting`]).
    Waiting {
        /// When the first backoff ends.
        until_ms: u64,
    },
    /// Nothing in flight, nothing to start: only nodes awaiting a human
    /// verdict are left (without [`Settings::release_when_waiting`]; with
    /// it, [`Ended::Waiting`] until the first approval deadline, or
    /// `u64::MAX`). Hand the verdict in ([`offer_approval`]) and drive the
    /// run again.
    AwaitingApproval,
}

/// Backoffs shorter than this are slept through rather than released.
const RELEASE_AFTER_MS: u64 = 20;

impl From<KindError> for DagError {
    fn from(e: KindError) -> Self {
        match e {
            KindError::Kind { node, message } => Self::Kind { node, message },
            KindError::MissingCapsule(alias) => Self::MissingCapsule(alias),
        }
    }
}

/// Create a run: bind the input, check capsule kinds, set budgets, record
/// `created`. Nothing runs yet. Returns the run id.
pub fn create(
    engine: &Engine,
    spec: &Spec,
    origin: &str,
    input: &Value,
    capsules: &BTreeMap<String, Loaded>,
    tenant: &str,
    run_id: Option<&str>,
) -> Result<String, DagError> {
    create_with(
        engine,
        spec,
        origin,
        input,
        capsules,
        &BTreeMap::new(),
        tenant,
        run_id,
    )
}

/// Whether a capsule alias that failed to load may be tolerated: some node
/// uses it and every node using it has `catch: true`.
pub fn tolerates_unloadable(spec: &Spec, alias: &str) -> bool {
    let mut users = spec.nodes.iter().filter(|n| n.capsule == alias).peekable();
    users.peek().is_some() && users.all(|n| n.catch)
}

/// [`create`], with capsules that could not be loaded ([`Unloadable`]);
/// each must be [tolerated](tolerates_unloadable). Their kind is taken
/// from the nodes (a gate if they are gate nodes, else a worker).
#[allow(clippy::too_many_arguments)]
pub fn create_with(
    engine: &Engine,
    spec: &Spec,
    origin: &str,
    input: &Value,
    capsules: &BTreeMap<String, Loaded>,
    unloadable: &BTreeMap<String, Unloadable>,
    tenant: &str,
    run_id: Option<&str>,
) -> Result<String, DagError> {
    let created = created(spec, origin, input, capsules, unloadable, tenant)?;
    let run = run_id.map_or_else(crate::call::new_run_id, str::to_owned);
    // One transaction for all of them (a spec may carry many node budgets).
    engine
        .metering()
        .set_limits(run_budgets(&run, spec))
        .map_err(DagError::Budget)?;
    let state = RunState::new(&run, &created)?;
    Journal::new(engine.data().database().clone()).create(&run, &created, &summary(&state))?;
    Ok(run)
}

/// A run's `created` event: bind the input, check capsule kinds, pin the
/// capsules (with those that could not be loaded, [`Unloadable`]). Pure:
/// nothing is written (the embedded engine journals it, the Temporal
/// engine hands it to a workflow).
pub fn created(
    spec: &Spec,
    origin: &str,
    input: &Value,
    capsules: &BTreeMap<String, Loaded>,
    unloadable: &BTreeMap<String, Unloadable>,
    tenant: &str,
) -> Result<Event, DagError> {
    let input = spec.bind_input(input)?;
    if let Some(alias) = unloadable.keys().find(|a| !tolerates_unloadable(spec, a)) {
        return Err(DagError::MissingCapsule(alias.clone()));
    }
    let unloaded_kind = |alias: &str| {
        let gate = spec
            .nodes
            .iter()
            .any(|n| n.capsule == alias && n.gate.is_some());
        if gate {
            CapsuleKind::Gate
        } else {
            CapsuleKind::Worker
        }
    };
    check_kinds(&spec.nodes, |alias| {
        capsules
            .get(alias)
            .map(|l| l.capsule.manifest().capsule_kind())
            .or_else(|| unloadable.contains_key(alias).then(|| unloaded_kind(alias)))
    })?;
    let mut records: BTreeMap<String, CapsuleRecord> = capsules
        .iter()
        .map(|(alias, l)| {
            let m = l.capsule.manifest();
            let record = CapsuleRecord {
                reference: l.reference.clone(),
                digest: l.capsule.digest().to_string(),
                kind: m.capsule_kind(),
                name: m.name.clone(),
                version: m.version.clone(),
                load_error: None,
            };
            (alias.clone(), record)
        })
        .collect();
    for (alias, u) in unloadable {
        records.insert(
            alias.clone(),
            CapsuleRecord {
                reference: u.reference.clone(),
                digest: String::new(),
                kind: unloaded_kind(alias),
                name: alias.clone(),
                version: String::new(),
                load_error: Some(u.error.clone()),
            },
        );
    }
    if let Some(missing) = spec.capsules.keys().find(|a| !records.contains_key(*a)) {
        return Err(DagError::MissingCapsule(missing.clone()));
    }
    Ok(Event::Created {
        spec: Box::new(spec.clone()),
        input,
        capsules: records,
        tenant: tenant.to_owned(),
        origin: origin.to_owned(),
        time_ms: now_ms(),
    })
}

/// The budgets a spec sets for run `run`: the run's and its nodes'. A
/// node's budget also covers its for_each instances and the nodes its plan
/// adds (see `meter::parent_node`).
pub fn run_budgets(run: &str, spec: &Spec) -> Vec<(budget::Scope, Option<budget::Limit>)> {
    spec.budget
        .iter()
        .map(|b| (budget::Scope::Run(run.to_owned()), Some(budget_limit(b))))
        .chain(spec.nodes.iter().filter_map(|n| {
            let b = n.budget.as_ref()?;
            Some((
                budget::Scope::Node(format!("{run}/{}", n.id)),
                Some(budget_limit(b)),
            ))
        }))
        .collect()
}

/// The budgets of the nodes a plan from planner `node` adds (each is also
/// under the planner's).
pub fn plan_budgets(
    run: &str,
    node: &str,
    plan: &super::spec::Plan,
) -> Vec<(budget::Scope, Option<budget::Limit>)> {
    plan.nodes
        .iter()
        .filter_map(|n| {
            let b = n.budget.as_ref()?;
            let scope = budget::Scope::Node(format!("{run}/{node}.{}", n.id));
            Some((scope, Some(budget_limit(b))))
        })
        .collect()
}

/// The limits node `node` of `spec` asks for: its `limits:` and
/// `timeout_ms:`, else the spec's `defaults.limits` (small: it crosses to
/// a Temporal worker with the call).
pub fn node_limits(node: &NodeSpec, spec: &Spec) -> NodeLimits {
    let defaults = spec.defaults.limits;
    let l = &node.limits;
    NodeLimits {
        fuel: l.fuel.or(defaults.fuel),
        timeout_ms: node.timeout_ms.or(l.timeout_ms).or(defaults.timeout_ms),
        memory_mb: l.memory_mb.or(defaults.memory_mb),
    }
}

/// Lower `limits` to what a node asks for (never below 1): a node can
/// only tighten the operator's and the capsule's limits.
pub fn tighten_limits(limits: &mut crate::Limits, node: &NodeLimits) {
    let tighten = |v: &mut u64, x: Option<u64>| {
        if let Some(x) = x {
            *v = (*v).min(x.max(1));
        }
    };
    tighten(&mut limits.fuel, node.fuel);
    tighten(&mut limits.timeout_ms, node.timeout_ms);
    tighten(&mut limits.memory_mb, node.memory_mb);
}

/// A spec budget as a ledger budget (dollars → micro-units; the spec
/// checks that `usd` is finite and positive, and the float cast saturates).
fn budget_limit(b: &BudgetSpec) -> budget::Limit {
    budget::Limit {
        tokens: b.tokens,
        micros: b.usd.map(|d| (d * 1e6).round() as u64),
    }
}

/// The listing row for a state.
pub fn summary(state: &RunState) -> RunSummary {
    let (nodes, done) = state.progress();
    let failed = state
        .nodes()
        .iter()
        .filter(|n| !n.retired && matches!(n.status, super::state::Status::Failed(_)))
        .count();
    RunSummary {
        run: state.run.clone(),
        name: state.spec.name.clone(),
        tenant: state.tenant.clone(),
        status: state
            .finished
            .as_ref()
            .map_or(RunPhase::Running, |f| f.0.into()),
        created_ms: state.created_ms,
        updated_ms: now_ms(),
        nodes,
        done,
        failed,
        events: state.events,
        failure_class: state.nodes().iter().find_map(|n| match &n.status {
            super::state::Status::Failed(f) if !n.retired => Some(f.class),
            _ => None,
        }),
        capsules: {
            let mut names: Vec<String> = state
                .capsules
                .values()
                .map(|c| c.reference.clone())
                .collect();
            names.sort();
            names.dedup();
            names
        },
    }
}

/// A run's state and history, refusing a run that has already ended.
fn unfinished(journal: &Journal, run: &str) -> Result<(RunState, Vec<Event>), DagError> {
    let history = journal.history(run)?;
    let state = RunState::replay(run, &history)?;
    match &state.finished {
        Some((status, ..)) => Err(DagError::Finished {
            run: run.to_owned(),
            status: status.name(),
        }),
        None => Ok((state, history)),
    }
}

/// Fail a run that cannot be driven (e.g. a capsule it pinned exists
/// nowhere any more): record its end, failed with `error`, so that it does
/// not stay `running` for ever. Nodes in flight are left as recorded.
pub fn fail_idle(engine: &Engine, run: &str, error: &str) -> Result<(), DagError> {
    end_idle(
        engine,
        run,
        &[Event::Finished {
            status: RunStatus::Failed,
            output: None,
            error: Some(error.to_owned()),
            time_ms: now_ms(),
        }],
    )
}

/// Append `events` to a run no process is driving: each is applied to its
/// replayed state, then all are committed at once.
fn end_idle(engine: &Engine, run: &str, events: &[Event]) -> Result<(), DagError> {
    let journal = Journal::new(engine.data().database().clone());
    let (mut state, history) = unfinished(&journal, run)?;
    for e in events {
        state.apply(e)?;
    }
    commit_idle(engine, &journal, history.len(), &state, events)
}

/// Commit `events`, already applied to `state`, after the `at` events of
/// the history of a run no process is driving. The journal refuses it if a
/// driver appended meanwhile.
fn commit_idle(
    engine: &Engine,
    journal: &Journal,
    at: usize,
    state: &RunState,
    events: &[Event],
) -> Result<(), DagError> {
    journal.commit(
        &state.run,
        at as u64,
        events,
        &summary(state),
        &[],
        engine.metering(),
    )?;
    Ok(())
}

/// Hand in a verdict on `node` of run `run` (embedded engine): judged
/// against the run's history (idempotent: the same verdict again is
/// [`Offered::AlreadyGiven`]), then stored in the journal's inbox, which the
/// run's driver reads when it starts and whenever [`Settings::verdicts`]
/// is set. `by`: a token id, or `cli`. Cost: one replay of the history
/// and one fsync'd commit.
///
/// # Errors
///
/// [`DagError::Approval`] for a verdict that is refused (no such node, not
/// awaiting one, a different verdict given); the journal's errors.
pub fn offer_approval(
    journal: &Journal,
    run: &str,
    node: &str,
    verdict: ApprovalVerdict,
    reason: Option<String>,
    by: &str,
    tenant: Option<String>,
) -> Result<Offered, DagError> {
    for _ in 0..8 {
        let history = journal.history(run)?;
        let state = RunState::replay(run, &history)?;
        let Some(attempt) = state.check_approval(node, verdict)? else {
            return Ok(Offered::AlreadyGiven);
        };
        let request = ApprovalRequest {
            verdict,
            reason: reason.clone(),
            by: by.to_owned(),
            tenant: tenant.clone(),
            attempt,
            time_ms: now_ms(),
        };
        match journal.offer_approval(run, node, history.len() as u64, &request)? {
            Offer::Stored => return Ok(Offered::Accepted),
            Offer::Held(held) if held.verdict == verdict => return Ok(Offered::AlreadyGiven),
            Offer::Held(held) => {
                return Err(ApprovalError::Conflict {
                    node: node.to_owned(),
                    given: held.verdict,
                    by: held.by,
                }
                .into());
            }
            Offer::Moved => {}
        }
    }
    Err(DagError::Busy(run.to_owned()))
}

/// Record the verdicts handed in for a run no process is driving (what
/// its next driver would do first), so its history and `soma dag status`
/// show them at once. Returns the run's state.
pub fn record_verdicts_idle(engine: &Engine, run: &str) -> Result<RunState, DagError> {
    let journal = Journal::new(engine.data().database().clone());
    let (mut state, history) = unfinished(&journal, run)?;
    let (events, seen) = fold_verdicts(&journal, &mut state)?;
    if !events.is_empty() {
        commit_idle(engine, &journal, history.len(), &state, &events)?;
    }
    journal.drop_approvals(run, &seen)?;
    Ok(state)
}

/// The verdicts handed in for `state`'s run, as the events of the nodes
/// that await one, each applied to `state`; and every inbox row read (the
/// others are stale: their node moved on), to forget once the events are
/// committed.
fn fold_verdicts(
    journal: &Journal,
    state: &mut RunState,
) -> Result<(Vec<Event>, Vec<String>), DagError> {
    let handed_in = journal.approvals(&state.run)?;
    let mut events = Vec::new();
    let mut seen = Vec::with_capacity(handed_in.len());
    for (node, r) in handed_in {
        let event = state.approval_event(
            &node,
            r.attempt,
            r.verdict,
            r.reason,
            &r.by,
            r.tenant,
            now_ms(),
        );
        if let Some(event) = event {
            state.apply(&event)?;
            events.push(event);
        }
        seen.push(node);
    }
    Ok((events, seen))
}

/// Cancel a run no process is driving: record the request and the end.
pub fn cancel_idle(engine: &Engine, run: &str) -> Result<(), DagError> {
    let now = now_ms();
    end_idle(
        engine,
        run,
        &[
            Event::CancelRequested { time_ms: now },
            Event::Finished {
                status: RunStatus::Cancelled,
                output: None,
                error: Some("cancelled while no process was driving it".into()),
                time_ms: now,
            },
        ],
    )
}

struct Job {
    dispatch: Dispatch,
    capsule: Arc<Capsule>,
    options: CallOptions,
    /// `soma.node`, a child of the run's span.
    span: tracing::Span,
}

struct Done {
    node: usize,
    attempt: u32,
    /// `None`: the run was stopping, so the job was not called.
    outcome: Option<Outcome>,
    /// For a failed call: dropped by the coordinator once it has decided
    /// what the failure means (see [`hand_back`]).
    ack: Option<mpsc::Sender<()>>,
}

/// Hand a call's outcome to the coordinator. After a failure the worker
/// (or the shared pool's slot for this run) waits until the coordinator
/// has applied it: under fail-fast the run halts and the calls still
/// queued are withdrawn instead of racing the halt, so which nodes run
/// does not depend on thread timing (and both engines call the same
/// ones). Failures are rare; the wait is one coordinator turn. `false`:
/// the coordinator is gone.
fn hand_back(
    done: &mpsc::Sender<Done>,
    node: usize,
    attempt: u32,
    outcome: Option<Outcome>,
) -> bool {
    let failed = outcome.as_ref().is_some_and(|o| o.result.is_err());
    let (ack, decided) = if failed {
        let (tx, rx) = mpsc::channel::<()>();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let sent = done
        .send(Done {
            node,
            attempt,
            outcome,
            ack,
        })
        .is_ok();
    if let Some(decided) = decided {
        // Ends when the coordinator drops the sender, whether it applied
        // the result or stopped.
        let _ = decided.recv();
    }
    sent
}

/// Jobs handed to the workers per worker thread: the coordinator starts
/// up to this many nodes per commit so one fsync covers many transitions.
const QUEUED_PER_WORKER: usize = 64;

/// Drive run `run` until it finishes or is interrupted: replay its
/// history, call again whatever was in flight, and go on. `capsules` must
/// hold every alias the run pinned, with the same digests.
pub fn drive(
    engine: &Engine,
    run: &str,
    capsules: &BTreeMap<String, Arc<Capsule>>,
    settings: &Settings,
    observer: &dyn Observer,
) -> Result<(RunState, Ended), DagError> {
    let journal = Journal::new(engine.data().database().clone());
    let (mut state, history) = unfinished(&journal, run)?;
    state.render_limit = settings.render_limit;
    state.ceilings = settings.ceilings;
    for (alias, record) in &state.capsules {
        if record.load_error.is_some() {
            continue;
        }
        let c = capsules
            .get(alias)
            .ok_or_else(|| DagError::MissingCapsule(alias.clone()))?;
        if c.digest().to_string() != record.digest {
            return Err(DagError::CapsuleChanged {
                run: run.to_owned(),
                alias: alias.clone(),
                recorded: record.digest.clone(),
                found: c.digest().to_string(),
            });
        }
    }
    let concurrency = settings
        .concurrency
        .or(state.spec.policy.concurrency)
        .unwrap_or_else(|| thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    // Per alias: the call options every node of that capsule starts from.
    let base: BTreeMap<&str, CallOptions> = capsules
        .iter()
        .map(|(alias, c)| {
            let mut o = CallOptions::for_capsule(engine, c);
            o.set_run(run);
            o.tenant = state.tenant.as_str().into();
            o.defer_charge = true;
            o.run_started_ms = Some(state.created_ms);
            (alias.as_str(), o)
        })
        .collect();
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let stop = Arc::new(AtomicBool::new(false));
    thread::scope(|scope| {
        let own_threads = if settings.executor.is_some() {
            0
        } else {
            concurrency
        };
        for k in 0..own_threads {
            let jobs = job_rx.clone();
            let done = done_tx.clone();
            let stop = &*stop;
            thread::Builder::new()
                .name(format!("soma-dag-{k}"))
                .spawn_scoped(scope, move || work(engine, &jobs, &done, stop))
                .map_err(DagError::Threads)?;
        }
        // With a shared pool, each call carries a sender back.
        let pooled = settings.executor.clone().map(|executor| Pooled {
            executor,
            done: done_tx.clone(),
            stop: stop.clone(),
            concurrency,
        });
        drop(done_tx);
        let run_span = tracing::info_span!(
            "soma.run",
            run = %run,
            name = %state.spec.name,
            tenant = %state.tenant,
        );
        let mut coordinator = Coordinator {
            engine,
            journal: &journal,
            state: &mut state,
            capsules,
            base: &base,
            jobs: job_tx,
            in_flight: 0,
            seq: history.len() as u64,
            observer,
            rng: fastrand::Rng::new(),
            span: run_span,
            pooled,
            unloaded: Vec::new(),
            acks: Vec::new(),
        };
        let ended = coordinator.run(&done_rx, settings, concurrency, &stop);
        stop.store(true, Ordering::Relaxed);
        // Dropping the job sender ends the workers once their call returns.
        drop(coordinator);
        ended
    })
    .map(|ended| (state, ended))
}

/// Calls handed to a shared [`Executor`].
struct Pooled {
    executor: Arc<dyn Executor>,
    done: mpsc::Sender<Done>,
    stop: Arc<AtomicBool>,
    concurrency: usize,
}

/// Sends a job's [`Done`] exactly once: with the outcome, or (if the task
/// is dropped unrun, e.g. the pool stopped) as not called.
struct DoneOnce {
    done: mpsc::Sender<Done>,
    node: usize,
    attempt: u32,
    sent: bool,
}

impl DoneOnce {
    fn send(mut self, outcome: Option<Outcome>) {
        self.sent = true;
        hand_back(&self.done, self.node, self.attempt, outcome);
    }
}

impl Drop for DoneOnce {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self.done.send(Done {
                node: self.node,
                attempt: self.attempt,
                outcome: None,
                ack: None,
            });
        }
    }
}

/// One worker: take a job, call, hand the outcome back.
fn work(
    engine: &Engine,
    jobs: &Mutex<mpsc::Receiver<Job>>,
    done: &mpsc::Sender<Done>,
    stop: &AtomicBool,
) {
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let outcome = (!stop.load(Ordering::Relaxed)).then(|| {
            let _node = job.span.enter();
            engine.call(&job.capsule, &job.dispatch.input, &job.options)
        });
        if !hand_back(done, job.dispatch.node, job.dispatch.attempt, outcome) {
            return;
        }
    }
}

struct Coordinator<'a> {
    engine: &'a Engine,
    journal: &'a Journal,
    state: &'a mut RunState,
    capsules: &'a BTreeMap<String, Arc<Capsule>>,
    base: &'a BTreeMap<&'a str, CallOptions>,
    jobs: mpsc::Sender<Job>,
    in_flight: usize,
    seq: u64,
    observer: &'a dyn Observer,
    rng: fastrand::Rng,
    /// `soma.run`: the parent of every node span.
    span: tracing::Span,
    /// `Some`: calls go to a shared pool instead of `jobs`.
    pooled: Option<Pooled>,
    /// Results of nodes whose capsule could not be loaded: failed without
    /// a call, handled with the next results.
    unloaded: Vec<Done>,
    /// Workers waiting for their failure to be applied (see [`hand_back`]).
    acks: Vec<mpsc::Sender<()>>,
}

/// How long the coordinator waits for a result before looking at its
/// flags and timers again.
const POLL: Duration = Duration::from_millis(50);

impl Coordinator<'_> {
    fn run(
        &mut self,
        done: &mpsc::Receiver<Done>,
        settings: &Settings,
        concurrency: usize,
        stop: &AtomicBool,
    ) -> Result<Ended, DagError> {
        let queue = concurrency.saturating_mul(QUEUED_PER_WORKER);
        let mut batch: Vec<Event> = Vec::new();
        let mut charges: Vec<CallCharge> = Vec::new();
        let mut dispatch: Vec<Dispatch> = Vec::new();
        // Calls that were in flight when the last process stopped run
        // again under the same attempt number (the ledger counts them once).
        for d in self.state.in_flight() {
            batch.push(Event::Restarted {
                node: d.id.clone(),
                attempt: d.attempt,
                time_ms: now_ms(),
            });
            dispatch.push(d);
        }
        let mut inbox = true;
        // Inbox rows read this turn, forgotten once its batch is committed.
        let mut taken: Vec<String> = Vec::new();
        loop {
            let interrupted = settings.interrupt.load(Ordering::Relaxed);
            if !interrupted {
                if settings.cancel.load(Ordering::Relaxed) && !self.state.cancel_requested {
                    self.propose(Event::CancelRequested { time_ms: now_ms() }, &mut batch)?;
                }
                inbox |= settings.verdicts.swap(false, Ordering::SeqCst);
                if std::mem::take(&mut inbox) {
                    taken = self.take_verdicts(&mut batch)?;
                }
                loop {
                    let busy = self.in_flight + dispatch.len();
                    let (events, ready) = self.state.schedule(now_ms(), queue.saturating_sub(busy));
                    if events.is_empty() {
                        break;
                    }
                    for e in events {
                        self.propose(e, &mut batch)?;
                    }
                    dispatch.extend(ready);
                }
            }
            // Queued jobs are not called once the run is stopping.
            if interrupted || self.state.is_stopping() {
                stop.store(true, Ordering::Relaxed);
            }
            // The failures handed back are decided: their workers go on.
            self.acks.clear();
            if !batch.is_empty() {
                self.commit(&batch, &charges)?;
                batch.clear();
                charges.clear();
            }
            if !taken.is_empty() {
                // A crash before this leaves rows whose node no longer
                // awaits that attempt's verdict: dropped at the next read.
                self.journal
                    .drop_approvals(&self.state.run, &std::mem::take(&mut taken))?;
            }
            for d in dispatch.drain(..) {
                self.send(d)?;
            }
            if let Some((status, ..)) = &self.state.finished {
                return Ok(Ended::Finished(*status));
            }
            if interrupted && self.in_flight == 0 {
                return Ok(Ended::Interrupted);
            }
            if settings.release_when_waiting
                && self.in_flight == 0
                && !settings.cancel.load(Ordering::Relaxed)
                && !settings.verdicts.load(Ordering::SeqCst)
            {
                match self.state.next_wakeup() {
                    Some(until_ms) if until_ms > now_ms().saturating_add(RELEASE_AFTER_MS) => {
                        return Ok(Ended::Waiting { until_ms });
                    }
                    None if self.state.awaiting_approval() > 0 => {
                        return Ok(Ended::Waiting { until_ms: u64::MAX });
                    }
                    _ => {}
                }
            }
            if !settings.release_when_waiting
                && self.in_flight == 0
                && self.state.awaiting_approval() > 0
                && self.state.backing_off() == 0
                && !settings.cancel.load(Ordering::Relaxed)
            {
                return Ok(Ended::AwaitingApproval);
            }
            let wait = self.state.next_wakeup().map_or(POLL, |t| {
                Duration::from_millis(t.saturating_sub(now_ms())).min(POLL)
            });
            let first = if !self.unloaded.is_empty() {
                None
            } else if self.in_flight > 0 {
                match done.recv_timeout(wait) {
                    Ok(d) => Some(d),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return Err(DagError::WorkersStopped);
                    }
                }
            } else {
                thread::sleep(wait);
                None
            };
            let unloaded = std::mem::take(&mut self.unloaded);
            for d in unloaded
                .into_iter()
                .chain(first)
                .chain(std::iter::from_fn(|| done.try_recv().ok()))
            {
                self.in_flight -= 1;
                let Done {
                    node,
                    attempt,
                    outcome,
                    ack,
                } = d;
                self.acks.extend(ack);
                let Some(mut outcome) = outcome else {
                    let id = self.state.nodes()[node].id.clone();
                    let withdrawn = Event::Withdrawn {
                        node: id,
                        attempt,
                        time_ms: now_ms(),
                    };
                    self.propose(withdrawn, &mut batch)?;
                    continue;
                };
                charges.extend(outcome.charge.take());
                let call = CallRecord {
                    attempt,
                    fuel: outcome.usage.fuel_consumed,
                    wall_us: outcome.usage.wall_time_us,
                    logs: outcome
                        .logs
                        .iter()
                        .map(|l| format!("[{}] {}", l.level, l.message))
                        .collect(),
                };
                let events = self.state.complete(
                    node,
                    attempt,
                    outcome.result,
                    call,
                    now_ms(),
                    &mut self.rng,
                );
                for e in events {
                    self.propose(e, &mut batch)?;
                }
            }
        }
    }

    /// Propose the verdicts handed in for nodes that await one; returns
    /// every inbox row read (the others are stale: their node moved on),
    /// to forget once the batch is committed.
    ///
    /// Verdict events need no more than applying (no plan budgets), so
    /// they skip [`Self::propose`].
    fn take_verdicts(&mut self, batch: &mut Vec<Event>) -> Result<Vec<String>, DagError> {
        let (events, seen) = fold_verdicts(self.journal, self.state)?;
        batch.extend(events);
        Ok(seen)
    }

    fn propose(&mut self, event: Event, batch: &mut Vec<Event>) -> Result<(), DagError> {
        if let Event::Expanded { node, plan, .. } = &event {
            // A plan's own node budgets (each is also under the planner's).
            let budgets = plan_budgets(&self.state.run, node, plan);
            self.engine
                .metering()
                .set_limits(budgets)
                .map_err(DagError::Budget)?;
        }
        self.state.apply(&event)?;
        batch.push(event);
        Ok(())
    }

    fn commit(&mut self, batch: &[Event], charges: &[CallCharge]) -> Result<(), DagError> {
        let entries: Vec<crate::ledger::Charge<'_>> =
            charges.iter().map(CallCharge::as_request).collect();
        let metering = self.engine.metering();
        let appended = match self.journal.commit(
            &self.state.run,
            self.seq,
            batch,
            &summary(self.state),
            &entries,
            metering,
        ) {
            Ok(a) => a,
            Err(e) => {
                // Not written: give back what the calls had reserved.
                for c in charges {
                    metering.release_charge(c);
                }
                return Err(e.into());
            }
        };
        self.seq += batch.len() as u64;
        for (c, a) in charges.iter().zip(&appended) {
            metering.settle_charge(c, a);
        }
        self.observer.committed(self.state, batch);
        Ok(())
    }

    fn send(&mut self, d: Dispatch) -> Result<(), DagError> {
        let load_error = self
            .state
            .capsules
            .get(&d.capsule)
            .and_then(|r| r.load_error.clone());
        if let Some(message) = load_error {
            // Never called: the failure is the load error (caught, since
            // only `catch: true` nodes may use an unloadable capsule).
            self.unloaded.push(Done {
                node: d.node,
                attempt: d.attempt,
                outcome: Some(Outcome::failed(crate::Failure::InvalidComponent {
                    message,
                })),
                ack: None,
            });
            self.in_flight += 1;
            return Ok(());
        }
        let capsule = self
            .capsules
            .get(&d.capsule)
            .ok_or_else(|| DagError::MissingCapsule(d.capsule.clone()))?
            .clone();
        let mut options = self
            .base
            .get(d.capsule.as_str())
            .ok_or_else(|| DagError::MissingCapsule(d.capsule.clone()))?
            .clone();
        options.node = d.id.as_str().into();
        options.attempt = d.attempt;
        if let Some(n) = self.state.nodes().get(d.node) {
            tighten_limits(&mut options.limits, &node_limits(&n.spec, &self.state.spec));
        }
        // The node's `capabilities:` (and its planners') narrow the grants.
        let restriction = self.state.restriction(d.node);
        if !restriction.is_empty() {
            options.restrict(self.engine, &capsule, &restriction);
        }
        let span = tracing::info_span!(
            parent: &self.span,
            "soma.node",
            node = %d.id,
            attempt = d.attempt,
            capsule = %d.capsule,
        );
        if let Some(pooled) = &self.pooled {
            let once = DoneOnce {
                done: pooled.done.clone(),
                node: d.node,
                attempt: d.attempt,
                sent: false,
            };
            let stop = pooled.stop.clone();
            let input = d.input;
            let task = Box::new(move |engine: &Engine| {
                let outcome = (!stop.load(Ordering::Relaxed)).then(|| {
                    let _node = span.enter();
                    engine.call(&capsule, &input, &options)
                });
                once.send(outcome);
            });
            // Counted before submitting: a refused task reports itself
            // (as not called) through its `DoneOnce`.
            self.in_flight += 1;
            pooled
                .executor
                .submit(
                    &self.state.tenant,
                    &self.state.run,
                    pooled.concurrency,
                    task,
                )
                .map_err(DagError::Pool)?;
            return Ok(());
        }
        self.jobs
            .send(Job {
                dispatch: d,
                capsule,
                options,
                span,
            })
            .map_err(|_| DagError::WorkersStopped)?;
        self.in_flight += 1;
        Ok(())
    }
}
