//! The plan of a read reply: which chunks, data or hole, in which order.
//!
//! Both frontends send reads through this one planner, so both follow the
//! same rules: a simple reply (or `NBD_CMD_FLAG_DF`) is one data chunk;
//! otherwise zero runs of at least [`MIN_HOLE`] bytes become
//! `OFFSET_HOLE` chunks, and everything else data chunks no longer than
//! the frontend asks for (a streaming frontend sizes them to its socket
//! buffer; a buffering one takes whole runs). Reads shorter than
//! [`SPARSE_READ_MIN`] are not worth asking the device for holes.
//!
//! ```
//! use blockwire_core::block::Extent;
//! use blockwire_core::server::{Command, ReadChunk, ReadReply, ReplyEncoder, Request};
//! use blockwire_core::wire::HeaderMode;
//!
//! let req = Request { cookie: 1, command: Command::Read { offset: 0, len: 1 << 20, no_fragment: false } };
//! let mut plan = ReadReply::new(&req, ReplyEncoder::new(HeaderMode::Structured), true).unwrap();
//! // The device: data in the first 64 KiB, zeroes after.
//! let status = |pos: u64, max: u64| if pos < 65536 { Extent::new((65536 - pos).min(max), 0) } else { Extent::new(max, 3) };
//! let first = plan.next_chunk(u64::MAX, status).unwrap();
//! assert!(matches!(first, ReadChunk::Data { offset: 0, len: 65536, .. }));
//! let second = plan.next_chunk(u64::MAX, status).unwrap();
//! assert!(matches!(second, ReadChunk::Hole { offset: 65536, .. }));
//! assert!(plan.next_chunk(u64::MAX, status).is_none());
//! ```

use super::reply::{ReplyEncoder, ReplyHeader, ReplyTo};
use super::{Command, Request};
use crate::block::Extent;
use crate::block::contract::STATE_ZERO;

/// Zero runs shorter than this are sent as data: a hole chunk costs a
/// header, and tiny ones only fragment the reply.
pub const MIN_HOLE: u64 = 4096;
/// Reads shorter than this are sent as data without a status lookup.
pub const SPARSE_READ_MIN: u64 = 64 << 10;
/// Extents one data chunk is assembled from at most, so a device that
/// answers in tiny pieces cannot make one step walk a whole request.
const MAX_EXTENTS_PER_STEP: u32 = 64;

/// One piece of a read reply.
#[derive(Clone, Copy, Debug)]
pub enum ReadChunk {
    /// Send `header`, then `len` bytes of the export from `offset`.
    Data {
        header: ReplyHeader,
        offset: u64,
        len: u32,
    },
    /// Send `header` alone: `len` bytes at `offset` read as zeroes.
    Hole {
        header: ReplyHeader,
        offset: u64,
        len: u32,
    },
    /// Send `header` alone: the whole reply of a zero-length read.
    Empty(ReplyHeader),
}

impl ReadChunk {
    pub fn header(&self) -> &ReplyHeader {
        match self {
            ReadChunk::Data { header, .. }
            | ReadChunk::Hole { header, .. }
            | ReadChunk::Empty(header) => header,
        }
    }
}

/// Where a read reply stands. A few words: the data is never held here.
#[derive(Clone, Copy, Debug)]
pub struct ReadReply {
    to: ReplyTo,
    encoder: ReplyEncoder,
    pos: u64,
    end: u64,
    /// One data chunk for everything.
    whole: bool,
    started: bool,
}

impl ReadReply {
    /// The plan for `req`, `None` if it is not a read. `may_have_holes`
    /// is the device's word that a status lookup can find zero runs (a
    /// device that never has any saves the lookup).
    pub fn new(req: &Request, encoder: ReplyEncoder, may_have_holes: bool) -> Option<Self> {
        let Command::Read {
            offset,
            len,
            no_fragment,
        } = req.command
        else {
            return None;
        };
        let len = u64::from(len);
        Some(Self {
            to: req.into(),
            encoder,
            pos: offset,
            end: offset + len,
            whole: !encoder.supports_holes()
                || no_fragment
                || !may_have_holes
                || len < SPARSE_READ_MIN,
            started: false,
        })
    }

    /// Whether [`next_chunk`](Self::next_chunk) will ask for status (if
    /// not, its `status` argument is never called).
    pub fn wants_status(&self) -> bool {
        !self.whole
    }

    /// Everything was planned.
    pub fn is_done(&self) -> bool {
        self.started && self.pos >= self.end
    }

    /// Export bytes still to plan.
    pub fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    /// The next chunk, `None` once the reply is complete.
    ///
    /// `status(pos, max)` answers the first `base:allocation` extent at
    /// `pos` (at most `max` long; a length of 0 counts as 1 byte of data).
    /// `max_data` caps a data chunk's length (at least 1 byte is planned);
    /// it is ignored where the reply must be one chunk.
    pub fn next_chunk(
        &mut self,
        max_data: u64,
        mut status: impl FnMut(u64, u64) -> Extent,
    ) -> Option<ReadChunk> {
        if self.started && self.pos >= self.end {
            return None;
        }
        self.started = true;
        let remaining = self.end - self.pos;
        if remaining == 0 {
            return Some(ReadChunk::Empty(self.encoder.ok(self.to)));
        }
        if self.whole {
            // Reads are at most the maximum payload, which fits 32 bits.
            let len = remaining as u32;
            let header = self.encoder.data(self.to, self.pos, len, true);
            let offset = self.pos;
            self.pos = self.end;
            return Some(ReadChunk::Data {
                header,
                offset,
                len,
            });
        }
        let run = status(self.pos, remaining);
        let run_len = run.length.clamp(1, remaining);
        if run.flags & STATE_ZERO != 0 && run_len >= MIN_HOLE.min(remaining) {
            let len = run_len as u32;
            let offset = self.pos;
            self.pos += run_len;
            let done = self.pos == self.end;
            if let Some(header) = self.encoder.hole(self.to, offset, len, done) {
                return Some(ReadChunk::Hole {
                    header,
                    offset,
                    len,
                });
            }
        }
        // Data: this run, and following data or short zero runs, up to
        // the cap.
        let cap = max_data.clamp(1, remaining);
        let mut len = run_len.min(cap);
        let mut steps = 1;
        while len < cap && steps < MAX_EXTENTS_PER_STEP {
            let next = status(self.pos + len, remaining - len);
            let next_len = next.length.clamp(1, remaining - len);
            if next.flags & STATE_ZERO != 0 && next_len >= MIN_HOLE.min(remaining - len) {
                break;
            }
            len = (len + next_len).min(cap);
            steps += 1;
        }
        let offset = self.pos;
        self.pos += len;
        let done = self.pos == self.end;
        let len = len as u32;
        Some(ReadChunk::Data {
            header: self.encoder.data(self.to, offset, len, done),
            offset,
            len,
        })
    }
}

/// A `status` answer for [`ReadReply::next_chunk`] from extents a
/// buffering frontend fetched up front (in order, from `start`). Positions
/// asked must not go backwards, as `next_chunk` never does.
pub fn status_from(extents: &[Extent], start: u64) -> impl FnMut(u64, u64) -> Extent + '_ {
    let mut i = 0;
    let mut at = start;
    move |pos, max| {
        while let Some(e) = extents.get(i) {
            let end = at.saturating_add(e.length);
            if pos < end {
                return Extent::new((end - pos).min(max), e.flags);
            }
            at = end;
            i += 1;
        }
        // Past what the device described: data, always a safe answer.
        Extent::new(max, 0)
    }
}
