//! Console page: costs — `GET /ui/costs?month=YYYY-MM[&tenant=T]`.
//!
//! One tenant's month: the ledger summed by capsule, by model and by day
//! (each a bar chart with its table), the month's bill (the total is
//! [`Ledger::bill`]'s, the function `soma bill` prints), the budgets that
//! tenant sees with what remains of them (the same list as
//! `GET /v1/budgets`), and the forecast of the next 30 days with its
//! backtest error ([`Ledger::forecast`], as `soma forecast`).
//!
//! A viewer sees its own tenant; an operator may pick any with `tenant=`,
//! and anyone else naming another tenant gets the 404 page. Needs the
//! `read` scope, like `GET /v1/ledger`.
//!
//! Cost: every figure comes from the ledger's daily rollup rows (four
//! scans of the month's rows and one of the tenant's history), never from
//! the entries, so the page's time does not grow with the ledger.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Extension, Router,
    extract::{Query, State, rejection::QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use maud::{Markup, html};
use serde::Deserialize;

use super::{
    PageError, Viewer, blocking,
    chart::{self, Bar, Line},
    failed,
    layout::{self, Section, count, money},
    missing,
};
use crate::{
    daemon::{Daemon, auth::TokenScope, contract::BudgetRow},
    ledger::{self, Forecast, GroupBy, Invoice, SummaryRow},
};

/// Days `#forecast` projects (the default of `soma forecast`).
pub const FORECAST_DAYS: u32 = 30;
/// Days of history `#forecast` draws before the projection.
const FORECAST_HISTORY_DAYS: usize = 60;
/// Most bars of the capsule and model charts (the rest are summed into
/// one "others" bar; the tables list up to `[console] max_page_rows`).
const MAX_BARS: usize = 12;

/// This section's routes.
pub(super) fn routes() -> Router<Arc<Daemon>> {
    Router::new().route("/ui/costs", get(costs))
}

/// The page's query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CostsQuery {
    /// `YYYY-MM` (empty or absent: this month, UTC).
    month: Option<String>,
    /// The tenant (operators only; absent: the viewer's).
    tenant: Option<String>,
}

/// A month: its `YYYY-MM` and its first and last day (`YYYY-MM-DD`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Month {
    name: String,
    first: String,
    last: String,
    /// Its days, in order.
    days: Vec<String>,
    /// `YYYY-MM` before and after.
    previous: String,
    next: String,
}

impl Month {
    /// `text` (`YYYY-MM`), or `None` if it is not a month.
    fn parse(text: &str) -> Option<Self> {
        ledger::check_month(text).ok()?;
        let year: i64 = text.get(0..4)?.parse().ok()?;
        let month: u32 = text.get(5..7)?.parse().ok()?;
        let first = ledger::days_from_civil(year, month, 1)?;
        let (ny, nm) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        let next_first = ledger::days_from_civil(ny, nm, 1)?;
        let (py, pm) = if month == 1 {
            (year - 1, 12)
        } else {
            (year, month - 1)
        };
        let days: Vec<String> = (first..next_first).map(format_day).collect();
        Some(Self {
            name: text.to_owned(),
            first: days.first()?.clone(),
            last: days.last()?.clone(),
            days,
            previous: format!("{py:04}-{pm:02}"),
            next: format!("{ny:04}-{nm:02}"),
        })
    }

    /// The month (UTC) of unix time `now_ms`.
    fn of(now_ms: u64) -> Option<Self> {
        let (y, m, _) = ledger::civil_from_days(ledger::day_number_of(now_ms));
        Self::parse(&format!("{y:04}-{m:02}"))
    }
}

/// Day number → `YYYY-MM-DD`.
fn format_day(day: i64) -> String {
    let (y, m, d) = ledger::civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// What the page shows, read in one blocking task.
#[derive(Debug)]
struct Costs {
    by_capsule: Vec<SummaryRow>,
    by_model: Vec<SummaryRow>,
    by_day: Vec<SummaryRow>,
    invoice: Invoice,
    budgets: Vec<BudgetRow>,
    forecast: Forecast,
}

/// Why the costs could not be read.
#[derive(Debug, thiserror::Error)]
enum CostsError {
    /// The ledger failed.
    #[error("cannot read the ledger")]
    Ledger(#[from] ledger::LedgerError),
    /// The budgets could not be listed.
    #[error(transparent)]
    Budgets(#[from] crate::daemon::api::BudgetsError),
}

/// Read everything the page shows for `tenant` and `month` (blocking).
fn read(daemon: &Daemon, tenant: &str, month: &Month) -> Result<Costs, CostsError> {
    let ledger = daemon.engine.metering().reports();
    let summary = |by| ledger.summary(by, Some(&month.first), Some(&month.last), Some(tenant));
    Ok(Costs {
        by_capsule: summary(GroupBy::Capsule)?,
        by_model: summary(GroupBy::Model)?,
        by_day: summary(GroupBy::Day)?,
        invoice: ledger.bill(tenant, &month.name)?,
        budgets: crate::daemon::api::visible_budgets(daemon, tenant, false)?,
        forecast: ledger.forecast(tenant, FORECAST_DAYS)?,
    })
}

/// A 400 page naming the query field at fault and what it accepts.
pub(super) fn bad_query(viewer: &Viewer, message: &str) -> Response {
    layout::error_page(Some(viewer), StatusCode::BAD_REQUEST, message)
}

/// The 403 page for a viewer without the `read` scope (what the ledger and
/// analytics routes require), or `None` when it has it.
pub(super) fn without_read(viewer: &Viewer) -> Option<Response> {
    (!viewer.may(TokenScope::Read)).then(|| {
        layout::error_page(
            Some(viewer),
            StatusCode::FORBIDDEN,
            "This page needs a token with the `read` scope.",
        )
    })
}

/// `GET /ui/costs`.
async fn costs(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
    query: Result<Query<CostsQuery>, QueryRejection>,
) -> Response {
    if let Some(forbidden) = without_read(&viewer) {
        return forbidden;
    }
    let Ok(Query(q)) = query else {
        return bad_query(
            &viewer,
            "The query is not understood: this page accepts `month` (YYYY-MM) and, for operators, `tenant`.",
        );
    };
    let month = match q.month.as_deref().filter(|m| !m.is_empty()) {
        Some(text) => match Month::parse(text) {
            Some(m) => m,
            None => {
                return bad_query(
                    &viewer,
                    "`month` must be a month written YYYY-MM (UTC), e.g. 2026-11.",
                );
            }
        },
        None => match Month::of(crate::dag::history::now_ms()) {
            Some(m) => m,
            None => return bad_query(&viewer, "The clock's month cannot be shown."),
        },
    };
    let tenant = match q.tenant.filter(|t| !t.is_empty()) {
        Some(t) if viewer.sees(&t) => t,
        Some(_) => return missing(&viewer, "tenant"),
        None => viewer.tenant().to_owned(),
    };
    let names = capsule_names(&daemon);
    let (d, t, m) = (daemon.clone(), tenant.clone(), month.clone());
    let v = viewer.clone();
    let data = blocking(&viewer, move || {
        read(&d, &t, &m).map_err(|e| PageError::from(failed(&v, &e)))
    })
    .await;
    let data = match data {
        Ok(data) => data,
        Err(page) => return page.into_response(),
    };
    let rows = daemon.console.config.max_page_rows.max(1);
    let body = render(&viewer, &tenant, &month, &data, &names, rows);
    layout::page(
        &viewer,
        Section::Costs,
        &format!("Costs · {}", month.name),
        body,
    )
}

/// Catalog names by capsule digest (for labels; digests stay in titles).
pub(super) fn capsule_names(daemon: &Daemon) -> HashMap<String, String> {
    let catalog = daemon
        .catalog
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    catalog
        .iter()
        .map(|(name, item)| (item.capsule.digest().to_string(), name.clone()))
        .collect()
}

/// A capsule digest's label: its catalog name, else its first hex digits.
pub(super) fn capsule_label(names: &HashMap<String, String>, digest: &str) -> String {
    match names.get(digest) {
        Some(name) => name.clone(),
        None => {
            let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
            hex.get(..12).unwrap_or(hex).to_owned()
        }
    }
}

/// Up to [`MAX_BARS`] bars of `rows` (cost, highest first as the ledger
/// sorts them), the rest summed into "others".
fn top_bars(rows: &[SummaryRow], label: impl Fn(&str) -> String) -> Vec<Bar> {
    let mut bars: Vec<Bar> = rows
        .iter()
        .take(MAX_BARS)
        .map(|r| Bar {
            label: label(&r.key),
            value: r.cost_micros,
            title: format!("{}: {}", r.key, money(r.cost_micros)),
        })
        .collect();
    if rows.len() > MAX_BARS {
        let rest = rows[MAX_BARS..]
            .iter()
            .fold(0u64, |t, r| t.saturating_add(r.cost_micros));
        bars.push(Bar {
            label: "others".into(),
            value: rest,
            title: format!("{} others: {}", rows.len() - MAX_BARS, money(rest)),
        });
    }
    bars
}

fn render(
    viewer: &Viewer,
    tenant: &str,
    month: &Month,
    data: &Costs,
    names: &HashMap<String, String>,
    rows: usize,
) -> Markup {
    let tokens: u64 = data.by_model.iter().fold(0u64, |t, r| {
        t.saturating_add(r.tokens_in).saturating_add(r.tokens_out)
    });
    let entries: u64 = data
        .by_day
        .iter()
        .fold(0u64, |t, r| t.saturating_add(r.count));
    let link = |m: &str| {
        if tenant == viewer.tenant() {
            format!("/ui/costs?month={m}")
        } else {
            format!("/ui/costs?month={m}&tenant={}", super::urlencoding(tenant))
        }
    };
    html! {
        h1 { "Costs · " (month.name) }
        form.filters method="get" action="/ui/costs" {
            div {
                label for="month" { "Month" }
                input #month type="month" name="month" value=(month.name) pattern="[0-9]{4}-[0-9]{2}";
            }
            @if viewer.principal.is_operator() {
                div {
                    label for="tenant" { "Tenant" }
                    input #tenant type="text" name="tenant" value=(tenant);
                }
            }
            button type="submit" { "Show" }
            a href=(link(&month.previous)) rel="prev" { "← " (month.previous) }
            a href=(link(&month.next)) rel="next" { (month.next) " →" }
        }
        dl.stats {
            div {
                dt { "Month's total" }
                dd #month-total data-micros=(data.invoice.total_micros) { (money(data.invoice.total_micros)) }
            }
            div { dt { "Tenant" } dd.mono { (tenant) } }
            div { dt { "Ledger entries" } dd { (count(entries)) } }
            div { dt { "LLM tokens" } dd { (count(tokens)) } }
            div {
                dt { "Next " (FORECAST_DAYS) " days (forecast)" }
                dd #forecast-total data-micros=(data.forecast.projected_total_micros) {
                    (money(data.forecast.projected_total_micros))
                }
            }
        }
        h2 { "By capsule" }
        (chart::figure(
            "by-capsule",
            "Cost by capsule this month",
            chart::bars("Cost by capsule", &top_bars(&data.by_capsule, |k| capsule_label(names, k)), chart::money_tick),
            summary_table("Capsule", &data.by_capsule, rows, |k| html! {
                span title=(k) { (capsule_label(names, k)) }
            }),
        ))
        h2 { "By model" }
        (chart::figure(
            "by-model",
            "Cost by LLM model this month (`-`: charges without a model: fuel, wall time, fees)",
            chart::bars("Cost by model", &top_bars(&data.by_model, str::to_owned), chart::money_tick),
            summary_table("Model", &data.by_model, rows, |k| html! { (k) }),
        ))
        h2 { "By day" }
        (by_day(month, &data.by_day))
        h2 { "Bill" }
        (bill(&data.invoice, names, rows))
        h2 { "Budgets" }
        (budgets(&data.budgets, rows))
        h2 { "Forecast" }
        (forecast(&data.forecast))
    }
}

/// The table beside the capsule and model charts.
fn summary_table(
    what: &str,
    rows: &[SummaryRow],
    max: usize,
    key: impl Fn(&str) -> Markup,
) -> Markup {
    html! {
        table.data.collapse {
            thead {
                tr {
                    th scope="col" { (what) }
                    th.num scope="col" { "Entries" }
                    th.num scope="col" { "Tokens in" }
                    th.num scope="col" { "Tokens out" }
                    th.num scope="col" { "Fuel" }
                    th.num scope="col" { "Cost" }
                }
            }
            tbody {
                @for r in rows.iter().take(max) {
                    tr data-key=(r.key) {
                        td data-label=(what) { (key(&r.key)) }
                        td.num data-label="Entries" { (count(r.count)) }
                        td.num data-label="Tokens in" { (count(r.tokens_in)) }
                        td.num data-label="Tokens out" { (count(r.tokens_out)) }
                        td.num data-label="Fuel" { (count(r.fuel)) }
                        td.num data-label="Cost" data-micros=(r.cost_micros) { (money(r.cost_micros)) }
                    }
                }
                @if rows.is_empty() {
                    tr { td colspan="6" { "No charges this month." } }
                }
            }
        }
        @if rows.len() > max {
            p.hint { "Showing " (max) " of " (rows.len()) " (the chart sums the rest as “others”)." }
        }
    }
}

/// `#by-day`: every day of the month, charged or not.
fn by_day(month: &Month, rows: &[SummaryRow]) -> Markup {
    let by: HashMap<&str, &SummaryRow> = rows.iter().map(|r| (r.key.as_str(), r)).collect();
    let bars: Vec<Bar> = month
        .days
        .iter()
        .map(|day| {
            let cost = by.get(day.as_str()).map_or(0, |r| r.cost_micros);
            Bar {
                label: day.get(8..).unwrap_or(day).to_owned(),
                value: cost,
                title: format!("{day}: {}", money(cost)),
            }
        })
        .collect();
    let table = html! {
        details {
        summary { "Table (" (rows.len()) " days with charges)" }
        table.data.collapse {
            thead { tr { th scope="col" { "Day" } th.num scope="col" { "Entries" } th.num scope="col" { "Cost" } } }
            tbody {
                @for day in &month.days {
                    @if let Some(r) = by.get(day.as_str()) {
                        tr data-day=(day) {
                            td data-label="Day" { (day) }
                            td.num data-label="Entries" { (count(r.count)) }
                            td.num data-label="Cost" data-micros=(r.cost_micros) { (money(r.cost_micros)) }
                        }
                    }
                }
                @if rows.is_empty() {
                    tr { td colspan="3" { "No charges this month." } }
                }
            }
        }
        }
    };
    chart::figure(
        "by-day",
        "Cost per day (UTC) this month",
        chart::bars("Cost per day", &bars, chart::money_tick),
        table,
    )
}

/// `#bill`: the month's invoice lines and total.
fn bill(invoice: &Invoice, names: &HashMap<String, String>, max: usize) -> Markup {
    html! {
        section #bill {
            p { "As " code { "soma bill " (invoice.tenant) " --month " (invoice.month) } " prints it; prices are per 1000 units." }
            details {
                summary { (invoice.lines.len()) " invoice lines · total " (money(invoice.total_micros)) }
                div.table-wrap {
                table.data.collapse {
                    thead {
                        tr {
                            th scope="col" { "Capsule" }
                            th scope="col" { "Model" }
                            th scope="col" { "Kind" }
                            th.num scope="col" { "Quantity" }
                            th.num scope="col" { "Unit price /1k" }
                            th.num scope="col" { "Cost" }
                        }
                    }
                    tbody {
                        @for l in invoice.lines.iter().take(max) {
                            tr {
                                td data-label="Capsule" { span title=(l.capsule) { (capsule_label(names, &l.capsule)) } }
                                td data-label="Model" { (l.model.as_deref().unwrap_or("—")) }
                                td data-label="Kind" { (l.kind) }
                                td.num data-label="Quantity" { (count(l.quantity)) }
                                td.num data-label="Unit price /1k" { (money(l.unit_price_micros)) }
                                td.num data-label="Cost" { (money(l.cost_micros)) }
                            }
                        }
                        @if invoice.lines.is_empty() {
                            tr { td colspan="6" { "Nothing to bill this month." } }
                        }
                    }
                    tfoot {
                        tr {
                            th scope="row" colspan="5" { "Total" }
                            td.num data-label="Total" { (money(invoice.total_micros)) }
                        }
                    }
                }
                }
            }
            @if invoice.lines.len() > max {
                p.hint { "Showing " (max) " of " (invoice.lines.len()) " lines; the total is the whole bill's." }
            }
        }
    }
}

/// What remains of `limit` after `spent` and `held`.
fn remaining(limit: Option<u64>, spent: u64, held: u64) -> Option<u64> {
    limit.map(|l| l.saturating_sub(spent.saturating_add(held)))
}

/// `#budgets`: each budget with its limits and what remains.
pub(super) fn budgets(rows: &[BudgetRow], max: usize) -> Markup {
    let limit_text = |l: Option<u64>, f: fn(u64) -> String| l.map_or("no limit".into(), f);
    html! {
        div.table-wrap {
            table.data.collapse #budgets {
                thead {
                    tr {
                        th scope="col" { "Scope" }
                        th.num scope="col" { "Token limit" }
                        th.num scope="col" { "Tokens spent" }
                        th.num scope="col" { "Tokens held" }
                        th.num scope="col" { "Tokens left" }
                        th.num scope="col" { "Money limit" }
                        th.num scope="col" { "Spent" }
                        th.num scope="col" { "Held" }
                        th.num scope="col" { "Left" }
                    }
                }
                tbody {
                    @for b in rows.iter().take(max) {
                        @let a = &b.account;
                        @let tokens_left = remaining(a.limit.tokens, a.spent_tokens, a.reserved_tokens);
                        @let micros_left = remaining(a.limit.micros, a.spent_micros, a.reserved_micros);
                        tr data-scope=(b.scope) {
                            td.mono data-label="Scope" { (b.scope) }
                            td.num data-label="Token limit" { (limit_text(a.limit.tokens, count)) }
                            td.num data-label="Tokens spent" { (count(a.spent_tokens)) }
                            td.num data-label="Tokens held" { (count(a.reserved_tokens)) }
                            td.num data-label="Tokens left" data-field="tokens-remaining" data-value=[tokens_left] {
                                (tokens_left.map_or("—".into(), count))
                            }
                            td.num data-label="Money limit" { (limit_text(a.limit.micros, money)) }
                            td.num data-label="Spent" { (money(a.spent_micros)) }
                            td.num data-label="Held" { (money(a.reserved_micros)) }
                            td.num.exhausted[micros_left == Some(0)] data-label="Left" data-field="micros-remaining" data-value=[micros_left] {
                                (micros_left.map_or("—".into(), money))
                            }
                        }
                    }
                    @if rows.is_empty() {
                        tr { td colspan="9" { "No budget applies to this tenant." } }
                    }
                }
            }
        }
        @if rows.len() > max {
            p.hint { "Showing " (max) " of " (rows.len()) " budgets." }
        }
    }
}

/// `#forecast`: the last days of history and the projection, with the
/// backtest error.
fn forecast(f: &Forecast) -> Markup {
    let skip = f.daily_history.len().saturating_sub(FORECAST_HISTORY_DAYS);
    let history = &f.daily_history[skip..];
    let first_after = history
        .last()
        .and_then(|(d, _)| parse_day(d))
        .map(|d| d + 1);
    let projected: Vec<(String, u64)> = match first_after {
        Some(start) => f
            .projected_daily
            .iter()
            .enumerate()
            .map(|(i, c)| (format_day(start + i as i64), *c))
            .collect(),
        None => Vec::new(),
    };
    // `MM-DD` under the axis; the whole day is in each point's title.
    let labels: Vec<String> = history
        .iter()
        .chain(projected.iter())
        .map(|(d, _)| d.get(5..).unwrap_or(d).to_owned())
        .collect();
    let mut past = Line {
        name: "history".into(),
        class: "series-history",
        points: history
            .iter()
            .enumerate()
            .map(|(i, (d, c))| (i, *c, format!("{d}: {}", money(*c))))
            .collect(),
    };
    let mut ahead = Line {
        name: "forecast".into(),
        class: "series-forecast",
        points: projected
            .iter()
            .enumerate()
            .map(|(i, (d, c))| {
                (
                    history.len() + i,
                    *c,
                    format!("{d} (forecast): {}", money(*c)),
                )
            })
            .collect(),
    };
    // The projection starts where the history ends.
    if let (Some(last), false) = (past.points.last().cloned(), ahead.points.is_empty()) {
        ahead.points.insert(0, last);
    }
    if past.points.is_empty() {
        ahead.points.clear();
        past.points.clear();
    }
    let svg = chart::lines(
        "Daily cost: history and forecast",
        &labels,
        &[past, ahead],
        chart::money_tick,
    );
    let table = html! {
        details {
            summary { "Table" }
            table.data {
                thead { tr { th scope="col" { "Day" } th scope="col" { "Kind" } th.num scope="col" { "Cost" } } }
                tbody {
                    @for (d, c) in history {
                        tr { td { (d) } td { "history" } td.num { (money(*c)) } }
                    }
                    @for (d, c) in &projected {
                        tr { td { (d) } td { "forecast" } td.num { (money(*c)) } }
                    }
                }
            }
        }
    };
    html! {
        figure.chart #forecast {
            figcaption {
                "Daily cost through yesterday (last " (FORECAST_HISTORY_DAYS) " days) and the next "
                (FORECAST_DAYS) " days projected (" (f.method) ")."
            }
            (svg)
            @match f.backtest_mape_percent {
                Some(mape) => p #backtest-error data-mape=(format!("{mape:.1}")) {
                    "Backtest error (last 7 days, fit on the rest): MAPE " (format!("{mape:.1}")) " %"
                },
                None => p #backtest-error data-mape="" {
                    "Backtest: not enough history (needs 14 days)."
                },
            }
            p { "Projected for the next " (FORECAST_DAYS) " days: " strong { (money(f.projected_total_micros)) } }
            (table)
        }
    }
}

/// `YYYY-MM-DD` → day number.
fn parse_day(day: &str) -> Option<i64> {
    let y: i64 = day.get(0..4)?.parse().ok()?;
    let m: u32 = day.get(5..7)?.parse().ok()?;
    let d: u32 = day.get(8..10)?.parse().ok()?;
    (day.len() == 10).then_some(())?;
    ledger::days_from_civil(y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_parse_with_their_days_and_neighbours() {
        let m = Month::parse("2024-02").expect("a month");
        assert_eq!(
            (m.first.as_str(), m.last.as_str()),
            ("2024-02-01", "2024-02-29")
        );
        assert_eq!(m.days.len(), 29);
        assert_eq!(
            (m.previous.as_str(), m.next.as_str()),
            ("2024-01", "2024-03")
        );
        let d = Month::parse("2025-12").expect("a month");
        assert_eq!(d.next, "2026-01");
        assert_eq!(d.last, "2025-12-31");
        assert_eq!(Month::parse("2026-01").expect("month").previous, "2025-12");
        for bad in ["2024-13", "2024-1", "24-01", "", "2024-01-01", "abcd-ef"] {
            assert!(Month::parse(bad).is_none(), "{bad}");
        }
        // 2023-11-14T22:13:20Z.
        assert_eq!(Month::of(1_700_000_000_000).expect("month").name, "2023-11");
    }

    #[test]
    fn remaining_never_underflows() {
        assert_eq!(remaining(None, 5, 5), None);
        assert_eq!(remaining(Some(100), 30, 20), Some(50));
        assert_eq!(remaining(Some(10), 30, 20), Some(0));
    }

    #[test]
    fn many_capsules_make_one_others_bar() {
        let rows: Vec<SummaryRow> = (0..20u64)
            .map(|i| SummaryRow {
                key: format!("sha256:{i:064}"),
                cost_micros: 100 - i,
                ..SummaryRow::default()
            })
            .collect();
        let bars = top_bars(&rows, str::to_owned);
        assert_eq!(bars.len(), MAX_BARS + 1);
        assert_eq!(bars[MAX_BARS].label, "others");
        assert_eq!(
            bars[MAX_BARS].value,
            (MAX_BARS as u64..20).map(|i| 100 - i).sum::<u64>()
        );
        let names = HashMap::from([(rows[0].key.clone(), "echo".to_owned())]);
        assert_eq!(capsule_label(&names, &rows[0].key), "echo");
        assert_eq!(capsule_label(&names, &rows[1].key), "000000000000");
    }
}
