//! The capsule marketplace: authors submit signed capsules with a listing,
//! a review approves or rejects them, the operator publishes (countersigns)
//! them, and buyers install them by name and semver range, pinned in a
//! lockfile. The OCI registry stores the blobs; the node database stores
//! the catalog.
//!
//! ```text
//! listing.toml ──listing──▶ Listing (typed, validated)
//! author key ──store: register──▶ Author (namespace + public key)
//! file | ref ──submit: push, sign (author); accept: verify──▶ Submission (submitted)
//!   ──pipeline::review_submission──▶ approved | rejected | awaiting-approval (manual)
//!   ──publish: countersign (marketplace key); pipeline::index_submission──▶ published
//!   ──▶ yanked | deprecated; retest ──▶ under-maintenance ──▶ deprecated
//! author/name@range ──install: newest published match, pull, verify all-of──▶ soma.lock pin
//! market:author/name@range ──resolve (pin, else store)──▶ a pinned, verified capsule
//! ```

pub mod card; // the measured cost card: calls, success, latency, fuel, tokens, cost per call
pub mod error; // the marketplace's one error type
pub mod flow; // submit, publish, install, update: the flows that touch a registry
pub mod installs; // per-tenant pins: the daemon's soma.lock, one per tenant
pub mod listing; // listing.toml: the author's metadata and price
pub mod lock; // soma.lock: name → digest pins
pub mod pipeline; // submit → review → (approval) → index, and the nightly re-test
pub mod payouts; // payouts: per author and listing, recomputed from the ledger's fee splits
pub mod pricing; // prices in force: price changes with notice, the call path's price book
pub mod records; // the seam to storage: the marketplace tables on redb or on the shared PostgreSQL store
pub mod review; // the automated review: every step as evidence with a reason code
pub mod search; // search: full text with typo tolerance, facets, ranking over published listings
pub mod state; // a submitted version's states and the moves between them
pub mod store; // authors, submissions and versions in the node database
