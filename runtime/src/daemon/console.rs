//! The web console: `soma daemon` serves it at `/ui/` on the API's own
//! listener (same TLS, same connection limits). Pages are HTML rendered on
//! the server ([`layout`], `maud`); the little JavaScript there is
//! (`assets/*.js`) only makes live pages live, over the API's SSE stream.
//! Nothing needs Node to build or run.
//!
//! **Sign-in** is with an API token (`POST /ui/login`): the console keeps a
//! session ([`session`]) bound to that token's id and sends an opaque
//! cookie — `HttpOnly`, `SameSite=Strict`, `Path=/`, and `Secure` with the
//! `__Host-` prefix when the daemon serves TLS. The token's scopes and
//! tenant are what the pages may show and do, exactly as through the API:
//! another tenant's run is the same 404 page as a run that does not exist.
//! A revoked or expired token signs its sessions out on their next request.
//!
//! **Forms**: every state-changing request (anything but GET/HEAD) must
//! carry the session's CSRF token in a `csrf` form field, checked here in
//! the middleware before any handler runs (a page cannot forget it), and,
//! when the browser sends `Origin`, come from this origin. The login form
//! uses a double-submit cookie instead (there is no session yet).
//!
//! **Headers** on every `/ui` answer: a strict Content-Security-Policy
//! (`default-src 'none'`; scripts, styles and fetches from this origin
//! only; no inline script; no framing), `nosniff`, `same-origin` referrers, and
//! `no-store` on pages.

pub mod assets;
pub mod layout;
pub mod session;

mod analytics;
mod author;
mod calls;
mod chart;
mod costs;
mod graph;
mod install;
mod markdown;
mod market;
mod ops;
mod reviews;
mod runs;

use std::sync::Arc;

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use maud::html;
use serde::Deserialize;

pub use layout::Viewer;

use super::{Daemon, auth::Principal, limits::Refused};

/// The console's state in the daemon: its sessions.
#[derive(Debug)]
pub struct Console {
    /// Signed-in browsers.
    pub sessions: session::Sessions,
    /// `[console]`.
    pub config: crate::config::console::ConsoleConfig,
}

impl Console {
    /// The console of `config` (no sessions yet).
    pub fn new(config: crate::config::console::ConsoleConfig) -> Self {
        Self {
            sessions: session::Sessions::new(config.clone()),
            config,
        }
    }
}

/// The largest form body the console reads (the CSRF check reads it
/// before the handler does).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// `/ui/…`, to be merged into the API router (which adds the state, the
/// request metrics, the body limit and the request timeout). Empty when
/// `console.enabled` is false.
pub fn router(daemon: &Arc<Daemon>) -> Router<Arc<Daemon>> {
    if !daemon.console.config.enabled {
        return Router::new();
    }
    let pages = Router::new()
        .route("/ui/", get(home))
        .route("/ui/logout", post(logout))
        .merge(market::routes())
        .merge(runs::routes())
        .merge(costs::routes())
        .merge(analytics::routes())
        .merge(author::routes())
        .merge(ops::routes())
        .route_layer(middleware::from_fn_with_state(daemon.clone(), signed_in));
    let open = Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/static/{name}", get(assets::serve))
        .route("/ui/{*rest}", get(not_found).post(not_found));
    pages.merge(open).layer(middleware::from_fn(headers))
}

/// The session cookie's name: `__Host-` bound to this origin under TLS.
fn session_cookie(daemon: &Daemon) -> &'static str {
    if daemon.config.tls.is_some() {
        "__Host-soma_session"
    } else {
        "soma_session"
    }
}

const LOGIN_COOKIE: &str = "soma_login";

/// The value of cookie `name` in the request, if sent.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn set_cookie(
    daemon: &Daemon,
    name: &str,
    value: &str,
    path: &str,
    max_age: Option<u64>,
) -> HeaderValue {
    let secure = if daemon.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let age = max_age.map_or(String::new(), |s| format!("; Max-Age={s}"));
    let text = format!("{name}={value}; Path={path}; HttpOnly; SameSite=Strict{secure}{age}");
    // Values are base64url or empty: always a valid header.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("soma_invalid=1"))
}

/// The security headers of every `/ui` answer.
async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // `same-origin`, not `no-referrer`: under `no-referrer` a browser
    // sends `Origin: null` with every form POST (Fetch, "append a request
    // Origin header"), which the origin check below refuses — no console
    // form could be sent. Other sites still get neither referrer nor origin.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Session cookie → [`Viewer`]; per-tenant admission as for the API; the
/// CSRF and origin check of every state-changing request.
async fn signed_in(State(daemon): State<Arc<Daemon>>, request: Request, next: Next) -> Response {
    let viewer = cookie(request.headers(), session_cookie(&daemon)).and_then(|c| {
        let session = daemon.console.sessions.get(c)?;
        match live_principal(&daemon, &session.token) {
            Some(principal) => Some(Viewer { principal, session }),
            None => {
                daemon.console.sessions.remove(c);
                None
            }
        }
    });
    let Some(viewer) = viewer else {
        daemon.metrics.rejected("unauthorized");
        if request.method() == Method::GET {
            let next = request
                .uri()
                .path_and_query()
                .map_or("/ui/", |p| p.as_str())
                .to_owned();
            let target = format!("/ui/login?next={}", urlencoding(&next));
            return Redirect::to(&target).into_response();
        }
        return layout::error_page(
            None,
            StatusCode::UNAUTHORIZED,
            "You are signed out (or your token was revoked or expired): sign in again.",
        );
    };
    let permit = match daemon.admission.admit(viewer.tenant()) {
        Ok(p) => p,
        Err(refused) => {
            let (kind, message) = match refused {
                Refused::Rate { .. } => ("rate-limited", "Your tenant is over its request rate."),
                Refused::Concurrency { .. } => (
                    "too-many-in-flight",
                    "Your tenant has too many requests in flight.",
                ),
            };
            daemon.metrics.rejected(kind);
            let mut r = layout::error_page(Some(&viewer), StatusCode::TOO_MANY_REQUESTS, message);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
    };
    let mut request = request;
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        request = match checked_form(&viewer, request).await {
            Ok(r) => r,
            Err(refusal) => return refusal.into_response(),
        };
    }
    request.extensions_mut().insert(viewer);
    let mut response = next.run(request).await;
    if response.status().is_client_error() || response.status().is_server_error() {
        response
            .extensions_mut()
            .insert(super::reply::RequestTenant(permit.tenant().to_owned()));
    }
    response
}

/// A token's live principal by id: gone, revoked or expired → none.
fn live_principal(daemon: &Daemon, token: &str) -> Option<Principal> {
    let record = daemon.tokens.get(token)?;
    (!record.revoked && !record.expired(crate::dag::history::now_ms())).then_some(Principal {
        token: record.id,
        tenant: record.tenant,
        scopes: record.scopes,
    })
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

/// Read the form (at most [`MAX_FORM_BYTES`]), check its origin and CSRF
/// field, and hand the same bytes on.
async fn checked_form(viewer: &Viewer, request: Request) -> Result<Request, PageError> {
    let refuse = |message: &str| layout::error_page(Some(viewer), StatusCode::FORBIDDEN, message);
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, rest)| Some(rest) == host);
        if !same {
            return Err(refuse(
                "This form was sent from another site (its Origin is not this console's): refused.",
            )
            .into());
        }
    }
    let (parts, body) = request.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return Err(layout::error_page(
                Some(viewer),
                StatusCode::PAYLOAD_TOO_LARGE,
                "This form is larger than the console accepts (64 KiB).",
            )
            .into());
        }
    };
    let field: CsrfField = serde_urlencoded::from_bytes(&bytes).unwrap_or(CsrfField {
        csrf: String::new(),
    });
    if field.csrf.is_empty() || !viewer.session.csrf_matches(&field.csrf) {
        return Err(refuse(
            "This form's CSRF token is missing or stale: reload the page and send it again.",
        )
        .into());
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// Percent-encode a path for a query value.
fn urlencoding(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|t| t.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}

/// Where a sign-in may send the browser: a console path, never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/ui/",
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// `GET /ui/login`.
async fn login_form(State(daemon): State<Arc<Daemon>>, Query(q): Query<LoginQuery>) -> Response {
    login_page(&daemon, q.next.as_deref(), StatusCode::OK, None)
}

fn login_page(
    daemon: &Daemon,
    next: Option<&str>,
    status: StatusCode,
    error: Option<&str>,
) -> Response {
    let nonce = match session::nonce() {
        Ok(n) => n,
        Err(e) => {
            return layout::error_page(None, StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
        }
    };
    let body = html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Sign in · Soma" }
                link rel="stylesheet" href=(assets::url("console.css"));
            }
            body.login {
                main #main tabindex="-1" {
                    h1 { "Sign in to Soma" }
                    @if let Some(error) = error {
                        p.error-message role="alert" { (error) }
                    }
                    form method="post" action="/ui/login" {
                        input type="hidden" name="csrf" value=(nonce);
                        input type="hidden" name="next" value=(safe_next(next));
                        label for="token" { "API token" }
                        input #token type="password" name="token" required autocomplete="off"
                            placeholder="soma_…" autofocus;
                        p.hint { "Create one with " code { "soma token create --tenant T --scopes run,read" } "." }
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    };
    let mut response = (status, Html(body.into_string())).into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(daemon, LOGIN_COOKIE, &nonce, "/ui/login", Some(600)),
    );
    response
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
    next: Option<String>,
}

/// `POST /ui/login`: a valid token gets a session cookie.
async fn login(State(daemon): State<Arc<Daemon>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&body) else {
        return login_page(
            &daemon,
            None,
            StatusCode::BAD_REQUEST,
            Some("The form could not be read."),
        );
    };
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    let fresh: bool = {
        use subtle::ConstantTimeEq as _;
        !form.csrf.is_empty() && form.csrf.as_bytes().ct_eq(expected.as_bytes()).into()
    };
    if !fresh {
        return login_page(
            &daemon,
            form.next.as_deref(),
            StatusCode::FORBIDDEN,
            Some("This sign-in form is stale or came from another site: try again."),
        );
    }
    let Some(principal) = daemon.tokens.check(form.token.trim()) else {
        daemon.metrics.rejected("unauthorized");
        return login_page(
            &daemon,
            form.next.as_deref(),
            StatusCode::UNAUTHORIZED,
            Some("That token is unknown, revoked or expired."),
        );
    };
    let (value, _) = match daemon
        .console
        .sessions
        .create(&principal.token, &principal.tenant)
    {
        Ok(s) => s,
        Err(e) => {
            return login_page(
                &daemon,
                form.next.as_deref(),
                StatusCode::SERVICE_UNAVAILABLE,
                Some(&e.to_string()),
            );
        }
    };
    let mut response = Redirect::to(safe_next(form.next.as_deref())).into_response();
    let max_age = daemon.console.config.session_max_secs;
    let h = response.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(&daemon, session_cookie(&daemon), &value, "/", Some(max_age)),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(&daemon, LOGIN_COOKIE, "", "/ui/login", Some(0)),
    );
    response
}

/// `POST /ui/logout`.
async fn logout(State(daemon): State<Arc<Daemon>>, headers: HeaderMap) -> Response {
    if let Some(c) = cookie(&headers, session_cookie(&daemon)) {
        daemon.console.sessions.remove(c);
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&daemon, session_cookie(&daemon), "", "/", Some(0)),
    );
    response
}

/// `GET /ui/`: the runs list is the home page.
async fn home() -> Redirect {
    Redirect::to("/ui/runs")
}

/// Any other `/ui/` path.
async fn not_found(State(daemon): State<Arc<Daemon>>, headers: HeaderMap) -> Response {
    let viewer = cookie(&headers, session_cookie(&daemon)).and_then(|c| {
        let session = daemon.console.sessions.get(c)?;
        let principal = live_principal(&daemon, &session.token)?;
        Some(Viewer { principal, session })
    });
    layout::error_page(
        viewer.as_ref(),
        StatusCode::NOT_FOUND,
        "There is no such page.",
    )
}

/// The 404 page for a thing the viewer may not see or that does not exist
/// (the same page either way).
pub fn missing(viewer: &Viewer, what: &str) -> Response {
    layout::error_page(
        Some(viewer),
        StatusCode::NOT_FOUND,
        &format!("No such {what}."),
    )
}

/// A 500 page naming what failed (and its sources).
pub fn failed(viewer: &Viewer, e: &(dyn std::error::Error + 'static)) -> Response {
    layout::error_page(
        Some(viewer),
        StatusCode::INTERNAL_SERVER_ERROR,
        &super::error_chain(e),
    )
}

/// A page that cannot be shown as asked: the error page (404, 403, 400,
/// 500 …) to answer instead, boxed so that a page's `Result` stays one
/// pointer wide. Made from the [`Response`] of [`missing`], [`failed`] or
/// [`layout::error_page`] (`?` converts), answered as it is.
#[derive(Debug)]
pub struct PageError(Box<Response>);

impl From<Response> for PageError {
    fn from(page: Response) -> Self {
        Self(Box::new(page))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// Run `f` (storage reads: the journal, the ledger, the market store) on
/// the blocking pool, so pages never stall the async workers.
pub async fn blocking<T: Send + 'static>(
    viewer: &Viewer,
    f: impl FnOnce() -> Result<T, PageError> + Send + 'static,
) -> Result<T, PageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(failed(viewer, &e).into()),
    }
}
