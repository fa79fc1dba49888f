//! Attacks on the daemon's resources by an ordinary tenant (a `run,read`
//! token), against a real `soma daemon` process: amplification from small
//! requests (YAML aliases, templates, retained call results), concurrency
//! the client chooses (threads, fan-outs, backoff runs holding drivers,
//! queued runs, slow calls, event streams). Each test asserts that the
//! attack is refused or bounded — measuring RSS, threads or time — and,
//! where it applies, that another tenant's echo calls keep their latency
//! (`assert_unharmed`, 3× the idle median).
//!
//! The tests run one at a time, each `crate::alone` (a 2-core machine
//! cannot time a bystander while another test's daemon is busy).

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use soma_tests::daemon::{
    Bystander, DaemonProcess, Latencies, ProcessUsage, assert_unharmed, client, request,
    time_calls, token,
};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

/// A daemon with an attacker tenant and a bystander tenant.
struct Setup {
    daemon: DaemonProcess,
    attacker: String,
    other: String,
    _dir: tempfile::TempDir,
}

fn setup(daemon_keys: &str, extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let attacker = token(bin(), dir.path(), "mallory", "run,read");
    let other = token(bin(), dir.path(), "alice", "run,read");
    let daemon = DaemonProcess::start(bin(), dir.path(), daemon_keys, extra);
    Setup {
        daemon,
        attacker,
        other,
        _dir: dir,
    }
}

impl Setup {
    /// The bystander's latencies with nothing else going on.
    fn idle(&self) -> Latencies {
        let _ = time_calls(&self.daemon.url, &self.other, 10);
        time_calls(&self.daemon.url, &self.other, 40)
    }

    fn bystander(&self) -> Bystander {
        Bystander::start(&self.daemon.url, &self.other, Duration::from_millis(5))
    }

    fn usage(&self) -> ProcessUsage {
        self.daemon.usage()
    }
}

fn mib(kib: u64) -> u64 {
    kib / 1024
}

/// A DAG run request: `spec` as YAML text.
fn dag(spec: &str, input: Value) -> Value {
    json!({ "dag": spec, "input": input })
}

#[test]
fn a_yaml_alias_bomb_is_refused_before_it_expands_and_health_stays_fast() {
    let _serial = crate::alone();
    let s = setup("max_spec_parses = 1", "");
    // Nine levels of ten aliases over a 4 KiB string: ~4 TB expanded,
    // from a 3 KiB body.
    let mut spec = format!(
        "version: 1\nname: bomb\ncapsules: {{e: echo}}\ninputs: {{}}\nx0: &x0 \"{}\"\n",
        "b".repeat(4096)
    );
    for k in 1..10 {
        let uses = vec![format!("*x{}", k - 1); 10].join(", ");
        spec.push_str(&format!("x{k}: &x{k} [{uses}]\n"));
    }
    spec.push_str("nodes:\n  - {id: a, capsule: e}\n");
    let body = dag(&spec, json!({}));
    assert!(body.to_string().len() < 8 << 10);

    let idle = s.idle();
    let before = s.usage();
    let by = s.bystander();
    let start = Instant::now();
    let url = s.daemon.url.clone();
    let attackers: Vec<_> = (0..2)
        .map(|_| {
            let (url, token, body) = (url.clone(), s.attacker.clone(), body.to_string());
            thread::spawn(move || {
                let c = client();
                let mut answers = Vec::new();
                for _ in 0..30 {
                    thread::sleep(Duration::from_millis(10));
                    let t = Instant::now();
                    let (status, v, _) = request(
                        &c,
                        &url,
                        reqwest::Method::POST,
                        "/v1/runs",
                        Some(&token),
                        Some(body.clone()),
                    );
                    answers.push((status, v, t.elapsed()));
                }
                answers
            })
        })
        .collect();
    // /healthz while specs are parsed.
    let c = client();
    let mut health = Vec::new();
    let mut peak = before;
    while attackers.iter().any(|a| !a.is_finished()) {
        let t = Instant::now();
        let (status, _, _) = request(&c, &url, reqwest::Method::GET, "/healthz", None, None);
        assert_eq!(status, 200);
        health.push(t.elapsed());
        let u = s.usage();
        peak.rss_kib = peak.rss_kib.max(u.rss_kib);
        thread::sleep(Duration::from_millis(5));
    }
    let during = by.finish();
    let elapsed = start.elapsed();
    for a in attackers {
        for (status, v, took) in a.join().expect("attacker") {
            assert_eq!(status, 400, "{v}");
            let message = v["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("dag.max_spec_"), "{message}");
            assert!(took < Duration::from_secs(5), "one refusal took {took:?}");
        }
    }
    health.sort();
    let health_p90 = health[health.len() * 9 / 10];
    let grew = mib(peak.rss_kib.saturating_sub(before.rss_kib));
    eprintln!(
        "alias bomb: 60 refusals in {elapsed:?}; RSS +{grew} MiB; /healthz p90 {health_p90:?}; \
         bystander median {:?} (idle {:?})",
        during.median(),
        idle.median()
    );
    assert!(grew < 150, "RSS grew by {grew} MiB while refusing the bomb");
    assert!(
        health_p90 < Duration::from_millis(50),
        "/healthz p90 was {health_p90:?} under parse load"
    );
    assert_unharmed(&idle, &during, 3.0);
}

#[test]
fn a_template_cannot_render_an_input_past_the_cap() {
    let _serial = crate::alone();
    let s = setup("", "");
    // 20 KB of input referenced 2,500 times: 50 MB if rendered.
    let spec = format!(
        "version: 1\nname: amplify\ncapsules: {{e: echo}}\ninputs: {{big: {{}}}}\n\
         nodes:\n  - id: a\n    capsule: e\n    input: \"{}\"\n",
        "{{input.big}}".repeat(2500)
    );
    let body = dag(&spec, json!({ "big": "a".repeat(20_000) }));
    assert!(body.to_string().len() < 64 << 10);
    let idle = s.idle();
    let before = s.usage();
    let by = s.bystander();
    let start = Instant::now();
    let mut runs = Vec::new();
    for _ in 0..5 {
        let (status, v) = s.daemon.post("/v1/runs", &s.attacker, &body);
        assert_eq!(status, 202, "{v}");
        runs.push(v["run"].as_str().expect("run").to_owned());
    }
    for run in &runs {
        let report = s
            .daemon
            .wait_finished(&s.attacker, run, Duration::from_secs(20));
        assert_eq!(report["status"], "failed", "{report}");
        let text = report.to_string();
        assert!(text.contains("render-limit"), "{text:.2000}");
        assert!(
            text.contains("dag.max_rendered_input_bytes"),
            "{text:.2000}"
        );
        assert!(
            text.len() < 1 << 20,
            "the report holds {} bytes",
            text.len()
        );
    }
    let during = by.finish();
    let after = s.usage();
    let grew = mib(after.hwm_kib.saturating_sub(before.hwm_kib));
    eprintln!(
        "template amplification: 5 runs refused in {:?}; peak RSS +{grew} MiB",
        start.elapsed()
    );
    assert!(grew < 100, "peak RSS grew by {grew} MiB");
    assert_unharmed(&idle, &during, 3.0);
}

#[test]
fn a_run_cannot_choose_its_own_thread_count() {
    let _serial = crate::alone();
    let s = setup("", "");
    // Above the operator's ceiling: refused at submit, naming the key.
    let spec = "version: 1\nname: wide\ncapsules: {e: echo}\npolicy: {concurrency: 1000}\n\
                nodes:\n  - {id: a, capsule: e}\n";
    let (status, v) = s
        .daemon
        .post("/v1/runs", &s.attacker, &dag(spec, json!({})));
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("dag.max_concurrency"), "{v}");

    // At the ceiling, with slow calls: the calls share the daemon's pool.
    let idle = s.idle();
    let before = s.usage();
    let items: Vec<u32> = (0..16).collect();
    let spec = "version: 1\nname: wide\ncapsules: {l: hostile-loop}\ninputs: {items: {}}\n\
                policy: {concurrency: 64, on_failure: continue}\n\
                nodes:\n  - {id: spin, capsule: l, for_each: \"{{ input.items }}\", \
                timeout_ms: 250, catch: true}\n";
    let by = s.bystander();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let (status, v) = s.daemon.post(
            "/v1/runs",
            &s.attacker,
            &dag(spec, json!({ "items": items })),
        );
        assert_eq!(status, 202, "{v}");
        runs.push(v["run"].as_str().expect("run").to_owned());
    }
    let mut peak_threads = before.threads;
    let start = Instant::now();
    for run in &runs {
        loop {
            peak_threads = peak_threads.max(s.usage().threads);
            let (_, v) = s.daemon.get(&format!("/v1/runs/{run}"), &s.attacker);
            if ["succeeded", "failed"].contains(&v["status"].as_str().unwrap_or("")) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(40), "{v}");
            thread::sleep(Duration::from_millis(20));
        }
    }
    let during = by.finish();
    eprintln!(
        "concurrency 64 × 3 runs of slow calls: threads {} → peak {peak_threads} in {:?}",
        before.threads,
        start.elapsed()
    );
    assert!(
        peak_threads <= before.threads + 8,
        "threads went from {} to {peak_threads}",
        before.threads
    );
    assert_unharmed(&idle, &during, 3.0);
}

#[test]
fn a_huge_fan_out_is_refused() {
    let _serial = crate::alone();
    let s = setup("", "");
    let spec = "version: 1\nname: fan\ncapsules: {e: echo}\ninputs: {items: {}}\n\
                policy: {max_fan_out: 20000}\n\
                nodes:\n  - {id: f, capsule: e, for_each: \"{{ input.items }}\"}\n";
    let items: Vec<u8> = vec![1; 15_000];
    let (status, v) = s.daemon.post(
        "/v1/runs",
        &s.attacker,
        &dag(spec, json!({ "items": items })),
    );
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("dag.max_fan_out"), "{v}");
    // Without asking: the ceiling (10,000) refuses the fan-out itself.
    let spec = spec.replace("policy: {max_fan_out: 20000}\n", "");
    let before = s.usage();
    let start = Instant::now();
    let (status, v) = s.daemon.post(
        "/v1/runs",
        &s.attacker,
        &dag(&spec, json!({ "items": items })),
    );
    assert_eq!(status, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let report = s
        .daemon
        .wait_finished(&s.attacker, &run, Duration::from_secs(20));
    assert_eq!(report["status"], "failed", "{report}");
    assert!(report.to_string().contains("expansion-limit"), "{report}");
    let grew = mib(s.usage().hwm_kib.saturating_sub(before.hwm_kib));
    eprintln!(
        "15,000-way fan-out refused in {:?}; peak RSS +{grew} MiB",
        start.elapsed()
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(grew < 100, "peak RSS grew by {grew} MiB");
}

/// A run whose one node fails retryably for `secs` seconds, retrying
/// with a backoff of about `backoff_ms`.
fn backoff_spec(backoff_ms: u64) -> String {
    format!(
        "version: 1\nname: patient\ncapsules: {{f: flaky}}\ninputs: {{until: {{}}}}\n\
         nodes:\n  - id: a\n    capsule: f\n    input: {{until_ms: \"{{{{ input.until }}}}\"}}\n    \
         retries: {{max: 10, backoff_ms: {backoff_ms}, max_backoff_ms: {backoff_ms}, jitter: false}}\n"
    )
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[test]
fn runs_in_backoff_do_not_hold_the_drivers() {
    let _serial = crate::alone();
    let s = setup("dag_drivers = 2", "");
    // Eight runs (four per driver) that spend ~20 s in retry backoff.
    let until = now_ms() + 60_000;
    let mut hogs = Vec::new();
    for _ in 0..8 {
        let (status, v) = s.daemon.post(
            "/v1/runs",
            &s.attacker,
            &dag(&backoff_spec(2_000), json!({ "until": until })),
        );
        assert_eq!(status, 202, "{v}");
        hogs.push(v["run"].as_str().expect("run").to_owned());
    }
    // Let them all reach their backoff.
    thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let (status, v) = s.daemon.post(
        "/v1/runs",
        &s.other,
        &dag(
            "version: 1\nname: one\ncapsules: {e: echo}\nnodes:\n  - {id: a, capsule: e}\n",
            json!({}),
        ),
    );
    assert_eq!(status, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let report = s
        .daemon
        .wait_finished(&s.other, &run, Duration::from_secs(20));
    let took = start.elapsed();
    eprintln!("a one-node run behind 8 runs in backoff (2 drivers) finished in {took:?}");
    assert_eq!(report["status"], "succeeded", "{report}");
    assert!(took < Duration::from_secs(2), "it took {took:?}");
    // The hogs are still there, waiting, and can be cancelled.
    for hog in &hogs {
        let (status, v) = s
            .daemon
            .post(&format!("/v1/runs/{hog}/cancel"), &s.attacker, &json!({}));
        assert!([200, 202].contains(&status), "{v}");
    }
    for hog in &hogs {
        let report = s
            .daemon
            .wait_finished(&s.attacker, hog, Duration::from_secs(10));
        assert_eq!(report["status"], "cancelled", "{report}");
    }
}

#[test]
fn a_tenants_queued_runs_are_capped() {
    let _serial = crate::alone();
    let s = setup("max_queued_runs_per_tenant = 3", "");
    let until = now_ms() + 60_000;
    let body = dag(&backoff_spec(5_000), json!({ "until": until }));
    for _ in 0..3 {
        let (status, v) = s.daemon.post("/v1/runs", &s.attacker, &body);
        assert_eq!(status, 202, "{v}");
    }
    let (status, v, headers) = s.daemon.request(
        reqwest::Method::POST,
        "/v1/runs",
        Some(&s.attacker),
        Some(body.to_string()),
    );
    assert_eq!(status, 429, "{v}");
    assert!(headers.get("retry-after").is_some());
    assert!(
        v.to_string().contains("daemon.max_queued_runs_per_tenant"),
        "{v}"
    );
    // Another tenant is not affected.
    let (status, v) = s.daemon.post("/v1/runs", &s.other, &body);
    assert_eq!(status, 202, "{v}");
}

#[test]
fn a_tenants_slow_calls_do_not_delay_another_tenant() {
    let _serial = crate::alone();
    let s = setup("max_calls_per_tenant = 8", "");
    let idle = s.idle();
    let by = s.bystander();
    let url = s.daemon.url.clone();
    let start = Instant::now();
    let slow: Vec<_> = (0..12)
        .map(|_| {
            let (url, token) = (url.clone(), s.attacker.clone());
            thread::spawn(move || {
                let body =
                    json!({"capsule": "hostile-loop", "input": {}, "limits": {"timeout_ms": 1500}});
                request(
                    &client(),
                    &url,
                    reqwest::Method::POST,
                    "/v1/runs",
                    Some(&token),
                    Some(body.to_string()),
                )
            })
        })
        .collect();
    let answers: Vec<_> = slow.into_iter().map(|h| h.join().expect("slow")).collect();
    let during = by.finish();
    let refused = answers.iter().filter(|(s, ..)| *s == 429).count();
    // Each ran until a limit stopped it (its deadline or its fuel).
    let ran = answers
        .iter()
        .filter(|(s, v, _)| *s == 200 && v["ok"] == false)
        .count();
    eprintln!(
        "12 slow calls: {ran} ran to their deadline, {refused} refused, in {:?}; bystander median {:?} (idle {:?})",
        start.elapsed(),
        during.median(),
        idle.median()
    );
    assert_eq!(ran + refused, 12, "{answers:?}");
    assert!(refused >= 1, "the tenant's share (8) was not enforced");
    for (status, v, headers) in &answers {
        if *status == 429 {
            assert!(headers.get("retry-after").is_some());
            assert!(v.to_string().contains("daemon.max_calls_per_tenant"), "{v}");
        }
    }
    assert_unharmed(&idle, &during, 3.0);
}

#[test]
fn retained_call_results_are_bounded_by_bytes() {
    let _serial = crate::alone();
    let s = setup("recent_calls_bytes = 8388608", "");
    let input = "e".repeat(48_000);
    let body = json!({"capsule": "echo", "input": input}).to_string();
    // Warm up, then measure.
    let c = client();
    for _ in 0..50 {
        request(
            &c,
            &s.daemon.url,
            reqwest::Method::POST,
            "/v1/runs",
            Some(&s.attacker),
            Some(body.clone()),
        );
    }
    let before = s.usage();
    let start = Instant::now();
    let url = s.daemon.url.clone();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (url, token, body) = (url.clone(), s.attacker.clone(), body.clone());
            thread::spawn(move || {
                let c = client();
                let mut last = String::new();
                for _ in 0..500 {
                    let (status, v, _) = request(
                        &c,
                        &url,
                        reqwest::Method::POST,
                        "/v1/runs",
                        Some(&token),
                        Some(body.clone()),
                    );
                    assert_eq!(status, 200, "{v:.300}");
                    last = v["run"].as_str().unwrap_or_default().to_owned();
                }
                last
            })
        })
        .collect();
    let lasts: Vec<String> = workers
        .into_iter()
        .map(|w| w.join().expect("worker"))
        .collect();
    let after = s.usage();
    let grew = mib(after.rss_kib.saturating_sub(before.rss_kib));
    eprintln!(
        "4,000 echo calls of 48 KB (192 MB of results) in {:?}: RSS {} → {} MiB",
        start.elapsed(),
        mib(before.rss_kib),
        mib(after.rss_kib)
    );
    // 8 MiB of results kept, plus slack for the allocator.
    assert!(grew < 8 + 64, "RSS grew by {grew} MiB");
    // The newest results are still there.
    let (status, v) = s.daemon.get(&format!("/v1/runs/{}", lasts[0]), &s.attacker);
    assert_eq!(status, 200, "{v:.300}");
    assert_eq!(v["output"].as_str().map(str::len), Some(48_000));
}

#[test]
fn a_tenants_event_streams_are_capped() {
    let _serial = crate::alone();
    let s = setup("max_streams_per_tenant = 4", "");
    let until = now_ms() + 60_000;
    let body = dag(&backoff_spec(5_000), json!({ "until": until }));
    let (status, v) = s.daemon.post("/v1/runs", &s.attacker, &body);
    assert_eq!(status, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let path = format!("{}/v1/runs/{run}/events", s.daemon.url);
    let stream_client = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .expect("client");
    let open = |token: &str| {
        stream_client
            .get(&path)
            .bearer_auth(token)
            .send()
            .expect("stream")
    };
    let held: Vec<_> = (0..4).map(|_| open(&s.attacker)).collect();
    for h in &held {
        assert_eq!(h.status().as_u16(), 200);
    }
    let refused = open(&s.attacker);
    assert_eq!(refused.status().as_u16(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    let text = refused.text().expect("body");
    assert!(text.contains("daemon.max_streams_per_tenant"), "{text}");
    // Closing one frees its slot.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = open(&s.attacker);
        if again.status().as_u16() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slots were never freed");
        thread::sleep(Duration::from_millis(50));
    }
    // The stream of a finished run is read from the journal and ends.
    let (status, v) = s.daemon.post(
        "/v1/runs",
        &s.other,
        &dag(
            "version: 1\nname: one\ncapsules: {e: echo}\nnodes:\n  - {id: a, capsule: e}\n",
            json!({}),
        ),
    );
    assert_eq!(status, 202, "{v}");
    let done = v["run"].as_str().expect("run").to_owned();
    s.daemon
        .wait_finished(&s.other, &done, Duration::from_secs(10));
    let events = client()
        .get(format!("{}/v1/runs/{done}/events", s.daemon.url))
        .bearer_auth(&s.other)
        .send()
        .expect("events")
        .text()
        .expect("text");
    assert!(events.contains("event: created"), "{events}");
    assert!(events.contains("event: finished"), "{events}");
}
