//! `http`: outbound HTTP for capsules through the standard
//! `wasi:http/outgoing-handler` (served by wasmtime-wasi-http), wrapped by
//! Soma's policy.
//!
//! A request is: target check (scheme, host, port against every allowlist
//! of the grant: the capsule's request ∩ the operator's `[http]
//! allowed_hosts` ∩ the DAG node's list) → per-call quotas (requests,
//! requests in flight) and the engine's connection cap → resolve the name
//! on the host → drop loopback, private, link-local and metadata addresses
//! unless an operator pattern names the address or its range → connect to
//! exactly the checked address (TLS: webpki roots + the operator's
//! `ca_file`, SNI = the host name) → HTTP/1.1 over hyper, every stage
//! bounded by its timeout *and* the call's deadline, bytes counted both
//! ways and cut at the call's quotas. A refused request answers the WASI
//! error `HTTP-request-denied` (never a trap), is logged without header
//! or body values, and is counted in the call's report.
//!
//! Redirects are not followed by the host (wasi:http does not): the guest
//! follows them, and every hop is a new request checked here.

mod address;
mod connect;
mod pattern;

use std::{
    path::PathBuf,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
};

use serde::{Deserialize, Serialize};
use wasmtime::component::Linker;
use wasmtime_wasi_http::{WasiHttp, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks};

pub use self::{
    address::is_restricted,
    pattern::{Host, IpNet, Pattern, PatternError, Scheme, Target},
};

/// Denials logged per call; later ones are only counted.
const LOGGED_DENIALS_PER_CALL: u32 = 4;

/// How the message of a request refused by a per-call quota begins (the
/// WASI error `internal-error(some(message))`; the SDK turns it into
/// `HttpError::Quota`). The message goes on to name the quota and the
/// `[http]` key that raises it.
pub const QUOTA_ERROR_PREFIX: &str = "http quota exceeded: ";

/// Operator settings (`[http]` in `soma.toml`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The operator's allowlist: a capsule's request reaches only URLs that
    /// match one of these patterns too (Spin's form, e.g.
    /// `https://api.example.com`, `https://*.example.com:8443`,
    /// `http://127.0.0.1:*`). Empty (the default) denies outbound HTTP.
    pub allowed_hosts: Vec<String>,
    /// Requests one call may make. Default 100.
    pub max_requests_per_call: u32,
    /// Request body bytes one call may send. Default 16 MiB.
    pub max_request_bytes_per_call: u64,
    /// Response body bytes one call may receive; the stream that crosses it
    /// ends with `HTTP-response-body-size`. Default 64 MiB.
    pub max_response_bytes_per_call: u64,
    /// Requests of one call in flight at once. Default 8.
    pub max_in_flight_per_call: u32,
    /// Outbound connections open at once, all calls of the engine
    /// together. Default 256.
    pub max_connections: u32,
    /// Connecting (DNS, TCP, TLS, handshake), ms; clamped to the call's
    /// remaining deadline. Default 10000.
    pub connect_timeout_ms: u64,
    /// From sending the request to the response head, ms; clamped to the
    /// call's remaining deadline. Default 30000.
    pub first_byte_timeout_ms: u64,
    /// Between two chunks of the response body, ms; clamped to the call's
    /// remaining deadline. Default 30000.
    pub between_bytes_timeout_ms: u64,
    /// PEM file of extra CA certificates trusted for `https` (besides the
    /// webpki roots), e.g. a private CA.
    pub ca_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            max_requests_per_call: 100,
            max_request_bytes_per_call: 16 * 1024 * 1024,
            max_response_bytes_per_call: 64 * 1024 * 1024,
            max_in_flight_per_call: 8,
            max_connections: 256,
            connect_timeout_ms: 10_000,
            first_byte_timeout_ms: 30_000,
            between_bytes_timeout_ms: 30_000,
            ca_file: None,
        }
    }
}

/// What is wrong with `[http]`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An allowlist entry does not parse.
    #[error("http.allowed_hosts: {0}")]
    Pattern(#[from] PatternError),
    /// A limit that must be positive is 0.
    #[error("http.{key} must be positive")]
    Zero {
        /// The key.
        key: &'static str,
    },
    /// `ca_file` cannot be read or holds no certificate.
    #[error("http.ca_file {path}: {message}; give a PEM file of CA certificates")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

impl Config {
    /// Check the section: every pattern parses, limits are positive, the
    /// CA file (if any) holds certificates. Once per config load; reads the
    /// CA file.
    pub fn check(&self) -> Result<(), ConfigError> {
        for p in &self.allowed_hosts {
            p.parse::<Pattern>()?;
        }
        for (key, v) in [
            (
                "max_requests_per_call",
                u64::from(self.max_requests_per_call),
            ),
            (
                "max_in_flight_per_call",
                u64::from(self.max_in_flight_per_call),
            ),
            ("max_connections", u64::from(self.max_connections)),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("first_byte_timeout_ms", self.first_byte_timeout_ms),
            ("between_bytes_timeout_ms", self.between_bytes_timeout_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero { key });
            }
        }
        if let Some(path) = &self.ca_file {
            connect::read_ca_file(path).map_err(|message| ConfigError::CaFile {
                path: path.clone(),
                message,
            })?;
        }
        Ok(())
    }
}

/// Where one call may send requests: a URL must match at least one pattern
/// of every list. `Default` (no lists) denies everything.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    lists: Option<Arc<Lists>>,
}

#[derive(Debug)]
struct Lists {
    /// The capsule's request.
    capsule: Vec<Pattern>,
    /// The operator's `allowed_hosts`.
    policy: Arc<Vec<Pattern>>,
    /// The DAG node's list, if it has one.
    node: Option<Vec<Pattern>>,
}

impl Grant {
    /// Whether any request may be made at all.
    pub fn any(&self) -> bool {
        self.lists.is_some()
    }

    /// The capsule's patterns that are granted (for `soma dag validate`).
    pub fn patterns(&self) -> Vec<String> {
        self.lists
            .as_ref()
            .map(|l| l.capsule.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    }

    /// Whether `target` matches a pattern of every list. Free.
    pub fn allows(&self, target: &Target) -> bool {
        self.lists.as_ref().is_some_and(|l| {
            l.capsule.iter().any(|p| p.matches(target))
                && l.policy.iter().any(|p| p.matches(target))
                && l.node
                    .as_ref()
                    .is_none_or(|n| n.iter().any(|p| p.matches(target)))
        })
    }
}

/// The http capability's engine-wide share: the section, the operator's
/// parsed allowlist, the connection count and the TLS configuration (built
/// on the first `https` request).
#[derive(Debug)]
pub struct Service {
    inner: Arc<ServiceInner>,
}

#[derive(Debug)]
struct ServiceInner {
    config: Config,
    policy: Arc<Vec<Pattern>>,
    connections: AtomicUsize,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
    totals: TotalCounters,
}

/// Every finished call's [`Usage`] of one engine, summed (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Requests that got a response head.
    pub ok: u64,
    /// Requests refused by the policy (the allowlists, the address rule).
    pub denied: u64,
    /// Requests sent that got no response head.
    pub error: u64,
    /// Requests refused by a quota or the connection cap.
    pub quota: u64,
    /// Request body bytes sent.
    pub bytes_out: u64,
    /// Response body bytes received.
    pub bytes_in: u64,
}

#[derive(Debug, Default)]
struct TotalCounters {
    ok: AtomicU64,
    denied: AtomicU64,
    error: AtomicU64,
    quota: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
}

impl TotalCounters {
    fn add(&self, u: &Usage) {
        let add = |c: &AtomicU64, n: u64| {
            if n > 0 {
                c.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&self.ok, u.requests.saturating_sub(u.failed));
        add(&self.denied, u.denied.saturating_sub(u.quota));
        add(&self.error, u.failed);
        add(&self.quota, u.quota);
        add(&self.bytes_out, u.bytes_sent);
        add(&self.bytes_in, u.bytes_received);
    }
}

impl Service {
    /// The shared state for `config`. Once per engine; no I/O (the CA file
    /// is read on the first `https` request).
    pub fn new(config: &Config) -> Self {
        let policy = config
            .allowed_hosts
            .iter()
            .filter_map(|p| match p.parse::<Pattern>() {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!("ignoring {e}");
                    None
                }
            })
            .collect();
        Self {
            inner: Arc::new(ServiceInner {
                config: config.clone(),
                policy: Arc::new(policy),
                connections: AtomicUsize::new(0),
                tls: OnceLock::new(),
                totals: TotalCounters::default(),
            }),
        }
    }

    /// Outbound connections open now (all calls).
    pub fn open_connections(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    /// What every finished call of this engine used, summed (monotonic).
    /// Six atomic loads.
    pub fn totals(&self) -> Totals {
        let t = &self.inner.totals;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Totals {
            ok: get(&t.ok),
            denied: get(&t.denied),
            error: get(&t.error),
            quota: get(&t.quota),
            bytes_out: get(&t.bytes_out),
            bytes_in: get(&t.bytes_in),
        }
    }
}

/// What one call's requests used, for its report (and the ledger).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Requests sent (admitted by the policy and the quotas, and connected
    /// to a permitted address). The ledger's `http-requests`.
    pub requests: u64,
    /// Requests refused by the policy or a quota (`quota` included).
    pub denied: u64,
    /// Of `denied`, those refused by a per-call quota (requests, requests
    /// in flight, a body cut at the bytes quota) or the engine's
    /// connection cap.
    #[serde(default)]
    pub quota: u64,
    /// Of `requests`, those that got no response head (connection, TLS,
    /// protocol error, timeout, deadline).
    #[serde(default)]
    pub failed: u64,
    /// Request body bytes sent.
    pub bytes_sent: u64,
    /// Response body bytes received.
    pub bytes_received: u64,
}

impl Usage {
    /// Whether the call made or tried no request.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A call's counters, shared with its requests' tasks.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    denied: AtomicU64,
    quota: AtomicU64,
    failed: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    in_flight: AtomicUsize,
    logged: AtomicU32,
}

/// What a call's requests share: its counters, its deadline, its
/// cancellation flag, and who it is (for logs).
#[derive(Debug)]
struct Call {
    counters: Counters,
    stop: connect::Stop,
    capsule: Arc<str>,
    run: Arc<str>,
}

impl Call {
    /// [`Call::deny`] for a refusal by a quota: counted in `quota` too.
    fn deny_quota(&self, target: &str, why: &str) {
        self.counters.quota.fetch_add(1, Ordering::Relaxed);
        self.deny(target, why);
    }

    /// A request admitted by [`Hooks::admit`] was refused before it was
    /// sent (its name resolves only to restricted addresses): it is a
    /// denial, not a request.
    fn undo_admission(&self, target: &str, why: &str) {
        self.counters.requests.fetch_sub(1, Ordering::Relaxed);
        self.deny(target, why);
    }

    /// Count and (the first few per call) log a refusal: the target
    /// (scheme, host, port — never a path, query, header or body) and why.
    fn deny(&self, target: &str, why: &str) {
        self.counters.denied.fetch_add(1, Ordering::Relaxed);
        if self.counters.logged.fetch_add(1, Ordering::Relaxed) < LOGGED_DENIALS_PER_CALL {
            tracing::warn!(
                capsule = %self.capsule,
                run = %self.run,
                target,
                "http request denied: {why}"
            );
        }
    }
}

/// Per-call http state: the WASI HTTP context and Soma's hooks.
pub struct State {
    ctx: WasiHttpCtx,
    hooks: Hooks,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("http::State").finish_non_exhaustive()
    }
}

impl State {
    /// The view wasmtime-wasi-http's host functions use, over the call's
    /// resource table (WASI's: streams and pollables are shared).
    pub fn view<'a>(
        &'a mut self,
        table: &'a mut wasmtime::component::ResourceTable,
    ) -> WasiHttpCtxView<'a> {
        WasiHttpCtxView {
            hooks: &mut self.hooks,
            table,
            ctx: &mut self.ctx,
        }
    }

    /// What the call's requests used so far.
    pub fn usage(&self) -> Usage {
        self.hooks.call.usage()
    }
}

impl Call {
    fn usage(&self) -> Usage {
        let c = &self.counters;
        Usage {
            requests: c.requests.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
            quota: c.quota.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
        }
    }
}

/// Soma's `WasiHttpHooks`: the policy check and the connector.
struct Hooks {
    grant: Grant,
    service: Arc<ServiceInner>,
    call: Arc<Call>,
}

impl Hooks {
    /// The checks that need no I/O: target, grant, quotas, slots. Cheap.
    fn admit(
        &self,
        request: &http::Request<wasmtime_wasi_http::WasiBody>,
    ) -> Result<connect::Admitted, wasmtime_wasi_http::Error> {
        use wasmtime_wasi_http::Error;
        let call = &self.call;
        let Some(target) = Target::from_uri(request.uri()) else {
            call.deny("-", "the URL has no http(s) scheme or no valid host");
            return Err(Error::HttpRequestUriInvalid);
        };
        let shown = target.to_string();
        if !self.grant.allows(&target) {
            call.deny(
                &shown,
                if self.grant.any() {
                    "no pattern of the grant matches (the capsule's request, [http] \
                     allowed_hosts and the DAG node's list must all match)"
                } else {
                    "http is not granted (ask for it in describe() and have the operator \
                     list the host in [http] allowed_hosts)"
                },
            );
            return Err(Error::HttpRequestDenied);
        }
        let config = &self.service.config;
        let n = call.counters.requests.load(Ordering::Relaxed);
        if n >= u64::from(config.max_requests_per_call) {
            call.deny_quota(&shown, "the call's request quota is used up");
            return Err(Error::InternalError(Some(format!(
                "{QUOTA_ERROR_PREFIX}this call may make {} requests; the operator raises \
                 [http] max_requests_per_call",
                config.max_requests_per_call
            ))));
        }
        let slots = connect::Slots::take(&self.service, call)?;
        call.counters.requests.fetch_add(1, Ordering::Relaxed);
        Ok(connect::Admitted {
            target,
            call: Arc::clone(call),
            service: Arc::clone(&self.service),
            slots,
        })
    }
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn Future<Output = connect::SendResult> + Send> {
        match self.admit(&request) {
            Ok(admitted) => {
                let call = Arc::clone(&admitted.call);
                Box::new(async move {
                    let sent = connect::send(admitted, request, options).await;
                    if sent.is_err() {
                        call.counters.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    sent
                })
            }
            Err(e) => Box::new(async move { Err(e) }),
        }
    }
}

/// Store data that hands out the per-call http view.
pub trait HttpView: Send {
    /// The call's WASI HTTP view (http state + the call's resource table).
    fn http_view(&mut self) -> WasiHttpCtxView<'_>;
}

/// Wire `wasi:http/outgoing-handler` and `wasi:http/types` (sync) into
/// `linker`. Once per engine.
///
/// With these bindings a request runs on wasmtime-wasi's shared tokio
/// runtime while the call's thread waits: every request crosses threads
/// twice (out, and back with the answer). [`add_to_linker_async`] is the
/// path without the crossings.
pub fn add_to_linker<T: HttpView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    use wasmtime_wasi_http::p2::bindings;
    let options = bindings::LinkOptions::default();
    bindings::sync::http::outgoing_handler::add_to_linker::<T, WasiHttp>(linker, T::http_view)?;
    bindings::sync::http::types::add_to_linker::<T, WasiHttp>(linker, &options.into(), T::http_view)
}

/// Wire the same interfaces (async) into `linker`. Once per engine.
///
/// An instance linked this way is driven with wasmtime's `*_async` calls;
/// on a current-thread tokio runtime owned by the call's thread, the
/// request's connection, its I/O and the guest all run on that one thread.
pub fn add_to_linker_async<T: HttpView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    use wasmtime_wasi_http::p2::bindings;
    let options = bindings::LinkOptions::default();
    bindings::http::outgoing_handler::add_to_linker::<T, WasiHttp>(linker, T::http_view)?;
    bindings::http::types::add_to_linker::<T, WasiHttp>(linker, &options.into(), T::http_view)
}

/// The http capability: a capsule asks with the request `http` and
/// allowlist patterns as arguments; granted are the URLs that also match
/// the operator's `[http] allowed_hosts` (and the DAG node's list).
#[derive(Debug, Clone, Copy)]
pub struct Http;

impl crate::capability::Capability for Http {
    const NAME: &'static str = "http";
    const INTERFACES: &'static [&'static str] = &[];
    type Config = Config;
    type ConfigError = ConfigError;
    /// The operator's allowlist, `[http] allowed_hosts` (parsed).
    type Policy = Arc<Vec<Pattern>>;
    type Shared = Service;
    /// The patterns asked for, as written.
    type Wants = Vec<String>;
    type Grant = Grant;
    type State = State;
    type PrepareError = std::convert::Infallible;
    type CommitError = std::convert::Infallible;
    type Report = Usage;

    fn check(config: &Config) -> Result<(), ConfigError> {
        config.check()
    }

    fn shared(config: &Config, _engine: &crate::capability::EngineContext) -> Service {
        Service::new(config)
    }

    fn want(wants: &mut Vec<String>, args: &[String]) {
        for p in args {
            if !wants.contains(p) {
                wants.push(p.clone());
            }
        }
    }

    fn describe_wants(wants: &Vec<String>, out: &mut Vec<String>) {
        out.extend(wants.iter().map(|p| format!("{}:{p}", Self::NAME)));
    }

    /// The capsule's patterns that parse, the operator's allowlist and the
    /// node's list (if it has one); nothing if any of them is empty.
    /// Parses the capsule's patterns (a few µs each).
    fn grant(
        wants: &Vec<String>,
        policy: &Arc<Vec<Pattern>>,
        scope: &crate::capability::GrantScope<'_>,
    ) -> Grant {
        use crate::capability::Allow;
        let parse = |list: &[String]| -> Vec<Pattern> {
            list.iter().filter_map(|p| p.parse().ok()).collect()
        };
        let capsule = parse(wants);
        let node = match scope.allows(Self::NAME) {
            Allow::Granted => None,
            Allow::Denied => return Grant::default(),
            Allow::Only(list) => Some(parse(list)),
        };
        if capsule.is_empty() || policy.is_empty() || node.as_ref().is_some_and(Vec::is_empty) {
            return Grant::default();
        }
        Grant {
            lists: Some(Arc::new(Lists {
                capsule,
                policy: Arc::clone(policy),
                node,
            })),
        }
    }

    /// `true`, `false`, or patterns that narrow the grant (each must parse).
    fn check_allow(allow: &crate::capability::Allow) -> Result<(), crate::capability::AllowError> {
        if let crate::capability::Allow::Only(list) = allow {
            for p in list {
                if let Err(e) = p.parse::<Pattern>() {
                    return Err(crate::capability::AllowError::BadArgument {
                        name: Self::NAME,
                        why: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Clones the grant (an `Arc`) and allocates the call's counters.
    fn prepare(
        service: &Service,
        grant: &Grant,
        call: &crate::capability::CallContext<'_>,
    ) -> Result<State, std::convert::Infallible> {
        Ok(State {
            ctx: WasiHttpCtx::new(),
            hooks: Hooks {
                grant: grant.clone(),
                service: Arc::clone(&service.inner),
                call: Arc::new(Call {
                    counters: Counters::default(),
                    stop: connect::Stop::new(call.deadline, call.cancel.cloned()),
                    capsule: Arc::clone(call.capsule),
                    run: Arc::clone(call.run),
                }),
            },
        })
    }

    /// The call's usage, also added to the engine's totals
    /// ([`Service::totals`]). A few atomic adds.
    fn finish(state: State) -> Usage {
        let usage = state.usage();
        state.hooks.service.totals.add(&usage);
        usage
    }
}

impl Service {
    /// The operator's parsed allowlist (`[http] allowed_hosts`).
    pub fn policy(&self) -> &Arc<Vec<Pattern>> {
        &self.inner.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::{Allow, Capability, GrantScope, Restriction};

    fn target(url: &str) -> Target {
        Target::from_uri(&url.parse().expect("uri")).expect("target")
    }

    fn policy(list: &[&str]) -> Arc<Vec<Pattern>> {
        Arc::new(list.iter().map(|p| p.parse().expect("pattern")).collect())
    }

    fn wants(list: &[&str]) -> Vec<String> {
        list.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn a_url_must_match_every_list() {
        let scope = GrantScope {
            capsule: "sha256:x",
            run: "r",
            origin: "capsules/x.wasm",
            node: None,
        };
        let g = Http::grant(
            &wants(&["https://*.example.com", "http://127.0.0.1:*"]),
            &policy(&["https://api.example.com", "http://127.0.0.1:8080"]),
            &scope,
        );
        assert!(g.allows(&target("https://api.example.com/v1")));
        assert!(
            !g.allows(&target("https://www.example.com/")),
            "not in the policy"
        );
        assert!(g.allows(&target("http://127.0.0.1:8080/")));
        assert!(!g.allows(&target("http://127.0.0.1:8081/")), "port");
        assert!(!g.allows(&target("https://127.0.0.1:8080/")), "scheme");
        // A node's list narrows; `false` takes it away; a bad entry grants nothing.
        let only = Restriction(
            [(
                "http".to_owned(),
                Allow::Only(vec!["http://127.0.0.1:*".into()]),
            )]
            .into(),
        );
        let g = Http::grant(
            &wants(&["https://*.example.com", "http://127.0.0.1:*"]),
            &policy(&["https://api.example.com", "http://127.0.0.1:8080"]),
            &GrantScope {
                node: Some(&only),
                ..scope
            },
        );
        assert!(g.allows(&target("http://127.0.0.1:8080/")));
        assert!(!g.allows(&target("https://api.example.com/")));
        let off = Restriction([("http".to_owned(), Allow::Denied)].into());
        assert!(
            !Http::grant(
                &wants(&["*://*:*"]),
                &policy(&["*://*:*"]),
                &GrantScope {
                    node: Some(&off),
                    ..scope
                }
            )
            .any()
        );
        assert!(!Http::grant(&wants(&["*://*:*"]), &policy(&[]), &scope).any());
        assert!(!Http::grant(&wants(&["nonsense"]), &policy(&["*://*:*"]), &scope).any());
        assert!(Http::check_allow(&Allow::Only(vec!["nope".into()])).is_err());
        assert!(Http::check_allow(&Allow::Only(vec!["https://a.b".into()])).is_ok());
    }

    #[test]
    fn config_checks_patterns_limits_and_the_ca_file() {
        let mut c = Config {
            allowed_hosts: vec!["https://ok.example".into()],
            ..Config::default()
        };
        assert!(c.check().is_ok());
        c.allowed_hosts.push("ok.example".into());
        let e = c.check().expect_err("no scheme");
        assert!(e.to_string().starts_with("http.allowed_hosts: "), "{e}");
        c.allowed_hosts.pop();
        c.max_requests_per_call = 0;
        assert!(matches!(c.check(), Err(ConfigError::Zero { .. })));
        c.max_requests_per_call = 1;
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate").expect("write");
        c.ca_file = Some(empty);
        assert!(matches!(c.check(), Err(ConfigError::CaFile { .. })));
        c.ca_file = Some(dir.path().join("missing.pem"));
        assert!(matches!(c.check(), Err(ConfigError::CaFile { .. })));
    }
}
