//! Copy-on-write overlay: a writable top over a read-only base of the same
//! size, tracked per cluster (`--cow`).
//!
//! Each cluster is *unallocated* (reads come from the base), *data* (the top
//! holds it) or *zero* (reads as zeroes; hides the base without needing top
//! storage). The overlay never touches data itself: `plan_*` names the steps
//! (read top, read base, copy base → top, write top, …) and `commit_*`
//! updates the cluster map once those steps succeeded. Steps of one plan
//! touch disjoint byte ranges, so they may run in any order or concurrently;
//! overlapping requests must be serialised by the frontend, as in QEMU.
//!
//! A partial write into an unallocated cluster first copies the rest of the
//! cluster up from the base (copy-on-write); a partial write into a zero
//! cluster first zeroes the rest in the top (its top storage may hold stale
//! bytes). Trim and write-zeroes turn fully covered clusters into zero
//! clusters, so the base never shows through again.
//!
//! `qemu:allocation-depth` answers as QEMU does: 0 unallocated anywhere, 1 in
//! the top, 2.. from the base (the base's own depth plus one).
//!
//! ```
//! use blockwire_core::block::overlay::{Overlay, ReadStep, Source, WriteStep};
//!
//! let mut words = [0u64; 1];
//! let mut ov = Overlay::new(&mut words[..], 4096, 1024).unwrap();
//! let mut steps = [None; 4];
//! let mut n = 0;
//! ov.plan_write(1500, 100, &mut |s| { steps[n] = Some(s); n += 1; true }).unwrap();
//! assert_eq!(steps[0], Some(WriteStep::CopyUp { offset: 1024, length: 476 }));
//! assert_eq!(steps[1], Some(WriteStep::CopyUp { offset: 1600, length: 448 }));
//! assert_eq!(steps[2], Some(WriteStep::WriteTop { offset: 1500, length: 100, buf_offset: 0 }));
//! ov.commit_write(1500, 100).unwrap();
//! let mut reads = [None; 4];
//! let mut n = 0;
//! ov.plan_read(0, 4096, &mut |s| { reads[n] = Some(s); n += 1; true }).unwrap();
//! assert_eq!(reads[1], Some(ReadStep { source: Source::Top, offset: 1024, length: 1024, buf_offset: 1024 }));
//! ```

use super::Extent;
use super::alloc_map::granule_span;
use super::cells::Cells;
use super::contract::{
    BlockError, ExtentEmitter, ExtentSink, STATE_HOLE, STATE_ZERO, StatusQuery, StatusSummary,
    check_range,
};

/// State of one overlay cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ClusterState {
    /// Not in the top: reads come from the base.
    Unallocated = 0,
    /// Data in the top.
    Data = 1,
    /// Reads as zeroes; the base is hidden.
    Zero = 2,
}

impl ClusterState {
    const fn from_bits(v: u8) -> Self {
        match v {
            1 => ClusterState::Data,
            2 => ClusterState::Zero,
            _ => ClusterState::Unallocated,
        }
    }
}

/// Where a piece of a read comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// Read the top at the same offset.
    Top,
    /// Read the base at the same offset.
    Base,
    /// Fill the buffer with zeroes; no I/O.
    Zeroes,
}

/// One piece of a read plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReadStep {
    /// Which layer supplies these bytes.
    pub source: Source,
    /// Disk offset (identical in both layers).
    pub offset: u64,
    /// Byte count.
    pub length: u64,
    /// Where in the request's buffer the bytes go.
    pub buf_offset: u64,
}

/// One step of a write, write-zeroes or trim plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteStep {
    /// Read the base at this range and write it to the top at the same range.
    CopyUp {
        /// Disk offset.
        offset: u64,
        /// Byte count.
        length: u64,
    },
    /// Write zeroes to the top at this range.
    ZeroTop {
        /// Disk offset.
        offset: u64,
        /// Byte count.
        length: u64,
    },
    /// Write the request's payload, from `buf_offset`, to the top.
    WriteTop {
        /// Disk offset.
        offset: u64,
        /// Byte count.
        length: u64,
        /// Offset within the request's payload.
        buf_offset: u64,
    },
    /// Optional: the top's storage for this range may be released.
    DiscardTop {
        /// Disk offset.
        offset: u64,
        /// Byte count.
        length: u64,
    },
}

/// Cluster map of a copy-on-write overlay over caller-provided words.
#[derive(Clone, Debug)]
pub struct Overlay<S> {
    cells: Cells<S, 2>,
    size: u64,
    cluster: u64,
}

type StepSink<'a> = dyn FnMut(WriteStep) -> bool + 'a;

impl<S> Overlay<S> {
    /// Words of storage for a `size`-byte disk with `cluster`-byte clusters.
    pub fn words_needed(size: u64, cluster: u64) -> Option<usize> {
        if !cluster.is_power_of_two() {
            return None;
        }
        Cells::<S, 2>::words_for(size.div_ceil(cluster))
    }

    /// Disk size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Cluster size.
    pub fn cluster_size(&self) -> u64 {
        self.cluster
    }
}

impl<S: AsRef<[u64]> + AsMut<[u64]>> Overlay<S> {
    /// An empty overlay (everything from the base). `cluster` must be a
    /// power of two.
    pub fn new(storage: S, size: u64, cluster: u64) -> Result<Self, BlockError> {
        if !cluster.is_power_of_two() {
            return Err(BlockError::Invalid);
        }
        let cells =
            Cells::new(storage, size.div_ceil(cluster), 0).ok_or(BlockError::StorageTooSmall)?;
        Ok(Self {
            cells,
            size,
            cluster,
        })
    }

    /// State of the cluster holding `offset`.
    pub fn state_at(&self, offset: u64) -> Option<ClusterState> {
        (offset < self.size).then(|| ClusterState::from_bits(self.cells.get(offset / self.cluster)))
    }

    fn cluster_range(&self, c: u64) -> (u64, u64) {
        let start = c * self.cluster;
        (start, start.saturating_add(self.cluster).min(self.size))
    }

    /// Splits `[offset, end)` into the pieces of the read and where each comes from.
    pub fn plan_read(
        &self,
        offset: u64,
        length: u64,
        sink: &mut dyn FnMut(ReadStep) -> bool,
    ) -> Result<(), BlockError> {
        let end = check_range(offset, length, self.size)?;
        let mut pos = offset;
        self.cells
            .walk_bytes(self.cluster, offset, end, &mut |len, v| {
                let source = match ClusterState::from_bits(v) {
                    ClusterState::Unallocated => Source::Base,
                    ClusterState::Data => Source::Top,
                    ClusterState::Zero => Source::Zeroes,
                };
                let step = ReadStep {
                    source,
                    offset: pos,
                    length: len,
                    buf_offset: pos - offset,
                };
                pos += len;
                sink(step)
            });
        Ok(())
    }

    /// The (at most two) clusters `[offset, end)` touches without covering.
    fn partials(&self, offset: u64, end: u64) -> [Option<u64>; 2] {
        let (first, last, ff, fl) = granule_span(offset, end, self.cluster, self.size);
        let partial = |c: u64| c < ff || c >= fl;
        let head = partial(first).then_some(first);
        let tail = (last - 1 != first && partial(last - 1)).then_some(last - 1);
        [head, tail]
    }

    /// For each partly covered cluster, makes its uncovered bytes valid in
    /// the top. Returns `false` if the sink stopped.
    fn fill_partials(&self, offset: u64, end: u64, sink: &mut StepSink<'_>) -> bool {
        for c in self.partials(offset, end).into_iter().flatten() {
            let (cs, ce) = self.cluster_range(c);
            let state = ClusterState::from_bits(self.cells.get(c));
            for (a, b) in [(cs, offset.max(cs).min(ce)), (end.max(cs).min(ce), ce)] {
                if a >= b {
                    continue;
                }
                let step = match state {
                    ClusterState::Data => continue,
                    ClusterState::Unallocated => WriteStep::CopyUp {
                        offset: a,
                        length: b - a,
                    },
                    ClusterState::Zero => WriteStep::ZeroTop {
                        offset: a,
                        length: b - a,
                    },
                };
                if !sink(step) {
                    return false;
                }
            }
        }
        true
    }

    /// Plans a data write of `[offset, offset+length)`.
    pub fn plan_write(
        &self,
        offset: u64,
        length: u64,
        sink: &mut StepSink<'_>,
    ) -> Result<(), BlockError> {
        let end = check_range(offset, length, self.size)?;
        if length > 0 && self.fill_partials(offset, end, sink) {
            sink(WriteStep::WriteTop {
                offset,
                length,
                buf_offset: 0,
            });
        }
        Ok(())
    }

    /// Records a completed write: every touched cluster now lives in the top.
    pub fn commit_write(&mut self, offset: u64, length: u64) -> Result<(), BlockError> {
        let end = check_range(offset, length, self.size)?;
        if length > 0 {
            let (first, last, _, _) = granule_span(offset, end, self.cluster, self.size);
            self.cells.fill(first, last, ClusterState::Data as u8);
        }
        Ok(())
    }

    fn discard_full_data(&self, offset: u64, end: u64, sink: &mut StepSink<'_>) -> bool {
        let (_, _, ff, fl) = granule_span(offset, end, self.cluster, self.size);
        let start = ff.saturating_mul(self.cluster);
        let stop = fl.saturating_mul(self.cluster).min(self.size);
        let mut pos = start;
        let mut go = true;
        self.cells
            .walk_bytes(self.cluster, start, stop, &mut |len, v| {
                if v == ClusterState::Data as u8 {
                    go = sink(WriteStep::DiscardTop {
                        offset: pos,
                        length: len,
                    });
                }
                pos += len;
                go
            });
        go
    }

    /// Plans a write-zeroes: covered bytes of partial clusters are zeroed in
    /// the top (after copy-up of their other bytes); full clusters become
    /// zero clusters on commit, their old top data may be discarded.
    pub fn plan_write_zeroes(
        &self,
        offset: u64,
        length: u64,
        sink: &mut StepSink<'_>,
    ) -> Result<(), BlockError> {
        let end = check_range(offset, length, self.size)?;
        if length == 0 || !self.fill_partials(offset, end, sink) {
            return Ok(());
        }
        for c in self.partials(offset, end).into_iter().flatten() {
            let (cs, ce) = self.cluster_range(c);
            let (a, b) = (offset.max(cs), end.min(ce));
            if ClusterState::from_bits(self.cells.get(c)) != ClusterState::Zero
                && !sink(WriteStep::ZeroTop {
                    offset: a,
                    length: b - a,
                })
            {
                return Ok(());
            }
        }
        self.discard_full_data(offset, end, sink);
        Ok(())
    }

    /// Records a completed write-zeroes.
    pub fn commit_write_zeroes(&mut self, offset: u64, length: u64) -> Result<(), BlockError> {
        let end = check_range(offset, length, self.size)?;
        if length == 0 {
            return Ok(());
        }
        let (_, _, ff, fl) = granule_span(offset, end, self.cluster, self.size);
        for c in self.partials(offset, end).into_iter().flatten() {
            if self.cells.get(c) == ClusterState::Unallocated as u8 {
                self.cells.fill(c, c + 1, ClusterState::Data as u8);
            }
        }
        self.cells.fill(ff, fl, ClusterState::Zero as u8);
        Ok(())
    }

    /// Plans a trim: partial clusters are left alone (trim is advisory);
    /// full clusters' top data may be discarded.
    pub fn plan_trim(
        &self,
        offset: u64,
        length: u64,
        sink: &mut StepSink<'_>,
    ) -> Result<(), BlockError> {
        let end = check_range(offset, length, self.size)?;
        if length > 0 {
            self.discard_full_data(offset, end, sink);
        }
        Ok(())
    }

    /// Records a completed trim: fully covered clusters become zero clusters.
    pub fn commit_trim(&mut self, offset: u64, length: u64) -> Result<(), BlockError> {
        let end = check_range(offset, length, self.size)?;
        if length > 0 {
            let (_, _, ff, fl) = granule_span(offset, end, self.cluster, self.size);
            self.cells.fill(ff, fl, ClusterState::Zero as u8);
        }
        Ok(())
    }

    /// Walks runs in `[offset, end)`; unallocated runs are described by
    /// repeatedly asking `base(offset, max_len)` for its first extent, and
    /// `map(state, base_flags)` gives the flags to report.
    fn status_with(
        &self,
        q: &StatusQuery,
        sink: &mut ExtentSink<'_>,
        base: &mut dyn FnMut(u64, u64) -> Extent,
        map: fn(ClusterState, u64) -> u64,
    ) -> Result<StatusSummary, BlockError> {
        let end = check_range(q.offset, q.length, self.size)?;
        let mut em = ExtentEmitter::new(q, sink);
        let mut pos = q.offset;
        self.cells
            .walk_bytes(self.cluster, q.offset, end, &mut |len, v| {
                let state = ClusterState::from_bits(v);
                if state != ClusterState::Unallocated {
                    pos += len;
                    return em.push(len, map(state, 0));
                }
                let run_end = pos + len;
                while pos < run_end {
                    let e = base(pos, run_end - pos);
                    // A base answering 0 bytes would loop forever; take the rest.
                    let n = if e.length == 0 {
                        run_end - pos
                    } else {
                        e.length.min(run_end - pos)
                    };
                    pos += n;
                    if !em.push(n, map(state, e.flags)) {
                        return false;
                    }
                }
                true
            });
        Ok(em.finish())
    }

    /// Answers `base:allocation`: top data is allocated (0), zero clusters
    /// are `HOLE | ZERO`, unallocated ranges report what `base(offset,
    /// max_len)` says about its first extent there.
    pub fn allocation_status(
        &self,
        q: &StatusQuery,
        base: &mut dyn FnMut(u64, u64) -> Extent,
        sink: &mut ExtentSink<'_>,
    ) -> Result<StatusSummary, BlockError> {
        self.status_with(q, sink, base, |s, b| match s {
            ClusterState::Data => 0,
            ClusterState::Zero => STATE_HOLE | STATE_ZERO,
            ClusterState::Unallocated => b,
        })
    }

    /// Answers `qemu:allocation-depth`: 1 for clusters in the top; for the
    /// rest, `base_depth(offset, max_len)` gives the base's own depth (its
    /// flags; 0 = unallocated there too, 1 = allocated in the base itself),
    /// reported plus one. For a plain image base, answer
    /// `Extent::new(max_len, 1)`.
    pub fn allocation_depth(
        &self,
        q: &StatusQuery,
        base_depth: &mut dyn FnMut(u64, u64) -> Extent,
        sink: &mut ExtentSink<'_>,
    ) -> Result<StatusSummary, BlockError> {
        self.status_with(q, sink, base_depth, |s, d| match s {
            ClusterState::Unallocated if d == 0 => 0,
            ClusterState::Unallocated => d.saturating_add(1),
            _ => 1,
        })
    }
}

#[cfg(feature = "alloc")]
impl Overlay<alloc::vec::Vec<u64>> {
    /// An overlay with heap storage.
    pub fn new_vec(size: u64, cluster: u64) -> Result<Self, BlockError> {
        let words = Self::words_needed(size, cluster).ok_or(BlockError::Invalid)?;
        let v = super::cells::try_zeroed(words).ok_or(BlockError::StorageTooSmall)?;
        Self::new(v, size, cluster)
    }
}
