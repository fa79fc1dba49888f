//! [`pull`]: resolve a reference to one manifest digest, decide trust
//! before anything is downloaded, then download, verify and cache the layer.
//! [`PullConfig`] (`[pull]` in `soma.toml`) caps everything a registry sends.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

use super::{
    Auth, OciError, Reference,
    artifact::{INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, RawManifest, check_manifest},
    cache,
    client::{Cap, Session, Transport, protocol},
};
use crate::{
    config::Config,
    digest::Digest,
    store::DataDir,
    verify::{Admission, TrustPolicy},
};

/// How much a registry may make a pull read (`[pull]` in `soma.toml`).
///
/// Each cap bounds memory held for one registry response; a response over
/// its cap is refused with [`OciError::OverLimit`] naming the key. A spec or
/// request cannot raise them; `PullOptions` can only be built from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PullConfig {
    /// Largest image manifest read, in bytes, before it is parsed and before
    /// the trust decision. A capsule manifest is under 2 KiB. Default 4 MiB.
    pub max_manifest_bytes: u64,
    /// Largest signature manifest (`sha256-<hex>.sig`) read, in bytes.
    /// Default 512 KiB (16 cosign layers with certificates and bundles fit).
    pub max_signature_manifest_bytes: u64,
    /// Largest signature layer (simple-signing payload) downloaded, in bytes;
    /// a larger layer is passed over (listed in the refusal if nothing
    /// verifies). A payload is a few hundred bytes. Default 64 KiB.
    pub max_signature_layer_bytes: u64,
    /// Most signature layers examined per artifact (the first ones in the
    /// signature manifest; the rest are not downloaded). Default 16.
    pub max_signature_layers: usize,
    /// Longest one registry read (a manifest, signature or layer download,
    /// headers to last byte) may take, in milliseconds, so a registry that
    /// dribbles bytes cannot hold a pull for hours; a read that runs out is
    /// retried like a connection error. Default 300,000 (5 minutes).
    pub request_timeout_ms: u64,
}

impl Default for PullConfig {
    fn default() -> Self {
        Self {
            max_manifest_bytes: 4 * 1024 * 1024,
            max_signature_manifest_bytes: 512 * 1024,
            max_signature_layer_bytes: 64 * 1024,
            max_signature_layers: 16,
            request_timeout_ms: 300_000,
        }
    }
}

impl PullConfig {
    /// Check the caps can admit anything: every cap and the timeout must be
    /// positive (`soma config check`). The message names the key.
    pub fn check(&self) -> Result<(), String> {
        for (key, value) in [
            ("pull.max_manifest_bytes", self.max_manifest_bytes),
            (
                "pull.max_signature_manifest_bytes",
                self.max_signature_manifest_bytes,
            ),
            (
                "pull.max_signature_layer_bytes",
                self.max_signature_layer_bytes,
            ),
            (
                "pull.max_signature_layers",
                self.max_signature_layers as u64,
            ),
            ("pull.request_timeout_ms", self.request_timeout_ms),
        ] {
            if value == 0 {
                return Err(format!("{key} must be positive"));
            }
        }
        Ok(())
    }
}

/// How a pull is bounded and transported.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Largest layer accepted, in bytes (checked before downloading).
    /// Default: `validate.max_component_bytes` (64 MiB).
    pub max_layer_bytes: u64,
    /// Caps on manifests and signatures (`[pull]`).
    pub limits: PullConfig,
    /// How to reach the registry.
    pub transport: Transport,
    /// Which signatures the artifact needs. Default: a signature by a
    /// trusted key, with no key trusted — so nothing remote is admitted until
    /// the operator configures `[[trust.rules]]`.
    pub trust: TrustPolicy,
}

impl Default for PullOptions {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

impl PullOptions {
    /// The cap from `config.validate.max_component_bytes`, https unless loopback.
    pub fn from_config(config: &Config) -> Self {
        Self {
            max_layer_bytes: u64::try_from(config.validate.max_component_bytes).unwrap_or(u64::MAX),
            limits: config.pull,
            transport: Transport::default(),
            trust: TrustPolicy::default(),
        }
    }
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

/// Pull the capsule at `reference` into the blob cache of `data`.
///
/// A reference with `@sha256:…` already in the cache is served without
/// touching the network. Otherwise the manifest is fetched once and
/// verified; a layer already cached (file present with the right size) is
/// not downloaded again. The trust rule is chosen by the reference's
/// canonical name ([`Reference::canonical_repository`]). Cost: one manifest
/// request (at most `options.limits.max_manifest_bytes` read), the signature
/// manifest and up to `max_signature_layers` small payloads when a signature
/// is required, plus one download of at most `options.max_layer_bytes` held
/// in memory while it is hashed.
pub fn pull(
    data: &DataDir,
    reference: &Reference,
    auth: &Auth,
    options: &PullOptions,
) -> Result<Pulled, OciError> {
    let requirement = options.trust.requirement(&reference.repository_path());
    // A cached digest is served offline only while its recorded admission
    // still satisfies the policy (`verify` decides; see `admits_cached`).
    if let Some(digest) = reference.digest()
        && let Some(hit) = cache::lookup_manifest(data, &digest)?
        && requirement.admits_cached(&hit.admission)
    {
        return Ok(hit);
    }
    let session = Session::new(reference, auth, &options.transport, &options.limits)?;
    let body = session
        .fetch_manifest(
            reference,
            &session.target,
            &[MANIFEST_MEDIA_TYPE, INDEX_MEDIA_TYPE],
            session.manifest_cap(&options.limits),
        )?
        .ok_or_else(|| OciError::NotFound {
            reference: reference.to_string(),
        })?;
    // Resolved once: everything below uses this digest, not the tag.
    let manifest_digest = Digest::of(&body);
    if let Some(expected) = reference.digest()
        && expected != manifest_digest
    {
        return Err(OciError::DigestMismatch {
            expected: expected.to_string(),
            found: manifest_digest.to_string(),
        });
    }
    // Trust before anything is downloaded or cached.
    let admission = session.admit(reference, &manifest_digest, &requirement, &options.limits)?;
    let manifest: RawManifest =
        serde_json::from_slice(&body).map_err(|e| protocol(reference, &e))?;
    let layer = check_manifest(&manifest)?;
    let layer_digest: Digest = layer.digest.parse().map_err(|e| OciError::Protocol {
        reference: reference.to_string(),
        message: format!("layer digest: {e}"),
    })?;
    let size = u64::try_from(layer.size).map_err(|_| OciError::Protocol {
        reference: reference.to_string(),
        message: format!("negative layer size {}", layer.size),
    })?;
    if size > options.max_layer_bytes {
        return Err(OciError::TooLarge {
            size,
            limit: options.max_layer_bytes,
        });
    }
    let annotations = manifest.annotations.clone().unwrap_or_default();
    let entry = cache::Entry {
        layer_digest,
        size,
        media_type: layer.media_type.clone(),
        reference: reference.to_string(),
        manifest_digest,
        annotations,
        admission,
    };
    if let Some(hit) = cache::reuse_layer(data, &entry)? {
        return Ok(hit);
    }

    let pinned = session
        .target
        .clone_with_digest(manifest_digest.to_string());
    let bytes = session.download(
        reference,
        &pinned,
        &layer.digest,
        size,
        Cap {
            limit: options.max_layer_bytes,
            key: "validate.max_component_bytes",
            what: "component layer",
        },
    )?;
    let found = Digest::of(&bytes);
    if found != layer_digest {
        return Err(OciError::DigestMismatch {
            expected: layer_digest.to_string(),
            found: found.to_string(),
        });
    }
    let pulled = cache::store(data, &entry, &bytes)?;
    tracing::info!(%reference, %manifest_digest, %layer_digest, "pulled capsule");
    Ok(pulled)
}
