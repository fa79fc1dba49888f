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
//!
//! Why not the `sigstore` crate: its cosign feature pulls the whole keyless
//! stack (Fulcio, Rekor, OIDC, TUF) into every build for a format that is a
//! few hundred lines; these primitives are the RustCrypto crates sigstore
//! itself uses.

mod keys;
mod policy;

pub use keys::{KeyPair, PublicKey};
pub use policy::{Require, Requirement, TrustConfig, TrustPolicy, TrustRule};

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
        let p: Self = serde_json::from_slice(bytes)
            .map_err(|e| format!("payload is not a simple-signing document: {e}"))?;
        if p.critical.kind != SIGNATURE_TYPE {
            return Err(format!(
                "payload type is {:?}, not {SIGNATURE_TYPE:?}",
                p.critical.kind
            ));
        }
        if p.critical.image.docker_manifest_digest != digest.to_string() {
            return Err(format!(
                "payload vouches for {}, not {digest}",
                p.critical.image.docker_manifest_digest
            ));
        }
        Ok(())
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
/// A signature counts for a key when the ECDSA signature verifies over the
/// payload bytes *and* the payload vouches for exactly `digest`.
pub fn check(
    reference: &str,
    digest: &Digest,
    signatures: &[Signature],
    keys: &[PublicKey],
    all_of: bool,
) -> Result<Admission, VerifyError> {
    let mut ok = Vec::new();
    let mut failures = Vec::new();
    for key in keys {
        let verdict = signatures.iter().find_map(|s| {
            key.verify(&s.payload, &s.signature).ok()?;
            Some(Payload::vouches_for(&s.payload, digest))
        });
        match verdict {
            Some(Ok(())) => ok.push(key.id()),
            Some(Err(why)) => failures.push(format!("key {}: {why}", key.id())),
            None => failures.push(format!("key {}: no signature verifies with it", key.id())),
        }
    }
    let admitted = if all_of {
        failures.is_empty() && !ok.is_empty()
    } else {
        !ok.is_empty()
    };
    if admitted {
        Ok(Admission::Keys { keys: ok })
    } else {
        Err(VerifyError::NotTrusted {
            reference: reference.to_owned(),
            digest: *digest,
            detail: format!(
                "{} {} signature(s) checked against {} key(s) ({}): {}",
                if all_of { "all-of" } else { "any-of" },
                signatures.len(),
                keys.len(),
                if all_of {
                    "every key must verify"
                } else {
                    "one key must verify"
                },
                failures.join("; ")
            ),
        })
    }
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
        };
        assert!(
            check(
                "r/x",
                &d,
                std::slice::from_ref(&good),
                &[key.public()],
                false
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
                false
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
                true
            )
            .is_err()
        );
        assert!(
            check(
                "r/x",
                &d,
                std::slice::from_ref(&good),
                &[key.public(), other.public()],
                false
            )
            .is_ok()
        );
        // A valid signature over another digest's payload.
        let wrong = Digest::of(b"other");
        let err =
            check("r/x", &wrong, &[good], &[key.public()], false).expect_err("digest mismatch");
        assert!(err.to_string().contains("vouches for"), "{err}");
    }
}
