//! `soma market price …` and `soma market payouts`: a listing's price
//! changes (with the notice period) and what authors earned in a month.

use std::collections::BTreeMap;

use serde_json::json;
use soma_runtime::market::{
    listing::Price,
    payouts,
    pricing::{self, PriceBook},
    store::now_ms,
};

use crate::cli::{Global, exit::Code};

/// A listing's price.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PriceCommand {
    /// Change the price of author/name (every version): a decrease applies
    /// at once, an increase after `[market] price_notice_days`.
    Set(SetArgs),
    /// Show author/name's price history and each published version's price now.
    Show {
        /// author/name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `soma market price set`: exactly one model.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("model").required(true).multiple(false)))]
pub(crate) struct SetArgs {
    /// author/name.
    name: String,
    /// Free from now on.
    #[arg(long, group = "model")]
    free: bool,
    /// Micro-units per successful call.
    #[arg(long, value_name = "MICROS", group = "model")]
    per_call: Option<u64>,
    /// Micro-units per 1000 LLM tokens the capsule uses.
    #[arg(long = "per-1k-tokens", value_name = "MICROS", group = "model")]
    per_1k_tokens: Option<u64>,
    /// A billable event and its price, `name=MICROS` (repeat for each).
    #[arg(long, value_name = "NAME=MICROS", group = "model", value_parser = parse_event)]
    per_event: Vec<(String, u64)>,
    /// Print JSON.
    #[arg(long)]
    pub(super) json: bool,
}

fn parse_event(text: &str) -> Result<(String, u64), String> {
    let (name, micros) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=MICROS, e.g. summarized=500"))?;
    let micros = micros
        .parse()
        .map_err(|_| format!("{micros:?} is not a whole number of micro-units"))?;
    Ok((name.to_owned(), micros))
}

impl SetArgs {
    fn price(&self) -> Price {
        if let Some(micros) = self.per_call {
            Price::PerCall { micros }
        } else if let Some(micros) = self.per_1k_tokens {
            Price::PerKiloTokens { micros }
        } else if !self.per_event.is_empty() {
            Price::PerEvent {
                events: self.per_event.iter().cloned().collect::<BTreeMap<_, _>>(),
            }
        } else {
            Price::Free
        }
    }
}

/// `soma market payouts`.
#[derive(Debug, clap::Args)]
pub(crate) struct PayoutsArgs {
    /// The month, YYYY-MM (UTC).
    #[arg(long, value_name = "YYYY-MM")]
    month: String,
    /// Only this author.
    #[arg(long, value_name = "A")]
    author: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub(super) json: bool,
}

fn money(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

pub(crate) fn price(global: &Global, cmd: PriceCommand) -> anyhow::Result<Code> {
    let records = super::records(global, &global.data_dir()?)?;
    match cmd {
        PriceCommand::Set(args) => {
            let config = global.config()?;
            let book = PriceBook::load(records, &config.market)?;
            let change = book.set_price(&args.name, args.price(), now_ms())?;
            if args.json {
                println!("{}", json!({ "ok": true, "change": change }));
            } else if change.increase {
                println!(
                    "{}: price version {} ({}) announced; an increase, in force from {} (unix ms, after {} days' notice)",
                    args.name,
                    change.seq,
                    change.price.model(),
                    change.effective_ms,
                    config.market.price_notice_days
                );
            } else {
                println!(
                    "{}: price version {} ({}) in force now",
                    args.name,
                    change.seq,
                    change.price.model()
                );
            }
        }
        PriceCommand::Show { name, json } => {
            let history = pricing::history(&records, &name)?;
            if json {
                println!("{}", json!({ "ok": true, "history": history }));
            } else {
                for c in &history.changes {
                    println!(
                        "v{}  {}  announced {}  effective {}{}",
                        c.seq,
                        serde_json::to_string(&c.price)?,
                        c.announced_ms,
                        c.effective_ms,
                        if c.takes_effect() {
                            ""
                        } else {
                            "  (superseded)"
                        }
                    );
                }
            }
        }
    }
    Ok(Code::Ok)
}

pub(crate) fn payouts(global: &Global, args: PayoutsArgs) -> anyhow::Result<Code> {
    // The books `[store]` configures: a fleet's shared ledger on PostgreSQL.
    let books = crate::cli::ledger::books(global)?;
    let report = payouts::report(books.reports(), &args.month, args.author.as_deref())?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        if let Some(o) = value.as_object_mut() {
            o.insert("ok".into(), true.into());
        }
        println!("{value}");
        return Ok(Code::Ok);
    }
    println!(
        "{:<32} {:>8} {:>8} {:>14} {:>14} {:>14}",
        "author / listing", "calls", "fees", "revenue", "platform", "net"
    );
    for a in &report.authors {
        for l in &a.listings {
            println!(
                "{:<32} {:>8} {:>8} {:>14} {:>14} {:>14}",
                l.listing,
                l.calls,
                l.fees,
                money(l.revenue_micros),
                money(l.platform_micros),
                money(l.net_micros)
            );
        }
        println!(
            "{:<32} {:>8} {:>8} {:>14} {:>14} {:>14}",
            format!("{} (total)", a.author),
            "",
            "",
            money(a.revenue_micros),
            money(a.platform_micros),
            money(a.net_micros)
        );
    }
    Ok(Code::Ok)
}
