//! Marketplace fees end to end, with real capsules from `capsules/`.
//!
//! These tests are about fees, not publishing: each writes the market
//! store directly (submit → review passed → published, with the component
//! digest of the capsule file and a `[price]` in its listing) instead of
//! going through a registry and signatures (`market.rs` covers that path).
//! Everything else is real: the engine or a `soma daemon` process, the
//! DAG scheduler, the ledger, the LLM fixture, SIGKILL.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use soma_runtime::{
    CallOptions, Config, Engine,
    budget::{Limit, Scope},
    ledger::{Entry, Filter, Kind, Ledger, fee_tags},
    market::{payouts, pricing::PriceBook, store::Market},
    store::DataDir,
};
use soma_tests::{
    daemon::{self as harness, DaemonProcess},
    llm_fixture::LlmFixture,
};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

use soma_tests::market::publish_priced as publish;

fn this_month() -> String {
    let now = soma_runtime::market::store::now_ms();
    soma_runtime::ledger::day_of(now)[..7].to_owned()
}

fn fees(ledger: &Ledger, run: &str) -> Vec<Entry> {
    ledger
        .ls(&Filter {
            run: Some(run.into()),
            ..Filter::default()
        })
        .expect("ls")
        .into_iter()
        .filter(|e| e.kind == Kind::MarketplaceFee)
        .collect()
}

/// In process: a per-call capsule (calculator) pays one fee per
/// successful call, split 80/20 in the same transaction; a replay of the
/// same run/node/attempt is not charged again; a failed call pays no fee;
/// two runs calling concurrently against a tenant's money budget cannot
/// together pass it through fees; payouts and both checks agree, and the
/// check catches a fee for a version that was never published.
#[test]
fn per_call_fees_are_charged_once_split_and_held_against_budgets() {
    let dir = tempfile::tempdir().expect("tmp");
    let engine = Engine::new(Config::default(), DataDir::new(dir.path())).expect("engine");
    let db = engine.data().database().clone();
    let digest = publish(
        &Market::new(db.clone()),
        "acme/calc",
        "1.0.0",
        soma_capsules::CALCULATOR_COMPONENT,
        "model = \"per-call\"\nmicros = 2500",
    );
    PriceBook::install(&engine);
    let calc = engine
        .load_file(Path::new(soma_capsules::CALCULATOR_COMPONENT))
        .expect("load");
    assert_eq!(calc.digest(), digest);
    let ledger = Ledger::new(db.clone());

    let mut options = CallOptions::for_capsule(&engine, &calc);
    options.set_run("run-1");
    options.tenant = "buyer".into();
    let out = engine.call(&calc, r#"{"expr": "6*7"}"#, &options);
    assert!(out.result.is_ok(), "{:?}", out.result);
    // The same run/node/attempt again: a replay.
    let again = engine.call(&calc, r#"{"expr": "6*7"}"#, &options);
    assert!(again.result.is_ok());
    let charged = fees(&ledger, "run-1");
    assert_eq!(charged.len(), 1, "one fee for a replayed call: {charged:?}");
    let fee = &charged[0];
    assert_eq!((fee.quantity, fee.cost_micros, fee.seq), (1, 2500, 0));
    assert_eq!(fee.capsule, digest.to_string());
    assert_eq!(fee.model.as_deref(), Some("acme/calc@1.0.0"));

    // A capsule error pays no fee (fuel and wall time are still charged).
    let mut failing = options.clone();
    failing.set_run("run-2");
    let out = engine.call(&calc, r#"{"expr": "6*"}"#, &failing);
    assert!(out.result.is_err());
    assert!(fees(&ledger, "run-2").is_empty());
    assert!(
        !ledger
            .ls(&Filter {
                run: Some("run-2".into()),
                ..Filter::default()
            })
            .expect("ls")
            .is_empty(),
        "the failed call's fuel and wall time are charged"
    );

    // Two runs at once against a tenant budget of 6000: at most two fees of 2500.
    engine
        .metering()
        .set_limit(
            Scope::Tenant("thrifty".into()),
            Some(Limit {
                tokens: None,
                micros: Some(6000),
            }),
        )
        .expect("budget");
    let outcomes: Vec<(u32, u32)> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|r| {
                let engine = &engine;
                let calc = &calc;
                s.spawn(move || {
                    let mut ok = 0;
                    let mut refused = 0;
                    for i in 0..10 {
                        let mut o = CallOptions::for_capsule(engine, calc);
                        o.set_run(&format!("thrifty-{r}"));
                        o.node = format!("n{i}").into();
                        o.tenant = "thrifty".into();
                        match engine.call(calc, r#"{"expr": "1+1"}"#, &o).result {
                            Ok(_) => ok += 1,
                            Err(f) => {
                                assert_eq!(f.class(), "budget-exceeded", "{f}");
                                assert!(f.to_string().contains("marketplace fee"), "{f}");
                                refused += 1;
                            }
                        }
                    }
                    (ok, refused)
                })
            })
            .collect();
        runs.into_iter().map(|h| h.join().expect("run")).collect()
    });
    let succeeded: u32 = outcomes.iter().map(|(ok, _)| ok).sum();
    assert_eq!(succeeded, 2, "{outcomes:?}");
    let spent: u64 = ["thrifty-0", "thrifty-1"]
        .iter()
        .flat_map(|r| fees(&ledger, r))
        .map(|e| e.cost_micros)
        .sum();
    assert_eq!(spent, 5000);
    let account = engine
        .metering()
        .budgets()
        .account(&Scope::Tenant("thrifty".into()))
        .expect("account");
    assert_eq!((account.spent_micros, account.reserved_micros), (5000, 0));

    // Payouts: 3 fees of 2500 → 7500 revenue, 6000 author, 1500 platform.
    let month = this_month();
    let p = payouts::report(&ledger, &month, Some("acme")).expect("payouts");
    assert_eq!(p.authors.len(), 1);
    let line = &p.authors[0].listings[0];
    assert_eq!(line.listing, "acme/calc");
    assert_eq!((line.calls, line.fees), (3, 3));
    assert_eq!(
        (line.revenue_micros, line.net_micros, line.platform_micros),
        (7500, 6000, 1500)
    );
    assert!(
        payouts::report(&ledger, &month, Some("nobody"))
            .expect("payouts")
            .authors
            .is_empty()
    );
    let report = ledger.check_integrity().expect("check");
    assert!(report.ok, "{:?}", report.problems);
    assert!(
        payouts::check_fees(&ledger, &db.clone().into())
            .expect("fees")
            .is_empty()
    );

    // A fee for a version that was never published is caught.
    let (provider, model) = fee_tags("acme/ghost@1.0.0", 80);
    ledger
        .append(&[Entry {
            id: 0,
            time_ms: soma_runtime::market::store::now_ms(),
            tenant: "buyer".into(),
            run: "forged".into(),
            node: "-".into(),
            attempt: 0,
            seq: 0,
            capsule: digest.to_string(),
            kind: Kind::MarketplaceFee,
            quantity: 1,
            unit_price_micros: 1_000_000,
            cost_micros: 1000,
            provider: Some(provider),
            model: Some(model),
            estimated: false,
        }])
        .expect("append");
    assert!(
        ledger.check_integrity().expect("check").ok,
        "the split itself is consistent"
    );
    let problems = payouts::check_fees(&ledger, &db.clone().into()).expect("fees");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].to_string().contains("acme/ghost@1.0.0"),
        "{}",
        problems[0]
    );
}

fn token(data: &Path, tenant: &str, scopes: &str) -> String {
    harness::token(bin(), data, tenant, scopes)
}

fn ledger_of(d: &DaemonProcess, admin: &str, run: &str) -> Vec<Value> {
    let (s, v) = d.get(&format!("/v1/ledger?run={run}&limit=100000"), admin);
    assert_eq!(s, 200, "{v}");
    v.as_array().expect("entries").clone()
}

fn kind(e: &Value) -> &str {
    e["kind"].as_str().unwrap_or("")
}

/// Through a real daemon: a DAG with a per-event capsule (notebook; only
/// `progress` is billable, capped at 3 per call) and a per-1k-tokens
/// capsule (summarize, against the LLM fixture) is charged exactly: the
/// per-event fee counts only the capped billable events, the per-token fee
/// is the node's LLM tokens at the listing price, a failed node pays no
/// fee; then `soma market payouts` shows 80 % for the author and `soma
/// ledger check` passes.
#[test]
fn a_dag_of_priced_capsules_is_charged_exact_fees_and_splits() {
    let fixture = LlmFixture::start();
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path();
    let admin = token(data, "ops", "operator");
    let buyer = token(data, "buyer", "run,read");
    {
        let market = Market::new(DataDir::new(data).database().clone());
        publish(
            &market,
            "acme/notebook",
            "1.0.0",
            soma_capsules::NOTEBOOK_COMPONENT,
            "model = \"per-event\"\nevents = { progress = 7, stored = 500 }",
        );
        publish(
            &market,
            "acme/summarize",
            "2.1.0",
            soma_capsules::SUMMARIZE_COMPONENT,
            "model = \"per-1k-tokens\"\nmicros = 1500",
        );
    }
    let extra = format!(
        "[[daemon.capsules]]\nname = \"summarize\"\npath = \"{}\"\n\
         [market]\nmax_billable_events_per_call = 3\n\
         [policy]\nllm_models = [\"default\"]\n\
         [[llm.providers]]\nname = \"fixture\"\nbase_url = \"{}\"\nmodels = [\"fixture-ok\"]\n\
         aliases = {{ default = \"fixture-ok\" }}\nmax_retries = 0\n",
        soma_capsules::SUMMARIZE_COMPONENT,
        fixture.base_url(),
    );
    let d = DaemonProcess::start(bin(), data, "", &extra);
    let spec = json!({
        "version": 1,
        "name": "priced",
        "capsules": {"nb": "notebook", "s": "summarize"},
        "nodes": [
            {"id": "spam", "capsule": "nb", "input": {"op": "spam", "n": 5}},
            {"id": "sum", "capsule": "s",
             "input": {"text": "Soma runs capsules under hard limits and charges them", "max_words": 6}},
            {"id": "broken", "capsule": "nb", "input": {"op": "read", "path": "/nope"}, "catch": true},
        ],
    });
    let (s, v) = d.post("/v1/runs", &buyer, &json!({"dag": spec}));
    assert_eq!(s, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let done = d.wait_finished(&buyer, &run, Duration::from_secs(60));
    assert_eq!(done["status"], "succeeded", "{done}");
    let entries = ledger_of(&d, &admin, &run);
    let fee_of = |node: &str| -> Vec<&Value> {
        entries
            .iter()
            .filter(|e| kind(e) == "marketplace-fee" && e["node"] == node)
            .collect()
    };
    // 5 progress events, 3 billable (the cap), 7 micros each.
    let spam = fee_of("spam");
    assert_eq!(spam.len(), 1, "{spam:?}");
    assert_eq!(
        (
            spam[0]["quantity"].as_u64(),
            spam[0]["cost_micros"].as_u64()
        ),
        (Some(3), Some(21))
    );
    assert_eq!(spam[0]["model"], "acme/notebook@1.0.0");
    // The summarize node's LLM tokens at 1500 per 1000, rounded up.
    let tokens: u64 = entries
        .iter()
        .filter(|e| e["node"] == "sum" && kind(e).starts_with("llm-tokens"))
        .map(|e| e["quantity"].as_u64().expect("quantity"))
        .sum();
    assert!(tokens > 0, "the fixture was called: {entries:?}");
    let sum = fee_of("sum");
    assert_eq!(sum.len(), 1, "{sum:?}");
    assert_eq!(sum[0]["quantity"].as_u64(), Some(tokens));
    assert_eq!(
        sum[0]["cost_micros"].as_u64(),
        Some((tokens * 1500).div_ceil(1000))
    );
    // A failed call pays no fee.
    assert!(fee_of("broken").is_empty());
    assert!(
        entries.iter().any(|e| e["node"] == "broken"),
        "the failed node's call was charged its fuel and wall time"
    );
    let total = 21 + (tokens * 1500).div_ceil(1000);
    assert!(d.stop().success());

    let out = harness::soma(bin(), data)
        .args(["market", "payouts", "--month", &this_month(), "--json"])
        .output()
        .expect("payouts");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(p["revenue_micros"].as_u64(), Some(total), "{p}");
    let acme = &p["authors"][0];
    assert_eq!(acme["author"], "acme");
    let lines: BTreeMap<String, &Value> = acme["listings"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| (l["listing"].as_str().expect("name").to_owned(), l))
        .collect();
    for (name, fee) in [
        ("acme/notebook", 21u64),
        ("acme/summarize", (tokens * 1500).div_ceil(1000)),
    ] {
        let l = lines[name];
        assert_eq!(l["revenue_micros"].as_u64(), Some(fee), "{l}");
        assert_eq!(l["net_micros"].as_u64(), Some(fee * 80 / 100), "{l}");
        assert_eq!(
            l["platform_micros"].as_u64(),
            Some(fee - fee * 80 / 100),
            "{l}"
        );
        assert_eq!(l["calls"].as_u64(), Some(1), "{l}");
    }
    let check = harness::soma(bin(), data)
        .args(["ledger", "check", "--json"])
        .output()
        .expect("check");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // Price changes through the CLI: an increase waits for the notice, a
    // decrease applies at once; an unpublished listing is refused (exit 29).
    let set = |args: &[&str]| {
        let out = harness::soma(bin(), data)
            .args(["market", "price", "set"])
            .args(args)
            .arg("--json")
            .output()
            .expect("price set");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code(), v)
    };
    let (code, up) = set(&["acme/notebook", "--per-event", "progress=9"]);
    assert_eq!(code, Some(0), "{up}");
    let change = &up["change"];
    assert_eq!(change["increase"], true, "{up}");
    let notice = change["effective_ms"].as_u64().expect("effective")
        - change["announced_ms"].as_u64().expect("announced");
    assert_eq!(notice, 14 * 86_400_000, "{up}");
    let (code, down) = set(&["acme/notebook", "--per-event", "progress=5"]);
    assert_eq!(code, Some(0), "{down}");
    assert_eq!(down["change"]["increase"], false, "{down}");
    assert_eq!(
        down["change"]["effective_ms"],
        down["change"]["announced_ms"]
    );
    let (code, refused) = set(&["acme/nothing", "--per-call", "5"]);
    assert_eq!(code, Some(29), "{refused}");
    let show = harness::soma(bin(), data)
        .args(["market", "price", "show", "acme/notebook", "--json"])
        .output()
        .expect("show");
    let h: Value = serde_json::from_slice(&show.stdout).expect("json");
    let changes = h["history"]["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), 2, "{h}");
    assert!(
        changes[0]["superseded_ms"].is_u64(),
        "the pending increase never applies: {h}"
    );
}

/// The acceptance test's crash half: a real `soma daemon` running DAG runs
/// of many priced calls (echo, per-call) is SIGKILLed mid-way and
/// restarted; every run resumes and finishes, and the ledger holds exactly
/// one fee per instance — none lost, none doubled — and `soma ledger
/// check` (splits and published versions) passes.
#[test]
fn sigkill_mid_run_leaves_exactly_one_fee_per_priced_call() {
    const RUNS: usize = 4;
    const FAN: usize = 300;
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path();
    let admin = token(data, "ops", "operator");
    let buyer = token(data, "buyer", "run,read");
    {
        let market = Market::new(DataDir::new(data).database().clone());
        publish(
            &market,
            "acme/echo",
            "1.0.0",
            soma_capsules::ECHO_COMPONENT,
            "model = \"per-call\"\nmicros = 1000",
        );
    }
    let d = DaemonProcess::start(bin(), data, "dag_drivers = 1\n", "");
    let items: Vec<String> = (0..FAN).map(|i| format!("item-{i}")).collect();
    let spec = json!({
        "version": 1,
        "name": "fan",
        "capsules": {"e": "echo"},
        "inputs": {"items": {"default": items}},
        // One call at a time (each node's charge one durable commit), so
        // the kill lands while later runs are still queued.
        "policy": {"concurrency": 1},
        "nodes": [{"id": "fan", "capsule": "e", "for_each": "{{ input.items }}", "input": "{{ item }}"}],
    });
    let runs: Vec<String> = (0..RUNS)
        .map(|_| {
            let (s, v) = d.post("/v1/runs", &buyer, &json!({"dag": spec}));
            assert_eq!(s, 202, "{v}");
            v["run"].as_str().expect("run").to_owned()
        })
        .collect();
    // Kill once some fees are durable (most calls are still queued or in
    // flight), then count the fees that were durable at the kill.
    let start = Instant::now();
    loop {
        let (_, all) = d.get("/v1/ledger?limit=100000", &admin);
        let fees = all.as_array().map_or(0, |a| {
            a.iter().filter(|e| kind(e) == "marketplace-fee").count()
        });
        if fees >= 10 || start.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let (data_dir, config) = d.kill9();
    let charged_at_kill = {
        let ledger = Ledger::open(&DataDir::new(&data_dir));
        ledger.all_fees().expect("fees").len()
    };
    eprintln!(
        "killed with {charged_at_kill} of {} fees charged",
        RUNS * FAN
    );
    assert!(
        (10..RUNS * FAN).contains(&charged_at_kill),
        "the kill should land mid-way: {charged_at_kill}"
    );
    let d = DaemonProcess::spawn(bin(), &data_dir, &config);
    for run in &runs {
        let v = d.wait_finished(&buyer, run, Duration::from_secs(120));
        assert_eq!(v["status"], "succeeded", "{run}: {v}");
        let entries = ledger_of(&d, &admin, run);
        let fees: Vec<&Value> = entries
            .iter()
            .filter(|e| kind(e) == "marketplace-fee")
            .collect();
        let nodes: BTreeSet<String> = fees
            .iter()
            .map(|e| format!("{}/{}", e["node"].as_str().expect("node"), e["attempt"]))
            .collect();
        assert_eq!(fees.len(), FAN, "{run}: one fee per instance, no double");
        assert_eq!(nodes.len(), FAN, "{run}: {nodes:?}");
        assert!(fees.iter().all(|e| e["cost_micros"] == 1000));
    }
    assert!(d.stop().success());
    let check = harness::soma(bin(), data)
        .args(["ledger", "check", "--json"])
        .output()
        .expect("check");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let out = harness::soma(bin(), data)
        .args([
            "market",
            "payouts",
            "--month",
            &this_month(),
            "--author",
            "acme",
            "--json",
        ])
        .output()
        .expect("payouts");
    let p: Value = serde_json::from_slice(&out.stdout).expect("json");
    let line = &p["authors"][0]["listings"][0];
    assert_eq!(line["calls"].as_u64(), Some((RUNS * FAN) as u64), "{p}");
    assert_eq!(
        line["revenue_micros"].as_u64(),
        Some((RUNS * FAN * 1000) as u64)
    );
    assert_eq!(line["net_micros"].as_u64(), Some((RUNS * FAN * 800) as u64));
}
