//! The connector: resolve on the host, refuse restricted addresses,
//! connect to exactly the checked address, TLS, HTTP/1.1, and the bodies
//! that count bytes and end at the call's quotas, timeouts and deadline.
//!
//! Everything here runs on wasmtime-wasi's tokio runtime (the guest blocks
//! in `wasi:io/poll` meanwhile). The epoch deadline cannot interrupt a
//! guest blocked in a host poll, so every future and body ends by the
//! call's deadline by itself ([`Stop`]).

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, io::TokioIo};

use super::{Call, ServiceInner, Target, address::is_restricted, pattern::Host};

/// What `send_request` hands back: the response and the connection's task.
pub(super) type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

/// How often a blocked request looks at the call's cancellation flag.
const CANCEL_POLL: Duration = Duration::from_millis(25);

/// When a call's requests must stop: its deadline, or its caller going away.
#[derive(Debug, Clone)]
pub(super) struct Stop {
    deadline: Instant,
    cancel: Option<Arc<AtomicBool>>,
}

/// Why a stage stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// The stage's own timeout.
    Timeout,
    /// The call's deadline.
    Deadline,
    /// The call was cancelled.
    Cancelled,
}

impl Stopped {
    /// The WASI error for a stage that stopped; `timeout` for its own timeout.
    fn error(self, timeout: Error) -> Error {
        match self {
            Self::Timeout => timeout,
            Self::Deadline => Error::InternalError(Some(
                "stopped: the call reached its deadline (limits.timeout_ms)".into(),
            )),
            Self::Cancelled => Error::InternalError(Some("stopped: the call was cancelled".into())),
        }
    }
}

impl Stop {
    /// The stop of a call ending at `deadline`, cancelled by `cancel`.
    pub(super) fn new(deadline: Instant, cancel: Option<Arc<AtomicBool>>) -> Self {
        Self { deadline, cancel }
    }

    /// A stage timeout of `timeout` from now, clamped to the deadline.
    fn within(&self, timeout: Duration) -> Instant {
        (Instant::now() + timeout).min(self.deadline)
    }

    /// A watcher that fires at `until` (a stage's end, at most the
    /// deadline) or on cancellation. It registers no timer until the
    /// watched work first waits (a stage that completes at once, like
    /// hyper's handshake, costs none).
    fn watch(&self, until: Instant) -> Watch {
        Watch {
            until,
            deadline: self.deadline,
            sleep: None,
            cancel: self.cancel.clone().map(|flag| (flag, None)),
        }
    }

    /// Run `f` until `until` (or the deadline, or cancellation).
    async fn run<F: Future>(&self, until: Instant, f: F) -> Result<F::Output, Stopped> {
        let mut watch = self.watch(until);
        let mut f = std::pin::pin!(f);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = f.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            watch.poll(cx).map(Err)
        })
        .await
    }
}

/// A stage's end (its timeout, the deadline) and the cancellation flag,
/// pollable from a body. Its timers are made on the first wait, and a
/// moved end only re-arms the timer at the next wait: tokio's timer wakes
/// its driver (an eventfd write and an extra `epoll_wait`) for each timer
/// registered earlier than any it holds, so a timer per stage and a
/// re-armed one per body frame cost three syscalls per request.
struct Watch {
    until: Instant,
    deadline: Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    cancel: Option<(Arc<AtomicBool>, Option<tokio::time::Interval>)>,
}

impl Watch {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Stopped> {
        if let Some((flag, tick)) = &mut self.cancel {
            if flag.load(Ordering::Relaxed) {
                return Poll::Ready(Stopped::Cancelled);
            }
            let tick = tick.get_or_insert_with(|| {
                let mut tick =
                    tokio::time::interval_at((Instant::now() + CANCEL_POLL).into(), CANCEL_POLL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick
            });
            while tick.poll_tick(cx).is_ready() {
                if flag.load(Ordering::Relaxed) {
                    return Poll::Ready(Stopped::Cancelled);
                }
            }
        }
        let until = self.until;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until.into())));
        if sleep.deadline() != until.into() {
            sleep.as_mut().reset(until.into());
        }
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(if self.until >= self.deadline {
            Stopped::Deadline
        } else {
            Stopped::Timeout
        })
    }

    /// Move the stage's end to `until` (at most the deadline); the timer
    /// follows at the next wait.
    fn reset(&mut self, until: Instant) {
        self.until = until.min(self.deadline);
    }
}

/// A request's places in the per-call in-flight count and the engine's
/// connection count; given back when the request's last part ends.
#[derive(Debug)]
pub(super) struct Slots {
    service: Arc<ServiceInner>,
    call: Arc<Call>,
}

impl Slots {
    /// Take a place in both counts, or refuse with `connection-limit-reached`.
    pub(super) fn take(service: &Arc<ServiceInner>, call: &Arc<Call>) -> Result<Arc<Self>, Error> {
        let config = &service.config;
        let in_flight = call.counters.in_flight.fetch_add(1, Ordering::AcqRel);
        if in_flight >= config.max_in_flight_per_call as usize {
            call.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
            call.deny_quota(
                "-",
                "the call has max_in_flight_per_call requests in flight",
            );
            return Err(Error::ConnectionLimitReached);
        }
        let open = service.connections.fetch_add(1, Ordering::AcqRel);
        if open >= config.max_connections as usize {
            service.connections.fetch_sub(1, Ordering::AcqRel);
            call.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
            call.deny_quota(
                "-",
                "the engine has max_connections outbound connections open",
            );
            return Err(Error::ConnectionLimitReached);
        }
        Ok(Arc::new(Self {
            service: Arc::clone(service),
            call: Arc::clone(call),
        }))
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.service.connections.fetch_sub(1, Ordering::AcqRel);
        self.call.counters.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request that passed the checks that need no I/O.
pub(super) struct Admitted {
    pub(super) target: Target,
    pub(super) call: Arc<Call>,
    pub(super) service: Arc<ServiceInner>,
    pub(super) slots: Arc<Slots>,
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

/// The certificates of a PEM file; an error names what is wrong.
pub(super) fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("it holds no PEM certificate".into());
    }
    Ok(certs)
}

impl ServiceInner {
    /// The TLS client configuration: webpki roots plus `ca_file`. Built on
    /// the first `https` request (reads the CA file once).
    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        self.tls
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(
                    webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned(),
                );
                if let Some(path) = &self.config.ca_file {
                    let certs = read_ca_file(path)
                        .map_err(|e| format!("http.ca_file {}: {e}", path.display()))?;
                    for c in certs {
                        roots
                            .add(c)
                            .map_err(|e| format!("http.ca_file {}: {e}", path.display()))?;
                    }
                }
                let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                let mut config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Ok(Arc::new(config))
            })
            .clone()
            .map_err(|e| {
                tracing::error!("http: TLS is unavailable: {e}");
                Error::ConfigurationError
            })
    }
}

fn tls_error(e: &std::io::Error) -> Error {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_)) => Error::TlsCertificateError,
        Some(rustls::Error::AlertReceived(_)) => Error::TlsAlertReceived {
            alert_id: None,
            alert_message: None,
        },
        _ => Error::TlsProtocolError,
    }
}

/// Send `request` to the admitted target. Bounded by the stage timeouts
/// and the call's deadline; the response body counts and cuts bytes.
pub(super) async fn send(
    admitted: Admitted,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> SendResult {
    let Admitted {
        target,
        call,
        service,
        slots,
    } = admitted;
    let config = &service.config;
    let stop = call.stop.clone();
    let clamp = |asked: Option<Duration>, ms: u64| {
        let ours = Duration::from_millis(ms);
        asked.map_or(ours, |a| a.min(ours))
    };
    let opts = options.unwrap_or_default();
    let connect_by = stop.within(clamp(opts.connect_timeout, config.connect_timeout_ms));

    // Resolve on the host; keep only addresses the operator lets it reach.
    let port = target.port;
    let found: Vec<IpAddr> = match &target.host {
        Host::Ip(ip) => vec![*ip],
        Host::Name(name) => stop
            .run(connect_by, tokio::net::lookup_host((name.as_str(), port)))
            .await
            .map_err(|s| s.error(Error::DnsTimeout))?
            .map_err(|_| Error::DnsError {
                rcode: None,
                info_code: None,
            })?
            .map(|a| super::pattern::canonical(a.ip()))
            .collect(),
    };
    if found.is_empty() {
        return Err(Error::DestinationNotFound);
    }
    let allowed: Vec<SocketAddr> = found
        .iter()
        .filter(|ip| {
            !is_restricted(**ip)
                || service
                    .policy
                    .iter()
                    .any(|p| p.names_address(target.scheme, **ip, port))
        })
        .map(|ip| SocketAddr::new(*ip, port))
        .collect();
    if allowed.is_empty() {
        call.undo_admission(
            &target.to_string(),
            "it resolves only to loopback, private, link-local or metadata addresses, and \
             no [http] allowed_hosts entry names the address or its range",
        );
        return Err(Error::HttpRequestDenied);
    }

    // Connect to exactly a checked address.
    let mut tcp = None;
    for addr in allowed {
        match stop
            .run(connect_by, tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(s)) => {
                tcp = Some(s);
                break;
            }
            Ok(Err(_)) => {}
            Err(s) => return Err(s.error(Error::ConnectionTimeout)),
        }
    }
    let tcp = tcp.ok_or(Error::ConnectionRefused)?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Stream> = match target.scheme {
        super::Scheme::Http => Box::new(tcp),
        super::Scheme::Https => {
            let name = match &target.host {
                Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
                Host::Name(n) => {
                    ServerName::try_from(n.clone()).map_err(|_| Error::HttpRequestUriInvalid)?
                }
            };
            let connector = tokio_rustls::TlsConnector::from(service.tls()?);
            let tls = stop
                .run(connect_by, connector.connect(name, tcp))
                .await
                .map_err(|s| s.error(Error::ConnectionTimeout))?
                .map_err(|e| tls_error(&e))?;
            Box::new(tls)
        }
    };
    let (mut sender, conn) = stop
        .run(
            connect_by,
            hyper::client::conn::http1::handshake(TokioIo::new(io)),
        )
        .await
        .map_err(|s| s.error(Error::ConnectionTimeout))?
        .map_err(|_| Error::HttpProtocolError)?;

    // Origin-form URI on the wire; the body counted and held to the quota.
    let (mut parts, body) = request.into_parts();
    parts.uri = http::Uri::builder()
        .path_and_query(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    let body = SentBody {
        inner: body,
        call: Arc::clone(&call),
        limit: config.max_request_bytes_per_call,
    };
    let request = http::Request::from_parts(parts, body);

    // Wait for the response head while driving the connection.
    let first_byte_by = stop.within(clamp(opts.first_byte_timeout, config.first_byte_timeout_ms));
    let mut conn = Some(conn);
    let mut send = std::pin::pin!(sender.send_request(request));
    let response = stop
        .run(
            first_byte_by,
            std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
                Poll::Ready(r) => Poll::Ready(r.map_err(|e| hyper_error(&e))),
                Poll::Pending => {
                    let Some(c) = conn.as_mut() else {
                        return Poll::Pending;
                    };
                    let done = ready!(Pin::new(c).poll(cx));
                    conn = None;
                    match done {
                        Ok(()) => send.as_mut().poll(cx).map_err(|e| hyper_error(&e)),
                        Err(e) => Poll::Ready(Err(hyper_error(&e))),
                    }
                }
            }),
        )
        .await
        .map_err(|s| s.error(Error::ConnectionReadTimeout))??;

    let between = clamp(opts.between_bytes_timeout, config.between_bytes_timeout_ms);
    let response = response.map(|incoming| {
        ReceivedBody {
            inner: incoming,
            watch: stop.watch(stop.within(between)),
            between,
            call: Arc::clone(&call),
            limit: config.max_response_bytes_per_call,
            _slots: Arc::clone(&slots),
        }
        .boxed_unsync()
    });
    let io_stop = stop.clone();
    let io = async move {
        let _slots = slots;
        let Some(conn) = conn else {
            return Ok(());
        };
        match io_stop.run(io_stop.deadline, conn).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(hyper_error(&e)),
            Err(s) => Err(s.error(Error::HttpResponseTimeout)),
        }
    };
    Ok((response, Box::new(io)))
}

fn hyper_error(e: &hyper::Error) -> Error {
    if e.is_timeout() {
        return Error::HttpResponseTimeout;
    }
    if e.is_incomplete_message() {
        return Error::HttpResponseIncomplete;
    }
    if let Some(inner) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<Error>()) {
        return clone_error(inner);
    }
    Error::HttpProtocolError
}

/// The body errors Soma itself raises, copied out of hyper's wrapper.
fn clone_error(e: &Error) -> Error {
    match e {
        Error::HttpRequestBodySize(n) => Error::HttpRequestBodySize(*n),
        Error::InternalError(m) => Error::InternalError(m.clone()),
        _ => Error::HttpProtocolError,
    }
}

/// The request body: counts bytes sent into the call's usage and ends with
/// `HTTP-request-body-size` past the call's quota.
struct SentBody {
    inner: WasiBody,
    call: Arc<Call>,
    limit: u64,
}

impl Body for SentBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
        {
            let n = data.len() as u64;
            let before = self
                .call
                .counters
                .bytes_sent
                .fetch_add(n, Ordering::Relaxed);
            if before.saturating_add(n) > self.limit {
                self.call
                    .deny_quota("-", "the call's request-body quota is used up");
                return Poll::Ready(Some(Err(Error::HttpRequestBodySize(Some(self.limit)))));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body: counts bytes received, ends with
/// `HTTP-response-body-size` at the call's quota (never buffering past
/// it), with `connection-read-timeout` when the server pauses longer than
/// the between-bytes timeout, and at the call's deadline or cancellation.
struct ReceivedBody {
    inner: hyper::body::Incoming,
    watch: Watch,
    between: Duration,
    call: Arc<Call>,
    limit: u64,
    /// Held until the body is dropped.
    _slots: Arc<Slots>,
}

impl Body for ReceivedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(hyper_error(&e)))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    let before = this
                        .call
                        .counters
                        .bytes_received
                        .fetch_add(n, Ordering::Relaxed);
                    if before.saturating_add(n) > this.limit {
                        this.call
                            .deny_quota("-", "the call's response-body quota is used up");
                        return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(
                            this.limit,
                        )))));
                    }
                }
                let next = Instant::now() + this.between;
                this.watch.reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                let stopped = ready!(this.watch.poll(cx));
                Poll::Ready(Some(Err(stopped.error(Error::ConnectionReadTimeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
