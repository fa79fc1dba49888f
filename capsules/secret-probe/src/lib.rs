//! Test capsule: reads the secret its input names and tries to leak it
//! through every surface a call has — its output, its error, a log line
//! (message, field value and field key), an event (payload value and key),
//! kv (key and value, both scopes), stdout and stderr.
//!
//! With `"forms": true` every leak carries the value's standard encodings
//! too (base64 and base64url with and without padding, hex in both cases,
//! percent-encoding), computed here independently of the host.
//!
//! Input: `{"secret": "probe-env", "fail": false, "forms": false}`. If the read fails the
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
    #[serde(default)]
    forms: bool,
}

/// Base64 of `bytes` with `alphabet` (64 characters), padded or not.
fn base64(bytes: &[u8], alphabet: &[u8], pad: bool) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
        }
        if pad {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

/// The value and its standard encodings, space-separated.
fn with_forms(value: &str) -> String {
    const STD: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = value.as_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let percent: String = bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    [
        value.to_owned(),
        base64(bytes, STD, true),
        base64(bytes, STD, false),
        base64(bytes, URL, true),
        base64(bytes, URL, false),
        hex.to_ascii_uppercase(),
        hex,
        percent,
    ]
    .join(" ")
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
        let len = value.len();
        let value = if input.forms {
            with_forms(&value)
        } else {
            value
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
        Ok(serde_json::json!({"read": true, "len": len, "value": value}).to_string())
    }
}

soma_sdk::capsule!(Probe);
