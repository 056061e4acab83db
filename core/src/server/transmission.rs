//! Transmission phase: decoding and checking requests.

use super::exports::ContextSet;
use super::reply::{ReplyEncoder, ReplyTo};
use super::{CloseReason, Event, MAX_CONTEXTS, Request, Session};
use crate::wire::chunk::StatusFilter;
use crate::wire::codec::Sink;
use crate::wire::headers::{CompactRequest, ExtendedRequest};
use crate::wire::{
    CommandFlags, CommandType, DEFAULT_MAX_PAYLOAD, EXTENDED_REQUEST_MAGIC, Errno, HeaderMode,
    REQUEST_MAGIC, TransmissionFlags, decode,
};

/// Longest `BLOCK_STATUS` payload we read: the effect length and one id per
/// context an export can have.
const MAX_BLOCK_STATUS_PAYLOAD: u64 = 8 + 4 * MAX_CONTEXTS as u64;

#[derive(Clone, Copy, Debug)]
struct Header {
    cookie: u64,
    command: CommandType,
    flags: CommandFlags,
    offset: u64,
    length: u64,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Header,
    /// An accepted write's payload, delivered as `WriteData`.
    Write {
        cookie: u64,
        offset: u64,
        remaining: u64,
    },
    /// Payload of a rejected request, read and dropped to stay in sync.
    Discard {
        remaining: u64,
    },
    /// Payload of an extended `BLOCK_STATUS` naming its contexts.
    BlockStatusPayload {
        header: Header,
        remaining: u64,
    },
}

#[derive(Debug)]
pub(crate) struct Transmission {
    session: Session,
    shutting_down: bool,
    hdr: [u8; ExtendedRequest::SIZE],
    hdr_len: usize,
    state: State,
    bs_payload: heapless::Vec<u8, { MAX_BLOCK_STATUS_PAYLOAD as usize }>,
}

type Verdict = Result<(), (Errno, &'static str)>;

impl Transmission {
    pub(super) fn new(session: Session, shutting_down: bool) -> Self {
        Self {
            session,
            shutting_down,
            hdr: [0; ExtendedRequest::SIZE],
            hdr_len: 0,
            state: State::Header,
            bs_payload: heapless::Vec::new(),
        }
    }

    pub(super) fn session(&self) -> &Session {
        &self.session
    }

    pub(super) fn shutdown(&mut self) {
        self.shutting_down = true;
    }

    pub(super) fn accepted_payload_remaining(&self) -> Option<u64> {
        match self.state {
            State::Write { remaining, .. } => Some(remaining),
            _ => None,
        }
    }

    pub(super) fn skip_payload(&mut self, n: u64) {
        if let State::Write {
            cookie,
            offset,
            remaining,
        } = self.state
        {
            let n = n.min(remaining);
            self.state = if n == remaining {
                State::Header
            } else {
                State::Write {
                    cookie,
                    offset: offset + n,
                    remaining: remaining - n,
                }
            };
        }
    }

    fn encoder(&self) -> ReplyEncoder {
        ReplyEncoder::new(self.session.mode)
    }

    /// The largest payload a client may send before we stop reading: what
    /// we advertise, but never less than the 2^25 the spec says no one
    /// should call a denial of service.
    fn payload_limit(&self) -> u64 {
        self.session.block_sizes.maximum.max(DEFAULT_MAX_PAYLOAD) as u64
    }

    pub(super) fn step<'a>(&mut self, input: &'a [u8]) -> (usize, Option<Event<'a>>) {
        let mut used = 0;
        loop {
            match self.state {
                State::Header => {
                    let want = self.session.mode.request_size();
                    let take = (want - self.hdr_len).min(input.len() - used);
                    self.hdr[self.hdr_len..self.hdr_len + take]
                        .copy_from_slice(&input[used..used + take]);
                    self.hdr_len += take;
                    used += take;
                    if self.hdr_len < want {
                        return (used, None);
                    }
                    self.hdr_len = 0;
                    match self.on_header() {
                        Some(ev) => return (used, Some(ev)),
                        // The answer waits for the request's payload.
                        None => continue,
                    }
                }
                State::Write {
                    cookie,
                    offset,
                    remaining,
                } => {
                    let avail = (input.len() - used) as u64;
                    if avail == 0 {
                        return (used, None);
                    }
                    let take = remaining.min(avail) as usize;
                    let data = &input[used..used + take];
                    used += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::Header
                    } else {
                        State::Write {
                            cookie,
                            offset: offset + take as u64,
                            remaining: left,
                        }
                    };
                    let ev = Event::WriteData {
                        cookie,
                        offset,
                        data,
                        last: left == 0,
                    };
                    return (used, Some(ev));
                }
                State::Discard { remaining } => {
                    let take = remaining.min((input.len() - used) as u64);
                    used += take as usize;
                    if take < remaining {
                        self.state = State::Discard {
                            remaining: remaining - take,
                        };
                        return (used, None);
                    }
                    self.state = State::Header;
                }
                State::BlockStatusPayload { header, remaining } => {
                    let take = remaining.min((input.len() - used) as u64) as usize;
                    // `remaining` was checked against the buffer's size
                    // when the header arrived.
                    let stored = self.bs_payload.put(&input[used..used + take]);
                    debug_assert!(stored.is_ok(), "block status payload past its bound");
                    used += take;
                    if (take as u64) < remaining {
                        self.state = State::BlockStatusPayload {
                            header,
                            remaining: remaining - take as u64,
                        };
                        return (used, None);
                    }
                    self.state = State::Header;
                    let ev = self.block_status_with_payload(header);
                    self.bs_payload.clear();
                    return (used, Some(ev));
                }
            }
        }
    }

    fn decode_header(&self) -> Option<Header> {
        if self.session.mode == HeaderMode::Extended {
            let h = decode::<ExtendedRequest>(&self.hdr).ok()?;
            (h.magic.get() == EXTENDED_REQUEST_MAGIC).then(|| Header {
                cookie: h.cookie.get(),
                command: CommandType(h.command.get()),
                flags: CommandFlags::from_bits_retain(h.flags.get()),
                offset: h.offset.get(),
                length: h.length.get(),
            })
        } else {
            let h = decode::<CompactRequest>(&self.hdr).ok()?;
            (h.magic.get() == REQUEST_MAGIC).then(|| Header {
                cookie: h.cookie.get(),
                command: CommandType(h.command.get()),
                flags: CommandFlags::from_bits_retain(h.flags.get()),
                offset: h.offset.get(),
                length: h.length.get() as u64,
            })
        }
    }

    /// The typed request for a header that passed [`check`](Self::check),
    /// or a rejection if it cannot be typed (which `check` rules out).
    fn request<'a>(&self, h: &Header, contexts: ContextSet) -> Event<'a> {
        match Request::from_wire(h.cookie, h.command, h.flags, h.offset, h.length, contexts) {
            Some(r) => Event::Request(r),
            None => self.reject(h, (Errno::EINVAL, "unknown command")),
        }
    }

    fn reject<'a>(&self, h: &Header, (errno, msg): (Errno, &'static str)) -> Event<'a> {
        let to = ReplyTo {
            cookie: h.cookie,
            offset: h.offset,
            kind: h.command,
        };
        Event::Reject {
            reply: self.encoder().error(to, errno, msg),
            close: None,
        }
    }

    fn on_header<'a>(&mut self) -> Option<Event<'a>> {
        let Some(h) = self.decode_header() else {
            return Some(Event::Close(CloseReason::BadRequestMagic));
        };
        if h.command == CommandType::DISC {
            return Some(Event::Disconnect);
        }
        let extended = self.session.mode == HeaderMode::Extended;
        // A WRITE always carries `length` bytes, even in extended mode
        // without PAYLOAD_LEN: QEMU 10's client sends exactly that, and
        // qemu-nbd accepts it (tracing the client as non-compliant).
        // Reading the data is also the only way to stay in sync with it.
        let payload = if h.command == CommandType::WRITE
            || (extended && h.flags.contains(CommandFlags::PAYLOAD_LEN))
        {
            h.length
        } else {
            0
        };
        if payload > self.payload_limit() {
            // Reading it would let a client make us swallow gigabytes; the
            // spec allows a hard disconnect here.
            let mut ev = self.reject(&h, (Errno::EINVAL, "payload too large"));
            if let Event::Reject { close, .. } = &mut ev {
                *close = Some(CloseReason::PayloadTooLarge);
            }
            return Some(ev);
        }
        let bs_payload_form = h.command == CommandType::BLOCK_STATUS
            && extended
            && h.flags.contains(CommandFlags::PAYLOAD_LEN);
        if bs_payload_form {
            let ok = self
                .session
                .flags
                .contains(TransmissionFlags::BLOCK_STAT_PAYLOAD)
                && payload >= 8
                && payload <= MAX_BLOCK_STATUS_PAYLOAD
                && payload % 4 == 0;
            if ok {
                self.state = State::BlockStatusPayload {
                    header: h,
                    remaining: payload,
                };
                return None;
            }
        }
        let verdict = if payload > self.session.block_sizes.maximum as u64 {
            Err((Errno::EINVAL, "payload exceeds the advertised maximum"))
        } else if payload > 0 && h.command != CommandType::WRITE {
            // Only WRITE and the (handled above) block-status form carry a
            // payload; anything else is read past and refused.
            Err((Errno::EINVAL, "unexpected payload for this command"))
        } else {
            self.check(&h)
        };
        Some(match verdict {
            Ok(()) => {
                if h.command == CommandType::WRITE && payload > 0 {
                    self.state = State::Write {
                        cookie: h.cookie,
                        offset: h.offset,
                        remaining: payload,
                    };
                }
                self.request(&h, self.contexts_for(&h))
            }
            Err(e) => {
                if payload > 0 {
                    self.state = State::Discard { remaining: payload };
                }
                self.reject(&h, e)
            }
        })
    }

    fn contexts_for(&self, h: &Header) -> ContextSet {
        if h.command == CommandType::BLOCK_STATUS {
            self.session.contexts
        } else {
            ContextSet::EMPTY
        }
    }

    fn block_status_with_payload<'a>(&mut self, mut h: Header) -> Event<'a> {
        let mut set = ContextSet::EMPTY;
        let mut bad = false;
        match StatusFilter::parse(&self.bs_payload) {
            Ok(filter) => {
                h.length = filter.effect_length;
                for id in filter.ids() {
                    if !self.session.contexts.contains(id) || set.contains(id) {
                        bad = true;
                    }
                    set.insert(id);
                }
            }
            Err(_) => bad = true,
        }
        if bad || set.is_empty() {
            return self.reject(&h, (Errno::EINVAL, "unknown or repeated context id"));
        }
        match self.check(&h) {
            Ok(()) => self.request(&h, set),
            Err(e) => self.reject(&h, e),
        }
    }

    /// Every check the spec asks of a request, in qemu-nbd's order:
    /// shutdown, command, flags, permission, bounds, alignment, size.
    fn check(&self, h: &Header) -> Verdict {
        use CommandType as C;
        let s = &self.session;
        let tf = s.flags;
        if self.shutting_down {
            return Err((Errno::ESHUTDOWN, "server is shutting down"));
        }
        let known = matches!(
            h.command,
            C::READ | C::WRITE | C::FLUSH | C::TRIM | C::CACHE | C::WRITE_ZEROES | C::BLOCK_STATUS
        );
        if !known {
            return Err((Errno::EINVAL, "unknown command"));
        }
        let mut valid = CommandFlags::empty();
        if tf.contains(TransmissionFlags::SEND_FUA) {
            valid |= CommandFlags::FUA;
        }
        let extended = s.mode == HeaderMode::Extended;
        match h.command {
            C::READ if s.mode.structured() => valid |= CommandFlags::DF,
            C::WRITE if extended => valid |= CommandFlags::PAYLOAD_LEN,
            C::WRITE_ZEROES => {
                valid |= CommandFlags::NO_HOLE;
                if tf.contains(TransmissionFlags::SEND_FAST_ZERO) {
                    valid |= CommandFlags::FAST_ZERO;
                }
            }
            C::BLOCK_STATUS => {
                valid |= CommandFlags::REQ_ONE;
                if tf.contains(TransmissionFlags::BLOCK_STAT_PAYLOAD) {
                    valid |= CommandFlags::PAYLOAD_LEN;
                }
            }
            _ => {}
        }
        if !valid.contains(h.flags) {
            return Err((Errno::EINVAL, "flag not valid for this command"));
        }
        let writes = matches!(h.command, C::WRITE | C::TRIM | C::WRITE_ZEROES);
        if writes && tf.contains(TransmissionFlags::READ_ONLY) {
            return Err((Errno::EPERM, "export is read-only"));
        }
        let advertised = match h.command {
            C::FLUSH => tf.contains(TransmissionFlags::SEND_FLUSH),
            C::TRIM => tf.contains(TransmissionFlags::SEND_TRIM),
            C::WRITE_ZEROES => tf.contains(TransmissionFlags::SEND_WRITE_ZEROES),
            C::CACHE => tf.contains(TransmissionFlags::SEND_CACHE),
            C::BLOCK_STATUS => !s.contexts.is_empty(),
            _ => true,
        };
        if !advertised {
            return Err((Errno::EINVAL, "command not negotiated"));
        }
        if h.command == C::FLUSH {
            return Ok(());
        }
        let Some(end) = h.offset.checked_add(h.length) else {
            return Err((Errno::EINVAL, "offset + length overflows"));
        };
        if end > s.size {
            return Err(if matches!(h.command, C::WRITE | C::WRITE_ZEROES) {
                (Errno::ENOSPC, "write past the end of the export")
            } else {
                (Errno::EINVAL, "request past the end of the export")
            });
        }
        let min = s.block_sizes.minimum.max(1) as u64;
        if h.offset % min != 0 || h.length % min != 0 {
            return Err((
                Errno::EINVAL,
                "request not aligned to the minimum block size",
            ));
        }
        if h.command == C::READ && h.length > s.block_sizes.maximum as u64 {
            return Err((Errno::EINVAL, "read longer than the maximum payload"));
        }
        if h.command == C::BLOCK_STATUS && h.length == 0 {
            return Err((Errno::EINVAL, "block status of zero length"));
        }
        Ok(())
    }
}
