//! Evaluator: computes an expression tree as `f64`, rejecting division by
//! zero and any non-finite result, so every value it returns is finite.

use crate::parser::{parse, Expr};
use crate::tokenizer::CalcError;

/// Parse and evaluate `text`, e.g. `calculate("2*(3+4)^2") == Ok(98.0)`.
pub fn calculate(text: &str) -> Result<f64, CalcError> {
    evaluate(&parse(text)?)
}

/// Evaluate `expr`, left operand first.
pub fn evaluate(expr: &Expr) -> Result<f64, CalcError> {
    match expr {
        Expr::Num(value) => Ok(*value),
        Expr::Neg(inner) => Ok(-evaluate(inner)?),
        Expr::Binary { op, lhs, rhs, pos } => {
            let (a, b) = (evaluate(lhs)?, evaluate(rhs)?);
            let pos = *pos;
            let value = match op {
                '+' => a + b,
                '-' => a - b,
                '*' => a * b,
                '/' if b == 0.0 => return Err(CalcError::DivisionByZero(pos)),
                '/' => a / b,
                '^' if a == 0.0 && b < 0.0 => return Err(CalcError::DivisionByZero(pos)),
                '^' => a.powf(b),
                other => {
                    return Err(CalcError::Syntax(
                        format!("unknown operator {other:?}"),
                        pos,
                    ))
                }
            };
            if value.is_nan() {
                Err(CalcError::Domain(pos))
            } else if value.is_infinite() {
                Err(CalcError::Overflow(pos))
            } else {
                Ok(value)
            }
        }
    }
}
