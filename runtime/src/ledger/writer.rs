//! Group commit: one background thread turns appends from many threads into
//! one transaction per batch (redb, or PostgreSQL with `[store] backend =
//! "postgres"`).
//!
//! Each [`LedgerWriter::append`] sends its entries over a channel and blocks
//! on a private reply channel. The thread takes whatever is queued (up to
//! [`MAX_BATCH_ENTRIES`] entries), applies every request in one write
//! transaction with [`Durability::Immediate`](redb::Durability::Immediate),
//! commits, and only then answers each caller. Under contention the fsync
//! cost is shared by the whole batch; an idle writer adds one channel
//! round-trip (~microseconds) to a single commit. A batch smaller than recent
//! ones lingers up to 200 µs for the appenders just acknowledged, so batches
//! stay as large as the number of concurrent appenders.

use std::{
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use soma_host_api::storage::LazyDatabase;

use super::{Appended, Charge, Entry, LedgerError, validate, write_batch};
use crate::analytics::{CallFacts, Event};

/// Most entries one group-commit transaction takes from the queue (a single
/// larger request is still committed whole, alone).
pub const MAX_BATCH_ENTRIES: usize = 4096;

/// How long a batch smaller than the previous one waits for the rest of the
/// appenders (who were just acknowledged) before committing. Small next to
/// an fsync; a lone appender never waits (its previous batch was 1).
const LINGER: Duration = Duration::from_micros(200);

struct Request {
    entries: Vec<Entry>,
    facts: Option<Box<CallFacts>>,
    events: Vec<Event>,
    reply: Reply,
}

/// Run on the writer thread with the result of a committed request.
pub type OnCommit = Box<dyn FnOnce(Result<Appended, LedgerError>) + Send>;

/// Where a request's result goes: a blocked thread, an awaiting task, or a
/// callback run on the writer thread right after the commit.
enum Reply {
    Blocking(mpsc::SyncSender<Result<Appended, LedgerError>>),
    Async(tokio::sync::oneshot::Sender<Result<Appended, LedgerError>>),
    Then(OnCommit),
}

impl Reply {
    /// A caller that gave up waiting is not an error.
    fn send(self, result: Result<Appended, LedgerError>) {
        match self {
            Self::Blocking(tx) => {
                let _ = tx.send(result);
            }
            Self::Async(tx) => {
                let _ = tx.send(result);
            }
            Self::Then(f) => f(result),
        }
    }
}

/// A handle to a group-commit thread; cheap to clone and share across threads.
/// The thread exits when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct LedgerWriter {
    tx: mpsc::Sender<Request>,
    /// The store's validation, run on the caller's thread before queueing
    /// (so one bad request never fails a batch it would share).
    check: fn(&[Entry]) -> Result<(), LedgerError>,
    thread: Arc<Mutex<Option<thread::JoinHandle<()>>>>,
}

impl LedgerWriter {
    pub(super) fn spawn(db: Arc<LazyDatabase>) -> Result<Self, LedgerError> {
        Self::spawn_checked(validate, move |requests| write_batch(&db, requests))
    }

    /// A writer whose thread commits each batch with `write` (one
    /// transaction per call, one [`Appended`] per request, in order):
    /// the redb database or the PostgreSQL store.
    pub(super) fn spawn_checked(
        check: fn(&[Entry]) -> Result<(), LedgerError>,
        mut write: impl FnMut(&[Charge<'_>]) -> Result<Vec<Appended>, LedgerError> + Send + 'static,
    ) -> Result<Self, LedgerError> {
        let (tx, rx) = mpsc::channel::<Request>();
        let handle = thread::Builder::new()
            .name("soma-ledger-writer".into())
            .spawn(move || run(&mut write, &rx))
            .map_err(|e| LedgerError::WriterSpawn(Arc::new(e)))?;
        Ok(Self {
            tx,
            check,
            thread: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// Stop accepting appends and, if this is the last handle, wait for the
    /// thread to finish its queue and release the database (so another
    /// engine can open the same data directory right after).
    pub fn close(self) {
        let Self { tx, thread, .. } = self;
        drop(tx);
        if let Ok(cell) = Arc::try_unwrap(thread) {
            let handle = cell.into_inner().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
    }

    /// Append `entries` (ids are assigned; the given ones are ignored) and
    /// block until the transaction holding them is durable. Entries whose
    /// idempotency key exists are skipped and counted as duplicates.
    ///
    /// Cost: one channel round-trip plus a share of one fsync'd commit.
    pub fn append(&self, entries: Vec<Entry>) -> Result<Appended, LedgerError> {
        self.append_call(entries, None)
    }

    /// [`LedgerWriter::append`] for a capsule call's charge with what its
    /// analytics events need beyond the entries ([`CallFacts`]).
    pub fn append_call(
        &self,
        entries: Vec<Entry>,
        facts: Option<Box<CallFacts>>,
    ) -> Result<Appended, LedgerError> {
        if entries.is_empty() {
            return Ok(Appended::default());
        }
        (self.check)(&entries)?;
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Request {
                entries,
                facts,
                events: Vec::new(),
                reply: Reply::Blocking(reply),
            })
            .map_err(|_| LedgerError::WriterStopped)?;
        rx.recv().map_err(|_| LedgerError::WriterStopped)?
    }

    /// Queue `entries` and return at once: `then` runs on the writer thread
    /// with the result once the transaction holding them is durable (or has
    /// failed). The entries are written whether or not the caller is still
    /// around — what a call path uses so that nobody can drop its charge —
    /// and they share the group commit with every other appender.
    ///
    /// Cost: one channel send; `then` must be quick (it delays the replies
    /// of the rest of the batch).
    pub fn append_then(&self, entries: Vec<Entry>, then: OnCommit) {
        self.append_call_then(entries, None, then);
    }

    /// [`LedgerWriter::append_then`] for a capsule call's charge with what
    /// its analytics events need beyond the entries ([`CallFacts`]).
    pub fn append_call_then(
        &self,
        entries: Vec<Entry>,
        facts: Option<Box<CallFacts>>,
        then: OnCommit,
    ) {
        if entries.is_empty() {
            then(Ok(Appended::default()));
            return;
        }
        if let Err(e) = (self.check)(&entries) {
            then(Err(e));
            return;
        }
        if let Err(mpsc::SendError(r)) = self.tx.send(Request {
            entries,
            facts,
            events: Vec::new(),
            reply: Reply::Then(then),
        }) {
            r.reply.send(Err(LedgerError::WriterStopped));
        }
    }

    /// Queue analytics `events` that have no ledger entry (a budget's
    /// refusal) and return at once: they share the next group commit. A
    /// failure is logged, never returned: an event must not fail the
    /// caller's work. Cost: one channel send.
    pub fn record(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let then: OnCommit = Box::new(|result| {
            if let Err(e) = result {
                tracing::warn!(
                    "could not write analytics events to the outbox: {}",
                    soma_host_api::error_chain(&e)
                );
            }
        });
        if let Err(mpsc::SendError(r)) = self.tx.send(Request {
            entries: Vec::new(),
            facts: None,
            events,
            reply: Reply::Then(then),
        }) {
            r.reply.send(Err(LedgerError::WriterStopped));
        }
    }

    /// [`LedgerWriter::append`] for async callers: the task awaits the
    /// commit instead of blocking a thread.
    pub async fn append_async(&self, entries: Vec<Entry>) -> Result<Appended, LedgerError> {
        if entries.is_empty() {
            return Ok(Appended::default());
        }
        (self.check)(&entries)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Request {
                entries,
                facts: None,
                events: Vec::new(),
                reply: Reply::Async(reply),
            })
            .map_err(|_| LedgerError::WriterStopped)?;
        rx.await.map_err(|_| LedgerError::WriterStopped)?
    }
}

/// Commits one group of batches to a store (redb or PostgreSQL).
type WriteBatches<'a> = dyn FnMut(&[Charge<'_>]) -> Result<Vec<Appended>, LedgerError> + 'a;

fn run(write: &mut WriteBatches<'_>, rx: &mpsc::Receiver<Request>) {
    // About how many appenders are active: the ones likely to come back.
    let mut previous = 0;
    while let Ok(first) = rx.recv() {
        let mut queued = first.entries.len().max(1);
        let mut batch = vec![first];
        let linger_until = Instant::now() + LINGER;
        while queued < MAX_BATCH_ENTRIES {
            let next = match rx.try_recv() {
                Ok(r) => Some(r),
                // Fewer requests than last time: their callers were just
                // acknowledged and are likely about to append again.
                Err(mpsc::TryRecvError::Empty) if batch.len() < previous => {
                    let wait = linger_until.saturating_duration_since(Instant::now());
                    rx.recv_timeout(wait).ok()
                }
                Err(_) => None,
            };
            let Some(r) = next else { break };
            queued += r.entries.len().max(1);
            batch.push(r);
        }
        // Remember the most appenders seen lately, forgetting one per batch
        // so a departed appender costs at most a few short lingers.
        previous = batch.len().max(previous.saturating_sub(1));
        let requests: Vec<Charge<'_>> = batch
            .iter()
            .map(|r| Charge {
                entries: &r.entries,
                facts: r.facts.as_deref(),
                events: &r.events,
            })
            .collect();
        match write(&requests) {
            Ok(results) => {
                for (r, result) in batch.into_iter().zip(results) {
                    r.reply.send(Ok(result));
                }
            }
            Err(e) => {
                for r in batch {
                    r.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
