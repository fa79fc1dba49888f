//! `soma run`: run a capsule once.

use std::{io::IsTerminal as _, path::PathBuf};

use anyhow::Context as _;
use soma_host_api::{
    log::{escape, escape_keeping_lines},
    wasi::DirGrant,
};
use soma_runtime::{CallOptions, config::Allocator};

use super::{Global, exit::Code, human_bytes};

/// Run a capsule once and print its output (stdout) and usage (stderr, or
/// everything as one JSON object with --json).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The capsule: a component file (.wasm), or a registry reference
    /// (registry/repo:tag or @sha256:…) that is pulled and verified first.
    capsule: String,
    /// For a registry reference: trust signatures by this public key
    /// (repeatable); default: the config's [[trust.rules]].
    #[arg(long = "key", value_name = "PUB")]
    keys: Vec<PathBuf>,
    #[command(flatten)]
    registry: super::registry::RegistryArgs,
    /// Input passed to run() (usually JSON).
    #[arg(long, short, default_value = "{}", conflicts_with = "input_file")]
    input: String,
    /// Read the input from a file ('-' for stdin).
    #[arg(long, value_name = "FILE")]
    input_file: Option<PathBuf>,
    /// Fuel budget (overrides limits.fuel).
    #[arg(long)]
    fuel: Option<u64>,
    /// Wall-clock deadline in ms (overrides limits.timeout_ms).
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Memory limit in MiB (overrides limits.memory_mb; at most engine.max_memory_mb).
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Preopen a host directory: HOST::GUEST (read-only) or HOST::GUEST:rw.
    #[arg(long = "dir", value_name = "HOST::GUEST[:rw]")]
    dirs: Vec<DirGrant>,
    /// The tenant charged for this run (ledger and budgets).
    #[arg(long, default_value = "local")]
    tenant: String,
    /// Run id (default: a fresh one); the same id again is a replay, not charged twice.
    #[arg(long)]
    run_id: Option<String>,
    /// Use this kv namespace instead of the per-digest default.
    #[arg(long)]
    kv_namespace: Option<String>,
    /// Instance allocator (default: on-demand for one-shot runs).
    #[arg(long, value_enum)]
    allocator: Option<AllocatorArg>,
    /// Print one JSON object (capsule, result, usage, logs, events).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum AllocatorArg {
    Pooling,
    OnDemand,
}

impl From<AllocatorArg> for Allocator {
    fn from(a: AllocatorArg) -> Self {
        match a {
            AllocatorArg::Pooling => Allocator::Pooling,
            AllocatorArg::OnDemand => Allocator::OnDemand,
        }
    }
}

pub(crate) fn run(global: &Global, args: Args) -> anyhow::Result<Code> {
    let json = args.json;
    super::or_json_error(json, run_once(global, args))
}

fn run_once(global: &Global, args: Args) -> anyhow::Result<Code> {
    let input = match &args.input_file {
        Some(p) if p.as_os_str() == "-" => {
            std::io::read_to_string(std::io::stdin()).context("reading stdin")?
        }
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => args.input.clone(),
    };
    if let Some(remote) = global.remote()? {
        return super::remote::run(&remote, &args.capsule, &input, args.json);
    }
    let engine = global.engine(args.allocator.map(Into::into))?;
    let source = super::registry::Source {
        keys: &args.keys,
        registry: &args.registry,
        search: Vec::new(),
        hint: "",
    };
    let resolved = source.resolve(global, &engine, &args.capsule)?;
    let capsule = resolved.capsule.clone();
    let mut options = CallOptions::for_capsule(&engine, &capsule);
    let ceiling = engine.config().engine.max_memory_mb;
    if let Some(m) = args.memory_mb {
        anyhow::ensure!(
            m <= ceiling,
            "--memory-mb {m} exceeds the engine ceiling engine.max_memory_mb = {ceiling}"
        );
        options.limits.memory_mb = m;
    }
    if let Some(f) = args.fuel {
        options.limits.fuel = f.max(1);
    }
    if let Some(t) = args.timeout_ms {
        options.limits.timeout_ms = t.max(1);
    }
    options.tenant = args.tenant.as_str().into();
    if let Some(r) = &args.run_id {
        anyhow::ensure!(
            !r.is_empty() && !r.contains('/'),
            "--run-id must be non-empty and contain no '/'"
        );
        options.set_run(r);
    }
    if let Some(ns) = &args.kv_namespace {
        options.kv_namespace(ns);
    }
    if let Err(f) = options.grant_dirs(&capsule, args.dirs.clone()) {
        if args.json {
            let doc = serde_json::json!({
                "ok": false,
                "failure": { "class": f.class(), "message": f.to_string(), "detail": f },
            });
            println!("{doc}");
        } else {
            eprintln!("error: {} ({})", escape(&f.to_string()), f.class());
        }
        return Ok(Code::of_failure(&f));
    }
    let outcome = engine.call(&capsule, &input, &options);
    let code = match &outcome.result {
        Ok(_) => Code::Ok,
        Err(f) => Code::of_failure(f),
    };
    if args.json {
        let m = capsule.manifest();
        let doc = serde_json::json!({
            "capsule": {
                "name": m.name,
                "version": m.version,
                "digest": capsule.digest(),
                "reference": resolved.manifest_digest.map(|_| &args.capsule),
                "manifest_digest": resolved.manifest_digest,
            },
            "run": &*options.run_id,
            "ok": outcome.result.is_ok(),
            "output": outcome.result.as_ref().ok().map(|o| parse_or_string(o)),
            "failure": outcome.result.as_ref().err().map(|f| serde_json::json!({
                "class": f.class(), "message": f.to_string(), "detail": f,
            })),
            "usage": outcome.usage,
            "http": (!outcome.http.is_empty()).then_some(&outcome.http),
            "logs": outcome.logs,
            "events": outcome.events,
            "stdout": outcome.stdout,
            "stderr": outcome.stderr,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(code);
    }
    // Everything the capsule wrote is escaped on its way to the terminal:
    // no control bytes, and no line it did not start with our prefix.
    for line in &outcome.logs {
        eprintln!("[{}] {}", line.level, escape(&line.message));
    }
    let u = outcome.usage;
    let fuel = u
        .fuel_consumed
        .map_or_else(|| "off".to_owned(), |f| f.to_string());
    let usage = format!(
        "{} µs · fuel {fuel} · peak memory {}",
        u.wall_time_us,
        human_bytes(u.peak_memory_bytes)
    );
    match &outcome.result {
        Ok(output) => {
            // Piped output is the capsule's bytes; on a terminal it is
            // one escaped line: no escape sequences, and no line break
            // that could pass capsule text off as a line of soma's.
            if std::io::stdout().is_terminal() {
                println!("{}", escape(output));
            } else {
                println!("{output}");
            }
            eprintln!(
                "ok · {} {} · {usage}",
                escape(&capsule.manifest().name),
                capsule.digest().short()
            );
        }
        Err(f) => {
            if !outcome.stderr.is_empty() {
                eprintln!("capsule stderr:");
                for line in escape_keeping_lines(outcome.stderr.trim_end()).lines() {
                    eprintln!("  │ {line}");
                }
            }
            eprintln!(
                "error: {} ({}) · {usage}",
                escape(&f.to_string()),
                f.class()
            );
        }
    }
    Ok(code)
}

fn parse_or_string(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_owned()))
}
