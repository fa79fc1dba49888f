//! Budgets on the shared PostgreSQL store: limits, spending and the holds
//! of calls in flight on every daemon, so that calls spread over several
//! daemons can never together pass a budget.
//!
//! A reservation locks the rows of the scopes it touches (`SELECT … ORDER
//! BY scope FOR UPDATE`: one order for every daemon, so no deadlock),
//! checks each with the same rule as the in-memory [`Budgets`]
//! (`spent + held + wanted <= limit`), adds to `reserved_*` and records a
//! row in `budget_holds` — all in one transaction. Settling deletes the hold
//! (once: a second settle finds nothing), takes its amounts off `reserved_*`
//! and adds the actual usage to `spent_*`. [`PgBudgets::charge`] does that
//! in the same transaction as the ledger append of the charge, so a charge
//! and its settle are written together or not at all, and a replayed charge
//! (its idempotency key is recorded) releases its hold without charging.
//!
//! A hold whose daemon died before settling it (or whose release failed
//! while the store was down) would keep its room forever; holds older than
//! `[store] hold_ttl_ms` are released by the next daemon that reserves
//! (at most one sweep per [`SWEEP_EVERY_MS`] per daemon, in its own
//! transaction). The TTL outlasts any call (the config check makes sure),
//! so a live call's hold is never swept; a late settle of a swept hold
//! still charges its spending (it only finds no reservation to take off).
//!
//! [`Budgets`]: crate::budget::Budgets

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use postgres::Transaction;

use super::{Account, Limit, Scope};
use crate::{
    ledger::{Appended, Entry, Kind, LedgerError, postgres::PgLedger},
    store::postgres::{PgError, PgStore, clamp_i64, now_ms, to_u64},
};

/// A reservation held in the shared store (its `budget_holds` row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgHold {
    /// The row's id.
    pub id: i64,
    /// Tokens held.
    pub tokens: u64,
    /// Micro-units held.
    pub micros: u64,
}

/// Why a reservation was not granted.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// A budget cannot cover it (the same text as the in-memory budgets).
    #[error("{0}")]
    Refused(String),
    /// The store failed; nothing was reserved.
    #[error(transparent)]
    Store(#[from] PgError),
}

/// A daemon sweeps expired holds at most this often (ms).
pub const SWEEP_EVERY_MS: u64 = 10_000;

/// The budgets of a [`PgStore`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgBudgets {
    store: PgStore,
    /// `[store] hold_ttl_ms`.
    hold_ttl_ms: u64,
    /// When this daemon last swept expired holds (unix ms).
    last_sweep: Arc<AtomicU64>,
}

fn account_of(row: &postgres::Row) -> Result<(Scope, Account), PgError> {
    let key: String = row.try_get(0)?;
    let scope = Scope::parse(&key).ok_or_else(|| PgError::Corrupt {
        what: "budget".into(),
        reason: format!("scope `{key}` is not a scope"),
    })?;
    let opt = |i: usize| row.try_get::<_, Option<i64>>(i).map(|v| v.map(to_u64));
    let n = |i: usize| row.try_get::<_, i64>(i).map(to_u64);
    Ok((
        scope,
        Account {
            limit: Limit {
                tokens: opt(1)?,
                micros: opt(2)?,
            },
            spent_tokens: n(3)?,
            spent_micros: n(4)?,
            reserved_tokens: n(5)?,
            reserved_micros: n(6)?,
        },
    ))
}

const ACCOUNT_COLUMNS: &str = "scope, limit_tokens, limit_micros, spent_tokens, spent_micros, \
     reserved_tokens, reserved_micros";

fn keys(scopes: &[Scope]) -> Vec<String> {
    let mut k: Vec<String> = scopes.iter().map(Scope::key).collect();
    k.sort();
    k.dedup();
    k
}

impl PgBudgets {
    /// The budgets of `store`; holds older than `hold_ttl_ms` are
    /// released.
    pub fn new(store: PgStore, hold_ttl_ms: u64) -> Self {
        Self {
            store,
            hold_ttl_ms,
            last_sweep: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Release every hold older than the TTL: delete its row and take its
    /// amounts off its scopes' `reserved_*` (budget rows locked in scope
    /// order, after the hold rows, as settling does). Returns how many
    /// were released. Cost: one transaction (a scan of the few holds in
    /// flight).
    pub fn release_expired(&self) -> Result<usize, PgError> {
        let cutoff = clamp_i64(now_ms().saturating_sub(self.hold_ttl_ms));
        let mut conn = self.store.conn()?;
        let mut txn = conn.transaction()?;
        let rows = txn.query(
            "DELETE FROM budget_holds WHERE created_ms < $1 RETURNING scopes, tokens, micros",
            &[&cutoff],
        )?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut per_scope: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for r in &rows {
            let scopes: Vec<String> = r.try_get(0)?;
            let (t, m): (i64, i64) = (r.try_get(1)?, r.try_get(2)?);
            for s in scopes {
                let e = per_scope.entry(s).or_default();
                *e = (e.0.saturating_add(t), e.1.saturating_add(m));
            }
        }
        let lock: Vec<String> = per_scope.keys().cloned().collect();
        txn.query(
            "SELECT scope FROM budgets WHERE scope = ANY($1) ORDER BY scope FOR UPDATE",
            &[&lock],
        )?;
        for (scope, (t, m)) in &per_scope {
            txn.execute(
                "UPDATE budgets SET reserved_tokens = GREATEST(reserved_tokens - $2, 0), \
                     reserved_micros = GREATEST(reserved_micros - $3, 0) WHERE scope = $1",
                &[scope, t, m],
            )?;
        }
        txn.commit()?;
        Ok(rows.len())
    }

    /// [`PgBudgets::release_expired`] if this daemon has not swept for
    /// [`SWEEP_EVERY_MS`]; a failure is logged (the reservation goes on).
    fn sweep_if_due(&self) {
        let now = now_ms();
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SWEEP_EVERY_MS
            || self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        match self.release_expired() {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                released = n,
                ttl_ms = self.hold_ttl_ms,
                "released budget holds older than [store] hold_ttl_ms (their daemon died \
                 mid-call or could not release them)"
            ),
            Err(e) => tracing::warn!("could not release expired budget holds: {e}"),
        }
    }

    /// Set (`Some`) or remove (`None`) `scope`'s budget. A new budget
    /// starts with what the scope has spent in the shared ledger; an
    /// existing one keeps its spending and holds. Cost: one transaction
    /// (plus one indexed sum over the scope's entries when new).
    pub fn set_limit(&self, scope: &Scope, limit: Option<Limit>) -> Result<(), PgError> {
        let mut conn = self.store.conn()?;
        let mut txn = conn.transaction()?;
        let key = scope.key();
        match limit {
            None => {
                txn.execute("DELETE FROM budgets WHERE scope = $1", &[&key])?;
            }
            Some(l) => {
                let (tokens, micros) = spent_in(&mut txn, scope)?;
                let (lt, lm) = (l.tokens.map(clamp_i64), l.micros.map(clamp_i64));
                txn.execute(
                    "INSERT INTO budgets (scope, limit_tokens, limit_micros, spent_tokens, spent_micros) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (scope) DO UPDATE SET limit_tokens = EXCLUDED.limit_tokens, \
                         limit_micros = EXCLUDED.limit_micros",
                    &[&key, &lt, &lm, &clamp_i64(tokens), &clamp_i64(micros)],
                )?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The state of `scope`, if it has a budget.
    pub fn account(&self, scope: &Scope) -> Result<Option<Account>, PgError> {
        let mut conn = self.store.conn()?;
        let row = conn.query_opt(
            format!("SELECT {ACCOUNT_COLUMNS} FROM budgets WHERE scope = $1").as_str(),
            &[&scope.key()],
        )?;
        row.map(|r| account_of(&r).map(|(_, a)| a)).transpose()
    }

    /// Every budget, sorted by scope.
    pub fn list(&self) -> Result<Vec<(Scope, Account)>, PgError> {
        let mut conn = self.store.conn()?;
        let rows = conn.query(
            format!("SELECT {ACCOUNT_COLUMNS} FROM budgets").as_str(),
            &[],
        )?;
        let mut out = rows.iter().map(account_of).collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Reserve `tokens` and `micros` against every scope in `scopes` that
    /// has a budget, all or nothing, across every daemon of the store.
    /// A hold of id 0 holds nothing (no scope has a budget; nothing was
    /// written). Cost: one transaction locking those budget rows.
    pub fn reserve(
        &self,
        scopes: &[Scope],
        tokens: u64,
        micros: u64,
    ) -> Result<PgHold, ReserveError> {
        self.sweep_if_due();
        let mut conn = self.store.conn()?;
        let mut txn = conn.transaction().map_err(PgError::from)?;
        let keys = keys(scopes);
        let rows = txn
            .query(
                format!(
                    "SELECT {ACCOUNT_COLUMNS} FROM budgets WHERE scope = ANY($1) ORDER BY scope FOR UPDATE"
                )
                .as_str(),
                &[&keys],
            )
            .map_err(PgError::from)?;
        let mut held: Vec<String> = Vec::new();
        for r in &rows {
            let (scope, account) = account_of(r)?;
            if let Some(reason) = account.refusal(&scope, tokens, micros) {
                return Err(ReserveError::Refused(reason.to_string()));
            }
            held.push(scope.key());
        }
        if held.is_empty() {
            // No budget applies: nothing to hold (id 0), nothing written.
            return Ok(PgHold {
                id: 0,
                tokens,
                micros,
            });
        }
        let (t, m) = (clamp_i64(tokens), clamp_i64(micros));
        txn.execute(
            "UPDATE budgets SET reserved_tokens = reserved_tokens + $2, \
                 reserved_micros = reserved_micros + $3 WHERE scope = ANY($1)",
            &[&held, &t, &m],
        )
        .map_err(PgError::from)?;
        let id: i64 = txn
            .query_one(
                "INSERT INTO budget_holds (scopes, tokens, micros, created_ms) \
                 VALUES ($1, $2, $3, $4) RETURNING id",
                &[&held, &t, &m, &clamp_i64(now_ms())],
            )
            .map_err(PgError::from)?
            .try_get(0)
            .map_err(PgError::from)?;
        txn.commit().map_err(PgError::from)?;
        Ok(PgHold { id, tokens, micros })
    }

    /// Release `hold` and charge `tokens`/`micros` to every scope of
    /// `scopes` that has a budget. Idempotent per hold: settling or
    /// releasing it again changes nothing. Cost: one transaction.
    pub fn settle(
        &self,
        hold: PgHold,
        scopes: &[Scope],
        tokens: u64,
        micros: u64,
    ) -> Result<(), PgError> {
        let mut conn = self.store.conn()?;
        let mut txn = conn.transaction()?;
        settle_in(&mut txn, Some(hold), scopes, Some((tokens, micros)))?;
        txn.commit()?;
        Ok(())
    }

    /// Release `hold` without charging.
    pub fn release(&self, hold: PgHold) -> Result<(), PgError> {
        let mut conn = self.store.conn()?;
        let mut txn = conn.transaction()?;
        settle_in(&mut txn, Some(hold), &[], None)?;
        txn.commit()?;
        Ok(())
    }

    /// Append a call's `entries` to the shared ledger and, in the same
    /// transaction, settle its `hold` to their actual cost (LLM tokens and
    /// micro-units) on `scopes` — or, if any entry was already recorded (a
    /// replay), release the hold without charging. Either all of it is
    /// written or none. Cost: one transaction.
    pub fn charge(
        &self,
        ledger: &PgLedger,
        entries: &[Entry],
        hold: Option<PgHold>,
        scopes: &[Scope],
    ) -> Result<Appended, LedgerError> {
        ledger.append_with(entries, |txn, appended| {
            let actual = (appended.duplicates == 0).then(|| actual_of(entries));
            settle_in(txn, hold, scopes, actual)
        })
    }

    /// [`PgBudgets::charge`] for many calls in one transaction (a group
    /// commit): each charge's entries are appended and its hold settled
    /// (or released, for a replay), all or nothing. Entries must be
    /// validated ([`validate_pg`](crate::ledger::postgres::validate_pg)).
    /// Cost: one transaction, one rollup upsert for the whole batch.
    pub fn charge_batch(
        &self,
        ledger: &PgLedger,
        charges: &[(&[Entry], Option<PgHold>, &[Scope])],
    ) -> Result<Vec<Appended>, LedgerError> {
        let requests: Vec<&[Entry]> = charges.iter().map(|c| c.0).collect();
        // Every budget row the batch touches, locked first in one order
        // (a hold's scopes are its charge's), so two daemons' batches
        // never wait on each other in a cycle.
        let all: Vec<Scope> = charges.iter().flat_map(|c| c.2.iter().cloned()).collect();
        let lock = keys(&all);
        ledger.append_batch_with(&requests, |txn, results| {
            if !lock.is_empty() {
                txn.query(
                    "SELECT scope FROM budgets WHERE scope = ANY($1) ORDER BY scope FOR UPDATE",
                    &[&lock],
                )?;
            }
            for ((entries, hold, scopes), appended) in charges.iter().zip(results) {
                let actual = (appended.duplicates == 0).then(|| actual_of(entries));
                settle_in(txn, *hold, scopes, actual)?;
            }
            Ok(())
        })
    }
}

/// (LLM tokens, micro-units) `entries` charge, saturating.
fn actual_of(entries: &[Entry]) -> (u64, u64) {
    entries.iter().fold((0u64, 0u64), |(t, m), e| {
        let tokens = if matches!(e.kind, Kind::LlmTokensInput | Kind::LlmTokensOutput) {
            e.quantity
        } else {
            0
        };
        (t.saturating_add(tokens), m.saturating_add(e.cost_micros))
    })
}

/// Take `hold` off the reserved amounts (if it is still held) and, with
/// `actual`, add it to the spending of `scopes`' budgets — rows locked in
/// scope order.
fn settle_in(
    txn: &mut Transaction<'_>,
    hold: Option<PgHold>,
    scopes: &[Scope],
    actual: Option<(u64, u64)>,
) -> Result<(), PgError> {
    let mut lock: Vec<String> = keys(scopes);
    let held = match hold {
        Some(h) => txn
            .query_opt(
                "DELETE FROM budget_holds WHERE id = $1 RETURNING scopes, tokens, micros",
                &[&h.id],
            )?
            .map(|r| -> Result<(Vec<String>, i64, i64), PgError> {
                Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
            })
            .transpose()?,
        None => None,
    };
    if let Some((s, ..)) = &held {
        lock.extend(s.iter().cloned());
        lock.sort();
        lock.dedup();
    }
    if lock.is_empty() {
        return Ok(());
    }
    txn.query(
        "SELECT scope FROM budgets WHERE scope = ANY($1) ORDER BY scope FOR UPDATE",
        &[&lock],
    )?;
    if let Some((s, t, m)) = &held {
        txn.execute(
            "UPDATE budgets SET reserved_tokens = GREATEST(reserved_tokens - $2, 0), \
                 reserved_micros = GREATEST(reserved_micros - $3, 0) WHERE scope = ANY($1)",
            &[s, t, m],
        )?;
    }
    if let Some((tokens, micros)) = actual
        && (tokens > 0 || micros > 0)
    {
        let charged = keys(scopes);
        txn.execute(
            "UPDATE budgets SET \
                 spent_tokens = LEAST(spent_tokens::numeric + $2::bigint, 9223372036854775807)::bigint, \
                 spent_micros = LEAST(spent_micros::numeric + $3::bigint, 9223372036854775807)::bigint \
             WHERE scope = ANY($1)",
            &[&charged, &clamp_i64(tokens), &clamp_i64(micros)],
        )?;
    }
    Ok(())
}

/// (LLM tokens, micro-units) `scope` has spent in the shared ledger (a
/// node scope `run/node` counts the node's entries).
fn spent_in(txn: &mut Transaction<'_>, scope: &Scope) -> Result<(u64, u64), PgError> {
    let (column, value, node) = match scope {
        Scope::Tenant(t) => ("tenant", t.clone(), None),
        Scope::Capsule(c) => ("capsule", c.clone(), None),
        Scope::Run(r) => ("run", r.clone(), None),
        Scope::Node(n) => match n.split_once('/') {
            Some((run, node)) => ("run", run.to_owned(), Some(node.to_owned())),
            None => return Ok((0, 0)),
        },
    };
    let sql = format!(
        "SELECT COALESCE(sum(quantity) FILTER (WHERE kind IN ('llm-tokens-input', 'llm-tokens-output')), 0)::bigint, \
             COALESCE(sum(cost_micros), 0)::bigint \
         FROM ledger_entries WHERE {column} = $1 AND ($2::text IS NULL OR node = $2)"
    );
    let row = txn.query_one(sql.as_str(), &[&value, &node])?;
    Ok((to_u64(row.try_get(0)?), to_u64(row.try_get(1)?)))
}
