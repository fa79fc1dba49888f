//! [`Host`]: the store data of one call, composing every capability's
//! per-call state. Each capability sees only its own state through its view
//! trait; none reaches into another.

use soma_host_api::{events, kv, llm, log, wasi};
use wasmtime_wasi::{WasiCtxView, WasiView};

use crate::limits::Limiter;

/// Per-call store data.
#[derive(Debug)]
pub struct Host {
    pub(crate) limiter: Limiter,
    pub(crate) wasi: wasi::State,
    pub(crate) log: log::State,
    pub(crate) kv: kv::State,
    pub(crate) events: events::State,
    pub(crate) llm: llm::State,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.view()
    }
}

impl log::LogView for Host {
    fn log_state(&mut self) -> &mut log::State {
        &mut self.log
    }
}

impl kv::KvView for Host {
    fn kv_state(&mut self) -> &mut kv::State {
        &mut self.kv
    }
}

impl events::EventsView for Host {
    fn events_state(&mut self) -> &mut events::State {
        &mut self.events
    }
}

impl llm::LlmView for Host {
    fn llm_state(&mut self) -> &mut llm::State {
        &mut self.llm
    }
}
