//! Marketplace search over 10,000 generated listings (issue 14, target:
//! p99 ≤ 10 ms for typical queries).
//!
//! - `market_search/build_10k`        the inverted index from 10,000 docs
//!   (`SearchIndex::rebuild` in memory).
//! - `market_search/open_10k`         `open_read_only` of a persisted index
//!   directory of 10,000 listings (read + parse + build).
//! - `market_search/<query>`          one query, per kind: one word, two
//!   words, a typo, a prefix, facet only, text + two facets.
//!
//! Criterion reports means; the target is a percentile, so before
//! the criterion groups each query is also timed one call at a time
//! (interleaved, 1,000 rounds; 50 in `--test` mode) and p50/p99 per query
//! and over all are printed.
//!
//! The corpus comes from `soma_tests::market_corpus` (deterministic). Run
//! as a test (`cargo test --benches`, no `--bench`) it holds 1,000
//! listings: the same code, a tenth of the setup (25 s of the suite at the
//! `ci` profile's opt-level).

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use soma_runtime::market::search::{Filters, PriceModel, SearchDoc, SearchIndex, SearchQuery};

const LISTINGS: usize = 10_000;
/// [`LISTINGS`] when run as a test.
const LISTINGS_TEST: usize = 1_000;
const SEED: u64 = 14;
const TARGET_P99: Duration = Duration::from_millis(10);

fn corpus(listings: usize) -> Vec<SearchDoc> {
    soma_tests::market_corpus::listings(listings, SEED)
}

/// The typical queries: (name, query).
fn queries() -> Vec<(&'static str, SearchQuery)> {
    vec![
        ("one_word", SearchQuery::text("summarize")),
        ("two_words", SearchQuery::text("translate invoice")),
        ("typo", SearchQuery::text("sumarize contrcat")),
        ("prefix", SearchQuery::text("tok")),
        (
            "facet_only",
            SearchQuery {
                filters: Filters {
                    category: vec!["finance".into()],
                    ..Filters::default()
                },
                ..SearchQuery::default()
            },
        ),
        (
            "text_two_facets",
            SearchQuery {
                text: "extract pdf".into(),
                filters: Filters {
                    price: vec![PriceModel::Free],
                    capability: vec!["llm".into()],
                    ..Filters::default()
                },
                ..SearchQuery::default()
            },
        ),
    ]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn latencies(index: &SearchIndex, listings: usize, rounds: usize) {
    let queries = queries();
    let mut per: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); queries.len()];
    for _ in 0..rounds {
        for (i, (_, q)) in queries.iter().enumerate() {
            let start = Instant::now();
            let answer = index.search(q).expect("search");
            per[i].push(start.elapsed());
            std::hint::black_box(answer);
        }
    }
    let mut all = Vec::new();
    for ((name, q), times) in queries.iter().zip(&mut per) {
        times.sort();
        let total = index.search(q).expect("search").total;
        eprintln!(
            "market_search/{name:<16} p50 {:>9.3?}  p99 {:>9.3?}  ({total} matches)",
            percentile(times, 0.5),
            percentile(times, 0.99),
        );
        all.extend_from_slice(times);
    }
    all.sort();
    let p99 = percentile(&all, 0.99);
    eprintln!(
        "market_search/all              p50 {:>9.3?}  p99 {:>9.3?}  over {} queries, {listings} listings: target p99 ≤ {TARGET_P99:?} {}",
        percentile(&all, 0.5),
        p99,
        all.len(),
        if p99 <= TARGET_P99 { "met" } else { "NOT met" },
    );
}

fn bench(c: &mut Criterion) {
    let test_mode = !std::env::args().any(|a| a == "--bench");
    let listings = if test_mode { LISTINGS_TEST } else { LISTINGS };
    let docs = corpus(listings);
    let start = Instant::now();
    let mut index = SearchIndex::new();
    index.rebuild(docs.clone()).expect("build");
    eprintln!(
        "market_search: {listings} listings indexed in {:.0} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(index.shown(), listings);

    let dir = tempfile::tempdir().expect("tempdir");
    let start = Instant::now();
    {
        let mut on_disk = SearchIndex::open(dir.path()).expect("open");
        on_disk.rebuild(docs.clone()).expect("persist");
    }
    eprintln!(
        "market_search: {listings} listings persisted (rebuild into a directory) in {:.0} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );

    latencies(&index, listings, if test_mode { 50 } else { 1000 });

    let mut group = c.benchmark_group("market_search");
    group.sample_size(10);
    group.bench_function("build_10k", |b| {
        b.iter_batched(
            || docs.clone(),
            |docs| {
                let mut index = SearchIndex::new();
                index.rebuild(docs).expect("build");
                index
            },
            criterion::BatchSize::LargeInput,
        );
    });
    group.bench_function("open_10k", |b| {
        b.iter(|| SearchIndex::open_read_only(dir.path()).expect("open"));
    });
    group.finish();

    let mut group = c.benchmark_group("market_search");
    for (name, q) in queries() {
        group.bench_function(name, |b| b.iter(|| index.search(&q).expect("search")));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = bench
}
criterion_main!(benches);
