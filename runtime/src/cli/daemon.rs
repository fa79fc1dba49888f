//! `soma daemon` and `soma token`.

use anyhow::Context as _;
use serde_json::json;
use soma_runtime::{
    config::Allocator,
    daemon::{self, Daemon, auth},
};

use super::{Global, exit::Code};

/// Serve the API (config: the `[daemon]` section of soma.toml).
#[derive(Debug, clap::Args)]
pub(crate) struct DaemonArgs {
    /// Listen here instead of `daemon.listen` (e.g. 127.0.0.1:0 for any port).
    #[arg(long)]
    listen: Option<String>,
}

/// API tokens (stored hashed in the data directory).
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token for a tenant; it is printed once.
    Create {
        /// The tenant it acts for.
        #[arg(long)]
        tenant: String,
        /// Comma-separated: run, read, admin.
        #[arg(long, default_value = "run,read")]
        scopes: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (ids, tenants, scopes; never secrets).
    Ls {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id.
    Revoke {
        /// The token id (the part after `soma_`).
        id: String,
    },
}

pub(crate) fn daemon(global: &Global, args: DaemonArgs) -> anyhow::Result<Code> {
    global.local_only("daemon")?;
    let mut config = global.config()?;
    // A daemon makes many calls: the tuned pool is the point (unless the
    // config file chose).
    if global.config.is_none() {
        config.engine.allocator = Allocator::Pooling;
    }
    let mut daemon_config = config.daemon.clone();
    if let Some(listen) = args.listen {
        daemon_config.listen = listen;
    }
    // The daemon's own notices at info, everything else at warn: per-call
    // spans stay out of the printed log (and cost nothing) unless SOMA_LOG
    // asks for them; the OTLP exporter has its own filter.
    let _telemetry = soma_runtime::telemetry::init(
        "warn,soma_runtime::daemon=info",
        daemon_config.otlp_endpoint.as_deref(),
        "soma-daemon",
    )
    .context("starting telemetry")?;
    let engine =
        soma_runtime::Engine::new(config, global.data_dir()?).context("starting the engine")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("soma-http")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let daemon = Daemon::start(engine, daemon_config)?;
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!("cannot watch SIGTERM: {e}");
                        return std::future::pending().await;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        daemon::serve(daemon, shutdown, |url| {
            eprintln!("soma daemon listening on {url}");
        })
        .await?;
        eprintln!("soma daemon stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(Code::Ok)
}

pub(crate) fn token(global: &Global, cmd: TokenCommand) -> anyhow::Result<Code> {
    if let Some(remote) = global.remote()? {
        let TokenCommand::Create { tenant, scopes, .. } = cmd else {
            global.local_only("token ls / token revoke")?;
            return Ok(Code::Ok);
        };
        let scopes: Vec<String> = scopes.split(',').map(|s| s.trim().to_owned()).collect();
        return super::remote::token_create(&remote, &tenant, &scopes);
    }
    let tokens = auth::Tokens::load(global.data_dir()?.database().clone())?;
    match cmd {
        TokenCommand::Create {
            tenant,
            scopes,
            json,
        } => {
            let scopes = auth::parse_scopes(&scopes).map_err(anyhow::Error::msg)?;
            let (token, record) = tokens.create(&tenant, &scopes)?;
            if json {
                println!(
                    "{}",
                    json!({ "token": token, "id": record.id, "tenant": record.tenant, "scopes": record.scopes })
                );
            } else {
                println!("{token}");
                let scopes: Vec<String> = record.scopes.iter().map(ToString::to_string).collect();
                eprintln!(
                    "token {} for tenant {} ({}); shown once — store it now",
                    record.id,
                    record.tenant,
                    scopes.join(",")
                );
            }
        }
        TokenCommand::Ls { json } => {
            let list = tokens.list()?;
            if json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|t| json!({ "id": t.id, "tenant": t.tenant, "scopes": t.scopes, "created_ms": t.created_ms, "revoked": t.revoked }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for t in list {
                    let scopes: Vec<String> = t.scopes.iter().map(ToString::to_string).collect();
                    println!(
                        "{}  {:<16} {:<16} {}",
                        t.id,
                        t.tenant,
                        scopes.join(","),
                        if t.revoked { "revoked" } else { "active" }
                    );
                }
            }
        }
        TokenCommand::Revoke { id } => {
            let r = tokens.revoke(&id)?;
            println!("token {} of tenant {} revoked", r.id, r.tenant);
        }
    }
    Ok(Code::Ok)
}
