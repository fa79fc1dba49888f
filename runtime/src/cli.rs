//! The `soma` command line. Each subcommand is a module under `cli/`; exit
//! codes live in one table ([`exit`]).

mod build;
mod daemon;
mod dag;
mod exit;
mod inspect;
mod kv;
mod ledger;
mod analytics;
mod market;
mod new;
mod progress;
mod registry;
mod remote;
mod review;
mod run;
mod secrets;
mod temporal;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use soma_runtime::{Config, config::Allocator, store::DataDir};

/// Soma: run WebAssembly task capsules under hard limits.
#[derive(Debug, Parser)]
#[command(name = "soma", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Operator configuration file (soma.toml). Default: built-in defaults.
    #[arg(long, global = true, env = "SOMA_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (database, AOT cache). Default: $SOMA_DATA or ~/.local/share/soma.
    #[arg(long, global = true, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Send the command to this `soma daemon` instead of running it here
    /// (run, dag run/status/cancel, token create).
    #[arg(long, global = true, env = "SOMA_SERVER", value_name = "URL")]
    server: Option<String>,
    /// API token for --server.
    #[arg(long, global = true, env = "SOMA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Log more (-v info, -vv debug, -vvv trace); or set SOMA_LOG.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a capsule once and print its output and usage.
    Run(run::Args),
    /// Show what a capsule is: describe(), imports, exports, size, digest.
    Inspect(inspect::Args),
    /// Review a capsule as the marketplace will, before submitting (dry run).
    Review(review::Args),
    /// Scaffold a new capsule crate.
    New(new::Args),
    /// Build a capsule crate for wasm32-wasip2.
    Build(build::Args),
    /// Push a capsule to an OCI registry.
    Push(registry::PushArgs),
    /// Pull a capsule (verified by the trust policy) into the local cache.
    Pull(registry::PullArgs),
    /// Generate a signing key pair (cosign format).
    Keygen(registry::KeygenArgs),
    /// Sign a capsule in a registry (cosign format).
    Sign(registry::SignArgs),
    /// Verify a capsule's signatures in a registry.
    Verify(registry::VerifyArgs),
    /// Inspect or clean the local blob cache.
    #[command(subcommand)]
    Cache(registry::CacheCommand),
    /// The ledger of every charge: list, summarize, check.
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// A tenant's invoice for one month.
    Bill(ledger::BillArgs),
    /// Project a tenant's spending.
    Forecast(ledger::ForecastArgs),
    /// Budgets per tenant, capsule, run or node.
    #[command(subcommand)]
    Budget(ledger::BudgetCommand),
    /// The embedded analytics store: query calls, errors, latency, cost, tokens.
    #[command(subcommand)]
    Analytics(analytics::AnalyticsCommand),
    /// Serve the API: REST + SSE, tokens, metrics (config: [daemon]).
    Daemon(daemon::DaemonArgs),
    /// API tokens for the daemon: create, ls, revoke.
    #[command(subcommand)]
    Token(daemon::TokenCommand),
    /// DAG runs: run, resume, status, ls, logs, cancel, validate, schema.
    #[command(subcommand)]
    Dag(dag::DagCommand),
    /// Check or print the operator configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The kv store of this data directory: adopt-legacy.
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// The capsule marketplace: authors, submit, publish, install, update, search.
    #[command(subcommand)]
    Market(market::MarketCommand),
    /// Serve DAG runs on Temporal: their workflows and capsule calls.
    Worker(temporal::WorkerArgs),
    /// A tenant's secrets on a daemon (--server): set, ls, rm; never a value.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a soma.toml without running anything.
    Check {
        /// The file to check (default: --config).
        file: Option<PathBuf>,
    },
    /// Print the built-in defaults as TOML.
    Default,
}

/// Settings every subcommand shares.
pub(crate) struct Global {
    config: Option<PathBuf>,
    data: Option<PathBuf>,
    server: Option<String>,
    token: Option<String>,
}

impl Global {
    /// The daemon to talk to, if `--server` was given.
    fn remote(&self) -> anyhow::Result<Option<remote::Remote>> {
        self.server
            .as_deref()
            .map(|url| remote::Remote::new(url, self.token.as_deref()))
            .transpose()
    }

    /// Refuse `--server` for a command that only runs locally.
    fn local_only(&self, what: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.server.is_none(),
            "`{what}` runs locally only; drop --server (or unset SOMA_SERVER)"
        );
        Ok(())
    }

    /// The operator configuration: the file if given, else defaults.
    fn config(&self) -> anyhow::Result<Config> {
        match &self.config {
            Some(path) => Ok(Config::load(path)?),
            None => Ok(Config::default()),
        }
    }

    /// The data directory: --data, else the config's data_dir, else the default.
    fn data_dir(&self) -> anyhow::Result<DataDir> {
        let config = self.config()?;
        Ok(DataDir::new(
            self.data
                .clone()
                .or(config.data_dir)
                .unwrap_or_else(DataDir::default_root),
        ))
    }

    /// An engine for a one-shot command. Unless the config file chose,
    /// one-shot commands use on-demand allocation: a pool costs more to
    /// reserve than a single call saves.
    fn engine(&self, allocator: Option<Allocator>) -> anyhow::Result<soma_runtime::Engine> {
        let mut config = self.config()?;
        if self.config.is_none() || allocator.is_some() {
            config.engine.allocator = allocator.unwrap_or(Allocator::OnDemand);
        }
        let engine =
            soma_runtime::Engine::new(config, self.data_dir()?).context("starting the engine")?;
        // Calls of priced marketplace capsules pay their listing's fee.
        soma_runtime::market::pricing::PriceBook::install(&engine);
        Ok(engine)
    }

    /// An engine for DAG runs (`soma dag`, `soma worker`): pooled
    /// allocation unless the config file chose (a run makes many calls).
    fn dag_engine(&self) -> anyhow::Result<soma_runtime::Engine> {
        self.engine(self.config.is_none().then_some(Allocator::Pooling))
    }
}

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon installs its own subscriber (with OpenTelemetry export).
    if !matches!(cli.command, Command::Daemon(_)) {
        init_tracing(cli.verbose);
    }
    let global = Global {
        config: cli.config,
        data: cli.data,
        server: cli.server,
        token: cli.token,
    };
    let result = match cli.command {
        Command::Run(args) => run::run(&global, args),
        Command::Inspect(args) => inspect::run(&global, args),
        Command::Review(args) => review::run(&global, args),
        Command::New(args) => new::run(args),
        Command::Build(args) => build::run(args),
        Command::Push(args) => registry::push(&global, args),
        Command::Pull(args) => registry::pull(&global, args),
        Command::Keygen(args) => registry::keygen(args),
        Command::Sign(args) => registry::sign(&global, args),
        Command::Verify(args) => registry::verify(&global, args),
        Command::Cache(cmd) => registry::cache(&global, cmd),
        Command::Ledger(cmd) => ledger::ledger(&global, cmd),
        Command::Bill(args) => ledger::bill(&global, args),
        Command::Forecast(args) => ledger::forecast(&global, args),
        Command::Budget(cmd) => ledger::budget(&global, cmd),
        Command::Analytics(cmd) => analytics::analytics(&global, cmd),
        Command::Dag(cmd) => dag::dag(&global, cmd),
        Command::Daemon(args) => daemon::daemon(&global, args),
        Command::Token(cmd) => daemon::token(&global, cmd),
        Command::Config(ConfigCommand::Check { file }) => config_check(&global, file),
        Command::Kv(cmd) => kv::kv(&global, cmd),
        Command::Market(cmd) => market::market_cmd(&global, cmd),
        Command::Worker(args) => temporal::worker(&global, args),
        Command::Secrets(cmd) => secrets::secrets(&global, cmd),
        Command::Config(ConfigCommand::Default) => {
            print!("{}", Config::default_toml());
            Ok(exit::Code::Ok)
        }
    };
    match result {
        Ok(code) => code.into(),
        Err(e) => {
            // Error chains can hold capsule-controlled text (describe()
            // errors, export names): no raw control bytes on the terminal.
            let text = format!("{e:#}");
            eprintln!("error: {}", soma_host_api::log::escape_keeping_lines(&text));
            exit::Code::of_error(&e).into()
        }
    }
}

/// With `--json`, an error that ends a command is still one JSON object on
/// stdout — `{"ok": false, "error": {"class", "message", "exit_code"}}` —
/// and the exit code is the one the error maps to, as without `--json`.
pub(crate) fn or_json_error(
    json: bool,
    result: anyhow::Result<exit::Code>,
) -> anyhow::Result<exit::Code> {
    match result {
        Err(e) if json => {
            let code = exit::Code::of_error(&e);
            let doc = serde_json::json!({
                "ok": false,
                "error": {
                    "class": code.name(),
                    "message": format!("{e:#}"),
                    "exit_code": code as u8,
                },
            });
            println!("{doc}");
            Ok(code)
        }
        other => other,
    }
}

fn config_check(global: &Global, file: Option<PathBuf>) -> anyhow::Result<exit::Code> {
    let path = file
        .or_else(|| global.config.clone())
        .context("no file given: soma config check <FILE> (or --config)")?;
    let config = Config::load(&path)?;
    println!(
        "{}: ok (allocator {:?}, metering {:?}, default limits: fuel {}, {} ms, {} MiB)",
        path.display(),
        config.engine.allocator,
        config.engine.metering,
        config.limits.fuel,
        config.limits.timeout_ms,
        config.limits.memory_mb
    );
    Ok(exit::Code::Ok)
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("SOMA_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(soma_runtime::telemetry::stderr_colours())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Human-readable byte sizes for summaries.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
