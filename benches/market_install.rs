//! Marketplace install against a warm local registry (docker-registry on
//! loopback): the calculator, submitted by an author, reviewed, published
//! (countersigned by the marketplace key), then installed.
//!
//! - `market_install/install`  `flow::install`: resolve `acme/calc@^1` in
//!   the store (newest published match), pull by the pinned digest, verify
//!   the author's *and* the marketplace's signatures (`all-of`), download
//!   the layer into an empty blob cache, write the lockfile pin.
//! - `market_install/raw_pull_one_key`  the reference: `oci::pull` of the
//!   same pinned artifact into an empty blob cache under a single-key
//!   policy (the author's), no store, no lockfile.
//! - `market_install/install_cached`  `flow::install` again into the same
//!   blob cache: the pinned digest is served from the cache (its recorded
//!   admission satisfies all-of), no network.
//!
//! Each fresh-cache iteration creates its data directory (both sides pay
//! that the same way).

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use soma_runtime::{
    Config, Engine,
    config::Allocator,
    market::{
        flow::{self, Access, Artifact},
        listing::Listing,
        store::Market,
    },
    oci::{self, Auth, PullOptions, Reference},
    store::DataDir,
    verify::{KeyPair, TrustPolicy},
};
use soma_tests::registry::Registry;

const LISTING: &str = r##"name = "acme/calc"
version = "1.0.0"
summary = "Evaluate arithmetic expressions."
license = "MIT"
readme = { markdown = "# calc" }

[[examples]]
input = { expr = "6*7" }
"##;

fn install(c: &mut Criterion) {
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let author = KeyPair::generate();
    let market_key = KeyPair::generate();
    let (_, market_pub) = market_key
        .save(&root.join("market"), b"bench")
        .expect("save key");
    let mut config = Config::default();
    config.engine.allocator = Allocator::OnDemand;
    config.market.public_key = Some(market_pub);
    let node = DataDir::new(root.join("node"));
    let engine = Engine::new(config.clone(), node.clone()).expect("engine");
    let market = Market::new(node.database().clone());
    market
        .register_author("acme", &author.public())
        .expect("register");
    let listing_path = root.join("listing.toml");
    std::fs::write(&listing_path, LISTING).expect("listing");
    let listing = Listing::load(&listing_path).expect("listing");
    let access = Access::default();
    let submitted = flow::submit(
        &engine,
        &market,
        listing,
        Artifact::File {
            path: std::path::Path::new(soma_capsules::CALCULATOR_COMPONENT),
            registry: registry.host(),
        },
        &author,
        &access,
    )
    .expect("submit");
    let id = submitted.submission.id();
    market
        .record_review(&id, true, vec![], serde_json::json!({}))
        .expect("review");
    let published = flow::publish(&market, &id, &market_key, &access).expect("publish");
    let pinned = Reference::parse(&published.pinned_reference()).expect("reference");
    let flow::Selector::Range(range) = flow::parse_name("acme/calc@^1").expect("name").1 else {
        unreachable!("a range")
    };
    let raw_options = PullOptions {
        trust: TrustPolicy::keys(vec![author.public()]),
        ..PullOptions::from_config(&config)
    };

    let mut g = c.benchmark_group("market_install");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("install", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let fresh = tempfile::tempdir().expect("tempdir");
                let data = DataDir::new(fresh.path());
                let lock = fresh.path().join("soma.lock");
                let start = Instant::now();
                let installed =
                    flow::install(&data, &config, &market, "acme/calc", &range, &lock, &access)
                        .expect("install");
                total += start.elapsed();
                assert!(!installed.cached);
            }
            total
        })
    });
    g.bench_function("raw_pull_one_key", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let fresh = tempfile::tempdir().expect("tempdir");
                let data = DataDir::new(fresh.path());
                let start = Instant::now();
                let pulled =
                    oci::pull(&data, &pinned, &Auth::Anonymous, &raw_options).expect("pull");
                total += start.elapsed();
                assert!(!pulled.cached);
            }
            total
        })
    });
    let warm = tempfile::tempdir().expect("tempdir");
    let data = DataDir::new(warm.path());
    let lock = warm.path().join("soma.lock");
    flow::install(&data, &config, &market, "acme/calc", &range, &lock, &access).expect("install");
    g.bench_function("install_cached", |b| {
        b.iter(|| {
            flow::install(&data, &config, &market, "acme/calc", &range, &lock, &access)
                .expect("install")
        })
    });
    g.finish();
}

criterion_group!(benches, install);
criterion_main!(benches);
