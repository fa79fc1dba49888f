//! Hostile: `run` never returns. Only the epoch deadline stops it.

use soma_sdk::{Capsule, Error, Info};

struct Spin;

impl Capsule for Spin {
    fn info() -> Info {
        Info::worker("hostile-loop", env!("CARGO_PKG_VERSION")).description("Loops forever")
    }

    fn run(input: &str) -> Result<String, Error> {
        let mut x = input.len() as u64;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

soma_sdk::capsule!(Spin);
