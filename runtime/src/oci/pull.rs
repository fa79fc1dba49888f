//! [`pull`]: resolve a reference to one manifest digest, decide trust
//! before anything is downloaded, then download, verify and cache the layer.
//! [`PullConfig`] (`[pull]` in `soma.toml`) caps everything a registry sends.

use super::{
    artifact::{INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, RawManifest, check_manifest},
    auth::Auth,
    cache::{self, Pulled},
    client::{Cap, PullConfig, Session, Transport, protocol},
    error::OciError,
    reference::Reference,
};
use crate::{config::Config, digest::Digest, store::DataDir, verify::TrustPolicy};

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
