//! A RAM disk over caller-provided memory, with exact `base:allocation`.

use blockwire_core::block::alloc_map::{AllocMap, AllocState};
use blockwire_core::block::contract::{BlockError, ExtentSink, Op, StatusQuery, StatusSummary};

use blockwire_core::block::BlockDevice;
use blockwire_core::block::device::byte_range;

/// A disk in a `&mut [u8]`, tracking which granules hold data, zeroes or
/// nothing in an [`AllocMap`] over a caller-provided `&mut [u64]`, so block
/// status is exact and reads of untouched space go out as holes.
pub struct RamDisk<'a> {
    data: &'a mut [u8],
    map: AllocMap<&'a mut [u64]>,
}

impl<'a> RamDisk<'a> {
    /// Words of map storage a disk of `size` bytes needs at `granularity`
    /// (a power of two; 4096 is a good default: 64 MiB needs 512 words).
    pub fn map_words(size: usize, granularity: u64) -> Option<usize> {
        AllocMap::<&mut [u64]>::words_needed(size as u64, granularity)
    }

    /// An empty disk: `data` is cleared, and every granule is a hole that
    /// reads as zeroes.
    pub fn zeroed(
        data: &'a mut [u8],
        map_storage: &'a mut [u64],
        granularity: u64,
    ) -> Result<Self, BlockError> {
        data.fill(0);
        Self::with_contents(data, map_storage, granularity, AllocState::HoleZero)
    }

    /// A disk over `data` as it is, every granule starting in `state`:
    /// `Data` for an image already loaded, `HoleZero` for memory the caller
    /// knows is zero (fresh VM memory, `.bss`) to skip clearing it.
    pub fn with_contents(
        data: &'a mut [u8],
        map_storage: &'a mut [u64],
        granularity: u64,
        state: AllocState,
    ) -> Result<Self, BlockError> {
        let map = AllocMap::new(map_storage, data.len() as u64, granularity, state)?;
        Ok(Self { data, map })
    }

    /// The disk's bytes.
    pub fn data(&self) -> &[u8] {
        self.data
    }

    /// The allocation map.
    pub fn map(&self) -> &AllocMap<&'a mut [u64]> {
        &self.map
    }
}

impl BlockDevice for RamDisk<'_> {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn supports(&self, op: Op) -> bool {
        // Cache is advertised too: RAM is already as close as it gets, so
        // the answer is an immediate success.
        let _ = op;
        true
    }

    fn fast_zero(&self) -> bool {
        true
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let r = byte_range(offset, buf.len(), self.size())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        let r = byte_range(offset, data.len(), self.size())?;
        self.data[r].copy_from_slice(data);
        self.map.mark_data(offset, data.len() as u64)
    }

    fn trim(&mut self, offset: u64, length: u64) -> Result<(), BlockError> {
        // Clearing the bytes lets the map call trimmed granules "reads as
        // zero", which is what a thin volume reports and what makes the
        // following reads cheap holes.
        let r = byte_range(
            offset,
            usize::try_from(length).map_err(|_| BlockError::OutOfRange)?,
            self.size(),
        )?;
        self.data[r].fill(0);
        self.map.mark_hole(offset, length, true)
    }

    fn write_zeroes(
        &mut self,
        offset: u64,
        length: u64,
        may_unmap: bool,
    ) -> Result<(), BlockError> {
        let r = byte_range(
            offset,
            usize::try_from(length).map_err(|_| BlockError::OutOfRange)?,
            self.size(),
        )?;
        self.data[r].fill(0);
        self.map.mark_zero(offset, length, may_unmap)
    }

    fn block_status(
        &self,
        query: &StatusQuery,
        sink: &mut ExtentSink<'_>,
    ) -> Result<StatusSummary, BlockError> {
        self.map.block_status(query, sink)
    }
}
