//! HTTPS: a rustls server config from PEM files (optionally requiring
//! client certificates). Handshakes run on each connection's own task,
//! bounded by `daemon.tls_handshake_timeout_ms` (see `connections`), so a
//! slow client cannot stall others.

use std::{path::Path, sync::Arc};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};

use super::{DaemonError, TlsConfig};

/// `what` failed on the file at `path`, because of `e`.
fn tls_err(
    what: &str,
    path: &Path,
    e: impl std::error::Error + Send + Sync + 'static,
) -> DaemonError {
    DaemonError::Tls {
        what: format!("{what} {}", path.display()),
        source: Some(Box::new(e)),
    }
}

/// Build the server config: certificate chain + key; with `client_ca`,
/// clients must present a certificate it signed.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, DaemonError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| tls_err("reading certificates", &tls.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err("parsing certificates", &tls.cert, e))?;
    if certs.is_empty() {
        return Err(DaemonError::Tls {
            what: format!("no certificate in {}", tls.cert.display()),
            source: None,
        });
    }
    let key =
        PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| tls_err("reading key", &tls.key, e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DaemonError::Tls {
            what: "the crypto provider refused the protocol versions".into(),
            source: Some(Box::new(e)),
        })?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .map_err(|e| tls_err("reading client CA", ca, e))?
            {
                roots
                    .add(cert.map_err(|e| tls_err("parsing client CA", ca, e))?)
                    .map_err(|e| tls_err("adding client CA", ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| DaemonError::Tls {
                    what: "client verifier".into(),
                    source: Some(Box::new(e)),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| DaemonError::Tls {
            what: "certificate and key".into(),
            source: Some(Box::new(e)),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
