//! The client's output queue: option requests during the handshake (whose
//! strings are borrowed from the [`Config`](super::Config), never copied),
//! then request headers during transmission.

use heapless::Deque;

/// Bytes of request headers the transmission queue holds: 64 extended
/// headers plus a `DISC`, enough for a full table of the default size.
pub const TRANSMIT_BUFFER: usize = 66 * 32;

/// Pieces of handshake output the queue holds: a `SET_META_CONTEXT` with
/// [`MAX_CONTEXTS`](super::MAX_CONTEXTS) queries (3 + 2 per query), the
/// client flags and an `ABORT`.
const MAX_SEGMENTS: usize = 3 + 2 * super::MAX_CONTEXTS + 4;

/// Largest owned piece of a handshake message.
const SMALL: usize = 24;

#[derive(Clone, Copy, Debug)]
enum Segment<'c> {
    Small { buf: [u8; SMALL], len: u8 },
    Borrowed(&'c [u8]),
}

impl<'c> Segment<'c> {
    fn bytes(&self) -> &[u8] {
        match self {
            Segment::Small { buf, len } => buf.get(..usize::from(*len)).unwrap_or(&[]),
            Segment::Borrowed(b) => b,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Tx<'c> {
    segments: Deque<Segment<'c>, MAX_SEGMENTS>,
    segment_sent: usize,
    bytes: [u8; TRANSMIT_BUFFER],
    head: usize,
    tail: usize,
}

impl<'c> Tx<'c> {
    pub(crate) fn new() -> Self {
        Self {
            segments: Deque::new(),
            segment_sent: 0,
            bytes: [0; TRANSMIT_BUFFER],
            head: 0,
            tail: 0,
        }
    }

    pub(crate) fn poll(&self) -> &[u8] {
        if let Some(s) = self.segments.front() {
            return s.bytes().get(self.segment_sent..).unwrap_or(&[]);
        }
        self.bytes.get(self.head..self.tail).unwrap_or(&[])
    }

    pub(crate) fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.segments.front() else {
                break;
            };
            let left = front.bytes().len().saturating_sub(self.segment_sent);
            let k = n.min(left);
            self.segment_sent += k;
            n -= k;
            if self.segment_sent >= front.bytes().len() {
                self.segments.pop_front();
                self.segment_sent = 0;
            }
        }
        self.head = self.head.saturating_add(n).min(self.tail);
        if self.head == self.tail {
            self.head = 0;
            self.tail = 0;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.head == self.tail
    }

    /// Total bytes waiting (for tests and bounds).
    pub(crate) fn pending(&self) -> usize {
        let segs: usize = self.segments.iter().map(|s| s.bytes().len()).sum();
        segs.saturating_sub(self.segment_sent) + (self.tail - self.head)
    }

    /// Queue small owned handshake bytes. Returns false if the queue is full
    /// (cannot happen with a validated config).
    pub(crate) fn push_small(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            let k = bytes.len().min(SMALL);
            let mut buf = [0; SMALL];
            let (now, rest) = bytes.split_at(k);
            buf[..k].copy_from_slice(now);
            if self
                .segments
                .push_back(Segment::Small { buf, len: k as u8 })
                .is_err()
            {
                return false;
            }
            bytes = rest;
        }
        true
    }

    /// Queue a borrowed string.
    pub(crate) fn push_borrowed(&mut self, bytes: &'c [u8]) -> bool {
        bytes.is_empty() || self.segments.push_back(Segment::Borrowed(bytes)).is_ok()
    }

    /// Queue a request header. Returns false if there is no room.
    pub(crate) fn push_header(&mut self, header: &[u8]) -> bool {
        if TRANSMIT_BUFFER - self.tail < header.len() && self.head > 0 {
            self.bytes.copy_within(self.head..self.tail, 0);
            self.tail -= self.head;
            self.head = 0;
        }
        match self.bytes.get_mut(self.tail..self.tail + header.len()) {
            Some(dst) => {
                dst.copy_from_slice(header);
                self.tail += header.len();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_then_bytes_in_order() {
        let mut tx = Tx::new();
        assert!(tx.push_small(&[1; 30]));
        assert!(tx.push_borrowed(b"name"));
        assert!(tx.push_header(&[9; 28]));
        assert_eq!(tx.pending(), 62);
        let mut out = alloc::vec::Vec::new();
        while !tx.is_empty() {
            let b = tx.poll();
            let n = b.len().min(7);
            out.extend_from_slice(&b[..n]);
            tx.advance(n);
        }
        assert_eq!(&out[..30], &[1; 30]);
        assert_eq!(&out[30..34], b"name");
        assert_eq!(&out[34..], &[9; 28]);
        tx.advance(1000);
        assert!(tx.poll().is_empty());
    }

    #[test]
    fn header_queue_fills_and_compacts() {
        let mut tx = Tx::new();
        let mut n = 0;
        while tx.push_header(&[0; 32]) {
            n += 1;
        }
        assert_eq!(n, TRANSMIT_BUFFER / 32);
        tx.advance(32);
        assert!(tx.push_header(&[0; 32]));
        assert!(!tx.push_header(&[0; 32]));
    }
}
