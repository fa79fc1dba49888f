//! Marketplace fees on the call path: the [`Tariff`] of a priced capsule
//! (looked up through a [`FeeSchedule`] the marketplace installs), its
//! worst case to reserve before the call, and the `marketplace-fee` ledger
//! entries of a finished call.
//!
//! The schedule is a trait defined here and implemented by
//! `market::pricing::PriceBook` (the `llm::Meter` pattern): the meter never
//! names the marketplace. With no schedule installed a call pays one
//! `OnceLock` read.
//!
//! What is charged (documented in `docs/marketplace.md`):
//! - only a **successful** call pays a fee (a capsule error, a trap or any
//!   limit kill — even one caused by the caller's own limits — pays none:
//!   the buyer still pays the call's fuel, wall time and LLM tokens);
//! - per-call: one fee; per-1k-tokens: the LLM tokens the capsule used in
//!   the call, at most `max_billable_tokens`; per-event: each kept event whose
//!   name is in the price table, at most `max_billable_events` (events past
//!   the cap are delivered but not billed).
//!
//! Idempotency keys: kind `marketplace-fee` (so no collision with the fuel,
//! wall-time or LLM entries of the same attempt), seq 0 for per-call and
//! per-1k-tokens, and the event name's index in the price table for
//! per-event (one entry per billed event name).

use std::{collections::BTreeMap, sync::Arc};

use soma_host_api::{events::Event, llm::Spender};

use crate::ledger::{Entry, Kind, fee_tags};

/// How a listing version's calls are charged, in micro-units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TariffModel {
    /// A fixed amount per successful call.
    PerCall {
        /// Micro-units per call.
        micros: u64,
    },
    /// An amount per 1000 LLM tokens the capsule used in the call.
    PerKiloTokens {
        /// Micro-units per 1000 tokens.
        micros: u64,
    },
    /// An amount per billable event.
    PerEvent {
        /// Event name → micro-units; only these names are billable.
        events: BTreeMap<String, u64>,
    },
}

/// The price in force for one call of a priced marketplace version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tariff {
    /// `author/name@version`.
    pub listing_version: String,
    /// The price.
    pub model: TariffModel,
    /// The author's share of each fee, percent (the rest is the platform's).
    pub author_share_percent: u8,
    /// Most events billed per call (per-event).
    pub max_billable_events: u32,
    /// Most tokens billed per call (per-1k-tokens).
    pub max_billable_tokens: u64,
}

impl Tariff {
    /// The most one call can be charged: the per-call price; the token cap
    /// at the token price; the event cap at the highest event price.
    /// Saturating; pure arithmetic.
    pub fn worst_case_micros(&self) -> u64 {
        match &self.model {
            TariffModel::PerCall { micros } => *micros,
            TariffModel::PerKiloTokens { micros } => {
                Entry::cost_for(self.max_billable_tokens, *micros)
            }
            TariffModel::PerEvent { events } => events
                .values()
                .max()
                .copied()
                .unwrap_or(0)
                .saturating_mul(u64::from(self.max_billable_events)),
        }
    }

    /// Whether fees depend on the LLM tokens of the call.
    pub fn counts_tokens(&self) -> bool {
        matches!(self.model, TariffModel::PerKiloTokens { .. })
    }

    /// The fee entries of one finished call: nothing for a failed call;
    /// `tokens` is what the capsule's LLM calls used in it, `events` what
    /// it emitted (kept events, in order). Cost: one allocation per entry.
    pub fn entries(
        &self,
        spender: &Spender,
        succeeded: bool,
        tokens: u64,
        events: &[Event],
        time_ms: u64,
    ) -> Vec<Entry> {
        if !succeeded {
            return Vec::new();
        }
        let (provider, model) = fee_tags(&self.listing_version, self.author_share_percent);
        let entry = |seq: u32, quantity: u64, unit_price_per_1k: u64| Entry {
            id: 0,
            time_ms,
            tenant: spender.tenant.to_string(),
            run: spender.run.to_string(),
            node: spender.node.to_string(),
            attempt: spender.attempt,
            seq,
            capsule: spender.capsule.to_string(),
            kind: Kind::MarketplaceFee,
            quantity,
            unit_price_micros: unit_price_per_1k,
            cost_micros: Entry::cost_for(quantity, unit_price_per_1k),
            provider: Some(provider.clone()),
            model: Some(model.clone()),
            estimated: false,
        };
        match &self.model {
            TariffModel::PerCall { micros } => vec![entry(0, 1, micros.saturating_mul(1000))],
            TariffModel::PerKiloTokens { micros } => {
                let billed = tokens.min(self.max_billable_tokens);
                if billed == 0 {
                    return Vec::new();
                }
                vec![entry(0, billed, *micros)]
            }
            TariffModel::PerEvent { events: prices } => {
                let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
                let mut left = u64::from(self.max_billable_events);
                for e in events {
                    if left == 0 {
                        break;
                    }
                    if prices.contains_key(e.name.as_str()) {
                        *counts.entry(e.name.as_str()).or_default() += 1;
                        left -= 1;
                    }
                }
                prices
                    .iter()
                    .enumerate()
                    .filter_map(|(i, (name, price))| {
                        let n = counts.get(name.as_str()).copied()?;
                        let seq = u32::try_from(i).unwrap_or(u32::MAX);
                        Some(entry(seq, n, price.saturating_mul(1000)))
                    })
                    .collect()
            }
        }
    }
}

/// Where the meter learns the price of a capsule: implemented by the
/// marketplace's price book and installed with
/// [`super::BudgetLedger::set_fee_schedule`].
pub trait FeeSchedule: Send + Sync + std::fmt::Debug {
    /// The tariff in force for component `capsule` (`sha256:<hex>`) for a
    /// run that started at `run_started_ms` (`None`: now); `None` for a
    /// free or unlisted capsule. Called once per capsule call: must be a
    /// lock-free-ish map lookup on the hot path.
    fn tariff(&self, capsule: &str, run_started_ms: Option<u64>) -> Option<Arc<Tariff>>;

    /// Prices or publications changed in this process (a version was just
    /// published): reload now rather than at the next periodic refresh, so
    /// the first calls after a publication are charged. Blocks for the
    /// reload; failures are the schedule's to report.
    fn changed(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spender() -> Spender {
        Spender {
            tenant: "buyer".into(),
            run: "r1".into(),
            node: "n".into(),
            attempt: 2,
            capsule: "sha256:c".into(),
        }
    }

    fn tariff(model: TariffModel) -> Tariff {
        Tariff {
            listing_version: "acme/sum@1.0.0".into(),
            model,
            author_share_percent: 80,
            max_billable_events: 3,
            max_billable_tokens: 1000,
        }
    }

    fn event(name: &str) -> Event {
        Event {
            name: name.into(),
            payload: serde_json::Value::Null,
        }
    }

    #[test]
    fn per_call_charges_one_fee_and_only_on_success() {
        let t = tariff(TariffModel::PerCall { micros: 2500 });
        assert_eq!(t.worst_case_micros(), 2500);
        assert!(t.entries(&spender(), false, 0, &[], 1).is_empty());
        let e = t.entries(&spender(), true, 0, &[], 1);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].quantity, e[0].cost_micros, e[0].seq), (1, 2500, 0));
        assert_eq!(e[0].kind, Kind::MarketplaceFee);
        assert_eq!(e[0].model.as_deref(), Some("acme/sum@1.0.0"));
        assert_eq!(e[0].provider.as_deref(), Some("market:80"));
        assert_eq!(e[0].key(), "r1/n/2/0/marketplace-fee");
    }

    #[test]
    fn per_token_fees_are_capped_and_rounded_up() {
        let t = tariff(TariffModel::PerKiloTokens { micros: 3000 });
        assert_eq!(t.worst_case_micros(), 3000, "1000 tokens at 3000/1k");
        let e = t.entries(&spender(), true, 333, &[], 1);
        assert_eq!((e[0].quantity, e[0].cost_micros), (333, 999));
        let e = t.entries(&spender(), true, 1, &[], 1);
        assert_eq!(e[0].cost_micros, 3, "ceil(1 × 3000 / 1000)");
        let e = t.entries(&spender(), true, 5000, &[], 1);
        assert_eq!((e[0].quantity, e[0].cost_micros), (1000, 3000), "capped");
        assert!(
            t.entries(&spender(), true, 0, &[], 1).is_empty(),
            "no tokens, no fee"
        );
    }

    #[test]
    fn only_priced_events_are_billed_up_to_the_cap() {
        let t = tariff(TariffModel::PerEvent {
            events: BTreeMap::from([("found".to_owned(), 100), ("summarized".to_owned(), 700)]),
        });
        assert_eq!(t.worst_case_micros(), 2100, "3 × the highest price");
        let evs = [
            event("progress"),
            event("summarized"),
            event("found"),
            event("found"),
            event("found"),
        ];
        let e = t.entries(&spender(), true, 0, &evs, 1);
        // The cap (3) is reached at the second `found`.
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].seq, e[0].quantity, e[0].cost_micros), (0, 2, 200));
        assert_eq!((e[1].seq, e[1].quantity, e[1].cost_micros), (1, 1, 700));
        assert_ne!(e[0].key(), e[1].key());
        assert!(
            t.entries(&spender(), true, 0, &[event("progress")], 1)
                .is_empty()
        );
    }
}
