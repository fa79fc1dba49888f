//! `soma dag` end to end: the KAMACHIQ demo through the CLI, spec errors
//! with locations, and the crash test — a child `soma dag run` SIGKILLed at
//! random points and resumed, ending every time with the uninterrupted
//! run's output, no completed node executed twice and no double charge.

use super::common::{capsule_dir, json_of, soma, text};
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

fn spec_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kamachiq/kamachiq.yaml")
}

fn dag_run(data: &Path, run_id: &str) -> Command {
    dag_run_of(&spec_path(), data, run_id)
}

/// `soma dag run SPEC --json` with the Rust and the Python capsules' directories.
fn dag_run_of(spec: &Path, data: &Path, run_id: &str) -> Command {
    let python_dir = Path::new(soma_capsules::PY_KAMACHIQ_CODER_COMPONENT)
        .parent()
        .expect("python capsule dir");
    let mut c = soma(data);
    c.args(["dag", "run"])
        .arg(spec)
        .arg("--capsule-path")
        .arg(capsule_dir())
        .arg("--capsule-path")
        .arg(python_dir)
        .args(["--run-id", run_id, "--json"]);
    c
}

#[test]
fn kamachiq_runs_end_to_end_and_writes_artifact_and_cost_report() {
    let data = tempfile::tempdir().expect("tempdir");
    let out_dir = data.path().join("out");
    let out = dag_run(data.path(), "demo")
        .arg("--out")
        .arg(&out_dir)
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc = json_of(&out);
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(
        doc["auto_approval_rate"], 0.0,
        "the gate sent the first draft back"
    );
    let verdicts = doc["verdicts"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), 2);
    assert!(doc["cost"]["fuel"].as_u64().expect("fuel") > 0);
    for f in ["output.json", "run.json", "cost.json", "cost.md"] {
        assert!(out_dir.join(f).is_file(), "{f} written");
    }
    let files = doc["output"]["files"].as_object().expect("files");
    assert!(!files.is_empty());
    for name in files.keys() {
        assert!(
            out_dir.join("artifact").join(name).is_file(),
            "{name} written"
        );
    }
    check_artifact(&out_dir.join("artifact/calculator"));
    // status / ls / logs read the same run back.
    let status = soma(data.path())
        .args(["dag", "status", "demo", "--json"])
        .output()
        .expect("status");
    assert_eq!(json_of(&status)["output"], doc["output"]);
    let ls = soma(data.path())
        .args(["dag", "ls", "--json"])
        .output()
        .expect("ls");
    assert_eq!(json_of(&ls)[0]["status"], "succeeded");
    let logs = soma(data.path())
        .args(["dag", "logs", "demo", "--node", "plan.review"])
        .output()
        .expect("logs");
    assert!(
        text(&logs.stdout).contains("rejected"),
        "{}",
        text(&logs.stdout)
    );
    // The same run id cannot be reused; resuming a finished run is
    // idempotent: exit 0 and its result, driving nothing again.
    let again = dag_run(data.path(), "demo").output().expect("spawn");
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stderr));
    let resume = soma(data.path())
        .args(["dag", "resume", "demo", "--json"])
        .output()
        .expect("spawn");
    assert_eq!(resume.status.code(), Some(0), "{}", text(&resume.stderr));
    assert_eq!(json_of(&resume)["output"], doc["output"]);
}

/// The artifact is a real program: it compiles with rustc, and every test
/// case the gate approved passes against it.
fn check_artifact(dir: &Path) {
    let exe = dir.join("calculator-bin");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let built = Command::new(rustc)
        .args(["--edition", "2021", "-O", "-o"])
        .arg(&exe)
        .arg(dir.join("main.rs"))
        .output()
        .expect("spawn rustc");
    assert!(built.status.success(), "rustc: {}", text(&built.stderr));
    replay_approved_cases(dir, |expr| Command::new(&exe).arg(expr).output());
}

/// Every case of the artifact's `tests.json` (what the gate approved) run
/// through `run`: a number is printed within 1e-9 (relative), an error
/// exits 1 naming its code (`error: … (code)` on stderr).
fn replay_approved_cases(dir: &Path, run: impl Fn(&str) -> std::io::Result<Output>) {
    let tests: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tests.json")).expect("tests"))
            .expect("tests.json");
    assert_eq!(tests["review"]["approved"], true, "{tests}");
    let cases = tests["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10, "{tests}");
    for case in cases {
        let expr = case["expr"].as_str().expect("expr");
        let out = run(expr).expect("run the artifact");
        match case["expect"].as_f64() {
            Some(want) => {
                assert!(out.status.success(), "{expr}: {}", text(&out.stderr));
                let got: f64 = text(&out.stdout).trim().parse().expect("a number");
                assert!(
                    (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                    "{expr}: {got} ≠ {want}"
                );
            }
            None => {
                let code = case["expect"]["error"].as_str().expect("an error code");
                assert_eq!(out.status.code(), Some(1), "{expr} should fail: {case}");
                assert!(
                    text(&out.stderr).contains(&format!("({code})")),
                    "{expr}: {}",
                    text(&out.stderr)
                );
            }
        }
    }
}

/// Issue 19: the seed's goal, "build a Python command-line calculator", with
/// the Python coder capsule. The gate sends the first draft back as for
/// Rust; the artifact runs under `python3` on every approved case, its
/// generated unittest module passes, and the same goal through the Rust
/// spec is refused by name instead of getting a Rust program.
#[test]
fn kamachiq_builds_the_python_calculator_and_python3_passes_every_approved_case() {
    let data = tempfile::tempdir().expect("tempdir");
    let out_dir = data.path().join("out");
    let python_spec =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kamachiq/kamachiq-python.yaml");
    let out = dag_run_of(&python_spec, data.path(), "py")
        .arg("--out")
        .arg(&out_dir)
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc = json_of(&out);
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["verdicts"].as_array().map(Vec::len), Some(2), "{doc}");
    assert_eq!(doc["output"]["strategy"], "deterministic");
    let files: Vec<&String> = doc["output"]["files"]
        .as_object()
        .expect("files")
        .keys()
        .collect();
    assert_eq!(
        files,
        [
            "calculator/README.md",
            "calculator/calculator.py",
            "calculator/test_calculator.py",
            "calculator/tests.json"
        ]
    );
    let dir = out_dir.join("artifact/calculator");
    replay_approved_cases(&dir, |expr| {
        Command::new("python3")
            .arg(dir.join("calculator.py"))
            .arg(expr)
            .output()
    });
    let unit = Command::new("python3")
        .args(["-m", "unittest", "test_calculator"])
        .current_dir(&dir)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("spawn python3");
    assert!(unit.status.success(), "{}", text(&unit.stderr));

    // The Rust spec with a goal that asks for Python: refused by name.
    let out = dag_run(data.path(), "wrong-language")
        .args(["--set", "goal=build a Python command-line calculator"])
        .output()
        .expect("spawn");
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("unsupported-language"), "{all}");
}

#[test]
fn invalid_specs_are_refused_with_file_line_and_nothing_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("bad.yaml");
    std::fs::write(
        &spec,
        "name: bad\ncapsules:\n  echo: echo.wasm\nnodes:\n  - id: a\n    capsule: echo\n    needs: [b]\n  - id: b\n    capsule: echo\n    input: { x: \"{{ nodes.a.output }}\" }\n  - id: c\n    capsule: nope\n    input: { y: \"{{ nodes.a.output\" }\n",
    )
    .expect("write");
    let out = soma(dir.path())
        .args(["dag", "validate", "--offline"])
        .arg(&spec)
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(26), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.yaml:12:"),
        "unknown capsule located: {err}"
    );
    assert!(err.contains("bad.yaml:13:"), "bad template located: {err}");
    assert!(
        err.contains("a → b → a") || err.contains("b → a → b"),
        "cycle: {err}"
    );
    // `dag run` refuses it the same way and records nothing.
    let out = soma(dir.path())
        .args(["dag", "run"])
        .arg(&spec)
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(26));
    let ls = soma(dir.path())
        .args(["dag", "ls", "--json"])
        .output()
        .expect("ls");
    assert_eq!(json_of(&ls), serde_json::json!([]));
    // The published schema is the one the binary uses.
    let schema = soma(dir.path())
        .args(["dag", "schema"])
        .output()
        .expect("schema");
    let schema = json_of(&schema);
    assert!(schema["properties"]["nodes"].is_object(), "{schema}");
}

fn status_of(data: &Path, run: &str) -> Option<Value> {
    let out = soma(data)
        .args(["dag", "status", run, "--json"])
        .output()
        .expect("status");
    out.status.success().then(|| json_of(&out))
}

#[test]
fn sigkill_at_random_points_then_resume_gives_the_same_outputs() {
    let data = tempfile::tempdir().expect("tempdir");
    // The uninterrupted run: its output, and how long it takes once the
    // capsules are compiled (the first run fills the AOT cache).
    let warm = dag_run(data.path(), "warm-up");
    let args: Vec<_> = warm
        .get_args()
        .filter(|a| *a != "--json")
        .map(ToOwned::to_owned)
        .collect();
    let warm = Command::new(warm.get_program())
        .args(args)
        .env_remove("SOMA_CONFIG")
        .output()
        .expect("spawn");
    assert_eq!(warm.status.code(), Some(0), "{}", text(&warm.stderr));
    let start = Instant::now();
    let reference = dag_run(data.path(), "reference").output().expect("spawn");
    let took = start.elapsed();
    assert_eq!(
        reference.status.code(),
        Some(0),
        "{}",
        text(&reference.stderr)
    );
    let reference = json_of(&reference)["output"].clone();
    assert!(reference["files"].is_object());

    let seed = std::env::var("SOMA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash test seed {seed} (set SOMA_CRASH_SEED to replay); reference run {took:?}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let window = took.as_millis() as u64 + 5;
    // Progress lines come before the timeline (which starts after a blank line).
    let progress_lines = text(&warm.stderr)
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .count()
        .max(2);
    let mut kills_mid_run = 0;
    // First kills that left a created, unfinished run (not before `created`).
    let mut mid_dag = 0;
    for i in 0..20 {
        let run = format!("crash-{i}");
        // Kill the first run at a random point; then resume (sometimes
        // killing the resume too) until the run has finished.
        let mut cmd = dag_run(data.path(), &run);
        let mut child = if i % 2 == 0 {
            // At a random time.
            let child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn");
            std::thread::sleep(Duration::from_millis(rng.u64(0..window)));
            child
        } else {
            // After a random number of committed transitions (progress
            // lines are printed after each commit; --json is dropped so
            // they are).
            cmd.args(["--concurrency", "2"]);
            let args: Vec<_> = cmd
                .get_args()
                .filter(|a| *a != "--json")
                .map(ToOwned::to_owned)
                .collect();
            let mut plain = Command::new(cmd.get_program());
            plain.args(args).env_remove("SOMA_CONFIG");
            let mut child = plain
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn");
            let stderr = child.stderr.take().expect("stderr");
            let k = rng.usize(1..progress_lines);
            let _ = BufReader::new(stderr).lines().take(k).count();
            child
        };
        if child.try_wait().expect("wait").is_none() {
            kills_mid_run += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        if status_of(data.path(), &run).is_some_and(|s| s["status"] == "interrupted") {
            mid_dag += 1;
        }
        let mut rounds = 0;
        let finished = loop {
            rounds += 1;
            assert!(rounds < 12, "{run} did not finish after {rounds} resumes");
            let status = status_of(data.path(), &run);
            if let Some(s) = &status
                && s["status"] != "interrupted"
            {
                break s.clone();
            }
            let mut cmd = match status {
                // Killed before `created` was committed: start it again.
                None => dag_run(data.path(), &run),
                Some(_) => {
                    let mut c = soma(data.path());
                    c.args(["dag", "resume", &run, "--json"]);
                    c
                }
            };
            let mut child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn");
            if rng.bool() {
                std::thread::sleep(Duration::from_millis(rng.u64(0..window)));
                let _ = child.kill();
            }
            let _ = child.wait();
        };
        assert_eq!(finished["status"], "succeeded", "{run}: {finished}");
        assert_eq!(finished["output"], reference, "{run} output differs");
        // No completed node executed twice.
        let logs = soma(data.path())
            .args(["dag", "logs", &run, "--json"])
            .output()
            .expect("logs");
        let events: Vec<Value> = text(&logs.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("event json"))
            .collect();
        let calls = soma_tests::dag_checks::recorded_calls(&events);
        // Exactly one wall-time charge per recorded call, no charge without
        // a recorded call.
        let ledger = soma(data.path())
            .args(["ledger", "ls", "--run", &run, "--limit", "100000", "--json"])
            .output()
            .expect("ledger");
        let entries: Vec<Value> = serde_json::from_slice(&ledger.stdout).expect("ledger json");
        let charged = soma_tests::dag_checks::charged_calls(&entries);
        assert_eq!(charged, calls, "{run}: ledger and history disagree");
    }
    eprintln!(
        "{kills_mid_run} of 20 first runs were killed while running, {mid_dag} of them after the run was created"
    );
    assert!(mid_dag >= 6, "the kills should land mid-DAG");
}

#[test]
fn validate_prints_what_each_node_is_granted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("grants.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: grants\ncapsules:\n  notebook: {}\nnodes:\n  - {{ id: open, capsule: notebook }}\n  - id: closed\n    capsule: notebook\n    capabilities: {{ kv: false }}\n",
            soma_capsules::NOTEBOOK_COMPONENT
        ),
    )
    .expect("write");
    let out = soma(dir.path())
        .args(["dag", "validate"])
        .arg(&spec)
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let line = |node: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{node} ")))
            .unwrap_or_else(|| panic!("no line for {node}: {stdout}"))
            .split_whitespace()
            .skip(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    // The default policy allows kv and no llm model.
    assert_eq!(line("open"), "kv", "{stdout}");
    assert_eq!(
        line("closed"),
        "nothing (capabilities: kv: false)",
        "{stdout}"
    );
}
