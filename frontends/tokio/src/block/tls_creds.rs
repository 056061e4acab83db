//! A `tls-creds-x509` object (QEMU's `QCryptoTLSCredsX509`), as far as
//! the graph needs one today: the `nbd` driver's `tls-creds` names it, and
//! it says where the PEM files are (`dir`), which end of a connection it
//! is for (`endpoint`) and whether the peer's certificate is checked
//! (`verify-peer`).
//!
//! The files are looked for when the object is added, as QEMU loads them
//! when the object is completed, so a wrong directory is reported at once
//! and not at the first connection. The layout is QEMU's: `ca-cert.pem`
//! always; for a client, optionally `client-cert.pem` with
//! `client-key.pem`; for a server, `server-cert.pem` and `server-key.pem`.

use std::path::{Path, PathBuf};

/// `QCryptoTLSCredsEndpoint`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsEndpoint {
    /// QEMU's default.
    #[default]
    Client,
    Server,
}

impl TlsEndpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsEndpoint::Client => "client",
            TlsEndpoint::Server => "server",
        }
    }
}

/// The properties of a `tls-creds-x509` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsCredsX509 {
    pub id: String,
    /// `dir`: the directory holding the PEM files.
    pub dir: PathBuf,
    /// `endpoint` (default `client`).
    pub endpoint: TlsEndpoint,
    /// `verify-peer` (default true).
    pub verify_peer: bool,
}

impl TlsCredsX509 {
    /// Client credentials in `dir`, with QEMU's defaults.
    pub fn client(id: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        Self {
            id: id.into(),
            dir: dir.into(),
            endpoint: TlsEndpoint::Client,
            verify_peer: true,
        }
    }

    /// Checks the files QEMU requires, with QEMU's message for a missing
    /// one ("Unable to access credentials PATH: ...").
    pub fn check(&self) -> Result<(), String> {
        if self.dir.as_os_str().is_empty() {
            return Err("Missing 'dir' property value".into());
        }
        let need = |name: &str| -> Result<(), String> {
            let p = self.dir.join(name);
            std::fs::metadata(&p)
                .map(drop)
                .map_err(|e| format!("Unable to access credentials {}: {e}", p.display()))
        };
        need("ca-cert.pem")?;
        // A revocation list would be loaded by QEMU; the TLS library here
        // is not given one, so refuse it rather than ignore it.
        let crl = self.dir.join("ca-crl.pem");
        if crl.exists() {
            return Err(format!(
                "{}: certificate revocation lists are not supported by this build",
                crl.display()
            ));
        }
        match self.endpoint {
            TlsEndpoint::Server => {
                need("server-cert.pem")?;
                need("server-key.pem")?;
            }
            TlsEndpoint::Client => {
                // Both optional. QEMU quietly presents no certificate when
                // the key is missing; the client library here would fail
                // at every connection, so say so now.
                if self.dir.join("client-cert.pem").exists() {
                    need("client-key.pem")?;
                }
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named() {
        let dir = std::env::temp_dir().join(format!("bw-tlscreds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = TlsCredsX509::client("tls0", &dir);
        let e = c.check().unwrap_err();
        assert!(e.starts_with("Unable to access credentials "), "{e}");
        assert!(e.contains("ca-cert.pem"), "{e}");
        std::fs::write(dir.join("ca-cert.pem"), "x").unwrap();
        c.check().unwrap();
        std::fs::write(dir.join("client-cert.pem"), "x").unwrap();
        assert!(c.check().unwrap_err().contains("client-key.pem"));
        std::fs::write(dir.join("client-key.pem"), "x").unwrap();
        c.check().unwrap();
        let s = TlsCredsX509 {
            endpoint: TlsEndpoint::Server,
            ..c.clone()
        };
        assert!(s.check().unwrap_err().contains("server-cert.pem"));
        std::fs::write(dir.join("ca-crl.pem"), "x").unwrap();
        assert!(c.check().unwrap_err().contains("revocation"));
        std::fs::remove_dir_all(&dir).unwrap();
        let empty = TlsCredsX509::client("tls0", "");
        assert_eq!(empty.check().unwrap_err(), "Missing 'dir' property value");
    }
}
