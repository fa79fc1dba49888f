//! External sinks: consumers of the outbox other than the embedded
//! rollups — a Kafka topic ([`kafka`]) and a ClickHouse table
//! ([`clickhouse`]).
//!
//! Each runs on a thread of its own ([`spawn`]) with a cursor in the outbox
//! (see [`super::outbox`]): it reads the events after its cursor, delivers
//! them, then moves the cursor. A crash between the two delivers those
//! events again (at least once); every event carries a unique `id`, so
//! the reader deduplicates (ClickHouse's `ReplacingMergeTree` by id, a
//! Kafka consumer by id). A sink that is down never blocks calls or the
//! other sinks: its events wait in the bounded outbox, and its failures are
//! logged (with backoff, up to 30 s) and counted ([`SinkStats`]).

pub mod clickhouse;
pub mod kafka;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use soma_host_api::storage::LazyDatabase;

use super::outbox::{self, Held};

/// How a sink batches: at most `max` events per delivery; fewer than `min`
/// wait up to `linger` for more (ClickHouse's guidance: 1,000 rows or 1 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Most events per delivery.
    pub max: usize,
    /// Fewest events worth a delivery before `linger` has passed.
    pub min: usize,
    /// How long a smaller batch waits for more.
    pub linger: Duration,
}

/// Why a delivery failed (it is retried with backoff; nothing is lost).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The Kafka client failed (connection, metadata, produce).
    #[error("kafka: the client failed (connecting, reading the topic's metadata or producing)")]
    Kafka(#[source] rskafka::client::error::Error),
    /// The broker did not answer in time.
    #[error(
        "kafka: no answer within {0} ms (is the broker up? [analytics.kafka] brokers, timeout_ms)"
    )]
    KafkaTimeout(u64),
    /// The topic does not exist and `create_topic` is off.
    #[error(
        "kafka: topic `{0}` does not exist (create it, or set [analytics.kafka] create_topic = true)"
    )]
    NoTopic(String),
    /// ClickHouse could not be reached.
    #[error("clickhouse: the request failed (is the server up? [analytics.clickhouse] url)")]
    Http(#[source] reqwest::Error),
    /// ClickHouse answered with an error.
    #[error("clickhouse: HTTP {status}: {body}")]
    ClickHouse {
        /// The HTTP status.
        status: u16,
        /// The start of ClickHouse's message.
        body: String,
    },
    /// The sink's thread could not start its runtime.
    #[error("cannot start the sink's I/O runtime")]
    Runtime(#[source] std::io::Error),
    /// A held event is not valid JSON of the schema (restore from a backup).
    #[error("outbox event {seq} is unreadable")]
    Corrupt {
        /// Its seq.
        seq: u64,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// One external sink.
pub trait Sink: Send + 'static {
    /// The sink's name: its cursor in the outbox, its metrics label.
    fn name(&self) -> &'static str;
    /// How it batches.
    fn pace(&self) -> Pace;
    /// Deliver `events` (oldest first). On an error the same events (and
    /// maybe more) come again later.
    fn deliver(&mut self, events: &[Held]) -> Result<(), SinkError>;
}

/// A sink's counters since the daemon started, for `/metrics`.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Events delivered (a redelivery after a failure counts again).
    pub delivered: AtomicU64,
    /// Failed deliveries.
    pub failures: AtomicU64,
    /// Deliveries that succeeded.
    pub batches: AtomicU64,
}

/// A running sink thread; stops (after its current delivery) when dropped.
#[derive(Debug)]
pub struct Running {
    /// The sink's name.
    pub name: &'static str,
    /// Its counters.
    pub stats: Arc<SinkStats>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start `sink`'s thread: deliver what its cursor has not passed, sleep
/// `idle` when nothing is pending, back off (doubling, up to 30 s) after a
/// failure.
pub fn spawn(
    db: Arc<LazyDatabase>,
    mut sink: Box<dyn Sink>,
    idle: Duration,
) -> std::io::Result<Running> {
    let name = sink.name();
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(SinkStats::default());
    let (flag, counters) = (stop.clone(), stats.clone());
    let thread = thread::Builder::new()
        .name(format!("soma-sink-{name}"))
        .spawn(move || {
            let pace = sink.pace();
            let mut backoff = idle;
            let mut waiting: Option<Instant> = None;
            while !flag.load(Ordering::Relaxed) {
                let pending = db
                    .get()
                    .map_err(super::AnalyticsError::from)
                    .and_then(|d| outbox::pending_for(&d, name, pace.max.max(1)));
                let pause = match pending {
                    Err(e) => {
                        tracing::warn!(
                            "analytics sink {name}: cannot read the outbox: {}",
                            soma_host_api::error_chain(&e)
                        );
                        idle.max(Duration::from_secs(1))
                    }
                    Ok(events) if events.is_empty() => {
                        waiting = None;
                        idle
                    }
                    Ok(events)
                        if events.len() < pace.min
                            && waiting.get_or_insert_with(Instant::now).elapsed() < pace.linger =>
                    {
                        idle.min(pace.linger)
                    }
                    Ok(events) => {
                        waiting = None;
                        let last = events.last().map_or(0, |h| h.seq);
                        let delivered = sink
                            .deliver(&events)
                            .map_err(|e| soma_host_api::error_chain(&e));
                        let moved = delivered.and_then(|()| {
                            db.get()
                                .map_err(super::AnalyticsError::from)
                                .and_then(|d| outbox::advance(&d, name, last))
                                .map_err(|e| soma_host_api::error_chain(&e))
                        });
                        match moved {
                            Ok(()) => {
                                counters
                                    .delivered
                                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                                counters.batches.fetch_add(1, Ordering::Relaxed);
                                backoff = idle;
                                Duration::ZERO
                            }
                            Err(why) => {
                                counters.failures.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    "analytics sink {name}: delivery of {} events failed; \
                                     retrying in {} ms (the events wait in the outbox): {why}",
                                    events.len(),
                                    backoff.as_millis()
                                );
                                let p = backoff;
                                backoff = (backoff * 2).min(Duration::from_secs(30));
                                p
                            }
                        }
                    }
                };
                let mut left = pause;
                while !left.is_zero() && !flag.load(Ordering::Relaxed) {
                    let step = left.min(Duration::from_millis(50));
                    thread::sleep(step);
                    left -= step;
                }
            }
        })?;
    Ok(Running {
        name,
        stats,
        stop,
        thread: Some(thread),
    })
}
