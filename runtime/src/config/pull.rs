//! `[pull]`: how much a registry may make a pull read. Defined here (not in
//! `oci`) because [`crate::Engine`] holds the whole [`super::Config`] and
//! `oci` needs the engine (push describes the capsule); `crate::oci`
//! re-exports it and applies it.

use serde::Deserialize;

/// How much a registry may make a pull read (`[pull]` in `soma.toml`).
///
/// Each cap bounds memory held for one registry response; a response over
/// its cap is refused with [`OciError::OverLimit`](crate::oci::OciError::OverLimit) naming the key. A spec or
/// request cannot raise them; `PullOptions` can only be built from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PullConfig {
    /// Largest image manifest read, in bytes, before it is parsed and before
    /// the trust decision. A capsule manifest is under 2 KiB. Default 4 MiB.
    pub max_manifest_bytes: u64,
    /// Largest signature manifest (`sha256-<hex>.sig`) read, in bytes.
    /// Default 512 KiB (16 cosign layers with certificates and bundles fit).
    pub max_signature_manifest_bytes: u64,
    /// Largest signature layer (simple-signing payload) downloaded, in bytes;
    /// a larger layer is passed over (listed in the refusal if nothing
    /// verifies). A payload is a few hundred bytes. Default 64 KiB.
    pub max_signature_layer_bytes: u64,
    /// Most signature layers examined per artifact (the first ones in the
    /// signature manifest; the rest are not downloaded). Default 16.
    pub max_signature_layers: usize,
    /// Longest one registry read (a manifest, signature or layer download,
    /// headers to last byte) may take, in milliseconds, so a registry that
    /// dribbles bytes cannot hold a pull for hours; a read that runs out is
    /// retried like a connection error. Default 300,000 (5 minutes).
    pub request_timeout_ms: u64,
}

impl Default for PullConfig {
    fn default() -> Self {
        Self {
            max_manifest_bytes: 4 * 1024 * 1024,
            max_signature_manifest_bytes: 512 * 1024,
            max_signature_layer_bytes: 64 * 1024,
            max_signature_layers: 16,
            request_timeout_ms: 300_000,
        }
    }
}

impl PullConfig {
    /// Check the caps can admit anything: every cap and the timeout must be
    /// positive (`soma config check`). The message names the key.
    pub fn check(&self) -> Result<(), String> {
        for (key, value) in [
            ("pull.max_manifest_bytes", self.max_manifest_bytes),
            (
                "pull.max_signature_manifest_bytes",
                self.max_signature_manifest_bytes,
            ),
            (
                "pull.max_signature_layer_bytes",
                self.max_signature_layer_bytes,
            ),
            (
                "pull.max_signature_layers",
                self.max_signature_layers as u64,
            ),
            ("pull.request_timeout_ms", self.request_timeout_ms),
        ] {
            if value == 0 {
                return Err(format!("{key} must be positive"));
            }
        }
        Ok(())
    }
}
