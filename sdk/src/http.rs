//! Outbound HTTP through the standard `wasi:http/outgoing-handler`, with
//! typed helpers: [`get`], [`post`], a [`Request`] builder and a
//! [`Response`] with status, headers, body bytes and [`Response::json`].
//!
//! Ask for it in [`crate::Info`] with allowlist patterns
//! (`.wants_http(&["https://api.example.com"])`); the host allows a URL
//! only if it matches one of them *and* the operator's `[http]
//! allowed_hosts` (and the DAG node's list). A refused URL is
//! [`HttpError::Denied`], never a trap.
//!
//! Redirects (301, 302, 303, 307, 308) are followed here, at most
//! [`Request::max_redirects`] (default 5); every hop is a new request the
//! host checks, so a redirect to a host the grant does not allow is
//! refused. `Authorization` and `Cookie` are dropped when a redirect
//! leaves the origin.
//!
//! ```ignore
//! let r = soma_sdk::http::get("https://api.example.com/v1/items")?;
//! let items: Vec<Item> = r.json()?;
//! ```

use crate::bindings::wasi::http::{
    outgoing_handler,
    types::{
        ErrorCode, Fields, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
        RequestOptions, Scheme,
    },
};
use crate::bindings::wasi::io::streams::{InputStream, StreamError};

/// Redirects followed when the request does not say.
pub const DEFAULT_MAX_REDIRECTS: u32 = 5;

/// Largest chunk written to a request body stream at once (the WASI limit
/// of `blocking-write-and-flush`).
const WRITE_CHUNK: usize = 4096;
/// Largest chunk read from a response body stream at once.
const READ_CHUNK: u64 = 64 * 1024;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host refused the URL: its scheme, host or port is not granted,
    /// or the host name resolves only to private addresses.
    Denied {
        /// `scheme://host:port` of the refused request.
        target: String,
    },
    /// The URL could not be understood.
    InvalidUrl(String),
    /// More redirects than [`Request::max_redirects`].
    TooManyRedirects {
        /// The limit.
        max: u32,
    },
    /// The host refused the request because a per-call quota is used up
    /// (e.g. the number of requests one call may make); the message names
    /// the quota and the operator's `[http]` key that raises it. Retrying
    /// within the same call cannot succeed.
    Quota(String),
    /// Any other WASI HTTP error (timeouts, TLS, connection…), as the host
    /// named it.
    Transport(String),
    /// The body is not the JSON [`Response::json`] was asked for.
    Json(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Denied { target } => write!(
                f,
                "request to {target} denied: ask for it in describe() and have the operator \
                 allow it ([http] allowed_hosts)"
            ),
            Self::InvalidUrl(m) => write!(f, "invalid URL: {m}"),
            Self::TooManyRedirects { max } => write!(f, "more than {max} redirects"),
            Self::Quota(m) | Self::Transport(m) => f.write_str(m),
            Self::Json(m) => write!(f, "response is not the expected JSON: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for crate::Error {
    fn from(e: HttpError) -> Self {
        let (code, retryable) = match &e {
            HttpError::Denied { .. } => ("http-denied", false),
            HttpError::InvalidUrl(_) => ("http-invalid-url", false),
            HttpError::TooManyRedirects { .. } => ("http-too-many-redirects", false),
            HttpError::Quota(_) => ("http-quota", false),
            HttpError::Transport(_) => ("http-failed", true),
            HttpError::Json(_) => ("http-bad-json", false),
        };
        let err = crate::Error::new(code, e.to_string());
        if retryable { err.retryable() } else { err }
    }
}

fn transport(e: &ErrorCode, target: &str) -> HttpError {
    match e {
        ErrorCode::HttpRequestDenied => HttpError::Denied {
            target: target.to_owned(),
        },
        // The host's quota refusals start so (soma_host_api::http::QUOTA_ERROR_PREFIX).
        ErrorCode::InternalError(Some(m)) if m.starts_with("http quota exceeded: ") => {
            HttpError::Quota(m.clone())
        }
        ErrorCode::InternalError(Some(m)) => HttpError::Transport(m.clone()),
        other => HttpError::Transport(format!("{other:?}")),
    }
}

/// A URL split into what `wasi:http` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    https: bool,
    authority: String,
    path_with_query: String,
}

impl Url {
    fn parse(url: &str) -> Result<Self, HttpError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| HttpError::InvalidUrl(format!("{url:?} has no scheme")))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => {
                return Err(HttpError::InvalidUrl(format!(
                    "{url:?}: only http and https are supported"
                )));
            }
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() {
            return Err(HttpError::InvalidUrl(format!("{url:?} has no host")));
        }
        let path_with_query = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        Ok(Self {
            https,
            authority: authority.to_owned(),
            path_with_query,
        })
    }

    fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority.to_ascii_lowercase()
        )
    }

    fn to_text(&self) -> String {
        format!("{}{}", self.origin(), self.path_with_query)
    }

    /// `scheme://host:port` as the host logs it (no path: it may carry secrets).
    fn target(&self) -> String {
        self.origin()
    }

    /// Where a `Location` header points, relative to this URL.
    fn join(&self, location: &str) -> Result<Self, HttpError> {
        if location.contains("://") {
            return Self::parse(location);
        }
        if let Some(rest) = location.strip_prefix("//") {
            let scheme = if self.https { "https" } else { "http" };
            return Self::parse(&format!("{scheme}://{rest}"));
        }
        let path = if location.starts_with('/') {
            location.to_owned()
        } else {
            let base = self.path_with_query.split('?').next().unwrap_or("/");
            let dir = base.rsplit_once('/').map_or("", |(d, _)| d);
            format!("{dir}/{location}")
        };
        Ok(Self {
            https: self.https,
            authority: self.authority.clone(),
            path_with_query: path,
        })
    }
}

/// An HTTP request under construction.
///
/// ```ignore
/// let r = soma_sdk::http::Request::post("https://api.example.com/v1/jobs", body)
///     .header("content-type", "application/json")
///     .timeout_ms(5_000)
///     .send()?;
/// ```
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    timeout_ms: Option<u64>,
    max_redirects: u32,
}

impl Request {
    /// A request with `method` (`GET`, `POST`, …) to `url`.
    pub fn new(method: &str, url: &str) -> Self {
        Self {
            method: method.to_ascii_uppercase(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: None,
            max_redirects: DEFAULT_MAX_REDIRECTS,
        }
    }

    /// A `GET` to `url`.
    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    /// A `POST` of `body` to `url`.
    pub fn post(url: &str, body: impl Into<Vec<u8>>) -> Self {
        Self::new("POST", url).body(body)
    }

    /// Add a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Set the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Ask for timeouts of `ms` for connecting, for the first byte and
    /// between bytes (the host lowers them to its own and the call's deadline).
    #[must_use]
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Follow at most `n` redirects (0: return the redirect itself).
    #[must_use]
    pub fn max_redirects(mut self, n: u32) -> Self {
        self.max_redirects = n;
        self
    }

    /// Send it, follow redirects, and read the whole body.
    pub fn send(self) -> Result<Response, HttpError> {
        let mut open = self.open()?;
        let mut body = Vec::new();
        while let Some(chunk) = open.read_chunk()? {
            body.extend_from_slice(&chunk);
        }
        Ok(Response {
            status: open.status,
            headers: open.headers.clone(),
            url: open.url.clone(),
            redirects: open.redirects,
            body,
        })
    }

    /// Send it and follow redirects; the body is read chunk by chunk from
    /// the returned [`Incoming`] (for bodies too large to hold).
    pub fn open(self) -> Result<Incoming, HttpError> {
        let mut url = Url::parse(&self.url)?;
        let mut method = self.method;
        let mut body = self.body;
        let mut headers = self.headers;
        let first_origin = url.origin();
        let mut redirects = 0;
        loop {
            let response = send_once(&method, &url, &headers, &body, self.timeout_ms)?;
            let status = response.status();
            let location = (matches!(status, 301 | 302 | 303 | 307 | 308))
                .then(|| header(&response.headers().entries(), "location"))
                .flatten();
            let Some(location) = location else {
                return Incoming::new(response, url.to_text(), redirects);
            };
            if redirects >= self.max_redirects {
                if self.max_redirects == 0 {
                    return Incoming::new(response, url.to_text(), redirects);
                }
                return Err(HttpError::TooManyRedirects {
                    max: self.max_redirects,
                });
            }
            drop(response);
            let location = String::from_utf8_lossy(&location).into_owned();
            let next = url.join(&location)?;
            if status == 303 || (matches!(status, 301 | 302) && method == "POST") {
                method = "GET".into();
                body.clear();
                headers.retain(|(n, _)| n != "content-type" && n != "content-length");
            }
            if next.origin() != first_origin {
                headers.retain(|(n, _)| n != "authorization" && n != "cookie");
            }
            url = next;
            redirects += 1;
        }
    }
}

fn header(entries: &[(String, Vec<u8>)], name: &str) -> Option<Vec<u8>> {
    entries
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

fn method(m: &str) -> Method {
    match m {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_owned()),
    }
}

/// One request, no redirects: the response head.
fn send_once(
    verb: &str,
    url: &Url,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
    timeout_ms: Option<u64>,
) -> Result<IncomingResponse, HttpError> {
    let target = url.target();
    let mut headers = headers.to_vec();
    if !body.is_empty() && header(&headers, "content-length").is_none() {
        headers.push(("content-length".into(), body.len().to_string().into_bytes()));
    }
    let fields = Fields::from_list(&headers)
        .map_err(|e| HttpError::Transport(format!("bad header: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let bad = |what: &str| HttpError::InvalidUrl(format!("the host refused the {what}"));
    request
        .set_method(&method(verb))
        .map_err(|()| bad("method"))?;
    let scheme = if url.https {
        Scheme::Https
    } else {
        Scheme::Http
    };
    request
        .set_scheme(Some(&scheme))
        .map_err(|()| bad("scheme"))?;
    request
        .set_authority(Some(&url.authority))
        .map_err(|()| bad("host"))?;
    request
        .set_path_with_query(Some(&url.path_with_query))
        .map_err(|()| bad("path"))?;
    let options = timeout_ms.map(|ms| {
        let o = RequestOptions::new();
        let ns = Some(ms.saturating_mul(1_000_000));
        let _ = o.set_connect_timeout(ns);
        let _ = o.set_first_byte_timeout(ns);
        let _ = o.set_between_bytes_timeout(ns);
        o
    });
    // No body: no body resource either, so the host sends the request as
    // empty (no chunked encoding, no stream to wait on for its end).
    let outgoing = if body.is_empty() {
        None
    } else {
        Some(
            request
                .body()
                .map_err(|()| HttpError::Transport("request body already taken".into()))?,
        )
    };
    let future = outgoing_handler::handle(request, options).map_err(|e| transport(&e, &target))?;
    if let Some(outgoing) = outgoing {
        write_body(outgoing, body, &target)?;
    }
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(response))) => Ok(response),
        Some(Ok(Err(e))) => Err(transport(&e, &target)),
        Some(Err(())) | None => Err(HttpError::Transport(
            "the response was already taken".into(),
        )),
    }
}

fn write_body(outgoing: OutgoingBody, body: &[u8], target: &str) -> Result<(), HttpError> {
    if !body.is_empty() {
        let stream = outgoing
            .write()
            .map_err(|()| HttpError::Transport("request body stream already taken".into()))?;
        for chunk in body.chunks(WRITE_CHUNK) {
            if let Err(e) = stream.blocking_write_and_flush(chunk) {
                drop(stream);
                return Err(stream_error(e, target));
            }
        }
        drop(stream);
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| transport(&e, target))
}

fn stream_error(e: StreamError, target: &str) -> HttpError {
    match e {
        StreamError::Closed => HttpError::Transport("the stream was closed".into()),
        StreamError::LastOperationFailed(err) => {
            match crate::bindings::wasi::http::types::http_error_code(&err) {
                Some(code) => transport(&code, target),
                // The first line: the rest may be a host backtrace.
                None => HttpError::Transport(
                    err.to_debug_string()
                        .lines()
                        .next()
                        .unwrap_or("stream error")
                        .to_owned(),
                ),
            }
        }
    }
}

/// A response whose body has not been read yet (see [`Request::open`]).
#[derive(Debug)]
pub struct Incoming {
    /// The status code.
    pub status: u16,
    /// The headers (names lower-case).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The URL that answered (after redirects).
    pub url: String,
    /// Redirects followed.
    pub redirects: u32,
    // Dropped in this order: stream, body, response.
    stream: Option<InputStream>,
    body: Option<IncomingBody>,
    _response: IncomingResponse,
    target: String,
}

impl Incoming {
    fn new(response: IncomingResponse, url: String, redirects: u32) -> Result<Self, HttpError> {
        let status = response.status();
        let headers = response.headers().entries();
        let body = response
            .consume()
            .map_err(|()| HttpError::Transport("response body already taken".into()))?;
        let stream = body
            .stream()
            .map_err(|()| HttpError::Transport("response body stream already taken".into()))?;
        let target = Url::parse(&url).map(|u| u.target()).unwrap_or_default();
        Ok(Self {
            status,
            headers,
            url,
            redirects,
            stream: Some(stream),
            body: Some(body),
            _response: response,
            target,
        })
    }

    /// The next chunk of the body, `None` at its end. Blocks until data
    /// arrives (bounded by the host's timeouts and the call's deadline).
    pub fn read_chunk(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        let Some(stream) = &self.stream else {
            return Ok(None);
        };
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => Ok(Some(chunk)),
            Err(StreamError::Closed) => {
                self.stream = None;
                self.body = None;
                Ok(None)
            }
            Err(e) => {
                self.stream = None;
                Err(stream_error(e, &self.target))
            }
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.stream = None;
        self.body = None;
    }
}

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers (names lower-case).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
    /// The URL that answered (after redirects).
    pub url: String,
    /// Redirects followed.
    pub redirects: u32,
}

impl Response {
    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<String> {
        header(&self.headers, name).map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::Json(e.to_string()))
    }

    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// `GET url`, following redirects; the whole body.
pub fn get(url: &str) -> Result<Response, HttpError> {
    Request::get(url).send()
}

/// `POST body` to `url`, following redirects; the whole body.
pub fn post(url: &str, body: impl Into<Vec<u8>>) -> Result<Response, HttpError> {
    Request::post(url, body).send()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_and_redirects_resolve() {
        let u = Url::parse("https://API.example.com:8443/v1/items?x=1#frag").expect("url");
        assert_eq!(u.authority, "API.example.com:8443");
        assert_eq!(u.path_with_query, "/v1/items?x=1");
        assert_eq!(u.origin(), "https://api.example.com:8443");
        assert_eq!(Url::parse("http://h").expect("url").path_with_query, "/");
        assert_eq!(
            Url::parse("http://h?q").expect("url").path_with_query,
            "/?q"
        );
        assert!(Url::parse("ftp://h").is_err());
        assert!(Url::parse("http:///x").is_err());
        assert_eq!(
            u.join("/a").expect("join").to_text(),
            "https://api.example.com:8443/a"
        );
        assert_eq!(
            u.join("b").expect("join").to_text(),
            "https://api.example.com:8443/v1/b"
        );
        assert_eq!(
            u.join("//other/x").expect("join").to_text(),
            "https://other/x"
        );
        assert_eq!(
            u.join("http://evil/").expect("join").origin(),
            "http://evil"
        );
    }
}
