//! `soma`: run, inspect, scaffold and build task capsules.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
