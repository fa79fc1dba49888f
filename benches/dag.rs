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
//!
//! `dag_engines`: the same small DAGs on the embedded engine and on the
//! Temporal engine (a `temporal server start-dev` and `soma worker`
//! processes started here through the test harness; each run one
//! workflow, started and awaited through the client as `soma dag run
//! --engine temporal` does):
//!
//! - `{embedded,temporal_1w,temporal_2w}/chain_1`, `…/chain_10` — one run
//!   of a chain of 1 and of 10 `echo` nodes (per-node overhead =
//!   (chain_10 − chain_1) / 9);
//! - `…/throughput_20x5` — 20 runs of a 5-node DAG (1 → 3 → 1) started
//!   together, until all have ended (runs/s = 20 / time);
//! - `…/echo_1_1000_1` — the 1 → 1,000 → 1 fan-out (Temporal: 100 calls
//!   at once; the embedded engine: as many as cores).
//! - `temporal_pg_1w/echo_1_1000_1_{children,activities}` — the same
//!   fan-out with all 1,000 calls at once, on a worker and client with a
//!   real PostgreSQL store (payloads by reference): in two child workflows
//!   of 500 calls (`[orchestrator] child_workflow_calls`), and as 1,000
//!   activities of the run's own workflow (`child_workflow_calls = 0`).
//!
//! Skipped when `target/release/soma` or the `temporal` CLI is missing. In
//! test mode (`cargo test --benches`) it runs once, small: one worker,
//! 2 runs, a 1 → 10 → 1 fan-out.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

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
use soma_tests::{
    TestEngine,
    temporal::{TemporalServer, Worker},
};

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
    fan_of(FAN)
}

/// root → an `n`-way `for_each` → sink, all `echo`.
fn fan_of(n: usize) -> String {
    let last = format!("{{{{ nodes.each.output[{}].x }}}}", n - 1);
    json!({
        "name": "fan",
        "capsules": { "echo": soma_capsules::ECHO_COMPONENT },
        "nodes": [
            { "id": "root", "capsule": "echo", "input": { "xs": (0..n).collect::<Vec<_>>() } },
            { "id": "each", "capsule": "echo", "for_each": "{{ nodes.root.output.xs }}",
              "input": { "x": "{{ item }}" } },
            { "id": "sink", "capsule": "echo", "input": { "n": last } },
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

/// A chain of `n` `echo` nodes, each needing the one before.
fn chain_of(n: usize) -> String {
    let nodes: Vec<_> = (0..n)
        .map(|i| {
            let mut node = json!({ "id": format!("n{i}"), "capsule": "echo", "input": { "i": i } });
            if i > 0 {
                node["needs"] = json!([format!("n{}", i - 1)]);
            }
            node
        })
        .collect();
    json!({
        "name": "chain",
        "capsules": { "echo": soma_capsules::ECHO_COMPONENT },
        "nodes": nodes,
        "output": format!("{{{{ nodes.n{}.output }}}}", n - 1),
    })
    .to_string()
}

/// The `soma` binary next to this bench executable (target/release/soma).
fn soma_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("soma");
    path.exists().then_some(path)
}

/// What `dag_engines` measures, by size.
struct Sizes {
    runs: usize,
    chain: usize,
    fan: usize,
    workers: usize,
}

fn engines(c: &mut Criterion) {
    let test_mode = !std::env::args().any(|a| a == "--bench");
    let (Some(soma), Some(_)) = (soma_binary(), soma_tests::temporal::binary()) else {
        eprintln!(
            "dag_engines: skipped: target/release/soma or the `temporal` CLI is missing (`cargo \
             xtask bench` builds the one, `cargo xtask test` installs the other)"
        );
        return;
    };
    let sizes = if test_mode {
        Sizes {
            runs: 2,
            chain: 3,
            fan: 10,
            workers: 1,
        }
    } else {
        Sizes {
            runs: 20,
            chain: 10,
            fan: FAN,
            workers: 2,
        }
    };
    let t = TestEngine::new(soma_tests::config(Allocator::Pooling, Metering::Fuel));
    let small = fan_of(3);
    let chain_1 = chain_of(1);
    let chain_n = chain_of(sizes.chain);
    let fan = fan_of(sizes.fan);
    let mut g = c.benchmark_group("dag_engines");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("embedded/chain_1", |b| b.iter(|| run_dag(&t, &chain_1)));
    g.bench_function(format!("embedded/chain_{}", sizes.chain), |b| {
        b.iter(|| run_dag(&t, &chain_n));
    });
    g.bench_function(format!("embedded/throughput_{}x5", sizes.runs), |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..sizes.runs {
                    s.spawn(|| run_dag(&t, &small));
                }
            });
        });
    });
    g.bench_function(format!("embedded/echo_1_{}_1", sizes.fan), |b| {
        b.iter(|| run_dag(&t, &fan));
    });

    let server = TemporalServer::start();
    let dir = tempfile::tempdir().expect("bench dir");
    let queue = "bench";
    let capsules = Path::new(soma_capsules::ECHO_COMPONENT)
        .parent()
        .expect("capsule dir")
        .to_path_buf();
    let mut endpoint = soma_runtime::temporal::Endpoint::new(server.address());
    endpoint.task_queue = queue.to_owned();
    let client =
        soma_runtime::temporal::client::Blocking::connect(&endpoint).expect("connect to Temporal");
    let next = std::sync::atomic::AtomicUsize::new(0);
    // Start `count` runs of `text` through `client` (each input changed by
    // `tune`), then wait for each to end.
    type Tune<'a> =
        &'a dyn Fn(soma_runtime::temporal::RunInput) -> soma_runtime::temporal::RunInput;
    let runs_on = |client: &soma_runtime::temporal::client::Blocking,
                   text: &str,
                   count: usize,
                   concurrency: Option<usize>,
                   tune: Tune<'_>| {
        let spec = spec::parse(text, "bench.json").expect("spec");
        let loaded = BTreeMap::from([(
            "echo".to_owned(),
            Loaded {
                capsule: t.load(soma_capsules::ECHO_COMPONENT),
                reference: soma_capsules::ECHO_COMPONENT.to_owned(),
            },
        )]);
        let created = scheduler::created(
            &spec,
            "bench",
            &json!({}),
            &loaded,
            &BTreeMap::new(),
            "bench",
        )
        .expect("created");
        let ids: Vec<String> = (0..count)
            .map(|_| {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("bench-{}-{k}", std::process::id())
            })
            .collect();
        for id in &ids {
            let input = tune(soma_runtime::temporal::RunInput::new(
                id.clone(),
                created.clone(),
                t.engine.config(),
                concurrency,
            ));
            client.start(input).expect("start");
        }
        for id in &ids {
            let state = client.result(id).expect("result").state().expect("replay");
            assert!(
                matches!(state.finished, Some((RunStatus::Succeeded, ..))),
                "run {id}: {:?}",
                state.finished
            );
        }
    };
    let runs = |text: &str, count: usize, concurrency: Option<usize>| {
        runs_on(&client, text, count, concurrency, &|i| i);
    };
    let mut workers = Vec::new();
    for w in 1..=sizes.workers {
        let data = tempfile::tempdir().expect("worker data");
        let worker = Worker::start_with(
            &soma,
            data.path(),
            (server.address(), queue),
            &capsules,
            dir.path(),
            soma_tests::temporal::WorkerOptions {
                name: Some(&w.to_string()),
                config: None,
            },
        );
        workers.push((worker, data));
        // The new worker polls before anything is timed.
        let started = Instant::now();
        runs(&chain_1, 1, None);
        eprintln!(
            "dag_engines: worker {w} up, first run in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        let label = format!("temporal_{w}w");
        g.bench_function(format!("{label}/chain_1"), |b| {
            b.iter(|| runs(&chain_1, 1, None));
        });
        g.bench_function(format!("{label}/chain_{}", sizes.chain), |b| {
            b.iter(|| runs(&chain_n, 1, None));
        });
        g.bench_function(format!("{label}/throughput_{}x5", sizes.runs), |b| {
            b.iter(|| runs(&small, sizes.runs, None));
        });
        g.bench_function(format!("{label}/echo_1_{}_1", sizes.fan), |b| {
            b.iter(|| runs(&fan, 1, Some(100)));
        });
    }
    drop(workers);

    // The fan-out with every call at once, on the PostgreSQL store: child
    // workflows against the run's own activities (a queue of its own: a
    // worker without the store cannot read a payload by reference).
    let pg = soma_tests::postgres::Postgres::start();
    let config_path = dir.path().join("pg.toml");
    std::fs::write(
        &config_path,
        format!(
            "[store]\nbackend = \"postgres\"\nurl = \"{}\"\npool_size = 4\n",
            pg.create_database()
        ),
    )
    .expect("config");
    let config = soma_runtime::Config::load(&config_path).expect("config");
    let mut pg_endpoint = soma_runtime::temporal::Endpoint::new(server.address());
    pg_endpoint.task_queue = "bench-pg".to_owned();
    let pg_endpoint = pg_endpoint
        .offloading(&config, None)
        .expect("the PostgreSQL store");
    let pg_client = soma_runtime::temporal::client::Blocking::connect(&pg_endpoint)
        .expect("connect to Temporal");
    let data = tempfile::tempdir().expect("worker data");
    let _worker = Worker::start_with(
        &soma,
        data.path(),
        (server.address(), "bench-pg"),
        &capsules,
        dir.path(),
        soma_tests::temporal::WorkerOptions {
            name: Some("pg"),
            config: Some(&config_path),
        },
    );
    let batch = if test_mode { 5 } else { 500 };
    let children = |i: soma_runtime::temporal::RunInput| soma_runtime::temporal::RunInput {
        offload: true,
        child_batch: Some(batch),
        ..i
    };
    let activities = |i: soma_runtime::temporal::RunInput| soma_runtime::temporal::RunInput {
        offload: true,
        child_batch: Some(0),
        ..i
    };
    runs_on(&pg_client, &chain_1, 1, None, &activities);
    g.bench_function(
        format!("temporal_pg_1w/echo_1_{}_1_children", sizes.fan),
        |b| {
            b.iter(|| runs_on(&pg_client, &fan, 1, Some(sizes.fan), &children));
        },
    );
    g.bench_function(
        format!("temporal_pg_1w/echo_1_{}_1_activities", sizes.fan),
        |b| {
            b.iter(|| runs_on(&pg_client, &fan, 1, Some(sizes.fan), &activities));
        },
    );
    g.finish();
}

criterion_group!(benches, bench, engines);
criterion_main!(benches);
