//! `http-probe`: makes outbound HTTP requests through `soma_sdk::http` and
//! reports what happened — the `http` capability's test capsule.
//!
//! Input `{"url", "method"?, "body"?, "headers"?: {name: value},
//! "repeat"?: n, "follow"?: max redirects, "timeout_ms"?}`. Each of the
//! `repeat` (default 1) requests reads its body chunk by chunk without
//! keeping it (a huge response costs no guest memory). Output:
//! `{"results": [{"status", "bytes", "redirects", "error"?}] (the first
//! 20), "requests", "ok", "failed", "bytes", "first_error"?}`.

use serde::Deserialize;
use soma_sdk::{Capsule, Error, Info, http};

/// Results listed in full; the rest are only counted.
const LISTED: usize = 20;

/// The addresses the probe asks for; the operator's policy and the DAG
/// node narrow them.
const PATTERNS: &[&str] = &[
    "http://127.0.0.1:*",
    "https://127.0.0.1:*",
    "http://localhost:*",
    "https://localhost:*",
    "http://[::1]:*",
];

#[derive(Deserialize)]
struct Input {
    url: String,
    #[serde(default = "get")]
    method: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    #[serde(default = "one")]
    repeat: u32,
    follow: Option<u32>,
    timeout_ms: Option<u64>,
}

fn get() -> String {
    "GET".into()
}

fn one() -> u32 {
    1
}

struct Probe;

/// One request: its status (0 if none), body bytes read, redirects, error.
fn probe(input: &Input) -> serde_json::Value {
    let mut request = http::Request::new(&input.method, &input.url).body(input.body.clone());
    for (name, value) in &input.headers {
        request = request.header(name, value.as_bytes());
    }
    if let Some(n) = input.follow {
        request = request.max_redirects(n);
    }
    if let Some(ms) = input.timeout_ms {
        request = request.timeout_ms(ms);
    }
    let mut incoming = match request.open() {
        Ok(i) => i,
        Err(e) => {
            return serde_json::json!({"status": 0, "bytes": 0, "redirects": 0, "error": e.to_string()});
        }
    };
    let mut bytes = 0u64;
    let error = loop {
        match incoming.read_chunk() {
            Ok(Some(chunk)) => bytes += chunk.len() as u64,
            Ok(None) => break None,
            Err(e) => break Some(e.to_string()),
        }
    };
    let mut out = serde_json::json!({
        "status": incoming.status,
        "bytes": bytes,
        "redirects": incoming.redirects,
    });
    if let Some(e) = error {
        out["error"] = e.into();
    }
    out
}

impl Capsule for Probe {
    fn info() -> Info {
        Info::worker("http-probe", env!("CARGO_PKG_VERSION"))
            .description("Makes outbound HTTP requests and reports status and byte counts")
            .wants_http(PATTERNS)
    }

    fn run(input: &str) -> Result<String, Error> {
        let input: Input = serde_json::from_str(input)
            .map_err(|e| Error::bad_input(format!("input is not the probe's JSON: {e}")))?;
        let (mut ok, mut failed, mut bytes) = (0u64, 0u64, 0u64);
        let mut results = Vec::new();
        let mut first_error = None;
        for _ in 0..input.repeat {
            let r = probe(&input);
            bytes += r["bytes"].as_u64().unwrap_or(0);
            match r.get("error") {
                Some(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| e.clone());
                }
                None => ok += 1,
            }
            if results.len() < LISTED {
                results.push(r);
            }
        }
        let mut out = serde_json::json!({
            "results": results,
            "requests": input.repeat,
            "ok": ok,
            "failed": failed,
            "bytes": bytes,
        });
        if let Some(e) = first_error {
            out["first_error"] = e;
        }
        Ok(out.to_string())
    }
}

soma_sdk::capsule!(Probe);
