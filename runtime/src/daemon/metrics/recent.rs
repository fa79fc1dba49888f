//! The last failed requests and calls, for the console's operations page:
//! a ring bounded by count **and** bytes, so a flood of failures (or of
//! long routes and tenant names) costs a fixed amount of memory. Each
//! text field is cut to [`MAX_FIELD_BYTES`]; the oldest records go first.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Mutex, PoisonError},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};

/// Most records kept.
pub const MAX_RECORDS: usize = 100;
/// Most bytes of text (routes, tenants, classes) kept in all.
pub const MAX_BYTES: usize = 32 * 1024;
/// Longest text field kept, bytes (cut at a character boundary).
pub const MAX_FIELD_BYTES: usize = 160;
/// Most distinct classes counted per source in `soma_errors_total`; later
/// ones are counted as `other`.
pub const MAX_COUNTED_CLASSES: usize = 64;

/// The labels of `soma_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ErrorLabels {
    source: &'static str,
    class: String,
}

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// An HTTP request answered 4xx or 5xx.
    Request {
        /// The status sent.
        status: u16,
    },
    /// A capsule call that failed (its answer may still have been 200).
    Call,
    /// A DAG node that failed for good (no retry left); `what` is
    /// `RUN/NODE`.
    Node,
}

impl ErrorSource {
    /// `request`, `call` or `node` (the Prometheus label).
    pub fn kind(self) -> &'static str {
        match self {
            Self::Request { .. } => "request",
            Self::Call => "call",
            Self::Node => "node",
        }
    }
}

/// One failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRecord {
    /// When, unix ms.
    pub time_ms: u64,
    /// A request or a call.
    pub source: ErrorSource,
    /// `METHOD /route/{template}` of a request, or the capsule's name.
    pub what: String,
    /// The tenant, when known (authenticated requests and calls).
    pub tenant: Option<String>,
    /// The error code (`rate-limited`, `not-found`, …) or failure class
    /// (`out-of-fuel`, `trap`, …).
    pub class: String,
}

impl ErrorRecord {
    fn bytes(&self) -> usize {
        self.what.len() + self.tenant.as_ref().map_or(0, String::len) + self.class.len()
    }
}

/// `s` cut to at most [`MAX_FIELD_BYTES`] at a character boundary.
fn cut(s: &str) -> String {
    if s.len() <= MAX_FIELD_BYTES {
        return s.to_owned();
    }
    let mut end = MAX_FIELD_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The ring, and the count of every failure since start by source and
/// class (exported as `soma_errors_total`, so dashboards do not depend on
/// the ring or the page). `Send + Sync`; one per daemon (in
/// [`super::Metrics`]).
#[derive(Debug, Default)]
pub struct RecentErrors {
    ring: Mutex<(VecDeque<ErrorRecord>, usize)>,
    counts: Family<ErrorLabels, Counter>,
    /// `(source, class)` pairs counted under their own class.
    classes: Mutex<HashSet<(&'static str, String)>>,
}

impl RecentErrors {
    /// Keep `record` (its fields cut), dropping the oldest past
    /// [`MAX_RECORDS`] or [`MAX_BYTES`]. Only on failures; cost: a short
    /// mutex section and up to three small allocations.
    pub fn record(
        &self,
        time_ms: u64,
        source: ErrorSource,
        what: &str,
        tenant: Option<&str>,
        class: &str,
    ) {
        let record = ErrorRecord {
            time_ms,
            source,
            what: cut(what),
            tenant: tenant.map(cut),
            class: cut(class),
        };
        self.count(source, &record.class);
        let size = record.bytes();
        let mut guard = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let (ring, bytes) = &mut *guard;
        while !ring.is_empty() && (ring.len() >= MAX_RECORDS || *bytes + size > MAX_BYTES) {
            if let Some(old) = ring.pop_front() {
                *bytes -= old.bytes();
            }
        }
        *bytes += size;
        ring.push_back(record);
    }

    /// Count one failure of `source` with `class` (bounded: past
    /// [`MAX_COUNTED_CLASSES`] classes of a source, `other`).
    fn count(&self, source: ErrorSource, class: &str) {
        let kind = source.kind();
        let known = {
            let mut classes = self.classes.lock().unwrap_or_else(PoisonError::into_inner);
            if classes.contains(&(kind, class.to_owned())) {
                true
            } else if classes.iter().filter(|(k, _)| *k == kind).count() < MAX_COUNTED_CLASSES {
                classes.insert((kind, class.to_owned()));
                true
            } else {
                false
            }
        };
        let class = if known { class } else { super::OTHER };
        self.counts
            .get_or_create(&ErrorLabels {
                source: kind,
                class: class.to_owned(),
            })
            .inc();
    }

    /// The counters of every failure by source and class, to register.
    pub(super) fn counts(&self) -> Family<ErrorLabels, Counter> {
        self.counts.clone()
    }

    /// The records kept, newest first. Copies at most [`MAX_RECORDS`].
    pub fn newest_first(&self) -> Vec<ErrorRecord> {
        let guard = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        guard.0.iter().rev().cloned().collect()
    }

    /// Bytes of text held now (≤ [`MAX_BYTES`]).
    pub fn bytes(&self) -> usize {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_within_count_and_bytes() {
        let ring = RecentErrors::default();
        for i in 0..(MAX_RECORDS as u64 + 20) {
            ring.record(
                i,
                ErrorSource::Request { status: 404 },
                "GET /v1/runs/{id}",
                Some("acme"),
                "not-found",
            );
        }
        let kept = ring.newest_first();
        assert_eq!(kept.len(), MAX_RECORDS);
        assert_eq!(kept[0].time_ms, MAX_RECORDS as u64 + 19, "newest first");
        assert_eq!(kept.last().map(|r| r.time_ms), Some(20));
        // Long fields are cut; the bytes bound holds before the count bound.
        let long = "é".repeat(10_000);
        for i in 0..MAX_RECORDS as u64 {
            ring.record(i, ErrorSource::Call, &long, Some(&long), &long);
        }
        assert!(ring.bytes() <= MAX_BYTES, "{}", ring.bytes());
        let kept = ring.newest_first();
        assert!(kept.len() < MAX_RECORDS, "{}", kept.len());
        assert!(kept[0].what.len() <= MAX_FIELD_BYTES);
        assert!(kept[0].what.chars().all(|c| c == 'é'));
        assert_eq!(
            kept.iter().map(ErrorRecord::bytes).sum::<usize>(),
            ring.bytes()
        );
    }
}
