//! The content-addressed blob cache: verified layers under
//! `<data>/blobs/sha256/<hex>`, indexed in the node database.
//!
//! Two redb tables: `blobs` (layer digest → [`BlobRecord`] JSON) and
//! `blob_manifests` (manifest digest → [`ManifestRecord`] JSON), so a pull by
//! digest can be served without the network.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::error::OciError;
use crate::{digest::Digest, store::DataDir, verify::Admission};

/// Layer digest (`sha256:<hex>`) → [`BlobRecord`] as JSON.
const BLOBS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("blobs");
/// Manifest digest → [`ManifestRecord`] as JSON.
const MANIFESTS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("blob_manifests");

/// Temp files older than this are garbage (a pull in flight is younger).
const STALE_TEMP: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BlobRecord {
    size: u64,
    media_type: String,
    reference: String,
    manifest_digest: String,
    pulled_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ManifestRecord {
    layer_digest: String,
    reference: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    /// Why the trust policy admitted it (re-checked against the current
    /// policy on every cache hit).
    admission: Option<Admission>,
}

/// What a pull is about to cache (or found cached).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub layer_digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub reference: String,
    pub manifest_digest: Digest,
    pub annotations: BTreeMap<String, String>,
    pub admission: Admission,
}

/// A pulled capsule: where its verified component is on disk.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The manifest digest the reference resolved to.
    pub manifest_digest: Digest,
    /// The layer (component) digest.
    pub layer_digest: Digest,
    /// `<data>/blobs/sha256/<hex>`: the verified component.
    pub component: PathBuf,
    /// Size of the component in bytes.
    pub size: u64,
    /// The manifest's annotations.
    pub annotations: BTreeMap<String, String>,
    /// Whether the layer came from the cache (no layer download).
    pub cached: bool,
    /// Why the trust policy admitted it.
    pub admission: Admission,
}

/// One cached layer, as listed by [`cache_ls`].
#[derive(Debug, Clone, Serialize)]
pub struct CachedBlob {
    /// The layer digest (the file's name).
    pub digest: Digest,
    /// Size in bytes, as indexed.
    pub size: u64,
    /// The layer's media type.
    pub media_type: String,
    /// The reference it was last pulled as.
    pub reference: String,
    /// The manifest it was last pulled through.
    pub manifest_digest: String,
    /// When (RFC 3339 UTC).
    pub pulled_at: String,
    /// Where the file is.
    pub path: PathBuf,
    /// Whether the file is present with the indexed size.
    pub present: bool,
}

/// What [`cache_gc`] removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Files in `blobs/sha256` that no index entry names (and stale temp files).
    pub removed_files: Vec<PathBuf>,
    /// Bytes those files held.
    pub freed_bytes: u64,
    /// Index entries (layers and manifests) whose blob is missing or wrong.
    pub removed_entries: usize,
}

fn blob_dir(data: &DataDir) -> PathBuf {
    data.root().join("blobs").join("sha256")
}

fn blob_path(data: &DataDir, digest: &Digest) -> PathBuf {
    blob_dir(data).join(digest.hex())
}

fn db_err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> OciError {
    OciError::Database(e.into())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
    move |source| OciError::Cache {
        path: path.to_owned(),
        source,
    }
}

fn database(data: &DataDir) -> Result<std::sync::Arc<redb::Database>, OciError> {
    data.database().get().map_err(db_err)
}

fn file_has_size(path: &Path, size: u64) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// Read one JSON record from `table` (absent table = absent record).
fn get<T: for<'de> Deserialize<'de>>(
    db: &redb::Database,
    table: TableDefinition<'_, &str, &[u8]>,
    key: &str,
) -> Result<Option<T>, OciError> {
    let txn = db.begin_read().map_err(db_err)?;
    let table = match txn.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(db_err(e)),
    };
    let Some(value) = table.get(key).map_err(db_err)? else {
        return Ok(None);
    };
    // A record we cannot read is treated as absent (re-pulled, then rewritten).
    Ok(serde_json::from_slice(value.value()).ok())
}

/// A pull by manifest digest served from the cache, if the manifest is
/// indexed and its layer file is present with the indexed size.
/// Cost: one read transaction and a `stat`.
pub(crate) fn lookup_manifest(
    data: &DataDir,
    manifest: &Digest,
) -> Result<Option<Pulled>, OciError> {
    let db = database(data)?;
    let Some(m) = get::<ManifestRecord>(&db, MANIFESTS, &manifest.to_string())? else {
        return Ok(None);
    };
    let Some(admission) = m.admission else {
        return Ok(None);
    };
    let Ok(layer) = m.layer_digest.parse::<Digest>() else {
        return Ok(None);
    };
    let Some(blob) = get::<BlobRecord>(&db, BLOBS, &m.layer_digest)? else {
        return Ok(None);
    };
    let path = blob_path(data, &layer);
    if !file_has_size(&path, blob.size) {
        return Ok(None);
    }
    Ok(Some(Pulled {
        manifest_digest: *manifest,
        layer_digest: layer,
        component: path,
        size: blob.size,
        annotations: m.annotations,
        cached: true,
        admission,
    }))
}

/// The layer of `entry` if it is already cached (indexed, file present with
/// the right size): indexes the manifest and returns it without a download.
pub(crate) fn reuse_layer(data: &DataDir, entry: &Entry) -> Result<Option<Pulled>, OciError> {
    let db = database(data)?;
    let Some(blob) = get::<BlobRecord>(&db, BLOBS, &entry.layer_digest.to_string())? else {
        return Ok(None);
    };
    let path = blob_path(data, &entry.layer_digest);
    if blob.size != entry.size || !file_has_size(&path, entry.size) {
        return Ok(None);
    }
    index(&db, entry)?;
    Ok(Some(pulled(entry, path, true)))
}

/// Write verified `bytes` atomically (temp file in the same directory, then
/// rename) and index them. The caller has checked the digest.
pub(crate) fn store(data: &DataDir, entry: &Entry, bytes: &[u8]) -> Result<Pulled, OciError> {
    let dir = blob_dir(data);
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let path = blob_path(data, &entry.layer_digest);
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(&dir)
        .map_err(io_err(&dir))?;
    tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err(&path))?;
    tmp.persist(&path).map_err(|e| io_err(&path)(e.error))?;
    let db = database(data)?;
    index(&db, entry)?;
    Ok(pulled(entry, path, false))
}

fn pulled(entry: &Entry, path: PathBuf, cached: bool) -> Pulled {
    Pulled {
        manifest_digest: entry.manifest_digest,
        layer_digest: entry.layer_digest,
        component: path,
        size: entry.size,
        annotations: entry.annotations.clone(),
        cached,
        admission: entry.admission.clone(),
    }
}

fn index(db: &redb::Database, entry: &Entry) -> Result<(), OciError> {
    let blob = BlobRecord {
        size: entry.size,
        media_type: entry.media_type.clone(),
        reference: entry.reference.clone(),
        manifest_digest: entry.manifest_digest.to_string(),
        pulled_at: super::artifact::rfc3339(SystemTime::now()),
    };
    let manifest = ManifestRecord {
        layer_digest: entry.layer_digest.to_string(),
        reference: entry.reference.clone(),
        annotations: entry.annotations.clone(),
        admission: Some(entry.admission.clone()),
    };
    let blob = serde_json::to_vec(&blob).map_err(db_err)?;
    let manifest = serde_json::to_vec(&manifest).map_err(db_err)?;
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut blobs = txn.open_table(BLOBS).map_err(db_err)?;
        blobs
            .insert(entry.layer_digest.to_string().as_str(), blob.as_slice())
            .map_err(db_err)?;
        let mut manifests = txn.open_table(MANIFESTS).map_err(db_err)?;
        manifests
            .insert(
                entry.manifest_digest.to_string().as_str(),
                manifest.as_slice(),
            )
            .map_err(db_err)?;
    }
    txn.commit().map_err(db_err)
}

/// Every indexed layer, in digest order. Cost: one read transaction and a
/// `stat` per entry.
pub fn cache_ls(data: &DataDir) -> Result<Vec<CachedBlob>, OciError> {
    let db = database(data)?;
    let txn = db.begin_read().map_err(db_err)?;
    let table = match txn.open_table(BLOBS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(db_err(e)),
    };
    let mut out = Vec::new();
    for row in table.iter().map_err(db_err)? {
        let (key, value) = row.map_err(db_err)?;
        let Ok(digest) = key.value().parse::<Digest>() else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<BlobRecord>(value.value()) else {
            continue;
        };
        let path = blob_path(data, &digest);
        out.push(CachedBlob {
            present: file_has_size(&path, record.size),
            digest,
            size: record.size,
            media_type: record.media_type,
            reference: record.reference,
            manifest_digest: record.manifest_digest,
            pulled_at: record.pulled_at,
            path,
        });
    }
    Ok(out)
}

/// Make the index and the files agree: drop index entries whose file is
/// missing or has the wrong size (and manifests pointing at them), delete
/// files no entry names and temp files older than an hour. Cost: a directory
/// scan and one write transaction.
pub fn cache_gc(data: &DataDir) -> Result<GcReport, OciError> {
    let mut report = GcReport::default();
    let db = database(data)?;
    let txn = db.begin_write().map_err(db_err)?;
    let mut live = BTreeSet::new();
    {
        let mut blobs = txn.open_table(BLOBS).map_err(db_err)?;
        let mut dead = Vec::new();
        for row in blobs.iter().map_err(db_err)? {
            let (key, value) = row.map_err(db_err)?;
            let key = key.value().to_owned();
            let ok = key
                .parse::<Digest>()
                .ok()
                .zip(serde_json::from_slice::<BlobRecord>(value.value()).ok());
            match ok {
                Some((d, r)) if file_has_size(&blob_path(data, &d), r.size) => {
                    live.insert(d.hex());
                }
                _ => dead.push(key),
            }
        }
        for key in &dead {
            blobs.remove(key.as_str()).map_err(db_err)?;
        }
        report.removed_entries += dead.len();

        let mut manifests = txn.open_table(MANIFESTS).map_err(db_err)?;
        let mut dead = Vec::new();
        for row in manifests.iter().map_err(db_err)? {
            let (key, value) = row.map_err(db_err)?;
            let keep = serde_json::from_slice::<ManifestRecord>(value.value())
                .ok()
                .and_then(|m| m.layer_digest.parse::<Digest>().ok())
                .is_some_and(|d| live.contains(&d.hex()));
            if !keep {
                dead.push(key.value().to_owned());
            }
        }
        for key in &dead {
            manifests.remove(key.as_str()).map_err(db_err)?;
        }
        report.removed_entries += dead.len();
    }
    txn.commit().map_err(db_err)?;

    let dir = blob_dir(data);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = entry.metadata() else { continue };
        let garbage = if name.starts_with(".tmp-") {
            meta.modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP)
        } else {
            meta.is_file() && !live.contains(&name)
        };
        if garbage {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            report.freed_bytes += meta.len();
            report.removed_files.push(path);
        }
    }
    Ok(report)
}
