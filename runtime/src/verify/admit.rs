//! The trust decision for one artifact: whether a recorded [`Admission`]
//! still satisfies a [`Requirement`] (so a cached artifact needs no
//! network), and the verdict over the signatures a registry served.
//!
//! No I/O here: [`Requirement::admit`] asks its caller (the OCI layer, which
//! knows cosign's registry layout) for the signatures only when the
//! requirement needs them.

use super::{Admission, PublicKey, Requirement, Signature, VerifyError, check};
use crate::digest::Digest;

/// The signatures read from an artifact's signature manifest, and why each
/// layer that could not be read was passed over (one reason per layer).
pub type SignatureLayers = (Vec<Signature>, Vec<String>);

/// The artifact a trust decision is about, as messages name it.
#[derive(Debug, Clone, Copy)]
pub struct TrustSubject<'a> {
    /// The reference as the user wrote it (resolved form).
    pub reference: &'a str,
    /// Its canonical `registry/repository` (what trust rules match).
    pub repository: &'a str,
    /// The manifest digest the reference resolved to.
    pub digest: &'a Digest,
    /// Where its signatures would be (cosign's `sha256-<hex>.sig` tag), for
    /// the "not signed" message.
    pub signature_tag: &'a str,
}

impl Requirement {
    /// Whether `admission`, recorded when the artifact was first pulled,
    /// still satisfies this requirement, so the cached artifact is admitted
    /// without the network. A `match-repository` rule never reuses one: the
    /// cache records which keys admitted a digest, not for which repository.
    /// Cost: a key-id comparison per trusted key; no I/O.
    pub fn admits_cached(&self, admission: &Admission) -> bool {
        match (self, admission) {
            (Self::AcceptUnsigned, _) => true,
            (
                Self::Signed {
                    identity: Some(_), ..
                },
                _,
            ) => false,
            (Self::Signed { keys, all_of, .. }, Admission::Keys { keys: verified }) => {
                let ok = |k: &PublicKey| verified.contains(&k.id());
                !keys.is_empty()
                    && if *all_of {
                        keys.iter().all(ok)
                    } else {
                        keys.iter().any(ok)
                    }
            }
            (Self::Signed { .. }, Admission::Unsigned) => false,
        }
    }

    /// Decide whether `subject` may be admitted. `signatures` is called only
    /// when the requirement needs signatures and has keys to check them
    /// with; it returns `None` when the artifact has no signature manifest.
    ///
    /// Refuses with [`VerifyError::NotTrusted`] when no key is trusted for the
    /// repository, [`VerifyError::Unsigned`] when there are no signatures,
    /// and whatever [`check`] finds otherwise. Cost: one ECDSA verification
    /// per (layer, key) pair, plus what `signatures` costs.
    pub fn admit<E: From<VerifyError>>(
        &self,
        subject: &TrustSubject<'_>,
        signatures: impl FnOnce() -> Result<Option<SignatureLayers>, E>,
    ) -> Result<Admission, E> {
        let Self::Signed {
            keys,
            all_of,
            rule,
            identity,
        } = self
        else {
            return Ok(Admission::Unsigned);
        };
        if keys.is_empty() {
            return Err(VerifyError::NotTrusted {
                reference: subject.reference.to_owned(),
                digest: *subject.digest,
                detail: format!(
                    "no trust rule matches {} and remote artifacts must be signed; \
                     add a [[trust.rules]] entry with its keys (or pass --key)",
                    subject.repository
                ),
            }
            .into());
        }
        let Some((found, unreadable)) = signatures()? else {
            return Err(VerifyError::Unsigned {
                reference: subject.reference.to_owned(),
                digest: *subject.digest,
                tag: subject.signature_tag.to_owned(),
            }
            .into());
        };
        tracing::debug!(rule = ?rule, count = found.len(), unreadable = unreadable.len(), "checking signatures");
        Ok(check(
            subject.reference,
            subject.digest,
            &found,
            keys,
            *all_of,
            identity.as_deref(),
            &unreadable,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{KeyPair, Payload};

    fn signed(keys: Vec<PublicKey>, all_of: bool, identity: Option<&str>) -> Requirement {
        Requirement::Signed {
            keys,
            all_of,
            rule: None,
            identity: identity.map(str::to_owned),
        }
    }

    #[test]
    fn cached_admissions_are_reused_only_when_they_still_satisfy() {
        let (a, b) = (KeyPair::generate().public(), KeyPair::generate().public());
        let by_a = Admission::Keys { keys: vec![a.id()] };
        assert!(Requirement::AcceptUnsigned.admits_cached(&Admission::Unsigned));
        assert!(signed(vec![a.clone()], false, None).admits_cached(&by_a));
        assert!(signed(vec![a.clone(), b.clone()], false, None).admits_cached(&by_a));
        assert!(!signed(vec![a.clone(), b.clone()], true, None).admits_cached(&by_a));
        assert!(!signed(vec![b.clone()], false, None).admits_cached(&by_a));
        assert!(!signed(Vec::new(), false, None).admits_cached(&by_a));
        assert!(!signed(vec![a.clone()], false, None).admits_cached(&Admission::Unsigned));
        assert!(!signed(vec![a], false, Some("localhost/x")).admits_cached(&by_a));
    }

    #[test]
    fn admit_fetches_signatures_only_when_it_needs_them() {
        let key = KeyPair::generate();
        let digest = Digest::of(b"manifest");
        let subject = TrustSubject {
            reference: "localhost:5000/a:1",
            repository: "localhost:5000/a",
            digest: &digest,
            signature_tag: "sha256-x.sig",
        };
        let never = || -> Result<Option<SignatureLayers>, VerifyError> {
            panic!("signatures fetched without need")
        };
        assert_eq!(
            Requirement::AcceptUnsigned
                .admit(&subject, never)
                .expect("unsigned"),
            Admission::Unsigned
        );
        let err = signed(Vec::new(), false, None)
            .admit(&subject, never)
            .expect_err("no keys");
        assert!(err.to_string().contains("add a [[trust.rules]]"), "{err}");
        let requirement = signed(vec![key.public()], false, None);
        let err = requirement
            .admit(&subject, || Ok::<_, VerifyError>(None))
            .expect_err("unsigned");
        assert!(err.to_string().contains("sha256-x.sig"), "{err}");
        let payload = Payload::new(subject.repository, &digest).to_bytes();
        let layer = Signature {
            signature: key.sign(&payload),
            payload,
            layer: 1,
        };
        let admission = requirement
            .admit(&subject, || {
                Ok::<_, VerifyError>(Some((vec![layer], Vec::new())))
            })
            .expect("signed");
        assert_eq!(
            admission,
            Admission::Keys {
                keys: vec![key.public().id()]
            }
        );
    }
}
