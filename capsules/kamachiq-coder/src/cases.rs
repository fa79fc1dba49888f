//! Test cases for the calculator: `{expr, expect, why}` where `expect` is a
//! number or `{"error": "<code>"}`.
//!
//! The deterministic strategy writes a first draft from a naive reading of
//! the goal, two of whose expectations are common misconceptions
//! (`2^3^2 = 64`, `-2^2 = 4`). Given the reviewer's feedback it revises
//! exactly the cases the reviewer reported, adopting the calculator's
//! result and quoting the reviewer's rule.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use soma_sdk::Error;

use crate::{Host, Prompt, fallback_reason};

/// One test case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// The expression.
    pub expr: String,
    /// A number, or `{"error": "<code>"}`.
    pub expect: Value,
    /// Why this is the expected result.
    #[serde(default)]
    pub why: String,
}

/// What a case expects.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// This value (compared with a small relative tolerance).
    Value(f64),
    /// A failure with this error code.
    Error(String),
}

impl Expect {
    /// Read an `expect` value: a number or `{"error": "<code>"}`.
    pub fn from_json(value: &Value) -> Option<Self> {
        match value {
            Value::Number(n) => n.as_f64().map(Expect::Value),
            Value::Object(o) => o
                .get("error")
                .and_then(Value::as_str)
                .map(|code| Expect::Error(code.to_owned())),
            _ => None,
        }
    }
}

/// Parse and check a list of cases: each has a non-empty `expr` and a
/// readable `expect`.
pub fn parse_cases(value: &Value) -> Result<Vec<Case>, String> {
    let cases: Vec<Case> =
        serde_json::from_value(value.clone()).map_err(|e| format!("cases are not valid: {e}"))?;
    for (i, case) in cases.iter().enumerate() {
        if case.expr.trim().is_empty() {
            return Err(format!("case {i} has an empty expr"));
        }
        if Expect::from_json(&case.expect).is_none() {
            return Err(format!(
                "case {i} ({:?}): expect must be a number or {{\"error\": \"<code>\"}}, not {}",
                case.expr, case.expect
            ));
        }
    }
    Ok(cases)
}

/// The first draft: a naive reading of "build a command-line calculator".
/// Cases 9 and 10 are honest mistakes a first draft makes.
pub fn first_draft() -> Vec<Case> {
    let case = |expr: &str, expect: Value, why: &str| Case {
        expr: expr.to_owned(),
        expect,
        why: why.to_owned(),
    };
    let error = |code: &str| json!({ "error": code });
    vec![
        case("1 + 2", json!(3), "addition"),
        case("7 - 10", json!(-3), "subtraction can go below zero"),
        case("6 * 7", json!(42), "multiplication"),
        case(
            "7 / 2",
            json!(3.5),
            "division is exact, not integer division",
        ),
        case("1 + 2 * 3", json!(7), "* binds tighter than +"),
        case("(1 + 2) * 3", json!(9), "parentheses group first"),
        case("10 - 4 - 3", json!(3), "- is left-associative"),
        case("2 * (3 + 4) ^ 2", json!(98), "^ binds tighter than *"),
        case(
            "2 ^ 3 ^ 2",
            json!(64),
            "operators of equal precedence go left to right",
        ),
        case("-2 ^ 2", json!(4), "a negative number squared is positive"),
        case("1.5 + 2.25", json!(3.75), "decimals"),
        case("0.1 + 0.2", json!(0.3), "decimal sums, within a tolerance"),
        case(
            "1 / 0",
            error("division-by-zero"),
            "dividing by zero is an error, not infinity",
        ),
        case(
            "2 * (3 + 4",
            error("syntax"),
            "an unclosed parenthesis is a syntax error",
        ),
    ]
}

/// A reviewer's mismatch, as much of it as revising needs.
#[derive(Debug, Deserialize)]
struct Mismatch {
    expr: String,
    actual: Value,
    #[serde(default)]
    rule: String,
}

#[derive(Debug, Deserialize)]
struct Feedback {
    #[serde(default)]
    mismatches: Vec<Mismatch>,
    #[serde(default)]
    revision: Option<u64>,
}

/// The expectation the calculator's `actual` result implies.
fn expectation_of(actual: &Value) -> Option<Value> {
    match actual {
        Value::Number(_) => Some(actual.clone()),
        Value::Object(o) => o
            .get("error")
            .and_then(Value::as_str)
            .map(|code| json!({ "error": code })),
        _ => None,
    }
}

/// `cases` revised after `feedback`: each reported case takes the actual
/// result. Returns the revised expressions.
fn revise(cases: &mut [Case], feedback: &Feedback) -> Vec<String> {
    let mut revised = Vec::new();
    for m in &feedback.mismatches {
        let Some(expect) = expectation_of(&m.actual) else {
            continue;
        };
        for case in cases.iter_mut().filter(|c| c.expr == m.expr) {
            case.expect = expect.clone();
            case.why = if m.rule.is_empty() {
                "revised after review: the calculator's result".to_owned()
            } else {
                format!("revised after review: {}", m.rule)
            };
            revised.push(case.expr.clone());
        }
    }
    revised
}

fn parse_feedback(feedback: Option<&Value>) -> Result<Option<Feedback>, Error> {
    feedback
        .map(|f| {
            serde_json::from_value::<Feedback>(f.clone()).map_err(|e| {
                Error::bad_input(format!(
                    "feedback must be a reviewer's {{mismatches: [{{expr, actual, rule}}]}}: {e}"
                ))
            })
        })
        .transpose()
}

/// Write the test cases: ask the LLM, or draft and revise deterministically.
pub fn write(
    goal: &str,
    feedback: Option<&Value>,
    model: &str,
    host: &mut dyn Host,
) -> Result<Value, Error> {
    let parsed = parse_feedback(feedback)?;
    let revision = match &parsed {
        None => 1,
        Some(f) => f.revision.unwrap_or(1).saturating_add(1),
    };
    let prompt = Prompt {
        model: model.to_owned(),
        system: "You write test cases for an arithmetic calculator. Reply with JSON only: \
                 {\"cases\": [{\"expr\": \"...\", \"expect\": <number> | {\"error\": \"<code>\"}, \
                 \"why\": \"...\"}]}. Error codes: syntax, division-by-zero, overflow, domain."
            .to_owned(),
        user: format!(
            "Goal: {goal}\nWrite about 12 cases covering + - * / ^, precedence, associativity, \
             unary minus, parentheses, decimals and errors.{}",
            feedback
                .map(|f| format!(
                    "\nThe reviewer checked your previous cases against the real calculator; \
                     fix them:\n{f}"
                ))
                .unwrap_or_default()
        ),
        max_tokens: 2048,
    };
    let llm_note = match host.chat(&prompt) {
        Ok(reply) => match llm_cases(&reply.text) {
            Ok(cases) => {
                return Ok(json!({
                    "task": "test-cases",
                    "strategy": format!("llm:{}", reply.model),
                    "note": format!("written by the LLM model {}", reply.model),
                    "cases": cases,
                    "revision": revision,
                    "revised": [],
                }));
            }
            Err(why) => format!("the LLM reply was unusable ({why})"),
        },
        Err(e) => fallback_reason(e)?,
    };
    let mut cases = first_draft();
    let (revised, note) = match &parsed {
        None => (
            Vec::new(),
            format!(
                "deterministic strategy: {llm_note}; first draft of {} cases from a naive reading \
                 of the goal",
                cases.len()
            ),
        ),
        Some(f) => {
            let revised = revise(&mut cases, f);
            let note = format!(
                "deterministic strategy: {llm_note}; revision {revision}: revised after review: {} \
                 of {} reported cases ({})",
                revised.len(),
                f.mismatches.len(),
                revised.join(", ")
            );
            (revised, note)
        }
    };
    Ok(json!({
        "task": "test-cases",
        "strategy": "deterministic",
        "note": note,
        "cases": cases,
        "revision": revision,
        "revised": revised,
    }))
}

/// Cases from an LLM reply: a JSON object with `cases`, or a bare array,
/// possibly inside a fenced block.
fn llm_cases(reply: &str) -> Result<Vec<Case>, String> {
    let text = crate::parts::extract_code(reply);
    let parse = |s: &str| serde_json::from_str::<Value>(s.trim()).ok();
    let value = parse(&text)
        .or_else(|| {
            let (start, end) = (text.find('{')?, text.rfind('}')?);
            parse(text.get(start..=end)?)
        })
        .ok_or("not JSON")?;
    let list = value.get("cases").unwrap_or(&value);
    let cases = parse_cases(list)?;
    if cases.is_empty() {
        return Err("no cases".to_owned());
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{FakeHost, code, run};

    #[test]
    fn first_round_is_the_naive_draft() {
        let mut host = FakeHost::denied();
        let out = run(&json!({"task": "test-cases", "goal": "g"}), &mut host).expect("written");
        assert_eq!(out["strategy"], "deterministic");
        assert_eq!(out["revision"], 1);
        let note = out["note"].as_str().unwrap_or_default();
        assert!(
            note.starts_with("deterministic strategy: no LLM configured"),
            "{note}"
        );
        let cases = parse_cases(&out["cases"]).expect("valid cases");
        assert_eq!(cases, first_draft());
        assert!(cases.len() >= 12);
        let expect = |expr: &str| {
            cases
                .iter()
                .find(|c| c.expr == expr)
                .map(|c| c.expect.clone())
        };
        // The misconceptions a first draft makes.
        assert_eq!(expect("2 ^ 3 ^ 2"), Some(json!(64)));
        assert_eq!(expect("-2 ^ 2"), Some(json!(4)));
        assert_eq!(expect("1 / 0"), Some(json!({"error": "division-by-zero"})));
    }

    #[test]
    fn feedback_revises_exactly_the_reported_cases() {
        let feedback = json!({
            "mismatches": [
                {"expr": "2 ^ 3 ^ 2", "expected": 64, "actual": 512,
                 "rule": "^ is right-associative: 2^3^2 = 2^(3^2) = 512"},
                {"expr": "-2 ^ 2", "expected": 4, "actual": -4,
                 "rule": "unary minus binds looser than ^: -2^2 = -(2^2) = -4"},
                {"expr": "not in the draft", "expected": 1, "actual": 2, "rule": ""},
            ],
            "summary": "…",
            "revision": 1,
        });
        let mut host = FakeHost::denied();
        let out = run(
            &json!({"task": "test-cases", "goal": "g", "feedback": feedback}),
            &mut host,
        )
        .expect("revised");
        assert_eq!(out["revision"], 2);
        assert_eq!(out["revised"], json!(["2 ^ 3 ^ 2", "-2 ^ 2"]));
        let cases = parse_cases(&out["cases"]).expect("valid cases");
        let draft = first_draft();
        assert_eq!(cases.len(), draft.len());
        for (new, old) in cases.iter().zip(&draft) {
            match new.expr.as_str() {
                "2 ^ 3 ^ 2" => {
                    assert_eq!(new.expect, json!(512));
                    assert_eq!(
                        new.why,
                        "revised after review: ^ is right-associative: 2^3^2 = 2^(3^2) = 512"
                    );
                }
                "-2 ^ 2" => assert_eq!(new.expect, json!(-4)),
                _ => assert_eq!(new, old),
            }
        }
        assert!(
            out["note"]
                .as_str()
                .unwrap_or_default()
                .contains("revised after review: 2 of 3")
        );
    }

    #[test]
    fn an_error_result_becomes_an_error_expectation() {
        let feedback = json!({"mismatches": [{"expr": "7 / 2", "expected": 3.5,
            "actual": {"error": "division-by-zero", "message": "m"}, "rule": "r"}]});
        let mut host = FakeHost::denied();
        let out = run(
            &json!({"task": "test-cases", "feedback": feedback}),
            &mut host,
        )
        .expect("revised");
        assert_eq!(out["revision"], 2);
        assert_eq!(
            out["cases"][3]["expect"],
            json!({"error": "division-by-zero"})
        );
    }

    #[test]
    fn malformed_feedback_is_bad_input() {
        let mut host = FakeHost::denied();
        for feedback in [json!("try harder"), json!({"mismatches": [{"expr": 1}]})] {
            assert_eq!(
                code(run(
                    &json!({"task": "test-cases", "feedback": feedback}),
                    &mut host
                )),
                "bad-input"
            );
        }
    }

    #[test]
    fn llm_cases_are_used_when_valid() {
        let reply =
            "```json\n{\"cases\": [{\"expr\": \"1+1\", \"expect\": 2, \"why\": \"w\"}]}\n```";
        let mut host = FakeHost::answering(Ok(reply.into()));
        let out = run(&json!({"task": "test-cases", "goal": "g"}), &mut host).expect("written");
        assert_eq!(out["strategy"], "llm:fake-model");
        assert_eq!(
            out["cases"],
            json!([{"expr": "1+1", "expect": 2, "why": "w"}])
        );

        let mut host = FakeHost::answering(Ok("I cannot do that".into()));
        let out = run(&json!({"task": "test-cases", "goal": "g"}), &mut host).expect("written");
        assert_eq!(out["strategy"], "deterministic");
        assert!(
            out["note"]
                .as_str()
                .unwrap_or_default()
                .contains("the LLM reply was unusable")
        );
    }

    #[test]
    fn case_validation() {
        assert!(parse_cases(&json!([{"expr": "1", "expect": 1}])).is_ok());
        assert!(parse_cases(&json!([{"expr": "", "expect": 1}])).is_err());
        assert!(parse_cases(&json!([{"expr": "1", "expect": "1"}])).is_err());
        assert!(parse_cases(&json!([{"expr": "1"}])).is_err());
        assert!(parse_cases(&json!({"expr": "1"})).is_err());
    }
}
