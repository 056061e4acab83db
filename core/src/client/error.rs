//! What can go wrong: fatal errors that end the connection, refused
//! requests (caller mistakes), and failed requests (server answers).

use core::fmt;

use crate::wire::codec::PayloadError;
use crate::wire::{ChunkType, CommandType, Errno, OptionType, ReplyType};

/// A fatal error: the connection must be closed. When it comes from the
/// server refusing something (not from a protocol violation), the machine
/// queued `NBD_OPT_ABORT` first: send what
/// [`poll_transmit`](super::Client::poll_transmit) holds, then close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    // --- handshake -------------------------------------------------------
    /// The greeting does not start with `NBDMAGIC`/`IHAVEOPT`.
    BadMagic { found: u64 },
    /// An oldstyle server: not supported (and never TLS-capable).
    Oldstyle,
    /// A newstyle server without `NBD_FLAG_FIXED_NEWSTYLE`.
    NotFixedNewstyle,
    /// An option reply without the option reply magic.
    BadOptionReplyMagic { found: u64 },
    /// A reply for an option we did not send, or of a type that option
    /// cannot have.
    UnexpectedOptionReply {
        option: OptionType,
        reply: ReplyType,
    },
    /// An option reply longer than any reply the client accepts.
    OptionReplyTooLong { option: OptionType, length: u32 },
    /// An option reply whose payload contradicts its type; `cause` names
    /// the field at fault (a name that is not a valid NBD string among
    /// them).
    MalformedOptionReply {
        option: OptionType,
        reply: ReplyType,
        cause: PayloadError,
    },
    /// The server requires TLS and the config disables it.
    TlsRequired,
    /// The config requires TLS and the server refused `NBD_OPT_STARTTLS`.
    TlsRefused { reply: ReplyType },
    /// Bytes arrived between the `STARTTLS` acknowledgement and
    /// [`tls_established`](super::Client::tls_established).
    PlaintextAfterStartTls,
    /// The server does not have the export.
    UnknownExport,
    /// An option we cannot do without failed.
    OptionFailed {
        option: OptionType,
        reply: ReplyType,
    },
    /// `NBD_REP_ERR_SHUTDOWN` during the handshake.
    ServerShutdown,
    /// An export of 2^63 bytes or more: offsets could not be trusted.
    ExportTooLarge { size: u64 },
    /// `NBD_INFO_BLOCK_SIZE` with values the spec forbids.
    InvalidBlockSize {
        minimum: u32,
        preferred: u32,
        maximum: u32,
    },
    /// `NBD_REP_ACK` to `GO`/`INFO` without `NBD_INFO_EXPORT`.
    MissingExportInfo,
    /// More metadata contexts selected than the client can track.
    TooManyContexts,
    /// The same context id twice.
    DuplicateContext { id: u32 },
    /// `NBD_REP_ERR_UNSUP` to `GO` after extended headers were acked.
    GoUnsupportedWithExtendedHeaders,
    /// The handshake took longer than the configured timeout.
    Timeout,
    /// The server closed the connection while the client still expected
    /// something.
    UnexpectedEof,
    /// The machine's output buffer could not hold an option request it had
    /// to send. A sizing bug in this crate, never the server's doing (debug
    /// builds panic); the request is not sent truncated.
    OutputOverflow,

    // --- transmission ----------------------------------------------------
    /// A reply magic that is not the one negotiated (a structured chunk
    /// while only simple replies were negotiated, a simple reply with
    /// extended headers, garbage).
    BadReplyMagic { found: u32 },
    /// A reply for a cookie that is not in flight (never sent, or already
    /// finished: a second `DONE`).
    UnknownCookie { cookie: u64 },
    /// A simple reply to a read after structured replies were negotiated.
    SimpleReplyToRead { cookie: u64 },
    /// An extended reply whose offset is not the request's.
    ReplyOffsetMismatch { cookie: u64 },
    /// A chunk longer than the payload limit.
    ChunkTooLong { cookie: u64, length: u64 },
    /// A chunk type that is unknown or not valid for its request.
    UnexpectedChunk {
        cookie: u64,
        chunk: ChunkType,
        command: CommandType,
    },
    /// A chunk whose length or flags contradict its type.
    MalformedChunk { cookie: u64, chunk: ChunkType },
    /// Content or an error offset outside the request's range.
    ChunkOutOfRange {
        cookie: u64,
        offset: u64,
        length: u64,
    },
    /// Content overlapping earlier content.
    ChunkOverlap {
        cookie: u64,
        offset: u64,
        length: u64,
    },
    /// A second content chunk for a read sent with `NBD_CMD_FLAG_DF`.
    FragmentedDf { cookie: u64 },
    /// An `OFFSET_HOLE` of length 0.
    EmptyHole { cookie: u64 },
    /// A block status descriptor of length 0.
    EmptyExtent { cookie: u64 },
    /// A block status descriptor starting at or past the request's end, or
    /// longer than the request with `REQ_ONE`.
    ExtentBeyondRequest { cookie: u64 },
    /// A block status chunk for a context that was not selected.
    UnknownContext { cookie: u64, id: u32 },
    /// Two block status chunks for one context in one reply.
    DuplicateStatus { cookie: u64, id: u32 },
    /// An error chunk whose message does not fit in the chunk.
    ErrorMessageTooLong { cookie: u64, message_length: u16 },
}

/// `NBD_OPT_GO`, or the number of an option the spec does not name.
struct Opt(OptionType);

impl fmt::Display for Opt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.name() {
            Some(n) => write!(f, "NBD_OPT_{n}"),
            None => write!(f, "option {}", self.0.0),
        }
    }
}

/// `NBD_REP_ERR_UNSUP`, or the number of a reply type the spec does not name.
struct Rep(ReplyType);

impl fmt::Display for Rep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.name() {
            Some(n) => write!(f, "NBD_REP_{n}"),
            None => write!(f, "reply type {:#x}", self.0.0),
        }
    }
}

/// `NBD_REPLY_TYPE_OFFSET_DATA`, or the number of an unknown chunk type.
struct Chunk(ChunkType);

impl fmt::Display for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.name() {
            Some(n) => write!(f, "NBD_REPLY_TYPE_{n}"),
            None => write!(f, "chunk type {:#x}", self.0.0),
        }
    }
}

/// `NBD_CMD_READ`, or the number of a command the spec does not name.
struct Cmd(CommandType);

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.name() {
            Some(n) => write!(f, "NBD_CMD_{n}"),
            None => write!(f, "command {}", self.0.0),
        }
    }
}

impl fmt::Display for Error {
    /// A message for people: what the server did wrong, in the spec's terms.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        match *self {
            BadMagic { found } => write!(f, "not an NBD server (greeting {found:#018x})"),
            Oldstyle => f.write_str("oldstyle NBD server: not supported"),
            NotFixedNewstyle => f.write_str("server does not support fixed newstyle negotiation"),
            BadOptionReplyMagic { found } => write!(f, "bad option reply magic {found:#x}"),
            UnexpectedOptionReply { option, reply } => {
                write!(f, "unexpected {} in reply to {}", Rep(reply), Opt(option))
            }
            OptionReplyTooLong { option, length } => {
                write!(f, "reply of {length} bytes to {} is too long", Opt(option))
            }
            MalformedOptionReply {
                option,
                reply,
                cause,
            } => write!(
                f,
                "malformed {} in reply to {}: {cause}",
                Rep(reply),
                Opt(option)
            ),
            TlsRequired => f.write_str("server requires TLS (use an nbds:// URI)"),
            TlsRefused { reply } => write!(f, "server refused TLS ({})", Rep(reply)),
            PlaintextAfterStartTls => f.write_str("server sent plaintext after STARTTLS"),
            UnknownExport => f.write_str("server has no such export"),
            OptionFailed { option, reply } => write!(f, "{} failed: {}", Opt(option), Rep(reply)),
            ServerShutdown => f.write_str("server is shutting down"),
            ExportTooLarge { size } => write!(f, "export size {size} is 2^63 bytes or more"),
            InvalidBlockSize {
                minimum,
                preferred,
                maximum,
            } => write!(
                f,
                "invalid block sizes: minimum {minimum}, preferred {preferred}, maximum {maximum}"
            ),
            MissingExportInfo => f.write_str("server accepted the export without describing it"),
            TooManyContexts => f.write_str("server selected more metadata contexts than asked"),
            DuplicateContext { id } => write!(f, "server selected context id {id} twice"),
            GoUnsupportedWithExtendedHeaders => {
                f.write_str("server refused NBD_OPT_GO after accepting extended headers")
            }
            Timeout => f.write_str("handshake timed out"),
            UnexpectedEof => f.write_str("server closed the connection unexpectedly"),
            OutputOverflow => {
                f.write_str("internal error: an option request did not fit the output buffer")
            }
            BadReplyMagic { found } => write!(f, "bad reply magic {found:#x}"),
            UnknownCookie { cookie } => {
                write!(f, "reply for cookie {cookie}, which is not in flight")
            }
            SimpleReplyToRead { cookie } => {
                write!(f, "simple reply to structured read (cookie {cookie})")
            }
            ReplyOffsetMismatch { cookie } => write!(
                f,
                "reply offset does not match its request (cookie {cookie})"
            ),
            ChunkTooLong { cookie, length } => write!(
                f,
                "reply chunk of {length} bytes is too long (cookie {cookie})"
            ),
            UnexpectedChunk {
                cookie,
                chunk,
                command,
            } => write!(
                f,
                "unexpected {} chunk for {} (cookie {cookie})",
                Chunk(chunk),
                Cmd(command)
            ),
            MalformedChunk { cookie, chunk } => {
                write!(f, "malformed {} chunk (cookie {cookie})", Chunk(chunk))
            }
            ChunkOutOfRange {
                cookie,
                offset,
                length,
            } => write!(
                f,
                "chunk at {offset}+{length} lies outside its request (cookie {cookie})"
            ),
            ChunkOverlap {
                cookie,
                offset,
                length,
            } => write!(
                f,
                "chunk at {offset}+{length} overlaps earlier data (cookie {cookie})"
            ),
            FragmentedDf { cookie } => write!(
                f,
                "fragmented reply to a don't-fragment read (cookie {cookie})"
            ),
            EmptyHole { cookie } => write!(f, "hole of length 0 (cookie {cookie})"),
            EmptyExtent { cookie } => {
                write!(f, "block status extent of length 0 (cookie {cookie})")
            }
            ExtentBeyondRequest { cookie } => write!(
                f,
                "block status extent beyond its request (cookie {cookie})"
            ),
            UnknownContext { cookie, id } => write!(
                f,
                "block status for unselected context {id} (cookie {cookie})"
            ),
            DuplicateStatus { cookie, id } => write!(
                f,
                "two block status chunks for context {id} (cookie {cookie})"
            ),
            ErrorMessageTooLong {
                cookie,
                message_length,
            } => write!(
                f,
                "error message of {message_length} bytes overruns its chunk (cookie {cookie})"
            ),
        }
    }
}

impl core::error::Error for Error {}

/// A request the client refused to send (nothing was queued).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// Not in the transmission phase (or after `disconnect`, or failed).
    NotReady,
    /// A write's payload has not been reported sent
    /// ([`payload_sent`](super::Client::payload_sent)).
    PayloadOwed,
    /// `payload_sent` without a write, or before its header was drained.
    NoPayloadOwed,
    /// Every cookie slot is in flight.
    TooManyInFlight,
    /// The header queue is full: drain `poll_transmit` first.
    TransmitFull,
    /// `offset + length` beyond the export.
    OutOfRange,
    /// Not a multiple of the export's minimum block size.
    Misaligned,
    /// Longer than the maximum payload, or than 32 bits without extended
    /// headers.
    TooLong,
    /// Length 0.
    ZeroLength,
    /// The export or the negotiated mode does not allow this command (read
    /// only, no flush, no contexts selected, ...).
    NotSupported,
    /// A flag the command or the export does not allow.
    InvalidFlags,
}

/// Why a request failed (the connection goes on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFailure {
    /// The server reported an error (unknown values are `EINVAL`).
    Server(Errno),
    /// The reply ended without error but did not cover the whole read, or
    /// lacked a status chunk for a selected context: a protocol error,
    /// never a success.
    Incomplete,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestError::NotReady => "the connection is not in transmission",
            RequestError::PayloadOwed => "the previous write's payload was not sent yet",
            RequestError::NoPayloadOwed => "no write payload is owed",
            RequestError::TooManyInFlight => "too many requests in flight",
            RequestError::TransmitFull => "the output queue is full",
            RequestError::OutOfRange => "beyond the end of the export",
            RequestError::Misaligned => "not aligned to the export's minimum block size",
            RequestError::TooLong => "longer than the export's maximum request",
            RequestError::ZeroLength => "zero length",
            RequestError::NotSupported => "not supported by the export",
            RequestError::InvalidFlags => "a flag the command or the export does not allow",
        })
    }
}

impl core::error::Error for RequestError {}

impl fmt::Display for RequestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestFailure::Server(e) => match e.name() {
                Some(n) => write!(f, "server error {n}"),
                None => write!(f, "server error {}", e.0),
            },
            RequestFailure::Incomplete => f.write_str("incomplete reply from the server"),
        }
    }
}

impl core::error::Error for RequestFailure {}

impl RequestFailure {
    /// The errno a block layer would report.
    pub fn errno(self) -> Errno {
        match self {
            RequestFailure::Server(e) => e,
            _ => Errno::EIO,
        }
    }
}

/// Map a wire error value onto the spec's set: unknown (and zero, which an
/// error must not be) are `EINVAL`, as the spec asks of clients.
pub(crate) fn errno_from_wire(v: u32) -> Errno {
    let e = Errno(v);
    if e.is_known() { e } else { Errno::EINVAL }
}
