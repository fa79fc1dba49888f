//! HTTP/2 attacks on a real `soma daemon` process, over prior-knowledge
//! h2c on its plain loopback listener: one connection opening far more
//! concurrent streams than `daemon.http2_max_concurrent_streams` (written
//! frame by frame, as a hostile client that ignores the server's SETTINGS
//! would), a tenant holding streams open over several connections
//! (`daemon.max_in_flight`), a rapid open-and-reset flood, and event
//! streams multiplexed on one connection (`daemon.max_streams_per_tenant`,
//! `daemon.max_streams`) through the `h2` client.
//!
//! Each test measures what the daemon holds (threads, RSS) and times
//! another tenant's ordinary calls during the attack.

use std::{
    collections::{HashMap, HashSet},
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::json;
use soma_tests::daemon::{Bystander, DaemonProcess, assert_unharmed, time_calls, token};

// Each test runs alone (`crate::alone`): they time another tenant's calls.
use crate::alone as serial;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

fn mib(kib: u64) -> u64 {
    kib / 1024
}

// ----- a raw HTTP/2 client: frames and literal HPACK, nothing negotiated -----

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame size");
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with a 7-bit prefix (no Huffman flag).
fn hpack_int(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(u8::try_from(n).expect("small"));
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push(u8::try_from(n % 128).expect("digit") | 0x80);
        n /= 128;
    }
    out.push(u8::try_from(n).expect("digit"));
}

/// A header block of literal fields without indexing (new names).
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(&mut out, name.len());
        out.extend_from_slice(name.as_bytes());
        hpack_int(&mut out, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// What the server sent on one raw connection.
#[derive(Debug, Default)]
struct Heard {
    /// Streams reset with REFUSED_STREAM.
    refused: HashSet<u32>,
    /// Streams reset with another code.
    reset: HashMap<u32, u32>,
    /// Streams that got a response head.
    answered: HashSet<u32>,
    /// Response bodies by stream.
    bodies: HashMap<u32, Vec<u8>>,
    /// A GOAWAY's error code.
    goaway: Option<u32>,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS.
    max_streams: Option<u32>,
    /// The peer closed the connection.
    closed: bool,
}

/// A hostile HTTP/2 client on one TCP connection.
struct RawH2 {
    socket: TcpStream,
    buffer: Vec<u8>,
    heard: Heard,
}

impl RawH2 {
    /// Connect and send the preface and an empty SETTINGS frame.
    fn connect(addr: &str) -> Self {
        let mut socket = TcpStream::connect(addr).expect("connect");
        socket.set_nodelay(true).expect("nodelay");
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        socket.write_all(&hello).expect("preface");
        Self {
            socket,
            buffer: Vec::new(),
            heard: Heard::default(),
        }
    }

    /// Open `streams` (odd ids from `first`) as `POST /v1/runs` heads
    /// announcing a body that never comes: each one a request the daemon
    /// must hold (or refuse). One write.
    fn open_held(&mut self, addr: &str, token: &str, first: u32, streams: u32) -> Vec<u32> {
        let auth = format!("Bearer {token}");
        let block = header_block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/v1/runs"),
            (":authority", addr),
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("content-length", "64"),
        ]);
        let mut out = Vec::new();
        let ids: Vec<u32> = (0..streams).map(|k| first + 2 * k).collect();
        for &id in &ids {
            out.extend(frame(HEADERS, END_HEADERS, id, &block));
        }
        self.socket.write_all(&out).expect("send heads");
        ids
    }

    /// Open and at once cancel `streams` requests (odd ids from `first`),
    /// with no token: the "rapid reset" pattern. One write.
    fn open_and_reset(&mut self, addr: &str, first: u32, streams: u32) {
        let block = header_block(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/v1/ledger"),
            (":authority", addr),
        ]);
        let mut out = Vec::new();
        for k in 0..streams {
            let id = first + 2 * k;
            out.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
            out.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
        }
        // The server may already have closed the connection: fine.
        let _ = self.socket.write_all(&out);
    }

    /// Read frames until `done` holds or `deadline` passes (answering
    /// SETTINGS and PING as a client must).
    fn read_until(&mut self, deadline: Duration, done: impl Fn(&Heard) -> bool) {
        let end = Instant::now() + deadline;
        let mut chunk = [0u8; 16 * 1024];
        while !done(&self.heard) && !self.heard.closed {
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                return;
            };
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            match self.socket.read(&mut chunk) {
                Ok(0) => self.heard.closed = true,
                Ok(n) => {
                    self.buffer.extend_from_slice(&chunk[..n]);
                    self.parse();
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.heard.closed = true,
            }
        }
    }

    fn parse(&mut self) {
        loop {
            if self.buffer.len() < 9 {
                return;
            }
            let len =
                u32::from_be_bytes([0, self.buffer[0], self.buffer[1], self.buffer[2]]) as usize;
            if self.buffer.len() < 9 + len {
                return;
            }
            let kind = self.buffer[3];
            let flags = self.buffer[4];
            let stream = u32::from_be_bytes([
                self.buffer[5],
                self.buffer[6],
                self.buffer[7],
                self.buffer[8],
            ]) & 0x7fff_ffff;
            let payload: Vec<u8> = self.buffer[9..9 + len].to_vec();
            self.buffer.drain(..9 + len);
            let word = |at: usize| {
                u32::from_be_bytes([
                    payload[at],
                    payload[at + 1],
                    payload[at + 2],
                    payload[at + 3],
                ])
            };
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    for setting in payload.chunks_exact(6) {
                        if u16::from_be_bytes([setting[0], setting[1]]) == 0x3 {
                            self.heard.max_streams = Some(u32::from_be_bytes([
                                setting[2], setting[3], setting[4], setting[5],
                            ]));
                        }
                    }
                    let _ = self.socket.write_all(&frame(SETTINGS, ACK, 0, &[]));
                }
                PING if flags & ACK == 0 => {
                    let _ = self.socket.write_all(&frame(PING, ACK, 0, &payload));
                }
                RST_STREAM if payload.len() == 4 => {
                    let code = word(0);
                    if code == REFUSED_STREAM {
                        self.heard.refused.insert(stream);
                    } else {
                        self.heard.reset.insert(stream, code);
                    }
                }
                HEADERS => {
                    self.heard.answered.insert(stream);
                }
                DATA => {
                    self.heard
                        .bodies
                        .entry(stream)
                        .or_default()
                        .extend_from_slice(&payload);
                }
                GOAWAY if payload.len() >= 8 => self.heard.goaway = Some(word(4)),
                _ => {}
            }
        }
    }
}

#[test]
fn streams_past_the_http2_cap_are_refused_and_a_tenants_held_streams_are_capped() {
    let _serial = serial();
    const CAP: u32 = 16;
    const IN_FLIGHT: u32 = 40;
    const OPENED: u32 = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(bin(), dir.path(), "acme", "run,read");
    let globex = token(bin(), dir.path(), "globex", "run,read");
    let d = DaemonProcess::start(
        bin(),
        dir.path(),
        &format!("http2_max_concurrent_streams = {CAP}\nmax_in_flight = {IN_FLIGHT}\n"),
        "",
    );
    let addr = d.addr();
    let idle = time_calls(&d.url, &globex, 40);
    let base = d.usage();
    let bystander = Bystander::start(&d.url, &globex, Duration::from_millis(5));

    // One connection, 200 streams at once, each a request whose body never
    // comes: the daemon holds at most CAP of them and refuses the rest.
    let mut first = RawH2::connect(&addr);
    let ids = first.open_held(&addr, &acme, 1, OPENED);
    first.read_until(Duration::from_secs(10), |h| {
        h.refused.len() >= (OPENED - CAP) as usize
    });
    let heard = &first.heard;
    assert_eq!(heard.max_streams, Some(CAP), "the server's SETTINGS");
    assert!(heard.goaway.is_none(), "GOAWAY {:?}", heard.goaway);
    assert_eq!(
        heard.refused.len(),
        (OPENED - CAP) as usize,
        "streams past daemon.http2_max_concurrent_streams must be refused (REFUSED_STREAM); \
         other resets: {:?}, answered: {:?}",
        heard.reset,
        heard.answered
    );
    let held: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|id| !heard.refused.contains(id))
        .collect();
    assert_eq!(
        held,
        ids[..CAP as usize],
        "the first CAP streams are the held ones"
    );
    assert!(
        heard.answered.is_empty(),
        "held requests get no answer yet: {:?}",
        heard.answered
    );

    // More connections by the same tenant: it holds at most IN_FLIGHT
    // requests in all; the others are answered 429 at once. On a loaded
    // machine the first connection's held streams may reach admission
    // after some of these, so the 429s are counted on all four: exactly
    // 4 × CAP − IN_FLIGHT of the 4 × CAP held heads, whichever they are.
    let mut more: Vec<RawH2> = (0..3).map(|_| RawH2::connect(&addr)).collect();
    for c in &mut more {
        c.open_held(&addr, &acme, 1, CAP);
    }
    more.insert(0, first);
    let answered_with_body = |conns: &[RawH2]| -> usize {
        conns
            .iter()
            .map(|c| {
                c.heard
                    .answered
                    .iter()
                    .filter(|s| c.heard.bodies.get(*s).is_some_and(|b| !b.is_empty()))
                    .count()
            })
            .sum()
    };
    // Read every connection until the expected refusals are in (a loaded
    // machine can be slow to answer) or 15 s pass; admitting more than
    // IN_FLIGHT leaves the count short and fails below.
    let expected = (4 * CAP - IN_FLIGHT) as usize;
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end && answered_with_body(&more) < expected {
        for c in &mut more {
            c.read_until(Duration::from_millis(100), |_| false);
        }
    }
    for c in &mut more {
        c.read_until(Duration::from_millis(300), |_| false);
    }
    let mut refused_429 = 0;
    for (k, c) in more.iter().enumerate() {
        // The first connection's extra streams were refused above, before
        // these were opened; no other stream may be reset as refused.
        if k > 0 {
            assert!(c.heard.refused.is_empty(), "{:?}", c.heard.refused);
        }
        for stream in &c.heard.answered {
            let body = String::from_utf8_lossy(c.heard.bodies.get(stream).map_or(&[][..], |b| b));
            assert!(body.contains("too-many-in-flight"), "{body}");
            refused_429 += 1;
        }
    }
    assert_eq!(
        refused_429,
        4 * CAP - IN_FLIGHT,
        "a tenant's requests in flight are capped by daemon.max_in_flight across connections"
    );

    let during = bystander.finish();
    let held_usage = d.usage();
    eprintln!(
        "{OPENED} streams on one connection, {} more on 3: threads {} → {}, RSS {} → {} MiB; \
         the other tenant's median {:?} idle, {:?} during",
        3 * CAP,
        base.threads,
        held_usage.threads,
        mib(base.rss_kib),
        mib(held_usage.rss_kib),
        idle.median(),
        during.median()
    );
    assert!(
        held_usage.threads <= base.threads + 4,
        "held streams cost threads: {} → {}",
        base.threads,
        held_usage.threads
    );
    assert!(
        mib(held_usage.rss_kib.saturating_sub(base.rss_kib)) < 64,
        "RSS grew from {} to {} MiB",
        mib(base.rss_kib),
        mib(held_usage.rss_kib)
    );
    assert_unharmed(&idle, &during, 3.0);

    // Dropping the connections (the first is among them) frees the tenant's slots.
    drop(more);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, v) = d.post(
            "/v1/runs",
            &acme,
            &json!({"capsule": "echo", "input": {"again": true}}),
        );
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the tenant's slots were never freed: {status} {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_rapid_reset_flood_without_a_token_is_bounded_and_does_not_flood_the_log() {
    let _serial = serial();
    const PER_CONNECTION: u32 = 1000;
    let dir = tempfile::tempdir().expect("tempdir");
    let globex = token(bin(), dir.path(), "globex", "run,read");
    // The daemon's own log filter (an empty SOMA_LOG is the default).
    let (d, log) = DaemonProcess::start_logged(bin(), dir.path(), "", "", "");
    let addr = d.addr();
    let idle = time_calls(&d.url, &globex, 40);
    let base = d.usage();
    let bystander = Bystander::start(&d.url, &globex, Duration::from_millis(5));
    // Connection after connection for two seconds, each opening and at
    // once cancelling a thousand requests.
    let logged_before = log.lines().len();
    let start = Instant::now();
    let (mut connections, mut calmed, mut opened) = (0, 0, 0);
    while start.elapsed() < Duration::from_secs(2) {
        let mut c = RawH2::connect(&addr);
        c.open_and_reset(&addr, 1, PER_CONNECTION);
        opened += PER_CONNECTION;
        c.read_until(Duration::from_secs(2), |h| h.goaway.is_some());
        connections += 1;
        calmed += usize::from(c.heard.goaway == Some(ENHANCE_YOUR_CALM));
    }
    let during = bystander.finish();
    let after = d.usage();
    eprintln!(
        "{opened} streams opened and reset on {connections} connections in {:?}: \
         {calmed} told ENHANCE_YOUR_CALM; threads {} → {}, peak RSS {} → {} MiB",
        start.elapsed(),
        base.threads,
        after.threads,
        mib(base.hwm_kib),
        mib(after.hwm_kib)
    );
    assert_eq!(calmed, connections, "every flooding connection is closed");
    // Each refusal is the peer's doing, not news for the operator: a
    // tokenless client must not be able to write a log line per connection.
    let lines = log.lines().split_off(logged_before);
    eprintln!("the daemon's log during the flood: {} lines", lines.len());
    assert!(
        lines.len() < 10 && connections > 20,
        "{connections} flooding connections wrote {} log lines: {:?}",
        lines.len(),
        &lines[..lines.len().min(5)]
    );
    assert!(after.threads <= base.threads + 4);
    assert!(mib(after.hwm_kib.saturating_sub(base.hwm_kib)) < 64);
    assert_unharmed(&idle, &during, 3.0);
}

/// A run that stays live (its one node retries in backoff for a minute),
/// so its event streams stay open.
fn long_run(d: &DaemonProcess, token: &str) -> String {
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_millis() as u64)
        + 60_000;
    let spec = "version: 1\nname: patient\ncapsules: {f: flaky}\ninputs: {until: {}}\n\
         nodes:\n  - id: a\n    capsule: f\n    input: {until_ms: \"{{ input.until }}\"}\n    \
         retries: {max: 10, backoff_ms: 5000, max_backoff_ms: 5000, jitter: false}\n";
    let (status, v) = d.post(
        "/v1/runs",
        token,
        &json!({"dag": spec, "input": {"until": until}}),
    );
    assert_eq!(status, 202, "{v}");
    v["run"].as_str().expect("run").to_owned()
}

/// Open `n` event streams of `run` on one HTTP/2 connection (the `h2`
/// client) and hold them; their statuses, and a closure that resets the
/// first `k` open ones and tries one more.
struct H2Streams {
    runtime: tokio::runtime::Runtime,
    client: h2::client::SendRequest<bytes::Bytes>,
    authority: String,
    /// Open streams (status 200), held.
    open: Vec<h2::RecvStream>,
    /// Refused streams: status and body.
    refused: Vec<(u16, String)>,
}

impl H2Streams {
    fn connect(addr: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = runtime.block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client.ready().await.expect("ready")
        });
        Self {
            runtime,
            client,
            authority: addr.to_owned(),
            open: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// `GET path` `n` times at once as `token`.
    fn get(&mut self, path: &str, token: &str, n: usize) {
        let uri = format!("http://{}{path}", self.authority);
        let client = self.client.clone();
        let token = token.to_owned();
        let answers = self.runtime.block_on(async move {
            let mut pending = Vec::new();
            for _ in 0..n {
                let request = http::Request::get(&uri)
                    .header("authorization", format!("Bearer {token}"))
                    .body(())
                    .expect("request");
                let mut c = client.clone().ready().await.expect("ready");
                let (response, _) = c.send_request(request, true).expect("send");
                pending.push(response);
            }
            let mut answers = Vec::new();
            for response in pending {
                let response = tokio::time::timeout(Duration::from_secs(10), response)
                    .await
                    .expect("a response head within 10 s")
                    .expect("response");
                let status = response.status().as_u16();
                let mut body = response.into_body();
                if status == 200 {
                    answers.push((status, Ok(body)));
                } else {
                    let mut text = Vec::new();
                    while let Some(chunk) = body.data().await {
                        let chunk = chunk.expect("chunk");
                        let _ = body.flow_control().release_capacity(chunk.len());
                        text.extend_from_slice(&chunk);
                    }
                    answers.push((status, Err(String::from_utf8_lossy(&text).into_owned())));
                }
            }
            answers
        });
        for (status, answer) in answers {
            match answer {
                Ok(body) => self.open.push(body),
                Err(text) => self.refused.push((status, text)),
            }
        }
    }
}

#[test]
fn event_streams_multiplexed_on_one_http2_connection_are_capped_per_tenant_and_in_all() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let acme = token(bin(), dir.path(), "acme", "run,read");
    let initech = token(bin(), dir.path(), "initech", "run,read");
    let globex = token(bin(), dir.path(), "globex", "run,read");
    let d = DaemonProcess::start(
        bin(),
        dir.path(),
        "http2_max_concurrent_streams = 64\nmax_streams_per_tenant = 4\nmax_streams = 6\n",
        "",
    );
    let addr = d.addr();
    let idle = time_calls(&d.url, &globex, 40);
    let base = d.usage();
    let acme_run = long_run(&d, &acme);
    let initech_run = long_run(&d, &initech);
    let bystander = Bystander::start(&d.url, &globex, Duration::from_millis(5));

    // Ten event streams of one tenant on one connection: four open.
    let mut streams = H2Streams::connect(&addr);
    streams.get(&format!("/v1/runs/{acme_run}/events"), &acme, 10);
    assert_eq!(
        streams.client.current_max_send_streams(),
        64,
        "the server's SETTINGS"
    );
    assert_eq!(streams.open.len(), 4, "{:?}", streams.refused);
    assert_eq!(streams.refused.len(), 6);
    for (status, text) in &streams.refused {
        assert_eq!(*status, 429, "{text}");
        assert!(text.contains("daemon.max_streams_per_tenant"), "{text}");
    }

    // Another tenant on its own connection: two more fill daemon.max_streams.
    let mut other = H2Streams::connect(&addr);
    other.get(&format!("/v1/runs/{initech_run}/events"), &initech, 4);
    assert_eq!(other.open.len(), 2, "{:?}", other.refused);
    for (status, text) in &other.refused {
        assert_eq!(*status, 429, "{text}");
        assert!(text.contains("daemon.max_streams"), "{text}");
    }

    // Resetting streams (dropping them: RST_STREAM CANCEL) frees their
    // slots: the tenant gets them back.
    streams.open.truncate(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        streams.refused.clear();
        streams.get(&format!("/v1/runs/{acme_run}/events"), &acme, 1);
        if streams.open.len() == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reset streams never gave their slots back: {:?}",
            streams.refused
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let during = bystander.finish();
    let after = d.usage();
    assert!(after.threads <= base.threads + 8, "{base:?} → {after:?}");
    assert_unharmed(&idle, &during, 3.0);
}
