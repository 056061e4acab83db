//! Packed fixed-width cells in caller-provided `u64` words.
//!
//! Shared by the allocation map (2 bits per granule), the overlay (2 bits per
//! cluster) and dirty bitmaps (1 bit per granule). Everything works a word at a
//! time where it can, because a query over a 2^63-byte disk may span millions
//! of granules and must not be linear in bytes.
//!
//! Cells are stored XORed with their initial value, so a fresh map is all
//! zero words whatever its initial state (a sparse disk starts `HoleZero`,
//! all ones). With storage from [`try_zeroed`], which asks the allocator for
//! zeroed memory (large blocks come straight from the kernel, untouched),
//! and [`Cells::new`] writing only words that are not already zero, a map's
//! memory becomes resident only where the disk was written: a 16 TiB RAM
//! disk's 64 MiB allocation map and a 32 MiB dirty bitmap cost nothing until
//! used, instead of being resident from the start.

/// `BITS`-wide cells (1 or 2) packed little-endian into `u64` words.
#[derive(Clone, Debug)]
pub(crate) struct Cells<S, const BITS: u32> {
    words: S,
    len: u64,
    /// [`Self::pattern`] of the initial value: what a stored zero word means.
    base: u64,
}

impl<S, const BITS: u32> Cells<S, BITS> {
    const PER_WORD: u64 = 64 / BITS as u64;
    const MASK: u64 = (1u64 << BITS) - 1;

    /// Words needed for `len` cells, or `None` when that does not fit `usize`.
    pub(crate) fn words_for(len: u64) -> Option<usize> {
        usize::try_from(len.div_ceil(Self::PER_WORD)).ok()
    }

    /// A word where every cell holds `v`.
    const fn pattern(v: u8) -> u64 {
        (v as u64 & Self::MASK).wrapping_mul(u64::MAX / Self::MASK)
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn into_storage(self) -> S {
        self.words
    }
}

impl<S: AsRef<[u64]> + AsMut<[u64]>, const BITS: u32> Cells<S, BITS> {
    /// Wraps `words`, all cells set to `init`; `None` if `words` is too short.
    pub(crate) fn new(mut words: S, len: u64, init: u8) -> Option<Self> {
        let need = Self::words_for(len)?;
        if words.as_ref().len() < need {
            return None;
        }
        // Only nonzero words are written: a zeroed heap block stays
        // untouched (not resident) until a cell in it changes.
        for w in words.as_mut().iter_mut() {
            if *w != 0 {
                *w = 0;
            }
        }
        Some(Self {
            words,
            len,
            base: Self::pattern(init),
        })
    }

    /// Word `i / PER_WORD` in value space (stored XOR base).
    fn word(&self, i: u64) -> u64 {
        // Indices below `len` always fit: `new` checked the storage length.
        self.words.as_ref()[(i / Self::PER_WORD) as usize] ^ self.base
    }

    /// Value of cell `i` (`i < len`).
    pub(crate) fn get(&self, i: u64) -> u8 {
        let shift = (i % Self::PER_WORD) * BITS as u64;
        ((self.word(i) >> shift) & Self::MASK) as u8
    }

    /// Sets cells `[start, end)` (clipped to `len`) to `v`.
    pub(crate) fn fill(&mut self, start: u64, end: u64, v: u8) {
        let end = end.min(self.len);
        let pat = Self::pattern(v) ^ self.base;
        let mut i = start;
        let words = self.words.as_mut();
        while i < end {
            let wi = (i / Self::PER_WORD) as usize;
            let first = i % Self::PER_WORD;
            let n = (Self::PER_WORD - first).min(end - i);
            let mask = if n == Self::PER_WORD {
                u64::MAX
            } else {
                ((1u64 << (n * BITS as u64)) - 1) << (first * BITS as u64)
            };
            words[wi] = (words[wi] & !mask) | (pat & mask);
            i += n;
        }
    }

    /// First index in `[start, end)` whose cell differs from cell `start`, or
    /// `end` (clipped to `len`) when the whole range is uniform.
    pub(crate) fn run_end(&self, start: u64, end: u64) -> u64 {
        let end = end.min(self.len);
        if start >= end {
            return end;
        }
        let pat = Self::pattern(self.get(start));
        let mut i = start;
        while i < end {
            let first = i % Self::PER_WORD;
            let n = (Self::PER_WORD - first).min(end - i);
            let diff = (self.word(i) ^ pat) >> (first * BITS as u64);
            let diff = if n == 64 / BITS as u64 {
                diff
            } else {
                diff & ((1u64 << (n * BITS as u64)) - 1)
            };
            if diff != 0 {
                return i + u64::from(diff.trailing_zeros()) / BITS as u64;
            }
            i += n;
        }
        end
    }

    /// Number of cells in `[start, end)` equal to `v`.
    pub(crate) fn count(&self, start: u64, end: u64, v: u8) -> u64 {
        let mut total = 0;
        let mut i = start;
        let end = end.min(self.len);
        while i < end {
            let next = self.run_end(i, end);
            if self.get(i) == v {
                total += next - i;
            }
            i = next;
        }
        total
    }

    /// Sets every cell whose value in `other` is nonzero to `v`.
    pub(crate) fn set_where(&mut self, other: &Cells<S, BITS>, v: u8) {
        let mut i = 0;
        let end = self.len.min(other.len);
        while i < end {
            let next = other.run_end(i, end);
            if other.get(i) != 0 {
                self.fill(i, next, v);
            }
            i = next;
        }
    }

    /// Calls `f(length, value)` for each run of equal cells covering bytes
    /// `[offset, end)` at `g` bytes per cell, until `f` returns `false`.
    pub(crate) fn walk_bytes(
        &self,
        g: u64,
        offset: u64,
        end: u64,
        f: &mut dyn FnMut(u64, u8) -> bool,
    ) {
        let mut pos = offset;
        while pos < end {
            let cell = pos / g;
            let run = self.run_end(cell, end.div_ceil(g));
            let run_end_byte = run.saturating_mul(g).min(end);
            if run_end_byte <= pos || !f(run_end_byte - pos, self.get(cell)) {
                return;
            }
            pos = run_end_byte;
        }
    }
}

/// A zeroed heap buffer of `words` words, `None` if the allocation fails
/// (a 2^63-byte disk at a fine granularity must not abort the process).
///
/// `vec![0; n]` asks the allocator for zeroed memory (`calloc`), which for
/// large blocks maps fresh pages without writing them, so the buffer is
/// not resident until used; `resize` would write every word. That form
/// aborts on failure, hence the fallible reservation first, released before
/// the real allocation (the forbidden-`unsafe` core has no fallible zeroed
/// allocation on stable Rust).
#[cfg(feature = "alloc")]
pub(crate) fn try_zeroed(words: usize) -> Option<alloc::vec::Vec<u64>> {
    let mut probe: alloc::vec::Vec<u64> = alloc::vec::Vec::new();
    probe.try_reserve_exact(words).ok()?;
    drop(probe);
    Some(alloc::vec![0u64; words])
}
