//! Issue 16: the `http` capability attacked from a capsule (`http-probe`)
//! against real servers on free loopback ports, in process: denied hosts,
//! ports and schemes; a redirect to a denied host; a name that resolves to
//! loopback; a 1 GiB response (generated lazily, never allocated); a
//! server that never answers; 1,000 requests in one call; TLS with and
//! without the operator's CA; a DAG node's restriction; the metering.
//!
//! The servers are plain threads over `std::net` (and rustls for TLS):
//! one connection at a time per thread, `Connection: close` after every
//! response.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use soma_host_api::{Allow, Restriction};
use soma_runtime::{
    CallOptions, Engine, Outcome,
    config::{Allocator, Config},
    store::DataDir,
};

/// What the test server does for a path.
fn respond(path: &str, body: &[u8], out: &mut dyn Write) -> std::io::Result<()> {
    if let Some(to) = path.strip_prefix("/redirect?to=") {
        return write!(
            out,
            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
    match path {
        "/ok" => {
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        }
        "/echo" => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            out.write_all(body)
        }
        "/stall" => {
            // Half the announced body, then nothing for longer than any
            // test waits.
            out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello",
            )?;
            out.flush()?;
            std::thread::sleep(Duration::from_secs(15));
            Ok(())
        }
        "/huge" => {
            // 1 GiB announced and streamed from one 64 KiB buffer until the
            // client hangs up: never allocated.
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                1u64 << 30
            )?;
            let chunk = [b'x'; 64 * 1024];
            for _ in 0..(1u64 << 30) / chunk.len() as u64 {
                out.write_all(&chunk)?;
            }
            Ok(())
        }
        _ => out
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    }
}

/// Read one request head (and its body, by `Content-Length`); its path.
fn read_request(stream: &mut dyn Read) -> Option<(String, Vec<u8>)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':')
            && n.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((path, body))
}

/// A loopback server: every path it was asked for, and a switch to stop.
struct Server {
    addr: SocketAddr,
    paths: Arc<Mutex<Vec<String>>>,
    /// Request body bytes the server read (all requests).
    body_bytes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

impl Server {
    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port())
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().expect("paths").clone()
    }

    /// Serve on a free loopback port. `tls`: wrap each connection in TLS
    /// with this certificate and key. `silent`: read the request and never
    /// answer (hold the connection until the server stops).
    fn start(tls: Option<Arc<rustls::ServerConfig>>, silent: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let paths = Arc::new(Mutex::new(Vec::new()));
        let body_bytes = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (Arc::clone(&paths), Arc::clone(&stop));
        let read_bytes = Arc::clone(&body_bytes);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(tcp) = conn else { continue };
                let (seen, stopped, tls) = (Arc::clone(&seen), Arc::clone(&stopped), tls.clone());
                let read_bytes = Arc::clone(&read_bytes);
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut stream: Box<dyn ReadWrite> = match tls {
                        Some(config) => {
                            let Ok(conn) = rustls::ServerConnection::new(config) else {
                                return;
                            };
                            Box::new(rustls::StreamOwned::new(conn, tcp))
                        }
                        None => Box::new(tcp),
                    };
                    let Some((path, body)) = read_request(&mut stream) else {
                        return;
                    };
                    read_bytes.fetch_add(body.len(), Ordering::Relaxed);
                    seen.lock().expect("paths").push(path.clone());
                    if silent {
                        while !stopped.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        return;
                    }
                    let _ = respond(&path, &body, &mut stream);
                    let _ = stream.flush();
                });
            }
        });
        Self {
            addr,
            paths,
            body_bytes,
            stop,
        }
    }
}

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// An engine whose `[http]` section is `http` (other settings default),
/// its data in `dir`.
fn engine(dir: &Path, http: soma_host_api::http::Config) -> Engine {
    engine_with(dir, http, |_| {})
}

/// [`engine`] with the rest of the config changed by `tune`.
fn engine_with(
    dir: &Path,
    http: soma_host_api::http::Config,
    tune: impl FnOnce(&mut Config),
) -> Engine {
    let mut config = Config::default();
    config.engine.allocator = Allocator::OnDemand;
    config.http = http;
    tune(&mut config);
    config.check().expect("config");
    Engine::new(config, DataDir::new(dir)).expect("engine")
}

/// The ledger's (kind, quantity, cost) entries of outbound HTTP of `run`,
/// sorted by attempt then kind.
fn http_entries(engine: &Engine, run: &str) -> Vec<(u32, String, u64, u64)> {
    let entries = engine
        .metering()
        .ledger()
        .ls(&soma_runtime::ledger::Filter {
            run: Some(run.to_owned()),
            ..Default::default()
        })
        .expect("ledger ls");
    let mut rows: Vec<_> = entries
        .into_iter()
        .filter(|e| e.kind.name().starts_with("http-"))
        .map(|e| {
            (
                e.attempt,
                e.kind.name().to_owned(),
                e.quantity,
                e.cost_micros,
            )
        })
        .collect();
    rows.sort();
    rows
}

fn allow(patterns: &[&str]) -> soma_host_api::http::Config {
    soma_host_api::http::Config {
        allowed_hosts: patterns.iter().map(|p| (*p).to_owned()).collect(),
        ..Default::default()
    }
}

/// One call of `http-probe` with `input`; its outcome and parsed output.
fn probe(engine: &Engine, input: Value, tune: impl FnOnce(&mut CallOptions)) -> (Outcome, Value) {
    let (outcome, output, _) = probe_timed(engine, input, tune);
    (outcome, output)
}

/// [`probe`], and how long the call itself took: loading the capsule
/// (which compiles it, slower on a busy machine) is not counted.
fn probe_timed(
    engine: &Engine,
    input: Value,
    tune: impl FnOnce(&mut CallOptions),
) -> (Outcome, Value, Duration) {
    let capsule = engine
        .load_file(Path::new(soma_capsules::HTTP_PROBE_COMPONENT))
        .expect("load http-probe");
    let mut options = CallOptions::for_capsule(engine, &capsule);
    tune(&mut options);
    let start = Instant::now();
    let outcome = engine.call(&capsule, &input.to_string(), &options);
    let took = start.elapsed();
    let output = match &outcome.result {
        Ok(text) => serde_json::from_str(text).expect("probe output"),
        Err(f) => json!({"failure": f.to_string()}),
    };
    (outcome, output, took)
}

fn first(output: &Value) -> &Value {
    &output["results"][0]
}

fn denied(result: &Value) -> bool {
    result["error"]
        .as_str()
        .is_some_and(|e| e.contains("denied"))
}

#[test]
fn an_allowed_request_succeeds_and_is_metered() {
    let _g = crate::shared();
    let server = Server::start(None, false);
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path(), allow(&["http://127.0.0.1:*"]));
    let (outcome, out) = probe(&e, json!({"url": server.url("/ok")}), |_| {});
    assert_eq!(first(&out)["status"], 200, "{out}");
    assert_eq!(first(&out)["bytes"], 5, "{out}");
    assert_eq!(outcome.http.requests, 1);
    assert_eq!(outcome.http.bytes_received, 5);
    assert_eq!(outcome.http.denied, 0);
    // A body goes out and is counted.
    let (outcome, out) = probe(
        &e,
        json!({"url": server.url("/echo"), "method": "POST", "body": "x".repeat(10_000)}),
        |_| {},
    );
    assert_eq!(first(&out)["bytes"], 10_000, "{out}");
    assert_eq!(outcome.http.bytes_sent, 10_000);
    assert_eq!(outcome.http.bytes_received, 10_000);
    // The report shows it; a call without requests shows nothing.
    let json = serde_json::to_value(&outcome).expect("outcome json");
    assert_eq!(json["http"]["requests"], 1, "{json}");
}

/// A call from a plain thread (a daemon call-pool or DAG thread, the CLI)
/// runs on that thread's own runtime through the async linker; one from
/// inside a tokio runtime (here its blocking pool, as a Temporal activity
/// does) takes the blocking path. Both answer the same requests the same
/// way: statuses, bodies, denials, redirects, errors, counts.
#[test]
fn both_call_paths_answer_alike_and_a_plain_thread_drives_its_own_runtime() {
    let _g = crate::shared();
    let server = Server::start(None, false);
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Arc::new(engine(dir.path(), allow(&["http://127.0.0.1:*"])));
    let evil = format!("http://localhost:{}/ok", server.port());
    let inputs = vec![
        json!({"url": server.url("/ok"), "repeat": 3}),
        json!({"url": server.url("/echo"), "method": "POST", "body": "y".repeat(70_000)}),
        json!({"url": server.url(&format!("/redirect?to={evil}"))}),
        json!({"url": server.url(&format!("/redirect?to={}", server.url("/ok")))}),
        json!({"url": format!("http://127.0.0.2:{}/ok", server.port())}),
        json!({"url": "http://127.0.0.1:1/ok"}),
    ];
    fn run_all(e: &Engine, inputs: &[Value]) -> Vec<(Value, u64, u64, u64, u64)> {
        inputs
            .iter()
            .map(|input| {
                let (outcome, out) = probe(e, input.clone(), |_| {});
                let h = outcome.http;
                (out, h.requests, h.denied, h.bytes_sent, h.bytes_received)
            })
            .collect()
    }
    let before = e.own_runtime_calls();
    let plain = run_all(&e, &inputs);
    let on_plain = e.own_runtime_calls() - before;
    // The load's `describe` may be among them (the first load).
    assert!(
        on_plain >= inputs.len() as u64,
        "{on_plain} of {} calls on the thread's own runtime",
        inputs.len()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let before = e.own_runtime_calls();
    let blocking = rt
        .block_on(rt.spawn_blocking({
            let (e, inputs) = (Arc::clone(&e), inputs.clone());
            move || run_all(&e, &inputs)
        }))
        .expect("blocking pool");
    assert_eq!(
        e.own_runtime_calls(),
        before,
        "inside a tokio runtime every call takes the blocking path"
    );
    assert_eq!(plain, blocking);
    assert_eq!(first(&plain[0].0)["status"], 200, "{:?}", plain[0]);
    assert_eq!(plain[0].1, 3);
    assert_eq!(first(&plain[1].0)["bytes"], 70_000, "{:?}", plain[1]);
    assert!(denied(first(&plain[2].0)), "{:?}", plain[2]);
    assert_eq!(first(&plain[3].0)["redirects"], 1, "{:?}", plain[3]);
}

#[test]
fn denied_hosts_ports_and_schemes_answer_request_denied_and_reach_nothing() {
    let _g = crate::shared();
    let server = Server::start(None, false);
    let other = Server::start(None, false);
    let dir = tempfile::tempdir().expect("tempdir");
    let only = format!("http://127.0.0.1:{}", server.port());
    let e = engine(dir.path(), allow(&[&only]));
    for url in [
        // Host: the capsule asks for localhost, the operator does not allow it.
        format!("http://localhost:{}/ok", server.port()),
        // Host nobody asked for (no DNS lookup is made).
        "http://metadata.invalid/latest".to_owned(),
        // Port.
        other.url("/ok"),
        // Scheme.
        format!("https://127.0.0.1:{}/ok", server.port()),
        // The cloud metadata address, literally.
        "http://169.254.169.254/latest/meta-data".to_owned(),
    ] {
        let (outcome, out) = probe(&e, json!({"url": url}), |_| {});
        assert!(outcome.result.is_ok(), "a denial is not a trap: {out}");
        assert!(denied(first(&out)), "{url}: {out}");
        assert_eq!(outcome.http.denied, 1, "{url}");
        assert_eq!(outcome.http.requests, 0, "{url}");
    }
    assert!(server.paths().is_empty() && other.paths().is_empty());
    // The allowed one still works.
    let (_, out) = probe(&e, json!({"url": server.url("/ok")}), |_| {});
    assert_eq!(first(&out)["status"], 200, "{out}");
}

#[test]
fn a_redirect_to_a_denied_host_is_refused_and_an_allowed_one_followed() {
    let _g = crate::shared();
    let server = Server::start(None, false);
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path(), allow(&["http://127.0.0.1:*"]));
    let evil = format!("http://localhost:{}/ok", server.port());
    let (outcome, out) = probe(
        &e,
        json!({"url": server.url(&format!("/redirect?to={evil}"))}),
        |_| {},
    );
    assert!(denied(first(&out)), "{out}");
    assert_eq!(
        server.paths().len(),
        1,
        "only the first hop reached the server"
    );
    assert_eq!((outcome.http.requests, outcome.http.denied), (1, 1));
    let good = server.url("/ok");
    let (_, out) = probe(
        &e,
        json!({"url": server.url(&format!("/redirect?to={good}"))}),
        |_| {},
    );
    assert_eq!(first(&out)["status"], 200, "{out}");
    assert_eq!(first(&out)["redirects"], 1, "{out}");
    // A redirect loop stops at the SDK's limit, every hop checked.
    let loop_url = server.url("/redirect?to=/redirect?to=/ok");
    let (_, out) = probe(&e, json!({"url": loop_url, "follow": 1}), |_| {});
    assert!(
        first(&out)["error"]
            .as_str()
            .is_some_and(|e| e.contains("more than 1 redirects")),
        "{out}"
    );
}

#[test]
fn a_name_resolving_to_loopback_is_refused_unless_the_address_is_allowed() {
    let _g = crate::shared();
    let server = Server::start(None, false);
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("http://localhost:{}/ok", server.port());
    let by_name = engine(&dir.path().join("a"), allow(&["http://localhost:*"]));
    let (outcome, out) = probe(&by_name, json!({"url": url}), |_| {});
    assert!(denied(first(&out)), "{out}");
    assert_eq!(outcome.http.denied, 1);
    assert!(server.paths().is_empty());
    let by_address = engine(
        &dir.path().join("b"),
        allow(&["http://localhost:*", "http://127.0.0.1:*"]),
    );
    let (_, out) = probe(&by_address, json!({"url": url}), |_| {});
    assert_eq!(first(&out)["status"], 200, "{out}");
}

#[test]
fn a_1_gib_response_is_cut_at_the_byte_quota() {
    let _g = crate::shared();
    let server = Server::start(None, false);
    let dir = tempfile::tempdir().expect("tempdir");
    let quota = 4 * 1024 * 1024;
    let e = engine(
        dir.path(),
        soma_host_api::http::Config {
            max_response_bytes_per_call: quota,
            ..allow(&["http://127.0.0.1:*"])
        },
    );
    let start = Instant::now();
    let (outcome, out) = probe(&e, json!({"url": server.url("/huge")}), |_| {});
    let r = first(&out);
    assert_eq!(r["status"], 200, "{out}");
    let bytes = r["bytes"].as_u64().expect("bytes");
    assert!(bytes <= quota, "{bytes} bytes read past the quota {quota}");
    assert!(
        bytes >= quota / 2,
        "{bytes}: the stream was cut far too early"
    );
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("body size exceeds limit")),
        "{out}"
    );
    assert!(outcome.http.bytes_received <= quota + 1024 * 1024);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_server_that_never_answers_is_stopped_by_the_call_deadline() {
    let _g = crate::shared();
    let server = Server::start(None, true);
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path(), allow(&["http://127.0.0.1:*"]));
    let (outcome, out, took) = probe_timed(&e, json!({"url": server.url("/ok")}), |o| {
        o.limits.timeout_ms = 1_500;
    });
    assert!(
        took < Duration::from_millis(1_500 + 1_000),
        "the call took {took:?}: {out}"
    );
    assert!(took >= Duration::from_millis(1_400), "{took:?}: {out}");
    assert_eq!(server.paths(), ["/ok"], "the request did reach the server");
    // Either the probe saw the host stop the request, or the epoch
    // deadline ended the call right after.
    let stopped = first(&out)["error"]
        .as_str()
        .is_some_and(|e| e.contains("deadline"));
    assert!(stopped || outcome.result.is_err(), "{out}");
}

#[test]
fn stage_timeouts_stop_a_silent_server_and_a_stalled_body_long_before_the_deadline() {
    let _g = crate::shared();
    let server = Server::start(None, false);
    let silent = Server::start(None, true);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut http = allow(&["http://127.0.0.1:*"]);
    http.first_byte_timeout_ms = 300;
    http.between_bytes_timeout_ms = 300;
    let e = engine(dir.path(), http);
    let long_deadline = |o: &mut CallOptions| o.limits.timeout_ms = 20_000;

    // No response head within first_byte_timeout_ms.
    let (outcome, out, took) = probe_timed(&e, json!({"url": silent.url("/ok")}), long_deadline);
    assert!(outcome.result.is_ok(), "{out}");
    assert_eq!(
        first(&out)["error"].as_str(),
        Some("ErrorCode::ConnectionReadTimeout"),
        "{out}"
    );
    assert!(took >= Duration::from_millis(250), "{took:?}: {out}");
    assert!(took < Duration::from_secs(5), "{took:?}: {out}");

    // Half a body, then a pause longer than between_bytes_timeout_ms.
    let (outcome, out, took) = probe_timed(&e, json!({"url": server.url("/stall")}), long_deadline);
    assert!(outcome.result.is_ok(), "{out}");
    assert_eq!(first(&out)["status"], 200, "{out}");
    assert_eq!(first(&out)["bytes"], 5, "{out}");
    // A body's error reaches the guest as a stream error, worded so.
    assert_eq!(
        first(&out)["error"].as_str(),
        Some("connection read timeout"),
        "{out}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}: {out}");

    // A fast response is not cut by timers armed for earlier stages.
    let (_, out) = probe(
        &e,
        json!({"url": server.url("/ok"), "repeat": 20}),
        long_deadline,
    );
    assert_eq!(out["ok"], 20, "{out}");
}

#[test]
fn a_cancelled_call_stops_its_blocked_request() {
    let _g = crate::shared();
    let silent = Server::start(None, true);
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path(), allow(&["http://127.0.0.1:*"]));
    let cancel = Arc::new(AtomicBool::new(false));
    let mut canceller = None;
    let (outcome, out, took) = probe_timed(&e, json!({"url": silent.url("/ok")}), |o| {
        o.limits.timeout_ms = 20_000;
        o.cancel = Some(Arc::clone(&cancel));
        // Set once the capsule is loaded (its compile is not timed).
        let flag = Arc::clone(&cancel);
        canceller = Some(std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            flag.store(true, Ordering::Relaxed);
        }));
    });
    if let Some(t) = canceller {
        t.join().expect("canceller");
    }
    assert!(took < Duration::from_secs(5), "{took:?}: {out}");
    let failure = outcome
        .result
        .expect_err("a cancelled call fails")
        .to_string();
    assert!(failure.contains("cancelled"), "{failure}");
    assert_eq!(silent.paths(), ["/ok"], "the request did reach the server");
}

#[test]
fn a_thousand_requests_stop_at_the_request_quota() {
    let _g = crate::shared();
    let server = Server::start(None, false);
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(
        dir.path(),
        soma_host_api::http::Config {
            max_requests_per_call: 1000,
            ..allow(&["http://127.0.0.1:*"])
        },
    );
    let (outcome, out) = probe(&e, json!({"url": server.url("/ok"), "repeat": 1001}), |o| {
        o.limits.timeout_ms = 120_000;
        o.run_id = "quota-run".into();
    });
    assert_eq!(out["ok"], 1000, "{out}");
    assert_eq!(out["failed"], 1, "{out}");
    // The 1,001st answers the typed quota error (the SDK's HttpError::Quota
    // over the WASI internal-error), naming the quota and the key to raise.
    assert_eq!(
        out["first_error"],
        "http quota exceeded: this call may make 1000 requests; the operator raises \
         [http] max_requests_per_call",
        "{out}"
    );
    assert_eq!(server.paths().len(), 1000);
    let h = outcome.http;
    assert_eq!((h.requests, h.denied, h.quota, h.failed), (1000, 1, 1, 0));
    // Metered: exactly the requests the server saw, and the bytes it sent.
    assert_eq!(
        http_entries(&e, "quota-run"),
        vec![
            (0, "http-bytes-in".to_owned(), 5000, 0),
            (0, "http-requests".to_owned(), 1000, 0),
        ]
    );
}

#[test]
fn http_usage_is_charged_to_the_ledger_per_attempt_at_the_operators_prices() {
    let _g = crate::shared();
    let server = Server::start(None, false);
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine_with(dir.path(), allow(&["http://127.0.0.1:*"]), |c| {
        c.ledger.http_requests_price_per_1k_micros = 2_000_000; // 2000 per request
        c.ledger.http_bytes_out_price_per_1k_micros = 1000; // 1 per byte
        c.ledger.http_bytes_in_price_per_1k_micros = 3000; // 3 per byte
    });
    let input =
        json!({"url": server.url("/echo"), "method": "POST", "body": "y".repeat(700), "repeat": 3});
    let call = |attempt: u32| {
        probe(&e, input.clone(), |o| {
            o.run_id = "priced-run".into();
            o.node = "fetch".into();
            o.attempt = attempt;
        })
    };
    let (outcome, out) = call(0);
    assert_eq!(out["ok"], 3, "{out}");
    let sent = server.body_bytes.load(Ordering::Relaxed) as u64;
    assert_eq!(sent, 2100, "the server read three 700-byte bodies");
    assert_eq!(
        (
            outcome.http.requests,
            outcome.http.bytes_sent,
            outcome.http.bytes_received
        ),
        (3, sent, sent)
    );
    let first = vec![
        (0, "http-bytes-in".to_owned(), sent, 3 * sent),
        (0, "http-bytes-out".to_owned(), sent, sent),
        (0, "http-requests".to_owned(), 3, 3 * 2000),
    ];
    assert_eq!(http_entries(&e, "priced-run"), first);
    // The price shows in the run's cost (the ledger's summary by kind).
    let by_kind = e
        .metering()
        .ledger()
        .summary(soma_runtime::ledger::GroupBy::Kind, None, None, None)
        .expect("summary");
    let requests = by_kind
        .iter()
        .find(|r| r.key == "http-requests")
        .expect("http-requests row");
    assert_eq!(
        (requests.http_requests, requests.cost_micros),
        (3, 3 * 2000)
    );
    // The same attempt again (a resumed run replaying it): not charged twice.
    call(0);
    assert_eq!(http_entries(&e, "priced-run"), first);
    // A retry is a new attempt: charged once more, on its own key.
    call(1);
    let rows = http_entries(&e, "priced-run");
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert_eq!(
        rows.iter()
            .filter(|r| r.0 == 1)
            .map(|r| (r.1.as_str(), r.2))
            .collect::<Vec<_>>(),
        vec![
            ("http-bytes-in", sent),
            ("http-bytes-out", sent),
            ("http-requests", 3)
        ]
    );

    // `soma ledger summary` shows the http kinds' columns, in CSV and JSON.
    drop(e);
    let summary = |format: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_soma"))
            .args(["ledger", "summary", "--by", "tenant", format, "--data"])
            .arg(dir.path())
            .env_remove("SOMA_CONFIG")
            .output()
            .expect("soma ledger summary");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let csv = summary("--csv");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    // One tenant made every call of this data directory: one row.
    let row = lines.next().unwrap_or_else(|| panic!("no row: {csv}"));
    assert!(lines.next().is_none(), "{csv}");
    let column = |name: &str| -> u64 {
        let i = header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no {name} column: {csv}"));
        row.split(',')
            .nth(i)
            .expect("field")
            .parse()
            .expect("number")
    };
    assert_eq!(
        (
            column("http_requests"),
            column("http_bytes_out"),
            column("http_bytes_in")
        ),
        (6, 2 * sent, 2 * sent),
        "two attempts of three requests: {csv}"
    );
    let json: Value = serde_json::from_str(&summary("--json")).expect("summary json");
    let run = &json[0];
    assert_eq!(
        (
            &run["http_requests"],
            &run["http_bytes_out"],
            &run["http_bytes_in"]
        ),
        (&json!(6), &json!(2 * sent), &json!(2 * sent)),
        "{json}"
    );
}

/// A money budget holds a call's HTTP worst case (its granted quotas at
/// the `[ledger] http_*` prices) besides its fuel: a budget that covers
/// the fuel but not that is refused before anything runs; one that covers
/// both runs and is settled to what the call used; at price 0 the fuel
/// alone is held, as before.
#[test]
fn a_money_budget_holds_the_http_worst_case_before_the_call_runs() {
    use soma_runtime::budget::{Limit, Scope};
    let _g = crate::shared();
    let server = Server::start(None, false);
    let quotas = soma_host_api::http::Config {
        max_requests_per_call: 10,
        max_request_bytes_per_call: 1 << 20,
        max_response_bytes_per_call: 1 << 20,
        ..allow(&["http://127.0.0.1:*"])
    };
    let priced = |http: bool| {
        move |c: &mut Config| {
            c.engine.metering = soma_runtime::config::Metering::Fuel;
            c.ledger.fuel_price_per_1k_micros = 1;
            if http {
                c.ledger.http_requests_price_per_1k_micros = 100_000; // 100 a request
                c.ledger.http_bytes_out_price_per_1k_micros = 1000; // 1 a byte
                c.ledger.http_bytes_in_price_per_1k_micros = 2000; // 2 a byte
            }
        }
    };
    let input = json!({"url": server.url("/ok"), "repeat": 2});
    let budgeted = |e: &Engine, run: &str, micros: u64| {
        e.metering()
            .set_limit(
                Scope::Run(run.to_owned()),
                Some(Limit {
                    tokens: None,
                    micros: Some(micros),
                }),
            )
            .expect("budget");
        probe(e, input.clone(), |o| o.run_id = run.into())
    };
    let account = |e: &Engine, run: &str| {
        e.metering()
            .list_budgets()
            .expect("budgets")
            .into_iter()
            .find(|(s, _)| *s == Scope::Run(run.to_owned()))
            .expect("the run's budget")
            .1
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine_with(dir.path(), quotas.clone(), priced(true));
    let capsule = e
        .load_file(Path::new(soma_capsules::HTTP_PROBE_COMPONENT))
        .expect("load http-probe");
    let limits = CallOptions::for_capsule(&e, &capsule).limits;
    let fuel_worst = e
        .metering()
        .worst_case_micros(Some(limits.fuel), limits.timeout_ms);
    assert!(fuel_worst > 0, "fuel is priced");
    let http_worst = e.metering().http_worst_case_micros(&e.config().http);
    assert_eq!(http_worst, 10 * 100 + (1 << 20) + 2 * (1 << 20));

    // Covers the fuel, not the HTTP worst case: refused, nothing sent.
    let (outcome, out) = budgeted(&e, "short", fuel_worst + http_worst - 1);
    let Err(failure) = &outcome.result else {
        panic!("the call ran: {out}");
    };
    assert_eq!(
        failure.class(),
        soma_runtime::FailureClass::BudgetExceeded,
        "{failure}"
    );
    assert!(failure.to_string().contains("outbound HTTP"), "{failure}");
    assert!(server.paths().is_empty(), "{:?}", server.paths());
    assert_eq!(outcome.http.requests, 0);
    assert_eq!(
        account(&e, "short").reserved_micros,
        0,
        "nothing held after"
    );

    // Covers both: it runs; the hold is settled to the actual charge.
    let (outcome, out) = budgeted(&e, "enough", fuel_worst + http_worst);
    assert_eq!(out["ok"], 2, "{out}");
    assert_eq!(outcome.http.requests, 2);
    let spent = account(&e, "enough");
    assert_eq!(spent.reserved_micros, 0, "{spent:?}");
    let charged: u64 = e
        .metering()
        .ledger()
        .ls(&soma_runtime::ledger::Filter {
            run: Some("enough".into()),
            ..Default::default()
        })
        .expect("ledger ls")
        .iter()
        .map(|e| e.cost_micros)
        .sum();
    assert_eq!(spent.spent_micros, charged);
    assert!(
        charged >= 2 * 100 + 2 * 5 * 2 && charged < fuel_worst + http_worst,
        "{charged}: the actual, not the worst case"
    );

    // HTTP at price 0: a budget of the fuel alone still lets the call run.
    let dir = tempfile::tempdir().expect("tempdir");
    let free = engine_with(dir.path(), quotas, priced(false));
    assert_eq!(
        free.metering().http_worst_case_micros(&free.config().http),
        0
    );
    let (_, out) = budgeted(&free, "free", fuel_worst);
    assert_eq!(out["ok"], 2, "{out}");
}

/// A CA and a server certificate for 127.0.0.1 and localhost, as PEM.
fn pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("sign");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn tls_server(cert: &str, key: &str) -> Server {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certs = vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    Server::start(Some(Arc::new(config)), false)
}

#[test]
fn tls_trusts_the_operators_ca_file_and_nothing_else() {
    let _g = crate::shared();
    let (ca, cert, key) = pki();
    let server = tls_server(&cert, &key);
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("https://127.0.0.1:{}/ok", server.port());
    let without = engine(&dir.path().join("a"), allow(&["https://127.0.0.1:*"]));
    let (_, out) = probe(&without, json!({"url": url}), |_| {});
    assert!(
        first(&out)["error"]
            .as_str()
            .is_some_and(|e| e.contains("TlsCertificateError")),
        "an unknown CA is refused: {out}"
    );
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca).expect("write ca");
    let with = engine(
        &dir.path().join("b"),
        soma_host_api::http::Config {
            ca_file: Some(ca_file),
            ..allow(&["https://127.0.0.1:*"])
        },
    );
    let (outcome, out) = probe(&with, json!({"url": url}), |_| {});
    assert_eq!(first(&out)["status"], 200, "{out}");
    assert_eq!(outcome.http.bytes_received, 5);
}

#[test]
fn a_dag_node_restriction_narrows_the_grant() {
    let _g = crate::shared();
    let a = Server::start(None, false);
    let b = Server::start(None, false);
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path(), allow(&["http://127.0.0.1:*"]));
    let node = Restriction(
        [(
            "http".to_owned(),
            Allow::Only(vec![format!("http://127.0.0.1:{}", a.port())]),
        )]
        .into(),
    );
    let capsule = e
        .load_file(Path::new(soma_capsules::HTTP_PROBE_COMPONENT))
        .expect("load");
    let narrowed =
        |url: String| probe(&e, json!({"url": url}), |o| o.restrict(&e, &capsule, &node)).1;
    assert_eq!(first(&narrowed(a.url("/ok")))["status"], 200);
    assert!(denied(first(&narrowed(b.url("/ok")))));
    let off = Restriction([("http".to_owned(), Allow::Denied)].into());
    let (_, out) = probe(&e, json!({"url": a.url("/ok")}), |o| {
        o.restrict(&e, &capsule, &off);
    });
    assert!(denied(first(&out)), "{out}");
    assert_eq!(a.paths().len(), 1);
    assert!(b.paths().is_empty());
}

#[test]
fn two_tenants_calls_are_counted_apart() {
    let _g = crate::shared();
    let server = Server::start(None, false);
    let dir = tempfile::tempdir().expect("tempdir");
    let e = engine(dir.path(), allow(&["http://127.0.0.1:*"]));
    let hits = Arc::new(AtomicUsize::new(0));
    let calls: Vec<_> = [("acme", 3), ("globex", 1)]
        .into_iter()
        .map(|(tenant, repeat)| {
            let (outcome, _) = probe(
                &e,
                json!({"url": server.url("/ok"), "repeat": repeat}),
                |o| o.tenant = tenant.into(),
            );
            hits.fetch_add(repeat, Ordering::Relaxed);
            outcome.http
        })
        .collect();
    assert_eq!(calls[0].requests, 3);
    assert_eq!(calls[0].bytes_received, 15);
    assert_eq!(calls[1].requests, 1);
    assert_eq!(calls[1].bytes_received, 5);
    assert_eq!(server.paths().len(), hits.load(Ordering::Relaxed));
}
