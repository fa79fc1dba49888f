//! Per-capsule daily call statistics: the source of a marketplace
//! listing's cost card (`market::card`).
//!
//! ```text
//! ledger_call_stats     (capsule, day number) → CallDay (compact binary)
//! ledger_call_failures  "run/node/attempt" → day number   (idempotency of failures)
//! ```
//!
//! Everything but failures is derived from ledger entries **in the same
//! transaction** that appends them ([`Rollup`], fed by the ledger's write
//! path), so it is exactly as idempotent as the ledger: a replayed attempt
//! (same run/node/attempt/seq/kind) is neither charged nor counted again.
//! A call is its `wall-time` entry (one per metered call); its quantity (µs)
//! goes into a fixed log-bucket latency histogram, so the percentiles of
//! any set of days are mergeable. Fuel, LLM tokens, marketplace fees and
//! every entry's cost add up per capsule and day.
//!
//! Whether a call failed is not in the ledger: the call path records it
//! once per run/node/attempt ([`Ledger::record_call_failure`], one small
//! transaction per *failed* call only). Rows older than
//! [`KEPT_DAYS`] before the newest day written for a capsule are deleted
//! when that capsule's row is written, so the table stays bounded.
//!
//! On the shared PostgreSQL store (`ledger::postgres`) the same sums live
//! in `ledger_call_stats` / `ledger_call_failures` (migration 6), from the
//! same [`Rollup`] in the entries' own transaction, as columns (the
//! histogram a `BIGINT[]`) that one upsert adds to, so every daemon's
//! calls count on every daemon's cost cards.

use std::collections::BTreeMap;

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::{Entry, Kind, Ledger, LedgerError, civil, db_err};

/// (capsule digest, UTC day number since 1970-01-01) → encoded [`CallDay`].
const CALL_STATS: TableDefinition<'_, (&str, i64), &[u8]> =
    TableDefinition::new("ledger_call_stats");
/// `run/node/attempt` of a failed call → its day number.
const CALL_FAILURES: TableDefinition<'_, &str, i64> = TableDefinition::new("ledger_call_failures");

/// Who a failed call belonged to and how it failed: what its
/// `call-failed` analytics event carries.
#[derive(Debug, Clone, Copy)]
pub struct FailedCall<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The failure class (`out-of-fuel`, `trap`, …).
    pub class: &'a str,
}

/// Days of statistics kept per capsule (older rows are pruned on write).
pub const KEPT_DAYS: i64 = 31;

/// Latency buckets per power of two: a bucket is at most 1/4 of an octave
/// wide (≤ 19 % between its bounds).
const BUCKETS_PER_OCTAVE: u32 = 4;
/// Buckets of the latency histogram: 0–3 µs one each, then 4 per octave up
/// to 2^64 µs.
pub const LATENCY_BUCKETS: usize = 4 + 62 * BUCKETS_PER_OCTAVE as usize;

const ENCODING: u8 = 1;

/// The UTC day number (days since 1970-01-01) of a Unix-ms time: the day
/// key of the call statistics.
pub fn day_number_of(time_ms: u64) -> i64 {
    civil::day_number(time_ms)
}

/// A fixed log-bucket histogram of call latencies (wall time, µs):
/// mergeable by adding counts, so percentiles over any days are exact to
/// the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; LATENCY_BUCKETS],
        }
    }
}

impl LatencyHistogram {
    /// The bucket of a latency: values 0–3 have their own; from 4 on, the
    /// octave of the leading bit and the next two bits.
    pub fn bucket(us: u64) -> usize {
        if us < 4 {
            return us as usize;
        }
        let octave = 63 - us.leading_zeros(); // ≥ 2
        let sub = (us >> (octave - 2)) & 3;
        (4 + (octave - 2) * BUCKETS_PER_OCTAVE + sub as u32) as usize
    }

    /// The smallest and largest latency (µs) of a bucket, inclusive.
    pub fn bounds(bucket: usize) -> (u64, u64) {
        if bucket < 4 {
            return (bucket as u64, bucket as u64);
        }
        let i = (bucket - 4) as u32;
        let octave = i / BUCKETS_PER_OCTAVE + 2;
        let sub = u64::from(i % BUCKETS_PER_OCTAVE);
        let width = 1u64 << (octave - 2);
        let low = (4 + sub) * width;
        (low, low.saturating_add(width - 1))
    }

    /// Counts one latency.
    pub fn record(&mut self, us: u64) {
        self.counts[Self::bucket(us)] += 1;
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
    }

    /// The count of each bucket, [`LATENCY_BUCKETS`] of them.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// The histogram of these bucket counts (missing buckets are zero;
    /// more than [`LATENCY_BUCKETS`] is refused).
    pub fn from_counts(counts: &[u64]) -> Result<Self, &'static str> {
        if counts.len() > LATENCY_BUCKETS {
            return Err("more latency buckets than there are");
        }
        let mut h = Self::default();
        h.counts[..counts.len()].copy_from_slice(counts);
        Ok(h)
    }

    /// How many latencies were counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q`-quantile (0–1) as the bucket holding it: `(low, high)` µs,
    /// the true value is within. `None` when empty. The rank is the
    /// nearest-rank one: the `ceil(q × n)`-th smallest latency.
    pub fn quantile(&self, q: f64) -> Option<(u64, u64)> {
        let n = self.total();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::bounds(i));
            }
        }
        None
    }
}

/// One capsule's calls on one UTC day (or summed over days).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallDay {
    /// Metered calls (their `wall-time` entries).
    pub calls: u64,
    /// Of those, calls that failed (any failure class).
    pub failures: u64,
    /// Fuel burned.
    pub fuel: u64,
    /// LLM prompt tokens.
    pub tokens_in: u64,
    /// LLM completion tokens.
    pub tokens_out: u64,
    /// Marketplace fees charged, micro-units.
    pub fee_micros: u64,
    /// Everything charged for the capsule (fuel, wall time, tokens, fees),
    /// micro-units.
    pub cost_micros: u64,
    /// Wall time per call.
    pub latency: LatencyHistogram,
}

impl CallDay {
    /// Adds another day.
    pub fn merge(&mut self, other: &Self) {
        self.calls = self.calls.saturating_add(other.calls);
        self.failures = self.failures.saturating_add(other.failures);
        self.fuel = self.fuel.saturating_add(other.fuel);
        self.tokens_in = self.tokens_in.saturating_add(other.tokens_in);
        self.tokens_out = self.tokens_out.saturating_add(other.tokens_out);
        self.fee_micros = self.fee_micros.saturating_add(other.fee_micros);
        self.cost_micros = self.cost_micros.saturating_add(other.cost_micros);
        self.latency.merge(&other.latency);
    }

    fn add_entry(&mut self, e: &Entry) {
        let q = e.quantity;
        match e.kind {
            Kind::WallTime => {
                self.calls += 1;
                self.latency.record(q);
            }
            Kind::Fuel => self.fuel = self.fuel.saturating_add(q),
            Kind::LlmTokensInput => self.tokens_in = self.tokens_in.saturating_add(q),
            Kind::LlmTokensOutput => self.tokens_out = self.tokens_out.saturating_add(q),
            Kind::MarketplaceFee => self.fee_micros = self.fee_micros.saturating_add(e.cost_micros),
            // Counted in the call's cost only.
            Kind::HttpRequests | Kind::HttpBytesOut | Kind::HttpBytesIn => {}
        }
        self.cost_micros = self.cost_micros.saturating_add(e.cost_micros);
    }

    /// `u8 version, varint calls failures fuel tokens_in tokens_out fee
    /// cost, then (varint bucket, varint count) per non-empty bucket`.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![ENCODING];
        for v in [
            self.calls,
            self.failures,
            self.fuel,
            self.tokens_in,
            self.tokens_out,
            self.fee_micros,
            self.cost_micros,
        ] {
            put_varint(&mut out, v);
        }
        for (i, &c) in self.latency.counts.iter().enumerate() {
            if c > 0 {
                put_varint(&mut out, i as u64);
                put_varint(&mut out, c);
            }
        }
        out
    }

    fn decode(mut bytes: &[u8]) -> Result<Self, &'static str> {
        let (&version, rest) = bytes.split_first().ok_or("empty call statistics")?;
        if version != ENCODING {
            return Err("unknown call statistics encoding");
        }
        bytes = rest;
        let mut next = || varint(&mut bytes);
        let mut day = CallDay {
            calls: next()?,
            failures: next()?,
            fuel: next()?,
            tokens_in: next()?,
            tokens_out: next()?,
            fee_micros: next()?,
            cost_micros: next()?,
            latency: LatencyHistogram::default(),
        };
        while !bytes.is_empty() {
            let bucket = usize::try_from(varint(&mut bytes)?).map_err(|_| "bad bucket")?;
            let count = varint(&mut bytes)?;
            *day.latency.counts.get_mut(bucket).ok_or("bad bucket")? = count;
        }
        Ok(day)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint(bytes: &mut &[u8]) -> Result<u64, &'static str> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first().ok_or("truncated varint")?;
        *bytes = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint too long")
}

/// The call statistics of one append, merged into the table once at its
/// end (one read-modify-write per capsule and day, not per entry).
#[derive(Debug, Default)]
pub(super) struct Rollup {
    days: BTreeMap<(String, i64), CallDay>,
}

impl Rollup {
    /// Counts an entry that was newly appended (not a replay).
    pub(super) fn add(&mut self, e: &Entry) {
        let day = civil::day_number(e.time_ms);
        self.days
            .entry((e.capsule.clone(), day))
            .or_default()
            .add_entry(e);
    }

    /// The sums per (capsule, day), for a store that writes them itself
    /// (`ledger::postgres`).
    pub(super) fn into_days(self) -> BTreeMap<(String, i64), CallDay> {
        self.days
    }

    /// Merges into the table and prunes each capsule's rows older than
    /// [`KEPT_DAYS`] before the day written.
    pub(super) fn write(self, txn: &WriteTransaction) -> Result<(), LedgerError> {
        if self.days.is_empty() {
            return Ok(());
        }
        let mut table = txn.open_table(CALL_STATS).map_err(db_err)?;
        for ((capsule, day), delta) in &self.days {
            merge_row(&mut table, capsule, *day, |row| row.merge(delta))?;
        }
        Ok(())
    }
}

type StatsTable<'t> = redb::Table<'t, (&'static str, i64), &'static [u8]>;

fn merge_row(
    table: &mut StatsTable<'_>,
    capsule: &str,
    day: i64,
    change: impl FnOnce(&mut CallDay),
) -> Result<(), LedgerError> {
    let mut row = match table.get((capsule, day)).map_err(db_err)? {
        Some(bytes) => CallDay::decode(bytes.value()).map_err(corrupt(capsule, day))?,
        None => CallDay::default(),
    };
    change(&mut row);
    table
        .insert((capsule, day), row.encode().as_slice())
        .map_err(db_err)?;
    let stale: Vec<i64> = table
        .range((capsule, i64::MIN)..(capsule, day - KEPT_DAYS))
        .map_err(db_err)?
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()
        .map_err(db_err)?;
    for d in stale {
        table.remove((capsule, d)).map_err(db_err)?;
    }
    Ok(())
}

pub(super) fn corrupt(capsule: &str, day: i64) -> impl FnOnce(&'static str) -> LedgerError {
    let capsule = capsule.to_owned();
    move |reason| LedgerError::CorruptCallStats {
        capsule,
        day,
        reason,
    }
}

impl Ledger {
    /// Records that the call `run/node/attempt` of `capsule` failed, at
    /// `time_ms`. Idempotent: a replayed attempt is counted once. Cost:
    /// one durable transaction (only failed calls pay it).
    pub fn record_call_failure(
        &self,
        run: &str,
        node: &str,
        attempt: u32,
        capsule: &str,
        time_ms: u64,
        failed: &FailedCall<'_>,
    ) -> Result<bool, LedgerError> {
        let db = self.db.get().map_err(LedgerError::from)?;
        let txn = db.begin_write().map_err(db_err)?;
        let key = format!("{run}/{node}/{attempt}");
        let day = civil::day_number(time_ms);
        let new = {
            let mut keys = txn.open_table(CALL_FAILURES).map_err(db_err)?;
            let new = keys.insert(key.as_str(), day).map_err(db_err)?.is_none();
            if new {
                let mut table = txn.open_table(CALL_STATS).map_err(db_err)?;
                merge_row(&mut table, capsule, day, |row| row.failures += 1)?;
                let event = crate::analytics::Event::new(
                    &key,
                    failed.tenant,
                    time_ms,
                    crate::analytics::Body::CallFailed {
                        site: crate::analytics::Site {
                            run: run.to_owned(),
                            node: node.to_owned(),
                            attempt,
                            capsule_digest: capsule.to_owned(),
                        },
                        failure_class: failed.class.to_owned(),
                    },
                );
                crate::analytics::outbox::push(&txn, &[event])
                    .map_err(|e| LedgerError::Analytics(std::sync::Arc::new(e)))?;
            }
            new
        };
        txn.commit().map_err(db_err)?;
        Ok(new)
    }

    /// The call statistics of `capsule` per UTC day number in
    /// `from_day..=to_day` (days without calls left out). Cost: one range
    /// read of at most [`KEPT_DAYS`] + 1 small rows.
    pub fn call_days(
        &self,
        capsule: &str,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<(i64, CallDay)>, LedgerError> {
        let txn = self.read()?;
        let table = match txn.open_table(CALL_STATS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        for row in table
            .range((capsule, from_day)..=(capsule, to_day))
            .map_err(db_err)?
        {
            let (k, v) = row.map_err(db_err)?;
            let day = k.value().1;
            out.push((
                day,
                CallDay::decode(v.value()).map_err(corrupt(capsule, day))?,
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_latency_and_hold_it_within_their_bounds() {
        let mut last = None;
        for us in (0..5000u64).chain([u64::MAX / 3, u64::MAX - 1, u64::MAX]) {
            let b = LatencyHistogram::bucket(us);
            assert!(b < LATENCY_BUCKETS, "{us}");
            let (lo, hi) = LatencyHistogram::bounds(b);
            assert!(lo <= us && us <= hi, "{us} in {b}: {lo}..={hi}");
            assert!(hi - lo <= lo / 4 + 1, "bucket {b} too wide: {lo}..={hi}");
            if let Some(prev) = last {
                assert!(b >= prev, "buckets grow with latency");
            }
            last = Some(b);
        }
    }

    #[test]
    fn quantiles_are_nearest_rank_to_the_bucket() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for us in [100, 200, 300, 400, 10_000] {
            h.record(us);
        }
        let (lo, hi) = h.quantile(0.5).expect("p50");
        assert!(lo <= 300 && 300 <= hi);
        let (lo, hi) = h.quantile(0.95).expect("p95");
        assert!(lo <= 10_000 && 10_000 <= hi);
    }

    #[test]
    fn a_day_round_trips_through_its_encoding() {
        let mut d = CallDay {
            calls: 3,
            failures: 1,
            fuel: 1 << 40,
            tokens_in: 7,
            tokens_out: 9,
            fee_micros: 11,
            cost_micros: u64::MAX,
            latency: LatencyHistogram::default(),
        };
        for us in [5, 5, 1_000_000] {
            d.latency.record(us);
        }
        assert_eq!(CallDay::decode(&d.encode()), Ok(d));
        assert!(CallDay::decode(&[9]).is_err());
        assert!(CallDay::decode(&[ENCODING, 0x80]).is_err());
    }
}
