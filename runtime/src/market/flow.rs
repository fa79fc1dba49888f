//! The marketplace flows that touch a registry: [`submit`] (push if
//! needed, sign as the author, verify against the registered key, record),
//! [`publish`] (countersign with the marketplace key, verify both), and
//! [`install`] / [`update`] (resolve a range, pull, verify author +
//! marketplace signatures with `require = "all-of"`, pin in `soma.lock`).
//! [`select`] is the resolution rule `market:` references share with them.

use std::{fmt, path::Path, str::FromStr};

use serde::Serialize;

use super::{
    error::MarketError,
    listing::Listing,
    lock::{Lockfile, Pin},
    store::{Market, NewSubmission, Submission, SubmissionState, now_ms},
};
use crate::{
    Engine,
    config::market::MarketConfig,
    digest::Digest,
    oci::{self, Auth, OciError, PullConfig, PullOptions, PushOptions, Reference, Transport},
    store::DataDir,
    verify::{KeyPair, PublicKey, TrustPolicy},
};

/// Which version of a marketplace capsule: a semver range (resolved to
/// the newest published match) or a manifest digest (a pin: resolves even
/// when yanked or deprecated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `^1`, `~1.2`, `>=1, <2`, `*`, …
    Range(semver::VersionReq),
    /// `sha256:…`: one published version, whatever its state now.
    Digest(Digest),
}

impl FromStr for Selector {
    type Err = MarketError;

    /// `sha256:<hex>` is a digest; anything else a semver range. Cost: a parse.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.starts_with("sha256:") {
            return text
                .parse::<Digest>()
                .map(Self::Digest)
                .map_err(|_| MarketError::BadName {
                    text: text.to_owned(),
                    reason: "the digest must be sha256:<64 lowercase hex digits>".into(),
                });
        }
        semver::VersionReq::parse(text)
            .map(Self::Range)
            .map_err(|source| MarketError::BadRange {
                text: text.to_owned(),
                source,
            })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Range(r) => write!(f, "{r}"),
            Self::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// Split `author/name[@selector]` (no selector: any version, `*`).
pub fn parse_name(text: &str) -> Result<(String, Selector), MarketError> {
    let (name, selector) = match text.split_once('@') {
        Some((name, selector)) => (name, selector.parse()?),
        None => (text, Selector::Range(semver::VersionReq::STAR)),
    };
    super::listing::check_name(name).map_err(|reason| MarketError::BadName {
        text: text.to_owned(),
        reason,
    })?;
    Ok((name.to_owned(), selector))
}

/// How a flow reaches registries: the transport, and credentials (else
/// docker's config.json for the registry in question, else anonymous).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// https unless loopback, `--insecure`, `--ca-file`.
    pub transport: Transport,
    /// Credentials for every registry, if given.
    pub auth: Option<Auth>,
    /// Caps on what a registry may send (`[pull]`).
    pub limits: PullConfig,
}

impl Access {
    /// The credentials for `reference`: the given ones, else docker's
    /// config.json for its registry, else anonymous.
    pub fn auth(&self, reference: &Reference) -> Result<Auth, OciError> {
        match &self.auth {
            Some(a) => Ok(a.clone()),
            None => Auth::from_docker_config(reference.registry()),
        }
    }
}

/// What `submit` is given: a component file (pushed) or a reference already in a registry.
#[derive(Debug, Clone)]
pub enum Artifact<'a> {
    /// A component file; pushed to `registry/author/name:version`.
    File {
        /// The file.
        path: &'a Path,
        /// `host[:port]` to push to.
        registry: &'a str,
    },
    /// Already pushed.
    Reference(Reference),
}

/// What [`submit`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Submitted {
    /// The stored submission.
    pub submission: Submission,
    /// False when the same version and component were already submitted (nothing changed).
    pub created: bool,
    /// Whether the component was pushed by this call.
    pub pushed: bool,
}

/// Submit `listing` with `artifact`, signed by `key` as the listing's
/// author: push (if a file), sign, then [`accept`]. Refused before
/// anything is pushed when the key is not the namespace author's
/// registered key, or the version exists with another component.
/// Cost: a compile (push), one push, one signature upload, one pull.
pub fn submit(
    engine: &Engine,
    market: &Market,
    listing: Listing,
    artifact: Artifact<'_>,
    key: &KeyPair,
    access: &Access,
) -> Result<Submitted, MarketError> {
    market.check_signer(listing.author(), &key.public())?;
    let id = listing.id();
    let (reference, pushed) = match artifact {
        Artifact::File { path, registry } => {
            let bytes = std::fs::read(path).map_err(|source| {
                MarketError::Oci(OciError::Invalid(crate::LoadError::Read {
                    path: path.to_owned(),
                    error: source,
                }))
            })?;
            let component = Digest::of(&bytes);
            if let Some(existing) = market.get(&id)? {
                if existing.component == component {
                    return Ok(Submitted {
                        submission: existing,
                        created: false,
                        pushed: false,
                    });
                }
                return Err(MarketError::VersionImmutable {
                    id,
                    existing: existing.component,
                    given: component,
                });
            }
            let reference =
                Reference::parse(&format!("{registry}/{}:{}", listing.name, listing.version))?;
            let options = PushOptions {
                source: listing.source.clone(),
                transport: access.transport.clone(),
            };
            oci::push(
                engine,
                &bytes,
                &reference,
                &access.auth(&reference)?,
                &options,
            )?;
            (reference, true)
        }
        Artifact::Reference(reference) => (reference, false),
    };
    let auth = access.auth(&reference)?;
    let digest = oci::sign_with_limits(&reference, &auth, key, &access.transport, &access.limits)?;
    let mut submitted = accept(
        engine,
        market,
        listing,
        reference.with_digest(digest),
        access,
    )?;
    submitted.pushed = pushed;
    Ok(submitted)
}

/// Record `listing` for a component its author has already pushed to
/// `reference` and signed with the key registered for the listing's author
/// namespace: verifies that signature by a real pull (which caches the
/// component), refuses a version that exists with another component
/// ([`MarketError::VersionImmutable`]), is a no-op for the same one.
/// A reference without a digest is resolved once by the pull; the record
/// pins the digest the signature was verified on. A missing or foreign
/// signature is [`MarketError::AuthorSignature`] (nothing is recorded).
/// Cost: one read transaction, one pull (manifest, signatures, layer;
/// offline when the digest is cached under the author's key), one durable
/// write transaction.
pub fn accept(
    engine: &Engine,
    market: &Market,
    listing: Listing,
    reference: Reference,
    access: &Access,
) -> Result<Submitted, MarketError> {
    let author = market.author(listing.author())?;
    let auth = access.auth(&reference)?;
    let options = PullOptions {
        transport: access.transport.clone(),
        trust: TrustPolicy::keys(vec![author.key()?]),
        limits: access.limits,
        ..PullOptions::from_config(engine.config())
    };
    let pulled = match oci::pull(engine.data(), &reference, &auth, &options) {
        Ok(p) => p,
        Err(OciError::Untrusted(source)) => {
            return Err(MarketError::AuthorSignature {
                reference: reference.to_string(),
                author: author.name,
                key_id: author.key_id,
                source: Box::new(source),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let (submission, created) = market.submit(NewSubmission {
        listing,
        repository: reference.repository_path(),
        digest: pulled.manifest_digest,
        component: pulled.layer_digest,
        size: pulled.size,
    })?;
    Ok(Submitted {
        submission,
        created,
        pushed: false,
    })
}

/// The marketplace's public key from `[market] public_key`.
pub fn market_public_key(config: &MarketConfig) -> Result<PublicKey, MarketError> {
    let path = config
        .public_key
        .as_ref()
        .ok_or(MarketError::NotConfigured {
            key: "public_key",
            why: "install and market: resolution require the marketplace's signature",
        })?;
    Ok(PublicKey::load(path)?)
}

/// The trust policy a published version is pulled under: its author's
/// registered key *and* the marketplace key (`require = "all-of"`).
/// Cost: parsing two keys (the marketplace's read from disk).
pub fn trust(
    market: &Market,
    submission: &Submission,
    config: &MarketConfig,
) -> Result<TrustPolicy, MarketError> {
    let author = market.author(&submission.author)?.key()?;
    Ok(TrustPolicy::all_of(
        vec![author, market_public_key(config)?],
        "market (author + marketplace, all-of)",
    ))
}

/// Publish the approved version `id`: countersign its digest with
/// `market_key` (a second cosign signature), verify that both the author's
/// and the marketplace's signatures are there, and mark it published.
/// Publishing a published version again is a no-op. Cost: a signature
/// upload and a remote verification (no layer download).
pub fn publish(
    market: &Market,
    id: &str,
    market_key: &KeyPair,
    access: &Access,
) -> Result<Submission, MarketError> {
    let submission = market
        .get(id)?
        .ok_or_else(|| MarketError::NoSuchVersion { id: id.to_owned() })?;
    if submission.state.is_listed() {
        return Ok(submission);
    }
    if submission.state != SubmissionState::Approved {
        // The state machine says why (and what to do).
        return market.transition(id, SubmissionState::Published, None, |_| {});
    }
    let reference = Reference::parse(&submission.pinned_reference())?;
    let auth = access.auth(&reference)?;
    oci::sign_with_limits(
        &reference,
        &auth,
        market_key,
        &access.transport,
        &access.limits,
    )?;
    let policy = TrustPolicy::all_of(
        vec![
            market.author(&submission.author)?.key()?,
            market_key.public(),
        ],
        "market publish (author + marketplace, all-of)",
    );
    oci::verify_remote_with_limits(
        &reference,
        &auth,
        &policy,
        &access.transport,
        &access.limits,
    )?;
    market.transition(
        id,
        SubmissionState::Published,
        Some(format!("countersigned by {}", market_key.public().id())),
        |_| {},
    )
}

/// Pick the version `name` + `selector` means: a digest is looked up among
/// published versions (yanked and deprecated included); a range uses the
/// lockfile's pin when `lock` has one for `name` (refused if the pin is
/// outside the range), else the newest published match at least
/// `min_age_ms` old. Cost: a lockfile read and one read transaction.
pub fn select(
    market: &Market,
    name: &str,
    selector: &Selector,
    lock: Option<&Path>,
    min_age_ms: u64,
) -> Result<Submission, MarketError> {
    match selector {
        Selector::Digest(d) => market.by_digest(name, d),
        Selector::Range(range) => {
            if let Some(path) = lock
                && let Some(pin) = Lockfile::load(path)?.capsules.get(name)
            {
                let pinned =
                    semver::Version::parse(&pin.version).map_err(|e| MarketError::Lock {
                        path: path.to_owned(),
                        message: format!("the pin of `{name}` has version {:?}", pin.version),
                        source: Some(e.into()),
                    })?;
                if !range.matches(&pinned) {
                    return Err(MarketError::PinOutsideRange {
                        path: path.to_owned(),
                        name: name.to_owned(),
                        pinned: pin.version.clone(),
                        range: range.to_string(),
                    });
                }
                return market.by_digest(name, &pin.digest);
            }
            market.newest(name, range, min_age_ms, now_ms())
        }
    }
}

/// Pull `submission` into the blob cache of `data`, verified by its
/// author's and the marketplace's keys. Cost: a pull (offline when the
/// digest is cached with both keys' admission).
pub fn fetch(
    data: &DataDir,
    engine_config: &crate::Config,
    market: &Market,
    submission: &Submission,
    access: &Access,
) -> Result<oci::Pulled, MarketError> {
    let reference = Reference::parse(&submission.pinned_reference())?;
    let options = PullOptions {
        transport: access.transport.clone(),
        trust: trust(market, submission, &engine_config.market)?,
        limits: access.limits,
        ..PullOptions::from_config(engine_config)
    };
    Ok(oci::pull(
        data,
        &reference,
        &access.auth(&reference)?,
        &options,
    )?)
}

/// What [`install`] or [`update`] did to one pin.
#[derive(Debug, Clone, Serialize)]
pub struct Installed {
    /// `author/name`.
    pub name: String,
    /// The pin now in the lockfile.
    pub pin: Pin,
    /// The version pinned before, if any.
    pub previous: Option<String>,
    /// Whether the component came from the cache.
    pub cached: bool,
}

fn pin_of(submission: &Submission, range: &semver::VersionReq) -> Pin {
    Pin {
        range: range.to_string(),
        version: submission.listing.version.to_string(),
        digest: submission.digest,
        component: submission.component,
        reference: submission.pinned_reference(),
    }
}

/// Install `name@range`: the newest published, non-yanked match (subject to
/// `[market] min_release_age_secs`), pulled and verified (author +
/// marketplace, all-of), pinned in the lockfile at `lock` (created if
/// missing). Cost: a pull and a lockfile write.
pub fn install(
    data: &DataDir,
    config: &crate::Config,
    market: &Market,
    name: &str,
    range: &semver::VersionReq,
    lock: &Path,
    access: &Access,
) -> Result<Installed, MarketError> {
    let min_age = config.market.min_release_age_secs.saturating_mul(1000);
    let submission = market.newest(name, range, min_age, now_ms())?;
    let pulled = fetch(data, config, market, &submission, access)?;
    let mut lockfile = Lockfile::load(lock)?;
    let pin = pin_of(&submission, range);
    let previous = lockfile
        .capsules
        .insert(name.to_owned(), pin.clone())
        .map(|p| p.version);
    lockfile.save(lock)?;
    Ok(Installed {
        name: name.to_owned(),
        pin,
        previous,
        cached: pulled.cached,
    })
}

/// Move every pin in `lock` (or only `only`) to the newest published
/// version within its recorded range; a pin already newest is left as it
/// is (reported with `previous` equal to its version). Cost: one pull
/// per moved pin, one lockfile write.
pub fn update(
    data: &DataDir,
    config: &crate::Config,
    market: &Market,
    lock: &Path,
    only: Option<&str>,
    access: &Access,
) -> Result<Vec<Installed>, MarketError> {
    let mut lockfile = Lockfile::load(lock)?;
    let min_age = config.market.min_release_age_secs.saturating_mul(1000);
    let mut out = Vec::new();
    let names: Vec<String> = lockfile
        .capsules
        .keys()
        .filter(|n| only.is_none_or(|o| o == n.as_str()))
        .cloned()
        .collect();
    if let Some(only) = only
        && names.is_empty()
    {
        return Err(MarketError::Lock {
            path: lock.to_owned(),
            message: format!("pins no `{only}`; run `soma market install {only}@RANGE` first"),
            source: None,
        });
    }
    for name in names {
        let Some(old) = lockfile.capsules.get(&name).cloned() else {
            continue;
        };
        let range =
            semver::VersionReq::parse(&old.range).map_err(|source| MarketError::BadRange {
                text: old.range.clone(),
                source,
            })?;
        let submission = market.newest(&name, &range, min_age, now_ms())?;
        let cached = if submission.digest == old.digest {
            true
        } else {
            fetch(data, config, market, &submission, access)?.cached
        };
        let pin = pin_of(&submission, &range);
        lockfile.capsules.insert(name.clone(), pin.clone());
        out.push(Installed {
            name,
            pin,
            previous: Some(old.version),
            cached,
        });
    }
    lockfile.save(lock)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_selectors_parse() {
        let (name, s) = parse_name("acme/calc@^1.2").expect("range");
        assert_eq!(name, "acme/calc");
        assert_eq!(
            s,
            Selector::Range(semver::VersionReq::parse("^1.2").expect("req"))
        );
        let d = Digest::of(b"x");
        assert_eq!(
            parse_name(&format!("acme/calc@{d}")).expect("digest").1,
            Selector::Digest(d)
        );
        assert_eq!(parse_name("acme/calc").expect("any").1.to_string(), "*");
        assert!(matches!(
            parse_name("acme/calc@nope"),
            Err(MarketError::BadRange { .. })
        ));
        assert!(matches!(
            parse_name("calc@1"),
            Err(MarketError::BadName { .. })
        ));
    }
}
