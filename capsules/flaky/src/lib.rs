//! `flaky`: fails with a *retryable* capsule error until a given wall-clock
//! time, then succeeds — the scheduler's retry tests use it.
//!
//! Input `{"until_ms": <unix ms>, "retryable": true}`: before `until_ms` the
//! call fails with code `not-yet` (retryable unless `"retryable": false`);
//! from then on it returns `{"ok": true, "late_ms": <ms past until_ms>}`.

use soma_sdk::{Capsule, Error, Info};

struct Flaky;

impl Capsule for Flaky {
    fn info() -> Info {
        Info::worker("flaky", env!("CARGO_PKG_VERSION"))
            .description("Fails (retryably) until a given time, then succeeds")
    }

    fn run(input: &str) -> Result<String, Error> {
        let v: serde_json::Value = serde_json::from_str(input)
            .map_err(|e| Error::new("bad-input", format!("input is not JSON: {e}")))?;
        let until = v["until_ms"]
            .as_u64()
            .ok_or_else(|| Error::new("bad-input", "until_ms (unix ms) is required"))?;
        let retryable = v["retryable"].as_bool().unwrap_or(true);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if now < until {
            let e = Error::new("not-yet", format!("{} ms too early", until - now));
            return Err(if retryable { e.retryable() } else { e });
        }
        Ok(serde_json::json!({ "ok": true, "late_ms": now - until }).to_string())
    }
}

soma_sdk::capsule!(Flaky);
