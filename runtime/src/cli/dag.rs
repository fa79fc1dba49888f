//! `soma dag …`: run, resume, watch and manage DAG runs.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use soma_runtime::{
    Engine,
    dag::{
        history::{Event, RunStatus},
        journal::Journal,
        scheduler::{self, Loaded, Observer, Settings, Unloadable},
        spec::{self, ApprovalVerdict, Spec},
        state::{Role, RunState, Status},
        status::RunPhase,
    },
    ledger::Filter,
};

use soma_host_api::log::{escape, escape_keeping_lines};

use super::{
    Global,
    exit::Code,
    registry,
    temporal::{EngineKind, TemporalArgs},
};

/// Run, resume and inspect DAG runs.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum DagCommand {
    /// Validate a spec and run it, with live progress; prints the output.
    Run(RunArgs),
    /// Continue an interrupted run (after Ctrl-C, SIGTERM or kill -9).
    Resume(ResumeArgs),
    /// Check a spec (and its capsules) without running anything.
    Validate(ValidateArgs),
    /// Show a run: status, every node, the gate verdicts.
    Status(RunRef),
    /// List runs, newest first.
    Ls(LsArgs),
    /// A run's history: every transition and the capsules' log lines.
    Logs(LogsArgs),
    /// Cancel a run: nothing new starts; it ends as cancelled.
    Cancel(RunRef),
    /// Approve a node awaiting approval (its spec's `approval:`): it
    /// succeeds and its dependents run.
    Approve(VerdictArgs),
    /// Reject a node awaiting approval: it fails (`approval-rejected`) and
    /// the run's failure policy applies.
    Reject(VerdictArgs),
    /// Print the spec format's JSON Schema.
    Schema,
}

/// Where a run's capsules come from and how it is driven.
#[derive(Debug, clap::Args)]
pub(crate) struct DriveArgs {
    /// Directory to look for capsule files in (repeatable; after the spec's own directory).
    #[arg(long = "capsule-path", value_name = "DIR")]
    capsule_path: Vec<PathBuf>,
    /// For registry references: trust signatures by this public key (repeatable).
    #[arg(long = "key", value_name = "PUB")]
    keys: Vec<PathBuf>,
    #[command(flatten)]
    registry: registry::RegistryArgs,
    /// Calls at once (default: the spec's policy.concurrency, else the number of cores).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Write output.json, run.json (timeline), cost.json/cost.md and any
    /// `files` the output holds into this directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print one JSON document at the end (no progress display).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// The spec (YAML or JSON).
    spec: PathBuf,
    /// The run's input: a JSON object.
    #[arg(long, short, default_value = "{}")]
    input: String,
    /// Set one input (repeatable): NAME=VALUE (VALUE is JSON if it parses, else a string).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
    /// Run id (default: a fresh one).
    #[arg(long)]
    run_id: Option<String>,
    /// The tenant charged.
    #[arg(long, default_value = "local")]
    tenant: String,
    #[command(flatten)]
    drive: DriveArgs,
    /// What drives the run: this process, or a Temporal workflow (with --temporal).
    #[arg(long, value_enum, default_value_t)]
    engine: EngineKind,
    #[command(flatten)]
    temporal: TemporalArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ResumeArgs {
    /// The run id.
    run: String,
    #[command(flatten)]
    drive: DriveArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ValidateArgs {
    /// The spec (YAML or JSON).
    spec: PathBuf,
    /// Directory to look for capsule files in (repeatable).
    #[arg(long = "capsule-path", value_name = "DIR")]
    capsule_path: Vec<PathBuf>,
    /// Only check the spec itself, not its capsules.
    #[arg(long)]
    offline: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunRef {
    /// The run id.
    run: String,
    /// JSON output.
    #[arg(long)]
    json: bool,
    /// What drives the run: this process, or a Temporal workflow (with --temporal).
    #[arg(long, value_enum, default_value_t)]
    engine: EngineKind,
    #[command(flatten)]
    temporal: TemporalArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerdictArgs {
    /// The run id.
    run: String,
    /// The node awaiting approval.
    node: String,
    /// Why (journaled with the verdict; needed to reject).
    #[arg(long)]
    reason: Option<String>,
    /// JSON output.
    #[arg(long)]
    json: bool,
    /// What drives the run: this process, or a Temporal workflow (with --temporal).
    #[arg(long, value_enum, default_value_t)]
    engine: EngineKind,
    #[command(flatten)]
    temporal: TemporalArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct LsArgs {
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    /// The run id.
    run: String,
    /// Only this node (and its instances / plan nodes).
    #[arg(long)]
    node: Option<String>,
    /// One JSON event per line.
    #[arg(long)]
    json: bool,
}

pub(crate) fn dag(global: &Global, cmd: DagCommand) -> anyhow::Result<Code> {
    let json = match &cmd {
        DagCommand::Run(a) => a.drive.json,
        DagCommand::Resume(a) => a.drive.json,
        DagCommand::Status(r) | DagCommand::Cancel(r) => r.json,
        DagCommand::Approve(v) | DagCommand::Reject(v) => v.json,
        DagCommand::Ls(a) => a.json,
        // `logs --json` prints JSON lines, not one object.
        DagCommand::Logs(_) | DagCommand::Validate(_) | DagCommand::Schema => false,
    };
    super::or_json_error(json, dispatch(global, cmd))
}

fn dispatch(global: &Global, cmd: DagCommand) -> anyhow::Result<Code> {
    if let Some(remote) = global.remote()? {
        return match cmd {
            DagCommand::Run(args) => {
                let input = parse_input(&args)?;
                let (spec, _) = read_spec(&args.spec)?;
                let spec = serde_json::to_value(&spec)?;
                super::remote::dag_run(&remote, &spec, &input, args.drive.json)
            }
            DagCommand::Status(r) => super::remote::dag_status(&remote, &r.run, r.json),
            DagCommand::Cancel(r) => super::remote::dag_cancel(&remote, &r.run),
            DagCommand::Approve(v) => super::remote::dag_verdict(
                &remote,
                &v.run,
                &v.node,
                ApprovalVerdict::Approve,
                v.reason,
            ),
            DagCommand::Reject(v) => super::remote::dag_verdict(
                &remote,
                &v.run,
                &v.node,
                ApprovalVerdict::Reject,
                v.reason,
            ),
            _ => {
                global.local_only("this dag command")?;
                Ok(Code::Ok)
            }
        };
    }
    match cmd {
        DagCommand::Run(args) => run(global, args),
        DagCommand::Resume(args) => resume(global, args),
        DagCommand::Validate(args) => validate(global, args),
        DagCommand::Status(args) => status(global, args),
        DagCommand::Ls(args) => ls(global, args),
        DagCommand::Logs(args) => logs(global, args),
        DagCommand::Cancel(args) => cancel(global, args),
        DagCommand::Approve(args) => verdict(global, args, ApprovalVerdict::Approve),
        DagCommand::Reject(args) => verdict(global, args, ApprovalVerdict::Reject),
        DagCommand::Schema => {
            print!("{}", Spec::json_schema());
            Ok(Code::Ok)
        }
    }
}

/// DAG runs make many calls: a pool pays for itself unless the config chose.
fn engine(global: &Global) -> anyhow::Result<Engine> {
    global.dag_engine()
}

fn read_spec(path: &Path) -> anyhow::Result<(Spec, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let origin = path.display().to_string();
    let spec = spec::parse(&text, &origin)?;
    Ok((spec, origin))
}

/// [`read_spec`] for a run on this node: parsed within the parse budget
/// of `[dag]` and held to its ceilings, as the daemon holds specs sent to
/// it (a value above a ceiling is an invalid spec naming the `dag.*` key).
fn read_spec_within(path: &Path, ceilings: &spec::Ceilings) -> anyhow::Result<(Spec, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let origin = path.display().to_string();
    let mut spec = spec::parse_within(&text, &origin, &ceilings.budget())?;
    spec.within(ceilings, &origin)?;
    Ok((spec, origin))
}

/// Capsules of a run: the loaded ones, and those that failed to load but
/// are used only by `catch: true` nodes.
type Capsules = (BTreeMap<String, Loaded>, BTreeMap<String, Unloadable>);

/// Find and load every capsule the spec names. With `tolerate`, a capsule
/// that fails to load but is used only by `catch: true` nodes does not stop
/// the run: it is returned as [`Unloadable`] (with a warning), and those
/// nodes end with the load error as their caught failure.
#[allow(clippy::too_many_arguments)]
fn load_capsules(
    global: &Global,
    engine: &Engine,
    spec: &Spec,
    spec_dir: &Path,
    drive_path: &[PathBuf],
    keys: &[PathBuf],
    registry_args: &registry::RegistryArgs,
    tolerate: bool,
) -> anyhow::Result<Capsules> {
    let mut out = BTreeMap::new();
    let mut unloadable = BTreeMap::new();
    for (alias, reference) in &spec.capsules {
        let loaded = load_one(
            global,
            engine,
            reference,
            spec_dir,
            drive_path,
            keys,
            registry_args,
        )
        .with_context(|| format!("capsule `{alias}` ({reference})"));
        match loaded {
            Ok(l) => {
                out.insert(alias.clone(), l);
            }
            Err(e) if tolerate && scheduler::tolerates_unloadable(spec, alias) => {
                let error = format!("{e:#}");
                tracing::warn!("{error}; its nodes have catch: true, so the run goes on");
                unloadable.insert(
                    alias.clone(),
                    Unloadable {
                        reference: reference.clone(),
                        error,
                    },
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok((out, unloadable))
}

/// Resolve one capsule reference of a spec (or of a run being resumed):
/// a relative file in `spec_dir`, then each of `search`.
fn load_one(
    global: &Global,
    engine: &Engine,
    reference: &str,
    spec_dir: &Path,
    search: &[PathBuf],
    keys: &[PathBuf],
    registry_args: &registry::RegistryArgs,
) -> anyhow::Result<Loaded> {
    let source = registry::Source {
        keys,
        registry: registry_args,
        search: std::iter::once(spec_dir.to_owned())
            .chain(search.iter().cloned())
            .collect(),
        hint: "; add --capsule-path DIR",
    };
    let resolved = source.resolve(global, engine, reference)?;
    Ok(Loaded {
        reference: resolved.pinned.to_string(),
        capsule: resolved.capsule,
    })
}

fn parse_input(args: &RunArgs) -> anyhow::Result<Value> {
    let mut input: Value =
        serde_json::from_str(&args.input).context("--input must be a JSON object")?;
    let obj = input
        .as_object_mut()
        .context("--input must be a JSON object")?;
    for s in &args.set {
        let (k, v) = s
            .split_once('=')
            .with_context(|| format!("--set {s}: expected NAME=VALUE"))?;
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        obj.insert(k.to_owned(), v);
    }
    Ok(input)
}

fn run(global: &Global, args: RunArgs) -> anyhow::Result<Code> {
    if let Some(r) = &args.run_id {
        anyhow::ensure!(
            soma_runtime::names::is_plain_id(r),
            "--run-id: 1–64 letters, digits, '-' or '_'"
        );
    }
    let input = parse_input(&args)?;
    let ceilings = global.config()?.dag;
    let (spec, origin) = match read_spec_within(&args.spec, &ceilings) {
        Ok(s) => s,
        Err(e) => return invalid(&e, args.drive.json),
    };
    let engine = engine(global)?;
    let spec_dir = args.spec.parent().unwrap_or(Path::new("."));
    let (loaded, unloadable) = load_capsules(
        global,
        &engine,
        &spec,
        spec_dir,
        &args.drive.capsule_path,
        &args.drive.keys,
        &args.drive.registry,
        true,
    )?;
    if args.engine == EngineKind::Temporal {
        return run_on_temporal(&engine, &spec, &origin, &input, &loaded, &unloadable, &args);
    }
    let run = match scheduler::create_with(
        &engine,
        &spec,
        &origin,
        &input,
        &loaded,
        &unloadable,
        &args.tenant,
        args.run_id.as_deref(),
    ) {
        Ok(run) => run,
        Err(e @ (scheduler::DagError::Spec(_) | scheduler::DagError::Kind { .. })) => {
            return invalid(&e.into(), args.drive.json);
        }
        Err(e) => return Err(e.into()),
    };
    let capsules = loaded
        .into_iter()
        .map(|(alias, l)| (alias, l.capsule))
        .collect();
    drive(global, &engine, &run, &capsules, &args.drive)
}

/// `soma dag run --engine temporal`: the same checks and pins as an
/// embedded run, then one workflow drives it; the same report at the end
/// (its cost from the charges the workers reported).
fn run_on_temporal(
    engine: &Engine,
    spec: &Spec,
    origin: &str,
    input: &Value,
    loaded: &BTreeMap<String, Loaded>,
    unloadable: &BTreeMap<String, Unloadable>,
    args: &RunArgs,
) -> anyhow::Result<Code> {
    let created = match scheduler::created(spec, origin, input, loaded, unloadable, &args.tenant) {
        Ok(created) => created,
        Err(e @ (scheduler::DagError::Spec(_) | scheduler::DagError::Kind { .. })) => {
            return invalid(&e.into(), args.drive.json);
        }
        Err(e) => return Err(e.into()),
    };
    let run = args
        .run_id
        .clone()
        .unwrap_or_else(soma_runtime::call::new_run_id);
    // Live progress as on the embedded engine (nothing with --json).
    let progress = (!args.drive.json).then(|| Progress::new(false));
    let (state, result) = super::temporal::run(
        engine,
        created,
        run,
        args.drive.concurrency,
        &args.temporal,
        progress.as_ref().map(|p| p as &dyn Observer),
    )?;
    if let Some(p) = progress {
        p.bar.finish_and_clear();
    }
    report_with(&state, cost_of(&result.entries), &args.drive)
}

fn invalid(e: &anyhow::Error, json: bool) -> anyhow::Result<Code> {
    if json {
        println!(
            "{}",
            json!({ "ok": false, "error": { "class": "invalid-spec", "message": format!("{e:#}") } })
        );
    } else {
        eprintln!("error: invalid DAG:\n{e:#}");
    }
    Ok(Code::InvalidSpec)
}

/// Continue a run. Idempotent: a run that has already finished is not
/// driven again; its result is reported as when it finished (exit 0 for a
/// succeeded run), so a supervisor may always resume after a crash.
fn resume(global: &Global, args: ResumeArgs) -> anyhow::Result<Code> {
    let engine = engine(global)?;
    let journal = Journal::new(engine.data().database().clone());
    let history = journal.history(&args.run)?;
    let state = RunState::replay(&args.run, &history)?;
    if state.finished.is_some() {
        if !args.drive.json {
            eprintln!("run {} had already finished; nothing to resume", args.run);
        }
        return report(&engine, &state, &args.drive);
    }
    let mut capsules = BTreeMap::new();
    for (alias, record) in &journal.pinned_capsules(&args.run)? {
        if record.load_error.is_some() {
            // It did not load when the run started; its nodes fail as then.
            continue;
        }
        let loaded = load_one(
            global,
            &engine,
            &record.reference,
            Path::new("."),
            &args.drive.capsule_path,
            &args.drive.keys,
            &args.drive.registry,
        )
        .with_context(|| format!("capsule `{alias}` ({})", record.reference))?;
        capsules.insert(alias.clone(), loaded.capsule);
    }
    drive(global, &engine, &args.run, &capsules, &args.drive)
}

/// Drive a created run to its end (or an interruption) with progress,
/// signals and the final report.
fn drive(
    global: &Global,
    engine: &Engine,
    run: &str,
    capsules: &BTreeMap<String, Arc<soma_runtime::Capsule>>,
    args: &DriveArgs,
) -> anyhow::Result<Code> {
    let config = engine.config();
    let settings = Settings {
        concurrency: args.concurrency,
        render_limit: config
            .dag
            .max_rendered_input_bytes
            .min(config.limits.max_input_bytes),
        ceilings: config.dag,
        ..Settings::default()
    };
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, settings.interrupt.clone())
            .context("installing the signal handler")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, settings.cancel.clone())
        .context("installing the signal handler")?;
    let live = LiveFile::create(global, run)?;
    let progress = Progress::new(args.json);
    if !args.json {
        eprintln!("run {run}");
    }
    let result = scheduler::drive(engine, run, capsules, &settings, &progress);
    drop(live);
    progress.bar.finish_and_clear();
    let (state, _) = result?;
    report(engine, &state, args)
}

/// `<data>/dag/live/<run>.pid` while a process drives the run, so that
/// `soma dag cancel` can reach it (the database is locked meanwhile).
struct LiveFile(PathBuf);

impl LiveFile {
    fn create(global: &Global, run: &str) -> anyhow::Result<Self> {
        let dir = global.data_dir()?.root().join("dag").join("live");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{run}.pid"));
        std::fs::write(&path, std::process::id().to_string())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path))
    }

    fn pid(global: &Global, run: &str) -> Option<i32> {
        let path = global
            .data_dir()
            .ok()?
            .root()
            .join("dag")
            .join("live")
            .join(format!("{run}.pid"));
        let pid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        let alive = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
        // After a kill -9 the file stays behind and the pid may be reused:
        // where /proc tells, the process must be a soma.
        let soma = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map_or(true, |comm| comm.trim() == "soma");
        (alive && soma).then_some(pid)
    }
}

impl Drop for LiveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Live progress: a bar over the nodes, a line per notable transition
/// (plain lines on stderr when it is not a terminal; nothing with --json).
struct Progress {
    bar: ProgressBar,
    quiet: bool,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} nodes  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(100));
            bar
        };
        Self { bar, quiet }
    }

    fn line(&self, line: &str) {
        if self.quiet {
        } else if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}

impl Observer for Progress {
    fn committed(&self, state: &RunState, events: &[Event]) {
        let (all, done) = state.progress();
        self.bar.set_length(all as u64);
        self.bar.set_position(done as u64);
        let chatty = all <= 200;
        for e in events {
            let quiet = |node: &str| !chatty || is_instance(state, node) || is_gate(state, node);
            if let Some(line) = super::progress::progress_line(e, &quiet) {
                self.line(&line);
            }
        }
        let running: Vec<&str> = state
            .nodes()
            .iter()
            .filter(|n| matches!(n.status, Status::Running { .. }))
            .take(4)
            .map(|n| n.id.as_str())
            .collect();
        self.bar.set_message(running.join(" "));
    }
}

/// Gates show their verdict line instead.
fn is_gate(state: &RunState, id: &str) -> bool {
    state.node(id).is_some_and(|n| n.spec.gate.is_some())
}

fn is_instance(state: &RunState, id: &str) -> bool {
    state.node(id).is_some_and(|n| n.role == Role::Instance)
}

/// The end of a run: output, timeline, cost; files under --out.
fn report(engine: &Engine, state: &RunState, args: &DriveArgs) -> anyhow::Result<Code> {
    report_with(state, cost(engine, &state.run)?, args)
}

/// [`report`] with the run's cost given.
fn report_with(state: &RunState, cost: Value, args: &DriveArgs) -> anyhow::Result<Code> {
    let mut doc = serde_json::to_value(state.report())?;
    doc["cost"] = cost.clone();
    if let Some(dir) = &args.out {
        write_out(dir, &doc)?;
    }
    let finished = state.finished.as_ref();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        eprint!("{}", render_timeline(state));
        if let Some(rate) = state.auto_approval_rate() {
            eprintln!(
                "gates: {} verdicts, first-round approval rate {:.0}%",
                state.verdicts.len(),
                rate * 100.0
            );
        }
        eprintln!(
            "cost: {} calls, fuel {}, wall {} ms, {} tokens, ${:.6}",
            cost["calls"],
            cost["fuel"],
            cost["wall_ms"],
            cost["tokens"],
            cost["usd"].as_f64().unwrap_or(0.0)
        );
        match finished {
            Some((RunStatus::Succeeded, Some(o), ..)) => {
                println!("{}", serde_json::to_string_pretty(o)?);
                eprintln!("run {} succeeded", state.run);
            }
            Some((status, _, error, _)) => eprintln!(
                "run {} {}: {}",
                state.run,
                status.name(),
                escape_keeping_lines(error.as_deref().unwrap_or(""))
            ),
            None if state.awaiting_approval() > 0 => {
                for p in state.pending_approvals() {
                    eprintln!(
                        "run {} awaits a verdict on node {}: soma dag approve {} {} (or reject … --reason R)",
                        state.run, p.node, state.run, p.node
                    );
                }
                eprintln!("then continue it with: soma dag resume {}", state.run);
            }
            None => eprintln!(
                "run {} interrupted; continue it with: soma dag resume {}",
                state.run, state.run
            ),
        }
        if let Some(dir) = &args.out {
            eprintln!("wrote {}", dir.display());
        }
    }
    Ok(match finished.map(|f| f.0) {
        Some(RunStatus::Succeeded) => Code::Ok,
        Some(RunStatus::Failed) => Code::DagFailed,
        Some(RunStatus::Cancelled) => Code::DagCancelled,
        None => Code::DagInterrupted,
    })
}

fn render_timeline(state: &RunState) -> String {
    let t0 = state.created_ms;
    let mut out = String::from(
        "\nnode                         status      att rnd   start     end      fuel\n",
    );
    let mut instances: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for n in state.nodes().iter().filter(|n| !n.retired) {
        if n.role == Role::Instance {
            let parent = n.id.rsplit_once('[').map_or(n.id.as_str(), |(p, _)| p);
            let e = instances.entry(parent.to_owned()).or_default();
            e.0 += 1;
            e.1 += usize::from(n.status == Status::Succeeded);
            continue;
        }
        let ms = |t: Option<u64>| {
            t.map_or_else(|| "-".to_owned(), |t| format!("{}", t.saturating_sub(t0)))
        };
        let _ = writeln!(
            out,
            "{:<28} {:<11} {:>3} {:>3} {:>7} {:>7} {:>9}",
            n.id,
            n.status.name(),
            n.attempts,
            n.round,
            ms(n.started_ms),
            ms(n.ended_ms),
            n.fuel
        );
    }
    for (parent, (all, ok)) in instances {
        let _ = writeln!(out, "  {parent}[…]: {all} calls, {ok} succeeded");
    }
    out
}

/// What the run cost, from the ledger.
fn cost(engine: &Engine, run: &str) -> anyhow::Result<Value> {
    let entries = engine.metering().reports().ls(&Filter {
        run: Some(run.to_owned()),
        limit: None,
        ..Filter::default()
    })?;
    Ok(cost_of(&entries))
}

/// A run's cost from its ledger entries.
fn cost_of(entries: &[soma_runtime::ledger::Entry]) -> Value {
    use soma_runtime::ledger::Kind;
    let mut by_node: BTreeMap<String, (u64, u64, u64, u64)> = BTreeMap::new();
    let (mut fuel, mut wall, mut tokens, mut micros, mut calls) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for e in entries {
        let row = by_node.entry(e.node.clone()).or_default();
        match e.kind {
            Kind::Fuel => {
                fuel += e.quantity;
                row.0 += e.quantity;
            }
            Kind::WallTime => {
                wall += e.quantity;
                calls += 1;
                row.1 += e.quantity;
            }
            Kind::LlmTokensInput | Kind::LlmTokensOutput => {
                tokens += e.quantity;
                row.2 += e.quantity;
            }
            _ => {}
        }
        micros += e.cost_micros;
        row.3 += e.cost_micros;
    }
    json!({
        "calls": calls,
        "fuel": fuel,
        "wall_ms": wall / 1000,
        "tokens": tokens,
        "usd": micros as f64 / 1e6,
        "entries": entries.len(),
        "by_node": by_node.into_iter().map(|(node, (f, w, t, m))| json!({
            "node": node, "fuel": f, "wall_us": w, "tokens": t, "usd": m as f64 / 1e6,
        })).collect::<Vec<_>>(),
    })
}

fn write_out(dir: &Path, doc: &Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &Path, text: &str| {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    write(Path::new("output.json"), &pretty(&doc["output"]))?;
    write(Path::new("cost.json"), &pretty(&doc["cost"]))?;
    write(Path::new("cost.md"), &cost_markdown(&doc["cost"]))?;
    let mut run = doc.clone();
    if let Some(o) = run.as_object_mut() {
        o.remove("output");
    }
    write(Path::new("run.json"), &pretty(&run))?;
    if let Some(files) = doc["output"].get("files").and_then(Value::as_object) {
        for (name, content) in files {
            let rel = Path::new(name);
            let safe =
                !name.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
            anyhow::ensure!(
                safe,
                "the output names a file `{name}` outside the output directory; refused"
            );
            let text = match content {
                Value::String(s) => s.clone(),
                other => pretty(other),
            };
            write(&Path::new("artifact").join(rel), &text)?;
        }
    }
    Ok(())
}

fn cost_markdown(cost: &Value) -> String {
    let mut md = String::from(
        "# Cost report\n\n| node | fuel | wall µs | tokens | USD |\n|---|---:|---:|---:|---:|\n",
    );
    for row in cost["by_node"].as_array().into_iter().flatten() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.6} |",
            row["node"].as_str().unwrap_or("?"),
            row["fuel"],
            row["wall_us"],
            row["tokens"],
            row["usd"].as_f64().unwrap_or(0.0)
        );
    }
    let _ = writeln!(
        md,
        "\n**Total**: {} calls, fuel {}, wall {} ms, {} tokens, ${:.6}",
        cost["calls"],
        cost["fuel"],
        cost["wall_ms"],
        cost["tokens"],
        cost["usd"].as_f64().unwrap_or(0.0)
    );
    md
}

fn validate(global: &Global, args: ValidateArgs) -> anyhow::Result<Code> {
    let ceilings = global.config()?.dag;
    let (spec, origin) = match read_spec_within(&args.spec, &ceilings) {
        Ok(s) => s,
        Err(e) => return invalid(&e, false),
    };
    let mut grants = String::new();
    if !args.offline {
        let engine = global.engine(None)?;
        let spec_dir = args.spec.parent().unwrap_or(Path::new("."));
        let (loaded, _) = load_capsules(
            global,
            &engine,
            &spec,
            spec_dir,
            &args.capsule_path,
            &[],
            &registry::RegistryArgs::default(),
            false,
        )?;
        if let Err(e) = soma_runtime::dag::kinds::check_kinds(&spec.nodes, |alias| {
            loaded
                .get(alias)
                .map(|l| l.capsule.manifest().capsule_kind())
        }) {
            return invalid(&scheduler::DagError::from(e).into(), false);
        }
        grants = node_grants(&engine, &spec, &loaded);
    }
    println!(
        "{origin}: ok ({} nodes, {} capsules)",
        spec.nodes.len(),
        spec.capsules.len()
    );
    print!("{grants}");
    Ok(Code::Ok)
}

/// What each node's capsule is granted — its wants ∩ the operator's
/// `[policy]` ∩ the node's `capabilities:` — one line per node, for
/// `soma dag validate` (nodes a planner adds are not known yet).
fn node_grants(engine: &Engine, spec: &Spec, loaded: &BTreeMap<String, Loaded>) -> String {
    let mut out =
        String::from("grants (the capsule's wants ∩ [policy] ∩ the node's capabilities):\n");
    for node in &spec.nodes {
        let Some(l) = loaded.get(&node.capsule) else {
            continue;
        };
        let mut options = soma_runtime::CallOptions::for_capsule(engine, &l.capsule);
        if !node.capabilities.is_empty() {
            options.restrict(engine, &l.capsule, &node.capabilities);
        }
        let words = options.grants.words();
        let granted = if words.is_empty() {
            "nothing".to_owned()
        } else {
            words.join(", ")
        };
        let _ = write!(out, "  {:<16} {:<16} {granted}", node.id, node.capsule);
        if !node.capabilities.is_empty() {
            let _ = write!(out, "  (capabilities: {})", node.capabilities);
        }
        out.push('\n');
    }
    out
}

fn replay(global: &Global, run: &str) -> anyhow::Result<(RunState, Vec<Event>)> {
    let journal = Journal::new(global.data_dir()?.database().clone());
    let history = journal.history(run)?;
    Ok((RunState::replay(run, &history)?, history))
}

fn status(global: &Global, args: RunRef) -> anyhow::Result<Code> {
    if args.engine == EngineKind::Temporal {
        let state = super::temporal::status(&global.config()?, &args.temporal, &args.run)?;
        return print_status(&state, args.json, RunPhase::Running);
    }
    if let Some(pid) = LiveFile::pid(global, &args.run) {
        anyhow::bail!(
            "run {} is being driven by soma pid {pid}, which holds the database; its progress is on that terminal (or use the daemon)",
            args.run
        );
    }
    let (state, _) = replay(global, &args.run)?;
    print_status(&state, args.json, RunPhase::Interrupted)
}

/// What `soma dag status` prints of a run; `unfinished`: what a run that
/// has not ended is (interrupted here; running on Temporal).
fn print_status(state: &RunState, json: bool, unfinished: RunPhase) -> anyhow::Result<Code> {
    let status = state
        .finished
        .as_ref()
        .map_or(unfinished.name(), |f| f.0.name());
    if json {
        let mut report = state.report();
        if state.finished.is_none() {
            report.status = unfinished;
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let (all, done) = state.progress();
        println!(
            "run {} ({}) {status}: {done}/{all} nodes done",
            state.run, state.spec.name
        );
        print!("{}", render_timeline(state));
    }
    Ok(Code::Ok)
}

fn ls(global: &Global, args: LsArgs) -> anyhow::Result<Code> {
    let journal = Journal::new(global.data_dir()?.database().clone());
    let mut runs = journal.runs()?;
    for r in &mut runs {
        if r.status == RunPhase::Running && LiveFile::pid(global, &r.run).is_none() {
            r.status = RunPhase::Interrupted;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(Code::Ok);
    }
    println!(
        "{:<28} {:<16} {:<12} {:>11}  tenant",
        "run", "name", "status", "nodes"
    );
    for r in runs {
        println!(
            "{:<28} {:<16} {:<12} {:>5}/{:<5}  {}",
            r.run, r.name, r.status, r.done, r.nodes, r.tenant
        );
    }
    Ok(Code::Ok)
}

fn logs(global: &Global, args: LogsArgs) -> anyhow::Result<Code> {
    let (state, history) = replay(global, &args.run)?;
    let t0 = state.created_ms;
    let matches = |e: &Event| match (&args.node, e.node()) {
        (None, _) => true,
        (Some(want), Some(n)) => {
            n == want || n.starts_with(&format!("{want}.")) || n.starts_with(&format!("{want}["))
        }
        (Some(_), None) => false,
    };
    for e in history.iter().filter(|e| matches(e)) {
        if args.json {
            println!("{}", serde_json::to_string(e)?);
            continue;
        }
        let at = e.time_ms().saturating_sub(t0);
        let line = match e {
            Event::Created { origin, .. } => format!("created from {origin}"),
            Event::Started { node, attempt, .. } => format!("{node}: started attempt {attempt}"),
            Event::Restarted { node, attempt, .. } => {
                format!("{node}: attempt {attempt} called again after a restart")
            }
            Event::Withdrawn { node, attempt, .. } => {
                format!("{node}: attempt {attempt} withdrawn before it ran (the run was stopping)")
            }
            Event::Succeeded { node, call, .. } => {
                format!(
                    "{node}: succeeded ({} µs, fuel {})",
                    call.wall_us,
                    call.fuel.unwrap_or(0)
                )
            }
            Event::Failed {
                node,
                failure,
                retry_at_ms,
                ..
            } => format!(
                "{node}: failed [{}] {}{}",
                failure.class,
                escape(&failure.message),
                if retry_at_ms.is_some() {
                    " (will retry)"
                } else {
                    ""
                }
            ),
            Event::Expanded { node, plan, .. } => {
                format!("{node}: planned {} nodes", plan.nodes.len())
            }
            Event::FannedOut { node, items, .. } => {
                format!("{node}: fanned out to {}", items.len())
            }
            Event::Verdict {
                node,
                round,
                verdict,
                ..
            } => format!(
                "{node}: round {round} {} (score {}) feedback: {}",
                if verdict.approved {
                    "approved"
                } else {
                    "rejected"
                },
                verdict.score,
                escape(&verdict.feedback.to_string())
            ),
            Event::Reworked { node, round, .. } => format!("{node}: reworked, round {round}"),
            Event::AwaitingApproval {
                node, deadline_ms, ..
            } => match deadline_ms {
                Some(at) => format!(
                    "{node}: awaits a verdict (on_timeout in {} ms)",
                    at.saturating_sub(e.time_ms())
                ),
                None => format!("{node}: awaits a verdict"),
            },
            Event::Approval {
                node,
                verdict,
                reason,
                by,
                ..
            } => format!(
                "{node}: {verdict} by {}{}",
                escape(by),
                reason
                    .as_deref()
                    .map(|r| format!(": {}", escape(r)))
                    .unwrap_or_default()
            ),
            Event::CancelRequested { .. } => "cancel requested".to_owned(),
            Event::Finished { status, error, .. } => {
                format!(
                    "finished: {}{}",
                    status.name(),
                    error
                        .as_deref()
                        .map(|e| format!(" ({})", escape(e)))
                        .unwrap_or_default()
                )
            }
        };
        println!("{at:>7} ms  {line}");
        let call = match e {
            Event::Succeeded { call, .. }
            | Event::Failed { call, .. }
            | Event::Expanded { call, .. }
            | Event::Verdict { call, .. }
            | Event::AwaitingApproval { call, .. } => Some(call),
            _ => None,
        };
        for l in call.into_iter().flat_map(|c| &c.logs) {
            println!("            {}", escape(l));
        }
    }
    Ok(Code::Ok)
}

fn cancel(global: &Global, args: RunRef) -> anyhow::Result<Code> {
    if args.engine == EngineKind::Temporal {
        return super::temporal::cancel(&global.config()?, &args.temporal, &args.run, args.json);
    }
    if let Some(pid) = LiveFile::pid(global, &args.run) {
        // The driving process records the cancellation itself.
        // SAFETY: kill(2) sends a signal; SIGUSR1 is handled by `soma dag run`.
        if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
            anyhow::bail!(
                "could not signal soma pid {pid}: {}",
                std::io::Error::last_os_error()
            );
        }
        if args.json {
            println!(
                "{}",
                json!({ "run": args.run, "cancel": "requested", "pid": pid })
            );
        } else {
            println!(
                "cancel requested from soma pid {pid}, which drives run {}",
                args.run
            );
        }
        return Ok(Code::Ok);
    }
    let engine = global.engine(None)?;
    scheduler::cancel_idle(&engine, &args.run)?;
    if args.json {
        println!("{}", json!({ "run": args.run, "cancel": "done" }));
    } else {
        println!("run {} cancelled", args.run);
    }
    Ok(Code::Ok)
}

/// `soma dag approve|reject RUN NODE`: hand the verdict in. Embedded: it is
/// recorded in the run's history at once (the run continues with `soma dag
/// resume`); Temporal: the workflow's `approve` update, which checks and
/// queues it in one step.
fn verdict(global: &Global, args: VerdictArgs, verdict: ApprovalVerdict) -> anyhow::Result<Code> {
    anyhow::ensure!(
        verdict == ApprovalVerdict::Approve
            || args.reason.as_deref().is_some_and(|r| !r.is_empty()),
        "a rejection needs --reason R (it is journaled and shown in the run's report)"
    );
    let (offered, hint) = if args.engine == EngineKind::Temporal {
        let offered = super::temporal::verdict(
            &global.config()?,
            &args.temporal,
            &args.run,
            &args.node,
            verdict,
            args.reason,
        )?;
        (offered, String::new())
    } else {
        if let Some(pid) = LiveFile::pid(global, &args.run) {
            anyhow::bail!(
                "run {} is being driven by soma pid {pid}, which holds the database; it stops by \
                 itself once only verdicts are left (or serve runs with the daemon and use --server)",
                args.run
            );
        }
        let engine = global.engine(None)?;
        let journal = Journal::new(engine.data().database().clone());
        let offered = scheduler::offer_approval(
            &journal,
            &args.run,
            &args.node,
            verdict,
            args.reason,
            "cli",
            None,
        )?;
        scheduler::record_verdicts_idle(&engine, &args.run)?;
        (
            offered,
            format!("; continue the run with: soma dag resume {}", args.run),
        )
    };
    let state = match offered {
        soma_runtime::dag::approval::Offered::Accepted => "accepted",
        soma_runtime::dag::approval::Offered::AlreadyGiven => "already-given",
    };
    if args.json {
        println!(
            "{}",
            json!({ "run": args.run, "node": args.node, "state": state, "verdict": verdict })
        );
    } else {
        println!(
            "{verdict} on node {} of run {}: {state}{hint}",
            args.node, args.run
        );
    }
    Ok(Code::Ok)
}
