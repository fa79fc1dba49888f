//! [`push`]: a capsule component to a registry as a Wasm OCI artifact.

use std::time::SystemTime;

use super::{
    artifact,
    auth::Auth,
    client::{PullConfig, Session, Transport, protocol},
    error::OciError,
    reference::Reference,
};
use crate::{Engine, digest::Digest};

/// How a push is annotated and transported.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// `org.opencontainers.image.source`, if known (e.g. a repository URL).
    pub source: Option<String>,
    /// How to reach the registry.
    pub transport: Transport,
}

/// Push a capsule to `reference` (which needs a tag, not a digest).
///
/// The bytes are loaded by `engine` first (digest, validate, compile,
/// `describe()`), so an invalid component fails before anything is uploaded.
/// Returns the manifest digest. Cost: one compile (or AOT cache hit), then
/// three uploads (layer, config, manifest).
pub fn push(
    engine: &Engine,
    bytes: &[u8],
    reference: &Reference,
    auth: &Auth,
    options: &PushOptions,
) -> Result<Digest, OciError> {
    if reference.digest().is_some() {
        return Err(OciError::BadReference {
            reference: reference.to_string(),
            reason: "a push needs a tag, not a digest (the digest is computed from the manifest)"
                .into(),
        });
    }
    let capsule = engine.load(bytes, &reference.to_string())?;
    let built = artifact::CapsuleArtifact {
        layer: bytes,
        manifest: capsule.manifest(),
        exports: capsule.exports(engine.wasmtime()),
        imports: capsule.imports(engine.wasmtime()),
        source: options.source.as_deref(),
    }
    .build(SystemTime::now())
    .map_err(|e| protocol(reference, &e))?;
    let manifest_digest = Digest::of(&built.manifest);

    let session = Session::new(reference, auth, &options.transport, &PullConfig::default())?;
    let target = session.target.clone();
    session.push_blob(reference, &target, bytes)?;
    session.push_blob(reference, &target, &built.config)?;
    session.push_manifest(reference, &target, built.manifest)?;
    tracing::info!(%reference, %manifest_digest, "pushed capsule");
    Ok(manifest_digest)
}
