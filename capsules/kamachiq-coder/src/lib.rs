//! `kamachiq-coder`: the KAMACHIQ worker. One capsule, six tasks:
//!
//! | task | output |
//! |---|---|
//! | `tokenizer`, `parser`, `evaluator`, `cli` | `{task, strategy, note, file, code, lines}`: one part of a single-file Rust calculator |
//! | `test-cases` | `{task, strategy, note, cases: [{expr, expect, why}], revision, revised}` |
//! | `assemble` | `{task, strategy, note, files: {path: text}, summary}` |
//!
//! Input: `{"task", "goal", "feedback"?, "model"?}`; `assemble` also takes
//! `parts` (the four part outputs by task), `tests` (the `test-cases`
//! output) and `review` (the reviewer's verdict).
//!
//! Strategy: the code and test tasks ask the LLM model `kamachiq-coder` (or
//! input `model`) first. When the call is denied, unavailable or over
//! budget — the default, with no provider configured — or the reply is
//! unusable, the task uses the deterministic strategy instead and says why
//! in `note`: code parts come from the templates in `templates/`; test cases
//! come from a built-in first draft that (like a naive first draft) gets
//! `2^3^2` and `-2^2` wrong, revised from the reviewer's feedback. `assemble`
//! is always deterministic. Bad input is a `bad-input` error, never a trap.

mod assemble;
mod cases;
mod parts;

use serde::Deserialize;
use serde_json::Value;
use soma_sdk::{
    Capsule, Error, Info, json,
    llm::{self, LlmError},
    log,
};

/// The LLM model (or operator alias) the coder asks for by default.
pub const DEFAULT_MODEL: &str = "kamachiq-coder";

const INPUT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["task"],
  "properties": {
    "task": {"enum": ["tokenizer", "parser", "evaluator", "cli", "test-cases", "assemble"]},
    "goal": {"type": "string"},
    "feedback": {"description": "A reviewer's feedback: {mismatches: [{expr, expected, actual, rule}], revision}"},
    "model": {"type": "string", "description": "LLM model or alias; default kamachiq-coder"},
    "lang": {"const": "rust", "description": "The program's language, when the goal names one"},
    "parts": {"type": "object", "description": "assemble: the part outputs keyed tokenizer, parser, evaluator, cli"},
    "tests": {"type": "object", "description": "assemble: the test-cases output"},
    "review": {"type": "object", "description": "assemble: the reviewer's verdict"}
  }
}"#;

const OUTPUT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["task", "strategy", "note"],
  "properties": {
    "task": {"type": "string"},
    "strategy": {"type": "string", "description": "deterministic or llm:<model>"},
    "note": {"type": "string"},
    "file": {"type": "string"},
    "code": {"type": "string"},
    "cases": {"type": "array"},
    "revision": {"type": "integer"},
    "files": {"type": "object", "additionalProperties": {"type": "string"}},
    "summary": {"type": "object"}
  }
}"#;

/// One task the coder can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// A part of the program (`tokenizer`, `parser`, `evaluator`, `cli`).
    Part(parts::Part),
    /// Test cases for the calculator.
    TestCases,
    /// Put the parts and the reviewed tests together.
    Assemble,
}

impl Task {
    fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "test-cases" => Ok(Task::TestCases),
            "assemble" => Ok(Task::Assemble),
            other => parts::Part::parse(other).map(Task::Part).ok_or_else(|| {
                Error::bad_input(format!(
                    "unknown task {other:?}: expected one of tokenizer, parser, evaluator, cli, \
                     test-cases, assemble"
                ))
            }),
        }
    }
}

#[derive(Deserialize)]
struct Input {
    task: String,
    #[serde(default)]
    goal: String,
    #[serde(default)]
    feedback: Option<Value>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    parts: Option<Value>,
    #[serde(default)]
    tests: Option<Value>,
    #[serde(default)]
    review: Option<Value>,
    /// The program's language, set by the planner when the goal names one.
    #[serde(default)]
    lang: Option<String>,
}

/// A chat request, independent of the SDK so tests can answer it.
#[derive(Debug, Clone)]
pub struct Prompt {
    /// Model or operator alias.
    pub model: String,
    /// The system message.
    pub system: String,
    /// The user message.
    pub user: String,
    /// Cap on completion tokens.
    pub max_tokens: u32,
}

/// A chat reply.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The completion text.
    pub text: String,
    /// The model that answered.
    pub model: String,
}

/// What the coder needs from the host: chat and log. The capsule uses the
/// SDK's; unit tests use a fake.
pub trait Host {
    /// Send `prompt` to the LLM.
    fn chat(&mut self, prompt: &Prompt) -> Result<Reply, LlmError>;
    /// Log an info line.
    fn log(&mut self, message: &str);
}

/// Why the deterministic strategy was used, for `note`, or an error for an
/// LLM failure that is a bug rather than a missing provider.
fn fallback_reason(e: LlmError) -> Result<String, Error> {
    match e {
        LlmError::Denied(why) => Ok(format!("no LLM configured (llm denied: {why})")),
        LlmError::Unavailable(why) => Ok(format!("no LLM configured (llm unavailable: {why})")),
        LlmError::BudgetExceeded(why) => Ok(format!("LLM budget exceeded ({why})")),
        e @ LlmError::Invalid(_) => Err(e.into()),
    }
}

/// Run one task against `host`. Pure apart from `host`.
pub fn run_with(input: &str, host: &mut dyn Host) -> Result<String, Error> {
    let input: Input = json::parse(input)?;
    let task = Task::parse(&input.task)?;
    if input.goal.contains("{{") {
        return Err(Error::bad_input(
            "goal must not contain template braces `{{`",
        ));
    }
    if let Some(lang) = input.lang.as_deref().filter(|l| *l != "rust") {
        return Err(Error::new(
            "unsupported-language",
            format!(
                "this coder writes Rust, not {lang:?}: run a spec whose `coder` is \
                 py-kamachiq-coder (examples/kamachiq/kamachiq-python.yaml)"
            ),
        ));
    }
    let model = input.model.as_deref().unwrap_or(DEFAULT_MODEL);
    if model.trim().is_empty() {
        return Err(Error::bad_input("model must not be empty"));
    }
    let feedback = input.feedback.as_ref().filter(|f| !f.is_null());
    let out = match task {
        Task::Part(part) => parts::write(part, &input.goal, feedback, model, host)?,
        Task::TestCases => cases::write(&input.goal, feedback, model, host)?,
        Task::Assemble => assemble::assemble(
            &input.goal,
            input.parts.as_ref(),
            input.tests.as_ref(),
            input.review.as_ref(),
        )?,
    };
    if let Some(strategy) = out.get("strategy").and_then(Value::as_str) {
        let revision = out
            .get("revision")
            .and_then(Value::as_u64)
            .map(|r| format!(", revision {r}"))
            .unwrap_or_default();
        host.log(&format!("{}: strategy {strategy}{revision}", input.task));
    }
    json::output(&out)
}

/// The host the capsule runs against: the SDK's `llm` and `log`.
struct SdkHost;

impl Host for SdkHost {
    fn chat(&mut self, prompt: &Prompt) -> Result<Reply, LlmError> {
        let c = llm::Chat::new(&prompt.model)
            .system(&prompt.system)
            .user(&prompt.user)
            .max_tokens(prompt.max_tokens)
            .temperature(0.2)
            .send()?;
        Ok(Reply {
            text: c.text,
            model: c.model,
        })
    }

    fn log(&mut self, message: &str) {
        log::info(message);
    }
}

struct Coder;

impl Capsule for Coder {
    fn info() -> Info {
        Info::worker("kamachiq-coder", env!("CARGO_PKG_VERSION"))
            .description(
                "KAMACHIQ coder: writes the parts and test cases of a Rust command-line calculator \
                 (LLM, or built-in templates without one) and assembles them",
            )
            .input_schema(INPUT_SCHEMA)
            .output_schema(OUTPUT_SCHEMA)
            .wants_llm_model(DEFAULT_MODEL)
    }

    fn run(input: &str) -> Result<String, Error> {
        run_with(input, &mut SdkHost)
    }
}

soma_sdk::capsule!(Coder);

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A host whose LLM always gives the same answer.
    pub struct FakeHost {
        pub answer: Result<String, LlmError>,
        pub prompts: Vec<Prompt>,
        pub logs: Vec<String>,
    }

    impl FakeHost {
        pub fn denied() -> Self {
            Self::answering(Err(LlmError::Denied(
                "model kamachiq-coder is not granted".into(),
            )))
        }

        pub fn answering(answer: Result<String, LlmError>) -> Self {
            Self {
                answer,
                prompts: Vec::new(),
                logs: Vec::new(),
            }
        }
    }

    impl Host for FakeHost {
        fn chat(&mut self, prompt: &Prompt) -> Result<Reply, LlmError> {
            self.prompts.push(prompt.clone());
            self.answer.clone().map(|text| Reply {
                text,
                model: "fake-model".into(),
            })
        }

        fn log(&mut self, message: &str) {
            self.logs.push(message.to_owned());
        }
    }

    pub fn run(input: &Value, host: &mut FakeHost) -> Result<Value, Error> {
        let out = run_with(&input.to_string(), host)?;
        Ok(serde_json::from_str(&out).expect("output is JSON"))
    }

    pub fn code(result: Result<Value, Error>) -> String {
        match result {
            Ok(v) => panic!("expected an error, got {v}"),
            Err(e) => e.code,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::testing::{FakeHost, code, run};
    use super::*;

    #[test]
    fn bad_input_is_a_typed_error() {
        let mut host = FakeHost::denied();
        assert_eq!(
            code(run_with("not json", &mut host).map(Value::String)),
            "bad-input"
        );
        assert_eq!(code(run(&json!({}), &mut host)), "bad-input");
        assert_eq!(
            code(run(&json!({"task": "deploy"}), &mut host)),
            "bad-input"
        );
        assert_eq!(code(run(&json!({"task": 3}), &mut host)), "bad-input");
        assert_eq!(
            code(run(&json!({"task": "cli", "model": " "}), &mut host)),
            "bad-input"
        );
        assert_eq!(
            code(run(
                &json!({"task": "parser", "goal": "{{ input.x }}"}),
                &mut host
            )),
            "bad-input"
        );
    }

    #[test]
    fn a_plan_for_another_language_is_refused_by_name() {
        let mut host = FakeHost::denied();
        let err = run(
            &json!({"task": "parser", "goal": "g", "lang": "python"}),
            &mut host,
        )
        .expect_err("refused");
        assert_eq!(err.code, "unsupported-language");
        assert!(err.message.contains("kamachiq-python.yaml"), "{err:?}");
        let out = run(
            &json!({"task": "parser", "goal": "g", "lang": "rust"}),
            &mut host,
        )
        .expect("rust is this coder's language");
        assert_eq!(out["task"], "parser");
    }

    #[test]
    fn invalid_llm_request_is_an_error_not_a_fallback() {
        let mut host = FakeHost::answering(Err(LlmError::Invalid("max_tokens".into())));
        assert_eq!(
            code(run(&json!({"task": "parser", "goal": "g"}), &mut host)),
            "llm-invalid"
        );
    }

    #[test]
    fn info_schemas_are_json() {
        let info = soma_sdk::CapsuleInfo::from(Coder::info());
        assert_eq!(info.name, "kamachiq-coder");
        let wants: Vec<(&str, &[String])> = info
            .capabilities
            .iter()
            .map(|r| (r.name.as_str(), r.args.as_slice()))
            .collect();
        assert_eq!(wants, [("llm", &[DEFAULT_MODEL.to_owned()][..])]);
        for schema in [&info.input_schema, &info.output_schema] {
            assert!(json::parse::<Value>(schema).is_ok(), "{schema}");
        }
    }
}
