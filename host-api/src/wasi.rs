//! WASI p2 with no ambient authority.
//!
//! A call's [`WasiCtx`] has no environment variables, no arguments, no
//! network, stdin closed, stdout/stderr captured into capped buffers, and only
//! the directories its [`Grants`](crate::Grants) name, read-only unless the
//! grant says otherwise.

use std::{
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use serde::{Deserialize, Serialize};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{
    FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
    cli::{IsTerminal, StdoutStream},
};
use wasmtime_wasi_io::{
    bytes::Bytes,
    poll::Pollable,
    streams::{OutputStream, StreamResult},
};

/// Operator settings (`[wasi]` in `soma.toml`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Bytes of stdout kept per call; the rest is counted and dropped.
    pub max_stdout_bytes: usize,
    /// Bytes of stderr kept per call; the rest is counted and dropped.
    pub max_stderr_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_stdout_bytes: 64 * 1024,
            max_stderr_bytes: 64 * 1024,
        }
    }
}

/// A host directory made visible to the capsule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// Directory on the host.
    pub host: PathBuf,
    /// Path the capsule sees, e.g. `/data`.
    pub guest: String,
    /// Whether the capsule may create, write and delete files there.
    pub writable: bool,
}

impl std::str::FromStr for DirGrant {
    type Err = String;

    /// Parse `HOST::GUEST[:ro|:rw]` (read-only unless `:rw`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, rest) = s
            .split_once("::")
            .ok_or_else(|| format!("{s:?}: expected HOST::GUEST[:ro|:rw]"))?;
        let (guest, writable) = match rest.rsplit_once(':') {
            Some((g, "rw")) => (g, true),
            Some((g, "ro")) => (g, false),
            _ => (rest, false),
        };
        if host.is_empty() || guest.is_empty() {
            return Err(format!("{s:?}: host and guest paths must not be empty"));
        }
        Ok(Self {
            host: PathBuf::from(host),
            guest: guest.to_owned(),
            writable,
        })
    }
}

/// A stdout/stderr sink that keeps the first `capacity` bytes and counts the
/// rest. Unlike `MemoryOutputPipe` it never fails a write, so a chatty capsule
/// is truncated rather than crashed.
#[derive(Debug, Clone)]
pub struct CapturedOutput {
    inner: Arc<Mutex<Captured>>,
}

#[derive(Debug, Default)]
struct Captured {
    capacity: usize,
    bytes: Vec<u8>,
    dropped: u64,
}

impl CapturedOutput {
    /// A sink keeping at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Captured {
                capacity,
                ..Captured::default()
            })),
        }
    }

    fn push(&self, data: &[u8]) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = c.capacity - c.bytes.len();
        let take = room.min(data.len());
        c.bytes.extend_from_slice(&data[..take]);
        c.dropped += (data.len() - take) as u64;
    }

    /// The kept text (lossy UTF-8) and the number of bytes dropped.
    pub fn take(&self) -> (String, u64) {
        let mut c = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = std::mem::take(&mut c.bytes);
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        (text, std::mem::take(&mut c.dropped))
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi_io::async_trait]
impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi_io::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Why a call's WASI context could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot preopen {host} as {guest}: {message}")]
pub struct PreopenError {
    /// Host directory.
    pub host: PathBuf,
    /// Guest path.
    pub guest: String,
    /// What went wrong.
    pub message: String,
}

/// Per-call WASI state.
pub struct State {
    ctx: WasiCtx,
    table: ResourceTable,
    stdout: CapturedOutput,
    stderr: CapturedOutput,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("wasi::State").finish_non_exhaustive()
    }
}

impl State {
    /// Build the call's context: captured stdio and the granted directories.
    ///
    /// Cost: a few small allocations; one `open` per granted directory.
    pub fn new(config: &Config, dirs: &[DirGrant]) -> Result<Self, PreopenError> {
        let stdout = CapturedOutput::new(config.max_stdout_bytes);
        let stderr = CapturedOutput::new(config.max_stderr_bytes);
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for d in dirs {
            let perms = if d.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            builder
                .preopened_dir(&d.host, &d.guest, perms)
                .map_err(|e| PreopenError {
                    host: d.host.clone(),
                    guest: d.guest.clone(),
                    message: e.to_string(),
                })?;
        }
        Ok(Self {
            ctx: builder.build(),
            table: ResourceTable::new(),
            stdout,
            stderr,
        })
    }

    /// Captured stdout and stderr, each with its dropped-byte count.
    pub fn finish(&self) -> ((String, u64), (String, u64)) {
        (self.stdout.take(), self.stderr.take())
    }

    /// The call's resource table (shared with wasi:http, whose streams and
    /// pollables are WASI's).
    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    /// The view wasmtime-wasi's host functions use.
    pub fn view(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// WASI as a capability: stdio capture for every call, and the directories
/// a capsule asks for with the request `dir` (guest paths as arguments),
/// preopened only when the caller offers them ([`Wasi::offer`]).
#[derive(Debug, Clone, Copy)]
pub struct Wasi;

impl Wasi {
    /// The caller's offer of `dirs`, checked against the capsule's wants:
    /// every guest path must be one it asked for. Once per run.
    pub fn offer(wants: &[String], dirs: Vec<DirGrant>) -> Result<Vec<DirGrant>, String> {
        if let Some(d) = dirs.iter().find(|d| !wants.contains(&d.guest)) {
            return Err(format!(
                "directory {} was offered, but the capsule asks only for {wants:?}",
                d.guest
            ));
        }
        Ok(dirs)
    }
}

impl crate::capability::Capability for Wasi {
    const NAME: &'static str = "dir";
    const INTERFACES: &'static [&'static str] = &[];
    type Config = Config;
    type ConfigError = std::convert::Infallible;
    /// Directories are offered per call by the caller (`soma run --dir`),
    /// not by a policy.
    type Policy = ();
    type Shared = Config;
    /// Guest paths asked for.
    type Wants = Vec<String>;
    /// Directories granted (see [`Wasi::offer`]).
    type Grant = Vec<DirGrant>;
    type State = State;
    type PrepareError = PreopenError;
    type CommitError = std::convert::Infallible;
    /// Captured stdout and stderr.
    type Report = (String, String);

    fn check_allow(_allow: &crate::capability::Allow) -> Result<(), crate::capability::AllowError> {
        Err(crate::capability::AllowError::Fixed {
            name: Self::NAME,
            why: "directories are offered per call by its caller (`soma run --dir`); \
                  a DAG node is offered none",
        })
    }

    fn check(_config: &Config) -> Result<(), std::convert::Infallible> {
        Ok(())
    }

    fn shared(config: &Config, _engine: &crate::capability::EngineContext) -> Config {
        *config
    }

    fn want(wants: &mut Vec<String>, args: &[String]) {
        for path in args {
            if !wants.contains(path) {
                wants.push(path.clone());
            }
        }
    }

    fn describe_wants(wants: &Vec<String>, out: &mut Vec<String>) {
        out.extend(wants.iter().map(|d| format!("{}:{d}", Self::NAME)));
    }

    /// Nothing until the caller offers directories.
    fn grant(
        _wants: &Vec<String>,
        _policy: &(),
        _scope: &crate::capability::GrantScope<'_>,
    ) -> Vec<DirGrant> {
        Vec::new()
    }

    /// One `open` per granted directory.
    fn prepare(
        config: &Config,
        grant: &Vec<DirGrant>,
        _call: &crate::capability::CallContext<'_>,
    ) -> Result<State, PreopenError> {
        State::new(config, grant)
    }

    fn finish(state: State) -> (String, String) {
        let ((stdout, _), (stderr, _)) = state.finish();
        (stdout, stderr)
    }
}

/// Wire WASI p2 (sync) into `linker`. Once per engine.
pub fn add_to_linker<T: WasiView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)
}

/// Wire WASI p2 (async: instances must be driven by wasmtime's `*_async`
/// calls on a tokio runtime) into `linker`. Once per engine.
pub fn add_to_linker_async<T: WasiView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_grant_parses_modes() {
        let g: DirGrant = "/tmp/x::/data".parse().expect("parse");
        assert_eq!((g.guest.as_str(), g.writable), ("/data", false));
        let g: DirGrant = "/tmp/x::/data:rw".parse().expect("parse");
        assert_eq!((g.guest.as_str(), g.writable), ("/data", true));
        assert!("/tmp/x".parse::<DirGrant>().is_err());
        assert!("::/data".parse::<DirGrant>().is_err());
    }

    #[test]
    fn captured_output_truncates_and_counts() {
        let out = CapturedOutput::new(4);
        out.push(b"hello");
        out.push(b"!");
        assert_eq!(out.take(), ("hell".to_owned(), 2));
    }
}
