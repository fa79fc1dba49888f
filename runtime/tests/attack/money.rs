//! Issue 12, class 5 — lost and unbounded money — attacked the way an
//! unfriendly tenant would, against a real `soma daemon` process:
//!
//! - a client that leaves mid-call (closes its socket, or outlives the
//!   daemon's request timeout) must still be charged exactly once, and its
//!   call must stop early instead of holding a call thread to its deadline;
//! - a `for_each` node's budget caps the sum over its instances (the
//!   original attack: a `tokens: 1` node budget spent 45 tokens fanned out);
//! - a money budget refuses a call before it runs (`budget-exceeded`), and
//!   nothing beyond the reservation is ever charged;
//! - a provider reporting 2^64−1 tokens is refused and recorded as
//!   exceeding every budget, never settled as a wrapped-around small number;
//! - 1,000 budgets and run-indexed ledger lookups stay fast on a large
//!   ledger, including the first budget read after a restart.

use std::{
    io::Write as _,
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use soma_tests::{
    daemon::{Bystander, DaemonProcess, assert_unharmed, time_calls, token},
    llm_fixture::LlmFixture,
};

// The tests of this file run alone (`crate::alone`): several spin
// capsules on purpose, and each measures a bystander's latency, which
// another test's spinning would distort on a small machine.
use crate::alone as serial;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

/// The ledger entries of `tenant` (as admin), newest first.
fn ledger_of(d: &DaemonProcess, admin: &str, query: &str) -> Vec<Value> {
    let (s, v) = d.get(&format!("/v1/ledger?{query}&limit=10000"), admin);
    assert_eq!(s, 200, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

/// Poll until `f` gives `Some`, or panic after `deadline`.
fn poll<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The account of budget `scope` as `GET /v1/budgets` shows it.
fn account(d: &DaemonProcess, admin: &str, scope: &str) -> Value {
    let (s, v) = d.get("/v1/budgets", admin);
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .and_then(|a| a.iter().find(|b| b["scope"] == scope))
        .map(|b| b["account"].clone())
        .unwrap_or_else(|| panic!("no budget {scope} in {v}"))
}

fn put_budget(d: &DaemonProcess, admin: &str, body: &Value) {
    let (s, v, _) = d.request(
        reqwest::Method::PUT,
        "/v1/budgets",
        Some(admin),
        Some(body.to_string()),
    );
    assert_eq!(s, 200, "{v}");
}

fn cost_sum(entries: &[Value]) -> u64 {
    entries
        .iter()
        .map(|e| e["cost_micros"].as_u64().expect("cost"))
        .sum()
}

#[test]
fn a_client_that_leaves_mid_call_is_charged_once_and_its_call_stops() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = token(bin(), dir.path(), "ops", "operator");
    let mallory = token(bin(), dir.path(), "mallory", "run,read");
    let trudy = token(bin(), dir.path(), "trudy", "run,read");
    let alice = token(bin(), dir.path(), "alice", "run,read");
    // Two call threads: a leaving client that kept its call running to the
    // 10 s deadline would hold one of them for everyone.
    let d = DaemonProcess::start(
        bin(),
        dir.path(),
        "call_threads = 2\nrequest_timeout_ms = 400",
        "",
    );
    let idle = time_calls(&d.url, &alice, 20);
    let bystander = Bystander::start(&d.url, &alice, Duration::from_millis(10));

    // 1. Raw TCP: send the whole request, wait a moment, close the socket.
    let body = json!({"capsule": "hostile-loop", "input": {}}).to_string();
    let mut sock = TcpStream::connect(d.addr()).expect("connect");
    write!(
        sock,
        "POST /v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {mallory}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    std::thread::sleep(Duration::from_millis(250));
    drop(sock);
    let left = Instant::now();
    let charged = poll(Duration::from_secs(8), "mallory's charge", || {
        let e = ledger_of(&d, &admin, "tenant=mallory");
        (!e.is_empty()).then_some(e)
    });
    let stopped_after = left.elapsed();

    // 2. The daemon's own request timeout (400 ms) drops the handler.
    let started = Instant::now();
    let (s, v) = d.post("/v1/runs", &trudy, &json!({"capsule": "hostile-loop"}));
    assert_ne!(s, 200, "the request timeout should have answered: {v}");
    let timed_out = poll(Duration::from_secs(8), "trudy's charge", || {
        let e = ledger_of(&d, &admin, "tenant=trudy");
        (!e.is_empty()).then_some(e)
    });
    let trudy_after = started.elapsed();

    let during = bystander.finish();
    // Wait for anything late to show up: one more bystander round trip
    // through the same pool, then read again.
    let _ = time_calls(&d.url, &alice, 3);
    for (tenant, first) in [("mallory", &charged), ("trudy", &timed_out)] {
        let entries = ledger_of(&d, &admin, &format!("tenant={tenant}"));
        assert_eq!(&entries, first, "{tenant} was charged again later");
        let wall: Vec<_> = entries
            .iter()
            .filter(|e| e["kind"] == "wall-time")
            .collect();
        let fuel: Vec<_> = entries.iter().filter(|e| e["kind"] == "fuel").collect();
        assert_eq!(
            wall.len(),
            1,
            "{tenant}: exactly one wall-time charge: {entries:?}"
        );
        assert_eq!(
            fuel.len(),
            1,
            "{tenant}: exactly one fuel charge: {entries:?}"
        );
        let wall_us = wall[0]["quantity"].as_u64().expect("quantity");
        let fuel_used = fuel[0]["quantity"].as_u64().expect("quantity");
        eprintln!("{tenant}: charged {wall_us} µs of wall time and {fuel_used} fuel");
        assert!(wall_us > 100_000, "{tenant}: it ran until the client left");
        assert!(
            wall_us < 4_000_000,
            "{tenant}: the call ran {wall_us} µs; it should stop within ticks of the \
             client leaving, far before its 10 s deadline"
        );
        // Like a deadline kill: wasmtime cannot tell the fuel burned before
        // an epoch interrupt, so the whole budget (limits.fuel, 10^10) is
        // charged — leaving early must never be cheaper than waiting.
        assert_eq!(fuel_used, 10_000_000_000, "{tenant}: the fuel budget");
    }
    eprintln!(
        "the charge was durable {stopped_after:?} after the socket closed; \
         {trudy_after:?} after the timed-out request started"
    );
    assert!(stopped_after < Duration::from_secs(4));
    assert_unharmed(&idle, &during, 3.0);
}

/// `[ledger]` prices that make fuel cost 1 micro-unit per unit.
const PRICED: &str = "[ledger]\nfuel_price_per_1k_micros = 1000\n";

#[test]
fn a_money_budget_refuses_a_call_before_it_runs() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = token(bin(), dir.path(), "ops", "operator");
    let poor = token(bin(), dir.path(), "poor", "run,read");
    let alice = token(bin(), dir.path(), "alice", "run,read");
    let d = DaemonProcess::start(bin(), dir.path(), "", PRICED);
    let budget = 2_000_000u64;
    put_budget(
        &d,
        &admin,
        &json!({"scope": "tenant:poor", "micros": budget}),
    );
    let idle = time_calls(&d.url, &alice, 20);
    let bystander = Bystander::start(&d.url, &alice, Duration::from_millis(10));

    // The default fuel limit (10^10) costs up to 10^10 micro-units: refused
    // before instantiation, nothing charged.
    let (s, v) = d.post("/v1/runs", &poor, &json!({"capsule": "hostile-loop"}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["failure"]["class"], "budget-exceeded", "{v}");
    let message = v["failure"]["message"].as_str().expect("message");
    assert!(
        message.contains("tenant:poor") && message.contains("fuel"),
        "the refusal names the budget and what to change: {message}"
    );
    assert!(ledger_of(&d, &admin, "tenant=poor").is_empty());

    // With a fuel limit the budget covers, hostile-loop burns all of it:
    // each call costs exactly its reservation. Keep calling until refused.
    let limit = 600_000u64;
    let mut ran = 0;
    let mut refused = 0;
    for _ in 0..8 {
        let (s, v) = d.post(
            "/v1/runs",
            &poor,
            &json!({"capsule": "hostile-loop", "limits": {"fuel": limit}}),
        );
        assert_eq!(s, 200, "{v}");
        match v["failure"]["class"].as_str() {
            Some("out-of-fuel") => ran += 1,
            Some("budget-exceeded") => refused += 1,
            other => panic!("unexpected {other:?}: {v}"),
        }
        let spent = cost_sum(&ledger_of(&d, &admin, "tenant=poor"));
        assert!(spent <= budget, "spent {spent} of a {budget} budget");
    }
    let during = bystander.finish();
    let entries = ledger_of(&d, &admin, "tenant=poor");
    let spent = cost_sum(&entries);
    let acc = account(&d, &admin, "tenant:poor");
    eprintln!("{ran} calls ran, {refused} refused; spent {spent} of {budget}: {acc}");
    // 600k fuel + wall time (free) per call: 3 fit in 2M, the rest do not.
    assert_eq!(ran, 3, "{entries:?}");
    assert_eq!(refused, 5);
    assert_eq!(spent, 3 * limit);
    assert_eq!(acc["spent_micros"], spent, "budget and ledger agree");
    assert_eq!(acc["reserved_micros"], 0, "no reservation is left behind");
    assert_unharmed(&idle, &during, 3.0);
}

#[test]
fn a_fan_out_node_budget_caps_the_sum_over_its_instances() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = token(bin(), dir.path(), "ops", "operator");
    let mallory = token(bin(), dir.path(), "mallory", "run,read");
    let d = DaemonProcess::start(bin(), dir.path(), "", PRICED);
    // 12 instances of 300k fuel each would cost 3.6M micro-units; the
    // node's budget is 1M (usd 1.0).
    let items: Vec<u32> = (0..12).collect();
    let spec = json!({
        "version": 1,
        "name": "fan",
        "capsules": {"loop": "hostile-loop"},
        "inputs": {"items": {"default": items}},
        "policy": {"concurrency": 4},
        "nodes": [{
            "id": "fan",
            "capsule": "loop",
            "for_each": "{{ input.items }}",
            "input": {"k": "{{ item }}"},
            "limits": {"fuel": 300_000},
            "catch": true,
            "budget": {"usd": 1.0},
        }],
    });
    let (s, v) = d.post("/v1/runs", &mallory, &json!({"dag": spec}));
    assert_eq!(s, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    d.wait_finished(&mallory, &run, Duration::from_secs(30));
    let entries = ledger_of(&d, &admin, &format!("run={run}"));
    let spent = cost_sum(&entries);
    let instances = entries.iter().filter(|e| e["kind"] == "fuel").count();
    let acc = account(&d, &admin, &format!("node:{run}/fan"));
    eprintln!("{instances} of 12 instances charged, {spent} micro-units: {acc}");
    assert!(spent <= 1_000_000, "the node spent {spent} > its 1M budget");
    assert_eq!(
        instances, 3,
        "300k each: three fit in 1M, the others are refused"
    );
    assert_eq!(acc["spent_micros"], spent);
    assert_eq!(acc["reserved_micros"], 0);
    assert!(
        entries
            .iter()
            .all(|e| e["node"].as_str().is_some_and(|n| n.starts_with("fan["))),
        "{entries:?}"
    );
}

/// A daemon whose `default` model is served by `fixture` as `model`, with
/// the summarize capsule in its catalog.
fn llm_daemon(dir: &Path, fixture: &LlmFixture, model: &str) -> DaemonProcess {
    let extra = format!(
        "[[daemon.capsules]]\nname = \"summarize\"\npath = \"{}\"\n\
         [policy]\nllm_models = [\"default\"]\n\
         [[llm.providers]]\nname = \"fixture\"\nbase_url = \"{}\"\nmodels = [\"{model}\"]\n\
         aliases = {{ default = \"{model}\" }}\nmax_retries = 0\n\
         price_input_per_1k_micros = 1500\nprice_output_per_1k_micros = 2000\n",
        soma_capsules::SUMMARIZE_COMPONENT,
        fixture.base_url(),
    );
    DaemonProcess::start(bin(), dir, "", &extra)
}

#[test]
fn a_tokens_budget_on_a_fanned_out_llm_node_is_not_multiplied() {
    let _serial = serial();
    let fixture = LlmFixture::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = token(bin(), dir.path(), "ops", "operator");
    let mallory = token(bin(), dir.path(), "mallory", "run,read");
    let d = llm_daemon(dir.path(), &fixture, "fixture-ok");
    // The reported attack: `tokens: 1` on a node that fans out over texts.
    let texts = ["one two three", "four five six", "seven eight nine ten"];
    let spec = json!({
        "version": 1,
        "name": "fan-llm",
        "capsules": {"s": "summarize"},
        "inputs": {"texts": {"default": texts}},
        "nodes": [{
            "id": "sum",
            "capsule": "s",
            "for_each": "{{ input.texts }}",
            "input": {"text": "{{ item }}", "max_words": 5},
            "budget": {"tokens": 1},
        }],
    });
    let (s, v) = d.post("/v1/runs", &mallory, &json!({"dag": spec}));
    assert_eq!(s, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let done = d.wait_finished(&mallory, &run, Duration::from_secs(30));
    let tokens: u64 = ledger_of(&d, &admin, &format!("run={run}"))
        .iter()
        .filter(|e| {
            e["kind"]
                .as_str()
                .is_some_and(|k| k.starts_with("llm-tokens"))
        })
        .map(|e| e["quantity"].as_u64().expect("quantity"))
        .sum();
    eprintln!(
        "{tokens} tokens charged, {} provider requests: {}",
        fixture.requests(),
        done["status"]
    );
    assert!(tokens <= 1, "a tokens: 1 node spent {tokens} tokens");
    assert_eq!(fixture.requests(), 0, "no request fits in one token");
}

#[test]
fn a_provider_reporting_u64_max_tokens_is_refused_and_exhausts_the_budget() {
    let _serial = serial();
    let fixture = LlmFixture::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = token(bin(), dir.path(), "ops", "operator");
    let mallory = token(bin(), dir.path(), "mallory", "run,read");
    let d = llm_daemon(dir.path(), &fixture, "fixture-huge-usage");
    put_budget(
        &d,
        &admin,
        &json!({"scope": "tenant:mallory", "tokens": 1_000_000}),
    );
    let call = || {
        let (s, v) = d.post(
            "/v1/runs",
            &mallory,
            &json!({"capsule": "summarize", "input": {"text": "a b c d e f", "max_words": 3}}),
        );
        assert_eq!(s, 200, "{v}");
        v
    };
    let first = call();
    let note = first["output"]["note"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(first["output"]["source"], "extractive", "{first}");
    assert!(
        note.contains("budget exceeded"),
        "the completion was refused: {first}"
    );
    let acc = account(&d, &admin, "tenant:mallory");
    eprintln!("after the 2^64-1 report: {acc}");
    assert_eq!(
        acc["spent_tokens"].as_u64(),
        Some(u64::MAX),
        "settled as exceeding every budget, not wrapped: {acc}"
    );
    let requests = fixture.requests();
    let second = call();
    assert!(
        second["output"]["note"]
            .as_str()
            .is_some_and(|n| n.contains("budget exceeded")),
        "{second}"
    );
    assert_eq!(
        fixture.requests(),
        requests,
        "the next call is refused up front"
    );
}

#[test]
fn a_thousand_budgets_and_run_lookups_are_fast_on_a_large_ledger() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = token(bin(), dir.path(), "ops", "operator");
    let acme = token(bin(), dir.path(), "acme", "run,read");
    let d = DaemonProcess::start(bin(), dir.path(), "", "");
    // A large ledger: 4,000 echo instances → 8,000 entries in one run.
    let items: Vec<u32> = (0..4000).collect();
    let big = json!({
        "version": 1, "name": "big", "capsules": {"e": "echo"},
        "inputs": {"items": {"default": items}},
        "policy": {"concurrency": 2},
        "nodes": [{"id": "n", "capsule": "e", "for_each": "{{ input.items }}", "input": "{{ item }}"}],
    });
    let (s, v) = d.post("/v1/runs", &acme, &json!({"dag": big}));
    assert_eq!(s, 202, "{v}");
    let big_run = v["run"].as_str().expect("run").to_owned();
    d.wait_finished(&acme, &big_run, Duration::from_secs(60));

    // A spec with 1,000 node budgets (and a run budget).
    let nodes: Vec<Value> = (0..1000)
        .map(|k| json!({"id": format!("n{k}"), "capsule": "e", "budget": {"tokens": 9}}))
        .collect();
    let spec = json!({
        "version": 1, "name": "budgets", "capsules": {"e": "echo"},
        "budget": {"tokens": 100_000}, "nodes": nodes,
    });
    let started = Instant::now();
    let (s, v) = d.post("/v1/runs", &acme, &json!({"dag": spec}));
    let create = started.elapsed();
    assert_eq!(s, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    d.wait_finished(&acme, &run, Duration::from_secs(60));

    let started = Instant::now();
    let entries = ledger_of(&d, &admin, &format!("run={run}"));
    let lookup = started.elapsed();
    assert_eq!(entries.len(), 2000, "wall time + fuel per node");
    let started = Instant::now();
    let (s, v) = d.get("/v1/ledger?run=nonexistent", &admin);
    let miss = started.elapsed();
    assert_eq!((s, v), (200, json!([])));
    eprintln!("create with 1,001 budgets: {create:?}; run lookup: {lookup:?}; miss: {miss:?}");
    assert!(create < Duration::from_secs(2), "creating took {create:?}");
    assert!(
        miss < Duration::from_millis(200),
        "a run lookup took {miss:?}"
    );
    assert!(
        lookup < Duration::from_millis(500),
        "a 2,000-entry run took {lookup:?}"
    );

    // The first budget read after a restart rebuilds 1,001 budgets.
    let (data, config) = d.kill9();
    let d = DaemonProcess::spawn(bin(), &data, &config);
    let started = Instant::now();
    let (s, v) = d.get("/v1/budgets", &admin);
    let first_read = started.elapsed();
    assert_eq!(s, 200, "{v}");
    let list = v.as_array().expect("list");
    assert_eq!(list.len(), 1001);
    let spent: u64 = list
        .iter()
        .map(|b| b["account"]["spent_micros"].as_u64().expect("spent"))
        .sum();
    eprintln!(
        "first budget read after restart: {first_read:?} ({} budgets)",
        list.len()
    );
    assert_eq!(spent, 0, "echo is free at the default prices");
    assert!(first_read < Duration::from_secs(1), "took {first_read:?}");
}

#[test]
fn nodes_a_planner_adds_spend_within_the_planners_budget() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let admin = token(bin(), dir.path(), "ops", "operator");
    let mallory = token(bin(), dir.path(), "mallory", "run,read");
    // 1 micro-unit per 1000 fuel: a call's worst case is 2M at 2·10^9 fuel.
    let d = DaemonProcess::start(
        bin(),
        dir.path(),
        "",
        "[ledger]\nfuel_price_per_1k_micros = 1\n",
    );
    let spec = json!({
        "version": 1,
        "name": "plan-budget",
        "capsules": {
            "planner": "kamachiq-planner",
            "coder": "kamachiq-coder",
            "calculator": "calculator",
            "reviewer": "kamachiq-reviewer",
        },
        "inputs": {"goal": {"default": "build a command-line calculator"}},
        "defaults": {"limits": {"fuel": 2_000_000_000u64}},
        "policy": {"concurrency": 4, "max_expansion_depth": 1, "max_expansion_nodes": 16},
        // The planner and one worker fit in 3M; the plan's four parallel
        // coders would need 8M more.
        "nodes": [{"id": "plan", "capsule": "planner",
                   "input": {"goal": "{{ input.goal }}"}, "budget": {"usd": 3.0}}],
    });
    let (s, v) = d.post("/v1/runs", &mallory, &json!({"dag": spec}));
    assert_eq!(s, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let done = d.wait_finished(&mallory, &run, Duration::from_secs(30));
    let entries = ledger_of(&d, &admin, &format!("run={run}"));
    let spent = cost_sum(&entries);
    let plan_nodes: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["node"].as_str())
        .filter(|n| n.starts_with("plan."))
        .collect();
    let acc = account(&d, &admin, &format!("node:{run}/plan"));
    eprintln!("plan nodes charged: {plan_nodes:?}; {spent} micro-units: {acc}");
    let text = done.to_string();
    assert!(
        text.contains("budget-exceeded") && text.contains(&format!("node:{run}/plan")),
        "a plan node was refused by the planner's budget: {text}"
    );
    assert!(
        spent <= 3_000_000,
        "the planner and its plan spent {spent} > 3M"
    );
    assert_eq!(acc["spent_micros"], spent);
    assert_eq!(acc["reserved_micros"], 0);
}
