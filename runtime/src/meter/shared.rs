//! The charging books on the shared PostgreSQL store (`[store] backend =
//! "postgres"`): what [`BudgetLedger`](super::BudgetLedger) does with the
//! shared ledger ([`PgLedger`]) and budgets ([`PgBudgets`]) instead of the
//! node's redb ledger and in-memory budgets, so that every daemon of a
//! fleet charges one ledger and reserves against one set of budgets.
//!
//! A reservation is a `budget_holds` row; its id is the hold id the call
//! path carries (0: no budget applied, nothing is held). A call's charge is
//! written by a group-commit thread ([`ChargeQueue`]) with
//! [`PgBudgets::charge_batch`]: the entries of every queued call
//! (idempotency keys as unique constraints, so a replay on any daemon
//! charges nothing) and the settles of their holds in one transaction —
//! written together or not at all, sharing one commit (per-call
//! transactions would queue on the rollup row they all update).
//! Every other operation blocks on one transaction; callers are on
//! call-pool, worker or `spawn_blocking` threads, never on an async task.

use std::sync::mpsc;

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
    charges: ChargeQueue,
}

/// Run with a committed (or failed) charge's result, on the charging thread.
pub(super) type Reply = Box<dyn FnOnce(Result<Appended, LedgerError>) + Send>;

/// One call's charge waiting for the group commit.
struct Queued {
    entries: Vec<Entry>,
    hold: Option<PgHold>,
    scopes: Vec<Scope>,
    reply: Reply,
}

/// The queue of the charging thread (it exits when the last clone is
/// dropped).
#[derive(Clone)]
struct ChargeQueue(mpsc::Sender<Queued>);

impl std::fmt::Debug for ChargeQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChargeQueue")
    }
}

/// Most calls one group-commit transaction takes.
const MAX_BATCH: usize = 256;

/// The charging thread: takes whatever is queued, writes it with its
/// settles in one transaction, answers each call. A failed batch (the
/// store is down) answers every call with the error and releases their
/// holds (which fails too while the store is down: the holds then stay).
fn charge_loop(budgets: &PgBudgets, ledger: &PgLedger, rx: &mpsc::Receiver<Queued>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(q) => batch.push(q),
                Err(_) => break,
            }
        }
        let charges: Vec<(&[Entry], Option<PgHold>, &[Scope])> = batch
            .iter()
            .map(|q| (q.entries.as_slice(), q.hold, q.scopes.as_slice()))
            .collect();
        match budgets.charge_batch(ledger, &charges) {
            Ok(results) => {
                for (q, r) in batch.into_iter().zip(results) {
                    (q.reply)(Ok(r));
                }
            }
            Err(e) => {
                for q in batch {
                    if let Some(h) = q.hold
                        && let Err(release) = budgets.release(h)
                    {
                        tracing::warn!(
                            "could not release budget hold {} on the PostgreSQL store: {}",
                            h.id,
                            soma_host_api::error_chain(&release)
                        );
                    }
                    (q.reply)(Err(e.clone()));
                }
            }
        }
    }
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
    /// The books of `store`, with their charging thread.
    pub(super) fn new(store: PgStore, hold_ttl_ms: u64) -> Result<Self, PgError> {
        let ledger = PgLedger::new(store.clone());
        let budgets = PgBudgets::new(store, hold_ttl_ms);
        let (tx, rx) = mpsc::channel::<Queued>();
        let (l, b) = (ledger.clone(), budgets.clone());
        std::thread::Builder::new()
            .name("soma-pg-charges".into())
            .spawn(move || charge_loop(&b, &l, &rx))
            .map_err(|e| {
                PgError::Config(format!("cannot start the PostgreSQL charging thread: {e}"))
            })?;
        Ok(Self {
            ledger,
            budgets,
            charges: ChargeQueue(tx),
        })
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

    /// Queue a call's fuel/wall-time/fee charge on the charging thread;
    /// `reply` runs there once it is committed with its settle (or has
    /// failed: then its hold was released, if the store let it). Cost: a
    /// validation and a channel send.
    pub(super) fn commit_call(&self, charge: &CallCharge, reply: Reply) {
        if let Err(e) = crate::ledger::postgres::validate_pg(&charge.entries) {
            self.release(charge.hold);
            reply(Err(e));
            return;
        }
        let queued = Queued {
            entries: charge.entries.clone(),
            hold: hold(charge.hold),
            scopes: charge.scopes.clone(),
            reply,
        };
        if let Err(mpsc::SendError(q)) = self.charges.0.send(queued) {
            self.release(charge.hold);
            (q.reply)(Err(LedgerError::WriterStopped));
        }
    }

    /// [`SharedBooks::commit_call`], waiting for the commit.
    pub(super) fn charge_call(&self, charge: &CallCharge) -> Result<Appended, LedgerError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.commit_call(
            charge,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap_or(Err(LedgerError::WriterStopped))
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
        charges: &[crate::ledger::Charge<'_>],
    ) -> Result<Vec<Appended>, LedgerError> {
        charges
            .iter()
            .map(|c| self.ledger.append(c.entries))
            .collect()
    }
}
