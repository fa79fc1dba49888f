//! Scheduler benchmarks: DAGs of the trivial `echo` capsule, durable (every
//! transition committed to redb with fsync before it is acted on), on the
//! pooling engine, concurrency = cores.
//!
//! - `dag/echo_10000_mesh`   10,000 nodes: 100 layers × 100, each node
//!   needing two nodes of the layer before (target ≤ 2 s on 2 cores).
//! - `dag/echo_1_1000_1`     one node → a 1,000-way `for_each` → one node.
//! - `dag/raw_calls_10000`   the baseline: the same 10,000 echo calls made
//!   directly on the same engine (no scheduler, no journal, no ledger
//!   write), on as many threads; scheduler overhead = mesh − raw.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use soma_runtime::{
    CallOptions,
    config::{Allocator, Metering},
    dag::{
        history::RunStatus,
        scheduler::{self, Ended, Loaded, Quiet, Settings},
        spec,
    },
};
use soma_tests::TestEngine;

const LAYERS: usize = 100;
const WIDTH: usize = 100;
const FAN: usize = 1000;

fn mesh_spec() -> String {
    let mut nodes = Vec::with_capacity(LAYERS * WIDTH);
    for l in 0..LAYERS {
        for i in 0..WIDTH {
            let needs: Vec<String> = if l == 0 {
                Vec::new()
            } else {
                vec![
                    format!("n{}-{i}", l - 1),
                    format!("n{}-{}", l - 1, (i + 1) % WIDTH),
                ]
            };
            nodes.push(json!({
                "id": format!("n{l}-{i}"),
                "capsule": "echo",
                "input": { "layer": l, "i": i },
                "needs": needs,
            }));
        }
    }
    json!({
        "name": "mesh",
        "capsules": { "echo": soma_capsules::ECHO_COMPONENT },
        "nodes": nodes,
        "output": "{{ nodes.n99-0.output }}",
    })
    .to_string()
}

fn fan_spec() -> String {
    json!({
        "name": "fan",
        "capsules": { "echo": soma_capsules::ECHO_COMPONENT },
        "nodes": [
            { "id": "root", "capsule": "echo", "input": { "xs": (0..FAN).collect::<Vec<_>>() } },
            { "id": "each", "capsule": "echo", "for_each": "{{ nodes.root.output.xs }}",
              "input": { "x": "{{ item }}" } },
            { "id": "sink", "capsule": "echo", "input": { "n": "{{ nodes.each.output[999].x }}" } },
        ],
        "output": "{{ nodes.sink.output.n }}",
    })
    .to_string()
}

/// Parse, create and drive one run to its end.
fn run_dag(t: &TestEngine, text: &str) {
    let spec = spec::parse(text, "bench.json").expect("spec");
    let echo = t.load(soma_capsules::ECHO_COMPONENT);
    let loaded = BTreeMap::from([(
        "echo".to_owned(),
        Loaded {
            capsule: echo.clone(),
            reference: "echo".into(),
        },
    )]);
    let run = scheduler::create(
        &t.engine,
        &spec,
        "bench",
        &json!({}),
        &loaded,
        "bench",
        None,
    )
    .expect("create");
    let capsules = BTreeMap::from([("echo".to_owned(), echo)]);
    let (state, ended) =
        scheduler::drive(&t.engine, &run, &capsules, &Settings::default(), &Quiet).expect("drive");
    assert_eq!(
        ended,
        Ended::Finished(RunStatus::Succeeded),
        "{:?}",
        state.finished
    );
}

fn bench(c: &mut Criterion) {
    let t = TestEngine::new(soma_tests::config(Allocator::Pooling, Metering::Fuel));
    let mut g = c.benchmark_group("dag");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    let mesh = mesh_spec();
    g.bench_function("echo_10000_mesh", |b| b.iter(|| run_dag(&t, &mesh)));
    let fan = fan_spec();
    g.bench_function("echo_1_1000_1", |b| b.iter(|| run_dag(&t, &fan)));
    let echo = t.load(soma_capsules::ECHO_COMPONENT);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    g.bench_function("raw_calls_10000", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for k in 0..threads {
                    let (t, echo) = (&t, Arc::clone(&echo));
                    s.spawn(move || {
                        let mut options = CallOptions::for_capsule(&t.engine, &echo);
                        // No ledger write: the bare calls.
                        options.defer_charge = true;
                        for i in (k..LAYERS * WIDTH).step_by(threads) {
                            let input = json!({ "layer": i / WIDTH, "i": i % WIDTH }).to_string();
                            let out = t.engine.call(&echo, &input, &options);
                            assert!(out.result.is_ok());
                        }
                    });
                }
            });
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
