//! What the client machine tells its frontend.

use crate::block::Extent;
use crate::wire::chunk::{descriptor_size, parse_descriptor};
use crate::wire::{Errno, HeaderMode, OptionType, ReplyType, TransmissionFlags};

use super::{Error, RequestFailure};

/// Identifies one request in flight; unique among requests in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cookie(pub u64);

impl From<Cookie> for u64 {
    fn from(c: Cookie) -> u64 {
        c.0
    }
}

/// `NBD_INFO_BLOCK_SIZE`, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSize {
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

/// The export as the handshake described it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Export {
    /// Size in bytes, below 2^63.
    pub size: u64,
    pub flags: TransmissionFlags,
    /// As advertised, if it was.
    pub block_size: Option<BlockSize>,
    /// Request and reply headers in use.
    pub mode: HeaderMode,
}

impl Export {
    /// Largest read or write the client sends: the advertised maximum, or
    /// the spec's default 32 MiB.
    pub fn max_payload(&self) -> u32 {
        match self.block_size {
            Some(b) => b.maximum,
            None => crate::wire::DEFAULT_MAX_PAYLOAD,
        }
    }

    /// Alignment requests must keep (1 if none was advertised).
    pub fn min_block(&self) -> u32 {
        self.block_size.map_or(1, |b| b.minimum)
    }

    /// Whether a transmission flag is set (and `HAS_FLAGS` with it).
    pub fn has(&self, flag: TransmissionFlags) -> bool {
        self.flags.contains(TransmissionFlags::HAS_FLAGS) && self.flags.contains(flag)
    }
}

/// Block status descriptors of one event, decoded as they are iterated
/// (whole descriptors only: the machine hands out no partial one).
#[derive(Clone, Debug)]
pub struct Extents<'i> {
    bytes: &'i [u8],
    wide: bool,
}

impl<'i> Extents<'i> {
    pub(crate) fn new(bytes: &'i [u8], wide: bool) -> Self {
        Self { bytes, wide }
    }
}

impl Iterator for Extents<'_> {
    type Item = Extent;

    fn next(&mut self) -> Option<Extent> {
        let (one, rest) = self.bytes.split_at_checked(descriptor_size(self.wide))?;
        self.bytes = rest;
        parse_descriptor(one, self.wide).ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.bytes.len() / descriptor_size(self.wide);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Extents<'_> {}

/// What the frontend must act on; see the [module docs](super). Bytes in
/// an event are borrowed from the input of the call that returned it.
#[derive(Debug)]
pub enum Event<'i> {
    // --- handshake -------------------------------------------------------
    /// `NBD_OPT_STARTTLS` was accepted: run the TLS handshake on the
    /// connection, then call [`tls_established`](super::Client::tls_established).
    /// Feed no bytes in between.
    StartTls,
    /// An option the client could do without was refused; negotiation goes
    /// on (structured replies, extended headers, metadata contexts, a
    /// `STARTTLS` under `TlsPolicy::Allow`, `GO` falling back to
    /// `EXPORT_NAME`). Contexts listed before a refusal must be disregarded.
    Refused {
        option: OptionType,
        reply: ReplyType,
        message: &'i str,
    },
    /// One `NBD_REP_SERVER` entry of `NBD_OPT_LIST`. A server may send
    /// without end: capping the count or time is the caller's policy.
    ExportListed { name: &'i str, description: &'i str },
    /// `NBD_REP_META_CONTEXT`: a context listed (`Mode::Info`, id is 0) or
    /// selected (`Mode::Go`).
    MetaContext { id: u32, name: &'i str },
    /// `NBD_INFO_NAME`: the export's canonical name.
    CanonicalName(&'i str),
    /// `NBD_INFO_DESCRIPTION`.
    Description(&'i str),
    /// `Mode::Info`: the export's details (more events may follow, then
    /// `Finished`).
    Info(Export),
    /// `Mode::Info`/`Mode::List` are done and `NBD_OPT_ABORT` is queued:
    /// send it, then close.
    Finished,
    /// Transmission phase entered; requests may be submitted.
    Ready(Export),

    // --- transmission ----------------------------------------------------
    /// Read data: copy `data` to `offset - request offset` in the read's
    /// buffer (validated to lie inside it and not overlap earlier data).
    ReadData {
        cookie: Cookie,
        offset: u64,
        data: &'i [u8],
    },
    /// `len` bytes at `offset` read as zeroes (validated like `ReadData`).
    ReadHole {
        cookie: Cookie,
        offset: u64,
        len: u32,
    },
    /// Some consecutive descriptors of one block status chunk for
    /// `context_id`, the first starting at `offset`. One chunk may come as
    /// several events.
    BlockStatus {
        cookie: Cookie,
        context_id: u32,
        offset: u64,
        extents: Extents<'i>,
    },
    /// An error chunk (the request will fail); `offset` for
    /// `NBD_REPLY_TYPE_ERROR_OFFSET`.
    ReplyError {
        cookie: Cookie,
        error: Errno,
        offset: Option<u64>,
        message: &'i str,
    },
    /// The request is over; its cookie is free again. A read is `Ok` only
    /// if every byte was delivered by `ReadData`/`ReadHole`.
    Completed {
        cookie: Cookie,
        result: Result<(), RequestFailure>,
    },
    /// The server answered `NBD_ESHUTDOWN`: stop submitting, let in-flight
    /// requests finish, then [`disconnect`](super::Client::disconnect).
    /// Reported once.
    ServerShutdown,

    // --- end -------------------------------------------------------------
    /// The connection must end: send what `poll_transmit` still holds (an
    /// `NBD_OPT_ABORT` when the client ends the handshake by choice), then
    /// close. Reported once; later input is ignored.
    Failed(Error),
}

/// Result of one [`Client::handle_input`](super::Client::handle_input) call.
#[derive(Debug)]
#[must_use = "the consumed bytes must be dropped and the event acted on"]
pub struct Progress<'i> {
    pub consumed: usize,
    pub event: Option<Event<'i>>,
}
