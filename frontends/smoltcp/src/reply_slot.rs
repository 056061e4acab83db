//! A small buffer for one encoded reply waiting for room in the socket.

/// Bytes a connection can hold of replies it could not send yet: an error
/// reply with its message, or a block-status chunk of up to 29 extended
/// (61 compact) descriptors. Reads never pass through here; their data goes
/// from the device straight into the socket's send buffer.
pub const REPLY_SLOT: usize = 512;

pub(crate) struct ReplySlot {
    buf: [u8; REPLY_SLOT],
    len: u16,
    sent: u16,
}

impl ReplySlot {
    pub(crate) const fn new() -> Self {
        Self {
            buf: [0; REPLY_SLOT],
            len: 0,
            sent: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.sent == self.len
    }

    /// Queue `bytes` (at most [`REPLY_SLOT`]; callers only put replies
    /// whose size is bounded below that). Only called when empty.
    pub(crate) fn set(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(REPLY_SLOT);
        self.buf[..n].copy_from_slice(&bytes[..n]);
        self.len = n as u16;
        self.sent = 0;
    }

    /// The whole buffer to encode into in place; [`filled`](Self::filled)
    /// says how much was used.
    pub(crate) fn space(&mut self) -> &mut [u8; REPLY_SLOT] {
        &mut self.buf
    }

    pub(crate) fn filled(&mut self, n: usize) {
        self.len = n.min(REPLY_SLOT) as u16;
        self.sent = 0;
    }

    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.sent as usize..self.len as usize]
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.sent = (self.sent as usize + n).min(self.len as usize) as u16;
    }
}
