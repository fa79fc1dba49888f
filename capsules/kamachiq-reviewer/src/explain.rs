//! Explaining how the calculator reads an expression: a small parser for
//! the calculator's grammar that only builds the tree (it never computes),
//! renders it fully parenthesized and names the precedence and
//! associativity rules that decided the grouping.
//!
//! The values themselves always come from the real calculator; this only
//! says *why* `2^3^2` is `2^(3^2)`.

/// Operator precedence, higher binds tighter.
fn precedence(op: char) -> u8 {
    match op {
        '+' | '-' => 1,
        '*' | '/' => 2,
        _ => 3,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tree {
    Num(String),
    /// Explicit parentheses in the source.
    Group(Box<Tree>),
    Neg(Box<Tree>),
    Binary(char, Box<Tree>, Box<Tree>),
}

const MAX_DEPTH: usize = 256;

struct Parser {
    tokens: Vec<String>,
    next: usize,
    depth: usize,
}

fn tokenize(expr: &str) -> Option<Vec<String>> {
    let mut tokens = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '+' | '-' | '*' | '/' | '^' | '(' | ')' => tokens.push(c.to_string()),
            '0'..='9' | '.' => {
                let mut text = String::from(c);
                while let Some(&d) = chars.peek() {
                    if !(d.is_ascii_digit() || d == '.' && !text.contains('.')) {
                        break;
                    }
                    text.push(d);
                    chars.next();
                }
                if text == "." {
                    return None;
                }
                tokens.push(text);
            }
            _ => return None,
        }
    }
    Some(tokens)
}

impl Parser {
    fn peek(&self) -> Option<&str> {
        self.tokens.get(self.next).map(String::as_str)
    }

    fn eat(&mut self, options: &[&str]) -> Option<char> {
        let t = self.peek()?;
        if options.contains(&t) {
            let c = t.chars().next();
            self.next += 1;
            c
        } else {
            None
        }
    }

    fn nested(&mut self, f: fn(&mut Self) -> Option<Tree>) -> Option<Tree> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let t = f(self);
        self.depth -= 1;
        t
    }

    fn expr(&mut self) -> Option<Tree> {
        let mut lhs = self.term()?;
        while let Some(op) = self.eat(&["+", "-"]) {
            lhs = Tree::Binary(op, Box::new(lhs), Box::new(self.term()?));
        }
        Some(lhs)
    }

    fn term(&mut self) -> Option<Tree> {
        let mut lhs = self.unary()?;
        while let Some(op) = self.eat(&["*", "/"]) {
            lhs = Tree::Binary(op, Box::new(lhs), Box::new(self.unary()?));
        }
        Some(lhs)
    }

    fn unary(&mut self) -> Option<Tree> {
        match self.eat(&["+", "-"]) {
            Some('-') => Some(Tree::Neg(Box::new(self.nested(Self::unary)?))),
            Some(_) => self.nested(Self::unary),
            None => self.power(),
        }
    }

    fn power(&mut self) -> Option<Tree> {
        let base = self.primary()?;
        if self.eat(&["^"]).is_some() {
            let exponent = self.nested(Self::unary)?;
            Some(Tree::Binary('^', Box::new(base), Box::new(exponent)))
        } else {
            Some(base)
        }
    }

    fn primary(&mut self) -> Option<Tree> {
        if self.eat(&["("]).is_some() {
            let inner = self.nested(Self::expr)?;
            self.eat(&[")"])?;
            return Some(Tree::Group(Box::new(inner)));
        }
        let t = self.peek()?;
        if t.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            let n = Tree::Num(t.to_owned());
            self.next += 1;
            Some(n)
        } else {
            None
        }
    }
}

/// Longest expression (in tokens) worth explaining; longer chains would
/// only deepen the recursion of [`render`] and [`rules`].
const MAX_TOKENS: usize = 1_000;

fn parse(expr: &str) -> Option<Tree> {
    let tokens = tokenize(expr)?;
    if tokens.len() > MAX_TOKENS {
        return None;
    }
    let mut p = Parser {
        tokens,
        next: 0,
        depth: 0,
    };
    let tree = p.expr()?;
    (p.next == p.tokens.len()).then_some(tree)
}

/// The tree rendered with every operation parenthesized except the
/// outermost: `2^3^2` → `2^(3^2)`, `-2^2` → `-(2^2)`.
fn render(tree: &Tree, top: bool) -> String {
    match tree {
        Tree::Num(n) => n.clone(),
        Tree::Group(inner) => format!("({})", render(inner, true)),
        Tree::Neg(inner) => {
            let s = format!("-{}", render(inner, false));
            if top { s } else { format!("({s})") }
        }
        Tree::Binary(op, lhs, rhs) => {
            let s = format!("{}{op}{}", render(lhs, false), render(rhs, false));
            if top { s } else { format!("({s})") }
        }
    }
}

/// The rules the calculator applied that a reader could get wrong.
fn rules(tree: &Tree, out: &mut Vec<&'static str>) {
    let mut add = |rule: &'static str| {
        if !out.contains(&rule) {
            out.push(rule);
        }
    };
    match tree {
        Tree::Num(_) => {}
        Tree::Group(inner) => rules(inner, out),
        Tree::Neg(inner) => {
            if matches!(**inner, Tree::Binary('^', ..)) {
                add("^ binds tighter than unary minus");
            }
            rules(inner, out);
        }
        Tree::Binary(op, lhs, rhs) => {
            if *op == '^' && matches!(**rhs, Tree::Binary('^', ..)) {
                add("^ is right-associative");
            }
            if let Tree::Binary(inner, ..) = **lhs
                && *op != '^'
                && precedence(inner) == precedence(*op)
            {
                add("+ - * / are left-associative");
            }
            for child in [lhs, rhs] {
                if let Tree::Binary(inner, ..) = **child
                    && precedence(inner) > precedence(*op)
                {
                    add(match inner {
                        '^' => "^ binds tighter than * / + -",
                        _ => "* and / bind tighter than + and -",
                    });
                }
            }
            rules(lhs, out);
            rules(rhs, out);
        }
    }
}

/// How the calculator reads `expr`: its fully parenthesized form (when it
/// differs from the input without spaces) and the grouping rules involved.
/// `None` when the expression does not parse.
pub fn grouping(expr: &str) -> Option<(String, Vec<&'static str>)> {
    let tree = parse(expr)?;
    let mut found = Vec::new();
    rules(&tree, &mut found);
    Some((render(&tree, true), found))
}

/// `expr` without whitespace, as rules quote it.
pub fn compact(expr: &str) -> String {
    expr.split_whitespace().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(expr: &str) -> (String, Vec<&'static str>) {
        grouping(expr).unwrap_or_else(|| panic!("{expr} does not parse"))
    }

    #[test]
    fn renders_the_grouping() {
        assert_eq!(g("2 ^ 3 ^ 2").0, "2^(3^2)");
        assert_eq!(g("-2 ^ 2").0, "-(2^2)");
        assert_eq!(g("(-2)^2").0, "(-2)^2");
        assert_eq!(g("1 + 2 * 3").0, "1+(2*3)");
        assert_eq!(g("10 - 4 - 3").0, "(10-4)-3");
        assert_eq!(g("2*(3+4)^2").0, "2*((3+4)^2)");
        assert_eq!(g("2^-1").0, "2^(-1)");
        assert_eq!(g("+3").0, "3");
        assert_eq!(g("1.5").0, "1.5");
    }

    #[test]
    fn names_the_rules() {
        assert_eq!(g("2^3^2").1, ["^ is right-associative"]);
        assert_eq!(g("-2^2").1, ["^ binds tighter than unary minus"]);
        assert_eq!(g("(-2)^2").1, Vec::<&str>::new());
        assert_eq!(g("1+2*3").1, ["* and / bind tighter than + and -"]);
        assert_eq!(g("10-4-3").1, ["+ - * / are left-associative"]);
        assert_eq!(g("2*3^2").1, ["^ binds tighter than * / + -"]);
    }

    #[test]
    fn malformed_expressions_do_not_parse() {
        for expr in ["", "(", "1+", "1 2", "2*(3+4", "1)", "x", ".", "1..2"] {
            assert_eq!(grouping(expr), None, "{expr}");
        }
        assert_eq!(grouping(&"(".repeat(10_000)), None);
        assert_eq!(grouping(&"-".repeat(10_000)), None);
        assert_eq!(grouping(&format!("{}1", "1+".repeat(5_000))), None);
    }
}
