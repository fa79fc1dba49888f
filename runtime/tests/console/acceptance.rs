//! Issue 15's acceptance test, in a real headless Chromium, written against
//! the console's DOM contract (the ids `docs/console.md` names per page).
//!
//! The data is `soma_tests::console_seed::seed` (tested now in
//! `browser.rs`): a real KAMACHIQ run, a failed run, a priced
//! published capsule called by the buyer, LLM charges, another tenant's
//! run. Then, in the browser, as the buyer: sign in; search the catalog and
//! open the capsule page, checking the cost card against the ledger; start
//! a DAG run (KAMACHIQ, whose planner adds nodes) from `/ui/runs/new` and
//! watch the nodes change state live without a reload; open the failed run
//! through "failed only" and read its failure class; open costs and check
//! the month's total against `soma bill`; open the other tenant's run URL
//! and get the 404 page; submit a form without its CSRF token and get the
//! 403 page. Screenshots of every page go to `target/console-screenshots/`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use soma_tests::{
    browser::{Browser, Key, Viewport},
    console_seed::{self, CAPSULE, PAID_CALLS, PRICE_MICROS, Seeded},
};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

/// `(node, status)` of every node drawn in the run page's graph.
fn graph(b: &Browser) -> BTreeMap<String, String> {
    let v = b.script(
        "return Array.from(document.querySelectorAll('#graph svg g.node'))\
         .map(g => [g.dataset.node, g.dataset.status]);",
        vec![],
    );
    v.as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| Some((r[0].as_str()?.to_owned(), r[1].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn is_final(status: &str) -> bool {
    ["succeeded", "failed", "skipped", "cancelled"].contains(&status)
}

#[test]
fn the_console_in_a_real_browser_end_to_end() {
    let seeded = console_seed::seed(bin());
    let d = &seeded.daemon;
    let mut b = Browser::start(&d.url);
    b.timeout = Duration::from_secs(30);

    // Sign in as the buyer.
    b.sign_in(&seeded.buyer);
    assert_eq!(b.text("span.who"), "buyer");

    // --- The catalog: search (typo tolerated), facets, the result card.
    b.goto("/ui/market");
    b.wait_for("input#q[name=q]");
    assert!(b.exists("fieldset[data-facet]"), "the catalog shows facets");
    b.fill("input#q", "sumarize");
    b.press(Key::Enter);
    b.wait_for_path("a search", |p| p.contains("q=sumarize"));
    let card = format!("article.listing[data-name='{CAPSULE}']");
    b.wait_for(&card);
    assert!(
        b.exists(&format!("{card} .badge.verified")),
        "verified badge"
    );
    let price = b.text(&format!("{card} .price"));
    assert!(!price.trim().is_empty(), "price shown");
    // A facet narrows the results: the capsule is in category `text`.
    b.goto("/ui/market?q=summarize&category=text");
    b.wait_for(&card);
    b.screenshot("catalog");

    // --- The capsule page and its measured cost card, against the ledger.
    b.click(&format!("{card} a[href='/ui/market/{CAPSULE}']"));
    b.wait_for_path("the capsule page", |p| p == format!("/ui/market/{CAPSULE}"));
    for section in [
        "#readme",
        "#versions",
        "#signatures",
        "#review",
        "#capabilities",
        "#prices",
        "#install",
        "#cost-card",
    ] {
        b.wait_for(section);
    }
    assert!(
        b.text("#install code").contains(CAPSULE),
        "the install command names the capsule"
    );
    let field = |f: &str| -> f64 {
        b.data(&format!("#cost-card dd[data-field={f}]"), "value")
            .unwrap_or_else(|| panic!("cost card field {f}"))
            .parse()
            .unwrap_or_else(|e| panic!("cost card {f}: {e}"))
    };
    let (s, entries) = d.get("/v1/ledger?limit=100000", &seeded.buyer);
    assert_eq!(s, 200, "{entries}");
    let entries = entries.as_array().expect("entries").clone();
    let fees: Vec<&Value> = entries
        .iter()
        .filter(|e| e["kind"] == "marketplace-fee")
        .collect();
    assert_eq!(fees.len(), PAID_CALLS);
    assert_eq!(
        field("calls") as usize,
        fees.len(),
        "calls = the ledger's fee entries"
    );
    assert_eq!(field("success_rate"), 1.0, "every paid call succeeded");
    // The same card the API serves (same library function), field by field.
    let (s, listing) = d.get(&format!("/v1/market/listings/{CAPSULE}"), &seeded.buyer);
    assert_eq!(s, 200, "{listing}");
    let api = &listing["versions"][0]["cost_card"];
    assert_eq!(field("fuel"), api["fuel"].as_f64().expect("fuel"));
    assert_eq!(field("tokens"), api["tokens"].as_f64().expect("tokens"));
    let per_call = field("cost_per_call_micros");
    assert!(
        (per_call - api["cost_per_call_micros"].as_f64().expect("cost/call")).abs() < 1.0,
        "cost per call {per_call} vs {api}"
    );
    assert!(
        per_call >= PRICE_MICROS as f64,
        "each call paid at least the listing price"
    );
    let p50_us = api["latency_p50_us"].as_f64().expect("p50");
    let p95_us = api["latency_p95_us"].as_f64().expect("p95");
    assert!((field("p50_ms") - p50_us / 1000.0).abs() < 1.0);
    assert!((field("p95_ms") - p95_us / 1000.0).abs() < 1.0);
    // The run form validates against the input schema: a bad input lists
    // the fields, a good one answers.
    b.fill("textarea#run-input", r#"{"max_words": "many"}"#);
    b.click("form#run-form button[type=submit]");
    b.wait_for("#run-errors li");
    b.fill(
        "textarea#run-input",
        r#"{"text": "Soma runs capsules. It meters them.", "max_words": 5}"#,
    );
    b.click("form#run-form button[type=submit]");
    b.wait_for("#run-result");
    b.screenshot("capsule");

    // --- A DAG run started from the browser, watched live.
    b.goto("/ui/runs/new");
    b.wait_for("form#new-run textarea#spec[name=spec]");
    b.screenshot("run-new");
    b.script(
        "document.querySelector('#spec').value = arguments[0]; return null;",
        vec![json!(console_seed::kamachiq_spec().to_string())],
    );
    b.click("form#new-run button[type=submit]");
    let run_path = b.wait_for_path("the new run's page", |p| {
        p.starts_with("/ui/runs/") && p != "/ui/runs/new"
    });
    let run = run_path.trim_start_matches("/ui/runs/").to_owned();
    b.wait_for("#graph svg g.node");
    // A marker a reload would erase: the updates must come over SSE.
    b.script("window.__sameDocument = true; return null;", vec![]);
    let first = graph(&b);
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut shot = false;
    loop {
        let now = graph(&b);
        for (node, status) in &now {
            seen.entry(node.clone()).or_default().insert(status.clone());
        }
        if !shot && now.len() > first.len() {
            b.screenshot("run-live");
            shot = true;
        }
        let status = b.data("#run-status", "status").unwrap_or_default();
        if is_final(&status) {
            assert_eq!(status, "succeeded", "the KAMACHIQ run from the browser");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run {run} did not finish: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let last = graph(&b);
    assert_eq!(
        b.script("return window.__sameDocument === true;", vec![]),
        Value::Bool(true),
        "the run page was reloaded instead of updated live"
    );
    let live: Vec<_> = seen
        .iter()
        .filter(|(_, s)| s.iter().any(|s| !is_final(s)) && s.contains("succeeded"))
        .map(|(n, _)| n.clone())
        .collect();
    assert!(
        !live.is_empty(),
        "no node was seen changing from waiting/running to succeeded: {seen:?}"
    );
    let added: Vec<_> = last.keys().filter(|n| !first.contains_key(*n)).collect();
    assert!(
        added.iter().any(|n| n.starts_with("plan.")),
        "the planner's nodes appeared live: first {first:?}, last {last:?}"
    );
    for section in ["#timeline", "#gates", "#logs", "#node-costs"] {
        b.wait_for(section);
    }
    assert!(b.exists("#gates .verdict"), "the reviewer gate's verdicts");
    // The API agrees with the page.
    let (s, v) = d.get(&format!("/v1/runs/{run}"), &seeded.buyer);
    assert_eq!((s, v["status"].as_str()), (200, Some("succeeded")), "{v}");
    b.screenshot("run-done");

    // --- "Failed only", then the failed run's class.
    b.goto("/ui/runs");
    b.wait_for("table#runs");
    b.screenshot("runs");
    b.click("a#failed-only");
    b.wait_for_path("the failed-only list", |p| p.contains("failed=1"));
    b.wait_for("table#runs tbody tr[data-run]");
    let statuses = b.data_all("table#runs tbody tr[data-run]", "status");
    assert!(
        statuses.iter().all(|s| s.as_deref() == Some("failed")),
        "failed only: {statuses:?}"
    );
    let row = format!("table#runs tbody tr[data-run='{}']", seeded.failed_run);
    b.wait_for(&row);
    assert_eq!(
        b.text(&format!("{row} td[data-field=failure-class]")),
        "out-of-fuel"
    );
    b.screenshot("runs-failed");
    b.click(&format!("{row} a[href='/ui/runs/{}']", seeded.failed_run));
    b.wait_for("#run-status[data-status=failed]");
    assert!(b.text("#failure-class").contains("out-of-fuel"));
    b.screenshot("run-failed");
    assert!(!b.exists("form#resume-form") || b.exists("form#resume-form button"));

    // --- Another tenant's run: the 404 page, same as a run that does not exist.
    b.goto(&format!("/ui/runs/{}", seeded.other_run));
    b.wait_for("h1");
    assert!(b.text("h1").starts_with("404"), "{}", b.text("h1"));
    let theirs = b.text(".error-message");
    b.goto("/ui/runs/r0000000000000000");
    assert_eq!(b.text(".error-message"), theirs, "the same 404 either way");
    b.screenshot("other-tenant-run");

    // --- Author console and operations (operations: 404 for a tenant).
    b.goto("/ui/author");
    b.wait_for("#submissions");
    b.wait_for("#earnings");
    b.wait_for("#payouts");
    b.screenshot("author");
    b.goto("/ui/ops");
    assert!(b.text("h1").starts_with("404"), "ops is operator only");

    // --- A form without its CSRF token: the 403 page.
    b.goto(&format!("/ui/runs/{run}"));
    b.wait_for("#run-status");
    b.goto("/ui/runs/new");
    b.wait_for("form#new-run");
    b.script(
        "document.querySelector('form#new-run input[name=csrf]').remove();\
         document.querySelector('#spec').value = arguments[0]; return null;",
        vec![json!(console_seed::echo_spec("no-csrf").to_string())],
    );
    b.click("form#new-run button[type=submit]");
    b.wait_until("the 403 page", |b| b.source().contains("403"));
    assert!(b.text("h1").starts_with("403"));
    assert!(b.text(".error-message").contains("CSRF"));

    // --- Costs: the month's total is `soma bill`'s (read last: the run
    // above was charged).
    let month = console_seed::this_month();
    b.goto(&format!("/ui/costs?month={month}"));
    for section in [
        "#by-capsule",
        "#by-model",
        "#by-day",
        "#budgets",
        "#forecast",
    ] {
        b.wait_for(section);
    }
    for chart in ["#by-capsule", "#by-model", "#by-day", "#forecast"] {
        assert!(
            b.exists(&format!("{chart} svg")) || b.exists(&format!("{chart} figure.chart svg")),
            "{chart} has a chart"
        );
    }
    b.wait_for("#backtest-error");
    let shown: u64 = b
        .data("#month-total", "micros")
        .expect("data-micros")
        .parse()
        .expect("micros");
    b.screenshot("costs");
    b.set_viewport(Viewport::Phone);
    assert!(!b.scrolls_horizontally(), "costs at phone width");
    b.set_viewport(Viewport::Desktop);
    drop(b);

    let data = seeded.data();
    let Seeded { daemon, .. } = seeded;
    assert!(daemon.stop().success());
    let bill = console_seed::soma_bill(bin(), &data, "buyer", &month);
    assert_eq!(
        bill["total_micros"].as_u64(),
        Some(shown),
        "#month-total vs soma bill: {bill}"
    );
}
