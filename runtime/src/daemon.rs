//! `soma daemon`: the engine as a multi-tenant service — REST + SSE over
//! axum, API tokens with scopes, per-tenant admission, TLS (optionally
//! mutual), Prometheus metrics, and DAG runs that survive restarts.
//!
//! One daemon owns one data directory (redb's lock): it is the only writer
//! of the journal, the ledger and the tokens while it runs.

pub mod analytics;
pub mod approvals;
pub mod auth;
pub mod catalog;
pub mod connections;
pub mod console;
pub mod limits;
pub mod market;
pub mod metrics;
pub mod pool;
pub mod runs;
pub mod secrets;
pub mod temporal;
pub mod tls;
pub mod reply;
pub mod api;
pub mod contract;
pub mod openapi;

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

pub use crate::config::daemon::{CatalogEntry, DaemonConfig, TlsConfig};
use crate::{
    Capsule, Engine,
    digest::Digest,
    oci::Reference,
    resolve::{self, CapsuleRef, ResolveError, Resolved, Resolver},
};

impl DaemonConfig {
    /// Refuse settings the daemon cannot run with, naming the key.
    pub fn check(&self) -> Result<(), DaemonError> {
        let bad = |m: &str| Err(DaemonError::Config(m.to_owned()));
        if self.dag_drivers == 0 || self.max_in_flight == 0 || self.rate_per_sec <= 0.0 {
            return bad("dag_drivers, max_in_flight and rate_per_sec must be positive");
        }
        if self.max_connections == 0 || self.max_connections > MAX_CONNECTIONS {
            return Err(DaemonError::Config(format!(
                "daemon.max_connections must be between 1 and {MAX_CONNECTIONS}"
            )));
        }
        if self.header_read_timeout_ms == 0
            || self.idle_timeout_ms == 0
            || self.tls_handshake_timeout_ms == 0
        {
            return bad(
                "daemon.header_read_timeout_ms, idle_timeout_ms and tls_handshake_timeout_ms must be positive",
            );
        }
        if !(8192..=16 << 20).contains(&self.max_header_bytes) {
            return bad("daemon.max_header_bytes must be between 8192 and 16 MiB");
        }
        if self.http2_max_concurrent_streams == 0 {
            return bad("daemon.http2_max_concurrent_streams must be at least 1");
        }
        if self.metrics_listen.as_deref() == Some(self.listen.as_str()) {
            return bad("daemon.metrics_listen must differ from daemon.listen");
        }
        Ok(())
    }
}

/// `e` and its sources as one line, `outer: inner: …` (as `{:#}` prints
/// an `anyhow` chain), leaving out a source whose text the message before
/// it already ends with. For answers and log lines, where only text goes.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        let part = source.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = source.source();
    }
    text
}

/// The largest `daemon.max_connections` accepted.
pub const MAX_CONNECTIONS: usize = 1 << 20;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A capsule of the catalog could not be resolved (read, pulled,
    /// verified or loaded).
    #[error("capsule `{name}`")]
    Capsule {
        /// Its name.
        name: String,
        /// Why.
        source: ResolveError,
    },
    /// TLS files are unusable.
    #[error("tls: {what}")]
    Tls {
        /// What could not be done (and with which file).
        what: String,
        /// Why, when a library said.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The token store could not be read.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// Listening failed.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Configuration is inconsistent.
    #[error("daemon config: {0}")]
    Config(String),
    /// A thread of the daemon could not be started.
    #[error("cannot start a thread of the daemon")]
    Thread(#[source] std::io::Error),
}

/// A capsule of the catalog.
#[derive(Debug, Clone)]
pub struct CatalogItem {
    /// The loaded component.
    pub capsule: Arc<Capsule>,
    /// Where it came from (file path or pinned reference).
    pub origin: String,
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct Daemon {
    /// The engine (pooling allocator).
    pub engine: Arc<Engine>,
    /// `[daemon]`.
    pub config: DaemonConfig,
    /// API tokens.
    pub tokens: auth::Tokens,
    /// Per-tenant admission.
    pub admission: limits::TenantAdmission,
    /// Capsules by name.
    pub catalog: RwLock<BTreeMap<String, CatalogItem>>,
    /// Capsules a re-pull replaced in the catalog, by digest: runs that
    /// pinned them still find them (see [`Daemon::pinned_capsule`]).
    pub replaced: RwLock<BTreeMap<String, CatalogItem>>,
    /// The pulls recorded for the catalog (kept across restarts; shared by
    /// a fleet on PostgreSQL): see [`catalog`].
    pub pulled: catalog::Pulled,
    /// Live and recent runs.
    pub runs: runs::Runs,
    /// Prometheus metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// The threads that run capsule calls for requests.
    pub calls: pool::CallPool,
    /// The OpenAPI document served at `GET /v1/openapi.json`, rendered once
    /// per process ([`openapi::document`]).
    pub openapi: &'static str,
    /// The capsule marketplace (`/v1/market`).
    pub market: market::MarketService,
    /// The web console (`/ui/`): its sessions.
    pub console: console::Console,
    /// `[orchestrator] engine = "temporal"`: DAG runs are Temporal workflows.
    pub temporal: Option<Arc<temporal::TemporalRuns>>,
    /// Drains the analytics outbox into the embedded store while the daemon runs.
    pub shipper: crate::analytics::Shipper,
}

impl Daemon {
    /// Load the catalog and the tokens; start the DAG drivers and resume
    /// every run a previous daemon left unfinished.
    pub fn start(engine: Engine, config: DaemonConfig) -> Result<Arc<Self>, DaemonError> {
        config.check()?;
        let engine = Arc::new(engine);
        let mut catalog = BTreeMap::new();
        for entry in &config.capsules {
            let item = load_entry(&engine, entry)?;
            catalog.insert(entry.name.clone(), item);
        }
        let tokens = auth::Tokens::open(&engine.config().store, engine.data().database().clone())?;
        let shared = engine.metering().shared_store().cloned();
        let pulls = match shared.clone() {
            Some(pg) => catalog::Pulls::Postgres(pg),
            None => catalog::Pulls::Redb(engine.data().database().clone()),
        };
        note_admin_migration(&tokens);
        let metrics =
            Arc::new(metrics::Metrics::new().with_tenant_labels(config.metrics_tenant_labels));
        {
            let m = metrics.clone();
            engine
                .metering()
                .observe(Box::new(move |entries| m.charged(entries)));
        }
        let admission = limits::TenantAdmission::new(limits::TenantLimits {
            rate_per_sec: config.rate_per_sec,
            burst: config.burst.max(1.0),
            max_in_flight: config.max_in_flight,
        });
        let call_threads = match config.call_threads {
            0 => 2 * std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        if call_threads > engine.config().engine.pool_instances as usize {
            return Err(DaemonError::Config(format!(
                "daemon.call_threads ({call_threads}) exceeds engine.pool_instances ({}): \
                 every call thread needs an instance slot",
                engine.config().engine.pool_instances
            )));
        }
        let sharing = pool::Sharing {
            threads: call_threads,
            max_running_per_tenant: match config.max_running_calls_per_tenant {
                0 => (std::thread::available_parallelism().map_or(2, |n| n.get()) / 2).max(1),
                n => n,
            },
            max_calls_per_tenant: config.max_calls_per_tenant,
        };
        let market = market::MarketService::start(&engine)?;
        let console_config = engine.config().console.clone();
        console_config.check().map_err(DaemonError::Config)?;
        let orchestrator = engine.config().orchestrator.clone();
        orchestrator.check().map_err(DaemonError::Config)?;
        let shipper = crate::analytics::Shipper::start(
            engine.data().database().clone(),
            &engine.config().analytics,
        )
        .map_err(|e| DaemonError::Config(format!("analytics: {}", error_chain(&e))))?;
        let daemon = Arc::new(Self {
            shipper,
            temporal: temporal::TemporalRuns::of(&orchestrator, shared).map(Arc::new),
            market,
            console: console::Console::new(console_config),
            calls: pool::CallPool::new(sharing),
            openapi: openapi::document(),
            runs: runs::Runs::new(runs::RunLimits::of(&config)),
            engine,
            config,
            tokens,
            admission,
            pulled: catalog::Pulled::new(pulls, catalog.clone()),
            catalog: RwLock::new(catalog),
            replaced: RwLock::new(BTreeMap::new()),
            metrics,
        });
        // Recorded pulls: served from the blob cache (or pulled again); one
        // that cannot be resolved now is logged and retried, it does not
        // stop the daemon. (On a thread of its own: the synchronous
        // PostgreSQL driver and the registry client must not run on an
        // async task.)
        match std::thread::scope(|s| s.spawn(|| catalog::sync(&daemon)).join()) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(
                "cannot read the catalog's recorded pulls (serving the configured capsules only until they can be read): {}",
                soma_host_api::error_chain(&e)
            ),
            Err(_) => tracing::warn!(
                "reading the catalog's recorded pulls panicked (serving the configured capsules only)"
            ),
        }
        catalog::spawn_refresh(Arc::downgrade(&daemon)).map_err(DaemonError::Thread)?;
        market::spawn_search_sync(Arc::downgrade(&daemon)).map_err(DaemonError::Thread)?;
        runs::start_drivers(&daemon);
        runs::resume_unfinished(&daemon);
        Ok(daemon)
    }

    /// A catalog capsule by name.
    pub fn capsule(&self, name: &str) -> Option<CatalogItem> {
        self.catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The capsule a run pinned: catalog name `name` if it still has
    /// `digest`; else the capsule a re-pull replaced under that digest; else
    /// (after a restart) the verified component in the blob cache with
    /// that digest. `None` if none of them has it. Cost: map lookups; from
    /// the blob cache, a file read and a load (AOT-cached).
    pub fn pinned_capsule(&self, name: &str, digest: &str) -> Option<Arc<Capsule>> {
        let pinned = CapsuleRef::Catalog {
            name: name.to_owned(),
            digest: Some(digest.parse().ok()?),
        };
        self.resolve(&pinned).ok().map(|r| r.capsule)
    }

    /// Resolve `capsule` as this daemon does: catalog names in its catalog
    /// (then the blob cache, for a pinned digest), registry references
    /// through the config's `[trust]` and `[pull]` with docker credentials,
    /// files as given. Cost: see [`Resolver::resolve`]; a catalog name is
    /// map lookups.
    pub fn resolve(&self, capsule: &CapsuleRef) -> Result<Resolved, ResolveError> {
        Resolver::new(&self.engine).catalog(self).resolve(capsule)
    }

    /// Put `item` in the catalog as `name`; a capsule it replaces stays
    /// reachable by digest for the runs that pinned it. Returns the
    /// replaced item's digest, if another capsule had that name.
    pub fn install(&self, name: &str, item: CatalogItem) -> Option<String> {
        let mut catalog = self.catalog.write().unwrap_or_else(|p| p.into_inner());
        let old = catalog.insert(name.to_owned(), item)?;
        let digest = old.capsule.digest().to_string();
        let same = catalog
            .get(name)
            .is_some_and(|new| new.capsule.digest().to_string() == digest);
        drop(catalog);
        if same {
            return None;
        }
        self.replaced
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.clone(), old);
        Some(digest)
    }

    /// Stop serving `name` (a deleted pull with no config entry under it);
    /// the capsule stays reachable by digest for the runs that pinned it.
    pub fn uninstall(&self, name: &str) {
        let old = self
            .catalog
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(old) = old {
            self.replaced
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(old.capsule.digest().to_string(), old);
        }
    }
}

/// Tell the operator, once, that `admin` no longer means every tenant when
/// the store has `admin` tokens but no `operator` token.
fn note_admin_migration(tokens: &auth::Tokens) {
    let live: Vec<_> = tokens.loaded().into_iter().filter(|t| !t.revoked).collect();
    let admins = live
        .iter()
        .filter(|t| t.scopes.contains(&auth::TokenScope::Admin))
        .count();
    let operators = live
        .iter()
        .filter(|t| t.scopes.contains(&auth::TokenScope::Operator))
        .count();
    if admins > 0 && operators == 0 {
        tracing::warn!(
            "{admins} `admin` token(s) and no `operator` token: `admin` now acts only on its own tenant; catalog pulls, capsule budgets, other tenants' runs, ledgers, budgets and tokens, and /metrics need an `operator` token (stop the daemon, then `soma token create --tenant ops --scopes operator`)"
        );
    }
}

impl resolve::Catalog for Daemon {
    fn lookup(&self, name: &str, digest: Option<&Digest>) -> Option<Arc<Capsule>> {
        let current = self.capsule(name).map(|item| item.capsule);
        let Some(digest) = digest else {
            return current;
        };
        if let Some(capsule) = current.filter(|c| c.digest() == *digest) {
            return Some(capsule);
        }
        self.replaced
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest.to_string())
            .map(|item| item.capsule.clone())
    }
}

fn load_entry(engine: &Engine, entry: &CatalogEntry) -> Result<CatalogItem, DaemonError> {
    let capsule =
        match (&entry.path, &entry.reference) {
            (Some(path), None) => CapsuleRef::File(path.clone()),
            (None, Some(reference)) => CapsuleRef::Oci(Reference::parse(reference).map_err(
                |e| DaemonError::Capsule {
                    name: entry.name.clone(),
                    source: e.into(),
                },
            )?),
            _ => {
                return Err(DaemonError::Config(format!(
                    "capsule `{}`: give exactly one of `path` or `reference`",
                    entry.name
                )));
            }
        };
    let resolved =
        Resolver::new(engine)
            .resolve(&capsule)
            .map_err(|source| DaemonError::Capsule {
                name: entry.name.clone(),
                source,
            })?;
    Ok(CatalogItem {
        origin: resolved.pinned.to_string(),
        capsule: resolved.capsule,
    })
}

/// Pull the registry `reference` through the config's trust policy and load
/// it (`POST /v1/capsules/pull`); see [`Resolver::resolve`].
pub fn pull(engine: &Engine, reference: &str) -> Result<Resolved, ResolveError> {
    let reference = Reference::parse(reference)?;
    Resolver::new(engine).resolve(&CapsuleRef::Oci(reference))
}

/// Serve `daemon` until `shutdown` resolves, then drain: stop accepting,
/// let in-flight requests finish (up to `shutdown_grace_ms`), interrupt the
/// DAG runs (they finish their calls in flight and stay resumable) and wait
/// for the drivers. `on_listen` receives the bound address (for `:0`).
///
/// Connections are accepted by [`connections::Listener`]s (the API on
/// `daemon.listen`, and `/metrics` alone on `daemon.metrics_listen` if
/// set), each with `daemon.max_connections` slots and the header, idle and
/// handshake timeouts of `[daemon]`.
pub async fn serve(
    daemon: Arc<Daemon>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listen: impl FnOnce(&str),
) -> Result<(), DaemonError> {
    let config = &daemon.config;
    let listen_err = |addr: &str| {
        let addr = addr.to_owned();
        move |source: std::io::Error| DaemonError::Listen {
            addr: addr.clone(),
            source,
        }
    };
    let limits = Arc::new(connections::Limits::from_config(config));
    let tcp = connections::bind(&config.listen)
        .await
        .map_err(listen_err(&config.listen))?;
    let addr = tcp.local_addr().map_err(listen_err(&config.listen))?;
    let tls = match &config.tls {
        Some(tls) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(tls)?)),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut listeners = vec![connections::Listener::new(
        "api",
        tcp,
        tls,
        api::router(daemon.clone(), console::router(&daemon)),
        limits.clone(),
    )];
    if let Some(metrics_listen) = &config.metrics_listen {
        let tcp = connections::bind(metrics_listen)
            .await
            .map_err(listen_err(metrics_listen))?;
        let local = tcp.local_addr().map_err(listen_err(metrics_listen))?;
        tracing::info!("metrics (no token) on http://{local}/metrics");
        listeners.push(connections::Listener::new(
            "metrics",
            tcp,
            None,
            api::metrics_router(daemon.clone()),
            limits.clone(),
        ));
    }
    on_listen(&format!("{scheme}://{addr}"));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let accepting: Vec<_> = listeners
        .into_iter()
        .map(|l| tokio::spawn(l.run(stop_rx.clone())))
        .collect();
    shutdown.await;
    tracing::info!("shutting down: draining requests");
    daemon.runs.begin_shutdown();
    let _ = stop_tx.send(true);
    let grace = std::time::Duration::from_millis(config.shutdown_grace_ms);
    let drained = tokio::time::timeout(grace, async {
        for handle in accepting {
            if let Ok(drained) = handle.await {
                drained.wait().await;
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("requests still in flight after the grace period; closing them");
    }
    let runs_daemon = daemon.clone();
    let _ = tokio::task::spawn_blocking(move || {
        runs_daemon.runs.shutdown();
        runs_daemon.calls.shutdown();
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod error_chain_tests {
    use std::error::Error as _;

    use super::*;
    use crate::dag::journal::JournalError;

    #[test]
    fn errors_keep_their_sources_and_the_chain_reads_as_before() {
        let e = JournalError::Storage(Box::new(std::io::Error::other("disk full")));
        assert!(e.source().is_some(), "the cause is kept as a source");
        assert_eq!(error_chain(&e), "the run journal failed: disk full");
        let e = DaemonError::Listen {
            addr: "127.0.0.1:1".into(),
            source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use"),
        };
        assert_eq!(
            error_chain(&e),
            "cannot listen on 127.0.0.1:1: address in use"
        );
        // A message that already ends with its source's text is not repeated.
        let e = JournalError::Ledger(crate::ledger::LedgerError::WriterStopped);
        let text = error_chain(&e);
        assert_eq!(
            text.matches("writer thread has stopped").count(),
            1,
            "{text}"
        );
    }
}
