//! The durable outbox: events written in the same redb write transaction as
//! the fact they describe, drained by the shipper.
//!
//! ```text
//! analytics_outbox       seq u64 → event (JSON, schema v1)
//! analytics_outbox_meta  "enabled" | "max" | "policy" | "dropped" | "full"
//!                        | "next" (the next seq) | "sink:<name>" (a cursor) → u64
//! ```
//!
//! Every consumer of the outbox is a *sink* with a cursor, the last seq it
//! has delivered: the embedded rollups ([`ROLLUP`], folded and advanced in
//! one transaction: exactly once) and each external sink the daemon runs
//! (Kafka, ClickHouse: delivered, then advanced: at least once). An event
//! is deleted once every registered sink's cursor has passed it
//! ([`advance`]), so a sink that is down holds events (up to the bound) and
//! never blocks the others. Seqs never repeat (`next`), so a cursor stays
//! valid when the outbox empties.
//!
//! [`push`] runs inside the writer's transaction (the ledger's group commit,
//! a failure's transaction): the event commits with its fact or not at all,
//! through kill -9. The bound and the policy are the operator's
//! `[analytics]` settings, recorded in `analytics_outbox_meta` when the
//! engine opens the data directory ([`configure`]), so every writer of the
//! database applies them without holding the configuration.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{AnalyticsError, Event, FullPolicy, db_err};

/// seq → event JSON.
pub(super) const OUTBOX: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("analytics_outbox");
/// The bound, the policy, counters.
pub(super) const META: TableDefinition<'_, &str, u64> =
    TableDefinition::new("analytics_outbox_meta");

/// The bound when [`configure`] never ran (the `[analytics]` default).
pub const DEFAULT_MAX_OUTBOX_EVENTS: u64 = 1_000_000;

/// The embedded store's sink name (its cursor is `sink:rollup`).
pub const ROLLUP: &str = "rollup";

/// The prefix of a sink's cursor key in [`META`].
const SINK_PREFIX: &str = "sink:";

fn cursor_key(sink: &str) -> String {
    format!("{SINK_PREFIX}{sink}")
}

/// The cursor of `sink` (0 when it has none: everything held is pending).
pub(super) fn cursor(
    meta: &impl ReadableTable<&'static str, u64>,
    sink: &str,
) -> Result<u64, AnalyticsError> {
    Ok(meta
        .get(cursor_key(sink).as_str())
        .map_err(db_err)?
        .map_or(0, |g| g.value()))
}

/// Every registered sink and its cursor, by name.
fn cursors(
    meta: &impl ReadableTable<&'static str, u64>,
) -> Result<Vec<(String, u64)>, AnalyticsError> {
    let mut out = Vec::new();
    for row in meta.range(SINK_PREFIX..).map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        let Some(name) = k.value().strip_prefix(SINK_PREFIX) else {
            break;
        };
        out.push((name.to_owned(), v.value()));
    }
    Ok(out)
}

/// Make `sinks` (plus [`ROLLUP`]) the outbox's consumers: a new sink gets a
/// cursor that leaves every held event pending for it; a sink no longer
/// listed loses its cursor (it no longer holds events). The daemon calls
/// this once at start with the sinks its `[analytics]` configures. One small
/// durable transaction.
pub fn register_sinks(db: &redb::Database, sinks: &[&str]) -> Result<(), AnalyticsError> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
        let keep = |name: &str| name == ROLLUP || sinks.contains(&name);
        for (name, _) in cursors(&meta)? {
            if !keep(&name) {
                meta.remove(cursor_key(&name).as_str()).map_err(db_err)?;
            }
        }
        for name in std::iter::once(ROLLUP).chain(sinks.iter().copied()) {
            let key = cursor_key(name);
            if meta.get(key.as_str()).map_err(db_err)?.is_none() {
                meta.insert(key.as_str(), 0).map_err(db_err)?;
            }
        }
        trim(&mut outbox, &mut meta)?;
    }
    txn.commit().map_err(db_err)
}

/// One held event: its seq and its JSON (schema v1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Its place in the outbox.
    pub seq: u64,
    /// The event, as written (the JSON every sink ships).
    pub json: Vec<u8>,
}

/// Up to `max` events `sink` has not delivered yet, oldest first. One read
/// transaction; copies the events.
pub fn pending_for(
    db: &redb::Database,
    sink: &str,
    max: usize,
) -> Result<Vec<Held>, AnalyticsError> {
    let txn = db.begin_read().map_err(db_err)?;
    let meta = match txn.open_table(META) {
        Ok(m) => m,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(db_err(e)),
    };
    let from = cursor(&meta, sink)?.saturating_add(1);
    let outbox = match txn.open_table(OUTBOX) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(db_err(e)),
    };
    let mut out = Vec::with_capacity(max.min(4096));
    for row in outbox.range(from..).map_err(db_err)?.take(max) {
        let (k, v) = row.map_err(db_err)?;
        out.push(Held {
            seq: k.value(),
            json: v.value().to_vec(),
        });
    }
    Ok(out)
}

/// Record that `sink` has delivered every event up to `seq`, and delete the
/// events every sink has passed. One durable transaction. An external sink
/// that was unregistered meanwhile is not re-registered; the rollups
/// ([`ROLLUP`]) always are a consumer.
pub fn advance(db: &redb::Database, sink: &str, seq: u64) -> Result<(), AnalyticsError> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
        advance_in(&mut outbox, &mut meta, sink, seq)?;
    }
    txn.commit().map_err(db_err)
}

/// [`advance`] inside the caller's transaction.
pub(super) fn advance_in(
    outbox: &mut redb::Table<'_, u64, &[u8]>,
    meta: &mut redb::Table<'_, &str, u64>,
    sink: &str,
    seq: u64,
) -> Result<(), AnalyticsError> {
    let key = cursor_key(sink);
    let old = meta.get(key.as_str()).map_err(db_err)?.map(|g| g.value());
    if old.is_none() && sink != ROLLUP {
        return Ok(());
    }
    if old.is_none_or(|old| seq > old) {
        meta.insert(key.as_str(), seq).map_err(db_err)?;
    }
    trim(outbox, meta)
}

/// Delete the events every registered sink has delivered (none when no
/// sink is registered); clears the `full` mark when any was deleted.
fn trim(
    outbox: &mut redb::Table<'_, u64, &[u8]>,
    meta: &mut redb::Table<'_, &str, u64>,
) -> Result<(), AnalyticsError> {
    let Some(done) = cursors(meta)?.into_iter().map(|(_, c)| c).min() else {
        return Ok(());
    };
    let first = outbox.first().map_err(db_err)?.map(|(k, _)| k.value());
    if first.is_some_and(|f| f <= done) {
        outbox.retain_in(..=done, |_, _| false).map_err(db_err)?;
        meta.insert("full", 0).map_err(db_err)?;
    }
    Ok(())
}

/// Record the operator's bound and policy for every later [`push`]. Once per
/// engine start; one small durable transaction.
pub fn configure(
    db: &redb::Database,
    max_events: u64,
    policy: FullPolicy,
    enabled: bool,
) -> Result<(), AnalyticsError> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        meta.insert("enabled", u64::from(enabled)).map_err(db_err)?;
        meta.insert("max", max_events.max(1)).map_err(db_err)?;
        meta.insert("policy", policy.code()).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)
}

/// Append `events` to the outbox inside `txn` (nothing when `[analytics]
/// enabled = false` was configured). When the outbox would hold
/// more than its bound: under `drop-oldest` the oldest events are deleted
/// (counted in `dropped`, a warning logged when the outbox becomes full);
/// under `pause-admission` nothing is deleted (a fact's event is never lost)
/// and [`Status::paused`] tells admission to refuse new calls until the
/// shipper has drained it. Cost: four small reads and a write, one row per event (a
/// JSON serialization each) and one delete per dropped event.
pub fn push(txn: &WriteTransaction, events: &[Event]) -> Result<(), AnalyticsError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut meta = txn.open_table(META).map_err(db_err)?;
    if read(&meta, "enabled")? == Some(0) {
        return Ok(());
    }
    let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
    let max = read(&meta, "max")?.unwrap_or(DEFAULT_MAX_OUTBOX_EVENTS);
    let policy = FullPolicy::from_code(read(&meta, "policy")?.unwrap_or(0));
    let first = outbox.first().map_err(db_err)?.map(|(k, _)| k.value());
    let after_last = outbox
        .last()
        .map_err(db_err)?
        .map_or(1, |(k, _)| k.value().saturating_add(1));
    // Seqs never repeat, even once the outbox is empty: cursors stay valid.
    let mut next = read(&meta, "next")?.unwrap_or(1).max(after_last);
    let held = first.map_or(0, |f| next - f);
    let mut buf = Vec::with_capacity(256);
    for e in events {
        buf.clear();
        serde_json::to_writer(&mut buf, e).map_err(AnalyticsError::Encode)?;
        outbox.insert(next, buf.as_slice()).map_err(db_err)?;
        next = next.saturating_add(1);
    }
    meta.insert("next", next).map_err(db_err)?;
    let total = held + events.len() as u64;
    if total > max {
        let was_full = read(&meta, "full")?.unwrap_or(0) == 1;
        if !was_full {
            meta.insert("full", 1).map_err(db_err)?;
        }
        match policy {
            FullPolicy::DropOldest => {
                let excess = total - max;
                for _ in 0..excess {
                    if outbox.pop_first().map_err(db_err)?.is_none() {
                        break;
                    }
                }
                let dropped = read(&meta, "dropped")?.unwrap_or(0);
                meta.insert("dropped", dropped.saturating_add(excess))
                    .map_err(db_err)?;
                if !was_full {
                    tracing::warn!(
                        "the analytics outbox is full ({max} events, [analytics] max_outbox_events): \
                         dropping the oldest events until the shipper catches up"
                    );
                }
            }
            FullPolicy::PauseAdmission => {
                if !was_full {
                    tracing::warn!(
                        "the analytics outbox is full ({max} events, [analytics] max_outbox_events): \
                         new calls are refused until the shipper drains it"
                    );
                }
            }
        }
    }
    Ok(())
}

fn read(meta: &redb::Table<'_, &str, u64>, key: &str) -> Result<Option<u64>, AnalyticsError> {
    Ok(meta.get(key).map_err(db_err)?.map(|g| g.value()))
}

/// The outbox's state, for metrics and admission.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// Events held: waiting for at least one sink.
    pub pending: u64,
    /// The bound.
    pub max: u64,
    /// Events dropped (policy `drop-oldest`) since the database was created.
    pub dropped: u64,
    /// Whether the outbox is over its bound under `pause-admission`.
    pub paused: bool,
    /// Each registered sink: how far it has delivered and how far behind it is.
    pub sinks: Vec<SinkLag>,
}

/// One sink's place in the outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkLag {
    /// `rollup`, `kafka`, `clickhouse`.
    pub name: String,
    /// The last seq it delivered.
    pub cursor: u64,
    /// Events held that it has not delivered.
    pub lag: u64,
}

/// Read the outbox's [`Status`]. Cost: one read transaction, a few lookups.
pub fn status(db: &redb::Database) -> Result<Status, AnalyticsError> {
    let txn = db.begin_read().map_err(db_err)?;
    let (first, last) = match txn.open_table(OUTBOX) {
        Ok(t) => (
            t.first().map_err(db_err)?.map(|(k, _)| k.value()),
            t.last().map_err(db_err)?.map(|(k, _)| k.value()),
        ),
        Err(redb::TableError::TableDoesNotExist(_)) => (None, None),
        Err(e) => return Err(db_err(e)),
    };
    let pending = match (first, last) {
        (Some(f), Some(l)) => l - f + 1,
        _ => 0,
    };
    let mut status = Status {
        pending,
        max: DEFAULT_MAX_OUTBOX_EVENTS,
        ..Status::default()
    };
    let mut policy = FullPolicy::DropOldest;
    match txn.open_table(META) {
        Ok(m) => {
            let get = |k: &str| -> Result<Option<u64>, AnalyticsError> {
                Ok(m.get(k).map_err(db_err)?.map(|g| g.value()))
            };
            status.max = get("max")?.unwrap_or(DEFAULT_MAX_OUTBOX_EVENTS);
            status.dropped = get("dropped")?.unwrap_or(0);
            policy = FullPolicy::from_code(get("policy")?.unwrap_or(0));
            status.sinks = cursors(&m)?
                .into_iter()
                .map(|(name, cursor)| SinkLag {
                    lag: match (first, last) {
                        (Some(f), Some(l)) => l.saturating_sub(cursor.max(f - 1)),
                        _ => 0,
                    },
                    name,
                    cursor,
                })
                .collect();
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(db_err(e)),
    }
    status.paused = policy == FullPolicy::PauseAdmission && pending > status.max;
    Ok(status)
}
