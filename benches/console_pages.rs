//! Time to first byte of every web-console page (issue 15: ≤ 100 ms on
//! this 2-core machine with 10,000 runs and 10,000 listings stored).
//!
//! The data directory is made by `soma_tests::console_bulk::seed` (two
//! real DAG runs copied through the run journal to 10,000, the search
//! bench's 10,000 listings submitted, reviewed and published through the
//! market store, the search index rebuilt) and kept under
//! `target/console-bench/` for the next run. A real `soma daemon` serves
//! it; the bench signs in through the form (as a browser does: the login
//! nonce cookie, then the session cookie) and asks each page of the DOM
//! contract over one keep-alive connection.
//!
//! A capsule call made through the API once the daemon is up gives the
//! call-run page (calls are held in memory, so they are not seeded).
//!
//! Before the criterion group, each page is timed 20 times after a warm-up
//! and one line per page is printed: status, p50, max, and the target. A
//! page that answers 404 is not built on the branch measured (the core
//! alone has sign-in and the 404 page). In `--test` mode (`cargo test
//! --benches`) the data is 200 runs and 200 listings in a temporary
//! directory and each page is asked 3 times.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use reqwest::{blocking::Client, header};
use soma_tests::{
    console_bulk::{self, Bulk},
    daemon::DaemonProcess,
};

const TARGET: Duration = Duration::from_millis(100);
const RUNS: usize = 10_000;
const LISTINGS: usize = 10_000;

/// The `soma` binary next to this bench executable (target/release/soma).
fn soma_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("soma");
    path.exists().then_some(path)
}

/// The pages of the DOM contract: (label, path, as the operator?).
/// `call_run` is a capsule call made through the API once the daemon is up
/// (calls are held in memory, not seeded).
fn pages(bulk: &Bulk, month: &str, call_run: &str) -> Vec<(String, String, bool)> {
    let listing = bulk.listing.clone();
    let mut out: Vec<(&str, String, bool)> = vec![
        ("login", "/ui/login".into(), false),
        ("market", "/ui/market".into(), false),
        ("market-search", "/ui/market?q=summarize".into(), false),
        (
            "market-search-facet",
            "/ui/market?q=extract+pdf&category=finance".into(),
            false,
        ),
        ("capsule", format!("/ui/market/{listing}"), false),
        ("author", "/ui/author".into(), false),
        ("runs", "/ui/runs".into(), false),
        ("runs-failed", "/ui/runs?failed=1".into(), false),
        ("runs-status", "/ui/runs?status=succeeded".into(), false),
        ("runs-page-20", "/ui/runs?page=20&per=50".into(), false),
        ("runs-new", "/ui/runs/new".into(), false),
        (
            "run-succeeded",
            format!("/ui/runs/{}", bulk.succeeded_run),
            false,
        ),
        ("run-failed", format!("/ui/runs/{}", bulk.failed_run), false),
        ("run-call", format!("/ui/runs/{call_run}"), false),
        ("costs", "/ui/costs".into(), false),
        ("costs-month", format!("/ui/costs?month={month}"), false),
        ("ops", "/ui/ops".into(), true),
        ("ops-reviews", "/ui/ops/reviews".into(), true),
        ("analytics-platform", "/ui/analytics/platform".into(), true),
        (
            "analytics-tenant-month",
            "/ui/analytics/tenant?range=month".into(),
            false,
        ),
        ("analytics-capsule", "/ui/analytics/capsule".into(), false),
        ("analytics-admin", "/ui/analytics/admin".into(), true),
        ("404", "/ui/no-such-page".into(), false),
    ];
    out.drain(..)
        .map(|(l, p, o)| (l.to_owned(), p, o))
        .collect()
}

/// Sign in through the form; returns the `Cookie` header to send.
fn sign_in(client: &Client, base: &str, token: &str) -> String {
    let r = client
        .get(format!("{base}/ui/login"))
        .send()
        .expect("login page");
    let nonce = cookie_value(r.headers(), "soma_login").expect("soma_login cookie");
    let r = client
        .post(format!("{base}/ui/login"))
        .header(header::COOKIE, format!("soma_login={nonce}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("csrf={nonce}&next=%2Fui%2F&token={token}"))
        .send()
        .expect("sign in");
    assert!(r.status().is_redirection(), "sign-in: {}", r.status());
    let session = cookie_value(r.headers(), "soma_session").expect("soma_session cookie");
    format!("soma_session={session}")
}

fn cookie_value(h: &header::HeaderMap, name: &str) -> Option<String> {
    h.get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.to_owned())
}

/// One request; the time until the status line and headers arrived.
fn first_byte(client: &Client, url: &str, cookie: &str) -> (u16, Duration) {
    let start = Instant::now();
    let r = client
        .get(url)
        .header(header::COOKIE, cookie)
        .send()
        .expect("page");
    let took = start.elapsed();
    let status = r.status().as_u16();
    let _ = r.bytes();
    (status, took)
}

/// The seeded data directory: kept under `target/console-bench/` (bench
/// mode), or a fresh temporary one (test mode).
fn data_dir(soma: &Path, test_mode: bool) -> (PathBuf, Bulk, Option<tempfile::TempDir>) {
    let (runs, listings) = if test_mode {
        (200, 200)
    } else {
        (RUNS, LISTINGS)
    };
    if test_mode {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bulk = console_bulk::seed(soma, tmp.path(), runs, listings);
        return (tmp.path().to_owned(), bulk, Some(tmp));
    }
    let target = soma
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf);
    let dir = target.join(format!("console-bench/data-{runs}-{listings}-v1"));
    let saved = dir.join("bulk.json");
    if let Some(bulk) = std::fs::read(&saved)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| Bulk::from_json(&v))
    {
        eprintln!("console_pages: reusing {}", dir.display());
        return (dir, bulk, None);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench data dir");
    let bulk = console_bulk::seed(soma, &dir, runs, listings);
    std::fs::write(&saved, bulk.to_json().to_string()).expect("bulk.json");
    (dir, bulk, None)
}

fn bench(c: &mut Criterion) {
    let Some(soma) = soma_binary() else {
        eprintln!(
            "console_pages: target/release/soma not built; run `cargo xtask bench` (builds it first)"
        );
        return;
    };
    let test_mode = !std::env::args().any(|a| a == "--bench");
    let started = Instant::now();
    let (data, bulk, _keep) = data_dir(&soma, test_mode);
    eprintln!(
        "console_pages: {} runs, {} listings ready in {:.1} s (runs written in {:.1} s, listings in {:.1} s)",
        bulk.runs,
        bulk.listings,
        started.elapsed().as_secs_f64(),
        bulk.took.0.as_secs_f64(),
        bulk.took.1.as_secs_f64(),
    );
    let d = DaemonProcess::start(&soma, &data, "", "");
    let client = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let viewer = sign_in(&client, &d.url, &bulk.token);
    let operator = sign_in(&client, &d.url, &bulk.operator);
    let month = soma_tests::console_seed::this_month();
    let (s, call) = d.post(
        "/v1/runs",
        &bulk.token,
        &serde_json::json!({"capsule": "echo", "input": {"bench": true}}),
    );
    assert_eq!(s, 200, "a capsule call: {call}");
    let call_run = call["run"].as_str().unwrap_or_default().to_owned();
    let pages = pages(&bulk, &month, &call_run);
    let rounds = if test_mode { 3 } else { 20 };
    let mut worst = Duration::ZERO;
    for (label, path, as_operator) in &pages {
        let cookie = if *as_operator { &operator } else { &viewer };
        let url = format!("{}{path}", d.url);
        let (status, _) = first_byte(&client, &url, cookie); // warm-up
        let mut times: Vec<Duration> = (0..rounds)
            .map(|_| first_byte(&client, &url, cookie).1)
            .collect();
        times.sort();
        let p50 = times[times.len() / 2];
        let max = times[times.len() - 1];
        let verdict = match status {
            404 if label != "404" => "404: page not built on this branch".to_owned(),
            _ if max <= TARGET => "met".to_owned(),
            _ => "NOT met".to_owned(),
        };
        if status != 404 || label == "404" {
            worst = worst.max(max);
        }
        eprintln!(
            "console_pages/{label:<20} {status}  p50 {:>9.3?}  max {:>9.3?}  target ≤ {TARGET:?}: {verdict}  ({path})",
            p50, max
        );
    }
    eprintln!(
        "console_pages: slowest first byte over the pages served: {worst:?} ({} runs, {} listings)",
        bulk.runs, bulk.listings
    );

    let mut group = c.benchmark_group("console_pages");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));
    for (label, path, as_operator) in &pages {
        let cookie = if *as_operator { &operator } else { &viewer };
        let url = format!("{}{path}", d.url);
        group.bench_function(label.as_str(), |b| {
            b.iter(|| first_byte(&client, &url, cookie))
        });
    }
    group.finish();
    drop(d);
}

criterion_group!(benches, bench);
criterion_main!(benches);
