//! Console page: the review queue — `GET /ui/ops/reviews[?page=N]`, for
//! operators only (anyone else gets the 404 page, like `/ui/ops`). The
//! marketplace versions waiting for a review (`submitted`: the automated
//! review has not decided; `awaiting-approval`: a reviewer must approve
//! or reject), oldest first, paginated by `[console] max_page_rows` (at
//! most 50 a page), each with its review report's every step and the
//! actions the state machine allows (the author console's forms, which
//! call the API's handlers).

use std::sync::Arc;

use axum::{
    Extension,
    extract::{RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::html;
use serde::Deserialize;

use super::{
    PageError, Viewer, author, blocking, failed,
    layout::{self, Section, count},
    missing,
};
use crate::daemon::{Daemon, market as api};

/// Versions a queue page shows at most.
const PER_PAGE: usize = 50;
/// The deepest page accepted.
const MAX_PAGE: usize = 10_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueQuery {
    page: Option<String>,
}

/// `GET /ui/ops/reviews`.
pub(super) async fn queue(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(raw): RawQuery,
) -> Response {
    if !viewer.principal.is_operator() {
        return missing(&viewer, "page");
    }
    let bad = |message: &str| {
        layout::error_page(
            Some(&viewer),
            StatusCode::BAD_REQUEST,
            &format!("`page`: {message}"),
        )
    };
    let query: QueueQuery = match serde_urlencoded::from_str(raw.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return bad(&format!("this page takes only `page` ({e})")),
    };
    let page = match query
        .page
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        None => 1,
        Some(p) => match p.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => return bad(&format!("`{p}` is not a whole number from 1 to {MAX_PAGE}")),
        },
    };
    let per = daemon.console.config.max_page_rows.clamp(1, PER_PAGE);
    let market = daemon.market.market.clone();
    let principal = viewer.principal.clone();
    let v = viewer.clone();
    let found = blocking(&viewer, move || {
        let (versions, total) = market
            .awaiting_review((page - 1) * per, per)
            .map_err(|e| PageError::from(failed(&v, &e)))?;
        let views: Vec<_> = versions
            .into_iter()
            .filter_map(|s| api::view(&principal, None, s))
            .collect();
        Ok((views, total))
    })
    .await;
    let (rows, total) = match found {
        Ok(f) => f,
        Err(page) => return page.into_response(),
    };
    let pages = total.div_ceil(per).max(1);
    let body = html! {
        h1 { "Review queue" }
        p #review-count data-value=(total) {
            (count(total as u64)) " version" @if total != 1 { "s" } " waiting for a review, oldest first."
        }
        p.hint { a href="/ui/ops" { "← Operations" } }
        @if rows.is_empty() {
            p.notice { "Nothing is waiting for a review." }
        } @else {
            div.table-wrap {
                table.data.collapse #review-queue {
                    thead { tr {
                        th scope="col" { "Version" } th scope="col" { "State" } th scope="col" { "Submitted" }
                        th scope="col" { "Review" } th scope="col" { "Actions" }
                    } }
                    tbody {
                        @for s in &rows {
                            (author::submission_row(&viewer, s, true))
                        }
                    }
                }
            }
        }
        @if pages > 1 {
            nav.pager aria-label="Pages" {
                @if page > 1 { a rel="prev" href={ "/ui/ops/reviews?page=" (page - 1) } { "← Older" } }
                span { "page " (page) " of " (pages) }
                @if page < pages { a rel="next" href={ "/ui/ops/reviews?page=" (page + 1) } { "Newer →" } }
            }
        }
    };
    layout::page(&viewer, Section::Operations, "Review queue", body)
}
