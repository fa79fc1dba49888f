//! `log`: structured log lines from capsules, forwarded to `tracing` with the
//! capsule and run as fields and kept with the call's outcome.
//!
//! Lines are capped in size ([`Config::max_line_bytes`]) and per call
//! ([`Config::max_call_bytes`]); lines past the call cap are counted and
//! dropped, never an error to the capsule.

use serde::{Deserialize, Serialize};
use wasmtime::component::{HasSelf, Linker};

use crate::{
    CallIdentity,
    bindings::soma::capsule::log::{self as wit, Level},
};

/// Operator settings (`[log]` in `soma.toml`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Longest message kept, in bytes; longer ones are truncated.
    pub max_line_bytes: usize,
    /// Total bytes of log lines kept per call; later lines are dropped.
    pub max_call_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_line_bytes: 4 * 1024,
            max_call_bytes: 64 * 1024,
        }
    }
}

/// One kept log line.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Severity.
    pub level: &'static str,
    /// The (possibly truncated) message.
    pub message: String,
    /// Key/value fields.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, String)>,
}

/// Per-call log state. Built once per call; allocation-free until the
/// capsule logs.
#[derive(Debug)]
pub struct State {
    config: Config,
    identity: CallIdentity,
    lines: Vec<LogLine>,
    bytes: usize,
    dropped: u32,
}

impl State {
    /// Fresh state for one call.
    pub fn new(config: Config, identity: CallIdentity) -> Self {
        Self {
            config,
            identity,
            lines: Vec::new(),
            bytes: 0,
            dropped: 0,
        }
    }

    /// The kept lines and the number dropped past the cap.
    pub fn finish(self) -> (Vec<LogLine>, u32) {
        (self.lines, self.dropped)
    }
}

/// Store data that hands out the per-call log state.
pub trait LogView {
    /// The call's log state.
    fn log_state(&mut self) -> &mut State;
}

/// Wire `soma:capsule/log` into `linker`. Once per engine.
pub fn add_to_linker<T: LogView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<State>>(linker, |t| t.log_state())
}

/// Truncate `s` to at most `max` bytes on a char boundary.
pub(crate) fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

impl wit::Host for State {
    fn log(&mut self, level: Level, mut message: String, mut fields: Vec<(String, String)>) {
        truncate(&mut message, self.config.max_line_bytes);
        for (k, v) in &mut fields {
            truncate(k, self.config.max_line_bytes);
            truncate(v, self.config.max_line_bytes);
        }
        let size = message.len() + fields.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        if self.bytes + size > self.config.max_call_bytes {
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        self.bytes += size;
        let (capsule, run) = (&*self.identity.capsule, &*self.identity.run);
        macro_rules! emit {
            ($lvl:expr) => {
                tracing::event!(target: "soma::capsule", $lvl, capsule, run, fields = ?fields, "{message}")
            };
        }
        match level {
            Level::Trace => emit!(tracing::Level::TRACE),
            Level::Debug => emit!(tracing::Level::DEBUG),
            Level::Info => emit!(tracing::Level::INFO),
            Level::Warn => emit!(tracing::Level::WARN),
            Level::Error => emit!(tracing::Level::ERROR),
        }
        self.lines.push(LogLine {
            level: level_name(level),
            message,
            fields,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wit::Host as _;

    fn state(max_line: usize, max_call: usize) -> State {
        State::new(
            Config {
                max_line_bytes: max_line,
                max_call_bytes: max_call,
            },
            CallIdentity {
                capsule: "t".into(),
                run: "r".into(),
            },
        )
    }

    #[test]
    fn truncates_on_char_boundary() {
        let mut s = "héllo".to_owned();
        truncate(&mut s, 2);
        assert_eq!(s, "h");
    }

    #[test]
    fn lines_past_the_call_cap_are_dropped_and_counted() {
        let mut st = state(8, 20);
        for _ in 0..5 {
            st.log(Level::Info, "0123456789".into(), vec![]);
        }
        let (lines, dropped) = st.finish();
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.message == "01234567"));
        assert_eq!(dropped, 3);
    }
}
