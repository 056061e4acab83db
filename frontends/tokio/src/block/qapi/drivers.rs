//! Each driver's own members of `BlockdevOptions` (QEMU 7.2 names, types
//! and order) and their conversion into [`DriverOptions`].
//!
//! Adding a driver is one schema entry (its `Struct`, listed in
//! [`VARIANTS`]) plus one conversion (listed in [`converter`]); a test
//! checks that the two lists agree.
//!
//! Members QEMU has that blockwire does not implement are declared with
//! [`Member::unsupported`], so that using them is refused by name.

use std::path::PathBuf;

use blockwire_core::block::blkdebug::BlkdebugEvent;

use super::Error;
use super::block_core::{BLOCKDEV_REF, BLOCKDEV_REF_OR_NULL, Children};
use super::convert::{Obj, non_negative};
use super::schema::{Alternate, Enum, Int, Literal, Member, Struct, Type, Union, Variant};
use crate::block::options::{Aio, DriverOptions, InjectError, OnOffAuto, SetState, SocketAddress};

/// The drivers, by their `driver` name: the cases of `BlockdevOptions`.
pub static VARIANTS: [Variant; 11] = [
    Variant {
        case: "blkdebug",
        members: &BLKDEBUG,
    },
    Variant {
        case: "blockwire-cow",
        members: &COW,
    },
    Variant {
        case: "blockwire-ram",
        members: &RAM,
    },
    Variant {
        case: "file",
        members: &FILE,
    },
    Variant {
        case: "host_device",
        members: &FILE,
    },
    Variant {
        case: "nbd",
        members: &NBD,
    },
    Variant {
        case: "null-co",
        members: &NULL,
    },
    Variant {
        case: "qcow2",
        members: &QCOW2,
    },
    Variant {
        case: "raw",
        members: &RAW,
    },
    Variant {
        case: "rbd",
        members: &super::rbd::RBD,
    },
    Variant {
        case: "throttle",
        members: &THROTTLE,
    },
];

/// Converts the checked members of one driver.
pub type Convert = fn(&Obj, &Children) -> Result<DriverOptions, Error>;

/// The conversion of each case of [`VARIANTS`].
pub fn converter(driver: &str) -> Option<Convert> {
    Some(match driver {
        "blkdebug" => blkdebug,
        "blockwire-cow" => cow,
        "blockwire-ram" => ram,
        "file" => file,
        "host_device" => host_device,
        "nbd" => nbd,
        "null-co" => null_co,
        "qcow2" => qcow2,
        "raw" => raw,
        "rbd" => super::rbd::rbd,
        "throttle" => throttle,
        _ => return None,
    })
}

const NO: Option<Literal> = None;

fn internal(path: &str) -> Error {
    Error::new(format!("internal error: unexpected value for '{path}'"))
}

// ---- file, host_device ----

pub static ON_OFF_AUTO: Enum = Enum {
    name: "OnOffAuto",
    values: &["auto", "on", "off"],
};

pub static AIO: Enum = Enum {
    name: "BlockdevAioOptions",
    values: &["threads", "native", "io_uring"],
};

pub static FILE: Struct = Struct {
    name: "BlockdevOptionsFile",
    members: &[
        Member::req("filename", Type::Str),
        Member::unsupported("pr-manager", Type::Str, NO),
        Member::opt("locking", Type::Enum(&ON_OFF_AUTO)),
        Member::opt("aio", Type::Enum(&AIO)),
        // Batches for native / io_uring AIO; 0 is QEMU's default.
        Member::unsupported("aio-max-batch", Type::Int(Int::I64), Some(Literal::Int(0))),
        // Page-cache dropping on incoming migration: blockwire never
        // migrates, which is QEMU's default behaviour (`on`) for a node
        // that is never inactivated.
        Member::unsupported("drop-cache", Type::Bool, Some(Literal::Bool(true))),
        Member::unsupported(
            "x-check-cache-dropped",
            Type::Bool,
            Some(Literal::Bool(false)),
        )
        .features(&["unstable"]),
    ],
    features: &[],
};

fn file(o: &Obj, _: &Children) -> Result<DriverOptions, Error> {
    file_like(o, false)
}

fn host_device(o: &Obj, _: &Children) -> Result<DriverOptions, Error> {
    file_like(o, true)
}

fn file_like(o: &Obj, host_device: bool) -> Result<DriverOptions, Error> {
    let filename = o.req_str("filename")?;
    if filename.is_empty() {
        let name = if host_device { "host_device" } else { "file" };
        return Err(Error::new(format!(
            "The '{name}' block driver requires a file name"
        )));
    }
    let aio = match o.str("aio")? {
        None | Some("threads") => Aio::Threads,
        Some("native") => Aio::Native,
        Some("io_uring") => Aio::IoUring,
        Some(_) => return Err(internal(&o.path("aio"))),
    };
    let locking = match o.str("locking")? {
        None | Some("auto") => OnOffAuto::Auto,
        Some("on") => OnOffAuto::On,
        Some("off") => OnOffAuto::Off,
        Some(_) => return Err(internal(&o.path("locking"))),
    };
    Ok(DriverOptions::File {
        host_device,
        filename: PathBuf::from(filename),
        aio,
        locking,
    })
}

// ---- null-co ----

pub static NULL: Struct = Struct {
    name: "BlockdevOptionsNull",
    members: &[
        Member::opt("size", Type::Int(Int::I64)),
        Member::opt("latency-ns", Type::Int(Int::U64)),
        Member::opt("read-zeroes", Type::Bool),
    ],
    features: &[],
};

/// QEMU's null-co default size: 1 GiB.
pub const NULL_DEFAULT_SIZE: u64 = 1 << 30;

fn null_co(o: &Obj, _: &Children) -> Result<DriverOptions, Error> {
    Ok(DriverOptions::NullCo {
        size: o.non_negative("size")?.unwrap_or(NULL_DEFAULT_SIZE),
        latency_ns: o.u64("latency-ns")?.unwrap_or(0),
        read_zeroes: o.bool("read-zeroes")?.unwrap_or(false),
    })
}

// ---- blockwire-ram ----

pub static RAM: Struct = Struct {
    name: "BlockdevOptionsBlockwireRam",
    members: &[Member::req("size", Type::Int(Int::Size))],
    features: &[],
};

fn ram(o: &Obj, _: &Children) -> Result<DriverOptions, Error> {
    Ok(DriverOptions::Ram {
        size: o.u64("size")?.ok_or_else(|| internal(&o.path("size")))?,
    })
}

// ---- nbd ----

pub static SOCKET_ADDRESS: Union = Union {
    name: "SocketAddress",
    tag: "type",
    tag_enum: "SocketAddressType",
    base: &[],
    variants: &[
        Variant {
            case: "inet",
            members: &INET,
        },
        Variant {
            case: "unix",
            members: &UNIX,
        },
    ],
};

pub static INET: Struct = Struct {
    name: "InetSocketAddress",
    members: &[
        Member::req("host", Type::Str),
        Member::req("port", Type::Str),
        Member::unsupported("numeric", Type::Bool, Some(Literal::Bool(false))),
        Member::unsupported("to", Type::Int(Int::U16), NO),
        Member::unsupported("ipv4", Type::Bool, NO),
        Member::unsupported("ipv6", Type::Bool, NO),
        Member::unsupported("keep-alive", Type::Bool, Some(Literal::Bool(false))),
        Member::unsupported("mptcp", Type::Bool, Some(Literal::Bool(false))),
    ],
    features: &[],
};

pub static UNIX: Struct = Struct {
    name: "UnixSocketAddress",
    members: &[
        Member::req("path", Type::Str),
        Member::unsupported("abstract", Type::Bool, Some(Literal::Bool(false))),
        // Only means something for abstract sockets.
        Member::unsupported("tight", Type::Bool, Some(Literal::Bool(true))),
    ],
    features: &[],
};

pub static NBD: Struct = Struct {
    name: "BlockdevOptionsNbd",
    members: &[
        Member::req("server", Type::Union(&SOCKET_ADDRESS)),
        Member::opt("export", Type::Str),
        Member::opt("tls-creds", Type::Str),
        Member::opt("tls-hostname", Type::Str),
        Member::unsupported("x-dirty-bitmap", Type::Str, NO).features(&["unstable"]),
        Member::opt("reconnect-delay", Type::Int(Int::U32)),
        Member::opt("open-timeout", Type::Int(Int::U32)),
    ],
    features: &[],
};

/// A checked `SocketAddress`.
pub(crate) fn socket_address(s: &Obj) -> Result<SocketAddress, Error> {
    match s.req_str("type")? {
        "inet" => Ok(SocketAddress::Inet {
            host: s.req_str("host")?.to_owned(),
            port: s.req_str("port")?.to_owned(),
        }),
        "unix" => Ok(SocketAddress::Unix {
            path: PathBuf::from(s.req_str("path")?),
        }),
        _ => Err(internal(&s.path("type"))),
    }
}

fn nbd(o: &Obj, _: &Children) -> Result<DriverOptions, Error> {
    let path = o.path("server");
    let server = o.value("server").ok_or_else(|| internal(&path))?;
    let server = socket_address(&Obj::object(server, &path, o.keyval())?)?;
    let seconds = |name| -> Result<u32, Error> {
        match o.u64(name)? {
            None => Ok(0),
            Some(d) => u32::try_from(d).map_err(|_| internal(&o.path(name))),
        }
    };
    let reconnect_delay = seconds("reconnect-delay")?;
    let open_timeout = seconds("open-timeout")?;
    let s = |name| o.str(name).map(|v| v.map(str::to_owned));
    Ok(DriverOptions::Nbd {
        server,
        export: s("export")?,
        tls_creds: s("tls-creds")?,
        tls_hostname: s("tls-hostname")?,
        reconnect_delay,
        open_timeout,
    })
}

// ---- raw ----

pub static RAW: Struct = Struct {
    name: "BlockdevOptionsRaw",
    members: &[
        Member::req("file", Type::Alternate(&BLOCKDEV_REF)),
        Member::opt("offset", Type::Int(Int::I64)),
        Member::opt("size", Type::Int(Int::I64)),
    ],
    features: &[],
};

fn raw(o: &Obj, c: &Children) -> Result<DriverOptions, Error> {
    Ok(DriverOptions::Raw {
        file: c.req(o, "file", false)?,
        offset: o.non_negative("offset")?.unwrap_or(0),
        size: o.non_negative("size")?,
        probed: false,
    })
}

// ---- throttle ----

pub static THROTTLE: Struct = Struct {
    name: "BlockdevOptionsThrottle",
    members: &[
        Member::req("throttle-group", Type::Str),
        Member::req("file", Type::Alternate(&BLOCKDEV_REF)),
    ],
    features: &[],
};

fn throttle(o: &Obj, c: &Children) -> Result<DriverOptions, Error> {
    Ok(DriverOptions::Throttle {
        throttle_group: o.req_str("throttle-group")?.to_owned(),
        file: c.req(o, "file", false)?,
    })
}

// ---- blkdebug ----

const EVENT_COUNT: usize = BlkdebugEvent::ALL.len();

/// The names of the core's blkdebug events: QEMU's `BlkdebugEvent`, plus
/// the operation events an NBD server fires (`read`, `write`, ...).
/// QEMU 7.2's `cluster_alloc_space` and `none` are not among them.
static EVENT_NAMES: [&str; EVENT_COUNT] = {
    let mut names = [""; EVENT_COUNT];
    let mut i = 0;
    while i < EVENT_COUNT {
        names[i] = BlkdebugEvent::ALL[i].name();
        i += 1;
    }
    names
};

pub static BLKDEBUG_EVENT: Enum = Enum {
    name: "BlkdebugEvent",
    values: &EVENT_NAMES,
};

pub static BLKDEBUG_IO_TYPE: Enum = Enum {
    name: "BlkdebugIOType",
    values: &[
        "read",
        "write",
        "write-zeroes",
        "discard",
        "flush",
        "block-status",
    ],
};

pub static BLOCK_PERMISSION: Enum = Enum {
    name: "BlockPermission",
    values: &["consistent-read", "write", "write-unchanged", "resize"],
};

pub static INJECT_ERROR: Struct = Struct {
    name: "BlkdebugInjectErrorOptions",
    members: &[
        Member::req("event", Type::Enum(&BLKDEBUG_EVENT)),
        Member::opt("state", Type::Int(Int::I64)),
        // Rules here apply to every request type (QEMU's default is every
        // type but block-status).
        Member::unsupported("iotype", Type::Enum(&BLKDEBUG_IO_TYPE), NO),
        Member::opt("errno", Type::Int(Int::I64)),
        Member::opt("sector", Type::Int(Int::I64)),
        Member::opt("once", Type::Bool),
        Member::opt("immediately", Type::Bool),
    ],
    features: &[],
};

pub static SET_STATE: Struct = Struct {
    name: "BlkdebugSetStateOptions",
    members: &[
        Member::req("event", Type::Enum(&BLKDEBUG_EVENT)),
        Member::opt("state", Type::Int(Int::I64)),
        Member::req("new_state", Type::Int(Int::I64)),
    ],
    features: &[],
};

static INJECT_ERROR_T: Type = Type::Struct(&INJECT_ERROR);
static SET_STATE_T: Type = Type::Struct(&SET_STATE);
static BLOCK_PERMISSION_T: Type = Type::Enum(&BLOCK_PERMISSION);

pub static BLKDEBUG: Struct = Struct {
    name: "BlockdevOptionsBlkdebug",
    members: &[
        Member::req("image", Type::Alternate(&BLOCKDEV_REF)),
        Member::unsupported("config", Type::Str, NO),
        Member::opt("align", Type::Int(Int::I64)),
        Member::opt("max-transfer", Type::Int(Int::I32)),
        // The other limits, 0 meaning "none", QEMU's default.
        Member::unsupported("opt-write-zero", Type::Int(Int::I32), Some(Literal::Int(0))),
        Member::unsupported("max-write-zero", Type::Int(Int::I32), Some(Literal::Int(0))),
        Member::unsupported("opt-discard", Type::Int(Int::I32), Some(Literal::Int(0))),
        Member::unsupported("max-discard", Type::Int(Int::I32), Some(Literal::Int(0))),
        Member::opt("inject-error", Type::List(&INJECT_ERROR_T)),
        Member::opt("set-state", Type::List(&SET_STATE_T)),
        Member::unsupported("take-child-perms", Type::List(&BLOCK_PERMISSION_T), NO),
        Member::unsupported("unshare-child-perms", Type::List(&BLOCK_PERMISSION_T), NO),
    ],
    features: &[],
};

fn event(r: &Obj) -> Result<BlkdebugEvent, Error> {
    BlkdebugEvent::from_name(r.req_str("event")?).ok_or_else(|| internal(&r.path("event")))
}

fn blkdebug(o: &Obj, c: &Children) -> Result<DriverOptions, Error> {
    let image = c.req(o, "image", false)?;
    let align = o.non_negative("align")?.unwrap_or(0);
    let max_transfer = o.non_negative("max-transfer")?.unwrap_or(0);
    let mut inject_error = Vec::new();
    for (i, v) in o.list("inject-error")?.iter().enumerate() {
        let path = o.elem_path("inject-error", i);
        let r = Obj::object(v, &path, o.keyval())?;
        let mut rule = InjectError::new(event(&r)?);
        rule.state = r.u32_of_int("state")?.unwrap_or(0);
        // EIO unless told otherwise.
        rule.errno = r.u32_of_int("errno")?.unwrap_or(libc::EIO as u32);
        // -1 (QEMU's default) is "any request".
        rule.sector = match r.i64("sector")? {
            None | Some(-1) => None,
            Some(s) => Some(u64::try_from(s).map_err(|_| non_negative(&r.path("sector")))?),
        };
        rule.once = r.bool("once")?.unwrap_or(false);
        rule.immediately = r.bool("immediately")?.unwrap_or(false);
        inject_error.push(rule);
    }
    let mut set_state = Vec::new();
    for (i, v) in o.list("set-state")?.iter().enumerate() {
        let path = o.elem_path("set-state", i);
        let r = Obj::object(v, &path, o.keyval())?;
        set_state.push(SetState {
            event: event(&r)?,
            state: r.u32_of_int("state")?.unwrap_or(0),
            new_state: r
                .u32_of_int("new_state")?
                .ok_or_else(|| internal(&r.path("new_state")))?,
        });
    }
    Ok(DriverOptions::Blkdebug {
        image,
        align,
        max_transfer,
        inject_error,
        set_state,
    })
}

// ---- blockwire-cow ----

pub static COW: Struct = Struct {
    name: "BlockdevOptionsBlockwireCow",
    members: &[
        Member::req("backing", Type::Alternate(&BLOCKDEV_REF_OR_NULL)),
        Member::opt("file", Type::Alternate(&BLOCKDEV_REF)),
        Member::opt("cluster-size", Type::Int(Int::Size)),
    ],
    features: &[],
};

/// The overlay's default cluster: qcow2's.
pub const COW_DEFAULT_CLUSTER: u64 = 64 << 10;

fn cow(o: &Obj, c: &Children) -> Result<DriverOptions, Error> {
    let backing = match c.get_or_null(o, "backing", true)? {
        Some(Some(b)) => b,
        Some(None) => {
            return Err(Error::new(format!(
                "Parameter '{}' must name a node: a blockwire-cow overlay needs a backing node",
                o.path("backing")
            )));
        }
        None => return Err(internal(&o.path("backing"))),
    };
    let cluster_size = o.u64("cluster-size")?.unwrap_or(COW_DEFAULT_CLUSTER);
    // qcow2's limits and words, since the qcow2 driver will replace this.
    if !cluster_size.is_power_of_two() || !(512..=2 << 20).contains(&cluster_size) {
        return Err(Error::new(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    Ok(DriverOptions::Cow {
        backing,
        file: c.get(o, "file", false)?,
        cluster_size,
    })
}

// ---- qcow2 ----

pub static QCOW2_OVERLAP_CHECK_MODE: Enum = Enum {
    name: "Qcow2OverlapCheckMode",
    values: &["none", "constant", "cached", "all"],
};

pub static QCOW2_OVERLAP_CHECK_FLAGS: Struct = Struct {
    name: "Qcow2OverlapCheckFlags",
    members: &[
        Member::opt("template", Type::Enum(&QCOW2_OVERLAP_CHECK_MODE)),
        Member::opt("main-header", Type::Bool),
        Member::opt("active-l1", Type::Bool),
        Member::opt("active-l2", Type::Bool),
        Member::opt("refcount-table", Type::Bool),
        Member::opt("refcount-block", Type::Bool),
        Member::opt("snapshot-table", Type::Bool),
        Member::opt("inactive-l1", Type::Bool),
        Member::opt("inactive-l2", Type::Bool),
        Member::opt("bitmap-directory", Type::Bool),
    ],
    features: &[],
};

pub static QCOW2_OVERLAP_CHECKS: Alternate = Alternate {
    name: "Qcow2OverlapChecks",
    members: &[
        Type::Struct(&QCOW2_OVERLAP_CHECK_FLAGS),
        Type::Enum(&QCOW2_OVERLAP_CHECK_MODE),
    ],
};

pub static QCOW2_ENCRYPTION_FORMAT: Enum = Enum {
    name: "BlockdevQcow2EncryptionFormat",
    values: &["aes", "luks"],
};

pub static QCOW2_ENCRYPTION: Struct = Struct {
    name: "BlockdevQcow2Encryption",
    members: &[
        Member::req("format", Type::Enum(&QCOW2_ENCRYPTION_FORMAT)),
        Member::opt("key-secret", Type::Str),
    ],
    features: &[],
};

/// `BlockdevOptionsQcow2` with its bases `BlockdevOptionsGenericCOWFormat`
/// (`backing`) and `BlockdevOptionsGenericFormat` (`file`).
pub static QCOW2: Struct = Struct {
    name: "BlockdevOptionsQcow2",
    members: &[
        Member::req("file", Type::Alternate(&BLOCKDEV_REF)),
        Member::opt("backing", Type::Alternate(&BLOCKDEV_REF_OR_NULL)),
        // Refcounts are always kept exact (QEMU's default).
        Member::unsupported("lazy-refcounts", Type::Bool, Some(Literal::Bool(false))),
        Member::opt("pass-discard-request", Type::Bool),
        // No snapshot operation exists to discard for; nor does anything
        // else free clusters than requests.
        Member::unsupported(
            "pass-discard-snapshot",
            Type::Bool,
            Some(Literal::Bool(true)),
        ),
        Member::unsupported("pass-discard-other", Type::Bool, Some(Literal::Bool(false))),
        // The core always checks every new metadata location against the
        // fixed metadata; the choice of checks is not configurable.
        Member::unsupported("overlap-check", Type::Alternate(&QCOW2_OVERLAP_CHECKS), NO),
        Member::opt("cache-size", Type::Int(Int::I64)),
        Member::opt("l2-cache-size", Type::Int(Int::I64)),
        Member::opt("refcount-cache-size", Type::Int(Int::I64)),
        // Cache entries are never dropped on a timer: QEMU's 0.
        Member::unsupported(
            "cache-clean-interval",
            Type::Int(Int::I64),
            Some(Literal::Int(0)),
        ),
        Member::unsupported("encrypt", Type::Struct(&QCOW2_ENCRYPTION), NO),
    ],
    features: &[],
};

fn qcow2(o: &Obj, c: &Children) -> Result<DriverOptions, Error> {
    Ok(DriverOptions::Qcow2 {
        file: c.req(o, "file", false)?,
        backing: c.get_or_null(o, "backing", true)?,
        cache_size: o.non_negative("cache-size")?,
        l2_cache_size: o.non_negative("l2-cache-size")?,
        refcount_cache_size: o.non_negative("refcount-cache-size")?,
        pass_discard_request: o.bool("pass-discard-request")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_driver_has_a_conversion_and_a_name() {
        for v in &VARIANTS {
            assert!(converter(v.case).is_some(), "{} has no conversion", v.case);
        }
        assert!(converter("qcow").is_none());
    }
}
