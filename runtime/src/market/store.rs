//! The marketplace's authors and versions, in the node database (redb,
//! beside the ledger and the run journal) or on the fleet's shared
//! PostgreSQL store ([`Records`]):
//!
//! ```text
//! market_authors    author name → Author (JSON: public key PEM, key id, registered)
//! market_versions   "author/name@version" → Submission (JSON: listing, digests, state, review)
//! ```
//!
//! A version is immutable: its component digest never changes once
//! submitted ([`Market::submit`] refuses a different one and returns the
//! record for the same one). State moves only forward along
//! `submitted → [awaiting-approval →] approved | rejected → published
//! [⇄ under-maintenance] → yanked | deprecated` (`state.rs` has the
//! rules), and every move is appended to the record's history. Each write
//! is one durable transaction ([`Records::write`]: serialized per table,
//! across the fleet on PostgreSQL); reads never block writers.

use serde::{Deserialize, Serialize};

pub use super::state::SubmissionState;
use super::{
    error::{MarketError, storage},
    listing::{Listing, check_author},
    records::{Records, Table},
};
use crate::{digest::Digest, verify::PublicKey};

/// The most author namespaces one daemon tenant may register (a bound on
/// what a tenant can make the node store; the operator's are not counted).
pub const MAX_AUTHORS_PER_TENANT: usize = 16;

/// Milliseconds since the Unix epoch, now.
pub use soma_host_api::meter::now_ms;

/// A registered author: a namespace and the key that signs in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    /// The namespace (`acme` in `acme/summarize`).
    pub name: String,
    /// The public key, PEM (SPKI).
    pub public_key: String,
    /// The key's id (`sha256:` of its DER).
    pub key_id: String,
    /// When it was registered (Unix ms).
    pub registered_ms: u64,
    /// The daemon tenant that owns the namespace (registered over
    /// `POST /v1/market/authors`); `None`: the operator's (registered with
    /// the CLI on the node). Only the owner may submit into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl Author {
    /// The parsed public key.
    pub fn key(&self) -> Result<PublicKey, MarketError> {
        Ok(PublicKey::from_pem(&self.public_key)?)
    }

    /// Whether `tenant` owns this namespace (`None`: the operator).
    pub fn owned_by(&self, tenant: Option<&str>) -> bool {
        self.tenant.as_deref() == tenant
    }
}

/// The statement an author signs with its private key to prove it holds
/// the key it registers for `name`, for `tenant` (empty for the operator):
/// `soma-market-author-v1\n<name>\n<tenant>\n`. Binding the tenant means a
/// proof made for one tenant cannot register the namespace for another.
pub fn author_statement(name: &str, tenant: Option<&str>) -> String {
    format!("soma-market-author-v1\n{name}\n{}\n", tenant.unwrap_or(""))
}

/// The review's verdict as stored on a submission. The evidence is the
/// review's own document (opaque here); `reasons` are its reason codes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewRecord {
    /// Whether every step passed.
    pub passed: bool,
    /// Reason codes of the failed steps (empty when passed).
    pub reasons: Vec<String>,
    /// The review's evidence document.
    pub evidence: serde_json::Value,
    /// When it was recorded (Unix ms).
    pub recorded_ms: u64,
    /// A reviewer's decision on top of the automated review, if policy
    /// asked for one and it was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<ManualDecision>,
}

/// A reviewer's manual decision (`[market] manual_approval`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualDecision {
    /// Approved (true) or rejected.
    pub approved: bool,
    /// Who decided.
    pub reviewer: String,
    /// Why, if given (required to reject).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When (Unix ms).
    pub at_ms: u64,
}

/// Consecutive nightly re-test failures after which a published version
/// goes `under-maintenance`.
pub const RETEST_FAILURES_FOR_MAINTENANCE: u32 = 3;
/// How long a version may stay `under-maintenance` before a re-test
/// deprecates it: 30 days, in ms.
pub const MAINTENANCE_DEPRECATES_AFTER_MS: u64 = 30 * 24 * 3600 * 1000;

/// The nightly re-tests of a published version (`soma market retest`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetestRecord {
    /// Failed re-tests in a row (a pass resets it to 0).
    pub consecutive_failures: u32,
    /// Whether the last re-test passed.
    pub last_passed: bool,
    /// Reason codes of the last re-test's failed smoke runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_reasons: Vec<String>,
    /// The last re-test's smoke evidence.
    #[serde(default)]
    pub last_evidence: serde_json::Value,
    /// When the last re-test ran (Unix ms).
    pub last_ms: u64,
    /// When the version went under maintenance (Unix ms), while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_since_ms: Option<u64>,
}

/// One state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The new state.
    pub state: SubmissionState,
    /// When (Unix ms).
    pub at_ms: u64,
    /// Why, if given (a reason, the signer's key id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One submitted version: the listing, the signed artifact and its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// The author (the listing's namespace).
    pub author: String,
    /// The validated listing.
    pub listing: Listing,
    /// The repository, `registry/author/name` (no tag, no digest).
    pub repository: String,
    /// The manifest digest both signatures are on.
    pub digest: Digest,
    /// The component (layer) digest: what immutability compares.
    pub component: Digest,
    /// Size of the component, bytes.
    pub size: u64,
    /// The current state.
    pub state: SubmissionState,
    /// The review, once recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewRecord>,
    /// When it was submitted (Unix ms).
    pub submitted_ms: u64,
    /// When the marketplace published it (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_ms: Option<u64>,
    /// Every state change, oldest first.
    pub history: Vec<Transition>,
    /// The nightly re-tests, once one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retest: Option<RetestRecord>,
}

impl Submission {
    /// `author/name@version`.
    pub fn id(&self) -> String {
        self.listing.id()
    }

    /// `registry/author/name@sha256:…`: what a pin pulls.
    pub fn pinned_reference(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }
}

/// What [`Market::submit`] stores: the signed artifact of a listing.
#[derive(Debug, Clone)]
pub struct NewSubmission {
    /// The validated listing.
    pub listing: Listing,
    /// `registry/author/name`.
    pub repository: String,
    /// The manifest digest (author-signed).
    pub digest: Digest,
    /// The component digest.
    pub component: Digest,
    /// The component's size.
    pub size: u64,
}

/// The marketplace's authors and versions. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Market {
    records: Records,
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, MarketError> {
    serde_json::from_slice(bytes).map_err(|e| MarketError::Corrupt {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

/// The reason code a reviewer's rejection adds to the review's reasons.
pub const REVIEWER_REJECTED: &str = "reviewer-rejected";

/// Move `submission` to `to` at `at_ms` (checked against the state
/// machine), appending to its history.
fn apply(
    submission: &mut Submission,
    to: SubmissionState,
    note: Option<String>,
    at_ms: u64,
) -> Result<(), MarketError> {
    submission
        .state
        .allows(to)
        .map_err(|hint| MarketError::BadTransition {
            id: submission.id(),
            from: submission.state,
            to,
            hint,
        })?;
    submission.state = to;
    submission.history.push(Transition {
        state: to,
        at_ms,
        note,
    });
    if to == SubmissionState::Published && submission.published_ms.is_none() {
        submission.published_ms = Some(at_ms);
    }
    Ok(())
}

impl Market {
    /// The marketplace in `records` (a node database: nothing is opened
    /// until used).
    pub fn new(records: impl Into<Records>) -> Self {
        Self {
            records: records.into(),
        }
    }

    /// Where its tables are.
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// Register `name` with `key`, owned by the operator (no tenant).
    /// Registering the same name with the same key again returns the
    /// existing record; a taken name or an already registered key is
    /// refused. Cost: one durable write transaction.
    pub fn register_author(&self, name: &str, key: &PublicKey) -> Result<Author, MarketError> {
        self.register_author_for(name, key, None)
    }

    /// Register `name` with `key` for `tenant` (`None`: the operator) once
    /// `proof` — `key`'s signature over [`author_statement`]`(name, tenant)`
    /// — verifies: nobody registers a key it does not hold. The same name,
    /// key and owner again returns the existing record; a name another
    /// tenant owns is [`MarketError::NamespaceOwned`]. Cost: one signature
    /// check and one durable write transaction.
    pub fn register_author_proven(
        &self,
        name: &str,
        key: &PublicKey,
        tenant: Option<&str>,
        proof: &str,
    ) -> Result<Author, MarketError> {
        key.verify(author_statement(name, tenant).as_bytes(), proof)
            .map_err(|reason| MarketError::BadProof {
                name: name.to_owned(),
                reason,
            })?;
        self.register_author_for(name, key, tenant)
    }

    fn register_author_for(
        &self,
        name: &str,
        key: &PublicKey,
        tenant: Option<&str>,
    ) -> Result<Author, MarketError> {
        check_author(name).map_err(|reason| MarketError::BadName {
            text: name.to_owned(),
            reason,
        })?;
        let key_id = key.id();
        self.records.write(Table::Authors, |table| {
            if let Some(existing) = table.get(name)? {
                let existing: Author = decode(name, &existing)?;
                if !existing.owned_by(tenant) {
                    return Err(MarketError::NamespaceOwned {
                        name: name.to_owned(),
                    });
                }
                if existing.key_id == key_id {
                    return Ok(existing);
                }
                return Err(MarketError::AuthorExists {
                    name: name.to_owned(),
                    key_id: existing.key_id,
                });
            }
            let mut owned = 0;
            let mut taken = None;
            table.scan("", &mut |k, v| {
                let other: Author = decode(k, v)?;
                if other.key_id == key_id {
                    taken = Some(other.name);
                    return Ok(false);
                }
                if tenant.is_some() && other.owned_by(tenant) {
                    owned += 1;
                }
                Ok(true)
            })?;
            if let Some(author) = taken {
                return Err(MarketError::KeyTaken {
                    key_id: key_id.clone(),
                    author,
                });
            }
            if owned >= MAX_AUTHORS_PER_TENANT {
                return Err(MarketError::TooManyAuthors {
                    max: MAX_AUTHORS_PER_TENANT,
                });
            }
            let author = Author {
                name: name.to_owned(),
                public_key: key.to_pem()?,
                key_id,
                registered_ms: now_ms(),
                tenant: tenant.map(str::to_owned),
            };
            let bytes = serde_json::to_vec(&author).map_err(storage)?;
            table.put(name, &bytes)?;
            Ok(author)
        })
    }

    /// The author registered as `name`. Cost: one read transaction.
    pub fn author(&self, name: &str) -> Result<Author, MarketError> {
        self.authors()?
            .into_iter()
            .find(|a| a.name == name)
            .ok_or_else(|| MarketError::NoSuchAuthor {
                name: name.to_owned(),
            })
    }

    /// Every registered author, by name. Cost: one read transaction, a scan.
    pub fn authors(&self) -> Result<Vec<Author>, MarketError> {
        self.records.read(Table::Authors, |table| {
            let mut out = Vec::new();
            table.scan("", &mut |k, v| {
                out.push(decode(k, v)?);
                Ok(true)
            })?;
            Ok(out)
        })
    }

    /// Check that `key` may sign in `namespace`: it must be the key that
    /// author registered. A key registered by another author is a foreign
    /// namespace; any other key is the wrong key. Cost: one read transaction.
    pub fn check_signer(&self, namespace: &str, key: &PublicKey) -> Result<Author, MarketError> {
        let key_id = key.id();
        let authors = self.authors()?;
        let owner = authors.iter().find(|a| a.name == namespace);
        match owner {
            Some(author) if author.key_id == key_id => Ok(author.clone()),
            _ => {
                if let Some(other) = authors.iter().find(|a| a.key_id == key_id) {
                    return Err(MarketError::ForeignNamespace {
                        namespace: namespace.to_owned(),
                        key_author: other.name.clone(),
                    });
                }
                match owner {
                    Some(author) => Err(MarketError::WrongAuthorKey {
                        author: author.name.clone(),
                        expected: author.key_id.clone(),
                        found: key_id,
                    }),
                    None => Err(MarketError::NoSuchAuthor {
                        name: namespace.to_owned(),
                    }),
                }
            }
        }
    }

    /// The version `id` (`author/name@version`), if submitted. Cost: one read transaction.
    pub fn get(&self, id: &str) -> Result<Option<Submission>, MarketError> {
        self.records.read(Table::Versions, |table| {
            table.get(id)?.map(|v| decode(id, &v)).transpose()
        })
    }

    /// The versions whose id starts with `prefix`, ordered by name then
    /// semver. Cost: one read transaction and a range scan.
    fn versions_under(&self, prefix: &str) -> Result<Vec<Submission>, MarketError> {
        let mut out: Vec<Submission> = self.records.read(Table::Versions, |table| {
            let mut out = Vec::new();
            table.scan(prefix, &mut |k, v| {
                out.push(decode(k, v)?);
                Ok(true)
            })?;
            Ok(out)
        })?;
        out.sort_by(|a, b| {
            (a.listing.name.as_str(), &a.listing.version)
                .cmp(&(b.listing.name.as_str(), &b.listing.version))
        });
        Ok(out)
    }

    /// Every version of `name` (`author/name`), or of everything when
    /// `name` is `None`, ordered by name then semver. Cost: one read
    /// transaction and a range scan.
    pub fn versions(&self, name: Option<&str>) -> Result<Vec<Submission>, MarketError> {
        self.versions_under(&name.map(|n| format!("{n}@")).unwrap_or_default())
    }

    /// The versions waiting for a review (`submitted`: the automated
    /// review has not decided; `awaiting-approval`: a reviewer must), oldest
    /// submission first: `limit` of them from `offset`, and how many wait in
    /// all. Cost: one read transaction and a scan of every version: a
    /// substring check of its row, then only the waiting ones parsed for
    /// their state and time; only the page's versions are decoded whole.
    pub fn awaiting_review(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<(Vec<Submission>, usize), MarketError> {
        #[derive(Deserialize)]
        struct Head {
            state: SubmissionState,
            submitted_ms: u64,
        }
        // Rows are compact JSON: a waiting version's row holds one of these
        // literally (its top-level `state`), so the others are skipped
        // without parsing (a substring scan; a false hit is parsed).
        const WAITING: [&str; 2] = [r#""state":"submitted""#, r#""state":"awaiting-approval""#];
        self.records.read(Table::Versions, |table| {
            let mut waiting: Vec<(u64, String)> = Vec::new();
            table.scan("", &mut |k, v| {
                let candidate = match std::str::from_utf8(v) {
                    Ok(text) => WAITING.iter().any(|w| text.contains(w)),
                    Err(_) => true,
                };
                if candidate {
                    let head: Head = decode(k, v)?;
                    if matches!(
                        head.state,
                        SubmissionState::Submitted | SubmissionState::AwaitingApproval
                    ) {
                        waiting.push((head.submitted_ms, k.to_owned()));
                    }
                }
                Ok(true)
            })?;
            waiting.sort();
            let total = waiting.len();
            let mut page = Vec::with_capacity(limit.min(total));
            for (_, id) in waiting.iter().skip(offset).take(limit) {
                if let Some(v) = table.get(id)? {
                    page.push(decode(id, &v)?);
                }
            }
            Ok((page, total))
        })
    }

    /// Every version in namespace `author`, ordered by name then semver.
    /// Cost: one read transaction and a range scan over that namespace only.
    pub fn author_versions(&self, author: &str) -> Result<Vec<Submission>, MarketError> {
        self.versions_under(&format!("{author}/"))
    }

    /// Store a new submission (state `submitted`). The same version with
    /// the same component digest returns the existing record (idempotent,
    /// `false`); a different component digest is refused
    /// ([`MarketError::VersionImmutable`]). Cost: one durable write transaction.
    pub fn submit(&self, new: NewSubmission) -> Result<(Submission, bool), MarketError> {
        let id = new.listing.id();
        self.records.write(Table::Versions, |table| {
            if let Some(existing) = table.get(&id)? {
                let existing: Submission = decode(&id, &existing)?;
                if existing.component == new.component {
                    return Ok((existing, false));
                }
                return Err(MarketError::VersionImmutable {
                    id: id.clone(),
                    existing: existing.component,
                    given: new.component,
                });
            }
            let now = now_ms();
            let submission = Submission {
                author: new.listing.author().to_owned(),
                listing: new.listing,
                repository: new.repository,
                digest: new.digest,
                component: new.component,
                size: new.size,
                state: SubmissionState::Submitted,
                review: None,
                submitted_ms: now,
                published_ms: None,
                history: vec![Transition {
                    state: SubmissionState::Submitted,
                    at_ms: now,
                    note: None,
                }],
                retest: None,
            };
            let bytes = serde_json::to_vec(&submission).map_err(storage)?;
            table.put(&id, &bytes)?;
            Ok((submission, true))
        })
    }

    /// Move `id` to `to` (checked against the state machine), recording
    /// `note`; `edit` may change the record in the same transaction.
    /// Moving to the state it is already in is a no-op returning the record.
    /// Cost: one durable write transaction.
    pub fn transition(
        &self,
        id: &str,
        to: SubmissionState,
        note: Option<String>,
        edit: impl FnOnce(&mut Submission),
    ) -> Result<Submission, MarketError> {
        self.update(id, |submission| {
            if submission.state == to && !to.is_review_decision() {
                // Any move to the current state other than a (re-)recorded
                // review changes nothing.
                return Ok(false);
            }
            apply(submission, to, note, now_ms())?;
            edit(submission);
            Ok(true)
        })
    }

    /// Read `id`, let `change` modify it (returning whether it did), and
    /// write it back in the same durable transaction if it did.
    fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut Submission) -> Result<bool, MarketError>,
    ) -> Result<Submission, MarketError> {
        self.records.write(Table::Versions, |table| {
            let mut submission: Submission = match table.get(id)? {
                Some(v) => decode(id, &v)?,
                None => {
                    return Err(MarketError::NoSuchVersion { id: id.to_owned() });
                }
            };
            if !change(&mut submission)? {
                return Ok(submission);
            }
            let bytes = serde_json::to_vec(&submission).map_err(storage)?;
            table.put(id, &bytes)?;
            Ok(submission)
        })
    }

    /// Record the review of `id`: `passed` moves it to `approved`, else to
    /// `rejected`, with the reason codes and the review's evidence document
    /// stored on the submission. A later review (a re-run, or a reviewer's
    /// manual decision) replaces the earlier one while the version is not
    /// yet published. Cost: one durable write transaction.
    pub fn record_review(
        &self,
        id: &str,
        passed: bool,
        reasons: Vec<String>,
        evidence: serde_json::Value,
    ) -> Result<Submission, MarketError> {
        let to = if passed {
            SubmissionState::Approved
        } else {
            SubmissionState::Rejected
        };
        self.record_review_as(id, to, passed, reasons, evidence)
    }

    /// Record a review that passed while the marketplace's policy requires
    /// a reviewer (`[market] manual_approval`): the version becomes
    /// `awaiting-approval` until [`Market::approve`] or [`Market::reject`].
    /// Cost: one durable write transaction.
    pub fn record_review_awaiting_approval(
        &self,
        id: &str,
        evidence: serde_json::Value,
    ) -> Result<Submission, MarketError> {
        self.record_review_as(
            id,
            SubmissionState::AwaitingApproval,
            true,
            Vec::new(),
            evidence,
        )
    }

    fn record_review_as(
        &self,
        id: &str,
        to: SubmissionState,
        passed: bool,
        reasons: Vec<String>,
        evidence: serde_json::Value,
    ) -> Result<Submission, MarketError> {
        let note = (!reasons.is_empty()).then(|| reasons.join(","));
        self.transition(id, to, note, |s| {
            s.review = Some(ReviewRecord {
                passed,
                reasons,
                evidence,
                recorded_ms: now_ms(),
                manual: None,
            });
        })
    }

    /// A reviewer approves `id`, which must be `awaiting-approval` (or
    /// already approved by a reviewer: a no-op) after an automated review
    /// that passed; anything else is refused with
    /// [`MarketError::NotApprovable`]. `reviewer` and `reason` go into the
    /// history. Cost: one durable write transaction.
    pub fn approve(
        &self,
        id: &str,
        reviewer: &str,
        reason: Option<String>,
    ) -> Result<Submission, MarketError> {
        self.update(id, |s| {
            let passed = s.review.as_ref().is_some_and(|r| r.passed);
            let decided = s.review.as_ref().and_then(|r| r.manual.as_ref());
            if s.state == SubmissionState::Approved && decided.is_some_and(|d| d.approved) {
                return Ok(false);
            }
            if s.state != SubmissionState::AwaitingApproval || !passed {
                return Err(MarketError::NotApprovable {
                    id: s.id(),
                    state: s.state,
                    why: match &s.review {
                        None => "it has not been reviewed: run `soma market review ID` first",
                        Some(r) if !r.passed => {
                            "its automated review failed: the author must fix the reasons and submit a new version (or re-run the review)"
                        }
                        Some(_) => "it is not awaiting a reviewer",
                    },
                });
            }
            let at = now_ms();
            let note = match &reason {
                Some(r) => format!("approved by {reviewer}: {r}"),
                None => format!("approved by {reviewer}"),
            };
            apply(s, SubmissionState::Approved, Some(note), at)?;
            if let Some(r) = s.review.as_mut() {
                r.manual = Some(ManualDecision {
                    approved: true,
                    reviewer: reviewer.to_owned(),
                    reason,
                    at_ms: at,
                });
            }
            Ok(true)
        })
    }

    /// A reviewer rejects `id` (not yet published) for `reason`, which is
    /// required ([`MarketError::ReasonRequired`] if blank). The automated
    /// review stays on the record; the decision is added to it and to the
    /// history. Cost: one durable write transaction.
    pub fn reject(
        &self,
        id: &str,
        reviewer: &str,
        reason: &str,
    ) -> Result<Submission, MarketError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(MarketError::ReasonRequired { id: id.to_owned() });
        }
        self.update(id, |s| {
            let at = now_ms();
            apply(
                s,
                SubmissionState::Rejected,
                Some(format!("rejected by {reviewer}: {reason}")),
                at,
            )?;
            let decision = ManualDecision {
                approved: false,
                reviewer: reviewer.to_owned(),
                reason: Some(reason.to_owned()),
                at_ms: at,
            };
            match s.review.as_mut() {
                Some(r) => {
                    r.passed = false;
                    if !r.reasons.iter().any(|c| c == REVIEWER_REJECTED) {
                        r.reasons.push(REVIEWER_REJECTED.to_owned());
                    }
                    r.manual = Some(decision);
                }
                None => {
                    s.review = Some(ReviewRecord {
                        passed: false,
                        reasons: vec![REVIEWER_REJECTED.to_owned()],
                        evidence: serde_json::Value::Null,
                        recorded_ms: at,
                        manual: Some(decision),
                    });
                }
            }
            Ok(true)
        })
    }

    /// Record one nightly re-test of the listed (published or under
    /// maintenance) version `id`, run at `at_ms` (the caller's clock, so a
    /// test can age a version without sleeping): a pass resets the failure
    /// count and brings an `under-maintenance` version back to `published`;
    /// the [`RETEST_FAILURES_FOR_MAINTENANCE`]th failure in a row puts a
    /// published version `under-maintenance`; a version under maintenance
    /// for [`MAINTENANCE_DEPRECATES_AFTER_MS`] or more that fails again
    /// becomes `deprecated`. Every state change is in the history.
    /// Cost: one durable write transaction.
    pub fn record_retest(
        &self,
        id: &str,
        passed: bool,
        reasons: Vec<String>,
        evidence: serde_json::Value,
        at_ms: u64,
    ) -> Result<Submission, MarketError> {
        self.update(id, |s| {
            if !s.state.is_listed() {
                return Err(MarketError::BadTransition {
                    id: s.id(),
                    from: s.state,
                    to: SubmissionState::UnderMaintenance,
                    hint: ": only published versions are re-tested",
                });
            }
            let previous = s.retest.take();
            let failures = if passed {
                0
            } else {
                previous
                    .as_ref()
                    .map_or(0, |r| r.consecutive_failures)
                    .saturating_add(1)
            };
            let mut since = previous.and_then(|r| r.maintenance_since_ms);
            if passed && s.state == SubmissionState::UnderMaintenance {
                apply(
                    s,
                    SubmissionState::Published,
                    Some("re-test passed".to_owned()),
                    at_ms,
                )?;
                since = None;
            }
            if !passed
                && s.state == SubmissionState::Published
                && failures >= RETEST_FAILURES_FOR_MAINTENANCE
            {
                apply(
                    s,
                    SubmissionState::UnderMaintenance,
                    Some(format!(
                        "{failures} re-tests failed in a row: {}",
                        reasons.join(",")
                    )),
                    at_ms,
                )?;
                since = Some(at_ms);
            }
            if !passed
                && s.state == SubmissionState::UnderMaintenance
                && since.is_some_and(|t| at_ms.saturating_sub(t) >= MAINTENANCE_DEPRECATES_AFTER_MS)
            {
                apply(
                    s,
                    SubmissionState::Deprecated,
                    Some("under maintenance for 30 days".to_owned()),
                    at_ms,
                )?;
            }
            s.retest = Some(RetestRecord {
                consecutive_failures: failures,
                last_passed: passed,
                last_reasons: reasons,
                last_evidence: evidence,
                last_ms: at_ms,
                maintenance_since_ms: since,
            });
            Ok(true)
        })
    }

    /// The published version of `name` whose manifest digest is `digest`
    /// (yanked and deprecated included: a pin keeps resolving). Cost: one
    /// read transaction and a range scan of the name.
    pub fn by_digest(&self, name: &str, digest: &Digest) -> Result<Submission, MarketError> {
        self.versions(Some(name))?
            .into_iter()
            .find(|s| s.digest == *digest && s.state.was_published())
            .ok_or_else(|| MarketError::UnknownDigest {
                name: name.to_owned(),
                digest: *digest,
            })
    }

    /// The newest `published` version of `name` matching `range` and
    /// published at least `min_age_ms` before `now_ms` (yanked, deprecated
    /// and unpublished versions are passed over; the error lists why each
    /// candidate was). Cost: one read transaction and a range scan.
    pub fn newest(
        &self,
        name: &str,
        range: &semver::VersionReq,
        min_age_ms: u64,
        now_ms: u64,
    ) -> Result<Submission, MarketError> {
        let mut passed_over = Vec::new();
        let mut best: Option<Submission> = None;
        for s in self.versions(Some(name))? {
            let v = &s.listing.version;
            if !range.matches(v) {
                continue;
            }
            if !s.state.is_listed() {
                passed_over.push(format!("{v} is {}", s.state));
                continue;
            }
            let published = s.published_ms.unwrap_or(0);
            if now_ms.saturating_sub(published) < min_age_ms {
                passed_over.push(format!(
                    "{v} was published less than market.min_release_age_secs ago"
                ));
                continue;
            }
            if best.as_ref().is_none_or(|b| b.listing.version < *v) {
                best = Some(s);
            }
        }
        best.ok_or_else(|| MarketError::NoMatch {
            name: name.to_owned(),
            range: range.to_string(),
            detail: if passed_over.is_empty() {
                " (soma market ls lists the versions)".to_owned()
            } else {
                format!(" ({})", passed_over.join("; "))
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::verify::KeyPair;
    use soma_host_api::storage::LazyDatabase;

    fn market(dir: &std::path::Path) -> Market {
        Market::new(Arc::new(LazyDatabase::new(dir.join("soma.redb"))))
    }

    fn listing(version: &str) -> Listing {
        Listing::parse(
            &format!(
                "name = \"acme/calc\"\nversion = \"{version}\"\nsummary = \"s\"\nlicense = \"MIT\"\n"
            ),
            std::path::Path::new("listing.toml"),
        )
        .expect("listing")
    }

    fn new(version: &str, component: &[u8]) -> NewSubmission {
        NewSubmission {
            listing: listing(version),
            repository: "127.0.0.1:5000/acme/calc".into(),
            digest: Digest::of(version.as_bytes()),
            component: Digest::of(component),
            size: 1,
        }
    }

    #[test]
    fn authors_own_their_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = market(dir.path());
        let (acme, evil) = (KeyPair::generate().public(), KeyPair::generate().public());
        m.register_author("acme", &acme).expect("register");
        assert_eq!(
            m.register_author("acme", &acme).expect("again").name,
            "acme"
        );
        assert!(matches!(
            m.register_author("acme", &evil),
            Err(MarketError::AuthorExists { .. })
        ));
        assert!(matches!(
            m.register_author("other", &acme),
            Err(MarketError::KeyTaken { .. })
        ));
        assert!(matches!(
            m.register_author("Bad/Name", &evil),
            Err(MarketError::BadName { .. })
        ));
        m.register_author("evil", &evil).expect("register evil");
        m.check_signer("acme", &acme).expect("own namespace");
        assert!(matches!(
            m.check_signer("acme", &evil),
            Err(MarketError::ForeignNamespace { .. })
        ));
        assert!(matches!(
            m.check_signer("acme", &KeyPair::generate().public()),
            Err(MarketError::WrongAuthorKey { .. })
        ));
        assert!(matches!(
            m.check_signer("nobody", &acme),
            Err(MarketError::ForeignNamespace { .. })
        ));
    }

    #[test]
    fn tenants_register_only_keys_they_hold_and_namespaces_nobody_else_owns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = market(dir.path());
        let (acme, evil) = (KeyPair::generate(), KeyPair::generate());
        let proof = |key: &KeyPair, name: &str, tenant: &str| {
            key.sign(author_statement(name, Some(tenant)).as_bytes())
        };
        // A proof signed by another key, or made for another tenant, fails.
        assert!(matches!(
            m.register_author_proven(
                "acme",
                &acme.public(),
                Some("a"),
                &proof(&evil, "acme", "a")
            ),
            Err(MarketError::BadProof { .. })
        ));
        assert!(matches!(
            m.register_author_proven(
                "acme",
                &acme.public(),
                Some("b"),
                &proof(&acme, "acme", "a")
            ),
            Err(MarketError::BadProof { .. })
        ));
        let a = m
            .register_author_proven(
                "acme",
                &acme.public(),
                Some("a"),
                &proof(&acme, "acme", "a"),
            )
            .expect("register");
        assert_eq!(a.tenant.as_deref(), Some("a"));
        assert!(a.owned_by(Some("a")) && !a.owned_by(None));
        // Tenant b, holding the same key, still cannot take a's namespace;
        // nor can the operator's CLI.
        assert!(matches!(
            m.register_author_proven(
                "acme",
                &acme.public(),
                Some("b"),
                &proof(&acme, "acme", "b")
            ),
            Err(MarketError::NamespaceOwned { .. })
        ));
        assert!(matches!(
            m.register_author("acme", &acme.public()),
            Err(MarketError::NamespaceOwned { .. })
        ));
        // A tenant owns at most MAX_AUTHORS_PER_TENANT namespaces (a has one).
        let register = |name: &str, tenant: &str| {
            let key = KeyPair::generate();
            m.register_author_proven(
                name,
                &key.public(),
                Some(tenant),
                &proof(&key, name, tenant),
            )
        };
        for k in 1..MAX_AUTHORS_PER_TENANT {
            register(&format!("a{k}"), "a").expect("within the cap");
        }
        assert!(matches!(
            register("one-too-many", "a"),
            Err(MarketError::TooManyAuthors { .. })
        ));
        register("b-own", "b").expect("another tenant has its own cap");
        // A record without a tenant (written before tenants) reads as the operator's.
        let old: Author =
            serde_json::from_str(r#"{"name":"x","public_key":"","key_id":"k","registered_ms":1}"#)
                .expect("old record");
        assert!(old.owned_by(None));
    }

    #[test]
    fn versions_are_immutable_and_move_forward_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = market(dir.path());
        let (s, created) = m.submit(new("1.0.0", b"one")).expect("submit");
        assert!(created);
        assert_eq!(s.state, SubmissionState::Submitted);
        let (again, created) = m.submit(new("1.0.0", b"one")).expect("idempotent");
        assert!(!created);
        assert_eq!(again, s);
        assert!(matches!(
            m.submit(new("1.0.0", b"two")),
            Err(MarketError::VersionImmutable { .. })
        ));
        let e = m
            .transition("acme/calc@1.0.0", SubmissionState::Published, None, |_| {})
            .expect_err("not reviewed");
        assert!(e.to_string().contains("review must approve"), "{e}");
        let rejected = m
            .record_review(
                "acme/calc@1.0.0",
                false,
                vec!["license-missing".into()],
                serde_json::json!({"steps": []}),
            )
            .expect("reject");
        assert_eq!(rejected.state, SubmissionState::Rejected);
        assert_eq!(
            rejected.review.as_ref().map(|r| r.reasons.clone()),
            Some(vec!["license-missing".to_owned()])
        );
        m.record_review("acme/calc@1.0.0", true, vec![], serde_json::json!({}))
            .expect("approve on re-review");
        let published = m
            .transition("acme/calc@1.0.0", SubmissionState::Published, None, |_| {})
            .expect("publish");
        assert!(published.published_ms.is_some());
        m.transition("acme/calc@1.0.0", SubmissionState::Yanked, None, |_| {})
            .expect("yank");
        assert!(matches!(
            m.transition("acme/calc@1.0.0", SubmissionState::Published, None, |_| {}),
            Err(MarketError::BadTransition { .. })
        ));
        assert_eq!(
            m.get("acme/calc@1.0.0")
                .expect("get")
                .expect("some")
                .history
                .len(),
            5
        );
    }

    #[test]
    fn newest_skips_unpublished_yanked_and_fresh_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = market(dir.path());
        for v in ["1.0.0", "1.1.0", "1.2.0", "2.0.0"] {
            m.submit(new(v, v.as_bytes())).expect("submit");
            if v != "1.2.0" {
                let id = format!("acme/calc@{v}");
                m.record_review(&id, true, vec![], serde_json::json!({}))
                    .expect("approve");
                m.transition(&id, SubmissionState::Published, None, |_| {})
                    .expect("publish");
            }
        }
        let range = semver::VersionReq::parse("^1").expect("range");
        let now = now_ms();
        assert_eq!(
            m.newest("acme/calc", &range, 0, now)
                .expect("newest")
                .listing
                .version
                .to_string(),
            "1.1.0"
        );
        m.transition("acme/calc@1.1.0", SubmissionState::Yanked, None, |_| {})
            .expect("yank");
        assert_eq!(
            m.newest("acme/calc", &range, 0, now)
                .expect("newest")
                .listing
                .version
                .to_string(),
            "1.0.0"
        );
        // The yanked version still resolves by digest.
        let yanked = m.get("acme/calc@1.1.0").expect("get").expect("some");
        assert_eq!(
            m.by_digest("acme/calc", &yanked.digest)
                .expect("by digest")
                .id(),
            "acme/calc@1.1.0"
        );
        // A cooldown longer than any version's age passes them all over, saying why.
        let e = m
            .newest("acme/calc", &range, 60_000, now)
            .expect_err("cooldown");
        let text = e.to_string();
        assert!(
            text.contains("min_release_age_secs")
                && text.contains("1.2.0 is submitted")
                && text.contains("1.1.0 is yanked"),
            "{text}"
        );
    }

    fn published(m: &Market, version: &str) -> String {
        m.submit(new(version, version.as_bytes())).expect("submit");
        let id = format!("acme/calc@{version}");
        m.record_review(&id, true, vec![], serde_json::json!({}))
            .expect("approve");
        m.transition(&id, SubmissionState::Published, None, |_| {})
            .expect("publish");
        id
    }

    #[test]
    fn retests_move_a_version_to_maintenance_back_and_to_deprecated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = market(dir.path());
        let id = published(&m, "1.0.0");
        let fail = |at: u64| {
            m.record_retest(
                &id,
                false,
                vec!["smoke-trapped".into()],
                serde_json::json!([]),
                at,
            )
            .expect("record")
        };
        let t0 = 1_000_000;
        assert_eq!(fail(t0).state, SubmissionState::Published);
        assert_eq!(fail(t0 + 1).state, SubmissionState::Published);
        let s = fail(t0 + 2);
        assert_eq!(s.state, SubmissionState::UnderMaintenance);
        let r = s.retest.expect("record");
        assert_eq!(
            (r.consecutive_failures, r.maintenance_since_ms),
            (3, Some(t0 + 2))
        );
        // Still resolved by ranges while under maintenance.
        let range = semver::VersionReq::parse("^1").expect("range");
        assert_eq!(
            m.newest("acme/calc", &range, 0, t0 + 3)
                .expect("newest")
                .id(),
            id
        );
        // A pass brings it back and resets the count.
        let s = m
            .record_retest(&id, true, vec![], serde_json::json!([]), t0 + 4)
            .expect("pass");
        assert_eq!(s.state, SubmissionState::Published);
        assert_eq!(s.retest.as_ref().map(|r| r.consecutive_failures), Some(0));
        let first = m.get(&id).expect("get").expect("some").history[2].at_ms;
        assert_eq!(
            s.published_ms,
            Some(first),
            "the first publish time is kept"
        );
        for i in 0..3 {
            fail(t0 + 10 + i);
        }
        let since = t0 + 12;
        let s = fail(since + MAINTENANCE_DEPRECATES_AFTER_MS - 1);
        assert_eq!(
            s.state,
            SubmissionState::UnderMaintenance,
            "not yet 30 days"
        );
        let s = fail(since + MAINTENANCE_DEPRECATES_AFTER_MS);
        assert_eq!(s.state, SubmissionState::Deprecated);
        assert!(matches!(
            m.record_retest(&id, true, vec![], serde_json::json!([]), since),
            Err(MarketError::BadTransition { .. })
        ));
    }

    #[test]
    fn only_a_passed_review_awaiting_a_reviewer_is_approved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = market(dir.path());
        m.submit(new("1.0.0", b"one")).expect("submit");
        let id = "acme/calc@1.0.0";
        assert!(matches!(
            m.approve(id, "alice", None),
            Err(MarketError::NotApprovable { .. })
        ));
        m.record_review(
            id,
            false,
            vec!["smoke-trapped".into()],
            serde_json::json!({}),
        )
        .expect("reject");
        assert!(matches!(
            m.approve(id, "alice", None),
            Err(MarketError::NotApprovable { .. })
        ));
        let s = m
            .record_review_awaiting_approval(id, serde_json::json!({}))
            .expect("awaiting");
        assert_eq!(s.state, SubmissionState::AwaitingApproval);
        assert!(matches!(
            m.transition(id, SubmissionState::Published, None, |_| {}),
            Err(MarketError::BadTransition { .. })
        ));
        let s = m.approve(id, "alice", Some("ok".into())).expect("approve");
        assert_eq!(s.state, SubmissionState::Approved);
        assert_eq!(
            s.history.last().and_then(|t| t.note.as_deref()),
            Some("approved by alice: ok")
        );
        assert_eq!(
            m.approve(id, "alice", None).expect("again").history.len(),
            s.history.len()
        );
        assert_eq!(
            serde_json::to_value(SubmissionState::AwaitingApproval).expect("json"),
            "awaiting-approval"
        );
        assert_eq!(
            serde_json::to_value(SubmissionState::UnderMaintenance).expect("json"),
            "under-maintenance"
        );
    }
}
