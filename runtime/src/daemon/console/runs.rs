//! Console pages: runs. The list (`/ui/runs`, filtered and paginated
//! through the journal's (tenant, created) index), a run's page
//! (`/ui/runs/{id}`: status, graph, timeline, gate verdicts, retries, logs,
//! cost per node from the ledger's run index, cancel and resume), its graph
//! alone (`/graph`, which the page's script swaps in when a planner adds
//! nodes), its event stream (`/events`: the API's stream behind the
//! session, under the same per-tenant stream caps), and a new run from a
//! DAG spec (`/ui/runs/new`, as `POST /v1/runs` with `dag`).
//!
//! Every read goes through the journal with the viewer's tenant: another
//! tenant's run is the same 404 page as one that does not exist.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    Extension, Router,
    body::Bytes,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use maud::html;
use serde::Deserialize;
use serde_json::Value;

use super::{
    PageError, Viewer, blocking, calls, failed,
    graph::{self, GraphNode},
    layout::{self, Extras, Section, csrf_field, page, page_with},
    missing,
};
use crate::{
    daemon::{Daemon, api, auth::TokenScope, reply::ApiError},
    dag::{
        history::Event,
        journal::{Journal, JournalError, RunQuery, RunSummary},
        state::{RunState, Status},
        status::{NodeFailureClass, RunPhase},
    },
    ledger::Filter,
};

/// This section's routes.
pub(super) fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/ui/runs", get(list))
        .route("/ui/runs/new", get(new_form).post(create))
        .route("/ui/runs/{id}", get(show))
        .route("/ui/runs/{id}/graph", get(graph_fragment))
        .route("/ui/runs/{id}/events", get(events))
        .route("/ui/runs/{id}/cancel", post(cancel))
        .route("/ui/runs/{id}/resume", post(resume))
}

/// Rows a list page shows unless `per` says otherwise (never above
/// `[console] max_page_rows`).
const DEFAULT_PER: usize = 50;
/// The highest page number accepted (deeper pages scan more rows).
const MAX_PAGE: usize = 100_000;
/// Ledger entries read for a run page's cost table.
const MAX_COST_ENTRIES: usize = 10_000;
/// Log lines shown on a run page in all.
const MAX_LOG_LINES: usize = 2_000;
/// Bytes of a run's output shown.
const MAX_OUTPUT_BYTES: usize = 64 * 1024;

fn bad(viewer: &Viewer, field: &str, message: &str) -> Response {
    layout::error_page(
        Some(viewer),
        StatusCode::BAD_REQUEST,
        &format!("`{field}`: {message}"),
    )
}

fn forbidden(viewer: &Viewer, scope: &str) -> Response {
    layout::error_page(
        Some(viewer),
        StatusCode::FORBIDDEN,
        &format!("Your token does not have the `{scope}` scope this needs."),
    )
}

/// An API error as a console page: 404 is the usual "no such run" page.
fn api_error(viewer: &Viewer, e: &ApiError) -> Response {
    if e.status == StatusCode::NOT_FOUND {
        return missing(viewer, "run");
    }
    let mut r = layout::error_page(Some(viewer), e.status, &e.message);
    if let Some(secs) = e.retry_after
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn journal(daemon: &Daemon) -> Journal {
    Journal::new(daemon.engine.data().database().clone())
}

// ---------------------------------------------------------------- the list

/// The list's query string, as sent (every value checked by [`ListParams::query`]).
#[derive(Debug, Default, Deserialize)]
struct ListParams {
    status: Option<String>,
    class: Option<String>,
    capsule: Option<String>,
    since: Option<String>,
    until: Option<String>,
    failed: Option<String>,
    page: Option<String>,
    per: Option<String>,
}

/// A bad query value: (field, what is accepted).
type BadField = (&'static str, String);

/// A time bound: `YYYY-MM-DD` (UTC midnight; for an upper bound, the end
/// of that day), `YYYY-MM-DDTHH:MM[:SS]` (UTC), RFC 3339, or unix ms.
fn parse_time(field: &'static str, text: &str, upper: bool) -> Result<u64, BadField> {
    use chrono::{NaiveDate, NaiveDateTime};
    let bad = || {
        (
            field,
            format!(
                "`{text}` is not a time: use YYYY-MM-DD, YYYY-MM-DDTHH:MM (UTC), RFC 3339 or unix ms"
            ),
        )
    };
    let ms =
        |t: chrono::DateTime<chrono::Utc>| u64::try_from(t.timestamp_millis()).map_err(|_| bad());
    if let Ok(n) = text.parse::<u64>() {
        return Ok(n);
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let day = if upper {
            d.succ_opt().ok_or_else(bad)?
        } else {
            d
        };
        return ms(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return ms(t.and_utc());
        }
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|_| bad())
        .and_then(|t| ms(t.to_utc()))
}

/// A query value, unless absent or blank.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

impl ListParams {
    /// The journal query these ask for (page size at most `max_rows`), or
    /// the first bad field.
    fn query(&self, tenant: Option<&str>, max_rows: usize) -> Result<RunQuery, BadField> {
        let mut status = given(&self.status)
            .map(|s| {
                s.parse::<RunPhase>().map_err(|_| {
                    (
                        "status",
                        format!("`{s}` is not one of {}", RunPhase::NAMES.join(", ")),
                    )
                })
            })
            .transpose()?;
        match given(&self.failed) {
            None | Some("0") => {}
            Some("1") => match status {
                None | Some(RunPhase::Failed) => status = Some(RunPhase::Failed),
                Some(other) => {
                    return Err((
                        "failed",
                        format!(
                            "failed=1 lists failed runs; it cannot be combined with status={other}"
                        ),
                    ));
                }
            },
            Some(v) => return Err(("failed", format!("`{v}` is not 1 or 0"))),
        }
        let failure_class = given(&self.class)
            .map(|c| {
                c.parse::<NodeFailureClass>().map_err(|_| {
                    (
                        "class",
                        format!(
                            "`{c}` is not one of {}",
                            NodeFailureClass::names().join(", ")
                        ),
                    )
                })
            })
            .transpose()?;
        let since_ms = given(&self.since)
            .map(|t| parse_time("since", t, false))
            .transpose()?;
        let until_ms = given(&self.until)
            .map(|t| parse_time("until", t, true))
            .transpose()?;
        let number = |field: &'static str, v: Option<&str>, default: usize, max: usize| match v {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    (
                        field,
                        format!("`{v}` is not a whole number from 1 to {max}"),
                    )
                }),
        };
        let per = number("per", given(&self.per), DEFAULT_PER.min(max_rows), max_rows)?;
        let page = number("page", given(&self.page), 1, MAX_PAGE)?;
        Ok(RunQuery {
            tenant: tenant.map(str::to_owned),
            status,
            failure_class,
            capsule: given(&self.capsule).map(str::to_owned),
            since_ms,
            until_ms,
            offset: (page - 1) * per,
            limit: per,
        })
    }

    /// The query string of this list at `page` (for the pager's links).
    fn link(&self, page: usize) -> String {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        for (k, v) in [
            ("status", &self.status),
            ("class", &self.class),
            ("capsule", &self.capsule),
            ("since", &self.since),
            ("until", &self.until),
            ("failed", &self.failed),
            ("per", &self.per),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.trim().is_empty()) {
                pairs.push((k, v.to_owned()));
            }
        }
        pairs.push(("page", page.to_string()));
        let q = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        format!("/ui/runs?{q}")
    }
}

/// `GET /ui/runs`.
async fn list(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(raw): RawQuery,
) -> Response {
    if !viewer.may(TokenScope::Read) {
        return forbidden(&viewer, "read");
    }
    let params: ListParams = match serde_urlencoded::from_str(raw.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => {
            return bad(
                &viewer,
                "query",
                &format!("the query string could not be read: {e}"),
            );
        }
    };
    let operator = viewer.principal.is_operator();
    let tenant = (!operator).then(|| viewer.tenant().to_owned());
    let query = match params.query(tenant.as_deref(), daemon.console.config.max_page_rows) {
        Ok(q) => q,
        Err((field, message)) => return bad(&viewer, field, &message),
    };
    let per = query.limit;
    let page_no = query.offset / per.max(1) + 1;
    // Capsule calls are held in memory, not journaled: merged in by time.
    let recent_calls = daemon
        .runs
        .recent_calls(|c| calls::matches(&query, c) && viewer.sees(&c.tenant));
    let (window, skip) = calls::window(&query, recent_calls.len());
    let found = match &daemon.temporal {
        // Temporal's visibility store lists the workflows (see
        // `temporal::client::list_runs`).
        Some(t) => t
            .list(&window, TEMPORAL_SCAN)
            .await
            .map_err(|e| PageError::from(api_error(&viewer, &e))),
        None => {
            let d = daemon.clone();
            let v = viewer.clone();
            blocking(&viewer, move || {
                journal(&d)
                    .list(&window)
                    .map_err(|e| PageError::from(failed(&v, &e)))
            })
            .await
        }
    };
    let found = match found {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let (rows, more) = calls::merge(found.runs, found.more, recent_calls, skip, per);
    let selected = |field: &Option<String>, value: &str| field.as_deref() == Some(value);
    let body = html! {
        h1 { "Runs" }
        p.actions {
            @if viewer.may(TokenScope::Run) {
                a.button.primary href="/ui/runs/new" { "New run" } " "
            }
            a #failed-only href="/ui/runs?failed=1" { "Failed only" }
        }
        form.filters method="get" action="/ui/runs" {
            div {
                label for="status" { "Status" }
                select #status name="status" {
                    option value="" { "any" }
                    @for name in RunPhase::NAMES {
                        option value=(name) selected[selected(&params.status, name)] { (name) }
                    }
                }
            }
            div {
                label for="class" { "Failure class" }
                select #class name="class" {
                    option value="" { "any" }
                    @for name in NodeFailureClass::names() {
                        option value=(name) selected[selected(&params.class, name)] { (name) }
                    }
                }
            }
            div {
                label for="capsule" { "Capsule" }
                input #capsule type="text" name="capsule" value=[params.capsule.as_deref()] placeholder="catalog name";
            }
            div {
                label for="since" { "Created from" }
                input #since type="date" name="since" value=[params.since.as_deref()];
            }
            div {
                label for="until" { "to (inclusive)" }
                input #until type="date" name="until" value=[params.until.as_deref()];
            }
            @if selected(&params.failed, "1") {
                input type="hidden" name="failed" value="1";
            }
            button type="submit" { "Filter" }
            a href="/ui/runs" { "Clear" }
        }
        @if rows.is_empty() {
            p.notice { "No runs match." }
        } @else {
            div.table-wrap {
                table #runs .data.collapse {
                    thead {
                        tr {
                            th scope="col" { "Run" }
                            th scope="col" { "Name" }
                            @if operator { th scope="col" { "Tenant" } }
                            th scope="col" { "Status" }
                            th scope="col" { "Failure class" }
                            th scope="col" { "Capsules" }
                            th scope="col" { "Nodes" }
                            th scope="col" { "Created" }
                        }
                    }
                    tbody {
                        @for row in &rows {
                            @match row {
                                calls::Listed::Dag(r) => {
                                    tr data-run=(r.run) data-status=(r.status) data-kind="dag" {
                                        td data-label="Run" { a href={ "/ui/runs/" (r.run) } { code { (r.run) } } }
                                        td data-label="Name" { (r.name) }
                                        @if operator { td data-label="Tenant" { (r.tenant) } }
                                        td data-label="Status" { span class={ "badge status-" (r.status) } { (r.status) } }
                                        td data-label="Failure class" data-field="failure-class" {
                                            @if let Some(c) = r.failure_class { (c) } @else { "—" }
                                        }
                                        td data-label="Capsules" { (r.capsules.join(", ")) }
                                        td.num data-label="Nodes" { (r.done) "/" (r.nodes) @if r.failed > 0 { " (" (r.failed) " failed)" } }
                                        td data-label="Created" { (layout::time(r.created_ms)) }
                                    }
                                }
                                calls::Listed::Call(id, c) => {
                                    @let status = calls::phase(c);
                                    tr data-run=(id) data-status=(status) data-kind="call" {
                                        td data-label="Run" { a href={ "/ui/runs/" (id) } { code { (id) } } }
                                        td data-label="Name" { "capsule call" }
                                        @if operator { td data-label="Tenant" { (c.tenant) } }
                                        td data-label="Status" { span class={ "badge status-" (status) } { (status) } }
                                        td data-label="Failure class" data-field="failure-class" {
                                            @if let Some(f) = c.failure { (f.name()) } @else { "—" }
                                        }
                                        td data-label="Capsules" { (c.capsule) }
                                        td.num data-label="Nodes" { "call" }
                                        td data-label="Created" { (layout::time(c.created_ms)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if page_no > 1 {
                a rel="prev" href=(params.link(page_no - 1)) { "← Newer" }
            }
            span { "Page " (page_no) }
            @if more {
                a rel="next" href=(params.link(page_no + 1)) { "Older →" }
            }
        }
    };
    page(&viewer, Section::Runs, "Runs", body)
}

// ---------------------------------------------------------------- a run

/// What a run page shows, read on the blocking pool.
struct RunData {
    summary: RunSummary,
    state: RunState,
    history: Vec<Event>,
    /// node → (entries, micro-units).
    costs: BTreeMap<String, (usize, u64)>,
    /// The ledger had more entries than were read.
    costs_cut: bool,
}

/// The run's summary, if the viewer may see it (else the 404 page).
fn visible_summary(daemon: &Daemon, viewer: &Viewer, id: &str) -> Result<RunSummary, PageError> {
    match journal(daemon).summary(id) {
        Ok(s) if viewer.sees(&s.tenant) => Ok(s),
        Ok(_) | Err(JournalError::NotFound(_)) => Err(missing(viewer, "run").into()),
        Err(e) => Err(failed(viewer, &e).into()),
    }
}

/// How many workflows one run list reads at most from Temporal's
/// visibility store (the filters it cannot ask for are checked here).
const TEMPORAL_SCAN: usize = 5_000;

/// The run's state (and history), if the viewer may see it: from its
/// workflow on the Temporal engine (a query; its charges are the ones the
/// workflow recorded), else from the journal and the ledger.
async fn load_run(
    daemon: &Arc<Daemon>,
    viewer: &Viewer,
    id: &str,
    with_costs: bool,
) -> Result<RunData, PageError> {
    if let Some(t) = &daemon.temporal
        && crate::daemon::temporal::tenant_of(id).is_some()
    {
        let (result, state) = t
            .result(&viewer.principal, id)
            .await
            .map_err(|e| PageError::from(api_error(viewer, &e)))?;
        let (costs, costs_cut) = if with_costs {
            node_costs(&result.entries)
        } else {
            (BTreeMap::new(), false)
        };
        return Ok(RunData {
            summary: crate::dag::scheduler::summary(&state),
            costs,
            costs_cut,
            state,
            history: result.history,
        });
    }
    let d = daemon.clone();
    let v = viewer.clone();
    let run_id = id.to_owned();
    blocking(viewer, move || read_run(&d, &v, &run_id, with_costs)).await
}

/// Per node (entries, micro-units) of a run's first [`MAX_COST_ENTRIES`]
/// ledger entries, and whether there were more.
fn node_costs(entries: &[crate::ledger::Entry]) -> (BTreeMap<String, (usize, u64)>, bool) {
    let mut costs: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for e in entries.iter().take(MAX_COST_ENTRIES) {
        let c = costs.entry(e.node.clone()).or_default();
        c.0 += 1;
        c.1 = c.1.saturating_add(e.cost_micros);
    }
    (costs, entries.len() > MAX_COST_ENTRIES)
}

/// The run's state (and history), if the viewer may see it.
fn read_run(
    daemon: &Daemon,
    viewer: &Viewer,
    id: &str,
    with_costs: bool,
) -> Result<RunData, PageError> {
    let summary = visible_summary(daemon, viewer, id)?;
    let history = match journal(daemon).history(id) {
        Ok(h) => h,
        Err(JournalError::NotFound(_)) => return Err(missing(viewer, "run").into()),
        Err(e) => return Err(failed(viewer, &e).into()),
    };
    let state = RunState::replay(id, &history).map_err(|e| failed(viewer, &e))?;
    let mut costs = BTreeMap::new();
    let mut costs_cut = false;
    if with_costs {
        let filter = Filter {
            run: Some(id.to_owned()),
            limit: Some(MAX_COST_ENTRIES + 1),
            ..Filter::default()
        };
        let entries = daemon
            .engine
            .metering()
            .reports()
            .ls(&filter)
            .map_err(|e| failed(viewer, &e))?;
        (costs, costs_cut) = node_costs(&entries);
    }
    Ok(RunData {
        summary,
        state,
        history,
        costs,
        costs_cut,
    })
}

/// The live nodes of a run, for [`graph::svg`].
fn graph_nodes(state: &RunState) -> Vec<GraphNode> {
    let all = state.nodes();
    let mut index = vec![usize::MAX; all.len()];
    let mut k = 0;
    for (i, n) in all.iter().enumerate() {
        if !n.retired {
            index[i] = k;
            k += 1;
        }
    }
    let map = |i: usize| index.get(i).copied().filter(|&j| j != usize::MAX);
    all.iter()
        .filter(|n| !n.retired)
        .map(|n| GraphNode {
            id: n.id.clone(),
            capsule: n.spec.capsule.clone(),
            status: n.status.name(),
            deps: n.deps().iter().filter_map(|&d| map(d)).collect(),
            parent: n.parent().and_then(map),
        })
        .collect()
}

/// Where a run is: finished as recorded, else queued/running while this
/// daemon holds it (on Temporal: while its workflow runs, which is while
/// it is unfinished), else interrupted (no driver: resumable).
fn run_phase(daemon: &Daemon, id: &str, state: &RunState) -> (RunPhase, bool) {
    if let Some((status, ..)) = &state.finished {
        return (RunPhase::from(*status), false);
    }
    if daemon.temporal.is_some() {
        return (RunPhase::Running, true);
    }
    match daemon.runs.live(id) {
        Some(live) if !live.done.load(std::sync::atomic::Ordering::SeqCst) => {
            let driven = live
                .summary
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some();
            (
                if driven {
                    RunPhase::Running
                } else {
                    RunPhase::Queued
                },
                true,
            )
        }
        _ => (RunPhase::Interrupted, false),
    }
}

/// `value` as indented JSON, cut at `max` bytes.
fn json_text(value: &Value, max: usize) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n… (cut)");
    }
    text
}

/// Time since the run was created, for the timeline.
fn offset(ms: Option<u64>, t0: u64) -> String {
    ms.map_or_else(
        || "—".into(),
        |t| format!("{:.3} s", t.saturating_sub(t0) as f64 / 1000.0),
    )
}

/// `GET /ui/runs/{id}`.
async fn show(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    if !viewer.may(TokenScope::Read) {
        return forbidden(&viewer, "read");
    }
    if let Some(call) = daemon.runs.call(&id) {
        return if viewer.sees(&call.tenant) {
            calls::show(&daemon, &viewer, &id, call).await
        } else {
            missing(&viewer, "run")
        };
    }
    let data = match load_run(&daemon, &viewer, &id, true).await {
        Ok(data) => data,
        Err(r) => return r.into_response(),
    };
    let RunData {
        summary,
        state,
        history,
        costs,
        costs_cut,
    } = data;
    let (phase, live) = run_phase(&daemon, &id, &state);
    let finished = state.finished.is_some();
    let may_run = viewer.may(TokenScope::Run);
    let t0 = state.created_ms;
    let failure_class = summary.failure_class.or_else(|| {
        state.nodes().iter().find_map(|n| match &n.status {
            Status::Failed(f) if !n.retired => Some(f.class),
            _ => None,
        })
    });
    let error = state.finished.as_ref().and_then(|f| f.2.clone());
    let output = state.finished.as_ref().and_then(|f| f.1.clone());
    let nodes = graph_nodes(&state);
    let total: u64 = costs.values().map(|c| c.1).fold(0, u64::saturating_add);
    let last_event = state.events.saturating_sub(1);
    let mut log_lines = 0usize;
    let body = html! {
        h1 { "Run " code { (id) } }
        p.hint { (state.spec.name) " · tenant " (state.tenant) " · created " (layout::time(t0)) " · from " (state.origin) }
        dl.stats {
            div { dt { "Status" } dd { span #run-status class={ "badge status-" (phase) } data-status=(phase) { (phase) } } }
            div { dt { "Failure class" } dd { span #failure-class data-value=[failure_class.map(|c| c.name())] title=[failure_class.map(|c| c.name())] {
                @if let Some(c) = failure_class { (c) } @else { "—" }
            } } }
            div { dt { "Nodes" } dd #run-nodes { (summary.done) "/" (summary.nodes) } }
            div { dt { "Cost" } dd #run-cost data-micros=(total) { (layout::money(total)) } }
        }
        @if let Some(e) = &error {
            p.error-message role="status" { (e) }
        }
        @if !finished && may_run {
            // Its box keeps its height when the run ends and the live
            // script removes the forms (no layout shift).
            div #run-actions .actions {
                form #cancel-form .inline method="post" action={ "/ui/runs/" (id) "/cancel" }
                    data-confirm="Cancel this run?" {
                    (csrf_field(&viewer))
                    button.danger type="submit" { "Cancel run" }
                }
                @if !live {
                    form #resume-form .inline method="post" action={ "/ui/runs/" (id) "/resume" } {
                        (csrf_field(&viewer))
                        button.primary type="submit" { "Resume run" }
                    }
                }
            }
        }
        section aria-labelledby="graph-h" {
            h2 #graph-h { "Graph" }
            div #graph .graph data-graph={ "/ui/runs/" (id) "/graph" }
                data-events={ "/ui/runs/" (id) "/events?after=" (last_event) }
                data-live=(if finished { "0" } else { "1" }) {
                (graph::svg(&nodes, &format!("The DAG of run {id}")))
            }
        }
        section #timeline aria-labelledby="timeline-h" {
            h2 #timeline-h { "Timeline" }
            table.data.collapse {
                thead { tr {
                    th scope="col" { "Node" } th scope="col" { "Capsule" } th scope="col" { "Status" }
                    th scope="col" { "Attempts" } th scope="col" { "Round" } th scope="col" { "Start" }
                    th scope="col" { "End" } th scope="col" { "Wall" } th scope="col" { "Fuel" } th scope="col" { "Failure" }
                } }
                tbody {
                    @for n in state.nodes().iter().filter(|n| !n.retired) {
                        tr data-node=(n.id) data-status=(n.status.name()) {
                            td data-label="Node" { code { (n.id) } }
                            td data-label="Capsule" { (n.spec.capsule) }
                            td data-label="Status" { span class={ "badge status-" (n.status.name()) } { (n.status.name()) } }
                            td.num data-label="Attempts" { (n.attempts) }
                            td.num data-label="Round" { (n.round) }
                            td.num data-label="Start" { (offset(n.started_ms, t0)) }
                            td.num data-label="End" { (offset(n.ended_ms, t0)) }
                            td.num data-label="Wall" { (format!("{:.1} ms", n.wall_us as f64 / 1000.0)) }
                            td.num data-label="Fuel" { (layout::count(n.fuel)) }
                            td data-label="Failure" {
                                @if let Status::Failed(f) = &n.status {
                                    span.badge.fail { (f.class) } " " (f.message)
                                } @else { "—" }
                            }
                        }
                    }
                }
            }
        }
        section #gates aria-labelledby="gates-h" {
            h2 #gates-h { "Gate verdicts" }
            @let verdicts: Vec<_> = history.iter().filter_map(|e| match e {
                Event::Verdict { node, round, verdict, time_ms, .. } => Some((node, round, verdict, time_ms)),
                _ => None,
            }).collect();
            @if verdicts.is_empty() {
                p.hint { "No gate has judged." }
            } @else {
                ul {
                    @for (node, round, verdict, time_ms) in verdicts {
                        li.verdict data-gate=(node) data-round=(round) data-approved=(verdict.approved) {
                            code { (node) } " round " (round) ": "
                            @if verdict.approved { span.badge.ok { "approved" } } @else { span.badge.fail { "rejected" } }
                            " score " (format!("{:.2}", verdict.score)) " · " (layout::time(*time_ms))
                            @if !verdict.feedback.is_null() {
                                pre.feedback { (json_text(&verdict.feedback, 8 * 1024)) }
                            }
                        }
                    }
                }
            }
        }
        section #approvals aria-labelledby="approvals-h" {
            h2 #approvals-h { "Approvals" }
            @let pending = state.pending_approvals();
            @let given: Vec<_> = history.iter().filter_map(|e| match e {
                Event::Approval { node, verdict, reason, by, tenant, time_ms } => Some((node, verdict, reason, by, tenant, time_ms)),
                _ => None,
            }).collect();
            @if pending.is_empty() && given.is_empty() {
                p.hint { "No node asks for a human verdict." }
            } @else {
                ul {
                    @for w in &pending {
                        li.approval data-node=(w.node) data-state="awaiting-approval" {
                            code { (w.node) } " " span.badge.warn { "awaiting approval" }
                            @if let Some(at) = w.deadline_ms { " · on_timeout at " (layout::time(at)) }
                            " · " code { "soma dag approve|reject " (id) " " (w.node) }
                        }
                    }
                    @for (node, verdict, reason, by, tenant, time_ms) in given {
                        li.approval data-node=(node) data-verdict=(verdict) {
                            code { (node) } " "
                            @if *verdict == crate::dag::spec::ApprovalVerdict::Approve { span.badge.ok { "approved" } } @else { span.badge.fail { "rejected" } }
                            " by " (by)
                            @if let Some(t) = tenant { " (" (t) ")" }
                            " · " (layout::time(*time_ms))
                            @if let Some(r) = reason { " · " (r) }
                        }
                    }
                }
            }
        }
        section #retries aria-labelledby="retries-h" {
            h2 #retries-h { "Retries" }
            @let retries: Vec<_> = history.iter().filter_map(|e| match e {
                Event::Failed { node, call, failure, retry_at_ms: Some(at), .. } => Some((node, call.attempt, failure, *at)),
                _ => None,
            }).collect();
            @if retries.is_empty() {
                p.hint { "No attempt was retried." }
            } @else {
                table.data.collapse {
                    thead { tr { th scope="col" { "Node" } th scope="col" { "Attempt" } th scope="col" { "Class" } th scope="col" { "Message" } th scope="col" { "Retried at" } } }
                    tbody {
                        @for (node, attempt, failure, at) in retries {
                            tr {
                                td data-label="Node" { code { (node) } }
                                td.num data-label="Attempt" { (attempt) }
                                td data-label="Class" { (failure.class) }
                                td data-label="Message" { (failure.message) }
                                td data-label="Retried at" { (layout::time(at)) }
                            }
                        }
                    }
                }
            }
        }
        section #logs aria-labelledby="logs-h" {
            h2 #logs-h { "Logs" }
            @let calls: Vec<_> = history.iter().filter_map(|e| match e {
                Event::Succeeded { node, call, .. } | Event::Failed { node, call, .. }
                | Event::Expanded { node, call, .. } | Event::Verdict { node, call, .. } => Some((node, call)),
                _ => None,
            }).filter(|(_, c)| !c.logs.is_empty()).collect();
            @if calls.is_empty() {
                p.hint { "No capsule logged anything." }
            }
            @for (node, call) in calls {
                @if log_lines < MAX_LOG_LINES {
                    details data-node=(node) {
                        summary { code { (node) } " attempt " (call.attempt) " (" (call.logs.len()) " lines)" }
                        pre {
                            @for line in call.logs.iter().take(MAX_LOG_LINES - log_lines) {
                                (line) "\n"
                            }
                        }
                    }
                    ({ log_lines += call.logs.len(); "" })
                }
            }
            @if log_lines > MAX_LOG_LINES {
                p.hint { "More lines were logged than a page shows (" (MAX_LOG_LINES) "); " code { "soma dag status" } " has them all." }
            }
        }
        section #node-costs aria-labelledby="costs-h" {
            h2 #costs-h { "Cost per node" }
            @if costs.is_empty() {
                p.hint { "Nothing was charged to this run." }
            } @else {
                table.data.collapse {
                    thead { tr { th scope="col" { "Node" } th scope="col" { "Charges" } th scope="col" { "Cost" } } }
                    tbody {
                        @for (node, (entries, micros)) in &costs {
                            tr data-node=(node) {
                                td data-label="Node" { code { (node) } }
                                td.num data-label="Charges" { (entries) }
                                td.num data-label="Cost" data-micros=(micros) { (layout::money(*micros)) }
                            }
                        }
                    }
                    tfoot { tr { th scope="row" { "Total" } td {} td.num data-micros=(total) { (layout::money(total)) } } }
                }
                @if costs_cut {
                    p.hint { "Only the newest " (MAX_COST_ENTRIES) " charges are counted here." }
                }
            }
        }
        @if let Some(output) = &output {
            section #output aria-labelledby="output-h" {
                h2 #output-h { "Output" }
                pre { (json_text(output, MAX_OUTPUT_BYTES)) }
            }
        }
    };
    page_with(
        &viewer,
        Section::Runs,
        &format!("Run {id}"),
        Extras {
            scripts: &["runs.js"],
        },
        body,
    )
}

/// `GET /ui/runs/{id}/graph`: the graph alone (an `<svg>`), for the run
/// page's script to swap in when nodes are added.
async fn graph_fragment(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    if !viewer.may(TokenScope::Read) {
        return forbidden(&viewer, "read");
    }
    match load_run(&daemon, &viewer, &id, false).await {
        Ok(data) => {
            let svg = graph::svg(&graph_nodes(&data.state), &format!("The DAG of run {id}"));
            Html(svg.into_string()).into_response()
        }
        Err(r) => r.into_response(),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<u64>,
}

/// `GET /ui/runs/{id}/events[?after=SEQ]`: the API's event stream for the
/// signed-in tenant (same 404 rule, same per-tenant stream caps); `after`
/// does what `Last-Event-ID` does (which a browser sends on reconnecting).
async fn events(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    if !viewer.may(TokenScope::Read) {
        return forbidden(&viewer, "read");
    }
    let after = match serde_urlencoded::from_str::<EventsQuery>(raw.as_deref().unwrap_or("")) {
        Ok(q) => q.after,
        Err(_) => return bad(&viewer, "after", "expected an event sequence number"),
    };
    let mut headers = headers;
    if let Some(after) = after
        && !headers.contains_key("last-event-id")
        && let Ok(v) = HeaderValue::from_str(&after.to_string())
    {
        headers.insert("last-event-id", v);
    }
    match api::event_stream(&daemon, &viewer.principal, id, &headers).await {
        Ok(sse) => sse.into_response(),
        Err(e) => api_error(&viewer, &e),
    }
}

// ---------------------------------------------------------------- actions

/// `POST /ui/runs/{id}/cancel` (scope `run`): as `POST /v1/runs/{id}/cancel`.
async fn cancel(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    if !viewer.may(TokenScope::Run) {
        return forbidden(&viewer, "run");
    }
    match api::cancel(&daemon, &viewer.principal, id.clone()).await {
        Ok(_) => Redirect::to(&format!("/ui/runs/{id}")).into_response(),
        Err(e) => api_error(&viewer, &e),
    }
}

/// `POST /ui/runs/{id}/resume` (scope `run`): queue an unfinished run that
/// no driver holds (its driver gave it up on an error) again. A finished
/// run (succeeded, failed or cancelled) has nothing to resume: its history
/// is final; submit the spec again instead.
async fn resume(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    if !viewer.may(TokenScope::Run) {
        return forbidden(&viewer, "run");
    }
    if daemon.temporal.is_some() {
        return layout::error_page(
            Some(&viewer),
            StatusCode::CONFLICT,
            &format!(
                "Run {id} lives in Temporal, which drives it until it ends: there is nothing to resume."
            ),
        );
    }
    let d = daemon.clone();
    let v = viewer.clone();
    let run_id = id.clone();
    let summary = match blocking(&viewer, move || visible_summary(&d, &v, &run_id)).await {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    if summary.status.is_finished() {
        return layout::error_page(
            Some(&viewer),
            StatusCode::CONFLICT,
            &format!(
                "Run {id} already {}: a finished run's history is final; start a new run instead.",
                summary.status
            ),
        );
    }
    match daemon.runs.resume_idle(&id, &summary.tenant) {
        Ok(Some(_)) => {
            tracing::info!(run = %id, "resumed from the console");
            Redirect::to(&format!("/ui/runs/{id}")).into_response()
        }
        Ok(None) => layout::error_page(
            Some(&viewer),
            StatusCode::CONFLICT,
            &format!("Run {id} is already queued or running."),
        ),
        Err(full) => {
            let mut r = layout::error_page(
                Some(&viewer),
                StatusCode::TOO_MANY_REQUESTS,
                &full.to_string(),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}

// ---------------------------------------------------------------- new run

/// The new-run form.
#[derive(Debug, Default, Deserialize)]
struct NewRunForm {
    #[serde(default)]
    spec: String,
    #[serde(default)]
    input: String,
}

/// A short example spec over the daemon's first catalog capsule.
fn example(first: Option<&str>) -> String {
    let capsule = first.unwrap_or("echo");
    format!(
        "name: hello\ncapsules:\n  c: {capsule}\nnodes:\n  - id: first\n    capsule: c\n    input: {{}}\n"
    )
}

fn new_run_page(
    daemon: &Daemon,
    viewer: &Viewer,
    status: StatusCode,
    form: &NewRunForm,
    errors: Option<(&str, Vec<String>)>,
) -> Response {
    let catalog: Vec<(String, String, String)> = {
        let catalog = daemon.catalog.read().unwrap_or_else(|p| p.into_inner());
        catalog
            .iter()
            .map(|(name, item)| {
                let m = item.capsule.manifest();
                (
                    name.clone(),
                    m.capsule_kind().to_string(),
                    m.description.clone(),
                )
            })
            .collect()
    };
    let placeholder = example(catalog.first().map(|c| c.0.as_str()));
    let body = html! {
        h1 { "New run" }
        @if let Some((field, errors)) = &errors {
            div #run-errors .error-message role="alert" data-field=(field) {
                p { "The run was not started (" code { (field) } "):" }
                ul { @for e in errors { li { (e) } } }
            }
        }
        div.layout {
            form #new-run method="post" action="/ui/runs/new" {
                (csrf_field(viewer))
                label for="spec" { "DAG spec (YAML or JSON)" }
                textarea #spec name="spec" rows="18" required spellcheck="false" placeholder=(placeholder) { (form.spec) }
                label for="input" { "Input (JSON, optional)" }
                textarea #input name="input" rows="4" spellcheck="false" placeholder="{}" { (form.input) }
                button.primary type="submit" { "Start run" }
            }
            aside #catalog-help aria-labelledby="catalog-h" {
                h2 #catalog-h { "Capsules you can use" }
                p.hint { "Name them under " code { "capsules:" } "; " code { "market:NAME" } " names a marketplace listing you installed." }
                @if catalog.is_empty() {
                    p.hint { "The daemon's catalog is empty." }
                } @else {
                    table.data {
                        thead { tr { th scope="col" { "Name" } th scope="col" { "Kind" } th scope="col" { "Description" } } }
                        tbody {
                            @for (name, kind, description) in &catalog {
                                tr { td { code { (name) } } td { (kind) } td { (description) } }
                            }
                        }
                    }
                }
            }
        }
    };
    let mut r = page(viewer, Section::Runs, "New run", body);
    *r.status_mut() = status;
    r
}

/// `GET /ui/runs/new`.
async fn new_form(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
) -> Response {
    if !viewer.may(TokenScope::Run) {
        return forbidden(&viewer, "run");
    }
    new_run_page(
        &daemon,
        &viewer,
        StatusCode::OK,
        &NewRunForm::default(),
        None,
    )
}

/// `POST /ui/runs/new` (scope `run`): start the run as `POST /v1/runs`
/// does (same parse budget, ceilings, run caps and errors) and go to its
/// page (303); a refused spec comes back in the form with the errors.
async fn create(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
    body: Bytes,
) -> Response {
    if !viewer.may(TokenScope::Run) {
        return forbidden(&viewer, "run");
    }
    let form: NewRunForm = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(e) => return bad(&viewer, "form", &format!("the form could not be read: {e}")),
    };
    let refuse = |field: &str, errors: Vec<String>| {
        new_run_page(
            &daemon,
            &viewer,
            StatusCode::BAD_REQUEST,
            &form,
            Some((field, errors)),
        )
    };
    if form.spec.trim().is_empty() {
        return refuse("spec", vec!["Paste a DAG spec (YAML or JSON).".into()]);
    }
    let input = match form.input.trim() {
        "" => None,
        text => match serde_json::from_str::<Value>(text) {
            Ok(v) => Some(v),
            Err(e) => return refuse("input", vec![format!("The input is not JSON: {e}")]),
        },
    };
    let started = api::start_dag_run(
        &daemon,
        &viewer.principal,
        Value::String(form.spec.clone()),
        input,
    )
    .await;
    match started {
        Ok(run) => Redirect::to(&format!("/ui/runs/{run}")).into_response(),
        Err(e) if e.status.is_client_error() && e.status != StatusCode::TOO_MANY_REQUESTS => {
            // The API names its `dag` field; here it is the `spec` textarea.
            let field = match e.field.as_deref() {
                Some("dag") | None => "spec",
                Some(other) => other,
            };
            let errors = match e.details.as_ref().and_then(Value::as_array) {
                Some(list) if !list.is_empty() => list
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                    .collect(),
                _ => vec![e.message.clone()],
            };
            let field = field.to_owned();
            let mut r = refuse(&field, errors);
            *r.status_mut() = e.status;
            r
        }
        Err(e) => api_error(&viewer, &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> ListParams {
        serde_urlencoded::from_str(&serde_urlencoded::to_string(pairs).expect("encode"))
            .expect("decode")
    }

    #[test]
    fn list_queries_are_checked_field_by_field() {
        let q = params(&[
            ("status", "failed"),
            ("class", "out-of-fuel"),
            ("capsule", "echo"),
            ("since", "2026-11-01"),
            ("until", "2026-11-01"),
            ("page", "3"),
            ("per", "20"),
        ])
        .query(Some("acme"), 200)
        .expect("valid");
        assert_eq!(q.tenant.as_deref(), Some("acme"));
        assert_eq!(q.status, Some(RunPhase::Failed));
        assert_eq!(
            q.failure_class.map(NodeFailureClass::name),
            Some("out-of-fuel")
        );
        assert_eq!(q.capsule.as_deref(), Some("echo"));
        assert_eq!(q.since_ms, Some(1_793_491_200_000));
        assert_eq!(
            q.until_ms,
            Some(1_793_491_200_000 + 86_400_000),
            "a whole day"
        );
        assert_eq!((q.offset, q.limit), (40, 20));

        let q = params(&[("failed", "1"), ("status", "")])
            .query(None, 30)
            .expect("valid");
        assert_eq!(q.status, Some(RunPhase::Failed));
        assert_eq!(q.limit, 30, "the default page is at most max_page_rows");

        for (pairs, field) in [
            (&[("status", "done")][..], "status"),
            (&[("class", "oops")][..], "class"),
            (&[("since", "yesterday")][..], "since"),
            (&[("until", "2026-13-01")][..], "until"),
            (&[("per", "0")][..], "per"),
            (&[("per", "201")][..], "per"),
            (&[("page", "x")][..], "page"),
            (&[("failed", "yes")][..], "failed"),
            (&[("failed", "1"), ("status", "succeeded")][..], "failed"),
        ] {
            let (f, message) = params(pairs).query(None, 200).expect_err("refused");
            assert_eq!(f, field, "{pairs:?}: {message}");
        }
        let e = params(&[("status", "done")])
            .query(None, 200)
            .expect_err("bad");
        assert!(
            e.1.contains("queued, running"),
            "names what is accepted: {}",
            e.1
        );
    }

    #[test]
    fn times_take_dates_minutes_rfc3339_and_ms() {
        assert_eq!(
            parse_time("since", "1700000000000", false),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_time("since", "2023-11-14T22:13", false),
            Ok(1_699_999_980_000)
        );
        assert_eq!(
            parse_time("since", "2023-11-14T22:13:20Z", false),
            Ok(1_700_000_000_000)
        );
        assert!(parse_time("since", "14/11/2023", false).is_err());
    }

    #[test]
    fn pager_links_keep_the_filters() {
        let p = params(&[("status", "failed"), ("capsule", "a b"), ("since", "")]);
        assert_eq!(p.link(2), "/ui/runs?status=failed&capsule=a+b&page=2");
    }
}
