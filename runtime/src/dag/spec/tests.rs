//! Tests of spec parsing and validation, plans, inputs, verdicts and the
//! committed JSON Schema.

#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

const KAMACHIQ: &str = "\
version: 1
name: kamachiq
description: Plan, code, test.
inputs:
  goal: { description: What to build., default: build a command-line calculator }
  style: {}
capsules:
  planner: kamachiq-planner.wasm
  coder: kamachiq-coder.wasm
  judge: ghcr.io/acme/judge:1.0
defaults:
  retries: { max: 2 }
policy: { on_failure: continue, concurrency: 4 }
budget: { tokens: 100000, usd: 2.5 }
nodes:
  - id: plan
    capsule: planner
    input: { goal: \"{{ input.goal }}\", style: \"{{ input.style }}\" }
  - id: code
    capsule: coder
    for_each: \"{{ nodes.plan.output.files }}\"
    input:
      file: \"{{ item }}\"
      n: \"{{ index }}\"
      note: \"file {{ index }} of {{ nodes.plan.output.files }}\"
    limits: { fuel: 1000000, memory_mb: 64 }
    timeout_ms: 30000
    catch: true
  - id: review
    capsule: judge
    needs: [plan]
    gate: { node: code, max_rounds: 2 }
    input: { code: \"{{ nodes.code.output }}\" }
output: \"{{ nodes.code.output }}\"
";

fn errors(text: &str) -> Vec<SpecError> {
    match parse(text, "dag.yaml") {
        Ok(spec) => panic!("expected errors, parsed {spec:?}"),
        Err(SpecErrors(errors)) => errors,
    }
}

/// (line, message) of every error, for readable assertions.
fn lines(errors: &[SpecError]) -> Vec<(u32, String)> {
    errors
        .iter()
        .map(|e| (e.position.map_or(0, |p| p.line), e.kind.to_string()))
        .collect()
}

#[test]
fn good_spec_parses_from_yaml_and_json_alike() {
    let spec = parse(KAMACHIQ, "kamachiq.yaml").unwrap();
    assert_eq!(spec.name, "kamachiq");
    assert_eq!(spec.nodes.len(), 3);
    assert_eq!(spec.policy.on_failure, OnFailure::Continue);
    assert_eq!(spec.policy.concurrency, Some(4));
    assert_eq!(spec.defaults.retries.max, 2);
    assert_eq!(
        spec.nodes[1].for_each.as_deref(),
        Some("{{ nodes.plan.output.files }}")
    );
    assert!(spec.nodes[1].catch);
    assert_eq!(spec.nodes[2].gate.as_ref().map(|g| g.max_rounds), Some(2));
    assert_eq!(spec.nodes[0].dependencies(), Vec::<String>::new());
    assert_eq!(spec.nodes[1].dependencies(), vec!["plan"]);
    assert_eq!(spec.nodes[2].dependencies(), vec!["code", "plan"]);

    let json = serde_json::to_string_pretty(&spec).unwrap();
    assert_eq!(parse(&json, "kamachiq.json").unwrap(), spec);
}

#[test]
fn the_brief_example_parses() {
    let text = "\
version: 1
name: kamachiq
inputs:
  goal: { description: What to build., default: build a command-line calculator }
capsules:
  planner: kamachiq-planner.wasm
  coder: kamachiq-coder.wasm
nodes:
  - id: plan
    capsule: planner
    input: { goal: \"{{ input.goal }}\" }
output: \"{{ nodes.plan.output }}\"
";
    let spec = parse(text, "demo.yaml").unwrap();
    assert_eq!(spec.version, 1);
    assert_eq!(spec.nodes[0].input, json!({"goal": "{{ input.goal }}"}));
}

#[test]
fn every_semantic_error_is_reported_at_its_line() {
    let text = "\
version: 2
name: broken
inputs:
  goal: { default: x }
  bad name: {}
capsules:
  worker: w.wasm
nodes:
  - id: a
    capsule: worker
    input: \"{{ input.nope }}\"
  - id: a
    capsule: ghost
  - id: \"bad id!\"
    capsule: worker
    needs: [missing, \"bad id!\"]
  - id: c
    capsule: worker
    input:
      x: \"{{ item.name }}\"
      y: \"{{ nodes.c.output }}\"
      z: \"{{ nodes.zz.output }}\"
      t: \"{{ nodes.a.outpt }}\"
  - id: d
    capsule: worker
    for_each: \"x {{ nodes.a.output }}\"
    retries: { max: 500, backoff_ms: 10, max_backoff_ms: 5 }
    gate: { node: d, max_rounds: 11 }
    limits: { fuel: 0 }
  - id: e
    capsule: worker
    for_each: \"{{ item }}\"
    gate: { node: nobody }
    timeout_ms: 0
output: \"{{ index }}\"
policy: { concurrency: 0, max_nodes: 0 }
";
    let found = errors(text);
    let expected: Vec<(u32, &str)> = vec![
        (1, "unsupported version 2"),
        (5, "bad input name `bad name`"),
        (11, "`input.nope` is not declared in `inputs`"),
        (12, "duplicate node id `a`"),
        (13, "node `a` uses capsule `ghost`, which is not declared"),
        (14, "bad node id `bad id!`"),
        (
            16,
            "node `bad id!` refers to node `missing`, which does not exist",
        ),
        (16, "node `bad id!` depends on itself"),
        (20, "`item.name` is only defined in a node with `for_each`"),
        (21, "node `c` depends on itself"),
        (22, "node `c` refers to node `zz`, which does not exist"),
        (23, "bad template: expected `.output` after `nodes.a`"),
        (26, "bad `for_each`: it must be one whole"),
        (27, "`retries.max` must be at most 100 (found 500)"),
        (27, "`retries.backoff_ms` (10) must not exceed"),
        (28, "bad `gate`: a node cannot gate itself"),
        (28, "bad `gate`: `max_rounds` must be 1–10 (found 11)"),
        (29, "`limits.fuel` must be at least 1"),
        (32, "bad `for_each`: it cannot use `item`"),
        (33, "bad `gate`: the gated node `nobody` does not exist"),
        (34, "`timeout_ms` must be at least 1"),
        (35, "`index` is only defined in a node with `for_each`"),
        (36, "`policy.concurrency` must be at least 1"),
        (36, "`policy.max_nodes` must be at least 1"),
        (8, "too many nodes (policy.max_nodes): 6 (at most 0)"),
    ];
    let found_lines = lines(&found);
    for (line, message) in &expected {
        assert!(
            found_lines
                .iter()
                .any(|(l, m)| l == line && m.contains(message)),
            "no error at line {line} containing {message:?}; found:\n{}",
            SpecErrors(found.clone())
        );
    }
    assert_eq!(
        found.len(),
        expected.len(),
        "unexpected extra errors:\n{}",
        SpecErrors(found.clone())
    );
    // Sorted by position; the display names file, line and column.
    assert!(found.windows(2).all(|w| w[0].position <= w[1].position));
    let first = found[0].to_string();
    assert_eq!(
        first,
        "dag.yaml:1:10: unsupported version 2: this runtime reads version 1"
    );
    // The template error says where in the string.
    let template = found
        .iter()
        .find(|e| matches!(e.kind, SpecErrorKind::BadTemplate { .. }))
        .unwrap();
    assert_eq!(template.pointer, "/nodes/3/input/t");
    assert!(
        template
            .to_string()
            .contains("at character 10 of the string"),
        "{template}"
    );
}

#[test]
fn shape_errors_name_the_field_and_line_and_are_reported_together() {
    let text = "\
version: 1
name: s
capsules: {w: w.wasm}
extra: 1
nodes:
  - id: a
    capsule: w
    colour: red
  - id: b
  - id: c
    capsule: w
    limits: { fuel: lots }
  - id: d
    capsule: d-is-unknown
";
    let found = errors(text);
    let rendered = SpecErrors(found.clone()).to_string();
    let expected = [
        (4, 1, "extra: unknown field `extra`"),
        (
            8,
            5,
            "nodes[0].colour: unknown field `colour`, expected one of",
        ),
        (9, 5, "nodes[1]: missing field `capsule`"),
        (
            12,
            15,
            "nodes[2].limits.fuel: invalid type: string \"lots\", expected u64",
        ),
    ];
    assert_eq!(found.len(), expected.len(), "{rendered}");
    for (error, (line, column, message)) in found.iter().zip(expected) {
        assert_eq!(error.position, Some(Position { line, column }), "{error}");
        assert!(error.kind.to_string().contains(message), "{error}");
    }
    assert_eq!(rendered.lines().count(), 4);
    assert!(
        rendered.starts_with("dag.yaml:4:1: extra: unknown field `extra`"),
        "{rendered}"
    );
}

#[test]
fn wrong_top_level_shapes() {
    let found = errors("[1, 2]\n");
    assert_eq!(
        found[0].to_string(),
        "dag.yaml:1:1: expected an object, found an array"
    );
    let found = errors("version: 1\nname: x\ncapsules: {w: w}\nnodes:\n  - [a, w]\n");
    assert_eq!(
        found[0].to_string(),
        "dag.yaml:5:5: nodes[0]: expected an object, found an array"
    );
    let found = errors("version: 1\nname: x\ncapsules: {}\n");
    assert_eq!(found[0].kind.to_string(), "missing field `nodes`");
    assert_eq!(found[0].position, Some(Position { line: 1, column: 1 }));
    let found = errors("version: 1\nname: x\ncapsules: {}\nnodes: {a: 1}\n");
    assert!(
        found[0]
            .kind
            .to_string()
            .starts_with("nodes: invalid type: map"),
        "{}",
        found[0]
    );
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let found = errors("version: 1\nname: [unclosed\n");
    assert_eq!(found.len(), 1);
    assert!(matches!(found[0].kind, SpecErrorKind::Syntax(_)));
    assert!(found[0].position.is_some());
    assert!(
        found[0].to_string().starts_with("dag.yaml:"),
        "{}",
        found[0]
    );
    let found = errors("a: 1\na: 2\n");
    assert_eq!(found[0].position, Some(Position { line: 2, column: 1 }));
}

#[test]
fn cycles_report_their_path() {
    let text = "\
version: 1
name: loop
capsules: {w: w.wasm}
nodes:
  - {id: start, capsule: w}
  - {id: a, capsule: w, needs: [c, start]}
  - {id: b, capsule: w, input: \"{{ nodes.a.output }}\"}
  - {id: c, capsule: w, for_each: \"{{ nodes.b.output }}\"}
  - {id: g, capsule: w, gate: {node: h}}
  - {id: h, capsule: w, needs: [g]}
";
    let found = errors(text);
    let found = lines(&found);
    assert_eq!(
        found,
        vec![
            (
                6,
                "dependency cycle: a → c → b → a (each node needs the next)".to_owned()
            ),
            (
                9,
                "dependency cycle: g → h → g (each node needs the next)".to_owned()
            ),
        ]
    );
}

#[test]
fn long_chains_do_not_recurse() {
    let mut text = String::from("version: 1\nname: chain\ncapsules: {w: w.wasm}\nnodes:\n");
    for i in 0..20_000 {
        let needs = if i == 0 {
            String::new()
        } else {
            format!(", needs: [n{}]", i - 1)
        };
        text.push_str(&format!("  - {{id: n{i}, capsule: w{needs}}}\n"));
    }
    let spec = parse(&text, "chain.yaml").unwrap();
    assert_eq!(spec.nodes.len(), 20_000);
}

#[test]
fn errors_stop_after_the_cap() {
    let mut text = String::from("version: 1\nname: many\ncapsules: {w: w.wasm}\nnodes:\n");
    for i in 0..80 {
        text.push_str(&format!("  - {{id: n{i}, capsule: nope}}\n"));
    }
    let found = errors(&text);
    assert_eq!(found.len(), MAX_ERRORS + 1);
    assert_eq!(
        found[MAX_ERRORS].kind,
        SpecErrorKind::TooManyErrors { shown: MAX_ERRORS }
    );
}

#[test]
fn oversize_and_deep_specs_are_refused() {
    let big = format!(
        "version: 1\nname: big\n# {}\n",
        "x".repeat(source::MAX_BYTES)
    );
    let found = errors(&big);
    assert!(
        found[0].to_string().contains("at most 4194304 bytes"),
        "{}",
        found[0]
    );
    let deep = format!(
        "version: 1\nname: deep\ncapsules: {{}}\nnodes: []\noutput: {}1{}\n",
        "[".repeat(200),
        "]".repeat(200)
    );
    let found = errors(&deep);
    assert!(
        found[0].to_string().contains("nests deeper than 128"),
        "{}",
        found[0]
    );
}

fn plan_spec() -> Spec {
    parse(KAMACHIQ, "kamachiq.yaml").unwrap()
}

#[test]
fn plans_are_validated_against_the_spec() {
    let spec = plan_spec();
    let plan = parse_plan(
        &json!({
            "nodes": [
                {"id": "write", "capsule": "coder", "input": {"goal": "{{ input.goal }}"}},
                {"id": "check", "capsule": "judge", "gate": {"node": "write"},
                 "input": "{{ nodes.write.output }}"},
            ],
            "output": "write",
        }),
        &spec,
        10,
        "plan from node `plan`",
    )
    .unwrap();
    assert_eq!(plan.nodes.len(), 2);
    assert_eq!(plan.output.as_deref(), Some("write"));
    assert_eq!(plan.nodes[1].dependencies(), vec!["write"]);
}

#[test]
fn plan_errors_are_local_and_carry_pointers() {
    let spec = plan_spec();
    let value = json!({
        "nodes": [
            {"id": "a", "capsule": "not-an-alias"},
            {"id": "b", "capsule": "coder", "input": {"x": "{{ nodes.plan.output }}"}},
            {"id": "c", "capsule": "coder", "input": "{{ input.undeclared }}", "needs": ["code"]},
            {"id": "d", "capsule": "coder", "unknown": true},
        ],
        "output": "zz",
    });
    let SpecErrors(found) = parse_plan(&value, &spec, 10, "plan from node `plan`").unwrap_err();
    let found: Vec<String> = found.iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        vec![
            "plan from node `plan`: nodes[3].unknown: unknown field `unknown`, expected one of \
             `id`, `capsule`, `input`, `needs`, `limits`, `timeout_ms`, `retries`, `budget`, \
             `gate`, `for_each`, `catch`, `capabilities`, `approval` (at /nodes/3/unknown)",
            "plan from node `plan`: node `a` uses capsule `not-an-alias`, which is not declared \
             in `capsules` (at /nodes/0/capsule)",
            // Spec node ids are not visible from a plan.
            "plan from node `plan`: node `b` refers to node `plan`, which does not exist \
             (at /nodes/1/input/x)",
            "plan from node `plan`: node `c` refers to node `code`, which does not exist \
             (at /nodes/2/needs/0)",
            "plan from node `plan`: `input.undeclared` is not declared in `inputs` \
             (at /nodes/2/input)",
            "plan from node `plan`: `output` refers to node `zz`, which does not exist \
             (at /output)",
        ]
    );
}

#[test]
fn plans_are_size_capped_and_must_be_objects() {
    let spec = plan_spec();
    let nodes: Vec<Value> = (0..201)
        .map(|i| json!({"id": format!("n{i}"), "capsule": "coder"}))
        .collect();
    let SpecErrors(found) = parse_plan(&json!({"nodes": nodes}), &spec, 200, "plan").unwrap_err();
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].to_string(),
        "plan: too many nodes in the plan (policy.max_expansion_nodes): 201 (at most 200) \
         (at /nodes)"
    );
    let SpecErrors(found) = parse_plan(&json!("just text"), &spec, 200, "plan").unwrap_err();
    assert_eq!(
        found[0].to_string(),
        "plan: expected an object, found a string"
    );
    let SpecErrors(found) = parse_plan(
        &json!({"nodes": [{"id": "a", "capsule": "coder", "needs": ["b"]},
                          {"id": "b", "capsule": "coder", "needs": ["a"]}]}),
        &spec,
        200,
        "plan",
    )
    .unwrap_err();
    assert_eq!(
        found[0].kind,
        SpecErrorKind::Cycle {
            path: vec!["a".to_owned(), "b".to_owned(), "a".to_owned()]
        }
    );
}

#[test]
fn inputs_are_bound_with_defaults() {
    let spec = plan_spec();
    let error = spec.bind_input(&Value::Null).unwrap_err();
    assert_eq!(
        error.to_string(),
        "input: missing input `style` (it has no default) (at /style)"
    );
    assert_eq!(
        spec.bind_input(&json!({"style": "terse"})).unwrap(),
        json!({"goal": "build a command-line calculator", "style": "terse"})
    );
    assert_eq!(
        spec.bind_input(&json!({"style": 1, "goal": "a game"}))
            .unwrap(),
        json!({"goal": "a game", "style": 1})
    );
    let SpecErrors(found) = spec
        .bind_input(&json!({"stlye": "x", "colour": 1}))
        .unwrap_err();
    let found: Vec<String> = found.iter().map(|e| e.kind.to_string()).collect();
    assert_eq!(
        found,
        vec![
            "unknown input `colour` (declared: goal, style)",
            "unknown input `stlye` (declared: goal, style)",
            "missing input `style` (it has no default)",
        ]
    );
    let error = spec.bind_input(&json!("goal")).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("must be an object of named inputs, not a string")
    );
}

#[test]
fn verdicts_are_checked() {
    assert_eq!(
        parse_verdict(&json!({"approved": true, "score": 0.9, "feedback": "ok", "x": 1})).unwrap(),
        Verdict {
            approved: true,
            score: 0.9,
            feedback: json!("ok")
        }
    );
    assert_eq!(
        parse_verdict(&json!({"approved": false})).unwrap(),
        Verdict {
            approved: false,
            score: 0.0,
            feedback: Value::Null
        }
    );
    for (bad, message) in [
        (json!("yes"), "must return an object"),
        (json!({"score": 1}), "no `approved`"),
        (
            json!({"approved": "yes"}),
            "`approved` must be a boolean, not a string",
        ),
        (
            json!({"approved": true, "score": 1.5}),
            "between 0 and 1, not 1.5",
        ),
        (json!({"approved": true, "score": -1}), "between 0 and 1"),
        (json!({"approved": true, "score": "high"}), "not a string"),
    ] {
        let error = parse_verdict(&bad).unwrap_err();
        assert!(error.contains(message), "{bad}: {error}");
    }
}

#[test]
fn committed_json_schema_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dag.schema.json");
    let generated = Spec::json_schema();
    if std::env::var_os("SOMA_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/dag.schema.json is out of date with the spec types; regenerate it with \
         `SOMA_BLESS=1 cargo test --release -p soma-runtime --lib dag::spec` and commit it"
    );
    let schema: Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(schema["title"], "Spec");
    assert!(schema["properties"]["nodes"].is_object());
}

#[test]
fn ceilings_refuse_values_above_them_and_lower_the_defaults() {
    let ceilings = Ceilings {
        max_fan_out: 100,
        max_concurrency: 8,
        max_retries: 3,
        ..Ceilings::default()
    };
    let text = "version: 1\nname: x\ncapsules: {w: w.wasm}\n\
                policy: {max_fan_out: 20000, concurrency: 1000}\n\
                nodes:\n  - {id: a, capsule: w, retries: {max: 50}}\n";
    let mut spec = parse(text, "s.yaml").unwrap();
    let errors = spec.within(&ceilings, "s.yaml").unwrap_err().to_string();
    for key in ["dag.max_fan_out", "dag.max_concurrency", "dag.max_retries"] {
        assert!(errors.contains(key), "{errors}");
    }
    let plain = "version: 1\nname: x\ncapsules: {w: w.wasm}\nnodes:\n  - {id: a, capsule: w}\n";
    let mut spec = parse(plain, "s.yaml").unwrap();
    spec.within(&ceilings, "s.yaml").unwrap();
    assert_eq!(spec.policy.max_fan_out, 100, "the default is lowered");
    let defaults = Ceilings::default();
    let mut spec = parse(plain, "s.yaml").unwrap();
    let before = spec.clone();
    spec.within(&defaults, "s.yaml").unwrap();
    assert_eq!(
        spec, before,
        "the default ceilings hold the format's defaults"
    );
}

#[test]
fn approval_parses_and_bad_timeouts_name_their_line() {
    let text = "\
version: 1
name: approvals
capsules: { worker: w.wasm }
nodes:
  - id: a
    capsule: worker
    approval: { required: true, timeout: 24h, on_timeout: approve }
  - id: b
    capsule: worker
    approval: {}
";
    let spec = parse(text, "ok.yaml").expect("valid");
    let a = spec.nodes[0].approval.as_ref().expect("approval");
    assert_eq!(a.timeout_ms(), Some(24 * 3_600_000));
    assert_eq!(a.on_timeout, ApprovalVerdict::Approve);
    let b = spec.nodes[1].approval.as_ref().expect("approval");
    assert!(b.required && b.timeout_ms().is_none());
    assert_eq!(b.on_timeout, ApprovalVerdict::Reject);
    let bad = "\
version: 1
name: approvals
capsules: { worker: w.wasm }
nodes:
  - id: a
    capsule: worker
    approval:
      timeout: soon
  - id: b
    capsule: worker
    approval: { timeout: 400d }
";
    let found = lines(&errors(bad));
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0].0, 8, "{found:?}");
    assert!(
        found[0]
            .1
            .contains("bad `approval`: `soon` is not a duration"),
        "{found:?}"
    );
    assert_eq!(found[1].0, 11, "{found:?}");
    assert!(
        found[1].1.contains("must be between 1s and 365d"),
        "{found:?}"
    );
    let e = parse(
        "version: 1\nname: x\ncapsules: {w: w.wasm}\nnodes:\n  - {id: a, capsule: w, approval: {on_timeout: maybe}}\n",
        "shape.yaml",
    )
    .unwrap_err();
    assert!(e.to_string().contains("shape.yaml:5:"), "{e}");
    assert!(e.to_string().contains("on_timeout"), "{e}");
}
