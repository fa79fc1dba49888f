//! A capsule built against `soma:capsule@0.1.0` (`wit/compat/0.1.0/`, the
//! frozen contract) with `wit-bindgen` directly — not the SDK, which
//! follows the current contract. The host must keep loading and running
//! it: `tests/tests/integration/compat.rs` does, through the real runtime.
//!
//! `describe` returns 0.1.0's closed `capabilities` record with every field
//! set; `run` uses every 0.1.0 interface and reports what it saw as JSON:
//!
//! ```json
//! {"count":2,"llm":"ok: echo: hi","file":"hello\n"}
//! ```
//!
//! `count` is a counter in kv's capsule scope (incremented per successful
//! call), `llm` the outcome of one chat call with model `small`
//! (`ok: <text>`, or the error's case and message), `file` the contents of
//! `/data/hello.txt` when the input is `read`, else `null`.

#[allow(
    missing_docs,
    missing_debug_implementations,
    unused_qualifications,
    clippy::all
)]
mod bindings {
    wit_bindgen::generate!({ world: "capsule", path: "../../wit/compat/0.1.0" });
}

use bindings::soma::capsule::{
    events, kv,
    llm::{self, ChatRequest, LlmError, Message, Role},
    log,
    types::{Capabilities, CapsuleError, CapsuleInfo, CapsuleKind, LimitsRequest},
};

struct Compat;

impl bindings::Guest for Compat {
    fn describe() -> CapsuleInfo {
        CapsuleInfo {
            name: "compat-v0-1".into(),
            version: "0.1.0".into(),
            description: "a soma:capsule@0.1.0 capsule".into(),
            kind: CapsuleKind::Worker,
            input_schema: "{}".into(),
            output_schema: "{}".into(),
            capabilities: Capabilities {
                kv: true,
                llm_models: vec!["small".into()],
                http_hosts: vec!["example.com".into()],
                dirs: vec!["/data".into()],
            },
            limits: LimitsRequest {
                fuel: None,
                memory_mb: Some(64),
                timeout_ms: None,
            },
        }
    }

    fn run(input: String) -> Result<String, CapsuleError> {
        let fail = |code: &str, message: String| CapsuleError {
            code: code.into(),
            message,
            retryable: false,
        };
        let count = match kv::get(kv::Scope::Capsule, "count") {
            Ok(v) => v
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0),
            Err(e) => return Err(fail("kv", format!("{e:?}"))),
        } + 1;
        kv::set(kv::Scope::Capsule, "count", count.to_string().as_bytes())
            .map_err(|e| fail("kv", format!("{e:?}")))?;
        log::log(
            log::Level::Info,
            "counted",
            &[("count".into(), count.to_string())],
        );
        events::emit("counted", &format!("{{\"count\":{count}}}"));
        let llm = match llm::chat(&ChatRequest {
            model: "small".into(),
            messages: vec![Message {
                role: Role::User,
                content: "hi".into(),
            }],
            max_tokens: Some(8),
            temperature: None,
            stop: Vec::new(),
        }) {
            Ok(c) => format!("ok: {}", c.text),
            Err(LlmError::Denied(m)) => format!("denied: {m}"),
            Err(LlmError::Unavailable(m)) => format!("unavailable: {m}"),
            Err(LlmError::BudgetExceeded(m)) => format!("budget-exceeded: {m}"),
            Err(LlmError::Invalid(m)) => format!("invalid: {m}"),
        };
        let file = if input == "read" {
            let text = std::fs::read_to_string("/data/hello.txt")
                .map_err(|e| fail("read", e.to_string()))?;
            json_string(&text)
        } else {
            "null".to_owned()
        };
        Ok(format!(
            "{{\"count\":{count},\"llm\":{},\"file\":{file}}}",
            json_string(&llm)
        ))
    }
}

/// `s` as a JSON string (quotes, backslashes and control characters escaped).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

bindings::export!(Compat with_types_in bindings);
