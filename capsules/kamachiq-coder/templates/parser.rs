//! Parser: a recursive-descent parser from tokens to an expression tree.
//!
//! Grammar, lowest precedence first:
//!
//! ```text
//! expr    = term (('+' | '-') term)*
//! term    = unary (('*' | '/') unary)*
//! unary   = ('+' | '-') unary | power
//! power   = primary ('^' unary)?
//! primary = number | '(' expr ')'
//! ```
//!
//! So `^` is right-associative (`2^3^2 = 2^(3^2)`) and binds tighter than a
//! sign on its left (`-2^2 = -(2^2)`), while its right operand may carry a
//! sign (`2^-1`).

use crate::tokenizer::{tokenize, CalcError, Token};

/// Most nested parentheses, signs and exponents combined.
pub const MAX_DEPTH: usize = 256;

/// An expression tree. `pos` is the operator's character position.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A number literal.
    Num(f64),
    /// Unary minus.
    Neg(Box<Expr>),
    /// A binary operation: `op` is one of `+ - * / ^`.
    Binary {
        op: char,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
        pos: usize,
    },
}

/// Parse `text` into an [`Expr`].
pub fn parse(text: &str) -> Result<Expr, CalcError> {
    let mut parser = Parser {
        tokens: tokenize(text)?,
        next: 0,
        end: text.chars().count(),
        depth: 0,
    };
    let expr = parser.expr()?;
    match parser.peek() {
        None => Ok(expr),
        Some((Token::Sym(')'), pos)) => Err(CalcError::Syntax("unmatched ')'".to_string(), pos)),
        Some((_, pos)) => Err(CalcError::Syntax(
            "expected an operator or end of input".to_string(),
            pos,
        )),
    }
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    next: usize,
    /// The position reported for the end of input.
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<(Token, usize)> {
        self.tokens.get(self.next).copied()
    }

    /// The next symbol if it is one of `symbols`, consumed.
    fn eat(&mut self, symbols: &[char]) -> Option<(char, usize)> {
        match self.peek() {
            Some((Token::Sym(c), pos)) if symbols.contains(&c) => {
                self.next += 1;
                Some((c, pos))
            }
            _ => None,
        }
    }

    /// Run `f` one nesting level deeper, failing at `pos` past [`MAX_DEPTH`].
    fn nested(
        &mut self,
        pos: usize,
        f: fn(&mut Self) -> Result<Expr, CalcError>,
    ) -> Result<Expr, CalcError> {
        if self.depth >= MAX_DEPTH {
            return Err(CalcError::TooDeep(pos));
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    fn expr(&mut self) -> Result<Expr, CalcError> {
        let mut lhs = self.term()?;
        while let Some((op, pos)) = self.eat(&['+', '-']) {
            let rhs = self.term()?;
            lhs = binary(op, lhs, rhs, pos);
        }
        Ok(lhs)
    }

    fn term(&mut self) -> Result<Expr, CalcError> {
        let mut lhs = self.unary()?;
        while let Some((op, pos)) = self.eat(&['*', '/']) {
            let rhs = self.unary()?;
            lhs = binary(op, lhs, rhs, pos);
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, CalcError> {
        match self.eat(&['+', '-']) {
            Some(('-', pos)) => Ok(Expr::Neg(Box::new(self.nested(pos, Self::unary)?))),
            Some((_, pos)) => self.nested(pos, Self::unary),
            None => self.power(),
        }
    }

    fn power(&mut self) -> Result<Expr, CalcError> {
        let base = self.primary()?;
        match self.eat(&['^']) {
            Some((_, pos)) => {
                let exponent = self.nested(pos, Self::unary)?;
                Ok(binary('^', base, exponent, pos))
            }
            None => Ok(base),
        }
    }

    fn primary(&mut self) -> Result<Expr, CalcError> {
        match self.peek() {
            Some((Token::Num(value), _)) => {
                self.next += 1;
                Ok(Expr::Num(value))
            }
            Some((Token::Sym('('), pos)) => {
                self.next += 1;
                let inner = self.nested(pos, Self::expr)?;
                match self.eat(&[')']) {
                    Some(_) => Ok(inner),
                    None => Err(CalcError::Syntax(
                        "expected ')'".to_string(),
                        self.position(),
                    )),
                }
            }
            _ => Err(CalcError::Syntax(
                "expected a number or '('".to_string(),
                self.position(),
            )),
        }
    }

    /// The position of the next token, or of the end of input.
    fn position(&self) -> usize {
        self.peek().map_or(self.end, |(_, pos)| pos)
    }
}

fn binary(op: char, lhs: Expr, rhs: Expr, pos: usize) -> Expr {
    Expr::Binary {
        op,
        lhs: Box::new(lhs),
        rhs: Box::new(rhs),
        pos,
    }
}
