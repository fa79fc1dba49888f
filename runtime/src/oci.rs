//! Capsules as OCI Wasm artifacts: [`push`] to and [`pull`] from a registry,
//! [`sign`] and [`verify_remote`] them cosign-style, and the verified,
//! content-addressed blob cache pulls land in.
//!
//! One module per concern, this file only declares them and re-exports what
//! the rest of the crate uses:
//!
//! - `reference`: [`Reference`], Soma's rules over `oci_client::Reference`.
//! - `auth`: [`Auth`], credentials and where they come from (flags, env,
//!   docker `config.json` and its credential helpers).
//! - `client`: the registry transport: [`Transport`], one `Session` per
//!   command, capped reads, retries with backoff
//!   on 5xx and connection errors only, error mapping.
//! - `token`: the registry's auth challenge and bearer token, fetched by
//!   Soma so the token reply is capped (oci-client reads it unbounded).
//! - `artifact`: the artifact format: media types, annotations, the manifest
//!   and config a push writes and the shape a pull accepts (the CNCF
//!   TAG-Runtime Wasm layout: an OCI image manifest whose config is
//!   `application/vnd.wasm.config.v0+json` and whose one layer is the
//!   component, `application/wasm`).
//! - `push`, `pull`: the two transfers; `cosign`: cosign's signature layout
//!   (the `sha256-<hex>.sig` manifest) for [`sign`] and for the signatures a
//!   pull checks. Whether those signatures are acceptable is decided in
//!   [`crate::verify`], not here.
//! - `cache`: the blob cache under `<data>/blobs/sha256/<hex>`, indexed in
//!   the node database (tables `blobs` and `blob_manifests`).
//!
//! Everything a registry sends is read through a cap ([`PullConfig`],
//! `[pull]` in `soma.toml`): the manifest (before it is parsed and before the
//! trust decision), each signature manifest and signature layer, the number
//! of signature layers examined, the component layer
//! (`validate.max_component_bytes`), bearer-token replies and error bodies. A
//! declared `Content-Length` over the cap is refused without reading the
//! body; a body that runs past the cap is cut off there.

mod artifact;
mod auth;
mod cache;
mod client;
mod cosign;
mod error;
mod pull;
mod push;
mod reference;
mod token;

pub use artifact::{
    ANNOTATION_KIND, ANNOTATION_NAME, CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE, MANIFEST_MEDIA_TYPE,
};
pub use auth::Auth;
pub use cache::{CachedBlob, GcReport, Pulled, cache_gc, cache_ls};
pub use client::{PullConfig, Transport};
pub use cosign::{
    SIGNATURE_ANNOTATION, SIGNATURE_LAYER_MEDIA_TYPE, sign, sign_with_limits, signature_tag,
    verify_remote, verify_remote_with_limits,
};
pub use error::OciError;
pub use pull::{PullOptions, pull};
pub use push::{PushOptions, push};
pub use reference::Reference;
