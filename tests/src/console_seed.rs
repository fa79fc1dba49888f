//! The data the console's acceptance test looks at, made the way a user
//! makes it: through a real `soma daemon`'s API, with a real OCI registry
//! and the local OpenAI-compatible LLM fixture.
//!
//! [`seed`] starts all three and leaves behind, in tenant `buyer`:
//! - a published, priced capsule `acme/summarize` (registered, pushed,
//!   signed, submitted, reviewed — the review's smoke run calls the LLM —
//!   and published by the operator), installed and called [`PAID_CALLS`]
//!   times by a DAG run: fees and LLM tokens in the ledger, a cost card;
//! - a real KAMACHIQ run (planner, coders that call the LLM model
//!   `kamachiq-coder` — the fixture answers it after [`CODER_LLM_PAUSE`] —
//!   the real calculator, the reviewer gate), succeeded;
//! - a failed run (a capsule that loops until its fuel runs out);
//!
//! and in tenant `globex` one run of its own (for the 404 checks).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};
use soma_runtime::verify::KeyPair;

use crate::{
    daemon::{self, DaemonProcess},
    llm_fixture::{FixtureOptions, LlmFixture},
    market::{author_body, push_signed},
    registry::Registry,
};

/// The capsule listed in the marketplace.
pub const CAPSULE: &str = "acme/summarize";
/// Its per-call price, micro-units.
pub const PRICE_MICROS: u64 = 2_000;
/// How many times the buyer calls it before the test starts.
pub const PAID_CALLS: usize = 4;
/// The market key's password (`SOMA_PASSWORD` of the daemon).
pub const PASSWORD: &str = "console-seed";
/// How long each LLM call of the KAMACHIQ coders takes (`fixture-slow`).
pub const CODER_LLM_PAUSE: Duration = Duration::from_millis(700);
/// Price of the fixture model's tokens (per 1k, micro-units): the LLM
/// calls show up in the ledger by model.
const TOKEN_PRICE_PER_1K: u64 = 1_000;

/// What [`seed`] made; the daemon keeps running until dropped or stopped.
#[derive(Debug)]
pub struct Seeded {
    /// The daemon (its `data` is the data directory).
    pub daemon: DaemonProcess,
    /// The registry the capsule was pushed to.
    pub registry: Registry,
    /// The LLM provider the daemon calls.
    pub fixture: LlmFixture,
    /// Holds the data directory.
    pub dir: tempfile::TempDir,
    /// Tenant `buyer`, scopes `admin` (run, read, install).
    pub buyer: String,
    /// Tenant `acme-co` (the author), scopes `admin`.
    pub author: String,
    /// Tenant `globex`, scopes `run,read`.
    pub other: String,
    /// An operator token.
    pub ops: String,
    /// The buyer's KAMACHIQ run (succeeded).
    pub kamachiq_run: String,
    /// The buyer's failed run.
    pub failed_run: String,
    /// The buyer's run that called the listed capsule.
    pub paid_run: String,
    /// globex's run.
    pub other_run: String,
}

/// Start a registry, the LLM fixture and a daemon over a fresh data
/// directory, and make the data described in the module doc. Takes about
/// 10–30 s (a review, a KAMACHIQ run). Panics on any failure.
pub fn seed(bin: &Path) -> Seeded {
    let registry = Registry::start();
    // The KAMACHIQ coders' model answers after a pause, so a KAMACHIQ run
    // lasts long enough for a browser to watch its nodes change state.
    let fixture = LlmFixture::start_with(FixtureOptions {
        slow: CODER_LLM_PAUSE,
        ..FixtureOptions::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let author = daemon::token(bin, &data, "acme-co", "admin");
    let buyer = daemon::token(bin, &data, "buyer", "admin");
    let other = daemon::token(bin, &data, "globex", "run,read");
    let ops = daemon::token(bin, &data, "ops", "operator");

    let (market_private, market_public) = KeyPair::generate()
        .save(&dir.path().join("market"), PASSWORD.as_bytes())
        .expect("market key");
    let acme = KeyPair::generate();
    let daemon = DaemonProcess::start_with_env(
        bin,
        &data,
        "dag_drivers = 2\n",
        &config(&market_private, &market_public, &registry, &fixture),
        &[("SOMA_PASSWORD", PASSWORD)],
    );
    let d = &daemon;

    // The author registers, pushes, signs and submits; the review runs on
    // submit; the operator publishes.
    let (s, v) = d.post(
        "/v1/market/authors",
        &author,
        &author_body("acme", &acme, "acme-co"),
    );
    assert_eq!(s, 201, "register the author: {v}");
    let reference = push_signed(
        &registry,
        CAPSULE,
        "1.0.0",
        soma_capsules::SUMMARIZE_COMPONENT,
        &acme,
    );
    let listing = json!({
        "name": CAPSULE,
        "version": "1.0.0",
        "summary": "Summarize a document in a few words with an LLM.",
        "readme": "# summarize\n\nSummarizes text with the `default` model; \
                   falls back to the leading sentences.\n\n- input: `{text, max_words}`\n",
        "keywords": ["summary", "llm", "text"],
        "categories": ["text"],
        "license": "Apache-2.0",
        "source": "https://example.com/acme/summarize",
        "examples": [{"input": {"text": "Soma runs capsules. It meters them.", "max_words": 6}}],
        "price": {"model": "per-call", "micros": PRICE_MICROS},
    });
    let (s, v) = d.post(
        "/v1/market/submissions",
        &author,
        &json!({"listing": listing, "reference": reference}),
    );
    assert_eq!(s, 201, "submit: {v}");
    assert_eq!(v["submission"]["state"], "approved", "reviewed: {v}");
    let id = "acme%2Fsummarize@1.0.0";
    let (s, v) = d.post(
        &format!("/v1/market/submissions/{id}/publish"),
        &ops,
        &json!({}),
    );
    assert_eq!(s, 200, "publish: {v}");

    // The buyer installs it and pays for PAID_CALLS calls.
    let (s, v) = d.post(
        "/v1/market/installs",
        &buyer,
        &json!({"name": format!("{CAPSULE}@^1")}),
    );
    assert!(s == 200 || s == 201, "install: {s} {v}");
    let paid_run = run_to_end(d, &buyer, &summaries(PAID_CALLS), "succeeded");

    // A real KAMACHIQ run; its coders ask the fixture LLM.
    let before = fixture.requests();
    let kamachiq_run = run_to_end(d, &buyer, &kamachiq_spec(), "succeeded");
    assert!(
        fixture.requests() > before,
        "the KAMACHIQ coders called the LLM"
    );
    // A failed run: the capsule loops until its fuel is gone.
    let failed_run = run_to_end(d, &buyer, &failing_spec(), "failed");
    // Another tenant's run.
    let other_run = run_to_end(d, &other, &echo_spec("globex-echo"), "succeeded");

    Seeded {
        daemon,
        registry,
        fixture,
        dir,
        buyer,
        author,
        other,
        ops,
        kamachiq_run,
        failed_run,
        paid_run,
        other_run,
    }
}

/// The daemon's `[market]`, `[policy]` and `[[llm.providers]]`.
fn config(
    market_private: &Path,
    market_public: &Path,
    registry: &Registry,
    fixture: &LlmFixture,
) -> String {
    format!(
        "[market]\nkey = {:?}\npublic_key = {:?}\nregistry = {:?}\nreview_llm = {:?}\n\
         [policy]\nllm_models = [\"default\", \"kamachiq-coder\"]\n\
         [[llm.providers]]\nname = \"fixture\"\nbase_url = \"{}\"\n\
         models = [\"fixture-ok\", \"fixture-slow\"]\n\
         aliases = {{ default = \"fixture-ok\", kamachiq-coder = \"fixture-slow\" }}\n\
         max_retries = 0\nprice_input_per_1k_micros = {TOKEN_PRICE_PER_1K}\n\
         price_output_per_1k_micros = {TOKEN_PRICE_PER_1K}\n",
        market_private.display().to_string(),
        market_public.display().to_string(),
        registry.host(),
        fixture.base_url(),
        fixture.base_url(),
    )
}

/// Start `spec` as `token`, wait until it ends, check it ended `status`.
fn run_to_end(d: &DaemonProcess, token: &str, spec: &Value, status: &str) -> String {
    let (s, v) = d.post("/v1/runs", token, &json!({"dag": spec}));
    assert_eq!(s, 202, "start {}: {v}", spec["name"]);
    let run = v["run"].as_str().expect("run id").to_owned();
    let done = d.wait_finished(token, &run, Duration::from_secs(180));
    assert_eq!(done["status"], status, "{}: {done}", spec["name"]);
    run
}

/// A DAG of `n` calls of the listed capsule by its `market:` name.
pub fn summaries(n: usize) -> Value {
    let texts: Vec<String> = (0..n)
        .map(|i| {
            format!("Document {i}. Soma runs capsules under hard limits. It meters every call.")
        })
        .collect();
    json!({
        "version": 1,
        "name": "summaries",
        "capsules": {"s": format!("market:{CAPSULE}@^1")},
        "inputs": {"texts": {"default": texts}},
        "policy": {"concurrency": 1},
        "nodes": [{"id": "sum", "capsule": "s", "for_each": "{{ input.texts }}",
                   "input": {"text": "{{ item }}", "max_words": 8}}],
    })
}

/// The KAMACHIQ example with the daemon's catalog names as its capsules.
pub fn kamachiq_spec() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kamachiq/kamachiq.yaml");
    let text = std::fs::read_to_string(&path).expect("kamachiq.yaml");
    let spec = soma_runtime::dag::spec::parse(&text, "kamachiq.yaml").expect("valid spec");
    let mut v = serde_json::to_value(&spec).expect("spec as JSON");
    v["capsules"] = json!({
        "planner": "kamachiq-planner",
        "coder": "kamachiq-coder",
        "calculator": "calculator",
        "reviewer": "kamachiq-reviewer",
    });
    v
}

/// A run that fails: one node whose capsule loops past its fuel.
pub fn failing_spec() -> Value {
    json!({
        "version": 1,
        "name": "runs-out-of-fuel",
        "capsules": {"loop": "hostile-loop"},
        "defaults": {"limits": {"fuel": 5_000_000u64}, "retries": {"max": 0}},
        "nodes": [{"id": "spin", "capsule": "loop", "input": {}}],
    })
}

/// Three echo nodes in a chain, each waiting for the one before (a run
/// whose node states change one after another).
pub fn echo_spec(name: &str) -> Value {
    json!({
        "version": 1,
        "name": name,
        "capsules": {"echo": "echo"},
        "nodes": [
            {"id": "first", "capsule": "echo", "input": {"step": 1}},
            {"id": "second", "capsule": "echo", "input": {"after": "{{ nodes.first.output }}"}},
            {"id": "third", "capsule": "echo", "input": {"after": "{{ nodes.second.output }}"}},
        ],
    })
}

/// `soma bill TENANT --month MONTH --json` over `data` (the daemon must be
/// stopped: it owns the database). Returns the invoice.
pub fn soma_bill(bin: &Path, data: &Path, tenant: &str, month: &str) -> Value {
    let out = daemon::soma(bin, data)
        .args(["bill", tenant, "--month", month, "--json"])
        .output()
        .expect("soma bill");
    assert!(
        out.status.success(),
        "soma bill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bill JSON")
}

/// This month, `YYYY-MM` (UTC), as the ledger names months.
pub fn this_month() -> String {
    soma_runtime::ledger::day_of(soma_runtime::market::store::now_ms())[..7].to_owned()
}

impl Seeded {
    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.daemon.data.clone()
    }
}
