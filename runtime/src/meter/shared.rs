//! The charging books on the shared PostgreSQL store (`[store] backend =
//! "postgres"`): what [`BudgetLedger`](super::BudgetLedger) does with the
//! shared ledger ([`PgLedger`]) and budgets ([`PgBudgets`]) instead of the
//! node's redb ledger and in-memory budgets, so that every daemon of a
//! fleet charges one ledger and reserves against one set of budgets.
//!
//! A reservation is a `budget_holds` row; its id is the hold id the call
//! path carries (0: no budget applied, nothing is held). A call's charge is
//! written with [`PgBudgets::charge`]: the entries (idempotency keys as
//! unique constraints, so a replay on any daemon charges nothing) and the
//! settle of the hold in one transaction — written together or not at all.
//! Every operation blocks on one transaction; callers are on call-pool,
//! worker or `spawn_blocking` threads, never on an async task.

use super::CallCharge;
use crate::{
    budget::{
        Scope,
        postgres::{PgBudgets, PgHold, ReserveError},
    },
    ledger::{Appended, Entry, LedgerError, LedgerStore, postgres::PgLedger},
    store::postgres::{PgError, PgStore},
};

/// The shared ledger and budgets of one [`PgStore`].
#[derive(Debug, Clone)]
pub(super) struct SharedBooks {
    pub(super) ledger: PgLedger,
    pub(super) budgets: PgBudgets,
}

/// Why a reservation on the shared store was not granted.
#[derive(Debug)]
pub(super) enum Refused {
    /// A budget cannot cover it (the in-memory budgets' text).
    Budget(String),
    /// The store failed (its message says it is retryable); nothing held.
    Store(PgError),
}

/// The hold a `budget_holds` row id stands for (amounts are read from the
/// row when it is settled).
fn hold(id: Option<u64>) -> Option<PgHold> {
    let id = i64::try_from(id?).ok().filter(|&i| i > 0)?;
    Some(PgHold {
        id,
        tokens: 0,
        micros: 0,
    })
}

impl SharedBooks {
    pub(super) fn new(store: PgStore) -> Self {
        Self {
            ledger: PgLedger::new(store.clone()),
            budgets: PgBudgets::new(store),
        }
    }

    /// Hold `tokens`/`micros` against `scopes` on every daemon's budgets;
    /// `Ok(None)` when no scope has a budget. Cost: one transaction.
    pub(super) fn reserve(
        &self,
        scopes: &[Scope],
        tokens: u64,
        micros: u64,
    ) -> Result<Option<u64>, Refused> {
        match self.budgets.reserve(scopes, tokens, micros) {
            Ok(h) => Ok(u64::try_from(h.id).ok().filter(|&id| id > 0)),
            Err(ReserveError::Refused(reason)) => Err(Refused::Budget(reason)),
            Err(ReserveError::Store(e)) => Err(Refused::Store(e)),
        }
    }

    /// Write `entries` and settle the reservation `hold` to their cost on
    /// `scopes`, in one transaction (a replay releases the hold).
    pub(super) fn charge(
        &self,
        entries: &[Entry],
        hold_id: Option<u64>,
        scopes: &[Scope],
    ) -> Result<Appended, LedgerError> {
        self.budgets
            .charge(&self.ledger, entries, hold(hold_id), scopes)
    }

    /// [`SharedBooks::charge`] for a call's fuel/wall-time/fee charge.
    pub(super) fn charge_call(&self, charge: &CallCharge) -> Result<Appended, LedgerError> {
        let result = self.charge(&charge.entries, charge.hold, &charge.scopes);
        if result.is_err() {
            // Rolled back whole: the hold is still there; free it (if the
            // store is down this fails too and the row stays held until an
            // operator clears it — never an overcharge).
            self.release(charge.hold);
        }
        result
    }

    /// Release a reservation without charging. A failure is logged: the
    /// hold then keeps its amount reserved (budgets stay safe, never over).
    pub(super) fn release(&self, hold_id: Option<u64>) {
        if let Some(h) = hold(hold_id)
            && let Err(e) = self.budgets.release(h)
        {
            tracing::warn!(
                "could not release budget hold {} on the PostgreSQL store: {}",
                h.id,
                soma_host_api::error_chain(&e)
            );
        }
    }

    /// Settle a reservation after its charge was written by another
    /// transaction (the embedded DAG journal's batch): to the charge's cost
    /// if it was new, else released.
    pub(super) fn settle(&self, charge: &CallCharge, appended: &Appended) {
        let Some(h) = hold(charge.hold) else {
            if appended.duplicates == 0 {
                // No hold (no budget when the call started): count it still.
                let cost = super::total_cost(&charge.entries);
                if cost > 0 {
                    self.settle_unheld(&charge.scopes, cost);
                }
            }
            return;
        };
        let result = if appended.duplicates == 0 {
            self.budgets
                .settle(h, &charge.scopes, 0, super::total_cost(&charge.entries))
        } else {
            self.budgets.release(h)
        };
        if let Err(e) = result {
            tracing::warn!(
                "could not settle budget hold {} on the PostgreSQL store: {}",
                h.id,
                soma_host_api::error_chain(&e)
            );
        }
    }

    fn settle_unheld(&self, scopes: &[Scope], micros: u64) {
        let none = PgHold {
            id: 0,
            tokens: 0,
            micros: 0,
        };
        if let Err(e) = self.budgets.settle(none, scopes, 0, micros) {
            tracing::warn!(
                "could not count a charge against the budgets on the PostgreSQL store: {}",
                soma_host_api::error_chain(&e)
            );
        }
    }

    /// Append several charges, one transaction each (the DAG journal's
    /// batch; each is idempotent, so a batch retried after a crash between
    /// two of them charges every call once).
    pub(super) fn append_batches(
        &self,
        charges: &[&[Entry]],
    ) -> Result<Vec<Appended>, LedgerError> {
        charges.iter().map(|c| self.ledger.append(c)).collect()
    }
}
