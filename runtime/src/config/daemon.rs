//! `[daemon]`: the settings of `soma daemon`, defined here (not in
//! `daemon`) because [`crate::Engine`] holds the whole [`super::Config`] and
//! the daemon needs the engine; `crate::daemon` re-exports them and checks
//! them ([`DaemonConfig::check`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
    /// Connections open at once on `listen` (and, separately, on
    /// `metrics_listen`); past it a new connection is answered 503 (plain
    /// HTTP) or closed (TLS) at once, with one warning every 10 s. Lowered
    /// to what the process's file-descriptor limit allows (after raising
    /// its soft limit to the hard one), less 256 for the daemon's own files.
    pub max_connections: usize,
    /// A client has this long, ms, to send a request's whole head (request
    /// line and headers; for HTTP/2 its first request) from the moment the
    /// connection opens or the first byte of a next request arrives;
    /// slower connections are closed (slowloris).
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight and nothing received for this
    /// long, ms, is closed (keep-alive idle timeout).
    pub idle_timeout_ms: u64,
    /// A TLS handshake must finish within this, ms.
    pub tls_handshake_timeout_ms: u64,
    /// Largest request head, bytes: HTTP/1 read buffer (at least 8192) and
    /// HTTP/2 header list.
    pub max_header_bytes: usize,
    /// HTTP/2 streams (requests) one connection may have open at once.
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2 keep-alive: ping an HTTP/2 client every this many ms (0 = off)…
    pub http2_keep_alive_interval_ms: u64,
    /// …and close the connection if a ping is not answered within this, ms.
    pub http2_keep_alive_timeout_ms: u64,
    /// Also serve `GET /metrics` without a token on this address (plain
    /// HTTP, nothing else on it), e.g. `127.0.0.1:9464`; keep it off networks
    /// tenants reach. On `listen`, `/metrics` needs an `operator` or
    /// `metrics` token either way.
    pub metrics_listen: Option<String>,
    /// Label `soma_cost_micros_total` by tenant name; off, every tenant's
    /// cost is summed under `tenant="all"`, so a scrape shows no tenant.
    pub metrics_tenant_labels: bool,
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
            max_connections: 4096,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            tls_handshake_timeout_ms: 10_000,
            max_header_bytes: 64 * 1024,
            http2_max_concurrent_streams: 128,
            http2_keep_alive_interval_ms: 30_000,
            http2_keep_alive_timeout_ms: 20_000,
            metrics_listen: None,
            metrics_tenant_labels: false,
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
