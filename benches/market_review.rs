//! The marketplace review of the calculator capsule (target: ≤ 10 s on the
//! 2-core machine), with its floor beside it in the same group:
//!
//! - `market_review/calculator`  the whole review: secret scan, bounds,
//!   compile (fresh, no AOT cache), describe(), least privilege, two
//!   examples under ¼ of the limits with schema checks, three hostile
//!   inputs — on a throwaway engine, as a submission gets it.
//! - `market_review/raw_compile`  raw wasmtime `Component::new` of the same
//!   bytes (fuel + epoch on): the part of the review no check can avoid.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use soma_runtime::{
    Config,
    market::review::{ReviewInput, SignatureOutcome, review},
};

fn bench(c: &mut Criterion) {
    let bytes = std::fs::read(soma_capsules::CALCULATOR_COMPONENT).expect("calculator");
    let input = ReviewInput {
        license: Some("Apache-2.0".into()),
        readme: Some("# calculator\n\nEvaluates arithmetic expressions.".into()),
        examples: vec![json!({"expr": "2*(3+4)^2"}), json!({"expr": "1/4 + 3"})],
        signature: SignatureOutcome::Verified {
            key: "bench".into(),
        },
        ..ReviewInput::default()
    };
    let config = Config::default();
    let report = review(&bytes, &input, &config).expect("review");
    assert!(report.approved(), "{:#?}", report.evidence);
    eprintln!(
        "calculator review: {} ms (one run before sampling)",
        report.elapsed_ms
    );

    let mut g = c.benchmark_group("market_review");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("calculator", |b| {
        b.iter(|| review(&bytes, &input, &config).expect("review"))
    });
    let mut raw = wasmtime::Config::new();
    raw.wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true);
    let engine = wasmtime::Engine::new(&raw).expect("engine");
    g.bench_function("raw_compile", |b| {
        b.iter(|| wasmtime::component::Component::new(&engine, &bytes).expect("compile"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
