//! Console pages: runs (routes registered in [`routes`]).

use std::sync::Arc;

use axum::Router;

use crate::daemon::Daemon;

/// This section's routes.
pub(super) fn routes() -> Router<Arc<Daemon>> {
    Router::new()
}
