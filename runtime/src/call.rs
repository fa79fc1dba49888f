//! One capsule call: build the store (limits, grants, capability states),
//! instantiate from the capsule's `InstancePre`, call `run`, and turn
//! whatever happened into an [`Outcome`] with exactly one failure class.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use serde::Serialize;
use soma_host_api::{
    self as host_api, GrantScope, Grants,
    bindings::{AsyncExports, Exports, soma::capsule::types::CapsuleInfo},
    events, kv, llm, log, wasi,
};
use wasmtime::{Store, Trap};

use soma_host_api::bindings::soma::capsule::types::LimitsRequest;

use crate::{
    Capsule, Engine, capsule::Linked, host::Host, limits::Limiter, limits::Limits, limits::Refusal,
};

pub use crate::failure::{Failure, FailureClass};

/// The failure of a call whose kv writes could not be committed: a quota
/// that calls running at the same time filled is a `resource-limit` naming
/// the `kv.*` setting (the capsule's own writes were each within it); a
/// database failure is the host's.
fn kv_commit_failure(e: kv::CommitError) -> Failure {
    use kv::CommitError;
    match e {
        CommitError::QuotaExceeded {
            quota,
            would_hold,
            limit,
        } => Failure::ResourceLimit {
            resource: match quota {
                kv::Quota::Namespace => "bytes of kv data in its namespace",
                kv::Quota::Tenant => "bytes of kv data for its tenant",
            },
            requested: would_hold,
            limit,
            advice: format!(
                "{}; calls that ran at the same time filled it, so this call's writes were \
                 discarded: delete keys it no longer needs, or ask the operator to raise it",
                quota.key()
            ),
            then: None,
        },
        other @ CommitError::Store(_) => Failure::Host {
            message: other.to_string(),
        },
    }
}

/// Where the advice in a limit failure can point: the call's effective
/// limits and where they came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Knobs<'a> {
    /// The operator's `[limits]`.
    operator: &'a Limits,
    /// The capsule's own `describe().limits` request (`None` for describe itself).
    capsule: Option<&'a LimitsRequest>,
    /// `engine.max_memory_mb`, the ceiling of any memory limit.
    max_memory_mb: u64,
    /// The call is `describe()`, which runs under a fixed allowance.
    describe: bool,
}

/// Where a call's effective limit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The capsule lowered it in `describe().limits`.
    Capsule,
    /// The operator's default (`[limits]`).
    Operator,
    /// The caller set it (a `soma run` flag, a request's `limits`, a DAG node's `limits`).
    Caller,
}

impl Knobs<'_> {
    fn source(&self, effective: u64, operator: u64, capsule: Option<u64>) -> Source {
        if capsule == Some(effective) && effective < operator {
            Source::Capsule
        } else if effective == operator {
            Source::Operator
        } else {
            Source::Caller
        }
    }

    fn fuel(&self, limit: u64) -> String {
        if self.describe {
            return DESCRIBE_ADVICE.to_owned();
        }
        let capsule = self.capsule.and_then(|c| c.fuel);
        match self.source(limit, self.operator.fuel, capsule) {
            Source::Capsule => "the capsule limits itself to this in describe().limits.fuel; \
                                rebuild it with a larger request"
                .to_owned(),
            Source::Operator => "raise limits.fuel in soma.toml, or the call's fuel limit \
                                 (soma run --fuel)"
                .to_owned(),
            Source::Caller => "raise the call's fuel limit (soma run --fuel, the request's \
                               limits.fuel or the DAG node's limits.fuel)"
                .to_owned(),
        }
    }

    fn timeout(&self, limit: u64) -> String {
        if self.describe {
            return DESCRIBE_ADVICE.to_owned();
        }
        let capsule = self.capsule.and_then(|c| c.timeout_ms).map(u64::from);
        match self.source(limit, self.operator.timeout_ms, capsule) {
            Source::Capsule => {
                "the capsule limits itself to this in describe().limits.timeout_ms; \
                                rebuild it with a larger request"
                    .to_owned()
            }
            Source::Operator => "raise limits.timeout_ms in soma.toml, or the call's deadline \
                                 (soma run --timeout-ms)"
                .to_owned(),
            Source::Caller => "raise the call's deadline (soma run --timeout-ms, the request's \
                               limits.timeout_ms or the DAG node's timeout_ms)"
                .to_owned(),
        }
    }

    fn memory(&self, limit_mb: u64) -> String {
        if self.describe {
            return format!(
                "describe() runs under the operator's limits.memory_mb in soma.toml \
                 (at most engine.max_memory_mb = {})",
                self.max_memory_mb
            );
        }
        let capsule = self.capsule.and_then(|c| c.memory_mb).map(u64::from);
        match self.source(limit_mb, self.operator.memory_mb, capsule) {
            Source::Capsule => "the capsule limits itself to this in describe().limits.memory_mb; \
                                rebuild it with a larger request"
                .to_owned(),
            _ if limit_mb >= self.max_memory_mb => format!(
                "this is the engine's ceiling: raise engine.max_memory_mb (now {}) and the call's limit",
                self.max_memory_mb
            ),
            Source::Operator => format!(
                "raise limits.memory_mb in soma.toml, or the call's limit (soma run --memory-mb), \
                 up to engine.max_memory_mb = {}",
                self.max_memory_mb
            ),
            Source::Caller => format!(
                "raise the call's memory limit (soma run --memory-mb, the request's \
                 limits.memory_mb or the DAG node's limits.memory_mb), up to engine.max_memory_mb = {}",
                self.max_memory_mb
            ),
        }
    }
}

/// Advice for a `describe()` that ran out of its fixed allowance.
const DESCRIBE_ADVICE: &str = "describe() runs under a fixed allowance of \
    1,000,000,000 fuel units and 2,000 ms that no setting changes: it must return \
    its manifest without doing work";

/// The fixed fuel allowance of `describe()`.
const DESCRIBE_FUEL: u64 = 1_000_000_000;
/// The fixed deadline of `describe()`, ms.
const DESCRIBE_TIMEOUT_MS: u64 = 2_000;

/// What a call consumed.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct Usage {
    /// Fuel consumed; `None` in epoch-only mode. A deadline kill is charged
    /// the whole budget (wasmtime cannot report fuel burned before an epoch
    /// interrupt).
    pub fuel_consumed: Option<u64>,
    /// Wall time from store creation to result, in microseconds.
    pub wall_time_us: u64,
    /// Peak total linear memory, in bytes.
    pub peak_memory_bytes: u64,
}

/// Everything one call produced.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// The output, or the one failure.
    #[serde(serialize_with = "serialize_result")]
    pub result: Result<String, Failure>,
    /// What the call consumed.
    pub usage: Usage,
    /// Log lines kept (capped).
    pub logs: Vec<log::LogLine>,
    /// Log lines dropped past the cap.
    pub logs_dropped: u32,
    /// Events emitted (capped).
    pub events: Vec<events::Event>,
    /// Events dropped past the caps.
    pub events_dropped: u32,
    /// Captured stdout (capped).
    pub stdout: String,
    /// Captured stderr (capped).
    pub stderr: String,
    /// Outbound HTTP: requests made and refused, body bytes sent and
    /// received (omitted when the call made no request).
    #[serde(skip_serializing_if = "host_api::http::Usage::is_empty")]
    pub http: host_api::http::Usage,
    /// The call's charge, when the caller asked to commit it itself
    /// ([`CallOptions::defer_charge`]).
    #[serde(skip)]
    pub charge: Option<crate::meter::CallCharge>,
    /// The ledger entries of the chat calls it made through `llm`: each
    /// was written when its provider answered (not part of `charge`,
    /// which a failed call does not undo either). A Temporal worker hands
    /// them to the run's workflow with the charge, for the run's cost.
    #[serde(skip)]
    pub llm: Vec<crate::ledger::Entry>,
    /// The call did not start because the shared budget store could not
    /// be reached (its result is a host error saying so): nothing ran,
    /// nothing was held or charged, and the same call may be made again as
    /// is. A Temporal worker has Temporal retry the activity instead of
    /// failing the node.
    #[serde(skip)]
    pub store_unavailable: bool,
}

fn serialize_result<S: serde::Serializer>(
    r: &Result<String, Failure>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    #[serde(rename_all = "kebab-case")]
    enum R<'a> {
        Ok(&'a str),
        Failure(&'a Failure),
    }
    match r {
        Ok(o) => R::Ok(o).serialize(s),
        Err(f) => R::Failure(f).serialize(s),
    }
}

/// How to run one call: its limits, grants and identity.
///
/// A call is identified by (run, node, attempt) for the ledger: calling
/// again with the same identity is a *replay* and is not charged twice.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Effective limits.
    pub limits: Limits,
    /// Effective grants.
    pub grants: Grants,
    /// The run this call belongs to.
    pub run_id: Arc<str>,
    /// Who pays. Default `local`.
    pub tenant: Arc<str>,
    /// The DAG node (no `/`). Default `-` (a single call).
    pub node: Arc<str>,
    /// Retry attempt of the node. Default 0.
    pub attempt: u32,
    /// Leave the call's fuel/wall-time charge in [`Outcome::charge`] for the
    /// caller to commit with its own state (the DAG scheduler does, so a
    /// node's result and its charge are one transaction) instead of
    /// writing it before returning. Default false.
    pub defer_charge: bool,
    /// Set by the caller when whoever wanted the result has gone away (an
    /// HTTP client that disconnected): the call stops at its next epoch
    /// tick and is charged its wall time and, like a deadline kill, its
    /// whole fuel budget (wasmtime cannot report fuel burned before an
    /// epoch interrupt; charging less would let a client that leaves on
    /// purpose pay less than one that waits). `None` (the default) costs
    /// nothing; `Some` checks the flag once per `engine.epoch_tick_ms`.
    pub cancel: Option<Arc<AtomicBool>>,
    /// When the run started (Unix ms), for the marketplace price in force:
    /// a run keeps the price of its start (a DAG run passes its journaled
    /// creation time, so a resumed run does too). `None` (the default): now.
    pub run_started_ms: Option<u64>,
}

impl CallOptions {
    /// Options for `capsule` under the operator's defaults: limits tightened
    /// by the capsule's request, grants = what it asks for ∩ policy, with a
    /// fresh run id. Cheap; call per run, not per call, on hot paths.
    pub fn for_capsule(engine: &Engine, capsule: &Capsule) -> Self {
        let config = engine.config();
        let m = capsule.manifest();
        let limits = config.limits.tightened_by(&m.limits);
        let run_id: Arc<str> = new_run_id().into();
        // Each capability grants its own wants ∩ its own policy keys.
        let grants = engine.capabilities.grant(
            &m.wants,
            &GrantScope {
                capsule: &capsule.digest_text,
                run: &run_id,
                origin: capsule.origin(),
                node: None,
            },
        );
        Self {
            limits,
            grants,
            run_id,
            tenant: "local".into(),
            node: "-".into(),
            attempt: 0,
            defer_charge: false,
            cancel: None,
            run_started_ms: None,
        }
    }

    /// Narrow the grants to what a DAG node allows (its `capabilities:`):
    /// each capability grants the capsule's wants ∩ the operator's policy ∩
    /// `node`, in this call's run, so a node can only lose rights. Call
    /// before [`CallOptions::kv_namespace`] and [`CallOptions::grant_dirs`]
    /// (it grants afresh). Cheap: clones a few strings; once per node call
    /// that has a restriction.
    pub fn restrict(&mut self, engine: &Engine, capsule: &Capsule, node: &host_api::Restriction) {
        self.grants = engine.capabilities.grant(
            &capsule.manifest().wants,
            &GrantScope {
                capsule: &capsule.digest_text,
                run: &self.run_id,
                origin: capsule.origin(),
                node: Some(node),
            },
        );
    }

    /// Grant preopened directories. Each guest path must be one the capsule
    /// asked for in `describe()`; otherwise the grant is refused by name.
    pub fn grant_dirs(
        &mut self,
        capsule: &Capsule,
        dirs: Vec<wasi::DirGrant>,
    ) -> Result<(), Failure> {
        self.grants.dirs = wasi::Wasi::offer(&capsule.manifest().wants.dirs, dirs)
            .map_err(|message| Failure::Denied { message })?;
        Ok(())
    }

    /// Make this call part of run `run` (its ledger key and kv blackboard).
    pub fn set_run(&mut self, run: &str) {
        self.run_id = run.into();
        self.grants.rescope(run);
    }

    /// Use `namespace` for the capsule's kv scope (e.g. to keep state across
    /// versions of a capsule); it is still inside the call's tenant. No
    /// effect if kv is not granted.
    pub fn kv_namespace(&mut self, namespace: &str) {
        if let Some(g) = self.grants.kv.as_mut() {
            g.capsule = kv::Space::Named(namespace.to_owned());
        }
    }
}

/// A run id: time-ordered, unique in practice (`r` + µs since epoch + random suffix).
pub fn new_run_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let salt = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(now.as_nanos());
        h.finish() as u32
    };
    format!("r{:x}{:08x}", now.as_micros(), salt)
}

/// Run `call` to completion on this thread's own current-thread tokio
/// runtime (built on the thread's first async call): the guest, its
/// requests' connections and their I/O all run here, with no hand-off to
/// another thread. `None` — and `call` is not polled — where that cannot
/// be done: inside a tokio runtime (its workers, its blocking pool), whose
/// context forbids driving a second runtime, or if the runtime cannot be
/// built; the caller then takes the blocking path.
fn on_own_runtime<F: Future>(call: F) -> Option<F::Output> {
    thread_local! {
        static RUNTIME: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .inspect_err(|e| tracing::warn!("no per-thread runtime for async calls: {e}"))
            .ok();
    }
    if tokio::runtime::Handle::try_current().is_ok() {
        return None;
    }
    RUNTIME
        .try_with(|rt| rt.as_ref().map(|rt| rt.block_on(call)))
        .ok()
        .flatten()
}

/// What `execute` hands back besides the result.
struct Executed<R> {
    result: Result<R, Failure>,
    usage: Usage,
    /// `None` when the call failed before its store existed.
    host: Option<Host>,
}

impl Engine {
    /// Run `capsule` on `input`.
    ///
    /// Cost: one store + instance from the pool (~5 µs with pooling), the
    /// capsule's own work, and — only if the capsule wrote to kv and
    /// succeeded — one redb commit. Never panics on anything the capsule
    /// does; a failed call leaves no kv writes and does not affect the next.
    pub fn call(&self, capsule: &Capsule, input: &str, options: &CallOptions) -> Outcome {
        if input.len() > options.limits.max_input_bytes {
            return Outcome::failed(Failure::InputLimit {
                size: input.len(),
                limit: options.limits.max_input_bytes,
            });
        }
        let span = tracing::info_span!(
            "soma.call",
            capsule = %capsule.name,
            digest = %capsule.digest_text,
            run = %options.run_id,
            node = %options.node,
            attempt = options.attempt,
            fuel = tracing::field::Empty,
            outcome = tracing::field::Empty,
            http.requests = tracing::field::Empty,
            http.bytes_in = tracing::field::Empty,
            http.bytes_out = tracing::field::Empty,
        );
        let _entered = span.enter();
        let spender = llm::Spender {
            tenant: options.tenant.clone(),
            run: options.run_id.clone(),
            node: options.node.clone(),
            attempt: options.attempt,
            capsule: capsule.digest_text.clone(),
        };
        let max_output = options.limits.max_output_bytes;
        // Money budgets refuse before anything runs: hold the worst case.
        let fuel_limit = self.fuel_enabled().then_some(options.limits.fuel);
        // A priced marketplace capsule: its fee's worst case is held too.
        let tariff = self
            .metering
            .tariff(&capsule.digest_text, options.run_started_ms);
        let fee_worst = tariff.as_ref().map_or(0, |t| t.worst_case_micros());
        // Granted outbound HTTP: its quotas at the ledger's prices, too.
        let http_worst = if options.grants.http.any() {
            self.metering.http_worst_case_micros(&self.config.http)
        } else {
            0
        };
        let hold = match self.metering.reserve_call_with_http(
            &spender,
            fuel_limit,
            options.limits.timeout_ms,
            fee_worst,
            http_worst,
        ) {
            Ok(hold) => hold,
            Err(crate::meter::CallRefusal::Budget(message)) => {
                return Outcome::failed(Failure::BudgetExceeded { message });
            }
            // The shared store is down: retryable, nothing was held.
            Err(crate::meter::CallRefusal::Store(message)) => {
                return Outcome {
                    store_unavailable: true,
                    ..Outcome::failed(Failure::Host { message })
                };
            }
        };
        let knobs = Knobs {
            operator: &self.config.limits,
            capsule: Some(&capsule.manifest().limits),
            max_memory_mb: self.config.engine.max_memory_mb,
            describe: false,
        };
        let Executed {
            result,
            usage,
            mut host,
        } = self.execute(
            &capsule.linked,
            options,
            knobs,
            &capsule.name,
            &spender,
            |store, exports| exports.call_run(store, input),
            async |store, exports| exports.call_run(store, input).await,
        );
        let result = match result {
            Ok(Ok(output)) if output.len() > max_output => {
                Err(Failure::OutputLimit { limit: max_output })
            }
            Ok(Ok(output)) => host
                .as_mut()
                .map_or(Ok(()), |h| h.capabilities.commit())
                .map(|()| output)
                .map_err(|e| match e {
                    host_api::CommitError::Kv(e) => kv_commit_failure(e),
                }),
            Ok(Err(e)) => Err(Failure::CapsuleError {
                code: e.code,
                message: e.message,
                retryable: e.retryable,
            }),
            Err(f) => Err(f),
        };
        let result = match (result, &options.cancel) {
            (Err(_), Some(flag)) if flag.load(Ordering::Relaxed) => Err(Failure::Host {
                message: "cancelled: the caller went away (its client disconnected or its \
                          request timed out); the call was stopped at its next epoch tick \
                          and charged like a deadline kill (its wall time and whole fuel budget)"
                    .into(),
            }),
            (r, _) => r,
        };
        if let Some(fuel) = usage.fuel_consumed {
            span.record("fuel", fuel);
        }
        span.record(
            "outcome",
            FailureClass::outcome_label(result.as_ref().err().map(Failure::class)),
        );
        if let Err(f) = &result {
            self.metering.record_failure(&spender, f.class().name());
        }
        // Charged whether the call succeeded or not, durably, before the
        // outcome is handed back — or handed to the caller to commit. The
        // marketplace fee (successful calls only) is part of the same charge.
        let mut outcome = Outcome::from_host(result, usage, host, &spender);
        // Always taken (one atomic load when nothing is pending), so a
        // capsule priced now but not at its run's start leaves nothing behind.
        let tokens = self.metering.take_call_tokens(&spender);
        let mut fees = match &tariff {
            Some(t) => t.entries(
                &spender,
                outcome.result.is_ok(),
                tokens,
                &outcome.events,
                crate::meter::now_ms(),
            ),
            None => Vec::new(),
        };
        // Outbound HTTP: on the span, and in the same charge as the fuel.
        if !outcome.http.is_empty() {
            span.record("http.requests", outcome.http.requests);
            span.record("http.bytes_in", outcome.http.bytes_received);
            span.record("http.bytes_out", outcome.http.bytes_sent);
            fees.extend(self.metering.http_entries(&spender, &outcome.http));
        }
        // The analytics `call` event names the capsule and its peak memory;
        // the capsule's own events ride with the charge (written once, with
        // it), at most `[analytics] max_capsule_events_per_call` of them.
        let charge = self.metering.call_charge_with_fees(
            &spender,
            usage.fuel_consumed,
            usage.wall_time_us,
            hold,
            fees,
        );
        let analytics = &self.config.analytics;
        let charge = match charge {
            Some(c) if analytics.enabled => Some(
                c.with_facts(crate::analytics::CallFacts {
                    capsule_name: Some(capsule.name.to_string()),
                    peak_memory_bytes: Some(usage.peak_memory_bytes),
                    emitted: outcome
                        .events
                        .iter()
                        .take(analytics.max_capsule_events_per_call as usize)
                        .map(|e| (e.name.clone(), e.payload.clone()))
                        .collect(),
                }),
            ),
            c => c,
        };
        if options.defer_charge {
            outcome.charge = charge;
            return outcome;
        }
        let charged = self.metering.charge_call(charge);
        if let Err(e) = charged {
            match &outcome.result {
                Ok(_) => {
                    outcome.result = Err(Failure::Host {
                        message: format!("could not record the call in the ledger: {e}"),
                    });
                }
                Err(_) => tracing::error!("could not record a failed call in the ledger: {e}"),
            }
        }
        outcome
    }

    /// Call `describe()` with no grants, under the operator's memory limit
    /// and a fixed fuel/time allowance: describing must not depend on the
    /// per-call budget the capsule will later run under.
    pub(crate) fn describe(&self, linked: &Linked, origin: &str) -> Result<CapsuleInfo, Failure> {
        let options = CallOptions {
            limits: Limits {
                fuel: DESCRIBE_FUEL,
                timeout_ms: DESCRIBE_TIMEOUT_MS,
                ..self.config.limits
            },
            grants: Grants::default(),
            run_id: "describe".into(),
            tenant: "local".into(),
            node: "-".into(),
            attempt: 0,
            defer_charge: false,
            cancel: None,
            run_started_ms: None,
        };
        let name: Arc<str> = origin.into();
        let spender = llm::Spender::local(options.run_id.clone(), name.clone());
        let knobs = Knobs {
            operator: &self.config.limits,
            capsule: None,
            max_memory_mb: self.config.engine.max_memory_mb,
            describe: true,
        };
        self.execute(
            linked,
            &options,
            knobs,
            &name,
            &spender,
            |store, exports| exports.call_describe(store),
            async |store, exports| exports.call_describe(store).await,
        )
        .result
    }

    /// The shared core of every call: build the store with limits armed
    /// *before* instantiation (start functions run guest code too), run
    /// `f` (or `f_async`, see [`on_own_runtime`]), classify any error, and
    /// meter.
    #[allow(clippy::too_many_arguments)] // the two halves of one entry point
    fn execute<R>(
        &self,
        linked: &Linked,
        options: &CallOptions,
        knobs: Knobs<'_>,
        name: &Arc<str>,
        spender: &llm::Spender,
        f: impl FnOnce(&mut Store<Host>, &Exports) -> wasmtime::Result<R>,
        f_async: impl AsyncFnOnce(&mut Store<Host>, &AsyncExports) -> wasmtime::Result<R>,
    ) -> Executed<R> {
        let start = Instant::now();
        let limits = &options.limits;
        let setup_failed = |failure: Failure| Executed {
            result: Err(failure),
            usage: Usage::default(),
            host: None,
        };
        let call = host_api::CallContext {
            capsule: name,
            run: &options.run_id,
            spender,
            tenant: &options.tenant,
            memory_limit_bytes: limits.memory_bytes(),
            deadline: start + limits.timeout(),
            cancel: options.cancel.as_ref(),
        };
        let capabilities = match host_api::State::new(&self.capabilities, &options.grants, &call) {
            Ok(c) => c,
            Err(e) => {
                return setup_failed(Failure::Denied {
                    message: e.to_string(),
                });
            }
        };
        let host = Host {
            limiter: Limiter::new(limits),
            capabilities,
        };
        let mut store = Store::new(&self.wasmtime, host);
        store.limiter(|h| &mut h.limiter);
        let fuel = self.fuel_enabled().then_some(limits.fuel);
        if let Some(Err(e)) = fuel.map(|f| store.set_fuel(f)) {
            return setup_failed(Failure::Host {
                message: format!("cannot set fuel: {e:#}"),
            });
        }
        store.set_epoch_deadline(self.deadline_ticks(limits.timeout()));
        if let Some(cancel) = options.cancel.clone() {
            // Look at the flag every tick; the deadline is then kept by the
            // clock (the same instant the tick count stands for).
            let deadline = start + limits.timeout();
            store.set_epoch_deadline(1);
            store.epoch_deadline_callback(move |_| {
                if Instant::now() >= deadline {
                    Err(Trap::Interrupt.into())
                } else if cancel.load(Ordering::Relaxed) {
                    Err(wasmtime::Error::msg("the caller went away"))
                } else {
                    Ok(wasmtime::UpdateDeadline::Continue(1))
                }
            });
        }
        store.set_hostcall_fuel(limits.max_output_bytes);

        let io = linked.io.as_ref().map(|io| {
            on_own_runtime(async {
                let exports = io.instantiate(&mut store).await?;
                f_async(&mut store, &exports).await
            })
        });
        let result = match io {
            Some(Some(done)) => {
                self.own_runtime_calls.fetch_add(1, Ordering::Relaxed);
                done
            }
            // No async path, or this thread cannot drive one.
            Some(None) | None => linked
                .pre
                .instantiate(&mut store)
                .and_then(|exports| f(&mut store, &exports)),
        };
        // A deadline kill is charged the whole budget, whatever the class
        // (a refused growth before it stays the class).
        let deadline_kill = result
            .as_ref()
            .err()
            .and_then(|e| e.downcast_ref::<Trap>())
            .is_some_and(|t| matches!(t, Trap::Interrupt));
        let result =
            result.map_err(|e| self.classify(&e, limits, knobs, store.data().limiter.refusal()));

        // An epoch interrupt (the deadline, or a caller that went away)
        // leaves the fuel counter stale: charge the whole budget.
        let cancelled = result.is_err()
            && options
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed));
        let fuel_consumed = fuel.map(|budget| {
            if deadline_kill || cancelled {
                budget
            } else {
                budget.saturating_sub(store.get_fuel().unwrap_or(0))
            }
        });
        let usage = Usage {
            fuel_consumed,
            wall_time_us: u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
            peak_memory_bytes: store.data().limiter.peak_memory() as u64,
        };
        Executed {
            result,
            usage,
            host: Some(store.into_data()),
        }
    }

    /// Map a wasmtime error to exactly one failure class: the first limit
    /// that refused.
    ///
    /// Fuel, epoch, stack overflow and `unreachable` arrive as [`Trap`];
    /// limiter refusals, store-limit refusals, canonical-ABI lift errors and
    /// hostcall-fuel exhaustion arrive as plain errors, so the limiter's
    /// record and the error chain decide those. A refused memory or table
    /// growth is the cause however the capsule carried on: a capsule that
    /// retries until its fuel or deadline runs out still ends as
    /// `memory-limit` (with what ended it in `then`).
    fn classify(
        &self,
        e: &wasmtime::Error,
        limits: &Limits,
        knobs: Knobs<'_>,
        refusal: Option<Refusal>,
    ) -> Failure {
        let trap = e.downcast_ref::<Trap>();
        if let Some(r) = refusal {
            // What ended the call after the refusal, if not the usual
            // abort (`unreachable`) of an allocation failure.
            let then = match trap {
                Some(Trap::OutOfFuel) => Some(format!("ran out of fuel ({} units)", limits.fuel)),
                Some(Trap::Interrupt) => {
                    Some(format!("ran past its {} ms deadline", limits.timeout_ms))
                }
                Some(Trap::StackOverflow) => Some("overflowed its stack".to_owned()),
                _ => None,
            };
            return refused(r, limits, knobs, then);
        }
        if let Some(trap) = trap {
            return match trap {
                Trap::OutOfFuel => Failure::OutOfFuel {
                    limit: limits.fuel,
                    advice: knobs.fuel(limits.fuel),
                },
                Trap::Interrupt => Failure::DeadlineExceeded {
                    timeout_ms: limits.timeout_ms,
                    advice: knobs.timeout(limits.timeout_ms),
                },
                Trap::StackOverflow => Failure::StackOverflow {
                    limit_kb: self.config.engine.max_wasm_stack_kb,
                },
                other => Failure::Trap {
                    kind: kebab(&format!("{other:?}")),
                    message: with_backtrace(&other.to_string(), e),
                },
            };
        }
        let chain = format!("{e:#}");
        if chain.contains("fuel allocated for hostcalls has been exhausted") {
            return Failure::OutputLimit {
                limit: limits.max_output_bytes,
            };
        }
        if let Some(f) = store_limit(&chain, limits) {
            return f;
        }
        if let Some(f) = pool_exhausted(e, &self.config.engine) {
            return f;
        }
        Failure::Trap {
            kind: "host-boundary".into(),
            message: with_backtrace(&chain, e),
        }
    }
}

/// The failure for a limiter refusal.
fn refused(r: Refusal, limits: &Limits, knobs: Knobs<'_>, then: Option<String>) -> Failure {
    match r {
        Refusal::Memory { requested } => Failure::MemoryLimit {
            requested: requested as u64,
            limit: limits.memory_bytes() as u64,
            advice: knobs.memory(limits.memory_mb),
            then,
        },
        Refusal::TableElements { requested } => Failure::ResourceLimit {
            resource: "table elements",
            requested: requested as u64,
            limit: limits.max_table_elements as u64,
            advice: "raise limits.max_table_elements in soma.toml".to_owned(),
            then,
        },
    }
}

/// wasmtime refuses a store's instance/table/memory counts past the
/// limiter's `instances()`/`tables()`/`memories()` with "resource limit
/// exceeded: <what> count too high at <n>".
fn store_limit(chain: &str, limits: &Limits) -> Option<Failure> {
    let rest = chain.split("resource limit exceeded: ").nth(1)?;
    let (what, rest) = rest.split_once(" count too high at ")?;
    let requested = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let (resource, limit, key) = match what {
        "instance" => ("instances", limits.max_instances, "limits.max_instances"),
        "table" => ("tables", limits.max_tables, "limits.max_tables"),
        "memory" => ("memories", limits.max_memories, "limits.max_memories"),
        _ => return None,
    };
    Some(Failure::ResourceLimit {
        resource,
        requested,
        limit: limit as u64,
        advice: format!("raise {key} in soma.toml"),
        then: None,
    })
}

/// The pooling allocator is full: every slot of some kind is taken by
/// other calls. Not the capsule's fault, and a retry may succeed.
fn pool_exhausted(e: &wasmtime::Error, engine: &crate::config::EngineConfig) -> Option<Failure> {
    let full = e
        .chain()
        .find_map(|c| c.downcast_ref::<wasmtime::PoolConcurrencyLimitError>())?;
    Some(Failure::Host {
        message: format!(
            "the engine's instance pool is full ({full}; engine.pool_instances = {}): \
             the host is at capacity, retry later or raise engine.pool_instances",
            engine.pool_instances
        ),
    })
}

/// `UnreachableCodeReached` → `unreachable-code-reached`.
fn kebab(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// `message`, plus the innermost wasm frames if wasmtime captured them.
fn with_backtrace(message: &str, e: &wasmtime::Error) -> String {
    let Some(bt) = e.downcast_ref::<wasmtime::WasmBacktrace>() else {
        return message.to_owned();
    };
    let frames: Vec<String> = bt
        .frames()
        .iter()
        .take(4)
        .map(|f| f.func_name().unwrap_or("<unnamed>").to_owned())
        .collect();
    if frames.is_empty() {
        message.to_owned()
    } else {
        format!("{message} (in {})", frames.join(" ← "))
    }
}

impl Outcome {
    /// The outcome of a call whose caller went away before it started:
    /// nothing ran and nothing is charged.
    pub fn cancelled_before_start() -> Self {
        Self::failed(Failure::Host {
            message: "cancelled before it started: the caller went away (its client \
                      disconnected or its request timed out)"
                .into(),
        })
    }

    /// An outcome that failed before any call was made.
    pub(crate) fn failed(failure: Failure) -> Self {
        Self {
            result: Err(failure),
            usage: Usage::default(),
            logs: Vec::new(),
            logs_dropped: 0,
            events: Vec::new(),
            events_dropped: 0,
            stdout: String::new(),
            stderr: String::new(),
            http: host_api::http::Usage::default(),
            charge: None,
            llm: Vec::new(),
            store_unavailable: false,
        }
    }

    fn from_host(
        result: Result<String, Failure>,
        usage: Usage,
        host: Option<Host>,
        spender: &llm::Spender,
    ) -> Self {
        let Some(host) = host else {
            return Self {
                usage,
                ..Self::failed(result.err().unwrap_or(Failure::Host {
                    message: "call ended without a store".into(),
                }))
            };
        };
        // The output and the capsule's own error are masked like every
        // other text the call emits (the secrets it read).
        let result = redact_result(&host.capabilities, result);
        let host_api::Report {
            logs,
            logs_dropped,
            events,
            events_dropped,
            stdout,
            stderr,
            http,
            llm: chats,
        } = host.capabilities.finish();
        Self {
            result,
            usage,
            logs,
            logs_dropped,
            events,
            events_dropped,
            stdout,
            stderr,
            http,
            charge: None,
            llm: chats
                .iter()
                .flat_map(|m| crate::meter::llm_entries(spender, m))
                .collect(),
            store_unavailable: false,
        }
    }
}

/// `result` with every secret value the call read masked in its output or
/// in the capsule's own error (code and message). Free when it read none.
fn redact_result(
    capabilities: &host_api::State,
    result: Result<String, Failure>,
) -> Result<String, Failure> {
    let masked = |text: String| match capabilities.redact(&text) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(o) => o,
    };
    match result {
        Ok(output) => Ok(masked(output)),
        Err(Failure::CapsuleError {
            code,
            message,
            retryable,
        }) => Err(Failure::CapsuleError {
            code: masked(code),
            message: masked(message),
            retryable,
        }),
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs<'a>(operator: &'a Limits, capsule: Option<&'a LimitsRequest>) -> Knobs<'a> {
        Knobs {
            operator,
            capsule,
            max_memory_mb: 1024,
            describe: false,
        }
    }

    #[test]
    fn advice_names_the_knob_that_set_the_limit() {
        let operator = Limits::default();
        let none = LimitsRequest {
            fuel: None,
            memory_mb: None,
            timeout_ms: None,
        };
        let k = knobs(&operator, Some(&none));
        assert!(k.fuel(operator.fuel).contains("limits.fuel in soma.toml"));
        assert!(k.fuel(1000).contains("the DAG node's limits.fuel"));
        assert!(
            k.memory(operator.memory_mb)
                .contains("limits.memory_mb in soma.toml")
        );
        assert!(k.memory(1024).contains("engine.max_memory_mb"));
        let own = LimitsRequest {
            fuel: Some(5),
            memory_mb: Some(2),
            timeout_ms: Some(7),
        };
        let k = knobs(&operator, Some(&own));
        assert!(
            k.fuel(5).contains("describe().limits.fuel"),
            "{}",
            k.fuel(5)
        );
        assert!(k.memory(2).contains("describe().limits.memory_mb"));
        assert!(k.timeout(7).contains("describe().limits.timeout_ms"));
        let describe = Knobs {
            describe: true,
            ..knobs(&operator, None)
        };
        for advice in [
            describe.fuel(DESCRIBE_FUEL),
            describe.timeout(DESCRIBE_TIMEOUT_MS),
        ] {
            assert!(advice.contains("fixed allowance"), "{advice}");
            assert!(
                !advice.contains("--fuel") && !advice.contains("--timeout"),
                "{advice}"
            );
        }
        assert!(!describe.memory(128).contains("--memory-mb"));
    }

    #[test]
    fn store_limits_are_not_traps() {
        let limits = Limits::default();
        let f = store_limit(
            "error while instantiating: resource limit exceeded: instance count too high at 65",
            &limits,
        )
        .expect("classified");
        assert_eq!(f.class(), "resource-limit");
        assert!(f.to_string().contains("limits.max_instances"), "{f}");
        assert!(f.to_string().contains("65 instances"), "{f}");
        let f = store_limit(
            "resource limit exceeded: memory count too high at 9",
            &limits,
        )
        .expect("classified");
        assert!(f.to_string().contains("limits.max_memories"), "{f}");
        assert!(store_limit("something else", &limits).is_none());
    }

    #[test]
    fn a_refusal_stays_the_cause_whatever_ends_the_call() {
        let limits = Limits::default();
        let operator = Limits::default();
        let k = knobs(&operator, None);
        let f = refused(
            Refusal::Memory { requested: 1 << 30 },
            &limits,
            k,
            Some("ran out of fuel".into()),
        );
        assert_eq!(f.class(), "memory-limit");
        assert!(f.to_string().contains("went on and ran out of fuel"), "{f}");
        let f = refused(
            Refusal::TableElements { requested: 200_000 },
            &limits,
            k,
            None,
        );
        assert_eq!(f.class(), "resource-limit");
        assert!(f.to_string().contains("limits.max_table_elements"), "{f}");
        assert!(!f.to_string().contains("memory_mb"), "{f}");
    }

    #[test]
    fn kebab_cases_trap_names() {
        assert_eq!(kebab("UnreachableCodeReached"), "unreachable-code-reached");
        assert_eq!(kebab("MemoryOutOfBounds"), "memory-out-of-bounds");
    }

    #[test]
    fn run_ids_are_unique() {
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
        assert!(a.starts_with('r'));
    }

    #[test]
    fn retryable_classes() {
        let advice = String::new();
        assert!(
            Failure::DeadlineExceeded {
                timeout_ms: 1,
                advice: advice.clone()
            }
            .is_retryable()
        );
        assert!(!Failure::OutOfFuel { limit: 1, advice }.is_retryable());
        let e = Failure::CapsuleError {
            code: "x".into(),
            message: String::new(),
            retryable: true,
        };
        assert!(e.is_retryable());
    }

    #[test]
    fn a_kv_quota_refused_at_commit_is_a_resource_limit_naming_the_setting() {
        use soma_host_api::kv::{CommitError, Quota};
        let f = kv_commit_failure(CommitError::QuotaExceeded {
            quota: Quota::Namespace,
            would_hold: 120,
            limit: 100,
        });
        assert_eq!(f.class(), "resource-limit");
        assert!(!f.is_retryable());
        let text = f.to_string();
        assert!(text.contains("kv.max_namespace_bytes"), "{text}");
        assert!(text.contains("120") && text.contains("100"), "{text}");
        let f = kv_commit_failure(CommitError::QuotaExceeded {
            quota: Quota::Tenant,
            would_hold: 2,
            limit: 1,
        });
        assert!(f.to_string().contains("kv.max_tenant_bytes"), "{f}");
        let f = kv_commit_failure(CommitError::Store("disk full".into()));
        assert_eq!(f.class(), "host-error");
    }
}
