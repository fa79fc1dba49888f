//! [`Auth`]: anonymous or HTTP basic credentials for a registry.

use std::path::{Path, PathBuf};

use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::OciError;

/// Credentials for one registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No credentials.
    #[default]
    Anonymous,
    /// HTTP basic (also exchanged for a bearer token when the registry asks).
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl Auth {
    /// Basic credentials.
    pub fn basic(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self::Basic {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The docker `config.json` the CLI would read: `$DOCKER_CONFIG/config.json`,
    /// else `~/.docker/config.json`.
    pub fn docker_config_path() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
    }

    /// Basic credentials for `registry` from the docker `config.json`
    /// ([`Auth::docker_config_path`]), or `Anonymous` if there is no file or
    /// no entry. Credential helpers (`credsStore`) are not consulted.
    /// Cost: one small file read.
    pub fn from_docker_config(registry: &str) -> Result<Self, OciError> {
        match Self::docker_config_path() {
            Some(path) if path.exists() => Self::from_docker_config_at(&path, registry),
            _ => Ok(Self::Anonymous),
        }
    }

    /// Like [`Auth::from_docker_config`] for the file at `path`.
    pub fn from_docker_config_at(path: &Path, registry: &str) -> Result<Self, OciError> {
        let err = |message: String| OciError::DockerConfig {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let config: DockerConfig =
            serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let wanted = normalize(registry);
        let Some(entry) = config
            .auths
            .iter()
            .find(|(key, _)| normalize(key) == wanted)
            .map(|(_, v)| v)
        else {
            return Ok(Self::Anonymous);
        };
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Self::basic(u.clone(), p.clone()));
        }
        let Some(encoded) = &entry.auth else {
            return Ok(Self::Anonymous);
        };
        let decoded = base64_decode(encoded.trim())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                err(format!(
                    "the `auth` entry for {registry} is not base64 of user:password"
                ))
            })?;
        let (u, p) = decoded.split_once(':').ok_or_else(|| {
            err(format!(
                "the `auth` entry for {registry} is not user:password"
            ))
        })?;
        Ok(Self::basic(u, p))
    }

    pub(crate) fn to_registry_auth(&self) -> RegistryAuth {
        match self {
            Self::Anonymous => RegistryAuth::Anonymous,
            Self::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
        }
    }
}

/// `https://index.docker.io/v1/` → `index.docker.io`; `docker.io` too.
fn normalize(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "registry-1.docker.io" => "index.docker.io".to_owned(),
        _ => host,
    }
}

/// Standard (and unpadded) base64. `None` on any invalid character.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_config_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.json");
        // "alice:s3cr:et" in base64.
        std::fs::write(
            &path,
            r#"{"auths":{"https://reg.example:5000/v1/":{"auth":"YWxpY2U6czNjcjpldA=="},
                "other.example":{"username":"bob","password":"pw"}}}"#,
        )
        .expect("write");
        assert_eq!(
            Auth::from_docker_config_at(&path, "reg.example:5000").expect("read"),
            Auth::basic("alice", "s3cr:et")
        );
        assert_eq!(
            Auth::from_docker_config_at(&path, "other.example").expect("read"),
            Auth::basic("bob", "pw")
        );
        assert_eq!(
            Auth::from_docker_config_at(&path, "nowhere.example").expect("read"),
            Auth::Anonymous
        );
        std::fs::write(&path, "not json").expect("write");
        assert!(matches!(
            Auth::from_docker_config_at(&path, "x"),
            Err(OciError::DockerConfig { .. })
        ));
    }
}
