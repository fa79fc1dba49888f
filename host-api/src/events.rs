//! `events`: analytics and progress events, buffered per call and returned
//! with the outcome (the daemon streams them; the ledger aggregates them).

use serde::{Deserialize, Serialize};
use wasmtime::component::{HasSelf, Linker};

use crate::bindings::soma::capsule::events as wit;

/// Operator settings (`[events]` in `soma.toml`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Events kept per call; later ones are counted and dropped.
    pub max_events: usize,
    /// Largest payload kept, in bytes; larger ones are dropped and counted.
    pub max_payload_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_events: 256,
            max_payload_bytes: 16 * 1024,
        }
    }
}

/// One event a capsule emitted.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// Event name, e.g. `progress`.
    pub name: String,
    /// The payload; a payload that is not valid JSON is kept as a JSON string.
    pub payload: serde_json::Value,
}

/// Per-call event buffer.
#[derive(Debug)]
pub struct State {
    config: Config,
    events: Vec<Event>,
    dropped: u32,
}

impl State {
    /// Fresh state for one call.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            events: Vec::new(),
            dropped: 0,
        }
    }

    /// The buffered events and the number dropped past the caps.
    pub fn finish(self) -> (Vec<Event>, u32) {
        (self.events, self.dropped)
    }
}

/// Store data that hands out the per-call event buffer.
pub trait EventsView {
    /// The call's event buffer.
    fn events_state(&mut self) -> &mut State;
}

/// The events capability: always granted (buffered, capped per call).
#[derive(Debug, Clone, Copy)]
pub struct Events;

impl crate::capability::Capability for Events {
    const NAME: &'static str = "events";
    const INTERFACES: &'static [&'static str] = &["events"];
    type Config = Config;
    type ConfigError = std::convert::Infallible;
    type Policy = ();
    type Shared = Config;
    type Wants = ();
    type Grant = ();
    type State = State;
    type PrepareError = std::convert::Infallible;
    type CommitError = std::convert::Infallible;
    /// The events kept and the number dropped.
    type Report = (Vec<Event>, u32);

    fn check_allow(_allow: &crate::capability::Allow) -> Result<(), crate::capability::AllowError> {
        Err(crate::capability::AllowError::Fixed {
            name: Self::NAME,
            why: "every call may emit events (they are capped, not granted)",
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

    fn prepare(
        config: &Config,
        _grant: &(),
        _call: &crate::capability::CallContext<'_>,
    ) -> Result<State, std::convert::Infallible> {
        Ok(State::new(*config))
    }

    fn finish(state: State) -> (Vec<Event>, u32) {
        state.finish()
    }
}

/// Wire `soma:capsule/events` into `linker`. Once per engine.
pub fn add_to_linker<T: EventsView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<State>>(linker, |t| t.events_state())
}

impl wit::Host for State {
    fn emit(&mut self, mut name: String, payload: String) {
        if self.events.len() >= self.config.max_events
            || payload.len() > self.config.max_payload_bytes
        {
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        crate::log::truncate(&mut name, 128);
        let payload = serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload));
        self.events.push(Event { name, payload });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wit::Host as _;

    #[test]
    fn caps_count_and_size_and_keeps_bad_json_as_string() {
        let mut st = State::new(Config {
            max_events: 2,
            max_payload_bytes: 10,
        });
        st.emit("a".into(), r#"{"x":1}"#.into());
        st.emit("b".into(), "not json".into());
        st.emit("c".into(), "1".into());
        st.emit("d".into(), "x".repeat(11));
        let (events, dropped) = st.finish();
        assert_eq!(events[0].payload, serde_json::json!({"x": 1}));
        assert_eq!(events[1].payload, serde_json::json!("not json"));
        assert_eq!(events.len(), 2);
        assert_eq!(dropped, 2);
    }
}
