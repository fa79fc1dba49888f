//! What the marketplace tests share: keys saved the way `soma keygen`
//! saves them, an author's push + sign, the proof-of-possession body
//! `POST /v1/market/authors` takes, and a priced version published
//! straight into a market store.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use soma_runtime::{
    Digest,
    config::{Allocator, Metering},
    market::{
        listing::Listing,
        store::{Market, NewSubmission, SubmissionState, author_statement},
    },
    oci::{self, Auth, PushOptions, Reference},
    verify::KeyPair,
};

use crate::{TestEngine, registry::Registry};

/// A fresh key pair saved as `dir/NAME.key` (encrypted with `password`) +
/// `dir/NAME.pub`.
pub fn keypair(dir: &Path, name: &str, password: &str) -> (KeyPair, PathBuf, PathBuf) {
    let key = KeyPair::generate();
    let (private, public) = key
        .save(&dir.join(name), password.as_bytes())
        .expect("save key");
    (key, private, public)
}

/// Push `component` to `registry/repo:tag` and sign it with `key`, as an
/// author does before submitting (`soma push` + `soma sign`). Returns the
/// reference.
pub fn push_signed(
    registry: &Registry,
    repo: &str,
    tag: &str,
    component: &str,
    key: &KeyPair,
) -> String {
    let engine = TestEngine::new(crate::config(Allocator::OnDemand, Metering::Fuel));
    let reference =
        Reference::parse(&format!("{}/{repo}:{tag}", registry.host())).expect("reference");
    let bytes = std::fs::read(component).expect("component");
    oci::push(
        &engine.engine,
        &bytes,
        &reference,
        &Auth::Anonymous,
        &PushOptions::default(),
    )
    .expect("push");
    oci::sign(&reference, &Auth::Anonymous, key, &Default::default()).expect("sign");
    reference.to_string()
}

/// The `POST /v1/market/authors` body registering `name` with `key`,
/// proving possession for `tenant`.
pub fn author_body(name: &str, key: &KeyPair, tenant: &str) -> Value {
    json!({
        "name": name,
        "public_key": key.public().to_pem().expect("pem"),
        "proof": key.sign(author_statement(name, Some(tenant)).as_bytes()),
    })
}

/// Publish `component` (a capsule file) as `author/name@version` priced by
/// `price` (a TOML `[price]` table body), writing the market store directly
/// (submit → review passed → published): for tests about fees, not about
/// publishing. Its component digest.
pub fn publish_priced(
    market: &Market,
    name: &str,
    version: &str,
    component: &str,
    price: &str,
) -> Digest {
    let bytes = std::fs::read(component).expect("component");
    let digest = Digest::of(&bytes);
    let listing = Listing::parse(
        &format!(
            "name = \"{name}\"\nversion = \"{version}\"\nsummary = \"s\"\nlicense = \"MIT\"\n[price]\n{price}\n"
        ),
        Path::new("listing.toml"),
    )
    .expect("listing");
    let id = listing.id();
    market
        .submit(NewSubmission {
            listing,
            repository: format!("127.0.0.1:1/{name}"),
            digest,
            component: digest,
            size: bytes.len() as u64,
        })
        .expect("submit");
    market
        .record_review(&id, true, Vec::new(), Value::Null)
        .expect("review");
    market
        .transition(&id, SubmissionState::Published, None, |_| {})
        .expect("publish");
    digest
}
