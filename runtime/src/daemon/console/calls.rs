//! Console pages: capsule-call runs (`POST /v1/runs` with `capsule`).
//! A call is not journaled: the daemon keeps its report in memory
//! (`[daemon] recent_calls` / `recent_calls_bytes`) for
//! `GET /v1/runs/{id}`, and the console shows exactly that — in the runs
//! list beside the DAG runs (newest first, the same filters), and on the
//! run page (`/ui/runs/{id}`). Once the daemon has dropped a call (past
//! those bounds, or after a restart) the API and the console both answer
//! 404; its charges stay in the ledger (the costs page).

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use maud::html;

use super::{
    PageError, Viewer, blocking, failed,
    layout::{self, Section, page},
};
use crate::{
    daemon::{Daemon, contract::CallReport, runs::CallRun},
    dag::{
        journal::{RunQuery, RunSummary},
        status::{NodeFailureClass, RunPhase},
    },
    ledger::{Filter, Kind},
};

/// Bytes of a call's output shown.
const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Log lines shown.
const MAX_LOG_LINES: usize = 2_000;
/// Ledger entries read for a call's cost (a call makes a handful).
const MAX_COST_ENTRIES: usize = 10_000;

/// The phase a finished call is in.
pub(super) fn phase(call: &CallRun) -> RunPhase {
    if call.failure.is_some() {
        RunPhase::Failed
    } else {
        RunPhase::Succeeded
    }
}

/// Whether the runs list's `query` selects `call` (tenant, status, class,
/// capsule, time — as the journal's filters select DAG runs).
pub(super) fn matches(query: &RunQuery, call: &CallRun) -> bool {
    query.tenant.as_ref().is_none_or(|t| *t == call.tenant)
        && query.status.is_none_or(|s| s == phase(call))
        && query
            .failure_class
            .is_none_or(|c| call.failure.map(NodeFailureClass::Call) == Some(c))
        && query.capsule.as_ref().is_none_or(|c| *c == call.capsule)
        && query.since_ms.is_none_or(|t| call.created_ms >= t)
        && query.until_ms.is_none_or(|t| call.created_ms < t)
}

/// One row of the runs list.
#[derive(Debug)]
pub(super) enum Listed {
    /// A DAG run (from the journal).
    Dag(RunSummary),
    /// A capsule call (from the daemon's recent calls): its id and record.
    Call(String, CallRun),
}

impl Listed {
    fn created_ms(&self) -> u64 {
        match self {
            Self::Dag(s) => s.created_ms,
            Self::Call(_, c) => c.created_ms,
        }
    }
}

/// The journal query that, merged with the `calls` matching `query`
/// (newest first), yields the list page `query` asks for: the page starts
/// at merged rank `offset`, and at most `min(calls, offset)` calls come
/// before it, so the DAG runs on the page are among the journal's
/// `[offset − k, offset + limit)` with `k = min(calls, offset)`. The
/// journal already reads every summary before its offset, so this reads
/// no more rows than a DAG-only page would.
pub(super) fn window(query: &RunQuery, calls: usize) -> (RunQuery, usize) {
    let k = calls.min(query.offset);
    let mut window = query.clone();
    window.offset -= k;
    window.limit += k;
    (window, k)
}

/// Merge the journal's `window` (see [`window`]) with the matching `calls`
/// (both newest first; a call before a DAG run created the same ms) and
/// cut the page: rows `[k, k + limit)` of the merge. Also says whether
/// more rows follow.
pub(super) fn merge(
    dags: Vec<RunSummary>,
    dags_more: bool,
    calls: Vec<(String, CallRun)>,
    k: usize,
    limit: usize,
) -> (Vec<Listed>, bool) {
    let mut merged = Vec::with_capacity(dags.len() + calls.len());
    let mut dags = dags.into_iter().map(Listed::Dag).peekable();
    let mut calls = calls
        .into_iter()
        .map(|(id, c)| Listed::Call(id, c))
        .peekable();
    loop {
        let take_call = match (dags.peek(), calls.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some(d), Some(c)) => c.created_ms() >= d.created_ms(),
        };
        let next = if take_call { calls.next() } else { dags.next() };
        merged.extend(next);
    }
    let more = dags_more || merged.len() > k + limit;
    let page = merged.into_iter().skip(k).take(limit).collect();
    (page, more)
}

/// What a call's page shows besides its report: the ledger's charges.
#[derive(Debug, Default)]
struct Charges {
    cost_micros: u64,
    tokens: u64,
    entries: usize,
}

/// `GET /ui/runs/{id}` of a capsule call the viewer may see: status,
/// failure class and message, capsule, fuel, wall time, peak memory,
/// tokens and cost (from the ledger), output (cut, escaped) and logs.
pub(super) async fn show(
    daemon: &Arc<Daemon>,
    viewer: &Viewer,
    id: &str,
    call: CallRun,
) -> Response {
    let report: CallReport = match serde_json::from_slice(&call.body) {
        Ok(r) => r,
        Err(e) => return failed(viewer, &e),
    };
    let d = daemon.clone();
    let v = viewer.clone();
    let run = id.to_owned();
    let charges = blocking(viewer, move || {
        let filter = Filter {
            run: Some(run),
            limit: Some(MAX_COST_ENTRIES),
            ..Filter::default()
        };
        let entries = d
            .engine
            .metering()
            .reports()
            .ls(&filter)
            .map_err(|e| PageError::from(failed(&v, &e)))?;
        let mut c = Charges {
            entries: entries.len(),
            ..Charges::default()
        };
        for e in &entries {
            c.cost_micros = c.cost_micros.saturating_add(e.cost_micros);
            if matches!(e.kind, Kind::LlmTokensInput | Kind::LlmTokensOutput) {
                c.tokens = c.tokens.saturating_add(e.quantity);
            }
        }
        Ok(c)
    })
    .await;
    let charges = match charges {
        Ok(c) => c,
        Err(page) => return page.into_response(),
    };
    let status = phase(&call);
    let usage = &report.usage;
    let mut text = String::new();
    let output = report.output.as_ref().map(|o| {
        text = serde_json::to_string_pretty(o).unwrap_or_default();
        cut(&mut text, MAX_OUTPUT_BYTES);
        text.as_str()
    });
    let body = html! {
        h1 { "Run " code { (id) } }
        p.hint { "capsule call · " code { (report.capsule.name) } " · tenant " (call.tenant) " · created " (layout::time(call.created_ms)) }
        dl.stats #call {
            div { dt { "Status" } dd { span #run-status class={ "badge status-" (status) } data-status=(status) { (status) } } }
            div { dt { "Failure class" } dd { span #failure-class data-value=[call.failure.map(|c| c.name())] title=[call.failure.map(|c| c.name())] {
                @if let Some(c) = call.failure { (c.name()) } @else { "—" }
            } } }
            div { dt { "Fuel" } dd #run-fuel data-value=[usage.fuel_consumed] {
                @if let Some(f) = usage.fuel_consumed { (layout::count(f)) } @else { "— (epoch only)" }
            } }
            div { dt { "Wall time" } dd #run-wall data-value=(usage.wall_time_us) { (format!("{:.3} ms", usage.wall_time_us as f64 / 1000.0)) } }
            div { dt { "Peak memory" } dd #run-memory data-value=(usage.peak_memory_bytes) { (layout::count(usage.peak_memory_bytes)) " B" } }
            div { dt { "Tokens" } dd #run-tokens data-value=(charges.tokens) { (layout::count(charges.tokens)) } }
            div { dt { "Cost" } dd #run-cost data-micros=(charges.cost_micros) { (layout::money(charges.cost_micros)) } }
        }
        @if let Some(f) = &report.failure {
            p.error-message role="status" { (f.message) }
        }
        section #capsule aria-labelledby="capsule-h" {
            h2 #capsule-h { "Capsule" }
            p { code { (report.capsule.name) } " · " code.digest { (report.capsule.digest) } }
            p.hint { (charges.entries) " ledger charges; a call has no graph, nothing to cancel or resume." }
        }
        section #output aria-labelledby="output-h" {
            h2 #output-h { "Output" }
            @if let Some(text) = output { pre { (text) } } @else { p.hint { "No output (the call failed)." } }
        }
        section #logs aria-labelledby="logs-h" {
            h2 #logs-h { "Logs" }
            @if report.logs.is_empty() {
                p.hint { "The capsule logged nothing." }
            } @else {
                pre {
                    @for line in report.logs.iter().take(MAX_LOG_LINES) {
                        (line.level) " " (line.message)
                        @for (k, v) in &line.fields { " " (k) "=" (v) }
                        "\n"
                    }
                }
                @if report.logs.len() > MAX_LOG_LINES {
                    p.hint { "More lines than a page shows (" (MAX_LOG_LINES) "): " code { "GET /v1/runs/" (id) } " has them all." }
                }
            }
        }
    };
    page(viewer, Section::Runs, &format!("Run {id}"), body)
}

/// Cut `text` at `max` bytes (on a char boundary), marking the cut.
fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        text.push_str("\n… (cut)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FailureClass;

    fn call(tenant: &str, at: u64, failure: Option<FailureClass>) -> CallRun {
        CallRun {
            tenant: tenant.into(),
            body: Default::default(),
            created_ms: at,
            capsule: "echo".into(),
            failure,
        }
    }

    fn dag(run: &str, at: u64) -> RunSummary {
        RunSummary {
            run: run.into(),
            name: run.into(),
            tenant: "acme".into(),
            status: RunPhase::Succeeded,
            created_ms: at,
            updated_ms: at,
            nodes: 1,
            done: 1,
            failed: 0,
            events: 3,
            failure_class: None,
            capsules: vec!["echo".into()],
        }
    }

    fn ids(rows: &[Listed]) -> Vec<String> {
        rows.iter()
            .map(|r| match r {
                Listed::Dag(s) => s.run.clone(),
                Listed::Call(id, _) => id.clone(),
            })
            .collect()
    }

    #[test]
    fn calls_are_filtered_like_dag_runs() {
        let failed = call("acme", 50, Some(FailureClass::OutOfFuel));
        let q = |f: &dyn Fn(&mut RunQuery)| {
            let mut q = RunQuery {
                tenant: Some("acme".into()),
                limit: 10,
                ..RunQuery::default()
            };
            f(&mut q);
            q
        };
        assert!(matches(&q(&|_| {}), &failed));
        assert!(!matches(&q(&|q| q.tenant = Some("other".into())), &failed));
        assert!(matches(&q(&|q| q.status = Some(RunPhase::Failed)), &failed));
        assert!(!matches(
            &q(&|q| q.status = Some(RunPhase::Succeeded)),
            &failed
        ));
        assert!(!matches(
            &q(&|q| q.status = Some(RunPhase::Running)),
            &failed
        ));
        assert!(matches(
            &q(&|q| q.failure_class = Some(NodeFailureClass::Call(FailureClass::OutOfFuel))),
            &failed
        ));
        assert!(!matches(
            &q(&|q| q.failure_class = Some(NodeFailureClass::GateRejected)),
            &failed
        ));
        assert!(!matches(&q(&|q| q.capsule = Some("other".into())), &failed));
        assert!(matches(&q(&|q| q.since_ms = Some(50)), &failed));
        assert!(!matches(&q(&|q| q.until_ms = Some(50)), &failed));
    }

    /// Every page of the merged list, cut as [`window`] and [`merge`] cut
    /// it from a journal that answers offset/limit, equals the same slice
    /// of the whole list merged at once.
    #[test]
    fn merged_pages_are_slices_of_the_whole_merge() {
        // DAG runs at 100, 97, 94, …; calls at 99, 98, 90, 60, 5.
        let all_dags: Vec<RunSummary> = (0..30)
            .map(|i| dag(&format!("d{i}"), 100 - 3 * i))
            .collect();
        let all_calls: Vec<(String, CallRun)> = [99, 98, 90, 60, 5]
            .iter()
            .map(|&t| (format!("c{t}"), call("acme", t, None)))
            .collect();
        let (whole, more) = merge(
            all_dags.clone(),
            false,
            all_calls.clone(),
            0,
            usize::MAX / 2,
        );
        assert!(!more);
        let whole = ids(&whole);
        assert_eq!(whole.len(), 35);
        assert_eq!(&whole[..4], ["d0", "c99", "c98", "d1"]);
        for limit in [1, 3, 7, 10] {
            for page in 0..(35 / limit + 2) {
                let query = RunQuery {
                    offset: page * limit,
                    limit,
                    ..RunQuery::default()
                };
                let (w, k) = window(&query, all_calls.len());
                let dags: Vec<_> = all_dags
                    .iter()
                    .skip(w.offset)
                    .take(w.limit)
                    .cloned()
                    .collect();
                let dags_more = all_dags.len() > w.offset + w.limit;
                let (rows, more) = merge(dags, dags_more, all_calls.clone(), k, limit);
                let expected: Vec<_> = whole
                    .iter()
                    .skip(page * limit)
                    .take(limit)
                    .cloned()
                    .collect();
                assert_eq!(ids(&rows), expected, "limit {limit} page {page}");
                assert_eq!(
                    more,
                    whole.len() > page * limit + limit,
                    "limit {limit} page {page}"
                );
            }
        }
    }
}
