//! Per-call limits and the [`Limiter`] that enforces memory, tables and
//! instance counts.
//!
//! Limits come from three places and the tightest wins: the operator's
//! defaults (`[limits]`), the capsule's own request (`describe().limits`), and
//! the caller (CLI flags, later the DAG node).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use soma_host_api::bindings::soma::capsule::types::LimitsRequest;

/// The limits of one call (`[limits]` in `soma.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Fuel units (roughly wasm instructions). Default 10,000,000,000.
    pub fuel: u64,
    /// Wall-clock deadline, ms. Default 10,000.
    pub timeout_ms: u64,
    /// All linear memories together, MiB. Default 128.
    pub memory_mb: u64,
    /// Largest output (and largest single guest→host transfer), bytes. Default 1 MiB.
    pub max_output_bytes: usize,
    /// Largest input accepted, bytes. Default 1 MiB.
    pub max_input_bytes: usize,
    /// Core + component instances. Default 64.
    pub max_instances: usize,
    /// Linear memories. Default 8.
    pub max_memories: usize,
    /// Tables. Default 32.
    pub max_tables: usize,
    /// All table elements together. Default 100,000.
    pub max_table_elements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 10_000_000_000,
            timeout_ms: 10_000,
            memory_mb: 128,
            max_output_bytes: 1024 * 1024,
            max_input_bytes: 1024 * 1024,
            max_instances: 64,
            max_memories: 8,
            max_tables: 32,
            max_table_elements: 100_000,
        }
    }
}

impl Limits {
    /// These limits lowered by a capsule's request; a request never raises them.
    #[must_use]
    pub fn tightened_by(mut self, request: &LimitsRequest) -> Self {
        if let Some(f) = request.fuel {
            self.fuel = self.fuel.min(f.max(1));
        }
        if let Some(m) = request.memory_mb {
            self.memory_mb = self.memory_mb.min(u64::from(m.max(1)));
        }
        if let Some(t) = request.timeout_ms {
            self.timeout_ms = self.timeout_ms.min(u64::from(t.max(1)));
        }
        self
    }

    /// The wall-clock deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The memory limit in bytes.
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX)
    }
}

/// What the limiter refused, remembered so the call's failure names the cause
/// even though wasm only sees a failed `memory.grow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Memory would have grown to `requested` bytes.
    Memory {
        /// Total bytes asked for.
        requested: usize,
    },
    /// Tables would have grown to `requested` elements.
    TableElements {
        /// Total elements asked for.
        requested: usize,
    },
}

/// Enforces a call's memory and table limits across *all* memories and
/// tables of the instance (wasmtime's own limits are per memory), and tracks
/// peak memory. Installed on every call's store.
#[derive(Debug)]
pub struct Limiter {
    memory_limit: usize,
    table_elements_limit: usize,
    max_instances: usize,
    max_memories: usize,
    max_tables: usize,
    memory: usize,
    peak_memory: usize,
    table_elements: usize,
    refusal: Option<Refusal>,
}

impl Limiter {
    /// A limiter for one call. Allocation-free.
    pub fn new(limits: &Limits) -> Self {
        Self {
            memory_limit: limits.memory_bytes(),
            table_elements_limit: limits.max_table_elements,
            max_instances: limits.max_instances,
            max_memories: limits.max_memories,
            max_tables: limits.max_tables,
            memory: 0,
            peak_memory: 0,
            table_elements: 0,
            refusal: None,
        }
    }

    /// The highest total linear memory the call reached, in bytes.
    pub fn peak_memory(&self) -> usize {
        self.peak_memory
    }

    /// The first growth this limiter refused, if any.
    pub fn refusal(&self) -> Option<Refusal> {
        self.refusal
    }

    fn refuse(&mut self, r: Refusal) -> wasmtime::Result<bool> {
        self.refusal.get_or_insert(r);
        Ok(false)
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.memory.saturating_add(desired.saturating_sub(current));
        if total > self.memory_limit {
            return self.refuse(Refusal::Memory { requested: total });
        }
        self.memory = total;
        self.peak_memory = self.peak_memory.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .table_elements
            .saturating_add(desired.saturating_sub(current));
        if total > self.table_elements_limit {
            return self.refuse(Refusal::TableElements { requested: total });
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.max_instances
    }

    fn tables(&self) -> usize {
        self.max_tables
    }

    fn memories(&self) -> usize {
        self.max_memories
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter as _;

    #[test]
    fn memory_is_summed_across_memories() {
        let limits = Limits {
            memory_mb: 1,
            ..Limits::default()
        };
        let mut l = Limiter::new(&limits);
        let mib = 1024 * 1024;
        assert!(l.memory_growing(0, mib / 2, None).expect("grow"));
        assert!(
            !l.memory_growing(0, mib / 2 + 1, None)
                .expect("second memory")
        );
        assert_eq!(l.refusal(), Some(Refusal::Memory { requested: mib + 1 }));
        assert_eq!(l.peak_memory(), mib / 2);
    }

    #[test]
    fn requests_only_tighten() {
        let base = Limits::default();
        let req = LimitsRequest {
            fuel: Some(u64::MAX),
            memory_mb: Some(16),
            timeout_ms: Some(0),
        };
        let t = base.tightened_by(&req);
        assert_eq!(t.fuel, base.fuel);
        assert_eq!(t.memory_mb, 16);
        assert_eq!(t.timeout_ms, 1);
    }
}
