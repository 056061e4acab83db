//! Flush as a plan (dirty metadata written in crash-safe order) and
//! refcount table growth as a prerequisite plan; the bytes of each
//! metadata step.

use super::error::{Meta, Qcow2Error};
use super::header::put64;
use super::image::{Need, Qcow2};
use super::layout::MAX_REFTABLE_BYTES;
use super::plan::{Grow, MetaKind, MetaSrc, Plan, Planned, Sink, Step, Ticket, TicketKind};
use super::refcount::Stop;

impl<S: AsRef<[u64]> + AsMut<[u64]>> Qcow2<S> {
    /// Plans a flush: pending refcount decrements are applied, then dirty
    /// metadata is written in the order that keeps the image consistent
    /// after a crash at any step:
    ///
    /// 1. refcount blocks, then (after a barrier) refcount table entries
    ///    that point at new blocks;
    /// 2. barrier; L2 tables;
    /// 3. barrier; L1 entries; header;
    /// 4. a final barrier (the flush the caller asked for).
    ///
    /// Between this call and [`commit`](Self::commit) (or
    /// [`abort`](Self::abort)) the image accepts no other plan or commit.
    pub fn plan_flush(&mut self, sink: &mut Sink<'_>) -> Result<Plan, Qcow2Error> {
        if !self.is_ready() || self.flushing {
            return Err(Qcow2Error::Protocol);
        }
        if self.read_only {
            sink(Step::Flush);
            return Ok(Plan::Planned(Planned {
                covered: 0,
                ticket: Ticket {
                    kind: TicketKind::Nothing,
                },
            }));
        }
        let mut discards = [(0u64, 0u64); super::image::PENDING_FREES];
        let mut nd = 0;
        // Phase 0: apply decrements whose L2 change is durable.
        let mut i = 0;
        while i < self.frees_n {
            let f = self.frees[i];
            if f.epoch > self.epoch {
                i += 1;
                continue;
            }
            let cb = self.lay.cluster_bits;
            let k0 = f.host >> cb;
            // All blocks needed must be cached before changing anything.
            let mut ready = true;
            for k in k0..k0 + f.clusters as u64 {
                match self.refblock_slot(k) {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(Stop::Grow) => {}
                    Err(Stop::Need(Need::Load(l))) => return Ok(Plan::Need(Need::Load(l))),
                    Err(Stop::Need(Need::Flush)) => {
                        ready = false;
                        break;
                    }
                    Err(Stop::Err(e)) => return Err(e),
                    Err(Stop::WriteZeroes(_)) => return Err(Qcow2Error::Protocol),
                }
            }
            if !ready {
                i += 1;
                continue;
            }
            let mut zeroed = true;
            for k in k0..k0 + f.clusters as u64 {
                if f.shared {
                    // See queue_shared_free: below 2 the decrement could
                    // free a cluster claimed since by new data; leak it.
                    match self.refcount(k) {
                        Ok(n) if n >= 2 => {}
                        Ok(_) | Err(Stop::Grow) => {
                            zeroed = false;
                            continue;
                        }
                        Err(Stop::Err(e)) => return Err(e),
                        Err(_) => return Err(Qcow2Error::Protocol),
                    }
                }
                match self.refcount_add(k, -1) {
                    Ok(v) => zeroed &= v == 0,
                    // A cluster without a block has refcount 0 already:
                    // the image was inconsistent; leave it (a repair tool's
                    // job), never underflow.
                    Err(Stop::Err(Qcow2Error::RefcountUnderflow { .. })) => zeroed = false,
                    Err(Stop::Err(e)) => return Err(e),
                    Err(_) => zeroed = false,
                }
            }
            if f.discard && zeroed && nd < discards.len() {
                discards[nd] = (f.host, (f.clusters as u64) << cb);
                nd += 1;
            }
            if f.host >> cb < self.free_hint {
                self.free_hint = f.host >> cb;
            }
            self.frees_n -= 1;
            self.frees[i] = self.frees[self.frees_n];
        }
        let c = self.lay.cluster_size();
        let w = self.words.as_ref();
        let mut any = false;
        for s in 0..self.rbc.slots {
            if self.rbc.is_dirty(w, s) {
                if let Some(off) = self.rbc.offset_of(w, s) {
                    sink(Step::Meta {
                        what: Meta::RefcountBlock,
                        host: off,
                        length: c,
                        src: MetaSrc {
                            kind: MetaKind::RefblockSlot,
                            a: s as u64,
                            b: 0,
                        },
                    });
                    any = true;
                }
            }
        }
        if self.rt_dirty.0 < self.rt_dirty.1 {
            if any {
                sink(Step::Flush);
            }
            let (lo, hi) = sector_range(self.rt_dirty, self.rt_len);
            sink(Step::Meta {
                what: Meta::RefcountTable,
                host: self.area.header.refcount_table_offset + lo as u64 * 8,
                length: (hi - lo) as u64 * 8,
                src: MetaSrc {
                    kind: MetaKind::Reftable,
                    a: lo as u64,
                    b: hi as u64,
                },
            });
            any = true;
        }
        let l2_dirty = self.l2c.dirty_count(w) > 0;
        // Barrier before the L2 tables: refcounts first (an L2 entry never
        // points at a cluster whose refcount is 0 on disk), and the data of
        // in-place writes that flip subcluster or zero bits first (an entry
        // never exposes data that is not there).
        if any || l2_dirty {
            sink(Step::Flush);
        }
        for &(host, length) in &discards[..nd] {
            sink(Step::Discard { host, length });
        }
        let mut any_l2 = false;
        for s in 0..self.l2c.slots {
            if self.l2c.is_dirty(w, s) {
                if let Some(off) = self.l2c.offset_of(w, s) {
                    sink(Step::Meta {
                        what: Meta::L2Table,
                        host: off,
                        length: c,
                        src: MetaSrc {
                            kind: MetaKind::L2Slot,
                            a: s as u64,
                            b: 0,
                        },
                    });
                    any_l2 = true;
                }
            }
        }
        if self.l1_dirty.0 < self.l1_dirty.1 {
            if any_l2 {
                sink(Step::Flush);
            }
            let (lo, hi) = sector_range(self.l1_dirty, self.l1_len);
            sink(Step::Meta {
                what: Meta::L1Table,
                host: self.area.header.l1_table_offset + lo as u64 * 8,
                length: (hi - lo) as u64 * 8,
                src: MetaSrc {
                    kind: MetaKind::L1,
                    a: lo as u64,
                    b: hi as u64,
                },
            });
        }
        if self.header_dirty {
            sink(Step::Flush);
            sink(Step::Meta {
                what: Meta::Header,
                host: 0,
                length: c,
                src: MetaSrc {
                    kind: MetaKind::Cluster0,
                    a: 0,
                    b: 0,
                },
            });
        }
        sink(Step::Flush);
        self.flushing = true;
        Ok(Plan::Planned(Planned {
            covered: 0,
            ticket: Ticket {
                kind: TicketKind::Flush,
            },
        }))
    }

    pub(super) fn commit_flush(&mut self) -> Result<(), Qcow2Error> {
        let w = self.words.as_mut();
        for s in 0..self.rbc.slots {
            self.rbc.set_dirty(w, s, false);
        }
        for s in 0..self.l2c.slots {
            self.l2c.set_dirty(w, s, false);
        }
        self.l1_dirty = (usize::MAX, 0);
        self.rt_dirty = (usize::MAX, 0);
        self.header_dirty = false;
        self.epoch += 1;
        self.flushing = false;
        Ok(())
    }

    /// Plans growth of the refcount table: a new area at the first cluster
    /// the table does not cover holds new refcount blocks (describing the
    /// area itself) and the new table (old entries plus the new blocks).
    /// Steps: blocks and table, barrier, header fields, barrier. The old
    /// table's clusters are freed afterwards (a crash first leaks them).
    pub(super) fn plan_grow(&mut self, sink: &mut Sink<'_>) -> Result<Plan, Qcow2Error> {
        if self.rbc.dirty_count(self.words.as_ref()) > 0 || self.rt_dirty.0 < self.rt_dirty.1 {
            // The new table copies the old entries: they must be durable.
            return Ok(Plan::Need(Need::Flush));
        }
        if self.frees_available() == 0 {
            return Ok(Plan::Need(Need::Flush));
        }
        let lay = self.lay;
        let c = lay.cluster_size();
        let per = 1u64 << lay.refblock_bits();
        let old = self.rt_len as u64;
        let area = old << lay.refblock_bits();
        let limit = (self.rt_cap as u64 * 8).min(MAX_REFTABLE_BYTES);
        let mut blocks = 1u64;
        let mut table;
        let mut new_len;
        // Converges in a few rounds: each block covers `per` >= 64 clusters.
        loop {
            new_len = (old + blocks).max(old + old / 2);
            table = (new_len * 8).div_ceil(c);
            new_len = table * c / 8;
            if blocks * per >= blocks + table {
                break;
            }
            blocks += 1;
        }
        if new_len * 8 > limit
            || ((area + blocks + table) << lay.cluster_bits) > super::layout::MAX_HOST_OFFSET
        {
            return Err(Qcow2Error::NoSpace);
        }
        self.grow = Some(Grow {
            area,
            blocks,
            table_clusters: table,
            new_len,
        });
        let cb = lay.cluster_bits;
        for b in 0..blocks {
            sink(Step::Meta {
                what: Meta::RefcountBlock,
                host: (area + b) << cb,
                length: c,
                src: MetaSrc {
                    kind: MetaKind::GrowBlock,
                    a: b,
                    b: 0,
                },
            });
        }
        sink(Step::Meta {
            what: Meta::RefcountTable,
            host: (area + blocks) << cb,
            length: table * c,
            src: MetaSrc {
                kind: MetaKind::GrowTable,
                a: 0,
                b: 0,
            },
        });
        sink(Step::Flush);
        sink(Step::Meta {
            what: Meta::Header,
            host: 48,
            length: 12,
            src: MetaSrc {
                kind: MetaKind::HeaderReftable,
                a: 0,
                b: 0,
            },
        });
        sink(Step::Flush);
        self.flushing = true;
        Ok(Plan::Planned(Planned {
            covered: 0,
            ticket: Ticket {
                kind: TicketKind::Grow,
            },
        }))
    }

    pub(super) fn commit_grow(&mut self) -> Result<(), Qcow2Error> {
        self.flushing = false;
        let g = self.grow.take().ok_or(Qcow2Error::Protocol)?;
        let lay = self.lay;
        let cb = lay.cluster_bits;
        let old_off = self.area.header.refcount_table_offset;
        let old_clusters = self.area.header.refcount_table_clusters as u64;
        let old = self.rt_len;
        let w = self.words.as_mut();
        for b in 0..g.blocks as usize {
            w[self.rt_at + old + b] = (g.area + b as u64) << cb;
        }
        for e in &mut w[self.rt_at + old + g.blocks as usize..self.rt_at + g.new_len as usize] {
            *e = 0;
        }
        self.rt_len = g.new_len as usize;
        self.rt_used = old + g.blocks as usize;
        self.area.header.refcount_table_offset = (g.area + g.blocks) << cb;
        self.area.header.refcount_table_clusters = g.table_clusters as u32;
        self.file_end = self
            .file_end
            .max((g.area + g.blocks + g.table_clusters) << cb);
        // The old table is unreferenced now that the header is durable.
        self.queue_free(old_off, old_clusters << cb, false);
        if let Some(f) = self.frees[..self.frees_n].last_mut() {
            f.epoch = self.epoch;
        }
        self.free_hint = self.free_hint.max(1);
        Ok(())
    }

    /// The bytes of a [`Step::Meta`], big-endian as on disk, into `out`
    /// (at least the step's `length`).
    pub fn meta_bytes(&self, src: &MetaSrc, out: &mut [u8]) -> Result<usize, Qcow2Error> {
        let w = self.words.as_ref();
        let put_words = |words: &[u64], out: &mut [u8]| -> Result<usize, Qcow2Error> {
            let n = words.len() * 8;
            let out = out.get_mut(..n).ok_or(Qcow2Error::Protocol)?;
            for (i, v) in words.iter().enumerate() {
                out[i * 8..i * 8 + 8].copy_from_slice(&v.to_be_bytes());
            }
            Ok(n)
        };
        match src.kind {
            MetaKind::L2Slot => put_words(&w[self.l2c.range(src.a as usize)], out),
            MetaKind::RefblockSlot => put_words(&w[self.rbc.range(src.a as usize)], out),
            MetaKind::L1 => put_words(
                &w[self.l1_at + src.a as usize..self.l1_at + src.b as usize],
                out,
            ),
            MetaKind::Reftable => put_words(
                &w[self.rt_at + src.a as usize..self.rt_at + src.b as usize],
                out,
            ),
            MetaKind::HeaderFeatures => {
                let h = &self.area.header;
                let out = out.get_mut(..24).ok_or(Qcow2Error::Protocol)?;
                put64(out, 0, h.incompatible_features).ok_or(Qcow2Error::Protocol)?;
                put64(out, 8, h.compatible_features).ok_or(Qcow2Error::Protocol)?;
                put64(out, 16, h.autoclear_features).ok_or(Qcow2Error::Protocol)?;
                Ok(24)
            }
            MetaKind::HeaderReftable => {
                let g = self.grow.ok_or(Qcow2Error::Protocol)?;
                let out = out.get_mut(..12).ok_or(Qcow2Error::Protocol)?;
                put64(out, 0, (g.area + g.blocks) << self.lay.cluster_bits)
                    .ok_or(Qcow2Error::Protocol)?;
                out[8..12].copy_from_slice(&(g.table_clusters as u32).to_be_bytes());
                Ok(12)
            }
            MetaKind::Cluster0 => {
                let c = self.lay.cluster_size() as usize;
                let out = out.get_mut(..c).ok_or(Qcow2Error::Protocol)?;
                let mut a = self.area.clone();
                a.emit(out)?;
                Ok(c)
            }
            MetaKind::GrowBlock => {
                let g = self.grow.ok_or(Qcow2Error::Protocol)?;
                let c = self.lay.cluster_size() as usize;
                let out = out.get_mut(..c).ok_or(Qcow2Error::Protocol)?;
                out.fill(0);
                let per = 1u64 << self.lay.refblock_bits();
                let b = src.a;
                let range_start = (self.rt_len as u64 + b) * per;
                let area_end = g.area + g.blocks + g.table_clusters;
                // Refcount 1 for every area cluster in this block's range.
                let mut words = [0u64; 1];
                for k in range_start.max(g.area)..(range_start + per).min(area_end) {
                    let i = k - range_start;
                    let bits = self.lay.refcount_bits() as u64;
                    let bit = i * bits;
                    let byte = (bit / 8) as usize;
                    // Build via the word accessor on an 8-byte window.
                    let wi = byte / 8;
                    let mut v =
                        u64::from_be_bytes(out[wi * 8..wi * 8 + 8].try_into().unwrap_or([0; 8]));
                    words[0] = v;
                    self.lay.refcount_set(&mut words, i % (64 / bits), 1);
                    v = words[0];
                    out[wi * 8..wi * 8 + 8].copy_from_slice(&v.to_be_bytes());
                }
                Ok(c)
            }
            MetaKind::GrowTable => {
                let g = self.grow.ok_or(Qcow2Error::Protocol)?;
                let n = (g.table_clusters * self.lay.cluster_size()) as usize;
                let out = out.get_mut(..n).ok_or(Qcow2Error::Protocol)?;
                out.fill(0);
                for (i, v) in w[self.rt_at..self.rt_at + self.rt_len].iter().enumerate() {
                    out[i * 8..i * 8 + 8].copy_from_slice(&v.to_be_bytes());
                }
                for b in 0..g.blocks as usize {
                    let i = self.rt_len + b;
                    let v = (g.area + b as u64) << self.lay.cluster_bits;
                    out[i * 8..i * 8 + 8].copy_from_slice(&v.to_be_bytes());
                }
                Ok(n)
            }
        }
    }
}

/// Dirty entry range rounded out to 512-byte sectors (64 entries).
fn sector_range(d: (usize, usize), len: usize) -> (usize, usize) {
    let lo = d.0 & !63;
    let hi = ((d.1 + 63) & !63).min(len);
    (lo, hi)
}
