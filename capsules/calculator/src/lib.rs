//! `calculator`: evaluates an arithmetic expression.
//!
//! Input `{"expr": "2*(3+4)^2"}`, output `{"value": 98}`. Supports `+ - * / ^`
//! (`^` right-associative), parentheses, unary signs and decimals; see
//! [`eval`] for the grammar. Integral results within ±2^53 are printed as
//! JSON integers, everything else as JSON floats.
//!
//! Error codes: `bad-input`, `syntax`, `division-by-zero`, `overflow`,
//! `domain` (e.g. `(-8)^0.5`) and `too-deep`; messages give the 0-based
//! character position.

pub mod eval;

use serde::{Deserialize, Serialize};
use soma_sdk::{Capsule, Error, Info, json};

use crate::eval::{EvalError, evaluate};

const INPUT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "properties": {
    "expr": {
      "type": "string",
      "description": "Arithmetic expression: numbers, + - * / ^, parentheses, unary signs",
      "examples": ["2*(3+4)^2"]
    }
  },
  "required": ["expr"]
}"#;

const OUTPUT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "properties": {
    "value": {
      "type": "number",
      "description": "The result; an integer when it is integral and within ±2^53"
    }
  },
  "required": ["value"]
}"#;

/// 2^53: beyond it not every integer is exactly representable as an `f64`.
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;

#[derive(Deserialize)]
struct Input {
    expr: String,
}

#[derive(Serialize)]
struct Output {
    value: Number,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Number {
    Int(i64),
    Float(f64),
}

impl From<f64> for Number {
    fn from(v: f64) -> Self {
        if v.is_finite() && v.fract() == 0.0 && v.abs() <= MAX_EXACT_INT {
            // Exact: integral and within ±2^53.
            Number::Int(v as i64)
        } else {
            Number::Float(v)
        }
    }
}

impl From<EvalError> for Error {
    fn from(e: EvalError) -> Self {
        Error::new(e.code(), e.to_string())
    }
}

struct Calculator;

impl Capsule for Calculator {
    fn info() -> Info {
        Info::worker("calculator", env!("CARGO_PKG_VERSION"))
            .description(
                "Evaluates an arithmetic expression: + - * / ^, parentheses, unary signs, decimals",
            )
            .input_schema(INPUT_SCHEMA)
            .output_schema(OUTPUT_SCHEMA)
    }

    fn run(input: &str) -> Result<String, Error> {
        let input: Input = json::parse(input)?;
        let value = evaluate(&input.expr)?;
        json::output(&Output {
            value: value.into(),
        })
    }
}

soma_sdk::capsule!(Calculator);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str) -> Result<String, Error> {
        <Calculator as Capsule>::run(input)
    }

    fn code(input: &str) -> String {
        match run(input) {
            Ok(out) => panic!("{input:?} succeeded with {out}"),
            Err(e) => e.code,
        }
    }

    #[test]
    fn integral_results_print_as_integers() {
        assert_eq!(
            run(r#"{"expr": "2*(3+4)^2"}"#),
            Ok(r#"{"value":98}"#.to_owned())
        );
        assert_eq!(run(r#"{"expr": "-2^2"}"#), Ok(r#"{"value":-4}"#.to_owned()));
        assert_eq!(run(r#"{"expr": "-0"}"#), Ok(r#"{"value":0}"#.to_owned()));
        assert_eq!(
            run(r#"{"expr": "2^53"}"#),
            Ok(r#"{"value":9007199254740992}"#.to_owned())
        );
    }

    #[test]
    fn other_results_print_as_floats() {
        assert_eq!(run(r#"{"expr": "7/2"}"#), Ok(r#"{"value":3.5}"#.to_owned()));
        assert_eq!(
            run(r#"{"expr": "2^54"}"#),
            Ok(r#"{"value":1.8014398509481984e+16}"#.to_owned())
        );
    }

    #[test]
    fn errors_carry_codes_and_positions() {
        let e = run(r#"{"expr": "1/0"}"#).err();
        assert_eq!(
            e,
            Some(Error::new(
                "division-by-zero",
                "division by zero at position 1"
            ))
        );
        let e = run(r#"{"expr": "2*(3+4"}"#).err();
        assert_eq!(e, Some(Error::new("syntax", "expected ')' at position 6")));
        assert_eq!(code(r#"{"expr": "10^400"}"#), "overflow");
        assert_eq!(code(r#"{"expr": "(-1)^0.5"}"#), "domain");
        assert_eq!(
            code(&format!(r#"{{"expr": "{}"}}"#, "(".repeat(1000))),
            "too-deep"
        );
    }

    #[test]
    fn bad_input() {
        assert_eq!(code("2+2"), "bad-input");
        assert_eq!(code("{}"), "bad-input");
        assert_eq!(code(r#"{"expr": 4}"#), "bad-input");
    }

    #[test]
    fn info_schemas_are_json() {
        let info = soma_sdk::CapsuleInfo::from(Calculator::info());
        assert_eq!(info.name, "calculator");
        for schema in [&info.input_schema, &info.output_schema] {
            assert!(
                json::parse::<serde::de::IgnoredAny>(schema).is_ok(),
                "{schema}"
            );
        }
    }
}
