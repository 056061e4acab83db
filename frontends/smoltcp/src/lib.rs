//! An NBD server and client for bare metal: [smoltcp] TCP sockets driving
//! the sans-IO machines of `blockwire-core`, with no heap and no `unsafe`.
//!
//! * [`NbdServer`]: sockets listening on one port (as many as the caller
//!   gives it [`ConnectionSlot`]s, a run-time count), each serving one
//!   connection at a time from one synchronous [`BlockDevice`]; a slot
//!   listens again as soon as its client is done or gone. Read data goes from the device straight into the
//!   socket's send buffer, in chunks sized to fill it; write payloads go
//!   from the receive buffer straight to the device.
//! * Devices: [`RamDisk`] (caller memory, exact `base:allocation`),
//!   [`StaticDisk`] (read-only slice), [`FlashDisk`] (NOR flash with erase
//!   blocks, read-modify-write through one erase-block buffer).
//! * [`NbdClient`]: the client machine over one socket, with blocking
//!   helpers over a [`Network`] for boot loaders.
//!
//! The loop an application runs:
//!
//! ```ignore
//! loop {
//!     let now = clock();
//!     iface.poll(now, &mut device, &mut sockets);
//!     while server.poll(&mut sockets, now) {
//!         iface.poll(now, &mut device, &mut sockets);
//!     }
//!     // sleep until iface.poll_delay(now, &sockets) / server.poll_at()
//! }
//! ```
#![no_std]
#![forbid(unsafe_code)]

mod blocking;
mod client;
mod connection;
mod flash_disk;
mod ram_disk;
mod server;
mod sim_flash;
mod static_disk;
mod time;

pub use blocking::Network;
pub use blockwire_core::block::BlockDevice;
pub use client::{ClientError, NbdClient};
/// The one export a server offers, as the handshake machine sees it (a
/// table of one offering `base:allocation`), copied out of the device once
/// so each connection's machine owns a copy (a few words).
pub type Export<'n> = blockwire_core::server::ExportInfo<'n>;
pub use blockwire_core::server::sync::{REPLY_SLOT, ServerStats};
pub use flash_disk::FlashDisk;
pub use ram_disk::RamDisk;
pub use server::{
    CLOSE_DEADLINE, CONNECTION_STATE_SIZE, ConnectionSlot, KEEPALIVE_INTERVAL,
    MULTI_CONN_MIN_SLOTS, NBD_PORT, NbdServer, PEER_TIMEOUT, add_socket, add_sockets,
};
pub use sim_flash::{RamFlash, RamFlashError};
pub use static_disk::StaticDisk;
pub use time::to_core;

pub use blockwire_core;
pub use smoltcp;
