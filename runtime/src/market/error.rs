//! [`MarketError`]: every way a marketplace operation is refused or fails.
//! Each message says what happened and what to do; the CLI maps variants
//! to exit codes in its one table.

use std::path::PathBuf;

use crate::{digest::Digest, oci::OciError, verify::VerifyError};

use super::{
    listing::ListingError, review::ReviewError, search::SearchError, state::SubmissionState,
};

/// Why a marketplace operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    /// The listing file is missing, malformed or invalid.
    #[error(transparent)]
    Listing(#[from] ListingError),
    /// The node database could not be opened (often: another soma process has it).
    #[error(transparent)]
    Open(#[from] soma_host_api::storage::OpenError),
    /// redb failed, or a record could not be encoded.
    #[error("the marketplace tables failed")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The shared PostgreSQL store failed (its message says whether to
    /// retry; nothing was written).
    #[error("the marketplace tables on PostgreSQL")]
    Shared(#[from] crate::store::postgres::PgError),
    /// A stored record does not decode.
    #[error("the marketplace record {key:?} is corrupt: {message}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// The decoder's message.
        message: String,
    },
    /// A name is not `author/name` of lowercase segments, or an author name is malformed.
    #[error("{text:?} is not a valid marketplace name: {reason}")]
    BadName {
        /// The text given.
        text: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// The author name is taken by a different key.
    #[error(
        "author `{name}` is already registered with key {key_id}; pick another name, or sign with that key"
    )]
    AuthorExists {
        /// The author name.
        name: String,
        /// The registered key's id.
        key_id: String,
    },
    /// The key is already registered under another author name.
    #[error(
        "this key ({key_id}) is already registered as author `{author}`; one key, one author: generate a new key with `soma keygen`"
    )]
    KeyTaken {
        /// The key's id.
        key_id: String,
        /// The author it belongs to.
        author: String,
    },
    /// The namespace is registered for another tenant (or the operator).
    #[error(
        "the author namespace `{name}` belongs to another tenant; register a namespace of your own"
    )]
    NamespaceOwned {
        /// The author name.
        name: String,
    },
    /// The proof of possession does not verify with the key being registered.
    #[error(
        "the signature proving possession of the key for author `{name}` does not verify ({reason}): sign the statement soma-market-author-v1\\n{name}\\n<tenant>\\n with the private key of the public key you register"
    )]
    BadProof {
        /// The author name.
        name: String,
        /// Why the check failed.
        reason: String,
    },
    /// A tenant has registered as many author namespaces as a tenant may.
    #[error(
        "this tenant owns {max} author namespaces, the most allowed; publish under one of them"
    )]
    TooManyAuthors {
        /// The cap.
        max: usize,
    },
    /// A tenant has installed as many capsules as a tenant may.
    #[error(
        "this tenant has {max} marketplace capsules installed, the most allowed; uninstall one first"
    )]
    TooManyPins {
        /// The cap.
        max: usize,
    },
    /// No author is registered under this name.
    #[error(
        "no author `{name}` is registered: run `soma market author register --name {name} --key-file KEY` (or, for a tenant, POST /v1/market/authors)"
    )]
    NoSuchAuthor {
        /// The author name.
        name: String,
    },
    /// The signing key belongs to another registered author.
    #[error(
        "author `{key_author}` cannot submit into the namespace `{namespace}/`: the listing's name must start with `{key_author}/`"
    )]
    ForeignNamespace {
        /// The listing's namespace.
        namespace: String,
        /// Whose key signed.
        key_author: String,
    },
    /// The signing key is not the one registered for the author.
    #[error(
        "signature-invalid: the signing key {found} is not author `{author}`'s registered key {expected}: sign with the key registered for `{author}`"
    )]
    WrongAuthorKey {
        /// The author.
        author: String,
        /// The registered key's id.
        expected: String,
        /// The key given.
        found: String,
    },
    /// A version already exists with a different component.
    #[error(
        "version-immutable: {id} already exists with component {existing}; versions are immutable: bump the version in the listing to submit component {given}"
    )]
    VersionImmutable {
        /// `author/name@version`.
        id: String,
        /// The component digest on record.
        existing: Digest,
        /// The component digest submitted.
        given: Digest,
    },
    /// The component's signature does not verify with the author's
    /// registered key (pushed and signed with another key, or not signed).
    #[error(
        "signature-invalid: {reference} has no valid signature by author `{author}`'s registered key {key_id}: sign that digest with the registered key (soma sign) and submit again"
    )]
    AuthorSignature {
        /// What was pulled.
        reference: String,
        /// The listing's author.
        author: String,
        /// The registered key's id.
        key_id: String,
        /// What the verification found.
        #[source]
        source: Box<VerifyError>,
    },
    /// No such submission or version.
    #[error("no submission {id} (soma market ls lists them)")]
    NoSuchVersion {
        /// `author/name@version`.
        id: String,
    },
    /// The state change is not allowed from the current state.
    #[error("{id} is {from}; it cannot become {to}{hint}")]
    BadTransition {
        /// `author/name@version`.
        id: String,
        /// The current state.
        from: SubmissionState,
        /// The state asked for.
        to: SubmissionState,
        /// What to do instead.
        hint: &'static str,
    },
    /// No published version matches the range.
    #[error("no installable version of `{name}` matches {range:?}{detail}")]
    NoMatch {
        /// `author/name`.
        name: String,
        /// The semver range.
        range: String,
        /// Which versions were passed over and why.
        detail: String,
    },
    /// The version range does not parse.
    #[error("{text:?} is not a semver range ({source}); write e.g. ^1, ~1.2, >=1.0, <2 or 1.2.3")]
    BadRange {
        /// The text given.
        text: String,
        /// The parser's error.
        #[source]
        source: semver::Error,
    },
    /// `[market]` lacks a key this operation needs.
    #[error("[market] {key} is not set in the configuration: {why}")]
    NotConfigured {
        /// The missing key (`key`, `public_key`, `registry`).
        key: &'static str,
        /// Why it is needed.
        why: &'static str,
    },
    /// A digest names no version of this capsule in the node database.
    #[error(
        "`{name}` has no published version with digest {digest} in this node's marketplace (soma market ls {name})"
    )]
    UnknownDigest {
        /// `author/name`.
        name: String,
        /// The manifest digest.
        digest: Digest,
    },
    /// The lockfile pins a version outside the range asked for.
    #[error(
        "{path} pins `{name}` to {pinned}, which is outside {range:?}: run `soma market install {name}@{range}` to re-pin it"
    )]
    PinOutsideRange {
        /// The lockfile.
        path: PathBuf,
        /// `author/name`.
        name: String,
        /// The pinned version.
        pinned: String,
        /// The range asked for.
        range: String,
    },
    /// The lockfile could not be read, parsed or written.
    #[error("lockfile {path}: {message}")]
    Lock {
        /// The lockfile.
        path: PathBuf,
        /// What went wrong and what to do.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A reviewer tried to approve a version that is not awaiting approval
    /// after a passed automated review.
    #[error("{id} cannot be approved: it is {state} and {why}")]
    NotApprovable {
        /// `author/name@version`.
        id: String,
        /// Its current state.
        state: SubmissionState,
        /// Why not, and what to do.
        why: &'static str,
    },
    /// A reviewer's rejection needs a reason (it is recorded for the author).
    #[error("rejecting {id} needs a reason the author can act on: pass --reason \"…\"")]
    ReasonRequired {
        /// `author/name@version`.
        id: String,
    },
    /// The automated review could not run (not: the version failed it).
    #[error("the review of {id} could not run")]
    Review {
        /// `author/name@version`.
        id: String,
        /// Why.
        #[source]
        source: Box<ReviewError>,
    },
    /// The cached component is not the one the submission recorded.
    #[error(
        "{id}: the component pulled is {found}, but the submission recorded {expected}; the registry or the blob cache changed under it (soma cache gc, then re-run)"
    )]
    ComponentMismatch {
        /// `author/name@version`.
        id: String,
        /// The recorded component digest.
        expected: Digest,
        /// What was read.
        found: Digest,
    },
    /// Another process kept the search index's writer lock past the retries.
    #[error(
        "the search index {} is held for writing by another process (a `soma daemon` on this data directory, or another `soma market` command); retried for {waited_ms} ms: stop that process or let it finish, then run `soma market reindex` (or repeat the command)",
        dir.display()
    )]
    SearchLocked {
        /// The index directory.
        dir: PathBuf,
        /// How long the retries waited, ms.
        waited_ms: u64,
    },
    /// The search index could not be opened or written.
    #[error("the search index could not be updated")]
    Search(#[source] Box<SearchError>),
    /// A registry operation (push, sign, pull) failed or was refused.
    #[error(transparent)]
    Oci(#[from] OciError),
    /// A key could not be read, or a signature did not verify.
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

impl MarketError {
    /// Whether trying again later may succeed (the shared store was
    /// unreachable or busy; nothing was written).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Shared(e) if e.is_retryable())
    }
}

/// Wrap a storage error.
pub(crate) fn storage(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> MarketError {
    MarketError::Storage(e.into())
}
