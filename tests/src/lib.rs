//! The integration-test harness: shared engines over temporary data
//! directories, and helpers to load the built capsules.
//!
//! Services (registry, Temporal, Prometheus) join this module as the issues
//! that need them land; each starts on a free loopback port and stops on drop.

pub mod browser;
pub mod clickhouse;
pub mod console_bulk;
pub mod console_seed;
pub mod daemon;
pub mod dag_checks;
pub mod grafana;
pub mod kafka;
pub mod llm_fixture;
pub mod market;
pub mod market_corpus;
pub mod postgres;
pub mod prometheus;
pub mod registry;
pub mod temporal;

use std::{
    path::Path,
    sync::{Arc, OnceLock},
};

use soma_runtime::{
    Capsule, Config, Engine,
    config::{Allocator, Metering},
    store::DataDir,
};

/// An engine over a fresh temporary data directory (removed on drop).
#[derive(Debug)]
pub struct TestEngine {
    /// The engine.
    pub engine: Engine,
    /// Keeps the data directory alive.
    pub data: tempfile::TempDir,
}

impl TestEngine {
    /// A new engine with `config` over a fresh data directory.
    pub fn new(config: Config) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let engine = Engine::new(config, DataDir::new(data.path())).expect("engine");
        Self { engine, data }
    }

    /// Load a built capsule by path.
    pub fn load(&self, path: &str) -> Arc<Capsule> {
        self.engine
            .load_file(Path::new(path))
            .unwrap_or_else(|e| panic!("loading {path}: {e}"))
    }
}

/// A process-wide pooling engine with fuel: the daemon's configuration.
/// Shared by all tests of one test binary, so hostile calls and well-behaved
/// calls really run side by side on the same host.
pub fn shared() -> &'static TestEngine {
    static ENGINE: OnceLock<TestEngine> = OnceLock::new();
    ENGINE.get_or_init(|| TestEngine::new(config(Allocator::Pooling, Metering::Fuel)))
}

/// A config with the given allocator and metering and otherwise defaults.
pub fn config(allocator: Allocator, metering: Metering) -> Config {
    let mut c = Config::default();
    c.engine.allocator = allocator;
    c.engine.metering = metering;
    c.engine.pool_instances = 64;
    c
}
