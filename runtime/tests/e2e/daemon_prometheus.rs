//! `soma daemon`'s `/metrics` scraped by a real Prometheus: calls made over
//! HTTP show up, with the right labels and counts, in PromQL answers; the
//! exposition carries the latency histogram and the fuel counter; every
//! query of the Grafana dashboard and the shipped scrape config are valid.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use soma_runtime::daemon::metrics::FAMILIES;
use soma_tests::{daemon::harness, prometheus::Prometheus, registry::http_request};

/// How long a daemon may take to print its address (the first start
/// compiles the capsule).
const START_DEADLINE: Duration = Duration::from_secs(120);

/// The repository's `docs/deploy`.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy")
}

fn soma(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_soma"));
    c.arg("--data")
        .arg(data)
        .env_remove("SOMA_CONFIG")
        .env("SOMA_LOG", "warn");
    c
}

/// A daemon process; SIGTERM (then SIGKILL) on drop.
struct Daemon {
    process: harness::Daemon,
    /// `127.0.0.1:PORT`.
    host: String,
}

impl Daemon {
    fn start(data: &Path, config: &Path) -> Self {
        let start = harness::Start {
            keep_lines: usize::MAX,
            deadline: START_DEADLINE,
            ..harness::Start::default()
        }
        .env("SOMA_LOG", "warn");
        let process =
            harness::Daemon::start(Path::new(env!("CARGO_BIN_EXE_soma")), data, config, &start)
                .unwrap_or_else(|e| panic!("{e}"));
        Self {
            host: process.addr().to_owned(),
            process,
        }
    }

    fn log(&self) -> String {
        self.process.log().lines().join("\n")
    }

    /// `method path` with an optional bearer token and JSON body: (status, body).
    fn request(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let length = body.len().to_string();
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Content-Length", length.as_str()),
        ];
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth));
        }
        let r = http_request(&self.host, method, path, &headers, body.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log()));
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.process.stop(Duration::from_secs(15));
    }
}

/// `name{labels}` → value of every sample line of an exposition.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().ok()?,
            };
            Some((series.to_owned(), value))
        })
        .collect()
}

/// Every sample name the daemon can export: its metric families, and each
/// histogram's `_bucket`, `_sum` and `_count`; checked against the `# TYPE`
/// lines of `text` (the families that have series by now).
fn exported_names(text: &str) -> BTreeSet<String> {
    let families: BTreeSet<&str> = FAMILIES.into_iter().collect();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        assert!(families.contains(name), "`{name}` is missing from FAMILIES");
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    for family in families {
        names.insert(family.to_owned());
        if family.ends_with("_duration_seconds") {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{family}{suffix}"));
            }
        }
    }
    names
}

/// Grafana's variables replaced by what "All" and a 1 h range expand to.
fn expand_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$instance", ".*")
        .replace("$capsule", ".*")
        .replace("$tenant", ".*")
        .replace("$ptenant", ".*")
}

#[test]
fn calls_reach_prometheus_and_the_dashboard_queries_are_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("soma.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nlisten = \"127.0.0.1:0\"\n[[daemon.capsules]]\nname = \"echo\"\npath = \"{}\"\n",
            soma_capsules::ECHO_COMPONENT
        ),
    )
    .expect("config");

    // A token, created before the daemon holds the database.
    let out = soma(&data)
        .args([
            "token", "create", "--tenant", "acme", "--scopes", "run,read", "--json",
        ])
        .output()
        .expect("spawn soma token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).expect("token JSON");
    let token = created["token"].as_str().expect("token").to_owned();
    // The scraper's token: `/metrics` only.
    let out = soma(&data)
        .args([
            "token", "create", "--tenant", "ops", "--scopes", "metrics", "--json",
        ])
        .output()
        .expect("spawn soma token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).expect("token JSON");
    let scraper = created["token"].as_str().expect("token").to_owned();

    let daemon = Daemon::start(&data, &config);

    // Five good calls, one without a token, one of an unknown capsule.
    const CALLS: u32 = 5;
    let mut digest = String::new();
    let mut fuel_used = 0u64;
    for k in 0..CALLS {
        let body = format!(r#"{{"capsule":"echo","input":{{"x":{k}}}}}"#);
        let (status, text) = daemon.request("POST", "/v1/runs", Some(&token), &body);
        assert_eq!(status, 200, "{text}\n{}", daemon.log());
        let answer: Value = serde_json::from_str(&text).expect("run JSON");
        assert_eq!(answer["ok"], true, "{answer}");
        assert_eq!(answer["output"]["x"], k, "{answer}");
        fuel_used += answer["usage"]["fuel_consumed"].as_u64().expect("fuel");
        digest = answer["capsule"]["digest"]
            .as_str()
            .expect("digest")
            .to_owned();
    }
    let (status, _) = daemon.request("POST", "/v1/runs", None, r#"{"capsule":"echo"}"#);
    assert_eq!(status, 401);
    let (status, _) = daemon.request("POST", "/v1/runs", Some(&token), r#"{"capsule":"nope"}"#);
    assert_eq!(status, 404);

    // The exposition itself: a `metrics` (or `operator`) token only.
    let (status, _) = daemon.request("GET", "/metrics", None, "");
    assert_eq!(status, 401, "/metrics without a token");
    let (status, _) = daemon.request("GET", "/metrics", Some(&token), "");
    assert_eq!(status, 403, "/metrics with a tenant's run,read token");
    let (status, _) = daemon.request("GET", "/v1/capsules", Some(&scraper), "");
    assert_eq!(status, 403, "a metrics token reads nothing else");
    let bearer = format!("Bearer {scraper}");
    let metrics = http_request(
        &daemon.host,
        "GET",
        "/metrics",
        &[("Authorization", &bearer)],
        &[],
    )
    .expect("GET /metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        metrics.headers
    );
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let all = samples(&text);
    let get = |series: &str| -> f64 {
        *all.get(series)
            .unwrap_or_else(|| panic!("no sample `{series}` in /metrics:\n{text}"))
    };
    let calls = f64::from(CALLS);
    assert_eq!(
        get(r#"soma_calls_total{capsule="echo",outcome="ok"}"#),
        calls
    );
    assert!(
        text.contains("# TYPE soma_call_duration_seconds histogram"),
        "{text}"
    );
    assert_eq!(
        get(r#"soma_call_duration_seconds_count{capsule="echo"}"#),
        calls
    );
    assert_eq!(
        get(r#"soma_call_duration_seconds_bucket{capsule="echo",le="+Inf"}"#),
        calls
    );
    assert!(get(r#"soma_call_duration_seconds_sum{capsule="echo"}"#) > 0.0);
    let buckets = all
        .keys()
        .filter(|k| k.starts_with("soma_call_duration_seconds_bucket{") && k.contains("echo"))
        .count();
    assert_eq!(buckets, 20, "19 bounds from 10 µs to 10 s, and +Inf");
    let short = &digest["sha256:".len().."sha256:".len() + 12];
    let fuel = get(&format!(r#"soma_fuel_consumed_total{{digest="{short}"}}"#));
    assert!(fuel > 0.0, "fuel is charged: {fuel}");
    assert_eq!(fuel, fuel_used as f64, "the fuel the calls reported, once");
    assert!(
        get(&format!(
            r#"soma_wall_time_seconds_total{{digest="{short}"}}"#
        )) > 0.0
    );
    assert_eq!(
        get(r#"soma_ledger_entries_total{kind="fuel"}"#),
        calls,
        "one fuel charge per call, counted once"
    );
    // Tenant labels are off by default: cost is summed, no tenant is named.
    assert!(get(r#"soma_cost_micros_total{tenant="all"}"#) >= 0.0);
    assert!(!text.contains("acme"), "a tenant name in /metrics:\n{text}");
    assert_eq!(
        get(r#"soma_rejected_total{reason="unauthorized"}"#),
        2.0,
        "the call and the scrape without a token"
    );
    assert_eq!(
        get(r#"soma_http_requests_total{route="/v1/runs",method="POST",status="200"}"#),
        calls
    );
    assert_eq!(
        get(r#"soma_http_requests_total{route="/v1/runs",method="POST",status="404"}"#),
        1.0
    );
    assert_eq!(get(r#"soma_runs_started_total{kind="call"}"#), calls);
    assert_eq!(
        get(r#"soma_runs_finished_total{kind="call",status="ok"}"#),
        calls
    );
    for gauge in ["soma_active_runs", "soma_queue_depth"] {
        assert_eq!(get(gauge), 0.0, "{gauge}");
    }
    assert!(get("soma_capsule_cache_misses_total") + get("soma_capsule_cache_hits_total") >= 1.0);

    // A real Prometheus scraping it sees the same numbers.
    let prometheus = Prometheus::start_with_bearer(&daemon.host, &scraper);
    let timeout = Duration::from_secs(30);
    prometheus.wait_for(r#"up{job="soma"}"#, timeout, |v| v == 1.0);
    let seen = prometheus.wait_for(
        r#"soma_calls_total{job="soma",capsule="echo",outcome="ok"}"#,
        timeout,
        |v| v == calls,
    );
    assert_eq!(seen, calls);
    assert_eq!(
        prometheus.value(r#"sum(soma_call_duration_seconds_count{capsule="echo"})"#),
        Some(calls)
    );
    assert_eq!(
        prometheus.value(r#"histogram_quantile(1, sum by (le) (soma_call_duration_seconds_bucket{capsule="echo"})) > 0"#)
            .map(|v| v <= 10.0),
        Some(true),
        "the histogram answers quantile queries"
    );
    assert_eq!(
        prometheus.value(&format!(r#"soma_fuel_consumed_total{{digest="{short}"}}"#)),
        Some(fuel)
    );

    // Every dashboard query parses and names only series the daemon exports.
    let exported = exported_names(&text);
    let queries = soma_tests::grafana::queries("expr");
    assert!(
        queries.len() >= 45,
        "the dashboards have {} queries",
        queries.len()
    );
    for (panel, expr) in queries {
        let expanded = expand_variables(&expr);
        assert!(
            !expanded.contains('$'),
            "{panel}: unexpanded variable in {expanded}"
        );
        let answer = prometheus.query(&expanded);
        assert_eq!(
            answer["status"], "success",
            "{panel}: `{expanded}` → {answer}"
        );
        for name in expanded
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("soma_"))
        {
            assert!(
                exported.contains(name),
                "{panel}: `{name}` is not a series of the daemon (it exports {exported:?})"
            );
        }
    }

    // The shipped scrape config is valid.
    let promtool = Path::new("/usr/bin/promtool");
    if promtool.exists() {
        let out = Command::new(promtool)
            .arg("check")
            .arg("config")
            .arg(deploy_dir().join("prometheus.yml"))
            .output()
            .expect("spawn promtool");
        assert!(
            out.status.success(),
            "docs/deploy/prometheus.yml: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
