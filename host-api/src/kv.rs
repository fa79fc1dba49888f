//! `kv`: a redb-backed key-value store with two scopes — the capsule's own
//! namespace and the run's blackboard — and size quotas.
//!
//! Writes are transactional per call: they go to an in-memory overlay that
//! reads see, and [`State::commit`] writes the overlay in one redb
//! transaction when the call succeeded. A call that traps or fails leaves
//! nothing behind.
//!
//! # Isolation by construction
//!
//! Every entry lives under the redb tuple key `(tenant, space, key)`. The
//! tenant is the caller's (the runtime passes `CallOptions::tenant` to
//! [`State::new`]); a capsule names only a [`Scope`], never a tenant or a
//! space. redb length-prefixes every element of a tuple but the last and
//! compares tuples element by element, so no choice of key can reach
//! another tenant's or another space's entries (there is no `a:b` + `c` =
//! `a` + `b:c` ambiguity), and a prefix scan is a range inside one
//! `(tenant, space)`. Quotas are kept per `(tenant, space)` and per tenant.
//!
//! # Host memory a call can pin
//!
//! The overlay lives in host memory, outside the call's linear memory. It is
//! bounded per call by `kv.max_pending_bytes_per_call`, lowered to the
//! call's own memory limit; past it a write is refused with
//! `quota-exceeded` (the message names the limit). Reads hand the guest at
//! most one value (`kv.max_value_bytes`) or `kv.max_list_keys` keys of at
//! most `kv.max_key_bytes` each.

use std::{collections::BTreeMap, ops::Bound, sync::Arc};

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use wasmtime::component::{HasSelf, Linker};

use crate::{
    bindings::soma::capsule::kv::{self as wit, KvError, Scope},
    storage::LazyDatabase,
};

/// (tenant, space, key) → value.
const ENTRIES: TableDefinition<'_, (&str, &str, &str), &[u8]> = TableDefinition::new("kv_entries");
/// (tenant, space) → bytes used (keys + values).
const SPACE_USAGE: TableDefinition<'_, (&str, &str), u64> = TableDefinition::new("kv_space_usage");
/// tenant → bytes used by all its spaces.
const TENANT_USAGE: TableDefinition<'_, &str, u64> = TableDefinition::new("kv_tenant_usage");
/// The pre-0.2 layout, (space, key) → value with no tenant. Read only by
/// [`adopt_legacy`]; see the crate README.
const LEGACY: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("kv");
/// The pre-0.2 usage table, space → bytes.
const LEGACY_USAGE: TableDefinition<'_, &str, u64> = TableDefinition::new("kv_usage");

/// Bookkeeping bytes counted per pending write on top of its key and value
/// (map node share, `String` and `Vec` headers), so that many tiny writes or
/// deletes cannot pin more than the budget either.
const PENDING_ENTRY_OVERHEAD: usize = 96;

/// Operator settings (`[kv]` in `soma.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Longest key, in bytes. Default 512.
    pub max_key_bytes: usize,
    /// Largest value, in bytes. Default 1 MiB.
    pub max_value_bytes: usize,
    /// Bytes (keys + values) one namespace of one tenant may hold: a
    /// tenant × capsule namespace, or a tenant × run blackboard. Default 64 MiB.
    pub max_namespace_bytes: u64,
    /// Bytes (keys + values) all namespaces of one tenant may hold together,
    /// so that run blackboards (one per run) cannot grow without bound.
    /// Default 1 GiB.
    pub max_tenant_bytes: u64,
    /// Host memory one call's pending (not yet committed) writes may pin:
    /// keys, values, deletes, plus a fixed bookkeeping cost per entry. The
    /// call's memory limit (`limits.memory_mb`, lowered per call) lowers it
    /// further. Default 8 MiB.
    pub max_pending_bytes_per_call: u64,
    /// Most keys one `list-keys` returns. Default 1000.
    pub max_list_keys: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_key_bytes: 512,
            max_value_bytes: 1024 * 1024,
            max_namespace_bytes: 64 * 1024 * 1024,
            max_tenant_bytes: 1024 * 1024 * 1024,
            max_pending_bytes_per_call: 8 * 1024 * 1024,
            max_list_keys: 1000,
        }
    }
}

/// Why a `[kv]` section is inconsistent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// Check cross-field consistency: the largest entry must fit in every
    /// budget that has to hold it, or a valid write could never succeed.
    pub fn check(&self) -> Result<(), ConfigError> {
        let entry = (self.max_key_bytes as u64).saturating_add(self.max_value_bytes as u64);
        let pending = entry.saturating_add(PENDING_ENTRY_OVERHEAD as u64);
        if self.max_pending_bytes_per_call < pending {
            return Err(ConfigError(format!(
                "kv.max_pending_bytes_per_call ({}) must hold one largest entry: \
                 kv.max_key_bytes + kv.max_value_bytes + {PENDING_ENTRY_OVERHEAD} = {pending}",
                self.max_pending_bytes_per_call
            )));
        }
        if self.max_tenant_bytes < self.max_namespace_bytes {
            return Err(ConfigError(format!(
                "kv.max_tenant_bytes ({}) must be at least kv.max_namespace_bytes ({})",
                self.max_tenant_bytes, self.max_namespace_bytes
            )));
        }
        Ok(())
    }
}

/// A namespace inside one tenant: what a scope of a call resolves to. The
/// tenant is never part of it; it comes from the call (see [`State::new`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Space {
    /// A capsule's own store, per digest: `capsule:<digest>`.
    Capsule(String),
    /// A store the operator named (`soma run --kv-namespace`), e.g. to keep
    /// state across versions of a capsule: `named:<name>`.
    Named(String),
    /// A run's blackboard: `run:<run id>`.
    Run(String),
}

impl Space {
    /// The stored form. The tags contain no `:`, so two spaces never share
    /// a stored form; it is one length-prefixed element of the entry key.
    pub fn key(&self) -> String {
        match self {
            Self::Capsule(d) => format!("capsule:{d}"),
            Self::Named(n) => format!("named:{n}"),
            Self::Run(r) => format!("run:{r}"),
        }
    }
}

/// Which spaces a call may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The space of `scope::capsule`.
    pub capsule: Space,
    /// The space of `scope::run`; `None` denies the run scope.
    pub run: Option<Space>,
}

/// Built once per engine: the database handle and the config.
#[derive(Debug)]
pub struct Shared {
    config: Config,
    db: Arc<LazyDatabase>,
}

impl Shared {
    /// Shared kv state over `db`.
    pub fn new(config: Config, db: Arc<LazyDatabase>) -> Arc<Self> {
        Arc::new(Self { config, db })
    }
}

/// Why committing a call's writes failed. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Calls that ran at the same time filled the namespace or the tenant
    /// past its quota; this call's writes were discarded.
    #[error(
        "kv writes discarded: {} would hold {would_hold} bytes; the limit is {limit} ({})",
        quota.what(),
        quota.key()
    )]
    QuotaExceeded {
        /// Which quota refused.
        quota: Quota,
        /// What it would have held with this call's writes.
        would_hold: u64,
        /// The quota.
        limit: u64,
    },
    /// The database failed.
    #[error("could not commit kv writes: {0}")]
    Store(String),
}

/// A stored-bytes quota of `[kv]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// `kv.max_namespace_bytes`: one tenant × namespace.
    Namespace,
    /// `kv.max_tenant_bytes`: all of a tenant's namespaces.
    Tenant,
}

impl Quota {
    /// The setting, e.g. `kv.max_namespace_bytes`.
    pub fn key(self) -> &'static str {
        match self {
            Self::Namespace => "kv.max_namespace_bytes",
            Self::Tenant => "kv.max_tenant_bytes",
        }
    }

    /// What it bounds, in words.
    pub fn what(self) -> &'static str {
        match self {
            Self::Namespace => "the namespace",
            Self::Tenant => "this tenant's kv data",
        }
    }
}

/// One scope's pending writes in one call.
#[derive(Debug)]
struct Pending {
    space: String,
    /// `None` is a delete.
    writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Net change of the stored bytes, as estimated when each write was made.
    delta: i64,
}

impl Pending {
    fn new(space: &Space) -> Self {
        Self {
            space: space.key(),
            writes: BTreeMap::new(),
            delta: 0,
        }
    }
}

/// What a granted call holds.
#[derive(Debug)]
struct Access {
    tenant: Arc<str>,
    capsule: Pending,
    run: Option<Pending>,
    /// Host bytes the pending writes pin (see [`PENDING_ENTRY_OVERHEAD`]).
    pending_bytes: usize,
    /// The budget for `pending_bytes`, and which setting set it.
    pending_limit: usize,
    pending_limit_name: &'static str,
    /// Whether a refusal of this call was logged already (log once per call).
    refusal_logged: bool,
}

/// Per-call kv state: the grant, the caller's tenant and the write overlay.
#[derive(Debug)]
pub struct State {
    shared: Arc<Shared>,
    access: Option<Access>,
}

impl State {
    /// Fresh state for one call of `tenant`; `grant: None` denies kv.
    /// `memory_limit_bytes` is the call's memory limit: pending writes may
    /// pin at most the smaller of it and `kv.max_pending_bytes_per_call`.
    ///
    /// Cost: a few small allocations; no disk access.
    pub fn new(
        shared: Arc<Shared>,
        grant: Option<Grant>,
        tenant: Arc<str>,
        memory_limit_bytes: usize,
    ) -> Self {
        let access = grant.map(|g| {
            let configured =
                usize::try_from(shared.config.max_pending_bytes_per_call).unwrap_or(usize::MAX);
            let (pending_limit, pending_limit_name) = if memory_limit_bytes < configured {
                (
                    memory_limit_bytes,
                    "the call's memory limit, limits.memory_mb",
                )
            } else {
                (configured, "kv.max_pending_bytes_per_call")
            };
            Access {
                tenant,
                capsule: Pending::new(&g.capsule),
                run: g.run.as_ref().map(Pending::new),
                pending_bytes: 0,
                pending_limit,
                pending_limit_name,
                refusal_logged: false,
            }
        });
        Self { shared, access }
    }

    /// Whether the call wrote anything.
    pub fn is_dirty(&self) -> bool {
        self.access.as_ref().is_some_and(|a| {
            !a.capsule.writes.is_empty() || a.run.as_ref().is_some_and(|r| !r.writes.is_empty())
        })
    }

    /// Host bytes the call's pending writes pin right now.
    pub fn pending_bytes(&self) -> usize {
        self.access.as_ref().map_or(0, |a| a.pending_bytes)
    }

    /// Mask every value `redactor` lists in the pending writes (keys and
    /// values), before [`State::commit`]. Cost: one pass per write.
    pub fn redact(&mut self, redactor: &crate::capability::Redactor) {
        let Some(access) = self.access.as_mut() else {
            return;
        };
        for pending in std::iter::once(&mut access.capsule).chain(access.run.as_mut()) {
            let writes = std::mem::take(&mut pending.writes);
            for (key, value) in writes {
                let value = value.map(|v| redactor.redact_bytes(&v).into_owned());
                pending
                    .writes
                    .insert(redactor.redact(&key).into_owned(), value);
            }
        }
    }

    /// Make the call's writes durable in one transaction. Called once, after
    /// a successful call; a no-op (no disk access) when nothing was written.
    /// Quotas are checked again inside the transaction (calls running at the
    /// same time are serialized here), so a namespace never ends over quota
    /// because of a race; on refusal nothing is written.
    pub fn commit(&mut self) -> Result<(), CommitError> {
        if !self.is_dirty() {
            return Ok(());
        }
        let Some(access) = self.access.as_mut() else {
            return Ok(());
        };
        let config = self.shared.config;
        let err = |e: &dyn std::fmt::Display| CommitError::Store(e.to_string());
        let db = self.shared.db.get().map_err(|e| err(&e))?;
        let txn = db.begin_write().map_err(|e| err(&e))?;
        {
            let mut table = txn.open_table(ENTRIES).map_err(|e| err(&e))?;
            let mut usage = txn.open_table(SPACE_USAGE).map_err(|e| err(&e))?;
            let mut totals = txn.open_table(TENANT_USAGE).map_err(|e| err(&e))?;
            let tenant: &str = &access.tenant;
            let mut tenant_delta: i64 = 0;
            for pending in std::iter::once(&access.capsule).chain(access.run.as_ref()) {
                if pending.writes.is_empty() {
                    continue;
                }
                let space = pending.space.as_str();
                let mut delta: i64 = 0;
                for (key, value) in &pending.writes {
                    let k = (tenant, space, key.as_str());
                    let old = match value {
                        Some(v) => table.insert(k, v.as_slice()),
                        None => table.remove(k),
                    }
                    .map_err(|e| err(&e))?
                    .map_or(0, |g| entry_size(key, g.value()));
                    let new = value.as_ref().map_or(0, |v| entry_size(key, v));
                    delta += new - old;
                }
                let current = usage
                    .get((tenant, space))
                    .map_err(|e| err(&e))?
                    .map_or(0, |g| g.value());
                let next = current.saturating_add_signed(delta);
                if delta > 0 && next > config.max_namespace_bytes {
                    // Dropping `txn` unwritten aborts it.
                    return Err(CommitError::QuotaExceeded {
                        quota: Quota::Namespace,
                        would_hold: next,
                        limit: config.max_namespace_bytes,
                    });
                }
                if next == 0 {
                    usage.remove((tenant, space)).map_err(|e| err(&e))?;
                } else {
                    usage.insert((tenant, space), next).map_err(|e| err(&e))?;
                }
                tenant_delta += delta;
            }
            let current = totals
                .get(tenant)
                .map_err(|e| err(&e))?
                .map_or(0, |g| g.value());
            let next = current.saturating_add_signed(tenant_delta);
            if tenant_delta > 0 && next > config.max_tenant_bytes {
                return Err(CommitError::QuotaExceeded {
                    quota: Quota::Tenant,
                    would_hold: next,
                    limit: config.max_tenant_bytes,
                });
            }
            if next == 0 {
                totals.remove(tenant).map_err(|e| err(&e))?;
            } else {
                totals.insert(tenant, next).map_err(|e| err(&e))?;
            }
        }
        txn.commit().map_err(|e| err(&e))?;
        for pending in std::iter::once(&mut access.capsule).chain(access.run.as_mut()) {
            pending.writes.clear();
            pending.delta = 0;
        }
        access.pending_bytes = 0;
        Ok(())
    }

    /// The granted access and the pending writes of `scope`.
    fn scope(&mut self, scope: Scope) -> Result<(&mut Access, bool), KvError> {
        let access = self.access.as_mut().ok_or_else(|| {
            KvError::Denied(
                "this capsule was not granted kv; ask for it in describe() (wants_kv)".into(),
            )
        })?;
        match scope {
            Scope::Capsule => Ok((access, false)),
            Scope::Run if access.run.is_some() => Ok((access, true)),
            Scope::Run => Err(KvError::Denied("this call has no run blackboard".into())),
        }
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        let max = self.shared.config.max_key_bytes;
        if key.len() > max {
            return Err(KvError::QuotaExceeded(format!(
                "key is {} bytes; the limit is {max} (kv.max_key_bytes)",
                key.len()
            )));
        }
        Ok(())
    }

    fn write(
        &mut self,
        scope: Scope,
        key: String,
        value: Option<Vec<u8>>,
    ) -> Result<bool, KvError> {
        self.check_key(&key)?;
        let shared = self.shared.clone();
        let config = shared.config;
        let (access, run) = self.scope(scope)?;
        let reader = Reader::open(&shared.db)?;
        let tenant = access.tenant.clone();
        let other_delta = if run {
            access.capsule.delta
        } else {
            access.run.as_ref().map_or(0, |r| r.delta)
        };
        let pending = if run {
            access
                .run
                .as_mut()
                .ok_or_else(|| KvError::Denied("no run blackboard".into()))?
        } else {
            &mut access.capsule
        };
        let queued = pending.writes.get(&key);
        let old = match queued {
            Some(v) => v.clone(),
            None => reader.get(&tenant, &pending.space, &key)?,
        };
        if value.is_none() && old.is_none() && queued.is_none() {
            return Ok(false); // deleting what is not there: nothing to remember
        }
        let old_size = old.as_ref().map_or(0, |v| entry_size(&key, v));
        let new_size = value.as_ref().map_or(0, |v| entry_size(&key, v));
        let delta = pending.delta + new_size - old_size;
        // Host memory first: it is the call's own budget.
        let replaced = queued.map_or(0, |v| pending_cost(&key, v.as_deref()));
        let added = pending_cost(&key, value.as_deref());
        let pinned = access.pending_bytes - replaced + added;
        if added > replaced && pinned > access.pending_limit {
            let message = format!(
                "this call's pending kv writes would pin {pinned} bytes of host memory; the limit is {} ({}); commit in smaller calls",
                access.pending_limit, access.pending_limit_name
            );
            if !access.refusal_logged {
                access.refusal_logged = true;
                tracing::warn!(tenant = %tenant, limit = access.pending_limit_name, "kv write refused: {message}");
            }
            return Err(KvError::QuotaExceeded(message));
        }
        if new_size > old_size {
            let used = reader
                .space_usage(&tenant, &pending.space)?
                .saturating_add_signed(delta);
            if used > config.max_namespace_bytes {
                return Err(KvError::QuotaExceeded(format!(
                    "the namespace would hold {used} bytes; the limit is {} (kv.max_namespace_bytes)",
                    config.max_namespace_bytes
                )));
            }
            let total = reader
                .tenant_usage(&tenant)?
                .saturating_add_signed(delta + other_delta);
            if total > config.max_tenant_bytes {
                return Err(KvError::QuotaExceeded(format!(
                    "this tenant's kv data would hold {total} bytes; the limit is {} (kv.max_tenant_bytes)",
                    config.max_tenant_bytes
                )));
            }
        }
        pending.delta = delta;
        pending.writes.insert(key, value);
        access.pending_bytes = pinned;
        Ok(old.is_some())
    }
}

/// One read transaction over the kv tables (a missing table reads as empty).
struct Reader(ReadTransaction);

impl Reader {
    fn open(db: &LazyDatabase) -> Result<Self, KvError> {
        let db = db.get().map_err(unavailable)?;
        Ok(Self(db.begin_read().map_err(unavailable)?))
    }

    fn get(&self, tenant: &str, space: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let txn = &self.0;
        match txn.open_table(ENTRIES) {
            Ok(t) => Ok(t
                .get((tenant, space, key))
                .map_err(unavailable)?
                .map(|g| g.value().to_vec())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    fn space_usage(&self, tenant: &str, space: &str) -> Result<u64, KvError> {
        let txn = &self.0;
        match txn.open_table(SPACE_USAGE) {
            Ok(t) => Ok(t
                .get((tenant, space))
                .map_err(unavailable)?
                .map_or(0, |g| g.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(unavailable(e)),
        }
    }

    fn tenant_usage(&self, tenant: &str) -> Result<u64, KvError> {
        let txn = &self.0;
        match txn.open_table(TENANT_USAGE) {
            Ok(t) => Ok(t.get(tenant).map_err(unavailable)?.map_or(0, |g| g.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Up to `limit` stored keys of `(tenant, space)` starting with
    /// `prefix`, in order, skipping those `skip` says are deleted.
    fn keys(
        &self,
        tenant: &str,
        space: &str,
        prefix: &str,
        limit: usize,
        skip: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>, KvError> {
        let txn = &self.0;
        let table = match txn.open_table(ENTRIES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(unavailable(e)),
        };
        let mut out = Vec::new();
        // The range starts inside (tenant, space) and every item is checked
        // to still be in it: the scan never leaves this namespace.
        for item in table
            .range((tenant, space, prefix)..)
            .map_err(unavailable)?
        {
            if out.len() >= limit {
                break;
            }
            let (k, _) = item.map_err(unavailable)?;
            let (t, s, key) = k.value();
            if t != tenant || s != space || !key.starts_with(prefix) {
                break;
            }
            if !skip(key) {
                out.push(key.to_owned());
            }
        }
        Ok(out)
    }
}

/// Stored size of an entry: its key and value bytes.
fn entry_size(key: &str, value: &[u8]) -> i64 {
    i64::try_from(key.len().saturating_add(value.len())).unwrap_or(i64::MAX)
}

/// Host bytes a pending write pins.
fn pending_cost(key: &str, value: Option<&[u8]>) -> usize {
    PENDING_ENTRY_OVERHEAD + key.len() + value.map_or(0, <[u8]>::len)
}

fn unavailable(e: impl std::fmt::Display) -> KvError {
    KvError::Unavailable(e.to_string())
}

/// Store data that hands out the per-call kv state.
pub trait KvView {
    /// The call's kv state.
    fn kv_state(&mut self) -> &mut State;
}

/// The kv capability: what a capsule asks for with the request `kv`
/// (no arguments), granted when `[policy] allow_kv` (default true).
#[derive(Debug, Clone, Copy)]
pub struct Kv;

impl crate::capability::Capability for Kv {
    const NAME: &'static str = "kv";
    const INTERFACES: &'static [&'static str] = &["kv"];
    type Config = Config;
    type ConfigError = ConfigError;
    /// `[policy] allow_kv`.
    type Policy = bool;
    type Shared = Arc<Shared>;
    /// Whether the capsule asked for kv.
    type Wants = bool;
    /// `None` denies kv.
    type Grant = Option<Grant>;
    type State = State;
    type PrepareError = std::convert::Infallible;
    type CommitError = CommitError;
    type Report = ();

    fn check(config: &Config) -> Result<(), ConfigError> {
        config.check()
    }

    fn shared(config: &Config, engine: &crate::capability::EngineContext) -> Arc<Shared> {
        Shared::new(*config, engine.db.clone())
    }

    fn want(wants: &mut bool, _args: &[String]) {
        *wants = true;
    }

    fn describe_wants(wants: &bool, out: &mut Vec<String>) {
        if *wants {
            out.push(Self::NAME.to_owned());
        }
    }

    /// The tenant is not part of the grant: kv keys every entry by the
    /// call's tenant ([`crate::capability::CallContext::tenant`]), which the capsule
    /// cannot choose.
    fn grant(
        wants: &bool,
        allow: &bool,
        scope: &crate::capability::GrantScope<'_>,
    ) -> Option<Grant> {
        (*wants && *allow && scope.allows(Self::NAME).any()).then(|| Grant {
            capsule: Space::Capsule(scope.capsule.to_owned()),
            run: Some(Space::Run(scope.run.to_owned())),
        })
    }

    fn rescope(grant: &mut Option<Grant>, run: &str) {
        if let Some(g) = grant.as_mut() {
            g.run = Some(Space::Run(run.to_owned()));
        }
    }

    fn prepare(
        shared: &Arc<Shared>,
        grant: &Option<Grant>,
        call: &crate::capability::CallContext<'_>,
    ) -> Result<State, std::convert::Infallible> {
        Ok(State::new(
            shared.clone(),
            grant.clone(),
            call.tenant.clone(),
            call.memory_limit_bytes,
        ))
    }

    fn commit(state: &mut State) -> Result<(), CommitError> {
        state.commit()
    }

    fn finish(_state: State) {}

    /// Masks the pending writes' keys and values: a call's writes are
    /// stored as the call would have emitted them.
    fn redact(state: &mut State, redactor: &crate::capability::Redactor) {
        state.redact(redactor);
    }
}

/// Wire `soma:capsule/kv` into `linker`. Once per engine.
pub fn add_to_linker<T: KvView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<State>>(linker, |t| t.kv_state())
}

impl wit::Host for State {
    fn get(&mut self, scope: Scope, key: String) -> Result<Option<Vec<u8>>, KvError> {
        self.check_key(&key)?;
        let shared = self.shared.clone();
        let (access, run) = self.scope(scope)?;
        let pending = if run {
            access.run.as_ref()
        } else {
            Some(&access.capsule)
        };
        let Some(pending) = pending else {
            return Ok(None);
        };
        if let Some(v) = pending.writes.get(&key) {
            return Ok(v.clone());
        }
        Reader::open(&shared.db)?.get(&access.tenant, &pending.space, &key)
    }

    fn set(&mut self, scope: Scope, key: String, value: Vec<u8>) -> Result<(), KvError> {
        let max = self.shared.config.max_value_bytes;
        if value.len() > max {
            return Err(KvError::QuotaExceeded(format!(
                "value is {} bytes; the limit is {max} (kv.max_value_bytes)",
                value.len()
            )));
        }
        self.write(scope, key, Some(value)).map(drop)
    }

    fn delete(&mut self, scope: Scope, key: String) -> Result<bool, KvError> {
        self.write(scope, key, None)
    }

    fn list_keys(
        &mut self,
        scope: Scope,
        prefix: String,
        limit: u32,
    ) -> Result<Vec<String>, KvError> {
        self.check_key(&prefix)?;
        let shared = self.shared.clone();
        let limit = limit.min(shared.config.max_list_keys) as usize;
        let (access, run) = self.scope(scope)?;
        let pending = if run {
            access.run.as_ref()
        } else {
            Some(&access.capsule)
        };
        let Some(pending) = pending else {
            return Ok(Vec::new());
        };
        // At most `limit` stored keys that are not deleted in this call, and
        // at most `limit` keys set in this call: the first `limit` of their
        // union are the answer.
        let stored = Reader::open(&shared.db)?.keys(
            &access.tenant,
            &pending.space,
            &prefix,
            limit,
            |k| matches!(pending.writes.get(k), Some(None)),
        )?;
        let set_here = pending
            .writes
            .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| k.clone())
            .take(limit);
        let mut keys: Vec<String> = stored.into_iter().chain(set_here).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.truncate(limit);
        Ok(keys)
    }
}

/// What [`adopt_legacy`] moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Entries moved into the tenant.
    pub entries: u64,
    /// Their bytes (keys + values).
    pub bytes: u64,
}

/// Move every pre-0.2 kv entry (written before entries were keyed by
/// tenant) into `tenant`, in one transaction, and drop the legacy tables.
/// An operator action for a node that only ever had one tenant (e.g. the
/// CLI's `local`): the old layout never recorded who wrote an entry, so it
/// is never given to any tenant automatically. Quotas are not enforced
/// (usage is updated); entries the tenant already has are kept.
///
/// Cost: reads and rewrites the whole legacy table; disk I/O.
pub fn adopt_legacy(db: &LazyDatabase, tenant: &str) -> Result<Adopted, CommitError> {
    let err = |e: &dyn std::fmt::Display| CommitError::Store(e.to_string());
    let db = db.get().map_err(|e| err(&e))?;
    let txn = db.begin_write().map_err(|e| err(&e))?;
    let mut adopted = Adopted::default();
    {
        let legacy = txn.open_table(LEGACY).map_err(|e| err(&e))?;
        let mut table = txn.open_table(ENTRIES).map_err(|e| err(&e))?;
        let mut usage = txn.open_table(SPACE_USAGE).map_err(|e| err(&e))?;
        let mut totals = txn.open_table(TENANT_USAGE).map_err(|e| err(&e))?;
        let mut per_space: BTreeMap<String, u64> = BTreeMap::new();
        for item in legacy.iter().map_err(|e| err(&e))? {
            let (k, v) = item.map_err(|e| err(&e))?;
            let (space, key) = k.value();
            if table
                .get((tenant, space, key))
                .map_err(|e| err(&e))?
                .is_some()
            {
                continue;
            }
            table
                .insert((tenant, space, key), v.value())
                .map_err(|e| err(&e))?;
            let size = (key.len() + v.value().len()) as u64;
            *per_space.entry(space.to_owned()).or_default() += size;
            adopted.entries += 1;
            adopted.bytes += size;
        }
        for (space, bytes) in per_space {
            let current = usage
                .get((tenant, space.as_str()))
                .map_err(|e| err(&e))?
                .map_or(0, |g| g.value());
            usage
                .insert((tenant, space.as_str()), current.saturating_add(bytes))
                .map_err(|e| err(&e))?;
        }
        let current = totals
            .get(tenant)
            .map_err(|e| err(&e))?
            .map_or(0, |g| g.value());
        totals
            .insert(tenant, current.saturating_add(adopted.bytes))
            .map_err(|e| err(&e))?;
    }
    txn.delete_table(LEGACY).map_err(|e| err(&e))?;
    txn.delete_table(LEGACY_USAGE).map_err(|e| err(&e))?;
    txn.commit().map_err(|e| err(&e))?;
    Ok(adopted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wit::Host as _;

    fn setup(config: Config) -> (tempfile::TempDir, Arc<Shared>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(LazyDatabase::new(dir.path().join("soma.redb")));
        (dir, Shared::new(config, db))
    }

    fn grant() -> Option<Grant> {
        Some(Grant {
            capsule: Space::Capsule("a".into()),
            run: Some(Space::Run("1".into())),
        })
    }

    fn state(shared: &Arc<Shared>, tenant: &str) -> State {
        State::new(shared.clone(), grant(), tenant.into(), usize::MAX)
    }

    #[test]
    fn pending_writes_are_masked_before_they_are_committed() {
        let (_dir, shared) = setup(Config::default());
        let mut st = state(&shared, "t");
        st.set(Scope::Capsule, "k-hunter2".into(), b"v=hunter2;".to_vec())
            .expect("set");
        st.set(Scope::Run, "plain".into(), b"hunter2".to_vec())
            .expect("set");
        let r = crate::capability::Redactor::default();
        r.add("pw", "hunter2");
        st.redact(&r);
        st.commit().expect("commit");
        let mut reader = state(&shared, "t");
        assert_eq!(
            reader
                .get(Scope::Capsule, "k-[REDACTED:pw]".into())
                .expect("get"),
            Some(b"v=[REDACTED:pw];".to_vec())
        );
        assert_eq!(
            reader.get(Scope::Run, "plain".into()).expect("get"),
            Some(b"[REDACTED:pw]".to_vec())
        );
        assert_eq!(
            reader.get(Scope::Capsule, "k-hunter2".into()).expect("get"),
            None
        );
    }

    #[test]
    fn writes_are_visible_in_call_and_durable_only_after_commit() {
        let (_dir, shared) = setup(Config::default());
        let mut st = state(&shared, "t");
        st.set(Scope::Capsule, "k".into(), b"v".to_vec())
            .expect("set");
        assert_eq!(
            st.get(Scope::Capsule, "k".into()).expect("get"),
            Some(b"v".to_vec())
        );
        drop(st); // a failed call: nothing committed
        let mut st = state(&shared, "t");
        assert_eq!(st.get(Scope::Capsule, "k".into()).expect("get"), None);
        st.set(Scope::Capsule, "k".into(), b"v".to_vec())
            .expect("set");
        st.commit().expect("commit");
        let mut st = state(&shared, "t");
        assert_eq!(
            st.get(Scope::Capsule, "k".into()).expect("get"),
            Some(b"v".to_vec())
        );
        assert_eq!(
            st.get(Scope::Run, "k".into()).expect("get"),
            None,
            "scopes are separate"
        );
    }

    #[test]
    fn denied_without_grant() {
        let (_dir, shared) = setup(Config::default());
        let mut st = State::new(shared, None, "t".into(), usize::MAX);
        assert!(matches!(
            st.get(Scope::Capsule, "k".into()),
            Err(KvError::Denied(_))
        ));
    }

    #[test]
    fn quotas_are_enforced_across_calls() {
        let (_dir, shared) = setup(Config {
            max_key_bytes: 4,
            max_value_bytes: 8,
            max_namespace_bytes: 20,
            ..Config::default()
        });
        let mut st = state(&shared, "t");
        assert!(matches!(
            st.set(Scope::Capsule, "toolong".into(), vec![]),
            Err(KvError::QuotaExceeded(_))
        ));
        assert!(matches!(
            st.set(Scope::Capsule, "k".into(), vec![0; 9]),
            Err(KvError::QuotaExceeded(_))
        ));
        st.set(Scope::Capsule, "a".into(), vec![0; 8])
            .expect("9 bytes");
        st.set(Scope::Capsule, "b".into(), vec![0; 8])
            .expect("18 bytes");
        st.commit().expect("commit");
        let mut st = state(&shared, "t");
        assert!(matches!(
            st.set(Scope::Capsule, "c".into(), vec![0; 8]),
            Err(KvError::QuotaExceeded(_))
        ));
        // Replacing a value with a smaller one, or deleting, is always allowed.
        assert!(st.delete(Scope::Capsule, "a".into()).expect("delete"));
        st.set(Scope::Capsule, "c".into(), vec![0; 8])
            .expect("fits after delete");
        st.commit().expect("commit");
        let reader = Reader::open(&shared.db).expect("reader");
        assert_eq!(reader.space_usage("t", "capsule:a").expect("usage"), 18);
        assert_eq!(reader.tenant_usage("t").expect("usage"), 18);
        let mut st = state(&shared, "t");
        assert_eq!(
            st.list_keys(Scope::Capsule, String::new(), 10)
                .expect("list"),
            vec!["b".to_owned(), "c".to_owned()]
        );
        // Another tenant has its own, empty namespace and its own quota.
        let mut other = state(&shared, "u");
        assert_eq!(
            other
                .list_keys(Scope::Capsule, String::new(), 10)
                .expect("list"),
            Vec::<String>::new()
        );
        other
            .set(Scope::Capsule, "a".into(), vec![1; 8])
            .expect("u's quota is its own");
        other
            .set(Scope::Capsule, "b".into(), vec![1; 8])
            .expect("u's quota is its own");
        other.commit().expect("commit");
    }

    #[test]
    fn the_tenant_quota_covers_all_its_namespaces() {
        let (_dir, shared) = setup(Config {
            max_key_bytes: 4,
            max_value_bytes: 8,
            max_namespace_bytes: 20,
            max_tenant_bytes: 30,
            ..Config::default()
        });
        let mut st = state(&shared, "t");
        st.set(Scope::Capsule, "a".into(), vec![0; 8]).expect("9");
        st.set(Scope::Capsule, "b".into(), vec![0; 8]).expect("18");
        st.set(Scope::Run, "a".into(), vec![0; 8]).expect("27");
        let e = st.set(Scope::Run, "b".into(), vec![0; 8]);
        assert!(
            matches!(&e, Err(KvError::QuotaExceeded(m)) if m.contains("kv.max_tenant_bytes")),
            "{e:?}"
        );
        st.commit().expect("commit");
        // A new run of the same tenant does not get a fresh allowance.
        let mut st = State::new(
            shared.clone(),
            Some(Grant {
                capsule: Space::Capsule("a".into()),
                run: Some(Space::Run("2".into())),
            }),
            "t".into(),
            usize::MAX,
        );
        assert!(matches!(
            st.set(Scope::Run, "c".into(), vec![0; 8]),
            Err(KvError::QuotaExceeded(_))
        ));
        // Another tenant is not affected.
        let mut other = state(&shared, "u");
        other.set(Scope::Run, "c".into(), vec![0; 8]).expect("u");
        other.commit().expect("commit");
    }

    #[test]
    fn commit_rechecks_quotas_against_concurrent_calls() {
        let (_dir, shared) = setup(Config {
            max_key_bytes: 4,
            max_value_bytes: 8,
            max_namespace_bytes: 20,
            ..Config::default()
        });
        let mut first = state(&shared, "t");
        let mut second = state(&shared, "t");
        first
            .set(Scope::Capsule, "a".into(), vec![0; 8])
            .expect("9");
        first
            .set(Scope::Capsule, "b".into(), vec![0; 8])
            .expect("18");
        second
            .set(Scope::Capsule, "c".into(), vec![0; 8])
            .expect("9");
        first.commit().expect("first commit");
        assert!(matches!(
            second.commit(),
            Err(CommitError::QuotaExceeded {
                quota: Quota::Namespace,
                would_hold: 27,
                limit: 20
            })
        ));
        let mut st = state(&shared, "t");
        assert_eq!(st.get(Scope::Capsule, "c".into()).expect("get"), None);
        let reader = Reader::open(&shared.db).expect("reader");
        assert_eq!(reader.space_usage("t", "capsule:a").expect("usage"), 18);
    }

    #[test]
    fn pending_writes_are_bounded_per_call() {
        let (_dir, shared) = setup(Config {
            max_pending_bytes_per_call: 4 * 1024,
            ..Config::default()
        });
        let mut st = state(&shared, "t");
        let mut written = 0;
        let refusal = loop {
            match st.set(Scope::Capsule, format!("k{written}"), vec![7; 1000]) {
                Ok(()) => written += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(written, 3, "3 × (1000 + key + overhead) fit in 4 KiB");
        assert!(
            matches!(&refusal, KvError::QuotaExceeded(m) if m.contains("kv.max_pending_bytes_per_call")),
            "{refusal:?}"
        );
        assert!(st.pending_bytes() <= 4 * 1024);
        // Overwriting a pending key with a smaller value frees budget.
        st.set(Scope::Capsule, "k0".into(), Vec::new())
            .expect("smaller");
        st.set(Scope::Capsule, "k3".into(), vec![7; 500])
            .expect("fits now");
        // Deletes of missing keys pin nothing; tombstones count.
        for i in 0..10_000 {
            assert!(
                !st.delete(Scope::Run, format!("missing{i}"))
                    .expect("delete")
            );
        }
        assert!(st.pending_bytes() <= 4 * 1024);
        st.commit().expect("commit");
        assert_eq!(st.pending_bytes(), 0);
        // Tombstones of existing keys count too.
        for call in 0..10 {
            let mut st = state(&shared, "t");
            for i in 0..20 {
                st.set(Scope::Capsule, format!("d{call:02}{i:02}"), Vec::new())
                    .expect("tiny");
            }
            st.commit().expect("commit");
        }
        let mut st = state(&shared, "t");
        let mut tombstones = 0;
        let refusal = loop {
            let key = format!("d{:02}{:02}", tombstones / 20, tombstones % 20);
            match st.delete(Scope::Capsule, key) {
                Ok(existed) => {
                    assert!(existed);
                    tombstones += 1;
                }
                Err(e) => break e,
            }
            assert!(tombstones < 200, "tombstones are bounded");
        };
        assert!(matches!(refusal, KvError::QuotaExceeded(_)), "{refusal:?}");
        assert!((30..=41).contains(&tombstones), "{tombstones}");
        // The call's memory limit lowers the budget.
        let mut small = State::new(shared, grant(), "t".into(), 1500);
        small
            .set(Scope::Run, "x".into(), vec![0; 1000])
            .expect("fits");
        let e = small.set(Scope::Run, "y".into(), vec![0; 1000]);
        assert!(
            matches!(&e, Err(KvError::QuotaExceeded(m)) if m.contains("limits.memory_mb")),
            "{e:?}"
        );
    }

    #[test]
    fn list_keys_merges_pending_writes() {
        let (_dir, shared) = setup(Config::default());
        let mut st = state(&shared, "t");
        for k in ["p1", "p2", "q1"] {
            st.set(Scope::Capsule, k.into(), b"x".to_vec())
                .expect("set");
        }
        st.commit().expect("commit");
        let mut st = state(&shared, "t");
        st.delete(Scope::Capsule, "p1".into()).expect("delete");
        st.set(Scope::Capsule, "p3".into(), b"y".to_vec())
            .expect("set");
        assert_eq!(
            st.list_keys(Scope::Capsule, "p".into(), 10).expect("list"),
            vec!["p2".to_owned(), "p3".to_owned()]
        );
        assert_eq!(
            st.list_keys(Scope::Capsule, "p".into(), 1).expect("list"),
            vec!["p2".to_owned()]
        );
    }

    #[test]
    fn legacy_entries_reach_no_tenant_until_adopted() {
        let (_dir, shared) = setup(Config::default());
        {
            let db = shared.db.get().expect("db");
            let txn = db.begin_write().expect("txn");
            {
                let mut t = txn.open_table(LEGACY).expect("legacy");
                t.insert(("capsule:a", "old"), b"v1".as_slice())
                    .expect("insert");
                let mut u = txn.open_table(LEGACY_USAGE).expect("legacy usage");
                u.insert("capsule:a", 5).expect("insert");
            }
            txn.commit().expect("commit");
        }
        for tenant in ["local", "t", ""] {
            let mut st = state(&shared, tenant);
            assert_eq!(st.get(Scope::Capsule, "old".into()).expect("get"), None);
        }
        let adopted = adopt_legacy(&shared.db, "local").expect("adopt");
        assert_eq!(
            adopted,
            Adopted {
                entries: 1,
                bytes: 5
            }
        );
        let mut st = state(&shared, "local");
        assert_eq!(
            st.get(Scope::Capsule, "old".into()).expect("get"),
            Some(b"v1".to_vec())
        );
        let mut st = state(&shared, "t");
        assert_eq!(st.get(Scope::Capsule, "old".into()).expect("get"), None);
        let reader = Reader::open(&shared.db).expect("reader");
        assert_eq!(reader.tenant_usage("local").expect("usage"), 5);
    }

    /// A small seeded PRNG (splitmix64): the test is reproducible from its seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    /// Keys that would collide under a naive `tenant:space:key` layout, or
    /// stress ordering and prefix scans.
    fn adversarial_keys() -> Vec<String> {
        let mut keys: Vec<String> = [
            "",
            "a",
            "a:",
            ":a",
            "a:b",
            "a:b:c",
            ":",
            "::",
            "capsule:a",
            "run:1",
            "a\u{0}",
            "\u{0}",
            "\u{0}a",
            "b",
            "é",
            "e\u{301}",
            "🙂",
            "k/../k",
            "\\",
            "%00",
            "a\nb",
            "\u{ffff}",
        ]
        .iter()
        .map(|k| (*k).to_owned())
        .collect();
        keys.push("x".repeat(512));
        keys.push("x".repeat(511) + ":");
        keys.push("y".repeat(513)); // over kv.max_key_bytes: always refused
        keys
    }

    #[test]
    fn randomized_isolation_of_tenants_and_scopes() {
        let seed = std::env::var("SOMA_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_0001_u64);
        let mut rng = Rng(seed);
        let (_dir, shared) = setup(Config::default());
        // Tenants whose names would collide with spaces and keys if the
        // components were joined with `:`; all use the same capsule and run.
        let tenants = ["a", "a:capsule:a", "", "b"];
        let keys = adversarial_keys();
        type Model = BTreeMap<(usize, bool), BTreeMap<String, Vec<u8>>>;
        let mut committed: Model = BTreeMap::new();
        for round in 0..400 {
            let t = rng.below(tenants.len());
            let mut working = committed.clone();
            let mut st = state(&shared, tenants[t]);
            for op in 0..1 + rng.below(8) {
                let run = rng.below(2) == 1;
                let scope = if run { Scope::Run } else { Scope::Capsule };
                let key = rng.pick(&keys).clone();
                let ctx = format!(
                    "seed {seed:#x} round {round} op {op} tenant {:?} run {run} key {key:?}",
                    tenants[t]
                );
                let space = working.entry((t, run)).or_default();
                match rng.below(4) {
                    0 => {
                        let value = format!("{}|{round}|{op}", tenants[t]).into_bytes();
                        let r = st.set(scope, key.clone(), value.clone());
                        if key.len() > 512 {
                            assert!(matches!(r, Err(KvError::QuotaExceeded(_))), "{ctx}");
                        } else {
                            r.expect(&ctx);
                            space.insert(key, value);
                        }
                    }
                    1 => {
                        let r = st.get(scope, key.clone());
                        if key.len() > 512 {
                            assert!(r.is_err(), "{ctx}");
                        } else {
                            assert_eq!(r.expect(&ctx), space.get(&key).cloned(), "{ctx}");
                        }
                    }
                    2 => {
                        let r = st.delete(scope, key.clone());
                        if key.len() > 512 {
                            assert!(r.is_err(), "{ctx}");
                        } else {
                            assert_eq!(r.expect(&ctx), space.remove(&key).is_some(), "{ctx}");
                        }
                    }
                    _ => {
                        let limit = 1 + rng.below(30);
                        let prefix: String = key.chars().take(rng.below(3)).collect();
                        let got = st
                            .list_keys(scope, prefix.clone(), limit as u32)
                            .expect(&ctx);
                        let want: Vec<String> = space
                            .keys()
                            .filter(|k| k.starts_with(&prefix))
                            .take(limit)
                            .cloned()
                            .collect();
                        assert_eq!(got, want, "{ctx} prefix {prefix:?} limit {limit}");
                    }
                }
            }
            // A call succeeds (commit) or fails (its writes vanish).
            if rng.below(4) != 0 {
                st.commit().expect("commit");
                committed = working;
            }
        }
        // Every stored entry is where the model says, and usage adds up.
        let reader = Reader::open(&shared.db).expect("reader");
        for (t, tenant) in tenants.iter().enumerate() {
            let mut total = 0;
            for run in [false, true] {
                let space = if run { "run:1" } else { "capsule:a" };
                let model = committed.get(&(t, run)).cloned().unwrap_or_default();
                let stored = reader
                    .keys(tenant, space, "", usize::MAX, |_| false)
                    .expect("keys");
                assert_eq!(
                    stored,
                    model.keys().cloned().collect::<Vec<_>>(),
                    "{tenant:?} {space}"
                );
                let used: u64 = model.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
                assert_eq!(reader.space_usage(tenant, space).expect("usage"), used);
                total += used;
            }
            assert_eq!(
                reader.tenant_usage(tenant).expect("usage"),
                total,
                "{tenant:?}"
            );
        }
    }

    #[test]
    fn default_config_checks() {
        Config::default().check().expect("defaults are consistent");
        let bad = Config {
            max_pending_bytes_per_call: 1024,
            ..Config::default()
        };
        assert!(bad.check().is_err());
    }
}
