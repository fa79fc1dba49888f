//! The ledger on the shared PostgreSQL store (`[store] backend =
//! "postgres"`): the same entries, idempotency keys, rollups and checks as
//! the redb [`Ledger`](super::Ledger), for several daemons at once.
//!
//! ```text
//! ledger_entries  id (identity) + entry columns; idem_key UNIQUE   (run/node/attempt/seq/kind)
//! ledger_daily    (day, tenant, capsule, model|"-", kind, unit price) → quantity, cost, count, estimated
//! ```
//!
//! An append is one transaction: one `INSERT … SELECT FROM unnest(…) ON
//! CONFLICT (idem_key) DO NOTHING RETURNING` for the whole batch (a key
//! already recorded — by any daemon — is skipped and counted as a
//! duplicate, so a retried charge is never doubled), then one upsert of
//! the batch's rollup deltas in key order (so two daemons lock rollup rows
//! in the same order). The group-commit writer ([`PgLedger::writer`]) puts
//! every request it has queued into that one transaction, as the redb writer
//! does. A lost deadlock is retried; any other failure rolls the whole batch
//! back and is returned (retryable when PostgreSQL was unreachable).
//!
//! A `marketplace-fee` entry's revenue split goes into `ledger_fee_splits`
//! in the same transaction (as on redb, see [`super::fee`]): a replayed
//! fee writes neither, a rolled-back batch neither.
//!
//! Per-capsule call statistics (the marketplace's cost cards, see
//! [`super::calls`]) are summed from the inserted entries by the same
//! rollup as on redb and added to `ledger_call_stats` in the same
//! transaction by one statement: an upsert whose columns add up (the
//! latency histogram a `BIGINT[]` added element by element), in key order,
//! which also prunes a capsule's rows past the 31-day window when its day
//! row is new. A failed call is counted once per run/node/attempt
//! (`ledger_call_failures`).

use std::collections::{BTreeMap, HashMap, HashSet};

use postgres::{Transaction, types::ToSql};

use super::{
    Appended, CallDay, DailyKey, DailySums, Entry, FailedCall, FeeSplit, Filter, IntegrityReport,
    KEPT_DAYS, Kind, LatencyHistogram, LedgerError, LedgerStore, LedgerWriter, OwnedDailyKey, Sums,
    calls, civil, fee, validate,
};
use crate::store::postgres::{PgError, PgStore, clamp_i64, to_i64, to_u64};

/// Times a batch that lost a deadlock to another daemon is tried again.
const CONFLICT_RETRIES: usize = 3;

/// The ledger over a [`PgStore`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgLedger {
    store: PgStore,
}

const ENTRY_COLUMNS: &str = "id, time_ms, tenant, run, node, attempt, seq, capsule, kind, \
     quantity, unit_price_micros, cost_micros, provider, model, estimated";

impl PgLedger {
    /// The ledger of `store`.
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }

    /// The store it writes to.
    pub fn store(&self) -> &PgStore {
        &self.store
    }

    /// Apply each batch of `requests` in one transaction; one [`Appended`]
    /// per request. Entries must be validated ([`validate_pg`]).
    pub(crate) fn write_batch(&self, requests: &[&[Entry]]) -> Result<Vec<Appended>, LedgerError> {
        self.transact(requests, |_, _| Ok(()))
    }

    /// Append `entries` (validated here) and run `then` with what was
    /// appended inside the same transaction, before it commits: state that
    /// must be written with its charges or not at all (a budget settle).
    pub fn append_with(
        &self,
        entries: &[Entry],
        mut then: impl FnMut(&mut Transaction<'_>, &Appended) -> Result<(), PgError>,
    ) -> Result<Appended, LedgerError> {
        validate_pg(entries)?;
        let mut results = self.transact(&[entries], |txn, appended| {
            appended.first().map_or(Ok(()), |a| then(txn, a))
        })?;
        Ok(results.pop().unwrap_or_default())
    }

    /// Append several requests (each validated by the caller with
    /// [`validate_pg`]) in one transaction and run `then` with what each
    /// appended inside it, before it commits: a group commit of charges
    /// with their budget settles.
    pub(crate) fn append_batch_with(
        &self,
        requests: &[&[Entry]],
        then: impl FnMut(&mut Transaction<'_>, &[Appended]) -> Result<(), PgError>,
    ) -> Result<Vec<Appended>, LedgerError> {
        self.transact(requests, then)
    }

    /// One transaction per try: the appends, `then`, the commit; a lost
    /// deadlock is tried again (the rolled-back try left nothing).
    fn transact(
        &self,
        requests: &[&[Entry]],
        mut then: impl FnMut(&mut Transaction<'_>, &[Appended]) -> Result<(), PgError>,
    ) -> Result<Vec<Appended>, LedgerError> {
        let mut conn = self.store.conn()?;
        let mut tries = 0;
        loop {
            let attempt = (|| {
                let mut txn = conn.transaction()?;
                let results = write_in(&mut txn, requests)?;
                then(&mut txn, &results)?;
                txn.commit()?;
                Ok::<_, PgError>(results)
            })();
            match attempt {
                Err(e) if e.is_conflict() && tries < CONFLICT_RETRIES => tries += 1,
                other => return other.map_err(LedgerError::from),
            }
        }
    }
}

/// The redb checks plus what PostgreSQL's `BIGINT` cannot hold.
pub(crate) fn validate_pg(entries: &[Entry]) -> Result<(), LedgerError> {
    validate(entries)?;
    for (index, e) in entries.iter().enumerate() {
        if [e.quantity, e.unit_price_micros, e.cost_micros, e.time_ms]
            .into_iter()
            .any(|v| to_i64(v).is_none())
        {
            return Err(LedgerError::InvalidEntry {
                index,
                reason: "quantity, unit price, cost and time must be at most 2^63 - 1 on the \
                         PostgreSQL store"
                    .into(),
            });
        }
    }
    Ok(())
}

/// One transaction: insert what is new, upsert the rollups, commit.
fn write_in(txn: &mut Transaction<'_>, requests: &[&[Entry]]) -> Result<Vec<Appended>, PgError> {
    // Keys seen in this batch: a later entry with the same key is a
    // duplicate, as in the redb writer, and is not sent.
    let mut seen: HashSet<String> = HashSet::new();
    let mut fresh: Vec<(usize, String, &Entry)> = Vec::new();
    let mut results: Vec<Appended> = Vec::with_capacity(requests.len());
    for (r, entries) in requests.iter().enumerate() {
        let mut appended = Appended::default();
        for e in *entries {
            let key = e.key();
            if seen.insert(key.clone()) {
                fresh.push((r, key, e));
            } else {
                appended.duplicates += 1;
            }
        }
        results.push(appended);
    }
    let mut ids: HashMap<String, u64> = HashMap::new();
    if !fresh.is_empty() {
        let col =
            |f: &dyn Fn(&Entry) -> i64| fresh.iter().map(|(_, _, e)| f(e)).collect::<Vec<i64>>();
        let text = |f: &dyn Fn(&Entry) -> String| {
            fresh.iter().map(|(_, _, e)| f(e)).collect::<Vec<String>>()
        };
        let keys: Vec<String> = fresh.iter().map(|(_, k, _)| k.clone()).collect();
        let time = col(&|e| clamp_i64(e.time_ms));
        let tenant = text(&|e| e.tenant.clone());
        let run = text(&|e| e.run.clone());
        let node = text(&|e| e.node.clone());
        let attempt = col(&|e| i64::from(e.attempt));
        let seq = col(&|e| i64::from(e.seq));
        let capsule = text(&|e| e.capsule.clone());
        let kind = text(&|e| e.kind.name().to_owned());
        let quantity = col(&|e| clamp_i64(e.quantity));
        let price = col(&|e| clamp_i64(e.unit_price_micros));
        let cost = col(&|e| clamp_i64(e.cost_micros));
        let provider: Vec<Option<String>> =
            fresh.iter().map(|(_, _, e)| e.provider.clone()).collect();
        let model: Vec<Option<String>> = fresh.iter().map(|(_, _, e)| e.model.clone()).collect();
        let estimated: Vec<bool> = fresh.iter().map(|(_, _, e)| e.estimated).collect();
        let rows = txn.query(
            "INSERT INTO ledger_entries (idem_key, time_ms, tenant, run, node, attempt, seq, \
                 capsule, kind, quantity, unit_price_micros, cost_micros, provider, model, estimated) \
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
                 $6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::bigint[], $11::bigint[], \
                 $12::bigint[], $13::text[], $14::text[], $15::bool[]) \
             ON CONFLICT (idem_key) DO NOTHING \
             RETURNING idem_key, id",
            &[
                &keys, &time, &tenant, &run, &node, &attempt, &seq, &capsule, &kind, &quantity,
                &price, &cost, &provider, &model, &estimated,
            ],
        )?;
        for row in rows {
            let key: String = row.try_get(0)?;
            let id: i64 = row.try_get(1)?;
            ids.insert(key, to_u64(id));
        }
    }
    // Ids in input order (the identity assigns them in insertion order).
    let mut deltas: BTreeMap<OwnedDailyKey, Sums> = BTreeMap::new();
    let mut splits: Vec<(String, FeeSplit)> = Vec::new();
    let mut stats = calls::Rollup::default();
    for (r, key, e) in &fresh {
        match ids.get(key) {
            Some(&id) => {
                results[*r].inserted.push(id);
                deltas.entry(OwnedDailyKey::of(e)).or_default().add(e);
                stats.add(e);
                // Validated before, so an error here rolls the batch back
                // rather than leave a fee without its split.
                match fee::split_of(id, e) {
                    Ok(Some(split)) => splits.push(split),
                    Ok(None) => {}
                    Err(err) => {
                        return Err(PgError::Corrupt {
                            what: format!("marketplace fee {id}"),
                            reason: err.to_string(),
                        });
                    }
                }
            }
            None => results[*r].duplicates += 1,
        }
    }
    if !splits.is_empty() {
        write_splits(txn, &splits)?;
    }
    write_call_stats(txn, &stats.into_days())?;
    if !deltas.is_empty() {
        let mut cols: [Vec<String>; 5] = Default::default();
        let mut nums: [Vec<i64>; 5] = Default::default();
        for (k, s) in &deltas {
            for (c, v) in cols
                .iter_mut()
                .zip([&k.day, &k.tenant, &k.capsule, &k.model, &k.kind])
            {
                c.push(v.clone());
            }
            for (c, v) in
                nums.iter_mut()
                    .zip([k.unit_price, s.quantity, s.cost, s.count, s.estimated])
            {
                c.push(clamp_i64(v));
            }
        }
        let sat = |c: &str| {
            format!(
                "{c} = LEAST(ledger_daily.{c}::numeric + EXCLUDED.{c}, 9223372036854775807)::bigint"
            )
        };
        let sql = format!(
            "INSERT INTO ledger_daily (day, tenant, capsule, model, kind, unit_price_micros, \
                 quantity, cost_micros, count, estimated) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                 $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[]) \
             ON CONFLICT (day, tenant, capsule, model, kind, unit_price_micros) DO UPDATE SET \
                 {}, {}, {}, {}",
            sat("quantity"),
            sat("cost_micros"),
            sat("count"),
            sat("estimated")
        );
        let params: Vec<&(dyn ToSql + Sync)> = cols
            .iter()
            .map(|c| c as &(dyn ToSql + Sync))
            .chain(nums.iter().map(|c| c as &(dyn ToSql + Sync)))
            .collect();
        txn.execute(sql.as_str(), &params)?;
    }
    Ok(results)
}

/// Add `days` (capsule, day → sums) to `ledger_call_stats` and, where a
/// capsule's day row is new, prune its rows older than [`KEPT_DAYS`]
/// before that day. One statement (an upsert in key order, so two daemons
/// lock rows in the same order; the prune in the same statement), however
/// many rows.
fn write_call_stats(
    txn: &mut Transaction<'_>,
    days: &BTreeMap<(String, i64), CallDay>,
) -> Result<(), PgError> {
    if days.is_empty() {
        return Ok(());
    }
    let capsules: Vec<&str> = days.keys().map(|(c, _)| c.as_str()).collect();
    let numbers: Vec<i64> = days.keys().map(|(_, d)| *d).collect();
    let column =
        |f: fn(&CallDay) -> u64| days.values().map(|d| clamp_i64(f(d))).collect::<Vec<i64>>();
    let latency: Vec<String> = days
        .values()
        .map(|d| {
            let counts: Vec<String> = d
                .latency
                .counts()
                .iter()
                .map(|c| clamp_i64(*c).to_string())
                .collect();
            format!("{{{}}}", counts.join(","))
        })
        .collect();
    let add = |c: &str| {
        format!(
            "{c} = LEAST(s.{c}::numeric + EXCLUDED.{c}, {})::bigint",
            i64::MAX
        )
    };
    let sql = format!(
        "WITH up AS ( \
             INSERT INTO ledger_call_stats AS s (capsule, day, calls, failures, fuel, tokens_in, \
                 tokens_out, fee_micros, cost_micros, latency) \
             SELECT c, d, n1, n2, n3, n4, n5, n6, n7, l::bigint[] \
             FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], \
                 $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[]) \
                 AS u(c, d, n1, n2, n3, n4, n5, n6, n7, l) \
             ON CONFLICT (capsule, day) DO UPDATE SET {}, {}, {}, {}, {}, {}, {}, \
                 latency = ARRAY(SELECT LEAST(coalesce(x, 0)::numeric + coalesce(y, 0), {max})::bigint \
                     FROM unnest(s.latency, EXCLUDED.latency) WITH ORDINALITY AS t(x, y, i) ORDER BY i) \
             RETURNING capsule, day, (xmax = 0) AS created) \
         DELETE FROM ledger_call_stats s USING up \
         WHERE up.created AND s.capsule = up.capsule AND s.day < up.day - {KEPT_DAYS}",
        add("calls"),
        add("failures"),
        add("fuel"),
        add("tokens_in"),
        add("tokens_out"),
        add("fee_micros"),
        add("cost_micros"),
        max = i64::MAX,
    );
    txn.execute(
        sql.as_str(),
        &[
            &capsules,
            &numbers,
            &column(|d| d.calls),
            &column(|d| d.failures),
            &column(|d| d.fuel),
            &column(|d| d.tokens_in),
            &column(|d| d.tokens_out),
            &column(|d| d.fee_micros),
            &column(|d| d.cost_micros),
            &latency,
        ],
    )?;
    Ok(())
}

/// Insert the revenue splits of the fees a batch inserted (one statement).
fn write_splits(txn: &mut Transaction<'_>, splits: &[(String, FeeSplit)]) -> Result<(), PgError> {
    let text = |f: &dyn Fn(&(String, FeeSplit)) -> String| splits.iter().map(f).collect::<Vec<_>>();
    let num = |f: &dyn Fn(&FeeSplit) -> u64| {
        splits
            .iter()
            .map(|(_, s)| clamp_i64(f(s)))
            .collect::<Vec<i64>>()
    };
    txn.execute(
        "INSERT INTO ledger_fee_splits (entry_id, month, author, listing, version, fee_micros, \
             author_micros, platform_micros) \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::bigint[], $7::bigint[], $8::bigint[])",
        &[
            &num(&|s| s.id),
            &text(&|(m, _)| m.clone()),
            &text(&|(_, s)| s.author.clone()),
            &text(&|(_, s)| s.listing.clone()),
            &text(&|(_, s)| s.version.clone()),
            &num(&|s| s.fee_micros),
            &num(&|s| s.author_micros),
            &num(&|s| s.platform_micros),
        ],
    )?;
    Ok(())
}

fn entry_of(row: &postgres::Row) -> Result<Entry, PgError> {
    let id: i64 = row.try_get(0)?;
    let kind: String = row.try_get(8)?;
    let kind = Kind::from_name(&kind).ok_or_else(|| PgError::Corrupt {
        what: format!("ledger entry {id}"),
        reason: format!("unknown kind `{kind}`"),
    })?;
    let small = |i: usize| -> Result<u32, PgError> {
        let v: i64 = row.try_get(i)?;
        u32::try_from(v).map_err(|_| PgError::Corrupt {
            what: format!("ledger entry {id}"),
            reason: format!("column {i} is out of range: {v}"),
        })
    };
    Ok(Entry {
        id: to_u64(id),
        time_ms: to_u64(row.try_get(1)?),
        tenant: row.try_get(2)?,
        run: row.try_get(3)?,
        node: row.try_get(4)?,
        attempt: small(5)?,
        seq: small(6)?,
        capsule: row.try_get(7)?,
        kind,
        quantity: to_u64(row.try_get(9)?),
        unit_price_micros: to_u64(row.try_get(10)?),
        cost_micros: to_u64(row.try_get(11)?),
        provider: row.try_get(12)?,
        model: row.try_get(13)?,
        estimated: row.try_get(14)?,
    })
}

impl LedgerStore for PgLedger {
    /// Cost: one indexed range query of at most [`KEPT_DAYS`] + 1 rows.
    fn call_days(
        &self,
        capsule: &str,
        from_day: i64,
        to_day: i64,
    ) -> Result<Vec<(i64, CallDay)>, LedgerError> {
        let mut conn = self.store.conn()?;
        let rows = conn
            .query(
                "SELECT day, calls, failures, fuel, tokens_in, tokens_out, fee_micros, \
                     cost_micros, latency FROM ledger_call_stats \
                 WHERE capsule = $1 AND day >= $2 AND day <= $3 ORDER BY day",
                &[&capsule, &from_day, &to_day],
            )
            .map_err(PgError::from)?;
        rows.iter()
            .map(|r| {
                let day: i64 = r.try_get(0).map_err(PgError::from)?;
                let n = |i: usize| r.try_get::<_, i64>(i).map(to_u64).map_err(PgError::from);
                let latency: Vec<i64> = r.try_get(8).map_err(PgError::from)?;
                let latency: Vec<u64> = latency.into_iter().map(to_u64).collect();
                Ok((
                    day,
                    CallDay {
                        calls: n(1)?,
                        failures: n(2)?,
                        fuel: n(3)?,
                        tokens_in: n(4)?,
                        tokens_out: n(5)?,
                        fee_micros: n(6)?,
                        cost_micros: n(7)?,
                        latency: LatencyHistogram::from_counts(&latency)
                            .map_err(calls::corrupt(capsule, day))?,
                    },
                ))
            })
            .collect()
    }

    /// Cost: one transaction of one insert (a replayed attempt stops
    /// there), plus the statistics' merge for a first failure.
    fn record_call_failure(
        &self,
        run: &str,
        node: &str,
        attempt: u32,
        capsule: &str,
        time_ms: u64,
        _failed: &FailedCall<'_>,
    ) -> Result<bool, LedgerError> {
        // Not written to the analytics outbox on this store yet
        // (docs/analytics.md: events on PostgreSQL are not done).
        let key = format!("{run}/{node}/{attempt}");
        let day = civil::day_number(time_ms);
        let mut conn = self.store.conn()?;
        let mut tries = 0;
        loop {
            let attempt = (|| {
                let mut txn = conn.transaction()?;
                let new = txn.execute(
                    "INSERT INTO ledger_call_failures (call, day) VALUES ($1, $2) \
                     ON CONFLICT (call) DO NOTHING",
                    &[&key, &day],
                )? == 1;
                if new {
                    // Keys past the statistics' window count for nothing:
                    // the table stays bounded as the statistics do.
                    txn.execute(
                        "DELETE FROM ledger_call_failures WHERE day < $1",
                        &[&(day - KEPT_DAYS)],
                    )?;
                    let failed = CallDay {
                        failures: 1,
                        ..CallDay::default()
                    };
                    write_call_stats(
                        &mut txn,
                        &BTreeMap::from([((capsule.to_owned(), day), failed)]),
                    )?;
                }
                txn.commit()?;
                Ok::<_, PgError>(new)
            })();
            match attempt {
                Err(e) if e.is_conflict() && tries < CONFLICT_RETRIES => tries += 1,
                other => return other.map_err(LedgerError::from),
            }
        }
    }

    fn append(&self, entries: &[Entry]) -> Result<Appended, LedgerError> {
        if entries.is_empty() {
            return Ok(Appended::default());
        }
        validate_pg(entries)?;
        let mut results = self.write_batch(&[entries])?;
        Ok(results.pop().unwrap_or_default())
    }

    /// A group-commit thread over this store: each batch of queued appends
    /// is one PostgreSQL transaction on one pooled connection.
    fn writer(&self) -> Result<LedgerWriter, LedgerError> {
        let ledger = self.clone();
        // The PostgreSQL store has no analytics outbox yet: a call's facts
        // are not written (docs/analytics.md, "Not done yet").
        LedgerWriter::spawn_checked(validate_pg, move |requests| {
            let entries: Vec<&[Entry]> = requests.iter().map(|r| r.entries).collect();
            ledger.write_batch(&entries)
        })
    }

    /// Cost: one indexed query (by run, tenant or capsule when given,
    /// newest first, stopping at `limit`).
    fn ls(&self, filter: &Filter) -> Result<Vec<Entry>, LedgerError> {
        let limit = filter.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut clauses: Vec<String> = Vec::new();
        let mut params: Vec<Box<dyn ToSql + Sync>> = Vec::new();
        let mut add = |clause: &str, v: Box<dyn ToSql + Sync>| {
            params.push(v);
            clauses.push(format!("{clause} ${}", params.len()));
        };
        if let Some(t) = &filter.tenant {
            add("tenant =", Box::new(t.clone()));
        }
        if let Some(r) = &filter.run {
            add("run =", Box::new(r.clone()));
        }
        if let Some(c) = &filter.capsule {
            add("capsule =", Box::new(c.clone()));
        }
        if let Some(s) = filter.since_ms {
            add("time_ms >=", Box::new(clamp_i64(s)));
        }
        if let Some(u) = filter.until_ms {
            add("time_ms <", Box::new(clamp_i64(u)));
        }
        let mut sql = format!("SELECT {ENTRY_COLUMNS} FROM ledger_entries");
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        sql.push_str(" ORDER BY id DESC");
        if let Some(l) = filter.limit {
            params.push(Box::new(clamp_i64(u64::try_from(l).unwrap_or(u64::MAX))));
            sql.push_str(&format!(" LIMIT ${}", params.len()));
        }
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
        let mut conn = self.store.conn()?;
        let rows = conn.query(sql.as_str(), &refs).map_err(PgError::from)?;
        rows.iter()
            .map(|r| entry_of(r).map_err(LedgerError::from))
            .collect()
    }

    /// Cost: one query of the rollup rows in the range (by tenant and day
    /// when a tenant is given) — independent of the number of entries.
    fn scan_rollups(
        &self,
        since: &str,
        until: Option<&str>,
        tenant: Option<&str>,
        f: &mut dyn FnMut(DailyKey<'_>, DailySums),
    ) -> Result<(), LedgerError> {
        let mut conn = self.store.conn()?;
        let rows = conn
            .query(
                "SELECT day, tenant, capsule, model, kind, unit_price_micros, quantity, \
                     cost_micros, count, estimated FROM ledger_daily \
                 WHERE day >= $1 AND ($2::text IS NULL OR day <= $2) \
                     AND ($3::text IS NULL OR tenant = $3)",
                &[&since, &until, &tenant],
            )
            .map_err(PgError::from)?;
        let mut out: Vec<(OwnedDailyKey, DailySums)> = Vec::with_capacity(rows.len());
        for r in &rows {
            let k = OwnedDailyKey {
                day: r.try_get(0).map_err(PgError::from)?,
                tenant: r.try_get(1).map_err(PgError::from)?,
                capsule: r.try_get(2).map_err(PgError::from)?,
                model: r.try_get(3).map_err(PgError::from)?,
                kind: r.try_get(4).map_err(PgError::from)?,
                unit_price: to_u64(r.try_get(5).map_err(PgError::from)?),
            };
            let n = |i: usize| r.try_get::<_, i64>(i).map(to_u64).map_err(PgError::from);
            out.push((k, (n(6)?, n(7)?, n(8)?, n(9)?)));
        }
        // The redb key order (bytes), whatever the database's collation.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, v) in &out {
            f(k.as_row(), *v);
        }
        Ok(())
    }

    /// Cost: one indexed query (the month's split rows joined to their
    /// entries), independent of other months and kinds.
    fn fees(&self, month: Option<&str>) -> Result<Vec<(FeeSplit, Entry)>, LedgerError> {
        if let Some(m) = month {
            civil::parse_month(m).ok_or_else(|| LedgerError::InvalidMonth(m.into()))?;
        }
        let columns = ENTRY_COLUMNS
            .split(", ")
            .map(|c| format!("e.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut conn = self.store.conn()?;
        let rows = conn
            .query(
                format!(
                    "SELECT {columns}, s.author, s.listing, s.version, s.fee_micros, \
                         s.author_micros, s.platform_micros \
                     FROM ledger_fee_splits s JOIN ledger_entries e ON e.id = s.entry_id \
                     WHERE $1::text IS NULL OR s.month = $1 \
                     ORDER BY s.month, s.entry_id"
                )
                .as_str(),
                &[&month],
            )
            .map_err(PgError::from)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let entry = entry_of(r)?;
            let n = |i: usize| r.try_get::<_, i64>(i).map(to_u64).map_err(PgError::from);
            let split = FeeSplit {
                id: entry.id,
                author: r.try_get(15).map_err(PgError::from)?,
                listing: r.try_get(16).map_err(PgError::from)?,
                version: r.try_get(17).map_err(PgError::from)?,
                fee_micros: n(18)?,
                author_micros: n(19)?,
                platform_micros: n(20)?,
            };
            out.push((split, entry));
        }
        Ok(out)
    }

    /// The checks of the redb ledger: every entry's idempotency key is its
    /// own, keys are unique, every rollup row equals the sums recomputed
    /// from the entries (and none is missing or extra), every fee has one
    /// revenue split that adds up and agrees with it.
    /// Cost: a full read of the three tables.
    fn check_integrity(&self) -> Result<IntegrityReport, LedgerError> {
        let mut conn = self.store.conn()?;
        let mut txn = conn
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(PgError::from)?;
        let mut report = IntegrityReport {
            ok: true,
            ..IntegrityReport::default()
        };
        let rows = txn
            .query(
                format!("SELECT {ENTRY_COLUMNS}, idem_key FROM ledger_entries ORDER BY id")
                    .as_str(),
                &[],
            )
            .map_err(PgError::from)?;
        let mut recomputed: BTreeMap<OwnedDailyKey, Sums> = BTreeMap::new();
        let mut fees: BTreeMap<u64, Entry> = BTreeMap::new();
        for r in &rows {
            report.entries += 1;
            let entry = match entry_of(r) {
                Ok(e) => e,
                Err(e) => {
                    report.problem(format!("{e}"));
                    continue;
                }
            };
            let stored: String = r.try_get(15).map_err(PgError::from)?;
            if stored != entry.key() {
                report.problem(format!(
                    "entry {} has key {} but is stored under {stored}",
                    entry.id,
                    entry.key()
                ));
            }
            recomputed
                .entry(OwnedDailyKey::of(&entry))
                .or_default()
                .add(&entry);
            if entry.kind == Kind::MarketplaceFee {
                fees.insert(entry.id, entry);
            }
        }
        let mut splits: Vec<fee::StoredSplit> = Vec::new();
        for r in txn
            .query(
                "SELECT entry_id, fee_micros, author_micros, platform_micros \
                 FROM ledger_fee_splits ORDER BY entry_id",
                &[],
            )
            .map_err(PgError::from)?
        {
            let n = |i: usize| r.try_get::<_, i64>(i).map(to_u64).map_err(PgError::from);
            splits.push((n(0)?, n(1)?, n(2)?, n(3)?));
        }
        let mut fee_problems = Vec::new();
        fee::check_rows(&splits, &fees, &mut fee_problems);
        for p in fee_problems {
            report.fee_problem(p);
        }
        let keys: i64 = txn
            .query_one("SELECT count(DISTINCT idem_key) FROM ledger_entries", &[])
            .map_err(PgError::from)?
            .try_get(0)
            .map_err(PgError::from)?;
        report.keys = to_u64(keys);
        if report.keys != report.entries {
            report.problem(format!(
                "{} idempotency keys for {} entries",
                report.keys, report.entries
            ));
        }
        let mut stored: BTreeMap<OwnedDailyKey, Sums> = BTreeMap::new();
        for r in txn
            .query(
                "SELECT day, tenant, capsule, model, kind, unit_price_micros, quantity, \
                     cost_micros, count, estimated FROM ledger_daily",
                &[],
            )
            .map_err(PgError::from)?
        {
            report.rollup_rows += 1;
            let n = |i: usize| r.try_get::<_, i64>(i).map(to_u64).map_err(PgError::from);
            let k = OwnedDailyKey {
                day: r.try_get(0).map_err(PgError::from)?,
                tenant: r.try_get(1).map_err(PgError::from)?,
                capsule: r.try_get(2).map_err(PgError::from)?,
                model: r.try_get(3).map_err(PgError::from)?,
                kind: r.try_get(4).map_err(PgError::from)?,
                unit_price: n(5)?,
            };
            stored.insert(
                k,
                Sums {
                    quantity: n(6)?,
                    cost: n(7)?,
                    count: n(8)?,
                    estimated: n(9)?,
                },
            );
        }
        txn.commit().map_err(PgError::from)?;
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
}
