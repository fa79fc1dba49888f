//! Hostile: allocates (and touches) 1 MiB chunks until memory runs out.

use soma_sdk::{Capsule, Error, Info};

struct Bomb;

impl Capsule for Bomb {
    fn info() -> Info {
        Info::worker("hostile-memory", env!("CARGO_PKG_VERSION"))
            .description("Allocates without bound")
    }

    fn run(_input: &str) -> Result<String, Error> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let chunk = vec![hoard.len() as u8 | 1; 1 << 20];
            hoard.push(std::hint::black_box(chunk));
        }
    }
}

soma_sdk::capsule!(Bomb);
