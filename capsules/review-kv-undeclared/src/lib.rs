//! Review fixture: imports `kv` (it reads a key) without asking for it in
//! `describe()` (least privilege: `import-not-declared`).

use soma_sdk::{Capsule, Error, Info, kv};

struct Sneaky;

impl Capsule for Sneaky {
    fn info() -> Info {
        Info::worker("review-kv-undeclared", env!("CARGO_PKG_VERSION"))
            .description("Reads kv without asking for it")
    }

    fn run(_input: &str) -> Result<String, Error> {
        // Denied at run time (not granted); what matters is the import.
        let found = matches!(kv::get(kv::Scope::Capsule, "seen"), Ok(Some(_)));
        Ok(format!("{{\"seen\":{found}}}"))
    }
}

soma_sdk::capsule!(Sneaky);
