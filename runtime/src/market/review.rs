//! The automated review of a marketplace submission (issue 14, item 2).
//!
//! [`review`] takes the component bytes and what the listing declares
//! ([`ReviewInput`]) and returns a [`ReviewReport`]: every step recorded as
//! [`Evidence`] with a stable kebab-case [`Reason`] code, passed / failed /
//! skipped, a human reason that names what to change, and the measured
//! numbers. A failing step never stops the independent ones, so a rejected
//! submission gets every reason at once. The steps, in order
//! (`docs/marketplace-review.md` lists every code):
//!
//! | step | checks |
//! |---|---|
//! | `signature` | the author-signature outcome the caller computed (the store verifies it with the registered key) |
//! | `size` | the component is within the listing's size limit |
//! | `license` | an SPDX license expression is declared |
//! | `readme` | a README is present |
//! | `secrets` | no credentials in data segments (key prefixes, PEM headers, high-entropy tokens) |
//! | `bounds` | structural bounds (`validate`) |
//! | `compile` | the component compiles |
//! | `world` | it implements a supported `soma:capsule` version (0.1.0, 0.2.0) and `describe()` answers |
//! | `least-privilege` | what `describe()` asks for = what the component imports (beyond WASI basics and log/events) |
//! | `schemas` | the declared input and output schemas are valid JSON Schemas |
//! | `smoke` | each example input: valid for the input schema, succeeds under ¼ of the limits, output valid for the output schema |
//! | `hostile` | generated schema-violating inputs give a `capsule-error`, never a trap or a limit kill |
//!
//! The smoke runs and the hostile subset run on a throwaway engine: its own
//! data directory (so kv is a scratch store), on-demand allocation, fuel
//! metering on, no AOT cache, and llm denied unless the caller passes a
//! fixture endpoint ([`ReviewInput::llm_fixture`]). Their measured fuel,
//! wall time and peak memory become the [`CostProfile`].

use std::{sync::Arc, time::Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use soma_host_api::Wants;

use crate::{
    CallOptions, Capsule, Config, Engine, EngineError, Failure, FailureClass, LoadError,
    config::{Allocator, Metering},
    digest::Digest,
    limits::Limits,
    store::DataDir,
    validate::{self, Fit},
};

pub mod hostile;
pub mod secrets;

/// What the listing declares, plus the outcome of the author-signature
/// check (computed by the caller, recorded by the review).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewInput {
    /// SPDX license expression, e.g. `Apache-2.0` or `MIT OR Apache-2.0`.
    #[serde(default)]
    pub license: Option<String>,
    /// The README (Markdown).
    #[serde(default)]
    pub readme: Option<String>,
    /// Example inputs (JSON values; each is passed to `run` as its JSON text).
    #[serde(default)]
    pub examples: Vec<Value>,
    /// Largest component the marketplace lists, bytes.
    #[serde(default = "default_max_component_bytes")]
    pub max_component_bytes: usize,
    /// The author-signature check's outcome.
    #[serde(default)]
    pub signature: SignatureOutcome,
    /// Base URL of an OpenAI-compatible LLM fixture the smoke runs may use
    /// for the models the capsule asks for; `None` denies llm.
    #[serde(default)]
    pub llm_fixture: Option<String>,
}

/// The marketplace's default size limit: 32 MiB (`[market] max_component_bytes`).
pub const DEFAULT_MAX_COMPONENT_BYTES: usize = crate::config::market::DEFAULT_MAX_COMPONENT_BYTES;

fn default_max_component_bytes() -> usize {
    DEFAULT_MAX_COMPONENT_BYTES
}

impl Default for ReviewInput {
    fn default() -> Self {
        Self {
            license: None,
            readme: None,
            examples: Vec::new(),
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
            signature: SignatureOutcome::NotChecked,
            llm_fixture: None,
        }
    }
}

/// How the author-signature check ended (the caller verifies; the review
/// records).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum SignatureOutcome {
    /// Verified with the author's registered key.
    Verified {
        /// Which key (id or fingerprint).
        key: String,
    },
    /// Did not verify.
    Failed {
        /// Why (wrong key, no signature, digest mismatch, …).
        reason: String,
    },
    /// Not checked: a local dry run (`soma review`). Skipped, not failed.
    #[default]
    NotChecked,
}

/// A review step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// The author signature.
    Signature,
    /// Size within the listing limit.
    Size,
    /// License declared.
    License,
    /// README present.
    Readme,
    /// No secrets in data segments.
    Secrets,
    /// Structural bounds.
    Bounds,
    /// Compiles.
    Compile,
    /// Supported world, `describe()` answers.
    World,
    /// Asked capabilities = imports.
    LeastPrivilege,
    /// Declared schemas are valid.
    Schemas,
    /// Example inputs.
    Smoke,
    /// Generated schema-violating inputs.
    Hostile,
}

/// Stable reason codes (kebab-case in JSON). Codes of passed steps are
/// listed too: the evidence says what was checked, not only what failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The author signature verified.
    SignatureVerified,
    /// The author signature did not verify.
    SignatureInvalid,
    /// The signature was not checked (local dry run).
    SignatureNotChecked,
    /// Within the size limit.
    SizeWithinLimit,
    /// Larger than the size limit.
    SizeExceeded,
    /// A license is declared.
    LicensePresent,
    /// No license declared.
    LicenseMissing,
    /// The license is not an SPDX expression.
    LicenseInvalid,
    /// A README is present.
    ReadmePresent,
    /// No README.
    ReadmeMissing,
    /// No credentials found.
    NoSecrets,
    /// Credentials found in a data segment.
    SecretFound,
    /// Within the structural bounds.
    WithinBounds,
    /// Outside the structural bounds (or not a component).
    BoundsExceeded,
    /// Compiled.
    Compiled,
    /// Did not compile.
    CompileFailed,
    /// Implements a supported `soma:capsule` version.
    WorldSupported,
    /// Another world, another version, or an import the host lacks.
    WorldUnsupported,
    /// `describe()` failed or returned something unusable.
    DescribeFailed,
    /// Asks for exactly what it imports.
    LeastPrivilege,
    /// Asks for a capability it never imports.
    CapabilityNotImported,
    /// Imports a capability it did not ask for.
    ImportNotDeclared,
    /// Both schemas are valid JSON Schemas.
    SchemasValid,
    /// A declared schema is not a valid JSON Schema.
    SchemaInvalid,
    /// No example inputs.
    NoExamples,
    /// An example input does not match the input schema.
    InputSchemaMismatch,
    /// An example succeeded under the lowered limits.
    SmokePassed,
    /// An example trapped (or overflowed the stack).
    SmokeTrapped,
    /// An example was stopped by a limit (fuel, deadline, memory, …).
    SmokeLimitExceeded,
    /// An example failed otherwise (capsule error, denied, host).
    SmokeFailed,
    /// An example's output does not match the output schema.
    OutputSchemaMismatch,
    /// A hostile input was refused with a capsule error (or, if valid, handled).
    HostileHandled,
    /// A hostile input trapped.
    HostileTrapped,
    /// A hostile input was stopped by a limit.
    HostileLimitExceeded,
    /// A schema-violating input produced an output.
    HostileAccepted,
    /// A hostile input failed otherwise (denied, host).
    HostileFailed,
    /// The step could not run (an earlier step it needs failed).
    NotRun,
}

/// Passed, failed or skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// The check held.
    Passed,
    /// The check failed: the submission is rejected.
    Failed,
    /// Not checked (dry run, or a step it depends on failed).
    Skipped,
}

/// One recorded check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Which step.
    pub step: Step,
    /// The reason code.
    pub code: Reason,
    /// Passed, failed or skipped.
    pub status: Status,
    /// What was found and, if it failed, what to change.
    pub reason: String,
    /// The measured numbers and lists.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub measured: Map<String, Value>,
}

/// Approved or rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// No step failed.
    Approved,
    /// At least one step failed; every failed step is in the evidence.
    Rejected,
}

/// The lowered limits the smoke runs used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmokeLimits {
    /// Fuel per call.
    pub fuel: u64,
    /// Deadline per call, ms.
    pub timeout_ms: u64,
    /// Memory per call, MiB.
    pub memory_mb: u64,
}

/// The listing's first cost profile: what the examples consumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostProfile {
    /// The limits the examples ran under (¼ of the capsule's).
    pub limits: SmokeLimits,
    /// Examples that succeeded (the profile is computed over these).
    pub calls: usize,
    /// Largest fuel of one example.
    pub fuel_max: u64,
    /// Mean fuel per example.
    pub fuel_mean: u64,
    /// Largest wall time of one example, µs.
    pub wall_time_us_max: u64,
    /// Mean wall time per example, µs.
    pub wall_time_us_mean: u64,
    /// Largest peak linear memory of one example, bytes.
    pub peak_memory_bytes_max: u64,
}

/// The review's result: the verdict and the evidence behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewReport {
    /// Approved or rejected.
    pub verdict: Verdict,
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    /// Component size, bytes.
    pub size: usize,
    /// The `soma:capsule` version, when it loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// Every check, in order.
    pub evidence: Vec<Evidence>,
    /// From the successful smoke runs; `None` if none succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_profile: Option<CostProfile>,
    /// How long the review took, ms.
    pub elapsed_ms: u64,
}

impl ReviewReport {
    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Evidence> {
        self.evidence.iter().filter(|e| e.status == Status::Failed)
    }

    /// Whether some check failed with `code`.
    pub fn failed_with(&self, code: Reason) -> bool {
        self.failures().any(|e| e.code == code)
    }

    /// Whether the submission passed.
    pub fn approved(&self) -> bool {
        self.verdict == Verdict::Approved
    }
}

/// The review itself could not run (not: the submission failed it).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The scratch data directory could not be created.
    #[error("cannot create the review's scratch directory")]
    Scratch(#[source] std::io::Error),
    /// The review engine could not start.
    #[error("cannot start the review engine")]
    Engine(#[source] EngineError),
}

/// Review `bytes` against what the listing declares, under the operator's
/// `config` (its `[limits]` are what a capsule without a request gets; its
/// `[validate]` and `[engine]` slot limits are the structural bounds).
///
/// Cost: one compile of the component (or two when an llm fixture is
/// given and the capsule asks for llm), one `describe()`, one call per
/// example and up to three hostile calls under ¼ of the limits, one pass
/// over the bytes for the secret scan. Blocks; creates and removes a
/// scratch directory. Calculator: well under a second (see the
/// `market_review` bench).
pub fn review(
    bytes: &[u8],
    input: &ReviewInput,
    config: &Config,
) -> Result<ReviewReport, ReviewError> {
    let started = Instant::now();
    let mut ev = vec![
        signature(&input.signature),
        size(bytes.len(), input.max_component_bytes),
        license(input.license.as_deref()),
        readme(input.readme.as_deref()),
        secret_scan(bytes),
    ];

    let mut report = ReviewReport {
        verdict: Verdict::Rejected,
        digest: Digest::of(bytes).to_string(),
        size: bytes.len(),
        contract: None,
        evidence: Vec::new(),
        cost_profile: None,
        elapsed_ms: 0,
    };
    let fit = Fit::of(&config.engine);
    let bounded = match validate::check(bytes, &config.validate, &fit) {
        Ok(()) => {
            ev.push(passed(
                Step::Bounds,
                Reason::WithinBounds,
                "within the structural bounds",
            ));
            true
        }
        Err(e) => {
            ev.push(failed(Step::Bounds, Reason::BoundsExceeded, e.to_string()));
            false
        }
    };
    if bounded {
        let scratch = tempfile::tempdir().map_err(ReviewError::Scratch)?;
        let engine = review_engine(config, scratch.path(), None)?;
        let compile_started = Instant::now();
        match engine.load(bytes, "review") {
            Ok(capsule) => {
                let compile_ms = compile_started.elapsed().as_millis() as u64;
                ev.push(
                    passed(Step::Compile, Reason::Compiled, "compiled")
                        .with("compile_ms", compile_ms),
                );
                let m = capsule.manifest();
                report.contract = Some(m.contract.to_string());
                ev.push(
                    passed(
                        Step::World,
                        Reason::WorldSupported,
                        format!("implements {}; describe() answered", m.contract),
                    )
                    .with("contract", m.contract.to_string())
                    .with("name", m.name.clone())
                    .with("version", m.version.clone()),
                );
                ev.push(least_privilege(
                    &m.wants,
                    &capsule.imports(engine.wasmtime()),
                ));
                let fixture_engine =
                    fixture_engine(config, scratch.path(), bytes, &capsule, &input.llm_fixture)?;
                let (run_engine, run_capsule) = match &fixture_engine {
                    Some((e, c)) => (e, c),
                    None => (&engine, &capsule),
                };
                report.cost_profile = exercise(run_engine, run_capsule, input, &mut ev);
            }
            Err(e) => {
                record_load_error(e, &mut ev);
                skip_after_load(&mut ev);
            }
        }
    } else {
        ev.push(not_run(
            Step::Compile,
            "the component is outside the structural bounds",
        ));
        skip_after_load(&mut ev);
    }
    report.verdict = if ev.iter().any(|e| e.status == Status::Failed) {
        Verdict::Rejected
    } else {
        Verdict::Approved
    };
    report.evidence = ev;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// With an llm fixture and a capsule that asks for llm: an engine whose
/// provider serves the models it asks for, and the capsule loaded on it.
fn fixture_engine(
    config: &Config,
    scratch: &std::path::Path,
    bytes: &[u8],
    capsule: &Arc<Capsule>,
    llm_fixture: &Option<String>,
) -> Result<Option<(Engine, Arc<Capsule>)>, ReviewError> {
    let wants = &capsule.manifest().wants;
    match (llm_fixture, wants.llm.is_empty()) {
        (Some(url), false) => {
            // Its own data directory: one redb file, one owner.
            let dir = scratch.join("llm-fixture");
            std::fs::create_dir_all(&dir).map_err(ReviewError::Scratch)?;
            let e = review_engine(config, &dir, Some((url, &wants.llm)))?;
            Ok(e.load(bytes, "review").ok().map(|c| (e, c)))
        }
        _ => Ok(None),
    }
}

/// A re-test: the review's smoke step alone (the same engine, the same ¼
/// limits, the same schema checks) over `examples`, for the nightly
/// re-test of a published version. Returns the smoke evidence (or the
/// load failure's, when the component no longer loads under `config`).
/// Cost: one compile (two with an llm fixture for an llm capsule), one
/// call per example. Blocks; creates and removes a scratch directory.
pub(crate) fn retest_smoke(
    bytes: &[u8],
    examples: &[Value],
    llm_fixture: &Option<String>,
    config: &Config,
) -> Result<Vec<Evidence>, ReviewError> {
    let scratch = tempfile::tempdir().map_err(ReviewError::Scratch)?;
    let engine = review_engine(config, scratch.path(), None)?;
    let mut ev = Vec::new();
    let capsule = match engine.load(bytes, "retest") {
        Ok(c) => c,
        Err(e) => {
            record_load_error(e, &mut ev);
            return Ok(ev);
        }
    };
    let fixture = fixture_engine(config, scratch.path(), bytes, &capsule, llm_fixture)?;
    let (engine, capsule) = match &fixture {
        Some((e, c)) => (e, c),
        None => (&engine, &capsule),
    };
    let m = capsule.manifest();
    let input_schema = jsonschema::validator_for(&m.input_schema).ok();
    let output_schema = jsonschema::validator_for(&m.output_schema).ok();
    let (options, limits) = smoke_options(engine, capsule);
    smoke(
        engine,
        capsule,
        examples,
        input_schema.as_ref(),
        output_schema.as_ref(),
        &options,
        limits,
        &mut ev,
    );
    Ok(ev)
}

/// The throwaway engine: the operator's limits and bounds, on-demand
/// allocation, fuel on, no AOT cache, a scratch data directory, llm only
/// through the fixture.
fn review_engine(
    operator: &Config,
    scratch: &std::path::Path,
    llm: Option<(&str, &[String])>,
) -> Result<Engine, ReviewError> {
    let mut config = operator.clone();
    config.data_dir = Some(scratch.to_owned());
    config.engine.allocator = Allocator::OnDemand;
    config.engine.metering = Metering::Fuel;
    config.engine.aot_cache = false;
    // The scratch ledger is thrown away: no fsync per smoke call.
    config.ledger.meter_calls = false;
    config.llm.providers.clear();
    config.policy.llm_models.clear();
    config.policy.allow_kv = true;
    if let Some((url, models)) = llm {
        config
            .llm
            .providers
            .push(soma_host_api::llm::ProviderConfig {
                name: "review-fixture".into(),
                base_url: url.to_owned(),
                models: models.to_vec(),
                ..Default::default()
            });
        config.policy.llm_models = models.to_vec();
    }
    Engine::new(config, DataDir::new(scratch)).map_err(ReviewError::Engine)
}

impl Evidence {
    fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.measured.insert(key.to_owned(), value.into());
        self
    }
}

fn evidence(step: Step, code: Reason, status: Status, reason: impl Into<String>) -> Evidence {
    Evidence {
        step,
        code,
        status,
        reason: reason.into(),
        measured: Map::new(),
    }
}

fn passed(step: Step, code: Reason, reason: impl Into<String>) -> Evidence {
    evidence(step, code, Status::Passed, reason)
}

fn failed(step: Step, code: Reason, reason: impl Into<String>) -> Evidence {
    evidence(step, code, Status::Failed, reason)
}

fn not_run(step: Step, why: &str) -> Evidence {
    evidence(
        step,
        Reason::NotRun,
        Status::Skipped,
        format!("not run: {why}"),
    )
}

fn signature(outcome: &SignatureOutcome) -> Evidence {
    match outcome {
        SignatureOutcome::Verified { key } => passed(
            Step::Signature,
            Reason::SignatureVerified,
            format!("the author signature verifies with the registered key {key}"),
        )
        .with("key", key.clone()),
        SignatureOutcome::Failed { reason } => failed(
            Step::Signature,
            Reason::SignatureInvalid,
            format!(
                "the author signature does not verify: {reason}; sign the digest with the key \
                 you registered (`soma market author register`)"
            ),
        ),
        SignatureOutcome::NotChecked => evidence(
            Step::Signature,
            Reason::SignatureNotChecked,
            Status::Skipped,
            "not checked: a local dry run; the marketplace verifies the author signature on submit",
        ),
    }
}

fn size(size: usize, limit: usize) -> Evidence {
    let e = if size <= limit {
        passed(
            Step::Size,
            Reason::SizeWithinLimit,
            format!("{size} bytes, within the {limit}-byte limit"),
        )
    } else {
        failed(
            Step::Size,
            Reason::SizeExceeded,
            format!(
                "the component is {size} bytes; the marketplace lists components up to {limit} \
                 bytes: build in release mode, strip debug info, drop unused dependencies"
            ),
        )
    };
    e.with("bytes", size).with("limit_bytes", limit)
}

fn license(license: Option<&str>) -> Evidence {
    let Some(l) = license.map(str::trim).filter(|l| !l.is_empty()) else {
        return failed(
            Step::License,
            Reason::LicenseMissing,
            "no license: set `license` in the listing to an SPDX identifier such as \
             `Apache-2.0` or `MIT`",
        );
    };
    if is_spdx_expression(l) {
        passed(
            Step::License,
            Reason::LicensePresent,
            format!("license {l}"),
        )
        .with("license", l)
    } else {
        failed(
            Step::License,
            Reason::LicenseInvalid,
            format!(
                "license {l:?} is not an SPDX expression: use identifiers from spdx.org/licenses \
                 joined by AND / OR / WITH, e.g. `MIT OR Apache-2.0`"
            ),
        )
    }
}

/// SPDX expression syntax (not the identifier list): identifiers of
/// `[A-Za-z0-9.+-]` (`LicenseRef-…` included), `AND` / `OR` / `WITH`,
/// parentheses.
fn is_spdx_expression(text: &str) -> bool {
    let spaced = text.replace('(', " ( ").replace(')', " ) ");
    let mut expect_id = true;
    let mut depth = 0i32;
    for word in spaced.split_whitespace() {
        match word {
            "(" if expect_id => depth += 1,
            ")" if !expect_id => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            "AND" | "OR" | "WITH" if !expect_id => expect_id = true,
            id if expect_id
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+')) =>
            {
                expect_id = false;
            }
            _ => return false,
        }
    }
    !expect_id && depth == 0
}

fn readme(readme: Option<&str>) -> Evidence {
    match readme.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => passed(
            Step::Readme,
            Reason::ReadmePresent,
            format!("README of {} bytes", r.len()),
        )
        .with("bytes", r.len()),
        None => failed(
            Step::Readme,
            Reason::ReadmeMissing,
            "no README: add one (Markdown) that says what the capsule does, its input and \
             output, and what it asks for",
        ),
    }
}

fn secret_scan(bytes: &[u8]) -> Evidence {
    let scan = secrets::scan(bytes);
    let e = if scan.findings.is_empty() {
        passed(
            Step::Secrets,
            Reason::NoSecrets,
            format!(
                "no credentials in {} data segments ({} bytes)",
                scan.segments, scan.bytes
            ),
        )
    } else {
        let list: Vec<String> = scan
            .findings
            .iter()
            .map(|f| format!("{} {} at byte {}", f.kind, f.preview, f.offset))
            .collect();
        failed(
            Step::Secrets,
            Reason::SecretFound,
            format!(
                "credentials in the component's data: {}; remove them and rotate them (they \
                 are public now); read secrets at run time from a capability instead",
                list.join(", ")
            ),
        )
    };
    e.with("segments", scan.segments)
        .with("bytes_scanned", scan.bytes)
        .with("findings", json!(scan.findings))
}

fn record_load_error(e: LoadError, ev: &mut Vec<Evidence>) {
    // The message with its causes (`a: b: c`), as the CLI prints errors.
    let mut message = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        message = format!("{message}: {c}");
        cause = c.source();
    }
    match e {
        LoadError::Invalid(_) => {
            ev.push(failed(Step::Compile, Reason::CompileFailed, message));
            ev.push(not_run(Step::World, "the component does not compile"));
        }
        LoadError::WrongWorld { .. }
        | LoadError::ExportMismatch(_)
        | LoadError::UnknownImport { .. } => {
            ev.push(passed(Step::Compile, Reason::Compiled, "compiled"));
            ev.push(failed(
                Step::World,
                Reason::WorldUnsupported,
                format!(
                    "{message}; the marketplace lists soma:capsule@0.1.0 and @0.2.0 capsules: \
                     build against wit/capsule.wit with soma-sdk"
                ),
            ));
        }
        LoadError::Describe(_)
        | LoadError::BadManifest(_)
        | LoadError::BadSchema { .. }
        | LoadError::Read { .. } => {
            ev.push(passed(Step::Compile, Reason::Compiled, "compiled"));
            ev.push(failed(
                Step::World,
                Reason::DescribeFailed,
                format!("{message}; describe() must return the manifest without doing work"),
            ));
        }
    }
}

fn skip_after_load(ev: &mut Vec<Evidence>) {
    let why = "the capsule did not load";
    for step in [
        Step::LeastPrivilege,
        Step::Schemas,
        Step::Smoke,
        Step::Hostile,
    ] {
        ev.push(not_run(step, why));
    }
}

/// What an import needs: nothing (WASI basics, log, events, types), a
/// capability request by name, nothing because it is inert, or something
/// no request can cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    Nothing,
    Request(&'static str),
    /// Imported, but the host never lets it do anything (see [`inert`]).
    Inert,
    Unknown,
}

/// Whether `import` (with what it needs) can do nothing for this capsule,
/// whatever it calls: `wasi:sockets/*` always (every call's WASI context
/// refuses TCP, UDP and name lookup; the network is only `wasi:http`,
/// through the allowlist), and `wasi:filesystem/*` when `dir` is not asked
/// for (a directory is preopened only when asked for and granted, so there
/// is no path to open). Language runtimes' libcs import both whether or
/// not the program uses them (CPython's does), so rejecting them would
/// reject every Python capsule for imports that grant nothing.
fn inert(need: Needs, asked: &[(&'static str, String)]) -> bool {
    match need {
        Needs::Inert => true,
        Needs::Request("dir") => !asked.iter().any(|(cap, _)| *cap == "dir"),
        _ => false,
    }
}

fn needs(import: &str) -> Needs {
    let interface = import.split('@').next().unwrap_or(import);
    match interface {
        "soma:capsule/log" | "soma:capsule/events" | "soma:capsule/types" => Needs::Nothing,
        "soma:capsule/kv" => Needs::Request("kv"),
        "soma:capsule/llm" => Needs::Request("llm"),
        "soma:capsule/secrets" => Needs::Request("secrets"),
        i if ["wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:random/"]
            .iter()
            .any(|p| i.starts_with(p)) =>
        {
            Needs::Nothing
        }
        i if i.starts_with("wasi:filesystem/") => Needs::Request("dir"),
        i if i.starts_with("wasi:sockets/") => Needs::Inert,
        i if i.starts_with("wasi:http/") => Needs::Request("http"),
        _ => Needs::Unknown,
    }
}

/// Compare what `describe()` asks for with the component's imports.
/// Returns (asked but not imported, imported but not asked, [`inert`]); an
/// inert import is neither of the first two.
fn privilege(wants: &Wants, imports: &[String]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut asked: Vec<(&'static str, String)> = Vec::new();
    if wants.kv {
        asked.push(("kv", "kv".into()));
    }
    for model in &wants.llm {
        asked.push(("llm", format!("llm:{model}")));
    }
    for dir in &wants.dirs {
        asked.push(("dir", format!("dir:{dir}")));
    }
    for name in &wants.secrets {
        asked.push(("secrets", format!("secrets:{name}")));
    }
    for other in &wants.other {
        let word = if other.args.is_empty() {
            other.name.clone()
        } else {
            format!("{}:{}", other.name, other.args.join(","))
        };
        asked.push((
            match other.name.as_str() {
                "http" => "http",
                _ => "",
            },
            word,
        ));
    }
    let imported: Vec<Needs> = imports.iter().map(|i| needs(i)).collect();
    let unused = asked
        .iter()
        .filter(|(cap, _)| cap.is_empty() || !imported.contains(&Needs::Request(cap)))
        .map(|(_, word)| word.clone())
        .collect();
    let pick = |keep: &dyn Fn(Needs) -> bool| -> Vec<String> {
        imports
            .iter()
            .zip(&imported)
            .filter(|(_, need)| keep(**need))
            .map(|(i, _)| i.clone())
            .collect()
    };
    let undeclared = pick(&|need| match need {
        _ if inert(need, &asked) => false,
        Needs::Nothing | Needs::Inert => false,
        Needs::Request(cap) => !asked.iter().any(|(a, _)| *a == cap),
        Needs::Unknown => true,
    });
    let inert = pick(&|need| inert(need, &asked));
    (unused, undeclared, inert)
}

fn least_privilege(wants: &Wants, imports: &[String]) -> Evidence {
    let (unused, undeclared, inert) = privilege(wants, imports);
    let asked = wants.words();
    let measured = |e: Evidence| {
        e.with("asked", json!(asked))
            .with("imports", json!(imports))
            .with("asked_not_imported", json!(unused))
            .with("imported_not_asked", json!(undeclared))
            .with("inert", json!(inert))
    };
    if !unused.is_empty() {
        let mut e = failed(
            Step::LeastPrivilege,
            Reason::CapabilityNotImported,
            format!(
                "describe() asks for {} but the component never imports it: remove the \
                 request from describe() (ask for nothing you do not use)",
                unused.join(", ")
            ),
        );
        if !undeclared.is_empty() {
            e.reason.push_str(&format!(
                "; it also imports {} without asking: add the request to describe()",
                undeclared.join(", ")
            ));
        }
        return measured(e);
    }
    if !undeclared.is_empty() {
        return measured(failed(
            Step::LeastPrivilege,
            Reason::ImportNotDeclared,
            format!(
                "the component imports {} but describe() does not ask for it: add the request \
                 (e.g. `.wants_kv()`), or stop using it",
                undeclared.join(", ")
            ),
        ));
    }
    let mut reason = if asked.is_empty() {
        "asks for nothing and imports no capability beyond WASI basics, log and events".to_owned()
    } else {
        format!("asks for exactly what it imports: {}", asked.join(", "))
    };
    if !inert.is_empty() {
        reason.push_str(&format!(
            "; also links {}, which reach nothing here (no socket is granted, no directory \
             without a `dir` request)",
            inert.join(", ")
        ));
    }
    measured(passed(Step::LeastPrivilege, Reason::LeastPrivilege, reason))
}

/// `limits` at a quarter (at least 1 of each).
fn quarter(limits: Limits) -> Limits {
    Limits {
        fuel: (limits.fuel / 4).max(1),
        timeout_ms: (limits.timeout_ms / 4).max(1),
        memory_mb: (limits.memory_mb / 4).max(1),
        ..limits
    }
}

/// Schemas, smoke runs and the hostile subset; returns the cost profile.
fn exercise(
    engine: &Engine,
    capsule: &Arc<Capsule>,
    input: &ReviewInput,
    ev: &mut Vec<Evidence>,
) -> Option<CostProfile> {
    let m = capsule.manifest();
    let compile = |doc: &Value, which: &str| {
        jsonschema::validator_for(doc).map_err(|e| format!("the {which} schema is invalid: {e}"))
    };
    let input_schema = compile(&m.input_schema, "input");
    let output_schema = compile(&m.output_schema, "output");
    let problems: Vec<&String> = [&input_schema, &output_schema]
        .into_iter()
        .filter_map(|r| r.as_ref().err())
        .collect();
    if problems.is_empty() {
        ev.push(passed(
            Step::Schemas,
            Reason::SchemasValid,
            "the input and output schemas are valid JSON Schemas",
        ));
    } else {
        ev.push(failed(
            Step::Schemas,
            Reason::SchemaInvalid,
            format!(
                "{}: fix describe()'s input-schema / output-schema (remote $refs are not \
                 resolved)",
                problems
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    }
    let input_schema = input_schema.ok();
    let output_schema = output_schema.ok();

    let (options, smoke_limits) = smoke_options(engine, capsule);
    let costs = smoke(
        engine,
        capsule,
        &input.examples,
        input_schema.as_ref(),
        output_schema.as_ref(),
        &options,
        smoke_limits,
        ev,
    );

    // The hostile subset.
    let huge = (options.limits.max_input_bytes / 16).clamp(1, 64 * 1024);
    let inputs = hostile::generate(
        input_schema.as_ref(),
        &m.input_schema,
        input.examples.first(),
        huge,
    );
    for h in inputs {
        let text = h.input.to_string();
        let outcome = engine.call(capsule, &text, &options);
        let what = format!("hostile input {} ({})", h.kind, h.change);
        let e = match &outcome.result {
            Err(Failure::CapsuleError { code, .. }) => passed(
                Step::Hostile,
                Reason::HostileHandled,
                format!("{what}: refused with capsule error [{code}]"),
            ),
            Ok(_) if !h.violates => passed(
                Step::Hostile,
                Reason::HostileHandled,
                format!("{what}: valid for the schema, and handled"),
            ),
            Ok(_) => failed(
                Step::Hostile,
                Reason::HostileAccepted,
                format!(
                    "{what}: the input schema rejects it, yet run() returned an output: check \
                     the input and return a bad-input error"
                ),
            ),
            Err(f) => {
                let code = match f.class() {
                    FailureClass::Trap | FailureClass::StackOverflow => Reason::HostileTrapped,
                    c if is_limit(c) => Reason::HostileLimitExceeded,
                    _ => Reason::HostileFailed,
                };
                failed(
                    Step::Hostile,
                    code,
                    format!(
                        "{what}: {f}; a bad input must end in a capsule error (return \
                         Error::bad_input), never a trap or a limit kill"
                    ),
                )
                .with("class", f.class().name())
            }
        };
        ev.push(
            e.with("kind", h.kind)
                .with("violates_schema", h.violates)
                .with("input_bytes", text.len())
                .with("fuel", outcome.usage.fuel_consumed.unwrap_or(0))
                .with("wall_time_us", outcome.usage.wall_time_us),
        );
    }
    profile(smoke_limits, &costs)
}

/// The smoke step's call options: the capsule's own, under ¼ of its limits.
fn smoke_options(engine: &Engine, capsule: &Arc<Capsule>) -> (CallOptions, SmokeLimits) {
    let mut options = CallOptions::for_capsule(engine, capsule);
    let base = engine
        .config()
        .limits
        .tightened_by(&capsule.manifest().limits);
    options.limits = quarter(base);
    let limits = SmokeLimits {
        fuel: options.limits.fuel,
        timeout_ms: options.limits.timeout_ms,
        memory_mb: options.limits.memory_mb,
    };
    (options, limits)
}

/// The smoke step: run each example under `options`, checking it against
/// the input schema and its output against the output schema; push one
/// evidence entry per finding. Returns the usage of the examples that
/// succeeded. Cost: one call per example.
#[allow(clippy::too_many_arguments)]
fn smoke(
    engine: &Engine,
    capsule: &Arc<Capsule>,
    examples: &[Value],
    input_schema: Option<&jsonschema::Validator>,
    output_schema: Option<&jsonschema::Validator>,
    options: &CallOptions,
    smoke_limits: SmokeLimits,
    ev: &mut Vec<Evidence>,
) -> Vec<crate::Usage> {
    let m = capsule.manifest();
    let limits_json = json!(smoke_limits);

    if examples.is_empty() {
        ev.push(failed(
            Step::Smoke,
            Reason::NoExamples,
            "the listing has no example inputs: add at least one (`examples` in the listing); \
             the review runs each and they become the listing's first cost profile",
        ));
    }
    let mut costs = Vec::new();
    for (i, example) in examples.iter().enumerate() {
        if let Some(errors) = input_schema.and_then(|s| schema_errors(s, example)) {
            ev.push(
                failed(
                    Step::Smoke,
                    Reason::InputSchemaMismatch,
                    format!(
                        "example {i} does not match the input schema: {errors}; fix the example \
                         or the schema"
                    ),
                )
                .with("example", i),
            );
        }
        let text = example.to_string();
        let outcome = engine.call(capsule, &text, options);
        let usage = outcome.usage;
        let measure = |e: Evidence| {
            e.with("example", i)
                .with("fuel", usage.fuel_consumed.unwrap_or(0))
                .with("wall_time_us", usage.wall_time_us)
                .with("peak_memory_bytes", usage.peak_memory_bytes)
                .with("limits", limits_json.clone())
        };
        match outcome.result {
            Ok(output) => {
                costs.push(usage);
                ev.push(measure(passed(
                    Step::Smoke,
                    Reason::SmokePassed,
                    format!("example {i} succeeded under ¼ of the capsule's limits"),
                )));
                if let Some(problem) = output_problem(output_schema, &m.output_schema, &output) {
                    ev.push(
                        failed(
                            Step::Smoke,
                            Reason::OutputSchemaMismatch,
                            format!(
                                "the output of example {i} does not match the output schema: \
                                 {problem}; fix the capsule or its declared output-schema"
                            ),
                        )
                        .with("example", i)
                        .with("output", truncate(&output)),
                    );
                }
            }
            Err(failure) => {
                let code = match failure.class() {
                    FailureClass::Trap | FailureClass::StackOverflow => Reason::SmokeTrapped,
                    c if is_limit(c) => Reason::SmokeLimitExceeded,
                    _ => Reason::SmokeFailed,
                };
                ev.push(
                    measure(failed(
                        Step::Smoke,
                        code,
                        format!(
                            "example {i} failed under ¼ of the capsule's limits: {failure}; every \
                             example must succeed with headroom (fix the capsule, or raise what \
                             it asks for in describe().limits)"
                        ),
                    ))
                    .with("class", failure.class().name()),
                );
            }
        }
    }
    costs
}

fn is_limit(class: FailureClass) -> bool {
    matches!(
        class,
        FailureClass::OutOfFuel
            | FailureClass::DeadlineExceeded
            | FailureClass::MemoryLimit
            | FailureClass::ResourceLimit
            | FailureClass::OutputLimit
            | FailureClass::InputLimit
    )
}

/// The schema's complaints about `value` (at most three), or `None` if valid.
fn schema_errors(schema: &jsonschema::Validator, value: &Value) -> Option<String> {
    let errors: Vec<String> = schema
        .iter_errors(value)
        .take(3)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("at {at}: {e}")
            }
        })
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

/// Why `output` does not satisfy the output schema, if it does not. An
/// output that is not JSON satisfies only a schema that accepts anything.
fn output_problem(
    schema: Option<&jsonschema::Validator>,
    doc: &Value,
    output: &str,
) -> Option<String> {
    let schema = schema?;
    match serde_json::from_str::<Value>(output) {
        Ok(v) => schema_errors(schema, &v),
        Err(e) if !accepts_anything(doc) => Some(format!("the output is not JSON ({e})")),
        Err(_) => None,
    }
}

fn accepts_anything(doc: &Value) -> bool {
    match doc {
        Value::Bool(b) => *b,
        Value::Object(o) => o.keys().all(|k| {
            matches!(
                k.as_str(),
                "$schema" | "$id" | "title" | "description" | "examples" | "$comment"
            )
        }),
        _ => false,
    }
}

fn truncate(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn profile(limits: SmokeLimits, costs: &[crate::Usage]) -> Option<CostProfile> {
    if costs.is_empty() {
        return None;
    }
    let n = costs.len() as u64;
    let fuel = |u: &crate::Usage| u.fuel_consumed.unwrap_or(0);
    Some(CostProfile {
        limits,
        calls: costs.len(),
        fuel_max: costs.iter().map(fuel).max().unwrap_or(0),
        fuel_mean: costs.iter().map(fuel).sum::<u64>() / n,
        wall_time_us_max: costs.iter().map(|u| u.wall_time_us).max().unwrap_or(0),
        wall_time_us_mean: costs.iter().map(|u| u.wall_time_us).sum::<u64>() / n,
        peak_memory_bytes_max: costs.iter().map(|u| u.peak_memory_bytes).max().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use soma_host_api::bindings::soma::capsule::types::CapabilityRequest;

    fn wants(requests: &[(&str, &[&str])]) -> Wants {
        Wants::from_requests(
            requests
                .iter()
                .map(|(name, args)| CapabilityRequest {
                    name: (*name).into(),
                    args: args.iter().map(|a| (*a).to_owned()).collect(),
                })
                .collect(),
        )
    }

    fn imports(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn compare_privilege(wants: &Wants, imports: &[String]) -> (Vec<String>, Vec<String>) {
        let (unused, undeclared, _) = privilege(wants, imports);
        (unused, undeclared)
    }

    #[test]
    fn privilege_is_compared_both_ways() {
        let basics = [
            "wasi:cli/environment@0.2.6",
            "wasi:io/streams@0.2.6",
            "wasi:random/insecure-seed@0.2.6",
            "soma:capsule/types@0.2.0",
            "soma:capsule/log@0.2.0",
            "soma:capsule/events@0.1.0",
        ];
        assert_eq!(
            compare_privilege(&wants(&[]), &imports(&basics)),
            (vec![], vec![])
        );
        let mut with_kv = basics.to_vec();
        with_kv.push("soma:capsule/kv@0.2.0");
        assert_eq!(
            compare_privilege(&wants(&[]), &imports(&with_kv)),
            (vec![], vec!["soma:capsule/kv@0.2.0".to_owned()]),
            "imports kv without asking"
        );
        assert_eq!(
            compare_privilege(
                &wants(&[("kv", &[]), ("llm", &["small"])]),
                &imports(&with_kv)
            ),
            (vec!["llm:small".to_owned()], vec![]),
            "asks for llm without importing it"
        );
        assert_eq!(
            compare_privilege(
                &wants(&[("dir", &["/data"]), ("secrets", &["k"])]),
                &imports(&["wasi:filesystem/preopens@0.2.6", "wasi:sockets/tcp@0.2.6"])
            ),
            (vec!["secrets:k".to_owned()], vec![]),
            "a requested capability that is never imported is named; sockets are inert"
        );
        let fs_and_sockets = imports(&["wasi:filesystem/preopens@0.2.6", "wasi:sockets/tcp@0.2.6"]);
        assert_eq!(
            privilege(&wants(&[]), &fs_and_sockets),
            (vec![], vec![], fs_and_sockets.clone()),
            "without a dir grant, filesystem and sockets are linked but reach nothing"
        );
        assert_eq!(
            privilege(&wants(&[("dir", &["/data"])]), &fs_and_sockets),
            (vec![], vec![], vec!["wasi:sockets/tcp@0.2.6".to_owned()]),
            "with a dir grant the filesystem import is the request it serves"
        );
    }

    #[test]
    fn spdx_expressions() {
        for ok in [
            "MIT",
            "Apache-2.0",
            "MIT OR Apache-2.0",
            "(MIT AND BSD-3-Clause) OR GPL-2.0+",
            "GPL-2.0-only WITH Classpath-exception-2.0",
            "LicenseRef-Acme-1.0",
        ] {
            assert!(is_spdx_expression(ok), "{ok}");
        }
        for bad in [
            "",
            "MIT OR",
            "my license",
            "(MIT",
            "MIT)",
            "AND MIT",
            "Apache 2",
        ] {
            assert!(!is_spdx_expression(bad), "{bad}");
        }
    }

    #[test]
    fn limits_are_quartered_never_zeroed() {
        let q = quarter(Limits {
            fuel: 3,
            timeout_ms: 10_000,
            memory_mb: 128,
            ..Limits::default()
        });
        assert_eq!((q.fuel, q.timeout_ms, q.memory_mb), (1, 2_500, 32));
    }

    #[test]
    fn reason_codes_are_kebab_case() {
        assert_eq!(
            serde_json::to_value(Reason::CapabilityNotImported).expect("json"),
            "capability-not-imported"
        );
        assert_eq!(
            serde_json::to_value(Step::LeastPrivilege).expect("json"),
            "least-privilege"
        );
        let outcome = SignatureOutcome::Verified { key: "k1".into() };
        assert_eq!(
            serde_json::to_value(&outcome).expect("json"),
            json!({ "outcome": "verified", "key": "k1" })
        );
    }
}
