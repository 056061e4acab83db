//! The unit every block-status answer is made of.

/// One run of bytes sharing a status, as NBD block status describes it.
///
/// `flags` is 64 bits wide so that the same type serves 32-bit
/// (`NBD_REPLY_TYPE_BLOCK_STATUS`) and 64-bit (`NBD_REPLY_TYPE_BLOCK_STATUS_EXT`)
/// replies; contexts with 32-bit status keep the high half zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Bytes in the run (nonzero in a reply).
    pub length: u64,
    /// Status flags; their meaning belongs to the metadata context.
    pub flags: u64,
}

impl Extent {
    /// An extent of `length` bytes with `flags`.
    pub const fn new(length: u64, flags: u64) -> Self {
        Self { length, flags }
    }
}
