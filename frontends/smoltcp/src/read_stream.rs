//! A read reply in progress: data goes from the device straight into the
//! socket's send buffer, in chunks sized to the room the window leaves.

use blockwire_core::block::contract::STATE_ZERO;
use blockwire_core::server::{MAX_REPLY_HEADER, ReplyEncoder, ReplyHeader, Request};
use blockwire_core::wire::CommandFlags;
use smoltcp::socket::tcp;

use crate::block_device::BlockDevice;

/// Where a read reply stands. Only a few words: the data itself is never
/// held, it is read from the device into the socket buffer on the spot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadStream {
    req: Request,
    /// Next export offset to send (as data or hole).
    pos: u64,
    end: u64,
    /// Data bytes of the current chunk still to send after its header.
    chunk_left: u64,
    /// One data chunk for everything: simple replies, or `DF` set.
    whole: bool,
}

/// What one step of the stream did.
pub(crate) enum Step {
    /// A chunk header to send before calling again.
    Header(ReplyHeader),
    /// `n` data bytes went into the socket.
    Data(usize),
    /// The socket is full.
    Blocked,
    /// Everything was sent.
    Done,
    /// The device failed after a header promised data; the connection
    /// cannot continue (the client would misread the stream).
    Failed,
}

impl ReadStream {
    pub(crate) fn new(req: Request, encoder: &ReplyEncoder) -> Self {
        Self {
            req,
            pos: req.offset,
            end: req.offset + req.length,
            chunk_left: 0,
            whole: !encoder.supports_holes() || req.flags.contains(CommandFlags::DF),
        }
    }

    /// Advance by one header or one contiguous piece of data. The caller
    /// sends `Header`s through its reply slot, then calls again.
    pub(crate) fn step<D: BlockDevice + ?Sized>(
        &mut self,
        socket: &mut tcp::Socket<'_>,
        device: &mut D,
        encoder: &ReplyEncoder,
    ) -> Step {
        if self.chunk_left > 0 {
            let (pos, left) = (self.pos, self.chunk_left);
            let sent = socket.send(|buf| {
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                if n == 0 {
                    return (0, Ok(0));
                }
                match device.read(pos, &mut buf[..n]) {
                    Ok(()) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                }
            });
            return match sent {
                Ok(Ok(0)) | Err(_) => Step::Blocked,
                Ok(Ok(n)) => {
                    self.pos += n as u64;
                    self.chunk_left -= n as u64;
                    Step::Data(n)
                }
                Ok(Err(_)) => Step::Failed,
            };
        }
        if self.pos >= self.end {
            return Step::Done;
        }
        let remaining = self.end - self.pos;
        if self.whole {
            // Reads are at most the 32 MiB maximum payload (the machine
            // rejects longer ones), so the length fits the header's u32.
            self.chunk_left = remaining;
            return Step::Header(encoder.data(&self.req, self.pos, remaining as u32, true));
        }
        let run = device.extent_at(self.pos, remaining);
        let run_len = run.length.clamp(1, remaining);
        if run.flags & STATE_ZERO != 0 {
            let len = run_len.min(u64::from(u32::MAX)) as u32;
            let next = self.pos + u64::from(len);
            if let Some(h) = encoder.hole(&self.req, self.pos, len, next == self.end) {
                self.pos = next;
                return Step::Header(h);
            }
        }
        // Size the chunk to the room the send buffer has now, but never
        // below half the buffer, so a nearly full buffer does not turn into
        // a stream of tiny chunks.
        let free = socket.send_capacity() - socket.send_queue();
        let target = free
            .saturating_sub(MAX_REPLY_HEADER)
            .max(socket.send_capacity() / 2)
            .max(1) as u64;
        let len = run_len.min(target);
        let done = self.pos + len == self.end;
        self.chunk_left = len;
        Step::Header(encoder.data(&self.req, self.pos, len as u32, done))
    }
}
