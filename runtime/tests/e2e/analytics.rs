//! Analytics end to end on a real daemon: two tenants' calls reach the
//! embedded store through the outbox and the shipper, each tenant sees only
//! its own numbers over `GET /v1/analytics/query`, the operator sees all,
//! and `soma analytics query` reads the same store. A kill -9 mid-traffic
//! while the shipper is behind loses no event and invents none: the store
//! counts exactly the calls the ledger charged.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use soma_tests::daemon::{self as harness, DaemonProcess as Daemon};

use super::common::bin;

fn token(data: &Path, tenant: &str, scopes: &str) -> String {
    harness::token(bin(), data, tenant, scopes)
}

/// `soma analytics ARGS --json` on `data` (the daemon must be stopped).
fn cli_json(data: &Path, args: &[&str]) -> Value {
    let out = harness::soma(bin(), data)
        .args(args)
        .arg("--json")
        .output()
        .expect("run soma");
    assert!(
        out.status.success(),
        "soma {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The single row of an `all` query (or zeros when there is none).
fn totals(rows: &Value) -> (u64, u64) {
    let rows = rows.as_array().expect("rows");
    assert!(rows.len() <= 1, "{rows:?}");
    rows.first().map_or((0, 0), |r| {
        (
            r["calls"].as_u64().expect("calls"),
            r["errors"].as_u64().expect("errors"),
        )
    })
}

/// Poll `GET path` as `token` until `done` holds (the shipper runs every
/// `ship_interval_ms`); panics with the last answer after two minutes.
fn wait_for(d: &Daemon, path: &str, token: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (s, v) = d.get(path, token);
        assert_eq!(s, 200, "{path}: {v}");
        if done(&v) {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{path} never got there: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn tenants_see_only_their_own_analytics_and_the_operator_sees_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(dir.path(), "acme", "run,read");
    let globex = token(dir.path(), "globex", "run,read");
    let ops = token(dir.path(), "ops", "operator");
    let d = Daemon::start(
        bin(),
        dir.path(),
        "",
        // Calls cost something, so that a budget can refuse one.
        "[analytics]\nship_interval_ms = 20\nmax_capsule_events_per_call = 3\n\
         [ledger]\nwall_time_price_per_1k_us_micros = 1\n",
    );
    for i in 0..3 {
        let (s, v) = d.post(
            "/v1/runs",
            &acme,
            &json!({"capsule": "echo", "input": {"i": i}}),
        );
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = d.post(
        "/v1/runs",
        &acme,
        &json!({"capsule": "hostile-loop", "limits": {"timeout_ms": 100}}),
    );
    assert_eq!(s, 200);
    assert_eq!(v["failure"]["class"], "deadline-exceeded", "{v}");
    for i in 0..2 {
        let (s, v) = d.post(
            "/v1/runs",
            &globex,
            &json!({"capsule": "echo", "input": {"i": i}}),
        );
        assert_eq!(s, 200, "{v}");
    }
    let q = "/v1/analytics/query?since_ms=0&bucket=day";
    let acme_all = wait_for(&d, q, &acme, |v| totals(v) == (4, 1));
    assert_eq!(totals(&acme_all), (4, 1));
    let globex_all = wait_for(&d, q, &globex, |v| totals(v).0 == 2);
    assert_eq!(
        totals(&globex_all),
        (2, 0),
        "acme's failure is not globex's"
    );
    let everyone = wait_for(&d, q, &ops, |v| totals(v).0 == 6);
    assert_eq!(totals(&everyone), (6, 1));
    let (s, v) = d.get(&format!("{q}&tenant=globex"), &ops);
    assert_eq!(
        (s, totals(&v)),
        (200, (2, 0)),
        "an operator may pick a tenant"
    );
    let (s, v) = d.get(&format!("{q}&tenant=globex"), &acme);
    assert_eq!(s, 403, "a tenant may not read another's: {v}");
    // acme by capsule: echo and hostile-loop; by failure class: the deadline.
    let (_, by_capsule) = d.get(&format!("{q}&by=capsule"), &acme);
    let rows = by_capsule.as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{by_capsule}");
    assert_eq!(rows[0]["calls"], 3, "top first: {by_capsule}");
    assert!(rows[0]["p50_us"].as_u64().is_some());
    let (_, by_class) = d.get(&format!("{q}&by=class"), &acme);
    assert_eq!(by_class[0]["key"], "deadline-exceeded", "{by_class}");
    let (_, by_class) = d.get(&format!("{q}&by=class"), &globex);
    assert_eq!(by_class, json!([]), "globex has no failures");
    let (s, v) = d.get(&format!("{q}&by=nonsense"), &acme);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("capsule"),
        "{v}"
    );
    // A capsule's own events (`events.emit`) count for its tenant only.
    let (s, v) = d.post(
        "/v1/runs",
        &acme,
        &json!({"capsule": "notebook", "input": {"op": "spam", "n": 3}}),
    );
    assert_eq!((s, &v["ok"]), (200, &json!(true)), "{v}");
    let acme_all = wait_for(&d, q, &acme, |v| v[0]["capsule_events"] == 3);
    assert_eq!(acme_all[0]["calls"], 5, "{acme_all}");
    // One call records at most `max_capsule_events_per_call` of its events.
    let (s, v) = d.post(
        "/v1/runs",
        &acme,
        &json!({"capsule": "notebook", "input": {"op": "spam", "n": 5}}),
    );
    assert_eq!((s, &v["ok"]), (200, &json!(true)), "{v}");
    let acme_all = wait_for(&d, q, &acme, |v| v[0]["calls"] == 6);
    assert_eq!(acme_all[0]["capsule_events"], 6, "3 + 3 of 5: {acme_all}");
    assert_eq!(d.get(q, &globex).1[0]["capsule_events"], 0);
    // A budget's refusal is an event of the refused tenant's.
    let (s, v, _) = d.request(
        reqwest::Method::PUT,
        "/v1/budgets",
        Some(&ops),
        Some(json!({"scope": "tenant:globex", "micros": 1}).to_string()),
    );
    assert_eq!(s, 200, "{v}");
    let (_, v) = d.post(
        "/v1/runs",
        &globex,
        &json!({"capsule": "echo", "input": {}}),
    );
    assert_eq!(v["failure"]["class"], "budget-exceeded", "{v}");
    let globex_all = wait_for(&d, q, &globex, |v| v[0]["budget_exceeded"] == 1);
    assert_eq!(totals(&globex_all), (2, 0), "a refused call is not a call");
    assert_eq!(d.get(q, &acme).1[0]["budget_exceeded"], 0);
    // A DAG run's journal events: run started and finished, gate verdicts.
    let (s, v) = d.post(
        "/v1/runs",
        &acme,
        &json!({"dag": soma_tests::console_seed::kamachiq_spec()}),
    );
    assert_eq!(s, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let done = d.wait_finished(&acme, &run, Duration::from_secs(120));
    assert_eq!(done["status"], "succeeded", "{done}");
    let acme_all = wait_for(&d, q, &acme, |v| v[0]["runs_finished"] == 1);
    let row = &acme_all[0];
    assert_eq!(row["runs_started"], 1, "{row}");
    assert!(row["gates"].as_u64().expect("gates") >= 1, "{row}");
    assert!(row["approval_rate"].as_f64().is_some(), "{row}");
    assert!(
        row["calls"].as_u64().expect("calls") > 4,
        "the DAG's calls count: {row}"
    );
    let (_, v) = d.get(q, &globex);
    assert_eq!(
        (v[0]["runs_started"].clone(), v[0]["gates"].clone()),
        (json!(0), json!(0))
    );
    // The outbox is visible in /metrics.
    let (s, body, _) = d.request(reqwest::Method::GET, "/metrics", Some(&ops), None);
    assert_eq!(s, 200);
    let body = body.as_str().unwrap_or_default();
    assert!(body.contains("soma_analytics_outbox_events"), "{body}");
    // What the API answers now, for the CLI to match.
    let api_acme = totals(&d.get(q, &acme).1);
    let api_all = totals(&d.get(q, &ops).1);
    assert!(api_all.0 > api_acme.0, "{api_all:?} {api_acme:?}");
    drop(d);
    // The CLI reads the same store.
    let cli = cli_json(
        dir.path(),
        &[
            "analytics",
            "query",
            "--since",
            "0",
            "--bucket",
            "day",
            "--tenant",
            "acme",
        ],
    );
    assert_eq!(totals(&cli), api_acme);
    let cli = cli_json(
        dir.path(),
        &["analytics", "query", "--since", "0", "--bucket", "day"],
    );
    assert_eq!(totals(&cli), api_all);
    let outbox = cli_json(dir.path(), &["analytics", "outbox"]);
    assert_eq!(outbox["pending"], 0, "{outbox}");
}

#[test]
fn kill_9_mid_traffic_with_the_shipper_behind_loses_and_invents_no_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(dir.path(), "acme", "run,read");
    let globex = token(dir.path(), "globex", "run,read");
    // The shipper checks once at start, then sleeps ten minutes: every
    // event of the traffic stays in the outbox until the CLI ships it.
    let d = Daemon::start(
        bin(),
        dir.path(),
        "",
        "[analytics]\nship_interval_ms = 600000\n",
    );
    // Kill once some calls are charged (and more are in flight).
    let callers = super::common::traffic_until(&d, &[&acme, &acme, &globex, &globex], &acme, 40);
    let (data, _) = d.kill9();
    let ok: usize = callers.into_iter().map(|c| c.finish().ok.len()).sum();
    assert!(ok > 0);
    // The shipper was behind: the events wait in the outbox.
    let outbox = cli_json(&data, &["analytics", "outbox"]);
    assert!(outbox["pending"].as_u64().expect("pending") > 0, "{outbox}");
    // Every charged call has exactly one call event, per tenant.
    let charged_calls = super::common::charged_calls(&data);
    for tenant in ["acme", "globex"] {
        let charged = charged_calls.get(tenant).copied().unwrap_or(0);
        assert!(charged > 0, "{tenant} made calls");
        let rows = cli_json(
            &data,
            &[
                "analytics",
                "query",
                "--since",
                "0",
                "--bucket",
                "day",
                "--tenant",
                tenant,
            ],
        );
        assert_eq!(
            totals(&rows).0,
            charged,
            "{tenant}: calls in the store = calls charged"
        );
    }
    let outbox = cli_json(&data, &["analytics", "outbox"]);
    assert_eq!(outbox["pending"], 0, "{outbox}");
}
