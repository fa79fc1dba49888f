//! `[console]`: the web console `soma daemon` serves at `/ui/` (same
//! listener, same TLS). Every key bounds something a visitor can make the
//! daemon hold: sessions (memory), rows per page (time per request).
//!
//! ```toml
//! [console]
//! enabled = true                   # serve /ui/ (false: 404, the API is unchanged)
//! max_sessions = 10000             # signed-in browser sessions held, all tenants
//! max_sessions_per_tenant = 64     # one tenant's; its oldest is signed out past this
//! session_idle_secs = 28800        # a session unused this long is signed out (8 h)
//! session_max_secs = 604800        # and any session after this long (7 days)
//! max_page_rows = 200              # the most rows one list page shows (?per=)
//! ```

use serde::{Deserialize, Serialize};

/// `[console]` in `soma.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console at `/ui/`. Default true.
    pub enabled: bool,
    /// Signed-in sessions held in memory, all tenants together; a sign-in
    /// past it is refused (503) until one expires. Default 10,000.
    pub max_sessions: usize,
    /// Sessions one tenant may hold; signing in past it signs out that
    /// tenant's least recently used session (never another tenant's).
    /// Default 64.
    pub max_sessions_per_tenant: usize,
    /// A session unused for this long is signed out. Default 8 h.
    pub session_idle_secs: u64,
    /// Any session is signed out this long after sign-in. Default 7 days.
    pub session_max_secs: u64,
    /// The most rows a list page shows (`?per=` can only lower it).
    /// Default 200.
    pub max_page_rows: usize,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_sessions: 10_000,
            max_sessions_per_tenant: 64,
            session_idle_secs: 8 * 3600,
            session_max_secs: 7 * 24 * 3600,
            max_page_rows: 200,
        }
    }
}

impl ConsoleConfig {
    /// Refuse settings the console cannot run with, naming the key.
    pub fn check(&self) -> Result<(), String> {
        if self.max_sessions == 0 || self.max_sessions_per_tenant == 0 {
            return Err("console.max_sessions and max_sessions_per_tenant must be positive".into());
        }
        if self.session_idle_secs == 0 || self.session_max_secs == 0 {
            return Err("console.session_idle_secs and session_max_secs must be positive".into());
        }
        if !(1..=10_000).contains(&self.max_page_rows) {
            return Err("console.max_page_rows must be between 1 and 10000".into());
        }
        Ok(())
    }
}
