//! A read reply in progress: the core's [`ReadReply`] plans the chunks,
//! and data goes from the device straight into the transport's send buffer,
//! in chunks sized to the room the window leaves.

use super::Transport;
use crate::block::BlockDevice;
use crate::server::{MAX_REPLY_HEADER, ReadChunk, ReadReply, ReplyHeader};

/// Where a read reply stands. Only a few words: the data itself is never
/// held, it is read from the device into the send buffer on the spot.
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
    /// `n` data bytes went into the transport.
    Data(usize),
    /// The transport's send buffer is full.
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
    pub(crate) fn step<D: BlockDevice + ?Sized, T: Transport + ?Sized>(
        &mut self,
        out: &mut T,
        device: &mut D,
    ) -> Step {
        if self.chunk_left > 0 {
            let (pos, left) = (self.pos, self.chunk_left);
            let mut failed = false;
            let sent = out.send_with(&mut |buf| {
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                if n == 0 {
                    return 0;
                }
                match device.read(pos, &mut buf[..n]) {
                    Ok(()) => n,
                    Err(_) => {
                        failed = true;
                        0
                    }
                }
            });
            return match sent {
                _ if failed => Step::Failed,
                Ok(0) | Err(_) => Step::Blocked,
                Ok(n) => {
                    self.pos += n as u64;
                    self.chunk_left -= n as u64;
                    Step::Data(n)
                }
            };
        }
        // Size data chunks to the room the send buffer has now, but never
        // below half the buffer, so a nearly full buffer does not turn into
        // a stream of tiny chunks.
        let free = out.send_capacity() - out.send_queue();
        let target = free
            .saturating_sub(MAX_REPLY_HEADER)
            .max(out.send_capacity() / 2)
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
