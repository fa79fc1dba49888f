//! The metering hook: how the `llm` capability asks the host's budgets for
//! permission before a provider call and reports what the call cost after.
//!
//! The runtime implements [`Meter`] over its budgets and ledger; hosts
//! without budgets use [`NoMeter`].

use std::sync::{Arc, OnceLock};

/// Who is spending, for budgets and the ledger.
#[derive(Debug, Clone)]
pub struct Spender {
    /// The tenant the run belongs to.
    pub tenant: Arc<str>,
    /// The run id.
    pub run: Arc<str>,
    /// The DAG node being executed.
    pub node: Arc<str>,
    /// Which attempt of the node this is (0 for the first).
    pub attempt: u32,
    /// The capsule's digest.
    pub capsule: Arc<str>,
}

impl Spender {
    /// A spender for hosts without tenants or DAGs (e.g. `soma run`):
    /// tenant `local`, node `-`, attempt 0. Cost: two `Arc` clones.
    pub fn local(run: Arc<str>, capsule: Arc<str>) -> Self {
        static LOCAL: OnceLock<Arc<str>> = OnceLock::new();
        static NODE: OnceLock<Arc<str>> = OnceLock::new();
        Self {
            tenant: LOCAL.get_or_init(|| "local".into()).clone(),
            run,
            node: NODE.get_or_init(|| "-".into()).clone(),
            attempt: 0,
            capsule,
        }
    }
}

/// What one chat call cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metered {
    /// The provider that answered (its configured `name`).
    pub provider: String,
    /// The model that answered (as the provider reported it, else the resolved model).
    pub model: String,
    /// Prompt tokens (the provider's count, or ours when `estimated`).
    pub prompt_tokens: u64,
    /// Completion tokens (the provider's count, or ours when `estimated`).
    pub completion_tokens: u64,
    /// True when the provider reported no usage and the host counted with tiktoken.
    pub estimated: bool,
    /// Price of 1000 prompt tokens, in micro-units, at the time of the call.
    pub input_price_per_1k_micros: u64,
    /// Price of 1000 completion tokens, in micro-units, at the time of the call.
    pub output_price_per_1k_micros: u64,
    /// What the call cost, in micro-units; see [`cost_micros`].
    pub cost_micros: u64,
    /// Index of this chat call within one capsule call (0, 1, 2, …); with
    /// the [`Spender`] it makes a unique ledger idempotency key.
    pub seq: u32,
    /// When the provider answered (ms since the Unix epoch): the ledger
    /// entries' time.
    pub time_ms: u64,
}

/// A hold on budget taken by [`Meter::reserve`]; handed back exactly once,
/// to [`Meter::settle`] or [`Meter::release`].
#[derive(Debug)]
pub struct Reservation {
    /// The meter's id for this hold.
    pub id: u64,
    /// Tokens held.
    pub tokens: u64,
    /// Micro-units held.
    pub micros: u64,
}

/// Budget enforcement and the ledger, implemented by the runtime.
///
/// Called from inside a wasm host call on the calling thread, so every
/// method should be quick (a lock and a counter; `settle` one durable write).
pub trait Meter: Send + Sync + std::fmt::Debug {
    /// Before a call: reserve `tokens` (estimated prompt + max_tokens) and
    /// `micros` against every budget that applies. `Err(reason)` → the
    /// capsule gets `budget-exceeded(reason)` and no request is sent.
    fn reserve(&self, spender: &Spender, tokens: u64, micros: u64) -> Result<Reservation, String>;
    /// After a call (success): settle the actual usage (writes the ledger
    /// durably) and release the rest of the reservation. `Err(reason)` → the
    /// capsule gets `unavailable` (the answer is withheld when it cannot be
    /// recorded).
    fn settle(
        &self,
        spender: &Spender,
        reservation: Reservation,
        metered: &Metered,
    ) -> Result<(), String>;
    /// After a failed call: release the reservation.
    fn release(&self, spender: &Spender, reservation: Reservation);
}

/// A [`Meter`] for hosts without budgets: every reservation succeeds and
/// nothing is recorded. Costs nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMeter;

impl Meter for NoMeter {
    fn reserve(&self, _: &Spender, tokens: u64, micros: u64) -> Result<Reservation, String> {
        Ok(Reservation {
            id: 0,
            tokens,
            micros,
        })
    }

    fn settle(&self, _: &Spender, _: Reservation, _: &Metered) -> Result<(), String> {
        Ok(())
    }

    fn release(&self, _: &Spender, _: Reservation) {}
}

/// Now, in ms since the Unix epoch (0 on a clock before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The cost in micro-units of `prompt` and `completion` tokens at the given
/// per-1000-token prices: each side is rounded up to a whole micro-unit
/// separately, `ceil(prompt × input / 1000) + ceil(completion × output / 1000)`,
/// saturating at `u64::MAX`. Integer arithmetic only.
pub fn cost_micros(
    prompt: u64,
    completion: u64,
    input_per_1k_micros: u64,
    output_per_1k_micros: u64,
) -> u64 {
    let side = |tokens: u64, price: u64| (u128::from(tokens) * u128::from(price)).div_ceil(1000);
    let total = side(prompt, input_per_1k_micros) + side(completion, output_per_1k_micros);
    u64::try_from(total).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_each_side_up_per_1k() {
        assert_eq!(cost_micros(0, 0, 1_000, 2_000), 0);
        assert_eq!(cost_micros(1000, 1000, 1_000, 2_000), 3_000);
        // 1 token at 1 micro/1k is 0.001 micro → 1; same for the output side.
        assert_eq!(cost_micros(1, 1, 1, 1), 2);
        assert_eq!(cost_micros(1500, 10, 3, 7), 5 + 1);
        assert_eq!(
            cost_micros(u64::MAX, u64::MAX, u64::MAX, u64::MAX),
            u64::MAX
        );
    }
}
