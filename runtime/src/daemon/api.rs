//! The HTTP API: routes, authentication and admission, handlers, and one
//! JSON error shape (`{"error": {"code", "message", "field"?}}`).

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Extension, Json, Router,
    body::Bytes,
    extract::{MatchedPath, Path, Query, Request, State, rejection::BytesRejection},
    http::{HeaderMap, Method, StatusCode, header},
    middleware::{self, Next},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
    routing::get,
};
use futures_util::stream::{self, Stream, StreamExt as _};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

pub(super) use super::reply::{ApiError, Routes, full, parse, require};
use super::{
    Daemon,
    auth::{AuthError, Principal, TokenInfo, TokenScope},
    contract::{
        BudgetRequest, BudgetRow, BudgetSet, CallFailure, CallLimits, CallReport, CalledCapsule,
        CancelAnswer, CancelState, CatalogCapsule, CreatedToken, DagRunAccepted, DagRunLive,
        ErrorBody, LedgerQuery, LogRecord, PullRequest, PulledCapsule, RemovedCapsule, RunReport,
        RunRequest, RunView, TokenRequest, TokensQuery,
    },
    limits::Refused,
    runs::CallRun,
};
use crate::{
    CallOptions, budget,
    dag::{
        history::Event,
        journal::{Journal, JournalError},
        report::RunKind,
        scheduler::{self, DagError, Loaded},
        spec,
        state::RunState,
        status::RunPhase,
    },
    ledger::Filter,
    resolve::CapsuleRef,
};

/// Routes that need no token.
fn open_routes() -> Routes {
    Routes::new()
        .add(Method::GET, "/healthz", healthz)
        .add(Method::GET, "/readyz", readyz)
        .add(Method::GET, "/v1/openapi.json", openapi)
}

/// Routes behind [`authenticate`].
fn api_routes() -> Routes {
    Routes::new()
        .add(Method::POST, "/v1/capsules/pull", pull_capsule)
        .add(Method::GET, "/v1/capsules", list_capsules)
        .add(Method::DELETE, "/v1/capsules/{name}", remove_capsule)
        .add(Method::POST, "/v1/runs", create_run)
        .add(Method::GET, "/v1/runs/{id}", get_run)
        .add(Method::GET, "/v1/runs/{id}/events", run_events)
        .add(Method::POST, "/v1/runs/{id}/cancel", cancel_run)
        .add(Method::GET, "/v1/ledger", ledger)
        .add(Method::GET, "/v1/budgets", get_budgets)
        .add(Method::PUT, "/v1/budgets", put_budget)
        .add(Method::POST, "/v1/tokens", create_token)
        .add(Method::GET, "/v1/tokens", list_tokens)
        .add(Method::DELETE, "/v1/tokens/{id}", revoke_token)
        .add(Method::GET, "/metrics", metrics)
        .merge_market()
        .merge_secrets()
        .merge_approvals()
        .merge_analytics()
}

impl Routes {
    /// The marketplace's routes ([`super::market`]).
    fn merge_market(self) -> Self {
        super::market::routes(self)
    }

    /// The tenant-secrets routes ([`super::secrets`]).
    fn merge_secrets(self) -> Self {
        super::secrets::routes(self)
    }

    /// The analytics query route ([`super::analytics`]).
    fn merge_analytics(self) -> Self {
        super::analytics::routes(self)
    }

    /// The node-approval route ([`super::approvals`]).
    fn merge_approvals(self) -> Self {
        super::approvals::routes(self)
    }
}

/// Every (method, path) [`router`] serves, as it registered them.
pub fn served() -> Vec<(Method, &'static str)> {
    let mut all = open_routes().served;
    all.extend(api_routes().served);
    all
}

/// The router with every layer, serving the API and `pages` (the web
/// console's routes, which the daemon passes in: the console names the
/// API, so the API does not name the console).
pub fn router(daemon: Arc<Daemon>, pages: Router<Arc<Daemon>>) -> Router {
    let open = open_routes().router;
    let api = api_routes()
        .router
        .route_layer(middleware::from_fn_with_state(daemon.clone(), authenticate));
    let timeout = Duration::from_millis(daemon.config.request_timeout_ms.max(1));
    open.merge(api)
        .merge(pages)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not-found", "no such route") })
        .layer(middleware::from_fn_with_state(daemon.clone(), observe))
        .layer(axum::extract::DefaultBodyLimit::max(
            daemon.config.max_body_bytes,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .with_state(daemon)
}

/// `GET /metrics` alone, without a token, for `daemon.metrics_listen`.
pub fn metrics_router(daemon: Arc<Daemon>) -> Router {
    let timeout = Duration::from_millis(daemon.config.request_timeout_ms.max(1));
    Router::new()
        .route("/metrics", get(render_metrics))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not-found", "only /metrics here")
        })
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .with_state(daemon)
}

/// Bearer token → [`Principal`]; then per-tenant admission.
async fn authenticate(
    State(daemon): State<Arc<Daemon>>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        daemon.metrics.rejected("unauthorized");
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token: send `Authorization: Bearer <token>` (create one with `soma token create`)",
        )
        .into_response();
    };
    let Some(principal) = daemon.tokens.check(token) else {
        daemon.metrics.rejected("unauthorized");
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is unknown or revoked",
        )
        .into_response();
    };
    let permit = match daemon.admission.admit(&principal.tenant) {
        Ok(p) => p,
        Err(Refused::Rate { retry_after_s }) => {
            daemon.metrics.rejected("rate-limited");
            let refusal = ApiError {
                retry_after: Some(retry_after_s),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    format!("tenant {} is over its request rate", principal.tenant),
                )
            }
            .into_response();
            return with_tenant(refusal, &principal.tenant);
        }
        Err(Refused::Concurrency { limit }) => {
            daemon.metrics.rejected("too-many-in-flight");
            let refusal = ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too-many-in-flight",
                    format!(
                        "tenant {} already has {limit} requests in flight",
                        principal.tenant
                    ),
                )
            }
            .into_response();
            return with_tenant(refusal, &principal.tenant);
        }
    };
    request.extensions_mut().insert(principal);
    let response = next.run(request).await;
    // The permit names the tenant: copied only when the answer failed.
    if response.status().is_client_error() || response.status().is_server_error() {
        with_tenant(response, permit.tenant())
    } else {
        response
    }
}

/// `response` tagged with the tenant it answered (for the recent errors).
fn with_tenant(mut response: Response, tenant: &str) -> Response {
    response
        .extensions_mut()
        .insert(super::reply::RequestTenant(tenant.to_owned()));
    response
}

/// Count and time every request by its route template; keep the failed
/// ones (4xx, 5xx) in the recent errors.
async fn observe(State(daemon): State<Arc<Daemon>>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = request.method().as_str().to_ascii_lowercase();
    let response = next.run(request).await;
    let status = response.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        daemon.metrics.rejected("body-too-large");
    }
    daemon.metrics.http(
        &route,
        &method,
        status.as_u16(),
        start.elapsed().as_secs_f64(),
    );
    if status.is_client_error() || status.is_server_error() {
        record_failure(&daemon, &method, &route, &response);
    }
    response
}

/// Keep a failed request in [`super::metrics::Metrics::recent_errors`]:
/// its route template, its tenant if authenticated, its error code (or
/// the status's reason). Only on failures.
fn record_failure(daemon: &Daemon, method: &str, route: &str, response: &Response) {
    let status = response.status();
    let class = response
        .extensions()
        .get::<super::reply::ErrorCode>()
        .map_or_else(|| status.canonical_reason().unwrap_or("error"), |c| c.0);
    let tenant = response
        .extensions()
        .get::<super::reply::RequestTenant>()
        .map(|t| t.0.as_str());
    daemon.metrics.recent_errors().record(
        crate::dag::history::now_ms(),
        super::metrics::ErrorSource::Request {
            status: status.as_u16(),
        },
        &format!("{} {route}", method.to_ascii_uppercase()),
        tenant,
        class,
    );
}

/// `GET /healthz`: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "service", operation_id = "healthz",
    responses((status = 200, description = "Alive", content_type = "text/plain", body = String)))]
pub(super) async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "service", operation_id = "readyz",
    responses(
        (status = 200, description = "Ready for requests", content_type = "text/plain", body = String),
        (status = 503, description = "Shutting down", body = ErrorBody),
    ))]
pub(super) async fn readyz(State(daemon): State<Arc<Daemon>>) -> Response {
    if daemon.runs.is_stopping() {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "shutting down").into_response()
    } else {
        "ready".into_response()
    }
}

/// `GET /metrics` on the API listener: an `operator` or `metrics` token.
#[utoipa::path(get, path = "/metrics", tag = "service", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text exposition (0.0.4)", content_type = "text/plain; version=0.0.4", body = String)),
    extensions(("x-soma-scope" = json!("metrics"))))]
pub(super) async fn metrics(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
) -> Result<Response, ApiError> {
    require(&p, TokenScope::Metrics)?;
    Ok(render_metrics(State(daemon)).await)
}

async fn render_metrics(State(daemon): State<Arc<Daemon>>) -> Response {
    let m = &daemon.metrics;
    m.set_active_runs(i64::try_from(daemon.runs.active()).unwrap_or(i64::MAX));
    m.set_queue_depth(i64::try_from(daemon.runs.queued()).unwrap_or(i64::MAX));
    let (hits, misses) = daemon.engine.cache_stats();
    m.set_engine_cache(hits, misses);
    m.set_http_outbound(&daemon.engine.http_totals());
    let (aot_hits, aot_misses) = daemon.engine.aot_stats();
    let aot_bytes = match daemon.engine.aot_dir().map(std::path::Path::to_path_buf) {
        Some(dir) => tokio::task::spawn_blocking(move || super::metrics::dir_bytes(&dir))
            .await
            .unwrap_or(0),
        None => 0,
    };
    m.set_aot_cache(aot_hits, aot_misses, aot_bytes);
    m.set_console_sessions(daemon.console.sessions.len());
    let db = daemon.engine.data().database().clone();
    let outbox = tokio::task::spawn_blocking(move || {
        db.get()
            .ok()
            .and_then(|db| crate::analytics::outbox::status(&db).ok())
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default();
    m.set_analytics_outbox(outbox.pending, outbox.dropped);
    m.set_analytics_sink_lag(&outbox.sinks);
    for (name, stats) in daemon.shipper.sinks() {
        m.set_analytics_sink_totals(
            name,
            stats.delivered.load(Ordering::Relaxed),
            stats.failures.load(Ordering::Relaxed),
        );
    }
    (
        [(header::CONTENT_TYPE, super::metrics::Metrics::CONTENT_TYPE)],
        m.render(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "service", operation_id = "openapi",
    responses((status = 200, description = "This document", body = Object)))]
pub(super) async fn openapi(State(daemon): State<Arc<Daemon>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], daemon.openapi).into_response()
}

#[utoipa::path(post, path = "/v1/capsules/pull", tag = "capsules", operation_id = "pullCapsule",
    request_body = PullRequest,
    responses(
        (status = 201, description = "Pulled through the trust policy and served under `name`", body = PulledCapsule),
        (status = 400, description = "The body is not a pull request, or `reference` is not a registry reference (`field` names it)", body = ErrorBody),
        (status = 502, description = "The registry or the trust policy refused it", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("operator"))))]
pub(super) async fn pull_capsule(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !p.is_operator() {
        return Err(ApiError::forbidden(
            "pulling into the catalog (shared by every tenant) needs an `operator` token",
        ));
    }
    let req: PullRequest = parse(body)?;
    if !crate::names::is_plain_id(&req.name) {
        return Err(ApiError::bad(
            "`name`: 1–64 letters, digits, '-' or '_'",
            Some("name"),
        ));
    }
    // A malformed reference is the request's fault (400, naming the field
    // and the accepted forms), not the registry's (502).
    if let Err(e) = crate::oci::Reference::parse(&req.reference) {
        return Err(ApiError::bad(
            format!("`reference`: {e}"),
            Some("reference"),
        ));
    }
    let reference = req.reference.clone();
    let name = req.name.clone();
    let tenant = p.tenant.clone();
    let task = daemon.clone();
    let (digest, origin, replaced) = tokio::task::spawn_blocking(move || {
        let pulled = super::pull(&task.engine, &reference).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "pull-failed",
                super::error_chain(&e),
            )
        })?;
        let origin = pulled.pinned.to_string();
        let digest = pulled.capsule.digest().to_string();
        let pull = super::catalog::Pull {
            name,
            origin: origin.clone(),
            digest: digest.clone(),
            pulled_ms: soma_host_api::meter::now_ms(),
            pulled_by: tenant,
        };
        let item = super::CatalogItem {
            capsule: pulled.capsule,
            origin: origin.clone(),
        };
        // Recorded, then served (runs that pinned a capsule this replaces
        // keep it, by digest); every other daemon of a fleet serves it
        // within its catalog refresh.
        let replaced = super::catalog::record(&task, &pull, item).map_err(|e| catalog_error(&e))?;
        Ok::<_, ApiError>((digest, origin, replaced))
    })
    .await
    .map_err(|e| ApiError::failed(&e))??;
    Ok((
        StatusCode::CREATED,
        Json(PulledCapsule {
            name: req.name,
            digest,
            origin,
            replaced,
        }),
    )
        .into_response())
}

#[utoipa::path(get, path = "/v1/capsules", tag = "capsules", operation_id = "listCapsules",
    responses((status = 200, description = "The catalog", body = Vec<CatalogCapsule>)),
    extensions(("x-soma-scope" = json!("read"))))]
pub(super) async fn list_capsules(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
) -> Result<Json<Vec<CatalogCapsule>>, ApiError> {
    require(&p, TokenScope::Read)?;
    let catalog = daemon.catalog.read().unwrap_or_else(|p| p.into_inner());
    let list = catalog
        .iter()
        .map(|(name, item)| {
            let m = item.capsule.manifest();
            CatalogCapsule {
                name: name.clone(),
                digest: item.capsule.digest().to_string(),
                kind: m.capsule_kind(),
                capsule: m.name.clone(),
                version: m.version.clone(),
                description: m.description.clone(),
                origin: item.origin.clone(),
            }
        })
        .collect();
    Ok(Json(list))
}

/// A catalog store failure: `503 store-unavailable` (with `Retry-After`)
/// when trying again may work, else 500.
fn catalog_error(e: &super::catalog::CatalogError) -> ApiError {
    if !e.is_retryable() {
        return ApiError::failed(e);
    }
    super::reply::store_unavailable(&super::error_chain(e))
}

/// `DELETE /v1/capsules/{name}`: forget a pull. The name goes back to its
/// `[[daemon.capsules]]` entry, or is no longer served (runs that pinned
/// the pulled capsule keep it). Every daemon of a fleet follows within its
/// catalog refresh.
#[utoipa::path(delete, path = "/v1/capsules/{name}", tag = "capsules", operation_id = "removeCapsule",
    params(("name" = String, Path, description = "The catalog name of a pulled capsule")),
    responses(
        (status = 200, description = "The pull is forgotten", body = RemovedCapsule),
        (status = 404, description = "No pull is recorded under this name", body = ErrorBody),
        (status = 409, description = "The name is a `[[daemon.capsules]]` entry (only the config removes it)", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("operator"))))]
pub(super) async fn remove_capsule(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<RemovedCapsule>, ApiError> {
    if !p.is_operator() {
        return Err(ApiError::forbidden(
            "removing a capsule from the catalog (shared by every tenant) needs an `operator` token",
        ));
    }
    let task = daemon.clone();
    let key = name.clone();
    let removed = tokio::task::spawn_blocking(move || super::catalog::remove(&task, &key))
        .await
        .map_err(|e| ApiError::failed(&e))?
        .map_err(|e| catalog_error(&e))?;
    match removed {
        super::catalog::Removed::NotPulled { configured: true } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "configured-capsule",
            format!(
                "capsule `{name}` comes from a [[daemon.capsules]] entry, not a pull: remove it from the daemon's config"
            ),
        )),
        super::catalog::Removed::NotPulled { configured: false } => Err(ApiError::not_found(
            &format!("pulled capsule `{name}` (GET /v1/capsules lists the catalog)"),
        )),
        super::catalog::Removed::Forgotten { pull, now } => Ok(Json(RemovedCapsule {
            name,
            digest: pull.digest,
            origin: pull.origin,
            now,
        })),
    }
}

#[utoipa::path(post, path = "/v1/runs", tag = "runs", operation_id = "createRun",
    request_body = RunRequest,
    responses(
        (status = 200, description = "A capsule call, done (it may have failed: see `failure`)", body = CallReport),
        (status = 202, description = "A DAG run, queued", body = DagRunAccepted),
        (status = 404, description = "No such capsule in the catalog", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("run"))))]
pub(super) async fn create_run(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require(&p, TokenScope::Run)?;
    if daemon.shipper.paused() {
        daemon.metrics.rejected("analytics-outbox-full");
        return Err(ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "analytics-outbox-full",
                "the analytics outbox is full and `analytics.when_full = \"pause-admission\"`: \
                 new runs wait until the shipper drains it (check the daemon log for shipper errors)",
            )
        });
    }
    let req: RunRequest = parse(body)?;
    match (req.capsule, req.dag) {
        (Some(name), None) => call_run(&daemon, &p, &name, req.input, &req.limits).await,
        (None, Some(spec)) => dag_run(&daemon, &p, spec, req.input).await,
        _ => Err(ApiError::bad(
            "give exactly one of `capsule` (a call) or `dag` (a DAG spec)",
            Some("capsule"),
        )),
    }
}

async fn call_run(
    daemon: &Arc<Daemon>,
    p: &Principal,
    name: &str,
    input: Option<Value>,
    limits: &CallLimits,
) -> Result<Response, ApiError> {
    let item = if name.starts_with(super::market::MARKET_PREFIX) {
        super::market::resolve_call(daemon, &p.tenant, name).await?
    } else {
        daemon
            .resolve(&CapsuleRef::catalog(name))
            .map_err(|_| ApiError {
                field: Some("capsule".into()),
                ..ApiError::not_found(&format!("capsule `{name}` (GET /v1/capsules lists them)"))
            })?
    };
    let input = match input {
        None => "{}".to_owned(),
        Some(Value::String(s)) => s,
        Some(v) => v.to_string(),
    };
    let created_ms = crate::dag::history::now_ms();
    let engine = daemon.engine.clone();
    let mut options = CallOptions::for_capsule(&engine, &item.capsule);
    let run = crate::call::new_run_id();
    options.set_run(&run);
    options.tenant = p.tenant.as_str().into();
    options.defer_charge = true;
    let tighten = |v: &mut u64, x: Option<u64>| {
        if let Some(x) = x {
            *v = (*v).min(x.max(1));
        }
    };
    tighten(&mut options.limits.fuel, limits.fuel);
    tighten(&mut options.limits.timeout_ms, limits.timeout_ms);
    tighten(&mut options.limits.memory_mb, limits.memory_mb);
    daemon.metrics.run_started(RunKind::Call.name());
    let capsule = item.capsule.clone();
    // If this handler is dropped (the client disconnected, or its request
    // timed out) the call stops at its next epoch tick. Either way the
    // charge is committed by the pool thread, not here.
    let cancel = CancelOnDrop::default();
    options.cancel = Some(cancel.0.clone());
    let committed = daemon
        .calls
        .run(&p.tenant, move || {
            call_and_commit(&engine, &capsule, &input, &options)
        })
        .await
        .map_err(|e| match e {
            super::pool::Refused::Full { .. } => {
                daemon.metrics.rejected("too-many-calls");
                full("too-many-calls", e.to_string())
            }
            super::pool::Refused::Stopped => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", e.to_string())
            }
        })?;
    let mut outcome = committed.outcome;
    // The charge is durable before the answer goes out.
    if let Some(rx) = committed.charged {
        let recorded = rx
            .await
            .unwrap_or(Err(crate::ledger::LedgerError::WriterStopped));
        if let Err(e) = recorded {
            outcome.result = Err(crate::Failure::Host {
                message: format!(
                    "could not record the call in the ledger: {}",
                    super::error_chain(&e)
                ),
            });
        }
    }
    drop(cancel);
    let class = crate::FailureClass::outcome_label(
        outcome.result.as_ref().err().map(crate::Failure::class),
    );
    daemon.metrics.call(
        name,
        class,
        Duration::from_micros(outcome.usage.wall_time_us).as_secs_f64(),
    );
    daemon.metrics.run_finished(RunKind::Call.name(), class);
    if outcome.result.is_err() {
        daemon.metrics.recent_errors().record(
            crate::dag::history::now_ms(),
            super::metrics::ErrorSource::Call,
            name,
            Some(&p.tenant),
            class,
        );
    }
    let failure_class = outcome.result.as_ref().err().map(crate::Failure::class);
    let body =
        CallReport {
            run: run.clone(),
            kind: RunKind::Call,
            capsule: CalledCapsule {
                name: name.to_owned(),
                digest: item.capsule.digest().to_string(),
            },
            ok: outcome.result.is_ok(),
            output: outcome.result.as_ref().ok().map(|o| {
                serde_json::from_str::<Value>(o).unwrap_or_else(|_| Value::String(o.clone()))
            }),
            failure: match &outcome.result {
                Ok(_) => None,
                Err(f) => Some(CallFailure {
                    class: f.class(),
                    message: f.to_string(),
                    detail: serde_json::to_value(f).map_err(|e| ApiError::failed(&e))?,
                }),
            },
            usage: outcome.usage,
            logs: outcome
                .logs
                .into_iter()
                .map(|l| LogRecord {
                    fields: l.fields,
                    level: l.level.to_owned(),
                    message: l.message,
                })
                .collect(),
        };
    // Serialized once: the answer and the retained copy share the bytes.
    let body = Bytes::from(serde_json::to_vec(&body).map_err(|e| ApiError::failed(&e))?);
    daemon.runs.record_call(
        run,
        CallRun {
            tenant: p.tenant.clone(),
            body: body.clone(),
            created_ms,
            capsule: name.to_owned(),
            failure: failure_class,
        },
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn spec_error(errors: &spec::SpecErrors, what: &str, field: &str) -> ApiError {
    ApiError {
        details: Some(json!(
            errors.0.iter().map(ToString::to_string).collect::<Vec<_>>()
        )),
        ..ApiError::bad(format!("{what}:\n{errors}"), Some(field))
    }
}

/// Sets its flag when dropped: a call handler's way of telling the call
/// that nobody is waiting for it any more.
#[derive(Default)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A call's outcome and, if it was charged, where the commit reports.
struct Committed {
    outcome: crate::Outcome,
    charged: Option<
        tokio::sync::oneshot::Receiver<Result<crate::ledger::Appended, crate::ledger::LedgerError>>,
    >,
}

/// On a call-pool thread: run the call (unless its caller already left)
/// and queue its charge on the group-commit writer before returning, so
/// the charge is written and counted against the budgets even if the
/// handler awaiting it is dropped. Cost: the call, plus one channel send.
fn call_and_commit(
    engine: &crate::Engine,
    capsule: &crate::Capsule,
    input: &str,
    options: &CallOptions,
) -> Committed {
    if options
        .cancel
        .as_ref()
        .is_some_and(|c| c.load(Ordering::Relaxed))
    {
        // Queued, and its caller left before it started: nothing ran,
        // nothing is owed.
        return Committed {
            outcome: crate::Outcome::cancelled_before_start(),
            charged: None,
        };
    }
    let mut outcome = engine.call(capsule, input, options);
    let charged = outcome.charge.take().map(|charge| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        engine.metering().commit_call(charge, move |result| {
            let _ = tx.send(result);
        });
        rx
    });
    Committed { outcome, charged }
}

async fn dag_run(
    daemon: &Arc<Daemon>,
    p: &Principal,
    spec_value: Value,
    input: Option<Value>,
) -> Result<Response, ApiError> {
    let run = start_dag_run(daemon, p, spec_value, input).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(DagRunAccepted {
            events: format!("/v1/runs/{run}/events"),
            run,
            kind: RunKind::Dag,
            status: RunPhase::Queued,
        }),
    )
        .into_response())
}

/// Create a DAG run from a spec (YAML/JSON text, or a JSON object) and
/// queue it for a driver: what `POST /v1/runs` with `dag` does, for the
/// API and the console. The caller checks the `run` scope. Returns the
/// run id. Blocking work (parsing, the journal) runs on the blocking pool,
/// a few specs at a time.
pub(crate) async fn start_dag_run(
    daemon: &Arc<Daemon>,
    p: &Principal,
    spec_value: Value,
    input: Option<Value>,
) -> Result<String, ApiError> {
    let text = match spec_value {
        Value::String(s) => s,
        v => v.to_string(),
    };
    // Parsing, checking and creating block (and a spec may take its whole
    // byte budget): off the async workers, a few at a time.
    let _parsing =
        daemon.runs.parsing.acquire().await.map_err(|_| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "shutting down")
        })?;
    let d = daemon.clone();
    let tenant = p.tenant.clone();
    if let Some(temporal) = &daemon.temporal {
        // On Temporal: parse and pin here, the workflow drives the run.
        let (spec, loaded) = tokio::task::spawn_blocking(move || pinned_spec(&d, &text, &tenant))
            .await
            .map_err(|e| ApiError::failed(&e))??;
        let input = input.unwrap_or_else(|| json!({}));
        let run = temporal
            .start(daemon, &p.tenant, &spec, &loaded, &input)
            .await?;
        daemon.metrics.run_started(RunKind::Dag.name());
        return Ok(run);
    }
    let run = tokio::task::spawn_blocking(move || create_dag_run(&d, &text, input, &tenant))
        .await
        .map_err(|e| ApiError::failed(&e))??;
    daemon.runs.enqueue(&run, &p.tenant);
    daemon.metrics.run_started(RunKind::Dag.name());
    Ok(run)
}

/// Parse `text` within the daemon's budgets, hold it to the `[dag]`
/// ceilings, take one of the tenant's run slots and create the run.
/// Blocking: runs on the blocking pool.
fn create_dag_run(
    daemon: &Arc<Daemon>,
    text: &str,
    input: Option<Value>,
    tenant: &str,
) -> Result<String, ApiError> {
    let (spec, loaded) = pinned_spec(daemon, text, tenant)?;
    daemon
        .runs
        .reserve(tenant)
        .map_err(|e| full("too-many-runs", e.to_string()))?;
    let input = input.unwrap_or_else(|| json!({}));
    let created = scheduler::create(&daemon.engine, &spec, "api", &input, &loaded, tenant, None);
    created.map_err(|e| {
        daemon.runs.release(tenant);
        match e {
            DagError::Spec(errors) => spec_error(&errors, "invalid run", "input"),
            DagError::Kind { .. } | DagError::MissingCapsule(_) => {
                ApiError::bad(e.to_string(), Some("dag"))
            }
            other => ApiError::failed(&other),
        }
    })
}

/// Parse `text` within the daemon's budgets, hold it to the `[dag]`
/// ceilings and pin its capsules for `tenant`. Blocking.
fn pinned_spec(
    daemon: &Arc<Daemon>,
    text: &str,
    tenant: &str,
) -> Result<(spec::Spec, std::collections::BTreeMap<String, Loaded>), ApiError> {
    let ceilings = daemon.engine.config().dag;
    let mut spec = spec::parse_within(text, "dag", &ceilings.budget())
        .map_err(|e| spec_error(&e, "invalid DAG spec", "dag"))?;
    spec.within(&ceilings, "dag").map_err(|e| {
        spec_error(
            &e,
            "the DAG spec asks for more than this daemon allows",
            "dag",
        )
    })?;
    let mut loaded = std::collections::BTreeMap::new();
    for (alias, name) in &spec.capsules {
        // A catalog name, or a `market:` name through this tenant's pins.
        let (capsule, reference) = super::market::resolve_for_tenant(daemon, tenant, alias, name)?;
        loaded.insert(alias.clone(), Loaded { capsule, reference });
    }
    Ok((spec, loaded))
}

/// A DAG run's state from the journal (blocking: run off the async threads).
fn replay(daemon: &Daemon, run: &str) -> Result<(RunState, Vec<Event>), ApiError> {
    let journal = Journal::new(daemon.engine.data().database().clone());
    let history = journal.history(run).map_err(|e| match e {
        JournalError::NotFound(_) => ApiError::not_found(&format!("run `{run}`")),
        other => ApiError::failed(&other),
    })?;
    let state = RunState::replay(run, &history).map_err(|e| ApiError::failed(&e))?;
    Ok((state, history))
}

/// A run's summary row from the journal (`None`: not journaled). One row
/// read on the blocking pool; no history replay.
async fn journaled_summary(
    daemon: &Arc<Daemon>,
    run: &str,
) -> Result<Option<crate::dag::journal::RunSummary>, ApiError> {
    let d = daemon.clone();
    let run = run.to_owned();
    let summary = tokio::task::spawn_blocking(move || {
        Journal::new(d.engine.data().database().clone()).summary(&run)
    })
    .await
    .map_err(|e| ApiError::failed(&e))?;
    match summary {
        Ok(s) => Ok(Some(s)),
        Err(JournalError::NotFound(_)) => Ok(None),
        Err(e) => Err(ApiError::failed(&e)),
    }
}

fn visible(p: &Principal, tenant: &str) -> bool {
    p.sees_tenant(tenant)
}

#[utoipa::path(get, path = "/v1/runs/{id}", tag = "runs", operation_id = "getRun",
    params(("id" = String, Path, description = "The run id")),
    responses((status = 200, description = "A recent call, a DAG run from its journal, or a queued/running DAG run", body = RunView)),
    extensions(("x-soma-scope" = json!("read"))))]
pub(super) async fn get_run(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&p, TokenScope::Read)?;
    if let Some(temporal) = temporal_run(&daemon, &id) {
        return Ok(Json(temporal.report(&p, &id).await?).into_response());
    }
    let missing = || ApiError::not_found(&format!("run `{id}`"));
    if let Some(call) = daemon.runs.call(&id) {
        return if visible(&p, &call.tenant) {
            Ok(([(header::CONTENT_TYPE, "application/json")], call.body).into_response())
        } else {
            Err(missing())
        };
    }
    if let Some(live) = daemon.runs.live(&id) {
        if !visible(&p, &live.tenant) {
            return Err(missing());
        }
        let taken = live
            .summary
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        // The journal is the one source of truth for where a run is: its
        // summary row is written in the same transaction as the events, so
        // a client that has seen the run's last event (over SSE, read from
        // the journal or published after the commit) finds the run finished
        // here too, and gets the report from the journal below.
        let summary = journaled_summary(&daemon, &id).await?;
        let status = match &summary {
            Some(s) if !matches!(s.status, RunPhase::Queued | RunPhase::Running) => s.status,
            _ if !taken => RunPhase::Queued,
            Some(s) => s.status,
            None => RunPhase::Queued,
        };
        if matches!(status, RunPhase::Queued | RunPhase::Running) {
            let summary = summary.filter(|_| taken);
            return Ok(Json(DagRunLive {
                run: id,
                kind: RunKind::Dag,
                status,
                summary,
            })
            .into_response());
        }
    }
    let d = daemon.clone();
    let run = id.clone();
    let (state, _) = tokio::task::spawn_blocking(move || replay(&d, &run))
        .await
        .map_err(|e| ApiError::failed(&e))??;
    if !visible(&p, &state.tenant) {
        return Err(missing());
    }
    let report: RunReport = state.report();
    Ok(Json(report).into_response())
}

/// Events read from the journal per page of an event stream.
const PAGE_EVENTS: usize = 256;
/// Bytes read from the journal per page (at least one event).
const PAGE_BYTES: usize = 1 << 20;

/// One page of a run's events from `from` on (blocking: journal read).
async fn page(daemon: &Arc<Daemon>, run: &str, from: u64) -> Option<VecDeque<(u64, String)>> {
    let d = daemon.clone();
    let run = run.to_owned();
    tokio::task::spawn_blocking(move || {
        Journal::new(d.engine.data().database().clone()).page(&run, from, PAGE_EVENTS, PAGE_BYTES)
    })
    .await
    .ok()?
    .map(VecDeque::from)
    .map_err(|e| tracing::warn!("cannot read run events: {}", super::error_chain(&e)))
    .ok()
}

/// Where an event stream is.
struct Cursor {
    daemon: Arc<Daemon>,
    run: String,
    live: Option<Arc<super::runs::LiveRun>>,
    rx: Option<tokio::sync::broadcast::Receiver<(u64, Arc<str>)>>,
    /// The next sequence number to send.
    next: u64,
    /// Events read from the journal, not sent yet.
    buffered: VecDeque<(u64, String)>,
    /// The journal has nothing past `next` (until told otherwise).
    caught_up: bool,
    ended: bool,
    _slot: super::runs::StreamSlot,
}

impl Cursor {
    fn event(&mut self, seq: u64, json: &str) -> SseEvent {
        self.next = seq + 1;
        if json.contains(r#""event":"finished""#) {
            self.ended = true;
        }
        SseEvent::default()
            .id(seq.to_string())
            .event(event_kind(json))
            .data(json)
    }

    /// The next event to send, or `None` at the end of the stream.
    async fn advance(&mut self) -> Option<SseEvent> {
        loop {
            if self.ended {
                return None;
            }
            if let Some((seq, json)) = self.buffered.pop_front() {
                return Some(self.event(seq, &json));
            }
            if !self.caught_up {
                let page = page(&self.daemon, &self.run, self.next).await?;
                self.caught_up = page.is_empty();
                self.buffered = page;
                continue;
            }
            let rx = self.rx.as_mut()?;
            let tick = tokio::time::sleep(Duration::from_millis(500));
            let heard = tokio::select! {
                msg = rx.recv() => Heard::Message(msg),
                () = tick => Heard::Tick,
            };
            match heard {
                Heard::Message(Ok((seq, _))) if seq < self.next => {}
                Heard::Message(Ok((seq, json))) if seq == self.next => {
                    return Some(self.event(seq, &json));
                }
                // A gap (or missed events): read them from the journal.
                Heard::Message(Ok(_) | Err(RecvError::Lagged(_))) => self.caught_up = false,
                Heard::Message(Err(RecvError::Closed)) => {
                    self.rx = None;
                    self.caught_up = false;
                }
                Heard::Tick => {
                    if self.daemon.runs.is_stopping() {
                        return None;
                    }
                    let gone = self
                        .live
                        .as_ref()
                        .is_none_or(|l| l.done.load(Ordering::SeqCst));
                    if gone {
                        // Send whatever was committed last, then end.
                        self.rx = None;
                        self.caught_up = false;
                    }
                }
            }
        }
    }
}

/// What a live event stream heard while it waited.
enum Heard {
    Message(Result<(u64, Arc<str>), RecvError>),
    Tick,
}

/// `GET /v1/runs/{id}/events`: Server-Sent Events. The history so far,
/// read from the journal in pages of bounded size, then live events until
/// the run finishes. Each event's `id` is its sequence number;
/// `Last-Event-ID` resumes after it. Each open stream holds one of the
/// tenant's `daemon.max_streams_per_tenant` (429 past it).
#[utoipa::path(get, path = "/v1/runs/{id}/events", tag = "runs", operation_id = "runEvents",
    params(("id" = String, Path, description = "The run id")),
    params(("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event's sequence number")),
    responses((status = 200, description = "Server-Sent Events: each `data:` is one history event (JSON), `id:` its sequence number; the stream ends after `finished`", content_type = "text/event-stream", body = String)),
    extensions(("x-soma-scope" = json!("read"))))]
pub(super) async fn run_events(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    require(&p, TokenScope::Read)?;
    event_stream(&daemon, &p, id, &headers).await
}

/// A run's event stream for `p` (the API's and the console's): another
/// tenant's run is 404, and the stream holds one of `p`'s tenant's stream
/// slots while open (429 past the caps). `Last-Event-ID` in `headers`
/// resumes after that event. The caller checks the `read` scope.
pub(crate) async fn event_stream(
    daemon: &Arc<Daemon>,
    p: &Principal,
    id: String,
    headers: &HeaderMap,
) -> Result<super::temporal::EventStream, ApiError> {
    let after: Option<u64> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if let Some(temporal) = temporal_run(daemon, &id) {
        return temporal.clone().events(daemon, p, id, after).await;
    }
    let missing = || ApiError::not_found(&format!("run `{id}`"));
    let live = daemon.runs.live(&id);
    // Subscribe before reading the history so nothing falls in between.
    let rx = live.as_ref().map(|l| l.events.subscribe());
    let tenant = match &live {
        Some(l) => l.tenant.clone(),
        None => {
            let d = daemon.clone();
            let run = id.clone();
            let summary = tokio::task::spawn_blocking(move || {
                Journal::new(d.engine.data().database().clone()).summary(&run)
            })
            .await
            .map_err(|e| ApiError::failed(&e))?;
            match summary {
                Ok(s) => s.tenant,
                Err(JournalError::NotFound(_)) => return Err(missing()),
                Err(e) => return Err(ApiError::failed(&e)),
            }
        }
    };
    if !visible(p, &tenant) {
        return Err(missing());
    }
    let slot = super::runs::Runs::open_stream(daemon, &p.tenant).map_err(|e| {
        daemon.metrics.rejected("too-many-streams");
        full("too-many-streams", e.to_string())
    })?;
    let cursor = Cursor {
        daemon: daemon.clone(),
        run: id,
        live,
        rx,
        next: after.map_or(0, |a| a.saturating_add(1)),
        buffered: VecDeque::new(),
        caught_up: false,
        ended: false,
        _slot: slot,
    };
    let events = stream::unfold(cursor, |mut cursor| async move {
        let event = cursor.advance().await?;
        Some((Ok(event), cursor))
    });
    Ok(Sse::new(events.boxed()).keep_alive(KeepAlive::default()))
}

/// The daemon's Temporal runs, if it runs DAGs on Temporal and `id` is
/// one of their ids (`TENANT.RUN`).
fn temporal_run<'a>(
    daemon: &'a Daemon,
    id: &str,
) -> Option<&'a Arc<super::temporal::TemporalRuns>> {
    daemon
        .temporal
        .as_ref()
        .filter(|_| super::temporal::tenant_of(id).is_some())
}

/// The `event` tag of an event's JSON.
fn event_kind(json: &str) -> String {
    serde_json::from_str::<Value>(json)
        .ok()
        .and_then(|v| v["event"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "event".into())
}

#[utoipa::path(post, path = "/v1/runs/{id}/cancel", tag = "runs", operation_id = "cancelRun",
    params(("id" = String, Path, description = "The run id")),
    responses(
        (status = 200, description = "The run was idle and is now cancelled", body = CancelAnswer),
        (status = 202, description = "The run's driver was told to cancel it", body = CancelAnswer),
        (status = 409, description = "The run has already finished", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("run"))))]
pub(super) async fn cancel_run(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require(&p, TokenScope::Run)?;
    Ok(match cancel(&daemon, &p, id).await? {
        answer @ CancelAnswer {
            cancel: CancelState::Requested,
            ..
        } => (StatusCode::ACCEPTED, Json(answer)).into_response(),
        answer => Json(answer).into_response(),
    })
}

/// Cancel a DAG run for `p` (the API's and the console's): a driven run's
/// driver is told to stop (`requested`), an idle one is ended here
/// (`done`); a finished one is 409, another tenant's 404. The caller
/// checks the `run` scope.
pub(crate) async fn cancel(
    daemon: &Arc<Daemon>,
    p: &Principal,
    id: String,
) -> Result<CancelAnswer, ApiError> {
    if let Some(temporal) = temporal_run(daemon, &id) {
        return temporal.cancel(p, &id).await;
    }
    if let Some(live) = daemon.runs.live(&id) {
        if !visible(p, &live.tenant) {
            return Err(ApiError::not_found(&format!("run `{id}`")));
        }
        live.cancel.store(true, Ordering::SeqCst);
        return Ok(CancelAnswer {
            run: Some(id),
            cancel: CancelState::Requested,
        });
    }
    let d = daemon.clone();
    let run = id.clone();
    let (state, _) = tokio::task::spawn_blocking(move || replay(&d, &run))
        .await
        .map_err(|e| ApiError::failed(&e))??;
    if !visible(p, &state.tenant) {
        return Err(ApiError::not_found(&format!("run `{id}`")));
    }
    if let Some((status, ..)) = &state.finished {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("run `{id}` already {}", status.name()),
        ));
    }
    let engine = daemon.engine.clone();
    tokio::task::spawn_blocking(move || scheduler::cancel_idle(&engine, &id))
        .await
        .map_err(|e| ApiError::failed(&e))?
        .map_err(|e| ApiError::failed(&e))?;
    Ok(CancelAnswer {
        run: None,
        cancel: CancelState::Done,
    })
}

#[utoipa::path(get, path = "/v1/ledger", tag = "ledger", operation_id = "listLedger",
    params(LedgerQuery),
    responses(
        (status = 200, description = "Charges, oldest first", body = Vec<crate::ledger::Entry>),
        (status = 400, description = "A bad query", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("read"))))]
pub(super) async fn ledger(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    query: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<crate::ledger::Entry>>, ApiError> {
    require(&p, TokenScope::Read)?;
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text(), None))?;
    let tenant = match q.tenant {
        Some(t) if p.is_operator() => Some(t),
        Some(t) if t != p.tenant => {
            return Err(ApiError::forbidden(
                "only operator tokens may read another tenant's ledger",
            ));
        }
        _ if p.is_operator() => None,
        _ => Some(p.tenant.clone()),
    };
    let filter = Filter {
        tenant,
        run: q.run,
        limit: Some(q.limit.unwrap_or(100).min(10_000)),
        ..Filter::default()
    };
    let engine = daemon.engine.clone();
    let entries = tokio::task::spawn_blocking(move || engine.metering().reports().ls(&filter))
        .await
        .map_err(|e| ApiError::failed(&e))?
        .map_err(|e| ApiError::failed(&e))?;
    Ok(Json(entries))
}

#[utoipa::path(get, path = "/v1/budgets", tag = "budgets", operation_id = "listBudgets",
    responses((status = 200, description = "The budgets the caller may see", body = Vec<BudgetRow>)),
    extensions(("x-soma-scope" = json!("read"))))]
pub(super) async fn get_budgets(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
) -> Result<Json<Vec<BudgetRow>>, ApiError> {
    require(&p, TokenScope::Read)?;
    let d = daemon.clone();
    let tenant = p.tenant.clone();
    let operator = p.is_operator();
    let mine = tokio::task::spawn_blocking(move || visible_budgets(&d, &tenant, operator))
        .await
        .map_err(|e| ApiError::failed(&e))?
        .map_err(|e| ApiError::failed(&e))?;
    Ok(Json(mine))
}

/// Why [`visible_budgets`] could not list the budgets.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BudgetsError {
    /// The budgets could not be loaded.
    #[error("cannot list the budgets")]
    Budgets(#[from] budget::BudgetError),
    /// The owner of a run budget could not be read from the journal.
    #[error("cannot read the owner of a budgeted run")]
    Journal(#[from] JournalError),
}

/// The budgets `tenant` sees (an `operator` every one), with their
/// accounts: its own tenant budget and those of its runs and their nodes.
/// `GET /v1/budgets` and the console's costs page.
///
/// Blocking: the budgets, then one journal summary-row read per distinct
/// run (never a history replay), so the cost of another tenant's budgets
/// is a point read each.
pub(crate) fn visible_budgets(
    d: &Daemon,
    tenant: &str,
    operator: bool,
) -> Result<Vec<BudgetRow>, BudgetsError> {
    let all = d.engine.metering().list_budgets()?;
    let journal = Journal::new(d.engine.data().database().clone());
    let own = budget::Scope::Tenant(tenant.to_owned());
    let mut runs: std::collections::HashMap<String, bool> = std::collections::HashMap::new();
    let mut mine = Vec::new();
    for (scope, account) in all {
        let shown = match &scope {
            _ if operator => true,
            budget::Scope::Tenant(_) => scope == own,
            budget::Scope::Capsule(_) => false,
            budget::Scope::Run(r) | budget::Scope::Node(r) => {
                let run = r.split('/').next().unwrap_or(r);
                match runs.get(run) {
                    Some(seen) => *seen,
                    None => {
                        let owner = match known_run_tenant(d, run) {
                            Some(t) => Some(t),
                            None => match journal.summary(run) {
                                Ok(summary) => Some(summary.tenant),
                                Err(JournalError::NotFound(_)) => None,
                                Err(e) => return Err(e.into()),
                            },
                        };
                        let ours = owner.as_deref() == Some(tenant);
                        runs.insert(run.to_owned(), ours);
                        ours
                    }
                }
            }
        };
        if shown {
            mine.push(BudgetRow {
                scope: scope.key(),
                account,
            });
        }
    }
    Ok(mine)
}

#[utoipa::path(put, path = "/v1/budgets", tag = "budgets", operation_id = "setBudget",
    request_body = BudgetRequest,
    responses(
        (status = 200, description = "Set (or removed)", body = BudgetSet),
        (status = 404, description = "No such run (for run:R or node:R/N)", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("admin"))))]
pub(super) async fn put_budget(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BudgetSet>, ApiError> {
    require(&p, TokenScope::Admin)?;
    let req: BudgetRequest = parse(body)?;
    let scope = budget::Scope::parse(&req.scope).ok_or_else(|| {
        ApiError::bad(
            "scope must be tenant:T, capsule:sha256:…, run:R or node:R/N",
            Some("scope"),
        )
    })?;
    may_budget(&daemon, &p, &scope).await?;
    let limit = (!req.remove).then_some(budget::Limit {
        tokens: req.tokens,
        micros: req.micros,
    });
    let engine = daemon.engine.clone();
    let key = scope.key();
    tokio::task::spawn_blocking(move || engine.metering().set_limit(scope, limit))
        .await
        .map_err(|e| ApiError::failed(&e))?
        .map_err(|e| ApiError::failed(&e))?;
    Ok(Json(BudgetSet { scope: key, limit }))
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", operation_id = "createToken",
    request_body = TokenRequest,
    responses((status = 201, description = "Created; the secret is shown only here", body = CreatedToken)),
    extensions(("x-soma-scope" = json!("admin"))))]
pub(super) async fn create_token(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require(&p, TokenScope::Admin)?;
    let req: TokenRequest = parse(body)?;
    if let Some(why) = p.refuses_token(&req.tenant, &req.scopes) {
        return Err(ApiError::forbidden(why));
    }
    let expires_ms =
        match (req.expires_in_s, req.expires_at_ms) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad(
                    "give at most one of `expires_in_s` and `expires_at_ms`",
                    Some("expires_in_s"),
                ));
            }
            (Some(0), None) => {
                return Err(ApiError::bad(
                    "`expires_in_s` must be positive",
                    Some("expires_in_s"),
                ));
            }
            (Some(s), None) => Some(super::auth::expiry_in(s).ok_or_else(|| {
                ApiError::bad("`expires_in_s` is too large", Some("expires_in_s"))
            })?),
            (None, at) => at,
        };
    let tokens = daemon.tokens.clone();
    let (token, record) =
        tokio::task::spawn_blocking(move || tokens.create(&req.tenant, &req.scopes, expires_ms))
            .await
            .map_err(|e| ApiError::failed(&e))?
            .map_err(|e| match e {
                e @ AuthError::PastExpiry { .. } => {
                    ApiError::bad(e.to_string(), Some("expires_at_ms"))
                }
                AuthError::Invalid(m) => ApiError::bad(m, Some("tenant")),
                other => ApiError::failed(&other),
            })?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token,
            id: record.id,
            tenant: record.tenant,
            scopes: record.scopes,
            expires_ms: record.expires_ms,
        }),
    )
        .into_response())
}

/// `GET /v1/tokens`: the tokens of the caller's tenant (an operator: every
/// tenant's, or `?tenant=`), never their secrets.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", operation_id = "listTokens",
    params(TokensQuery),
    responses(
        (status = 200, description = "Tokens, never their secrets", body = Vec<TokenInfo>),
        (status = 400, description = "A bad query", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("admin"))))]
pub(super) async fn list_tokens(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    query: Result<Query<TokensQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    require(&p, TokenScope::Admin)?;
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text(), None))?;
    let tenant = match q.tenant {
        Some(t) if !p.sees_tenant(&t) => {
            return Err(ApiError::forbidden(
                "a tenant admin lists only its own tenant's tokens; every tenant's need an `operator` token",
            ));
        }
        Some(t) => Some(t),
        None if p.is_operator() => None,
        None => Some(p.tenant.clone()),
    };
    let now = crate::dag::history::now_ms();
    let list: Vec<TokenInfo> = daemon
        .tokens
        .loaded()
        .iter()
        .filter(|t| tenant.as_ref().is_none_or(|want| &t.tenant == want))
        .map(|t| t.info(now))
        .collect();
    Ok(Json(list))
}

/// `DELETE /v1/tokens/{id}`: revoke now — the token is refused from the
/// next request on, and after restarts.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", operation_id = "revokeToken",
    params(("id" = String, Path, description = "The token id")),
    responses((status = 200, description = "Revoked: refused from the next request on", body = TokenInfo)),
    extensions(("x-soma-scope" = json!("admin"))))]
pub(super) async fn revoke_token(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    require(&p, TokenScope::Admin)?;
    let missing = || ApiError::not_found(&format!("token `{id}` (GET /v1/tokens lists them)"));
    let record = daemon.tokens.get(&id).ok_or_else(missing)?;
    if !p.sees_tenant(&record.tenant) {
        return Err(missing());
    }
    if let Some(why) = p.refuses_token(&record.tenant, &record.scopes) {
        return Err(ApiError::forbidden(why));
    }
    let tokens = daemon.tokens.clone();
    let revoked = tokio::task::spawn_blocking(move || tokens.revoke(&id))
        .await
        .map_err(|e| ApiError::failed(&e))?
        .map_err(|e| match e {
            AuthError::NotFound(id) => ApiError::not_found(&format!("token `{id}`")),
            other => ApiError::failed(&other),
        })?;
    Ok(Json(revoked.info(crate::dag::history::now_ms())))
}

/// The tenant a run belongs to: a live or recent run, else the journal.
/// `None` if no run has this id.
async fn run_tenant(daemon: &Arc<Daemon>, run: &str) -> Result<Option<String>, ApiError> {
    if let Some(tenant) = known_run_tenant(daemon, run) {
        return Ok(Some(tenant));
    }
    let db = daemon.engine.data().database().clone();
    let run = run.to_owned();
    tokio::task::spawn_blocking(move || journal_run_tenant(&Journal::new(db), &run))
        .await
        .map_err(|e| ApiError::failed(&e))?
}

/// The tenant of a run this daemon holds in memory (live or a recent call).
fn known_run_tenant(daemon: &Daemon, run: &str) -> Option<String> {
    if let Some(live) = daemon.runs.live(run) {
        return Some(live.tenant.clone());
    }
    daemon.runs.call(run).map(|call| call.tenant)
}

/// The tenant of a journaled run: one summary row, no history replay
/// (blocking).
fn journal_run_tenant(journal: &Journal, run: &str) -> Result<Option<String>, ApiError> {
    match journal.summary(run) {
        Ok(summary) => Ok(Some(summary.tenant)),
        Err(JournalError::NotFound(_)) => Ok(None),
        Err(e) => Err(ApiError::failed(&e)),
    }
}

/// Whether `p` may set or remove the budget `scope`: an operator any; a
/// tenant admin only those of its own runs and their nodes (the tenant's
/// own ceiling and capsule budgets are the operator's).
async fn may_budget(
    daemon: &Arc<Daemon>,
    p: &Principal,
    scope: &budget::Scope,
) -> Result<(), ApiError> {
    if p.is_operator() {
        return Ok(());
    }
    match scope {
        budget::Scope::Tenant(_) => Err(ApiError::forbidden(
            "a tenant's budget is its ceiling, set by the operator: it needs an `operator` token (a tenant admin may budget its own runs: run:R, node:R/N)",
        )),
        budget::Scope::Capsule(_) => Err(ApiError::forbidden(
            "a capsule budget applies to every tenant: it needs an `operator` token",
        )),
        budget::Scope::Run(r) | budget::Scope::Node(r) => {
            let run = r.split('/').next().unwrap_or(r);
            match run_tenant(daemon, run).await? {
                Some(t) if t == p.tenant => Ok(()),
                _ => Err(ApiError {
                    field: Some("scope".into()),
                    ..ApiError::not_found(&format!("run `{run}`"))
                }),
            }
        }
    }
}
