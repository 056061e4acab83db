//! A client connection: the core's [`SyncConnection`] (the protocol, the
//! requests and their replies) over a smoltcp TCP socket, which only moves
//! its bytes.

use blockwire_core::server::ExportInfo;
use blockwire_core::server::sync::{Gone, SyncConnection, Transport};
use smoltcp::socket::tcp;

pub(crate) type Connection<'n> = SyncConnection<ExportInfo<'n>>;

/// A TCP socket's buffers as the core's transport.
pub(crate) struct Tcp<'a, 's>(pub(crate) &'a mut tcp::Socket<'s>);

impl Transport for Tcp<'_, '_> {
    fn send_capacity(&self) -> usize {
        self.0.send_capacity()
    }
    fn send_queue(&self) -> usize {
        self.0.send_queue()
    }
    fn send_slice(&mut self, bytes: &[u8]) -> Result<usize, Gone> {
        self.0.send_slice(bytes).map_err(|_| Gone)
    }
    fn send_with(&mut self, fill: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<usize, Gone> {
        self.0
            .send(|buf| {
                let n = fill(buf);
                (n, n)
            })
            .map_err(|_| Gone)
    }
    fn recv_with(&mut self, take: &mut dyn FnMut(&[u8]) -> usize) -> Result<bool, Gone> {
        if !self.0.can_recv() {
            return Ok(false);
        }
        self.0.recv(|buf| (take(buf), true)).map_err(|_| Gone)
    }
    fn may_recv(&self) -> bool {
        self.0.may_recv()
    }
}
