//! The NBD wire format: every constant of the spec and its extended-headers
//! extension, flag fields as bitflags, and zerocopy structs for every
//! fixed-size header.
//!
//! Variable-length payloads (option requests and replies, reply chunks)
//! are value types in [`option`] and [`chunk`], read through the checked
//! [`codec::Reader`] and written through [`codec::Sink`]; nothing else in
//! the crate indexes wire bytes by hand.
//!
//! Decoding never panics: [`decode`] returns [`WireError::Short`] when more
//! bytes are needed and [`WireError::BadMagic`] when a header's magic is wrong.

pub mod chunk;
pub mod codec;
mod consts;
mod flags;
pub mod headers;
pub mod option;

pub use consts::*;
pub use flags::*;

use zerocopy::{FromBytes, Immutable, KnownLayout};

/// Why a header could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the header needs; `needed` is the header's size.
    Short { needed: usize },
    /// The magic number is not the one this header must carry.
    BadMagic { found: u64 },
}

/// Read a fixed-size header from the front of `bytes` (copying it out, so the
/// input needs no alignment and can be dropped).
pub fn decode<T: FromBytes + KnownLayout + Immutable>(bytes: &[u8]) -> Result<T, WireError> {
    T::read_from_prefix(bytes)
        .map(|(t, _)| t)
        .map_err(|_| WireError::Short {
            needed: core::mem::size_of::<T>(),
        })
}

/// Which request and reply headers a session uses, as negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum HeaderMode {
    /// Compact requests, simple replies only.
    #[default]
    Simple,
    /// Compact requests, structured replies (`NBD_OPT_STRUCTURED_REPLY`).
    Structured,
    /// Extended requests and replies (`NBD_OPT_EXTENDED_HEADERS`).
    Extended,
}

impl HeaderMode {
    /// Size of one request header in this mode.
    pub const fn request_size(self) -> usize {
        match self {
            HeaderMode::Extended => headers::ExtendedRequest::SIZE,
            _ => headers::CompactRequest::SIZE,
        }
    }

    /// Whether structured (or extended) chunks are available.
    pub const fn structured(self) -> bool {
        !matches!(self, HeaderMode::Simple)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Each number below is copied by hand from nbd-proto.md and
    // nbd-proto-extended-headers.md; the point is to catch a wrong shift or a
    // `^` written for a power, not to restate the code.
    #[test]
    fn magics() {
        assert_eq!(NBD_MAGIC.to_be_bytes(), *b"NBDMAGIC");
        assert_eq!(IHAVEOPT.to_be_bytes(), *b"IHAVEOPT");
        assert_eq!(OLDSTYLE_MAGIC, 0x00420281861253);
        assert_eq!(OPTION_REPLY_MAGIC, 0x3e889045565a9);
        assert_eq!(REQUEST_MAGIC, 0x25609513);
        assert_eq!(EXTENDED_REQUEST_MAGIC, 0x21e41c71);
        assert_eq!(SIMPLE_REPLY_MAGIC, 0x67446698);
        assert_eq!(STRUCTURED_REPLY_MAGIC, 0x668e33ef);
        assert_eq!(EXTENDED_REPLY_MAGIC, 0x6e8a278c);
        assert_eq!(RESERVED_OLD_REQUEST_MAGIC, 0x12560953);
        assert_eq!(RESERVED_OLD_REPLY_MAGIC, 0x96744668);
        assert_eq!(RESERVED_TRANSLOG_MAGIC, 0x25609514);
    }

    #[test]
    fn option_types() {
        let cases = [
            (OptionType::EXPORT_NAME, 1),
            (OptionType::ABORT, 2),
            (OptionType::LIST, 3),
            (OptionType::PEEK_EXPORT, 4),
            (OptionType::STARTTLS, 5),
            (OptionType::INFO, 6),
            (OptionType::GO, 7),
            (OptionType::STRUCTURED_REPLY, 8),
            (OptionType::LIST_META_CONTEXT, 9),
            (OptionType::SET_META_CONTEXT, 10),
            (OptionType::EXTENDED_HEADERS, 11),
        ];
        for (t, v) in cases {
            assert_eq!(t.0, v, "{t:?}");
        }
        assert!(!OptionType(12).is_known());
    }

    #[test]
    fn reply_types() {
        assert_eq!(ReplyType::ACK.0, 1);
        assert_eq!(ReplyType::SERVER.0, 2);
        assert_eq!(ReplyType::INFO.0, 3);
        assert_eq!(ReplyType::META_CONTEXT.0, 4);
        let errs = [
            (ReplyType::ERR_UNSUP, 1),
            (ReplyType::ERR_POLICY, 2),
            (ReplyType::ERR_INVALID, 3),
            (ReplyType::ERR_PLATFORM, 4),
            (ReplyType::ERR_TLS_REQD, 5),
            (ReplyType::ERR_UNKNOWN, 6),
            (ReplyType::ERR_SHUTDOWN, 7),
            (ReplyType::ERR_BLOCK_SIZE_REQD, 8),
            (ReplyType::ERR_TOO_BIG, 9),
            (ReplyType::ERR_EXT_HEADER_REQD, 10),
        ];
        for (t, v) in errs {
            assert_eq!(t.0, 2_147_483_648 + v, "{t:?}");
            assert!(t.is_error());
        }
        assert!(!ReplyType::ACK.is_error());
    }

    #[test]
    fn info_types() {
        assert_eq!(InfoType::EXPORT.0, 0);
        assert_eq!(InfoType::NAME.0, 1);
        assert_eq!(InfoType::DESCRIPTION.0, 2);
        assert_eq!(InfoType::BLOCK_SIZE.0, 3);
    }

    #[test]
    fn flags() {
        assert_eq!(HandshakeFlags::FIXED_NEWSTYLE.bits(), 1);
        assert_eq!(HandshakeFlags::NO_ZEROES.bits(), 2);
        assert_eq!(ClientFlags::FIXED_NEWSTYLE.bits(), 1);
        assert_eq!(ClientFlags::NO_ZEROES.bits(), 2);
        let t = [
            (TransmissionFlags::HAS_FLAGS, 1),
            (TransmissionFlags::READ_ONLY, 2),
            (TransmissionFlags::SEND_FLUSH, 4),
            (TransmissionFlags::SEND_FUA, 8),
            (TransmissionFlags::ROTATIONAL, 16),
            (TransmissionFlags::SEND_TRIM, 32),
            (TransmissionFlags::SEND_WRITE_ZEROES, 64),
            (TransmissionFlags::SEND_DF, 128),
            (TransmissionFlags::CAN_MULTI_CONN, 256),
            (TransmissionFlags::SEND_RESIZE, 512),
            (TransmissionFlags::SEND_CACHE, 1024),
            (TransmissionFlags::SEND_FAST_ZERO, 2048),
            (TransmissionFlags::BLOCK_STAT_PAYLOAD, 4096),
        ];
        for (f, v) in t {
            assert_eq!(f.bits(), v, "{f:?}");
        }
        let c = [
            (CommandFlags::FUA, 1),
            (CommandFlags::NO_HOLE, 2),
            (CommandFlags::DF, 4),
            (CommandFlags::REQ_ONE, 8),
            (CommandFlags::FAST_ZERO, 16),
            (CommandFlags::PAYLOAD_LEN, 32),
        ];
        for (f, v) in c {
            assert_eq!(f.bits(), v, "{f:?}");
        }
        assert_eq!(ReplyFlags::DONE.bits(), 1);
    }

    #[test]
    fn commands_chunks_errors() {
        let cmds = [
            (CommandType::READ, 0),
            (CommandType::WRITE, 1),
            (CommandType::DISC, 2),
            (CommandType::FLUSH, 3),
            (CommandType::TRIM, 4),
            (CommandType::CACHE, 5),
            (CommandType::WRITE_ZEROES, 6),
            (CommandType::BLOCK_STATUS, 7),
            (CommandType::RESIZE, 8),
        ];
        for (c, v) in cmds {
            assert_eq!(c.0, v, "{c:?}");
        }
        assert_eq!(ChunkType::NONE.0, 0);
        assert_eq!(ChunkType::OFFSET_DATA.0, 1);
        assert_eq!(ChunkType::OFFSET_HOLE.0, 2);
        assert_eq!(ChunkType::BLOCK_STATUS.0, 5);
        assert_eq!(ChunkType::BLOCK_STATUS_EXT.0, 6);
        assert_eq!(ChunkType::ERROR.0, 32768 + 1);
        assert_eq!(ChunkType::ERROR_OFFSET.0, 32768 + 2);
        assert!(ChunkType::ERROR.is_error() && !ChunkType::OFFSET_DATA.is_error());
        let errs = [
            (Errno::EPERM, 1),
            (Errno::EIO, 5),
            (Errno::ENOMEM, 12),
            (Errno::EINVAL, 22),
            (Errno::ENOSPC, 28),
            (Errno::EOVERFLOW, 75),
            (Errno::ENOTSUP, 95),
            (Errno::ESHUTDOWN, 108),
        ];
        for (e, v) in errs {
            assert_eq!(e.0, v, "{e:?}");
        }
        assert_eq!(allocation::HOLE, 1);
        assert_eq!(allocation::ZERO, 2);
        assert_eq!(dirty::DIRTY, 1);
    }

    #[test]
    fn limits() {
        assert_eq!(MAX_STRING, 4096);
        assert_eq!(DEFAULT_MAX_PAYLOAD, 33_554_432);
        assert_eq!(MAX_MIN_BLOCK, 65_536);
        assert_eq!(MAX_EXTENTS_PER_CHUNK, 1_048_576);
        assert_eq!(EXPORT_NAME_PADDING, 124);
    }

    #[test]
    fn decode_reports_short_input_and_never_panics() {
        use headers::*;
        for n in 0..OptionRequest::SIZE {
            assert_eq!(
                decode::<OptionRequest>(&[0u8; 64][..n]),
                Err(WireError::Short { needed: 16 })
            );
        }
        assert!(decode::<OptionRequest>(&[0u8; 16]).is_ok());
    }
}
