//! A small buffer for one encoded reply waiting for room in the transport.

use crate::wire::codec::{Overflow, Sink};

/// Bytes a connection can hold of replies it could not send yet: an error
/// reply with its message, or a block-status chunk of up to 29 extended
/// (61 compact) descriptors. Reads never pass through here; their data goes
/// from the device straight into the transport's send buffer.
pub const REPLY_SLOT: usize = 512;

pub(crate) struct ReplySlot {
    buf: heapless::Vec<u8, REPLY_SLOT>,
    sent: usize,
}

impl ReplySlot {
    pub(crate) const fn new() -> Self {
        Self {
            buf: heapless::Vec::new(),
            sent: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sent == self.buf.len()
    }

    /// Queue one whole reply; only called when empty. Every reply queued
    /// here is bounded below [`REPLY_SLOT`] (a header, an error with its
    /// capped message, a block-status chunk sized to fit), so a reply that
    /// does not fit is a sizing bug: debug builds stop, release builds
    /// queue nothing rather than a truncated frame.
    pub(crate) fn set(&mut self, bytes: &[u8]) {
        self.buf.clear();
        self.sent = 0;
        let queued = self.put(bytes);
        debug_assert!(queued.is_ok(), "reply larger than the reply slot");
    }

    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.sent..]
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.buf.len());
    }
}

/// Replies are encoded straight into the slot (when it is empty).
impl Sink for ReplySlot {
    fn room(&self) -> usize {
        self.buf.room()
    }
    fn put(&mut self, bytes: &[u8]) -> Result<(), Overflow> {
        self.buf.put(bytes)
    }
}
