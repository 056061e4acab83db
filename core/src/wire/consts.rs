//! Numbers the NBD protocol fixes: magics, option and reply codes, commands,
//! chunk types, error values, metadata-context flags.
//!
//! Codes that a peer may send with values we do not know are newtypes over the
//! raw integer (not enums): an unknown option or command must survive decoding
//! so that it can be answered (`NBD_REP_ERR_UNSUP`, `NBD_EINVAL`) rather than
//! treated as garbage.

/// `NBDMAGIC`, the first 8 bytes a server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: newstyle greeting, and the prefix of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Oldstyle greeting magic (`cliserv_magic`); we never speak oldstyle, but a
/// client must recognise it to refuse it.
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Magic of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Compact request header.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Extended (64-bit) request header.
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
/// Simple reply (formerly `NBD_REPLY_MAGIC`).
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Extended reply chunk.
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// Reserved, never to be used on the wire: historic request magic.
pub const RESERVED_OLD_REQUEST_MAGIC: u32 = 0x1256_0953;
/// Reserved, never to be used on the wire: historic reply magic.
pub const RESERVED_OLD_REPLY_MAGIC: u32 = 0x9674_4668;
/// Reserved, never to be used on the wire: nbd-server's transaction log.
pub const RESERVED_TRANSLOG_MAGIC: u32 = 0x2560_9514;

/// Longest string (export name, description, context name, query) the spec
/// lets a peer send: "MUST NOT exceed 4096 bytes".
pub const MAX_STRING: usize = 4096;
/// Bytes of zero padding after an `NBD_OPT_EXPORT_NAME` reply unless
/// `NBD_FLAG_C_NO_ZEROES` was negotiated.
pub const EXPORT_NAME_PADDING: usize = 124;
/// Payload every peer must accept without calling it a denial of service
/// (2^25); also our default maximum payload, as qemu-nbd's.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1 << 25;
/// Default minimum block size when none is advertised.
pub const DEFAULT_MIN_BLOCK: u32 = 1;
/// Default preferred block size when none is advertised.
pub const DEFAULT_PREFERRED_BLOCK: u32 = 1 << 12;
/// Largest minimum block size the spec allows (2^16).
pub const MAX_MIN_BLOCK: u32 = 1 << 16;
/// Extents a server SHOULD NOT exceed in one block-status chunk (2^20).
pub const MAX_EXTENTS_PER_CHUNK: usize = 1 << 20;

macro_rules! code {
    ($(#[$m:meta])* $name:ident($ty:ty) { $($(#[$vm:meta])* $c:ident = $v:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $ty);

        impl $name {
            $($(#[$vm])* pub const $c: Self = Self($v);)*

            /// The spec's name for this value, or `None` if it is not one we know.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $(v if v == $v => Some(stringify!($c)),)*
                    _ => None,
                }
            }

            /// Whether this value is one the spec defines.
            pub const fn is_known(self) -> bool {
                self.name().is_some()
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({:#x})", stringify!($name), self.0),
                }
            }
        }

        impl From<$ty> for $name {
            fn from(v: $ty) -> Self { Self(v) }
        }
    };
}

/// Bit 31 marks an option reply as an error.
pub const REP_ERR_BIT: u32 = 1 << 31;
/// Bit 15 marks a structured reply chunk as an error chunk.
pub const CHUNK_ERR_BIT: u16 = 1 << 15;

code! {
    /// `NBD_OPT_*`: option haggling requests.
    OptionType(u32) {
        EXPORT_NAME = 1,
        ABORT = 2,
        LIST = 3,
        /// Withdrawn `PEEK_EXPORT` extension; answered like any unknown option.
        PEEK_EXPORT = 4,
        STARTTLS = 5,
        INFO = 6,
        GO = 7,
        STRUCTURED_REPLY = 8,
        LIST_META_CONTEXT = 9,
        SET_META_CONTEXT = 10,
        EXTENDED_HEADERS = 11,
    }
}

code! {
    /// `NBD_REP_*`: option reply types, errors included.
    ReplyType(u32) {
        ACK = 1,
        SERVER = 2,
        INFO = 3,
        META_CONTEXT = 4,
        ERR_UNSUP = REP_ERR_BIT + 1,
        ERR_POLICY = REP_ERR_BIT + 2,
        ERR_INVALID = REP_ERR_BIT + 3,
        ERR_PLATFORM = REP_ERR_BIT + 4,
        ERR_TLS_REQD = REP_ERR_BIT + 5,
        ERR_UNKNOWN = REP_ERR_BIT + 6,
        ERR_SHUTDOWN = REP_ERR_BIT + 7,
        ERR_BLOCK_SIZE_REQD = REP_ERR_BIT + 8,
        ERR_TOO_BIG = REP_ERR_BIT + 9,
        ERR_EXT_HEADER_REQD = REP_ERR_BIT + 10,
    }
}

impl ReplyType {
    /// Error replies are all those with bit 31 set, known or not.
    pub const fn is_error(self) -> bool {
        self.0 & REP_ERR_BIT != 0
    }
}

code! {
    /// `NBD_INFO_*`: information types in `NBD_REP_INFO`.
    InfoType(u16) {
        EXPORT = 0,
        NAME = 1,
        DESCRIPTION = 2,
        BLOCK_SIZE = 3,
    }
}

code! {
    /// `NBD_CMD_*`: transmission request types.
    CommandType(u16) {
        READ = 0,
        WRITE = 1,
        DISC = 2,
        FLUSH = 3,
        TRIM = 4,
        CACHE = 5,
        WRITE_ZEROES = 6,
        BLOCK_STATUS = 7,
        /// Experimental `RESIZE` extension; we do not implement it.
        RESIZE = 8,
    }
}

code! {
    /// `NBD_REPLY_TYPE_*`: structured / extended reply chunk types.
    ChunkType(u16) {
        NONE = 0,
        OFFSET_DATA = 1,
        OFFSET_HOLE = 2,
        BLOCK_STATUS = 5,
        BLOCK_STATUS_EXT = 6,
        ERROR = CHUNK_ERR_BIT + 1,
        ERROR_OFFSET = CHUNK_ERR_BIT + 2,
    }
}

impl ChunkType {
    /// Error chunks are all those with bit 15 set, known or not.
    pub const fn is_error(self) -> bool {
        self.0 & CHUNK_ERR_BIT != 0
    }
}

code! {
    /// `NBD_E*`: error values in replies. Only these may go on the wire.
    Errno(u32) {
        EPERM = 1,
        EIO = 5,
        ENOMEM = 12,
        EINVAL = 22,
        ENOSPC = 28,
        EOVERFLOW = 75,
        ENOTSUP = 95,
        ESHUTDOWN = 108,
    }
}

impl Errno {
    /// Map a host `errno` onto the eight values the spec allows, as the spec
    /// asks (`EDQUOT` and `EFBIG` become `ENOSPC`; anything unexpected is
    /// `EINVAL` for the client anyway, so we send `EIO` for unknown host
    /// failures, which is what qemu-nbd does).
    pub const fn from_host(errno: i32) -> Self {
        match errno {
            1 | 13 | 30 => Self::EPERM, // EPERM, EACCES, EROFS
            12 => Self::ENOMEM,
            22 => Self::EINVAL,
            28 | 122 | 27 => Self::ENOSPC, // ENOSPC, EDQUOT, EFBIG
            75 => Self::EOVERFLOW,
            95 => Self::ENOTSUP,
            108 => Self::ESHUTDOWN,
            _ => Self::EIO,
        }
    }
}

/// `base:allocation` status bits.
pub mod allocation {
    /// `NBD_STATE_HOLE`: the extent is not allocated.
    pub const HOLE: u32 = 1 << 0;
    /// `NBD_STATE_ZERO`: the extent reads as zeroes.
    pub const ZERO: u32 = 1 << 1;
}

/// `qemu:dirty-bitmap:NAME` status bit (qemu's `NBD_STATE_DIRTY`).
pub mod dirty {
    pub const DIRTY: u32 = 1 << 0;
}

/// `qemu:allocation-depth` values (qemu's `NBD_STATE_*` for depth).
pub mod allocation_depth {
    /// Not allocated anywhere in the chain.
    pub const UNALLOCATED: u32 = 0;
    /// Allocated in the top layer; backing layers count up from here.
    pub const LOCAL: u32 = 1;
}

/// Metadata context names known to this implementation.
pub mod context {
    pub const BASE_ALLOCATION: &str = "base:allocation";
    pub const QEMU_ALLOCATION_DEPTH: &str = "qemu:allocation-depth";
    pub const QEMU_DIRTY_BITMAP_PREFIX: &str = "qemu:dirty-bitmap:";
}
