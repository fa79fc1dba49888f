//! The threads that run capsule calls: for the HTTP handlers and for every
//! DAG run the daemon drives. One pool, shared fairly by the tenants.
//!
//! A call is synchronous wasm (microseconds for most capsules, up to its
//! deadline for hostile ones), so it must not run on the async workers.
//! `spawn_blocking` hands each call to a fresh or parked thread; under load
//! that was ~190 threads and a context switch per call (measured with
//! `cargo xtask load`, 1000 sessions: 11.7k req/s). A fixed pool of hot
//! threads keeps the threads busy back to back (14.3k req/s on the same
//! machine).
//!
//! Fairness: each tenant has its own queue, split in lanes (one for the
//! tenant's requests, one per DAG run); a free thread takes the next task
//! round-robin over tenants, then over the tenant's lanes. A tenant runs
//! at most `max_running_per_tenant` tasks at once (so one tenant's slow
//! calls never hold every thread), a lane at most its own `max_running`
//! (a run's `policy.concurrency`), and a tenant's requests may hold at most
//! `max_calls_per_tenant` tasks queued or running — past it
//! [`CallPool::run`] refuses at once ([`Refused::Full`]) and the handler
//! answers 429 with `Retry-After`. Threads never grow with the work: DAG
//! runs add lanes, not threads.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
};

type Task = Box<dyn FnOnce() + Send>;

/// The lane of a tenant's request calls.
const REQUESTS: &str = "";

/// How the pool shares its threads (`[daemon]` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharing {
    /// Threads (at least 1).
    pub threads: usize,
    /// Tasks of one tenant running at once (at least 1).
    pub max_running_per_tenant: usize,
    /// Request calls of one tenant queued or running at once.
    pub max_calls_per_tenant: usize,
}

/// A fixed set of threads running closures from per-tenant queues.
#[derive(Debug)]
pub struct CallPool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    work: Condvar,
    sharing: Sharing,
}

#[derive(Default)]
struct State {
    tenants: HashMap<Arc<str>, Tenant>,
    /// Tenants with queued or running tasks, in round-robin order.
    order: VecDeque<Arc<str>>,
    queued: usize,
    stopped: bool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("tenants", &self.tenants.len())
            .field("queued", &self.queued)
            .field("stopped", &self.stopped)
            .finish()
    }
}

#[derive(Default)]
struct Tenant {
    running: usize,
    /// Request calls queued or running.
    calls: usize,
    lanes: VecDeque<Lane>,
}

struct Lane {
    key: Arc<str>,
    max_running: usize,
    running: usize,
    tasks: VecDeque<Task>,
}

/// Why the pool did not take a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The pool has stopped (the daemon is shutting down).
    #[error("the call pool has stopped (the daemon is shutting down)")]
    Stopped,
    /// The tenant already has its share of calls queued or running.
    #[error(
        "this tenant already has {limit} calls queued or running (daemon.max_calls_per_tenant); retry when one has finished"
    )]
    Full {
        /// The cap.
        limit: usize,
    },
}

impl CallPool {
    /// Start `sharing.threads` threads (at least 1).
    pub fn new(sharing: Sharing) -> Self {
        let sharing = Sharing {
            threads: sharing.threads.max(1),
            max_running_per_tenant: sharing.max_running_per_tenant.max(1),
            max_calls_per_tenant: sharing.max_calls_per_tenant.max(1),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            sharing,
        });
        let handles = (0..sharing.threads)
            .filter_map(|k| {
                let shared = shared.clone();
                thread::Builder::new()
                    .name(format!("soma-call-{k}"))
                    .spawn(move || shared.serve())
                    .map_err(|e| tracing::error!("cannot start a call thread: {e}"))
                    .ok()
            })
            .collect();
        Self {
            shared,
            threads: Mutex::new(handles),
        }
    }

    /// How the pool shares its threads.
    pub fn sharing(&self) -> Sharing {
        self.shared.sharing
    }

    /// Run `f` for a request of `tenant` on a pool thread and await its
    /// result. Refuses at once when the tenant already holds
    /// `max_calls_per_tenant` request calls. Cost: two short mutex sections.
    pub async fn run<T: Send + 'static>(
        &self,
        tenant: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Refused> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task: Task = Box::new(move || {
            let _ = tx.send(f());
        });
        self.shared.push(tenant, REQUESTS, usize::MAX, task, true)?;
        rx.await.map_err(|_| Refused::Stopped)
    }

    /// Queue `task` in `tenant`'s lane `lane` (a DAG run), of which at most
    /// `max_running` run at once. Never refused for the tenant's share (a
    /// run bounds what it queues); only when the pool has stopped.
    pub fn submit(
        &self,
        tenant: &str,
        lane: &str,
        max_running: usize,
        task: Box<dyn FnOnce() + Send>,
    ) -> Result<(), Refused> {
        self.shared
            .push(tenant, lane, max_running.max(1), task, false)
    }

    /// (tasks queued, tasks running) now, over every tenant. Cost: one
    /// short mutex section and a pass over the tenants with work.
    pub fn load(&self) -> (usize, usize) {
        let state = self.shared.lock();
        let running = state.tenants.values().map(|t| t.running).sum();
        (state.queued, running)
    }

    /// Stop taking work; wait for the threads to finish what is queued.
    pub fn shutdown(&self) {
        self.shared.lock().stopped = true;
        self.shared.work.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(
        &self,
        tenant: &str,
        lane: &str,
        max_running: usize,
        task: Task,
        request: bool,
    ) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.stopped {
            return Err(Refused::Stopped);
        }
        let known = state.tenants.contains_key(tenant);
        let key: Arc<str> = match state.tenants.get_key_value(tenant) {
            Some((k, _)) => k.clone(),
            None => tenant.into(),
        };
        let t = state.tenants.entry(key.clone()).or_default();
        if request {
            if t.calls >= self.sharing.max_calls_per_tenant {
                return Err(Refused::Full {
                    limit: self.sharing.max_calls_per_tenant,
                });
            }
            t.calls += 1;
        }
        match t.lanes.iter_mut().find(|l| &*l.key == lane) {
            Some(l) => {
                l.max_running = max_running;
                l.tasks.push_back(task);
            }
            None => t.lanes.push_back(Lane {
                key: lane.into(),
                max_running,
                running: 0,
                tasks: VecDeque::from([task]),
            }),
        }
        if !known {
            state.order.push_back(key);
        }
        state.queued += 1;
        drop(state);
        self.work.notify_one();
        Ok(())
    }

    /// The next runnable task, round-robin over tenants then lanes.
    fn next(&self, state: &mut State) -> Option<(Arc<str>, Arc<str>, Task)> {
        let cap = self.sharing.max_running_per_tenant;
        for _ in 0..state.order.len() {
            let name = state.order.pop_front()?;
            state.order.push_back(name.clone());
            let Some(t) = state.tenants.get_mut(&name) else {
                continue;
            };
            if t.running >= cap {
                continue;
            }
            for _ in 0..t.lanes.len() {
                let Some(mut lane) = t.lanes.pop_front() else {
                    break;
                };
                let task = (lane.running < lane.max_running)
                    .then(|| lane.tasks.pop_front())
                    .flatten();
                let key = lane.key.clone();
                if let Some(task) = task {
                    lane.running += 1;
                    t.lanes.push_back(lane);
                    t.running += 1;
                    state.queued -= 1;
                    return Some((name, key, task));
                }
                t.lanes.push_back(lane);
            }
        }
        None
    }

    /// A task of (`tenant`, `lane`) has returned.
    fn finished(&self, state: &mut State, tenant: &Arc<str>, lane: &Arc<str>) {
        let Some(t) = state.tenants.get_mut(tenant) else {
            return;
        };
        t.running = t.running.saturating_sub(1);
        if &**lane == REQUESTS {
            t.calls = t.calls.saturating_sub(1);
        }
        if let Some(at) = t.lanes.iter().position(|l| &l.key == lane) {
            let l = &mut t.lanes[at];
            l.running = l.running.saturating_sub(1);
            if l.running == 0 && l.tasks.is_empty() {
                t.lanes.remove(at);
            }
        }
        if t.running == 0 && t.lanes.is_empty() {
            state.tenants.remove(tenant);
            state.order.retain(|n| n != tenant);
        }
    }

    /// A pool thread: take the next runnable task, run it, repeat; return
    /// once stopped with nothing queued.
    fn serve(&self) {
        let mut state = self.lock();
        loop {
            if let Some((tenant, lane, task)) = self.next(&mut state) {
                drop(state);
                // A panicking task must not take the thread (and its
                // tenant's running count) with it.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task));
                state = self.lock();
                self.finished(&mut state, &tenant, &lane);
                if state.queued > 0 {
                    // Finishing may have made another tenant's task runnable.
                    self.work.notify_one();
                }
                continue;
            }
            if state.stopped && state.queued == 0 {
                // The others may be waiting for work that will never come.
                self.work.notify_all();
                return;
            }
            state = self.work.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::{Duration, Instant},
    };

    use super::*;

    fn pool(threads: usize, per_tenant: usize, calls: usize) -> CallPool {
        CallPool::new(Sharing {
            threads,
            max_running_per_tenant: per_tenant,
            max_calls_per_tenant: calls,
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tenants_slow_calls_leave_room_for_another() {
        let p = Arc::new(pool(4, 2, 64));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let mut slow = Vec::new();
        for _ in 0..12 {
            let (p, gate) = (p.clone(), gate.clone());
            slow.push(tokio::spawn(async move {
                p.run("hog", move || {
                    let (m, cv) = &*gate;
                    let mut open = m.lock().expect("lock");
                    while !*open {
                        open = cv.wait(open).expect("wait");
                    }
                })
                .await
            }));
        }
        let start = Instant::now();
        let fast = p.run("other", || 7).await.expect("runs");
        assert_eq!(fast, 7);
        assert!(start.elapsed() < Duration::from_secs(2));
        {
            let (m, cv) = &*gate;
            *m.lock().expect("lock") = true;
            cv.notify_all();
        }
        for s in slow {
            s.await.expect("join").expect("ran");
        }
        p.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tenants_share_is_capped() {
        let p = Arc::new(pool(1, 1, 2));
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let mut held = Vec::new();
        for _ in 0..2 {
            let (p, gate) = (p.clone(), gate.clone());
            held.push(tokio::spawn(async move {
                p.run("hog", move || {
                    let (m, cv) = &*gate;
                    let mut open = m.lock().expect("lock");
                    while !*open {
                        open = cv.wait(open).expect("wait");
                    }
                })
                .await
            }));
        }
        // Both are queued or running once the pool counts them.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let calls = p.shared.lock().tenants.get("hog").map_or(0, |t| t.calls);
            if calls == 2 {
                break;
            }
            assert!(Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        assert_eq!(p.run("hog", || ()).await, Err(Refused::Full { limit: 2 }));
        {
            let (m, cv) = &*gate;
            *m.lock().expect("lock") = true;
            cv.notify_all();
        }
        for h in held {
            h.await.expect("join").expect("ran");
        }
        p.run("hog", || ()).await.expect("room again");
        p.shutdown();
    }

    #[test]
    fn a_lane_runs_at_most_its_max() {
        let p = pool(4, 4, 4);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..20 {
            let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
            p.submit(
                "t",
                "run-1",
                2,
                Box::new(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(2));
                    running.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                }),
            )
            .expect("queued");
        }
        p.shutdown();
        assert_eq!(done.load(Ordering::SeqCst), 20);
        assert!(peak.load(Ordering::SeqCst) <= 2);
    }
}
