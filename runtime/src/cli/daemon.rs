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

/// API tokens (stored hashed in the data directory). With `--server`,
/// through the running daemon's API (`create` and `revoke` take effect at
/// once); without, on the data directory of a stopped daemon.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token for a tenant; it is printed once.
    Create {
        /// The tenant it acts for.
        #[arg(long)]
        tenant: String,
        /// Comma-separated: run, read, admin (its own tenant's tokens and
        /// run budgets), operator (every tenant, the catalog, /metrics),
        /// metrics (/metrics only).
        #[arg(long, default_value = "run,read")]
        scopes: String,
        /// Refuse the token after this long: 90s, 15m, 12h, 30d, 2w (or
        /// seconds). Never expires if absent.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (ids, tenants, scopes, expiry; never secrets).
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
    // asks for them; the OTLP exporter has its own filter. The HTTP/2
    // library warns about peers that break its rules (a rapid-reset flood
    // closes each connection with a warning): a client without a token
    // must not be able to write a line per connection, so only its errors.
    let _telemetry = soma_runtime::telemetry::init(
        "warn,soma_runtime::daemon=info,h2=error",
        daemon_config.otlp_endpoint.as_deref(),
        "soma-daemon",
    )
    .context("starting telemetry")?;
    let engine =
        soma_runtime::Engine::new(config, global.data_dir()?).context("starting the engine")?;
    // Calls of priced marketplace capsules pay their listing's fee.
    soma_runtime::market::pricing::PriceBook::install(&engine);
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
    let expires_in_s = match &cmd {
        TokenCommand::Create {
            expires_in: Some(text),
            ..
        } => Some(auth::parse_duration_s(text).map_err(|e| anyhow::anyhow!("--expires-in {e}"))?),
        _ => None,
    };
    if let Some(remote) = global.remote()? {
        return match cmd {
            TokenCommand::Create { tenant, scopes, .. } => {
                let scopes = auth::parse_scopes(&scopes).map_err(anyhow::Error::msg)?;
                super::remote::token_create(&remote, &tenant, &scopes, expires_in_s)
            }
            TokenCommand::Ls { json } => {
                let rows = super::remote::token_ls(&remote)?;
                print_tokens(&rows, json)?;
                Ok(Code::Ok)
            }
            TokenCommand::Revoke { id } => {
                let r = super::remote::token_revoke(&remote, &id)?;
                println!("token {} of tenant {} revoked", r.id, r.tenant);
                Ok(Code::Ok)
            }
        };
    }
    let tokens = auth::Tokens::open(
        &global.config()?.store,
        global.data_dir()?.database().clone(),
    )?;
    match cmd {
        TokenCommand::Create {
            tenant,
            scopes,
            json,
            ..
        } => {
            let scopes = auth::parse_scopes(&scopes).map_err(anyhow::Error::msg)?;
            let expires_ms = match expires_in_s {
                Some(s) => {
                    Some(auth::expiry_in(s).context("--expires-in is too far in the future")?)
                }
                None => None,
            };
            let (token, record) = tokens.create(&tenant, &scopes, expires_ms)?;
            if json {
                println!(
                    "{}",
                    json!({ "token": token, "id": record.id, "tenant": record.tenant, "scopes": record.scopes, "expires_ms": record.expires_ms })
                );
            } else {
                println!("{token}");
                let scopes: Vec<String> = record.scopes.iter().map(ToString::to_string).collect();
                let expiry = record
                    .expires_ms
                    .map_or_else(String::new, |e| format!(", expires at unix ms {e}"));
                eprintln!(
                    "token {} for tenant {} ({}{expiry}); shown once — store it now",
                    record.id,
                    record.tenant,
                    scopes.join(",")
                );
            }
        }
        TokenCommand::Ls { json } => {
            let now = soma_runtime::dag::history::now_ms();
            let rows: Vec<auth::TokenInfo> = tokens.list()?.iter().map(|t| t.info(now)).collect();
            print_tokens(&rows, json)?;
        }
        TokenCommand::Revoke { id } => {
            let r = tokens.revoke(&id)?;
            println!("token {} of tenant {} revoked", r.id, r.tenant);
        }
    }
    Ok(Code::Ok)
}

fn print_tokens(rows: &[auth::TokenInfo], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    for t in rows {
        let scopes: Vec<String> = t.scopes.iter().map(ToString::to_string).collect();
        let state = if t.revoked {
            "revoked".to_owned()
        } else if t.expired {
            "expired".to_owned()
        } else if let Some(e) = t.expires_ms {
            format!("active until unix ms {e}")
        } else {
            "active".to_owned()
        };
        println!(
            "{}  {:<16} {:<16} {}",
            t.id,
            t.tenant,
            scopes.join(","),
            state
        );
    }
    Ok(())
}
