//! The console's runs pages against a real `soma daemon` over HTTP, signed
//! in through the login form like a browser: the list's filters, failed-only
//! and pages; a run's page, graph and event stream; another tenant's run
//! answering 404 everywhere; cancel refused without the `run` scope; a new
//! run from the form, redirected (303) to its page.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use reqwest::{
    blocking::{Client, Response},
    header,
};
use serde_json::{Value, json};
use soma_tests::daemon::{self as harness, DaemonProcess as Daemon};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

fn token(data: &Path, tenant: &str, scopes: &str) -> String {
    harness::token(bin(), data, tenant, scopes)
}

const FORM: &str = "application/x-www-form-urlencoded";

fn encode(fields: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(fields).expect("form")
}

/// A signed-in browser: its session cookie and its CSRF token.
struct Browser {
    client: Client,
    base: String,
    session: String,
}

/// The value of `name` in a response's `Set-Cookie` headers.
fn set_cookie(r: &Response, name: &str) -> Option<String> {
    r.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let first = v.split(';').next()?;
            let (k, val) = first.split_once('=')?;
            (k.trim() == name).then(|| val.trim().to_owned())
        })
}

impl Browser {
    fn sign_in(d: &Daemon, token: &str) -> Self {
        let client = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let form = client
            .get(format!("{}/ui/login", d.url))
            .send()
            .expect("login form");
        let nonce = set_cookie(&form, "soma_login").expect("login nonce");
        let signed = client
            .post(format!("{}/ui/login", d.url))
            .header(header::COOKIE, format!("soma_login={nonce}"))
            .header(header::CONTENT_TYPE, FORM)
            .body(encode(&[
                ("token", token),
                ("csrf", &nonce),
                ("next", "/ui/runs"),
            ]))
            .send()
            .expect("sign in");
        assert_eq!(signed.status(), 303, "signed in");
        let session = set_cookie(&signed, "soma_session").expect("session cookie");
        Self {
            client,
            base: d.url.clone(),
            session,
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .header(header::COOKIE, format!("soma_session={}", self.session))
            .send()
            .expect("get");
        let status = r.status().as_u16();
        (status, r.text().expect("body"))
    }

    /// The CSRF token of a page's forms.
    fn csrf(&self, path: &str) -> String {
        let (_, page) = self.get(path);
        let at = page.find(r#"name="csrf" value=""#).expect("a form");
        let rest = &page[at + r#"name="csrf" value=""#.len()..];
        rest[..rest.find('"').expect("end")].to_owned()
    }

    /// POST a form (with this session's CSRF token): (status, Location, body).
    fn post(&self, path: &str, fields: &[(&str, &str)]) -> (u16, Option<String>, String) {
        let csrf = self.csrf("/ui/runs");
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        form.push(("csrf", &csrf));
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header(header::COOKIE, format!("soma_session={}", self.session))
            .header(header::CONTENT_TYPE, FORM)
            .body(encode(&form))
            .send()
            .expect("post");
        let status = r.status().as_u16();
        let location = r
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (status, location, r.text().expect("body"))
    }
}

fn echo_spec(name: &str) -> Value {
    json!({
        "name": name,
        "capsules": {"e": "echo"},
        "nodes": [
            {"id": "first", "capsule": "e", "input": {"x": 1}},
            {"id": "second", "capsule": "e", "input": "{{ nodes.first.output }}"},
        ],
    })
}

fn failing_spec() -> Value {
    json!({
        "name": "spin",
        "capsules": {"l": "hostile-loop"},
        "nodes": [{"id": "spin", "capsule": "l", "limits": {"fuel": 1_000_000}, "retries": {"max": 0}}],
    })
}

fn start_run(d: &Daemon, token: &str, spec: &Value) -> String {
    let (s, v) = d.post("/v1/runs", token, &json!({ "dag": spec }));
    assert_eq!(s, 202, "{v}");
    v["run"].as_str().expect("run").to_owned()
}

/// The ids of the runs a list page shows, in order.
fn listed(page: &str) -> Vec<String> {
    page.split("<tr data-run=\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').expect("end")].to_owned())
        .collect()
}

#[test]
fn runs_pages_filter_paginate_isolate_tenants_and_start_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(dir.path(), "acme", "run,read");
    let reader = token(dir.path(), "acme", "read");
    let globex = token(dir.path(), "globex", "run,read");
    let ops = token(dir.path(), "ops", "operator");
    let d = Daemon::start(bin(), dir.path(), "", "");

    let mut ok_runs = Vec::new();
    for k in 0..3 {
        ok_runs.push(start_run(&d, &acme, &echo_spec(&format!("hello-{k}"))));
    }
    let bad_run = start_run(&d, &acme, &failing_spec());
    let other = start_run(&d, &globex, &echo_spec("theirs"));
    for run in ok_runs.iter().chain([&bad_run]) {
        d.wait_finished(&acme, run, Duration::from_secs(60));
    }
    let failed = d.wait_finished(&acme, &bad_run, Duration::from_secs(60));
    assert_eq!(failed["status"], "failed", "{failed}");
    d.wait_finished(&globex, &other, Duration::from_secs(60));

    let browser = Browser::sign_in(&d, &acme);
    // The list: acme's four runs, newest first, none of globex's.
    let (s, page) = browser.get("/ui/runs");
    assert_eq!(s, 200, "{page}");
    let runs = listed(&page);
    assert_eq!(runs.len(), 4, "{runs:?}");
    assert!(!runs.contains(&other), "another tenant's run is not listed");
    assert!(page.contains(r#"id="failed-only""#));
    assert!(
        page.contains(r#"<table class="data collapse" id="runs">"#),
        "{page}"
    );
    // Failed only: the failed run, with its failure class.
    let (s, page) = browser.get("/ui/runs?failed=1");
    assert_eq!(s, 200);
    assert_eq!(listed(&page), std::slice::from_ref(&bad_run));
    assert!(page.contains(&format!(r#"data-run="{bad_run}" data-status="failed""#)));
    assert!(
        page.contains(r#"data-field="failure-class">out-of-fuel<"#),
        "{page}"
    );
    // The other filters.
    let (_, page) = browser.get("/ui/runs?class=out-of-fuel");
    assert_eq!(listed(&page), std::slice::from_ref(&bad_run));
    let (_, page) = browser.get("/ui/runs?status=succeeded&capsule=echo");
    assert_eq!(listed(&page).len(), 3);
    let (_, page) = browser.get("/ui/runs?capsule=hostile-loop");
    assert_eq!(listed(&page), std::slice::from_ref(&bad_run));
    let (_, page) = browser.get("/ui/runs?since=2999-01-01");
    assert!(listed(&page).is_empty());
    // Pages of two: the second links back, the first links on.
    let (_, first) = browser.get("/ui/runs?per=2");
    assert_eq!(listed(&first).len(), 2);
    assert!(
        first.contains(r#"rel="next" href="/ui/runs?per=2&amp;page=2""#),
        "{first}"
    );
    let (_, second) = browser.get("/ui/runs?per=2&page=2");
    let mut both = listed(&first);
    both.extend(listed(&second));
    assert_eq!(both, runs, "two pages cover the list");
    assert!(second.contains(r#"rel="prev""#) && !second.contains(r#"rel="next""#));
    // Bad input: a 400 page naming the field and what it accepts.
    let (s, page) = browser.get("/ui/runs?status=done");
    assert_eq!(s, 400);
    assert!(
        page.contains("status") && page.contains("queued, running"),
        "{page}"
    );
    let (s, page) = browser.get("/ui/runs?per=100000");
    assert_eq!(s, 400, "{page}");

    // A run's page: status, graph with its nodes, timeline, costs, forms.
    let run = &ok_runs[0];
    let (s, page) = browser.get(&format!("/ui/runs/{run}"));
    assert_eq!(s, 200, "{page}");
    assert!(
        page.contains(r#"id="run-status" class="badge status-succeeded" data-status="succeeded""#),
        "{page}"
    );
    for node in ["first", "second"] {
        assert!(
            page.contains(&format!(r#"data-node="{node}" data-status="succeeded""#)),
            "{node}: {page}"
        );
    }
    for id in ["timeline", "gates", "logs", "node-costs", "failure-class"] {
        assert!(page.contains(&format!(r#"id="{id}""#)), "#{id}");
    }
    assert!(
        !page.contains("cancel-form"),
        "a finished run cannot be cancelled"
    );
    assert!(page.contains("marker-end"), "the dependency is drawn");
    let (s, page) = browser.get(&format!("/ui/runs/{bad_run}"));
    assert_eq!(s, 200);
    assert!(page.contains(r#"data-value="out-of-fuel""#), "{page}");
    // Its graph alone.
    let (s, svg) = browser.get(&format!("/ui/runs/{run}/graph"));
    assert_eq!(s, 200);
    assert!(
        svg.starts_with("<svg") && svg.contains(r#"data-node="second""#),
        "{svg}"
    );
    // Its event stream: the whole history, ending with `finished`.
    let (s, sse) = browser.get(&format!("/ui/runs/{run}/events"));
    assert_eq!(s, 200, "{sse}");
    assert!(
        sse.contains("event: created") && sse.contains("event: finished"),
        "{sse}"
    );
    let (_, tail) = browser.get(&format!("/ui/runs/{run}/events?after=1"));
    assert!(
        !tail.contains("event: created") && tail.contains("event: finished"),
        "{tail}"
    );
    let (s, _) = browser.get(&format!("/ui/runs/{run}/events?after=x"));
    assert_eq!(s, 400);

    // Another tenant's run: the same 404 as one that does not exist.
    let (s, nothing) = browser.get("/ui/runs/no-such-run");
    assert_eq!(s, 404);
    for suffix in ["", "/graph", "/events"] {
        let (s, page) = browser.get(&format!("/ui/runs/{other}{suffix}"));
        assert_eq!(s, 404, "{suffix}: {page}");
        assert!(!page.contains("theirs"), "nothing of theirs leaks");
        if suffix.is_empty() {
            assert_eq!(page, nothing, "indistinguishable from a missing run");
        }
    }
    let (s, _, page) = browser.post(&format!("/ui/runs/{other}/cancel"), &[]);
    assert_eq!(s, 404, "{page}");

    // An operator sees every tenant's runs, with a tenant column.
    let operator = Browser::sign_in(&d, &ops);
    let (s, page) = operator.get("/ui/runs");
    assert_eq!(s, 200);
    let all = listed(&page);
    assert!(all.contains(&other) && all.contains(&bad_run), "{all:?}");
    assert!(page.contains(r#"<th scope="col">Tenant</th>"#));
    let (s, _) = operator.get(&format!("/ui/runs/{other}"));
    assert_eq!(s, 200);

    // Without the `run` scope: no buttons, and the POST is refused.
    let viewer = Browser::sign_in(&d, &reader);
    let (_, page) = viewer.get("/ui/runs");
    assert!(!page.contains("/ui/runs/new"), "no New run link");
    let (s, _, page) = viewer.post(&format!("/ui/runs/{run}/cancel"), &[]);
    assert_eq!(s, 403, "{page}");
    let (s, _, _) = viewer.post("/ui/runs/new", &[("spec", "{}")]);
    assert_eq!(s, 403);
    // A finished run cannot be cancelled (409), nor resumed.
    let (s, _, page) = browser.post(&format!("/ui/runs/{run}/cancel"), &[]);
    assert_eq!(s, 409, "{page}");
    let (s, _, page) = browser.post(&format!("/ui/runs/{run}/resume"), &[]);
    assert_eq!(s, 409, "{page}");

    // A new run from the form: 303 to its page, which shows its nodes.
    let (s, page) = browser.get("/ui/runs/new");
    assert_eq!(s, 200);
    assert!(
        page.contains(r#"<form id="new-run""#)
            && page.contains(r#"<textarea id="spec" name="spec""#)
    );
    assert!(
        page.contains("<code>kamachiq-planner</code>"),
        "the catalog as help"
    );
    let yaml = "name: from-the-form\ncapsules:\n  e: echo\nnodes:\n  - id: only\n    capsule: e\n    input: {hello: console}\n";
    let (s, location, page) = browser.post("/ui/runs/new", &[("spec", yaml), ("input", "")]);
    assert_eq!(s, 303, "{page}");
    let location = location.expect("Location");
    let new_run = location
        .strip_prefix("/ui/runs/")
        .expect("a run page")
        .to_owned();
    let (s, page) = browser.get(&location);
    assert_eq!(s, 200);
    assert!(page.contains(r#"data-node="only""#), "{page}");
    let done = d.wait_finished(&acme, &new_run, Duration::from_secs(60));
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["tenant"], "acme");
    // A bad spec comes back in the form, naming what is wrong.
    let (s, _, page) = browser.post(
        "/ui/runs/new",
        &[(
            "spec",
            "name: x\ncapsules: {}\nnodes:\n  - id: a\n    capsule: nope\n",
        )],
    );
    assert_eq!(s, 400, "{page}");
    assert!(
        page.contains(r#"id="run-errors""#) && page.contains("nope"),
        "{page}"
    );
    assert!(
        page.contains("capsule: nope"),
        "the spec is kept in the textarea"
    );
    let (s, _, page) = browser.post("/ui/runs/new", &[("spec", yaml), ("input", "{oops")]);
    assert_eq!(s, 400);
    assert!(page.contains(r#"data-field="input""#), "{page}");
}

#[test]
fn a_running_run_streams_live_and_cancels_from_the_console() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(dir.path(), "acme", "run,read");
    let d = Daemon::start(bin(), dir.path(), "", "");
    // A node that spins until cancelled (its fuel and time are large), and
    // one after it that must never start.
    let spec = json!({
        "name": "long",
        "capsules": {"l": "hostile-loop", "e": "echo"},
        "nodes": [
            {"id": "spin", "capsule": "l", "timeout_ms": 3000, "retries": {"max": 0}},
            {"id": "after", "capsule": "e", "needs": ["spin"]},
        ],
    });
    let run = start_run(&d, &acme, &spec);
    let browser = Browser::sign_in(&d, &acme);
    // The page of a live run has the cancel form and a live graph.
    let start = Instant::now();
    let page = loop {
        let (_, page) = browser.get(&format!("/ui/runs/{run}"));
        if page.contains(r#"data-node="spin" data-status="running""#) {
            break page;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never running: {page}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(page.contains(r#"id="cancel-form""#), "{page}");
    assert!(page.contains(r#"data-live="1""#));
    assert!(
        !page.contains(r#"id="resume-form""#),
        "a driven run is not resumable"
    );
    // The stream, opened while it runs, carries what happens next.
    let sse = std::thread::scope(|scope| {
        let reader = scope.spawn(|| browser.get(&format!("/ui/runs/{run}/events")));
        let (s, location, body) = browser.post(&format!("/ui/runs/{run}/cancel"), &[]);
        assert_eq!(s, 303, "{body}");
        assert_eq!(
            location.as_deref(),
            Some(format!("/ui/runs/{run}").as_str())
        );
        reader.join().expect("reader")
    });
    assert_eq!(sse.0, 200);
    assert!(sse.1.contains("event: started"), "{}", sse.1);
    assert!(
        sse.1.contains("event: cancel-requested") && sse.1.contains("event: finished"),
        "{}",
        sse.1
    );
    let done = d.wait_finished(&acme, &run, Duration::from_secs(60));
    assert_eq!(done["status"], "cancelled", "{done}");
    let (_, page) = browser.get(&format!("/ui/runs/{run}"));
    assert!(page.contains(r#"data-status="cancelled""#), "{page}");
    assert!(page.contains(r#"data-node="after""#), "{page}");
    assert!(
        !page.contains(r#"data-node="after" data-status="succeeded""#),
        "nothing starts after a cancel: {page}"
    );
}

/// The ledger's total for `run` through the API (micro-units).
fn ledger_total(d: &Daemon, token: &str, run: &str) -> u64 {
    let (s, v) = d.get(&format!("/v1/ledger?run={run}&limit=10000"), token);
    assert_eq!(s, 200, "{v}");
    v.as_array()
        .or_else(|| v["entries"].as_array())
        .expect("entries")
        .iter()
        .map(|e| e["cost_micros"].as_u64().expect("cost"))
        .sum()
}

#[test]
fn capsule_calls_are_listed_and_have_run_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(dir.path(), "acme", "run,read");
    let globex = token(dir.path(), "globex", "run,read");
    let ops = token(dir.path(), "ops", "operator");
    // Its own AOT cache: the metrics below count this daemon's compiles.
    let d = Daemon::start(bin(), dir.path(), "", &harness::own_aot_cache(dir.path()));

    let call = |token: &str, body: Value| -> Value {
        let (s, v) = d.post("/v1/runs", token, &body);
        assert_eq!(s, 200, "{v}");
        v
    };
    let dag = start_run(&d, &acme, &echo_spec("before-the-calls"));
    d.wait_finished(&acme, &dag, Duration::from_secs(60));
    let ok = call(
        &acme,
        json!({"capsule": "echo", "input": {"x": "<b>bold</b> & \"quoted\""}}),
    );
    assert_eq!(ok["ok"], true, "{ok}");
    let ok_run = ok["run"].as_str().expect("run").to_owned();
    let bad = call(
        &acme,
        json!({"capsule": "hostile-loop", "limits": {"fuel": 1_000_000}}),
    );
    assert_eq!(bad["failure"]["class"], "out-of-fuel", "{bad}");
    let bad_run = bad["run"].as_str().expect("run").to_owned();
    let theirs = call(
        &globex,
        json!({"capsule": "echo", "input": {"secret": "globex-only"}}),
    );
    let their_run = theirs["run"].as_str().expect("run").to_owned();

    let browser = Browser::sign_in(&d, &acme);
    // The list: both calls, newest first, before the older DAG run; none of globex's.
    let (s, page) = browser.get("/ui/runs");
    assert_eq!(s, 200, "{page}");
    assert_eq!(
        listed(&page),
        [bad_run.clone(), ok_run.clone(), dag.clone()]
    );
    assert!(
        page.contains(&format!(
            r#"data-run="{ok_run}" data-status="succeeded" data-kind="call""#
        )),
        "{page}"
    );
    // Filters apply to calls as to DAG runs.
    let (_, page) = browser.get("/ui/runs?failed=1");
    assert_eq!(listed(&page), std::slice::from_ref(&bad_run));
    assert!(
        page.contains(r#"data-field="failure-class">out-of-fuel<"#),
        "{page}"
    );
    let (_, page) = browser.get("/ui/runs?class=out-of-fuel");
    assert_eq!(listed(&page), std::slice::from_ref(&bad_run));
    let (_, page) = browser.get("/ui/runs?capsule=hostile-loop");
    assert_eq!(listed(&page), std::slice::from_ref(&bad_run));
    let (_, page) = browser.get("/ui/runs?status=succeeded");
    assert_eq!(listed(&page), [ok_run.clone(), dag.clone()]);
    let (_, page) = browser.get("/ui/runs?since=2999-01-01");
    assert!(listed(&page).is_empty());
    // Pages of one cover the same three rows.
    let mut paged = Vec::new();
    for n in 1..=3 {
        let (_, page) = browser.get(&format!("/ui/runs?per=1&page={n}"));
        assert_eq!(page.contains(r#"rel="next""#), n < 3, "page {n}");
        paged.extend(listed(&page));
    }
    assert_eq!(paged, [bad_run.clone(), ok_run.clone(), dag.clone()]);

    // The call's page: status, capsule, usage, cost, the output escaped.
    let (s, page) = browser.get(&format!("/ui/runs/{ok_run}"));
    assert_eq!(s, 200, "{page}");
    assert!(
        page.contains(r#"id="run-status" class="badge status-succeeded" data-status="succeeded""#),
        "{page}"
    );
    assert!(page.contains("<code>echo</code>"), "{page}");
    assert!(
        page.contains("&lt;b&gt;bold&lt;/b&gt; &amp; \\&quot;quoted\\&quot;")
            && !page.contains("<b>bold</b>"),
        "the output is escaped: {page}"
    );
    let fuel = ok["usage"]["fuel_consumed"].as_u64().expect("fuel");
    assert!(
        page.contains(&format!(r#"id="run-fuel" data-value="{fuel}""#)),
        "{page}"
    );
    let wall = ok["usage"]["wall_time_us"].as_u64().expect("wall");
    assert!(
        page.contains(&format!(r#"id="run-wall" data-value="{wall}""#)),
        "{page}"
    );
    let cost = ledger_total(&d, &acme, &ok_run);
    assert!(
        page.contains(&format!(r#"id="run-cost" data-micros="{cost}""#)),
        "the ledger's {cost}: {page}"
    );
    assert!(page.contains(r#"id="logs""#) && page.contains(r#"id="output""#));
    assert!(!page.contains("cancel-form") && !page.contains("resume-form"));
    // The failed call's page: its class and message.
    let (s, page) = browser.get(&format!("/ui/runs/{bad_run}"));
    assert_eq!(s, 200);
    assert!(
        page.contains(r#"id="failure-class" data-value="out-of-fuel""#),
        "{page}"
    );
    assert!(page.contains(r#"data-status="failed""#) && page.contains("error-message"));

    // Another tenant's call: the same 404 page as a run that does not exist.
    let (_, nothing) = browser.get("/ui/runs/no-such-run");
    let (s, page) = browser.get(&format!("/ui/runs/{their_run}"));
    assert_eq!(s, 404);
    assert_eq!(page, nothing);
    assert!(!page.contains("globex-only"));
    // And globex sees its own.
    let (s, page) = Browser::sign_in(&d, &globex).get(&format!("/ui/runs/{their_run}"));
    assert_eq!(s, 200);
    assert!(page.contains("globex-only"), "{page}");

    // A DAG node that fails for good is a recent error beside the failed
    // call, on the operations page and in Prometheus.
    let failed_dag = start_run(&d, &acme, &failing_spec());
    let done = d.wait_finished(&acme, &failed_dag, Duration::from_secs(60));
    assert_eq!(done["status"], "failed", "{done}");
    let operator = Browser::sign_in(&d, &ops);
    let (s, page) = operator.get("/ui/ops");
    assert_eq!(s, 200, "{page}");
    let node_row = page
        .split("<tr ")
        .find(|r| r.contains(r#"data-source="node""#))
        .unwrap_or_else(|| panic!("no failed node in the recent errors: {page}"));
    assert!(
        node_row.contains(&format!(r#"href="/ui/runs/{failed_dag}""#))
            && node_row.contains("/spin")
            && node_row.contains(r#"data-class="out-of-fuel""#)
            && node_row.contains("acme"),
        "{node_row}"
    );
    assert!(
        page.contains(r#"data-class="out-of-fuel" data-source="call""#),
        "the failed call too: {page}"
    );
    let (s, metrics) = d.get("/metrics", &ops);
    assert_eq!(s, 200);
    let metrics = metrics.as_str().expect("text").to_owned();
    let sample = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no `{series}` in:\n{metrics}"))
    };
    assert_eq!(
        sample(r#"soma_errors_total{source="node",class="out-of-fuel"}"#),
        1.0
    );
    assert_eq!(
        sample(r#"soma_errors_total{source="call",class="out-of-fuel"}"#),
        1.0
    );
    assert!(
        sample("soma_console_sessions") >= 3.0,
        "acme, globex and ops signed in"
    );
    assert!(
        sample("soma_aot_cache_misses_total") >= 1.0,
        "a fresh data directory compiles"
    );
    assert!(sample("soma_aot_cache_hits_total") >= 0.0);
    assert!(
        sample("soma_aot_cache_bytes") > 0.0,
        "the compiled artifacts are on disk"
    );
}

/// The run list and run pages with `[orchestrator] engine = "temporal"`
/// (a real `temporal server start-dev` and `soma worker`): rows come
/// from Temporal's visibility store (each workflow's summary memo), so a
/// tenant sees only its own runs and an operator every tenant's; the
/// status, failure-class and capsule filters and the pager work as on
/// the embedded engine; a run's page answers from its workflow (nodes,
/// output, cost); another tenant's run page is the 404 page; resuming is
/// refused (Temporal drives a run until it ends).
#[test]
fn run_pages_list_and_show_runs_on_the_temporal_engine() {
    use soma_tests::temporal::{TemporalServer, Worker};
    let server = TemporalServer::start();
    let (dir, worker_data, logs) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("worker data"),
        tempfile::tempdir().expect("logs"),
    );
    let capsules = Path::new(soma_capsules::ECHO_COMPONENT)
        .parent()
        .expect("capsule dir");
    let _worker = Worker::start(
        bin(),
        worker_data.path(),
        server.address(),
        "console",
        capsules,
        logs.path(),
    );
    let acme = token(dir.path(), "acme", "run,read");
    let globex = token(dir.path(), "globex", "run,read");
    let ops = token(dir.path(), "ops", "operator");
    let orchestrator = format!(
        "[orchestrator]\nengine = \"temporal\"\naddress = \"{}\"\ntask_queue = \"console\"\n",
        server.address()
    );
    let d = Daemon::start(bin(), dir.path(), "", &orchestrator);
    let ok = start_run(&d, &acme, &echo_spec("alpha"));
    let bad = start_run(&d, &acme, &failing_spec());
    let other = start_run(&d, &globex, &echo_spec("theirs"));
    for (token, run) in [(&acme, &ok), (&acme, &bad), (&globex, &other)] {
        d.wait_finished(token, run, Duration::from_secs(60));
    }

    let browser = Browser::sign_in(&d, &acme);
    // Temporal's visibility store may trail a close by a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        let (s, page) = browser.get("/ui/runs?status=failed");
        assert_eq!(s, 200, "{page}");
        let (_, succeeded) = browser.get("/ui/runs?status=succeeded");
        if listed(&page) == std::slice::from_ref(&bad)
            && listed(&succeeded) == std::slice::from_ref(&ok)
        {
            break page;
        }
        assert!(Instant::now() < deadline, "{page}\n{succeeded}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        page.contains(r#"data-field="failure-class">out-of-fuel<"#),
        "{page}"
    );
    // In Temporal's order: running runs first, then the most recently
    // ended (its SQL visibility store sorts by close time).
    let (_, page) = browser.get("/ui/runs");
    let mine = listed(&page);
    assert_eq!(mine.len(), 2, "{page}");
    assert!(mine.contains(&ok) && mine.contains(&bad), "{page}");
    assert!(page.contains("alpha"), "the spec's name: {page}");
    // Capsules by the names the spec gave (the catalog's), not the paths
    // the workers load them from.
    let (_, page) = browser.get("/ui/runs?capsule=hostile-loop");
    assert_eq!(listed(&page), std::slice::from_ref(&bad), "{page}");
    let (_, page) = browser.get("/ui/runs?class=out-of-fuel");
    assert_eq!(listed(&page), std::slice::from_ref(&bad));
    let (_, page) = browser.get("/ui/runs?per=1");
    assert_eq!(listed(&page), mine[..1]);
    assert!(page.contains(r#"rel="next""#), "a next page: {page}");
    let (_, page) = browser.get("/ui/runs?per=1&page=2");
    assert_eq!(listed(&page), mine[1..]);
    assert!(!page.contains(r#"rel="next""#), "the last page: {page}");

    // A run's page, from its workflow.
    let (s, page) = browser.get(&format!("/ui/runs/{ok}"));
    assert_eq!(s, 200, "{page}");
    assert!(page.contains(r#"data-status="succeeded""#), "{page}");
    assert!(page.contains(r#"<dd id="run-nodes">2/2</dd>"#), "{page}");
    let (s, svg) = browser.get(&format!("/ui/runs/{ok}/graph"));
    assert_eq!(s, 200, "{svg}");
    assert!(svg.contains("<svg") && svg.contains("second"), "{svg}");
    // Another tenant's run: the same 404 page as no run at all.
    let (s, _) = browser.get(&format!("/ui/runs/{other}"));
    assert_eq!(s, 404);
    let (s, _) = browser.get("/ui/runs/acme.no-such-run");
    assert_eq!(s, 404);
    let (s, _, body) = browser.post(&format!("/ui/runs/{ok}/resume"), &[]);
    assert_eq!(s, 409, "{body}");
    // A run started from the console's form is a workflow too.
    let yaml = "name: from-form\ncapsules:\n  e: echo\nnodes:\n  - id: only\n    capsule: e\n    input: {x: 2}\n";
    let (s, location, page) = browser.post("/ui/runs/new", &[("spec", yaml), ("input", "")]);
    assert_eq!(s, 303, "{page}");
    let location = location.expect("Location");
    let new_run = location.strip_prefix("/ui/runs/").expect("a run page");
    assert!(new_run.starts_with("acme."), "a Temporal run id: {new_run}");
    let done = d.wait_finished(&acme, new_run, Duration::from_secs(60));
    assert_eq!(done["status"], "succeeded", "{done}");
    let (s, page) = browser.get(&location);
    assert_eq!(s, 200);
    assert!(page.contains(r#"data-node="only""#), "{page}");

    // An operator sees every tenant's runs, with the tenant column.
    let operator = Browser::sign_in(&d, &ops);
    let (_, page) = operator.get("/ui/runs");
    let mut all = listed(&page);
    all.sort();
    let mut want = vec![ok, bad, other, new_run.to_owned()];
    want.sort();
    assert_eq!(all, want, "{page}");
    assert!(page.contains(r#"data-label="Tenant">globex<"#), "{page}");
}
