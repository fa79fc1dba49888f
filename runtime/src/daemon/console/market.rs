//! Console pages: the marketplace catalog (`GET /ui/market`) and a
//! capsule's page (`GET /ui/market/{author}/{name}`, with its run-it form
//! `POST /ui/market/{author}/{name}/run`).
//!
//! Every page is what the API answers the same token: the catalog is
//! `GET /v1/market/search` (the daemon's in-memory index snapshot), the
//! capsule page `GET /v1/market/listings/{author}/{name}` (its versions and
//! their measured cost cards) plus `GET /v1/market/submissions?name=` (the
//! versions the viewer may see: an unpublished one only to its namespace's
//! tenant and operators, the review's evidence likewise), and the run-it
//! form runs `POST /v1/runs {"capsule": "market:author/name"}` — the same
//! handlers, called in-process, so a page can never show or do more than
//! the API would.

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc};

use axum::{
    Extension, Router,
    body::Bytes,
    extract::{Path, Query, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    PageError, blocking, failed,
    layout::{self, Section, Viewer, count, csrf_field, money},
    markdown, missing,
};
use crate::{
    daemon::{
        Daemon,
        auth::TokenScope,
        contract::{
            CallReport,
            market::{ListingVersion, ListingView, SubmissionView, SubmissionsQuery},
        },
        market as api,
        reply::ApiError,
    },
    market::{
        flow::Selector,
        listing::{Listing, Price},
        search::{self, Facet, ReviewState, SearchAnswer, SearchDoc},
    },
    resolve::{CapsuleRef, Resolver},
};

/// This section's routes.
pub(super) fn routes() -> Router<Arc<Daemon>> {
    Router::new()
        .route("/ui/market", get(catalog))
        .route("/ui/market/{author}/{name}", get(capsule))
        .route("/ui/market/{author}/{name}/run", post(run))
        .route(
            "/ui/market/{author}/{name}/install",
            post(super::install::install),
        )
}

/// The page for an API refusal: its status and message (a 404 is the
/// console's one "no such thing" page, whatever the reason).
pub(super) fn api_error(viewer: &Viewer, e: &ApiError, what: &str) -> Response {
    if e.status == StatusCode::NOT_FOUND {
        return missing(viewer, what);
    }
    let message = match &e.field {
        Some(field) if !e.message.contains(field.as_str()) => format!("`{field}`: {}", e.message),
        _ => e.message.clone(),
    };
    layout::error_page(Some(viewer), e.status, &message)
}

/// A 400 page naming the query or form field and what it accepts.
pub(super) fn bad_field(viewer: &Viewer, field: &str, accepted: &str) -> Response {
    layout::error_page(
        Some(viewer),
        StatusCode::BAD_REQUEST,
        &format!("`{field}`: {accepted}"),
    )
}

// ---------------------------------------------------------------- catalog

/// The query keys the catalog takes besides the facets.
const CATALOG_KEYS: [&str; 3] = ["q", "page", "per"];

/// What the catalog's query string asks for.
struct CatalogQuery {
    /// What goes to the search (q and facets), as given.
    pairs: Vec<(String, String)>,
    page: usize,
    per: usize,
}

impl CatalogQuery {
    /// Parse and check `raw` (bad input names its field).
    fn parse(raw: Option<&str>, max_rows: usize) -> Result<Self, (String, String)> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|e| ("query".to_owned(), format!("cannot be read ({e})")))?;
        if pairs.len() > api::MAX_QUERY_PAIRS {
            return Err((
                "query".into(),
                format!("at most {} parameters", api::MAX_QUERY_PAIRS),
            ));
        }
        let facet_names: Vec<&str> = Facet::ALL.iter().map(|f| f.name()).collect();
        if let Some((k, _)) = pairs.iter().find(|(k, _)| {
            !CATALOG_KEYS.contains(&k.as_str()) && !facet_names.contains(&k.as_str())
        }) {
            return Err((
                k.clone(),
                format!(
                    "unknown parameter; the catalog takes {} and the facets {}",
                    CATALOG_KEYS.join(", "),
                    facet_names.join(", ")
                ),
            ));
        }
        let most = max_rows.clamp(1, search::MAX_LIMIT);
        let number = |key: &str, default: usize, high: usize| -> Result<usize, (String, String)> {
            match pairs.iter().rev().find(|(k, _)| k == key) {
                None => Ok(default),
                Some((_, v)) if v.trim().is_empty() => Ok(default),
                Some((_, v)) => v
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=high).contains(n))
                    .ok_or_else(|| (key.to_owned(), format!("a whole number from 1 to {high}"))),
            }
        };
        let per = number("per", search::DEFAULT_LIMIT.min(most), most)?;
        let last_page = search::MAX_OFFSET / per + 1;
        let page = number("page", 1, last_page)?;
        Ok(Self {
            pairs: pairs
                .into_iter()
                .filter(|(k, v)| k != "page" && k != "per" && !(k != "q" && v.trim().is_empty()))
                .collect(),
            page,
            per,
        })
    }

    /// The values chosen for `facet` (repeated or comma-separated).
    fn chosen(&self, facet: Facet) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == facet.name())
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    }

    fn text(&self) -> String {
        self.pairs
            .iter()
            .filter(|(k, _)| k == "q")
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// This query's URL at `page`.
    fn url(&self, page: usize) -> String {
        let mut pairs: Vec<(&str, String)> = self
            .pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        pairs.push(("page", page.to_string()));
        if self.per != search::DEFAULT_LIMIT {
            pairs.push(("per", self.per.to_string()));
        }
        format!(
            "/ui/market?{}",
            serde_urlencoded::to_string(&pairs).unwrap_or_default()
        )
    }
}

/// `GET /ui/market`: search box, facets, results (price and badges), pager.
async fn catalog(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = match CatalogQuery::parse(raw.as_deref(), daemon.console.config.max_page_rows) {
        Ok(q) => q,
        Err((field, accepted)) => return bad_field(&viewer, &field, &accepted),
    };
    let mut pairs = query.pairs.clone();
    pairs.push(("limit".into(), query.per.to_string()));
    pairs.push(("offset".into(), ((query.page - 1) * query.per).to_string()));
    let answer = match api::search_listings(
        State(daemon.clone()),
        Extension(viewer.principal.clone()),
        Ok(Query(pairs)),
    )
    .await
    {
        Ok(axum::Json(a)) => a,
        Err(e) => return api_error(&viewer, &e, "listing"),
    };
    // The prices of the hits shown (one keyed read each).
    let market = daemon.market.market.clone();
    let ids: Vec<String> = answer
        .hits
        .iter()
        .map(|h| format!("{}@{}", h.listing, h.version))
        .collect();
    let prices = match blocking(&viewer, {
        let viewer = viewer.clone();
        move || {
            ids.into_iter()
                .map(|id| match market.get(&id) {
                    Ok(s) => Ok(s.map(|s| s.listing.price)),
                    Err(e) => Err(failed(&viewer, &e).into()),
                })
                .collect::<Result<Vec<_>, _>>()
        }
    })
    .await
    {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let body = catalog_body(&query, &answer, &prices);
    layout::page(&viewer, Section::Market, "Marketplace", body)
}

fn catalog_body(query: &CatalogQuery, answer: &SearchAnswer, prices: &[Option<Price>]) -> Markup {
    let pages = answer.total.div_ceil(query.per).max(1);
    let first = (query.page - 1) * query.per;
    html! {
        h1 { "Marketplace" }
        div.layout {
            form.facets #search method="get" action="/ui/market" role="search" {
                label for="q" { "Search" }
                input #q type="search" name="q" value=(query.text()) placeholder="words, names, keywords";
                p { button.primary type="submit" { "Search" } }
                @for facet in Facet::ALL {
                    (facet_fieldset(facet, answer, &query.chosen(facet)))
                }
                p { button type="submit" { "Apply filters" } " " a href="/ui/market" { "Clear" } }
            }
            section #results aria-label="Results" {
                p #result-count {
                    @if answer.total == 0 {
                        "No listings match."
                    } @else {
                        (count(answer.total as u64)) " listings"
                        @if pages > 1 { " · page " (query.page) " of " (pages) }
                    }
                }
                div.grid {
                    @for (hit, price) in answer.hits.iter().zip(prices) {
                        article.listing.card data-name=(hit.listing) {
                            h3 { a href=(format!("/ui/market/{}", hit.listing)) { (hit.listing) } }
                            p { (hit.summary) }
                            p {
                                span.price data-model=(hit.price.name()) {
                                    (price.as_ref().map_or_else(|| hit.price.name().to_owned(), price_text))
                                }
                                " "
                                (review_badge(hit.review))
                            }
                            p.hint {
                                (hit.kind.name()) " · v" (hit.version) " · " (hit.license)
                                @if !hit.categories.is_empty() { " · " (hit.categories.join(", ")) }
                                " · " (count(hit.installs)) " installs"
                                @if let Some(rate) = hit.success_rate { " · " (percent(rate)) " succeed" }
                            }
                        }
                    }
                }
                @if pages > 1 {
                    nav.pager aria-label="Pages" {
                        @if query.page > 1 {
                            a rel="prev" href=(query.url(query.page - 1)) { "← Previous" }
                        }
                        span { (first + 1) "–" (first + answer.hits.len()) " of " (answer.total) }
                        @if query.page < pages && first + query.per <= search::MAX_OFFSET {
                            a rel="next" href=(query.url(query.page + 1)) { "Next →" }
                        }
                    }
                }
            }
        }
    }
}

fn facet_fieldset(facet: Facet, answer: &SearchAnswer, chosen: &[&str]) -> Markup {
    let counts = answer.facets.get(facet);
    // Chosen values stay listed (checked) even when nothing has them now.
    let mut values: Vec<(String, usize)> =
        counts.iter().map(|c| (c.value.clone(), c.count)).collect();
    for v in chosen {
        if !values.iter().any(|(x, _)| x.eq_ignore_ascii_case(v)) {
            values.push(((*v).to_owned(), 0));
        }
    }
    let legend = match facet {
        Facet::Category => "Category",
        Facet::Kind => "Kind",
        Facet::Price => "Price model",
        Facet::License => "License",
        Facet::Imports => "Imports (WIT)",
        Facet::Exports => "Exports (WIT)",
        Facet::Capability => "Capabilities",
        Facet::Review => "Review",
    };
    html! {
        fieldset data-facet=(facet.name()) {
            legend { (legend) }
            @if values.is_empty() { p.hint { "—" } }
            @for (i, (value, n)) in values.iter().enumerate() {
                @let id = format!("f-{}-{i}", facet.name());
                label for=(id) {
                    input #(id) type="checkbox" name=(facet.name()) value=(value)
                        checked[chosen.iter().any(|c| c.eq_ignore_ascii_case(value))];
                    span.mono { (value) } " " span.hint { "(" (n) ")" }
                }
            }
        }
    }
}

fn review_badge(review: ReviewState) -> Markup {
    match review {
        ReviewState::Verified => {
            html! { span.badge.ok.verified title="passed the marketplace review and its re-tests" { "verified" } }
        }
        ReviewState::UnderMaintenance => {
            html! { span.badge.warn.maintenance title="its nightly re-tests fail" { "under maintenance" } }
        }
        ReviewState::Unreviewed => html! { span.badge.unreviewed { "unreviewed" } },
    }
}

/// `0.973` → `97.3 %`.
fn percent(rate: f64) -> String {
    format!("{:.1} %", rate * 100.0)
}

/// A listing's price in a line.
fn price_text(price: &Price) -> String {
    match price {
        Price::Free => "free".into(),
        Price::PerCall { micros } => format!("{} per call", money(*micros)),
        Price::PerKiloTokens { micros } => format!("{} per 1k tokens", money(*micros)),
        Price::PerEvent { events } => {
            let mut text = String::from("per event:");
            for (i, (name, micros)) in events.iter().enumerate() {
                if i == 3 {
                    text.push_str(" …");
                    break;
                }
                let _ = write!(text, " {name} {}", money(*micros));
            }
            text
        }
    }
}

// ----------------------------------------------------------- capsule page

/// What the run-it form answered, shown on the capsule page.
enum RunAnswer {
    /// The call ran (it may have failed: see the report).
    Ran(Box<CallReport>),
    /// The input does not satisfy the input schema (or is not JSON): one
    /// line per problem, each naming the field.
    Invalid(Vec<String>),
    /// Valid, but not run: why.
    Refused(String),
}

/// Everything the capsule page shows, read once.
struct CapsuleData {
    full: String,
    author: String,
    /// The published versions with their cost cards (the API's answer), if any.
    published: Option<ListingView>,
    /// The versions the viewer may see (evidence only when it may).
    visible: Vec<SubmissionView>,
    /// The listing shown (newest published, else newest visible).
    listing: Listing,
    /// What search knows of the shown version (capabilities, WIT).
    doc: Option<SearchDoc>,
    /// The author's key id.
    author_key: Option<String>,
    /// The viewer's tenant's install, as `(version, digest)`.
    installed: Option<(String, String)>,
}

impl CapsuleData {
    /// The shown version's entry in the API's listing answer.
    fn shown(&self) -> Option<&ListingVersion> {
        let v = self.listing.version.to_string();
        self.published
            .as_ref()
            .and_then(|p| p.versions.iter().find(|x| x.version == v))
    }

    fn shown_submission(&self) -> Option<&SubmissionView> {
        self.visible
            .iter()
            .find(|s| s.submission.listing.version == self.listing.version)
    }

    /// The digest a run of this page would use: the viewer's pin, else the
    /// shown published version.
    fn run_digest(&self) -> Option<String> {
        self.installed
            .as_ref()
            .map(|(_, d)| d.clone())
            .or_else(|| self.shown().map(|v| v.digest.clone()))
    }
}

/// Read what the page shows, through the API's handlers. `Err` is the
/// page to answer instead (404 when the viewer may see no version).
async fn capsule_data(
    daemon: &Arc<Daemon>,
    viewer: &Viewer,
    author: String,
    name: String,
) -> Result<CapsuleData, PageError> {
    let full = format!("{author}/{name}");
    if let Err(reason) = crate::market::listing::check_name(&full) {
        return Err(bad_field(viewer, "name", &reason).into());
    }
    let principal = viewer.principal.clone();
    let published = match api::get_listing(
        State(daemon.clone()),
        Extension(principal.clone()),
        Path((author.clone(), name)),
    )
    .await
    {
        Ok(axum::Json(v)) => Some(v),
        Err(e) if e.status == StatusCode::NOT_FOUND => None,
        Err(e) => return Err(api_error(viewer, &e, "capsule").into()),
    };
    let visible = match api::list_submissions(
        State(daemon.clone()),
        Extension(principal),
        Ok(Query(SubmissionsQuery {
            name: Some(full.clone()),
        })),
    )
    .await
    {
        Ok(axum::Json(v)) => v,
        Err(e) => return Err(api_error(viewer, &e, "capsule").into()),
    };
    let listing = match (&published, visible.last()) {
        (Some(p), _) => p.listing.clone(),
        (None, Some(s)) => s.submission.listing.clone(),
        (None, None) => return Err(missing(viewer, "capsule").into()),
    };
    let doc = match api::search_index(daemon).await {
        Ok(index) => index.shown_version(&full).cloned(),
        Err(e) => return Err(api_error(viewer, &e, "capsule").into()),
    };
    let market = daemon.market.market.clone();
    let installs = daemon.market.installs.clone();
    let (tenant, key, ns) = (viewer.tenant().to_owned(), full.clone(), author.clone());
    let v = viewer.clone();
    let (author_key, installed) = blocking(viewer, move || {
        let author_key = market.author(&ns).ok().map(|a| a.key_id);
        let pin = installs.get(&tenant, &key).map_err(|e| failed(&v, &e))?;
        Ok((
            author_key,
            pin.map(|p| (p.pin.version, p.pin.digest.to_string())),
        ))
    })
    .await?;
    Ok(CapsuleData {
        full,
        author,
        published,
        visible,
        listing,
        doc,
        author_key,
        installed,
    })
}

/// `GET /ui/market/{author}/{name}`.
async fn capsule(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
    Path((author, name)): Path<(String, String)>,
) -> Response {
    match capsule_data(&daemon, &viewer, author, name).await {
        Ok(data) => {
            let input = default_input(&data.listing);
            capsule_page(&viewer, &data, &input, None, StatusCode::OK)
        }
        Err(r) => r.into_response(),
    }
}

/// The run form's first text: the listing's first example, else `{}`.
fn default_input(listing: &Listing) -> String {
    listing
        .examples
        .first()
        .and_then(|e| serde_json::to_string_pretty(&e.input).ok())
        .unwrap_or_else(|| "{}".into())
}

#[derive(Deserialize)]
struct RunForm {
    #[serde(default)]
    input: String,
}

/// `POST /ui/market/{author}/{name}/run`: check the input against the
/// capsule's input schema (the version the viewer's tenant pinned, else
/// the shown one), then — with the `run` scope — run it as
/// `POST /v1/runs {"capsule": "market:author/name", "input": …}` does
/// (the tenant's pin resolves it; the tenant is charged).
async fn run(
    State(daemon): State<Arc<Daemon>>,
    Extension(viewer): Extension<Viewer>,
    Path((author, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let form: RunForm = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(e) => return bad_field(&viewer, "input", &format!("the form cannot be read ({e})")),
    };
    let data = match capsule_data(&daemon, &viewer, author, name).await {
        Ok(d) => d,
        Err(r) => return r.into_response(),
    };
    let text = form.input.trim();
    let input: Value = if text.is_empty() {
        json!({})
    } else {
        match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                let answer = RunAnswer::Invalid(vec![format!("input: not JSON ({e})")]);
                return capsule_page(
                    &viewer,
                    &data,
                    &form.input,
                    Some(answer),
                    StatusCode::BAD_REQUEST,
                );
            }
        }
    };
    let Some(digest) = data.run_digest() else {
        let answer = RunAnswer::Refused("This capsule has no published version to run yet.".into());
        return capsule_page(
            &viewer,
            &data,
            &form.input,
            Some(answer),
            StatusCode::CONFLICT,
        );
    };
    let schema = match input_schema(&daemon, &viewer, &data.full, &digest).await {
        Ok(s) => s,
        Err(why) => {
            let answer = RunAnswer::Refused(why);
            return capsule_page(
                &viewer,
                &data,
                &form.input,
                Some(answer),
                StatusCode::BAD_GATEWAY,
            );
        }
    };
    let problems = schema_problems(&schema, &input);
    if !problems.is_empty() {
        let answer = RunAnswer::Invalid(problems);
        return capsule_page(
            &viewer,
            &data,
            &form.input,
            Some(answer),
            StatusCode::BAD_REQUEST,
        );
    }
    if !viewer.may(TokenScope::Run) {
        let answer = RunAnswer::Refused(
            "The input is valid. Running it needs a token with the `run` scope: sign in with one."
                .into(),
        );
        return capsule_page(
            &viewer,
            &data,
            &form.input,
            Some(answer),
            StatusCode::FORBIDDEN,
        );
    }
    let request =
        json!({ "capsule": format!("{}{}", api::MARKET_PREFIX, data.full), "input": input });
    let ran = crate::daemon::api::create_run(
        State(daemon.clone()),
        Extension(viewer.principal.clone()),
        Ok(Bytes::from(request.to_string())),
    )
    .await;
    let (answer, status) = match ran {
        Ok(response) => match axum::body::to_bytes(response.into_body(), usize::MAX).await {
            Ok(bytes) => match serde_json::from_slice::<CallReport>(&bytes) {
                Ok(report) => (RunAnswer::Ran(Box::new(report)), StatusCode::OK),
                Err(e) => return failed(&viewer, &e),
            },
            Err(e) => return failed(&viewer, &e),
        },
        Err(e) => (RunAnswer::Refused(e.message.clone()), e.status),
    };
    capsule_page(&viewer, &data, &form.input, Some(answer), status)
}

/// The input schema of the capsule `full` at manifest `digest` (loaded
/// from the blob cache as a run would load it). Blocking work on the pool.
async fn input_schema(
    daemon: &Arc<Daemon>,
    viewer: &Viewer,
    full: &str,
    digest: &str,
) -> Result<Value, String> {
    let digest: crate::Digest = digest
        .parse()
        .map_err(|e| format!("the pinned digest {digest}: {e}"))?;
    let d = daemon.clone();
    let name = full.to_owned();
    blocking(viewer, move || {
        let pinned = CapsuleRef::Market {
            name,
            selector: Selector::Digest(digest),
        };
        Ok(Resolver::new(&d.engine)
            .resolve(&pinned)
            .map(|r| r.manifest().input_schema.clone())
            .map_err(|e| {
                format!(
                    "cannot load the capsule: {}",
                    crate::daemon::error_chain(&e)
                )
            }))
    })
    .await
    .unwrap_or_else(|_| Err("the capsule could not be loaded".into()))
}

/// The most schema problems the form lists.
const MAX_PROBLEMS: usize = 20;

/// Why `input` does not satisfy `schema` (JSON Schema, validated by
/// `jsonschema`, the validator the marketplace review checks examples
/// with): one line per problem, starting with the field it is about
/// (`input.expr`, or `input` for the whole value). Empty if valid.
pub fn schema_problems(schema: &Value, input: &Value) -> Vec<String> {
    let validator = match jsonschema::validator_for(schema) {
        Ok(v) => v,
        Err(e) => {
            return vec![format!(
                "input: the capsule's input schema is invalid ({e})"
            )];
        }
    };
    validator
        .iter_errors(input)
        .take(MAX_PROBLEMS)
        .map(|e| {
            let path = e.instance_path().to_string();
            let mut field = String::from("input");
            for part in path.split('/').filter(|p| !p.is_empty()) {
                let part = part.replace("~1", "/").replace("~0", "~");
                if part.bytes().all(|b| b.is_ascii_digit()) {
                    let _ = write!(field, "[{part}]");
                } else {
                    let _ = write!(field, ".{part}");
                }
            }
            // A missing property is reported at its parent: name it.
            let message = e.to_string();
            if let jsonschema::error::ValidationErrorKind::Required { property } = e.kind()
                && let Some(p) = property.as_str()
            {
                let _ = write!(field, ".{p}");
            }
            format!("{field}: {message}")
        })
        .collect()
}

fn capsule_page(
    viewer: &Viewer,
    data: &CapsuleData,
    input: &str,
    answer: Option<RunAnswer>,
    status: StatusCode,
) -> Response {
    let body = capsule_body(viewer, data, input, answer.as_ref());
    let mut response = layout::page(viewer, Section::Market, &data.full, body);
    *response.status_mut() = status;
    response
}

fn capsule_body(
    viewer: &Viewer,
    data: &CapsuleData,
    input: &str,
    answer: Option<&RunAnswer>,
) -> Markup {
    let listing = &data.listing;
    let shown = data.shown();
    let review = data.doc.as_ref().map(|d| d.review);
    html! {
        p.hint { a href="/ui/market" { "Marketplace" } " / " (data.author) }
        h1 { (data.full) }
        p.lead {
            (listing.summary) " "
            @if let Some(r) = review { (review_badge(r)) }
            @if shown.is_none() { " " span.badge.warn { "not published" } }
        }
        p.hint {
            "v" (listing.version) " · " (listing.license)
            @if !listing.categories.is_empty() { " · " (listing.categories.join(", ")) }
            @if !listing.keywords.is_empty() { " · " (listing.keywords.join(", ")) }
            @if let Some(source) = &listing.source {
                @if markdown::allowed_url(&source.as_str().into()) {
                    " · " a href=(source) rel="nofollow noopener" { "source" }
                }
            }
        }
        section #cost-card aria-labelledby="cost-card-h" {
            h2 #cost-card-h { "Measured cost" }
            (cost_card(shown))
        }
        section #run aria-labelledby="run-h" {
            h2 #run-h { "Run it" }
            (run_form(viewer, data, input))
            (run_answer(answer))
        }
        section #readme aria-labelledby="readme-h" {
            h2 #readme-h { "README" }
            @if listing.readme.trim().is_empty() {
                p.hint { "No README." }
            } @else {
                div.readme { (PreEscaped(markdown::render(&listing.readme))) }
            }
        }
        section #prices aria-labelledby="prices-h" {
            h2 #prices-h { "Price" }
            (price_table(&listing.price))
        }
        section #install aria-labelledby="install-h" {
            h2 #install-h { "Install" }
            p { code { "soma market install " (data.full) "@^" (listing.version.major) } }
            p.hint {
                "Or " code { "POST /v1/market/installs {\"name\": \"" (data.full) "\"}" }
                "; then call it as " code { (api::MARKET_PREFIX) (data.full) } " in a run or DAG."
            }
            @match &data.installed {
                Some((version, digest)) => p #installed data-version=(version) {
                    "Your tenant has installed v" (version) " (" code { (short(digest)) } ")."
                },
                None => p.hint #installed { "Your tenant has not installed it: runs of it are refused until it does." },
            }
            @if data.published.is_some() {
                (super::install::form(viewer, &data.full, listing.version.major, &listing.price))
            }
        }
        section #capabilities aria-labelledby="capabilities-h" {
            h2 #capabilities-h { "Requested capabilities" }
            @match &data.doc {
                Some(doc) => {
                    dl.stats {
                        div { dt { "Kind" } dd { (doc.kind.name()) } }
                    }
                    h3 { "Capabilities" }
                    @if doc.capabilities.is_empty() { p { "None: pure computation." } }
                    ul { @for c in &doc.capabilities { li.capability data-capability=(c) { code { (c) } } } }
                    h3 { "Imports (WIT)" }
                    ul { @for i in &doc.imports { li { code { (i) } } } }
                    h3 { "Exports (WIT)" }
                    ul { @for e in &doc.exports { li { code { (e) } } } }
                }
                None => p.hint { "Known once a version is published and indexed." },
            }
        }
        section #versions aria-labelledby="versions-h" {
            h2 #versions-h { "Versions" }
            (versions_table(data))
        }
        section #signatures aria-labelledby="signatures-h" {
            h2 #signatures-h { "Signatures" }
            (signatures(data))
        }
        section #review aria-labelledby="review-h" {
            h2 #review-h { "Review" }
            (review_section(data.shown_submission()))
        }
    }
}

/// `sha256:0123456789abcdef…` → `sha256:0123456789ab`.
fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// The `#cost-card`: `dd[data-field][data-value]` with the raw numbers.
fn cost_card(shown: Option<&ListingVersion>) -> Markup {
    let card = shown.and_then(|v| v.cost_card.as_ref());
    let Some(card) = card else {
        return html! {
            p.hint { "No measured calls: this version is not published, or the ledger could not be read." }
            dl.stats {
                @for (field, label) in CARD_FIELDS {
                    div { dt { (label) } dd data-field=(field) data-value="" { "—" } }
                }
            }
        };
    };
    let number = |key: &str| card.get(key).filter(|v| !v.is_null());
    let ms = |key: &str| number(key).and_then(Value::as_f64).map(|us| us / 1000.0);
    let raw = |field: &str| -> (String, String) {
        match field {
            "calls" | "fuel" | "tokens" => {
                let n = number(field).and_then(Value::as_u64).unwrap_or(0);
                (n.to_string(), count(n))
            }
            "success_rate" => number("success_rate")
                .and_then(Value::as_f64)
                .map_or((String::new(), "—".into()), |r| {
                    (r.to_string(), percent(r))
                }),
            "p50_ms" | "p95_ms" => {
                let key = if field == "p50_ms" {
                    "latency_p50_us"
                } else {
                    "latency_p95_us"
                };
                ms(key).map_or((String::new(), "—".into()), |m| {
                    (m.to_string(), format!("≤ {m:.3} ms"))
                })
            }
            _ => number("cost_per_call_micros")
                .and_then(Value::as_f64)
                .map_or((String::new(), "—".into()), |c| {
                    (c.to_string(), format!("{:.6}", c / 1_000_000.0))
                }),
        }
    };
    let window = format!(
        "{} to {} (UTC), version {}",
        card.get("from").and_then(Value::as_str).unwrap_or("?"),
        card.get("to").and_then(Value::as_str).unwrap_or("?"),
        shown.map_or("?", |v| v.version.as_str()),
    );
    html! {
        p.hint { "Measured on this node from the ledger, " (window) ". Latency is the upper bound of its bucket." }
        dl.stats {
            @for (field, label) in CARD_FIELDS {
                @let (value, text) = raw(field);
                div { dt { (label) } dd data-field=(field) data-value=(value) { (text) } }
            }
        }
    }
}

const CARD_FIELDS: [(&str, &str); 7] = [
    ("calls", "Calls"),
    ("success_rate", "Success rate"),
    ("p50_ms", "p50 latency"),
    ("p95_ms", "p95 latency"),
    ("fuel", "Fuel"),
    ("tokens", "LLM tokens"),
    ("cost_per_call_micros", "Cost per call"),
];

fn price_table(price: &Price) -> Markup {
    let rows: Vec<(String, String)> = match price {
        Price::Free => vec![("Every call".into(), "free".into())],
        Price::PerCall { micros } => vec![("Per call".into(), money(*micros))],
        Price::PerKiloTokens { micros } => vec![("Per 1,000 LLM tokens".into(), money(*micros))],
        Price::PerEvent { events } => events
            .iter()
            .map(|(name, micros)| (format!("Per `{name}` event"), money(*micros)))
            .collect(),
    };
    html! {
        table.data data-model=(price.model()) {
            thead { tr { th scope="col" { "Charged" } th.num scope="col" { "Amount" } } }
            tbody {
                @for (what, amount) in rows {
                    tr { td { (what) } td.num { (amount) } }
                }
            }
        }
        p.hint { "The marketplace fee, on top of the fuel, time and tokens the call uses (charged to the caller's tenant at the price in force)." }
    }
}

fn versions_table(data: &CapsuleData) -> Markup {
    // Published versions (with their card's calls) and, for the owner and
    // operators, unpublished ones too.
    // version → (state, manifest digest, component digest, published, calls)
    type Row = (String, String, String, Option<u64>, Option<u64>);
    let mut rows: BTreeMap<semver::Version, Row> = BTreeMap::new();
    for s in &data.visible {
        let sub = &s.submission;
        rows.insert(
            sub.listing.version.clone(),
            (
                sub.state.name().to_owned(),
                sub.digest.to_string(),
                sub.component.to_string(),
                sub.published_ms,
                None,
            ),
        );
    }
    if let Some(p) = &data.published {
        for v in &p.versions {
            if let Ok(version) = semver::Version::parse(&v.version) {
                let calls = v
                    .cost_card
                    .as_ref()
                    .and_then(|c| c.get("calls"))
                    .and_then(Value::as_u64);
                let entry = rows.entry(version).or_insert_with(|| {
                    (
                        v.state.clone(),
                        v.digest.clone(),
                        v.component.clone(),
                        v.published_ms,
                        None,
                    )
                });
                entry.4 = calls;
            }
        }
    }
    html! {
        div.table-wrap {
            table.data.collapse {
                thead { tr {
                    th scope="col" { "Version" } th scope="col" { "State" }
                    th scope="col" { "Manifest digest" } th scope="col" { "Component digest" }
                    th scope="col" { "Published" } th.num scope="col" { "Calls (30 d)" }
                } }
                tbody {
                    @for (version, (state, digest, component, published, calls)) in rows.iter().rev() {
                        tr data-version=(version) data-digest=(digest) {
                            td data-label="Version" { (version) }
                            td data-label="State" { span class=(format!("status-{state}")) { (state) } }
                            td data-label="Manifest digest" { code title=(digest) { (short(digest)) } }
                            td data-label="Component digest" { code title=(component) { (short(component)) } }
                            td data-label="Published" { (published.map_or_else(|| "—".into(), layout::time)) }
                            td.num data-label="Calls (30 d)" { (calls.map_or_else(|| "—".into(), count)) }
                        }
                    }
                }
            }
        }
    }
}

fn signatures(data: &CapsuleData) -> Markup {
    html! {
        p.hint {
            "Every version is signed by its author's registered key (checked when it was submitted) and, once published, countersigned by the marketplace; "
            code { "soma market install" } " verifies both (all-of) before pinning."
        }
        div.table-wrap {
            table.data.collapse {
                thead { tr {
                    th scope="col" { "Version" } th scope="col" { "Signed digest" }
                    th scope="col" { "Author signature" } th scope="col" { "Marketplace signature" }
                } }
                tbody {
                    @for s in data.visible.iter().rev() {
                        @let sub = &s.submission;
                        @let countersigned = sub.history.iter().rev().find(|t| t.state == crate::market::store::SubmissionState::Published && t.note.is_some());
                        tr data-version=(sub.listing.version) {
                            td data-label="Version" { (sub.listing.version) }
                            td data-label="Signed digest" { code title=(sub.digest.to_string()) { (short(&sub.digest.to_string())) } }
                            td.signature.author data-label="Author signature" {
                                (data.author) " · key " code { (data.author_key.as_deref().unwrap_or("?")) }
                                br; span.hint { "verified on submission, " (layout::time(sub.submitted_ms)) }
                            }
                            td.signature.marketplace data-label="Marketplace signature" {
                                @match (sub.published_ms, countersigned) {
                                    (Some(at), Some(t)) => { (t.note.as_deref().unwrap_or("")) br; span.hint { (layout::time(at)) } }
                                    (Some(at), None) => { "countersigned " (layout::time(at)) }
                                    (None, _) => span.hint { "not yet (" (sub.state.name()) ")" },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The shown version's review: verdict, reason codes, a reviewer's
/// decision, and (to its namespace's tenant and operators, as the API
/// shows it) every step's evidence.
pub(super) fn review_section(s: Option<&SubmissionView>) -> Markup {
    let Some(s) = s else {
        return html! { p.hint { "No review on record for this version." } };
    };
    let Some(review) = &s.submission.review else {
        return html! { p.hint { "Not reviewed yet (" (s.submission.state.name()) ")." } };
    };
    html! {
        p {
            @if review.passed { span.badge.ok { "passed" } } @else { span.badge.fail { "failed" } }
            " recorded " (layout::time(review.recorded_ms))
            @if !review.reasons.is_empty() {
                " · reasons: "
                @for (i, r) in review.reasons.iter().enumerate() {
                    @if i > 0 { ", " }
                    code.reason { (r) }
                }
            }
        }
        @if let Some(m) = &review.manual {
            p.manual {
                @if m.approved { "Approved" } @else { "Rejected" }
                " by " (m.reviewer) " at " (layout::time(m.at_ms))
                @if let Some(r) = &m.reason { ": " (r) }
            }
        }
        (evidence_table(&review.evidence))
    }
}

/// The review report's steps (`evidence` is the stored `ReviewReport`
/// JSON; `null` when the viewer may not see it).
pub(super) fn evidence_table(evidence: &Value) -> Markup {
    let steps = evidence.get("evidence").and_then(Value::as_array);
    let Some(steps) = steps else {
        return html! { p.hint { "The per-step evidence is shown to the author's tenant and the marketplace operators." } };
    };
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    html! {
        div.table-wrap {
            table.data.collapse.steps {
                thead { tr {
                    th scope="col" { "Step" } th scope="col" { "Verdict" } th scope="col" { "Reason code" }
                    th scope="col" { "Evidence" }
                } }
                tbody {
                    @for step in steps {
                        @let status = text(step, "status");
                        tr data-step=(text(step, "step")) data-status=(status) {
                            td data-label="Step" { (text(step, "step")) }
                            td data-label="Verdict" {
                                span.badge.ok[status == "passed"].fail[status == "failed"].warn[status == "skipped"] { (status) }
                            }
                            td data-label="Reason code" { code { (text(step, "code")) } }
                            td data-label="Evidence" {
                                (text(step, "reason"))
                                @if let Some(m) = step.get("measured").and_then(Value::as_object) {
                                    @if !m.is_empty() {
                                        br; span.hint.mono { (Value::Object(m.clone()).to_string()) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(profile) = evidence.get("cost_profile").filter(|p| !p.is_null()) {
            p.hint { "Cost profile of the example runs: " span.mono { (profile.to_string()) } }
        }
    }
}

fn run_form(viewer: &Viewer, data: &CapsuleData, input: &str) -> Markup {
    let may_run = viewer.may(TokenScope::Run);
    html! {
        form #run-form method="post" action=(format!("/ui/market/{}/run", data.full)) {
            (csrf_field(viewer))
            label for="run-input" { "Input (JSON)" }
            textarea #run-input name="input" rows="6" spellcheck="false" aria-describedby="run-hint" { (input) }
            p.hint #run-hint {
                "Checked against the capsule's input schema on the server"
                @if may_run {
                    ", then run as your tenant through its install (charged to your tenant, as " code { "POST /v1/runs" } ")."
                } @else {
                    ". Your token has no `run` scope: the input is checked, not run."
                }
            }
            button.primary type="submit" { @if may_run { "Run" } @else { "Check input" } }
        }
    }
}

fn run_answer(answer: Option<&RunAnswer>) -> Markup {
    match answer {
        None => html! {},
        Some(RunAnswer::Invalid(problems)) => html! {
            div #run-errors role="alert" {
                p.error-message { "The input does not match the capsule's input schema:" }
                ul { @for p in problems { li { (p) } } }
            }
        },
        Some(RunAnswer::Refused(why)) => html! {
            p.error-message #run-refused role="alert" { (why) }
        },
        Some(RunAnswer::Ran(report)) => {
            let output = report
                .output
                .as_ref()
                .map(|o| serde_json::to_string_pretty(o).unwrap_or_default());
            html! {
                div #run-result data-ok=(report.ok) data-run=(report.run) role="status" {
                    p {
                        @if report.ok { span.badge.ok { "succeeded" } } @else { span.badge.fail { "failed" } }
                        " run " a href=(format!("/ui/runs/{}", report.run)) { code { (report.run) } }
                        " · " (count(report.usage.fuel_consumed.unwrap_or(0))) " fuel · "
                        (format!("{:.3}", report.usage.wall_time_us as f64 / 1000.0)) " ms"
                    }
                    @if let Some(o) = output { pre.output { (o) } }
                    @if let Some(f) = &report.failure {
                        p.error-message { span.failure-class data-class=(f.class.name()) { (f.class.name()) } ": " (f.message) }
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
    fn schema_problems_name_the_field() {
        let schema = json!({
            "type": "object",
            "properties": {"expr": {"type": "string"}, "n": {"type": "integer"}},
            "required": ["expr"],
            "additionalProperties": false,
        });
        assert!(schema_problems(&schema, &json!({"expr": "1+1"})).is_empty());
        let missing = schema_problems(&schema, &json!({}));
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].starts_with("input.expr: "), "{missing:?}");
        let wrong = schema_problems(&schema, &json!({"expr": 3, "n": "x"}));
        assert!(
            wrong.iter().any(|p| p.starts_with("input.expr: ")),
            "{wrong:?}"
        );
        assert!(
            wrong.iter().any(|p| p.starts_with("input.n: ")),
            "{wrong:?}"
        );
        let whole = schema_problems(&schema, &json!([1]));
        assert!(whole[0].starts_with("input: "), "{whole:?}");
    }

    #[test]
    fn catalog_queries_are_checked_and_paged() {
        let q =
            CatalogQuery::parse(Some("q=sum&category=math&kind=&page=2&per=10"), 200).expect("ok");
        assert_eq!((q.page, q.per), (2, 10));
        assert_eq!(q.text(), "sum");
        assert_eq!(q.chosen(Facet::Category), ["math"]);
        assert!(q.chosen(Facet::Kind).is_empty());
        assert_eq!(q.url(3), "/ui/market?q=sum&category=math&page=3&per=10");
        for (bad, field) in [
            ("colour=red", "colour"),
            ("page=0", "page"),
            ("per=1000", "per"),
            ("page=x", "page"),
            ("limit=5", "limit"),
        ] {
            let (f, _) = CatalogQuery::parse(Some(bad), 200).err().expect(bad);
            assert_eq!(f, field, "{bad}");
        }
        // Past the search's deepest offset.
        assert!(CatalogQuery::parse(Some("page=1000&per=20"), 200).is_err());
        // `[console] max_page_rows` lowers the most rows a page shows.
        assert!(CatalogQuery::parse(Some("per=20"), 10).is_err());
    }

    #[test]
    fn prices_read_well() {
        assert_eq!(price_text(&Price::Free), "free");
        assert_eq!(
            price_text(&Price::PerCall { micros: 1000 }),
            "0.001000 per call"
        );
        let events = [("a".to_owned(), 1), ("b".to_owned(), 2)]
            .into_iter()
            .collect();
        assert_eq!(
            price_text(&Price::PerEvent { events }),
            "per event: a 0.000001 b 0.000002"
        );
    }
}
