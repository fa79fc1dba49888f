//! `echo`: returns its input unchanged. The trivial capsule the benches call.

use soma_sdk::{Capsule, Error, Info};

struct Echo;

impl Capsule for Echo {
    fn info() -> Info {
        Info::worker("echo", env!("CARGO_PKG_VERSION")).description("Returns its input unchanged")
    }

    fn run(input: &str) -> Result<String, Error> {
        Ok(input.to_owned())
    }
}

soma_sdk::capsule!(Echo);
