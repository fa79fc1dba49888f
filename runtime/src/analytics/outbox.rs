//! The durable outbox: events written in the same redb write transaction as
//! the fact they describe, drained by the shipper.
//!
//! ```text
//! analytics_outbox       seq u64 → event (JSON, schema v1)
//! analytics_outbox_meta  "enabled" | "max" | "policy" | "dropped" | "full" → u64
//! ```
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
/// shipper has drained it. Cost: three small reads, one row per event (a
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
    let mut next = outbox
        .last()
        .map_err(db_err)?
        .map_or(1, |(k, _)| k.value().saturating_add(1));
    let held = first.map_or(0, |f| next - f);
    let mut buf = Vec::with_capacity(256);
    for e in events {
        buf.clear();
        serde_json::to_writer(&mut buf, e).map_err(AnalyticsError::Encode)?;
        outbox.insert(next, buf.as_slice()).map_err(db_err)?;
        next = next.saturating_add(1);
    }
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// Events waiting for the shipper.
    pub pending: u64,
    /// The bound.
    pub max: u64,
    /// Events dropped (policy `drop-oldest`) since the database was created.
    pub dropped: u64,
    /// Whether the outbox is over its bound under `pause-admission`.
    pub paused: bool,
}

/// Read the outbox's [`Status`]. Cost: one read transaction, four lookups.
pub fn status(db: &redb::Database) -> Result<Status, AnalyticsError> {
    let txn = db.begin_read().map_err(db_err)?;
    let (pending, max, dropped, policy) = {
        let pending = match txn.open_table(OUTBOX) {
            Ok(t) => {
                let first = t.first().map_err(db_err)?.map(|(k, _)| k.value());
                let last = t.last().map_err(db_err)?.map(|(k, _)| k.value());
                match (first, last) {
                    (Some(f), Some(l)) => l - f + 1,
                    _ => 0,
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(db_err(e)),
        };
        match txn.open_table(META) {
            Ok(m) => {
                let get = |k: &str| -> Result<Option<u64>, AnalyticsError> {
                    Ok(m.get(k).map_err(db_err)?.map(|g| g.value()))
                };
                (
                    pending,
                    get("max")?.unwrap_or(DEFAULT_MAX_OUTBOX_EVENTS),
                    get("dropped")?.unwrap_or(0),
                    FullPolicy::from_code(get("policy")?.unwrap_or(0)),
                )
            }
            Err(redb::TableError::TableDoesNotExist(_)) => (
                pending,
                DEFAULT_MAX_OUTBOX_EVENTS,
                0,
                FullPolicy::DropOldest,
            ),
            Err(e) => return Err(db_err(e)),
        }
    };
    Ok(Status {
        pending,
        max,
        dropped,
        paused: policy == FullPolicy::PauseAdmission && pending > max,
    })
}
