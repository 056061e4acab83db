//! The request half of transmission: what the frontend may ask, the checks
//! a request passes before it is queued (so that a server never sees one
//! the spec forbids), and its header on the wire.

use crate::wire::codec::{Overflow, Sink};
use crate::wire::headers::{CompactRequest, ExtendedRequest};
use crate::wire::{
    CommandFlags, CommandType, EXTENDED_REQUEST_MAGIC, HeaderMode, REQUEST_MAGIC, TransmissionFlags,
};

use super::super::output::Output;
use super::super::{Client, Cookie, Phase, RequestError};
use super::Transmission;

impl<const N: usize> Client<N> {
    /// Queue `NBD_CMD_READ` of `length` bytes at `offset`. Its data comes as
    /// [`Event::ReadData`](super::super::Event::ReadData) /
    /// [`Event::ReadHole`](super::super::Event::ReadHole); flags: `DF`.
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
        match &mut self.phase {
            Phase::Transmission(t) if t.payload_owed && self.out.is_empty() => {
                t.payload_owed = false;
                Ok(())
            }
            _ => Err(RequestError::NoPayloadOwed),
        }
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
    /// `REQ_ONE`. Extents come as
    /// [`Event::BlockStatus`](super::super::Event::BlockStatus).
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
        let t = self.transmission()?;
        t.ready_to_send()?;
        let mode = t.export.mode;
        push_header(
            &mut self.out,
            mode,
            CommandType::DISC,
            CommandFlags::empty(),
            0,
            0,
            0,
        )
        .map_err(|Overflow| RequestError::TransmitFull)?;
        if let Phase::Transmission(t) = &mut self.phase {
            t.disconnecting = true;
        }
        Ok(())
    }

    fn transmission(&mut self) -> Result<&mut Transmission<N>, RequestError> {
        match &mut self.phase {
            Phase::Transmission(t) => Ok(t),
            _ => Err(RequestError::NotReady),
        }
    }

    fn submit(
        &mut self,
        command: CommandType,
        flags: CommandFlags,
        offset: u64,
        length: u64,
    ) -> Result<Cookie, RequestError> {
        match &mut self.phase {
            Phase::Transmission(t) => t.submit(&mut self.out, command, flags, offset, length),
            _ => Err(RequestError::NotReady),
        }
    }
}

impl<const N: usize> Transmission<N> {
    /// A request may be queued: no disconnect queued, and no write payload
    /// still owed.
    pub(crate) fn ready_to_send(&self) -> Result<(), RequestError> {
        if self.disconnecting {
            return Err(RequestError::NotReady);
        }
        if self.payload_owed {
            return Err(RequestError::PayloadOwed);
        }
        Ok(())
    }

    /// Check a request against the export and the spec, then queue it.
    fn submit(
        &mut self,
        out: &mut Output,
        command: CommandType,
        flags: CommandFlags,
        offset: u64,
        length: u64,
    ) -> Result<Cookie, RequestError> {
        self.ready_to_send()?;
        self.check(command, flags, offset, length)?;
        let (slot, cookie) = self
            .inflight
            .insert(command, flags, offset, length)
            .ok_or(RequestError::TooManyInFlight)?;
        let mode = self.export.mode;
        if push_header(out, mode, command, flags, cookie.0, offset, length).is_err() {
            self.inflight.remove(slot);
            return Err(RequestError::TransmitFull);
        }
        if command == CommandType::WRITE {
            self.payload_owed = true;
        }
        Ok(cookie)
    }

    /// What the spec and the export allow of a request.
    fn check(
        &self,
        command: CommandType,
        flags: CommandFlags,
        offset: u64,
        length: u64,
    ) -> Result<(), RequestError> {
        type C = CommandType;
        type F = CommandFlags;
        type T = TransmissionFlags;
        let export = &self.export;
        let mode = export.mode;
        let allowed = match command {
            C::READ => F::DF,
            C::WRITE | C::TRIM => F::FUA,
            C::WRITE_ZEROES => F::FUA | F::NO_HOLE | F::FAST_ZERO,
            C::BLOCK_STATUS => F::REQ_ONE,
            _ => F::empty(),
        };
        if !allowed.contains(flags)
            || (flags.contains(F::FUA) && !export.has(T::SEND_FUA))
            || (flags.contains(F::DF) && !(export.has(T::SEND_DF) && mode.structured()))
            || (flags.contains(F::FAST_ZERO) && !export.has(T::SEND_FAST_ZERO))
        {
            return Err(RequestError::InvalidFlags);
        }
        let supported = match command {
            C::FLUSH => export.has(T::SEND_FLUSH),
            C::TRIM => export.has(T::SEND_TRIM),
            C::WRITE_ZEROES => export.has(T::SEND_WRITE_ZEROES),
            C::CACHE => export.has(T::SEND_CACHE),
            C::BLOCK_STATUS => mode.structured() && !self.contexts.is_empty(),
            _ => true,
        };
        let writes = matches!(command, C::WRITE | C::TRIM | C::WRITE_ZEROES);
        if !supported || (writes && export.has(T::READ_ONLY)) {
            return Err(RequestError::NotSupported);
        }
        if command == C::FLUSH {
            return Ok(());
        }
        if length == 0 {
            return Err(RequestError::ZeroLength);
        }
        let payload = matches!(command, C::READ | C::WRITE);
        if (payload && length > u64::from(export.max_payload()))
            || (mode != HeaderMode::Extended && length > u64::from(u32::MAX))
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
        Ok(())
    }
}

/// Queue one request header in the negotiated form; a write's payload is
/// not queued (the frontend sends it).
fn push_header(
    out: &mut Output,
    mode: HeaderMode,
    command: CommandType,
    flags: CommandFlags,
    cookie: u64,
    offset: u64,
    length: u64,
) -> Result<(), Overflow> {
    if mode == HeaderMode::Extended {
        // With extended headers a write says its length is a payload's.
        let flags = if command == CommandType::WRITE {
            flags | CommandFlags::PAYLOAD_LEN
        } else {
            flags
        };
        out.put_header(&ExtendedRequest {
            magic: EXTENDED_REQUEST_MAGIC.into(),
            flags: flags.bits().into(),
            command: command.0.into(),
            cookie: cookie.into(),
            offset: offset.into(),
            length: length.into(),
        })
    } else {
        // `check` refused lengths over 32 bits without extended headers.
        out.put_header(&CompactRequest {
            magic: REQUEST_MAGIC.into(),
            flags: flags.bits().into(),
            command: command.0.into(),
            cookie: cookie.into(),
            offset: offset.into(),
            length: (length as u32).into(),
        })
    }
}
