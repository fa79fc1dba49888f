//! Talking to one OpenAI-compatible provider: `POST {base_url}/chat/completions`
//! with a deadline, retries for 429 and 5xx, and every failure mapped to a
//! [`ProviderError`] that names its cause.

use std::{
    io::Read as _,
    sync::OnceLock,
    time::{Duration, Instant},
};

use reqwest::{StatusCode, blocking::Client, header::RETRY_AFTER};
use serde::{Deserialize, Serialize};

use super::ProviderConfig;
use crate::bindings::soma::capsule::llm::LlmError;

/// Largest response body read from a provider.
const MAX_RESPONSE_BYTES: u64 = 8 * 1024 * 1024;
/// Longest provider-supplied detail quoted in an error message.
const MAX_DETAIL_CHARS: usize = 300;
/// First backoff after a 5xx or a connection failure; doubles per retry.
const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest honoured `timeout_ms` (one day).
const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
/// Longest backoff between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why a provider call failed. Every variant becomes `unavailable` for the
/// capsule except [`ProviderError::BadRequest`], which is `invalid`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// `api_key_env` names a variable that was unset or empty when the engine started.
    #[error(
        "provider {provider}: environment variable {var} (its api_key_env) is not set; \
         export it before starting soma"
    )]
    MissingKey {
        /// Provider name.
        provider: String,
        /// The variable.
        var: String,
    },
    /// The HTTP client could not be built (TLS backend).
    #[error("cannot build the HTTP client for provider {provider}: {detail}")]
    Client {
        /// Provider name.
        provider: String,
        /// What went wrong.
        detail: String,
    },
    /// No answer within `timeout_ms` (all attempts together).
    #[error(
        "provider {provider} timed out after {timeout_ms} ms; raise its timeout_ms or try again later"
    )]
    TimedOut {
        /// Provider name.
        provider: String,
        /// The configured timeout.
        timeout_ms: u64,
    },
    /// HTTP 429 and no retry left (or the wait did not fit the timeout).
    #[error(
        "provider {provider} answered 429 Too Many Requests (Retry-After: {}) after {attempts} attempt(s); \
         try again later or raise its max_retries/timeout_ms",
        retry_after.map_or_else(|| "none".to_owned(), |s| format!("{s} s"))
    )]
    RateLimited {
        /// Provider name.
        provider: String,
        /// The last `Retry-After`, in seconds.
        retry_after: Option<u64>,
        /// Requests sent.
        attempts: u32,
    },
    /// HTTP 5xx on every attempt.
    #[error("provider {provider} answered HTTP {status} after {attempts} attempt(s): {detail}")]
    ServerError {
        /// Provider name.
        provider: String,
        /// The last status.
        status: u16,
        /// Requests sent.
        attempts: u32,
        /// The provider's message.
        detail: String,
    },
    /// HTTP 401/403.
    #[error(
        "provider {provider} rejected the API key (HTTP {status}); check the key in its api_key_env"
    )]
    KeyRejected {
        /// Provider name.
        provider: String,
        /// 401 or 403.
        status: u16,
    },
    /// HTTP 400 (and other 4xx that describe the request): the request is at fault.
    #[error("provider {provider} refused the request (HTTP {status}): {detail}")]
    BadRequest {
        /// Provider name.
        provider: String,
        /// The status.
        status: u16,
        /// The provider's message.
        detail: String,
    },
    /// A status that points at the configuration (404, 405, 3xx, …).
    #[error("provider {provider} answered HTTP {status}: {detail}; check its base_url")]
    UnexpectedStatus {
        /// Provider name.
        provider: String,
        /// The status.
        status: u16,
        /// The provider's message.
        detail: String,
    },
    /// A 2xx whose body is not a chat completion.
    #[error("provider {provider} returned malformed JSON: {detail}")]
    Malformed {
        /// Provider name.
        provider: String,
        /// What was wrong.
        detail: String,
    },
    /// The body exceeded [`MAX_RESPONSE_BYTES`].
    #[error("provider {provider} sent a response larger than {limit} bytes")]
    TooLarge {
        /// Provider name.
        provider: String,
        /// The limit.
        limit: u64,
    },
    /// Connection refused, reset, DNS, TLS… on every attempt.
    #[error("provider {provider} could not be reached after {attempts} attempt(s): {detail}")]
    Unreachable {
        /// Provider name.
        provider: String,
        /// Requests tried.
        attempts: u32,
        /// The transport error.
        detail: String,
    },
}

impl From<ProviderError> for LlmError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::BadRequest { .. } => LlmError::Invalid(e.to_string()),
            _ => LlmError::Unavailable(e.to_string()),
        }
    }
}

/// The body of `POST /chat/completions`.
#[derive(Debug, Serialize)]
pub(crate) struct WireRequest<'a> {
    pub model: &'a str,
    pub messages: Vec<WireMessage<'a>>,
    pub max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub stop: &'a [String],
}

/// One message on the wire.
#[derive(Debug, Serialize)]
pub(crate) struct WireMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

#[derive(Debug, Deserialize)]
struct WireResponse {
    choices: Option<Vec<WireChoice>>,
    model: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
struct WireChoice {
    message: Option<WireReplyMessage>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireReplyMessage {
    content: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

/// A parsed chat completion.
#[derive(Debug)]
pub(crate) struct Reply {
    pub text: String,
    pub finish_reason: String,
    /// The model the provider says answered, if it said.
    pub model: Option<String>,
    /// `(prompt, completion)` when the provider reported both.
    pub usage: Option<(u64, u64)>,
}

/// One configured provider: its settings, key and (lazily built) client.
pub(crate) struct Provider {
    pub config: ProviderConfig,
    url: String,
    /// `Ok(None)`: no key configured; `Err`: configured but missing.
    key: Result<Option<String>, ProviderError>,
    client: OnceLock<Result<Client, ProviderError>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("Provider")
            .field("name", &self.config.name)
            .field("url", &self.url)
            .field("has_key", &matches!(self.key, Ok(Some(_))))
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// Look the key up in `env` now; the client is built on first use.
    pub(crate) fn new(config: ProviderConfig, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let url = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
        let key = match &config.api_key_env {
            None => Ok(None),
            Some(var) => match env(var) {
                Some(k) if !k.is_empty() => Ok(Some(k)),
                _ => Err(ProviderError::MissingKey {
                    provider: config.name.clone(),
                    var: var.clone(),
                }),
            },
        };
        Self {
            config,
            url,
            key,
            client: OnceLock::new(),
        }
    }

    /// Whether the provider can be called at all (its key is present).
    pub(crate) fn check_ready(&self) -> Result<(), ProviderError> {
        self.key.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// The client, built on the first call: building a blocking client
    /// starts its I/O thread and must not happen inside an async runtime,
    /// which the host call never is.
    fn client(&self) -> Result<&Client, ProviderError> {
        self.client
            .get_or_init(|| {
                Client::builder()
                    .user_agent(concat!("soma/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| ProviderError::Client {
                        provider: self.config.name.clone(),
                        detail: e.to_string(),
                    })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Send `body`, retrying 429 (after `Retry-After`) and 5xx/transport
    /// failures (exponential backoff) up to `max_retries`, all within
    /// `timeout_ms`. Blocks the calling thread for at most about `timeout_ms`.
    pub(crate) fn chat(&self, body: &WireRequest<'_>) -> Result<Reply, ProviderError> {
        let key = self.key.as_ref().map_err(Clone::clone)?;
        let client = self.client()?;
        let name = || self.config.name.clone();
        let timeout_ms = self.config.timeout_ms;
        let timed_out = || ProviderError::TimedOut {
            provider: name(),
            timeout_ms,
        };
        // Clamped so a silly config cannot overflow `Instant`.
        let deadline = Instant::now() + Duration::from_millis(timeout_ms.min(MAX_TIMEOUT_MS));
        let mut attempts = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(timed_out());
            }
            attempts += 1;
            let mut request = client.post(&self.url).json(body).timeout(remaining);
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            // (the failure if no retry is left, how long to wait before retrying)
            let (failure, wait) = match request.send() {
                Err(e) if e.is_timeout() => return Err(timed_out()),
                Err(e) => (
                    ProviderError::Unreachable {
                        provider: name(),
                        attempts,
                        detail: self.detail(&crate::error_chain(&e)),
                    },
                    backoff(attempts),
                ),
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let body = self.read_body(response, deadline)?;
                    match status {
                        s if s.is_success() => return self.parse(&body),
                        StatusCode::TOO_MANY_REQUESTS => (
                            ProviderError::RateLimited {
                                provider: name(),
                                retry_after,
                                attempts,
                            },
                            retry_after.map_or_else(|| backoff(attempts), Duration::from_secs),
                        ),
                        s if s.is_server_error() => (
                            ProviderError::ServerError {
                                provider: name(),
                                status: s.as_u16(),
                                attempts,
                                detail: self.detail(&error_message(&body)),
                            },
                            backoff(attempts),
                        ),
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                            return Err(ProviderError::KeyRejected {
                                provider: name(),
                                status: status.as_u16(),
                            });
                        }
                        StatusCode::BAD_REQUEST
                        | StatusCode::PAYLOAD_TOO_LARGE
                        | StatusCode::UNPROCESSABLE_ENTITY => {
                            return Err(ProviderError::BadRequest {
                                provider: name(),
                                status: status.as_u16(),
                                detail: self.detail(&error_message(&body)),
                            });
                        }
                        s => {
                            return Err(ProviderError::UnexpectedStatus {
                                provider: name(),
                                status: s.as_u16(),
                                detail: self.detail(&error_message(&body)),
                            });
                        }
                    }
                }
            };
            // `Retry-After` is the provider's: checked, not trusted.
            let fits = Instant::now()
                .checked_add(wait)
                .is_some_and(|t| t < deadline);
            if attempts > self.config.max_retries || !fits {
                return Err(failure);
            }
            tracing::debug!(
                provider = %self.config.name,
                attempt = attempts,
                wait_ms = wait.as_millis() as u64,
                "retrying LLM request: {failure}"
            );
            std::thread::sleep(wait);
        }
    }

    /// Read at most [`MAX_RESPONSE_BYTES`] of `response`.
    fn read_body(
        &self,
        response: reqwest::blocking::Response,
        deadline: Instant,
    ) -> Result<Vec<u8>, ProviderError> {
        let mut body = Vec::new();
        match response.take(MAX_RESPONSE_BYTES + 1).read_to_end(&mut body) {
            Ok(_) if body.len() as u64 > MAX_RESPONSE_BYTES => Err(ProviderError::TooLarge {
                provider: self.config.name.clone(),
                limit: MAX_RESPONSE_BYTES,
            }),
            Ok(_) => Ok(body),
            Err(_) if Instant::now() >= deadline => Err(ProviderError::TimedOut {
                provider: self.config.name.clone(),
                timeout_ms: self.config.timeout_ms,
            }),
            Err(e) => Err(ProviderError::Unreachable {
                provider: self.config.name.clone(),
                attempts: 1,
                detail: self.detail(&format!("reading the response: {e}")),
            }),
        }
    }

    fn parse(&self, body: &[u8]) -> Result<Reply, ProviderError> {
        let malformed = |detail: String| ProviderError::Malformed {
            provider: self.config.name.clone(),
            detail: self.detail(&detail),
        };
        let wire: WireResponse =
            serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
        let choice = wire
            .choices
            .and_then(|c| c.into_iter().next())
            .ok_or_else(|| malformed("no choices[0] in the response".into()))?;
        let message = choice
            .message
            .ok_or_else(|| malformed("no choices[0].message in the response".into()))?;
        let usage = wire
            .usage
            .and_then(|u| Some((u.prompt_tokens?, u.completion_tokens?)));
        Ok(Reply {
            text: message.content.unwrap_or_default(),
            finish_reason: choice.finish_reason.unwrap_or_else(|| "unknown".into()),
            model: wire.model.filter(|m| !m.is_empty()),
            usage,
        })
    }

    /// Provider-supplied text fit for an error message: with the API key
    /// removed (some providers echo the key they rejected), then truncated.
    fn detail(&self, text: &str) -> String {
        match &self.key {
            Ok(Some(key)) => redacted_detail(text, key, MAX_DETAIL_CHARS),
            _ => text.chars().take(MAX_DETAIL_CHARS).collect(),
        }
    }
}

/// Shortest run of the key's characters that counts as (part of) the key.
const MIN_KEY_FRAGMENT: usize = 8;

/// `text` without `key` — whole, or any word that holds at least
/// [`MIN_KEY_FRAGMENT`] consecutive characters of it (providers echo keys
/// masked, e.g. `sk-abc…***…xyz`) — cut to `max_chars` characters. The
/// key is removed *before* the cut, and a word cut short at the end that
/// could be the start of the key is removed too, so no prefix of the key
/// survives either way. Error path only: O(text × key).
fn redacted_detail(text: &str, key: &str, max_chars: usize) -> String {
    const REDACTED: &str = "[redacted]";
    let text = if key.is_empty() {
        text.to_owned()
    } else {
        text.replace(key, REDACTED)
    };
    let word_char = |c: char| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | '/' | '=');
    let key_chars: Vec<char> = key.chars().collect();
    let shares_fragment = |word: &str| {
        let w: Vec<char> = word.chars().collect();
        w.len() >= MIN_KEY_FRAGMENT
            && key_chars.len() >= MIN_KEY_FRAGMENT
            && key_chars
                .windows(MIN_KEY_FRAGMENT)
                .any(|frag| w.windows(MIN_KEY_FRAGMENT).any(|x| x == frag))
    };
    // Words (maximal runs of key-like characters) are redacted whole.
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if shares_fragment(word) {
            out.push_str(REDACTED);
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if word_char(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    // Cut, then drop a last word the cut left as a possible key prefix.
    let total = out.chars().count();
    let mut cut: String = out.chars().take(max_chars).collect();
    if total > max_chars {
        let tail_start = cut
            .char_indices()
            .rev()
            .take_while(|(_, c)| word_char(*c))
            .last()
            .map(|(i, _)| i);
        if let Some(i) = tail_start {
            let tail = &cut[i..];
            let prefix_of_key = key_chars.len() >= MIN_KEY_FRAGMENT && key.starts_with(tail);
            if prefix_of_key || shares_fragment(tail) {
                cut.truncate(i);
                cut.push_str(REDACTED);
            }
        }
    }
    cut
}

/// Backoff before retry number `attempts` (1-based).
fn backoff(attempts: u32) -> Duration {
    BACKOFF_START
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

/// The provider's error message: OpenAI's `{"error":{"message":…}}`, a
/// plain `{"error":"…"}` or `{"message":"…"}`, else the body as text.
fn error_message(body: &[u8]) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let from_json = json.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.get("error"))
            .or_else(|| v.get("message"))
            .and_then(|m| m.as_str())
            .map(str::to_owned)
    });
    from_json.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            "(empty body)".to_owned()
        } else {
            text.to_owned()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-proj-9fQ2xLmN4tRv8ZbW1cYe7HgJ3kPs6DaU";

    /// No run of 4+ characters of the key appears in `out`.
    fn leaks(out: &str) -> Option<String> {
        let k: Vec<char> = KEY.chars().collect();
        k.windows(4)
            .map(|w| w.iter().collect::<String>())
            .find(|frag| out.contains(frag.as_str()))
    }

    #[test]
    fn the_key_is_redacted_before_the_cut() {
        // The key straddles the cut: cutting first would leak its prefix.
        let text = format!(
            "{} invalid key {KEY} (check your settings)",
            "x".repeat(280)
        );
        for max in 250..text.len() + 5 {
            let out = redacted_detail(&text, KEY, max);
            assert!(out.chars().count() <= max + "[redacted]".len(), "{max}");
            assert_eq!(leaks(&out), None, "max {max}: {out}");
        }
        let full = redacted_detail(&text, KEY, 1000);
        assert!(full.contains("invalid key [redacted] (check"), "{full}");
    }

    #[test]
    fn fragments_and_glued_keys_are_redacted() {
        let half = &KEY[..20];
        let text = format!("bad key {half}***** and Bearer{KEY}tail, ok");
        let out = redacted_detail(&text, KEY, 300);
        assert_eq!(leaks(&out), None, "{out}");
        assert!(out.starts_with("bad key [redacted]"), "{out}");
        assert!(out.ends_with(", ok"), "{out}");
    }

    #[test]
    fn ordinary_text_is_only_cut() {
        let out = redacted_detail("model overloaded, try again later", KEY, 14);
        assert_eq!(out, "model overload");
        assert_eq!(redacted_detail("fine", "", 10), "fine");
    }
}
