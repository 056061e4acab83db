//! The NBD server: `N` TCP sockets listening on one port, each carrying
//! one connection at a time, all serving one block device.

use blockwire_core::server::ServerConfig;
use blockwire_core::time::Instant as CoreInstant;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};

use crate::block_device::BlockDevice;
use crate::connection::Connection;
use crate::export::Export;
use crate::stats::ServerStats;
use crate::time::to_core;

/// How long a connection we closed may linger (waiting for the client's
/// FIN) before its socket is reset and listens again.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// The IANA-registered NBD port.
pub const NBD_PORT: u16 = 10809;

/// Bytes of static state per connection (the core protocol machine, whose
/// handshake buffers dominate, plus this crate's reply slot and read
/// position), not counting the socket's own TCP buffers.
pub const CONNECTION_STATE_SIZE: usize = Connection::SIZE;

// The connection is the big variant by design: with no heap there is
// nothing to box it into, and a slot must be able to hold one anyway.
#[allow(clippy::large_enum_variant)]
enum Slot<'n> {
    /// The socket listens (or is about to).
    Listening,
    Serving(Connection<'n>),
    /// We closed the socket at the given time; it listens again once TCP
    /// is done with it.
    Closing(Instant),
}

/// An NBD server with `N` connection slots.
///
/// It owns no sockets' memory: the caller creates `N` TCP sockets in its
/// [`SocketSet`] (see [`add_sockets`]) and hands over their handles. Each
/// [`poll`](Self::poll) — call it after every `Interface::poll` — accepts,
/// serves and closes connections on those sockets.
pub struct NbdServer<'n, D, const N: usize> {
    device: D,
    export: Export<'n>,
    config: ServerConfig,
    port: u16,
    handles: [SocketHandle; N],
    slots: [Slot<'n>; N],
    stats: ServerStats,
}

/// Create `N` TCP sockets over the given `(rx, tx)` buffers in `sockets`,
/// set up for NBD (no Nagle: replies are complete messages, and a client
/// waiting on a 16-byte write reply must not wait for an ACK).
pub fn add_sockets<'s, const N: usize>(
    sockets: &mut SocketSet<'s>,
    buffers: [(&'s mut [u8], &'s mut [u8]); N],
) -> [SocketHandle; N] {
    buffers.map(|(rx, tx)| {
        let mut s = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        s.set_nagle_enabled(false);
        sockets.add(s)
    })
}

impl<'n, D: BlockDevice, const N: usize> NbdServer<'n, D, N> {
    /// Serve `device` as the export `name` on `port` over the sockets
    /// `handles`. TLS is off whatever `config` says: there is no TLS stack
    /// here.
    pub fn new(
        device: D,
        name: &'n str,
        port: u16,
        mut config: ServerConfig,
        handles: [SocketHandle; N],
    ) -> Self {
        config.tls = blockwire_core::server::TlsPolicy::Off;
        let export = Export::of(&device, name, "");
        Self {
            device,
            export,
            config,
            port,
            handles,
            slots: core::array::from_fn(|_| Slot::Listening),
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

    /// Connections currently being served.
    pub fn active(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, Slot::Serving(_)))
            .count()
    }

    /// Serve every socket once. Returns whether anything happened (if so,
    /// poll the interface again: there is data to send).
    pub fn poll(&mut self, sockets: &mut SocketSet<'_>, now: Instant) -> bool {
        let core_now = to_core(now);
        let mut progress = false;
        for (slot, &handle) in self.slots.iter_mut().zip(&self.handles) {
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            progress |= serve(
                slot,
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
    /// input (a handshake deadline, a lingering close), for the caller's
    /// sleep alongside `Interface::poll_delay`.
    pub fn poll_at(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match s {
                Slot::Serving(c) => c
                    .poll_timeout()
                    .map(|t| Instant::from_micros((t.as_nanos() / 1000) as i64)),
                Slot::Closing(since) => Some(*since + CLOSE_LINGER),
                Slot::Listening => None,
            })
            .min()
    }
}

#[allow(clippy::too_many_arguments)]
fn serve<'n, D: BlockDevice>(
    slot: &mut Slot<'n>,
    socket: &mut tcp::Socket<'_>,
    device: &mut D,
    export: &Export<'n>,
    config: &ServerConfig,
    port: u16,
    now: Instant,
    core_now: CoreInstant,
    stats: &mut ServerStats,
) -> bool {
    match slot {
        Slot::Listening => {
            if !socket.is_open() {
                // A port of 0 is the only error, and `new` cannot fix it.
                let _ = socket.listen(port);
                return false;
            }
            // may_send: ESTABLISHED, or CLOSE-WAIT for a client that sent
            // its requests and FIN before we got to it.
            if !socket.may_send() {
                return false;
            }
            stats.connections += 1;
            *slot = Slot::Serving(Connection::new(*export, *config, core_now));
            serve(
                slot, socket, device, export, config, port, now, core_now, stats,
            );
            true
        }
        Slot::Serving(conn) => {
            if !socket.is_active() {
                // Reset by the peer, or aborted after a device failure.
                let _ = device.flush();
                *slot = Slot::Listening;
                let _ = socket.listen(port);
                return true;
            }
            conn.handle_timeout(core_now);
            let progress = conn.pump(socket, device, stats);
            if conn.is_finished() {
                // Whatever the client wrote is made durable when it leaves,
                // as qemu-nbd does on close.
                let _ = device.flush();
                socket.close();
                *slot = Slot::Closing(now);
                return true;
            }
            progress
        }
        Slot::Closing(since) => {
            if socket.is_open() && now < *since + CLOSE_LINGER {
                return false;
            }
            if socket.is_open() {
                socket.abort();
            }
            *slot = Slot::Listening;
            let _ = socket.listen(port);
            true
        }
    }
}
