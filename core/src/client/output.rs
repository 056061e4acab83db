//! The client's output queue: the handshake's option requests, then request
//! headers. Everything is written through the checked [`Sink`], whole
//! frames or nothing; a write's payload is never queued (the frontend sends
//! it from where it is).

use crate::wire::MAX_STRING;
use crate::wire::codec::{Overflow, Sink};
use crate::wire::headers::OptionRequest;

use super::MAX_CONTEXTS;
use super::config::QUERY_BYTES;

/// Bytes the output queue holds: the largest option request a
/// [`Config`](super::Config) can make (`NBD_OPT_SET_META_CONTEXT` with a
/// 4096-byte export name and [`QUERY_BYTES`] of queries). In transmission
/// the same bytes hold request headers: 194 extended ones, enough for a
/// full table of the default size (64) and a `DISC`.
pub const TRANSMIT_BUFFER: usize =
    OptionRequest::SIZE + 4 + MAX_STRING + 4 + 4 * MAX_CONTEXTS + QUERY_BYTES;

/// The other option requests, client flags in front of the first: the
/// greeting's answer (flags and `GO` with the longest name) must fit too.
const _: () = assert!(4 + OptionRequest::SIZE + 4 + MAX_STRING + 2 + 6 <= TRANSMIT_BUFFER);

#[derive(Debug)]
pub(crate) struct Output {
    buf: [u8; TRANSMIT_BUFFER],
    /// Bytes `head..tail` wait to be sent.
    head: usize,
    tail: usize,
}

impl Output {
    pub(crate) const fn new() -> Self {
        Self {
            buf: [0; TRANSMIT_BUFFER],
            head: 0,
            tail: 0,
        }
    }

    pub(crate) fn poll(&self) -> &[u8] {
        self.buf.get(self.head..self.tail).unwrap_or(&[])
    }

    /// `n` bytes of [`poll`](Self::poll) were sent (more is capped).
    pub(crate) fn advance(&mut self, n: usize) {
        self.head = self.head.saturating_add(n).min(self.tail);
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    pub(crate) fn pending(&self) -> usize {
        self.tail - self.head
    }
}

impl Sink for Output {
    fn room(&self) -> usize {
        TRANSMIT_BUFFER - self.pending()
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), Overflow> {
        if bytes.len() > self.room() {
            return Err(Overflow);
        }
        if self.tail + bytes.len() > TRANSMIT_BUFFER {
            // Room is there, but behind what was sent: move the rest to
            // the front (a frame being written moves with it, in order).
            self.buf.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
        let dst = self
            .buf
            .get_mut(self.tail..self.tail + bytes.len())
            .ok_or(Overflow)?;
        dst.copy_from_slice(bytes);
        self.tail += bytes.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_queue_in_order_and_compact() {
        let mut out = Output::new();
        out.put_all(&[&[1; 30], b"name"]).unwrap();
        out.put(&[9; 28]).unwrap();
        assert_eq!(out.pending(), 62);
        let mut sent = alloc::vec::Vec::new();
        while !out.is_empty() {
            let b = out.poll();
            let n = b.len().min(7);
            sent.extend_from_slice(&b[..n]);
            out.advance(n);
        }
        assert_eq!(&sent[..30], &[1; 30]);
        assert_eq!(&sent[30..34], b"name");
        assert_eq!(&sent[34..], &[9; 28]);
        out.advance(1000);
        assert!(out.poll().is_empty());
    }

    #[test]
    fn a_full_queue_refuses_whole_frames_and_takes_them_once_drained() {
        let mut out = Output::new();
        let mut n = 0;
        while out.put(&[0; 32]).is_ok() {
            n += 1;
        }
        assert_eq!(n, TRANSMIT_BUFFER / 32);
        let before = out.pending();
        assert_eq!(out.put_all(&[&[1; 16], &[2; 16]]), Err(Overflow));
        assert_eq!(
            out.pending(),
            before,
            "nothing of a refused frame is queued"
        );
        out.advance(32);
        // The room is at the front now: the queue compacts to use it.
        out.put(&[7; 32]).unwrap();
        assert_eq!(out.put(&[0; 32]), Err(Overflow));
        assert_eq!(out.pending(), TRANSMIT_BUFFER - TRANSMIT_BUFFER % 32);
    }
}
