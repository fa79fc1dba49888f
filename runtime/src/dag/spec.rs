//! The DAG spec: what a run is made of, as written by a person (YAML or
//! JSON) or returned by a planner capsule (JSON). The types here are the
//! format; `docs/dag.schema.json` is generated from them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use crate::config::dag::Ceilings;

use soma_host_api::{AllowError, Restriction};

use super::source::{self, Position, Positions, SourceError};
use super::template::{self, Root, Segment, TemplateError, TemplateRef, kind_of};

/// A DAG spec. Parsed and validated by [`parse`] before anything runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Format version; only `1` exists.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// A short name for the DAG (shown by `soma dag ls`).
    pub name: String,
    /// What the DAG does.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The run's inputs. A template may use `{{ input.NAME }}` only for a
    /// declared NAME; an input without a default is required.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, InputSpec>,
    /// Capsule aliases → references: a component file (relative to the spec
    /// file or a `--capsule-path` directory) or a registry reference
    /// (`host/repo:tag`, `host/repo@sha256:…`). Nodes name capsules by alias
    /// only, so a planner can only use what the spec's author declared.
    pub capsules: BTreeMap<String, String>,
    /// Defaults for every node (a node's own settings win).
    #[serde(default)]
    pub defaults: NodeDefaults,
    /// How the run is scheduled and bounded.
    #[serde(default)]
    pub policy: Policy,
    /// A budget for the whole run (LLM tokens and money).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
    /// The nodes. Order does not matter; dependencies do.
    pub nodes: Vec<NodeSpec>,
    /// The run's output: a value with templates (e.g.
    /// `"{{ nodes.assemble.output }}"`). Default: an object holding the
    /// output of every node nothing depends on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

fn one() -> u32 {
    1
}

/// One declared input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// What the input means.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The value used when the run does not give one; none = required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

/// Settings every node inherits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeDefaults {
    /// Default per-call limits.
    #[serde(default)]
    pub limits: NodeLimits,
    /// Default retry policy.
    #[serde(default)]
    pub retries: Retries,
}

/// What to do when a node fails for good (after its retries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Start nothing new; let running nodes finish; the run fails.
    #[default]
    FailFast,
    /// Skip only what depends on the failed node; run everything else.
    Continue,
}

/// Scheduling and expansion bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// What a node's final failure does to the rest of the run.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Nodes running at once; default: the number of cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub concurrency: Option<usize>,
    /// How deep planners may nest: 1 = a top-level planner may expand, 2 =
    /// its plan may hold planners too, …; 0 = no planner may expand.
    #[serde(default = "default_max_expansion_depth")]
    pub max_expansion_depth: u32,
    /// Most nodes one planner may add.
    #[serde(default = "default_max_expansion_nodes")]
    #[schemars(range(min = 1))]
    pub max_expansion_nodes: usize,
    /// Most instances one `for_each` may fan out to.
    #[serde(default = "default_max_fan_out")]
    #[schemars(range(min = 1))]
    pub max_fan_out: usize,
    /// Most nodes a run may hold in all, after expansions and fan-outs.
    #[serde(default = "default_max_nodes")]
    #[schemars(range(min = 1))]
    pub max_nodes: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            on_failure: OnFailure::default(),
            concurrency: None,
            max_expansion_depth: default_max_expansion_depth(),
            max_expansion_nodes: default_max_expansion_nodes(),
            max_fan_out: default_max_fan_out(),
            max_nodes: default_max_nodes(),
        }
    }
}

fn default_max_expansion_depth() -> u32 {
    2
}
fn default_max_expansion_nodes() -> usize {
    200
}
fn default_max_fan_out() -> usize {
    crate::config::dag::DEFAULT_MAX_FAN_OUT
}
fn default_max_nodes() -> usize {
    crate::config::dag::DEFAULT_MAX_NODES
}

/// A budget: LLM tokens and/or money. Enforced by the metering layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Most tokens (prompt + completion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens: Option<u64>,
    /// Most money, in US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd: Option<f64>,
}

/// Per-call limits a node asks for; the tightest of operator, capsule and
/// node wins.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeLimits {
    /// Fuel per call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub fuel: Option<u64>,
    /// Wall-clock deadline per call, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u64>,
    /// Memory per call, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub memory_mb: Option<u64>,
}

/// Retries of a failed call. Only retryable failure classes are retried
/// (deadline-exceeded, host-error, capsule errors marked retryable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first attempt (0 = none).
    #[serde(default)]
    #[schemars(range(max = 100))]
    pub max: u32,
    /// Delay before the first retry, in ms; doubles each retry.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Largest delay, in ms.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Randomize each delay uniformly in [delay/2, delay] so retries of many
    /// nodes do not arrive together.
    #[serde(default = "yes")]
    pub jitter: bool,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            max: 0,
            backoff_ms: default_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            jitter: true,
        }
    }
}

fn default_backoff_ms() -> u64 {
    100
}
fn default_max_backoff_ms() -> u64 {
    10_000
}
fn yes() -> bool {
    true
}

/// One node: a capsule call (or a fan-out of calls).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Unique id: letters, digits, `_` and `-`, at most 64.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub id: String,
    /// The capsule alias (a key of the spec's `capsules`).
    pub capsule: String,
    /// The input passed to `run()`: any JSON value. Strings may hold
    /// templates: `{{ input.NAME }}`, `{{ nodes.ID.output.a.b[0] }}`, and in
    /// a `for_each` node `{{ item }}` / `{{ index }}`. A string that is one
    /// whole template takes the referenced value's JSON type; otherwise the
    /// values are interpolated as text. Default: `{}`.
    #[serde(default = "empty_object")]
    pub input: Value,
    /// Nodes that must finish first (template references are added
    /// automatically).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// Per-call limits.
    #[serde(default)]
    pub limits: NodeLimits,
    /// Shorthand for `limits.timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u64>,
    /// Retry policy (default: the spec's `defaults.retries`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// A budget for this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
    /// Make this node a quality gate over another node (its capsule must be
    /// of kind `gate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateSpec>,
    /// Fan out: one call per element of the array this template gives
    /// (e.g. `"{{ nodes.tests.output.cases }}"`); the node's output is the
    /// array of the calls' outputs, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    /// On a final failure, succeed with the failure as output
    /// (`{"failed": true, "class", "code", "message"}`) instead of failing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub catch: bool,
    /// Narrow what this node's capsule is granted, per capability: `false`
    /// takes a capability away, a list keeps only those arguments (e.g.
    /// `llm: [small]`), `true` changes nothing. It only narrows — the grant
    /// stays within what the capsule asks for and the operator's
    /// `[policy]` allows — and a planner's plan nodes are held to the
    /// planner node's restriction too. Capabilities not named are not
    /// narrowed; `log`, `events` and `dir` cannot be named.
    #[serde(default, skip_serializing_if = "Restriction::is_empty")]
    #[schemars(with = "BTreeMap<String, AllowSchema>")]
    pub capabilities: Restriction,
    /// Wait for a human verdict once the node's call has succeeded (for a
    /// gate: once its capsule approved): the node shows
    /// `awaiting-approval` until `soma dag approve`/`reject` (or the HTTP
    /// route) decides, or `timeout` applies `on_timeout`. Approve → the
    /// node succeeds with its output; reject → it fails
    /// (`approval-rejected`) and the run's `on_failure` policy applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSpec>,
}

/// A node's human approval step (`approval: { required: true, timeout:
/// 24h, on_timeout: reject }`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSpec {
    /// Whether the verdict is needed (`false` turns the step off).
    #[serde(default = "yes")]
    pub required: bool,
    /// How long to wait for the verdict: a number with a unit, `s`, `m`,
    /// `h` or `d` (`90m`, `24h`, `7d`); at most 365 days. None: wait until
    /// someone decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+[smhd]$"))]
    pub timeout: Option<String>,
    /// The verdict applied when `timeout` passes (default `reject`).
    #[serde(default)]
    pub on_timeout: ApprovalVerdict,
}

impl ApprovalSpec {
    /// The timeout in ms (`None`: none, or not valid — [`parse`] refuses
    /// an invalid one).
    pub fn timeout_ms(&self) -> Option<u64> {
        self.timeout
            .as_deref()
            .and_then(|t| parse_approval_timeout(t).ok())
    }
}

/// Most an approval may wait: 365 days.
pub const MAX_APPROVAL_TIMEOUT_MS: u64 = 365 * 86_400_000;

/// `90m`, `24h`, `7d` (units `s`, `m`, `h`, `d`) in ms, at least 1 s and
/// at most [`MAX_APPROVAL_TIMEOUT_MS`]; the error says what is wrong.
pub fn parse_approval_timeout(text: &str) -> Result<u64, String> {
    let unit_at = text.len().saturating_sub(1);
    let (digits, unit) = (text.get(..unit_at).unwrap_or(""), text.get(unit_at..));
    let scale = match unit {
        Some("s") => 1_000,
        Some("m") => 60_000,
        Some("h") => 3_600_000,
        Some("d") => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}` is not a duration: use e.g. 90m, 24h or 7d"
            ));
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: use e.g. 90m, 24h or 7d"))?;
    let ms = n.saturating_mul(scale);
    if ms == 0 || ms > MAX_APPROVAL_TIMEOUT_MS {
        return Err(format!("`{text}` must be between 1s and 365d"));
    }
    Ok(ms)
}

/// A human verdict on a node awaiting approval.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
    utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalVerdict {
    /// The node succeeds with its output; its dependents run.
    Approve,
    /// The node fails (`approval-rejected`).
    #[default]
    Reject,
}

impl ApprovalVerdict {
    /// `approve` or `reject` (the serde form).
    pub fn name(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
        }
    }
}

impl fmt::Display for ApprovalVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// What a node allows one capability: `true`, `false` or a list of
/// arguments. (The schema of `soma_host_api::Allow`, which has no schemars.)
#[derive(JsonSchema)]
#[schemars(rename = "Allow")]
#[serde(untagged)]
#[allow(dead_code)] // only its schema is used
enum AllowSchema {
    /// `true`: as granted anyway; `false`: nothing.
    Bool(bool),
    /// Only these arguments (e.g. llm models) of what is granted anyway.
    Only(Vec<String>),
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// A quality gate: the gate node sees the gated node's output and returns
/// `{"approved": bool, "score": number, "feedback": …}`. Not approved → the
/// gated node (and whatever lies between it and the gate) runs again with
/// `"feedback"` added to its input, up to `max_rounds` rounds in all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    /// The gated node's id.
    pub node: String,
    /// Rounds in all, including the first (1–10).
    #[serde(default = "default_max_rounds")]
    #[schemars(range(min = 1, max = 10))]
    pub max_rounds: u32,
}

fn default_max_rounds() -> u32 {
    3
}

/// What a planner capsule returns: nodes to splice in under the planner's
/// id. Node ids are local to the plan; templates may refer to sibling nodes
/// and to `input`; capsules are aliases of the enclosing spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The nodes to add.
    pub nodes: Vec<NodeSpec>,
    /// The node whose output becomes the planner node's output; default: an
    /// object with the output of every plan node nothing depends on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// A gate's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Verdict {
    /// Whether the gated output is accepted.
    pub approved: bool,
    /// Quality score, 0.0–1.0.
    #[serde(default)]
    pub score: f64,
    /// What to change (passed to the gated node on the next round).
    #[serde(default)]
    pub feedback: Value,
}

impl Ceilings {
    /// The parse budget these ceilings give.
    pub fn budget(&self) -> source::Budget {
        source::Budget {
            max_nodes: self.max_spec_nodes,
            max_bytes: self.max_spec_bytes,
        }
    }
}

/// `value` within `ceiling`: the format default is lowered to the ceiling;
/// any other value above it is an error naming `dag.{key}`.
fn ceiling<T: PartialOrd + Copy + fmt::Display>(
    report: &mut Report<'_>,
    value: &mut T,
    default: T,
    ceiling: T,
    pointer: String,
    field: &str,
    key: &str,
) {
    if *value <= ceiling {
        return;
    }
    if *value == default {
        *value = ceiling;
        return;
    }
    out_of_range(
        report,
        pointer,
        field,
        format!(
            "is {value}; this daemon allows at most {ceiling} (dag.{key}): lower it in the spec"
        ),
    );
}

impl Spec {
    /// Hold this spec to the operator's `ceilings`: lower the format's
    /// defaults where they are above a ceiling, and refuse values the spec
    /// sets above one. Call before a run is created (what it stores is what
    /// runs). Cost: one pass over the nodes.
    ///
    /// # Errors
    ///
    /// [`SpecErrors`] (file `origin`): each value above its ceiling, with
    /// its pointer and the `dag.*` setting that bounds it.
    pub fn within(&mut self, ceilings: &Ceilings, origin: &str) -> Result<(), SpecErrors> {
        let c = ceilings;
        let mut report = Report::new(origin, None);
        let p = &mut self.policy;
        if let Some(concurrency) = p.concurrency
            && concurrency > c.max_concurrency
        {
            out_of_range(
                &mut report,
                "/policy/concurrency".to_owned(),
                "policy.concurrency",
                format!(
                    "is {concurrency}; this daemon allows at most {} (dag.max_concurrency): \
                     lower it in the spec",
                    c.max_concurrency
                ),
            );
        }
        let r = &mut report;
        ceiling(
            r,
            &mut p.max_fan_out,
            default_max_fan_out(),
            c.max_fan_out,
            "/policy/max_fan_out".into(),
            "policy.max_fan_out",
            "max_fan_out",
        );
        ceiling(
            r,
            &mut p.max_nodes,
            default_max_nodes(),
            c.max_nodes,
            "/policy/max_nodes".into(),
            "policy.max_nodes",
            "max_nodes",
        );
        ceiling(
            r,
            &mut p.max_expansion_depth,
            default_max_expansion_depth(),
            c.max_expansion_depth,
            "/policy/max_expansion_depth".into(),
            "policy.max_expansion_depth",
            "max_expansion_depth",
        );
        ceiling(
            r,
            &mut p.max_expansion_nodes,
            default_max_expansion_nodes(),
            c.max_expansion_nodes,
            "/policy/max_expansion_nodes".into(),
            "policy.max_expansion_nodes",
            "max_expansion_nodes",
        );
        if self.nodes.len() > c.max_nodes {
            r.push(
                "/nodes",
                SpecErrorKind::Limit {
                    what: "nodes (dag.max_nodes)".to_owned(),
                    count: self.nodes.len(),
                    limit: c.max_nodes,
                },
            );
        }
        nodes_within(r, &mut self.nodes, Some(&mut self.defaults.retries), c);
        report.finish(())
    }
}

impl Plan {
    /// Hold the nodes a planner returned to the operator's `ceilings`, as
    /// [`Spec::within`] holds a submitted spec's nodes (`retries.*`,
    /// `gate.max_rounds`; the node count and nesting depth are checked by
    /// the run against `policy.*` and `dag.*` together). Called for every
    /// plan before it is spliced. Cost: one pass over the plan's nodes.
    ///
    /// # Errors
    ///
    /// [`SpecErrors`] (file `origin`): each value above its ceiling, with
    /// its pointer and the `dag.*` setting that bounds it.
    pub fn within(&mut self, ceilings: &Ceilings, origin: &str) -> Result<(), SpecErrors> {
        let mut report = Report::new(origin, None);
        nodes_within(&mut report, &mut self.nodes, None, ceilings);
        report.finish(())
    }
}

/// The node-level part of [`Spec::within`] and [`Plan::within`]: each
/// node's `retries` (and the spec's default retries) and gate rounds
/// within their ceilings.
fn nodes_within(
    r: &mut Report<'_>,
    nodes: &mut [NodeSpec],
    defaults: Option<&mut Retries>,
    c: &Ceilings,
) {
    let retries = |r: &mut Report<'_>, retries: &mut Retries, at: &str| {
        let d = Retries::default();
        ceiling(
            r,
            &mut retries.max,
            d.max,
            c.max_retries,
            format!("{at}/max"),
            "retries.max",
            "max_retries",
        );
        ceiling(
            r,
            &mut retries.backoff_ms,
            d.backoff_ms,
            c.max_backoff_ms,
            format!("{at}/backoff_ms"),
            "retries.backoff_ms",
            "max_backoff_ms",
        );
        ceiling(
            r,
            &mut retries.max_backoff_ms,
            d.max_backoff_ms,
            c.max_backoff_ms,
            format!("{at}/max_backoff_ms"),
            "retries.max_backoff_ms",
            "max_backoff_ms",
        );
    };
    if let Some(defaults) = defaults {
        retries(r, defaults, "/defaults/retries");
    }
    for (index, node) in nodes.iter_mut().enumerate() {
        if let Some(node_retries) = &mut node.retries {
            retries(r, node_retries, &format!("/nodes/{index}/retries"));
        }
        if let Some(gate) = &mut node.gate {
            ceiling(
                r,
                &mut gate.max_rounds,
                default_max_rounds(),
                c.max_rounds,
                format!("/nodes/{index}/gate/max_rounds"),
                "gate.max_rounds",
                "max_rounds",
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing and validation
// ---------------------------------------------------------------------------

/// Most errors one [`parse`], [`parse_plan`] or [`Spec::bind_input`]
/// reports; past this a final [`SpecErrorKind::TooManyErrors`] is added.
pub const MAX_ERRORS: usize = 50;

/// Longest node id.
pub const MAX_ID_LEN: usize = 64;

/// Most retries a node may ask for.
pub const MAX_RETRIES: u32 = 100;

pub use crate::config::dag::MAX_GATE_ROUNDS;

/// One problem in a spec, a plan or a run's input, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    /// The file (or origin, e.g. "plan from node `plan`", "input").
    pub file: String,
    /// Line and column in the file, when the value came from text.
    pub position: Option<Position>,
    /// JSON pointer of the offending value (`""`: the whole document).
    pub pointer: String,
    /// What is wrong.
    pub kind: SpecErrorKind,
}

impl fmt::Display for SpecError {
    /// `{file}:{line}:{col}: {message}`, or `{file}: {message} (at
    /// {pointer})` without a position.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(Position { line, column }) => {
                write!(f, "{}:{line}:{column}: {}", self.file, self.kind)
            }
            None if self.pointer.is_empty() => write!(f, "{}: {}", self.file, self.kind),
            None => write!(f, "{}: {} (at {})", self.file, self.kind, self.pointer),
        }
    }
}

impl std::error::Error for SpecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.kind)
    }
}

/// What is wrong with a spec, a plan or a run's input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecErrorKind {
    /// The text is not YAML/JSON, too large or too deeply nested.
    #[error("{0}")]
    Syntax(SourceError),
    /// Wrong type, unknown field or missing field.
    #[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
    Shape {
        /// The field path, e.g. `nodes[0].limits.fuel`.
        path: String,
        /// What the deserializer expected.
        message: String,
    },
    /// `version` is not 1.
    #[error("unsupported version {version}: this runtime reads version 1")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// Two nodes with one id.
    #[error("duplicate node id `{id}`: ids must be unique")]
    DuplicateId {
        /// The id.
        id: String,
    },
    /// An id outside `[A-Za-z0-9_-]{1,64}`.
    #[error("bad node id `{id}`: use 1–64 letters, digits, `_` or `-`")]
    BadId {
        /// The id.
        id: String,
    },
    /// An input name templates could not refer to.
    #[error("bad input name `{name}`: use letters, digits, `_` or `-`")]
    BadInputName {
        /// The name.
        name: String,
    },
    /// A node names a capsule alias that `capsules` does not declare.
    #[error("node `{node}` uses capsule `{alias}`, which is not declared in `capsules`")]
    UnknownCapsule {
        /// The alias.
        alias: String,
        /// The node.
        node: String,
    },
    /// `needs`, a template, a gate or an output names a node that does not
    /// exist (in a plan: no sibling plan node).
    #[error("{referenced_by} refers to node `{id}`, which does not exist")]
    UnknownNode {
        /// The missing node.
        id: String,
        /// Who refers to it, e.g. "node `b`" or "`output`".
        referenced_by: String,
    },
    /// A node needs (or references) itself.
    #[error("node `{node}` depends on itself")]
    SelfDependency {
        /// The node.
        node: String,
    },
    /// Dependencies (`needs`, template references, gates) form a cycle.
    #[error("dependency cycle: {} (each node needs the next)", path.join(" → "))]
    Cycle {
        /// The cycle, first node repeated at the end.
        path: Vec<String>,
    },
    /// A template does not parse.
    #[error("bad template: {error}")]
    BadTemplate {
        /// The parse error (offset within the string).
        error: TemplateError,
    },
    /// `{{ input.NAME }}` for a NAME not in `inputs`.
    #[error("`input.{name}` is not declared in `inputs`")]
    UndeclaredInput {
        /// The name.
        name: String,
    },
    /// `{{ item }}` / `{{ index }}` outside a `for_each` node.
    #[error("`{reference}` is only defined in a node with `for_each`")]
    ItemOutsideForEach {
        /// The reference, e.g. `item.name`.
        reference: String,
    },
    /// A `for_each` that is not one whole reference to a node or input.
    #[error("bad `for_each`: {reason}")]
    BadForEach {
        /// What is wrong.
        reason: String,
    },
    /// A node's `capabilities:` names a capability it cannot restrict, or
    /// gives it a value it does not take.
    #[error("node `{node}`: bad `capabilities`: {error}")]
    BadCapability {
        /// The node.
        node: String,
        /// What is wrong.
        #[source]
        error: AllowError,
    },
    /// A gate over a missing node, itself, or with rounds out of 1–10.
    #[error("bad `gate`: {reason}")]
    BadGate {
        /// What is wrong.
        reason: String,
    },
    /// A node's `approval:` is wrong (a timeout that is not a duration).
    #[error("bad `approval`: {reason}")]
    BadApproval {
        /// What is wrong.
        reason: String,
    },
    /// A number outside its range.
    #[error("`{field}` {message}")]
    OutOfRange {
        /// The field, e.g. `retries.max`.
        field: String,
        /// The bound, e.g. "must be at most 100 (found 500)".
        message: String,
    },
    /// Too many of something (e.g. nodes in a plan).
    #[error("too many {what}: {count} (at most {limit})")]
    Limit {
        /// What was counted, and which setting bounds it.
        what: String,
        /// How many there are.
        count: usize,
        /// The bound.
        limit: usize,
    },
    /// A required input (no default) was not given.
    #[error("missing input `{name}` (it has no default)")]
    MissingInput {
        /// The input.
        name: String,
    },
    /// An input the spec does not declare.
    #[error("unknown input `{name}` ({})", declared_list(declared))]
    UnknownInput {
        /// The name given.
        name: String,
        /// The declared inputs.
        declared: Vec<String>,
    },
    /// The run's input is not an object.
    #[error("the run's input must be an object of named inputs, not {found}")]
    InputNotObject {
        /// What it is, e.g. "a string".
        found: String,
    },
    /// More than [`MAX_ERRORS`] errors; the rest are not shown.
    #[error("too many errors; only the first {shown} are shown")]
    TooManyErrors {
        /// How many are shown.
        shown: usize,
    },
}

fn declared_list(declared: &[String]) -> String {
    if declared.is_empty() {
        "the spec declares no inputs".to_owned()
    } else {
        format!("declared: {}", declared.join(", "))
    }
}

/// Every problem found, in order of position; displays one per line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct SpecErrors(pub Vec<SpecError>);

/// Collects errors (up to [`MAX_ERRORS`]) with their positions.
struct Report<'a> {
    file: &'a str,
    positions: Option<&'a Positions>,
    errors: Vec<SpecError>,
    dropped: bool,
}

impl<'a> Report<'a> {
    fn new(file: &'a str, positions: Option<&'a Positions>) -> Self {
        Self {
            file,
            positions,
            errors: Vec::new(),
            dropped: false,
        }
    }

    /// An error about the value at `pointer`.
    fn push(&mut self, pointer: impl Into<String>, kind: SpecErrorKind) {
        let pointer = pointer.into();
        let position = self.positions.and_then(|p| p.get(&pointer));
        self.push_at(pointer, position, kind);
    }

    /// An error about the member at `pointer` as a whole (its key's line).
    fn push_member(&mut self, pointer: impl Into<String>, kind: SpecErrorKind) {
        let pointer = pointer.into();
        let position = self
            .positions
            .and_then(|p| p.key(&pointer).or_else(|| p.get(&pointer)));
        self.push_at(pointer, position, kind);
    }

    fn push_at(&mut self, pointer: String, position: Option<Position>, kind: SpecErrorKind) {
        if self.errors.len() >= MAX_ERRORS {
            self.dropped = true;
            return;
        }
        self.errors.push(SpecError {
            file: self.file.to_owned(),
            position,
            pointer,
            kind,
        });
    }

    fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok(value)` if nothing was reported, else the errors.
    fn finish<T>(self, value: T) -> Result<T, SpecErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self.into_errors())
        }
    }

    /// The errors, in order of position (errors without one keep their
    /// order, last), plus a note if some were dropped.
    fn into_errors(mut self) -> SpecErrors {
        self.errors.sort_by_key(|e| {
            e.position
                .map_or((u32::MAX, u32::MAX), |p| (p.line, p.column))
        });
        if self.dropped {
            self.errors.push(SpecError {
                file: self.file.to_owned(),
                position: None,
                pointer: String::new(),
                kind: SpecErrorKind::TooManyErrors { shown: MAX_ERRORS },
            });
        }
        SpecErrors(self.errors)
    }
}

/// Parse and validate a spec from YAML or JSON `text`; `file` names it in
/// errors. Runs once per spec: cost is linear in the text (plus the
/// dependency graph), at most a few milliseconds for a 4 MiB file.
///
/// # Errors
///
/// [`SpecErrors`]: every problem found (up to [`MAX_ERRORS`]), each with
/// its line and column — syntax, shape (unknown/missing fields, wrong
/// types), version, ids, capsule aliases, `needs`, templates, inputs,
/// `for_each`, gates, cycles and numeric bounds.
pub fn parse(text: &str, file: &str) -> Result<Spec, SpecErrors> {
    parse_within(text, file, &source::Budget::default())
}

/// [`parse`] with the loaded document bounded by `budget` (values and
/// bytes, aliases expanded): what the daemon uses for specs sent to it.
///
/// # Errors
///
/// As [`parse`]; a document past the budget is a [`SpecErrorKind::Syntax`]
/// error naming the `dag.max_spec_*` setting.
pub fn parse_within(text: &str, file: &str, budget: &source::Budget) -> Result<Spec, SpecErrors> {
    let (value, positions) = source::load_within(text, budget).map_err(|error| {
        SpecErrors(vec![SpecError {
            file: file.to_owned(),
            position: error.position(),
            pointer: String::new(),
            kind: SpecErrorKind::Syntax(error),
        }])
    })?;
    let mut report = Report::new(file, Some(&positions));
    let (shell, nodes) = shape::<Spec>(&value, &mut report);
    let Some(mut spec) = shell else {
        return Err(report.into_errors());
    };
    if spec.version != 1 {
        report.push(
            "/version",
            SpecErrorKind::UnsupportedVersion {
                version: spec.version,
            },
        );
    }
    for name in spec.inputs.keys() {
        if !is_name(name) {
            let mut pointer = "/inputs".to_owned();
            source::push_field(&mut pointer, name);
            report.push_member(pointer, SpecErrorKind::BadInputName { name: name.clone() });
        }
    }
    check_limits(&spec.defaults.limits, "/defaults/limits", &mut report);
    check_retries(&spec.defaults.retries, "/defaults/retries", &mut report);
    check_policy(&spec.policy, &mut report);
    if let Some(budget) = &spec.budget {
        check_budget(budget, "/budget", &mut report);
    }
    if nodes.raw_count > spec.policy.max_nodes {
        report.push_member(
            "/nodes",
            SpecErrorKind::Limit {
                what: "nodes (policy.max_nodes)".to_owned(),
                count: nodes.raw_count,
                limit: spec.policy.max_nodes,
            },
        );
    }
    let scope = Declared {
        capsules: &spec.capsules,
        inputs: &spec.inputs,
    };
    check_nodes(&nodes, &scope, &mut report);
    if let Some(output) = &spec.output {
        check_templates(
            output,
            "/output",
            &Owner {
                id: None,
                for_each: false,
            },
            &nodes.known,
            &scope,
            &mut report,
        );
    }
    if !report.is_clean() {
        return Err(report.into_errors());
    }
    spec.nodes = nodes.parsed.into_iter().map(|(_, node)| node).collect();
    Ok(spec)
}

/// Validate a planner's output as a [`Plan`] for `spec`: the node checks of
/// [`parse`], with ids local to the plan, templates referring only to
/// sibling plan nodes and to `spec`'s declared inputs, capsules among
/// `spec`'s aliases, at most `max_nodes` nodes, and an `output` naming a
/// plan node. Errors carry `origin` (e.g. "plan from node `plan`") as their
/// file and a JSON pointer (no line positions). Cost: linear in the plan.
///
/// # Errors
///
/// [`SpecErrors`]: every problem found (up to [`MAX_ERRORS`]).
pub fn parse_plan(
    value: &Value,
    spec: &Spec,
    max_nodes: usize,
    origin: &str,
) -> Result<Plan, SpecErrors> {
    let mut report = Report::new(origin, None);
    if let Some(Value::Array(raw)) = value.get("nodes")
        && raw.len() > max_nodes
    {
        report.push(
            "/nodes",
            SpecErrorKind::Limit {
                what: "nodes in the plan (policy.max_expansion_nodes)".to_owned(),
                count: raw.len(),
                limit: max_nodes,
            },
        );
        return Err(report.into_errors());
    }
    let (shell, nodes) = shape::<Plan>(value, &mut report);
    let Some(mut plan) = shell else {
        return Err(report.into_errors());
    };
    let scope = Declared {
        capsules: &spec.capsules,
        inputs: &spec.inputs,
    };
    check_nodes(&nodes, &scope, &mut report);
    if let Some(output) = &plan.output
        && !nodes.known.contains(output.as_str())
    {
        report.push(
            "/output",
            SpecErrorKind::UnknownNode {
                id: output.clone(),
                referenced_by: "`output`".to_owned(),
            },
        );
    }
    if !report.is_clean() {
        return Err(report.into_errors());
    }
    plan.nodes = nodes.parsed.into_iter().map(|(_, node)| node).collect();
    Ok(plan)
}

/// Parse a gate's output as a [`Verdict`]: an object with `approved` (a
/// boolean, required), `score` (a finite number in 0–1, default 0) and
/// `feedback` (any value, default null); other fields are ignored.
///
/// # Errors
///
/// A message naming what is wrong, for the gate's failure.
pub fn parse_verdict(output: &Value) -> Result<Verdict, String> {
    const SHAPE: &str = "{\"approved\": bool, \"score\": 0–1, \"feedback\": …}";
    let Value::Object(members) = output else {
        return Err(format!(
            "a gate must return an object {SHAPE}, not {}",
            kind_of(output)
        ));
    };
    let approved = match members.get("approved") {
        Some(Value::Bool(approved)) => *approved,
        Some(other) => {
            return Err(format!(
                "the gate's `approved` must be a boolean, not {}",
                kind_of(other)
            ));
        }
        None => {
            return Err(format!(
                "the gate's output has no `approved`: expected {SHAPE}"
            ));
        }
    };
    let score = match members.get("score") {
        None | Some(Value::Null) => 0.0,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(score) if score.is_finite() && (0.0..=1.0).contains(&score) => score,
            _ => {
                return Err(format!(
                    "the gate's `score` must be between 0 and 1, not {n}"
                ));
            }
        },
        Some(other) => {
            return Err(format!(
                "the gate's `score` must be a number between 0 and 1, not {}",
                kind_of(other)
            ));
        }
    };
    Ok(Verdict {
        approved,
        score,
        feedback: members.get("feedback").cloned().unwrap_or(Value::Null),
    })
}

impl NodeSpec {
    /// The nodes this one must wait for: `needs` ∪ the nodes its `input`
    /// and `for_each` templates reference ∪ the node it gates; sorted,
    /// without duplicates. Meant for validated nodes (malformed templates
    /// are skipped). Parses the node's templates on each call.
    pub fn dependencies(&self) -> Vec<String> {
        let mut dependencies = self.needs.clone();
        if let Ok(references) = template::references(&self.input) {
            dependencies.extend(references.into_iter().filter_map(|(_, r)| match r.root {
                Root::Node(id) => Some(id),
                _ => None,
            }));
        }
        if let Some(Ok(Some(TemplateRef {
            root: Root::Node(id),
            ..
        }))) = self.for_each.as_deref().map(template::whole)
        {
            dependencies.push(id);
        }
        if let Some(gate) = &self.gate {
            dependencies.push(gate.node.clone());
        }
        dependencies.sort();
        dependencies.dedup();
        dependencies
    }
}

impl Spec {
    /// Check a run's input against `inputs` and fill in defaults. `given`
    /// must be an object (null counts as `{}`); every key must be declared,
    /// every input without a default given. Returns the bound input object.
    ///
    /// # Errors
    ///
    /// [`SpecErrors`] (file "input"): not an object, unknown inputs,
    /// missing required inputs.
    pub fn bind_input(&self, given: &Value) -> Result<Value, SpecErrors> {
        let mut report = Report::new("input", None);
        let empty = Map::new();
        let given = match given {
            Value::Null => &empty,
            Value::Object(members) => members,
            other => {
                report.push(
                    "",
                    SpecErrorKind::InputNotObject {
                        found: kind_of(other).to_owned(),
                    },
                );
                return report.finish(Value::Null);
            }
        };
        let mut bound = Map::new();
        for (name, value) in given {
            if self.inputs.contains_key(name) {
                bound.insert(name.clone(), value.clone());
            } else {
                report.push(
                    pointer_to_field(name),
                    SpecErrorKind::UnknownInput {
                        name: name.clone(),
                        declared: self.inputs.keys().cloned().collect(),
                    },
                );
            }
        }
        for (name, input) in &self.inputs {
            if bound.contains_key(name) {
                continue;
            }
            match &input.default {
                Some(default) => {
                    bound.insert(name.clone(), default.clone());
                }
                None => report.push(
                    pointer_to_field(name),
                    SpecErrorKind::MissingInput { name: name.clone() },
                ),
            }
        }
        report.finish(Value::Object(bound))
    }

    /// The JSON Schema of the spec format (what `docs/dag.schema.json`
    /// holds), as pretty JSON with a trailing newline.
    pub fn json_schema() -> String {
        let schema = schemars::schema_for!(Spec);
        let mut text = serde_json::to_string_pretty(&schema)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        text.push('\n');
        text
    }
}

fn pointer_to_field(name: &str) -> String {
    let mut pointer = String::new();
    source::push_field(&mut pointer, name);
    pointer
}

/// `[A-Za-z0-9_-]+`: the characters templates accept in names.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_id(id: &str) -> bool {
    is_name(id) && id.len() <= MAX_ID_LEN
}

/// The nodes of a spec or plan after shape checks.
struct Nodes<'v> {
    /// Nodes that deserialized, with their pointers (`/nodes/i`).
    parsed: Vec<(String, NodeSpec)>,
    /// Every id in the list, including nodes whose shape is wrong (so one
    /// bad node does not make every reference to it an error too).
    known: BTreeSet<&'v str>,
    /// How many entries the raw list has.
    raw_count: usize,
}

/// Deserialize a document whose `nodes` is a list of [`NodeSpec`]: the rest
/// of the document as `T` (with `nodes` empty) and each node on its own, so
/// that a shape error in one node does not hide the others'.
fn shape<'v, T: serde::de::DeserializeOwned>(
    value: &'v Value,
    report: &mut Report<'_>,
) -> (Option<T>, Nodes<'v>) {
    let mut nodes = Nodes {
        parsed: Vec::new(),
        known: BTreeSet::new(),
        raw_count: 0,
    };
    let shell = match value {
        Value::Object(members) => {
            let mut shell: Map<String, Value> = members
                .iter()
                .filter(|(name, _)| name.as_str() != "nodes")
                .map(|(name, member)| (name.clone(), member.clone()))
                .collect();
            match members.get("nodes") {
                Some(Value::Array(raw)) => {
                    shell.insert("nodes".to_owned(), Value::Array(Vec::new()));
                    nodes.raw_count = raw.len();
                    for (index, node) in raw.iter().enumerate() {
                        if let Some(Value::String(id)) = node.get("id") {
                            nodes.known.insert(id.as_str());
                        }
                        let pointer = format!("/nodes/{index}");
                        if let Some(node) = deserialize::<NodeSpec>(
                            node,
                            &pointer,
                            &format!("nodes[{index}]"),
                            report,
                        ) {
                            nodes.parsed.push((pointer, node));
                        }
                    }
                }
                Some(other) => {
                    shell.insert("nodes".to_owned(), other.clone());
                }
                None => {}
            }
            Value::Object(shell)
        }
        other => other.clone(),
    };
    (deserialize::<T>(&shell, "", "", report), nodes)
}

/// Deserialize `value` (found at `pointer`, path `label`), reporting a shape
/// error at the path serde stopped at.
fn deserialize<T: serde::de::DeserializeOwned>(
    value: &Value,
    pointer: &str,
    label: &str,
    report: &mut Report<'_>,
) -> Option<T> {
    // Serde's derived structs also accept arrays (fields by position).
    if !value.is_object() {
        report.push_member(
            pointer,
            SpecErrorKind::Shape {
                path: label.to_owned(),
                message: format!("expected an object, found {}", kind_of(value)),
            },
        );
        return None;
    }
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(parsed) => Some(parsed),
        Err(error) => {
            let mut pointer = pointer.to_owned();
            let mut path = label.to_owned();
            for segment in error.path().iter() {
                match segment {
                    serde_path_to_error::Segment::Seq { index } => {
                        source::push_index(&mut pointer, *index);
                        path.push_str(&format!("[{index}]"));
                    }
                    serde_path_to_error::Segment::Map { key }
                    | serde_path_to_error::Segment::Enum { variant: key } => {
                        source::push_field(&mut pointer, key);
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(key);
                    }
                    serde_path_to_error::Segment::Unknown => break,
                }
            }
            report.push_member(
                pointer,
                SpecErrorKind::Shape {
                    path,
                    message: error.inner().to_string(),
                },
            );
            None
        }
    }
}

/// What node templates may refer to besides nodes.
struct Declared<'a> {
    capsules: &'a BTreeMap<String, String>,
    inputs: &'a BTreeMap<String, InputSpec>,
}

/// Who holds a template: a node (`id`), or the run's output (`None`).
struct Owner<'a> {
    id: Option<&'a str>,
    for_each: bool,
}

impl Owner<'_> {
    fn describe(&self) -> String {
        match self.id {
            Some(id) => format!("node `{id}`"),
            None => "`output`".to_owned(),
        }
    }
}

/// The checks every node list gets, in a spec or a plan: ids, capsules,
/// `needs`, templates, `for_each`, gates, numbers, and cycles.
fn check_nodes(nodes: &Nodes<'_>, scope: &Declared<'_>, report: &mut Report<'_>) {
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, (pointer, node)) in nodes.parsed.iter().enumerate() {
        let id = node.id.as_str();
        if !is_id(id) {
            report.push(
                format!("{pointer}/id"),
                SpecErrorKind::BadId { id: id.to_owned() },
            );
        } else if first.contains_key(id) {
            report.push(
                format!("{pointer}/id"),
                SpecErrorKind::DuplicateId { id: id.to_owned() },
            );
        } else {
            first.insert(id, index);
        }
        check_node(pointer, node, &nodes.known, scope, report);
    }
    check_cycles(nodes, &first, report);
}

fn check_node(
    pointer: &str,
    node: &NodeSpec,
    known: &BTreeSet<&str>,
    scope: &Declared<'_>,
    report: &mut Report<'_>,
) {
    let id = node.id.as_str();
    if !scope.capsules.contains_key(&node.capsule) {
        report.push(
            format!("{pointer}/capsule"),
            SpecErrorKind::UnknownCapsule {
                alias: node.capsule.clone(),
                node: id.to_owned(),
            },
        );
    }
    for (index, need) in node.needs.iter().enumerate() {
        let at = format!("{pointer}/needs/{index}");
        if need == id {
            report.push(
                at,
                SpecErrorKind::SelfDependency {
                    node: id.to_owned(),
                },
            );
        } else if !known.contains(need.as_str()) {
            report.push(
                at,
                SpecErrorKind::UnknownNode {
                    id: need.clone(),
                    referenced_by: format!("node `{id}`"),
                },
            );
        }
    }
    for (name, allow) in &node.capabilities.0 {
        if let Err(error) = soma_host_api::check_allow(name, allow) {
            let mut at = format!("{pointer}/capabilities");
            source::push_field(&mut at, name);
            report.push_member(
                at,
                SpecErrorKind::BadCapability {
                    node: id.to_owned(),
                    error,
                },
            );
        }
    }
    let owner = Owner {
        id: Some(id),
        for_each: node.for_each.is_some(),
    };
    check_templates(
        &node.input,
        &format!("{pointer}/input"),
        &owner,
        known,
        scope,
        report,
    );
    if let Some(for_each) = &node.for_each {
        let at = format!("{pointer}/for_each");
        match template::whole(for_each) {
            Err(error) => report.push(at, SpecErrorKind::BadTemplate { error }),
            Ok(None) => report.push(
                at,
                SpecErrorKind::BadForEach {
                    reason: "it must be one whole `{{ … }}` reference to an array, e.g. \
                             \"{{ nodes.tests.output.cases }}\""
                        .to_owned(),
                },
            ),
            Ok(Some(reference)) => match reference.root {
                Root::Item | Root::Index => report.push(
                    at,
                    SpecErrorKind::BadForEach {
                        reason: format!(
                            "it cannot use `{reference}`: `for_each` is what defines \
                             `item` and `index`; refer to a node's output or an input"
                        ),
                    },
                ),
                _ => {
                    let outside = Owner {
                        id: Some(id),
                        for_each: false,
                    };
                    check_reference(&reference, &at, &outside, known, scope, report);
                }
            },
        }
    }
    if let Some(gate) = &node.gate {
        if gate.node == id {
            report.push(
                format!("{pointer}/gate/node"),
                SpecErrorKind::BadGate {
                    reason: "a node cannot gate itself".to_owned(),
                },
            );
        } else if !known.contains(gate.node.as_str()) {
            report.push(
                format!("{pointer}/gate/node"),
                SpecErrorKind::BadGate {
                    reason: format!("the gated node `{}` does not exist", gate.node),
                },
            );
        }
        if !(1..=MAX_GATE_ROUNDS).contains(&gate.max_rounds) {
            report.push(
                format!("{pointer}/gate/max_rounds"),
                SpecErrorKind::BadGate {
                    reason: format!(
                        "`max_rounds` must be 1–{MAX_GATE_ROUNDS} (found {})",
                        gate.max_rounds
                    ),
                },
            );
        }
    }
    if let Some(timeout) = node.approval.as_ref().and_then(|a| a.timeout.as_deref())
        && let Err(reason) = parse_approval_timeout(timeout)
    {
        report.push(
            format!("{pointer}/approval/timeout"),
            SpecErrorKind::BadApproval { reason },
        );
    }
    check_limits(&node.limits, &format!("{pointer}/limits"), report);
    if node.timeout_ms == Some(0) {
        report.push(
            format!("{pointer}/timeout_ms"),
            SpecErrorKind::OutOfRange {
                field: "timeout_ms".to_owned(),
                message: "must be at least 1".to_owned(),
            },
        );
    }
    if let Some(retries) = &node.retries {
        check_retries(retries, &format!("{pointer}/retries"), report);
    }
    if let Some(budget) = &node.budget {
        check_budget(budget, &format!("{pointer}/budget"), report);
    }
}

/// Check every template in `value` (at `pointer`) held by `owner`.
fn check_templates(
    value: &Value,
    pointer: &str,
    owner: &Owner<'_>,
    known: &BTreeSet<&str>,
    scope: &Declared<'_>,
    report: &mut Report<'_>,
) {
    // String by string, so one malformed template does not hide the rest.
    for (at, text) in template::templated_strings(value) {
        let at = format!("{pointer}{at}");
        match template::parse(text) {
            Err(error) => report.push(at, SpecErrorKind::BadTemplate { error }),
            Ok(parts) => {
                for part in parts {
                    if let template::Part::Expr(reference) = part {
                        check_reference(&reference, &at, owner, known, scope, report);
                    }
                }
            }
        }
    }
}

fn check_reference(
    reference: &TemplateRef,
    pointer: &str,
    owner: &Owner<'_>,
    known: &BTreeSet<&str>,
    scope: &Declared<'_>,
    report: &mut Report<'_>,
) {
    match &reference.root {
        Root::Input => {
            if let Some(Segment::Field(name)) = reference.path.first()
                && !scope.inputs.contains_key(name)
            {
                report.push(
                    pointer,
                    SpecErrorKind::UndeclaredInput { name: name.clone() },
                );
            }
        }
        Root::Node(id) => {
            if owner.id == Some(id.as_str()) {
                report.push(pointer, SpecErrorKind::SelfDependency { node: id.clone() });
            } else if !known.contains(id.as_str()) {
                report.push(
                    pointer,
                    SpecErrorKind::UnknownNode {
                        id: id.clone(),
                        referenced_by: owner.describe(),
                    },
                );
            }
        }
        Root::Item | Root::Index => {
            if !owner.for_each {
                report.push(
                    pointer,
                    SpecErrorKind::ItemOutsideForEach {
                        reference: reference.to_string(),
                    },
                );
            }
        }
    }
}

/// Report dependency cycles among nodes with valid, unique ids (`first`:
/// id → index in `nodes.parsed`). Iterative DFS: no recursion however long
/// the chains. Each cycle is reported once, at the `id` of its node that
/// comes first in the list.
fn check_cycles(nodes: &Nodes<'_>, first: &BTreeMap<&str, usize>, report: &mut Report<'_>) {
    let count = nodes.parsed.len();
    let edges: Vec<Vec<usize>> = nodes
        .parsed
        .iter()
        .enumerate()
        .map(|(index, (_, node))| {
            if first.get(node.id.as_str()) != Some(&index) {
                return Vec::new();
            }
            node.dependencies()
                .iter()
                .filter_map(|dependency| first.get(dependency.as_str()).copied())
                .filter(|&dependency| dependency != index)
                .collect()
        })
        .collect();
    const NEW: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![NEW; count];
    // (node, next edge to follow)
    let mut path: Vec<(usize, usize)> = Vec::new();
    for start in 0..count {
        if state[start] != NEW {
            continue;
        }
        state[start] = ON_PATH;
        path.push((start, 0));
        while let Some((node, next)) = path.last_mut() {
            let node = *node;
            let Some(&dependency) = edges[node].get(*next) else {
                state[node] = DONE;
                path.pop();
                continue;
            };
            *next += 1;
            match state[dependency] {
                NEW => {
                    state[dependency] = ON_PATH;
                    path.push((dependency, 0));
                }
                ON_PATH => {
                    let from = path
                        .iter()
                        .position(|&(n, _)| n == dependency)
                        .unwrap_or_default();
                    let mut cycle: Vec<usize> = path[from..].iter().map(|&(n, _)| n).collect();
                    // Start at the node that comes first in the list.
                    let lowest = cycle
                        .iter()
                        .enumerate()
                        .min_by_key(|&(_, n)| *n)
                        .map_or(0, |(at, _)| at);
                    cycle.rotate_left(lowest);
                    let names: Vec<String> = cycle
                        .iter()
                        .chain(cycle.first())
                        .map(|&n| nodes.parsed[n].1.id.clone())
                        .collect();
                    report.push(
                        format!("{}/id", nodes.parsed[cycle[0]].0),
                        SpecErrorKind::Cycle { path: names },
                    );
                }
                _ => {}
            }
        }
    }
}

fn out_of_range(report: &mut Report<'_>, pointer: String, field: &str, message: String) {
    report.push(
        pointer,
        SpecErrorKind::OutOfRange {
            field: field.to_owned(),
            message,
        },
    );
}

fn check_limits(limits: &NodeLimits, pointer: &str, report: &mut Report<'_>) {
    for (field, value) in [
        ("fuel", limits.fuel),
        ("timeout_ms", limits.timeout_ms),
        ("memory_mb", limits.memory_mb),
    ] {
        if value == Some(0) {
            out_of_range(
                report,
                format!("{pointer}/{field}"),
                &format!("limits.{field}"),
                "must be at least 1".to_owned(),
            );
        }
    }
}

fn check_retries(retries: &Retries, pointer: &str, report: &mut Report<'_>) {
    if retries.max > MAX_RETRIES {
        out_of_range(
            report,
            format!("{pointer}/max"),
            "retries.max",
            format!("must be at most {MAX_RETRIES} (found {})", retries.max),
        );
    }
    if retries.backoff_ms > retries.max_backoff_ms {
        out_of_range(
            report,
            format!("{pointer}/backoff_ms"),
            "retries.backoff_ms",
            format!(
                "({}) must not exceed `retries.max_backoff_ms` ({})",
                retries.backoff_ms, retries.max_backoff_ms
            ),
        );
    }
}

fn check_budget(budget: &BudgetSpec, pointer: &str, report: &mut Report<'_>) {
    if budget.tokens == Some(0) {
        out_of_range(
            report,
            format!("{pointer}/tokens"),
            "budget.tokens",
            "must be at least 1".to_owned(),
        );
    }
    if let Some(usd) = budget.usd
        && !(usd.is_finite() && usd > 0.0)
    {
        out_of_range(
            report,
            format!("{pointer}/usd"),
            "budget.usd",
            format!("must be a positive amount (found {usd})"),
        );
    }
}

fn check_policy(policy: &Policy, report: &mut Report<'_>) {
    let at_least_one = [
        ("concurrency", policy.concurrency.unwrap_or(1)),
        ("max_expansion_nodes", policy.max_expansion_nodes),
        ("max_fan_out", policy.max_fan_out),
        ("max_nodes", policy.max_nodes),
    ];
    for (field, value) in at_least_one {
        if value == 0 {
            out_of_range(
                report,
                format!("/policy/{field}"),
                &format!("policy.{field}"),
                "must be at least 1".to_owned(),
            );
        }
    }
}

#[cfg(test)]
mod tests;
