//! Structured logging into the host's tracing, attached to the run.
//!
//! Lines are size-capped by the host; past the per-call cap they are counted
//! and dropped, never an error.

use crate::bindings::soma::capsule::log as wit;
pub use crate::bindings::soma::capsule::log::Level;

/// Log `message` at `level` with key/value `fields`.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    wit::log(level, message, &fields);
}

/// Log at debug level.
pub fn debug(message: &str) {
    wit::log(Level::Debug, message, &[]);
}

/// Log at info level.
pub fn info(message: &str) {
    wit::log(Level::Info, message, &[]);
}

/// Log at warn level.
pub fn warn(message: &str) {
    wit::log(Level::Warn, message, &[]);
}

/// Log at error level.
pub fn error(message: &str) {
    wit::log(Level::Error, message, &[]);
}
