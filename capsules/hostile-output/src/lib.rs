//! Hostile: returns a 16 MiB output, far past the host's output cap.

use soma_sdk::{Capsule, Error, Info};

struct Flood;

impl Capsule for Flood {
    fn info() -> Info {
        Info::worker("hostile-output", env!("CARGO_PKG_VERSION"))
            .description("Returns a huge output")
    }

    fn run(_input: &str) -> Result<String, Error> {
        Ok("x".repeat(16 << 20))
    }
}

soma_sdk::capsule!(Flood);
