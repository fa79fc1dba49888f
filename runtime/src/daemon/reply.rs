//! What every route module shares, below them all (so `api` and `market`
//! never name each other's helpers): [`Routes`], the one JSON error shape
//! [`ApiError`], body parsing and scope checks.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::rejection::BytesRejection,
    handler::Handler,
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{MethodFilter, on},
};
use serde_json::Value;

use super::{
    Daemon,
    auth::{Principal, TokenScope},
    contract::{ErrorBody, ErrorDetail},
};

/// Routes as they are added to a router, each recorded as (method, path):
/// the only way a route gets into `api::router`, so `api::served` lists exactly
/// what the daemon serves (the OpenAPI tests compare it with the document).
pub(super) struct Routes {
    pub(super) router: Router<Arc<Daemon>>,
    pub(super) served: Vec<(Method, &'static str)>,
}

impl Routes {
    pub(super) fn new() -> Self {
        Self {
            router: Router::new(),
            served: Vec::new(),
        }
    }

    /// Serve `handler` for `method` on `path`.
    pub(super) fn add<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, Arc<Daemon>>,
        T: 'static,
    {
        // Every method `add` is called with is one MethodFilter knows.
        let filter = MethodFilter::try_from(method.clone()).unwrap_or(MethodFilter::GET);
        self.router = self.router.route(path, on(filter, handler));
        self.served.push((method, path));
        self
    }
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) field: Option<String>,
    pub(super) retry_after: Option<u64>,
    pub(super) details: Option<Value>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            details: None,
        }
    }

    pub(super) fn bad(message: impl Into<String>, field: Option<&str>) -> Self {
        Self {
            field: field.map(str::to_owned),
            ..Self::new(StatusCode::BAD_REQUEST, "bad-request", message)
        }
    }

    pub(super) fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", format!("no {what}"))
    }

    pub(super) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// A 500 whose message is `e` with its whole chain of sources.
    pub(super) fn failed(e: &(dyn std::error::Error + 'static)) -> Self {
        Self::internal(super::error_chain(e))
    }

    pub(super) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// The same error, naming the request field at fault.
    pub(super) fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }
}

/// The error code of an [`ApiError`] answer, in the response's
/// extensions (the request observer keeps it with the recent errors).
#[derive(Debug, Clone, Copy)]
pub(super) struct ErrorCode(pub(super) &'static str);

/// The tenant a request was authenticated as, in the response's
/// extensions (for the recent errors).
#[derive(Debug, Clone)]
pub(super) struct RequestTenant(pub(super) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                details: self.details,
                field: self.field,
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        if let Some(s) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Parse a JSON body, naming the field that is wrong.
pub(super) fn parse<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "the request body is larger than daemon.max_body_bytes",
            )
        } else {
            ApiError::bad(format!("cannot read the body: {r}"), None)
        }
    })?;
    let mut de = serde_json::Deserializer::from_slice(&body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        let message = match &field {
            Some(f) => format!("field `{f}`: {}", e.inner()),
            None => format!("invalid JSON body: {}", e.inner()),
        };
        ApiError::bad(message, field.as_deref())
    })
}

pub(super) fn require(p: &Principal, scope: TokenScope) -> Result<(), ApiError> {
    if p.may(scope) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this token lacks the `{scope}` scope"),
        ))
    }
}

/// 429 with `Retry-After: 1` for a full per-tenant or global cap.
pub(super) fn full(code: &'static str, message: String) -> ApiError {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
    }
}

/// 503 `store-unavailable` with `Retry-After: 1`: the shared store was
/// unreachable or busy and nothing was recorded (`message` says what).
pub(super) fn store_unavailable(message: &str) -> ApiError {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            format!("{message}; nothing was recorded: try again"),
        )
    }
}

/// A refused approval verdict as an answer: 404 for a node the run lacks,
/// else 409 (both engines' approval routes answer it; here, below them).
pub(crate) fn approval_refused(e: &crate::dag::approval::ApprovalError) -> ApiError {
    use crate::dag::approval::ApprovalError;
    let status = match e {
        ApprovalError::UnknownNode { .. } => StatusCode::NOT_FOUND,
        ApprovalError::NotAwaiting { .. } | ApprovalError::Conflict { .. } => StatusCode::CONFLICT,
    };
    ApiError::new(status, e.code(), e.to_string())
}
