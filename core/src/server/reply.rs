//! Encoding transmission-phase replies.
//!
//! A [`ReplyEncoder`] is `Copy` and holds only the negotiated header mode,
//! so a frontend can encode replies on whichever task completes the I/O,
//! in any order. Read data is never copied here: the encoder returns the
//! header, and the frontend sends its own buffer right after it (one
//! vectored write).

use zerocopy::IntoBytes;

use super::Request;
use crate::block::Extent;
use crate::wire::headers::{
    BlockStatusExtHeader, BlockStatusHeader, ErrorChunk, ExtendedReply, Extent32, Extent64,
    OffsetData, OffsetHole, SimpleReply, StructuredReply,
};
use crate::wire::{
    ChunkType, CommandType, EXTENDED_REPLY_MAGIC, Errno, HeaderMode, MAX_EXTENTS_PER_CHUNK,
    ReplyFlags, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
};

/// Longest header this module emits: an extended header plus the 8-byte
/// offset of `OFFSET_DATA`.
pub const MAX_REPLY_HEADER: usize = ExtendedReply::SIZE + OffsetData::SIZE + 4;
/// Longest error message the machine puts in an error chunk.
pub const MAX_ERROR_MESSAGE: usize = 120;

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

    fn push(&mut self, bytes: &[u8]) {
        let start = self.len as usize;
        self.buf[start..start + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len() as u8;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
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

    fn chunk(&self, req: &Request, flags: ReplyFlags, ty: ChunkType, payload: u64) -> ReplyHeader {
        let mut h = ReplyHeader::new();
        match self.mode {
            HeaderMode::Extended => h.push(
                ExtendedReply {
                    magic: EXTENDED_REPLY_MAGIC.into(),
                    flags: flags.bits().into(),
                    chunk_type: ty.0.into(),
                    cookie: req.cookie.into(),
                    offset: req.offset.into(),
                    length: payload.into(),
                }
                .as_bytes(),
            ),
            // Only called for structured chunks; payloads of chunks we build
            // fit 32 bits (data chunks are bounded by the maximum payload).
            _ => h.push(
                StructuredReply {
                    magic: STRUCTURED_REPLY_MAGIC.into(),
                    flags: flags.bits().into(),
                    chunk_type: ty.0.into(),
                    cookie: req.cookie.into(),
                    length: (payload.min(u32::MAX as u64) as u32).into(),
                }
                .as_bytes(),
            ),
        }
        h
    }

    fn simple(req: &Request, error: Errno) -> ReplyHeader {
        let mut h = ReplyHeader::new();
        h.push(
            SimpleReply {
                magic: SIMPLE_REPLY_MAGIC.into(),
                error: error.0.into(),
                cookie: req.cookie.into(),
            }
            .as_bytes(),
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
    /// entire request (`offset == req.offset`, `len == req.length`) and `done`
    /// is ignored.
    pub fn data(&self, req: &Request, offset: u64, len: u32, done: bool) -> ReplyHeader {
        if !self.mode.structured() {
            return Self::simple(req, Errno(0));
        }
        let mut h = self.chunk(
            req,
            Self::done(done),
            ChunkType::OFFSET_DATA,
            OffsetData::SIZE as u64 + len as u64,
        );
        h.push(
            OffsetData {
                offset: offset.into(),
            }
            .as_bytes(),
        );
        h
    }

    /// An `OFFSET_HOLE` chunk; `None` in simple mode, where holes must be
    /// sent as zeroes.
    pub fn hole(&self, req: &Request, offset: u64, len: u32, done: bool) -> Option<ReplyHeader> {
        if !self.mode.structured() || len == 0 {
            return None;
        }
        let mut h = self.chunk(
            req,
            Self::done(done),
            ChunkType::OFFSET_HOLE,
            OffsetHole::SIZE as u64,
        );
        h.push(
            OffsetHole {
                offset: offset.into(),
                length: len.into(),
            }
            .as_bytes(),
        );
        Some(h)
    }

    /// The successful end of a reply: a simple reply, or a `NONE` chunk with
    /// `DONE` where a structured reply is required (reads and block status
    /// in structured mode, everything in extended mode).
    pub fn ok(&self, req: &Request) -> ReplyHeader {
        let structured_only = matches!(req.command, CommandType::READ | CommandType::BLOCK_STATUS);
        match self.mode {
            HeaderMode::Simple => Self::simple(req, Errno(0)),
            HeaderMode::Structured if !structured_only => Self::simple(req, Errno(0)),
            _ => self.chunk(req, ReplyFlags::DONE, ChunkType::NONE, 0),
        }
    }

    /// A final error reply for `req`: a simple reply in simple mode, else an
    /// `ERROR` chunk with `DONE` carrying `message` (truncated to
    /// [`MAX_ERROR_MESSAGE`] bytes at a character boundary).
    pub fn error(&self, req: &Request, errno: Errno, message: &str) -> ErrorReply {
        self.error_chunk(req, errno, message, None)
    }

    /// Like [`error`](Self::error) but as `ERROR_OFFSET` naming the failed
    /// offset, where structured replies allow it.
    pub fn error_at(&self, req: &Request, errno: Errno, offset: u64, message: &str) -> ErrorReply {
        self.error_chunk(req, errno, message, Some(offset))
    }

    fn error_chunk(
        &self,
        req: &Request,
        errno: Errno,
        message: &str,
        offset: Option<u64>,
    ) -> ErrorReply {
        // An error value of zero would read as success.
        let errno = if errno.0 == 0 { Errno::EIO } else { errno };
        let mut out = ErrorReply {
            buf: heapless::Vec::new(),
            errno,
            cookie: req.cookie,
        };
        if !self.mode.structured() {
            let _ = out
                .buf
                .extend_from_slice(Self::simple(req, errno).as_bytes());
            return out;
        }
        let msg = truncate(message, MAX_ERROR_MESSAGE);
        let (ty, tail) = match offset {
            Some(_) => (ChunkType::ERROR_OFFSET, 8),
            None => (ChunkType::ERROR, 0),
        };
        let payload = (ErrorChunk::SIZE + msg.len() + tail) as u64;
        let h = self.chunk(req, ReplyFlags::DONE, ty, payload);
        let _ = out.buf.extend_from_slice(h.as_bytes());
        let _ = out.buf.extend_from_slice(
            ErrorChunk {
                error: errno.0.into(),
                message_length: (msg.len() as u16).into(),
            }
            .as_bytes(),
        );
        let _ = out.buf.extend_from_slice(msg.as_bytes());
        if let Some(off) = offset {
            let _ = out.buf.extend_from_slice(&off.to_be_bytes());
        }
        out
    }

    /// Encode one block-status chunk for context `context_id` into `out`,
    /// returning the bytes written, or `None` if `out` cannot hold even one
    /// descriptor.
    ///
    /// Extents are taken from `extents` in order starting at `req.offset`:
    /// zero-length extents are skipped, neighbours with equal flags merged,
    /// lengths clipped to the request's end; encoding stops at the request's
    /// end, after one descriptor under `REQ_ONE`, at 2^20 descriptors, or
    /// when `out` is full. If `extents` yields nothing, one descriptor with
    /// status 0 covers the request (always a safe answer). In structured
    /// mode the high 32 bits of each status are dropped: only contexts with
    /// 32-bit status may be negotiated without extended headers.
    pub fn block_status(
        &self,
        req: &Request,
        context_id: u32,
        extents: impl IntoIterator<Item = Extent>,
        done: bool,
        out: &mut [u8],
    ) -> Option<usize> {
        let ext = self.mode == HeaderMode::Extended;
        let (head, prefix, each) = if ext {
            (
                ExtendedReply::SIZE,
                BlockStatusExtHeader::SIZE,
                Extent64::SIZE,
            )
        } else {
            (
                StructuredReply::SIZE,
                BlockStatusHeader::SIZE,
                Extent32::SIZE,
            )
        };
        let room = out.len().checked_sub(head + prefix)? / each;
        if room == 0 {
            return None;
        }
        let want = req.length.max(1);
        let one = req.flags.contains(crate::wire::CommandFlags::REQ_ONE);
        let limit = room
            .min(MAX_EXTENTS_PER_CHUNK)
            .min(if one { 1 } else { usize::MAX });
        // In compact mode the request length is 32 bits, so clipped extents fit.
        let max_len: u64 = if ext { u64::MAX } else { u32::MAX as u64 };

        let mut written = 0usize;
        let mut covered = 0u64;
        let mut pending: Option<Extent> = None;
        let mut body = &mut out[head + prefix..];
        let emit = |e: Extent, body: &mut &mut [u8], written: &mut usize| {
            let slot = core::mem::take(body);
            let (dst, rest) = slot.split_at_mut(each);
            if ext {
                dst.copy_from_slice(
                    Extent64 {
                        length: e.length.into(),
                        flags: e.flags.into(),
                    }
                    .as_bytes(),
                );
            } else {
                dst.copy_from_slice(
                    Extent32 {
                        length: (e.length as u32).into(),
                        flags: (e.flags as u32).into(),
                    }
                    .as_bytes(),
                );
            }
            *body = rest;
            *written += 1;
        };
        for e in extents {
            if covered >= want || written >= limit {
                break;
            }
            if e.length == 0 {
                continue;
            }
            let len = e.length.min(want - covered);
            covered += len;
            match pending {
                Some(ref mut p)
                    if p.flags == e.flags && p.length.saturating_add(len) <= max_len =>
                {
                    p.length += len;
                }
                Some(p) => {
                    emit(p, &mut body, &mut written);
                    pending = Some(Extent::new(len, e.flags));
                }
                None => pending = Some(Extent::new(len, e.flags)),
            }
        }
        match pending {
            Some(p) if written < limit => emit(p, &mut body, &mut written),
            Some(_) => {}
            None => emit(Extent::new(want.min(max_len), 0), &mut body, &mut written),
        }

        let payload = prefix + written * each;
        let (ty, id_bytes) = if ext {
            (ChunkType::BLOCK_STATUS_EXT, {
                let mut b = [0u8; 8];
                b.copy_from_slice(
                    BlockStatusExtHeader {
                        context_id: context_id.into(),
                        count: (written as u32).into(),
                    }
                    .as_bytes(),
                );
                b
            })
        } else {
            (ChunkType::BLOCK_STATUS, {
                let mut b = [0u8; 8];
                b[..4].copy_from_slice(&context_id.to_be_bytes());
                b
            })
        };
        let h = self.chunk(req, Self::done(done), ty, payload as u64);
        out[..head].copy_from_slice(h.as_bytes());
        out[head..head + prefix].copy_from_slice(&id_bytes[..prefix]);
        Some(head + payload)
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
