//! One conformance suite, two engines: each DAG spec here runs through
//! `soma dag run` on the embedded engine and on the Temporal engine (a real
//! `temporal server start-dev` started by the harness, a real `soma worker`
//! process), and both must give the same outputs, statuses, attempts and
//! ledger charges.

use super::common::{capsule_dir, json_of, soma, text};
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::{Value, json};
use soma_tests::temporal::{TemporalServer, Worker, WorkerOptions};

/// A spec file whose `capsules:` names the built capsules by path.
fn spec_file(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let capsules = [
        ("echo", soma_capsules::ECHO_COMPONENT),
        ("calculator", soma_capsules::CALCULATOR_COMPONENT),
        ("flaky", soma_capsules::FLAKY_COMPONENT),
        ("loop", soma_capsules::HOSTILE_LOOP_COMPONENT),
        ("trap", soma_capsules::HOSTILE_TRAP_COMPONENT),
        ("reviewer", soma_capsules::KAMACHIQ_REVIEWER_COMPONENT),
        ("notebook", soma_capsules::NOTEBOOK_COMPONENT),
        ("summarize", soma_capsules::SUMMARIZE_COMPONENT),
    ];
    let mut text = String::from("capsules:\n");
    for (alias, path) in capsules {
        text.push_str(&format!("  {alias}: {path}\n"));
    }
    text.push_str(yaml);
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).expect("write spec");
    path
}

/// A Temporal dev server, a worker polling it, and the worker's data
/// directory (its ledger). Everything stops on drop.
struct Cluster {
    server: TemporalServer,
    worker: Option<Worker>,
    worker_data: tempfile::TempDir,
    queue: String,
    _logs: tempfile::TempDir,
}

impl Cluster {
    fn start(queue: &str) -> Self {
        Self::start_with(queue, None)
    }

    /// [`Cluster::start`] with the worker started with `--config config`.
    fn start_with(queue: &str, config: Option<&Path>) -> Self {
        let server = TemporalServer::start();
        let worker_data = tempfile::tempdir().expect("worker data");
        let logs = tempfile::tempdir().expect("logs");
        let worker = Worker::start_with(
            Path::new(env!("CARGO_BIN_EXE_soma")),
            worker_data.path(),
            (server.address(), queue),
            &capsule_dir(),
            logs.path(),
            WorkerOptions {
                config,
                ..WorkerOptions::default()
            },
        );
        Self {
            server,
            worker: Some(worker),
            worker_data,
            queue: queue.to_owned(),
            _logs: logs,
        }
    }

    /// `soma dag run SPEC --engine temporal …` from a data directory of its own.
    fn dag_run(&self, data: &Path, spec: &Path, extra: &[&str]) -> Output {
        let mut c = soma(data);
        c.args(["dag", "run"])
            .arg(spec)
            .arg("--capsule-path")
            .arg(capsule_dir())
            .args(["--json", "--engine", "temporal", "--temporal"])
            .arg(self.server.address())
            .args(["--task-queue", &self.queue])
            .args(extra);
        c.output().expect("spawn soma dag run")
    }

    /// `soma dag run SPEC --json --run-id RUN --engine temporal …` in the
    /// background, from data directory `data` (output piped).
    fn spawn_run(&self, data: &Path, spec: &Path, run: &str) -> std::process::Child {
        soma(data)
            .args(["dag", "run"])
            .arg(spec)
            .args([
                "--json",
                "--run-id",
                run,
                "--engine",
                "temporal",
                "--temporal",
            ])
            .arg(self.server.address())
            .args(["--task-queue", &self.queue])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn soma dag run")
    }

    /// Wait (60 s at most) until run `run`'s first node awaits a verdict,
    /// asking with `soma dag status --engine temporal`.
    fn wait_awaiting(&self, data: &Path, run: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let status = soma(data)
                .args([
                    "dag",
                    "status",
                    run,
                    "--json",
                    "--engine",
                    "temporal",
                    "--temporal",
                ])
                .arg(self.server.address())
                .output()
                .expect("status");
            if status.status.success()
                && json_of(&status)["timeline"][0]["status"] == "awaiting-approval"
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{run}: the first node never awaited approval"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// An `[orchestrator]` table for a daemon on this cluster.
    fn orchestrator(&self) -> String {
        format!(
            "[orchestrator]\nengine = \"temporal\"\naddress = \"{}\"\ntask_queue = \"{}\"\n",
            self.server.address(),
            self.queue
        )
    }

    /// The worker's and the server's logs.
    fn explain_log(&self) -> String {
        format!(
            "worker: {}\nserver: {}",
            self.worker.as_ref().map(Worker::log).unwrap_or_default(),
            self.server.log()
        )
    }

    /// Why a run failed, with the worker's and the server's logs.
    fn explain(&self, out: &Output) -> String {
        format!(
            "stderr: {}\nworker: {}\nserver: {}",
            text(&out.stderr),
            self.worker.as_ref().map(Worker::log).unwrap_or_default(),
            self.server.log()
        )
    }
}

impl Cluster {
    /// Stop the worker (it holds its database open), then check that its
    /// ledger passes `soma ledger check` and holds, per run, exactly the
    /// fuel entries (node, attempt, quantity) given.
    fn check_worker_ledger(mut self, expected: &[(&str, Vec<FuelEntry>)]) {
        drop(self.worker.take());
        for (run, rows) in expected {
            assert_eq!(
                &ledger_fuel(self.worker_data.path(), run),
                rows,
                "run {run}"
            );
        }
    }
}

fn embedded_run(data: &Path, spec: &Path, extra: &[&str]) -> Output {
    soma(data)
        .args(["dag", "run"])
        .arg(spec)
        .arg("--capsule-path")
        .arg(capsule_dir())
        .arg("--json")
        .args(extra)
        .output()
        .expect("spawn soma dag run")
}

/// Per live node: (node, status, attempts, round, failure class).
fn timeline(doc: &Value) -> Vec<(String, String, u64, u64, String)> {
    let mut rows: Vec<_> = doc["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap_or_default().to_owned(),
                n["status"].as_str().unwrap_or_default().to_owned(),
                n["attempts"].as_u64().unwrap_or_default(),
                n["round"].as_u64().unwrap_or_default(),
                n["failure"]["class"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Per node: (node, fuel, LLM tokens) from a run's cost report.
fn charges(doc: &Value) -> Vec<(String, u64, u64)> {
    let mut rows: Vec<_> = doc["cost"]["by_node"]
        .as_array()
        .expect("by_node")
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap_or_default().to_owned(),
                n["fuel"].as_u64().unwrap_or_default(),
                n["tokens"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// One fuel entry of a run's ledger: (node, attempt, fuel).
type FuelEntry = (String, u64, u64);

/// The ledger of a data directory: `soma ledger check` passes and the
/// run's entries, as (node, attempt, kind, quantity) for fuel.
fn ledger_fuel(data: &Path, run: &str) -> Vec<FuelEntry> {
    let check = soma(data)
        .args(["ledger", "check"])
        .output()
        .expect("ledger check");
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
    let ls = soma(data)
        .args(["ledger", "ls", "--run", run, "--json", "--limit", "100000"])
        .output()
        .expect("ledger ls");
    assert_eq!(ls.status.code(), Some(0), "{}", text(&ls.stderr));
    let doc = json_of(&ls);
    let entries = doc
        .as_array()
        .or_else(|| doc["entries"].as_array())
        .cloned()
        .unwrap_or_default();
    let mut rows: Vec<_> = entries
        .iter()
        .filter(|e| e["kind"] == "fuel")
        .map(|e| {
            (
                e["node"].as_str().unwrap_or_default().to_owned(),
                e["attempt"].as_u64().unwrap_or_default(),
                e["quantity"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Run `spec` on both engines (run id `run` on each) and check they agree
/// on the status, the output, every node's status/attempts/round/failure
/// class, the verdicts, and the fuel charged per node and per attempt (in
/// the embedded run's ledger: what the worker's must hold). Returns both
/// reports and the embedded ledger's fuel entries.
fn conform(
    cluster: &Cluster,
    spec: &Path,
    run: &str,
    expected_code: i32,
) -> (Value, Value, Vec<FuelEntry>) {
    conform_with(cluster, spec, run, expected_code, None)
}

/// [`conform`] with the embedded run (and the Temporal run's client)
/// started with `--config config`: the same operator config as the
/// cluster's worker.
fn conform_with(
    cluster: &Cluster,
    spec: &Path,
    run: &str,
    expected_code: i32,
    config: Option<&Path>,
) -> (Value, Value, Vec<FuelEntry>) {
    let embedded_data = tempfile::tempdir().expect("data");
    let client_data = tempfile::tempdir().expect("data");
    let mut args = vec!["--run-id", run];
    if let Some(config) = config {
        args.extend(["--config", config.to_str().expect("utf-8 config path")]);
    }
    let e = embedded_run(embedded_data.path(), spec, &args);
    assert_eq!(e.status.code(), Some(expected_code), "{}", text(&e.stderr));
    let t = cluster.dag_run(client_data.path(), spec, &args);
    assert_eq!(
        t.status.code(),
        Some(expected_code),
        "{}",
        cluster.explain(&t)
    );
    let (e, t) = (json_of(&e), json_of(&t));
    assert_eq!(t["run"], run);
    assert_eq!(t["status"], e["status"]);
    assert_eq!(t["output"], e["output"]);
    assert_eq!(t["error"], e["error"]);
    assert_eq!(timeline(&t), timeline(&e));
    assert_eq!(t["verdicts"], e["verdicts"]);
    assert_eq!(t["cost"]["calls"], e["cost"]["calls"]);
    assert_eq!(t["cost"]["fuel"], e["cost"]["fuel"]);
    assert_eq!(t["cost"]["entries"], e["cost"]["entries"]);
    assert_eq!(t["cost"]["tokens"], e["cost"]["tokens"]);
    assert_eq!(charges(&t), charges(&e));
    let fuel = ledger_fuel(embedded_data.path(), run);
    assert!(!fuel.is_empty(), "the embedded run charged its calls");
    (e, t, fuel)
}

#[test]
fn fan_out_fail_fast_and_continue_agree_on_both_engines() {
    let cluster = Cluster::start("conform-basic");
    let dir = tempfile::tempdir().expect("specs");
    let fan = spec_file(
        dir.path(),
        "fan",
        r#"
name: fan
nodes:
  - id: source
    capsule: echo
    input: { items: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] }
  - id: square
    capsule: calculator
    for_each: "{{ nodes.source.output.items }}"
    input: { expr: "{{ item }}^2 + {{ index }}" }
  - id: sink
    capsule: echo
    input: { squares: "{{ nodes.square.output }}", n: "{{ nodes.source.output.items[9] }}" }
output: "{{ nodes.sink.output }}"
"#,
    );
    let (_, t, fan_fuel) = conform(&cluster, &fan, "fan", 0);
    let squares: Vec<i64> = t["output"]["squares"]
        .as_array()
        .expect("squares")
        .iter()
        .map(|v| v["value"].as_i64().expect("int"))
        .collect();
    assert_eq!(
        squares,
        (1..=10).map(|i: i64| i * i + (i - 1)).collect::<Vec<_>>()
    );
    let mut expected = vec![("fan", fan_fuel)];
    for policy in ["fail-fast", "continue"] {
        let spec = spec_file(
            dir.path(),
            policy,
            &format!(
                r#"
name: policies
policy: {{ on_failure: {policy}, concurrency: 1 }}
nodes:
  - id: bad
    capsule: calculator
    input: {{ expr: "1/0" }}
  - id: after-bad
    capsule: echo
    needs: [bad]
  - id: good
    capsule: echo
    input: {{ x: 1 }}
  - id: after-good
    capsule: echo
    input: {{ y: "{{{{ nodes.good.output.x }}}}" }}
"#
            ),
        );
        let (_, t, fuel) = conform(&cluster, &spec, policy, 23);
        assert_eq!(t["status"], "failed");
        expected.push((policy, fuel));
    }
    // The charges are really in the worker's ledger, once per attempt.
    cluster.check_worker_ledger(&expected);
}

/// A run far longer than its history budget (continue as new after 100
/// events; ~60 calls make ~600) continues as new several times and ends
/// as on the embedded engine: the same output, statuses, verdict-free
/// timeline and exactly one charge per call in the worker's ledger. The
/// Temporal report shows how many executions it took.
#[test]
fn a_long_run_continues_as_new_and_ends_as_on_the_embedded_engine() {
    let cluster = Cluster::start("conform-continue");
    let dir = tempfile::tempdir().expect("specs");
    let config = dir.path().join("soma.toml");
    std::fs::write(
        &config,
        "[orchestrator]\ncontinue_as_new_after_events = 100\n",
    )
    .expect("config");
    let items: Vec<u32> = (1..=30).collect();
    let spec = spec_file(
        dir.path(),
        "long",
        &format!(
            r#"
name: long
policy: {{ concurrency: 3 }}
nodes:
  - id: source
    capsule: echo
    input: {{ items: {items:?} }}
  - id: square
    capsule: calculator
    for_each: "{{{{ nodes.source.output.items }}}}"
    input: {{ expr: "{{{{ item }}}}^2" }}
  - id: again
    capsule: calculator
    for_each: "{{{{ nodes.square.output }}}}"
    input: {{ expr: "{{{{ item.value }}}} + 1" }}
  - id: sink
    capsule: echo
    input: {{ last: "{{{{ nodes.again.output[29] }}}}", n: 30 }}
output: "{{{{ nodes.sink.output }}}}"
"#
        ),
    );
    let embedded_data = tempfile::tempdir().expect("data");
    let client_data = tempfile::tempdir().expect("data");
    let args = ["--run-id", "long"];
    let e = embedded_run(embedded_data.path(), &spec, &args);
    assert_eq!(e.status.code(), Some(0), "{}", text(&e.stderr));
    let mut with_config = vec!["--config", config.to_str().expect("utf-8 path")];
    with_config.extend(args);
    let t = cluster.dag_run(client_data.path(), &spec, &with_config);
    assert_eq!(t.status.code(), Some(0), "{}", cluster.explain(&t));
    let (e, t) = (json_of(&e), json_of(&t));
    assert_eq!(t["output"], e["output"]);
    assert_eq!(t["output"]["last"]["value"], json!(901), "{t}");
    assert_eq!(timeline(&t), timeline(&e));
    assert_eq!(t["cost"]["calls"], e["cost"]["calls"]);
    assert_eq!(t["cost"]["fuel"], e["cost"]["fuel"]);
    assert_eq!(charges(&t), charges(&e));
    let executions = cluster.server.executions("long");
    assert!(
        executions >= 3,
        "the run took {executions} executions; with ~600 events and a budget of 100 it must \
         have continued as new several times\n{}",
        cluster.server.log()
    );
    let fuel = ledger_fuel(embedded_data.path(), "long");
    assert_eq!(fuel.len(), 62, "one charge per call: {fuel:?}");
    cluster.check_worker_ledger(&[("long", fuel)]);
}

#[test]
fn retries_only_for_retryable_classes_on_both_engines() {
    let cluster = Cluster::start("conform-retries");
    let dir = tempfile::tempdir().expect("specs");
    let spec = spec_file(
        dir.path(),
        "retries",
        r#"
name: retries
policy: { on_failure: continue }
defaults:
  retries: { max: 3, backoff_ms: 20, max_backoff_ms: 200 }
nodes:
  - id: not-retryable
    capsule: flaky
    input: { until_ms: 99999999999999, retryable: false }
  - id: always-retryable
    capsule: flaky
    retries: { max: 2, backoff_ms: 10, jitter: false }
    input: { until_ms: 99999999999999 }
  - id: deadline
    capsule: loop
    timeout_ms: 100
    retries: { max: 1, backoff_ms: 10 }
  - id: trap
    capsule: trap
    input: { kind: unreachable }
"#,
    );
    let (_, t, fuel) = conform(&cluster, &spec, "retries", 23);
    let rows = timeline(&t);
    let attempts = |node: &str| {
        rows.iter()
            .find(|r| r.0 == node)
            .map(|r| (r.2, r.4.clone()))
            .unwrap_or_else(|| panic!("no node {node}"))
    };
    assert_eq!(attempts("not-retryable"), (1, "capsule-error".into()));
    assert_eq!(attempts("trap"), (1, "trap".into()));
    assert_eq!(attempts("always-retryable").0, 3);
    assert_eq!(attempts("deadline"), (2, "deadline-exceeded".into()));
    cluster.check_worker_ledger(&[("retries", fuel)]);
}

#[test]
fn kamachiq_gives_the_same_artifact_and_cost_on_temporal() {
    let cluster = Cluster::start("conform-kamachiq");
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kamachiq/kamachiq.yaml");
    let (e, t, fuel) = conform(&cluster, &spec, "kamachiq", 0);
    assert_eq!(t["status"], "succeeded");
    assert!(
        !t["output"]["files"].as_object().expect("files").is_empty(),
        "the artifact's files"
    );
    assert_eq!(t["auto_approval_rate"], e["auto_approval_rate"]);
    assert_eq!(t["verdicts"].as_array().map(Vec::len), Some(2));
    // `soma dag status --engine temporal` answers from the workflow.
    let client_data = tempfile::tempdir().expect("data");
    let status = soma(client_data.path())
        .args([
            "dag",
            "status",
            "kamachiq",
            "--json",
            "--engine",
            "temporal",
            "--temporal",
        ])
        .arg(cluster.server.address())
        .output()
        .expect("status");
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        cluster.explain(&status)
    );
    let status = json_of(&status);
    assert_eq!(status["status"], "succeeded");
    assert_eq!(status["output"], t["output"]);
    cluster.check_worker_ledger(&[("kamachiq", fuel)]);
}

#[test]
fn cancelling_a_temporal_run_lets_the_call_in_flight_finish_and_ends_it_cancelled() {
    let cluster = Cluster::start("conform-cancel");
    let dir = tempfile::tempdir().expect("specs");
    let spec = spec_file(
        dir.path(),
        "cancel",
        r#"
name: cancel
nodes:
  - id: slow
    capsule: loop
    timeout_ms: 3000
  - id: after
    capsule: echo
    needs: [slow]
"#,
    );
    let client_data = tempfile::tempdir().expect("data");
    let child = cluster.spawn_run(client_data.path(), &spec, "c1");
    // Cancel once the slow call is in flight (the workflow answers queries).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let status = soma(client_data.path())
            .args([
                "dag",
                "status",
                "c1",
                "--json",
                "--engine",
                "temporal",
                "--temporal",
            ])
            .arg(cluster.server.address())
            .output()
            .expect("status");
        let running =
            status.status.success() && json_of(&status)["timeline"][0]["status"] == "running";
        if running {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slow never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let cancel = soma(client_data.path())
        .args(["dag", "cancel", "c1", "--engine", "temporal", "--temporal"])
        .arg(cluster.server.address())
        .output()
        .expect("cancel");
    assert_eq!(
        cancel.status.code(),
        Some(0),
        "{}",
        cluster.explain(&cancel)
    );
    let out = child.wait_with_output().expect("dag run");
    assert_eq!(out.status.code(), Some(24), "{}", cluster.explain(&out));
    let doc = json_of(&out);
    assert_eq!(doc["status"], "cancelled");
    let rows = timeline(&doc);
    // The call in flight finished (its deadline) and was recorded;
    // nothing new started.
    assert_eq!(rows[0].0, "after");
    assert_eq!(rows[0].2, 0, "nothing new starts after the cancel");
    assert_eq!(rows[1].0, "slow");
    assert_eq!((rows[1].1.as_str(), rows[1].2), ("failed", 1));
    // It loops until its fuel or its deadline runs out, whichever first.
    assert!(
        ["out-of-fuel", "deadline-exceeded"].contains(&rows[1].4.as_str()),
        "{rows:?}"
    );
    let charged = doc["cost"]["by_node"][0]["fuel"].as_u64().expect("fuel");
    cluster.check_worker_ledger(&[("c1", vec![("slow".into(), 0, charged)])]);
}

/// `[orchestrator] engine = "temporal"`: a real daemon starts each DAG run
/// as a workflow (served by a real `soma worker`), answers `GET
/// /v1/runs/{id}`, its event stream and cancel from the workflow, and a
/// tenant never sees another's run.
#[test]
fn the_daemon_runs_dags_on_temporal_and_keeps_tenants_apart() {
    use serde_json::json;
    use soma_tests::daemon::{self as harness, DaemonProcess};
    let cluster = Cluster::start("daemon-runs");
    let data = tempfile::tempdir().expect("daemon data");
    let bin = Path::new(env!("CARGO_BIN_EXE_soma"));
    let acme = harness::token(bin, data.path(), "acme", "run,read");
    let reader = harness::token(bin, data.path(), "acme", "read");
    let globex = harness::token(bin, data.path(), "globex", "run,read");
    let orchestrator = cluster.orchestrator();
    let d = DaemonProcess::start(bin, data.path(), "", &orchestrator);
    let fan = json!({
        "name": "fan",
        "capsules": {"echo": "echo", "calculator": "calculator"},
        "nodes": [
            {"id": "source", "capsule": "echo", "input": {"items": [1, 2, 3, 4, 5]}},
            {"id": "square", "capsule": "calculator",
             "for_each": "{{ nodes.source.output.items }}",
             "input": {"expr": "{{ item }}^2"}},
            {"id": "sink", "capsule": "echo", "input": {"squares": "{{ nodes.square.output }}"}}
        ],
        "output": "{{ nodes.sink.output }}"
    });
    // `read` alone may not start a run.
    assert_eq!(d.post("/v1/runs", &reader, &json!({"dag": fan})).0, 403);
    let (s, v) = d.post("/v1/runs", &acme, &json!({"dag": fan}));
    assert_eq!(s, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    assert!(
        run.starts_with("acme."),
        "the run id names its tenant: {run}"
    );
    let report = d.wait_finished(&acme, &run, std::time::Duration::from_secs(60));
    assert_eq!(
        report["status"],
        "succeeded",
        "{report}\nworker: {}",
        cluster.worker.as_ref().map(Worker::log).unwrap_or_default()
    );
    let squares: Vec<i64> = report["output"]["squares"]
        .as_array()
        .expect("squares")
        .iter()
        .map(|v| v["value"].as_i64().expect("int"))
        .collect();
    assert_eq!(squares, vec![1, 4, 9, 16, 25]);
    assert_eq!(report["tenant"], "acme");
    // Another tenant: 404 on every route, even when it names the tenant.
    assert_eq!(d.get(&format!("/v1/runs/{run}"), &globex).0, 404);
    assert_eq!(d.get(&format!("/v1/runs/{run}/events"), &globex).0, 404);
    assert_eq!(
        d.post(&format!("/v1/runs/{run}/cancel"), &globex, &json!({}))
            .0,
        404
    );
    let forged = run.replacen("acme.", "globex.", 1);
    assert_eq!(d.get(&format!("/v1/runs/{forged}"), &globex).0, 404);
    // The event stream: the whole history, ending with `finished`.
    let events = harness::client()
        .get(format!("{}/v1/runs/{run}/events", d.url))
        .bearer_auth(&acme)
        .send()
        .expect("events")
        .text()
        .expect("body");
    assert!(events.contains("id: 0\n"), "{events}");
    assert!(events.contains("event: created"), "{events}");
    assert!(events.contains("event: finished"), "{events}");
    assert!(events.matches("event: succeeded").count() >= 7, "{events}");
    // A finished run cannot be cancelled.
    assert_eq!(
        d.post(&format!("/v1/runs/{run}/cancel"), &acme, &json!({}))
            .0,
        409
    );
    // Cancelling a running one: the call in flight finishes, nothing new
    // starts, the run ends cancelled.
    let slow = json!({
        "name": "slow",
        "capsules": {"loop": "hostile-loop", "echo": "echo"},
        "nodes": [
            {"id": "slow", "capsule": "loop", "timeout_ms": 3000},
            {"id": "after", "capsule": "echo", "needs": ["slow"]}
        ]
    });
    let (s, v) = d.post("/v1/runs", &acme, &json!({"dag": slow}));
    assert_eq!(s, 202, "{v}");
    let slow_run = v["run"].as_str().expect("run").to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (s, v) = d.get(&format!("/v1/runs/{slow_run}"), &acme);
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["status"], "running", "{v}");
        if v["timeline"][0]["status"] == "running" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slow never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (s, v) = d.post(&format!("/v1/runs/{slow_run}/cancel"), &acme, &json!({}));
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["cancel"], "requested");
    let report = d.wait_finished(&acme, &slow_run, std::time::Duration::from_secs(60));
    assert_eq!(report["status"], "cancelled", "{report}");
    // Approvals through the daemon: the workflow checks and queues each
    // verdict in one step; tenants and scopes as on the embedded engine.
    let gated = json!({
        "name": "gated",
        "capsules": {"calc": "calculator", "echo": "echo"},
        "nodes": [
            {"id": "a", "capsule": "calc", "input": {"expr": "6*7"}, "approval": {"timeout": "1d"}},
            {"id": "b", "capsule": "echo", "input": "{{ nodes.a.output }}"}
        ]
    });
    let (s, v) = d.post("/v1/runs", &acme, &json!({"dag": gated}));
    assert_eq!(s, 202, "{v}");
    let gated_run = v["run"].as_str().expect("run").to_owned();
    let path = |node: &str| format!("/v1/runs/{gated_run}/nodes/{node}/approval");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let approve = json!({"verdict": "approve", "reason": "looks right"});
    loop {
        // The live run's report lists the node waiting for a verdict.
        let (s, v) = d.get(&format!("/v1/runs/{gated_run}"), &acme);
        assert_eq!((s, v["status"].as_str()), (200, Some("running")), "{v}");
        if v["timeline"][0]["status"] == "awaiting-approval" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a never awaited approval: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (s, v) = d.post(&path("b"), &acme, &approve);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("not-awaiting-approval")),
        "{v}"
    );
    let (s, v) = d.post(&path("a"), &acme, &approve);
    assert_eq!((s, v["state"].as_str()), (200, Some("accepted")), "{v}");
    assert_eq!(d.post(&path("a"), &globex, &approve).0, 404);
    assert_eq!(d.post(&path("a"), &reader, &approve).0, 403);
    let (s, v) = d.post(&path("a"), &acme, &approve);
    assert_eq!(
        (s, v["state"].as_str()),
        (200, Some("already-given")),
        "{v}"
    );
    let (s, v) = d.post(
        &path("a"),
        &acme,
        &json!({"verdict": "reject", "reason": "no"}),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("approval-conflict")),
        "{v}"
    );
    let report = d.wait_finished(&acme, &gated_run, std::time::Duration::from_secs(60));
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["output"]["b"]["value"], 42, "{report}");
    assert_eq!(report["approvals"][0]["tenant"], "acme", "{report}");
    assert_eq!(report["approvals"][0]["reason"], "looks right", "{report}");
    // After the end the recorded verdict answers.
    let (s, v) = d.post(&path("a"), &acme, &approve);
    assert_eq!(
        (s, v["state"].as_str()),
        (200, Some("already-given")),
        "{v}"
    );
}

/// Per human verdict: (node, verdict, reason, by, round).
fn approvals(doc: &Value) -> Vec<(String, String, String, String, u64)> {
    doc["approvals"]
        .as_array()
        .expect("approvals")
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
            (
                s("node"),
                s("verdict"),
                s("reason"),
                s("by"),
                a["round"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// A node with `approval:` waits on both engines (embedded: `soma dag run`
/// stops with only the verdict left, `soma dag approve|reject` records it,
/// `soma dag resume` continues; Temporal: the workflow waits, `soma dag
/// status` shows the node `awaiting-approval`, the verdict is an update),
/// and approve and reject give the same report on both.
#[test]
fn approve_and_reject_give_the_same_report_on_both_engines() {
    let cluster = Cluster::start("conform-approve");
    let dir = tempfile::tempdir().expect("specs");
    let spec = spec_file(
        dir.path(),
        "approve",
        r#"
name: approve
policy: { on_failure: continue }
nodes:
  - id: a
    capsule: calculator
    input: { expr: "6*7" }
    approval: { timeout: 1d }
  - id: b
    capsule: echo
    input: "{{ nodes.a.output }}"
  - id: c
    capsule: calculator
    input: { expr: "1+1" }
"#,
    );
    let address = cluster.server.address().to_owned();
    for (run, verb, code) in [("ap1", "approve", 0), ("rj1", "reject", 23)] {
        let verdict_args = [verb, run, "a", "--reason", "checked by hand"];
        // Embedded.
        let data = tempfile::tempdir().expect("data");
        let first = embedded_run(data.path(), &spec, &["--run-id", run]);
        assert_eq!(first.status.code(), Some(25), "{}", text(&first.stderr));
        assert_eq!(
            json_of(&first)["timeline"][0]["status"],
            "awaiting-approval",
            "{}",
            text(&first.stdout)
        );
        let status = soma(data.path())
            .args(["dag", "status", run, "--json"])
            .output()
            .expect("status");
        assert_eq!(
            json_of(&status)["timeline"][0]["status"],
            "awaiting-approval"
        );
        let given = soma(data.path())
            .arg("dag")
            .args(verdict_args)
            .output()
            .expect("verdict");
        assert_eq!(given.status.code(), Some(0), "{}", text(&given.stderr));
        let e = soma(data.path())
            .args(["dag", "resume", run, "--json", "--capsule-path"])
            .arg(capsule_dir())
            .output()
            .expect("resume");
        assert_eq!(e.status.code(), Some(code), "{}", text(&e.stderr));
        // Temporal.
        let client_data = tempfile::tempdir().expect("data");
        let child = cluster.spawn_run(client_data.path(), &spec, run);
        cluster.wait_awaiting(client_data.path(), run);
        let given = soma(client_data.path())
            .arg("dag")
            .args(verdict_args)
            .args(["--engine", "temporal", "--temporal", &address])
            .output()
            .expect("verdict");
        assert_eq!(given.status.code(), Some(0), "{}", cluster.explain(&given));
        let t = child.wait_with_output().expect("dag run");
        assert_eq!(t.status.code(), Some(code), "{}", cluster.explain(&t));
        let (e, t) = (json_of(&e), json_of(&t));
        assert_eq!(t["status"], e["status"]);
        assert_eq!(t["output"], e["output"]);
        assert_eq!(t["error"], e["error"]);
        assert_eq!(timeline(&t), timeline(&e));
        assert_eq!(approvals(&t), approvals(&e));
        assert_eq!(
            approvals(&e),
            [(
                "a".into(),
                verb.into(),
                "checked by hand".into(),
                "cli".into(),
                1
            )]
        );
        assert_eq!(charges(&t), charges(&e));
    }
}

/// An approval's timeout applies its `on_timeout` verdict on both
/// engines: the workflow's timer fires on Temporal (the run ends by
/// itself), and on the embedded engine a resume after the deadline
/// applies it. Same status, timeline and verdicts (given by `timeout`).
#[test]
fn an_approval_timeout_applies_its_verdict_on_both_engines() {
    let cluster = Cluster::start("conform-approval-timeout");
    let dir = tempfile::tempdir().expect("specs");
    let spec = spec_file(
        dir.path(),
        "timeout",
        r#"
name: timeout
policy: { on_failure: continue }
nodes:
  - id: a
    capsule: calculator
    input: { expr: "6*7" }
    approval: { timeout: 2s, on_timeout: reject }
  - id: b
    capsule: echo
    input: "{{ nodes.a.output }}"
  - id: c
    capsule: calculator
    input: { expr: "1+1" }
"#,
    );
    let run = "to1";
    let data = tempfile::tempdir().expect("data");
    let first = embedded_run(data.path(), &spec, &["--run-id", run]);
    assert_eq!(first.status.code(), Some(25), "{}", text(&first.stderr));
    // Resumed before the deadline (2 s after the call) it parks again (25);
    // after it, the timeout's verdict applies.
    let patience = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let e = loop {
        let e = soma(data.path())
            .args(["dag", "resume", run, "--json", "--capsule-path"])
            .arg(capsule_dir())
            .output()
            .expect("resume");
        if e.status.code() != Some(25) {
            break e;
        }
        assert!(
            std::time::Instant::now() < patience,
            "the approval never timed out"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert_eq!(e.status.code(), Some(23), "{}", text(&e.stderr));
    let client_data = tempfile::tempdir().expect("data");
    let t = cluster.dag_run(client_data.path(), &spec, &["--run-id", run]);
    assert_eq!(t.status.code(), Some(23), "{}", cluster.explain(&t));
    let (e, t) = (json_of(&e), json_of(&t));
    assert_eq!(t["status"], e["status"]);
    assert_eq!(t["output"], e["output"]);
    assert_eq!(timeline(&t), timeline(&e));
    let given = approvals(&t);
    assert_eq!(given, approvals(&e));
    assert_eq!(given.len(), 1, "{given:?}");
    assert_eq!(
        (
            given[0].0.as_str(),
            given[0].1.as_str(),
            given[0].3.as_str()
        ),
        ("a", "reject", "timeout"),
        "{given:?}"
    );
    assert_eq!(charges(&t), charges(&e));
}

/// A gate that never approves stops after `max_rounds` (`gate-rejected`,
/// the gated node run once per round, its consumer never), `catch: true`
/// turns a failure into an output, and a node restricted to `kv: false`
/// is denied kv while the same capsule elsewhere in the run keeps it — the
/// same on both engines, with the same charges.
#[test]
fn gates_catch_and_restricted_capabilities_agree_on_both_engines() {
    let cluster = Cluster::start("conform-gates");
    let dir = tempfile::tempdir().expect("specs");
    let stubborn = spec_file(
        dir.path(),
        "stubborn",
        r#"
name: stubborn
nodes:
  - id: tests
    capsule: echo
    input: { cases: [ { expr: "2^3^2", expect: 64 }, { expr: "1/0", expect: 1 } ] }
  - id: check
    capsule: calculator
    for_each: "{{ nodes.tests.output.cases }}"
    input: { expr: "{{ item.expr }}" }
    catch: true
  - id: review
    capsule: reviewer
    gate: { node: tests, max_rounds: 2 }
    input: { cases: "{{ nodes.tests.output.cases }}", results: "{{ nodes.check.output }}" }
  - id: ship
    capsule: echo
    input: "{{ nodes.tests.output }}"
"#,
    );
    let (_, t, stubborn_fuel) = conform(&cluster, &stubborn, "stubborn", 23);
    assert_eq!(t["status"], "failed");
    let review = timeline(&t)
        .into_iter()
        .find(|n| n.0 == "review")
        .expect("review");
    assert_eq!(review.4, "gate-rejected", "{review:?}");
    assert_eq!(
        t["verdicts"].as_array().map(Vec::len),
        Some(2),
        "{}",
        t["verdicts"]
    );
    let restricted = spec_file(
        dir.path(),
        "restricted",
        r#"
name: restricted
nodes:
  - { id: open, capsule: notebook, input: { op: kv-set, scope: capsule, key: k, value: v } }
  - id: closed
    capsule: notebook
    needs: [open]
    input: { op: kv-get, scope: capsule, key: k }
    capabilities: { kv: false }
    catch: true
  - { id: again, capsule: notebook, needs: [closed], input: { op: kv-get, scope: capsule, key: k } }
output: { closed: "{{ nodes.closed.output }}", again: "{{ nodes.again.output }}" }
"#,
    );
    let (_, t, restricted_fuel) = conform(&cluster, &restricted, "restricted", 0);
    assert_eq!(
        t["output"]["again"],
        json!({ "key": "k", "value": "v" }),
        "{t}"
    );
    assert_eq!(t["output"]["closed"]["failed"], true, "{t}");
    cluster.check_worker_ledger(&[("stubborn", stubborn_fuel), ("restricted", restricted_fuel)]);
}

/// LLM tokens a call spends through the `llm` capability are in the run's
/// cost report on both engines (on Temporal the worker hands them to the
/// workflow with the call's charge), priced alike, and a run's or a
/// node's token budget refuses the same call on both: `summarize` then
/// falls back to its extractive summary, so the run succeeds with the same
/// output.
#[test]
fn llm_tokens_cost_and_token_budgets_agree_on_both_engines() {
    let fixture = soma_tests::llm_fixture::LlmFixture::start();
    let dir = tempfile::tempdir().expect("specs");
    let config = dir.path().join("soma.toml");
    std::fs::write(
        &config,
        format!(
            "[policy]\nllm_models = [\"default\"]\n\n[[llm.providers]]\nname = \"fixture\"\n\
             base_url = \"{}\"\nmodels = [\"fixture-ok\"]\naliases = {{ default = \"fixture-ok\" }}\n\
             price_input_per_1k_micros = 1000000\nprice_output_per_1k_micros = 2000000\n",
            fixture.base_url()
        ),
    )
    .expect("config");
    let cluster = Cluster::start_with("conform-llm", Some(&config));
    // The second call's prompt alone is more than what the first leaves
    // of the run's 150 tokens: the host refuses it before any request.
    let long = vec!["word"; 300].join(" ");
    let spec = spec_file(
        dir.path(),
        "tokens",
        &format!(
            r#"
name: tokens
budget: {{ tokens: 150 }}
nodes:
  - id: first
    capsule: summarize
    input: {{ text: "Alpha beta gamma delta. Epsilon zeta eta theta.", max_words: 5 }}
  - id: second
    capsule: summarize
    needs: [first]
    input: {{ text: "{long}", max_words: 5 }}
output: {{ first: "{{{{ nodes.first.output }}}}", second: "{{{{ nodes.second.output }}}}" }}
"#
        ),
    );
    let (e, t, fuel) = conform_with(&cluster, &spec, "tokens", 0, Some(&config));
    // Each engine asked the provider once: the second call never left.
    assert_eq!(fixture.recorded().count, 2, "{t}");
    assert_eq!(t["output"]["first"]["source"], "llm", "{t}");
    assert_eq!(t["output"]["second"]["source"], "extractive", "{t}");
    let tokens = t["cost"]["tokens"].as_u64().expect("tokens");
    assert!(tokens > 0, "the chat call's tokens are in the cost: {t}");
    assert_eq!(t["cost"]["usd"], e["cost"]["usd"]);
    assert!(t["cost"]["usd"].as_f64().expect("usd") > 0.0, "{t}");
    let first = t["output"]["first"]["usage"].clone();
    let (p, c) = (
        first["prompt_tokens"].as_u64().expect("prompt"),
        first["completion_tokens"].as_u64().expect("completion"),
    );
    assert_eq!(tokens, p + c, "{t}");
    // A node's own budget: `tight` cannot hold one call's reservation,
    // `free` beside it has none.
    let spec = spec_file(
        dir.path(),
        "node-tokens",
        r#"
name: node-tokens
nodes:
  - id: tight
    capsule: summarize
    budget: { tokens: 10 }
    input: { text: "Alpha beta gamma delta. Epsilon zeta eta theta.", max_words: 5 }
  - id: free
    capsule: summarize
    needs: [tight]
    input: { text: "Alpha beta gamma delta. Epsilon zeta eta theta.", max_words: 5 }
output: { tight: "{{ nodes.tight.output }}", free: "{{ nodes.free.output }}" }
"#,
    );
    let (_, t, node_fuel) = conform_with(&cluster, &spec, "node-tokens", 0, Some(&config));
    assert_eq!(t["output"]["tight"]["source"], "extractive", "{t}");
    assert_eq!(t["output"]["free"]["source"], "llm", "{t}");
    assert_eq!(fixture.recorded().count, 4, "one more request per engine");
    cluster.check_worker_ledger(&[("tokens", fuel), ("node-tokens", node_fuel)]);
}

/// The spec's planner caps hold alike on both engines: KAMACHIQ's plan
/// (8 nodes, then a `for_each` over its test cases) under a node cap it
/// exceeds (the planner's node fails `invalid-plan`, naming the cap) and
/// under `max_expansion_depth: 0` (`expansion-limit`), and under a fan-out cap its `check` step exceeds
/// (`check` has `catch: true`: it makes no call and hands the refusal on
/// as its output, which the reviewer then rejects) — each run fails at the
/// same node, with the same error and the same charges.
#[test]
fn planner_caps_agree_on_both_engines() {
    let cluster = Cluster::start("conform-caps");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kamachiq/kamachiq.yaml");
    let text = std::fs::read_to_string(&example).expect("kamachiq spec");
    let dir = tempfile::tempdir().expect("specs");
    let node = |t: &Value, id: &str| -> Value {
        t["timeline"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["node"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("node {id} in {t}"))
    };
    let mut runs = Vec::new();
    for (run, from, to, class, says) in [
        (
            "caps-nodes",
            "max_expansion_nodes: 16",
            "max_expansion_nodes: 4",
            "invalid-plan",
            "it adds 8 nodes; policy.max_expansion_nodes is 4",
        ),
        (
            "caps-depth",
            "max_expansion_depth: 1",
            "max_expansion_depth: 0",
            "expansion-limit",
            "policy.max_expansion_depth is 0",
        ),
        ("caps-fan-out", "max_fan_out: 64", "max_fan_out: 2", "", ""),
    ] {
        assert!(text.contains(from), "the example sets {from}");
        let spec = dir.path().join(format!("{run}.yaml"));
        std::fs::write(&spec, text.replace(from, to)).expect("write spec");
        let (_, t, fuel) = conform(&cluster, &spec, run, 23);
        assert_eq!(t["status"], "failed", "{run}: {t}");
        if run == "caps-fan-out" {
            let check = node(&t, "plan.check");
            assert_eq!(check["attempts"], 0, "{run}: no check call ran: {check}");
            let review = node(&t, "plan.review");
            assert_eq!(review["status"], "failed", "{run}: {review}");
        } else {
            let plan = node(&t, "plan");
            assert_eq!(plan["failure"]["class"], class, "{run}: {plan}");
            let message = plan["failure"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(says), "{run}: {message}");
            assert_eq!(plan["fuel"].as_u64().map(|f| f > 0), Some(true), "{plan}");
        }
        runs.push((run, fuel));
    }
    cluster.check_worker_ledger(&runs);
}

/// Without `--json`, `soma dag run --engine temporal` shows the run's
/// progress while the workflow runs it, with the embedded engine's lines:
/// the first node's line arrives while a 2-second node still runs.
#[test]
fn dag_run_on_temporal_shows_live_progress() {
    use std::io::{BufRead, BufReader};
    let cluster = Cluster::start("conform-progress");
    let dir = tempfile::tempdir().expect("specs");
    let spec = spec_file(
        dir.path(),
        "progress",
        r#"
name: progress
nodes:
  - { id: first, capsule: calculator, input: { expr: "6*7" } }
  - id: slow
    capsule: loop
    needs: [first]
    timeout_ms: 2000
    catch: true
  - { id: last, capsule: echo, needs: [slow], input: "{{ nodes.first.output }}" }
output: "{{ nodes.last.output }}"
"#,
    );
    let client_data = tempfile::tempdir().expect("data");
    let mut child = soma(client_data.path())
        .args(["dag", "run"])
        .arg(&spec)
        .arg("--capsule-path")
        .arg(capsule_dir())
        .args(["--engine", "temporal", "--temporal"])
        .arg(cluster.server.address())
        .args(["--task-queue", &cluster.queue, "--run-id", "progress"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn soma dag run");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    let mut running_when_first_showed = None;
    for line in lines.by_ref() {
        let line = line.expect("stderr line");
        if line.starts_with("✓ first") {
            running_when_first_showed = Some(child.try_wait().expect("try_wait").is_none());
        }
        seen.push(line);
        if running_when_first_showed.is_some() {
            break;
        }
    }
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().expect("wait");
    let all = seen.join("\n");
    assert_eq!(status.code(), Some(0), "{all}\n{}", cluster.explain_log());
    assert_eq!(
        running_when_first_showed,
        Some(true),
        "the first node's line came while the run went on:\n{all}"
    );
    assert!(all.contains("✗ slow") || all.contains("✓ slow"), "{all}");
    assert!(all.contains("✓ last"), "{all}");
    assert!(all.contains("run progress succeeded"), "{all}");
}

/// Two different verdicts handed in at once on a Temporal run: exactly one
/// is accepted, the other refused as a conflict naming the first (the
/// workflow's `approve` update checks and queues in one step). Asked
/// again after the run has ended, the winner is `already-given` and the
/// loser still a conflict.
#[test]
fn racing_verdicts_on_temporal_accept_exactly_one() {
    let cluster = Cluster::start("conform-approval-race");
    let dir = tempfile::tempdir().expect("specs");
    let spec = spec_file(
        dir.path(),
        "race",
        r#"
name: race
policy: { on_failure: continue }
nodes:
  - id: a
    capsule: calculator
    input: { expr: "6*7" }
    approval: { timeout: 1d }
  - id: hold
    capsule: loop
    needs: [a]
    timeout_ms: 1500
    catch: true
"#,
    );
    let address = cluster.server.address().to_owned();
    let client_data = tempfile::tempdir().expect("data");
    let temporal = ["--engine", "temporal", "--temporal", &address];
    let child = cluster.spawn_run(client_data.path(), &spec, "race");
    cluster.wait_awaiting(client_data.path(), "race");
    let verdict = |verb: &str| {
        let mut c = soma(client_data.path());
        c.args(["dag", verb, "race", "a", "--reason", verb])
            .args(temporal)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let (approve, reject) = (
        verdict("approve").spawn().expect("approve"),
        verdict("reject").spawn().expect("reject"),
    );
    let approve = approve.wait_with_output().expect("approve");
    let reject = reject.wait_with_output().expect("reject");
    let won: Vec<&str> = [("approve", &approve), ("reject", &reject)]
        .into_iter()
        .filter(|(_, o)| o.status.success())
        .map(|(v, _)| v)
        .collect();
    assert_eq!(
        won.len(),
        1,
        "exactly one verdict accepted: approve {:?} {} / reject {:?} {}",
        approve.status.code(),
        text(&approve.stderr),
        reject.status.code(),
        text(&reject.stderr)
    );
    let (winner, loser) = if won[0] == "approve" {
        ("approve", &reject)
    } else {
        ("reject", &approve)
    };
    assert!(
        text(&loser.stderr).contains("already has the verdict"),
        "the loser is told of the conflict: {}",
        text(&loser.stderr)
    );
    let t = child.wait_with_output().expect("dag run");
    let t = json_of(&t);
    let given = approvals(&t);
    assert_eq!(given.len(), 1, "{t}");
    assert_eq!(given[0].1, winner, "{t}");
    // After the end: the winner again is a no-op, the loser still refused.
    let again = verdict(winner).output().expect("again");
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("already-given"),
        "{}",
        text(&again.stdout)
    );
    let other = if winner == "approve" {
        "reject"
    } else {
        "approve"
    };
    let late = verdict(other).output().expect("late");
    assert_ne!(late.status.code(), Some(0), "{}", text(&late.stdout));
    assert!(
        text(&late.stderr).contains("already has the verdict"),
        "{}",
        text(&late.stderr)
    );
}

/// The daemon holds a tenant to `daemon.max_queued_runs_per_tenant` on
/// Temporal as on the embedded engine: with a cap of 2 and two runs
/// going, a third is `429 too-many-runs` (with `Retry-After`), another
/// tenant still starts, and once the two have ended the tenant starts
/// again.
#[test]
fn the_daemon_caps_a_tenants_runs_on_temporal() {
    use serde_json::json;
    use soma_tests::daemon::{self as harness, DaemonProcess};
    let cluster = Cluster::start("daemon-cap");
    let data = tempfile::tempdir().expect("daemon data");
    let bin = Path::new(env!("CARGO_BIN_EXE_soma"));
    let acme = harness::token(bin, data.path(), "acme", "run,read");
    let globex = harness::token(bin, data.path(), "globex", "run,read");
    let orchestrator = cluster.orchestrator();
    let d = DaemonProcess::start(
        bin,
        data.path(),
        "max_queued_runs_per_tenant = 2",
        &orchestrator,
    );
    let slow = json!({"dag": {
        "name": "slow",
        "capsules": {"loop": "hostile-loop"},
        "nodes": [{"id": "slow", "capsule": "loop", "timeout_ms": 2500, "catch": true}]
    }});
    let quick = json!({"dag": {
        "name": "quick",
        "capsules": {"calc": "calculator"},
        "nodes": [{"id": "q", "capsule": "calc", "input": {"expr": "1+1"}}]
    }});
    let mut going = Vec::new();
    for _ in 0..2 {
        let (s, v) = d.post("/v1/runs", &acme, &slow);
        assert_eq!(s, 202, "{v}");
        going.push(v["run"].as_str().expect("run").to_owned());
    }
    let (s, v) = d.post("/v1/runs", &acme, &quick);
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("too-many-runs")),
        "{v}"
    );
    assert!(
        v.to_string().contains("daemon.max_queued_runs_per_tenant"),
        "the refusal names the knob: {v}"
    );
    // Another tenant is not held by acme's runs.
    let (s, v) = d.post("/v1/runs", &globex, &quick);
    assert_eq!(s, 202, "{v}");
    let other = v["run"].as_str().expect("run").to_owned();
    let report = d.wait_finished(&globex, &other, std::time::Duration::from_secs(60));
    assert_eq!(report["status"], "succeeded", "{report}");
    for run in &going {
        let report = d.wait_finished(&acme, run, std::time::Duration::from_secs(60));
        assert_eq!(report["status"], "succeeded", "{report}");
    }
    // Ended: acme starts again (a start counts by itself for a few
    // seconds, until Temporal's visibility store surely lists it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (s, v) = d.post("/v1/runs", &acme, &quick);
        if s == 202 {
            break;
        }
        assert_eq!(s, 429, "{v}");
        assert!(
            std::time::Instant::now() < deadline,
            "acme never started again: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// Outputs too large for one Temporal payload (2 MB) go by reference when
/// the workers and the client share a PostgreSQL store: a 700 KB output
/// copied four times and gathered by a fan-in makes a 2.8 MB input, output
/// and report. The run ends as on the embedded engine, and the large
/// payloads are rows of `temporal_payloads`, not Temporal payloads. (With
/// `payload_offload_bytes = 0` the same run fails: `sink`'s output is over
/// the limit.)
#[test]
fn outputs_above_temporals_payload_limit_go_by_reference_through_postgres() {
    let pg = soma_tests::postgres::Postgres::start();
    let url = pg.create_database();
    let dir = tempfile::tempdir().expect("specs");
    let limits = "[limits]\nmax_input_bytes = 8388608\nmax_output_bytes = 8388608\n\
                  [dag]\nmax_spec_bytes = 4194304\nmax_rendered_input_bytes = 8388608\n";
    let local = dir.path().join("local.toml");
    std::fs::write(&local, limits).expect("config");
    let shared = dir.path().join("shared.toml");
    std::fs::write(
        &shared,
        format!("{limits}[store]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 4\n"),
    )
    .expect("config");
    let blob = "x".repeat(700_000);
    let spec = spec_file(
        dir.path(),
        "big",
        &format!(
            r#"
name: big
nodes:
  - id: big
    capsule: echo
    input: {{ blob: "{blob}", items: [1, 2, 3, 4] }}
  - id: copies
    capsule: echo
    for_each: "{{{{ nodes.big.output.items }}}}"
    input: {{ i: "{{{{ item }}}}", blob: "{{{{ nodes.big.output.blob }}}}" }}
  - id: sink
    capsule: echo
    input: {{ copies: "{{{{ nodes.copies.output }}}}" }}
output: "{{{{ nodes.sink.output }}}}"
"#
        ),
    );
    let cluster = Cluster::start_with("large-payloads", Some(&shared));
    let (embedded_data, client_data) = (
        tempfile::tempdir().expect("data"),
        tempfile::tempdir().expect("data"),
    );
    let config = |p: &Path| p.to_str().expect("utf-8").to_owned();
    let e = embedded_run(
        embedded_data.path(),
        &spec,
        &["--run-id", "big", "--config", &config(&local)],
    );
    assert_eq!(e.status.code(), Some(0), "{}", text(&e.stderr));
    let t = cluster.dag_run(
        client_data.path(),
        &spec,
        &["--run-id", "big", "--config", &config(&shared)],
    );
    assert_eq!(t.status.code(), Some(0), "{}", cluster.explain(&t));
    let (e, t) = (json_of(&e), json_of(&t));
    assert_eq!(t["status"], "succeeded", "{}", t["error"]);
    let copies = t["output"]["copies"].as_array().expect("copies");
    assert_eq!(copies.len(), 4);
    assert!(
        copies
            .iter()
            .all(|c| c["blob"].as_str().map(str::len) == Some(700_000))
    );
    assert!(
        t["output"] == e["output"],
        "the same output on both engines"
    );
    assert_eq!(timeline(&t), timeline(&e));
    assert_eq!(t["cost"]["fuel"], e["cost"]["fuel"]);
    // The large payloads are rows of the shared store.
    let store = soma_runtime::Config::load(&shared).expect("config").store;
    let (rows, largest) = std::thread::spawn(move || {
        let pg = soma_runtime::store::postgres::PgStore::open(&store).expect("store");
        let mut conn = pg.conn().expect("conn");
        let row = conn
            .query_one(
                "SELECT count(*), coalesce(max(length(data)), 0) FROM temporal_payloads",
                &[],
            )
            .expect("count");
        (row.get::<_, i64>(0), row.get::<_, i32>(1))
    })
    .join()
    .expect("query");
    assert!(rows >= 3, "offloaded payloads: {rows}");
    assert!(
        largest > 2_000_000,
        "the report went by reference: {largest} bytes"
    );
}

/// A fan-out wider than `[orchestrator] child_workflow_calls` (here 31,
/// with 64 at once): its turn's calls go to child workflows of 31 calls
/// each, the remainder as the run's own activities. The run ends as on
/// the embedded engine (output, timeline, fuel), and Temporal shows the
/// two children completed under the run's workflow. (A batch above 30
/// calls once failed every workflow task: `join_all` polls that many
/// through wakers the SDK refuses.)
#[test]
fn a_wide_fan_out_runs_in_child_workflows_and_ends_as_on_the_embedded_engine() {
    let pg = soma_tests::postgres::Postgres::start();
    let url = pg.create_database();
    let dir = tempfile::tempdir().expect("specs");
    let shared = dir.path().join("shared.toml");
    std::fs::write(
        &shared,
        format!(
            "[store]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 4\n\
             [orchestrator]\nchild_workflow_calls = 31\n"
        ),
    )
    .expect("config");
    let items: Vec<u32> = (1..=64).collect();
    let spec = spec_file(
        dir.path(),
        "wide",
        &format!(
            r#"
name: wide
policy:
  concurrency: 64
nodes:
  - id: items
    capsule: echo
    input: {{ items: {items:?} }}
  - id: each
    capsule: echo
    for_each: "{{{{ nodes.items.output.items }}}}"
    input: {{ i: "{{{{ item }}}}" }}
  - id: sink
    capsule: echo
    input: {{ all: "{{{{ nodes.each.output }}}}" }}
output: "{{{{ nodes.sink.output }}}}"
"#
        ),
    );
    let cluster = Cluster::start_with("child-workflows", Some(&shared));
    let (embedded_data, client_data) = (
        tempfile::tempdir().expect("data"),
        tempfile::tempdir().expect("data"),
    );
    let e = embedded_run(embedded_data.path(), &spec, &["--run-id", "wide"]);
    assert_eq!(
        e.status.code(),
        Some(0),
        "{}{}",
        text(&e.stdout),
        text(&e.stderr)
    );
    let config = shared.to_str().expect("utf-8");
    let t = cluster.dag_run(
        client_data.path(),
        &spec,
        &["--run-id", "wide", "--config", config],
    );
    assert_eq!(t.status.code(), Some(0), "{}", cluster.explain(&t));
    let (e, t) = (json_of(&e), json_of(&t));
    assert_eq!(t["status"], "succeeded", "{}", t["error"]);
    assert_eq!(
        t["output"]["all"].as_array().map(Vec::len),
        Some(64),
        "{}",
        t["output"]
    );
    assert_eq!(t["output"], e["output"], "the same output on both engines");
    assert_eq!(timeline(&t), timeline(&e));
    assert_eq!(t["cost"]["fuel"], e["cost"]["fuel"]);
    // 64 calls at once: two children of 31 (the 2 left as activities).
    let describe = |id: &str| {
        Command::new(soma_tests::temporal::binary().expect("temporal CLI"))
            .args(["workflow", "describe", "--workflow-id", id])
            .args(["--address", cluster.server.address(), "-o", "json"])
            .stdin(Stdio::null())
            .output()
            .expect("temporal workflow describe")
    };
    for child in ["wide.calls-0-1", "wide.calls-0-2"] {
        let out = describe(child);
        assert!(out.status.success(), "{child}: {}", text(&out.stderr));
        let d: Value = serde_json::from_slice(&out.stdout).expect("json");
        let info = &d["workflowExecutionInfo"];
        assert_eq!(info["type"]["name"], "CallBatchWorkflow", "{d}");
        assert!(
            info["status"]
                .as_str()
                .is_some_and(|s| s.ends_with("COMPLETED")),
            "{d}"
        );
    }
    let third = describe("wide.calls-0-3");
    assert!(!third.status.success(), "no third child for 2 calls");
}
