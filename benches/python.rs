//! Python capsules (issue 19): what CPython in a component costs next to
//! the Rust `echo`, on the same engine configuration in the same run.
//!
//! Printed once before the criterion groups (one line per figure):
//! component size (componentize-py's output and stripped), the first
//! compile (Cranelift, into an empty AOT cache), the AOT load (a new engine
//! reading the cached artifact), warm call p50/p99 over 2,000 calls, calls/s
//! on 2 threads, and fuel per call.
//!
//! Criterion groups: `python/call` (warm call, `echo` vs `py_echo`, and
//! `py_echo` with `[engine] keep_resident_kb = 16384`) and
//! `python/aot_load` (load from the AOT cache). In test mode (`cargo test
//! --benches`) each is run once and the printed figures use 50 calls.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use soma_runtime::{
    CallOptions, Capsule, Config, Engine,
    config::{Allocator, Metering},
    store::DataDir,
};

/// The engine every figure uses: the daemon's configuration (pooling,
/// fuel + epoch), the AOT cache in `aot`, the ledger charge off (the
/// sandbox alone, as in `benches/call.rs`).
fn new_engine(data: &Path, aot: &Path) -> Engine {
    new_engine_keeping(data, aot, Config::default().engine.keep_resident_kb)
}

/// [`new_engine`] with `[engine] keep_resident_kb` set: how much of each
/// pool slot's memory is reset in place (dirty pages copied back from the
/// image, found with PAGEMAP_SCAN) instead of being released to the
/// kernel and faulted in again by the next call.
fn new_engine_keeping(data: &Path, aot: &Path, keep_resident_kb: usize) -> Engine {
    let mut config = Config::default();
    config.engine.keep_resident_kb = keep_resident_kb;
    config.engine.allocator = Allocator::Pooling;
    config.engine.metering = Metering::Fuel;
    config.engine.aot_dir = Some(aot.to_path_buf());
    config.ledger.meter_calls = false;
    Engine::new(config, DataDir::new(data)).expect("engine")
}

fn load(engine: &Engine, path: &str) -> (Arc<Capsule>, CallOptions) {
    let capsule = engine.load_file(Path::new(path)).expect("load");
    let options = CallOptions::for_capsule(engine, &capsule);
    (capsule, options)
}

/// `cargo bench` passes `--bench`; without it (`cargo test --benches`)
/// criterion runs each bench once, and so do the printed figures, briefly.
fn test_mode() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

fn file_len(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Calls per second with 2 threads calling `n` times each.
fn calls_per_second(engine: &Engine, capsule: &Arc<Capsule>, options: &CallOptions, n: u32) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..n {
                    let out = engine.call(capsule, "hello", options);
                    assert_eq!(out.result.as_deref(), Ok("hello"));
                }
            });
        }
    });
    f64::from(2 * n) / start.elapsed().as_secs_f64()
}

/// One capsule's figures, printed as one line each.
fn report(label: &str, path: &str, calls: u32) {
    let raw = PathBuf::from(path).with_extension("raw.wasm");
    let size = file_len(Path::new(path)).unwrap_or(0);
    match file_len(&raw) {
        Some(raw) => println!(
            "python/{label}: component {:.2} MB stripped, {:.2} MB as componentize-py wrote it",
            size as f64 / 1e6,
            raw as f64 / 1e6
        ),
        None => println!("python/{label}: component {:.2} MB", size as f64 / 1e6),
    }

    let data = tempfile::tempdir().expect("tempdir");
    let aot = data.path().join("aot");
    let first = new_engine(&data.path().join("a"), &aot);
    let start = Instant::now();
    drop(load(&first, path));
    println!(
        "python/{label}: first compile (empty AOT cache) {:.2} s",
        start.elapsed().as_secs_f64()
    );
    // A new engine (as a restarted daemon) on the same cache.
    let second = new_engine(&data.path().join("b"), &aot);
    let start = Instant::now();
    let (capsule, options) = load(&second, path);
    println!(
        "python/{label}: AOT load {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );

    let first_call = second.call(&capsule, "hello", &options);
    assert_eq!(first_call.result.as_deref(), Ok("hello"));
    let mut times = Vec::with_capacity(calls as usize);
    let mut fuel = 0;
    for _ in 0..calls {
        let start = Instant::now();
        let out = second.call(&capsule, "hello", &options);
        times.push(start.elapsed());
        assert_eq!(out.result.as_deref(), Ok("hello"));
        fuel = out.usage.fuel_consumed.unwrap_or(0);
    }
    times.sort();
    println!(
        "python/{label}: warm call p50 {:.1} µs, p99 {:.1} µs ({calls} calls); fuel per call {fuel}; peak memory {:.1} MB",
        percentile(&times, 0.5).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
        first_call.usage.peak_memory_bytes as f64 / 1e6
    );
    println!(
        "python/{label}: {:.0} calls/s on 2 threads",
        calls_per_second(&second, &capsule, &options, calls)
    );
}

fn figures(c: &mut Criterion) {
    let calls = if test_mode() { 50 } else { 2_000 };
    report("echo", soma_capsules::ECHO_COMPONENT, calls);
    report("py_echo", soma_capsules::PY_ECHO_COMPONENT, calls);

    let data = tempfile::tempdir().expect("tempdir");
    let aot = data.path().join("aot");
    let engine = new_engine(&data.path().join("d"), &aot);
    let (echo, echo_options) = load(&engine, soma_capsules::ECHO_COMPONENT);
    let (py, py_options) = load(&engine, soma_capsules::PY_ECHO_COMPONENT);

    // The same with 16 MiB kept resident per slot (CPython's image is ~14 MB).
    let roomy = new_engine_keeping(&data.path().join("k"), &aot, 16 * 1024);
    let (py_k, py_k_options) = load(&roomy, soma_capsules::PY_ECHO_COMPONENT);

    let mut g = c.benchmark_group("python/call");
    g.bench_function("echo", |b| {
        b.iter(|| engine.call(&echo, "hello", &echo_options))
    });
    g.bench_function("py_echo", |b| {
        b.iter(|| engine.call(&py, "hello", &py_options))
    });
    g.bench_function("py_echo_keep_resident_16mib", |b| {
        b.iter(|| roomy.call(&py_k, "hello", &py_k_options))
    });
    g.finish();

    // Each iteration a new engine reading the cached artifact, as a
    // daemon's first call of a capsule after a restart.
    let mut g = c.benchmark_group("python/aot_load");
    g.sample_size(10);
    for (label, path) in [
        ("echo", soma_capsules::ECHO_COMPONENT),
        ("py_echo", soma_capsules::PY_ECHO_COMPONENT),
    ] {
        g.bench_function(label, |b| {
            b.iter_with_setup(
                || {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let engine = new_engine(dir.path(), &aot);
                    (dir, engine)
                },
                |(dir, engine)| {
                    drop(load(&engine, path));
                    (dir, engine)
                },
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = figures
}
criterion_main!(benches);
