//! Console page: operations — `GET /ui/ops`, for operators only (anyone
//! else gets the 404 page, as for a page that does not exist).
//!
//! Health (what `/readyz` answers, uptime, version), queue depth (the call
//! pool's queued and running tasks, DAG runs waiting for a driver), active
//! DAG runs, requests refused before their handler by reason (the
//! `soma_rejected_total` counters), the engine's capsule-cache and
//! AOT-artifact-cache hit rates,
//! and the recent failed requests and calls (a ring bounded by count and
//! bytes, see [`crate::daemon::metrics::RecentErrors`]).
//!
//! Cost: in-memory counters and one short lock each; no storage read.

use std::{sync::Arc, time::Duration};

use axum::{Extension, Router, extract::State, response::Response, routing::get};
use maud::{Markup, html};

use super::{
    Viewer, chart,
    layout::{self, Section, count},
    missing,
};
use crate::daemon::{
    Daemon,
    metrics::{ErrorRecord, ErrorSource},
};

/// Most recent errors listed.
const SHOWN_ERRORS: usize = 50;

/// This section's routes.
pub(super) fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/ui/ops", get(ops))
        .route("/ui/ops/reviews", get(super::reviews::queue))
}

/// What the page shows, read from memory at once.
#[derive(Debug)]
struct Snapshot {
    ready: bool,
    uptime: Duration,
    pool_queued: usize,
    pool_running: usize,
    pool_threads: usize,
    dag_queued: usize,
    active_runs: usize,
    rejections: Vec<(String, u64)>,
    cache_hits: u64,
    cache_misses: u64,
    aot_hits: u64,
    aot_misses: u64,
    errors: Vec<ErrorRecord>,
}

impl Snapshot {
    fn of(daemon: &Daemon) -> Self {
        let (pool_queued, pool_running) = daemon.calls.load();
        let (cache_hits, cache_misses) = daemon.engine.cache_stats();
        let (aot_hits, aot_misses) = daemon.engine.aot_stats();
        let mut errors = daemon.metrics.recent_errors().newest_first();
        errors.truncate(SHOWN_ERRORS);
        Self {
            ready: !daemon.runs.is_stopping(),
            uptime: daemon.metrics.uptime(),
            pool_queued,
            pool_running,
            pool_threads: daemon.calls.sharing().threads,
            dag_queued: daemon.runs.queued(),
            active_runs: daemon.runs.active(),
            rejections: daemon.metrics.rejections(),
            cache_hits,
            cache_misses,
            aot_hits,
            aot_misses,
            errors,
        }
    }
}

/// `GET /ui/ops`.
async fn ops(State(daemon): State<Arc<Daemon>>, Extension(viewer): Extension<Viewer>) -> Response {
    if !viewer.principal.is_operator() {
        return missing(&viewer, "page");
    }
    let snapshot = Snapshot::of(&daemon);
    layout::page(
        &viewer,
        Section::Operations,
        "Operations",
        render(&snapshot),
    )
}

/// `93784 s` → `1 d 2 h 3 min`.
fn uptime(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (days, hours) {
        (0, 0) => format!("{minutes} min {} s", s % 60),
        (0, _) => format!("{hours} h {minutes} min"),
        _ => format!("{days} d {hours} h {minutes} min"),
    }
}

/// Hits over lookups, in tenths of a percent; `None` before any lookup.
pub(super) fn hit_rate_permille(hits: u64, misses: u64) -> Option<u64> {
    let total = u128::from(hits) + u128::from(misses);
    (total > 0).then(|| u64::try_from(u128::from(hits) * 1000 / total).unwrap_or(1000))
}

/// `Some(755)` → `75.5 %`; `None` → `no lookups yet`.
pub(super) fn percent(permille: Option<u64>) -> String {
    match permille {
        Some(r) => format!("{}.{} %", r / 10, r % 10),
        None => "no lookups yet".into(),
    }
}

fn render(s: &Snapshot) -> Markup {
    let rate = hit_rate_permille(s.cache_hits, s.cache_misses);
    let aot_rate = hit_rate_permille(s.aot_hits, s.aot_misses);
    let rejected: u64 = s.rejections.iter().fold(0u64, |t, r| t.saturating_add(r.1));
    html! {
        h1 { "Operations" }
        section #health aria-labelledby="health-h" {
            h2 #health-h { "Health" }
            dl.stats {
                div {
                    dt { "Ready" }
                    dd data-ready=(s.ready) {
                        @if s.ready { span.badge.ok { "ready" } } @else { span.badge.fail { "stopping" } }
                    }
                }
                div { dt { "Uptime" } dd data-seconds=(s.uptime.as_secs()) { (uptime(s.uptime)) } }
                div { dt { "Version" } dd.mono { (env!("CARGO_PKG_VERSION")) } }
            }
        }
        section #queue-depth aria-labelledby="queue-h" {
            h2 #queue-h { "Queue depth" }
            dl.stats {
                div { dt { "Calls queued" } dd data-field="calls-queued" data-value=(s.pool_queued) { (count(s.pool_queued as u64)) } }
                div { dt { "Calls running" } dd data-field="calls-running" data-value=(s.pool_running) { (count(s.pool_running as u64)) " / " (s.pool_threads) } }
                div { dt { "DAG runs waiting" } dd data-field="dag-queued" data-value=(s.dag_queued) { (count(s.dag_queued as u64)) } }
            }
        }
        section #active-runs aria-labelledby="active-h" {
            h2 #active-h { "Active runs" }
            dl.stats {
                div { dt { "DAG runs queued or driven" } dd data-value=(s.active_runs) { (count(s.active_runs as u64)) } }
            }
            p.hint { a href="/ui/runs?status=running" { "The running runs" } }
        }
        section #rejections aria-labelledby="rejections-h" {
            h2 #rejections-h { "Rejections" }
            p { "Requests refused before their handler since start: " strong data-value=(rejected) { (count(rejected)) } "." }
            @if !s.rejections.is_empty() {
                (chart::figure(
                    "rejections-chart",
                    "Refusals by reason since start",
                    chart::bars(
                        "Refusals by reason",
                        &s.rejections.iter().map(|(r, n)| chart::Bar {
                            label: r.clone(),
                            value: *n,
                            title: format!("{r}: {n}"),
                        }).collect::<Vec<_>>(),
                        |n| n.to_string(),
                    ),
                    html! {
                        table.data {
                            thead { tr { th scope="col" { "Reason" } th.num scope="col" { "Refused" } } }
                            tbody {
                                @for (reason, n) in &s.rejections {
                                    tr data-reason=(reason) {
                                        td { (reason) }
                                        td.num data-value=(n) { (count(*n)) }
                                    }
                                }
                            }
                        }
                    },
                ))
            }
        }
        section #cache-hit-rate aria-labelledby="cache-h" {
            h2 #cache-h { "Cache hit rates" }
            dl.stats {
                div {
                    dt { "Capsule cache (in memory)" }
                    dd data-field="capsule-cache" data-permille=[rate] { (percent(rate)) }
                }
                div { dt { "Hits / lookups" } dd { (count(s.cache_hits)) " / " (count(s.cache_hits.saturating_add(s.cache_misses))) } }
                div {
                    dt { "AOT cache (compiled artifacts)" }
                    dd data-field="aot-cache" data-permille=[aot_rate] { (percent(aot_rate)) }
                }
                div { dt { "Hits / compiles" } dd { (count(s.aot_hits)) " / " (count(s.aot_hits.saturating_add(s.aot_misses))) } }
            }
            p.hint { "Capsule cache: loads of a capsule already in memory. AOT cache: compiles answered by a stored artifact instead of compiling (off when " code { "engine.aot_cache = false" } ")." }
        }
        section #reviews aria-labelledby="reviews-h" {
            h2 #reviews-h { "Marketplace reviews" }
            p { a #review-queue-link href="/ui/ops/reviews" { "The review queue" } ": versions waiting for a review or a reviewer's decision, oldest first, with their review reports." }
        }
        section #recent-errors aria-labelledby="errors-h" {
            h2 #errors-h { "Recent errors" }
            @if s.errors.is_empty() {
                p { "No failed request, call or DAG node since start." }
            } @else {
                div.table-wrap {
                    table.data.collapse {
                        thead {
                            tr {
                                th scope="col" { "Time" }
                                th scope="col" { "What" }
                                th scope="col" { "Status" }
                                th scope="col" { "Tenant" }
                                th scope="col" { "Class" }
                            }
                        }
                        tbody {
                            @for e in &s.errors {
                                tr data-class=(e.class) data-source=(e.source.kind()) {
                                    td data-label="Time" { (layout::time(e.time_ms)) }
                                    td.mono data-label="What" {
                                        @match (e.source, e.what.split_once('/')) {
                                            (ErrorSource::Node, Some((run, node))) => { a href={ "/ui/runs/" (run) } { (run) } "/" (node) },
                                            _ => { (e.what) },
                                        }
                                    }
                                    td data-label="Status" {
                                        @match e.source {
                                            ErrorSource::Request { status } => (status),
                                            ErrorSource::Call => "call",
                                            ErrorSource::Node => "node",
                                        }
                                    }
                                    td data-label="Tenant" { (e.tenant.as_deref().unwrap_or("—")) }
                                    td data-label="Class" { span.badge.fail { (e.class) } }
                                }
                            }
                        }
                    }
                }
                p.hint { "The last " (SHOWN_ERRORS) " at most, newest first." }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_and_hit_rate_read_well() {
        assert_eq!(uptime(Duration::from_secs(59)), "0 min 59 s");
        assert_eq!(uptime(Duration::from_secs(3 * 3600 + 120)), "3 h 2 min");
        assert_eq!(uptime(Duration::from_secs(93_784)), "1 d 2 h 3 min");
        assert_eq!(hit_rate_permille(0, 0), None);
        assert_eq!(hit_rate_permille(3, 1), Some(750));
        assert_eq!(hit_rate_permille(u64::MAX, 0), Some(1000));
        assert_eq!(percent(Some(755)), "75.5 %");
        assert_eq!(percent(None), "no lookups yet");
    }
}
