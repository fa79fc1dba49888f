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

impl Bucket {
    /// Refill for the time since the last request and take one token.
    fn take(&mut self, now: Instant, l: &TenantLimits) -> Result<(), Refused> {
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * l.rate_per_sec).min(l.burst);
        self.at = now;
        if self.tokens < 1.0 {
            let wait = (1.0 - self.tokens) / l.rate_per_sec.max(f64::MIN_POSITIVE);
            return Err(Refused::Rate {
                retry_after_s: (wait.ceil() as u64).max(1),
            });
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

/// Admission state of every tenant.
pub struct TenantAdmission {
    limits: TenantLimits,
    buckets: Mutex<HashMap<String, Bucket>>,
    in_flight: Mutex<HashMap<String, Arc<InFlight>>>,
}

/// One tenant's requests in flight.
#[derive(Debug)]
struct InFlight {
    tenant: String,
    count: AtomicUsize,
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
pub struct Permit(Arc<InFlight>);

impl Permit {
    /// The tenant admitted (borrowed: no allocation per request).
    pub fn tenant(&self) -> &str {
        &self.0.tenant
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
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
    /// mutex sections; allocates only for a tenant's first request.
    pub fn admit(&self, tenant: &str) -> Result<Permit, Refused> {
        let l = self.limits;
        {
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            match buckets.get_mut(tenant) {
                Some(b) => b.take(now, &l)?,
                None => {
                    let mut b = Bucket {
                        tokens: l.burst,
                        at: now,
                    };
                    let taken = b.take(now, &l);
                    buckets.insert(tenant.to_owned(), b);
                    taken?;
                }
            }
        }
        let counter = {
            let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(tenant) {
                Some(c) => c.clone(),
                None => {
                    let c = Arc::new(InFlight {
                        tenant: tenant.to_owned(),
                        count: AtomicUsize::new(0),
                    });
                    map.insert(tenant.to_owned(), c.clone());
                    c
                }
            }
        };
        let before = counter.count.fetch_add(1, Ordering::AcqRel);
        if before >= l.max_in_flight {
            counter.count.fetch_sub(1, Ordering::AcqRel);
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
        assert_eq!(p1.tenant(), "acme", "the permit names its tenant");
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
