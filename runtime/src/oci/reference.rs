//! [`Reference`]: `registry[:port]/repo/path[:tag][@sha256:<hex>]`.
//!
//! A thin wrapper over `oci_client::Reference` (oci-spec's parser of the
//! distribution grammar), which checks the repository path and the tag and
//! is what the registry client is handed. The wrapper adds Soma's rules:
//!
//! - the registry host is required and is always the first path segment
//!   (no implicit Docker Hub, no `library/` prefix: `reg/calc` is the
//!   repository `calc` on the host `reg`);
//! - IPv6 literal hosts (`[::1]:5000`), which the distribution grammar
//!   lacks, and a port must be 1-65535;
//! - digests are `sha256:` only, held as a typed [`Digest`];
//! - every refusal says which part is wrong and what it must look like
//!   ([`OciError::BadReference`]);
//! - the canonical repository name trust rules match, and whether the
//!   registry is loopback (plain http by default).

use std::{fmt, str::FromStr};

use super::error::OciError;
use crate::digest::Digest;

/// Where an artifact lives: a registry host, a repository, and a tag and/or
/// a manifest digest. Without either, the tag is `latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry, repository, tag and digest as oci-client takes them.
    inner: oci_client::Reference,
    /// The digest, typed (the same as `inner`'s).
    digest: Option<Digest>,
}

/// A stand-in host for checking a repository path and tag with oci-spec's
/// parser: a host it recognises as one, so the path is not read as a Docker
/// Hub namespace.
const PLACEHOLDER_HOST: &str = "localhost";

impl Reference {
    /// Parse `registry[:port]/repo/path[:tag][@sha256:<hex>]`. The registry
    /// part is required (no implicit docker.io). Cost: a scan of the string
    /// and two regex matches (oci-spec's grammar).
    pub fn parse(text: &str) -> Result<Self, OciError> {
        let bad = |reason: &str| OciError::BadReference {
            reference: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (name, digest) = match text.split_once('@') {
            Some((name, d)) => (
                name,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| bad("the digest must be sha256:<64 lowercase hex digits>"))?,
                ),
            ),
            None => (text, None),
        };
        let (registry, path) = name
            .split_once('/')
            .ok_or_else(|| bad("it has no registry host (e.g. 127.0.0.1:5000/name)"))?;
        check_registry(registry).map_err(|r| bad(&r))?;
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) => (repo, Some(tag)),
            None => (path, None),
        };
        let checked = oci_client::Reference::try_from(format!("{PLACEHOLDER_HOST}/{repository}"))
            .map_err(|e| bad(&repository_reason(repository, &e)))?;
        if let Some(tag) = tag {
            // oci-spec's `\w` is Unicode; a tag is ASCII.
            let ascii = if tag.is_ascii() { tag } else { "-" };
            oci_client::Reference::try_from(format!("{PLACEHOLDER_HOST}/r:{ascii}")).map_err(|_| {
                bad(&format!(
                    "tag {tag:?} must be 1-128 letters, digits and . _ - (not starting with . or -)"
                ))
            })?;
        }
        let (registry, repository) = (registry.to_owned(), checked.repository().to_owned());
        let inner = match (tag, digest) {
            (Some(tag), Some(d)) => oci_client::Reference::with_tag_and_digest(
                registry,
                repository,
                tag.to_owned(),
                d.to_string(),
            ),
            (None, Some(d)) => {
                oci_client::Reference::with_digest(registry, repository, d.to_string())
            }
            (tag, None) => oci_client::Reference::with_tag(
                registry,
                repository,
                tag.unwrap_or("latest").to_owned(),
            ),
        };
        Ok(Self { inner, digest })
    }

    /// The registry host, with its port if given (`127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The repository path (`acme/calculator`).
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// `registry/repository`: what trust rules match and what a signature
    /// payload names as its `docker-reference`.
    pub fn repository_path(&self) -> String {
        format!("{}/{}", self.registry(), self.repository())
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// The manifest digest, if pinned.
    pub fn digest(&self) -> Option<Digest> {
        self.digest
    }

    /// The same repository pinned to `digest` (tag dropped).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            inner: self.inner.clone_with_digest(digest.to_string()),
            digest: Some(digest),
        }
    }

    /// The canonical `registry/repository` trust rules are matched against
    /// and signed identities compared with (see [`crate::verify`]'s `name`
    /// rules: lowercase host, every loopback spelling `localhost`, default
    /// ports dropped, Docker Hub aliases folded). Cost: a scan; no I/O.
    pub fn canonical_repository(&self) -> String {
        crate::verify::canonical_repository(&self.repository_path())
            .unwrap_or_else(|_| self.repository_path())
    }

    /// Whether the registry is on this host (any spelling of `localhost`,
    /// 127.0.0.0/8, `0.0.0.0`, `[::1]`, as the HTTP client parses hosts): the
    /// only registries spoken to over plain http by default.
    pub fn is_loopback(&self) -> bool {
        crate::verify::is_loopback_registry(self.registry())
    }

    /// The oci-client reference the registry client is handed.
    pub(crate) fn as_oci(&self) -> &oci_client::Reference {
        &self.inner
    }
}

impl fmt::Display for Reference {
    /// `registry/repository[:tag][@digest]`, as oci-client writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl FromStr for Reference {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Why oci-spec refused `repository`, in words that say what to change.
fn repository_reason(repository: &str, e: &oci_client::ParseError) -> String {
    use oci_client::ParseError;
    match e {
        _ if repository.is_empty() => "the repository is empty".into(),
        ParseError::NameTooLong => "the repository is longer than 255 characters".into(),
        _ => match repository
            .split('/')
            .find(|c| oci_client::Reference::try_from(format!("{PLACEHOLDER_HOST}/{c}")).is_err())
        {
            Some(component) => format!(
                "repository component {component:?} must be lowercase letters and digits, \
                 separated by single . _ or - (or __), starting and ending with a letter or digit"
            ),
            None => format!("repository {repository:?} is not a valid repository path"),
        },
    }
}

fn check_registry(registry: &str) -> Result<(), String> {
    if registry.is_empty() {
        return Err("the registry host is empty".into());
    }
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or("an IPv6 registry host needs a closing `]`")?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("[{v6}] is not an IPv6 address"));
        }
        match after {
            "" => (None, None),
            p => (
                None,
                Some(
                    p.strip_prefix(':')
                        .ok_or("expected `:port` after the IPv6 address")?,
                ),
            ),
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host
        && (host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
    {
        return Err(format!("{host:?} is not a host name"));
    }
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("{port:?} is not a port number"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms() {
        let r = Reference::parse("127.0.0.1:5000/acme/calc:1.0").expect("parse");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "acme/calc");
        assert_eq!(r.tag(), Some("1.0"));
        assert!(r.is_loopback());
        let r = Reference::parse("ghcr.io/acme/calc").expect("parse");
        assert_eq!(r.tag(), Some("latest"));
        assert!(!r.is_loopback());
        let d = Digest::of(b"x");
        let r = Reference::parse(&format!("[::1]:5000/calc@{d}")).expect("parse");
        assert_eq!(r.digest(), Some(d));
        assert_eq!(r.tag(), None);
        assert!(r.is_loopback());
        assert!(
            Reference::parse("localhost/calc")
                .expect("parse")
                .is_loopback()
        );
        assert!(
            Reference::parse("127.1.2.3:1/calc")
                .expect("parse")
                .is_loopback()
        );
        let r = Reference::parse(&format!("reg.example:443/a/b:v1@{d}")).expect("parse");
        assert_eq!(r.to_string(), format!("reg.example:443/a/b:v1@{d}"));
        assert_eq!(r.canonical_repository(), "reg.example/a/b");
        let r = Reference::parse("LOCALHOST:5000/a/b:1").expect("parse");
        assert!(r.is_loopback());
        assert_eq!(r.canonical_repository(), "localhost:5000/a/b");
        assert!(
            Reference::parse("2130706433:5000/a")
                .expect("parse")
                .is_loopback()
        );
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "calc",
            "reg/",
            "reg/Calc",
            "reg//calc",
            "reg:99999/calc",
            "reg/calc:",
            "reg/calc:-x",
            "reg/calc@sha256:abc",
            "reg/calc@md5:00",
            "[::1/calc",
            "re g/calc",
            "reg/calc:é",
            "reg/a..b",
            "reg/a-",
            "reg/calc@sha512:00",
        ] {
            assert!(
                matches!(Reference::parse(bad), Err(OciError::BadReference { .. })),
                "{bad}"
            );
        }
    }
}
