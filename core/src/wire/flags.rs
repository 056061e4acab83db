//! The protocol's flag fields, as bitflags.
//!
//! Unknown bits are kept (`from_bits_retain`) so that a machine can detect
//! them and answer as the spec says, instead of losing them in decoding.

use bitflags::bitflags;

bitflags! {
    /// Handshake flags, sent by the server after `IHAVEOPT`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct HandshakeFlags: u16 {
        const FIXED_NEWSTYLE = 1 << 0;
        const NO_ZEROES = 1 << 1;
    }

    /// Client flags, the client's first 32 bits.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ClientFlags: u32 {
        const FIXED_NEWSTYLE = 1 << 0;
        const NO_ZEROES = 1 << 1;
    }

    /// Transmission flags, per export.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct TransmissionFlags: u16 {
        const HAS_FLAGS = 1 << 0;
        const READ_ONLY = 1 << 1;
        const SEND_FLUSH = 1 << 2;
        const SEND_FUA = 1 << 3;
        const ROTATIONAL = 1 << 4;
        const SEND_TRIM = 1 << 5;
        const SEND_WRITE_ZEROES = 1 << 6;
        const SEND_DF = 1 << 7;
        const CAN_MULTI_CONN = 1 << 8;
        const SEND_RESIZE = 1 << 9;
        const SEND_CACHE = 1 << 10;
        const SEND_FAST_ZERO = 1 << 11;
        const BLOCK_STAT_PAYLOAD = 1 << 12;
    }

    /// Command flags in a request.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct CommandFlags: u16 {
        const FUA = 1 << 0;
        const NO_HOLE = 1 << 1;
        const DF = 1 << 2;
        const REQ_ONE = 1 << 3;
        const FAST_ZERO = 1 << 4;
        const PAYLOAD_LEN = 1 << 5;
    }

    /// Reply flags of structured and extended chunks.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ReplyFlags: u16 {
        const DONE = 1 << 0;
    }
}
