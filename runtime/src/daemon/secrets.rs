//! Tenant secrets over the API: an admin sets, deletes and lists its
//! tenant's secrets (an operator any tenant's). Write-only: no route returns
//! a value. The store is the `secrets` capability's
//! ([`soma_host_api::secrets::Shared`]): sealed with the operator's key in
//! the node's database.
//!
//! Why routes here rather than a generic seam: a route needs axum, the
//! principal and the error shape, which the host capabilities do not know;
//! this module is the only runtime file that names the secrets store.

use std::sync::Arc;

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{Method, StatusCode},
};
use serde::{Deserialize, Serialize};
use soma_host_api::secrets::{SecretValue, StoreError, TenantSecretInfo};
use utoipa::ToSchema;

use super::{
    Daemon,
    auth::{Principal, TokenScope},
    contract::ErrorBody,
    reply::{ApiError, Routes, parse, require},
};

/// The tenant-secrets routes.
pub(super) fn routes(routes: Routes) -> Routes {
    routes
        .add(Method::GET, "/v1/tenants/{tenant}/secrets", list_secrets)
        .add(
            Method::PUT,
            "/v1/tenants/{tenant}/secrets/{name}",
            put_secret,
        )
        .add(
            Method::DELETE,
            "/v1/tenants/{tenant}/secrets/{name}",
            delete_secret,
        )
}

/// `PUT /v1/tenants/{tenant}/secrets/{name}`: the value and who may read it.
/// (`Serialize` for `soma secrets set`, the client; `Debug` never shows the value.)
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRequest {
    /// The value (stored sealed; never returned by any route).
    pub value: String,
    /// Globs (`*`, `?`) over where a capsule was loaded from — its
    /// reference or path, its repository, or its digest — that may read it.
    /// Empty: no capsule.
    #[serde(default)]
    pub grant: Vec<String>,
}

impl std::fmt::Debug for SecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRequest")
            .field("value", &"[REDACTED]")
            .field("grant", &self.grant)
            .finish()
    }
}

/// One tenant secret as listed: its name, its grant, when it was set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretRow {
    /// Its name.
    pub name: String,
    /// Who may read it (globs).
    pub grant: Vec<String>,
    /// When it was last set, Unix milliseconds.
    pub updated_ms: u64,
}

impl From<TenantSecretInfo> for SecretRow {
    fn from(i: TenantSecretInfo) -> Self {
        Self {
            name: i.name,
            grant: i.grant,
            updated_ms: i.updated_ms,
        }
    }
}

/// `p` may manage `tenant`'s secrets: an admin of it, or an operator.
/// Another tenant's are 404 (as if there were none), like its runs.
fn may_manage(p: &Principal, tenant: &str) -> Result<(), ApiError> {
    require(p, TokenScope::Admin)?;
    if p.sees_tenant(tenant) {
        Ok(())
    } else {
        Err(ApiError::not_found(&format!("tenant `{tenant}`")))
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        e @ StoreError::NoKey => {
            ApiError::new(StatusCode::CONFLICT, "not-configured", e.to_string())
        }
        e @ StoreError::BadName { .. } => ApiError::bad(e.to_string(), Some("name")),
        e @ StoreError::OperatorDefined { .. } => {
            ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()).with_field("name")
        }
        e @ StoreError::TooLarge { .. } => ApiError::bad(e.to_string(), Some("value")),
        e @ StoreError::TooMany { .. } => {
            ApiError::new(StatusCode::CONFLICT, "quota-exceeded", e.to_string())
        }
        other => ApiError::failed(&other),
    }
}

/// `PUT /v1/tenants/{tenant}/secrets/{name}`: set (or replace) a secret.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/secrets/{name}", tag = "secrets",
    operation_id = "putTenantSecret",
    params(("tenant" = String, Path, description = "The tenant"),
           ("name" = String, Path, description = "The secret's name")),
    request_body = SecretRequest,
    responses(
        (status = 200, description = "Stored sealed; the value is never returned", body = SecretRow),
        (status = 404, description = "Another tenant's (for a tenant admin)", body = ErrorBody),
        (status = 409, description = "No key configured, an operator secret's name, or the tenant's limit", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("admin"))))]
pub(super) async fn put_secret(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path((tenant, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SecretRow>, ApiError> {
    may_manage(&p, &tenant)?;
    let req: SecretRequest = parse(body)?;
    let value = SecretValue::new(req.value);
    let engine = daemon.engine.clone();
    let now = crate::dag::history::now_ms();
    let info = tokio::task::spawn_blocking(move || {
        engine
            .capabilities
            .secrets()
            .set_tenant_secret(&tenant, &name, &value, req.grant, now)
    })
    .await
    .map_err(|e| ApiError::failed(&e))?
    .map_err(store_error)?;
    Ok(Json(info.into()))
}

/// `DELETE /v1/tenants/{tenant}/secrets/{name}`: delete a secret.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/secrets/{name}", tag = "secrets",
    operation_id = "deleteTenantSecret",
    params(("tenant" = String, Path, description = "The tenant"),
           ("name" = String, Path, description = "The secret's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such secret (or another tenant's)", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("admin"))))]
pub(super) async fn delete_secret(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    may_manage(&p, &tenant)?;
    let engine = daemon.engine.clone();
    let what = format!("secret `{name}` of tenant `{tenant}`");
    let existed = tokio::task::spawn_blocking(move || {
        engine
            .capabilities
            .secrets()
            .delete_tenant_secret(&tenant, &name)
    })
    .await
    .map_err(|e| ApiError::failed(&e))?
    .map_err(store_error)?;
    if existed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(&what))
    }
}

/// `GET /v1/tenants/{tenant}/secrets`: names, grants, update times — never
/// values.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/secrets", tag = "secrets",
    operation_id = "listTenantSecrets",
    params(("tenant" = String, Path, description = "The tenant")),
    responses(
        (status = 200, description = "The tenant's secrets, never their values", body = Vec<SecretRow>),
        (status = 404, description = "Another tenant's (for a tenant admin)", body = ErrorBody),
    ),
    extensions(("x-soma-scope" = json!("admin"))))]
pub(super) async fn list_secrets(
    State(daemon): State<Arc<Daemon>>,
    Extension(p): Extension<Principal>,
    Path(tenant): Path<String>,
) -> Result<Json<Vec<SecretRow>>, ApiError> {
    may_manage(&p, &tenant)?;
    let engine = daemon.engine.clone();
    let rows = tokio::task::spawn_blocking(move || {
        engine.capabilities.secrets().list_tenant_secrets(&tenant)
    })
    .await
    .map_err(|e| ApiError::failed(&e))?
    .map_err(store_error)?;
    Ok(Json(rows.into_iter().map(SecretRow::from).collect()))
}
