//! The node's data directory: one redb database and the AOT cache.
//!
//! Layout under `--data` (default `$SOMA_DATA`, else
//! `$XDG_DATA_HOME/soma`, else `~/.local/share/soma`):
//!
//! ```text
//! soma.redb          kv, and (later) blobs index, runs, ledger, budgets
//! aot/<digest>-<engine fingerprint>.cwasm
//! ```

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use soma_host_api::storage::LazyDatabase;

/// The data directory of one Soma node.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    db: Arc<LazyDatabase>,
}

impl DataDir {
    /// A data directory rooted at `root`. Nothing is created until used.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let db = Arc::new(LazyDatabase::new(root.join("soma.redb")));
        Self { root, db }
    }

    /// The default location: `$SOMA_DATA`, `$XDG_DATA_HOME/soma`, or
    /// `~/.local/share/soma`; `./.soma` if none of those can be found.
    pub fn default_root() -> PathBuf {
        if let Some(p) = std::env::var_os("SOMA_DATA") {
            return PathBuf::from(p);
        }
        if let Some(p) = std::env::var_os("XDG_DATA_HOME") {
            return PathBuf::from(p).join("soma");
        }
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(".local/share/soma");
        }
        PathBuf::from(".soma")
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of compiled (AOT) components.
    pub fn aot_dir(&self) -> PathBuf {
        self.root.join("aot")
    }

    /// The node's database, opened on first use.
    pub fn database(&self) -> &Arc<LazyDatabase> {
        &self.db
    }
}

pub mod postgres;

/// Where the state several daemons share lives (`[store]` in `soma.toml`):
/// the embedded redb database of the data directory (the default), or one
/// PostgreSQL database shared by every daemon of a fleet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `redb` (default) or `postgres`.
    pub backend: Backend,
    /// The PostgreSQL connection string (`postgres://user:pass@host:port/db`
    /// or `host=… port=… dbname=…`); required with `backend = "postgres"`.
    /// It may carry a password: it is never logged or printed.
    pub url: Option<String>,
    /// Most connections one daemon opens (the ledger's writer thread holds
    /// one while it commits). Default 8, at most 64.
    pub pool_size: u32,
    /// How long to wait to connect, or for a free connection. Default 5000.
    pub connect_timeout_ms: u64,
    /// Longest a statement may run before PostgreSQL cancels it. Default 10000.
    pub statement_timeout_ms: u64,
    /// How long a budget hold may stay unsettled before any daemon
    /// releases it (its daemon died mid-call, or its release failed while
    /// the store was down). Must outlast the longest call: at least
    /// `limits.timeout_ms` plus a minute (an LLM request can overrun the
    /// deadline by the provider's `timeout_ms`). Default 3,600,000 (1 h).
    pub hold_ttl_ms: u64,
}

/// Which store `[store]` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The data directory's redb database (one daemon).
    #[default]
    Redb,
    /// A PostgreSQL database shared by several daemons.
    Postgres,
}

/// Most connections `[store] pool_size` may ask for.
pub const MAX_POOL_SIZE: u32 = 64;

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Redb,
            url: None,
            pool_size: 8,
            connect_timeout_ms: 5000,
            statement_timeout_ms: 10_000,
            hold_ttl_ms: 3_600_000,
        }
    }
}

impl StoreConfig {
    /// Check the section: a URL with `postgres`, bounded pool and timeouts.
    pub fn check(&self) -> Result<(), String> {
        if self.backend == Backend::Postgres {
            let Some(url) = &self.url else {
                return Err("store.url is required with store.backend = \"postgres\" \
                     (e.g. postgres://soma@127.0.0.1:5432/soma)"
                    .into());
            };
            url.parse::<::postgres::Config>().map_err(|e| {
                format!("store.url is not a PostgreSQL connection string ({e}); e.g. postgres://soma@127.0.0.1:5432/soma")
            })?;
        }
        if self.pool_size == 0 || self.pool_size > MAX_POOL_SIZE {
            return Err(format!("store.pool_size must be 1–{MAX_POOL_SIZE}"));
        }
        if self.connect_timeout_ms == 0 || self.statement_timeout_ms == 0 {
            return Err(
                "store.connect_timeout_ms and store.statement_timeout_ms must be positive".into(),
            );
        }
        if self.hold_ttl_ms < 1_000 {
            return Err("store.hold_ttl_ms must be at least 1000".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_section_defaults_to_redb_and_checks_postgres_settings() {
        let c: crate::Config = toml::from_str("").expect("empty config");
        assert_eq!(c.store, StoreConfig::default());
        assert_eq!(c.store.backend, Backend::Redb);
        assert!(c.check().is_ok());
        let no_url: crate::Config =
            toml::from_str("[store]\nbackend = \"postgres\"\n").expect("parse");
        let err = no_url.check().expect_err("no url").to_string();
        assert!(err.contains("store.url is required"), "{err}");
        let ok: crate::Config = toml::from_str(
            "[store]\nbackend = \"postgres\"\nurl = \"postgres://soma@127.0.0.1:5432/soma\"\n",
        )
        .expect("parse");
        assert!(ok.check().is_ok());
        for bad in ["pool_size = 0", "pool_size = 65", "connect_timeout_ms = 0"] {
            let c: crate::Config = toml::from_str(&format!("[store]\n{bad}\n")).expect("parse");
            assert!(c.check().is_err(), "{bad}");
        }
        assert!(toml::from_str::<crate::Config>("[store]\nbackend = \"mysql\"\n").is_err());
    }
}
