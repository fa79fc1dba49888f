//! Review fixture: carries credentials in a data segment (`secret-found`).
//! The keys are fake (AWS's documented example id and a made-up `sk-` key).

use soma_sdk::{Capsule, Error, Info};

struct Leaky;

static AWS_ACCESS_KEY_ID: &str = "AKIAIOSFODNN7EXAMPLE";
static API_KEY: &str = "sk-fake9Qm2Xr7Lp4Tz8Vb1Nc6Hd3Kf5Wg0Jy";

impl Capsule for Leaky {
    fn info() -> Info {
        Info::worker("review-secret", env!("CARGO_PKG_VERSION"))
            .description("Has API keys baked into its data")
    }

    fn run(_input: &str) -> Result<String, Error> {
        // Use both so the linker keeps them in the data segment.
        let keys = [
            std::hint::black_box(AWS_ACCESS_KEY_ID),
            std::hint::black_box(API_KEY),
        ];
        let len: usize = keys.iter().map(|k| k.len()).sum();
        Ok(format!("{{\"configured\":{len}}}"))
    }
}

soma_sdk::capsule!(Leaky);
