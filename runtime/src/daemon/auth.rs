//! API tokens: created per tenant with scopes, stored hashed in redb,
//! checked in constant time.
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

use base64::Engine as _;
use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use soma_host_api::storage::LazyDatabase;
use subtle::ConstantTimeEq as _;

/// token id → [`TokenRecord`] (JSON).
const TOKENS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("api_tokens");

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Start and cancel runs.
    Run,
    /// Read runs, events, capsules, the ledger and budgets of its tenant.
    Read,
    /// Pull capsules, set budgets, create tokens, see every tenant.
    Admin,
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "run" => Ok(Self::Run),
            "read" => Ok(Self::Read),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown scope `{other}` (run, read, admin)")),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Run => "run",
            Self::Read => "read",
            Self::Admin => "admin",
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
    pub scopes: Vec<Scope>,
    /// sha256 of the whole token, hex.
    pub hash: String,
    /// Unix ms.
    pub created_ms: u64,
    /// Revoked tokens are kept (for audit) but refused.
    #[serde(default)]
    pub revoked: bool,
}

/// Who a request acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id.
    pub token: String,
    /// The tenant.
    pub tenant: String,
    /// Its scopes.
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// Whether it holds `scope` (admin holds every scope).
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The database failed.
    #[error("token store: {0}")]
    Storage(String),
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
}

fn storage(e: impl fmt::Display) -> AuthError {
    AuthError::Storage(e.to_string())
}

/// The token store: redb for durability, an in-memory index for checks.
#[derive(Debug, Clone)]
pub struct Tokens {
    db: Arc<LazyDatabase>,
    by_id: Arc<RwLock<HashMap<String, TokenRecord>>>,
}

impl Tokens {
    /// Load every token of `db` (once, at daemon start).
    pub fn load(db: Arc<LazyDatabase>) -> Result<Self, AuthError> {
        let tokens = Self {
            db,
            by_id: Arc::default(),
        };
        let all = tokens.list()?;
        let mut map = tokens.by_id.write().unwrap_or_else(|p| p.into_inner());
        for t in all {
            map.insert(t.id.clone(), t);
        }
        drop(map);
        Ok(tokens)
    }

    /// Every stored token.
    pub fn list(&self) -> Result<Vec<TokenRecord>, AuthError> {
        let db = self.db.get().map_err(storage)?;
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

    /// Create a token for `tenant` with `scopes`; returns the token (shown
    /// once) and its record.
    pub fn create(
        &self,
        tenant: &str,
        scopes: &[Scope],
    ) -> Result<(String, TokenRecord), AuthError> {
        if tenant.is_empty()
            || tenant.len() > 64
            || !tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(AuthError::Invalid(
                "tenant: 1–64 letters, digits, '-' or '_'".into(),
            ));
        }
        if scopes.is_empty() {
            return Err(AuthError::Invalid("give at least one scope".into()));
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
            created_ms: crate::dag::history::now_ms(),
            revoked: false,
        };
        self.save(&record)?;
        Ok((token, record))
    }

    /// Revoke a token by id.
    pub fn revoke(&self, id: &str) -> Result<TokenRecord, AuthError> {
        let mut record = self
            .list()?
            .into_iter()
            .find(|t| t.id == id)
            .ok_or_else(|| AuthError::Invalid(format!("no token `{id}`")))?;
        record.revoked = true;
        self.save(&record)?;
        Ok(record)
    }

    fn save(&self, record: &TokenRecord) -> Result<(), AuthError> {
        let db = self.db.get().map_err(storage)?;
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
        self.by_id
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.id.clone(), record.clone());
        Ok(())
    }

    /// Who `token` is, if it is a valid, unrevoked token. Cost: one sha256
    /// and a map lookup; the comparison is constant-time.
    pub fn check(&self, token: &str) -> Option<Principal> {
        let id = token.strip_prefix("soma_")?.split('_').next()?;
        let map = self.by_id.read().unwrap_or_else(|p| p.into_inner());
        let record = map.get(id)?;
        let presented = hex::encode(Sha256::digest(token.as_bytes()));
        let equal: bool = presented.as_bytes().ct_eq(record.hash.as_bytes()).into();
        (equal && !record.revoked).then(|| Principal {
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
        .map_err(|e| AuthError::Storage(format!("no randomness: {e}")))
}

/// Parse `run,read,admin`.
pub fn parse_scopes(text: &str) -> Result<Vec<Scope>, String> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(Scope::from_str)
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
            .create("acme", &[Scope::Run, Scope::Read])
            .expect("create");
        let p = tokens.check(&token).expect("valid");
        assert_eq!(p.tenant, "acme");
        assert!(p.may(Scope::Run) && !p.may(Scope::Admin));
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
    }
}
