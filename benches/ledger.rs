//! Ledger benchmarks on a real redb file (Durability::Immediate).
//!
//! - `ledger/append_single_commit`          one entry per transaction (one fsync each).
//! - `ledger/append_group_commit_{16,64}_threads` 16 or 64 threads appending
//!   one entry per call through one `LedgerWriter`; throughput in entries/s.
//! - `ledger/summary_1m`                    `summary(GroupBy::Capsule)` over
//!   1,000,000 entries (built once, in 50,000-entry transactions). Run as a
//!   test (`cargo test --benches`, no `--bench`), it builds 100,000: the
//!   same code, a tenth of the setup (40 s of the suite at the `ci`
//!   profile's opt-level).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use soma_runtime::{
    ledger::{Entry, GroupBy, Kind, Ledger},
    store::DataDir,
};

/// 2024-03-01T00:00:00Z.
const MAR_1: u64 = 1_709_251_200_000;
const DAY_MS: u64 = 86_400_000;
const THREADS: u64 = 16;
const SUMMARY_ENTRIES: u64 = 1_000_000;
/// [`SUMMARY_ENTRIES`] when run as a test.
const SUMMARY_ENTRIES_TEST: u64 = 100_000;
const SETUP_BATCH: u64 = 50_000;

/// Unique run ids across every benchmark iteration.
static RUN: AtomicU64 = AtomicU64::new(0);

fn ledger() -> (Ledger, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    (Ledger::open(&DataDir::new(dir.path())), dir)
}

/// A deterministic, realistic entry: 30 days, 5 tenants, 20 capsules,
/// 2 models (input + output tokens), fuel and wall time.
fn entry(n: u64) -> Entry {
    // splitmix64: spread the dimensions independently.
    let mut x = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    let (kind, model, price) = match x % 6 {
        0 => (Kind::LlmTokensInput, Some("model-a"), 2_500),
        1 => (Kind::LlmTokensOutput, Some("model-a"), 10_000),
        2 => (Kind::LlmTokensInput, Some("model-b"), 150),
        3 => (Kind::LlmTokensOutput, Some("model-b"), 600),
        4 => (Kind::Fuel, None, 1),
        _ => (Kind::WallTime, None, 20),
    };
    let quantity = 100 + (x >> 8) % 4000;
    Entry {
        id: 0,
        time_ms: MAR_1 + ((x >> 16) % 30) * DAY_MS + n % DAY_MS,
        tenant: format!("tenant-{}", (x >> 24) % 5),
        run: format!("run-{}", n / 8),
        node: "node".into(),
        attempt: 0,
        seq: (n % 8) as u32,
        capsule: format!("sha256:{:064x}", (x >> 32) % 20),
        kind,
        quantity,
        unit_price_micros: price,
        cost_micros: Entry::cost_for(quantity, price),
        provider: model.map(|_| "provider".into()),
        model: model.map(Into::into),
        estimated: false,
    }
}

/// An entry with a fresh idempotency key, charged "now" (one day), as live
/// appends are.
fn fresh() -> Entry {
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let mut e = entry(run);
    e.run = format!("bench-{run}");
    e.seq = 0;
    e.time_ms = MAR_1 + run % DAY_MS;
    e
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("ledger");
    group.throughput(Throughput::Elements(1));

    let (single, _single_dir) = ledger();
    group.bench_function("append_single_commit", |b| {
        b.iter(|| single.append(&[fresh()]).expect("append"));
    });

    let (shared, _shared_dir) = ledger();
    let writer = shared.writer().expect("writer");
    // 16 appenders (a busy node) and 64 (the daemon's many sessions): one
    // entry per append, so every entry is its own durable acknowledgement.
    for threads in [THREADS, 64] {
        let name = format!("append_group_commit_{threads}_threads");
        group.bench_function(name.as_str(), |b| {
            b.iter_custom(|iters| {
                let per_thread = iters.div_ceil(threads);
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        let writer = writer.clone();
                        s.spawn(move || {
                            for _ in 0..per_thread {
                                writer.append(vec![fresh()]).expect("append");
                            }
                        });
                    }
                });
                // Report per requested iteration (a few extra appends may have run).
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_thread * threads) as f64)
            });
        });
    }
    group.finish();
}

fn summary(c: &mut Criterion) {
    let test_mode = !std::env::args().any(|a| a == "--bench");
    let entries = if test_mode {
        SUMMARY_ENTRIES_TEST
    } else {
        SUMMARY_ENTRIES
    };
    let (ledger, _dir) = ledger();
    let start = Instant::now();
    let mut batch = Vec::with_capacity(SETUP_BATCH as usize);
    for first in (0..entries).step_by(SETUP_BATCH as usize) {
        batch.clear();
        batch.extend((first..first + SETUP_BATCH).map(entry));
        let done = ledger.append(&batch).expect("setup append");
        assert_eq!(done.inserted.len(), batch.len());
    }
    let rows = ledger
        .summary(GroupBy::Day, None, None, None)
        .expect("summary");
    let count: u64 = rows.iter().map(|r| r.count).sum();
    assert_eq!(count, entries);
    eprintln!(
        "ledger/summary_1m setup: {entries} entries in {:.1} s",
        start.elapsed().as_secs_f64()
    );

    let mut group = c.benchmark_group("ledger");
    group.bench_function("summary_1m", |b| {
        b.iter(|| {
            let rows = ledger
                .summary(GroupBy::Capsule, None, None, None)
                .expect("summary");
            assert_eq!(rows.len(), 20);
            rows
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = append, summary
}
criterion_main!(benches);
