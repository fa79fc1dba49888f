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

use super::{
    approval::ApprovalRequest,
    history::Event,
    status::{NodeFailureClass, RunPhase},
};
use crate::{ledger::Appended, meter::BudgetLedger};

/// (run id, sequence number) → event (JSON).
const EVENTS: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("dag_events");
/// run id → [`RunSummary`] (JSON).
const RUNS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("dag_runs");
/// (tenant, created ms, run id) → (): one tenant's runs in creation order,
/// so a listing page reads only its own rows.
const BY_TENANT: TableDefinition<'_, (&str, u64, &str), ()> =
    TableDefinition::new("dag_runs_by_tenant");
/// (created ms, run id) → tenant: every run in creation order (operators).
const BY_TIME: TableDefinition<'_, (u64, &str), &str> = TableDefinition::new("dag_runs_by_time");
/// (run id, node id) → [`ApprovalRequest`] (JSON): verdicts handed in and
/// not yet recorded in the run's history.
const APPROVALS: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("dag_approvals");
/// Journal bookkeeping: [`INDEXED`] once every run is in the indexes.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("dag_meta");
/// The [`META`] key set when the indexes cover every run (a database
/// written before they existed is indexed on its first listing).
const INDEXED: &str = "runs-indexed-v1";

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

/// What [`Journal::offer_approval`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Stored for the run's driver.
    Stored,
    /// A verdict on the same output was handed in already: this one.
    Held(ApprovalRequest),
    /// The history grew since it was read: judge again.
    Moved,
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
    /// The failure class of the first node that failed for good, if one
    /// did (absent in rows written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_class: Option<NodeFailureClass>,
    /// The capsules the run pinned, by the reference it named them with
    /// (catalog name, `market:` name or path), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capsules: Vec<String>,
}

/// Which runs [`Journal::list`] answers, and which page of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    /// Only this tenant's (`None`: every tenant's — operators).
    pub tenant: Option<String>,
    /// Only runs in this phase.
    pub status: Option<RunPhase>,
    /// Only runs whose first final node failure has this class.
    pub failure_class: Option<NodeFailureClass>,
    /// Only runs that pinned this capsule reference.
    pub capsule: Option<String>,
    /// Only runs created at or after this (unix ms).
    pub since_ms: Option<u64>,
    /// Only runs created before this (unix ms).
    pub until_ms: Option<u64>,
    /// Matching runs to skip (newest first).
    pub offset: usize,
    /// Matching runs to return at most.
    pub limit: usize,
}

impl RunQuery {
    /// Whether `s` passes the phase, failure-class and capsule filters
    /// (tenant, window and paging are the lister's).
    pub fn matches(&self, s: &RunSummary) -> bool {
        self.status.is_none_or(|p| s.status == p)
            && self
                .failure_class
                .is_none_or(|c| s.failure_class == Some(c))
            && self
                .capsule
                .as_ref()
                .is_none_or(|c| s.capsules.iter().any(|x| x == c))
    }
}

/// One page of [`Journal::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunPage {
    /// The runs, newest first.
    pub runs: Vec<RunSummary>,
    /// More runs match after this page.
    pub more: bool,
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
            index(&txn, run, summary)?;
            let mut events = txn.open_table(EVENTS).map_err(storage)?;
            events
                .insert((run, 0), encode(created)?.as_slice())
                .map_err(storage)?;
        }
        crate::analytics::outbox::push(
            &txn,
            &analytics_events(run, summary, std::slice::from_ref(created)),
        )
        .map_err(storage)?;
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
        charges: &[crate::ledger::Charge<'_>],
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
        crate::analytics::outbox::push(&txn, &analytics_events(run, summary, events))
            .map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(appended)
    }

    /// Hand in a verdict on `node` of `run`, as judged from a history of
    /// `seen` events: stored unless one is stored already. Refused
    /// ([`Offer::Moved`]) when the history has grown since, so that the
    /// caller judges again from the new one. Cost: one fsync'd commit.
    pub fn offer_approval(
        &self,
        run: &str,
        node: &str,
        seen: u64,
        request: &ApprovalRequest,
    ) -> Result<Offer, JournalError> {
        let db = self.open()?;
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        let offer = {
            let events = txn.open_table(EVENTS).map_err(storage)?;
            let last = events
                .range((run, 0)..=(run, u64::MAX))
                .map_err(storage)?
                .next_back()
                .transpose()
                .map_err(storage)?
                .map_or(0, |(k, _)| k.value().1 + 1);
            if last != seen {
                return Ok(Offer::Moved);
            }
            let mut inbox = txn.open_table(APPROVALS).map_err(storage)?;
            let held = inbox
                .get((run, node))
                .map_err(storage)?
                .map(|v| serde_json::from_slice::<ApprovalRequest>(v.value()));
            match held {
                Some(Ok(held)) if held.attempt == request.attempt => Offer::Held(held),
                _ => {
                    inbox
                        .insert((run, node), encode(request)?.as_slice())
                        .map_err(storage)?;
                    Offer::Stored
                }
            }
        };
        txn.commit().map_err(storage)?;
        Ok(offer)
    }

    /// The verdicts handed in for `run` and not yet recorded, by node.
    /// Cost: one read transaction, a range scan of the run's (few) rows.
    pub fn approvals(&self, run: &str) -> Result<Vec<(String, ApprovalRequest)>, JournalError> {
        let db = self.open()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = match txn.open_table(APPROVALS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let mut out = Vec::new();
        for row in table.range((run, "")..).map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let (r, node) = k.value();
            if r != run {
                break;
            }
            let request = serde_json::from_slice(v.value()).map_err(|e| JournalError::Corrupt {
                run: run.to_owned(),
                seq: 0,
                message: format!("approval of node {node}: {e}"),
            })?;
            out.push((node.to_owned(), request));
        }
        Ok(out)
    }

    /// Forget handed-in verdicts of `run` (recorded, or stale).
    pub fn drop_approvals(&self, run: &str, nodes: &[String]) -> Result<(), JournalError> {
        if nodes.is_empty() {
            return Ok(());
        }
        let db = self.open()?;
        let txn = db.begin_write().map_err(storage)?;
        {
            let mut table = txn.open_table(APPROVALS).map_err(storage)?;
            for node in nodes {
                table.remove((run, node.as_str())).map_err(storage)?;
            }
        }
        txn.commit().map_err(storage)
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

    /// One page of the runs `query` selects, newest first, read through
    /// the (tenant, created) index: the rows of other tenants and outside
    /// the time range are never read; each candidate costs one summary
    /// lookup and decode until the page is full (plus one, for `more`).
    /// Cost: one read transaction, ~µs per candidate row; the first call
    /// on a database written before the indexes existed builds them once
    /// (one write transaction over every summary).
    pub fn list(&self, query: &RunQuery) -> Result<RunPage, JournalError> {
        self.ensure_indexes()?;
        let db = self.open()?;
        let txn = db.begin_read().map_err(storage)?;
        let runs = match txn.open_table(RUNS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(RunPage::default()),
            Err(e) => return Err(storage(e)),
        };
        let since = query.since_ms.unwrap_or(0);
        let until = query.until_ms.unwrap_or(u64::MAX);
        let mut page = RunPage::default();
        if since >= until {
            return Ok(page);
        }
        let mut skipped = 0usize;
        // `true` once the page is full and one more matched.
        let mut take = |run: &str| -> Result<bool, JournalError> {
            let Some(row) = runs.get(run).map_err(storage)? else {
                return Ok(false);
            };
            let s: RunSummary =
                serde_json::from_slice(row.value()).map_err(|e| JournalError::Corrupt {
                    run: run.to_owned(),
                    seq: 0,
                    message: e.to_string(),
                })?;
            if !query.matches(&s) {
                return Ok(false);
            }
            if skipped < query.offset {
                skipped += 1;
                return Ok(false);
            }
            if page.runs.len() >= query.limit {
                page.more = true;
                return Ok(true);
            }
            page.runs.push(s);
            Ok(false)
        };
        // The range's upper bound is exclusive in time: (until, "") sorts
        // before every run created at `until`.
        match &query.tenant {
            Some(tenant) => {
                let t = tenant.as_str();
                let table = match txn.open_table(BY_TENANT) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(RunPage::default()),
                    Err(e) => return Err(storage(e)),
                };
                for row in table
                    .range((t, since, "")..(t, until, ""))
                    .map_err(storage)?
                    .rev()
                {
                    let (k, _) = row.map_err(storage)?;
                    if take(k.value().2)? {
                        break;
                    }
                }
            }
            None => {
                let table = match txn.open_table(BY_TIME) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(RunPage::default()),
                    Err(e) => return Err(storage(e)),
                };
                for row in table
                    .range((since, "")..(until, ""))
                    .map_err(storage)?
                    .rev()
                {
                    let (k, _) = row.map_err(storage)?;
                    if take(k.value().1)? {
                        break;
                    }
                }
            }
        }
        Ok(page)
    }

    /// Index every run written before the listing indexes existed; a
    /// no-op (one small read) once done.
    pub fn ensure_indexes(&self) -> Result<(), JournalError> {
        let db = self.open()?;
        {
            let txn = db.begin_read().map_err(storage)?;
            match txn.open_table(META) {
                Ok(meta) => {
                    if meta.get(INDEXED).map_err(storage)?.is_some() {
                        return Ok(());
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(storage(e)),
            }
        }
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        {
            let runs = txn.open_table(RUNS).map_err(storage)?;
            for row in runs.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                let s: RunSummary =
                    serde_json::from_slice(v.value()).map_err(|e| JournalError::Corrupt {
                        run: k.value().to_owned(),
                        seq: 0,
                        message: e.to_string(),
                    })?;
                index(&txn, k.value(), &s)?;
            }
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(INDEXED, 1).map_err(storage)?;
        }
        txn.commit().map_err(storage)
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

/// Put a new run in the listing indexes (in the caller's transaction).
/// The analytics events of journal `events` (see `crate::analytics`):
/// run started/finished, node started/succeeded/failed, gate verdicts; ids
/// from the journal's keys (`run`, `run/node/attempt`, `run/gate/round`),
/// so a replayed commit makes the same ids. Cost: a few small allocations
/// per event; nothing for the other kinds.
fn analytics_events(
    run: &str,
    summary: &RunSummary,
    events: &[Event],
) -> Vec<crate::analytics::Event> {
    use crate::analytics::{Body, Event as Out};
    let tenant = summary.tenant.as_str();
    let mut out = Vec::new();
    for e in events {
        let time_ms = e.time_ms();
        let (key, body) = match e {
            Event::Created { .. } => (
                run.to_owned(),
                Body::RunStarted {
                    run: run.to_owned(),
                    dag: Some(summary.name.clone()),
                },
            ),
            Event::Started { node, attempt, .. } => (
                format!("{run}/{node}/{attempt}"),
                Body::NodeStarted {
                    run: run.to_owned(),
                    node: node.clone(),
                    attempt: *attempt,
                },
            ),
            Event::Succeeded { node, call, .. } => (
                format!("{run}/{node}/{}", call.attempt),
                Body::NodeSucceeded {
                    run: run.to_owned(),
                    node: node.clone(),
                    attempt: call.attempt,
                },
            ),
            Event::Failed {
                node,
                call,
                failure,
                ..
            } => (
                format!("{run}/{node}/{}", call.attempt),
                Body::NodeFailed {
                    run: run.to_owned(),
                    node: node.clone(),
                    attempt: call.attempt,
                    failure_class: failure.class.name().to_owned(),
                },
            ),
            Event::Verdict {
                node,
                round,
                verdict,
                ..
            } => (
                format!("{run}/{node}/r{round}"),
                Body::GateVerdict {
                    run: run.to_owned(),
                    node: node.clone(),
                    score: Some(verdict.score),
                    approved: verdict.approved,
                },
            ),
            Event::Finished { status, .. } => (
                run.to_owned(),
                Body::RunFinished {
                    run: run.to_owned(),
                    outcome: RunPhase::from(*status).name().to_owned(),
                },
            ),
            _ => continue,
        };
        out.push(Out::new(&key, tenant, time_ms, body));
    }
    out
}

fn index(txn: &redb::WriteTransaction, run: &str, s: &RunSummary) -> Result<(), JournalError> {
    let mut by_tenant = txn.open_table(BY_TENANT).map_err(storage)?;
    by_tenant
        .insert((s.tenant.as_str(), s.created_ms, run), ())
        .map_err(storage)?;
    let mut by_time = txn.open_table(BY_TIME).map_err(storage)?;
    by_time
        .insert((s.created_ms, run), s.tenant.as_str())
        .map_err(storage)?;
    Ok(())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, JournalError> {
    serde_json::to_vec(v).map_err(storage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::FailureClass;

    fn summary(run: &str, tenant: &str, created_ms: u64, status: RunPhase) -> RunSummary {
        RunSummary {
            run: run.into(),
            name: "n".into(),
            tenant: tenant.into(),
            status,
            created_ms,
            updated_ms: created_ms,
            nodes: 1,
            done: 1,
            failed: usize::from(status == RunPhase::Failed),
            events: 3,
            failure_class: (status == RunPhase::Failed)
                .then_some(NodeFailureClass::Call(FailureClass::OutOfFuel)),
            capsules: vec![
                if created_ms.is_multiple_of(2) {
                    "echo"
                } else {
                    "calculator"
                }
                .into(),
            ],
        }
    }

    /// Write summaries as a database from before the indexes would hold
    /// them (`indexed`: also put them in the indexes, as `create` does).
    fn seed(journal: &Journal, rows: &[RunSummary], indexed: bool) {
        let db = journal.open().expect("open");
        let mut txn = db.begin_write().expect("write");
        txn.set_durability(Durability::None).expect("durability");
        {
            let mut runs = txn.open_table(RUNS).expect("runs");
            for s in rows {
                runs.insert(s.run.as_str(), encode(s).expect("json").as_slice())
                    .expect("insert");
                if indexed {
                    index(&txn, &s.run, s).expect("index");
                }
            }
        }
        txn.commit().expect("commit");
    }

    fn journal(dir: &std::path::Path) -> Journal {
        Journal::new(Arc::new(LazyDatabase::new(dir.join("soma.redb"))))
    }

    #[test]
    fn old_summary_rows_still_read() {
        let old = r#"{"run":"r","name":"n","tenant":"t","status":"failed","created_ms":1,
            "updated_ms":2,"nodes":1,"done":1,"failed":1,"events":4}"#;
        let s: RunSummary = serde_json::from_str(old).expect("an old row decodes");
        assert_eq!((s.failure_class, s.capsules.len()), (None, 0));
        let json = serde_json::to_value(&s).expect("json");
        assert!(json.get("failure_class").is_none() && json.get("capsules").is_none());
    }

    #[test]
    fn list_pages_one_tenant_newest_first_with_filters_and_indexes_old_rows() {
        let dir = tempfile::tempdir().expect("tmp");
        let j = journal(dir.path());
        let mut rows = Vec::new();
        for k in 0..30u64 {
            let status = if k.is_multiple_of(3) {
                RunPhase::Failed
            } else {
                RunPhase::Succeeded
            };
            rows.push(summary(&format!("a{k:02}"), "acme", 1000 + k, status));
            rows.push(summary(&format!("g{k:02}"), "globex", 1000 + k, status));
        }
        // Written before the indexes existed: the first listing builds them.
        seed(&j, &rows, false);
        let q = |f: &dyn Fn(&mut RunQuery)| {
            let mut q = RunQuery {
                tenant: Some("acme".into()),
                limit: 5,
                ..RunQuery::default()
            };
            f(&mut q);
            j.list(&q).expect("list")
        };
        let page = q(&|_| {});
        let ids: Vec<_> = page.runs.iter().map(|r| r.run.as_str()).collect();
        assert_eq!(ids, ["a29", "a28", "a27", "a26", "a25"]);
        assert!(page.more);
        let page = q(&|q| q.offset = 25);
        assert_eq!(page.runs.len(), 5);
        assert!(!page.more, "the last page");
        assert_eq!(page.runs[4].run, "a00");
        assert!(q(&|_| {}).runs.iter().all(|r| r.tenant == "acme"));
        // Filters.
        let failed = q(&|q| {
            q.status = Some(RunPhase::Failed);
            q.limit = 100;
        });
        assert_eq!(failed.runs.len(), 10);
        assert!(failed.runs.iter().all(|r| r.status == RunPhase::Failed));
        let class = q(&|q| {
            q.failure_class = Some(NodeFailureClass::Call(FailureClass::OutOfFuel));
            q.limit = 100;
        });
        assert_eq!(class.runs, failed.runs);
        let echo = q(&|q| {
            q.capsule = Some("echo".into());
            q.limit = 100;
        });
        assert_eq!(echo.runs.len(), 15);
        let window = q(&|q| {
            q.since_ms = Some(1010);
            q.until_ms = Some(1020);
            q.limit = 100;
        });
        let ids: Vec<_> = window.runs.iter().map(|r| r.run.as_str()).collect();
        assert_eq!(ids.first(), Some(&"a19"));
        assert_eq!(ids.last(), Some(&"a10"));
        assert_eq!(ids.len(), 10, "until is exclusive");
        // Operators: every tenant, still newest first.
        let all = j
            .list(&RunQuery {
                limit: 4,
                ..RunQuery::default()
            })
            .expect("list");
        let ids: Vec<_> = all.runs.iter().map(|r| r.run.as_str()).collect();
        assert_eq!(ids, ["g29", "a29", "g28", "a28"]);
        // A run created afterwards is indexed by `create` itself.
        let created = Event::CancelRequested { time_ms: 5000 };
        j.create(
            "a99",
            &created,
            &summary("a99", "acme", 5000, RunPhase::Running),
        )
        .expect("create");
        assert_eq!(q(&|_| {}).runs[0].run, "a99");
        // `soma dag ls` is unchanged.
        assert_eq!(j.runs().expect("runs").len(), 61);
    }

    /// The list page's read with 10,000 runs of two tenants: prints the
    /// time of the first page, of a failed-only page (a filter that matches
    /// one run in 100) and of the last page.
    #[test]
    fn listing_10000_runs_reads_only_its_page() {
        let dir = tempfile::tempdir().expect("tmp");
        let j = journal(dir.path());
        let rows: Vec<_> = (0..10_000u64)
            .map(|k| {
                let status = if k.is_multiple_of(100) {
                    RunPhase::Failed
                } else {
                    RunPhase::Succeeded
                };
                let tenant = if k.is_multiple_of(2) {
                    "acme"
                } else {
                    "globex"
                };
                summary(&format!("run{k:05}"), tenant, 1_000_000 + k, status)
            })
            .collect();
        seed(&j, &rows, true);
        j.ensure_indexes().expect("indexes");
        let time = |q: RunQuery| {
            let t = std::time::Instant::now();
            let page = j.list(&q).expect("list");
            (t.elapsed(), page)
        };
        let base = RunQuery {
            tenant: Some("acme".into()),
            limit: 50,
            ..RunQuery::default()
        };
        let (first, page) = time(base.clone());
        assert_eq!(page.runs.len(), 50);
        let (failed, page) = time(RunQuery {
            status: Some(RunPhase::Failed),
            ..base.clone()
        });
        assert_eq!(page.runs.len(), 50);
        let (last, page) = time(RunQuery {
            offset: 4_950,
            ..base.clone()
        });
        assert_eq!((page.runs.len(), page.more), (50, false));
        eprintln!(
            "list of 10,000 runs: first page {first:?}, failed-only {failed:?}, last page {last:?}"
        );
        assert!(first < std::time::Duration::from_millis(100), "{first:?}");
    }
}
