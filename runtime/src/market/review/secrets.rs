//! The secret scan: credentials baked into a component's data segments.
//!
//! Every core module's data segments (nested modules included) are split
//! into tokens — maximal runs of `[A-Za-z0-9+/_.-]` — and each token is
//! checked against known key prefixes (`sk-`, `AKIA`, `ghp_`, `xox?-`, …)
//! and, failing those, for being a high-entropy string (32–256 characters,
//! upper case, lower case and digits mixed, ≥ 4.2 bits of Shannon entropy
//! per character, the character class changing at ≥ 40 % of positions,
//! one alphabet (not both `+/` and `-_`), no alphabet run
//! such as `ABCDEFGH`; `.` separates parts, as in a JWT). PEM private-key
//! headers are found by substring. Hex digests, paths and identifiers do
//! not trip it: hex stays under 4 bits per character, and paths and
//! identifiers lack one of the three character classes. The hash part of a
//! modular-crypt password hash (`$6$rounds=…$salt$HASH`) is a one-way hash,
//! not a credential, and is skipped.

use serde::Serialize;
use wasmparser::{Parser, Payload};

/// One credential-looking string in a data segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What it looks like: `openai-key`, `aws-access-key-id`,
    /// `github-token`, `slack-token`, `pem-private-key` or
    /// `high-entropy-token`.
    pub kind: &'static str,
    /// Byte offset of the string in the component.
    pub offset: usize,
    /// Its length in bytes.
    pub length: usize,
    /// Its first four characters and `…` (the rest is not repeated).
    pub preview: String,
}

/// What the scan looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Scan {
    /// Data segments scanned (all core modules).
    pub segments: usize,
    /// Bytes scanned.
    pub bytes: usize,
    /// What it found.
    pub findings: Vec<Finding>,
}

/// Shortest token checked for entropy.
const MIN_ENTROPY_LEN: usize = 32;
/// Longest token checked for entropy: longer runs are encoded data
/// (base64 assets), not keys.
const MAX_ENTROPY_LEN: usize = 256;
/// Smallest rate of character-class changes of a random key.
const MIN_SWITCH_RATE: f64 = 0.4;
/// Bits per character at or above which a mixed-class token is a secret.
const MIN_ENTROPY_BITS: f64 = 4.2;
/// Keep a report short: at most this many findings.
const MAX_FINDINGS: usize = 32;

/// Scan every data segment of `bytes`. Cost: one pass over the section
/// headers plus one over the data bytes; no allocation per byte. An
/// unparsable component yields what was scanned before the error (the
/// structural-bounds step reports the error itself).
pub fn scan(bytes: &[u8]) -> Scan {
    let mut out = Scan::default();
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(Payload::DataSection(reader)) = payload else {
            continue;
        };
        for data in reader.into_iter().flatten() {
            out.segments += 1;
            out.bytes += data.data.len();
            // `range` covers the whole segment entry; the bytes are its tail.
            let start = data.range.end.saturating_sub(data.data.len());
            scan_segment(data.data, start, &mut out.findings);
        }
    }
    out.findings.truncate(MAX_FINDINGS);
    out
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'_' | b'.' | b'-')
}

fn scan_segment(data: &[u8], base: usize, findings: &mut Vec<Finding>) {
    const PEM: &[u8] = b"-----BEGIN ";
    let mut i = 0;
    while let Some(pos) = find(&data[i..], PEM) {
        let at = i + pos;
        let line_end = data[at..]
            .iter()
            .position(|b| *b == b'\n' || *b == 0)
            .map_or(data.len(), |e| at + e);
        let header = &data[at..line_end.min(at + 80)];
        if find(header, b"PRIVATE KEY-----").is_some() {
            findings.push(finding("pem-private-key", &data[at..line_end], base + at));
        }
        i = at + PEM.len();
    }
    let mut start = None;
    for (j, &b) in data.iter().chain(std::iter::once(&0u8)).enumerate() {
        match (is_token_byte(b), start) {
            (true, None) => start = Some(j),
            (false, Some(s)) => {
                if !is_crypt_hash(&data[..s]) {
                    scan_token(&data[s..j], base + s, findings);
                }
                start = None;
            }
            _ => {}
        }
    }
}

/// Whether the token that follows `before` is the hash part of a
/// modular-crypt password hash (`$5$rounds=1234$salt$HASH`, `$6$…`,
/// `$2b$…`, `$y$…`): a one-way hash, stored as such by design, not a
/// credential to use. CPython's standard library carries the SHA-crypt
/// test vectors, which are otherwise high-entropy tokens.
fn is_crypt_hash(before: &[u8]) -> bool {
    const IDS: &[&[u8]] = &[
        b"1", b"2a", b"2b", b"2y", b"5", b"6", b"7", b"y", b"gy", b"md5",
    ];
    if before.last() != Some(&b'$') {
        return false;
    }
    // The `$id$[rounds=N$]salt$` header: at most 80 bytes of salt-ish text.
    let header_start = before
        .iter()
        .rev()
        .take(80)
        .position(|b| !(is_token_byte(*b) || matches!(b, b'$' | b'=' | b',')))
        .map_or(before.len().saturating_sub(80), |back| before.len() - back);
    let header = &before[header_start..];
    // The header may follow other text in the token run: find its first `$id$`.
    (0..header.len()).any(|i| {
        header[i] == b'$'
            && IDS.iter().any(|id| {
                header[i + 1..].starts_with(id) && header.get(i + 1 + id.len()) == Some(&b'$')
            })
            && header[i + 1..].iter().filter(|b| **b == b'$').count() >= 2
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn finding(kind: &'static str, token: &[u8], offset: usize) -> Finding {
    let head: String = token.iter().take(4).map(|b| char::from(*b)).collect();
    Finding {
        kind,
        offset,
        length: token.len(),
        preview: format!("{head}…"),
    }
}

/// Key prefixes and what a key with that prefix is.
const PREFIXES: &[(&[u8], &str)] = &[
    (b"sk-", "openai-key"),
    (b"AKIA", "aws-access-key-id"),
    (b"ASIA", "aws-access-key-id"),
    (b"ghp_", "github-token"),
    (b"gho_", "github-token"),
    (b"ghu_", "github-token"),
    (b"ghs_", "github-token"),
    (b"ghr_", "github-token"),
    (b"github_pat_", "github-token"),
    (b"xoxa-", "slack-token"),
    (b"xoxb-", "slack-token"),
    (b"xoxp-", "slack-token"),
    (b"xoxr-", "slack-token"),
    (b"xoxs-", "slack-token"),
];

/// Credentials in `token`: keys with a known prefix anywhere in it (data
/// segments pack strings back to back, so a key need not start a token),
/// else the whole token if it is high-entropy.
fn scan_token(token: &[u8], base: usize, findings: &mut Vec<Finding>) {
    let before = findings.len();
    let mut i = 0;
    while i < token.len() {
        match key_at(&token[i..]) {
            Some((kind, len)) => {
                findings.push(finding(kind, &token[i..i + len], base + i));
                i += len;
            }
            None => i += 1,
        }
    }
    if findings.len() == before {
        // JWT-like tokens are dot-separated parts; each is judged alone.
        let mut offset = 0;
        for part in token.split(|b| *b == b'.') {
            if high_entropy(part) {
                findings.push(finding("high-entropy-token", part, base + offset));
            }
            offset += part.len() + 1;
        }
    }
}

/// A key starting at the beginning of `rest`: its kind and length.
fn key_at(rest: &[u8]) -> Option<(&'static str, usize)> {
    let (prefix, kind) = PREFIXES.iter().find(|(p, _)| rest.starts_with(p))?;
    let body = &rest[prefix.len()..];
    if kind.starts_with("aws") {
        // AKIA/ASIA + exactly 16 upper-case letters or digits.
        let ok = body.len() >= 16
            && body[..16]
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        return ok.then_some((*kind, prefix.len() + 16));
    }
    let len = body
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'-' || **b == b'_')
        .count();
    let key = &body[..len];
    // Real keys mix letters and digits; `disk-usage-…` does not.
    let mixed = key.iter().any(u8::is_ascii_digit) && key.iter().any(u8::is_ascii_alphabetic);
    let min = if *kind == "slack-token" { 10 } else { 20 };
    (len >= min && mixed).then_some((*kind, prefix.len() + len))
}

fn high_entropy(token: &[u8]) -> bool {
    if token.len() < MIN_ENTROPY_LEN
        || token.len() > MAX_ENTROPY_LEN
        || class_switch_rate(token) < MIN_SWITCH_RATE
        || !token.iter().any(u8::is_ascii_uppercase)
        || !token.iter().any(u8::is_ascii_lowercase)
        || !token.iter().any(u8::is_ascii_digit)
        || has_alphabet_run(token)
        || mixes_alphabets(token)
    {
        return false;
    }
    entropy(token) >= MIN_ENTROPY_BITS
}

/// How often consecutive characters change class (upper case, lower case,
/// digit, other): ~0.6 for a random key, ~0.2 for identifiers packed back
/// to back (`exhaustedUtf8Errorvalid_up_to…`).
fn class_switch_rate(token: &[u8]) -> f64 {
    let class = |b: &u8| {
        if b.is_ascii_uppercase() {
            0
        } else if b.is_ascii_lowercase() {
            1
        } else if b.is_ascii_digit() {
            2
        } else {
            3
        }
    };
    let switches = token
        .windows(2)
        .filter(|w| class(&w[0]) != class(&w[1]))
        .count();
    switches as f64 / (token.len().saturating_sub(1).max(1)) as f64
}

/// A key is drawn from one alphabet: base64 (`+/`) or URL-safe (`-_`).
/// Strings packed back to back (`MAX_SIG_DIGITS-+NaNinf00`) mix them.
fn mixes_alphabets(token: &[u8]) -> bool {
    let standard = token.iter().any(|b| matches!(b, b'+' | b'/'));
    let url_safe = token.iter().any(|b| matches!(b, b'-' | b'_'));
    standard && url_safe
}

/// `ABCDEFGH`, `abcdefgh`, `01234567`: encoding tables, not secrets.
fn has_alphabet_run(token: &[u8]) -> bool {
    let mut run = 1;
    for w in token.windows(2) {
        if w[1] == w[0].wrapping_add(1) && w[1].is_ascii_alphanumeric() {
            run += 1;
            if run >= 8 {
                return true;
            }
        } else {
            run = 1;
        }
    }
    false
}

/// Shannon entropy in bits per byte.
fn entropy(token: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in token {
        counts[usize::from(b)] += 1;
    }
    let n = token.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(data: &[u8]) -> Vec<&'static str> {
        let mut f = Vec::new();
        scan_segment(data, 0, &mut f);
        f.into_iter().map(|f| f.kind).collect()
    }

    #[test]
    fn known_prefixes_and_pem_headers_are_found() {
        assert_eq!(
            kinds(b"\0OPENAI_API_KEY=sk-abcdefghij0123456789XYZ\0"),
            ["openai-key"]
        );
        assert_eq!(kinds(b"\0AKIAIOSFODNN7EXAMPLE\0"), ["aws-access-key-id"]);
        assert_eq!(
            kinds(b" ghp_aB3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5 "),
            ["github-token"]
        );
        assert_eq!(kinds(b" xoxb-1234-5678-abcdEFGH "), ["slack-token"]);
        assert_eq!(
            kinds(b"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n"),
            ["pem-private-key"]
        );
        assert!(kinds(b"-----BEGIN PUBLIC KEY-----\n").is_empty());
    }

    #[test]
    fn keys_packed_back_to_back_are_each_found() {
        assert_eq!(
            kinds(b"AKIAIOSFODNN7EXAMPLEsk-fake9Qm2Xr7Lp4Tz8Vb1Nc6Hd3Kf5Wg0Jy"),
            ["aws-access-key-id", "openai-key"]
        );
    }

    #[test]
    fn random_tokens_are_found_and_ordinary_strings_are_not() {
        assert_eq!(
            kinds(b" 9Qm2Xr7Lp4Tz8Vb1Nc6Hd3Kf5Wg0JyA2sD4 "),
            ["high-entropy-token"]
        );
        for ordinary in [
            &b"/rustc/90b35a6239c3d8bdabc530a6a0816f7ff89a0aaf/library/core/src/fmt/mod.rs"[..],
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
            b"called `Option::unwrap()` on a `None` value",
            b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            b"library/alloc/src/collections/btree/map/entry.rs",
            b"task-runner-disk-usage-sk-",
            b"MAX_SIG_DIGITS-+NaNinf00.assertion",
            b"exhaustedUtf8Errorvalid_up_toerror_lenNoneSomedescription",
        ] {
            assert!(
                kinds(ordinary).is_empty(),
                "{}",
                String::from_utf8_lossy(ordinary)
            );
        }
    }

    #[test]
    fn modular_crypt_hashes_are_hashes_not_credentials() {
        // SHA-crypt test vectors, as CPython's standard library carries them.
        for hash in [
            &b"$5$rounds=1234$abc0123456789$3VfDjPt05VHFn47C/ojFZ6KRPYrOjj1lLbH.dkF3bZ6"[..],
            b"x\0$6$rounds=1234$abc0123456789$BCpt8zLrc/RcyuXmCDOE1ALqMXB2MH6n1g891HhFj8.w7LxGv.FTkqq6Vxc/km3Y0jE0j24jY5PIv/oOu6reg1",
        ] {
            assert!(kinds(hash).is_empty(), "{}", String::from_utf8_lossy(hash));
        }
        // A `$` alone before a key does not hide it.
        assert_eq!(
            kinds(b"price=$9Qm2Xr7Lp4Tz8Vb1Nc6Hd3Kf5Wg0JyA2sD4 "),
            ["high-entropy-token"]
        );
        assert_eq!(
            kinds(b"$9$9Qm2Xr7Lp4Tz8Vb1Nc6Hd3Kf5Wg0JyA2sD4 "),
            ["high-entropy-token"]
        );
    }

    #[test]
    fn findings_are_previewed_not_repeated() {
        let mut f = Vec::new();
        scan_segment(b"..\0AKIAIOSFODNN7EXAMPLE", 100, &mut f);
        assert_eq!(
            f,
            [Finding {
                kind: "aws-access-key-id",
                offset: 103,
                length: 20,
                preview: "AKIA…".into(),
            }]
        );
    }
}
