//! Where runs are kept: each run's history (one row per event, keyed by
//! (run, sequence)) and a one-row summary per run for listings, in the
//! node's redb database. A batch of events, the run's summary and the
//! ledger charges of the calls it records commit in one durable
//! transaction, so a node's result and its charge exist together or not at
//! all.

use std::sync::Arc;

use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use soma_host_api::storage::LazyDatabase;

use super::{history::Event, status::RunPhase};
use crate::{ledger::Appended, meter::BudgetLedger};

/// (run id, sequence number) → event (JSON).
const EVENTS: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("dag_events");
/// run id → [`RunSummary`] (JSON).
const RUNS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("dag_runs");

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The database could not be opened (often: another soma process has it).
    #[error(transparent)]
    Open(#[from] soma_host_api::storage::OpenError),
    /// redb failed, or a record could not be encoded.
    #[error("the run journal failed")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No such run.
    #[error("no run `{0}` in this data directory (soma dag ls lists them)")]
    NotFound(String),
    /// The run id is taken.
    #[error("run `{0}` already exists; pick another --run-id or resume it")]
    Exists(String),
    /// A stored record does not decode.
    #[error("run `{run}` has a corrupt record at {seq}: {message}")]
    Corrupt {
        /// The run.
        run: String,
        /// The sequence number (or 0 for the summary).
        seq: u64,
        /// The decoder's message.
        message: String,
    },
    /// The charges could not be written.
    #[error("could not record call charges")]
    Ledger(#[from] crate::ledger::LedgerError),
}

fn storage(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> JournalError {
    JournalError::Storage(e.into())
}

/// One line per run, for `soma dag ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunSummary {
    /// The run id.
    pub run: String,
    /// The spec's name.
    pub name: String,
    /// Who pays.
    pub tenant: String,
    /// `running` while a process works on it (or was killed doing so —
    /// then it is resumable), else how it finished.
    pub status: RunPhase,
    /// Unix ms.
    pub created_ms: u64,
    /// Unix ms of the last commit.
    pub updated_ms: u64,
    /// Nodes (after expansions and fan-outs).
    pub nodes: usize,
    /// Nodes finished (succeeded, failed or skipped).
    pub done: usize,
    /// Nodes failed.
    pub failed: usize,
    /// Events recorded.
    pub events: u64,
}

/// The run journal of a data directory. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Journal {
    db: Arc<LazyDatabase>,
}

impl Journal {
    /// The journal in `db`; nothing is opened until used.
    pub fn new(db: Arc<LazyDatabase>) -> Self {
        Self { db }
    }

    fn open(&self) -> Result<Arc<redb::Database>, JournalError> {
        self.db.get().map_err(JournalError::Open)
    }

    /// Record a new run's `created` event. Refuses an existing id.
    pub fn create(
        &self,
        run: &str,
        created: &Event,
        summary: &RunSummary,
    ) -> Result<(), JournalError> {
        let db = self.open()?;
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        {
            let mut runs = txn.open_table(RUNS).map_err(storage)?;
            if runs.get(run).map_err(storage)?.is_some() {
                return Err(JournalError::Exists(run.to_owned()));
            }
            runs.insert(run, encode(summary)?.as_slice())
                .map_err(storage)?;
            let mut events = txn.open_table(EVENTS).map_err(storage)?;
            events
                .insert((run, 0), encode(created)?.as_slice())
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// Append `events` (numbered from `first_seq`), replace the run's
    /// summary and write `charges` to the ledger — one durable transaction.
    /// Returns the ledger's result per charge, in order.
    ///
    /// Cost: one fsync'd commit plus ~µs per event.
    pub fn commit(
        &self,
        run: &str,
        first_seq: u64,
        events: &[Event],
        summary: &RunSummary,
        charges: &[&[crate::ledger::Entry]],
        metering: &BudgetLedger,
    ) -> Result<Vec<Appended>, JournalError> {
        let db = self.open()?;
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        let appended = {
            let mut table = txn.open_table(EVENTS).map_err(storage)?;
            let mut buf = Vec::with_capacity(512);
            for (k, e) in events.iter().enumerate() {
                buf.clear();
                serde_json::to_writer(&mut buf, e).map_err(storage)?;
                table
                    .insert((run, first_seq + k as u64), buf.as_slice())
                    .map_err(storage)?;
            }
            let mut runs = txn.open_table(RUNS).map_err(storage)?;
            runs.insert(run, encode(summary)?.as_slice())
                .map_err(storage)?;
            if charges.is_empty() {
                Vec::new()
            } else {
                metering.write_charges(&txn, charges)?
            }
        };
        txn.commit().map_err(storage)?;
        Ok(appended)
    }

    /// A run's whole history, in order.
    pub fn history(&self, run: &str) -> Result<Vec<Event>, JournalError> {
        let db = self.open()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = match txn.open_table(EVENTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Err(JournalError::NotFound(run.to_owned()));
            }
            Err(e) => return Err(storage(e)),
        };
        let mut out = Vec::new();
        for row in table.range((run, 0)..=(run, u64::MAX)).map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let seq = k.value().1;
            if seq != out.len() as u64 {
                return Err(JournalError::Corrupt {
                    run: run.to_owned(),
                    seq,
                    message: format!("expected event {}", out.len()),
                });
            }
            let e = serde_json::from_slice(v.value()).map_err(|e| JournalError::Corrupt {
                run: run.to_owned(),
                seq,
                message: e.to_string(),
            })?;
            out.push(e);
        }
        if out.is_empty() {
            return Err(JournalError::NotFound(run.to_owned()));
        }
        Ok(out)
    }

    /// Up to `max_events` events of a run from sequence number `from`, as
    /// stored (JSON), stopping early once `max_bytes` are read (at least
    /// one event is returned if there is one). For streaming a history in
    /// bounded pages; an empty page means there is nothing from `from` on.
    /// Cost: one read transaction, a range scan of the page.
    pub fn page(
        &self,
        run: &str,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, String)>, JournalError> {
        let db = self.open()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = match txn.open_table(EVENTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for row in table
            .range((run, from)..=(run, u64::MAX))
            .map_err(storage)?
        {
            let (k, v) = row.map_err(storage)?;
            if out.len() >= max_events || (!out.is_empty() && bytes >= max_bytes) {
                break;
            }
            let text = String::from_utf8_lossy(v.value()).into_owned();
            bytes = bytes.saturating_add(text.len());
            out.push((k.value().1, text));
        }
        Ok(out)
    }

    /// A run's listing row (tenant, status, …) without reading its history.
    pub fn summary(&self, run: &str) -> Result<RunSummary, JournalError> {
        let db = self.open()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = match txn.open_table(RUNS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Err(JournalError::NotFound(run.to_owned()));
            }
            Err(e) => return Err(storage(e)),
        };
        let row = table
            .get(run)
            .map_err(storage)?
            .ok_or_else(|| JournalError::NotFound(run.to_owned()))?;
        serde_json::from_slice(row.value()).map_err(|e| JournalError::Corrupt {
            run: run.to_owned(),
            seq: 0,
            message: e.to_string(),
        })
    }

    /// The capsules a run pinned when it was created (its first event
    /// only: no replay).
    pub fn pinned_capsules(
        &self,
        run: &str,
    ) -> Result<std::collections::BTreeMap<String, super::history::CapsuleRecord>, JournalError>
    {
        let db = self.open()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = match txn.open_table(EVENTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Err(JournalError::NotFound(run.to_owned()));
            }
            Err(e) => return Err(storage(e)),
        };
        let first = table
            .get((run, 0))
            .map_err(storage)?
            .ok_or_else(|| JournalError::NotFound(run.to_owned()))?;
        let corrupt = |message: String| JournalError::Corrupt {
            run: run.to_owned(),
            seq: 0,
            message,
        };
        match serde_json::from_slice(first.value()).map_err(|e| corrupt(e.to_string()))? {
            Event::Created { capsules, .. } => Ok(capsules),
            _ => Err(corrupt("the first event is not `created`".into())),
        }
    }

    /// Every run's summary, newest first.
    pub fn runs(&self) -> Result<Vec<RunSummary>, JournalError> {
        let db = self.open()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = match txn.open_table(RUNS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let s: RunSummary =
                serde_json::from_slice(v.value()).map_err(|e| JournalError::Corrupt {
                    run: k.value().to_owned(),
                    seq: 0,
                    message: e.to_string(),
                })?;
            out.push(s);
        }
        out.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.run.cmp(&a.run)));
        Ok(out)
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, JournalError> {
    serde_json::to_vec(v).map_err(storage)
}
