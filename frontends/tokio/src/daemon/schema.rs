//! The arguments of the daemon's QMP commands as QAPI types (QEMU 7.2
//! `qapi/block-core.json`, `block-export.json`, `block.json`,
//! `control.json`), checked by the same strict visitor as `--blockdev`,
//! so a missing, unknown or ill-typed argument is refused with QEMU's
//! message naming the member.

use crate::block::qapi::block_export::BLOCK_DIRTY_BITMAP_OR_STR;
use crate::block::qapi::drivers::{INET, UNIX};
use crate::block::qapi::schema::{Enum, Int, Member, Struct, Type, Union, Variant};

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

pub static QOM_SET: Struct = args(
    "q_obj_qom-set-arg",
    &[
        Member::req("path", Type::Str),
        Member::req("property", Type::Str),
        Member::req("value", Type::Any),
    ],
);

pub static QOM_GET: Struct = args(
    "q_obj_qom-get-arg",
    &[
        Member::req("path", Type::Str),
        Member::req("property", Type::Str),
    ],
);
static ANY: Type = Type::Any;

const I64: Type = Type::Int(Int::I64);
/// `BlockIOThrottle`, in QEMU's member order.
static IO_THROTTLE_MEMBERS: [Member; 22] = [
    Member::opt("device", Type::Str).features(&["deprecated"]),
    Member::opt("id", Type::Str),
    Member::req("bps", I64),
    Member::req("bps_rd", I64),
    Member::req("bps_wr", I64),
    Member::req("iops", I64),
    Member::req("iops_rd", I64),
    Member::req("iops_wr", I64),
    Member::opt("bps_max", I64),
    Member::opt("bps_rd_max", I64),
    Member::opt("bps_wr_max", I64),
    Member::opt("iops_max", I64),
    Member::opt("iops_rd_max", I64),
    Member::opt("iops_wr_max", I64),
    Member::opt("bps_max_length", I64),
    Member::opt("bps_rd_max_length", I64),
    Member::opt("bps_wr_max_length", I64),
    Member::opt("iops_max_length", I64),
    Member::opt("iops_rd_max_length", I64),
    Member::opt("iops_wr_max_length", I64),
    Member::opt("iops_size", I64),
    Member::opt("group", Type::Str),
];

pub static BLOCK_IO_THROTTLE: Struct = args("BlockIOThrottle", &IO_THROTTLE_MEMBERS);

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
        Member::opt("persistent", Type::Bool),
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

static ABORT: Struct = args("Abort", &[]);
macro_rules! wrapper {
    ($name:literal, $inner:ident) => {{
        static W: Struct = args($name, &[Member::req("data", Type::Struct(&$inner))]);
        &W
    }};
}
/// `TransactionAction` for the actions there are: `abort` and the dirty
/// bitmap commands (no block jobs, no snapshots).
pub static TRANSACTION_ACTION: Union = Union {
    name: "TransactionAction",
    tag: "type",
    tag_enum: "TransactionActionKind",
    base: &[],
    variants: &[
        Variant {
            case: "abort",
            members: wrapper!("q_obj_AbortWrapper-base", ABORT),
        },
        Variant {
            case: "block-dirty-bitmap-add",
            members: wrapper!(
                "q_obj_BlockDirtyBitmapAddWrapper-base",
                BLOCK_DIRTY_BITMAP_ADD
            ),
        },
        Variant {
            case: "block-dirty-bitmap-remove",
            members: wrapper!("q_obj_BlockDirtyBitmapWrapper-base", BLOCK_DIRTY_BITMAP),
        },
        Variant {
            case: "block-dirty-bitmap-clear",
            members: wrapper!("q_obj_BlockDirtyBitmapWrapper-base", BLOCK_DIRTY_BITMAP),
        },
        Variant {
            case: "block-dirty-bitmap-enable",
            members: wrapper!("q_obj_BlockDirtyBitmapWrapper-base", BLOCK_DIRTY_BITMAP),
        },
        Variant {
            case: "block-dirty-bitmap-disable",
            members: wrapper!("q_obj_BlockDirtyBitmapWrapper-base", BLOCK_DIRTY_BITMAP),
        },
        Variant {
            case: "block-dirty-bitmap-merge",
            members: wrapper!(
                "q_obj_BlockDirtyBitmapMergeWrapper-base",
                BLOCK_DIRTY_BITMAP_MERGE
            ),
        },
    ],
};
static TRANSACTION_ACTION_T: Type = Type::Union(&TRANSACTION_ACTION);
static COMPLETION_MODE: Enum = Enum {
    name: "ActionCompletionMode",
    values: &["individual", "grouped"],
};
static TRANSACTION_PROPERTIES: Struct = args(
    "TransactionProperties",
    &[Member::opt("completion-mode", Type::Enum(&COMPLETION_MODE))],
);
pub static TRANSACTION: Struct = args(
    "q_obj_transaction-arg",
    &[
        Member::req("actions", Type::List(&TRANSACTION_ACTION_T)),
        Member::opt("properties", Type::Struct(&TRANSACTION_PROPERTIES)),
    ],
);

pub static OBJECT_DEL: Struct = args("q_obj_object-del-arg", &[Member::req("id", Type::Str)]);

static BLOCKDEV_OPTIONS_T: Type = Type::Union(&crate::block::qapi::block_core::BLOCKDEV_OPTIONS);
pub static BLOCKDEV_REOPEN: Struct = args(
    "q_obj_blockdev-reopen-arg",
    &[Member::req("options", Type::List(&BLOCKDEV_OPTIONS_T))],
);

// ---- what commands return and events carry, for query-qmp-schema ----
//
// Only the members the daemon sends are declared (QEMU's optional
// members it never sends are left out), so the schema says what a
// client will get.

use crate::block::qapi::block_core::{BLOCKDEV_OPTIONS_TYPE, DETECT_ZEROES};
use crate::block::qapi::block_export::BLOCK_EXPORT_OPTIONS_TYPE;
use crate::block::qapi::introspect::{Command, EventInfo};
use crate::block::qapi::qom::OBJECT_OPTIONS_TYPE;

const INT: Type = Type::Int(Int::I64);
const fn list(t: &'static Type) -> Type {
    Type::List(t)
}

static VERSION_TRIPLE: Struct = args(
    "VersionTriple",
    &[
        Member::req("major", INT),
        Member::req("minor", INT),
        Member::req("micro", INT),
    ],
);
static VERSION_INFO: Struct = args(
    "VersionInfo",
    &[
        Member::req("qemu", Type::Struct(&VERSION_TRIPLE)),
        Member::req("package", Type::Str),
    ],
);
static VERSION_INFO_T: Type = Type::Struct(&VERSION_INFO);

static COMMAND_INFO: Struct = args("CommandInfo", &[Member::req("name", Type::Str)]);
static COMMAND_INFO_T: Type = Type::Struct(&COMMAND_INFO);
static COMMAND_INFO_LIST: Type = list(&COMMAND_INFO_T);

static IMAGE_INFO: Struct = args(
    "ImageInfo",
    &[
        Member::req("filename", Type::Str),
        Member::req("format", Type::Str),
        Member::opt("dirty-flag", Type::Bool),
        Member::req("virtual-size", INT),
        Member::opt("backing-filename", Type::Str),
        Member::opt("full-backing-filename", Type::Str),
        Member::opt("backing-image", Type::Struct(&IMAGE_INFO)),
    ],
);
static CACHE_INFO: Struct = args(
    "BlockdevCacheInfo",
    &[
        Member::req("writeback", Type::Bool),
        Member::req("direct", Type::Bool),
        Member::req("no-flush", Type::Bool),
    ],
);
static DIRTY_INFO: Struct = args(
    "BlockDirtyInfo",
    &[
        Member::opt("name", Type::Str),
        Member::req("count", INT),
        Member::req("granularity", Type::Int(Int::U32)),
        Member::req("recording", Type::Bool),
        Member::req("busy", Type::Bool),
        Member::req("persistent", Type::Bool),
    ],
);
static DIRTY_INFO_T: Type = Type::Struct(&DIRTY_INFO);
static BLOCK_DEVICE_INFO: Struct = args(
    "BlockDeviceInfo",
    &[
        Member::req("file", Type::Str),
        Member::opt("node-name", Type::Str),
        Member::req("ro", Type::Bool),
        Member::req("drv", Type::Str),
        Member::opt("backing_file", Type::Str),
        Member::req("backing_file_depth", INT),
        Member::req("encrypted", Type::Bool),
        Member::req("detect_zeroes", Type::Enum(&DETECT_ZEROES)),
        Member::req("bps", INT),
        Member::req("bps_rd", INT),
        Member::req("bps_wr", INT),
        Member::req("iops", INT),
        Member::req("iops_rd", INT),
        Member::req("iops_wr", INT),
        Member::req("image", Type::Struct(&IMAGE_INFO)),
        Member::req("cache", Type::Struct(&CACHE_INFO)),
        Member::req("write_threshold", INT),
        Member::opt("dirty-bitmaps", list(&DIRTY_INFO_T)),
    ],
);
static BLOCK_DEVICE_INFO_T: Type = Type::Struct(&BLOCK_DEVICE_INFO);
static BLOCK_DEVICE_INFO_LIST: Type = list(&BLOCK_DEVICE_INFO_T);

/// `BlockInfo`: query-block's element (the list is always empty here:
/// there are no guest devices).
static BLOCK_INFO: Struct = args(
    "BlockInfo",
    &[
        Member::req("device", Type::Str),
        Member::opt("qdev", Type::Str),
        Member::req("type", Type::Str),
        Member::req("removable", Type::Bool),
        Member::req("locked", Type::Bool),
        Member::opt("inserted", Type::Struct(&BLOCK_DEVICE_INFO)),
    ],
);
static BLOCK_INFO_T: Type = Type::Struct(&BLOCK_INFO);
static BLOCK_INFO_LIST: Type = list(&BLOCK_INFO_T);

static BLOCK_EXPORT_TYPE: Enum = Enum {
    name: "BlockExportType",
    values: &["nbd"],
};
static BLOCK_EXPORT_INFO: Struct = args(
    "BlockExportInfo",
    &[
        Member::req("id", Type::Str),
        Member::req("type", Type::Enum(&BLOCK_EXPORT_TYPE)),
        Member::req("node-name", Type::Str),
        Member::req("shutting-down", Type::Bool),
    ],
);
static BLOCK_EXPORT_INFO_T: Type = Type::Struct(&BLOCK_EXPORT_INFO);
static BLOCK_EXPORT_INFO_LIST: Type = list(&BLOCK_EXPORT_INFO_T);

static TIMED_STATS: Struct = args(
    "BlockDeviceTimedStats",
    &[
        Member::req("interval_length", INT),
        Member::req("min_rd_latency_ns", INT),
        Member::req("max_rd_latency_ns", INT),
        Member::req("avg_rd_latency_ns", INT),
        Member::req("min_wr_latency_ns", INT),
        Member::req("max_wr_latency_ns", INT),
        Member::req("avg_wr_latency_ns", INT),
        Member::req("min_flush_latency_ns", INT),
        Member::req("max_flush_latency_ns", INT),
        Member::req("avg_flush_latency_ns", INT),
        Member::req("avg_rd_queue_depth", Type::Number),
        Member::req("avg_wr_queue_depth", Type::Number),
    ],
);
static TIMED_STATS_T: Type = Type::Struct(&TIMED_STATS);
static DEVICE_STATS: Struct = args(
    "BlockDeviceStats",
    &[
        Member::req("rd_bytes", INT),
        Member::req("wr_bytes", INT),
        Member::req("unmap_bytes", INT),
        Member::req("rd_operations", INT),
        Member::req("wr_operations", INT),
        Member::req("flush_operations", INT),
        Member::req("unmap_operations", INT),
        Member::req("rd_total_time_ns", INT),
        Member::req("wr_total_time_ns", INT),
        Member::req("flush_total_time_ns", INT),
        Member::req("unmap_total_time_ns", INT),
        Member::req("wr_highest_offset", INT),
        Member::req("rd_merged", INT),
        Member::req("wr_merged", INT),
        Member::req("unmap_merged", INT),
        Member::opt("idle_time_ns", INT),
        Member::req("failed_rd_operations", INT),
        Member::req("failed_wr_operations", INT),
        Member::req("failed_flush_operations", INT),
        Member::req("failed_unmap_operations", INT),
        Member::req("invalid_rd_operations", INT),
        Member::req("invalid_wr_operations", INT),
        Member::req("invalid_flush_operations", INT),
        Member::req("invalid_unmap_operations", INT),
        Member::req("account_invalid", Type::Bool),
        Member::req("account_failed", Type::Bool),
        Member::req("timed_stats", list(&TIMED_STATS_T)),
    ],
);
static BLOCK_STATS: Struct = args(
    "BlockStats",
    &[
        Member::opt("node-name", Type::Str),
        Member::req("stats", Type::Struct(&DEVICE_STATS)),
        Member::opt("parent", Type::Struct(&BLOCK_STATS)),
        Member::opt("backing", Type::Struct(&BLOCK_STATS)),
    ],
);
static BLOCK_STATS_T: Type = Type::Struct(&BLOCK_STATS);
static BLOCK_STATS_LIST: Type = list(&BLOCK_STATS_T);

// SchemaInfo, for query-qmp-schema's own entry.
static JSON_TYPE: Enum = Enum {
    name: "JSONType",
    values: &[
        "string", "number", "int", "boolean", "null", "object", "array", "value",
    ],
};
static STR_T: Type = Type::Str;
static SI_BUILTIN: Struct = args(
    "SchemaInfoBuiltin",
    &[Member::req("json-type", Type::Enum(&JSON_TYPE))],
);
static SI_ENUM_MEMBER: Struct = args(
    "SchemaInfoEnumMember",
    &[
        Member::req("name", Type::Str),
        Member::opt("features", list(&STR_T)),
    ],
);
static SI_ENUM_MEMBER_T: Type = Type::Struct(&SI_ENUM_MEMBER);
static SI_ENUM: Struct = args(
    "SchemaInfoEnum",
    &[
        Member::req("members", list(&SI_ENUM_MEMBER_T)),
        Member::req("values", list(&STR_T)),
    ],
);
static SI_ARRAY: Struct = args("SchemaInfoArray", &[Member::req("element-type", Type::Str)]);
static SI_OBJECT_MEMBER: Struct = args(
    "SchemaInfoObjectMember",
    &[
        Member::req("name", Type::Str),
        Member::req("type", Type::Str),
        Member::opt("default", Type::Any),
        Member::opt("features", list(&STR_T)),
    ],
);
static SI_OBJECT_MEMBER_T: Type = Type::Struct(&SI_OBJECT_MEMBER);
static SI_OBJECT_VARIANT: Struct = args(
    "SchemaInfoObjectVariant",
    &[
        Member::req("case", Type::Str),
        Member::req("type", Type::Str),
    ],
);
static SI_OBJECT_VARIANT_T: Type = Type::Struct(&SI_OBJECT_VARIANT);
static SI_OBJECT: Struct = args(
    "SchemaInfoObject",
    &[
        Member::req("members", list(&SI_OBJECT_MEMBER_T)),
        Member::opt("tag", Type::Str),
        Member::opt("variants", list(&SI_OBJECT_VARIANT_T)),
    ],
);
static SI_ALTERNATE_MEMBER: Struct = args(
    "SchemaInfoAlternateMember",
    &[Member::req("type", Type::Str)],
);
static SI_ALTERNATE_MEMBER_T: Type = Type::Struct(&SI_ALTERNATE_MEMBER);
static SI_ALTERNATE: Struct = args(
    "SchemaInfoAlternate",
    &[Member::req("members", list(&SI_ALTERNATE_MEMBER_T))],
);
static SI_COMMAND: Struct = args(
    "SchemaInfoCommand",
    &[
        Member::req("arg-type", Type::Str),
        Member::req("ret-type", Type::Str),
        Member::opt("allow-oob", Type::Bool),
    ],
);
static SI_EVENT: Struct = args("SchemaInfoEvent", &[Member::req("arg-type", Type::Str)]);
static SCHEMA_INFO: Union = Union {
    name: "SchemaInfo",
    tag: "meta-type",
    tag_enum: "SchemaMetaType",
    base: &[
        Member::req("name", Type::Str),
        Member::opt("features", list(&STR_T)),
    ],
    variants: &[
        Variant {
            case: "builtin",
            members: &SI_BUILTIN,
        },
        Variant {
            case: "enum",
            members: &SI_ENUM,
        },
        Variant {
            case: "array",
            members: &SI_ARRAY,
        },
        Variant {
            case: "object",
            members: &SI_OBJECT,
        },
        Variant {
            case: "alternate",
            members: &SI_ALTERNATE,
        },
        Variant {
            case: "command",
            members: &SI_COMMAND,
        },
        Variant {
            case: "event",
            members: &SI_EVENT,
        },
    ],
};
static SCHEMA_INFO_T: Type = Type::Union(&SCHEMA_INFO);
static SCHEMA_INFO_LIST: Type = list(&SCHEMA_INFO_T);

// Event data.
static EV_WRITE_THRESHOLD: Struct = args(
    "q_obj_BLOCK_WRITE_THRESHOLD-arg",
    &[
        Member::req("node-name", Type::Str),
        Member::req("amount-exceeded", Type::Int(Int::U64)),
        Member::req("write-threshold", Type::Int(Int::U64)),
    ],
);
static IO_OPERATION_TYPE: Enum = Enum {
    name: "IoOperationType",
    values: &["read", "write"],
};
static ERROR_ACTION: Enum = Enum {
    name: "BlockErrorAction",
    values: &["ignore", "report", "stop"],
};
static EV_IO_ERROR: Struct = args(
    "q_obj_BLOCK_IO_ERROR-arg",
    &[
        Member::req("device", Type::Str),
        Member::opt("node-name", Type::Str),
        Member::req("operation", Type::Enum(&IO_OPERATION_TYPE)),
        Member::req("action", Type::Enum(&ERROR_ACTION)),
        Member::opt("nospace", Type::Bool),
        Member::req("reason", Type::Str),
    ],
);
static EV_EXPORT_DELETED: Struct = args(
    "q_obj_BLOCK_EXPORT_DELETED-arg",
    &[Member::req("id", Type::Str)],
);
static EV_WRITE_THRESHOLD_T: Type = Type::Struct(&EV_WRITE_THRESHOLD);
static EV_IO_ERROR_T: Type = Type::Struct(&EV_IO_ERROR);
static EV_EXPORT_DELETED_T: Type = Type::Struct(&EV_EXPORT_DELETED);

pub static EVENTS: [EventInfo; 3] = [
    EventInfo {
        name: "BLOCK_IO_ERROR",
        arg_type: Some(&EV_IO_ERROR_T),
    },
    EventInfo {
        name: "BLOCK_WRITE_THRESHOLD",
        arg_type: Some(&EV_WRITE_THRESHOLD_T),
    },
    EventInfo {
        name: "BLOCK_EXPORT_DELETED",
        arg_type: Some(&EV_EXPORT_DELETED_T),
    },
];

macro_rules! t {
    ($s:ident) => {{
        static T: Type = Type::Struct(&$s);
        &T
    }};
}

const fn cmd(
    name: &'static str,
    arg_type: &'static Type,
    ret_type: Option<&'static Type>,
) -> Command {
    Command {
        name,
        arg_type,
        ret_type,
    }
}

/// Every command the daemon has, with its argument and return types, in
/// `query-commands` order.
pub static COMMAND_TABLE: [Command; 30] = [
    cmd("qmp_capabilities", t!(QMP_CAPABILITIES), None),
    cmd("query-version", t!(EMPTY), Some(&VERSION_INFO_T)),
    cmd("query-commands", t!(EMPTY), Some(&COMMAND_INFO_LIST)),
    cmd("query-qmp-schema", t!(EMPTY), Some(&SCHEMA_INFO_LIST)),
    cmd("quit", t!(EMPTY), None),
    cmd("blockdev-add", &BLOCKDEV_OPTIONS_TYPE, None),
    cmd("blockdev-del", t!(BLOCKDEV_DEL), None),
    cmd("blockdev-reopen", t!(BLOCKDEV_REOPEN), None),
    cmd(
        "query-named-block-nodes",
        t!(QUERY_NAMED_BLOCK_NODES),
        Some(&BLOCK_DEVICE_INFO_LIST),
    ),
    cmd("query-block", t!(EMPTY), Some(&BLOCK_INFO_LIST)),
    cmd("object-add", &OBJECT_OPTIONS_TYPE, None),
    cmd("object-del", t!(OBJECT_DEL), None),
    cmd("nbd-server-start", t!(NBD_SERVER_START), None),
    cmd("nbd-server-stop", t!(EMPTY), None),
    cmd("block-export-add", &BLOCK_EXPORT_OPTIONS_TYPE, None),
    cmd("block-export-del", t!(BLOCK_EXPORT_DEL), None),
    cmd(
        "query-block-exports",
        t!(EMPTY),
        Some(&BLOCK_EXPORT_INFO_LIST),
    ),
    cmd("block-dirty-bitmap-add", t!(BLOCK_DIRTY_BITMAP_ADD), None),
    cmd("block-dirty-bitmap-remove", t!(BLOCK_DIRTY_BITMAP), None),
    cmd("block-dirty-bitmap-clear", t!(BLOCK_DIRTY_BITMAP), None),
    cmd("block-dirty-bitmap-enable", t!(BLOCK_DIRTY_BITMAP), None),
    cmd("block-dirty-bitmap-disable", t!(BLOCK_DIRTY_BITMAP), None),
    cmd(
        "block-dirty-bitmap-merge",
        t!(BLOCK_DIRTY_BITMAP_MERGE),
        None,
    ),
    cmd("transaction", t!(TRANSACTION), None),
    cmd(
        "query-blockstats",
        t!(QUERY_BLOCKSTATS),
        Some(&BLOCK_STATS_LIST),
    ),
    cmd("block_resize", t!(BLOCK_RESIZE), None),
    cmd("block_set_io_throttle", t!(BLOCK_IO_THROTTLE), None),
    cmd("qom-set", t!(QOM_SET), None),
    cmd("qom-get", t!(QOM_GET), Some(&ANY)),
    cmd(
        "block-set-write-threshold",
        t!(BLOCK_SET_WRITE_THRESHOLD),
        None,
    ),
];
