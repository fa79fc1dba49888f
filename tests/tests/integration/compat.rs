//! Capsules built against `soma:capsule@0.1.0` keep loading and running
//! after the WIT moved to 0.2.0 (open-ended capability requests).
//!
//! The fixture, `capsules/compat-v0-1`, is built from source by the
//! artifacts step with `wit-bindgen` against the frozen 0.1.0 WIT
//! (`wit/compat/0.1.0/`), not the SDK. These tests load it through the real
//! runtime: its closed `capabilities` record must convert into grants, and
//! every 0.1.0 interface (kv, log, events, llm, WASI preopens) must work.

use std::collections::BTreeMap;

use soma_host_api::{bindings::Contract, llm::ProviderConfig};
use soma_runtime::{
    CallOptions,
    config::{Allocator, Metering},
};
use soma_tests::{TestEngine, config, llm_fixture::LlmFixture};

fn output(o: &soma_runtime::Outcome) -> serde_json::Value {
    let text = o.result.as_deref().expect("the 0.1.0 capsule runs");
    serde_json::from_str(text).expect("json output")
}

#[test]
fn a_v0_1_capsule_describes_itself_in_the_current_form() {
    let t = TestEngine::new(config(Allocator::OnDemand, Metering::Fuel));
    let c = t.load(soma_capsules::COMPAT_V0_1_COMPONENT);
    let m = c.manifest();
    assert_eq!(m.contract, Contract::V0_1);
    assert_eq!(m.name, "compat-v0-1");
    assert_eq!(m.kind, "worker");
    assert!(m.wants.kv, "kv: true converts into a kv request");
    assert_eq!(m.wants.llm, ["small"]);
    assert_eq!(m.wants.dirs, ["/data"]);
    // 0.1.0's `http-hosts` become http requests. A bare host name is not
    // an allowlist pattern (no scheme), so it is shown and grants nothing.
    assert_eq!(m.wants.http, ["example.com"]);
    assert!(m.wants.other.is_empty(), "{:?}", m.wants.other);
    assert_eq!(
        m.wants.words(),
        ["kv", "llm:small", "dir:/data", "http:example.com"]
    );
    assert_eq!(m.limits.memory_mb, Some(64));
    // A capsule built with the SDK is on the current contract.
    let echo = t.load(soma_capsules::ECHO_COMPONENT);
    assert_eq!(echo.manifest().contract, Contract::V0_2);
}

#[test]
fn a_v0_1_capsule_runs_with_kv_log_events_and_dirs() {
    let t = TestEngine::new(config(Allocator::OnDemand, Metering::Fuel));
    let c = t.load(soma_capsules::COMPAT_V0_1_COMPONENT);
    let mut options = CallOptions::for_capsule(&t.engine, &c);
    options.kv_namespace("compat-kv");
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::write(data.path().join("hello.txt"), "hello\n").expect("write");
    let dir = format!("{}::/data", data.path().display())
        .parse()
        .expect("dir grant");
    options
        .grant_dirs(&c, vec![dir])
        .expect("the 0.1.0 record's dirs convert into a dir request");

    let first = t.engine.call(&c, "read", &options);
    let out = output(&first);
    assert_eq!(out["count"], 1);
    assert_eq!(out["file"], "hello\n");
    // The default policy allows no model: denied through 0.1.0's llm-error.
    let llm = out["llm"].as_str().expect("llm");
    assert!(llm.starts_with("denied: "), "{llm}");
    assert_eq!(first.logs[0].message, "counted");
    assert_eq!(first.events[0].name, "counted");
    assert_eq!(first.events[0].payload["count"], 1);

    // kv committed through the 0.1.0 interface: the next call sees it.
    let second = t.engine.call(&c, "x", &options);
    assert_eq!(output(&second)["count"], 2);
    assert_eq!(output(&second)["file"], serde_json::Value::Null);

    // The policy still decides: with kv forbidden the capsule is denied.
    let mut cfg = config(Allocator::OnDemand, Metering::Fuel);
    cfg.policy.allow_kv = false;
    let strict = TestEngine::new(cfg);
    let c = strict.load(soma_capsules::COMPAT_V0_1_COMPONENT);
    let o = strict
        .engine
        .call(&c, "x", &CallOptions::for_capsule(&strict.engine, &c));
    match o.result {
        Err(soma_runtime::Failure::CapsuleError { code, message, .. }) => {
            assert_eq!(code, "kv");
            assert!(message.contains("not granted kv"), "{message}");
        }
        other => panic!("expected kv denied, got {other:?}"),
    }

    // A directory the 0.1.0 record did not ask for is refused by name.
    let other = "/tmp::/elsewhere".parse().expect("dir grant");
    let mut o = CallOptions::for_capsule(&t.engine, &c);
    assert!(o.grant_dirs(&c, vec![other]).is_err());
}

#[test]
fn a_v0_1_capsule_calls_a_granted_model_through_the_0_1_llm_interface() {
    let fixture = LlmFixture::start();
    let mut cfg = config(Allocator::OnDemand, Metering::Fuel);
    cfg.policy.llm_models = vec!["small".into()];
    cfg.llm.providers = vec![ProviderConfig {
        name: "fixture".into(),
        base_url: fixture.base_url(),
        models: vec!["fixture-ok".into()],
        aliases: BTreeMap::from([("small".to_owned(), "fixture-ok".to_owned())]),
        timeout_ms: 5_000,
        max_retries: 0,
        ..ProviderConfig::default()
    }];
    let t = TestEngine::new(cfg);
    let c = t.load(soma_capsules::COMPAT_V0_1_COMPONENT);
    let o = t
        .engine
        .call(&c, "x", &CallOptions::for_capsule(&t.engine, &c));
    let out = output(&o);
    assert_eq!(out["llm"], "ok: echo: hi", "{out}");
    assert_eq!(fixture.requests(), 1);
    assert_eq!(
        fixture.recorded().models,
        ["fixture-ok"],
        "the alias resolved to the provider's model"
    );
}
