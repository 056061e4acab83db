//! One client connection: the core machine, plus the reply in progress.

use blockwire_core::block::Extent;
use blockwire_core::block::contract::BlockError;
use blockwire_core::server::{
    Event, Fault, ReadReply, ReplyEncoder, Request, Server, ServerConfig, StatusError, Step,
};
use blockwire_core::time::Instant;
use blockwire_core::wire::HeaderMode;
use smoltcp::socket::tcp;

use crate::block_device::BlockDevice;
use crate::export::Export;
use crate::read_stream::{ReadStream, Step as ReadStep};
use crate::reply_slot::{REPLY_SLOT, ReplySlot};
use crate::stats::ServerStats;

/// Most descriptors one block-status reply carries: what fits the reply
/// slot in compact form. Clients ask again for the rest.
const MAX_STATUS_EXTENTS: usize = REPLY_SLOT / 8;

/// A client connection's whole state. Requests are handled one at a time,
/// in order: while a reply is unsent, no more input is read, which bounds
/// what is held to one reply slot and one read position — the TCP receive
/// window does the queueing.
pub(crate) struct Connection<'n> {
    machine: Server<Export<'n>>,
    replies: Replies,
}

struct Replies {
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
    /// The socket's send buffer is full.
    Blocked,
    /// The connection cannot go on (socket gone, device failed mid-reply).
    Broken,
}

impl<'n> Connection<'n> {
    pub(crate) fn new(export: Export<'n>, config: ServerConfig, now: Instant) -> Self {
        Self {
            machine: Server::new(export, config, now),
            replies: Replies {
                encoder: ReplyEncoder::new(HeaderMode::Simple),
                slot: ReplySlot::new(),
                read: None,
                write: None,
                ending: false,
            },
        }
    }

    /// Move bytes both ways until the socket can take or give no more.
    /// Returns whether anything happened.
    pub(crate) fn pump<D: BlockDevice + ?Sized>(
        &mut self,
        socket: &mut tcp::Socket<'_>,
        device: &mut D,
        stats: &mut ServerStats,
    ) -> bool {
        let mut progress = false;
        loop {
            let before = socket.send_queue();
            let flow = self.transmit(socket, device, stats);
            progress |= socket.send_queue() != before;
            match flow {
                Flow::Drained => {}
                Flow::Blocked => break,
                Flow::Broken => {
                    self.replies.ending = true;
                    socket.abort();
                    return true;
                }
            }
            if self.replies.ending || !socket.can_recv() {
                break;
            }
            let Connection { machine, replies } = self;
            let step = socket.recv(|input| {
                let (used, produced) = replies.receive(machine, input, device, stats);
                (used, used > 0 || produced)
            });
            if !matches!(step, Ok(true)) {
                break;
            }
            progress = true;
        }
        if !socket.may_recv() {
            // The client closed its side without NBD_CMD_DISC, and its
            // input is all consumed. Replies already queued still go out
            // (it may be reading them); a request cut short, such as a
            // write whose payload stopped, can never complete and gets
            // none. Waiting for the rest of it would hold the slot forever.
            self.replies.write = None;
            self.replies.ending = true;
        }
        progress
    }

    /// The connection is over and everything owed was queued on the socket.
    pub(crate) fn is_finished(&self) -> bool {
        self.replies.ending && self.replies.slot.is_empty() && self.replies.read.is_none()
    }

    /// The handshake deadline, if one is running.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.machine.poll_timeout()
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.machine.handle_timeout(now).is_some() {
            self.replies.ending = true;
        }
    }

    /// Static size of one connection's state.
    pub(crate) const SIZE: usize = core::mem::size_of::<Self>();

    fn transmit<D: BlockDevice + ?Sized>(
        &mut self,
        socket: &mut tcp::Socket<'_>,
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
            match socket.send_slice(out) {
                Ok(n) => {
                    self.machine.transmitted(n);
                    if n < len {
                        return Flow::Blocked;
                    }
                }
                Err(_) => return Flow::Broken,
            }
        }
        let r = &mut self.replies;
        loop {
            if !r.slot.is_empty() {
                match socket.send_slice(r.slot.pending()) {
                    Ok(n) => r.slot.advance(n),
                    Err(_) => return Flow::Broken,
                }
                if !r.slot.is_empty() {
                    return Flow::Blocked;
                }
            }
            let Some(read) = &mut r.read else {
                return Flow::Drained;
            };
            match read.step(socket, device) {
                ReadStep::Header(h) => {
                    stats.read_chunks += 1;
                    r.slot.set(h.as_bytes());
                }
                ReadStep::Data(n) => stats.read_bytes += n as u64,
                ReadStep::Blocked => return Flow::Blocked,
                ReadStep::Done => r.read = None,
                ReadStep::Failed => return Flow::Broken,
            }
        }
    }
}

impl Replies {
    /// A reply is waiting (or the connection is ending): read no more.
    fn busy(&self) -> bool {
        self.ending || !self.slot.is_empty() || self.read.is_some()
    }

    /// Feed `input` to the machine and act on its events until a reply is
    /// waiting. Returns the bytes consumed and whether a reply was queued.
    fn receive<D: BlockDevice + ?Sized>(
        &mut self,
        machine: &mut Server<Export<'_>>,
        input: &[u8],
        device: &mut D,
        stats: &mut ServerStats,
    ) -> (usize, bool) {
        let mut used = 0;
        while !self.busy() {
            let p = machine.handle_input(&input[used..]);
            used += p.consumed;
            match p.event {
                Some(ev) => self.on_event(ev, device, stats),
                None if p.consumed == 0 => break,
                None => {}
            }
        }
        (used, self.busy())
    }

    fn on_event<D: BlockDevice + ?Sized>(
        &mut self,
        ev: Event<'_>,
        device: &mut D,
        stats: &mut ServerStats,
    ) {
        match ev {
            Event::Ready(session) => {
                self.encoder = session.encoder();
                stats.sessions += 1;
            }
            Event::Request(req) => self.on_request(req, device, stats),
            Event::WriteData {
                offset, data, last, ..
            } => {
                let Some(w) = &mut self.write else { return };
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
                    self.write = None;
                    self.finish(&req, result);
                }
            }
            Event::Reject { reply, close } => {
                self.slot.set(reply.as_bytes());
                self.ending |= close.is_some();
            }
            // TLS is never offered (the machine's policy is Off), so
            // StartTls cannot come; if it did, ending is the safe answer.
            Event::Disconnect | Event::Close(_) | Event::StartTls => self.ending = true,
        }
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
                    // The RAM disk answers status from its map: asking is
                    // cheap.
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
                // Advisory: a device in memory has nothing to prefetch.
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

    /// One chunk per selected context (only `base:allocation` is offered),
    /// encoded into the reply slot, sized by the core to fit it.
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

/// The device has no durable write: `FUA` is a flush after it.
fn fua_flush<D: BlockDevice + ?Sized>(device: &mut D, fua: bool) -> Result<(), BlockError> {
    if fua { device.flush() } else { Ok(()) }
}
