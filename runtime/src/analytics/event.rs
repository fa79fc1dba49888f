//! The analytics event, schema version 1: one JSON object per fact Soma
//! records (a charge, a call, a failure, a run's or node's transition, a
//! gate verdict, a marketplace install or fee, a capsule's own event).
//!
//! Every event carries a unique `id` derived from the key of the fact it
//! describes — the ledger's idempotency key `run/node/attempt/seq/kind` or
//! the DAG journal's `run/node/attempt` — prefixed with its type, so a
//! consumer deduplicates by `id` alone; `v` (the schema version), `tenant`
//! and `time_ms`. The rest depends on `type` (see [`Body`]).
//!
//! The JSON Schema published in `docs/analytics/events.schema.json` is
//! generated from these types ([`json_schema`]); a test fails when the
//! committed file differs.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The schema version every event of this module carries in `v`.
pub const SCHEMA_VERSION: u32 = 1;

/// Most bytes of a capsule's own event ([`Body::CapsuleEvent`]) `payload`
/// once serialized; a larger payload is replaced by a marker (`truncated`).
pub const MAX_CAPSULE_PAYLOAD_BYTES: usize = 4096;

/// Most bytes of a capsule event's namespace or name.
pub const MAX_CAPSULE_NAME_BYTES: usize = 128;

/// One analytics event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Unique per fact: `<type>:<key of the fact>` (e.g.
    /// `call:run-1/fetch/0/0`); a consumer that has seen it drops it.
    pub id: String,
    /// The schema version ([`SCHEMA_VERSION`]).
    pub v: u32,
    /// The tenant the fact belongs to (who pays, whose run).
    pub tenant: String,
    /// When the fact happened, unix milliseconds (UTC).
    pub time_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub body: Body,
}

/// Where a charge or call happened: the ledger's coordinates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Site {
    /// The run (for a one-off call, the call's own id).
    pub run: String,
    /// The node of the run's graph (`-` outside a DAG).
    pub node: String,
    /// The retry attempt of the node.
    pub attempt: u32,
    /// The capsule's digest, `sha256:<hex>`.
    pub capsule_digest: String,
}

/// What happened, by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Body {
    /// A DAG run started.
    RunStarted {
        /// The run.
        run: String,
        /// The DAG's name, if it has one.
        dag: Option<String>,
    },
    /// A DAG run reached a final state.
    RunFinished {
        /// The run.
        run: String,
        /// `succeeded`, `failed` or `cancelled`.
        outcome: String,
    },
    /// A node's attempt started.
    NodeStarted {
        /// The run.
        run: String,
        /// The node.
        node: String,
        /// The attempt.
        attempt: u32,
    },
    /// A node's attempt succeeded.
    NodeSucceeded {
        /// The run.
        run: String,
        /// The node.
        node: String,
        /// The attempt.
        attempt: u32,
    },
    /// A node's attempt failed.
    NodeFailed {
        /// The run.
        run: String,
        /// The node.
        node: String,
        /// The attempt.
        attempt: u32,
        /// The failure class (`out-of-fuel`, `trap`, …).
        failure_class: String,
    },
    /// One metered capsule call (its wall-time charge).
    Call {
        /// Where.
        #[serde(flatten)]
        site: Site,
        /// The capsule's name, when the caller knew it.
        capsule_name: Option<String>,
        /// Fuel burned, when fuel is metered.
        fuel: Option<u64>,
        /// Wall time, µs.
        wall_us: u64,
        /// Peak linear memory, bytes, when recorded.
        peak_memory_bytes: Option<u64>,
        /// What the call's fuel, wall time, HTTP and fees cost, micro-units.
        cost_micros: u64,
    },
    /// A metered call failed (recorded once per run, node and attempt).
    CallFailed {
        /// Where.
        #[serde(flatten)]
        site: Site,
        /// The failure class, when the caller knew it.
        failure_class: String,
    },
    /// LLM tokens charged.
    LlmTokens {
        /// Where.
        #[serde(flatten)]
        site: Site,
        /// `input` (prompt) or `output` (completion).
        direction: String,
        /// Tokens.
        tokens: u64,
        /// The provider.
        provider: Option<String>,
        /// The model.
        model: Option<String>,
        /// What they cost, micro-units.
        cost_micros: u64,
        /// Whether the count is an estimate.
        estimated: bool,
    },
    /// A gate's verdict on a node's output.
    GateVerdict {
        /// The run.
        run: String,
        /// The gated node.
        node: String,
        /// The score, when the gate scores.
        score: Option<f64>,
        /// Whether the output passed.
        approved: bool,
    },
    /// A call (or an LLM request inside one) was refused because a budget
    /// could not cover its worst case. Nothing ran; nothing was charged.
    BudgetExceeded {
        /// The budget that refused, as its key: `tenant:<id>`,
        /// `capsule:<digest>`, `run:<id>` or `node:<run>/<node>`.
        scope: String,
        /// The refused call's run.
        run: Option<String>,
        /// The refused call's node.
        node: Option<String>,
        /// The refused call's attempt.
        attempt: Option<u32>,
        /// What ran out: `micros` (money) or `tokens`.
        unit: String,
        /// The budget's limit, in `unit`.
        limit: u64,
        /// Spent under it so far.
        spent: u64,
        /// Held by calls in flight.
        held: u64,
        /// What the refused call asked to hold.
        needed: u64,
    },
    /// A capsule was installed from the marketplace.
    MarketInstall {
        /// The listing.
        listing: String,
        /// The version installed.
        version: String,
        /// The installed digest.
        capsule_digest: String,
    },
    /// The marketplace's fee for one call.
    MarketFee {
        /// Where.
        #[serde(flatten)]
        site: Site,
        /// Fee units.
        units: u64,
        /// The fee, micro-units.
        cost_micros: u64,
    },
    /// An event the capsule emitted itself (`events.emit`), namespaced by
    /// the capsule and capped in size.
    CapsuleEvent {
        /// The capsule's digest.
        capsule_digest: String,
        /// The capsule's namespace (at most [`MAX_CAPSULE_NAME_BYTES`]).
        namespace: String,
        /// The event's name (at most [`MAX_CAPSULE_NAME_BYTES`]).
        name: String,
        /// The payload (at most [`MAX_CAPSULE_PAYLOAD_BYTES`] serialized;
        /// larger ones become `{"truncated": <bytes>}`).
        payload: serde_json::Value,
    },
}

impl Body {
    /// The `type` tag, e.g. `call`.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::RunStarted { .. } => "run-started",
            Body::RunFinished { .. } => "run-finished",
            Body::NodeStarted { .. } => "node-started",
            Body::NodeSucceeded { .. } => "node-succeeded",
            Body::NodeFailed { .. } => "node-failed",
            Body::Call { .. } => "call",
            Body::CallFailed { .. } => "call-failed",
            Body::LlmTokens { .. } => "llm-tokens",
            Body::GateVerdict { .. } => "gate-verdict",
            Body::BudgetExceeded { .. } => "budget-exceeded",
            Body::MarketInstall { .. } => "market-install",
            Body::MarketFee { .. } => "market-fee",
            Body::CapsuleEvent { .. } => "capsule-event",
        }
    }
}

impl Event {
    /// An event of schema version [`SCHEMA_VERSION`] whose id is
    /// `<type>:<key>`. Cost: one string allocation.
    pub fn new(key: &str, tenant: &str, time_ms: u64, body: Body) -> Self {
        Self {
            id: format!("{}:{key}", body.kind()),
            v: SCHEMA_VERSION,
            tenant: tenant.to_owned(),
            time_ms,
            body,
        }
    }

    /// A capsule's own event, its names cut to [`MAX_CAPSULE_NAME_BYTES`]
    /// and a payload over [`MAX_CAPSULE_PAYLOAD_BYTES`] replaced by
    /// `{"truncated": <bytes>}`. Cost: one serialization of the payload.
    pub fn capsule_event(
        key: &str,
        tenant: &str,
        time_ms: u64,
        capsule_digest: &str,
        namespace: &str,
        name: &str,
        payload: serde_json::Value,
    ) -> Self {
        let size = serde_json::to_vec(&payload).map_or(usize::MAX, |b| b.len());
        let payload = if size > MAX_CAPSULE_PAYLOAD_BYTES {
            serde_json::json!({ "truncated": size })
        } else {
            payload
        };
        Self::new(
            key,
            tenant,
            time_ms,
            Body::CapsuleEvent {
                capsule_digest: capsule_digest.to_owned(),
                namespace: cut(namespace, MAX_CAPSULE_NAME_BYTES).to_owned(),
                name: cut(name, MAX_CAPSULE_NAME_BYTES).to_owned(),
                payload,
            },
        )
    }
}

/// What a call's `call` event says that its ledger entries do not: the
/// capsule's name, its peak memory, and the events it emitted itself
/// (`events.emit`). Carried with the call's charge ([`crate::ledger::Charge`])
/// and written to the outbox only when the charge is (so a replayed
/// attempt adds no second copy).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallFacts {
    /// The capsule's name as the caller referenced it.
    pub capsule_name: Option<String>,
    /// Peak linear memory, bytes.
    pub peak_memory_bytes: Option<u64>,
    /// The capsule's own events, in the order emitted (already capped per
    /// call by `[events]`; each becomes a `capsule-event`).
    pub emitted: Vec<(String, serde_json::Value)>,
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub(crate) fn cut(s: &str, max: usize) -> &str {
    &s[..s.floor_char_boundary(max)]
}

/// The JSON Schema of [`Event`], as published in
/// `docs/analytics/events.schema.json` (pretty-printed, trailing newline).
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Event);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
