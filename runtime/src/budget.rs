//! Budgets: limits in tokens and/or money per tenant, capsule, run and DAG
//! node, enforced by reserve → settle.
//!
//! Before an LLM call the host *reserves* the worst case (estimated prompt
//! tokens + `max_tokens`, and its price) against every budget that applies;
//! the call is refused with `budget-exceeded` if any would go over. After the
//! call the reservation is *settled*: the actual usage is charged and the rest
//! released. All of it happens under one lock, so parallel calls sharing a
//! budget can never together pass it by more than the error of one
//! reservation (a provider that reports more prompt tokens than estimated).

pub mod postgres;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use soma_host_api::storage::OpenError;

use crate::ledger::LedgerError;

/// Why the stored budgets could not be read, written or rebuilt. Cheap to
/// clone (the first failure to load is kept and answered again); the
/// sources are kept, so a chain printer shows each cause once.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BudgetError {
    /// The node database could not be opened (its message names the file,
    /// the cause and what to do).
    #[error(transparent)]
    Open(Arc<OpenError>),
    /// redb failed on the budget table.
    #[error(
        "the stored budgets could not be read or written (check free disk space and permissions of the --data directory)"
    )]
    Store(#[source] Arc<redb::Error>),
    /// A limit could not be encoded.
    #[error("a budget limit could not be encoded")]
    Encode(#[source] Arc<serde_json::Error>),
    /// What a budget has spent could not be rebuilt from the ledger.
    #[error("cannot rebuild what the budgets have spent from the ledger")]
    Ledger(#[from] LedgerError),
    /// The budgets on the shared PostgreSQL store could not be read or
    /// written (the source says whether to retry).
    #[error("the budgets on the PostgreSQL store could not be read or written")]
    Shared(#[source] Arc<crate::store::postgres::PgError>),
}

impl From<OpenError> for BudgetError {
    fn from(e: OpenError) -> Self {
        Self::Open(Arc::new(e))
    }
}

fn store_err(e: impl Into<redb::Error>) -> BudgetError {
    BudgetError::Store(Arc::new(e.into()))
}

/// Scope key → [`Limit`] as JSON. Spending is not stored here: it is rebuilt
/// from the ledger, which is the one durable record of what was charged.
const BUDGETS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("budgets");

/// Store `limit` for `scope` durably (`None` removes the budget).
pub fn save(db: &redb::Database, scope: &Scope, limit: Option<&Limit>) -> Result<(), BudgetError> {
    save_all(db, &[(scope.clone(), limit.copied())])
}

/// Store (or remove, `None`) many budgets in one durable transaction.
/// Cost: one fsync'd commit however many there are.
pub fn save_all(db: &redb::Database, limits: &[(Scope, Option<Limit>)]) -> Result<(), BudgetError> {
    let txn = db.begin_write().map_err(store_err)?;
    {
        let mut t = txn.open_table(BUDGETS).map_err(store_err)?;
        for (scope, limit) in limits {
            match limit {
                Some(l) => {
                    let json =
                        serde_json::to_vec(l).map_err(|e| BudgetError::Encode(Arc::new(e)))?;
                    t.insert(scope.key().as_str(), json.as_slice())
                        .map_err(store_err)?;
                }
                None => {
                    t.remove(scope.key().as_str()).map_err(store_err)?;
                }
            }
        }
    }
    txn.commit().map_err(store_err)
}

/// Every stored budget.
pub fn load(db: &redb::Database) -> Result<Vec<(Scope, Limit)>, BudgetError> {
    let txn = db.begin_read().map_err(store_err)?;
    let t = match txn.open_table(BUDGETS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(store_err(e)),
    };
    let mut out = Vec::new();
    for item in t.iter().map_err(store_err)? {
        let (k, v) = item.map_err(store_err)?;
        if let (Some(scope), Ok(limit)) =
            (Scope::parse(k.value()), serde_json::from_slice(v.value()))
        {
            out.push((scope, limit));
        }
    }
    Ok(out)
}

/// What a budget applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "scope", content = "id")]
pub enum Scope {
    /// Everything a tenant spends.
    Tenant(String),
    /// Everything spent by one capsule (by digest).
    Capsule(String),
    /// One run (a `soma run` or a DAG run).
    Run(String),
    /// One node of a DAG run (`run/node`).
    Node(String),
}

impl Scope {
    /// Stable text form, e.g. `tenant:acme`, used as the storage key.
    pub fn key(&self) -> String {
        match self {
            Self::Tenant(t) => format!("tenant:{t}"),
            Self::Capsule(c) => format!("capsule:{c}"),
            Self::Run(r) => format!("run:{r}"),
            Self::Node(n) => format!("node:{n}"),
        }
    }

    /// Parse [`Scope::key`]'s form.
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, id) = text.split_once(':')?;
        if id.is_empty() {
            return None;
        }
        let id = id.to_owned();
        Some(match kind {
            "tenant" => Self::Tenant(id),
            "capsule" => Self::Capsule(id),
            "run" => Self::Run(id),
            "node" => Self::Node(id),
            _ => return None,
        })
    }
}

/// A budget's limits; `None` means unlimited in that unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Limit {
    /// Tokens (input + output).
    pub tokens: Option<u64>,
    /// Money, in micro-units.
    pub micros: Option<u64>,
}

/// One budget's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Account {
    /// The limits.
    pub limit: Limit,
    /// Charged so far (durable: rebuilt from the ledger).
    pub spent_tokens: u64,
    /// Charged so far, micro-units.
    pub spent_micros: u64,
    /// Held by calls in flight.
    pub reserved_tokens: u64,
    /// Held by calls in flight, micro-units.
    pub reserved_micros: u64,
}

impl Account {
    pub(crate) fn refusal(&self, scope: &Scope, tokens: u64, micros: u64) -> Option<Refusal> {
        let over = |limit: Option<u64>, spent: u64, held: u64, want: u64| {
            limit.filter(|&l| spent.saturating_add(held).saturating_add(want) > l)
        };
        let refusal = |unit, limit, spent, held, needed| Refusal {
            scope: scope.clone(),
            unit,
            limit,
            spent,
            held,
            needed,
        };
        if let Some(l) = over(
            self.limit.tokens,
            self.spent_tokens,
            self.reserved_tokens,
            tokens,
        ) {
            return Some(refusal(
                Unit::Tokens,
                l,
                self.spent_tokens,
                self.reserved_tokens,
                tokens,
            ));
        }
        if let Some(l) = over(
            self.limit.micros,
            self.spent_micros,
            self.reserved_micros,
            micros,
        ) {
            return Some(refusal(
                Unit::Micros,
                l,
                self.spent_micros,
                self.reserved_micros,
                micros,
            ));
        }
        None
    }
}

/// What a budget is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// LLM tokens (input + output).
    Tokens,
    /// Money, micro-units.
    Micros,
}

impl Unit {
    /// `tokens` or `micros`.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Tokens => "tokens",
            Unit::Micros => "micros",
        }
    }
}

/// Why a budget refused a reservation: which scope, in which unit, and
/// the numbers. Its `Display` is the message a caller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The budget that refused.
    pub scope: Scope,
    /// The unit that ran out.
    pub unit: Unit,
    /// The limit.
    pub limit: u64,
    /// Spent so far.
    pub spent: u64,
    /// Held by calls in flight.
    pub held: u64,
    /// What this call asked to hold.
    pub needed: u64,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            scope,
            limit,
            spent,
            held,
            needed,
            ..
        } = self;
        match self.unit {
            Unit::Tokens => write!(
                f,
                "{} has a budget of {limit} tokens: {spent} spent, {held} held by calls in \
                 flight, this call needs up to {needed}",
                scope.key()
            ),
            Unit::Micros => write!(
                f,
                "{} has a budget of {limit} micro-units: {spent} spent, {held} held, this \
                 call needs up to {needed}",
                scope.key()
            ),
        }
    }
}

/// A reservation held by one call.
#[derive(Debug, PartialEq, Eq)]
pub struct Hold {
    scopes: Vec<Scope>,
    /// Tokens held.
    pub tokens: u64,
    /// Micro-units held.
    pub micros: u64,
}

/// All budgets of a node, in memory, guarded by one lock.
#[derive(Debug, Default)]
pub struct Budgets {
    accounts: Mutex<HashMap<Scope, Account>>,
}

impl Budgets {
    /// Set (or replace) the limit of `scope`, keeping what was spent.
    pub fn set_limit(&self, scope: Scope, limit: Limit) {
        let mut a = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        a.entry(scope).or_default().limit = limit;
    }

    /// Replace `scope`'s budget (`None` removes it) with `spent` as rebuilt
    /// from the ledger, keeping what calls in flight hold.
    pub fn replace(&self, scope: Scope, limit: Option<Limit>, tokens: u64, micros: u64) {
        let mut a = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        match limit {
            None => {
                a.remove(&scope);
            }
            Some(limit) => {
                let acc = a.entry(scope).or_default();
                acc.limit = limit;
                acc.spent_tokens = tokens;
                acc.spent_micros = micros;
            }
        }
    }

    /// Record spending that happened before (rebuilding from the ledger).
    pub fn add_spent(&self, scope: Scope, tokens: u64, micros: u64) {
        let mut a = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let acc = a.entry(scope).or_default();
        acc.spent_tokens = acc.spent_tokens.saturating_add(tokens);
        acc.spent_micros = acc.spent_micros.saturating_add(micros);
    }

    /// Charge spending outside a reservation (fuel and wall time) to every
    /// scope in `scopes` that has an account.
    pub fn add_spent_to(&self, scopes: &[Scope], tokens: u64, micros: u64) {
        let mut a = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        for s in scopes {
            if let Some(acc) = a.get_mut(s) {
                acc.spent_tokens = acc.spent_tokens.saturating_add(tokens);
                acc.spent_micros = acc.spent_micros.saturating_add(micros);
            }
        }
    }

    /// The state of `scope`, if it has a budget or spending.
    pub fn account(&self, scope: &Scope) -> Option<Account> {
        let a = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        a.get(scope).copied()
    }

    /// Every account, sorted by scope.
    pub fn list(&self) -> Vec<(Scope, Account)> {
        let a = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = a.iter().map(|(s, acc)| (s.clone(), *acc)).collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    }

    /// Reserve `tokens` and `micros` against every scope in `scopes` that
    /// has an account, all or nothing. Cost: one lock, one hash lookup per scope.
    pub fn reserve(&self, scopes: &[Scope], tokens: u64, micros: u64) -> Result<Hold, Refusal> {
        let mut a = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        for s in scopes {
            if let Some(reason) = a.get(s).and_then(|acc| acc.refusal(s, tokens, micros)) {
                return Err(reason);
            }
        }
        let mut held = Vec::new();
        for s in scopes {
            if let Some(acc) = a.get_mut(s) {
                acc.reserved_tokens = acc.reserved_tokens.saturating_add(tokens);
                acc.reserved_micros = acc.reserved_micros.saturating_add(micros);
                held.push(s.clone());
            }
        }
        Ok(Hold {
            scopes: held,
            tokens,
            micros,
        })
    }

    /// Release `hold` and charge the actual usage to the same scopes (and to
    /// `scopes` that have accounts but were not held, e.g. budgets created
    /// while the call ran).
    pub fn settle(&self, hold: Hold, scopes: &[Scope], tokens: u64, micros: u64) {
        let mut a = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        Self::unhold(&mut a, &hold);
        for s in scopes {
            if let Some(acc) = a.get_mut(s) {
                acc.spent_tokens = acc.spent_tokens.saturating_add(tokens);
                acc.spent_micros = acc.spent_micros.saturating_add(micros);
            }
        }
    }

    /// Release `hold` without charging (the call failed before spending).
    pub fn release(&self, hold: Hold) {
        let mut a = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        Self::unhold(&mut a, &hold);
    }

    fn unhold(a: &mut HashMap<Scope, Account>, hold: &Hold) {
        for s in &hold.scopes {
            if let Some(acc) = a.get_mut(s) {
                acc.reserved_tokens = acc.reserved_tokens.saturating_sub(hold.tokens);
                acc.reserved_micros = acc.reserved_micros.saturating_sub(hold.micros);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_keys_round_trip() {
        for s in [
            Scope::Tenant("acme".into()),
            Scope::Capsule("sha256:ab".into()),
            Scope::Run("r1".into()),
            Scope::Node("r1/plan".into()),
        ] {
            assert_eq!(Scope::parse(&s.key()), Some(s));
        }
        assert_eq!(Scope::parse("planet:x"), None);
        assert_eq!(Scope::parse("tenant:"), None);
    }

    #[test]
    fn reserve_is_all_or_nothing_and_settle_charges_actuals() {
        let b = Budgets::default();
        let run = Scope::Run("r".into());
        let tenant = Scope::Tenant("t".into());
        b.set_limit(
            run.clone(),
            Limit {
                tokens: Some(100),
                micros: None,
            },
        );
        b.set_limit(
            tenant.clone(),
            Limit {
                tokens: None,
                micros: Some(50),
            },
        );
        let scopes = [tenant.clone(), run.clone()];
        let h = b.reserve(&scopes, 80, 10).expect("fits");
        assert!(b.reserve(&scopes, 30, 1).is_err(), "80 held + 30 > 100");
        assert_eq!(
            b.account(&tenant).map(|a| a.reserved_micros),
            Some(10),
            "refusal held nothing"
        );
        b.settle(h, &scopes, 60, 7);
        let r = b.account(&run).expect("run");
        assert_eq!((r.spent_tokens, r.reserved_tokens), (60, 0));
        let err = b.reserve(&scopes, 10, 44).expect_err("money");
        assert_eq!((err.unit, err.limit, err.needed), (Unit::Micros, 50, 44));
        let err = err.to_string();
        assert!(
            err.contains("tenant:t") && err.contains("micro-units"),
            "{err}"
        );
        let h = b.reserve(&scopes, 10, 43).expect("exactly fits");
        b.release(h);
        assert_eq!(
            b.account(&tenant)
                .map(|a| (a.spent_micros, a.reserved_micros)),
            Some((7, 0))
        );
    }

    #[test]
    fn sixteen_threads_never_pass_the_budget() {
        let b = Arc::new(Budgets::default());
        let run = Scope::Run("shared".into());
        b.set_limit(
            run.clone(),
            Limit {
                tokens: Some(10_000),
                micros: None,
            },
        );
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let b = b.clone();
                let run = run.clone();
                std::thread::spawn(move || {
                    let mut granted = 0;
                    for _ in 0..200 {
                        if let Ok(h) = b.reserve(std::slice::from_ref(&run), 50, 0) {
                            granted += 1;
                            b.settle(h, std::slice::from_ref(&run), 40, 0);
                        }
                    }
                    granted
                })
            })
            .collect();
        let granted: u64 = threads.into_iter().map(|t| t.join().expect("join")).sum();
        let acc = b.account(&run).expect("run");
        assert_eq!(acc.spent_tokens, granted * 40);
        assert!(acc.spent_tokens <= 10_000, "spent {}", acc.spent_tokens);
        assert_eq!(acc.reserved_tokens, 0);
    }
}
