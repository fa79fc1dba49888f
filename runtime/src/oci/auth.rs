//! [`Auth`]: anonymous or HTTP basic credentials for a registry, and where
//! they come from.
//!
//! Where credentials come from, first match wins:
//!
//! 1. `--username` + `--password` (the CLI's registry commands); clap fills
//!    each flag from `$SOMA_REGISTRY_USERNAME` / `$SOMA_REGISTRY_PASSWORD`
//!    when it is not given, so a flag beats its variable. A username
//!    without a password is refused.
//! 2. The docker `config.json` ([`Auth::docker_config_path`]), read by the
//!    `docker_credential` crate as docker does: `credHelpers[<registry>]`
//!    (runs `docker-credential-<helper> get`), else the `auths` entry
//!    (`auth` = base64 `user:password`, or `username` + `password`), else
//!    `credsStore` (runs `docker-credential-<store> get`). A helper that
//!    answers "credentials not found" means no credentials, as for docker.
//! 3. Anonymous.
//!
//! The daemon pulls with 2–3 only. The registry is looked up by the
//! reference's host as written (`127.0.0.1:5000`), as `docker login` keys
//! it; `https://` and a path on an `auths` key are ignored, and the Docker
//! Hub spellings are one registry.

use std::path::{Path, PathBuf};

use docker_credential::{CredentialRetrievalError, DockerCredential};
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::error::{OciError, clip};

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

/// The helper names in a `config.json`, for messages (the crate's errors
/// do not name the helper).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HelperNames {
    #[serde(default)]
    cred_helpers: std::collections::BTreeMap<String, String>,
    creds_store: Option<String>,
}

/// What a credential helper prints when it has nothing for a registry
/// (docker-credential-helpers' `ErrCredentialsNotFound`).
const NOT_FOUND: &str = "credentials not found in native keychain";

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

    /// Credentials for `registry` from the docker `config.json`
    /// ([`Auth::docker_config_path`]), including its credential helpers, or
    /// `Anonymous` if there is no file or nothing for `registry`. Cost: one
    /// small file read, plus one helper process when a helper is configured
    /// for `registry` (blocks until it exits).
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
        let helper = || {
            let names = serde_json::from_str::<HelperNames>(&text).ok();
            let name = names.and_then(|n| n.cred_helpers.get(registry).cloned().or(n.creds_store));
            format!("docker-credential-{}", name.unwrap_or_default())
        };
        match docker_credential::get_credential_from_reader(text.as_bytes(), registry) {
            Ok(DockerCredential::UsernamePassword(username, password)) => {
                Ok(Self::basic(username, password))
            }
            Ok(DockerCredential::IdentityToken(_)) => Err(err(format!(
                "the credential for {registry} is an identity token (OAuth refresh token), which Soma cannot use: \
                 log in with a username and password or token (`docker login -u …`)"
            ))),
            Err(CredentialRetrievalError::NoCredentialConfigured) => Ok(Self::Anonymous),
            Err(CredentialRetrievalError::HelperFailure { stdout, stderr, .. })
                if stdout.contains(NOT_FOUND) || stderr.contains(NOT_FOUND) =>
            {
                Ok(Self::Anonymous)
            }
            Err(CredentialRetrievalError::HelperFailure { stdout, stderr, .. }) => {
                let said = if stderr.trim().is_empty() {
                    stdout
                } else {
                    stderr
                };
                Err(err(format!(
                    "`{} get` failed for {registry}: {}",
                    helper(),
                    clip(said.trim())
                )))
            }
            Err(CredentialRetrievalError::HelperCommunicationError) => Err(err(format!(
                "cannot run the credential helper `{}` for {registry} (is it on PATH?)",
                helper()
            ))),
            Err(CredentialRetrievalError::MalformedHelperResponse) => Err(err(format!(
                "the credential helper `{}` answered for {registry} with something other than {{\"Username\", \"Secret\"}} JSON",
                helper()
            ))),
            Err(CredentialRetrievalError::CredentialDecodingError) => Err(err(format!(
                "the `auth` entry for {registry} is not base64 of user:password"
            ))),
            Err(CredentialRetrievalError::CredentialMismatchError) => Err(err(format!(
                "the `auth` entry for {registry} disagrees with its `username`/`password`"
            ))),
            Err(e) => Err(err(
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Err(json) => format!("not valid JSON: {json}"),
                    Ok(_) => format!("not a docker config ({e})"),
                },
            )),
        }
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
        // A configured helper that is not on PATH is named in the error.
        std::fs::write(
            &path,
            r#"{"credHelpers":{"reg.example":"soma-no-such-helper"}}"#,
        )
        .expect("write");
        let err = Auth::from_docker_config_at(&path, "reg.example").expect_err("no helper");
        assert!(
            err.to_string()
                .contains("docker-credential-soma-no-such-helper"),
            "{err}"
        );
        // Other registries do not run the helper.
        assert_eq!(
            Auth::from_docker_config_at(&path, "other.example").expect("read"),
            Auth::Anonymous
        );
        std::fs::write(
            &path,
            r#"{"auths":{"reg.example":{"identitytoken":"refresh"}}}"#,
        )
        .expect("write");
        let err = Auth::from_docker_config_at(&path, "reg.example").expect_err("identity token");
        assert!(err.to_string().contains("identity token"), "{err}");
        std::fs::write(&path, "not json").expect("write");
        match Auth::from_docker_config_at(&path, "x") {
            Err(e @ OciError::DockerConfig { .. }) => {
                assert!(e.to_string().contains("not valid JSON"), "{e}");
            }
            other => panic!("expected DockerConfig, got {other:?}"),
        }
    }
}
