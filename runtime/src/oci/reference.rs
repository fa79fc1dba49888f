//! [`Reference`]: `registry[:port]/repo/path[:tag][@sha256:<hex>]`.

use std::{fmt, str::FromStr};

use super::OciError;
use crate::digest::Digest;

/// Where an artifact lives: a registry host, a repository, and a tag and/or
/// a manifest digest. Without either, the tag is `latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parse `registry[:port]/repo/path[:tag][@sha256:<hex>]`. The registry
    /// part is required (no implicit docker.io). Cost: a scan of the string.
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
        check_repository(repository).map_err(|r| bad(&r))?;
        if let Some(tag) = tag {
            check_tag(tag).map_err(|r| bad(&r))?;
        }
        let tag = match (tag, digest) {
            (None, None) => Some("latest".to_owned()),
            (tag, _) => tag.map(str::to_owned),
        };
        Ok(Self {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag,
            digest,
        })
    }

    /// The registry host, with its port if given (`127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path (`acme/calculator`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// `registry/repository`: what trust rules match and what a signature
    /// payload names as its `docker-reference`.
    pub fn repository_path(&self) -> String {
        format!("{}/{}", self.registry(), self.repository())
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The manifest digest, if pinned.
    pub fn digest(&self) -> Option<Digest> {
        self.digest
    }

    /// The same repository pinned to `digest` (tag dropped).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            tag: None,
            digest: Some(digest),
            ..self.clone()
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
        crate::verify::is_loopback_registry(&self.registry)
    }

    pub(crate) fn to_oci(&self) -> oci_client::Reference {
        let (registry, repository) = (self.registry.clone(), self.repository.clone());
        match (&self.tag, self.digest) {
            (Some(tag), Some(d)) => oci_client::Reference::with_tag_and_digest(
                registry,
                repository,
                tag.clone(),
                d.to_string(),
            ),
            (None, Some(d)) => {
                oci_client::Reference::with_digest(registry, repository, d.to_string())
            }
            (tag, None) => oci_client::Reference::with_tag(
                registry,
                repository,
                tag.clone().unwrap_or_else(|| "latest".to_owned()),
            ),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
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

fn check_repository(repository: &str) -> Result<(), String> {
    if repository.is_empty() {
        return Err("the repository is empty".into());
    }
    if repository.len() > 255 {
        return Err("the repository is longer than 255 characters".into());
    }
    for component in repository.split('/') {
        let ok = !component.is_empty()
            && component
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && component
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !ok {
            return Err(format!(
                "repository component {component:?} must be lowercase letters, digits and . _ - (starting with a letter or digit)"
            ));
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} must be 1-128 letters, digits and . _ - (not starting with . or -)"
        ))
    }
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
        ] {
            assert!(
                matches!(Reference::parse(bad), Err(OciError::BadReference { .. })),
                "{bad}"
            );
        }
    }
}
