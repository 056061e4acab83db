//! The reply half of transmission: reply headers and chunk payloads decoded
//! by the `wire` types, each checked against the request it answers before
//! anything of it reaches the frontend.
//!
//! A reply header is taken together with the fixed part of its chunk (the
//! offset of `OFFSET_DATA`, the whole of `OFFSET_HOLE`, the context id of
//! a status chunk, an error chunk's value, message and offset), once all of
//! it is in the input; read data and status descriptors follow as they
//! come. Nothing is recorded for a unit until it is taken, so asking again
//! with more input repeats no effect.

use crate::block::Extent;
use crate::wire::chunk::{ErrorPayload, Hole, StatusHead, descriptor_size, parse_descriptor};
use crate::wire::codec::Reader;
use crate::wire::headers::{
    ErrorChunk, ExtendedReply, OffsetData, OffsetHole, SimpleReply, StructuredReply,
};
use crate::wire::{
    ChunkType, CommandFlags, CommandType, EXTENDED_REPLY_MAGIC, Errno, HeaderMode, MAX_STRING,
    ReplyFlags, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
};

use super::super::error::errno_from_wire;
use super::super::{Cookie, Error, Event, Extents, Out, RequestFailure};
use super::{Shutdown, Transmission};

/// Where the reply decoder is between inputs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rx {
    /// At a reply header.
    Header,
    /// Read data: a successful simple reply's, or `OFFSET_DATA`'s.
    /// `deliver` is false for data that is dropped (a read whose range
    /// table is full has failed already).
    Data {
        slot: usize,
        offset: u64,
        remaining: u64,
        deliver: bool,
        done: bool,
    },
    /// A status chunk's descriptors; `sum` is the length described so far.
    Status {
        slot: usize,
        context_id: u32,
        remaining: u64,
        wide: bool,
        sum: u64,
        done: bool,
    },
    /// The rest of a chunk, unread (an error chunk's undefined tail).
    Skip {
        slot: usize,
        remaining: u64,
        done: bool,
    },
    /// A chunk ended with an event; the request completes next if `done`.
    Finish { slot: usize, done: bool },
}

/// One chunk header, whatever its form.
#[derive(Clone, Copy, Debug)]
struct ChunkHead {
    flags: u16,
    chunk: ChunkType,
    cookie: u64,
    /// Extended headers repeat the request's offset.
    offset: Option<u64>,
    len: u64,
}

/// Length of a slice of `u64` bytes, clamped to what is at hand.
fn take(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

impl<const N: usize> Transmission<N> {
    pub(super) fn decode<'i>(&mut self, input: &'i [u8]) -> Result<Out<'i>, Error> {
        match self.rx {
            Rx::Header => self.header(input),
            Rx::Data {
                slot,
                offset,
                remaining,
                deliver,
                done,
            } => {
                let k = take(remaining, input.len());
                if k == 0 {
                    return Ok(Out::NEED_MORE);
                }
                let left = remaining - k as u64;
                if left > 0 {
                    self.rx = Rx::Data {
                        slot,
                        offset: offset + k as u64,
                        remaining: left,
                        deliver,
                        done,
                    };
                } else if deliver {
                    self.rx = Rx::Finish { slot, done };
                } else {
                    return Ok(Out::maybe(k, self.end_chunk(slot, done)));
                }
                if !deliver {
                    return Ok(Out::took(k));
                }
                Ok(Out::event(
                    k,
                    Event::ReadData {
                        cookie: self.cookie_of(slot),
                        offset,
                        data: input.get(..k).unwrap_or(&[]),
                    },
                ))
            }
            Rx::Status {
                slot,
                context_id,
                remaining,
                wide,
                sum,
                done,
            } => self.descriptors(input, slot, context_id, remaining, wide, sum, done),
            Rx::Skip {
                slot,
                remaining,
                done,
            } => {
                let k = take(remaining, input.len());
                if k as u64 == remaining {
                    return Ok(Out::maybe(k, self.end_chunk(slot, done)));
                }
                if k == 0 {
                    return Ok(Out::NEED_MORE);
                }
                self.rx = Rx::Skip {
                    slot,
                    remaining: remaining - k as u64,
                    done,
                };
                Ok(Out::took(k))
            }
            Rx::Finish { slot, done } => Ok(Out::maybe(0, self.end_chunk(slot, done))),
        }
    }

    fn cookie_of(&self, slot: usize) -> Cookie {
        Cookie(self.inflight.get(slot).map_or(0, |s| s.cookie))
    }

    /// The request is over: free its slot and report its outcome.
    fn complete(&mut self, slot: usize) -> Event<'static> {
        let cookie = self.cookie_of(slot);
        let result = self
            .inflight
            .get(slot)
            .map_or(Err(RequestFailure::Incomplete), |s| {
                s.result(self.contexts.len())
            });
        self.inflight.remove(slot);
        if result == Err(RequestFailure::Server(Errno::ESHUTDOWN)) && self.shutdown == Shutdown::No
        {
            self.shutdown = Shutdown::Owed;
        }
        Event::Completed { cookie, result }
    }

    fn end_chunk(&mut self, slot: usize, done: bool) -> Option<Event<'static>> {
        self.rx = Rx::Header;
        done.then(|| self.complete(slot))
    }

    /// A reply header (and the fixed part of its chunk), once whole.
    fn header<'i>(&mut self, input: &'i [u8]) -> Result<Out<'i>, Error> {
        let Some(magic) = input.first_chunk::<4>().map(|m| u32::from_be_bytes(*m)) else {
            return Ok(Out::NEED_MORE);
        };
        let mode = self.export.mode;
        let size = match (mode, magic) {
            (HeaderMode::Simple | HeaderMode::Structured, SIMPLE_REPLY_MAGIC) => SimpleReply::SIZE,
            (HeaderMode::Structured, STRUCTURED_REPLY_MAGIC) => StructuredReply::SIZE,
            (HeaderMode::Extended, EXTENDED_REPLY_MAGIC) => ExtendedReply::SIZE,
            _ => return Err(Error::BadReplyMagic { found: magic }),
        };
        let mut r = Reader::new(input);
        let head = match magic {
            SIMPLE_REPLY_MAGIC => {
                let Ok(h) = r.header::<SimpleReply>("simple reply") else {
                    return Ok(Out::NEED_MORE);
                };
                return self.simple_reply(h.cookie.get(), h.error.get());
            }
            STRUCTURED_REPLY_MAGIC => {
                let Ok(h) = r.header::<StructuredReply>("structured reply") else {
                    return Ok(Out::NEED_MORE);
                };
                ChunkHead {
                    flags: h.flags.get(),
                    chunk: ChunkType(h.chunk_type.get()),
                    cookie: h.cookie.get(),
                    offset: None,
                    len: u64::from(h.length.get()),
                }
            }
            _ => {
                let Ok(h) = r.header::<ExtendedReply>("extended reply") else {
                    return Ok(Out::NEED_MORE);
                };
                ChunkHead {
                    flags: h.flags.get(),
                    chunk: ChunkType(h.chunk_type.get()),
                    cookie: h.cookie.get(),
                    offset: Some(h.offset.get()),
                    len: h.length.get(),
                }
            }
        };
        self.chunk(head, size, r.rest())
    }

    fn simple_reply<'i>(&mut self, cookie: u64, error: u32) -> Result<Out<'i>, Error> {
        let slot = self
            .inflight
            .find(cookie)
            .ok_or(Error::UnknownCookie { cookie })?;
        let mode = self.export.mode;
        let s = self
            .inflight
            .get_mut(slot)
            .ok_or(Error::UnknownCookie { cookie })?;
        if s.command == CommandType::READ {
            if mode != HeaderMode::Simple {
                return Err(Error::SimpleReplyToRead { cookie });
            }
            if error == 0 {
                // The whole read's data follows, in order.
                s.cover_whole();
                self.rx = Rx::Data {
                    slot,
                    offset: s.offset,
                    remaining: s.length,
                    deliver: true,
                    done: true,
                };
                return Ok(Out::took(SimpleReply::SIZE));
            }
        }
        if error != 0 {
            s.fail(RequestFailure::Server(errno_from_wire(error)));
        }
        Ok(Out::event(SimpleReply::SIZE, self.complete(slot)))
    }

    /// A chunk header of `size` bytes, and `payload`, what follows it in
    /// the input.
    fn chunk<'i>(
        &mut self,
        head: ChunkHead,
        size: usize,
        payload: &'i [u8],
    ) -> Result<Out<'i>, Error> {
        let ChunkHead {
            flags,
            chunk,
            cookie,
            offset,
            len,
        } = head;
        let slot = self
            .inflight
            .find(cookie)
            .ok_or(Error::UnknownCookie { cookie })?;
        let s = self
            .inflight
            .get(slot)
            .ok_or(Error::UnknownCookie { cookie })?;
        if offset.is_some_and(|o| o != s.offset) {
            return Err(Error::ReplyOffsetMismatch { cookie });
        }
        if len > self.max_chunk {
            return Err(Error::ChunkTooLong {
                cookie,
                length: len,
            });
        }
        let done = ReplyFlags::from_bits_retain(flags).contains(ReplyFlags::DONE);
        let malformed = Error::MalformedChunk { cookie, chunk };
        let read = s.command == CommandType::READ;
        let status = s.command == CommandType::BLOCK_STATUS;
        let content = chunk == ChunkType::OFFSET_DATA || chunk == ChunkType::OFFSET_HOLE;
        if content && read && s.flags.contains(CommandFlags::DF) && s.content_chunks > 0 {
            return Err(Error::FragmentedDf { cookie });
        }
        let extended = self.export.mode == HeaderMode::Extended;
        match chunk {
            ChunkType::NONE => {
                if len != 0 || !done {
                    return Err(malformed);
                }
                Ok(Out::event(size, self.complete(slot)))
            }
            ChunkType::OFFSET_DATA if read => {
                if len <= OffsetData::SIZE as u64 {
                    return Err(malformed);
                }
                self.data_head(slot, len, done, size, payload)
            }
            ChunkType::OFFSET_HOLE if read => {
                if len != OffsetHole::SIZE as u64 {
                    return Err(malformed);
                }
                self.hole(slot, done, size, payload)
            }
            ChunkType::BLOCK_STATUS if status && !extended => {
                if len < 12 || (len - 4) % 8 != 0 {
                    return Err(malformed);
                }
                self.status_head(slot, len, false, done, size, payload)
            }
            ChunkType::BLOCK_STATUS_EXT if status && extended => {
                if len < 24 || (len - 8) % 16 != 0 {
                    return Err(malformed);
                }
                self.status_head(slot, len, true, done, size, payload)
            }
            t if t.is_error() => {
                if len < ErrorChunk::SIZE as u64 {
                    return Err(malformed);
                }
                self.error_chunk(slot, chunk, len, done, size, payload)
            }
            _ => Err(Error::UnexpectedChunk {
                cookie,
                chunk,
                command: s.command,
            }),
        }
    }

    /// `OFFSET_DATA`: its offset, checked; the data follows as it comes.
    fn data_head<'i>(
        &mut self,
        slot: usize,
        len: u64,
        done: bool,
        size: usize,
        payload: &'i [u8],
    ) -> Result<Out<'i>, Error> {
        let Ok(d) = Reader::new(payload).header::<OffsetData>("data offset") else {
            return Ok(Out::NEED_MORE);
        };
        let offset = d.offset.get();
        let cookie = self.cookie_of(slot).0;
        let length = len - OffsetData::SIZE as u64;
        let s = self
            .inflight
            .get_mut(slot)
            .ok_or(Error::UnknownCookie { cookie })?;
        if !s.contains(offset, length) {
            return Err(Error::ChunkOutOfRange {
                cookie,
                offset,
                length,
            });
        }
        let was_fragmented = s.failure == Some(RequestFailure::Fragmented);
        let fits = s
            .cover(offset, offset + length)
            .map_err(|()| Error::ChunkOverlap {
                cookie,
                offset,
                length,
            })?;
        s.content_chunks = s.content_chunks.saturating_add(1);
        self.rx = Rx::Data {
            slot,
            offset,
            remaining: length,
            deliver: fits && !was_fragmented,
            done,
        };
        Ok(Out::took(size + OffsetData::SIZE))
    }

    /// `OFFSET_HOLE`, whole.
    fn hole<'i>(
        &mut self,
        slot: usize,
        done: bool,
        size: usize,
        payload: &'i [u8],
    ) -> Result<Out<'i>, Error> {
        let Some(bytes) = payload.get(..OffsetHole::SIZE) else {
            return Ok(Out::NEED_MORE);
        };
        let cookie = self.cookie_of(slot).0;
        let h = Hole::parse(bytes).map_err(|_| Error::MalformedChunk {
            cookie,
            chunk: ChunkType::OFFSET_HOLE,
        })?;
        let (offset, length) = (h.offset, u64::from(h.length));
        if length == 0 {
            return Err(Error::EmptyHole { cookie });
        }
        let s = self
            .inflight
            .get_mut(slot)
            .ok_or(Error::UnknownCookie { cookie })?;
        if !s.contains(offset, length) {
            return Err(Error::ChunkOutOfRange {
                cookie,
                offset,
                length,
            });
        }
        let was_fragmented = s.failure == Some(RequestFailure::Fragmented);
        let fits = s
            .cover(offset, offset + length)
            .map_err(|()| Error::ChunkOverlap {
                cookie,
                offset,
                length,
            })?;
        s.content_chunks = s.content_chunks.saturating_add(1);
        let consumed = size + OffsetHole::SIZE;
        if !fits || was_fragmented {
            return Ok(Out::maybe(consumed, self.end_chunk(slot, done)));
        }
        self.rx = Rx::Finish { slot, done };
        Ok(Out::event(
            consumed,
            Event::ReadHole {
                cookie: Cookie(cookie),
                offset,
                len: h.length,
            },
        ))
    }

    /// A status chunk's context id (and count); the descriptors follow.
    fn status_head<'i>(
        &mut self,
        slot: usize,
        len: u64,
        wide: bool,
        done: bool,
        size: usize,
        payload: &'i [u8],
    ) -> Result<Out<'i>, Error> {
        let head_size = StatusHead::size(wide);
        let Some(bytes) = payload.get(..head_size) else {
            return Ok(Out::NEED_MORE);
        };
        let cookie = self.cookie_of(slot).0;
        let chunk = if wide {
            ChunkType::BLOCK_STATUS_EXT
        } else {
            ChunkType::BLOCK_STATUS
        };
        let malformed = Error::MalformedChunk { cookie, chunk };
        let h = StatusHead::parse(bytes, wide).map_err(|_| malformed)?;
        let per = descriptor_size(wide) as u64;
        let count = match h.count {
            Some(count) => {
                let count = u64::from(count);
                if count == 0 || count * per + head_size as u64 != len {
                    return Err(malformed);
                }
                count
            }
            None => (len - head_size as u64) / per,
        };
        let index = self
            .contexts
            .iter()
            .position(|&(id, _)| id == h.context_id)
            .ok_or(Error::UnknownContext {
                cookie,
                id: h.context_id,
            })?;
        let s = self
            .inflight
            .get_mut(slot)
            .ok_or(Error::UnknownCookie { cookie })?;
        if s.flags.contains(CommandFlags::REQ_ONE) && count != 1 {
            return Err(malformed);
        }
        let bit = 1u32 << index;
        if s.contexts_seen & bit != 0 {
            return Err(Error::DuplicateStatus {
                cookie,
                id: h.context_id,
            });
        }
        s.contexts_seen |= bit;
        self.rx = Rx::Status {
            slot,
            context_id: h.context_id,
            remaining: count,
            wide,
            sum: 0,
            done,
        };
        Ok(Out::took(size + head_size))
    }

    /// As many whole descriptors as the input holds, checked and handed
    /// out in one event.
    #[allow(clippy::too_many_arguments)]
    fn descriptors<'i>(
        &mut self,
        input: &'i [u8],
        slot: usize,
        context_id: u32,
        remaining: u64,
        wide: bool,
        sum: u64,
        done: bool,
    ) -> Result<Out<'i>, Error> {
        let per = descriptor_size(wide);
        let n = take(remaining, input.len() / per);
        if n == 0 {
            return Ok(Out::NEED_MORE);
        }
        let bytes = input.get(..n * per).unwrap_or(&[]);
        let s = self.inflight.get(slot).ok_or(Error::UnknownCookie {
            cookie: self.cookie_of(slot).0,
        })?;
        let cookie = Cookie(s.cookie);
        let req_one = s.flags.contains(CommandFlags::REQ_ONE);
        let mut total = sum;
        for d in bytes.chunks_exact(per) {
            let e = parse_descriptor(d, wide).unwrap_or(Extent::new(0, 0));
            if e.length == 0 {
                return Err(Error::EmptyExtent { cookie: cookie.0 });
            }
            // Every descriptor but the first starts inside the request;
            // with REQ_ONE none exceeds it.
            if (total > 0 && total >= s.length) || (req_one && e.length > s.length) {
                return Err(Error::ExtentBeyondRequest { cookie: cookie.0 });
            }
            total = total.saturating_add(e.length);
        }
        let offset = s.offset.saturating_add(sum);
        let left = remaining - n as u64;
        self.rx = if left == 0 {
            Rx::Finish { slot, done }
        } else {
            Rx::Status {
                slot,
                context_id,
                remaining: left,
                wide,
                sum: total,
                done,
            }
        };
        Ok(Out::event(
            bytes.len(),
            Event::BlockStatus {
                cookie,
                context_id,
                offset,
                extents: Extents::new(bytes, wide),
            },
        ))
    }

    /// An error chunk's value, message and (`ERROR_OFFSET`) offset, whole.
    fn error_chunk<'i>(
        &mut self,
        slot: usize,
        chunk: ChunkType,
        len: u64,
        done: bool,
        size: usize,
        payload: &'i [u8],
    ) -> Result<Out<'i>, Error> {
        let Ok(e) = Reader::new(payload).header::<ErrorChunk>("error chunk") else {
            return Ok(Out::NEED_MORE);
        };
        let cookie = self.cookie_of(slot).0;
        let with_offset = chunk == ChunkType::ERROR_OFFSET;
        let fixed = ErrorChunk::SIZE + if with_offset { 8 } else { 0 };
        if len < fixed as u64 {
            return Err(Error::MalformedChunk { cookie, chunk });
        }
        let message_length = e.message_length.get();
        let message_len = usize::from(message_length);
        if u64::from(message_length) > len - fixed as u64 || message_len > MAX_STRING {
            return Err(Error::ErrorMessageTooLong {
                cookie,
                message_length,
            });
        }
        let Some(bytes) = payload.get(..fixed + message_len) else {
            return Ok(Out::NEED_MORE);
        };
        // Unknown error types share the prefix; their tail is skipped.
        let p = ErrorPayload::parse(bytes, chunk)
            .map_err(|_| Error::MalformedChunk { cookie, chunk })?;
        let error = errno_from_wire(p.error);
        let s = self
            .inflight
            .get_mut(slot)
            .ok_or(Error::UnknownCookie { cookie })?;
        let mut offset = p.offset;
        if let Some(o) = offset {
            let ranged = matches!(
                s.command,
                CommandType::READ
                    | CommandType::WRITE
                    | CommandType::TRIM
                    | CommandType::CACHE
                    | CommandType::WRITE_ZEROES
                    | CommandType::BLOCK_STATUS
            );
            if !ranged {
                // ERROR_OFFSET is not valid for this command: an
                // unexpected error chunk still fails the request, but its
                // offset means nothing and is not passed on.
                offset = None;
            } else if !s.contains(o, 1) {
                return Err(Error::ChunkOutOfRange {
                    cookie,
                    offset: o,
                    length: 1,
                });
            }
        }
        s.fail(RequestFailure::Server(error));
        let rest = len - bytes.len() as u64;
        self.rx = if rest > 0 {
            Rx::Skip {
                slot,
                remaining: rest,
                done,
            }
        } else {
            Rx::Finish { slot, done }
        };
        Ok(Out::event(
            size + bytes.len(),
            Event::ReplyError {
                cookie: Cookie(cookie),
                error,
                offset,
                message: super::super::text(p.message),
            },
        ))
    }
}
