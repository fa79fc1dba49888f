//! The artifact format: the media types and annotations of a Soma capsule
//! as an OCI artifact (the CNCF TAG-Runtime Wasm layout), the config and
//! manifest a push writes, and the manifest shape a pull accepts.

use std::{collections::BTreeMap, time::SystemTime};

use serde::Deserialize;

use super::error::OciError;
use crate::digest::Digest;

/// Media type of the manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the Wasm config blob.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// Media type of the one layer: the component.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";
/// OCI image index media type (refused: a capsule is one artifact).
pub(super) const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// What a manifest may be served as when any manifest will do (resolving a
/// tag for `sign`/`verify`, a signature manifest).
pub(super) const ANY_MANIFEST_TYPES: [&str; 3] = [
    MANIFEST_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Annotation: the capsule's name (from `describe()`).
pub const ANNOTATION_NAME: &str = "dev.soma.capsule.name";
/// Annotation: the capsule's kind (`worker`, `planner`, `gate`).
pub const ANNOTATION_KIND: &str = "dev.soma.capsule.kind";

/// What a push turns into an artifact: the component and what `describe()`
/// and the compiled component say about it.
pub(super) struct CapsuleArtifact<'a> {
    /// The component bytes (the one layer).
    pub(super) layer: &'a [u8],
    /// The capsule's self-description.
    pub(super) manifest: &'a crate::capsule::Manifest,
    /// The component's export names.
    pub(super) exports: Vec<String>,
    /// The component's import names.
    pub(super) imports: Vec<String>,
    /// `org.opencontainers.image.source`, if known.
    pub(super) source: Option<&'a str>,
}

/// The serialized config blob and image manifest of a capsule artifact.
pub(super) struct BuiltArtifact {
    /// The `application/vnd.wasm.config.v0+json` blob.
    pub(super) config: Vec<u8>,
    /// The OCI image manifest (its digest is the artifact's digest).
    pub(super) manifest: Vec<u8>,
}

impl CapsuleArtifact<'_> {
    /// The config and manifest for this capsule, created at `created`.
    /// Cost: two small JSON serializations and one sha256 of the config.
    pub(super) fn build(self, created: SystemTime) -> Result<BuiltArtifact, serde_json::Error> {
        let layer_digest = Digest::of(self.layer);
        let created = rfc3339(created);
        let config = serde_json::json!({
            "created": created,
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer_digest.to_string()],
            "component": {
                "exports": self.exports,
                "imports": self.imports,
                "target": null,
            },
        });
        let config = serde_json::to_vec(&config)?;
        let config_digest = Digest::of(&config);
        let described = self.manifest;
        let mut annotations = BTreeMap::from([
            ("org.opencontainers.image.title", described.name.clone()),
            (
                "org.opencontainers.image.version",
                described.version.clone(),
            ),
            (
                "org.opencontainers.image.description",
                described.description.clone(),
            ),
            ("org.opencontainers.image.created", created),
            (ANNOTATION_NAME, described.name.clone()),
            (ANNOTATION_KIND, described.kind.name().to_owned()),
        ]);
        if let Some(source) = self.source {
            annotations.insert("org.opencontainers.image.source", source.to_owned());
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": config_digest.to_string(),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": LAYER_MEDIA_TYPE,
                "digest": layer_digest.to_string(),
                "size": self.layer.len(),
            }],
            "annotations": annotations,
        });
        Ok(BuiltArtifact {
            manifest: serde_json::to_vec(&manifest)?,
            config,
        })
    }
}

/// The parts of an OCI manifest a pull looks at.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawManifest {
    pub(super) media_type: Option<String>,
    pub(super) config: Option<RawDescriptor>,
    #[serde(default)]
    pub(super) layers: Vec<RawDescriptor>,
    #[serde(default)]
    pub(super) manifests: Option<serde_json::Value>,
    pub(super) annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawDescriptor {
    pub(super) media_type: String,
    pub(super) digest: String,
    pub(super) size: i64,
    #[serde(default)]
    pub(super) annotations: BTreeMap<String, String>,
}

/// Media types: an image manifest, a Wasm config, exactly one Wasm layer.
pub(super) fn check_manifest(m: &RawManifest) -> Result<&RawDescriptor, OciError> {
    let wrong = |found: &str, expected: &str| OciError::WrongMediaType {
        found: found.to_owned(),
        expected: expected.to_owned(),
    };
    match m.media_type.as_deref() {
        Some(MANIFEST_MEDIA_TYPE) => {}
        Some(other) => return Err(wrong(other, MANIFEST_MEDIA_TYPE)),
        None if m.manifests.is_some() => return Err(wrong(INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE)),
        None => {}
    }
    let config = m
        .config
        .as_ref()
        .ok_or_else(|| wrong("(no config)", CONFIG_MEDIA_TYPE))?;
    if config.media_type != CONFIG_MEDIA_TYPE {
        return Err(wrong(&config.media_type, CONFIG_MEDIA_TYPE));
    }
    match m.layers.as_slice() {
        [layer] if layer.media_type == LAYER_MEDIA_TYPE => Ok(layer),
        [layer] => Err(wrong(&layer.media_type, LAYER_MEDIA_TYPE)),
        layers => Err(wrong(
            &format!(
                "{} layers ({})",
                layers.len(),
                layers
                    .iter()
                    .map(|l| l.media_type.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            &format!("exactly one {LAYER_MEDIA_TYPE} layer"),
        )),
    }
}

/// `t` as RFC 3339 UTC with whole seconds (`2025-01-02T03:04:05Z`); a
/// clock before 1970 reads as the epoch.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t.max(SystemTime::UNIX_EPOCH))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59Z");
    }

    fn manifest(config: &str, layers: &[&str]) -> RawManifest {
        RawManifest {
            media_type: Some(MANIFEST_MEDIA_TYPE.into()),
            config: Some(RawDescriptor {
                media_type: config.into(),
                digest: String::new(),
                size: 1,
                annotations: BTreeMap::new(),
            }),
            layers: layers
                .iter()
                .map(|m| RawDescriptor {
                    media_type: (*m).into(),
                    digest: String::new(),
                    size: 1,
                    annotations: BTreeMap::new(),
                })
                .collect(),
            manifests: None,
            annotations: None,
        }
    }

    #[test]
    fn media_types_are_checked() {
        assert!(check_manifest(&manifest(CONFIG_MEDIA_TYPE, &[LAYER_MEDIA_TYPE])).is_ok());
        for m in [
            manifest(
                "application/vnd.oci.image.config.v1+json",
                &[LAYER_MEDIA_TYPE],
            ),
            manifest(CONFIG_MEDIA_TYPE, &[]),
            manifest(CONFIG_MEDIA_TYPE, &[LAYER_MEDIA_TYPE, LAYER_MEDIA_TYPE]),
            manifest(CONFIG_MEDIA_TYPE, &["application/octet-stream"]),
        ] {
            assert!(matches!(
                check_manifest(&m),
                Err(OciError::WrongMediaType { .. })
            ));
        }
    }
}
