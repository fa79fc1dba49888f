//! [`OciError`]: why a push, pull, sign or verify failed, each variant
//! naming what the user can change.

use std::path::PathBuf;

use crate::{LoadError, verify::VerifyError};

/// Attempts per registry request (the first try plus two retries).
pub(super) const ATTEMPTS: u32 = 3;

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
    /// The message leaves the cause to the source (`{e:#}` prints
    /// "refusing to push (nothing was uploaded): invalid component: …").
    #[error("refusing to push (nothing was uploaded)")]
    Invalid(#[from] LoadError),
    /// The trust policy refused the artifact (unsigned, wrong key, signature
    /// for another digest); nothing was downloaded or cached. (Not a
    /// `#[source]`: the message already holds the policy's reason, and a
    /// chain printer such as `{e:#}` would print it twice.)
    #[error("refused by the trust policy: {0}")]
    Untrusted(VerifyError),
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
    /// The node database could not be opened or updated (the cause is the
    /// source: `{e:#}` prints "blob index error: …").
    #[error("blob index error")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The async runtime for registry I/O could not be started.
    #[error("cannot start the registry client runtime: {0}")]
    Runtime(std::io::Error),
}

impl From<VerifyError> for OciError {
    fn from(e: VerifyError) -> Self {
        Self::Untrusted(e)
    }
}

/// Registry-supplied text put into a message is cut to this many characters.
const CLIP_CHARS: usize = 200;

pub(super) fn clip(text: &str) -> String {
    match text.char_indices().nth(CLIP_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
