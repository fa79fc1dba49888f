//! The operator's `[dag]` ceilings hold for everything a run does, not
//! only for the spec as submitted: nodes a planner adds at run time (their
//! retries, gate rounds and count), the total of rendered inputs a run
//! journals, and runs made with `soma dag run` on the node itself; and a
//! run whose pinned capsule exists nowhere any more ends, naming it.

use std::{path::Path, process::Command, time::Duration};

use serde_json::{Value, json};
use sha2::Digest as _;
use soma_tests::daemon::{DaemonProcess, token};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

/// The KAMACHIQ planner's spec, as the API takes it; the planner's plan
/// holds a review gate with `max_rounds` rounds and seven nodes.
fn planner_spec(max_rounds: u32) -> Value {
    json!({
        "version": 1,
        "name": "planned",
        "capsules": {
            "planner": "kamachiq-planner",
            "coder": "kamachiq-coder",
            "calculator": "calculator",
            "reviewer": "kamachiq-reviewer",
        },
        "defaults": {"limits": {"fuel": 2_000_000_000u64}},
        "policy": {"concurrency": 4},
        "nodes": [{"id": "plan", "capsule": "planner",
                   "input": {"goal": "build a command-line calculator", "max_rounds": max_rounds}}],
    })
}

fn node_failure<'a>(report: &'a Value, node: &str) -> &'a Value {
    report["timeline"]
        .as_array()
        .and_then(|t| t.iter().find(|n| n["node"] == node))
        .map_or(&Value::Null, |n| &n["failure"])
}

#[test]
fn a_plan_larger_than_dag_max_expansion_nodes_is_refused_naming_the_key() {
    let _shared = crate::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(bin(), dir.path(), "acme", "run,read");
    let d = DaemonProcess::start(bin(), dir.path(), "", "[dag]\nmax_expansion_nodes = 5\n");
    let (status, v) = d.post("/v1/runs", &acme, &json!({"dag": planner_spec(2)}));
    assert_eq!(status, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let report = d.wait_finished(&acme, &run, Duration::from_secs(60));
    let failure = node_failure(&report, "plan");
    assert_eq!(failure["class"], "invalid-plan", "{report}");
    assert!(
        failure.to_string().contains("dag.max_expansion_nodes is 5"),
        "{failure}"
    );
}

#[test]
fn gate_rounds_in_a_plan_above_dag_max_rounds_are_refused() {
    let _shared = crate::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(bin(), dir.path(), "acme", "run,read");
    let d = DaemonProcess::start(bin(), dir.path(), "", "[dag]\nmax_rounds = 2\n");
    let (status, v) = d.post("/v1/runs", &acme, &json!({"dag": planner_spec(5)}));
    assert_eq!(status, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let report = d.wait_finished(&acme, &run, Duration::from_secs(60));
    let failure = node_failure(&report, "plan");
    assert_eq!(failure["class"], "invalid-plan", "{report}");
    let message = failure.to_string();
    assert!(
        message.contains("gate.max_rounds") && message.contains("dag.max_rounds"),
        "{message}"
    );
    // Within the ceiling the same plan runs.
    let (status, v) = d.post("/v1/runs", &acme, &json!({"dag": planner_spec(2)}));
    assert_eq!(status, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let report = d.wait_finished(&acme, &run, Duration::from_secs(120));
    assert_eq!(report["status"], "succeeded", "{report}");
}

#[test]
fn a_runs_rendered_inputs_are_capped_in_total() {
    let _shared = crate::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(bin(), dir.path(), "acme", "run,read");
    let d = DaemonProcess::start(
        bin(),
        dir.path(),
        "",
        "[dag]\nmax_run_rendered_bytes = 8192\n",
    );
    // Forty instances of ~500 bytes each: every one far under the per-node
    // cap (1 MiB), together past the run's 8 KiB.
    let spec = "version: 1\nname: many\ncapsules: {e: echo}\ninputs: {items: {}}\n\
                nodes:\n  - {id: f, capsule: e, for_each: \"{{ input.items }}\", input: {x: \"{{ item }}\"}}\n";
    let items: Vec<String> = (0..40)
        .map(|k| format!("{k:03}{}", "x".repeat(500)))
        .collect();
    let (status, v) = d.post(
        "/v1/runs",
        &acme,
        &json!({"dag": spec, "input": {"items": items}}),
    );
    assert_eq!(status, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let report = d.wait_finished(&acme, &run, Duration::from_secs(60));
    assert_eq!(report["status"], "failed", "{report}");
    let text = report.to_string();
    assert!(text.contains("render-limit"), "{text}");
    assert!(text.contains("dag.max_run_rendered_bytes"), "{text}");
    // What the run journaled stays under the cap: its history is small.
    let events = soma_tests::daemon::client()
        .get(format!("{}/v1/runs/{run}/events", d.url))
        .bearer_auth(&acme)
        .send()
        .expect("events")
        .text()
        .expect("text");
    let started = events.matches("event: started").count();
    assert!(
        (1..=16).contains(&started),
        "{started} instances started with 8 KiB of rendered inputs"
    );
}

/// `soma --config CONFIG --data DATA dag run SPEC --json` on this node.
fn local_dag_run(data: &Path, config: &str, spec: &str) -> (Option<i32>, Value, String) {
    let config_path = data.join("soma.toml");
    std::fs::write(&config_path, config).expect("config");
    let spec_path = data.join("spec.yaml");
    std::fs::write(&spec_path, spec).expect("spec");
    let capsules = Path::new(soma_capsules::ECHO_COMPONENT)
        .parent()
        .expect("capsule dir");
    let out = Command::new(bin())
        .arg("--config")
        .arg(&config_path)
        .arg("--data")
        .arg(data)
        .env_remove("SOMA_CONFIG")
        .args(["dag", "run"])
        .arg(&spec_path)
        .arg("--capsule-path")
        .arg(capsules)
        .arg("--json")
        .output()
        .expect("spawn soma dag run");
    let doc = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code(),
        doc,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn local_dag_run_applies_the_dag_ceilings_of_soma_toml() {
    let _shared = crate::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    // A spec value above a ceiling: refused before anything runs, naming
    // the key, as the daemon refuses it.
    let spec = "version: 1\nname: stubborn\ncapsules: {e: echo.wasm}\n\
                nodes:\n  - {id: a, capsule: e, retries: {max: 5}}\n";
    let (code, doc, stderr) = local_dag_run(dir.path(), "[dag]\nmax_retries = 1\n", spec);
    assert_eq!(code, Some(26), "invalid-spec: {doc} {stderr}");
    assert_eq!(doc["error"]["class"], "invalid-spec", "{doc}");
    assert!(doc.to_string().contains("dag.max_retries"), "{doc}");

    // A run-time ceiling: the fan-out is larger than dag.max_fan_out
    // (the spec's own default policy would allow it).
    let spec = "version: 1\nname: fan\ncapsules: {e: echo.wasm}\n\
                nodes:\n  - {id: f, capsule: e, for_each: \"{{ input.items }}\"}\n\
                inputs: {items: {default: [1, 2, 3, 4, 5, 6, 7, 8]}}\n";
    let (code, doc, stderr) = local_dag_run(dir.path(), "[dag]\nmax_fan_out = 4\n", spec);
    assert_ne!(code, Some(0), "{doc} {stderr}");
    assert_eq!(doc["status"], "failed", "{doc} {stderr}");
    let text = doc.to_string();
    assert!(text.contains("expansion-limit"), "{text}");
    assert!(text.contains("dag.max_fan_out 4"), "{text}");
}

#[test]
fn a_run_whose_pinned_capsule_exists_nowhere_fails_naming_the_digest() {
    let _shared = crate::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(bin(), dir.path(), "acme", "run,read");
    // A catalog entry of its own, from a file the test removes later.
    let component = dir.path().join("gone.wasm");
    std::fs::copy(soma_capsules::FLAKY_COMPONENT, &component).expect("copy");
    let bytes = std::fs::read(&component).expect("read");
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
    let entry = format!(
        "[[daemon.capsules]]\nname = \"gone\"\npath = \"{}\"\n",
        component.display()
    );
    let d = DaemonProcess::start(bin(), dir.path(), "", &entry);
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_millis() as u64)
        + 600_000;
    let spec = "version: 1\nname: pinned\ncapsules: {f: gone}\ninputs: {until: {}}\n\
         nodes:\n  - id: a\n    capsule: f\n    input: {until_ms: \"{{ input.until }}\"}\n    \
         retries: {max: 10, backoff_ms: 5000, max_backoff_ms: 5000, jitter: false}\n";
    let (status, v) = d.post(
        "/v1/runs",
        &acme,
        &json!({"dag": spec, "input": {"until": until}}),
    );
    assert_eq!(status, 202, "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    std::thread::sleep(Duration::from_millis(500));
    // The daemon dies; the operator removes the capsule from the catalog
    // and the file is gone (it was never in the blob cache).
    let (data, _) = d.kill9();
    std::fs::remove_file(&component).expect("remove");
    let d = DaemonProcess::start(bin(), &data, "", "");
    let report = d.wait_finished(&acme, &run, Duration::from_secs(30));
    assert_eq!(report["status"], "failed", "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&digest),
        "the error names the digest: {report}"
    );
    assert!(
        error.contains("[[daemon.capsules]]"),
        "and what to do: {report}"
    );
    // It stays failed across another restart (not resumed again).
    let (data, _) = d.kill9();
    let d = DaemonProcess::start(bin(), &data, "", "");
    let (status, v) = d.get(&format!("/v1/runs/{run}"), &acme);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "failed", "{v}");
}
