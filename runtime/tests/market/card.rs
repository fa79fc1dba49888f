//! The measured cost card (issue 14, item 7) from real calls of real
//! capsules: the calculator succeeds on arithmetic and fails with a capsule
//! error on `1/0`; the card's calls, failures, success rate, latency
//! percentiles, fuel and cost must be what the calls did, per version, and
//! a replayed attempt must not count twice.

use std::path::Path;

use soma_runtime::{
    CallOptions, Capsule, Config, Digest, Engine,
    config::Allocator,
    ledger::Entry,
    market::{
        card::{WINDOW_DAYS, latency_bounds, version_cards},
        listing::Listing,
        store::{Market, NewSubmission, SubmissionState, now_ms},
    },
    store::DataDir,
};

/// Fuel price: 1000 µ per 1000 fuel, so a call costs its fuel in µ.
const FUEL_PRICE: u64 = 1000;
/// Wall-time price per 1000 µs.
const WALL_PRICE: u64 = 7;

fn engine(data: &Path) -> Engine {
    let mut config = Config::default();
    config.engine.allocator = Allocator::OnDemand;
    config.ledger.fuel_price_per_1k_micros = FUEL_PRICE;
    config.ledger.wall_time_price_per_1k_us_micros = WALL_PRICE;
    Engine::new(config, DataDir::new(data)).expect("engine")
}

/// Publishes `acme/calc@version` with `capsule`'s component digest.
fn publish(market: &Market, version: &str, capsule: &Capsule) {
    let listing = Listing::parse(
        &format!(
            "name = \"acme/calc\"\nversion = \"{version}\"\nsummary = \"s\"\nlicense = \"MIT\"\n"
        ),
        Path::new("listing.toml"),
    )
    .expect("listing");
    let id = listing.id();
    market
        .submit(NewSubmission {
            listing,
            repository: "127.0.0.1:5000/acme/calc".into(),
            digest: Digest::of(version.as_bytes()),
            component: capsule.digest(),
            size: 1,
        })
        .expect("submit");
    market
        .record_review(&id, true, Vec::new(), serde_json::json!({"steps": []}))
        .expect("review");
    market
        .transition(&id, SubmissionState::Published, None, |_| {})
        .expect("publish");
}

/// What one call did, as the caller saw it.
struct Done {
    ok: bool,
    wall_us: u64,
    fuel: u64,
}

fn call(engine: &Engine, capsule: &Capsule, run: &str, input: &str) -> Done {
    let mut options = CallOptions::for_capsule(engine, capsule);
    options.run_id = run.into();
    let outcome = engine.call(capsule, input, &options);
    Done {
        ok: outcome.result.is_ok(),
        wall_us: outcome.usage.wall_time_us,
        fuel: outcome.usage.fuel_consumed.expect("fuel is metered"),
    }
}

/// The calculator's input for `expr`.
fn expr_input(expr: &str) -> String {
    serde_json::json!({ "expr": expr }).to_string()
}

/// The nearest-rank `q`-quantile of `values`.
fn nearest_rank(values: &[u64], q: f64) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[test]
fn the_card_shows_what_real_calls_did_per_version_and_a_replay_counts_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine(&dir.path().join("data"));
    let calc = engine
        .load_file(Path::new(soma_capsules::CALCULATOR_COMPONENT))
        .expect("calculator");
    let echo = engine
        .load_file(Path::new(soma_capsules::ECHO_COMPONENT))
        .expect("echo");
    let market = Market::new(engine.data().database().clone());
    publish(&market, "1.0.0", &calc);
    publish(&market, "1.1.0", &echo);

    // Before any call: zeros and no rates.
    let ledger = engine.metering().ledger();
    let cards = version_cards(&market, ledger, "acme/calc", None, now_ms()).expect("cards");
    assert_eq!(cards.len(), 2);
    assert_eq!(cards[0].card.calls, 0);
    assert_eq!(cards[0].card.success_rate, None);

    // 1.0.0 (the calculator): 7 successes, 3 capsule errors.
    let inputs = [
        "1+1", "2*3", "1/0", "(4+5)*6", "2^10", "1/0", "7-8", "0/0", "9/3", "1.5*2",
    ];
    let done: Vec<Done> = inputs
        .iter()
        .enumerate()
        .map(|(i, expr)| call(&engine, &calc, &format!("card-calc-{i}"), &expr_input(expr)))
        .collect();
    let failed = done.iter().filter(|d| !d.ok).count() as u64;
    assert_eq!(failed, 3, "1/0 and 0/0 fail, the rest succeed");
    // 1.1.0 (echo): 4 successes.
    let echoed: Vec<Done> = (0..4)
        .map(|i| call(&engine, &echo, &format!("card-echo-{i}"), "hi"))
        .collect();
    assert!(echoed.iter().all(|d| d.ok));

    // Replays of a succeeded and a failed attempt (same run, node,
    // attempt): charged once by the ledger, so counted once by the card.
    assert!(call(&engine, &calc, "card-calc-0", &expr_input("1+1")).ok);
    assert!(!call(&engine, &calc, "card-calc-2", &expr_input("1/0")).ok);

    let cards = version_cards(&market, ledger, "acme/calc", None, now_ms()).expect("cards");
    assert_eq!(
        cards.iter().map(|c| c.version.as_str()).collect::<Vec<_>>(),
        ["1.1.0", "1.0.0"],
        "newest first"
    );
    let (new, old) = (&cards[0], &cards[1]);
    assert_eq!(old.component, calc.digest().to_string());
    assert_eq!(new.component, echo.digest().to_string());

    let card = &old.card;
    assert_eq!(card.calls, 10);
    assert_eq!(card.failures, 3);
    assert_eq!(card.success_rate, Some(0.7));
    let walls: Vec<u64> = done.iter().map(|d| d.wall_us).collect();
    for (q, reported) in [(0.5, card.latency_p50_us), (0.95, card.latency_p95_us)] {
        let truth = nearest_rank(&walls, q);
        let (low, high) = latency_bounds(reported.expect("a percentile"));
        assert!(
            low <= truth && truth <= high,
            "p{q}: {truth} µs measured, card says {low}..={high}"
        );
    }
    let fuel: u64 = done.iter().map(|d| d.fuel).sum();
    assert_eq!(card.fuel, fuel);
    assert_eq!(card.fuel_per_call, Some(fuel as f64 / 10.0));
    assert_eq!(card.tokens, 0);
    assert_eq!(card.fee_micros, 0);
    let cost: u64 = done
        .iter()
        .map(|d| Entry::cost_for(d.fuel, FUEL_PRICE) + Entry::cost_for(d.wall_us, WALL_PRICE))
        .sum();
    assert_eq!(card.cost_micros, cost);
    assert_eq!(card.cost_per_call_micros, Some(cost as f64 / 10.0));

    let card = &new.card;
    assert_eq!((card.calls, card.failures), (4, 0));
    assert_eq!(card.success_rate, Some(1.0));
    assert_eq!(card.fuel, echoed.iter().map(|d| d.fuel).sum::<u64>());

    // One version asked for; the window is today and the 29 days before.
    let v = semver::Version::new(1, 0, 0);
    let only = version_cards(&market, ledger, "acme/calc", Some(&v), now_ms()).expect("one");
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].card, cards[1].card);
    // 31 days on, every call is out of the window.
    let later = now_ms() + (WINDOW_DAYS as u64 + 1) * 86_400_000;
    let gone = version_cards(&market, ledger, "acme/calc", Some(&v), later).expect("later");
    assert_eq!(gone[0].card.calls, 0);
    // An unpublished name or version is an error naming it.
    let e = version_cards(&market, ledger, "acme/nope", None, now_ms()).expect_err("none");
    assert!(e.to_string().contains("acme/nope"), "{e}");
}

fn soma(data: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_soma"))
        .args(args)
        .arg("--data")
        .arg(data)
        .env_remove("SOMA_CONFIG")
        .env_remove("SOMA_SERVER")
        .output()
        .expect("spawn soma")
}

#[test]
fn soma_market_card_shows_the_calls_of_soma_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let wasm = std::fs::read(soma_capsules::CALCULATOR_COMPONENT).expect("calculator");
    {
        let market = Market::new(DataDir::new(&data).database().clone());
        let listing = Listing::parse(
            "name = \"acme/calc\"\nversion = \"1.0.0\"\nsummary = \"s\"\nlicense = \"MIT\"\n",
            Path::new("listing.toml"),
        )
        .expect("listing");
        market
            .submit(NewSubmission {
                listing,
                repository: "127.0.0.1:5000/acme/calc".into(),
                digest: Digest::of(b"manifest"),
                component: Digest::of(&wasm),
                size: wasm.len() as u64,
            })
            .expect("submit");
        market
            .record_review("acme/calc@1.0.0", true, Vec::new(), serde_json::json!({}))
            .expect("review");
        market
            .transition("acme/calc@1.0.0", SubmissionState::Published, None, |_| {})
            .expect("publish");
    }
    let calc = soma_capsules::CALCULATOR_COMPONENT;
    for (expr, ok) in [("1+1", true), ("1/0", false), ("2*21", true)] {
        let input = expr_input(expr);
        let out = soma(&data, &["run", calc, "--input", &input]);
        assert_eq!(out.status.success(), ok, "{expr}: {:?}", out);
    }

    let out = soma(&data, &["market", "card", "acme/calc", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["window_days"], WINDOW_DAYS);
    let card = &doc["versions"][0]["card"];
    assert_eq!(doc["versions"][0]["version"], "1.0.0");
    assert_eq!(card["calls"], 3, "{doc}");
    assert_eq!(card["failures"], 1, "{doc}");
    assert!(
        card["latency_p95_us"].as_u64().is_some_and(|us| us > 0),
        "{doc}"
    );

    // `soma market ls --json` carries the same card per published version.
    let out = soma(&data, &["market", "ls", "acme/calc", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ls: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(&ls["versions"][0]["card"], card, "{ls}");

    let out = soma(&data, &["market", "card", "acme/calc@1.0.0"]);
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        human.contains("3 calls, 1 failed, success 66.7 %"),
        "{human}"
    );

    let out = soma(&data, &["market", "card", "acme/calc@2.0.0", "--json"]);
    assert!(!out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["ok"], false);
    assert!(
        doc["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("acme/calc@2.0.0")),
        "{doc}"
    );
}
