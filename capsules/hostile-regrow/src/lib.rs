//! Hostile: grows its linear memory 16 MiB at a time until the host refuses,
//! then ignores the refusal and keeps asking, forever. Only fuel or the
//! deadline ends it; the call must still be reported as `memory-limit`.

use soma_sdk::{Capsule, Error, Info};

/// 16 MiB in 64 KiB wasm pages.
const STEP_PAGES: usize = 256;

struct Regrow;

impl Capsule for Regrow {
    fn info() -> Info {
        Info::worker("hostile-regrow", env!("CARGO_PKG_VERSION"))
            .description("Retries memory growth after the limit refused it")
    }

    fn run(_input: &str) -> Result<String, Error> {
        let mut refusals: u64 = 0;
        loop {
            if grow() == usize::MAX {
                refusals = std::hint::black_box(refusals.wrapping_add(1));
            }
        }
    }
}

/// `memory.grow` by one step: the old size in pages, or `usize::MAX` if refused.
fn grow() -> usize {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_grow(0, STEP_PAGES)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = STEP_PAGES;
        usize::MAX
    }
}

soma_sdk::capsule!(Regrow);
