//! `[market]`: the capsule marketplace's own keys and install rules. The
//! marketplace countersigns published versions with its key (a second
//! cosign signature on the author's digest); install and `market:`
//! resolution require both signatures (`require = "all-of"`).
//!
//! ```toml
//! [market]
//! key = "/etc/soma/market.key"          # encrypted cosign key; publish only
//! public_key = "/etc/soma/market.pub"   # install, update, market: resolution
//! registry = "registry.example.com"     # where `soma market submit FILE` pushes
//! min_release_age_secs = 259200         # install cooldown (3 days); 0 = none
//! manual_approval = false               # a passed review waits for `soma market review approve`
//! max_component_bytes = 33554432        # the review's size limit (32 MiB)
//! max_concurrent_reviews = 2            # daemon: submissions reviewed at once
//! max_concurrent_installs = 4           # daemon: installs pulled at once
//! author_share_percent = 80             # each fee's author part; the rest is the platform's
//! price_notice_days = 14                # a price increase takes effect after this notice
//! max_billable_events_per_call = 100    # per-event: events past this in one call are free
//! max_billable_tokens_per_call = 32768  # per-1k-tokens: tokens past this in one call are free
//! price_refresh_secs = 10               # how often the call path's price book is reloaded
//! review_llm = "http://127.0.0.1:8100"  # OpenAI-compatible endpoint for the review's llm smoke runs
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The capsule marketplace (`[market]` in `soma.toml`). Every key is
/// optional: a node that never publishes needs no `key`; one that never
/// installs needs no `public_key`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MarketConfig {
    /// The marketplace's private signing key (cosign's encrypted PEM), used
    /// by `soma market publish`; its password comes from `$SOMA_PASSWORD`
    /// or a prompt. Default: none (publishing is refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The marketplace's public key (`.pub`): every installed or resolved
    /// marketplace capsule must carry its signature as well as its
    /// author's. Default: none (install and `market:` resolution are refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PathBuf>,
    /// Registry (`host[:port]`) `soma market submit FILE` pushes to when
    /// `--registry` is not given. Default: none (the flag is required).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Install cooldown: a version published less than this many seconds
    /// ago is passed over by range resolution (`install`, `update`,
    /// `market:NAME@RANGE` without a pin), protecting against a malicious
    /// fresh release. A pinned digest is never subject to it. Default 0.
    pub min_release_age_secs: u64,
    /// Marketplace policy: a version whose automated review passed waits
    /// (`awaiting-approval`) for a reviewer's `soma market review approve
    /// ID` before it can be published. Default false (a passed review
    /// approves).
    pub manual_approval: bool,
    /// The largest component the review accepts, bytes (its `size` step).
    /// Default 32 MiB.
    pub max_component_bytes: usize,
    /// The daemon's `POST /v1/market/submissions`: how many submissions it
    /// pulls and reviews at once, across all tenants; one past it is
    /// answered 429 with `Retry-After`. Default 2.
    pub max_concurrent_reviews: usize,
    /// The daemon's `POST /v1/market/installs`: how many installs (a pull
    /// and two signature checks each) it runs at once; one past it is
    /// answered 429 with `Retry-After`. Default 4.
    pub max_concurrent_installs: usize,
    /// The author's part of every marketplace fee, percent (0–100); the
    /// platform keeps the rest. Recorded with each fee, so changing it
    /// applies to fees charged afterwards only. Default 80.
    pub author_share_percent: u8,
    /// Days between announcing a price increase (`soma market price set`)
    /// and charging it; a decrease applies at once. Default 14.
    pub price_notice_days: u32,
    /// Per-event pricing: most billable events charged for one call (the
    /// worst case reserved before the call is this × the highest event
    /// price); later events are delivered but not charged. Default 100.
    pub max_billable_events_per_call: u32,
    /// Per-1k-tokens pricing: most LLM tokens charged for one call (the
    /// worst case reserved before the call); later tokens are not charged
    /// a fee (they are still charged as LLM tokens). Default 32768.
    pub max_billable_tokens_per_call: u64,
    /// How often a background thread reloads the call path's in-memory
    /// price book from the database (publications and price changes made
    /// by another process; at least 1); changes made by this process apply
    /// at once. Default 10.
    pub price_refresh_secs: u64,
    /// Base URL of the OpenAI-compatible endpoint the review's smoke runs
    /// (and `soma market retest`) give capsules that ask for llm, e.g. a
    /// marketplace-owned fixture or a cheap model. Default none: llm is
    /// denied to them, so an llm capsule's examples must cope without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_llm: Option<String>,
}

/// The review's default size limit, 32 MiB (the same as
/// `market::review::DEFAULT_MAX_COMPONENT_BYTES`).
pub const DEFAULT_MAX_COMPONENT_BYTES: usize = 32 * 1024 * 1024;

impl Default for MarketConfig {
    fn default() -> Self {
        Self {
            key: None,
            public_key: None,
            registry: None,
            min_release_age_secs: 0,
            manual_approval: false,
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
            max_concurrent_reviews: 2,
            max_concurrent_installs: 4,
            author_share_percent: 80,
            price_notice_days: 14,
            max_billable_events_per_call: 100,
            max_billable_tokens_per_call: 32_768,
            price_refresh_secs: 10,
            review_llm: None,
        }
    }
}

impl MarketConfig {
    /// Check the section without reading key files (`soma config check`).
    /// The message names the key.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=64).contains(&self.max_concurrent_reviews) {
            return Err("market.max_concurrent_reviews must be between 1 and 64".to_owned());
        }
        if !(1..=64).contains(&self.max_concurrent_installs) {
            return Err("market.max_concurrent_installs must be between 1 and 64".to_owned());
        }
        if let Some(registry) = &self.registry
            && (registry.is_empty() || registry.contains('/'))
        {
            return Err(format!(
                "market.registry {registry:?} must be a registry host[:port], without a repository"
            ));
        }
        if self.max_component_bytes == 0 {
            return Err("market.max_component_bytes must be above 0".to_owned());
        }
        if let Some(url) = &self.review_llm
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "market.review_llm {url:?} must be an http:// or https:// base URL of an OpenAI-compatible endpoint"
            ));
        }
        if self.author_share_percent > 100 {
            return Err(format!(
                "market.author_share_percent = {} must be 0–100",
                self.author_share_percent
            ));
        }
        Ok(())
    }
}
