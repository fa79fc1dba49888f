//! A stand-in for paid LLM services (which tests cannot reach): a small
//! HTTP/1.1 server on a free loopback port speaking OpenAI's
//! chat-completions protocol, stopped on drop.
//!
//! `POST /v1/chat/completions` answers deterministically. The reply is
//! `echo: <last user message>` cut to `max_tokens` words (default 16), with
//! usage `prompt = words of all messages + 3 × messages` and
//! `completion = words of the reply`. The request's `model` picks the
//! behaviour, so one server covers every case:
//!
//! | model | answer |
//! |---|---|
//! | `fixture-ok` (or any other name) | 200, completion with usage |
//! | `fixture-no-usage` | 200, completion without `usage` |
//! | `fixture-huge-usage` | 200, usage of 2^64−1 prompt + 5 completion tokens |
//! | `fixture-slow` | the ok answer after [`FixtureOptions::slow`] |
//! | `fixture-429` | 429 `Retry-After: 1` for the first [`FixtureOptions::rate_limited`] requests, then ok |
//! | `fixture-500` | 500 with an OpenAI error body |
//! | `fixture-400` | 400 with an OpenAI error body (`bad request from fixture`) |
//! | `fixture-malformed` | 200 with a body that is not JSON |
//! | `fixture-no-choices` | 200 with JSON lacking `choices` |
//! | `fixture-401` | 401, echoing the bearer key in the message (as some providers do) |
//!
//! Every request is recorded (count, per-model count, last `Authorization`
//! header, last body) for assertions.

use std::{
    io::{BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use serde_json::{Value, json};

/// Words in a reply when the request sets no `max_tokens`.
const DEFAULT_MAX_WORDS: usize = 16;

/// How the fixture behaves where the behaviour has a parameter.
#[derive(Debug, Clone, Copy)]
pub struct FixtureOptions {
    /// How many `fixture-429` requests answer 429 before the first ok.
    pub rate_limited: u32,
    /// How long `fixture-slow` waits before answering (cut short by drop).
    pub slow: Duration,
}

impl Default for FixtureOptions {
    fn default() -> Self {
        Self {
            rate_limited: 1,
            slow: Duration::from_secs(30),
        }
    }
}

/// What the fixture has received.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// Requests to the chat endpoint.
    pub count: usize,
    /// The `model` of each request, in order.
    pub models: Vec<String>,
    /// The last `Authorization` header (`None` if the last request had none).
    pub last_authorization: Option<String>,
    /// The last request body, parsed.
    pub last_body: Option<Value>,
}

#[derive(Debug, Default)]
struct Inner {
    stopped: Mutex<bool>,
    wake: Condvar,
    recorded: Mutex<Recorded>,
    rate_limited_left: Mutex<u32>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fixture server. Stops (and wakes any slow answer) on drop.
#[derive(Debug)]
pub struct LlmFixture {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept: Option<JoinHandle<()>>,
}

impl LlmFixture {
    /// Start with the default options.
    pub fn start() -> Self {
        Self::start_with(FixtureOptions::default())
    }

    /// Start with `options` on a free loopback port.
    pub fn start_with(options: FixtureOptions) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let inner = Arc::new(Inner {
            rate_limited_left: Mutex::new(options.rate_limited),
            ..Inner::default()
        });
        let accept = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("llm-fixture".into())
                .spawn(move || {
                    for stream in listener.incoming() {
                        if *lock(&inner.stopped) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let inner = inner.clone();
                        let _ = std::thread::Builder::new()
                            .name("llm-fixture-conn".into())
                            .spawn(move || serve(stream, &inner, options));
                    }
                })
                .expect("spawn fixture thread")
        };
        Self {
            addr,
            inner,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT/v1`, the provider `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// A copy of what was received so far.
    pub fn recorded(&self) -> Recorded {
        lock(&self.inner.recorded).clone()
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        lock(&self.inner.recorded).count
    }
}

impl Drop for LlmFixture {
    fn drop(&mut self) {
        *lock(&self.inner.stopped) = true;
        self.inner.wake.notify_all();
        // Unblock `accept`.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One request per connection (`Connection: close`).
fn serve(stream: TcpStream, inner: &Inner, options: FixtureOptions) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(write) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let Some((method, path, headers, body)) = read_request(&mut reader) else {
        return;
    };
    let (status, extra, body) = if method != "POST" || path != "/v1/chat/completions" {
        (
            404,
            Vec::new(),
            json!({"error": {"message": "not found"}}).to_string(),
        )
    } else {
        answer(inner, options, &headers, &body)
    };
    let _ = respond(write, status, &extra, &body);
}

type Headers = Vec<(String, String)>;

fn read_request(reader: &mut impl std::io::BufRead) -> Option<(String, String, Headers, Vec<u8>)> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let length: usize = header(&headers, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((method, path, headers, body))
}

fn header<'h>(headers: &'h Headers, name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// (status, extra headers, body) for a chat request.
fn answer(
    inner: &Inner,
    options: FixtureOptions,
    headers: &Headers,
    body: &[u8],
) -> (u16, Vec<(&'static str, String)>, String) {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        let e = json!({"error": {"message": "request body is not JSON"}});
        return (400, Vec::new(), e.to_string());
    };
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    let authorization = header(headers, "authorization").map(str::to_owned);
    {
        let mut r = lock(&inner.recorded);
        r.count += 1;
        r.models.push(model.clone());
        r.last_authorization = authorization.clone();
        r.last_body = Some(request.clone());
    }
    let error = |message: String| json!({"error": {"message": message, "type": "fixture"}});
    match model.as_str() {
        "fixture-500" => (
            500,
            Vec::new(),
            error("internal fixture error".into()).to_string(),
        ),
        "fixture-400" => (
            400,
            Vec::new(),
            error("bad request from fixture".into()).to_string(),
        ),
        "fixture-401" => {
            let key = authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "))
                .unwrap_or("(none)");
            let e = error(format!("Incorrect API key provided: {key}"));
            (401, Vec::new(), e.to_string())
        }
        "fixture-malformed" => (200, Vec::new(), r#"{"choices": [ {"message": "#.to_owned()),
        "fixture-no-choices" => (
            200,
            Vec::new(),
            json!({"object": "chat.completion"}).to_string(),
        ),
        "fixture-429" => {
            let mut left = lock(&inner.rate_limited_left);
            if *left > 0 {
                *left -= 1;
                let e = error("rate limited by fixture".into());
                return (429, vec![("Retry-After", "1".to_owned())], e.to_string());
            }
            drop(left);
            (200, Vec::new(), completion(&request, true).to_string())
        }
        "fixture-slow" => {
            let stopped = lock(&inner.stopped);
            let (stopped, _) = inner
                .wake
                .wait_timeout_while(stopped, options.slow, |s| !*s)
                .unwrap_or_else(PoisonError::into_inner);
            drop(stopped);
            (200, Vec::new(), completion(&request, true).to_string())
        }
        "fixture-no-usage" => (200, Vec::new(), completion(&request, false).to_string()),
        "fixture-huge-usage" => {
            let mut body = completion(&request, true);
            body["usage"] = json!({
                "prompt_tokens": u64::MAX,
                "completion_tokens": 5,
                "total_tokens": u64::MAX,
            });
            (200, Vec::new(), body.to_string())
        }
        _ => (200, Vec::new(), completion(&request, true).to_string()),
    }
}

/// The deterministic completion for `request`.
pub fn completion(request: &Value, with_usage: bool) -> Value {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let content = |m: &Value| m["content"].as_str().unwrap_or_default().to_owned();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .or(messages.last())
        .map(content)
        .unwrap_or_default();
    let max_words = request["max_tokens"]
        .as_u64()
        .map_or(DEFAULT_MAX_WORDS, |n| n as usize);
    let words: Vec<&str> = std::iter::once("echo:")
        .chain(last_user.split_whitespace())
        .collect();
    let truncated = words.len() > max_words;
    let reply = words[..words.len().min(max_words)].join(" ");
    let prompt_tokens: usize = messages
        .iter()
        .map(|m| content(m).split_whitespace().count() + 3)
        .sum();
    let completion_tokens = reply.split_whitespace().count();
    let mut body = json!({
        "id": "chatcmpl-fixture",
        "object": "chat.completion",
        "created": 0,
        "model": request["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply},
            "finish_reason": if truncated { "length" } else { "stop" },
        }],
    });
    if with_usage {
        body["usage"] = json!({
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        });
    }
    body
}

fn respond(
    mut stream: TcpStream,
    status: u16,
    extra: &[(&'static str, String)],
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        _ => "Internal Server Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}
