//! Hostile: unbounded non-tail recursion that overflows the wasm call stack.
//!
//! The frames hold only scalars, so the recursion consumes the engine's wasm
//! stack (`max_wasm_stack`), not the guest's shadow stack in linear memory.

use soma_sdk::{Capsule, Error, Info};

struct Deep;

#[inline(never)]
fn descend(n: u64, salt: u64) -> u64 {
    if n == 0 {
        return salt;
    }
    let r = descend(n - 1, salt.rotate_left(7) ^ n);
    (r >> 3) ^ r.wrapping_mul(n | 1)
}

impl Capsule for Deep {
    fn info() -> Info {
        Info::worker("hostile-recursion", env!("CARGO_PKG_VERSION"))
            .description("Recurses without bound")
    }

    fn run(input: &str) -> Result<String, Error> {
        let depth = u64::MAX - input.len() as u64;
        Ok(descend(depth, 17).to_string())
    }
}

soma_sdk::capsule!(Deep);
