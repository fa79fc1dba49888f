//! The daemon's own log as an operator's tools see it: redirected to a
//! pipe (a file, journald), it must be plain text — no ANSI colour codes —
//! whatever the environment, unless stderr is a terminal.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

#[test]
fn the_daemon_log_on_a_pipe_has_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    // An `admin` token and no `operator` one: the daemon warns at start.
    soma_tests::daemon::token(
        Path::new(env!("CARGO_BIN_EXE_soma")),
        dir.path(),
        "acme",
        "admin",
    );
    let config = dir.path().join("soma.toml");
    std::fs::write(&config, soma_tests::daemon::config_text("", "")).expect("config");
    let mut child = Command::new(Path::new(env!("CARGO_BIN_EXE_soma")))
        .arg("--config")
        .arg(&config)
        .arg("--data")
        .arg(dir.path())
        .arg("daemon")
        .env("SOMA_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("SOMA_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn daemon");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Every line up to a second after it says it listens (its start-up
    // notices, at info).
    let mut listening: Option<Instant> = None;
    while Instant::now() < deadline
        && listening.is_none_or(|t| t.elapsed() < Duration::from_secs(1))
    {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            if line.contains("listening on") {
                listening.get_or_insert_with(Instant::now);
            }
            lines.push(line);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening.is_some(), "the daemon did not start: {lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("WARN")),
        "no log line to look at: {lines:?}"
    );
    for line in &lines {
        assert!(
            !line.contains('\u{1b}'),
            "an ANSI escape in the daemon's piped log: {line:?}"
        );
    }
}
