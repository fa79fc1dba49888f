//! `kamachiq-planner`: the KAMACHIQ planner. Turns a goal into a sub-DAG.
//!
//! Input: `{"goal": "build a command-line calculator", "max_rounds"?: 1-10}`.
//! Output (a plan the scheduler splices in under the planner node's id):
//! `{"nodes": [...], "output": "assemble"}`.
//!
//! Strategy: deterministic. It recognises a calculator goal (the words
//! calculator, arithmetic, expression, calc…) and emits the fixed
//! decomposition below; any other goal is the non-retryable capsule error
//! `unsupported-goal`. It does not ask an LLM: the plan has to name capsule
//! aliases the spec declared and a fixed plan is what a test can check.
//!
//! ```text
//! tokenizer ┐
//! parser    │
//! evaluator ├──────────────────────────────┐
//! cli       ┘                              ├─> assemble
//! tests ──> check (for_each case) ──> review (gate over tests, ≤ max_rounds)
//! ```
//!
//! The plan uses the aliases `coder`, `calculator` and `reviewer`, which the
//! enclosing spec must declare. A goal that names the program's language
//! (`rust`, `python`/`py`) passes it to every coder task as `lang`; each
//! coder refuses a language it does not write (`unsupported-language`), so
//! the spec's `coder` decides, and a mismatch is an error, never a program
//! in the wrong language (`examples/kamachiq/kamachiq-python.yaml` is the
//! Python one).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use soma_sdk::{Capsule, Error, Info, json, log};

/// Aliases the plan uses; the enclosing spec must declare them.
pub const CODER: &str = "coder";
/// The calculator capsule alias (the real evaluator the tests are checked against).
pub const CALCULATOR: &str = "calculator";
/// The reviewer (gate) alias.
pub const REVIEWER: &str = "reviewer";

/// The code parts, each one coder task.
pub const PARTS: [&str; 4] = ["tokenizer", "parser", "evaluator", "cli"];

const DEFAULT_MAX_ROUNDS: u32 = 3;

/// Words that mark a goal the planner can decompose.
const CALCULATOR_WORDS: &[&str] = &[
    "calculator",
    "calculators",
    "calc",
    "arithmetic",
    "expression",
    "expressions",
    "evaluator",
];

const INPUT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["goal"],
  "properties": {
    "goal": {"type": "string", "description": "What to build, e.g. build a command-line calculator"},
    "max_rounds": {"type": "integer", "minimum": 1, "maximum": 10, "description": "Review rounds for the test cases (default 3)"}
  }
}"#;

const OUTPUT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["nodes", "output"],
  "properties": {
    "nodes": {"type": "array", "items": {"type": "object", "required": ["id", "capsule"]}},
    "output": {"type": "string"}
  }
}"#;

#[derive(Deserialize)]
struct Input {
    goal: String,
    #[serde(default)]
    max_rounds: Option<u32>,
}

/// What the planner returns.
#[derive(Debug, Serialize)]
pub struct Plan {
    /// Node specs with ids local to the plan.
    pub nodes: Vec<Value>,
    /// The node whose output is the planner node's output.
    pub output: String,
}

/// Languages a goal may name for its program, by the words that name them.
const LANGUAGES: &[(&str, &[&str])] = &[("rust", &["rust"]), ("python", &["python", "py"])];

/// The language `goal` names for the program (`rust` or `python`), if any;
/// naming two is bad input. The plan passes it to every coder task as
/// `lang`, and a coder refuses a language it does not write, so a goal
/// never silently gets a program in another language than it asked for.
pub fn language(goal: &str) -> Result<Option<&'static str>, Error> {
    let words: Vec<String> = goal
        .split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .collect();
    let named: Vec<&'static str> = LANGUAGES
        .iter()
        .filter(|(_, names)| words.iter().any(|w| names.contains(&w.as_str())))
        .map(|(lang, _)| *lang)
        .collect();
    match named[..] {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(Error::bad_input(format!(
            "the goal names {} languages ({}): name one",
            named.len(),
            named.join(", ")
        ))),
    }
}

/// Whether `goal` asks for something the planner knows how to decompose.
pub fn is_calculator_goal(goal: &str) -> bool {
    goal.split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .any(|word| CALCULATOR_WORDS.contains(&word.as_str()))
}

/// The plan for `goal`, or why there is none.
pub fn plan(goal: &str, max_rounds: Option<u32>) -> Result<Plan, Error> {
    let goal = goal.trim();
    if goal.is_empty() {
        return Err(Error::bad_input("goal is empty"));
    }
    if goal.contains("{{") || goal.contains("}}") {
        return Err(Error::bad_input(
            "goal must not contain template braces `{{` or `}}`",
        ));
    }
    let max_rounds = max_rounds.unwrap_or(DEFAULT_MAX_ROUNDS);
    if !(1..=10).contains(&max_rounds) {
        return Err(Error::bad_input(format!(
            "max_rounds must be 1-10, not {max_rounds}"
        )));
    }
    if !is_calculator_goal(goal) {
        return Err(Error::new(
            "unsupported-goal",
            format!(
                "cannot decompose {goal:?}: this planner knows one kind of goal, a calculator \
                 (say calculator, arithmetic or expression, e.g. \"build a command-line \
                 calculator\")"
            ),
        ));
    }

    let lang = language(goal)?;
    let coder = |task: &str| match lang {
        Some(lang) => json!({ "task": task, "goal": goal, "lang": lang }),
        None => json!({ "task": task, "goal": goal }),
    };
    let mut nodes: Vec<Value> = PARTS
        .iter()
        .map(|part| json!({ "id": part, "capsule": CODER, "input": coder(part) }))
        .collect();
    nodes.push(json!({ "id": "tests", "capsule": CODER, "input": coder("test-cases") }));
    nodes.push(json!({
        "id": "check",
        "capsule": CALCULATOR,
        "needs": ["tests"],
        "for_each": "{{ nodes.tests.output.cases }}",
        "input": { "expr": "{{ item.expr }}" },
        // An expected error (1/0) must reach the reviewer, not fail the run.
        "catch": true,
    }));
    nodes.push(json!({
        "id": "review",
        "capsule": REVIEWER,
        "needs": ["tests", "check"],
        "gate": { "node": "tests", "max_rounds": max_rounds },
        "input": {
            "cases": "{{ nodes.tests.output.cases }}",
            "results": "{{ nodes.check.output }}",
            "revision": "{{ nodes.tests.output.revision }}",
        },
    }));
    let parts: serde_json::Map<String, Value> = PARTS
        .iter()
        .map(|part| {
            (
                (*part).to_owned(),
                json!(format!("{{{{ nodes.{part}.output }}}}")),
            )
        })
        .collect();
    let mut needs: Vec<&str> = PARTS.to_vec();
    needs.extend(["tests", "review"]);
    let mut assemble = coder("assemble");
    assemble["parts"] = Value::Object(parts);
    assemble["tests"] = json!("{{ nodes.tests.output }}");
    assemble["review"] = json!("{{ nodes.review.output }}");
    nodes.push(json!({
        "id": "assemble",
        "capsule": CODER,
        "needs": needs,
        "input": assemble,
    }));
    Ok(Plan {
        nodes,
        output: "assemble".to_owned(),
    })
}

struct Planner;

impl Capsule for Planner {
    fn info() -> Info {
        Info::planner("kamachiq-planner", env!("CARGO_PKG_VERSION"))
            .description(
                "KAMACHIQ planner: decomposes a calculator goal into coder tasks, a calculator \
                 check of the test cases and a review gate",
            )
            .input_schema(INPUT_SCHEMA)
            .output_schema(OUTPUT_SCHEMA)
    }

    fn run(input: &str) -> Result<String, Error> {
        let input: Input = json::parse(input)?;
        let plan = plan(&input.goal, input.max_rounds)?;
        log::log(
            log::Level::Info,
            "planner strategy: deterministic (built-in calculator decomposition, no LLM)",
            &[
                ("nodes", &plan.nodes.len().to_string()),
                ("output", &plan.output),
            ],
        );
        json::output(&plan)
    }
}

soma_sdk::capsule!(Planner);

#[cfg(test)]
mod tests {
    use super::*;

    fn node<'a>(plan: &'a Plan, id: &str) -> &'a Value {
        plan.nodes
            .iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn error_code(result: Result<Plan, Error>) -> String {
        match result {
            Ok(p) => panic!("expected an error, got {p:?}"),
            Err(e) => e.code,
        }
    }

    #[test]
    fn a_calculator_goal_gets_the_full_plan() {
        let goal = "build a command-line calculator";
        let plan = plan(goal, None).expect("planned");
        assert_eq!(plan.output, "assemble");
        let ids: Vec<&str> = plan.nodes.iter().filter_map(|n| n["id"].as_str()).collect();
        assert_eq!(
            ids,
            [
                "tokenizer",
                "parser",
                "evaluator",
                "cli",
                "tests",
                "check",
                "review",
                "assemble"
            ]
        );
        for part in PARTS {
            let n = node(&plan, part);
            assert_eq!(n["capsule"], "coder");
            assert_eq!(n["input"], json!({"task": part, "goal": goal}));
        }
        assert_eq!(
            node(&plan, "tests")["input"],
            json!({"task": "test-cases", "goal": goal})
        );
        let check = node(&plan, "check");
        assert_eq!(check["capsule"], "calculator");
        assert_eq!(check["for_each"], "{{ nodes.tests.output.cases }}");
        assert_eq!(check["input"], json!({"expr": "{{ item.expr }}"}));
        assert_eq!(check["catch"], true);
        let review = node(&plan, "review");
        assert_eq!(review["capsule"], "reviewer");
        assert_eq!(review["gate"], json!({"node": "tests", "max_rounds": 3}));
        assert_eq!(review["input"]["results"], "{{ nodes.check.output }}");
        let assemble = node(&plan, "assemble");
        assert_eq!(
            assemble["input"]["parts"]["evaluator"],
            "{{ nodes.evaluator.output }}"
        );
        assert_eq!(assemble["input"]["review"], "{{ nodes.review.output }}");

        // Every `needs` names a sibling; no node needs itself.
        for n in &plan.nodes {
            for need in n["needs"].as_array().into_iter().flatten() {
                assert!(ids.contains(&need.as_str().unwrap_or_default()), "{need}");
                assert_ne!(need, &n["id"]);
            }
        }
        // The plan serializes as exactly {nodes, output}.
        let out: Value = serde_json::from_str(&json::output(&plan).expect("json")).expect("json");
        let keys: Vec<&String> = out.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["nodes", "output"]);
    }

    #[test]
    fn a_goal_naming_a_language_passes_it_to_every_coder_task() {
        let goal = "build a Python command-line calculator";
        let python = plan(goal, None).expect("planned");
        for id in [
            "tokenizer",
            "parser",
            "evaluator",
            "cli",
            "tests",
            "assemble",
        ] {
            let n = node(&python, id);
            assert_eq!(n["capsule"], "coder");
            assert_eq!(n["input"]["lang"], "python", "{id}");
            assert_eq!(n["input"]["goal"], goal, "{id}");
        }
        assert_eq!(
            node(&python, "assemble")["input"]["tests"],
            "{{ nodes.tests.output }}"
        );
        assert!(node(&python, "check")["input"].get("lang").is_none());
        assert_eq!(language("a calc in Rust"), Ok(Some("rust")));
        assert_eq!(language("a py calc"), Ok(Some("python")));
        assert_eq!(language("a calculator"), Ok(None));
        assert_eq!(language("pythonic rusty calculator"), Ok(None));
        assert_eq!(
            error_code(plan("a calculator in Rust or Python", None)),
            "bad-input"
        );
    }

    #[test]
    fn goal_recognition() {
        assert!(is_calculator_goal("Build a command-line CALCULATOR!"));
        assert!(is_calculator_goal("evaluate arithmetic"));
        assert!(is_calculator_goal("a tiny calc tool"));
        assert!(!is_calculator_goal("build a web shop"));
        assert!(!is_calculator_goal("calculatorish recalculation"));
    }

    #[test]
    fn other_goals_and_bad_input_are_typed_errors() {
        let e = plan("build a web shop", None).expect_err("unsupported");
        assert_eq!(e.code, "unsupported-goal");
        assert!(!e.retryable);
        assert!(e.message.contains("calculator"));
        assert_eq!(error_code(plan("  ", None)), "bad-input");
        assert_eq!(
            error_code(plan("calculator {{ input.x }}", None)),
            "bad-input"
        );
        assert_eq!(error_code(plan("calculator", Some(0))), "bad-input");
        assert_eq!(error_code(plan("calculator", Some(11))), "bad-input");
        assert_eq!(
            node(&plan("calculator", Some(5)).expect("planned"), "review")["gate"]["max_rounds"],
            5
        );
        for input in [
            "",
            "{}",
            r#"{"goal": 1}"#,
            r#"{"goal": "calc", "max_rounds": -1}"#,
        ] {
            assert_eq!(
                <Planner as Capsule>::run(input).err().map(|e| e.code),
                Some("bad-input".to_owned()),
                "{input}"
            );
        }
    }

    #[test]
    fn info_is_a_planner_with_json_schemas() {
        let info = soma_sdk::CapsuleInfo::from(Planner::info());
        assert_eq!(info.name, "kamachiq-planner");
        assert!(matches!(info.kind, soma_sdk::CapsuleKind::Planner));
        for schema in [&info.input_schema, &info.output_schema] {
            assert!(json::parse::<Value>(schema).is_ok(), "{schema}");
        }
    }
}
