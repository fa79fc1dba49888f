//! `soma daemon`: the engine as a multi-tenant service — REST + SSE over
//! axum, API tokens with scopes, per-tenant admission, TLS (optionally
//! mutual), Prometheus metrics, and DAG runs that survive restarts.
//!
//! One daemon owns one data directory (redb's lock): it is the only writer
//! of the journal, the ledger and the tokens while it runs.

pub mod auth;
pub mod limits;
pub mod metrics;
pub mod pool;
pub mod runs;
pub mod tls;
pub mod api;
pub mod openapi;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use serde::{Deserialize, Serialize};

use crate::{Capsule, Engine};

/// `[daemon]` in `soma.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Address to listen on.
    pub listen: String,
    /// Serve HTTPS with these files (PEM); absent = plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Largest request body, bytes (larger → 413).
    pub max_body_bytes: usize,
    /// Longest a request may take, ms (longer → 408).
    pub request_timeout_ms: u64,
    /// Requests per second per tenant (sustained).
    pub rate_per_sec: f64,
    /// Requests a tenant may make at once after idling (the bucket size).
    pub burst: f64,
    /// Requests of one tenant in flight at once.
    pub max_in_flight: usize,
    /// DAG runs driven at once (more wait in a queue).
    pub dag_drivers: usize,
    /// Threads running capsule calls for requests (0 = 2 × cores).
    pub call_threads: usize,
    /// Capsule-call runs remembered for `GET /v1/runs/{id}` (newest kept).
    pub recent_calls: usize,
    /// Bytes of capsule-call results remembered (newest kept). Default 64 MiB.
    pub recent_calls_bytes: usize,
    /// Capsule calls of one tenant running at once in the call pool (its
    /// requests and DAG runs together); 0 = half the cores (at least 1),
    /// so one tenant's slow calls never hold every core. Default 0.
    pub max_running_calls_per_tenant: usize,
    /// Capsule-call requests of one tenant queued or running at once;
    /// past it → 429 with `Retry-After`. Default 256.
    pub max_calls_per_tenant: usize,
    /// DAG runs of one tenant queued, waiting or running at once; past it
    /// → 429 with `Retry-After`. Default 64.
    pub max_queued_runs_per_tenant: usize,
    /// Open event streams (`GET /v1/runs/{id}/events`) of one tenant;
    /// past it → 429. Default 16.
    pub max_streams_per_tenant: usize,
    /// Open event streams in all; past it → 429. Default 1024.
    pub max_streams: usize,
    /// DAG specs parsed and checked at once (on the blocking pool, never
    /// on the async workers); more wait their turn. Default 2.
    pub max_spec_parses: usize,
    /// On shutdown, how long in-flight requests may take to finish, ms.
    pub shutdown_grace_ms: u64,
    /// OTLP/HTTP endpoint for traces (e.g. `http://127.0.0.1:4318`); off if absent.
    pub otlp_endpoint: Option<String>,
    /// Capsules the daemon serves by name.
    pub capsules: Vec<CatalogEntry>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
            tls: None,
            max_body_bytes: 1 << 20,
            request_timeout_ms: 60_000,
            rate_per_sec: 100_000.0,
            burst: 200_000.0,
            max_in_flight: 4096,
            dag_drivers: 4,
            call_threads: 0,
            recent_calls: 10_000,
            recent_calls_bytes: 64 << 20,
            max_running_calls_per_tenant: 0,
            max_calls_per_tenant: 256,
            max_queued_runs_per_tenant: 64,
            max_streams_per_tenant: 16,
            max_streams: 1024,
            max_spec_parses: 2,
            shutdown_grace_ms: 10_000,
            otlp_endpoint: None,
            capsules: Vec::new(),
        }
    }
}

/// TLS files.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    pub client_ca: Option<PathBuf>,
}

/// A capsule served by name: a component file, or a registry reference
/// pulled through the trust policy at start.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// The name requests use.
    pub name: String,
    /// A component file.
    pub path: Option<PathBuf>,
    /// Or a registry reference.
    pub reference: Option<String>,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A capsule of the catalog could not be loaded.
    #[error("capsule `{name}`: {message}")]
    Capsule {
        /// Its name.
        name: String,
        /// Why.
        message: String,
    },
    /// TLS files are unusable.
    #[error("tls: {0}")]
    Tls(String),
    /// The token store could not be read.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// Listening failed.
    #[error("cannot listen on {addr}: {message}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// Configuration is inconsistent.
    #[error("daemon config: {0}")]
    Config(String),
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
    pub admission: limits::Admission,
    /// Capsules by name.
    pub catalog: RwLock<BTreeMap<String, CatalogItem>>,
    /// Live and recent runs.
    pub runs: runs::Runs,
    /// Prometheus metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// The threads that run capsule calls for requests.
    pub calls: pool::CallPool,
}

impl Daemon {
    /// Load the catalog and the tokens; start the DAG drivers and resume
    /// every run a previous daemon left unfinished.
    pub fn start(engine: Engine, config: DaemonConfig) -> Result<Arc<Self>, DaemonError> {
        if config.dag_drivers == 0 || config.max_in_flight == 0 || config.rate_per_sec <= 0.0 {
            return Err(DaemonError::Config(
                "dag_drivers, max_in_flight and rate_per_sec must be positive".into(),
            ));
        }
        let engine = Arc::new(engine);
        let mut catalog = BTreeMap::new();
        for entry in &config.capsules {
            let item = load_entry(&engine, entry)?;
            catalog.insert(entry.name.clone(), item);
        }
        let tokens = auth::Tokens::load(engine.data().database().clone())?;
        let metrics = Arc::new(metrics::Metrics::new());
        {
            let m = metrics.clone();
            engine
                .metering()
                .observe(Box::new(move |entries| m.charged(entries)));
        }
        let admission = limits::Admission::new(limits::TenantLimits {
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
        let daemon = Arc::new(Self {
            calls: pool::CallPool::new(sharing),
            runs: runs::Runs::new(runs::RunLimits::of(&config)),
            engine,
            config,
            tokens,
            admission,
            catalog: RwLock::new(catalog),
            metrics,
        });
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
}

fn load_entry(engine: &Engine, entry: &CatalogEntry) -> Result<CatalogItem, DaemonError> {
    let err = |message: String| DaemonError::Capsule {
        name: entry.name.clone(),
        message,
    };
    match (&entry.path, &entry.reference) {
        (Some(path), None) => {
            let capsule = engine.load_file(path).map_err(|e| err(e.to_string()))?;
            Ok(CatalogItem {
                capsule,
                origin: path.display().to_string(),
            })
        }
        (None, Some(reference)) => {
            let (capsule, origin) = pull(engine, reference).map_err(err)?;
            Ok(CatalogItem { capsule, origin })
        }
        _ => Err(err("give exactly one of `path` or `reference`".into())),
    }
}

/// Pull `reference` through the trust policy and load it.
pub fn pull(engine: &Engine, reference: &str) -> Result<(Arc<Capsule>, String), String> {
    let parsed = crate::oci::Reference::parse(reference).map_err(|e| e.to_string())?;
    let config = engine.config();
    let trust =
        crate::verify::TrustPolicy::from_config(&config.trust).map_err(|e| e.to_string())?;
    let options = crate::oci::PullOptions {
        trust,
        ..crate::oci::PullOptions::from_config(config)
    };
    let auth =
        crate::oci::Auth::from_docker_config(parsed.registry()).map_err(|e| e.to_string())?;
    let pulled =
        crate::oci::pull(engine.data(), &parsed, &auth, &options).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(&pulled.component).map_err(|e| e.to_string())?;
    let origin = format!("{reference}@{}", pulled.manifest_digest);
    let capsule = engine.load(&bytes, &origin).map_err(|e| e.to_string())?;
    Ok((capsule, origin))
}

/// Serve `daemon` until `shutdown` resolves, then drain: stop accepting,
/// let in-flight requests finish (up to `shutdown_grace_ms`), interrupt the
/// DAG runs (they finish their calls in flight and stay resumable) and wait
/// for the drivers. `on_listen` receives the bound address (for `:0`).
pub async fn serve(
    daemon: Arc<Daemon>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listen: impl FnOnce(&str),
) -> Result<(), DaemonError> {
    let config = &daemon.config;
    let listen_err = |e: std::io::Error| DaemonError::Listen {
        addr: config.listen.clone(),
        message: e.to_string(),
    };
    let tcp = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(listen_err)?;
    let addr = tcp.local_addr().map_err(listen_err)?;
    let app = api::router(daemon.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let grace = std::time::Duration::from_millis(config.shutdown_grace_ms);
    let stopping = {
        let daemon = daemon.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: draining requests");
            daemon.runs.begin_shutdown();
            let _ = stop_tx.send(true);
        }
    };
    let served = match &config.tls {
        Some(tls) => {
            let listener =
                tls::TlsListener::new(tcp, tls::server_config(tls)?).map_err(listen_err)?;
            on_listen(&format!("https://{addr}"));
            let server = axum::serve(listener, app).with_graceful_shutdown(stopping);
            drain(server.into_future(), stop_rx, grace).await
        }
        None => {
            on_listen(&format!("http://{addr}"));
            let server = axum::serve(tcp, app).with_graceful_shutdown(stopping);
            drain(server.into_future(), stop_rx, grace).await
        }
    };
    let runs_daemon = daemon.clone();
    let _ = tokio::task::spawn_blocking(move || {
        runs_daemon.runs.shutdown();
        runs_daemon.calls.shutdown();
    })
    .await;
    served.map_err(listen_err)
}

/// Run the server; once shutdown has begun, give it `grace` to drain.
async fn drain(
    server: impl Future<Output = std::io::Result<()>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    grace: std::time::Duration,
) -> std::io::Result<()> {
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r,
        _ = stop.wait_for(|s| *s) => {}
    }
    match tokio::time::timeout(grace, server).await {
        Ok(r) => r,
        Err(_) => {
            tracing::warn!("requests still in flight after the grace period; closing them");
            Ok(())
        }
    }
}
