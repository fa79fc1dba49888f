//! The broker starts, listens on the port it is given and answers a Kafka
//! ApiVersions request. Being an integration test also makes cargo build
//! the `soma-kafka-broker` binary itself (not only its unit-test harness)
//! into `target/<profile>/`, where the e2e tests' harness
//! (`tests/src/kafka.rs`) starts it: `cargo nextest run --bins` alone does
//! not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Kills the broker however the test ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_broker_answers_api_versions_on_its_port() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut broker = Killed(
        Command::new(env!("CARGO_BIN_EXE_soma-kafka-broker"))
            .arg(port.to_string())
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(broker.0.try_wait().unwrap().is_none(), "the broker exited");
                assert!(Instant::now() < deadline, "the broker did not listen: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();

    // ApiVersions v0: api key 18, version 0, correlation id, client id.
    let correlation: i32 = 0x50_4d_41;
    let client = b"soma-test";
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&correlation.to_be_bytes());
    body.extend_from_slice(&i16::try_from(client.len()).unwrap().to_be_bytes());
    body.extend_from_slice(client);
    let mut request = i32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    request.extend_from_slice(&body);
    stream.write_all(&request).unwrap();

    let mut size = [0u8; 4];
    stream.read_exact(&mut size).unwrap();
    let size = usize::try_from(i32::from_be_bytes(size)).unwrap();
    assert!((10..1 << 20).contains(&size), "answer of {size} bytes");
    let mut answer = vec![0u8; size];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(
        i32::from_be_bytes(answer[0..4].try_into().unwrap()),
        correlation
    );
    assert_eq!(
        i16::from_be_bytes(answer[4..6].try_into().unwrap()),
        0,
        "error code"
    );
    let apis = i32::from_be_bytes(answer[6..10].try_into().unwrap());
    assert!(apis > 0, "the broker lists no API");
}
