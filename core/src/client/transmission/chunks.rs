//! The payloads of reply chunks, each taken whole (but read data and
//! descriptors, which stream) and checked against the request it answers:
//! content inside the read and not overlapping earlier content, status for
//! a selected context once per reply, error offsets inside the request.

use crate::block::Extent;
use crate::wire::chunk::{ErrorPayload, Hole, StatusHead, descriptor_size, parse_descriptor};
use crate::wire::codec::Reader;
use crate::wire::headers::{ErrorChunk, OffsetData, OffsetHole};
use crate::wire::{ChunkType, CommandFlags, CommandType, MAX_STRING};

use super::super::error::errno_from_wire;
use super::super::{Cookie, Error, Event, Extents, Out, RequestFailure, text};
use super::Transmission;
use super::reply::{Rx, take};

impl<const N: usize> Transmission<N> {
    /// `OFFSET_DATA`: its offset, checked; the data follows as it comes.
    pub(super) fn data_head<'i>(
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
        s.cover(offset, offset + length)
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
            done,
        };
        Ok(Out::took(size + OffsetData::SIZE))
    }

    /// `OFFSET_HOLE`, whole.
    pub(super) fn hole<'i>(
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
        s.cover(offset, offset + length)
            .map_err(|()| Error::ChunkOverlap {
                cookie,
                offset,
                length,
            })?;
        s.content_chunks = s.content_chunks.saturating_add(1);
        let consumed = size + OffsetHole::SIZE;
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
    pub(super) fn status_head<'i>(
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
    pub(super) fn descriptors<'i>(
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
    pub(super) fn error_chunk<'i>(
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
                message: text(p.message),
            },
        ))
    }
}
