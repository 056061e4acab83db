//! The transmission phase: the open export, the table of requests in
//! flight, and the reply decoder.
//!
//! [`request`] checks requests before they are queued and writes their
//! headers; [`reply`] frames replies and [`chunks`] checks each chunk
//! against the request it answers; [`inflight`] is the table between them.

mod chunks;
mod inflight;
mod reply;
mod request;

pub use inflight::MAX_FRAGMENTS;

use crate::wire::DEFAULT_MAX_PAYLOAD;

use super::handshake::{Contexts, Handshake};
use super::{Error, Event, Export, Out};
use inflight::InFlight;
use reply::Rx;

/// Whether the server said it is shutting down (`NBD_ESHUTDOWN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shutdown {
    No,
    /// Seen on a completion; [`Event::ServerShutdown`] comes next.
    Owed,
    Reported,
}

#[derive(Debug)]
pub(crate) struct Transmission<const N: usize> {
    export: Export,
    tls_active: bool,
    /// The contexts the handshake selected.
    contexts: Contexts,
    inflight: InFlight<N>,
    rx: Rx,
    /// Longest chunk payload accepted.
    max_chunk: u64,
    /// A write's header was queued; its payload is the frontend's to send.
    payload_owed: bool,
    /// `NBD_CMD_DISC` is queued: no request may follow.
    disconnecting: bool,
    shutdown: Shutdown,
    /// The last input ended inside a reply header or chunk.
    partial: bool,
}

impl<const N: usize> Transmission<N> {
    pub(crate) fn new(export: Export, handshake: Handshake) -> Self {
        let limit = export.max_payload().max(DEFAULT_MAX_PAYLOAD);
        Self {
            export,
            tls_active: handshake.tls_active(),
            contexts: handshake.into_contexts(),
            inflight: InFlight::new(),
            rx: Rx::Header,
            // Room for the fixed part of any chunk (ERROR_OFFSET's 14 bytes).
            max_chunk: u64::from(limit) + 64,
            payload_owed: false,
            disconnecting: false,
            shutdown: Shutdown::No,
            partial: false,
        }
    }

    pub(crate) fn export(&self) -> &Export {
        &self.export
    }

    pub(crate) fn tls_active(&self) -> bool {
        self.tls_active
    }

    pub(crate) fn contexts(&self) -> &[(u32, Option<u8>)] {
        &self.contexts
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    pub(crate) fn set_partial(&mut self, partial: bool) {
        self.partial = partial;
    }

    /// The server may close now without anything being lost: a disconnect
    /// was sent, every request is answered, and no reply was begun.
    pub(crate) fn ended_cleanly(&self) -> bool {
        self.disconnecting
            && self.inflight.len() == 0
            && !self.partial
            && matches!(self.rx, Rx::Header)
    }

    /// Take what `input` holds of the replies.
    pub(crate) fn step<'i>(&mut self, input: &'i [u8]) -> Result<Out<'i>, Error> {
        if self.shutdown == Shutdown::Owed {
            self.shutdown = Shutdown::Reported;
            return Ok(Out::event(0, Event::ServerShutdown));
        }
        self.decode(input)
    }
}
