//! Console pages: the author console (`GET /ui/author`): the viewer's
//! tenant's author namespaces, their submissions with the review's
//! per-step report, and the month's earnings and payouts — and, for
//! marketplace operators, the review actions the API allows them
//! (approve, reject, publish, yank, deprecate) as CSRF-checked forms
//! (`POST /ui/author/submissions/{id}/{action}`).
//!
//! What it shows is what the API shows the same token: a namespace is
//! listed when the viewer's tenant owns it (`GET /v1/market/payouts`'s
//! rule); an operator may also open any namespace with `?author=`; any
//! other namespace answers the 404 page. Earnings are
//! `GET /v1/market/payouts` for the month (the same handler).

use std::sync::Arc;

use axum::{
    Extension, Router,
    body::Bytes,
    extract::{Path, Query, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use maud::{Markup, html};
use serde::Deserialize;

use super::{
    blocking, failed,
    layout::{self, Section, Viewer, count, csrf_field, money},
    market::{api_error, bad_field, evidence_table},
    missing,
};
use crate::{
    daemon::{
        Daemon,
        contract::market::{PayoutsQuery, SubmissionView},
        market as api,
    },
    market::{payouts::Payouts, store::SubmissionState},
};

/// This section's routes.
pub(super) fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/ui/author", get(author_console))
        .route("/ui/author/submissions/{id}/{action}", post(act))
}

/// What `/ui/author` takes.
struct AuthorQuery {
    month: String,
    author: Option<String>,
    page: usize,
}

impl AuthorQuery {
    fn parse(raw: Option<&str>) -> Result<Self, (String, String)> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| ("query".to_owned(), format!("cannot be read ({e})")))?;
        let mut q = Self {
            month: chrono::Utc::now().format("%Y-%m").to_string(),
            author: None,
            page: 1,
        };
        for (k, v) in pairs {
            let v = v.trim();
            match k.as_str() {
                "month" if !v.is_empty() => {
                    let ok = v.len() == 7
                        && chrono::NaiveDate::parse_from_str(&format!("{v}-01"), "%Y-%m-%d")
                            .is_ok();
                    if !ok {
                        return Err(("month".into(), "a month as YYYY-MM, e.g. 2026-11".into()));
                    }
                    q.month = v.to_owned();
                }
                "author" if !v.is_empty() => {
                    crate::market::listing::check_author(v)
                        .map_err(|reason| ("author".to_owned(), reason))?;
                    q.author = Some(v.to_owned());
                }
                "page" if !v.is_empty() => {
                    q.page = v
                        .parse()
                        .ok()
                        .filter(|p| *p >= 1 && *p <= 100_000)
                        .ok_or_else(|| ("page".to_owned(), "a whole number from 1".to_owned()))?;
                }
                "month" | "author" | "page" => {}
                other => {
                    return Err((
                        other.to_owned(),
                        "unknown parameter; the author console takes month, author and page".into(),
                    ));
                }
            }
        }
        Ok(q)
    }

    fn url(&self, page: usize) -> String {
        let mut pairs = vec![("month", self.month.clone())];
        if let Some(a) = &self.author {
            pairs.push(("author", a.clone()));
        }
        pairs.push(("page", page.to_string()));
        format!(
            "/ui/author?{}",
            serde_urlencoded::to_string(&pairs).unwrap_or_default()
        )
    }
}

/// The namespaces shown and their versions (as the viewer may see them).
struct Namespaces {
    /// `(name, key id)`.
    authors: Vec<(String, String)>,
    /// Newest submission first.
    submissions: Vec<SubmissionView>,
}

/// `GET /ui/author`.
async fn author_console(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = match AuthorQuery::parse(raw.as_deref()) {
        Ok(q) => q,
        Err((field, accepted)) => return bad_field(&viewer, &field, &accepted),
    };
    let market = daemon.market.market.clone();
    let principal = viewer.principal.clone();
    let wanted = query.author.clone();
    let v = viewer.clone();
    let namespaces = blocking(&viewer, move || {
        let authors = market.authors().map_err(|e| failed(&v, &e))?;
        let shown: Vec<_> = authors
            .into_iter()
            .filter(|a| match &wanted {
                // One namespace: the viewer's own, or any for an operator.
                Some(w) => a.name == *w && (api::owns(&principal, a) || principal.is_operator()),
                None => api::owns(&principal, a),
            })
            .collect();
        if wanted.is_some() && shown.is_empty() {
            return Err(missing(&v, "author namespace").into());
        }
        let mut submissions = Vec::new();
        for a in &shown {
            let versions = market
                .author_versions(&a.name)
                .map_err(|e| failed(&v, &e))?;
            submissions.extend(
                versions
                    .into_iter()
                    .filter_map(|s| api::view(&principal, Some(a), s)),
            );
        }
        submissions.sort_by(|a, b| {
            b.submission
                .submitted_ms
                .cmp(&a.submission.submitted_ms)
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(Namespaces {
            authors: shown.into_iter().map(|a| (a.name, a.key_id)).collect(),
            submissions,
        })
    })
    .await;
    let namespaces = match namespaces {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    let payouts = if namespaces.authors.is_empty() {
        None
    } else {
        match api::payouts(
            State(daemon.clone()),
            Extension(viewer.principal.clone()),
            Ok(Query(PayoutsQuery {
                month: query.month.clone(),
                author: query.author.clone(),
            })),
        )
        .await
        {
            Ok(axum::Json(mut p)) => {
                p.authors
                    .retain(|a| namespaces.authors.iter().any(|(n, _)| *n == a.author));
                Some(p)
            }
            Err(e) => return api_error(&viewer, &e, "author namespace"),
        }
    };
    let per = daemon.console.config.max_page_rows.clamp(1, 50);
    let body = author_body(&viewer, &query, &namespaces, payouts.as_ref(), per);
    layout::page(&viewer, Section::Author, "Author console", body)
}

fn author_body(
    viewer: &Viewer,
    query: &AuthorQuery,
    ns: &Namespaces,
    payouts: Option<&Payouts>,
    per: usize,
) -> Markup {
    let total = ns.submissions.len();
    let pages = total.div_ceil(per).max(1);
    let page = query.page.min(pages);
    let rows = ns.submissions.iter().skip((page - 1) * per).take(per);
    let operator = viewer.principal.is_operator();
    html! {
        h1 { "Author console" }
        form.filters #month-form method="get" action="/ui/author" {
            div {
                label for="month" { "Month (UTC)" }
                input #month type="month" name="month" value=(query.month) pattern="[0-9]{4}-[0-9]{2}";
            }
            @if let Some(a) = &query.author { input type="hidden" name="author" value=(a); }
            button type="submit" { "Show" }
        }
        section #authors aria-labelledby="authors-h" {
            h2 #authors-h { "Namespaces" }
            @if ns.authors.is_empty() {
                p.hint {
                    "Your tenant has no author namespace yet: register one with "
                    code { "soma market author register --name NAME --key-file KEY --tenant " (viewer.tenant()) } " or "
                    code { "POST /v1/market/authors" } "."
                }
            } @else {
                ul {
                    @for (name, key) in &ns.authors {
                        li data-author=(name) { strong { (name) } " · key " code { (key) } }
                    }
                }
            }
        }
        section aria-labelledby="submissions-h" {
            h2 #submissions-h { "Submissions" }
            @if total == 0 {
                p.hint { "No submissions." }
            }
            div.table-wrap {
                table.data.collapse #submissions {
                    thead { tr {
                        th scope="col" { "Version" } th scope="col" { "State" } th scope="col" { "Submitted" }
                        th scope="col" { "Review" }
                        @if operator { th scope="col" { "Actions" } }
                    } }
                    tbody {
                        @for s in rows {
                            (submission_row(viewer, s, operator))
                        }
                    }
                }
            }
            @if pages > 1 {
                nav.pager aria-label="Pages" {
                    @if page > 1 { a rel="prev" href=(query.url(page - 1)) { "← Newer" } }
                    span { "page " (page) " of " (pages) }
                    @if page < pages { a rel="next" href=(query.url(page + 1)) { "Older →" } }
                }
            }
        }
        (earnings(query, payouts))
    }
}

pub(super) fn submission_row(viewer: &Viewer, s: &SubmissionView, operator: bool) -> Markup {
    let sub = &s.submission;
    let state = sub.state.name();
    let listed = sub.state.was_published();
    html! {
        tr data-submission=(s.id) data-state=(state) {
            td data-label="Version" {
                @if listed { a href=(format!("/ui/market/{}", sub.listing.name)) { (s.id) } } @else { (s.id) }
                br; span.hint { code title=(sub.digest.to_string()) { (sub.digest.to_string().get(..19).unwrap_or("")) } }
            }
            td data-label="State" { span class=(format!("status-{state}")) { (state) } }
            td data-label="Submitted" { (layout::time(sub.submitted_ms)) }
            td data-label="Review" {
                @match &sub.review {
                    None => span.hint { "not reviewed yet" },
                    Some(r) => {
                        @if r.passed { span.badge.ok { "passed" } } @else { span.badge.fail { "failed" } }
                        @for code in &r.reasons { " " code.reason { (code) } }
                        @if let Some(m) = &r.manual {
                            br; span.hint {
                                @if m.approved { "approved" } @else { "rejected" }
                                " by " (m.reviewer)
                                @if let Some(why) = &m.reason { ": " (why) }
                            }
                        }
                        details.review-steps {
                            summary { "Review report" }
                            (evidence_table(&r.evidence))
                        }
                    }
                }
            }
            @if operator {
                td data-label="Actions" { (actions(viewer, s)) }
            }
        }
    }
}

/// The state changes the API lets an operator make from `s`'s state.
fn allowed_actions(state: SubmissionState) -> &'static [Action] {
    match state {
        SubmissionState::AwaitingApproval => &[Action::Approve, Action::Reject],
        SubmissionState::Approved => &[Action::Publish, Action::Reject],
        SubmissionState::Published | SubmissionState::UnderMaintenance => {
            &[Action::Yank, Action::Deprecate]
        }
        SubmissionState::Submitted
        | SubmissionState::Rejected
        | SubmissionState::Yanked
        | SubmissionState::Deprecated => &[],
    }
}

fn actions(viewer: &Viewer, s: &SubmissionView) -> Markup {
    let allowed = allowed_actions(s.submission.state);
    let path = s.id.replace('/', "%2F");
    html! {
        @if allowed.is_empty() { span.hint { "—" } }
        @for action in allowed {
            @let id = format!("reason-{}-{}", action.name(), s.id.replace(['/', '@', '.'], "-"));
            form.inline.action method="post" action=(format!("/ui/author/submissions/{path}/{}", action.name()))
                data-confirm=(format!("{} {}?", action.label(), s.id)) {
                (csrf_field(viewer))
                @if *action == Action::Reject {
                    label for=(id) { "Reason" }
                    input #(id) type="text" name="reason" required maxlength="500";
                }
                button type="submit" class=[action.danger().then_some("danger")] { (action.label()) }
            }
            " "
        }
    }
}

/// An operator's review action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Approve,
    Reject,
    Publish,
    Yank,
    Deprecate,
}

impl Action {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "approve" => Self::Approve,
            "reject" => Self::Reject,
            "publish" => Self::Publish,
            "yank" => Self::Yank,
            "deprecate" => Self::Deprecate,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
            Self::Publish => "publish",
            Self::Yank => "yank",
            Self::Deprecate => "deprecate",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Approve => "Approve",
            Self::Reject => "Reject",
            Self::Publish => "Publish",
            Self::Yank => "Yank",
            Self::Deprecate => "Deprecate",
        }
    }

    fn danger(self) -> bool {
        matches!(self, Self::Reject | Self::Yank | Self::Deprecate)
    }
}

#[derive(Deserialize)]
struct ActionForm {
    #[serde(default)]
    reason: String,
}

/// `POST /ui/author/submissions/{id}/{action}`: the API's handler for the
/// action (operator only, as there), then back to the author console.
async fn act(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some(action) = Action::parse(&action) else {
        return missing(&viewer, "action");
    };
    if !viewer.principal.is_operator() {
        return layout::error_page(
            Some(&viewer),
            StatusCode::FORBIDDEN,
            &format!(
                "{} is the marketplace's decision: it needs an `operator` token.",
                action.label()
            ),
        );
    }
    let form: ActionForm = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(e) => return bad_field(&viewer, "reason", &format!("the form cannot be read ({e})")),
    };
    let reason = form.reason.trim();
    let request = if reason.is_empty() {
        Bytes::new()
    } else {
        Bytes::from(serde_json::json!({ "reason": reason }).to_string())
    };
    let (d, p, path, body) = (
        State(daemon.clone()),
        Extension(viewer.principal.clone()),
        Path(id.clone()),
        Ok(request),
    );
    let done = match action {
        Action::Approve => api::approve(d, p, path, body).await,
        Action::Reject => api::reject(d, p, path, body).await,
        Action::Publish => api::publish(d, p, path, body).await,
        Action::Yank => api::yank(d, p, path, body).await,
        Action::Deprecate => api::deprecate(d, p, path, body).await,
    };
    match done {
        Ok(axum::Json(s)) => {
            let author = s.submission.author;
            Redirect::to(&format!("/ui/author?author={author}")).into_response()
        }
        Err(e) => api_error(&viewer, &e, "submission"),
    }
}

fn earnings(query: &AuthorQuery, payouts: Option<&Payouts>) -> Markup {
    let empty = Payouts::default();
    let p = payouts.unwrap_or(&empty);
    let revenue: u64 = p.authors.iter().map(|a| a.revenue_micros).sum();
    let platform: u64 = p.authors.iter().map(|a| a.platform_micros).sum();
    let net: u64 = p.authors.iter().map(|a| a.net_micros).sum();
    html! {
        section #earnings aria-labelledby="earnings-h" data-month=(query.month) data-net-micros=(net) {
            h2 #earnings-h { "Earnings in " (query.month) }
            p.hint { "Marketplace fees buyers paid for your listings' calls, from the ledger (" code { "GET /v1/market/payouts?month=" (query.month) } ")." }
            div.table-wrap {
                table.data.collapse {
                    thead { tr {
                        th scope="col" { "Listing" } th scope="col" { "Versions" }
                        th.num scope="col" { "Calls" } th.num scope="col" { "Fees" }
                        th.num scope="col" { "Revenue" } th.num scope="col" { "Platform share" } th.num scope="col" { "Net" }
                    } }
                    tbody {
                        @for a in &p.authors {
                            @for l in &a.listings {
                                tr data-listing=(l.listing) data-revenue-micros=(l.revenue_micros) data-net-micros=(l.net_micros) {
                                    td data-label="Listing" { (l.listing) }
                                    td data-label="Versions" { (l.versions.join(", ")) }
                                    td.num data-label="Calls" { (count(l.calls)) }
                                    td.num data-label="Fees" { (count(l.fees)) }
                                    td.num data-label="Revenue" { (money(l.revenue_micros)) }
                                    td.num data-label="Platform share" { (money(l.platform_micros)) }
                                    td.num data-label="Net" { (money(l.net_micros)) }
                                }
                            }
                        }
                        @if p.authors.is_empty() {
                            tr { td colspan="7" { span.hint { "No fees this month." } } }
                        }
                    }
                }
            }
        }
        section #payouts aria-labelledby="payouts-h" {
            h2 #payouts-h { "Payouts for " (query.month) }
            div.table-wrap {
                table.data.collapse {
                    thead { tr {
                        th scope="col" { "Namespace" } th.num scope="col" { "Revenue" }
                        th.num scope="col" { "Platform share" } th.num scope="col" { "Paid to the author" }
                    } }
                    tbody {
                        @for a in &p.authors {
                            tr data-author=(a.author) data-net-micros=(a.net_micros) {
                                td data-label="Namespace" { (a.author) }
                                td.num data-label="Revenue" { (money(a.revenue_micros)) }
                                td.num data-label="Platform share" { (money(a.platform_micros)) }
                                td.num data-label="Paid to the author" { (money(a.net_micros)) }
                            }
                        }
                    }
                    tfoot {
                        tr.total {
                            th scope="row" { "Total" }
                            td.num data-label="Revenue" { (money(revenue)) }
                            td.num data-label="Platform share" { (money(platform)) }
                            td.num data-label="Paid to the author" #payout-total data-micros=(net) { (money(net)) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn author_queries_are_checked() {
        let q = AuthorQuery::parse(Some("month=2026-02&author=acme&page=2")).expect("ok");
        assert_eq!(
            (q.month.as_str(), q.author.as_deref(), q.page),
            ("2026-02", Some("acme"), 2)
        );
        assert_eq!(q.url(3), "/ui/author?month=2026-02&author=acme&page=3");
        let q = AuthorQuery::parse(None).expect("defaults");
        assert_eq!(q.month.len(), 7);
        for (bad, field) in [
            ("month=2026-13", "month"),
            ("month=26-01", "month"),
            ("page=0", "page"),
            ("author=Bad%20Name", "author"),
            ("x=1", "x"),
        ] {
            let (f, _) = AuthorQuery::parse(Some(bad)).err().expect(bad);
            assert_eq!(f, field, "{bad}");
        }
    }

    #[test]
    fn operators_get_the_moves_the_state_machine_allows() {
        for state in [
            SubmissionState::Submitted,
            SubmissionState::Approved,
            SubmissionState::Rejected,
            SubmissionState::AwaitingApproval,
            SubmissionState::Published,
            SubmissionState::UnderMaintenance,
            SubmissionState::Yanked,
            SubmissionState::Deprecated,
        ] {
            for action in allowed_actions(state) {
                let to = match action {
                    Action::Approve => SubmissionState::Approved,
                    Action::Publish => SubmissionState::Published,
                    Action::Reject => SubmissionState::Rejected,
                    Action::Yank => SubmissionState::Yanked,
                    Action::Deprecate => SubmissionState::Deprecated,
                };
                assert!(state.allows(to).is_ok(), "{state:?} -> {to:?}");
                assert_eq!(Action::parse(action.name()), Some(*action));
            }
        }
    }
}
