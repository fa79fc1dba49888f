//! Hostile: panics, which a wasm32 Rust guest turns into an `unreachable` trap.

use soma_sdk::{Capsule, Error, Info};

struct Crash;

impl Capsule for Crash {
    fn info() -> Info {
        Info::worker("hostile-trap", env!("CARGO_PKG_VERSION")).description("Panics in run()")
    }

    fn run(input: &str) -> Result<String, Error> {
        panic!(
            "hostile-trap was asked to crash on {} bytes of input",
            input.len()
        );
    }
}

soma_sdk::capsule!(Crash);
