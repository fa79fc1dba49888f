//! The registry transport: one [`Session`] per command (an oci-client
//! `Client` for pushes, a plain HTTP client for capped reads, the
//! credentials, and a current-thread tokio runtime to drive them from sync
//! code), retries with exponential backoff on 5xx and connection errors
//! only, and the mapping of registry answers to [`OciError`].

use std::{future::Future, time::Duration};

use oci_client::{
    Client,
    client::{ClientConfig, ClientProtocol},
    errors::{OciDistributionError, OciErrorCode},
    secrets::RegistryAuth,
};

use super::{
    artifact::{ANY_MANIFEST_TYPES, MANIFEST_MEDIA_TYPE},
    auth::Auth,
    error::{ATTEMPTS, OciError, clip},
    reference::Reference,
};
pub use crate::config::pull::PullConfig;
use crate::digest::Digest;

/// Backoff before the first retry; quadrupled for each next one (100→400 ms).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// How to reach a registry: plain http only for loopback registries or when
/// `insecure` is set; https otherwise, trusting the system roots plus
/// `extra_ca_pem` (e.g. a private registry's CA).
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// Use plain http even for a non-loopback registry (`--insecure`).
    pub insecure: bool,
    /// Extra CA certificates (PEM) to trust for https.
    pub extra_ca_pem: Vec<Vec<u8>>,
}

impl Transport {
    /// Read a PEM CA bundle to trust in addition to the system roots.
    pub fn with_ca_file(mut self, path: &std::path::Path) -> Result<Self, OciError> {
        let pem = std::fs::read(path).map_err(|source| OciError::Cache {
            path: path.to_owned(),
            source,
        })?;
        self.extra_ca_pem.push(pem);
        Ok(self)
    }
}

/// The cap applied to one registry response: how many bytes, and which
/// config key sets it (for the error).
#[derive(Debug, Clone, Copy)]
pub(super) struct Cap {
    /// Most bytes read.
    pub(super) limit: u64,
    /// The config key that sets the cap.
    pub(super) key: &'static str,
    /// What is read (`manifest`, …), for the error.
    pub(super) what: &'static str,
}

/// Error bodies (4xx/5xx) are read up to this many bytes for the message.
const MAX_ERROR_BODY_BYTES: u64 = 16 * 1024;

/// One registry conversation: the client, its transport and credentials,
/// and a current-thread tokio runtime to drive it from sync code.
///
/// Pushes go through oci-client; every read (manifests, blobs) goes through
/// [`Session::get_capped`], which streams the body with a cap; credentials
/// are negotiated in `token` (also capped) and handed to both.
pub(super) struct Session {
    client: Client,
    /// The plain HTTP client for capped reads and token negotiation (same
    /// TLS roots and timeouts).
    pub(super) http: reqwest::Client,
    pub(super) target: oci_client::Reference,
    /// The credentials as given.
    pub(super) auth: RegistryAuth,
    pub(super) basic: Option<(String, String)>,
    pub(super) scheme: &'static str,
    pub(super) registry: String,
    /// The `Authorization` header for reads, once negotiated (`token`).
    pub(super) authorization: std::sync::OnceLock<Option<http::HeaderValue>>,
    /// What oci-client is given for pushes, once negotiated (`token`).
    pub(super) push_auth: std::sync::OnceLock<RegistryAuth>,
    /// `pull.request_timeout_ms`, for the message when a read runs out.
    request_timeout_ms: u64,
    rt: tokio::runtime::Runtime,
}

impl Session {
    pub(super) fn new(
        reference: &Reference,
        auth: &Auth,
        transport: &Transport,
        limits: &PullConfig,
    ) -> Result<Self, OciError> {
        let plain = transport.insecure || reference.is_loopback();
        let protocol = if plain {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            platform_resolver: None,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            extra_root_certificates: transport
                .extra_ca_pem
                .iter()
                .map(|pem| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            ..ClientConfig::default()
        });
        let mut roots = Vec::new();
        for pem in &transport.extra_ca_pem {
            roots.extend(reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                OciError::Unreachable {
                    registry: reference.registry().to_owned(),
                    cause: format!("the extra CA bundle is not PEM certificates: {e}"),
                }
            })?);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .timeout(Duration::from_millis(limits.request_timeout_ms.max(1)))
            .tls_certs_merge(roots)
            .build()
            .map_err(|e| OciError::Unreachable {
                registry: reference.registry().to_owned(),
                cause: soma_host_api::error_chain(&e),
            })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(OciError::Runtime)?;
        Ok(Self {
            client,
            http,
            target: reference.as_oci().clone(),
            auth: auth.to_registry_auth(),
            basic: match auth {
                Auth::Basic { username, password } => Some((username.clone(), password.clone())),
                Auth::Anonymous => None,
            },
            scheme: if plain { "http" } else { "https" },
            registry: reference.registry().to_owned(),
            authorization: std::sync::OnceLock::new(),
            push_auth: std::sync::OnceLock::new(),
            request_timeout_ms: limits.request_timeout_ms,
            rt,
        })
    }

    pub(super) fn manifest_cap(&self, limits: &PullConfig) -> Cap {
        Cap {
            limit: limits.max_manifest_bytes,
            key: "pull.max_manifest_bytes",
            what: "manifest",
        }
    }

    pub(super) fn signature_manifest_cap(&self, limits: &PullConfig) -> Cap {
        Cap {
            limit: limits.max_signature_manifest_bytes,
            key: "pull.max_signature_manifest_bytes",
            what: "signature manifest",
        }
    }

    /// The same repository at another tag.
    pub(super) fn tag_ref(&self, tag: String) -> oci_client::Reference {
        oci_client::Reference::with_tag(
            self.target.registry().to_owned(),
            self.target.repository().to_owned(),
            tag,
        )
    }

    /// The manifest digest `reference` points at (the digest of the bytes the
    /// registry serves, checked against `@digest` if the reference has one).
    pub(super) fn resolve(
        &self,
        reference: &Reference,
        limits: &PullConfig,
    ) -> Result<Digest, OciError> {
        let body = self
            .fetch_manifest(
                reference,
                &self.target,
                &ANY_MANIFEST_TYPES,
                self.manifest_cap(limits),
            )?
            .ok_or_else(|| OciError::NotFound {
                reference: reference.to_string(),
            })?;
        let digest = Digest::of(&body);
        match reference.digest() {
            Some(expected) if expected != digest => Err(OciError::DigestMismatch {
                expected: expected.to_string(),
                found: digest.to_string(),
            }),
            _ => Ok(digest),
        }
    }

    /// A raw manifest read through `cap`, or `None` if the registry has no
    /// such tag (404).
    pub(super) fn fetch_manifest(
        &self,
        reference: &Reference,
        target: &oci_client::Reference,
        accept: &[&str],
        cap: Cap,
    ) -> Result<Option<Vec<u8>>, OciError> {
        let id = match (target.digest(), target.tag()) {
            (Some(d), _) => d.to_owned(),
            (None, Some(t)) => t.to_owned(),
            (None, None) => "latest".to_owned(),
        };
        let url = self.url(target, "manifests", &id);
        match self.retry_mapped(|| self.get_capped(reference, &url, accept, cap)) {
            Ok(body) => Ok(Some(body)),
            Err(OciError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `<scheme>://<registry>/v2/<repository>/<kind>/<id>`.
    fn url(&self, target: &oci_client::Reference, kind: &str, id: &str) -> String {
        format!(
            "{}://{}/v2/{}/{kind}/{id}",
            self.scheme,
            target.resolve_registry(),
            target.repository()
        )
    }

    /// GET `url`, reading at most `cap.limit` bytes of body: a declared
    /// `Content-Length` over the cap is refused before the body is read, and
    /// a body running past it is cut off at the cap. Error statuses read at
    /// most [`MAX_ERROR_BODY_BYTES`] for the message. Cost: one request; at
    /// most `cap.limit` bytes held.
    async fn get_capped(
        &self,
        reference: &Reference,
        url: &str,
        accept: &[&str],
        cap: Cap,
    ) -> Result<Vec<u8>, OciError> {
        let over = |found: String| OciError::OverLimit {
            what: cap.what,
            reference: reference.to_string(),
            found,
            limit: cap.limit,
            key: cap.key,
        };
        let mut request = self.http.get(url);
        if !accept.is_empty() {
            request = request.header(http::header::ACCEPT, accept.join(", "));
        }
        if let Some(header) = self.authorization(reference).await? {
            request = request.header(http::header::AUTHORIZATION, header);
        }
        let transport = |e: reqwest::Error| self.transport_error(reference, url, e);
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let (body, _) = read_capped(&mut response, MAX_ERROR_BODY_BYTES)
                .await
                .unwrap_or_default();
            let message = String::from_utf8_lossy(&body).into_owned();
            return Err(status_error(
                status.as_u16(),
                message,
                &self.registry,
                reference,
            ));
        }
        if let Some(declared) = response.content_length()
            && declared > cap.limit
        {
            return Err(over(format!("it declares {declared} bytes")));
        }
        let (body, truncated) = read_capped(&mut response, cap.limit)
            .await
            .map_err(transport)?;
        if truncated {
            return Err(over(format!("it sent more than {} bytes", cap.limit)));
        }
        Ok(body)
    }

    /// The error for a failed request to `url`: a timeout names
    /// `pull.request_timeout_ms`, the rest map by status or as unreachable.
    pub(super) fn transport_error(
        &self,
        reference: &Reference,
        url: &str,
        e: reqwest::Error,
    ) -> OciError {
        if e.is_timeout() {
            return OciError::Unreachable {
                registry: self.registry.clone(),
                cause: format!(
                    "no complete answer to {} within {} ms (pull.request_timeout_ms)",
                    clip(url),
                    self.request_timeout_ms
                ),
            };
        }
        map_error(
            OciDistributionError::RequestError(e),
            &self.registry,
            reference,
        )
    }

    pub(super) fn push_blob(
        &self,
        reference: &Reference,
        target: &oci_client::Reference,
        data: &[u8],
    ) -> Result<(), OciError> {
        let digest = Digest::of(data).to_string();
        let data = bytes::Bytes::copy_from_slice(data);
        let auth = self.push_auth(reference)?;
        self.block_on(
            self.client
                .store_auth_if_needed(target.resolve_registry(), &auth),
        );
        self.retry(reference, || {
            self.client.push_blob(target, data.clone(), &digest)
        })
        .map(drop)
    }

    /// Put an OCI image manifest at `target` (a tag).
    pub(super) fn push_manifest(
        &self,
        reference: &Reference,
        target: &oci_client::Reference,
        manifest: Vec<u8>,
    ) -> Result<(), OciError> {
        let manifest = bytes::Bytes::from(manifest);
        self.retry(reference, || {
            self.client.push_manifest_raw(
                target,
                manifest.clone(),
                http_header(MANIFEST_MEDIA_TYPE),
            )
        })
        .map(drop)
    }

    pub(super) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Run `op` up to [`ATTEMPTS`] times, backing off 100 ms then 400 ms,
    /// retrying only 5xx and transport failures.
    fn retry<T, F, Fut>(&self, reference: &Reference, mut op: F) -> Result<T, OciError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        self.retry_mapped(|| {
            let attempt = op();
            async move {
                attempt
                    .await
                    .map_err(|e| map_error(e, &self.registry, reference))
            }
        })
    }

    pub(super) fn retry_mapped<T, F, Fut>(&self, mut op: F) -> Result<T, OciError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciError>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.block_on(op()) {
                Err(e) if attempt < ATTEMPTS && retryable(&e) => {
                    tracing::debug!(attempt, error = %e, "registry request failed; retrying");
                    std::thread::sleep(backoff);
                    backoff *= 4;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Download one blob into memory, refusing more than `size` (the
    /// descriptor's) or `cap.limit` bytes. The caller checks the digest;
    /// nothing touches the disk here.
    pub(super) fn download(
        &self,
        reference: &Reference,
        pinned: &oci_client::Reference,
        digest: &str,
        size: u64,
        cap: Cap,
    ) -> Result<Vec<u8>, OciError> {
        if size > cap.limit {
            return Err(OciError::TooLarge {
                size,
                limit: cap.limit,
            });
        }
        let url = self.url(pinned, "blobs", digest);
        // Read one byte past the descriptor's size to notice a longer body.
        let read = Cap {
            limit: size.saturating_add(1),
            ..cap
        };
        let body = self.retry_mapped(|| async {
            match self.get_capped(reference, &url, &[], read).await {
                Err(OciError::OverLimit { .. }) => Err(OciError::SizeMismatch {
                    expected: size,
                    found: size.saturating_add(1),
                }),
                other => other,
            }
        })?;
        let received = body.len() as u64;
        if received != size {
            return Err(OciError::SizeMismatch {
                expected: size,
                found: received,
            });
        }
        Ok(body)
    }
}

/// Connect timeout for registry requests.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read timeout (between bytes) for registry requests.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Read `response`'s body, keeping at most `limit` bytes; `true` when the
/// body went on past the limit (reading stops there).
pub(super) async fn read_capped(
    response: &mut reqwest::Response,
    limit: u64,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let hint = response.content_length().unwrap_or(0).min(limit);
    let mut body = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    while let Some(chunk) = response.chunk().await? {
        let room = usize::try_from(limit.saturating_sub(body.len() as u64)).unwrap_or(usize::MAX);
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

fn retryable(e: &OciError) -> bool {
    match e {
        OciError::Server { status, .. } => *status >= 500,
        OciError::Unreachable { .. } => true,
        _ => false,
    }
}

/// Map oci-client's errors to ours by HTTP status / OCI error code.
fn map_error(e: OciDistributionError, registry: &str, reference: &Reference) -> OciError {
    let by_status =
        |status: u16, message: String| status_error(status, message, registry, reference);
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => by_status(401, String::new()),
        OciDistributionError::ServerError { code, message, .. } => by_status(code, message),
        OciDistributionError::RegistryError { envelope, .. } => {
            let message = envelope.to_string();
            match envelope.errors.first().map(|e| &e.code) {
                Some(OciErrorCode::Unauthorized) => by_status(401, message),
                Some(OciErrorCode::Denied) => by_status(403, message),
                Some(
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NotFound
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown,
                ) => by_status(404, message),
                Some(OciErrorCode::Toomanyrequests) => by_status(429, message),
                _ => OciError::Protocol {
                    reference: reference.to_string(),
                    message,
                },
            }
        }
        OciDistributionError::RequestError(r) => match r.status() {
            Some(status) => by_status(status.as_u16(), r.to_string()),
            None => OciError::Unreachable {
                registry: registry.to_owned(),
                cause: soma_host_api::error_chain(&r),
            },
        },
        OciDistributionError::IoError(io) => OciError::Unreachable {
            registry: registry.to_owned(),
            cause: io.to_string(),
        },
        OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
            expected,
            actual,
        }) => OciError::DigestMismatch {
            expected,
            found: actual,
        },
        other => OciError::Protocol {
            reference: reference.to_string(),
            message: other.to_string(),
        },
    }
}

/// The error for an HTTP error `status` from the registry.
pub(super) fn status_error(
    status: u16,
    message: String,
    registry: &str,
    reference: &Reference,
) -> OciError {
    match status {
        401 => OciError::Unauthorized {
            registry: registry.to_owned(),
        },
        403 => OciError::Forbidden {
            reference: reference.to_string(),
        },
        404 => OciError::NotFound {
            reference: reference.to_string(),
        },
        status => OciError::Server {
            status,
            reference: reference.to_string(),
            message: clip(&message),
        },
    }
}

pub(super) fn protocol(reference: &Reference, e: &dyn std::fmt::Display) -> OciError {
    OciError::Protocol {
        reference: reference.to_string(),
        message: e.to_string(),
    }
}

pub(super) fn http_header(value: &'static str) -> http::HeaderValue {
    http::HeaderValue::from_static(value)
}
