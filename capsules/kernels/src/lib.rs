//! CPU kernels for the fuel-overhead benches. Input is `<kernel>:<n>`
//! (plain text, no JSON, so the kernel dominates the call):
//!
//! - `loop:N`      — a tight integer loop (xorshift) of N iterations
//! - `arith:N`     — straight-line floating/integer arithmetic, N rounds
//! - `recursion:N` — call-heavy recursion: naive Fibonacci of N

use soma_sdk::{Capsule, Error, Info};

struct Kernels;

fn xorshift_loop(n: u64) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

fn arith(n: u64) -> u64 {
    let (mut a, mut b, mut c) = (1.000_001_f64, 0.5_f64, 3u64);
    for i in 0..n {
        a = a * 1.000_000_1 + b / 3.0;
        b = (b + a * 0.25).sqrt();
        c = c.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(i) ^ (a as u64);
    }
    c ^ b.to_bits()
}

#[inline(never)]
fn fib(n: u64) -> u64 {
    if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
}

impl Capsule for Kernels {
    fn info() -> Info {
        Info::worker("kernels", env!("CARGO_PKG_VERSION"))
            .description("CPU kernels: loop:N, arith:N, recursion:N")
    }

    fn run(input: &str) -> Result<String, Error> {
        let (kernel, n) = input
            .split_once(':')
            .ok_or_else(|| Error::bad_input("expected <kernel>:<n>"))?;
        let n: u64 = n
            .trim()
            .parse()
            .map_err(|e| Error::bad_input(format!("n is not a number: {e}")))?;
        let r = match kernel {
            "loop" => xorshift_loop(n),
            "arith" => arith(n),
            "recursion" => fib(n),
            other => return Err(Error::bad_input(format!("unknown kernel {other:?}"))),
        };
        Ok(r.to_string())
    }
}

soma_sdk::capsule!(Kernels);
