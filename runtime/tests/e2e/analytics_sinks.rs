//! The external analytics sinks against real servers: a daemon whose
//! ClickHouse (Debian's clickhouse-server 18.16) is down while two tenants
//! make calls, killed -9 while the sink is behind, restarted, delivers
//! every event exactly once at the reader (by id): each tenant's call
//! events are exactly its charged calls, and the table (read with `FINAL`)
//! holds no id twice.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use soma_tests::{
    clickhouse::ClickHouse,
    daemon::{self as harness, Bystander, DaemonProcess as Daemon},
};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

/// A metric's value for one `sink` label, from a `/metrics` exposition.
fn sink_metric(text: &str, family: &str, sink: &str) -> Option<f64> {
    let prefix = format!("{family}{{sink=\"{sink}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

fn metrics(d: &Daemon, token: &str) -> String {
    let (s, v) = d.get("/metrics", token);
    assert_eq!(s, 200, "{v}");
    v.as_str().expect("exposition text").to_owned()
}

/// Wait until `sink` has delivered everything the outbox holds.
fn wait_caught_up(d: &Daemon, token: &str, sink: &str) {
    let start = Instant::now();
    loop {
        let text = metrics(d, token);
        if sink_metric(&text, "soma_analytics_sink_lag_events", sink) == Some(0.0) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{sink} did not catch up:\n{}",
            text.lines()
                .filter(|l| l.contains("analytics"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Run callers for both tenants until the ledger holds `entries` entries of acme's.
fn traffic_until(d: &Daemon, tokens: [&str; 2], entries: usize) -> Vec<Bystander> {
    let callers: Vec<Bystander> = [tokens[0], tokens[0], tokens[1]]
        .into_iter()
        .map(|t| Bystander::start(&d.url, t, Duration::ZERO))
        .collect();
    let start = Instant::now();
    loop {
        let (s, v) = d.get("/v1/ledger?limit=100000", tokens[0]);
        assert_eq!(s, 200, "{v}");
        if v.as_array().map_or(0, Vec::len) >= entries {
            return callers;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no traffic: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn clickhouse_gets_every_event_once_through_an_outage_and_a_kill_9() {
    let mut ch = ClickHouse::start();
    ch.stop();
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = harness::token(bin(), dir.path(), "acme", "run,read");
    let globex = harness::token(bin(), dir.path(), "globex", "run,read");
    let ops = harness::token(bin(), dir.path(), "ops", "metrics");
    let config = format!(
        "[analytics]\nship_interval_ms = 50\n\n[analytics.clickhouse]\nurl = \"{}\"\n\
         min_batch = 10\nmax_batch = 25\nlinger_ms = 100\ntimeout_ms = 3000\n",
        ch.url()
    );
    // 1. ClickHouse is down: calls are served, their events wait.
    let d = Daemon::start(bin(), dir.path(), "", &config);
    let callers = traffic_until(&d, [&acme, &globex], 40);
    let start = Instant::now();
    while sink_metric(
        &metrics(&d, &ops),
        "soma_analytics_sink_failures_total",
        "clickhouse",
    )
    .unwrap_or(0.0)
        < 1.0
    {
        assert!(start.elapsed() < Duration::from_secs(60), "no failure seen");
        std::thread::sleep(Duration::from_millis(50));
    }
    // 2. It comes back; the daemon is killed while the sink catches up (25
    // events an insert: the backlog takes many).
    ch.resume();
    let start = Instant::now();
    while ch
        .query("EXISTS TABLE soma.events")
        .trim()
        .parse::<u32>()
        .unwrap_or(0)
        == 0
        || ch.query("SELECT count() FROM soma.events").trim() == "0"
    {
        assert!(start.elapsed() < Duration::from_secs(60), "nothing arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (data, config_path) = d.kill9();
    let at_kill = ch.query("SELECT count() FROM soma.events");
    let served: usize = callers.into_iter().map(|c| c.finish().ok.len()).sum();
    assert!(served > 0);
    // 3. Restarted, it delivers the rest.
    let d = Daemon::spawn(bin(), &data, &config_path);
    wait_caught_up(&d, &ops, "clickhouse");
    let text = metrics(&d, &ops);
    assert!(
        sink_metric(&text, "soma_analytics_sink_delivered_total", "clickhouse").unwrap_or(0.0)
            > 0.0,
        "{text}"
    );
    d.stop();
    let out = harness::soma(bin(), &data)
        .args(["ledger", "ls", "--limit", "1000000", "--json"])
        .output()
        .expect("soma ledger ls");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ledger: Value = serde_json::from_slice(&out.stdout).expect("ledger JSON");

    // Exactly once at the reader: no id twice once deduplicated, and each
    // tenant's call events are its charged calls.
    let counts = ch.query("SELECT count(), uniqExact(id) FROM soma.events FINAL");
    let (rows, ids) = counts.trim().split_once('\t').expect("two numbers");
    assert_eq!(rows, ids, "FINAL keeps one row per id");
    let raw = ch.query("SELECT count() FROM soma.events");
    eprintln!(
        "clickhouse: {} rows at the kill, {} rows inserted, {rows} events",
        at_kill.trim(),
        raw.trim()
    );
    assert!(at_kill.trim().parse::<u64>().expect("count") < rows.parse().expect("count"));
    let per_tenant: BTreeMap<String, u64> = ch
        .query("SELECT tenant, count() FROM soma.events FINAL WHERE type = 'call' GROUP BY tenant")
        .lines()
        .filter_map(|l| {
            let (t, n) = l.split_once('\t')?;
            Some((t.to_owned(), n.parse().ok()?))
        })
        .collect();
    for tenant in ["acme", "globex"] {
        let charged: Vec<&Value> = ledger
            .as_array()
            .expect("entries")
            .iter()
            .filter(|e| e["tenant"] == tenant && e["kind"] == "wall-time")
            .collect();
        assert!(!charged.is_empty(), "{tenant} made calls");
        assert_eq!(
            per_tenant.get(tenant).copied(),
            Some(charged.len() as u64),
            "{tenant}: call events in ClickHouse = calls charged"
        );
    }
    // Every row carries its whole event, and the columns agree with it.
    for line in ch
        .query("SELECT id, tenant, type, event FROM soma.events FINAL LIMIT 200 FORMAT JSONEachRow")
        .lines()
    {
        let row: Value = serde_json::from_str(line).expect("row");
        let event: Value =
            serde_json::from_str(row["event"].as_str().expect("event")).expect("event JSON");
        assert_eq!(event["id"], row["id"]);
        assert_eq!(event["tenant"], row["tenant"]);
        assert_eq!(event["type"], row["type"]);
        assert_eq!(event["v"], 1);
    }
}
