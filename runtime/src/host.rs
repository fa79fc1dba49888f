//! [`Host`]: the store data of one call — the limiter plus every
//! capability's per-call state, composed by `soma_host_api`. Adding a
//! capability changes nothing here.

use soma_host_api as host_api;
use wasmtime_wasi::{WasiCtxView, WasiView};

use crate::limits::Limiter;

/// Per-call store data.
#[derive(Debug)]
pub struct Host {
    pub(crate) limiter: Limiter,
    pub(crate) capabilities: host_api::State,
}

impl host_api::HasCapabilities for Host {
    fn capabilities(&mut self) -> &mut host_api::State {
        &mut self.capabilities
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.capabilities.wasi.view()
    }
}
