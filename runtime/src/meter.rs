//! Metering: the runtime's [`llm::Meter`] over [`Budgets`] and the
//! [`Ledger`], plus the fuel and wall-time charge of every call.
//!
//! Order of operations for one LLM chat: reserve (budgets, in memory, one
//! lock) → provider call → settle = ledger append (durable, group commit,
//! idempotent per run/node/attempt/seq/kind) → charge the budgets. A replayed
//! call (same key) is neither written nor charged twice.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use soma_host_api::{
    llm::{self, Metered, Reservation, Spender},
    storage::LazyDatabase,
};

use crate::{
    budget::{Budgets, Hold, Limit, Scope},
    ledger::{Entry, Kind, Ledger, LedgerError, LedgerWriter},
};

/// `[ledger]` in `soma.toml`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Charge every capsule call's fuel and wall time to the ledger (one
    /// group-committed write per call). Default true.
    pub meter_calls: bool,
    /// Price of 1000 fuel units, micro-units. Default 0.
    pub fuel_price_per_1k_micros: u64,
    /// Price of 1000 µs of wall time, micro-units. Default 0.
    pub wall_time_price_per_1k_us_micros: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            meter_calls: true,
            fuel_price_per_1k_micros: 0,
            wall_time_price_per_1k_us_micros: 0,
        }
    }
}

/// The node's budgets and ledger, shared by every call of an engine.
#[derive(Debug)]
pub struct Metering {
    config: LedgerConfig,
    ledger: Ledger,
    writer: OnceLock<Result<LedgerWriter, String>>,
    budgets: Budgets,
    holds: Mutex<HashMap<u64, Hold>>,
    next_hold: AtomicU64,
    loaded: OnceLock<Result<(), String>>,
    db: Arc<LazyDatabase>,
    observer: OnceLock<ChargeObserver>,
}

/// Told about every durably charged batch of entries (e.g. for metrics).
pub type Observer = Box<dyn Fn(&[Entry]) + Send + Sync>;

struct ChargeObserver(Observer);

impl std::fmt::Debug for ChargeObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChargeObserver")
    }
}

/// The scopes a spender's charges count against.
fn scopes(s: &Spender) -> [Scope; 4] {
    [
        Scope::Tenant(s.tenant.to_string()),
        Scope::Capsule(s.capsule.to_string()),
        Scope::Run(s.run.to_string()),
        Scope::Node(format!("{}/{}", s.run, s.node)),
    ]
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Metering {
    /// Metering over the node database. Opens nothing until first used.
    pub fn new(config: LedgerConfig, db: Arc<LazyDatabase>) -> Self {
        Self {
            config,
            ledger: Ledger::new(db.clone()),
            db,
            loaded: OnceLock::new(),
            writer: OnceLock::new(),
            budgets: Budgets::default(),
            holds: Mutex::new(HashMap::new()),
            next_hold: AtomicU64::new(1),
            observer: OnceLock::new(),
        }
    }

    /// Install the observer of charges (once; later calls are ignored).
    /// It runs on the charging thread after the commit: keep it cheap.
    pub fn observe(&self, observer: Observer) {
        let _ = self.observer.set(ChargeObserver(observer));
    }

    /// Report entries that were newly charged (not replays).
    fn charged(&self, entries: &[Entry], appended: &crate::ledger::Appended) {
        if appended.duplicates == 0
            && let Some(o) = self.observer.get()
        {
            (o.0)(entries);
        }
    }

    /// The ledger (for reports).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The in-memory budgets.
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Whether calls are charged fuel and wall time.
    pub fn meters_calls(&self) -> bool {
        self.config.meter_calls
    }

    /// Load the stored budgets and rebuild what each has spent from the
    /// ledger. Once per process, on the first budget operation.
    fn ensure_loaded(&self) -> Result<(), String> {
        self.loaded
            .get_or_init(|| {
                let db = self.db.get().map_err(|e| e.to_string())?;
                for (scope, limit) in crate::budget::load(&db)? {
                    let (tokens, micros) = self.spent(&scope).map_err(|e| e.to_string())?;
                    self.budgets.set_limit(scope.clone(), limit);
                    self.budgets.add_spent(scope, tokens, micros);
                }
                Ok(())
            })
            .clone()
    }

    /// What the ledger says `scope` has spent: (LLM tokens, micro-units).
    fn spent(&self, scope: &Scope) -> Result<(u64, u64), LedgerError> {
        use crate::ledger::{Filter, GroupBy};
        let from_rows = |rows: Vec<crate::ledger::SummaryRow>, key: &str| {
            rows.into_iter()
                .find(|r| r.key == key)
                .map_or((0, 0), |r| (r.tokens_in + r.tokens_out, r.cost_micros))
        };
        let from_entries = |entries: Vec<Entry>, node: Option<&str>| {
            entries
                .iter()
                .filter(|e| node.is_none_or(|n| e.node == n))
                .fold((0, 0), |(t, m), e| {
                    let tokens = matches!(e.kind, Kind::LlmTokensInput | Kind::LlmTokensOutput)
                        .then_some(e.quantity)
                        .unwrap_or(0);
                    (t + tokens, m + e.cost_micros)
                })
        };
        Ok(match scope {
            Scope::Tenant(t) => from_rows(
                self.ledger.summary(GroupBy::Tenant, None, None, Some(t))?,
                t,
            ),
            Scope::Capsule(c) => {
                from_rows(self.ledger.summary(GroupBy::Capsule, None, None, None)?, c)
            }
            Scope::Run(r) => from_entries(
                self.ledger.ls(&Filter {
                    run: Some(r.clone()),
                    ..Filter::default()
                })?,
                None,
            ),
            Scope::Node(rn) => {
                let (run, node) = rn.split_once('/').unwrap_or((rn, ""));
                from_entries(
                    self.ledger.ls(&Filter {
                        run: Some(run.to_owned()),
                        ..Filter::default()
                    })?,
                    Some(node),
                )
            }
        })
    }

    /// Set (`Some`) or remove (`None`) the budget of `scope`, durably.
    pub fn set_limit(&self, scope: Scope, limit: Option<Limit>) -> Result<(), String> {
        self.ensure_loaded()?;
        let db = self.db.get().map_err(|e| e.to_string())?;
        crate::budget::save(&db, &scope, limit.as_ref())?;
        let (tokens, micros) = self.spent(&scope).map_err(|e| e.to_string())?;
        self.budgets.replace(scope, limit, tokens, micros);
        Ok(())
    }

    /// Every budget with what it has spent and holds.
    pub fn list_budgets(&self) -> Result<Vec<(Scope, crate::budget::Account)>, String> {
        self.ensure_loaded()?;
        Ok(self.budgets.list())
    }

    /// Append durably through the group-commit writer (spawned on first use).
    pub fn append(&self, entries: Vec<Entry>) -> Result<crate::ledger::Appended, LedgerError> {
        let writer = self
            .writer
            .get_or_init(|| self.ledger.writer().map_err(|e| e.to_string()));
        let copy = self.observer.get().map(|_| entries.clone());
        let appended = match writer {
            Ok(w) => w.append(entries),
            Err(e) => Err(LedgerError::WriterSpawn(e.clone())),
        }?;
        if let Some(entries) = copy {
            self.charged(&entries, &appended);
        }
        Ok(appended)
    }

    /// [`Metering::append`] for async callers (the daemon).
    pub async fn append_async(
        &self,
        entries: Vec<Entry>,
    ) -> Result<crate::ledger::Appended, LedgerError> {
        let writer = self
            .writer
            .get_or_init(|| self.ledger.writer().map_err(|e| e.to_string()));
        let copy = self.observer.get().map(|_| entries.clone());
        let appended = match writer {
            Ok(w) => w.append_async(entries).await,
            Err(e) => Err(LedgerError::WriterSpawn(e.clone())),
        }?;
        if let Some(entries) = copy {
            self.charged(&entries, &appended);
        }
        Ok(appended)
    }

    /// Charge one capsule call's fuel and wall time. Idempotent per
    /// (run, node, attempt): a replay is not charged again.
    pub fn charge_call(
        &self,
        spender: &Spender,
        fuel: Option<u64>,
        wall_time_us: u64,
    ) -> Result<(), LedgerError> {
        let Some(charge) = self.call_charge(spender, fuel, wall_time_us) else {
            return Ok(());
        };
        let appended = self.append(charge.entries.clone())?;
        self.settle_budgets(&charge, &appended);
        Ok(())
    }

    /// The ledger entries for one call's fuel and wall time, to be written
    /// by the caller in its own transaction ([`Metering::write_charges`]);
    /// `None` when calls are not metered. Cost: two small allocations.
    pub fn call_charge(
        &self,
        spender: &Spender,
        fuel: Option<u64>,
        wall_time_us: u64,
    ) -> Option<CallCharge> {
        if !self.config.meter_calls {
            return None;
        }
        let base = |kind, quantity, price| Entry {
            id: 0,
            time_ms: now_ms(),
            tenant: spender.tenant.to_string(),
            run: spender.run.to_string(),
            node: spender.node.to_string(),
            attempt: spender.attempt,
            seq: 0,
            capsule: spender.capsule.to_string(),
            kind,
            quantity,
            unit_price_micros: price,
            cost_micros: Entry::cost_for(quantity, price),
            provider: None,
            model: None,
            estimated: false,
        };
        let mut entries = vec![base(
            Kind::WallTime,
            wall_time_us,
            self.config.wall_time_price_per_1k_us_micros,
        )];
        if let Some(f) = fuel {
            entries.push(base(Kind::Fuel, f, self.config.fuel_price_per_1k_micros));
        }
        Some(CallCharge {
            entries,
            scopes: scopes(spender),
        })
    }

    /// Write call charges inside `txn` (the caller's own transaction, so the
    /// charge commits atomically with the caller's state). After the commit,
    /// pass each charge and its result to [`Metering::settle_charge`].
    pub fn write_charges(
        &self,
        txn: &redb::WriteTransaction,
        charges: &[&[Entry]],
    ) -> Result<Vec<crate::ledger::Appended>, LedgerError> {
        crate::ledger::append_in(txn, charges)
    }

    /// After a caller committed a charge itself ([`Metering::write_charges`]):
    /// count it against the budgets and tell the observer (unless it was a
    /// replay).
    pub fn settle_charge(&self, charge: &CallCharge, appended: &crate::ledger::Appended) {
        self.settle_budgets(charge, appended);
        self.charged(&charge.entries, appended);
    }

    /// Count a charge written through [`Metering::append`] /
    /// [`Metering::append_async`] (which already told the observer)
    /// against the budgets, unless it was a replay.
    pub fn settle_budgets(&self, charge: &CallCharge, appended: &crate::ledger::Appended) {
        let cost: u64 = charge.entries.iter().map(|e| e.cost_micros).sum();
        if appended.duplicates == 0 && cost > 0 {
            self.budgets.add_spent_to(&charge.scopes, 0, cost);
        }
    }
}

/// One call's fuel and wall-time charge, not yet written.
#[derive(Debug, Clone)]
pub struct CallCharge {
    /// The ledger entries (idempotency keys set).
    pub entries: Vec<Entry>,
    /// The budgets it counts against.
    scopes: [Scope; 4],
}

impl Drop for Metering {
    /// Flush and stop the group-commit thread, releasing the database.
    fn drop(&mut self) {
        if let Some(Ok(writer)) = self.writer.take() {
            writer.close();
        }
    }
}

impl llm::Meter for Metering {
    fn reserve(&self, spender: &Spender, tokens: u64, micros: u64) -> Result<Reservation, String> {
        self.ensure_loaded()
            .map_err(|e| format!("budgets are unavailable: {e}"))?;
        let hold = self.budgets.reserve(&scopes(spender), tokens, micros)?;
        let id = self.next_hold.fetch_add(1, Ordering::Relaxed);
        self.holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, hold);
        Ok(Reservation { id, tokens, micros })
    }

    fn settle(
        &self,
        spender: &Spender,
        reservation: Reservation,
        m: &Metered,
    ) -> Result<(), String> {
        let hold = self
            .holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&reservation.id);
        let time_ms = now_ms();
        let entry = |kind, quantity, price| Entry {
            id: 0,
            time_ms,
            tenant: spender.tenant.to_string(),
            run: spender.run.to_string(),
            node: spender.node.to_string(),
            attempt: spender.attempt,
            seq: m.seq,
            capsule: spender.capsule.to_string(),
            kind,
            quantity,
            unit_price_micros: price,
            cost_micros: Entry::cost_for(quantity, price),
            provider: Some(m.provider.clone()),
            model: Some(m.model.clone()),
            estimated: m.estimated,
        };
        let entries = vec![
            entry(
                Kind::LlmTokensInput,
                m.prompt_tokens,
                m.input_price_per_1k_micros,
            ),
            entry(
                Kind::LlmTokensOutput,
                m.completion_tokens,
                m.output_price_per_1k_micros,
            ),
        ];
        let cost: u64 = entries.iter().map(|e| e.cost_micros).sum();
        let appended = self.append(entries);
        let scopes = scopes(spender);
        match (appended, hold) {
            (Ok(a), Some(hold)) => {
                let (tokens, micros) = if a.duplicates == 0 {
                    (m.prompt_tokens + m.completion_tokens, cost)
                } else {
                    (0, 0) // a replay: charged the first time
                };
                self.budgets.settle(hold, &scopes, tokens, micros);
                Ok(())
            }
            (Ok(_), None) => Ok(()),
            (Err(e), hold) => {
                if let Some(h) = hold {
                    self.budgets.release(h);
                }
                Err(format!("could not record the usage in the ledger: {e}"))
            }
        }
    }

    fn release(&self, _: &Spender, reservation: Reservation) {
        if let Some(h) = self
            .holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&reservation.id)
        {
            self.budgets.release(h);
        }
    }
}
