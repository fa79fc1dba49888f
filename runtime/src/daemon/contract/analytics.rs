//! `/v1/analytics/...` as types.

use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

/// `GET /v1/analytics/query` parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AnalyticsQuery {
    /// Group by `all` (default), `capsule`, `model` or `class` (failure class).
    pub by: Option<String>,
    /// Bucket width: `minute`, `hour` (default) or `day`.
    pub bucket: Option<String>,
    /// Window start, unix ms (default: 24 hours before `until`).
    pub since_ms: Option<u64>,
    /// Window end, unix ms, exclusive (default: now).
    pub until_ms: Option<u64>,
    /// One row per bucket and group (`true`) or per group (default).
    pub series: Option<bool>,
    /// Keep the first N groups (by calls, then cost).
    pub top: Option<usize>,
    /// Only this tenant's numbers (an operator token; others always see their own).
    pub tenant: Option<String>,
}
