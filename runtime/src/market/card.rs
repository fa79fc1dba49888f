//! The measured cost card of a listing: per version, over the last
//! [`WINDOW_DAYS`] UTC days, how often it was called, how often that
//! succeeded, how long calls took (p50/p95), and what they burned and cost
//! per call — all read from the ledger's per-capsule daily call statistics
//! (`ledger::calls`), keyed by the version's component digest. Nothing
//! here is estimated or configured: a version nobody called shows zeros
//! and no rates.
//!
//! Where each number comes from: `docs/marketplace.md`, "Cost card".

use serde::Serialize;

use crate::{
    ledger::{CallDay, KEPT_DAYS, LatencyHistogram, LedgerError, LedgerStore, day_of},
    market::{
        error::MarketError,
        store::{Market, SubmissionState},
    },
};

/// The days a card covers: today (UTC) and the 29 before.
pub const WINDOW_DAYS: i64 = 30;

const _: () = assert!(WINDOW_DAYS <= KEPT_DAYS, "the ledger keeps the window");

const DAY_MS: u64 = 86_400_000;

/// One version's (or one set of component digests') calls over the window.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CostCard {
    /// The first day covered, `YYYY-MM-DD` (UTC).
    pub from: String,
    /// The last day covered (today), `YYYY-MM-DD` (UTC).
    pub to: String,
    /// Metered calls.
    pub calls: u64,
    /// Calls that failed (any failure class: capsule error, trap, limit).
    pub failures: u64,
    /// `(calls − failures) / calls`; `None` without calls.
    pub success_rate: Option<f64>,
    /// Median wall time per call, µs: the upper bound of the latency bucket
    /// holding it (buckets are ≤ 19 % wide); `None` without calls.
    pub latency_p50_us: Option<u64>,
    /// 95th-percentile wall time per call, µs (upper bound, as p50).
    pub latency_p95_us: Option<u64>,
    /// Fuel burned in all.
    pub fuel: u64,
    /// Fuel per call.
    pub fuel_per_call: Option<f64>,
    /// LLM tokens (prompt + completion) in all.
    pub tokens: u64,
    /// LLM tokens per call.
    pub tokens_per_call: Option<f64>,
    /// Marketplace fees charged in all, micro-units.
    pub fee_micros: u64,
    /// Everything charged for the calls (fuel, wall time, tokens, fees at
    /// the prices in force), micro-units.
    pub cost_micros: u64,
    /// `cost_micros / calls`.
    pub cost_per_call_micros: Option<f64>,
}

impl CostCard {
    fn from_days(from: String, to: String, sum: &CallDay) -> Self {
        let calls = sum.calls;
        // A failure recorded for a call whose charge never committed (a
        // crash in between) must not make the rate negative.
        let failures = sum.failures.min(calls);
        let per_call = |total: u64| (calls > 0).then(|| total as f64 / calls as f64);
        let quantile = |q| sum.latency.quantile(q).map(|(_, high)| high);
        let tokens = sum.tokens_in.saturating_add(sum.tokens_out);
        Self {
            from,
            to,
            calls,
            failures,
            success_rate: per_call(calls - failures),
            latency_p50_us: quantile(0.5),
            latency_p95_us: quantile(0.95),
            fuel: sum.fuel,
            fuel_per_call: per_call(sum.fuel),
            tokens,
            tokens_per_call: per_call(tokens),
            fee_micros: sum.fee_micros,
            cost_micros: sum.cost_micros,
            cost_per_call_micros: per_call(sum.cost_micros),
        }
    }
}

/// The cost card of the calls of `digests` (component digests,
/// `sha256:…`; several are summed) over the [`WINDOW_DAYS`] UTC days
/// ending with the day of `now_ms`. Cost: one range read of at most 30
/// small rows per digest.
pub fn cost_card(
    ledger: &dyn LedgerStore,
    digests: &[&str],
    now_ms: u64,
) -> Result<CostCard, LedgerError> {
    let today = crate::ledger::day_number_of(now_ms);
    let first = today - (WINDOW_DAYS - 1);
    let mut sum = CallDay::default();
    for digest in digests {
        for (_, day) in ledger.call_days(digest, first, today)? {
            sum.merge(&day);
        }
    }
    let first_ms = now_ms.saturating_sub(DAY_MS * (WINDOW_DAYS as u64 - 1));
    Ok(CostCard::from_days(day_of(first_ms), day_of(now_ms), &sum))
}

/// One published version of a listing with its card.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct VersionCard {
    /// `author/name`.
    pub listing: String,
    /// The version.
    pub version: String,
    /// Its state (published, yanked or deprecated: all still callable by
    /// digest).
    #[schema(value_type = String)]
    pub state: SubmissionState,
    /// The component digest its calls are recorded under.
    pub component: String,
    /// Its calls over the window.
    pub card: CostCard,
}

/// Why a card could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    /// The catalog could not be read.
    #[error(transparent)]
    Market(#[from] MarketError),
    /// The ledger could not be read.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// No published version matches.
    #[error(
        "{name}{} has no published version in this marketplace (see `soma market ls {name}`)",
        version.as_ref().map(|v| format!("@{v}")).unwrap_or_default()
    )]
    NotPublished {
        /// `author/name`.
        name: String,
        /// The version asked for, if any.
        version: Option<String>,
    },
}

/// The cards of every published version of `name` (`author/name`), newest
/// first, or of `version` only. Cost: one catalog range read, then
/// [`cost_card`] per version.
pub fn version_cards(
    market: &Market,
    ledger: &dyn LedgerStore,
    name: &str,
    version: Option<&semver::Version>,
    now_ms: u64,
) -> Result<Vec<VersionCard>, CardError> {
    let mut versions: Vec<_> = market
        .versions(Some(name))?
        .into_iter()
        .filter(|s| s.state.was_published())
        .filter(|s| version.is_none_or(|v| s.listing.version == *v))
        .collect();
    if versions.is_empty() {
        return Err(CardError::NotPublished {
            name: name.to_owned(),
            version: version.map(ToString::to_string),
        });
    }
    versions.reverse();
    versions
        .into_iter()
        .map(|s| {
            let component = s.component.to_string();
            let card = cost_card(ledger, &[&component], now_ms)?;
            Ok(VersionCard {
                listing: s.listing.name.clone(),
                version: s.listing.version.to_string(),
                state: s.state,
                component,
                card,
            })
        })
        .collect()
}

/// The bucket bounds `(low, high)` µs a reported latency (an upper bound
/// from a card) stands for: the true percentile is within.
pub fn latency_bounds(reported_us: u64) -> (u64, u64) {
    LatencyHistogram::bounds(LatencyHistogram::bucket(reported_us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_card_without_calls_has_zeros_and_no_rates() {
        let card = CostCard::from_days("a".into(), "b".into(), &CallDay::default());
        assert_eq!(card.calls, 0);
        assert_eq!(card.success_rate, None);
        assert_eq!(card.latency_p50_us, None);
        assert_eq!(card.cost_per_call_micros, None);
    }

    #[test]
    fn failures_never_exceed_calls() {
        let day = CallDay {
            calls: 2,
            failures: 3,
            ..CallDay::default()
        };
        let card = CostCard::from_days("a".into(), "b".into(), &day);
        assert_eq!(card.failures, 2);
        assert_eq!(card.success_rate, Some(0.0));
    }
}
