//! Hole / zero / data tracking at a fixed granularity, answering
//! `base:allocation` exactly.
//!
//! Each granule stores its `base:allocation` flags directly (2 bits), so a
//! status query is a walk over runs of equal cells with no translation. A RAM
//! disk or an overlay records what it did to each granule (wrote data, wrote
//! zeroes, punched a hole) and the map answers from that record.
//!
//! Granules only partly covered by an operation keep a conservative state:
//! zeroing part of a data granule leaves it `Data` (contents not known zero),
//! writing part of a zero granule makes it `Data`, trimming part of a granule
//! changes nothing (trim is advisory).
//!
//! ```
//! use blockwire_core::block::alloc_map::{AllocMap, AllocState};
//! use blockwire_core::block::contract::StatusQuery;
//! use blockwire_core::block::Extent;
//!
//! let mut words = [0u64; 1];
//! let mut map = AllocMap::new(&mut words[..], 8192, 1024, AllocState::HoleZero).unwrap();
//! map.mark_data(1024, 1000).unwrap();
//! let mut out = [Extent::new(0, 0); 4];
//! let mut n = 0;
//! map.block_status(&StatusQuery::new(0, 8192), &mut |e| { out[n] = e; n += 1; true }).unwrap();
//! assert_eq!(&out[..n], &[Extent::new(1024, 3), Extent::new(1024, 0), Extent::new(6144, 3)]);
//! ```

use super::Extent;
use super::cells::Cells;
use super::contract::{
    BlockError, ExtentEmitter, ExtentSink, STATE_HOLE, STATE_ZERO, StatusQuery, StatusSummary,
    check_range,
};

/// The state of one granule, named by its `base:allocation` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AllocState {
    /// Allocated, contents not known to be zero (flags 0).
    Data = 0,
    /// Not allocated, contents unspecified (`HOLE`).
    Hole = 1,
    /// Allocated and reads as zeroes (`ZERO`).
    Zero = 2,
    /// Not allocated and reads as zeroes (`HOLE | ZERO`), a fresh sparse disk.
    HoleZero = 3,
}

impl AllocState {
    /// The `base:allocation` flags of this state.
    pub const fn flags(self) -> u64 {
        self as u64
    }

    const fn from_bits(v: u8) -> Self {
        match v & 3 {
            0 => AllocState::Data,
            1 => AllocState::Hole,
            2 => AllocState::Zero,
            _ => AllocState::HoleZero,
        }
    }
}

/// Granule-level allocation state of a disk, over caller-provided words.
#[derive(Clone, Debug)]
pub struct AllocMap<S> {
    cells: Cells<S, 2>,
    size: u64,
    granularity: u64,
}

/// Granules of `[offset, end)`: the first and one-past-last touched, and the
/// fully covered sub-range. The disk's last granule may be short; reaching
/// `size` covers it fully.
pub(crate) fn granule_span(offset: u64, end: u64, g: u64, size: u64) -> (u64, u64, u64, u64) {
    let first = offset / g;
    let last = end.div_ceil(g);
    let full_first = offset.div_ceil(g);
    let full_last = if end == size { last } else { end / g };
    (first, last, full_first, full_last.max(full_first))
}

impl<S> AllocMap<S> {
    /// Words of storage needed for a disk of `size` bytes at `granularity`,
    /// or `None` if the geometry is invalid or does not fit `usize`.
    pub fn words_needed(size: u64, granularity: u64) -> Option<usize> {
        if !granularity.is_power_of_two() {
            return None;
        }
        Cells::<S, 2>::words_for(size.div_ceil(granularity))
    }

    /// Disk size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes per granule.
    pub fn granularity(&self) -> u64 {
        self.granularity
    }

    /// Gives the storage back.
    pub fn into_storage(self) -> S {
        self.cells.into_storage()
    }
}

impl<S: AsRef<[u64]> + AsMut<[u64]>> AllocMap<S> {
    /// A map of a `size`-byte disk at `granularity` (any power of two), every
    /// granule starting in `init`. Fails with `Invalid` for a bad granularity
    /// and `StorageTooSmall` if `storage` has fewer than
    /// [`words_needed`](Self::words_needed) words.
    pub fn new(
        storage: S,
        size: u64,
        granularity: u64,
        init: AllocState,
    ) -> Result<Self, BlockError> {
        if !granularity.is_power_of_two() {
            return Err(BlockError::Invalid);
        }
        let cells = Cells::new(storage, size.div_ceil(granularity), init as u8)
            .ok_or(BlockError::StorageTooSmall)?;
        Ok(Self {
            cells,
            size,
            granularity,
        })
    }

    /// State of the granule holding byte `offset` (`None` past the end).
    pub fn state_at(&self, offset: u64) -> Option<AllocState> {
        (offset < self.size)
            .then(|| AllocState::from_bits(self.cells.get(offset / self.granularity)))
    }

    /// Records a data write: every touched granule becomes `Data`.
    pub fn mark_data(&mut self, offset: u64, length: u64) -> Result<(), BlockError> {
        let end = check_range(offset, length, self.size)?;
        if length > 0 {
            let (first, last, _, _) = granule_span(offset, end, self.granularity, self.size);
            self.cells.fill(first, last, AllocState::Data as u8);
        }
        Ok(())
    }

    /// Records a write-zeroes: fully covered granules become `HoleZero` when
    /// `unmap` (the backend deallocated them) or `Zero`; partly covered
    /// granules that did not already read as zero become `Data`.
    pub fn mark_zero(&mut self, offset: u64, length: u64, unmap: bool) -> Result<(), BlockError> {
        let end = check_range(offset, length, self.size)?;
        if length == 0 {
            return Ok(());
        }
        let (first, last, full_first, full_last) =
            granule_span(offset, end, self.granularity, self.size);
        for i in [first, last - 1] {
            if (i < full_first || i >= full_last) && self.cells.get(i) & STATE_ZERO as u8 == 0 {
                self.cells.fill(i, i + 1, AllocState::Data as u8);
            }
        }
        let v = if unmap {
            AllocState::HoleZero
        } else {
            AllocState::Zero
        };
        self.cells.fill(full_first, full_last, v as u8);
        Ok(())
    }

    /// Records a trim: fully covered granules become holes, reading as zero
    /// if `reads_zero`; partly covered granules are unchanged.
    pub fn mark_hole(
        &mut self,
        offset: u64,
        length: u64,
        reads_zero: bool,
    ) -> Result<(), BlockError> {
        let end = check_range(offset, length, self.size)?;
        if length > 0 {
            let (_, _, full_first, full_last) =
                granule_span(offset, end, self.granularity, self.size);
            let v = if reads_zero {
                AllocState::HoleZero
            } else {
                AllocState::Hole
            };
            self.cells.fill(full_first, full_last, v as u8);
        }
        Ok(())
    }

    /// Answers a `base:allocation` query into `sink`.
    pub fn block_status(
        &self,
        q: &StatusQuery,
        sink: &mut ExtentSink<'_>,
    ) -> Result<StatusSummary, BlockError> {
        let end = check_range(q.offset, q.length, self.size)?;
        let mut em = ExtentEmitter::new(q, sink);
        self.walk(q.offset, end, &mut |len, flags| em.push(len, flags));
        Ok(em.finish())
    }

    /// Calls `f(length, flags)` for each run of equal state in
    /// `[offset, end)` until it returns `false`.
    pub(crate) fn walk(&self, offset: u64, end: u64, f: &mut dyn FnMut(u64, u64) -> bool) {
        self.cells
            .walk_bytes(self.granularity, offset, end, &mut |len, v| {
                f(len, u64::from(v))
            });
    }

    /// The first run of equal state starting at `offset`, at most `max_len`
    /// long — the shape an overlay asks of its base.
    pub fn first_extent(&self, offset: u64, max_len: u64) -> Extent {
        let end = offset.saturating_add(max_len).min(self.size);
        let mut out = Extent::new(0, STATE_HOLE | STATE_ZERO);
        self.walk(offset, end, &mut |len, flags| {
            out = Extent::new(len, flags);
            false
        });
        out
    }
}

#[cfg(feature = "alloc")]
impl AllocMap<alloc::vec::Vec<u64>> {
    /// A map with its own heap storage.
    pub fn new_vec(size: u64, granularity: u64, init: AllocState) -> Result<Self, BlockError> {
        let words = Self::words_needed(size, granularity).ok_or(BlockError::Invalid)?;
        let v = super::cells::try_zeroed(words).ok_or(BlockError::StorageTooSmall)?;
        Self::new(v, size, granularity, init)
    }
}
