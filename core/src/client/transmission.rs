//! Transmission: request encoding, and replies decoded and checked against
//! the request they answer.

use zerocopy::IntoBytes;

use crate::wire::headers::{
    CompactRequest, ExtendedReply, ExtendedRequest, SimpleReply, StructuredReply,
};
use crate::wire::{
    ChunkType, CommandFlags, CommandType, EXTENDED_REPLY_MAGIC, EXTENDED_REQUEST_MAGIC, Errno,
    HeaderMode, MAX_STRING, REQUEST_MAGIC, ReplyFlags, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC,
    TransmissionFlags, decode,
};

use super::error::errno_from_wire;
use super::event::decode_extent;
use super::{Client, Cookie, Error, Out, Phase, Raw, RequestError, RequestFailure, Span, Src};

/// Where the reply decoder is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rx {
    /// Collecting a reply header.
    Header,
    /// A successful simple reply to a read: its data.
    SimpleData {
        slot: usize,
        offset: u64,
        remaining: u64,
    },
    /// `OFFSET_DATA`: its 8-byte offset (`len` is the chunk length).
    DataHead { slot: usize, len: u64, done: bool },
    /// `OFFSET_DATA`: its data.
    Data {
        slot: usize,
        offset: u64,
        remaining: u64,
        deliver: bool,
        done: bool,
    },
    /// `OFFSET_HOLE`: its 12 bytes.
    Hole { slot: usize, done: bool },
    /// A status chunk: its context id (and count).
    StatusHead {
        slot: usize,
        len: u64,
        wide: bool,
        done: bool,
    },
    /// A status chunk: its descriptors.
    Status {
        slot: usize,
        context_id: u32,
        remaining: u64,
        wide: bool,
        sum: u64,
        done: bool,
    },
    /// An error chunk: error and message length.
    ErrorHead {
        slot: usize,
        chunk: ChunkType,
        len: u64,
        done: bool,
    },
    /// An error chunk: message (and offset).
    ErrorBody {
        slot: usize,
        with_offset: bool,
        error: Errno,
        message_len: usize,
        rest: u64,
        done: bool,
    },
    /// Bytes to drop.
    Skip {
        slot: usize,
        remaining: u64,
        done: bool,
    },
    /// A chunk ended after an event; complete the request if `done`.
    Finish { slot: usize, done: bool },
}

fn be64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_be_bytes)
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, u32::from_be_bytes)
}

/// Length of a slice of `u64` bytes, clamped to what is at hand.
fn take(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

impl<'c, const N: usize> Client<'c, N> {
    // ----------------------------------------------------------------
    // Requests
    // ----------------------------------------------------------------

    /// Queue `NBD_CMD_READ` of `length` bytes at `offset`. Its data comes as
    /// [`Event::ReadData`](super::Event::ReadData) /
    /// [`Event::ReadHole`](super::Event::ReadHole); flags: `DF`.
    pub fn read(
        &mut self,
        offset: u64,
        length: u32,
        flags: CommandFlags,
    ) -> Result<Cookie, RequestError> {
        self.submit(CommandType::READ, flags, offset, u64::from(length))
    }

    /// Queue the header of `NBD_CMD_WRITE`; flags: `FUA`. Then drain
    /// [`poll_transmit`](Self::poll_transmit), send the `length` payload
    /// bytes yourself, and call [`payload_sent`](Self::payload_sent); no
    /// other request may be queued in between.
    pub fn write(
        &mut self,
        offset: u64,
        length: u32,
        flags: CommandFlags,
    ) -> Result<Cookie, RequestError> {
        self.submit(CommandType::WRITE, flags, offset, u64::from(length))
    }

    /// The payload of the last [`write`](Self::write) was sent.
    pub fn payload_sent(&mut self) -> Result<(), RequestError> {
        if !self.payload_owed || !self.tx.is_empty() {
            return Err(RequestError::NoPayloadOwed);
        }
        self.payload_owed = false;
        Ok(())
    }

    /// Queue `NBD_CMD_FLUSH`.
    pub fn flush(&mut self) -> Result<Cookie, RequestError> {
        self.submit(CommandType::FLUSH, CommandFlags::empty(), 0, 0)
    }

    /// Queue `NBD_CMD_TRIM`; flags: `FUA`.
    pub fn trim(
        &mut self,
        offset: u64,
        length: u64,
        flags: CommandFlags,
    ) -> Result<Cookie, RequestError> {
        self.submit(CommandType::TRIM, flags, offset, length)
    }

    /// Queue `NBD_CMD_WRITE_ZEROES`; flags: `FUA`, `NO_HOLE`, `FAST_ZERO`.
    pub fn write_zeroes(
        &mut self,
        offset: u64,
        length: u64,
        flags: CommandFlags,
    ) -> Result<Cookie, RequestError> {
        self.submit(CommandType::WRITE_ZEROES, flags, offset, length)
    }

    /// Queue `NBD_CMD_CACHE`.
    pub fn cache(&mut self, offset: u64, length: u64) -> Result<Cookie, RequestError> {
        self.submit(CommandType::CACHE, CommandFlags::empty(), offset, length)
    }

    /// Queue `NBD_CMD_BLOCK_STATUS` for every selected context; flags:
    /// `REQ_ONE`. Extents come as [`Event::BlockStatus`](super::Event::BlockStatus).
    pub fn block_status(
        &mut self,
        offset: u64,
        length: u64,
        flags: CommandFlags,
    ) -> Result<Cookie, RequestError> {
        self.submit(CommandType::BLOCK_STATUS, flags, offset, length)
    }

    /// Queue `NBD_CMD_DISC` (a soft disconnect). Replies to requests in
    /// flight are still decoded; no request may follow. Once the server
    /// closes, [`handle_eof`](Self::handle_eof) says whether anything was
    /// lost.
    pub fn disconnect(&mut self) -> Result<(), RequestError> {
        self.ready_to_send()?;
        if !self.push_request(CommandType::DISC, CommandFlags::empty(), 0, 0, 0) {
            return Err(RequestError::TransmitFull);
        }
        self.phase = Phase::Transmission {
            disconnecting: true,
        };
        Ok(())
    }

    /// A request may be queued: transmission is on, no disconnect queued,
    /// and no write payload is still owed.
    fn ready_to_send(&self) -> Result<(), RequestError> {
        if !matches!(
            self.phase,
            Phase::Transmission {
                disconnecting: false
            }
        ) {
            return Err(RequestError::NotReady);
        }
        if self.payload_owed {
            return Err(RequestError::PayloadOwed);
        }
        Ok(())
    }

    fn push_request(
        &mut self,
        command: CommandType,
        flags: CommandFlags,
        cookie: u64,
        offset: u64,
        length: u64,
    ) -> bool {
        if self.mode == HeaderMode::Extended {
            let flags = if command == CommandType::WRITE {
                flags | CommandFlags::PAYLOAD_LEN
            } else {
                flags
            };
            let h = ExtendedRequest {
                magic: EXTENDED_REQUEST_MAGIC.into(),
                flags: flags.bits().into(),
                command: command.0.into(),
                cookie: cookie.into(),
                offset: offset.into(),
                length: length.into(),
            };
            self.tx.push_header(h.as_bytes())
        } else {
            let h = CompactRequest {
                magic: REQUEST_MAGIC.into(),
                flags: flags.bits().into(),
                command: command.0.into(),
                cookie: cookie.into(),
                offset: offset.into(),
                length: (length as u32).into(),
            };
            self.tx.push_header(h.as_bytes())
        }
    }

    fn submit(
        &mut self,
        command: CommandType,
        flags: CommandFlags,
        offset: u64,
        length: u64,
    ) -> Result<Cookie, RequestError> {
        self.ready_to_send()?;
        let export = self.export.ok_or(RequestError::NotReady)?;
        type C = CommandType;
        type F = CommandFlags;
        type T = TransmissionFlags;
        let allowed = match command {
            C::READ => F::DF,
            C::WRITE | C::TRIM => F::FUA,
            C::WRITE_ZEROES => F::FUA | F::NO_HOLE | F::FAST_ZERO,
            C::BLOCK_STATUS => F::REQ_ONE,
            _ => F::empty(),
        };
        if !allowed.contains(flags)
            || (flags.contains(F::FUA) && !export.has(T::SEND_FUA))
            || (flags.contains(F::DF) && !(export.has(T::SEND_DF) && self.mode.structured()))
            || (flags.contains(F::FAST_ZERO) && !export.has(T::SEND_FAST_ZERO))
        {
            return Err(RequestError::InvalidFlags);
        }
        let supported = match command {
            C::FLUSH => export.has(T::SEND_FLUSH),
            C::TRIM => export.has(T::SEND_TRIM),
            C::WRITE_ZEROES => export.has(T::SEND_WRITE_ZEROES),
            C::CACHE => export.has(T::SEND_CACHE),
            C::BLOCK_STATUS => self.mode.structured() && !self.contexts.is_empty(),
            _ => true,
        };
        let writes = matches!(command, C::WRITE | C::TRIM | C::WRITE_ZEROES);
        if !supported || (writes && export.has(T::READ_ONLY)) {
            return Err(RequestError::NotSupported);
        }
        if command != C::FLUSH {
            if length == 0 {
                return Err(RequestError::ZeroLength);
            }
            let payload = matches!(command, C::READ | C::WRITE);
            if (payload && length > u64::from(export.max_payload()))
                || (self.mode != HeaderMode::Extended && length > u64::from(u32::MAX))
            {
                return Err(RequestError::TooLong);
            }
            if offset
                .checked_add(length)
                .is_none_or(|end| end > export.size)
            {
                return Err(RequestError::OutOfRange);
            }
            let min = u64::from(export.min_block());
            if command != C::BLOCK_STATUS && (offset % min != 0 || length % min != 0) {
                return Err(RequestError::Misaligned);
            }
        }
        let (slot, cookie) = self
            .inflight
            .insert(command, flags, offset, length)
            .ok_or(RequestError::TooManyInFlight)?;
        if !self.push_request(command, flags, cookie.0, offset, length) {
            self.inflight.remove(slot);
            return Err(RequestError::TransmitFull);
        }
        if command == C::WRITE {
            self.payload_owed = true;
        }
        Ok(cookie)
    }

    // ----------------------------------------------------------------
    // Replies
    // ----------------------------------------------------------------

    fn cookie_of(&self, slot: usize) -> Cookie {
        Cookie(self.inflight.get(slot).map_or(0, |s| s.cookie))
    }

    /// The request is over: free its slot and report its outcome.
    fn complete(&mut self, slot: usize) -> Raw {
        let cookie = self.cookie_of(slot);
        let result = self
            .inflight
            .get(slot)
            .map_or(Err(RequestFailure::Incomplete), |s| {
                s.result(self.contexts.len())
            });
        self.inflight.remove(slot);
        if result == Err(RequestFailure::Server(Errno::ESHUTDOWN)) && !self.shutdown_reported {
            self.shutdown_reported = true;
            self.pending = Some(Raw::ServerShutdown);
        }
        Raw::Completed { cookie, result }
    }

    fn end_chunk(&mut self, slot: usize, done: bool) -> Option<Raw> {
        self.rx = Rx::Header;
        done.then(|| self.complete(slot))
    }

    pub(crate) fn reply_step(&mut self, input: &[u8]) -> Result<Out, Error> {
        match self.rx {
            Rx::Header => self.reply_header(input),
            Rx::SimpleData {
                slot,
                offset,
                remaining,
            } => {
                let k = take(remaining, input.len());
                if k == 0 {
                    return Ok(Out::took(0));
                }
                let cookie = self.cookie_of(slot);
                let left = remaining - k as u64;
                self.rx = if left == 0 {
                    if let Some(s) = self.inflight.get_mut(slot) {
                        s.covered = s.length;
                    }
                    Rx::Finish { slot, done: true }
                } else {
                    Rx::SimpleData {
                        slot,
                        offset: offset + k as u64,
                        remaining: left,
                    }
                };
                Ok(Out::next(
                    k,
                    Some(Raw::ReadData {
                        cookie,
                        offset,
                        data: Span::new(Src::Input, 0, k),
                    }),
                ))
            }
            Rx::DataHead { slot, len, done } => {
                let c = self.header.fill(input, 8);
                if self.header.len < 8 {
                    return Ok(Out::took(c));
                }
                let offset = be64(self.header.bytes(), 0);
                self.header.clear();
                let cookie = self.cookie_of(slot);
                let dlen = len - 8;
                let s = self
                    .inflight
                    .get_mut(slot)
                    .ok_or(Error::UnknownCookie { cookie: cookie.0 })?;
                if !s.contains(offset, dlen) {
                    return Err(Error::ChunkOutOfRange {
                        cookie: cookie.0,
                        offset,
                        length: dlen,
                    });
                }
                let was_fragmented = s.failure == Some(RequestFailure::Fragmented);
                let fits = s
                    .cover(offset, offset + dlen)
                    .map_err(|()| Error::ChunkOverlap {
                        cookie: cookie.0,
                        offset,
                        length: dlen,
                    })?;
                self.rx = Rx::Data {
                    slot,
                    offset,
                    remaining: dlen,
                    deliver: fits && !was_fragmented,
                    done,
                };
                Ok(Out::next(c, None))
            }
            Rx::Data {
                slot,
                offset,
                remaining,
                deliver,
                done,
            } => {
                let k = take(remaining, input.len());
                if k == 0 {
                    return Ok(Out::took(0));
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
                    return Ok(Out::next(k, self.end_chunk(slot, done)));
                }
                let raw = deliver.then(|| Raw::ReadData {
                    cookie: self.cookie_of(slot),
                    offset,
                    data: Span::new(Src::Input, 0, k),
                });
                Ok(Out::next(k, raw))
            }
            Rx::Hole { slot, done } => {
                let c = self.header.fill(input, 12);
                if self.header.len < 12 {
                    return Ok(Out::took(c));
                }
                let b = self.header.bytes();
                let (offset, len) = (be64(b, 0), be32(b, 8));
                self.header.clear();
                let cookie = self.cookie_of(slot);
                if len == 0 {
                    return Err(Error::EmptyHole { cookie: cookie.0 });
                }
                let s = self
                    .inflight
                    .get_mut(slot)
                    .ok_or(Error::UnknownCookie { cookie: cookie.0 })?;
                let range = Error::ChunkOutOfRange {
                    cookie: cookie.0,
                    offset,
                    length: u64::from(len),
                };
                if !s.contains(offset, u64::from(len)) {
                    return Err(range);
                }
                let was_fragmented = s.failure == Some(RequestFailure::Fragmented);
                let fits =
                    s.cover(offset, offset + u64::from(len))
                        .map_err(|()| Error::ChunkOverlap {
                            cookie: cookie.0,
                            offset,
                            length: u64::from(len),
                        })?;
                if fits && !was_fragmented {
                    self.rx = Rx::Finish { slot, done };
                    Ok(Out::next(
                        c,
                        Some(Raw::ReadHole {
                            cookie,
                            offset,
                            len,
                        }),
                    ))
                } else {
                    Ok(Out::next(c, self.end_chunk(slot, done)))
                }
            }
            Rx::StatusHead {
                slot,
                len,
                wide,
                done,
            } => {
                let need = if wide { 8 } else { 4 };
                let c = self.header.fill(input, need);
                if self.header.len < need {
                    return Ok(Out::took(c));
                }
                let b = self.header.bytes();
                let context_id = be32(b, 0);
                let cookie = self.cookie_of(slot);
                let chunk = if wide {
                    ChunkType::BLOCK_STATUS_EXT
                } else {
                    ChunkType::BLOCK_STATUS
                };
                let malformed = Error::MalformedChunk {
                    cookie: cookie.0,
                    chunk,
                };
                let count = if wide {
                    let count = u64::from(be32(b, 4));
                    if count == 0 || count * 16 + 8 != len {
                        return Err(malformed);
                    }
                    count
                } else {
                    (len - 4) / 8
                };
                self.header.clear();
                let index = self
                    .contexts
                    .iter()
                    .position(|&(id, _)| id == context_id)
                    .ok_or(Error::UnknownContext {
                        cookie: cookie.0,
                        id: context_id,
                    })?;
                let s = self
                    .inflight
                    .get_mut(slot)
                    .ok_or(Error::UnknownCookie { cookie: cookie.0 })?;
                if s.flags.contains(CommandFlags::REQ_ONE) && count != 1 {
                    return Err(malformed);
                }
                let bit = 1u32 << index;
                if s.contexts_seen & bit != 0 {
                    return Err(Error::DuplicateStatus {
                        cookie: cookie.0,
                        id: context_id,
                    });
                }
                s.contexts_seen |= bit;
                self.rx = Rx::Status {
                    slot,
                    context_id,
                    remaining: count,
                    wide,
                    sum: 0,
                    done,
                };
                Ok(Out::next(c, None))
            }
            Rx::Status {
                slot,
                context_id,
                remaining,
                wide,
                sum,
                done,
            } => {
                let size = if wide { 16 } else { 8 };
                let (consumed, src, count) = if self.header.len > 0 || input.len() < size {
                    let c = self.header.fill(input, size);
                    if self.header.len < size {
                        return Ok(Out::took(c));
                    }
                    self.extent[..size].copy_from_slice(&self.header.bytes()[..size]);
                    self.header.clear();
                    (c, Src::Extent, 1)
                } else {
                    let n = take(remaining, input.len() / size);
                    (n * size, Src::Input, n)
                };
                let bytes: &[u8] = match src {
                    Src::Extent => &self.extent[..size],
                    _ => input.get(..consumed).unwrap_or(&[]),
                };
                let s = self.inflight.get(slot).ok_or(Error::UnknownCookie {
                    cookie: self.cookie_of(slot).0,
                })?;
                let cookie = Cookie(s.cookie);
                let req_one = s.flags.contains(CommandFlags::REQ_ONE);
                let mut total = sum;
                for d in bytes.chunks_exact(size) {
                    let e = decode_extent(d, wide).unwrap_or(crate::block::Extent::new(0, 0));
                    if e.length == 0 {
                        return Err(Error::EmptyExtent { cookie: cookie.0 });
                    }
                    // Every descriptor but the first starts inside the
                    // request; with REQ_ONE none exceeds it.
                    if (total > 0 && total >= s.length) || (req_one && e.length > s.length) {
                        return Err(Error::ExtentBeyondRequest { cookie: cookie.0 });
                    }
                    total = total.saturating_add(e.length);
                }
                let offset = s.offset.saturating_add(sum);
                let left = remaining - count as u64;
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
                Ok(Out::next(
                    consumed,
                    Some(Raw::BlockStatus {
                        cookie,
                        context_id,
                        offset,
                        data: Span::new(src, 0, if src == Src::Extent { size } else { consumed }),
                        wide,
                    }),
                ))
            }
            Rx::ErrorHead {
                slot,
                chunk,
                len,
                done,
            } => {
                let c = self.header.fill(input, 6);
                if self.header.len < 6 {
                    return Ok(Out::took(c));
                }
                let b = self.header.bytes();
                let error = errno_from_wire(be32(b, 0));
                let message_length = u16::from_be_bytes([b[4], b[5]]);
                self.header.clear();
                let cookie = self.cookie_of(slot);
                let with_offset = chunk == ChunkType::ERROR_OFFSET;
                let fixed = if with_offset { 14 } else { 6 };
                if with_offset && len < 14 {
                    return Err(Error::MalformedChunk {
                        cookie: cookie.0,
                        chunk,
                    });
                }
                let message_len = usize::from(message_length);
                if u64::from(message_length) > len - fixed || message_len > MAX_STRING {
                    return Err(Error::ErrorMessageTooLong {
                        cookie: cookie.0,
                        message_length,
                    });
                }
                if let Some(s) = self.inflight.get_mut(slot) {
                    s.fail(RequestFailure::Server(error));
                }
                self.payload.clear();
                self.rx = Rx::ErrorBody {
                    slot,
                    with_offset,
                    error,
                    message_len,
                    rest: len - fixed - u64::from(message_length),
                    done,
                };
                Ok(Out::next(c, None))
            }
            Rx::ErrorBody {
                slot,
                with_offset,
                error,
                message_len,
                rest,
                done,
            } => {
                let want = message_len + if with_offset { 8 } else { 0 };
                let c = self.payload.fill(input, want);
                if self.payload.len < want {
                    return Ok(Out::took(c));
                }
                let cookie = self.cookie_of(slot);
                let message = Span::text(Src::Payload, self.payload.bytes(), 0, message_len);
                let mut offset = with_offset.then(|| be64(self.payload.bytes(), message_len));
                if let (Some(o), Some(s)) = (offset, self.inflight.get(slot)) {
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
                        // unexpected error chunk still fails the request,
                        // but its offset means nothing and is not passed on.
                        offset = None;
                    } else if !s.contains(o, 1) {
                        return Err(Error::ChunkOutOfRange {
                            cookie: cookie.0,
                            offset: o,
                            length: 1,
                        });
                    }
                }
                self.rx = if rest > 0 {
                    Rx::Skip {
                        slot,
                        remaining: rest,
                        done,
                    }
                } else {
                    Rx::Finish { slot, done }
                };
                Ok(Out::next(
                    c,
                    Some(Raw::ReplyError {
                        cookie,
                        error,
                        offset,
                        message,
                    }),
                ))
            }
            Rx::Skip {
                slot,
                remaining,
                done,
            } => {
                let k = take(remaining, input.len());
                if k as u64 == remaining {
                    return Ok(Out::next(k, self.end_chunk(slot, done)));
                }
                self.rx = Rx::Skip {
                    slot,
                    remaining: remaining - k as u64,
                    done,
                };
                Ok(Out::took(k))
            }
            Rx::Finish { slot, done } => Ok(Out::next(0, self.end_chunk(slot, done))),
        }
    }

    fn reply_header(&mut self, input: &[u8]) -> Result<Out, Error> {
        let mut c = 0;
        if self.header.len < 4 {
            c = self.header.fill(input, 4);
            if self.header.len < 4 {
                return Ok(Out::took(c));
            }
        }
        let magic = be32(self.header.bytes(), 0);
        let size = match (self.mode, magic) {
            (HeaderMode::Simple | HeaderMode::Structured, SIMPLE_REPLY_MAGIC) => SimpleReply::SIZE,
            (HeaderMode::Structured, STRUCTURED_REPLY_MAGIC) => StructuredReply::SIZE,
            (HeaderMode::Extended, EXTENDED_REPLY_MAGIC) => ExtendedReply::SIZE,
            _ => return Err(Error::BadReplyMagic { found: magic }),
        };
        c += self.header.fill(input.get(c..).unwrap_or(&[]), size);
        if self.header.len < size {
            return Ok(Out::took(c));
        }
        let mut h = [0u8; 32];
        h[..size].copy_from_slice(&self.header.bytes()[..size]);
        self.header.clear();
        let raw = match magic {
            SIMPLE_REPLY_MAGIC => {
                let r: SimpleReply =
                    decode(&h).map_err(|_| Error::BadReplyMagic { found: magic })?;
                self.simple_reply(r.cookie.get(), r.error.get())?
            }
            STRUCTURED_REPLY_MAGIC => {
                let r: StructuredReply =
                    decode(&h).map_err(|_| Error::BadReplyMagic { found: magic })?;
                self.chunk(
                    r.flags.get(),
                    ChunkType(r.chunk_type.get()),
                    r.cookie.get(),
                    None,
                    u64::from(r.length.get()),
                )?
            }
            _ => {
                let r: ExtendedReply =
                    decode(&h).map_err(|_| Error::BadReplyMagic { found: magic })?;
                self.chunk(
                    r.flags.get(),
                    ChunkType(r.chunk_type.get()),
                    r.cookie.get(),
                    Some(r.offset.get()),
                    r.length.get(),
                )?
            }
        };
        Ok(Out::next(c, raw))
    }

    fn simple_reply(&mut self, cookie: u64, error: u32) -> Result<Option<Raw>, Error> {
        let slot = self
            .inflight
            .find(cookie)
            .ok_or(Error::UnknownCookie { cookie })?;
        let s = self
            .inflight
            .get_mut(slot)
            .ok_or(Error::UnknownCookie { cookie })?;
        if s.command == CommandType::READ {
            if self.mode != HeaderMode::Simple {
                return Err(Error::SimpleReplyToRead { cookie });
            }
            if error == 0 {
                self.rx = Rx::SimpleData {
                    slot,
                    offset: s.offset,
                    remaining: s.length,
                };
                return Ok(None);
            }
        }
        if error != 0 {
            s.fail(RequestFailure::Server(errno_from_wire(error)));
        }
        Ok(Some(self.complete(slot)))
    }

    fn chunk(
        &mut self,
        flags: u16,
        chunk: ChunkType,
        cookie: u64,
        offset: Option<u64>,
        len: u64,
    ) -> Result<Option<Raw>, Error> {
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
        let unexpected = Error::UnexpectedChunk {
            cookie,
            chunk,
            command: s.command,
        };
        let read = s.command == CommandType::READ;
        let status = s.command == CommandType::BLOCK_STATUS;
        let content = chunk == ChunkType::OFFSET_DATA || chunk == ChunkType::OFFSET_HOLE;
        if content && read && s.flags.contains(CommandFlags::DF) && s.content_chunks > 0 {
            return Err(Error::FragmentedDf { cookie });
        }
        self.rx = match chunk {
            ChunkType::NONE => {
                if len != 0 || !done {
                    return Err(malformed);
                }
                return Ok(Some(self.complete(slot)));
            }
            ChunkType::OFFSET_DATA if read => {
                if len < 9 {
                    return Err(malformed);
                }
                Rx::DataHead { slot, len, done }
            }
            ChunkType::OFFSET_HOLE if read => {
                if len != 12 {
                    return Err(malformed);
                }
                Rx::Hole { slot, done }
            }
            ChunkType::BLOCK_STATUS if status && self.mode != HeaderMode::Extended => {
                if len < 12 || (len - 4) % 8 != 0 {
                    return Err(malformed);
                }
                Rx::StatusHead {
                    slot,
                    len,
                    wide: false,
                    done,
                }
            }
            ChunkType::BLOCK_STATUS_EXT if status && self.mode == HeaderMode::Extended => {
                if len < 24 || (len - 8) % 16 != 0 {
                    return Err(malformed);
                }
                Rx::StatusHead {
                    slot,
                    len,
                    wide: true,
                    done,
                }
            }
            t if t.is_error() => {
                if len < 6 {
                    return Err(malformed);
                }
                Rx::ErrorHead {
                    slot,
                    chunk,
                    len,
                    done,
                }
            }
            _ => return Err(unexpected),
        };
        if content {
            if let Some(s) = self.inflight.get_mut(slot) {
                s.content_chunks = s.content_chunks.saturating_add(1);
            }
        }
        Ok(None)
    }
}
