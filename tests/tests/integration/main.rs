//! Cross-crate integration tests against the real capsules, one module per
//! area: the example capsules (`capsules`), frozen-contract capsules
//! (`compat`), the DAG scheduler (`dag`), token economics (`economics`),
//! host capabilities (`host_api`), hostile capsules (`hostile`), invalid
//! components (`invalid`), the `llm` capability (`llm_provider`), OCI push
//! and pull (`oci`), Python capsules (`python`), signing (`signing`) and
//! the shared PostgreSQL store (`store_pg`; the marketplace on it:
//! `market_pg`). One test binary: each file linked alone cost a ~220 MB
//! link (docs/ci.md).

mod capsules;
mod compat;
mod dag;
mod economics;
mod host_api;
mod hostile;
mod invalid;
mod llm_provider;
mod market_pg;
mod oci;
mod python;
mod signing;
mod store_pg;
