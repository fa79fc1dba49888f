//! The wasmtime engine, configured once per process: component model,
//! fuel and/or epoch interruption, pooling or on-demand allocation, the one
//! epoch ticker thread, the linker with every host capability, the on-disk
//! AOT cache and the in-memory capsule cache.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use soma_host_api as host_api;
use wasmtime::{
    Enabled, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
    component::{Component, Linker},
};

use crate::{
    capsule::{Capsule, LoadError},
    config::{Allocator, Config, Metering},
    digest::Digest,
    host::Host,
    store::DataDir,
    validate::Invalid,
};

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime rejected the configuration (e.g. the pool cannot be
    /// reserved); wasmtime's explanation is the source.
    #[error("cannot configure the wasm engine")]
    Configure(#[source] wasmtime::Error),
    /// The configuration is inconsistent.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// `[store] backend = "postgres"` and the shared store could not be
    /// opened (its message says whether to retry).
    #[error("cannot open the shared store for the ledger and budgets")]
    Store(#[source] crate::store::postgres::PgError),
}

/// A configured engine: compile, cache and call capsules. Cheap to share
/// (`Arc<Engine>`); every method takes `&self` and is thread-safe.
pub struct Engine {
    pub(crate) wasmtime: wasmtime::Engine,
    pub(crate) linker: Linker<Host>,
    /// The same host with WASI and WASI HTTP bound async: capsules that
    /// import `wasi:http/outgoing-handler` are also linked here and, on a
    /// plain thread, called through it (see `call.rs`).
    pub(crate) linker_async: Linker<Host>,
    pub(crate) config: Arc<Config>,
    /// Every capability's shared state (`soma_host_api::Shared`).
    pub(crate) capabilities: host_api::Shared,
    pub(crate) metering: Arc<crate::meter::BudgetLedger>,
    data: DataDir,
    /// Where compiled artifacts are kept (`engine.aot_dir`, resolved), or
    /// `None`: the AOT cache is off, or its directory is not safe to load
    /// native code from.
    aot_dir: Option<PathBuf>,
    fingerprint: String,
    capsules: Mutex<HashMap<Digest, Arc<Capsule>>>,
    /// Loads served from the in-memory capsule cache / compiled or read
    /// from the AOT cache.
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    /// Compiles answered from the AOT artifact on disk / compiled afresh
    /// (with `engine.aot_cache` on).
    aot_hits: AtomicU64,
    aot_misses: AtomicU64,
    /// Calls (and describes) driven on their thread's own runtime through
    /// the async linker.
    pub(crate) own_runtime_calls: AtomicU64,
    ticker: Ticker,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("allocator", &self.config.engine.allocator)
            .field("metering", &self.config.engine.metering)
            .field("data", &self.data.root())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Build an engine from `config` over the data directory `data`.
    ///
    /// Cost: with pooling, reserves the instance pool's address space (~2 ms);
    /// spawns the epoch ticker thread. Once per process.
    pub fn new(config: Config, data: DataDir) -> Result<Self, EngineError> {
        config.check()?;
        let wasmtime =
            wasmtime::Engine::new(&wasmtime_config(&config)).map_err(EngineError::Configure)?;
        let linker = link(&wasmtime).map_err(EngineError::Configure)?;
        let linker_async = link_async(&wasmtime).map_err(EngineError::Configure)?;
        let fingerprint = fingerprint(&wasmtime, &config);
        let aot_dir = config.engine.aot_cache.then(|| {
            let dir = aot_dir(
                config.engine.aot_dir.as_deref(),
                std::env::var_os("SOMA_AOT_DIR"),
                &data,
            );
            match private_dir(&dir) {
                Ok(()) => Some(dir),
                Err(e) => {
                    tracing::warn!("the AOT cache is off: {e}");
                    None
                }
            }
        });
        let metering = Arc::new(
            crate::meter::BudgetLedger::open(config.ledger, data.database().clone(), &config.store)
                .map_err(EngineError::Store)?,
        );
        let capabilities = host_api::Shared::new(
            config.capabilities(),
            &host_api::EngineContext {
                db: data.database().clone(),
                meter: metering.clone(),
            },
        );
        let ticker = Ticker::start(
            &wasmtime,
            Duration::from_millis(config.engine.epoch_tick_ms),
        );
        Ok(Self {
            wasmtime,
            linker,
            linker_async,
            config: Arc::new(config),
            capabilities,
            metering,
            data,
            aot_dir: aot_dir.flatten(),
            fingerprint,
            capsules: Mutex::new(HashMap::new()),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            aot_hits: AtomicU64::new(0),
            aot_misses: AtomicU64::new(0),
            own_runtime_calls: AtomicU64::new(0),
            ticker,
        })
    }

    /// (hits, misses) of the in-memory capsule cache since start.
    pub fn cache_stats(&self) -> (u64, u64) {
        (
            self.cache_hits.load(Ordering::Relaxed),
            self.cache_misses.load(Ordering::Relaxed),
        )
    }

    /// Outbound HTTP of every finished call since start (for metrics).
    pub fn http_totals(&self) -> host_api::http::Totals {
        self.capabilities.http().totals()
    }

    /// (hits, misses) of the on-disk AOT artifact cache since start: a
    /// compile that deserialized its artifact, or compiled (cache on).
    pub fn aot_stats(&self) -> (u64, u64) {
        (
            self.aot_hits.load(Ordering::Relaxed),
            self.aot_misses.load(Ordering::Relaxed),
        )
    }

    /// Calls (and `describe`s) since start that ran on their thread's own
    /// tokio runtime — capsules importing `wasi:http/outgoing-handler`,
    /// called from a thread outside any tokio runtime; the rest ran on the
    /// blocking path.
    pub fn own_runtime_calls(&self) -> u64 {
        self.own_runtime_calls.load(Ordering::Relaxed)
    }

    /// The configuration this engine runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The node's budgets and ledger.
    pub fn metering(&self) -> &Arc<crate::meter::BudgetLedger> {
        &self.metering
    }

    /// The data directory.
    pub fn data(&self) -> &DataDir {
        &self.data
    }

    /// Whether calls are metered with fuel (else epoch-only).
    pub fn fuel_enabled(&self) -> bool {
        self.config.engine.metering == Metering::Fuel
    }

    /// The underlying wasmtime engine (for benches comparing against it).
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.wasmtime
    }

    /// Epoch ticks that make up `timeout` (rounded up, at least one).
    pub(crate) fn deadline_ticks(&self, timeout: Duration) -> u64 {
        let tick = self.ticker.period.as_micros().max(1);
        u64::try_from(timeout.as_micros().div_ceil(tick))
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The capsule loaded from `digest`, from the in-memory cache (counted
    /// as a hit or a miss). One lock, one hash lookup.
    pub(crate) fn cached(&self, digest: &Digest) -> Option<Arc<Capsule>> {
        let cache = self.capsules.lock().unwrap_or_else(|p| p.into_inner());
        let found = cache.get(digest).cloned();
        let counter = if found.is_some() {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keep `capsule` in the in-memory cache; the one already there wins
    /// when two threads loaded the same digest at once.
    pub(crate) fn remember(&self, capsule: Capsule) -> Arc<Capsule> {
        let mut cache = self.capsules.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(capsule.digest())
            .or_insert_with(|| Arc::new(capsule))
            .clone()
    }

    /// The linker every capsule is linked against.
    pub(crate) fn linker(&self) -> &Linker<Host> {
        &self.linker
    }

    /// The async linker (capsules that import `wasi:http/outgoing-handler`).
    pub(crate) fn linker_async(&self) -> &Linker<Host> {
        &self.linker_async
    }

    /// The directory of the AOT cache in use, if it is on.
    pub fn aot_dir(&self) -> Option<&Path> {
        self.aot_dir.as_deref()
    }

    fn aot_path(&self, digest: &Digest) -> Option<PathBuf> {
        self.aot_dir
            .as_ref()
            .map(|dir| dir.join(format!("{}-{}.cwasm", digest.hex(), self.fingerprint)))
    }

    /// Compile `bytes`, or deserialize the AOT artifact for (digest, engine
    /// fingerprint). Part of [`Engine::load`](crate::load). A cache that cannot be read or written is skipped with
    /// a warning; it never fails the load.
    ///
    /// The structural bounds and the slot limits ([`crate::validate::Fit`])
    /// are checked first, also when the artifact is cached (one pass over
    /// the section headers): one acceptance rule for both allocators and
    /// for cached and fresh compiles.
    pub(crate) fn compile(&self, digest: Digest, bytes: &[u8]) -> Result<Component, LoadError> {
        let fit = crate::validate::Fit::of(&self.config.engine);
        crate::validate::check(bytes, &self.config.validate, &fit).map_err(LoadError::Invalid)?;
        let aot = self.aot_path(&digest);
        if let Some(path) = aot.as_deref().filter(|p| p.exists()) {
            // SAFETY: the file was written by `Component::serialize` of this
            // engine configuration (its name carries the engine fingerprint,
            // and it is renamed into place only once complete). The data
            // directory is trusted like the binary itself; wasmtime also
            // checks the header's version and configuration.
            match unsafe { Component::deserialize_file(&self.wasmtime, path) } {
                Ok(c) => {
                    self.aot_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(c);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unusable AOT artifact: {e:#}")
                }
            }
        }
        if aot.is_some() {
            self.aot_misses.fetch_add(1, Ordering::Relaxed);
        }
        let component = Component::new(&self.wasmtime, bytes)
            .map_err(|e| LoadError::Invalid(compile_error(&e, &self.config.engine)))?;
        if let Some(Err(e)) = aot.as_deref().map(|p| write_atomically(p, &component)) {
            tracing::warn!("could not write AOT artifact: {e}");
        }
        Ok(component)
    }
}

/// What `Component::new` refused, in words that name the cause: a
/// validation error keeps its byte offset; a pooling-allocator refusal the
/// walk in [`crate::validate`] did not foresee names the `[engine]` keys
/// that size a slot; anything else is wasmtime's own explanation — never
/// "malformed at byte offset 0".
fn compile_error(e: &wasmtime::Error, engine: &crate::config::EngineConfig) -> Invalid {
    let chain = format!("{e:#}");
    if let Some(b) = e
        .chain()
        .find_map(|c| c.downcast_ref::<wasmparser::BinaryReaderError>())
    {
        return Invalid::Malformed {
            offset: b.offset(),
            message: b.message().to_owned(),
        };
    }
    if chain.contains("pooling allocator") {
        return Invalid::Refused {
            message: format!(
                "it does not fit the engine's instance slots (engine.max_memory_mb = {}, \
                 engine.pool_table_elements = {}, engine.pool_memories_per_module = {}, \
                 engine.pool_tables_per_module = {}): {chain}",
                engine.max_memory_mb,
                engine.pool_table_elements,
                engine.pool_memories_per_module,
                engine.pool_tables_per_module
            ),
        };
    }
    Invalid::Refused { message: chain }
}

/// The AOT cache's directory: `engine.aot_dir` if the configuration names
/// one, else `$SOMA_AOT_DIR` if set and not empty, else `<data>/aot`.
fn aot_dir(configured: Option<&Path>, env: Option<std::ffi::OsString>, data: &DataDir) -> PathBuf {
    configured
        .map(Path::to_path_buf)
        .or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| data.aot_dir())
}

/// Why a directory may not hold artifacts that are loaded as native code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AotDirError {
    /// It could not be created or inspected.
    #[error("cannot create or inspect {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// It belongs to another user, who could place code there.
    #[error(
        "{} belongs to uid {owner}, not to this user (uid {me}): point engine.aot_dir \
         (or SOMA_AOT_DIR) at a directory of this user's own",
        .path.display()
    )]
    NotOwned { path: PathBuf, owner: u32, me: u32 },
    /// Group or others may write into it.
    #[error(
        "{} is writable by group or others (mode {mode:o}): run `chmod go-w` on it, \
         or point engine.aot_dir at a private directory",
        .path.display()
    )]
    Shared { path: PathBuf, mode: u32 },
}

/// Create `dir` (mode 0700) if missing, then check that only this user
/// can write into it.
fn private_dir(dir: &Path) -> Result<(), AotDirError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let io = |source| AotDirError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let meta = std::fs::metadata(dir).map_err(io)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(AotDirError::NotOwned {
            path: dir.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(AotDirError::Shared {
            path: dir.to_path_buf(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

fn write_atomically(path: &Path, component: &Component) -> std::io::Result<()> {
    let bytes = component
        .serialize()
        .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, &bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Fiber stack bytes beyond `engine.max_wasm_stack_kb` for the host
/// functions an async call runs on its fiber.
const ASYNC_HOST_STACK: usize = 1536 * 1024;

/// The wasmtime configuration for `config`. Pool settings follow what was
/// measured on this class of machine (DESIGN.md): keeping ~2 MiB of each
/// slot resident and using `pagemap_scan` avoids the `madvise` TLB
/// shootdowns that otherwise halve 2-thread throughput.
fn wasmtime_config(config: &Config) -> wasmtime::Config {
    let e = &config.engine;
    let mut c = wasmtime::Config::new();
    c.wasm_component_model(true)
        .consume_fuel(e.metering == Metering::Fuel)
        .epoch_interruption(true)
        .max_wasm_stack(e.max_wasm_stack_kb * 1024)
        // Calls through the async linker run on a fiber whose stack holds
        // the guest's stack plus the host functions' frames: wasmtime's
        // default margin (1.5 MiB over its 512 KiB wasm default) on top of
        // ours.
        .async_stack_size((e.max_wasm_stack_kb * 1024).saturating_add(ASYNC_HOST_STACK))
        .cranelift_opt_level(OptLevel::Speed)
        .parallel_compilation(true);
    if e.allocator == Allocator::Pooling {
        let keep = e.keep_resident_kb * 1024;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(e.pool_instances)
            .total_core_instances(e.pool_instances.saturating_mul(4))
            .total_memories(e.pool_instances.saturating_mul(2))
            .total_tables(e.pool_instances.saturating_mul(4))
            .total_stacks(e.pool_instances)
            .table_elements(e.pool_table_elements)
            .max_memories_per_module(e.pool_memories_per_module)
            .max_tables_per_module(e.pool_tables_per_module)
            .max_memory_size(usize::try_from(e.max_memory_mb * 1024 * 1024).unwrap_or(usize::MAX))
            .linear_memory_keep_resident(keep)
            .table_keep_resident(keep)
            .pagemap_scan(Enabled::Auto);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

/// The linker every capsule is linked against: WASI p2 plus Soma's
/// capabilities, every contract version. Built once per engine.
fn link(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<Host>> {
    let mut linker = Linker::new(engine);
    host_api::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// The async twin of [`link`]: WASI and WASI HTTP bound async, the rest
/// the same. Built once per engine.
fn link_async(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<Host>> {
    let mut linker = Linker::new(engine);
    host_api::add_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// A short hex fingerprint of everything that makes a compiled artifact
/// compatible with this engine: wasmtime's own compatibility hash (version,
/// target, compiler settings) plus the settings that decide whether and how
/// a component may be used here — allocator, metering, stack, slot limits
/// and structural bounds — so an artifact compiled under one configuration
/// is never taken under an incompatible one.
fn fingerprint(engine: &wasmtime::Engine, config: &Config) -> String {
    let e = &config.engine;
    let v = &config.validate;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    "soma-aot-v2".hash(&mut h);
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:?}/{:?}", e.allocator, e.metering).hash(&mut h);
    (
        e.max_wasm_stack_kb,
        e.max_memory_mb,
        e.pool_table_elements,
        e.pool_memories_per_module,
        e.pool_tables_per_module,
    )
        .hash(&mut h);
    (
        v.max_component_bytes,
        v.max_nesting_depth,
        v.max_instance_product,
    )
        .hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The one epoch ticker of an engine. Stops when the engine is dropped.
struct Ticker {
    period: Duration,
    stop: Arc<AtomicBool>,
}

impl Ticker {
    fn start(engine: &wasmtime::Engine, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let flag = stop.clone();
        let spawned = thread::Builder::new()
            .name("soma-epoch".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    thread::sleep(period);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the epoch ticker; deadlines will not fire: {e}");
        }
        Self { period, stop }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aot_directory_is_the_configured_one_then_the_environments_then_the_data_dirs() {
        let data = DataDir::new(Path::new("/data"));
        let env = || Some(std::ffi::OsString::from("/env-aot"));
        assert_eq!(
            aot_dir(Some(Path::new("/conf-aot")), env(), &data),
            Path::new("/conf-aot")
        );
        assert_eq!(aot_dir(None, env(), &data), Path::new("/env-aot"));
        assert_eq!(
            aot_dir(None, Some(std::ffi::OsString::new()), &data),
            Path::new("/data/aot"),
            "an empty SOMA_AOT_DIR is unset"
        );
        assert_eq!(aot_dir(None, None, &data), Path::new("/data/aot"));
    }
}
