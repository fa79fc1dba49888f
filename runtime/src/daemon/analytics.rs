//! `GET /v1/analytics/query`: the embedded analytics store over the API.
//! A tenant sees only its own numbers; an operator sees every tenant's
//! together, or one tenant's with `tenant=`.

use std::sync::Arc;

use super::{
    Daemon,
    auth::{Principal, TokenScope},
    contract::{ErrorBody, analytics::AnalyticsQuery},
    reply::{ApiError, Routes, require},
};
use crate::analytics::{self, Dim, Gran, QueryRow};
use axum::{
    Extension, Json,
    extract::{Query, State},
    http::Method,
};

/// The analytics routes.
pub(super) fn routes(routes: Routes) -> Routes {
    routes.add(Method::GET, "/v1/analytics/query", analytics_query)
}

/// Turn the parameters into a store query for `p`: a tenant's own numbers,
/// or (operator) everyone's or one tenant's.
fn to_query(p: &Principal, q: AnalyticsQuery, now_ms: u64) -> Result<analytics::Query, ApiError> {
    let tenant = match q.tenant {
        Some(t) if p.is_operator() => Some(t),
        Some(t) if t != p.tenant => {
            return Err(ApiError::forbidden(
                "only operator tokens may read another tenant's analytics",
            ));
        }
        _ if p.is_operator() => None,
        _ => Some(p.tenant.clone()),
    };
    let bad = |e: analytics::AnalyticsError, field: &str| ApiError::bad(e.to_string(), Some(field));
    let by = Dim::parse(q.by.as_deref().unwrap_or("all")).map_err(|e| bad(e, "by"))?;
    let bucket =
        Gran::parse(q.bucket.as_deref().unwrap_or("hour")).map_err(|e| bad(e, "bucket"))?;
    let until_ms = q.until_ms.unwrap_or(now_ms);
    Ok(analytics::Query {
        tenant,
        by,
        bucket,
        since_ms: q.since_ms.unwrap_or(until_ms.saturating_sub(86_400_000)),
        until_ms,
        series: q.series.unwrap_or(false),
        top: q.top,
    })
}

#[utoipa::path(get, path = "/v1/analytics/query", tag = "analytics", operation_id = "queryAnalytics",
    params(AnalyticsQuery),
    responses(
        (status = 200, description = "Rollup rows of the window, grouped", body = Vec<QueryRow>),
        (status = 400, description = "A bad query", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("read"))))]
pub(super) async fn analytics_query(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    query: Result<Query<AnalyticsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<QueryRow>>, ApiError> {
    require(&p, TokenScope::Read)?;
    let Query(q) = query.map_err(|e| ApiError::bad(e.body_text(), None))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let q = to_query(&p, q, now)?;
    let db = daemon.engine.data().database().clone();
    let rows = tokio::task::spawn_blocking(move || {
        let db = db.get().map_err(analytics::AnalyticsError::from)?;
        analytics::rollup::query(&db, &q)
    })
    .await
    .map_err(|e| ApiError::failed(&e))?
    .map_err(|e| match e {
        e @ analytics::AnalyticsError::BadQuery(_) => ApiError::bad(e.to_string(), None),
        e => ApiError::failed(&e),
    })?;
    Ok(Json(rows))
}
