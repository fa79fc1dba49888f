//! The threads that run capsule calls for the HTTP handlers.
//!
//! A call is synchronous wasm (microseconds for most capsules, up to its
//! deadline for hostile ones), so it must not run on the async workers.
//! `spawn_blocking` hands each call to a fresh or parked thread; under load
//! that was ~190 threads and a context switch per call (measured with
//! `cargo xtask load`, 1000 sessions: 11.7k req/s). A fixed pool of hot
//! threads fed by one queue keeps the threads busy back to back (14.3k
//! req/s on the same machine; running the call on the async worker itself
//! gave 16.1k, but a slow capsule would then stall every request). A hostile
//! call holds one pool thread until its deadline; size the pool
//! (`daemon.call_threads`) above the number of such calls you tolerate at
//! once — per-tenant `max_in_flight` bounds what one tenant can hold.

use std::{
    sync::{Arc, Mutex, mpsc},
    thread,
};

type Task = Box<dyn FnOnce() + Send>;

/// A fixed set of threads running closures from one queue.
#[derive(Debug)]
pub struct CallPool {
    queue: Mutex<Option<mpsc::Sender<Task>>>,
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
}

/// The pool has stopped (the daemon is shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the call pool has stopped")]
pub struct Stopped;

impl CallPool {
    /// Start `threads` threads (at least 1).
    pub fn new(threads: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Task>();
        let rx = Arc::new(Mutex::new(rx));
        let handles = (0..threads.max(1))
            .filter_map(|k| {
                let rx = rx.clone();
                thread::Builder::new()
                    .name(format!("soma-call-{k}"))
                    .spawn(move || {
                        loop {
                            let task = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                            match task {
                                Ok(task) => task(),
                                Err(_) => return,
                            }
                        }
                    })
                    .map_err(|e| tracing::error!("cannot start a call thread: {e}"))
                    .ok()
            })
            .collect();
        Self {
            queue: Mutex::new(Some(tx)),
            threads: Mutex::new(handles),
        }
    }

    /// Run `f` on a pool thread and await its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Stopped> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task: Task = Box::new(move || {
            let _ = tx.send(f());
        });
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .ok_or(Stopped)?
            .send(task)
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Stop taking work; wait for the threads to finish what they hold.
    pub fn shutdown(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}
