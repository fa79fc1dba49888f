//! The example capsules, run through the real runtime.

use serde_json::{Value, json};
use soma_runtime::{CallOptions, Failure};
use soma_tests::shared;

fn run(path: &str, input: &str) -> Result<Value, Failure> {
    let t = shared();
    let capsule = t.load(path);
    let options = CallOptions::for_capsule(&t.engine, &capsule);
    let outcome = t.engine.call(&capsule, input, &options);
    outcome
        .result
        .map(|o| serde_json::from_str(&o).unwrap_or(Value::String(o)))
}

#[test]
fn calculator_evaluates_the_acceptance_expression() {
    assert_eq!(
        run(
            soma_capsules::CALCULATOR_COMPONENT,
            r#"{"expr":"2*(3+4)^2"}"#
        )
        .expect("ok"),
        json!({"value": 98})
    );
    assert_eq!(
        run(
            soma_capsules::CALCULATOR_COMPONENT,
            r#"{"expr":"-2^2 + 1.5*.5"}"#
        )
        .expect("ok"),
        json!({"value": -3.25})
    );
}

#[test]
fn calculator_errors_are_capsule_errors_with_positions() {
    match run(soma_capsules::CALCULATOR_COMPONENT, r#"{"expr":"1/(2-2)"}"#) {
        Err(Failure::CapsuleError { code, message, .. }) => {
            assert_eq!(code, "division-by-zero");
            assert!(message.contains("position 1"), "{message}");
        }
        other => panic!("expected division-by-zero, got {other:?}"),
    }
    match run(soma_capsules::CALCULATOR_COMPONENT, r#"{"expr":"(1+2"}"#) {
        Err(Failure::CapsuleError { code, message, .. }) => {
            assert_eq!(code, "syntax");
            assert!(message.contains("position 4"), "{message}");
        }
        other => panic!("expected syntax error, got {other:?}"),
    }
    match run(soma_capsules::CALCULATOR_COMPONENT, "not json") {
        Err(Failure::CapsuleError { code, .. }) => assert_eq!(code, "bad-input"),
        other => panic!("expected bad-input, got {other:?}"),
    }
}

#[test]
fn word_count_counts() {
    let out = run(
        soma_capsules::WORD_COUNT_COMPONENT,
        r#"{"text":"the cat and the hat\nthe end"}"#,
    )
    .expect("ok");
    assert_eq!(out["words"], 7);
    assert_eq!(out["lines"], 2);
    assert_eq!(out["top"][0], json!({"word": "the", "count": 3}));
}

#[test]
fn echo_returns_its_input() {
    assert_eq!(
        run(soma_capsules::ECHO_COMPONENT, "plain text, not JSON").expect("ok"),
        json!("plain text, not JSON")
    );
}

#[test]
fn describe_is_read_at_load() {
    let t = shared();
    let c = t.load(soma_capsules::NOTEBOOK_COMPONENT);
    let m = c.manifest();
    assert_eq!((m.name.as_str(), m.kind.name()), ("notebook", "worker"));
    assert!(m.wants.kv);
    assert_eq!(m.wants.llm, vec!["small".to_owned()]);
    assert!(m.wants.other.is_empty());
}
