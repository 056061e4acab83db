//! Write-zeroes and discard as plans: whole clusters get the zero flag or
//! are freed, partial clusters are written with zeroes (or, for discard,
//! left alone as QEMU does).

use super::error::Qcow2Error;
use super::image::{Mapping, Need, Qcow2};
use super::layout::ClusterMap;
use super::plan::{Plan, Planned, Sink, Ticket, TicketKind, ZeroRun};
use super::refcount::Stop;
use super::write::sub_mask;

impl<S: AsRef<[u64]> + AsMut<[u64]>> Qcow2<S> {
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

    pub(super) fn commit_zero(&mut self, z: ZeroRun) -> Result<(), Qcow2Error> {
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
                        if copied {
                            self.queue_free(host, c, z.discard);
                        } else {
                            self.queue_shared_free(host, c, z.discard);
                        }
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
}
