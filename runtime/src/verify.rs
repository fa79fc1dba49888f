//! Signatures and trust: cosign-compatible keys and signatures, and the
//! operator's trust policy that decides what may be pulled.
//!
//! Formats follow cosign's key-based layout so `cosign sign/verify --key`
//! interoperate (proven against the independent reference in
//! `tests/interop/`):
//!
//! - keys: ECDSA P-256; the private key is PKCS#8, encrypted with
//!   scrypt + nacl/secretbox in cosign's JSON envelope, PEM
//!   `ENCRYPTED SIGSTORE PRIVATE KEY` (`ENCRYPTED COSIGN PRIVATE KEY` read
//!   too); the public key is PEM `PUBLIC KEY` (SPKI).
//! - signatures: ECDSA-P256-SHA256 (ASN.1 DER, base64) over a
//!   simple-signing payload naming the manifest digest, stored as a layer of
//!   the `sha256-<hex>.sig` manifest in the same repository (see
//!   [`crate::oci::sign`]).
//! - trust decisions (`admit`): whether a cached admission still holds and
//!   whether served signatures satisfy a rule; the OCI layer only fetches.
//!
//! Why not the `sigstore` crate: its cosign feature pulls the whole keyless
//! stack (Fulcio, Rekor, OIDC, TUF) into every build for a format that is a
//! few hundred lines; these primitives are the RustCrypto crates sigstore
//! itself uses.

mod admit;
mod keys;
mod name;
mod policy;

pub use admit::{SignatureLayers, TrustSubject};
pub use keys::{KeyPair, PublicKey};
pub use name::{canonical_globs, canonical_repository, is_loopback_registry};
pub use policy::{Require, Requirement, SignedIdentity, TrustConfig, TrustPolicy, TrustRule};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// `critical.type` of every cosign signature payload.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";

/// Why a key, signature or policy was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The key file is not in cosign's format.
    #[error("not a cosign key: {0}")]
    KeyFormat(String),
    /// The password does not decrypt the key.
    #[error("wrong password for the private key (or the key file is corrupted)")]
    WrongPassword,
    /// The key uses scrypt parameters cosign does not accept.
    #[error(
        "unsupported key encryption: scrypt N={n}, r={r}, p={p} (cosign accepts N=32768/65536/131072, r=8, p=1)"
    )]
    UnsupportedKdf {
        /// Cost.
        n: u64,
        /// Block size.
        r: u32,
        /// Parallelism.
        p: u32,
    },
    /// The artifact has no signatures at all.
    #[error(
        "{reference} ({digest}) is not signed: no {tag} signature manifest; sign it with `soma sign` or add an accept_unsigned trust rule"
    )]
    Unsigned {
        /// The reference.
        reference: String,
        /// The manifest digest.
        digest: Digest,
        /// The signature tag looked for.
        tag: String,
    },
    /// Signatures exist but none (or not all required) verify with the trusted keys.
    #[error("{reference} ({digest}) is not trusted: {detail}")]
    NotTrusted {
        /// The reference.
        reference: String,
        /// The manifest digest.
        digest: Digest,
        /// Which keys failed and why.
        detail: String,
    },
    /// The trust policy is unusable.
    #[error("invalid trust policy: {0}")]
    BadPolicy(String),
    /// A key file could not be read or written.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The simple-signing payload cosign signs: which manifest digest the
/// signature vouches for. Field order is cosign's (Go struct order), so the
/// bytes match what cosign produces.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payload {
    /// The claims.
    pub critical: Critical,
    /// Free-form annotations (`null` when none).
    pub optional: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `critical` of a [`Payload`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Critical {
    /// Where the image was signed (informational; verifiers ignore it).
    pub identity: Identity,
    /// What was signed.
    pub image: Image,
    /// Always [`SIGNATURE_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
}

/// `critical.identity`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    /// `registry/repository`.
    #[serde(rename = "docker-reference")]
    pub docker_reference: String,
}

/// `critical.image`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    /// The signed manifest digest, `sha256:<hex>`.
    #[serde(rename = "docker-manifest-digest")]
    pub docker_manifest_digest: String,
}

impl Payload {
    /// The payload vouching for `digest`, signed at `docker_reference`.
    pub fn new(docker_reference: &str, digest: &Digest) -> Self {
        Self {
            critical: Critical {
                identity: Identity {
                    docker_reference: docker_reference.to_owned(),
                },
                image: Image {
                    docker_manifest_digest: digest.to_string(),
                },
                kind: SIGNATURE_TYPE.to_owned(),
            },
            optional: None,
        }
    }

    /// The exact bytes to sign (compact JSON, cosign's field order).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether `bytes` is a cosign payload vouching for exactly `digest`.
    pub fn vouches_for(bytes: &[u8], digest: &Digest) -> Result<(), String> {
        Self::admits(bytes, digest, None)
    }

    /// Whether `bytes` is a cosign payload vouching for exactly `digest` and,
    /// when `identity` is given (a canonical `registry/repository`), signed
    /// for that repository (its `docker-reference`, canonicalized, equal to
    /// it). The reason names what differs; attacker-controlled text in it is
    /// quoted and clipped.
    pub fn admits(bytes: &[u8], digest: &Digest, identity: Option<&str>) -> Result<(), String> {
        let p: Self = serde_json::from_slice(bytes).map_err(|e| {
            format!(
                "payload is not a simple-signing document: {}",
                clip(&e.to_string())
            )
        })?;
        if p.critical.kind != SIGNATURE_TYPE {
            return Err(format!(
                "payload type is {:?}, not {SIGNATURE_TYPE:?}",
                clip(&p.critical.kind)
            ));
        }
        if p.critical.image.docker_manifest_digest != digest.to_string() {
            return Err(format!(
                "payload vouches for {:?}, not {digest}",
                clip(&p.critical.image.docker_manifest_digest)
            ));
        }
        if let Some(expected) = identity {
            let named = &p.critical.identity.docker_reference;
            match canonical_repository(named) {
                Ok(signed) if signed == expected => {}
                Ok(signed) => {
                    return Err(format!(
                        "payload was signed for repository {:?}, not {expected:?} (signed_identity = \"match-repository\")",
                        clip(&signed)
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "payload's docker-reference {:?} is not a repository name (signed_identity = \"match-repository\")",
                        clip(named)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// At most this many characters of registry-supplied text go into a message.
const CLIP_CHARS: usize = 160;

/// `text` cut to [`CLIP_CHARS`] characters (with `…` when cut).
fn clip(text: &str) -> String {
    match text.char_indices().nth(CLIP_CHARS) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// One signature found in a registry: the payload bytes and the base64
/// signature from the layer annotation.
#[derive(Debug, Clone)]
pub struct Signature {
    /// The simple-signing payload (the layer blob), digest-verified.
    pub payload: Vec<u8>,
    /// Base64 DER ECDSA signature (`dev.cosignproject.cosign/signature`).
    pub signature: String,
    /// Its position among the signature manifest's layers (1-based), for messages.
    pub layer: usize,
}

/// Which signature(s) admitted an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "by")]
pub enum Admission {
    /// A rule accepts this repository unsigned.
    Unsigned,
    /// Verified with these keys (ids = `sha256:` of the SPKI DER).
    Keys {
        /// Key ids that verified.
        keys: Vec<String>,
    },
}

/// Check `signatures` for `digest` against `keys` (all of them, or any).
///
/// A signature layer counts for a key when the ECDSA signature verifies over
/// the payload bytes *and* the payload vouches for exactly `digest` (and,
/// with `identity`, names that canonical repository). Layers are judged one
/// by one: a layer that is garbage, signed by another key or vouching for
/// something else is passed over, never fatal, so one good layer admits the
/// artifact under `any-of`. When nothing admits it, the error lists why each
/// layer failed, after `unreadable` (the layers the fetcher could not read);
/// the list is as long as the layers examined, each reason clipped.
/// Cost: one ECDSA verification per (layer, key) pair; no I/O.
pub fn check(
    reference: &str,
    digest: &Digest,
    signatures: &[Signature],
    keys: &[PublicKey],
    all_of: bool,
    identity: Option<&str>,
    unreadable: &[String],
) -> Result<Admission, VerifyError> {
    let mut verified = vec![false; keys.len()];
    let mut reasons: Vec<String> = unreadable.to_vec();
    for s in signatures {
        let mut signed_by = None;
        let mut admitted_here = false;
        for (i, key) in keys.iter().enumerate() {
            if key.verify(&s.payload, &s.signature).is_err() {
                continue;
            }
            match Payload::admits(&s.payload, digest, identity) {
                Ok(()) => {
                    verified[i] = true;
                    admitted_here = true;
                }
                Err(why) => signed_by = Some((key.id(), why)),
            }
        }
        if !admitted_here {
            reasons.push(match signed_by {
                Some((key, why)) => format!("layer {} (key {key}): {why}", s.layer),
                None => format!(
                    "layer {}: its signature verifies with none of the {} trusted key(s)",
                    s.layer,
                    keys.len()
                ),
            });
        }
    }
    let ok: Vec<String> = keys
        .iter()
        .zip(&verified)
        .filter(|(_, v)| **v)
        .map(|(k, _)| k.id())
        .collect();
    let admitted = if all_of {
        !ok.is_empty() && verified.iter().all(|v| *v)
    } else {
        !ok.is_empty()
    };
    if admitted {
        return Ok(Admission::Keys { keys: ok });
    }
    if all_of {
        for (key, _) in keys.iter().zip(&verified).filter(|(_, v)| !**v) {
            reasons.push(format!("key {}: no layer verifies with it", key.id()));
        }
    }
    if signatures.is_empty() && unreadable.is_empty() {
        reasons.push("the signature manifest has no simple-signing layers".into());
    }
    Err(VerifyError::NotTrusted {
        reference: reference.to_owned(),
        digest: *digest,
        detail: format!(
            "{} {} signature layer(s) checked against {} key(s) ({}): {}",
            if all_of { "all-of" } else { "any-of" },
            signatures.len() + unreadable.len(),
            keys.len(),
            if all_of {
                "every key must verify"
            } else {
                "one key must verify"
            },
            reasons.join("; ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_bytes_match_cosign() {
        let d = Digest::of(b"x");
        let got = String::from_utf8(Payload::new("127.0.0.1:5000/soma/calc", &d).to_bytes())
            .expect("utf8");
        let want = format!(
            "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"127.0.0.1:5000/soma/calc\"}},\"image\":{{\"docker-manifest-digest\":\"{d}\"}},\"type\":\"cosign container image signature\"}},\"optional\":null}}"
        );
        assert_eq!(got, want);
    }

    #[test]
    fn check_requires_signature_and_digest() {
        let key = KeyPair::generate();
        let other = KeyPair::generate();
        let d = Digest::of(b"manifest");
        let payload = Payload::new("r/x", &d).to_bytes();
        let good = Signature {
            signature: key.sign(&payload),
            payload: payload.clone(),
            layer: 1,
        };
        assert!(
            check(
                "r/x",
                &d,
                std::slice::from_ref(&good),
                &[key.public()],
                false,
                None,
                &[],
            )
            .is_ok()
        );
        // Another key: not trusted.
        assert!(
            check(
                "r/x",
                &d,
                std::slice::from_ref(&good),
                &[other.public()],
                false,
                None,
                &[],
            )
            .is_err()
        );
        // all-of needs both.
        assert!(
            check(
                "r/x",
                &d,
                std::slice::from_ref(&good),
                &[key.public(), other.public()],
                true,
                None,
                &[],
            )
            .is_err()
        );
        assert!(
            check(
                "r/x",
                &d,
                std::slice::from_ref(&good),
                &[key.public(), other.public()],
                false,
                None,
                &[],
            )
            .is_ok()
        );
        // A valid signature over another digest's payload.
        let wrong = Digest::of(b"other");
        let err = check(
            "r/x",
            &wrong,
            std::slice::from_ref(&good),
            &[key.public()],
            false,
            None,
            &[],
        )
        .expect_err("digest mismatch");
        assert!(err.to_string().contains("vouches for"), "{err}");
    }

    fn signed(key: &KeyPair, payload: &[u8], layer: usize) -> Signature {
        Signature {
            signature: key.sign(payload),
            payload: payload.to_vec(),
            layer,
        }
    }

    /// Any-of over layers: garbage, a stranger's signature and a trusted
    /// signature over another digest before the good layer do not hide it.
    #[test]
    fn one_good_layer_admits_whatever_comes_before_it() {
        let key = KeyPair::generate();
        let stranger = KeyPair::generate();
        let d = Digest::of(b"manifest");
        let good = Payload::new("localhost:5000/a", &d).to_bytes();
        let layers = vec![
            Signature {
                payload: b"not json".to_vec(),
                signature: key.sign(b"not json"),
                layer: 1,
            },
            signed(&stranger, &good, 2),
            signed(
                &key,
                &Payload::new("localhost:5000/a", &Digest::of(b"x")).to_bytes(),
                3,
            ),
            Signature {
                payload: good.clone(),
                signature: "!!not base64".into(),
                layer: 4,
            },
            signed(&key, &good, 5),
        ];
        let admission =
            check("r", &d, &layers, &[key.public()], false, None, &[]).expect("admitted");
        assert_eq!(
            admission,
            Admission::Keys {
                keys: vec![key.public().id()]
            }
        );
        // Without the good layer, each failure is listed.
        let err = check(
            "r",
            &d,
            &layers[..4],
            &[key.public()],
            false,
            None,
            &["layer 9: too big".into()],
        )
        .expect_err("refused");
        let text = err.to_string();
        for want in [
            "layer 1 (key",
            "not a simple-signing",
            "layer 2: its signature verifies with none",
            "layer 3 (key",
            "vouches for",
            "layer 4:",
            "layer 9: too big",
            "5 signature layer(s)",
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
    }

    #[test]
    fn match_repository_compares_canonical_names() {
        let key = KeyPair::generate();
        let d = Digest::of(b"manifest");
        let for_a = signed(
            &key,
            &Payload::new("127.0.0.1:5000/acme/a", &d).to_bytes(),
            1,
        );
        let keys = [key.public()];
        assert!(
            check(
                "r",
                &d,
                std::slice::from_ref(&for_a),
                &keys,
                false,
                None,
                &[]
            )
            .is_ok()
        );
        assert!(
            check(
                "r",
                &d,
                std::slice::from_ref(&for_a),
                &keys,
                false,
                Some("localhost:5000/acme/a"),
                &[]
            )
            .is_ok()
        );
        let err = check(
            "r",
            &d,
            std::slice::from_ref(&for_a),
            &keys,
            false,
            Some("localhost:5000/acme/b"),
            &[],
        )
        .expect_err("signed for another repository");
        assert!(
            err.to_string()
                .contains("signed for repository \"localhost:5000/acme/a\""),
            "{err}"
        );
        let junk = signed(&key, &Payload::new("", &d).to_bytes(), 1);
        let err = check(
            "r",
            &d,
            &[junk],
            &keys,
            false,
            Some("localhost:5000/acme/a"),
            &[],
        )
        .expect_err("no repository");
        assert!(err.to_string().contains("not a repository name"), "{err}");
    }
}
