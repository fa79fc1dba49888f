//! Payloads by reference (the "claim check" pattern) through the shared
//! PostgreSQL store: a [`PayloadCodec`] that every Temporal client and
//! worker of a fleet installs when `[store] backend = "postgres"`.
//!
//! Temporal refuses a payload over 2 MB and a history over 50 MB. A run's
//! large values — a node's output, the run's input and spec, its report,
//! the events a long run carries into its next execution — would hit those
//! limits. With [`Offload`], a payload larger than `[orchestrator]
//! payload_offload_bytes` (default 128 KiB) is written to the table
//! `temporal_payloads` under the SHA-256 of its content, and Temporal
//! stores a small reference in its place (encoding `soma/payload-ref`).
//! Whoever reads it back (a worker replaying the workflow, the daemon
//! asking for a report) fetches it by digest and checks the digest before
//! using it. The workflow's code sees the whole values: nothing in the DAG
//! fold changes.
//!
//! Writes are idempotent (content-addressed: the same payload is one row,
//! whoever writes it, however often). Every read or write marks the row as
//! used; rows unused for `[orchestrator] payload_retention_hours` (default
//! 7 days, longer than the dev server's workflow retention) are deleted by
//! whichever process writes next, at most once an hour per process.
//!
//! Every process that starts, serves or reads runs must share the store:
//! a worker without it cannot decode a reference (its workflow task fails
//! and Temporal retries it until a worker with the store takes it).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{FutureExt as _, future::BoxFuture};
use sha2::{Digest as _, Sha256};
use temporalio_common::{
    data_converters::{
        DataConverter, DefaultFailureConverter, PayloadCodec, PayloadConversionError,
        PayloadConverter, SerializationContextData,
    },
    protos::temporal::api::common::v1::Payload,
};

use crate::store::postgres::{PgError, PgStore};

/// The `encoding` of a reference payload.
pub const REF_ENCODING: &[u8] = b"soma/payload-ref";

/// How often one process deletes rows past their retention, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(3_600);

/// Offloads large payloads to the shared store. Cheap to clone.
#[derive(Clone)]
pub struct Offload {
    store: PgStore,
    threshold: usize,
    retention_ms: u64,
    last_sweep: Arc<Mutex<Option<Instant>>>,
}

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offload")
            .field("threshold", &self.threshold)
            .field("retention_ms", &self.retention_ms)
            .finish_non_exhaustive()
    }
}

/// Why a payload could not be offloaded or fetched.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    /// The store failed (retryable when it says so).
    #[error("the shared payload store")]
    Store(#[from] PgError),
    /// A reference names a payload the store does not hold.
    #[error(
        "payload sha256:{0} is not in the shared store (deleted after [orchestrator] \
         payload_retention_hours unused, or this process uses another [store])"
    )]
    Missing(String),
    /// A reference or a stored row is not what was written.
    #[error("payload reference is corrupt: {0}")]
    Corrupt(String),
}

/// What a reference payload's data holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Reference {
    /// SHA-256 (hex) of the stored metadata and data.
    digest: String,
    /// The stored data's size, bytes (for people reading the history).
    bytes: usize,
}

fn size(p: &Payload) -> usize {
    p.data.len()
        + p.metadata
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

fn is_reference(p: &Payload) -> bool {
    p.metadata.get("encoding").map(Vec::as_slice) == Some(REF_ENCODING)
}

/// The stored form of a payload's metadata (sorted, so one payload has
/// one digest).
fn metadata_bytes(p: &Payload) -> Vec<u8> {
    let sorted: BTreeMap<&String, &Vec<u8>> = p.metadata.iter().collect();
    serde_json::to_vec(&sorted).unwrap_or_default()
}

fn digest(metadata: &[u8], data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update((metadata.len() as u64).to_le_bytes());
    h.update(metadata);
    h.update(data);
    hex::encode(h.finalize())
}

fn conversion(e: impl std::error::Error + Send + Sync + 'static) -> PayloadConversionError {
    PayloadConversionError::EncodingError(Box::new(e))
}

impl Offload {
    /// Offload payloads above `threshold` bytes to `store`; rows unused
    /// for `retention_hours` are deleted.
    pub fn new(store: PgStore, threshold: usize, retention_hours: u32) -> Self {
        Self {
            store,
            threshold,
            retention_ms: u64::from(retention_hours) * 3_600_000,
            last_sweep: Arc::new(Mutex::new(None)),
        }
    }

    /// The data converter clients and workers use: Temporal's JSON
    /// payloads and failures, with this codec.
    pub fn data_converter(&self) -> DataConverter {
        DataConverter::new(
            PayloadConverter::default(),
            DefaultFailureConverter::default(),
            self.clone(),
        )
    }

    /// Store `p`; its reference. Cost: one upsert.
    fn put(&self, p: &Payload) -> Result<Payload, OffloadError> {
        let metadata = metadata_bytes(p);
        let digest = digest(&metadata, &p.data);
        let now = i64::try_from(soma_host_api::meter::now_ms()).unwrap_or(i64::MAX);
        let mut conn = self.store.conn()?;
        conn.execute(
            "INSERT INTO temporal_payloads (digest, metadata, data, used_ms) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (digest) DO UPDATE SET used_ms = EXCLUDED.used_ms",
            &[&digest, &metadata, &p.data, &now],
        )
        .map_err(PgError::Query)?;
        drop(conn);
        self.sweep(now);
        let reference = Reference {
            digest,
            bytes: p.data.len(),
        };
        Ok(Payload {
            metadata: [("encoding".to_owned(), REF_ENCODING.to_vec())].into(),
            data: serde_json::to_vec(&reference)
                .map_err(|e| OffloadError::Corrupt(e.to_string()))?,
            ..Payload::default()
        })
    }

    /// The payload reference `r` names, checked against its digest. Cost:
    /// one update of the row (marking it used) returning it.
    fn get(&self, r: &Payload) -> Result<Payload, OffloadError> {
        let reference: Reference =
            serde_json::from_slice(&r.data).map_err(|e| OffloadError::Corrupt(e.to_string()))?;
        let now = i64::try_from(soma_host_api::meter::now_ms()).unwrap_or(i64::MAX);
        let mut conn = self.store.conn()?;
        let row = conn
            .query_opt(
                "UPDATE temporal_payloads SET used_ms = $2 WHERE digest = $1 \
                 RETURNING metadata, data",
                &[&reference.digest, &now],
            )
            .map_err(PgError::Query)?
            .ok_or_else(|| OffloadError::Missing(reference.digest.clone()))?;
        let metadata: Vec<u8> = row.try_get(0).map_err(PgError::Query)?;
        let data: Vec<u8> = row.try_get(1).map_err(PgError::Query)?;
        if digest(&metadata, &data) != reference.digest {
            return Err(OffloadError::Corrupt(format!(
                "the stored payload sha256:{} does not hash to its name",
                reference.digest
            )));
        }
        let metadata: BTreeMap<String, Vec<u8>> =
            serde_json::from_slice(&metadata).map_err(|e| OffloadError::Corrupt(e.to_string()))?;
        Ok(Payload {
            metadata: metadata.into_iter().collect(),
            data,
            ..Payload::default()
        })
    }

    /// Delete rows unused past the retention (at most once per
    /// [`SWEEP_EVERY`] per process; a failure is logged and tried again
    /// at the next write after the interval).
    fn sweep(&self, now: i64) {
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let before = now.saturating_sub(i64::try_from(self.retention_ms).unwrap_or(i64::MAX));
        let deleted = self.store.conn().and_then(|mut c| {
            c.execute(
                "DELETE FROM temporal_payloads WHERE used_ms < $1",
                &[&before],
            )
            .map_err(PgError::Query)
        });
        match deleted {
            Ok(0) => {}
            Ok(n) => tracing::info!("deleted {n} Temporal payload(s) unused past their retention"),
            Err(e) => tracing::warn!(
                "could not delete old Temporal payloads: {}",
                soma_host_api::error_chain(&e)
            ),
        }
    }

    /// Run `f` over `payloads` on the blocking pool (the store's driver is
    /// synchronous) when any of them needs it.
    fn each(
        &self,
        payloads: Vec<Payload>,
        needs: fn(&Self, &Payload) -> bool,
        f: fn(&Self, &Payload) -> Result<Payload, OffloadError>,
    ) -> BoxFuture<'static, Result<Vec<Payload>, PayloadConversionError>> {
        let this = self.clone();
        async move {
            if !payloads.iter().any(|p| needs(&this, p)) {
                return Ok(payloads);
            }
            tokio::task::spawn_blocking(move || {
                payloads
                    .into_iter()
                    .map(|p| {
                        if needs(&this, &p) {
                            f(&this, &p).map_err(conversion)
                        } else {
                            Ok(p)
                        }
                    })
                    .collect()
            })
            .await
            .map_err(conversion)?
        }
        .boxed()
    }
}

impl PayloadCodec for Offload {
    fn encode(
        &self,
        _context: &SerializationContextData,
        payloads: Vec<Payload>,
    ) -> BoxFuture<'static, Result<Vec<Payload>, PayloadConversionError>> {
        self.each(
            payloads,
            |this, p| size(p) > this.threshold && !is_reference(p),
            Self::put,
        )
    }

    fn decode(
        &self,
        _context: &SerializationContextData,
        payloads: Vec<Payload>,
    ) -> BoxFuture<'static, Result<Vec<Payload>, PayloadConversionError>> {
        self.each(payloads, |_, p| is_reference(p), Self::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_payload_has_one_digest_whatever_its_metadata_order() {
        let mut a = Payload {
            data: b"{\"x\":1}".to_vec(),
            ..Payload::default()
        };
        a.metadata.insert("encoding".into(), b"json/plain".to_vec());
        a.metadata.insert("other".into(), b"1".to_vec());
        let mut b = a.clone();
        b.metadata.clear();
        b.metadata.insert("other".into(), b"1".to_vec());
        b.metadata.insert("encoding".into(), b"json/plain".to_vec());
        let d = |p: &Payload| digest(&metadata_bytes(p), &p.data);
        assert_eq!(d(&a), d(&b));
        b.data.push(b' ');
        assert_ne!(d(&a), d(&b), "the data is part of the name");
        assert!(!is_reference(&a));
        assert_eq!(size(&a), 7 + 8 + 10 + 5 + 1);
    }

    /// Against a real PostgreSQL: a large payload becomes a small
    /// reference and comes back whole; small ones are left alone; the same
    /// payload twice is one row; a row whose content no longer hashes to
    /// its name, or that is gone, is refused with an error saying so; rows
    /// unused past the retention are deleted by the next writer.
    #[test]
    fn large_payloads_round_trip_by_digest_and_tampered_or_missing_rows_are_refused() {
        use temporalio_common::data_converters::WorkflowSerializationContext;
        let pg = soma_tests::postgres::Postgres::start();
        let config = crate::store::StoreConfig {
            backend: crate::store::Backend::Postgres,
            url: Some(pg.create_database()),
            ..crate::store::StoreConfig::default()
        };
        let store = PgStore::open(&config).expect("store");
        let offload = Offload::new(store.clone(), 1_024, 1);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let ctx = SerializationContextData::Workflow(WorkflowSerializationContext::new());
        let payload = |data: Vec<u8>| Payload {
            metadata: [("encoding".to_owned(), b"json/plain".to_vec())].into(),
            data,
            ..Payload::default()
        };
        let (small, big) = (payload(b"\"small\"".to_vec()), payload(vec![b'x'; 10_000]));
        let encoded = rt
            .block_on(offload.encode(&ctx, vec![small.clone(), big.clone()]))
            .expect("encode");
        assert_eq!(encoded[0], small, "small payloads stay inline");
        assert!(is_reference(&encoded[1]) && encoded[1].data.len() < 200);
        let decoded = rt
            .block_on(offload.decode(&ctx, encoded.clone()))
            .expect("decode");
        assert_eq!(decoded, [small, big.clone()]);
        rt.block_on(offload.encode(&ctx, vec![big])).expect("again");
        let rows = |store: &PgStore| -> i64 {
            let mut conn = store.conn().expect("conn");
            conn.query_one("SELECT count(*) FROM temporal_payloads", &[])
                .expect("count")
                .get(0)
        };
        assert_eq!(rows(&store), 1, "content-addressed: one row");

        let mut conn = store.conn().expect("conn");
        conn.execute(
            "UPDATE temporal_payloads SET data = $1",
            &[&vec![b'y'; 10_000]],
        )
        .expect("tamper");
        drop(conn);
        let refused = rt
            .block_on(offload.decode(&ctx, vec![encoded[1].clone()]))
            .expect_err("a tampered row");
        assert!(refused.to_string().contains("does not hash"), "{refused}");

        // Unused past the retention (1 h): the next writer (a process that
        // has not swept yet) deletes it; then its reference is refused.
        let mut conn = store.conn().expect("conn");
        conn.execute("UPDATE temporal_payloads SET used_ms = 0", &[])
            .expect("age");
        drop(conn);
        let fresh = Offload::new(store.clone(), 1_024, 1);
        rt.block_on(fresh.encode(&ctx, vec![payload(vec![b'z'; 5_000])]))
            .expect("another");
        assert_eq!(rows(&store), 1, "the old row is gone, the new one stays");
        let gone = rt
            .block_on(offload.decode(&ctx, vec![encoded[1].clone()]))
            .expect_err("a deleted row");
        assert!(
            gone.to_string().contains("not in the shared store"),
            "{gone}"
        );
    }
}
