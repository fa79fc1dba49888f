//! Prices in force: each listing's price history (`soma market price set`)
//! with the notice period, and the [`PriceBook`] the call path asks for a
//! capsule's tariff.
//!
//! ```text
//! market_prices   "author/name" → PriceHistory (JSON: every change, oldest first)
//! ```
//!
//! **Whose price, when.** A call pays the tariff of the published
//! marketplace version whose *component digest* is the capsule's, as in
//! force when the call's *run started* (a DAG run's journaled creation
//! time, so a resumed run keeps it; a single call: now). The price in force
//! for a version at time `t` is the most recent, by effective time `≤ t`,
//! of the version's own listing price (effective at its publication) and
//! the listing's price changes; before publication there is none (no fee).
//! A yanked or deprecated version keeps charging its pinned users.
//!
//! **Changes.** A change that lowers (or keeps) the price of every
//! published version takes effect at once; one that raises any of them —
//! a higher amount, a new billable event, a different priced model, or a
//! free listing becoming priced — takes effect `[market] price_notice_days`
//! after it is announced. A newer change supersedes a pending one (which
//! then never takes effect); history is never rewritten otherwise, so
//! every fee can be recomputed.
//!
//! **The book.** [`PriceBook`] maps component digest → the version's
//! timeline of tariffs (precomputed), so a lookup is one read lock, one
//! hash lookup and a binary search; an unlisted capsule stops at the hash
//! miss. An installed book is reloaded from the database every `[market]
//! price_refresh_secs` by a background thread (publications and price
//! changes made by another process; never on the call path), and at once
//! after [`PriceBook::set_price`].

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{
    error::{MarketError, storage},
    listing::{Price, check_price},
    records::{Records, Table},
    store::{Market, Submission},
};
use crate::{
    config::market::MarketConfig,
    meter::{FeeSchedule, Tariff, TariffModel},
};

/// Milliseconds in a day.
const DAY_MS: u64 = 86_400_000;

/// Why a price could not be changed or read.
#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    /// The marketplace tables failed or the listing does not exist.
    #[error(transparent)]
    Market(#[from] MarketError),
    /// The new price is not valid.
    #[error("the price of {name} cannot be {problem}")]
    BadPrice {
        /// `author/name`.
        name: String,
        /// What is wrong and what to write instead.
        problem: String,
    },
    /// No version of the listing is published: there is nothing to price
    /// yet (a version's first price is its `listing.toml`'s).
    #[error("{name} has no published version; its first price is the [price] of its listing.toml")]
    NotPublished {
        /// `author/name`.
        name: String,
    },
}

/// One price change of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceChange {
    /// The listing's price version: 1, 2, … (0 is each version's own listing price).
    pub seq: u32,
    /// The new price.
    pub price: Price,
    /// When it was announced (Unix ms).
    pub announced_ms: u64,
    /// When it takes (took) effect (Unix ms).
    pub effective_ms: u64,
    /// Whether it raised the price of some published version (then it
    /// waited for the notice period).
    pub increase: bool,
    /// Set when a later change was announced before this one took effect:
    /// it never did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_ms: Option<u64>,
}

impl PriceChange {
    /// Whether it is (or will be) in force from `effective_ms` on.
    pub fn takes_effect(&self) -> bool {
        self.superseded_ms.is_none_or(|s| s >= self.effective_ms)
    }
}

/// Every price change of one listing, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceHistory {
    /// `author/name`.
    pub listing: String,
    /// The changes.
    pub changes: Vec<PriceChange>,
}

/// The price of `version` in force at `at_ms`, with its price version
/// (0: the version's own listing price); `None` before it was published.
pub fn price_at<'a>(
    version: &'a Submission,
    history: &'a PriceHistory,
    at_ms: u64,
) -> Option<(&'a Price, u32)> {
    let published = version.published_ms?;
    if at_ms < published {
        return None;
    }
    let mut best: (u64, u32, &Price) = (published, 0, &version.listing.price);
    for c in history.changes.iter().filter(|c| c.takes_effect()) {
        if c.effective_ms <= at_ms && (c.effective_ms, c.seq) >= (best.0, best.1) {
            best = (c.effective_ms, c.seq, &c.price);
        }
    }
    Some((best.2, best.1))
}

/// Whether going from `old` to `new` raises what some call can be charged.
pub fn is_increase(old: &Price, new: &Price) -> bool {
    match (old, new) {
        (_, Price::Free) => false,
        (Price::PerCall { micros: a }, Price::PerCall { micros: b })
        | (Price::PerKiloTokens { micros: a }, Price::PerKiloTokens { micros: b }) => b > a,
        (Price::PerEvent { events: a }, Price::PerEvent { events: b }) => b
            .iter()
            .any(|(name, price)| a.get(name).is_none_or(|old| price > old)),
        // Free → priced, or another priced model: not comparable, so notice.
        _ => true,
    }
}

/// Read the price history of `name` (`author/name`); empty if it never changed.
/// Cost: one read transaction.
pub fn history(records: &Records, name: &str) -> Result<PriceHistory, MarketError> {
    records.read(Table::Prices, |table| {
        stored_history(table.get(name)?, name)
    })
}

/// A stored price history (or none: no change yet).
fn stored_history(bytes: Option<Vec<u8>>, name: &str) -> Result<PriceHistory, MarketError> {
    match bytes {
        Some(v) => decode_history(name, &v),
        None => Ok(PriceHistory {
            listing: name.to_owned(),
            changes: Vec::new(),
        }),
    }
}

fn decode_history(name: &str, bytes: &[u8]) -> Result<PriceHistory, MarketError> {
    serde_json::from_slice(bytes).map_err(|e| MarketError::Corrupt {
        key: name.to_owned(),
        message: e.to_string(),
    })
}

/// Every listing's price history. Cost: one read transaction, a scan.
pub fn histories(records: &Records) -> Result<HashMap<String, PriceHistory>, MarketError> {
    records.read(Table::Prices, |table| {
        let mut out = HashMap::new();
        table.scan("", &mut |k, v| {
            out.insert(k.to_owned(), decode_history(k, v)?);
            Ok(true)
        })?;
        Ok(out)
    })
}

/// Record a price change of `name` announced at `now_ms`: at once if it
/// raises no published version's price in force, else after `notice_days`.
/// Pending changes are superseded. Cost: one durable write transaction
/// (plus a read of the listing's versions).
pub fn set_price(
    records: &Records,
    name: &str,
    price: Price,
    now_ms: u64,
    notice_days: u32,
) -> Result<PriceChange, PricingError> {
    check_price(&price).map_err(|problem| PricingError::BadPrice {
        name: name.to_owned(),
        problem,
    })?;
    let versions: Vec<Submission> = Market::new(records.clone())
        .versions(Some(name))?
        .into_iter()
        .filter(|v| v.published_ms.is_some())
        .collect();
    if versions.is_empty() {
        return Err(PricingError::NotPublished {
            name: name.to_owned(),
        });
    }
    let change = records.write(Table::Prices, |table| {
        let mut history = stored_history(table.get(name)?, name)?;
        let increase = versions.iter().any(|v| {
            price_at(v, &history, now_ms).is_some_and(|(old, _)| is_increase(old, &price))
        });
        let effective_ms = if increase {
            now_ms.saturating_add(u64::from(notice_days).saturating_mul(DAY_MS))
        } else {
            now_ms
        };
        for c in &mut history.changes {
            if c.superseded_ms.is_none() && c.effective_ms > now_ms {
                c.superseded_ms = Some(now_ms);
            }
        }
        let seq = history
            .changes
            .last()
            .map_or(1, |c| c.seq.saturating_add(1));
        let change = PriceChange {
            seq,
            price,
            announced_ms: now_ms,
            effective_ms,
            increase,
            superseded_ms: None,
        };
        history.changes.push(change.clone());
        let bytes = serde_json::to_vec(&history).map_err(storage)?;
        table.put(name, &bytes)?;
        Ok(change)
    })?;
    Ok(change)
}

/// The tariff of `price` (`None` when free) under the operator's caps and share.
fn tariff_of(price: &Price, listing_version: &str, config: &MarketConfig) -> Option<Arc<Tariff>> {
    let model = match price {
        Price::Free => return None,
        Price::PerCall { micros } => TariffModel::PerCall { micros: *micros },
        Price::PerKiloTokens { micros } => TariffModel::PerKiloTokens { micros: *micros },
        Price::PerEvent { events } => TariffModel::PerEvent {
            events: events.clone(),
        },
    };
    Some(Arc::new(Tariff {
        listing_version: listing_version.to_owned(),
        model,
        author_share_percent: config.author_share_percent.min(100),
        max_billable_events: config.max_billable_events_per_call,
        max_billable_tokens: config.max_billable_tokens_per_call,
    }))
}

/// One version's tariffs over time: `(effective from, tariff)`, sorted.
#[derive(Debug, Default)]
struct Timeline {
    published_ms: u64,
    steps: Vec<(u64, Option<Arc<Tariff>>)>,
}

impl Timeline {
    fn at(&self, at_ms: u64) -> Option<Arc<Tariff>> {
        if at_ms < self.published_ms {
            return None;
        }
        let i = self.steps.partition_point(|(from, _)| *from <= at_ms);
        self.steps.get(i.checked_sub(1)?)?.1.clone()
    }
}

/// Component digest → timeline.
#[derive(Debug, Default)]
struct Book {
    by_component: HashMap<String, Timeline>,
}

impl Book {
    fn load(records: &Records, config: &MarketConfig) -> Result<Self, MarketError> {
        let versions = Market::new(records.clone()).versions(None)?;
        let histories = histories(records)?;
        let empty = PriceHistory::default();
        let mut by_component = HashMap::new();
        for v in versions {
            let Some(published) = v.published_ms else {
                continue;
            };
            let id = v.id();
            let history = histories.get(&v.listing.name).unwrap_or(&empty);
            let mut points: Vec<u64> = vec![published];
            points.extend(
                history
                    .changes
                    .iter()
                    .filter(|c| c.takes_effect() && c.effective_ms > published)
                    .map(|c| c.effective_ms),
            );
            points.sort_unstable();
            points.dedup();
            let steps: Vec<(u64, Option<Arc<Tariff>>)> = points
                .into_iter()
                .map(|t| {
                    let tariff =
                        price_at(&v, history, t).and_then(|(p, _)| tariff_of(p, &id, config));
                    (t, tariff)
                })
                .collect();
            if steps.iter().all(|(_, t)| t.is_none()) {
                continue; // free forever: the call path stops at the hash miss
            }
            by_component.insert(
                v.component.to_string(),
                Timeline {
                    published_ms: published,
                    steps,
                },
            );
        }
        Ok(Self { by_component })
    }
}

/// The call path's view of marketplace prices: component digest → tariff
/// in force at a run's start. Cheap to share (`Arc`); install it in an
/// engine with [`PriceBook::install`].
#[derive(Debug)]
pub struct PriceBook {
    records: Records,
    config: MarketConfig,
    book: RwLock<Arc<Book>>,
}

impl PriceBook {
    /// A book over the marketplace tables in `records`, loaded now.
    /// Cost: a scan of the versions and price histories.
    pub fn load(records: impl Into<Records>, config: &MarketConfig) -> Result<Self, MarketError> {
        let records = records.into();
        let book = Book::load(&records, config)?;
        Ok(Self {
            records,
            config: config.clone(),
            book: RwLock::new(Arc::new(book)),
        })
    }

    /// Load the book over the engine's database and install it in the
    /// engine's meter, so every call of a priced capsule pays its fee, and
    /// start the thread that reloads it every `price_refresh_secs` (it
    /// exits once the engine and the returned handle are gone). A database
    /// that cannot be read yet gives an empty book that fills at its first
    /// reload. Once per engine.
    pub fn install(engine: &crate::Engine) -> Arc<Self> {
        let records = Records::of(engine);
        let config = &engine.config().market;
        let book = Arc::new(Self::load(records.clone(), config).unwrap_or_else(|e| {
            tracing::warn!(
                "marketplace prices could not be loaded yet ({}); retrying within {} s",
                soma_host_api::error_chain(&e),
                config.price_refresh_secs
            );
            Self {
                records,
                config: config.clone(),
                book: RwLock::new(Arc::new(Book::default())),
            }
        }));
        engine.metering().set_fee_schedule(book.clone());
        let every = Duration::from_secs(config.price_refresh_secs.max(1));
        let weak = Arc::downgrade(&book);
        let spawned = std::thread::Builder::new()
            .name("soma-price-book".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(book) = weak.upgrade() else {
                        return;
                    };
                    if let Err(e) = book.refresh() {
                        tracing::warn!(
                            "marketplace prices could not be reloaded: {}",
                            soma_host_api::error_chain(&e)
                        );
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(
                "marketplace prices will not be reloaded (no thread: {e}); \
                 restart to see new publications and price changes"
            );
        }
        book
    }

    /// Reload from the database now (after a publication or price change).
    /// Cost: a scan of the versions and price histories.
    pub fn refresh(&self) -> Result<(), MarketError> {
        let book = Book::load(&self.records, &self.config)?;
        *self.book.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(book);
        Ok(())
    }

    /// [`set_price`] with this book's notice period, then refresh.
    pub fn set_price(
        &self,
        name: &str,
        price: Price,
        now_ms: u64,
    ) -> Result<PriceChange, PricingError> {
        let change = set_price(
            &self.records,
            name,
            price,
            now_ms,
            self.config.price_notice_days,
        )?;
        self.refresh()?;
        Ok(change)
    }
}

impl FeeSchedule for PriceBook {
    fn tariff(&self, capsule: &str, run_started_ms: Option<u64>) -> Option<Arc<Tariff>> {
        let book = self.book.read().unwrap_or_else(|p| p.into_inner());
        let timeline = book.by_component.get(capsule)?;
        timeline.at(run_started_ms.unwrap_or_else(super::store::now_ms))
    }

    fn changed(&self) {
        if let Err(e) = self.refresh() {
            tracing::warn!(
                "marketplace prices could not be reloaded after a change (retrying within {} s): {}",
                self.config.price_refresh_secs,
                soma_host_api::error_chain(&e)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::market::store::{NewSubmission, SubmissionState};

    const T0: u64 = 1_700_000_000_000;

    fn per_call(micros: u64) -> Price {
        Price::PerCall { micros }
    }

    fn published(
        dir: &std::path::Path,
        version: &str,
        component: &[u8],
        price: Price,
    ) -> (Records, Submission) {
        let data = crate::store::DataDir::new(dir);
        let db = Records::from(data.database().clone());
        let market = Market::new(db.clone());
        let mut listing = crate::market::listing::Listing::parse(
            &format!(
                "name = \"acme/sum\"\nversion = \"{version}\"\nsummary = \"s\"\nlicense = \"MIT\"\n"
            ),
            std::path::Path::new("listing.toml"),
        )
        .expect("listing");
        listing.price = price;
        let id = listing.id();
        market
            .submit(NewSubmission {
                listing,
                repository: "r/acme/sum".into(),
                digest: crate::digest::Digest::of(component),
                component: crate::digest::Digest::of(component),
                size: 1,
            })
            .expect("submit");
        market
            .record_review(&id, true, vec![], serde_json::Value::Null)
            .expect("review");
        let v = market
            .transition(&id, SubmissionState::Published, None, |s| {
                s.published_ms = Some(T0);
            })
            .expect("publish");
        (db, v)
    }

    #[test]
    fn increases_wait_for_the_notice_and_decreases_apply_at_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let (db, v) = published(dir.path(), "1.0.0", b"c1", per_call(1000));
        let day = DAY_MS;
        // Before publication: no price.
        assert_eq!(price_at(&v, &PriceHistory::default(), T0 - 1), None);
        // An increase at day 1 takes effect at day 15.
        let up = set_price(&db, "acme/sum", per_call(3000), T0 + day, 14).expect("set");
        assert!(up.increase);
        assert_eq!(up.effective_ms, T0 + 15 * day);
        let h = history(&db, "acme/sum").expect("history");
        assert_eq!(price_at(&v, &h, T0 + 14 * day), Some((&per_call(1000), 0)));
        assert_eq!(price_at(&v, &h, T0 + 15 * day), Some((&per_call(3000), 1)));
        // A decrease at day 20 applies at once.
        let down = set_price(&db, "acme/sum", per_call(2000), T0 + 20 * day, 14).expect("set");
        assert!(!down.increase);
        assert_eq!(down.effective_ms, T0 + 20 * day);
        let h = history(&db, "acme/sum").expect("history");
        assert_eq!(price_at(&v, &h, T0 + 20 * day), Some((&per_call(2000), 2)));
        // A run that started on day 16 keeps 3000 whenever its calls happen.
        assert_eq!(price_at(&v, &h, T0 + 16 * day), Some((&per_call(3000), 1)));
        // A pending increase superseded by a decrease never takes effect.
        let up = set_price(&db, "acme/sum", per_call(9000), T0 + 21 * day, 14).expect("set");
        assert!(up.increase);
        set_price(&db, "acme/sum", per_call(1500), T0 + 22 * day, 14).expect("set");
        let h = history(&db, "acme/sum").expect("history");
        assert_eq!(h.changes.len(), 4, "history is kept");
        assert_eq!(h.changes[2].superseded_ms, Some(T0 + 22 * day));
        assert_eq!(price_at(&v, &h, T0 + 40 * day), Some((&per_call(1500), 4)));
        // Free is never an increase; a new model or event always is.
        assert!(!is_increase(&per_call(5), &Price::Free));
        assert!(is_increase(&Price::Free, &per_call(5)));
        assert!(is_increase(
            &per_call(5),
            &Price::PerKiloTokens { micros: 1 }
        ));
        let ev = |pairs: &[(&str, u64)]| Price::PerEvent {
            events: pairs
                .iter()
                .map(|(n, p)| ((*n).to_owned(), *p))
                .collect::<BTreeMap<_, _>>(),
        };
        assert!(!is_increase(&ev(&[("a", 5), ("b", 5)]), &ev(&[("a", 4)])));
        assert!(is_increase(&ev(&[("a", 5)]), &ev(&[("a", 4), ("b", 1)])));
        // Unpublished listings cannot be priced; bad prices are refused.
        assert!(matches!(
            set_price(&db, "acme/other", per_call(1), T0, 14),
            Err(PricingError::NotPublished { .. })
        ));
        assert!(matches!(
            set_price(&db, "acme/sum", per_call(0), T0, 14),
            Err(PricingError::BadPrice { .. })
        ));
    }

    #[test]
    fn the_book_gives_the_tariff_of_the_run_start() {
        let dir = tempfile::tempdir().expect("tmp");
        let (db, v) = published(dir.path(), "1.0.0", b"c1", per_call(1000));
        let config = MarketConfig::default();
        let book = PriceBook::load(db.clone(), &config).expect("book");
        let digest = v.component.to_string();
        assert_eq!(book.tariff("sha256:unlisted", Some(T0)), None);
        assert_eq!(
            book.tariff(&digest, Some(T0 - 1)),
            None,
            "before publication"
        );
        let t = book.tariff(&digest, Some(T0)).expect("priced");
        assert_eq!(t.model, TariffModel::PerCall { micros: 1000 });
        assert_eq!(t.listing_version, "acme/sum@1.0.0");
        assert_eq!(t.author_share_percent, 80);
        book.set_price("acme/sum", per_call(4000), T0 + DAY_MS)
            .expect("raise");
        let t = book.tariff(&digest, Some(T0 + 2 * DAY_MS)).expect("priced");
        assert_eq!(t.model, TariffModel::PerCall { micros: 1000 }, "notice");
        let t = book
            .tariff(&digest, Some(T0 + 15 * DAY_MS))
            .expect("priced");
        assert_eq!(t.model, TariffModel::PerCall { micros: 4000 });
        book.set_price("acme/sum", Price::Free, T0 + 16 * DAY_MS)
            .expect("free");
        assert_eq!(book.tariff(&digest, Some(T0 + 16 * DAY_MS)), None);
        assert!(
            book.tariff(&digest, Some(T0 + 15 * DAY_MS)).is_some(),
            "history kept"
        );
    }
}
