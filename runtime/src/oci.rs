//! Capsules as OCI Wasm artifacts: [`push`] to and [`pull`] from a registry,
//! and the verified, content-addressed blob cache pulls land in.
//!
//! The artifact follows the CNCF TAG-Runtime Wasm OCI artifact layout: an
//! OCI image manifest whose config is `application/vnd.wasm.config.v0+json`
//! and whose one layer is the component (`application/wasm`).
//!
//! A pull resolves the reference to a manifest digest once, checks the media
//! types and the layer size before downloading, verifies the layer's sha256
//! before writing anything, and writes it atomically to
//! `<data>/blobs/sha256/<hex>`, indexed in the node database (tables
//! `blobs` and `blob_manifests`). Registry calls are retried with
//! exponential backoff on 5xx and connection errors only.
//!
//! Everything a registry sends is read through a cap ([`PullConfig`],
//! `[pull]` in `soma.toml`): the manifest (before it is parsed and before the
//! trust decision), each signature manifest and signature layer, the number
//! of signature layers examined, the component layer
//! (`validate.max_component_bytes`) and error bodies. A declared
//! `Content-Length` over the cap is refused without reading the body; a body
//! that runs past the cap is cut off there.

mod auth;
mod cache;
mod reference;

use std::{
    collections::BTreeMap,
    future::Future,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use oci_client::{
    Client, RegistryOperation,
    client::{ClientConfig, ClientProtocol},
    errors::{OciDistributionError, OciErrorCode},
    secrets::RegistryAuth,
};
use serde::Deserialize;

pub use crate::config::pull::PullConfig;
pub use auth::Auth;
pub use cache::{CachedBlob, GcReport, cache_gc, cache_ls};
pub use reference::Reference;

use crate::{
    Engine, LoadError,
    config::Config,
    digest::Digest,
    store::DataDir,
    verify::{self, Admission, KeyPair, Payload, Requirement, Signature, TrustPolicy, VerifyError},
};

/// Media type of the manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the Wasm config blob.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Media type of the one layer: the component.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";
/// OCI image index media type (refused: a capsule is one artifact).
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// Annotation: the capsule's name (from `describe()`).
pub const ANNOTATION_NAME: &str = "dev.soma.capsule.name";
/// Annotation: the capsule's kind (`worker`, `planner`, `gate`).
pub const ANNOTATION_KIND: &str = "dev.soma.capsule.kind";

/// Attempts per registry request (the first try plus two retries).
const ATTEMPTS: u32 = 3;
/// Backoff before the first retry; quadrupled for each next one (100→400 ms).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Why a push or pull failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The reference is not `registry[:port]/repo/path[:tag][@sha256:<hex>]`.
    #[error(
        "{reference:?} is not an OCI reference: {reason}. Expected registry[:port]/repository[:tag][@sha256:<hex>], e.g. ghcr.io/acme/calculator:1.0"
    )]
    BadReference {
        /// The text given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The bytes to push are not a loadable capsule; nothing was uploaded.
    #[error("refusing to push: {0}")]
    Invalid(#[from] LoadError),
    /// The trust policy refused the artifact (unsigned, wrong key, signature
    /// for another digest); nothing was downloaded or cached.
    #[error("refused by the trust policy: {0}")]
    Untrusted(#[from] VerifyError),
    /// The registry wants credentials, or refused the ones given (HTTP 401).
    #[error(
        "{registry} requires authentication (HTTP 401): pass a username and password or log in with `docker login {registry}`"
    )]
    Unauthorized {
        /// The registry host.
        registry: String,
    },
    /// The credentials are valid but lack access (HTTP 403).
    #[error(
        "access to {reference} is denied (HTTP 403): check the account's permissions on the repository"
    )]
    Forbidden {
        /// The reference.
        reference: String,
    },
    /// The repository, tag or digest does not exist (HTTP 404).
    #[error("{reference} was not found in the registry (HTTP 404): check the repository and tag")]
    NotFound {
        /// The reference.
        reference: String,
    },
    /// The registry kept failing (5xx after retries) or answered an
    /// unexpected status.
    #[error(
        "the registry answered HTTP {status} for {reference} (after {ATTEMPTS} attempts for 5xx): {message}"
    )]
    Server {
        /// The HTTP status.
        status: u16,
        /// The reference.
        reference: String,
        /// What the registry said.
        message: String,
    },
    /// The registry could not be reached (connection refused, DNS, TLS, timeout).
    #[error(
        "cannot reach the registry {registry}: {cause} (is it running, and is the address right?)"
    )]
    Unreachable {
        /// The registry host.
        registry: String,
        /// The transport error.
        cause: String,
    },
    /// The manifest, config or layer has another media type than a Soma
    /// capsule artifact.
    #[error("not a Wasm capsule artifact: found media type {found:?}, expected {expected:?}")]
    WrongMediaType {
        /// What the artifact has.
        found: String,
        /// What a capsule artifact has.
        expected: String,
    },
    /// A manifest, signature manifest or signature layer is larger than its
    /// `[pull]` cap: refused before it was parsed (the body was not read past
    /// the cap) and before any trust decision.
    #[error(
        "the {what} of {reference} is larger than the limit of {limit} bytes ({found}); refused before parsing it or deciding trust (raise {key} to accept it)"
    )]
    OverLimit {
        /// What was being read (`manifest`, `signature manifest`, …).
        what: &'static str,
        /// The reference.
        reference: String,
        /// What the registry declared or sent.
        found: String,
        /// The cap, in bytes.
        limit: u64,
        /// The config key that sets the cap.
        key: &'static str,
    },
    /// The layer is larger than the configured cap; nothing was downloaded.
    #[error(
        "the component layer is {size} bytes, over the limit of {limit} bytes (raise validate.max_component_bytes to accept it)"
    )]
    TooLarge {
        /// The layer's declared (or received) size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// Content does not hash to its digest; nothing was written.
    #[error(
        "digest mismatch: expected {expected}, the registry sent content hashing to {found} — the artifact was tampered with or corrupted"
    )]
    DigestMismatch {
        /// The digest the manifest (or reference) names.
        expected: String,
        /// The digest of what was received.
        found: String,
    },
    /// The layer has another size than its descriptor says.
    #[error("the layer is {found} bytes but its descriptor says {expected}: refusing it")]
    SizeMismatch {
        /// The descriptor's size.
        expected: u64,
        /// Bytes received.
        found: u64,
    },
    /// The registry sent something that is not a valid OCI response.
    #[error("the registry sent an invalid response for {reference}: {message}")]
    Protocol {
        /// The reference.
        reference: String,
        /// What was wrong.
        message: String,
    },
    /// The docker `config.json` could not be used.
    #[error("cannot read docker credentials from {path}: {message}")]
    DockerConfig {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The blob cache could not be written or read.
    #[error(
        "blob cache I/O error at {path}: {source} (check the --data directory's permissions and free space)"
    )]
    Cache {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The node database could not be opened or updated.
    #[error("blob index error: {0}")]
    Database(String),
    /// The async runtime for registry I/O could not be started.
    #[error("cannot start the registry client runtime: {0}")]
    Runtime(std::io::Error),
}

/// How to reach a registry: plain http only for loopback registries or when
/// `insecure` is set; https otherwise, trusting the system roots plus
/// `extra_ca_pem` (e.g. a private registry's CA).
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// Use plain http even for a non-loopback registry (`--insecure`).
    pub insecure: bool,
    /// Extra CA certificates (PEM) to trust for https.
    pub extra_ca_pem: Vec<Vec<u8>>,
}

impl Transport {
    /// Read a PEM CA bundle to trust in addition to the system roots.
    pub fn with_ca_file(mut self, path: &std::path::Path) -> Result<Self, OciError> {
        let pem = std::fs::read(path).map_err(|source| OciError::Cache {
            path: path.to_owned(),
            source,
        })?;
        self.extra_ca_pem.push(pem);
        Ok(self)
    }
}

/// The cap applied to one registry response: how many bytes, and which
/// config key sets it (for the error).
#[derive(Debug, Clone, Copy)]
struct Cap {
    limit: u64,
    key: &'static str,
    what: &'static str,
}

/// Error bodies (4xx/5xx) are read up to this many bytes for the message.
const MAX_ERROR_BODY_BYTES: u64 = 16 * 1024;

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

/// How a push is annotated and transported.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// `org.opencontainers.image.source`, if known (e.g. a repository URL).
    pub source: Option<String>,
    /// How to reach the registry.
    pub transport: Transport,
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
    let manifest = capsule.manifest();
    let layer_digest = Digest::of(bytes);
    let created = rfc3339(SystemTime::now());
    let config = serde_json::json!({
        "created": created,
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer_digest.to_string()],
        "component": {
            "exports": capsule.exports(engine),
            "imports": capsule.imports(engine),
            "target": null,
        },
    });
    let config = serde_json::to_vec(&config).map_err(|e| protocol(reference, &e))?;
    let config_digest = Digest::of(&config);
    let mut annotations = BTreeMap::from([
        ("org.opencontainers.image.title", manifest.name.clone()),
        ("org.opencontainers.image.version", manifest.version.clone()),
        (
            "org.opencontainers.image.description",
            manifest.description.clone(),
        ),
        ("org.opencontainers.image.created", created),
        (ANNOTATION_NAME, manifest.name.clone()),
        (ANNOTATION_KIND, manifest.kind.to_owned()),
    ]);
    if let Some(source) = &options.source {
        annotations.insert("org.opencontainers.image.source", source.clone());
    }
    let oci_manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": LAYER_MEDIA_TYPE,
            "digest": layer_digest.to_string(),
            "size": bytes.len(),
        }],
        "annotations": annotations,
    });
    let manifest_bytes = serde_json::to_vec(&oci_manifest).map_err(|e| protocol(reference, &e))?;
    let manifest_digest = Digest::of(&manifest_bytes);

    let session = Session::new(reference, auth, &options.transport, &PullConfig::default())?;
    let target = session.target.clone();
    session.push_blob(reference, &target, bytes)?;
    session.push_blob(reference, &target, &config)?;
    session.push_manifest(reference, &target, manifest_bytes)?;
    tracing::info!(%reference, %manifest_digest, "pushed capsule");
    Ok(manifest_digest)
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
    // The cache records which keys admitted a digest, not for which
    // repository: a `match-repository` rule re-checks the signatures.
    let identity_checked = matches!(
        requirement,
        Requirement::Signed {
            identity: Some(_),
            ..
        }
    );
    if let Some(digest) = reference.digest()
        && !identity_checked
        && let Some(hit) = cache::lookup_manifest(data, &digest)?
        && satisfies(&requirement, &hit.admission)
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

/// Whether a recorded admission still satisfies `requirement` (so a cached
/// artifact needs no network to be re-admitted).
fn satisfies(requirement: &Requirement, admission: &Admission) -> bool {
    match (requirement, admission) {
        (Requirement::AcceptUnsigned, _) => true,
        (Requirement::Signed { keys, all_of, .. }, Admission::Keys { keys: verified }) => {
            let ok = |k: &verify::PublicKey| verified.contains(&k.id());
            !keys.is_empty()
                && if *all_of {
                    keys.iter().all(ok)
                } else {
                    keys.iter().any(ok)
                }
        }
        (Requirement::Signed { .. }, Admission::Unsigned) => false,
    }
}

/// The tag cosign stores the signatures of `digest` under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// Media type of a cosign simple-signing layer.
pub const SIGNATURE_LAYER_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// Sign the manifest `reference` resolves to with `key`, cosign-style: a
/// simple-signing payload naming the manifest digest, signed with
/// ECDSA-P256-SHA256, appended as a layer to the `sha256-<hex>.sig` manifest
/// in the same repository (created if absent). Returns the signed digest.
pub fn sign(
    reference: &Reference,
    auth: &Auth,
    key: &KeyPair,
    transport: &Transport,
) -> Result<Digest, OciError> {
    let limits = PullConfig::default();
    let session = Session::new(reference, auth, transport, &limits)?;
    let digest = session.resolve(reference, &limits)?;
    let payload = Payload::new(&reference.repository_path(), &digest).to_bytes();
    let signature = key.sign(&payload);
    let sig_ref = session.tag_ref(signature_tag(&digest));
    let mut layers: Vec<serde_json::Value> = match session.fetch_manifest(
        reference,
        &sig_ref,
        &SIGNATURE_MANIFEST_TYPES,
        session.signature_manifest_cap(&limits),
    )? {
        Some(body) => {
            let m: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| protocol(reference, &e))?;
            m["layers"].as_array().cloned().unwrap_or_default()
        }
        None => Vec::new(),
    };
    let payload_digest = Digest::of(&payload);
    let layer = serde_json::json!({
        "mediaType": SIGNATURE_LAYER_MEDIA_TYPE,
        "size": payload.len(),
        "digest": payload_digest.to_string(),
        "annotations": { SIGNATURE_ANNOTATION: signature },
    });
    layers.push(layer);
    let diff_ids: Vec<serde_json::Value> = layers.iter().map(|l| l["digest"].clone()).collect();
    let zero = "0001-01-01T00:00:00Z";
    let config = serde_json::json!({
        "architecture": "",
        "created": zero,
        "history": diff_ids.iter().map(|_| serde_json::json!({"created": zero})).collect::<Vec<_>>(),
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    });
    let config = serde_json::to_vec(&config).map_err(|e| protocol(reference, &e))?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": OCI_CONFIG_MEDIA_TYPE,
            "size": config.len(),
            "digest": Digest::of(&config).to_string(),
        },
        "layers": layers,
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| protocol(reference, &e))?;
    session.push_blob(reference, &sig_ref, &payload)?;
    session.push_blob(reference, &sig_ref, &config)?;
    session.push_manifest(reference, &sig_ref, manifest)?;
    tracing::info!(%reference, %digest, key = %key.public().id(), "signed");
    Ok(digest)
}

/// Resolve `reference` and check its signatures against `policy` without
/// pulling the artifact (`soma verify`), under the default [`PullConfig`]
/// caps. Returns the digest and admission.
pub fn verify_remote(
    reference: &Reference,
    auth: &Auth,
    policy: &TrustPolicy,
    transport: &Transport,
) -> Result<(Digest, Admission), OciError> {
    let limits = PullConfig::default();
    let session = Session::new(reference, auth, transport, &limits)?;
    let digest = session.resolve(reference, &limits)?;
    let requirement = policy.requirement(&reference.repository_path());
    let admission = session.admit(reference, &digest, &requirement, &limits)?;
    Ok((digest, admission))
}

/// What a signature manifest may be served as.
const SIGNATURE_MANIFEST_TYPES: [&str; 3] = [
    MANIFEST_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// The parts of an OCI manifest a pull looks at.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Media types: an image manifest, a Wasm config, exactly one Wasm layer.
fn check_manifest(m: &RawManifest) -> Result<&RawDescriptor, OciError> {
    let wrong = |found: &str, expected: &str| OciError::WrongMediaType {
        found: found.to_owned(),
        expected: expected.to_owned(),
    };
    match m.media_type.as_deref() {
        Some(MANIFEST_MEDIA_TYPE) => {}
        Some(other) => return Err(wrong(other, MANIFEST_MEDIA_TYPE)),
        None if m.manifests.is_some() => return Err(wrong(INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE)),
        None => {}
    }
    let config = m
        .config
        .as_ref()
        .ok_or_else(|| wrong("(no config)", CONFIG_MEDIA_TYPE))?;
    if config.media_type != CONFIG_MEDIA_TYPE {
        return Err(wrong(&config.media_type, CONFIG_MEDIA_TYPE));
    }
    match m.layers.as_slice() {
        [layer] if layer.media_type == LAYER_MEDIA_TYPE => Ok(layer),
        [layer] => Err(wrong(&layer.media_type, LAYER_MEDIA_TYPE)),
        layers => Err(wrong(
            &format!(
                "{} layers ({})",
                layers.len(),
                layers
                    .iter()
                    .map(|l| l.media_type.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &format!("exactly one {LAYER_MEDIA_TYPE} layer"),
        )),
    }
}

/// The signatures read from an artifact's signature manifest, and why each
/// layer that could not be read was passed over.
type SignatureLayers = (Vec<Signature>, Vec<String>);

/// One registry conversation: the client, its transport and credentials,
/// and a current-thread tokio runtime to drive it from sync code.
///
/// Pushes go through oci-client; every read (manifests, blobs) goes through
/// [`Session::get_capped`], which streams the body with a cap.
struct Session {
    client: Client,
    /// The plain HTTP client for capped reads (same TLS roots and timeouts).
    http: reqwest::Client,
    target: oci_client::Reference,
    auth: RegistryAuth,
    basic: Option<(String, String)>,
    scheme: &'static str,
    registry: String,
    /// The `Authorization` header for reads, once negotiated.
    authorization: std::sync::OnceLock<Option<http::HeaderValue>>,
    /// `pull.request_timeout_ms`, for the message when a read runs out.
    request_timeout_ms: u64,
    rt: tokio::runtime::Runtime,
}

impl Session {
    fn new(
        reference: &Reference,
        auth: &Auth,
        transport: &Transport,
        limits: &PullConfig,
    ) -> Result<Self, OciError> {
        let plain = transport.insecure || reference.is_loopback();
        let protocol = if plain {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            extra_root_certificates: transport
                .extra_ca_pem
                .iter()
                .map(|pem| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            ..ClientConfig::default()
        });
        let mut roots = Vec::new();
        for pem in &transport.extra_ca_pem {
            roots.extend(reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                OciError::Unreachable {
                    registry: reference.registry().to_owned(),
                    cause: format!("the extra CA bundle is not PEM certificates: {e}"),
                }
            })?);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .timeout(Duration::from_millis(limits.request_timeout_ms.max(1)))
            .tls_certs_merge(roots)
            .build()
            .map_err(|e| OciError::Unreachable {
                registry: reference.registry().to_owned(),
                cause: soma_host_api::error_chain(&e),
            })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(OciError::Runtime)?;
        Ok(Self {
            client,
            http,
            target: reference.to_oci(),
            auth: auth.to_registry_auth(),
            basic: match auth {
                Auth::Basic { username, password } => Some((username.clone(), password.clone())),
                Auth::Anonymous => None,
            },
            scheme: if plain { "http" } else { "https" },
            registry: reference.registry().to_owned(),
            authorization: std::sync::OnceLock::new(),
            request_timeout_ms: limits.request_timeout_ms,
            rt,
        })
    }

    fn manifest_cap(&self, limits: &PullConfig) -> Cap {
        Cap {
            limit: limits.max_manifest_bytes,
            key: "pull.max_manifest_bytes",
            what: "manifest",
        }
    }

    fn signature_manifest_cap(&self, limits: &PullConfig) -> Cap {
        Cap {
            limit: limits.max_signature_manifest_bytes,
            key: "pull.max_signature_manifest_bytes",
            what: "signature manifest",
        }
    }

    /// The same repository at another tag.
    fn tag_ref(&self, tag: String) -> oci_client::Reference {
        oci_client::Reference::with_tag(
            self.target.registry().to_owned(),
            self.target.repository().to_owned(),
            tag,
        )
    }

    /// The manifest digest `reference` points at (the digest of the bytes the
    /// registry serves, checked against `@digest` if the reference has one).
    fn resolve(&self, reference: &Reference, limits: &PullConfig) -> Result<Digest, OciError> {
        let body = self
            .fetch_manifest(
                reference,
                &self.target,
                &SIGNATURE_MANIFEST_TYPES,
                self.manifest_cap(limits),
            )?
            .ok_or_else(|| OciError::NotFound {
                reference: reference.to_string(),
            })?;
        let digest = Digest::of(&body);
        match reference.digest() {
            Some(expected) if expected != digest => Err(OciError::DigestMismatch {
                expected: expected.to_string(),
                found: digest.to_string(),
            }),
            _ => Ok(digest),
        }
    }

    /// A raw manifest read through `cap`, or `None` if the registry has no
    /// such tag (404).
    fn fetch_manifest(
        &self,
        reference: &Reference,
        target: &oci_client::Reference,
        accept: &[&str],
        cap: Cap,
    ) -> Result<Option<Vec<u8>>, OciError> {
        let id = match (target.digest(), target.tag()) {
            (Some(d), _) => d.to_owned(),
            (None, Some(t)) => t.to_owned(),
            (None, None) => "latest".to_owned(),
        };
        let url = self.url(target, "manifests", &id);
        match self.retry_mapped(|| self.get_capped(reference, &url, accept, cap)) {
            Ok(body) => Ok(Some(body)),
            Err(OciError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `<scheme>://<registry>/v2/<repository>/<kind>/<id>`.
    fn url(&self, target: &oci_client::Reference, kind: &str, id: &str) -> String {
        format!(
            "{}://{}/v2/{}/{kind}/{id}",
            self.scheme,
            target.resolve_registry(),
            target.repository()
        )
    }

    /// The `Authorization` header for reads: a bearer token negotiated once
    /// through oci-client (anonymous or from basic credentials), else the
    /// basic credentials themselves, else none.
    async fn authorization(
        &self,
        reference: &Reference,
    ) -> Result<Option<http::HeaderValue>, OciError> {
        if let Some(header) = self.authorization.get() {
            return Ok(header.clone());
        }
        let token = self
            .client
            .auth(&self.target, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| map_error(e, &self.registry, reference))?;
        let header = match (token, &self.basic) {
            (Some(token), _) => http::HeaderValue::from_str(&format!("Bearer {token}")).ok(),
            (None, Some((user, pass))) => {
                use base64::Engine as _;
                let raw =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                http::HeaderValue::from_str(&format!("Basic {raw}")).ok()
            }
            (None, None) => None,
        };
        let _ = self.authorization.set(header.clone());
        Ok(header)
    }

    /// GET `url`, reading at most `cap.limit` bytes of body: a declared
    /// `Content-Length` over the cap is refused before the body is read, and
    /// a body running past it is cut off at the cap. Error statuses read at
    /// most [`MAX_ERROR_BODY_BYTES`] for the message. Cost: one request; at
    /// most `cap.limit` bytes held.
    async fn get_capped(
        &self,
        reference: &Reference,
        url: &str,
        accept: &[&str],
        cap: Cap,
    ) -> Result<Vec<u8>, OciError> {
        let over = |found: String| OciError::OverLimit {
            what: cap.what,
            reference: reference.to_string(),
            found,
            limit: cap.limit,
            key: cap.key,
        };
        let mut request = self.http.get(url);
        if !accept.is_empty() {
            request = request.header(http::header::ACCEPT, accept.join(", "));
        }
        if let Some(header) = self.authorization(reference).await? {
            request = request.header(http::header::AUTHORIZATION, header);
        }
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                return OciError::Unreachable {
                    registry: self.registry.clone(),
                    cause: format!(
                        "no complete answer to {url} within {} ms (pull.request_timeout_ms)",
                        self.request_timeout_ms
                    ),
                };
            }
            map_error(
                OciDistributionError::RequestError(e),
                &self.registry,
                reference,
            )
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let (body, _) = read_capped(&mut response, MAX_ERROR_BODY_BYTES)
                .await
                .unwrap_or_default();
            let message = String::from_utf8_lossy(&body).into_owned();
            return Err(status_error(
                status.as_u16(),
                message,
                &self.registry,
                reference,
            ));
        }
        if let Some(declared) = response.content_length()
            && declared > cap.limit
        {
            return Err(over(format!("it declares {declared} bytes")));
        }
        let (body, truncated) = read_capped(&mut response, cap.limit)
            .await
            .map_err(transport)?;
        if truncated {
            return Err(over(format!("it sent more than {} bytes", cap.limit)));
        }
        Ok(body)
    }

    fn push_blob(
        &self,
        reference: &Reference,
        target: &oci_client::Reference,
        data: &[u8],
    ) -> Result<(), OciError> {
        let digest = Digest::of(data).to_string();
        let data = bytes::Bytes::copy_from_slice(data);
        self.block_on(
            self.client
                .store_auth_if_needed(target.resolve_registry(), &self.auth),
        );
        self.retry(reference, || {
            self.client.push_blob(target, data.clone(), &digest)
        })
        .map(drop)
    }

    /// Put an OCI image manifest at `target` (a tag).
    fn push_manifest(
        &self,
        reference: &Reference,
        target: &oci_client::Reference,
        manifest: Vec<u8>,
    ) -> Result<(), OciError> {
        let manifest = bytes::Bytes::from(manifest);
        self.retry(reference, || {
            self.client.push_manifest_raw(
                target,
                manifest.clone(),
                http_header(MANIFEST_MEDIA_TYPE),
            )
        })
        .map(drop)
    }

    /// The cosign signatures stored for `digest`, with why the layers that
    /// could not be read were passed over; `None` if there is no signature
    /// manifest. The signature manifest is read through
    /// `pull.max_signature_manifest_bytes`; at most
    /// `pull.max_signature_layers` simple-signing layers are examined, each
    /// downloaded through `pull.max_signature_layer_bytes` and digest-checked.
    /// One unreadable layer never fails the others.
    fn signatures(
        &self,
        reference: &Reference,
        digest: &Digest,
        limits: &PullConfig,
    ) -> Result<Option<SignatureLayers>, OciError> {
        let sig_ref = self.tag_ref(signature_tag(digest));
        let Some(body) = self.fetch_manifest(
            reference,
            &sig_ref,
            &SIGNATURE_MANIFEST_TYPES,
            self.signature_manifest_cap(limits),
        )?
        else {
            return Ok(None);
        };
        #[derive(Deserialize)]
        struct SigManifest {
            #[serde(default)]
            layers: Vec<serde_json::Value>,
        }
        let m: SigManifest = serde_json::from_slice(&body).map_err(|e| protocol(reference, &e))?;
        let mut out = Vec::new();
        let mut unreadable = Vec::new();
        let mut examined = 0usize;
        let mut skipped = 0usize;
        for (index, layer) in m.layers.into_iter().enumerate() {
            let position = index + 1;
            let layer = match serde_json::from_value::<RawDescriptor>(layer) {
                Ok(l) if l.media_type == SIGNATURE_LAYER_MEDIA_TYPE => l,
                // Other layer types (e.g. attestations) are not signatures.
                Ok(_) => continue,
                Err(e) => {
                    if examined < limits.max_signature_layers {
                        examined += 1;
                        unreadable.push(format!(
                            "layer {position}: not a layer descriptor ({})",
                            clip(&e.to_string())
                        ));
                    } else {
                        skipped += 1;
                    }
                    continue;
                }
            };
            if examined >= limits.max_signature_layers {
                skipped += 1;
                continue;
            }
            examined += 1;
            let Some(signature) = layer.annotations.get(SIGNATURE_ANNOTATION).cloned() else {
                unreadable.push(format!(
                    "layer {position}: no {SIGNATURE_ANNOTATION} annotation"
                ));
                continue;
            };
            match self.signature_layer(reference, &sig_ref, &layer, limits) {
                Ok(payload) => out.push(Signature {
                    payload,
                    signature,
                    layer: position,
                }),
                Err(e) => unreadable.push(format!("layer {position}: {e}")),
            }
        }
        if skipped > 0 {
            unreadable.push(format!(
                "{skipped} more signature layer(s) not examined (pull.max_signature_layers = {})",
                limits.max_signature_layers
            ));
        }
        Ok(Some((out, unreadable)))
    }

    /// Download one signature payload (checked against its descriptor's
    /// size, the cap and its digest).
    fn signature_layer(
        &self,
        reference: &Reference,
        sig_ref: &oci_client::Reference,
        layer: &RawDescriptor,
        limits: &PullConfig,
    ) -> Result<Vec<u8>, OciError> {
        let expected: Digest = layer
            .digest
            .parse()
            .map_err(|e| protocol(reference, &format!("layer digest: {e}")))?;
        let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
        let cap = Cap {
            limit: limits.max_signature_layer_bytes,
            key: "pull.max_signature_layer_bytes",
            what: "signature layer",
        };
        if size > cap.limit {
            return Err(OciError::OverLimit {
                what: cap.what,
                reference: reference.to_string(),
                found: format!("its descriptor says {size} bytes"),
                limit: cap.limit,
                key: cap.key,
            });
        }
        let payload = self.download(reference, sig_ref, &layer.digest, size, cap)?;
        let found = Digest::of(&payload);
        if found != expected {
            return Err(OciError::DigestMismatch {
                expected: expected.to_string(),
                found: found.to_string(),
            });
        }
        Ok(payload)
    }

    /// Apply `requirement` to `digest`: fetch and check signatures if needed.
    fn admit(
        &self,
        reference: &Reference,
        digest: &Digest,
        requirement: &Requirement,
        limits: &PullConfig,
    ) -> Result<Admission, OciError> {
        match requirement {
            Requirement::AcceptUnsigned => Ok(Admission::Unsigned),
            Requirement::Signed {
                keys,
                all_of,
                rule,
                identity,
            } => {
                let repo = reference.canonical_repository();
                if keys.is_empty() {
                    return Err(VerifyError::NotTrusted {
                        reference: reference.to_string(),
                        digest: *digest,
                        detail: format!(
                            "no trust rule matches {repo} and remote artifacts must be signed; \
                             add a [[trust.rules]] entry with its keys (or pass --key)"
                        ),
                    }
                    .into());
                }
                let Some((signatures, unreadable)) = self.signatures(reference, digest, limits)?
                else {
                    return Err(VerifyError::Unsigned {
                        reference: reference.to_string(),
                        digest: *digest,
                        tag: signature_tag(digest),
                    }
                    .into());
                };
                tracing::debug!(rule = ?rule, count = signatures.len(), unreadable = unreadable.len(), "checking signatures");
                Ok(verify::check(
                    &reference.to_string(),
                    digest,
                    &signatures,
                    keys,
                    *all_of,
                    identity.as_deref(),
                    &unreadable,
                )?)
            }
        }
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Run `op` up to [`ATTEMPTS`] times, backing off 100 ms then 400 ms,
    /// retrying only 5xx and transport failures.
    fn retry<T, F, Fut>(&self, reference: &Reference, mut op: F) -> Result<T, OciError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        self.retry_mapped(|| {
            let attempt = op();
            async move {
                attempt
                    .await
                    .map_err(|e| map_error(e, &self.registry, reference))
            }
        })
    }

    fn retry_mapped<T, F, Fut>(&self, mut op: F) -> Result<T, OciError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciError>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.block_on(op()) {
                Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                    tracing::debug!(attempt, error = %e, "registry request failed; retrying");
                    std::thread::sleep(backoff);
                    backoff *= 4;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Download one blob into memory, refusing more than `size` (the
    /// descriptor's) or `cap.limit` bytes. The caller checks the digest;
    /// nothing touches the disk here.
    fn download(
        &self,
        reference: &Reference,
        pinned: &oci_client::Reference,
        digest: &str,
        size: u64,
        cap: Cap,
    ) -> Result<Vec<u8>, OciError> {
        if size > cap.limit {
            return Err(OciError::TooLarge {
                size,
                limit: cap.limit,
            });
        }
        let url = self.url(pinned, "blobs", digest);
        // Read one byte past the descriptor's size to notice a longer body.
        let read = Cap {
            limit: size.saturating_add(1),
            ..cap
        };
        let body = self.retry_mapped(|| async {
            match self.get_capped(reference, &url, &[], read).await {
                Err(OciError::OverLimit { .. }) => Err(OciError::SizeMismatch {
                    expected: size,
                    found: size.saturating_add(1),
                }),
                other => other,
            }
        })?;
        let received = body.len() as u64;
        if received != size {
            return Err(OciError::SizeMismatch {
                expected: size,
                found: received,
            });
        }
        Ok(body)
    }
}

/// Connect timeout for registry requests.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read timeout (between bytes) for registry requests.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Read `response`'s body, keeping at most `limit` bytes; `true` when the
/// body went on past the limit (reading stops there).
async fn read_capped(
    response: &mut reqwest::Response,
    limit: u64,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let hint = response.content_length().unwrap_or(0).min(limit);
    let mut body = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    while let Some(chunk) = response.chunk().await? {
        let room = usize::try_from(limit.saturating_sub(body.len() as u64)).unwrap_or(usize::MAX);
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// Registry-supplied text put into a message is cut to this many characters.
const CLIP_CHARS: usize = 200;

fn clip(text: &str) -> String {
    match text.char_indices().nth(CLIP_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn retryable(e: &OciError) -> bool {
    match e {
        OciError::Server { status, .. } => *status >= 500,
        OciError::Unreachable { .. } => true,
        _ => false,
    }
}

/// Map oci-client's errors to ours by HTTP status / OCI error code.
fn map_error(e: OciDistributionError, registry: &str, reference: &Reference) -> OciError {
    let by_status =
        |status: u16, message: String| status_error(status, message, registry, reference);
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => by_status(401, String::new()),
        OciDistributionError::ServerError { code, message, .. } => by_status(code, message),
        OciDistributionError::RegistryError { envelope, .. } => {
            let message = envelope.to_string();
            match envelope.errors.first().map(|e| &e.code) {
                Some(OciErrorCode::Unauthorized) => by_status(401, message),
                Some(OciErrorCode::Denied) => by_status(403, message),
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NotFound
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown,
                ) => by_status(404, message),
                Some(OciErrorCode::Toomanyrequests) => by_status(429, message),
                _ => OciError::Protocol {
                    reference: reference.to_string(),
                    message,
                },
            }
        }
        OciDistributionError::RequestError(r) => match r.status() {
            Some(status) => by_status(status.as_u16(), r.to_string()),
            None => OciError::Unreachable {
                registry: registry.to_owned(),
                cause: soma_host_api::error_chain(&r),
            },
        },
        OciDistributionError::IoError(io) => OciError::Unreachable {
            registry: registry.to_owned(),
            cause: io.to_string(),
        },
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            expected,
            actual,
        }) => OciError::DigestMismatch {
            expected,
            found: actual,
        },
        other => OciError::Protocol {
            reference: reference.to_string(),
            message: other.to_string(),
        },
    }
}

/// The error for an HTTP error `status` from the registry.
fn status_error(status: u16, message: String, registry: &str, reference: &Reference) -> OciError {
    match status {
        401 => OciError::Unauthorized {
            registry: registry.to_owned(),
        },
        403 => OciError::Forbidden {
            reference: reference.to_string(),
        },
        404 => OciError::NotFound {
            reference: reference.to_string(),
        },
        status => OciError::Server {
            status,
            reference: reference.to_string(),
            message: clip(&message),
        },
    }
}

fn protocol(reference: &Reference, e: &dyn std::fmt::Display) -> OciError {
    OciError::Protocol {
        reference: reference.to_string(),
        message: e.to_string(),
    }
}

fn http_header(value: &'static str) -> http::HeaderValue {
    http::HeaderValue::from_static(value)
}

/// `t` as RFC 3339 UTC with seconds (`2025-01-02T03:04:05Z`).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59Z");
    }

    fn manifest(config: &str, layers: &[&str]) -> RawManifest {
        RawManifest {
            media_type: Some(MANIFEST_MEDIA_TYPE.into()),
            config: Some(RawDescriptor {
                media_type: config.into(),
                digest: String::new(),
                size: 1,
                annotations: BTreeMap::new(),
            }),
            layers: layers
                .iter()
                .map(|m| RawDescriptor {
                    media_type: (*m).into(),
                    digest: String::new(),
                    size: 1,
                    annotations: BTreeMap::new(),
                })
                .collect(),
            manifests: None,
            annotations: None,
        }
    }

    #[test]
    fn media_types_are_checked() {
        assert!(check_manifest(&manifest(CONFIG_MEDIA_TYPE, &[LAYER_MEDIA_TYPE])).is_ok());
        for m in [
            manifest(
                "application/vnd.oci.image.config.v1+json",
                &[LAYER_MEDIA_TYPE],
            ),
            manifest(CONFIG_MEDIA_TYPE, &[]),
            manifest(CONFIG_MEDIA_TYPE, &[LAYER_MEDIA_TYPE, LAYER_MEDIA_TYPE]),
            manifest(CONFIG_MEDIA_TYPE, &["application/octet-stream"]),
        ] {
            assert!(matches!(
                check_manifest(&m),
                Err(OciError::WrongMediaType { .. })
            ));
        }
    }
}
