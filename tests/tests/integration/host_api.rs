//! Host capabilities end to end through the notebook capsule: kv (durable,
//! transactional per call, scoped), log, events, llm grants, stdout caps.

use soma_runtime::{CallOptions, Failure};
use soma_tests::{TestEngine, config, shared};

fn call(t: &TestEngine, options: &CallOptions, input: &str) -> soma_runtime::Outcome {
    let c = t.load(soma_capsules::NOTEBOOK_COMPONENT);
    t.engine.call(&c, input, options)
}

#[test]
fn kv_writes_persist_only_when_the_call_succeeds() {
    let t = shared();
    let c = t.load(soma_capsules::NOTEBOOK_COMPONENT);
    let opts = CallOptions::for_capsule(&t.engine, &c);
    let o = call(t, &opts, r#"{"op":"put","key":"a","value":"1"}"#);
    assert_eq!(o.result.as_deref(), Ok(r#"{"stored":"a"}"#));
    assert_eq!(o.logs[0].message, "stored");
    assert_eq!(o.events[0].name, "stored");
    assert_eq!(o.events[0].payload["bytes"], 1);

    let o = call(t, &opts, r#"{"op":"put-then-fail","key":"b","value":"2"}"#);
    assert!(
        matches!(o.result, Err(Failure::CapsuleError { ref code, .. }) if code == "deliberate")
    );

    let o = call(t, &opts, r#"{"op":"get","key":"a"}"#);
    assert_eq!(o.result.as_deref(), Ok(r#"{"key":"a","value":"1"}"#));
    let o = call(t, &opts, r#"{"op":"get","key":"b"}"#);
    assert_eq!(
        o.result.as_deref(),
        Ok(r#"{"key":"b","value":null}"#),
        "failed call left nothing"
    );
}

#[test]
fn kv_survives_a_new_engine_on_the_same_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        soma_runtime::config::Allocator::OnDemand,
        soma_runtime::config::Metering::Fuel,
    );
    for (input, expect) in [
        (
            r#"{"op":"put","key":"k","value":"durable"}"#,
            r#"{"stored":"k"}"#,
        ),
        (
            r#"{"op":"get","key":"k"}"#,
            r#"{"key":"k","value":"durable"}"#,
        ),
    ] {
        let engine =
            soma_runtime::Engine::new(cfg.clone(), soma_runtime::store::DataDir::new(dir.path()))
                .expect("engine");
        let c = engine
            .load_file(soma_capsules::NOTEBOOK_COMPONENT.as_ref())
            .expect("load");
        let o = engine.call(&c, input, &CallOptions::for_capsule(&engine, &c));
        assert_eq!(o.result.as_deref(), Ok(expect));
    }
}

#[test]
fn kv_is_denied_when_policy_forbids_it() {
    let mut cfg = config(
        soma_runtime::config::Allocator::OnDemand,
        soma_runtime::config::Metering::Fuel,
    );
    cfg.policy.allow_kv = false;
    let t = TestEngine::new(cfg);
    let c = t.load(soma_capsules::NOTEBOOK_COMPONENT);
    let o = call(
        &t,
        &CallOptions::for_capsule(&t.engine, &c),
        r#"{"op":"get","key":"a"}"#,
    );
    match o.result {
        Err(Failure::CapsuleError { code, message, .. }) => {
            assert_eq!(code, "kv");
            assert!(message.contains("not granted kv"), "{message}");
        }
        other => panic!("expected kv denied, got {other:?}"),
    }
}

#[test]
fn llm_grants_and_unavailable() {
    // Not granted by policy: denied.
    let t = shared();
    let c = t.load(soma_capsules::NOTEBOOK_COMPONENT);
    let o = call(
        t,
        &CallOptions::for_capsule(&t.engine, &c),
        r#"{"op":"ask","model":"small","question":"hi"}"#,
    );
    assert!(
        matches!(o.result, Err(Failure::CapsuleError { ref code, .. }) if code == "llm-denied"),
        "{:?}",
        o.result
    );

    // Granted, but no provider configured: unavailable (retryable).
    let mut cfg = config(
        soma_runtime::config::Allocator::OnDemand,
        soma_runtime::config::Metering::Fuel,
    );
    cfg.policy.llm_models = vec!["small".into()];
    let t = TestEngine::new(cfg);
    let c = t.load(soma_capsules::NOTEBOOK_COMPONENT);
    let o = call(
        &t,
        &CallOptions::for_capsule(&t.engine, &c),
        r#"{"op":"ask","model":"small","question":"hi"}"#,
    );
    match o.result {
        Err(f @ Failure::CapsuleError { .. }) => {
            assert!(f.is_retryable());
            assert!(
                f.to_string().contains("no LLM provider is configured"),
                "{f}"
            );
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
}

#[test]
fn logs_events_and_stdout_are_capped_not_fatal() {
    let t = shared();
    let c = t.load(soma_capsules::NOTEBOOK_COMPONENT);
    let o = call(
        t,
        &CallOptions::for_capsule(&t.engine, &c),
        r#"{"op":"spam","n":20000}"#,
    );
    assert_eq!(o.result.as_deref(), Ok("20000"));
    assert_eq!(o.events.len(), 256);
    assert_eq!(o.events_dropped, 20000 - 256);
    assert!(o.logs_dropped > 0);
    assert!(o.stdout.len() <= 64 * 1024 && o.stdout.starts_with("stdout line 0\n"));
}

#[test]
fn directories_are_deny_by_default_and_read_only_unless_granted_rw() {
    let t = shared();
    let c = t.load(soma_capsules::NOTEBOOK_COMPONENT);
    let host = tempfile::tempdir().expect("tempdir");
    std::fs::write(host.path().join("in.txt"), "from the host").expect("write");
    let read = r#"{"op":"read","path":"/data/in.txt"}"#;
    let write = r#"{"op":"write","path":"/data/out.txt","text":"from the capsule"}"#;
    let io_error = |o: &soma_runtime::Outcome| matches!(&o.result, Err(Failure::CapsuleError { code, .. }) if code == "io");

    // No grant: the directory does not exist for the capsule.
    let none = CallOptions::for_capsule(&t.engine, &c);
    assert!(io_error(&t.engine.call(&c, read, &none)));

    // Read-only grant: reads work, writes fail, nothing lands on the host.
    let mut ro = CallOptions::for_capsule(&t.engine, &c);
    let grant = format!("{}::/data", host.path().display())
        .parse()
        .expect("grant");
    ro.grant_dirs(&c, vec![grant]).expect("asked for /data");
    assert_eq!(
        t.engine.call(&c, read, &ro).result.as_deref(),
        Ok("from the host")
    );
    assert!(io_error(&t.engine.call(&c, write, &ro)));
    assert!(!host.path().join("out.txt").exists());

    // Writable grant.
    let mut rw = CallOptions::for_capsule(&t.engine, &c);
    let grant = format!("{}::/data:rw", host.path().display())
        .parse()
        .expect("grant");
    rw.grant_dirs(&c, vec![grant]).expect("asked for /data");
    assert!(t.engine.call(&c, write, &rw).result.is_ok());
    let written = std::fs::read_to_string(host.path().join("out.txt")).expect("written");
    assert_eq!(written, "from the capsule");

    // Escaping the preopen is refused.
    let escape = r#"{"op":"read","path":"/data/../../etc/passwd"}"#;
    assert!(io_error(&t.engine.call(&c, escape, &rw)));
}

#[test]
fn dirs_must_be_asked_for() {
    let t = shared();
    let c = t.load(soma_capsules::ECHO_COMPONENT);
    let mut opts = CallOptions::for_capsule(&t.engine, &c);
    let grant = "/tmp::/data".parse().expect("grant");
    let err = opts
        .grant_dirs(&c, vec![grant])
        .expect_err("echo asks for no dirs");
    assert!(matches!(err, Failure::Denied { .. }));
}

#[test]
fn epoch_only_mode_reports_no_fuel() {
    let t = TestEngine::new(config(
        soma_runtime::config::Allocator::OnDemand,
        soma_runtime::config::Metering::EpochOnly,
    ));
    let c = t.load(soma_capsules::CALCULATOR_COMPONENT);
    let o = t.engine.call(
        &c,
        r#"{"expr":"1+1"}"#,
        &CallOptions::for_capsule(&t.engine, &c),
    );
    assert_eq!(o.result.as_deref(), Ok(r#"{"value":2}"#));
    assert_eq!(o.usage.fuel_consumed, None);
    assert!(o.usage.peak_memory_bytes > 0);
}

/// A new engine of `cfg` over `data` that loads the echo capsule (from
/// its AOT cache if it has one) and echoes `input` through it.
fn echo_engine(
    cfg: &soma_runtime::Config,
    data: &std::path::Path,
    input: &str,
) -> soma_runtime::Engine {
    let engine = soma_runtime::Engine::new(cfg.clone(), soma_runtime::store::DataDir::new(data))
        .expect("engine");
    let c = engine
        .load_file(soma_capsules::ECHO_COMPONENT.as_ref())
        .expect("load");
    assert_eq!(
        engine
            .call(&c, input, &CallOptions::for_capsule(&engine, &c))
            .result
            .as_deref(),
        Ok(input)
    );
    engine
}

#[test]
fn aot_cache_is_reused_by_a_new_engine_over_another_data_directory() {
    // One `engine.aot_dir` shared by two data directories (two daemons of
    // one host): the second engine reads the first one's artifact.
    let shared_aot = tempfile::tempdir().expect("tempdir");
    let aot = shared_aot.path().join("aot");
    let mut cfg = config(
        soma_runtime::config::Allocator::OnDemand,
        soma_runtime::config::Metering::Fuel,
    );
    cfg.engine.aot_dir = Some(aot.clone());
    let count = || std::fs::read_dir(&aot).map(|d| d.count()).unwrap_or(0);
    for (round, expect) in [(0, (0, 1)), (1, (1, 0))] {
        let data = tempfile::tempdir().expect("tempdir");
        let engine = echo_engine(&cfg, data.path(), "x");
        assert_eq!(engine.aot_dir(), Some(aot.as_path()));
        assert_eq!(engine.aot_stats(), expect, "round {round}: (hits, misses)");
        assert_eq!(count(), 1, "one artifact, written once and then reused");
        assert!(
            !data.path().join("aot").exists(),
            "nothing compiled into the data directory"
        );
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&aot).expect("aot").permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "created private");
    // A corrupt artifact is ignored (recompiled), never trusted blindly into a crash.
    let entry = std::fs::read_dir(&aot)
        .expect("aot")
        .next()
        .expect("entry")
        .expect("entry")
        .path();
    std::fs::write(&entry, b"garbage").expect("corrupt");
    let data = tempfile::tempdir().expect("tempdir");
    let engine = echo_engine(&cfg, data.path(), "y");
    assert_eq!(
        engine.aot_stats(),
        (0, 1),
        "the corrupt artifact was recompiled"
    );
}

#[test]
fn an_aot_directory_others_may_write_is_not_loaded_from() {
    // Whoever can write there could place native code the engine would run.
    use std::os::unix::fs::PermissionsExt;
    let open = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let mut cfg = config(
        soma_runtime::config::Allocator::OnDemand,
        soma_runtime::config::Metering::Fuel,
    );
    cfg.engine.aot_dir = Some(open.path().to_path_buf());
    let data = tempfile::tempdir().expect("tempdir");
    let engine = echo_engine(&cfg, data.path(), "x");
    assert_eq!(engine.aot_dir(), None, "the cache is off");
    assert_eq!(engine.aot_stats(), (0, 0), "the cache was not consulted");
    assert_eq!(
        std::fs::read_dir(open.path()).expect("dir").count(),
        0,
        "nothing written there"
    );
}

#[test]
fn kv_is_per_tenant_for_the_same_capsule_and_named_namespace() {
    let t = shared();
    let c = t.load(soma_capsules::NOTEBOOK_COMPONENT);
    let as_tenant = |tenant: &str, named: Option<&str>| {
        let mut o = CallOptions::for_capsule(&t.engine, &c);
        o.tenant = tenant.into();
        if let Some(n) = named {
            o.kv_namespace(n);
        }
        o
    };
    for named in [None, Some("shared-across-versions")] {
        let a = as_tenant("tenant-a", named);
        let b = as_tenant("tenant-b", named);
        let o = call(t, &a, r#"{"op":"put","key":"per-tenant","value":"a's"}"#);
        assert!(o.result.is_ok(), "{:?}", o.result);
        let o = call(t, &b, r#"{"op":"get","key":"per-tenant"}"#);
        assert_eq!(
            o.result.as_deref(),
            Ok(r#"{"key":"per-tenant","value":null}"#),
            "{named:?}"
        );
        let o = call(t, &b, r#"{"op":"list","prefix":""}"#);
        assert_eq!(o.result.as_deref(), Ok("[]"), "{named:?}");
        let o = call(t, &a, r#"{"op":"get","key":"per-tenant"}"#);
        assert_eq!(
            o.result.as_deref(),
            Ok(r#"{"key":"per-tenant","value":"a's"}"#),
            "{named:?}"
        );
    }
}

#[test]
fn pending_kv_writes_past_the_call_budget_are_refused_by_name() {
    let t = shared();
    let c = t.load(soma_capsules::NOTEBOOK_COMPONENT);
    let mut o = CallOptions::for_capsule(&t.engine, &c);
    // A call's memory limit lowers the pending-writes budget.
    o.limits.memory_mb = 4;
    let out = call(
        t,
        &o,
        r#"{"op":"fill","scope":"run","prefix":"p/","count":50,"bytes":1000000}"#,
    );
    let report: serde_json::Value =
        serde_json::from_str(out.result.as_deref().expect("fill answers")).expect("json");
    assert_eq!(report["written"], 4, "{report}");
    let refused = report["refused"].as_str().expect("refused");
    assert!(refused.contains("limits.memory_mb"), "{refused}");
}
