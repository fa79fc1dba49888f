//! Allowlist patterns in Spin's form (`https://api.example.com`,
//! `https://*.example.com:8443`, `http://127.0.0.1:*`, `*://host:*`,
//! `http://10.0.0.0/8:*`), parsed once, and the request targets they match.
//!
//! A pattern is `scheme://host[:port][/]`: no path, no user info. The
//! scheme is `http`, `https` or `*`; the host is a name, `*.suffix` (any
//! name strictly under `suffix`), `*` (any host), an IP literal (`[…]` for
//! IPv6) or a CIDR range; the port is a number or `*`, and without one the
//! scheme's default port (80, 443). Names compare case-insensitively,
//! without a trailing dot.

use std::net::IpAddr;

/// What a pattern says about the scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemeMatch {
    Any,
    Http,
    Https,
}

/// What a pattern says about the host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    /// `*`: any host (never names an address explicitly).
    Any,
    /// `*.example.com`: any name strictly under `example.com` (stored
    /// with its leading dot).
    Under(String),
    /// `example.com`.
    Name(String),
    /// An IP address or range: `127.0.0.1`, `[::1]`, `10.0.0.0/8`.
    Net(IpNet),
}

/// What a pattern says about the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortMatch {
    Any,
    /// The scheme's default port (80 for http, 443 for https).
    Default,
    Exact(u16),
}

/// An IP address range (`addr/prefix`; a single address has the full prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// The range `addr/prefix`, `None` when `prefix` is too long for the
    /// address family. IPv4-mapped IPv6 addresses are kept as IPv4.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let addr = canonical(addr);
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= bits).then_some(Self { addr, prefix })
    }

    /// Whether `ip` (IPv4-mapped forms as IPv4) is in the range. Free.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `ip`, with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4
/// address it maps.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Why an allowlist pattern could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// No `scheme://`.
    #[error(
        "pattern {0:?} has no scheme; write it as scheme://host[:port], e.g. https://api.example.com"
    )]
    NoScheme(String),
    /// A scheme other than http, https or `*`.
    #[error("pattern {pattern:?}: scheme {scheme:?} is not http, https or *")]
    Scheme {
        /// The pattern.
        pattern: String,
        /// Its scheme.
        scheme: String,
    },
    /// A path, query or user info after the authority.
    #[error(
        "pattern {0:?} has a path, query or user info; a pattern names only scheme, host and port"
    )]
    NotAnAuthority(String),
    /// An empty or malformed host.
    #[error("pattern {0:?}: the host is not a name, *.name, *, an IP address or a CIDR range")]
    Host(String),
    /// A port that is not a number in 1..=65535 or `*`.
    #[error("pattern {0:?}: the port is not a number in 1..=65535 or *")]
    Port(String),
}

/// One parsed allowlist pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    scheme: SchemeMatch,
    host: HostMatch,
    port: PortMatch,
    text: String,
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;

    /// Parse one pattern. Cheap; once per configuration or grant.
    fn from_str(text: &str) -> Result<Self, PatternError> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| PatternError::NoScheme(text.to_owned()))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "*" => SchemeMatch::Any,
            "http" => SchemeMatch::Http,
            "https" => SchemeMatch::Https,
            _ => {
                return Err(PatternError::Scheme {
                    pattern: text.to_owned(),
                    scheme: scheme.to_owned(),
                });
            }
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['?', '#', '@']) || rest.is_empty() {
            return Err(PatternError::NotAnAuthority(text.to_owned()));
        }
        // The host, then an optional `:port`. An IPv6 host is bracketed.
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (inside, after) = v6
                .split_once(']')
                .ok_or_else(|| PatternError::Host(text.to_owned()))?;
            let (prefix, port) = match after.split_once(':') {
                Some((p, port)) => (p, Some(port)),
                None => (after, None),
            };
            let ip: IpAddr = inside
                .parse()
                .map_err(|_| PatternError::Host(text.to_owned()))?;
            (net(ip, prefix, text)?, port)
        } else {
            let (host, port) = match rest.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            };
            (host_match(host, text)?, port)
        };
        let port = match port {
            None => PortMatch::Default,
            Some("*") => PortMatch::Any,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => PortMatch::Exact(n),
                _ => return Err(PatternError::Port(text.to_owned())),
            },
        };
        Ok(Self {
            scheme,
            host,
            port,
            text: text.to_owned(),
        })
    }
}

/// `ip` followed by `""` or `/prefix`.
fn net(ip: IpAddr, prefix: &str, text: &str) -> Result<HostMatch, PatternError> {
    let bits = if canonical(ip).is_ipv4() { 32 } else { 128 };
    let prefix = match prefix.strip_prefix('/') {
        None if prefix.is_empty() => bits,
        None => return Err(PatternError::Host(text.to_owned())),
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|_| p.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| PatternError::Host(text.to_owned()))?,
    };
    IpNet::new(ip, prefix)
        .map(HostMatch::Net)
        .ok_or_else(|| PatternError::Host(text.to_owned()))
}

fn host_match(host: &str, text: &str) -> Result<HostMatch, PatternError> {
    if host == "*" {
        return Ok(HostMatch::Any);
    }
    if let Some((addr, prefix)) = host.split_once('/') {
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| PatternError::Host(text.to_owned()))?;
        return net(ip, &format!("/{prefix}"), text);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return net(ip, "", text);
    }
    let (under, name) = match host.strip_prefix("*.") {
        Some(name) => (true, name),
        None => (false, host),
    };
    let name = normal_name(name).ok_or_else(|| PatternError::Host(text.to_owned()))?;
    Ok(if under {
        HostMatch::Under(format!(".{name}"))
    } else {
        HostMatch::Name(name)
    })
}

/// A host name lower-cased without its trailing dot, if it is one
/// (letters, digits, `-`, `_` and non-empty dot-separated labels).
pub fn normal_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    ok.then(|| name.to_ascii_lowercase())
}

/// The scheme of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http`.
    Http,
    /// `https`.
    Https,
}

impl Scheme {
    /// 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// The host of a request: a name (lower-cased, no trailing dot) or an
/// address (IPv4-mapped forms as IPv4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A name, resolved by the host.
    Name(String),
    /// An IP literal.
    Ip(IpAddr),
}

/// Where a request goes: what patterns are matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its scheme.
    pub scheme: Scheme,
    /// Its host.
    pub host: Host,
    /// Its port (the scheme's default when the URL names none).
    pub port: u16,
}

impl std::fmt::Display for Target {
    /// `scheme://host:port` (no path or query: those may carry secrets).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Host::Name(n) => write!(f, "{}://{n}:{}", self.scheme.as_str(), self.port),
            Host::Ip(IpAddr::V6(ip)) => {
                write!(f, "{}://[{ip}]:{}", self.scheme.as_str(), self.port)
            }
            Host::Ip(ip) => write!(f, "{}://{ip}:{}", self.scheme.as_str(), self.port),
        }
    }
}

impl Target {
    /// The target of a request URI, `None` when it has no usable scheme or
    /// host. Cheap.
    pub fn from_uri(uri: &http::Uri) -> Option<Self> {
        let scheme = match uri.scheme_str()?.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return None,
        };
        let authority = uri.authority()?;
        if authority.as_str().contains('@') {
            return None;
        }
        let raw = authority.host();
        let host = match raw.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => Host::Ip(canonical(v6.parse().ok()?)),
            None => match raw.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(canonical(ip)),
                Err(_) => Host::Name(normal_name(raw)?),
            },
        };
        let port = authority
            .port_u16()
            .unwrap_or_else(|| scheme.default_port());
        Some(Self { scheme, host, port })
    }
}

impl Pattern {
    fn scheme_and_port_match(&self, scheme: Scheme, port: u16) -> bool {
        let scheme_ok = match self.scheme {
            SchemeMatch::Any => true,
            SchemeMatch::Http => scheme == Scheme::Http,
            SchemeMatch::Https => scheme == Scheme::Https,
        };
        let port_ok = match self.port {
            PortMatch::Any => true,
            PortMatch::Default => port == scheme.default_port(),
            PortMatch::Exact(p) => port == p,
        };
        scheme_ok && port_ok
    }

    /// Whether the pattern allows `target`. Free.
    pub fn matches(&self, target: &Target) -> bool {
        self.scheme_and_port_match(target.scheme, target.port)
            && match (&self.host, &target.host) {
                (HostMatch::Any, _) => true,
                (HostMatch::Under(suffix), Host::Name(n)) => n.ends_with(suffix.as_str()),
                (HostMatch::Name(p), Host::Name(n)) => p == n,
                (HostMatch::Net(net), Host::Ip(ip)) => net.contains(*ip),
                _ => false,
            }
    }

    /// Whether the pattern names address `ip` explicitly (an IP literal or
    /// range that contains it) for `scheme` and `port`: what lets a request
    /// reach a loopback, private or link-local address. `*` and names never
    /// do. Free.
    pub fn names_address(&self, scheme: Scheme, ip: IpAddr, port: u16) -> bool {
        self.scheme_and_port_match(scheme, port)
            && matches!(&self.host, HostMatch::Net(net) if net.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Pattern {
        text.parse().expect("pattern")
    }

    fn t(url: &str) -> Target {
        Target::from_uri(&url.parse().expect("uri")).expect("target")
    }

    #[test]
    fn patterns_parse_in_spins_forms() {
        assert!(p("https://api.example.com").matches(&t("https://api.example.com/v1?x=1")));
        assert!(p("https://API.example.com.").matches(&t("https://api.EXAMPLE.com:443/")));
        assert!(!p("https://api.example.com").matches(&t("https://api.example.com:8443/")));
        assert!(!p("https://api.example.com").matches(&t("http://api.example.com/")));
        assert!(p("https://*.example.com:8443").matches(&t("https://a.b.example.com:8443/")));
        assert!(!p("https://*.example.com:8443").matches(&t("https://example.com:8443/")));
        assert!(!p("https://*.example.com:8443").matches(&t("https://evilexample.com:8443/")));
        assert!(p("http://127.0.0.1:*").matches(&t("http://127.0.0.1:9/")));
        assert!(!p("http://127.0.0.1:*").matches(&t("http://localhost:9/")));
        assert!(p("*://host:*").matches(&t("https://host:1/")));
        assert!(p("*://host:*").matches(&t("http://host:65535/")));
        assert!(p("*://*:*").matches(&t("http://10.1.2.3:7/")));
        assert!(p("http://10.0.0.0/8:*").matches(&t("http://10.200.0.1:80/")));
        assert!(!p("http://10.0.0.0/8:*").matches(&t("http://11.0.0.1:80/")));
        assert!(p("http://[::1]:8080").matches(&t("http://[::1]:8080/")));
        assert!(p("http://[fc00::]/7:*").matches(&t("http://[fd00::5]:1/")));
        assert!(p("https://example.com/").matches(&t("https://example.com/")));
        // An IPv4-mapped literal is the IPv4 address it maps.
        assert!(p("http://127.0.0.1:*").matches(&t("http://[::ffff:127.0.0.1]:5/")));
    }

    #[test]
    fn malformed_patterns_name_the_mistake() {
        let e = |s: &str| s.parse::<Pattern>().expect_err(s);
        assert!(matches!(e("api.example.com"), PatternError::NoScheme(_)));
        assert!(matches!(e("ftp://x"), PatternError::Scheme { .. }));
        assert!(matches!(e("https://x/path"), PatternError::Host(_)));
        assert!(matches!(e("https://u@x"), PatternError::NotAnAuthority(_)));
        assert!(matches!(e("https://x?q"), PatternError::NotAnAuthority(_)));
        assert!(matches!(e("https://"), PatternError::NotAnAuthority(_)));
        assert!(matches!(e("https://x:0"), PatternError::Port(_)));
        assert!(matches!(e("https://x:65536"), PatternError::Port(_)));
        assert!(matches!(e("https://x:+1"), PatternError::Port(_)));
        assert!(matches!(e("https://a..b"), PatternError::Host(_)));
        assert!(matches!(e("https://*x.com"), PatternError::Host(_)));
        assert!(matches!(e("http://10.0.0.0/33:*"), PatternError::Host(_)));
        assert!(matches!(e("http://[::1"), PatternError::Host(_)));
        assert!(matches!(e("http://[::1]/129"), PatternError::Host(_)));
        let msg = e("api.example.com").to_string();
        assert!(msg.contains("https://api.example.com"), "{msg}");
    }

    #[test]
    fn only_ip_literals_and_ranges_name_an_address() {
        let lo = "127.0.0.1".parse().expect("ip");
        assert!(p("http://127.0.0.1:*").names_address(Scheme::Http, lo, 8080));
        assert!(p("http://127.0.0.0/8:*").names_address(Scheme::Http, lo, 8080));
        assert!(!p("http://127.0.0.1:*").names_address(Scheme::Https, lo, 8080));
        assert!(!p("http://localhost:*").names_address(Scheme::Http, lo, 8080));
        assert!(!p("*://*:*").names_address(Scheme::Http, lo, 8080));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        assert!(p("http://127.0.0.1:*").names_address(Scheme::Http, mapped, 1));
    }

    #[test]
    fn hostile_uris_have_no_target_or_a_plain_one() {
        let none = |u: &str| Target::from_uri(&u.parse().expect("uri")).is_none();
        assert!(none("ftp://example.com/"));
        assert!(none("http://user@example.com/"));
        assert!(none("/relative"));
        assert_eq!(
            t("http://EXAMPLE.com./x").to_string(),
            "http://example.com:80",
            "no path or query in what is logged"
        );
    }
}
