//! Structural bounds checked before anything is compiled.
//!
//! `Component::new` flattens nested instantiations: a 2 KB component with
//! three levels of 200 instances costs seconds and gigabytes to compile
//! before any store or limit exists. This walk (wasmparser, no validation,
//! no allocation per byte) refuses such components first, and turns
//! not-wasm / core-module / truncated inputs into errors that say what is
//! wrong.

use wasmparser::{Encoding, Parser, Payload};

use crate::config::ValidateConfig;

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

#[derive(Default)]
struct Level {
    instances: u64,
    worst_child: u64,
}

/// Check `bytes` against the structural bounds. Cost: one linear pass over
/// the section headers (function bodies are skipped, not parsed).
pub fn check(bytes: &[u8], config: &ValidateConfig) -> Result<(), Invalid> {
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
                stack.push(Level::default());
                if stack.len() > config.max_nesting_depth {
                    return Err(Invalid::TooDeep {
                        depth: stack.len(),
                        limit: config.max_nesting_depth,
                    });
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
