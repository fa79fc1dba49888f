//! The Soma runtime: runs task capsules (WebAssembly components implementing
//! `soma:capsule`) under hard limits.
//!
//! The pipeline of one capsule call, in module order (after the three
//! foundations: config, store, digest):
//!
//! ```text
//! CapsuleRef ──resolve──▶ Resolved (pinned, verified, loaded): the one path, driving ↓
//!   file ─────────────────────────────────────────────────────────────▶ bytes
//!   registry ref ──oci: pull (tag → manifest digest)──▶ verify: trust policy ──▶ verified blob cache ──▶ bytes
//!   catalog name ──the daemon's catalog (or the blob cache by digest)──▶ Capsule
//! bytes ──validate──▶ bounded structure
//!       ──engine: compile / AOT cache──▶ Component ──capsule: link──▶ Capsule (InstancePre + describe())
//!       ──call: Store + limits + grants──▶ instantiate, run(input) ──▶ Outcome (output | Failure, Usage)
//!       ──meter: budgets (reserve → settle) + ledger──▶ durable charges
//! DAG spec ──dag: validate, schedule, journal──▶ many calls, durable and resumable
//! ```

pub mod config; // operator configuration: one typed tree (`soma.toml`)
pub mod store; // the data directory: redb database, blob cache and AOT cache paths
pub mod digest; // content addresses: sha256 of a component's bytes
pub mod names; // typed names: the enums whose values scripts and journals know by name
pub mod resolve; // resolve: CapsuleRef + trust policy → a pinned, verified, loaded capsule (the one path)
pub mod market; // the capsule marketplace: listings, authors, submissions, publishing, install pins
pub mod oci; // pull: capsules as OCI Wasm artifacts in registries; the verified blob cache
pub mod verify; // verify: cosign-compatible keys and signatures; the trust policy
pub mod validate; // validate: structural bounds checked before anything is compiled
pub mod limits; // per-call limits and the ResourceLimiter that enforces them
pub mod failure; // how a call can fail: one Failure per cause, its FailureClass
pub mod engine; // compile: wasmtime engine, pooling, fuel/epoch, ticker, AOT cache, capsule cache
pub mod capsule; // a loaded capsule: compiled, linked, described
pub mod host; // per-call store data composing every capability's state
pub mod call; // instantiate + run: one call under limits and grants, the failure classified → Outcome
pub mod load; // compile + link + describe() → Capsule, cached per digest (Engine::load)
pub mod analytics; // analytics: the event schema, the durable outbox, the embedded rollup store
pub mod ledger; // meter: durable, idempotent ledger of every charge: entries, daily rollups, bills, forecasts
pub mod budget; // meter: budgets per tenant/capsule/run/node: reserve → settle
pub mod meter; // meter: the llm Meter over budgets + ledger; fuel and wall-time charges
pub mod dag; // DAG runs: spec, templates, the durable scheduler
pub mod temporal; // DAG runs on Temporal: the workflow, the call activities, the client
pub mod telemetry; // tracing + OpenTelemetry export
pub mod daemon; // the multi-tenant service: REST + SSE, tokens, TLS, admission, metrics

pub use call::{CallOptions, Failure, FailureClass, Outcome, Usage};
pub use capsule::{Capsule, LoadError, Manifest};
pub use config::Config;
pub use digest::Digest;
pub use engine::{Engine, EngineError};
pub use limits::Limits;
pub use resolve::{CapsuleRef, ResolveError, Resolved, Resolver};
