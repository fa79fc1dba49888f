//! `soma daemon` end to end over real HTTP: authentication and tenant
//! isolation, bad requests, hostile capsules, admission limits, SSE, and
//! the chaos test — 50 DAG runs, the daemon SIGKILLed mid-way and
//! restarted, every run finishing with the right output and no double
//! charge.

use super::common::{bin, soma};
use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use soma_tests::daemon::{self as harness, DaemonProcess as Daemon, client};

/// Create a token (the daemon must not be running on `data`).
fn token(data: &Path, tenant: &str, scopes: &str) -> String {
    harness::token(bin(), data, tenant, scopes)
}

/// A daemon over `data` with `extra` keys in its `[daemon]` table.
fn start(data: &Path, extra: &str) -> Daemon {
    Daemon::start(bin(), data, extra, "")
}

fn call(
    d: &Daemon,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    d.request(method, path, token, body)
}

fn post(d: &Daemon, path: &str, token: &str, body: &Value) -> (u16, Value) {
    d.post(path, token, body)
}

fn get(d: &Daemon, path: &str, token: &str) -> (u16, Value) {
    d.get(path, token)
}

fn wait_finished(d: &Daemon, token: &str, run: &str, deadline: Duration) -> Value {
    d.wait_finished(token, run, deadline)
}

#[test]
fn auth_isolation_and_bad_requests_fail_cleanly_and_the_host_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(dir.path(), "acme", "run,read");
    let globex = token(dir.path(), "globex", "run,read");
    let reader = token(dir.path(), "acme", "read");
    let d = start(dir.path(), "");
    // Open endpoints.
    let (s, _, _) = call(&d, reqwest::Method::GET, "/healthz", None, None);
    assert_eq!(s, 200);
    let (s, doc, _) = call(&d, reqwest::Method::GET, "/v1/openapi.json", None, None);
    assert_eq!(s, 200);
    assert!(doc["paths"]["/v1/runs"].is_object(), "{doc}");
    // No token, a bad token: 401 with a clear body.
    let (s, v, h) = call(&d, reqwest::Method::GET, "/v1/capsules", None, None);
    assert_eq!(s, 401);
    assert_eq!(v["error"]["code"], "unauthorized");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("Bearer")
    );
    assert_eq!(h["www-authenticate"], "Bearer");
    let (s, _) = get(&d, "/v1/capsules", "soma_000000000000_nope");
    assert_eq!(s, 401);
    // Missing scope: 403.
    let (s, v) = post(&d, "/v1/runs", &reader, &json!({"capsule": "echo"}));
    assert_eq!(s, 403, "{v}");
    // A call, visible to its tenant only.
    let (s, v) = post(
        &d,
        "/v1/runs",
        &acme,
        &json!({"capsule": "echo", "input": {"x": 1}}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["output"], json!({"x": 1}));
    let run = v["run"].as_str().expect("run").to_owned();
    assert_eq!(get(&d, &format!("/v1/runs/{run}"), &acme).0, 200);
    assert_eq!(get(&d, &format!("/v1/runs/{run}"), &reader).0, 200);
    assert_eq!(get(&d, &format!("/v1/runs/{run}"), &globex).0, 404);
    // A DAG run: another tenant sees 404 everywhere.
    let (s, v) = post(
        &d,
        "/v1/runs",
        &acme,
        &json!({"dag": soma_tests::console_seed::kamachiq_spec()}),
    );
    assert_eq!(s, 202, "{v}");
    let dag = v["run"].as_str().expect("run").to_owned();
    assert_eq!(get(&d, &format!("/v1/runs/{dag}"), &globex).0, 404);
    assert_eq!(get(&d, &format!("/v1/runs/{dag}/events"), &globex).0, 404);
    assert_eq!(
        post(&d, &format!("/v1/runs/{dag}/cancel"), &globex, &json!({})).0,
        404
    );
    let done = wait_finished(&d, &acme, &dag, Duration::from_secs(60));
    assert_eq!(done["status"], "succeeded", "{done}");
    // The SSE stream of a finished run replays its history and ends.
    let sse = client()
        .get(format!("{}/v1/runs/{dag}/events", d.url))
        .bearer_auth(&acme)
        .send()
        .expect("sse")
        .text()
        .expect("sse body");
    assert!(
        sse.contains("event: created") && sse.contains("event: finished"),
        "{sse}"
    );
    // Ledger: only the tenant's own entries.
    let (s, entries) = get(&d, "/v1/ledger?limit=1000", &globex);
    assert_eq!(s, 200);
    assert_eq!(entries, json!([]));
    let (_, entries) = get(&d, &format!("/v1/ledger?run={dag}&limit=1000"), &acme);
    assert!(!entries.as_array().expect("entries").is_empty());
    // Bad requests: 400 naming the field, 413, unknown capsule 404.
    let (s, v) = post(&d, "/v1/runs", &acme, &json!({"capsule": 5}));
    assert_eq!(s, 400);
    assert_eq!(v["error"]["field"], "capsule", "{v}");
    let (s, v) = post(
        &d,
        "/v1/runs",
        &acme,
        &json!({"capsule": "echo", "limitz": {}}),
    );
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("m")
            .contains("limitz"),
        "{v}"
    );
    let (s, v, _) = call(
        &d,
        reqwest::Method::POST,
        "/v1/runs",
        Some(&acme),
        Some("{".into()),
    );
    assert_eq!(s, 400, "{v}");
    let big = json!({"capsule": "echo", "input": "x".repeat(100_000)});
    let (s, v) = post(&d, "/v1/runs", &acme, &big);
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"]["code"], "body-too-large");
    let (s, v) = post(&d, "/v1/runs", &acme, &json!({"capsule": "nope"}));
    assert_eq!((s, v["error"]["field"].clone()), (404, json!("capsule")));
    let (s, v) = post(
        &d,
        "/v1/runs",
        &acme,
        &json!({"dag": {"name": "x", "capsules": {}, "nodes": [{"id": "a", "capsule": "b"}]}}),
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .expect("m")
            .contains("capsule"),
        "{v}"
    );
    // A hostile capsule gets its typed failure; the next call is fine.
    let (s, v) = post(
        &d,
        "/v1/runs",
        &acme,
        &json!({"capsule": "hostile-loop", "limits": {"timeout_ms": 100}}),
    );
    assert_eq!(s, 200);
    assert_eq!(v["failure"]["class"], "deadline-exceeded", "{v}");
    let (s, v) = post(
        &d,
        "/v1/runs",
        &acme,
        &json!({"capsule": "calculator", "input": {"expr": "6*7"}}),
    );
    assert_eq!((s, v["output"]["value"].clone()), (200, json!(42)));
    // Metrics need a `metrics` or `operator` token (attack_edge.rs has the rest).
    let (s, _, _) = call(&d, reqwest::Method::GET, "/metrics", None, None);
    assert_eq!(s, 401);
    let (s, _, _) = call(&d, reqwest::Method::GET, "/metrics", Some(&acme), None);
    assert_eq!(s, 403);
    // Graceful stop.
    assert!(d.stop().success());
}

#[test]
fn tenants_over_their_rate_get_429_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(dir.path(), "acme", "run,read");
    let globex = token(dir.path(), "globex", "run,read");
    let d = start(dir.path(), "rate_per_sec = 1.0\nburst = 3.0\n");
    let statuses: Vec<u16> = (0..5).map(|_| get(&d, "/v1/capsules", &acme).0).collect();
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert_eq!(statuses[4], 429);
    let (s, v, h) = call(&d, reqwest::Method::GET, "/v1/capsules", Some(&acme), None);
    assert_eq!(s, 429);
    assert_eq!(v["error"]["code"], "rate-limited");
    assert!(h.contains_key("retry-after"));
    assert_eq!(
        get(&d, "/v1/capsules", &globex).0,
        200,
        "other tenants are unaffected"
    );
}

/// Every recorded call of a run (from its SSE history) has exactly one
/// wall-time charge, and nothing else is charged.
fn check_charges(d: &Daemon, admin: &str, run: &str) {
    let sse = client()
        .get(format!("{}/v1/runs/{run}/events", d.url))
        .bearer_auth(admin)
        .send()
        .expect("sse")
        .text()
        .expect("body");
    let events: Vec<Value> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).expect("event"))
        .collect();
    let calls = soma_tests::dag_checks::recorded_calls(&events);
    let (_, entries) = get(d, &format!("/v1/ledger?run={run}&limit=10000"), admin);
    let charged = soma_tests::dag_checks::charged_calls(entries.as_array().expect("entries"));
    assert_eq!(charged, calls, "{run}: ledger and history disagree");
}

#[test]
fn chaos_kill_9_with_50_runs_in_flight_then_restart_finishes_all_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(dir.path(), "acme", "run,read");
    let admin = token(dir.path(), "ops", "operator");
    let d = start(dir.path(), "dag_drivers = 2\n");
    let spec = soma_tests::console_seed::kamachiq_spec();
    // The reference output, from an uninterrupted run.
    let (_, v) = post(&d, "/v1/runs", &acme, &json!({"dag": spec}));
    let reference_run = v["run"].as_str().expect("run").to_owned();
    let reference = wait_finished(&d, &acme, &reference_run, Duration::from_secs(60));
    assert_eq!(reference["status"], "succeeded");
    let reference = reference["output"].clone();
    // 50 runs, then kill -9 once some have finished and others have not.
    let runs: Vec<String> = std::thread::scope(|scope| {
        let submitters: Vec<_> = (0..10)
            .map(|_| {
                scope.spawn(|| {
                    (0..5)
                        .map(|_| {
                            let (s, v) = post(&d, "/v1/runs", &acme, &json!({"dag": spec}));
                            assert_eq!(s, 202, "{v}");
                            v["run"].as_str().expect("run").to_owned()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        submitters
            .into_iter()
            .flat_map(|h| h.join().expect("submitter"))
            .collect()
    });
    assert_eq!(runs.len(), 50);
    let start = Instant::now();
    let unfinished_at_kill = loop {
        let finished = runs
            .iter()
            .filter(|r| {
                let (_, v) = get(&d, &format!("/v1/runs/{r}"), &acme);
                ["succeeded", "failed", "cancelled"].contains(&v["status"].as_str().unwrap_or(""))
            })
            .count();
        if finished >= 10 || start.elapsed() > Duration::from_secs(60) {
            break 50 - finished;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (data, config) = d.kill9();
    eprintln!("killed with {unfinished_at_kill} of 50 runs unfinished");
    assert!(unfinished_at_kill > 0, "the kill should land mid-way");
    // Restart: unfinished runs resume by themselves.
    let d = Daemon::spawn(bin(), &data, &config);
    for run in &runs {
        let v = wait_finished(&d, &acme, run, Duration::from_secs(120));
        assert_eq!(v["status"], "succeeded", "{run}: {v}");
        assert_eq!(v["output"], reference, "{run}: output differs");
        check_charges(&d, &admin, run);
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all
/// generated here; plus a client certificate from a CA the daemon does not know.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
    stranger: (String, String),
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, issuer: &rcgen::Issuer<'_, KeyPair>| {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, issuer)
            .expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf(vec!["127.0.0.1".into(), "localhost".into()], &issuer);
    let client = leaf(vec!["client.acme".into()], &issuer);
    let other_key = KeyPair::generate().expect("key");
    let mut other_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other = rcgen::Issuer::new(other_params, other_key);
    let stranger = leaf(vec!["mallory".into()], &other);
    Pki {
        ca: ca.pem(),
        server,
        client,
        stranger,
    }
}

#[test]
fn tls_with_client_certificates_admits_only_clients_of_the_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(dir.path(), "acme", "run,read");
    let pki = pki();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let ca = write("ca.pem", &pki.ca);
    let cert = write("server.pem", &pki.server.0);
    let key = write("server.key", &pki.server.1);
    let d = start(
        dir.path(),
        &format!("[daemon.tls]\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_ca = \"{ca}\"\n"),
    );
    assert!(d.url.starts_with("https://"), "{}", d.url);
    let root = reqwest::Certificate::from_pem(pki.ca.as_bytes()).expect("root");
    let with = |identity: Option<&(String, String)>| {
        let mut b = reqwest::blocking::Client::builder()
            .tls_certs_only([root.clone()])
            .timeout(Duration::from_secs(10));
        if let Some((cert, key)) = identity {
            let pem = format!("{cert}{key}");
            b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
        }
        b.build().expect("client")
    };
    let ok = with(Some(&pki.client))
        .get(format!("{}/v1/capsules", d.url))
        .bearer_auth(&acme)
        .send()
        .expect("mTLS request");
    assert_eq!(ok.status().as_u16(), 200);
    // Still a token: TLS alone does not authenticate.
    let no_token = with(Some(&pki.client))
        .get(format!("{}/v1/capsules", d.url))
        .send()
        .expect("request");
    assert_eq!(no_token.status().as_u16(), 401);
    assert!(
        with(None).get(format!("{}/healthz", d.url)).send().is_err(),
        "no client certificate: refused in the handshake"
    );
    assert!(
        with(Some(&pki.stranger))
            .get(format!("{}/healthz", d.url))
            .send()
            .is_err(),
        "a certificate from another CA: refused"
    );
    // The daemon keeps serving good clients after refusing bad ones.
    let again = with(Some(&pki.client))
        .get(format!("{}/healthz", d.url))
        .send()
        .expect("request");
    assert_eq!(again.status().as_u16(), 200);
}

#[test]
fn the_cli_drives_the_daemon_with_server_and_follows_sse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(dir.path(), "acme", "run,read");
    let d = start(dir.path(), "");
    let remote = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_soma"))
            .args(["--server", &d.url, "--token", &acme])
            .args(args)
            .env_remove("SOMA_CONFIG")
            .output()
            .expect("spawn")
    };
    let out = remote(&["run", "calculator", "--input", r#"{"expr":"1/0"}"#]);
    assert_eq!(
        out.status.code(),
        Some(10),
        "capsule-error exit code over the wire"
    );
    let out = remote(&["run", "calculator", "--input", r#"{"expr":"2*(3+4)^2"}"#]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"value":98}"#
    );
    // The resolver's printed form of a catalog name works too.
    let out = remote(&[
        "run",
        "catalog:calculator",
        "--input",
        r#"{"expr":"2*(3+4)^2"}"#,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"{"value":98}"#
    );
    // --json prints the daemon's answer as sent: its keys in its order.
    let out = remote(&[
        "run",
        "catalog:calculator",
        "--input",
        r#"{"expr":"1+1"}"#,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let printed_value: Value = serde_json::from_str(&printed).expect("json");
    assert_eq!(printed_value["output"], json!({"value": 2}), "{printed}");
    let top_keys = |text: &str| -> Vec<String> {
        // Top-level keys in the order the text has them.
        let v: Value = serde_json::from_str(text).expect("json");
        let mut keys: Vec<(usize, String)> = v
            .as_object()
            .expect("object")
            .keys()
            .map(|k| (text.find(&format!("\"{k}\"")).expect("key"), k.clone()))
            .collect();
        keys.sort();
        keys.into_iter().map(|(_, k)| k).collect()
    };
    let raw = client()
        .post(format!("{}/v1/runs", d.url))
        .bearer_auth(&acme)
        .header("content-type", "application/json")
        .body(r#"{"capsule":"calculator","input":{"expr":"1+1"}}"#)
        .send()
        .expect("post")
        .text()
        .expect("body");
    assert_eq!(top_keys(&printed), top_keys(&raw), "{printed}\n{raw}");
    assert_eq!(
        top_keys(&raw)[..2],
        ["run".to_owned(), "kind".to_owned()],
        "ids first: {raw}"
    );
    let spec = dir.path().join("kamachiq.json");
    std::fs::write(&spec, soma_tests::console_seed::kamachiq_spec().to_string()).expect("spec");
    let out = remote(&["dag", "run", spec.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Live progress came over SSE: the plan, the rejected round, the approval.
    assert!(stderr.contains("planned 8 nodes"), "{stderr}");
    assert!(
        stderr.contains("sent back") && stderr.contains("approved"),
        "{stderr}"
    );
    let output: Value = serde_json::from_slice(&out.stdout).expect("output json");
    assert!(output["files"].is_object(), "{output}");
    // Without a token: a clear refusal.
    let out = Command::new(env!("CARGO_BIN_EXE_soma"))
        .args(["--server", &d.url, "dag", "status", "x"])
        .env_remove("SOMA_TOKEN")
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SOMA_TOKEN"));
}

/// `soma push COMPONENT REFERENCE` from data directory `data` (must work).
fn push(data: &Path, component: &str, reference: &str) {
    let out = soma(data)
        .args(["push", component, reference])
        .output()
        .expect("push");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn admins_pull_capsules_from_a_registry_into_the_catalog() {
    let registry = soma_tests::registry::Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = format!("{}/acme/echo:1", registry.host());
    push(dir.path(), soma_capsules::ECHO_COMPONENT, &reference);
    let admin = token(dir.path(), "ops", "operator");
    let acme = token(dir.path(), "acme", "run,read");
    let d = start(
        dir.path(),
        "[[trust.rules]]\nrepository = \"*/acme/*\"\naccept_unsigned = true\n",
    );
    let body = json!({"name": "echo-1", "reference": reference});
    assert_eq!(post(&d, "/v1/capsules/pull", &acme, &body).0, 403);
    let (s, v) = post(&d, "/v1/capsules/pull", &admin, &body);
    assert_eq!(s, 201, "{v}");
    assert!(v["digest"].as_str().expect("digest").starts_with("sha256:"));
    let (s, v) = post(
        &d,
        "/v1/runs",
        &acme,
        &json!({"capsule": "echo-1", "input": "hi"}),
    );
    assert_eq!((s, v["output"].clone()), (200, json!("hi")), "{v}");
    // An artifact the trust policy does not cover is refused; nothing is added.
    let other = json!({"name": "x", "reference": format!("{}/globex/echo:1", registry.host())});
    let (s, v) = post(&d, "/v1/capsules/pull", &admin, &other);
    assert_eq!(s, 502, "{v}");
    // A malformed reference is the request's fault: 400, naming the field
    // and the accepted forms; nothing is contacted or added.
    for bad in ["", "calc", "reg/Calc", "reg/calc@sha256:abc", "re g/calc"] {
        let (s, v) = post(
            &d,
            "/v1/capsules/pull",
            &admin,
            &json!({"name": "bad", "reference": bad}),
        );
        assert_eq!(s, 400, "{bad:?}: {v}");
        assert_eq!(v["error"]["code"], "bad-request", "{v}");
        assert_eq!(v["error"]["field"], "reference", "{v}");
        let message = v["error"]["message"].as_str().expect("message");
        assert!(
            message.contains("registry[:port]/repository[:tag][@sha256:<hex>]"),
            "{message}"
        );
    }
    let (_, list) = get(&d, "/v1/capsules", &acme);
    assert!(
        list.as_array()
            .expect("list")
            .iter()
            .all(|c| c["name"] != "x" && c["name"] != "bad")
    );
}

/// `GET /v1/capsules` as `token`: name → digest.
fn catalog(d: &Daemon, token: &str) -> std::collections::BTreeMap<String, String> {
    let (s, list) = get(d, "/v1/capsules", token);
    assert_eq!(s, 200, "{list}");
    list.as_array()
        .expect("list")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().expect("name").to_owned(),
                c["digest"].as_str().expect("digest").to_owned(),
            )
        })
        .collect()
}

/// Pulls are recorded: they outlive a restart (served from the blob cache
/// with the registry gone), a pull shadows the `[[daemon.capsules]]` entry
/// of its name until `DELETE /v1/capsules/{name}` gives the name back, and
/// a deleted pull stays deleted after a restart.
#[test]
fn pulled_capsules_outlive_restarts_until_removed() {
    let mut registry = soma_tests::registry::Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    for (component, repo) in [
        (soma_capsules::ECHO_COMPONENT, "acme/echo:1"),
        (soma_capsules::CALCULATOR_COMPONENT, "acme/calc:1"),
    ] {
        push(
            dir.path(),
            component,
            &format!("{}/{repo}", registry.host()),
        );
    }
    let ops = token(dir.path(), "ops", "operator");
    let acme = token(dir.path(), "acme", "run,read,admin");
    let trust = "[[trust.rules]]\nrepository = \"*/acme/*\"\naccept_unsigned = true\n";
    let d = start(dir.path(), trust);
    let configured = catalog(&d, &acme);
    let pull = |d: &Daemon, name: &str, repo: &str| {
        let body = json!({"name": name, "reference": format!("{}/{repo}", registry.host())});
        let (s, v) = post(d, "/v1/capsules/pull", &ops, &body);
        assert_eq!(s, 201, "{v}");
        v
    };
    let echo_1 = pull(&d, "echo-1", "acme/echo:1");
    // `echo` (a config entry) now serves the calculator.
    let shadow = pull(&d, "echo", "acme/calc:1");
    assert_eq!(shadow["replaced"], json!(configured["echo"]), "{shadow}");
    // A name that is not a plain id is refused before anything is pulled.
    let (s, v) = post(
        &d,
        "/v1/capsules/pull",
        &ops,
        &json!({"name": "../x", "reference": format!("{}/acme/echo:1", registry.host())}),
    );
    assert_eq!(
        (s, v["error"]["field"].clone()),
        (400, json!("name")),
        "{v}"
    );
    let status = d.stop();
    assert!(status.success(), "{status:?}");

    // The registry is gone: the restarted daemon serves both pulls from
    // its blob cache.
    registry.stop();
    let d = start(dir.path(), trust);
    let now = catalog(&d, &acme);
    assert_eq!(now["echo-1"], echo_1["digest"].as_str().expect("digest"));
    assert_eq!(now["echo"], shadow["digest"].as_str().expect("digest"));
    let (s, v) = post(
        &d,
        "/v1/runs",
        &acme,
        &json!({"capsule": "echo-1", "input": "hi"}),
    );
    assert_eq!((s, v["output"].clone()), (200, json!("hi")), "{v}");

    // Only an operator removes a pull; config entries only the config.
    let remove = |name: &str, token: &str| {
        let (s, v, _) = call(
            &d,
            reqwest::Method::DELETE,
            &format!("/v1/capsules/{name}"),
            Some(token),
            None,
        );
        (s, v)
    };
    assert_eq!(remove("echo-1", &acme).0, 403);
    let (s, v) = remove("calculator", &ops);
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (409, json!("configured-capsule")),
        "{v}"
    );
    assert_eq!(remove("no-such-capsule", &ops).0, 404);
    let (s, v) = remove("echo", &ops);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["now"],
        json!(configured["echo"]),
        "back to the config's entry: {v}"
    );
    let (s, v) = remove("echo-1", &ops);
    assert_eq!((s, v["now"].clone()), (200, Value::Null), "{v}");
    assert_eq!(remove("echo-1", &ops).0, 404, "already removed");
    let (s, v) = post(
        &d,
        "/v1/runs",
        &acme,
        &json!({"capsule": "echo-1", "input": "hi"}),
    );
    assert_ne!(s, 200, "{v}");
    let status = d.stop();
    assert!(status.success(), "{status:?}");

    let d = start(dir.path(), trust);
    assert_eq!(catalog(&d, &acme), configured, "removed pulls stay removed");
}

/// The OpenAPI document against the real daemon, both ways: every
/// documented operation is served (the router answers it — never its
/// 405, never its "no such route" 404), and on every documented path each
/// method the document leaves out is refused with 405 (nothing served is
/// undocumented there).
#[test]
fn every_documented_operation_is_served_and_nothing_else_on_its_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let operator = token(dir.path(), "ops", "operator");
    let d = start(dir.path(), "");
    let (s, doc, _) = call(&d, reqwest::Method::GET, "/v1/openapi.json", None, None);
    assert_eq!(s, 200, "{doc}");
    let paths = doc["paths"].as_object().expect("paths");
    let all = [
        reqwest::Method::GET,
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ];
    let mut served = 0;
    for (path, item) in paths {
        let url = path.replace("{id}", "no-such-id");
        for method in &all {
            let documented = item.get(method.as_str().to_ascii_lowercase()).is_some();
            let (s, v, _) = call(&d, method.clone(), &url, Some(&operator), None);
            if documented {
                served += 1;
                assert_ne!(s, 405, "{method} {path} is documented but not routed");
                assert!(
                    !(s == 404 && v["error"]["message"] == "no such route"),
                    "{method} {path} is documented but the router has no such route"
                );
            } else {
                assert_eq!(
                    s, 405,
                    "{method} {path} answers {s} but is not documented: {v}"
                );
            }
        }
    }
    assert!(served >= 16, "only {served} operations documented");
}

/// A client that has seen a run's last event gets the run's report from
/// `GET /v1/runs/{id}` right away — never the live view. Many short runs,
/// from a few threads at once, each read right after its terminal SSE
/// event (the old order — the live summary updated after the events were
/// published, and not at all when the stream read them from the journal
/// first — answered some of these with `running`).
#[test]
fn a_runs_view_has_its_report_as_soon_as_its_last_event_is_streamed() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(dir.path(), "acme", "run,read");
    let d = start(dir.path(), "");
    let spec = json!({
        "name": "short",
        "capsules": {"calc": "calculator"},
        "nodes": [{"id": "a", "capsule": "calc", "input": {"expr": "6*7"}}],
    });
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                let http = client();
                for _ in 0..25 {
                    let (s, v) = post(&d, "/v1/runs", &acme, &json!({"dag": spec}));
                    assert_eq!(s, 202, "{v}");
                    let run = v["run"].as_str().expect("run").to_owned();
                    let stream = http
                        .get(format!("{}/v1/runs/{run}/events", d.url))
                        .bearer_auth(&acme)
                        .send()
                        .expect("sse");
                    let mut finished = false;
                    for line in std::io::BufReader::new(stream).lines() {
                        if line.expect("line") == "event: finished" {
                            finished = true;
                            break;
                        }
                    }
                    assert!(finished, "{run}: the stream ended without `finished`");
                    let view: Value = http
                        .get(format!("{}/v1/runs/{run}", d.url))
                        .bearer_auth(&acme)
                        .send()
                        .expect("get")
                        .json()
                        .expect("json");
                    assert_eq!(view["status"], "succeeded", "{run}: {view}");
                    assert!(
                        view["timeline"].as_array().is_some_and(|t| t.len() == 1),
                        "{run}: the view is not the report: {view}"
                    );
                }
            });
        }
    });
}

#[test]
fn the_secrets_cli_sets_lists_and_removes_tenant_secrets_and_never_prints_a_value() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let acme = token(data, "acme", "run,read,admin");
    let globex = token(data, "globex", "run,read,admin");
    let key = data.join("secrets.key");
    std::fs::write(
        &key,
        "0c1e5b9d2f4a6c8e0b1d3f5a7c9e1b3d5f7a9c0e2b4d6f8a1c3e5b7d9f0a7f3a\n",
    )
    .expect("key");
    let from_file = data.join("value.txt");
    std::fs::write(&from_file, "file-NEEDLE-91c2\n").expect("value file");
    #[cfg(unix)]
    for f in [&key, &from_file] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let d = Daemon::start(
        bin(),
        data,
        "",
        &format!("[secrets]\nkey_file = \"{}\"\n", key.display()),
    );
    let secrets = |token: &str, args: &[&str], stdin: Option<&str>| {
        let mut child = Command::new(bin())
            .args(["--server", &d.url, "--token", token, "secrets"])
            .args(args)
            .env_remove("SOMA_CONFIG")
            .env("SOMA_TEST_SECRET_VALUE", "env-NEEDLE-7d3e")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut pipe = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
        drop(pipe);
        let out = child.wait_with_output().expect("wait");
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!shown.contains("NEEDLE"), "a value was printed: {shown}");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            shown,
        )
    };
    // Set from each source; each answers without the value.
    let (code, _, shown) = secrets(
        &acme,
        &[
            "set",
            "--tenant",
            "acme",
            "from-env",
            "--from-env",
            "SOMA_TEST_SECRET_VALUE",
            "--grant",
            "*fetch*",
        ],
        None,
    );
    assert_eq!(code, Some(0), "{shown}");
    assert!(
        shown.contains("secret from-env of tenant acme set (readable by: *fetch*)"),
        "{shown}"
    );
    let file_arg = from_file.display().to_string();
    let (code, _, shown) = secrets(
        &acme,
        &[
            "set",
            "--tenant",
            "acme",
            "from-file",
            "--from-file",
            &file_arg,
        ],
        None,
    );
    assert_eq!(code, Some(0), "{shown}");
    let (code, _, shown) = secrets(
        &acme,
        &[
            "set",
            "--tenant",
            "acme",
            "from-stdin",
            "--grant",
            "a*",
            "--grant",
            "b*",
        ],
        Some("stdin-NEEDLE-55aa\n"),
    );
    assert_eq!(code, Some(0), "{shown}");
    // ls --json: names, grants, times — no value.
    let (code, stdout, shown) = secrets(&acme, &["ls", "--tenant", "acme", "--json"], None);
    assert_eq!(code, Some(0), "{shown}");
    let rows: Value = serde_json::from_str(&stdout).expect("ls json");
    let names: Vec<&str> = rows
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["from-env", "from-file", "from-stdin"], "{rows}");
    assert_eq!(rows[2]["grant"], json!(["a*", "b*"]), "{rows}");
    assert!(
        rows[0]["updated_ms"].as_u64().is_some_and(|t| t > 0),
        "{rows}"
    );
    let (code, stdout, _) = secrets(&acme, &["ls", "--tenant", "acme"], None);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("from-stdin") && stdout.contains("a*, b*"),
        "{stdout}"
    );
    // Another tenant's admin sees nothing of acme's.
    let (code, _, shown) = secrets(&globex, &["ls", "--tenant", "acme"], None);
    assert_ne!(code, Some(0), "{shown}");
    assert!(shown.contains("404"), "{shown}");
    // An empty value is refused before anything is sent.
    let (code, _, shown) = secrets(&acme, &["set", "--tenant", "acme", "empty"], Some(""));
    assert_ne!(code, Some(0), "{shown}");
    assert!(shown.contains("empty"), "{shown}");
    // rm, then it is gone; removing it again is a 404.
    let (code, _, shown) = secrets(&acme, &["rm", "--tenant", "acme", "from-file"], None);
    assert_eq!(code, Some(0), "{shown}");
    let (code, _, shown) = secrets(&acme, &["rm", "--tenant", "acme", "from-file"], None);
    assert_ne!(code, Some(0), "{shown}");
    assert!(shown.contains("404"), "{shown}");
    let (_, stdout, _) = secrets(&acme, &["ls", "--tenant", "acme", "--json"], None);
    let rows: Value = serde_json::from_str(&stdout).expect("ls json");
    assert_eq!(rows.as_array().map(Vec::len), Some(2), "{rows}");
    // Without --server the command says what it needs.
    let out = Command::new(bin())
        .args(["secrets", "ls", "--tenant", "acme"])
        .env_remove("SOMA_CONFIG")
        .env_remove("SOMA_SERVER")
        .output()
        .expect("spawn");
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--server"));
    // --help on each.
    for sub in ["set", "ls", "rm"] {
        let out = Command::new(bin())
            .args(["secrets", sub, "--help"])
            .output()
            .expect("spawn");
        assert_eq!(out.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&out.stdout).contains("--tenant"));
    }
}

#[test]
fn outbound_http_of_calls_shows_in_metrics_by_outcome_and_direction() {
    use std::io::{BufRead as _, Write as _};
    // A loopback server answering `hello` to every request.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut tcp) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(&mut tcp);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                let _ = tcp.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                );
            });
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let op = token(dir.path(), "acme", "run,read,operator");
    let d = Daemon::start(
        bin(),
        dir.path(),
        "",
        &format!(
            "[[daemon.capsules]]\nname = \"http-probe\"\npath = \"{}\"\n\
             [http]\nallowed_hosts = [\"http://127.0.0.1:*\"]\n",
            soma_capsules::HTTP_PROBE_COMPONENT
        ),
    );
    let url = format!("http://127.0.0.1:{port}/ok");
    let (s, v) = post(
        &d,
        "/v1/runs",
        &op,
        &json!({"capsule": "http-probe", "input": {"url": url, "repeat": 2}}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["output"]["ok"], 2, "{v}");
    // Not in the capsule's request: denied, nothing sent.
    let (s, v) = post(
        &d,
        "/v1/runs",
        &op,
        &json!({"capsule": "http-probe", "input": {"url": "http://10.9.8.7:81/x"}}),
    );
    assert_eq!(s, 200, "{v}");
    let (s, text, _) = call(&d, reqwest::Method::GET, "/metrics", Some(&op), None);
    assert_eq!(s, 200);
    let text = text.as_str().expect("exposition text").to_owned();
    let sample = |series: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    };
    assert_eq!(
        sample("soma_http_outbound_requests_total{outcome=\"ok\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample("soma_http_outbound_requests_total{outcome=\"denied\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample("soma_http_outbound_requests_total{outcome=\"error\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample("soma_http_outbound_requests_total{outcome=\"quota\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample("soma_http_outbound_bytes_total{direction=\"in\"}"),
        Some(10.0),
        "{text}"
    );
    assert_eq!(
        sample("soma_http_outbound_bytes_total{direction=\"out\"}"),
        Some(0.0),
        "{text}"
    );
    // The ledger's entries by kind count the charged requests too.
    assert!(
        text.contains("soma_ledger_entries_total{kind=\"http-requests\"} 1"),
        "{text}"
    );
}

/// A node with `approval:` parks its run (the only driver serves another
/// run meanwhile), shows `awaiting-approval` on the run's event stream,
/// survives a kill -9 of the daemon, and takes a verdict over HTTP: only
/// from its tenant with `run` scope (another tenant: 404), only on a node
/// that awaits one (409), the same verdict twice is 200, another 409.
#[test]
fn approvals_over_http_are_scoped_idempotent_and_survive_a_restart() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(dir.path(), "acme", "run,read");
    let reader = token(dir.path(), "acme", "read");
    let globex = token(dir.path(), "globex", "run,read");
    let d = start(dir.path(), "dag_drivers = 1\n");
    let spec = json!({
        "name": "approve",
        "capsules": {"calc": "calculator", "echo": "echo"},
        "nodes": [
            {"id": "a", "capsule": "calc", "input": {"expr": "6*7"}, "approval": {"timeout": "1d"}},
            {"id": "b", "capsule": "echo", "input": "{{ nodes.a.output }}"},
        ],
    });
    let (s, v) = post(&d, "/v1/runs", &acme, &json!({"dag": spec}));
    assert_eq!(s, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let stream = client()
        .get(format!("{}/v1/runs/{run}/events", d.url))
        .bearer_auth(&acme)
        .send()
        .expect("sse");
    let awaiting = std::io::BufReader::new(stream)
        .lines()
        .map_while(Result::ok)
        .any(|line| line == "event: awaiting-approval");
    assert!(awaiting, "the stream ended without `awaiting-approval`");
    // The parked run holds no driver: another run finishes meanwhile.
    let quick = json!({"name": "quick", "capsules": {"calc": "calculator"},
        "nodes": [{"id": "q", "capsule": "calc", "input": {"expr": "1+1"}}]});
    let (_, v) = post(&d, "/v1/runs", &acme, &json!({"dag": quick}));
    let other = v["run"].as_str().expect("run").to_owned();
    let v = wait_finished(&d, &acme, &other, Duration::from_secs(60));
    assert_eq!(v["status"], "succeeded", "{v}");
    let path = |node: &str| format!("/v1/runs/{run}/nodes/{node}/approval");
    let approve = json!({"verdict": "approve", "reason": "looks right"});
    let (s, v) = post(&d, &path("a"), &globex, &approve);
    assert_eq!(s, 404, "another tenant's run: {v}");
    let (s, v) = post(&d, &path("a"), &reader, &approve);
    assert_eq!(s, 403, "read scope: {v}");
    let (s, v) = post(&d, &path("b"), &acme, &approve);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("not-awaiting-approval")),
        "{v}"
    );
    let (s, v) = post(&d, &path("a"), &acme, &json!({"verdict": "reject"}));
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("reason")),
        "{v}"
    );
    // kill -9 while it waits: the restarted daemon parks it again.
    let (data, config) = d.kill9();
    let d = Daemon::spawn(bin(), &data, &config);
    let (s, v) = post(&d, &path("a"), &acme, &approve);
    assert_eq!((s, v["state"].as_str()), (200, Some("accepted")), "{v}");
    let (s, v) = post(&d, &path("a"), &acme, &approve);
    assert_eq!(
        (s, v["state"].as_str()),
        (200, Some("already-given")),
        "{v}"
    );
    let (s, v) = post(
        &d,
        &path("a"),
        &acme,
        &json!({"verdict": "reject", "reason": "no"}),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("approval-conflict")),
        "{v}"
    );
    let v = wait_finished(&d, &acme, &run, Duration::from_secs(60));
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["output"]["b"]["value"], 42, "{v}");
    assert_eq!(v["approvals"][0]["tenant"], "acme", "{v}");
    assert_eq!(v["approvals"][0]["reason"], "looks right", "{v}");
    let (s, v) = post(&d, &path("a"), &acme, &approve);
    assert_eq!(
        (s, v["state"].as_str()),
        (200, Some("already-given")),
        "{v}"
    );
}
