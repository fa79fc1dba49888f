//! Per-call benchmarks, each with raw wasmtime beside Soma in the same group.
//!
//! - `call/echo`        warm call of the `echo` capsule: Soma vs raw wasmtime
//!   in its best configuration (tuned pool, fuel + epoch, fresh Store +
//!   WasiCtx + limits per call, bindgen'd typed export) on the same component;
//!   `soma_price_book`: the same free call with the marketplace's price book
//!   installed (another capsule priced), i.e. what pricing costs a free call.
//! - `throughput/echo`  the same with 2 threads; reported as calls/s.
//! - `fuel/<kernel>`    a CPU kernel with fuel + epoch vs epoch only.
//! - `cold_start/soma_run` spawn → exit of `soma run echo.wasm` from the AOT cache.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use soma_host_api::bindings::v0_2::CapsulePre;
use soma_runtime::{
    CallOptions, Capsule, Config, Engine,
    config::{Allocator, Metering},
    store::DataDir,
};
use wasmtime::{
    Enabled, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
    component::{Component, Linker, ResourceTable},
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

const FUEL: u64 = 10_000_000_000;

/// Soma with the daemon's configuration (pooling, fuel + epoch). The
/// per-call ledger charge is off here so the comparison with raw wasmtime is
/// the sandbox alone; `call/echo/soma_metered` shows it on.
fn soma(metering: Metering) -> (Engine, tempfile::TempDir) {
    soma_with(metering, false)
}

fn soma_with(metering: Metering, meter_calls: bool) -> (Engine, tempfile::TempDir) {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.engine.allocator = Allocator::Pooling;
    config.engine.metering = metering;
    config.ledger.meter_calls = meter_calls;
    let engine = Engine::new(config, DataDir::new(data.path())).expect("engine");
    (engine, data)
}

fn load(engine: &Engine, path: &str) -> (Arc<Capsule>, CallOptions) {
    let capsule = engine.load_file(Path::new(path)).expect("load");
    let options = CallOptions::for_capsule(engine, &capsule);
    (capsule, options)
}

/// Raw wasmtime doing Soma's per-call job in its best configuration.
struct Raw {
    engine: wasmtime::Engine,
    pre: CapsulePre<RawHost>,
}

struct RawHost {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
}

impl WasiView for RawHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Raw {
    fn new(path: &str) -> Self {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(1000)
            .total_core_instances(4000)
            .total_memories(2000)
            .total_tables(4000)
            .max_memory_size(1 << 30)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(2 << 20)
            .pagemap_scan(Enabled::Auto);
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = wasmtime::Engine::new(&config).expect("raw engine");
        let weak = engine.weak();
        std::thread::spawn(move || {
            while let Some(e) = weak.upgrade() {
                e.increment_epoch();
                drop(e);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let mut linker: Linker<RawHost> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("wasi");
        linker.instance("soma:capsule/types@0.1.0").expect("types");
        let component = Component::from_file(&engine, path).expect("compile");
        let pre =
            CapsulePre::new(linker.instantiate_pre(&component).expect("link")).expect("exports");
        Self { engine, pre }
    }

    fn call(&self, input: &str) -> String {
        let host = RawHost {
            wasi: WasiCtxBuilder::new().build(),
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(128 << 20)
                .instances(64)
                .tables(32)
                .memories(8)
                .build(),
        };
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limits);
        store.set_fuel(FUEL).expect("fuel");
        store.set_epoch_deadline(10_000);
        let capsule = self.pre.instantiate(&mut store).expect("instantiate");
        capsule
            .call_run(&mut store, input)
            .expect("call")
            .expect("ok")
    }
}

/// Publish `component` as a per-call priced marketplace version, writing
/// the market store directly (no registry: only the price book matters).
fn publish_priced(engine: &Engine, component: &str) {
    use soma_runtime::market::{
        listing::Listing,
        store::{Market, NewSubmission, SubmissionState},
    };
    let bytes = std::fs::read(component).expect("component");
    let digest = soma_runtime::Digest::of(&bytes);
    let listing = Listing::parse(
        "name = \"acme/priced\"\nversion = \"1.0.0\"\nsummary = \"s\"\nlicense = \"MIT\"\n\
         [price]\nmodel = \"per-call\"\nmicros = 1000\n",
        Path::new("listing.toml"),
    )
    .expect("listing");
    let id = listing.id();
    let market = Market::new(engine.data().database().clone());
    market
        .submit(NewSubmission {
            listing,
            repository: "127.0.0.1:1/acme/priced".into(),
            digest,
            component: digest,
            size: bytes.len() as u64,
        })
        .expect("submit");
    market
        .record_review(&id, true, Vec::new(), serde_json::Value::Null)
        .expect("review");
    market
        .transition(&id, SubmissionState::Published, None, |_| {})
        .expect("publish");
}

fn warm_call(c: &mut Criterion) {
    let (engine, _data) = soma(Metering::Fuel);
    let (echo, options) = load(&engine, soma_capsules::ECHO_COMPONENT);
    let raw = Raw::new(soma_capsules::ECHO_COMPONENT);
    assert_eq!(raw.call("x"), "x");
    assert_eq!(engine.call(&echo, "x", &options).result.as_deref(), Ok("x"));

    let (metered, _data2) = soma_with(Metering::Fuel, true);
    let (echo_m, _) = load(&metered, soma_capsules::ECHO_COMPONENT);

    let (priced, _data3) = soma(Metering::Fuel);
    publish_priced(&priced, soma_capsules::CALCULATOR_COMPONENT);
    soma_runtime::market::pricing::PriceBook::install(&priced);
    let (echo_p, options_p) = load(&priced, soma_capsules::ECHO_COMPONENT);

    let mut g = c.benchmark_group("call/echo");
    g.bench_function("raw_wasmtime", |b| b.iter(|| raw.call("hello")));
    g.bench_function("soma", |b| b.iter(|| engine.call(&echo, "hello", &options)));
    g.bench_function("soma_price_book", |b| {
        b.iter(|| priced.call(&echo_p, "hello", &options_p))
    });
    // Every call durably charged to the ledger (fuel + wall time, group
    // commit): each call is its own run, so nothing is a replay.
    g.bench_function("soma_metered", |b| {
        b.iter(|| {
            let options = CallOptions::for_capsule(&metered, &echo_m);
            metered.call(&echo_m, "hello", &options)
        })
    });
    g.finish();
}

/// Per-call wall time with `threads` threads calling concurrently.
fn concurrent(iters: u64, threads: u64, call: &(dyn Fn() + Sync)) -> Duration {
    let per_thread = iters.div_ceil(threads);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..per_thread {
                    call();
                }
            });
        }
    });
    start.elapsed()
}

fn throughput(c: &mut Criterion) {
    let (engine, _data) = soma(Metering::Fuel);
    let (echo, options) = load(&engine, soma_capsules::ECHO_COMPONENT);
    let raw = Raw::new(soma_capsules::ECHO_COMPONENT);

    let mut g = c.benchmark_group("throughput/echo");
    g.throughput(Throughput::Elements(1));
    for threads in [1u64, 2] {
        g.bench_with_input(
            BenchmarkId::new("raw_wasmtime", threads),
            &threads,
            |b, &t| b.iter_custom(|iters| concurrent(iters, t, &|| drop(raw.call("hello")))),
        );
        g.bench_with_input(BenchmarkId::new("soma", threads), &threads, |b, &t| {
            b.iter_custom(|iters| {
                concurrent(iters, t, &|| drop(engine.call(&echo, "hello", &options)))
            })
        });
    }
    g.finish();
}

fn fuel_overhead(c: &mut Criterion) {
    let (fuel, _d1) = soma(Metering::Fuel);
    let (epoch, _d2) = soma(Metering::EpochOnly);
    let (kf, of) = load(&fuel, soma_capsules::KERNELS_COMPONENT);
    let (ke, oe) = load(&epoch, soma_capsules::KERNELS_COMPONENT);
    for (kernel, input) in [
        ("loop", "loop:2000000"),
        ("arith", "arith:500000"),
        ("recursion", "recursion:25"),
    ] {
        let a = fuel.call(&kf, input, &of).result.expect("fuel run");
        let b = epoch.call(&ke, input, &oe).result.expect("epoch run");
        assert_eq!(a, b, "same result with and without fuel");
        let mut g = c.benchmark_group(format!("fuel/{kernel}"));
        g.bench_function("epoch_only", |b| b.iter(|| epoch.call(&ke, input, &oe)));
        g.bench_function("fuel_and_epoch", |b| b.iter(|| fuel.call(&kf, input, &of)));
        g.finish();
    }
}

/// The `soma` binary next to this bench executable (target/release/soma).
fn soma_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("soma");
    path.exists().then_some(path)
}

fn cold_start(c: &mut Criterion) {
    let Some(soma) = soma_binary() else {
        eprintln!(
            "cold_start: target/release/soma not built; run `cargo xtask bench` (builds it first)"
        );
        return;
    };
    let data = tempfile::tempdir().expect("tempdir");
    let run = || {
        let out = Command::new(&soma)
            .args([
                "run",
                soma_capsules::ECHO_COMPONENT,
                "--input",
                "hello",
                "--data",
            ])
            .arg(data.path())
            .output()
            .expect("spawn soma");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(); // fills the AOT cache
    let mut g = c.benchmark_group("cold_start");
    g.bench_function("true", |b| {
        b.iter(|| Command::new("true").status().expect("spawn true"))
    });
    g.bench_function("soma_run_aot", |b| b.iter(run));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = warm_call, throughput, fuel_overhead, cold_start
}
criterion_main!(benches);
