//! cosign-format ECDSA P-256 keys: generate, encrypt/decrypt the private
//! key, sign and verify.

use std::path::Path;

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use crypto_secretbox::{KeyInit, XSalsa20Poly1305, aead::Aead};
use p256::{
    ecdsa::{
        Signature as EcdsaSignature, SigningKey, VerifyingKey,
        signature::{Signer, Verifier},
    },
    pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding},
};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};

use super::VerifyError;
use crate::digest::Digest;

/// PEM label cosign (≥ 2) writes.
const PEM_SIGSTORE: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// PEM label older cosign wrote; still read.
const PEM_COSIGN: &str = "ENCRYPTED COSIGN PRIVATE KEY";
/// scrypt cost cosign writes today ("standard"); 32768 and 131072 are read too.
const SCRYPT_N_LOG2: u8 = 16;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;

/// cosign's encrypted-key envelope (go-securesystemslib `encrypted`), field
/// order as Go marshals it.
#[derive(Serialize, Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: KdfParams,
    salt: String,
}

#[derive(Serialize, Deserialize)]
struct KdfParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

/// An ECDSA P-256 signing key.
pub struct KeyPair {
    key: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public().id())
            .finish_non_exhaustive()
    }
}

fn fmt_err(e: impl std::fmt::Display) -> VerifyError {
    VerifyError::KeyFormat(e.to_string())
}

fn derive(password: &[u8], salt: &[u8], params: &KdfParams) -> Result<[u8; 32], VerifyError> {
    let log_n = match (params.n, params.r, params.p) {
        (32768, 8, 1) => 15,
        (65536, 8, 1) => 16,
        (131072, 8, 1) => 17,
        (n, r, p) => return Err(VerifyError::UnsupportedKdf { n, r, p }),
    };
    let params = scrypt::Params::new(log_n, params.r, params.p, 32).map_err(fmt_err)?;
    let mut key = [0u8; 32];
    scrypt::scrypt(password, salt, &params, &mut key).map_err(fmt_err)?;
    Ok(key)
}

impl KeyPair {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::random(&mut OsRng),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: *self.key.verifying_key(),
        }
    }

    /// Sign `payload`: base64 of the ASN.1 DER ECDSA-P256-SHA256 signature.
    pub fn sign(&self, payload: &[u8]) -> String {
        let sig: EcdsaSignature = self.key.sign(payload);
        B64.encode(sig.to_der().as_bytes())
    }

    /// The private key in cosign's encrypted PEM. Cost: one scrypt
    /// (N = 65536, ~64 MiB, ~0.1–0.3 s) — deliberately slow.
    pub fn to_encrypted_pem(&self, password: &[u8]) -> Result<String, VerifyError> {
        let der = self.key.to_pkcs8_der().map_err(fmt_err)?;
        let mut salt = [0u8; 32];
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut salt);
        OsRng.fill_bytes(&mut nonce);
        let params = KdfParams {
            n: 1 << SCRYPT_N_LOG2,
            r: SCRYPT_R,
            p: SCRYPT_P,
        };
        let key = derive(password, &salt, &params)?;
        let ciphertext = XSalsa20Poly1305::new(&key.into())
            .encrypt(&nonce.into(), der.as_bytes())
            .map_err(fmt_err)?;
        let envelope = Envelope {
            kdf: Kdf {
                name: "scrypt".into(),
                params,
                salt: B64.encode(salt),
            },
            cipher: Cipher {
                name: "nacl/secretbox".into(),
                nonce: B64.encode(nonce),
            },
            ciphertext: B64.encode(ciphertext),
        };
        let json = serde_json::to_vec(&envelope).map_err(fmt_err)?;
        pem_rfc7468::encode_string(PEM_SIGSTORE, LineEnding::LF, &json).map_err(fmt_err)
    }

    /// Decrypt a cosign private key (either PEM label). Cost: one scrypt.
    pub fn from_encrypted_pem(pem: &str, password: &[u8]) -> Result<Self, VerifyError> {
        let (label, body) = pem_rfc7468::decode_vec(pem.trim().as_bytes()).map_err(fmt_err)?;
        if label != PEM_SIGSTORE && label != PEM_COSIGN {
            return Err(VerifyError::KeyFormat(format!(
                "PEM type {label:?}; expected {PEM_SIGSTORE:?} (cosign's encrypted private key)"
            )));
        }
        let env: Envelope =
            serde_json::from_slice(&body).map_err(|e| fmt_err(format!("envelope: {e}")))?;
        if env.kdf.name != "scrypt" || env.cipher.name != "nacl/secretbox" {
            return Err(VerifyError::KeyFormat(format!(
                "unsupported envelope kdf {:?} / cipher {:?}",
                env.kdf.name, env.cipher.name
            )));
        }
        let decode =
            |what: &str, s: &str| B64.decode(s).map_err(|e| fmt_err(format!("{what}: {e}")));
        let salt = decode("salt", &env.kdf.salt)?;
        let nonce: [u8; 24] = decode("nonce", &env.cipher.nonce)?
            .try_into()
            .map_err(|_| fmt_err("nonce is not 24 bytes"))?;
        let ciphertext = decode("ciphertext", &env.ciphertext)?;
        let key = derive(password, &salt, &env.kdf.params)?;
        let der = XSalsa20Poly1305::new(&key.into())
            .decrypt(&nonce.into(), ciphertext.as_slice())
            .map_err(|_| VerifyError::WrongPassword)?;
        let key = SigningKey::from_pkcs8_der(&der)
            .map_err(|e| fmt_err(format!("decrypted key is not a PKCS#8 P-256 key: {e}")))?;
        Ok(Self { key })
    }

    /// Read and decrypt `path`.
    pub fn load(path: &Path, password: &[u8]) -> Result<Self, VerifyError> {
        Self::from_encrypted_pem(&read(path)?, password)
    }

    /// Write `<prefix>.key` (encrypted, mode 0600) and `<prefix>.pub`;
    /// refuses to overwrite.
    pub fn save(
        &self,
        prefix: &Path,
        password: &[u8],
    ) -> Result<(std::path::PathBuf, std::path::PathBuf), VerifyError> {
        let key_path = prefix.with_extension("key");
        let pub_path = prefix.with_extension("pub");
        for p in [&key_path, &pub_path] {
            if p.exists() {
                return Err(VerifyError::Io {
                    path: p.clone(),
                    message: "already exists; refusing to overwrite a key".into(),
                });
            }
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |e: std::io::Error| VerifyError::Io {
                path,
                message: e.to_string(),
            }
        };
        let pem = self.to_encrypted_pem(password)?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&key_path).map_err(io(&key_path))?;
        std::io::Write::write_all(&mut f, pem.as_bytes()).map_err(io(&key_path))?;
        std::fs::write(&pub_path, self.public().to_pem()?).map_err(io(&pub_path))?;
        Ok((key_path, pub_path))
    }
}

fn read(path: &Path) -> Result<String, VerifyError> {
    std::fs::read_to_string(path).map_err(|e| VerifyError::Io {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// An ECDSA P-256 verification key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
}

impl PublicKey {
    /// Parse a PEM `PUBLIC KEY` (SPKI).
    pub fn from_pem(pem: &str) -> Result<Self, VerifyError> {
        let key = VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|e| fmt_err(format!("not a P-256 PUBLIC KEY PEM: {e}")))?;
        Ok(Self { key })
    }

    /// Read a `.pub` file.
    pub fn load(path: &Path) -> Result<Self, VerifyError> {
        Self::from_pem(&read(path)?).map_err(|e| VerifyError::Io {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// PEM `PUBLIC KEY`.
    pub fn to_pem(&self) -> Result<String, VerifyError> {
        self.key.to_public_key_pem(LineEnding::LF).map_err(fmt_err)
    }

    /// A stable id: `sha256:` of the SPKI DER.
    pub fn id(&self) -> String {
        self.key
            .to_public_key_der()
            .map(|der| Digest::of(der.as_bytes()).to_string())
            .unwrap_or_default()
    }

    /// Verify a base64 DER signature over `payload`.
    pub fn verify(&self, payload: &[u8], signature_b64: &str) -> Result<(), String> {
        let der = B64
            .decode(signature_b64.trim())
            .map_err(|e| format!("signature is not base64: {e}"))?;
        let sig = EcdsaSignature::from_der(&der)
            .map_err(|e| format!("signature is not DER ECDSA: {e}"))?;
        self.key
            .verify(payload, &sig)
            .map_err(|_| "signature does not verify".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_pem_round_trips_and_rejects_wrong_password() {
        let k = KeyPair::generate();
        let pem = k.to_encrypted_pem(b"pw").expect("encrypt");
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        let back = KeyPair::from_encrypted_pem(&pem, b"pw").expect("decrypt");
        assert_eq!(back.public(), k.public());
        assert!(matches!(
            KeyPair::from_encrypted_pem(&pem, b"nope"),
            Err(VerifyError::WrongPassword)
        ));
        let relabelled = pem.replace("SIGSTORE", "COSIGN");
        assert!(
            KeyPair::from_encrypted_pem(&relabelled, b"pw").is_ok(),
            "old label is read"
        );
        assert!(matches!(
            KeyPair::from_encrypted_pem(
                &pem.replace("ENCRYPTED SIGSTORE PRIVATE", "PRIVATE"),
                b"pw"
            ),
            Err(VerifyError::KeyFormat(_))
        ));
    }

    #[test]
    fn public_pem_and_signatures() {
        let k = KeyPair::generate();
        let p = PublicKey::from_pem(&k.public().to_pem().expect("pem")).expect("parse");
        let sig = k.sign(b"payload");
        p.verify(b"payload", &sig).expect("verifies");
        assert!(p.verify(b"other", &sig).is_err());
        assert!(p.verify(b"payload", "not base64!").is_err());
        assert!(p.id().starts_with("sha256:"));
    }
}
