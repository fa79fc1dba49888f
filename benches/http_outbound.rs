//! Outbound HTTP (issue 16): a capsule's GET to a loopback server through
//! `wasi:http` and Soma's policy/connector, vs the same GET made directly
//! with hyper on the host, in the same run.
//!
//! - `http_outbound/soma_capsule` — one `http-probe` call making 10 GETs
//!   (each a new checked request: policy, quotas, a new connection), the
//!   whole call timed; per request = time / 10.
//! - `http_outbound_stages/call_0` and `call_1` — the same call making no
//!   request (instantiation, input, output: the fixed cost the 10 GETs
//!   share) and one GET, to tell the call's cost from the requests'.
//! - `http_outbound/host_hyper` — 10 GETs with hyper's HTTP/1.1 client on a
//!   current-thread tokio runtime, a new connection each (what the
//!   capsule's requests do), no policy.
//! - `http_outbound/soma_capsule_blocking_path` — `soma_capsule` from a
//!   thread inside a tokio runtime, which takes the blocking path (the
//!   request on the runtime's workers, two thread hand-offs per request):
//!   what every call paid before the async path.
//!
//! The server answers `200 hello` and closes. It runs on one thread of
//! its own (a current-thread tokio runtime, a task per connection): a fast
//! server, so that the client side's cost is what the ratio shows. (A
//! thread-per-connection server adds ~30 µs of thread start to both sides
//! and flatters the ratio.)
//!
//! The capsule is called from the bench's own (plain) thread, so it takes
//! the async path a daemon call-pool thread takes: guest, connection and
//! I/O on that one thread.

use std::{net::SocketAddr, path::Path};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use soma_runtime::{
    CallOptions, Config, Engine,
    config::{Allocator, Metering},
    store::DataDir,
};

const REQUESTS: u64 = 10;

fn serve() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut head = Vec::with_capacity(512);
                    let mut buf = [0u8; 512];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tcp
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                        )
                        .await;
                });
            }
        });
    });
    addr
}

fn bench(c: &mut Criterion) {
    let addr = serve();
    let url = format!("http://{addr}/ok");
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = Config::default();
    config.engine.allocator = Allocator::Pooling;
    config.engine.metering = Metering::Fuel;
    config.ledger.meter_calls = false;
    config.http.allowed_hosts = vec!["http://127.0.0.1:*".into()];
    config.http.max_requests_per_call = 1_000;
    let engine = Engine::new(config, DataDir::new(data.path())).expect("engine");
    let capsule = engine
        .load_file(Path::new(soma_capsules::HTTP_PROBE_COMPONENT))
        .expect("load http-probe");
    let options = CallOptions::for_capsule(&engine, &capsule);
    let input = serde_json::json!({"url": url, "repeat": REQUESTS}).to_string();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let uri: hyper::Uri = "/ok".parse().expect("uri");
    let direct = || {
        runtime.block_on(async {
            for _ in 0..REQUESTS {
                let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
                tcp.set_nodelay(true).expect("nodelay");
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                        .await
                        .expect("handshake");
                let driver = tokio::spawn(conn);
                let request = hyper::Request::get(uri.clone())
                    .header("host", addr.to_string())
                    .body(Empty::<bytes::Bytes>::new())
                    .expect("request");
                let response = sender.send_request(request).await.expect("response");
                assert_eq!(response.status(), 200);
                let body = response.into_body().collect().await.expect("body");
                assert_eq!(body.to_bytes().len(), 5);
                let _ = driver.await;
            }
        });
    };

    let mut group = c.benchmark_group("http_outbound");
    group.throughput(Throughput::Elements(REQUESTS));
    group.bench_function("soma_capsule", |b| {
        b.iter(|| {
            let outcome = engine.call(&capsule, &input, &options);
            let out = outcome.result.expect("call");
            assert!(out.contains(&format!("\"ok\":{REQUESTS}")), "{out}");
        });
    });
    group.bench_function("host_hyper", |b| b.iter(direct));
    // The blocking path (what a call made inside a tokio runtime takes,
    // e.g. a Temporal activity; every call took it before the async path):
    // this thread entered into a multi-thread runtime, so the request
    // runs on its workers while the call's thread waits.
    let workers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("workers");
    group.bench_function("soma_capsule_blocking_path", |b| {
        let _inside = workers.enter();
        b.iter(|| {
            let outcome = engine.call(&capsule, &input, &options);
            let out = outcome.result.expect("call");
            assert!(out.contains(&format!("\"ok\":{REQUESTS}")), "{out}");
        });
    });
    group.finish();

    let mut stages = c.benchmark_group("http_outbound_stages");
    for n in [0u64, 1] {
        let input = serde_json::json!({"url": url, "repeat": n}).to_string();
        stages.bench_function(format!("call_{n}"), |b| {
            b.iter(|| {
                let outcome = engine.call(&capsule, &input, &options);
                let out = outcome.result.expect("call");
                assert!(out.contains(&format!("\"ok\":{n}")), "{out}");
            });
        });
    }
    stages.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
