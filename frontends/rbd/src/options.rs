//! What to connect to and what to open, with the names of QEMU's
//! `BlockdevOptionsRbd` (`pool`, `namespace`, `image`, `snapshot`, `conf`,
//! `user`, `key-secret`, `auth-client-required`, `server`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A monitor address (`InetSocketAddressBase` of QEMU's `server` list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonAddr {
    pub host: String,
    /// `None`: Ceph's default monitor ports.
    pub port: Option<u16>,
}

impl MonAddr {
    pub fn new(host: impl Into<String>, port: u16) -> MonAddr {
        MonAddr {
            host: host.into(),
            port: Some(port),
        }
    }
}

impl fmt::Display for MonAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An IPv6 literal needs brackets before a port, as QEMU writes it.
        let bracket = self.host.contains(':') && !self.host.starts_with('[');
        match (bracket, self.port) {
            (true, Some(p)) => write!(f, "[{}]:{p}", self.host),
            (false, Some(p)) => write!(f, "{}:{p}", self.host),
            (_, None) => f.write_str(&self.host),
        }
    }
}

/// One value of `auth_client_required` (QEMU's `RbdAuthMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    Cephx,
    None,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Cephx => "cephx",
            AuthMode::None => "none",
        }
    }
}

/// A cephx key. Never printed; its bytes are overwritten when dropped (best
/// effort: librados keeps its own copy in its configuration).
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(key: impl Into<String>) -> Secret {
        Secret(key.into().into_bytes())
    }

    /// The key in `path` (a QEMU `secret` object's `file=`), surrounding
    /// whitespace removed.
    pub fn from_file(path: &Path) -> io::Result<Secret> {
        let mut raw = std::fs::read(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot read key file {}: {e}", path.display()),
            )
        })?;
        let text = raw.trim_ascii().to_vec();
        wipe(&mut raw);
        if text.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("key file {} is empty", path.display()),
            ));
        }
        Ok(Secret(text))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether this is a cephx key as `ceph auth get-key` prints it: base64
    /// of a CryptoKey (`u16` type, `u32` seconds, `u32` nanoseconds, `u16`
    /// length, then that many secret bytes). librados would print a
    /// malformed key in its log; this lets the caller refuse it first.
    pub(crate) fn is_cephx_key(&self) -> bool {
        let Some(mut raw) = base64_decode(&self.0) else {
            return false;
        };
        let ok = raw.len() >= 12
            && 12 + usize::from(u16::from_le_bytes([raw[10], raw[11]])) == raw.len();
        wipe(&mut raw);
        ok
    }
}

/// Standard base64 with `=` padding; `None` if anything else is in it.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    #[allow(clippy::manual_is_multiple_of)] // is_multiple_of is newer than rust-version
    if text.is_empty() || text.len() % 4 != 0 {
        return None;
    }
    let pad = text.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return None;
    }
    let body = &text[..text.len() - pad];
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in body {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

pub(crate) fn wipe(bytes: &mut Vec<u8>) {
    bytes.fill(0);
    // Keep the stores: the buffer is observed after them.
    std::hint::black_box(&bytes);
}

/// How to reach a cluster. `ClusterOptions::default()` is what `qemu-nbd
/// rbd:pool/image` does: librados' default configuration search, client
/// `admin`, its keyring from the configuration.
#[derive(Debug)]
pub struct ClusterOptions {
    /// A `ceph.conf`. `None`: librados' search (`$CEPH_CONF`,
    /// `/etc/ceph/ceph.conf`, ...), and finding none is not an error (as in
    /// QEMU: everything may come from the options below).
    pub conf: Option<PathBuf>,
    /// The cephx id, without `client.`; `None` = `admin`.
    pub user: Option<String>,
    /// The key (QEMU's `key-secret`); `None`: the keyring of the
    /// configuration.
    pub key: Option<Secret>,
    /// Monitors (`mon_host`); empty: from the configuration.
    pub servers: Vec<MonAddr>,
    /// `auth_client_required`; empty: from the configuration.
    pub auth_client_required: Vec<AuthMode>,
    /// Bounds connecting (`client_mount_timeout`) and every monitor request
    /// (`rados_mon_op_timeout`): unreachable monitors, a wrong key or a
    /// missing pool fail within it instead of librados' 300 s / forever.
    /// Whole seconds, rounded up.
    pub connect_timeout: Duration,
    /// `rados_osd_op_timeout`: a request an OSD does not answer in time fails
    /// with `ETIMEDOUT`. `None` (Ceph's default): requests wait for the
    /// cluster to recover, however long that takes.
    pub osd_op_timeout: Option<Duration>,
    /// Further `rados_conf_set` pairs (`rbd_cache=false`, ...), applied after
    /// the configuration file and before the options above.
    pub config: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            conf: None,
            user: None,
            key: None,
            servers: Vec::new(),
            auth_client_required: Vec::new(),
            connect_timeout: Duration::from_secs(30),
            osd_op_timeout: None,
            config: Vec::new(),
        }
    }
}

impl ClusterOptions {
    pub(crate) fn client_name(&self) -> String {
        format!("client.{}", self.user.as_deref().unwrap_or("admin"))
    }

    /// `mon_host` from `servers` (QEMU joins them with `;`).
    pub(crate) fn mon_host(&self) -> Option<String> {
        (!self.servers.is_empty()).then(|| {
            self.servers
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(";")
        })
    }

    pub(crate) fn auth(&self) -> Option<String> {
        (!self.auth_client_required.is_empty()).then(|| {
            self.auth_client_required
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(";")
        })
    }
}

/// Whole seconds for a Ceph `secs` option, rounded up, at least 1.
pub(crate) fn ceph_secs(d: Duration) -> String {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1).to_string()
}

/// Which image to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    pub pool: String,
    /// A RADOS namespace inside the pool; `None` = the default one.
    pub namespace: Option<String>,
    pub image: String,
    /// Open this snapshot (always read-only).
    pub snapshot: Option<String>,
    /// Open read-only (no exclusive lock, no header watch for writes).
    pub read_only: bool,
}

impl ImageSpec {
    pub fn new(pool: impl Into<String>, image: impl Into<String>) -> ImageSpec {
        ImageSpec {
            pool: pool.into(),
            namespace: None,
            image: image.into(),
            snapshot: None,
            read_only: false,
        }
    }

    /// A snapshot can only be read.
    pub fn effective_read_only(&self) -> bool {
        self.read_only || self.snapshot.is_some()
    }
}

impl fmt::Display for ImageSpec {
    /// `pool/[namespace/]image[@snapshot]`, as `rbd` and qemu-nbd write it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/", self.pool)?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        f.write_str(&self.image)?;
        if let Some(s) = &self.snapshot {
            write!(f, "@{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mon_host_is_joined_like_qemu() {
        let o = ClusterOptions {
            servers: vec![
                MonAddr::new("127.0.0.1", 6789),
                MonAddr::new("::1", 3300),
                MonAddr {
                    host: "mon.example".into(),
                    port: None,
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            o.mon_host().unwrap(),
            "127.0.0.1:6789;[::1]:3300;mon.example"
        );
        assert_eq!(ClusterOptions::default().mon_host(), None);
    }

    #[test]
    fn auth_and_names() {
        let o = ClusterOptions {
            user: Some("blockwire".into()),
            auth_client_required: vec![AuthMode::Cephx, AuthMode::None],
            ..Default::default()
        };
        assert_eq!(o.client_name(), "client.blockwire");
        assert_eq!(o.auth().unwrap(), "cephx;none");
        assert_eq!(ClusterOptions::default().client_name(), "client.admin");
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceph_secs(Duration::from_millis(1)), "1");
        assert_eq!(ceph_secs(Duration::from_millis(2500)), "3");
        assert_eq!(ceph_secs(Duration::from_secs(30)), "30");
        assert_eq!(ceph_secs(Duration::ZERO), "1");
    }

    #[test]
    fn spec_display_and_snapshot_is_read_only() {
        let mut s = ImageSpec::new("rbd", "disk");
        assert_eq!(s.to_string(), "rbd/disk");
        assert!(!s.effective_read_only());
        s.namespace = Some("ns".into());
        s.snapshot = Some("snap1".into());
        assert_eq!(s.to_string(), "rbd/ns/disk@snap1");
        assert!(s.effective_read_only());
    }

    #[test]
    fn cephx_keys_are_recognised() {
        // The shape of `ceph-authtool --gen-print-key` output.
        assert!(Secret::new("AQBmTw9rxeyHBhAAeTLF5W6PM4pa6b+j2/jLzA==").is_cephx_key());
        assert!(!Secret::new("not-a-key").is_cephx_key());
        assert!(!Secret::new("AQBmTw9rxeyHBhAAeTLF5W6PM4pa6b+j2/jLzA").is_cephx_key());
        // Valid base64, wrong inner length.
        assert!(!Secret::new("AQBmTw9rxeyHBhAAeTLF5W6PM4pa6b+j2/jL").is_cephx_key());
        assert!(!Secret::new("").is_cephx_key());
        assert_eq!(base64_decode(b"aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode(b"aGk="), Some(b"hi".to_vec()));
    }

    #[test]
    fn secret_is_not_printed_and_file_is_trimmed() {
        let s = Secret::new("AQBs3cr3t==");
        assert_eq!(format!("{s:?}"), "Secret(..)");
        let dir = std::env::temp_dir().join(format!("bw-rbd-secret-{}", std::process::id()));
        std::fs::write(&dir, "  AQBs3cr3t==\n").unwrap();
        assert_eq!(Secret::from_file(&dir).unwrap().bytes(), b"AQBs3cr3t==");
        std::fs::write(&dir, "\n").unwrap();
        let e = Secret::from_file(&dir).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        std::fs::remove_file(&dir).unwrap();
        let e = Secret::from_file(&dir).unwrap_err();
        assert!(e.to_string().starts_with("cannot read key file"), "{e}");
    }
}
