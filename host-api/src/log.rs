//! `log`: structured log lines from capsules, forwarded to `tracing` with the
//! capsule and run as fields and kept with the call's outcome.
//!
//! Lines are capped in size ([`Config::max_line_bytes`]) and per call
//! ([`Config::max_call_bytes`]); lines past the call cap are counted and
//! dropped, never an error to the capsule.
//!
//! What a capsule logs is untrusted text: on its way into the host's log it
//! is [`escape`]d (a newline, CR or terminal escape sequence cannot forge a
//! host log line or drive the operator's terminal), it goes out under the
//! target `soma::capsule` with the capsule's own level as a field, and at
//! most at [`Config::max_level`] (a capsule's `error` is not a host error
//! unless the operator allows it).

use std::borrow::Cow;

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
    /// The highest level a capsule's line reaches the host log at: lines
    /// above it (more severe) are logged at this level, with the capsule's
    /// own level in the `capsule_level` field. Default `info`, so a
    /// capsule cannot raise host warnings or errors; `error` trusts
    /// capsules' levels. The call's outcome keeps the capsule's level.
    pub max_level: MaxLevel,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_line_bytes: 4 * 1024,
            max_call_bytes: 64 * 1024,
            max_level: MaxLevel::Info,
        }
    }
}

/// A level ceiling for capsule log lines (`[log] max_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MaxLevel {
    /// Capsule lines reach the host log at `trace` at most.
    Trace,
    /// … at `debug` at most.
    Debug,
    /// … at `info` at most (the default).
    Info,
    /// … at `warn` at most.
    Warn,
    /// Capsule levels are taken as they are.
    Error,
}

impl MaxLevel {
    /// `level` capped at this ceiling.
    fn cap(self, level: Level) -> Level {
        let rank = |l: Level| match l {
            Level::Trace => 0,
            Level::Debug => 1,
            Level::Info => 2,
            Level::Warn => 3,
            Level::Error => 4,
        };
        let ceiling = match self {
            Self::Trace => Level::Trace,
            Self::Debug => Level::Debug,
            Self::Info => Level::Info,
            Self::Warn => Level::Warn,
            Self::Error => Level::Error,
        };
        if rank(level) > rank(ceiling) {
            ceiling
        } else {
            level
        }
    }
}

/// `text` made safe for one line of a log or a terminal: `\n`, `\r`, `\t`
/// become those two-character escapes, and every other control character
/// (C0, DEL, C1 — which starts ANSI/VT escape sequences), the Unicode line
/// and paragraph separators and the bidirectional overrides become
/// `\u{…}`. Borrowed (no allocation) when there is nothing to escape.
pub fn escape(text: &str) -> Cow<'_, str> {
    escape_with(text, false)
}

/// Like [`escape`], but keeps `\n` as a line break (for multi-line text
/// such as captured stderr, which the caller prints with its own prefix
/// on each line).
pub fn escape_keeping_lines(text: &str) -> Cow<'_, str> {
    escape_with(text, true)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

fn escape_with(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| needs_escape(c) && !(keep_newlines && c == '\n');
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if !unsafe_char(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    Cow::Owned(out)
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
    /// Masks the secrets the call read before a line leaves.
    redactor: std::sync::Arc<crate::capability::Redactor>,
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
            redactor: std::sync::Arc::default(),
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

/// The log capability: always granted (capped per call).
#[derive(Debug, Clone, Copy)]
pub struct Log;

impl crate::capability::Capability for Log {
    const NAME: &'static str = "log";
    const INTERFACES: &'static [&'static str] = &["log"];
    type Config = Config;
    type ConfigError = std::convert::Infallible;
    type Policy = ();
    type Shared = Config;
    type Wants = ();
    type Grant = ();
    type State = State;
    type PrepareError = std::convert::Infallible;
    type CommitError = std::convert::Infallible;
    /// The lines kept and the number dropped.
    type Report = (Vec<LogLine>, u32);

    fn check_allow(_allow: &crate::capability::Allow) -> Result<(), crate::capability::AllowError> {
        Err(crate::capability::AllowError::Fixed {
            name: Self::NAME,
            why: "every call may log (its lines are capped, not granted)",
        })
    }

    fn check(_config: &Config) -> Result<(), std::convert::Infallible> {
        Ok(())
    }

    fn shared(config: &Config, _engine: &crate::capability::EngineContext) -> Config {
        *config
    }

    fn want(_wants: &mut (), _args: &[String]) {}

    fn describe_wants(_wants: &(), _out: &mut Vec<String>) {}

    fn grant(_wants: &(), _policy: &(), _scope: &crate::capability::GrantScope<'_>) {}

    /// Two `Arc` clones (the capsule's name and the run id).
    fn prepare(
        config: &Config,
        _grant: &(),
        call: &crate::capability::CallContext<'_>,
    ) -> Result<State, std::convert::Infallible> {
        Ok(State::new(
            *config,
            CallIdentity {
                capsule: call.capsule.clone(),
                run: call.run.clone(),
            },
        ))
    }

    fn finish(state: State) -> (Vec<LogLine>, u32) {
        state.finish()
    }

    /// Keeps the redactor: a line goes to the host's log as it is logged,
    /// masked then.
    fn attach(state: &mut State, redactor: &std::sync::Arc<crate::capability::Redactor>) {
        state.redactor = redactor.clone();
    }
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
        // Masked before truncating, so a cut cannot keep part of a value.
        self.redactor.redact_in_place(&mut message);
        for (k, v) in &mut fields {
            self.redactor.redact_in_place(k);
            self.redactor.redact_in_place(v);
        }
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
        let capsule = escape(&self.identity.capsule);
        let run = escape(&self.identity.run);
        let capsule_level = level_name(level);
        let text = escape(&message);
        let escaped: Vec<(Cow<'_, str>, Cow<'_, str>)> =
            fields.iter().map(|(k, v)| (escape(k), escape(v))).collect();
        macro_rules! emit {
            ($lvl:expr) => {
                tracing::event!(
                    target: "soma::capsule",
                    $lvl,
                    capsule = %capsule,
                    run = %run,
                    capsule_level,
                    fields = ?escaped,
                    "{text}"
                )
            };
        }
        match self.config.max_level.cap(level) {
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
                max_level: MaxLevel::Info,
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

    #[test]
    fn escape_makes_one_inert_line() {
        let forged =
            "ok\n2026-11-28T00:00:00Z ERROR soma: forged\r\x1b[31mred\x1b[0m\t\u{202e}x\u{85}";
        let e = escape(forged);
        assert!(!e.chars().any(needs_escape), "{e}");
        assert_eq!(
            e,
            "ok\\n2026-11-28T00:00:00Z ERROR soma: forged\\r\\u{1b}[31mred\\u{1b}[0m\\t\\u{202e}x\\u{85}"
        );
        assert!(matches!(escape("plain text, é ✓"), Cow::Borrowed(_)));
        assert_eq!(escape_keeping_lines("a\nb\x07"), "a\nb\\u{7}");
    }

    #[test]
    fn capsule_levels_are_capped() {
        assert_eq!(MaxLevel::Info.cap(Level::Error), Level::Info);
        assert_eq!(MaxLevel::Info.cap(Level::Debug), Level::Debug);
        assert_eq!(MaxLevel::Error.cap(Level::Error), Level::Error);
        assert_eq!(MaxLevel::Trace.cap(Level::Warn), Level::Trace);
    }
}
