//! The `/v1/market` routes as types: one request and one response type per
//! route (see [`crate::daemon::market`] for who may call what). Records the
//! marketplace library already defines (a submission, a listing's price, a
//! search answer) cross as those library types.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

pub use crate::market::search::SearchAnswer;
use crate::market::{
    installs::TenantPin,
    listing::{Example, Price},
    store::{Author, Submission},
};

/// `POST /v1/market/authors`: register an author namespace for the
/// caller's tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorRequest {
    /// The namespace: 1–39 lowercase letters, digits or '-'.
    pub name: String,
    /// The author's public key, PEM (SPKI; cosign's `.pub`).
    pub public_key: String,
    /// Proof of possession: the key's signature (base64, ECDSA P-256 over
    /// SHA-256, as `soma keygen` keys sign) over
    /// `soma-market-author-v1\n<name>\n<tenant>\n`, `<tenant>` being the
    /// caller's tenant.
    pub proof: String,
}

/// An author namespace (`POST /v1/market/authors`, `GET /v1/market/authors/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuthorView {
    /// The namespace.
    pub name: String,
    /// The registered key's id (`sha256:` of its DER).
    pub key_id: String,
    /// The public key, PEM.
    pub public_key: String,
    /// When it was registered (Unix ms).
    pub registered_ms: u64,
    /// Whether the caller's tenant owns it (may submit into it).
    pub yours: bool,
    /// The owning tenant: shown to that tenant and to operators only
    /// (`null` for an operator-owned namespace, or when not shown).
    pub tenant: Option<String>,
}

impl AuthorView {
    /// The view of `author` for a caller of `tenant` (`operator`: sees the owner).
    pub fn of(author: Author, tenant: &str, operator: bool) -> Self {
        let yours = author.tenant.as_deref() == Some(tenant);
        Self {
            name: author.name,
            key_id: author.key_id,
            public_key: author.public_key,
            registered_ms: author.registered_ms,
            yours,
            tenant: if yours || operator {
                author.tenant
            } else {
                None
            },
        }
    }
}

/// The JSON form of `listing.toml` (the README inline).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListingBody {
    /// `author/name`.
    pub name: String,
    /// Semver version; immutable once submitted.
    pub version: String,
    /// One line.
    pub summary: String,
    /// The README, Markdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readme: Option<String>,
    /// Search keywords.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Categories.
    #[serde(default)]
    pub categories: Vec<String>,
    /// SPDX license expression.
    pub license: String,
    /// Source repository URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Example inputs the review runs: `[{"input": …, "name"?: …}]`.
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub examples: Vec<Example>,
    /// The price: `{"model": "free"}`, `{"model": "per-call", "micros": N}`,
    /// `{"model": "per-1k-tokens", "micros": N}` or
    /// `{"model": "per-event", "events": {NAME: N}}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub price: Price,
}

/// `POST /v1/market/submissions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmissionRequest {
    /// The listing.
    pub listing: ListingBody,
    /// The registry reference the author already pushed and signed with the
    /// namespace's registered key (`soma push --sign`), tag or digest.
    pub reference: String,
}

/// A submission as a caller may see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubmissionView {
    /// `author/name@version`.
    pub id: String,
    /// Whether the caller's tenant owns the namespace (it then sees every
    /// state and the review's evidence).
    pub yours: bool,
    /// The record: listing, digests, state, review (its `evidence` is
    /// `null` for other tenants), history.
    #[schema(value_type = Object)]
    pub submission: Submission,
}

/// `POST /v1/market/submissions` → 201 (200 when the same version and
/// component were already submitted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubmittedView {
    /// `author/name@version`.
    pub id: String,
    /// False when this version was already submitted with this component.
    pub created: bool,
    /// The record after the review.
    #[schema(value_type = Object)]
    pub submission: Submission,
    /// The review's report (every step, with its reason code), when it ran.
    #[schema(value_type = Option<Object>)]
    pub review: Option<Value>,
}

/// `GET /v1/market/submissions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubmissionsQuery {
    /// Only versions of this capsule (`author/name`).
    pub name: Option<String>,
}

/// The optional body of publish, yank and deprecate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateChangeRequest {
    /// Why (kept in the version's history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/market/search`. Every filter may be repeated (`category=a&category=b`:
/// any of them) or comma-separated; different filters must all hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Words to find in names, keywords, summaries and READMEs (typos
    /// tolerated; the last word also matches as a prefix).
    pub q: Option<String>,
    /// Category.
    pub category: Option<String>,
    /// Capsule kind: worker, planner, gate.
    pub kind: Option<String>,
    /// Price model: free, per-call, per-1k-tokens, per-event.
    pub price: Option<String>,
    /// SPDX license id.
    pub license: Option<String>,
    /// Imported interface (`ns:pkg/iface@ver`, `ns:pkg`).
    pub imports: Option<String>,
    /// Exported interface.
    pub exports: Option<String>,
    /// Capability (`llm` matches `llm:small`).
    pub capability: Option<String>,
    /// Review status: verified, under-maintenance, unreviewed.
    pub review: Option<String>,
    /// Hits to return (0: counts only; at most 100; default 20).
    pub limit: Option<usize>,
    /// Hits to skip (at most 1000).
    pub offset: Option<usize>,
}

/// One version of a listing (`GET /v1/market/listings/{author}/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListingVersion {
    /// The semver version.
    pub version: String,
    /// published, yanked or deprecated.
    pub state: String,
    /// The manifest digest both signatures are on.
    pub digest: String,
    /// The component digest.
    pub component: String,
    /// `registry/author/name@sha256:…`.
    pub reference: String,
    /// When the marketplace published it (Unix ms).
    pub published_ms: Option<u64>,
    /// The measured cost card of this version (`market::card::CostCard`:
    /// calls, success rate, p50/p95 latency, fuel, tokens, cost per call
    /// over the last 30 UTC days on this node); `null` if the ledger could
    /// not be read. Measured, never estimated.
    #[schema(value_type = Option<Object>)]
    pub cost_card: Option<Value>,
}

/// `GET /v1/market/listings/{author}/{name}`: a listing's published
/// versions (yanked and deprecated included, marked), and the metadata of
/// the newest of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListingView {
    /// `author/name`.
    pub name: String,
    /// The namespace.
    pub author: String,
    /// The newest published version's listing (summary, README, keywords,
    /// categories, license, source, examples, price).
    #[schema(value_type = Object)]
    pub listing: crate::market::listing::Listing,
    /// Every version the marketplace published, oldest first.
    pub versions: Vec<ListingVersion>,
}

/// `POST /v1/market/installs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallRequest {
    /// `author/name[@semver-range]` (`acme/summarize@^1`), or
    /// `author/name@sha256:…` for one published version.
    pub name: String,
}

/// One of the caller's installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstallView {
    /// `author/name`: what `market:author/name[@range]` in this tenant's
    /// DAG specs resolves through.
    pub name: String,
    /// The range it was installed with.
    pub range: String,
    /// The pinned version.
    pub version: String,
    /// The manifest digest (author + marketplace signed).
    pub digest: String,
    /// The component digest.
    pub component: String,
    /// `registry/author/name@sha256:…`.
    pub reference: String,
    /// When it was pinned (Unix ms).
    pub installed_ms: u64,
}

impl From<TenantPin> for InstallView {
    fn from(p: TenantPin) -> Self {
        Self {
            name: p.name,
            range: p.pin.range,
            version: p.pin.version,
            digest: p.pin.digest.to_string(),
            component: p.pin.component.to_string(),
            reference: p.pin.reference,
            installed_ms: p.installed_ms,
        }
    }
}

/// `POST /v1/market/installs` → 201.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstalledView {
    /// The pin now in force for the caller's tenant.
    pub install: InstallView,
    /// The version pinned before, if any.
    pub previous: Option<String>,
    /// Whether the component came from the node's blob cache.
    pub cached: bool,
}

/// `GET /v1/market/payouts`'s query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PayoutsQuery {
    /// The month, `YYYY-MM` (UTC).
    pub month: String,
    /// Only this author namespace (one the caller's tenant owns).
    pub author: Option<String>,
}
