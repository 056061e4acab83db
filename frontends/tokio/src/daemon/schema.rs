//! The arguments of the daemon's QMP commands as QAPI types (QEMU 7.2
//! `qapi/block-core.json`, `block-export.json`, `block.json`,
//! `control.json`), checked by the same strict visitor as `--blockdev`,
//! so a missing, unknown or ill-typed argument is refused with QEMU's
//! message naming the member.

use crate::block::qapi::block_export::BLOCK_DIRTY_BITMAP_OR_STR;
use crate::block::qapi::drivers::{INET, UNIX};
use crate::block::qapi::schema::{Enum, Int, Literal, Member, Struct, Type, Union, Variant};

const fn args(name: &'static str, members: &'static [Member]) -> Struct {
    Struct {
        name,
        members,
        features: &[],
    }
}

pub static EMPTY: Struct = args("q_empty", &[]);

pub static QMP_CAPABILITY: Enum = Enum {
    name: "QMPCapability",
    values: &["oob"],
};
static QMP_CAPABILITY_T: Type = Type::Enum(&QMP_CAPABILITY);
pub static QMP_CAPABILITIES: Struct = args(
    "q_obj_qmp_capabilities-arg",
    &[Member::opt("enable", Type::List(&QMP_CAPABILITY_T))],
);

pub static BLOCKDEV_DEL: Struct = args(
    "q_obj_blockdev-del-arg",
    &[Member::req("node-name", Type::Str)],
);

pub static QUERY_NAMED_BLOCK_NODES: Struct = args(
    "q_obj_query-named-block-nodes-arg",
    &[Member::opt("flat", Type::Bool)],
);

pub static QUERY_BLOCKSTATS: Struct = args(
    "q_obj_query-blockstats-arg",
    &[Member::opt("query-nodes", Type::Bool)],
);

pub static BLOCK_RESIZE: Struct = args(
    "q_obj_block_resize-arg",
    &[
        Member::opt("device", Type::Str),
        Member::opt("node-name", Type::Str),
        Member::req("size", Type::Int(Int::I64)),
    ],
);

pub static BLOCK_SET_WRITE_THRESHOLD: Struct = args(
    "q_obj_block-set-write-threshold-arg",
    &[
        Member::req("node-name", Type::Str),
        Member::req("write-threshold", Type::Int(Int::U64)),
    ],
);

static INET_WRAPPER: Struct = args(
    "q_obj_InetSocketAddressWrapper-base",
    &[Member::req("data", Type::Struct(&INET))],
);
static UNIX_WRAPPER: Struct = args(
    "q_obj_UnixSocketAddressWrapper-base",
    &[Member::req("data", Type::Struct(&UNIX))],
);

/// `SocketAddressLegacy` (`{"type": "inet", "data": {...}}`), inet and
/// unix; `vsock` and `fd` are not offered.
pub static SOCKET_ADDRESS_LEGACY: Union = Union {
    name: "SocketAddressLegacy",
    tag: "type",
    tag_enum: "SocketAddressType",
    base: &[],
    variants: &[
        Variant {
            case: "inet",
            members: &INET_WRAPPER,
        },
        Variant {
            case: "unix",
            members: &UNIX_WRAPPER,
        },
    ],
};

pub static NBD_SERVER_START: Struct = args(
    "q_obj_nbd-server-start-arg",
    &[
        Member::req("addr", Type::Union(&SOCKET_ADDRESS_LEGACY)),
        Member::opt("tls-creds", Type::Str),
        // Authorization objects (QAuthZ) are not in the graph.
        Member::unsupported("tls-authz", Type::Str, None),
        Member::opt("max-connections", Type::Int(Int::U32)),
    ],
);

/// `NbdServerOptions`: what `--nbd-server` takes (a flat `SocketAddress`).
pub static NBD_SERVER_OPTIONS: Struct = args(
    "NbdServerOptions",
    &[
        Member::req(
            "addr",
            Type::Union(&crate::block::qapi::drivers::SOCKET_ADDRESS),
        ),
        Member::opt("tls-creds", Type::Str),
        Member::unsupported("tls-authz", Type::Str, None),
        Member::opt("max-connections", Type::Int(Int::U32)),
    ],
);

pub static BLOCK_EXPORT_REMOVE_MODE: Enum = Enum {
    name: "BlockExportRemoveMode",
    values: &["safe", "hard"],
};

pub static BLOCK_EXPORT_DEL: Struct = args(
    "q_obj_block-export-del-arg",
    &[
        Member::req("id", Type::Str),
        Member::opt("mode", Type::Enum(&BLOCK_EXPORT_REMOVE_MODE)),
    ],
);

pub static BLOCK_DIRTY_BITMAP_ADD: Struct = args(
    "BlockDirtyBitmapAdd",
    &[
        Member::req("node", Type::Str),
        Member::req("name", Type::Str),
        Member::opt("granularity", Type::Int(Int::U32)),
        // Bitmaps live in memory: no format here stores them.
        Member::unsupported("persistent", Type::Bool, Some(Literal::Bool(false))),
        Member::opt("disabled", Type::Bool),
    ],
);

/// `BlockDirtyBitmap`: remove, clear, enable, disable.
pub static BLOCK_DIRTY_BITMAP: Struct = args(
    "BlockDirtyBitmap",
    &[
        Member::req("node", Type::Str),
        Member::req("name", Type::Str),
    ],
);

static BITMAP_OR_STR_T: Type = Type::Alternate(&BLOCK_DIRTY_BITMAP_OR_STR);
pub static BLOCK_DIRTY_BITMAP_MERGE: Struct = args(
    "BlockDirtyBitmapMerge",
    &[
        Member::req("node", Type::Str),
        Member::req("target", Type::Str),
        Member::req("bitmaps", Type::List(&BITMAP_OR_STR_T)),
    ],
);

pub static OBJECT_DEL: Struct = args("q_obj_object-del-arg", &[Member::req("id", Type::Str)]);

static BLOCKDEV_OPTIONS_T: Type = Type::Union(&crate::block::qapi::block_core::BLOCKDEV_OPTIONS);
pub static BLOCKDEV_REOPEN: Struct = args(
    "q_obj_blockdev-reopen-arg",
    &[Member::req("options", Type::List(&BLOCKDEV_OPTIONS_T))],
);
