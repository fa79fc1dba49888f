//! Structural bounds checked before anything is compiled.
//!
//! `Component::new` flattens nested instantiations: a 2 KB component with
//! three levels of 200 instances costs seconds and gigabytes to compile
//! before any store or limit exists. This walk (wasmparser, no validation,
//! no allocation per byte) refuses such components first, and turns
//! not-wasm / core-module / truncated inputs into errors that say what is
//! wrong.
//!
//! The same walk applies the one acceptance rule both instance allocators
//! share ([`Fit`]): what the pooling allocator could never instantiate (more
//! memories or tables per core module than a pool slot holds, a memory or
//! table whose *initial* size exceeds the slot, a shared memory) is refused
//! here, at load, for `soma run` (on-demand) exactly as for the daemon
//! (pooling), with a message that names the limit and its `[engine]` key.

use wasmparser::{Encoding, Parser, Payload};

use crate::config::{EngineConfig, ValidateConfig};

/// Why bytes are not an acceptable component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Bigger than `validate.max_component_bytes`.
    #[error("component is {size} bytes; the limit is {limit} (validate.max_component_bytes)")]
    TooLarge {
        /// Size of the input.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Does not start with the wasm magic number.
    #[error("not a WebAssembly binary: it does not start with the `\\0asm` magic number")]
    NotWasm,
    /// A core module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component; build for wasm32-wasip2 \
         (`soma build`) or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// The binary is malformed (e.g. truncated).
    #[error("malformed component at byte offset {offset}: {message}")]
    Malformed {
        /// Byte offset of the problem.
        offset: usize,
        /// What the parser found.
        message: String,
    },
    /// Components/modules nested deeper than allowed.
    #[error(
        "components are nested {depth} deep; the limit is {limit} (validate.max_nesting_depth)"
    )]
    TooDeep {
        /// Depth found.
        depth: usize,
        /// The limit.
        limit: usize,
    },
    /// The component cannot fit the engine's instance slots (the pooling
    /// allocator's limits, applied under either allocator).
    #[error(
        "core module {module} {what}; the limit is {limit} ({knob}). Every instance allocator \
         applies this limit, so `soma run` and the daemon refuse the same components"
    )]
    ExceedsSlot {
        /// Index of the core module in the component (in order of appearance).
        module: usize,
        /// What it needs, e.g. `defines 2 linear memories`.
        what: String,
        /// The limit.
        limit: u64,
        /// The `soma.toml` key that sets the limit.
        knob: &'static str,
    },
    /// wasmtime refused the component for a reason the walk above did not
    /// catch (a validation error without an offset, an unsupported feature).
    #[error("the engine refused the component: {message}")]
    Refused {
        /// wasmtime's explanation.
        message: String,
    },
    /// Nested instantiation would multiply past the bound.
    #[error(
        "nested instantiations multiply to {product} instances; the limit is {limit} \
         (validate.max_instance_product): compiling this would exhaust the host"
    )]
    TooManyInstances {
        /// Product of instance counts along the worst nesting path.
        product: u64,
        /// The limit.
        limit: u64,
    },
}

/// What one instance slot of the engine holds: the acceptance rule shared
/// by both allocators. Built from `[engine]` once per engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fit {
    /// Largest initial linear memory, bytes (`engine.max_memory_mb`).
    pub max_memory_bytes: u64,
    /// Most linear memories one core module defines (`engine.pool_memories_per_module`).
    pub memories_per_module: u32,
    /// Most tables one core module defines (`engine.pool_tables_per_module`).
    pub tables_per_module: u32,
    /// Largest initial table, elements (`engine.pool_table_elements`).
    pub table_elements: u64,
}

impl Fit {
    /// The slot limits of `engine`.
    pub fn of(engine: &EngineConfig) -> Self {
        Self {
            max_memory_bytes: engine.max_memory_mb.saturating_mul(1024 * 1024),
            memories_per_module: engine.pool_memories_per_module,
            tables_per_module: engine.pool_tables_per_module,
            table_elements: engine.pool_table_elements as u64,
        }
    }
}

#[derive(Default)]
struct Level {
    instances: u64,
    worst_child: u64,
    /// A core module (not a component).
    module: bool,
    memories: u32,
    tables: u32,
}

/// Check `bytes` against the structural bounds and the engine's slot
/// limits ([`Fit`]). Cost: one linear pass over the section headers
/// (function bodies are skipped, not parsed); no allocation per byte.
pub fn check(bytes: &[u8], config: &ValidateConfig, fit: &Fit) -> Result<(), Invalid> {
    if bytes.len() > config.max_component_bytes {
        return Err(Invalid::TooLarge {
            size: bytes.len(),
            limit: config.max_component_bytes,
        });
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(Invalid::NotWasm);
    }
    let mut stack: Vec<Level> = Vec::new();
    let mut modules = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| Invalid::Malformed {
            offset: e.offset(),
            message: e.message().to_owned(),
        })?;
        match payload {
            Payload::Version { encoding, .. } => {
                if stack.is_empty() && encoding == Encoding::Module {
                    return Err(Invalid::CoreModule);
                }
                let module = encoding == Encoding::Module;
                modules += usize::from(module);
                stack.push(Level {
                    module,
                    ..Level::default()
                });
                if stack.len() > config.max_nesting_depth {
                    return Err(Invalid::TooDeep {
                        depth: stack.len(),
                        limit: config.max_nesting_depth,
                    });
                }
            }
            Payload::MemorySection(s) => {
                let module = modules.saturating_sub(1);
                for memory in s {
                    let memory = memory.map_err(|e| Invalid::Malformed {
                        offset: e.offset(),
                        message: e.message().to_owned(),
                    })?;
                    let level = stack.last_mut().filter(|l| l.module);
                    let Some(level) = level else { continue };
                    level.memories = level.memories.saturating_add(1);
                    if level.memories > fit.memories_per_module {
                        return Err(Invalid::ExceedsSlot {
                            module,
                            what: format!("defines {} linear memories", level.memories),
                            limit: u64::from(fit.memories_per_module),
                            knob: "engine.pool_memories_per_module",
                        });
                    }
                    if memory.shared {
                        return Err(Invalid::ExceedsSlot {
                            module,
                            what: "defines a shared memory (threads), which no slot supports"
                                .to_owned(),
                            limit: 0,
                            knob: "not configurable",
                        });
                    }
                    let page = 1u64 << memory.page_size_log2.unwrap_or(16).min(63);
                    let initial = memory.initial.saturating_mul(page);
                    if initial > fit.max_memory_bytes {
                        return Err(Invalid::ExceedsSlot {
                            module,
                            what: format!("starts with a {initial}-byte linear memory"),
                            limit: fit.max_memory_bytes,
                            knob: "engine.max_memory_mb",
                        });
                    }
                }
            }
            Payload::TableSection(s) => {
                let module = modules.saturating_sub(1);
                for table in s {
                    let table = table.map_err(|e| Invalid::Malformed {
                        offset: e.offset(),
                        message: e.message().to_owned(),
                    })?;
                    let level = stack.last_mut().filter(|l| l.module);
                    let Some(level) = level else { continue };
                    level.tables = level.tables.saturating_add(1);
                    if level.tables > fit.tables_per_module {
                        return Err(Invalid::ExceedsSlot {
                            module,
                            what: format!("defines {} tables", level.tables),
                            limit: u64::from(fit.tables_per_module),
                            knob: "engine.pool_tables_per_module",
                        });
                    }
                    if table.ty.initial > fit.table_elements {
                        return Err(Invalid::ExceedsSlot {
                            module,
                            what: format!("starts with a table of {} elements", table.ty.initial),
                            limit: fit.table_elements,
                            knob: "engine.pool_table_elements",
                        });
                    }
                }
            }
            Payload::InstanceSection(s) => bump(&mut stack, s.count()),
            Payload::ComponentInstanceSection(s) => bump(&mut stack, s.count()),
            Payload::End(_) => {
                let Some(level) = stack.pop() else { break };
                let product = level
                    .instances
                    .max(1)
                    .saturating_mul(level.worst_child.max(1));
                if product > config.max_instance_product {
                    return Err(Invalid::TooManyInstances {
                        product,
                        limit: config.max_instance_product,
                    });
                }
                if let Some(parent) = stack.last_mut() {
                    parent.worst_child = parent.worst_child.max(product);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn bump(stack: &mut [Level], count: u32) {
    if let Some(level) = stack.last_mut() {
        level.instances = level.instances.saturating_add(u64::from(count));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ValidateConfig {
        ValidateConfig::default()
    }

    fn fit() -> Fit {
        Fit::of(&EngineConfig::default())
    }

    fn check(bytes: &[u8], config: &ValidateConfig) -> Result<(), Invalid> {
        super::check(bytes, config, &fit())
    }

    #[test]
    fn what_no_slot_holds_is_refused_with_its_knob() {
        let two_memories =
            wat::parse_str("(component (core module (memory 1) (memory 1)))").expect("wat");
        let err = check(&two_memories, &cfg()).expect_err("two memories");
        assert!(
            err.to_string().contains("engine.pool_memories_per_module"),
            "{err}"
        );
        // 2 GiB initial memory, past engine.max_memory_mb = 1024.
        let huge = wat::parse_str("(component (core module (memory 32768)))").expect("wat");
        let err = check(&huge, &cfg()).expect_err("huge memory");
        assert!(err.to_string().contains("engine.max_memory_mb"), "{err}");
        let table = wat::parse_str("(component (core module (table 30000 funcref)))").expect("wat");
        let err = check(&table, &cfg()).expect_err("big table");
        assert!(
            err.to_string().contains("engine.pool_table_elements"),
            "{err}"
        );
        assert!(!err.to_string().contains("byte offset"), "{err}");
        let imported =
            wat::parse_str("(component (core module (import \"a\" \"m\" (memory 1)) (memory 1)))")
                .expect("wat");
        check(&imported, &cfg()).expect("an imported memory is not this module's");
    }

    #[test]
    fn classifies_garbage() {
        assert_eq!(check(b"hello world", &cfg()), Err(Invalid::NotWasm));
        assert_eq!(check(b"\0as", &cfg()), Err(Invalid::NotWasm));
        let module = wat::parse_str("(module)").expect("wat");
        assert_eq!(check(&module, &cfg()), Err(Invalid::CoreModule));
        let small = ValidateConfig {
            max_component_bytes: 4,
            ..cfg()
        };
        assert!(matches!(
            check(&module, &small),
            Err(Invalid::TooLarge { size: 8, limit: 4 })
        ));
    }

    #[test]
    fn truncation_is_malformed_with_offset() {
        let c = wat::parse_str("(component (core module (func (export \"f\"))))").expect("wat");
        let err = check(&c[..c.len() - 3], &cfg()).expect_err("truncated");
        assert!(matches!(err, Invalid::Malformed { .. }), "{err}");
    }

    /// The compile bomb from DESIGN.md: nested components each instantiating
    /// the level below many times. Refused in microseconds.
    #[test]
    fn nested_instance_bomb_is_refused() {
        let mut inner = "(component $c0)".to_owned();
        for level in 1..=3 {
            let insts: String = (0..200)
                .map(|_| format!("(instance (instantiate $c{}))", level - 1))
                .collect();
            inner = format!("(component $c{level} {inner} {insts})");
        }
        let bytes = wat::parse_str(&inner).expect("wat");
        let err = check(&bytes, &cfg()).expect_err("bomb");
        assert!(matches!(err, Invalid::TooManyInstances { .. }), "{err}");
    }

    #[test]
    fn ordinary_component_passes() {
        let c = wat::parse_str(
            "(component (core module $m (func (export \"f\"))) (core instance (instantiate $m)))",
        )
        .expect("wat");
        check(&c, &cfg()).expect("fine");
    }
}
