//! Assembling the artifact: the four parts into one `main.rs` (the
//! tokenizer, parser and evaluator as inline modules, the cli at the crate
//! root), the reviewed test cases as a `#[cfg(test)]` module of that file
//! and as `tests.json`, and a README.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};
use soma_sdk::Error;

use crate::cases::{Case, Expect, parse_cases};
use crate::parts::Part;

/// Directory of every file in the artifact (relative, no `..`).
pub const DIR: &str = "calculator";

/// One part as the assembler sees it.
struct PartOutput {
    part: Part,
    code: String,
    strategy: String,
    note: String,
}

fn parse_parts(parts: Option<&Value>) -> Result<Vec<PartOutput>, Error> {
    let parts = parts.and_then(Value::as_object).ok_or_else(|| {
        Error::bad_input(
            "assemble needs `parts`: an object with the tokenizer, parser, evaluator and cli outputs",
        )
    })?;
    Part::ALL
        .into_iter()
        .map(|part| {
            let output = parts
                .get(part.name())
                .ok_or_else(|| Error::bad_input(format!("parts.{} is missing", part.name())))?;
            let code = output
                .get("code")
                .and_then(Value::as_str)
                .filter(|c| !c.trim().is_empty())
                .ok_or_else(|| {
                    Error::bad_input(format!(
                        "parts.{}.code must be a non-empty string",
                        part.name()
                    ))
                })?;
            let text = |key: &str| {
                output
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            Ok(PartOutput {
                part,
                code: code.to_owned(),
                strategy: text("strategy"),
                note: text("note"),
            })
        })
        .collect()
}

/// The review verdict, as far as the artifact reports it.
struct Review {
    approved: bool,
    score: f64,
    summary: String,
}

fn parse_review(review: Option<&Value>) -> Result<Option<Review>, Error> {
    let Some(review) = review.filter(|r| !r.is_null()) else {
        return Ok(None);
    };
    let approved = review
        .get("approved")
        .and_then(Value::as_bool)
        .ok_or_else(|| Error::bad_input("review.approved must be a boolean"))?;
    Ok(Some(Review {
        approved,
        score: review.get("score").and_then(Value::as_f64).unwrap_or(0.0),
        summary: review
            .pointer("/feedback/summary")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    }))
}

/// Assemble the artifact from the parts, the tests and the review.
pub fn assemble(
    goal: &str,
    parts: Option<&Value>,
    tests: Option<&Value>,
    review: Option<&Value>,
) -> Result<Value, Error> {
    let parts = parse_parts(parts)?;
    let (cases, revision) = match tests.filter(|t| !t.is_null()) {
        None => (Vec::new(), None),
        Some(t) => {
            let cases = t
                .get("cases")
                .ok_or_else(|| Error::bad_input("tests.cases is missing"))
                .and_then(|c| {
                    parse_cases(c).map_err(|e| Error::bad_input(format!("tests: {e}")))
                })?;
            (cases, t.get("revision").and_then(Value::as_u64))
        }
    };
    let review = parse_review(review)?;
    let goal = one_line(goal);

    let main_rs = main_rs(&goal, &parts, &cases, revision, review.as_ref());
    let tests_json = serde_json::to_string_pretty(&json!({
        "goal": goal,
        "revision": revision,
        "review": review.as_ref().map(|r| json!({"approved": r.approved, "score": r.score})),
        "cases": cases,
    }))
    .map_err(|e| Error::new("output-encoding", e.to_string()))?
        + "\n";
    let readme = readme(&goal, &parts, &cases, revision, review.as_ref());

    let mut files = Map::new();
    let main_lines = main_rs.lines().count();
    files.insert(format!("{DIR}/main.rs"), main_rs.into());
    files.insert(format!("{DIR}/tests.json"), tests_json.into());
    files.insert(format!("{DIR}/README.md"), readme.into());

    let part_summary: Map<String, Value> = parts
        .iter()
        .map(|p| {
            (
                p.part.name().to_owned(),
                json!({"strategy": p.strategy, "lines": p.code.lines().count()}),
            )
        })
        .collect();
    let review_note = match &review {
        Some(r) if r.approved => format!("approved by the reviewer (score {:.2})", r.score),
        Some(r) => format!("NOT approved by the reviewer (score {:.2})", r.score),
        None => "not reviewed".to_owned(),
    };
    Ok(json!({
        "task": "assemble",
        "strategy": "deterministic",
        "note": format!(
            "assembled {} parts and {} test cases into {DIR}/main.rs ({main_lines} lines); tests {review_note}",
            parts.len(),
            cases.len()
        ),
        "files": files,
        "summary": {
            "goal": goal,
            "files": files.keys().collect::<Vec<_>>(),
            "main_rs_lines": main_lines,
            "parts": part_summary,
            "tests": {"count": cases.len(), "revision": revision},
            "review": review.as_ref().map(|r| json!({"approved": r.approved, "score": r.score, "summary": r.summary})),
            "build": format!("rustc --edition 2021 -O {DIR}/main.rs -o calc"),
            "test": format!("rustc --edition 2021 --test {DIR}/main.rs -o calc-tests && ./calc-tests"),
        },
    }))
}

/// `text` on one line (it goes into comments and headings).
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn indent(code: &str) -> String {
    let mut out = String::new();
    for line in code.lines() {
        if !line.trim().is_empty() {
            out.push_str("    ");
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn main_rs(
    goal: &str,
    parts: &[PartOutput],
    cases: &[Case],
    revision: Option<u64>,
    review: Option<&Review>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "//! calc: a command-line calculator, assembled by KAMACHIQ (generated file).\n//!\n\
         //! Goal: {goal}\n//!\n\
         //! Build: `rustc --edition 2021 -O main.rs -o calc`, then `./calc '2*(3+4)^2'`.\n\
         //! Test:  `rustc --edition 2021 --test main.rs -o calc-tests && ./calc-tests`\n\
         //! runs the {} reviewed test cases at the end of this file.\n//!\n//! Parts:",
        cases.len()
    );
    for p in parts {
        let _ = writeln!(
            out,
            "//! - {} ({}): {}",
            p.part.name(),
            p.part.file(),
            if p.strategy.is_empty() {
                "?"
            } else {
                &p.strategy
            }
        );
    }
    out.push_str("//!\n");
    // The cli is the crate root: its `//!` lines continue the header.
    if let Some(cli) = parts.iter().find(|p| !p.part.is_module()) {
        out.push_str(cli.code.trim_end());
        out.push('\n');
    }
    for p in parts.iter().filter(|p| p.part.is_module()) {
        let _ = write!(
            out,
            "\n// ---- {} ({}, {}) ----\nmod {} {{\n{}}}\n",
            p.part.name(),
            p.part.file(),
            p.strategy,
            p.part.name(),
            indent(&p.code)
        );
    }
    if !cases.is_empty() {
        out.push('\n');
        out.push_str(&tests_module(cases, revision, review));
    }
    out
}

/// A `#[cfg(test)]` module checking every case against `calculate`.
fn tests_module(cases: &[Case], revision: Option<u64>, review: Option<&Review>) -> String {
    let mut rows = String::new();
    for case in cases {
        let expect = match Expect::from_json(&case.expect) {
            Some(Expect::Value(v)) => format!("Expect::Value({v:?})"),
            Some(Expect::Error(code)) => format!("Expect::Error({code:?})"),
            None => continue,
        };
        let _ = writeln!(rows, "        ({:?}, {expect}),", case.expr);
    }
    let verdict = match review {
        Some(r) if r.approved => format!("approved, score {:.2}", r.score),
        Some(r) => format!("NOT approved, score {:.2}", r.score),
        None => "not reviewed".to_owned(),
    };
    let revision = revision.map_or_else(|| "?".to_owned(), |r| r.to_string());
    format!(
        r#"// ---- reviewed test cases (revision {revision}, {verdict}) ----
#[cfg(test)]
mod reviewed_cases {{
    use crate::evaluator::calculate;

    enum Expect {{
        Value(f64),
        Error(&'static str),
    }}

    const CASES: &[(&str, Expect)] = &[
{rows}    ];

    #[test]
    fn every_reviewed_case_passes() {{
        let mut failures = Vec::new();
        for (expr, expect) in CASES {{
            let ok = match (calculate(expr), expect) {{
                (Ok(got), Expect::Value(want)) => {{
                    (got - want).abs() <= 1e-9 * want.abs().max(got.abs()).max(1.0)
                }}
                (Err(e), Expect::Error(code)) => e.code() == *code,
                _ => false,
            }};
            if !ok {{
                failures.push(format!("{{expr}}: got {{:?}}", calculate(expr)));
            }}
        }}
        assert!(failures.is_empty(), "failed cases:\n{{}}", failures.join("\n"));
    }}
}}
"#
    )
}

fn readme(
    goal: &str,
    parts: &[PartOutput],
    cases: &[Case],
    revision: Option<u64>,
    review: Option<&Review>,
) -> String {
    let mut out = format!(
        "# calc\n\nA command-line calculator, built by the KAMACHIQ demo for the goal \
         \"{goal}\".\n\n\
         ```sh\nrustc --edition 2021 -O main.rs -o calc\n./calc '2*(3+4)^2'        # 98\n\
         ./calc -- -2^2            # -4: ^ binds tighter than unary minus\n\
         printf '1/0\\n2^3^2\\n' | ./calc   # error: division by zero at position 1 (division-by-zero), then 512; exit 1\n\
         rustc --edition 2021 --test main.rs -o calc-tests && ./calc-tests   # the reviewed cases\n```\n\n\
         `+ - * / ^` (`^` right-associative), parentheses, unary signs, decimals. \
         Errors print `error: <what> at position <n> (<code>)` on stderr and exit 1; \
         codes: syntax, division-by-zero, overflow, domain, too-deep.\n\n\
         ## Parts\n\nAll four are in `main.rs`: the cli at the top, the others as inline \
         modules.\n\n| part | file | strategy | lines |\n|---|---|---|---|\n"
    );
    let mut notes: Vec<&str> = Vec::new();
    for p in parts {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            p.part.name(),
            p.part.file(),
            p.strategy,
            p.code.lines().count()
        );
        if !p.note.is_empty() && !notes.contains(&p.note.as_str()) {
            notes.push(&p.note);
        }
    }
    out.push('\n');
    for note in notes {
        let _ = writeln!(out, "- {note}");
    }
    out.push_str("\n## Test cases\n\n");
    let revision = revision.map_or_else(|| "?".to_owned(), |r| r.to_string());
    match review {
        Some(r) => {
            let _ = writeln!(
                out,
                "Revision {revision}, checked against the Soma `calculator` capsule by the \
                 reviewer: {} (score {:.2}){}.\n",
                if r.approved {
                    "approved"
                } else {
                    "NOT approved"
                },
                r.score,
                if r.summary.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.summary)
                }
            );
        }
        None => {
            let _ = writeln!(out, "Revision {revision}; not reviewed.\n");
        }
    }
    out.push_str("| expression | expected | why |\n|---|---|---|\n");
    for c in cases {
        let expect = match Expect::from_json(&c.expect) {
            Some(Expect::Error(code)) => format!("error `{code}`"),
            _ => c.expect.to_string(),
        };
        let _ = writeln!(
            out,
            "| `{}` | {expect} | {} |",
            c.expr.replace('|', "\\|"),
            c.why.replace('|', "\\|")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cases::first_draft;
    use crate::testing::{FakeHost, code, run};

    /// The deterministic parts, as the part tasks output them.
    fn deterministic_parts() -> Value {
        let mut parts = Map::new();
        for part in Part::ALL {
            let out = run(
                &json!({"task": part.name(), "goal": "build a command-line calculator"}),
                &mut FakeHost::denied(),
            )
            .expect("part");
            parts.insert(part.name().to_owned(), out);
        }
        Value::Object(parts)
    }

    fn reviewed_tests() -> Value {
        let mut cases = first_draft();
        for case in &mut cases {
            match case.expr.as_str() {
                "2 ^ 3 ^ 2" => case.expect = json!(512),
                "-2 ^ 2" => case.expect = json!(-4),
                _ => {}
            }
        }
        json!({"task": "test-cases", "cases": cases, "revision": 2})
    }

    #[test]
    fn assembles_the_deterministic_parts_into_one_file() {
        let input = json!({
            "task": "assemble",
            "goal": "build a\ncommand-line calculator",
            "parts": deterministic_parts(),
            "tests": reviewed_tests(),
            "review": {"approved": true, "score": 1.0, "feedback": {"mismatches": [], "summary": "all 14 match"}},
        });
        let out = run(&input, &mut FakeHost::denied()).expect("assembled");
        assert_eq!(out["task"], "assemble");
        assert_eq!(out["strategy"], "deterministic");
        let files = out["files"].as_object().expect("files");
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "calculator/README.md",
                "calculator/main.rs",
                "calculator/tests.json"
            ]
        );
        for name in &names {
            assert!(!name.contains("..") && !name.starts_with('/'));
        }
        let main = files["calculator/main.rs"].as_str().expect("main.rs");
        // The header, then the cli, then the modules, then the tests.
        assert!(main.starts_with("//! calc: a command-line calculator"));
        assert!(main.contains("//! Goal: build a command-line calculator\n"));
        let order = [
            "fn main() -> ExitCode",
            "mod tokenizer {",
            "    pub fn tokenize(text: &str)",
            "mod parser {",
            "    pub fn parse(text: &str)",
            "mod evaluator {",
            "    pub fn calculate(text: &str)",
            "#[cfg(test)]\nmod reviewed_cases {",
            "        (\"2 ^ 3 ^ 2\", Expect::Value(512.0)),",
            "        (\"-2 ^ 2\", Expect::Value(-4.0)),",
            "        (\"1 / 0\", Expect::Error(\"division-by-zero\")),",
        ];
        let mut at = 0;
        for needle in order {
            let found = main[at..]
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing or out of order in:\n{main}"));
            at += found + needle.len();
        }
        // Only the crate root may hold `//!` outside modules: no part's
        // inner doc comment may follow an item at the top level.
        let first_item = main.find("\nuse ").expect("cli uses");
        assert!(!main[first_item..].lines().any(|l| l.starts_with("//!")));
        assert_eq!(main.matches("fn main()").count(), 1);

        let tests: Value =
            serde_json::from_str(files["calculator/tests.json"].as_str().expect("tests.json"))
                .expect("tests.json is JSON");
        assert_eq!(tests["revision"], 2);
        assert_eq!(tests["cases"].as_array().map(Vec::len), Some(14));
        let readme = files["calculator/README.md"].as_str().expect("README");
        assert!(readme.contains("approved (score 1.00)"));
        assert!(readme.contains("| `2 ^ 3 ^ 2` | 512 |"));
        assert_eq!(
            out["summary"]["parts"]["parser"]["strategy"],
            "deterministic"
        );
        assert_eq!(out["summary"]["review"]["approved"], true);
    }

    /// Compile the assembled program with plain `rustc` and run it: the
    /// binary on a few expressions, and its reviewed-cases test module.
    /// Skipped (with a message) when `rustc` cannot be spawned.
    #[test]
    fn the_assembled_program_compiles_and_runs() {
        use std::process::{Command, Stdio};

        let input = json!({
            "task": "assemble",
            "goal": "build a command-line calculator",
            "parts": deterministic_parts(),
            "tests": reviewed_tests(),
            "review": {"approved": true, "score": 1.0, "feedback": {"mismatches": [], "summary": "ok"}},
        });
        let out = run(&input, &mut FakeHost::denied()).expect("assembled");
        let main = out["files"]["calculator/main.rs"]
            .as_str()
            .expect("main.rs");
        let dir = std::env::temp_dir().join(format!("kamachiq-coder-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let src = dir.join("main.rs");
        std::fs::write(&src, main).expect("write main.rs");
        let rustc = |args: &[&str]| {
            Command::new("rustc")
                .args(["--edition", "2021", "-D", "warnings"])
                .args(args)
                .arg(&src)
                .current_dir(&dir)
                .output()
        };
        let build = match rustc(&["-o", "calc"]) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("skipped: cannot run rustc: {e}");
                return;
            }
        };
        assert!(
            build.status.success(),
            "rustc failed:\n{}",
            String::from_utf8_lossy(&build.stderr)
        );
        let calc = |args: &[&str], stdin: &str| {
            use std::io::Write as _;
            let mut child = Command::new(dir.join("calc"))
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run calc");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(stdin.as_bytes())
                .expect("write stdin");
            let o = child.wait_with_output().expect("calc finished");
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        };
        let ok = |stdout: &str| (Some(0), stdout.to_owned(), String::new());
        assert_eq!(calc(&["2*(3+4)^2"], ""), ok("98\n"));
        assert_eq!(calc(&["--", "-2^2"], ""), ok("-4\n"));
        assert_eq!(calc(&["2", "^", "3", "^", "2"], ""), ok("512\n"));
        assert_eq!(calc(&["7/2"], ""), ok("3.5\n"));
        assert_eq!(calc(&["-0"], ""), ok("0\n"));
        assert_eq!(
            calc(&["1/0"], ""),
            (
                Some(1),
                String::new(),
                "error: division by zero at position 1 (division-by-zero)\n".to_owned()
            )
        );
        assert_eq!(
            calc(&["2*(3+4"], ""),
            (
                Some(1),
                String::new(),
                "error: expected ')' at position 6 (syntax)\n".to_owned()
            )
        );
        assert_eq!(calc(&[], "1+2\n\n2^-1\n"), ok("3\n0.5\n"));
        let (code, stdout, stderr) = calc(&[], "1+\n4\n");
        assert_eq!((code, stdout.as_str()), (Some(1), "4\n"));
        assert!(stderr.contains("(syntax)"), "{stderr}");
        assert_eq!(calc(&["--help"], "").0, Some(0));

        let build = rustc(&["--test", "-o", "calc-tests"]).expect("rustc --test");
        assert!(
            build.status.success(),
            "rustc --test failed:\n{}",
            String::from_utf8_lossy(&build.stderr)
        );
        let tests = Command::new(dir.join("calc-tests"))
            .output()
            .expect("run calc-tests");
        let report = String::from_utf8_lossy(&tests.stdout);
        assert!(tests.status.success(), "{report}");
        assert!(
            report.contains("every_reviewed_case_passes ... ok"),
            "{report}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn assemble_validates_its_input() {
        let mut host = FakeHost::denied();
        assert_eq!(
            code(run(&json!({"task": "assemble"}), &mut host)),
            "bad-input"
        );
        let mut parts = deterministic_parts();
        parts["cli"]["code"] = json!("");
        assert_eq!(
            code(run(&json!({"task": "assemble", "parts": parts}), &mut host)),
            "bad-input"
        );
        let parts = deterministic_parts();
        assert_eq!(
            code(run(
                &json!({"task": "assemble", "parts": parts, "tests": {"cases": [{"expr": "1"}]}}),
                &mut host
            )),
            "bad-input"
        );
        assert_eq!(
            code(run(
                &json!({"task": "assemble", "parts": parts, "review": {"approved": "yes"}}),
                &mut host
            )),
            "bad-input"
        );
        // Tests and review are optional.
        let out = run(&json!({"task": "assemble", "parts": parts}), &mut host).expect("assembled");
        assert!(
            !out["files"]["calculator/main.rs"]
                .as_str()
                .unwrap_or_default()
                .contains("reviewed_cases")
        );
    }
}
