//! Metering: the runtime's [`llm::Meter`] over [`Budgets`] and the
//! [`Ledger`], plus the fuel and wall-time charge of every call.
//!
//! Order of operations for one LLM chat: reserve (budgets, in memory, one
//! lock) → provider call → settle = ledger append (durable, group commit,
//! idempotent per run/node/attempt/seq/kind) → charge the budgets. A replayed
//! call (same key) is neither written nor charged twice.
//!
//! With `[store] backend = "postgres"` the same operations go to the shared
//! store instead ([`shared`]): the reservation is a row every daemon sees,
//! and the charge and its settle are one PostgreSQL transaction. Callers do
//! not branch: [`BudgetLedger`] is the one seam, and [`BudgetLedger::reports`]
//! is the ledger every reader (`soma ledger`, `/v1/ledger`, the console)
//! uses.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize};
use soma_host_api::{
    llm::{self, Metered, Reservation, Spender},
    storage::LazyDatabase,
};

use crate::{
    budget::{BudgetError, Budgets, Hold, Limit, Scope},
    ledger::{Entry, Filter, GroupBy, Kind, Ledger, LedgerError, LedgerWriter},
};

pub mod fee;
mod shared;

pub use fee::{FeeSchedule, Tariff, TariffModel};

/// LLM tokens used per call in flight of token-priced capsules, by
/// (run, node, attempt).
type CallTokens = Mutex<HashMap<(String, String, u32), u64>>;

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
    /// Price of 1000 outbound HTTP requests (ledger kind `http-requests`),
    /// micro-units. Default 0.
    pub http_requests_price_per_1k_micros: u64,
    /// Price of 1000 bytes of outbound HTTP request bodies
    /// (`http-bytes-out`), micro-units. Default 0.
    pub http_bytes_out_price_per_1k_micros: u64,
    /// Price of 1000 bytes of outbound HTTP response bodies
    /// (`http-bytes-in`), micro-units. Default 0.
    pub http_bytes_in_price_per_1k_micros: u64,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            meter_calls: true,
            fuel_price_per_1k_micros: 0,
            wall_time_price_per_1k_us_micros: 0,
            http_requests_price_per_1k_micros: 0,
            http_bytes_out_price_per_1k_micros: 0,
            http_bytes_in_price_per_1k_micros: 0,
        }
    }
}

/// The node's budgets and ledger, shared by every call of an engine.
#[derive(Debug)]
pub struct BudgetLedger {
    config: LedgerConfig,
    ledger: Ledger,
    writer: OnceLock<Result<LedgerWriter, LedgerError>>,
    /// What settles a committed charge; shared with the ledger writer's
    /// thread, which settles charges committed for callers that left.
    accounts: Accounts,
    next_hold: AtomicU64,
    loaded: OnceLock<Result<(), BudgetError>>,
    db: Arc<LazyDatabase>,
    /// Marketplace prices, once installed ([`BudgetLedger::set_fee_schedule`]).
    fees: OnceLock<Arc<dyn FeeSchedule>>,
    /// Tokens used by calls in flight of priced capsules.
    call_tokens: CallTokens,
    /// Entries in `call_tokens`: lets a call of a free capsule skip its lock.
    pending_calls: AtomicU64,
    /// When each budget's refusal was last recorded as an analytics event.
    refusals: RefusalThrottle,
    /// The shared PostgreSQL ledger and budgets, with `[store] backend =
    /// "postgres"`: then every charge, reservation and report goes there.
    shared: Option<shared::SharedBooks>,
}

/// The least time between two `budget-exceeded` events of one budget.
pub const REFUSAL_EVERY_MS: u64 = 1000;

/// Most budgets [`RefusalThrottle`] remembers; past it, the ones not
/// refused within [`REFUSAL_EVERY_MS`] are forgotten.
const MAX_THROTTLED_BUDGETS: usize = 4096;

/// Lets one refusal per budget per [`REFUSAL_EVERY_MS`] through.
#[derive(Debug, Default)]
struct RefusalThrottle(Mutex<HashMap<Scope, u64>>);

impl RefusalThrottle {
    /// Whether a refusal of `scope` at `now_ms` is recorded. Cost: one lock
    /// and a hash lookup; a sweep when the map is full.
    fn allow(&self, scope: &Scope, now_ms: u64) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&at) = last.get(scope)
            && now_ms.saturating_sub(at) < REFUSAL_EVERY_MS
        {
            return false;
        }
        if last.len() >= MAX_THROTTLED_BUDGETS {
            last.retain(|_, at| now_ms.saturating_sub(*at) < REFUSAL_EVERY_MS);
            if last.len() >= MAX_THROTTLED_BUDGETS {
                return false;
            }
        }
        last.insert(scope.clone(), now_ms);
        true
    }
}

/// Why [`BudgetLedger::reserve_call_with_fee`] did not let a call start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallRefusal {
    /// A budget cannot cover the call's worst case (the message says which
    /// and what to raise).
    Budget(String),
    /// The shared store could not be asked (the message names it and says
    /// the call may be retried); nothing was held.
    Store(String),
}

impl std::fmt::Display for CallRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Budget(m) | Self::Store(m) => f.write_str(m),
        }
    }
}

/// The in-memory side of charging: budgets, the holds of calls in flight,
/// and the observer. Cheap to clone (three `Arc`s).
#[derive(Debug, Clone, Default)]
struct Accounts {
    budgets: Arc<Budgets>,
    holds: Arc<Mutex<HashMap<u64, Hold>>>,
    observer: Arc<OnceLock<ChargeObserver>>,
}

impl Accounts {
    fn take_hold(&self, id: Option<u64>) -> Option<Hold> {
        let id = id?;
        self.holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id)
    }

    /// Report entries that were newly charged (not replays).
    fn charged(&self, entries: &[Entry], appended: &crate::ledger::Appended) {
        if appended.duplicates == 0
            && let Some(o) = self.observer.get()
        {
            (o.0)(entries);
        }
    }

    /// Count a committed call charge against the budgets (settling its
    /// reservation), unless it was a replay.
    fn settle(&self, charge: &CallCharge, appended: &crate::ledger::Appended) {
        let cost = total_cost(&charge.entries);
        let hold = self.take_hold(charge.hold);
        match hold {
            Some(h) if appended.duplicates == 0 => {
                self.budgets.settle(h, &charge.scopes, 0, cost);
            }
            Some(h) => self.budgets.release(h),
            None if appended.duplicates == 0 && cost > 0 => {
                self.budgets.add_spent_to(&charge.scopes, 0, cost);
            }
            None => {}
        }
    }

    /// Drop a charge's reservation without charging (it was not written).
    fn release(&self, charge: &CallCharge) {
        if let Some(h) = self.take_hold(charge.hold) {
            self.budgets.release(h);
        }
    }
}

/// A shared-store failure of the budgets.
fn pg_budget(e: crate::store::postgres::PgError) -> BudgetError {
    BudgetError::Shared(Arc::new(e))
}

/// The sum of the entries' costs, saturating: an overflow reads as more
/// than any budget holds, never as a small number.
fn total_cost(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .fold(0u64, |t, e| t.saturating_add(e.cost_micros))
}

/// Told about every durably charged batch of entries (e.g. for metrics).
pub type Observer = Box<dyn Fn(&[Entry]) + Send + Sync>;

struct ChargeObserver(Observer);

impl std::fmt::Debug for ChargeObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChargeObserver")
    }
}

/// The scopes a spender's charges count against: its tenant, capsule, run,
/// node, and every node its node was derived from (a `for_each` instance
/// `fan[3]` also counts against `fan`; a node `plan.x` added by planner
/// `plan` also counts against `plan`), so a node's budget covers its
/// whole fan-out and plan.
fn scopes(s: &Spender) -> Vec<Scope> {
    let mut v = vec![
        Scope::Tenant(s.tenant.to_string()),
        Scope::Capsule(s.capsule.to_string()),
        Scope::Run(s.run.to_string()),
        Scope::Node(format!("{}/{}", s.run, s.node)),
    ];
    let mut id: &str = &s.node;
    while let Some(parent) = parent_node(id) {
        v.push(Scope::Node(format!("{}/{parent}", s.run)));
        id = parent;
    }
    v
}

/// The DAG node `id` was derived from: `fan[3]` → `fan` (a `for_each`
/// instance), `plan.x` → `plan` (a node added by a planner),
/// `plan.check[2]` → `plan.check`. `None` for a node of the spec itself.
/// Node ids are `[A-Za-z0-9_-]+`, so `.` and `[` only ever mark derivation.
pub fn parent_node(id: &str) -> Option<&str> {
    if let Some(inner) = id.strip_suffix(']') {
        return inner.rfind('[').map(|i| &id[..i]).filter(|p| !p.is_empty());
    }
    id.rfind('.').map(|i| &id[..i]).filter(|p| !p.is_empty())
}

/// Whether ledger node `entry_node` is `node` or was derived from it.
fn derived_from(entry_node: &str, node: &str) -> bool {
    entry_node
        .strip_prefix(node)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// Unix milliseconds now (0 before 1970).
pub(crate) use soma_host_api::meter::now_ms;

/// The two ledger entries (input and output tokens) one settled chat call
/// writes: the same on every store, and what a call reports of its chat
/// calls ([`crate::Outcome::llm`]).
pub fn llm_entries(spender: &Spender, m: &Metered) -> Vec<Entry> {
    let entry = |kind, quantity, price| Entry {
        id: 0,
        time_ms: m.time_ms,
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
    vec![
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
    ]
}

impl BudgetLedger {
    /// Budgets and ledger over the node database. Opens nothing until first used.
    pub fn new(config: LedgerConfig, db: Arc<LazyDatabase>) -> Self {
        Self {
            config,
            ledger: Ledger::new(db.clone()),
            db,
            loaded: OnceLock::new(),
            writer: OnceLock::new(),
            accounts: Accounts::default(),
            next_hold: AtomicU64::new(1),
            fees: OnceLock::new(),
            call_tokens: Mutex::new(HashMap::new()),
            pending_calls: AtomicU64::new(0),
            refusals: RefusalThrottle::default(),
            shared: None,
        }
    }

    /// Budgets and ledger where `[store]` says: [`BudgetLedger::new`] for
    /// redb (nothing opened), or the shared PostgreSQL store (connected and
    /// migrated here; blocking, never call it on an async task). The node
    /// database still holds what is per node (call statistics of failures,
    /// marketplace fee splits).
    pub fn open(
        config: LedgerConfig,
        db: Arc<LazyDatabase>,
        store: &crate::store::StoreConfig,
    ) -> Result<Self, crate::store::postgres::PgError> {
        let mut books = Self::new(config, db);
        if store.backend == crate::store::Backend::Postgres {
            // On a thread of its own: the synchronous driver panics on a
            // thread that runs an async task.
            let pg = std::thread::scope(|s| {
                s.spawn(|| crate::store::postgres::PgStore::open(store))
                    .join()
                    .unwrap_or_else(|_| {
                        Err(crate::store::postgres::PgError::Config(
                            "opening the PostgreSQL store panicked".into(),
                        ))
                    })
            })?;
            books.shared = Some(shared::SharedBooks::new(pg, store.hold_ttl_ms)?);
        }
        Ok(books)
    }

    /// Whether charges and budgets live on the shared PostgreSQL store.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The shared PostgreSQL store, when `[store]` names one: other shared
    /// state (the catalog's pulls, Temporal's large payloads) uses its
    /// connection pool instead of opening another.
    pub fn shared_store(&self) -> Option<&crate::store::postgres::PgStore> {
        self.shared.as_ref().map(|s| s.ledger.store())
    }

    /// The ledger reports read (entries, summaries, invoices, forecasts,
    /// the integrity check): the shared PostgreSQL ledger with `[store]
    /// backend = "postgres"`, else the node's redb ledger.
    pub fn reports(&self) -> &dyn crate::ledger::LedgerStore {
        match &self.shared {
            Some(s) => &s.ledger,
            None => &self.ledger,
        }
    }

    /// Install the marketplace's prices (once; later calls are ignored).
    /// Without it no call pays a marketplace fee.
    pub fn set_fee_schedule(&self, schedule: Arc<dyn FeeSchedule>) {
        let _ = self.fees.set(schedule);
    }

    /// Tell the installed fee schedule that prices or publications changed
    /// ([`FeeSchedule::changed`]); nothing without one. Blocks for its reload.
    pub fn prices_changed(&self) {
        if let Some(schedule) = self.fees.get() {
            schedule.changed();
        }
    }

    /// The marketplace tariff in force for `capsule` in a run started at
    /// `run_started_ms` (`None`: now). Cost: one `OnceLock` read when no
    /// schedule is installed, else the schedule's map lookup.
    pub fn tariff(&self, capsule: &str, run_started_ms: Option<u64>) -> Option<Arc<Tariff>> {
        self.fees.get()?.tariff(capsule, run_started_ms)
    }

    /// The LLM tokens the call of `spender` used, if its capsule is priced
    /// (forgets them; call once when the call ends). Cost: one atomic load
    /// when no priced call used an LLM, else one lock and a map removal.
    pub fn take_call_tokens(&self, spender: &Spender) -> u64 {
        if self.pending_calls.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let mut map = self.call_tokens.lock().unwrap_or_else(|p| p.into_inner());
        let taken = map.remove(&(
            spender.run.to_string(),
            spender.node.to_string(),
            spender.attempt,
        ));
        if taken.is_some() {
            self.pending_calls.fetch_sub(1, Ordering::Release);
        }
        taken.unwrap_or(0)
    }

    /// Install the observer of charges (once; later calls are ignored).
    /// It runs on the charging thread after the commit: keep it cheap.
    pub fn observe(&self, observer: Observer) {
        let _ = self.accounts.observer.set(ChargeObserver(observer));
    }

    /// Report entries that were newly charged (not replays).
    fn charged(&self, entries: &[Entry], appended: &crate::ledger::Appended) {
        self.accounts.charged(entries, appended);
    }

    /// The node's redb ledger (marketplace fee splits and call statistics
    /// live here on either backend; for entries and rollups use
    /// [`BudgetLedger::reports`]).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The in-memory budgets.
    pub fn budgets(&self) -> &Budgets {
        &self.accounts.budgets
    }

    /// Whether calls are charged fuel and wall time.
    pub fn meters_calls(&self) -> bool {
        self.config.meter_calls
    }

    /// Load the stored budgets and rebuild what each has spent from the
    /// ledger. Once per process, on the first budget operation.
    ///
    /// Cost: one scan of the daily rollups per kind of scope (tenant,
    /// capsule) and one indexed read of each budgeted run's entries —
    /// independent of the rest of the ledger and of the number of budgets
    /// per run.
    fn ensure_loaded(&self) -> Result<(), BudgetError> {
        self.loaded
            .get_or_init(|| {
                let db = self.db.get()?;
                let stored = crate::budget::load(&db)?;
                let mut spent = Spent::new(&self.ledger);
                for (scope, limit) in stored {
                    let (tokens, micros) = spent.of(&scope)?;
                    self.accounts.budgets.set_limit(scope.clone(), limit);
                    self.accounts.budgets.add_spent(scope, tokens, micros);
                }
                Ok(())
            })
            .clone()
    }

    /// Set (`Some`) or remove (`None`) the budget of `scope`, durably.
    pub fn set_limit(&self, scope: Scope, limit: Option<Limit>) -> Result<(), BudgetError> {
        self.set_limits(vec![(scope, limit)])
    }

    /// Set or remove many budgets in one durable transaction (a DAG run's
    /// run and node budgets). Cost: one commit, plus one indexed read of
    /// each distinct run's ledger entries.
    pub fn set_limits(&self, limits: Vec<(Scope, Option<Limit>)>) -> Result<(), BudgetError> {
        if limits.is_empty() {
            return Ok(());
        }
        if let Some(s) = &self.shared {
            for (scope, limit) in limits {
                s.budgets.set_limit(&scope, limit).map_err(pg_budget)?;
            }
            return Ok(());
        }
        self.ensure_loaded()?;
        let db = self.db.get()?;
        crate::budget::save_all(&db, &limits)?;
        let mut spent = Spent::new(&self.ledger);
        for (scope, limit) in limits {
            let (tokens, micros) = spent.of(&scope)?;
            self.accounts.budgets.replace(scope, limit, tokens, micros);
        }
        Ok(())
    }

    /// Every budget with what it has spent and holds.
    pub fn list_budgets(&self) -> Result<Vec<(Scope, crate::budget::Account)>, BudgetError> {
        if let Some(s) = &self.shared {
            return s.budgets.list().map_err(pg_budget);
        }
        self.ensure_loaded()?;
        Ok(self.accounts.budgets.list())
    }

    fn writer(&self) -> Result<&LedgerWriter, LedgerError> {
        self.writer
            .get_or_init(|| self.reports().writer())
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Append durably through the group-commit writer (spawned on first use).
    pub fn append(&self, entries: Vec<Entry>) -> Result<crate::ledger::Appended, LedgerError> {
        let copy = self.accounts.observer.get().map(|_| entries.clone());
        let appended = self.writer()?.append(entries)?;
        if let Some(entries) = copy {
            self.charged(&entries, &appended);
        }
        Ok(appended)
    }

    /// [`BudgetLedger::append`] for async callers (the daemon).
    pub async fn append_async(
        &self,
        entries: Vec<Entry>,
    ) -> Result<crate::ledger::Appended, LedgerError> {
        let copy = self.accounts.observer.get().map(|_| entries.clone());
        let appended = self.writer()?.append_async(entries).await?;
        if let Some(entries) = copy {
            self.charged(&entries, &appended);
        }
        Ok(appended)
    }

    /// Charge one capsule call's fuel and wall time, settling its
    /// reservation ([`BudgetLedger::reserve_call`]). Idempotent per (run, node,
    /// attempt): a replay is not charged again. Blocks for the group commit.
    pub fn charge_call(&self, charge: Option<CallCharge>) -> Result<(), LedgerError> {
        let Some(mut charge) = charge else {
            return Ok(());
        };
        if let Some(s) = &self.shared {
            let appended = s.charge_call(&charge)?;
            self.charged(&charge.entries, &appended);
            return Ok(());
        }
        let facts = charge.facts.take();
        let appended = self
            .writer()
            .and_then(|w| w.append_call(charge.entries.clone(), facts));
        if let Ok(appended) = &appended {
            self.charged(&charge.entries, appended);
        }
        match appended {
            Ok(appended) => {
                self.accounts.settle(&charge, &appended);
                Ok(())
            }
            Err(e) => {
                self.accounts.release(&charge);
                Err(e)
            }
        }
    }

    /// Commit one call's charge without waiting: the entries are queued on
    /// the group-commit writer at once, and when they are durable the
    /// budgets are settled and `then` runs — on the writer's thread, so the
    /// charge is written and counted even if whoever made the call has gone
    /// away (a client that disconnected). Many calls in flight share one
    /// fsync. Cost: one channel send here; `then` must be quick. On the
    /// shared PostgreSQL store a thread of its own group-commits charges
    /// with the settles of their holds, the same way.
    pub fn commit_call(
        &self,
        mut charge: CallCharge,
        then: impl FnOnce(Result<crate::ledger::Appended, LedgerError>) + Send + 'static,
    ) {
        if let Some(s) = &self.shared {
            // The charging thread commits it with its settle, then `then`.
            let accounts = self.accounts.clone();
            let entries = charge.entries.clone();
            s.commit_call(
                &charge,
                Box::new(move |result| {
                    if let Ok(appended) = &result {
                        accounts.charged(&entries, appended);
                    }
                    then(result);
                }),
            );
            return;
        }
        let writer = match self.writer() {
            Ok(w) => w,
            Err(e) => {
                self.accounts.release(&charge);
                then(Err(e));
                return;
            }
        };
        let accounts = self.accounts.clone();
        let entries = charge.entries.clone();
        let facts = charge.facts.take();
        writer.append_call_then(
            entries,
            facts,
            Box::new(move |result| {
                match &result {
                    Ok(appended) => {
                        accounts.settle(&charge, appended);
                        accounts.charged(&charge.entries, appended);
                    }
                    Err(_) => accounts.release(&charge),
                }
                then(result);
            }),
        );
    }

    /// The worst case a call can cost in fuel and wall time at the `[ledger]`
    /// prices: `fuel_limit` fuel (if fuel is metered) and `timeout_ms` of
    /// wall time, saturating. Pure arithmetic.
    pub fn worst_case_micros(&self, fuel_limit: Option<u64>, timeout_ms: u64) -> u64 {
        let fuel = fuel_limit.map_or(0, |f| {
            Entry::cost_for(f, self.config.fuel_price_per_1k_micros)
        });
        let wall = Entry::cost_for(
            timeout_ms.saturating_mul(1000),
            self.config.wall_time_price_per_1k_us_micros,
        );
        fuel.saturating_add(wall)
    }

    /// The worst case a call granted outbound HTTP can cost at the
    /// `[ledger] http_*` prices: `quotas`' requests per call, request bytes
    /// and response bytes per call, each at its price, saturating; 0 when
    /// calls are not metered (HTTP is charged only then). Pure arithmetic.
    pub fn http_worst_case_micros(&self, quotas: &soma_host_api::http::Config) -> u64 {
        if !self.config.meter_calls {
            return 0;
        }
        let c = &self.config;
        Entry::cost_for(
            u64::from(quotas.max_requests_per_call),
            c.http_requests_price_per_1k_micros,
        )
        .saturating_add(Entry::cost_for(
            quotas.max_request_bytes_per_call,
            c.http_bytes_out_price_per_1k_micros,
        ))
        .saturating_add(Entry::cost_for(
            quotas.max_response_bytes_per_call,
            c.http_bytes_in_price_per_1k_micros,
        ))
    }

    /// Before a call: reserve its worst-case fuel and wall-time cost
    /// ([`BudgetLedger::worst_case_micros`]) against every budget that applies
    /// (tenant, capsule, run, node and the nodes it was derived from), all
    /// or nothing. `Ok(None)`: nothing to hold (calls are not metered or
    /// cost nothing at the configured prices). `Err(reason)`: a budget
    /// cannot cover it; the call must not start. Pass the hold to
    /// [`BudgetLedger::call_charge`]; it is settled to the actual cost when the
    /// charge is committed.
    ///
    /// Cost: nothing when prices are 0; else one lock and a hash lookup per
    /// scope (the first use loads the stored budgets).
    pub fn reserve_call(
        &self,
        spender: &Spender,
        fuel_limit: Option<u64>,
        timeout_ms: u64,
    ) -> Result<Option<u64>, CallRefusal> {
        self.reserve_call_with_fee(spender, fuel_limit, timeout_ms, 0)
    }

    /// [`BudgetLedger::reserve_call`] plus `fee_micros`, the worst case of
    /// the call's marketplace fee ([`Tariff::worst_case_micros`]), held
    /// whether or not calls are metered.
    pub fn reserve_call_with_fee(
        &self,
        spender: &Spender,
        fuel_limit: Option<u64>,
        timeout_ms: u64,
        fee_micros: u64,
    ) -> Result<Option<u64>, CallRefusal> {
        self.reserve_call_with_http(spender, fuel_limit, timeout_ms, fee_micros, 0)
    }

    /// [`BudgetLedger::reserve_call_with_fee`] plus `http_micros`, the worst
    /// case of the call's outbound HTTP ([`BudgetLedger::http_worst_case_micros`]
    /// of its granted quotas; 0 for a call not granted HTTP). The hold is
    /// settled to what the call really used when its charge commits.
    pub fn reserve_call_with_http(
        &self,
        spender: &Spender,
        fuel_limit: Option<u64>,
        timeout_ms: u64,
        fee_micros: u64,
        http_micros: u64,
    ) -> Result<Option<u64>, CallRefusal> {
        let metered = if self.config.meter_calls {
            self.worst_case_micros(fuel_limit, timeout_ms)
                .saturating_add(http_micros)
        } else {
            0
        };
        let micros = metered.saturating_add(fee_micros);
        if micros == 0 {
            return Ok(None);
        }
        let explain = |reason: String| {
            let fee = if fee_micros > 0 {
                format!(
                    " plus at most {fee_micros} micro-units of marketplace fee \
                         (the capsule's listing price)"
                )
            } else {
                String::new()
            };
            let http = if http_micros > 0 && self.config.meter_calls {
                format!(
                    " plus at most {http_micros} micro-units of outbound HTTP (the \
                         [http] max_requests_per_call, max_request_bytes_per_call and \
                         max_response_bytes_per_call quotas at ledger.http_*_price_per_1k_micros)"
                )
            } else {
                String::new()
            };
            CallRefusal::Budget(format!(
                "{reason} (the worst case of this call: its fuel limit at \
                     ledger.fuel_price_per_1k_micros plus its timeout at \
                     ledger.wall_time_price_per_1k_us_micros{http}{fee}); raise the budget \
                     (PUT /v1/budgets or `soma budget set`) or lower the call's \
                     fuel or timeout_ms"
            ))
        };
        if let Some(s) = &self.shared {
            return s
                .reserve(&scopes(spender), 0, micros)
                .map_err(|refused| match refused {
                    shared::Refused::Budget(reason) => explain(reason),
                    shared::Refused::Store(e) => CallRefusal::Store(format!(
                        "budgets are unavailable: {}",
                        soma_host_api::error_chain(&e)
                    )),
                });
        }
        self.ensure_loaded().map_err(|e| {
            CallRefusal::Budget(format!(
                "budgets are unavailable: {}",
                soma_host_api::error_chain(&e)
            ))
        })?;
        let hold = self
            .accounts
            .budgets
            .reserve(&scopes(spender), 0, micros)
            .map_err(|refusal| {
                self.exceeded(spender, &refusal, "call");
                explain(refusal.to_string())
            })?;
        let id = self.next_hold.fetch_add(1, Ordering::Relaxed);
        self.accounts
            .holds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, hold);
        Ok(Some(id))
    }

    /// Record `refusal` of `spender`'s call (`what`: `call`, or `llm` for
    /// a chat request inside it) as a `budget-exceeded` analytics event,
    /// keyed `run/node/attempt/what` (a replayed attempt's refusal is the
    /// same fact), at most once per budget per [`REFUSAL_EVERY_MS`]: a
    /// refused call costs its tenant nothing, so a storm of them must not
    /// fill the outbox other tenants share. Queued on the group commit;
    /// never fails the caller.
    /// The PostgreSQL store has no outbox yet: nothing is recorded there.
    fn exceeded(&self, spender: &Spender, refusal: &crate::budget::Refusal, what: &str) {
        let now = now_ms();
        if !self.refusals.allow(&refusal.scope, now) {
            return;
        }
        let Ok(writer) = self.writer() else {
            return;
        };
        let key = format!(
            "{}/{}/{}/{what}",
            spender.run, spender.node, spender.attempt
        );
        writer.record(vec![crate::analytics::Event::new(
            &key,
            &spender.tenant,
            now,
            crate::analytics::Body::BudgetExceeded {
                scope: refusal.scope.key(),
                run: Some(spender.run.to_string()),
                node: Some(spender.node.to_string()),
                attempt: Some(spender.attempt),
                unit: refusal.unit.name().into(),
                limit: refusal.limit,
                spent: refusal.spent,
                held: refusal.held,
                needed: refusal.needed,
            },
        )]);
    }

    /// Release a reservation from [`BudgetLedger::reserve_call`] that will not
    /// be charged (the call never produced a charge).
    pub fn release_call(&self, hold: Option<u64>) {
        if let Some(s) = &self.shared {
            s.release(hold);
            return;
        }
        if let Some(h) = self.accounts.take_hold(hold) {
            self.accounts.budgets.release(h);
        }
    }

    /// The ledger entries for one call's fuel and wall time, carrying its
    /// reservation `hold`, to be committed by [`BudgetLedger::charge_call`],
    /// [`BudgetLedger::commit_call`] or in the caller's own transaction
    /// ([`BudgetLedger::write_charges`]); `None` when calls are not metered (the
    /// hold, if any, is released). Cost: two small allocations.
    pub fn call_charge(
        &self,
        spender: &Spender,
        fuel: Option<u64>,
        wall_time_us: u64,
        hold: Option<u64>,
    ) -> Option<CallCharge> {
        self.call_charge_with_fees(spender, fuel, wall_time_us, hold, Vec::new())
    }

    /// [`BudgetLedger::call_charge`] with the call's marketplace-fee entries
    /// ([`Tariff::entries`]) in the same charge, so they commit (with their
    /// revenue splits) in the same transaction as its fuel and wall time.
    /// Fees are charged even when calls are not metered.
    pub fn call_charge_with_fees(
        &self,
        spender: &Spender,
        fuel: Option<u64>,
        wall_time_us: u64,
        hold: Option<u64>,
        fees: Vec<Entry>,
    ) -> Option<CallCharge> {
        if !self.config.meter_calls {
            if fees.is_empty() {
                self.release_call(hold);
                return None;
            }
            return Some(CallCharge {
                entries: fees,
                scopes: scopes(spender),
                hold,
                facts: None,
            });
        }
        let time_ms = now_ms();
        let base = |kind, quantity, price| call_entry(spender, time_ms, kind, quantity, price);
        let mut entries = vec![base(
            Kind::WallTime,
            wall_time_us,
            self.config.wall_time_price_per_1k_us_micros,
        )];
        if let Some(f) = fuel {
            entries.push(base(Kind::Fuel, f, self.config.fuel_price_per_1k_micros));
        }
        entries.extend(fees);
        Some(CallCharge {
            entries,
            scopes: scopes(spender),
            hold,
            facts: None,
        })
    }

    /// The ledger entries of one call's outbound HTTP (`http-requests`,
    /// `http-bytes-out`, `http-bytes-in`; a kind with quantity 0 is left
    /// out) at the `[ledger]` prices, to be added to the call's charge
    /// ([`BudgetLedger::call_charge_with_fees`]'s `fees`): keyed like its
    /// fuel by (run, node, attempt, seq 0, kind), so a replayed attempt is
    /// not charged twice and each retry is charged once. Empty when calls
    /// are not metered or the call sent nothing. Cost: nothing for a call
    /// without requests, else three small allocations per entry.
    pub fn http_entries(
        &self,
        spender: &Spender,
        usage: &soma_host_api::http::Usage,
    ) -> Vec<Entry> {
        if !self.config.meter_calls || usage.requests == 0 {
            return Vec::new();
        }
        let c = &self.config;
        let time_ms = now_ms();
        [
            (
                Kind::HttpRequests,
                usage.requests,
                c.http_requests_price_per_1k_micros,
            ),
            (
                Kind::HttpBytesOut,
                usage.bytes_sent,
                c.http_bytes_out_price_per_1k_micros,
            ),
            (
                Kind::HttpBytesIn,
                usage.bytes_received,
                c.http_bytes_in_price_per_1k_micros,
            ),
        ]
        .into_iter()
        .filter(|(_, quantity, _)| *quantity > 0)
        .map(|(kind, quantity, price)| call_entry(spender, time_ms, kind, quantity, price))
        .collect()
    }

    /// Write call charges inside `txn` (the caller's own transaction, so the
    /// charge commits atomically with the caller's state). After the commit,
    /// pass each charge and its result to [`BudgetLedger::settle_charge`] (or,
    /// if the transaction failed, to [`BudgetLedger::release_charge`]).
    pub fn write_charges(
        &self,
        txn: &redb::WriteTransaction,
        charges: &[crate::ledger::Charge<'_>],
    ) -> Result<Vec<crate::ledger::Appended>, LedgerError> {
        // On the shared store the charges go there (before the caller's
        // commit; idempotent, so a journal batch replayed after a crash
        // charges nothing twice).
        if let Some(s) = &self.shared {
            return s.append_batches(charges);
        }
        crate::ledger::append_in(txn, charges)
    }

    /// After a caller committed a charge itself ([`BudgetLedger::write_charges`]):
    /// settle it against the budgets and tell the observer (unless it was a
    /// replay).
    pub fn settle_charge(&self, charge: &CallCharge, appended: &crate::ledger::Appended) {
        self.settle_budgets(charge, appended);
        self.charged(&charge.entries, appended);
    }

    /// After a metered call failed: count the failure in its capsule's
    /// call statistics (the cost card's success rate), once per run, node
    /// and attempt however often the attempt is replayed. Nothing when
    /// calls are not metered. Never fails the call: an error is logged.
    /// Cost: one durable transaction, paid by failed calls only.
    pub fn record_failure(&self, spender: &Spender, class: &str) {
        if !self.config.meter_calls {
            return;
        }
        if let Err(e) = self.reports().record_call_failure(
            &spender.run,
            &spender.node,
            spender.attempt,
            &spender.capsule,
            now_ms(),
            &crate::ledger::FailedCall {
                tenant: &spender.tenant,
                class,
            },
        ) {
            tracing::warn!(
                "could not count a failed call of {} in its call statistics: {}",
                spender.capsule,
                soma_host_api::error_chain(&e)
            );
        }
    }

    /// Drop a charge that will not be committed, releasing its reservation.
    pub fn release_charge(&self, charge: &CallCharge) {
        if let Some(s) = &self.shared {
            s.release(charge.hold);
            return;
        }
        self.accounts.release(charge);
    }

    /// Count a charge written through [`BudgetLedger::append`] /
    /// [`BudgetLedger::append_async`] (which already told the observer)
    /// against the budgets, unless it was a replay.
    pub fn settle_budgets(&self, charge: &CallCharge, appended: &crate::ledger::Appended) {
        if let Some(s) = &self.shared {
            s.settle(charge, appended);
            return;
        }
        self.accounts.settle(charge, appended);
    }
}

/// What scopes have spent according to the ledger, for rebuilding budgets:
/// each source is read at most once however many budgets need it.
struct Spent<'a> {
    ledger: &'a Ledger,
    tenants: Option<HashMap<String, (u64, u64)>>,
    capsules: Option<HashMap<String, (u64, u64)>>,
    /// Per run: (node, tokens, micros) of each entry.
    runs: HashMap<String, Vec<(String, u64, u64)>>,
}

impl<'a> Spent<'a> {
    fn new(ledger: &'a Ledger) -> Self {
        Self {
            ledger,
            tenants: None,
            capsules: None,
            runs: HashMap::new(),
        }
    }

    fn summary(ledger: &Ledger, by: GroupBy) -> Result<HashMap<String, (u64, u64)>, LedgerError> {
        Ok(ledger
            .summary(by, None, None, None)?
            .into_iter()
            .map(|r| {
                let tokens = r.tokens_in.saturating_add(r.tokens_out);
                (r.key, (tokens, r.cost_micros))
            })
            .collect())
    }

    fn run(&mut self, run: &str) -> Result<&[(String, u64, u64)], LedgerError> {
        if !self.runs.contains_key(run) {
            let entries = self.ledger.ls(&Filter {
                run: Some(run.to_owned()),
                ..Filter::default()
            })?;
            let rows = entries
                .into_iter()
                .map(|e| {
                    let tokens = if matches!(e.kind, Kind::LlmTokensInput | Kind::LlmTokensOutput) {
                        e.quantity
                    } else {
                        0
                    };
                    (e.node, tokens, e.cost_micros)
                })
                .collect();
            self.runs.insert(run.to_owned(), rows);
        }
        Ok(self.runs.get(run).map_or(&[], Vec::as_slice))
    }

    /// (LLM tokens, micro-units) `scope` has spent, saturating.
    fn of(&mut self, scope: &Scope) -> Result<(u64, u64), LedgerError> {
        let sum = |rows: &[(String, u64, u64)], node: Option<&str>| {
            rows.iter()
                .filter(|(n, ..)| node.is_none_or(|want| derived_from(n, want)))
                .fold((0u64, 0u64), |(t, m), (_, tokens, micros)| {
                    (t.saturating_add(*tokens), m.saturating_add(*micros))
                })
        };
        Ok(match scope {
            Scope::Tenant(t) => {
                if self.tenants.is_none() {
                    self.tenants = Some(Self::summary(self.ledger, GroupBy::Tenant)?);
                }
                self.tenants
                    .as_ref()
                    .and_then(|m| m.get(t).copied())
                    .unwrap_or_default()
            }
            Scope::Capsule(c) => {
                if self.capsules.is_none() {
                    self.capsules = Some(Self::summary(self.ledger, GroupBy::Capsule)?);
                }
                self.capsules
                    .as_ref()
                    .and_then(|m| m.get(c).copied())
                    .unwrap_or_default()
            }
            Scope::Run(r) => sum(self.run(r)?, None),
            Scope::Node(rn) => {
                let (run, node) = rn.split_once('/').unwrap_or((rn, ""));
                sum(self.run(run)?, Some(node))
            }
        })
    }
}

/// One call's fuel and wall-time charge, not yet written.
#[derive(Debug, Clone)]
pub struct CallCharge {
    /// The ledger entries (idempotency keys set).
    pub entries: Vec<Entry>,
    /// The budgets it counts against.
    scopes: Vec<Scope>,
    /// The reservation it settles ([`BudgetLedger::reserve_call`]).
    hold: Option<u64>,
    /// What the call's analytics events say beyond the entries.
    facts: Option<Box<crate::analytics::CallFacts>>,
}

impl CallCharge {
    /// Attach the call's name, peak memory and emitted events, written to
    /// the analytics outbox with the charge.
    pub fn with_facts(mut self, facts: crate::analytics::CallFacts) -> Self {
        self.facts = Some(Box::new(facts));
        self
    }

    /// The entries and facts as one ledger request.
    pub fn as_request(&self) -> crate::ledger::Charge<'_> {
        crate::ledger::Charge {
            entries: &self.entries,
            facts: self.facts.as_deref(),
            events: &[],
        }
    }
}

impl Drop for BudgetLedger {
    /// Flush and stop the group-commit thread, releasing the database.
    fn drop(&mut self) {
        if let Some(Ok(writer)) = self.writer.take() {
            writer.close();
        }
    }
}

impl llm::Meter for BudgetLedger {
    fn reserve(&self, spender: &Spender, tokens: u64, micros: u64) -> Result<Reservation, String> {
        if let Some(s) = &self.shared {
            // Id 0: no budget applied, nothing held.
            let id = s
                .reserve(&scopes(spender), tokens, micros)
                .map_err(|refused| match refused {
                    shared::Refused::Budget(reason) => reason,
                    shared::Refused::Store(e) => format!(
                        "budgets are unavailable: {}",
                        soma_host_api::error_chain(&e)
                    ),
                })?
                .unwrap_or(0);
            return Ok(Reservation { id, tokens, micros });
        }
        self.ensure_loaded().map_err(|e| {
            format!(
                "budgets are unavailable: {}",
                soma_host_api::error_chain(&e)
            )
        })?;
        let hold = self
            .accounts
            .budgets
            .reserve(&scopes(spender), tokens, micros)
            .map_err(|refusal| {
                self.exceeded(spender, &refusal, "llm");
                refusal.to_string()
            })?;
        let id = self.next_hold.fetch_add(1, Ordering::Relaxed);
        self.accounts
            .holds
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
        let hold = self.accounts.take_hold(Some(reservation.id));
        let entries = llm_entries(spender, m);
        // Saturating: a provider reporting 2^64−1 tokens exhausts every
        // budget it counts against instead of wrapping to a small number.
        let cost = total_cost(&entries);
        let tokens = m.prompt_tokens.saturating_add(m.completion_tokens);
        // A priced capsule's call may owe a fee on its tokens: count them
        // for the call (taken by `Engine::call` when the call ends).
        if self.tariff(&spender.capsule, None).is_some() {
            let mut map = self.call_tokens.lock().unwrap_or_else(|p| p.into_inner());
            let used = map
                .entry((
                    spender.run.to_string(),
                    spender.node.to_string(),
                    spender.attempt,
                ))
                .or_insert_with(|| {
                    self.pending_calls.fetch_add(1, Ordering::Release);
                    0
                });
            *used = used.saturating_add(tokens);
        }
        if let Some(s) = &self.shared {
            let result = s.charge(&entries, Some(reservation.id), &scopes(spender));
            return match result {
                Ok(a) => {
                    self.charged(&entries, &a);
                    Ok(())
                }
                Err(e) => {
                    s.release(Some(reservation.id));
                    Err(format!("could not record the usage in the ledger: {e}"))
                }
            };
        }
        let appended = self.append(entries);
        let scopes = scopes(spender);
        match (appended, hold) {
            (Ok(a), Some(hold)) => {
                let (tokens, micros) = if a.duplicates == 0 {
                    (tokens, cost)
                } else {
                    (0, 0) // a replay: charged the first time
                };
                self.accounts.budgets.settle(hold, &scopes, tokens, micros);
                Ok(())
            }
            (Ok(a), None) => {
                if a.duplicates == 0 {
                    self.accounts.budgets.add_spent_to(&scopes, tokens, cost);
                }
                Ok(())
            }
            (Err(e), hold) => {
                if let Some(h) = hold {
                    self.accounts.budgets.release(h);
                }
                Err(format!("could not record the usage in the ledger: {e}"))
            }
        }
    }

    fn release(&self, _: &Spender, reservation: Reservation) {
        if let Some(s) = &self.shared {
            s.release(Some(reservation.id));
            return;
        }
        if let Some(h) = self.accounts.take_hold(Some(reservation.id)) {
            self.accounts.budgets.release(h);
        }
    }
}

/// A call's own ledger entry (sequence 0, keyed by the spender's run,
/// node and attempt) of `quantity` `kind` at `price` per 1000.
fn call_entry(spender: &Spender, time_ms: u64, kind: Kind, quantity: u64, price: u64) -> Entry {
    Entry {
        id: 0,
        time_ms,
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
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_refusal_storm_records_one_event_per_budget_per_second_in_bounded_memory() {
        let t = RefusalThrottle::default();
        let acme = Scope::Tenant("acme".into());
        let globex = Scope::Tenant("globex".into());
        assert!(t.allow(&acme, 10_000));
        assert!(!t.allow(&acme, 10_500), "acme again within the second");
        assert!(t.allow(&globex, 10_500), "another budget is not held back");
        assert!(t.allow(&acme, 11_000), "a second later");
        // Full of budgets refused just now: new ones wait, the map stays bounded.
        for i in 0..MAX_THROTTLED_BUDGETS {
            t.allow(&Scope::Run(format!("r{i}")), 20_000);
        }
        assert!(!t.allow(&Scope::Run("late".into()), 20_001));
        assert!(t.0.lock().unwrap().len() <= MAX_THROTTLED_BUDGETS);
        // A second on, the stale ones are swept and it records again.
        assert!(t.allow(&Scope::Run("late".into()), 21_000));
        assert_eq!(t.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn derived_nodes_count_against_the_nodes_they_came_from() {
        assert_eq!(parent_node("fan[3]"), Some("fan"));
        assert_eq!(parent_node("plan.x"), Some("plan"));
        assert_eq!(parent_node("plan.check[2]"), Some("plan.check"));
        assert_eq!(parent_node("fan[2].x"), Some("fan[2]"));
        assert_eq!(parent_node("plain"), None);
        assert_eq!(parent_node("-"), None);
        let s = Spender {
            tenant: "t".into(),
            run: "r".into(),
            node: "plan.check[2]".into(),
            attempt: 0,
            capsule: "c".into(),
        };
        let keys: Vec<String> = scopes(&s).iter().map(Scope::key).collect();
        assert_eq!(
            keys,
            [
                "tenant:t",
                "capsule:c",
                "run:r",
                "node:r/plan.check[2]",
                "node:r/plan.check",
                "node:r/plan"
            ]
        );
        assert!(derived_from("fan[3]", "fan"));
        assert!(derived_from("fan", "fan"));
        assert!(derived_from("fan.x[1]", "fan"));
        assert!(!derived_from("fan2", "fan"));
        assert!(!derived_from("fa", "fan"));
    }

    fn metering(config: LedgerConfig) -> (BudgetLedger, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let data = crate::store::DataDir::new(dir.path());
        (BudgetLedger::new(config, data.database().clone()), dir)
    }

    fn spender(node: &str) -> Spender {
        Spender {
            tenant: "acme".into(),
            run: "r1".into(),
            node: node.into(),
            attempt: 0,
            capsule: "sha256:c".into(),
        }
    }

    #[test]
    fn call_reservations_refuse_the_worst_case_and_settle_to_the_actual() {
        let (m, _dir) = metering(LedgerConfig {
            fuel_price_per_1k_micros: 1000,
            ..LedgerConfig::default()
        });
        m.set_limit(
            Scope::Node("r1/fan".into()),
            Some(Limit {
                tokens: None,
                micros: Some(1000),
            }),
        )
        .unwrap();
        // An instance of `fan` reserves against fan's budget.
        let err = m
            .reserve_call(&spender("fan[0]"), Some(1001), 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("node:r1/fan") && err.contains("fuel"), "{err}");
        let hold = m.reserve_call(&spender("fan[0]"), Some(600), 0).unwrap();
        assert!(hold.is_some());
        assert!(m.reserve_call(&spender("fan[1]"), Some(600), 0).is_err());
        let charge = m.call_charge(&spender("fan[0]"), Some(250), 10, hold);
        m.charge_call(charge).unwrap();
        let acc = m.budgets().account(&Scope::Node("r1/fan".into())).unwrap();
        assert_eq!((acc.spent_micros, acc.reserved_micros), (250, 0));
        // After a restart the spending of the instances is rebuilt too.
        let m2 = BudgetLedger::new(m.config, m.db.clone());
        drop(m);
        let list = m2.list_budgets().unwrap();
        assert_eq!(list[0].1.spent_micros, 250);
        // Free at the default prices: nothing to reserve.
        let (free, _dir) = metering(LedgerConfig::default());
        assert_eq!(
            free.reserve_call(&spender("x"), Some(u64::MAX), u64::MAX),
            Ok(None)
        );
        assert_eq!(
            free.worst_case_micros(Some(u64::MAX), u64::MAX),
            0,
            "zero prices"
        );
        let (priced, _dir) = metering(LedgerConfig {
            fuel_price_per_1k_micros: u64::MAX,
            wall_time_price_per_1k_us_micros: u64::MAX,
            ..LedgerConfig::default()
        });
        assert_eq!(priced.worst_case_micros(Some(u64::MAX), u64::MAX), u64::MAX);
    }

    #[test]
    fn usage_of_u64_max_tokens_saturates_instead_of_wrapping() {
        use llm::Meter as _;
        let (m, _dir) = metering(LedgerConfig::default());
        let tenant = Scope::Tenant("acme".into());
        m.set_limit(
            tenant.clone(),
            Some(Limit {
                tokens: Some(1_000_000),
                micros: None,
            }),
        )
        .unwrap();
        let s = spender("n");
        let r = m.reserve(&s, 100, 0).unwrap();
        let metered = Metered {
            provider: "p".into(),
            model: "m".into(),
            prompt_tokens: u64::MAX,
            completion_tokens: 5,
            estimated: false,
            input_price_per_1k_micros: 3000,
            output_price_per_1k_micros: u64::MAX,
            cost_micros: u64::MAX,
            seq: 0,
            time_ms: 1,
        };
        m.settle(&s, r, &metered).unwrap();
        let acc = m.budgets().account(&tenant).unwrap();
        assert_eq!(acc.spent_tokens, u64::MAX);
        assert_eq!(acc.spent_micros, u64::MAX);
        assert!(m.reserve(&s, 1, 0).is_err(), "every later call is refused");
    }
}
