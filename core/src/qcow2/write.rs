//! Guest writes as plans: the first-write header update, the L2 table
//! a write lands in (loaded, created or copied on write), and the run of
//! clusters written in place or newly allocated, with copy-on-write fills.

use super::error::{Meta, Qcow2Error};
use super::header::autoclear;
use super::image::{Need, Qcow2};
use super::layout::{ClusterMap, OFLAG_COPIED};
use super::plan::{
    MetaKind, MetaSrc, Plan, Planned, Sink, Source, Step, Ticket, TicketKind, WriteRun,
};
use super::refcount::Stop;

impl<S: AsRef<[u64]> + AsMut<[u64]>> Qcow2<S> {
    /// First write after open: clear unknown autoclear bits (spec: "may
    /// only write to an image with unknown auto-clear features if it clears
    /// the respective bits first") and the bitmaps bit, since bitmaps
    /// recorded in the image do not see the writes that follow until they
    /// are loaded and stored again (QEMU marks them in use instead; a
    /// consumer then treats them as inconsistent either way).
    pub(super) fn plan_prepare(&mut self, sink: &mut Sink<'_>) -> Option<Planned> {
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

    pub(super) fn plan_write_inner(
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
    pub(super) fn l2_for_write(&mut self, l1i: u64) -> Result<usize, Stop> {
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
            // entry is durable. Its L1 entry has no COPIED: shared.
            self.queue_shared_free(off, 1 << cb, false);
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

    pub(super) fn commit_write(&mut self, w: WriteRun) -> Result<(), Qcow2Error> {
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
                            self.queue_shared_free(host, c, false);
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
pub(super) fn sub_mask(a: u64, b: u64, sb: u32, subs: u32) -> u32 {
    if a >= b {
        return 0;
    }
    let first = (a >> sb) as u32;
    let last = (((b - 1) >> sb) as u32).min(subs - 1);
    let n = last - first + 1;
    let m = if n >= 32 { u32::MAX } else { (1u32 << n) - 1 };
    m << first
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
