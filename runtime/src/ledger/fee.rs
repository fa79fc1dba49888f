//! Marketplace fees: the revenue split of every `marketplace-fee` entry,
//! written by the ledger itself in the same transaction as the entry.
//!
//! A fee entry describes its own split: `model` is the listing version
//! (`author/name@version`) and `provider` is `market:<author share %>`
//! (both set by [`fee_tags`]). When [`super::write_in`] inserts such an
//! entry it also inserts one row into
//!
//! ```text
//! ledger_fee_splits  (month "YYYY-MM", entry id) → (author, listing, version, fee, author µ, platform µ)
//! ```
//!
//! so every write path (the group-commit writer, a DAG node's own
//! transaction, a plain append) records the split, and a crash leaves
//! neither or both. A replayed fee (same idempotency key) writes neither.
//!
//! Rounding: `author = floor(fee × share / 100)`, `platform = fee − author`,
//! so `author + platform == fee` exactly and the platform takes the
//! sub-micro remainder.

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;

use super::{Entry, Kind, LEDGER, LedgerError, codec, db_err};

/// (month, entry id) → (author, listing `author/name`, version, fee, author micros, platform micros).
type SplitKey<'a> = (&'a str, u64);
type SplitValue<'a> = (&'a str, &'a str, &'a str, u64, u64, u64);
pub(super) const FEE_SPLITS: TableDefinition<'_, SplitKey<'_>, SplitValue<'_>> =
    TableDefinition::new("ledger_fee_splits");

/// The `provider` prefix of a fee entry.
const PROVIDER_PREFIX: &str = "market:";

/// `(provider, model)` of a fee entry for listing version `listing_version`
/// (`author/name@version`) with `author_share_percent` going to the author.
pub fn fee_tags(listing_version: &str, author_share_percent: u8) -> (String, String) {
    (
        format!("{PROVIDER_PREFIX}{author_share_percent}"),
        listing_version.to_owned(),
    )
}

/// Split `fee` micro-units: `(author, platform)` with
/// `author = floor(fee × share / 100)` and `platform = fee − author`.
/// A share above 100 is read as 100.
pub fn split(fee: u64, author_share_percent: u8) -> (u64, u64) {
    let share = u128::from(author_share_percent.min(100));
    let author = u64::try_from(u128::from(fee) * share / 100).unwrap_or(fee);
    (author, fee - author)
}

/// One fee's split as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeeSplit {
    /// The ledger entry's id.
    pub id: u64,
    /// The listing's author (namespace).
    pub author: String,
    /// `author/name`.
    pub listing: String,
    /// The version whose price was charged.
    pub version: String,
    /// The whole fee, micro-units (the entry's cost).
    pub fee_micros: u64,
    /// The author's part.
    pub author_micros: u64,
    /// The platform's part.
    pub platform_micros: u64,
}

/// What a fee entry's tags say: listing, version and share.
struct Tagged<'a> {
    author: &'a str,
    listing: &'a str,
    version: &'a str,
    share: u8,
}

fn parse_tags(e: &Entry) -> Option<Tagged<'_>> {
    let share: u8 = e
        .provider
        .as_deref()?
        .strip_prefix(PROVIDER_PREFIX)?
        .parse()
        .ok()
        .filter(|s| *s <= 100)?;
    let (listing, version) = e.model.as_deref()?.split_once('@')?;
    let (author, name) = listing.split_once('/')?;
    if author.is_empty() || name.is_empty() || version.is_empty() {
        return None;
    }
    Some(Tagged {
        author,
        listing,
        version,
        share,
    })
}

/// Why a fee entry cannot be written (checked before any write).
pub(super) fn refusal(e: &Entry) -> Option<&'static str> {
    (e.kind == Kind::MarketplaceFee && parse_tags(e).is_none()).then_some(
        "a marketplace-fee entry needs provider `market:<author share 0–100>` and model \
         `author/name@version` (ledger::fee_tags)",
    )
}

/// The split row of fee entry `id` (`None` for other kinds): its month
/// and [`FeeSplit`]. An untagged fee is refused ([`refusal`]).
pub(super) fn split_of(id: u64, e: &Entry) -> Result<Option<(String, FeeSplit)>, LedgerError> {
    if e.kind != Kind::MarketplaceFee {
        return Ok(None);
    }
    let Some(t) = parse_tags(e) else {
        return Err(LedgerError::InvalidEntry {
            index: 0,
            reason: refusal(e).unwrap_or_default().into(),
        });
    };
    let (author, platform) = split(e.cost_micros, t.share);
    Ok(Some((
        month_of(e.time_ms),
        FeeSplit {
            id,
            author: t.author.to_owned(),
            listing: t.listing.to_owned(),
            version: t.version.to_owned(),
            fee_micros: e.cost_micros,
            author_micros: author,
            platform_micros: platform,
        },
    )))
}

/// Record the split of fee entry `id` (no-op for other kinds).
pub(super) fn write_split(txn: &WriteTransaction, id: u64, e: &Entry) -> Result<(), LedgerError> {
    let Some((month, s)) = split_of(id, e)? else {
        return Ok(());
    };
    let mut table = txn.open_table(FEE_SPLITS).map_err(db_err)?;
    table
        .insert(
            (month.as_str(), id),
            (
                s.author.as_str(),
                s.listing.as_str(),
                s.version.as_str(),
                s.fee_micros,
                s.author_micros,
                s.platform_micros,
            ),
        )
        .map_err(db_err)?;
    Ok(())
}

fn month_of(time_ms: u64) -> String {
    let mut day = super::day_of(time_ms);
    day.truncate(7);
    day
}

/// One problem with marketplace fees found by a check. Typed so a caller
/// (`soma ledger check --json`) can act on each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "problem")]
pub enum FeeProblem {
    /// A fee entry has no split row.
    MissingSplit {
        /// The entry.
        id: u64,
    },
    /// A split row has no fee entry (or points at an entry of another kind).
    OrphanSplit {
        /// The id the row names.
        id: u64,
    },
    /// A fee entry has more than one split row (rows in two months).
    DuplicateSplit {
        /// The entry.
        id: u64,
    },
    /// A fee entry's tags do not name a listing version and share.
    Untagged {
        /// The entry.
        id: u64,
    },
    /// The split row does not add up, or disagrees with its entry.
    SplitMismatch {
        /// The entry.
        id: u64,
        /// The entry's cost.
        fee: u64,
        /// The row's fee.
        row_fee: u64,
        /// The row's author part.
        author: u64,
        /// The row's platform part.
        platform: u64,
    },
    /// No version of the listing was published (or it was not priced) when
    /// the fee was charged.
    NotPublished {
        /// The entry.
        id: u64,
        /// `author/name@version`.
        listing_version: String,
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for FeeProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MissingSplit { id } => write!(f, "marketplace fee {id} has no revenue split"),
            Self::OrphanSplit { id } => write!(f, "revenue split of {id} has no marketplace fee"),
            Self::DuplicateSplit { id } => {
                write!(f, "marketplace fee {id} has more than one revenue split")
            }
            Self::Untagged { id } => {
                write!(
                    f,
                    "marketplace fee {id} does not name its listing version and share"
                )
            }
            Self::SplitMismatch {
                id,
                fee,
                row_fee,
                author,
                platform,
            } => write!(
                f,
                "revenue split of fee {id} is {author} author + {platform} platform of {row_fee}, the fee is {fee}"
            ),
            Self::NotPublished {
                id,
                listing_version,
                reason,
            } => write!(f, "marketplace fee {id} for {listing_version}: {reason}"),
        }
    }
}

/// One split row as stored, for [`check_rows`]: (entry id, fee, author
/// micros, platform micros).
pub(super) type StoredSplit = (u64, u64, u64, u64);

/// Check, inside one read snapshot, that every fee entry has exactly one
/// split row that adds up and agrees with it, and every row has its entry.
/// Cost: a scan of the split table, and the caller's scan of the entries
/// (`fees`: id → entry of every fee entry).
pub(super) fn check(
    txn: &ReadTransaction,
    fees: &std::collections::BTreeMap<u64, Entry>,
    problems: &mut Vec<FeeProblem>,
) -> Result<(), LedgerError> {
    let mut rows: Vec<StoredSplit> = Vec::new();
    match txn.open_table(FEE_SPLITS) {
        Ok(table) => {
            for row in table.iter().map_err(db_err)? {
                let (k, v) = row.map_err(db_err)?;
                let (_, id) = k.value();
                let (_, _, _, row_fee, author, platform) = v.value();
                rows.push((id, row_fee, author, platform));
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(db_err(e)),
    }
    check_rows(&rows, fees, problems);
    Ok(())
}

/// The checks of [`check`] over split rows read from any store.
pub(super) fn check_rows(
    rows: &[StoredSplit],
    fees: &std::collections::BTreeMap<u64, Entry>,
    problems: &mut Vec<FeeProblem>,
) {
    let mut seen: std::collections::BTreeMap<u64, u32> = std::collections::BTreeMap::new();
    for &(id, row_fee, author, platform) in rows {
        *seen.entry(id).or_default() += 1;
        let Some(e) = fees.get(&id) else {
            problems.push(FeeProblem::OrphanSplit { id });
            continue;
        };
        let want = parse_tags(e).map(|t| split(e.cost_micros, t.share));
        let adds_up = author.checked_add(platform) == Some(row_fee);
        if !adds_up || row_fee != e.cost_micros || want != Some((author, platform)) {
            problems.push(FeeProblem::SplitMismatch {
                id,
                fee: e.cost_micros,
                row_fee,
                author,
                platform,
            });
        }
    }
    for (id, e) in fees {
        if parse_tags(e).is_none() {
            problems.push(FeeProblem::Untagged { id: *id });
        }
        match seen.get(id) {
            None => problems.push(FeeProblem::MissingSplit { id: *id }),
            Some(1) => {}
            Some(_) => problems.push(FeeProblem::DuplicateSplit { id: *id }),
        }
    }
}

/// Every fee of `month` (`YYYY-MM`; `None`: all months) with its split and
/// its ledger entry, in (month, id) order, from one read snapshot. Cost: a
/// range of the split table plus one entry lookup per fee — independent of
/// other months and kinds.
pub(super) fn fees_of_month(
    txn: &ReadTransaction,
    month: Option<&str>,
) -> Result<Vec<(FeeSplit, Entry)>, LedgerError> {
    let table = match txn.open_table(FEE_SPLITS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(db_err(e)),
    };
    let entries = txn.open_table(LEDGER).map_err(db_err)?;
    let mut out = Vec::new();
    let rows = match month {
        Some(m) => table.range((m, 0)..=(m, u64::MAX)),
        None => table.range::<SplitKey<'_>>(..),
    }
    .map_err(db_err)?;
    for row in rows {
        let (k, v) = row.map_err(db_err)?;
        let (_, id) = k.value();
        let (author, listing, version, fee, a, p) = v.value();
        let Some(bytes) = entries.get(id).map_err(db_err)? else {
            return Err(LedgerError::Corrupt {
                id,
                reason: "a revenue split names an entry missing from the ledger table",
            });
        };
        let entry = codec::decode(id, bytes.value())
            .map_err(|reason| LedgerError::Corrupt { id, reason })?;
        out.push((
            FeeSplit {
                id,
                author: author.to_owned(),
                listing: listing.to_owned(),
                version: version.to_owned(),
                fee_micros: fee,
                author_micros: a,
                platform_micros: p,
            },
            entry,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_always_adds_up_and_the_platform_takes_the_remainder() {
        assert_eq!(split(1000, 80), (800, 200));
        assert_eq!(split(1, 80), (0, 1));
        assert_eq!(split(9, 80), (7, 2));
        assert_eq!(split(999, 100), (999, 0));
        assert_eq!(split(999, 0), (0, 999));
        assert_eq!(split(5, 200), (5, 0), "a share above 100 is 100");
        for fee in [0, 1, 2, 3, 99, 101, 12_345, u64::MAX] {
            for share in [0u8, 1, 33, 50, 67, 80, 99, 100] {
                let (a, p) = split(fee, share);
                assert_eq!(a.checked_add(p), Some(fee), "{fee} at {share}%");
                assert!(u128::from(a) * 100 <= u128::from(fee) * u128::from(share));
            }
        }
    }
}
