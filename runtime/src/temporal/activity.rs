//! The activities a `soma worker` runs: `call` (one capsule call, made
//! the way the embedded engine makes it) and `budgets` (set a run's
//! budgets in the worker's store).

// The SDK's macros generate a marker type per activity/workflow method,
// without `Debug`.
#![allow(missing_debug_implementations)]

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use temporalio_macros::activities;
use temporalio_sdk::{
    ApplicationFailure,
    activities::{ActivityContext, ActivityError},
};

use super::{BudgetRequest, CallRequest, CallResult, PAYLOAD_LIMIT_BYTES};
use crate::{
    CallOptions, Capsule, Engine,
    dag::{
        history::{CapsuleRecord, NodeFailure},
        scheduler::tighten_limits,
    },
};

/// Where a worker gets a run's pinned capsules from (files, registries:
/// the CLI's resolver). Called once per capsule digest per worker (the
/// result is kept); may block (pull, compile).
pub trait CapsuleSource: Send + Sync + std::fmt::Debug {
    /// Load the capsule `record` pins (by its reference). The caller
    /// checks the digest.
    ///
    /// # Errors
    ///
    /// Why it could not be found or loaded.
    fn load(&self, engine: &Engine, record: &CapsuleRecord) -> anyhow::Result<Arc<Capsule>>;
}

/// How often a running call heartbeats (Temporal's heartbeat timeout for
/// a call is a few times this).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// The worker's activities: its engine (ledger, budgets, kv) and where it
/// finds capsules.
#[derive(Debug)]
pub struct CallActivities {
    engine: Arc<Engine>,
    source: Arc<dyn CapsuleSource>,
    loaded: Mutex<HashMap<String, Arc<Capsule>>>,
    /// This worker offloads large payloads (see [`super::payloads`]):
    /// outputs are not held to [`PAYLOAD_LIMIT_BYTES`].
    offload: bool,
}

impl CallActivities {
    /// Activities over `engine`, loading capsules from `source`.
    pub fn new(engine: Arc<Engine>, source: Arc<dyn CapsuleSource>) -> Self {
        Self {
            engine,
            source,
            loaded: Mutex::new(HashMap::new()),
            offload: false,
        }
    }

    /// Whether this worker's client offloads large payloads (its
    /// [`super::Endpoint::offload`]).
    #[must_use]
    pub fn offloading(mut self, offload: bool) -> Self {
        self.offload = offload;
        self
    }

    /// The capsule a call pins, loaded once per digest. Blocks.
    fn capsule(&self, alias: &str, record: &CapsuleRecord) -> Result<Arc<Capsule>, ActivityError> {
        let cached = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&record.digest)
            .cloned();
        if let Some(c) = cached {
            return Ok(c);
        }
        // Retryable: a registry or file may come back.
        let capsule = self
            .source
            .load(&self.engine, record)
            .map_err(|e| e.context(format!("capsule `{alias}` ({})", record.reference)))?;
        if capsule.digest().to_string() != record.digest {
            return Err(ActivityError::application(
                ApplicationFailure::non_retryable(format!(
                    "capsule `{alias}` ({}) changed since the run started (was {}, now {}); \
                     the run needs the same component",
                    record.reference,
                    record.digest,
                    capsule.digest()
                )),
            ));
        }
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.digest.clone(), capsule.clone());
        Ok(capsule)
    }

    /// Make the call (blocks for its duration) and charge it.
    fn make_call(
        &self,
        request: &CallRequest,
        cancel: Arc<AtomicBool>,
    ) -> Result<CallResult, ActivityError> {
        let capsule = self.capsule(&request.alias, &request.capsule)?;
        let engine = &*self.engine;
        // As the embedded scheduler builds them (`drive` + `send`).
        let mut options = CallOptions::for_capsule(engine, &capsule);
        options.set_run(&request.run);
        options.tenant = request.tenant.as_str().into();
        options.defer_charge = true;
        options.run_started_ms = Some(request.run_started_ms);
        options.node = request.node.as_str().into();
        options.attempt = request.attempt;
        tighten_limits(&mut options.limits, &request.limits);
        if !request.restriction.is_empty() {
            options.restrict(engine, &capsule, &request.restriction);
        }
        options.cancel = Some(cancel);
        let span = tracing::info_span!(
            "soma.node",
            run = %request.run,
            node = %request.node,
            attempt = request.attempt,
            capsule = %request.alias,
        );
        let mut outcome = span.in_scope(|| engine.call(&capsule, &request.input, &options));
        // The shared budgets could not be reached before the call started:
        // nothing ran or was held, so Temporal runs the same attempt again
        // after its backoff (the node does not fail for the store's sake).
        if outcome.store_unavailable {
            let reason = match &outcome.result {
                Err(f) => f.to_string(),
                Ok(_) => "the budget store is unavailable".into(),
            };
            tracing::warn!(
                run = %request.run,
                node = %request.node,
                attempt = request.attempt,
                "the call could not start (Temporal runs it again): {reason}"
            );
            return Err(anyhow::anyhow!("the call could not start: {reason}").into());
        }
        let charge = outcome.charge.take();
        // The call's own charge, and the chat calls' entries (already in
        // the ledger): the run's cost counts both, as on the embedded
        // engine, where it is read back from the ledger.
        let mut entries = charge
            .as_ref()
            .map(|c| c.entries.clone())
            .unwrap_or_default();
        entries.append(&mut outcome.llm);
        // Idempotent per (run, node, attempt): an attempt run again after
        // a worker died is not charged twice. A ledger that cannot be
        // written is the worker's trouble, not the capsule's: retried.
        if let Err(e) = engine.metering().charge_call(charge) {
            tracing::warn!(
                run = %request.run,
                node = %request.node,
                attempt = request.attempt,
                "could not record the call in the ledger (Temporal runs it again): {e}"
            );
            return Err(anyhow::anyhow!("could not record the call in the ledger: {e}").into());
        }
        let result = match outcome.result {
            Ok(output) if !self.offload && output.len() > PAYLOAD_LIMIT_BYTES => Err(NodeFailure {
                message: format!(
                    "{}: its output has {} bytes; without a shared store the Temporal engine \
                     passes at most {} bytes between nodes: give the workers and whoever starts \
                     runs [store] backend = \"postgres\" (large payloads then go by reference), \
                     run it on the embedded engine, or make the output smaller",
                    request.node,
                    output.len(),
                    PAYLOAD_LIMIT_BYTES
                ),
                ..NodeFailure::of_call(&crate::Failure::OutputLimit {
                    limit: PAYLOAD_LIMIT_BYTES,
                })
            }),
            Ok(output) => Ok(output),
            Err(f) => Err(NodeFailure::of_call(&f)),
        };
        Ok(CallResult {
            result,
            fuel: outcome.usage.fuel_consumed,
            wall_us: outcome.usage.wall_time_us,
            logs: outcome
                .logs
                .iter()
                .map(|l| format!("[{}] {}", l.level, l.message))
                .collect(),
            entries,
        })
    }
}

#[activities]
impl CallActivities {
    /// One capsule call of a DAG run. Heartbeats every
    /// [`HEARTBEAT_EVERY`] (or a quarter of the run's heartbeat timeout,
    /// when shorter) while the call runs; when Temporal cancels the
    /// activity (or it times out), the call's cancel flag stops it at its
    /// next epoch tick, it is charged like a deadline kill, and the
    /// activity reports itself cancelled.
    #[activity(name = "soma.call")]
    pub async fn call(
        self: Arc<Self>,
        ctx: ActivityContext,
        request: CallRequest,
    ) -> Result<CallResult, ActivityError> {
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let this = self.clone();
        let mut task = tokio::task::spawn_blocking(move || this.make_call(&request, flag));
        let mut cancelled = false;
        // Several heartbeats within the run's heartbeat timeout.
        let every = ctx
            .info()
            .heartbeat_timeout
            .map_or(HEARTBEAT_EVERY, |t| (t / 4).min(HEARTBEAT_EVERY))
            .max(Duration::from_millis(100));
        loop {
            tokio::select! {
                done = &mut task => {
                    let result = done.map_err(|e| anyhow::anyhow!("the call's thread failed: {e}"))??;
                    if cancelled {
                        return Err(ActivityError::cancelled());
                    }
                    return Ok(result);
                }
                () = ctx.cancelled(), if !cancelled => {
                    cancel.store(true, Ordering::Relaxed);
                    cancelled = true;
                }
                () = tokio::time::sleep(every) => {
                    ctx.record_heartbeat(()).await?;
                }
            }
        }
    }

    /// Set budgets in the worker's store (a run's at its start, a plan's
    /// nodes' when it is spliced in). Idempotent.
    #[activity(name = "soma.budgets")]
    pub async fn budgets(
        self: Arc<Self>,
        _ctx: ActivityContext,
        request: BudgetRequest,
    ) -> Result<(), ActivityError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.metering().set_limits(request.limits))
            .await
            .map_err(|e| anyhow::anyhow!("the budget thread failed: {e}"))?
            .map_err(|e| anyhow::anyhow!("could not set the run's budgets: {e}"))?;
        Ok(())
    }
}
