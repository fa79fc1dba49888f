//! The shared store on PostgreSQL (`[store] backend = "postgres"`): one
//! database that every daemon of a fleet uses for the ledger
//! (`ledger::postgres::PgLedger`), budgets (`budget::postgres::PgBudgets`)
//! and API tokens (`daemon::auth::postgres::PgTokens`); this module is the
//! connection pool and the schema they share, and names none of them.
//!
//! The driver is the synchronous `postgres` crate (over `tokio-postgres`):
//! it fits the ledger's group-commit thread, which holds one connection per
//! batch. Its calls block, so async code reaches them through
//! `spawn_blocking` (a call from inside a tokio runtime panics).
//!
//! Connections come from a small bounded pool ([`PgStore`]):
//! `[store] pool_size` connections at most, `connect_timeout_ms` to connect
//! or to wait for a free one, `statement_timeout_ms` per statement (set as a
//! session option). A connection that failed is dropped, not reused.
//!
//! Migrations are numbered SQL files (`runtime/migrations/postgres/`)
//! compiled in and applied at open, each in its own transaction under a
//! transaction-scoped advisory lock, so daemons starting together apply each
//! once; the table `soma_migrations` records what is applied. A database
//! with a migration newer than this build is refused. (A dozen lines do what
//! `refinery` would, without its macros and dependencies.)

use std::{
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use postgres::{Client, NoTls, error::SqlState};

use super::StoreConfig;

/// The migrations, in order: (version, name, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "ledger, budgets, tokens",
        include_str!("../../migrations/postgres/0001_shared_state.sql"),
    ),
    (
        2,
        "catalog pulls",
        include_str!("../../migrations/postgres/0002_catalog_pulls.sql"),
    ),
    (
        3,
        "temporal payloads",
        include_str!("../../migrations/postgres/0003_temporal_payloads.sql"),
    ),
    (
        4,
        "marketplace fee splits",
        include_str!("../../migrations/postgres/0004_fee_splits.sql"),
    ),
    (
        5,
        "marketplace records",
        include_str!("../../migrations/postgres/0005_market_records.sql"),
    ),
    (
        6,
        "call statistics",
        include_str!("../../migrations/postgres/0006_call_stats.sql"),
    ),
];

/// The advisory lock key under which migrations run (any constant; "soma").
const MIGRATION_LOCK: i64 = 0x736f_6d61;

/// Why the PostgreSQL store failed. Every message says whether to retry;
/// a failed transaction is rolled back whole, so a retry never finds half
/// of it written.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Could not connect (PostgreSQL down, unreachable, refused the login).
    #[error(
        "cannot connect to the PostgreSQL store ([store] url); retryable: nothing was written, try again once it is reachable"
    )]
    Connect(#[source] postgres::Error),
    /// Every pooled connection stayed busy past the timeout.
    #[error(
        "no PostgreSQL connection became free within {0:?} ([store] pool_size are all busy); retryable: nothing was written"
    )]
    PoolTimeout(Duration),
    /// A statement or commit failed; the transaction was rolled back.
    #[error("the PostgreSQL store failed{}", retry_note(.0))]
    Query(#[source] postgres::Error),
    /// A migration could not be applied (nothing of it was).
    #[error(
        "PostgreSQL migration {version} ({name}) failed; the database is left at the version before it"
    )]
    Migration {
        /// Its number.
        version: i32,
        /// What it does.
        name: &'static str,
        /// The database's answer.
        #[source]
        source: postgres::Error,
    },
    /// The database was migrated by a newer Soma.
    #[error(
        "the PostgreSQL store is at schema version {found}, newer than this soma knows ({known}); upgrade soma on this node"
    )]
    TooNew {
        /// The version in the database.
        found: i32,
        /// The newest this build has.
        known: i32,
    },
    /// `[store]` is not usable (no URL, or not a connection string).
    #[error("{0}")]
    Config(String),
    /// A stored row does not hold what this build expects.
    #[error("the PostgreSQL store holds an unreadable {what}: {reason}")]
    Corrupt {
        /// Which row.
        what: String,
        /// What is wrong.
        reason: String,
    },
}

fn retry_note(e: &postgres::Error) -> &'static str {
    if retryable(e) {
        "; retryable: the transaction was rolled back, nothing of it was written"
    } else {
        "; the transaction was rolled back, nothing of it was written"
    }
}

/// Whether a driver error is transient: the connection broke, the server is
/// shutting down or starting, or the transaction lost a deadlock or a
/// serialization race.
fn retryable(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::T_R_DEADLOCK_DETECTED,
                    SqlState::T_R_SERIALIZATION_FAILURE,
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::QUERY_CANCELED,
                ]
                .contains(code)
        }
        // No SQL state: an I/O error on the socket.
        None => true,
    }
}

impl PgError {
    /// Whether the same operation may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(_) | Self::PoolTimeout(_) => true,
            Self::Query(e) => retryable(e),
            Self::Migration { .. }
            | Self::TooNew { .. }
            | Self::Config(_)
            | Self::Corrupt { .. } => false,
        }
    }

    /// Whether it is a lost deadlock or serialization race, which the
    /// same transaction retried at once usually wins.
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self, Self::Query(e) if e.code().is_some_and(|c| {
            *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        }))
    }
}

impl From<postgres::Error> for PgError {
    fn from(e: postgres::Error) -> Self {
        Self::Query(e)
    }
}

/// Now, unix ms.
pub(crate) use soma_host_api::meter::now_ms;

/// A `u64` as PostgreSQL's `BIGINT`, or `None` above `i64::MAX`.
pub(crate) fn to_i64(v: u64) -> Option<i64> {
    i64::try_from(v).ok()
}

/// A stored `BIGINT` as `u64` (negative values, which the schema's checks
/// forbid, read as 0).
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A `u64` bound for a query, saturating at `i64::MAX`.
pub(crate) fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A connection pool over one PostgreSQL database, migrated at open.
/// Cheap to clone; every clone shares the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for PgStore {
    /// Never prints the URL (it may carry a password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool_size", &self.pool.max)
            .finish_non_exhaustive()
    }
}

struct Pool {
    config: postgres::Config,
    state: Mutex<PoolState>,
    freed: Condvar,
    max: usize,
    wait: Duration,
}

#[derive(Default)]
struct PoolState {
    /// Free connections and when each was returned.
    idle: Vec<(Client, Instant)>,
    open: usize,
}

/// A connection idle longer than this is checked with an empty query
/// before it is handed out: a server restart breaks every idle connection
/// without the driver noticing until it is used, and the first user of
/// each would fail (a call charged on it would be lost to its caller).
/// Connections in steady use are never checked.
const IDLE_CHECK: Duration = Duration::from_secs(1);

impl PgStore {
    /// Connect with `config` (`[store]`, which must name a URL) and apply
    /// the migrations this database lacks. Cost: one connection and one
    /// small transaction per pending migration.
    pub fn open(config: &StoreConfig) -> Result<Self, PgError> {
        let url = config.url.as_deref().ok_or_else(|| {
            PgError::Config("store.url is required with store.backend = \"postgres\"".into())
        })?;
        let mut pg: postgres::Config = url.parse().map_err(|e| {
            PgError::Config(format!(
                "store.url is not a PostgreSQL connection string: {e}"
            ))
        })?;
        let timeout = Duration::from_millis(config.connect_timeout_ms.max(1));
        pg.connect_timeout(timeout);
        pg.application_name("soma");
        pg.options(&format!(
            "-c statement_timeout={} -c lock_timeout={}",
            config.statement_timeout_ms.max(1),
            config.statement_timeout_ms.max(1)
        ));
        let store = Self {
            pool: Arc::new(Pool {
                config: pg,
                state: Mutex::new(PoolState::default()),
                freed: Condvar::new(),
                max: usize::try_from(config.pool_size.clamp(1, super::MAX_POOL_SIZE)).unwrap_or(1),
                wait: timeout,
            }),
        };
        store.migrate()?;
        Ok(store)
    }

    /// A connection from the pool (waiting up to the connect timeout for a
    /// free one, or connecting a new one while under `pool_size`).
    pub fn conn(&self) -> Result<Conn, PgError> {
        let deadline = Instant::now() + self.pool.wait;
        let mut state = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            while let Some((mut client, since)) = state.idle.pop() {
                if client.is_closed() {
                    state.open = state.open.saturating_sub(1);
                    continue;
                }
                if since.elapsed() > IDLE_CHECK {
                    // One round trip, without holding the pool's lock.
                    drop(state);
                    let alive = client.is_valid(self.pool.wait).is_ok();
                    if alive {
                        return Ok(Conn {
                            client: Some(client),
                            pool: self.pool.clone(),
                        });
                    }
                    drop(client);
                    state = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
                    state.open = state.open.saturating_sub(1);
                    continue;
                }
                return Ok(Conn {
                    client: Some(client),
                    pool: self.pool.clone(),
                });
            }
            if state.open < self.pool.max {
                state.open += 1;
                drop(state);
                return match self.pool.config.connect(NoTls) {
                    Ok(client) => Ok(Conn {
                        client: Some(client),
                        pool: self.pool.clone(),
                    }),
                    Err(e) => {
                        self.pool.release_slot();
                        Err(PgError::Connect(e))
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PgError::PoolTimeout(self.pool.wait));
            }
            state = self
                .pool
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Apply the migrations the database lacks, each in one transaction
    /// under an advisory lock (concurrent daemons wait, then skip it).
    fn migrate(&self) -> Result<(), PgError> {
        let mut conn = self.conn()?;
        // Under the migrations' lock: two daemons creating the table at
        // once would otherwise race in the catalog (`type "soma_migrations"
        // already exists`, not always a unique violation).
        let mut txn = conn.transaction()?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        txn.batch_execute(
            "CREATE TABLE IF NOT EXISTS soma_migrations (
                 version INT PRIMARY KEY,
                 name TEXT NOT NULL,
                 applied_ms BIGINT NOT NULL)",
        )?;
        txn.commit()?;
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        for &(version, name, sql) in MIGRATIONS {
            let mut txn = conn.transaction()?;
            txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            let found: Option<i32> = txn
                .query_one("SELECT max(version) FROM soma_migrations", &[])?
                .get(0);
            if let Some(found) = found
                && found > known
            {
                return Err(PgError::TooNew { found, known });
            }
            if found.is_some_and(|f| f >= version) {
                continue;
            }
            txn.batch_execute(sql)
                .map_err(|source| PgError::Migration {
                    version,
                    name,
                    source,
                })?;
            txn.execute(
                "INSERT INTO soma_migrations (version, name, applied_ms) VALUES ($1, $2, $3)",
                &[&version, &name, &clamp_i64(now_ms())],
            )?;
            txn.commit().map_err(|source| PgError::Migration {
                version,
                name,
                source,
            })?;
        }
        Ok(())
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> Result<i32, PgError> {
        let mut conn = self.conn()?;
        let v: Option<i32> = conn
            .query_one("SELECT max(version) FROM soma_migrations", &[])?
            .get(0);
        Ok(v.unwrap_or(0))
    }
}

impl Pool {
    fn release_slot(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.open = state.open.saturating_sub(1);
        drop(state);
        self.freed.notify_one();
    }
}

/// A pooled connection: returned to the pool on drop, or closed if it broke.
#[allow(missing_debug_implementations)] // a live client; nothing useful to print
pub struct Conn {
    client: Option<Client>,
    pool: Arc<Pool>,
}

impl std::ops::Deref for Conn {
    type Target = Client;

    fn deref(&self) -> &Client {
        // Present from creation until drop.
        self.client.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().unwrap_or_else(|| unreachable!())
    }
}

/// The synchronous driver closes a connection by blocking on a runtime of
/// its own, which panics on a thread that drives async tasks: the last
/// handle of a store may be dropped there (a daemon's state at shutdown),
/// so the idle connections are closed on a thread of their own then.
impl Drop for Pool {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let idle = std::mem::take(&mut state.idle);
        if idle.is_empty() {
            return;
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            let closing = std::thread::Builder::new()
                .name("soma-pg-close".into())
                .spawn(move || drop(idle));
            if let Ok(thread) = closing {
                let _ = thread.join();
            }
        } else {
            drop(idle);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        if client.is_closed() {
            drop(client);
            self.pool.release_slot();
            return;
        }
        let mut state = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        state.idle.push((client, Instant::now()));
        drop(state);
        self.pool.freed.notify_one();
    }
}
