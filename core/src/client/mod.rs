//! The sans-IO NBD client: one [`Client`] per connection, no heap, no
//! clock, no socket, and no panic whatever the server sends.
//!
//! # The driving loop
//!
//! The frontend moves bytes and time through the machine, in this order,
//! for as long as the connection lives:
//!
//! 1. **Transmit.** Send what [`Client::poll_transmit`] returns, report it
//!    with [`Client::transmitted`], and repeat until it returns an empty
//!    slice: the handshake's option requests come in several slices
//!    (names are sent straight from the [`Config`]'s borrowed strings);
//!    request headers come as one slice.
//! 2. **Receive.** Pass received bytes to [`Client::handle_input`]. It
//!    returns a [`Progress`]: how many bytes it `consumed` and at most one
//!    [`Event`]. Drop the consumed bytes, act on the event, and call again
//!    with the rest; `consumed == 0` with no event means "give me more
//!    bytes". Any split of the input works, down to one byte per call.
//!    Events borrow the input: [`Event::ReadData`] is a slice of the bytes
//!    you passed in, to be copied straight into the read's buffer.
//! 3. **Time.** Ask [`Client::poll_timeout`] for the handshake deadline and
//!    call [`Client::handle_timeout`] when it passes.
//! 4. **End of stream.** When the server closes the connection, call
//!    [`Client::handle_eof`]: it says whether that was expected.
//!
//! In the handshake the machine walks through `STARTTLS` (per
//! [`TlsPolicy`]; on [`Event::StartTls`] run TLS, then call
//! [`Client::tls_established`]), `EXTENDED_HEADERS` and/or
//! `STRUCTURED_REPLY`, `SET_META_CONTEXT`, and `GO` (falling back to
//! `EXPORT_NAME`), ending with [`Event::Ready`]; or, by [`Mode`], `INFO` or
//! `LIST`, ending with [`Event::Finished`].
//!
//! In transmission, [`Client::read`], [`Client::write`] and friends queue a
//! request header and return its [`Cookie`]; replies come back as events
//! naming that cookie, ending with exactly one [`Event::Completed`]. A
//! write's payload is yours to send: drain `poll_transmit` (the header is
//! last), send the payload, then call [`Client::payload_sent`].
//!
//! Any [`Event::Failed`] ends the connection: send what `poll_transmit`
//! holds, then close; fail every request still in flight.
//!
//! ```
//! use blockwire_core::client::{Client, Config, Event};
//! use blockwire_core::time::Instant;
//! use blockwire_core::wire::CommandFlags;
//!
//! let mut config = Config::new("disk");
//! config.structured_replies = false;
//! config.extended_headers = false;
//! let mut client: Client = Client::new(config, Instant(0)).unwrap();
//!
//! // A scripted server: greeting, then GO answered with INFO_EXPORT and ACK.
//! let mut server = Vec::new();
//! server.extend_from_slice(b"NBDMAGICIHAVEOPT\x00\x03");
//! let reply = |s: &mut Vec<u8>, ty: u32, data: &[u8]| {
//!     s.extend_from_slice(&0x3e889045565a9u64.to_be_bytes());
//!     s.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
//!     s.extend_from_slice(&ty.to_be_bytes());
//!     s.extend_from_slice(&(data.len() as u32).to_be_bytes());
//!     s.extend_from_slice(data);
//! };
//! let mut info = vec![0, 0];
//! info.extend_from_slice(&4096u64.to_be_bytes());
//! info.extend_from_slice(&1u16.to_be_bytes());
//! reply(&mut server, 3, &info); // NBD_REP_INFO
//! reply(&mut server, 1, &[]); // NBD_REP_ACK
//!
//! let mut sent = Vec::new();
//! let mut input = &server[..];
//! let mut size = None;
//! loop {
//!     // 1. transmit, until nothing is left
//!     while !client.poll_transmit().is_empty() {
//!         let out = client.poll_transmit();
//!         sent.extend_from_slice(out);
//!         let n = out.len();
//!         client.transmitted(n);
//!     }
//!     // 2. receive
//!     let p = client.handle_input(input, Instant(0));
//!     input = &input[p.consumed..];
//!     match p.event {
//!         Some(Event::Ready(export)) => size = Some(export.size),
//!         Some(Event::Failed(e)) => panic!("{e:?}"),
//!         Some(_) => {}
//!         None if p.consumed == 0 => break,
//!         None => {}
//!     }
//! }
//! assert_eq!(size, Some(4096));
//!
//! // Transmission: read 512 bytes at 0; the server answers with a simple reply.
//! let cookie = client.read(0, 512, CommandFlags::empty()).unwrap();
//! assert_eq!(client.poll_transmit().len(), 28);
//! client.transmitted(28);
//! let mut reply = Vec::new();
//! reply.extend_from_slice(&0x67446698u32.to_be_bytes());
//! reply.extend_from_slice(&0u32.to_be_bytes());
//! reply.extend_from_slice(&cookie.0.to_be_bytes());
//! reply.extend_from_slice(&[7; 512]);
//! let mut buf = [0u8; 512];
//! let mut input = &reply[..];
//! let mut ok = false;
//! loop {
//!     let p = client.handle_input(input, Instant(0));
//!     match p.event {
//!         Some(Event::ReadData { offset, data, .. }) => {
//!             let at = offset as usize; // minus the read's offset (0)
//!             buf[at..at + data.len()].copy_from_slice(data);
//!         }
//!         Some(Event::Completed { cookie: c, result }) => { assert_eq!(c, cookie); ok = result.is_ok(); }
//!         Some(_) => {}
//!         None if p.consumed == 0 => break,
//!         None => {}
//!     }
//!     input = &input[p.consumed..];
//! }
//! assert!(ok && buf == [7; 512]);
//! ```

mod config;
mod error;
mod event;
mod inflight;
mod negotiate;
mod transmission;
mod tx;

pub use config::{Config, ConfigError, Mode, TlsPolicy};
pub use error::{Error, RequestError, RequestFailure};
pub use event::{BlockSize, Cookie, Event, Export, Extents, Progress};
pub use inflight::MAX_FRAGMENTS;
pub use tx::TRANSMIT_BUFFER;

use crate::time::Instant;
use crate::wire::{HeaderMode, MAX_STRING};

use inflight::InFlight;
use negotiate::Step;
use transmission::Rx;
use tx::Tx;

/// Metadata contexts the client selects and tracks at most.
pub const MAX_CONTEXTS: usize = 16;

/// Largest option reply payload the client reads: an `NBD_REP_SERVER` with
/// a 4096-byte name and a 4096-byte description. Longer replies end the
/// handshake ([`Error::OptionReplyTooLong`]) unread.
pub const MAX_OPTION_REPLY: usize = 4 + 2 * MAX_STRING;

/// Fixed buffer that collects bytes split across inputs.
#[derive(Debug)]
pub(crate) struct Gather<const C: usize> {
    buf: [u8; C],
    len: usize,
}

impl<const C: usize> Gather<C> {
    const fn new() -> Self {
        Self {
            buf: [0; C],
            len: 0,
        }
    }

    /// Append from `input` until `need` bytes are held (capped at `C`);
    /// returns how many bytes of `input` were taken.
    fn fill(&mut self, input: &[u8], need: usize) -> usize {
        let need = need.min(C);
        let k = need.saturating_sub(self.len).min(input.len());
        if let (Some(dst), Some(src)) = (self.buf.get_mut(self.len..self.len + k), input.get(..k)) {
            dst.copy_from_slice(src);
            self.len += k;
            k
        } else {
            0
        }
    }

    fn bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    fn clear(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_collects_across_pieces_and_caps() {
        let mut g = Gather::<4>::new();
        assert_eq!(g.fill(&[1, 2], 3), 2);
        assert_eq!(g.fill(&[3, 4, 5], 3), 1);
        assert_eq!(g.bytes(), &[1, 2, 3]);
        assert_eq!(g.fill(&[9; 10], 100), 1);
        assert_eq!(g.bytes(), &[1, 2, 3, 9]);
    }

    #[test]
    fn spans_keep_valid_utf8_only() {
        let b = b"ok\xffno";
        let t = Span::text(Src::Payload, b, 0, b.len());
        assert_eq!((t.start, t.end), (0, 2));
        assert!(Span::name(Src::Payload, b, 0, b.len()).is_err());
        assert!(Span::name(Src::Payload, b, 0, 99).is_err());
        assert!(Span::name(Src::Payload, b, 0, 2).is_ok());
    }
}

/// Where an event's bytes live until it is handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Src {
    Input,
    Payload,
    Extent,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Span {
    src: Src,
    start: usize,
    end: usize,
}

impl Span {
    pub(crate) fn new(src: Src, start: usize, end: usize) -> Self {
        Self { src, start, end }
    }

    /// A span over the longest UTF-8 prefix of `bytes[start..end]` (text
    /// for humans: descriptions and messages are shown, not trusted).
    pub(crate) fn text(src: Src, bytes: &[u8], start: usize, end: usize) -> Self {
        let b = bytes.get(start..end).unwrap_or(&[]);
        let valid = match core::str::from_utf8(b) {
            Ok(_) => b.len(),
            Err(e) => e.valid_up_to(),
        };
        Self::new(src, start, start + valid)
    }

    /// A span that must be UTF-8 entirely (names used again on the wire).
    pub(crate) fn name(src: Src, bytes: &[u8], start: usize, end: usize) -> Result<Self, Error> {
        let b = bytes.get(start..end).ok_or(Error::InvalidString)?;
        core::str::from_utf8(b).map_err(|_| Error::InvalidString)?;
        Ok(Self::new(src, start, end))
    }
}

/// An event before its spans are turned into borrows.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Raw {
    StartTls,
    Finished,
    ServerShutdown,
    Ready(Export),
    Info(Export),
    Refused {
        option: crate::wire::OptionType,
        reply: crate::wire::ReplyType,
        message: Span,
    },
    ExportListed {
        name: Span,
        description: Span,
    },
    MetaContext {
        id: u32,
        name: Span,
    },
    CanonicalName(Span),
    Description(Span),
    ReadData {
        cookie: Cookie,
        offset: u64,
        data: Span,
    },
    ReadHole {
        cookie: Cookie,
        offset: u64,
        len: u32,
    },
    BlockStatus {
        cookie: Cookie,
        context_id: u32,
        offset: u64,
        data: Span,
        wide: bool,
    },
    ReplyError {
        cookie: Cookie,
        error: crate::wire::Errno,
        offset: Option<u64>,
        message: Span,
    },
    Completed {
        cookie: Cookie,
        result: Result<(), RequestFailure>,
    },
}

/// What one internal step did.
#[derive(Debug, Default)]
pub(crate) struct Out {
    consumed: usize,
    raw: Option<Raw>,
    /// The state changed: step again even if nothing was consumed.
    again: bool,
}

impl Out {
    fn took(consumed: usize) -> Self {
        Self {
            consumed,
            raw: None,
            again: false,
        }
    }

    fn next(consumed: usize, raw: Option<Raw>) -> Self {
        Self {
            consumed,
            raw,
            again: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OptRx {
    Header,
    Payload {
        reply: crate::wire::ReplyType,
        length: usize,
    },
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Phase {
    Greeting,
    Option { step: Step, rx: OptRx },
    AwaitTls,
    ExportNameReply,
    ExportNamePadding { left: usize, export: Export },
    Transmission { disconnecting: bool },
    Finished,
    Failed,
}

/// One NBD client connection's protocol state; `N` requests may be in
/// flight at once (at most 65536).
#[derive(Debug)]
pub struct Client<'c, const N: usize = 64> {
    config: Config<'c>,
    phase: Phase,
    tx: Tx<'c>,
    header: Gather<32>,
    payload: Gather<MAX_OPTION_REPLY>,
    extent: [u8; 16],
    deadline: Option<Instant>,
    pending: Option<Raw>,
    error: Option<Error>,

    // Handshake results.
    no_zeroes: bool,
    tls_active: bool,
    mode: HeaderMode,
    export_info: Option<(u64, crate::wire::TransmissionFlags)>,
    block_size: Option<BlockSize>,
    export: Option<Export>,
    /// Selected contexts: id and the index of the query that named it.
    contexts: heapless::Vec<(u32, Option<u8>), MAX_CONTEXTS>,

    // Transmission.
    inflight: InFlight<N>,
    rx: Rx,
    max_chunk: u64,
    payload_owed: bool,
    shutdown_reported: bool,
}

impl<'c, const N: usize> Client<'c, N> {
    /// A new connection, waiting for the server's greeting.
    pub fn new(config: Config<'c>, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            phase: Phase::Greeting,
            tx: Tx::new(),
            header: Gather::new(),
            payload: Gather::new(),
            extent: [0; 16],
            deadline: config.handshake_timeout.map(|t| now.saturating_add(t)),
            pending: None,
            error: None,
            no_zeroes: false,
            tls_active: false,
            mode: HeaderMode::Simple,
            export_info: None,
            block_size: None,
            export: None,
            contexts: heapless::Vec::new(),
            inflight: InFlight::new(),
            rx: Rx::Header,
            max_chunk: 0,
            payload_owed: false,
            shutdown_reported: false,
        })
    }

    pub fn config(&self) -> &Config<'c> {
        &self.config
    }

    /// Bytes to send now; call again after [`transmitted`](Self::transmitted)
    /// until it is empty (handshake output comes in several slices).
    pub fn poll_transmit(&self) -> &[u8] {
        self.tx.poll()
    }

    /// `n` bytes of [`poll_transmit`](Self::poll_transmit) were sent.
    pub fn transmitted(&mut self, n: usize) {
        self.tx.advance(n);
    }

    /// Bytes queued but not yet reported sent.
    pub fn pending_transmit(&self) -> usize {
        self.tx.pending()
    }

    /// The handshake deadline, while the handshake lasts.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.negotiating() {
            self.deadline
        } else {
            None
        }
    }

    /// Time has reached `now`: a handshake past its deadline fails.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Event<'static>> {
        match self.poll_timeout() {
            Some(d) if now >= d => {
                self.fail(Error::Timeout);
                Some(Event::Failed(Error::Timeout))
            }
            _ => None,
        }
    }

    /// The server closed the connection. `Ok` if that was expected (after
    /// [`Event::Finished`], or after [`disconnect`](Self::disconnect) with
    /// nothing in flight); otherwise the error, e.g. a server that died
    /// in the middle of `GO`.
    pub fn handle_eof(&mut self) -> Result<(), Error> {
        match self.phase {
            Phase::Finished => Ok(()),
            Phase::Failed => Err(self.error.unwrap_or(Error::UnexpectedEof)),
            Phase::Transmission {
                disconnecting: true,
            } if self.inflight.len() == 0 && self.header.len == 0 => {
                self.phase = Phase::Finished;
                Ok(())
            }
            _ => {
                self.fail(Error::UnexpectedEof);
                Err(Error::UnexpectedEof)
            }
        }
    }

    /// TLS is up after [`Event::StartTls`]; the handshake continues.
    pub fn tls_established(&mut self) {
        if let Phase::AwaitTls = self.phase {
            self.tls_active = true;
            let step = self.after_tls();
            self.start(step);
        }
    }

    /// Whether TLS was negotiated.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// The export, once in transmission.
    pub fn export(&self) -> Option<&Export> {
        self.export.as_ref()
    }

    /// Whether requests may be submitted.
    pub fn is_ready(&self) -> bool {
        matches!(
            self.phase,
            Phase::Transmission {
                disconnecting: false
            }
        ) && !self.payload_owed
    }

    /// Whether the connection is over (finished, disconnected or failed).
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Finished | Phase::Failed)
    }

    /// The fatal error, if one ended the connection.
    pub fn error(&self) -> Option<Error> {
        self.error
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Selected metadata contexts: id, and the configured query that named
    /// it (`None` if the server's name matched none of them).
    pub fn contexts(&self) -> impl Iterator<Item = (u32, Option<&'c str>)> + '_ {
        let queries = self.config.meta_contexts;
        self.contexts
            .iter()
            .map(move |&(id, q)| (id, q.and_then(|i| queries.get(usize::from(i)).copied())))
    }

    /// The id the server gave a configured context name, if it selected it.
    pub fn context_id(&self, name: &str) -> Option<u32> {
        self.contexts()
            .find(|(_, n)| *n == Some(name))
            .map(|(id, _)| id)
    }

    fn negotiating(&self) -> bool {
        matches!(
            self.phase,
            Phase::Greeting
                | Phase::Option { .. }
                | Phase::AwaitTls
                | Phase::ExportNameReply
                | Phase::ExportNamePadding { .. }
        )
    }

    fn fail(&mut self, e: Error) {
        self.phase = Phase::Failed;
        self.error = Some(e);
        self.pending = None;
    }

    /// Feed received bytes; see the [module docs](self).
    pub fn handle_input<'a>(&'a mut self, input: &'a [u8], now: Instant) -> Progress<'a> {
        let _ = now;
        if let Some(raw) = self.pending.take() {
            return Progress {
                consumed: 0,
                event: Some(self.materialize(raw, &[])),
            };
        }
        if let Phase::Finished | Phase::Failed = self.phase {
            return Progress {
                consumed: input.len(),
                event: None,
            };
        }
        let mut base = 0;
        loop {
            let rest = input.get(base..).unwrap_or(&[]);
            let step = match self.phase {
                Phase::Transmission { .. } => self.reply_step(rest),
                _ => self.handshake_step(rest),
            };
            match step {
                Err(e) => {
                    self.fail(e);
                    return Progress {
                        consumed: input.len(),
                        event: Some(Event::Failed(e)),
                    };
                }
                Ok(out) => {
                    let consumed = out.consumed.min(rest.len());
                    if let Some(raw) = out.raw {
                        return Progress {
                            consumed: base + consumed,
                            event: Some(self.materialize(raw, rest)),
                        };
                    }
                    base += consumed;
                    if consumed == 0 && !out.again {
                        return Progress {
                            consumed: base,
                            event: None,
                        };
                    }
                    if let Phase::Finished | Phase::Failed = self.phase {
                        return Progress {
                            consumed: base,
                            event: None,
                        };
                    }
                }
            }
        }
    }

    fn bytes<'a>(&'a self, input: &'a [u8], s: Span) -> &'a [u8] {
        let src: &[u8] = match s.src {
            Src::Input => input,
            Src::Payload => self.payload.bytes(),
            Src::Extent => &self.extent,
        };
        src.get(s.start..s.end).unwrap_or(&[])
    }

    fn str<'a>(&'a self, input: &'a [u8], s: Span) -> &'a str {
        core::str::from_utf8(self.bytes(input, s)).unwrap_or("")
    }

    fn materialize<'a>(&'a self, raw: Raw, input: &'a [u8]) -> Event<'a> {
        match raw {
            Raw::StartTls => Event::StartTls,
            Raw::Finished => Event::Finished,
            Raw::ServerShutdown => Event::ServerShutdown,
            Raw::Ready(e) => Event::Ready(e),
            Raw::Info(e) => Event::Info(e),
            Raw::Refused {
                option,
                reply,
                message,
            } => Event::Refused {
                option,
                reply,
                message: self.str(input, message),
            },
            Raw::ExportListed { name, description } => Event::ExportListed {
                name: self.str(input, name),
                description: self.str(input, description),
            },
            Raw::MetaContext { id, name } => Event::MetaContext {
                id,
                name: self.str(input, name),
            },
            Raw::CanonicalName(s) => Event::CanonicalName(self.str(input, s)),
            Raw::Description(s) => Event::Description(self.str(input, s)),
            Raw::ReadData {
                cookie,
                offset,
                data,
            } => Event::ReadData {
                cookie,
                offset,
                data: self.bytes(input, data),
            },
            Raw::ReadHole {
                cookie,
                offset,
                len,
            } => Event::ReadHole {
                cookie,
                offset,
                len,
            },
            Raw::BlockStatus {
                cookie,
                context_id,
                offset,
                data,
                wide,
            } => Event::BlockStatus {
                cookie,
                context_id,
                offset,
                extents: Extents::new(self.bytes(input, data), wide),
            },
            Raw::ReplyError {
                cookie,
                error,
                offset,
                message,
            } => Event::ReplyError {
                cookie,
                error,
                offset,
                message: self.str(input, message),
            },
            Raw::Completed { cookie, result } => Event::Completed { cookie, result },
        }
    }
}
