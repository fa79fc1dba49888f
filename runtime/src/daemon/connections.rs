//! Accepting and serving connections, with every resource a client can
//! hold before it has even authenticated bounded by operator config:
//!
//! - **Connections**: at most `daemon.max_connections` open per listener
//!   (a semaphore permit per connection, lowered to what the fd limit
//!   allows). Past it a connection is accepted and answered `503` with
//!   `Retry-After` (plain HTTP) or closed (TLS) at once, with one warning
//!   every 10 s — so a flood costs a refusal each, not a hang for everyone.
//! - **Time**: a TLS handshake has `tls_handshake_timeout_ms`; a request
//!   head has `header_read_timeout_ms` from the moment the connection opens
//!   or the first byte of a next request arrives (slowloris; this also
//!   covers HTTP/2's preface and first HEADERS) — an overdue head is
//!   dropped at once, as nothing is in flight; a connection with nothing
//!   in flight and nothing received is closed (gracefully) after
//!   `idle_timeout_ms`. One
//!   watchdog per connection checks these (one timer entry each); the byte
//!   counting costs an atomic load per read.
//! - **Size and streams**: the HTTP/1 read buffer and the HTTP/2 header
//!   list are capped by `max_header_bytes`; HTTP/2 connections have at most
//!   `http2_max_concurrent_streams` streams and are pinged every
//!   `http2_keep_alive_interval_ms`.
//!
//! Graceful shutdown: the accept loops stop, every connection is told to
//! finish its requests in flight and close (HTTP/1 after the current
//! response, HTTP/2 with GOAWAY), and [`Listener::drained`] resolves once
//! every connection is gone.

use std::{
    convert::Infallible,
    future::Future,
    io::{self, ErrorKind},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, body::Body};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore, watch},
};
use tokio_rustls::TlsAcceptor;

use super::DaemonConfig;

/// File descriptors kept for the daemon's own use (database, blobs, AOT
/// cache, pipes, the metrics listener) when the connection cap is derived
/// from the fd limit.
pub const RESERVED_FDS: u64 = 256;

/// How often the "connection limit reached" warning may repeat.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a connection closed for a timeout gets to finish closing
/// gracefully before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The answer to a connection over the cap (plain HTTP only).
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 109\r\n\r\n\
{\"error\":{\"code\":\"too-many-connections\",\"message\":\"the daemon has daemon.max_connections open; retry later\"}}";

/// The connection limits of `[daemon]`, resolved once at start.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once per listener (after the fd clamp).
    pub max_connections: usize,
    /// See `daemon.header_read_timeout_ms`.
    pub header_read: Duration,
    /// See `daemon.idle_timeout_ms`.
    pub idle: Duration,
    /// See `daemon.tls_handshake_timeout_ms`.
    pub tls_handshake: Duration,
    /// See `daemon.max_header_bytes`.
    pub max_header_bytes: usize,
    /// See `daemon.http2_max_concurrent_streams`.
    pub http2_streams: u32,
    /// See `daemon.http2_keep_alive_interval_ms` (`None`: off).
    pub http2_ping: Option<Duration>,
    /// See `daemon.http2_keep_alive_timeout_ms`.
    pub http2_ping_timeout: Duration,
}

impl Limits {
    /// The limits of `config`, with `max_connections` lowered to what the
    /// file-descriptor limit allows (its soft limit raised to the hard one
    /// first). Once per daemon start.
    pub fn from_config(config: &DaemonConfig) -> Self {
        let mut max_connections = config.max_connections.max(1);
        if let Some(fds) = raise_fd_limit() {
            let allowed =
                usize::try_from(fds.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(usize::MAX);
            if allowed < max_connections {
                tracing::warn!(
                    "daemon.max_connections = {max_connections} exceeds what the file-descriptor limit ({fds}) allows; serving at most {allowed} connections (raise the limit: ulimit -n, LimitNOFILE=)"
                );
                max_connections = allowed;
            }
        }
        let ms = Duration::from_millis;
        Self {
            max_connections,
            header_read: ms(config.header_read_timeout_ms.max(1)),
            idle: ms(config.idle_timeout_ms.max(1)),
            tls_handshake: ms(config.tls_handshake_timeout_ms.max(1)),
            max_header_bytes: config.max_header_bytes,
            http2_streams: config.http2_max_concurrent_streams.max(1),
            http2_ping: (config.http2_keep_alive_interval_ms > 0)
                .then(|| ms(config.http2_keep_alive_interval_ms)),
            http2_ping_timeout: ms(config.http2_keep_alive_timeout_ms.max(1)),
        }
    }

    /// The HTTP/1 + HTTP/2 connection builder these limits configure.
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            // The watchdog times request heads (hyper's own timer would also
            // cut keep-alive idling at the header timeout).
            .header_read_timeout(None)
            .max_buf_size(self.max_header_bytes.max(8192));
        let header_list = u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX);
        let mut h2 = builder.http2();
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(self.http2_streams)
            .max_header_list_size(header_list)
            .keep_alive_interval(self.http2_ping);
        if self.http2_ping.is_some() {
            h2.keep_alive_timeout(self.http2_ping_timeout);
        }
        builder
    }
}

/// Most connections the kernel queues for the accept loop (capped by
/// `net.core.somaxconn`): a burst of connects while the daemon is briefly
/// descheduled is queued, not dropped into SYN retransmits.
pub const ACCEPT_BACKLOG: u32 = 4096;

/// Listen on `addr` (`host:port`; the first address it resolves to that
/// binds) with [`ACCEPT_BACKLOG`].
pub async fn bind(addr: &str) -> io::Result<TcpListener> {
    let mut last = io::Error::new(
        ErrorKind::InvalidInput,
        format!("`{addr}` resolves to no address"),
    );
    for resolved in tokio::net::lookup_host(addr).await? {
        let socket = if resolved.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(resolved) {
            Ok(()) => return socket.listen(ACCEPT_BACKLOG),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; the resulting soft
/// limit (`None` if it cannot be read).
fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Some(lim.rlim_cur)
}

/// One listening socket and what its connections are served with.
pub struct Listener {
    name: &'static str,
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Arc<Limits>,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("name", &self.name)
            .field("local", &self.tcp.local_addr().ok())
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Serve `app` on `tcp` (through TLS with `tls`). `name` labels logs.
    pub fn new(
        name: &'static str,
        tcp: TcpListener,
        tls: Option<TlsAcceptor>,
        app: Router,
        limits: Arc<Limits>,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        Self {
            name,
            tcp,
            tls,
            app,
            limits,
            slots,
        }
    }

    /// Accept until `stop` turns true; each connection is served on its
    /// own task (no thread). Returns a handle that resolves once every
    /// connection has closed.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Drained {
        let builder = Arc::new(self.limits.builder());
        let mut warned: Option<Instant> = None;
        let mut refused = 0u64;
        loop {
            let accepted = tokio::select! {
                a = self.tcp.accept() => a,
                _ = stop.wait_for(|s| *s) => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors (or a transient error): back
                    // off a little rather than spin.
                    if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                        tracing::warn!(
                            "{} listener: cannot accept: {e} (lower daemon.max_connections or raise the fd limit)",
                            self.name
                        );
                        warned = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                refused += 1;
                if self.tls.is_none() {
                    // Best effort, never waits: the socket buffer is empty.
                    let _ = stream.try_write(OVER_CAPACITY);
                }
                drop(stream);
                if warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    tracing::warn!(
                        "{} listener: {} connections open = daemon.max_connections; refused {refused} new connection(s) since the last notice (raise daemon.max_connections, and the fd limit, if this load is legitimate)",
                        self.name,
                        self.limits.max_connections
                    );
                    warned = Some(Instant::now());
                    refused = 0;
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            let connection = Connection {
                app: self.app.clone(),
                builder: builder.clone(),
                limits: self.limits.clone(),
                stop: stop.clone(),
                _permit: permit,
            };
            match &self.tls {
                None => {
                    tokio::spawn(connection.serve(stream));
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let timeout = connection.limits.tls_handshake;
                        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => connection.serve(tls).await,
                            Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                            Err(_) => tracing::debug!(
                                "TLS handshake took longer than daemon.tls_handshake_timeout_ms"
                            ),
                        }
                    });
                }
            }
        }
        Drained {
            slots: self.slots,
            cap: self.limits.max_connections,
        }
    }
}

/// Resolves once every connection of a stopped listener has closed.
#[derive(Debug)]
pub struct Drained {
    slots: Arc<Semaphore>,
    cap: usize,
}

impl Drained {
    /// Wait until every connection has given its slot back.
    pub async fn wait(self) {
        let all = u32::try_from(self.cap).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(all).await;
    }
}

/// One accepted connection, before its first byte is served.
struct Connection {
    app: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<Limits>,
    stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    /// Serve HTTP on `io` until the client leaves, a timeout closes it, or
    /// the daemon stops.
    async fn serve<S>(mut self, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked {
            inner: io,
            activity: activity.clone(),
        });
        let service = Tracking {
            app: TowerToHyperService::new(self.app.clone()),
            activity: activity.clone(),
        };
        let conn = self.builder.serve_connection(io, service);
        tokio::pin!(conn);
        let watchdog = tokio::time::sleep(self.limits.header_read);
        tokio::pin!(watchdog);
        let mut closing = false;
        let mut stopping = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!("connection ended: {e}");
                    }
                    return;
                }
                _ = self.stop.wait_for(|s| *s), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = &mut watchdog => {
                    if closing {
                        // It did not close within CLOSE_GRACE: drop it.
                        return;
                    }
                    match activity.check(&self.limits) {
                        Check::Until(at) => watchdog.as_mut().reset(at.into()),
                        Check::HeadTooSlow => {
                            // Nothing is in flight: nothing to finish.
                            tracing::debug!(
                                "closing a connection: no complete request head within daemon.header_read_timeout_ms"
                            );
                            return;
                        }
                        Check::Idle => {
                            tracing::debug!("closing a connection idle for daemon.idle_timeout_ms");
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                            watchdog.as_mut().reset((Instant::now() + CLOSE_GRACE).into());
                        }
                    }
                }
            }
        }
    }
}

/// What one connection is doing, for its watchdog. Times are ms since the
/// connection was served, plus one (0 = not set).
#[derive(Debug)]
struct Activity {
    born: Instant,
    /// Requests whose response has not been fully sent.
    in_flight: AtomicU32,
    /// When the head being read started (its first byte, or the accept);
    /// 0 while a request is in flight or the connection idles.
    head_since: AtomicU64,
    /// When the connection last became idle.
    idle_since: AtomicU64,
}

/// The watchdog's verdict.
enum Check {
    /// Look again at this instant.
    Until(Instant),
    /// A request head is overdue (nothing in flight): drop the connection.
    HeadTooSlow,
    /// Idle too long: close it gracefully.
    Idle,
}

impl Activity {
    fn new() -> Self {
        Self {
            born: Instant::now(),
            in_flight: AtomicU32::new(0),
            // The first request's head is due from the accept on.
            head_since: AtomicU64::new(1),
            idle_since: AtomicU64::new(1),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn at(&self, stamp: u64) -> Instant {
        self.born + Duration::from_millis(stamp.saturating_sub(1))
    }

    /// Bytes arrived. Every read; cost: one or two atomic loads (and a
    /// clock read when a new head starts).
    fn received(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Relaxed) == 0
        {
            self.head_since.store(self.now(), Ordering::Relaxed);
        }
    }

    /// A request's head was read: the service was called.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn check(&self, limits: &Limits) -> Check {
        let now = Instant::now();
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Check::Until(now + limits.idle.min(limits.header_read));
        }
        let head = self.head_since.load(Ordering::Relaxed);
        let (deadline, expired) = if head != 0 {
            (self.at(head) + limits.header_read, Check::HeadTooSlow)
        } else {
            (
                self.at(self.idle_since.load(Ordering::Relaxed)) + limits.idle,
                Check::Idle,
            )
        };
        if now >= deadline {
            expired
        } else {
            Check::Until(deadline)
        }
    }
}

/// A request in flight on a connection; dropped when its response body
/// has been sent (or abandoned).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.head_since.store(0, Ordering::Relaxed);
        a.idle_since.store(a.now(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The router as a hyper service that marks requests in flight.
#[derive(Clone)]
struct Tracking {
    app: TowerToHyperService<Router>,
    activity: Arc<Activity>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracking {
    type Response = hyper::Response<TrackedBody>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let guard = self.activity.begin();
        let response = self.app.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                inner: body,
                _in_flight: guard,
            }))
        })
    }
}

/// A response body that keeps its request counted in flight until it has
/// been sent (an SSE stream keeps its connection busy, not idle).
#[derive(Debug)]
pub struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl HttpBody for TrackedBody {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A socket that tells its [`Activity`] when bytes arrive.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.received();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_over_capacity_answer_is_well_formed() {
        let text = std::str::from_utf8(OVER_CAPACITY).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        assert_eq!(length, body.len());
        let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(v["error"]["code"], "too-many-connections");
    }

    #[test]
    fn the_watchdog_times_heads_from_their_first_byte_and_idles_after_responses() {
        let limits = Limits::from_config(&DaemonConfig {
            header_read_timeout_ms: 50,
            idle_timeout_ms: 10_000,
            ..DaemonConfig::default()
        });
        let a = Arc::new(Activity::new());
        // A fresh connection owes its first head from the accept on.
        assert!(matches!(a.check(&limits), Check::Until(_)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(a.check(&limits), Check::HeadTooSlow));
        // A request in flight is never timed out by the watchdog.
        let guard = a.begin();
        assert!(matches!(a.check(&limits), Check::Until(_)));
        std::thread::sleep(Duration::from_millis(60));
        a.received();
        assert!(matches!(a.check(&limits), Check::Until(_)));
        drop(guard);
        // Idle after the response: the idle timeout applies…
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(a.check(&limits), Check::Until(_)));
        // …until a byte of a next head arrives.
        a.received();
        std::thread::sleep(Duration::from_millis(60));
        assert!(matches!(a.check(&limits), Check::HeadTooSlow));
    }
}
