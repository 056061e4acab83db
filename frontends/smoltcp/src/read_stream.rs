//! A read reply in progress: the core's [`ReadReply`] plans the chunks,
//! and data goes from the device straight into the socket's send buffer,
//! in chunks sized to the room the window leaves.

use blockwire_core::server::{MAX_REPLY_HEADER, ReadChunk, ReadReply, ReplyHeader};
use smoltcp::socket::tcp;

use crate::block_device::BlockDevice;

/// Where a read reply stands. Only a few words: the data itself is never
/// held, it is read from the device into the socket buffer on the spot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadStream {
    plan: ReadReply,
    /// The data chunk being sent: next offset and bytes left after its
    /// header.
    pos: u64,
    chunk_left: u64,
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
    pub(crate) fn new(plan: ReadReply) -> Self {
        Self {
            plan,
            pos: 0,
            chunk_left: 0,
        }
    }

    /// Advance by one header or one contiguous piece of data. The caller
    /// sends `Header`s through its reply slot, then calls again.
    pub(crate) fn step<D: BlockDevice + ?Sized>(
        &mut self,
        socket: &mut tcp::Socket<'_>,
        device: &mut D,
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
        // Size data chunks to the room the send buffer has now, but never
        // below half the buffer, so a nearly full buffer does not turn into
        // a stream of tiny chunks.
        let free = socket.send_capacity() - socket.send_queue();
        let target = free
            .saturating_sub(MAX_REPLY_HEADER)
            .max(socket.send_capacity() / 2)
            .max(1) as u64;
        let chunk = self
            .plan
            .next_chunk(target, |pos, max| device.extent_at(pos, max));
        match chunk {
            None => Step::Done,
            Some(ReadChunk::Data {
                header,
                offset,
                len,
            }) => {
                self.pos = offset;
                self.chunk_left = u64::from(len);
                Step::Header(header)
            }
            Some(ReadChunk::Hole { header, .. } | ReadChunk::Empty(header)) => Step::Header(header),
        }
    }
}
