//! Review fixture: asks for an LLM model in `describe()` but never imports
//! `llm` (least privilege: `capability-not-imported`).

use soma_sdk::{Capsule, Error, Info};

struct AsksTooMuch;

impl Capsule for AsksTooMuch {
    fn info() -> Info {
        Info::worker("review-llm-unused", env!("CARGO_PKG_VERSION"))
            .description("Asks for llm:small and never uses it")
            .wants_llm_model("small")
    }

    fn run(input: &str) -> Result<String, Error> {
        Ok(input.to_owned())
    }
}

soma_sdk::capsule!(AsksTooMuch);
