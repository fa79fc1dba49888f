//! Operator configuration: one typed tree, deserialized from `soma.toml`.
//!
//! Every section has documented defaults (the `Default` impls below are the
//! single place they live) and rejects unknown fields, so a typo is an error
//! rather than a silently ignored setting. `soma config check` validates a
//! file without running anything; `soma config default` prints the defaults.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use soma_host_api as host_api;

use crate::limits::Limits;

pub mod console;
pub mod dag;
pub mod daemon;
pub mod market;
pub mod orchestrator;
pub mod pull;

/// The whole `soma.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Data directory (database, AOT cache). Default: see [`crate::store::DataDir::default_root`].
    pub data_dir: Option<PathBuf>,
    /// Engine settings (once per process).
    pub engine: EngineConfig,
    /// Default per-call limits; a capsule's request or a flag can only lower them
    /// (flags may raise them up to [`EngineConfig::max_memory_mb`] for memory).
    pub limits: Limits,
    /// Structural bounds checked before compiling a component.
    pub validate: ValidateConfig,
    /// Grants the operator allows (each capability reads its own keys).
    pub policy: PolicyConfig,
    /// `log` capability.
    pub log: host_api::log::Config,
    /// `kv` capability.
    pub kv: host_api::kv::Config,
    /// `events` capability.
    pub events: host_api::events::Config,
    /// `llm` capability.
    pub llm: host_api::llm::Config,
    /// WASI (stdio capture).
    pub wasi: host_api::wasi::Config,
    /// `http` capability (outbound HTTP).
    pub http: host_api::http::Config,
    /// `secrets` capability (`[[secrets.define]]`, the tenant-secrets key).
    pub secrets: host_api::secrets::Config,
    /// Which repositories need which signing keys (`[[trust.rules]]`).
    pub trust: crate::verify::TrustConfig,
    /// How much a registry may make a pull read (`[pull]`).
    pub pull: pull::PullConfig,
    /// What every call is charged (`[ledger]`).
    pub ledger: crate::meter::LedgerConfig,
    /// `soma daemon` (`[daemon]`).
    pub daemon: daemon::DaemonConfig,
    /// Ceilings on DAG specs and their parsing and rendering (`[dag]`).
    pub dag: dag::Ceilings,
    /// The capsule marketplace: its signing key, install cooldown (`[market]`).
    pub market: market::MarketConfig,
    /// The web console `soma daemon` serves at `/ui/` (`[console]`).
    pub console: console::ConsoleConfig,
    /// Where shared state lives: redb (default) or PostgreSQL (`[store]`).
    pub store: crate::store::StoreConfig,
    /// What drives the daemon's DAG runs: embedded or Temporal (`[orchestrator]`).
    pub orchestrator: orchestrator::OrchestratorConfig,
    /// The analytics outbox and its shipper (`[analytics]`).
    pub analytics: crate::analytics::AnalyticsConfig,
}

/// How instances get their memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allocator {
    /// A pre-reserved pool of instance slots: ~5 µs per call, but `Engine::new`
    /// reserves the pool (~2 ms). The right choice for the daemon and benches.
    Pooling,
    /// Allocate per instance: slower calls (~25 µs), fastest process start.
    /// The right choice for one-shot CLI runs.
    OnDemand,
}

/// How the deterministic budget is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metering {
    /// Fuel (deterministic, reported as used) plus the epoch deadline.
    Fuel,
    /// Epoch deadline only: no fuel accounting, no fuel overhead.
    EpochOnly,
}

/// Engine settings (`[engine]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Instance allocator. Default: pooling (the CLI's `soma run` picks on-demand).
    pub allocator: Allocator,
    /// Fuel + epoch, or epoch only. Default: fuel.
    pub metering: Metering,
    /// Epoch ticker period in milliseconds; deadline resolution. Default 1.
    pub epoch_tick_ms: u64,
    /// Wasm call-stack limit in KiB (deep recursion → stack-overflow). Default 512.
    pub max_wasm_stack_kb: usize,
    /// Largest memory any call may be given, in MiB (pool slot size). Default 1024.
    pub max_memory_mb: u64,
    /// Pooling: concurrent component instances. Default 1000.
    pub pool_instances: u32,
    /// Largest initial table (elements) of any core module. The pool's
    /// table slot size; checked when a component is loaded, under either
    /// allocator, so `soma run` refuses what the daemon refuses. Default 20,000.
    pub pool_table_elements: usize,
    /// Most linear memories one core module may define (checked at load,
    /// under either allocator). Default 1.
    pub pool_memories_per_module: u32,
    /// Most tables one core module may define (checked at load, under
    /// either allocator). Default 1.
    pub pool_tables_per_module: u32,
    /// Pooling: linear memory kept resident (not madvised) per slot, in KiB. Default 2048.
    pub keep_resident_kb: usize,
    /// Cache compiled components on disk. Default true.
    pub aot_cache: bool,
    /// Directory of that cache. Default: `$SOMA_AOT_DIR` if set, else
    /// `<data>/aot`. Several daemons of one host (or one user's test runs)
    /// may share it: an artifact's name carries the component's digest and
    /// this engine's fingerprint, and it is renamed into place complete.
    /// Its files are loaded as native code, so a directory that is not
    /// owned by this user or that others may write is not used (the cache
    /// is off, with a warning that says so).
    pub aot_dir: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            allocator: Allocator::Pooling,
            metering: Metering::Fuel,
            epoch_tick_ms: 1,
            max_wasm_stack_kb: 512,
            max_memory_mb: 1024,
            pool_instances: 1000,
            pool_table_elements: 20_000,
            pool_memories_per_module: 1,
            pool_tables_per_module: 1,
            keep_resident_kb: 2048,
            aot_cache: true,
            aot_dir: None,
        }
    }
}

/// Bounds on a component's structure, checked before compiling (`[validate]`).
///
/// `Component::new` flattens nested instantiations, so a tiny component can
/// cost seconds and gigabytes to compile; these bounds refuse it first.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidateConfig {
    /// Largest component accepted, in bytes. Default 64 MiB.
    pub max_component_bytes: usize,
    /// Deepest nesting of components/modules. Default 8.
    pub max_nesting_depth: usize,
    /// Largest product of instance counts along any nesting path. Default 10,000.
    pub max_instance_product: u64,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        Self {
            max_component_bytes: 64 * 1024 * 1024,
            max_nesting_depth: 8,
            max_instance_product: 10_000,
        }
    }
}

/// What the operator allows capsules to be granted (`[policy]`): composed
/// in host-api, one key per capability that needs the operator's consent.
pub type PolicyConfig = host_api::Policy;

/// Why a configuration file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown/mistyped fields.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong and where (line and column).
        message: String,
    },
    /// The values are inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Read and validate `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.check()?;
        Ok(config)
    }

    /// Check cross-field consistency.
    pub fn check(&self) -> Result<(), ConfigError> {
        let e = &self.engine;
        if e.epoch_tick_ms == 0 {
            return Err(ConfigError::Invalid(
                "engine.epoch_tick_ms must be at least 1".into(),
            ));
        }
        if self.limits.memory_mb > e.max_memory_mb {
            return Err(ConfigError::Invalid(format!(
                "limits.memory_mb ({}) exceeds engine.max_memory_mb ({})",
                self.limits.memory_mb, e.max_memory_mb
            )));
        }
        if self.limits.timeout_ms == 0 || self.limits.fuel == 0 {
            return Err(ConfigError::Invalid(
                "limits.timeout_ms and limits.fuel must be positive".into(),
            ));
        }
        self.capabilities()
            .check()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let d = &self.dag;
        if d.max_spec_nodes == 0
            || d.max_spec_bytes == 0
            || d.max_rendered_input_bytes == 0
            || d.max_concurrency == 0
            || d.max_fan_out == 0
            || d.max_nodes == 0
            || d.max_expansion_nodes == 0
            || d.max_rounds == 0
            || d.max_run_rendered_bytes == 0
        {
            return Err(ConfigError::Invalid(
                "dag.max_spec_nodes, max_spec_bytes, max_rendered_input_bytes, max_concurrency, \
                 max_fan_out, max_nodes, max_expansion_nodes, max_rounds and \
                 max_run_rendered_bytes must be positive"
                    .into(),
            ));
        }
        if e.pool_instances == 0 {
            return Err(ConfigError::Invalid(
                "engine.pool_instances must be positive".into(),
            ));
        }
        self.trust.check().map_err(ConfigError::Invalid)?;
        self.pull.check().map_err(ConfigError::Invalid)?;
        self.market.check().map_err(ConfigError::Invalid)?;
        self.store.check().map_err(ConfigError::Invalid)?;
        if self.store.backend == crate::store::Backend::Postgres {
            // A hold must outlive its call, or a sweep frees room a live
            // call still counts on.
            let llm = self.llm.providers.iter().map(|p| p.timeout_ms).max();
            let longest = self
                .limits
                .timeout_ms
                .saturating_add(llm.unwrap_or(0))
                .saturating_add(60_000);
            if self.store.hold_ttl_ms < longest {
                return Err(ConfigError::Invalid(format!(
                    "store.hold_ttl_ms is {} but a call may hold its budget for up to {longest} \
                     ms (limits.timeout_ms, plus the slowest LLM provider's timeout_ms, plus a \
                     minute): raise store.hold_ttl_ms",
                    self.store.hold_ttl_ms
                )));
            }
        }
        self.orchestrator.check().map_err(ConfigError::Invalid)?;
        self.analytics.check().map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// The capability sections, for `soma_host_api` (which composes the
    /// capabilities). A new capability's section is one field above and
    /// one line here.
    pub fn capabilities(&self) -> host_api::Sections<'_> {
        host_api::Sections {
            log: &self.log,
            kv: &self.kv,
            llm: &self.llm,
            events: &self.events,
            wasi: &self.wasi,
            http: &self.http,
            secrets: &self.secrets,
            policy: &self.policy,
        }
    }

    /// The defaults as TOML, for `soma config default`.
    pub fn default_toml() -> String {
        toml::to_string_pretty(&Self::default()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_check() {
        let text = Config::default_toml();
        let parsed: Config = toml::from_str(&text).expect("defaults parse");
        parsed.check().expect("defaults are valid");
    }

    #[test]
    fn unknown_fields_are_rejected_with_location() {
        let err = toml::from_str::<Config>("[limits]\nfuell = 3\n").expect_err("typo");
        let msg = err.to_string();
        assert!(msg.contains("fuell") && msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn memory_above_ceiling_is_invalid() {
        let mut c = Config::default();
        c.limits.memory_mb = c.engine.max_memory_mb + 1;
        assert!(matches!(c.check(), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn a_shared_stores_hold_ttl_must_outlast_the_longest_call() {
        let mut c = Config::default();
        c.store.backend = crate::store::Backend::Postgres;
        c.store.url = Some("postgres://soma@127.0.0.1:5432/soma".into());
        c.check()
            .expect("the default TTL (1 h) outlasts a default call");
        c.store.hold_ttl_ms = c.limits.timeout_ms + 59_999;
        match c.check() {
            Err(ConfigError::Invalid(m)) => assert!(m.contains("store.hold_ttl_ms"), "{m}"),
            other => panic!("{other:?}"),
        }
        // The embedded store keeps holds in memory: no TTL to check.
        c.store.backend = crate::store::Backend::Redb;
        c.check().expect("redb");
    }
}
