//! A synchronous block device: what [`crate::server::sync`] serves.
//!
//! Everything on a bare-metal target (or in a simulation, or a fuzzer)
//! runs in one loop, so the device is plain method calls that finish
//! before they return: no futures, no completion queue. Ranges are checked by the protocol machine before the
//! device sees them (offset + length never passes [`BlockDevice::size`]),
//! but implementations still check them, because a device is also usable
//! on its own.

use crate::block::Extent;
use crate::block::contract::{
    BlockError, ExtentEmitter, ExtentSink, Limits, Op, StatusQuery, StatusSummary,
};

/// A disk as the NBD server sees it.
pub trait BlockDevice {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// Whether writes, trims and zeroing are refused.
    fn read_only(&self) -> bool {
        false
    }

    /// Whether the device implements `op` itself. `Read`, `Write`, `Flush`
    /// and `BlockStatus` always work (defaults exist); this decides what is
    /// advertised for the optional ones (`Trim`, `WriteZeroes`, `Cache`).
    fn supports(&self, op: Op) -> bool {
        matches!(op, Op::Read | Op::Write | Op::Flush | Op::BlockStatus)
    }

    /// Whether [`write_zeroes`](Self::write_zeroes) is cheap (no data is
    /// written), so `NBD_CMD_FLAG_FAST_ZERO` can be honoured.
    fn fast_zero(&self) -> bool {
        false
    }

    /// Alignment and size limits. `align` above 1 becomes the export's
    /// minimum block size; `opt_write_zero` (an erase block, say) its
    /// preferred block size.
    fn limits(&self) -> Limits {
        Limits::default()
    }

    /// Fill `buf` from `offset`.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError>;

    /// Store `data` at `offset`. Writes need not be durable before
    /// [`flush`](Self::flush).
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError>;

    /// Make every completed write durable.
    fn flush(&mut self) -> Result<(), BlockError> {
        Ok(())
    }

    /// Discard a range; its contents become unspecified. Advisory: the
    /// default does nothing, which is always correct.
    fn trim(&mut self, offset: u64, length: u64) -> Result<(), BlockError> {
        let _ = (offset, length);
        Ok(())
    }

    /// Make a range read as zeroes; `may_unmap` allows deallocating it
    /// (NBD's write-zeroes without `NO_HOLE`). The default writes zeroes
    /// from a small static block.
    fn write_zeroes(
        &mut self,
        offset: u64,
        length: u64,
        may_unmap: bool,
    ) -> Result<(), BlockError> {
        let _ = may_unmap;
        static ZEROES: [u8; 512] = [0; 512];
        let mut pos = offset;
        let end = offset.checked_add(length).ok_or(BlockError::OutOfRange)?;
        while pos < end {
            let n = (end - pos).min(ZEROES.len() as u64) as usize;
            self.write(pos, &ZEROES[..n])?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Answer a `base:allocation` query into `sink`. The default says
    /// "allocated data" for the whole range, which is always correct.
    fn block_status(
        &self,
        query: &StatusQuery,
        sink: &mut ExtentSink<'_>,
    ) -> Result<StatusSummary, BlockError> {
        let mut em = ExtentEmitter::new(query, sink);
        em.push(query.length, 0);
        Ok(em.finish())
    }

    /// The first run of equal `base:allocation` status at `offset`, at most
    /// `max_len` long. Read replies use it to send zero runs as holes.
    fn extent_at(&self, offset: u64, max_len: u64) -> Extent {
        let q = StatusQuery::new(offset, max_len)
            .req_one(true)
            .max_extent_len(u64::MAX);
        let mut first = Extent::new(max_len, 0);
        let _ = self.block_status(&q, &mut |e| {
            first = e;
            false
        });
        first
    }
}

impl<T: BlockDevice + ?Sized> BlockDevice for &mut T {
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn read_only(&self) -> bool {
        (**self).read_only()
    }
    fn supports(&self, op: Op) -> bool {
        (**self).supports(op)
    }
    fn fast_zero(&self) -> bool {
        (**self).fast_zero()
    }
    fn limits(&self) -> Limits {
        (**self).limits()
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        (**self).read(offset, buf)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        (**self).write(offset, data)
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        (**self).flush()
    }
    fn trim(&mut self, offset: u64, length: u64) -> Result<(), BlockError> {
        (**self).trim(offset, length)
    }
    fn write_zeroes(
        &mut self,
        offset: u64,
        length: u64,
        may_unmap: bool,
    ) -> Result<(), BlockError> {
        (**self).write_zeroes(offset, length, may_unmap)
    }
    fn block_status(
        &self,
        query: &StatusQuery,
        sink: &mut ExtentSink<'_>,
    ) -> Result<StatusSummary, BlockError> {
        (**self).block_status(query, sink)
    }
    fn extent_at(&self, offset: u64, max_len: u64) -> Extent {
        (**self).extent_at(offset, max_len)
    }
}

/// `offset..offset+len` as `usize` indices into a device of `size` bytes
/// held in memory (so `size` came from a slice length and fits `usize`).
pub fn byte_range(
    offset: u64,
    len: usize,
    size: u64,
) -> Result<core::ops::Range<usize>, BlockError> {
    let end = crate::block::contract::check_range(offset, len as u64, size)?;
    // `size` came from a slice length, so both ends fit usize.
    Ok(offset as usize..end as usize)
}
