//! Analytics benchmarks on a real redb file (Durability::Immediate).
//!
//! - `analytics/call_charge_outbox_{off,on}_{1,2}`  one call's charge (wall time +
//!   fuel, one fsync'd `Ledger::append`) with the outbox off and on,
//!   interleaved in the same run: the outbox's cost per call.
//! - `analytics/outbox_push_10k`  10,000 events written to the outbox in one
//!   transaction (what the ledger's group commit adds per event).
//! - `analytics/ship_10k`         the shipper folding 10,000 outbox events
//!   into the rollups and deleting them (one transaction): ingest events/s.
//! - `analytics/sink_kafka_10k`, `sink_clickhouse_10k`  one external sink's
//!   delivery of 10,000 events to the real server on loopback (tansu's
//!   broker, the workspace's `soma-kafka-broker`; Debian's ClickHouse):
//!   the shipper's throughput to each, without the outbox read and the
//!   cursor's fsync'd move (one per batch).
//! - `analytics/query_*`          dashboard queries over rollups built from
//!   10,000,000 events (one day, 4 tenants, 50 capsules, 5 models, 8 failure
//!   classes). Before criterion runs them, each query is also timed 1,000
//!   times and its p50/p99 printed (criterion reports means only).

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use soma_runtime::{
    analytics::{
        self, Body, Dim, Event, FullPolicy, Gran, Query, Site,
        sink::{
            Sink as _,
            clickhouse::{ClickHouseConfig, ClickHouseSink},
            kafka::{KafkaConfig, KafkaSink},
        },
    },
    ledger::{Entry, Kind, Ledger},
    store::DataDir,
};

/// 2024-03-01T00:00:00Z.
const MAR_1: u64 = 1_709_251_200_000;
const DAY_MS: u64 = 86_400_000;
const BATCH: u64 = 10_000;
const QUERY_EVENTS: u64 = 10_000_000;
const CLASSES: [&str; 8] = [
    "out-of-fuel",
    "deadline-exceeded",
    "memory-limit",
    "trap",
    "capsule-error",
    "denied",
    "host-error",
    "budget-exceeded",
];

fn mix(n: u64) -> u64 {
    let mut x = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A deterministic, realistic event: mostly calls, then LLM tokens and failures.
fn event(n: u64) -> Event {
    let x = mix(n);
    let tenant = format!("tenant-{}", (x >> 8) % 4);
    let site = Site {
        run: format!("run-{}", n / 4),
        node: "node".into(),
        attempt: 0,
        capsule_digest: format!("sha256:{:064x}", (x >> 16) % 50),
    };
    let time_ms = MAR_1 + (n * (DAY_MS / QUERY_EVENTS)) % DAY_MS;
    let key = format!("run-{}/node/0/{}", n / 4, n % 4);
    let body = match x % 10 {
        0..=5 => Body::Call {
            site,
            capsule_name: None,
            fuel: Some(10_000 + (x >> 24) % 100_000),
            wall_us: 50 + (x >> 32) % 50_000,
            peak_memory_bytes: None,
            cost_micros: 1 + (x >> 40) % 1000,
        },
        6 | 7 => Body::LlmTokens {
            site,
            direction: if x.is_multiple_of(2) {
                "input"
            } else {
                "output"
            }
            .into(),
            tokens: 100 + (x >> 24) % 4000,
            provider: Some("openai".into()),
            model: Some(format!("model-{}", (x >> 36) % 5)),
            cost_micros: (x >> 40) % 10_000,
            estimated: false,
        },
        8 => Body::CallFailed {
            site,
            failure_class: CLASSES[((x >> 24) % 8) as usize].into(),
        },
        _ => Body::GateVerdict {
            run: site.run,
            node: "gate".into(),
            score: Some(0.5),
            approved: !(x >> 24).is_multiple_of(4),
        },
    };
    Event::new(&key, &tenant, time_ms, body)
}

/// One call's charge: wall time and fuel, as the meter writes it.
fn call_charge(n: u64) -> Vec<Entry> {
    let entry = |kind, quantity| Entry {
        id: 0,
        time_ms: MAR_1 + n,
        tenant: format!("tenant-{}", n % 4),
        run: format!("call-{n}"),
        node: "-".into(),
        attempt: 0,
        seq: 0,
        capsule: format!("sha256:{:064x}", n % 50),
        kind,
        quantity,
        unit_price_micros: 1,
        cost_micros: Entry::cost_for(quantity, 1),
        provider: None,
        model: None,
        estimated: false,
    };
    vec![
        entry(Kind::WallTime, 300 + n % 1000),
        entry(Kind::Fuel, 10_000),
    ]
}

fn bench(c: &mut Criterion) {
    // `cargo test --benches` runs each benchmark once: there the query
    // rollups come from 100,000 events, not 10,000,000 (minutes of setup).
    let test_mode = !std::env::args().any(|a| a == "--bench");
    let (query_events, timed) = if test_mode {
        (100_000, 10)
    } else {
        (QUERY_EVENTS, 1000)
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(dir.path());
    let ledger = Ledger::open(&data);
    let db = data.database().get().expect("open");

    // The outbox's cost per call: the same appends with it off and on,
    // interleaved so both see the same disk and machine load.
    let mut n = 0u64;
    let mut g = c.benchmark_group("analytics");
    g.sample_size(30);
    for (round, on) in [(1, false), (1, true), (2, false), (2, true)] {
        let name = format!(
            "call_charge_outbox_{}_{round}",
            if on { "on" } else { "off" }
        );
        analytics::outbox::configure(&db, 1_000_000, FullPolicy::DropOldest, on)
            .expect("configure");
        g.bench_function(&name, |b| {
            b.iter(|| {
                n += 1;
                ledger.append(&call_charge(n)).expect("append")
            })
        });
        analytics::ship_all(&db, BATCH as usize).expect("ship");
    }
    g.finish();
    analytics::outbox::configure(&db, 1_000_000, FullPolicy::DropOldest, true).expect("configure");
    let batch: Vec<Event> = (0..BATCH).map(event).collect();

    let mut g = c.benchmark_group("analytics");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(20);
    g.bench_function("outbox_push_10k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let txn = db.begin_write().expect("txn");
                analytics::outbox::push(&txn, &batch).expect("push");
                txn.commit().expect("commit");
                total += start.elapsed();
                // Drain outside the timing so the outbox stays small.
                analytics::ship_all(&db, BATCH as usize).expect("ship");
            }
            total
        })
    });
    g.bench_function("ship_10k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let txn = db.begin_write().expect("txn");
                analytics::outbox::push(&txn, &batch).expect("push");
                txn.commit().expect("commit");
                let start = Instant::now();
                let shipped = analytics::ship_once(&db, BATCH as usize).expect("ship");
                total += start.elapsed();
                assert_eq!(shipped as u64, BATCH);
            }
            total
        })
    });
    // The external sinks' delivery of a 10,000-event batch to the real
    // servers (tansu's broker, Debian's ClickHouse 18.16) on loopback: what
    // a sink thread spends per batch besides reading the outbox and moving
    // its cursor (one fsync'd commit).
    let held: Vec<analytics::outbox::Held> = batch
        .iter()
        .enumerate()
        .map(|(i, e)| analytics::outbox::Held {
            seq: i as u64 + 1,
            json: serde_json::to_vec(e).expect("json"),
        })
        .collect();
    let broker = soma_tests::kafka::Broker::start();
    let mut kafka = KafkaSink::new(KafkaConfig {
        brokers: vec![broker.address()],
        batch: BATCH as u32,
        ..KafkaConfig::default()
    });
    g.bench_function("sink_kafka_10k", |b| {
        b.iter(|| kafka.deliver(&held).expect("produce"));
    });
    let ch = soma_tests::clickhouse::ClickHouse::start();
    let mut clickhouse = ClickHouseSink::new(ClickHouseConfig {
        url: ch.url(),
        ..ClickHouseConfig::default()
    });
    g.bench_function("sink_clickhouse_10k", |b| {
        b.iter(|| clickhouse.deliver(&held).expect("insert"));
    });
    g.finish();
    drop((broker, ch));

    // Rollups of 10,000,000 events, folded in the shipper's way (without the
    // JSON round trip through the outbox, which `ship_10k` measures).
    let qdir = tempfile::tempdir().expect("tempdir");
    let qdata = DataDir::new(qdir.path());
    let qdb = qdata.database().get().expect("open");
    let start = Instant::now();
    let mut n = 0;
    while n < query_events {
        let events: Vec<Event> = (n..n + 100_000).map(event).collect();
        let txn = qdb.begin_write().expect("txn");
        analytics::rollup::ingest(&txn, &events).expect("ingest");
        txn.commit().expect("commit");
        n += 100_000;
    }
    let took = start.elapsed();
    eprintln!(
        "analytics: folded {query_events} events into rollups in {:.1} s ({:.0} events/s)",
        took.as_secs_f64(),
        query_events as f64 / took.as_secs_f64()
    );
    let queries: Vec<(&str, Query)> = vec![
        (
            "query_tenant_by_capsule_day_hourly",
            Query {
                tenant: Some("tenant-1".into()),
                by: Dim::Capsule,
                bucket: Gran::Hour,
                since_ms: MAR_1,
                until_ms: MAR_1 + DAY_MS,
                series: false,
                top: Some(10),
            },
        ),
        (
            "query_operator_by_class_day",
            Query {
                tenant: None,
                by: Dim::Class,
                bucket: Gran::Day,
                since_ms: MAR_1,
                until_ms: MAR_1 + DAY_MS,
                series: false,
                top: None,
            },
        ),
        (
            "query_operator_series_minutes_day",
            Query {
                tenant: None,
                by: Dim::All,
                bucket: Gran::Minute,
                since_ms: MAR_1,
                until_ms: MAR_1 + DAY_MS,
                series: true,
                top: None,
            },
        ),
        (
            "query_tenant_by_model_minutes_day",
            Query {
                tenant: Some("tenant-2".into()),
                by: Dim::Model,
                bucket: Gran::Minute,
                since_ms: MAR_1,
                until_ms: MAR_1 + DAY_MS,
                series: false,
                top: None,
            },
        ),
    ];
    for (name, q) in &queries {
        let mut times: Vec<Duration> = (0..timed)
            .map(|_| {
                let s = Instant::now();
                let rows = analytics::rollup::query(&qdb, q).expect("query");
                assert!(!rows.is_empty());
                s.elapsed()
            })
            .collect();
        times.sort_unstable();
        eprintln!(
            "analytics/{name}: p50 {:.2} ms, p99 {:.2} ms over {query_events} events",
            times[timed / 2].as_secs_f64() * 1e3,
            times[timed * 99 / 100].as_secs_f64() * 1e3
        );
    }
    let mut g = c.benchmark_group("analytics");
    for (name, q) in &queries {
        g.bench_function(*name, |b| {
            b.iter(|| analytics::rollup::query(&qdb, q).expect("query"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
