//! Encoding transmission-phase replies.
//!
//! A [`ReplyEncoder`] is `Copy` and holds only the negotiated header mode,
//! so a frontend can encode replies on whichever task completes the I/O,
//! in any order. Read data is never copied here: the encoder returns the
//! header, and the frontend sends its own buffer right after it (one
//! vectored write). What a read reply is made of is planned by
//! [`ReadReply`](super::ReadReply), and a block-status reply is assembled
//! by [`ReplyEncoder::block_status`]; a frontend never lays out reply bytes.

use core::fmt;

use zerocopy::IntoBytes;

use super::Request;
use crate::block::Extent;
use crate::block::contract::{BlockError, MAX_EXTENT_LEN_32, StatusQuery};
use crate::wire::chunk::{ErrorPayload, Hole, StatusHead, descriptor_size, emit_descriptor};
use crate::wire::codec::{Overflow, Sink};
use crate::wire::headers::{ErrorChunk, ExtendedReply, OffsetData, SimpleReply, StructuredReply};
use crate::wire::{
    ChunkType, CommandType, EXTENDED_REPLY_MAGIC, Errno, HeaderMode, MAX_EXTENTS_PER_CHUNK,
    ReplyFlags, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
};

/// Longest header this module emits: an extended header plus the 8-byte
/// offset of `OFFSET_DATA`, or the 12-byte payload of `OFFSET_HOLE`.
pub const MAX_REPLY_HEADER: usize = ExtendedReply::SIZE + 12;
/// Longest error message the machine puts in an error chunk.
pub const MAX_ERROR_MESSAGE: usize = 120;

/// Who a reply answers: enough of a request to address its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    pub cookie: u64,
    pub offset: u64,
    pub kind: CommandType,
}

impl From<&Request> for ReplyTo {
    fn from(r: &Request) -> Self {
        Self {
            cookie: r.cookie,
            offset: r.offset(),
            kind: r.kind(),
        }
    }
}

impl From<Request> for ReplyTo {
    fn from(r: Request) -> Self {
        (&r).into()
    }
}

/// Why a request failed, as the frontend reports it: the NBD error and a
/// message for the client (truncated to [`MAX_ERROR_MESSAGE`] bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault<'m> {
    pub errno: Errno,
    pub message: &'m str,
}

impl<'m> Fault<'m> {
    pub const fn new(errno: Errno, message: &'m str) -> Self {
        Self { errno, message }
    }
}

/// A device's failure as the client is told it: its NBD error and its
/// message.
impl From<BlockError> for Fault<'static> {
    fn from(e: BlockError) -> Self {
        Self::new(Errno(e.nbd_errno()), e.message())
    }
}

impl fmt::Display for Fault<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.errno.name().unwrap_or("error");
        write!(f, "{name}: {}", self.message)
    }
}

/// A reply header (or a whole small reply) in a fixed buffer.
#[derive(Clone, Copy, Debug)]
pub struct ReplyHeader {
    buf: [u8; MAX_REPLY_HEADER],
    len: u8,
}

impl ReplyHeader {
    fn new() -> Self {
        Self {
            buf: [0; MAX_REPLY_HEADER],
            len: 0,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

/// Every header this module builds is sized by [`MAX_REPLY_HEADER`]; a
/// frame that does not fit is a bug in this module, caught by the tests.
impl Sink for ReplyHeader {
    fn room(&self) -> usize {
        MAX_REPLY_HEADER - self.len as usize
    }
    fn put(&mut self, bytes: &[u8]) -> Result<(), Overflow> {
        let start = self.len as usize;
        let dst = self
            .buf
            .get_mut(start..start + bytes.len())
            .ok_or(Overflow)?;
        dst.copy_from_slice(bytes);
        self.len += bytes.len() as u8;
        Ok(())
    }
}

/// A complete error reply, message included.
#[derive(Clone, Debug)]
pub struct ErrorReply {
    buf: heapless::Vec<u8, { ExtendedReply::SIZE + ErrorChunk::SIZE + MAX_ERROR_MESSAGE + 8 }>,
    errno: Errno,
    cookie: u64,
}

impl ErrorReply {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }
    pub fn errno(&self) -> Errno {
        self.errno
    }
    pub fn cookie(&self) -> u64 {
        self.cookie
    }
}

/// The whole reply of a request that carries no data: success or error.
#[derive(Clone, Debug)]
pub enum ShortReply {
    Ok(ReplyHeader),
    Error(ErrorReply),
}

impl ShortReply {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            ShortReply::Ok(h) => h.as_bytes(),
            ShortReply::Error(e) => e.as_bytes(),
        }
    }

    /// The error sent, if the reply is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            ShortReply::Ok(_) => None,
            ShortReply::Error(e) => Some(e.errno()),
        }
    }
}

/// Debug builds stop at a sizing bug; release builds send nothing rather
/// than a truncated frame (the connection then fails visibly).
fn sized(r: Result<(), Overflow>) {
    debug_assert!(r.is_ok(), "reply frame larger than its buffer");
}

/// Encodes replies in the session's negotiated header mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyEncoder {
    mode: HeaderMode,
}

impl ReplyEncoder {
    pub const fn new(mode: HeaderMode) -> Self {
        Self { mode }
    }

    pub const fn mode(&self) -> HeaderMode {
        self.mode
    }

    /// Whether holes can be sent as `OFFSET_HOLE` (else the frontend sends zeroes).
    pub const fn supports_holes(&self) -> bool {
        self.mode.structured()
    }

    fn chunk(&self, to: ReplyTo, flags: ReplyFlags, ty: ChunkType, payload: u64) -> ReplyHeader {
        let mut h = ReplyHeader::new();
        sized(self.chunk_into(&mut h, to, flags, ty, payload));
        h
    }

    fn chunk_into(
        &self,
        out: &mut impl Sink,
        to: ReplyTo,
        flags: ReplyFlags,
        ty: ChunkType,
        payload: u64,
    ) -> Result<(), Overflow> {
        match self.mode {
            HeaderMode::Extended => out.put(
                ExtendedReply {
                    magic: EXTENDED_REPLY_MAGIC.into(),
                    flags: flags.bits().into(),
                    chunk_type: ty.0.into(),
                    cookie: to.cookie.into(),
                    offset: to.offset.into(),
                    length: payload.into(),
                }
                .as_bytes(),
            ),
            // Only called for structured chunks, whose payloads here fit 32
            // bits (data chunks are bounded by the maximum payload, status
            // chunks by the descriptor limit).
            _ => out.put(
                StructuredReply {
                    magic: STRUCTURED_REPLY_MAGIC.into(),
                    flags: flags.bits().into(),
                    chunk_type: ty.0.into(),
                    cookie: to.cookie.into(),
                    length: u32::try_from(payload).map_err(|_| Overflow)?.into(),
                }
                .as_bytes(),
            ),
        }
    }

    fn simple(to: ReplyTo, error: Errno) -> ReplyHeader {
        let mut h = ReplyHeader::new();
        sized(
            h.put(
                SimpleReply {
                    magic: SIMPLE_REPLY_MAGIC.into(),
                    error: error.0.into(),
                    cookie: to.cookie.into(),
                }
                .as_bytes(),
            ),
        );
        h
    }

    fn done(done: bool) -> ReplyFlags {
        if done {
            ReplyFlags::DONE
        } else {
            ReplyFlags::empty()
        }
    }

    /// Header for `len` bytes of read data at export offset `offset`; the
    /// frontend sends exactly `len` bytes after it.
    ///
    /// In simple mode this is the whole reply's header, so it must cover the
    /// entire request and `done` is ignored. Frontends get these from
    /// [`ReadReply`](super::ReadReply), which keeps those rules.
    ///
    /// In structured mode `len` is at most `u32::MAX - 8`: the chunk's
    /// 32-bit length counts the offset too (the spec: larger reads "MUST
    /// be split"). `ReadReply`'s pieces are bounded by the maximum payload,
    /// far below; a larger `len` is a caller's bug, caught by a debug
    /// assertion.
    pub fn data(&self, to: impl Into<ReplyTo>, offset: u64, len: u32, done: bool) -> ReplyHeader {
        let to = to.into();
        if !self.mode.structured() {
            return Self::simple(to, Errno(0));
        }
        let mut h = self.chunk(
            to,
            Self::done(done),
            ChunkType::OFFSET_DATA,
            OffsetData::SIZE as u64 + len as u64,
        );
        sized(h.put(offset.to_be_bytes().as_slice()));
        h
    }

    /// An `OFFSET_HOLE` chunk; `None` in simple mode, where holes must be
    /// sent as zeroes.
    pub fn hole(
        &self,
        to: impl Into<ReplyTo>,
        offset: u64,
        len: u32,
        done: bool,
    ) -> Option<ReplyHeader> {
        if !self.mode.structured() || len == 0 {
            return None;
        }
        let hole = Hole {
            offset,
            length: len,
        };
        let mut h = self.chunk(to.into(), Self::done(done), ChunkType::OFFSET_HOLE, 12);
        sized(hole.emit(&mut h));
        Some(h)
    }

    /// The successful end of a reply: a simple reply, or a `NONE` chunk with
    /// `DONE` where a structured reply is required (reads and block status
    /// in structured mode, everything in extended mode).
    pub fn ok(&self, to: impl Into<ReplyTo>) -> ReplyHeader {
        let to = to.into();
        let structured_only = matches!(to.kind, CommandType::READ | CommandType::BLOCK_STATUS);
        match self.mode {
            HeaderMode::Simple => Self::simple(to, Errno(0)),
            HeaderMode::Structured if !structured_only => Self::simple(to, Errno(0)),
            _ => self.chunk(to, ReplyFlags::DONE, ChunkType::NONE, 0),
        }
    }

    /// The whole reply of a request that carries no data back.
    pub fn result(&self, to: impl Into<ReplyTo>, r: Result<(), Fault<'_>>) -> ShortReply {
        let to = to.into();
        match r {
            Ok(()) => ShortReply::Ok(self.ok(to)),
            Err(f) => ShortReply::Error(self.error(to, f.errno, f.message)),
        }
    }

    /// A final error reply: a simple reply in simple mode, else an `ERROR`
    /// chunk with `DONE` carrying `message` (truncated to
    /// [`MAX_ERROR_MESSAGE`] bytes at a character boundary).
    pub fn error(&self, to: impl Into<ReplyTo>, errno: Errno, message: &str) -> ErrorReply {
        self.error_chunk(to.into(), errno, message, None)
    }

    /// Like [`error`](Self::error) but as `ERROR_OFFSET` naming the failed
    /// offset, where structured replies allow it.
    pub fn error_at(
        &self,
        to: impl Into<ReplyTo>,
        errno: Errno,
        offset: u64,
        message: &str,
    ) -> ErrorReply {
        self.error_chunk(to.into(), errno, message, Some(offset))
    }

    fn error_chunk(
        &self,
        to: ReplyTo,
        errno: Errno,
        message: &str,
        offset: Option<u64>,
    ) -> ErrorReply {
        // An error value of zero would read as success.
        let errno = if errno.0 == 0 { Errno::EIO } else { errno };
        let mut out = ErrorReply {
            buf: heapless::Vec::new(),
            errno,
            cookie: to.cookie,
        };
        if !self.mode.structured() {
            sized(out.buf.put(Self::simple(to, errno).as_bytes()));
            return out;
        }
        let payload = ErrorPayload {
            error: errno.0,
            message: truncate(message, MAX_ERROR_MESSAGE).as_bytes(),
            offset,
        };
        let r = self
            .chunk_into(
                &mut out.buf,
                to,
                ReplyFlags::DONE,
                payload.chunk_type(),
                payload.len() as u64,
            )
            .and_then(|()| payload.emit(&mut out.buf));
        sized(r);
        out
    }

    /// The device query for one context of a block-status request: the
    /// request's range, `REQ_ONE`, at most `max_extents` descriptors, and
    /// extents no longer than this header mode can carry.
    pub fn status_query(&self, req: &Request, max_extents: u32) -> StatusQuery {
        let (req_one, max_len) = match req.command {
            super::Command::BlockStatus { req_one, .. } => (req_one, self.max_extent_len()),
            _ => (false, self.max_extent_len()),
        };
        StatusQuery::new(req.offset(), req.len())
            .req_one(req_one)
            .max_extents(max_extents.clamp(1, MAX_EXTENTS_PER_CHUNK as u32))
            .max_extent_len(max_len)
    }

    /// Longest extent one descriptor carries in this mode: 64 bits with
    /// extended headers, else 32 bits kept a multiple of 512.
    pub const fn max_extent_len(&self) -> u64 {
        match self.mode {
            HeaderMode::Extended => u64::MAX,
            _ => MAX_EXTENT_LEN_32,
        }
    }

    /// Bytes one block-status chunk of `n` descriptors takes.
    pub const fn status_chunk_len(&self, n: usize) -> usize {
        let wide = matches!(self.mode, HeaderMode::Extended);
        let head = if wide {
            ExtendedReply::SIZE
        } else {
            StructuredReply::SIZE
        };
        head + StatusHead::size(wide) + n * descriptor_size(wide)
    }

    /// Descriptors per context that fit `room` bytes of reply for a
    /// request with `contexts` contexts (at least 1: a context always gets
    /// one descriptor).
    pub const fn status_fit(&self, room: usize, contexts: u32) -> u32 {
        let share = room / if contexts == 0 { 1 } else { contexts as usize };
        let fixed = self.status_chunk_len(0);
        let each = self.status_chunk_len(1) - fixed;
        let n = share.saturating_sub(fixed) / each;
        if n == 0 {
            1
        } else if n > MAX_EXTENTS_PER_CHUNK {
            MAX_EXTENTS_PER_CHUNK as u32
        } else {
            n as u32
        }
    }

    /// Assembles a whole block-status reply into `out`: one chunk per
    /// context of the request, in ascending id order, the last with `DONE`.
    ///
    /// For each context, `answer(id, query, sink)` asks the device; the
    /// extents it pushes are collected in `scratch` (the frontend's
    /// storage; its capacity bounds the descriptors per chunk along with
    /// `max_extents` and the room `out` has), merged and clipped here. If
    /// `answer` fails, its error is returned and `out` holds a partial
    /// reply: the frontend sends [`result`](Self::result)`(Err(..))`
    /// instead. If `out` cannot hold one descriptor per context, nothing is
    /// asked and [`StatusError::NoRoom`] says so.
    pub fn block_status<E>(
        &self,
        req: &Request,
        max_extents: u32,
        scratch: &mut impl ExtentBuf,
        out: &mut impl Sink,
        mut answer: impl FnMut(u32, &StatusQuery, &mut dyn FnMut(Extent) -> bool) -> Result<(), E>,
    ) -> Result<(), StatusError<E>> {
        let super::Command::BlockStatus { contexts, .. } = req.command else {
            return Err(StatusError::NotBlockStatus);
        };
        if out.room() < contexts.len() as usize * self.status_chunk_len(1) {
            return Err(StatusError::NoRoom);
        }
        let fit = self
            .status_fit(out.room(), contexts.len())
            .min(max_extents)
            .min(scratch.capacity());
        let query = self.status_query(req, fit);
        let last = contexts.iter().last();
        for id in contexts.iter() {
            scratch.clear();
            answer(id, &query, &mut |e| {
                scratch.push(e) && scratch.len() < fit as usize
            })
            .map_err(StatusError::Device)?;
            sized(self.status_chunk(req, id, scratch.as_mut_slice(), Some(id) == last, out));
        }
        Ok(())
    }

    /// One block-status chunk for context `context_id` from `extents` (in
    /// order from the request's offset): zero-length extents skipped,
    /// neighbours with equal flags merged, lengths clipped to the request's
    /// end; one descriptor under `REQ_ONE`. If `extents` is empty, one
    /// descriptor with status 0 covers the request (always a safe answer).
    /// In structured mode the high 32 bits of each status are dropped: only
    /// contexts with 32-bit status may be negotiated without extended
    /// headers.
    fn status_chunk(
        &self,
        req: &Request,
        context_id: u32,
        extents: &mut [Extent],
        done: bool,
        out: &mut impl Sink,
    ) -> Result<(), Overflow> {
        let wide = self.mode == HeaderMode::Extended;
        let req_one = matches!(
            req.command,
            super::Command::BlockStatus { req_one: true, .. }
        );
        let want = req.len().max(1);
        let max_len = self.max_extent_len();
        let limit = if req_one { 1 } else { MAX_EXTENTS_PER_CHUNK };
        let count = merge_in_place(extents, want, max_len, limit);
        let n = count.max(1);
        if out.room() < self.status_chunk_len(n) {
            return Err(Overflow);
        }
        let payload = StatusHead::size(wide) + n * descriptor_size(wide);
        self.chunk_into(
            out,
            req.into(),
            Self::done(done),
            if wide {
                ChunkType::BLOCK_STATUS_EXT
            } else {
                ChunkType::BLOCK_STATUS
            },
            payload as u64,
        )?;
        StatusHead {
            context_id,
            count: wide.then_some(n as u32),
        }
        .emit(out)?;
        if count == 0 {
            return emit_descriptor(out, Extent::new(want.min(max_len), 0), wide);
        }
        extents[..count]
            .iter()
            .try_for_each(|e| emit_descriptor(out, *e, wide))
    }
}

/// Merges `extents` in place as descriptors will carry them: zero-length
/// extents dropped, neighbours with equal flags joined (up to `max_len`),
/// lengths clipped to `want` bytes in all, at most `limit` of them.
/// Returns how many of `extents` now hold the answer.
fn merge_in_place(extents: &mut [Extent], want: u64, max_len: u64, limit: usize) -> usize {
    let mut n = 0usize;
    let mut covered = 0u64;
    for i in 0..extents.len() {
        if covered >= want {
            break;
        }
        let e = extents[i];
        if e.length == 0 {
            continue;
        }
        let len = e.length.min(want - covered);
        covered += len;
        if n > 0 {
            let last = &mut extents[n - 1];
            if last.flags == e.flags && last.length.saturating_add(len) <= max_len {
                last.length += len;
                continue;
            }
        }
        if n == limit {
            break;
        }
        extents[n] = Extent::new(len, e.flags);
        n += 1;
    }
    n
}

/// Why [`ReplyEncoder::block_status`] built no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusError<E> {
    /// The device failed to answer; its error.
    Device(E),
    /// The output cannot hold one descriptor per context.
    NoRoom,
    /// The request is not a block-status request.
    NotBlockStatus,
}

impl<E: fmt::Display> fmt::Display for StatusError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusError::Device(e) => e.fmt(f),
            StatusError::NoRoom => f.write_str("block status reply larger than its buffer"),
            StatusError::NotBlockStatus => f.write_str("not a block status request"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> core::error::Error for StatusError<E> {}

impl<E> StatusError<E> {
    /// The NBD error for the client: the device's, or `EOVERFLOW` for a
    /// reply that cannot be built (the spec's answer for "too large").
    pub fn errno(&self, device: impl FnOnce(&E) -> Errno) -> Errno {
        match self {
            StatusError::Device(e) => device(e),
            StatusError::NoRoom => Errno::EOVERFLOW,
            StatusError::NotBlockStatus => Errno::EINVAL,
        }
    }
}

/// Frontend-owned storage for one context's extents while a block-status
/// chunk is assembled.
pub trait ExtentBuf {
    fn clear(&mut self);
    /// Store `e`; `false` if full.
    fn push(&mut self, e: Extent) -> bool;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn as_slice(&self) -> &[Extent];
    fn as_mut_slice(&mut self) -> &mut [Extent];
    /// Most extents it holds (`u32::MAX` for growable storage).
    fn capacity(&self) -> u32;
}

impl<const N: usize> ExtentBuf for heapless::Vec<Extent, N> {
    fn clear(&mut self) {
        heapless::Vec::clear(self)
    }
    fn push(&mut self, e: Extent) -> bool {
        heapless::Vec::push(self, e).is_ok()
    }
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    fn as_slice(&self) -> &[Extent] {
        self
    }
    fn as_mut_slice(&mut self) -> &mut [Extent] {
        self
    }
    fn capacity(&self) -> u32 {
        N.min(u32::MAX as usize) as u32
    }
}

#[cfg(any(test, feature = "alloc"))]
impl ExtentBuf for alloc::vec::Vec<Extent> {
    fn clear(&mut self) {
        alloc::vec::Vec::clear(self)
    }
    fn push(&mut self, e: Extent) -> bool {
        alloc::vec::Vec::push(self, e);
        true
    }
    fn len(&self) -> usize {
        alloc::vec::Vec::len(self)
    }
    fn as_slice(&self) -> &[Extent] {
        self
    }
    fn as_mut_slice(&mut self) -> &mut [Extent] {
        self
    }
    fn capacity(&self) -> u32 {
        u32::MAX
    }
}

/// `s` cut to at most `max` bytes without splitting a character.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
