//! API tokens: created per tenant with scopes and an optional expiry,
//! stored hashed in redb, checked in constant time, revocable while the
//! daemon runs.
//!
//! Scopes and who may do what:
//!
//! | scope | may |
//! |---|---|
//! | `run` | start and cancel its tenant's runs |
//! | `read` | read its tenant's runs, events, capsules, ledger, budgets |
//! | `admin` | a *tenant* admin: `run` + `read`, and its own tenant's tokens and budgets |
//! | `operator` | everything, for every tenant: catalog pulls, capsule budgets, other tenants' runs, ledger, budgets and tokens, `/metrics` |
//! | `metrics` | `GET /metrics` only (for a Prometheus scrape) |
//!
//! Migration: before scoped admin, `admin` was a global superuser. Stored
//! `admin` tokens keep working, as tenant admins of the tenant they were
//! created for; whoever operates the daemon needs an `operator` token
//! (`soma token create --tenant ops --scopes operator`). The daemon logs
//! this once at start when it finds `admin` tokens and no `operator` one.
//!
//! A token is `soma_<id>_<secret>`: `id` (12 hex digits) names the record
//! and may be shown and logged; `secret` (43 base64url characters, 256
//! bits) never is. Only `sha256(token)` is stored. Checking looks the record
//! up by id and compares the hashes with `subtle`, so the time taken does
//! not depend on how much of a guess was right.

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{Arc, RwLock},
};

pub mod postgres;

use base64::Engine as _;
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use soma_host_api::storage::LazyDatabase;
use subtle::ConstantTimeEq as _;

/// How often a daemon on the shared PostgreSQL store reloads the tokens.
pub const REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// token id → [`TokenRecord`] (JSON).
const TOKENS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("api_tokens");

/// What a token may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// Start and cancel runs.
    Run,
    /// Read runs, events, capsules, the ledger and budgets of its tenant.
    Read,
    /// A tenant admin: run + read, and its own tenant's tokens and budgets.
    Admin,
    /// The daemon's operator: every scope, every tenant, the catalog.
    Operator,
    /// `GET /metrics` only.
    Metrics,
}

impl TokenScope {
    /// Every scope, in the order they are listed.
    pub const ALL: [Self; 5] = [
        Self::Run,
        Self::Read,
        Self::Admin,
        Self::Operator,
        Self::Metrics,
    ];
}

impl FromStr for TokenScope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "run" => Ok(Self::Run),
            "read" => Ok(Self::Read),
            "admin" => Ok(Self::Admin),
            "operator" => Ok(Self::Operator),
            "metrics" => Ok(Self::Metrics),
            other => Err(format!(
                "unknown scope `{other}` (run, read, admin, operator, metrics)"
            )),
        }
    }
}

impl fmt::Display for TokenScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Run => "run",
            Self::Read => "read",
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Metrics => "metrics",
        })
    }
}

/// A stored token (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id.
    pub id: String,
    /// The tenant it acts for.
    pub tenant: String,
    /// What it may do.
    pub scopes: Vec<TokenScope>,
    /// sha256 of the whole token, hex.
    pub hash: String,
    /// Unix ms.
    pub created_ms: u64,
    /// Revoked tokens are kept (for audit) but refused.
    #[serde(default)]
    pub revoked: bool,
    /// Unix ms after which the token is refused; `None`: never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

impl TokenRecord {
    /// Whether it has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms >= e)
    }

    /// What may be shown of it: everything but the hash.
    pub fn info(&self, now_ms: u64) -> TokenInfo {
        TokenInfo {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            scopes: self.scopes.clone(),
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            revoked: self.revoked,
            expired: self.expired(now_ms),
        }
    }
}

/// A token as listed (`GET /v1/tokens`, `soma token ls --json`): never its
/// secret nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// Public id.
    pub id: String,
    /// The tenant it acts for.
    pub tenant: String,
    /// What it may do.
    pub scopes: Vec<TokenScope>,
    /// Unix ms.
    pub created_ms: u64,
    /// Unix ms after which it is refused, if it expires.
    pub expires_ms: Option<u64>,
    /// Revoked.
    pub revoked: bool,
    /// Past its expiry.
    pub expired: bool,
}

/// Who a request acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id.
    pub token: String,
    /// The tenant.
    pub tenant: String,
    /// Its scopes.
    pub scopes: Vec<TokenScope>,
}

impl Principal {
    fn holds(&self, scope: TokenScope) -> bool {
        self.scopes.contains(&scope)
    }

    /// Whether it may act with `scope`: `operator` holds every scope;
    /// `admin` holds `run` and `read` (for its own tenant); `metrics` is
    /// held only by `metrics` and `operator` tokens.
    pub fn may(&self, scope: TokenScope) -> bool {
        self.holds(scope)
            || self.holds(TokenScope::Operator)
            || (matches!(scope, TokenScope::Run | TokenScope::Read)
                && self.holds(TokenScope::Admin))
    }

    /// Whether it acts for every tenant (an `operator` token).
    pub fn is_operator(&self) -> bool {
        self.holds(TokenScope::Operator)
    }

    /// Whether it may see and act on what belongs to `tenant`: its own
    /// tenant, or any for an operator.
    pub fn sees_tenant(&self, tenant: &str) -> bool {
        self.tenant == tenant || self.is_operator()
    }

    /// Why it may not create or revoke a token of `tenant` with `scopes`,
    /// if it may not: an operator may do anything; a tenant admin only for
    /// its own tenant, and only `run`, `read` and `admin`.
    pub fn refuses_token(&self, tenant: &str, scopes: &[TokenScope]) -> Option<String> {
        if self.is_operator() {
            return None;
        }
        if !self.holds(TokenScope::Admin) {
            return Some("this token lacks the `admin` scope".into());
        }
        if tenant != self.tenant {
            return Some(format!(
                "a tenant admin manages only its own tenant's tokens (`{}`); another tenant's need an `operator` token",
                self.tenant
            ));
        }
        scopes
            .iter()
            .find(|s| matches!(s, TokenScope::Operator | TokenScope::Metrics))
            .map(|s| format!("only an `operator` token may grant or revoke the `{s}` scope"))
    }
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The database failed.
    #[error("token store")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The operating system gave no randomness for a new token.
    #[error("token store: no randomness")]
    Randomness(#[source] rand_core::Error),
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
    /// The expiry asked for is not in the future.
    #[error("the expiry ({expires_ms} ms since the epoch) is not in the future (now {now_ms})")]
    PastExpiry {
        /// The expiry asked for, unix ms.
        expires_ms: u64,
        /// Now, unix ms.
        now_ms: u64,
    },
    /// No token has this id.
    #[error("no token `{0}` (`soma token ls` lists them)")]
    NotFound(String),
}

fn storage(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> AuthError {
    AuthError::Storage(e.into())
}

/// The token store: redb (or the shared PostgreSQL store) for
/// durability, an in-memory index for checks.
#[derive(Debug, Clone)]
pub struct Tokens {
    backing: Backing,
    by_id: Arc<RwLock<HashMap<String, TokenRecord>>>,
}

/// Where the records are kept.
#[derive(Debug, Clone)]
enum Backing {
    Redb(Arc<LazyDatabase>),
    Postgres(postgres::PgTokens),
}

impl Tokens {
    /// Load every token of `db` (once, at daemon start).
    pub fn load(db: Arc<LazyDatabase>) -> Result<Self, AuthError> {
        Self::load_from(Backing::Redb(db))
    }

    /// Load every token of the shared PostgreSQL store. Tokens created or
    /// revoked by another daemon are seen after [`Tokens::refresh`].
    pub fn load_postgres(pg: postgres::PgTokens) -> Result<Self, AuthError> {
        Self::load_from(Backing::Postgres(pg))
    }

    /// The token store `[store]` names: the data directory's redb
    /// database, or the shared PostgreSQL store (connected and migrated
    /// here, on a thread of its own: the synchronous driver must not run
    /// on an async task). With PostgreSQL a thread reloads the tokens every
    /// [`REFRESH`], so a token created or revoked on another daemon holds
    /// here within about a second.
    pub fn open(
        store: &crate::store::StoreConfig,
        db: Arc<LazyDatabase>,
    ) -> Result<Self, AuthError> {
        if store.backend == crate::store::Backend::Redb {
            return Self::load(db);
        }
        let store = store.clone();
        let tokens = std::thread::scope(|s| {
            s.spawn(move || {
                let pg = crate::store::postgres::PgStore::open(&store).map_err(storage)?;
                Self::load_postgres(postgres::PgTokens::new(pg))
            })
            .join()
            .unwrap_or_else(|_| {
                Err(AuthError::Invalid(
                    "the token store's loader panicked".into(),
                ))
            })
        })?;
        tokens.spawn_refresh()?;
        Ok(tokens)
    }

    /// Reload from the shared store every [`REFRESH`] while any clone of
    /// these tokens lives (a failed reload keeps the last tokens and is
    /// logged).
    fn spawn_refresh(&self) -> Result<(), AuthError> {
        let Backing::Postgres(pg) = &self.backing else {
            return Ok(());
        };
        let pg = pg.clone();
        let map = Arc::downgrade(&self.by_id);
        std::thread::Builder::new()
            .name("soma-token-refresh".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(REFRESH);
                    let Some(map) = map.upgrade() else { return };
                    match pg.list() {
                        Ok(all) => {
                            *map.write().unwrap_or_else(|p| p.into_inner()) =
                                all.into_iter().map(|t| (t.id.clone(), t)).collect();
                        }
                        Err(e) => tracing::warn!(
                            "cannot reload the API tokens from PostgreSQL (the last ones loaded stay in force): {}",
                            soma_host_api::error_chain(&e)
                        ),
                    }
                }
            })
            .map(|_| ())
            .map_err(storage)
    }

    fn load_from(backing: Backing) -> Result<Self, AuthError> {
        let tokens = Self {
            backing,
            by_id: Arc::default(),
        };
        tokens.refresh()?;
        Ok(tokens)
    }

    /// Replace the in-memory index with the stored records (what other
    /// daemons sharing the store created or revoked). Cost: one read of
    /// every record.
    pub fn refresh(&self) -> Result<(), AuthError> {
        let all: HashMap<String, TokenRecord> = self
            .list()?
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        *self.by_id.write().unwrap_or_else(|p| p.into_inner()) = all;
        Ok(())
    }

    /// Every stored token.
    pub fn list(&self) -> Result<Vec<TokenRecord>, AuthError> {
        let db = match &self.backing {
            Backing::Redb(db) => db,
            Backing::Postgres(pg) => return pg.list().map_err(storage),
        };
        let db = db.get().map_err(storage)?;
        let txn = db.begin_read().map_err(storage)?;
        let table = match txn.open_table(TOKENS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(storage)? {
            let (_, v) = row.map_err(storage)?;
            out.push(serde_json::from_slice(v.value()).map_err(storage)?);
        }
        Ok(out)
    }

    /// Create a token for `tenant` with `scopes`, refused from
    /// `expires_ms` (unix ms) on if given; returns the token (shown once)
    /// and its record. Cost: one durable redb write.
    pub fn create(
        &self,
        tenant: &str,
        scopes: &[TokenScope],
        expires_ms: Option<u64>,
    ) -> Result<(String, TokenRecord), AuthError> {
        if !crate::names::is_plain_id(tenant) {
            return Err(AuthError::Invalid(
                "tenant: 1–64 letters, digits, '-' or '_'".into(),
            ));
        }
        if scopes.is_empty() {
            return Err(AuthError::Invalid("give at least one scope".into()));
        }
        let now = crate::dag::history::now_ms();
        if let Some(e) = expires_ms
            && e <= now
        {
            return Err(AuthError::PastExpiry {
                expires_ms: e,
                now_ms: now,
            });
        }
        let mut secret = [0u8; 32];
        let mut id = [0u8; 6];
        getrandom(&mut secret)?;
        getrandom(&mut id)?;
        let id = hex::encode(id);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let token = format!("soma_{id}_{secret}");
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        let record = TokenRecord {
            id: id.clone(),
            tenant: tenant.to_owned(),
            scopes,
            hash: hex::encode(Sha256::digest(token.as_bytes())),
            created_ms: now,
            revoked: false,
            expires_ms,
        };
        self.save(&record)?;
        Ok((token, record))
    }

    /// A token's record by id (from memory; no I/O).
    pub fn get(&self, id: &str) -> Option<TokenRecord> {
        self.by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Every token held in memory, by id (no I/O; what the daemon checks
    /// against).
    pub fn loaded(&self) -> Vec<TokenRecord> {
        let map = self.by_id.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<TokenRecord> = map.values().cloned().collect();
        all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        all
    }

    /// Revoke a token by id: durable, and refused by [`Tokens::check`]
    /// from the moment this returns. Revoking a revoked token is a no-op.
    /// Cost: one read and one durable redb write.
    pub fn revoke(&self, id: &str) -> Result<TokenRecord, AuthError> {
        let mut record = self
            .read(id)?
            .ok_or_else(|| AuthError::NotFound(id.to_owned()))?;
        if !record.revoked {
            record.revoked = true;
            self.save(&record)?;
        }
        Ok(record)
    }

    fn read(&self, id: &str) -> Result<Option<TokenRecord>, AuthError> {
        let db = match &self.backing {
            Backing::Redb(db) => db,
            Backing::Postgres(pg) => return pg.get(id).map_err(storage),
        };
        let db = db.get().map_err(storage)?;
        let txn = db.begin_read().map_err(storage)?;
        let table = match txn.open_table(TOKENS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        match table.get(id).map_err(storage)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(storage)?)),
            None => Ok(None),
        }
    }

    fn save(&self, record: &TokenRecord) -> Result<(), AuthError> {
        match &self.backing {
            Backing::Redb(db) => {
                let db = db.get().map_err(storage)?;
                let mut txn = db.begin_write().map_err(storage)?;
                txn.set_durability(Durability::Immediate).map_err(storage)?;
                {
                    let mut table = txn.open_table(TOKENS).map_err(storage)?;
                    let bytes = serde_json::to_vec(record).map_err(storage)?;
                    table
                        .insert(record.id.as_str(), bytes.as_slice())
                        .map_err(storage)?;
                }
                txn.commit().map_err(storage)?;
            }
            Backing::Postgres(pg) => pg.save(record).map_err(storage)?,
        }
        self.by_id
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.id.clone(), record.clone());
        Ok(())
    }

    /// Who `token` is, if it is a valid, unrevoked, unexpired token. Every
    /// request; cost: one sha256, a map lookup and a clock read; the
    /// comparison is constant-time.
    pub fn check(&self, token: &str) -> Option<Principal> {
        let id = token.strip_prefix("soma_")?.split('_').next()?;
        let map = self.by_id.read().unwrap_or_else(|p| p.into_inner());
        let record = map.get(id)?;
        let presented = hex::encode(Sha256::digest(token.as_bytes()));
        let equal: bool = presented.as_bytes().ct_eq(record.hash.as_bytes()).into();
        let live = !record.revoked && !record.expired(crate::dag::history::now_ms());
        (equal && live).then(|| Principal {
            token: record.id.clone(),
            tenant: record.tenant.clone(),
            scopes: record.scopes.clone(),
        })
    }
}

fn getrandom(buf: &mut [u8]) -> Result<(), AuthError> {
    use rand_core::RngCore as _;
    rand_core::OsRng
        .try_fill_bytes(buf)
        .map_err(AuthError::Randomness)
}

/// Parse a duration such as `30d`, `12h`, `15m`, `90s` or `3600` (seconds)
/// into seconds (for `--expires-in`).
pub fn parse_duration_s(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a number with a unit, e.g. 30d, 12h, 15m, 90s"))?;
    let per = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        other => return Err(format!("`{text}`: unknown unit `{other}` (s, m, h, d, w)")),
    };
    match n.checked_mul(per) {
        Some(0) | None => Err(format!(
            "`{text}`: give a positive duration of at most u64 seconds"
        )),
        Some(s) => Ok(s),
    }
}

/// The expiry (unix ms) `expires_in_s` seconds from now; `None` if it
/// overflows (which no caller can mean).
pub fn expiry_in(expires_in_s: u64) -> Option<u64> {
    expires_in_s
        .checked_mul(1000)
        .and_then(|ms| crate::dag::history::now_ms().checked_add(ms))
}

/// Parse `run,read,admin`.
pub fn parse_scopes(text: &str) -> Result<Vec<TokenScope>, String> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(TokenScope::from_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_check_only_exactly_and_survive_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(LazyDatabase::new(dir.path().join("soma.redb")));
        let tokens = Tokens::load(db.clone()).expect("load");
        let (token, record) = tokens
            .create("acme", &[TokenScope::Run, TokenScope::Read], None)
            .expect("create");
        let p = tokens.check(&token).expect("valid");
        assert_eq!(p.tenant, "acme");
        assert!(p.may(TokenScope::Run) && !p.may(TokenScope::Admin));
        let mut wrong = token.clone();
        wrong.pop();
        wrong.push('A');
        assert!(tokens.check(&wrong).is_none() || wrong == token);
        assert!(tokens.check("soma_nope_x").is_none());
        assert!(tokens.check("").is_none());
        assert!(!tokens.list().expect("list")[0].hash.contains(&token));
        tokens.revoke(&record.id).expect("revoke");
        assert!(tokens.check(&token).is_none());
        drop(tokens);
        let again = Tokens::load(db).expect("reload");
        assert!(again.check(&token).is_none(), "revocation is durable");
        assert!(matches!(again.revoke("nope"), Err(AuthError::NotFound(_))));
    }

    #[test]
    fn expired_tokens_are_refused_and_past_expiries_are_invalid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(LazyDatabase::new(dir.path().join("soma.redb")));
        let tokens = Tokens::load(db).expect("load");
        let now = crate::dag::history::now_ms();
        assert!(matches!(
            tokens.create("acme", &[TokenScope::Run], Some(now.saturating_sub(1))),
            Err(AuthError::PastExpiry { .. })
        ));
        let (soon, record) = tokens
            .create("acme", &[TokenScope::Run], Some(now + 150))
            .expect("create");
        assert!(tokens.check(&soon).is_some(), "valid until it expires");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while tokens.check(&soon).is_some() {
            assert!(std::time::Instant::now() < deadline, "never expired");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let info = tokens.get(&record.id).expect("kept").info(now + 1000);
        assert!(info.expired && !info.revoked);
    }

    #[test]
    fn scopes_nest_and_admin_is_bound_to_its_tenant() {
        let p = |scopes: &[TokenScope]| Principal {
            token: "t".into(),
            tenant: "acme".into(),
            scopes: scopes.to_vec(),
        };
        let admin = p(&[TokenScope::Admin]);
        assert!(
            admin.may(TokenScope::Run)
                && admin.may(TokenScope::Read)
                && admin.may(TokenScope::Admin)
        );
        assert!(!admin.may(TokenScope::Operator) && !admin.may(TokenScope::Metrics));
        assert!(admin.sees_tenant("acme") && !admin.sees_tenant("globex"));
        assert!(
            admin
                .refuses_token("acme", &[TokenScope::Run, TokenScope::Admin])
                .is_none()
        );
        assert!(admin.refuses_token("globex", &[TokenScope::Run]).is_some());
        assert!(
            admin
                .refuses_token("acme", &[TokenScope::Operator])
                .is_some()
        );
        assert!(
            admin
                .refuses_token("acme", &[TokenScope::Metrics])
                .is_some()
        );
        let operator = p(&[TokenScope::Operator]);
        assert!(TokenScope::ALL.iter().all(|s| operator.may(*s)));
        assert!(operator.sees_tenant("globex"));
        assert!(
            operator
                .refuses_token("globex", &[TokenScope::Operator])
                .is_none()
        );
        let metrics = p(&[TokenScope::Metrics]);
        assert!(metrics.may(TokenScope::Metrics) && !metrics.may(TokenScope::Read));
        let run = p(&[TokenScope::Run]);
        assert!(run.refuses_token("acme", &[TokenScope::Run]).is_some());
        for s in TokenScope::ALL {
            assert_eq!(s.to_string().parse::<TokenScope>(), Ok(s));
        }
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration_s("30d"), Ok(30 * 86_400));
        assert_eq!(parse_duration_s("12h"), Ok(12 * 3600));
        assert_eq!(parse_duration_s("90"), Ok(90));
        assert_eq!(parse_duration_s("2w"), Ok(2 * 604_800));
        assert!(parse_duration_s("0s").is_err());
        assert!(parse_duration_s("5y").is_err());
        assert!(parse_duration_s("d").is_err());
        assert!(parse_duration_s("99999999999999999999d").is_err());
    }
}
