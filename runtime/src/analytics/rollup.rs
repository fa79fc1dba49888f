//! The embedded analytics store: purpose-built rollups in redb.
//!
//! ```text
//! analytics_rollup  (scope, tenant, dim, gran, bucket start ms, value) → Stats (compact binary)
//! ```
//!
//! `scope` 0 is every tenant together (tenant `""`, what the operator
//! sees), 1 is one tenant's own numbers. `dim` is what the row is grouped
//! by ([`Dim`]: everything, capsule digest, model, failure class); `gran`
//! the bucket width ([`Gran`]: minute, hour, day). Each event adds to the
//! rows of both scopes × three widths × the dimensions it has, so a query
//! reads only the rows of its window: its cost is the number of (bucket ×
//! value) rows in it — independent of how many events made them. Latency is
//! a fixed log-bucket histogram (4 buckets per octave, ≤ 19 % wide, the
//! ledger's cost-card scheme), so percentiles merge exactly to the bucket
//! across any rows.

use std::collections::{BTreeMap, HashMap};

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{AnalyticsError, Body, Event, db_err};

type Key<'a> = (u8, &'a str, u8, u8, u64, &'a str);
const ROLLUP: TableDefinition<'_, Key<'_>, &[u8]> = TableDefinition::new("analytics_rollup");

/// Most (bucket × value) rows one query may read: bounds a query's cost.
pub const MAX_QUERY_ROWS: usize = 1_000_000;
/// Most buckets one query window may span.
pub const MAX_QUERY_BUCKETS: u64 = 100_000;

/// What rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dim {
    /// Everything together (one group, key `all`).
    All,
    /// The capsule digest.
    Capsule,
    /// The LLM model.
    Model,
    /// The failure class of failed calls.
    Class,
}

impl Dim {
    fn code(self) -> u8 {
        self as u8
    }

    /// Parse `all`, `capsule`, `model` or `class`.
    pub fn parse(s: &str) -> Result<Self, AnalyticsError> {
        match s {
            "all" => Ok(Self::All),
            "capsule" => Ok(Self::Capsule),
            "model" => Ok(Self::Model),
            "class" => Ok(Self::Class),
            _ => Err(AnalyticsError::BadQuery(format!(
                "cannot group by `{s}`; use all, capsule, model or class"
            ))),
        }
    }
}

/// Bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gran {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One UTC day.
    Day,
}

impl Gran {
    const ALL: [Gran; 3] = [Gran::Minute, Gran::Hour, Gran::Day];

    fn code(self) -> u8 {
        self as u8
    }

    /// The width in ms.
    pub fn width_ms(self) -> u64 {
        match self {
            Gran::Minute => 60_000,
            Gran::Hour => 3_600_000,
            Gran::Day => 86_400_000,
        }
    }

    /// Parse `minute`, `hour` or `day`.
    pub fn parse(s: &str) -> Result<Self, AnalyticsError> {
        match s {
            "minute" => Ok(Self::Minute),
            "hour" => Ok(Self::Hour),
            "day" => Ok(Self::Day),
            _ => Err(AnalyticsError::BadQuery(format!(
                "`{s}` is not a bucket width; use minute, hour or day"
            ))),
        }
    }
}

/// Latency histogram buckets: 0–3 µs one each, then 4 per octave.
const HIST_BUCKETS: usize = 4 + 62 * 4;

fn hist_bucket(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros();
    let sub = (us >> (octave - 2)) & 3;
    (4 + (octave - 2) * 4 + sub as u32) as usize
}

/// The largest latency in bucket `b`, µs.
fn hist_upper(b: usize) -> u64 {
    if b < 4 {
        return b as u64;
    }
    let octave = (b - 4) / 4 + 2;
    let sub = ((b - 4) % 4) as u64;
    ((5 + sub) << (octave - 2)).saturating_sub(1)
}

/// The sums of one rollup row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Stats {
    n: [u64; FIELDS],
    hist: BTreeMap<u16, u64>,
}

const FIELDS: usize = 15;
const CALLS: usize = 0;
const ERRORS: usize = 1;
const WALL_US: usize = 2;
const FUEL: usize = 3;
const COST: usize = 4;
const TOKENS_IN: usize = 5;
const TOKENS_OUT: usize = 6;
const FEE: usize = 7;
const GATES: usize = 8;
const GATES_APPROVED: usize = 9;
const NODE_FAILURES: usize = 10;
const RUNS_STARTED: usize = 11;
const RUNS_FINISHED: usize = 12;
const CAPSULE_EVENTS: usize = 13;
const BUDGET_EXCEEDED: usize = 14;

const ENCODING: u8 = 1;

impl Stats {
    fn merge(&mut self, o: &Stats) {
        for (a, b) in self.n.iter_mut().zip(o.n.iter()) {
            *a = a.saturating_add(*b);
        }
        for (b, c) in &o.hist {
            let slot = self.hist.entry(*b).or_default();
            *slot = slot.saturating_add(*c);
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(ENCODING);
        for v in self.n {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for (b, c) in &self.hist {
            out.extend_from_slice(&b.to_le_bytes());
            out.extend_from_slice(&c.to_le_bytes());
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        let (&version, rest) = bytes.split_first().ok_or("empty")?;
        if version != ENCODING {
            return Err("unknown encoding");
        }
        if rest.len() < FIELDS * 8 || !(rest.len() - FIELDS * 8).is_multiple_of(10) {
            return Err("bad length");
        }
        let mut s = Stats::default();
        let (fixed, pairs) = rest.split_at(FIELDS * 8);
        for (slot, chunk) in s.n.iter_mut().zip(fixed.chunks_exact(8)) {
            *slot = u64::from_le_bytes(chunk.try_into().map_err(|_| "bad field")?);
        }
        for pair in pairs.chunks_exact(10) {
            let b = u16::from_le_bytes([pair[0], pair[1]]);
            if usize::from(b) >= HIST_BUCKETS {
                return Err("bad histogram bucket");
            }
            let c = u64::from_le_bytes(pair[2..10].try_into().map_err(|_| "bad count")?);
            s.hist.insert(b, c);
        }
        Ok(s)
    }

    fn percentile(&self, p: f64) -> Option<u64> {
        let total: u64 = self.hist.values().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, c) in &self.hist {
            seen += c;
            if seen >= rank {
                return Some(hist_upper(usize::from(*b)));
            }
        }
        self.hist.keys().last().map(|b| hist_upper(usize::from(*b)))
    }
}

/// What one event adds, and to which dimensions.
fn contribution(e: &Event) -> (Stats, Vec<(Dim, &str)>) {
    let mut s = Stats::default();
    let mut dims: Vec<(Dim, &str)> = vec![(Dim::All, "")];
    match &e.body {
        Body::Call {
            site,
            fuel,
            wall_us,
            cost_micros,
            ..
        } => {
            s.n[CALLS] = 1;
            s.n[WALL_US] = *wall_us;
            s.n[FUEL] = fuel.unwrap_or(0);
            s.n[COST] = *cost_micros;
            s.hist.insert(hist_bucket(*wall_us) as u16, 1);
            dims.push((Dim::Capsule, &site.capsule_digest));
        }
        Body::CallFailed {
            site,
            failure_class,
        } => {
            s.n[ERRORS] = 1;
            dims.push((Dim::Capsule, &site.capsule_digest));
            dims.push((Dim::Class, failure_class));
        }
        Body::LlmTokens {
            site,
            direction,
            tokens,
            model,
            cost_micros,
            ..
        } => {
            if direction == "input" {
                s.n[TOKENS_IN] = *tokens;
            } else {
                s.n[TOKENS_OUT] = *tokens;
            }
            s.n[COST] = *cost_micros;
            dims.push((Dim::Capsule, &site.capsule_digest));
            dims.push((Dim::Model, model.as_deref().unwrap_or("-")));
        }
        Body::MarketFee {
            site, cost_micros, ..
        } => {
            s.n[FEE] = *cost_micros;
            s.n[COST] = *cost_micros;
            dims.push((Dim::Capsule, &site.capsule_digest));
        }
        Body::GateVerdict { approved, .. } => {
            s.n[GATES] = 1;
            s.n[GATES_APPROVED] = u64::from(*approved);
        }
        Body::NodeFailed { failure_class, .. } => {
            s.n[NODE_FAILURES] = 1;
            dims.push((Dim::Class, failure_class));
        }
        Body::RunStarted { .. } => s.n[RUNS_STARTED] = 1,
        Body::RunFinished { .. } => s.n[RUNS_FINISHED] = 1,
        Body::CapsuleEvent { capsule_digest, .. } => {
            s.n[CAPSULE_EVENTS] = 1;
            dims.push((Dim::Capsule, capsule_digest));
        }
        Body::BudgetExceeded { .. } => s.n[BUDGET_EXCEEDED] = 1,
        Body::NodeStarted { .. } | Body::NodeSucceeded { .. } | Body::MarketInstall { .. } => {}
    }
    (s, dims)
}

type OwnedKey = (u8, String, u8, u8, u64, String);

/// Delete the rows older than `keep_ms[gran]` before `now_ms` (minute,
/// hour, day widths), for every scope, tenant and dimension, inside `txn`.
/// Returns how many (scope, tenant) prefixes were visited. Cost: one seek
/// per (scope, tenant) and one range deletion per (scope, tenant,
/// dimension, width): the rows kept are not read.
pub fn prune(
    txn: &WriteTransaction,
    now_ms: u64,
    keep_ms: [u64; 3],
) -> Result<usize, AnalyticsError> {
    const DIMS: [Dim; 4] = [Dim::All, Dim::Capsule, Dim::Model, Dim::Class];
    let mut table = txn.open_table(ROLLUP).map_err(db_err)?;
    let mut visited = 0;
    for scope in [0u8, 1] {
        // Skip-scan the tenants: seek to the first key at or after `from`.
        let mut from = String::new();
        loop {
            let tenant = {
                let start: Key<'_> = (scope, from.as_str(), 0, 0, 0, "");
                let mut rows = table.range::<Key<'_>>(start..).map_err(db_err)?;
                match rows.next() {
                    Some(row) => {
                        let (k, _) = row.map_err(db_err)?;
                        let k = k.value();
                        if k.0 != scope {
                            break;
                        }
                        k.1.to_owned()
                    }
                    None => break,
                }
            };
            visited += 1;
            for dim in DIMS {
                for (gran, keep) in Gran::ALL.into_iter().zip(keep_ms) {
                    let cutoff = now_ms.saturating_sub(keep);
                    let low: Key<'_> = (scope, tenant.as_str(), dim.code(), gran.code(), 0, "");
                    let high: Key<'_> =
                        (scope, tenant.as_str(), dim.code(), gran.code(), cutoff, "");
                    table.retain_in(low..high, |_, _| false).map_err(db_err)?;
                }
            }
            from = format!("{tenant}\0");
        }
    }
    Ok(visited)
}

/// What a batch of events adds to the rollup rows, summed per row: built
/// without the database ([`Deltas::of`]), applied in a write transaction
/// ([`Deltas::apply`]) — so the shipper holds redb's one write lock (which
/// the calls' group commit waits on) only for the rows' read-modify-write.
#[derive(Debug, Default)]
pub struct Deltas(HashMap<OwnedKey, Stats>);

impl Deltas {
    /// The sums of `events`. Cost: ~15 map updates per event.
    pub fn of(events: &[Event]) -> Self {
        let mut deltas: HashMap<OwnedKey, Stats> = HashMap::new();
        for e in events {
            let (stats, dims) = contribution(e);
            for gran in Gran::ALL {
                let w = gran.width_ms();
                let bucket = e.time_ms / w * w;
                for (scope, tenant) in [(0u8, ""), (1u8, e.tenant.as_str())] {
                    for (dim, value) in &dims {
                        let key = (
                            scope,
                            tenant.to_owned(),
                            dim.code(),
                            gran.code(),
                            bucket,
                            (*value).to_owned(),
                        );
                        deltas.entry(key).or_default().merge(&stats);
                    }
                }
            }
        }
        Self(deltas)
    }

    /// Add the sums to their rows inside `txn`. Cost: one read and one
    /// write per touched row.
    pub fn apply(self, txn: &WriteTransaction) -> Result<(), AnalyticsError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut table = txn.open_table(ROLLUP).map_err(db_err)?;
        let mut buf = Vec::with_capacity(256);
        for (k, delta) in self.0 {
            let key: Key<'_> = (k.0, &k.1, k.2, k.3, k.4, &k.5);
            let mut row = match table.get(key).map_err(db_err)? {
                Some(g) => Stats::decode(g.value()).map_err(|reason| AnalyticsError::Corrupt {
                    what: format!("rollup {k:?}"),
                    reason: reason.into(),
                })?,
                None => Stats::default(),
            };
            row.merge(&delta);
            row.encode(&mut buf);
            table.insert(key, buf.as_slice()).map_err(db_err)?;
        }
        Ok(())
    }
}

/// Fold `events` into the rollup rows inside `txn` ([`Deltas`] in one go).
pub fn ingest(txn: &WriteTransaction, events: &[Event]) -> Result<(), AnalyticsError> {
    Deltas::of(events).apply(txn)
}

/// A dashboard query: one window, one grouping, one bucket width.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Whose numbers: one tenant's, or (`None`, operators only) everyone's.
    pub tenant: Option<String>,
    /// Group by.
    pub by: Dim,
    /// Bucket width the window is read at.
    pub bucket: Gran,
    /// Window start, unix ms (rounded down to a bucket).
    pub since_ms: u64,
    /// Window end, unix ms, exclusive (rounded up to a bucket).
    pub until_ms: u64,
    /// One row per bucket and group instead of one per group.
    pub series: bool,
    /// Keep the first N groups (ordered by calls, then cost, descending).
    pub top: Option<usize>,
}

/// One answer row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueryRow {
    /// The group: `all`, a capsule digest, a model or a failure class.
    pub key: String,
    /// The bucket's start (unix ms) in a series; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_ms: Option<u64>,
    /// Metered calls.
    pub calls: u64,
    /// Failed calls.
    pub errors: u64,
    /// `errors / calls` (0 without calls).
    pub error_rate: f64,
    /// Latency percentiles, µs (upper bound of the histogram bucket).
    pub p50_us: Option<u64>,
    /// 95th percentile, µs.
    pub p95_us: Option<u64>,
    /// 99th percentile, µs.
    pub p99_us: Option<u64>,
    /// Wall time summed, µs.
    pub wall_us: u64,
    /// Fuel.
    pub fuel: u64,
    /// Cost, micro-units (calls, tokens, fees).
    pub cost_micros: u64,
    /// LLM input tokens.
    pub tokens_in: u64,
    /// LLM output tokens.
    pub tokens_out: u64,
    /// Marketplace fees, micro-units.
    pub fee_micros: u64,
    /// Gate verdicts.
    pub gates: u64,
    /// Gate verdicts that approved.
    pub gates_approved: u64,
    /// `gates_approved / gates`, when there were verdicts.
    pub approval_rate: Option<f64>,
    /// Failed node attempts.
    pub node_failures: u64,
    /// Runs started.
    pub runs_started: u64,
    /// Runs finished.
    pub runs_finished: u64,
    /// Capsule events.
    pub capsule_events: u64,
    /// Budget refusals.
    pub budget_exceeded: u64,
}

fn row_of(key: String, bucket_ms: Option<u64>, s: &Stats) -> QueryRow {
    let n = &s.n;
    QueryRow {
        key,
        bucket_ms,
        calls: n[CALLS],
        errors: n[ERRORS],
        error_rate: if n[CALLS] == 0 {
            0.0
        } else {
            n[ERRORS] as f64 / n[CALLS] as f64
        },
        p50_us: s.percentile(0.50),
        p95_us: s.percentile(0.95),
        p99_us: s.percentile(0.99),
        wall_us: n[WALL_US],
        fuel: n[FUEL],
        cost_micros: n[COST],
        tokens_in: n[TOKENS_IN],
        tokens_out: n[TOKENS_OUT],
        fee_micros: n[FEE],
        gates: n[GATES],
        gates_approved: n[GATES_APPROVED],
        approval_rate: (n[GATES] > 0).then(|| n[GATES_APPROVED] as f64 / n[GATES] as f64),
        node_failures: n[NODE_FAILURES],
        runs_started: n[RUNS_STARTED],
        runs_finished: n[RUNS_FINISHED],
        capsule_events: n[CAPSULE_EVENTS],
        budget_exceeded: n[BUDGET_EXCEEDED],
    }
}

/// Answer `q` from the rollups. Cost: one read transaction and a range
/// read of the window's rows (at most [`MAX_QUERY_ROWS`]).
pub fn query(db: &redb::Database, q: &Query) -> Result<Vec<QueryRow>, AnalyticsError> {
    let w = q.bucket.width_ms();
    let start = q.since_ms / w * w;
    let end = q.until_ms.div_ceil(w).saturating_mul(w);
    if end <= start {
        return Err(AnalyticsError::BadQuery(
            "the window is empty: `until` must be after `since`".into(),
        ));
    }
    if (end - start) / w > MAX_QUERY_BUCKETS {
        return Err(AnalyticsError::BadQuery(format!(
            "the window spans {} {:?} buckets, more than {MAX_QUERY_BUCKETS}; use a wider bucket or a shorter window",
            (end - start) / w,
            q.bucket
        )));
    }
    let txn = db.begin_read().map_err(db_err)?;
    let table = match txn.open_table(ROLLUP) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(db_err(e)),
    };
    let (scope, tenant) = match &q.tenant {
        Some(t) => (1u8, t.as_str()),
        None => (0u8, ""),
    };
    let (d, g) = (q.by.code(), q.bucket.code());
    let lo: Key<'_> = (scope, tenant, d, g, start, "");
    let hi: Key<'_> = (scope, tenant, d, g, end, "");
    let mut groups: BTreeMap<(Option<u64>, String), Stats> = BTreeMap::new();
    for (read, row) in table.range(lo..hi).map_err(db_err)?.enumerate() {
        if read >= MAX_QUERY_ROWS {
            return Err(AnalyticsError::BadQuery(format!(
                "the query reads more than {MAX_QUERY_ROWS} rows; use a wider bucket or a shorter window"
            )));
        }
        let (k, v) = row.map_err(db_err)?;
        let (_, _, _, _, bucket, value) = k.value();
        let stats = Stats::decode(v.value()).map_err(|reason| AnalyticsError::Corrupt {
            what: format!("rollup {bucket}/{value}"),
            reason: reason.into(),
        })?;
        let label = if q.by == Dim::All { "all" } else { value };
        groups
            .entry((q.series.then_some(bucket), label.to_owned()))
            .or_default()
            .merge(&stats);
    }
    let mut rows: Vec<QueryRow> = groups
        .into_iter()
        .map(|((bucket, key), s)| row_of(key, bucket, &s))
        .collect();
    if !q.series {
        rows.sort_by(|a, b| {
            b.calls
                .cmp(&a.calls)
                .then(b.cost_micros.cmp(&a.cost_micros))
                .then(b.errors.cmp(&a.errors))
                .then(a.key.cmp(&b.key))
        });
    }
    if let Some(n) = q.top {
        rows.truncate(n);
    }
    Ok(rows)
}
