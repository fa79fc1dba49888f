//! Cosign's signature layout in a registry: the simple-signing layers of the
//! `sha256-<hex>.sig` manifest beside an artifact. [`sign`] appends one;
//! a pull reads them (through the `[pull]` caps) and hands them to
//! [`crate::verify`], which decides whether they are acceptable.

use serde::Deserialize;

use super::{
    artifact::{ANY_MANIFEST_TYPES, MANIFEST_MEDIA_TYPE, RawDescriptor},
    auth::Auth,
    client::{Cap, PullConfig, Session, Transport, protocol},
    error::{OciError, clip},
    reference::Reference,
};
use crate::{
    digest::Digest,
    verify::{
        Admission, KeyPair, Payload, Requirement, Signature, SignatureLayers, TrustPolicy,
        TrustSubject,
    },
};

/// The tag cosign stores the signatures of `digest` under: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// Media type of a cosign simple-signing layer.
pub const SIGNATURE_LAYER_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const OCI_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// Sign the manifest `reference` resolves to with `key`, cosign-style: a
/// simple-signing payload naming the manifest digest, signed with
/// ECDSA-P256-SHA256, appended as a layer to the `sha256-<hex>.sig` manifest
/// in the same repository (created if absent). Returns the signed digest.
/// Reads the manifest and the existing signature manifest through the
/// default [`PullConfig`] caps; `soma sign` uses [`sign_with_limits`].
pub fn sign(
    reference: &Reference,
    auth: &Auth,
    key: &KeyPair,
    transport: &Transport,
) -> Result<Digest, OciError> {
    sign_with_limits(reference, auth, key, transport, &PullConfig::default())
}

/// [`sign`], reading what the registry sends through `limits` (the
/// operator's `[pull]` section). Cost: two capped manifest reads, then
/// three uploads (payload, config, signature manifest).
pub fn sign_with_limits(
    reference: &Reference,
    auth: &Auth,
    key: &KeyPair,
    transport: &Transport,
    limits: &PullConfig,
) -> Result<Digest, OciError> {
    let session = Session::new(reference, auth, transport, limits)?;
    let digest = session.resolve(reference, limits)?;
    let payload = Payload::new(&reference.repository_path(), &digest).to_bytes();
    let signature = key.sign(&payload);
    let sig_ref = session.tag_ref(signature_tag(&digest));
    let mut layers: Vec<serde_json::Value> = match session.fetch_manifest(
        reference,
        &sig_ref,
        &ANY_MANIFEST_TYPES,
        session.signature_manifest_cap(limits),
    )? {
        Some(body) => {
            let m: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| protocol(reference, &e))?;
            m["layers"].as_array().cloned().unwrap_or_default()
        }
        None => Vec::new(),
    };
    let payload_digest = Digest::of(&payload);
    let layer = serde_json::json!({
        "mediaType": SIGNATURE_LAYER_MEDIA_TYPE,
        "size": payload.len(),
        "digest": payload_digest.to_string(),
        "annotations": { SIGNATURE_ANNOTATION: signature },
    });
    layers.push(layer);
    let diff_ids: Vec<serde_json::Value> = layers.iter().map(|l| l["digest"].clone()).collect();
    let zero = "0001-01-01T00:00:00Z";
    let config = serde_json::json!({
        "architecture": "",
        "created": zero,
        "history": diff_ids.iter().map(|_| serde_json::json!({"created": zero})).collect::<Vec<_>>(),
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    });
    let config = serde_json::to_vec(&config).map_err(|e| protocol(reference, &e))?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": OCI_CONFIG_MEDIA_TYPE,
            "size": config.len(),
            "digest": Digest::of(&config).to_string(),
        },
        "layers": layers,
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| protocol(reference, &e))?;
    session.push_blob(reference, &sig_ref, &payload)?;
    session.push_blob(reference, &sig_ref, &config)?;
    session.push_manifest(reference, &sig_ref, manifest)?;
    tracing::info!(%reference, %digest, key = %key.public().id(), "signed");
    Ok(digest)
}

/// Resolve `reference` and check its signatures against `policy` without
/// pulling the artifact, under the default [`PullConfig`] caps. Returns the
/// digest and admission. `soma verify` uses [`verify_remote_with_limits`].
pub fn verify_remote(
    reference: &Reference,
    auth: &Auth,
    policy: &TrustPolicy,
    transport: &Transport,
) -> Result<(Digest, Admission), OciError> {
    verify_remote_with_limits(reference, auth, policy, transport, &PullConfig::default())
}

/// [`verify_remote`], reading what the registry sends through `limits`
/// (the operator's `[pull]` section), as a pull would. Cost: one capped
/// manifest read, the signature manifest and up to
/// `limits.max_signature_layers` payloads.
pub fn verify_remote_with_limits(
    reference: &Reference,
    auth: &Auth,
    policy: &TrustPolicy,
    transport: &Transport,
    limits: &PullConfig,
) -> Result<(Digest, Admission), OciError> {
    let session = Session::new(reference, auth, transport, limits)?;
    let digest = session.resolve(reference, limits)?;
    let requirement = policy.requirement(&reference.repository_path());
    let admission = session.admit(reference, &digest, &requirement, limits)?;
    Ok((digest, admission))
}

impl Session {
    /// The cosign signatures stored for `digest`, with why the layers that
    /// could not be read were passed over; `None` if there is no signature
    /// manifest. The signature manifest is read through
    /// `pull.max_signature_manifest_bytes`; at most
    /// `pull.max_signature_layers` simple-signing layers are examined, each
    /// downloaded through `pull.max_signature_layer_bytes` and digest-checked.
    /// One unreadable layer never fails the others.
    fn signatures(
        &self,
        reference: &Reference,
        digest: &Digest,
        limits: &PullConfig,
    ) -> Result<Option<SignatureLayers>, OciError> {
        let sig_ref = self.tag_ref(signature_tag(digest));
        let Some(body) = self.fetch_manifest(
            reference,
            &sig_ref,
            &ANY_MANIFEST_TYPES,
            self.signature_manifest_cap(limits),
        )?
        else {
            return Ok(None);
        };
        #[derive(Deserialize)]
        struct SigManifest {
            #[serde(default)]
            layers: Vec<serde_json::Value>,
        }
        let m: SigManifest = serde_json::from_slice(&body).map_err(|e| protocol(reference, &e))?;
        let mut out = Vec::new();
        let mut unreadable = Vec::new();
        let mut examined = 0usize;
        let mut skipped = 0usize;
        for (index, layer) in m.layers.into_iter().enumerate() {
            let position = index + 1;
            let layer = match serde_json::from_value::<RawDescriptor>(layer) {
                Ok(l) if l.media_type == SIGNATURE_LAYER_MEDIA_TYPE => l,
                // Other layer types (e.g. attestations) are not signatures.
                Ok(_) => continue,
                Err(e) => {
                    if examined < limits.max_signature_layers {
                        examined += 1;
                        unreadable.push(format!(
                            "layer {position}: not a layer descriptor ({})",
                            clip(&e.to_string())
                        ));
                    } else {
                        skipped += 1;
                    }
                    continue;
                }
            };
            if examined >= limits.max_signature_layers {
                skipped += 1;
                continue;
            }
            examined += 1;
            let Some(signature) = layer.annotations.get(SIGNATURE_ANNOTATION).cloned() else {
                unreadable.push(format!(
                    "layer {position}: no {SIGNATURE_ANNOTATION} annotation"
                ));
                continue;
            };
            match self.signature_layer(reference, &sig_ref, &layer, limits) {
                Ok(payload) => out.push(Signature {
                    payload,
                    signature,
                    layer: position,
                }),
                Err(e) => unreadable.push(format!("layer {position}: {e}")),
            }
        }
        if skipped > 0 {
            unreadable.push(format!(
                "{skipped} more signature layer(s) not examined (pull.max_signature_layers = {})",
                limits.max_signature_layers
            ));
        }
        Ok(Some((out, unreadable)))
    }

    /// Download one signature payload (checked against its descriptor's
    /// size, the cap and its digest).
    fn signature_layer(
        &self,
        reference: &Reference,
        sig_ref: &oci_client::Reference,
        layer: &RawDescriptor,
        limits: &PullConfig,
    ) -> Result<Vec<u8>, OciError> {
        let expected: Digest = layer
            .digest
            .parse()
            .map_err(|e| protocol(reference, &format!("layer digest: {e}")))?;
        let size = u64::try_from(layer.size).unwrap_or(u64::MAX);
        let cap = Cap {
            limit: limits.max_signature_layer_bytes,
            key: "pull.max_signature_layer_bytes",
            what: "signature layer",
        };
        if size > cap.limit {
            return Err(OciError::OverLimit {
                what: cap.what,
                reference: reference.to_string(),
                found: format!("its descriptor says {size} bytes"),
                limit: cap.limit,
                key: cap.key,
            });
        }
        let payload = self.download(reference, sig_ref, &layer.digest, size, cap)?;
        let found = Digest::of(&payload);
        if found != expected {
            return Err(OciError::DigestMismatch {
                expected: expected.to_string(),
                found: found.to_string(),
            });
        }
        Ok(payload)
    }

    /// Apply `requirement` to `digest`: [`Requirement::admit`] decides, and
    /// asks for the signatures (fetched here, through the caps) only when
    /// it needs them.
    pub(super) fn admit(
        &self,
        reference: &Reference,
        digest: &Digest,
        requirement: &Requirement,
        limits: &PullConfig,
    ) -> Result<Admission, OciError> {
        let (text, repository, tag) = (
            reference.to_string(),
            reference.canonical_repository(),
            signature_tag(digest),
        );
        let subject = TrustSubject {
            reference: &text,
            repository: &repository,
            digest,
            signature_tag: &tag,
        };
        requirement.admit(&subject, || self.signatures(reference, digest, limits))
    }
}
