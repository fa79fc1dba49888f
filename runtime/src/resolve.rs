//! Resolve: a [`CapsuleRef`] and the trust policy → a [`Resolved`] capsule,
//! digest-pinned, verified and loaded. This is the one path from a reference
//! to a loaded capsule: `soma run`, `soma inspect`, `soma dag run | resume |
//! validate` and the daemon (its configured catalog, `POST /v1/capsules/pull`,
//! runs by catalog name and the DAG runs it resumes) all call
//! [`Resolver::resolve`], so they share its rules, its error type
//! ([`ResolveError`]) and its printed form ([`CapsuleRef`]'s `Display`).
//!
//! | form | printed | found by | verification |
//! |------|---------|----------|--------------|
//! | [`CapsuleRef::File`] | `/abs/calc.wasm`, `./calc`, `calc.wasm`, `calc`, `file:dir/calc` | the search path (a spec's directory, then each `--capsule-path`), else as given | none: a file on this machine is the operator's own |
//! | [`CapsuleRef::Oci`] | `host[:port]/repo[:tag][@sha256:…]` (or `oci://…`) | [`crate::oci::pull`] into the blob cache | the trust policy, before anything is downloaded |
//! | [`CapsuleRef::Catalog`] | `catalog:NAME[@sha256:…]` | a [`Catalog`] (the daemon's), then the blob cache by digest | when it entered the catalog or the cache |
//! | [`CapsuleRef::Market`] | `market:acme/summarize[@^1 \| @sha256:…]` | the `soma.lock` pin (`--lock`, else beside the spec / on the search path, else `./soma.lock`), else the newest published match in the node's marketplace ([`crate::market`]) | author + marketplace keys, `all-of` |
//!
//! A tag is pinned on typed values: the manifest digest the pull resolved
//! becomes [`crate::oci::Reference::with_digest`], so what a run journals
//! and a resume pulls is `host/repo@sha256:…`, never the tag again.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
};

use crate::{
    Capsule, Engine, LoadError,
    capsule::Manifest,
    digest::Digest,
    market::{
        error::MarketError,
        flow::{self as market_flow, Access, Selector},
        lock::Lockfile,
        store::Market,
    },
    oci::{self, Auth, OciError, PullOptions, Reference, Transport},
    verify::{Admission, TrustPolicy, VerifyError},
};

/// Prefix of a catalog name's printed form (`catalog:calculator`).
const CATALOG_PREFIX: &str = "catalog:";
/// Prefix of a marketplace name (`market:acme/summarize@^1`).
const MARKET_PREFIX: &str = "market:";
/// Prefix that makes any path a file reference (`file:dir/calc`).
const FILE_PREFIX: &str = "file:";
/// Prefix that makes a registry reference explicit (`oci://host/repo:1.wasm`),
/// as Helm writes OCI chart references.
const OCI_PREFIX: &str = "oci://";

/// Where a capsule comes from, before it is resolved.
///
/// The printed form (`Display`) parses back (`FromStr`) to the same value
/// (for paths that are valid UTF-8); see the module table for the forms.
/// `FromStr` is pure: it reads no disk. [`Resolver::parse`] adds the one
/// rule that does — an existing file wins over a registry reference of the
/// same spelling (`dir/calc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapsuleRef {
    /// A component file on this machine; relative paths are looked up on the
    /// resolver's search path.
    File(PathBuf),
    /// An OCI Wasm artifact in a registry, by tag or by manifest digest.
    Oci(Reference),
    /// A capsule a daemon serves by name; with `digest`, the one a run pinned
    /// (the component's digest), even after a re-pull replaced it.
    Catalog {
        /// The catalog name requests use.
        name: String,
        /// The component digest a run pinned, if any.
        digest: Option<Digest>,
    },
    /// A marketplace capsule by `author/name` and a semver range (or, once
    /// pinned, the manifest digest a run resolved it to).
    Market {
        /// `author/name`.
        name: String,
        /// Which version: a range, or a pinned digest.
        selector: Selector,
    },
}

impl CapsuleRef {
    /// A catalog name, not pinned to a digest.
    pub fn catalog(name: impl Into<String>) -> Self {
        Self::Catalog {
            name: name.into(),
            digest: None,
        }
    }
}

/// Whether `text` reads as a path whatever else it could be.
fn looks_like_path(text: &str) -> bool {
    Path::new(text).is_absolute()
        || text.ends_with(".wasm")
        || text == "."
        || text == ".."
        || text.starts_with("./")
        || text.starts_with("../")
}

/// Whether `text` parses back as `CapsuleRef::File(text)` without a prefix.
fn bare_file(text: &str) -> bool {
    !text.is_empty()
        && ![CATALOG_PREFIX, FILE_PREFIX, OCI_PREFIX, MARKET_PREFIX]
            .iter()
            .any(|p| text.starts_with(p))
        && (looks_like_path(text) || (!text.contains('/') && !text.contains('@')))
}

impl FromStr for CapsuleRef {
    type Err = ResolveError;

    /// Parse the printed form, in this order: `catalog:NAME[@sha256:…]`;
    /// `file:PATH`; `oci://REFERENCE`; a path (absolute, `./…`, `../…` or
    /// ending in `.wasm`); a bare name without `/` (a file, unless it has an
    /// `@`: the marketplace form); anything else is a registry reference.
    /// Cost: a scan of the string; no I/O.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let incomplete = |reason| ResolveError::Incomplete {
            text: text.to_owned(),
            reason,
        };
        if text.is_empty() {
            return Err(incomplete(
                "it is empty; give a component file (calc.wasm), a registry reference (host/repo:tag) or a catalog name (catalog:NAME)",
            ));
        }
        if let Some(rest) = text.strip_prefix(CATALOG_PREFIX) {
            let (name, digest) = match rest.rsplit_once('@') {
                Some((name, d)) if d.starts_with("sha256:") => (
                    name,
                    Some(d.parse::<Digest>().map_err(|_| {
                        incomplete("the digest after `@` must be sha256:<64 lowercase hex digits>")
                    })?),
                ),
                _ => (rest, None),
            };
            if name.is_empty() {
                return Err(incomplete("the catalog name after `catalog:` is empty"));
            }
            return Ok(Self::Catalog {
                name: name.to_owned(),
                digest,
            });
        }
        if let Some(rest) = text.strip_prefix(MARKET_PREFIX) {
            let (name, selector) = market_flow::parse_name(rest)?;
            return Ok(Self::Market { name, selector });
        }
        if let Some(rest) = text.strip_prefix(FILE_PREFIX) {
            if rest.is_empty() {
                return Err(incomplete("the path after `file:` is empty"));
            }
            return Ok(Self::File(PathBuf::from(rest)));
        }
        if let Some(rest) = text.strip_prefix(OCI_PREFIX) {
            return Ok(Self::Oci(Reference::parse(rest)?));
        }
        if looks_like_path(text) {
            return Ok(Self::File(PathBuf::from(text)));
        }
        if !text.contains('/') {
            if let Some((name, range)) = text.split_once('@') {
                return Err(ResolveError::MarketplaceUnsupported {
                    text: text.to_owned(),
                    name: name.to_owned(),
                    range: range.to_owned(),
                });
            }
            return Ok(Self::File(PathBuf::from(text)));
        }
        Ok(Self::Oci(Reference::parse(text)?))
    }
}

impl fmt::Display for CapsuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => {
                let text = path.display().to_string();
                if bare_file(&text) {
                    f.write_str(&text)
                } else {
                    write!(f, "{FILE_PREFIX}{text}")
                }
            }
            Self::Oci(reference) => {
                let text = reference.to_string();
                if looks_like_path(&text) {
                    write!(f, "{OCI_PREFIX}{text}")
                } else {
                    f.write_str(&text)
                }
            }
            Self::Catalog { name, digest } => {
                write!(f, "{CATALOG_PREFIX}{name}")?;
                match digest {
                    Some(d) => write!(f, "@{d}"),
                    None => Ok(()),
                }
            }
            Self::Market { name, selector } => {
                write!(f, "{MARKET_PREFIX}{name}")?;
                match selector {
                    Selector::Range(r) if *r == semver::VersionReq::STAR => Ok(()),
                    other => write!(f, "@{other}"),
                }
            }
        }
    }
}

/// Why a reference did not resolve to a loaded capsule. Each message says
/// what to change; pull and load failures keep their own messages (and
/// their sources) unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The text is a prefix form with nothing after it, or empty.
    #[error("{text:?} is not a capsule reference: {reason}")]
    Incomplete {
        /// The text given.
        text: String,
        /// What is missing.
        reason: &'static str,
    },
    /// `name@version-range`: the marketplace form, not resolvable yet.
    #[error(
        "{text:?} reads as a marketplace reference without its author: write market:AUTHOR/{text}, or give the registry reference instead (host/repo:tag or host/repo@sha256:…), or write ./{text} for a local file"
    )]
    MarketplaceUnsupported {
        /// The text given.
        text: String,
        /// The capsule name.
        name: String,
        /// The version range.
        range: String,
    },
    /// A file reference that names no file on the search path.
    #[error("no such file (looked in: {}{hint})", list(.looked))]
    NoSuchFile {
        /// Every path tried, in order.
        looked: Vec<PathBuf>,
        /// What the caller can add to the search path (e.g. `; add --capsule-path DIR`).
        hint: &'static str,
    },
    /// A catalog name where no catalog is (the CLI without `--server`).
    #[error(
        "{reference} names a capsule in a daemon's catalog: run it there (--server URL), or give a component file or a registry reference"
    )]
    NoCatalog {
        /// The reference, printed.
        reference: String,
    },
    /// The catalog does not serve this name (or no longer this digest).
    #[error("capsule `{name}` is not in the daemon's catalog{} (GET /v1/capsules lists them)", pinned(.digest))]
    NotInCatalog {
        /// The catalog name.
        name: String,
        /// The digest a run pinned, if any.
        digest: Option<Digest>,
    },
    /// The registry reference is malformed, or the pull failed (registry,
    /// trust policy, caps, blob cache): the pull's own message and class.
    #[error(transparent)]
    Oci(#[from] OciError),
    /// A marketplace name did not resolve (no match, no pin, no key, …).
    /// Boxed: the marketplace's error is large and this one is returned often.
    #[error(transparent)]
    Market(Box<MarketError>),
    /// The trust policy (`[trust]`) could not be read.
    #[error(transparent)]
    Trust(#[from] VerifyError),
    /// A verified component in the blob cache could not be read back.
    #[error(
        "cannot read the cached component {path}: {source} (run `soma cache gc` and pull again)"
    )]
    ReadCached {
        /// The blob file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The component could not be read, or is not a valid capsule.
    #[error(transparent)]
    Load(#[from] LoadError),
}

impl From<MarketError> for ResolveError {
    fn from(e: MarketError) -> Self {
        Self::Market(Box::new(e))
    }
}

fn list(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

fn pinned(digest: &Option<Digest>) -> String {
    digest
        .map(|d| format!(" with digest {d}"))
        .unwrap_or_default()
}

/// How a resolved capsule was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// A file on this machine: the operator's own; no signature is checked.
    LocalFile,
    /// Pulled (or found in the blob cache) and admitted by the trust policy.
    Admitted {
        /// Why the trust policy admitted it.
        admission: Admission,
        /// Whether the component came from the blob cache (no download).
        cached: bool,
    },
    /// Served by a catalog (or its blob cache): verified when it got there.
    Catalog,
}

/// A resolved capsule: what was asked for, what it is pinned to, and the
/// loaded (compiled, linked, described) capsule.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The reference as given.
    pub requested: CapsuleRef,
    /// The same capsule, pinned: a canonical file path, `host/repo@sha256:…`
    /// (the manifest digest; the tag dropped), or `catalog:NAME@sha256:…`
    /// (the component digest). What a run journals and a resume resolves.
    pub pinned: CapsuleRef,
    /// The loaded capsule (its `describe()` is [`Resolved::manifest`]).
    pub capsule: Arc<Capsule>,
    /// Where the component's bytes are: the file, or the verified blob in
    /// the cache (`None` when a catalog served it from memory).
    pub component: Option<PathBuf>,
    /// The manifest digest a registry reference resolved to.
    pub manifest_digest: Option<Digest>,
    /// How it was verified.
    pub verification: Verification,
}

impl Resolved {
    /// What the capsule says about itself (`describe()`).
    pub fn manifest(&self) -> &Manifest {
        self.capsule.manifest()
    }
}

/// Capsules already resolved and served by name (the daemon's catalog).
pub trait Catalog {
    /// The capsule served as `name`; with `digest`, only the one with that
    /// component digest, including one a re-pull replaced. Cost: map lookups.
    fn lookup(&self, name: &str, digest: Option<&Digest>) -> Option<Arc<Capsule>>;
}

/// Which trust policy admits registry artifacts.
#[derive(Debug, Clone)]
enum Trust {
    /// `[trust]` of the engine's config, read (key files included) at each
    /// pull, so a resolver that never pulls never reads it.
    FromConfig,
    /// This policy.
    Policy(TrustPolicy),
}

/// Registry credentials for a pull.
#[derive(Debug, Clone, Default)]
pub enum Credentials {
    /// From the docker `config.json` entry for the reference's registry,
    /// else anonymous ([`Auth::from_docker_config`]).
    #[default]
    DockerConfig,
    /// These.
    Given(Auth),
}

/// Turns [`CapsuleRef`]s into [`Resolved`] capsules under one trust policy,
/// pull configuration and search path. Cheap to build (no I/O); a resolver
/// is built per command or per request.
pub struct Resolver<'a> {
    engine: &'a Engine,
    trust: Trust,
    transport: Transport,
    credentials: Credentials,
    search: Vec<PathBuf>,
    hint: &'static str,
    catalog: Option<&'a dyn Catalog>,
    lockfile: Option<PathBuf>,
}

impl fmt::Debug for Resolver<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("trust", &self.trust)
            .field("transport", &self.transport)
            .field("credentials", &self.credentials)
            .field("search", &self.search)
            .field("catalog", &self.catalog.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a> Resolver<'a> {
    /// A resolver loading into `engine`'s data directory: the config's
    /// `[trust]` and `[pull]`, docker credentials, https unless loopback,
    /// relative files as given, no catalog. Cost: nothing (no I/O).
    pub fn new(engine: &'a Engine) -> Self {
        Self {
            engine,
            trust: Trust::FromConfig,
            transport: Transport::default(),
            credentials: Credentials::DockerConfig,
            search: Vec::new(),
            hint: "",
            catalog: None,
            lockfile: None,
        }
    }

    /// Resolve `market:` names through the pins of this lockfile (instead
    /// of the first `soma.lock` on the search path, else `./soma.lock`).
    pub fn lockfile(mut self, path: PathBuf) -> Self {
        self.lockfile = Some(path);
        self
    }

    /// Admit registry artifacts by `policy` instead of the config's `[trust]`.
    pub fn trust(mut self, policy: TrustPolicy) -> Self {
        self.trust = Trust::Policy(policy);
        self
    }

    /// Reach registries this way (`--insecure`, `--ca-file`).
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Authenticate to registries with these credentials.
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// Look relative files up in `dirs`, in order; `hint` ends the
    /// not-found message (e.g. `"; add --capsule-path DIR"`).
    pub fn search(mut self, dirs: Vec<PathBuf>, hint: &'static str) -> Self {
        self.search = dirs;
        self.hint = hint;
        self
    }

    /// Resolve catalog names in `catalog`.
    pub fn catalog(mut self, catalog: &'a dyn Catalog) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// Parse `text` as [`CapsuleRef::from_str`] does, except that a text
    /// which reads as a registry reference but names an existing file on
    /// the search path (or, without one, relative to the working directory)
    /// is that file. Cost: a few `stat`s for such a text; none otherwise.
    pub fn parse(&self, text: &str) -> Result<CapsuleRef, ResolveError> {
        let parsed = text.parse::<CapsuleRef>();
        let plain = !text.starts_with(OCI_PREFIX);
        if plain && matches!(parsed, Ok(CapsuleRef::Oci(_)) | Err(ResolveError::Oci(_))) {
            let path = Path::new(text);
            if self.candidates(path).iter().any(|p| p.exists()) {
                return Ok(CapsuleRef::File(path.to_owned()));
            }
        }
        parsed
    }

    /// Resolve `capsule`: find (file), pull and verify (registry) or look up
    /// (catalog), pin it, and load it into the engine.
    ///
    /// Cost: a file is read and loaded (a hash; a compile unless the engine
    /// or AOT cache has it). A registry reference costs a pull (see
    /// [`oci::pull`]: the network unless pinned and cached) plus a read of
    /// the cached blob and a load. A catalog name costs map lookups; a
    /// pinned digest no longer in the catalog costs a blob-cache read and a load.
    pub fn resolve(&self, capsule: &CapsuleRef) -> Result<Resolved, ResolveError> {
        match capsule {
            CapsuleRef::File(path) => self.resolve_file(capsule, path),
            CapsuleRef::Oci(reference) => self.resolve_oci(capsule, reference),
            CapsuleRef::Catalog { name, digest } => {
                self.resolve_catalog(capsule, name, digest.as_ref())
            }
            CapsuleRef::Market { name, selector } => self.resolve_market(capsule, name, selector),
        }
    }

    /// A marketplace name: the lockfile pin, else the newest published
    /// match ([`market_flow::select`]), pulled under author + marketplace
    /// keys (all-of) and pinned to its manifest digest
    /// (`market:author/name@sha256:…`, which resolves even once yanked).
    fn resolve_market(
        &self,
        requested: &CapsuleRef,
        name: &str,
        selector: &Selector,
    ) -> Result<Resolved, ResolveError> {
        let config = self.engine.config();
        let market = Market::new(crate::market::records::Records::of(self.engine));
        let lock = self
            .lockfile
            .clone()
            .or_else(|| Lockfile::find(&self.search));
        let min_age = config.market.min_release_age_secs.saturating_mul(1000);
        let submission = market_flow::select(&market, name, selector, lock.as_deref(), min_age)?;
        let access = Access {
            transport: self.transport.clone(),
            auth: match &self.credentials {
                Credentials::Given(auth) => Some(auth.clone()),
                Credentials::DockerConfig => None,
            },
            limits: config.pull,
        };
        let pulled = market_flow::fetch(self.engine.data(), config, &market, &submission, &access)?;
        let pinned = CapsuleRef::Market {
            name: name.to_owned(),
            selector: Selector::Digest(pulled.manifest_digest),
        };
        let bytes =
            std::fs::read(&pulled.component).map_err(|source| ResolveError::ReadCached {
                path: pulled.component.clone(),
                source,
            })?;
        let capsule = self.engine.load(&bytes, &pinned.to_string())?;
        Ok(Resolved {
            requested: requested.clone(),
            pinned,
            capsule,
            component: Some(pulled.component),
            manifest_digest: Some(pulled.manifest_digest),
            verification: Verification::Admitted {
                admission: pulled.admission,
                cached: pulled.cached,
            },
        })
    }

    fn candidates(&self, path: &Path) -> Vec<PathBuf> {
        if path.is_absolute() || self.search.is_empty() {
            vec![path.to_owned()]
        } else {
            self.search.iter().map(|dir| dir.join(path)).collect()
        }
    }

    fn resolve_file(&self, requested: &CapsuleRef, path: &Path) -> Result<Resolved, ResolveError> {
        let looked = self.candidates(path);
        let found =
            looked
                .iter()
                .find(|p| p.is_file())
                .ok_or_else(|| ResolveError::NoSuchFile {
                    looked: looked.clone(),
                    hint: self.hint,
                })?;
        let path = found.canonicalize().unwrap_or_else(|_| found.clone());
        let capsule = self.engine.load_file(&path)?;
        Ok(Resolved {
            requested: requested.clone(),
            pinned: CapsuleRef::File(path.clone()),
            capsule,
            component: Some(path),
            manifest_digest: None,
            verification: Verification::LocalFile,
        })
    }

    fn resolve_oci(
        &self,
        requested: &CapsuleRef,
        reference: &Reference,
    ) -> Result<Resolved, ResolveError> {
        let config = self.engine.config();
        let trust = match &self.trust {
            Trust::FromConfig => TrustPolicy::from_config(&config.trust)?,
            Trust::Policy(policy) => policy.clone(),
        };
        let options = PullOptions {
            transport: self.transport.clone(),
            trust,
            ..PullOptions::from_config(config)
        };
        let auth = match &self.credentials {
            Credentials::DockerConfig => Auth::from_docker_config(reference.registry())?,
            Credentials::Given(auth) => auth.clone(),
        };
        let pulled = oci::pull(self.engine.data(), reference, &auth, &options)?;
        let pinned = CapsuleRef::Oci(reference.with_digest(pulled.manifest_digest));
        let bytes =
            std::fs::read(&pulled.component).map_err(|source| ResolveError::ReadCached {
                path: pulled.component.clone(),
                source,
            })?;
        let capsule = self.engine.load(&bytes, &pinned.to_string())?;
        Ok(Resolved {
            requested: requested.clone(),
            pinned,
            capsule,
            component: Some(pulled.component),
            manifest_digest: Some(pulled.manifest_digest),
            verification: Verification::Admitted {
                admission: pulled.admission,
                cached: pulled.cached,
            },
        })
    }

    fn resolve_catalog(
        &self,
        requested: &CapsuleRef,
        name: &str,
        digest: Option<&Digest>,
    ) -> Result<Resolved, ResolveError> {
        let catalog = self.catalog.ok_or_else(|| ResolveError::NoCatalog {
            reference: requested.to_string(),
        })?;
        let not_in_catalog = || ResolveError::NotInCatalog {
            name: name.to_owned(),
            digest: digest.copied(),
        };
        let resolved = |capsule: Arc<Capsule>, component| Resolved {
            requested: requested.clone(),
            pinned: CapsuleRef::Catalog {
                name: name.to_owned(),
                digest: Some(capsule.digest()),
            },
            capsule,
            component,
            manifest_digest: None,
            verification: Verification::Catalog,
        };
        if let Some(capsule) = catalog.lookup(name, digest) {
            return Ok(resolved(capsule, None));
        }
        // After a restart: the verified component a pull left in the blob
        // cache (`<data>/blobs/sha256/<hex>`, named by the component digest).
        let digest = digest.ok_or_else(not_in_catalog)?;
        let path = self
            .engine
            .data()
            .root()
            .join("blobs")
            .join("sha256")
            .join(digest.hex());
        let bytes = std::fs::read(&path).map_err(|_| not_in_catalog())?;
        let pinned = CapsuleRef::Catalog {
            name: name.to_owned(),
            digest: Some(*digest),
        };
        let capsule = self.engine.load(&bytes, &pinned.to_string())?;
        if capsule.digest() != *digest {
            return Err(not_in_catalog());
        }
        Ok(resolved(capsule, Some(path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(data: &Path) -> Engine {
        let mut config = crate::Config::default();
        config.engine.allocator = crate::config::Allocator::OnDemand;
        Engine::new(config, crate::store::DataDir::new(data)).expect("engine")
    }

    fn parse(text: &str) -> CapsuleRef {
        text.parse()
            .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
    }

    #[test]
    fn each_form_parses_and_prints_back() {
        let d = Digest::of(b"component");
        let cases = [
            "/opt/capsules/calc.wasm".to_owned(),
            "./calc".to_owned(),
            "../capsules/calc".to_owned(),
            "calc.wasm".to_owned(),
            "dir/calc.wasm".to_owned(),
            "calculator".to_owned(),
            "file:dir/calc".to_owned(),
            "file:calc@1".to_owned(),
            "file:catalog:x".to_owned(),
            "127.0.0.1:5000/acme/calc:1.0".to_owned(),
            "ghcr.io/acme/calc:latest".to_owned(),
            format!("ghcr.io/acme/calc@{d}"),
            format!("ghcr.io/acme/calc:1.0@{d}"),
            "oci://ghcr.io/acme/calc:1.wasm".to_owned(),
            "catalog:calculator".to_owned(),
            format!("catalog:calculator@{d}"),
            "catalog:my@name".to_owned(),
            "market:acme/summarize".to_owned(),
            "market:acme/summarize@^1".to_owned(),
            "market:acme/summarize@>=1.2, <2".to_owned(),
            format!("market:acme/summarize@{d}"),
        ];
        for text in cases {
            let parsed = parse(&text);
            assert_eq!(parsed.to_string(), text, "{parsed:?} prints back");
            assert_eq!(parse(&parsed.to_string()), parsed, "{text} round-trips");
        }
    }

    #[test]
    fn forms_are_told_apart_without_touching_the_disk() {
        let d = Digest::of(b"component");
        assert_eq!(
            parse("calc.wasm"),
            CapsuleRef::File(PathBuf::from("calc.wasm"))
        );
        assert_eq!(parse("calc"), CapsuleRef::File(PathBuf::from("calc")));
        assert!(matches!(parse("host/acme/calc"), CapsuleRef::Oci(_)));
        assert!(matches!(parse("oci://host/calc.wasm"), CapsuleRef::Oci(_)));
        assert_eq!(
            parse(&format!("catalog:calc@{d}")),
            CapsuleRef::Catalog {
                name: "calc".into(),
                digest: Some(d)
            }
        );
        assert_eq!(parse("catalog:calc"), CapsuleRef::catalog("calc"));
        // A tag is kept as written until a pull pins it; no tag is `latest`.
        match parse("host/acme/calc") {
            CapsuleRef::Oci(r) => assert_eq!(r.tag(), Some("latest")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_printed_form_round_trips_for_constructed_values() {
        let d = Digest::of(b"x");
        let reference = Reference::parse("reg.example:443/a/b:v1").expect("reference");
        let values = [
            CapsuleRef::File(PathBuf::from("plain")),
            CapsuleRef::File(PathBuf::from("dir/plain")),
            CapsuleRef::File(PathBuf::from("name@1.2")),
            CapsuleRef::File(PathBuf::from("oci://x/y")),
            CapsuleRef::Oci(reference.clone()),
            CapsuleRef::Oci(reference.with_digest(d)),
            CapsuleRef::Oci(Reference::parse("h/r:v.wasm").expect("reference")),
            CapsuleRef::catalog("c"),
            CapsuleRef::Catalog {
                name: "c".into(),
                digest: Some(d),
            },
        ];
        for value in values {
            assert_eq!(parse(&value.to_string()), value, "{value}");
        }
    }

    #[test]
    fn pinning_a_tag_keeps_the_repository_and_drops_the_tag() {
        let d = Digest::of(b"manifest");
        let tagged = Reference::parse("127.0.0.1:5000/acme/calc:1.0").expect("reference");
        let pinned = CapsuleRef::Oci(tagged.with_digest(d));
        assert_eq!(pinned.to_string(), format!("127.0.0.1:5000/acme/calc@{d}"));
        match parse(&pinned.to_string()) {
            CapsuleRef::Oci(r) => {
                assert_eq!((r.digest(), r.tag()), (Some(d), None));
                assert_eq!(r.repository_path(), tagged.repository_path());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejections_are_typed_and_say_what_to_change() {
        let message = |text: &str| match text.parse::<CapsuleRef>() {
            Ok(r) => panic!("{text:?} parsed as {r:?}"),
            Err(e) => (e.to_string(), e),
        };
        let (text, e) = message("");
        assert!(matches!(e, ResolveError::Incomplete { .. }), "{e:?}");
        assert!(text.contains("catalog:NAME"), "{text}");
        for bare in ["file:", "catalog:"] {
            let (text, e) = message(bare);
            assert!(matches!(e, ResolveError::Incomplete { .. }), "{e:?}");
            assert!(text.contains("empty"), "{text}");
        }
        let (text, e) = message("catalog:calc@sha256:abc");
        assert!(matches!(e, ResolveError::Incomplete { .. }), "{e:?}");
        assert!(text.contains("sha256:<64 lowercase hex digits>"), "{text}");
        let (text, e) = message("calculator@^1.2");
        match e {
            ResolveError::MarketplaceUnsupported { name, range, .. } => {
                assert_eq!((name.as_str(), range.as_str()), ("calculator", "^1.2"));
            }
            other => panic!("{other:?}"),
        }
        assert!(
            text.contains("host/repo:tag")
                && text.contains("./calculator@^1.2")
                && text.contains("market:AUTHOR/calculator@^1.2"),
            "{text}"
        );
        for bad in ["reg/Calc", "reg//calc", "reg/calc:-x", "oci://calc"] {
            let (text, e) = message(bad);
            assert!(
                matches!(e, ResolveError::Oci(OciError::BadReference { .. })),
                "{bad}: {e:?}"
            );
            assert!(text.contains("registry[:port]/repository"), "{text}");
        }
    }

    #[test]
    fn a_missing_file_lists_where_it_was_looked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = engine(dir.path());
        let search = vec![dir.path().join("a"), dir.path().join("b")];
        let resolver = Resolver::new(&engine).search(search.clone(), "; add --capsule-path DIR");
        let e = resolver
            .resolve(&parse("calc.wasm"))
            .expect_err("no such file");
        let text = e.to_string();
        assert!(matches!(e, ResolveError::NoSuchFile { .. }), "{e:?}");
        for dir in &search {
            let looked = dir.join("calc.wasm");
            assert!(text.contains(&looked.display().to_string()), "{text}");
        }
        assert!(text.ends_with("; add --capsule-path DIR)"), "{text}");
        // A catalog name needs a catalog.
        let e = resolver
            .resolve(&CapsuleRef::catalog("calc"))
            .expect_err("no catalog");
        assert!(matches!(e, ResolveError::NoCatalog { .. }), "{e:?}");
        assert!(e.to_string().contains("--server"), "{e}");
    }

    #[test]
    fn an_existing_file_wins_over_a_registry_spelling() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("acme")).expect("mkdir");
        std::fs::write(dir.path().join("acme/calc"), b"").expect("write");
        let engine = engine(&dir.path().join("data"));
        let resolver = Resolver::new(&engine).search(vec![dir.path().to_owned()], "");
        assert_eq!(
            resolver.parse("acme/calc").expect("parse"),
            CapsuleRef::File(PathBuf::from("acme/calc"))
        );
        assert!(matches!(
            resolver.parse("acme/other").expect("parse"),
            CapsuleRef::Oci(_)
        ));
        // `oci://` says it is a registry reference whatever is on disk.
        assert!(matches!(
            resolver.parse("oci://acme/calc").expect("parse"),
            CapsuleRef::Oci(_)
        ));
    }
}
