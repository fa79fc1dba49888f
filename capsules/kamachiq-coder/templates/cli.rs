//! Command line: `calc '2*(3+4)^2'` prints `98`. With no arguments it reads
//! one expression per line from stdin (blank lines are skipped). An error
//! goes to stderr as `error: <what> at position <n> (<code>)` and the exit
//! code is 1; a usage error exits with 2.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;

use crate::evaluator::calculate;

const USAGE: &str = "usage: calc [EXPRESSION...]
Evaluates an arithmetic expression: numbers, + - * / ^ (right-associative),
parentheses and unary signs; `-2^2` is -(2^2) = -4. With no EXPRESSION,
reads one expression per line from stdin. Exit code 1 on an error.";

/// Integral values print without a fraction, everything else as Rust's
/// shortest round-trip decimal; `-0` prints as `0`.
fn format_value(value: f64) -> String {
    if value == 0.0 {
        "0".to_string()
    } else {
        format!("{value}")
    }
}

/// Evaluate `text` and print the value or the error; true on success.
fn report(text: &str, out: &mut impl Write) -> bool {
    match calculate(text) {
        Ok(value) => writeln!(out, "{}", format_value(value)).is_ok(),
        Err(e) => {
            eprintln!("error: {e} ({})", e.code());
            false
        }
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    // `calc -- -2^2` is the same as `calc -2^2`.
    if args.first().is_some_and(|a| a == "--") {
        args.remove(0);
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut ok = true;
    if args.is_empty() {
        for line in io::stdin().lock().lines() {
            let line = match line {
                Ok(line) => line,
                Err(e) => {
                    eprintln!("error: cannot read stdin: {e}");
                    return ExitCode::from(2);
                }
            };
            if !line.trim().is_empty() {
                ok &= report(&line, &mut out);
            }
        }
    } else {
        ok = report(&args.join(" "), &mut out);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
