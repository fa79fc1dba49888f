//! The `soma` binary end to end: outputs, JSON, exit codes, scaffolding.

use super::common::text;
use std::process::{Command, Output};

fn soma(data: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_soma"))
        .args(args)
        .arg("--data")
        .arg(data)
        .env_remove("SOMA_CONFIG")
        .output()
        .expect("spawn soma")
}

#[test]
fn run_calculator_prints_98_and_usage_as_json() {
    let data = tempfile::tempdir().expect("tempdir");
    let calc = soma_capsules::CALCULATOR_COMPONENT;
    let out = soma(
        data.path(),
        &["run", calc, "--input", r#"{"expr":"2*(3+4)^2"}"#],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), r#"{"value":98}"#);
    assert!(
        text(&out.stderr).contains("fuel"),
        "usage summary on stderr"
    );

    let out = soma(
        data.path(),
        &["run", calc, "--input", r#"{"expr":"2*(3+4)^2"}"#, "--json"],
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["output"]["value"], 98);
    assert_eq!(doc["ok"], true);
    assert!(doc["usage"]["fuel_consumed"].as_u64().expect("fuel") > 0);
    assert!(doc["usage"]["peak_memory_bytes"].as_u64().expect("mem") > 0);
    assert!(
        doc["capsule"]["digest"]
            .as_str()
            .expect("digest")
            .starts_with("sha256:")
    );
}

#[test]
fn failure_classes_have_distinct_exit_codes() {
    let data = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], i32, &str); 6] = [
        (
            &[
                "run",
                soma_capsules::CALCULATOR_COMPONENT,
                "--input",
                r#"{"expr":"1/0"}"#,
            ],
            10,
            "capsule-error",
        ),
        (
            &[
                "run",
                soma_capsules::HOSTILE_LOOP_COMPONENT,
                "--fuel",
                "1000000",
            ],
            11,
            "out-of-fuel",
        ),
        (
            &[
                "run",
                soma_capsules::HOSTILE_LOOP_COMPONENT,
                "--timeout-ms",
                "100",
                "--fuel",
                "1000000000000000",
            ],
            12,
            "deadline-exceeded",
        ),
        (
            &[
                "run",
                soma_capsules::HOSTILE_MEMORY_COMPONENT,
                "--memory-mb",
                "16",
            ],
            13,
            "memory-limit",
        ),
        (
            &["run", soma_capsules::HOSTILE_RECURSION_COMPONENT],
            14,
            "stack-overflow",
        ),
        (&["run", soma_capsules::HOSTILE_TRAP_COMPONENT], 15, "trap"),
    ];
    for (args, code, class) in cases {
        let out = soma(data.path(), args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(class), "{args:?}: {stderr}");
    }
    let out = soma(
        data.path(),
        &["run", soma_capsules::HOSTILE_OUTPUT_COMPONENT, "--json"],
    );
    assert_eq!(out.status.code(), Some(16));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["failure"]["class"], "output-limit");
}

#[test]
fn invalid_components_exit_20_with_the_reason() {
    let data = tempfile::tempdir().expect("tempdir");
    let junk = data.path().join("junk.wasm");
    std::fs::write(&junk, b"definitely not wasm").expect("write");
    let out = soma(data.path(), &["run", junk.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(20));
    assert!(
        text(&out.stderr).contains("not a WebAssembly binary"),
        "{}",
        text(&out.stderr)
    );

    let out = soma(
        data.path(),
        &["inspect", soma_capsules::HOSTILE_IMPORT_COMPONENT],
    );
    assert_eq!(out.status.code(), Some(20));
    assert!(
        text(&out.stderr).contains("soma:evil/backdoor"),
        "{}",
        text(&out.stderr)
    );

    let out = soma(data.path(), &["run", "/nonexistent/x.wasm"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a missing file is not an invalid component"
    );
}

#[test]
fn inspect_json_describes_the_capsule() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = soma(
        data.path(),
        &["inspect", soma_capsules::NOTEBOOK_COMPONENT, "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["manifest"]["name"], "notebook");
    assert_eq!(doc["manifest"]["wants_kv"], true);
    assert_eq!(doc["manifest"]["contract"], "soma:capsule@0.2.0");
    assert_eq!(
        doc["manifest"]["wants_llm_models"],
        serde_json::json!(["small"])
    );
    let imports = doc["imports"].as_array().expect("imports");
    assert!(
        imports
            .iter()
            .any(|i| i.as_str().is_some_and(|s| s.starts_with("soma:capsule/kv")))
    );
    assert_eq!(doc["exports"], serde_json::json!(["describe", "run"]));

    // A capsule built against the frozen 0.1.0 contract: its closed record
    // shows as requests (0.1.0's bare host names are kept as http's wants;
    // they are not patterns, so they grant nothing).
    let out = soma(
        data.path(),
        &["inspect", soma_capsules::COMPAT_V0_1_COMPONENT, "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let m = &doc["manifest"];
    assert_eq!(m["contract"], "soma:capsule@0.1.0");
    assert_eq!(m["wants_kv"], true);
    assert_eq!(m["wants_dirs"], serde_json::json!(["/data"]));
    assert_eq!(m["wants_http"], serde_json::json!(["example.com"]));
    assert_eq!(m["wants_other"], serde_json::json!([]));
    let out = soma(
        data.path(),
        &["inspect", soma_capsules::COMPAT_V0_1_COMPONENT],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("contract soma:capsule@0.1.0"), "{shown}");
    assert!(
        shown.contains("wants    kv, llm:small, dir:/data, http:example.com"),
        "{shown}"
    );
}

#[test]
fn config_check_names_the_bad_line() {
    let data = tempfile::tempdir().expect("tempdir");
    let good = data.path().join("good.toml");
    std::fs::write(
        &good,
        "[limits]\nfuel = 1000\n[engine]\nallocator = \"on-demand\"\n",
    )
    .expect("write");
    let out = soma(
        data.path(),
        &["config", "check", good.to_str().expect("utf8")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let bad = data.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nfuel = 1000\ntimeout = 5\n").expect("write");
    let out = soma(
        data.path(),
        &["config", "check", bad.to_str().expect("utf8")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("timeout") && err.contains("line 3"), "{err}");

    // A run with the config applies its limits.
    let out = soma(
        data.path(),
        &[
            "--config",
            good.to_str().expect("utf8"),
            "run",
            soma_capsules::HOSTILE_LOOP_COMPONENT,
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(11),
        "fuel = 1000 from the config: {}",
        text(&out.stderr)
    );
}

#[test]
fn every_command_has_help() {
    let data = tempfile::tempdir().expect("tempdir");
    for cmd in [
        &["--help"][..],
        &["run", "--help"],
        &["inspect", "--help"],
        &["new", "--help"],
        &["build", "--help"],
        &["config", "--help"],
    ] {
        let out = soma(data.path(), cmd);
        assert_eq!(out.status.code(), Some(0), "{cmd:?}");
        assert!(text(&out.stdout).contains("Usage"), "{cmd:?}");
    }
}

/// `soma new` scaffolds a crate that `soma build` turns into a component
/// that `soma run` runs. Builds a real wasm32-wasip2 crate (shares a target
/// dir across runs so it is incremental).
#[test]
fn new_build_run_round_trip() {
    let data = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let out = soma(
        data.path(),
        &[
            "new",
            "shouty-echo",
            "--path",
            work.path().to_str().expect("utf8"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let krate = work.path().join("shouty-echo");
    assert!(krate.join("src/lib.rs").exists());

    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/scaffold-test");
    let out = Command::new(env!("CARGO_BIN_EXE_soma"))
        .args(["build", "--json", "--path"])
        .arg(&krate)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("soma build");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let wasm = built["component"].as_str().expect("path").to_owned();

    let out = soma(
        data.path(),
        &["run", &wasm, "--input", r#"{"text":"hello"}"#],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), r#"{"text":"HELLO"}"#);

    let out = soma(
        data.path(),
        &[
            "new",
            "Bad Name",
            "--path",
            work.path().to_str().expect("utf8"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
}

/// `soma new --lang python` scaffolds a Python capsule that `soma build`
/// turns into a component (componentize-py, installed on first use) that
/// `soma run` runs; a second build with unchanged sources is skipped.
#[test]
fn new_python_build_run_round_trip() {
    let data = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let parent = work.path().to_str().expect("utf8");
    let out = soma(
        data.path(),
        &["new", "shouty-py", "--lang", "python", "--path", parent],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let dir = work.path().join("shouty-py");
    for file in [
        "app.py",
        "test_app.py",
        "README.md",
        "soma/__init__.py",
        "soma_native.py",
        "wit/capsule.wit",
    ] {
        assert!(dir.join(file).exists(), "{file}");
    }
    // The scaffold's native tests pass on the host's python3.
    let unit = Command::new("python3")
        .args(["-B", "-m", "unittest", "-v", "test_app"])
        .current_dir(&dir)
        .output()
        .expect("python3");
    assert!(
        unit.status.success() && text(&unit.stderr).contains("Ran 3 tests"),
        "{}",
        text(&unit.stderr)
    );

    let build = || {
        let out = Command::new(env!("CARGO_BIN_EXE_soma"))
            .args(["build", "--json", "--path"])
            .arg(&dir)
            .output()
            .expect("soma build");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let built = build();
    let wasm = built["component"].as_str().expect("path").to_owned();
    assert!(wasm.ends_with("target/shouty_py.wasm"), "{wasm}");

    let out = soma(
        data.path(),
        &["run", &wasm, "--input", r#"{"text":"hello"}"#, "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["output"], serde_json::json!({"text": "HELLO"}));
    assert_eq!(doc["capsule"]["name"], "shouty-py");
    let logs = doc["logs"].to_string();
    assert!(logs.contains("shouting"), "the SDK's log line: {logs}");

    // describe() asks for nothing, so the component imports no capability.
    let out = soma(data.path(), &["inspect", &wasm, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let imports = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(imports.contains("soma:capsule/log"), "{imports}");
    for unasked in [
        "soma:capsule/kv",
        "soma:capsule/llm",
        "soma:capsule/secrets",
        "wasi:http/",
    ] {
        assert!(!imports.contains(unasked), "{unasked} in {imports}");
    }

    // A bad input is the SDK's bad-input capsule error (exit 10, as Rust's).
    let out = soma(data.path(), &["run", &wasm, "--input", "{}"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("bad-input"),
        "{}",
        text(&out.stderr)
    );

    let modified = || {
        std::fs::metadata(&wasm)
            .and_then(|m| m.modified())
            .expect("mtime")
    };
    let before = modified();
    let again = build();
    assert_eq!(again["digest"], built["digest"]);
    assert_eq!(modified(), before, "unchanged sources are not rebuilt");
}

#[test]
fn dir_grants_from_the_command_line() {
    let data = tempfile::tempdir().expect("tempdir");
    let host = tempfile::tempdir().expect("tempdir");
    std::fs::write(host.path().join("note.txt"), "hello from the host").expect("write");
    let grant = format!("{}::/data", host.path().display());
    let out = soma(
        data.path(),
        &[
            "run",
            soma_capsules::NOTEBOOK_COMPONENT,
            "--dir",
            &grant,
            "--input",
            r#"{"op":"read","path":"/data/note.txt"}"#,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "hello from the host");

    // echo never asked for /data: the grant is refused by name (exit 18).
    let out = soma(
        data.path(),
        &[
            "run",
            soma_capsules::ECHO_COMPONENT,
            "--dir",
            &grant,
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(18), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["failure"]["class"], "denied");

    let out = soma(
        data.path(),
        &["run", soma_capsules::ECHO_COMPONENT, "--dir", "nonsense"],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a malformed grant is a usage error"
    );
}

/// The README walkthrough: push → keygen → sign → verify → pull → run a
/// remote reference, with refusals and exit codes, against a real registry.
#[test]
fn registry_walkthrough() {
    let registry = soma_tests::registry::Registry::start();
    let data = tempfile::tempdir().expect("tempdir");
    let keys = tempfile::tempdir().expect("tempdir");
    let r = format!("{}/soma/calculator:1.0", registry.host());
    let sh = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_soma"))
            .args(args)
            .arg("--data")
            .arg(data.path())
            .env("SOMA_PASSWORD", "walkthrough")
            .env_remove("SOMA_CONFIG")
            .output()
            .expect("spawn soma");
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };

    let (code, out, err) = sh(&["push", soma_capsules::CALCULATOR_COMPONENT, &r]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("@sha256:"), "{out}");

    let prefix = keys.path().join("cosign");
    let (code, _, err) = sh(&[
        "keygen",
        "--output-key-prefix",
        prefix.to_str().expect("utf8"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let (key, public) = (prefix.with_extension("key"), prefix.with_extension("pub"));
    let (key, public) = (key.to_str().expect("utf8"), public.to_str().expect("utf8"));

    // Unsigned: refused (21) before anything is cached or run.
    let (code, _, err) = sh(&["run", &r, "--key", public]);
    assert_eq!(code, Some(21), "{err}");
    assert!(err.contains("not signed"), "{err}");

    let (code, _, err) = sh(&["sign", &r, "--key", key]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = sh(&["verify", &r, "--key", public, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let verified: serde_json::Value = serde_json::from_str(&out).expect("json");

    let other = keys.path().join("other");
    sh(&[
        "keygen",
        "--output-key-prefix",
        other.to_str().expect("utf8"),
    ]);
    let (code, _, err) = sh(&[
        "verify",
        &r,
        "--key",
        other.with_extension("pub").to_str().expect("utf8"),
    ]);
    assert_eq!(code, Some(21), "another key: {err}");

    let (code, out, err) = sh(&["pull", &r, "--key", public, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let pulled: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        pulled["digest"], verified["digest"],
        "the tag resolves to one digest"
    );

    let (code, out, err) = sh(&[
        "run",
        &r,
        "--key",
        public,
        "--input",
        r#"{"expr":"2*(3+4)^2"}"#,
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(doc["output"]["value"], 98);
    assert_eq!(doc["capsule"]["manifest_digest"], verified["digest"]);

    // The same through the config's trust policy.
    let config = keys.path().join("soma.toml");
    std::fs::write(
        &config,
        format!("[[trust.rules]]\nrepository = \"127.0.0.1:*/soma/*\"\nkeys = [{public:?}]\n"),
    )
    .expect("write config");
    let (code, out, err) = sh(&[
        "--config",
        config.to_str().expect("utf8"),
        "run",
        &r,
        "--input",
        r#"{"expr":"1+1"}"#,
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), r#"{"value":2}"#);

    let (code, out, _) = sh(&["cache", "ls", "--json"]);
    assert_eq!(code, Some(0));
    let blobs: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(blobs.as_array().map(Vec::len), Some(1));

    let (code, _, err) = sh(&[
        "pull",
        &format!("{}/soma/nothing:1", registry.host()),
        "--key",
        public,
    ]);
    assert_eq!(code, Some(22), "404: {err}");
    assert!(err.contains("not found") || err.contains("404"), "{err}");
}

/// A capsule calling the fixture provider is charged usage × price, and the
/// charge is visible in `soma ledger summary`, `soma bill` and budgets.
#[test]
fn llm_charges_show_in_ledger_summary_and_bill() {
    let fixture = soma_tests::llm_fixture::LlmFixture::start();
    let data = tempfile::tempdir().expect("tempdir");
    let config = data.path().join("soma.toml");
    std::fs::write(
        &config,
        format!(
            "[policy]\nllm_models = [\"default\"]\n\n[[llm.providers]]\nname = \"fixture\"\nbase_url = \"{}\"\nmodels = [\"fixture-ok\"]\naliases = {{ default = \"fixture-ok\" }}\nprice_input_per_1k_micros = 1000000\nprice_output_per_1k_micros = 2000000\n",
            fixture.base_url()
        ),
    )
    .expect("config");
    let cfg = config.to_str().expect("utf8");
    let input = r#"{"text":"Alpha beta gamma delta. Epsilon zeta.","max_words":10}"#;
    let out = soma(
        data.path(),
        &[
            "--config",
            cfg,
            "run",
            soma_capsules::SUMMARIZE_COMPONENT,
            "--tenant",
            "acme",
            "--input",
            input,
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let usage = &doc["output"]["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64().expect("p"),
        usage["completion_tokens"].as_u64().expect("c"),
    );
    // 1.0 per 1k input tokens, 2.0 per 1k output tokens, each rounded up to a micro-unit.
    let expected = (p * 1_000_000).div_ceil(1000) + (c * 2_000_000).div_ceil(1000);

    let out = soma(
        data.path(),
        &["ledger", "summary", "--by", "tenant", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let acme = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["key"] == "acme"))
        .expect("acme row");
    assert_eq!(acme["cost_micros"].as_u64(), Some(expected));
    assert_eq!(
        (acme["tokens_in"].as_u64(), acme["tokens_out"].as_u64()),
        (Some(p), Some(c))
    );

    let out = soma(
        data.path(),
        &["ledger", "summary", "--by", "model", "--csv"],
    );
    assert!(
        text(&out.stdout)
            .lines()
            .any(|l| l.starts_with("fixture-ok,")),
        "{}",
        text(&out.stdout)
    );

    let month = {
        let days = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
            / 86_400;
        let (y, m, _) = soma_runtime::ledger::civil_from_days(days as i64);
        format!("{y:04}-{m:02}")
    };
    let out = soma(data.path(), &["bill", "acme", "--month", &month, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bill: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(bill["total_micros"].as_u64(), Some(expected));

    let out = soma(data.path(), &["forecast", "acme", "--days", "7", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A tenant budget below one reservation: the capsule degrades instead of spending.
    let out = soma(
        data.path(),
        &[
            "budget",
            "set",
            "tenant:acme",
            "--tokens",
            &(p + c + 1).to_string(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = soma(
        data.path(),
        &[
            "--config",
            cfg,
            "run",
            soma_capsules::SUMMARIZE_COMPONENT,
            "--tenant",
            "acme",
            "--input",
            input,
            "--json",
        ],
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["output"]["source"], "extractive", "{doc}");
    let out = soma(data.path(), &["budget", "ls", "--json"]);
    let budgets: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        budgets[0]["account"]["spent_tokens"].as_u64(),
        Some(p + c),
        "{budgets}"
    );
}

/// SIGKILL a process in the middle of group-committed ledger writes, twenty
/// times: the ledger always passes its integrity check, and replaying the
/// same appends to completion leaves exactly one entry per key.
#[test]
fn sigkill_during_ledger_writes_leaves_a_consistent_ledger() {
    let data = tempfile::tempdir().expect("tempdir");
    let count = "3000";
    let stress = || {
        Command::new(env!("CARGO_BIN_EXE_soma"))
            .args([
                "ledger", "stress", "--count", count, "--run", "crash", "--batch", "20", "--data",
            ])
            .arg(data.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn")
    };
    for round in 0..20u64 {
        let mut child = stress();
        std::thread::sleep(std::time::Duration::from_millis(20 + (round * 37) % 200));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let out = soma(data.path(), &["ledger", "check", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(report["ok"], true, "round {round}: {report}");
    }
    let status = stress().wait().expect("wait");
    assert!(status.success());
    let out = soma(data.path(), &["ledger", "check", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(
        report["entries"].as_u64(),
        Some(3000),
        "each key exactly once: {report}"
    );
}

/// Registry credentials from docker's `config.json` through a real
/// credential helper: a `docker-credential-somatest` script on PATH answers
/// for one registry (an htpasswd-protected docker-registry) and says
/// "credentials not found" for any other. `soma push` and `soma pull` get
/// in through `credHelpers` and through `credsStore`; without the config,
/// or with a helper that has nothing, the registry refuses (401).
#[test]
fn docker_credential_helpers_log_in_to_the_registry() {
    use std::os::unix::fs::PermissionsExt as _;

    let registry = soma_tests::registry::Registry::start_with_auth("alice", "s3cret");
    let host = registry.host();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let calls = dir.path().join("helper-calls");
    let helper = bin.join("docker-credential-somatest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n\
             [ \"$1\" = get ] || exit 2\n\
             server=$(cat)\n\
             echo \"$server\" >> '{calls}'\n\
             if [ \"$server\" = '{host}' ]; then\n\
               printf '{{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"s3cret\"}}' \"$server\"\n\
               exit 0\n\
             fi\n\
             echo 'credentials not found in native keychain'\n\
             exit 1\n",
            calls = calls.display()
        ),
    )
    .expect("write helper");
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Another test thread may have forked while the helper was open for
    // writing; its child holds the file until it execs (ETXTBSY). Wait that
    // out here so soma's own exec of the helper cannot see it.
    for attempt in 0.. {
        match Command::new(&helper).arg("probe").status() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempt < 10 => {
                std::thread::sleep(std::time::Duration::from_millis(5 << attempt));
            }
            Err(e) => panic!("the credential helper cannot run: {e}"),
            Ok(status) => {
                assert_eq!(status.code(), Some(2), "the helper refuses other verbs");
                break;
            }
        }
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let docker = |name: &str, config: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("docker config dir");
        std::fs::write(d.join("config.json"), config).expect("config.json");
        d
    };
    let helpers = docker(
        "helpers",
        &format!(r#"{{"credHelpers":{{"{host}":"somatest"}}}}"#),
    );
    let store = docker("store", r#"{"credsStore":"somatest"}"#);
    let empty = docker("empty", "{}");
    let soma_toml = dir.path().join("soma.toml");
    std::fs::write(
        &soma_toml,
        "[[trust.rules]]\nrepository = \"127.0.0.1:*/soma/*\"\naccept_unsigned = true\n",
    )
    .expect("soma.toml");
    let sh = |docker_config: &std::path::Path, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_soma"))
            .arg("--config")
            .arg(&soma_toml)
            .args(args)
            .arg("--data")
            .arg(&data)
            .env("PATH", &path)
            .env("DOCKER_CONFIG", docker_config)
            .env_remove("SOMA_CONFIG")
            .env_remove("SOMA_REGISTRY_USERNAME")
            .env_remove("SOMA_REGISTRY_PASSWORD")
            .output()
            .expect("spawn soma");
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let r = format!("{host}/soma/calculator:1.0");
    let calc = soma_capsules::CALCULATOR_COMPONENT;

    // No credentials: the registry refuses, and the message says how to log in.
    let (code, _, err) = sh(&empty, &["push", calc, &r]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("requires authentication"), "{err}");

    let (code, out, err) = sh(&helpers, &["push", calc, &r]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("@sha256:"), "{out}");
    let (code, _, err) = sh(&store, &["pull", &r, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let asked = std::fs::read_to_string(&calls).expect("helper was run");
    assert_eq!(asked.lines().collect::<Vec<_>>(), [host, host], "{asked}");

    // A helper with nothing for this registry (another spelling of the
    // same host): anonymous, refused.
    let other = docker(
        "other",
        r#"{"credsStore":"somatest","credHelpers":{"elsewhere.example":"somatest"}}"#,
    );
    let localhost = format!(
        "{}/soma/calculator:1.0",
        host.replace("127.0.0.1", "localhost")
    );
    let (code, _, err) = sh(&other, &["pull", &localhost, "--json"]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("requires authentication"), "{err}");
}

/// `soma sign` and `soma verify` read the registry's answers through the
/// config's `[pull]` caps, not the defaults: with a 64-byte manifest cap,
/// both refuse the (larger) capsule manifest, naming the key.
#[test]
fn sign_and_verify_use_the_configured_pull_caps() {
    let registry = soma_tests::registry::Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let r = format!("{}/soma/calculator:1.0", registry.host());
    let config = dir.path().join("soma.toml");
    std::fs::write(&config, "[pull]\nmax_manifest_bytes = 64\n").expect("soma.toml");
    let sh = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_soma"))
            .args(args)
            .arg("--data")
            .arg(dir.path().join("data"))
            .env("SOMA_PASSWORD", "caps")
            .env_remove("SOMA_CONFIG")
            .output()
            .expect("spawn soma");
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, _, err) = sh(&["push", soma_capsules::CALCULATOR_COMPONENT, &r]);
    assert_eq!(code, Some(0), "{err}");
    let prefix = dir.path().join("cosign");
    let (code, _, err) = sh(&[
        "keygen",
        "--output-key-prefix",
        prefix.to_str().expect("utf8"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    let key = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    let capped = config.to_str().expect("utf8");
    let (code, _, err) = sh(&[
        "--config",
        capped,
        "sign",
        &r,
        "--key",
        key.to_str().expect("utf8"),
    ]);
    assert_ne!(code, Some(0), "sign under a 64-byte cap: {err}");
    assert!(err.contains("pull.max_manifest_bytes"), "{err}");
    // Under the defaults the same commands succeed.
    let (code, _, err) = sh(&["sign", &r, "--key", key.to_str().expect("utf8")]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = sh(&[
        "--config",
        capped,
        "verify",
        &r,
        "--key",
        public.to_str().expect("utf8"),
    ]);
    assert_ne!(code, Some(0), "verify under a 64-byte cap: {err}");
    assert!(err.contains("pull.max_manifest_bytes"), "{err}");
    let (code, _, err) = sh(&["verify", &r, "--key", public.to_str().expect("utf8")]);
    assert_eq!(code, Some(0), "{err}");
}

/// Write pre-0.2 kv rows (the untenanted `kv` table) into `data`'s database.
fn write_legacy_kv(data: &std::path::Path, rows: &[(&str, &str, &[u8])]) {
    const LEGACY: redb::TableDefinition<'_, (&str, &str), &[u8]> = redb::TableDefinition::new("kv");
    let db = redb::Database::create(data.join("soma.redb")).expect("database");
    let txn = db.begin_write().expect("txn");
    {
        let mut t = txn.open_table(LEGACY).expect("legacy table");
        for (space, key, value) in rows {
            t.insert((*space, *key), *value).expect("insert");
        }
    }
    txn.commit().expect("commit");
}

#[test]
fn kv_adopt_legacy_gives_old_entries_to_one_tenant_once() {
    let data = tempfile::tempdir().expect("tempdir");
    write_legacy_kv(
        data.path(),
        &[
            ("named:notes", "old", b"v1"),
            ("named:notes", "older", b"v0"),
        ],
    );
    let notebook = soma_capsules::NOTEBOOK_COMPONENT;
    let get = |tenant: &str| {
        let out = soma(
            data.path(),
            &[
                "run",
                notebook,
                "--tenant",
                tenant,
                "--kv-namespace",
                "notes",
                "--json",
                "--input",
                r#"{"op":"kv-get","scope":"capsule","key":"old"}"#,
            ],
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(doc["ok"], true, "{doc}");
        doc["output"]["value"].clone()
    };
    // Before: the legacy entry reaches no tenant.
    assert_eq!(get("local"), serde_json::Value::Null);

    let out = soma(data.path(), &["kv", "adopt-legacy", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("--tenant"),
        "{}",
        text(&out.stdout)
    );
    // --tenant is required (a usage error).
    let out = soma(data.path(), &["kv", "adopt-legacy"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    let out = soma(
        data.path(),
        &["kv", "adopt-legacy", "--tenant", "local", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["ok"], true, "{doc}");
    assert_eq!(doc["entries"], 2, "{doc}");
    assert_eq!(doc["bytes"], 3 + 2 + 5 + 2, "{doc}");
    assert_eq!(get("local"), "v1");
    assert_eq!(
        get("acme"),
        serde_json::Value::Null,
        "only the named tenant"
    );

    // Again: nothing left to adopt, still a success.
    let out = soma(data.path(), &["kv", "adopt-legacy", "--tenant", "acme"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("nothing to adopt"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(get("acme"), serde_json::Value::Null);
}
