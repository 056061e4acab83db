//! An NBD client over one smoltcp TCP socket, driving the core client
//! machine. [`NbdClient::poll`] is the non-blocking step; the blocking
//! helpers in [`crate::blocking`] build whole requests on it.

use core::fmt;

use blockwire_core::client::{
    Client, Config, Error, Event, INPUT_BUFFER, RequestError, RequestFailure,
};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};

use crate::time::to_core;

/// Why a client operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The connection ended with a protocol error (or the server closed it
    /// early: [`Error::UnexpectedEof`]).
    Protocol(Error),
    /// The machine refused to send the request (a caller mistake, or a
    /// command the export does not offer).
    Request(RequestError),
    /// The server answered the request with an error.
    Failed(RequestFailure),
    /// Nothing completed within the client's timeout.
    Timeout,
    /// The TCP connection is gone (reset, or never established).
    Disconnected,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Protocol(e) => write!(f, "NBD protocol: {e}"),
            ClientError::Request(e) => write!(f, "request not sent: {e}"),
            ClientError::Failed(e) => write!(f, "request failed: {e}"),
            ClientError::Timeout => f.write_str("timed out"),
            ClientError::Disconnected => f.write_str("disconnected"),
        }
    }
}

impl core::error::Error for ClientError {}

/// One NBD connection over the TCP socket `handle`, with up to `N`
/// requests in flight.
pub struct NbdClient<const N: usize = 4> {
    pub(crate) handle: SocketHandle,
    pub(crate) machine: Client<N>,
    /// Limit for each blocking operation.
    pub(crate) timeout: Duration,
    seen_established: bool,
    /// Received bytes the machine has not taken yet. The machine takes a
    /// unit only once it is whole, and the socket's ring buffer may hold
    /// one split at its end, so bytes are moved here first.
    rx: [u8; INPUT_BUFFER],
    rx_len: usize,
}

impl<const N: usize> NbdClient<N> {
    /// A client for the socket `handle`, which the caller has told to
    /// `connect` (that needs the interface's context, which this crate
    /// never holds).
    pub fn new(handle: SocketHandle, config: Config, now: Instant) -> Self {
        Self {
            handle,
            machine: Client::new(config, to_core(now)),
            timeout: Duration::from_secs(30),
            seen_established: false,
            rx: [0; INPUT_BUFFER],
            rx_len: 0,
        }
    }

    /// Limit each blocking operation to `timeout` (default 30 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The core machine, for requests beyond the blocking helpers
    /// (queue them here, then [`poll`](Self::poll)).
    pub fn machine(&mut self) -> &mut Client<N> {
        &mut self.machine
    }

    pub fn handle(&self) -> SocketHandle {
        self.handle
    }

    /// Move bytes between the socket and the machine, handing every event
    /// but `Failed` to `on_event`; a `Failed` (or a vanished connection)
    /// is the error.
    pub fn poll(
        &mut self,
        sockets: &mut SocketSet<'_>,
        now: Instant,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), ClientError> {
        let core_now = to_core(now);
        let socket = sockets.get_mut::<tcp::Socket>(self.handle);
        if let Some(Event::Failed(e)) = self.machine.handle_timeout(core_now) {
            return Err(ClientError::Protocol(e));
        }
        self.seen_established |= socket.may_send();
        loop {
            self.transmit(socket);
            // An error is a socket that cannot receive (closed, or not yet
            // open): nothing arrived; the end is judged below.
            let received = socket.recv_slice(&mut self.rx[self.rx_len..]).unwrap_or(0);
            self.rx_len += received;
            let mut used = 0;
            let mut failed = None;
            loop {
                let p = self.machine.handle_input(&self.rx[used..self.rx_len]);
                used += p.consumed;
                match p.event {
                    Some(Event::Failed(e)) => {
                        failed = Some(e);
                        break;
                    }
                    Some(ev) => on_event(ev),
                    None if p.consumed == 0 => break,
                    None => {}
                }
            }
            self.rx.copy_within(used..self.rx_len, 0);
            self.rx_len -= used;
            if let Some(e) = failed {
                // An ABORT may be queued: send it before reporting.
                self.transmit(socket);
                return Err(ClientError::Protocol(e));
            }
            if used == 0 && received == 0 {
                break;
            }
        }
        if self.seen_established && !socket.may_recv() && !socket.can_recv() {
            // The server closed its side (or reset): expected only after
            // a disconnect with nothing in flight.
            return match self.machine.handle_eof() {
                Ok(()) => Ok(()),
                Err(e) => Err(ClientError::Protocol(e)),
            };
        }
        if !socket.is_open() && !self.machine.is_closed() {
            return Err(ClientError::Disconnected);
        }
        Ok(())
    }

    /// Send what the machine has queued, as far as the socket takes it.
    pub(crate) fn transmit(&mut self, socket: &mut tcp::Socket<'_>) {
        if !socket.may_send() {
            return;
        }
        loop {
            let out = self.machine.poll_transmit();
            if out.is_empty() {
                return;
            }
            match socket.send_slice(out) {
                Ok(0) | Err(_) => return,
                Ok(n) => self.machine.transmitted(n),
            }
        }
    }
}
