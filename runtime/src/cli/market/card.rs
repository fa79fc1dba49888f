//! `soma market card author/name[@version]`: the measured cost card of a
//! listing's published versions (calls, success rate, latency, fuel,
//! tokens and cost per call over the last 30 days), from the call
//! statistics of the books `[store]` configures (the fleet's on
//! PostgreSQL).

use serde_json::json;
use soma_runtime::market::{
    card::{CardError, CostCard, WINDOW_DAYS, cost_card, version_cards},
    records::Records,
    store::{Market, Submission, now_ms},
};

use crate::cli::{Global, exit::Code};

/// `soma market card`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// author/name (every published version) or author/name@version (one).
    name: String,
    /// Print JSON: `{"ok": true, "window_days": 30, "versions": [{listing,
    /// version, state, component, card}]}`.
    #[arg(long)]
    pub(super) json: bool,
}

pub(super) fn run(global: &Global, args: Args) -> anyhow::Result<Code> {
    let (name, version) = match args.name.split_once('@') {
        Some((name, v)) => {
            let version = semver::Version::parse(v.trim()).map_err(|e| {
                anyhow::anyhow!(
                    "`{v}` is not a version ({e}); write author/name@1.2.3, or author/name for every version"
                )
            })?;
            (name, Some(version))
        }
        None => (args.name.as_str(), None),
    };
    let data = global.data_dir()?;
    let books = crate::cli::ledger::books_in(global, &data)?;
    let market = Market::new(Records::over(books.shared_store(), data.database().clone()));
    // The catalog's and the ledger's own errors keep their exit codes.
    let cards =
        version_cards(&market, books.reports(), name, version.as_ref(), now_ms()).map_err(|e| {
            match e {
                CardError::Market(e) => anyhow::Error::from(e),
                CardError::Ledger(e) => anyhow::Error::from(e),
                e @ CardError::NotPublished { .. } => anyhow::Error::from(e),
            }
        })?;
    if args.json {
        println!(
            "{}",
            json!({ "ok": true, "window_days": WINDOW_DAYS, "versions": cards })
        );
        return Ok(Code::Ok);
    }
    for v in &cards {
        println!(
            "{}@{} ({}, {})",
            v.listing,
            v.version,
            v.state.name(),
            v.component
        );
        print!("{}", render(&v.card));
    }
    Ok(Code::Ok)
}

/// The human form of a card: one line per measure.
fn render(c: &CostCard) -> String {
    let per = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    let ms = |v: Option<u64>| {
        v.map_or_else(
            || "-".to_owned(),
            |us| format!("≤ {:.3} ms", us as f64 / 1000.0),
        )
    };
    let rate = c
        .success_rate
        .map_or_else(|| "-".to_owned(), |r| format!("{:.1} %", r * 100.0));
    format!(
        "  {} … {}: {} calls, {} failed, success {rate}\n  latency p50 {}, p95 {}\n  per call: fuel {}, tokens {}, cost {} µ (total {} µ, fees {} µ)\n",
        c.from,
        c.to,
        c.calls,
        c.failures,
        ms(c.latency_p50_us),
        ms(c.latency_p95_us),
        per(c.fuel_per_call),
        per(c.tokens_per_call),
        per(c.cost_per_call_micros),
        c.cost_micros,
        c.fee_micros,
    )
}

/// `soma market ls --json`'s versions, each with its `card` (published
/// versions; `null` for the others, or if the ledger cannot be read — the
/// listing itself must still show). Cost: one small ledger read per
/// published version.
pub(super) fn with_cards(
    global: &Global,
    versions: &[Submission],
) -> anyhow::Result<Vec<serde_json::Value>> {
    let books = crate::cli::ledger::books(global)?;
    let now = now_ms();
    versions
        .iter()
        .map(|s| {
            let card = if s.state.was_published() {
                cost_card(books.reports(), &[&s.component.to_string()], now).ok()
            } else {
                None
            };
            let mut doc = serde_json::to_value(s)?;
            if let Some(map) = doc.as_object_mut() {
                map.insert("card".into(), serde_json::to_value(card)?);
            }
            Ok(doc)
        })
        .collect()
}
