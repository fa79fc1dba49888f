//! Analytics: one event stream out of every charge and call ([`event`]), a
//! durable outbox written in the same transaction as each fact
//! ([`outbox`]), and the embedded store: a shipper that drains the outbox
//! into redb rollups ([`rollup`]) that answer the dashboard queries
//! (calls, errors, latency percentiles, cost and tokens by tenant, capsule,
//! model and failure class over minute/hour/day buckets; top-N; gate
//! approval rates) without any service.
//!
//! The embedded sink is exactly-once by construction: the shipper moves the
//! rollups' cursor in the transaction that folds the events. The external
//! sinks ([`sink`]: a Kafka topic, a ClickHouse table) each run on a
//! thread with a cursor of their own and get at-least-once delivery; their
//! readers deduplicate by [`Event::id`].

pub mod event;
pub mod outbox;
pub mod rollup;
pub mod sink;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use soma_host_api::storage::LazyDatabase;

pub use event::{Body, CallFacts, Event, SCHEMA_VERSION, Site};
pub use outbox::Status;
pub use rollup::{Dim, Gran, Query, QueryRow};

/// `[analytics]`: the outbox's bound and the shipper's pace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    /// Write events at all. Default true; false turns the outbox (and so
    /// the embedded store) off, e.g. to measure its cost.
    pub enabled: bool,
    /// Most events the outbox holds before `when_full` applies. Default 1,000,000
    /// (about 300 MB at the worst; ~300 bytes per event).
    pub max_outbox_events: u64,
    /// What happens when the outbox is full: `drop-oldest` (default; calls
    /// never wait for analytics) or `pause-admission` (nothing is lost; new
    /// calls are refused until the shipper catches up).
    pub when_full: FullPolicy,
    /// Most events the shipper folds into the rollups per transaction. Default
    /// 1,000: each transaction holds the write lock the calls' group commit
    /// waits on (~5 ms per 1,000 events; docs/analytics.md).
    pub ship_batch: u32,
    /// How long the shipper sleeps when the outbox is empty, ms. Default 200.
    pub ship_interval_ms: u64,
    /// Most of one call's own events (`events.emit`) recorded as
    /// `capsule-event`s; the rest are only returned with the call's
    /// outcome. Default 16; 0 records none. Bounds how much of the shared
    /// outbox one call can fill (with `drop-oldest`, other tenants' events
    /// would be what makes room).
    pub max_capsule_events_per_call: u32,
    /// Days the minute rows of the embedded store are kept. Default 7.
    pub minute_retention_days: u32,
    /// Days the hour rows are kept. Default 90.
    pub hour_retention_days: u32,
    /// Days the day rows are kept. Default 800 (two years and more).
    pub day_retention_days: u32,
    /// `[analytics.kafka]`: also produce every event to a Kafka topic.
    pub kafka: Option<sink::kafka::KafkaConfig>,
    /// `[analytics.clickhouse]`: also insert every event into a ClickHouse table.
    pub clickhouse: Option<sink::clickhouse::ClickHouseConfig>,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_outbox_events: outbox::DEFAULT_MAX_OUTBOX_EVENTS,
            when_full: FullPolicy::DropOldest,
            ship_batch: 1_000,
            ship_interval_ms: 200,
            max_capsule_events_per_call: 16,
            minute_retention_days: 7,
            hour_retention_days: 90,
            day_retention_days: 800,
            kafka: None,
            clickhouse: None,
        }
    }
}

impl AnalyticsConfig {
    /// Refuse zero bounds (`soma config check`).
    pub fn check(&self) -> Result<(), String> {
        if self.max_outbox_events == 0 || self.ship_batch == 0 || self.ship_interval_ms == 0 {
            return Err(
                "analytics.max_outbox_events, ship_batch and ship_interval_ms must be positive"
                    .into(),
            );
        }
        if self.minute_retention_days == 0
            || self.hour_retention_days == 0
            || self.day_retention_days == 0
        {
            return Err(
                "analytics.minute_retention_days, hour_retention_days and day_retention_days \
                 must be at least 1"
                    .into(),
            );
        }
        if let Some(k) = &self.kafka {
            k.check()?;
        }
        if let Some(c) = &self.clickhouse {
            c.check()?;
        }
        Ok(())
    }

    /// How long each bucket width's rows are kept, ms (minute, hour, day).
    pub fn retention_ms(&self) -> [u64; 3] {
        [
            self.minute_retention_days,
            self.hour_retention_days,
            self.day_retention_days,
        ]
        .map(|d| u64::from(d) * 86_400_000)
    }
}

/// What a full outbox does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// Delete the oldest events (counted, logged).
    DropOldest,
    /// Keep every event and refuse new calls until the shipper drains it.
    PauseAdmission,
}

impl FullPolicy {
    fn code(self) -> u64 {
        match self {
            Self::DropOldest => 0,
            Self::PauseAdmission => 1,
        }
    }

    fn from_code(code: u64) -> Self {
        if code == 1 {
            Self::PauseAdmission
        } else {
            Self::DropOldest
        }
    }
}

/// Why an analytics operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    /// redb failed.
    #[error(
        "the analytics tables failed (check free disk space and permissions of the --data directory)"
    )]
    Database(#[source] redb::Error),
    /// The database could not be opened.
    #[error(transparent)]
    Open(#[from] soma_host_api::storage::OpenError),
    /// An event could not be encoded.
    #[error("an analytics event could not be encoded")]
    Encode(#[source] serde_json::Error),
    /// A stored event or rollup row is unreadable.
    #[error("analytics row {what} is unreadable: {reason} (restore the database from a backup)")]
    Corrupt {
        /// Which row.
        what: String,
        /// Why.
        reason: String,
    },
    /// A query asked for something the store cannot answer.
    #[error("{0}")]
    BadQuery(String),
    /// The shipper thread could not be started.
    #[error("cannot start the analytics shipper thread (the process may be out of threads)")]
    Spawn(#[source] std::io::Error),
}

pub(crate) fn db_err(e: impl Into<redb::Error>) -> AnalyticsError {
    AnalyticsError::Database(e.into())
}

/// Fold up to `batch` events the rollups have not seen into them and move
/// their cursor past them, in one durable transaction (exactly-once into
/// the embedded store); events every sink has delivered are deleted in the
/// same transaction. Returns how many were folded.
///
/// The events are read and summed under a read transaction, so the write
/// transaction — which holds redb's one write lock, the lock the calls'
/// group commit waits on — only applies the sums and moves the cursor. It
/// first checks that the cursor is still where the read found it (only one
/// shipper moves it; otherwise nothing is written and 0 is returned).
/// Cost: a JSON decode per event and ~15 map updates outside the lock; a
/// read-modify-write per touched row and one commit inside it.
pub fn ship_once(db: &redb::Database, batch: usize) -> Result<usize, AnalyticsError> {
    use redb::ReadableDatabase as _;
    let (from, last, deltas, shipped) = {
        let read = db.begin_read().map_err(db_err)?;
        let (meta, table) = match (
            read.open_table(outbox::META),
            read.open_table(outbox::OUTBOX),
        ) {
            (Ok(m), Ok(t)) => (m, t),
            (Err(redb::TableError::TableDoesNotExist(_)), _)
            | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(0),
            (Err(e), _) | (_, Err(e)) => return Err(db_err(e)),
        };
        let from = outbox::cursor(&meta, outbox::ROLLUP)?;
        let mut events = Vec::with_capacity(batch.min(16_384));
        let mut last = None;
        for row in table
            .range(from.saturating_add(1)..)
            .map_err(db_err)?
            .take(batch)
        {
            let (k, v) = row.map_err(db_err)?;
            let seq = k.value();
            let e: Event =
                serde_json::from_slice(v.value()).map_err(|e| AnalyticsError::Corrupt {
                    what: format!("outbox {seq}"),
                    reason: e.to_string(),
                })?;
            events.push(e);
            last = Some(seq);
        }
        let Some(last) = last else {
            return Ok(0);
        };
        (from, last, rollup::Deltas::of(&events), events.len())
    };
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut meta = txn.open_table(outbox::META).map_err(db_err)?;
        if outbox::cursor(&meta, outbox::ROLLUP)? != from {
            drop(meta);
            txn.abort().map_err(db_err)?;
            return Ok(0);
        }
        deltas.apply(&txn)?;
        let mut table = txn.open_table(outbox::OUTBOX).map_err(db_err)?;
        outbox::advance_in(&mut table, &mut meta, outbox::ROLLUP, last)?;
    }
    txn.commit().map_err(db_err)?;
    Ok(shipped)
}

/// How often the shipper deletes the rollup rows past their retention.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Delete the rollup rows older than `keep_ms` (per bucket width) before
/// `now_ms`, in one durable transaction (see [`rollup::prune`]).
pub fn prune_once(
    db: &redb::Database,
    now_ms: u64,
    keep_ms: [u64; 3],
) -> Result<(), AnalyticsError> {
    let txn = db.begin_write().map_err(db_err)?;
    rollup::prune(&txn, now_ms, keep_ms)?;
    txn.commit().map_err(db_err)
}

/// Ship until the outbox is empty. Returns how many were shipped.
pub fn ship_all(db: &redb::Database, batch: usize) -> Result<usize, AnalyticsError> {
    let mut total = 0;
    loop {
        let n = ship_once(db, batch.max(1))?;
        total += n;
        if n == 0 {
            return Ok(total);
        }
    }
}

/// The background shipper: drains the outbox into the rollups, sleeping
/// `ship_interval_ms` when it is empty and backing off (up to 30 s) after a
/// failure. Stops when dropped.
#[derive(Debug)]
pub struct Shipper {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    sinks: Vec<sink::Running>,
}

impl Shipper {
    /// Record `config`'s bound and sinks in the database and start the
    /// threads (the rollups', one per external sink). Once per daemon.
    pub fn start(db: Arc<LazyDatabase>, config: &AnalyticsConfig) -> Result<Self, AnalyticsError> {
        outbox::configure(
            &*db.get()?,
            config.max_outbox_events,
            config.when_full,
            config.enabled,
        )?;
        let mut external: Vec<Box<dyn sink::Sink>> = Vec::new();
        if let Some(k) = &config.kafka {
            external.push(Box::new(sink::kafka::KafkaSink::new(k.clone())));
        }
        if let Some(c) = &config.clickhouse {
            external.push(Box::new(sink::clickhouse::ClickHouseSink::new(c.clone())));
        }
        let names: Vec<&str> = external.iter().map(|s| s.name()).collect();
        outbox::register_sinks(&*db.get()?, &names)?;
        let idle_sink = Duration::from_millis(config.ship_interval_ms.max(1));
        let sinks = external
            .into_iter()
            .map(|s| sink::spawn(db.clone(), s, idle_sink))
            .collect::<Result<Vec<_>, _>>()
            .map_err(AnalyticsError::Spawn)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let paused = Arc::new(AtomicBool::new(false));
        let pause_flag = paused.clone();
        let batch = config.ship_batch.max(1) as usize;
        let idle = Duration::from_millis(config.ship_interval_ms.max(1));
        let keep = config.retention_ms();
        let thread = thread::Builder::new()
            .name("soma-analytics-shipper".into())
            .spawn(move || {
                let mut backoff = idle;
                let mut pruned: Option<std::time::Instant> = None;
                while !flag.load(Ordering::Relaxed) {
                    if pruned.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                        pruned = Some(std::time::Instant::now());
                        let now = soma_host_api::meter::now_ms();
                        if let Err(e) = db
                            .get()
                            .map_err(AnalyticsError::from)
                            .and_then(|d| prune_once(&d, now, keep))
                        {
                            tracing::warn!(
                                "old analytics rows could not be deleted (next try in {} s): {}",
                                PRUNE_EVERY.as_secs(),
                                soma_host_api::error_chain(&e)
                            );
                        }
                    }
                    let pause = match db
                        .get()
                        .map_err(AnalyticsError::from)
                        .and_then(|d| ship_once(&d, batch))
                    {
                        Ok(0) => {
                            backoff = idle;
                            idle
                        }
                        Ok(_) => {
                            backoff = idle;
                            Duration::ZERO
                        }
                        Err(e) => {
                            tracing::warn!(
                                "the analytics shipper failed; retrying in {} ms: {}",
                                backoff.as_millis(),
                                soma_host_api::error_chain(&e)
                            );
                            let p = backoff;
                            backoff = (backoff * 2).min(Duration::from_secs(30));
                            p
                        }
                    };
                    if let Ok(s) = db
                        .get()
                        .map_err(AnalyticsError::from)
                        .and_then(|d| outbox::status(&d))
                    {
                        pause_flag.store(s.paused, Ordering::Relaxed);
                    }
                    // Sleep in short steps so a stop is noticed quickly.
                    let mut left = pause;
                    while !left.is_zero() && !flag.load(Ordering::Relaxed) {
                        let step = left.min(Duration::from_millis(50));
                        thread::sleep(step);
                        left -= step;
                    }
                }
            })
            .map_err(AnalyticsError::Spawn)?;
        Ok(Self {
            stop,
            paused,
            thread: Some(thread),
            sinks,
        })
    }

    /// The external sinks' names and counters (for `/metrics`).
    pub fn sinks(&self) -> impl Iterator<Item = (&'static str, &sink::SinkStats)> {
        self.sinks.iter().map(|s| (s.name, &*s.stats))
    }

    /// Whether the outbox is over its bound under `pause-admission` (as of
    /// the shipper's last pass, at most `ship_interval_ms` ago): admission
    /// refuses new runs while it is. Cost: one atomic load.
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
