//! `BlockdevOptionsRbd` (QEMU 7.2 `qapi/block-core.json`) and its
//! conversion into [`RbdOptions`].

use super::Error;
use super::block_core::Children;
use super::convert::Obj;
use super::schema::{Enum, Member, Struct, Type, Union, Variant};
use crate::block::options::{DriverOptions, RbdOptions};

pub static RBD_AUTH_MODE: Enum = Enum {
    name: "RbdAuthMode",
    values: &["cephx", "none"],
};

static RBD_AUTH_MODE_T: Type = Type::Enum(&RBD_AUTH_MODE);

/// `InetSocketAddressBase`: what a monitor address is in the `server` list.
pub static INET_BASE: Struct = Struct {
    name: "InetSocketAddressBase",
    members: &[
        Member::req("host", Type::Str),
        Member::req("port", Type::Str),
    ],
    features: &[],
};

static INET_BASE_T: Type = Type::Struct(&INET_BASE);

pub static RBD_ENCRYPTION_FORMAT: Enum = Enum {
    name: "RbdImageEncryptionFormat",
    values: &["luks", "luks2"],
};

pub static RBD_ENCRYPTION_LUKS: Struct = Struct {
    name: "RbdEncryptionOptionsLUKS",
    members: &[Member::req("key-secret", Type::Str)],
    features: &[],
};

pub static RBD_ENCRYPTION_LUKS2: Struct = Struct {
    name: "RbdEncryptionOptionsLUKS2",
    members: &[Member::req("key-secret", Type::Str)],
    features: &[],
};

/// `RbdEncryptionOptions`: declared so that `encrypt` is checked as QEMU
/// checks it and then refused by name (librbd's LUKS layer is not used).
pub static RBD_ENCRYPTION_OPTIONS: Union = Union {
    name: "RbdEncryptionOptions",
    tag: "format",
    tag_enum: "RbdImageEncryptionFormat",
    base: &[],
    variants: &[
        Variant {
            case: "luks",
            members: &RBD_ENCRYPTION_LUKS,
        },
        Variant {
            case: "luks2",
            members: &RBD_ENCRYPTION_LUKS2,
        },
    ],
};

pub static RBD: Struct = Struct {
    name: "BlockdevOptionsRbd",
    members: &[
        Member::req("pool", Type::Str),
        Member::opt("namespace", Type::Str),
        Member::req("image", Type::Str),
        Member::opt("conf", Type::Str),
        Member::opt("snapshot", Type::Str),
        Member::unsupported("encrypt", Type::Union(&RBD_ENCRYPTION_OPTIONS), None),
        Member::opt("user", Type::Str),
        Member::opt("auth-client-required", Type::List(&RBD_AUTH_MODE_T)),
        Member::opt("key-secret", Type::Str),
        Member::opt("server", Type::List(&INET_BASE_T)),
    ],
    features: &[],
};

pub fn rbd(o: &Obj, _: &Children) -> Result<DriverOptions, Error> {
    let s = |name| o.str(name).map(|v| v.map(str::to_owned));
    let mut auth = Vec::new();
    for v in o.list("auth-client-required")? {
        match v.as_str() {
            Some(m) => auth.push(m.to_owned()),
            None => return Err(internal(&o.path("auth-client-required"))),
        }
    }
    let mut server = Vec::new();
    for (i, v) in o.list("server")?.iter().enumerate() {
        let path = o.elem_path("server", i);
        let a = Obj::object(v, &path, o.keyval())?;
        server.push((a.req_str("host")?.to_owned(), a.req_str("port")?.to_owned()));
    }
    Ok(DriverOptions::Rbd(RbdOptions {
        pool: o.req_str("pool")?.to_owned(),
        // QEMU: an empty namespace is the default one.
        namespace: s("namespace")?.filter(|n| !n.is_empty()),
        image: o.req_str("image")?.to_owned(),
        conf: s("conf")?.map(Into::into),
        snapshot: s("snapshot")?,
        user: s("user")?,
        auth_client_required: auth,
        key_secret: s("key-secret")?,
        server,
        config: Vec::new(),
    }))
}

fn internal(path: &str) -> Error {
    Error::new(format!("internal error: unexpected value for '{path}'"))
}
