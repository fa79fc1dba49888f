//! A real Prometheus for tests: Debian's `prometheus` (2.x) on a free
//! loopback port, scraping one target every second into a temporary TSDB,
//! killed (and its storage removed) on drop. `cargo xtask test` installs it.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Where Debian installs the Prometheus server.
pub const BINARY: &str = "/usr/bin/prometheus";

/// The scrape job name of the target (`up{job="soma"}`).
pub const JOB: &str = "soma";

/// How long Prometheus may take to answer `GET /-/ready` after starting.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running Prometheus. Killed on drop.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    base: String,
    client: reqwest::blocking::Client,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Start Prometheus scraping `http://<target>/metrics` (`target` is
    /// `host:port`) every second, without authentication. Panics (with its
    /// log) if it is not ready within 30 s.
    pub fn start(target: &str) -> Self {
        Self::start_with_path(target, "/metrics")
    }

    /// [`Prometheus::start`] with another metrics path.
    pub fn start_with_path(target: &str, metrics_path: &str) -> Self {
        Self::start_scraping(target, metrics_path, None)
    }

    /// [`Prometheus::start`], scraping with `Authorization: Bearer <token>`
    /// (the daemon's `/metrics` needs an `operator` or `metrics` token).
    pub fn start_with_bearer(target: &str, token: &str) -> Self {
        Self::start_scraping(target, "/metrics", Some(token))
    }

    fn start_scraping(target: &str, metrics_path: &str, bearer: Option<&str>) -> Self {
        assert!(
            Path::new(BINARY).exists(),
            "{BINARY} is missing: run `cargo xtask test` (it installs Debian's `prometheus`) or `apt-get install prometheus`"
        );
        let dir = tempfile::tempdir().expect("prometheus tempdir");
        let port = crate::registry::free_port();
        let listen = format!("127.0.0.1:{port}");
        let authorization = bearer.map_or_else(String::new, |token| {
            format!("    authorization:\n      type: Bearer\n      credentials: '{token}'\n")
        });
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: {JOB}\n    metrics_path: {metrics_path}\n{authorization}    \
             static_configs:\n      - targets: ['{target}']\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("prometheus config");
        let storage = dir.path().join("data");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(BINARY)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", storage.display()))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--storage.tsdb.retention.time=1h")
            .arg("--log.level=warn")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let mut prometheus = Self {
            child,
            base: format!("http://{listen}"),
            client,
            dir,
        };
        prometheus.wait_ready();
        prometheus
    }

    /// Poll `GET /-/ready` until 200, the process exits, or the deadline.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        let mut pause = Duration::from_millis(10);
        loop {
            let ready = self
                .client
                .get(format!("{}/-/ready", self.base))
                .send()
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready within {START_DEADLINE:?}: {}",
                self.log()
            );
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// What Prometheus logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query (`GET /api/v1/query`): the whole JSON answer,
    /// `{"status": "success", "data": {"resultType", "result"}}` or
    /// `{"status": "error", "errorType", "error"}` (a bad query is not a panic).
    /// Panics only if Prometheus does not answer JSON.
    pub fn query(&self, promql: &str) -> Value {
        self.api("query", &[("query", promql)])
    }

    /// `GET /api/v1/<endpoint>` with query parameters; the JSON answer.
    pub fn api(&self, endpoint: &str, params: &[(&str, &str)]) -> Value {
        let response = self
            .client
            .get(format!("{}/api/v1/{endpoint}", self.base))
            .query(params)
            .send()
            .unwrap_or_else(|e| panic!("prometheus /api/v1/{endpoint}: {e}\n{}", self.log()));
        let status = response.status();
        let body = response.text().unwrap_or_default();
        serde_json::from_str(&body).unwrap_or_else(|e| {
            panic!("prometheus /api/v1/{endpoint} answered {status} with no JSON ({e}): {body}")
        })
    }

    /// The value of the first sample of an instant vector or scalar query,
    /// if it has one.
    pub fn value(&self, promql: &str) -> Option<f64> {
        let answer = self.query(promql);
        let data = &answer["data"];
        let pair = match data["resultType"].as_str() {
            Some("vector") => &data["result"][0]["value"],
            Some("scalar") => &data["result"],
            _ => return None,
        };
        pair[1].as_str().and_then(|v| v.parse().ok())
    }

    /// Poll `promql` (every 200 ms) until its first sample satisfies
    /// `done`, or panic after `timeout` with the last answer, the scrape
    /// targets' state and the log. Returns the value that satisfied it.
    pub fn wait_for(&self, promql: &str, timeout: Duration, done: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.value(promql)
                && done(v)
            {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "`{promql}` did not reach the expected value within {timeout:?}\nlast answer: {}\ntargets: {}\nlog: {}",
                    self.query(promql),
                    self.api("targets", &[]),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
