//! Payouts: what each author earned in a month, per listing, recomputed
//! from the ledger's `marketplace-fee` entries and their revenue splits
//! (`ledger::fee`), and the marketplace side of `soma ledger check`.
//!
//! **Revenue is fees.** A listing's line is the sum of its fees (revenue),
//! the platform's part and the author's part (net). Nothing else is
//! subtracted — not the capsule's own fuel, wall time or LLM tokens, which
//! the *buyer* pays — so a line is never negative and one capsule's costs
//! can never reduce another capsule's payout. Each line is reported on its
//! own; an author's total is the sum of the lines.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{
    error::MarketError,
    pricing::{self, PriceHistory},
    records::Records,
    store::Market,
};
use crate::ledger::{FeeProblem, LedgerError, LedgerStore};

/// Why a payout report or fee check failed.
#[derive(Debug, thiserror::Error)]
pub enum PayoutError {
    /// The ledger could not be read (or the month is not `YYYY-MM`).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The marketplace tables could not be read.
    #[error(transparent)]
    Market(#[from] MarketError),
}

/// One listing's month.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ListingPayout {
    /// `author/name`.
    pub listing: String,
    /// The versions that were charged, in semver-text order.
    pub versions: Vec<String>,
    /// Charged calls (distinct run/node/attempt).
    pub calls: u64,
    /// Fee entries (a per-event call has one per billed event name).
    pub fees: u64,
    /// What buyers paid, micro-units.
    pub revenue_micros: u64,
    /// The platform's share.
    pub platform_micros: u64,
    /// The author's share: revenue − platform share (never negative).
    pub net_micros: u64,
}

/// One author's month.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuthorPayout {
    /// The author (namespace).
    pub author: String,
    /// One line per listing, by name.
    pub listings: Vec<ListingPayout>,
    /// Sum of the lines' revenue.
    pub revenue_micros: u64,
    /// Sum of the lines' platform share.
    pub platform_micros: u64,
    /// Sum of the lines' net: what the author is paid.
    pub net_micros: u64,
}

/// A month's payouts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Payouts {
    /// `YYYY-MM` (UTC).
    pub month: String,
    /// One per author with fees, by name.
    pub authors: Vec<AuthorPayout>,
    /// Sum over authors.
    pub revenue_micros: u64,
    /// Sum over authors.
    pub platform_micros: u64,
    /// Sum over authors.
    pub net_micros: u64,
}

/// An empty report for `month` (nobody's authors to show), after checking
/// that `month` is `YYYY-MM`. Reads nothing.
pub fn report_empty(month: &str) -> Result<Payouts, PayoutError> {
    crate::ledger::check_month(month)?;
    Ok(Payouts {
        month: month.to_owned(),
        ..Payouts::default()
    })
}

/// The payouts of `month` (`YYYY-MM`, UTC), of every author or only
/// `author`. A plain sync function: an async handler calls it in
/// `spawn_blocking`.
///
/// Cost: a range of the month's fee splits plus one ledger lookup per fee.
pub fn report(
    ledger: &dyn LedgerStore,
    month: &str,
    author: Option<&str>,
) -> Result<Payouts, PayoutError> {
    #[derive(Default)]
    struct Acc {
        versions: BTreeSet<String>,
        calls: BTreeSet<(String, String, u32)>,
        fees: u64,
        revenue: u64,
        platform: u64,
        net: u64,
    }
    let mut by: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for (split, entry) in ledger.fees(Some(month))? {
        if author.is_some_and(|a| a != split.author) {
            continue;
        }
        let acc = by.entry((split.author, split.listing)).or_default();
        acc.versions.insert(split.version);
        acc.calls.insert((entry.run, entry.node, entry.attempt));
        acc.fees += 1;
        acc.revenue = acc.revenue.saturating_add(split.fee_micros);
        acc.platform = acc.platform.saturating_add(split.platform_micros);
        acc.net = acc.net.saturating_add(split.author_micros);
    }
    let mut payouts = Payouts {
        month: month.to_owned(),
        ..Payouts::default()
    };
    for ((author, listing), acc) in by {
        let line = ListingPayout {
            listing,
            versions: acc.versions.into_iter().collect(),
            calls: acc.calls.len() as u64,
            fees: acc.fees,
            revenue_micros: acc.revenue,
            platform_micros: acc.platform,
            net_micros: acc.net,
        };
        if payouts.authors.last().is_none_or(|a| a.author != author) {
            payouts.authors.push(AuthorPayout {
                author,
                ..AuthorPayout::default()
            });
        }
        if let Some(a) = payouts.authors.last_mut() {
            a.revenue_micros = a.revenue_micros.saturating_add(line.revenue_micros);
            a.platform_micros = a.platform_micros.saturating_add(line.platform_micros);
            a.net_micros = a.net_micros.saturating_add(line.net_micros);
            a.listings.push(line);
        }
    }
    for a in &payouts.authors {
        payouts.revenue_micros = payouts.revenue_micros.saturating_add(a.revenue_micros);
        payouts.platform_micros = payouts.platform_micros.saturating_add(a.platform_micros);
        payouts.net_micros = payouts.net_micros.saturating_add(a.net_micros);
    }
    Ok(payouts)
}

/// The marketplace side of `soma ledger check`: every fee was charged for
/// a version that was published at that time, under this component
/// digest, at a price it had (its listing price or one of its listing's
/// price changes that took effect). The ledger's own check covers the
/// splits ([`LedgerStore::check_integrity`]).
///
/// Cost: a scan of the fee splits, the versions and the price histories.
pub fn check_fees(
    ledger: &dyn LedgerStore,
    records: &Records,
) -> Result<Vec<FeeProblem>, PayoutError> {
    let fees = ledger.fees(None)?;
    if fees.is_empty() {
        return Ok(Vec::new());
    }
    let versions: BTreeMap<String, _> = Market::new(records.clone())
        .versions(None)?
        .into_iter()
        .map(|v| (v.id(), v))
        .collect();
    let histories = pricing::histories(records)?;
    let empty = PriceHistory::default();
    let mut problems = Vec::new();
    for (split, entry) in fees {
        let listing_version = format!("{}@{}", split.listing, split.version);
        let problem = |reason: String| FeeProblem::NotPublished {
            id: split.id,
            listing_version: listing_version.clone(),
            reason,
        };
        let Some(v) = versions.get(&listing_version) else {
            problems.push(problem("no such version in the marketplace".into()));
            continue;
        };
        let Some(published) = v.published_ms else {
            problems.push(problem(format!(
                "the version is {} and was never published",
                v.state
            )));
            continue;
        };
        if entry.time_ms < published {
            problems.push(problem(format!(
                "charged at {} ms, before the version was published at {published} ms",
                entry.time_ms
            )));
            continue;
        }
        if v.component.to_string() != entry.capsule {
            problems.push(problem(format!(
                "charged for capsule {}, but the version's component is {}",
                entry.capsule, v.component
            )));
            continue;
        }
        let history = histories.get(&split.listing).unwrap_or(&empty);
        let prices = std::iter::once(&v.listing.price).chain(
            history
                .changes
                .iter()
                .filter(|c| c.takes_effect())
                .map(|c| &c.price),
        );
        let mut prices = prices;
        if !prices.any(|p| unit_prices(p).contains(&entry.unit_price_micros)) {
            problems.push(problem(format!(
                "unit price {} (per 1000 units) is no price the listing ever had",
                entry.unit_price_micros
            )));
        }
    }
    Ok(problems)
}

/// The ledger unit prices (per 1000 units) a price charges at.
fn unit_prices(p: &super::listing::Price) -> Vec<u64> {
    use super::listing::Price;
    match p {
        Price::Free => Vec::new(),
        Price::PerCall { micros } => vec![micros.saturating_mul(1000)],
        Price::PerKiloTokens { micros } => vec![*micros],
        Price::PerEvent { events } => events.values().map(|m| m.saturating_mul(1000)).collect(),
    }
}
