//! The sans-IO NBD client: one [`Client`] per connection, no heap, no
//! clock, no socket, and no panic whatever the server sends.
//!
//! # Driving it
//!
//! The frontend runs the [driving loop](crate#the-driving-loop) with
//! [`Client::poll_transmit`]/[`Client::transmitted`],
//! [`Client::handle_input`] and [`Client::poll_timeout`]/
//! [`Client::handle_timeout`], and calls [`Client::handle_eof`] when the
//! server closes. Where the client differs:
//!
//! * **A unit is taken whole.** The machine copies no input, so the bytes
//!   of every event (read data, names, messages, extents) are the
//!   caller's. It takes a greeting, an option reply, a reply header with
//!   the fixed part of its chunk, or a block status descriptor only once
//!   all of it is in the input, and until then returns `consumed == 0`
//!   with no event: keep the unconsumed bytes and call again with more
//!   behind them, from a receive buffer of at least [`INPUT_BUFFER`]
//!   bytes (the largest unit, an option reply). How the bytes arrive does
//!   not matter; read data is handed out as it comes, in pieces of any
//!   size.
//! * **Output waits only in the handshake.** Option requests go out one at
//!   a time, and no reply is read while one waits to be sent. In
//!   transmission replies are read whatever is queued; request headers
//!   queue up to [`TRANSMIT_BUFFER`] bytes
//!   ([`RequestError::TransmitFull`] beyond).
//! * **End of stream** is `Ok` from [`Client::handle_eof`] after
//!   [`Event::Finished`], or after [`Client::disconnect`] with nothing in
//!   flight and no reply begun; otherwise it is the error.
//!
//! In the handshake the machine walks through `STARTTLS` (per
//! [`TlsPolicy`]; on [`Event::StartTls`] send what is queued, run TLS,
//! then call [`Client::tls_established`]), `EXTENDED_HEADERS` and/or
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
//! # Memory
//!
//! A `Client<N>` holds its [`Config`] (a 4096-byte export name and
//! [`QUERY_BYTES`] of queries), an output queue of [`TRANSMIT_BUFFER`]
//! bytes and a table of `N` requests in flight, and nothing else: on a
//! 64-bit target 12,720 bytes plus 120 per request (20,400 for the default
//! `N = 64`; a test in `tests/client_transmission.rs` keeps the bound).
//! The frontend adds its receive buffer, at least [`INPUT_BUFFER`] (8,216)
//! bytes.
//!
//! ```
//! use blockwire_core::client::{Client, Config, Event};
//! use blockwire_core::time::Instant;
//! use blockwire_core::wire::CommandFlags;
//!
//! let mut config = Config::new("disk").unwrap();
//! config.structured_replies = false;
//! config.extended_headers = false;
//! let mut client: Client = Client::new(config, Instant(0));
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
//!     let p = client.handle_input(input);
//!     input = &input[p.consumed..];
//!     match p.event {
//!         Some(Event::Ready(export)) => size = Some(export.size),
//!         Some(Event::Failed(e)) => panic!("{e}"),
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
//!     let p = client.handle_input(input);
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
mod handshake;
mod output;
mod transmission;

pub use config::{Config, ConfigError, Mode, QUERY_BYTES, TlsPolicy};
pub use error::{Error, RequestError, RequestFailure};
pub use event::{BlockSize, Cookie, Event, Export, Extents, Progress};
pub use output::TRANSMIT_BUFFER;
pub use transmission::MAX_FRAGMENTS;

use crate::time::Instant;
use crate::wire::MAX_STRING;
use crate::wire::headers::OptionReply;

use handshake::{Handshake, Next};
use output::Output;
use transmission::Transmission;

/// Metadata contexts the client selects and tracks at most.
pub const MAX_CONTEXTS: usize = 16;

/// Largest option reply payload the client reads: an `NBD_REP_SERVER` with
/// a 4096-byte name and a 4096-byte description. Longer replies end the
/// handshake ([`Error::OptionReplyTooLong`]) unread.
pub const MAX_OPTION_REPLY: usize = 4 + 2 * MAX_STRING;

/// The smallest receive buffer a frontend may feed the client from: the
/// largest unit the machine takes whole, an option reply of
/// [`MAX_OPTION_REPLY`] bytes with its header. (The largest unit of
/// transmission, an error chunk with a 4096-byte message, is smaller.)
pub const INPUT_BUFFER: usize = OptionReply::SIZE + MAX_OPTION_REPLY;

/// What one step of the machine did with the input it was given.
#[derive(Debug)]
pub(crate) struct Out<'i> {
    consumed: usize,
    event: Option<Event<'i>>,
    /// The state changed without consuming: step again.
    again: bool,
}

impl<'i> Out<'i> {
    /// Nothing to do until more input arrives.
    const NEED_MORE: Self = Self {
        consumed: 0,
        event: None,
        again: false,
    };

    /// `n` bytes were taken (possibly none) and the state moved on, with
    /// no event: step again.
    fn took(n: usize) -> Self {
        Self {
            consumed: n,
            event: None,
            again: true,
        }
    }

    fn event(n: usize, event: Event<'i>) -> Self {
        Self {
            consumed: n,
            event: Some(event),
            again: false,
        }
    }

    fn maybe(n: usize, event: Option<Event<'i>>) -> Self {
        match event {
            Some(e) => Self::event(n, e),
            None => Self::took(n),
        }
    }
}

/// The longest UTF-8 prefix of `bytes`: text for humans (descriptions,
/// messages) is shown, not trusted, so invalid bytes end it rather than
/// the connection.
pub(crate) fn text(bytes: &[u8]) -> &str {
    match core::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(bytes.get(..e.valid_up_to()).unwrap_or(&[])).unwrap_or(""),
    }
}

/// Where the connection is; each phase owns the state only it needs.
#[derive(Debug)]
enum Phase<const N: usize> {
    Handshake(Handshake),
    /// `STARTTLS` was accepted; waiting for [`Client::tls_established`].
    AwaitTls(Handshake),
    Transmission(Transmission<N>),
    /// The handshake ended as `Mode::Info`/`Mode::List` asked; `owed`: the
    /// [`Event::Finished`] is still to be reported (it follows `Info`).
    Finished {
        owed: bool,
    },
    /// The connection failed outside [`Client::handle_input`]; the next
    /// call reports it.
    Failing(Error),
    Failed(Error),
}

/// One NBD client connection's protocol state; `N` requests may be in
/// flight at once (at most 65536).
#[derive(Debug)]
pub struct Client<const N: usize = 64> {
    config: Config,
    phase: Phase<N>,
    out: Output,
    /// The handshake's deadline.
    deadline: Option<Instant>,
}

impl<const N: usize> Client<N> {
    /// A new connection, waiting for the server's greeting.
    pub fn new(config: Config, now: Instant) -> Self {
        let deadline = config.handshake_timeout.map(|t| now.saturating_add(t));
        Self {
            config,
            phase: Phase::Handshake(Handshake::new()),
            out: Output::new(),
            deadline,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Bytes to send now; after sending some, report them with
    /// [`transmitted`](Self::transmitted) and ask again until it is empty.
    pub fn poll_transmit(&self) -> &[u8] {
        self.out.poll()
    }

    /// `n` bytes of [`poll_transmit`](Self::poll_transmit) were sent.
    pub fn transmitted(&mut self, n: usize) {
        self.out.advance(n);
    }

    /// Bytes queued but not yet reported sent.
    pub fn pending_transmit(&self) -> usize {
        self.out.pending()
    }

    /// The handshake deadline, while the handshake lasts.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Handshake(_) | Phase::AwaitTls(_) => self.deadline,
            _ => None,
        }
    }

    /// Time has reached `now`: a handshake past its deadline fails.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Event<'static>> {
        match self.poll_timeout() {
            Some(d) if now >= d => Some(self.fail(Error::Timeout)),
            _ => None,
        }
    }

    /// The server closed the connection. `Ok` if that was expected (after
    /// [`Event::Finished`], or after [`disconnect`](Self::disconnect) with
    /// nothing in flight and no reply begun); otherwise the error, e.g. a
    /// server that died in the middle of `GO`.
    pub fn handle_eof(&mut self) -> Result<(), Error> {
        match &self.phase {
            Phase::Finished { .. } => Ok(()),
            Phase::Failing(e) | Phase::Failed(e) => Err(*e),
            Phase::Transmission(t) if t.ended_cleanly() => {
                self.phase = Phase::Finished { owed: false };
                Ok(())
            }
            _ => {
                self.fail(Error::UnexpectedEof);
                Err(Error::UnexpectedEof)
            }
        }
    }

    /// TLS is up after [`Event::StartTls`]; the handshake continues (send
    /// what [`poll_transmit`](Self::poll_transmit) now holds).
    pub fn tls_established(&mut self) {
        let Phase::AwaitTls(h) = &mut self.phase else {
            return;
        };
        match h.tls_up(&self.config, &mut self.out) {
            Ok(()) => {
                if let Phase::AwaitTls(h) =
                    core::mem::replace(&mut self.phase, Phase::Finished { owed: false })
                {
                    self.phase = Phase::Handshake(h);
                }
            }
            // Reported by the next `handle_input`, like any failure.
            Err(e) => self.phase = Phase::Failing(e),
        }
    }

    /// Whether TLS was negotiated (known from `STARTTLS` on; in
    /// transmission, whether it was).
    pub fn tls_active(&self) -> bool {
        match &self.phase {
            Phase::Handshake(h) | Phase::AwaitTls(h) => h.tls_active(),
            Phase::Transmission(t) => t.tls_active(),
            _ => false,
        }
    }

    /// The export, once in transmission.
    pub fn export(&self) -> Option<&Export> {
        match &self.phase {
            Phase::Transmission(t) => Some(t.export()),
            _ => None,
        }
    }

    /// Whether requests may be submitted.
    pub fn is_ready(&self) -> bool {
        matches!(&self.phase, Phase::Transmission(t) if t.ready_to_send().is_ok())
    }

    /// Whether the connection is over (finished, disconnected or failed).
    pub fn is_closed(&self) -> bool {
        matches!(
            self.phase,
            Phase::Finished { .. } | Phase::Failing(_) | Phase::Failed(_)
        )
    }

    /// The fatal error, if one ended the connection.
    pub fn error(&self) -> Option<Error> {
        match self.phase {
            Phase::Failing(e) | Phase::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        match &self.phase {
            Phase::Transmission(t) => t.in_flight(),
            _ => 0,
        }
    }

    /// Selected metadata contexts: id, and the configured query that named
    /// it (`None` if the server's name matched none of them).
    pub fn contexts(&self) -> impl Iterator<Item = (u32, Option<&str>)> + '_ {
        let selected = match &self.phase {
            Phase::Handshake(h) | Phase::AwaitTls(h) => h.contexts(),
            Phase::Transmission(t) => t.contexts(),
            _ => &[],
        };
        selected
            .iter()
            .map(|&(id, q)| (id, q.and_then(|i| self.config.meta_context(usize::from(i)))))
    }

    /// The id the server gave a configured context name, if it selected it.
    pub fn context_id(&self, name: &str) -> Option<u32> {
        self.contexts()
            .find(|(_, n)| *n == Some(name))
            .map(|(id, _)| id)
    }

    /// End the connection with `e`; the event to report it.
    fn fail(&mut self, e: Error) -> Event<'static> {
        self.phase = Phase::Failed(e);
        Event::Failed(e)
    }

    /// Feed received bytes; see the [module docs](self).
    pub fn handle_input<'i>(&mut self, input: &'i [u8]) -> Progress<'i> {
        match self.phase {
            Phase::Finished { owed: true } => {
                self.phase = Phase::Finished { owed: false };
                return done(0, Some(Event::Finished));
            }
            Phase::Failing(e) => return done(input.len(), Some(self.fail(e))),
            _ => {}
        }
        let mut base = 0;
        loop {
            let rest = input.get(base..).unwrap_or(&[]);
            let step = match &mut self.phase {
                // The handshake is a conversation: nothing is read while
                // an option request waits to be sent.
                Phase::Handshake(_) if !self.out.is_empty() => return done(base, None),
                Phase::Handshake(h) => match h.step(rest, &self.config, &mut self.out) {
                    Ok((out, Next::Stay)) => Ok(out),
                    Ok((out, next)) => {
                        self.enter(next);
                        Ok(out)
                    }
                    Err(e) => Err(e),
                },
                Phase::AwaitTls(_) if rest.is_empty() => return done(base, None),
                Phase::AwaitTls(_) => Err(Error::PlaintextAfterStartTls),
                Phase::Transmission(t) => t.step(rest),
                Phase::Finished { .. } | Phase::Failing(_) | Phase::Failed(_) => {
                    return done(input.len(), None);
                }
            };
            match step {
                Err(e) => return done(input.len(), Some(self.fail(e))),
                Ok(out) => {
                    let consumed = out.consumed.min(rest.len());
                    if out.event.is_some() {
                        return done(base + consumed, out.event);
                    }
                    base += consumed;
                    if consumed == 0 && !out.again {
                        if let Phase::Transmission(t) = &mut self.phase {
                            t.set_partial(base < input.len());
                        }
                        return done(base, None);
                    }
                }
            }
        }
    }

    /// Leave the handshake for what it ended in.
    fn enter(&mut self, next: Next) {
        let old = core::mem::replace(&mut self.phase, Phase::Finished { owed: false });
        let Phase::Handshake(h) = old else {
            self.phase = old;
            return;
        };
        self.phase = match next {
            Next::Stay => Phase::Handshake(h),
            Next::AwaitTls => Phase::AwaitTls(h),
            Next::Transmission(export) => {
                self.deadline = None;
                Phase::Transmission(Transmission::new(export, h))
            }
            Next::Finished { owed } => Phase::Finished { owed },
        };
    }
}

fn done(consumed: usize, event: Option<Event<'_>>) -> Progress<'_> {
    Progress { consumed, event }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_keeps_the_valid_prefix() {
        assert_eq!(text(b"ok"), "ok");
        assert_eq!(text(b"ok\xffno"), "ok");
        assert_eq!(text(b"\xff"), "");
    }
}
