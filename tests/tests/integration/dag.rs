//! The DAG scheduler against real capsules: fan-out/fan-in, retries only
//! for retryable classes, gates that converge or stop, planner caps,
//! failure policies, cancellation, interruption + resume.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
};

use serde_json::{Value, json};
use soma_runtime::{
    Capsule,
    config::{Allocator, Metering},
    dag::{
        approval::Offered,
        history::{Event, RunStatus},
        journal::Journal,
        scheduler::{self, Ended, Loaded, Observer, Quiet, Settings},
        spec,
        state::{RunState, Status},
    },
};
use soma_tests::TestEngine;

fn engine() -> TestEngine {
    TestEngine::new(soma_tests::config(Allocator::Pooling, Metering::Fuel))
}

/// Every example capsule under its crate name.
fn capsule_paths() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("echo", soma_capsules::ECHO_COMPONENT),
        ("calculator", soma_capsules::CALCULATOR_COMPONENT),
        ("flaky", soma_capsules::FLAKY_COMPONENT),
        ("planner", soma_capsules::KAMACHIQ_PLANNER_COMPONENT),
        ("coder", soma_capsules::KAMACHIQ_CODER_COMPONENT),
        ("reviewer", soma_capsules::KAMACHIQ_REVIEWER_COMPONENT),
        ("loop", soma_capsules::HOSTILE_LOOP_COMPONENT),
        ("trap", soma_capsules::HOSTILE_TRAP_COMPONENT),
    ])
}

/// A spec from YAML whose `capsules:` section is filled in from the
/// aliases it uses (so tests need not spell paths).
fn spec_of(yaml: &str) -> spec::Spec {
    let paths = capsule_paths();
    let mut text = String::from("capsules:\n");
    for (alias, path) in &paths {
        text.push_str(&format!("  {alias}: {path}\n"));
    }
    text.push_str(yaml);
    spec::parse(&text, "test.yaml").unwrap_or_else(|e| panic!("spec: {e}"))
}

fn load(t: &TestEngine, spec: &spec::Spec) -> BTreeMap<String, Loaded> {
    spec.capsules
        .iter()
        .map(|(alias, path)| {
            let loaded = Loaded {
                capsule: t.load(path),
                reference: path.clone(),
            };
            (alias.clone(), loaded)
        })
        .collect()
}

fn capsules(loaded: &BTreeMap<String, Loaded>) -> BTreeMap<String, Arc<Capsule>> {
    loaded
        .iter()
        .map(|(a, l)| (a.clone(), l.capsule.clone()))
        .collect()
}

/// Create and drive a run to its end.
fn run_to_end(t: &TestEngine, spec: &spec::Spec, input: Value) -> RunState {
    let loaded = load(t, spec);
    run_loaded(t, spec, &loaded, input)
}

fn run_loaded(
    t: &TestEngine,
    spec: &spec::Spec,
    loaded: &BTreeMap<String, Loaded>,
    input: Value,
) -> RunState {
    let run = scheduler::create(&t.engine, spec, "test.yaml", &input, loaded, "acme", None)
        .unwrap_or_else(|e| panic!("create: {e}"));
    let (state, ended) = scheduler::drive(
        &t.engine,
        &run,
        &capsules(loaded),
        &Settings::default(),
        &Quiet,
    )
    .unwrap_or_else(|e| panic!("drive: {e}"));
    assert!(matches!(ended, Ended::Finished(_)), "{ended:?}");
    state
}

fn status(state: &RunState) -> RunStatus {
    state.finished.as_ref().expect("finished").0
}

fn output(state: &RunState) -> Value {
    state
        .finished
        .as_ref()
        .and_then(|f| f.1.clone())
        .expect("output")
}

fn attempts(state: &RunState, node: &str) -> u32 {
    state
        .node(node)
        .unwrap_or_else(|| panic!("no node {node}"))
        .attempts
}

fn failure_class(state: &RunState, node: &str) -> String {
    match &state.node(node).expect("node").status {
        Status::Failed(f) => f.class.to_string(),
        other => panic!("{node} is {}", other.name()),
    }
}

#[test]
fn fan_out_and_fan_in_keep_order_and_types() {
    let t = engine();
    let spec = spec_of(
        r#"
name: fan
nodes:
  - id: source
    capsule: echo
    input: { items: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] }
  - id: square
    capsule: calculator
    for_each: "{{ nodes.source.output.items }}"
    input: { expr: "{{ item }}^2 + {{ index }}" }
  - id: sink
    capsule: echo
    input: { squares: "{{ nodes.square.output }}", n: "{{ nodes.source.output.items[9] }}" }
output: "{{ nodes.sink.output }}"
"#,
    );
    let state = run_to_end(&t, &spec, json!({}));
    assert_eq!(status(&state), RunStatus::Succeeded, "{:?}", state.finished);
    let out = output(&state);
    let squares: Vec<i64> = out["squares"]
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v["value"].as_i64().expect("int"))
        .collect();
    let want: Vec<i64> = (1..=10).map(|i: i64| i * i + (i - 1)).collect();
    assert_eq!(squares, want);
    assert_eq!(out["n"], 10, "a whole-template string keeps the JSON type");
    assert_eq!(attempts(&state, "square[3]"), 1);
}

#[test]
fn retries_happen_only_for_retryable_classes() {
    let t = engine();
    let spec = spec_of(
        r#"
name: retries
inputs:
  until: { description: when `recovers` starts to succeed (unix ms) }
policy: { on_failure: continue }
defaults:
  retries: { max: 3, backoff_ms: 20, max_backoff_ms: 200 }
nodes:
  - id: recovers
    capsule: flaky
    retries: { max: 40, backoff_ms: 50, max_backoff_ms: 100 }
    input: { until_ms: "{{ input.until }}" }
  - id: not-retryable
    capsule: flaky
    input: { until_ms: 99999999999999, retryable: false }
  - id: always-retryable
    capsule: flaky
    retries: { max: 2, backoff_ms: 10, jitter: false }
    input: { until_ms: 99999999999999 }
  - id: deadline
    capsule: loop
    timeout_ms: 100
    retries: { max: 1, backoff_ms: 10 }
  - id: trap
    capsule: trap
    input: { kind: unreachable }
"#,
    );
    let loaded = load(&t, &spec);
    let until = soma_runtime::dag::history::now_ms() + 300;
    let state = run_loaded(&t, &spec, &loaded, json!({ "until": until }));
    assert_eq!(status(&state), RunStatus::Failed);
    // A retryable failure that clears: retried until it succeeds.
    assert_eq!(
        state.node("recovers").expect("node").status,
        Status::Succeeded
    );
    assert!(attempts(&state, "recovers") >= 2);
    // Not retryable: one attempt, whatever `retries` says.
    assert_eq!(attempts(&state, "not-retryable"), 1);
    assert_eq!(failure_class(&state, "not-retryable"), "capsule-error");
    assert_eq!(attempts(&state, "trap"), 1);
    assert_eq!(failure_class(&state, "trap"), "trap");
    // Retryable classes: 1 + max attempts.
    assert_eq!(attempts(&state, "always-retryable"), 3);
    assert_eq!(attempts(&state, "deadline"), 2);
    assert_eq!(failure_class(&state, "deadline"), "deadline-exceeded");
}

#[test]
fn fail_fast_starts_nothing_new_and_continue_skips_only_dependents() {
    let t = engine();
    let yaml = |policy: &str| {
        format!(
            r#"
name: policies
policy: {{ on_failure: {policy}, concurrency: 1 }}
nodes:
  - id: bad
    capsule: calculator
    input: {{ expr: "1/0" }}
  - id: after-bad
    capsule: echo
    needs: [bad]
  - id: good
    capsule: echo
    input: {{ x: 1 }}
  - id: after-good
    capsule: echo
    input: {{ y: "{{{{ nodes.good.output.x }}}}" }}
"#
        )
    };
    // `good` was queued with `bad` (the coordinator queues ahead of its
    // one worker), but the worker waits for its failure to be applied, so
    // the halt withdraws `good` every time, not just when the timing is
    // kind: repeated to catch the race coming back.
    for _ in 0..20 {
        let fast = run_to_end(&t, &spec_of(&yaml("fail-fast")), json!({}));
        assert_eq!(status(&fast), RunStatus::Failed);
        assert_eq!(fast.node("bad").expect("bad").attempts, 1);
        assert_eq!(
            attempts(&fast, "good"),
            0,
            "queued before the halt: withdrawn"
        );
        assert_eq!(attempts(&fast, "after-good"), 0, "nothing new starts");
    }
    let cont = run_to_end(&t, &spec_of(&yaml("continue")), json!({}));
    assert_eq!(status(&cont), RunStatus::Failed);
    assert_eq!(cont.node("after-bad").expect("n").status, Status::Skipped);
    assert_eq!(
        cont.node("after-good").expect("n").status,
        Status::Succeeded
    );
    assert_eq!(
        cont.node("after-good").expect("n").output,
        Some(json!({"y": 1}))
    );
}

/// The KAMACHIQ plan: the planner splices in parallel workers, the gate
/// sends the first draft of the test cases back once, then approves.
#[test]
fn planner_splices_and_gate_converges() {
    let t = engine();
    let spec = spec_of(
        r#"
name: kamachiq
inputs:
  goal: { default: build a command-line calculator }
nodes:
  - id: plan
    capsule: planner
    input: { goal: "{{ input.goal }}" }
output: "{{ nodes.plan.output }}"
"#,
    );
    let state = run_to_end(&t, &spec, json!({}));
    assert_eq!(status(&state), RunStatus::Succeeded, "{:?}", state.finished);
    let rounds: Vec<(u32, bool)> = state
        .verdicts
        .iter()
        .map(|v| (v.round, v.approved))
        .collect();
    assert_eq!(
        rounds,
        [(1, false), (2, true)],
        "rejected once, then approved"
    );
    assert_eq!(state.auto_approval_rate(), Some(0.0));
    assert_eq!(state.node("plan.tests").expect("tests").round, 2);
    assert!(output(&state)["files"].is_object(), "{}", output(&state));
    // Parallel workers really overlapped or at least all ran once.
    for part in ["tokenizer", "parser", "evaluator", "cli"] {
        assert_eq!(attempts(&state, &format!("plan.{part}")), 1);
    }
}

#[test]
fn gate_stops_after_max_rounds() {
    let t = engine();
    // The gated node ignores feedback (echo), so the gate never approves.
    let spec = spec_of(
        r#"
name: stubborn
nodes:
  - id: tests
    capsule: echo
    input: { cases: [ { expr: "2^3^2", expect: 64 } ] }
  - id: check
    capsule: calculator
    for_each: "{{ nodes.tests.output.cases }}"
    input: { expr: "{{ item.expr }}" }
    catch: true
  - id: review
    capsule: reviewer
    gate: { node: tests, max_rounds: 2 }
    input: { cases: "{{ nodes.tests.output.cases }}", results: "{{ nodes.check.output }}" }
  - id: ship
    capsule: echo
    input: "{{ nodes.tests.output }}"
"#,
    );
    let state = run_to_end(&t, &spec, json!({}));
    assert_eq!(status(&state), RunStatus::Failed);
    assert_eq!(failure_class(&state, "review"), "gate-rejected");
    assert_eq!(state.verdicts.len(), 2);
    assert_eq!(attempts(&state, "tests"), 2, "one run per round");
    assert_eq!(
        attempts(&state, "ship"),
        0,
        "a consumer of the gated node waits for the gate's approval"
    );
}

#[test]
fn planner_expansion_respects_caps() {
    let t = engine();
    let plan = |policy: &str| {
        spec_of(&format!(
            r#"
name: capped
policy: {policy}
nodes:
  - id: plan
    capsule: planner
    input: {{ goal: build a command-line calculator }}
"#
        ))
    };
    let state = run_to_end(&t, &plan("{ max_expansion_nodes: 3 }"), json!({}));
    assert_eq!(failure_class(&state, "plan"), "invalid-plan");
    let state = run_to_end(&t, &plan("{ max_expansion_depth: 0 }"), json!({}));
    assert_eq!(failure_class(&state, "plan"), "expansion-limit");
    assert_eq!(state.progress().0, 1, "nothing was spliced in");
    let fan = spec_of(
        r#"
name: wide
policy: { max_fan_out: 5 }
nodes:
  - id: many
    capsule: echo
    input: { xs: [1, 2, 3, 4, 5, 6] }
  - id: each
    capsule: echo
    for_each: "{{ nodes.many.output.xs }}"
"#,
    );
    let state = run_to_end(&t, &fan, json!({}));
    assert_eq!(failure_class(&state, "each"), "expansion-limit");
}

#[test]
fn cancellation_finishes_the_run_as_cancelled() {
    let t = engine();
    let spec = spec_of(
        r#"
name: cancelled
nodes:
  - { id: a, capsule: echo }
  - { id: b, capsule: echo, needs: [a] }
"#,
    );
    let loaded = load(&t, &spec);
    let run = scheduler::create(&t.engine, &spec, "t", &json!({}), &loaded, "acme", None)
        .expect("create");
    let settings = Settings::default();
    settings.cancel.store(true, Ordering::Relaxed);
    let (state, ended) =
        scheduler::drive(&t.engine, &run, &capsules(&loaded), &settings, &Quiet).expect("drive");
    assert_eq!(ended, Ended::Finished(RunStatus::Cancelled));
    assert_eq!(attempts(&state, "b"), 0);
    // A finished run cannot be driven again.
    let again = scheduler::drive(&t.engine, &run, &capsules(&loaded), &settings, &Quiet);
    assert!(matches!(again, Err(scheduler::DagError::Finished { .. })));
}

/// Interrupts after the first commit that records a finished call.
struct InterruptAfterFirstResult(Arc<std::sync::atomic::AtomicBool>);

impl Observer for InterruptAfterFirstResult {
    fn committed(&self, _: &RunState, events: &[Event]) {
        if events.iter().any(|e| matches!(e, Event::Succeeded { .. })) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

#[test]
fn interrupted_run_resumes_to_the_same_output_without_rerunning() {
    let t = engine();
    let spec = spec_of(
        r#"
name: chain
nodes:
  - { id: a, capsule: calculator, input: { expr: "1+1" } }
  - { id: b, capsule: calculator, input: { expr: "{{ nodes.a.output.value }}*10" } }
  - { id: c, capsule: calculator, input: { expr: "{{ nodes.b.output.value }}+3" } }
output: "{{ nodes.c.output.value }}"
"#,
    );
    let loaded = load(&t, &spec);
    let run = scheduler::create(&t.engine, &spec, "t", &json!({}), &loaded, "acme", None)
        .expect("create");
    let settings = Settings {
        concurrency: Some(1),
        ..Settings::default()
    };
    let observer = InterruptAfterFirstResult(settings.interrupt.clone());
    let (state, ended) =
        scheduler::drive(&t.engine, &run, &capsules(&loaded), &settings, &observer).expect("drive");
    assert_eq!(ended, Ended::Interrupted);
    assert!(state.finished.is_none());
    let (state, ended) = scheduler::drive(
        &t.engine,
        &run,
        &capsules(&loaded),
        &Settings::default(),
        &Quiet,
    )
    .expect("resume");
    assert_eq!(ended, Ended::Finished(RunStatus::Succeeded));
    assert_eq!(output(&state), json!(23));
    for node in ["a", "b", "c"] {
        assert_eq!(attempts(&state, node), 1, "{node} ran once");
    }
    // One fuel and one wall-time charge per call, no more.
    let history = Journal::new(t.engine.data().database().clone())
        .history(&run)
        .expect("history");
    let entries = t
        .engine
        .metering()
        .ledger()
        .ls(&soma_runtime::ledger::Filter {
            run: Some(run.clone()),
            ..Default::default()
        })
        .expect("ledger");
    assert_eq!(entries.len(), 6, "{entries:?}");
    assert!(history.iter().any(|e| matches!(e, Event::Finished { .. })));
}

#[test]
fn bad_inputs_and_kinds_are_refused_before_anything_runs() {
    let t = engine();
    let spec = spec_of(
        r#"
name: needs-input
inputs:
  goal: { description: required }
nodes:
  - { id: a, capsule: echo, input: { g: "{{ input.goal }}" } }
"#,
    );
    let loaded = load(&t, &spec);
    let missing = scheduler::create(&t.engine, &spec, "t", &json!({}), &loaded, "acme", None);
    assert!(
        matches!(&missing, Err(scheduler::DagError::Spec(e)) if e.to_string().contains("goal")),
        "{missing:?}"
    );
    let unknown = scheduler::create(
        &t.engine,
        &spec,
        "t",
        &json!({"goal": "x", "gaol": "typo"}),
        &loaded,
        "acme",
        None,
    );
    assert!(
        matches!(unknown, Err(scheduler::DagError::Spec(_))),
        "{unknown:?}"
    );
    // A gate capsule used as a worker.
    let spec = spec_of("name: kinds\nnodes:\n  - { id: a, capsule: reviewer }\n");
    let loaded = load(&t, &spec);
    let kind = scheduler::create(&t.engine, &spec, "t", &json!({}), &loaded, "acme", None);
    assert!(
        matches!(kind, Err(scheduler::DagError::Kind { .. })),
        "{kind:?}"
    );
    assert!(
        Journal::new(t.engine.data().database().clone())
            .runs()
            .expect("runs")
            .is_empty(),
        "nothing was recorded"
    );
}

/// A spec over the `notebook` capsule (which asks for kv and llm `small`).
fn notebook_spec(nodes: &str) -> spec::Spec {
    let text = format!(
        "name: restricted\ncapsules:\n  notebook: {}\n{nodes}",
        soma_capsules::NOTEBOOK_COMPONENT
    );
    spec::parse(&text, "restricted.yaml").unwrap_or_else(|e| panic!("spec: {e}"))
}

fn node_output(state: &RunState, node: &str) -> Value {
    state
        .node(node)
        .and_then(|n| n.output.clone())
        .unwrap_or_else(|| panic!("{node} has no output"))
}

/// A caught kv denial: `{"failed": true, "class": "capsule-error", "code": "kv", …}`.
fn assert_kv_denied(output: &Value, node: &str) {
    assert_eq!(output["failed"], true, "{node}: {output}");
    assert_eq!(output["code"], "kv", "{node}: {output}");
    assert!(
        output["message"]
            .as_str()
            .is_some_and(|m| m.contains("not granted kv")),
        "{node}: {output}"
    );
}

#[test]
fn a_node_restricted_to_no_kv_is_denied_it_and_keeps_the_restriction_across_resume() {
    let t = engine();
    let spec = notebook_spec(
        r#"
nodes:
  - { id: open, capsule: notebook, input: { op: kv-set, scope: capsule, key: k, value: v } }
  - { id: mid, capsule: notebook, needs: [open], input: { op: kv-get, scope: capsule, key: k } }
  - id: closed
    capsule: notebook
    needs: [mid]
    input: { op: kv-get, scope: capsule, key: k }
    capabilities: { kv: false, llm: [small] }
    catch: true
  - { id: again, capsule: notebook, needs: [closed], input: { op: kv-get, scope: capsule, key: k } }
"#,
    );
    assert_eq!(
        spec.nodes[2].capabilities.to_string(),
        "kv: false, llm: [small]"
    );
    let loaded = load(&t, &spec);
    let run = scheduler::create(&t.engine, &spec, "t", &json!({}), &loaded, "acme", None)
        .expect("create");
    // Stop after `open` (`mid`, already handed out, finishes), so `closed`
    // and `again` run in a second process that has only the journal.
    let settings = Settings {
        concurrency: Some(1),
        ..Settings::default()
    };
    let observer = InterruptAfterFirstResult(settings.interrupt.clone());
    let (state, ended) =
        scheduler::drive(&t.engine, &run, &capsules(&loaded), &settings, &observer).expect("drive");
    assert_eq!(ended, Ended::Interrupted);
    assert!(state.node("closed").is_some_and(|n| n.output.is_none()));
    let (state, ended) = scheduler::drive(
        &t.engine,
        &run,
        &capsules(&loaded),
        &Settings::default(),
        &Quiet,
    )
    .expect("resume");
    assert_eq!(ended, Ended::Finished(RunStatus::Succeeded));
    assert_eq!(node_output(&state, "open"), json!({ "set": "k" }));
    assert_kv_denied(&node_output(&state, "closed"), "closed");
    // The same capsule in another node of the same run keeps kv (and sees
    // what `open` wrote).
    assert_eq!(
        node_output(&state, "again"),
        json!({ "key": "k", "value": "v" })
    );
}

#[test]
fn a_node_cannot_widen_its_grant_beyond_the_policy() {
    let mut config = soma_tests::config(Allocator::Pooling, Metering::Fuel);
    config.policy.allow_kv = false;
    // The policy would allow `large`; the capsule asks only for `small`.
    config.policy.llm_models = vec!["small".into(), "large".into()];
    let t = TestEngine::new(config);
    let spec = notebook_spec(
        r#"
nodes:
  - id: wider
    capsule: notebook
    input: { op: kv-set, scope: capsule, key: k, value: v }
    capabilities: { kv: true, llm: [small, large] }
    catch: true
  - id: ask
    capsule: notebook
    input: { op: ask, model: large, question: "?" }
    capabilities: { llm: [small, large] }
    catch: true
"#,
    );
    let state = run_to_end(&t, &spec, json!({}));
    assert_eq!(status(&state), RunStatus::Succeeded);
    assert_kv_denied(&node_output(&state, "wider"), "wider");
    // `large` is in the policy and the node's list, but the capsule did not
    // ask for it.
    let ask = node_output(&state, "ask");
    assert_eq!(ask["failed"], true, "{ask}");
    assert_eq!(ask["code"], "llm-denied", "{ask}");
}

#[test]
fn a_capabilities_entry_that_cannot_restrict_is_refused_with_its_line() {
    let text = format!(
        "name: typo\ncapsules:\n  notebook: {}\nnodes:\n  - id: a\n    capsule: notebook\n    capabilities:\n      kvv: false\n      log: false\n      kv: [x]\n",
        soma_capsules::NOTEBOOK_COMPONENT
    );
    let e = spec::parse(&text, "typo.yaml").expect_err("refused");
    let text = e.to_string();
    assert!(
        text.contains("typo.yaml:8:7: node `a`: bad `capabilities`: unknown capability `kvv`"),
        "{text}"
    );
    assert!(text.contains("`log` cannot be restricted"), "{text}");
    assert!(text.contains("`kv` takes `true` or `false`"), "{text}");
}

/// A run of a spec with approvals, created for tenant `acme`: drive it,
/// and hand in verdicts as `cli`.
struct GatedRun {
    t: TestEngine,
    loaded: BTreeMap<String, Loaded>,
    run: String,
    journal: Journal,
}

impl GatedRun {
    fn new(yaml: &str) -> Self {
        let t = engine();
        let spec = spec_of(yaml);
        let loaded = load(&t, &spec);
        let run = scheduler::create(&t.engine, &spec, "t", &json!({}), &loaded, "acme", None)
            .expect("create");
        let journal = Journal::new(t.engine.data().database().clone());
        Self {
            t,
            loaded,
            run,
            journal,
        }
    }

    /// Drive the run as far as it goes (a restart drives it the same way).
    fn drive(&self) -> (RunState, Ended) {
        let settings = Settings::default();
        scheduler::drive(
            &self.t.engine,
            &self.run,
            &capsules(&self.loaded),
            &settings,
            &Quiet,
        )
        .expect("drive")
    }

    fn offer(
        &self,
        node: &str,
        verdict: spec::ApprovalVerdict,
        reason: Option<&str>,
    ) -> Result<Offered, scheduler::DagError> {
        scheduler::offer_approval(
            &self.journal,
            &self.run,
            node,
            verdict,
            reason.map(Into::into),
            "cli",
            None,
        )
    }
}

/// A node with `approval:` waits (`awaiting-approval`) after its call while
/// an independent branch runs; a drive with only verdicts left returns
/// (and holds nothing); the verdict is idempotent and cannot be changed;
/// the waiting survives a new drive (a restart); approve lets the
/// dependents run and the report shows who decided.
#[test]
fn approval_waits_survives_a_restart_and_approve_lets_dependents_run() {
    let gated = GatedRun::new(
        r#"
name: approve
nodes:
  - id: a
    capsule: calculator
    input: { expr: "6*7" }
    approval: { timeout: 24h }
  - id: b
    capsule: echo
    input: "{{ nodes.a.output }}"
  - id: c
    capsule: calculator
    input: { expr: "1+1" }
"#,
    );
    let (state, ended) = gated.drive();
    assert_eq!(ended, Ended::AwaitingApproval);
    assert!(matches!(
        state.node("a").expect("a").status,
        Status::AwaitingApproval {
            deadline_ms: Some(_),
            ..
        }
    ));
    assert_eq!(state.node("c").expect("c").status, Status::Succeeded);
    assert_eq!(state.node("b").expect("b").status, Status::Waiting);
    assert_eq!(
        state.report().timeline[0].status.name(),
        "awaiting-approval"
    );
    // A restart: the run is driven again from its journal and waits again,
    // calling nothing.
    let (state, ended) = gated.drive();
    assert_eq!(ended, Ended::AwaitingApproval);
    assert_eq!(attempts(&state, "a"), 1);
    let approve = spec::ApprovalVerdict::Approve;
    let offer = |verdict, reason| gated.offer("a", verdict, Some(reason));
    assert_eq!(offer(approve, "fine").expect("offer"), Offered::Accepted);
    assert_eq!(
        offer(approve, "fine").expect("again"),
        Offered::AlreadyGiven
    );
    let e = offer(spec::ApprovalVerdict::Reject, "no").expect_err("changed");
    assert!(
        e.to_string().contains("already has the verdict `approve`"),
        "{e}"
    );
    let e = gated
        .offer("c", approve, None)
        .expect_err("c does not wait");
    assert!(
        e.to_string()
            .contains("not awaiting approval (it is succeeded)"),
        "{e}"
    );
    let (state, ended) = gated.drive();
    assert_eq!(ended, Ended::Finished(RunStatus::Succeeded));
    assert_eq!(
        output(&state)["b"]["value"],
        json!(42),
        "{:?}",
        output(&state)
    );
    let report = state.report();
    assert_eq!(report.approvals.len(), 1);
    assert_eq!(report.approvals[0].by, "cli");
    assert_eq!(report.approvals[0].reason.as_deref(), Some("fine"));
    // Recorded: asking again is still the same answer.
    assert_eq!(
        offer(approve, "fine").expect("after"),
        Offered::AlreadyGiven
    );
}

/// Reject fails the node (`approval-rejected`) under the run's policy
/// (`continue`: its dependents are skipped, the rest runs); a timeout
/// applies `on_timeout` (here: approve) once its deadline has passed.
#[test]
fn reject_fails_the_node_and_a_timeout_applies_its_verdict() {
    let gated = GatedRun::new(
        r#"
name: reject
policy: { on_failure: continue }
nodes:
  - id: a
    capsule: calculator
    input: { expr: "6*7" }
    approval: {}
  - id: b
    capsule: echo
    input: "{{ nodes.a.output }}"
  - id: t
    capsule: calculator
    input: { expr: "2*3" }
    approval: { timeout: 1s, on_timeout: approve }
  - id: u
    capsule: echo
    input: "{{ nodes.t.output }}"
"#,
    );
    let (state, ended) = gated.drive();
    assert_eq!(ended, Ended::AwaitingApproval);
    let deadline = match state.node("t").expect("t").status {
        Status::AwaitingApproval {
            deadline_ms: Some(at),
            ..
        } => at,
        ref other => panic!("t: {other:?}"),
    };
    gated
        .offer("a", spec::ApprovalVerdict::Reject, Some("wrong"))
        .expect("reject");
    while soma_runtime::dag::history::now_ms() <= deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (state, ended) = gated.drive();
    assert_eq!(ended, Ended::Finished(RunStatus::Failed));
    assert_eq!(failure_class(&state, "a"), "approval-rejected");
    assert_eq!(state.node("b").expect("b").status, Status::Skipped);
    let u = state.node("u").expect("u").output.clone().expect("u ran");
    assert_eq!(u["value"], json!(6), "{u}");
    let by: Vec<(&str, &str)> = state
        .approvals
        .iter()
        .map(|a| (a.node.as_str(), a.by.as_str()))
        .collect();
    assert!(
        by.contains(&("a", "cli")) && by.contains(&("t", "timeout")),
        "{by:?}"
    );
}
