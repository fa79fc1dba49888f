//! One resolve stage: `soma run`, `soma dag run` and the daemon turn the
//! same registry reference into the same pinned capsule, and refuse the
//! same unsigned capsule with the same message, against a real
//! `docker-registry`.

use super::common::text;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use soma_runtime::{
    CapsuleRef, Config, Engine, ResolveError, Resolver,
    config::Allocator,
    dag::journal::Journal,
    oci::{self, Auth, OciError, Reference},
    store::DataDir,
    verify::{KeyPair, PublicKey, TrustPolicy},
};
use soma_tests::{
    daemon::{DaemonProcess, soma, token},
    registry::Registry,
};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

/// Push the echo capsule to `reference` with the CLI.
fn push(data: &Path, reference: &str) {
    let out = soma(bin(), data)
        .args(["push", soma_capsules::ECHO_COMPONENT, reference])
        .output()
        .expect("push");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A trust rule requiring a signature by `public` for every loopback `acme/*`.
fn trust_rules(public: &Path) -> String {
    format!(
        "[[trust.rules]]\nrepository = \"127.0.0.1:*/acme/*\"\nkeys = [{:?}]\n",
        public.display().to_string()
    )
}

/// A key pair, its public half saved as `dir/acme.pub`.
fn key(dir: &Path) -> (KeyPair, PathBuf) {
    let key = KeyPair::generate();
    let public = dir.join("acme.pub");
    std::fs::write(&public, key.public().to_pem().expect("pem")).expect("write pub");
    (key, public)
}

/// The library's resolver, on its own data directory, under `public`.
fn resolve_in_process(
    data: &Path,
    public: &Path,
    reference: &str,
) -> Result<soma_runtime::Resolved, ResolveError> {
    let mut config = Config::default();
    config.engine.allocator = Allocator::OnDemand;
    let engine = Engine::new(config, DataDir::new(data)).expect("engine");
    let policy = TrustPolicy::keys(vec![PublicKey::load(public).expect("public key")]);
    let capsule: CapsuleRef = reference.parse().expect("a registry reference");
    Resolver::new(&engine).trust(policy).resolve(&capsule)
}

#[test]
fn the_cli_the_dag_and_the_daemon_pin_a_tag_to_the_same_digest() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = format!("{}/acme/echo:1", registry.host());
    push(&dir.path().join("pusher"), &reference);
    let (key, public) = key(dir.path());
    oci::sign(
        &Reference::parse(&reference).expect("reference"),
        &Auth::Anonymous,
        &key,
        &Default::default(),
    )
    .expect("sign");
    let config = dir.path().join("cli.toml");
    std::fs::write(&config, trust_rules(&public)).expect("config");

    // In process: the tag is pinned to the manifest digest, typed.
    let resolved =
        resolve_in_process(&dir.path().join("lib"), &public, &reference).expect("resolve");
    let pinned = resolved.pinned.to_string();
    let manifest_digest = resolved.manifest_digest.expect("a manifest digest");
    assert_eq!(
        pinned,
        format!("{}/acme/echo@{manifest_digest}", registry.host())
    );
    assert_eq!(
        resolved.pinned.to_string().parse::<CapsuleRef>().ok(),
        Some(resolved.pinned.clone())
    );
    let component = resolved.capsule.digest().to_string();

    // `soma run`: the same manifest digest and component.
    let cli = dir.path().join("cli");
    let out = soma(bin(), &cli)
        .arg("--config")
        .arg(&config)
        .args(["run", &reference, "--input", "hi", "--json"])
        .output()
        .expect("soma run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["output"], json!("hi"));
    assert_eq!(doc["capsule"]["manifest_digest"], json!(manifest_digest));
    assert_eq!(doc["capsule"]["digest"], json!(component));

    // `soma dag run`: the journal pins the same reference (what a resume pulls).
    let spec = dir.path().join("pin.json");
    let spec_doc = json!({
        "version": 1,
        "name": "pin",
        "capsules": {"e": reference},
        "nodes": [{"id": "a", "capsule": "e", "input": "hi"}],
    });
    std::fs::write(&spec, spec_doc.to_string()).expect("spec");
    let out = soma(bin(), &cli)
        .arg("--config")
        .arg(&config)
        .args(["dag", "run"])
        .arg(&spec)
        .args(["--run-id", "pin", "--json"])
        .output()
        .expect("soma dag run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let records = Journal::new(DataDir::new(&cli).database().clone())
        .pinned_capsules("pin")
        .expect("journal");
    assert_eq!(records["e"].reference, pinned);
    assert_eq!(records["e"].digest, component);

    // The daemon: the catalog entry's origin is the same pinned reference.
    let data = dir.path().join("daemon");
    std::fs::create_dir_all(&data).expect("data dir");
    let operator = token(bin(), &data, "ops", "operator");
    let d = DaemonProcess::start(bin(), &data, "", &trust_rules(&public));
    let (s, v) = d.post(
        "/v1/capsules/pull",
        &operator,
        &json!({"name": "pinned-echo", "reference": reference}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["origin"], json!(pinned), "{v}");
    assert_eq!(v["digest"], json!(component), "{v}");
}

#[test]
fn the_cli_and_the_daemon_refuse_an_unsigned_capsule_with_one_message() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = format!("{}/acme/unsigned:1", registry.host());
    push(&dir.path().join("pusher"), &reference);
    let (_, public) = key(dir.path());
    let config = dir.path().join("cli.toml");
    std::fs::write(&config, trust_rules(&public)).expect("config");

    let lib = dir.path().join("lib");
    let refusal = match resolve_in_process(&lib, &public, &reference) {
        // The whole chain (headline, then the trust policy's reason), as
        // the CLI (`{:#}`) and the daemon print it.
        Err(e @ ResolveError::Oci(OciError::Untrusted(_))) => soma_runtime::daemon::error_chain(&e),
        other => panic!("expected a trust refusal, got {other:?}"),
    };
    assert!(refusal.contains("is not signed"), "{refusal}");

    // `soma run`: exit 21 (untrusted), the same message, nothing cached.
    let cli = dir.path().join("cli");
    let out = soma(bin(), &cli)
        .arg("--config")
        .arg(&config)
        .args(["run", &reference, "--json"])
        .output()
        .expect("soma run");
    assert_eq!(out.status.code(), Some(21), "{}", text(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    let message = doc["error"]["message"].as_str().expect("message");
    assert!(message.starts_with(&refusal), "{message}\nvs {refusal}");
    assert_eq!(doc["error"]["class"], json!("untrusted"), "{doc}");
    let out = soma(bin(), &cli)
        .args(["cache", "ls", "--json"])
        .output()
        .expect("cache ls");
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).expect("json"),
        json!([])
    );

    // The daemon: 502 pull-failed with the same message; not in the catalog.
    let data = dir.path().join("daemon");
    std::fs::create_dir_all(&data).expect("data dir");
    let operator = token(bin(), &data, "ops", "operator");
    let reader = token(bin(), &data, "acme", "run,read");
    let d = DaemonProcess::start(bin(), &data, "", &trust_rules(&public));
    let (s, v) = d.post(
        "/v1/capsules/pull",
        &operator,
        &json!({"name": "unsigned", "reference": reference}),
    );
    assert_eq!(s, 502, "{v}");
    assert_eq!(v["error"]["code"], json!("pull-failed"), "{v}");
    assert_eq!(v["error"]["message"], json!(refusal), "{v}");
    let (_, list) = d.get("/v1/capsules", &reader);
    assert!(
        list.as_array()
            .expect("list")
            .iter()
            .all(|c| c["name"] != "unsigned"),
        "{list}"
    );
}
