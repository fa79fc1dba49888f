//! Sandbox and crash edges, attacked the way a hostile capsule author or an
//! unlucky operator would, against the real `soma` binary and a real
//! `soma daemon` process:
//!
//! - a capsule that logs, prints and fails with newlines and terminal
//!   escapes cannot forge a host log line or drive the terminal, and its
//!   `error` lines reach the daemon log at most at `[log] max_level`;
//! - a memory bomb that keeps retrying after the refusal is `memory-limit`
//!   (not deadline/fuel) under `soma run` and the daemon, and a bystander
//!   tenant is unharmed meanwhile;
//! - what the pooling allocator refuses, `soma run` refuses with the same
//!   message, naming the knob;
//! - `--json` prints exactly one JSON object on errors too;
//! - an unloadable capsule used only by `catch: true` nodes does not stop a
//!   DAG run, and resuming a finished run is idempotent;
//! - `kill -9` of the first command on a fresh data directory, at random
//!   moments, never leaves a database the next command cannot open.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use soma_tests::daemon::{self, Bystander, DaemonProcess, assert_unharmed, time_calls};

const BIN: &str = env!("CARGO_BIN_EXE_soma");

fn soma(data: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--data")
        .arg(data)
        .env_remove("SOMA_CONFIG")
        .env_remove("SOMA_SERVER")
        .env("NO_COLOR", "1");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Exactly one JSON object on stdout.
fn one_json_object(out: &Output) -> Value {
    let stdout = text(&out.stdout);
    let mut stream = serde_json::Deserializer::from_str(&stdout).into_iter::<Value>();
    let first = stream
        .next()
        .unwrap_or_else(|| panic!("no JSON on stdout; stderr: {}", text(&out.stderr)))
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout:?}"));
    assert!(first.is_object(), "not an object: {first}");
    assert!(
        stream.next().is_none(),
        "more than one JSON value: {stdout:?}"
    );
    first
}

/// No raw control byte a terminal would act on, and no line that starts
/// like a host log line the capsule made up.
fn assert_inert(what: &str, s: &str) {
    for bad in ['\x1b', '\x07', '\r', '\u{9b}'] {
        assert!(!s.contains(bad), "{what} holds a raw {bad:?}: {s:?}");
    }
    // Multi-line capsule text (its stderr) is printed with a `│` prefix on
    // every line: visibly the capsule's, never a line of the host's.
    for line in s.lines().filter(|l| !l.trim_start().starts_with('│')) {
        assert!(
            !line.trim_start().starts_with("2026-11-28T00:00:00Z"),
            "{what} holds a forged line: {line:?}\nall:\n{s}"
        );
        assert!(
            !line.contains("ERROR soma: forged") || line.contains("\\n"),
            "{what}: the forged text is on a line of its own: {line:?}"
        );
    }
}

fn write_component(dir: &Path, name: &str, wat: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, wat::parse_str(wat).expect("wat")).expect("write component");
    path
}

#[test]
fn a_capsule_cannot_forge_host_log_lines_or_drive_the_terminal() {
    let _shared = crate::shared();
    let data = tempfile::tempdir().expect("tmp");
    for input in ["{}", r#"{"fail": true}"#] {
        let out = soma(data.path())
            .args([
                "-v",
                "run",
                soma_capsules::HOSTILE_LOG_COMPONENT,
                "--input",
                input,
            ])
            .output()
            .expect("spawn");
        let stderr = text(&out.stderr);
        assert_inert("soma run's stderr", &stderr);
        // The capsule's line is there, escaped and attributed, at info.
        let line = stderr
            .lines()
            .find(|l| l.contains("soma::capsule") && l.contains("innocent"))
            .unwrap_or_else(|| panic!("no capsule log line in:\n{stderr}"));
        assert!(line.contains("INFO"), "capped at info: {line}");
        assert!(line.contains("capsule_level"), "own level kept: {line}");
        assert!(line.contains("hostile-log"), "attributed: {line}");
        assert!(
            line.contains("\\n2026-11-28T00:00:00Z ERROR soma: forged"),
            "{line}"
        );
        if input.contains("fail") {
            assert_eq!(out.status.code(), Some(10), "{stderr}");
            assert!(stderr.contains("capsule error"), "{stderr}");
        } else {
            assert_eq!(out.status.code(), Some(0), "{stderr}");
        }
    }
    // --json keeps the data exact (JSON escapes it) and is one object.
    let out = soma(data.path())
        .args(["run", soma_capsules::HOSTILE_LOG_COMPONENT, "--json"])
        .output()
        .expect("spawn");
    let doc = one_json_object(&out);
    assert!(
        doc["output"].as_str().is_some_and(
            |o| o.contains("\n2026-11-28T00:00:00Z ERROR soma: forged host line\r\x1b[2K")
        ),
        "{doc}"
    );
    assert_inert("soma run --json's stdout", &text(&out.stdout));
}

#[test]
fn a_memory_bomb_that_retries_is_memory_limit_under_soma_run() {
    let _shared = crate::shared();
    let data = tempfile::tempdir().expect("tmp");
    let bomb = soma_capsules::HOSTILE_REGROW_COMPONENT;
    let start = Instant::now();
    let out = soma(data.path())
        .args(["run", bomb, "--memory-mb", "32", "--timeout-ms", "300"])
        .output()
        .expect("spawn");
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(13),
        "memory-limit's exit code: {stderr}"
    );
    assert!(stderr.contains("(memory-limit)"), "{stderr}");
    assert!(
        stderr.contains("300 ms deadline"),
        "what ended it is recorded: {stderr}"
    );
    assert!(
        !stderr.contains("raise --timeout-ms"),
        "advice about the wrong knob: {stderr}"
    );
    assert!(stderr.contains("--memory-mb"), "names the knob: {stderr}");
    assert!(start.elapsed() < Duration::from_secs(20));

    let out = soma(data.path())
        .args([
            "run",
            bomb,
            "--memory-mb",
            "32",
            "--fuel",
            "20000000",
            "--json",
        ])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(13));
    let doc = one_json_object(&out);
    assert_eq!(doc["failure"]["class"], "memory-limit", "{doc}");
    assert_eq!(doc["failure"]["detail"]["limit"], 32 << 20, "{doc}");
    assert!(
        doc["failure"]["detail"]["then"]
            .as_str()
            .is_some_and(|t| t.contains("fuel")),
        "{doc}"
    );
    assert!(
        doc["usage"]["peak_memory_bytes"]
            .as_u64()
            .unwrap_or(u64::MAX)
            <= 32 << 20
    );
}

#[test]
fn what_the_pool_refuses_soma_run_refuses_with_the_same_message() {
    let _shared = crate::shared();
    let dir = tempfile::tempdir().expect("tmp");
    let cases = [
        (
            "two-memories.wasm",
            "(component (core module (memory 1) (memory 1)))",
            "engine.pool_memories_per_module",
        ),
        (
            "big-table.wasm",
            "(component (core module (table 30000 funcref)))",
            "engine.pool_table_elements",
        ),
        (
            "huge-memory.wasm",
            "(component (core module (memory 20000)))",
            "engine.max_memory_mb",
        ),
    ];
    for (name, wat, knob) in cases {
        let path = write_component(dir.path(), name, wat);
        let mut messages = Vec::new();
        for allocator in ["on-demand", "pooling"] {
            let data = dir.path().join(format!("data-{allocator}"));
            let out = soma(&data)
                .args(["run"])
                .arg(&path)
                .args(["--allocator", allocator])
                .output()
                .expect("spawn");
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(20), "{name} {allocator}: {stderr}");
            assert!(
                stderr.contains(knob),
                "{name} {allocator} names {knob}: {stderr}"
            );
            assert!(!stderr.contains("byte offset 0"), "{stderr}");
            assert_eq!(
                stderr.matches("invalid component").count(),
                1,
                "printed once: {stderr}"
            );
            messages.push(stderr);
        }
        assert_eq!(messages[0], messages[1], "{name}: one acceptance rule");
    }
}

#[test]
fn json_errors_are_exactly_one_object_with_the_usual_exit_code() {
    let _shared = crate::shared();
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let not_wasm = dir.path().join("not.wasm");
    std::fs::write(&not_wasm, "hello").expect("write");
    // A load failure.
    let out = soma(&data)
        .arg("run")
        .arg(&not_wasm)
        .arg("--json")
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(20));
    let doc = one_json_object(&out);
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["error"]["class"], "invalid-component", "{doc}");
    assert_eq!(doc["error"]["exit_code"], 20);
    // A missing file.
    let out = soma(&data)
        .args(["run", "/nonexistent/x.wasm", "--json"])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(one_json_object(&out)["ok"], false);
    // A DAG whose capsule fails to load (no catch: the run cannot start).
    let spec = dir.path().join("bad.yaml");
    std::fs::write(
        &spec,
        format!(
            "version: 1\nname: bad\ncapsules:\n  bad: {}\nnodes:\n  - id: a\n    capsule: bad\n",
            not_wasm.display()
        ),
    )
    .expect("spec");
    let out = soma(&data)
        .args(["dag", "run"])
        .arg(&spec)
        .arg("--json")
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(20), "{}", text(&out.stderr));
    let doc = one_json_object(&out);
    assert_eq!(doc["error"]["class"], "invalid-component", "{doc}");
    // An invalid spec, and an unknown run.
    std::fs::write(&spec, "version: 7\n").expect("spec");
    let out = soma(&data)
        .args(["dag", "run"])
        .arg(&spec)
        .arg("--json")
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(26));
    one_json_object(&out);
    for args in [
        &["dag", "status", "nope", "--json"][..],
        &["dag", "resume", "nope", "--json"][..],
    ] {
        let out = soma(&data).args(args).output().expect("spawn");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(one_json_object(&out)["ok"], false, "{args:?}");
    }
}

#[test]
fn an_unloadable_capsule_under_catch_is_data_and_resume_is_idempotent() {
    let _shared = crate::shared();
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let broken = write_component(
        dir.path(),
        "broken.wasm",
        "(component (core module (memory 1) (memory 1)))",
    );
    let spec = dir.path().join("catch.yaml");
    std::fs::write(
        &spec,
        format!(
            "version: 1\nname: catchy\ncapsules:\n  echo: {}\n  broken: {}\nnodes:\n  \
             - id: good\n    capsule: echo\n    input: {{ n: 1 }}\n  \
             - id: risky\n    capsule: broken\n    catch: true\n\
             output:\n  good: \"{{{{ nodes.good.output }}}}\"\n  risky: \"{{{{ nodes.risky.output }}}}\"\n",
            soma_capsules::ECHO_COMPONENT,
            broken.display()
        ),
    )
    .expect("spec");
    let out = soma(&data)
        .args(["dag", "run"])
        .arg(&spec)
        .args(["--run-id", "catchy", "--json"])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc = one_json_object(&out);
    assert_eq!(doc["output"]["good"], json!({"n": 1}), "{doc}");
    assert_eq!(doc["output"]["risky"]["failed"], true, "{doc}");
    assert_eq!(
        doc["output"]["risky"]["class"], "invalid-component",
        "{doc}"
    );
    assert!(
        doc["output"]["risky"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("engine.pool_memories_per_module")),
        "{doc}"
    );
    // A supervisor that always resumes: exit 0 and the same result, twice.
    for _ in 0..2 {
        let resumed = soma(&data)
            .args(["dag", "resume", "catchy", "--json"])
            .output()
            .expect("spawn");
        assert_eq!(resumed.status.code(), Some(0), "{}", text(&resumed.stderr));
        assert_eq!(one_json_object(&resumed)["output"], doc["output"]);
    }
    let plain = soma(&data)
        .args(["dag", "resume", "catchy"])
        .output()
        .expect("spawn");
    assert_eq!(plain.status.code(), Some(0), "{}", text(&plain.stderr));
    assert!(text(&plain.stderr).contains("already finished"));
}

#[test]
fn killing_the_first_command_on_a_fresh_data_dir_never_breaks_the_next() {
    let _shared = crate::shared();
    let root = tempfile::tempdir().expect("tmp");
    let mut rng = fastrand::Rng::with_seed(0x5eed_50ba);
    let tries = 120;
    let (mut left_a_file, mut finished_first) = (0, 0);
    let start = Instant::now();
    for i in 0..tries {
        let data = root.path().join(format!("d{i}"));
        let mut first = soma(&data)
            .args([
                "token", "create", "--tenant", "t", "--scopes", "run", "--json",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        // A random moment in the first 40 ms: before, during or after the
        // database file is created.
        std::thread::sleep(Duration::from_micros(rng.u64(0..40_000)));
        let _ = first.kill();
        let status = first.wait().expect("wait");
        finished_first += usize::from(status.success());
        left_a_file += usize::from(data.join("soma.redb").exists());
        let next = soma(&data)
            .args(["dag", "ls", "--json"])
            .output()
            .expect("spawn");
        assert!(
            next.status.success(),
            "try {i}: the next command failed after a kill -9 of the first: {}",
            text(&next.stderr)
        );
        assert!(serde_json::from_slice::<Value>(&next.stdout).is_ok());
        // It is a working database: it takes a write.
        if i % 10 == 0 {
            let write = soma(&data)
                .args([
                    "token", "create", "--tenant", "t", "--scopes", "run", "--json",
                ])
                .output()
                .expect("spawn");
            assert!(write.status.success(), "try {i}: {}", text(&write.stderr));
        }
    }
    eprintln!(
        "{tries} tries in {:?}: {left_a_file} left a database file, {finished_first} finished before the kill",
        start.elapsed()
    );
    assert!(
        left_a_file > 0,
        "no kill landed after the database was created"
    );
    assert!(
        finished_first < tries,
        "no kill landed before the command finished"
    );
}

#[test]
fn a_half_created_database_is_recreated_and_real_data_never_replaced() {
    let _shared = crate::shared();
    let dir = tempfile::tempdir().expect("tmp");
    // Zero length, and a header page without redb's magic (what a kill -9
    // during creation left before this fix).
    for (name, content) in [
        ("empty", vec![]),
        ("header", {
            let mut v = vec![0u8; 1 << 20];
            v[9..200].fill(7);
            v
        }),
    ] {
        let data = dir.path().join(name);
        std::fs::create_dir_all(&data).expect("mkdir");
        std::fs::write(data.join("soma.redb"), &content).expect("write");
        let out = soma(&data)
            .args(["dag", "ls", "--json"])
            .output()
            .expect("spawn");
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
    }
    // Not a database, with data past the header: refused, named, untouched.
    let data = dir.path().join("garbage");
    std::fs::create_dir_all(&data).expect("mkdir");
    let garbage: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(data.join("soma.redb"), &garbage).expect("write");
    let out = soma(&data).args(["dag", "ls"]).output().expect("spawn");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a Soma database"), "{stderr}");
    assert!(
        !stderr.contains("another"),
        "blames the wrong cause: {stderr}"
    );
    assert_eq!(
        std::fs::read(data.join("soma.redb")).expect("kept"),
        garbage
    );
}

#[test]
fn hostile_capsules_against_the_daemon_leave_its_log_and_a_bystander_unharmed() {
    let _alone = crate::alone();
    let data = tempfile::tempdir().expect("tmp");
    let attacker = daemon::token(Path::new(BIN), data.path(), "mallory", "run");
    let bystander = daemon::token(Path::new(BIN), data.path(), "bob", "run");
    let extra = format!(
        "[[daemon.capsules]]\nname = \"hostile-log\"\npath = \"{}\"\n\
         [[daemon.capsules]]\nname = \"hostile-regrow\"\npath = \"{}\"\n",
        soma_capsules::HOSTILE_LOG_COMPONENT,
        soma_capsules::HOSTILE_REGROW_COMPONENT
    );
    let (d, log) = DaemonProcess::start_logged(Path::new(BIN), data.path(), "", &extra, "info");

    // While the daemon holds the database, another command names that cause.
    let locked = soma(data.path())
        .args(["dag", "ls"])
        .output()
        .expect("spawn");
    assert_eq!(locked.status.code(), Some(1));
    assert!(
        text(&locked.stderr).contains("another process has it open"),
        "{}",
        text(&locked.stderr)
    );

    // Log forging.
    let (status, v) = d.post(
        "/v1/runs",
        &attacker,
        &json!({"capsule": "hostile-log", "input": {}}),
    );
    assert_eq!(status, 200, "{v}");
    let line = log.wait_for(Duration::from_secs(10), |l| {
        l.contains("soma::capsule") && l.contains("innocent")
    });
    assert!(
        line.contains("INFO"),
        "an error of the capsule is not a host error: {line}"
    );
    assert!(!line.contains("ERROR soma::capsule"), "{line}");
    assert!(line.contains("capsule_level"), "{line}");
    assert_inert("the daemon's log", &log.lines().join("\n"));

    // The retrying memory bomb, with a bystander timing its calls.
    let idle = time_calls(&d.url, &bystander, 20);
    let before = d.usage();
    let by = Bystander::start(&d.url, &bystander, Duration::from_millis(5));
    for _ in 0..5 {
        let (status, v) = d.post(
            "/v1/runs",
            &attacker,
            &json!({"capsule": "hostile-regrow", "limits": {"memory_mb": 32, "timeout_ms": 300}}),
        );
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["failure"]["class"], "memory-limit", "{v}");
        let message = v["failure"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("deadline"), "{message}");
        assert!(
            message.contains("the request's limits.memory_mb"),
            "the caller set the limit, so the advice names the caller's knob: {message}"
        );
    }
    let during = by.finish();
    let after = d.usage();
    eprintln!(
        "bystander median idle {:?}, during {:?}; daemon RSS {} → {} KiB",
        idle.median(),
        during.median(),
        before.rss_kib,
        after.rss_kib
    );
    assert_unharmed(&idle, &during, 3.0);
    assert!(
        after.rss_kib.saturating_sub(before.rss_kib) < 128 * 1024,
        "RSS grew from {} to {} KiB",
        before.rss_kib,
        after.rss_kib
    );
    assert_inert("the daemon's log", &log.lines().join("\n"));
}
