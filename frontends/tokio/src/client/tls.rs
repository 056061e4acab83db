//! The client side of STARTTLS, with rustls: trust roots from the URI's
//! `tls-certificates` directory (`ca-cert.pem`, plus `client-cert.pem` and
//! `client-key.pem` for client authentication, the layout GnuTLS-based
//! NBD tools use), else the system bundle.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

use super::uri::NbdUri;

/// Where Debian-like systems keep the trusted CA bundle.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read certificates: {e}", path.display()))
}

/// Accepts any server certificate: only for `tls-verify-peer=0`, which
/// the user asked for explicitly.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connector and the server name to check, for this URI.
pub fn connector(uri: &NbdUri) -> Result<(TlsConnector, ServerName<'static>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let dir = uri.tls_certificates.as_deref();
    let builder = if uri.tls_verify_peer {
        let mut roots = RootCertStore::empty();
        let ca = match dir {
            Some(d) => d.join("ca-cert.pem"),
            None => SYSTEM_BUNDLE.into(),
        };
        for c in certs(&ca)? {
            roots
                .add(c)
                .map_err(|e| format!("{}: bad CA certificate: {e}", ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{}: no CA certificate", ca.display()));
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    };
    let cert = dir.map(|d| d.join("client-cert.pem"));
    let config = match cert.filter(|c| c.exists()) {
        Some(cert) => {
            let key_path = cert.with_file_name("client-key.pem");
            let key = PrivateKeyDer::from_pem_file(&key_path)
                .map_err(|e| format!("{}: cannot read private key: {e}", key_path.display()))?;
            builder
                .with_client_auth_cert(certs(&cert)?, key)
                .map_err(|e| format!("TLS client certificate and key: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(uri.server_name())
        .map_err(|e| format!("TLS server name {:?}: {e}", uri.server_name()))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}
