//! The reply half of transmission: reply headers decoded by the `wire`
//! types and matched to the request they answer, and the decoder's state
//! between inputs. The chunk payloads are in [`super::chunks`].
//!
//! A reply header is taken together with the fixed part of its chunk (the
//! offset of `OFFSET_DATA`, the whole of `OFFSET_HOLE`, the context id of
//! a status chunk, an error chunk's value, message and offset), once all of
//! it is in the input; read data and status descriptors follow as they
//! come. Nothing is recorded for a unit until it is taken, so asking again
//! with more input repeats no effect.

use crate::wire::codec::Reader;
use crate::wire::headers::{
    ErrorChunk, ExtendedReply, OffsetData, OffsetHole, SimpleReply, StructuredReply,
};
use crate::wire::{
    ChunkType, CommandFlags, CommandType, EXTENDED_REPLY_MAGIC, Errno, HeaderMode, ReplyFlags,
    SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
};

use super::super::error::errno_from_wire;
use super::super::{Cookie, Error, Event, Out, RequestFailure};
use super::{Shutdown, Transmission};

/// Where the reply decoder is between inputs.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rx {
    /// At a reply header.
    Header,
    /// Read data: a successful simple reply's, or `OFFSET_DATA`'s.
    Data {
        slot: usize,
        offset: u64,
        remaining: u64,
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
pub(super) fn take(remaining: u64, available: usize) -> usize {
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
                        done,
                    };
                } else {
                    self.rx = Rx::Finish { slot, done };
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

    pub(super) fn cookie_of(&self, slot: usize) -> Cookie {
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

    pub(super) fn end_chunk(&mut self, slot: usize, done: bool) -> Option<Event<'static>> {
        self.rx = Rx::Header;
        done.then(|| self.complete(slot))
    }

    /// A reply header (and the fixed part of its chunk), once whole.
    fn header<'i>(&mut self, input: &'i [u8]) -> Result<Out<'i>, Error> {
        let Ok(magic) = Reader::new(input).u32("reply magic") else {
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
}
