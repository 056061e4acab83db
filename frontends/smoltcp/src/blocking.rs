//! Whole requests that return when they complete: what a boot loader wants
//! (connect, read the kernel, done). They spin on [`Network::poll`], which
//! moves packets for everything sharing the interface.

use blockwire_core::block::Extent;
use blockwire_core::client::{Cookie, Event, Export, RequestError};
use blockwire_core::wire::CommandFlags;
use smoltcp::iface::SocketSet;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;

use crate::client::{ClientError, NbdClient};

/// The network a blocking client spins on.
pub trait Network<'s> {
    /// Run the interface (and anything else sharing it, a server in a test)
    /// once, possibly waiting a little for packets; return the time.
    fn poll(&mut self) -> Instant;
    /// The socket set the client's socket lives in.
    fn sockets(&mut self) -> &mut SocketSet<'s>;
}

impl<const N: usize> NbdClient<N> {
    /// Run the handshake until the export is open.
    pub fn handshake<'s>(&mut self, net: &mut impl Network<'s>) -> Result<Export, ClientError> {
        let deadline = net.poll() + self.timeout;
        loop {
            let now = net.poll();
            let mut ready = None;
            self.poll(net.sockets(), now, &mut |ev| {
                if let Event::Ready(e) = ev {
                    ready = Some(e);
                }
            })?;
            if let Some(e) = ready {
                return Ok(e);
            }
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
        }
    }

    /// Poll until `cookie` completes; every other event goes to `on_event`.
    fn wait<'s>(
        &mut self,
        net: &mut impl Network<'s>,
        cookie: Cookie,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), ClientError> {
        let deadline = net.poll() + self.timeout;
        loop {
            let now = net.poll();
            let mut done = None;
            self.poll(net.sockets(), now, &mut |ev| match ev {
                Event::Completed { cookie: c, result } if c == cookie => done = Some(result),
                other => on_event(other),
            })?;
            if let Some(result) = done {
                return result.map_err(ClientError::Failed);
            }
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
        }
    }

    /// Largest single request: the export's maximum payload, kept to a
    /// multiple of its minimum block.
    fn max_request(&mut self) -> Result<u64, ClientError> {
        let e = self
            .machine
            .export()
            .ok_or(ClientError::Request(RequestError::NotReady))?;
        let max = u64::from(e.max_payload());
        let min = u64::from(e.min_block()).max(1);
        Ok((max - max % min).max(min))
    }

    /// Read `buf.len()` bytes at `offset`.
    pub fn read<'s>(
        &mut self,
        net: &mut impl Network<'s>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ClientError> {
        let max = self.max_request()?;
        let mut done = 0usize;
        while done < buf.len() {
            let n = ((buf.len() - done) as u64).min(max) as usize;
            let at = offset + done as u64;
            let piece = &mut buf[done..done + n];
            let cookie = self
                .machine
                .read(at, n as u32, CommandFlags::empty())
                .map_err(ClientError::Request)?;
            self.wait(net, cookie, &mut |ev| match ev {
                // The machine checked these lie inside the request.
                Event::ReadData { offset, data, .. } => {
                    let i = (offset - at) as usize;
                    piece[i..i + data.len()].copy_from_slice(data);
                }
                Event::ReadHole { offset, len, .. } => {
                    let i = (offset - at) as usize;
                    piece[i..i + len as usize].fill(0);
                }
                _ => {}
            })?;
            done += n;
        }
        Ok(())
    }

    /// Write `data` at `offset` (`fua`: durable before returning).
    pub fn write<'s>(
        &mut self,
        net: &mut impl Network<'s>,
        offset: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<(), ClientError> {
        let max = self.max_request()?;
        let flags = if fua {
            CommandFlags::FUA
        } else {
            CommandFlags::empty()
        };
        for (i, piece) in data.chunks(max as usize).enumerate() {
            let at = offset + (i as u64) * max;
            let cookie = self
                .machine
                .write(at, piece.len() as u32, flags)
                .map_err(ClientError::Request)?;
            self.send_payload(net, piece)?;
            self.wait(net, cookie, &mut |_| {})?;
        }
        Ok(())
    }

    /// Send the queued header, then `payload` from where it is.
    fn send_payload<'s>(
        &mut self,
        net: &mut impl Network<'s>,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        let deadline = net.poll() + self.timeout;
        let mut sent = 0;
        loop {
            let now = net.poll();
            let socket = net.sockets().get_mut::<tcp::Socket>(self.handle);
            self.transmit(socket);
            if self.machine.pending_transmit() == 0 {
                match socket.send_slice(&payload[sent..]) {
                    Ok(n) => sent += n,
                    Err(_) => return Err(ClientError::Disconnected),
                }
                if sent == payload.len() {
                    return self.machine.payload_sent().map_err(ClientError::Request);
                }
            }
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
        }
    }

    /// Make every completed write durable.
    pub fn flush<'s>(&mut self, net: &mut impl Network<'s>) -> Result<(), ClientError> {
        let cookie = self.machine.flush().map_err(ClientError::Request)?;
        self.wait(net, cookie, &mut |_| {})
    }

    /// Discard `length` bytes at `offset`.
    pub fn trim<'s>(
        &mut self,
        net: &mut impl Network<'s>,
        offset: u64,
        length: u64,
    ) -> Result<(), ClientError> {
        let cookie = self
            .machine
            .trim(offset, length, CommandFlags::empty())
            .map_err(ClientError::Request)?;
        self.wait(net, cookie, &mut |_| {})
    }

    /// Make `length` bytes at `offset` read as zeroes (`NO_HOLE` unless
    /// `may_unmap`).
    pub fn write_zeroes<'s>(
        &mut self,
        net: &mut impl Network<'s>,
        offset: u64,
        length: u64,
        may_unmap: bool,
    ) -> Result<(), ClientError> {
        let flags = if may_unmap {
            CommandFlags::empty()
        } else {
            CommandFlags::NO_HOLE
        };
        let cookie = self
            .machine
            .write_zeroes(offset, length, flags)
            .map_err(ClientError::Request)?;
        self.wait(net, cookie, &mut |_| {})
    }

    /// Block status of `[offset, offset+length)` in the first selected
    /// context: extents in order from `offset`, as many as the server sent
    /// and `out` holds. Returns how many were stored.
    pub fn block_status<'s>(
        &mut self,
        net: &mut impl Network<'s>,
        offset: u64,
        length: u64,
        out: &mut [Extent],
    ) -> Result<usize, ClientError> {
        let first = self.machine.contexts().next().map(|(id, _)| id);
        let cookie = self
            .machine
            .block_status(offset, length, CommandFlags::empty())
            .map_err(ClientError::Request)?;
        let mut n = 0;
        self.wait(net, cookie, &mut |ev| {
            if let Event::BlockStatus {
                context_id,
                extents,
                ..
            } = ev
                && Some(context_id) == first
            {
                for e in extents {
                    if n < out.len() {
                        out[n] = e;
                        n += 1;
                    }
                }
            }
        })?;
        Ok(n)
    }

    /// End the session (`NBD_CMD_DISC`) and close the socket.
    pub fn disconnect<'s>(&mut self, net: &mut impl Network<'s>) -> Result<(), ClientError> {
        self.machine.disconnect().map_err(ClientError::Request)?;
        let deadline = net.poll() + self.timeout;
        loop {
            let now = net.poll();
            let socket = net.sockets().get_mut::<tcp::Socket>(self.handle);
            self.transmit(socket);
            if self.machine.pending_transmit() == 0 {
                socket.close();
                break;
            }
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
        }
        // Wait for the server to close its side too, so the socket can be
        // reused and the server sees an orderly end.
        loop {
            let now = net.poll();
            let socket = net.sockets().get_mut::<tcp::Socket>(self.handle);
            if !socket.is_open() || !socket.may_recv() {
                return self.machine.handle_eof().map_err(ClientError::Protocol);
            }
            if now >= deadline {
                return Err(ClientError::Timeout);
            }
        }
    }
}
