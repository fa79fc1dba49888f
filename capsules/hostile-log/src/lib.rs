//! Hostile: tries to forge host log lines and drive the operator's
//! terminal — a newline, a carriage return and ANSI escape sequences in its
//! log message and fields, its stdout/stderr, its error message and its
//! output. With input containing `fail` it returns an error, else an output.

use soma_sdk::{
    Capsule, Error, Info,
    log::{self, Level},
};

/// A line that would look like the host's own error if printed raw, then
/// an erase-line, a color change and a window-title change.
const FORGED: &str = "\n2026-11-28T00:00:00Z ERROR soma: forged host line\r\x1b[2K\x1b[31mred\x1b[0m\x1b]0;pwned\x07";

struct Forger;

impl Capsule for Forger {
    fn info() -> Info {
        Info::worker("hostile-log", env!("CARGO_PKG_VERSION"))
            .description("Logs and returns text with newlines and terminal escapes")
    }

    fn run(input: &str) -> Result<String, Error> {
        log::log(
            Level::Error,
            &format!("innocent{FORGED}"),
            &[("key\nERROR soma: forged", FORGED)],
        );
        print!("stdout{FORGED}");
        eprint!("stderr{FORGED}");
        if input.contains("fail") {
            return Err(Error::new(
                "forged\x1b[31m",
                format!("capsule error{FORGED}"),
            ));
        }
        Ok(format!("output{FORGED}"))
    }
}

soma_sdk::capsule!(Forger);
