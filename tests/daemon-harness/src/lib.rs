//! One way to run a real `soma daemon` for a test or a load run: start it
//! with a config over a data directory, read its log until it prints
//! `soma daemon listening on URL` (it was told to listen on port 0, so the
//! line is the only way to learn the port), and stop it — SIGTERM, then
//! SIGKILL after a deadline — or kill it on drop.
//!
//! Used by `soma-tests` (the daemon and attack tests), the Prometheus test
//! and `cargo xtask load`. Deliberately std + `serde_json` + `libc` only, so
//! xtask stays quick to build; request helpers live with their users
//! (`soma-tests` uses reqwest, xtask a bare hyper client).

pub mod temporal;

use std::{
    collections::VecDeque,
    ffi::OsString,
    fmt,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

/// The line `soma daemon` prints on stderr once it accepts connections.
pub const LISTENING: &str = "soma daemon listening on ";

/// `soma --data DATA`, with no ambient configuration (`SOMA_CONFIG` removed).
pub fn soma(bin: &Path, data: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("--data").arg(data).env_remove("SOMA_CONFIG");
    c
}

/// Create an API token with `soma token create --json` (the daemon must not
/// be running on `data`: it owns the database). Blocks on a child process.
pub fn create_token(bin: &Path, data: &Path, tenant: &str, scopes: &str) -> Result<String, Error> {
    let mut cmd = soma(bin, data);
    cmd.args([
        "token", "create", "--tenant", tenant, "--scopes", scopes, "--json",
    ])
    .stdin(Stdio::null());
    let out = retry_busy(|| cmd.output()).map_err(|source| Error::Spawn {
        what: "soma token create",
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Token(format!(
            "exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Token(format!("printed something other than JSON: {e}")))?;
    doc["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::Token("printed no \"token\"".into()))
}

/// Runs `start` again while the OS says the executable is busy (`ETXTBSY`).
/// A program written just before it runs (a test's fake `soma`) can still
/// be open for writing in a child another thread forked in the meantime
/// (until that child execs); the condition clears within milliseconds.
fn retry_busy<T>(mut start: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    let mut wait = Duration::from_millis(2);
    for _ in 0..8 {
        match start() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(wait);
                wait *= 2;
            }
            other => return other,
        }
    }
    start()
}

/// How to start the daemon and what to do with its log.
#[derive(Debug, Clone)]
pub struct Start {
    /// Extra environment (e.g. `SOMA_LOG=warn`).
    pub env: Vec<(OsString, OsString)>,
    /// Echo each log line to this process's stderr with this prefix
    /// (`None`: keep it quiet). The listening line is not echoed.
    pub echo: Option<String>,
    /// Log lines kept for [`Daemon::log`] (the newest; older ones dropped).
    pub keep_lines: usize,
    /// How long the daemon may take to listen (its first start compiles the
    /// catalog's capsules).
    pub deadline: Duration,
}

impl Default for Start {
    fn default() -> Self {
        Self {
            env: Vec::new(),
            echo: None,
            keep_lines: 200,
            deadline: Duration::from_secs(120),
        }
    }
}

impl Start {
    /// Add `key=value` to the daemon's environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// The daemon's log (stderr), line by line as it is written; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<VecDeque<String>>>);

impl Log {
    /// The lines kept so far.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The lines kept so far, indented, one per line (for error messages).
    pub fn text(&self) -> String {
        self.lines().iter().map(|l| format!("  {l}\n")).collect()
    }

    fn push(&self, line: String, keep: usize) {
        if let Ok(mut l) = self.0.lock() {
            if l.len() >= keep {
                l.pop_front();
            }
            if keep > 0 {
                l.push_back(line);
            }
        }
    }
}

/// A running `soma daemon`; killed (SIGKILL) if dropped while running.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    url: String,
    log: Log,
}

/// How the daemon stopped.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    /// From the signal to its exit.
    pub after: Duration,
    /// Its exit status.
    pub status: ExitStatus,
    /// Whether it exited on SIGTERM (not SIGKILL after the deadline).
    pub graceful: bool,
}

impl Daemon {
    /// `soma --config CONFIG --data DATA daemon`: start it and wait (up to
    /// `start.deadline`) until it prints where it listens. Blocks the
    /// calling thread; a thread per daemon reads its log until it exits.
    pub fn start(bin: &Path, data: &Path, config: &Path, start: &Start) -> Result<Self, Error> {
        let mut cmd = soma(bin, data);
        cmd.arg("--config")
            .arg(config)
            .arg("daemon")
            .envs(start.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = retry_busy(|| cmd.spawn()).map_err(|source| Error::Spawn {
            what: "soma daemon",
            source,
        })?;
        let log = Log::default();
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Exited {
                status: None,
                log: String::new(),
            });
        };
        let (tx, rx) = mpsc::channel();
        {
            let (log, echo, keep) = (log.clone(), start.echo.clone(), start.keep_lines);
            std::thread::spawn(move || {
                // Reads until the daemon closes stderr, so a chatty daemon
                // never blocks on a full pipe.
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let listening = line.split(LISTENING).nth(1).map(str::trim);
                    if let Some(url) = listening
                        && let Some(tx) = tx.take()
                    {
                        let _ = tx.send(url.to_owned());
                    }
                    if let Some(prefix) = &echo
                        && listening.is_none()
                    {
                        eprintln!("{prefix}{line}");
                    }
                    log.push(line, keep);
                }
            });
        }
        let mut daemon = Self {
            child,
            url: String::new(),
            log,
        };
        let started = Instant::now();
        daemon.url = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(url) => break url,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = daemon.child.wait().ok();
                    return Err(Error::Exited {
                        status,
                        log: daemon.log.text(),
                    });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = daemon.child.try_wait() {
                        return Err(Error::Exited {
                            status: Some(status),
                            log: daemon.log.text(),
                        });
                    }
                    if started.elapsed() > start.deadline {
                        return Err(Error::NotListening {
                            deadline: start.deadline,
                            log: daemon.log.text(),
                        });
                    }
                }
            }
        };
        Ok(daemon)
    }

    /// `http://127.0.0.1:PORT` (or `https://…`), as the daemon printed it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `127.0.0.1:PORT`: the URL without its scheme.
    pub fn addr(&self) -> &str {
        self.url.split_once("://").map_or(&self.url, |(_, a)| a)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far (and as it grows).
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then wait up to `deadline` for a graceful exit; SIGKILL
    /// after it. Polls every 20 ms.
    pub fn stop(&mut self, deadline: Duration) -> Result<Stopped, Error> {
        let start = Instant::now();
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: signalling our own child, which has not been reaped
            // (the `Child` still owns it).
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        loop {
            if let Some(status) = self.child.try_wait().map_err(Error::Wait)? {
                return Ok(Stopped {
                    after: start.elapsed(),
                    status,
                    graceful: true,
                });
            }
            if start.elapsed() > deadline {
                let _ = self.child.kill();
                let status = self.child.wait().map_err(Error::Wait)?;
                return Ok(Stopped {
                    after: start.elapsed(),
                    status,
                    graceful: false,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap: an abrupt stop (a crash test).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why the daemon (or `soma token create`) did not do what was asked.
#[derive(Debug)]
pub enum Error {
    /// The process could not be started.
    Spawn {
        /// Which command.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The daemon exited before it listened.
    Exited {
        /// Its exit status, if it could be read.
        status: Option<ExitStatus>,
        /// The last lines of its log.
        log: String,
    },
    /// The daemon printed no listening line in time.
    NotListening {
        /// How long it had.
        deadline: Duration,
        /// The last lines of its log.
        log: String,
    },
    /// Waiting for the process failed.
    Wait(std::io::Error),
    /// `soma token create` failed.
    Token(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spawn { what, .. } => write!(f, "cannot start {what}"),
            Self::Exited {
                status: Some(s),
                log,
            } => write!(f, "soma daemon exited ({s}) before listening:\n{log}"),
            Self::Exited { status: None, log } => {
                write!(f, "soma daemon exited before listening:\n{log}")
            }
            Self::NotListening { deadline, log } => write!(
                f,
                "soma daemon printed no \"listening on\" line within {deadline:?}:\n{log}"
            ),
            Self::Wait(_) => write!(f, "waiting for soma daemon"),
            Self::Token(m) => write!(f, "soma token create: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Spawn { source, .. } | Self::Wait(source) => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A fake `soma` (a shell script) that prints what the real one does.
    fn fake_soma(dir: &Path, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("soma");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "soma-daemon-harness-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn waits_for_the_listening_line_then_stops_gracefully() {
        let dir = tempdir();
        let bin = fake_soma(
            &dir,
            // The trap first: the harness may send SIGTERM as soon as it
            // reads the listening line.
            "trap 'echo bye >&2; exit 0' TERM; echo starting >&2; \
             echo 'soma daemon listening on http://127.0.0.1:4242' >&2; \
             while true; do sleep 0.05; done",
        );
        let start = Start {
            keep_lines: 1,
            ..Start::default()
        };
        let mut d = Daemon::start(&bin, &dir, &dir.join("soma.toml"), &start).expect("start");
        assert_eq!(d.url(), "http://127.0.0.1:4242");
        assert_eq!(d.addr(), "127.0.0.1:4242");
        assert!(d.is_running());
        let stopped = d.stop(Duration::from_secs(10)).expect("stop");
        assert!(stopped.graceful && stopped.status.success(), "{stopped:?}");
        // Only the newest line is kept.
        assert_eq!(d.log().lines(), ["bye"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_early_exit_or_silence_is_an_error_with_the_log() {
        let dir = tempdir();
        let bin = fake_soma(&dir, "echo 'config: bad key' >&2; exit 3");
        let e = Daemon::start(&bin, &dir, &dir.join("soma.toml"), &Start::default())
            .expect_err("exits");
        let text = e.to_string();
        assert!(
            text.contains("exited") && text.contains("config: bad key"),
            "{text}"
        );

        let bin = fake_soma(&dir, "echo 'still thinking' >&2; exec sleep 30");
        let start = Start {
            deadline: Duration::from_millis(300),
            ..Start::default()
        };
        let e = Daemon::start(&bin, &dir, &dir.join("soma.toml"), &start).expect_err("silent");
        let text = e.to_string();
        assert!(
            text.contains("no \"listening on\" line") && text.contains("still thinking"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_daemon_ignoring_sigterm_is_killed_after_the_deadline() {
        let dir = tempdir();
        let bin = fake_soma(
            &dir,
            "trap '' TERM; echo 'soma daemon listening on http://127.0.0.1:1' >&2; \
             while true; do sleep 0.05; done",
        );
        let mut d =
            Daemon::start(&bin, &dir, &dir.join("soma.toml"), &Start::default()).expect("start");
        let stopped = d.stop(Duration::from_millis(200)).expect("stop");
        assert!(!stopped.graceful, "{stopped:?}");
        assert!(!d.is_running());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn token_create_reads_the_json_and_reports_failures() {
        let dir = tempdir();
        let bin = fake_soma(&dir, r#"echo '{"token":"soma_abc","tenant":"t"}'"#);
        assert_eq!(
            create_token(&bin, &dir, "t", "run").expect("token"),
            "soma_abc"
        );
        let bin = fake_soma(&dir, "echo 'data dir is locked' >&2; exit 1");
        let e = create_token(&bin, &dir, "t", "run").expect_err("fails");
        assert!(e.to_string().contains("data dir is locked"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
