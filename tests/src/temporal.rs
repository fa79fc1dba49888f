//! A real Temporal for tests: the dev server and `soma worker` processes,
//! from `soma-daemon-harness` (shared with `cargo xtask demo --engine
//! temporal`).

pub use soma_daemon_harness::temporal::{TemporalServer, VERSION, Worker, WorkerOptions, binary};
