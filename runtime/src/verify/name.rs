//! Canonical repository names: the one spelling trust rules, references and
//! signed identities are compared in.
//!
//! A registry can be spelled many ways that all reach the same server
//! (`LOCALHOST:5000`, `127.0.0.1:5000`, `127.1:5000`, `2130706433:5000`,
//! `[::1]:5000`, `reg.example:443`, `reg.example.`). Policy that matched the
//! raw spelling could be walked around by respelling the registry, so every
//! name is first brought to one form:
//!
//! - the host is parsed the way the HTTP client parses it (WHATWG URL host
//!   parsing, so `127.1`, `0x7f.1` and `2130706433` are `127.0.0.1`) and
//!   lowercased; one trailing dot is dropped;
//! - every loopback or "this host" address (`localhost`, `127.0.0.0/8`,
//!   `0.0.0.0`, `[::1]`, `[::]`, `[::ffff:127.x.y.z]`) is `localhost`: one host,
//!   so a rule naming any of them covers all of them;
//! - the default ports 80 and 443 are dropped (`reg.example:443` is
//!   `reg.example`); any other port is kept, as a number without leading zeros;
//! - Docker Hub's aliases `index.docker.io` and `registry-1.docker.io` are
//!   `docker.io`, and a one-component Docker Hub repository gets `library/`.
//!
//! Globs are brought to the same form (their host part when it is literal)
//! and a port wildcard also matches the default port, so `localhost:*` covers
//! `localhost` and `localhost:80`. Cost: a scan and a few small allocations;
//! no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The canonical `registry/repository` of `text` (`registry[:port]/repo`,
/// optionally with `:tag` and/or `@digest`, which are dropped), or why it is
/// not a repository name.
pub fn canonical_repository(text: &str) -> Result<String, String> {
    let name = text.split_once('@').map_or(text, |(name, _)| name);
    let (registry, path) = name
        .split_once('/')
        .ok_or_else(|| format!("{text:?} has no registry host"))?;
    // A `:tag` can only follow the last path component.
    let path = match path.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => path,
    };
    if path.is_empty() || path.split('/').any(str::is_empty) {
        return Err(format!("{text:?} has an empty repository component"));
    }
    let (host, port) = split_host_port(registry)?;
    let port = match port {
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| format!("{p:?} is not a port number"))?,
        ),
        None => None,
    };
    let host = canonical_host(host)?;
    Ok(join(&host, port.and_then(non_default), path))
}

/// The canonical globs a rule's `repository` glob stands for: one, or two
/// when its port is a wildcard that also matches the default port (`host:*`
/// is `host:*` or bare `host`). An error says what is wrong with the glob.
pub fn canonical_globs(glob: &str) -> Result<Vec<String>, String> {
    let glob = glob.trim();
    let (registry, path) = match glob.split_once('/') {
        Some((r, p)) => (r, p),
        None => (glob, ""),
    };
    let lower_path = path.to_ascii_lowercase();
    // A wildcard in the host part (`*`, `**`, `*.example.com`): matched as
    // written against the canonical names (lowercased; `*` also spans a port).
    let host_part = if registry.starts_with('[') {
        registry
    } else {
        registry.split_once(':').map_or(registry, |(h, _)| h)
    };
    if host_part.contains('*') || path.is_empty() {
        if path.is_empty() && !registry.contains('*') {
            return Err(format!(
                "{glob:?} names no repository: write registry/repository (e.g. {registry}/**)"
            ));
        }
        return Ok(vec![glob.to_ascii_lowercase()]);
    }
    let (host, port) = split_host_port(registry)?;
    let host = canonical_host(host)?;
    let path = lower_path.as_str();
    Ok(match port {
        None => vec![join(&host, None, path)],
        Some(p) if p.contains('*') => {
            let p = p.to_ascii_lowercase();
            let mut globs = vec![join_glob(&host, &p, path)];
            if glob_matches(&p, "80") || glob_matches(&p, "443") {
                globs.push(join(&host, None, path));
            }
            globs
        }
        Some(p) => {
            let port = p
                .parse::<u16>()
                .map_err(|_| format!("{p:?} in {glob:?} is not a port number or a glob"))?;
            vec![join(&host, non_default(port), path)]
        }
    })
}

/// Whether the canonical host of `registry` (`host[:port]`) is this machine:
/// the registries spoken to over plain http by default.
pub fn is_loopback_registry(registry: &str) -> bool {
    split_host_port(registry)
        .and_then(|(host, _)| canonical_host(host))
        .is_ok_and(|h| h == "localhost")
}

/// `*` matches within one `/`-separated segment, `**` across segments.
pub(crate) fn glob_matches(glob: &str, text: &str) -> bool {
    glob_match(glob.as_bytes(), text.as_bytes())
}

fn glob_match(glob: &[u8], text: &[u8]) -> bool {
    match glob {
        [] => text.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=text.len()).any(|i| glob_match(rest, &text[i..])),
        [b'*', rest @ ..] => {
            let segment = text.iter().position(|&c| c == b'/').unwrap_or(text.len());
            (0..=segment).any(|i| glob_match(rest, &text[i..]))
        }
        [c, rest @ ..] => text.first() == Some(c) && glob_match(rest, &text[1..]),
    }
}

fn non_default(port: u16) -> Option<u16> {
    (port != 80 && port != 443).then_some(port)
}

/// `registry/path` with Docker Hub's implicit `library/` for one component.
fn join(host: &str, port: Option<u16>, path: &str) -> String {
    let path = library(host, path);
    match port {
        Some(p) => format!("{host}:{p}/{path}"),
        None => format!("{host}/{path}"),
    }
}

fn join_glob(host: &str, port: &str, path: &str) -> String {
    format!("{host}:{port}/{}", library(host, path))
}

fn library<'a>(host: &str, path: &'a str) -> std::borrow::Cow<'a, str> {
    if host == "docker.io" && !path.contains('/') && path != "**" {
        format!("library/{path}").into()
    } else {
        path.into()
    }
}

/// `(host, port)` of `host[:port]` or `[v6][:port]`.
fn split_host_port(registry: &str) -> Result<(&str, Option<&str>), String> {
    if registry.starts_with('[') {
        let close = registry
            .find(']')
            .ok_or_else(|| format!("{registry:?}: an IPv6 host needs a closing `]`"))?;
        let (host, rest) = registry.split_at(close + 1);
        return match rest {
            "" => Ok((host, None)),
            _ => rest
                .strip_prefix(':')
                .map(|p| (host, Some(p)))
                .ok_or_else(|| format!("{registry:?}: expected `:port` after the IPv6 address")),
        };
    }
    Ok(match registry.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    })
}

/// The host as the HTTP client would connect to it, lowercased, with every
/// loopback spelling folded to `localhost` and Docker Hub's aliases to
/// `docker.io`.
fn canonical_host(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("the registry host is empty".into());
    }
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    // The HTTP client's own host parser: what it would actually dial.
    let url = reqwest::Url::parse(&format!("http://{trimmed}/"))
        .map_err(|e| format!("{host:?} is not a host name: {e}"))?;
    let parsed = url
        .host_str()
        .ok_or_else(|| format!("{host:?} is not a host name"))?
        .to_ascii_lowercase();
    let ip = match parsed.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => parsed.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    };
    let this_host = match ip {
        Some(IpAddr::V4(v4)) => v4.is_loopback() || v4.is_unspecified(),
        Some(IpAddr::V6(v6)) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| v4.is_loopback() || v4.is_unspecified())
        }
        None => parsed == "localhost",
    };
    Ok(if this_host {
        "localhost".into()
    } else if matches!(
        parsed.as_str(),
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        "docker.io".into()
    } else {
        parsed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(s: &str) -> String {
        canonical_repository(s).expect(s)
    }

    #[test]
    fn loopback_spellings_are_one_host() {
        for spelling in [
            "localhost:5000/a/b",
            "LOCALHOST:5000/a/b",
            "LocalHost.:5000/a/b",
            "127.0.0.1:5000/a/b",
            "127.1:5000/a/b",
            "127.9.8.7:5000/a/b",
            "2130706433:5000/a/b",
            "0x7f.1:5000/a/b",
            "0177.0.0.1:5000/a/b",
            "0.0.0.0:5000/a/b",
            "[::1]:5000/a/b",
            "[0:0:0:0:0:0:0:1]:5000/a/b",
            "[::ffff:127.0.0.1]:5000/a/b",
            "[::]:5000/a/b",
            "localhost:05000/a/b:tag",
            "localhost:5000/a/b@sha256:00",
        ] {
            assert_eq!(canon(spelling), "localhost:5000/a/b", "{spelling}");
        }
        assert!(is_loopback_registry("2130706433:1"));
        assert!(is_loopback_registry("LOCALHOST"));
        assert!(!is_loopback_registry("foo.localhost"));
        assert!(!is_loopback_registry("10.0.0.1:5000"));
    }

    #[test]
    fn default_ports_and_docker_hub() {
        assert_eq!(canon("Reg.Example:443/a/b"), "reg.example/a/b");
        assert_eq!(canon("reg.example:80/a/b"), "reg.example/a/b");
        assert_eq!(canon("reg.example./a/b"), "reg.example/a/b");
        assert_eq!(canon("reg.example:8443/a/b"), "reg.example:8443/a/b");
        assert_eq!(canon("localhost:80/a"), "localhost/a");
        for hub in [
            "docker.io/calc",
            "index.docker.io/calc",
            "REGISTRY-1.docker.io/library/calc:1",
            "docker.io:443/library/calc",
        ] {
            assert_eq!(canon(hub), "docker.io/library/calc", "{hub}");
        }
        assert_eq!(canon("docker.io/acme/calc"), "docker.io/acme/calc");
        assert_eq!(canon("[2001:DB8::1]:5000/a"), "[2001:db8::1]:5000/a");
        assert!(canonical_repository("noslash").is_err());
        assert!(canonical_repository("reg:99999/a").is_err());
        assert!(canonical_repository("reg//a").is_err());
    }

    #[test]
    fn globs_are_canonical_too() {
        assert_eq!(
            canonical_globs("LOCALHOST:*/acme/*").expect("glob"),
            ["localhost:*/acme/*", "localhost/acme/*"]
        );
        assert_eq!(
            canonical_globs("127.0.0.1:5000/**").expect("glob"),
            ["localhost:5000/**"]
        );
        assert_eq!(
            canonical_globs("reg.example:443/acme/**").expect("glob"),
            ["reg.example/acme/**"]
        );
        assert_eq!(
            canonical_globs("reg.example:5*/x").expect("glob"),
            ["reg.example:5*/x"]
        );
        assert_eq!(
            canonical_globs("index.docker.io/*").expect("glob"),
            ["docker.io/library/*"]
        );
        assert_eq!(canonical_globs("**").expect("glob"), ["**"]);
        assert_eq!(canonical_globs("*/Acme/*").expect("glob"), ["*/acme/*"]);
        assert!(canonical_globs("reg:abc/x").is_err());
        assert!(canonical_globs("reg.example").is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_matches("**", "a/b/c"));
        assert!(glob_matches("reg:*/acme/*", "reg:5000/acme/calc"));
        assert!(!glob_matches("reg:*/acme/*", "reg:5000/acme/x/calc"));
        assert!(glob_matches("reg:*/acme/**", "reg:5000/acme/x/calc"));
        assert!(!glob_matches("reg/acme/*", "reg/other/calc"));
        assert!(glob_matches("exact/name", "exact/name"));
    }
}
