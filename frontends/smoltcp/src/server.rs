//! The NBD server: TCP sockets listening on one port, each carrying one
//! connection at a time, all serving one block device.
//!
//! A slot (a socket and its connection state) goes back to listening as
//! soon as its client is done: when the client sent `NBD_CMD_DISC` or
//! closed, once everything owed to it is acknowledged; when it vanished,
//! once TCP gives up on it (keep-alive probes unanswered, or sent data
//! unacknowledged, for [`PEER_TIMEOUT`]). A client that connects while
//! every slot is busy finds no listening socket, and smoltcp answers its
//! SYN with a reset: it is refused before the handshake, never accepted
//! and dropped later. (A backlog of established-but-unserved sockets would
//! cost their TCP buffers, which dominate a slot's memory, so a queued
//! client would cost as much as a served one: more slots is the remedy.)

use blockwire_core::server::ServerConfig;
use blockwire_core::time::Instant as CoreInstant;
use blockwire_core::wire::TransmissionFlags;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};

use blockwire_core::block::BlockDevice;
use blockwire_core::server::sync::{Pumped, ServerStats, export_of};

use crate::Export;
use crate::connection::{Connection, Tcp};
use crate::time::to_core;

/// How long a connection we closed may wait for the client to acknowledge
/// the last bytes and our FIN before its socket is reset and listens
/// again. A live client acknowledges within a round trip; only a peer
/// that vanished while we were closing waits this long.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(2);

/// An idle connection sends a keep-alive probe this often, so a client
/// that vanished without a FIN or RST is noticed.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// A connection whose peer sends nothing (no data, no ACK, no answer to
/// keep-alive probes) for this long is aborted and its slot freed: the
/// reaping timeout for dead peers. Also bounds a half-open accept.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(15);

/// `CAN_MULTI_CONN` is advertised only by a server with at least this many
/// slots. Its promise (a flush on one connection covers writes completed
/// on all) holds for any count here, but clients read it as leave to open
/// several connections at once — nbdcopy and QEMU open four — and a
/// server that then refuses the extra ones fails the client instead of
/// serving it over one.
pub const MULTI_CONN_MIN_SLOTS: usize = 4;

/// The IANA-registered NBD port.
pub const NBD_PORT: u16 = 10809;

/// Bytes of static state per connection (the core protocol machine, whose
/// handshake buffers dominate, plus its reply slot and read position), not
/// counting the socket's own TCP buffers.
pub const CONNECTION_STATE_SIZE: usize = core::mem::size_of::<Connection<'static>>();

// The connection is the big variant by design: with no heap there is
// nothing to box it into, and a slot must be able to hold one anyway.
#[allow(clippy::large_enum_variant)]
enum State<'n> {
    /// The socket listens (or is about to).
    Listening,
    Serving(Connection<'n>),
    /// We closed the socket at the given time; it is reset once the client
    /// has acknowledged everything, or at [`CLOSE_DEADLINE`].
    Closing(Instant),
    /// Aborted: the reset goes out on the next interface poll, and only
    /// then may the socket listen again (listening first would forget the
    /// connection and leave the client half-open).
    Resetting,
}

/// One connection slot: a TCP socket (by handle) and the state of the
/// connection on it. The caller provides the slots' memory, as it does
/// the sockets', so the count can be chosen at run time.
pub struct ConnectionSlot<'n> {
    handle: SocketHandle,
    state: State<'n>,
}

impl<'n> ConnectionSlot<'n> {
    /// A slot over the socket `handle` (made by [`add_socket`]).
    pub fn new(handle: SocketHandle) -> Self {
        Self {
            handle,
            state: State::Listening,
        }
    }
}

/// An NBD server over caller-provided connection slots.
///
/// It owns no sockets' memory: the caller creates TCP sockets in its
/// [`SocketSet`] (see [`add_socket`]) and hands over one
/// [`ConnectionSlot`] per socket. Each [`poll`](Self::poll) — call it
/// after every `Interface::poll` — accepts, serves and closes connections
/// on those sockets.
pub struct NbdServer<'n, 's, D> {
    device: D,
    export: Export<'n>,
    config: ServerConfig,
    port: u16,
    slots: &'s mut [ConnectionSlot<'n>],
    stats: ServerStats,
}

/// Create a TCP socket over the given buffers in `sockets`, set up for
/// NBD: no Nagle (replies are complete messages, and a client waiting on a
/// 16-byte write reply must not wait for an ACK), keep-alive and a peer
/// timeout (a vanished client must not hold its slot forever).
pub fn add_socket<'s>(
    sockets: &mut SocketSet<'s>,
    rx: &'s mut [u8],
    tx: &'s mut [u8],
) -> SocketHandle {
    let mut s = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
    s.set_nagle_enabled(false);
    s.set_keep_alive(Some(KEEPALIVE_INTERVAL));
    s.set_timeout(Some(PEER_TIMEOUT));
    sockets.add(s)
}

/// [`add_socket`] for each of `N` `(rx, tx)` buffer pairs, as slots.
pub fn add_sockets<'s, 'n, const N: usize>(
    sockets: &mut SocketSet<'s>,
    buffers: [(&'s mut [u8], &'s mut [u8]); N],
) -> [ConnectionSlot<'n>; N] {
    buffers.map(|(rx, tx)| ConnectionSlot::new(add_socket(sockets, rx, tx)))
}

impl<'n, 's, D: BlockDevice> NbdServer<'n, 's, D> {
    /// Serve `device` as the export `name` on `port` over `slots`. TLS is
    /// off whatever `config` says: there is no TLS stack here.
    /// `CAN_MULTI_CONN` is advertised only with at least
    /// [`MULTI_CONN_MIN_SLOTS`] slots.
    pub fn new(
        device: D,
        name: &'n str,
        port: u16,
        config: ServerConfig,
        slots: &'s mut [ConnectionSlot<'n>],
    ) -> Self {
        let mut export = export_of(&device, name, "");
        if slots.len() < MULTI_CONN_MIN_SLOTS {
            export.flags = export.flags.difference(TransmissionFlags::CAN_MULTI_CONN);
        }
        for slot in slots.iter_mut() {
            slot.state = State::Listening;
        }
        Self {
            device,
            export,
            config,
            port,
            slots,
            stats: ServerStats::default(),
        }
    }

    pub fn device(&self) -> &D {
        &self.device
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    pub fn export(&self) -> &Export<'n> {
        &self.export
    }

    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Connection slots, busy or not.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Connections currently being served.
    pub fn active(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, State::Serving(_)))
            .count()
    }

    /// Slots not listening: serving, or closing and not yet reset.
    pub fn busy(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| !matches!(s.state, State::Listening))
            .count()
    }

    /// Serve every socket once. Returns whether anything happened (if so,
    /// poll the interface again: there is data to send).
    pub fn poll(&mut self, sockets: &mut SocketSet<'_>, now: Instant) -> bool {
        let core_now = to_core(now);
        let mut progress = false;
        for slot in self.slots.iter_mut() {
            let socket = sockets.get_mut::<tcp::Socket>(slot.handle);
            progress |= serve(
                &mut slot.state,
                socket,
                &mut self.device,
                &self.export,
                &self.config,
                self.port,
                now,
                core_now,
                &mut self.stats,
            );
        }
        progress
    }

    /// When [`poll`](Self::poll) next has something to do without network
    /// input (a handshake deadline, a close deadline), for the caller's
    /// sleep alongside `Interface::poll_delay`.
    pub fn poll_at(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match &s.state {
                State::Serving(c) => c
                    .poll_timeout()
                    .map(|t| Instant::from_micros((t.as_nanos() / 1000) as i64)),
                State::Closing(since) => Some(*since + CLOSE_DEADLINE),
                // The interface sends the reset at once (its poll_delay is
                // zero) and the next poll listens.
                State::Listening | State::Resetting => None,
            })
            .min()
    }
}

/// One slot's turn: steps its state as far as it goes now. Returns whether
/// anything happened.
#[allow(clippy::too_many_arguments)]
fn serve<'n, D: BlockDevice>(
    slot: &mut State<'n>,
    socket: &mut tcp::Socket<'_>,
    device: &mut D,
    export: &Export<'n>,
    config: &ServerConfig,
    port: u16,
    now: Instant,
    core_now: CoreInstant,
    stats: &mut ServerStats,
) -> bool {
    let mut progress = false;
    loop {
        match slot {
            State::Listening => {
                if !socket.is_open() {
                    // A port of 0 is the only error, and `new` cannot fix it.
                    let _ = socket.listen(port);
                    return progress;
                }
                // may_send: ESTABLISHED, or CLOSE-WAIT for a client that
                // sent its requests and FIN before we got to it.
                if !socket.may_send() {
                    return progress;
                }
                stats.connections += 1;
                *slot = State::Serving(Connection::new(*export, *config, core_now));
                progress = true;
            }
            State::Serving(conn) => {
                if !socket.is_active() {
                    // Reset by the peer, timed out, or aborted after a
                    // device failure.
                    let _ = device.flush();
                    *slot = State::Resetting;
                    continue;
                }
                conn.handle_timeout(core_now);
                match conn.pump(&mut Tcp(socket), device, stats) {
                    Pumped::Progress(p) => progress |= p,
                    Pumped::Broken => {
                        socket.abort();
                        return true;
                    }
                }
                if !conn.is_finished() {
                    return progress;
                }
                // Whatever the client wrote is made durable when it leaves,
                // as qemu-nbd does on close.
                let _ = device.flush();
                socket.close();
                *slot = State::Closing(now);
                progress = true;
            }
            State::Closing(since) => {
                use tcp::State as S;
                // Done once the client acknowledged all our data and our
                // FIN (FIN-WAIT-2, TIME-WAIT), or both sides finished
                // (CLOSED). Nothing is owed after that; TIME-WAIT's 10 s
                // would only keep the slot from the next client.
                let done = matches!(socket.state(), S::Closed | S::FinWait2 | S::TimeWait);
                if !done && now < *since + CLOSE_DEADLINE {
                    return progress;
                }
                socket.abort();
                *slot = State::Resetting;
                progress = true;
            }
            State::Resetting => {
                // An aborted socket keeps its peer until the interface has
                // sent the reset; one that closed cleanly has none left.
                if socket.remote_endpoint().is_some() && !socket.is_open() {
                    return progress;
                }
                if socket.is_open() {
                    socket.abort();
                    return progress;
                }
                *slot = State::Listening;
                let _ = socket.listen(port);
                return true;
            }
        }
    }
}
