//! `soma`: run, inspect, scaffold and build task capsules.

mod cli;

/// mimalloc: per-thread heaps; the daemon's threads (HTTP, wasm calls, the
/// ledger writer) allocate and free across each other constantly.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
