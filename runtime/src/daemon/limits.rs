//! Per-tenant admission: a token bucket for the request rate and a cap on
//! requests in flight. Refusals carry the seconds to wait (`Retry-After`).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

/// Per-tenant limits.
#[derive(Debug, Clone, Copy)]
pub struct TenantLimits {
    /// Sustained requests per second.
    pub rate_per_sec: f64,
    /// Bucket size (requests allowed at once after idling).
    pub burst: f64,
    /// Requests in flight at once.
    pub max_in_flight: usize,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refused {
    /// Over the rate; retry after this many seconds.
    Rate {
        /// Seconds until a token is available (at least 1).
        retry_after_s: u64,
    },
    /// Too many requests in flight.
    Concurrency {
        /// The cap.
        limit: usize,
    },
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Admission state of every tenant.
pub struct TenantAdmission {
    limits: TenantLimits,
    buckets: Mutex<HashMap<String, Bucket>>,
    in_flight: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

impl std::fmt::Debug for TenantAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantAdmission")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A request in flight; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TenantAdmission {
    /// Admission with `limits` for every tenant.
    pub fn new(limits: TenantLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Admit one request of `tenant`, or say why not. Cost: two short
    /// mutex sections.
    pub fn admit(&self, tenant: &str) -> Result<Permit, Refused> {
        let l = self.limits;
        {
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let b = buckets.entry(tenant.to_owned()).or_insert(Bucket {
                tokens: l.burst,
                at: now,
            });
            let elapsed = now.duration_since(b.at).as_secs_f64();
            b.tokens = (b.tokens + elapsed * l.rate_per_sec).min(l.burst);
            b.at = now;
            if b.tokens < 1.0 {
                let wait = (1.0 - b.tokens) / l.rate_per_sec.max(f64::MIN_POSITIVE);
                return Err(Refused::Rate {
                    retry_after_s: (wait.ceil() as u64).max(1),
                });
            }
            b.tokens -= 1.0;
        }
        let counter = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant.to_owned())
            .or_default()
            .clone();
        let before = counter.fetch_add(1, Ordering::AcqRel);
        if before >= l.max_in_flight {
            counter.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Concurrency {
                limit: l.max_in_flight,
            });
        }
        Ok(Permit(counter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_concurrency_are_per_tenant() {
        let a = TenantAdmission::new(TenantLimits {
            rate_per_sec: 1.0,
            burst: 3.0,
            max_in_flight: 2,
        });
        let p1 = a.admit("acme").expect("1");
        let p2 = a.admit("acme").expect("2");
        assert_eq!(
            a.admit("acme").map(|_| ()),
            Err(Refused::Concurrency { limit: 2 })
        );
        drop(p1);
        drop(p2);
        // The third token was spent by the refused request; the bucket is empty.
        assert!(matches!(
            a.admit("acme").map(|_| ()),
            Err(Refused::Rate { retry_after_s: 1 })
        ));
        assert!(a.admit("other").is_ok(), "another tenant is unaffected");
    }
}
