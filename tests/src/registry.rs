//! A real OCI registry for tests: Debian's `docker-registry` (distribution
//! 2.8) on a free loopback port over a temporary storage directory, stopped
//! on drop. `cargo xtask test` installs it.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Where Debian installs the registry binary.
pub const BINARY: &str = "/usr/bin/docker-registry";

/// How long a registry may take to answer `GET /v2/` after starting.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// A running registry. Killed (and its storage removed) on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    host: String,
    dir: tempfile::TempDir,
}

/// A raw HTTP response from [`Registry::get`].
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header lines, lowercased names.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Registry {
    /// Start an anonymous registry. Panics (with the log) if it does not come up.
    pub fn start() -> Self {
        Self::spawn(None)
    }

    /// Start a registry requiring HTTP basic auth for `user`/`pass`.
    pub fn start_with_auth(user: &str, pass: &str) -> Self {
        Self::spawn(Some((user, pass)))
    }

    fn spawn(auth: Option<(&str, &str)>) -> Self {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: run `cargo xtask test` (it installs docker-registry) or `apt-get install docker-registry`"
        );
        let dir = tempfile::tempdir().expect("registry tempdir");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage dir");
        let auth_section = match auth {
            Some((user, pass)) => {
                let hash = bcrypt::hash(pass, 4).expect("bcrypt");
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: soma-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n{auth_section}",
            storage.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let child = Command::new(BINARY)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        let mut registry = Self { child, host, dir };
        registry.wait_ready();
        registry
    }

    /// Poll `GET /v2/` until any HTTP answer, the process exits, or the deadline.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        let mut pause = Duration::from_millis(5);
        loop {
            if self.get("/v2/", &[]).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("docker-registry exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer within {START_DEADLINE:?}: {}",
                self.log()
            );
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The registry's filesystem storage root (contains `docker/registry/v2`).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The data file of blob `digest` (`sha256:<hex>`) in the storage.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// A plain HTTP/1.0 `GET` of `path` with extra `headers`.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
        http_request(&self.host, "GET", path, headers, &[])
    }

    /// Upload `data` as a blob of `repository` (POST a session, then one
    /// monolithic PUT); returns its digest.
    pub fn put_blob(&self, repository: &str, data: &[u8]) -> String {
        let digest = soma_runtime::Digest::of(data).to_string();
        let r = http_request(
            &self.host,
            "POST",
            &format!("/v2/{repository}/blobs/uploads/"),
            &[("Content-Length", "0")],
            &[],
        )
        .expect("blob upload session");
        assert_eq!(
            r.status,
            202,
            "upload session: {}",
            String::from_utf8_lossy(&r.body)
        );
        let location = r.header("Location").expect("Location header");
        let path = location.find("/v2/").map_or(location, |at| &location[at..]);
        let sep = if path.contains('?') { '&' } else { '?' };
        let length = data.len().to_string();
        let r = http_request(
            &self.host,
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &[
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", &length),
            ],
            data,
        )
        .expect("blob upload");
        assert_eq!(
            r.status,
            201,
            "blob upload: {}",
            String::from_utf8_lossy(&r.body)
        );
        digest
    }

    /// Put `manifest` (of `media_type`) at `repository:tag`; returns its digest.
    pub fn put_manifest(
        &self,
        repository: &str,
        tag: &str,
        media_type: &str,
        manifest: &[u8],
    ) -> String {
        let length = manifest.len().to_string();
        let r = http_request(
            &self.host,
            "PUT",
            &format!("/v2/{repository}/manifests/{tag}"),
            &[("Content-Type", media_type), ("Content-Length", &length)],
            manifest,
        )
        .expect("manifest upload");
        assert_eq!(
            r.status,
            201,
            "manifest upload: {}",
            String::from_utf8_lossy(&r.body)
        );
        soma_runtime::Digest::of(manifest).to_string()
    }

    /// Stop the registry now (a later pull then finds it unreachable).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A minimal HTTP/1.0 request (no chunked encoding, connection closes).
pub fn http_request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// A hostile "registry" for size-cap tests: a loopback HTTP server that
/// answers `GET /v2/` with 200 and every manifest request with a body of
/// `total` bytes (a JSON object padded with spaces), either announced in
/// `Content-Length` or, with `declare_length = false`, sent without a length
/// until the connection closes. It counts the body bytes it managed to
/// write, so a test can see that the client stopped reading at its cap.
/// Distribution itself refuses manifests over 4 MiB, so anything larger has
/// to come from a server like this one. Stopped on drop.
#[derive(Debug)]
pub struct HugeManifestServer {
    host: String,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HugeManifestServer {
    /// Start serving `total`-byte manifests.
    pub fn start(total: u64, declare_length: bool) -> Self {
        Self::spawn(total, declare_length, false)
    }

    /// A server that announces a 1 KiB manifest, sends its first bytes and
    /// then holds the connection open without sending more (until dropped).
    pub fn stalling() -> Self {
        Self::spawn(1024, true, true)
    }

    fn spawn(total: u64, declare_length: bool, stall: bool) -> Self {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, AtomicU64, Ordering},
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let host = listener.local_addr().expect("addr").to_string();
        listener.set_nonblocking(true).expect("nonblocking");
        let sent = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, r, flag) = (sent.clone(), requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (s, r, f) = (s.clone(), r.clone(), flag.clone());
                        std::thread::spawn(move || {
                            let stop = if stall { Some(&*f) } else { None };
                            serve_huge(stream, total, declare_length, stop, &s, &r);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self {
            host,
            sent,
            requests,
            stop,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Manifest body bytes written to clients so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Manifest requests answered so far.
    pub fn manifest_requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for HugeManifestServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn serve_huge(
    mut stream: TcpStream,
    total: u64,
    declare_length: bool,
    stall_until: Option<&std::sync::atomic::AtomicBool>,
    sent: &std::sync::atomic::AtomicU64,
    requests: &std::sync::atomic::AtomicU64,
) {
    use std::sync::atomic::Ordering;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    if path == "/v2/" {
        let _ = stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        );
        return;
    }
    if !path.contains("/manifests/") {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let mut response = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nConnection: close\r\n",
    );
    if declare_length {
        response.push_str(&format!("Content-Length: {total}\r\n"));
    }
    response.push_str("\r\n");
    if stream.write_all(response.as_bytes()).is_err() {
        return;
    }
    let opening = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"pad":""#;
    let mut written = 0u64;
    let chunk = vec![b' '; 64 * 1024];
    if stream.write_all(opening).is_err() {
        return;
    }
    written += opening.len() as u64;
    sent.fetch_add(opening.len() as u64, Ordering::SeqCst);
    if let Some(stop) = stall_until {
        // The stalling server: the opening is all it sends; the connection
        // stays open (and silent) until the server is dropped.
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        return;
    }
    while written < total {
        let n = usize::try_from((total - written).min(chunk.len() as u64)).unwrap_or(chunk.len());
        if stream.write_all(&chunk[..n]).is_err() {
            return;
        }
        written += n as u64;
        sent.fetch_add(n as u64, Ordering::SeqCst);
    }
}

/// The token the [`TokenRealm`] hands out and then accepts.
pub const REALM_TOKEN: &str = "soma-test-token";

/// A registry that asks for a bearer token, for token-negotiation tests: a
/// loopback HTTP server whose `GET /v2/` answers 401 with
/// `WWW-Authenticate: Bearer realm="http://HOST/token",service="soma-test"`,
/// whose `/token` answers a JSON `{"token": REALM_TOKEN, "pad": "  …"}` of
/// `reply_bytes` bytes (announced in `Content-Length` or not), and whose
/// other paths answer 404 to a request carrying `Bearer REALM_TOKEN` and 401
/// (with the challenge) to any other. It records each token request's query
/// string, counts the bearer requests and the reply bytes it managed to
/// write. Stopped on drop.
#[derive(Debug)]
pub struct TokenRealm {
    host: String,
    state: std::sync::Arc<RealmState>,
}

#[derive(Debug, Default)]
struct RealmState {
    sent: std::sync::atomic::AtomicU64,
    bearer_requests: std::sync::atomic::AtomicU64,
    queries: std::sync::Mutex<Vec<String>>,
    stop: std::sync::atomic::AtomicBool,
}

impl TokenRealm {
    /// Start a realm whose token reply is `reply_bytes` long.
    pub fn start(reply_bytes: u64, declare_length: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let host = listener.local_addr().expect("addr").to_string();
        listener.set_nonblocking(true).expect("nonblocking");
        let state = std::sync::Arc::new(RealmState::default());
        let (shared, realm_host) = (state.clone(), host.clone());
        std::thread::spawn(move || {
            use std::sync::atomic::Ordering;
            while !shared.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (s, h) = (shared.clone(), realm_host.clone());
                        std::thread::spawn(move || {
                            serve_realm(stream, &h, reply_bytes, declare_length, &s);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self { host, state }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Token reply bytes written to clients so far.
    pub fn sent(&self) -> u64 {
        self.state.sent.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Requests (other than `/token`) that carried the realm's token.
    pub fn bearer_requests(&self) -> u64 {
        self.state
            .bearer_requests
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The query strings of the token requests so far.
    pub fn token_queries(&self) -> Vec<String> {
        self.state
            .queries
            .lock()
            .map(|q| q.clone())
            .unwrap_or_default()
    }
}

impl Drop for TokenRealm {
    fn drop(&mut self) {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn serve_realm(
    mut stream: TcpStream,
    host: &str,
    reply_bytes: u64,
    declare_length: bool,
    state: &RealmState,
) {
    use std::sync::atomic::Ordering;
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let bearer = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case("authorization")
                && v.trim() == format!("Bearer {REALM_TOKEN}")
        })
    });
    let challenge =
        format!("WWW-Authenticate: Bearer realm=\"http://{host}/token\",service=\"soma-test\"\r\n");
    let unauthorized = format!(
        "HTTP/1.1 401 Unauthorized\r\n{challenge}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if path == "/token" {
        if let Ok(mut q) = state.queries.lock() {
            q.push(query.to_owned());
        }
        let mut response = String::from(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n",
        );
        if declare_length {
            response.push_str(&format!("Content-Length: {reply_bytes}\r\n"));
        }
        response.push_str("\r\n");
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
        let opening = format!("{{\"token\":\"{REALM_TOKEN}\",\"pad\":\"");
        let closing = "\"}";
        let fill = reply_bytes.saturating_sub((opening.len() + closing.len()) as u64);
        if stream.write_all(opening.as_bytes()).is_err() {
            return;
        }
        state.sent.fetch_add(opening.len() as u64, Ordering::SeqCst);
        let chunk = vec![b' '; 64 * 1024];
        let mut written = 0u64;
        while written < fill {
            let n =
                usize::try_from((fill - written).min(chunk.len() as u64)).unwrap_or(chunk.len());
            if stream.write_all(&chunk[..n]).is_err() {
                return;
            }
            written += n as u64;
            state.sent.fetch_add(n as u64, Ordering::SeqCst);
        }
        if stream.write_all(closing.as_bytes()).is_ok() {
            state.sent.fetch_add(closing.len() as u64, Ordering::SeqCst);
        }
        return;
    }
    if path == "/v2/" || !bearer {
        let _ = stream.write_all(unauthorized.as_bytes());
        return;
    }
    state.bearer_requests.fetch_add(1, Ordering::SeqCst);
    let _ = stream.write_all(
        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
}
