//! Tokenizer: splits an expression into numbers and the symbols
//! `+ - * / ^ ( )`, each with its 0-based character position, and defines
//! the error type every stage reports.

use std::fmt;

/// Why an expression could not be evaluated. The codes match the Soma
/// `calculator` capsule: `syntax`, `division-by-zero`, `overflow`, `domain`,
/// `too-deep`. Each variant carries the 0-based character position.
#[derive(Debug, Clone, PartialEq)]
pub enum CalcError {
    /// A malformed expression; the text says what was expected or found.
    Syntax(String, usize),
    /// Division by zero, or zero raised to a negative power.
    DivisionByZero(usize),
    /// A literal or result too large for an `f64`.
    Overflow(usize),
    /// A result that is not a real number, e.g. `(-8)^0.5`.
    Domain(usize),
    /// Nesting deeper than the parser allows.
    TooDeep(usize),
}

impl CalcError {
    /// The machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            CalcError::Syntax(..) => "syntax",
            CalcError::DivisionByZero(_) => "division-by-zero",
            CalcError::Overflow(_) => "overflow",
            CalcError::Domain(_) => "domain",
            CalcError::TooDeep(_) => "too-deep",
        }
    }

    /// The 0-based character position the error refers to.
    pub fn position(&self) -> usize {
        match self {
            CalcError::Syntax(_, pos)
            | CalcError::DivisionByZero(pos)
            | CalcError::Overflow(pos)
            | CalcError::Domain(pos)
            | CalcError::TooDeep(pos) => *pos,
        }
    }
}

impl fmt::Display for CalcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalcError::Syntax(what, _) => f.write_str(what)?,
            CalcError::DivisionByZero(_) => f.write_str("division by zero")?,
            CalcError::Overflow(_) => f.write_str("number too large")?,
            CalcError::Domain(_) => f.write_str("result is not a real number")?,
            CalcError::TooDeep(_) => f.write_str("expression nested too deeply")?,
        }
        write!(f, " at position {}", self.position())
    }
}

impl std::error::Error for CalcError {}

/// One token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Token {
    /// A number literal: `12`, `3.5`, `.5`, `5.`.
    Num(f64),
    /// One of `+ - * / ^ ( )`.
    Sym(char),
}

/// Split `text` into tokens with their character positions.
///
/// Whitespace separates tokens and is otherwise ignored; any other
/// character is a syntax error.
pub fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, CalcError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().enumerate().peekable();
    while let Some((pos, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '+' | '-' | '*' | '/' | '^' | '(' | ')' => tokens.push((Token::Sym(c), pos)),
            '0'..='9' | '.' => {
                let mut literal = String::from(c);
                let mut seen_dot = c == '.';
                while let Some(&(_, d)) = chars.peek() {
                    if !(d.is_ascii_digit() || (d == '.' && !seen_dot)) {
                        break;
                    }
                    seen_dot |= d == '.';
                    literal.push(d);
                    chars.next();
                }
                // Only a lone "." fails to parse.
                let value: f64 = literal
                    .parse()
                    .map_err(|_| CalcError::Syntax("expected a digit".to_string(), pos))?;
                if !value.is_finite() {
                    return Err(CalcError::Overflow(pos));
                }
                tokens.push((Token::Num(value), pos));
            }
            other => {
                return Err(CalcError::Syntax(
                    format!("unexpected character {other:?}"),
                    pos,
                ));
            }
        }
    }
    Ok(tokens)
}
