//! API tokens on the shared PostgreSQL store: the records
//! ([`TokenRecord`], hash only, never the secret) every daemon of a fleet
//! checks requests against. [`super::Tokens`] keeps them in
//! memory for its per-request check and, on this store, reloads them from
//! here (a token created or revoked on one daemon is seen by the others on
//! their next refresh).

use super::TokenRecord;
use crate::store::postgres::{PgError, PgStore};

/// The token table of a [`PgStore`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgTokens {
    store: PgStore,
}

fn record_of(id: &str, json: &str) -> Result<TokenRecord, PgError> {
    serde_json::from_str(json).map_err(|e| PgError::Corrupt {
        what: format!("token {id}"),
        reason: e.to_string(),
    })
}

impl PgTokens {
    /// The tokens of `store`.
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }

    /// Every stored token. Cost: one query.
    pub fn list(&self) -> Result<Vec<TokenRecord>, PgError> {
        let mut conn = self.store.conn()?;
        let rows = conn.query("SELECT id, record FROM api_tokens ORDER BY id", &[])?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                let json: String = r.try_get(1)?;
                record_of(&id, &json)
            })
            .collect()
    }

    /// The token `id`, if stored. Cost: one primary-key lookup.
    pub fn get(&self, id: &str) -> Result<Option<TokenRecord>, PgError> {
        let mut conn = self.store.conn()?;
        let row = conn.query_opt("SELECT record FROM api_tokens WHERE id = $1", &[&id])?;
        row.map(|r| {
            let json: String = r.try_get(0)?;
            record_of(id, &json)
        })
        .transpose()
    }

    /// Store (insert or replace) `record`. Cost: one durable write.
    pub fn save(&self, record: &TokenRecord) -> Result<(), PgError> {
        let json = serde_json::to_string(record).map_err(|e| PgError::Corrupt {
            what: format!("token {}", record.id),
            reason: e.to_string(),
        })?;
        let mut conn = self.store.conn()?;
        conn.execute(
            "INSERT INTO api_tokens (id, tenant, record) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET tenant = EXCLUDED.tenant, record = EXCLUDED.record",
            &[&record.id, &record.tenant, &json],
        )?;
        Ok(())
    }
}
