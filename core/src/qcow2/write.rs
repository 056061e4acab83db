//! Write, write-zeroes and discard as plans; flush as a plan; refcount
//! table growth and the first-write header update as prerequisite plans.
//!
//! A plan is a sequence of [`Step`]s emitted into a sink, plus a
//! [`Ticket`]. The caller carries the steps out in order (steps between two
//! [`Step::Flush`] barriers touch disjoint host ranges and may run
//! concurrently), then calls [`Qcow2::commit`] with the ticket, or
//! [`Qcow2::abort`] if a step failed. A plan may cover less than asked
//! ([`Planned::covered`]; zero for a prerequisite): the caller plans again
//! from where it ended.

use super::error::{Meta, Qcow2Error};
use super::header::{autoclear, put64};
use super::image::{Mapping, Need, Qcow2};
use super::layout::{ClusterMap, MAX_REFTABLE_BYTES, OFLAG_COPIED};
use super::refcount::Stop;

/// Where the bytes of a [`Step::Fill`] come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The backing file at the same guest offset (zeroes past its end).
    Backing,
    /// Zeroes.
    Zeroes,
    /// The image file at this host offset (of the step's first byte).
    Host(u64),
    /// A compressed cluster: inflate `len` bytes at `host` and take the
    /// bytes at `guest - cluster_start`.
    Compressed {
        /// Host offset of the deflate stream.
        host: u64,
        /// Its length.
        len: u64,
        /// Guest offset of the cluster.
        cluster_start: u64,
    },
}

/// Which metadata bytes a [`Step::Meta`] writes; get them with
/// [`Qcow2::meta_bytes`] when the step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaSrc {
    kind: MetaKind,
    a: u64,
    b: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MetaKind {
    L2Slot,
    RefblockSlot,
    L1,
    Reftable,
    HeaderFeatures,
    HeaderReftable,
    Cluster0,
    GrowBlock,
    GrowTable,
}

/// One step of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write the request's payload `[buf_offset, buf_offset + length)` to
    /// the image file at `host`.
    Data {
        /// Host offset.
        host: u64,
        /// Bytes.
        length: u64,
        /// Offset in the payload.
        buf_offset: u64,
    },
    /// Write guest bytes `[guest, guest + length)` taken from `source` to
    /// the image file at `host` (copy-on-write of the parts of a cluster
    /// the request does not cover, or zero fill).
    Fill {
        /// Host offset to write.
        host: u64,
        /// Guest offset of the first byte.
        guest: u64,
        /// Bytes.
        length: u64,
        /// Where the bytes come from.
        source: Source,
    },
    /// Write metadata: `length` bytes at `host`, from
    /// [`Qcow2::meta_bytes`]`(src)`.
    Meta {
        /// Which structure.
        what: Meta,
        /// Host offset.
        host: u64,
        /// Bytes.
        length: u64,
        /// Where to get them.
        src: MetaSrc,
    },
    /// Barrier: every earlier step must be complete and durable (fsync /
    /// FUA flush of the image file) before any later step starts.
    Flush,
    /// Optional: the host range is free and may be discarded (punched).
    Discard {
        /// Host offset.
        host: u64,
        /// Bytes.
        length: u64,
    },
}

/// What a plan was for; hand it back to [`Qcow2::commit`] or
/// [`Qcow2::abort`].
///
/// Not `Copy`: a plan is committed or aborted exactly once.
#[must_use = "a plan must be committed or aborted"]
#[derive(Debug, PartialEq, Eq)]
pub struct Ticket {
    kind: TicketKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TicketKind {
    /// First-write header update.
    Prepare,
    /// Reftable growth.
    Grow,
    /// Flush at an epoch.
    Flush,
    /// A write run: L2 updates at commit.
    Write(WriteRun),
    /// Full clusters become zero / discarded at commit.
    Zero(ZeroRun),
    /// Nothing to do at commit.
    Nothing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WriteRun {
    slot: usize,
    /// Guest byte range written (with fills).
    start: u64,
    end: u64,
    /// Host cluster offset of the run's first cluster when newly
    /// allocated, 0 for in-place.
    new_host: u64,
    /// Clusters in the run.
    clusters: u64,
    /// Free-queue slots reserved for commit.
    reserved: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ZeroRun {
    slot: usize,
    start: u64,
    end: u64,
    /// Free the host clusters (write-zeroes with unmap, discard).
    unmap: bool,
    /// Discard: unallocated result instead of zero when nothing shows
    /// through.
    discard: bool,
    /// Free-queue slots reserved for commit.
    reserved: usize,
}

/// A plan was made.
#[derive(Debug, PartialEq, Eq)]
pub struct Planned {
    /// Bytes of the request the plan covers (0: a prerequisite; plan again).
    pub covered: u64,
    /// Commit or abort with this.
    pub ticket: Ticket,
}

/// Answer of a planning call.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Plan {
    /// Steps were emitted.
    Planned(Planned),
    /// Nothing emitted: satisfy this, then plan again.
    Need(Need),
}

type Sink<'a> = dyn FnMut(Step) + 'a;

/// Growth of the refcount table in progress (between plan and commit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Grow {
    /// First cluster index of the new area (blocks, then table).
    pub area: u64,
    /// New refcount blocks.
    pub blocks: u64,
    /// Clusters of the new table.
    pub table_clusters: u64,
    /// Entries of the new table.
    pub new_len: u64,
}

impl<S: AsRef<[u64]> + AsMut<[u64]>> Qcow2<S> {
    fn writable(&self) -> Result<(), Qcow2Error> {
        if !self.is_ready() {
            return Err(Qcow2Error::Protocol);
        }
        if self.read_only {
            return Err(Qcow2Error::ReadOnly);
        }
        if self.flushing {
            return Err(Qcow2Error::Protocol);
        }
        Ok(())
    }

    fn finish(
        r: Result<Planned, Stop>,
        grow: &mut dyn FnMut() -> Result<Plan, Qcow2Error>,
    ) -> Result<Plan, Qcow2Error> {
        match r {
            Ok(p) => Ok(Plan::Planned(p)),
            Err(Stop::Need(n)) => Ok(Plan::Need(n)),
            Err(Stop::Err(e)) => Err(e),
            Err(Stop::Grow) => grow(),
            Err(Stop::WriteZeroes(_)) => Err(Qcow2Error::Protocol),
        }
    }

    /// First write after open: clear unknown autoclear bits (spec: "may
    /// only write to an image with unknown auto-clear features if it clears
    /// the respective bits first") and the bitmaps bit, since bitmaps
    /// recorded in the image do not see the writes that follow until they
    /// are loaded and stored again (QEMU marks them in use instead; a
    /// consumer then treats them as inconsistent either way).
    fn plan_prepare(&mut self, sink: &mut Sink<'_>) -> Option<Planned> {
        if self.write_ready {
            return None;
        }
        let h = &mut self.area.header;
        let keep = if self.bitmaps_tracked {
            autoclear::KNOWN
        } else {
            autoclear::KNOWN & !autoclear::BITMAPS
        };
        let new = h.autoclear_features & keep;
        if h.version < 3 || new == h.autoclear_features {
            self.write_ready = true;
            return None;
        }
        h.autoclear_features = new;
        sink(Step::Meta {
            what: Meta::Header,
            host: 72,
            length: 24,
            src: MetaSrc {
                kind: MetaKind::HeaderFeatures,
                a: 0,
                b: 0,
            },
        });
        sink(Step::Flush);
        Some(Planned {
            covered: 0,
            ticket: Ticket {
                kind: TicketKind::Prepare,
            },
        })
    }

    /// Plans a guest write of `[offset, offset + length)` whose payload the
    /// caller holds. Covers one run inside one L2 table: clusters written
    /// in place, or clusters newly allocated contiguously.
    pub fn plan_write(
        &mut self,
        offset: u64,
        length: u64,
        sink: &mut Sink<'_>,
    ) -> Result<Plan, Qcow2Error> {
        self.plan_write_inner(offset, length, false, sink)
    }

    fn plan_write_inner(
        &mut self,
        offset: u64,
        length: u64,
        zero_payload: bool,
        sink: &mut Sink<'_>,
    ) -> Result<Plan, Qcow2Error> {
        self.writable()?;
        if length == 0
            || crate::block::contract::check_range(offset, length, self.lay.size).is_err()
        {
            return Err(Qcow2Error::OutOfRange);
        }
        if let Some(p) = self.plan_prepare(sink) {
            return Ok(Plan::Planned(p));
        }
        let r = self.write_run(offset, length, zero_payload, sink);
        Self::finish(r, &mut || self.plan_grow(sink))
    }

    /// Loads (or creates, or copies on write) the L2 table for L1 index
    /// `l1i`; returns its pinned-able slot.
    fn l2_for_write(&mut self, l1i: u64) -> Result<usize, Stop> {
        let (off, copied) = self.l2_offset(l1i)?;
        let cb = self.lay.cluster_bits;
        if off != 0 && copied {
            return Ok(self.slot_for(true, off)?);
        }
        // New table, or copy on write of a shared one: needs a free slot
        // now (and the old table cached, to copy it).
        let src = if off != 0 {
            Some(self.slot_for(true, off)?)
        } else {
            None
        };
        let geom = self.l2c;
        let victim = geom.victim(self.words.as_ref());
        let slot = match victim {
            Some(v) if Some(v) != src => v,
            _ => return Err(Stop::Need(Need::Flush)),
        };
        if off != 0 && self.frees_available() == 0 {
            return Err(Stop::Need(Need::Flush));
        }
        let (k, _) = self.find_free(1)?;
        let new = k << cb;
        // A slot still caching the cluster just found holds a table no L1
        // entry references any more: the old side of an earlier
        // copy-on-write whose cluster a corrupt image counted once, freed
        // since. Left there, a lookup of the new table would find the
        // stale copy first and the flush would write both. Dirty or
        // pinned, it is still live and the refcount lied: refuse.
        if !geom.forget(self.words.as_mut(), new) {
            return Err(Stop::Err(Qcow2Error::Overlap {
                what: Meta::L2Table,
                with: Meta::L2Table,
                offset: new,
            }));
        }
        self.claim(k, 1)?;
        let clock = self.tick();
        let w = self.words.as_mut();
        geom.assign(w, slot, new, clock);
        let dst = geom.range(slot);
        match src {
            Some(s) => {
                let from = geom.range(s);
                w.copy_within(from, dst.start);
            }
            None => w[dst].fill(0),
        }
        geom.set_dirty(w, slot, true);
        let idx = self.l1_at + l1i as usize;
        w[idx] = new | OFLAG_COPIED;
        let li = l1i as usize;
        self.l1_used = self.l1_used.max(li + 1);
        self.l1_dirty = (self.l1_dirty.0.min(li), self.l1_dirty.1.max(li + 1));
        if off != 0 {
            // The old table loses the active L1's reference once the new L1
            // entry is durable.
            self.queue_free(off, 1 << cb, false);
        }
        Ok(slot)
    }

    /// Where the old bytes of guest `[g, g + len)` in a cluster mapped as
    /// `m` come from (subcluster `si`).
    fn old_source(&self, m: ClusterMap, si: u32, g: u64, cstart: u64) -> Source {
        match m {
            ClusterMap::Compressed { host, len } => Source::Compressed {
                host,
                len,
                cluster_start: cstart,
            },
            ClusterMap::Standard {
                host, alloc, zero, ..
            } => {
                let bit = 1u32 << si;
                if alloc & bit != 0 {
                    Source::Host(host + (g - cstart))
                } else if zero & bit != 0 || !self.area.has_backing() {
                    Source::Zeroes
                } else {
                    Source::Backing
                }
            }
        }
    }

    fn write_run(
        &mut self,
        offset: u64,
        length: u64,
        zero_payload: bool,
        sink: &mut Sink<'_>,
    ) -> Result<Planned, Stop> {
        let lay = self.lay;
        let cb = lay.cluster_bits;
        let c = lay.cluster_size();
        let (l1i, l2i0) = lay.split(offset);
        let slot = self.l2_for_write(l1i)?;
        let table_end = ((l1i + 1) * lay.l2_span()).min(lay.size);
        let end = (offset + length).min(table_end);
        let first_c = offset >> cb;
        let last_c = (end - 1) >> cb;
        // Classify the first cluster; the run continues while clusters are
        // of the same kind (and, in place, contiguous in the host file).
        let m0 = self.l2_get(slot, l2i0, first_c << cb)?;
        let in_place = |m: ClusterMap| matches!(m, ClusterMap::Standard { host, copied: true, .. } if host != 0);
        let place0 = in_place(m0);
        let needs_free = |m: ClusterMap| match m {
            ClusterMap::Compressed { .. } => true,
            ClusterMap::Standard { host, copied, .. } => host != 0 && !copied,
        };
        let mut n = 1u64;
        let mut frees = needs_free(m0) as usize;
        while first_c + n <= last_c {
            let k = first_c + n;
            let m = self.l2_get(slot, l2i0 + n, k << cb)?;
            if in_place(m) != place0 {
                break;
            }
            if place0 {
                let (ClusterMap::Standard { host: h, .. }, ClusterMap::Standard { host: h0, .. }) =
                    (m, m0)
                else {
                    break;
                };
                if h != h0 + n * c {
                    break;
                }
            } else if needs_free(m) {
                if frees + 1 > self.frees_available() {
                    break;
                }
                frees += 1;
            }
            n += 1;
        }
        if frees > self.frees_available() {
            return Err(Stop::Need(Need::Flush));
        }
        let mut new_host = 0;
        if !place0 {
            let (k, got) = self.find_free(n)?;
            n = got;
            new_host = k << cb;
            let s = new_host;
            self.overlap_check(s, s + n * c)?;
            // Pin before claiming so nothing fails after the claim.
            if !self.l2c.pin(self.words.as_mut(), slot) {
                return Err(Stop::Need(Need::Flush));
            }
            if let Err(e) = self.claim(k, n) {
                self.l2c.unpin(self.words.as_mut(), slot);
                return Err(e);
            }
        } else {
            let ClusterMap::Standard { host, .. } = m0 else {
                return Err(Stop::Err(Qcow2Error::Protocol));
            };
            self.check_data(host, n * c)?;
            self.overlap_check(host, host + n * c)?;
            if !self.l2c.pin(self.words.as_mut(), slot) {
                return Err(Stop::Need(Need::Flush));
            }
        }
        let run_end = end.min((first_c + n) << cb);
        let reserved = if place0 {
            0
        } else {
            frees_in(self, slot, l2i0, n, first_c)?
        };
        self.frees_reserved += reserved;
        // Steps: for each cluster, fill what the request does not cover but
        // the new state needs, then the payload.
        let sb = lay.subcluster_bits();
        let sub = 1u64 << sb;
        let subs = lay.subclusters();
        let mut fill = Filler { pending: None };
        for j in 0..n {
            let k = first_c + j;
            let cstart = k << cb;
            let m = self.l2_get(slot, l2i0 + j, cstart)?;
            let host = if place0 {
                match m {
                    ClusterMap::Standard { host, .. } => host,
                    ClusterMap::Compressed { .. } => 0,
                }
            } else {
                new_host + j * c
            };
            let ws = offset.max(cstart);
            let we = run_end.min(cstart + c);
            for si in 0..subs {
                let ss = cstart + si as u64 * sub;
                let se = ss + sub;
                let bit = 1u32 << si;
                let touched = ws < se && ss < we;
                let old_alloc_here = match m {
                    ClusterMap::Standard { alloc, .. } => alloc & bit != 0,
                    ClusterMap::Compressed { .. } => false,
                };
                if place0 && old_alloc_here {
                    continue; // data already in place
                }
                let keep_old =
                    !place0 && (matches!(m, ClusterMap::Compressed { .. }) || old_alloc_here);
                if !touched && !keep_old {
                    continue; // stays zero / unallocated in the bitmap
                }
                // Pieces of this subcluster outside the write.
                for (a, b) in [(ss, ws.clamp(ss, se)), (we.clamp(ss, se), se)] {
                    if a < b {
                        let src = self.old_source(m, si, a, cstart);
                        fill.push(sink, host + (a - cstart), a, b - a, src);
                    }
                }
            }
        }
        fill.flush(sink);
        let data_len = run_end - offset;
        let data_host = if place0 {
            match m0 {
                ClusterMap::Standard { host, .. } => host + lay.in_cluster(offset),
                ClusterMap::Compressed { .. } => 0,
            }
        } else {
            new_host + lay.in_cluster(offset)
        };
        if zero_payload {
            sink(Step::Fill {
                host: data_host,
                guest: offset,
                length: data_len,
                source: Source::Zeroes,
            });
        } else {
            sink(Step::Data {
                host: data_host,
                length: data_len,
                buf_offset: 0,
            });
        }
        Ok(Planned {
            covered: data_len,
            ticket: Ticket {
                kind: TicketKind::Write(WriteRun {
                    slot,
                    start: offset,
                    end: run_end,
                    new_host,
                    clusters: n,
                    reserved,
                }),
            },
        })
    }

    /// Plans a write-zeroes. Whole clusters (subclusters with extended L2
    /// entries) get the zero flag; with `unmap` their host clusters are
    /// freed, otherwise kept allocated (QEMU's `BDRV_REQ_MAY_UNMAP`).
    /// Partial clusters that do not already read as zeroes are written with
    /// zeroes. Version 2 images have no zero flag: zeroes are written.
    pub fn plan_write_zeroes(
        &mut self,
        offset: u64,
        length: u64,
        unmap: bool,
        sink: &mut Sink<'_>,
    ) -> Result<Plan, Qcow2Error> {
        self.plan_zero_or_discard(offset, length, unmap, false, sink)
    }

    /// Plans a discard (trim). As QEMU does, partial clusters are ignored
    /// (except the last cluster of a disk whose size is not
    /// cluster-aligned); whole clusters are freed and read as zeroes
    /// afterwards in version 3 when a backing file or their old data could
    /// otherwise show through, else they become unallocated.
    pub fn plan_discard(
        &mut self,
        offset: u64,
        length: u64,
        sink: &mut Sink<'_>,
    ) -> Result<Plan, Qcow2Error> {
        self.plan_zero_or_discard(offset, length, true, true, sink)
    }

    fn plan_zero_or_discard(
        &mut self,
        offset: u64,
        length: u64,
        unmap: bool,
        discard: bool,
        sink: &mut Sink<'_>,
    ) -> Result<Plan, Qcow2Error> {
        self.writable()?;
        if length == 0
            || crate::block::contract::check_range(offset, length, self.lay.size).is_err()
        {
            return Err(Qcow2Error::OutOfRange);
        }
        if let Some(p) = self.plan_prepare(sink) {
            return Ok(Plan::Planned(p));
        }
        let lay = self.lay;
        // QEMU: discard works on whole clusters, write-zeroes on whole
        // subclusters (the zero flag's unit); version 2 has no zero flag,
        // so zeroes are handled cluster by cluster as writes.
        let gran = if lay.zero_flag && !discard {
            1u64 << lay.subcluster_bits()
        } else {
            lay.cluster_size()
        };
        let end = offset + length;
        let head_end = if offset % gran == 0 {
            offset
        } else {
            (offset - offset % gran + gran).min(end)
        };
        // Unaligned head (or a request shorter than one granule).
        let piece_end = if head_end > offset {
            Some(head_end)
        } else {
            let aligned_end = end - end % gran;
            // The disk's last partial cluster counts as whole (QEMU).
            let aligned_end = if end == lay.size { end } else { aligned_end };
            if aligned_end <= offset {
                Some(end)
            } else if !lay.zero_flag && !discard {
                Some((offset + gran).min(end))
            } else {
                None
            }
        };
        if let Some(pe) = piece_end {
            if discard {
                return Ok(Plan::Planned(Planned {
                    covered: pe - offset,
                    ticket: Ticket {
                        kind: TicketKind::Nothing,
                    },
                }));
            }
            // Already zero? Then nothing to write.
            match self.reads_zero(offset, pe - offset)? {
                Err(n) => return Ok(Plan::Need(n)),
                Ok(true) => {
                    return Ok(Plan::Planned(Planned {
                        covered: pe - offset,
                        ticket: Ticket {
                            kind: TicketKind::Nothing,
                        },
                    }));
                }
                Ok(false) => {}
            }
            return self.plan_write_inner(offset, pe - offset, true, sink);
        }
        let aligned_end = if end == lay.size {
            end
        } else {
            end - end % gran
        };
        let (l1i, _) = lay.split(offset);
        let table_end = ((l1i + 1) * lay.l2_span()).min(lay.size);
        let stop = aligned_end.min(table_end);
        match self.zero_run(offset, stop, unmap, discard) {
            Err(Stop::WriteZeroes(pe)) => self.plan_write_inner(offset, pe - offset, true, sink),
            r => Self::finish(r, &mut || self.plan_grow(sink)),
        }
    }

    /// Whether guest `[offset, offset+len)` (inside one cluster) reads as
    /// zeroes from this layer's metadata alone.
    fn reads_zero(&mut self, offset: u64, len: u64) -> Result<Result<bool, Need>, Qcow2Error> {
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            match self.map(pos, end - pos)? {
                super::image::MapResult::Need(n) => return Ok(Err(n)),
                super::image::MapResult::Run(r) => {
                    let zero = match r.mapping {
                        Mapping::Zero => true,
                        Mapping::Unallocated => !self.area.has_backing(),
                        _ => false,
                    };
                    if !zero {
                        return Ok(Ok(false));
                    }
                    pos += r.length;
                }
            }
        }
        Ok(Ok(true))
    }

    fn zero_run(
        &mut self,
        offset: u64,
        stop: u64,
        unmap: bool,
        discard: bool,
    ) -> Result<Planned, Stop> {
        let lay = self.lay;
        let cb = lay.cluster_bits;
        let (l1i, l2i0) = lay.split(offset);
        let (off, _) = self.l2_offset(l1i)?;
        if off == 0 && !self.area.has_backing() {
            // Nothing allocated and nothing shows through: already zero.
            return Ok(Planned {
                covered: stop - offset,
                ticket: Ticket {
                    kind: TicketKind::Nothing,
                },
            });
        }
        let slot = self.l2_for_write(l1i)?;
        // Count frees and stop where the queue is full.
        let first_c = offset >> cb;
        let last_c = (stop - 1) >> cb;
        let mut frees = 0usize;
        let mut end = stop;
        // Count the frees commit will queue (the same rule as commit_zero:
        // compressed clusters always, standard ones with unmap or when
        // shared) and stop where the queue would overflow.
        for k in first_c..=last_c {
            let m = self.l2_get(slot, l2i0 + (k - first_c), k << cb)?;
            let frees_host = match m {
                ClusterMap::Compressed { .. } => true,
                ClusterMap::Standard { host, copied, .. } => host != 0 && (unmap || !copied),
            };
            let whole = offset <= (k << cb) && ((k + 1) << cb).min(lay.size) <= stop;
            if !whole && matches!(m, ClusterMap::Compressed { .. }) {
                // Subclusters of a compressed cluster cannot be zeroed by
                // metadata: that cluster is rewritten with zeroes instead.
                if k == first_c {
                    return Err(Stop::WriteZeroes(((k + 1) << cb).min(stop)));
                }
                end = k << cb;
                break;
            }
            if frees_host && whole {
                if frees + 1 > self.frees_available() {
                    end = k << cb;
                    break;
                }
                frees += 1;
            }
        }
        if end <= offset {
            return Err(Stop::Need(Need::Flush));
        }
        if !self.l2c.pin(self.words.as_mut(), slot) {
            return Err(Stop::Need(Need::Flush));
        }
        self.frees_reserved += frees;
        let reserved = frees;
        Ok(Planned {
            covered: end - offset,
            ticket: Ticket {
                kind: TicketKind::Zero(ZeroRun {
                    slot,
                    start: offset,
                    end,
                    unmap,
                    discard,
                    reserved,
                }),
            },
        })
    }

    /// Records that a plan's steps all completed.
    pub fn commit(&mut self, t: Ticket) -> Result<(), Qcow2Error> {
        match t.kind {
            TicketKind::Nothing => Ok(()),
            TicketKind::Prepare => {
                self.write_ready = true;
                Ok(())
            }
            TicketKind::Grow => self.commit_grow(),
            TicketKind::Flush => self.commit_flush(),
            TicketKind::Write(w) => self.commit_write(w),
            TicketKind::Zero(z) => self.commit_zero(z),
        }
    }

    /// Forgets a plan whose steps did not all complete. Clusters it
    /// allocated stay allocated (a leak, as QEMU allows); the image stays
    /// consistent because nothing references them.
    pub fn abort(&mut self, t: Ticket) {
        match t.kind {
            TicketKind::Write(w) => {
                self.frees_reserved = self.frees_reserved.saturating_sub(w.reserved);
                self.l2c.unpin(self.words.as_mut(), w.slot);
                if w.new_host != 0 {
                    // Nothing references the new clusters: give them back if
                    // their refcount block is still cached (else they leak,
                    // which is harmless).
                    let cb = self.lay.cluster_bits;
                    for k in (w.new_host >> cb)..(w.new_host >> cb) + w.clusters {
                        let ti = k >> self.lay.refblock_bits();
                        let off = self.rt_entry(ti) & !0x1ff;
                        if self.rbc.find(self.words.as_ref(), off).is_some() {
                            let _ = self.refcount_add(k, -1);
                            self.free_hint = self.free_hint.min(k);
                        }
                    }
                }
            }
            TicketKind::Zero(z) => {
                self.frees_reserved = self.frees_reserved.saturating_sub(z.reserved);
                self.l2c.unpin(self.words.as_mut(), z.slot);
            }
            TicketKind::Flush => self.flushing = false,
            TicketKind::Grow => {
                self.grow = None;
                self.flushing = false;
            }
            TicketKind::Prepare | TicketKind::Nothing => {}
        }
    }

    fn commit_write(&mut self, w: WriteRun) -> Result<(), Qcow2Error> {
        if self.flushing {
            return Err(Qcow2Error::Protocol);
        }
        self.frees_reserved = self.frees_reserved.saturating_sub(w.reserved);
        let lay = self.lay;
        let cb = lay.cluster_bits;
        let c = lay.cluster_size();
        let sb = lay.subcluster_bits();
        let first_c = w.start >> cb;
        let (_, l2i0) = lay.split(w.start);
        for j in 0..w.clusters {
            let k = first_c + j;
            let cstart = k << cb;
            let m = self.l2_get(w.slot, l2i0 + j, cstart)?;
            let ws = w.start.max(cstart);
            let we = w.end.min(cstart + c);
            if ws >= we {
                continue;
            }
            let touched = sub_mask(ws - cstart, we - cstart, sb, lay.subclusters());
            let (host, alloc, zero) = match m {
                ClusterMap::Compressed { host, len } => {
                    self.queue_free(host, len, false);
                    (w.new_host + j * c, lay.all_subs(), 0)
                }
                ClusterMap::Standard {
                    host,
                    copied,
                    alloc,
                    zero,
                } => {
                    if w.new_host == 0 {
                        (host, alloc | touched, zero & !(alloc | touched))
                    } else {
                        if host != 0 && !copied {
                            self.queue_free(host, c, false);
                        }
                        // Subclusters whose data lived in the old host
                        // cluster were copied over.
                        let kept = if host != 0 { alloc } else { 0 };
                        let a = kept | touched;
                        (w.new_host + j * c, a, zero & !a)
                    }
                }
            };
            let e = lay.encode_l2(host, true, alloc, zero);
            self.l2_put(w.slot, l2i0 + j, e);
        }
        self.l2c.unpin(self.words.as_mut(), w.slot);
        Ok(())
    }

    fn commit_zero(&mut self, z: ZeroRun) -> Result<(), Qcow2Error> {
        if self.flushing {
            return Err(Qcow2Error::Protocol);
        }
        self.frees_reserved = self.frees_reserved.saturating_sub(z.reserved);
        let lay = self.lay;
        let cb = lay.cluster_bits;
        let c = lay.cluster_size();
        let sb = lay.subcluster_bits();
        let first_c = z.start >> cb;
        let last_c = (z.end - 1) >> cb;
        let (_, l2i0) = lay.split(z.start);
        let backing = self.area.has_backing();
        for k in first_c..=last_c {
            let cstart = k << cb;
            let idx = l2i0 + (k - first_c);
            let m = self.l2_get(z.slot, idx, cstart)?;
            let ws = z.start.max(cstart);
            let we = z.end.min(cstart + c);
            let mut covered = sub_mask(ws - cstart, we - cstart, sb, lay.subclusters());
            if we == lay.size && we < cstart + c {
                // The disk's partial last cluster: the bytes past the end
                // count as covered.
                covered |= sub_mask(ws - cstart, c, sb, lay.subclusters());
            }
            let whole = covered == lay.all_subs();
            let new = match m {
                ClusterMap::Compressed { host, len } => {
                    if whole {
                        // The entry stops referencing the compressed data
                        // whatever `unmap` says (QEMU frees it too).
                        self.queue_free(host, len, z.discard);
                        let zero = if z.discard && !backing && !lay.zero_flag {
                            0
                        } else {
                            lay.all_subs()
                        };
                        lay.encode_l2(0, false, 0, if lay.zero_flag { zero } else { 0 })
                    } else {
                        continue;
                    }
                }
                ClusterMap::Standard {
                    host,
                    copied,
                    alloc,
                    zero,
                } => {
                    let alloc2 = alloc & !covered;
                    let zero_bits =
                        if z.discard && !backing && alloc & covered == 0 && zero & covered == 0 {
                            // Discarding what is unallocated without a backing
                            // file changes nothing.
                            zero
                        } else if lay.zero_flag {
                            zero | covered
                        } else {
                            0
                        };
                    if whole && host != 0 && (z.unmap || !copied) {
                        self.queue_free(host, c, z.discard);
                        lay.encode_l2(0, false, 0, zero_bits & lay.all_subs())
                    } else {
                        lay.encode_l2(host, copied, alloc2, zero_bits & !alloc2)
                    }
                }
            };
            self.l2_put(z.slot, idx, new);
        }
        self.l2c.unpin(self.words.as_mut(), z.slot);
        Ok(())
    }

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

    fn commit_flush(&mut self) -> Result<(), Qcow2Error> {
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
    fn plan_grow(&mut self, sink: &mut Sink<'_>) -> Result<Plan, Qcow2Error> {
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

    fn commit_grow(&mut self) -> Result<(), Qcow2Error> {
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

/// Frees an allocating write run will queue at commit.
fn frees_in<S: AsRef<[u64]> + AsMut<[u64]>>(
    q: &Qcow2<S>,
    slot: usize,
    l2i0: u64,
    n: u64,
    first_c: u64,
) -> Result<usize, Stop> {
    let cb = q.lay.cluster_bits;
    let mut f = 0;
    for j in 0..n {
        match q.l2_get(slot, l2i0 + j, (first_c + j) << cb)? {
            ClusterMap::Compressed { .. } => f += 1,
            ClusterMap::Standard { host, copied, .. } => f += (host != 0 && !copied) as usize,
        }
    }
    Ok(f)
}

/// Subclusters of a cluster that `[a, b)` (cluster-relative) touches.
fn sub_mask(a: u64, b: u64, sb: u32, subs: u32) -> u32 {
    if a >= b {
        return 0;
    }
    let first = (a >> sb) as u32;
    let last = (((b - 1) >> sb) as u32).min(subs - 1);
    let n = last - first + 1;
    let m = if n >= 32 { u32::MAX } else { (1u32 << n) - 1 };
    m << first
}

/// Dirty entry range rounded out to 512-byte sectors (64 entries).
fn sector_range(d: (usize, usize), len: usize) -> (usize, usize) {
    let lo = d.0 & !63;
    let hi = ((d.1 + 63) & !63).min(len);
    (lo, hi)
}

/// Merges adjacent fill pieces with continuing sources.
struct Filler {
    pending: Option<(u64, u64, u64, Source)>,
}

impl Filler {
    fn push(&mut self, sink: &mut Sink<'_>, host: u64, guest: u64, len: u64, src: Source) {
        if let Some((h, g, l, s)) = self.pending {
            let cont = h + l == host
                && g + l == guest
                && match (s, src) {
                    (Source::Backing, Source::Backing) | (Source::Zeroes, Source::Zeroes) => true,
                    (Source::Host(a), Source::Host(b)) => a + l == b,
                    _ => false,
                };
            if cont {
                self.pending = Some((h, g, l + len, s));
                return;
            }
            sink(Step::Fill {
                host: h,
                guest: g,
                length: l,
                source: s,
            });
        }
        self.pending = Some((host, guest, len, src));
    }

    fn flush(&mut self, sink: &mut Sink<'_>) {
        if let Some((host, guest, length, source)) = self.pending.take() {
            sink(Step::Fill {
                host,
                guest,
                length,
                source,
            });
        }
    }
}

/// Answer of [`Qcow2::alloc_clusters`].
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Alloc {
    /// Contiguous clusters starting at this host offset now have refcount
    /// 1 (in the cache; durable after the next flush plan).
    At(u64),
    /// Satisfy this first, then ask again.
    Need(Need),
    /// A prerequisite plan (refcount table growth) was emitted: run and
    /// commit it, then ask again.
    Planned(Planned),
}

impl<S: AsRef<[u64]> + AsMut<[u64]>> Qcow2<S> {
    /// Allocates `n` contiguous clusters for metadata the caller writes
    /// itself (bitmap data, bitmap tables, a bitmap directory). Their
    /// refcounts reach the disk with the next flush plan; point nothing
    /// durable at them before that flush completed.
    pub fn alloc_clusters(&mut self, n: u64, sink: &mut Sink<'_>) -> Result<Alloc, Qcow2Error> {
        self.writable()?;
        if n == 0 || n > 1 << 20 {
            return Err(Qcow2Error::OutOfRange);
        }
        if let Some(p) = self.plan_prepare(sink) {
            return Ok(Alloc::Planned(p));
        }
        let saved = self.free_hint;
        // Each round moves the hint past a too-short free run; a Need or
        // the end of the refcount table ends the call.
        loop {
            match self.find_free(n) {
                Ok((k, got)) if got == n => {
                    self.free_hint = saved;
                    return match self.claim(k, n) {
                        Ok(()) => {
                            self.free_hint = saved.min(k + n).max(saved);
                            Ok(Alloc::At(k << self.lay.cluster_bits))
                        }
                        Err(Stop::Err(e)) => Err(e),
                        Err(Stop::Need(nd)) => Ok(Alloc::Need(nd)),
                        Err(Stop::Grow) => Err(Qcow2Error::NoSpace),
                        Err(Stop::WriteZeroes(_)) => Err(Qcow2Error::Protocol),
                    };
                }
                Ok((k, got)) => self.free_hint = k + got,
                Err(Stop::Need(nd)) => {
                    self.free_hint = saved;
                    return Ok(Alloc::Need(nd));
                }
                Err(Stop::Err(e)) => {
                    self.free_hint = saved;
                    return Err(e);
                }
                Err(Stop::WriteZeroes(_)) => {
                    self.free_hint = saved;
                    return Err(Qcow2Error::Protocol);
                }
                Err(Stop::Grow) => {
                    self.free_hint = saved;
                    return match self.plan_grow(sink)? {
                        Plan::Planned(p) => Ok(Alloc::Planned(p)),
                        Plan::Need(nd) => Ok(Alloc::Need(nd)),
                    };
                }
            }
        }
    }

    /// Drops one reference to the clusters holding host bytes
    /// `[host, host + len)` once the next flush plan has made the change
    /// that stopped using them durable. `Need::Flush` when the queue of
    /// deferred frees is full.
    pub fn free_clusters(&mut self, host: u64, len: u64) -> Result<Option<Need>, Qcow2Error> {
        self.writable()?;
        if self.lay.in_cluster(host) != 0 || host < self.lay.cluster_size() {
            return Err(Qcow2Error::OutOfRange);
        }
        if self.frees_available() == 0 {
            return Ok(Some(Need::Flush));
        }
        self.queue_free(host, len, false);
        Ok(None)
    }

    /// Points the header's bitmaps extension at a new directory (or removes
    /// it) and sets the bitmaps autoclear bit accordingly. Cluster 0 is
    /// rewritten by the next flush plan, after a barrier.
    pub fn set_bitmaps_extension(
        &mut self,
        ext: Option<super::header::BitmapsExt>,
    ) -> Result<(), Qcow2Error> {
        self.writable()?;
        if self.area.header.version < 3 {
            return Err(Qcow2Error::UnsupportedVersion(2));
        }
        self.area.bitmaps = ext;
        if ext.is_some() {
            self.area.header.autoclear_features |= autoclear::BITMAPS;
        } else {
            self.area.header.autoclear_features &= !autoclear::BITMAPS;
        }
        self.header_dirty = true;
        Ok(())
    }

    /// Declares that the caller keeps the image's persistent bitmaps up to
    /// date (it marked the `auto` ones `in_use` and records writes into
    /// them, storing them before close), so the first write keeps the
    /// bitmaps autoclear bit instead of clearing it.
    pub fn track_bitmaps(&mut self, on: bool) {
        self.bitmaps_tracked = on;
    }
}
