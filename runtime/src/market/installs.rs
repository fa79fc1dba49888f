//! Per-tenant installs: the daemon's equivalent of `soma.lock`, one pin
//! table shared by every tenant of a node and keyed by tenant, so a pin
//! made by one tenant never resolves for another.
//!
//! ```text
//! market_installs   "<tenant>\0<author/name>" → TenantPin (JSON: the Pin, when)
//! ```
//!
//! Written by `POST /v1/market/installs` (after the version was pulled and
//! both signatures verified), read by the daemon's resolve stage for
//! `market:` names in that tenant's runs. Each write is one durable redb
//! transaction.

use std::sync::Arc;

use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use soma_host_api::storage::LazyDatabase;

use super::{
    error::{MarketError, storage},
    lock::Pin,
    store::now_ms,
};

const INSTALLS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("market_installs");

/// The most capsules one tenant may have installed (a bound on what a
/// tenant can make the node store).
pub const MAX_PINS_PER_TENANT: usize = 1000;

/// One tenant's pin of one marketplace capsule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantPin {
    /// The tenant that installed it.
    pub tenant: String,
    /// `author/name`.
    pub name: String,
    /// The pinned version, digests and reference.
    pub pin: Pin,
    /// When it was pinned (Unix ms).
    pub installed_ms: u64,
}

/// The per-tenant pins of one node database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Installs {
    db: Arc<LazyDatabase>,
}

fn key(tenant: &str, name: &str) -> String {
    format!("{tenant}\0{name}")
}

fn decode(key: &str, bytes: &[u8]) -> Result<TenantPin, MarketError> {
    serde_json::from_slice(bytes).map_err(|e| MarketError::Corrupt {
        key: key.replace('\0', "/"),
        message: e.to_string(),
    })
}

impl Installs {
    /// The pins in `db`; nothing is opened until used.
    pub fn new(db: Arc<LazyDatabase>) -> Self {
        Self { db }
    }

    /// Pin `name` to `pin` for `tenant`, replacing its earlier pin (returned).
    /// Refused past [`MAX_PINS_PER_TENANT`] distinct names. Cost: one
    /// durable write transaction and a scan of the tenant's pins.
    pub fn pin(
        &self,
        tenant: &str,
        name: &str,
        pin: Pin,
    ) -> Result<Option<TenantPin>, MarketError> {
        let db = self.db.get()?;
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        let previous = {
            let mut table = txn.open_table(INSTALLS).map_err(storage)?;
            let k = key(tenant, name);
            let previous = match table.get(k.as_str()).map_err(storage)? {
                Some(v) => Some(decode(&k, v.value())?),
                None => None,
            };
            if previous.is_none() {
                let prefix = key(tenant, "");
                let mut count = 0;
                for row in table.range(prefix.as_str()..).map_err(storage)? {
                    let (k, _) = row.map_err(storage)?;
                    if !k.value().starts_with(prefix.as_str()) {
                        break;
                    }
                    count += 1;
                }
                if count >= MAX_PINS_PER_TENANT {
                    return Err(MarketError::TooManyPins {
                        max: MAX_PINS_PER_TENANT,
                    });
                }
            }
            let record = TenantPin {
                tenant: tenant.to_owned(),
                name: name.to_owned(),
                pin,
                installed_ms: now_ms(),
            };
            let bytes = serde_json::to_vec(&record).map_err(storage)?;
            table
                .insert(k.as_str(), bytes.as_slice())
                .map_err(storage)?;
            previous
        };
        txn.commit().map_err(storage)?;
        Ok(previous)
    }

    /// `tenant`'s pin of `name`, if it installed it. Cost: one read transaction.
    pub fn get(&self, tenant: &str, name: &str) -> Result<Option<TenantPin>, MarketError> {
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = match txn.open_table(INSTALLS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(storage(e)),
        };
        let k = key(tenant, name);
        match table.get(k.as_str()).map_err(storage)? {
            Some(v) => Ok(Some(decode(&k, v.value())?)),
            None => Ok(None),
        }
    }

    /// Every pin of `tenant`, by name. Cost: one read transaction, a
    /// range scan of that tenant's pins only.
    pub fn list(&self, tenant: &str) -> Result<Vec<TenantPin>, MarketError> {
        let db = self.db.get()?;
        let txn = db.begin_read().map_err(storage)?;
        let table = match txn.open_table(INSTALLS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(storage(e)),
        };
        let prefix = key(tenant, "");
        let mut out = Vec::new();
        for row in table.range(prefix.as_str()..).map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            if !k.value().starts_with(prefix.as_str()) {
                break;
            }
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Remove `tenant`'s pin of `name`; returns it, or `None` if that
    /// tenant had none. Cost: one durable write transaction.
    pub fn remove(&self, tenant: &str, name: &str) -> Result<Option<TenantPin>, MarketError> {
        let db = self.db.get()?;
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        let removed = {
            let mut table = txn.open_table(INSTALLS).map_err(storage)?;
            let k = key(tenant, name);
            let removed = table.remove(k.as_str()).map_err(storage)?;
            match removed {
                Some(v) => Some(decode(&k, v.value())?),
                None => None,
            }
        };
        txn.commit().map_err(storage)?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    fn pin(v: &str) -> Pin {
        Pin {
            range: "^1".into(),
            version: v.into(),
            digest: Digest::of(v.as_bytes()),
            component: Digest::of(b"c"),
            reference: "r/acme/calc@sha256:0".into(),
        }
    }

    #[test]
    fn pins_belong_to_one_tenant() {
        let dir = tempfile::tempdir().expect("tempdir");
        let installs = Installs::new(Arc::new(LazyDatabase::new(dir.path().join("soma.redb"))));
        assert!(
            installs
                .pin("a", "acme/calc", pin("1.0.0"))
                .expect("pin")
                .is_none()
        );
        // A tenant whose name is a prefix of another's sees none of its pins.
        installs
            .pin("ab", "acme/other", pin("1.0.0"))
            .expect("pin ab");
        assert_eq!(installs.list("a").expect("list").len(), 1);
        assert!(installs.get("b", "acme/calc").expect("get").is_none());
        assert!(installs.remove("b", "acme/calc").expect("remove").is_none());
        assert!(installs.get("a", "acme/calc").expect("get").is_some());
        let previous = installs
            .pin("a", "acme/calc", pin("1.1.0"))
            .expect("re-pin");
        assert_eq!(previous.map(|p| p.pin.version), Some("1.0.0".to_owned()));
        assert_eq!(
            installs
                .remove("a", "acme/calc")
                .expect("remove")
                .map(|p| p.pin.version),
            Some("1.1.0".to_owned())
        );
        assert!(installs.list("a").expect("list").is_empty());
    }
}
