//! `BlockdevOptions` (QEMU 7.2 `qapi/block-core.json`): the members every
//! node has, the references between nodes, and their conversion into
//! [`crate::block::options::BlockdevOptions`]. The drivers' own members
//! are in [`super::drivers`].

use serde_json::Value;

use blockwire_core::block::zero_policy::{DetectZeroes, Discard};

use super::Error;
use super::convert::Obj;
use super::drivers;
use super::schema::{Alternate, Enum, Member, Struct, Type, Union};
use crate::block::options::{BlockdevOptions, BlockdevRef, CacheOptions};

pub static BLOCKDEV_OPTIONS: Union = Union {
    name: "BlockdevOptions",
    tag: "driver",
    tag_enum: "BlockdevDriver",
    base: &[
        Member::opt("node-name", Type::Str),
        Member::opt("discard", Type::Enum(&DISCARD)),
        Member::opt("cache", Type::Struct(&CACHE)),
        Member::opt("read-only", Type::Bool),
        Member::opt("auto-read-only", Type::Bool),
        Member::opt("force-share", Type::Bool),
        Member::opt("detect-zeroes", Type::Enum(&DETECT_ZEROES)),
    ],
    variants: &drivers::VARIANTS,
};

pub static BLOCKDEV_OPTIONS_TYPE: Type = Type::Union(&BLOCKDEV_OPTIONS);

pub static DISCARD: Enum = Enum {
    name: "BlockdevDiscardOptions",
    values: &["ignore", "unmap"],
};

pub static DETECT_ZEROES: Enum = Enum {
    name: "BlockdevDetectZeroesOptions",
    values: &["off", "on", "unmap"],
};

pub static CACHE: Struct = Struct {
    name: "BlockdevCacheOptions",
    members: &[
        Member::opt("direct", Type::Bool),
        Member::opt("no-flush", Type::Bool),
    ],
    features: &[],
};

/// `BlockdevRef`: a node defined inline, or the name of one.
pub static BLOCKDEV_REF: Alternate = Alternate {
    name: "BlockdevRef",
    members: &[Type::Union(&BLOCKDEV_OPTIONS), Type::Str],
};

/// `BlockdevRefOrNull`: as [`BLOCKDEV_REF`], or `null` for none.
pub static BLOCKDEV_REF_OR_NULL: Alternate = Alternate {
    name: "BlockdevRefOrNull",
    members: &[Type::Union(&BLOCKDEV_OPTIONS), Type::Str, Type::Null],
};

/// What a node defined inline takes from its parent when it does not say
/// otherwise, as QEMU's `bdrv_inherited_options`: `cache.direct`,
/// `cache.no-flush`, and (except for a backing child, which is read-only
/// unless it says otherwise) `read-only` and `auto-read-only`. Its
/// `discard` defaults to `unmap`, since its parent already applied the
/// user's discard policy: a `raw` node with `discard=unmap` over an
/// inline `file` trims the file, while over a `file` node added on its own
/// (default `ignore`) it does not, exactly as qemu-storage-daemon 7.2
/// behaves. Nodes referred to by name inherit nothing.
#[derive(Clone, Copy, Debug)]
pub struct Inherit {
    pub direct: bool,
    pub no_flush: bool,
    pub read_only: bool,
    pub auto_read_only: bool,
    pub force_share: bool,
}

impl Inherit {
    /// What this node passes to a child in a `backing` (copy-on-write)
    /// role, or any other.
    fn for_child(self, cow: bool) -> Self {
        if cow {
            Self {
                read_only: true,
                auto_read_only: false,
                ..self
            }
        } else {
            self
        }
    }
}

/// Converts a checked `BlockdevOptions` value.
pub fn convert(v: &Value, keyval: bool) -> Result<BlockdevOptions, Error> {
    blockdev(&Obj::root(v, keyval)?, None)
}

fn internal(what: &str) -> Error {
    Error::new(format!("internal error: unexpected value for '{what}'"))
}

/// One node; `parent` is what it inherits if it is defined inline.
pub(crate) fn blockdev(o: &Obj, parent: Option<Inherit>) -> Result<BlockdevOptions, Error> {
    let driver = o.req_str("driver")?;
    let read_only = o.bool("read-only")?;
    let effective_ro = read_only.or(parent.map(|p| p.read_only)).unwrap_or(false);
    let auto_read_only = o
        .bool("auto-read-only")?
        .or(parent.map(|p| p.auto_read_only))
        .unwrap_or(false);
    // force-share: the file driver then refuses nothing to other users
    // of the image (no "unshare" lock bytes); inherited by children, as
    // QEMU's BDRV_OPT_FORCE_SHARE is.
    let force_share = o
        .bool("force-share")?
        .or(parent.map(|p| p.force_share))
        .unwrap_or(false);
    if force_share && !effective_ro {
        return Err(Error::new(
            "force-share=on can only be used with read-only images",
        ));
    }
    let discard = match o.str("discard")? {
        Some("ignore") => Discard::Ignore,
        Some("unmap") => Discard::Unmap,
        None if parent.is_some() => Discard::Unmap,
        None => Discard::Ignore,
        Some(_) => return Err(internal(&o.path("discard"))),
    };
    let detect_zeroes = match o.str("detect-zeroes")? {
        None | Some("off") => DetectZeroes::Off,
        Some("on") => DetectZeroes::On,
        Some("unmap") => DetectZeroes::Unmap,
        Some(_) => return Err(internal(&o.path("detect-zeroes"))),
    };
    let cache_path = o.path("cache");
    let cache = match o.value("cache") {
        Some(c) => Some(Obj::object(c, &cache_path, o.keyval())?),
        None => None,
    };
    let cache_bool = |name: &str, inherited: Option<bool>| -> Result<bool, Error> {
        let own = match &cache {
            Some(c) => c.bool(name)?,
            None => None,
        };
        Ok(own.or(inherited).unwrap_or(false))
    };
    let cache = CacheOptions {
        direct: cache_bool("direct", parent.map(|p| p.direct))?,
        no_flush: cache_bool("no-flush", parent.map(|p| p.no_flush))?,
    };
    let here = Inherit {
        direct: cache.direct,
        no_flush: cache.no_flush,
        read_only: effective_ro,
        auto_read_only,
        force_share,
    };
    let convert = drivers::converter(driver).ok_or_else(|| internal(&o.path("driver")))?;
    let driver = convert(o, &Children { here })?;
    Ok(BlockdevOptions {
        node_name: o.str("node-name")?.map(str::to_owned),
        read_only: read_only.unwrap_or(false),
        auto_read_only,
        force_share,
        discard,
        detect_zeroes,
        cache,
        driver,
    })
}

/// How a driver's conversion reads its children (`BlockdevRef` members).
pub struct Children {
    here: Inherit,
}

impl Children {
    /// A `BlockdevRef` member; `cow` for a `backing` role.
    pub fn get(&self, o: &Obj, name: &str, cow: bool) -> Result<Option<BlockdevRef>, Error> {
        match o.value(name) {
            None => Ok(None),
            Some(v) => self.reference(o, name, v, cow).map(Some),
        }
    }

    /// A mandatory `BlockdevRef` member (the visitor saw it).
    pub fn req(&self, o: &Obj, name: &str, cow: bool) -> Result<BlockdevRef, Error> {
        self.get(o, name, cow)?
            .ok_or_else(|| internal(&o.path(name)))
    }

    /// A `BlockdevRefOrNull` member: `Some(None)` for `null`.
    pub fn get_or_null(
        &self,
        o: &Obj,
        name: &str,
        cow: bool,
    ) -> Result<Option<Option<BlockdevRef>>, Error> {
        match o.value(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(v) => self.reference(o, name, v, cow).map(|r| Some(Some(r))),
        }
    }

    fn reference(&self, o: &Obj, name: &str, v: &Value, cow: bool) -> Result<BlockdevRef, Error> {
        match v {
            Value::String(s) => Ok(BlockdevRef::Name(s.clone())),
            Value::Object(_) => {
                let path = o.path(name);
                let child = Obj::object(v, &path, o.keyval())?;
                Ok(BlockdevRef::Inline(Box::new(blockdev(
                    &child,
                    Some(self.here.for_child(cow)),
                )?)))
            }
            _ => Err(internal(&o.path(name))),
        }
    }
}
