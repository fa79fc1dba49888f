//! The submission pipeline between the store, the review and search:
//! [`review_submission`] runs the automated review of a submitted version
//! (its component read from the blob cache) and records it;
//! [`index_submission`] keeps the search index in step with one version
//! after publish, yank, deprecate or a re-test; [`retest`] is the nightly
//! re-run of every published version's examples.
//!
//! ```text
//! flow::accept ──▶ submitted ──review_submission──▶ approved | rejected
//!                                               └─▶ awaiting-approval (manual_approval)
//!                                                     ──Market::approve | reject──▶ approved | rejected
//! flow::publish ──▶ published ──index_submission──▶ search shows it
//! retest (nightly) ──3 failures──▶ under-maintenance ──30 days──▶ deprecated
//! ```
//!
//! Everything here blocks (compiles, calls, disk and registry I/O); the
//! daemon runs it on a blocking thread.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{
    error::MarketError,
    flow::Access,
    listing::Price,
    review::{self, Evidence, ReviewInput, ReviewReport, SignatureOutcome, Status},
    search::{self, PriceModel, ReviewState, SearchDoc, SearchError, SearchIndex},
    store::{Market, Submission, SubmissionState},
};
use crate::{
    Config, Engine,
    digest::Digest,
    oci::{self, OciError, PullOptions, Reference},
    verify::TrustPolicy,
};

/// How [`review_submission`] (and [`retest`]) run the review.
#[derive(Debug, Clone)]
pub struct ReviewOptions {
    /// OpenAI-compatible base URL for smoke runs of capsules that ask for
    /// llm; `None` denies llm to them.
    pub llm_fixture: Option<String>,
    /// The review's size limit, bytes (`[market] max_component_bytes`).
    pub max_component_bytes: usize,
    /// Policy: a passed review waits for a reviewer (`awaiting-approval`)
    /// instead of approving (`[market] manual_approval`).
    pub manual_approval: bool,
    /// How to pull the component again when the blob cache no longer has
    /// it (default: https unless loopback, docker's credentials).
    pub access: Access,
}

impl ReviewOptions {
    /// The options `[market]` of `config` asks for (`review_llm` as the llm
    /// endpoint, default access).
    pub fn from_config(config: &Config) -> Self {
        Self {
            llm_fixture: config.market.review_llm.clone(),
            max_component_bytes: config.market.max_component_bytes,
            manual_approval: config.market.manual_approval,
            access: Access::default(),
        }
    }
}

impl Default for ReviewOptions {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

/// What [`review_submission`] did: the record as stored and the report.
#[derive(Debug, Clone, Serialize)]
pub struct Reviewed {
    /// The submission after the review was recorded.
    pub submission: Submission,
    /// The review's report (also stored as the submission's evidence).
    pub report: ReviewReport,
}

/// Run the automated review of submitted version `id` (its component read
/// from the engine's blob cache) and record it on the submission.
///
/// The review's input comes from the stored listing (license, README,
/// examples) and `options`; its `signature` step records whether the
/// component still verifies with the author's registered key (a pull by
/// the pinned digest under that key: offline when cached, else from the
/// registry through `options.access`). A passed review approves the
/// version, or leaves it `awaiting-approval` when `options.manual_approval`;
/// a failed one rejects it with every failed step's reason code. A version
/// already published is refused before anything runs
/// ([`MarketError::BadTransition`]). Re-running replaces the earlier review.
///
/// Cost: one read transaction, a cache lookup (or a pull), the review
/// (one or two compiles, one call per example and up to three hostile
/// calls under ¼ of the limits: well under a second for the calculator),
/// one durable write transaction. Blocks.
pub fn review_submission(
    engine: &Engine,
    market: &Market,
    id: &str,
    options: &ReviewOptions,
) -> Result<Reviewed, MarketError> {
    let submission = market
        .get(id)?
        .ok_or_else(|| MarketError::NoSuchVersion { id: id.to_owned() })?;
    let to = if options.manual_approval {
        SubmissionState::AwaitingApproval
    } else {
        SubmissionState::Approved
    };
    submission
        .state
        .allows(to)
        .map_err(|hint| MarketError::BadTransition {
            id: id.to_owned(),
            from: submission.state,
            to,
            hint,
        })?;
    let (bytes, signature) = component(engine, market, &submission, &options.access)?;
    let listing = &submission.listing;
    let input = ReviewInput {
        license: Some(listing.license.clone()),
        readme: Some(listing.readme.clone()),
        examples: listing.examples.iter().map(|e| e.input.clone()).collect(),
        max_component_bytes: options.max_component_bytes,
        signature,
        llm_fixture: options.llm_fixture.clone(),
    };
    let report =
        review::review(&bytes, &input, engine.config()).map_err(|source| MarketError::Review {
            id: id.to_owned(),
            source: Box::new(source),
        })?;
    let evidence = serde_json::to_value(&report).map_err(super::error::storage)?;
    let submission = if report.approved() && options.manual_approval {
        market.record_review_awaiting_approval(id, evidence)?
    } else {
        market.record_review(id, report.approved(), reason_codes(&report), evidence)?
    };
    Ok(Reviewed { submission, report })
}

/// The reason codes of the report's failed steps, each once, in order.
pub fn reason_codes(report: &ReviewReport) -> Vec<String> {
    let mut codes: Vec<String> = Vec::new();
    for e in report.failures() {
        let code = serde_json::to_value(e.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if !codes.contains(&code) {
            codes.push(code);
        }
    }
    codes
}

/// The component of `submission`, digest-checked, and whether its author
/// signature verifies with the registered key. Served from the blob cache
/// when the digest is cached under the author's key; otherwise pulled
/// again through `access`. When the signature no longer verifies but the
/// component is cached, the bytes are still returned (the review records
/// `signature-invalid` beside every other finding).
fn component(
    engine: &Engine,
    market: &Market,
    submission: &Submission,
    access: &Access,
) -> Result<(Vec<u8>, SignatureOutcome), MarketError> {
    let id = submission.id();
    let author = market.author(&submission.author)?;
    let reference = Reference::parse(&submission.pinned_reference())?;
    let options = PullOptions {
        transport: access.transport.clone(),
        trust: TrustPolicy::keys(vec![author.key()?]),
        limits: access.limits,
        ..PullOptions::from_config(engine.config())
    };
    let pulled = access
        .auth(&reference)
        .and_then(|auth| oci::pull(engine.data(), &reference, &auth, &options));
    let (path, signature) = match pulled {
        Ok(p) => (
            p.component,
            SignatureOutcome::Verified {
                key: author.key_id.clone(),
            },
        ),
        Err(OciError::Untrusted(e)) => {
            let path = cached_blob(engine, &submission.component);
            if !path.is_file() {
                return Err(OciError::Untrusted(e).into());
            }
            (
                path,
                SignatureOutcome::Failed {
                    reason: e.to_string(),
                },
            )
        }
        Err(e) => return Err(e.into()),
    };
    let bytes = std::fs::read(&path).map_err(|error| {
        MarketError::Oci(OciError::Invalid(crate::LoadError::Read { path, error }))
    })?;
    let found = Digest::of(&bytes);
    if found != submission.component {
        return Err(MarketError::ComponentMismatch {
            id,
            expected: submission.component,
            found,
        });
    }
    Ok((bytes, signature))
}

/// Where the blob cache keeps a layer (`oci`'s layout: `<data>/blobs/sha256/<hex>`).
fn cached_blob(engine: &Engine, digest: &Digest) -> PathBuf {
    engine
        .data()
        .root()
        .join("blobs")
        .join("sha256")
        .join(digest.hex())
}

/// The search document of `submission`, or `None` when search must not
/// know it (never published). Yanked and deprecated versions get a
/// document flagged so (search hides them and shows another version of
/// the listing, if any). Reads the component from the blob cache (pulled
/// again under the author's key, default access, if evicted) and compiles
/// it for its imports, exports, kind and capabilities. Cost: a cache read
/// and a compile (AOT cache permitting, a deserialize). Blocks.
pub fn search_doc(
    engine: &Engine,
    market: &Market,
    submission: &Submission,
) -> Result<Option<SearchDoc>, MarketError> {
    if !submission.state.was_published() {
        return Ok(None);
    }
    let (bytes, _) = component(engine, market, submission, &Access::default())?;
    let capsule = engine
        .load(&bytes, &submission.pinned_reference())
        .map_err(|e| MarketError::Oci(OciError::Invalid(e)))?;
    let m = capsule.manifest();
    let listing = &submission.listing;
    let review = review_state(submission);
    Ok(Some(SearchDoc {
        listing: listing.name.clone(),
        version: listing.version.to_string(),
        summary: listing.summary.clone(),
        readme: listing.readme.clone(),
        keywords: listing.keywords.clone(),
        categories: listing.categories.clone(),
        kind: m.capsule_kind(),
        price: price_model(&listing.price),
        license: listing.license.clone(),
        imports: capsule.imports(engine.wasmtime()),
        exports: capsule.exports(engine.wasmtime()),
        capabilities: m.wants.words(),
        review,
        installs: 0,
        success_rate: None,
        yanked: submission.state == SubmissionState::Yanked,
        deprecated: submission.state == SubmissionState::Deprecated,
    }))
}

/// The review status search shows for a version.
fn review_state(submission: &Submission) -> ReviewState {
    match (submission.state, &submission.review) {
        (SubmissionState::UnderMaintenance, _) => ReviewState::UnderMaintenance,
        (_, Some(r)) if r.passed => ReviewState::Verified,
        _ => ReviewState::Unreviewed,
    }
}

/// Whether `doc` is what search should show of `submission` (its review
/// status, yanked and deprecated: what a state change alters).
fn indexed_as_is(doc: &SearchDoc, submission: &Submission) -> bool {
    doc.review == review_state(submission)
        && doc.yanked == (submission.state == SubmissionState::Yanked)
        && doc.deprecated == (submission.state == SubmissionState::Deprecated)
}

/// The search facet of a listing's price.
pub fn price_model(price: &Price) -> PriceModel {
    match price {
        Price::Free => PriceModel::Free,
        Price::PerCall { .. } => PriceModel::PerCall,
        Price::PerKiloTokens { .. } => PriceModel::PerKiloTokens,
        Price::PerEvent { .. } => PriceModel::PerEvent,
    }
}

/// How long [`index_submission`] retries while another process holds the
/// index's writer lock.
pub const INDEX_LOCK_RETRY: Duration = Duration::from_secs(3);

/// Keep the search index (`market::search::default_dir(data)`) in step with
/// one version after publish / yank / deprecate / retest: a published (or
/// under-maintenance) version is upserted with its review state, a yanked
/// or deprecated one is upserted flagged so search no longer shows it, a
/// version never published is left out (no-op). Installs and success rate
/// already indexed for the same version are kept.
///
/// Cost: [`search_doc`] (a cache read and a compile), then opening the
/// index for writing — which reads every listing file and rebuilds the
/// inverted index in memory (see the `market_search` bench's `open`
/// figure; tens of ms at 10,000 listings) — and one fsync'd listing file.
///
/// Locking: the index has one writer at a time (a file lock). When another
/// process holds it, this retries with backoff for [`INDEX_LOCK_RETRY`],
/// then fails with [`MarketError::SearchLocked`] naming the directory and
/// what to do; it never blocks forever. A process that keeps the index
/// open itself (the daemon) must not call this (its own lock would refuse
/// it): it upserts [`search_doc`]'s document through its handle.
pub fn index_submission(
    engine: &Engine,
    market: &Market,
    submission: &Submission,
) -> Result<(), MarketError> {
    let Some(mut doc) = search_doc(engine, market, submission)? else {
        return Ok(());
    };
    let mut index = open_index(&search::default_dir(engine.data()))?;
    if let Some(shown) = index.shown_version(&doc.listing)
        && shown.version == doc.version
    {
        doc.installs = shown.installs;
        doc.success_rate = shown.success_rate;
    }
    index
        .upsert(doc)
        .map_err(|e| MarketError::Search(Box::new(e)))
}

/// Rebuild the search index of `engine`'s data directory from every
/// version in the store (e.g. after versions were published before the
/// index existed, or after a [`MarketError::SearchLocked`]). Returns how
/// many documents were indexed. Cost: [`search_doc`] per published
/// version, then one rewrite of the index directory. Locks like
/// [`index_submission`].
pub fn reindex(engine: &Engine, market: &Market) -> Result<usize, MarketError> {
    let mut docs = Vec::new();
    for s in market.versions(None)? {
        if let Some(doc) = search_doc(engine, market, &s)? {
            docs.push(doc);
        }
    }
    let n = docs.len();
    open_index(&search::default_dir(engine.data()))?
        .rebuild(docs)
        .map_err(|e| MarketError::Search(Box::new(e)))?;
    Ok(n)
}

/// What [`sync_index`] did.
#[derive(Debug, Default)]
pub struct IndexSync {
    /// Versions whose search document was (re)written.
    pub updated: usize,
    /// Versions that could not be indexed (`author/name@version`, why):
    /// their component could not be read or compiled. The next sync
    /// tries them again.
    pub failed: Vec<(String, MarketError)>,
}

/// Bring the search index of `engine`'s data directory in step with every
/// version in `market`: on a fleet, other daemons publish, yank, deprecate
/// and re-test versions this node's index has not seen. A version indexed
/// as it is (same review status, yanked and deprecated flags) is left
/// alone without reading its component; any other published version gets
/// [`search_doc`] (a blob cache read, or a verified pull, and a compile)
/// and an upsert that keeps the installs and success rate indexed for it.
/// A version that cannot be indexed is reported and the others go on.
///
/// Cost: a scan of the versions, opening the index for writing (see
/// [`index_submission`]: it locks the same way), and the work above per
/// changed version only.
pub fn sync_index(engine: &Engine, market: &Market) -> Result<IndexSync, MarketError> {
    let versions = market.versions(None)?;
    let mut index = open_index(&search::default_dir(engine.data()))?;
    let mut done = IndexSync::default();
    for s in versions.iter().filter(|s| s.state.was_published()) {
        let indexed = index.version(&s.listing.name, &s.listing.version.to_string());
        if indexed.is_some_and(|d| indexed_as_is(d, s)) {
            continue;
        }
        let kept = indexed.map(|d| (d.installs, d.success_rate));
        match search_doc(engine, market, s) {
            Ok(Some(mut doc)) => {
                if let Some((installs, success_rate)) = kept {
                    doc.installs = installs;
                    doc.success_rate = success_rate;
                }
                index
                    .upsert(doc)
                    .map_err(|e| MarketError::Search(Box::new(e)))?;
                done.updated += 1;
            }
            Ok(None) => {}
            Err(e) => done.failed.push((s.id(), e)),
        }
    }
    Ok(done)
}

/// Open the index at `dir` for writing, retrying while another process
/// holds its lock (backoff 25 ms doubling to 400 ms, for
/// [`INDEX_LOCK_RETRY`] in all).
fn open_index(dir: &Path) -> Result<SearchIndex, MarketError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(25);
    loop {
        match SearchIndex::open(dir) {
            Ok(index) => return Ok(index),
            Err(SearchError::Locked { .. }) if started.elapsed() < INDEX_LOCK_RETRY => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(400));
            }
            Err(SearchError::Locked { dir }) => {
                return Err(MarketError::SearchLocked {
                    dir,
                    waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
            }
            Err(e) => return Err(MarketError::Search(Box::new(e))),
        }
    }
}

/// One version's nightly re-test.
#[derive(Debug, Clone, Serialize)]
pub struct Retested {
    /// `author/name@version`.
    pub id: String,
    /// Whether every example succeeded and matched the output schema.
    pub passed: bool,
    /// Reason codes of the failed smoke runs (or `component-unavailable`).
    pub reasons: Vec<String>,
    /// Failed re-tests in a row, this one included.
    pub consecutive_failures: u32,
    /// The state before the re-test.
    pub state_before: SubmissionState,
    /// The state after it.
    pub state: SubmissionState,
    /// The smoke evidence.
    pub evidence: Vec<Evidence>,
    /// What went wrong beside the capsule itself: its component could not
    /// be read (not recorded on the version), or search could not be
    /// updated (recorded; `soma market reindex` repairs search).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The reason code of a re-test whose component could not be read.
pub const COMPONENT_UNAVAILABLE: &str = "component-unavailable";

/// The nightly re-test: re-run the examples of every listed (published or
/// under-maintenance) version of `name` (or of every capsule) with the
/// review's smoke step (same engine, ¼ limits and schema checks as the
/// review, under this node's current configuration) and record each outcome
/// on the version at `now_ms` ([`Market::record_retest`]: 3 failures in a
/// row → `under-maintenance`, a pass → `published` again, 30 days under
/// maintenance → `deprecated`). A version whose state changed is
/// re-indexed for search. `now_ms` is the caller's clock (a test ages a
/// version by passing a later time). A version whose component cannot be
/// read is reported with [`COMPONENT_UNAVAILABLE`] and not recorded (a
/// registry outage does not count against the author).
///
/// Cost per version: a cache read (or pull), a compile, one call per
/// example under ¼ of its limits, one durable write transaction; plus
/// [`index_submission`] per state change. Blocks.
pub fn retest(
    engine: &Engine,
    market: &Market,
    name: Option<&str>,
    options: &ReviewOptions,
    now_ms: u64,
) -> Result<Vec<Retested>, MarketError> {
    let mut out = Vec::new();
    for s in market.versions(name)? {
        if !s.state.is_listed() {
            continue;
        }
        let id = s.id();
        let failures_before = s.retest.as_ref().map_or(0, |r| r.consecutive_failures);
        let bytes = match component(engine, market, &s, &options.access) {
            Ok((bytes, _)) => bytes,
            Err(e) => {
                out.push(Retested {
                    id,
                    passed: false,
                    reasons: vec![COMPONENT_UNAVAILABLE.to_owned()],
                    consecutive_failures: failures_before,
                    state_before: s.state,
                    state: s.state,
                    evidence: Vec::new(),
                    error: Some(error_chain(&e)),
                });
                continue;
            }
        };
        let examples: Vec<serde_json::Value> =
            s.listing.examples.iter().map(|e| e.input.clone()).collect();
        let evidence =
            review::retest_smoke(&bytes, &examples, &options.llm_fixture, engine.config())
                .map_err(|source| MarketError::Review {
                    id: id.clone(),
                    source: Box::new(source),
                })?;
        let mut reasons: Vec<String> = Vec::new();
        for e in evidence.iter().filter(|e| e.status == Status::Failed) {
            let code = serde_json::to_value(e.code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            if !reasons.contains(&code) {
                reasons.push(code);
            }
        }
        let passed = reasons.is_empty();
        let recorded = market.record_retest(
            &id,
            passed,
            reasons.clone(),
            serde_json::to_value(&evidence).map_err(super::error::storage)?,
            now_ms,
        )?;
        let error = if recorded.state == s.state {
            None
        } else {
            index_submission(engine, market, &recorded)
                .err()
                .map(|e| error_chain(&e))
        };
        out.push(Retested {
            id,
            passed,
            reasons,
            consecutive_failures: recorded
                .retest
                .as_ref()
                .map_or(0, |r| r.consecutive_failures),
            state_before: s.state,
            state: recorded.state,
            evidence,
            error,
        });
    }
    Ok(out)
}

/// `error: cause: cause`, as the CLI prints errors.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}
