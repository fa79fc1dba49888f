//! Supply-chain benchmarks against a real local registry (docker-registry on
//! loopback), for a ~2 MB component (the calculator plus a 1.8 MB custom
//! section, so the bytes on the wire are realistic):
//!
//! - `pull/cold_2mb`  empty node: resolve tag → verify signature → download
//!   → sha256 → write to the cache → compile → describe().
//! - `pull/warm_2mb`  same node again (fresh engine): resolve tag → verify
//!   signature → layer from the cache → AOT artifact from the cache.
//! - `pull/offline_by_digest_2mb`  a pinned `@sha256:` reference served from
//!   the cache with no network at all, plus the AOT load.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use soma_runtime::{
    Config, Engine,
    config::Allocator,
    oci::{self, Auth, PullOptions, PushOptions, Reference},
    store::DataDir,
    verify::{KeyPair, TrustPolicy},
};
use soma_tests::registry::Registry;

/// `bytes` plus a custom section of `extra` bytes (valid anywhere in a component).
fn with_custom_section(mut bytes: Vec<u8>, extra: usize) -> Vec<u8> {
    let name = b"soma-bench-padding";
    let mut body = Vec::with_capacity(extra + name.len() + 1);
    body.push(name.len() as u8);
    body.extend_from_slice(name);
    body.extend((0..extra).map(|i| (i * 31 % 251) as u8));
    bytes.push(0); // custom section id
    let mut len = body.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            bytes.push(byte);
            break;
        }
        bytes.push(byte | 0x80);
    }
    bytes.extend_from_slice(&body);
    bytes
}

fn engine(data: &DataDir) -> Engine {
    let mut config = Config::default();
    config.engine.allocator = Allocator::OnDemand;
    Engine::new(config, data.clone()).expect("engine")
}

/// Pull `reference` into `data` and load it in a fresh engine; returns the
/// capsule's digest to keep the work observable.
fn pull_and_load(
    data: &DataDir,
    reference: &Reference,
    options: &PullOptions,
) -> soma_runtime::Digest {
    let pulled = oci::pull(data, reference, &Auth::Anonymous, options).expect("pull");
    let bytes = std::fs::read(&pulled.component).expect("read cached component");
    let engine = engine(data);
    engine
        .load(&bytes, &reference.to_string())
        .expect("load")
        .digest()
}

fn pull(c: &mut Criterion) {
    let registry = Registry::start();
    let base = std::fs::read(soma_capsules::CALCULATOR_COMPONENT).expect("calculator");
    let bytes = with_custom_section(base, 1_800_000);
    let tag =
        Reference::parse(&format!("{}/bench/calculator:2mb", registry.host())).expect("reference");
    let setup = tempfile::tempdir().expect("tempdir");
    let digest = oci::push(
        &engine(&DataDir::new(setup.path())),
        &bytes,
        &tag,
        &Auth::Anonymous,
        &PushOptions::default(),
    )
    .expect("push");
    let key = KeyPair::generate();
    oci::sign(&tag, &Auth::Anonymous, &key, &Default::default()).expect("sign");
    let options = PullOptions {
        trust: TrustPolicy::keys(vec![key.public()]),
        ..PullOptions::default()
    };
    eprintln!("component: {} bytes, manifest {digest}", bytes.len());

    let mut g = c.benchmark_group("pull");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("cold_2mb", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("tempdir");
                let data = DataDir::new(dir.path());
                let start = Instant::now();
                pull_and_load(&data, &tag, &options);
                total += start.elapsed();
            }
            total
        })
    });
    let warm = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(warm.path());
    pull_and_load(&data, &tag, &options);
    g.bench_function("warm_2mb", |b| {
        b.iter(|| pull_and_load(&data, &tag, &options))
    });
    let pinned = tag.with_digest(digest);
    g.bench_function("offline_by_digest_2mb", |b| {
        b.iter(|| pull_and_load(&data, &pinned, &options))
    });
    g.finish();
}

criterion_group!(benches, pull);
criterion_main!(benches);
