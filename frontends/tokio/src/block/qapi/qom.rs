//! `ObjectOptions` (QEMU 7.2 `qapi/qom.json`) for the objects the block
//! layer uses: `throttle-group` (`ThrottleGroupProperties`), `secret`
//! (`SecretProperties`, for drivers that need a key, such as rbd's
//! `key-secret`) and `tls-creds-x509` (`TlsCredsX509Properties`, for the
//! nbd driver's `tls-creds`), and their conversion.

use std::path::Path;
use std::sync::Arc;

use blockwire_core::block::throttle::{BucketLimit, THROTTLE_VALUE_MAX, ThrottleLimits};
use serde_json::Value;

use super::Error;
use super::convert::Obj;
use super::schema::{Enum, Int, Literal, Member, Struct, Type, Union, Variant};
use super::visit;
use crate::block::graph::{Graph, GraphError, id_wellformed};
use crate::block::options::ThrottleGroupOptions;
use crate::block::tls_creds::{TlsCredsX509, TlsEndpoint};

pub static OBJECT_OPTIONS: Union = Union {
    name: "ObjectOptions",
    tag: "qom-type",
    tag_enum: "ObjectType",
    base: &[Member::req("id", Type::Str)],
    variants: &[
        Variant {
            case: "secret",
            members: &SECRET,
        },
        Variant {
            case: "throttle-group",
            members: &THROTTLE_GROUP,
        },
        Variant {
            case: "tls-creds-x509",
            members: &TLS_CREDS_X509,
        },
    ],
};

pub static OBJECT_OPTIONS_TYPE: Type = Type::Union(&OBJECT_OPTIONS);

// ---- secret ----

pub static SECRET_FORMAT: Enum = Enum {
    name: "QCryptoSecretFormat",
    values: &["raw", "base64"],
};

/// `SecretProperties` with its base `SecretCommonProperties`.
pub static SECRET: Struct = Struct {
    name: "SecretProperties",
    members: &[
        // Deprecated in QEMU; secrets are always loaded at once here.
        Member::unsupported("loaded", Type::Bool, None).features(&["deprecated"]),
        Member::opt("format", Type::Enum(&SECRET_FORMAT)),
        // Secrets encrypted with another secret.
        Member::unsupported("keyid", Type::Str, None),
        Member::unsupported("iv", Type::Str, None),
        Member::opt("data", Type::Str),
        Member::opt("file", Type::Str),
    ],
    features: &[],
};

/// A `secret` object: its bytes, decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretOptions {
    pub id: String,
    pub data: Arc<[u8]>,
}

impl std::fmt::Debug for SecretOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret itself, not even in a debug log.
        f.debug_struct("SecretOptions")
            .field("id", &self.id)
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .finish()
    }
}

fn secret(o: &Obj, id: &str) -> Result<SecretOptions, Error> {
    let raw = match (o.str("data")?, o.str("file")?) {
        (Some(_), Some(_)) => return Err(Error::new("'file' and 'data' are mutually exclusive")),
        (None, None) => return Err(Error::new("Either 'file' or 'data' must be provided")),
        (Some(d), None) => d.as_bytes().to_vec(),
        (None, Some(f)) => std::fs::read(Path::new(f))
            .map_err(|e| Error::new(format!("Unable to read {f}: {e}")))?,
    };
    let data = match o.str("format")? {
        None | Some("raw") => raw,
        Some("base64") => base64_decode(&raw)
            .ok_or_else(|| Error::new("Base64 data contains invalid characters"))?,
        Some(_) => return Err(Error::new("internal error: secret format")),
    };
    Ok(SecretOptions {
        id: id.to_owned(),
        data: data.into(),
    })
}

/// Strict base64 (QEMU's `qbase64_decode`): the standard alphabet, length
/// a multiple of four, `=` only as one or two final padding characters.
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
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
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let pad = s.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return None;
    }
    let body = &s[..s.len() - pad];
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
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

// ---- throttle-group ----

/// `ThrottleLimits`, in QEMU's member order.
pub static THROTTLE_LIMITS: Struct = Struct {
    name: "ThrottleLimits",
    members: &LIMIT_MEMBERS,
    features: &[],
};

macro_rules! limits {
    ($($name:literal),* $(,)?) => { [$(Member::opt($name, Type::Int(Int::I64)),)*] };
}
static LIMIT_MEMBERS: [Member; 19] = limits![
    "iops-total",
    "iops-total-max",
    "iops-total-max-length",
    "iops-read",
    "iops-read-max",
    "iops-read-max-length",
    "iops-write",
    "iops-write-max",
    "iops-write-max-length",
    "bps-total",
    "bps-total-max",
    "bps-total-max-length",
    "bps-read",
    "bps-read-max",
    "bps-read-max-length",
    "bps-write",
    "bps-write-max",
    "bps-write-max-length",
    "iops-size",
];

/// `ThrottleGroupProperties`: `limits`, then the legacy `x-` properties,
/// one per limit.
static THROTTLE_GROUP_MEMBERS: [Member; 20] = {
    macro_rules! x {
        ($($name:literal),* $(,)?) => {
            [
                Member::opt("limits", Type::Struct(&THROTTLE_LIMITS)),
                $(Member::opt($name, Type::Int(Int::I64)).features(&["unstable"]),)*
            ]
        };
    }
    x![
        "x-iops-total",
        "x-iops-total-max",
        "x-iops-total-max-length",
        "x-iops-read",
        "x-iops-read-max",
        "x-iops-read-max-length",
        "x-iops-write",
        "x-iops-write-max",
        "x-iops-write-max-length",
        "x-bps-total",
        "x-bps-total-max",
        "x-bps-total-max-length",
        "x-bps-read",
        "x-bps-read-max",
        "x-bps-read-max-length",
        "x-bps-write",
        "x-bps-write-max",
        "x-bps-write-max-length",
        "x-iops-size",
    ]
};

pub static THROTTLE_GROUP: Struct = Struct {
    name: "ThrottleGroupProperties",
    members: &THROTTLE_GROUP_MEMBERS,
    features: &[],
};

/// One leaky bucket as QEMU's `ThrottleConfig` holds it before checking:
/// the burst length defaults to 1 and 0 is an error.
#[derive(Clone, Copy)]
struct Bucket {
    avg: u64,
    max: u64,
    length: u64,
}

/// QEMU's bucket order (`BucketType`), and the limit names of each.
const BUCKETS: [&str; 6] = [
    "bps-total",
    "bps-read",
    "bps-write",
    "iops-total",
    "iops-read",
    "iops-write",
];

struct Config {
    buckets: [Bucket; 6],
    op_size: u64,
}

impl Config {
    /// Sets the limit `key` (a `ThrottleLimits` name) to `value`, as
    /// QEMU stores it (unsigned; a negative `int` wraps and then fails
    /// the range check).
    fn set(&mut self, key: &str, value: i64, length_err: impl Fn() -> Error) -> Result<(), Error> {
        if key == "iops-size" {
            self.op_size = value as u64;
            return Ok(());
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            let Some(rest) = key.strip_prefix(b) else {
                continue;
            };
            let bucket = &mut self.buckets[i];
            match rest {
                "" => bucket.avg = value as u64,
                "-max" => bucket.max = value as u64,
                "-max-length" => {
                    // QEMU keeps burst lengths as `unsigned int`.
                    bucket.length = u32::try_from(value).map_err(|_| length_err())?.into();
                }
                _ => continue,
            }
            return Ok(());
        }
        Err(Error::new(format!(
            "internal error: throttle limit '{key}'"
        )))
    }

    /// QEMU's `throttle_is_valid`, in its order and words.
    fn validate(&self) -> Result<(), Error> {
        let b = &self.buckets;
        let conflict = |t: usize| {
            (b[t].avg != 0 && (b[t + 1].avg != 0 || b[t + 2].avg != 0))
                || (b[t].max != 0 && (b[t + 1].max != 0 || b[t + 2].max != 0))
        };
        if conflict(0) || conflict(3) {
            return Err(Error::new(
                "bps/iops/max total values and read/write values cannot be used at the same time",
            ));
        }
        if self.op_size != 0 && b[3].avg == 0 && b[4].avg == 0 && b[5].avg == 0 {
            return Err(Error::new("iops size requires an iops value to be set"));
        }
        for k in b {
            if k.avg > THROTTLE_VALUE_MAX || k.max > THROTTLE_VALUE_MAX {
                return Err(Error::new(format!(
                    "bps/iops/max values must be within [0, {THROTTLE_VALUE_MAX}]"
                )));
            }
            if k.length == 0 {
                return Err(Error::new("the burst length cannot be 0"));
            }
            if k.length > 1 && k.max == 0 {
                return Err(Error::new("burst length set without burst rate"));
            }
            if k.max != 0 && k.length > THROTTLE_VALUE_MAX / k.max {
                return Err(Error::new("burst length too high for this burst rate"));
            }
            if k.max != 0 && k.avg == 0 {
                return Err(Error::new(
                    "bps_max/iops_max require corresponding bps/iops values",
                ));
            }
            if k.max != 0 && k.max < k.avg {
                return Err(Error::new("bps_max/iops_max cannot be lower than bps/iops"));
            }
        }
        Ok(())
    }

    fn limits(&self) -> ThrottleLimits {
        let l = |i: usize| BucketLimit {
            avg: self.buckets[i].avg,
            max: self.buckets[i].max,
            max_length: self.buckets[i].length,
        };
        ThrottleLimits {
            bps_total: l(0),
            bps_read: l(1),
            bps_write: l(2),
            iops_total: l(3),
            iops_read: l(4),
            iops_write: l(5),
            iops_size: self.op_size,
        }
    }
}

fn throttle_group(o: &Obj, id: &str) -> Result<ThrottleGroupOptions, Error> {
    let mut cfg = Config {
        buckets: [Bucket {
            avg: 0,
            max: 0,
            length: 1,
        }; 6],
        op_size: 0,
    };
    // The `x-` properties, each set on its own (QEMU refuses negative
    // ones as it sets them; note its missing space in "therange").
    for m in &THROTTLE_GROUP_MEMBERS[1..] {
        if let Some(v) = o.i64(m.name)? {
            if v < 0 {
                return Err(Error::new("Property values cannot be negative"));
            }
            cfg.set(&m.name[2..], v, || {
                Error::new(format!(
                    "{} value must be in therange [0, {}]",
                    m.name,
                    u32::MAX
                ))
            })?;
        }
    }
    // Then `limits` over them: QEMU applies properties in no defined order,
    // so when both set a limit, which wins is unspecified there; here
    // `limits` does.
    if let Some(v) = o.value("limits") {
        cfg.apply(&Obj::object(v, &o.path("limits"), o.keyval())?)?;
    }
    Ok(ThrottleGroupOptions {
        id: id.to_owned(),
        limits: cfg.checked()?,
    })
}

impl Config {
    fn of(l: &ThrottleLimits) -> Self {
        let b = |b: &BucketLimit| Bucket {
            avg: b.avg,
            max: b.max,
            length: b.max_length.max(1),
        };
        Config {
            buckets: [
                b(&l.bps_total),
                b(&l.bps_read),
                b(&l.bps_write),
                b(&l.iops_total),
                b(&l.iops_read),
                b(&l.iops_write),
            ],
            op_size: l.iops_size,
        }
    }

    /// The `ThrottleLimits` members present in `l`, over what is set.
    fn apply(&mut self, l: &Obj) -> Result<(), Error> {
        for m in &LIMIT_MEMBERS {
            if let Some(v) = l.i64(m.name)? {
                // QEMU lets a negative length wrap and then fails it as
                // "too high for this burst rate" (or not at all); it is the
                // same range error here.
                self.set(m.name, v, || {
                    Error::new(format!(
                        "{} value must be in the range [0, {}]",
                        m.name,
                        u32::MAX
                    ))
                })?;
            }
        }
        Ok(())
    }

    /// QEMU's checks, then the core's (whatever QEMU lets through, the
    /// core must take too).
    fn checked(&self) -> Result<ThrottleLimits, Error> {
        self.validate()?;
        let limits = self.limits();
        limits.validate().map_err(|e| Error::new(format!("{e}")))?;
        Ok(limits)
    }
}

/// `qom-set GROUP limits VALUE`: the members present in `v` (checked as
/// `ThrottleLimits`) replace the group's, and the result must pass
/// QEMU's checks, as `throttle_group_set_limits` does.
pub fn merged_limits(base: &ThrottleLimits, v: &Value) -> Result<ThrottleLimits, Error> {
    // Visited as the property `limits`, so errors name `limits.MEMBER`.
    static PROPERTY: Struct = Struct {
        name: "q_obj_limits",
        members: &[Member::req("limits", Type::Struct(&THROTTLE_LIMITS))],
        features: &[],
    };
    let v = visit::visit(
        &Type::Struct(&PROPERTY),
        &serde_json::json!({ "limits": v }),
        false,
    )?;
    let mut cfg = Config::of(base);
    cfg.apply(&Obj::object(&v["limits"], "limits", false)?)?;
    cfg.checked()
}

/// `qom-get GROUP PROPERTY`: `limits` as QEMU shows it (every member), or
/// one legacy `x-` limit.
pub fn limits_property(l: &ThrottleLimits, property: &str) -> Option<Value> {
    let cfg = Config::of(l);
    let get = |name: &str| -> u64 {
        if name == "iops-size" {
            return cfg.op_size;
        }
        let (i, rest) = BUCKETS
            .iter()
            .enumerate()
            .find_map(|(i, b)| name.strip_prefix(b).map(|r| (i, r)))
            .unwrap_or((0, "?"));
        let b = &cfg.buckets[i];
        match rest {
            "" => b.avg,
            "-max" => b.max,
            _ => b.length,
        }
    };
    if property == "limits" {
        let m = LIMIT_MEMBERS
            .iter()
            .map(|m| (m.name.to_owned(), get(m.name).into()));
        return Some(Value::Object(m.collect()));
    }
    let name = property.strip_prefix("x-")?;
    LIMIT_MEMBERS
        .iter()
        .any(|m| m.name == name)
        .then(|| get(name).into())
}

// ---- tls-creds-x509 ----

pub static TLS_CREDS_ENDPOINT: Enum = Enum {
    name: "QCryptoTLSCredsEndpoint",
    values: &["client", "server"],
};

/// `TlsCredsX509Properties` with its base `TlsCredsProperties`.
pub static TLS_CREDS_X509: Struct = Struct {
    name: "TlsCredsX509Properties",
    members: &[
        Member::opt("verify-peer", Type::Bool),
        Member::opt("dir", Type::Str),
        Member::opt("endpoint", Type::Enum(&TLS_CREDS_ENDPOINT)),
        // A GnuTLS priority string; the TLS library here has its own
        // choice of protocol versions and ciphers.
        Member::unsupported("priority", Type::Str, None),
        Member::unsupported("loaded", Type::Bool, None).features(&["deprecated"]),
        // QEMU's checks of the certificates' fields at load; certificates
        // are checked by the TLS library when used instead.
        Member::unsupported("sanity-check", Type::Bool, Some(Literal::Bool(true))),
        // An encrypted private key.
        Member::unsupported("passwordid", Type::Str, None),
    ],
    features: &[],
};

fn tls_creds_x509(o: &Obj, id: &str) -> Result<TlsCredsX509, Error> {
    Ok(TlsCredsX509 {
        id: id.to_owned(),
        dir: o.str("dir")?.unwrap_or_default().into(),
        endpoint: match o.str("endpoint")? {
            None | Some("client") => TlsEndpoint::Client,
            Some("server") => TlsEndpoint::Server,
            Some(_) => return Err(Error::new("internal error: endpoint")),
        },
        verify_peer: o.bool("verify-peer")?.unwrap_or(true),
    })
}

// ---- objects ----

/// An object, typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectOptions {
    ThrottleGroup(ThrottleGroupOptions),
    Secret(SecretOptions),
    TlsCredsX509(TlsCredsX509),
}

impl ObjectOptions {
    pub fn id(&self) -> &str {
        match self {
            ObjectOptions::ThrottleGroup(t) => &t.id,
            ObjectOptions::Secret(s) => &s.id,
            ObjectOptions::TlsCredsX509(t) => &t.id,
        }
    }

    /// `object-add`: the object joins the graph's objects.
    pub fn add_to(&self, graph: &Graph) -> Result<(), GraphError> {
        match self {
            ObjectOptions::ThrottleGroup(t) => graph.add_throttle_group(&t.id, t.limits),
            ObjectOptions::Secret(s) => graph.add_secret(&s.id, s.data.clone()),
            ObjectOptions::TlsCredsX509(t) => graph.add_tls_creds(t.clone()),
        }
    }
}

/// Converts a checked `ObjectOptions` value.
pub fn convert(v: &Value, keyval: bool) -> Result<ObjectOptions, Error> {
    let o = Obj::root(v, keyval)?;
    let id = o.req_str("id")?;
    if !id_wellformed(id) {
        return Err(Error::new("Parameter 'id' expects an identifier"));
    }
    match o.req_str("qom-type")? {
        "secret" => secret(&o, id).map(ObjectOptions::Secret),
        "throttle-group" => throttle_group(&o, id).map(ObjectOptions::ThrottleGroup),
        "tls-creds-x509" => tls_creds_x509(&o, id).map(ObjectOptions::TlsCredsX509),
        _ => Err(Error::new("internal error: qom-type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_strict() {
        assert_eq!(base64_decode(b"aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode(b"aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode(b"").unwrap(), b"");
        for bad in [&b"aGVsbG8"[..], b"!!!!", b"a===", b"aG=k", b"aGk= "] {
            assert!(base64_decode(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn x_members_mirror_limits() {
        for (x, l) in THROTTLE_GROUP_MEMBERS[1..].iter().zip(&LIMIT_MEMBERS) {
            assert_eq!(&x.name[2..], l.name);
        }
        assert_eq!(THROTTLE_GROUP_MEMBERS[0].name, "limits");
        assert_eq!(THROTTLE_GROUP_MEMBERS[19].name, "x-iops-size");
    }
}
