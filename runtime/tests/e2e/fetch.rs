//! Issue 16's example end to end: the `fetch` capsule GETs a JSON API (a
//! real HTTP server on a free loopback port) with the bearer token from a
//! secret the operator granted it, through `soma run` with a `soma.toml`
//! that allows the server's address. The server checks the token; the
//! token never appears in what `soma` prints or stores.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    path::Path,
    process::{Command, Output},
    sync::{Arc, Mutex},
};

use serde_json::Value;

const TOKEN: &str = "tok-3c1e55d0-fetch-NEEDLE";

/// A one-thread HTTP/1.1 server: `GET /v1/thing` with `Authorization:
/// Bearer TOKEN` answers a JSON document, without it 401. Returns its port
/// and the request heads it saw.
fn api() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let authorized = head
                .lines()
                .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {TOKEN}")));
            log.lock().expect("log").push(head);
            let (status, body) = if authorized {
                ("200 OK", r#"{"data":{"answer":42,"note":"from the API"}}"#)
            } else {
                ("401 Unauthorized", r#"{"error":"no token"}"#)
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.flush();
            let mut rest = Vec::new();
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(50)));
            let _ = reader.read_to_end(&mut rest);
        }
    });
    (port, seen)
}

fn soma(data: &Path, config: &Path, input: &str, token: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_soma"))
        .args([
            "run",
            soma_capsules::FETCH_COMPONENT,
            "--input",
            input,
            "--json",
        ])
        .arg("--data")
        .arg(data)
        .arg("--config")
        .arg(config)
        .env_remove("SOMA_CONFIG")
        .env("SOMA_TEST_FETCH_TOKEN", token)
        .output()
        .expect("spawn soma")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn fetch_calls_an_api_with_a_granted_bearer_secret_and_returns_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("data");
    let (port, seen) = api();
    let url = format!("http://127.0.0.1:{port}/v1/thing");
    let write_config = |grant: &str, allowed: &str| {
        let config = dir
            .path()
            .join(format!("soma-{grant}.toml").replace(['*', '/'], "_"));
        std::fs::write(
            &config,
            format!(
                "[http]\nallowed_hosts = [{allowed:?}]\n\
                 [[secrets.define]]\nname = \"fetch-token\"\nenv = \"SOMA_TEST_FETCH_TOKEN\"\ngrant = [{grant:?}]\n"
            ),
        )
        .expect("config");
        config
    };
    let input = serde_json::json!({"url": url, "pointer": "/data/answer"}).to_string();

    // Allowed and granted: the API sees the token, the capsule returns 42.
    let config = write_config("*fetch*", "http://127.0.0.1:*");
    let out = soma(&data, &config, &input, TOKEN);
    let v = json(&out);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["output"]["status"], 200, "{v}");
    assert_eq!(v["output"]["value"], 42, "{v}");
    assert_eq!(v["http"]["requests"], 1, "{v}");
    assert!(
        seen.lock().expect("log").iter().any(|h| h.contains(TOKEN)),
        "the API got the bearer token"
    );

    // The token granted to other capsules: `denied`, and the API is not asked.
    let before = seen.lock().expect("log").len();
    let config = write_config("ghcr.io/someone-else/*", "http://127.0.0.1:*");
    let v = json(&soma(&data, &config, &input, TOKEN));
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["failure"].to_string().contains("not granted"), "{v}");
    assert_eq!(
        seen.lock().expect("log").len(),
        before,
        "no request was made"
    );

    // The operator does not allow the address: the WASI error, not a trap.
    let config = write_config("*fetch*", "https://api.example.com");
    let v = json(&soma(&data, &config, &input, TOKEN));
    assert_eq!(v["ok"], false, "{v}");
    let failure = v["failure"].to_string();
    assert!(
        failure.contains("http") && failure.contains("denied"),
        "{v}"
    );
    assert_ne!(v["failure"]["class"], "trap", "{v}");
    assert_eq!(
        seen.lock().expect("log").len(),
        before,
        "no request was made"
    );

    // A wrong token: the API's 401 is the capsule's typed error.
    let config = write_config("*fetch*", "http://127.0.0.1:*");
    let v = json(&soma(&data, &config, &input, "wrong-token"));
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["failure"].to_string().contains("upstream-status"), "{v}");

    // The token is in nothing soma printed or stored.
    let out = soma(&data, &config, &input, TOKEN);
    for bytes in [&out.stdout, &out.stderr] {
        assert!(
            !String::from_utf8_lossy(bytes).contains(TOKEN),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
    let mut stored = Vec::new();
    for entry in walk(&data) {
        stored.extend(std::fs::read(entry).unwrap_or_default());
    }
    assert!(
        !stored.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
        "the token is not stored"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn inspect_shows_the_hosts_and_secrets_fetch_asks_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inspect = |json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_soma"));
        cmd.args(["inspect", soma_capsules::FETCH_COMPONENT])
            .arg("--data")
            .arg(dir.path())
            .env_remove("SOMA_CONFIG");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().expect("spawn soma");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let doc = json(&inspect(true));
    assert_eq!(
        doc["manifest"]["wants_http"],
        serde_json::json!(["https://*", "http://127.0.0.1:*"])
    );
    assert_eq!(
        doc["manifest"]["wants_secrets"],
        serde_json::json!(["fetch-token"])
    );
    let text = String::from_utf8_lossy(&inspect(false).stdout).into_owned();
    assert!(
        text.contains("http:https://*, http:http://127.0.0.1:*, secrets:fetch-token"),
        "{text}"
    );
}
