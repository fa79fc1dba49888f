//! The arithmetic evaluator: a hand-written tokenizer and a recursive-descent
//! parser that evaluates as it parses.
//!
//! Grammar, lowest precedence first:
//!
//! ```text
//! expr    = term (('+' | '-') term)*
//! term    = unary (('*' | '/') unary)*
//! unary   = ('+' | '-') unary | power
//! power   = primary ('^' unary)?
//! primary = number | '(' expr ')'
//! number  = digits ['.' [digits]] | '.' digits
//! ```
//!
//! So `^` is right-associative and binds tighter than a sign on its left
//! (`-2^2 = -4`), while its right operand may carry a sign (`2^-1 = 0.5`).
//! Positions are 0-based character (not byte) offsets into the expression.

use std::fmt;

/// Maximum nesting of parentheses, unary signs and exponents combined.
pub const MAX_DEPTH: usize = 256;

/// Why an expression could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalErrorKind {
    /// Division by zero, or zero raised to a negative power.
    DivisionByZero,
    /// A malformed expression; the text says what was expected or found.
    Syntax(String),
    /// A literal or intermediate result too large for an `f64`.
    Overflow,
    /// A result that is not a real number, e.g. `(-8)^0.5`.
    Domain,
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
}

/// An evaluation error at a character offset of the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    /// What went wrong.
    pub kind: EvalErrorKind,
    /// 0-based character offset of the offending token (for arithmetic
    /// errors, of the operator).
    pub position: usize,
}

impl EvalError {
    fn new(kind: EvalErrorKind, position: usize) -> Self {
        Self { kind, position }
    }

    fn syntax(what: impl Into<String>, position: usize) -> Self {
        Self::new(EvalErrorKind::Syntax(what.into()), position)
    }

    /// The machine-readable capsule error code for this error.
    pub fn code(&self) -> &'static str {
        match self.kind {
            EvalErrorKind::DivisionByZero => "division-by-zero",
            EvalErrorKind::Syntax(_) => "syntax",
            EvalErrorKind::Overflow => "overflow",
            EvalErrorKind::Domain => "domain",
            EvalErrorKind::TooDeep => "too-deep",
        }
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            EvalErrorKind::DivisionByZero => f.write_str("division by zero"),
            EvalErrorKind::Syntax(what) => f.write_str(what),
            EvalErrorKind::Overflow => f.write_str("number too large"),
            EvalErrorKind::Domain => f.write_str("result is not a real number"),
            EvalErrorKind::TooDeep => write!(f, "nesting deeper than {MAX_DEPTH} levels"),
        }?;
        write!(f, " at position {}", self.position)
    }
}

impl std::error::Error for EvalError {}

/// Evaluate an arithmetic expression such as `2*(3+4)^2`.
///
/// The result is always finite.
pub fn evaluate(expr: &str) -> Result<f64, EvalError> {
    let mut parser = Parser {
        tokens: tokenize(expr)?,
        next: 0,
        end: expr.chars().count(),
        depth: 0,
    };
    let value = parser.expr()?;
    match parser.peek() {
        (Token::End, _) => Ok(value),
        (Token::Sym(')'), pos) => Err(EvalError::syntax("unmatched ')'", pos)),
        (_, pos) => Err(EvalError::syntax(
            "expected an operator or end of input",
            pos,
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Token {
    Num(f64),
    /// One of `+ - * / ^ ( )`.
    Sym(char),
    End,
}

fn tokenize(expr: &str) -> Result<Vec<(Token, usize)>, EvalError> {
    let mut tokens = Vec::new();
    let mut chars = expr.chars().enumerate().peekable();
    while let Some((pos, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '+' | '-' | '*' | '/' | '^' | '(' | ')' => tokens.push((Token::Sym(c), pos)),
            '0'..='9' | '.' => {
                let mut text = String::from(c);
                let mut seen_dot = c == '.';
                while let Some(&(_, d)) = chars.peek() {
                    if !(d.is_ascii_digit() || d == '.' && !seen_dot) {
                        break;
                    }
                    seen_dot |= d == '.';
                    text.push(d);
                    chars.next();
                }
                // Only a lone "." fails to parse.
                let value: f64 = text
                    .parse()
                    .map_err(|_| EvalError::syntax("expected a digit", pos))?;
                if !value.is_finite() {
                    return Err(EvalError::new(EvalErrorKind::Overflow, pos));
                }
                tokens.push((Token::Num(value), pos));
            }
            other => {
                return Err(EvalError::syntax(
                    format!("unexpected character {other:?}"),
                    pos,
                ));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    next: usize,
    /// Position reported for the end of input.
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> (Token, usize) {
        self.tokens
            .get(self.next)
            .copied()
            .unwrap_or((Token::End, self.end))
    }

    fn advance(&mut self) {
        self.next += 1;
    }

    /// Run `f` one nesting level deeper, failing at `pos` past [`MAX_DEPTH`].
    fn nested(
        &mut self,
        pos: usize,
        f: fn(&mut Self) -> Result<f64, EvalError>,
    ) -> Result<f64, EvalError> {
        if self.depth >= MAX_DEPTH {
            return Err(EvalError::new(EvalErrorKind::TooDeep, pos));
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    fn expr(&mut self) -> Result<f64, EvalError> {
        let mut acc = self.term()?;
        while let (Token::Sym(op @ ('+' | '-')), pos) = self.peek() {
            self.advance();
            let rhs = self.term()?;
            acc = checked(if op == '+' { acc + rhs } else { acc - rhs }, pos)?;
        }
        Ok(acc)
    }

    fn term(&mut self) -> Result<f64, EvalError> {
        let mut acc = self.unary()?;
        while let (Token::Sym(op @ ('*' | '/')), pos) = self.peek() {
            self.advance();
            let rhs = self.unary()?;
            acc = if op == '*' {
                checked(acc * rhs, pos)?
            } else if rhs == 0.0 {
                return Err(EvalError::new(EvalErrorKind::DivisionByZero, pos));
            } else {
                checked(acc / rhs, pos)?
            };
        }
        Ok(acc)
    }

    fn unary(&mut self) -> Result<f64, EvalError> {
        match self.peek() {
            (Token::Sym(sign @ ('+' | '-')), pos) => {
                self.advance();
                let value = self.nested(pos, Self::unary)?;
                Ok(if sign == '-' { -value } else { value })
            }
            _ => self.power(),
        }
    }

    fn power(&mut self) -> Result<f64, EvalError> {
        let base = self.primary()?;
        let (Token::Sym('^'), pos) = self.peek() else {
            return Ok(base);
        };
        self.advance();
        let exponent = self.nested(pos, Self::unary)?;
        if base == 0.0 && exponent < 0.0 {
            return Err(EvalError::new(EvalErrorKind::DivisionByZero, pos));
        }
        checked(base.powf(exponent), pos)
    }

    fn primary(&mut self) -> Result<f64, EvalError> {
        match self.peek() {
            (Token::Num(value), _) => {
                self.advance();
                Ok(value)
            }
            (Token::Sym('('), pos) => {
                self.advance();
                let value = self.nested(pos, Self::expr)?;
                match self.peek() {
                    (Token::Sym(')'), _) => {
                        self.advance();
                        Ok(value)
                    }
                    (_, pos) => Err(EvalError::syntax("expected ')'", pos)),
                }
            }
            (_, pos) => Err(EvalError::syntax("expected a number or '('", pos)),
        }
    }
}

/// Reject a non-finite result of the operator at `pos`.
fn checked(value: f64, pos: usize) -> Result<f64, EvalError> {
    if value.is_nan() {
        Err(EvalError::new(EvalErrorKind::Domain, pos))
    } else if value.is_infinite() {
        Err(EvalError::new(EvalErrorKind::Overflow, pos))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(expr: &str) -> f64 {
        match evaluate(expr) {
            Ok(v) => v,
            Err(e) => panic!("{expr:?} failed: {e}"),
        }
    }

    fn err(expr: &str) -> EvalError {
        match evaluate(expr) {
            Ok(v) => panic!("{expr:?} evaluated to {v}, expected an error"),
            Err(e) => e,
        }
    }

    fn syntax(expr: &str) -> (String, usize) {
        match err(expr) {
            EvalError {
                kind: EvalErrorKind::Syntax(what),
                position,
            } => (what, position),
            other => panic!("{expr:?}: expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn example_from_the_brief() {
        assert_eq!(eval("2*(3+4)^2"), 98.0);
    }

    #[test]
    fn numbers() {
        assert_eq!(eval("42"), 42.0);
        assert_eq!(eval("3.25"), 3.25);
        assert_eq!(eval(".5"), 0.5);
        assert_eq!(eval("5."), 5.0);
        assert_eq!(eval("007"), 7.0);
        assert_eq!(eval("0.1+0.2"), 0.1 + 0.2);
    }

    #[test]
    fn precedence() {
        assert_eq!(eval("1+2*3"), 7.0);
        assert_eq!(eval("(1+2)*3"), 9.0);
        assert_eq!(eval("2*3^2"), 18.0);
        assert_eq!(eval("1+6/2*3"), 10.0);
        assert_eq!(eval("2^3*2"), 16.0);
    }

    #[test]
    fn left_associativity() {
        assert_eq!(eval("10-4-3"), 3.0);
        assert_eq!(eval("64/4/2"), 8.0);
        assert_eq!(eval("2*3/4"), 1.5);
    }

    #[test]
    fn exponent_is_right_associative() {
        assert_eq!(eval("2^3^2"), 512.0);
        assert_eq!(eval("(2^3)^2"), 64.0);
    }

    #[test]
    fn unary_signs() {
        assert_eq!(eval("-2^2"), -4.0);
        assert_eq!(eval("(-2)^2"), 4.0);
        assert_eq!(eval("2^-1"), 0.5);
        assert_eq!(eval("2^-2^2"), 1.0 / 16.0);
        assert_eq!(eval("-3*-2"), 6.0);
        assert_eq!(eval("2--3"), 5.0);
        assert_eq!(eval("--3"), 3.0);
        assert_eq!(eval("+3"), 3.0);
        assert_eq!(eval("-+-3"), 3.0);
        assert_eq!(eval("-(1+2)"), -3.0);
        assert_eq!(eval("1-(-2)"), 3.0);
    }

    #[test]
    fn whitespace() {
        assert_eq!(eval("  1 +\t2 *\n3  "), 7.0);
        assert_eq!(eval("( 2 ) ^ ( 3 )"), 8.0);
    }

    #[test]
    fn division_by_zero_names_the_operator() {
        let e = err("1 + 4/(2-2)");
        assert_eq!(e.kind, EvalErrorKind::DivisionByZero);
        assert_eq!(e.position, 5);
        assert_eq!(e.code(), "division-by-zero");
        assert_eq!(e.to_string(), "division by zero at position 5");
        assert_eq!(err("0/0").position, 1);
        assert_eq!(err("1/-0").position, 1);
        assert_eq!(err("0^-1").kind, EvalErrorKind::DivisionByZero);
    }

    #[test]
    fn syntax_errors_say_what_and_where() {
        assert_eq!(syntax("(1+2"), ("expected ')'".into(), 4));
        assert_eq!(err("2*(3+4").to_string(), "expected ')' at position 6");
        assert_eq!(syntax("1+"), ("expected a number or '('".into(), 2));
        assert_eq!(syntax("*1"), ("expected a number or '('".into(), 0));
        assert_eq!(syntax("()"), ("expected a number or '('".into(), 1));
        assert_eq!(syntax("1+)"), ("expected a number or '('".into(), 2));
        assert_eq!(syntax("1)"), ("unmatched ')'".into(), 1));
        assert_eq!(syntax("2 x"), ("unexpected character 'x'".into(), 2));
        assert_eq!(syntax("1e5"), ("unexpected character 'e'".into(), 1));
        assert_eq!(syntax("."), ("expected a digit".into(), 0));
        assert_eq!(err("1+").code(), "syntax");
    }

    #[test]
    fn positions_count_chars_not_bytes() {
        assert_eq!(syntax("1 + é"), ("unexpected character 'é'".into(), 4));
        assert_eq!(syntax("(1 + 2) ×"), ("unexpected character '×'".into(), 8));
    }

    #[test]
    fn empty_input() {
        assert_eq!(syntax(""), ("expected a number or '('".into(), 0));
        assert_eq!(syntax("   "), ("expected a number or '('".into(), 3));
    }

    #[test]
    fn trailing_garbage() {
        assert_eq!(
            syntax("1 2"),
            ("expected an operator or end of input".into(), 2)
        );
        assert_eq!(
            syntax("(1)(2)"),
            ("expected an operator or end of input".into(), 3)
        );
        assert_eq!(
            syntax("1.2.3"),
            ("expected an operator or end of input".into(), 3)
        );
    }

    #[test]
    fn overflow_and_domain() {
        let e = err("10^400");
        assert_eq!(
            (e.kind.clone(), e.position, e.code()),
            (EvalErrorKind::Overflow, 2, "overflow")
        );
        let huge = format!("1+1{}", "0".repeat(400));
        assert_eq!(
            (err(&huge).kind, err(&huge).position),
            (EvalErrorKind::Overflow, 2)
        );
        assert_eq!(err("(10^300)*(10^300)").position, 8);
        let e = err("(-8)^0.5");
        assert_eq!(
            (e.kind.clone(), e.position, e.code()),
            (EvalErrorKind::Domain, 4, "domain")
        );
    }

    #[test]
    fn depth_cap() {
        let ok = format!("{}1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert_eq!(eval(&ok), 1.0);
        let deep = format!(
            "{}1{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        let e = err(&deep);
        assert_eq!(
            (e.kind.clone(), e.position, e.code()),
            (EvalErrorKind::TooDeep, MAX_DEPTH, "too-deep")
        );
        assert_eq!(err(&"-".repeat(100_000)).kind, EvalErrorKind::TooDeep);
        assert_eq!(err(&"2^".repeat(10_000)).kind, EvalErrorKind::TooDeep);
        assert_eq!(err(&"(".repeat(100_000)).kind, EvalErrorKind::TooDeep);
    }

    #[test]
    fn long_flat_expressions_are_not_deep() {
        let sum = vec!["1"; 10_000].join("+");
        assert_eq!(eval(&sum), 10_000.0);
    }
}
