//! NBD URIs (the NBD URI spec): `nbd://`, `nbds://`, `nbd+unix://`,
//! `nbds+unix://`, with `socket=`, `tls-certificates=`, `tls-hostname=`,
//! `tls-verify-peer=` and `tls-type=x509`. Unknown query parameters are
//! refused, as the spec asks, rather than silently ignored.

use std::fmt;
use std::path::PathBuf;

/// The NBD port IANA assigned, used when the URI names none.
pub const DEFAULT_PORT: u16 = 10809;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// Whether the URI asks for TLS (only `nbds` schemes do: an `nbd` URI is
/// plaintext, as in libnbd, so nothing can be downgraded unnoticed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    Off,
    Require,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdUri {
    pub transport: Transport,
    /// Export name: the path without its leading `/`, percent-decoded.
    pub export: String,
    pub tls: Tls,
    /// Directory with `ca-cert.pem`, and optionally `client-cert.pem` and
    /// `client-key.pem`.
    pub tls_certificates: Option<PathBuf>,
    /// Name the server certificate must carry (default: the URI's host).
    pub tls_hostname: Option<String>,
    pub tls_verify_peer: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UriError(pub String);

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid NBD URI: {}", self.0)
    }
}

impl std::error::Error for UriError {}

fn err<T>(msg: impl Into<String>) -> Result<T, UriError> {
    Err(UriError(msg.into()))
}

/// RFC 3986 percent-decoding into bytes, then UTF-8 (export names are
/// UTF-8 on the wire).
pub fn percent_decode(s: &str) -> Result<String, UriError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(v) => out.push(v),
                None => return err(format!("bad percent-escape in {s:?}")),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UriError(format!("{s:?} is not UTF-8 once decoded")))
}

/// Percent-encode everything outside RFC 3986's unreserved set and `/`,
/// so that a name survives a round trip through a URI.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || b"-._~/".contains(&c) {
            out.push(char::from(c));
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

fn parse_bool(key: &str, v: &str) -> Result<bool, UriError> {
    match v {
        "1" | "true" | "on" | "yes" => Ok(true),
        "0" | "false" | "off" | "no" => Ok(false),
        _ => err(format!("{key}={v}: expected 0 or 1")),
    }
}

fn parse_authority(auth: &str) -> Result<(String, u16), UriError> {
    // userinfo only matters for TLS-PSK, which is not supported.
    let hostport = match auth.rsplit_once('@') {
        Some((_, hp)) => hp,
        None => auth,
    };
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let Some((h, after)) = rest.split_once(']') else {
            return err("unterminated IPv6 literal");
        };
        match after {
            "" => (h, None),
            p => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return err(format!("junk after IPv6 literal: {after:?}")),
            },
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(p) => p.parse().map_err(|_| UriError(format!("bad port {p:?}")))?,
    };
    let host = if host.is_empty() {
        "localhost".to_owned()
    } else {
        percent_decode(host)?
    };
    Ok((host, port))
}

impl NbdUri {
    pub fn parse(s: &str) -> Result<NbdUri, UriError> {
        let Some((scheme, rest)) = s.split_once("://") else {
            return err(format!("{s:?}: expected SCHEME://..."));
        };
        let (tls, unix) = match scheme.to_ascii_lowercase().as_str() {
            "nbd" => (Tls::Off, false),
            "nbds" => (Tls::Require, false),
            "nbd+unix" => (Tls::Off, true),
            "nbds+unix" => (Tls::Require, true),
            other => {
                return err(format!(
                    "unsupported scheme {other:?} (nbd, nbds, nbd+unix, nbds+unix)"
                ));
            }
        };
        let (rest, _fragment) = rest.split_once('#').unwrap_or((rest, ""));
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let export = percent_decode(path.strip_prefix('/').unwrap_or(path))?;

        let mut socket = None;
        let mut uri = NbdUri {
            transport: Transport::Unix(PathBuf::new()),
            export,
            tls,
            tls_certificates: None,
            tls_hostname: None,
            tls_verify_peer: true,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(k)?;
            let v = percent_decode(v)?;
            match k.as_str() {
                "socket" => socket = Some(PathBuf::from(v)),
                "tls-certificates" => uri.tls_certificates = Some(PathBuf::from(v)),
                "tls-hostname" => uri.tls_hostname = Some(v),
                "tls-verify-peer" => uri.tls_verify_peer = parse_bool(&k, &v)?,
                "tls-type" if v == "x509" => {}
                "tls-type" => return err(format!("tls-type={v}: only x509 is supported")),
                k if k.starts_with("x-") => {}
                other => return err(format!("unknown query parameter {other:?}")),
            }
        }
        uri.transport = if unix {
            match socket {
                Some(p) if !p.as_os_str().is_empty() => Transport::Unix(p),
                _ => return err(format!("{scheme} URIs need ?socket=PATH")),
            }
        } else {
            if socket.is_some() {
                return err(format!("socket= is for +unix schemes, not {scheme}"));
            }
            let (host, port) = parse_authority(authority)?;
            Transport::Tcp { host, port }
        };
        Ok(uri)
    }

    /// Host name for certificate checks.
    pub fn server_name(&self) -> String {
        match (&self.tls_hostname, &self.transport) {
            (Some(h), _) => h.clone(),
            (None, Transport::Tcp { host, .. }) => host.clone(),
            (None, Transport::Unix(_)) => "localhost".to_owned(),
        }
    }

    /// The URI again, in the form `nbdinfo` prints (`nbd_get_uri`).
    pub fn display_for(&self, export: &str) -> String {
        let scheme = match (self.tls, &self.transport) {
            (Tls::Off, Transport::Tcp { .. }) => "nbd",
            (Tls::Require, Transport::Tcp { .. }) => "nbds",
            (Tls::Off, Transport::Unix(_)) => "nbd+unix",
            (Tls::Require, Transport::Unix(_)) => "nbds+unix",
        };
        let mut query = Vec::new();
        let authority = match &self.transport {
            Transport::Tcp { host, port } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                format!("{host}:{port}")
            }
            Transport::Unix(p) => {
                query.push(format!("socket={}", percent_encode(&p.to_string_lossy())));
                String::new()
            }
        };
        if let Some(d) = &self.tls_certificates {
            query.push(format!(
                "tls-certificates={}",
                percent_encode(&d.to_string_lossy())
            ));
        }
        let mut s = format!("{scheme}://{authority}/{}", percent_encode(export));
        if !query.is_empty() {
            s.push('?');
            s.push_str(&query.join("&"));
        }
        s
    }
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_for(&self.export))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(s: &str) -> (String, u16, String) {
        let u = NbdUri::parse(s).unwrap();
        match u.transport {
            Transport::Tcp { host, port } => (host, port, u.export),
            _ => panic!("not tcp"),
        }
    }

    #[test]
    fn spec_examples() {
        assert_eq!(
            tcp("nbd://example.com/disk"),
            ("example.com".into(), 10809, "disk".into())
        );
        assert_eq!(tcp("nbd://example.com/").2, "");
        assert_eq!(tcp("nbd://example.com").2, "");
        assert_eq!(tcp("nbd://example.com//disk").2, "/disk");
        assert_eq!(tcp("nbd://example.com/hello%20world").2, "hello world");
        assert_eq!(tcp("nbd://[::1]:1234/x"), ("::1".into(), 1234, "x".into()));
        assert_eq!(tcp("nbd://user@h:7/").1, 7);
        let u = NbdUri::parse("nbd+unix:///disk?socket=sock").unwrap();
        assert_eq!(u.transport, Transport::Unix("sock".into()));
        assert_eq!(u.export, "disk");
        assert_eq!(u.tls, Tls::Off);
        let u = NbdUri::parse("nbds+unix:///?socket=%00/abstract&tls-certificates=/pki").unwrap();
        assert_eq!(u.tls, Tls::Require);
        assert_eq!(u.transport, Transport::Unix("\0/abstract".into()));
        assert_eq!(u.tls_certificates, Some("/pki".into()));
        assert_eq!(u.server_name(), "localhost");
    }

    #[test]
    fn refusals() {
        for bad in [
            "http://x/",
            "nbd+unix:///x",
            "nbd://h/?socket=x",
            "nbd://h/?bogus=1",
            "nbd://h:99999/",
            "nbd://h/%zz",
            "nbd://h/?tls-type=psk",
            "nbd",
        ] {
            assert!(NbdUri::parse(bad).is_err(), "{bad}");
        }
        assert!(NbdUri::parse("nbd://h/?x-custom=1").is_ok());
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "nbd://h:10809/a%20b",
            "nbd+unix:///exp?socket=/tmp/q.sock",
            "nbds://[::1]:5/x",
        ] {
            let u = NbdUri::parse(s).unwrap();
            assert_eq!(u.to_string(), s);
            assert_eq!(NbdUri::parse(&u.to_string()).unwrap(), u);
        }
    }
}
