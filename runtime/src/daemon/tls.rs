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

/// Build the server config: certificate chain + key; with `client_ca`,
/// clients must present a certificate it signed.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, DaemonError> {
    let err = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        DaemonError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| err("reading certificates", &tls.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| err("parsing certificates", &tls.cert, &e))?;
    if certs.is_empty() {
        return Err(DaemonError::Tls(format!(
            "no certificate in {}",
            tls.cert.display()
        )));
    }
    let key =
        PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| err("reading key", &tls.key, &e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DaemonError::Tls(e.to_string()))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in
                CertificateDer::pem_file_iter(ca).map_err(|e| err("reading client CA", ca, &e))?
            {
                roots
                    .add(cert.map_err(|e| err("parsing client CA", ca, &e))?)
                    .map_err(|e| err("adding client CA", ca, &e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| DaemonError::Tls(format!("client verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| DaemonError::Tls(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
