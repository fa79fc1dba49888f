//! The four parts of the calculator program: what each must provide (the
//! contract given to the LLM), the built-in template, and writing one.

use serde_json::{Value, json};
use soma_sdk::Error;

use crate::{Host, Prompt, fallback_reason};

/// One part of the single-file program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Tokens and the shared error type.
    Tokenizer,
    /// Tokens → expression tree.
    Parser,
    /// Expression tree → value.
    Evaluator,
    /// `fn main`: argv or stdin, printing, exit codes.
    Cli,
}

impl Part {
    /// Every part, in the order the program is assembled.
    pub const ALL: [Part; 4] = [Part::Tokenizer, Part::Parser, Part::Evaluator, Part::Cli];

    /// The part for a task name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The task name, also the module name.
    pub fn name(self) -> &'static str {
        match self {
            Part::Tokenizer => "tokenizer",
            Part::Parser => "parser",
            Part::Evaluator => "evaluator",
            Part::Cli => "cli",
        }
    }

    /// Where the part lives in a cargo layout (`cli` is the crate root).
    pub fn file(self) -> &'static str {
        match self {
            Part::Tokenizer => "src/tokenizer.rs",
            Part::Parser => "src/parser.rs",
            Part::Evaluator => "src/evaluator.rs",
            Part::Cli => "src/main.rs",
        }
    }

    /// Whether the assembled file wraps the part in `mod <name> { … }`
    /// (`cli` holds `fn main` and stays at the crate root).
    pub fn is_module(self) -> bool {
        self != Part::Cli
    }

    /// The built-in template.
    pub fn template(self) -> &'static str {
        match self {
            Part::Tokenizer => include_str!("../templates/tokenizer.rs"),
            Part::Parser => include_str!("../templates/parser.rs"),
            Part::Evaluator => include_str!("../templates/evaluator.rs"),
            Part::Cli => include_str!("../templates/cli.rs"),
        }
    }

    /// What the part must define so the others fit; a reply lacking one of
    /// these is not used.
    pub fn required_items(self) -> &'static [&'static str] {
        match self {
            Part::Tokenizer => &["pub enum CalcError", "pub enum Token", "pub fn tokenize"],
            Part::Parser => &["pub enum Expr", "pub fn parse"],
            Part::Evaluator => &["pub fn calculate", "pub fn evaluate"],
            Part::Cli => &["fn main"],
        }
    }

    /// The interface contract, for the LLM prompt.
    fn contract(self) -> &'static str {
        match self {
            Part::Tokenizer => {
                "Module `tokenizer` (it is wrapped in `mod tokenizer { ... }`). Define:\n\
                 - `#[derive(Debug, Clone, PartialEq)] pub enum CalcError { Syntax(String, usize), \
                 DivisionByZero(usize), Overflow(usize), Domain(usize), TooDeep(usize) }` (the usize is \
                 the 0-based character position) with `pub fn code(&self) -> &'static str` returning \
                 syntax / division-by-zero / overflow / domain / too-deep, `pub fn position(&self) -> \
                 usize`, and `impl std::fmt::Display` printing e.g. `division by zero at position 1`;\n\
                 - `#[derive(Debug, Clone, Copy, PartialEq)] pub enum Token { Num(f64), Sym(char) }`;\n\
                 - `pub fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, CalcError>`: numbers \
                 are digits with at most one '.', also `.5` and `5.`; symbols + - * / ^ ( ); whitespace \
                 is skipped; any other character is a Syntax error; a non-finite literal is Overflow."
            }
            Part::Parser => {
                "Module `parser` (wrapped in `mod parser { ... }`); use `crate::tokenizer::{tokenize, \
                 CalcError, Token}`. Define `pub const MAX_DEPTH: usize = 256;`, `#[derive(Debug, Clone, \
                 PartialEq)] pub enum Expr { Num(f64), Neg(Box<Expr>), Binary { op: char, lhs: \
                 Box<Expr>, rhs: Box<Expr>, pos: usize } }` and `pub fn parse(text: &str) -> \
                 Result<Expr, CalcError>`, a recursive-descent parser for: expr = term (('+'|'-') \
                 term)*; term = unary (('*'|'/') unary)*; unary = ('+'|'-') unary | power; power = \
                 primary ('^' unary)?; primary = number | '(' expr ')'. So ^ is right-associative and \
                 -2^2 = -(2^2). Nesting deeper than MAX_DEPTH is TooDeep; trailing tokens and \
                 unmatched parentheses are Syntax errors."
            }
            Part::Evaluator => {
                "Module `evaluator` (wrapped in `mod evaluator { ... }`); use `crate::parser::{parse, \
                 Expr}` and `crate::tokenizer::CalcError`. Define `pub fn evaluate(expr: &Expr) -> \
                 Result<f64, CalcError>` (left operand first; x/0 and 0^negative are DivisionByZero at \
                 the operator's pos; a NaN result is Domain, an infinite one Overflow) and `pub fn \
                 calculate(text: &str) -> Result<f64, CalcError>` = evaluate(parse(text))."
            }
            Part::Cli => {
                "The crate root of a single-file program (the modules tokenizer, parser and evaluator \
                 exist beside it). Use `crate::evaluator::calculate` and `crate::tokenizer::CalcError` \
                 if needed. Define `fn main() -> std::process::ExitCode`: with arguments, join them \
                 with spaces and evaluate that one expression (`--` first is ignored; -h/--help prints \
                 usage); without arguments, evaluate each non-blank stdin line. Print each value on \
                 stdout (integral values without a fraction, -0 as 0); print errors to stderr as \
                 `error: <Display> (<code>)`; exit 1 if any expression failed. Start the file with \
                 `//!` doc comments only, then items; no `mod` declarations."
            }
        }
    }
}

/// Write `part`: ask the LLM, or fall back to the template.
pub fn write(
    part: Part,
    goal: &str,
    feedback: Option<&Value>,
    model: &str,
    host: &mut dyn Host,
) -> Result<Value, Error> {
    let prompt = Prompt {
        model: model.to_owned(),
        system: "You write one part of a single-file Rust 2021 program built with plain `rustc \
                 --edition 2021 main.rs` (std only, no crates, no unsafe). Reply with the Rust code \
                 only, in one ```rust fenced block."
            .to_owned(),
        user: format!(
            "Goal: {goal}\n\nWrite the `{}` part.\n{}{}",
            part.name(),
            part.contract(),
            feedback
                .map(|f| format!("\n\nReviewer feedback on the previous version:\n{f}"))
                .unwrap_or_default()
        ),
        max_tokens: 4096,
    };
    let (strategy, code, note) = match host.chat(&prompt) {
        Ok(reply) => {
            let code = extract_code(&reply.text);
            let missing: Vec<&str> = part
                .required_items()
                .iter()
                .copied()
                .filter(|item| !code.contains(item))
                .collect();
            if missing.is_empty() {
                (
                    format!("llm:{}", reply.model),
                    code,
                    format!("written by the LLM model {}", reply.model),
                )
            } else {
                (
                    "deterministic".to_owned(),
                    part.template().to_owned(),
                    format!(
                        "deterministic strategy: the LLM reply lacked {}; built-in template",
                        missing.join(", ")
                    ),
                )
            }
        }
        Err(e) => (
            "deterministic".to_owned(),
            part.template().to_owned(),
            format!(
                "deterministic strategy: {}; built-in template",
                fallback_reason(e)?
            ),
        ),
    };
    let note = match (feedback, strategy.as_str()) {
        (Some(_), "deterministic") => format!("{note} (feedback noted; the template is fixed)"),
        _ => note,
    };
    Ok(json!({
        "task": part.name(),
        "strategy": strategy,
        "note": note,
        "file": part.file(),
        "lines": code.lines().count(),
        "code": code,
    }))
}

/// The code in a reply: the first fenced block if there is one, else all
/// of it.
pub fn extract_code(reply: &str) -> String {
    let Some(start) = reply.find("```") else {
        return format!("{}\n", reply.trim());
    };
    let after = &reply[start + 3..];
    // Skip the info string (`rust`) up to the end of the fence line.
    let body = after.find('\n').map_or("", |nl| &after[nl + 1..]);
    let body = body.find("```").map_or(body, |end| &body[..end]);
    format!("{}\n", body.trim_end())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use soma_sdk::llm::LlmError;

    use super::*;
    use crate::testing::{FakeHost, run};

    #[test]
    fn without_an_llm_each_part_is_its_template() {
        for part in Part::ALL {
            let mut host = FakeHost::denied();
            let out = run(&json!({"task": part.name(), "goal": "g"}), &mut host)
                .expect("part is written");
            assert_eq!(out["task"], part.name());
            assert_eq!(out["strategy"], "deterministic");
            assert_eq!(out["file"], part.file());
            assert_eq!(out["code"], part.template());
            let note = out["note"].as_str().unwrap_or_default();
            assert!(
                note.starts_with("deterministic strategy: no LLM configured (llm denied"),
                "{note}"
            );
            for item in part.required_items() {
                assert!(part.template().contains(item), "{part:?} lacks {item}");
            }
            assert_eq!(host.prompts.len(), 1);
            assert_eq!(host.prompts[0].model, "kamachiq-coder");
            assert_eq!(
                host.logs,
                vec![format!("{}: strategy deterministic", part.name())]
            );
        }
    }

    #[test]
    fn budget_exceeded_falls_back_and_says_so() {
        let mut host = FakeHost::answering(Err(LlmError::BudgetExceeded("run budget".into())));
        let out = run(&json!({"task": "cli", "goal": "g"}), &mut host).expect("falls back");
        assert_eq!(out["strategy"], "deterministic");
        assert!(
            out["note"]
                .as_str()
                .unwrap_or_default()
                .contains("LLM budget exceeded (run budget)")
        );
    }

    #[test]
    fn an_llm_reply_is_used_when_it_has_the_contracted_items() {
        let reply = "Here it is:\n```rust\npub fn calculate() {}\npub fn evaluate() {}\n```\nDone.";
        let mut host = FakeHost::answering(Ok(reply.into()));
        let out = run(
            &json!({"task": "evaluator", "goal": "g", "model": "m"}),
            &mut host,
        )
        .expect("written");
        assert_eq!(out["strategy"], "llm:fake-model");
        assert_eq!(out["code"], "pub fn calculate() {}\npub fn evaluate() {}\n");
        assert_eq!(host.prompts[0].model, "m");

        let mut host = FakeHost::answering(Ok("```rust\nfn nothing() {}\n```".into()));
        let out = run(&json!({"task": "evaluator", "goal": "g"}), &mut host).expect("written");
        assert_eq!(out["strategy"], "deterministic");
        assert_eq!(out["code"], Part::Evaluator.template());
    }

    #[test]
    fn code_extraction() {
        assert_eq!(extract_code("fn main() {}"), "fn main() {}\n");
        assert_eq!(extract_code("```\nfn a() {}\n```"), "fn a() {}\n");
        assert_eq!(extract_code("```rust\nfn a() {}"), "fn a() {}\n");
        assert_eq!(extract_code("```"), "\n");
    }
}
