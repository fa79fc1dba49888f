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
//!
//! The server answers `200 hello` and closes, one thread per connection.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
    path::Path,
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use soma_runtime::{
    CallOptions, Config, Engine,
    config::{Allocator, Metering},
    store::DataDir,
};

const REQUESTS: u64 = 10;

fn serve() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut tcp) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&mut tcp);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                let _ = tcp.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                );
            });
        }
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
