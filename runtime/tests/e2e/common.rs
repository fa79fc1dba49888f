//! What every module here starts from: the `soma` binary, a command on a
//! data directory, the built capsules' directory, and reading outputs.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

/// The `soma` binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

/// `soma --data DATA`, with no ambient configuration.
pub fn soma(data: &Path) -> Command {
    soma_tests::daemon::soma(bin(), data)
}

/// The directory of the built capsules (`--capsule-path`).
pub fn capsule_dir() -> PathBuf {
    Path::new(soma_capsules::CALCULATOR_COMPONENT)
        .parent()
        .expect("capsule dir")
        .to_path_buf()
}

/// Bytes of a child's output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A child's stdout as JSON; panics with both streams if it is not.
pub fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// Calls charged per tenant: the `wall-time` entries of `soma ledger ls`
/// on `data` (one per metered call; the daemon must be stopped).
pub fn charged_calls(data: &Path) -> std::collections::BTreeMap<String, u64> {
    let out = soma(data)
        .args(["ledger", "ls", "--limit", "1000000", "--json"])
        .output()
        .expect("run soma ledger ls");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut calls = std::collections::BTreeMap::new();
    for e in json_of(&out).as_array().expect("entries") {
        if e["kind"] == "wall-time" {
            let tenant = e["tenant"].as_str().expect("tenant").to_owned();
            *calls.entry(tenant).or_insert(0) += 1;
        }
    }
    calls
}

/// Start a caller per token of `callers` (no pause between calls) and wait
/// until `ledger_token`'s tenant has `entries` ledger entries; panics after
/// two minutes. The callers go on until [`Bystander::finish`].
pub fn traffic_until(
    d: &soma_tests::daemon::DaemonProcess,
    callers: &[&str],
    ledger_token: &str,
    entries: usize,
) -> Vec<soma_tests::daemon::Bystander> {
    use std::time::{Duration, Instant};
    let running = callers
        .iter()
        .map(|t| soma_tests::daemon::Bystander::start(&d.url, t, Duration::ZERO))
        .collect();
    let start = Instant::now();
    loop {
        let (s, v) = d.get("/v1/ledger?limit=10000", ledger_token);
        assert_eq!(s, 200, "{v}");
        if v.as_array().map_or(0, Vec::len) >= entries {
            return running;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no traffic: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
