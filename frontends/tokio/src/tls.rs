//! TLS for STARTTLS, with rustls: a server certificate and key, and
//! optionally a CA that client certificates must chain to.

use std::path::Path;
use std::sync::Arc;

use blockwire_core::server::TlsPolicy;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::cli::TlsMode;

pub fn policy(mode: TlsMode) -> TlsPolicy {
    match mode {
        TlsMode::Off => TlsPolicy::Off,
        TlsMode::On => TlsPolicy::Allowed,
        TlsMode::Require => TlsPolicy::Required,
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", path.display()));
    }
    Ok(certs)
}

/// Builds the acceptor from PEM files.
pub fn acceptor(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<TlsAcceptor, String> {
    let chain = certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{}: cannot read private key: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: bad CA certificate: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("TLS certificate and key do not fit together: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
