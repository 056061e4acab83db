//! Fixed-size headers, laid out exactly as on the wire (big-endian, packed).
//!
//! Each type is a zerocopy struct: parse with `T::ref_from_prefix(bytes)`
//! (or the `decode` helpers in `super`), emit with `as_bytes()`. All fields
//! are network-endian, so these types have alignment 1 and no padding.

use zerocopy::network_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

macro_rules! header {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(C)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }

        impl $name {
            /// Size on the wire.
            pub const SIZE: usize = core::mem::size_of::<Self>();
        }
    };
}

header! {
    /// Server greeting of fixed newstyle: `NBDMAGIC`, `IHAVEOPT`, handshake flags.
    Greeting { magic: U64, ihaveopt: U64, flags: U16 }
}

header! {
    /// Client option request header; `length` bytes of data follow.
    OptionRequest { magic: U64, option: U32, length: U32 }
}

header! {
    /// Server option reply header; `length` bytes of data follow.
    OptionReply { magic: U64, option: U32, reply_type: U32, length: U32 }
}

header! {
    /// Reply to `NBD_OPT_EXPORT_NAME` (then 124 zero bytes unless `NO_ZEROES`).
    ExportNameReply { size: U64, flags: U16 }
}

header! {
    /// `NBD_INFO_EXPORT` payload of `NBD_REP_INFO`.
    InfoExport { info_type: U16, size: U64, flags: U16 }
}

header! {
    /// `NBD_INFO_BLOCK_SIZE` payload of `NBD_REP_INFO`.
    InfoBlockSize { info_type: U16, minimum: U32, preferred: U32, maximum: U32 }
}

header! {
    /// Prefix of `NBD_INFO_NAME` and `NBD_INFO_DESCRIPTION` (the string follows).
    InfoString { info_type: U16 }
}

header! {
    /// Prefix of an `NBD_REP_META_CONTEXT` payload (the name follows).
    MetaContextReply { context_id: U32 }
}

header! {
    /// Compact request header (28 bytes); a write's payload follows.
    CompactRequest { magic: U32, flags: U16, command: U16, cookie: U64, offset: U64, length: U32 }
}

header! {
    /// Extended request header (32 bytes); a payload follows iff `PAYLOAD_LEN`.
    ExtendedRequest { magic: U32, flags: U16, command: U16, cookie: U64, offset: U64, length: U64 }
}

header! {
    /// Simple reply (16 bytes); a successful read's data follows.
    SimpleReply { magic: U32, error: U32, cookie: U64 }
}

header! {
    /// Structured reply chunk header (20 bytes).
    StructuredReply { magic: U32, flags: U16, chunk_type: U16, cookie: U64, length: U32 }
}

header! {
    /// Extended reply chunk header (32 bytes).
    ExtendedReply { magic: U32, flags: U16, chunk_type: U16, cookie: U64, offset: U64, length: U64 }
}

header! {
    /// Start of `NBD_REPLY_TYPE_OFFSET_DATA` payload; the data follows.
    OffsetData { offset: U64 }
}

header! {
    /// `NBD_REPLY_TYPE_OFFSET_HOLE` payload.
    OffsetHole { offset: U64, length: U32 }
}

header! {
    /// Start of every error chunk payload; the message follows, and for
    /// `ERROR_OFFSET` an 8-byte offset after it.
    ErrorChunk { error: U32, message_length: U16 }
}

header! {
    /// Start of `NBD_REPLY_TYPE_BLOCK_STATUS` payload.
    BlockStatusHeader { context_id: U32 }
}

header! {
    /// Start of `NBD_REPLY_TYPE_BLOCK_STATUS_EXT` payload.
    BlockStatusExtHeader { context_id: U32, count: U32 }
}

header! {
    /// A 32-bit block status descriptor.
    Extent32 { length: U32, flags: U32 }
}

header! {
    /// A 64-bit block status descriptor.
    Extent64 { length: U64, flags: U64 }
}

header! {
    /// Start of the payload of an extended `NBD_CMD_BLOCK_STATUS` with
    /// `PAYLOAD_LEN`; 32-bit context ids follow.
    BlockStatusPayload { effect_length: U64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_spec() {
        assert_eq!(Greeting::SIZE, 18);
        assert_eq!(OptionRequest::SIZE, 16);
        assert_eq!(OptionReply::SIZE, 20);
        assert_eq!(ExportNameReply::SIZE, 10);
        assert_eq!(InfoExport::SIZE, 12);
        assert_eq!(InfoBlockSize::SIZE, 14);
        assert_eq!(CompactRequest::SIZE, 28);
        assert_eq!(ExtendedRequest::SIZE, 32);
        assert_eq!(SimpleReply::SIZE, 16);
        assert_eq!(StructuredReply::SIZE, 20);
        assert_eq!(ExtendedReply::SIZE, 32);
        assert_eq!(OffsetHole::SIZE, 12);
        assert_eq!(ErrorChunk::SIZE, 6);
        assert_eq!(Extent32::SIZE, 8);
        assert_eq!(Extent64::SIZE, 16);
        assert_eq!(BlockStatusExtHeader::SIZE, 8);
    }

    #[test]
    fn layout_is_big_endian_in_field_order() {
        let r = CompactRequest {
            magic: 0x2560_9513.into(),
            flags: 0x0102.into(),
            command: 0x0304.into(),
            cookie: 0x0506_0708_090a_0b0c.into(),
            offset: 0x0d0e_0f10_1112_1314.into(),
            length: 0x1516_1718.into(),
        };
        let expected: [u8; 28] = [
            0x25, 0x60, 0x95, 0x13, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
            19, 20, 21, 22, 23, 24,
        ];
        assert_eq!(r.as_bytes(), &expected);
        let (back, rest) = CompactRequest::read_from_prefix(&expected).unwrap();
        assert_eq!(back, r);
        assert!(rest.is_empty());
    }
}
