//! Issue 14's acceptance test, "a community capsule published and
//! monetized", end to end against a real `soma daemon` process, a real
//! `docker-registry`, real keys and the local OpenAI-compatible LLM
//! fixture (the only stand-in: LLM providers are paid outside services):
//!
//! 1. an outside author (tenant `acme-co`) registers its namespace with a
//!    proof of possession, pushes and signs the `summarize` capsule and
//!    submits it with a per-call price;
//! 2. the automated review passes (its smoke run reaches the LLM through
//!    `[market] review_llm`) and is recorded as evidence;
//! 3. the marketplace (an operator token) publishes it: countersigned,
//!    indexed;
//! 4. a second tenant (`buyer`) finds it by a misspelt search, installs it
//!    (pinned to the digest for that tenant only) and runs it by `market:`
//!    name inside DAGs; each successful call is charged the listing price
//!    as `marketplace-fee`;
//! 5. the daemon is SIGKILLed while the buyer's runs are in flight and
//!    restarted: every run resumes and every call is charged exactly once;
//! 6. `GET /v1/market/payouts` shows the author 80 % (and nothing to the
//!    buyer), `soma market payouts` agrees, `soma ledger check` passes.

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use soma_runtime::{ledger::Ledger, store::DataDir, verify::KeyPair};
use soma_tests::{
    daemon::{self as harness, DaemonProcess},
    llm_fixture::LlmFixture,
    market::{author_body, push_signed},
    registry::Registry,
};

const PASSWORD: &str = "market-e2e";
/// The listing's per-call price, micro-units.
const PRICE: u64 = 2_000;
/// Runs the buyer starts before the kill, and calls in each.
const RUNS: usize = 3;
const FAN: usize = 40;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

fn this_month() -> String {
    soma_runtime::ledger::day_of(soma_runtime::market::store::now_ms())[..7].to_owned()
}

fn fees_of(d: &DaemonProcess, token: &str, run: &str) -> Vec<Value> {
    let (s, v) = d.get(&format!("/v1/ledger?run={run}&limit=100000"), token);
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["kind"] == "marketplace-fee")
        .cloned()
        .collect()
}

/// A DAG of `n` summarize calls by the buyer's pinned `market:` name.
fn spec(n: usize) -> Value {
    let texts: Vec<String> = (0..n)
        .map(|i| {
            format!("Document {i}. Soma runs capsules under hard limits. It meters every call.")
        })
        .collect();
    json!({
        "version": 1,
        "name": "summaries",
        "capsules": {"s": "market:acme/summarize@^1"},
        "inputs": {"texts": {"default": texts}},
        "policy": {"concurrency": 1},
        "nodes": [{"id": "sum", "capsule": "s", "for_each": "{{ input.texts }}",
                   "input": {"text": "{{ item }}", "max_words": 8}}],
    })
}

#[test]
fn a_community_capsule_is_published_installed_run_and_monetized_exactly_once() {
    let registry = Registry::start();
    let fixture = LlmFixture::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data");
    let author = harness::token(bin(), &data, "acme-co", "admin");
    let buyer = harness::token(bin(), &data, "buyer", "admin");
    let ops = harness::token(bin(), &data, "ops", "operator");

    // The marketplace's key (publish countersigns with it; install needs it)
    // and the author's own key.
    let (market_private, market_public) = KeyPair::generate()
        .save(&dir.path().join("market"), PASSWORD.as_bytes())
        .expect("market key");
    let acme = KeyPair::generate();
    let extra = format!(
        "[market]\nkey = {:?}\npublic_key = {:?}\nregistry = {:?}\nreview_llm = {:?}\n\
         [policy]\nllm_models = [\"default\"]\n\
         [[llm.providers]]\nname = \"fixture\"\nbase_url = \"{}\"\nmodels = [\"fixture-ok\"]\n\
         aliases = {{ default = \"fixture-ok\" }}\nmax_retries = 0\n",
        market_private.display().to_string(),
        market_public.display().to_string(),
        registry.host(),
        fixture.base_url(),
        fixture.base_url(),
    );
    let d = DaemonProcess::start_with_env(
        bin(),
        &data,
        "dag_drivers = 2\n",
        &extra,
        &[("SOMA_PASSWORD", PASSWORD)],
    );

    // 1. The author registers `acme` for its tenant, proving it holds the key.
    let (s, v) = d.post(
        "/v1/market/authors",
        &author,
        &author_body("acme", &acme, "acme-co"),
    );
    assert_eq!(s, 201, "{v}");

    // Push and sign as the author (`soma push` + `soma sign`), then submit.
    let reference = push_signed(
        &registry,
        "acme/summarize",
        "1.0.0",
        soma_capsules::SUMMARIZE_COMPONENT,
        &acme,
    );
    let listing = json!({
        "name": "acme/summarize",
        "version": "1.0.0",
        "summary": "Summarize a document in a few words with an LLM.",
        "readme": "# summarize\nSummarizes text with the `default` model; falls back to the leading sentences.",
        "keywords": ["summary", "llm", "text"],
        "categories": ["text"],
        "license": "Apache-2.0",
        "source": "https://example.com/acme/summarize",
        "examples": [{"input": {"text": "Soma runs capsules. It meters them.", "max_words": 6}}],
        "price": {"model": "per-call", "micros": PRICE},
    });
    let (s, v) = d.post(
        "/v1/market/submissions",
        &author,
        &json!({"listing": listing, "reference": reference}),
    );
    // 2. Reviewed on submit, every step recorded with its reason code.
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["submission"]["state"], "approved", "{v}");
    assert_eq!(v["review"]["verdict"], "approved", "{v}");
    let steps = v["review"]["evidence"].as_array().expect("evidence");
    for step in [
        "signature",
        "least-privilege",
        "smoke",
        "hostile",
        "license",
    ] {
        let e = steps
            .iter()
            .find(|e| e["step"] == step)
            .unwrap_or_else(|| panic!("no {step} step in {v}"));
        assert_eq!(e["status"], "passed", "{step}: {e}");
    }
    assert!(
        fixture.requests() > 0,
        "the review's smoke run reached the LLM through [market] review_llm"
    );
    let (s, v) = d.get("/v1/market/submissions/acme%2Fsummarize@1.0.0", &author);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["submission"]["review"]["passed"], true, "{v}");

    // 3. The marketplace publishes (countersigns) it; a tenant cannot.
    let (s, _) = d.post(
        "/v1/market/submissions/acme%2Fsummarize@1.0.0/publish",
        &buyer,
        &json!({}),
    );
    assert_eq!(s, 403);
    let (s, v) = d.post(
        "/v1/market/submissions/acme%2Fsummarize@1.0.0/publish",
        &ops,
        &json!({}),
    );
    assert_eq!(s, 200, "{v}");

    // 4. The buyer finds it (typo tolerated), installs it, runs it.
    let (s, v) = d.get("/v1/market/search?q=sumarize", &buyer);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["hits"][0]["listing"], "acme/summarize", "{v}");
    let (s, v) = d.post(
        "/v1/market/installs",
        &buyer,
        &json!({"name": "acme/summarize@^1"}),
    );
    assert!(s == 200 || s == 201, "{s}: {v}");
    let pinned = v["install"]["digest"]
        .as_str()
        .or_else(|| v["digest"].as_str())
        .unwrap_or_else(|| panic!("no pinned digest in {v}"))
        .to_owned();
    assert!(pinned.starts_with("sha256:"), "{v}");

    let (s, v) = d.post("/v1/runs", &buyer, &json!({"dag": spec(3)}));
    assert_eq!(s, 202, "{v}");
    let first = v["run"].as_str().expect("run").to_owned();
    let done = d.wait_finished(&buyer, &first, Duration::from_secs(120));
    assert_eq!(done["status"], "succeeded", "{done}");
    let fees = fees_of(&d, &buyer, &first);
    assert_eq!(fees.len(), 3, "one fee per call: {fees:?}");
    for fee in &fees {
        assert_eq!(fee["cost_micros"].as_u64(), Some(PRICE), "{fee}");
        assert_eq!(fee["tenant"], "buyer", "{fee}");
        assert_eq!(fee["model"], "acme/summarize@1.0.0", "{fee}");
    }
    // The calls really went to the LLM, and the runs recorded the pin.
    let (s, run) = d.get(&format!("/v1/runs/{first}"), &buyer);
    assert_eq!(s, 200, "{run}");
    let text = run.to_string();
    assert!(
        text.contains("\\\"llm\\\"") || text.contains("\"source\":\"llm\""),
        "{run}"
    );
    // The author's tenant sees none of the buyer's ledger.
    assert!(fees_of(&d, &author, &first).is_empty());

    // 5. Several runs in flight, then SIGKILL.
    let runs: Vec<String> = (0..RUNS)
        .map(|_| {
            let (s, v) = d.post("/v1/runs", &buyer, &json!({"dag": spec(FAN)}));
            assert_eq!(s, 202, "{v}");
            v["run"].as_str().expect("run").to_owned()
        })
        .collect();
    let start = Instant::now();
    loop {
        let (_, all) = d.get("/v1/ledger?limit=100000", &ops);
        let charged = all.as_array().map_or(0, |a| {
            a.iter().filter(|e| e["kind"] == "marketplace-fee").count()
        });
        if charged >= 3 + 5 || start.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (data_dir, config) = d.kill9();
    let at_kill = Ledger::open(&DataDir::new(&data_dir))
        .all_fees()
        .expect("fees")
        .len();
    eprintln!("killed with {at_kill} of {} fees durable", 3 + RUNS * FAN);
    assert!(
        at_kill < 3 + RUNS * FAN,
        "the kill should land before every call was charged ({at_kill})"
    );
    let d = DaemonProcess::spawn(bin(), &data_dir, &config);
    for run in &runs {
        let v = d.wait_finished(&buyer, run, Duration::from_secs(180));
        assert_eq!(v["status"], "succeeded", "{run}: {v}");
        let fees = fees_of(&d, &buyer, run);
        let calls: BTreeSet<String> = fees
            .iter()
            .map(|e| format!("{}/{}", e["node"].as_str().expect("node"), e["attempt"]))
            .collect();
        assert_eq!(fees.len(), FAN, "{run}: one fee per call, none doubled");
        assert_eq!(calls.len(), FAN, "{run}: none lost: {calls:?}");
        assert!(
            fees.iter()
                .all(|e| e["cost_micros"].as_u64() == Some(PRICE))
        );
    }
    let calls = (3 + RUNS * FAN) as u64;
    let revenue = calls * PRICE;

    // The listing's measured cost card counts exactly the buyer's calls.
    let (s, v) = d.get("/v1/market/listings/acme/summarize", &buyer);
    assert_eq!(s, 200, "{v}");
    let card = &v["versions"][0]["cost_card"];
    assert_eq!(card["calls"].as_u64(), Some(calls), "{v}");
    assert_eq!(card["failures"].as_u64(), Some(0), "{v}");
    assert_eq!(card["fee_micros"].as_u64(), Some(revenue), "{v}");

    // 6. Payouts: the author's tenant sees its 80 %; the buyer sees nothing.
    let month = this_month();
    let (s, p) = d.get(&format!("/v1/market/payouts?month={month}"), &author);
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["authors"][0]["author"], "acme", "{p}");
    let line = &p["authors"][0]["listings"][0];
    assert_eq!(line["calls"].as_u64(), Some(calls), "{p}");
    assert_eq!(line["revenue_micros"].as_u64(), Some(revenue), "{p}");
    assert_eq!(line["net_micros"].as_u64(), Some(revenue * 80 / 100), "{p}");
    assert_eq!(
        line["platform_micros"].as_u64(),
        Some(revenue - revenue * 80 / 100),
        "{p}"
    );
    let (s, p) = d.get(&format!("/v1/market/payouts?month={month}"), &buyer);
    assert_eq!(s, 200, "{p}");
    assert_eq!(
        p["authors"],
        json!([]),
        "another tenant's payouts are not shown: {p}"
    );
    assert_eq!(p["revenue_micros"], 0, "{p}");
    let (s, p) = d.get(
        &format!("/v1/market/payouts?month={month}&author=acme"),
        &buyer,
    );
    assert_eq!(s, 404, "{p}");
    let (s, p) = d.get("/v1/market/payouts?month=2026-13", &author);
    assert_eq!(s, 400, "{p}");
    let (s, p) = d.get(&format!("/v1/market/payouts?month={month}"), &ops);
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["revenue_micros"].as_u64(), Some(revenue), "{p}");
    assert!(d.stop().success());

    let out = harness::soma(bin(), &data_dir)
        .args([
            "market", "payouts", "--month", &month, "--author", "acme", "--json",
        ])
        .output()
        .expect("payouts");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(p["net_micros"].as_u64(), Some(revenue * 80 / 100), "{p}");
    let check = harness::soma(bin(), &data_dir)
        .args(["ledger", "check", "--json"])
        .output()
        .expect("check");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}
