//! The external analytics sinks against real servers: a daemon whose Kafka
//! broker (tansu, `tests/src/kafka.rs`) and ClickHouse (Debian's
//! clickhouse-server 18.16) are down while two tenants make calls is killed
//! -9; restarted with both up, it is killed -9 again while the sinks are
//! behind; restarted once more, it delivers every event exactly once at the
//! reader (by id) in both: each tenant's call events are exactly its
//! charged calls, the table (read with `FINAL`) holds no id twice, the
//! topic's records deduplicated by id are the table's ids, and each record
//! is keyed by its tenant in the partition Kafka's partitioner gives it
//! (read back with a second client, kafka-python).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use serde_json::Value;
use soma_tests::{
    clickhouse::ClickHouse,
    daemon::{self as harness, DaemonProcess as Daemon},
    kafka::Broker,
};

use super::common::{bin, charged_calls, traffic_until};

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

/// Every ClickHouse query of the dashboards in `docs/deploy/grafana/`, as
/// (dashboard: panel, SQL) with Grafana's macros and variables expanded the
/// way the ClickHouse data source does for a range covering every event,
/// a 60 s interval and every tenant and capsule selected.
fn clickhouse_dashboard_queries(tenants: &str, capsules: &str) -> Vec<(String, String)> {
    soma_tests::grafana::queries("rawSql")
        .into_iter()
        .map(|(panel, sql)| {
            let sql = sql
                .replace(
                    "$__timeFilter(time)",
                    "time >= toDateTime(0) AND time <= toDateTime(4102444800)",
                )
                .replace("$__interval_s", "60")
                .replace("${tenant:singlequote}", tenants)
                .replace("${capsule:singlequote}", capsules);
            (panel, sql)
        })
        .collect()
}

/// Wait until `/metrics` shows a failed delivery of each of `sinks`.
fn wait_failing(d: &Daemon, token: &str, sinks: &[&str]) {
    let start = Instant::now();
    loop {
        let text = metrics(d, token);
        let failing = |s: &&str| {
            sink_metric(&text, "soma_analytics_sink_failures_total", s).unwrap_or(0.0) >= 1.0
        };
        if sinks.iter().all(failing) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no failed delivery seen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kafka_and_clickhouse_get_every_event_once_through_outages_and_kill_9s() {
    let mut broker = Broker::down();
    let mut ch = ClickHouse::start();
    ch.stop();
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = harness::token(bin(), dir.path(), "acme", "run,read");
    let globex = harness::token(bin(), dir.path(), "globex", "run,read");
    let ops = harness::token(bin(), dir.path(), "ops", "metrics");
    let config = format!(
        "[analytics]\nship_interval_ms = 50\n\n\
         [analytics.kafka]\nbrokers = [\"{}\"]\npartitions = 3\nbatch = 40\ntimeout_ms = 3000\n\n\
         [analytics.clickhouse]\nurl = \"{}\"\nmin_batch = 10\nmax_batch = 25\nlinger_ms = 100\n\
         timeout_ms = 3000\n",
        broker.address(),
        ch.url()
    );
    // 1. Both sinks down: calls are served, their events wait; kill -9.
    let d = Daemon::start(bin(), dir.path(), "", &config);
    let callers = traffic_until(&d, &[&acme, &acme, &globex], &acme, 40);
    wait_failing(&d, &ops, &["kafka", "clickhouse"]);
    let (data, config_path) = d.kill9();
    let served: usize = callers.into_iter().map(|c| c.finish().ok.len()).sum();
    assert!(served > 0);
    // 2. Both back; more calls; kill -9 while the sinks work through the
    // backlog (40 and 25 events a delivery: it takes many).
    broker.resume();
    ch.resume();
    let d = Daemon::spawn(bin(), &data, &config_path);
    let callers = traffic_until(&d, &[&acme, &acme, &globex], &acme, 200);
    let start = Instant::now();
    loop {
        let text = metrics(&d, &ops);
        let delivered =
            |s| sink_metric(&text, "soma_analytics_sink_delivered_total", s).unwrap_or(0.0);
        if delivered("kafka") > 0.0 && delivered("clickhouse") > 0.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nothing delivered"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (data, config_path) = d.kill9();
    let at_kill = ch.query("SELECT count() FROM soma.events");
    let served: usize = callers.into_iter().map(|c| c.finish().ok.len()).sum();
    assert!(served > 0);
    // 3. Restarted, it delivers the rest.
    let d = Daemon::spawn(bin(), &data, &config_path);
    wait_caught_up(&d, &ops, "clickhouse");
    wait_caught_up(&d, &ops, "kafka");
    wait_caught_up(&d, &ops, "rollup");
    d.stop();
    let charged_calls = charged_calls(&data);
    let charged = |tenant: &str| charged_calls.get(tenant).copied().unwrap_or(0);

    // ClickHouse: no id twice once deduplicated (FINAL), and each tenant's
    // call events are its charged calls.
    let counts = ch.query("SELECT count(), uniqExact(id) FROM soma.events FINAL");
    let (rows, ids) = counts.trim().split_once('\t').expect("two numbers");
    assert_eq!(rows, ids, "FINAL keeps one row per id");
    let raw = ch.query("SELECT count() FROM soma.events");
    eprintln!(
        "clickhouse: {} rows at the second kill, {} rows inserted, {rows} events",
        at_kill.trim(),
        raw.trim()
    );
    let per_tenant: BTreeMap<String, u64> = ch
        .query("SELECT tenant, count() FROM soma.events FINAL WHERE type = 'call' GROUP BY tenant")
        .lines()
        .filter_map(|l| {
            let (t, n) = l.split_once('\t')?;
            Some((t.to_owned(), n.parse().ok()?))
        })
        .collect();
    for tenant in ["acme", "globex"] {
        assert!(charged(tenant) > 0, "{tenant} made calls");
        assert_eq!(
            per_tenant.get(tenant).copied(),
            Some(charged(tenant)),
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
    // The tenant and capsule dashboards' queries run on the real server;
    // the ones over calls have rows.
    let capsules: Vec<String> = ch
        .query("SELECT DISTINCT capsule_digest FROM soma.events WHERE capsule_digest != ''")
        .lines()
        .map(|d| format!("'{d}'"))
        .collect();
    assert!(!capsules.is_empty());
    let queries = clickhouse_dashboard_queries("'acme','globex'", &capsules.join(","));
    assert!(queries.len() >= 10, "{} ClickHouse queries", queries.len());
    for (panel, sql) in queries {
        assert!(!sql.contains('$'), "{panel}: unexpanded variable in {sql}");
        let answer = ch.query(&sql);
        if sql.contains("type = 'call'") {
            assert!(!answer.trim().is_empty(), "{panel}: no rows from {sql}");
        }
    }
    let table_ids: BTreeSet<String> = ch
        .query("SELECT id FROM soma.events FINAL")
        .lines()
        .map(str::to_owned)
        .collect();

    // Kafka, read by a second client: keyed by tenant, in the partition
    // Kafka's default partitioner gives the key; by id, the table's events.
    let records = broker.read_all("soma.events");
    let mut topic_ids = BTreeSet::new();
    let mut calls: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut partitions = BTreeSet::new();
    for r in &records {
        let event: Value = serde_json::from_str(&r.value).expect("event JSON");
        assert_eq!(
            event["tenant"].as_str(),
            Some(r.key.as_str()),
            "{}",
            r.value
        );
        assert_eq!(
            r.partition, r.keyed_partition,
            "{}: the Java partitioner's partition",
            r.key
        );
        let id = event["id"].as_str().expect("id").to_owned();
        assert_eq!(r.event_id_header, id);
        if event["type"] == "call" {
            calls.entry(r.key.clone()).or_default().insert(id.clone());
        }
        partitions.insert(r.partition);
        topic_ids.insert(id);
    }
    assert!(
        partitions.len() >= 2,
        "acme and globex hash to different partitions: {partitions:?}"
    );
    eprintln!(
        "kafka: {} records, {} events",
        records.len(),
        topic_ids.len()
    );
    let missing: Vec<&String> = table_ids.difference(&topic_ids).collect();
    let extra: Vec<&String> = topic_ids.difference(&table_ids).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the topic and the table hold the same events; missing from the topic: {missing:?}, \
         not in the table: {extra:?}"
    );
    for tenant in ["acme", "globex"] {
        assert_eq!(
            calls.get(tenant).map_or(0, |c| c.len() as u64),
            charged(tenant),
            "{tenant}: call events in Kafka = calls charged"
        );
    }
}
