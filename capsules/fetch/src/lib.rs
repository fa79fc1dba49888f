//! `fetch`: GETs a JSON document from an API with a bearer token read from
//! the granted secret `fetch-token`, and returns one field of it — the
//! example of the `http` and `secrets` capabilities together.
//!
//! Input `{"url": "https://api.example.com/v1/thing", "pointer":
//! "/data/answer"}` (`pointer` is a JSON Pointer, RFC 6901; empty = the
//! whole document). Output `{"status": 200, "value": …}`.
//!
//! The capsule asks for any `https` host and for `http` on loopback; the
//! operator's `[http] allowed_hosts` (and a DAG node's `capabilities:`)
//! decide where it may really go. The token is sent only in the
//! `Authorization` header; were it to appear in the output, the host would
//! replace it with `[REDACTED:fetch-token]`.

use serde::Deserialize;
use soma_sdk::{Capsule, Error, Info, http, secrets};

/// The secret holding the API's bearer token.
const TOKEN: &str = "fetch-token";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    url: String,
    #[serde(default)]
    pointer: String,
}

struct Fetch;

impl Capsule for Fetch {
    fn info() -> Info {
        Info::worker("fetch", env!("CARGO_PKG_VERSION"))
            .description("GETs a JSON API with a bearer secret and returns one field")
            .input_schema(
                r#"{"type":"object","required":["url"],"additionalProperties":false,
                    "properties":{"url":{"type":"string"},"pointer":{"type":"string"}}}"#,
            )
            .wants_http(&["https://*", "http://127.0.0.1:*"])
            .wants_secret(TOKEN)
    }

    fn run(input: &str) -> Result<String, Error> {
        let input: Input = serde_json::from_str(input)
            .map_err(|e| Error::bad_input(format!("expected {{url, pointer?}}: {e}")))?;
        let token = secrets::get(TOKEN)?;
        let response = http::Request::get(&input.url)
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "application/json")
            .send()
            .map_err(|e| match e {
                // Only a transport failure (timeout, connection) may pass.
                http::HttpError::Transport(_) => Error::new("http", e.to_string()).retryable(),
                _ => Error::new("http", e.to_string()),
            })?;
        if !response.ok() {
            let retryable = response.status >= 500 || response.status == 429;
            let err = Error::new(
                "upstream-status",
                format!("{} answered HTTP {}", input.url, response.status),
            );
            return Err(if retryable { err.retryable() } else { err });
        }
        let doc: serde_json::Value = response
            .json()
            .map_err(|e| Error::new("upstream-json", e.to_string()))?;
        let value = doc.pointer(&input.pointer).ok_or_else(|| {
            Error::new(
                "no-such-field",
                format!(
                    "the document has nothing at JSON Pointer {:?}",
                    input.pointer
                ),
            )
        })?;
        Ok(serde_json::json!({"status": response.status, "value": value}).to_string())
    }
}

soma_sdk::capsule!(Fetch);
