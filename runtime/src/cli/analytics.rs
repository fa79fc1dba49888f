//! `soma analytics query`: the embedded analytics store of a data
//! directory (ships the outbox first, so the answer includes every charge
//! committed so far). The local CLI owns the data directory: it sees every
//! tenant, or one with `--tenant`.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use soma_runtime::analytics::{self, Dim, Gran, QueryRow};

use super::{Global, exit::Code, ledger::money};

/// Query the embedded analytics store.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AnalyticsCommand {
    /// Calls, errors, latency percentiles, cost and tokens over a window.
    Query(QueryArgs),
    /// The outbox: events held, its bound, drops, and each sink's cursor and lag.
    Outbox {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `soma analytics query`.
#[derive(Debug, clap::Args)]
pub(crate) struct QueryArgs {
    /// Group by: all, capsule, model or class (failure class).
    #[arg(long, default_value = "all")]
    by: String,
    /// Bucket width: minute, hour or day.
    #[arg(long, default_value = "hour")]
    bucket: String,
    /// Window start: unix ms, or a time before now (`30m`, `24h`, `7d`).
    #[arg(long, default_value = "24h")]
    since: String,
    /// Window end (exclusive): unix ms, a time before now, or `now`.
    #[arg(long, default_value = "now")]
    until: String,
    /// Only this tenant's numbers (default: every tenant together).
    #[arg(long)]
    tenant: Option<String>,
    /// One row per bucket and group.
    #[arg(long)]
    series: bool,
    /// Keep the first N groups (by calls, then cost).
    #[arg(long)]
    top: Option<usize>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `1700000000000`, `now`, or `30m` / `24h` / `7d` before `now`.
fn parse_time(s: &str, now: u64) -> anyhow::Result<u64> {
    if s == "now" {
        return Ok(now);
    }
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let unit = match s.chars().last() {
        Some('m') => 60_000,
        Some('h') => 3_600_000,
        Some('d') => 86_400_000,
        _ => anyhow::bail!(
            "`{s}` is not a time; write unix ms, `now`, or an age such as 30m, 24h, 7d"
        ),
    };
    let n: u64 = s[..s.len() - 1].parse().with_context(|| {
        format!("`{s}` is not a time; write unix ms, `now`, or an age such as 30m, 24h, 7d")
    })?;
    Ok(now.saturating_sub(n.saturating_mul(unit)))
}

pub(crate) fn analytics(global: &Global, cmd: AnalyticsCommand) -> anyhow::Result<Code> {
    let data = global.data_dir()?;
    let config = global.config()?;
    let db = data.database().get()?;
    analytics::outbox::configure(
        &db,
        config.analytics.max_outbox_events,
        config.analytics.when_full,
        config.analytics.enabled,
    )?;
    match cmd {
        AnalyticsCommand::Outbox { json } => {
            let s = analytics::outbox::status(&db)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "pending {}  max {}  dropped {}  paused {}",
                    s.pending, s.max, s.dropped, s.paused
                );
                for sink in &s.sinks {
                    println!(
                        "sink {:<12} cursor {:<12} lag {}",
                        sink.name, sink.cursor, sink.lag
                    );
                }
            }
        }
        AnalyticsCommand::Query(a) => {
            analytics::ship_all(&db, config.analytics.ship_batch as usize)?;
            let now = now_ms();
            let q = analytics::Query {
                tenant: a.tenant,
                by: Dim::parse(&a.by)?,
                bucket: Gran::parse(&a.bucket)?,
                since_ms: parse_time(&a.since, now)?,
                until_ms: parse_time(&a.until, now)?,
                series: a.series,
                top: a.top,
            };
            let rows = analytics::rollup::query(&db, &q)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_table(&rows);
            }
        }
    }
    Ok(Code::Ok)
}

fn print_table(rows: &[QueryRow]) {
    let us = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    println!(
        "{:<24} {:>14} {:>8} {:>7} {:>10} {:>10} {:>10} {:>14} {:>10} {:>10}",
        "KEY",
        "BUCKET",
        "CALLS",
        "ERRORS",
        "P50 µs",
        "P95 µs",
        "P99 µs",
        "COST",
        "TOK IN",
        "TOK OUT"
    );
    for r in rows {
        println!(
            "{:<24} {:>14} {:>8} {:>7} {:>10} {:>10} {:>10} {:>14} {:>10} {:>10}",
            r.key,
            r.bucket_ms.map_or("-".to_owned(), |b| b.to_string()),
            r.calls,
            r.errors,
            us(r.p50_us),
            us(r.p95_us),
            us(r.p99_us),
            money(r.cost_micros),
            r.tokens_in,
            r.tokens_out
        );
    }
}
