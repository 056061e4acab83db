//! A cache of metadata clusters (L2 tables or refcount blocks) in
//! caller-provided words, like QEMU's `Qcow2Cache`.
//!
//! Each slot holds one cluster, decoded to native `u64` words (big-endian
//! on disk), plus two words of bookkeeping: a tag (the cluster's host
//! offset, with flag bits in the low 9 bits that an aligned offset never
//! uses) and an LRU stamp. A slot is *dirty* when it differs from the disk,
//! *pinned* while a plan that will update it is in flight. Only clean,
//! unpinned slots are evicted: dirty ones leave only through a flush plan,
//! so the order in which metadata reaches the disk is always the flush
//! plan's (see the crash-ordering argument in the module docs).

const DIRTY: u64 = 1 << 0;
const VALID: u64 = 1 << 1;
/// Pin count in bits 2..=8.
const PIN_SHIFT: u32 = 2;
const PIN_MASK: u64 = 0x7f << PIN_SHIFT;
const FLAGS: u64 = 0x1ff;

/// Where one cache lives inside the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CacheGeom {
    /// First word of slot data.
    pub data_at: usize,
    /// First word of the bookkeeping (2 per slot).
    pub meta_at: usize,
    /// Number of slots.
    pub slots: usize,
    /// Words per slot (cluster size / 8).
    pub slot_words: usize,
}

impl CacheGeom {
    /// Words the cache occupies.
    pub(crate) fn words(slots: usize, slot_words: usize) -> Option<usize> {
        slots
            .checked_mul(slot_words)?
            .checked_add(slots.checked_mul(2)?)
    }

    /// Lays the cache out at `at`; returns it and the next free word.
    pub(crate) fn at(at: usize, slots: usize, slot_words: usize) -> (Self, usize) {
        let g = CacheGeom {
            data_at: at,
            meta_at: at + slots * slot_words,
            slots,
            slot_words,
        };
        (g, at + slots * slot_words + slots * 2)
    }

    fn tag(&self, w: &[u64], i: usize) -> u64 {
        w[self.meta_at + 2 * i]
    }

    fn set_tag(&self, w: &mut [u64], i: usize, t: u64) {
        w[self.meta_at + 2 * i] = t;
    }

    /// Empties every slot.
    pub(crate) fn clear(&self, w: &mut [u64]) {
        for i in 0..self.slots {
            self.set_tag(w, i, 0);
            w[self.meta_at + 2 * i + 1] = 0;
        }
    }

    /// The slot holding the cluster at `offset`.
    pub(crate) fn find(&self, w: &[u64], offset: u64) -> Option<usize> {
        (0..self.slots).find(|&i| {
            let t = self.tag(w, i);
            t & VALID != 0 && t & !FLAGS == offset
        })
    }

    /// Marks slot `i` used at `clock` (LRU).
    pub(crate) fn touch(&self, w: &mut [u64], i: usize, clock: u64) {
        w[self.meta_at + 2 * i + 1] = clock;
    }

    /// An empty slot, or the least recently used clean unpinned one.
    pub(crate) fn victim(&self, w: &[u64]) -> Option<usize> {
        let mut best: Option<(usize, u64)> = None;
        for i in 0..self.slots {
            let t = self.tag(w, i);
            if t & VALID == 0 {
                return Some(i);
            }
            if t & (DIRTY | PIN_MASK) != 0 {
                continue;
            }
            let stamp = w[self.meta_at + 2 * i + 1];
            if best.is_none_or(|(_, s)| stamp < s) {
                best = Some((i, stamp));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Claims slot `i` for the cluster at `offset` (clean, unpinned).
    pub(crate) fn assign(&self, w: &mut [u64], i: usize, offset: u64, clock: u64) {
        self.set_tag(w, i, offset | VALID);
        self.touch(w, i, clock);
    }

    /// Empties the slot caching `offset`, if there is one and it is clean
    /// and unpinned; `false` if it is dirty or pinned (still in use).
    pub(crate) fn forget(&self, w: &mut [u64], offset: u64) -> bool {
        match self.find(w, offset) {
            Some(i) if self.tag(w, i) & (DIRTY | PIN_MASK) != 0 => false,
            Some(i) => {
                self.set_tag(w, i, 0);
                true
            }
            None => true,
        }
    }

    /// Cluster offset held by slot `i`, if any.
    pub(crate) fn offset_of(&self, w: &[u64], i: usize) -> Option<u64> {
        let t = self.tag(w, i);
        (t & VALID != 0).then_some(t & !FLAGS)
    }

    pub(crate) fn is_dirty(&self, w: &[u64], i: usize) -> bool {
        self.tag(w, i) & DIRTY != 0
    }

    pub(crate) fn set_dirty(&self, w: &mut [u64], i: usize, dirty: bool) {
        let t = self.tag(w, i);
        self.set_tag(w, i, if dirty { t | DIRTY } else { t & !DIRTY });
    }

    /// Adds a pin; `false` if the count is saturated (too many plans in
    /// flight on one table).
    pub(crate) fn pin(&self, w: &mut [u64], i: usize) -> bool {
        let t = self.tag(w, i);
        if t & PIN_MASK == PIN_MASK {
            return false;
        }
        self.set_tag(w, i, t + (1 << PIN_SHIFT));
        true
    }

    pub(crate) fn unpin(&self, w: &mut [u64], i: usize) {
        let t = self.tag(w, i);
        if t & PIN_MASK != 0 {
            self.set_tag(w, i, t - (1 << PIN_SHIFT));
        }
    }

    /// Number of dirty slots.
    pub(crate) fn dirty_count(&self, w: &[u64]) -> usize {
        (0..self.slots)
            .filter(|&i| self.tag(w, i) & (VALID | DIRTY) == VALID | DIRTY)
            .count()
    }

    /// Word range of slot `i`'s data.
    pub(crate) fn range(&self, i: usize) -> core::ops::Range<usize> {
        let s = self.data_at + i * self.slot_words;
        s..s + self.slot_words
    }
}
