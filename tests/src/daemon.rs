//! A real `soma daemon` process for tests that talk to it over HTTP the way
//! a client (or an attacker) would: start it on a free loopback port over a
//! data directory, create tokens, send requests, measure what the process
//! holds (RSS, threads, file descriptors), and measure another tenant's
//! latency while something hostile is going on.
//!
//! The `soma` binary's path is passed in (`env!("CARGO_BIN_EXE_soma")` in
//! the runtime crate's integration tests), since only that crate's tests
//! know it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;
/// The process harness this module builds on (also used by `cargo xtask
/// load`): start, wait for the listening line, stop.
pub use soma_daemon_harness as harness;

/// Catalog entries every test daemon serves: name → built component.
pub const CATALOG: &[(&str, &str)] = &[
    ("echo", soma_capsules::ECHO_COMPONENT),
    ("calculator", soma_capsules::CALCULATOR_COMPONENT),
    ("notebook", soma_capsules::NOTEBOOK_COMPONENT),
    ("hostile-loop", soma_capsules::HOSTILE_LOOP_COMPONENT),
    ("hostile-memory", soma_capsules::HOSTILE_MEMORY_COMPONENT),
    ("hostile-output", soma_capsules::HOSTILE_OUTPUT_COMPONENT),
    ("flaky", soma_capsules::FLAKY_COMPONENT),
    (
        "kamachiq-planner",
        soma_capsules::KAMACHIQ_PLANNER_COMPONENT,
    ),
    ("kamachiq-coder", soma_capsules::KAMACHIQ_CODER_COMPONENT),
    (
        "kamachiq-reviewer",
        soma_capsules::KAMACHIQ_REVIEWER_COMPONENT,
    ),
];

/// `soma --data DATA` with no ambient configuration.
pub fn soma(bin: &Path, data: &Path) -> Command {
    harness::soma(bin, data)
}

/// Create a token with `soma token create` (the daemon must not be
/// running on `data`: it owns the database).
pub fn token(bin: &Path, data: &Path, tenant: &str, scopes: &str) -> String {
    harness::create_token(bin, data, tenant, scopes).unwrap_or_else(|e| panic!("{e}"))
}

/// A `soma.toml` listening on a free port, with `extra` (TOML, e.g. a
/// `[limits]` table or more `[daemon]` keys placed before the catalog) and
/// the test catalog.
pub fn config_text(daemon_keys: &str, extra: &str) -> String {
    let mut text = String::from("[daemon]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 65536\n");
    text.push_str(daemon_keys);
    text.push('\n');
    for (name, path) in CATALOG {
        text.push_str(&format!(
            "[[daemon.capsules]]\nname = \"{name}\"\npath = \"{path}\"\n"
        ));
    }
    text.push_str(extra);
    text.push('\n');
    text
}

/// An `[engine]` table that keeps the AOT cache in `data/aot`, for a test
/// that counts compiles: `cargo xtask test` shares one cache across the
/// suite (`SOMA_AOT_DIR`, docs/ci.md), where another test may have
/// compiled the same capsule first.
pub fn own_aot_cache(data: &Path) -> String {
    let dir = data.join("aot").display().to_string();
    format!("[engine]\naot_dir = {}\n", toml::Value::String(dir))
}

/// A daemon process over a data directory; killed on drop.
#[derive(Debug)]
pub struct DaemonProcess {
    daemon: harness::Daemon,
    /// `http://127.0.0.1:PORT` (or https).
    pub url: String,
    /// Its data directory.
    pub data: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    bin: PathBuf,
}

impl DaemonProcess {
    /// Write `config_text(daemon_keys, extra)` into `data/soma.toml` and
    /// start a daemon on it.
    pub fn start(bin: &Path, data: &Path, daemon_keys: &str, extra: &str) -> Self {
        let config = data.join("soma.toml");
        std::fs::write(&config, config_text(daemon_keys, extra)).expect("write config");
        Self::spawn(bin, data, &config)
    }

    /// Start a daemon with an existing config file; waits until it listens.
    pub fn spawn(bin: &Path, data: &Path, config: &Path) -> Self {
        Self::spawn_with(bin, data, config, "warn", None, &[])
    }

    /// Like [`DaemonProcess::start`], with `env` added to the daemon's
    /// environment (e.g. `SOMA_PASSWORD` for a `[market] key`).
    pub fn start_with_env(
        bin: &Path,
        data: &Path,
        daemon_keys: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let config = data.join("soma.toml");
        std::fs::write(&config, config_text(daemon_keys, extra)).expect("write config");
        Self::spawn_with(bin, data, &config, "warn", None, env)
    }

    /// Start a daemon with `SOMA_LOG=filter` and no colours; its log goes
    /// to `capture` if given (every line kept), else to this process's
    /// stderr.
    fn spawn_with(
        bin: &Path,
        data: &Path,
        config: &Path,
        filter: &str,
        capture: Option<&mut LogCapture>,
        env: &[(&str, &str)],
    ) -> Self {
        let mut start = harness::Start::default()
            .env("SOMA_LOG", filter)
            .env("NO_COLOR", "1");
        for (key, value) in env {
            start = start.env(key, value);
        }
        start.deadline = Duration::from_secs(60);
        match capture {
            Some(_) => start.keep_lines = usize::MAX,
            None => start.echo = Some("daemon: ".into()),
        }
        let daemon =
            harness::Daemon::start(bin, data, config, &start).unwrap_or_else(|e| panic!("{e}"));
        if let Some(capture) = capture {
            *capture = LogCapture(daemon.log().clone());
        }
        Self {
            url: daemon.url().to_owned(),
            daemon,
            data: data.to_owned(),
            config: config.to_owned(),
            bin: bin.to_owned(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// `host:port` of the listener.
    pub fn addr(&self) -> String {
        self.daemon.addr().to_owned()
    }

    /// The `soma` binary it runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// What the process holds right now, from `/proc`.
    pub fn usage(&self) -> ProcessUsage {
        ProcessUsage::of(self.pid())
    }

    /// SIGKILL; returns (data, config) for a restart.
    pub fn kill9(mut self) -> (PathBuf, PathBuf) {
        self.daemon.kill();
        (self.data.clone(), self.config.clone())
    }

    /// SIGTERM and wait: a graceful stop (SIGKILL only after 10 minutes).
    pub fn stop(mut self) -> std::process::ExitStatus {
        let stopped = self
            .daemon
            .stop(Duration::from_secs(600))
            .unwrap_or_else(|e| panic!("{e}"));
        stopped.status
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.daemon.is_running()
    }

    /// A request; `(status, JSON body or the text as a string, headers)`.
    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        request(&client(), &self.url, method, path, token, body)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let (s, v, _) = self.request(
            reqwest::Method::POST,
            path,
            Some(token),
            Some(body.to_string()),
        );
        (s, v)
    }

    /// `GET path`.
    pub fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let (s, v, _) = self.request(reqwest::Method::GET, path, Some(token), None);
        (s, v)
    }

    /// Poll `GET /v1/runs/{run}` until it has finished (or panic after
    /// `deadline`).
    pub fn wait_finished(&self, token: &str, run: &str, deadline: Duration) -> Value {
        let start = Instant::now();
        loop {
            let (s, v) = self.get(&format!("/v1/runs/{run}"), token);
            assert_eq!(s, 200, "{v}");
            if ["succeeded", "failed", "cancelled"].contains(&v["status"].as_str().unwrap_or("")) {
                return v;
            }
            assert!(start.elapsed() < deadline, "run {run} did not finish: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A blocking client with a 30 s timeout.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// One request with `client`.
pub fn request(
    client: &reqwest::blocking::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().expect("body");
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value, headers)
}

/// What a process holds, read from `/proc/PID/status` and `/proc/PID/fd`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessUsage {
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// Peak resident set, KiB.
    pub hwm_kib: u64,
    /// Threads.
    pub threads: u64,
    /// Open file descriptors.
    pub fds: u64,
}

impl ProcessUsage {
    /// Read `pid`'s usage (zeros if the process is gone).
    pub fn of(pid: u32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
        Self {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
            threads: field("Threads:"),
            fds,
        }
    }
}

/// Another tenant's ordinary traffic, timed: echo calls in a loop on their
/// own connection until stopped.
#[derive(Debug)]
pub struct Bystander {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Latencies>>,
}

/// Latencies of a bystander's calls and how many failed.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// Successful calls, each one's round trip.
    pub ok: Vec<Duration>,
    /// Failed calls: (status, body).
    pub failed: Vec<(u16, String)>,
}

impl Latencies {
    /// The `q` quantile (0..=1) of the successful calls.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut v = self.ok.clone();
        v.sort();
        if v.is_empty() {
            return Duration::MAX;
        }
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        v[i.min(v.len() - 1)]
    }

    /// The median.
    pub fn median(&self) -> Duration {
        self.quantile(0.5)
    }
}

/// `n` echo calls by `token`, timed, one after another.
pub fn time_calls(url: &str, token: &str, n: usize) -> Latencies {
    let client = client();
    let mut out = Latencies::default();
    for k in 0..n {
        one_call(&client, url, token, k, &mut out);
    }
    out
}

fn one_call(
    client: &reqwest::blocking::Client,
    url: &str,
    token: &str,
    k: usize,
    out: &mut Latencies,
) {
    let body = serde_json::json!({"capsule": "echo", "input": {"k": k}}).to_string();
    let start = Instant::now();
    let result = client
        .post(format!("{url}/v1/runs"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send();
    match result {
        Ok(r) if r.status().is_success() => {
            let _ = r.bytes();
            out.ok.push(start.elapsed());
        }
        Ok(r) => {
            let status = r.status().as_u16();
            out.failed.push((status, r.text().unwrap_or_default()));
        }
        Err(e) => out.failed.push((0, e.to_string())),
    }
}

impl Bystander {
    /// Start calling echo as `token` every `pause` until [`Bystander::finish`].
    pub fn start(url: &str, token: &str, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (url, token, flag) = (url.to_owned(), token.to_owned(), stop.clone());
        let handle = std::thread::spawn(move || {
            let client = client();
            let mut out = Latencies::default();
            let mut k = 0;
            while !flag.load(Ordering::SeqCst) {
                one_call(&client, &url, &token, k, &mut out);
                k += 1;
                std::thread::sleep(pause);
            }
            out
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Stop and return what was measured.
    pub fn finish(mut self) -> Latencies {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Assert that a bystander measured during an attack kept working: no
/// failures, and its median within `factor` × the idle median (with a
/// 5 ms floor on the idle figure: on a 2-core machine an attacker that is
/// *allowed* to burn one core — a fuel-limited loop — legitimately adds a
/// few milliseconds of scheduling delay; starvation, what these tests look
/// for, shows up as hundreds of milliseconds or failed calls).
pub fn assert_unharmed(idle: &Latencies, during: &Latencies, factor: f64) {
    assert!(
        during.failed.is_empty(),
        "the other tenant's calls failed during the attack: {:?}",
        &during.failed[..during.failed.len().min(5)]
    );
    assert!(
        !during.ok.is_empty(),
        "the other tenant made no call during the attack"
    );
    let base = idle.median().max(Duration::from_millis(5));
    let seen = during.median();
    assert!(
        seen.as_secs_f64() <= base.as_secs_f64() * factor,
        "the other tenant's median latency went from {:?} (idle) to {:?} during the attack (> {factor}×)",
        idle.median(),
        seen
    );
}

// ----- sandbox: a daemon whose log the test reads (appended by the sandbox slice) -----

/// The daemon's stderr (its log), line by line, as it is written.
#[derive(Debug, Clone, Default)]
pub struct LogCapture(harness::Log);

impl LogCapture {
    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lines()
    }

    /// Poll until a line satisfies `pred` (or panic after `deadline`).
    pub fn wait_for(&self, deadline: Duration, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                start.elapsed() < deadline,
                "no such line in the daemon's log within {deadline:?}; log:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl DaemonProcess {
    /// Like [`DaemonProcess::start`], with `SOMA_LOG=filter`, no colours,
    /// and the daemon's log kept for the test to read.
    pub fn start_logged(
        bin: &Path,
        data: &Path,
        daemon_keys: &str,
        extra: &str,
        filter: &str,
    ) -> (Self, LogCapture) {
        let config = data.join("soma.toml");
        std::fs::write(&config, config_text(daemon_keys, extra)).expect("write config");
        let mut capture = LogCapture::default();
        let daemon = Self::spawn_with(bin, data, &config, filter, Some(&mut capture), &[]);
        (daemon, capture)
    }
}
