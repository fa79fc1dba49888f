//! The durable ledger of token economics: every charge (LLM tokens, fuel,
//! wall time, marketplace fees) as an immutable, idempotent [`Entry`] in the
//! node database, with daily rollups that make summaries, invoices and
//! forecasts independent of the number of entries.
//!
//! Money is always integer micro-units (`u64`); prices are per 1000 units.
//!
//! Three redb tables, all written in the same transaction as an append:
//!
//! ```text
//! ledger         id u64 → entry (compact binary, see `codec`)
//! ledger_keys    "run/node/attempt/seq/kind" → id      (idempotency: a replay never charges twice)
//! ledger_daily   (day, tenant, capsule, model|"-", kind, unit price) → (quantity, cost, count, estimated)
//! ledger_tenant_starts  id → tenant                  (where a stretch of one tenant's entries starts)
//! ledger_tenant_stretch (tenant, start id) → ()       (a tenant's stretches, without a scan)
//! ledger_fee_splits (month, id) → (author, listing, version, fee, author µ, platform µ)
//!                                                      (one per marketplace-fee entry, see `fee`)
//! ```
//!
//! A run's entries need no index of their own: their idempotency keys start
//! with `run/`, so a range of `ledger_keys` finds them. The tenant index is
//! run-length encoded: a stretch of consecutive ids of one tenant runs from
//! its start to the next start (or the last entry), and rows are written
//! only where the tenant changes — none while one tenant's calls follow
//! each other (the two per-entry index rows of index version 1 were a
//! third of a capsule call's cost on the daemon's call path). A database
//! written before it existed (or with the version-1 tables) gets it built
//! once, on the first tenant lookup ([`Ledger::ensure_indexes`];
//! `ledger_meta` records that it is done).
//!
//! The rollup key carries the unit price so an invoice line is exact per
//! price; summaries merge prices. Writers: [`Ledger::append`] commits one
//! batch per call; [`Ledger::writer`] starts a group-commit thread that
//! shares one fsync among many concurrent appenders.

mod calls;
mod civil;
mod codec;
mod events;
pub mod fee;
mod forecast;
pub mod postgres;
mod writer;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use redb::{
    Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use soma_host_api::storage::{LazyDatabase, OpenError};

pub use calls::{CallDay, FailedCall, KEPT_DAYS, LATENCY_BUCKETS, LatencyHistogram, day_number_of};
pub use civil::{civil_from_days, day_of, days_from_civil};
pub use fee::{FeeProblem, FeeSplit, fee_tags};
pub use writer::{LedgerWriter, MAX_BATCH_ENTRIES, OnCommit};

use crate::store::DataDir;

/// id → encoded [`Entry`].
const LEDGER: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("ledger");
/// Idempotency key `run/node/attempt/seq/kind` → id.
const LEDGER_KEYS: TableDefinition<'_, &str, u64> = TableDefinition::new("ledger_keys");
/// (day, tenant, capsule, model or "-", kind, unit price) → (quantity, cost, count, estimated count).
pub type DailyKey<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, u64);
/// The sums of one rollup row: (quantity, cost micros, count, estimated count).
pub type DailySums = (u64, u64, u64, u64);
const LEDGER_DAILY: TableDefinition<'_, DailyKey<'_>, (u64, u64, u64, u64)> =
    TableDefinition::new("ledger_daily");

/// id → tenant: entries from `id` up to the next start (or the last entry)
/// are all this tenant's. A row where the tenant changes, and only there.
const LEDGER_TENANT_STARTS: TableDefinition<'_, u64, &str> =
    TableDefinition::new("ledger_tenant_starts");
/// (tenant, start id): the tenant's rows of [`LEDGER_TENANT_STARTS`].
const LEDGER_TENANT_STRETCHES: TableDefinition<'_, (&str, u64), ()> =
    TableDefinition::new("ledger_tenant_stretch");
/// Index version 1 (one row per entry and index); dropped when version 2 is built.
const LEDGER_BY_RUN_V1: TableDefinition<'_, (&str, u64), ()> =
    TableDefinition::new("ledger_by_run");
/// Index version 1 (one row per entry and index); dropped when version 2 is built.
const LEDGER_BY_TENANT_V1: TableDefinition<'_, (&str, u64), ()> =
    TableDefinition::new("ledger_by_tenant");
/// Markers: `indexes` → the index version built over every entry.
const LEDGER_META: TableDefinition<'_, &str, u64> = TableDefinition::new("ledger_meta");
/// The version of the tenant index ([`LEDGER_META`] key `indexes`): 2 =
/// [`LEDGER_TENANT_STARTS`] + [`LEDGER_TENANT_STRETCHES`].
const INDEX_VERSION: u64 = 2;
/// Entries between two progress lines while the indexes are built.
const INDEX_PROGRESS_EVERY: u64 = 100_000;

/// Model column of a rollup row for entries without a model.
const NO_MODEL: &str = "-";
/// 10000-01-01T00:00:00Z: later timestamps cannot be `YYYY-MM-DD` days.
const MAX_TIME_MS: u64 = 253_402_300_800_000;
/// Most days [`Ledger::forecast`] projects.
pub const MAX_FORECAST_DAYS: u32 = 3660;

/// What was charged.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Prompt tokens sent to an LLM.
    LlmTokensInput,
    /// Completion tokens received from an LLM.
    LlmTokensOutput,
    /// Wasm fuel burned.
    Fuel,
    /// Wall-clock microseconds.
    WallTime,
    /// The marketplace's fee for a capsule call.
    MarketplaceFee,
    /// Outbound HTTP requests a call sent (the `http` capability).
    HttpRequests,
    /// Request body bytes a call sent over outbound HTTP.
    HttpBytesOut,
    /// Response body bytes a call received over outbound HTTP.
    HttpBytesIn,
}

impl Kind {
    /// Every kind, in code order.
    pub const ALL: [Kind; 8] = [
        Kind::LlmTokensInput,
        Kind::LlmTokensOutput,
        Kind::Fuel,
        Kind::WallTime,
        Kind::MarketplaceFee,
        Kind::HttpRequests,
        Kind::HttpBytesOut,
        Kind::HttpBytesIn,
    ];

    /// The serde (kebab-case) name, e.g. `llm-tokens-input`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::LlmTokensInput => "llm-tokens-input",
            Kind::LlmTokensOutput => "llm-tokens-output",
            Kind::Fuel => "fuel",
            Kind::WallTime => "wall-time",
            Kind::MarketplaceFee => "marketplace-fee",
            Kind::HttpRequests => "http-requests",
            Kind::HttpBytesOut => "http-bytes-out",
            Kind::HttpBytesIn => "http-bytes-in",
        }
    }

    /// The kind named `name` (as [`Kind::name`] prints it).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Option<Kind> {
        Kind::ALL.get(usize::from(code)).copied()
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether `month` is a `YYYY-MM` month ([`LedgerError::InvalidMonth`] if not).
pub fn check_month(month: &str) -> Result<(), LedgerError> {
    civil::parse_month(month)
        .map(|_| ())
        .ok_or_else(|| LedgerError::InvalidMonth(month.into()))
}

/// One charge. Immutable once appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    /// Assigned by the ledger on append (monotonically increasing); ignored on input.
    #[serde(default)]
    pub id: u64,
    /// When it was incurred, unix milliseconds (UTC); decides the rollup day.
    pub time_ms: u64,
    /// Who pays.
    pub tenant: String,
    /// The run it belongs to (no `/`: it is part of the idempotency key).
    pub run: String,
    /// The node of the run's graph (no `/`).
    pub node: String,
    /// Retry attempt of the node.
    pub attempt: u32,
    /// Sequence number of the charge within the attempt.
    pub seq: u32,
    /// The capsule's digest, `sha256:<hex>`.
    pub capsule: String,
    /// What was charged.
    pub kind: Kind,
    /// How many units (tokens, fuel, ms, fee units).
    pub quantity: u64,
    /// Price per 1000 units, in micro-units.
    pub unit_price_micros: u64,
    /// What was charged, in micro-units (normally [`Entry::cost_for`]).
    pub cost_micros: u64,
    /// The LLM provider, if any.
    pub provider: Option<String>,
    /// The LLM model, if any.
    pub model: Option<String>,
    /// Whether `quantity` is an estimate (e.g. tokens counted locally).
    pub estimated: bool,
}

impl Entry {
    /// Cost of `quantity` units at `unit_price_per_1k` micro-units per 1000
    /// units: `ceil(quantity * price / 1000)`, saturating at `u64::MAX`.
    pub fn cost_for(quantity: u64, unit_price_per_1k: u64) -> u64 {
        let micros = (u128::from(quantity) * u128::from(unit_price_per_1k)).div_ceil(1000);
        u64::try_from(micros).unwrap_or(u64::MAX)
    }

    /// The idempotency key: `run/node/attempt/seq/kind`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.run, self.node, self.attempt, self.seq, self.kind
        )
    }

    /// The UTC day (`YYYY-MM-DD`) the entry is rolled up under.
    pub fn day(&self) -> String {
        day_of(self.time_ms)
    }
}

/// What an append did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Appended {
    /// Ids of the entries written, in input order.
    pub inserted: Vec<u64>,
    /// Entries skipped because their idempotency key was already recorded.
    pub duplicates: usize,
}

/// Which entries [`Ledger::ls`] lists. `Default` lists everything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only this run.
    pub run: Option<String>,
    /// Only this capsule digest.
    pub capsule: Option<String>,
    /// Only entries with `time_ms >= since_ms`.
    pub since_ms: Option<u64>,
    /// Only entries with `time_ms < until_ms`.
    pub until_ms: Option<u64>,
    /// At most this many (the newest).
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(&self, e: &Entry) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == e.tenant)
            && self.run.as_ref().is_none_or(|r| *r == e.run)
            && self.capsule.as_ref().is_none_or(|c| *c == e.capsule)
            && self.since_ms.is_none_or(|s| e.time_ms >= s)
            && self.until_ms.is_none_or(|u| e.time_ms < u)
    }
}

/// What [`Ledger::summary`] groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupBy {
    /// Capsule digest.
    Capsule,
    /// Tenant.
    Tenant,
    /// LLM model (`-` for charges without one).
    Model,
    /// UTC day.
    Day,
    /// [`Kind`] name.
    Kind,
}

/// One group of a summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SummaryRow {
    /// The group: a capsule digest, tenant, model, day or kind name.
    pub key: String,
    /// LLM input tokens.
    pub tokens_in: u64,
    /// LLM output tokens.
    pub tokens_out: u64,
    /// Fuel.
    pub fuel: u64,
    /// Wall time, µs.
    pub wall_us: u64,
    /// Marketplace-fee units.
    pub fee_units: u64,
    /// Outbound HTTP requests.
    pub http_requests: u64,
    /// Outbound HTTP request body bytes sent.
    pub http_bytes_out: u64,
    /// Outbound HTTP response body bytes received.
    pub http_bytes_in: u64,
    /// Total cost, micro-units.
    pub cost_micros: u64,
    /// Entries.
    pub count: u64,
    /// Entries whose quantity was estimated.
    pub estimated: u64,
}

/// One line of an [`Invoice`]: one capsule × model × kind × unit price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvoiceLine {
    /// Capsule digest.
    pub capsule: String,
    /// LLM model, if any.
    pub model: Option<String>,
    /// What was charged.
    pub kind: Kind,
    /// Units.
    pub quantity: u64,
    /// Price per 1000 units, micro-units.
    pub unit_price_micros: u64,
    /// Sum of the entries' costs (each rounded up on its own), micro-units.
    pub cost_micros: u64,
    /// Entries.
    pub count: u64,
    /// Entries whose quantity was estimated.
    pub estimated: u64,
}

/// A tenant's bill for one calendar month (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invoice {
    /// Who pays.
    pub tenant: String,
    /// `YYYY-MM`.
    pub month: String,
    /// Sorted by capsule, model, kind, unit price.
    pub lines: Vec<InvoiceLine>,
    /// Sum of the lines' costs, micro-units.
    pub total_micros: u64,
}

/// A cost projection from daily history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    /// How it was computed.
    pub method: String,
    /// `(day, cost micros)` from the tenant's first charged day through the
    /// last complete day; days without charges are 0.
    pub daily_history: Vec<(String, u64)>,
    /// Sum of `projected_daily`.
    pub projected_total_micros: u64,
    /// One projected cost per day after the history.
    pub projected_daily: Vec<u64>,
    /// Mean absolute percentage error of the method on the last 7 days of
    /// history when fit on the days before; `None` with < 14 days.
    pub backtest_mape_percent: Option<f64>,
}

/// What [`Ledger::check_integrity`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IntegrityReport {
    /// Rows in `ledger`.
    pub entries: u64,
    /// Rows in `ledger_keys`.
    pub keys: u64,
    /// Rows in `ledger_daily`.
    pub rollup_rows: u64,
    /// Whether everything is consistent.
    pub ok: bool,
    /// What is wrong (the first [`MAX_PROBLEMS`]).
    pub problems: Vec<String>,
    /// Marketplace-fee problems, typed (the first [`MAX_PROBLEMS`]; each is
    /// also in `problems`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fee_problems: Vec<FeeProblem>,
}

/// Most problems an [`IntegrityReport`] lists.
pub const MAX_PROBLEMS: usize = 50;

impl IntegrityReport {
    fn problem(&mut self, p: String) {
        self.ok = false;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        }
    }

    /// Record a marketplace-fee problem (typed and as text).
    pub fn fee_problem(&mut self, p: FeeProblem) {
        self.problem(p.to_string());
        if self.fee_problems.len() < MAX_PROBLEMS {
            self.fee_problems.push(p);
        }
    }
}

/// Why a ledger operation failed. Cheap to clone (a failed group commit
/// answers every waiter of its batch with the same error): the sources are
/// shared, not stringified, so a chain printer (`{:#}`, `error_chain`)
/// shows each cause once.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// The database could not be opened (its message names the file, the
    /// cause and what to do).
    #[error(transparent)]
    Open(Arc<OpenError>),
    /// redb failed.
    #[error(
        "the ledger database failed (check free disk space and permissions of the --data directory)"
    )]
    Database(#[source] Arc<redb::Error>),
    /// A stored entry cannot be decoded.
    #[error(
        "ledger entry {id} is unreadable: {reason} (run the integrity check and restore the database from a backup)"
    )]
    Corrupt {
        /// The entry's id.
        id: u64,
        /// What is wrong with its bytes.
        reason: &'static str,
    },
    /// An entry of a batch was refused; nothing of the batch was written.
    #[error("entry {index} of the batch was refused: {reason}; fix it and append the batch again")]
    InvalidEntry {
        /// Position in the batch.
        index: usize,
        /// Why (a validation rule, not an error of another library).
        reason: String,
    },
    /// A day argument is not `YYYY-MM-DD`.
    #[error("`{0}` is not a day; write it as YYYY-MM-DD (UTC), e.g. 2024-03-15")]
    InvalidDay(String),
    /// A month argument is not `YYYY-MM`.
    #[error("`{0}` is not a month; write it as YYYY-MM, e.g. 2024-03")]
    InvalidMonth(String),
    /// A forecast asked for too many days.
    #[error("cannot forecast {0} days; ask for at most {MAX_FORECAST_DAYS}")]
    ForecastTooLong(u32),
    /// The group-commit thread could not be started.
    #[error("cannot start the ledger writer thread (the process may be out of threads or memory)")]
    WriterSpawn(#[source] Arc<std::io::Error>),
    /// The shared PostgreSQL store failed (see its message: whether to
    /// retry, and that nothing of the failed transaction was written).
    #[error(transparent)]
    Postgres(Arc<crate::store::postgres::PgError>),
    /// The analytics outbox, written with the entries, failed.
    #[error(transparent)]
    Analytics(Arc<crate::analytics::AnalyticsError>),
    /// The group-commit thread is gone (it panicked).
    #[error("the ledger writer thread has stopped; start a new one with Ledger::writer()")]
    WriterStopped,
    /// A row of the per-capsule call statistics cannot be decoded.
    #[error(
        "the call statistics of {capsule} on day {day} are unreadable: {reason} (restore the database from a backup)"
    )]
    CorruptCallStats {
        /// The capsule digest.
        capsule: String,
        /// The UTC day number.
        day: i64,
        /// What is wrong with the bytes.
        reason: &'static str,
    },
}

impl From<OpenError> for LedgerError {
    fn from(e: OpenError) -> Self {
        Self::Open(Arc::new(e))
    }
}

impl From<crate::store::postgres::PgError> for LedgerError {
    fn from(e: crate::store::postgres::PgError) -> Self {
        Self::Postgres(Arc::new(e))
    }
}

/// The operations the ledger needs of its storage: the seam between the
/// embedded redb [`Ledger`] and the shared PostgreSQL one
/// ([`postgres::PgLedger`]). Both apply the same validation, idempotency
/// keys and rollup rows; summaries, invoices and forecasts are computed
/// from the rollup rows by the same code ([`LedgerStore::summary`], …), so
/// both backends answer alike.
pub trait LedgerStore: Send + Sync {
    /// Append `entries` in one durable transaction; entries whose
    /// idempotency key is recorded (earlier or in the batch) are skipped.
    fn append(&self, entries: &[Entry]) -> Result<Appended, LedgerError>;

    /// A group-commit writer over this store (one per process; clone it).
    fn writer(&self) -> Result<LedgerWriter, LedgerError>;

    /// Entries matching `filter`, newest (highest id) first.
    fn ls(&self, filter: &Filter) -> Result<Vec<Entry>, LedgerError>;

    /// Call `f` for each rollup row with `since <= day` (and
    /// `day <= until`), optionally only for `tenant`, in key order.
    fn scan_rollups(
        &self,
        since: &str,
        until: Option<&str>,
        tenant: Option<&str>,
        f: &mut dyn FnMut(DailyKey<'_>, DailySums),
    ) -> Result<(), LedgerError>;

    /// What `soma ledger check` reports.
    fn check_integrity(&self) -> Result<IntegrityReport, LedgerError>;

    /// Every marketplace fee charged in `month` (`YYYY-MM`, UTC; `None`:
    /// every month) with its revenue split and its entry, in (month, id)
    /// order, from one read snapshot (payouts, `soma ledger check`).
    fn fees(&self, month: Option<&str>) -> Result<Vec<(FeeSplit, Entry)>, LedgerError>;

    /// The call statistics of `capsule` per UTC day number in
    /// `from_day..=to_day`, days without calls left out (the marketplace's
    /// cost cards).
    fn call_days(
        &self,
        capsule: &str,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<(i64, CallDay)>, LedgerError>;

    /// Count that the call `run/node/attempt` of `capsule` failed at
    /// `time_ms`, once however often the attempt is replayed; whether it
    /// was new.
    fn record_call_failure(
        &self,
        run: &str,
        node: &str,
        attempt: u32,
        capsule: &str,
        time_ms: u64,
        failed: &FailedCall<'_>,
    ) -> Result<bool, LedgerError>;

    /// Sums grouped by `by` (see [`Ledger::summary`]).
    fn summary(
        &self,
        by: GroupBy,
        since_day: Option<&str>,
        until_day: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<SummaryRow>, LedgerError> {
        summary_of(self, by, since_day, until_day, tenant)
    }

    /// A tenant's invoice for a month (see [`Ledger::bill`]).
    fn bill(&self, tenant: &str, month: &str) -> Result<Invoice, LedgerError> {
        bill_of(self, tenant, month)
    }

    /// A forecast of `days` from the history through yesterday (UTC; see
    /// [`Ledger::forecast`]).
    fn forecast(&self, tenant: &str, days: u32) -> Result<Forecast, LedgerError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let yesterday = civil::format_day(civil::day_number(now_ms) - 1);
        forecast_of(self, tenant, days, &yesterday)
    }

    /// A forecast through `last_day` (see [`Ledger::forecast_through`]).
    fn forecast_through(
        &self,
        tenant: &str,
        days: u32,
        last_day: &str,
    ) -> Result<Forecast, LedgerError> {
        forecast_of(self, tenant, days, last_day)
    }
}

impl LedgerStore for Ledger {
    fn append(&self, entries: &[Entry]) -> Result<Appended, LedgerError> {
        Ledger::append(self, entries)
    }

    fn call_days(
        &self,
        capsule: &str,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<(i64, CallDay)>, LedgerError> {
        Ledger::call_days(self, capsule, from_day, to_day)
    }

    fn record_call_failure(
        &self,
        run: &str,
        node: &str,
        attempt: u32,
        capsule: &str,
        time_ms: u64,
        failed: &FailedCall<'_>,
    ) -> Result<bool, LedgerError> {
        Ledger::record_call_failure(self, run, node, attempt, capsule, time_ms, failed)
    }

    fn fees(&self, month: Option<&str>) -> Result<Vec<(FeeSplit, Entry)>, LedgerError> {
        match month {
            Some(m) => self.fees_of_month(m),
            None => self.all_fees(),
        }
    }

    fn writer(&self) -> Result<LedgerWriter, LedgerError> {
        Ledger::writer(self)
    }

    fn ls(&self, filter: &Filter) -> Result<Vec<Entry>, LedgerError> {
        Ledger::ls(self, filter)
    }

    fn scan_rollups(
        &self,
        since: &str,
        until: Option<&str>,
        tenant: Option<&str>,
        f: &mut dyn FnMut(DailyKey<'_>, DailySums),
    ) -> Result<(), LedgerError> {
        self.scan_daily(since, until, tenant, f)
    }

    fn check_integrity(&self) -> Result<IntegrityReport, LedgerError> {
        Ledger::check_integrity(self)
    }
}

fn db_err(e: impl Into<redb::Error>) -> LedgerError {
    LedgerError::Database(Arc::new(e.into()))
}

/// The ledger over a node database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ledger {
    db: Arc<LazyDatabase>,
}

impl Ledger {
    /// The ledger in `db`; nothing is opened until used.
    pub fn new(db: Arc<LazyDatabase>) -> Self {
        Self { db }
    }

    /// The ledger of a data directory.
    pub fn open(data: &DataDir) -> Self {
        Self::new(data.database().clone())
    }

    /// Start a group-commit thread over this ledger's database (see
    /// [`LedgerWriter`]); use one per process and clone it.
    pub fn writer(&self) -> Result<LedgerWriter, LedgerError> {
        LedgerWriter::spawn(self.db.clone())
    }

    /// Append `entries` in one durable transaction (ids are assigned; the
    /// given ones are ignored). Entries whose idempotency key is already
    /// recorded — earlier or in the same batch — are skipped.
    ///
    /// Cost: one fsync'd commit (~ms on disk) plus ~µs per entry. Prefer
    /// [`Ledger::writer`] when many threads append small batches.
    pub fn append(&self, entries: &[Entry]) -> Result<Appended, LedgerError> {
        if entries.is_empty() {
            return Ok(Appended::default());
        }
        validate(entries)?;
        let mut results = write_batch(&self.db, &[entries.into()])?;
        Ok(results.pop().unwrap_or_default())
    }

    fn read(&self) -> Result<ReadTransaction, LedgerError> {
        let db = self.db.get().map_err(LedgerError::from)?;
        db.begin_read().map_err(db_err)
    }

    /// Entries matching `filter`, newest (highest id) first.
    ///
    /// Cost: with a `run` filter, the range of idempotency keys starting
    /// with `run/` (one row per entry of the run) plus one lookup per entry;
    /// with a `tenant` filter, the tenant's stretches (one range read
    /// each for where it ends) plus one lookup per entry — both
    /// independent of the rest of the ledger; otherwise a reverse scan
    /// decoding entries until `limit` match. The first tenant
    /// lookup on a database written before the tenant index existed builds
    /// it once ([`Ledger::ensure_indexes`]).
    pub fn ls(&self, filter: &Filter) -> Result<Vec<Entry>, LedgerError> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        if filter.run.is_none() && filter.tenant.is_some() {
            self.ensure_indexes()?;
        }
        let txn = self.read()?;
        let table = match txn.open_table(LEDGER) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        let mut take = |id: u64, bytes: &[u8]| -> Result<bool, LedgerError> {
            let entry =
                codec::decode(id, bytes).map_err(|reason| LedgerError::Corrupt { id, reason })?;
            if filter.matches(&entry) {
                out.push(entry);
            }
            Ok(out.len() >= limit)
        };
        let mut get = |id: u64| -> Result<bool, LedgerError> {
            let Some(bytes) = table.get(id).map_err(db_err)? else {
                return Err(LedgerError::Corrupt {
                    id,
                    reason: "indexed but missing from the ledger table",
                });
            };
            take(id, bytes.value())
        };
        if let Some(run) = &filter.run {
            let keys = match txn.open_table(LEDGER_KEYS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(db_err(e)),
            };
            // Every key of the run starts with `run/`; `run0` is the first
            // string past them ('0' follows '/'). A run id with a '/' may
            // bring in another run's keys: `take` filters them out.
            let (from, to) = (format!("{run}/"), format!("{run}0"));
            let mut ids = Vec::new();
            for row in keys.range(from.as_str()..to.as_str()).map_err(db_err)? {
                ids.push(row.map_err(db_err)?.1.value());
            }
            ids.sort_unstable_by(|a, b| b.cmp(a));
            for id in ids {
                if get(id)? {
                    break;
                }
            }
        } else if let Some(tenant) = &filter.tenant {
            let (starts, stretches) = match (
                txn.open_table(LEDGER_TENANT_STARTS),
                txn.open_table(LEDGER_TENANT_STRETCHES),
            ) {
                (Ok(s), Ok(t)) => (s, t),
                (Err(redb::TableError::TableDoesNotExist(_)), _)
                | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(Vec::new()),
                (Err(e), _) | (_, Err(e)) => return Err(db_err(e)),
            };
            let last_id = table
                .last()
                .map_err(db_err)?
                .map_or(0, |(id, _)| id.value());
            let key = tenant.as_str();
            'stretches: for row in stretches
                .range((key, 0)..=(key, u64::MAX))
                .map_err(db_err)?
                .rev()
            {
                let first = row.map_err(db_err)?.0.value().1;
                let end = match starts
                    .range(first.saturating_add(1)..)
                    .map_err(db_err)?
                    .next()
                {
                    Some(next) => next.map_err(db_err)?.0.value().saturating_sub(1),
                    None => last_id,
                };
                for id in (first..=end).rev() {
                    if get(id)? {
                        break 'stretches;
                    }
                }
            }
        } else {
            for row in table.iter().map_err(db_err)?.rev() {
                let (id, bytes) = row.map_err(db_err)?;
                if take(id.value(), bytes.value())? {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Build the tenant index over entries written before it existed (or
    /// indexed by version 1, whose tables it drops), once per database
    /// (later calls read one marker row). Logs progress every
    /// [`INDEX_PROGRESS_EVERY`] entries on a large ledger.
    ///
    /// Cost: nothing after the first time; the first time, one write
    /// transaction over every entry (~seconds per million entries).
    pub fn ensure_indexes(&self) -> Result<(), LedgerError> {
        {
            let txn = self.read()?;
            match txn.open_table(LEDGER_META) {
                Ok(t) => {
                    if t.get("indexes").map_err(db_err)?.map(|g| g.value()) == Some(INDEX_VERSION) {
                        return Ok(());
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(db_err(e)),
            }
        }
        let db = self.db.get().map_err(LedgerError::from)?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut meta = txn.open_table(LEDGER_META).map_err(db_err)?;
            // Another thread may have built them while this one waited.
            if meta.get("indexes").map_err(db_err)?.map(|g| g.value()) != Some(INDEX_VERSION) {
                // Rebuilt from the entries: stretches written since the
                // last build are in there too.
                txn.delete_table(LEDGER_BY_RUN_V1).map_err(db_err)?;
                txn.delete_table(LEDGER_BY_TENANT_V1).map_err(db_err)?;
                txn.delete_table(LEDGER_TENANT_STARTS).map_err(db_err)?;
                txn.delete_table(LEDGER_TENANT_STRETCHES).map_err(db_err)?;
                let ledger = txn.open_table(LEDGER).map_err(db_err)?;
                let mut index = TenantIndex::open(&txn)?;
                let total = ledger.len().map_err(db_err)?;
                if total >= INDEX_PROGRESS_EVERY {
                    tracing::info!("indexing {total} ledger entries by tenant (once)");
                }
                let mut done = 0u64;
                for row in ledger.iter().map_err(db_err)? {
                    let (id, bytes) = row.map_err(db_err)?;
                    let id = id.value();
                    let entry = codec::decode(id, bytes.value())
                        .map_err(|reason| LedgerError::Corrupt { id, reason })?;
                    index.add(&entry.tenant, id)?;
                    done += 1;
                    if done.is_multiple_of(INDEX_PROGRESS_EVERY) {
                        tracing::info!("indexed {done} of {total} ledger entries");
                    }
                }
                meta.insert("indexes", INDEX_VERSION).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Totals grouped by `by` over the days `since_day..=until_day`
    /// (`YYYY-MM-DD`, UTC; `None` = unbounded), optionally for one tenant.
    /// Rows are sorted by key for [`GroupBy::Day`], else by cost, highest first.
    ///
    /// Cost: a scan of the daily rollup rows in the range — independent of
    /// the number of entries.
    pub fn summary(
        &self,
        by: GroupBy,
        since_day: Option<&str>,
        until_day: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<SummaryRow>, LedgerError> {
        summary_of(self, by, since_day, until_day, tenant)
    }

    /// The invoice of `tenant` for `month` (`YYYY-MM`, UTC days).
    ///
    /// Cost: a scan of that month's rollup rows.
    pub fn bill(&self, tenant: &str, month: &str) -> Result<Invoice, LedgerError> {
        bill_of(self, tenant, month)
    }

    /// Project `tenant`'s daily cost for the next `days` days from its
    /// history through yesterday (UTC; today is incomplete).
    ///
    /// Cost: a scan of the tenant's rollup rows plus O(history days).
    pub fn forecast(&self, tenant: &str, days: u32) -> Result<Forecast, LedgerError> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let yesterday = civil::format_day(civil::day_number(now_ms) - 1);
        self.forecast_through(tenant, days, &yesterday)
    }

    /// [`Ledger::forecast`] with the history ending at `last_day`
    /// (`YYYY-MM-DD`, inclusive); the projection starts the day after.
    pub fn forecast_through(
        &self,
        tenant: &str,
        days: u32,
        last_day: &str,
    ) -> Result<Forecast, LedgerError> {
        forecast_of(self, tenant, days, last_day)
    }

    /// Every marketplace fee charged in `month` (`YYYY-MM`, UTC) with its
    /// revenue split, in id order, from one read snapshot (payouts).
    ///
    /// Cost: a range of the split table plus one entry lookup per fee.
    pub fn fees_of_month(&self, month: &str) -> Result<Vec<(FeeSplit, Entry)>, LedgerError> {
        civil::parse_month(month).ok_or_else(|| LedgerError::InvalidMonth(month.into()))?;
        let txn = self.read()?;
        fee::fees_of_month(&txn, Some(month))
    }

    /// Every marketplace fee ever charged with its revenue split (checks).
    /// Cost: a scan of the split table plus one entry lookup per fee.
    pub fn all_fees(&self) -> Result<Vec<(FeeSplit, Entry)>, LedgerError> {
        let txn = self.read()?;
        fee::fees_of_month(&txn, None)
    }

    /// Verify, in one read snapshot: every entry decodes and has exactly one
    /// idempotency key pointing at it (and no key points elsewhere), ids are
    /// strictly increasing, every rollup row equals the sums recomputed
    /// from the entries, and every marketplace fee has exactly one revenue
    /// split that adds up (and every split its fee). Problems are reported,
    /// not returned as errors.
    ///
    /// Cost: a full scan of all three tables — seconds per million entries.
    pub fn check_integrity(&self) -> Result<IntegrityReport, LedgerError> {
        let txn = self.read()?;
        let mut report = IntegrityReport {
            ok: true,
            ..IntegrityReport::default()
        };
        let open_err = |e: redb::TableError| match e {
            redb::TableError::TableDoesNotExist(_) => None,
            e => Some(db_err(e)),
        };
        let entries = match txn.open_table(LEDGER) {
            Ok(t) => Some(t),
            Err(e) => open_err(e).map_or(Ok(None), Err)?,
        };
        let keys = match txn.open_table(LEDGER_KEYS) {
            Ok(t) => Some(t),
            Err(e) => open_err(e).map_or(Ok(None), Err)?,
        };
        let daily = match txn.open_table(LEDGER_DAILY) {
            Ok(t) => Some(t),
            Err(e) => open_err(e).map_or(Ok(None), Err)?,
        };
        let mut recomputed: BTreeMap<OwnedDailyKey, Sums> = BTreeMap::new();
        let mut fees: BTreeMap<u64, Entry> = BTreeMap::new();
        // (id, tenant) of every entry.
        let mut tenants: Vec<(u64, String)> = Vec::new();
        if let Some(entries) = &entries {
            let mut prev: Option<u64> = None;
            for row in entries.iter().map_err(db_err)? {
                let (id, bytes) = row.map_err(db_err)?;
                let id = id.value();
                report.entries += 1;
                if prev.is_some_and(|p| p >= id) {
                    report.problem(format!("entry ids not strictly increasing at {id}"));
                }
                prev = Some(id);
                let entry = match codec::decode(id, bytes.value()) {
                    Ok(e) => e,
                    Err(reason) => {
                        report.problem(format!("entry {id} does not decode: {reason}"));
                        continue;
                    }
                };
                let key = entry.key();
                let mapped = match &keys {
                    Some(k) => k.get(key.as_str()).map_err(db_err)?.map(|g| g.value()),
                    None => None,
                };
                if mapped != Some(id) {
                    report.problem(format!(
                        "entry {id} has key {key} but that key maps to {mapped:?}"
                    ));
                }
                recomputed
                    .entry(OwnedDailyKey::of(&entry))
                    .or_default()
                    .add(&entry);
                tenants.push((id, entry.tenant.clone()));
                if entry.kind == Kind::MarketplaceFee {
                    fees.insert(id, entry);
                }
            }
        }
        let mut fee_problems = Vec::new();
        fee::check(&txn, &fees, &mut fee_problems)?;
        for p in fee_problems {
            report.fee_problem(p);
        }
        if let Some(keys) = &keys {
            report.keys = keys.len().map_err(db_err)?;
        }
        if report.keys != report.entries {
            report.problem(format!(
                "{} idempotency keys for {} entries",
                report.keys, report.entries
            ));
        }
        // Once built, the tenant index puts every entry in a stretch of its
        // own tenant, and both of its tables hold the same starts.
        let indexed = match txn.open_table(LEDGER_META) {
            Ok(t) => t.get("indexes").map_err(db_err)?.map(|g| g.value()) == Some(INDEX_VERSION),
            Err(e) => open_err(e).map_or(Ok(false), Err)?,
        };
        if indexed {
            let mut starts: BTreeMap<u64, String> = BTreeMap::new();
            if let Some(t) = match txn.open_table(LEDGER_TENANT_STARTS) {
                Ok(t) => Some(t),
                Err(e) => open_err(e).map_or(Ok(None), Err)?,
            } {
                for row in t.iter().map_err(db_err)? {
                    let (id, tenant) = row.map_err(db_err)?;
                    starts.insert(id.value(), tenant.value().to_owned());
                }
            }
            let mut stretches = 0usize;
            if let Some(t) = match txn.open_table(LEDGER_TENANT_STRETCHES) {
                Ok(t) => Some(t),
                Err(e) => open_err(e).map_or(Ok(None), Err)?,
            } {
                for row in t.iter().map_err(db_err)? {
                    let (key, _) = row.map_err(db_err)?;
                    let (tenant, first) = key.value();
                    stretches += 1;
                    if starts.get(&first).map(String::as_str) != Some(tenant) {
                        report.problem(format!(
                            "tenant index: {tenant}'s stretch at {first} is not a start of {tenant}"
                        ));
                    }
                }
            }
            if stretches != starts.len() {
                report.problem(format!(
                    "tenant index: {stretches} stretches for {} starts",
                    starts.len()
                ));
            }
            for (id, tenant) in &tenants {
                let at = starts.range(..=*id).next_back().map(|(_, t)| t);
                if at != Some(tenant) {
                    report.problem(format!(
                        "entry {id} of tenant {tenant} is not in that tenant's index"
                    ));
                }
            }
        }
        let mut stored: BTreeMap<OwnedDailyKey, Sums> = BTreeMap::new();
        if let Some(daily) = &daily {
            for row in daily.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                report.rollup_rows += 1;
                let k = k.value();
                let v = v.value();
                stored.insert(
                    OwnedDailyKey::from_row(k),
                    Sums {
                        quantity: v.0,
                        cost: v.1,
                        count: v.2,
                        estimated: v.3,
                    },
                );
            }
        }
        for (k, want) in &recomputed {
            match stored.get(k) {
                Some(got) if got == want => {}
                got => report.problem(format!("rollup {k:?} is {got:?}, entries sum to {want:?}")),
            }
        }
        for (k, got) in &stored {
            if !recomputed.contains_key(k) {
                report.problem(format!("rollup {k:?} is {got:?} but no entry has that key"));
            }
        }
        Ok(report)
    }

    /// Call `f` for each rollup row with `since <= day` (and `day <= until`),
    /// optionally only for `tenant`.
    fn scan_daily(
        &self,
        since: &str,
        until: Option<&str>,
        tenant: Option<&str>,
        mut f: impl FnMut(DailyKey<'_>, (u64, u64, u64, u64)),
    ) -> Result<(), LedgerError> {
        let txn = self.read()?;
        let table = match txn.open_table(LEDGER_DAILY) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(db_err(e)),
        };
        let start: DailyKey<'_> = (since, "", "", "", "", 0);
        for row in table.range(start..).map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let k = k.value();
            if until.is_some_and(|u| k.0 > u) {
                break;
            }
            if tenant.is_some_and(|t| t != k.1) {
                continue;
            }
            f(k, v.value());
        }
        Ok(())
    }
}

/// [`LedgerStore::summary`] over any store's rollup rows.
fn summary_of<S: LedgerStore + ?Sized>(
    store: &S,
    by: GroupBy,
    since_day: Option<&str>,
    until_day: Option<&str>,
    tenant: Option<&str>,
) -> Result<Vec<SummaryRow>, LedgerError> {
    let since = since_day.map(checked_day).transpose()?.unwrap_or_default();
    let until = until_day.map(checked_day).transpose()?;
    let mut groups: HashMap<String, SummaryRow> = HashMap::new();
    store.scan_rollups(since, until, tenant, &mut |k, v| {
        let key = match by {
            GroupBy::Capsule => k.2,
            GroupBy::Tenant => k.1,
            GroupBy::Model => k.3,
            GroupBy::Day => k.0,
            GroupBy::Kind => k.4,
        };
        let row = match groups.get_mut(key) {
            Some(row) => row,
            None => groups.entry(key.to_owned()).or_insert_with(|| SummaryRow {
                key: key.to_owned(),
                ..SummaryRow::default()
            }),
        };
        let (quantity, cost, count, estimated) = v;
        let slot = match Kind::from_name(k.4) {
            Some(Kind::LlmTokensInput) => &mut row.tokens_in,
            Some(Kind::LlmTokensOutput) => &mut row.tokens_out,
            Some(Kind::Fuel) => &mut row.fuel,
            Some(Kind::WallTime) => &mut row.wall_us,
            Some(Kind::HttpRequests) => &mut row.http_requests,
            Some(Kind::HttpBytesOut) => &mut row.http_bytes_out,
            Some(Kind::HttpBytesIn) => &mut row.http_bytes_in,
            Some(Kind::MarketplaceFee) | None => &mut row.fee_units,
        };
        *slot = slot.saturating_add(quantity);
        row.cost_micros = row.cost_micros.saturating_add(cost);
        row.count = row.count.saturating_add(count);
        row.estimated = row.estimated.saturating_add(estimated);
    })?;
    let mut rows: Vec<SummaryRow> = groups.into_values().collect();
    if by == GroupBy::Day {
        rows.sort_by(|a, b| a.key.cmp(&b.key));
    } else {
        rows.sort_by(|a, b| b.cost_micros.cmp(&a.cost_micros).then(a.key.cmp(&b.key)));
    }
    Ok(rows)
}

/// [`LedgerStore::bill`] over any store's rollup rows.
fn bill_of<S: LedgerStore + ?Sized>(
    store: &S,
    tenant: &str,
    month: &str,
) -> Result<Invoice, LedgerError> {
    let (first, last) =
        civil::parse_month(month).ok_or_else(|| LedgerError::InvalidMonth(month.into()))?;
    let (first, last) = (civil::format_day(first), civil::format_day(last));
    type LineKey = (String, String, &'static str, u64);
    let mut lines: BTreeMap<LineKey, InvoiceLine> = BTreeMap::new();
    store.scan_rollups(&first, Some(&last), Some(tenant), &mut |k, v| {
        let Some(kind) = Kind::from_name(k.4) else {
            return;
        };
        let line = lines
            .entry((k.2.to_owned(), k.3.to_owned(), kind.name(), k.5))
            .or_insert_with(|| InvoiceLine {
                capsule: k.2.to_owned(),
                model: (k.3 != NO_MODEL).then(|| k.3.to_owned()),
                kind,
                quantity: 0,
                unit_price_micros: k.5,
                cost_micros: 0,
                count: 0,
                estimated: 0,
            });
        line.quantity = line.quantity.saturating_add(v.0);
        line.cost_micros = line.cost_micros.saturating_add(v.1);
        line.count = line.count.saturating_add(v.2);
        line.estimated = line.estimated.saturating_add(v.3);
    })?;
    let lines: Vec<InvoiceLine> = lines.into_values().collect();
    let total_micros = lines
        .iter()
        .fold(0u64, |t, l| t.saturating_add(l.cost_micros));
    Ok(Invoice {
        tenant: tenant.into(),
        month: month.into(),
        lines,
        total_micros,
    })
}

/// [`LedgerStore::forecast_through`] over any store's rollup rows.
fn forecast_of<S: LedgerStore + ?Sized>(
    store: &S,
    tenant: &str,
    days: u32,
    last_day: &str,
) -> Result<Forecast, LedgerError> {
    if days > MAX_FORECAST_DAYS {
        return Err(LedgerError::ForecastTooLong(days));
    }
    let last =
        civil::parse_day(last_day).ok_or_else(|| LedgerError::InvalidDay(last_day.into()))?;
    let mut by_day: BTreeMap<i64, u64> = BTreeMap::new();
    store.scan_rollups("", Some(last_day), Some(tenant), &mut |k, v| {
        if let Some(d) = civil::parse_day(k.0) {
            let c = by_day.entry(d).or_default();
            *c = c.saturating_add(v.1);
        }
    })?;
    let daily_history: Vec<(String, u64)> = match by_day.first_key_value() {
        Some((&first, _)) => (first..=last)
            .map(|d| (civil::format_day(d), by_day.get(&d).copied().unwrap_or(0)))
            .collect(),
        None => Vec::new(),
    };
    let costs: Vec<u64> = daily_history.iter().map(|(_, c)| *c).collect();
    let projected_daily = forecast::project(&costs, days as usize);
    Ok(Forecast {
        method: forecast::METHOD.into(),
        projected_total_micros: projected_daily
            .iter()
            .fold(0u64, |t, c| t.saturating_add(*c)),
        projected_daily,
        backtest_mape_percent: forecast::backtest_mape(&costs),
        daily_history,
    })
}

fn checked_day(day: &str) -> Result<&str, LedgerError> {
    civil::parse_day(day)
        .map(|_| day)
        .ok_or_else(|| LedgerError::InvalidDay(day.into()))
}

/// Refuse entries that would corrupt keys or days; called before any write so
/// one bad batch never fails a group commit it shares.
fn validate(entries: &[Entry]) -> Result<(), LedgerError> {
    for (index, e) in entries.iter().enumerate() {
        let reason = if e.run.contains('/') {
            "run must not contain `/` (it is part of the idempotency key)"
        } else if e.node.contains('/') {
            "node must not contain `/` (it is part of the idempotency key)"
        } else if e.time_ms >= MAX_TIME_MS {
            "time_ms is after year 9999; it must be unix milliseconds"
        } else if e.model.as_deref() == Some(NO_MODEL) {
            "model `-` is reserved for charges without a model; use None"
        } else if let Some(reason) = fee::refusal(e) {
            reason
        } else {
            continue;
        };
        return Err(LedgerError::InvalidEntry {
            index,
            reason: reason.into(),
        });
    }
    Ok(())
}

/// Rollup sums of one row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sums {
    quantity: u64,
    cost: u64,
    count: u64,
    estimated: u64,
}

impl Sums {
    fn add(&mut self, e: &Entry) {
        self.quantity = self.quantity.saturating_add(e.quantity);
        self.cost = self.cost.saturating_add(e.cost_micros);
        self.count = self.count.saturating_add(1);
        self.estimated = self.estimated.saturating_add(u64::from(e.estimated));
    }

    fn merge(&mut self, o: &Sums) {
        self.quantity = self.quantity.saturating_add(o.quantity);
        self.cost = self.cost.saturating_add(o.cost);
        self.count = self.count.saturating_add(o.count);
        self.estimated = self.estimated.saturating_add(o.estimated);
    }
}

/// An owned rollup key; the day is kept as a day number until written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct OwnedDailyKey {
    day: String,
    tenant: String,
    capsule: String,
    model: String,
    kind: String,
    unit_price: u64,
}

impl OwnedDailyKey {
    fn of(e: &Entry) -> Self {
        Self {
            day: e.day(),
            tenant: e.tenant.clone(),
            capsule: e.capsule.clone(),
            model: e.model.clone().unwrap_or_else(|| NO_MODEL.into()),
            kind: e.kind.name().into(),
            unit_price: e.unit_price_micros,
        }
    }

    fn from_row(k: DailyKey<'_>) -> Self {
        Self {
            day: k.0.into(),
            tenant: k.1.into(),
            capsule: k.2.into(),
            model: k.3.into(),
            kind: k.4.into(),
            unit_price: k.5,
        }
    }

    fn as_row(&self) -> DailyKey<'_> {
        (
            &self.day,
            &self.tenant,
            &self.capsule,
            &self.model,
            &self.kind,
            self.unit_price,
        )
    }
}

/// One append request: its entries and, for a capsule call, what its
/// analytics event says beyond them ([`CallFacts`](crate::analytics::CallFacts):
/// ignored by stores without an outbox).
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    /// The entries, appended all together or not at all.
    pub entries: &'a [Entry],
    /// The call's name, peak memory and emitted events.
    pub facts: Option<&'a crate::analytics::CallFacts>,
    /// Analytics events written as they are, in the same transaction,
    /// whether or not any entry is new (a refusal's `budget-exceeded`
    /// has no entry; its id makes a repeat harmless).
    pub events: &'a [crate::analytics::Event],
}

impl<'a> From<&'a [Entry]> for Charge<'a> {
    fn from(entries: &'a [Entry]) -> Self {
        Self {
            entries,
            facts: None,
            events: &[],
        }
    }
}

/// Apply each batch of `requests` in one write transaction with immediate
/// durability; one [`Appended`] per request. Entries must be validated.
fn write_batch(db: &LazyDatabase, requests: &[Charge<'_>]) -> Result<Vec<Appended>, LedgerError> {
    let db = db.get().map_err(LedgerError::from)?;
    let mut txn = db.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    let results = write_in(&txn, requests)?;
    txn.commit().map_err(db_err)?;
    Ok(results)
}

/// Append `requests` inside the caller's write transaction (validated,
/// idempotent, rollups updated) — for state that must commit atomically with
/// its charges, such as a DAG node's completion.
pub(crate) fn append_in(
    txn: &WriteTransaction,
    requests: &[Charge<'_>],
) -> Result<Vec<Appended>, LedgerError> {
    for r in requests {
        validate(r.entries)?;
    }
    write_in(txn, requests)
}

fn write_in(txn: &WriteTransaction, requests: &[Charge<'_>]) -> Result<Vec<Appended>, LedgerError> {
    let mut ledger = txn.open_table(LEDGER).map_err(db_err)?;
    let mut keys = txn.open_table(LEDGER_KEYS).map_err(db_err)?;
    let mut daily = txn.open_table(LEDGER_DAILY).map_err(db_err)?;
    let mut tenant_index = TenantIndex::open(txn)?;
    let mut next_id = ledger
        .last()
        .map_err(db_err)?
        .map_or(1, |(id, _)| id.value().saturating_add(1));
    if next_id == 1 {
        // A new ledger: its indexes are complete from the first entry.
        let mut meta = txn.open_table(LEDGER_META).map_err(db_err)?;
        meta.insert("indexes", INDEX_VERSION).map_err(db_err)?;
    }
    let mut deltas: BTreeMap<OwnedDailyKey, Sums> = BTreeMap::new();
    let mut calls = calls::Rollup::default();
    // Consecutive entries usually share a day; format it once per change.
    let mut day_cache: (i64, String) = (i64::MIN, String::new());
    let mut buf = Vec::with_capacity(256);
    let mut results = Vec::with_capacity(requests.len());
    let mut outbox = Vec::new();
    let mut written: Vec<&Entry> = Vec::new();
    for request in requests {
        let mut appended = Appended::default();
        written.clear();
        for e in request.entries {
            let key = e.key();
            // Insert first (duplicates are rare); put the old id back on a hit.
            let prev = keys
                .insert(key.as_str(), next_id)
                .map_err(db_err)?
                .map(|g| g.value());
            if let Some(old) = prev {
                keys.insert(key.as_str(), old).map_err(db_err)?;
                appended.duplicates += 1;
                continue;
            }
            buf.clear();
            codec::encode(e, &mut buf);
            ledger.insert(next_id, buf.as_slice()).map_err(db_err)?;
            tenant_index.add(&e.tenant, next_id)?;
            fee::write_split(txn, next_id, e)?;
            appended.inserted.push(next_id);
            written.push(e);
            next_id = next_id.saturating_add(1);
            calls.add(e);
            let day = civil::day_number(e.time_ms);
            if day_cache.0 != day {
                day_cache = (day, civil::format_day(day));
            }
            let mut k = OwnedDailyKey {
                day: String::new(),
                tenant: e.tenant.clone(),
                capsule: e.capsule.clone(),
                model: e.model.clone().unwrap_or_else(|| NO_MODEL.into()),
                kind: e.kind.name().into(),
                unit_price: e.unit_price_micros,
            };
            k.day.clone_from(&day_cache.1);
            deltas.entry(k).or_default().add(e);
        }
        events::of(request, &written, &mut outbox);
        outbox.extend_from_slice(request.events);
        results.push(appended);
    }
    crate::analytics::outbox::push(txn, &outbox)
        .map_err(|e| LedgerError::Analytics(Arc::new(e)))?;
    for (k, delta) in &deltas {
        let row = k.as_row();
        let mut sums = daily
            .get(row)
            .map_err(db_err)?
            .map(|g| {
                let v = g.value();
                Sums {
                    quantity: v.0,
                    cost: v.1,
                    count: v.2,
                    estimated: v.3,
                }
            })
            .unwrap_or_default();
        sums.merge(delta);
        daily
            .insert(row, (sums.quantity, sums.cost, sums.count, sums.estimated))
            .map_err(db_err)?;
    }
    calls.write(txn)?;
    Ok(results)
}

/// Writes the tenant index: a start row (in both tables) where an entry's
/// tenant differs from the one before it, nothing otherwise. Cost: one read
/// of the last start when opened; two rows per change of tenant.
struct TenantIndex<'txn> {
    starts: redb::Table<'txn, u64, &'static str>,
    stretches: redb::Table<'txn, (&'static str, u64), ()>,
    /// The tenant of the last entry indexed.
    current: Option<String>,
}

impl<'txn> TenantIndex<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, LedgerError> {
        let starts = txn.open_table(LEDGER_TENANT_STARTS).map_err(db_err)?;
        let stretches = txn.open_table(LEDGER_TENANT_STRETCHES).map_err(db_err)?;
        let current = starts
            .last()
            .map_err(db_err)?
            .map(|(_, tenant)| tenant.value().to_owned());
        Ok(Self {
            starts,
            stretches,
            current,
        })
    }

    /// Entry `id` (higher than every id indexed before) is `tenant`'s.
    fn add(&mut self, tenant: &str, id: u64) -> Result<(), LedgerError> {
        if self.current.as_deref() == Some(tenant) {
            return Ok(());
        }
        self.starts.insert(id, tenant).map_err(db_err)?;
        self.stretches.insert((tenant, id), ()).map_err(db_err)?;
        self.current = Some(tenant.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
