//! The capsule marketplace over HTTP: `/v1/market/...`.
//!
//! Who may call what (the `x-soma-scope` of each route; `operator` holds
//! every scope):
//!
//! | route | scope | what the caller's tenant may do |
//! |---|---|---|
//! | `POST /v1/market/authors` | `admin` | register a namespace for *its own* tenant, with a proof of possession of the key |
//! | `GET /v1/market/authors/{name}` | `read` | any namespace (the owning tenant is shown to that tenant and operators only) |
//! | `POST /v1/market/submissions` | `admin` | submit into a namespace *its tenant owns*; the review runs |
//! | `GET /v1/market/submissions[?name=]`, `/{id}` | `read` | its own namespaces' versions in every state with evidence; others' only once published, evidence hidden; another tenant's unpublished version is 404 |
//! | `POST /v1/market/submissions/{id}/publish\|yank\|deprecate` | `operator` | marketplace staff only |
//! | `GET /v1/market/search`, `/listings/{author}/{name}` | `read` | published listings |
//! | `POST /v1/market/installs`, `DELETE /v1/market/installs/{author}/{name}` | `admin` | pin into *its own* tenant's installs |
//! | `GET /v1/market/installs` | `read` | its own tenant's installs |
//!
//! Why `operator` for publish: `admin` is a *tenant* admin, and an author
//! is a tenant; countersigning with the marketplace key is a decision for
//! whoever operates the node. A narrower "reviewer" scope would need a new
//! token scope every client learns; the operator can hand that role out
//! later without changing these routes' rules.
//!
//! Bounds (issue 12's rule: every byte, thread and connection a request can
//! make the host hold is capped): bodies by `daemon.max_body_bytes` (413);
//! reviews (a pull, a compile, smoke runs) by `[market]
//! max_concurrent_reviews` and installs (a pull, two signature checks) by
//! `max_concurrent_installs` — one past either is 429 with `Retry-After`,
//! and a slot is held until the blocking work ends even if the client
//! leaves; listings answered at most [`MAX_VERSIONS_LISTED`] records; search
//! by the index's own caps; query strings by [`MAX_QUERY_PAIRS`]; what a
//! tenant can make the node store by [`MAX_VERSIONS_PER_AUTHOR`],
//! `store::MAX_AUTHORS_PER_TENANT` and `installs::MAX_PINS_PER_TENANT`.
//!
//! Search is served from an in-memory snapshot of the index directory
//! (`<data>/market/search`), re-read when that directory's listing files
//! change (checked at most every [`SEARCH_RECHECK`]). The daemon never
//! holds the index's writer lock between requests: publish, yank and
//! deprecate take it for one listing's write (as the CLI does), so a CLI
//! writer and the daemon wait on each other for at most one listing file.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant, SystemTime},
};

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, Query, State, rejection::BytesRejection},
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
};
use tokio::sync::Semaphore;

use super::{
    Daemon, DaemonError,
    auth::{Principal, TokenScope},
    contract::{
        ErrorBody,
        market::{
            AuthorRequest, AuthorView, InstallRequest, InstallView, InstalledView, ListingBody,
            ListingVersion, ListingView, PayoutsQuery, SearchAnswer, SearchParams,
            StateChangeRequest, SubmissionRequest, SubmissionView, SubmissionsQuery, SubmittedView,
        },
    },
    reply::{ApiError, Routes, parse, require},
};
use crate::{
    Capsule, Engine,
    market::{
        error::MarketError,
        flow::{self, Access, Selector},
        installs::Installs,
        listing::{Listing, Readme},
        lock::Pin,
        payouts::{self, Payouts},
        pipeline,
        records::{Records, Table},
        search::{self, Filters, SearchIndex, SearchQuery},
        store::{Author, Market, Submission, SubmissionState},
    },
    oci::{OciError, Reference},
    resolve::{CapsuleRef, Resolved, Resolver},
    verify::{KeyPair, PublicKey},
};

/// The most records one listing of submissions answers.
pub const MAX_VERSIONS_LISTED: usize = 500;
/// The most versions one author namespace may submit over the API.
pub const MAX_VERSIONS_PER_AUTHOR: usize = 1000;
/// The most `key=value` pairs a search query string may have.
pub const MAX_QUERY_PAIRS: usize = 64;
/// How often, at most, a search checks whether the index directory changed.
pub const SEARCH_RECHECK: Duration = Duration::from_millis(500);

/// The marketplace's share of the daemon: the store, the per-tenant pins,
/// the marketplace key, the review and install slots, the search snapshot.
pub struct MarketService {
    /// Authors, submissions, versions.
    pub market: Market,
    /// Per-tenant pins.
    pub installs: Installs,
    /// The marketplace's private key (`[market] key`, password from
    /// `SOMA_PASSWORD`), loaded at start; else why not.
    key: Result<Arc<KeyPair>, String>,
    reviews: Arc<Semaphore>,
    pulls: Arc<Semaphore>,
    search: Arc<SearchSnapshot>,
}

impl std::fmt::Debug for MarketService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarketService")
            .field("key", &self.key.as_ref().map(|k| k.public().id()))
            .field("reviews", &self.reviews.available_permits())
            .field("pulls", &self.pulls.available_permits())
            .finish_non_exhaustive()
    }
}

impl MarketService {
    /// Build it for `engine` (once, at daemon start): load `[market] key`
    /// with `$SOMA_PASSWORD` if the key is configured. A key that cannot be
    /// loaded (no password in the environment, a wrong one, an unreadable
    /// file) does not stop the daemon — it served before the marketplace
    /// routes existed with the same config — but is logged at start and
    /// named by every publish it refuses. Cost: a key decryption (scrypt)
    /// when configured.
    pub fn start(engine: &Engine) -> Result<Self, DaemonError> {
        let config = &engine.config().market;
        let key = match &config.key {
            None => Err("[market] key is not set".to_owned()),
            Some(path) => match std::env::var("SOMA_PASSWORD") {
                Err(_) => Err(format!(
                    "market.key is {} but SOMA_PASSWORD is not in the daemon's environment",
                    path.display()
                )),
                Ok(password) => KeyPair::load(path, password.as_bytes())
                    .map(Arc::new)
                    .map_err(|e| {
                        format!("market.key {}: {}", path.display(), super::error_chain(&e))
                    }),
            },
        };
        if let (Some(_), Err(why)) = (&config.key, &key) {
            tracing::warn!("publishing over /v1/market is refused: {why}");
        }
        let records = Records::of(engine);
        Ok(Self {
            market: Market::new(records.clone()),
            installs: Installs::new(records),
            key,
            reviews: Arc::new(Semaphore::new(config.max_concurrent_reviews.max(1))),
            pulls: Arc::new(Semaphore::new(config.max_concurrent_installs.max(1))),
            search: Arc::new(SearchSnapshot::new(search::default_dir(engine.data()))),
        })
    }
}

/// The search index as last read from its directory, and when that was.
struct SearchSnapshot {
    dir: PathBuf,
    state: Mutex<Snap>,
    /// Held by the one request re-reading the directory; others answer
    /// from the snapshot they have meanwhile.
    reloading: tokio::sync::Mutex<()>,
}

struct Snap {
    index: Arc<SearchIndex>,
    /// The listing directory's modification time when `index` was read.
    stamp: Option<SystemTime>,
    checked: Option<Instant>,
}

impl SearchSnapshot {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            state: Mutex::new(Snap {
                index: Arc::new(SearchIndex::new()),
                stamp: None,
                checked: None,
            }),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Snap> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make the next search re-check the directory (after this daemon wrote it).
    fn invalidate(&self) {
        self.lock().checked = None;
    }

    /// When the listing files last changed (a write is a rename into
    /// `listings/`, a removal an unlink: both change the directory's mtime).
    fn stamp(dir: &std::path::Path) -> Option<SystemTime> {
        std::fs::metadata(dir.join("listings"))
            .and_then(|m| m.modified())
            .ok()
    }

    /// The current snapshot: re-read from disk (off the async threads) when
    /// the directory changed since, checked at most every [`SEARCH_RECHECK`].
    async fn current(self: &Arc<Self>) -> Result<Arc<SearchIndex>, ApiError> {
        let (index, due) = {
            let snap = self.lock();
            let due = snap.checked.is_none_or(|c| c.elapsed() >= SEARCH_RECHECK);
            (snap.index.clone(), due)
        };
        if !due {
            return Ok(index);
        }
        let Ok(_reloading) = self.reloading.try_lock() else {
            return Ok(index);
        };
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.refresh())
            .await
            .map_err(|e| ApiError::failed(&e))?
    }

    /// Blocking: stat the directory; re-read it if it changed.
    fn refresh(&self) -> Result<Arc<SearchIndex>, ApiError> {
        let stamp = Self::stamp(&self.dir);
        {
            let mut snap = self.lock();
            if snap.checked.is_some() && snap.stamp.is_some() && snap.stamp == stamp {
                snap.checked = Some(Instant::now());
                return Ok(snap.index.clone());
            }
        }
        let index = match SearchIndex::open_read_only(&self.dir) {
            Ok(index) => index,
            Err(search::SearchError::NoIndex { .. }) => SearchIndex::new(),
            Err(e) => return Err(ApiError::failed(&e)),
        };
        let index = Arc::new(index);
        // A write in the same clock tick as this read leaves the mtime as
        // it was: a stamp younger than a couple of seconds is not trusted,
        // so the next check reads the directory again.
        let settled = stamp.filter(|t| t.elapsed().is_ok_and(|age| age >= Duration::from_secs(2)));
        let mut snap = self.lock();
        snap.index = index.clone();
        snap.stamp = settled;
        snap.checked = Some(Instant::now());
        Ok(index)
    }
}

/// The `/v1/market` routes, added to the authenticated router.
pub(super) fn routes(routes: Routes) -> Routes {
    routes
        .add(Method::POST, "/v1/market/authors", register_author)
        .add(Method::GET, "/v1/market/authors/{name}", get_author)
        .add(Method::POST, "/v1/market/submissions", submit)
        .add(Method::GET, "/v1/market/submissions", list_submissions)
        .add(Method::GET, "/v1/market/submissions/{id}", get_submission)
        .add(Method::POST, "/v1/market/submissions/{id}/publish", publish)
        .add(Method::POST, "/v1/market/submissions/{id}/yank", yank)
        .add(
            Method::POST,
            "/v1/market/submissions/{id}/deprecate",
            deprecate,
        )
        .add(Method::POST, "/v1/market/submissions/{id}/approve", approve)
        .add(Method::POST, "/v1/market/submissions/{id}/reject", reject)
        .add(Method::GET, "/v1/market/search", search_listings)
        .add(
            Method::GET,
            "/v1/market/listings/{author}/{name}",
            get_listing,
        )
        .add(Method::POST, "/v1/market/installs", install)
        .add(Method::GET, "/v1/market/installs", list_installs)
        .add(
            Method::DELETE,
            "/v1/market/installs/{author}/{name}",
            uninstall,
        )
        .add(Method::GET, "/v1/market/payouts", payouts)
}

/// The search index as `GET /v1/market/search` reads it (the daemon's
/// in-memory snapshot, re-read when the index directory changed). Cheap
/// unless a re-read is due.
pub(super) async fn search_index(daemon: &Arc<Daemon>) -> Result<Arc<SearchIndex>, ApiError> {
    daemon.market.search.current().await
}

/// The answer for a marketplace error: its status and stable code, the
/// message with its sources.
pub(super) fn market_error(e: &MarketError) -> ApiError {
    let text = super::error_chain(e);
    let (status, code) = match e {
        MarketError::Listing(_) | MarketError::BadName { .. } | MarketError::BadRange { .. } => {
            (StatusCode::BAD_REQUEST, "bad-request")
        }
        MarketError::BadProof { .. } => (StatusCode::BAD_REQUEST, "bad-proof"),
        MarketError::NoSuchAuthor { .. }
        | MarketError::NoSuchVersion { .. }
        | MarketError::UnknownDigest { .. }
        | MarketError::NoMatch { .. } => (StatusCode::NOT_FOUND, "not-found"),
        MarketError::AuthorExists { .. }
        | MarketError::KeyTaken { .. }
        | MarketError::NamespaceOwned { .. } => (StatusCode::CONFLICT, "namespace-taken"),
        MarketError::ForeignNamespace { .. } => (StatusCode::FORBIDDEN, "foreign-namespace"),
        MarketError::WrongAuthorKey { .. }
        | MarketError::Verify(_)
        | MarketError::AuthorSignature { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "untrusted"),
        MarketError::VersionImmutable { .. } => (StatusCode::CONFLICT, "version-immutable"),
        MarketError::BadTransition { .. } | MarketError::PinOutsideRange { .. } => {
            (StatusCode::CONFLICT, "conflict")
        }
        MarketError::TooManyPins { .. } => (StatusCode::CONFLICT, "too-many-installs"),
        MarketError::TooManyAuthors { .. } => (StatusCode::CONFLICT, "too-many-authors"),
        MarketError::NotApprovable { .. } => (StatusCode::CONFLICT, "conflict"),
        MarketError::ReasonRequired { .. } => (StatusCode::BAD_REQUEST, "bad-request"),
        MarketError::ComponentMismatch { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "untrusted"),
        MarketError::SearchLocked { .. } => (StatusCode::SERVICE_UNAVAILABLE, "search-locked"),
        MarketError::NotConfigured { .. } => (StatusCode::SERVICE_UNAVAILABLE, "not-configured"),
        MarketError::Oci(OciError::Untrusted(_)) => (StatusCode::UNPROCESSABLE_ENTITY, "untrusted"),
        MarketError::Oci(OciError::BadReference { .. }) => (StatusCode::BAD_REQUEST, "bad-request"),
        MarketError::Oci(OciError::Invalid(_)) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid-component")
        }
        MarketError::Oci(_) => (StatusCode::BAD_GATEWAY, "registry"),
        MarketError::Shared(_) if e.is_retryable() => {
            return super::reply::store_unavailable(&text);
        }
        // No `_` arm: a new variant must be given its answer here.
        MarketError::Shared(_)
        | MarketError::Storage(_)
        | MarketError::Open(_)
        | MarketError::Search(_)
        | MarketError::Corrupt { .. }
        | MarketError::Lock { .. }
        | MarketError::Review { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    ApiError::new(status, code, text)
}

/// Run `work` on the blocking pool; its marketplace error becomes the answer.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, MarketError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::failed(&e))?
        .map_err(|e| market_error(&e))
}

/// A 429 with `Retry-After` for a full marketplace slot pool.
fn busy(code: &'static str, what: &str, key: &str) -> ApiError {
    super::reply::full(
        code,
        format!("the daemon is already running its {what} at once ([market] {key}); retry shortly"),
    )
}

/// How this daemon reaches registries for the marketplace: https unless
/// loopback, docker credentials, `[pull]` caps.
fn access(engine: &Engine) -> Access {
    Access {
        limits: engine.config().pull,
        ..Access::default()
    }
}

/// The owner check: whether `p`'s tenant owns `author` (an operator owns
/// operator-owned namespaces too).
pub(super) fn owns(p: &Principal, author: &Author) -> bool {
    match &author.tenant {
        Some(t) => *t == p.tenant,
        None => p.is_operator(),
    }
}

#[utoipa::path(post, path = "/v1/market/authors", tag = "market", operation_id = "registerAuthor",
    request_body = AuthorRequest,
    responses(
        (status = 201, description = "Registered for the caller's tenant (200: it already was, with this key)", body = AuthorView),
        (status = 409, description = "The namespace belongs to another tenant, or the key to another author", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("admin"))))]
pub(super) async fn register_author(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require(&p, TokenScope::Admin)?;
    let req: AuthorRequest = parse(body)?;
    let key = PublicKey::from_pem(&req.public_key).map_err(|e| {
        ApiError::bad(
            format!("`public_key`: {}", super::error_chain(&e)),
            Some("public_key"),
        )
    })?;
    let market = daemon.market.market.clone();
    let tenant = p.tenant.clone();
    let (before, author) = blocking(move || {
        let before = market.author(&req.name).ok();
        let author = market.register_author_proven(&req.name, &key, Some(&tenant), &req.proof)?;
        Ok((before, author))
    })
    .await?;
    let status = if before.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(AuthorView::of(author, &p.tenant, p.is_operator())),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/market/authors/{name}", tag = "market", operation_id = "getAuthor",
    params(("name" = String, Path, description = "The namespace")),
    responses(
        (status = 200, description = "The namespace and its key", body = AuthorView),
        (status = 404, description = "No such namespace", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("read"))))]
pub(super) async fn get_author(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<AuthorView>, ApiError> {
    require(&p, TokenScope::Read)?;
    let market = daemon.market.market.clone();
    let author = blocking(move || market.author(&name)).await?;
    Ok(Json(AuthorView::of(author, &p.tenant, p.is_operator())))
}

/// The listing a submission's JSON body describes, validated exactly as
/// `listing.toml` is (the same parser; messages name `listing: FIELD`).
fn listing_of(body: ListingBody) -> Result<Listing, ApiError> {
    #[derive(serde::Serialize)]
    struct File {
        name: String,
        version: String,
        summary: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        readme: Option<Readme>,
        keywords: Vec<String>,
        categories: Vec<String>,
        license: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        examples: Vec<crate::market::listing::Example>,
        price: crate::market::listing::Price,
    }
    let file = File {
        name: body.name,
        version: body.version,
        summary: body.summary,
        readme: body.readme.map(|markdown| Readme::Inline { markdown }),
        keywords: body.keywords,
        categories: body.categories,
        license: body.license,
        source: body.source,
        examples: body.examples,
        price: body.price,
    };
    let text = toml::to_string(&file).map_err(|e| {
        ApiError::bad(
            format!(
                "`listing`: cannot be written as listing.toml ({e}); JSON null has no TOML form"
            ),
            Some("listing"),
        )
    })?;
    Listing::parse(&text, std::path::Path::new("listing")).map_err(|e| {
        let field = match &e {
            crate::market::listing::ListingError::Invalid { field, .. } => {
                Some(format!("listing.{field}"))
            }
            crate::market::listing::ListingError::Syntax { field, .. } => {
                Some(format!("listing.{field}"))
            }
            _ => Some("listing".to_owned()),
        };
        ApiError::bad(super::error_chain(&e), field.as_deref())
    })
}

#[utoipa::path(post, path = "/v1/market/submissions", tag = "market", operation_id = "submit",
    request_body = SubmissionRequest,
    responses(
        (status = 201, description = "Accepted (the author's signature verified by a pull) and reviewed; the record says approved or rejected, with every reason", body = SubmittedView),
        (status = 200, description = "This version was already submitted with this component: the record as it is", body = SubmittedView),
        (status = 403, description = "The listing's namespace is not the caller tenant's", body = ErrorBody),
        (status = 409, description = "The version exists with another component (versions are immutable)", body = ErrorBody),
        (status = 422, description = "The reference is not signed by the namespace's registered key", body = ErrorBody),
        (status = 502, description = "The registry refused or could not be reached", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("admin"))))]
pub(super) async fn submit(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require(&p, TokenScope::Admin)?;
    let req: SubmissionRequest = parse(body)?;
    let listing = listing_of(req.listing)?;
    let reference = Reference::parse(&req.reference)
        .map_err(|e| ApiError::bad(format!("`reference`: {e}"), Some("reference")))?;
    let config = &daemon.engine.config().market;
    if let Some(registry) = &config.registry
        && reference.registry() != registry.as_str()
    {
        return Err(ApiError::bad(
            format!(
                "`reference`: this marketplace accepts components pushed to {registry} ([market] registry), not {}",
                reference.registry()
            ),
            Some("reference"),
        ));
    }
    // The namespace must be the caller's before anything is pulled.
    let market = daemon.market.market.clone();
    let namespace = listing.author().to_owned();
    let id = listing.id();
    let (author, versions) = blocking(move || {
        let author = market.author(&namespace)?;
        // Versions in the namespace, counted only for a new version.
        let versions = match market.get(&id)? {
            Some(_) => 0,
            None => market
                .versions(None)?
                .iter()
                .filter(|s| s.author == namespace)
                .count(),
        };
        Ok((author, versions))
    })
    .await?;
    if !owns(&p, &author) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "foreign-namespace",
            format!(
                "the namespace `{}` is not your tenant's: register one of your own (POST /v1/market/authors)",
                author.name
            ),
        ));
    }
    if versions >= MAX_VERSIONS_PER_AUTHOR {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too-many-versions",
            format!(
                "the namespace `{}` has {versions} versions, the most one namespace may have over the API",
                author.name
            ),
        ));
    }
    let permit = daemon
        .market
        .reviews
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            daemon.metrics.rejected("too-many-reviews");
            busy("too-many-reviews", "reviews", "max_concurrent_reviews")
        })?;
    let d = daemon.clone();
    // The permit moves into the blocking task: the slot stays taken until
    // the pull and the review end, even if this request is dropped.
    let (submitted, review) = blocking(move || {
        let _permit = permit;
        review_submitted(&d, listing, reference)
    })
    .await?;
    let status = if submitted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(SubmittedView {
            id: submitted.submission.id(),
            created: submitted.created,
            submission: submitted.submission,
            review,
        }),
    )
        .into_response())
}

/// Blocking: accept the signed reference (a verified pull) and run the
/// automated review. Returns the record after the review and its report.
fn review_submitted(
    daemon: &Daemon,
    listing: Listing,
    reference: Reference,
) -> Result<(flow::Submitted, Option<serde_json::Value>), MarketError> {
    let engine = &daemon.engine;
    let market = &daemon.market.market;
    let access = access(engine);
    let mut submitted = flow::accept(engine, market, listing, reference, &access)?;
    // Only a version the review has not decided is reviewed: a
    // re-submission of a decided (or published) one reports the record.
    if submitted.submission.state != SubmissionState::Submitted {
        return Ok((submitted, None));
    }
    let options = pipeline::ReviewOptions {
        access,
        ..pipeline::ReviewOptions::from_config(engine.config())
    };
    let reviewed =
        pipeline::review_submission(engine, market, &submitted.submission.id(), &options)?;
    submitted.submission = reviewed.submission;
    let report = serde_json::to_value(&reviewed.report).map_err(crate::market::error::storage)?;
    Ok((submitted, Some(report)))
}

/// The view of `s` for `p`, or `None` if `p` may not see it: the owner
/// tenant (and operators) see every state with evidence; others only a
/// version the marketplace published, without the review's evidence.
pub(super) fn view(
    p: &Principal,
    author: Option<&Author>,
    mut s: Submission,
) -> Option<SubmissionView> {
    let yours = author.is_some_and(|a| owns(p, a));
    if !(yours || p.is_operator()) {
        if !s.state.was_published() {
            return None;
        }
        if let Some(review) = &mut s.review {
            review.evidence = serde_json::Value::Null;
        }
    }
    Some(SubmissionView {
        id: s.id(),
        yours,
        submission: s,
    })
}

#[utoipa::path(get, path = "/v1/market/submissions", tag = "market", operation_id = "listSubmissions",
    params(SubmissionsQuery),
    responses(
        (status = 200, description = "The versions the caller may see, by name then version (at most 500)", body = Vec<SubmissionView>),
        (status = 400, description = "A bad query", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("read"))))]
pub(super) async fn list_submissions(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    query: Result<Query<SubmissionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<SubmissionView>>, ApiError> {
    require(&p, TokenScope::Read)?;
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text(), None))?;
    if let Some(name) = &q.name {
        crate::market::listing::check_name(name)
            .map_err(|reason| ApiError::bad(format!("`name`: {reason}"), Some("name")))?;
    }
    let market = daemon.market.market.clone();
    let (authors, versions) = blocking(move || {
        let authors = market.authors()?;
        Ok((authors, market.versions(q.name.as_deref())?))
    })
    .await?;
    let list = versions
        .into_iter()
        .filter_map(|s| {
            let author = authors.iter().find(|a| a.name == s.author);
            view(&p, author, s)
        })
        .take(MAX_VERSIONS_LISTED)
        .collect();
    Ok(Json(list))
}

/// The submission `id` as `p` may see it; 404 (not 403) when it may not,
/// so another tenant's unpublished versions do not show they exist.
async fn visible_submission(
    daemon: &Arc<Daemon>,
    p: &Principal,
    id: &str,
) -> Result<SubmissionView, ApiError> {
    let market = daemon.market.market.clone();
    let key = id.to_owned();
    let (submission, author) = blocking(move || {
        let Some(s) = market.get(&key)? else {
            return Ok((None, None));
        };
        let author = market.author(&s.author).ok();
        Ok((Some(s), author))
    })
    .await?;
    submission
        .and_then(|s| view(p, author.as_ref(), s))
        .ok_or_else(|| ApiError::not_found(&format!("submission {id} visible to this token")))
}

#[utoipa::path(get, path = "/v1/market/submissions/{id}", tag = "market", operation_id = "getSubmission",
    params(("id" = String, Path, description = "`author/name@version`, its `/` percent-encoded (`acme%2Fecho@1.0.0`)")),
    responses((status = 200, description = "The version, as the caller may see it", body = SubmissionView)),
    extensions(("x-soma-scope" = json!("read"))))]
pub(super) async fn get_submission(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SubmissionView>, ApiError> {
    require(&p, TokenScope::Read)?;
    Ok(Json(visible_submission(&daemon, &p, &id).await?))
}

/// The optional `{"reason"}` body of a state change (an empty body is none).
fn state_change(body: Result<Bytes, BytesRejection>) -> Result<StateChangeRequest, ApiError> {
    match &body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => Ok(StateChangeRequest::default()),
        _ => parse(body),
    }
}

fn staff(p: &Principal, what: &str) -> Result<(), ApiError> {
    if p.is_operator() {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "{what} is the marketplace's decision: it needs an `operator` token"
        )))
    }
}

/// Blocking: keep the search index in step with `s`, and make the next
/// search re-read it. The state change is already durable, so a failure
/// here (e.g. a CLI holding the index's writer lock past the retries) is
/// logged, not answered: `soma market reindex` repairs the index.
fn reindex(daemon: &Daemon, s: &Submission) {
    if let Err(e) = pipeline::index_submission(&daemon.engine, &daemon.market.market, s) {
        tracing::warn!(
            id = %s.id(),
            "the search index was not updated: {} (run `soma market reindex`)",
            super::error_chain(&e)
        );
    }
    daemon.market.search.invalidate();
}

/// How often a daemon on the shared store checks whether the fleet's
/// versions changed (a cheap query), and so whether its search index must
/// follow.
pub const SEARCH_SYNC: Duration = Duration::from_secs(2);

/// How long a version that could not be indexed (its component could not
/// be pulled or compiled) waits before the next try.
pub const SEARCH_SYNC_RETRY: Duration = Duration::from_secs(30);

/// On the shared store only (on redb this daemon's own writes are the only
/// ones, and [`reindex`] follows each): a thread that, every
/// [`SEARCH_SYNC`] while `daemon` lives, checks the versions' revision and,
/// when another daemon changed them, brings this node's search index in
/// step ([`pipeline::sync_index`]), then makes the next search re-read it.
/// Versions that failed, or a sync that failed whole (the index locked by
/// a CLI), are tried again after [`SEARCH_SYNC_RETRY`].
pub(super) fn spawn_search_sync(daemon: Weak<Daemon>) -> std::io::Result<()> {
    let shared = daemon
        .upgrade()
        .is_some_and(|d| d.market.market.records().is_shared());
    if !shared {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("soma-search-sync".into())
        .spawn(move || {
            let mut seen = None;
            let mut retry_at: Option<Instant> = None;
            loop {
                let Some(daemon) = daemon.upgrade() else {
                    return;
                };
                let market = &daemon.market.market;
                let due = retry_at.is_some_and(|t| t <= Instant::now());
                match market.records().revision(Table::Versions) {
                    Ok(now) if now != seen || due => {
                        // Whatever the outcome, the next try is after
                        // the retry pause if anything failed, or at once
                        // when the versions change again.
                        seen = now;
                        retry_at = None;
                        match pipeline::sync_index(&daemon.engine, market) {
                            Ok(done) => {
                                for (id, e) in &done.failed {
                                    tracing::warn!(
                                        %id,
                                        "not in this node's search index yet (retrying in {} s): {}",
                                        SEARCH_SYNC_RETRY.as_secs(),
                                        super::error_chain(e)
                                    );
                                }
                                if !done.failed.is_empty() {
                                    retry_at = Some(Instant::now() + SEARCH_SYNC_RETRY);
                                }
                                if done.updated > 0 {
                                    daemon.market.search.invalidate();
                                }
                            }
                            Err(e) => {
                                retry_at = Some(Instant::now() + SEARCH_SYNC_RETRY);
                                tracing::warn!(
                                    "the search index could not follow the fleet's versions (retrying in {} s): {}",
                                    SEARCH_SYNC_RETRY.as_secs(),
                                    super::error_chain(&e)
                                );
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(
                        "cannot read the fleet's marketplace versions (search stays as it is): {}",
                        super::error_chain(&e)
                    ),
                }
                drop(daemon);
                std::thread::sleep(SEARCH_SYNC);
            }
        })
        .map(|_| ())
}

#[utoipa::path(post, path = "/v1/market/submissions/{id}/publish", tag = "market", operation_id = "publishSubmission",
    params(("id" = String, Path, description = "`author/name@version`, its `/` percent-encoded")),
    request_body(content = Option<StateChangeRequest>, description = "Optional; an empty body is fine"),
    responses(
        (status = 200, description = "Countersigned with the marketplace key (both signatures verified) and indexed", body = SubmissionView),
        (status = 409, description = "Not approved (the message says why)", body = ErrorBody),
        (status = 503, description = "`[market] key` is not configured on this daemon", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("operator"))))]
pub(super) async fn publish(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SubmissionView>, ApiError> {
    staff(&p, "publishing")?;
    let _ = state_change(body)?;
    let key = daemon.market.key.clone().map_err(|why| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-configured",
            format!(
                "publishing countersigns with the marketplace's private key, which this daemon does not have ({why}): set [market] key and start the daemon with its password in SOMA_PASSWORD"
            ),
        )
    })?;
    let d = daemon.clone();
    let published = blocking(move || {
        let engine = &d.engine;
        let s = flow::publish(&d.market.market, &id, &key, &access(engine))?;
        // Charged from its first call: the price book reloads now, not at
        // its next periodic refresh.
        engine.metering().prices_changed();
        reindex(&d, &s);
        Ok(s)
    })
    .await?;
    Ok(Json(SubmissionView {
        id: published.id(),
        yours: false,
        submission: published,
    }))
}

async fn change_state(
    daemon: Arc<Daemon>,
    p: Principal,
    id: String,
    body: Result<Bytes, BytesRejection>,
    to: SubmissionState,
) -> Result<Json<SubmissionView>, ApiError> {
    staff(
        &p,
        if to == SubmissionState::Yanked {
            "yanking"
        } else {
            "deprecating"
        },
    )?;
    let req = state_change(body)?;
    let d = daemon.clone();
    let changed = blocking(move || {
        let s = d.market.market.transition(&id, to, req.reason, |_| {})?;
        reindex(&d, &s);
        Ok(s)
    })
    .await?;
    Ok(Json(SubmissionView {
        id: changed.id(),
        yours: false,
        submission: changed,
    }))
}

#[utoipa::path(post, path = "/v1/market/submissions/{id}/yank", tag = "market", operation_id = "yankSubmission",
    params(("id" = String, Path, description = "`author/name@version`, its `/` percent-encoded")),
    request_body(content = Option<StateChangeRequest>, description = "Optional reason"),
    responses(
        (status = 200, description = "Hidden from search and ranges; pins keep resolving", body = SubmissionView),
        (status = 409, description = "Not in a state that can be yanked", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("operator"))))]
pub(super) async fn yank(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SubmissionView>, ApiError> {
    change_state(daemon, p, id, body, SubmissionState::Yanked).await
}

#[utoipa::path(post, path = "/v1/market/submissions/{id}/deprecate", tag = "market", operation_id = "deprecateSubmission",
    params(("id" = String, Path, description = "`author/name@version`, its `/` percent-encoded")),
    request_body(content = Option<StateChangeRequest>, description = "Optional reason"),
    responses(
        (status = 200, description = "Deprecated: hidden from search and ranges; pins keep resolving", body = SubmissionView),
        (status = 409, description = "Not published", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("operator"))))]
pub(super) async fn deprecate(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SubmissionView>, ApiError> {
    change_state(daemon, p, id, body, SubmissionState::Deprecated).await
}

/// Split `a,b` and repeated keys into one list, trimmed, empty ones dropped.
fn values<'a>(pairs: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(k, _)| k == key)
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// The search query a query string asks for (the same filters and caps as
/// `soma market search`).
fn search_query(pairs: &[(String, String)]) -> Result<SearchQuery, ApiError> {
    if pairs.len() > MAX_QUERY_PAIRS {
        return Err(ApiError::bad(
            format!("at most {MAX_QUERY_PAIRS} query parameters"),
            None,
        ));
    }
    const KNOWN: [&str; 11] = [
        "q",
        "category",
        "kind",
        "price",
        "license",
        "imports",
        "exports",
        "capability",
        "review",
        "limit",
        "offset",
    ];
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad(
            format!(
                "unknown query parameter `{k}` (known: {})",
                KNOWN.join(", ")
            ),
            Some(k),
        ));
    }
    let owned = |key| values(pairs, key).into_iter().map(str::to_owned).collect();
    fn typed<T, E: std::fmt::Display>(
        pairs: &[(String, String)],
        key: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Vec<T>, ApiError> {
        values(pairs, key)
            .into_iter()
            .map(|v| parse(v).map_err(|e| ApiError::bad(format!("`{key}`: {e}"), Some(key))))
            .collect()
    }
    let number = |key: &str, default: usize| -> Result<usize, ApiError> {
        match pairs.iter().rev().find(|(k, _)| k == key) {
            None => Ok(default),
            Some((_, v)) => v
                .trim()
                .parse()
                .map_err(|_| ApiError::bad(format!("`{key}` must be a number"), Some(key))),
        }
    };
    let text = pairs
        .iter()
        .filter(|(k, _)| k == "q")
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    Ok(SearchQuery {
        text,
        filters: Filters {
            category: owned("category"),
            kind: typed(pairs, "kind", search::parse_kind)?,
            price: typed(pairs, "price", search::parse_price)?,
            license: owned("license"),
            imports: owned("imports"),
            exports: owned("exports"),
            capability: owned("capability"),
            review: typed(pairs, "review", search::parse_review)?,
        },
        limit: number("limit", search::DEFAULT_LIMIT)?,
        offset: number("offset", 0)?,
    })
}

#[utoipa::path(get, path = "/v1/market/search", tag = "market", operation_id = "searchListings",
    params(SearchParams),
    responses(
        (status = 200, description = "Matching published listings, best first, with facet counts", body = SearchAnswer),
        (status = 400, description = "A bad query or one over the caps (the message names the cap)", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("read"))))]
pub(super) async fn search_listings(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SearchAnswer>, ApiError> {
    require(&p, TokenScope::Read)?;
    let Query(pairs) = query.map_err(|e| ApiError::bad(e.body_text(), None))?;
    let query = search_query(&pairs)?;
    let snapshot = daemon.market.search.clone();
    let index = snapshot.current().await?;
    let answer = tokio::task::spawn_blocking(move || index.search(&query))
        .await
        .map_err(|e| ApiError::failed(&e))?
        .map_err(|e| ApiError::bad(super::error_chain(&e), None))?;
    Ok(Json(answer))
}

#[utoipa::path(get, path = "/v1/market/listings/{author}/{name}", tag = "market", operation_id = "getListing",
    params(
        ("author" = String, Path, description = "The namespace"),
        ("name" = String, Path, description = "The capsule's name in it"),
    ),
    responses(
        (status = 200, description = "The published versions and the newest one's listing", body = ListingView),
        (status = 404, description = "No published version of that name", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("read"))))]
pub(super) async fn get_listing(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path((author, name)): Path<(String, String)>,
) -> Result<Json<ListingView>, ApiError> {
    require(&p, TokenScope::Read)?;
    let full = format!("{author}/{name}");
    crate::market::listing::check_name(&full)
        .map_err(|reason| ApiError::bad(reason, Some("name")))?;
    let market = daemon.market.market.clone();
    let engine = daemon.engine.clone();
    let key = full.clone();
    // Each published version with its measured cost card (one read of the
    // per-capsule daily rollup per version: 30 small rows).
    let (published, mut cards) = blocking(move || {
        let published: Vec<Submission> = market
            .versions(Some(&key))?
            .into_iter()
            .filter(|s| s.state.was_published())
            .collect();
        let now = crate::market::store::now_ms();
        let ledger = engine.metering().reports();
        let cards: Vec<Option<serde_json::Value>> = published
            .iter()
            .map(|s| {
                crate::market::card::cost_card(ledger, &[&s.component.to_string()], now)
                    .ok()
                    .and_then(|card| serde_json::to_value(card).ok())
            })
            .collect();
        Ok((published, cards))
    })
    .await?;
    let newest = published
        .iter()
        .filter(|s| s.state == SubmissionState::Published)
        .chain(published.iter())
        .max_by(|a, b| {
            (a.state == SubmissionState::Published, &a.listing.version)
                .cmp(&(b.state == SubmissionState::Published, &b.listing.version))
        })
        .cloned()
        .ok_or_else(|| ApiError::not_found(&format!("published listing `{full}`")))?;
    Ok(Json(ListingView {
        name: full,
        author,
        listing: newest.listing,
        versions: published
            .into_iter()
            .zip(cards.drain(..))
            .map(|(s, cost_card)| ListingVersion {
                version: s.listing.version.to_string(),
                state: s.state.to_string(),
                digest: s.digest.to_string(),
                component: s.component.to_string(),
                reference: s.pinned_reference(),
                published_ms: s.published_ms,
                cost_card,
            })
            .collect(),
    }))
}

#[utoipa::path(post, path = "/v1/market/installs", tag = "market", operation_id = "install",
    request_body = InstallRequest,
    responses(
        (status = 201, description = "Pulled, both signatures verified (author + marketplace, all-of), pinned for the caller's tenant", body = InstalledView),
        (status = 404, description = "No published version matches (the message lists the versions passed over and why)", body = ErrorBody),
        (status = 422, description = "A signature is missing or does not verify", body = ErrorBody),
        (status = 503, description = "`[market] public_key` is not configured", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("admin"))))]
pub(super) async fn install(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require(&p, TokenScope::Admin)?;
    let req: InstallRequest = parse(body)?;
    let (name, selector) =
        flow::parse_name(&req.name).map_err(|e| market_error(&e).with_field("name"))?;
    let permit = daemon
        .market
        .pulls
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            daemon.metrics.rejected("too-many-installs");
            busy("too-many-installs", "installs", "max_concurrent_installs")
        })?;
    let d = daemon.clone();
    let tenant = p.tenant.clone();
    let (pin, previous, cached) = blocking(move || {
        let _permit = permit;
        let engine = &d.engine;
        let config = engine.config();
        let market = &d.market.market;
        let min_age = config.market.min_release_age_secs.saturating_mul(1000);
        let submission = flow::select(market, &name, &selector, None, min_age)?;
        let pulled = flow::fetch(engine.data(), config, market, &submission, &access(engine))?;
        let range = match &selector {
            Selector::Range(r) => r.to_string(),
            Selector::Digest(_) => format!("={}", submission.listing.version),
        };
        let pin = Pin {
            range,
            version: submission.listing.version.to_string(),
            digest: submission.digest,
            component: submission.component,
            reference: submission.pinned_reference(),
        };
        let previous = d.market.installs.pin(&tenant, &name, pin)?;
        let pin = d
            .market
            .installs
            .get(&tenant, &name)?
            .ok_or_else(|| MarketError::NoSuchVersion { id: name.clone() })?;
        Ok((pin, previous.map(|p| p.pin.version), pulled.cached))
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(InstalledView {
            install: pin.into(),
            previous,
            cached,
        }),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/market/installs", tag = "market", operation_id = "listInstalls",
    responses((status = 200, description = "The caller tenant's installs, by name", body = Vec<InstallView>)),
    extensions(("x-soma-scope" = json!("read"))))]
pub(super) async fn list_installs(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
) -> Result<Json<Vec<InstallView>>, ApiError> {
    require(&p, TokenScope::Read)?;
    let installs = daemon.market.installs.clone();
    let tenant = p.tenant.clone();
    let pins = blocking(move || installs.list(&tenant)).await?;
    Ok(Json(pins.into_iter().map(InstallView::from).collect()))
}

#[utoipa::path(delete, path = "/v1/market/installs/{author}/{name}", tag = "market", operation_id = "uninstall",
    params(
        ("author" = String, Path, description = "The namespace"),
        ("name" = String, Path, description = "The capsule's name in it"),
    ),
    responses(
        (status = 200, description = "Removed: `market:author/name` no longer resolves for the caller's tenant (runs already started keep their pinned digest)", body = InstallView),
        (status = 404, description = "The caller's tenant has not installed it", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("admin"))))]
pub(super) async fn uninstall(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path((author, name)): Path<(String, String)>,
) -> Result<Json<InstallView>, ApiError> {
    require(&p, TokenScope::Admin)?;
    let full = format!("{author}/{name}");
    let installs = daemon.market.installs.clone();
    let tenant = p.tenant.clone();
    let key = full.clone();
    let removed = blocking(move || installs.remove(&tenant, &key)).await?;
    removed
        .map(|p| Json(p.into()))
        .ok_or_else(|| ApiError::not_found(&format!("install of `{full}` for this tenant")))
}

/// The daemon's resolve stage for a capsule a tenant's DAG run names: a
/// catalog name as before, or `market:author/name[@range|@sha256:…]`
/// through *that tenant's* install pin only ([`resolve_pinned`]). Returns
/// the capsule and the reference the run records (for a market name,
/// `market:author/name@sha256:…`, the pinned manifest digest). Blocking: a
/// market name may read and load the cached component.
pub(super) fn resolve_for_tenant(
    daemon: &Daemon,
    tenant: &str,
    alias: &str,
    name: &str,
) -> Result<(Arc<Capsule>, String), ApiError> {
    if name.starts_with(MARKET_PREFIX) {
        let resolved = resolve_pinned(daemon, tenant, name)
            .map_err(|e| ApiError::bad(format!("capsule `{alias}`: {e}"), Some("dag.capsules")))?;
        return Ok((resolved.capsule, resolved.pinned.to_string()));
    }
    let item = daemon.resolve(&CapsuleRef::catalog(name)).map_err(|_| {
        ApiError::bad(
            format!("capsule `{alias}` names `{name}`, which is not in the daemon's catalog (GET /v1/capsules)"),
            Some("dag.capsules"),
        )
    })?;
    Ok((item.capsule, name.to_owned()))
}

/// A capsule call's `market:` name (`POST /v1/runs {"capsule": "market:…"}`),
/// resolved through the caller tenant's pin on the blocking pool.
pub(super) async fn resolve_call(
    daemon: &Arc<Daemon>,
    tenant: &str,
    name: &str,
) -> Result<Resolved, ApiError> {
    let d = daemon.clone();
    let (tenant, text) = (tenant.to_owned(), name.to_owned());
    tokio::task::spawn_blocking(move || resolve_pinned(&d, &tenant, &text))
        .await
        .map_err(|e| ApiError::failed(&e))?
        .map_err(|e| ApiError::bad(e, Some("capsule")))
}

/// The prefix of a marketplace name in a run.
pub(super) const MARKET_PREFIX: &str = "market:";

/// Resolve `market:author/name[@range|@sha256:…]` through `tenant`'s pin:
/// none is an error (another tenant's pins never count, nor does the
/// newest published version); a range must contain the pinned version, a
/// digest must be the pinned one. The pinned digest is pulled (from the
/// blob cache once installed) under author + marketplace keys and loaded.
/// Blocking.
fn resolve_pinned(daemon: &Daemon, tenant: &str, name: &str) -> Result<Resolved, String> {
    let rest = name.strip_prefix(MARKET_PREFIX).unwrap_or(name);
    let (market_name, selector) = flow::parse_name(rest).map_err(|e| super::error_chain(&e))?;
    let pin = daemon
        .market
        .installs
        .get(tenant, &market_name)
        .map_err(|e| super::error_chain(&e))?
        .ok_or_else(|| {
            format!(
                "`{name}`: your tenant has not installed `{market_name}`: POST /v1/market/installs {{\"name\": \"{rest}\"}} first"
            )
        })?;
    match &selector {
        Selector::Range(range) => {
            let pinned = semver::Version::parse(&pin.pin.version)
                .map_err(|e| format!("the pin of `{market_name}`: {e}"))?;
            if !range.matches(&pinned) {
                return Err(format!(
                    "`{name}`: your tenant pins `{market_name}` to {pinned}, outside {range}; re-install it with that range"
                ));
            }
        }
        Selector::Digest(d) if *d != pin.pin.digest => {
            return Err(format!(
                "`{name}`: your tenant pins `{market_name}` to {}, not {d}",
                pin.pin.digest
            ));
        }
        Selector::Digest(_) => {}
    }
    let pinned = CapsuleRef::Market {
        name: market_name,
        selector: Selector::Digest(pin.pin.digest),
    };
    Resolver::new(&daemon.engine)
        .resolve(&pinned)
        .map_err(|e| format!("`{name}`: {}", super::error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::search::SearchDoc;

    fn doc(listing: &str) -> SearchDoc {
        serde_json::from_value(serde_json::json!({
            "listing": listing,
            "version": "1.0.0",
            "summary": "adds numbers",
            "kind": "worker",
            "price": "free",
            "license": "MIT",
            "review": "verified",
        }))
        .expect("doc")
    }

    /// Another process (the CLI) writing the index directory is seen by the
    /// daemon's snapshot at its next check, without the daemon holding the
    /// writer lock — even two writes within the same clock tick.
    #[test]
    fn the_search_snapshot_follows_another_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("search");
        let snapshot = SearchSnapshot::new(path.clone());
        assert_eq!(snapshot.refresh().expect("no index yet").listings(), 0);
        let mut writer = SearchIndex::open(&path).expect("writer");
        writer.upsert(doc("acme/calc")).expect("upsert");
        assert_eq!(snapshot.refresh().expect("refresh").listings(), 1);
        writer.upsert(doc("acme/echo")).expect("upsert");
        assert_eq!(snapshot.refresh().expect("refresh").listings(), 2);
        let answer = snapshot
            .refresh()
            .expect("refresh")
            .search(&SearchQuery::text("adds"))
            .expect("search");
        assert_eq!(answer.total, 2);
        // The writer's lock was never needed by the snapshot; the writer
        // still holds it (a second writer is refused).
        assert!(SearchIndex::open(&path).is_err());
    }

    #[test]
    fn search_query_strings_take_repeated_and_comma_separated_filters() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let q = search_query(&pairs(&[
            ("q", "sum"),
            ("category", "text,math"),
            ("category", "llm"),
            ("price", "per-call"),
            ("limit", "5"),
        ]))
        .expect("query");
        assert_eq!(q.text, "sum");
        assert_eq!(q.filters.category, ["text", "math", "llm"]);
        assert_eq!(q.filters.price.len(), 1);
        assert_eq!(q.limit, 5);
        assert!(search_query(&pairs(&[("colour", "red")])).is_err());
        assert!(search_query(&pairs(&[("kind", "nonsense")])).is_err());
        assert!(search_query(&pairs(&[("limit", "many")])).is_err());
        let many: Vec<_> = (0..=MAX_QUERY_PAIRS)
            .map(|_| ("q".to_owned(), "x".to_owned()))
            .collect();
        assert!(search_query(&many).is_err());
    }
}

#[utoipa::path(get, path = "/v1/market/payouts", tag = "market", operation_id = "payouts",
    params(PayoutsQuery),
    responses(
        (status = 200, description = "The month's fees, platform share and net per author and listing, recomputed from the ledger: the caller tenant's authors only (an operator: every author)", body = Payouts),
        (status = 400, description = "`month` is not YYYY-MM", body = ErrorBody),
        (status = 404, description = "`author` is not a namespace the caller's tenant owns", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("read"))))]
pub(super) async fn payouts(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    query: Result<Query<PayoutsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Payouts>, ApiError> {
    require(&p, TokenScope::Read)?;
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text(), None))?;
    let market = daemon.market.market.clone();
    let engine = daemon.engine.clone();
    let principal = p.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<Payouts, ApiError> {
        let authors = market.authors().map_err(|e| market_error(&e))?;
        let owned: BTreeSet<String> = authors
            .into_iter()
            .filter(|a| principal.is_operator() || owns(&principal, a))
            .map(|a| a.name)
            .collect();
        if let Some(author) = &q.author
            && !owned.contains(author)
        {
            // 404, not 403: another tenant's namespace is not shown to exist.
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no author namespace `{author}` of yours: GET /v1/market/authors/{author} shows who owns it"),
            ));
        }
        if owned.is_empty() {
            // Nothing of the caller's to report: still check the month, skip the scan.
            return payouts::report_empty(&q.month).map_err(|e| {
                ApiError::bad(super::error_chain(&e), Some("month"))
            });
        }
        let mut report = payouts::report(engine.metering().reports(), &q.month, q.author.as_deref())
            .map_err(|e| match e {
                payouts::PayoutError::Ledger(crate::ledger::LedgerError::InvalidMonth(_)) => {
                    ApiError::bad(super::error_chain(&e), Some("month"))
                }
                e => ApiError::failed(&e),
            })?;
        report.authors.retain(|a| owned.contains(&a.author));
        report.revenue_micros = report.authors.iter().map(|a| a.revenue_micros).sum();
        report.platform_micros = report.authors.iter().map(|a| a.platform_micros).sum();
        report.net_micros = report.authors.iter().map(|a| a.net_micros).sum();
        Ok(report)
    })
    .await
    .map_err(|e| ApiError::failed(&e))??;
    Ok(Json(answer))
}

#[utoipa::path(post, path = "/v1/market/submissions/{id}/approve", tag = "market", operation_id = "approveSubmission",
    params(("id" = String, Path, description = "author/name@version, `/` percent-encoded")),
    request_body(content = StateChangeRequest, description = "Optional: why"),
    responses(
        (status = 200, description = "Approved by a reviewer (then publish)", body = SubmissionView),
        (status = 409, description = "The version does not await a reviewer, or its automated review failed", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("operator"))))]
pub(super) async fn approve(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SubmissionView>, ApiError> {
    staff(&p, "approving a version")?;
    let req = state_change(body)?;
    let market = daemon.market.market.clone();
    let reviewer = format!("token {} ({})", p.token, p.tenant);
    let s = blocking(move || market.approve(&id, &reviewer, req.reason)).await?;
    Ok(Json(SubmissionView {
        id: s.id(),
        yours: false,
        submission: s,
    }))
}

#[utoipa::path(post, path = "/v1/market/submissions/{id}/reject", tag = "market", operation_id = "rejectSubmission",
    params(("id" = String, Path, description = "author/name@version, `/` percent-encoded")),
    request_body(content = StateChangeRequest, description = "Why (required: recorded for the author)"),
    responses(
        (status = 200, description = "Rejected by a reviewer", body = SubmissionView),
        (status = 400, description = "No reason given", body = ErrorBody),
        (status = 409, description = "The version is already published", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("operator"))))]
pub(super) async fn reject(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SubmissionView>, ApiError> {
    staff(&p, "rejecting a version")?;
    let req = state_change(body)?;
    let Some(reason) = req.reason else {
        return Err(ApiError::bad(
            "`reason` is required to reject: the author is told why",
            Some("reason"),
        ));
    };
    let market = daemon.market.market.clone();
    let reviewer = format!("token {} ({})", p.token, p.tenant);
    let s = blocking(move || market.reject(&id, &reviewer, &reason)).await?;
    Ok(Json(SubmissionView {
        id: s.id(),
        yours: false,
        submission: s,
    }))
}
