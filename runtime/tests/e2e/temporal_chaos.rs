//! Chaos on the Temporal engine: two `soma worker`s on one task queue,
//! sharing one ledger in a real PostgreSQL, a real `temporal server
//! start-dev`; a worker killed (`kill -9`) or stopped (SIGTERM) mid-call,
//! and the server restarted mid-run. Every run must end with the
//! embedded engine's output and node statuses, `soma ledger check` must
//! pass, and the ledger must hold exactly one charge per call attempt.
//! PostgreSQL stopped for 5 s mid-run is one of the faults too.
//!
//! The call in flight is a `hostile-loop` node (it burns CPU until its
//! deadline; `catch: true` turns that into an output), so the fault lands
//! mid-call; which worker runs it is read from Temporal
//! (`temporal workflow describe`). Short `[orchestrator]` heartbeat and
//! sticky timeouts keep each test well under 20 s on an idle machine; every
//! wait is on a condition with a generous deadline.

use super::common::{bin, capsule_dir, json_of, soma, text};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use soma_tests::{
    postgres::Postgres,
    temporal::{self, TemporalServer, Worker},
};

/// Generous bound on every wait (a loaded 2-core CI machine).
const PATIENCE: Duration = Duration::from_secs(90);

/// A run with a fan-out, then one slow call (`slow`, ~4 s of CPU, caught;
/// the only call in flight while it runs), joined by `sink`: it succeeds
/// with the same output on both engines, whatever stopped the loop.
const SPEC: &str = r#"
name: chaos
nodes:
  - id: source
    capsule: echo
    input: { items: [1, 2, 3] }
  - id: square
    capsule: calculator
    for_each: "{{ nodes.source.output.items }}"
    input: { expr: "{{ item }}^2" }
  - id: slow
    capsule: loop
    needs: [square]
    timeout_ms: 4000
    catch: true
  - id: sink
    capsule: echo
    input: { squares: "{{ nodes.square.output }}", slow_failed: "{{ nodes.slow.output.failed }}" }
output: "{{ nodes.sink.output }}"
"#;

/// The activity id of `slow`'s first attempt (`NODE#ATTEMPT`).
const SLOW: &str = "slow#0";

/// Two workers on one queue over one PostgreSQL ledger, a Temporal dev
/// server, and the spec. Everything stops on drop.
struct Chaos {
    server: TemporalServer,
    workers: Vec<Worker>,
    config: PathBuf,
    spec: PathBuf,
    queue: String,
    _data: Vec<tempfile::TempDir>,
    dir: tempfile::TempDir,
    pg: Postgres,
}

impl Chaos {
    fn start(queue: &str) -> Self {
        Self::start_with(queue, "")
    }

    /// [`Chaos::start`] with `extra` appended to the shared config.
    fn start_with(queue: &str, extra: &str) -> Self {
        let pg = Postgres::start();
        let url = pg.create_database();
        let server = TemporalServer::start();
        let dir = tempfile::tempdir().expect("chaos dir");
        // Short timeouts: a dead worker's call is run again ~2 s after its
        // last heartbeat; a run waits at most 1 s for a dead worker's cache.
        let config = dir.path().join("soma.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 4\n\n\
                 [orchestrator]\nheartbeat_timeout_ms = 2000\nsticky_timeout_ms = 1000\n{extra}"
            ),
        )
        .expect("config");
        let mut spec = String::from("capsules:\n");
        for (alias, path) in [
            ("echo", soma_capsules::ECHO_COMPONENT),
            ("calculator", soma_capsules::CALCULATOR_COMPONENT),
            ("loop", soma_capsules::HOSTILE_LOOP_COMPONENT),
        ] {
            spec.push_str(&format!("  {alias}: {path}\n"));
        }
        spec.push_str(SPEC);
        let spec_path = dir.path().join("chaos.yaml");
        std::fs::write(&spec_path, spec).expect("spec");
        let mut data = Vec::new();
        let mut workers = Vec::new();
        for name in ["a", "b"] {
            let d = tempfile::tempdir().expect("worker data");
            workers.push(Worker::start_with(
                bin(),
                d.path(),
                (server.address(), queue),
                &capsule_dir(),
                dir.path(),
                temporal::WorkerOptions {
                    name: Some(name),
                    config: Some(&config),
                },
            ));
            data.push(d);
        }
        Self {
            server,
            workers,
            config,
            spec: spec_path,
            queue: queue.to_owned(),
            _data: data,
            dir,
            pg,
        }
    }

    /// `soma dag run SPEC --engine temporal --run-id RUN`, in the
    /// background (same config: the short heartbeat timeout is the run's).
    fn spawn_run(&self, run: &str) -> Child {
        let data = self.dir.path().join(format!("client-{run}"));
        soma(&data)
            .arg("--config")
            .arg(&self.config)
            .args(["dag", "run"])
            .arg(&self.spec)
            .arg("--capsule-path")
            .arg(capsule_dir())
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

    /// Whether some worker's log holds every one of `all`.
    fn worker_logged(&self, all: &[&str]) -> bool {
        self.workers.iter().any(|w| {
            let log = w.log();
            all.iter().all(|s| log.contains(s))
        })
    }

    /// The workers' and the server's logs, for failure messages.
    fn logs(&self) -> String {
        let mut s = String::new();
        for (i, w) in self.workers.iter().enumerate() {
            s.push_str(&format!("\nworker {i}: {}", w.log()));
        }
        s.push_str(&format!("\nserver: {}", self.server.log()));
        s
    }

    /// `temporal …ARGS --address A -o json`.
    fn temporal_json(&self, args: &[&str]) -> Option<Value> {
        let out = Command::new(temporal::binary().expect("temporal CLI"))
            .args(args)
            .args(["--address", self.server.address(), "-o", "json"])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Wait until run `run`'s `slow` call is running on a worker; which
    /// one (its index).
    fn wait_slow_running(&self, run: &str) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let describe = self.temporal_json(&["workflow", "describe", "--workflow-id", run]);
            let identity = describe.as_ref().and_then(|d| {
                d["pendingActivities"].as_array()?.iter().find(|a| {
                    a["activityId"] == SLOW
                        && a["state"].as_str().is_some_and(|s| s.ends_with("STARTED"))
                })?["lastWorkerIdentity"]
                    .as_str()
                    .map(str::to_owned)
            });
            if let Some(i) = identity.as_deref().and_then(|i| self.worker_of(i)) {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "slow never ran on a worker: {describe:?}{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Which worker a Temporal identity names (`soma@PID`, or the SDK's
    /// default `PID@HOST`).
    fn worker_of(&self, identity: &str) -> Option<usize> {
        identity
            .split('@')
            .filter_map(|p| p.parse::<u32>().ok())
            .find_map(|pid| self.workers.iter().position(|w| w.id() == pid))
    }

    /// Per activity id, how many times Temporal started it (the attempt
    /// of its last start, from the workflow history).
    fn activity_attempts(&self, run: &str) -> BTreeMap<String, u64> {
        let show = self
            .temporal_json(&["workflow", "show", "--workflow-id", run])
            .unwrap_or_else(|| panic!("temporal workflow show {run}{}", self.logs()));
        let events = show["events"].as_array().expect("events");
        let id_of = |e: &Value| e["eventId"].as_str().map(str::to_owned);
        let scheduled: BTreeMap<String, String> = events
            .iter()
            .filter_map(|e| {
                let a = e["activityTaskScheduledEventAttributes"].as_object()?;
                Some((id_of(e)?, a.get("activityId")?.as_str()?.to_owned()))
            })
            .collect();
        events
            .iter()
            .filter_map(|e| {
                let a = e["activityTaskStartedEventAttributes"].as_object()?;
                let from = a.get("scheduledEventId")?.as_str()?;
                let id = scheduled.get(from)?;
                Some((id.clone(), a.get("attempt")?.as_u64()?))
            })
            .filter(|(id, _)| id.contains('#'))
            .collect()
    }

    /// `soma ledger check` on the shared ledger passes; run `run`'s fuel
    /// entries as (node, attempt, fuel).
    fn ledger(&self, run: &str) -> Vec<(String, u64, u64)> {
        let data = self.dir.path().join("ledger-reader");
        let check = soma(&data)
            .arg("--config")
            .arg(&self.config)
            .args(["ledger", "check"])
            .output()
            .expect("ledger check");
        assert_eq!(check.status.code(), Some(0), "{}", text(&check.stderr));
        fuel_entries(&data, Some(&self.config), run)
    }

    /// Wait for the background run; its report (exit 0 asserted).
    fn finish(&self, child: Child) -> Value {
        let out = wait_output(child, PATIENCE)
            .unwrap_or_else(|| panic!("the run did not end within {PATIENCE:?}{}", self.logs()));
        assert_eq!(
            out.status.code(),
            Some(0),
            "stderr: {}{}",
            text(&out.stderr),
            self.logs()
        );
        json_of(&out)
    }
}

/// Wait for `child` to exit within `deadline`; its output (killed and
/// `None` when it does not).
fn wait_output(mut child: Child, deadline: Duration) -> Option<Output> {
    let until = Instant::now() + deadline;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().ok();
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fuel_entries(data: &Path, config: Option<&Path>, run: &str) -> Vec<(String, u64, u64)> {
    let mut ls = soma(data);
    if let Some(config) = config {
        ls.arg("--config").arg(config);
    }
    let ls = ls
        .args(["ledger", "ls", "--run", run, "--json", "--limit", "100000"])
        .output()
        .expect("ledger ls");
    assert_eq!(ls.status.code(), Some(0), "{}", text(&ls.stderr));
    let doc = json_of(&ls);
    let mut rows: Vec<_> = doc
        .as_array()
        .or_else(|| doc["entries"].as_array())
        .cloned()
        .unwrap_or_default()
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

/// Every activity but `slow`'s first attempt started once.
fn only_slow_ran_again(attempts: &BTreeMap<String, u64>) {
    for (activity, attempt) in attempts {
        if activity != SLOW {
            assert_eq!(*attempt, 1, "{activity} ran again: {attempts:?}");
        }
    }
}

/// Per node: (node, status, attempts).
fn timeline(doc: &Value) -> Vec<(String, String, u64)> {
    let mut rows: Vec<_> = doc["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap_or_default().to_owned(),
                n["status"].as_str().unwrap_or_default().to_owned(),
                n["attempts"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// The embedded engine's report of the spec and its ledger's fuel
/// entries (the reference).
fn reference(chaos: &Chaos, run: &str) -> (Value, Vec<(String, u64, u64)>) {
    let data = tempfile::tempdir().expect("data");
    let out = soma(data.path())
        .args(["dag", "run"])
        .arg(&chaos.spec)
        .arg("--capsule-path")
        .arg(capsule_dir())
        .args(["--json", "--run-id", run])
        .output()
        .expect("spawn soma dag run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc = json_of(&out);
    assert_eq!(doc["output"]["slow_failed"], true, "{doc}");
    assert_eq!(doc["output"]["squares"][2]["value"], 9, "{doc}");
    (doc, fuel_entries(data.path(), None, run))
}

/// The Temporal run matches the embedded reference: status, output, node
/// statuses and attempts; its ledger holds one fuel entry per call
/// attempt, equal to the reference's except for `slow` (its CPU burn is
/// the machine's), which has exactly one.
fn check_against_reference(chaos: &Chaos, run: &str, report: &Value) {
    let (expected, expected_fuel) = reference(chaos, run);
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["output"], expected["output"]);
    assert_eq!(timeline(report), timeline(&expected));
    let fuel = chaos.ledger(run);
    let other = |rows: &[(String, u64, u64)]| -> Vec<(String, u64, u64)> {
        rows.iter().filter(|r| r.0 != "slow").cloned().collect()
    };
    assert_eq!(other(&fuel), other(&expected_fuel), "{fuel:?}");
    let slow: Vec<_> = fuel.iter().filter(|r| r.0 == "slow").collect();
    assert_eq!(slow.len(), 1, "one charge for slow's one attempt: {fuel:?}");
    assert_eq!(slow[0].1, 0, "{fuel:?}");
    assert_eq!(
        fuel.len(),
        expected_fuel.len(),
        "one charge per call: {fuel:?}"
    );
}

/// `kill -9` of the worker running `slow`: the other worker runs `slow`
/// again (Temporal's second attempt of that one activity, after the
/// heartbeat timeout) and finishes the run; no other call runs twice, and
/// the dead worker never charged its unfinished call.
#[test]
fn a_worker_killed_mid_call_leaves_the_run_to_the_other_and_only_that_call_reruns() {
    let mut chaos = Chaos::start("chaos-kill");
    let child = chaos.spawn_run("k1");
    let busy = chaos.wait_slow_running("k1");
    chaos.workers[busy].kill();
    let report = chaos.finish(child);
    let attempts = chaos.activity_attempts("k1");
    assert_eq!(attempts.get(SLOW), Some(&2), "{attempts:?}{}", chaos.logs());
    only_slow_ran_again(&attempts);
    check_against_reference(&chaos, "k1", &report);
}

/// SIGTERM to the worker running `slow`: it stops polling, lets the call
/// finish and report (not handed back: Temporal started it once), then
/// exits 0; the other worker finishes the run.
#[test]
fn a_worker_stopped_with_sigterm_mid_call_finishes_that_call_then_exits() {
    let mut chaos = Chaos::start("chaos-term");
    let child = chaos.spawn_run("t1");
    let busy = chaos.wait_slow_running("t1");
    chaos.workers[busy].terminate();
    let report = chaos.finish(child);
    let status = chaos.workers[busy].wait_exit(PATIENCE);
    assert!(
        status.is_some_and(|s| s.success()),
        "the stopped worker exits 0 by itself: {status:?}{}",
        chaos.logs()
    );
    assert!(chaos.workers[busy].log().contains("worker stopped"));
    let attempts = chaos.activity_attempts("t1");
    assert!(
        attempts.values().all(|a| *a == 1),
        "nothing ran twice: {attempts:?}"
    );
    assert!(attempts.contains_key(SLOW), "{attempts:?}");
    check_against_reference(&chaos, "t1", &report);
}

/// The dev server restarted (killed, started again on the same port over
/// the same database) while `slow` runs: both workers poll again once it
/// is back, the run completes, and the shared ledger charges every
/// attempt once even if Temporal had `slow` run again.
#[test]
fn a_temporal_server_restarted_mid_run_lets_the_run_complete() {
    let mut chaos = Chaos::start("chaos-restart");
    let child = chaos.spawn_run("r1");
    chaos.wait_slow_running("r1");
    chaos.server.restart();
    // Both workers poll the restarted server (it only knows pollers that
    // polled it since it started).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let pollers = chaos
            .temporal_json(&["task-queue", "describe", "--task-queue", &chaos.queue])
            .unwrap_or_default();
        let mut polling: Vec<usize> = pollers["pollers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| chaos.worker_of(p["identity"].as_str()?))
            .collect();
        polling.sort_unstable();
        polling.dedup();
        let polling = polling.len() == chaos.workers.len();
        if polling {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workers did not poll the restarted server: {pollers}{}",
            chaos.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = chaos.finish(child);
    check_against_reference(&chaos, "r1", &report);
}

/// PostgreSQL stopped for 5 s while `slow` runs: the worker cannot charge
/// the finished call, so its activity fails with a retryable error naming
/// the ledger, and Temporal runs that one call again once the backoff has
/// passed; by then the database is back, the run completes as on the
/// embedded engine, and the shared ledger holds exactly one charge per
/// call (the re-run is the same attempt, so the same idempotency key).
#[test]
fn postgres_stopped_under_a_temporal_run_leaves_one_charge_per_call() {
    let mut chaos = Chaos::start("chaos-pg");
    let child = chaos.spawn_run("p1");
    chaos.wait_slow_running("p1");
    chaos.pg.stop();
    std::thread::sleep(Duration::from_secs(5));
    chaos.pg.resume();
    let report = chaos.finish(child);
    let attempts = chaos.activity_attempts("p1");
    assert!(
        attempts.get(SLOW).is_some_and(|a| *a >= 2),
        "slow's charge failed while the database was down, so Temporal ran it again: \
         {attempts:?}{}",
        chaos.logs()
    );
    only_slow_ran_again(&attempts);
    // The failed attempt's error (Temporal keeps only an activity's last
    // failure, and the last attempt succeeded): in the worker's log.
    assert!(
        chaos.worker_logged(&["could not record the call in the ledger"]),
        "the failed attempt named the ledger:{}",
        chaos.logs()
    );
    check_against_reference(&chaos, "p1", &report);
}

/// With prices, every call first holds its worst case on the shared
/// budgets. PostgreSQL stopped while `slow` runs and kept down for 9 s:
/// `slow`'s charge fails (retried by Temporal), and so does the retried
/// attempt's reservation. That is a retryable activity error naming the
/// budgets, not a failed node: Temporal tries the same attempt again
/// until the database is back, and the run ends as on the embedded
/// engine with one charge per call.
#[test]
fn postgres_down_when_a_call_starts_delays_the_call_on_temporal() {
    let mut chaos = Chaos::start_with("chaos-pg-hold", "[ledger]\nfuel_price_per_1k_micros = 1\n");
    let child = chaos.spawn_run("h1");
    chaos.wait_slow_running("h1");
    chaos.pg.stop();
    std::thread::sleep(Duration::from_secs(9));
    chaos.pg.resume();
    let report = chaos.finish(child);
    let attempts = chaos.activity_attempts("h1");
    assert!(
        attempts.get(SLOW).is_some_and(|a| *a >= 3),
        "slow's charge, then its retry's reservation, failed while the database was down: \
         {attempts:?}{}",
        chaos.logs()
    );
    only_slow_ran_again(&attempts);
    assert!(
        chaos.worker_logged(&["the call could not start", "budgets are unavailable"]),
        "a retried attempt could not reserve:{}",
        chaos.logs()
    );
    check_against_reference(&chaos, "h1", &report);
}

/// Two daemons on the same Temporal and PostgreSQL (tokens shared in the
/// database): a run started through daemon A, A `kill -9`ed while `slow`
/// runs — B answers for the run (it lives in Temporal, not in a daemon),
/// the run completes, A restarted answers for it too, and the ledger holds
/// one charge per call.
#[test]
fn a_daemon_killed_mid_run_leaves_the_run_to_temporal_and_the_other_daemon() {
    use soma_tests::daemon::{self as harness, DaemonProcess};
    let chaos = Chaos::start("chaos-daemons");
    let shared = std::fs::read_to_string(&chaos.config).expect("config");
    let daemon_config = format!(
        "{shared}engine = \"temporal\"\naddress = \"{}\"\ntask_queue = \"{}\"\n",
        chaos.server.address(),
        chaos.queue
    );
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("daemon data"))
        .collect();
    let configs: Vec<PathBuf> = dirs
        .iter()
        .map(|d| {
            let path = d.path().join("soma.toml");
            std::fs::write(&path, harness::config_text("", &daemon_config)).expect("config");
            path
        })
        .collect();
    let made = harness::soma(bin(), dirs[2].path())
        .arg("--config")
        .arg(&configs[2])
        .args([
            "token", "create", "--tenant", "acme", "--scopes", "run,read", "--json",
        ])
        .output()
        .expect("token create");
    assert!(made.status.success(), "{}", text(&made.stderr));
    let acme = json_of(&made)["token"].as_str().expect("token").to_owned();
    let a = DaemonProcess::spawn(bin(), dirs[0].path(), &configs[0]);
    let b = DaemonProcess::spawn(bin(), dirs[1].path(), &configs[1]);
    let spec = serde_json::json!({"dag": {
        "name": "chaos",
        "capsules": {"echo": "echo", "calculator": "calculator", "loop": "hostile-loop"},
        "nodes": [
            {"id": "source", "capsule": "echo", "input": {"items": [1, 2, 3]}},
            {"id": "square", "capsule": "calculator",
             "for_each": "{{ nodes.source.output.items }}", "input": {"expr": "{{ item }}^2"}},
            {"id": "slow", "capsule": "loop", "needs": ["square"], "timeout_ms": 4000, "catch": true},
            {"id": "sink", "capsule": "echo",
             "input": {"squares": "{{ nodes.square.output }}",
                       "slow_failed": "{{ nodes.slow.output.failed }}"}}
        ],
        "output": "{{ nodes.sink.output }}"
    }});
    let (s, v) = a.post("/v1/runs", &acme, &spec);
    assert_eq!(s, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    chaos.wait_slow_running(&run);
    let (data, config) = a.kill9();
    // B answers for the run while A is down, and sees it through.
    let (s, v) = b.get(&format!("/v1/runs/{run}"), &acme);
    assert_eq!((s, v["status"].as_str()), (200, Some("running")), "{v}");
    let report = b.wait_finished(&acme, &run, PATIENCE);
    assert_eq!(report["status"], "succeeded", "{report}{}", chaos.logs());
    assert_eq!(report["output"]["slow_failed"], true, "{report}");
    assert_eq!(report["output"]["squares"][2]["value"], 9, "{report}");
    // A restarted answers for it too.
    let a = DaemonProcess::spawn(bin(), &data, &config);
    let (s, v) = a.get(&format!("/v1/runs/{run}"), &acme);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["output"], report["output"]);
    assert_eq!(v["timeline"], report["timeline"]);
    // Nothing ran twice; one charge per call on the shared ledger.
    let attempts = chaos.activity_attempts(&run);
    assert!(attempts.values().all(|a| *a == 1), "{attempts:?}");
    let fuel = chaos.ledger(&run);
    assert_eq!(fuel.len(), 6, "source, 3 squares, slow, sink: {fuel:?}");
    assert!(fuel.iter().all(|(_, attempt, _)| *attempt == 0), "{fuel:?}");
}
