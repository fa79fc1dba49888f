//! Runs the daemon knows about: DAG runs (queued, driven by a fixed set of
//! driver threads, streamed to SSE subscribers) and recent capsule-call
//! runs. DAG state lives in the journal; this is only what is live.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
};

use serde_json::Value;
use tokio::sync::broadcast;

use super::Daemon;
use crate::dag::{
    history::Event,
    journal::{Journal, RunSummary},
    scheduler::{self, Ended, Observer, Settings},
    state::RunState,
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
    /// Each committed event (sequence number, JSON), for SSE subscribers.
    pub events: broadcast::Sender<(u64, Arc<str>)>,
    /// The latest summary.
    pub summary: Mutex<Option<RunSummary>>,
    /// The driver has let go of it.
    pub done: AtomicBool,
}

/// A capsule-call run's result, kept for `GET /v1/runs/{id}`.
#[derive(Debug, Clone)]
pub struct CallRun {
    /// Its tenant.
    pub tenant: String,
    /// The response body that was sent.
    pub body: Value,
}

/// The registry.
#[derive(Debug)]
pub struct Runs {
    live: Mutex<HashMap<String, Arc<LiveRun>>>,
    calls: Mutex<(HashMap<String, CallRun>, VecDeque<String>)>,
    keep_calls: usize,
    queue: Mutex<Option<mpsc::Sender<String>>>,
    drivers: Mutex<Vec<thread::JoinHandle<()>>>,
    stopping: AtomicBool,
}

impl Runs {
    /// An empty registry keeping `keep_calls` recent call runs.
    pub fn new(keep_calls: usize) -> Self {
        Self {
            live: Mutex::new(HashMap::new()),
            calls: Mutex::new((HashMap::new(), VecDeque::new())),
            keep_calls: keep_calls.max(1),
            queue: Mutex::new(None),
            drivers: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
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
        self.lock_live()
            .values()
            .filter(|l| {
                l.summary
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_none()
            })
            .count()
    }

    /// Whether the daemon is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<LiveRun>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember a call run.
    pub fn record_call(&self, run: String, call: CallRun) {
        let mut guard = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *guard;
        map.insert(run.clone(), call);
        order.push_back(run);
        while order.len() > self.keep_calls {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// A recent call run.
    pub fn call(&self, run: &str) -> Option<CallRun> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(run)
            .cloned()
    }

    /// Queue a created DAG run for a driver.
    pub fn enqueue(&self, run: &str, tenant: &str) -> Arc<LiveRun> {
        let (events, _) = broadcast::channel(1024);
        let live = Arc::new(LiveRun {
            tenant: tenant.to_owned(),
            cancel: Arc::new(AtomicBool::new(false)),
            interrupt: Arc::new(AtomicBool::new(false)),
            events,
            summary: Mutex::new(None),
            done: AtomicBool::new(false),
        });
        self.lock_live().insert(run.to_owned(), live.clone());
        if let Some(tx) = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = tx.send(run.to_owned());
        }
        live
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
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        let drivers = std::mem::take(&mut *self.drivers.lock().unwrap_or_else(|p| p.into_inner()));
        for d in drivers {
            let _ = d.join();
        }
    }
}

/// Start `dag_drivers` threads that drive queued runs one at a time each.
pub fn start_drivers(daemon: &Arc<Daemon>) {
    let (tx, rx) = mpsc::channel::<String>();
    let rx = Arc::new(Mutex::new(rx));
    *daemon.runs.queue.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    let mut handles = Vec::new();
    for k in 0..daemon.config.dag_drivers {
        let daemon = Arc::clone(daemon);
        let rx = rx.clone();
        let spawned = thread::Builder::new()
            .name(format!("soma-driver-{k}"))
            .spawn(move || {
                loop {
                    let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(run) = next else { return };
                    drive_one(&daemon, &run);
                }
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => tracing::error!("cannot start a DAG driver thread: {e}"),
        }
    }
    *daemon
        .runs
        .drivers
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = handles;
}

/// Queue every run the journal says is unfinished (a previous daemon was
/// stopped or killed while driving it).
pub fn resume_unfinished(daemon: &Arc<Daemon>) {
    let journal = Journal::new(daemon.engine.data().database().clone());
    match journal.runs() {
        Ok(runs) => {
            for r in runs.into_iter().filter(|r| r.status == "running") {
                tracing::info!(run = %r.run, "resuming an unfinished run");
                daemon.runs.enqueue(&r.run, &r.tenant);
            }
        }
        Err(e) => tracing::error!("cannot list runs to resume: {e}"),
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
                self.daemon.metrics.run_finished("dag", status.name());
            }
        }
        *self.live.summary.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(scheduler::summary(state));
    }
}

fn drive_one(daemon: &Daemon, run: &str) {
    let Some(live) = daemon.runs.live(run) else {
        return;
    };
    if daemon.runs.stopping.load(Ordering::SeqCst) {
        return;
    }
    let result = capsules_of(daemon, run).and_then(|capsules| {
        let settings = Settings {
            concurrency: None,
            interrupt: live.interrupt.clone(),
            cancel: live.cancel.clone(),
        };
        let observer = Publish {
            live: &live,
            daemon,
        };
        scheduler::drive(&daemon.engine, run, &capsules, &settings, &observer)
            .map_err(|e| e.to_string())
    });
    match result {
        Ok((_, Ended::Interrupted)) => {
            tracing::info!(run, "interrupted; resumes at the next start");
        }
        Ok((_, Ended::Finished(status))) => tracing::info!(run, status = status.name(), "finished"),
        Err(e) => tracing::error!(run, "cannot drive the run: {e}"),
    }
    live.done.store(true, Ordering::SeqCst);
    daemon.runs.lock_live().remove(run);
}

/// The run's pinned capsules, from the catalog (by the name recorded).
fn capsules_of(
    daemon: &Daemon,
    run: &str,
) -> Result<BTreeMap<String, Arc<crate::Capsule>>, String> {
    let journal = Journal::new(daemon.engine.data().database().clone());
    let capsules = journal.pinned_capsules(run).map_err(|e| e.to_string())?;
    capsules
        .iter()
        .map(|(alias, record)| {
            daemon
                .pinned_capsule(&record.reference, &record.digest)
                .map(|capsule| (alias.clone(), capsule))
                .ok_or_else(|| {
                    format!(
                        "capsule `{}` is no longer in the daemon's catalog",
                        record.reference
                    )
                })
        })
        .collect()
}
