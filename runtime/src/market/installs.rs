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
//! `market:` names in that tenant's runs (on a fleet, every daemon's: the
//! table is on the shared store, see [`Records`]). Each write is one
//! durable transaction.

use serde::{Deserialize, Serialize};

use super::{
    error::{MarketError, storage},
    lock::Pin,
    records::{Records, Table},
    store::now_ms,
};

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

/// The per-tenant pins. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Installs {
    records: Records,
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
    /// The pins in `records` (a node database: nothing is opened until used).
    pub fn new(records: impl Into<Records>) -> Self {
        Self {
            records: records.into(),
        }
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
        self.records
            .write_with_events(Table::Installs, |table, events| {
                let k = key(tenant, name);
                let previous = table.get(&k)?.map(|v| decode(&k, &v)).transpose()?;
                if previous.is_none() {
                    let mut count = 0;
                    table.scan(&key(tenant, ""), &mut |_, _| {
                        count += 1;
                        Ok(count < MAX_PINS_PER_TENANT)
                    })?;
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
                // One `market-install` per (tenant, capsule, version, time):
                // re-installing the same version later is a new install.
                events.push(crate::analytics::Event::new(
                    &format!(
                        "{tenant}/{name}@{}/{}",
                        record.pin.version, record.installed_ms
                    ),
                    tenant,
                    record.installed_ms,
                    crate::analytics::Body::MarketInstall {
                        listing: name.to_owned(),
                        version: record.pin.version.clone(),
                        capsule_digest: record.pin.digest.to_string(),
                    },
                ));
                let bytes = serde_json::to_vec(&record).map_err(storage)?;
                table.put(&k, &bytes)?;
                Ok(previous)
            })
    }

    /// `tenant`'s pin of `name`, if it installed it. Cost: one read transaction.
    pub fn get(&self, tenant: &str, name: &str) -> Result<Option<TenantPin>, MarketError> {
        let k = key(tenant, name);
        self.records.read(Table::Installs, |table| {
            table.get(&k)?.map(|v| decode(&k, &v)).transpose()
        })
    }

    /// Every pin of `tenant`, by name. Cost: one read transaction, a
    /// range scan of that tenant's pins only.
    pub fn list(&self, tenant: &str) -> Result<Vec<TenantPin>, MarketError> {
        self.records.read(Table::Installs, |table| {
            let mut out = Vec::new();
            table.scan(&key(tenant, ""), &mut |k, v| {
                out.push(decode(k, v)?);
                Ok(true)
            })?;
            Ok(out)
        })
    }

    /// Remove `tenant`'s pin of `name`; returns it, or `None` if that
    /// tenant had none. Cost: one durable write transaction.
    pub fn remove(&self, tenant: &str, name: &str) -> Result<Option<TenantPin>, MarketError> {
        let k = key(tenant, name);
        self.records.write(Table::Installs, |table| {
            table.remove(&k)?.map(|v| decode(&k, &v)).transpose()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use soma_host_api::storage::LazyDatabase;

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
        let db = Arc::new(LazyDatabase::new(dir.path().join("soma.redb")));
        let installs = Installs::new(db.clone());
        assert!(
            installs
                .pin("a", "acme/calc", pin("1.0.0"))
                .expect("pin")
                .is_none()
        );
        // The install is an analytics event, written with the pin.
        let held = crate::analytics::outbox::pending_for(
            &db.get().expect("db"),
            crate::analytics::outbox::ROLLUP,
            10,
        )
        .expect("outbox");
        let events: Vec<crate::analytics::Event> = held
            .iter()
            .map(|h| serde_json::from_slice(&h.json).expect("event"))
            .collect();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].tenant, "a");
        assert!(
            events[0]
                .id
                .starts_with("market-install:a/acme/calc@1.0.0/")
        );
        assert_eq!(
            events[0].body,
            crate::analytics::Body::MarketInstall {
                listing: "acme/calc".into(),
                version: "1.0.0".into(),
                capsule_digest: Digest::of(b"1.0.0").to_string(),
            }
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
