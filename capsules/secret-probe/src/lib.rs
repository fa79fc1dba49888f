//! Test capsule: reads the secret its input names and tries to leak it
//! through every surface a call has — its output, its error, a log line
//! (message, field value and field key), an event (payload value and key),
//! kv (key and value, both scopes), stdout and stderr.
//!
//! Input: `{"secret": "probe-env", "fail": false}`. If the read fails the
//! output is `{"read": false, "kind": "denied"|"not-found"|"unavailable",
//! "message": …}`; else `{"read": true, "len": <bytes>, "value": <value>}`
//! (the host masks `value`; `len` shows the real one was read) — or, with
//! `"fail": true`, an error carrying the value.

use serde::Deserialize;
use soma_sdk::{
    Capsule, Error, Info, events,
    kv::{self, Scope},
    log::{self, Level},
    secrets::{self, SecretError},
};

/// The secrets it asks for (a test grants some of them).
const ASKED: [&str; 4] = ["probe-env", "probe-file", "tenant-key", "ungranted"];

#[derive(Deserialize)]
struct Input {
    secret: String,
    #[serde(default)]
    fail: bool,
}

struct Probe;

impl Capsule for Probe {
    fn info() -> Info {
        let info = Info::worker("secret-probe", env!("CARGO_PKG_VERSION"))
            .description("Reads a secret and tries to leak it everywhere")
            .wants_kv();
        ASKED.iter().fold(info, |i, name| i.wants_secret(name))
    }

    fn run(input: &str) -> Result<String, Error> {
        let input: Input =
            serde_json::from_str(input).map_err(|e| Error::new("bad-input", format!("{e}")))?;
        let value = match secrets::get(&input.secret) {
            Ok(v) => v,
            Err(e) => {
                let (kind, message) = match e {
                    SecretError::Denied(m) => ("denied", m),
                    SecretError::NotFound(m) => ("not-found", m),
                    SecretError::Unavailable(m) => ("unavailable", m),
                };
                return Ok(
                    serde_json::json!({"read": false, "kind": kind, "message": message})
                        .to_string(),
                );
            }
        };
        let leak = format!("leak<{value}>");
        log::log(
            Level::Warn,
            &leak,
            &[("field", value.as_str()), (value.as_str(), "as-key")],
        );
        events::emit(
            "leak",
            &serde_json::json!({"value": value, value.clone(): [value.clone()]}),
        );
        for scope in [Scope::Capsule, Scope::Run] {
            kv::set(scope, &format!("key-{value}"), leak.as_bytes())?;
            kv::set(scope, "plain-key", value.as_bytes())?;
        }
        println!("stdout {leak}");
        eprintln!("stderr {leak}");
        if input.fail {
            return Err(Error::new("leak", format!("error {leak}")));
        }
        Ok(serde_json::json!({"read": true, "len": value.len(), "value": value}).to_string())
    }
}

soma_sdk::capsule!(Probe);
