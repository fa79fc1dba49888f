//! Runs the daemon knows about: DAG runs (queued per tenant, driven by a
//! fixed set of driver threads taking tenants in turn, streamed to SSE
//! subscribers) and recent capsule-call runs. DAG state lives in the
//! journal; this is only what is live.
//!
//! Bounded per tenant: runs queued or driven (`max_queued_runs_per_tenant`),
//! open event streams (`max_streams_per_tenant`, and `max_streams` in all);
//! recent call results are bounded by count and by bytes. A run whose next
//! node waits in retry backoff gives its driver back and is queued again
//! when the backoff ends (or it is cancelled); so does a run whose nodes
//! wait for a human verdict, until a verdict is handed in or the first
//! approval deadline passes (it keeps its tenant's run slot meanwhile).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use axum::body::Bytes;
use tokio::sync::broadcast;

use super::{Daemon, DaemonConfig};
use crate::dag::{
    history::{Event, now_ms},
    journal::{Journal, RunSummary},
    scheduler::{self, Ended, Executor, Observer, Settings},
    state::RunState,
    status::RunPhase,
};

/// A DAG run this daemon is driving or will drive.
#[derive(Debug)]
pub struct LiveRun {
    /// Its tenant (requests of other tenants see 404).
    pub tenant: String,
    /// Set → the run is cancelled.
    pub cancel: Arc<AtomicBool>,
    /// Set → the run stops, resumable (shutdown).
    pub interrupt: Arc<AtomicBool>,
    /// Set → a verdict was handed in: its driver reads the journal's inbox
    /// (a run parked for one is queued again).
    pub verdicts: Arc<AtomicBool>,
    /// Each committed event (sequence number, JSON), for SSE subscribers.
    pub events: broadcast::Sender<(u64, Arc<str>)>,
    /// The latest summary.
    pub summary: Mutex<Option<RunSummary>>,
    /// The driver has let go of it.
    pub done: AtomicBool,
}

impl LiveRun {
    fn new(tenant: &str) -> Arc<Self> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(Self {
            tenant: tenant.to_owned(),
            cancel: Arc::new(AtomicBool::new(false)),
            interrupt: Arc::new(AtomicBool::new(false)),
            verdicts: Arc::new(AtomicBool::new(false)),
            events,
            summary: Mutex::new(None),
            done: AtomicBool::new(false),
        })
    }
}

/// A capsule-call run's result, kept for `GET /v1/runs/{id}`.
#[derive(Debug, Clone)]
pub struct CallRun {
    /// Its tenant.
    pub tenant: String,
    /// The response body that was sent (JSON), shared, not copied.
    pub body: Bytes,
    /// When the call was asked for, unix ms (for the console's runs list).
    pub created_ms: u64,
    /// The capsule as the request named it (catalog or `market:` name).
    pub capsule: String,
    /// Its failure class, if it failed.
    pub failure: Option<crate::FailureClass>,
}

/// The per-tenant and global bounds of the registry (`[daemon]` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// Recent call runs kept (`daemon.recent_calls`).
    pub keep_calls: usize,
    /// Bytes of recent call results kept (`daemon.recent_calls_bytes`).
    pub keep_call_bytes: usize,
    /// DAG runs of one tenant queued, waiting or driven at once
    /// (`daemon.max_queued_runs_per_tenant`).
    pub max_runs_per_tenant: usize,
    /// Open event streams of one tenant (`daemon.max_streams_per_tenant`).
    pub max_streams_per_tenant: usize,
    /// Open event streams in all (`daemon.max_streams`).
    pub max_streams: usize,
    /// DAG specs parsed at once, on the blocking pool
    /// (`daemon.max_spec_parses`).
    pub max_spec_parses: usize,
}

impl RunLimits {
    /// The limits `config` sets.
    pub fn of(config: &DaemonConfig) -> Self {
        Self {
            keep_calls: config.recent_calls.max(1),
            keep_call_bytes: config.recent_calls_bytes,
            max_runs_per_tenant: config.max_queued_runs_per_tenant.max(1),
            max_streams_per_tenant: config.max_streams_per_tenant.max(1),
            max_streams: config.max_streams.max(1),
            max_spec_parses: config.max_spec_parses.max(1),
        }
    }
}

/// Why the registry refused something; the handler answers 429 with
/// `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    /// The tenant has its cap of DAG runs queued or running.
    #[error(
        "this tenant already has {limit} DAG runs queued or running (daemon.max_queued_runs_per_tenant); retry when one has finished"
    )]
    Runs {
        /// The cap.
        limit: usize,
    },
    /// The tenant has its cap of open event streams.
    #[error(
        "this tenant already has {limit} event streams open (daemon.max_streams_per_tenant); close one first"
    )]
    TenantStreams {
        /// The cap.
        limit: usize,
    },
    /// The daemon has its cap of open event streams.
    #[error("the daemon already has {limit} event streams open (daemon.max_streams); retry later")]
    Streams {
        /// The cap.
        limit: usize,
    },
}

#[derive(Debug, Default)]
struct Recent {
    map: HashMap<String, CallRun>,
    order: VecDeque<String>,
    bytes: usize,
}

/// Runs waiting for a driver: per tenant, served round-robin; and runs in
/// retry backoff, until their time comes.
#[derive(Debug, Default)]
struct RunQueue {
    order: VecDeque<String>,
    ready: HashMap<String, VecDeque<String>>,
    waiting: Vec<(u64, String, String)>,
    closed: bool,
}

impl RunQueue {
    fn push(&mut self, tenant: &str, run: String) {
        let queue = self.ready.entry(tenant.to_owned()).or_default();
        if queue.is_empty() && !self.order.iter().any(|t| t == tenant) {
            self.order.push_back(tenant.to_owned());
        }
        queue.push_back(run);
    }

    fn pop(&mut self) -> Option<String> {
        while let Some(tenant) = self.order.pop_front() {
            let Some(queue) = self.ready.get_mut(&tenant) else {
                continue;
            };
            let run = queue.pop_front();
            if queue.is_empty() {
                self.ready.remove(&tenant);
            } else {
                self.order.push_back(tenant);
            }
            if run.is_some() {
                return run;
            }
        }
        None
    }
}

/// The registry.
#[derive(Debug)]
pub struct Runs {
    live: Mutex<HashMap<String, Arc<LiveRun>>>,
    calls: Mutex<Recent>,
    limits: RunLimits,
    queue: Mutex<RunQueue>,
    queued: Condvar,
    /// Per tenant: DAG runs held (queued, waiting or driven).
    held: Mutex<HashMap<String, usize>>,
    /// Per tenant: open event streams; and the total.
    streams: Mutex<(HashMap<String, usize>, usize)>,
    drivers: Mutex<Vec<thread::JoinHandle<()>>>,
    stopping: AtomicBool,
    /// Permits to parse a DAG spec (off the async workers).
    pub parsing: tokio::sync::Semaphore,
}

/// An open event stream; dropping it frees the slot.
#[derive(Debug)]
pub struct StreamSlot {
    daemon: Arc<Daemon>,
    tenant: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut guard = self.daemon.runs.lock_streams();
        let (per_tenant, total) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(n) = per_tenant.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_tenant.remove(&self.tenant);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Runs {
    /// The registry's limits.
    pub fn limits(&self) -> RunLimits {
        self.limits
    }

    /// An empty registry with `limits`.
    pub fn new(limits: RunLimits) -> Self {
        Self {
            live: Mutex::new(HashMap::new()),
            calls: Mutex::new(Recent::default()),
            limits,
            queue: Mutex::new(RunQueue::default()),
            queued: Condvar::new(),
            held: Mutex::new(HashMap::new()),
            streams: Mutex::new((HashMap::new(), 0)),
            drivers: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            parsing: tokio::sync::Semaphore::new(limits.max_spec_parses),
        }
    }

    /// A live DAG run.
    pub fn live(&self, run: &str) -> Option<Arc<LiveRun>> {
        self.lock_live().get(run).cloned()
    }

    /// DAG runs queued or being driven.
    pub fn active(&self) -> usize {
        self.lock_live().len()
    }

    /// DAG runs waiting for a driver.
    pub fn queued(&self) -> usize {
        let q = lock(&self.queue);
        q.ready.values().map(VecDeque::len).sum::<usize>() + q.waiting.len()
    }

    /// Whether the daemon is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn lock_live(&self) -> MutexGuard<'_, HashMap<String, Arc<LiveRun>>> {
        lock(&self.live)
    }

    fn lock_streams(&self) -> MutexGuard<'_, (HashMap<String, usize>, usize)> {
        lock(&self.streams)
    }

    /// Remember a call run; the oldest are forgotten past the count or the
    /// byte bound. Cost: a mutex section; the body is shared, not copied.
    pub fn record_call(&self, run: String, call: CallRun) {
        let mut recent = lock(&self.calls);
        let size = call.body.len().saturating_add(run.len());
        if size > self.limits.keep_call_bytes {
            return;
        }
        if let Some(old) = recent.map.insert(run.clone(), call) {
            recent.bytes = recent.bytes.saturating_sub(old.body.len() + run.len());
        }
        recent.bytes = recent.bytes.saturating_add(size);
        recent.order.push_back(run);
        while recent.order.len() > self.limits.keep_calls
            || recent.bytes > self.limits.keep_call_bytes
        {
            let Some(old) = recent.order.pop_front() else {
                break;
            };
            if let Some(gone) = recent.map.remove(&old) {
                recent.bytes = recent.bytes.saturating_sub(gone.body.len() + old.len());
            }
        }
    }

    /// A recent call run.
    pub fn call(&self, run: &str) -> Option<CallRun> {
        lock(&self.calls).map.get(run).cloned()
    }

    /// The recent call runs `keep` accepts, newest first, with their ids
    /// (for the console's runs list). Cost: one pass over the held calls
    /// under the lock; the bodies are shared, not copied.
    pub fn recent_calls(&self, keep: impl Fn(&CallRun) -> bool) -> Vec<(String, CallRun)> {
        let recent = lock(&self.calls);
        let mut found: Vec<(String, CallRun)> = recent
            .order
            .iter()
            .rev()
            .filter_map(|id| {
                let call = recent.map.get(id).filter(|c| keep(c))?;
                Some((id.clone(), call.clone()))
            })
            .collect();
        drop(recent);
        found.sort_by(|a, b| {
            b.1.created_ms
                .cmp(&a.1.created_ms)
                .then_with(|| b.0.cmp(&a.0))
        });
        found
    }

    /// Bytes of recent call results held.
    pub fn recent_call_bytes(&self) -> usize {
        lock(&self.calls).bytes
    }

    /// Hold one of `tenant`'s DAG-run slots for a run about to be created;
    /// [`Runs::enqueue`] takes it over, [`Runs::release`] gives it back.
    pub fn reserve(&self, tenant: &str) -> Result<(), Full> {
        let mut held = lock(&self.held);
        let n = held.entry(tenant.to_owned()).or_default();
        if *n >= self.limits.max_runs_per_tenant {
            return Err(Full::Runs {
                limit: self.limits.max_runs_per_tenant,
            });
        }
        *n += 1;
        Ok(())
    }

    /// Give back a slot of [`Runs::reserve`].
    pub fn release(&self, tenant: &str) {
        let mut held = lock(&self.held);
        if let Some(n) = held.get_mut(tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(tenant);
            }
        }
    }

    /// Open an event stream for `tenant`, or say which cap is full.
    pub fn open_stream(daemon: &Arc<Daemon>, tenant: &str) -> Result<StreamSlot, Full> {
        let runs = &daemon.runs;
        let mut guard = runs.lock_streams();
        let (per_tenant, total) = &mut *guard;
        if *total >= runs.limits.max_streams {
            return Err(Full::Streams {
                limit: runs.limits.max_streams,
            });
        }
        let n = per_tenant.entry(tenant.to_owned()).or_default();
        if *n >= runs.limits.max_streams_per_tenant {
            return Err(Full::TenantStreams {
                limit: runs.limits.max_streams_per_tenant,
            });
        }
        *n += 1;
        *total += 1;
        Ok(StreamSlot {
            daemon: daemon.clone(),
            tenant: tenant.to_owned(),
        })
    }

    /// Queue a created DAG run for a driver (its slot was reserved).
    pub fn enqueue(&self, run: &str, tenant: &str) -> Arc<LiveRun> {
        let live = LiveRun::new(tenant);
        self.lock_live().insert(run.to_owned(), live.clone());
        lock(&self.queue).push(tenant, run.to_owned());
        self.queued.notify_one();
        live
    }

    /// Queue a journaled, unfinished run no driver holds (a driver gave it
    /// up on an error) again, under one of its tenant's run slots. `None`
    /// when it is already live (queued or driven): at most one driver ever
    /// holds a run. Cost: two mutex sections.
    pub fn resume_idle(&self, run: &str, tenant: &str) -> Result<Option<Arc<LiveRun>>, Full> {
        let mut live_runs = self.lock_live();
        if live_runs.contains_key(run) {
            return Ok(None);
        }
        self.reserve(tenant)?;
        let live = LiveRun::new(tenant);
        live_runs.insert(run.to_owned(), live.clone());
        drop(live_runs);
        lock(&self.queue).push(tenant, run.to_owned());
        self.queued.notify_one();
        Ok(Some(live))
    }

    /// Put a run in backoff aside until `until_ms`.
    fn wait(&self, run: &str, tenant: &str, until_ms: u64) {
        lock(&self.queue)
            .waiting
            .push((until_ms, tenant.to_owned(), run.to_owned()));
        self.queued.notify_one();
    }

    /// The next run for a driver: tenants in turn; runs in backoff come
    /// back when due (or cancelled, or interrupted). `None` once stopped.
    fn next_run(&self) -> Option<String> {
        let mut q = lock(&self.queue);
        loop {
            if q.closed {
                return None;
            }
            let now = now_ms();
            if !q.waiting.is_empty() {
                let live = self.lock_live();
                let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut q.waiting)
                    .into_iter()
                    .partition(|(at, _, run)| {
                        *at <= now
                            || live.get(run).is_none_or(|l| {
                                l.cancel.load(Ordering::SeqCst)
                                    || l.interrupt.load(Ordering::SeqCst)
                                    || l.verdicts.load(Ordering::SeqCst)
                            })
                    });
                drop(live);
                q.waiting = later;
                for (_, tenant, run) in due {
                    q.push(&tenant, run);
                }
            }
            if let Some(run) = q.pop() {
                return Some(run);
            }
            let next_due = q.waiting.iter().map(|(at, ..)| *at).min();
            // Poll for cancellations of waiting runs, at most every 100 ms.
            let wait = next_due.map_or(Duration::from_secs(1), |at| {
                Duration::from_millis(at.saturating_sub(now).clamp(1, 100))
            });
            q = self
                .queued
                .wait_timeout(q, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// A verdict was handed in for `run`: its driver reads it at once; a
    /// run parked waiting for one is queued again. `false` when the run is
    /// not live (not queued, parked or driven here).
    pub fn wake(&self, run: &str) -> bool {
        let Some(live) = self.live(run) else {
            return false;
        };
        live.verdicts.store(true, Ordering::SeqCst);
        let _queue = lock(&self.queue);
        self.queued.notify_all();
        true
    }

    /// Refuse new work from now on: `/readyz` answers 503 and event
    /// streams end, so the HTTP server can drain.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Stop: interrupt every live run (resumable), stop the drivers and
    /// wait for them (each finishes its calls in flight first).
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for live in self.lock_live().values() {
            live.interrupt.store(true, Ordering::SeqCst);
        }
        lock(&self.queue).closed = true;
        self.queued.notify_all();
        let drivers = std::mem::take(&mut *lock(&self.drivers));
        for d in drivers {
            let _ = d.join();
        }
    }
}

/// Start `dag_drivers` threads that drive queued runs one at a time each.
pub fn start_drivers(daemon: &Arc<Daemon>) {
    let mut handles = Vec::new();
    for k in 0..daemon.config.dag_drivers {
        let daemon = Arc::clone(daemon);
        let spawned = thread::Builder::new()
            .name(format!("soma-driver-{k}"))
            .spawn(move || {
                while let Some(run) = daemon.runs.next_run() {
                    drive_one(&daemon, &run);
                }
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => tracing::error!("cannot start a DAG driver thread: {e}"),
        }
    }
    *lock(&daemon.runs.drivers) = handles;
}

/// Queue every run the journal says is unfinished (a previous daemon was
/// stopped or killed while driving it). These count against their
/// tenants' run caps but are never refused.
pub fn resume_unfinished(daemon: &Arc<Daemon>) {
    let journal = Journal::new(daemon.engine.data().database().clone());
    match journal.runs() {
        Ok(runs) => {
            for r in runs.into_iter().filter(|r| r.status == RunPhase::Running) {
                tracing::info!(run = %r.run, "resuming an unfinished run");
                *lock(&daemon.runs.held).entry(r.tenant.clone()).or_default() += 1;
                daemon.runs.enqueue(&r.run, &r.tenant);
            }
        }
        Err(e) => tracing::error!("cannot list runs to resume: {}", super::error_chain(&e)),
    }
}

/// Streams commits to subscribers and keeps the summary fresh.
struct Publish<'a> {
    live: &'a LiveRun,
    daemon: &'a Daemon,
}

impl Observer for Publish<'_> {
    fn committed(&self, state: &RunState, events: &[Event]) {
        let first = state.events.saturating_sub(events.len() as u64);
        for (k, e) in events.iter().enumerate() {
            if let Ok(json) = serde_json::to_string(e) {
                let _ = self.live.events.send((first + k as u64, json.into()));
            }
            if let Event::Finished { status, .. } = e {
                self.daemon
                    .metrics
                    .run_finished(crate::dag::report::RunKind::Dag.name(), status.name());
            }
            if let Event::Failed {
                node,
                failure,
                retry_at_ms: None,
                time_ms,
                ..
            } = e
            {
                self.daemon.metrics.recent_errors().record(
                    *time_ms,
                    super::metrics::ErrorSource::Node,
                    &format!("{}/{node}", state.run),
                    Some(&self.live.tenant),
                    failure.class.name(),
                );
            }
        }
        *lock(&self.live.summary) = Some(scheduler::summary(state));
    }
}

/// DAG calls go to the daemon's call pool, in the run's tenant's queue.
#[derive(Debug)]
struct PoolExecutor(Arc<Daemon>);

impl Executor for PoolExecutor {
    fn submit(
        &self,
        tenant: &str,
        lane: &str,
        max_running: usize,
        task: Box<dyn FnOnce(&crate::Engine) + Send>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let engine = self.0.engine.clone();
        self.0
            .calls
            .submit(tenant, lane, max_running, Box::new(move || task(&engine)))
            .map_err(Into::into)
    }
}

/// The rendered-input cap of DAG nodes: `dag.max_rendered_input_bytes`,
/// never above the call input cap.
pub fn render_limit(daemon: &Daemon) -> usize {
    let config = daemon.engine.config();
    config
        .dag
        .max_rendered_input_bytes
        .min(config.limits.max_input_bytes)
}

fn drive_one(daemon: &Arc<Daemon>, run: &str) {
    let Some(live) = daemon.runs.live(run) else {
        return;
    };
    if daemon.runs.stopping.load(Ordering::SeqCst) {
        return;
    }
    let capsules = match capsules_of(daemon, run) {
        Ok(capsules) => Ok(capsules),
        Err(Unpinnable::Gone(gone)) => {
            // Nothing will bring it back by itself: end the run, naming
            // what is missing, instead of leaving it `running`.
            let message = gone.to_string();
            tracing::error!(run, "{message}");
            match scheduler::fail_idle(&daemon.engine, run, &message) {
                Ok(()) => daemon.metrics.run_finished("dag", "failed"),
                Err(e) => tracing::error!(run, "cannot record the run's failure: {e}"),
            }
            Err(message)
        }
        Err(Unpinnable::Journal(e)) => Err(e),
    };
    let result = capsules.and_then(|capsules| {
        let settings = Settings {
            concurrency: None,
            executor: Some(Arc::new(PoolExecutor(daemon.clone()))),
            render_limit: render_limit(daemon),
            ceilings: daemon.engine.config().dag,
            release_when_waiting: true,
            interrupt: live.interrupt.clone(),
            cancel: live.cancel.clone(),
            verdicts: live.verdicts.clone(),
        };
        let observer = Publish {
            live: &live,
            daemon,
        };
        scheduler::drive(&daemon.engine, run, &capsules, &settings, &observer)
            .map_err(|e| super::error_chain(&e))
    });
    match result {
        Ok((_, Ended::Waiting { until_ms })) => {
            // Keep it live; a driver takes it again when the backoff ends.
            daemon.runs.wait(run, &live.tenant, until_ms);
            return;
        }
        Ok((_, Ended::Interrupted | Ended::AwaitingApproval)) => {
            tracing::info!(run, "interrupted; resumes at the next start");
        }
        Ok((_, Ended::Finished(status))) => tracing::info!(run, status = status.name(), "finished"),
        Err(e) => tracing::error!(run, "cannot drive the run: {e}"),
    }
    live.done.store(true, Ordering::SeqCst);
    daemon.runs.lock_live().remove(run);
    daemon.runs.release(&live.tenant);
}

/// A capsule a run pinned that the daemon has nowhere: not in its catalog
/// under the recorded name with the recorded digest, not kept for runs
/// after a re-pull, and not loadable from its blob cache by digest.
#[derive(Debug, thiserror::Error)]
#[error(
    "capsule `{alias}` of this run is pinned to {digest} (catalog name `{reference}`), and no \
     component with that digest is in the daemon's catalog or blob cache any more, so the run \
     cannot continue: put that exact component back (a [[daemon.capsules]] entry, or a pull \
     of the registry reference @{digest}) and submit the run again"
)]
pub struct PinnedCapsuleGone {
    /// The spec's alias.
    pub alias: String,
    /// The catalog name recorded when the run was created.
    pub reference: String,
    /// The digest the run pinned.
    pub digest: String,
}

/// Why a run's pinned capsules could not be gathered.
enum Unpinnable {
    /// One of them exists nowhere (the run can never continue).
    Gone(PinnedCapsuleGone),
    /// The journal could not be read (maybe transient).
    Journal(String),
}

/// The run's pinned capsules, from the catalog (by the name recorded).
fn capsules_of(
    daemon: &Daemon,
    run: &str,
) -> Result<BTreeMap<String, Arc<crate::Capsule>>, Unpinnable> {
    let journal = Journal::new(daemon.engine.data().database().clone());
    let capsules = journal
        .pinned_capsules(run)
        .map_err(|e| Unpinnable::Journal(super::error_chain(&e)))?;
    capsules
        .iter()
        .filter(|(_, record)| record.load_error.is_none())
        .map(|(alias, record)| {
            daemon
                .pinned_capsule(&record.reference, &record.digest)
                .map(|capsule| (alias.clone(), capsule))
                .ok_or_else(|| {
                    Unpinnable::Gone(PinnedCapsuleGone {
                        alias: alias.clone(),
                        reference: record.reference.clone(),
                        digest: record.digest.clone(),
                    })
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RunLimits {
        RunLimits {
            keep_calls: 100,
            keep_call_bytes: 1000,
            max_runs_per_tenant: 2,
            max_streams_per_tenant: 1,
            max_streams: 2,
            max_spec_parses: 1,
        }
    }

    #[test]
    fn recent_calls_are_bounded_by_bytes() {
        let runs = Runs::new(limits());
        for k in 0..50u64 {
            runs.record_call(
                format!("r{k}"),
                CallRun {
                    tenant: "t".into(),
                    body: Bytes::from(vec![b'x'; 100]),
                    created_ms: k,
                    capsule: "echo".into(),
                    failure: None,
                },
            );
        }
        assert!(runs.recent_call_bytes() <= 1000);
        assert!(runs.call("r49").is_some(), "the newest is kept");
        assert!(runs.call("r0").is_none(), "the oldest is evicted");
    }

    #[test]
    fn runs_per_tenant_are_capped_and_tenants_take_turns() {
        let runs = Runs::new(limits());
        runs.reserve("a").expect("1");
        runs.reserve("a").expect("2");
        assert_eq!(runs.reserve("a"), Err(Full::Runs { limit: 2 }));
        runs.reserve("b").expect("another tenant");
        runs.release("a");
        runs.reserve("a").expect("room again");
        let mut q = RunQueue::default();
        for k in 0..3 {
            q.push("a", format!("a{k}"));
        }
        q.push("b", "b0".into());
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, ["a0", "b0", "a1", "a2"]);
    }
}
