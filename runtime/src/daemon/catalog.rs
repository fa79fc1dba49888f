//! The capsules operators pull into the catalog while a daemon runs
//! (`POST /v1/capsules/pull`), kept so that they outlive the daemon and,
//! on a fleet, reach every daemon of it.
//!
//! A [`Pull`] records the name, the pinned reference (`host/repo@sha256:…`,
//! the manifest digest) and the component digest; never the bytes, which
//! the pull left verified in the node's blob cache. The records live in the
//! data directory's redb (`catalog_pulls`) or, with `[store] backend =
//! "postgres"`, in the shared database (table `catalog_pulls`), where every
//! daemon of a fleet sees them.
//!
//! [`sync`] makes a daemon's in-memory catalog agree with the records: a
//! recorded pull it does not serve yet is resolved again from its pinned
//! reference — from the blob cache when the node has it (no network), else
//! pulled through this node's `[trust]` policy, so every node verifies what
//! it runs — and checked against the recorded digest; a pull removed
//! elsewhere (`DELETE /v1/capsules/{name}`) gives the name back to the
//! `[[daemon.capsules]]` entry it had replaced, or drops it. Runs that
//! pinned a replaced capsule keep it by digest either way. The daemon runs
//! [`sync`] at start and then every [`REFRESH`].
//!
//! Precedence: a recorded pull wins over a `[[daemon.capsules]]` entry of
//! the same name (the pull is the later act, and every daemon of a fleet
//! must serve the same capsule under one name); deleting the pull returns
//! to the entry.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use soma_host_api::storage::LazyDatabase;

use super::{CatalogItem, Daemon};
use crate::{
    oci::Reference,
    resolve::CapsuleRef,
    store::postgres::{PgError, PgStore},
};

/// How often a daemon re-reads the recorded pulls (and retries one that
/// failed, at most every [`RETRY`]).
pub const REFRESH: Duration = Duration::from_secs(2);

/// How long a recorded pull that could not be resolved waits before the
/// next try (the registry may be down; no need to ask it every refresh).
pub const RETRY: Duration = Duration::from_secs(30);

/// name → [`Pull`] (JSON).
const PULLS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("catalog_pulls");

/// A capsule pulled into the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pull {
    /// The catalog name it is served under.
    pub name: String,
    /// The pinned registry reference (`host/repo@sha256:<manifest>`).
    pub origin: String,
    /// The component's digest, `sha256:<hex>`.
    pub digest: String,
    /// When it was pulled, unix ms.
    pub pulled_ms: u64,
    /// The tenant of the operator token that pulled it.
    pub pulled_by: String,
}

/// Why the recorded pulls could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The node's redb database failed.
    #[error("the catalog's pulls in the node database")]
    Redb(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The shared PostgreSQL store failed.
    #[error("the catalog's pulls on PostgreSQL")]
    Postgres(#[from] PgError),
    /// A stored record does not parse.
    #[error("the recorded pull of `{name}` is unreadable: {reason}")]
    Corrupt {
        /// Its name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

impl CatalogError {
    /// Whether trying again later may succeed (the shared store was
    /// unreachable or busy; nothing was written).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Postgres(e) if e.is_retryable())
    }
}

fn redb_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> CatalogError {
    CatalogError::Redb(e.into())
}

fn parse(name: &str, bytes: &[u8]) -> Result<Pull, CatalogError> {
    serde_json::from_slice(bytes).map_err(|e| CatalogError::Corrupt {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// One durable write transaction on the pulls table of `db`: `f`'s
/// result once committed (nothing is written if `f` fails).
fn write<T>(
    db: &LazyDatabase,
    f: impl FnOnce(&mut redb::Table<'_, &str, &[u8]>) -> Result<T, CatalogError>,
) -> Result<T, CatalogError> {
    let db = db.get().map_err(redb_error)?;
    let mut txn = db.begin_write().map_err(redb_error)?;
    txn.set_durability(Durability::Immediate)
        .map_err(redb_error)?;
    let out = {
        let mut table = txn.open_table(PULLS).map_err(redb_error)?;
        f(&mut table)?
    };
    txn.commit().map_err(redb_error)?;
    Ok(out)
}

/// Where the pulls are recorded. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Pulls {
    /// The data directory's redb database (this node only).
    Redb(Arc<LazyDatabase>),
    /// The shared PostgreSQL store (every daemon of the fleet).
    Postgres(PgStore),
}

impl Pulls {
    /// Every recorded pull, by name. Cost: one read of the table.
    pub fn list(&self) -> Result<BTreeMap<String, Pull>, CatalogError> {
        let mut out = BTreeMap::new();
        match self {
            Self::Redb(db) => {
                let db = db.get().map_err(redb_error)?;
                let txn = db.begin_read().map_err(redb_error)?;
                let table = match txn.open_table(PULLS) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(out),
                    Err(e) => return Err(redb_error(e)),
                };
                for row in table.iter().map_err(redb_error)? {
                    let (k, v) = row.map_err(redb_error)?;
                    let pull = parse(k.value(), v.value())?;
                    out.insert(pull.name.clone(), pull);
                }
            }
            Self::Postgres(pg) => {
                let mut conn = pg.conn()?;
                let rows = conn
                    .query("SELECT name, record FROM catalog_pulls", &[])
                    .map_err(PgError::Query)?;
                for row in rows {
                    let name: String = row.try_get(0).map_err(PgError::Query)?;
                    let record: String = row.try_get(1).map_err(PgError::Query)?;
                    let pull = parse(&name, record.as_bytes())?;
                    out.insert(pull.name.clone(), pull);
                }
            }
        }
        Ok(out)
    }

    /// Record `pull` (replacing any under its name). Cost: one durable write.
    pub fn save(&self, pull: &Pull) -> Result<(), CatalogError> {
        let json = serde_json::to_string(pull).map_err(|e| CatalogError::Corrupt {
            name: pull.name.clone(),
            reason: e.to_string(),
        })?;
        match self {
            Self::Redb(db) => write(db, |table| {
                table
                    .insert(pull.name.as_str(), json.as_bytes())
                    .map_err(redb_error)?;
                Ok(())
            })?,
            Self::Postgres(pg) => {
                let mut conn = pg.conn()?;
                conn.execute(
                    "INSERT INTO catalog_pulls (name, record) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
                    &[&pull.name, &json],
                )
                .map_err(PgError::Query)?;
            }
        }
        Ok(())
    }

    /// Forget the pull recorded under `name`; returns it, if there was one.
    /// Cost: one durable write.
    pub fn remove(&self, name: &str) -> Result<Option<Pull>, CatalogError> {
        match self {
            Self::Redb(db) => write(db, |table| {
                let old = table.remove(name).map_err(redb_error)?;
                old.map(|v| parse(name, v.value())).transpose()
            }),
            Self::Postgres(pg) => {
                let mut conn = pg.conn()?;
                let row = conn
                    .query_opt(
                        "DELETE FROM catalog_pulls WHERE name = $1 RETURNING record",
                        &[&name],
                    )
                    .map_err(PgError::Query)?;
                row.map(|r| {
                    let record: String = r.try_get(0).map_err(PgError::Query)?;
                    parse(name, record.as_bytes())
                })
                .transpose()
            }
        }
    }
}

/// The daemon's side of the recorded pulls: the store, the
/// `[[daemon.capsules]]` entries a pull may shadow, and the pulls that
/// could not be resolved yet.
#[derive(Debug)]
pub struct Pulled {
    /// Where the pulls are recorded.
    pub store: Pulls,
    /// The config's capsules, by name (what a deleted pull returns to).
    pub configured: BTreeMap<String, CatalogItem>,
    /// Held while the catalog is compared with the records and changed,
    /// so a pull recorded by a request is never undone by a [`sync`] that
    /// read the records just before it.
    pub lock: Mutex<Failures>,
}

/// (name, digest) of recorded pulls that failed to resolve → when to try
/// again.
pub type Failures = HashMap<(String, String), Instant>;

impl Pulled {
    /// The pulls kept in `store`, over the config's `configured` capsules.
    pub fn new(store: Pulls, configured: BTreeMap<String, CatalogItem>) -> Self {
        Self {
            store,
            configured,
            lock: Mutex::new(HashMap::new()),
        }
    }
}

/// What [`sync`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Names now serving a recorded pull they did not serve before.
    pub installed: Vec<String>,
    /// Names whose pull was removed: back to the config's entry, or gone.
    pub reverted: Vec<String>,
    /// Recorded pulls that could not be resolved (retried after [`RETRY`]).
    pub failed: Vec<String>,
}

/// Make `daemon`'s catalog agree with the recorded pulls (see the module
/// doc). Cost: one read of the records; for each pull this daemon does not
/// serve yet, a resolve (a blob-cache read and a load, or a registry pull).
pub fn sync(daemon: &Daemon) -> Result<Synced, CatalogError> {
    let pulled = &daemon.pulled;
    let mut failures = pulled.lock.lock().unwrap_or_else(|p| p.into_inner());
    let records = pulled.store.list()?;
    let mut synced = Synced::default();
    let now = Instant::now();
    failures.retain(|(name, digest), _| records.get(name).is_some_and(|p| &p.digest == digest));
    for pull in records.values() {
        let serving = daemon
            .capsule(&pull.name)
            .is_some_and(|item| item.capsule.digest().to_string() == pull.digest);
        if serving {
            continue;
        }
        let key = (pull.name.clone(), pull.digest.clone());
        if failures.get(&key).is_some_and(|&at| now < at) {
            continue;
        }
        match resolve(daemon, pull) {
            Ok(item) => {
                failures.remove(&key);
                if pulled.configured.contains_key(&pull.name) {
                    tracing::info!(
                        "capsule `{}`: serving the pull of {} (recorded by tenant `{}`) over its [[daemon.capsules]] entry; DELETE /v1/capsules/{} returns to the entry",
                        pull.name,
                        pull.origin,
                        pull.pulled_by,
                        pull.name
                    );
                }
                daemon.install(&pull.name, item);
                synced.installed.push(pull.name.clone());
            }
            Err(reason) => {
                tracing::warn!(
                    "capsule `{}`: cannot serve its recorded pull of {} (tried again in {}s): {reason}",
                    pull.name,
                    pull.origin,
                    RETRY.as_secs()
                );
                failures.insert(key, now + RETRY);
                synced.failed.push(pull.name.clone());
            }
        }
    }
    // Names serving something neither recorded nor configured: a pull
    // deleted (here or by another daemon).
    let serving: Vec<(String, String)> = daemon
        .catalog
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(name, item)| (name.clone(), item.capsule.digest().to_string()))
        .collect();
    for (name, digest) in serving {
        if records.contains_key(&name) {
            continue;
        }
        match pulled.configured.get(&name) {
            Some(entry) if entry.capsule.digest().to_string() == digest => {}
            Some(entry) => {
                daemon.install(&name, entry.clone());
                synced.reverted.push(name);
            }
            None => {
                daemon.uninstall(&name);
                synced.reverted.push(name);
            }
        }
    }
    Ok(synced)
}

/// Resolve `pull`'s pinned reference (blob cache, else the registry
/// through this node's trust policy) and check it is the recorded
/// component.
fn resolve(daemon: &Daemon, pull: &Pull) -> Result<CatalogItem, String> {
    let reference = Reference::parse(&pull.origin).map_err(|e| e.to_string())?;
    let resolved = daemon
        .resolve(&CapsuleRef::Oci(reference))
        .map_err(|e| super::error_chain(&e))?;
    let digest = resolved.capsule.digest().to_string();
    if digest != pull.digest {
        return Err(format!(
            "the reference now gives component {digest}, not the recorded {}",
            pull.digest
        ));
    }
    Ok(CatalogItem {
        capsule: resolved.capsule,
        origin: resolved.pinned.to_string(),
    })
}

/// Record a pull and serve it (under the sync lock: see [`Pulled::lock`]).
/// Returns the digest it replaced, if another. Cost: one durable write.
pub fn record(
    daemon: &Daemon,
    pull: &Pull,
    item: CatalogItem,
) -> Result<Option<String>, CatalogError> {
    let _held = daemon.pulled.lock.lock().unwrap_or_else(|p| p.into_inner());
    daemon.pulled.store.save(pull)?;
    Ok(daemon.install(&pull.name, item))
}

/// What deleting a pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// No pull is recorded under the name.
    NotPulled {
        /// Whether the name is a `[[daemon.capsules]]` entry (which only
        /// the config can remove).
        configured: bool,
    },
    /// The pull is forgotten; the name serves `now` (the config's entry's
    /// digest) or nothing.
    Forgotten {
        /// The record removed.
        pull: Pull,
        /// The digest the name serves now, if any.
        now: Option<String>,
    },
}

/// Forget the pull recorded under `name` and stop serving it (every daemon
/// of a fleet does within [`REFRESH`]). Cost: one durable write.
pub fn remove(daemon: &Daemon, name: &str) -> Result<Removed, CatalogError> {
    let _held = daemon.pulled.lock.lock().unwrap_or_else(|p| p.into_inner());
    let Some(pull) = daemon.pulled.store.remove(name)? else {
        return Ok(Removed::NotPulled {
            configured: daemon.pulled.configured.contains_key(name),
        });
    };
    let now = match daemon.pulled.configured.get(name) {
        Some(entry) => {
            daemon.install(name, entry.clone());
            Some(entry.capsule.digest().to_string())
        }
        None => {
            daemon.uninstall(name);
            None
        }
    };
    Ok(Removed::Forgotten { pull, now })
}

/// Run [`sync`] every [`REFRESH`] while `daemon` lives (errors are logged;
/// the catalog stays as it was).
pub fn spawn_refresh(daemon: Weak<Daemon>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("soma-catalog-refresh".into())
        .spawn(move || {
            loop {
                std::thread::sleep(REFRESH);
                let Some(daemon) = daemon.upgrade() else {
                    return;
                };
                if let Err(e) = sync(&daemon) {
                    tracing::warn!(
                        "cannot read the catalog's recorded pulls (the catalog stays as it is): {}",
                        soma_host_api::error_chain(&e)
                    );
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull(name: &str, digest: &str) -> Pull {
        Pull {
            name: name.into(),
            origin: format!("reg.example/acme/{name}@sha256:{}", "a".repeat(64)),
            digest: digest.into(),
            pulled_ms: 1,
            pulled_by: "ops".into(),
        }
    }

    #[test]
    fn pulls_on_redb_are_saved_replaced_listed_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(LazyDatabase::new(dir.path().join("soma.redb")));
        let store = Pulls::Redb(db.clone());
        assert!(store.list().expect("empty").is_empty());
        store.save(&pull("echo", "sha256:1")).expect("save");
        store.save(&pull("calc", "sha256:2")).expect("save");
        store.save(&pull("echo", "sha256:3")).expect("replace");
        // Another handle on the same file sees them (they are durable).
        let again = Pulls::Redb(db);
        let all = again.list().expect("list");
        assert_eq!(all.keys().collect::<Vec<_>>(), ["calc", "echo"]);
        assert_eq!(all["echo"].digest, "sha256:3");
        assert_eq!(
            again.remove("echo").expect("remove").map(|p| p.digest),
            Some("sha256:3".into())
        );
        assert_eq!(again.remove("echo").expect("again"), None);
        assert_eq!(again.list().expect("list").len(), 1);
    }
}
