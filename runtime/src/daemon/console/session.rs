//! Signed-in browser sessions: an opaque random id in an `HttpOnly`,
//! `SameSite=Strict` cookie, mapped here to the API token that signed in
//! (by id — the secret is never kept) and a per-session CSRF token.
//!
//! Held in memory and bounded (`[console]`): at most `max_sessions` in all
//! and `max_sessions_per_tenant` per tenant (a tenant signing in past its
//! cap signs out its own least recently used session, never another
//! tenant's). Sessions end after `session_idle_secs` unused or
//! `session_max_secs` in all, and the moment their token is revoked or
//! expires (checked on every request). A daemon restart signs everyone out.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::config::console::ConsoleConfig;

/// One signed-in browser.
#[derive(Debug)]
pub struct Session {
    /// The id of the API token that signed in.
    pub token: String,
    /// Its tenant.
    pub tenant: String,
    /// The token every state-changing form must carry.
    csrf: String,
    /// When it signed in.
    created: Instant,
    /// Milliseconds after `created` it was last used.
    used_ms: AtomicU64,
}

impl Session {
    /// The CSRF token forms carry (a hidden `csrf` field).
    pub fn csrf(&self) -> &str {
        &self.csrf
    }

    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        self.csrf.as_bytes().ct_eq(presented.as_bytes()).into()
    }

    fn idle(&self, now: Instant) -> Duration {
        let used = self.created + Duration::from_millis(self.used_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(used)
    }

    fn touch(&self, now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.created).as_millis())
            .unwrap_or(u64::MAX);
        self.used_ms.store(ms, Ordering::Relaxed);
    }
}

/// Why a sign-in could not get a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Every slot is taken by live sessions.
    #[error(
        "the console holds {0} signed-in sessions, its limit: try again later, or raise console.max_sessions"
    )]
    Full(usize),
    /// The operating system gave no randomness.
    #[error("no randomness for a session id")]
    Randomness(#[source] rand_core::Error),
}

/// Every live session, bounded.
#[derive(Debug)]
pub struct Sessions {
    config: ConsoleConfig,
    /// By SHA-256 of the cookie value (a lookup never compares secrets).
    inner: Mutex<HashMap<[u8; 32], Arc<Session>>>,
}

fn key(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

fn random_token() -> Result<String, SessionError> {
    use rand_core::RngCore as _;
    let mut buf = [0u8; 32];
    rand_core::OsRng
        .try_fill_bytes(&mut buf)
        .map_err(SessionError::Randomness)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// A new random value for a form's CSRF field before sign-in (the login
/// form's double-submit cookie).
pub fn nonce() -> Result<String, SessionError> {
    random_token()
}

impl Sessions {
    /// An empty store bounded by `config`.
    pub fn new(config: ConsoleConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(HashMap::new()),
        }
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        s.idle(now) > Duration::from_secs(self.config.session_idle_secs)
            || now.saturating_duration_since(s.created)
                > Duration::from_secs(self.config.session_max_secs)
    }

    /// Sign in `token` of `tenant`: the cookie value and the session.
    /// Cost: O(sessions) only when a cap is reached (expired ones are
    /// swept then).
    pub fn create(
        &self,
        token: &str,
        tenant: &str,
    ) -> Result<(String, Arc<Session>), SessionError> {
        let cookie = random_token()?;
        let session = Arc::new(Session {
            token: token.to_owned(),
            tenant: tenant.to_owned(),
            csrf: random_token()?,
            created: Instant::now(),
            used_ms: AtomicU64::new(0),
        });
        let now = Instant::now();
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let tenant_count = map.values().filter(|s| s.tenant == tenant).count();
        if tenant_count >= self.config.max_sessions_per_tenant
            || map.len() >= self.config.max_sessions
        {
            map.retain(|_, s| !self.expired(s, now));
        }
        // The tenant's own least recently used session makes room.
        while map.values().filter(|s| s.tenant == tenant).count()
            >= self.config.max_sessions_per_tenant
        {
            let oldest = map
                .iter()
                .filter(|(_, s)| s.tenant == tenant)
                .max_by_key(|(_, s)| s.idle(now))
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        if map.len() >= self.config.max_sessions {
            return Err(SessionError::Full(self.config.max_sessions));
        }
        map.insert(key(&cookie), session.clone());
        Ok((cookie, session))
    }

    /// The live session of `cookie`, marked used; an expired one is
    /// removed and not returned.
    pub fn get(&self, cookie: &str) -> Option<Arc<Session>> {
        let k = key(cookie);
        let now = Instant::now();
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let session = map.get(&k)?.clone();
        if self.expired(&session, now) {
            map.remove(&k);
            return None;
        }
        session.touch(now);
        Some(session)
    }

    /// Sign out `cookie`'s session (no-op if there is none).
    pub fn remove(&self, cookie: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key(cookie));
    }

    /// Sessions held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max: usize, per_tenant: usize) -> ConsoleConfig {
        ConsoleConfig {
            max_sessions: max,
            max_sessions_per_tenant: per_tenant,
            ..ConsoleConfig::default()
        }
    }

    #[test]
    fn a_tenant_past_its_cap_signs_out_its_own_oldest_session_only() {
        let sessions = Sessions::new(config(10, 2));
        let (b, _) = sessions.create("tb", "bravo").expect("bravo");
        let (a1, _) = sessions.create("t1", "alpha").expect("a1");
        std::thread::sleep(Duration::from_millis(5));
        let (a2, _) = sessions.create("t2", "alpha").expect("a2");
        std::thread::sleep(Duration::from_millis(5));
        assert!(sessions.get(&a2).is_some());
        let (a3, _) = sessions.create("t3", "alpha").expect("a3");
        assert!(
            sessions.get(&a1).is_none(),
            "alpha's least recently used goes"
        );
        assert!(sessions.get(&a2).is_some() && sessions.get(&a3).is_some());
        assert!(
            sessions.get(&b).is_some(),
            "bravo is never signed out by alpha"
        );
    }

    #[test]
    fn a_full_store_refuses_and_names_the_key() {
        let sessions = Sessions::new(config(2, 2));
        sessions.create("a", "alpha").expect("a");
        sessions.create("b", "bravo").expect("b");
        let e = sessions.create("c", "charlie").expect_err("full");
        assert!(e.to_string().contains("console.max_sessions"), "{e}");
    }

    #[test]
    fn idle_sessions_expire_and_csrf_compares_exactly() {
        let sessions = Sessions::new(ConsoleConfig {
            session_idle_secs: 1,
            ..ConsoleConfig::default()
        });
        let (c, s) = sessions.create("t", "alpha").expect("create");
        assert!(s.csrf_matches(s.csrf()));
        assert!(!s.csrf_matches(""));
        assert!(!s.csrf_matches(&s.csrf()[1..]));
        assert!(sessions.get(&c).is_some());
        assert!(sessions.get("not-a-session").is_none());
        std::thread::sleep(Duration::from_millis(1100));
        assert!(sessions.get(&c).is_none(), "idle past session_idle_secs");
        assert!(
            sessions.is_empty(),
            "an expired session is removed when seen"
        );
    }
}
