//! Review fixture: declares a numeric `value` in its output schema and
//! answers with a string (`output-schema-mismatch`).

use soma_sdk::{Capsule, Error, Info};

struct Liar;

const OUTPUT_SCHEMA: &str = r#"{
  "type": "object",
  "properties": { "value": { "type": "number" } },
  "required": ["value"]
}"#;

impl Capsule for Liar {
    fn info() -> Info {
        Info::worker("review-bad-output", env!("CARGO_PKG_VERSION"))
            .description("Output does not match its declared schema")
            .output_schema(OUTPUT_SCHEMA)
    }

    fn run(_input: &str) -> Result<String, Error> {
        Ok(r#"{"value":"forty-two"}"#.to_owned())
    }
}

soma_sdk::capsule!(Liar);
