//! The private-range rule: which addresses a request may not reach unless
//! an operator allowlist entry names the address or its range explicitly
//! (SSRF and DNS rebinding defence; see `docs/operating.md`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::pattern::canonical;

/// Whether `ip` is in a range a capsule may not reach by default:
/// loopback, private, link-local (incl. cloud metadata), CGNAT,
/// unspecified, multicast, broadcast and reserved IPv4, and for IPv6
/// loopback, unspecified, unique-local, link-local, multicast, and every
/// form that embeds an IPv4 address (mapped, compatible, NAT64, 6to4)
/// whose IPv4 address is restricted. Free.
pub fn is_restricted(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => restricted_v4(v4),
        IpAddr::V6(v6) => restricted_v6(v6),
    }
}

fn restricted_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()            // 127/8
        || ip.is_private()      // 10/8, 172.16/12, 192.168/16
        || ip.is_link_local()   // 169.254/16 (incl. 169.254.169.254 metadata)
        || ip.is_unspecified()  // 0.0.0.0
        || a == 0               // 0/8 ("this network")
        || (a == 100 && (b & 0xc0) == 64) // 100.64/10 CGNAT
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // 192.0.0/24 IETF
        || (a == 198 && (b & 0xfe) == 18) // 198.18/15 benchmarking
        || ip.is_multicast()    // 224/4
        || a >= 240 // 240/4 reserved, 255.255.255.255 broadcast
}

fn restricted_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return true;
    }
    if (seg[0] & 0xfe00) == 0xfc00 || (seg[0] & 0xffc0) == 0xfe80 {
        return true; // fc00::/7 unique-local, fe80::/10 link-local
    }
    if (seg[0] & 0xffc0) == 0xfec0 {
        return true; // fec0::/10 site-local (deprecated)
    }
    let embedded = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    // ::a.b.c.d (IPv4-compatible, deprecated): restricted if the IPv4 is.
    if seg[..6].iter().all(|s| *s == 0) {
        return restricted_v4(embedded(seg[6], seg[7]));
    }
    // 64:ff9b::/96 (NAT64) and 64:ff9b:1::/48 (local-use NAT64).
    if seg[0] == 0x64 && seg[1] == 0xff9b {
        return seg[2] == 1 || restricted_v4(embedded(seg[6], seg[7]));
    }
    // 2002::/16 (6to4) carries the IPv4 in segments 1..3.
    if seg[0] == 0x2002 {
        return restricted_v4(embedded(seg[1], seg[2]));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> bool {
        is_restricted(s.parse().expect("ip"))
    }

    #[test]
    fn private_loopback_link_local_and_metadata_ranges_are_restricted() {
        for ip in [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(r(ip), "{ip} must be restricted");
        }
    }

    #[test]
    fn ipv4_embedded_in_ipv6_is_judged_by_its_ipv4() {
        for ip in [
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:192.168.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
        ] {
            assert!(r(ip), "{ip} must be restricted");
        }
        assert!(!r("::ffff:93.184.216.34"));
        assert!(!r("64:ff9b::5db8:d822"));
    }

    #[test]
    fn public_addresses_are_not() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:2800:220:1:248:1893:25c8:1946",
        ] {
            assert!(!r(ip), "{ip} is public");
        }
    }
}
