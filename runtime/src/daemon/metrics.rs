//! Prometheus metrics of the daemon, served as text (format 0.0.4) on
//! `GET /metrics`.
//!
//! Every series is named `soma_*`. Label values that come from requests or
//! tenants (capsule names, tenants, models, routes, digests, outcome
//! classes, rejection reasons) are bounded: each label keeps at most
//! [`MAX_LABEL_VALUES`] distinct values (fewer for the small closed sets),
//! and the rest share the series labelled [`OTHER`], so a hostile or
//! buggy client cannot grow the exposition without bound.
//!
//! | series | type | labels |
//! |---|---|---|
//! | `soma_calls_total` | counter | `capsule`, `outcome` (`ok` or the failure class) |
//! | `soma_call_duration_seconds` | histogram | `capsule` |
//! | `soma_fuel_consumed_total` | counter | `digest` (first 12 hex digits of the capsule's sha256) |
//! | `soma_wall_time_seconds_total` | counter | `digest` |
//! | `soma_llm_tokens_total` | counter | `model`, `direction` (`input` / `output`) |
//! | `soma_cost_micros_total` | counter | `tenant` (`all` unless `daemon.metrics_tenant_labels`) |
//! | `soma_ledger_entries_total` | counter | `kind` |
//! | `soma_http_requests_total` | counter | `route`, `method`, `status` |
//! | `soma_http_request_duration_seconds` | histogram | `route` |
//! | `soma_http_outbound_requests_total` | counter | `outcome` (`ok` / `denied` / `error` / `quota`) |
//! | `soma_http_outbound_bytes_total` | counter | `direction` (`in` / `out`) |
//! | `soma_rejected_total` | counter | `reason` |
//! | `soma_runs_started_total` | counter | `kind` (`call` / `dag`) |
//! | `soma_runs_finished_total` | counter | `kind`, `status` |
//! | `soma_active_runs` | gauge | — |
//! | `soma_queue_depth` | gauge | — |
//! | `soma_capsule_cache_hits_total` | counter | — |
//! | `soma_capsule_cache_misses_total` | counter | — |
//! | `soma_aot_cache_hits_total` | counter | — |
//! | `soma_aot_cache_misses_total` | counter | — |
//! | `soma_aot_cache_bytes` | gauge | — |
//! | `soma_errors_total` | counter | `source` (`request` / `call` / `node`), `class` (error code or failure class) |
//! | `soma_console_sessions` | gauge | — |
//! | `soma_analytics_outbox_events` | gauge | — |
//! | `soma_analytics_outbox_dropped_events` | gauge | — (since the database was created) |
//! | `soma_analytics_sink_lag_events` | gauge | `sink` (`rollup` / `kafka` / `clickhouse`) |
//! | `soma_analytics_sink_delivered_total` | counter | `sink` (external sinks; redeliveries count again) |
//! | `soma_analytics_sink_failures_total` | counter | `sink` |
//!
//! Hot paths ([`Metrics::call`], [`Metrics::http`]) find their series in
//! a per-thread cache keyed by the label values (no lock, no shared write),
//! then update atomics and the histogram's short mutex. A label value
//! allocates once per thread, the first time that thread sees it; after
//! that nothing allocates.

mod recent;

use std::{
    borrow::Borrow,
    cell::RefCell,
    collections::HashMap,
    fmt,
    hash::Hash,
    sync::{Arc, PoisonError, RwLock, atomic::AtomicU64, atomic::Ordering},
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use thread_local::ThreadLocal;

use crate::ledger::{Entry, Kind};

pub use recent::{ErrorRecord, ErrorSource, RecentErrors};

/// Every metric family the daemon exports, by the name its `# TYPE` line
/// gives (histograms add `_bucket`, `_sum` and `_count` samples). A family
/// appears in [`Metrics::render`]'s output once it has a series.
pub const FAMILIES: [&str; 28] = [
    "soma_calls_total",
    "soma_call_duration_seconds",
    "soma_fuel_consumed_total",
    "soma_wall_time_seconds_total",
    "soma_llm_tokens_total",
    "soma_cost_micros_total",
    "soma_ledger_entries_total",
    "soma_http_requests_total",
    "soma_http_request_duration_seconds",
    "soma_http_outbound_requests_total",
    "soma_http_outbound_bytes_total",
    "soma_rejected_total",
    "soma_runs_started_total",
    "soma_runs_finished_total",
    "soma_active_runs",
    "soma_queue_depth",
    "soma_capsule_cache_hits_total",
    "soma_capsule_cache_misses_total",
    "soma_aot_cache_hits_total",
    "soma_aot_cache_misses_total",
    "soma_aot_cache_bytes",
    "soma_errors_total",
    "soma_console_sessions",
    "soma_analytics_outbox_events",
    "soma_analytics_outbox_dropped_events",
    "soma_analytics_sink_lag_events",
    "soma_analytics_sink_delivered_total",
    "soma_analytics_sink_failures_total",
];

/// Most distinct values one label keeps (per parent series); later values
/// are counted under [`OTHER`].
pub const MAX_LABEL_VALUES: usize = 1000;

/// The label value that collects every value past the cap.
pub const OTHER: &str = "other";

/// The `tenant` label of every series when tenant labels are off.
pub const ALL_TENANTS: &str = "all";

/// Most distinct values of the small, closed label sets (outcome classes,
/// rejection reasons, run kinds and statuses).
const MAX_CLASS_VALUES: usize = 32;

/// Most distinct `route` values (the router's templates, plus whatever the
/// daemon reports for unmatched paths).
const MAX_ROUTES: usize = 256;

/// Most distinct (method, status) pairs per route: more than HTTP has.
const MAX_REQUEST_KINDS: usize = 4096;

/// Most distinct LLM models.
const MAX_MODELS: usize = 256;

/// Hex digits of a capsule digest kept in the `digest` label.
const DIGEST_LABEL_LEN: usize = 12;

/// Latency buckets, seconds: 1–2.5–5 steps from 10 µs to 10 s.
const LATENCY_BUCKETS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// HTTP methods kept as label values; anything else is `other`.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    capsule: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CapsuleLabel {
    capsule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DigestLabel {
    digest: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// The `outcome` values of `soma_http_outbound_requests_total`, in the
/// order of [`Metrics::set_http_outbound`]'s counters.
const OUTBOUND_OUTCOMES: [&str; 4] = ["ok", "denied", "error", "quota"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunEndLabels {
    kind: String,
    status: String,
}

/// A histogram family whose series all use [`LATENCY_BUCKETS`].
type Latency<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Series handles by label value (or tuple of values), created on first
/// use, at most `cap` distinct keys (later keys share the `overflow`
/// key's series). The handles share their atomics with the registered
/// family, so updating one updates what `render` prints.
///
/// Reads go through a per-thread cache first, so the hot path writes no
/// shared memory but the metric's own atomics: a shared `RwLock` costs
/// ~150 ns per read when two cores hammer it, the cache ~10 ns.
struct Bounded<K: Send, V: Send + Sync> {
    shared: RwLock<HashMap<K, Arc<V>>>,
    local: ThreadLocal<RefCell<HashMap<K, Arc<V>>>>,
    cap: usize,
}

/// Series by one string label value; past the cap, [`OTHER`].
type ByName<V> = Bounded<String, V>;

impl<K: Send, V: Send + Sync> fmt::Debug for Bounded<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.shared.read().map_or(0, |m| m.len());
        f.debug_struct("Bounded")
            .field("len", &len)
            .field("cap", &self.cap)
            .finish()
    }
}

impl<K: Hash + Eq + Send, V: Send + Sync> Bounded<K, V> {
    fn new(cap: usize) -> Self {
        Self {
            shared: RwLock::new(HashMap::new()),
            local: ThreadLocal::new(),
            cap,
        }
    }

    /// Run `f` on the series of `key`, creating it with `make(label)` if
    /// new (`label` is `key`, or `overflow` past the cap). Cost: a
    /// thread-local hash lookup when this thread has seen `key`; else a
    /// read lock (and, once per new key, a write lock and allocations).
    fn with_key<Q, R>(
        &self,
        key: &Q,
        overflow: &Q,
        make: impl FnOnce(&Q) -> V,
        f: impl FnOnce(&V) -> R,
    ) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let local = self.local.get_or(|| RefCell::new(HashMap::new()));
        // `try_`: a reentrant call (none today) takes the shared path.
        if let Ok(cache) = local.try_borrow()
            && let Some(series) = cache.get(key)
        {
            return f(series);
        }
        let series = self.shared_series(key, overflow, make);
        if let Ok(mut cache) = local.try_borrow_mut()
            && cache.len() <= self.cap.saturating_mul(2)
        {
            cache.insert(key.to_owned(), series.clone());
        }
        f(&series)
    }

    fn shared_series<Q>(&self, key: &Q, overflow: &Q, make: impl FnOnce(&Q) -> V) -> Arc<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        {
            let map = self.shared.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(series) = map.get(key) {
                return series.clone();
            }
            if map.len() >= self.cap
                && let Some(series) = map.get(overflow)
            {
                return series.clone();
            }
        }
        let mut map = self.shared.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(series) = map.get(key) {
            return series.clone();
        }
        let label = if map.len() >= self.cap { overflow } else { key };
        map.entry(label.to_owned())
            .or_insert_with(|| Arc::new(make(label)))
            .clone()
    }
}

impl<V: Send + Sync> ByName<V> {
    /// [`Bounded::with_key`] for one string label: past the cap, [`OTHER`].
    fn with<R>(&self, value: &str, make: impl FnOnce(&str) -> V, f: impl FnOnce(&V) -> R) -> R {
        self.with_key(value, OTHER, make, f)
    }
}

/// The series of one capsule name.
#[derive(Debug)]
struct CapsuleSeries {
    name: String,
    duration: Histogram,
    outcomes: ByName<Counter>,
}

/// The series of one capsule digest.
#[derive(Debug)]
struct DigestSeries {
    fuel: Counter,
    wall_seconds: Counter<f64, AtomicU64>,
}

/// The series of one LLM model.
#[derive(Debug)]
struct ModelSeries {
    input: Counter,
    output: Counter,
}

/// The series of one route.
#[derive(Debug)]
struct RouteSeries {
    name: String,
    duration: Histogram,
    /// (method, status) → requests; methods are a closed set and statuses
    /// are three digits, so this stays small.
    requests: Bounded<(&'static str, u16), Counter>,
}

/// The series of one run kind.
#[derive(Debug)]
struct RunKindSeries {
    name: String,
    started: Counter,
    finished: ByName<Counter>,
}

/// The daemon's metrics: one registry, updated by the handlers, rendered
/// on every scrape. `Send + Sync`; share it in an `Arc`.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    call_duration: Latency<CapsuleLabel>,
    capsules: ByName<CapsuleSeries>,
    fuel: Family<DigestLabel, Counter>,
    wall_seconds: Family<DigestLabel, Counter<f64, AtomicU64>>,
    digests: ByName<DigestSeries>,
    tokens: Family<TokenLabels, Counter>,
    models: ByName<ModelSeries>,
    cost: Family<TenantLabel, Counter>,
    tenants: ByName<Counter>,
    ledger_entries: [Counter; Kind::ALL.len()],
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Latency<RouteLabel>,
    routes: ByName<RouteSeries>,
    /// Capsules' outbound requests by outcome ([`OUTBOUND_OUTCOMES`]).
    outbound_requests: [Counter; 4],
    /// Capsules' outbound body bytes: in, out.
    outbound_bytes: [Counter; 2],
    rejected: Family<ReasonLabel, Counter>,
    reasons: ByName<Counter>,
    runs_started: Family<KindLabel, Counter>,
    runs_finished: Family<RunEndLabels, Counter>,
    run_kinds: ByName<RunKindSeries>,
    active_runs: Gauge,
    queue_depth: Gauge,
    cache_hits: Counter,
    cache_misses: Counter,
    aot_hits: Counter,
    aot_misses: Counter,
    aot_bytes: Gauge,
    console_sessions: Gauge,
    outbox_events: Gauge,
    outbox_dropped: Gauge,
    sink_lag: Family<SinkLabel, Gauge>,
    sink_delivered: Family<SinkLabel, Counter>,
    sink_failures: Family<SinkLabel, Counter>,
    /// Label cost by tenant name (else [`ALL_TENANTS`]).
    tenant_labels: bool,
    /// When these metrics (the daemon) started.
    started: Instant,
    /// The last failed requests, calls and DAG nodes (their counts are
    /// exported as `soma_errors_total`).
    recent: RecentErrors,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("active_runs", &self.active_runs.get())
            .field("queue_depth", &self.queue_depth.get())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The `Content-Type` of [`Metrics::render`]'s output: the Prometheus
    /// text exposition format 0.0.4.
    pub const CONTENT_TYPE: &'static str = prometheus_text::CONTENT_TYPE;

    /// Every series registered, none with a value yet. Once per daemon.
    pub fn new() -> Self {
        Self::with_cap(MAX_LABEL_VALUES)
    }

    /// [`Metrics::new`] with `cap` distinct capsule, tenant and digest values.
    fn with_cap(cap: usize) -> Self {
        let mut registry = Registry::with_prefix("soma");
        let calls = Family::default();
        registry.register(
            "calls",
            "Capsule calls finished, by capsule name and outcome (ok or the failure class)",
            calls.clone(),
        );
        let call_duration: Latency<CapsuleLabel> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "call_duration_seconds",
            "Capsule call latency, seconds, by capsule name",
            call_duration.clone(),
        );
        let fuel = Family::default();
        registry.register(
            "fuel_consumed",
            "Wasm fuel charged to the ledger, by capsule digest (first 12 hex digits)",
            fuel.clone(),
        );
        let wall_seconds = Family::default();
        registry.register(
            "wall_time_seconds",
            "Capsule wall-clock time charged to the ledger, seconds, by capsule digest",
            wall_seconds.clone(),
        );
        let tokens = Family::default();
        registry.register(
            "llm_tokens",
            "LLM tokens charged to the ledger, by model and direction (input, output)",
            tokens.clone(),
        );
        let cost = Family::default();
        registry.register(
            "cost_micros",
            "Cost charged to the ledger, micro-units of money, by tenant",
            cost.clone(),
        );
        let entries: Family<KindLabel, Counter> = Family::default();
        registry.register(
            "ledger_entries",
            "Ledger entries durably charged, by kind",
            entries.clone(),
        );
        let ledger_entries = Kind::ALL.map(|kind| {
            entries.get_or_create_owned(&KindLabel {
                kind: kind.name().to_owned(),
            })
        });
        let http_requests = Family::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status code",
            http_requests.clone(),
        );
        let http_duration: Latency<RouteLabel> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency, seconds, by route template",
            http_duration.clone(),
        );
        let outbound: Family<OutcomeLabel, Counter> = Family::default();
        registry.register(
            "http_outbound_requests",
            "Capsules' outbound HTTP requests (the http capability), by outcome: ok \
             (answered), denied (policy), error (no response), quota",
            outbound.clone(),
        );
        let outbound_requests = OUTBOUND_OUTCOMES
            .map(|outcome| outbound.get_or_create_owned(&OutcomeLabel { outcome }));
        let bytes: Family<DirectionLabel, Counter> = Family::default();
        registry.register(
            "http_outbound_bytes",
            "Capsules' outbound HTTP body bytes, by direction (in: received, out: sent)",
            bytes.clone(),
        );
        let outbound_bytes =
            ["in", "out"].map(|direction| bytes.get_or_create_owned(&DirectionLabel { direction }));
        let rejected = Family::default();
        registry.register(
            "rejected",
            "Requests refused before their handler, by reason",
            rejected.clone(),
        );
        let runs_started = Family::default();
        registry.register(
            "runs_started",
            "Runs started, by kind (call, dag)",
            runs_started.clone(),
        );
        let runs_finished = Family::default();
        registry.register(
            "runs_finished",
            "Runs finished, by kind and final status",
            runs_finished.clone(),
        );
        let active_runs = Gauge::default();
        registry.register(
            "active_runs",
            "DAG runs queued or being driven",
            active_runs.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "DAG runs waiting for a driver",
            queue_depth.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "capsule_cache_hits",
            "Capsule loads served by the engine's in-memory capsule cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "capsule_cache_misses",
            "Capsule loads that had to compile or deserialize the component",
            cache_misses.clone(),
        );
        let aot_hits = Counter::default();
        registry.register(
            "aot_cache_hits",
            "Compiles answered by a stored AOT artifact (engine.aot_cache)",
            aot_hits.clone(),
        );
        let aot_misses = Counter::default();
        registry.register(
            "aot_cache_misses",
            "Compiles the AOT artifact cache could not answer (compiled, then stored)",
            aot_misses.clone(),
        );
        let aot_bytes = Gauge::default();
        registry.register(
            "aot_cache_bytes",
            "Bytes of AOT artifacts on disk (the data directory's aot/)",
            aot_bytes.clone(),
        );
        let recent = RecentErrors::default();
        registry.register(
            "errors",
            "Failed requests (4xx/5xx, class = error code), capsule calls and DAG nodes (class = failure class) since start",
            recent.counts(),
        );
        let console_sessions = Gauge::default();
        registry.register(
            "console_sessions",
            "Signed-in web console sessions held",
            console_sessions.clone(),
        );
        let outbox_events = Gauge::default();
        registry.register(
            "analytics_outbox_events",
            "Analytics events waiting in the outbox for the shipper",
            outbox_events.clone(),
        );
        let outbox_dropped = Gauge::default();
        registry.register(
            "analytics_outbox_dropped_events",
            "Analytics events dropped because the outbox was full (analytics.when_full = drop-oldest), since the database was created",
            outbox_dropped.clone(),
        );
        let sink_lag = Family::default();
        registry.register(
            "analytics_sink_lag_events",
            "Analytics events held in the outbox that a sink has not delivered yet",
            sink_lag.clone(),
        );
        let sink_delivered = Family::default();
        registry.register(
            "analytics_sink_delivered",
            "Analytics events an external sink delivered since start (a redelivery after a failure counts again)",
            sink_delivered.clone(),
        );
        let sink_failures = Family::default();
        registry.register(
            "analytics_sink_failures",
            "Failed deliveries of an external analytics sink since start (retried with backoff)",
            sink_failures.clone(),
        );
        Self {
            registry,
            calls,
            call_duration,
            capsules: Bounded::new(cap),
            fuel,
            wall_seconds,
            digests: Bounded::new(cap),
            tokens,
            models: Bounded::new(MAX_MODELS.min(cap)),
            cost,
            tenants: Bounded::new(cap),
            ledger_entries,
            http_requests,
            http_duration,
            routes: Bounded::new(MAX_ROUTES.min(cap)),
            outbound_requests,
            outbound_bytes,
            rejected,
            reasons: Bounded::new(MAX_CLASS_VALUES),
            runs_started,
            runs_finished,
            run_kinds: Bounded::new(MAX_CLASS_VALUES),
            active_runs,
            queue_depth,
            cache_hits,
            cache_misses,
            aot_hits,
            aot_misses,
            aot_bytes,
            console_sessions,
            outbox_events,
            outbox_dropped,
            sink_lag,
            sink_delivered,
            sink_failures,
            tenant_labels: true,
            started: Instant::now(),
            recent,
        }
    }

    /// With `on`, cost is labelled by tenant name; off, every tenant's cost
    /// is summed under `tenant="all"`, so a scrape names no tenant
    /// (`daemon.metrics_tenant_labels`). [`Metrics::new`] labels by name.
    #[must_use]
    pub fn with_tenant_labels(mut self, on: bool) -> Self {
        self.tenant_labels = on;
        self
    }

    /// One capsule call finished: `outcome` is `"ok"` or the failure class
    /// (`out-of-fuel`, `deadline-exceeded`, `trap`, `capsule-error`, …);
    /// `seconds` is its latency. Every request; cost: two thread-local
    /// lookups, an atomic add and a histogram observe (~60 ns; no
    /// allocation once this thread has seen the capsule/outcome pair).
    pub fn call(&self, capsule: &str, outcome: &str, seconds: f64) {
        self.capsules.with(
            capsule,
            |name| CapsuleSeries {
                name: name.to_owned(),
                duration: self.call_duration.get_or_create_owned(&CapsuleLabel {
                    capsule: name.to_owned(),
                }),
                outcomes: Bounded::new(MAX_CLASS_VALUES),
            },
            |series| {
                series.duration.observe(seconds);
                series.outcomes.with(
                    outcome,
                    |outcome| {
                        self.calls.get_or_create_owned(&CallLabels {
                            capsule: series.name.clone(),
                            outcome: outcome.to_owned(),
                        })
                    },
                    |counter| counter.inc(),
                );
            },
        );
    }

    /// Ledger entries were durably charged: adds fuel and wall time (by
    /// capsule digest), LLM tokens (by model and direction) and cost (by
    /// tenant). Once per ledger commit; cost: two thread-local lookups and
    /// two atomic adds per entry.
    pub fn charged(&self, entries: &[Entry]) {
        for entry in entries {
            if let Some(counter) = Kind::ALL
                .iter()
                .position(|k| *k == entry.kind)
                .and_then(|i| self.ledger_entries.get(i))
            {
                counter.inc();
            }
            match entry.kind {
                Kind::Fuel | Kind::WallTime => {
                    self.digests.with(
                        digest_label(&entry.capsule),
                        |digest| {
                            let label = DigestLabel {
                                digest: digest.to_owned(),
                            };
                            DigestSeries {
                                fuel: self.fuel.get_or_create_owned(&label),
                                wall_seconds: self.wall_seconds.get_or_create_owned(&label),
                            }
                        },
                        |series| {
                            if entry.kind == Kind::Fuel {
                                series.fuel.inc_by(entry.quantity);
                            } else {
                                // Ledger wall time is in microseconds.
                                series.wall_seconds.inc_by(entry.quantity as f64 / 1e6);
                            }
                        },
                    );
                }
                Kind::LlmTokensInput | Kind::LlmTokensOutput => {
                    self.models.with(
                        entry.model.as_deref().unwrap_or("unknown"),
                        |model| {
                            let series = |direction| {
                                self.tokens.get_or_create_owned(&TokenLabels {
                                    model: model.to_owned(),
                                    direction,
                                })
                            };
                            ModelSeries {
                                input: series("input"),
                                output: series("output"),
                            }
                        },
                        |series| {
                            if entry.kind == Kind::LlmTokensInput {
                                series.input.inc_by(entry.quantity);
                            } else {
                                series.output.inc_by(entry.quantity);
                            }
                        },
                    );
                }
                Kind::MarketplaceFee
                | Kind::HttpRequests
                | Kind::HttpBytesOut
                | Kind::HttpBytesIn => {}
            }
            let tenant = if self.tenant_labels {
                entry.tenant.as_str()
            } else {
                ALL_TENANTS
            };
            self.tenants.with(
                tenant,
                |tenant| {
                    self.cost.get_or_create_owned(&TenantLabel {
                        tenant: tenant.to_owned(),
                    })
                },
                |counter| counter.inc_by(entry.cost_micros),
            );
        }
    }

    /// One HTTP request finished: `route` is the matched path template
    /// (e.g. `/v1/runs/{id}`), `method` its method (any case), `status`
    /// the status code sent, `seconds` the time to the response. Every
    /// request; cost: two thread-local lookups, an atomic add and a
    /// histogram observe.
    pub fn http(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let method = METHODS
            .iter()
            .find(|m| m.eq_ignore_ascii_case(method))
            .copied()
            .unwrap_or(OTHER);
        self.routes.with(
            route,
            |route| RouteSeries {
                name: route.to_owned(),
                duration: self.http_duration.get_or_create_owned(&RouteLabel {
                    route: route.to_owned(),
                }),
                requests: Bounded::new(MAX_REQUEST_KINDS),
            },
            |series| {
                series.duration.observe(seconds);
                series.requests.with_key(
                    &(method, status),
                    &(OTHER, 0),
                    |&(method, status)| {
                        self.http_requests.get_or_create_owned(&HttpLabels {
                            route: series.name.clone(),
                            method,
                            status,
                        })
                    },
                    Counter::inc,
                );
            },
        );
    }

    /// A request was refused before its handler: `reason` is
    /// `unauthorized`, `forbidden`, `rate-limited`, `too-many-in-flight` or
    /// `body-too-large`. Cost: a thread-local lookup and an atomic add.
    pub fn rejected(&self, reason: &str) {
        self.reasons.with(
            reason,
            |reason| {
                self.rejected.get_or_create_owned(&ReasonLabel {
                    reason: reason.to_owned(),
                })
            },
            Counter::inc,
        );
    }

    /// A run started: `kind` is `call` or `dag`.
    pub fn run_started(&self, kind: &str) {
        self.run_kind(kind, |series| {
            series.started.inc();
        });
    }

    /// A run finished: `status` is `succeeded`, `failed` or `cancelled`
    /// for a DAG run, `ok` or the failure class for a call.
    pub fn run_finished(&self, kind: &str, status: &str) {
        self.run_kind(kind, |series| {
            series.finished.with(
                status,
                |status| {
                    self.runs_finished.get_or_create_owned(&RunEndLabels {
                        kind: series.name.clone(),
                        status: status.to_owned(),
                    })
                },
                Counter::inc,
            );
        });
    }

    fn run_kind(&self, kind: &str, f: impl FnOnce(&RunKindSeries)) {
        self.run_kinds.with(
            kind,
            |kind| RunKindSeries {
                name: kind.to_owned(),
                started: self.runs_started.get_or_create_owned(&KindLabel {
                    kind: kind.to_owned(),
                }),
                finished: Bounded::new(MAX_CLASS_VALUES),
            },
            f,
        );
    }

    /// DAG runs queued or being driven; set at scrape time.
    pub fn set_active_runs(&self, n: i64) {
        self.active_runs.set(n);
    }

    /// The engine's AOT artifact-cache totals since it started
    /// (monotonic, as [`Metrics::set_engine_cache`]) and the artifacts'
    /// bytes on disk; set at scrape time.
    pub fn set_aot_cache(&self, hits: u64, misses: u64, bytes: u64) {
        self.aot_hits.inner().fetch_max(hits, Ordering::Relaxed);
        self.aot_misses.inner().fetch_max(misses, Ordering::Relaxed);
        self.aot_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Capsules' outbound HTTP since the engine started (monotonic, as
    /// [`Metrics::set_engine_cache`]); set at scrape time. No tenant or
    /// host label: the series are fixed.
    pub fn set_http_outbound(&self, t: &soma_host_api::http::Totals) {
        for (counter, n) in self
            .outbound_requests
            .iter()
            .zip([t.ok, t.denied, t.error, t.quota])
            .chain(self.outbound_bytes.iter().zip([t.bytes_in, t.bytes_out]))
        {
            counter.inner().fetch_max(n, Ordering::Relaxed);
        }
    }

    /// Console sessions held; set at scrape time.
    pub fn set_console_sessions(&self, n: usize) {
        self.console_sessions
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The analytics outbox's pending and dropped events; set at scrape time.
    pub fn set_analytics_outbox(&self, pending: u64, dropped: u64) {
        self.outbox_events
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.outbox_dropped
            .set(i64::try_from(dropped).unwrap_or(i64::MAX));
    }

    /// Each sink's lag (every registered sink, the rollups included); set at
    /// scrape time. At most a handful of series (one per sink).
    pub fn set_analytics_sink_lag(&self, sinks: &[crate::analytics::outbox::SinkLag]) {
        for s in sinks {
            self.sink_lag
                .get_or_create(&SinkLabel {
                    sink: s.name.clone(),
                })
                .set(i64::try_from(s.lag).unwrap_or(i64::MAX));
        }
    }

    /// An external sink's totals since start (monotonic); set at scrape time.
    pub fn set_analytics_sink_totals(&self, sink: &str, delivered: u64, failures: u64) {
        let label = SinkLabel {
            sink: sink.to_owned(),
        };
        self.sink_delivered
            .get_or_create(&label)
            .inner()
            .fetch_max(delivered, Ordering::Relaxed);
        self.sink_failures
            .get_or_create(&label)
            .inner()
            .fetch_max(failures, Ordering::Relaxed);
    }

    /// DAG runs waiting for a driver; set at scrape time.
    pub fn set_queue_depth(&self, n: i64) {
        self.queue_depth.set(n);
    }

    /// The engine's capsule-cache totals since it started (monotonic); set
    /// at scrape time. A smaller value than seen before is ignored, so the
    /// counters never go backwards.
    pub fn set_engine_cache(&self, hits: u64, misses: u64) {
        self.cache_hits.inner().fetch_max(hits, Ordering::Relaxed);
        self.cache_misses
            .inner()
            .fetch_max(misses, Ordering::Relaxed);
    }

    /// Requests refused before their handler since start, by reason
    /// ([`Metrics::rejected`]), sorted by reason. Cost: a read lock and
    /// one small allocation per reason.
    pub fn rejections(&self) -> Vec<(String, u64)> {
        let map = self
            .reasons
            .shared
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<(String, u64)> = map.iter().map(|(k, c)| (k.clone(), c.get())).collect();
        out.sort();
        out
    }

    /// How long since these metrics (the daemon) started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The last failed requests and calls (bounded by count and bytes).
    pub fn recent_errors(&self) -> &RecentErrors {
        &self.recent
    }

    /// The exposition text (format 0.0.4, see [`Metrics::CONTENT_TYPE`]).
    /// Once per scrape; allocates the text and takes every family's read
    /// lock in turn.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        out
    }
}

/// Bytes of the files directly in `dir` (the AOT cache: one artifact per
/// component); 0 if it does not exist. Blocking: a directory read and a
/// `stat` per file — call it on the blocking pool.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .filter(std::fs::Metadata::is_file)
            .fold(0u64, |t, m| t.saturating_add(m.len()))
    })
}

/// The `digest` label of a capsule digest `sha256:<hex>`: its first 12 hex
/// digits (enough to tell capsules apart on a dashboard).
fn digest_label(capsule: &str) -> &str {
    let hex = capsule.strip_prefix("sha256:").unwrap_or(capsule);
    hex.get(..DIGEST_LABEL_LEN).unwrap_or(hex)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use super::*;

    /// `name{labels}` → value of every sample line.
    fn samples(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("sample line");
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().expect("sample value"),
                };
                (series.to_owned(), value)
            })
            .collect()
    }

    fn value(text: &str, series: &str) -> f64 {
        *samples(text)
            .get(series)
            .unwrap_or_else(|| panic!("no sample `{series}` in:\n{text}"))
    }

    fn entry(kind: Kind, quantity: u64, cost: u64, model: Option<&str>) -> Entry {
        Entry {
            id: 0,
            time_ms: 0,
            tenant: "acme".into(),
            run: "r".into(),
            node: "n".into(),
            attempt: 0,
            seq: 0,
            capsule: format!("sha256:{}", "ab".repeat(32)),
            kind,
            quantity,
            unit_price_micros: 0,
            cost_micros: cost,
            provider: None,
            model: model.map(str::to_owned),
            estimated: false,
        }
    }

    #[test]
    fn every_series_renders_with_its_values() {
        let m = Metrics::new();
        m.call("echo", "ok", 0.000_02);
        m.call("echo", "ok", 0.003);
        m.call("echo", "out-of-fuel", 0.2);
        m.charged(&[
            entry(Kind::Fuel, 1500, 3, None),
            entry(Kind::WallTime, 2_500_000, 0, None),
            entry(Kind::LlmTokensInput, 100, 50, Some("llama3")),
            entry(Kind::LlmTokensOutput, 40, 60, Some("llama3")),
        ]);
        m.http("/v1/runs", "post", 200, 0.001);
        m.http("/v1/runs", "POST", 200, 0.002);
        m.http("/v1/runs/{id}", "GET", 404, 0.000_5);
        m.rejected("rate-limited");
        m.run_started("dag");
        m.run_finished("dag", "succeeded");
        m.set_active_runs(3);
        m.set_aot_cache(4, 2, 4096);
        m.set_console_sessions(5);
        m.set_analytics_sink_lag(&[crate::analytics::outbox::SinkLag {
            name: "kafka".into(),
            cursor: 9,
            lag: 12,
        }]);
        m.set_analytics_sink_totals("kafka", 40, 3);
        m.set_analytics_sink_totals("kafka", 30, 2);
        for _ in 0..2 {
            m.recent_errors()
                .record(1, ErrorSource::Node, "r/n", Some("acme"), "out-of-fuel");
        }
        m.recent_errors().record(
            1,
            ErrorSource::Request { status: 404 },
            "GET /v1/runs/{id}",
            None,
            "not-found",
        );
        m.set_queue_depth(2);
        m.set_engine_cache(7, 1);
        m.set_engine_cache(5, 1);
        let text = m.render();

        assert_eq!(
            value(&text, r#"soma_calls_total{capsule="echo",outcome="ok"}"#),
            2.0
        );
        assert_eq!(
            value(
                &text,
                r#"soma_calls_total{capsule="echo",outcome="out-of-fuel"}"#
            ),
            1.0
        );
        assert_eq!(
            value(&text, r#"soma_call_duration_seconds_count{capsule="echo"}"#),
            3.0
        );
        let bucket = |le: f64| {
            samples(&text)
                .into_iter()
                .find(|(k, _)| {
                    k.starts_with("soma_call_duration_seconds_bucket{")
                        && k.contains(r#"capsule="echo""#)
                        && k.split("le=\"")
                            .last()
                            .and_then(|rest| rest.split('"').next())
                            .and_then(|v| v.parse::<f64>().ok())
                            == Some(le)
                })
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no bucket le={le} in:\n{text}"))
        };
        assert_eq!(bucket(0.000_025), 1.0, "cumulative: 20 µs");
        assert_eq!(bucket(0.005), 2.0, "cumulative: 20 µs, 3 ms");
        assert_eq!(bucket(10.0), 3.0);
        assert_eq!(
            value(
                &text,
                r#"soma_call_duration_seconds_bucket{capsule="echo",le="+Inf"}"#
            ),
            3.0
        );
        assert_eq!(
            value(&text, r#"soma_fuel_consumed_total{digest="abababababab"}"#),
            1500.0
        );
        assert_eq!(
            value(
                &text,
                r#"soma_wall_time_seconds_total{digest="abababababab"}"#
            ),
            2.5
        );
        assert_eq!(
            value(
                &text,
                r#"soma_llm_tokens_total{model="llama3",direction="input"}"#
            ),
            100.0
        );
        assert_eq!(
            value(
                &text,
                r#"soma_llm_tokens_total{model="llama3",direction="output"}"#
            ),
            40.0
        );
        assert_eq!(
            value(&text, r#"soma_cost_micros_total{tenant="acme"}"#),
            113.0
        );
        assert_eq!(
            value(&text, r#"soma_ledger_entries_total{kind="fuel"}"#),
            1.0
        );
        assert_eq!(
            value(
                &text,
                r#"soma_ledger_entries_total{kind="marketplace-fee"}"#
            ),
            0.0
        );
        assert_eq!(
            value(
                &text,
                r#"soma_http_requests_total{route="/v1/runs",method="POST",status="200"}"#
            ),
            2.0
        );
        assert_eq!(
            value(
                &text,
                r#"soma_http_requests_total{route="/v1/runs/{id}",method="GET",status="404"}"#
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                r#"soma_http_request_duration_seconds_count{route="/v1/runs"}"#
            ),
            2.0
        );
        assert_eq!(
            value(&text, r#"soma_rejected_total{reason="rate-limited"}"#),
            1.0
        );
        assert_eq!(value(&text, r#"soma_runs_started_total{kind="dag"}"#), 1.0);
        assert_eq!(
            value(
                &text,
                r#"soma_runs_finished_total{kind="dag",status="succeeded"}"#
            ),
            1.0
        );
        assert_eq!(value(&text, "soma_active_runs"), 3.0);
        assert_eq!(value(&text, "soma_queue_depth"), 2.0);
        assert_eq!(
            value(&text, "soma_capsule_cache_hits_total"),
            7.0,
            "never goes back"
        );
        assert_eq!(value(&text, "soma_capsule_cache_misses_total"), 1.0);
        assert_eq!(value(&text, "soma_aot_cache_hits_total"), 4.0);
        assert_eq!(value(&text, "soma_aot_cache_misses_total"), 2.0);
        assert_eq!(value(&text, "soma_aot_cache_bytes"), 4096.0);
        assert_eq!(value(&text, "soma_console_sessions"), 5.0);
        assert_eq!(
            value(&text, r#"soma_analytics_sink_lag_events{sink="kafka"}"#),
            12.0
        );
        assert_eq!(
            value(
                &text,
                r#"soma_analytics_sink_delivered_total{sink="kafka"}"#
            ),
            40.0,
            "never goes back"
        );
        assert_eq!(
            value(&text, r#"soma_analytics_sink_failures_total{sink="kafka"}"#),
            3.0
        );
        assert_eq!(
            value(
                &text,
                r#"soma_errors_total{source="node",class="out-of-fuel"}"#
            ),
            2.0
        );
        assert_eq!(
            value(
                &text,
                r#"soma_errors_total{source="request",class="not-found"}"#
            ),
            1.0
        );
        let declared: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(declared, FAMILIES, "FAMILIES lists every family, in order");
        assert!(text.contains("# TYPE soma_call_duration_seconds histogram"));
        assert!(text.contains("# TYPE soma_calls_total counter"));
        assert!(Metrics::CONTENT_TYPE.starts_with("text/plain; version=0.0.4"));
    }

    #[test]
    fn tenant_labels_off_sum_every_tenant_under_all() {
        let m = Metrics::new().with_tenant_labels(false);
        for tenant in ["acme", "globex"] {
            let mut e = entry(Kind::Fuel, 10, 7, None);
            e.tenant = tenant.into();
            m.charged(&[e]);
        }
        let text = m.render();
        assert_eq!(
            value(&text, r#"soma_cost_micros_total{tenant="all"}"#),
            14.0
        );
        assert!(!text.contains("acme") && !text.contains("globex"), "{text}");
    }

    #[test]
    fn label_values_are_capped_into_other() {
        let m = Metrics::with_cap(10);
        for k in 0..25 {
            m.call(&format!("capsule-{k}"), "ok", 0.001);
            m.call(&format!("capsule-{k}"), &format!("class-{k}"), 0.001);
        }
        for k in 0..40 {
            m.http("/v1/runs", "GET", 200, 0.001);
            m.rejected(&format!("reason-{k}"));
            let mut e = entry(Kind::Fuel, 1, 1, None);
            e.tenant = format!("tenant-{k}");
            e.capsule = format!("sha256:{k:012x}{}", "0".repeat(52));
            m.charged(&[e]);
        }
        m.http("/v1/runs", "BREW", 418, 0.001);
        let text = m.render();
        let all = samples(&text);
        let count = |prefix: &str| all.keys().filter(|k| k.starts_with(prefix)).count();
        assert_eq!(
            count("soma_call_duration_seconds_count{"),
            11,
            "10 capsules + other"
        );
        assert_eq!(count("soma_cost_micros_total{"), 11);
        assert_eq!(count("soma_fuel_consumed_total{"), 11);
        assert_eq!(count("soma_rejected_total{"), MAX_CLASS_VALUES + 1);
        assert_eq!(
            value(
                &text,
                r#"soma_call_duration_seconds_count{capsule="other"}"#
            ),
            30.0
        );
        assert_eq!(
            value(&text, r#"soma_calls_total{capsule="other",outcome="ok"}"#),
            15.0
        );
        assert_eq!(
            value(&text, r#"soma_cost_micros_total{tenant="other"}"#),
            30.0
        );
        assert_eq!(
            value(
                &text,
                r#"soma_http_requests_total{route="/v1/runs",method="other",status="418"}"#
            ),
            1.0
        );
        let total: f64 = all
            .iter()
            .filter(|(k, _)| k.starts_with("soma_calls_total{"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(total, 50.0, "nothing is lost by folding");
    }

    #[test]
    fn concurrent_updates_are_all_counted() {
        let m = Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for k in 0..10_000 {
                        let capsule = if k % 2 == 0 { "echo" } else { "calculator" };
                        m.call(capsule, "ok", 0.000_01 * f64::from(t + 1));
                        m.http("/v1/runs", "POST", 200, 0.000_1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let text = m.render();
        assert_eq!(
            value(&text, r#"soma_calls_total{capsule="echo",outcome="ok"}"#),
            20_000.0
        );
        assert_eq!(
            value(
                &text,
                r#"soma_calls_total{capsule="calculator",outcome="ok"}"#
            ),
            20_000.0
        );
        assert_eq!(
            value(
                &text,
                r#"soma_http_request_duration_seconds_count{route="/v1/runs"}"#
            ),
            40_000.0
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.call("evil\"}\nsoma_fake 1", "ok", 0.1);
        let text = m.render();
        assert!(!text.lines().any(|l| l.starts_with("soma_fake")), "{text}");
    }

    #[test]
    fn digest_labels_are_short() {
        assert_eq!(digest_label("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(digest_label("sha256:01"), "01");
        assert_eq!(digest_label("é"), "é");
    }
}
