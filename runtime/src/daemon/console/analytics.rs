//! Console pages: the four dashboards of issue 18, read from the embedded
//! analytics store ([`crate::analytics::rollup`]) — the same rows
//! `GET /v1/analytics/query` and `soma analytics query` answer.
//!
//! - `GET /ui/analytics/platform` (operators): calls and errors per
//!   bucket, latency p50/p95/p99, runs started and finished, active runs
//!   and the queue (live, from memory).
//! - `GET /ui/analytics/tenant` (one tenant: the viewer's, or an
//!   operator's pick with `tenant=`): spend per bucket, spend by capsule,
//!   LLM tokens by model, runs, budget refusals and the budgets with what
//!   remains of them.
//! - `GET /ui/analytics/capsule` (a tenant's own capsules; an operator's
//!   default is every tenant's, `tenant=` narrows it): calls per capsule,
//!   success rate, the cost card (average cost, fuel and wall time per
//!   call), latency p50/p99, failures by class and gate approval rate.
//! - `GET /ui/analytics/admin` (operators): the outbox (events held,
//!   dropped, each sink's lag and deliveries), rejections by reason, the
//!   cache hit rates, budget refusals and console sessions.
//!
//! `range=hour|day|week|month` picks the window (the last 60 minutes at
//! minute buckets, 24 hours or 7 days at hour buckets, 30 days at day
//! buckets; default `day`). Anyone but an operator asking for another
//! tenant, or for an operators' board, gets the 404 page, as for a page
//! that does not exist. Needs the `read` scope, like the query route.
//!
//! Cost: two to four range reads of the rollups (each bounded by the
//! window's buckets × groups, see [`crate::analytics::rollup::query`]),
//! never the events; the admin board reads the outbox's few cursor rows.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Extension, Router,
    extract::{Path, Query, State, rejection::QueryRejection},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use maud::{Markup, html};
use serde::Deserialize;

use super::{
    PageError, Viewer, blocking,
    chart::{self, Bar, Line},
    costs::{bad_query, budgets, capsule_label, capsule_names, without_read},
    failed,
    layout::{self, Section, count, money},
    missing,
    ops::{hit_rate_permille, percent},
};
use crate::{
    analytics::{self, Dim, Gran, QueryRow, outbox::Status},
    daemon::{Daemon, contract::BudgetRow},
};

/// Most groups in a board's bar charts (the tables list up to
/// `[console] max_page_rows`).
const MAX_BARS: usize = 12;

/// This section's routes.
pub(super) fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/ui/analytics", get(index))
        .route("/ui/analytics/{board}", get(board))
}

/// One of the four dashboards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Board {
    Platform,
    Tenant,
    Capsule,
    Admin,
}

impl Board {
    const ALL: [Board; 4] = [Board::Platform, Board::Tenant, Board::Capsule, Board::Admin];

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.slug() == s)
    }

    fn slug(self) -> &'static str {
        match self {
            Board::Platform => "platform",
            Board::Tenant => "tenant",
            Board::Capsule => "capsule",
            Board::Admin => "admin",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Board::Platform => "Platform",
            Board::Tenant => "Tenant",
            Board::Capsule => "Capsules",
            Board::Admin => "Admin",
        }
    }

    /// Only operators see it (it sums every tenant, or shows the host).
    fn operators_only(self) -> bool {
        matches!(self, Board::Platform | Board::Admin)
    }
}

/// The window a board shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Range {
    Hour,
    Day,
    Week,
    Month,
}

impl Range {
    const ALL: [Range; 4] = [Range::Hour, Range::Day, Range::Week, Range::Month];

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.slug() == s)
    }

    fn slug(self) -> &'static str {
        match self {
            Range::Hour => "hour",
            Range::Day => "day",
            Range::Week => "week",
            Range::Month => "month",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Range::Hour => "last hour",
            Range::Day => "last 24 hours",
            Range::Week => "last 7 days",
            Range::Month => "last 30 days",
        }
    }

    /// The bucket width and how many buckets the window spans.
    fn buckets(self) -> (Gran, u64) {
        match self {
            Range::Hour => (Gran::Minute, 60),
            Range::Day => (Gran::Hour, 24),
            Range::Week => (Gran::Hour, 7 * 24),
            Range::Month => (Gran::Day, 30),
        }
    }
}

/// The window: `buckets` buckets of `gran` ending with the one holding
/// `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    range: Range,
    gran: Gran,
    since_ms: u64,
    until_ms: u64,
}

impl Window {
    fn of(range: Range, now_ms: u64) -> Self {
        let (gran, n) = range.buckets();
        let w = gran.width_ms();
        let until_ms = (now_ms / w + 1).saturating_mul(w);
        Self {
            range,
            gran,
            since_ms: until_ms.saturating_sub(n.saturating_mul(w)),
            until_ms,
        }
    }

    /// Each bucket's start, in order.
    fn starts(&self) -> Vec<u64> {
        let w = self.gran.width_ms();
        (self.since_ms..self.until_ms).step_by(w as usize).collect()
    }

    /// A bucket's short label under the axis (UTC).
    fn label(&self, start_ms: u64) -> String {
        let format = match (self.range, self.gran) {
            (_, Gran::Minute) => "%H:%M",
            (Range::Day, Gran::Hour) => "%H:00",
            (_, Gran::Hour) => "%m-%d %Hh",
            (_, Gran::Day) => "%m-%d",
        };
        i64::try_from(start_ms)
            .ok()
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map_or_else(String::new, |t| t.format(format).to_string())
    }

    /// A store query over this window.
    fn query(
        &self,
        tenant: Option<&str>,
        by: Dim,
        series: bool,
        top: Option<usize>,
    ) -> analytics::Query {
        analytics::Query {
            tenant: tenant.map(str::to_owned),
            by,
            bucket: self.gran,
            since_ms: self.since_ms,
            until_ms: self.until_ms,
            series,
            top,
        }
    }
}

/// The page's query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BoardQuery {
    /// `hour`, `day` (default), `week` or `month`.
    range: Option<String>,
    /// The tenant (operators only; see the module's doc for each board).
    tenant: Option<String>,
}

/// What a board reads from storage, in one blocking task.
#[derive(Debug, Default)]
struct Data {
    /// One row per bucket (`all`).
    series: Vec<QueryRow>,
    /// The window's totals (`all`).
    totals: QueryRow,
    /// By capsule, most calls first.
    capsules: Vec<QueryRow>,
    /// By model.
    models: Vec<QueryRow>,
    /// By failure class.
    classes: Vec<QueryRow>,
    /// The budgets the tenant board lists.
    budgets: Vec<BudgetRow>,
    /// The outbox (admin board).
    outbox: Option<Status>,
}

/// Why a board could not be read.
#[derive(Debug, thiserror::Error)]
enum BoardError {
    /// The analytics store failed.
    #[error("cannot read the analytics store")]
    Store(#[from] analytics::AnalyticsError),
    /// The budgets could not be listed.
    #[error(transparent)]
    Budgets(#[from] crate::daemon::api::BudgetsError),
}

/// Read what `board` shows for `tenant` (`None`: every tenant).
fn read(
    daemon: &Daemon,
    board: Board,
    tenant: Option<&str>,
    window: &Window,
    rows: usize,
) -> Result<Data, BoardError> {
    let db = daemon
        .engine
        .data()
        .database()
        .get()
        .map_err(analytics::AnalyticsError::from)?;
    let q = |by, series, top| analytics::rollup::query(&db, &window.query(tenant, by, series, top));
    let first = |rows: Vec<QueryRow>| rows.into_iter().next().unwrap_or_default();
    let mut data = Data::default();
    match board {
        Board::Platform => {
            data.series = q(Dim::All, true, None)?;
            data.totals = first(q(Dim::All, false, None)?);
        }
        Board::Tenant => {
            data.series = q(Dim::All, true, None)?;
            data.totals = first(q(Dim::All, false, None)?);
            data.capsules = q(Dim::Capsule, false, Some(rows))?;
            data.models = q(Dim::Model, false, Some(rows))?;
            if let Some(t) = tenant {
                data.budgets = crate::daemon::api::visible_budgets(daemon, t, false)?;
            }
        }
        Board::Capsule => {
            data.totals = first(q(Dim::All, false, None)?);
            data.capsules = q(Dim::Capsule, false, Some(rows))?;
            data.classes = q(Dim::Class, false, Some(rows))?;
        }
        Board::Admin => {
            data.series = q(Dim::All, true, None)?;
            data.totals = first(q(Dim::All, false, None)?);
            data.outbox = Some(analytics::outbox::status(&db)?);
        }
    }
    Ok(data)
}

/// `GET /ui/analytics`: an operator's first board is the platform's, a
/// tenant's its own.
async fn index(Extension(viewer): Extension<Viewer>) -> Redirect {
    if viewer.principal.is_operator() {
        Redirect::to("/ui/analytics/platform")
    } else {
        Redirect::to("/ui/analytics/tenant")
    }
}

/// `GET /ui/analytics/{board}`.
async fn board(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
    Path(slug): Path<String>,
    query: Result<Query<BoardQuery>, QueryRejection>,
) -> Response {
    let Some(board) = Board::parse(&slug) else {
        return missing(&viewer, "dashboard");
    };
    if board.operators_only() && !viewer.principal.is_operator() {
        return missing(&viewer, "page");
    }
    if let Some(forbidden) = without_read(&viewer) {
        return forbidden;
    }
    let Ok(Query(q)) = query else {
        return bad_query(
            &viewer,
            "The query is not understood: this page accepts `range` (hour, day, week or month) and, for operators, `tenant`.",
        );
    };
    let range = match q.range.as_deref().filter(|r| !r.is_empty()) {
        None => Range::Day,
        Some(text) => match Range::parse(text) {
            Some(r) => r,
            None => {
                return bad_query(
                    &viewer,
                    "`range` must be hour, day, week or month (the last 60 minutes, 24 hours, 7 days or 30 days).",
                );
            }
        },
    };
    // Whose numbers: `None` is every tenant's (operators only).
    let tenant: Option<String> = match (q.tenant.filter(|t| !t.is_empty()), board) {
        (Some(t), _) if viewer.sees(&t) => Some(t),
        (Some(_), _) => return missing(&viewer, "tenant"),
        (None, Board::Tenant) => Some(viewer.tenant().to_owned()),
        (None, _) if viewer.principal.is_operator() => None,
        (None, _) => Some(viewer.tenant().to_owned()),
    };
    let window = Window::of(range, crate::dag::history::now_ms());
    let rows = daemon.console.config.max_page_rows.max(1);
    let (d, t, v) = (daemon.clone(), tenant.clone(), viewer.clone());
    let data = blocking(&viewer, move || {
        read(&d, board, t.as_deref(), &window, rows).map_err(|e| PageError::from(failed(&v, &e)))
    })
    .await;
    let data = match data {
        Ok(data) => data,
        Err(page) => return page.into_response(),
    };
    let page = Page {
        viewer: &viewer,
        board,
        tenant: tenant.as_deref(),
        window: &window,
        data: &data,
        names: &capsule_names(&daemon),
        rows,
    };
    let body = html! {
        (page.header(&daemon))
        @match board {
            Board::Platform => (page.platform(&daemon)),
            Board::Tenant => (page.tenant_board()),
            Board::Capsule => (page.capsule_board()),
            Board::Admin => (page.admin(&daemon)),
        }
    };
    layout::page(
        &viewer,
        Section::Analytics,
        &format!("{} dashboard · {}", board.title(), range.label()),
        body,
    )
}

/// A table column: its heading and how a row shows in it.
type Column = (&'static str, fn(&QueryRow) -> String);

/// A chart line: its name, its CSS class and its value in a row (none:
/// no point there).
type Series = (&'static str, &'static str, fn(&QueryRow) -> Option<u64>);

/// A board being drawn.
struct Page<'a> {
    viewer: &'a Viewer,
    board: Board,
    tenant: Option<&'a str>,
    window: &'a Window,
    data: &'a Data,
    names: &'a HashMap<String, String>,
    rows: usize,
}

/// `1234` µs → `1.23 ms`; `None` → `—`.
fn latency(us: Option<u64>) -> String {
    match us {
        None => "—".into(),
        Some(us) if us < 1_000 => format!("{us} µs"),
        Some(us) if us < 1_000_000 => format!("{:.2} ms", us as f64 / 1e3),
        Some(us) => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// A y-axis tick in µs.
fn latency_tick(us: u64) -> String {
    latency(Some(us))
}

/// A count as a y-axis tick.
fn count_tick(n: u64) -> String {
    count(n)
}

/// `0.9731` → `97.3 %`; `None` → `—`.
fn share(r: Option<f64>) -> String {
    r.map_or("—".into(), |r| format!("{:.1} %", r * 100.0))
}

/// `total / n`, 0 without `n`.
fn per(total: u64, n: u64) -> u64 {
    total.checked_div(n).unwrap_or(0)
}

impl Page<'_> {
    /// The link to `board` with this page's range and tenant.
    fn link(&self, board: Board, range: Range) -> String {
        let mut href = format!("/ui/analytics/{}?range={}", board.slug(), range.slug());
        if let Some(t) = self.tenant.filter(|t| *t != self.viewer.tenant()) {
            href.push_str("&tenant=");
            href.push_str(&super::urlencoding(t));
        }
        href
    }

    fn whose(&self) -> String {
        match self.tenant {
            Some(t) => format!("tenant {t}"),
            None => "every tenant".into(),
        }
    }

    /// The title, the board tabs, the range and tenant pickers, and a
    /// warning when this daemon writes no (or only some) events.
    fn header(&self, daemon: &Daemon) -> Markup {
        let operator = self.viewer.principal.is_operator();
        let config = daemon.engine.config();
        let off = !config.analytics.enabled;
        let partial = config.store.backend == crate::store::Backend::Postgres
            || config.orchestrator.engine
                == crate::config::orchestrator::OrchestratorEngine::Temporal;
        html! {
            h1 { (self.board.title()) " dashboard" }
            nav.tabs aria-label="Dashboards" {
                @for b in Board::ALL {
                    @if operator || !b.operators_only() {
                        a href=(self.link(b, self.window.range)) aria-current=[(b == self.board).then_some("page")] { (b.title()) }
                    }
                }
            }
            form.filters method="get" action=(format!("/ui/analytics/{}", self.board.slug())) {
                div {
                    label for="range" { "Window" }
                    select #range name="range" {
                        @for r in Range::ALL {
                            option value=(r.slug()) selected[r == self.window.range] { (r.label()) }
                        }
                    }
                }
                @if operator && !matches!(self.board, Board::Admin) {
                    div {
                        label for="tenant" { "Tenant" }
                        input #tenant type="text" name="tenant" value=(self.tenant.unwrap_or("")) placeholder="every tenant";
                    }
                }
                button type="submit" { "Show" }
            }
            p.hint {
                (self.whose()) " · " (self.window.range.label()) " · "
                (layout::time(self.window.since_ms)) " to " (layout::time(self.window.until_ms))
                " · buckets of one " (match self.window.gran { Gran::Minute => "minute", Gran::Hour => "hour", Gran::Day => "day" })
                " · as " code { "soma analytics query" } " answers"
            }
            @if off {
                p.notice #analytics-off { "Analytics is off on this daemon (" code { "[analytics] enabled = false" } "): no event reaches the store, so these numbers do not move." }
            } @else if partial {
                p.notice #analytics-partial { "With the PostgreSQL store or the Temporal engine, this daemon writes no call or run events yet (docs/analytics.md): these numbers cover only what the embedded store received." }
            }
        }
    }

    /// The x labels of the window's buckets and each bucket's row.
    fn buckets(&self) -> (Vec<u64>, Vec<String>, HashMap<u64, &QueryRow>) {
        let starts = self.window.starts();
        let labels = starts.iter().map(|s| self.window.label(*s)).collect();
        let rows = self
            .data
            .series
            .iter()
            .filter_map(|r| Some((r.bucket_ms?, r)))
            .collect();
        (starts, labels, rows)
    }

    /// A line per `(name, class, field)` over the window's buckets; a
    /// bucket without a value (`None`) has no point.
    fn series_chart(&self, title: &str, lines: &[Series], unit: fn(u64) -> String) -> Markup {
        let (starts, labels, rows) = self.buckets();
        let lines: Vec<Line> = lines
            .iter()
            .map(|(name, class, field)| Line {
                name: (*name).to_owned(),
                class,
                points: starts
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| {
                        let v = match rows.get(s) {
                            Some(r) => field(r)?,
                            None => field(&QueryRow::default())?,
                        };
                        Some((i, v, format!("{} {}: {}", labels[i], name, unit(v))))
                    })
                    .collect(),
            })
            .collect();
        chart::lines(title, &labels, &lines, unit)
    }

    /// The table under a series chart: the buckets with data, newest first.
    fn series_table(&self, columns: &[Column]) -> Markup {
        let mut rows: Vec<&QueryRow> = self.data.series.iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.bucket_ms));
        html! {
            details {
                summary { "Table (" (rows.len()) " buckets with events)" }
                table.data.collapse {
                    thead {
                        tr {
                            th scope="col" { "Bucket (UTC)" }
                            @for (name, _) in columns { th.num scope="col" { (name) } }
                        }
                    }
                    tbody {
                        @for r in rows.iter().take(self.rows) {
                            tr data-bucket=[r.bucket_ms] {
                                td data-label="Bucket" { (layout::time(r.bucket_ms.unwrap_or(0))) }
                                @for (name, f) in columns { td.num data-label=(name) { (f(r)) } }
                            }
                        }
                        @if rows.is_empty() {
                            tr { td colspan=(columns.len() + 1) { "No events in this window." } }
                        }
                    }
                }
            }
        }
    }

    /// `dl.stats` of the window's totals.
    fn stats(&self, items: &[(&str, &str, u64, String)]) -> Markup {
        html! {
            dl.stats {
                @for (id, name, value, text) in items {
                    div { dt { (name) } dd id=(id) data-value=(value) { (text) } }
                }
            }
        }
    }

    fn platform(&self, daemon: &Daemon) -> Markup {
        let t = &self.data.totals;
        let (queued, running) = daemon.calls.load();
        html! {
            section #live aria-labelledby="live-h" {
                h2 #live-h { "Now" }
                (self.stats(&[
                    ("active-runs", "Active DAG runs", daemon.runs.active() as u64, count(daemon.runs.active() as u64)),
                    ("dag-queued", "DAG runs waiting", daemon.runs.queued() as u64, count(daemon.runs.queued() as u64)),
                    ("calls-queued", "Calls queued", queued as u64, count(queued as u64)),
                    ("calls-running", "Calls running", running as u64, count(running as u64)),
                ]))
            }
            section #throughput aria-labelledby="throughput-h" {
                h2 #throughput-h { "Throughput and errors" }
                (self.stats(&[
                    ("calls", "Calls", t.calls, count(t.calls)),
                    ("errors", "Failed calls", t.errors, count(t.errors)),
                    ("error-rate", "Error rate", (t.error_rate * 1e4) as u64, share(Some(t.error_rate))),
                    ("runs-started", "Runs started", t.runs_started, count(t.runs_started)),
                    ("runs-finished", "Runs finished", t.runs_finished, count(t.runs_finished)),
                ]))
                (chart::figure(
                    "calls-chart",
                    "Calls and failed calls per bucket",
                    self.series_chart("Calls and failed calls", &[
                        ("calls", "series-1", |r| Some(r.calls)),
                        ("failed", "series-3", |r| Some(r.errors)),
                    ], count_tick),
                    self.series_table(&[
                        ("Calls", |r| count(r.calls)),
                        ("Failed", |r| count(r.errors)),
                        ("Error rate", |r| share(Some(r.error_rate))),
                        ("Runs started", |r| count(r.runs_started)),
                        ("Runs finished", |r| count(r.runs_finished)),
                    ]),
                ))
            }
            section #latency aria-labelledby="latency-h" {
                h2 #latency-h { "Latency" }
                (self.stats(&[
                    ("p50", "p50", t.p50_us.unwrap_or(0), latency(t.p50_us)),
                    ("p95", "p95", t.p95_us.unwrap_or(0), latency(t.p95_us)),
                    ("p99", "p99", t.p99_us.unwrap_or(0), latency(t.p99_us)),
                ]))
                (chart::figure(
                    "latency-chart",
                    "Call wall time per bucket: p50, p95, p99 (histogram bucket upper bounds)",
                    self.series_chart("Call latency", &[
                        ("p50", "series-1", |r| r.p50_us),
                        ("p95", "series-2", |r| r.p95_us),
                        ("p99", "series-3", |r| r.p99_us),
                    ], latency_tick),
                    self.series_table(&[
                        ("p50", |r| latency(r.p50_us)),
                        ("p95", |r| latency(r.p95_us)),
                        ("p99", |r| latency(r.p99_us)),
                    ]),
                ))
            }
        }
    }

    fn tenant_board(&self) -> Markup {
        let t = &self.data.totals;
        let capsule_bars = self.bars(&self.data.capsules, |r| r.cost_micros, money, true);
        let model_bars = self.bars(
            &self.data.models,
            |r| r.tokens_in.saturating_add(r.tokens_out),
            count,
            false,
        );
        html! {
            section #spend aria-labelledby="spend-h" {
                h2 #spend-h { "Spend" }
                (self.stats(&[
                    ("cost", "Spend", t.cost_micros, money(t.cost_micros)),
                    ("fees", "Marketplace fees", t.fee_micros, money(t.fee_micros)),
                    ("calls", "Calls", t.calls, count(t.calls)),
                    ("budget-exceeded", "Budget refusals", t.budget_exceeded, count(t.budget_exceeded)),
                ]))
                (chart::figure(
                    "spend-chart",
                    "Spend per bucket (calls, LLM tokens and fees)",
                    self.series_chart("Spend", &[("spend", "series-1", |r| Some(r.cost_micros))], chart::money_tick),
                    self.series_table(&[
                        ("Spend", |r| money(r.cost_micros)),
                        ("Calls", |r| count(r.calls)),
                        ("Budget refusals", |r| count(r.budget_exceeded)),
                    ]),
                ))
                (chart::figure(
                    "spend-by-capsule",
                    "Spend by capsule",
                    chart::bars("Spend by capsule", &capsule_bars, chart::money_tick),
                    self.group_table("Capsule", &self.data.capsules, true, &[
                        ("Calls", |r| count(r.calls)),
                        ("Spend", |r| money(r.cost_micros)),
                        ("Fees", |r| money(r.fee_micros)),
                    ]),
                ))
            }
            section #tokens aria-labelledby="tokens-h" {
                h2 #tokens-h { "LLM tokens" }
                (self.stats(&[
                    ("tokens-in", "Tokens in", t.tokens_in, count(t.tokens_in)),
                    ("tokens-out", "Tokens out", t.tokens_out, count(t.tokens_out)),
                ]))
                (chart::figure(
                    "tokens-by-model",
                    "Tokens (in + out) by model (`-`: calls without a model)",
                    chart::bars("Tokens by model", &model_bars, count_tick),
                    self.group_table("Model", &self.data.models, false, &[
                        ("Tokens in", |r| count(r.tokens_in)),
                        ("Tokens out", |r| count(r.tokens_out)),
                        ("Cost", |r| money(r.cost_micros)),
                    ]),
                ))
            }
            section #runs aria-labelledby="runs-h" {
                h2 #runs-h { "Runs" }
                (self.stats(&[
                    ("runs-started", "Runs started", t.runs_started, count(t.runs_started)),
                    ("runs-finished", "Runs finished", t.runs_finished, count(t.runs_finished)),
                    ("node-failures", "Failed node attempts", t.node_failures, count(t.node_failures)),
                ]))
                (chart::figure(
                    "runs-chart",
                    "Runs started and finished per bucket",
                    self.series_chart("Runs", &[
                        ("started", "series-1", |r| Some(r.runs_started)),
                        ("finished", "series-2", |r| Some(r.runs_finished)),
                    ], count_tick),
                    self.series_table(&[
                        ("Started", |r| count(r.runs_started)),
                        ("Finished", |r| count(r.runs_finished)),
                        ("Failed node attempts", |r| count(r.node_failures)),
                    ]),
                ))
            }
            section #budgets-now aria-labelledby="budgets-h" {
                h2 #budgets-h { "Budgets" }
                p.hint { "As they stand now (the ledger's, not the window's)." }
                (budgets(&self.data.budgets, self.rows))
            }
        }
    }

    fn capsule_board(&self) -> Markup {
        let t = &self.data.totals;
        let call_bars = self.bars(&self.data.capsules, |r| r.calls, count, true);
        html! {
            section #capsules aria-labelledby="capsules-h" {
                h2 #capsules-h { "Calls by capsule" }
                (self.stats(&[
                    ("calls", "Calls", t.calls, count(t.calls)),
                    ("success-rate", "Success rate",
                        ((1.0 - t.error_rate) * 1e4) as u64,
                        share((t.calls > 0).then_some(1.0 - t.error_rate))),
                    ("capsule-events", "Capsule events", t.capsule_events, count(t.capsule_events)),
                ]))
                (chart::figure(
                    "calls-by-capsule",
                    "Calls by capsule",
                    chart::bars("Calls by capsule", &call_bars, count_tick),
                    html! {},
                ))
            }
            section #cost-cards aria-labelledby="cards-h" {
                h2 #cards-h { "Success rate, cost card and latency" }
                (self.group_table("Capsule", &self.data.capsules, true, &[
                    ("Calls", |r| count(r.calls)),
                    ("Success", |r| share((r.calls > 0).then_some(1.0 - r.error_rate))),
                    ("Avg cost", |r| money(per(r.cost_micros, r.calls))),
                    ("Avg fuel", |r| count(per(r.fuel, r.calls))),
                    ("Avg wall", |r| latency((r.calls > 0).then(|| per(r.wall_us, r.calls)))),
                    ("p50", |r| latency(r.p50_us)),
                    ("p99", |r| latency(r.p99_us)),
                    ("Tokens", |r| count(r.tokens_in.saturating_add(r.tokens_out))),
                    ("Fees", |r| money(r.fee_micros)),
                ]))
            }
            section #failures aria-labelledby="failures-h" {
                h2 #failures-h { "Failures by class" }
                (self.group_table("Class", &self.data.classes, false, &[
                    ("Failed calls", |r| count(r.errors)),
                    ("Failed node attempts", |r| count(r.node_failures)),
                ]))
            }
            section #gates aria-labelledby="gates-h" {
                h2 #gates-h { "Quality gates" }
                (self.stats(&[
                    ("gates", "Gate verdicts", t.gates, count(t.gates)),
                    ("gates-approved", "Approved", t.gates_approved, count(t.gates_approved)),
                    ("approval-rate", "Approval rate",
                        t.approval_rate.map_or(0, |r| (r * 1e4) as u64),
                        share(t.approval_rate)),
                ]))
            }
        }
    }

    fn admin(&self, daemon: &Daemon) -> Markup {
        let t = &self.data.totals;
        let (hits, misses) = daemon.engine.cache_stats();
        let (aot_hits, aot_misses) = daemon.engine.aot_stats();
        let rate = hit_rate_permille(hits, misses);
        let aot_rate = hit_rate_permille(aot_hits, aot_misses);
        let rejections = daemon.metrics.rejections();
        let delivered: HashMap<&str, (u64, u64)> = daemon
            .shipper
            .sinks()
            .map(|(name, s)| {
                (
                    name,
                    (
                        s.delivered.load(std::sync::atomic::Ordering::Relaxed),
                        s.failures.load(std::sync::atomic::Ordering::Relaxed),
                    ),
                )
            })
            .collect();
        html! {
            section #outbox aria-labelledby="outbox-h" {
                h2 #outbox-h { "Analytics outbox" }
                @if let Some(o) = &self.data.outbox {
                    (self.stats(&[
                        ("outbox-pending", "Events held", o.pending, format!("{} / {}", count(o.pending), count(o.max))),
                        ("outbox-dropped", "Dropped (drop-oldest)", o.dropped, count(o.dropped)),
                        ("outbox-paused", "Admission paused", u64::from(o.paused), if o.paused { "yes".into() } else { "no".into() }),
                    ]))
                    div.table-wrap {
                        table.data.collapse #sinks {
                            thead {
                                tr {
                                    th scope="col" { "Sink" }
                                    th.num scope="col" { "Delivered up to" }
                                    th.num scope="col" { "Lag (events)" }
                                    th.num scope="col" { "Delivered since start" }
                                    th.num scope="col" { "Failures since start" }
                                }
                            }
                            tbody {
                                @for s in &o.sinks {
                                    @let (sent, failures) = delivered.get(s.name.as_str()).copied().unwrap_or((0, 0));
                                    tr data-sink=(s.name) {
                                        td data-label="Sink" { (s.name) }
                                        td.num data-label="Delivered up to" { (count(s.cursor)) }
                                        td.num data-label="Lag" data-field="lag" data-value=(s.lag) { (count(s.lag)) }
                                        td.num data-label="Delivered" { (count(sent)) }
                                        td.num data-label="Failures" data-field="failures" data-value=(failures) { (count(failures)) }
                                    }
                                }
                                @if o.sinks.is_empty() {
                                    tr { td colspan="5" { "No sink has registered yet." } }
                                }
                            }
                        }
                    }
                }
            }
            section #refusals aria-labelledby="refusals-h" {
                h2 #refusals-h { "Rejections and budget refusals" }
                (self.stats(&[
                    ("budget-exceeded", "Budget refusals (window, every tenant)", t.budget_exceeded, count(t.budget_exceeded)),
                    ("rejected", "Requests refused before their handler (since start)",
                        rejections.iter().fold(0u64, |a, r| a.saturating_add(r.1)),
                        count(rejections.iter().fold(0u64, |a, r| a.saturating_add(r.1)))),
                    ("console-sessions", "Console sessions", daemon.console.sessions.len() as u64, count(daemon.console.sessions.len() as u64)),
                ]))
                div.table-wrap {
                    table.data.collapse #rejections {
                        thead { tr { th scope="col" { "Reason" } th.num scope="col" { "Refused" } } }
                        tbody {
                            @for (reason, n) in &rejections {
                                tr data-reason=(reason) { td data-label="Reason" { (reason) } td.num data-label="Refused" data-value=(n) { (count(*n)) } }
                            }
                            @if rejections.is_empty() {
                                tr { td colspan="2" { "No request refused since start." } }
                            }
                        }
                    }
                }
                (chart::figure(
                    "refusals-chart",
                    "Budget refusals per bucket (at most one per budget per second is recorded)",
                    self.series_chart("Budget refusals", &[("refusals", "series-3", |r| Some(r.budget_exceeded))], count_tick),
                    self.series_table(&[("Budget refusals", |r| count(r.budget_exceeded))]),
                ))
            }
            section #caches aria-labelledby="caches-h" {
                h2 #caches-h { "Caches" }
                dl.stats {
                    div { dt { "Capsule cache (in memory)" } dd #capsule-cache data-permille=[rate] { (percent(rate)) } }
                    div { dt { "AOT cache (compiled artifacts)" } dd #aot-cache data-permille=[aot_rate] { (percent(aot_rate)) } }
                }
                p.hint { a href="/ui/ops" { "Operations" } " has health, the queue and the recent errors." }
            }
        }
    }

    /// Up to [`MAX_BARS`] bars of `rows` by `value` (the rest as "others").
    fn bars(
        &self,
        rows: &[QueryRow],
        value: fn(&QueryRow) -> u64,
        text: fn(u64) -> String,
        capsules: bool,
    ) -> Vec<Bar> {
        let label = |k: &str| {
            if capsules {
                capsule_label(self.names, k)
            } else {
                k.to_owned()
            }
        };
        let mut bars: Vec<Bar> = rows
            .iter()
            .take(MAX_BARS)
            .map(|r| Bar {
                label: label(&r.key),
                value: value(r),
                title: format!("{}: {}", r.key, text(value(r))),
            })
            .collect();
        if rows.len() > MAX_BARS {
            let rest = rows[MAX_BARS..]
                .iter()
                .fold(0u64, |t, r| t.saturating_add(value(r)));
            bars.push(Bar {
                label: "others".into(),
                value: rest,
                title: format!("{} others: {}", rows.len() - MAX_BARS, text(rest)),
            });
        }
        bars
    }

    /// A table of grouped rows (`data-key` = the group).
    fn group_table(
        &self,
        what: &str,
        rows: &[QueryRow],
        capsules: bool,
        columns: &[Column],
    ) -> Markup {
        html! {
            div.table-wrap {
                table.data.collapse {
                    thead {
                        tr {
                            th scope="col" { (what) }
                            @for (name, _) in columns { th.num scope="col" { (name) } }
                        }
                    }
                    tbody {
                        @for r in rows.iter().take(self.rows) {
                            tr data-key=(r.key) data-calls=(r.calls) data-errors=(r.errors) data-cost=(r.cost_micros) {
                                td data-label=(what) {
                                    @if capsules {
                                        span.mono title=(r.key) { (capsule_label(self.names, &r.key)) }
                                    } @else {
                                        (r.key)
                                    }
                                }
                                @for (name, f) in columns { td.num data-label=(name) { (f(r)) } }
                            }
                        }
                        @if rows.is_empty() {
                            tr { td colspan=(columns.len() + 1) { "Nothing in this window." } }
                        }
                    }
                }
            }
            @if rows.len() >= self.rows {
                p.hint { "The first " (self.rows) " by calls, then cost." }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_end_with_the_current_bucket_and_span_the_range() {
        let now = 1_764_600_000_123; // 2025-12-01 14:40:00.123 UTC
        let w = Window::of(Range::Hour, now);
        assert_eq!(w.gran, Gran::Minute);
        assert_eq!(w.until_ms, 1_764_600_060_000);
        assert_eq!(w.starts().len(), 60);
        assert_eq!(w.label(w.since_ms), "13:41");
        let w = Window::of(Range::Week, now);
        assert_eq!(w.starts().len(), 168);
        assert_eq!(w.label(w.until_ms - 3_600_000), "12-01 14h");
        let w = Window::of(Range::Month, now);
        assert_eq!((w.gran, w.starts().len()), (Gran::Day, 30));
        assert_eq!(w.label(w.until_ms - 86_400_000), "12-01");
        assert!(Range::parse("year").is_none());
        assert_eq!(Board::parse("admin"), Some(Board::Admin));
        assert!(Board::parse("Admin").is_none());
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(latency(None), "—");
        assert_eq!(latency(Some(850)), "850 µs");
        assert_eq!(latency(Some(1_234)), "1.23 ms");
        assert_eq!(latency(Some(2_500_000)), "2.50 s");
        assert_eq!(share(Some(0.9731)), "97.3 %");
        assert_eq!(per(10, 0), 0);
        assert_eq!(per(10, 4), 2);
    }
}
