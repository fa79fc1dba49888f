//! JSON input and output helpers.

use serde::{Serialize, de::DeserializeOwned};

use crate::Error;

/// Parse the run input as JSON into `T`.
///
/// A parse failure becomes a `bad-input` [`Error`] naming the line and column.
pub fn parse<T: DeserializeOwned>(input: &str) -> Result<T, Error> {
    serde_json::from_str(input).map_err(|e| Error::bad_input(format!("input is not valid: {e}")))
}

/// Serialize `value` as the run output.
pub fn output<T: Serialize + ?Sized>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value)
        .map_err(|e| Error::new("output-encoding", format!("could not encode output: {e}")))
}
