//! `kv`: a redb-backed key-value store with two scopes — the capsule's own
//! namespace and the run's blackboard — and size quotas.
//!
//! Writes are transactional per call: they go to an in-memory overlay that
//! reads see, and [`State::commit`] writes the overlay in one redb
//! transaction when the call succeeded. A call that traps or fails leaves
//! nothing behind.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use wasmtime::component::{HasSelf, Linker};

use crate::{
    bindings::soma::capsule::kv::{self as wit, KvError, Scope},
    storage::LazyDatabase,
};

/// (namespace, key) → value.
const KV: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("kv");
/// namespace → bytes used (keys + values).
const KV_USAGE: TableDefinition<'_, &str, u64> = TableDefinition::new("kv_usage");

/// Operator settings (`[kv]` in `soma.toml`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Bytes (keys + values) one namespace may hold.
    pub max_namespace_bytes: u64,
    /// Most keys one `list-keys` returns.
    pub max_list_keys: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_key_bytes: 512,
            max_value_bytes: 1024 * 1024,
            max_namespace_bytes: 64 * 1024 * 1024,
            max_list_keys: 1000,
        }
    }
}

/// Which namespaces a call may use.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Namespace of `scope::capsule`, e.g. `capsule:<digest>`.
    pub capsule_namespace: String,
    /// Namespace of `scope::run`, e.g. `run:<run id>`; `None` denies the run scope.
    pub run_namespace: Option<String>,
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

/// Why committing a call's writes failed.
#[derive(Debug, thiserror::Error)]
#[error("could not commit kv writes: {0}")]
pub struct CommitError(String);

/// Per-call kv state: the grant and the write overlay.
#[derive(Debug)]
pub struct State {
    shared: Arc<Shared>,
    grant: Option<Grant>,
    /// Pending writes: `None` is a delete.
    overlay: BTreeMap<(String, String), Option<Vec<u8>>>,
    /// Net size change per namespace of the pending writes.
    deltas: HashMap<String, i64>,
    overlay_bytes: usize,
}

impl State {
    /// Fresh state for one call; `grant: None` denies kv.
    pub fn new(shared: Arc<Shared>, grant: Option<Grant>) -> Self {
        Self {
            shared,
            grant,
            overlay: BTreeMap::new(),
            deltas: HashMap::new(),
            overlay_bytes: 0,
        }
    }

    /// Whether the call wrote anything.
    pub fn is_dirty(&self) -> bool {
        !self.overlay.is_empty()
    }

    /// Make the call's writes durable in one transaction. Called once, after
    /// a successful call; a no-op (no disk access) when nothing was written.
    pub fn commit(&mut self) -> Result<(), CommitError> {
        if self.overlay.is_empty() {
            return Ok(());
        }
        let err = |e: &dyn std::fmt::Display| CommitError(e.to_string());
        let db = self.shared.db.get().map_err(|e| err(&e))?;
        let txn = db.begin_write().map_err(|e| err(&e))?;
        {
            let mut table = txn.open_table(KV).map_err(|e| err(&e))?;
            let mut usage = txn.open_table(KV_USAGE).map_err(|e| err(&e))?;
            let mut deltas: HashMap<&str, i64> = HashMap::new();
            for ((ns, key), value) in &self.overlay {
                let old = match value {
                    Some(v) => table.insert((ns.as_str(), key.as_str()), v.as_slice()),
                    None => table.remove((ns.as_str(), key.as_str())),
                }
                .map_err(|e| err(&e))?
                .map(|g| entry_size(key, g.value()) as i64)
                .unwrap_or(0);
                let new = value.as_ref().map_or(0, |v| entry_size(key, v) as i64);
                *deltas.entry(ns.as_str()).or_default() += new - old;
            }
            for (ns, delta) in deltas {
                let current = usage.get(ns).map_err(|e| err(&e))?.map_or(0, |g| g.value());
                let next = current.saturating_add_signed(delta);
                if next == 0 {
                    usage.remove(ns).map_err(|e| err(&e))?;
                } else {
                    usage.insert(ns, next).map_err(|e| err(&e))?;
                }
            }
        }
        txn.commit().map_err(|e| err(&e))?;
        self.overlay.clear();
        self.deltas.clear();
        self.overlay_bytes = 0;
        Ok(())
    }

    fn namespace(&self, scope: Scope) -> Result<String, KvError> {
        let grant = self.grant.as_ref().ok_or_else(|| {
            KvError::Denied(
                "this capsule was not granted kv; ask for it in describe() (wants_kv)".into(),
            )
        })?;
        match scope {
            Scope::Capsule => Ok(grant.capsule_namespace.clone()),
            Scope::Run => grant
                .run_namespace
                .clone()
                .ok_or_else(|| KvError::Denied("this call has no run blackboard".into())),
        }
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        let max = self.shared.config.max_key_bytes;
        if key.len() > max {
            return Err(KvError::QuotaExceeded(format!(
                "key is {} bytes; the limit is {max}",
                key.len()
            )));
        }
        Ok(())
    }

    fn db_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let db = self.shared.db.get().map_err(unavailable)?;
        let txn = db.begin_read().map_err(unavailable)?;
        let table = match txn.open_table(KV) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        Ok(table
            .get((ns, key))
            .map_err(unavailable)?
            .map(|g| g.value().to_vec()))
    }

    fn db_usage(&self, ns: &str) -> Result<u64, KvError> {
        let db = self.shared.db.get().map_err(unavailable)?;
        let txn = db.begin_read().map_err(unavailable)?;
        let table = match txn.open_table(KV_USAGE) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(unavailable(e)),
        };
        Ok(table.get(ns).map_err(unavailable)?.map_or(0, |g| g.value()))
    }

    fn current(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match self.overlay.get(&(ns.to_owned(), key.to_owned())) {
            Some(pending) => Ok(pending.clone()),
            None => self.db_get(ns, key),
        }
    }

    fn write(&mut self, ns: String, key: String, value: Option<Vec<u8>>) -> Result<bool, KvError> {
        let old = self.current(&ns, &key)?;
        let old_size = old.as_ref().map_or(0, |v| entry_size(&key, v)) as i64;
        let new_size = value.as_ref().map_or(0, |v| entry_size(&key, v)) as i64;
        let delta = self.deltas.get(&ns).copied().unwrap_or(0) + new_size - old_size;
        let limit = self.shared.config.max_namespace_bytes;
        if new_size > old_size {
            let used = self.db_usage(&ns)?.saturating_add_signed(delta);
            if used > limit {
                return Err(KvError::QuotaExceeded(format!(
                    "namespace would hold {used} bytes; the limit is {limit}"
                )));
            }
            let pending = self.overlay_bytes + new_size as usize;
            if pending as u64 > limit {
                return Err(KvError::QuotaExceeded(format!(
                    "this call has {pending} bytes of pending writes; the limit is {limit}"
                )));
            }
            self.overlay_bytes = pending;
        }
        self.deltas.insert(ns.clone(), delta);
        self.overlay.insert((ns, key), value);
        Ok(old.is_some())
    }
}

fn entry_size(key: &str, value: &[u8]) -> usize {
    key.len() + value.len()
}

fn unavailable(e: impl std::fmt::Display) -> KvError {
    KvError::Unavailable(e.to_string())
}

/// Store data that hands out the per-call kv state.
pub trait KvView {
    /// The call's kv state.
    fn kv_state(&mut self) -> &mut State;
}

/// Wire `soma:capsule/kv` into `linker`. Once per engine.
pub fn add_to_linker<T: KvView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<State>>(linker, |t| t.kv_state())
}

impl wit::Host for State {
    fn get(&mut self, scope: Scope, key: String) -> Result<Option<Vec<u8>>, KvError> {
        let ns = self.namespace(scope)?;
        self.check_key(&key)?;
        self.current(&ns, &key)
    }

    fn set(&mut self, scope: Scope, key: String, value: Vec<u8>) -> Result<(), KvError> {
        let ns = self.namespace(scope)?;
        self.check_key(&key)?;
        let max = self.shared.config.max_value_bytes;
        if value.len() > max {
            return Err(KvError::QuotaExceeded(format!(
                "value is {} bytes; the limit is {max}",
                value.len()
            )));
        }
        self.write(ns, key, Some(value)).map(drop)
    }

    fn delete(&mut self, scope: Scope, key: String) -> Result<bool, KvError> {
        let ns = self.namespace(scope)?;
        self.check_key(&key)?;
        self.write(ns, key, None)
    }

    fn list_keys(
        &mut self,
        scope: Scope,
        prefix: String,
        limit: u32,
    ) -> Result<Vec<String>, KvError> {
        let ns = self.namespace(scope)?;
        self.check_key(&prefix)?;
        let limit = limit.min(self.shared.config.max_list_keys) as usize;
        let pending: Vec<(&String, bool)> = self
            .overlay
            .range((ns.clone(), prefix.clone())..)
            .take_while(|((n, k), _)| *n == ns && k.starts_with(&prefix))
            .map(|((_, k), v)| (k, v.is_some()))
            .collect();
        let mut keys = BTreeSet::new();
        let db = self.shared.db.get().map_err(unavailable)?;
        let txn = db.begin_read().map_err(unavailable)?;
        match txn.open_table(KV) {
            Ok(table) => {
                // Deleted keys may hide some stored ones: read enough to still fill `limit`.
                let want = limit + pending.len();
                for item in table
                    .range((ns.as_str(), prefix.as_str())..)
                    .map_err(unavailable)?
                {
                    let (k, _) = item.map_err(unavailable)?;
                    let (n, key) = k.value();
                    if n != ns || !key.starts_with(&prefix) || keys.len() >= want {
                        break;
                    }
                    keys.insert(key.to_owned());
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(unavailable(e)),
        }
        for (key, present) in pending {
            if present {
                keys.insert(key.clone());
            } else {
                keys.remove(key);
            }
        }
        Ok(keys.into_iter().take(limit).collect())
    }
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
            capsule_namespace: "capsule:a".into(),
            run_namespace: Some("run:1".into()),
        })
    }

    #[test]
    fn writes_are_visible_in_call_and_durable_only_after_commit() {
        let (_dir, shared) = setup(Config::default());
        let mut st = State::new(shared.clone(), grant());
        st.set(Scope::Capsule, "k".into(), b"v".to_vec())
            .expect("set");
        assert_eq!(
            st.get(Scope::Capsule, "k".into()).expect("get"),
            Some(b"v".to_vec())
        );
        drop(st); // a failed call: nothing committed
        let mut st = State::new(shared.clone(), grant());
        assert_eq!(st.get(Scope::Capsule, "k".into()).expect("get"), None);
        st.set(Scope::Capsule, "k".into(), b"v".to_vec())
            .expect("set");
        st.commit().expect("commit");
        let mut st = State::new(shared, grant());
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
        let mut st = State::new(shared, None);
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
            max_list_keys: 10,
        });
        let mut st = State::new(shared.clone(), grant());
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
        let mut st = State::new(shared.clone(), grant());
        assert!(matches!(
            st.set(Scope::Capsule, "c".into(), vec![0; 8]),
            Err(KvError::QuotaExceeded(_))
        ));
        // Replacing a value with a smaller one, or deleting, is always allowed.
        assert!(st.delete(Scope::Capsule, "a".into()).expect("delete"));
        st.set(Scope::Capsule, "c".into(), vec![0; 8])
            .expect("fits after delete");
        st.commit().expect("commit");
        let mut st = State::new(shared, grant());
        assert_eq!(st.db_usage("capsule:a").expect("usage"), 18);
        assert_eq!(
            st.list_keys(Scope::Capsule, String::new(), 10)
                .expect("list"),
            vec!["b".to_owned(), "c".to_owned()]
        );
    }

    #[test]
    fn list_keys_merges_pending_writes() {
        let (_dir, shared) = setup(Config::default());
        let mut st = State::new(shared.clone(), grant());
        for k in ["p1", "p2", "q1"] {
            st.set(Scope::Capsule, k.into(), b"x".to_vec())
                .expect("set");
        }
        st.commit().expect("commit");
        let mut st = State::new(shared, grant());
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
}
