//! The Temporal engine for DAG runs (issue 17): the same spec, run as one
//! Temporal workflow per run, its capsule calls as activities.
//!
//! The workflow ([`workflow::DagWorkflow`]) keeps the run's
//! [`RunState`](crate::dag::state::RunState) and drives it with the very
//! fold the embedded scheduler uses: `schedule` proposes starts, each start
//! becomes a `call` activity, `complete_with` turns the activity's result
//! into the same history events, `apply` applies them. Retries are driven
//! by the fold too (its `retry_at_ms` becomes a workflow timer), so the
//! attempt numbers, backoffs and retry limits are the embedded engine's,
//! and each attempt is its own ledger idempotency key. Temporal's own
//! activity retry policy only re-runs an attempt whose worker died or
//! could not make the call (same attempt, same key: never charged twice).
//!
//! The activities ([`activity::CallActivities`]) run in `soma worker`: they
//! load the pinned capsule (by reference, checked against its digest), make
//! the call with [`Engine::call`](crate::Engine::call) under the node's
//! limits and grants, charge the worker's ledger, heartbeat while the call
//! runs and stop the call when Temporal cancels or times the activity out.
//!
//! [`client`] starts runs, waits for them, queries and cancels them.
//!
//! Temporal's limits and what Soma does about each (see `docs/scale-out.md`):
//! at most [`MAX_PENDING_ACTIVITIES`] calls are in flight per run (a larger
//! fan-out is started in waves); a run whose Temporal history reaches
//! [`CONTINUE_AS_NEW_AFTER`] events (or that Temporal suggests continue)
//! stops starting calls, lets those in flight finish and continues as a
//! new execution of the same workflow, carrying its events ([`Carried`]);
//! [`HISTORY_EVENT_LIMIT`] is the backstop if it cannot. With `[store]
//! backend = "postgres"`, payloads above `[orchestrator]
//! payload_offload_bytes` go by reference through the shared store
//! ([`payloads`]); without it, a call output, carried history or run
//! result above [`PAYLOAD_LIMIT_BYTES`] fails with a clear error.

use std::{collections::BTreeMap, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::{
    budget,
    dag::{
        history::{CapsuleRecord, Event, NodeFailure},
        spec::Ceilings,
    },
    ledger,
};

pub mod activity;
pub mod client;
pub mod payloads;
pub mod workflow;

/// The task queue workers poll and runs are started on, unless told.
pub const DEFAULT_TASK_QUEUE: &str = "soma";

/// The Temporal namespace, unless told.
pub const DEFAULT_NAMESPACE: &str = "default";

pub use crate::config::orchestrator::{CONTINUE_AS_NEW_AFTER, MAX_PENDING_ACTIVITIES};

/// The backstop: a run whose Temporal history holds this many events ends
/// failed (Temporal refuses 51,200). Continuing as new keeps runs far
/// below it: after [`CONTINUE_AS_NEW_AFTER`] only the calls in flight
/// (at most [`MAX_PENDING_ACTIVITIES`], a few events each) are added.
pub const HISTORY_EVENT_LIMIT: u32 = 40_000;

/// Largest call output, activity input or run result sent through
/// Temporal (Temporal refuses payloads above 2 MB); above it the node or
/// run fails with a message saying so.
pub const PAYLOAD_LIMIT_BYTES: usize = 2_000_000;

/// Why talking to Temporal failed.
#[derive(Debug, thiserror::Error)]
pub enum TemporalError {
    /// The address is not `HOST:PORT` (or a URL).
    #[error("`{address}` is not a Temporal address: use HOST:PORT (e.g. 127.0.0.1:7233)")]
    Address {
        /// What was given.
        address: String,
        /// Why it does not parse.
        #[source]
        source: url::ParseError,
    },
    /// The frontend could not be reached.
    #[error(
        "could not connect to Temporal at {address}: is `temporal server start-dev` (or your \
         cluster) running there?"
    )]
    Connect {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The client's or worker's async runtime could not be started.
    #[error("could not start the Temporal client's async runtime")]
    Runtime(#[source] std::io::Error),
    /// The worker could not be set up or stopped with an error.
    #[error("the Temporal worker failed")]
    Worker(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Starting the run's workflow failed.
    #[error("could not start run {run} on Temporal")]
    Start {
        /// The run.
        run: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The run's workflow ended without a result (failed, terminated,
    /// timed out) or its result could not be read.
    #[error("run {run} ended on Temporal without a report")]
    Result {
        /// The run.
        run: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The shared store for payloads by reference could not be opened.
    #[error(
        "the shared store for large Temporal payloads ([store], [orchestrator] payload_offload_bytes)"
    )]
    Store(#[source] crate::store::postgres::PgError),
    /// Listing a tenant's (or, `*`, every tenant's) runs failed.
    #[error("could not list tenant {tenant}'s runs on Temporal")]
    List {
        /// The tenant.
        tenant: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Asking the run's workflow (query, cancel) failed.
    #[error("could not reach run {run}'s workflow on Temporal (is it a run of this namespace?)")]
    Workflow {
        /// The run.
        run: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The workflow's history does not replay (a bug, or another version).
    #[error("run {run}'s history from Temporal does not replay")]
    Replay {
        /// The run.
        run: String,
        /// Why.
        #[source]
        source: crate::dag::state::StateError,
    },
}

/// Where a Temporal frontend is, and the namespace and task queue to use.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `HOST:PORT` (or an `http://` URL).
    pub address: String,
    /// The namespace.
    pub namespace: String,
    /// The task queue.
    pub task_queue: String,
    /// Large payloads go by reference through the shared store (see
    /// [`payloads`]); `None`: Temporal's own limits stand.
    pub offload: Option<payloads::Offload>,
}

impl Endpoint {
    /// An endpoint with the default namespace and task queue.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            task_queue: DEFAULT_TASK_QUEUE.to_owned(),
            offload: None,
        }
    }

    /// With payloads offloaded as `config` says: through the shared
    /// PostgreSQL store when `[store] backend = "postgres"` and
    /// `[orchestrator] payload_offload_bytes` is not 0. `opened` is that
    /// store when the caller has it already (its engine's,
    /// [`crate::meter::BudgetLedger::shared_store`]); else it is connected
    /// and migrated here (blocking: call it off any async task).
    ///
    /// # Errors
    ///
    /// [`TemporalError::Store`]: the store could not be opened.
    pub fn offloading(
        mut self,
        config: &crate::Config,
        opened: Option<&crate::store::postgres::PgStore>,
    ) -> Result<Self, TemporalError> {
        let o = &config.orchestrator;
        if config.store.backend != crate::store::Backend::Postgres || o.payload_offload_bytes == 0 {
            return Ok(self);
        }
        let store = match opened {
            Some(store) => Ok(store.clone()),
            None => std::thread::scope(|s| {
                s.spawn(|| crate::store::postgres::PgStore::open(&config.store))
                    .join()
                    .unwrap_or_else(|_| {
                        Err(crate::store::postgres::PgError::Config(
                            "opening the PostgreSQL store panicked".into(),
                        ))
                    })
            }),
        }
        .map_err(TemporalError::Store)?;
        self.offload = Some(payloads::Offload::new(
            store,
            o.payload_offload_bytes,
            o.payload_retention_hours,
        ));
        Ok(self)
    }

    /// The frontend's URL (`http://HOST:PORT` for a bare address).
    pub fn url(&self) -> Result<url::Url, TemporalError> {
        let text = if self.address.contains("://") {
            self.address.clone()
        } else {
            format!("http://{}", self.address)
        };
        url::Url::from_str(&text).map_err(|source| TemporalError::Address {
            address: self.address.clone(),
            source,
        })
    }

    /// Connect a client. Cost: one gRPC connection (and a system-info
    /// round trip).
    pub async fn connect(&self) -> Result<temporalio_client::Client, TemporalError> {
        let options = temporalio_client::ConnectionOptions::new(self.url()?)
            .identity(format!("soma@{}", std::process::id()))
            .build();
        let connect_error =
            |source: Box<dyn std::error::Error + Send + Sync>| TemporalError::Connect {
                address: self.address.clone(),
                source,
            };
        // Not `Connection::connect(options).await`: see that crate (clippy.toml).
        let connection = soma_temporal_connect::connect(options)
            .await
            .map_err(|e| connect_error(Box::new(e)))?;
        let client_options = match &self.offload {
            Some(o) => temporalio_client::ClientOptions::new(self.namespace.clone())
                .data_converter(o.data_converter())
                .build(),
            None => temporalio_client::ClientOptions::new(self.namespace.clone()).build(),
        };
        temporalio_client::Client::new(connection, client_options)
            .map_err(|e| connect_error(Box::new(e)))
    }
}

/// The workflow's input: everything a run needs, recorded once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInput {
    /// The run id (also the workflow id).
    pub run: String,
    /// The run's `created` event: spec, bound input, pinned capsules.
    pub created: Event,
    /// `dag.max_rendered_input_bytes` (capped by the call input limit).
    pub render_limit: usize,
    /// The operator's `[dag]` ceilings.
    pub ceilings: Ceilings,
    /// Calls at once (`None`: the spec's `policy.concurrency`, else 4).
    pub concurrency: Option<usize>,
    /// A call activity's heartbeat timeout, ms (`[orchestrator]
    /// heartbeat_timeout_ms`; absent in older runs: 10 s).
    #[serde(default)]
    pub heartbeat_timeout_ms: Option<u64>,
    /// Continue as a new execution once the history holds this many
    /// events (`[orchestrator] continue_as_new_after_events`; absent in
    /// older runs: [`CONTINUE_AS_NEW_AFTER`]).
    #[serde(default)]
    pub continue_after_events: Option<u32>,
    /// What the run's earlier executions carried over (`None` in its
    /// first).
    #[serde(default)]
    pub carried: Option<Carried>,
    /// The capsules as the run's requester named them (the daemon's
    /// catalog names, which it pins to file paths or registry references
    /// for the workers), for the run's listing row (absent: the pinned
    /// references).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capsule_names: Option<Vec<String>>,
    /// Whoever started the run offloads large payloads (and so must every
    /// worker, see [`payloads`]): the run's report is not held to
    /// [`PAYLOAD_LIMIT_BYTES`].
    #[serde(default)]
    pub offload: bool,
    /// A turn that starts at least this many calls starts them as child
    /// workflows ([`workflow::CallBatchWorkflow`]) of this many calls each
    /// (`[orchestrator] child_workflow_calls`); only with `offload` (a
    /// child's results travel in one payload). 0 or absent: never.
    #[serde(default)]
    pub child_batch: Option<usize>,
}

/// A child workflow's share of a run's calls: they run at once, each as a
/// `call` activity, and come back together.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallBatch {
    /// The calls: (node index, attempt, request).
    pub calls: Vec<(usize, u32, CallRequest)>,
    /// A call activity's heartbeat timeout, ms.
    pub heartbeat_timeout_ms: u64,
}

/// What a [`CallBatch`] hands back: each call's result, in its order.
pub type BatchResult = Vec<(usize, u32, CallResult)>;

/// What a run's execution hands to the next when it continues as new:
/// everything the fold and the report need, nothing in flight (it waits
/// for its calls to finish first).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Carried {
    /// The run's events after `created`, in order.
    pub history: Vec<Event>,
    /// The ledger entries its calls reported.
    pub entries: Vec<ledger::Entry>,
    /// Verdicts signalled and not yet applied.
    pub inbox: Vec<ApprovalSignal>,
    /// Executions before this one.
    pub executions: u32,
}

impl RunInput {
    /// The input of run `run` under `config`'s `[dag]` ceilings and
    /// rendering limit (the same whoever starts the workflow: the CLI or
    /// the daemon).
    pub fn new(
        run: String,
        created: Event,
        config: &crate::Config,
        concurrency: Option<usize>,
    ) -> Self {
        Self {
            run,
            created,
            render_limit: config
                .dag
                .max_rendered_input_bytes
                .min(config.limits.max_input_bytes),
            ceilings: config.dag,
            concurrency,
            heartbeat_timeout_ms: Some(config.orchestrator.heartbeat_timeout_ms),
            continue_after_events: Some(config.orchestrator.continue_as_new_after_events),
            carried: None,
            capsule_names: None,
            offload: false,
            child_batch: Some(config.orchestrator.child_workflow_calls),
        }
    }

    /// The run's listing row as of `state` (the memo under
    /// [`SUMMARY_MEMO`]), with the capsules as the requester named them.
    pub fn summary(&self, state: &crate::dag::state::RunState) -> crate::dag::journal::RunSummary {
        let mut row = crate::dag::scheduler::summary(state);
        if let Some(names) = &self.capsule_names {
            row.capsules.clone_from(names);
        }
        row
    }
}

/// One capsule call: the `call` activity's input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallRequest {
    /// The run.
    pub run: String,
    /// Who pays.
    pub tenant: String,
    /// When the run was created (unix ms): the marketplace price in force.
    pub run_started_ms: u64,
    /// The node id (the ledger's node key).
    pub node: String,
    /// The attempt (the ledger's attempt key).
    pub attempt: u32,
    /// The capsule alias.
    pub alias: String,
    /// The pinned capsule: reference and digest.
    pub capsule: CapsuleRecord,
    /// The rendered input.
    pub input: String,
    /// What the node's spec asks of the call's limits
    /// ([`node_limits`](crate::dag::scheduler::node_limits)).
    pub limits: crate::dag::spec::NodeLimits,
    /// The node's `capabilities:` (and its planners'): narrows the grants.
    pub restriction: soma_host_api::Restriction,
}

/// What one call did: the `call` activity's output. A capsule's failure
/// is data here (the fold decides whether it is retried); only a failure
/// to make the call at all is an activity error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallResult {
    /// The output, or the classified failure.
    pub result: Result<String, NodeFailure>,
    /// Fuel consumed.
    pub fuel: Option<u64>,
    /// Wall time, µs.
    pub wall_us: u64,
    /// The capsule's log lines (`[level] message`).
    pub logs: Vec<String>,
    /// The ledger entries charged for the call (idempotency keys set).
    pub entries: Vec<ledger::Entry>,
}

/// Budgets to set in the worker's store: the `budgets` activity's input.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BudgetRequest {
    /// Scope → limit, as the embedded engine sets them.
    pub limits: Vec<(budget::Scope, Option<budget::Limit>)>,
}

/// The memo key under which a run's workflow carries its listing row (a
/// [`crate::dag::journal::RunSummary`]): set when the run starts, replaced
/// when it ends. Temporal's visibility store returns it with every listed
/// workflow, so a run list needs no query to a worker per row.
pub const SUMMARY_MEMO: &str = "soma-run";

/// How a run ended: the workflow's result. The CLI replays `history` into
/// a `RunState`, so its report and timeline are the embedded engine's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// The run.
    pub run: String,
    /// Every event the fold applied, `created` first.
    pub history: Vec<Event>,
    /// Every ledger entry its calls were charged (one per idempotency key).
    pub entries: Vec<ledger::Entry>,
}

/// What the workflow's `approve` update did with a verdict: checked and
/// queued in one step, so that of two verdicts racing on one node exactly
/// one is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum ApprovalOutcome {
    /// Queued: the workflow applies it at its next turn.
    Accepted,
    /// The same verdict was handed in or recorded already.
    AlreadyGiven,
    /// Refused: no such node, it does not await a verdict, or a different
    /// verdict was handed in first.
    Refused {
        /// Why.
        error: crate::dag::approval::ApprovalError,
    },
    /// The workflow could not rebuild the run from its history (a bug:
    /// the message says what failed).
    Unavailable {
        /// What failed.
        message: String,
    },
}

/// The `approval` signal: a human verdict on a node awaiting approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalSignal {
    /// The node.
    pub node: String,
    /// The verdict.
    pub verdict: crate::dag::spec::ApprovalVerdict,
    /// Why, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who: a token id or `cli`.
    pub by: String,
    /// The decider's tenant (through the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl RunResult {
    /// The run's state, replayed from its history.
    pub fn state(&self) -> Result<crate::dag::state::RunState, TemporalError> {
        crate::dag::state::RunState::replay(&self.run, &self.history).map_err(|source| {
            TemporalError::Replay {
                run: self.run.clone(),
                source,
            }
        })
    }
}

/// Ledger entries by idempotency key (an attempt re-run after a worker
/// died reports the same keys again; the ledger keeps one of each).
#[derive(Debug, Default)]
pub(crate) struct Charges(BTreeMap<String, ledger::Entry>);

impl Charges {
    pub(crate) fn add(&mut self, entries: Vec<ledger::Entry>) {
        for e in entries {
            self.0.entry(e.key()).or_insert(e);
        }
    }

    pub(crate) fn entries(&self) -> Vec<ledger::Entry> {
        self.0.values().cloned().collect()
    }
}
