//! The marketplace's automated review (`soma_runtime::market::review`)
//! against real capsules from `capsules/`: the calculator passes with a
//! cost profile; each fixture that breaks one rule is rejected with that
//! rule's reason code (and every other failing reason at once).

use serde_json::{Value, json};
use soma_runtime::{
    Config,
    market::review::{Reason, ReviewInput, ReviewReport, SignatureOutcome, Status, Step, review},
};

fn listing(examples: Vec<Value>) -> ReviewInput {
    ReviewInput {
        license: Some("Apache-2.0".into()),
        readme: Some("# A capsule\n\nWhat it does.".into()),
        examples,
        signature: SignatureOutcome::Verified {
            key: "author-key-1".into(),
        },
        ..ReviewInput::default()
    }
}

fn run(path: &str, input: &ReviewInput) -> ReviewReport {
    let bytes = std::fs::read(path).expect("capsule built by soma-capsules");
    review(&bytes, input, &Config::default()).expect("the review runs")
}

/// The failed codes, for assertion messages.
fn failed(report: &ReviewReport) -> Vec<Reason> {
    report.failures().map(|e| e.code).collect()
}

#[test]
fn calculator_passes_with_a_cost_profile() {
    let report = run(
        soma_capsules::CALCULATOR_COMPONENT,
        &listing(vec![
            json!({"expr": "2*(3+4)^2"}),
            json!({"expr": "1/4 + 3"}),
        ]),
    );
    assert!(report.approved(), "{:#?}", report.evidence);
    assert_eq!(report.contract.as_deref(), Some("soma:capsule@0.2.0"));
    let profile = report.cost_profile.as_ref().expect("cost profile");
    assert_eq!(profile.calls, 2);
    assert!(profile.fuel_max > 0 && profile.fuel_mean <= profile.fuel_max);
    assert!(profile.wall_time_us_max > 0);
    assert!(profile.peak_memory_bytes_max > 0);
    // ¼ of the operator defaults (the calculator requests none).
    assert_eq!(profile.limits.fuel, Config::default().limits.fuel / 4);
    assert_eq!(profile.limits.memory_mb, 32);
    // Every step left evidence; the passing codes are recorded too.
    for (step, code) in [
        (Step::Signature, Reason::SignatureVerified),
        (Step::Size, Reason::SizeWithinLimit),
        (Step::License, Reason::LicensePresent),
        (Step::Readme, Reason::ReadmePresent),
        (Step::Secrets, Reason::NoSecrets),
        (Step::Bounds, Reason::WithinBounds),
        (Step::Compile, Reason::Compiled),
        (Step::World, Reason::WorldSupported),
        (Step::LeastPrivilege, Reason::LeastPrivilege),
        (Step::Schemas, Reason::SchemasValid),
        (Step::Smoke, Reason::SmokePassed),
        (Step::Hostile, Reason::HostileHandled),
    ] {
        assert!(
            report
                .evidence
                .iter()
                .any(|e| e.step == step && e.code == code && e.status == Status::Passed),
            "no passed {step:?}/{code:?}: {:#?}",
            report.evidence
        );
    }
    // The three hostile kinds were generated and each refused by the capsule.
    let hostile: Vec<&str> = report
        .evidence
        .iter()
        .filter(|e| e.step == Step::Hostile)
        .filter_map(|e| e.measured.get("kind").and_then(Value::as_str))
        .collect();
    assert_eq!(hostile, ["wrong-type", "missing-required", "huge-string"]);
    // Serde JSON round trip: the report is what a submission stores.
    let text = serde_json::to_string(&report).expect("json");
    let back: ReviewReport = serde_json::from_str(&text).expect("parse");
    assert_eq!(back, report);
    let doc: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(doc["verdict"], "approved");
    assert_eq!(doc["evidence"][0]["code"], "signature-verified");
    eprintln!("calculator review took {} ms", report.elapsed_ms);
}

#[test]
fn capability_not_imported_asks_for_llm_it_never_imports() {
    let report = run(
        soma_capsules::REVIEW_LLM_UNUSED_COMPONENT,
        &listing(vec![json!({"text": "hi"})]),
    );
    assert_eq!(failed(&report), [Reason::CapabilityNotImported]);
    let e = report.failures().next().expect("one failure");
    assert_eq!(e.measured["asked_not_imported"], json!(["llm:small"]));
    assert!(e.reason.contains("llm:small"), "{}", e.reason);
}

#[test]
fn import_not_declared_imports_kv_without_asking() {
    let report = run(
        soma_capsules::REVIEW_KV_UNDECLARED_COMPONENT,
        &listing(vec![json!({})]),
    );
    assert_eq!(failed(&report), [Reason::ImportNotDeclared]);
    let e = report.failures().next().expect("one failure");
    let undeclared = e.measured["imported_not_asked"].as_array().expect("list");
    assert_eq!(undeclared.len(), 1);
    assert!(
        undeclared[0]
            .as_str()
            .is_some_and(|i| i.starts_with("soma:capsule/kv@")),
        "{undeclared:?}"
    );
}

#[test]
fn smoke_trapped_an_example_input_that_traps() {
    let report = run(
        soma_capsules::HOSTILE_TRAP_COMPONENT,
        &listing(vec![json!({"x": 1})]),
    );
    assert!(
        report.failed_with(Reason::SmokeTrapped),
        "{:?}",
        failed(&report)
    );
    // The trap of the hostile subset is reported too: every reason at once.
    assert!(
        report.failed_with(Reason::HostileTrapped),
        "{:?}",
        failed(&report)
    );
    assert!(report.cost_profile.is_none(), "no example succeeded");
}

#[test]
fn output_schema_mismatch_an_output_that_lies_about_its_schema() {
    let report = run(
        soma_capsules::REVIEW_BAD_OUTPUT_COMPONENT,
        &listing(vec![json!({"n": 1})]),
    );
    assert_eq!(failed(&report), [Reason::OutputSchemaMismatch]);
    let e = report.failures().next().expect("one failure");
    assert!(e.reason.contains("/value"), "names the field: {}", e.reason);
}

#[test]
fn license_missing_and_every_other_reason_at_once() {
    let input = ReviewInput {
        license: None,
        readme: None,
        examples: Vec::new(),
        signature: SignatureOutcome::Failed {
            reason: "signed by another key".into(),
        },
        ..ReviewInput::default()
    };
    let report = run(soma_capsules::CALCULATOR_COMPONENT, &input);
    assert!(!report.approved());
    for code in [
        Reason::LicenseMissing,
        Reason::ReadmeMissing,
        Reason::NoExamples,
        Reason::SignatureInvalid,
    ] {
        assert!(
            report.failed_with(code),
            "{code:?} in {:?}",
            failed(&report)
        );
    }
    // The independent steps still ran and passed.
    assert!(
        report
            .evidence
            .iter()
            .any(|e| e.code == Reason::LeastPrivilege && e.status == Status::Passed)
    );
}

#[test]
fn smoke_limit_exceeded_a_hostile_capsule_from_capsules() {
    let report = run(
        soma_capsules::HOSTILE_MEMORY_COMPONENT,
        &listing(vec![json!({"size": "all of it"})]),
    );
    assert!(
        report.failed_with(Reason::SmokeLimitExceeded),
        "{:?}",
        failed(&report)
    );
    assert!(report.failed_with(Reason::HostileLimitExceeded));
    let e = report
        .failures()
        .find(|e| e.code == Reason::SmokeLimitExceeded)
        .expect("smoke failure");
    assert_eq!(e.measured["class"], "memory-limit");
    assert_eq!(e.measured["limits"]["memory_mb"], 32);
}

#[test]
fn secret_found_in_a_data_segment() {
    let report = run(
        soma_capsules::REVIEW_SECRET_COMPONENT,
        &listing(vec![json!({})]),
    );
    assert_eq!(failed(&report), [Reason::SecretFound]);
    let e = report.failures().next().expect("one failure");
    let kinds: Vec<&str> = e.measured["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter_map(|f| f["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"aws-access-key-id"), "{kinds:?}");
    assert!(kinds.contains(&"openai-key"), "{kinds:?}");
    assert!(
        !e.reason.contains("AKIAIOSFODNN7EXAMPLE"),
        "secrets are previewed, not repeated"
    );
}

#[test]
fn no_example_capsule_carries_something_that_looks_like_a_secret() {
    // The scan's false-positive check over every real capsule.
    macro_rules! check {
        ($name:ident, $path:expr) => {
            let bytes = std::fs::read($path).expect("capsule");
            let scan = soma_runtime::market::review::secrets::scan(&bytes);
            assert!(
                scan.segments > 0,
                "{}: no data segments seen",
                stringify!($name)
            );
            assert!(
                scan.findings.is_empty(),
                "{}: {:?}",
                stringify!($name),
                scan.findings
            );
        };
    }
    soma_capsules::foreach_example!(check);
    soma_capsules::foreach_hostile!(check);
}

#[test]
fn bounds_exceeded_not_a_component_skips_what_needs_one() {
    let report = review(
        b"not wasm at all",
        &listing(vec![json!({})]),
        &Config::default(),
    )
    .expect("the review runs");
    assert!(report.failed_with(Reason::BoundsExceeded));
    for step in [
        Step::Compile,
        Step::LeastPrivilege,
        Step::Smoke,
        Step::Hostile,
    ] {
        assert!(
            report
                .evidence
                .iter()
                .any(|e| e.step == step && e.status == Status::Skipped && e.code == Reason::NotRun),
            "{step:?} skipped"
        );
    }
    // The steps that need no component still ran.
    assert!(
        report
            .evidence
            .iter()
            .any(|e| e.code == Reason::LicensePresent)
    );
}
