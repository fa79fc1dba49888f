//! `soma ledger | bill | forecast | budget`: what was spent, by whom, and
//! what may still be spent. Money is integer micro-units, shown with six
//! decimals.

use std::time::{SystemTime, UNIX_EPOCH};

use soma_runtime::{
    budget::{Limit, Scope},
    ledger::{Entry, Filter, GroupBy, Kind},
    meter::BudgetLedger,
};

use super::{Global, exit::Code};

/// The node's books as `[store]` configures them: the data directory's
/// redb ledger and budgets, or the shared PostgreSQL store (whose ledger
/// [`BudgetLedger::reports`] then reads).
pub(crate) fn books(global: &Global) -> anyhow::Result<BudgetLedger> {
    books_in(global, &global.data_dir()?)
}

/// [`books`] over `data`, a data directory the caller also reads: one
/// handle, since a process can open its redb database only once.
pub(crate) fn books_in(
    global: &Global,
    data: &soma_runtime::store::DataDir,
) -> anyhow::Result<BudgetLedger> {
    let config = global.config()?;
    Ok(BudgetLedger::open(
        config.ledger,
        data.database().clone(),
        &config.store,
    )?)
}

/// `1234567` micro-units → `1.234567`.
pub(crate) fn money(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// How a report is printed.
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct Format {
    /// Print JSON.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV.
    #[arg(long)]
    csv: bool,
}

/// The ledger: append-only record of every charge.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum LedgerCommand {
    /// List entries, newest first.
    Ls {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this run.
        #[arg(long)]
        run: Option<String>,
        /// Only this capsule digest.
        #[arg(long)]
        capsule: Option<String>,
        /// Only entries since this UTC day (YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        format: Format,
    },
    /// Totals grouped by capsule, tenant, model, day or kind.
    Summary {
        /// What to group by.
        #[arg(long, value_enum, default_value = "capsule")]
        by: By,
        /// From this UTC day (YYYY-MM-DD), inclusive.
        #[arg(long)]
        since: Option<String>,
        /// Through this UTC day, inclusive.
        #[arg(long)]
        until: Option<String>,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        format: Format,
    },
    /// Check the ledger's integrity (keys, ids, rollups); exit 1 if broken.
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Append synthetic entries in group commits (crash tests, benchmarking).
    #[command(hide = true)]
    Stress {
        /// Entries to append.
        #[arg(long)]
        count: u64,
        /// Run id (idempotency keys are run/stress/0/<i>/fuel).
        #[arg(long)]
        run: String,
        /// Entries per append call.
        #[arg(long, default_value_t = 50)]
        batch: u64,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum By {
    Capsule,
    Tenant,
    Model,
    Day,
    Kind,
}

impl From<By> for GroupBy {
    fn from(b: By) -> Self {
        match b {
            By::Capsule => GroupBy::Capsule,
            By::Tenant => GroupBy::Tenant,
            By::Model => GroupBy::Model,
            By::Day => GroupBy::Day,
            By::Kind => GroupBy::Kind,
        }
    }
}

fn day_start_ms(day: &str) -> anyhow::Result<u64> {
    let (y, m, d) = (
        day.get(0..4).and_then(|s| s.parse::<i64>().ok()),
        day.get(5..7).and_then(|s| s.parse::<u32>().ok()),
        day.get(8..10).and_then(|s| s.parse::<u32>().ok()),
    );
    match (y, m, d) {
        (Some(y), Some(m), Some(d)) if day.len() == 10 => {
            let days = soma_runtime::ledger::days_from_civil(y, m, d)
                .ok_or_else(|| anyhow::anyhow!("{day:?} is not a date"))?;
            Ok(u64::try_from(days.max(0))? * 86_400_000)
        }
        _ => anyhow::bail!("{day:?} is not a day: expected YYYY-MM-DD"),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

pub(crate) fn ledger(global: &Global, cmd: LedgerCommand) -> anyhow::Result<Code> {
    let data = global.data_dir()?;
    let books = books_in(global, &data)?;
    let ledger = books.reports();
    match cmd {
        LedgerCommand::Ls {
            tenant,
            run,
            capsule,
            since,
            limit,
            format,
        } => {
            let filter = Filter {
                tenant,
                run,
                capsule,
                since_ms: since.as_deref().map(day_start_ms).transpose()?,
                until_ms: None,
                limit: Some(limit),
            };
            let entries = ledger.ls(&filter)?;
            if format.json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else if format.csv {
                println!(
                    "id,time_ms,tenant,run,node,attempt,seq,capsule,kind,quantity,unit_price_micros,cost_micros,provider,model,estimated"
                );
                for e in &entries {
                    println!(
                        "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                        e.id,
                        e.time_ms,
                        csv_field(&e.tenant),
                        csv_field(&e.run),
                        csv_field(&e.node),
                        e.attempt,
                        e.seq,
                        e.capsule,
                        e.kind,
                        e.quantity,
                        e.unit_price_micros,
                        e.cost_micros,
                        csv_field(e.provider.as_deref().unwrap_or("")),
                        csv_field(e.model.as_deref().unwrap_or("")),
                        e.estimated
                    );
                }
            } else {
                for e in &entries {
                    println!(
                        "{:>8} {} {:<10} {:<24} {:<18} {:>12} {:>14}{}",
                        e.id,
                        e.day(),
                        e.tenant,
                        e.run,
                        e.kind,
                        e.quantity,
                        money(e.cost_micros),
                        e.model
                            .as_deref()
                            .map(|m| format!("  {m}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        LedgerCommand::Summary {
            by,
            since,
            until,
            tenant,
            format,
        } => {
            let rows = ledger.summary(
                by.into(),
                since.as_deref(),
                until.as_deref(),
                tenant.as_deref(),
            )?;
            if format.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if format.csv {
                // Columns added later go at the end (scripts index by position).
                println!(
                    "key,tokens_in,tokens_out,fuel,wall_us,cost_micros,count,estimated,\
                     fee_units,http_requests,http_bytes_out,http_bytes_in"
                );
                for r in &rows {
                    println!(
                        "{},{},{},{},{},{},{},{},{},{},{},{}",
                        csv_field(&r.key),
                        r.tokens_in,
                        r.tokens_out,
                        r.fuel,
                        r.wall_us,
                        r.cost_micros,
                        r.count,
                        r.estimated,
                        r.fee_units,
                        r.http_requests,
                        r.http_bytes_out,
                        r.http_bytes_in
                    );
                }
            } else {
                println!(
                    "{:<40} {:>10} {:>10} {:>14} {:>14} {:>8}",
                    "key", "tokens in", "tokens out", "fuel", "cost", "entries"
                );
                for r in &rows {
                    println!(
                        "{:<40} {:>10} {:>10} {:>14} {:>14} {:>8}",
                        r.key,
                        r.tokens_in,
                        r.tokens_out,
                        r.fuel,
                        money(r.cost_micros),
                        r.count
                    );
                }
            }
        }
        LedgerCommand::Check { json } => {
            let mut report = ledger.check_integrity()?;
            // Every marketplace fee was for a version published (and priced)
            // then, in the marketplace `[store]` configures.
            let market = soma_runtime::market::records::Records::over(
                books.shared_store(),
                data.database().clone(),
            );
            for p in soma_runtime::market::payouts::check_fees(books.reports(), &market)? {
                report.fee_problem(p);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "{}: {} entries, {} keys, {} rollup rows",
                    if report.ok { "ok" } else { "BROKEN" },
                    report.entries,
                    report.keys,
                    report.rollup_rows
                );
                for p in &report.problems {
                    println!("  {p}");
                }
            }
            return Ok(if report.ok { Code::Ok } else { Code::Error });
        }
        LedgerCommand::Stress { count, run, batch } => {
            let writer = ledger.writer()?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
            let mut i = 0;
            while i < count {
                let n = batch.max(1).min(count - i);
                let entries = (i..i + n)
                    .map(|seq| Entry {
                        id: 0,
                        time_ms: now,
                        tenant: "stress".into(),
                        run: run.clone(),
                        node: "stress".into(),
                        attempt: 0,
                        seq: u32::try_from(seq).unwrap_or(u32::MAX),
                        capsule: "sha256:stress".into(),
                        kind: Kind::Fuel,
                        quantity: 1000,
                        unit_price_micros: 1,
                        cost_micros: 1,
                        provider: None,
                        model: None,
                        estimated: false,
                    })
                    .collect();
                writer.append(entries)?;
                i += n;
            }
            println!("appended {count}");
        }
    }
    Ok(Code::Ok)
}

/// A tenant's invoice for one month.
#[derive(Debug, clap::Args)]
pub(crate) struct BillArgs {
    /// The tenant.
    tenant: String,
    /// The month (YYYY-MM, UTC).
    #[arg(long)]
    month: String,
    #[command(flatten)]
    format: Format,
}

pub(crate) fn bill(global: &Global, args: BillArgs) -> anyhow::Result<Code> {
    let invoice = books(global)?.reports().bill(&args.tenant, &args.month)?;
    if args.format.json {
        println!("{}", serde_json::to_string_pretty(&invoice)?);
    } else if args.format.csv {
        println!("capsule,model,kind,quantity,unit_price_micros,cost_micros");
        for l in &invoice.lines {
            println!(
                "{},{},{},{},{},{}",
                l.capsule,
                csv_field(l.model.as_deref().unwrap_or("")),
                l.kind,
                l.quantity,
                l.unit_price_micros,
                l.cost_micros
            );
        }
        println!("total,,,,,{}", invoice.total_micros);
    } else {
        println!("invoice · tenant {} · {}", invoice.tenant, invoice.month);
        for l in &invoice.lines {
            println!(
                "  {:<20} {:<18} {:<18} {:>12} × {:>10}/1k = {:>14}",
                l.capsule.get(..19).unwrap_or(&l.capsule),
                l.model.as_deref().unwrap_or("-"),
                l.kind,
                l.quantity,
                money(l.unit_price_micros),
                money(l.cost_micros)
            );
        }
        println!("  total {:>88}", money(invoice.total_micros));
    }
    Ok(Code::Ok)
}

/// Project a tenant's spending from its daily history.
#[derive(Debug, clap::Args)]
pub(crate) struct ForecastArgs {
    /// The tenant.
    tenant: String,
    /// Days to project.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn forecast(global: &Global, args: ForecastArgs) -> anyhow::Result<Code> {
    let f = books(global)?.reports().forecast(&args.tenant, args.days)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&f)?);
    } else {
        println!("method: {}", f.method);
        println!("history: {} day(s)", f.daily_history.len());
        match f.backtest_mape_percent {
            Some(mape) => println!("backtest (last 7 days, fit on the rest): MAPE {mape:.1} %"),
            None => println!("backtest: not enough history (needs 14 days)"),
        }
        println!(
            "next {} day(s): {}",
            args.days,
            money(f.projected_total_micros)
        );
    }
    Ok(Code::Ok)
}

/// Budgets per tenant, capsule, run or node.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum BudgetCommand {
    /// Set a budget: SCOPE is tenant:T, capsule:sha256:…, run:R or node:R/N.
    Set {
        /// The scope.
        scope: String,
        /// Token limit (input + output).
        #[arg(long)]
        tokens: Option<u64>,
        /// Money limit, micro-units.
        #[arg(long)]
        micros: Option<u64>,
    },
    /// Remove a budget.
    Rm {
        /// The scope.
        scope: String,
    },
    /// List budgets with what they have spent.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn scope(text: &str) -> anyhow::Result<Scope> {
    Scope::parse(text).ok_or_else(|| {
        anyhow::anyhow!(
            "{text:?} is not a scope: use tenant:T, capsule:sha256:…, run:R or node:R/N"
        )
    })
}

pub(crate) fn budget(global: &Global, cmd: BudgetCommand) -> anyhow::Result<Code> {
    let metering = books(global)?;
    match cmd {
        BudgetCommand::Set {
            scope: s,
            tokens,
            micros,
        } => {
            anyhow::ensure!(
                tokens.is_some() || micros.is_some(),
                "give --tokens and/or --micros"
            );
            metering.set_limit(scope(&s)?, Some(Limit { tokens, micros }))?;
        }
        BudgetCommand::Rm { scope: s } => metering.set_limit(scope(&s)?, None)?,
        BudgetCommand::Ls { json } => {
            let list = metering.list_budgets()?;
            if json {
                let rows: Vec<_> = list
                    .iter()
                    .map(|(s, a)| serde_json::json!({ "scope": s.key(), "account": a }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for (s, a) in &list {
                    let show = |limit: Option<u64>, spent: u64, unit: &str| match limit {
                        Some(l) => format!("{spent}/{l} {unit}"),
                        None => format!("{spent} {unit} (no limit)"),
                    };
                    println!(
                        "{:<40} {:<28} {}",
                        s.key(),
                        show(a.limit.tokens, a.spent_tokens, "tokens"),
                        show(a.limit.micros, a.spent_micros, "micros")
                    );
                }
            }
        }
    }
    Ok(Code::Ok)
}
