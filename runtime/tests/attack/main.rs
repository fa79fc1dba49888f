//! Attacks on a real `soma daemon` process and the `soma` binary, one
//! module per class: the DAG ceilings (`dag`), the daemon's edge (`edge`),
//! capsules' outbound HTTP (`http`, in process), HTTP/2 (`http2`),
//! cross-tenant kv (`kv`), money (`money`), resources (`resources`), the
//! sandbox and crash edges (`sandbox`), secrets and their redaction
//! (`secrets`), the supply chain (`supply`). One test binary: linking each
//! class alone cost a ~220 MB link per file
//! (docs/ci.md).
//!
//! Many of these tests time another tenant's ordinary calls during the
//! attack (a bystander) or measure the daemon process (threads, RSS, file
//! descriptors); a test running next to them on a 2-core machine would be
//! measured instead of the attack. Every test here therefore takes one of
//! two guards first: [`alone`] for a test that measures, which then runs
//! with no other test of this binary, or [`shared`] for one that may run
//! beside other `shared` tests (never beside an `alone` one).

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

mod dag;
mod edge;
mod http;
mod http2;
mod kv;
mod money;
mod resources;
mod sandbox;
mod secrets;
mod supply;

static QUIET: RwLock<()> = RwLock::new(());

/// Run the calling test with no other test of this binary beside it (held
/// until the guard drops). For tests that time a bystander or measure the
/// daemon process.
fn alone() -> RwLockWriteGuard<'static, ()> {
    QUIET.write().unwrap_or_else(PoisonError::into_inner)
}

/// Let the calling test run beside other `shared` tests, but never beside
/// an [`alone`] one.
fn shared() -> RwLockReadGuard<'static, ()> {
    QUIET.read().unwrap_or_else(PoisonError::into_inner)
}
