//! Refcounts and cluster allocation over the refcount block cache.
//!
//! The allocator finds free clusters the way QEMU's `alloc_clusters_noref`
//! does: a scan from a free-cluster hint through the refcount blocks. A
//! missing refcount block (table entry 0) means every cluster it would
//! describe is free; when an allocation lands there, a new block is created
//! in the first free cluster of its own range, so that it describes itself
//! (QEMU's "self-describing" refcount blocks). When the scan passes the end
//! of the refcount table, the table grows (see [`super::write`]).

use super::error::{Meta, Qcow2Error};
use super::image::{Need, Qcow2};
use super::layout::MAX_HOST_OFFSET;

/// Why an internal planning function stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The caller must load or flush first.
    Need(Need),
    /// The refcount table must grow before clusters past its end exist.
    Grow,
    /// Refused.
    Err(Qcow2Error),
    /// Write-zeroes must write zeroes up to this guest offset (a partial
    /// compressed cluster) instead of changing metadata.
    WriteZeroes(u64),
}

impl From<Qcow2Error> for Stop {
    fn from(e: Qcow2Error) -> Self {
        Stop::Err(e)
    }
}

impl From<Need> for Stop {
    fn from(n: Need) -> Self {
        Stop::Need(n)
    }
}

impl<S: AsRef<[u64]> + AsMut<[u64]>> Qcow2<S> {
    /// Refcount block slot for host cluster index `k`, `None` if the block
    /// does not exist (all its refcounts are 0). `Stop::Grow` past the table.
    pub(crate) fn refblock_slot(&mut self, k: u64) -> Result<Option<usize>, Stop> {
        let ti = k >> self.lay.refblock_bits();
        if ti >= self.rt_len as u64 {
            return Err(Stop::Grow);
        }
        let off = self.lay.decode_reftable(self.rt_entry(ti), ti)?;
        if off == 0 {
            return Ok(None);
        }
        self.check_meta_cluster(Meta::RefcountBlock, off)?;
        Ok(Some(self.slot_for(false, off)?))
    }

    /// Refcount of host cluster index `k`.
    pub(crate) fn refcount(&mut self, k: u64) -> Result<u64, Stop> {
        match self.refblock_slot(k) {
            Err(Stop::Grow) => Ok(0),
            Err(e) => Err(e),
            Ok(None) => Ok(0),
            Ok(Some(slot)) => {
                let r = self.rbc.range(slot);
                let i = k & ((1 << self.lay.refblock_bits()) - 1);
                Ok(self.lay.refcount_get(&self.words.as_ref()[r], i))
            }
        }
    }

    /// Adds `delta` (+1 or -1) to the refcount of cluster `k`, whose block
    /// must be cached (the caller checked with [`refcount`](Self::refcount)).
    /// Returns the new value.
    pub(crate) fn refcount_add(&mut self, k: u64, delta: i8) -> Result<u64, Stop> {
        let slot = self
            .refblock_slot(k)?
            .ok_or(Stop::Err(Qcow2Error::RefcountUnderflow {
                offset: k << self.lay.cluster_bits,
            }))?;
        let r = self.rbc.range(slot);
        let i = k & ((1 << self.lay.refblock_bits()) - 1);
        let lay = self.lay;
        let cur = lay.refcount_get(&self.words.as_ref()[r.clone()], i);
        let new = if delta > 0 {
            if cur >= lay.refcount_max() {
                return Err(Stop::Err(Qcow2Error::RefcountOverflow {
                    offset: k << lay.cluster_bits,
                }));
            }
            cur + 1
        } else {
            if cur == 0 {
                return Err(Stop::Err(Qcow2Error::RefcountUnderflow {
                    offset: k << lay.cluster_bits,
                }));
            }
            cur - 1
        };
        let geom = self.rbc;
        let w = self.words.as_mut();
        lay.refcount_set(&mut w[r], i, new);
        geom.set_dirty(w, slot, true);
        Ok(new)
    }

    /// Creates the missing refcount block for table index `ti`, placed in
    /// the first cluster of its own range that no fixed metadata uses, with
    /// its own refcount set. Returns its slot.
    fn create_refblock(&mut self, ti: u64) -> Result<usize, Stop> {
        let rbb = self.lay.refblock_bits();
        let cb = self.lay.cluster_bits;
        let first = ti << rbb;
        let n = 1u64 << rbb;
        let geom = self.rbc;
        let slot = geom
            .victim(self.words.as_ref())
            .ok_or(Stop::Need(Need::Flush))?;
        // Bounded by the block's range.
        let mut pick = None;
        for k in first..first + n {
            let off = k << cb;
            if off == 0 || off > MAX_HOST_OFFSET {
                continue;
            }
            // Not a cluster waiting in the free queue (see find_free).
            if self.overlap_check(off, off + (1 << cb)).is_ok()
                && self.pending_free_in(k, 1).is_none()
            {
                pick = Some(k);
                break;
            }
        }
        let k = pick.ok_or(Stop::Err(Qcow2Error::NoSpace))?;
        let off = k << cb;
        let clock = self.tick();
        let lay = self.lay;
        let w = self.words.as_mut();
        geom.assign(w, slot, off, clock);
        let r = geom.range(slot);
        w[r.clone()].fill(0);
        lay.refcount_set(&mut w[r], k - first, 1);
        geom.set_dirty(w, slot, true);
        let idx = ti as usize;
        w[self.rt_at + idx] = off;
        self.rt_used = self.rt_used.max(idx + 1);
        self.rt_dirty = (self.rt_dirty.0.min(idx), self.rt_dirty.1.max(idx + 1));
        self.file_end = self.file_end.max(off + (1 << cb));
        Ok(slot)
    }

    /// Finds up to `want` contiguous free clusters inside one refcount
    /// block (creating the block if missing), without claiming them.
    /// Returns `(first cluster index, count)`.
    pub(crate) fn find_free(&mut self, want: u64) -> Result<(u64, u64), Stop> {
        let rbb = self.lay.refblock_bits();
        let per = 1u64 << rbb;
        let cb = self.lay.cluster_bits;
        let mut k = self.free_hint.max(1);
        // Each iteration either returns or moves `k` forward by at least
        // one cluster; a block that is not cached ends the call with a Need.
        loop {
            if (k << cb) > MAX_HOST_OFFSET {
                return Err(Stop::Err(Qcow2Error::NoSpace));
            }
            let ti = k >> rbb;
            let block_end = (ti + 1) << rbb;
            let slot = match self.refblock_slot(k)? {
                Some(s) => s,
                None => self.create_refblock(ti)?,
            };
            let r = self.rbc.range(slot);
            let lay = self.lay;
            let words = &self.words.as_ref()[r];
            // First free cluster in this block at or after k.
            let mut i = k & (per - 1);
            while i < per && lay.refcount_get(words, i) != 0 {
                i += 1;
            }
            if i == per {
                k = block_end;
                self.free_hint = k;
                continue;
            }
            let start = (ti << rbb) + i;
            let mut n = 1;
            while n < want && i + n < per && lay.refcount_get(words, i + n) == 0 {
                n += 1;
            }
            // A cluster waiting in the free queue is still referenced by
            // the on-disk L2/L1 until the change dropping it is durable;
            // with a sound image its refcount is not 0 yet. Only a corrupt
            // image (a live table or data cluster counted 0) gets here, and
            // claiming it would let the queued decrement later free the new
            // owner. QEMU frees at once and refuses the underflow, so the
            // cluster is never handed out twice: skip it the same way.
            if let Some(p) = self.pending_free_in(start, n) {
                if p == start {
                    k = start + 1;
                    continue;
                }
                n = p - start;
            }
            let s_off = start << cb;
            let e_off = (start + n) << cb;
            if let Err(e) = self.overlap_check(s_off, e_off) {
                // A free refcount over live metadata: the image is corrupt
                // (QEMU's pre-write overlap check refuses the same write).
                return Err(Stop::Err(e));
            }
            return Ok((start, n));
        }
    }

    /// Claims clusters `[start, start + n)` found by [`find_free`]: sets
    /// their refcounts to 1 (their block is cached and dirty afterwards).
    pub(crate) fn claim(&mut self, start: u64, n: u64) -> Result<(), Stop> {
        for k in start..start + n {
            self.refcount_add(k, 1)?;
        }
        let cb = self.lay.cluster_bits;
        self.free_hint = start + n;
        self.file_end = self.file_end.max((start + n) << cb);
        Ok(())
    }

    /// Queues a refcount decrement of the clusters holding host bytes
    /// `[host, host + len)`, applied by a flush plan once the L2 change
    /// dropping them is on disk. Uses a slot reserved by the plan.
    pub(crate) fn queue_free(&mut self, host: u64, len: u64, discard: bool) {
        self.queue(host, len, discard, false);
    }

    /// [`queue_free`](Self::queue_free) for the cluster of an active L1 or
    /// L2 entry without `COPIED`. A consistent image counts such a cluster
    /// at least twice (`qemu-img check` reports refcount 1 without `COPIED`
    /// as an OFLAG_COPIED error), so the decrement is applied only while
    /// the count is 2 or more. Below that the image lied about the cluster:
    /// it was counted 0 and may have been handed to new data or a new
    /// table since, which the decrement would then free under its owner.
    /// The cluster leaks instead (QEMU's rule: leaks are allowed,
    /// corruption never).
    pub(crate) fn queue_shared_free(&mut self, host: u64, len: u64, discard: bool) {
        self.queue(host, len, discard, true);
    }

    fn queue(&mut self, host: u64, len: u64, discard: bool, shared: bool) {
        let cb = self.lay.cluster_bits;
        let first = host >> cb;
        let last = (host + len.max(1) - 1) >> cb;
        if self.frees_n < self.frees.len() {
            self.frees[self.frees_n] = super::image::PendingFree {
                host: first << cb,
                clusters: (last - first + 1) as u32,
                epoch: self.epoch + 1,
                discard,
                shared,
            };
            self.frees_n += 1;
        }
    }

    /// The first cluster of `[start, start + n)` (cluster indices) that a
    /// queued free covers.
    fn pending_free_in(&self, start: u64, n: u64) -> Option<u64> {
        let cb = self.lay.cluster_bits;
        self.frees[..self.frees_n]
            .iter()
            .filter_map(|f| {
                let a = f.host >> cb;
                let b = a + u64::from(f.clusters);
                (a < start + n && start < b).then(|| a.max(start))
            })
            .min()
    }

    /// Free-queue slots available to a new plan.
    pub(crate) fn frees_available(&self) -> usize {
        self.frees.len() - self.frees_n - self.frees_reserved
    }
}

#[cfg(test)]
mod tests {
    use super::super::create::{Create, Options};
    use super::super::header::HeaderArea;
    use super::super::image::{Config, Qcow2};
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn image(order: u32) -> Qcow2<Vec<u64>> {
        let c = Create::new(&Options {
            size: 1 << 20,
            refcount_order: order,
            ..Options::default()
        })
        .unwrap();
        let cs = c.cluster_size() as usize;
        let mut b = vec![0u8; c.clusters() as usize * cs];
        for i in 0..c.clusters() {
            c.cluster(i, &mut b[i as usize * cs..][..cs]).unwrap();
        }
        let area = HeaderArea::parse(&b).unwrap();
        let cfg = Config::default();
        let words = Qcow2::words_needed(&area, &cfg).unwrap();
        let mut q = Qcow2::open(area, b.len() as u64, &cfg, vec![0u64; words]).unwrap();
        while let Some(l) = q.open_need() {
            let s = l.offset as usize;
            q.install(l, &b[s..s + l.len as usize]).unwrap();
        }
        // Load the one refcount block.
        match q.refcount(0) {
            Err(Stop::Need(Need::Load(l))) => {
                let s = l.offset as usize;
                q.install(l, &b[s..s + l.len as usize]).unwrap();
            }
            other => panic!("{other:?}"),
        }
        q
    }

    #[test]
    fn refcount_overflow_is_refused_at_every_width() {
        for order in 0..=5u32 {
            let mut q = image(order);
            let max = q.lay.refcount_max();
            assert_eq!(q.refcount(0), Ok(1));
            // Raise cluster 0 to the maximum, then one more must fail.
            for _ in 1..max.min(70_000) {
                q.refcount_add(0, 1).unwrap();
            }
            if max <= 70_000 {
                assert_eq!(
                    q.refcount_add(0, 1),
                    Err(Stop::Err(Qcow2Error::RefcountOverflow { offset: 0 }))
                );
                assert_eq!(q.refcount(0), Ok(max));
            }
        }
        // 64-bit refcounts: set the maximum directly.
        let mut q = image(6);
        let slot = q.refblock_slot(0).unwrap().unwrap();
        let r = q.rbc.range(slot);
        let lay = q.lay;
        lay.refcount_set(&mut q.words[r], 0, u64::MAX);
        assert_eq!(
            q.refcount_add(0, 1),
            Err(Stop::Err(Qcow2Error::RefcountOverflow { offset: 0 }))
        );
    }

    #[test]
    fn refcount_underflow_is_refused() {
        let mut q = image(4);
        // Cluster 100 is free: dropping a reference is a double free.
        assert_eq!(q.refcount(100), Ok(0));
        assert_eq!(
            q.refcount_add(100, -1),
            Err(Stop::Err(Qcow2Error::RefcountUnderflow {
                offset: 100 << 16
            }))
        );
    }
}
