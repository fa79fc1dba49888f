//! Issue 12, class 1 (cross-tenant data in a shared capsule) and the kv
//! part of class 8 (host memory pinned by one call's pending kv writes),
//! written as an attacker would, against a real `soma daemon` process; and
//! a randomized test of the isolation of every store a tenant can reach
//! (kv in both scopes, runs, events, cancel, ledger, budgets) for two
//! tenants.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use soma_tests::daemon::{self, Bystander, DaemonProcess, assert_unharmed, time_calls};

/// A large value: just under the 1 MiB a guest may pass to the host in one
/// call (`limits.max_output_bytes`).
const VALUE: u32 = 1_000_000;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

/// One call of the catalog's `notebook` capsule as `token`.
fn notebook(d: &DaemonProcess, token: &str, input: Value) -> Value {
    let (s, v) = d.post(
        "/v1/runs",
        token,
        &json!({"capsule": "notebook", "input": input}),
    );
    assert_eq!(s, 200, "{v}");
    v
}

/// The output of a notebook call that must have succeeded.
fn ok(v: &Value) -> &Value {
    assert_eq!(v["ok"], true, "{v}");
    &v["output"]
}

fn kv_get(d: &DaemonProcess, token: &str, scope: &str, key: &str) -> Value {
    let v = notebook(
        d,
        token,
        json!({"op": "kv-get", "scope": scope, "key": key}),
    );
    ok(&v)["value"].clone()
}

fn kv_list(d: &DaemonProcess, token: &str, prefix: &str) -> Vec<String> {
    let v = notebook(
        d,
        token,
        json!({"op": "kv-list", "scope": "capsule", "prefix": prefix, "limit": 1000}),
    );
    serde_json::from_value(ok(&v).clone()).expect("keys")
}

/// `fill`'s report (`written`, `refused`), from its output or, with
/// `fail`, from its deliberate error.
fn fill(
    d: &DaemonProcess,
    token: &str,
    (scope, prefix): (&str, &str),
    count: u32,
    bytes: u32,
    fail: bool,
) -> Value {
    let v = notebook(
        d,
        token,
        json!({"op": "fill", "scope": scope, "prefix": prefix, "count": count, "bytes": bytes, "fail": fail}),
    );
    if fail {
        assert_eq!(v["ok"], false, "{v}");
        assert_eq!(v["failure"]["detail"]["code"], "filled", "{v}");
        let message = v["failure"]["detail"]["message"].as_str().expect("message");
        serde_json::from_str(message).expect("report")
    } else {
        ok(&v).clone()
    }
}

#[test]
fn another_tenant_cannot_list_read_overwrite_or_fill_a_tenants_kv_in_a_shared_capsule() {
    let _alone = crate::alone();
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = daemon::token(bin(), dir.path(), "alice", "run,read");
    let mallory = daemon::token(bin(), dir.path(), "mallory", "run,read");
    let bob = daemon::token(bin(), dir.path(), "bob", "run,read");
    let d = DaemonProcess::start(
        bin(),
        dir.path(),
        "",
        "[kv]\nmax_namespace_bytes = 4194304\nmax_tenant_bytes = 8388608\n",
    );
    // Alice keeps notes in the shared catalog capsule, under keys chosen to
    // collide with any naive `tenant:namespace:key` layout.
    let notes = [
        ("notes/1", "alice secret 1"),
        ("notes/2", "alice secret 2"),
        ("", "alice empty key"),
        (":", "alice colon"),
        ("mallory:notes/1", "alice names mallory"),
        ("capsule:x", "alice lookalike"),
        ("ünïcödé 🙂", "alice unicode"),
    ];
    for (key, value) in notes {
        let v = notebook(
            &d,
            &alice,
            json!({"op": "kv-set", "scope": "capsule", "key": key, "value": value}),
        );
        ok(&v);
    }
    // Mallory calls the same capsule: she sees an empty namespace, whatever
    // prefix or key she tries.
    for prefix in [
        "", "notes", ":", "alice", "alice:", "capsule:", "\u{0}", "ü",
    ] {
        assert_eq!(
            kv_list(&d, &mallory, prefix),
            Vec::<String>::new(),
            "{prefix:?}"
        );
    }
    for (key, _) in notes {
        assert_eq!(kv_get(&d, &mallory, "capsule", key), Value::Null, "{key:?}");
        assert_eq!(kv_get(&d, &mallory, "run", key), Value::Null, "{key:?}");
    }
    // Her "overwrites" and deletes land in her own namespace only.
    let v = notebook(
        &d,
        &mallory,
        json!({"op": "kv-set", "scope": "capsule", "key": "notes/1", "value": "pwned"}),
    );
    ok(&v);
    let v = notebook(
        &d,
        &mallory,
        json!({"op": "kv-delete", "scope": "capsule", "key": "notes/2"}),
    );
    assert_eq!(ok(&v)["existed"], false);
    assert_eq!(kv_list(&d, &mallory, ""), vec!["notes/1".to_owned()]);

    // She fills her quota as fast as she can while another tenant works.
    let idle = time_calls(&d.url, &bob, 20);
    let bystander = Bystander::start(&d.url, &bob, Duration::from_millis(5));
    let start = Instant::now();
    let mut calls = 0;
    let mut refusals = 0;
    let mut last_refusal = String::new();
    while start.elapsed() < Duration::from_secs(4) {
        // New keys every time: each call tries to grow her store.
        let report = fill(
            &d,
            &mallory,
            ("capsule", &format!("fill/{calls}/")),
            100,
            VALUE,
            false,
        );
        calls += 1;
        if let Some(r) = report["refused"].as_str() {
            refusals += 1;
            last_refusal = r.to_owned();
        }
    }
    let during = bystander.finish();
    let stored = kv_list(&d, &mallory, "fill/").len();
    assert!(
        stored * VALUE as usize <= 4 * 1024 * 1024,
        "mallory stored {stored} values of {VALUE} bytes past a 4 MiB quota"
    );
    assert_eq!(refusals, calls, "every fill call ends refused");
    assert!(
        last_refusal.contains("kv.max_namespace_bytes"),
        "the refusal names the limit: {last_refusal}"
    );
    eprintln!(
        "fill attack: {calls} calls, {stored} values stored; bystander median idle {:?}, during {:?} ({} calls)",
        idle.median(),
        during.median(),
        during.ok.len()
    );
    assert_unharmed(&idle, &during, 3.0);

    // Alice's data is intact, her quota untouched by Mallory's.
    for (key, value) in notes {
        assert_eq!(kv_get(&d, &alice, "capsule", key), json!(value), "{key:?}");
    }
    let mut keys: Vec<String> = notes.iter().map(|(k, _)| (*k).to_owned()).collect();
    keys.sort();
    assert_eq!(kv_list(&d, &alice, ""), keys);
    let report = fill(&d, &alice, ("capsule", "fill/"), 4, VALUE, false);
    assert_eq!(report, json!({"written": 4, "refused": null}));
}

#[test]
fn pending_kv_writes_of_one_call_are_bounded_in_host_memory() {
    let _alone = crate::alone();
    let dir = tempfile::tempdir().expect("tempdir");
    let mallory = daemon::token(bin(), dir.path(), "mallory", "run,read");
    let bob = daemon::token(bin(), dir.path(), "bob", "run,read");
    // Operator defaults: 8 MiB of pending writes per call.
    let d = DaemonProcess::start(bin(), dir.path(), "", "");
    // Warm up: the capsule, an instance slot, the allocator.
    for _ in 0..3 {
        fill(&d, &mallory, ("run", "fill/"), 2, VALUE, true);
    }
    let idle = time_calls(&d.url, &bob, 20);
    let before = d.usage();
    // The daemon's peak RSS was set at start-up (compiling the catalog), so
    // sample its resident set during the attack instead.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pid = d.pid();
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut max = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                max = max.max(daemon::ProcessUsage::of(pid).rss_kib);
                std::thread::sleep(Duration::from_millis(1));
            }
            max
        })
    };
    let bystander = Bystander::start(&d.url, &bob, Duration::from_millis(5));
    // Each call tries to pin 200 MiB of pending writes, then fails so that
    // nothing is committed: only the pending overlay holds memory.
    for _ in 0..6 {
        let report = fill(&d, &mallory, ("run", "fill/"), 200, VALUE, true);
        let written = report["written"].as_u64().expect("written");
        assert!(
            written * u64::from(VALUE) <= 8 * 1024 * 1024,
            "one call pinned {written} values of {VALUE} bytes in pending writes"
        );
        let refused = report["refused"].as_str().expect("refused");
        assert!(
            refused.contains("kv.max_pending_bytes_per_call"),
            "the refusal names the limit: {refused}"
        );
    }
    let during = bystander.finish();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let sampled = sampler.join().expect("sampler");
    let after = d.usage();
    let grown_mib = after.hwm_kib.saturating_sub(before.hwm_kib) as f64 / 1024.0;
    let rss_grown_mib = sampled.saturating_sub(before.rss_kib) as f64 / 1024.0;
    eprintln!(
        "pending-writes attack: RSS {} KiB before, at most {sampled} KiB during (+{rss_grown_mib:.1} MiB); peak {} → {} KiB (+{grown_mib:.1} MiB); bystander median idle {:?}, during {:?}",
        before.rss_kib,
        before.hwm_kib,
        after.hwm_kib,
        idle.median(),
        during.median()
    );
    assert!(
        rss_grown_mib < 8.0 + 16.0,
        "daemon RSS grew {rss_grown_mib:.1} MiB during the attack"
    );
    // The cap (8 MiB) plus slack for the guest's own buffers and the
    // allocator; before the cap one such call pinned ~75 MiB.
    assert!(
        grown_mib < 8.0 + 16.0,
        "daemon peak RSS grew {grown_mib:.1} MiB during the attack"
    );
    assert_unharmed(&idle, &during, 3.0);
}

/// A run either tenant created, with what its owner knows about it.
#[derive(Debug, Clone)]
struct KnownRun {
    owner: usize,
    id: String,
    dag: bool,
}

/// Keys that would collide under a naive layout, or stress ordering,
/// separators and prefix scans.
fn adversarial_keys(tenants: &[&str]) -> Vec<String> {
    let mut keys: Vec<String> = [
        "", "a", "a:", ":a", "a:b", ":", "::", "capsule:", "run:", "named:x", "a\u{0}b", "\u{0}",
        "é", "e\u{301}", "🙂", "k/../k", "\\", "%00", "a\nb", "a/b", "a b",
    ]
    .iter()
    .map(|k| (*k).to_owned())
    .collect();
    for t in tenants {
        keys.push((*t).to_owned());
        keys.push(format!("{t}:"));
        keys.push(format!("{t}:a"));
    }
    keys.push("x".repeat(512));
    keys.push("y".repeat(513)); // over kv.max_key_bytes: always refused
    keys
}

#[test]
fn randomized_isolation_of_every_store_for_two_tenants() {
    let _shared = crate::shared();
    let seed: u64 = std::env::var("SOMA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("SOMA_TEST_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let names = ["acme", "globex"];
    let tokens: Vec<String> = names
        .iter()
        .map(|t| daemon::token(bin(), dir.path(), t, "run,read"))
        .collect();
    let admin = daemon::token(bin(), dir.path(), "ops", "operator");
    let d = DaemonProcess::start(bin(), dir.path(), "", "");
    for t in names {
        let (s, v, _) = d.request(
            reqwest::Method::PUT,
            "/v1/budgets",
            Some(&admin),
            Some(json!({"scope": format!("tenant:{t}"), "tokens": 1_000_000}).to_string()),
        );
        assert_eq!(s, 200, "{v}");
    }
    let keys = adversarial_keys(&names);
    let marker = |t: usize| format!("secret-of-{}-", names[t]);
    let mut model: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); 2];
    let mut runs: Vec<KnownRun> = Vec::new();
    let mut counts: BTreeMap<&str, u32> = BTreeMap::new();
    // Every body a tenant receives is checked for the other's marker.
    let seen_by = |t: usize, body: &Value, ctx: &str| {
        let text = body.to_string();
        assert!(
            !text.contains(&marker(1 - t)),
            "{ctx}: {} saw {}'s data: {text}",
            names[t],
            names[1 - t]
        );
    };
    let start = Instant::now();
    for step in 0..260 {
        if start.elapsed() > Duration::from_secs(25) {
            break;
        }
        let t = rng.usize(..2);
        let token = &tokens[t];
        let key = keys[rng.usize(..keys.len())].clone();
        let ctx = format!("seed {seed} step {step} tenant {} key {key:?}", names[t]);
        let kind = rng.usize(..100);
        let mut call = |input: Value, counts: &mut BTreeMap<&str, u32>, what: &'static str| {
            *counts.entry(what).or_default() += 1;
            let v = notebook(&d, token, input);
            seen_by(t, &v, &ctx);
            runs.push(KnownRun {
                owner: t,
                id: v["run"].as_str().expect("run").to_owned(),
                dag: false,
            });
            v
        };
        match kind {
            0..=19 => {
                let value = format!("{}{step}", marker(t));
                let v = call(
                    json!({"op": "kv-set", "scope": "capsule", "key": key, "value": value}),
                    &mut counts,
                    "kv-set",
                );
                if key.len() > 512 {
                    assert_eq!(v["failure"]["detail"]["code"], "kv", "{ctx}: {v}");
                } else {
                    ok(&v);
                    model[t].insert(key, value);
                }
            }
            20..=34 => {
                let v = call(
                    json!({"op": "kv-get", "scope": "capsule", "key": key}),
                    &mut counts,
                    "kv-get",
                );
                if key.len() <= 512 {
                    assert_eq!(ok(&v)["value"], json!(model[t].get(&key)), "{ctx}");
                }
            }
            35..=42 => {
                let v = call(
                    json!({"op": "kv-delete", "scope": "capsule", "key": key}),
                    &mut counts,
                    "kv-delete",
                );
                if key.len() <= 512 {
                    let existed = model[t].remove(&key).is_some();
                    assert_eq!(ok(&v)["existed"], existed, "{ctx}");
                }
            }
            43..=52 => {
                let prefix: String = key.chars().take(rng.usize(..3)).collect();
                let limit = rng.usize(1..40);
                let v = call(
                    json!({"op": "kv-list", "scope": "capsule", "prefix": prefix, "limit": limit}),
                    &mut counts,
                    "kv-list",
                );
                let want: Vec<&String> = model[t]
                    .keys()
                    .filter(|k| k.starts_with(&prefix))
                    .take(limit)
                    .collect();
                assert_eq!(ok(&v), &json!(want), "{ctx} prefix {prefix:?}");
            }
            53..=57 => {
                // The run scope of a single call: its own fresh blackboard,
                // whatever either tenant wrote under the same key before.
                let value = format!("{}{step}", marker(t));
                let v = call(
                    json!({"op": "kv-set", "scope": "run", "key": "shared", "value": value}),
                    &mut counts,
                    "kv-set run",
                );
                ok(&v);
                let v = call(
                    json!({"op": "kv-get", "scope": "run", "key": "shared"}),
                    &mut counts,
                    "kv-get run",
                );
                assert_eq!(ok(&v)["value"], Value::Null, "{ctx}");
            }
            58..=61 => {
                // A DAG run: its nodes share one blackboard, of this tenant.
                *counts.entry("dag").or_default() += 1;
                let value = format!("{}{step}", marker(t));
                let spec = json!({
                    "version": 1,
                    "name": "blackboard",
                    "capsules": {"nb": "notebook"},
                    "nodes": [
                        {"id": "w", "capsule": "nb",
                         "input": {"op": "kv-set", "scope": "run", "key": key, "value": value}},
                        {"id": "r", "capsule": "nb", "needs": ["w"],
                         "input": {"op": "kv-get", "scope": "run", "key": key}},
                    ],
                    "output": "{{ nodes.r.output }}",
                });
                let (s, v) = d.post("/v1/runs", token, &json!({"dag": spec}));
                assert_eq!(s, 202, "{ctx}: {v}");
                let id = v["run"].as_str().expect("run").to_owned();
                let done = d.wait_finished(token, &id, Duration::from_secs(30));
                seen_by(t, &done, &ctx);
                if key.len() <= 512 {
                    assert_eq!(done["status"], "succeeded", "{ctx}: {done}");
                    assert_eq!(done["output"]["value"], json!(value), "{ctx}: {done}");
                } else {
                    assert_eq!(done["status"], "failed", "{ctx}: {done}");
                }
                runs.push(KnownRun {
                    owner: t,
                    id,
                    dag: true,
                });
            }
            _ if runs.is_empty() => {}
            62..=71 => {
                *counts.entry("GET run").or_default() += 1;
                let r = runs[rng.usize(..runs.len())].clone();
                let (s, v) = d.get(&format!("/v1/runs/{}", r.id), token);
                seen_by(t, &v, &ctx);
                if r.owner == t {
                    assert_eq!(s, 200, "{ctx}: {v}");
                    assert_eq!(v["run"], json!(r.id), "{ctx}: {v}");
                } else {
                    assert_eq!(
                        s, 404,
                        "{ctx}: {} read {}'s run: {v}",
                        names[t], names[r.owner]
                    );
                }
            }
            72..=79 => {
                *counts.entry("events").or_default() += 1;
                let r = runs[rng.usize(..runs.len())].clone();
                let resp = daemon::client()
                    .get(format!("{}/v1/runs/{}/events", d.url, r.id))
                    .bearer_auth(token)
                    .send()
                    .expect("sse");
                let status = resp.status().as_u16();
                let body = resp.text().expect("sse body");
                seen_by(t, &Value::String(body.clone()), &ctx);
                match (r.owner == t, r.dag) {
                    (true, true) => {
                        assert_eq!(status, 200, "{ctx}");
                        assert!(body.contains("event: finished"), "{ctx}: {body}");
                    }
                    (false, _) => assert_eq!(status, 404, "{ctx}: {body}"),
                    (true, false) => {} // a single call has no event stream
                }
            }
            80..=85 => {
                *counts.entry("cancel").or_default() += 1;
                let r = runs[rng.usize(..runs.len())].clone();
                let (_, before) = d.get(&format!("/v1/runs/{}", r.id), &tokens[r.owner]);
                let (s, v) = d.post(&format!("/v1/runs/{}/cancel", r.id), token, &json!({}));
                seen_by(t, &v, &ctx);
                if r.owner != t {
                    assert_eq!(
                        s, 404,
                        "{ctx}: {} cancelled {}'s run: {v}",
                        names[t], names[r.owner]
                    );
                } else if r.dag {
                    assert_eq!(s, 409, "{ctx}: a finished run: {v}");
                }
                let (_, after) = d.get(&format!("/v1/runs/{}", r.id), &tokens[r.owner]);
                assert_eq!(before["status"], after["status"], "{ctx}");
            }
            86..=93 => {
                *counts.entry("ledger").or_default() += 1;
                let r = runs[rng.usize(..runs.len())].clone();
                let path = match rng.usize(..3) {
                    0 => format!("/v1/ledger?run={}&limit=1000", r.id),
                    1 => "/v1/ledger?limit=1000".to_owned(),
                    _ => format!("/v1/ledger?tenant={}&limit=1000", names[1 - t]),
                };
                let (s, v) = d.get(&path, token);
                seen_by(t, &v, &ctx);
                if path.contains("tenant=") {
                    assert_eq!(s, 403, "{ctx}: {path}: {v}");
                    continue;
                }
                assert_eq!(s, 200, "{ctx}: {path}: {v}");
                let entries = v.as_array().expect("entries");
                for e in entries {
                    assert_eq!(e["tenant"], names[t], "{ctx}: {path}: {e}");
                }
                if path.contains("run=") && r.owner != t {
                    assert!(entries.is_empty(), "{ctx}: {path}: {v}");
                }
            }
            _ => {
                *counts.entry("budgets").or_default() += 1;
                let (s, v) = d.get("/v1/budgets", token);
                assert_eq!(s, 200, "{ctx}: {v}");
                for b in v.as_array().expect("budgets") {
                    assert_eq!(b["scope"], format!("tenant:{}", names[t]), "{ctx}: {v}");
                }
                let target = names[rng.usize(..2)];
                let (s, v) = d.post(
                    "/v1/budgets",
                    token,
                    &json!({"scope": format!("tenant:{target}"), "tokens": 1}),
                );
                // PUT is the route; POST must not be a way around it either.
                assert!(s == 405 || s == 403, "{ctx}: {v}");
                let (s, v, _) = d.request(
                    reqwest::Method::PUT,
                    "/v1/budgets",
                    Some(token),
                    Some(json!({"scope": format!("tenant:{target}"), "tokens": 1}).to_string()),
                );
                assert_eq!(s, 403, "{ctx}: {} set {target}'s budget: {v}", names[t]);
            }
        }
    }
    // The operator's view: both budgets as the admin set them.
    let (_, v) = d.get("/v1/budgets", &admin);
    for t in names {
        let b = v
            .as_array()
            .expect("budgets")
            .iter()
            .find(|b| b["scope"] == format!("tenant:{t}"))
            .unwrap_or_else(|| panic!("budget of {t}: {v}"));
        assert_eq!(b["account"]["limit"]["tokens"], 1_000_000, "{b}");
    }
    // Both namespaces end exactly as each tenant's own model says.
    for t in 0..2 {
        let mut want: Vec<&String> = model[t].keys().collect();
        want.truncate(1000);
        let got = kv_list(&d, &tokens[t], "");
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            want,
            "seed {seed}: {}",
            names[t]
        );
    }
    eprintln!("seed {seed}: {counts:?}");
    assert!(
        counts.len() >= 10,
        "every kind of operation ran: {counts:?}"
    );
}

#[test]
fn a_kv_quota_filled_by_concurrent_calls_fails_the_late_commit_as_a_resource_limit() {
    let _shared = crate::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let tenants: Vec<String> = (0..4)
        .map(|k| daemon::token(bin(), dir.path(), &format!("t{k}"), "run,read"))
        .collect();
    // Each call writes ~70 % of its namespace's quota: calls that run at the
    // same time each pass the per-write check (nothing committed yet), and
    // every commit after the first would overfill the namespace.
    let d = DaemonProcess::start(
        bin(),
        dir.path(),
        "call_threads = 8\nmax_running_calls_per_tenant = 8",
        "[kv]\nmax_namespace_bytes = 100000\n",
    );
    let mut at_commit = Vec::new();
    for token in &tenants {
        let results: Vec<Value> = std::thread::scope(|s| {
            let calls: Vec<_> = (0..8)
                .map(|k| {
                    let d = &d;
                    s.spawn(move || {
                        notebook(
                            d,
                            token,
                            json!({"op": "fill", "scope": "capsule", "prefix": format!("p{k}-"),
                                   "count": 1500, "bytes": 40}),
                        )
                    })
                })
                .collect();
            calls.into_iter().map(|c| c.join().expect("call")).collect()
        });
        for v in &results {
            let class = v["failure"]["class"].as_str();
            assert_ne!(class, Some("host-error"), "{v}");
            if class == Some("resource-limit") {
                at_commit.push(v.clone());
            }
        }
        if !at_commit.is_empty() {
            break;
        }
    }
    assert!(
        !at_commit.is_empty(),
        "no two calls overlapped in four tries: the race was not exercised"
    );
    for v in &at_commit {
        let text = v["failure"].to_string();
        assert!(text.contains("kv.max_namespace_bytes"), "{text}");
    }
}
