//! Paths of the capsule components built from `capsules/` for
//! `wasm32-wasip2`, as constants (`ECHO_COMPONENT`, `CALCULATOR_COMPONENT`,
//! ...) and per-group macros (`foreach_hostile!`, `foreach_example!`).
//!
//! Tests, benches and the demo use these constants, never hand-typed paths.

include!(concat!(env!("OUT_DIR"), "/capsules.rs"));
