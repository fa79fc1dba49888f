//! Issue 16, the `secrets` capability, attacked end to end: a capsule
//! (`secret-probe`) reads a granted secret and tries to leak it through
//! every surface it has — output, error, log (message, field, key), event,
//! kv (key and value, both scopes), stdout, stderr, and a DAG run whose next
//! node gets its output as input — and every surface the operator or a
//! tenant can read is searched for the value: the CLI's output, `soma dag
//! status`/`logs`, `soma ledger ls`, the daemon's JSON replies and SSE
//! stream bytes, its log, and the raw redb file. Also: grants (asked ∩
//! granted ∩ node), `denied` for what is not granted, env and file
//! sources, tenant secrets through the API (write-only, per tenant,
//! sealed at rest). Each leak is tried with the raw value and with its
//! standard encodings (base64, base64url, each with and without padding,
//! hex in both cases, percent-encoding): none may appear anywhere.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use serde_json::{Value, json};
use soma_tests::daemon::{self, DaemonProcess};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

fn probe() -> &'static str {
    soma_capsules::SECRET_PROBE_COMPONENT
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A file only its owner may read.
fn private_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    path
}

/// `soma --data DATA --config CONFIG ARGS` with `env`.
fn soma(data: &Path, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args)
        .arg("--data")
        .arg(data)
        .arg("--config")
        .arg(config)
        .env_remove("SOMA_CONFIG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("spawn soma")
}

/// `METHOD path` with an optional JSON body: (status, body).
fn send(
    d: &DaemonProcess,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let (s, v, _) = d.request(method, path, Some(token), body.map(Value::to_string));
    (s, v)
}

/// Panic if `needle` occurs in `haystack` (naming where).
fn assert_absent(surface: &str, haystack: &[u8], needle: &str) {
    assert!(
        !haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes()),
        "the secret leaked into {surface}: {}",
        text(haystack)
    );
}

/// `value` and its standard encodings (base64 and base64url with and
/// without padding, hex lower and upper case, percent-encoding of every
/// byte outside RFC 3986's unreserved set).
fn forms(value: &str) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let bytes = value.as_bytes();
    let percent: String = bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    vec![
        value.to_owned(),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
        hex::encode(bytes),
        hex::encode_upper(bytes),
        percent,
    ]
}

/// Panic if `value` or any of its [`forms`] occurs in `haystack`.
fn assert_no_form(surface: &str, haystack: &[u8], value: &str) {
    for form in forms(value) {
        assert_absent(surface, haystack, &form);
    }
}

/// The files under `dir` (the data directory: the redb database and
/// anything else the node wrote), concatenated.
fn all_bytes_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.extend(bytes);
            }
        }
    }
    out
}

/// The CLI: operator secrets from the environment and a file, granted by
/// glob; every way out of one `soma run` and one `soma dag run`.
#[test]
fn operator_secrets_reach_only_granted_capsules_and_never_leave_the_call() {
    let _g = super::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    // Values whose encodings all differ from them (a space, `/`, `?`, `>`
    // percent-encode; base64 has `+` or `/`, and padding for the second).
    let env_value = "env-NEEDLE 4f1c9a77/probe?>";
    let file_value = "file-NEEDLE+93bd21e0/probe?>";
    let file = private_file(dir.path(), "probe-file", &format!("{file_value}\n"));
    let config = dir.path().join("soma.toml");
    std::fs::write(
        &config,
        format!(
            "[[secrets.define]]\nname = \"probe-env\"\nenv = \"SOMA_TEST_PROBE_SECRET\"\ngrant = [\"*secret_probe*\"]\n\
             [[secrets.define]]\nname = \"probe-file\"\nfile = \"{}\"\ngrant = [\"*secret_probe*\"]\n\
             [[secrets.define]]\nname = \"ungranted\"\nenv = \"SOMA_TEST_PROBE_SECRET\"\ngrant = [\"ghcr.io/nobody/*\"]\n",
            file.display()
        ),
    )
    .expect("config");
    let env = [("SOMA_TEST_PROBE_SECRET", env_value)];
    let mut seen: Vec<u8> = Vec::new();
    let run = |input: Value, seen: &mut Vec<u8>| -> Value {
        let out = soma(
            &data,
            &config,
            &["run", probe(), "--input", &input.to_string(), "--json"],
            &env,
        );
        seen.extend(&out.stdout);
        seen.extend(&out.stderr);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)))
    };

    // Granted, from the environment: read (the length is the real one),
    // masked in the output, the logs, the events, stdout and stderr.
    let v = run(json!({"secret": "probe-env"}), &mut seen);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["output"]["read"], true, "{v}");
    assert_eq!(v["output"]["len"], env_value.len(), "{v}");
    assert_eq!(v["output"]["value"], "[REDACTED:probe-env]", "{v}");
    let doc = v.to_string();
    for masked in [
        "leak<[REDACTED:probe-env]>",
        "stdout leak<[REDACTED:probe-env]>",
        "stderr leak<[REDACTED:probe-env]>",
    ] {
        assert!(doc.contains(masked), "{masked} in {doc}");
    }
    // The same call as a person sees it (no --json).
    let out = soma(
        &data,
        &config,
        &["run", probe(), "--input", r#"{"secret": "probe-env"}"#],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("[REDACTED:probe-env]"),
        "{}",
        text(&out.stdout)
    );
    seen.extend(&out.stdout);
    seen.extend(&out.stderr);
    // Every encoding of the value leaked through every surface: masked.
    let v = run(json!({"secret": "probe-env", "forms": true}), &mut seen);
    assert_eq!(v["output"]["read"], true, "{v}");
    assert_eq!(
        v["output"]["value"],
        ["[REDACTED:probe-env]"; 8].join(" "),
        "{v}"
    );
    // Granted, from a file (one trailing newline dropped); leaking through
    // the capsule's own error.
    let v = run(
        json!({"secret": "probe-file", "fail": true, "forms": true}),
        &mut seen,
    );
    assert_eq!(v["ok"], false, "{v}");
    let masked = format!("error leak<{}>", ["[REDACTED:probe-file]"; 8].join(" "));
    assert!(v.to_string().contains(&masked), "{v}");
    // Asked for, defined, but granted to other capsules: denied, not a trap.
    let v = run(json!({"secret": "ungranted"}), &mut seen);
    assert_eq!(v["output"]["kind"], "denied", "{v}");
    assert!(
        v["output"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not granted to this capsule")),
        "{v}"
    );
    // Not asked for in describe(): denied.
    let v = run(json!({"secret": "never-asked"}), &mut seen);
    assert_eq!(v["output"]["kind"], "denied", "{v}");
    // Asked for, defined by nobody (no tenant secrets here): not found.
    let v = run(json!({"secret": "tenant-key"}), &mut seen);
    assert_eq!(v["output"]["kind"], "not-found", "{v}");

    // A DAG run: node `b` gets `a`'s output (and so what `a` leaked) as input;
    // node `narrow` is the same capsule restricted to `probe-file`.
    let spec = dir.path().join("leak.yaml");
    std::fs::write(
        &spec,
        format!(
            "version: 1\nname: leak\noutput: {{ b: \"{{{{ nodes.b.output }}}}\", narrow: \"{{{{ nodes.narrow.output }}}}\" }}\ncapsules:\n  probe: {}\n  echo: {}\nnodes:\n  - id: a\n    capsule: probe\n    input: {{ secret: probe-env, forms: true }}\n  - id: b\n    capsule: echo\n    input: {{ got: \"{{{{ nodes.a.output }}}}\" }}\n  - id: narrow\n    capsule: probe\n    capabilities: {{ secrets: [probe-file] }}\n    input: {{ secret: probe-env }}\n",
            probe(),
            soma_capsules::ECHO_COMPONENT
        ),
    )
    .expect("spec");
    let spec = spec.to_str().expect("utf-8");
    let out = soma(
        &data,
        &config,
        &["dag", "run", spec, "--run-id", "leak", "--json"],
        &env,
    );
    seen.extend(&out.stdout);
    seen.extend(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let status = soma(&data, &config, &["dag", "status", "leak", "--json"], &env);
    seen.extend(&status.stdout);
    seen.extend(&status.stderr);
    let report = text(&status.stdout);
    assert!(
        report.contains("[REDACTED:probe-env]"),
        "node b got the masked value: {report}"
    );
    let report: Value = serde_json::from_str(&report).expect("status json");
    let narrow = report.to_string();
    assert!(
        narrow.contains("DAG node"),
        "the node's restriction denied probe-env: {narrow}"
    );
    for args in [
        &["dag", "logs", "leak"][..],
        &["dag", "logs", "leak", "--node", "a"][..],
        &["ledger", "ls", "--json"][..],
    ] {
        let out = soma(&data, &config, args, &env);
        seen.extend(&out.stdout);
        seen.extend(&out.stderr);
    }

    for value in [env_value, file_value] {
        assert_no_form("the CLI's output", &seen, value);
        assert_no_form(
            "the data directory (redb file)",
            &all_bytes_under(&data),
            value,
        );
    }
}

/// The daemon: tenant secrets through the API, sealed at rest, write-only,
/// seen by their tenant's calls only; and the same leak attempts through
/// the API's replies, the SSE stream and the daemon's log.
#[test]
fn tenant_secrets_are_write_only_per_tenant_sealed_and_redacted_everywhere() {
    let _g = super::shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let acme = daemon::token(bin(), data, "acme", "run,read,admin");
    let globex = daemon::token(bin(), data, "globex", "run,read,admin");
    let key = private_file(
        data,
        "secrets.key",
        "7f3a0c1e5b9d2f4a6c8e0b1d3f5a7c9e1b3d5f7a9c0e2b4d6f8a1c3e5b7d9f0a\n",
    );
    let op_value = "op-NEEDLE 5e2b8c41/daemon?>";
    let op_file = private_file(data, "probe-file", op_value);
    let extra = format!(
        "[[daemon.capsules]]\nname = \"secret-probe\"\npath = \"{}\"\n\
         [secrets]\nkey_file = \"{}\"\n\
         [[secrets.define]]\nname = \"probe-file\"\nfile = \"{}\"\ngrant = [\"*secret_probe*\"]\n",
        probe(),
        key.display(),
        op_file.display()
    );
    let (d, log) = DaemonProcess::start_logged(bin(), data, "", &extra, "debug");
    let mut seen: Vec<u8> = Vec::new();
    let tenant_value = "tenant-NEEDLE c0ffee17/acme?>";

    // Set: the reply carries the name, the grant and the time, no value.
    let (s, v) = send(
        &d,
        reqwest::Method::PUT,
        "/v1/tenants/acme/secrets/tenant-key",
        &acme,
        Some(&json!({"value": tenant_value, "grant": ["*secret_probe*"]})),
    );
    seen.extend(v.to_string().as_bytes());
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["name"], "tenant-key");
    assert!(v.get("value").is_none(), "{v}");
    let (s, v) = d.get("/v1/tenants/acme/secrets", &acme);
    seen.extend(v.to_string().as_bytes());
    assert_eq!(s, 200, "{v}");
    assert_eq!(v[0]["name"], "tenant-key", "{v}");
    assert_eq!(v[0]["grant"], json!(["*secret_probe*"]), "{v}");
    // Another tenant's admin: 404 on every route, as if there were none.
    assert_eq!(d.get("/v1/tenants/acme/secrets", &globex).0, 404);
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE] {
        let (s, _) = send(
            &d,
            method,
            "/v1/tenants/acme/secrets/tenant-key",
            &globex,
            Some(&json!({"value": "x"})),
        );
        assert_eq!(s, 404);
    }
    // An operator secret's name is not a tenant's to shadow.
    let (s, v) = send(
        &d,
        reqwest::Method::PUT,
        "/v1/tenants/acme/secrets/probe-file",
        &acme,
        Some(&json!({"value": "x"})),
    );
    assert_eq!(s, 409, "{v}");

    let call = |token: &str, input: Value| -> Value {
        let (s, v) = d.post(
            "/v1/runs",
            token,
            &json!({"capsule": "secret-probe", "input": input}),
        );
        assert_eq!(s, 200, "{v}");
        v
    };
    // acme's call reads acme's secret, masked in the reply.
    let v = call(&acme, json!({"secret": "tenant-key"}));
    seen.extend(v.to_string().as_bytes());
    assert_eq!(v["output"]["read"], true, "{v}");
    assert_eq!(v["output"]["len"], tenant_value.len(), "{v}");
    assert!(v.to_string().contains("[REDACTED:tenant-key]"), "{v}");
    let run = v["run"].as_str().expect("run").to_owned();
    let (_, again) = d.get(&format!("/v1/runs/{run}"), &acme);
    seen.extend(again.to_string().as_bytes());
    let v = call(
        &acme,
        json!({"secret": "tenant-key", "fail": true, "forms": true}),
    );
    seen.extend(v.to_string().as_bytes());
    assert_eq!(v["ok"], false, "{v}");
    let v = call(&acme, json!({"secret": "probe-file", "forms": true}));
    seen.extend(v.to_string().as_bytes());
    assert_eq!(v["output"]["len"], op_value.len(), "{v}");
    // globex's call of the same capsule never sees acme's secret.
    let v = call(&globex, json!({"secret": "tenant-key"}));
    assert_eq!(v["output"]["read"], false, "{v}");
    assert_eq!(v["output"]["kind"], "not-found", "{v}");

    // A DAG run over the API, its SSE stream read to the end.
    let spec = json!({
        "version": 1,
        "name": "leak",
        "output": {"b": "{{ nodes.b.output }}", "narrow": "{{ nodes.narrow.output }}"},
        "capsules": {"probe": "secret-probe", "echo": "echo"},
        "nodes": [
            {"id": "a", "capsule": "probe", "input": {"secret": "tenant-key", "forms": true}},
            {"id": "b", "capsule": "echo", "input": {"got": "{{ nodes.a.output }}"}},
            {"id": "narrow", "capsule": "probe", "capabilities": {"secrets": ["probe-file"]},
             "input": {"secret": "tenant-key"}},
        ],
    });
    let (s, v) = d.post("/v1/runs", &acme, &json!({"dag": spec}));
    assert_eq!(s, 202, "{v}");
    let dag = v["run"].as_str().expect("run").to_owned();
    let done = d.wait_finished(&acme, &dag, Duration::from_secs(60));
    seen.extend(done.to_string().as_bytes());
    assert!(done.to_string().contains("[REDACTED:tenant-key]"), "{done}");
    let sse = daemon::client()
        .get(format!("{}/v1/runs/{dag}/events", d.url))
        .bearer_auth(&acme)
        .send()
        .expect("sse")
        .bytes()
        .expect("sse body");
    assert!(
        text(&sse).contains("event: finished"),
        "the stream ran to its end"
    );
    assert!(
        text(&sse).contains("DAG node"),
        "node `narrow` was denied tenant-key by its restriction"
    );
    seen.extend(&sse);
    let (_, ledger) = d.get("/v1/ledger?limit=1000", &acme);
    seen.extend(ledger.to_string().as_bytes());

    // Delete: gone from the list, then 404.
    let (s, _) = send(
        &d,
        reqwest::Method::DELETE,
        "/v1/tenants/acme/secrets/tenant-key",
        &acme,
        None,
    );
    assert_eq!(s, 204);
    let (_, v) = d.get("/v1/tenants/acme/secrets", &acme);
    assert_eq!(v, json!([]));
    let (s, _) = send(
        &d,
        reqwest::Method::DELETE,
        "/v1/tenants/acme/secrets/tenant-key",
        &acme,
        None,
    );
    assert_eq!(s, 404);

    let data_dir = d.data.clone();
    drop(d);
    for value in [tenant_value, op_value] {
        assert_no_form("the daemon's replies and SSE stream", &seen, value);
        assert_no_form("the daemon's log", log.lines().join("\n").as_bytes(), value);
    }
    // At rest: the database holds the sealed value, not the value (the
    // operator's file is the only place it is written in clear).
    let _ = std::fs::remove_file(&op_file);
    for value in [tenant_value, op_value] {
        assert_no_form(
            "the data directory (redb file)",
            &all_bytes_under(&data_dir),
            value,
        );
    }
}
