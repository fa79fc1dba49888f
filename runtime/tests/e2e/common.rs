//! What every module here starts from: the `soma` binary, a command on a
//! data directory, the built capsules' directory, and reading outputs.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;

/// The `soma` binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soma"))
}

/// `soma --data DATA`, with no ambient configuration.
pub fn soma(data: &Path) -> Command {
    soma_tests::daemon::soma(bin(), data)
}

/// The directory of the built capsules (`--capsule-path`).
pub fn capsule_dir() -> PathBuf {
    Path::new(soma_capsules::CALCULATOR_COMPONENT)
        .parent()
        .expect("capsule dir")
        .to_path_buf()
}

/// Bytes of a child's output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A child's stdout as JSON; panics with both streams if it is not.
pub fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}
