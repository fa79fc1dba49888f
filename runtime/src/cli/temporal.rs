//! The Temporal engine from the command line: `soma worker`, and the
//! `--engine temporal` side of `soma dag run/status/cancel`.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use serde_json::json;
use soma_runtime::{
    Capsule, Engine,
    dag::{
        approval::Offered,
        history::{CapsuleRecord, Event},
        scheduler::Observer,
        spec::ApprovalVerdict,
        state::RunState,
    },
    temporal::{
        ApprovalOutcome, ApprovalSignal, DEFAULT_NAMESPACE, DEFAULT_TASK_QUEUE, Endpoint, RunInput,
        RunResult,
        activity::{CallActivities, CapsuleSource},
        client,
    },
};

use super::{Global, exit::Code, registry};

/// Which engine drives a DAG run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum EngineKind {
    /// This process, over the local data directory.
    #[default]
    Embedded,
    /// A Temporal workflow, its calls made by `soma worker` processes.
    Temporal,
}

/// Where Temporal is.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TemporalArgs {
    /// The Temporal frontend (`--engine temporal`, `soma worker`): HOST:PORT.
    #[arg(long, env = "SOMA_TEMPORAL", value_name = "HOST:PORT")]
    temporal: Option<String>,
    /// The task queue runs are started on and workers poll.
    #[arg(long, default_value = DEFAULT_TASK_QUEUE, value_name = "QUEUE")]
    task_queue: String,
    /// The Temporal namespace.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    namespace: String,
}

impl TemporalArgs {
    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let address = self.temporal.clone().context(
            "the Temporal engine needs --temporal HOST:PORT (or SOMA_TEMPORAL), e.g. the \
             127.0.0.1:7233 of `temporal server start-dev`",
        )?;
        Ok(Endpoint {
            address,
            namespace: self.namespace.clone(),
            task_queue: self.task_queue.clone(),
            offload: None,
        })
    }

    /// [`TemporalArgs::endpoint`], offloading large payloads as `config`
    /// says (through its shared `[store]`: `engine`'s, if given).
    fn endpoint_for(
        &self,
        config: &soma_runtime::Config,
        engine: Option<&Engine>,
    ) -> anyhow::Result<Endpoint> {
        let opened = engine.and_then(|e| e.metering().shared_store());
        Ok(self.endpoint()?.offloading(config, opened)?)
    }
}

/// `soma worker`: serve DAG runs' workflows and calls from a Temporal
/// task queue until Ctrl-C / SIGTERM.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    temporal: TemporalArgs,
    /// Directory to look for capsule files with relative references in (repeatable).
    #[arg(long = "capsule-path", value_name = "DIR")]
    capsule_path: Vec<PathBuf>,
    /// For registry references: trust signatures by this public key (repeatable).
    #[arg(long = "key", value_name = "PUB")]
    keys: Vec<PathBuf>,
    #[command(flatten)]
    registry: registry::RegistryArgs,
}

pub(crate) fn worker(global: &Global, args: WorkerArgs) -> anyhow::Result<Code> {
    global.local_only("worker")?;
    let engine = Arc::new(global.dag_engine()?);
    let endpoint = args
        .temporal
        .endpoint_for(engine.config(), Some(&*engine))?;
    let sticky_timeout =
        std::time::Duration::from_millis(engine.config().orchestrator.sticky_timeout_ms);
    let source = WorkerSource {
        global: Global {
            config: global.config.clone(),
            data: global.data.clone(),
            server: None,
            token: None,
        },
        keys: args.keys,
        registry: args.registry,
        search: args.capsule_path,
    };
    let activities =
        CallActivities::new(engine, Arc::new(source)).offloading(endpoint.offload.is_some());
    eprintln!(
        "worker: Temporal {} namespace {} task queue {}",
        endpoint.address, endpoint.namespace, endpoint.task_queue
    );
    client::runtime()?.block_on(client::work(
        &endpoint,
        activities,
        sticky_timeout,
        shutdown(),
    ))?;
    eprintln!("worker stopped");
    Ok(Code::Ok)
}

/// Resolves when Ctrl-C or SIGTERM arrives.
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Capsules for the worker's calls, resolved the way `soma dag run` does.
struct WorkerSource {
    global: Global,
    keys: Vec<PathBuf>,
    registry: registry::RegistryArgs,
    search: Vec<PathBuf>,
}

impl std::fmt::Debug for WorkerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSource")
            .field("search", &self.search)
            .finish_non_exhaustive()
    }
}

impl CapsuleSource for WorkerSource {
    fn load(&self, engine: &Engine, record: &CapsuleRecord) -> anyhow::Result<Arc<Capsule>> {
        let source = registry::Source {
            keys: &self.keys,
            registry: &self.registry,
            search: self.search.clone(),
            hint: "; start the worker with --capsule-path DIR",
        };
        Ok(source
            .resolve(&self.global, engine, &record.reference)?
            .capsule)
    }
}

/// `soma dag run --engine temporal`: start the run's workflow, wait for it,
/// and hand back its state and charges (for the same report as embedded).
pub(crate) fn run(
    engine: &Engine,
    created: Event,
    run: String,
    concurrency: Option<usize>,
    args: &TemporalArgs,
    progress: Option<&dyn Observer>,
) -> anyhow::Result<(RunState, RunResult)> {
    let config = engine.config();
    let endpoint = args.endpoint_for(config, Some(engine))?;
    let input = RunInput {
        offload: endpoint.offload.is_some(),
        ..RunInput::new(run.clone(), created, config, concurrency)
    };
    let client = client::Blocking::connect(&endpoint)?;
    client.start(input)?;
    let Some(observer) = progress else {
        let result = client.result(&run)?;
        let state = result.state()?;
        return Ok((state, result));
    };
    eprintln!(
        "run {run} (Temporal workflow on task queue {})",
        endpoint.task_queue
    );
    // The events the workflow applied since the last look, as the
    // embedded engine's observer sees them as it commits them.
    let mut seen = 0;
    let mut show = |so_far: &RunResult| {
        if so_far.history.len() <= seen {
            return;
        }
        if let Ok(state) = so_far.state() {
            observer.committed(&state, &so_far.history[seen..]);
            seen = so_far.history.len();
        }
    };
    let result = client.result_watching(&run, PROGRESS_EVERY, &mut show)?;
    show(&result);
    let state = result.state()?;
    Ok((state, result))
}

/// How often `soma dag run --engine temporal` asks the workflow how far
/// the run is (a query, answered by a worker from the workflow's state).
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// `soma dag status RUN --engine temporal`: the run from its workflow.
pub(crate) fn status(
    config: &soma_runtime::Config,
    args: &TemporalArgs,
    run: &str,
) -> anyhow::Result<RunState> {
    let endpoint = args.endpoint_for(config, None)?;
    let result = client::Blocking::connect(&endpoint)?.status(run)?;
    Ok(result.state()?)
}

/// `soma dag approve|reject RUN NODE --engine temporal`: the workflow
/// checks the verdict and queues it in one step (its `approve` update).
pub(crate) fn verdict(
    config: &soma_runtime::Config,
    args: &TemporalArgs,
    run: &str,
    node: &str,
    verdict: ApprovalVerdict,
    reason: Option<String>,
) -> anyhow::Result<Offered> {
    let endpoint = args.endpoint_for(config, None)?;
    let client = client::Blocking::connect(&endpoint)?;
    let signal = ApprovalSignal {
        node: node.to_owned(),
        verdict,
        reason,
        by: "cli".to_owned(),
        tenant: None,
    };
    match client.approve(run, signal)? {
        ApprovalOutcome::Accepted => Ok(Offered::Accepted),
        ApprovalOutcome::AlreadyGiven => Ok(Offered::AlreadyGiven),
        ApprovalOutcome::Refused { error } => Err(error.into()),
        ApprovalOutcome::Unavailable { message } => Err(anyhow::anyhow!(message)),
    }
}

/// `soma dag cancel RUN --engine temporal`.
pub(crate) fn cancel(
    config: &soma_runtime::Config,
    args: &TemporalArgs,
    run: &str,
    json: bool,
) -> anyhow::Result<Code> {
    let endpoint = args.endpoint_for(config, None)?;
    client::Blocking::connect(&endpoint)?.cancel(run)?;
    if json {
        println!("{}", json!({ "run": run, "cancel": "requested" }));
    } else {
        println!("cancel requested from run {run}'s Temporal workflow");
    }
    Ok(Code::Ok)
}
