//! A whole server connection over a synchronous [`BlockDevice`]: the
//! [`Server`] machine plus carrying out each request and sending its
//! reply, for frontends whose device answers before it returns (bare
//! metal, a simulation, a fuzzer).
//!
//! The frontend only moves bytes: it gives [`SyncConnection::pump`] its
//! transport (a [`Transport`], such as a TCP socket's buffers) and the
//! device, and acts on the [`Pumped`] it gets back. What follows from
//! this connection's design:
//!
//! * Requests are handled one at a time, in order: while a reply is
//!   unsent, no more input is read, which bounds what is held to one
//!   [`REPLY_SLOT`] and one read position. The transport's receive window
//!   does the queueing.
//! * Read data goes from the device straight into the transport's send
//!   buffer, in chunks sized to the room there; write payloads go from
//!   the receive buffer straight to the device. Nothing is copied twice.
//! * TLS is never offered, whatever the configuration says: there is no
//!   TLS layer between the machine and the transport here.

mod read_stream;
mod reply_slot;

use crate::block::contract::{BlockError, Op};
use crate::block::{BlockDevice, Extent};
use crate::server::{
    BlockSizes, DeviceCaps, Event, ExportInfo, Exports, Fault, ReadReply, ReplyEncoder, Request,
    Server, ServerConfig, StatusError, Step, TlsPolicy,
};
use crate::time::Instant;
use crate::wire::HeaderMode;
use read_stream::{ReadStream, Step as ReadStep};
pub use reply_slot::REPLY_SLOT;
use reply_slot::ReplySlot;

/// Most descriptors one block-status reply carries: what fits the reply
/// slot in compact form. Clients ask again for the rest.
const MAX_STATUS_EXTENTS: usize = REPLY_SLOT / 8;

/// The transport has failed (reset, closed for sending): the connection
/// cannot go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gone;

/// A byte stream's buffers, as a [`SyncConnection`] uses them.
pub trait Transport {
    /// Bytes the send buffer holds when full.
    fn send_capacity(&self) -> usize;
    /// Bytes queued in the send buffer now.
    fn send_queue(&self) -> usize;
    /// Queue as much of `bytes` as there is room for; returns how much.
    fn send_slice(&mut self, bytes: &[u8]) -> Result<usize, Gone>;
    /// Let `fill` write into the free part of the send buffer; it returns
    /// how many bytes it wrote, which are queued (and returned).
    fn send_with(&mut self, fill: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<usize, Gone>;
    /// Let `take` read the received bytes; it returns how many it
    /// consumed. `Ok(false)` when nothing was there to read.
    fn recv_with(&mut self, take: &mut dyn FnMut(&[u8]) -> usize) -> Result<bool, Gone>;
    /// The peer has not closed its sending side (more input may come).
    fn may_recv(&self) -> bool;
}

/// Totals over a server's connections, for diagnostics and for tests that
/// check the shape of the traffic (e.g. that reads go out in few large
/// chunks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted (counted by the frontend, which accepts them).
    pub connections: u64,
    /// Handshakes that reached transmission.
    pub sessions: u64,
    /// Transmission requests handled.
    pub requests: u64,
    /// Read reply headers sent (simple replies, data and hole chunks).
    pub read_chunks: u64,
    /// Read data bytes put into the transport.
    pub read_bytes: u64,
    /// Write payload bytes stored.
    pub written_bytes: u64,
}

/// What one [`SyncConnection::pump`] did.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pumped {
    /// Bytes moved (or not); the connection goes on.
    Progress(bool),
    /// The connection cannot go on (the transport failed, or the device
    /// failed after a read reply's header promised data): abort the
    /// transport, so the client does not misread a truncated stream.
    Broken,
}

/// One client connection's whole state over a synchronous device.
pub struct SyncConnection<E: Exports> {
    machine: Server<E>,
    encoder: ReplyEncoder,
    slot: ReplySlot,
    read: Option<ReadStream>,
    write: Option<PendingWrite>,
    /// The connection ends once everything queued is sent.
    ending: bool,
}

/// A write whose payload is still arriving.
struct PendingWrite {
    req: Request,
    fua: bool,
    /// The first failure; the rest of the payload is still consumed (the
    /// stream must stay in sync) but not written.
    error: Option<BlockError>,
}

/// What sending got to.
enum Flow {
    /// Everything queued was sent.
    Drained,
    /// The transport's send buffer is full.
    Blocked,
    Broken,
}

impl<E: Exports> SyncConnection<E> {
    /// A connection to serve `exports` under `config`, with TLS off.
    pub fn new(exports: E, mut config: ServerConfig, now: Instant) -> Self {
        config.tls = TlsPolicy::Off;
        Self {
            machine: Server::new(exports, config, now),
            encoder: ReplyEncoder::new(HeaderMode::Simple),
            slot: ReplySlot::new(),
            read: None,
            write: None,
            ending: false,
        }
    }

    /// Move bytes both ways until the transport can take or give no more:
    /// what is owed first, then input while nothing is owed.
    pub fn pump<T: Transport + ?Sized, D: BlockDevice + ?Sized>(
        &mut self,
        io: &mut T,
        device: &mut D,
        stats: &mut ServerStats,
    ) -> Pumped {
        let mut progress = false;
        loop {
            let before = io.send_queue();
            let flow = self.transmit(io, device, stats);
            progress |= io.send_queue() != before;
            match flow {
                Flow::Drained => {}
                Flow::Blocked => break,
                Flow::Broken => {
                    self.ending = true;
                    return Pumped::Broken;
                }
            }
            if self.ending {
                break;
            }
            let mut used_any = false;
            let got = io.recv_with(&mut |input| {
                let used = self.receive(input, device, stats);
                used_any |= used > 0;
                used
            });
            match got {
                Ok(true) if used_any || self.busy() => progress = true,
                _ => break,
            }
        }
        if !io.may_recv() {
            // The client closed its side without NBD_CMD_DISC, and its
            // input is all consumed. Replies already queued still go out
            // (it may be reading them); a request cut short, such as a
            // write whose payload stopped, can never complete and gets
            // none. Waiting for the rest of it would hold the slot forever.
            self.write = None;
            self.ending = true;
        }
        Pumped::Progress(progress)
    }

    /// The connection is over and everything owed was queued on the
    /// transport: close it.
    pub fn is_finished(&self) -> bool {
        self.ending && self.slot.is_empty() && self.read.is_none()
    }

    /// The handshake deadline, if one is running.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.machine.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.machine.handle_timeout(now).is_some() {
            self.ending = true;
        }
    }

    /// A reply is waiting (or the connection is ending): read no more.
    fn busy(&self) -> bool {
        self.ending || !self.slot.is_empty() || self.read.is_some()
    }

    fn transmit<T: Transport + ?Sized, D: BlockDevice + ?Sized>(
        &mut self,
        io: &mut T,
        device: &mut D,
        stats: &mut ServerStats,
    ) -> Flow {
        // Handshake bytes first: the last of them precede any reply.
        loop {
            let out = self.machine.poll_transmit();
            let len = out.len();
            if len == 0 {
                break;
            }
            let Ok(n) = io.send_slice(out) else {
                return Flow::Broken;
            };
            self.machine.transmitted(n);
            if n < len {
                return Flow::Blocked;
            }
        }
        loop {
            if !self.slot.is_empty() {
                let Ok(n) = io.send_slice(self.slot.pending()) else {
                    return Flow::Broken;
                };
                self.slot.advance(n);
                if !self.slot.is_empty() {
                    return Flow::Blocked;
                }
            }
            let Some(read) = &mut self.read else {
                return Flow::Drained;
            };
            match read.step(io, device) {
                ReadStep::Header(h) => {
                    stats.read_chunks += 1;
                    self.slot.set(h.as_bytes());
                }
                ReadStep::Data(n) => stats.read_bytes += n as u64,
                ReadStep::Blocked => return Flow::Blocked,
                ReadStep::Done => self.read = None,
                ReadStep::Failed => return Flow::Broken,
            }
        }
    }

    /// Feed `input` to the machine and act on its events until a reply is
    /// waiting. Returns the bytes consumed.
    fn receive<D: BlockDevice + ?Sized>(
        &mut self,
        input: &[u8],
        device: &mut D,
        stats: &mut ServerStats,
    ) -> usize {
        let mut used = 0;
        while !self.busy() {
            let p = self.machine.handle_input(&input[used..]);
            used += p.consumed;
            match p.event {
                Some(ev) => on_event(self, ev, device, stats),
                None if p.consumed == 0 => break,
                None => {}
            }
        }
        used
    }

    fn on_request<D: BlockDevice + ?Sized>(
        &mut self,
        req: Request,
        device: &mut D,
        stats: &mut ServerStats,
    ) {
        stats.requests += 1;
        let mut result = Ok(());
        for step in req.plan() {
            result = match step {
                Step::Read => {
                    // The device answers status from memory or a map:
                    // asking is cheap, so reads are always sparse.
                    if let Some(plan) = ReadReply::new(&req, self.encoder, true) {
                        self.read = Some(ReadStream::new(plan));
                    }
                    return;
                }
                Step::BlockStatus => return self.block_status(&req, device),
                Step::Write { fua, .. } => {
                    self.write = Some(PendingWrite {
                        req,
                        fua,
                        error: None,
                    });
                    return;
                }
                Step::Discard { offset, len } => device.trim(offset, len),
                Step::WriteZeroes { offset, len, how } => {
                    if how.fast && !device.fast_zero() {
                        Err(BlockError::NotSupported)
                    } else {
                        device
                            .write_zeroes(offset, len, how.may_unmap)
                            .and_then(|()| fua_flush(device, how.fua))
                    }
                }
                // Advisory: a synchronous device has nothing to prefetch.
                Step::Cache { .. } => Ok(()),
                Step::Flush => device.flush(),
            };
            if result.is_err() {
                break;
            }
        }
        self.finish(&req, result);
    }

    fn finish(&mut self, req: &Request, result: Result<(), BlockError>) {
        let r = result.map_err(Fault::from);
        self.slot.set(self.encoder.result(req, r).as_bytes());
    }

    /// One chunk per selected context (only `base:allocation` is offered
    /// by [`export_of`]), encoded into the reply slot, sized by the core
    /// to fit it.
    fn block_status<D: BlockDevice + ?Sized>(&mut self, req: &Request, device: &D) {
        let mut extents: heapless::Vec<Extent, MAX_STATUS_EXTENTS> = heapless::Vec::new();
        let answered = self.encoder.block_status(
            req,
            MAX_STATUS_EXTENTS as u32,
            &mut extents,
            &mut self.slot,
            |_, query, sink| device.block_status(query, sink).map(|_| ()),
        );
        match answered {
            Ok(()) => {}
            Err(StatusError::Device(e)) => self.finish(req, Err(e)),
            // One context, one descriptor: always fits the slot.
            Err(_) => self.finish(req, Err(BlockError::TooLarge)),
        }
    }
}

/// Acts on one event of the machine (a free function: the event borrows
/// the input, not the connection).
fn on_event<E: Exports, D: BlockDevice + ?Sized>(
    c: &mut SyncConnection<E>,
    ev: Event<'_>,
    device: &mut D,
    stats: &mut ServerStats,
) {
    match ev {
        Event::Ready(session) => {
            c.encoder = session.encoder();
            stats.sessions += 1;
        }
        Event::Request(req) => c.on_request(req, device, stats),
        Event::WriteData {
            offset, data, last, ..
        } => {
            let Some(w) = &mut c.write else { return };
            if w.error.is_none() {
                match device.write(offset, data) {
                    Ok(()) => stats.written_bytes += data.len() as u64,
                    Err(e) => w.error = Some(e),
                }
            }
            if last {
                let req = w.req;
                let result = match w.error {
                    Some(e) => Err(e),
                    None => fua_flush(device, w.fua),
                };
                c.write = None;
                c.finish(&req, result);
            }
        }
        Event::Reject { reply, close } => {
            c.slot.set(reply.as_bytes());
            c.ending |= close.is_some();
        }
        // TLS is never offered (`new` turns it off), so StartTls
        // cannot come; if it did, ending is the safe answer.
        Event::Disconnect | Event::Close(_) | Event::StartTls => c.ending = true,
    }
}

/// The device has no durable write: `FUA` is a flush after it.
fn fua_flush<D: BlockDevice + ?Sized>(device: &mut D, fua: bool) -> Result<(), BlockError> {
    if fua { device.flush() } else { Ok(()) }
}

/// `device` as the export `name`: its flags from what it can do, its
/// block sizes from its limits.
pub fn export_of<'n, D: BlockDevice + ?Sized>(
    device: &D,
    name: &'n str,
    description: &'n str,
) -> ExportInfo<'n> {
    let caps = DeviceCaps {
        read_only: device.read_only(),
        trim: device.supports(Op::Trim),
        write_zeroes: device.supports(Op::WriteZeroes),
        fast_zero: device.fast_zero(),
        cache: device.supports(Op::Cache),
        // Every connection drives the same device from one loop, and a
        // flush reaches everything written on any of them.
        multi_conn: true,
        rotational: false,
    };
    // No limit from the device's longest transfer: reads and writes reach
    // it in pieces no larger than the transport's buffers.
    let limits = device.limits();
    let block_sizes = BlockSizes::of_device(limits.align, limits.opt_write_zero, 0);
    ExportInfo::of_device(name, description, device.size(), caps, block_sizes)
}
