//! The sans-IO NBD server: one [`Server`] per client connection.
//!
//! It is driven by the crate's [driving loop](crate#the-driving-loop).
//! What is particular to the server:
//!
//! * Only the handshake produces bytes in [`Server::poll_transmit`] (the
//!   greeting, option replies).
//! * Requests come out as typed [`Request`]s, validated against every rule
//!   of the spec, with one [`Command`] variant per command carrying exactly
//!   what it means, and [`Request::plan`] says what carrying one out asks
//!   of the device, step by step. Their replies are encoded with the session's
//!   [`ReplyEncoder`]: [`ReplyEncoder::result`] for requests without data,
//!   a [`ReadReply`] plan for reads (data and hole chunks), and
//!   [`ReplyEncoder::block_status`] for block status. The frontend never
//!   lays out reply bytes.
//! * [`DeviceCaps::transmission_flags`] turns what a device can do into
//!   the flags its export advertises.
//! * [`sync`] drives all of the above over a synchronous
//!   [`BlockDevice`](crate::block::BlockDevice): a whole connection, for a
//!   frontend that only moves bytes.
//!
//! Events say what the frontend must do:
//!
//! * [`Event::StartTls`]: send the pending `ACK` (step 1), discard any
//!   plaintext already received, run the TLS handshake, then call
//!   [`Server::tls_established`]; from then on all bytes go through TLS.
//! * [`Event::Ready`]: the handshake is over; the [`Session`] says which
//!   export, with which flags, in which [`HeaderMode`]. Transmit the last
//!   handshake bytes before any reply.
//! * [`Event::Request`]: carry out a validated request and answer it with
//!   the session's [`ReplyEncoder`], in any order. A write's payload
//!   follows as [`Event::WriteData`] pieces borrowed from the input (the
//!   core never buffers it); alternatively read it straight from the socket
//!   into your own buffer and report it with [`Server::skip_payload`].
//! * [`Event::Reject`]: the request was invalid; the machine built the
//!   error reply — send it like any other reply. If `close` is set, close
//!   the connection after sending it.
//! * [`Event::Disconnect`]: the client sent `NBD_CMD_DISC`; finish in-flight
//!   requests, then close. Later input is ignored.
//! * [`Event::Close`]: the connection must end now (after sending what
//!   step 1 still holds) — a protocol violation, `NBD_OPT_ABORT`, a
//!   timeout.
//!
//! ```
//! use blockwire_core::server::{Server, ServerConfig, Event, Exports, ExportInfo, BlockSizes};
//! use blockwire_core::wire::TransmissionFlags;
//! use blockwire_core::time::Instant;
//!
//! struct One;
//! impl Exports for One {
//!     fn find(&self, name: &str) -> Option<usize> { (name.is_empty() || name == "disk").then_some(0) }
//!     fn export(&self, i: usize) -> Option<ExportInfo<'_>> {
//!         (i == 0).then_some(ExportInfo {
//!             name: "disk", description: "", size: 1 << 20,
//!             flags: TransmissionFlags::SEND_FLUSH, block_sizes: BlockSizes::DEFAULT,
//!             block_size_required: false,
//!         })
//!     }
//!     fn meta_context(&self, _: usize, i: usize) -> Option<&str> { (i == 0).then_some("base:allocation") }
//! }
//!
//! let mut server = Server::new(One, ServerConfig::default(), Instant(0));
//! let mut to_client = Vec::new();
//! // 1. transmit: the greeting
//! let out = server.poll_transmit();
//! to_client.extend_from_slice(out);
//! let n = out.len();
//! server.transmitted(n);
//! // 2. receive: client flags (FIXED_NEWSTYLE | NO_ZEROES), then EXPORT_NAME "disk"
//! let mut input: Vec<u8> = vec![0, 0, 0, 3];
//! input.extend_from_slice(b"IHAVEOPT");
//! input.extend_from_slice(&1u32.to_be_bytes());
//! input.extend_from_slice(&4u32.to_be_bytes());
//! input.extend_from_slice(b"disk");
//! let mut rest = &input[..];
//! let mut ready = false;
//! loop {
//!     let p = server.handle_input(rest);
//!     if let Some(Event::Ready(session)) = p.event { assert_eq!(session.size, 1 << 20); ready = true; }
//!     else if p.consumed == 0 { break }
//!     rest = &rest[p.consumed..];
//! }
//! assert!(ready);
//! assert_eq!(server.poll_transmit().len(), 10); // size + flags, no zero padding
//! ```

mod exports;
mod handshake;
mod read_reply;
mod reply;
mod request;
pub mod sync;
mod transmission;

pub use exports::{BlockSizes, ContextSet, DeviceCaps, ExportInfo, Exports};
pub use read_reply::{MIN_HOLE, ReadChunk, ReadReply, SPARSE_READ_MIN, status_from};
pub use reply::{
    ErrorReply, ExtentBuf, Fault, MAX_ERROR_MESSAGE, MAX_REPLY_HEADER, ReplyEncoder, ReplyHeader,
    ReplyTo, ShortReply, StatusError,
};
pub use request::{Command, Plan, Request, Step};

use core::time::Duration;

use crate::time::Instant;
use crate::wire::{ClientFlags, HeaderMode, TransmissionFlags};

/// Metadata contexts an export may offer (ids 0..64).
pub const MAX_CONTEXTS: usize = 64;
/// Largest option payload the machine reads into memory. Enough for
/// `NBD_OPT_GO` with a 4096-byte name and every info request, and for
/// `NBD_OPT_SET_META_CONTEXT` with a name and a 4096-byte query.
pub const OPTION_BUFFER: usize = 2 * crate::wire::MAX_STRING + 256;
/// Option payloads above this end the connection unread, as qemu-nbd does
/// for payloads over its 32 MiB buffer size; smaller unwanted payloads are
/// skipped without being stored.
pub const MAX_OPTION_LENGTH: u32 = 32 << 20;
/// Size of the handshake's output buffer: one option reply of the largest
/// kind (an `NBD_REP_SERVER` with a 4096-byte name and description).
///
/// Option payloads are read into the same buffer: the machine reads no
/// option while replies wait, and resolves a payload (names to export
/// positions, queries to context sets) before it writes the replies, so one
/// buffer serves both and a connection costs half the memory.
pub const TRANSMIT_BUFFER: usize = 2 * crate::wire::MAX_STRING + 256;
const _: () = assert!(OPTION_BUFFER <= TRANSMIT_BUFFER);

/// When TLS is offered and demanded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsPolicy {
    /// NOTLS: `NBD_OPT_STARTTLS` is refused with `NBD_REP_ERR_POLICY`.
    #[default]
    Off,
    /// TLS on the client's request; every export is available without.
    Allowed,
    /// FORCEDTLS: every option but `STARTTLS` and `ABORT` gets
    /// `NBD_REP_ERR_TLS_REQD` until TLS is up.
    Required,
}

/// Per-connection settings.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    pub tls: TlsPolicy,
    /// Close a connection still in the handshake after this long
    /// (qemu-nbd's `--handshake-limit`, default 10 s).
    pub handshake_timeout: Option<Duration>,
    /// Offer `NBD_OPT_STRUCTURED_REPLY`.
    pub structured_replies: bool,
    /// Offer `NBD_OPT_EXTENDED_HEADERS`.
    pub extended_headers: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            tls: TlsPolicy::Off,
            handshake_timeout: Some(Duration::from_secs(10)),
            structured_replies: true,
            extended_headers: true,
        }
    }
}

/// What the handshake settled, handed over with [`Event::Ready`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// Position of the export in the frontend's [`Exports`].
    pub export: usize,
    pub size: u64,
    /// Transmission flags as sent to the client.
    pub flags: TransmissionFlags,
    pub block_sizes: BlockSizes,
    /// The client promised to honour `block_sizes` (`NBD_INFO_BLOCK_SIZE`
    /// requested with `NBD_OPT_GO`).
    pub block_sizes_agreed: bool,
    pub mode: HeaderMode,
    /// Metadata contexts selected for this export, by id.
    pub contexts: ContextSet,
    pub client_flags: ClientFlags,
    pub tls: bool,
}

impl Session {
    pub fn encoder(&self) -> ReplyEncoder {
        ReplyEncoder::new(self.mode)
    }
}

/// Why the connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client set client flags we do not know (spec: MUST close).
    UnknownClientFlags,
    /// An option header without the `IHAVEOPT` magic.
    BadOptionMagic,
    /// An option payload longer than [`MAX_OPTION_LENGTH`].
    OptionTooLong,
    /// A client without fixed newstyle sent something but `EXPORT_NAME`,
    /// or needs TLS it cannot negotiate.
    NotFixedNewstyle,
    /// `NBD_OPT_ABORT`.
    Aborted,
    /// `NBD_OPT_EXPORT_NAME` for an export that does not exist or may not
    /// be entered (TLS required, block sizes required, extended headers).
    ExportNameRefused,
    /// Input arrived between `STARTTLS` and the TLS handshake: plaintext
    /// that could be injected (CVE-2021-3716's class).
    PlaintextAfterStartTls,
    /// The handshake took longer than the configured limit.
    HandshakeTimeout,
    /// The server is shutting down.
    Shutdown,
    /// A request header without the right magic.
    BadRequestMagic,
    /// A request announcing a payload too large to read.
    PayloadTooLarge,
    /// `close()` was called after the connection had ended, or input came
    /// after a close.
    Closed,
    /// A handshake reply did not fit the machine's buffer. Its sizing rules
    /// this out (debug builds assert it); release builds close instead of
    /// sending a truncated frame.
    ReplyTooLarge,
}

/// What the frontend must act on; see the [module docs](self).
#[derive(Debug)]
pub enum Event<'a> {
    StartTls,
    Ready(Session),
    Request(Request),
    WriteData {
        cookie: u64,
        /// Export offset of `data[0]`.
        offset: u64,
        data: &'a [u8],
        /// This piece ends the payload.
        last: bool,
    },
    Reject {
        reply: ErrorReply,
        /// Close the connection after sending `reply`.
        close: Option<CloseReason>,
    },
    Disconnect,
    Close(CloseReason),
}

/// Result of one [`Server::handle_input`] call.
#[derive(Debug)]
pub struct Progress<'a> {
    pub consumed: usize,
    pub event: Option<Event<'a>>,
}

impl<'a> Progress<'a> {
    const NONE: Self = Self {
        consumed: 0,
        event: None,
    };
    fn event(consumed: usize, event: Event<'a>) -> Self {
        Self {
            consumed,
            event: Some(event),
        }
    }
}

pub(crate) use handshake::Handshake;
pub(crate) use transmission::Transmission;

#[derive(Debug)]
enum Phase {
    Handshake(Handshake),
    AwaitingTls(Handshake),
    Transmission(Transmission),
    Disconnected,
    Closed,
}

/// One client connection's protocol state.
pub struct Server<E: Exports> {
    exports: E,
    config: ServerConfig,
    phase: Phase,
    out: heapless::Vec<u8, TRANSMIT_BUFFER>,
    sent: usize,
    deadline: Option<Instant>,
    shutting_down: bool,
}

impl<E: Exports> Server<E> {
    /// A new connection; the greeting is ready in [`poll_transmit`](Self::poll_transmit).
    pub fn new(exports: E, config: ServerConfig, now: Instant) -> Self {
        let mut s = Self {
            exports,
            config,
            phase: Phase::Handshake(Handshake::new()),
            out: heapless::Vec::new(),
            sent: 0,
            deadline: config.handshake_timeout.map(|t| now.saturating_add(t)),
            shutting_down: false,
        };
        // The greeting is 18 bytes in an empty buffer of several KiB.
        let greeted = handshake::write_greeting(&mut s.out);
        debug_assert!(greeted.is_ok());
        s
    }

    pub fn exports(&self) -> &E {
        &self.exports
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Bytes waiting to be sent (handshake only).
    pub fn poll_transmit(&mut self) -> &[u8] {
        if self.collecting() {
            return &[];
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
            if let Phase::Handshake(h) = &mut self.phase {
                if h.refill(&self.exports, &mut self.out).is_err() {
                    // A sizing bug (see CloseReason::ReplyTooLarge): send
                    // nothing rather than a truncated reply.
                    debug_assert!(false, "option reply larger than the transmit buffer");
                    self.out.clear();
                    self.phase = Phase::Closed;
                }
            }
        }
        &self.out[self.sent..]
    }

    /// `n` bytes of [`poll_transmit`](Self::poll_transmit)'s answer were sent.
    pub fn transmitted(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.out.len());
    }

    /// Whether the shared handshake buffer holds a payload being read.
    fn collecting(&self) -> bool {
        matches!(&self.phase, Phase::Handshake(h) if h.collecting())
    }

    fn output_pending(&self) -> bool {
        !self.collecting() && self.sent < self.out.len()
            || matches!(&self.phase, Phase::Handshake(h) if h.has_pending_replies())
    }

    /// Feed received bytes; see the [module docs](self). The event borrows
    /// only `input`.
    pub fn handle_input<'i>(&mut self, input: &'i [u8]) -> Progress<'i> {
        let output_pending = self.output_pending();
        match &mut self.phase {
            Phase::Handshake(_) if output_pending => Progress::NONE,
            Phase::Handshake(h) => {
                // Everything queued was sent: the buffer now takes the next
                // option's payload (unless it already holds part of it).
                if !h.collecting() {
                    self.out.clear();
                    self.sent = 0;
                }
                let step = h.step(
                    input,
                    &self.exports,
                    &self.config,
                    &mut self.out,
                    self.shutting_down,
                );
                match step.outcome {
                    handshake::Outcome::Continue => Progress {
                        consumed: step.consumed,
                        event: None,
                    },
                    handshake::Outcome::StartTls => {
                        if let Phase::Handshake(h) =
                            core::mem::replace(&mut self.phase, Phase::Closed)
                        {
                            self.phase = Phase::AwaitingTls(h);
                        }
                        Progress::event(step.consumed, Event::StartTls)
                    }
                    handshake::Outcome::Ready(session) => {
                        self.deadline = None;
                        self.phase =
                            Phase::Transmission(Transmission::new(session, self.shutting_down));
                        Progress::event(step.consumed, Event::Ready(session))
                    }
                    handshake::Outcome::Close(reason) => {
                        self.phase = Phase::Closed;
                        self.deadline = None;
                        Progress::event(step.consumed, Event::Close(reason))
                    }
                }
            }
            Phase::AwaitingTls(_) if input.is_empty() => Progress::NONE,
            Phase::AwaitingTls(_) => {
                self.phase = Phase::Closed;
                Progress::event(0, Event::Close(CloseReason::PlaintextAfterStartTls))
            }
            Phase::Transmission(t) => {
                let (consumed, event) = t.step(input);
                if matches!(event, Some(Event::Disconnect)) {
                    self.phase = Phase::Disconnected;
                } else if matches!(
                    event,
                    Some(Event::Close(_)) | Some(Event::Reject { close: Some(_), .. })
                ) {
                    self.phase = Phase::Closed;
                }
                Progress { consumed, event }
            }
            // After NBD_CMD_DISC the spec forbids the client to send more;
            // whatever comes is dropped unread.
            Phase::Disconnected => Progress {
                consumed: input.len(),
                event: None,
            },
            Phase::Closed => Progress::NONE,
        }
    }

    /// The frontend finished the TLS handshake after [`Event::StartTls`].
    pub fn tls_established(&mut self) {
        if let Phase::AwaitingTls(h) = core::mem::replace(&mut self.phase, Phase::Closed) {
            self.phase = Phase::Handshake(h.after_tls());
        }
    }

    /// Length of a write payload still expected, if the current request is
    /// an accepted `WRITE`; the frontend may read it itself and report it
    /// with [`skip_payload`](Self::skip_payload).
    pub fn write_payload_remaining(&self) -> Option<u64> {
        match &self.phase {
            Phase::Transmission(t) => t.accepted_payload_remaining(),
            _ => None,
        }
    }

    /// `n` bytes of the current write payload were taken by the frontend
    /// without passing through [`handle_input`](Self::handle_input).
    pub fn skip_payload(&mut self, n: u64) {
        if let Phase::Transmission(t) = &mut self.phase {
            t.skip_payload(n);
        }
    }

    /// Next deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Handshake(_) | Phase::AwaitingTls(_) => self.deadline,
            _ => None,
        }
    }

    /// Time has reached `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Event<'static>> {
        match (self.poll_timeout(), &self.phase) {
            (Some(d), Phase::Handshake(_) | Phase::AwaitingTls(_)) if now >= d => {
                // The shared buffer may hold part of an option's payload:
                // once closed it would read as output.
                if self.collecting() {
                    self.out.clear();
                    self.sent = 0;
                }
                self.phase = Phase::Closed;
                self.deadline = None;
                Some(Event::Close(CloseReason::HandshakeTimeout))
            }
            _ => None,
        }
    }

    /// Begin a server shutdown: options are refused with
    /// `NBD_REP_ERR_SHUTDOWN`, and new requests with `NBD_ESHUTDOWN`; the
    /// frontend finishes in-flight requests and then closes.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        if let Phase::Transmission(t) = &mut self.phase {
            t.shutdown();
        }
    }

    /// Whether the handshake is over.
    pub fn session(&self) -> Option<&Session> {
        match &self.phase {
            Phase::Transmission(t) => Some(t.session()),
            _ => None,
        }
    }

    /// Whether the connection has ended (after `Close`, `Disconnect` or a
    /// closing `Reject`).
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed | Phase::Disconnected)
    }
}
