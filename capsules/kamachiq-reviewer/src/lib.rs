//! `kamachiq-reviewer`: the KAMACHIQ gate. Checks test cases against what
//! the real calculator did with them.
//!
//! Input: `{"cases": [{expr, expect, why?}], "results": [...], "revision"?: n}`
//! where `expect` is a number or `{"error": "<code>"}` and `results[i]` is
//! the calculator's output for `cases[i]`: `{"value": n}`, or a caught
//! failure `{"failed": true, "class": "capsule-error", "code":
//! "division-by-zero", "message": ...}`.
//!
//! Output (a gate verdict): `{"approved", "score", "feedback": {"mismatches":
//! [{expr, expected, actual, rule}], "summary", "matched", "total",
//! "revision"?}}`. Approved iff there is at least one case and every case
//! matches: numbers within a relative tolerance of 1e-9, errors by code.
//! `actual` is the calculator's number, `{"error": code, "message"}` for its
//! error, or `{"failure": class, "code", "message"}` when the calculator
//! itself could not run (not a test-case problem). `rule` explains the
//! calculator's reading, e.g. `^ is right-associative: 2^3^2 = 2^(3^2) =
//! 512`. Malformed input is `bad-input`.

mod explain;

use serde::Serialize;
use serde_json::{Value, json};
use soma_sdk::{Capsule, Error, Info, json};

/// Relative tolerance for comparing numbers.
pub const TOLERANCE: f64 = 1e-9;

const INPUT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["cases", "results"],
  "properties": {
    "cases": {"type": "array", "items": {"type": "object", "required": ["expr", "expect"],
      "properties": {"expr": {"type": "string"}, "expect": {"oneOf": [{"type": "number"},
        {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}]},
        "why": {"type": "string"}}}},
    "results": {"type": "array", "description": "The calculator's output per case: {value} or a caught failure {failed, class, code, message}"},
    "revision": {"type": "integer"}
  }
}"#;

const OUTPUT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["approved", "score", "feedback"],
  "properties": {
    "approved": {"type": "boolean"},
    "score": {"type": "number", "minimum": 0, "maximum": 1},
    "feedback": {"type": "object", "properties": {
      "mismatches": {"type": "array", "items": {"type": "object", "required": ["expr", "expected", "actual", "rule"]}},
      "summary": {"type": "string"}, "matched": {"type": "integer"}, "total": {"type": "integer"}}}
  }
}"#;

/// What a case expects.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Value(f64),
    Error(String),
}

/// What the calculator did.
#[derive(Debug, Clone, PartialEq)]
enum Actual {
    /// A value; the JSON number as the calculator printed it.
    Value(f64, Value),
    /// The calculator's own error (`capsule-error`).
    Error { code: String, message: String },
    /// The calculator could not run (trap, limit, host error).
    Failure {
        class: String,
        code: String,
        message: String,
    },
}

impl Actual {
    fn to_json(&self) -> Value {
        match self {
            Actual::Value(_, raw) => raw.clone(),
            Actual::Error { code, message } => json!({ "error": code, "message": message }),
            Actual::Failure {
                class,
                code,
                message,
            } => json!({ "failure": class, "code": code, "message": message }),
        }
    }
}

struct Case {
    expr: String,
    expect: Expect,
    raw_expect: Value,
}

fn parse_case(i: usize, value: &Value) -> Result<Case, Error> {
    let expr = value
        .get("expr")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_input(format!("cases[{i}].expr must be a string")))?;
    let raw_expect = value.get("expect").cloned().unwrap_or(Value::Null);
    let expect = match &raw_expect {
        Value::Number(n) => n.as_f64().map(Expect::Value),
        Value::Object(o) => o
            .get("error")
            .and_then(Value::as_str)
            .map(|c| Expect::Error(c.to_owned())),
        _ => None,
    }
    .ok_or_else(|| {
        Error::bad_input(format!(
            "cases[{i}].expect must be a number or {{\"error\": \"<code>\"}}, not {raw_expect}"
        ))
    })?;
    Ok(Case {
        expr: expr.to_owned(),
        expect,
        raw_expect,
    })
}

fn parse_result(i: usize, value: &Value) -> Result<Actual, Error> {
    let bad = || {
        Error::bad_input(format!(
            "results[{i}] must be {{\"value\": number}} or a caught failure {{\"failed\": true, \
             \"class\", \"code\", \"message\"}}, not {value}"
        ))
    };
    let text = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    if let Some(v) = value.get("value") {
        return v
            .as_f64()
            .map(|n| Actual::Value(n, v.clone()))
            .ok_or_else(bad);
    }
    if value.get("failed").and_then(Value::as_bool) != Some(true) {
        return Err(bad());
    }
    let class = value.get("class").and_then(Value::as_str).ok_or_else(bad)?;
    Ok(if class == "capsule-error" {
        Actual::Error {
            code: text("code"),
            message: text("message"),
        }
    } else {
        Actual::Failure {
            class: class.to_owned(),
            code: text("code"),
            message: text("message"),
        }
    })
}

/// Whether two numbers agree within [`TOLERANCE`], relative to the larger
/// magnitude (absolute below 1).
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOLERANCE * a.abs().max(b.abs()).max(1.0)
}

fn matches(expect: &Expect, actual: &Actual) -> bool {
    match (expect, actual) {
        (Expect::Value(want), Actual::Value(got, _)) => close(*want, *got),
        (Expect::Error(want), Actual::Error { code, .. }) => want == code,
        _ => false,
    }
}

/// Why the calculator's answer is what it is.
fn rule(case: &Case, actual: &Actual) -> String {
    let expr = explain::compact(&case.expr);
    let grouping = explain::grouping(&case.expr);
    let reading = match &grouping {
        Some((grouped, _)) if *grouped != expr => format!("{expr} = {grouped}"),
        _ => expr.clone(),
    };
    let rules = grouping
        .as_ref()
        .map(|(_, rules)| rules.join("; "))
        .unwrap_or_default();
    let because = |text: String| {
        if rules.is_empty() {
            text
        } else {
            format!("{rules}: {text}")
        }
    };
    match (&case.expect, actual) {
        (_, Actual::Failure { class, message, .. }) => format!(
            "the calculator could not run this case ({class}: {message}); not a test-case problem"
        ),
        (Expect::Value(_), Actual::Value(_, raw)) => because(format!("{reading} = {raw}")),
        (Expect::Error(code), Actual::Value(_, raw)) => because(format!(
            "{reading} = {raw} is a valid result, not a {code} error"
        )),
        (Expect::Value(_), Actual::Error { code, message }) => {
            let why = match code.as_str() {
                "division-by-zero" => "division by zero is an error, not infinity",
                "syntax" => "the expression is malformed",
                "overflow" => "the result is too large for an f64",
                "domain" => "the result is not a real number",
                "too-deep" => "the expression is nested too deeply",
                _ => "the calculator rejects it",
            };
            format!("{why}: {expr} fails with {code} ({message})")
        }
        (Expect::Error(want), Actual::Error { code, message }) => {
            format!("{expr} fails with {code}, not {want} ({message})")
        }
    }
}

/// A mismatch reported to the gated node.
#[derive(Debug, Serialize)]
struct Mismatch {
    expr: String,
    expected: Value,
    actual: Value,
    rule: String,
}

/// Review `input` (the gate's whole job, without the host).
pub fn review(input: &Value) -> Result<Value, Error> {
    let cases = input
        .get("cases")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::bad_input("`cases` must be an array of {expr, expect}"))?;
    let results = input
        .get("results")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::bad_input("`results` must be an array (the calculator's outputs)"))?;
    if cases.len() != results.len() {
        return Err(Error::bad_input(format!(
            "{} cases but {} results: results[i] must be the calculator's output for cases[i]",
            cases.len(),
            results.len()
        )));
    }
    let cases = cases
        .iter()
        .enumerate()
        .map(|(i, c)| parse_case(i, c))
        .collect::<Result<Vec<_>, _>>()?;
    let results = results
        .iter()
        .enumerate()
        .map(|(i, r)| parse_result(i, r))
        .collect::<Result<Vec<_>, _>>()?;
    let revision = input.get("revision").and_then(Value::as_u64);

    let mut mismatches = Vec::new();
    for (case, actual) in cases.iter().zip(&results) {
        if !matches(&case.expect, actual) {
            mismatches.push(Mismatch {
                expr: case.expr.clone(),
                expected: case.raw_expect.clone(),
                actual: actual.to_json(),
                rule: rule(case, actual),
            });
        }
    }
    let total = cases.len();
    let matched = total - mismatches.len();
    let approved = total > 0 && mismatches.is_empty();
    let score = if total == 0 {
        0.0
    } else {
        matched as f64 / total as f64
    };
    let summary = if total == 0 {
        "no test cases to review: write some".to_owned()
    } else if approved {
        format!("all {total} cases match the calculator")
    } else {
        let exprs: Vec<&str> = mismatches.iter().map(|m| m.expr.as_str()).collect();
        format!(
            "{} of {total} cases disagree with the calculator: {}",
            mismatches.len(),
            exprs.join(", ")
        )
    };
    let mut feedback = json!({
        "mismatches": mismatches,
        "summary": summary,
        "matched": matched,
        "total": total,
    });
    if let Some(r) = revision {
        feedback["revision"] = json!(r);
    }
    Ok(json!({ "approved": approved, "score": score, "feedback": feedback }))
}

struct Reviewer;

impl Capsule for Reviewer {
    fn info() -> Info {
        Info::gate("kamachiq-reviewer", env!("CARGO_PKG_VERSION"))
            .description(
                "KAMACHIQ reviewer: approves test cases only if every expectation matches the \
                 real calculator's result, else explains each mismatch",
            )
            .input_schema(INPUT_SCHEMA)
            .output_schema(OUTPUT_SCHEMA)
    }

    fn run(input: &str) -> Result<String, Error> {
        let input: Value = json::parse(input)?;
        json::output(&review(&input)?)
    }
}

soma_sdk::capsule!(Reviewer);

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: Value) -> String {
        match review(&input) {
            Ok(v) => panic!("expected an error, got {v}"),
            Err(e) => e.code,
        }
    }

    fn draft() -> Value {
        json!([
            {"expr": "1 + 2", "expect": 3, "why": "addition"},
            {"expr": "2 ^ 3 ^ 2", "expect": 64, "why": "left to right"},
            {"expr": "-2 ^ 2", "expect": 4, "why": "squares are positive"},
            {"expr": "0.1 + 0.2", "expect": 0.3},
            {"expr": "1 / 0", "expect": {"error": "division-by-zero"}},
        ])
    }

    fn calculator_results() -> Value {
        json!([
            {"value": 3},
            {"value": 512},
            {"value": -4},
            {"value": 0.30000000000000004},
            {"failed": true, "class": "capsule-error", "code": "division-by-zero",
             "message": "division by zero at position 2"},
        ])
    }

    #[test]
    fn the_naive_draft_is_rejected_with_rules() {
        let out =
            review(&json!({"cases": draft(), "results": calculator_results(), "revision": 1}))
                .expect("reviewed");
        assert_eq!(out["approved"], false);
        assert_eq!(out["score"], 0.6);
        let fb = &out["feedback"];
        assert_eq!(fb["matched"], 3);
        assert_eq!(fb["total"], 5);
        assert_eq!(fb["revision"], 1);
        assert_eq!(
            fb["mismatches"],
            json!([
                {"expr": "2 ^ 3 ^ 2", "expected": 64, "actual": 512,
                 "rule": "^ is right-associative: 2^3^2 = 2^(3^2) = 512"},
                {"expr": "-2 ^ 2", "expected": 4, "actual": -4,
                 "rule": "^ binds tighter than unary minus: -2^2 = -(2^2) = -4"},
            ])
        );
        assert_eq!(
            fb["summary"],
            "2 of 5 cases disagree with the calculator: 2 ^ 3 ^ 2, -2 ^ 2"
        );
    }

    #[test]
    fn matching_cases_are_approved() {
        let mut cases = draft();
        cases[1]["expect"] = json!(512);
        cases[2]["expect"] = json!(-4.0);
        let out =
            review(&json!({"cases": cases, "results": calculator_results()})).expect("reviewed");
        assert_eq!(out["approved"], true);
        assert_eq!(out["score"], 1.0);
        assert_eq!(out["feedback"]["mismatches"], json!([]));
        assert_eq!(
            out["feedback"]["summary"],
            "all 5 cases match the calculator"
        );
        assert!(out["feedback"].get("revision").is_none());
    }

    #[test]
    fn no_cases_is_not_approved() {
        let out = review(&json!({"cases": [], "results": []})).expect("reviewed");
        assert_eq!(out["approved"], false);
        assert_eq!(out["score"], 0.0);
    }

    #[test]
    fn error_mismatches_are_explained() {
        let cases = json!([
            {"expr": "1/0", "expect": 0},
            {"expr": "2*3", "expect": {"error": "syntax"}},
            {"expr": "1/0", "expect": {"error": "overflow"}},
            {"expr": "1+1", "expect": 2},
        ]);
        let div = json!({"failed": true, "class": "capsule-error", "code": "division-by-zero",
                         "message": "division by zero at position 1"});
        let results = json!([div, {"value": 6}, div,
            {"failed": true, "class": "out-of-fuel", "code": "out-of-fuel", "message": "fuel"}]);
        let out = review(&json!({"cases": cases, "results": results})).expect("reviewed");
        let m = &out["feedback"]["mismatches"];
        assert_eq!(
            m[0]["rule"],
            "division by zero is an error, not infinity: 1/0 fails with division-by-zero \
             (division by zero at position 1)"
        );
        assert_eq!(
            m[0]["actual"],
            json!({"error": "division-by-zero", "message": "division by zero at position 1"})
        );
        assert_eq!(
            m[1]["rule"],
            "2*3 = 6 is a valid result, not a syntax error"
        );
        assert_eq!(
            m[2]["rule"],
            "1/0 fails with division-by-zero, not overflow (division by zero at position 1)"
        );
        assert_eq!(
            m[3]["actual"],
            json!({"failure": "out-of-fuel", "code": "out-of-fuel", "message": "fuel"})
        );
        assert!(
            m[3]["rule"]
                .as_str()
                .unwrap_or_default()
                .contains("not a test-case problem")
        );
        assert_eq!(out["score"], 0.0);
    }

    #[test]
    fn tolerance_is_relative() {
        assert!(close(0.3, 0.1 + 0.2));
        assert!(close(1e20, 1e20 + 1e5));
        assert!(!close(1e20, 1.0001e20));
        assert!(!close(0.0, 1e-6));
        assert!(close(0.0, -0.0));
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert_eq!(err(json!({})), "bad-input");
        assert_eq!(err(json!({"cases": {}, "results": []})), "bad-input");
        assert_eq!(err(json!({"cases": [], "results": null})), "bad-input");
        assert_eq!(
            err(json!({"cases": [{"expr": "1", "expect": 1}], "results": []})),
            "bad-input"
        );
        assert_eq!(
            err(json!({"cases": [{"expr": 1, "expect": 1}], "results": [{"value": 1}]})),
            "bad-input"
        );
        assert_eq!(
            err(json!({"cases": [{"expr": "1", "expect": "1"}], "results": [{"value": 1}]})),
            "bad-input"
        );
        assert_eq!(
            err(json!({"cases": [{"expr": "1", "expect": 1}], "results": [{"value": "1"}]})),
            "bad-input"
        );
        assert_eq!(
            err(json!({"cases": [{"expr": "1", "expect": 1}], "results": [{"failed": false}]})),
            "bad-input"
        );
        assert_eq!(
            err(json!({"cases": [{"expr": "1", "expect": 1}], "results": [7]})),
            "bad-input"
        );
        assert_eq!(
            <Reviewer as Capsule>::run("[1").err().map(|e| e.code),
            Some("bad-input".to_owned())
        );
    }

    #[test]
    fn info_is_a_gate_with_json_schemas() {
        let info = soma_sdk::CapsuleInfo::from(Reviewer::info());
        assert_eq!(info.name, "kamachiq-reviewer");
        assert!(matches!(info.kind, soma_sdk::CapsuleKind::Gate));
        for schema in [&info.input_schema, &info.output_schema] {
            assert!(json::parse::<Value>(schema).is_ok(), "{schema}");
        }
    }
}
