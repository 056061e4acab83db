//! Named dirty bitmaps with QEMU's `block-dirty-bitmap-*` semantics, exported
//! as `qemu:dirty-bitmap:NAME` (flag `DIRTY` = 1).
//!
//! Statuses follow `DirtyBitmapStatus`:
//! * `active` — records every write and write-zeroes; may be cleared,
//!   removed, merged into.
//! * `disabled` — read-only: records nothing and refuses clear and
//!   merge-into, but can still be removed or re-enabled.
//! * `frozen` — in use by a backup: immutable and unremovable. Writes made
//!   meanwhile go to an anonymous *successor* (storage supplied to
//!   [`BitmapSet::freeze`]) so that none is lost: when the backup succeeds,
//!   [`BitmapSet::abdicate`] makes the successor the bitmap; when it fails,
//!   [`BitmapSet::reclaim`] merges the successor back.
//!
//! `count` is in bytes; a dirty last granule that is shorter than the
//! granularity (disk size not a multiple of it) counts only its real bytes.
//!
//! ```
//! use blockwire_core::block::dirty_bitmap::{BitmapSet, DirtyBitmapStatus};
//! use blockwire_core::block::contract::StatusQuery;
//!
//! let mut words = [0u64; 2];
//! let mut set: BitmapSet<&mut [u64], 4> = BitmapSet::new();
//! set.add("b0", &mut words[..], 1 << 20, Some(8192)).unwrap();
//! set.mark(10_000, 100);
//! let bm = set.find_context("qemu:dirty-bitmap:b0").unwrap();
//! assert_eq!(bm.info().count, 8192);
//! assert_eq!(bm.info().status, DirtyBitmapStatus::Active);
//! let mut dirty = 0;
//! bm.block_status(&StatusQuery::new(0, 1 << 20), &mut |e| { dirty += e.length * e.flags; true }).unwrap();
//! assert_eq!(dirty, 8192);
//! ```

use super::alloc_map::granule_span;
use super::cells::Cells;
use super::contract::{ExtentEmitter, ExtentSink, StatusQuery, StatusSummary, check_range};

/// Longest bitmap name accepted, in bytes.
pub const NAME_CAP: usize = 128;
/// Granularity `block-dirty-bitmap-add` uses when none is given.
pub const DEFAULT_GRANULARITY: u32 = 64 * 1024;
/// Smallest accepted granularity.
pub const MIN_GRANULARITY: u32 = 512;
/// Largest accepted granularity.
pub const MAX_GRANULARITY: u32 = 64 * 1024 * 1024;
/// Metadata-context prefix under which bitmaps are exported.
pub const CONTEXT_PREFIX: &str = "qemu:dirty-bitmap:";

/// `DirtyBitmapStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DirtyBitmapStatus {
    /// Recording writes; fully mutable.
    Active,
    /// Not recording; read-only.
    Disabled,
    /// In use by a backup; immutable.
    Frozen,
}

impl DirtyBitmapStatus {
    /// The QAPI spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            DirtyBitmapStatus::Active => "active",
            DirtyBitmapStatus::Disabled => "disabled",
            DirtyBitmapStatus::Frozen => "frozen",
        }
    }
}

/// `BlockDirtyInfo`, borrowing the name from the bitmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDirtyInfo<'a> {
    /// Bitmap name.
    pub name: &'a str,
    /// Dirty bytes.
    pub count: u64,
    /// Bytes per bit.
    pub granularity: u32,
    /// Current status.
    pub status: DirtyBitmapStatus,
}

/// Why a bitmap command failed; each maps to a QMP `GenericError` text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BitmapError {
    /// No bitmap of that name.
    NotFound,
    /// The name is taken.
    Exists,
    /// Empty or longer than [`NAME_CAP`].
    BadName,
    /// Not a power of two in `512..=64 MiB`.
    BadGranularity,
    /// The bitmap is frozen.
    Frozen,
    /// The bitmap is disabled (read-only).
    Disabled,
    /// The set already holds its maximum number of bitmaps.
    Full,
    /// Caller storage too small for the disk at this granularity.
    StorageTooSmall,
    /// A range past the end of the disk.
    OutOfRange,
}

/// One named bitmap over caller-provided words (1 bit per granule).
#[derive(Clone, Debug)]
pub struct DirtyBitmap<S> {
    name: heapless::String<NAME_CAP>,
    size: u64,
    granularity: u32,
    enabled: bool,
    bits: Cells<S, 1>,
    successor: Option<Cells<S, 1>>,
}

impl<S> DirtyBitmap<S> {
    /// Words needed to track a `size`-byte disk at `granularity`, or `None`
    /// if it does not fit `usize`.
    pub fn words_needed(size: u64, granularity: u32) -> Option<usize> {
        Cells::<S, 1>::words_for(size.div_ceil(u64::from(granularity.max(1))))
    }

    /// The bitmap's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes per bit.
    pub fn granularity(&self) -> u32 {
        self.granularity
    }

    /// Size of the tracked disk.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Current status.
    pub fn status(&self) -> DirtyBitmapStatus {
        if self.successor.is_some() {
            DirtyBitmapStatus::Frozen
        } else if self.enabled {
            DirtyBitmapStatus::Active
        } else {
            DirtyBitmapStatus::Disabled
        }
    }
}

impl<S: AsRef<[u64]> + AsMut<[u64]>> DirtyBitmap<S> {
    /// A clean, active bitmap of a `size`-byte disk.
    pub fn new(name: &str, storage: S, size: u64, granularity: u32) -> Result<Self, BitmapError> {
        if !granularity.is_power_of_two()
            || !(MIN_GRANULARITY..=MAX_GRANULARITY).contains(&granularity)
        {
            return Err(BitmapError::BadGranularity);
        }
        let name = if name.is_empty() {
            None
        } else {
            heapless::String::try_from(name).ok()
        };
        let name = name.ok_or(BitmapError::BadName)?;
        let bits = Cells::new(storage, size.div_ceil(u64::from(granularity)), 0)
            .ok_or(BitmapError::StorageTooSmall)?;
        Ok(Self {
            name,
            size,
            granularity,
            enabled: true,
            bits,
            successor: None,
        })
    }

    fn g(&self) -> u64 {
        u64::from(self.granularity)
    }

    /// Dirty bytes (see the module note on the last granule).
    pub fn count(&self) -> u64 {
        let cells = self.bits.len();
        let mut n = self.bits.count(0, cells, 1).saturating_mul(self.g());
        if cells > 0 && self.bits.get(cells - 1) == 1 {
            let last_len = self.size - (cells - 1) * self.g();
            n = n.saturating_sub(self.g() - last_len);
        }
        n
    }

    /// `BlockDirtyInfo` for `query-block`.
    pub fn info(&self) -> BlockDirtyInfo<'_> {
        BlockDirtyInfo {
            name: &self.name,
            count: self.count(),
            granularity: self.granularity,
            status: self.status(),
        }
    }

    /// Whether the granule holding `offset` is dirty.
    pub fn is_dirty(&self, offset: u64) -> bool {
        offset < self.size && self.bits.get(offset / self.g()) == 1
    }

    /// Marks `[offset, offset+length)` dirty regardless of status — for
    /// loading a persisted bitmap. Writes go through [`BitmapSet::mark`].
    pub fn set_dirty(&mut self, offset: u64, length: u64) -> Result<(), BitmapError> {
        let (first, last) = self.span(offset, length)?;
        self.bits.fill(first, last, 1);
        Ok(())
    }

    /// Clears the granules *fully* inside `[offset, offset+length)` — what a
    /// backup job does after copying them. Refused while frozen.
    pub fn reset(&mut self, offset: u64, length: u64) -> Result<(), BitmapError> {
        if self.successor.is_some() {
            return Err(BitmapError::Frozen);
        }
        let end = check_range(offset, length, self.size).map_err(|_| BitmapError::OutOfRange)?;
        let (_, _, a, b) = granule_span(offset, end, self.g(), self.size);
        self.bits.fill(a, b, 0);
        Ok(())
    }

    fn span(&self, offset: u64, length: u64) -> Result<(u64, u64), BitmapError> {
        let end = check_range(offset, length, self.size).map_err(|_| BitmapError::OutOfRange)?;
        if length == 0 {
            return Ok((0, 0));
        }
        Ok((offset / self.g(), end.div_ceil(self.g())))
    }

    fn record(&mut self, offset: u64, length: u64) {
        if let Ok((first, last)) = self.span(offset, length) {
            match &mut self.successor {
                Some(succ) if self.enabled => succ.fill(first, last, 1),
                None if self.enabled => self.bits.fill(first, last, 1),
                _ => {}
            }
        }
    }

    /// Answers `qemu:dirty-bitmap:NAME` for `q` into `sink`.
    pub fn block_status(
        &self,
        q: &StatusQuery,
        sink: &mut ExtentSink<'_>,
    ) -> Result<StatusSummary, BitmapError> {
        let end =
            check_range(q.offset, q.length, self.size).map_err(|_| BitmapError::OutOfRange)?;
        let mut em = ExtentEmitter::new(q, sink);
        self.bits
            .walk_bytes(self.g(), q.offset, end, &mut |len, v| {
                em.push(len, u64::from(v))
            });
        Ok(em.finish())
    }

    /// Calls `f(offset, length)` for each dirty run in `[offset, end)`.
    pub fn for_each_dirty(&self, offset: u64, end: u64, f: &mut dyn FnMut(u64, u64)) {
        let end = end.min(self.size);
        let mut pos = offset;
        self.bits.walk_bytes(self.g(), offset, end, &mut |len, v| {
            if v == 1 {
                f(pos, len);
            }
            pos += len;
            true
        });
    }
}

/// Up to `N` named bitmaps of one node, with the QMP commands.
#[derive(Debug)]
pub struct BitmapSet<S, const N: usize> {
    maps: heapless::Vec<DirtyBitmap<S>, N>,
}

impl<S, const N: usize> Default for BitmapSet<S, N> {
    fn default() -> Self {
        Self {
            maps: heapless::Vec::new(),
        }
    }
}

impl<S: AsRef<[u64]> + AsMut<[u64]>, const N: usize> BitmapSet<S, N> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    fn index(&self, name: &str) -> Result<usize, BitmapError> {
        self.maps
            .iter()
            .position(|m| m.name() == name)
            .ok_or(BitmapError::NotFound)
    }

    /// `block-dirty-bitmap-add`: a clean active bitmap; `granularity`
    /// defaults to [`DEFAULT_GRANULARITY`].
    pub fn add(
        &mut self,
        name: &str,
        storage: S,
        size: u64,
        granularity: Option<u32>,
    ) -> Result<(), BitmapError> {
        if self.index(name).is_ok() {
            return Err(BitmapError::Exists);
        }
        if self.maps.is_full() {
            return Err(BitmapError::Full);
        }
        let bm = DirtyBitmap::new(
            name,
            storage,
            size,
            granularity.unwrap_or(DEFAULT_GRANULARITY),
        )?;
        self.maps.push(bm).map_err(|_| BitmapError::Full)
    }

    /// `block-dirty-bitmap-remove`: gives the storage back.
    pub fn remove(&mut self, name: &str) -> Result<S, BitmapError> {
        let i = self.index(name)?;
        if self.maps[i].successor.is_some() {
            return Err(BitmapError::Frozen);
        }
        Ok(self.maps.remove(i).bits.into_storage())
    }

    /// `block-dirty-bitmap-clear`: only an active bitmap can be cleared.
    pub fn clear(&mut self, name: &str) -> Result<(), BitmapError> {
        let bm = self.writable(name)?;
        let n = bm.bits.len();
        bm.bits.fill(0, n, 0);
        Ok(())
    }

    fn writable(&mut self, name: &str) -> Result<&mut DirtyBitmap<S>, BitmapError> {
        let i = self.index(name)?;
        let bm = &mut self.maps[i];
        match bm.status() {
            DirtyBitmapStatus::Frozen => Err(BitmapError::Frozen),
            DirtyBitmapStatus::Disabled => Err(BitmapError::Disabled),
            DirtyBitmapStatus::Active => Ok(bm),
        }
    }

    /// `block-dirty-bitmap-enable`.
    pub fn enable(&mut self, name: &str) -> Result<(), BitmapError> {
        self.set_enabled(name, true)
    }

    /// `block-dirty-bitmap-disable`.
    pub fn disable(&mut self, name: &str) -> Result<(), BitmapError> {
        self.set_enabled(name, false)
    }

    fn set_enabled(&mut self, name: &str, on: bool) -> Result<(), BitmapError> {
        let i = self.index(name)?;
        if self.maps[i].successor.is_some() {
            return Err(BitmapError::Frozen);
        }
        self.maps[i].enabled = on;
        Ok(())
    }

    /// `block-dirty-bitmap-merge`: every byte dirty in `source` becomes
    /// dirty in `target` (granularities may differ). `target` must be active.
    pub fn merge(&mut self, target: &str, source: &str) -> Result<(), BitmapError> {
        let s = self.index(source)?;
        let t = self.index(target)?;
        self.writable(target)?;
        if s == t {
            return Ok(());
        }
        let (src, dst) = if s < t {
            let (a, b) = self.maps.split_at_mut(t);
            (&a[s], &mut b[0])
        } else {
            let (a, b) = self.maps.split_at_mut(s);
            (&b[0], &mut a[t])
        };
        let limit = dst.size;
        src.for_each_dirty(0, limit, &mut |off, len| {
            let len = len.min(limit.saturating_sub(off));
            // Cannot fail: clipped to the target's size above.
            let _ = dst.set_dirty(off, len);
        });
        Ok(())
    }

    /// Freezes `name` for a backup; writes meanwhile are recorded in a
    /// successor backed by `storage`.
    pub fn freeze(&mut self, name: &str, storage: S) -> Result<(), BitmapError> {
        let i = self.index(name)?;
        let bm = &mut self.maps[i];
        if bm.successor.is_some() {
            return Err(BitmapError::Frozen);
        }
        let succ = Cells::new(storage, bm.bits.len(), 0).ok_or(BitmapError::StorageTooSmall)?;
        bm.successor = Some(succ);
        Ok(())
    }

    /// Backup succeeded: the successor's bits become the bitmap and the old
    /// bits' storage is returned.
    pub fn abdicate(&mut self, name: &str) -> Result<S, BitmapError> {
        let i = self.index(name)?;
        let bm = &mut self.maps[i];
        let succ = bm.successor.take().ok_or(BitmapError::NotFound)?;
        Ok(core::mem::replace(&mut bm.bits, succ).into_storage())
    }

    /// Backup failed: the successor is merged back and its storage returned.
    pub fn reclaim(&mut self, name: &str) -> Result<S, BitmapError> {
        let i = self.index(name)?;
        let bm = &mut self.maps[i];
        let succ = bm.successor.take().ok_or(BitmapError::NotFound)?;
        bm.bits.set_where(&succ, 1);
        Ok(succ.into_storage())
    }

    /// Records a write or write-zeroes in every recording bitmap. Ranges
    /// past a bitmap's end are ignored for that bitmap.
    pub fn mark(&mut self, offset: u64, length: u64) {
        for bm in self.maps.iter_mut() {
            bm.record(offset, length);
        }
    }

    /// The bitmap called `name`.
    pub fn get(&self, name: &str) -> Option<&DirtyBitmap<S>> {
        self.maps.iter().find(|m| m.name() == name)
    }

    /// Mutable access, e.g. for a backup's [`DirtyBitmap::reset`].
    pub fn get_mut(&mut self, name: &str) -> Option<&mut DirtyBitmap<S>> {
        self.maps.iter_mut().find(|m| m.name() == name)
    }

    /// The bitmap exported as metadata context `context`
    /// (`qemu:dirty-bitmap:NAME`).
    pub fn find_context(&self, context: &str) -> Option<&DirtyBitmap<S>> {
        self.get(context.strip_prefix(CONTEXT_PREFIX)?)
    }

    /// All bitmaps, in creation order.
    pub fn iter(&self) -> impl Iterator<Item = &DirtyBitmap<S>> {
        self.maps.iter()
    }
}

#[cfg(feature = "alloc")]
impl<const N: usize> BitmapSet<alloc::vec::Vec<u64>, N> {
    /// [`add`](Self::add) with heap storage of the right size.
    pub fn add_vec(
        &mut self,
        name: &str,
        size: u64,
        granularity: Option<u32>,
    ) -> Result<(), BitmapError> {
        let g = granularity.unwrap_or(DEFAULT_GRANULARITY);
        let words = DirtyBitmap::<alloc::vec::Vec<u64>>::words_needed(size, g)
            .ok_or(BitmapError::StorageTooSmall)?;
        let v = super::cells::try_zeroed(words).ok_or(BitmapError::StorageTooSmall)?;
        self.add(name, v, size, granularity)
    }

    /// [`freeze`](Self::freeze) with heap storage for the successor.
    pub fn freeze_vec(&mut self, name: &str) -> Result<(), BitmapError> {
        let bm = self.get(name).ok_or(BitmapError::NotFound)?;
        let words = DirtyBitmap::<alloc::vec::Vec<u64>>::words_needed(bm.size, bm.granularity)
            .ok_or(BitmapError::StorageTooSmall)?;
        let v = super::cells::try_zeroed(words).ok_or(BitmapError::StorageTooSmall)?;
        self.freeze(name, v)
    }
}
