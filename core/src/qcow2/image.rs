//! The open image: parsed header, geometry, the tables and caches in the
//! caller's arena, opening (loading L1, refcount and snapshot tables with
//! the hostile-image checks) and the read-side mapping.

use super::cache::CacheGeom;
use super::error::{Meta, Qcow2Error};
use super::header::{HeaderArea, autoclear, be32, be64, incompatible};
use super::layout::{
    ClusterMap, Layout, MAX_HOST_OFFSET, MAX_L1_BYTES, MAX_REFTABLE_BYTES, MAX_SNAPSHOT_EXTRA,
    MAX_SNAPSHOT_TABLE_BYTES, MAX_SNAPSHOTS,
};

/// Bytes of a table the opener asks for at once (or one cluster if larger).
pub const OPEN_CHUNK: u64 = 64 * 1024;
/// Snapshot L1 tables remembered for overlap checks.
pub const SNAPSHOT_L1_CAP: usize = 16;
/// Deferred refcount decrements that can wait for a flush.
pub const PENDING_FREES: usize = 64;

/// How the caller wants the image opened and how much memory it gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Refuse every write.
    pub read_only: bool,
    /// L2 tables cached (at least 2, as QEMU's minimum).
    pub l2_slots: usize,
    /// Refcount blocks cached (at least 4, as QEMU's minimum).
    pub refblock_slots: usize,
    /// Largest L1 table accepted, in bytes (memory limit; QEMU's 32 MiB
    /// at most).
    pub max_l1_bytes: u64,
    /// Largest refcount table held, in bytes: the table in the image must
    /// fit, and it may grow up to this (QEMU's 8 MiB at most).
    pub max_reftable_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            read_only: false,
            l2_slots: 16,
            refblock_slots: 4,
            max_l1_bytes: MAX_L1_BYTES,
            max_reftable_bytes: 4 << 20,
        }
    }
}

/// Metadata the caller must read and hand to [`Qcow2::install`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// What it is.
    pub what: Meta,
    /// Host offset.
    pub offset: u64,
    /// Bytes to read (reads past the end of the file count as zeroes).
    pub len: u64,
    /// The image's flush epoch when it asked. A load that arrives after a
    /// flush committed may hold bytes older than what that flush wrote (the
    /// table was loaded, changed, written back and evicted meanwhile by
    /// someone else), so [`Qcow2::install`] ignores it and the caller
    /// simply asks again. Lets a driver read metadata without holding its
    /// lock.
    pub epoch: u64,
}

/// Something the image needs before it can answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Read this and call [`Qcow2::install`], then ask again.
    Load(Load),
    /// Every cache slot is dirty or pinned: run a flush plan
    /// ([`Qcow2::plan_flush`]) or wait for in-flight plans, then ask again.
    Flush,
}

/// Where the bytes of one run of guest data are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// In the image file at this host offset (of the run's first byte).
    Data {
        /// Host offset.
        host: u64,
    },
    /// Reads as zeroes (zero cluster or zero subclusters).
    Zero,
    /// Not allocated in this image: read the backing file at the same
    /// guest offset (zeroes past its end or without one).
    Unallocated,
    /// Part of a compressed cluster: read `len` bytes at `host`, inflate
    /// them into one cluster ([`Inflater::inflate_cluster`](super::Inflater::inflate_cluster)) and
    /// take the bytes from `offset - cluster_start`.
    Compressed {
        /// Host byte offset of the deflate stream.
        host: u64,
        /// Length of the deflate stream.
        len: u64,
        /// Guest offset of the cluster's first byte.
        cluster_start: u64,
    },
}

/// One run of guest bytes with a single mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Guest offset.
    pub offset: u64,
    /// Bytes (at least 1).
    pub length: u64,
    /// Where they are.
    pub mapping: Mapping,
}

impl Run {
    /// `base:allocation` flags for this run as QEMU's qcow2 driver reports
    /// them: data and compressed clusters are data (0), zero clusters are
    /// `HOLE | ZERO` (3). `Unallocated` runs take the backing file's flags
    /// (or 3 without a backing file); this returns `None` for them.
    pub fn base_allocation(&self) -> Option<u64> {
        use crate::block::contract::{STATE_HOLE, STATE_ZERO};
        match self.mapping {
            Mapping::Data { .. } | Mapping::Compressed { .. } => Some(0),
            Mapping::Zero => Some(STATE_HOLE | STATE_ZERO),
            Mapping::Unallocated => None,
        }
    }

    /// Whether this layer allocates the run (`qemu:allocation-depth`: depth
    /// 1 here; otherwise the backing file's depth plus one, or 0).
    pub fn allocated_here(&self) -> bool {
        !matches!(self.mapping, Mapping::Unallocated)
    }
}

/// Answer of [`Qcow2::map`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapResult {
    /// The first run at the offset.
    Run(Run),
    /// Metadata first.
    Need(Need),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenState {
    L1 { done: u64 },
    Reftable { done: u64 },
    Snapshots { pos: u64 },
    Ready,
}

/// Incremental parser state of the snapshot table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SnapScan {
    pub index: u32,
    pub hdr: [u8; 40],
    pub hdr_fill: u8,
    pub skip: u64,
}

/// A cluster-aligned extent of fixed metadata, for overlap checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    pub what: Meta,
    pub start: u64,
    pub end: u64,
}

/// A refcount decrement waiting until the L2 change that dropped the
/// reference is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct PendingFree {
    /// Host byte offset of the first cluster.
    pub host: u64,
    /// Clusters (compressed data may span two).
    pub clusters: u32,
    /// The flush epoch it waits for.
    pub epoch: u64,
    /// Discard the host range once the refcount hits zero.
    pub discard: bool,
    /// The reference dropped was an active entry without `COPIED`, which
    /// a consistent image counts at least twice (see
    /// [`Qcow2::queue_shared_free`]).
    pub shared: bool,
}

/// An open qcow2 image over caller-provided words `S`.
///
/// See the [module docs](super) for the driving loop.
#[derive(Clone, Debug)]
pub struct Qcow2<S> {
    pub(crate) area: HeaderArea,
    pub(crate) lay: Layout,
    pub(crate) words: S,
    pub(crate) read_only: bool,
    pub(crate) l1_at: usize,
    pub(crate) l1_len: usize,
    pub(crate) rt_at: usize,
    pub(crate) rt_cap: usize,
    /// Entries of the refcount table as the header describes it.
    pub(crate) rt_len: usize,
    /// One past the last non-zero refcount table entry (the overlap check
    /// scans only these).
    pub(crate) rt_used: usize,
    /// One past the last non-zero L1 entry.
    pub(crate) l1_used: usize,
    pub(crate) l2c: CacheGeom,
    pub(crate) rbc: CacheGeom,
    pub(crate) file_end: u64,
    pub(crate) state: OpenState,
    pub(crate) snap: SnapScan,
    pub(crate) snap_table_len: u64,
    pub(crate) snap_l1: [Extent; SNAPSHOT_L1_CAP],
    pub(crate) snap_l1_n: usize,
    pub(crate) clock: u64,
    /// Dirty L1 entries `[lo, hi)`.
    pub(crate) l1_dirty: (usize, usize),
    /// Dirty refcount table entries `[lo, hi)`.
    pub(crate) rt_dirty: (usize, usize),
    /// The on-disk header must be rewritten (cluster 0) at the next flush.
    pub(crate) header_dirty: bool,
    /// Header update for the first write (autoclear bits) is done.
    pub(crate) write_ready: bool,
    /// First cluster index that may be free.
    pub(crate) free_hint: u64,
    pub(crate) frees: [PendingFree; PENDING_FREES],
    pub(crate) frees_n: usize,
    /// Free slots promised to in-flight plans.
    pub(crate) frees_reserved: usize,
    /// Flushes committed.
    pub(crate) epoch: u64,
    /// A flush or growth plan is in flight: no other plan or commit.
    pub(crate) flushing: bool,
    /// Refcount table growth between plan and commit.
    pub(crate) grow: Option<super::plan::Grow>,
    /// The caller keeps the image's bitmaps up to date (loads them, records
    /// writes, stores them): the bitmaps autoclear bit may stay set.
    pub(crate) bitmaps_tracked: bool,
}

impl Qcow2<()> {
    /// Words of storage an image with this header needs under `cfg`.
    pub fn words_needed(area: &HeaderArea, cfg: &Config) -> Result<usize, Qcow2Error> {
        let (l1, rt, l2s, rbs) = Self::sizes(area, cfg)?;
        let cw = (area.header.cluster_size() / 8) as usize;
        let total = (l1 as u64)
            .checked_add(rt as u64)
            .and_then(|t| t.checked_add(CacheGeom::words(l2s, cw)? as u64))
            .and_then(|t| t.checked_add(CacheGeom::words(rbs, cw)? as u64))
            .ok_or(Qcow2Error::NoSpace)?;
        usize::try_from(total).map_err(|_| Qcow2Error::NoSpace)
    }

    fn sizes(area: &HeaderArea, cfg: &Config) -> Result<(usize, usize, usize, usize), Qcow2Error> {
        let h = &area.header;
        let l1_bytes = h.l1_size as u64 * 8;
        let l1_limit = cfg.max_l1_bytes.min(MAX_L1_BYTES);
        if l1_bytes > l1_limit {
            return Err(Qcow2Error::TooLarge {
                what: Meta::L1Table,
                bytes: l1_bytes,
                limit: l1_limit,
            });
        }
        let rt_bytes = h.refcount_table_clusters as u64 * h.cluster_size();
        let rt_limit = cfg.max_reftable_bytes.min(MAX_REFTABLE_BYTES);
        if rt_bytes > MAX_REFTABLE_BYTES || rt_bytes > rt_limit {
            return Err(Qcow2Error::TooLarge {
                what: Meta::RefcountTable,
                bytes: rt_bytes,
                limit: rt_limit,
            });
        }
        let rt_cap = rt_limit.max(rt_bytes) / 8;
        Ok((
            h.l1_size as usize,
            rt_cap as usize,
            cfg.l2_slots.max(2),
            cfg.refblock_slots.max(4),
        ))
    }
}

impl<S: AsRef<[u64]> + AsMut<[u64]>> Qcow2<S> {
    /// Checks the parsed header against the file and the caller's limits
    /// and lays out `storage`. The image is not usable until
    /// [`open_need`](Self::open_need) returns `None` (the L1, refcount and
    /// snapshot tables are loaded through [`install`](Self::install)).
    ///
    /// Refusals (each one a hostile-image class QEMU hardened against):
    /// tables unaligned, past the end of the file or larger than QEMU's
    /// limits or `cfg`'s; an L1 table too small for the virtual size; too
    /// many snapshots; fixed metadata overlapping the header or each other;
    /// writing (`!cfg.read_only`) an image marked corrupt or dirty.
    pub fn open(
        area: HeaderArea,
        file_size: u64,
        cfg: &Config,
        mut storage: S,
    ) -> Result<Self, Qcow2Error> {
        let h = area.header;
        let lay = Layout::new(&h);
        let cluster = lay.cluster_size();
        if !cfg.read_only {
            if h.incompatible_features & incompatible::CORRUPT != 0 {
                return Err(Qcow2Error::MarkedCorrupt);
            }
            if h.incompatible_features & incompatible::DIRTY != 0 {
                return Err(Qcow2Error::Dirty);
            }
        }
        if file_size < cluster {
            // QEMU reads the whole first cluster; a shorter file cannot
            // hold the tables either.
            return Err(Qcow2Error::Truncated {
                what: Meta::Header,
                offset: 0,
            });
        }
        // Virtual size: the L1 must map it, and QEMU caps it so that
        // offsets never overflow (size < 2^63, L1 index fits 32 bits).
        let needed = lay.l1_needed();
        if h.size > i64::MAX as u64 || needed > u32::MAX as u64 {
            return Err(Qcow2Error::BadSize(h.size));
        }
        if (h.l1_size as u64) < needed {
            return Err(Qcow2Error::L1TooSmall {
                entries: h.l1_size,
                needed,
            });
        }
        let (l1_len, rt_cap, l2s, rbs) = Qcow2::<()>::sizes(&area, cfg)?;
        let l1_bytes = l1_len as u64 * 8;
        if l1_len > 0 {
            lay.check_table(Meta::L1Table, h.l1_table_offset, l1_bytes, file_size)?;
        }
        let rt_bytes = h.refcount_table_clusters as u64 * cluster;
        if h.refcount_table_clusters == 0 {
            return Err(Qcow2Error::BeyondEnd {
                what: Meta::RefcountTable,
                offset: h.refcount_table_offset,
            });
        }
        lay.check_table(
            Meta::RefcountTable,
            h.refcount_table_offset,
            rt_bytes,
            file_size,
        )?;
        if h.nb_snapshots > MAX_SNAPSHOTS {
            return Err(Qcow2Error::TooLarge {
                what: Meta::SnapshotTable,
                bytes: h.nb_snapshots as u64 * 40,
                limit: MAX_SNAPSHOT_TABLE_BYTES,
            });
        }
        if h.nb_snapshots > 0 {
            lay.check_table(
                Meta::SnapshotTable,
                h.snapshots_offset,
                h.nb_snapshots as u64 * 40,
                file_size,
            )?;
        }
        if let Some(bm) = area.bitmaps {
            lay.check_table(
                Meta::BitmapDirectory,
                bm.directory_offset,
                bm.directory_size,
                file_size,
            )?;
        }
        let cw = (cluster / 8) as usize;
        let need = Qcow2::<()>::words_needed(&area, cfg)?;
        if storage.as_ref().len() < need {
            return Err(Qcow2Error::StorageTooSmall {
                what: Meta::L1Table,
                needed: need as u64,
            });
        }
        let l1_at = 0;
        let rt_at = l1_len;
        let (l2c, next) = CacheGeom::at(rt_at + rt_cap, l2s, cw);
        let (rbc, _) = CacheGeom::at(next, rbs, cw);
        {
            let w = storage.as_mut();
            w[..rt_at + rt_cap].fill(0);
            l2c.clear(w);
            rbc.clear(w);
        }
        let rt_len = (rt_bytes / 8) as usize;
        let mut q = Qcow2 {
            area,
            lay,
            words: storage,
            read_only: cfg.read_only,
            l1_at,
            l1_len,
            rt_at,
            rt_cap,
            rt_len,
            rt_used: 0,
            l1_used: 0,
            l2c,
            rbc,
            file_end: file_size,
            state: OpenState::L1 { done: 0 },
            snap: SnapScan {
                index: 0,
                hdr: [0; 40],
                hdr_fill: 0,
                skip: 0,
            },
            snap_table_len: 0,
            snap_l1: [Extent {
                what: Meta::InactiveL1,
                start: 0,
                end: 0,
            }; SNAPSHOT_L1_CAP],
            snap_l1_n: 0,
            clock: 0,
            l1_dirty: (usize::MAX, 0),
            rt_dirty: (usize::MAX, 0),
            header_dirty: false,
            write_ready: false,
            free_hint: 0,
            frees: [PendingFree::default(); PENDING_FREES],
            frees_n: 0,
            frees_reserved: 0,
            epoch: 0,
            flushing: false,
            grow: None,
            bitmaps_tracked: false,
        };
        q.check_fixed_overlaps()?;
        if l1_len == 0 {
            q.state = OpenState::Reftable { done: 0 };
        }
        Ok(q)
    }

    /// The next table the opener needs, `None` once the image is ready.
    pub fn open_need(&self) -> Option<Load> {
        let h = &self.area.header;
        let chunk = OPEN_CHUNK.max(self.lay.cluster_size());
        match self.state {
            OpenState::L1 { done } => {
                let total = self.l1_len as u64 * 8;
                Some(Load {
                    what: Meta::L1Table,
                    offset: h.l1_table_offset + done,
                    epoch: self.epoch,
                    len: (total - done).min(chunk),
                })
            }
            OpenState::Reftable { done } => {
                let total = self.rt_len as u64 * 8;
                Some(Load {
                    what: Meta::RefcountTable,
                    offset: h.refcount_table_offset + done,
                    epoch: self.epoch,
                    len: (total - done).min(chunk),
                })
            }
            OpenState::Snapshots { pos } => {
                let left = MAX_SNAPSHOT_TABLE_BYTES - pos;
                let in_file = self.file_end.saturating_sub(h.snapshots_offset + pos);
                Some(Load {
                    what: Meta::SnapshotTable,
                    offset: h.snapshots_offset + pos,
                    epoch: self.epoch,
                    len: left.min(chunk).min(in_file).max(1),
                })
            }
            OpenState::Ready => None,
        }
    }

    /// Hands the bytes of `load` (as returned by [`open_need`](Self::open_need)
    /// or in a [`Need::Load`]) to the image. `bytes` shorter than
    /// `load.len` means the file ended: the rest reads as zeroes, except
    /// for tables the opener needs whole.
    pub fn install(&mut self, load: Load, bytes: &[u8]) -> Result<(), Qcow2Error> {
        if bytes.len() as u64 > load.len {
            return Err(Qcow2Error::Protocol);
        }
        if self.state != OpenState::Ready {
            if Some(load) != self.open_need() {
                return Err(Qcow2Error::Protocol);
            }
            return self.install_open(load, bytes);
        }
        if load.epoch != self.epoch {
            // Possibly stale (see `Load::epoch`): drop it, the caller asks again.
            return Ok(());
        }
        match load.what {
            Meta::L2Table => self.install_cluster(true, load, bytes),
            Meta::RefcountBlock => self.install_cluster(false, load, bytes),
            _ => Err(Qcow2Error::Protocol),
        }
    }

    fn install_open(&mut self, load: Load, bytes: &[u8]) -> Result<(), Qcow2Error> {
        let short = Qcow2Error::Truncated {
            what: load.what,
            offset: load.offset,
        };
        match self.state {
            OpenState::L1 { done } => {
                if (bytes.len() as u64) < load.len {
                    return Err(short);
                }
                let first = self.l1_at + (done / 8) as usize;
                let w = self.words.as_mut();
                for (i, c) in bytes.chunks_exact(8).enumerate() {
                    w[first + i] = be64(c, 0).unwrap_or(0);
                }
                let done = done + load.len;
                self.state = if done >= self.l1_len as u64 * 8 {
                    OpenState::Reftable { done: 0 }
                } else {
                    OpenState::L1 { done }
                };
            }
            OpenState::Reftable { done } => {
                if (bytes.len() as u64) < load.len {
                    return Err(short);
                }
                let first = self.rt_at + (done / 8) as usize;
                let w = self.words.as_mut();
                for (i, c) in bytes.chunks_exact(8).enumerate() {
                    w[first + i] = be64(c, 0).unwrap_or(0);
                }
                let done = done + load.len;
                if done >= self.rt_len as u64 * 8 {
                    self.state = if self.area.header.nb_snapshots > 0 {
                        OpenState::Snapshots { pos: 0 }
                    } else {
                        OpenState::Ready
                    };
                    if self.state == OpenState::Ready {
                        self.finish_open()?;
                    }
                } else {
                    self.state = OpenState::Reftable { done };
                }
            }
            OpenState::Snapshots { pos } => {
                if bytes.is_empty() {
                    return Err(short);
                }
                let used = self.scan_snapshots(bytes)?;
                let pos = pos + used;
                if self.snap.index >= self.area.header.nb_snapshots {
                    self.snap_table_len = pos;
                    self.state = OpenState::Ready;
                    self.finish_open()?;
                } else if pos >= MAX_SNAPSHOT_TABLE_BYTES {
                    return Err(Qcow2Error::TooLarge {
                        what: Meta::SnapshotTable,
                        bytes: pos,
                        limit: MAX_SNAPSHOT_TABLE_BYTES,
                    });
                } else if (bytes.len() as u64) < load.len {
                    return Err(short);
                } else {
                    self.state = OpenState::Snapshots { pos };
                }
            }
            OpenState::Ready => return Err(Qcow2Error::Protocol),
        }
        Ok(())
    }

    /// Parses snapshot entries from `b`; returns bytes consumed (all of
    /// `b`, or up to the end of the last entry).
    fn scan_snapshots(&mut self, b: &[u8]) -> Result<u64, Qcow2Error> {
        let nb = self.area.header.nb_snapshots;
        let mut at = 0usize;
        // Each pass consumes at least one byte or finishes an entry.
        while at < b.len() && self.snap.index < nb {
            if self.snap.skip > 0 {
                let n = (self.snap.skip).min((b.len() - at) as u64);
                self.snap.skip -= n;
                at += n as usize;
                if self.snap.skip == 0 {
                    self.snap.index += 1;
                    self.snap.hdr_fill = 0;
                }
                continue;
            }
            let fill = self.snap.hdr_fill as usize;
            let n = (40 - fill).min(b.len() - at);
            self.snap.hdr[fill..fill + n].copy_from_slice(&b[at..at + n]);
            self.snap.hdr_fill += n as u8;
            at += n;
            if self.snap.hdr_fill < 40 {
                continue;
            }
            let bad = Qcow2Error::BadSnapshotTable {
                index: self.snap.index,
            };
            let hdr = self.snap.hdr;
            let l1_off = be64(&hdr, 0).ok_or(bad)?;
            let l1_n = be32(&hdr, 8).ok_or(bad)? as u64;
            let id_len = u16::from_be_bytes([hdr[12], hdr[13]]) as u64;
            let name_len = u16::from_be_bytes([hdr[14], hdr[15]]) as u64;
            let extra = be32(&hdr, 36).ok_or(bad)?;
            if extra > MAX_SNAPSHOT_EXTRA {
                return Err(bad);
            }
            // Snapshot L1 tables: aligned, inside the file, within QEMU's
            // L1 size limit (CVE-2014-0144's class).
            if l1_n * 8 > MAX_L1_BYTES {
                return Err(Qcow2Error::TooLarge {
                    what: Meta::InactiveL1,
                    bytes: l1_n * 8,
                    limit: MAX_L1_BYTES,
                });
            }
            if l1_n > 0 {
                self.lay
                    .check_table(Meta::InactiveL1, l1_off, l1_n * 8, self.file_end)?;
                if self.snap_l1_n < SNAPSHOT_L1_CAP {
                    self.snap_l1[self.snap_l1_n] = Extent {
                        what: Meta::InactiveL1,
                        start: l1_off,
                        end: l1_off + l1_n * 8,
                    };
                    self.snap_l1_n += 1;
                }
            }
            let total =
                super::header::align8(40 + extra as usize + id_len as usize + name_len as usize)
                    as u64;
            self.snap.skip = total - 40;
            if self.snap.skip == 0 {
                self.snap.index += 1;
                self.snap.hdr_fill = 0;
            }
        }
        Ok(at as u64)
    }

    fn finish_open(&mut self) -> Result<(), Qcow2Error> {
        self.check_fixed_overlaps()?;
        let w = self.words.as_ref();
        let used = |t: &[u64]| t.iter().rposition(|&e| e != 0).map_or(0, |i| i + 1);
        self.l1_used = used(&w[self.l1_at..self.l1_at + self.l1_len]);
        self.rt_used = used(&w[self.rt_at..self.rt_at + self.rt_len]);
        self.write_ready = self.read_only;
        Ok(())
    }

    /// The fixed metadata extents, cluster-rounded.
    pub(crate) fn fixed_extents(&self, out: &mut [Extent; 6 + SNAPSHOT_L1_CAP]) -> usize {
        let h = &self.area.header;
        let c = self.lay.cluster_size();
        let round = |s: u64, len: u64| s.saturating_add(len).div_ceil(c).saturating_mul(c);
        let mut n = 0;
        let mut push = |what, start, len: u64| {
            if len > 0 {
                out[n] = Extent {
                    what,
                    start,
                    end: round(start, len),
                };
                n += 1;
            }
        };
        push(Meta::Header, 0, c);
        push(Meta::L1Table, h.l1_table_offset, self.l1_len as u64 * 8);
        push(
            Meta::RefcountTable,
            h.refcount_table_offset,
            self.rt_len as u64 * 8,
        );
        if h.nb_snapshots > 0 {
            let len = if self.snap_table_len > 0 {
                self.snap_table_len
            } else {
                h.nb_snapshots as u64 * 40
            };
            push(Meta::SnapshotTable, h.snapshots_offset, len);
        }
        if let Some(bm) = self.area.bitmaps {
            push(
                Meta::BitmapDirectory,
                bm.directory_offset,
                bm.directory_size,
            );
        }
        for e in &self.snap_l1[..self.snap_l1_n] {
            push(Meta::InactiveL1, e.start, e.end - e.start);
        }
        n
    }

    /// QEMU's overlap check for the fixed structures: none may overlap
    /// another (snapshot L1 tables may coincide with the active one only
    /// if QEMU wrote them so; it never does).
    fn check_fixed_overlaps(&self) -> Result<(), Qcow2Error> {
        let mut ex = [Extent {
            what: Meta::Header,
            start: 0,
            end: 0,
        }; 6 + SNAPSHOT_L1_CAP];
        let n = self.fixed_extents(&mut ex);
        for i in 0..n {
            for j in i + 1..n {
                let (a, b) = (ex[i], ex[j]);
                if a.start < b.end && b.start < a.end {
                    return Err(Qcow2Error::Overlap {
                        what: b.what,
                        with: a.what,
                        offset: a.start.max(b.start),
                    });
                }
            }
        }
        Ok(())
    }

    /// The first fixed structure, active L2 table or refcount block the
    /// host range `[start, end)` overlaps (QEMU's "cached" overlap check
    /// before every write).
    pub(crate) fn overlap_check(&self, start: u64, end: u64) -> Result<(), Qcow2Error> {
        let mut ex = [Extent {
            what: Meta::Header,
            start: 0,
            end: 0,
        }; 6 + SNAPSHOT_L1_CAP];
        let n = self.fixed_extents(&mut ex);
        for e in &ex[..n] {
            if start < e.end && e.start < end {
                return Err(Qcow2Error::Overlap {
                    what: Meta::Data,
                    with: e.what,
                    offset: start.max(e.start),
                });
            }
        }
        let c = self.lay.cluster_size();
        let w = self.words.as_ref();
        let hit = |off: u64| off != 0 && start < off.saturating_add(c) && off < end;
        for &e in &w[self.l1_at..self.l1_at + self.l1_used] {
            let off = e & super::layout::OFFSET_MASK;
            if hit(off) {
                return Err(Qcow2Error::Overlap {
                    what: Meta::Data,
                    with: Meta::L2Table,
                    offset: off,
                });
            }
        }
        for &e in &w[self.rt_at..self.rt_at + self.rt_used] {
            let off = e & !0x1ff;
            if hit(off) {
                return Err(Qcow2Error::Overlap {
                    what: Meta::Data,
                    with: Meta::RefcountBlock,
                    offset: off,
                });
            }
        }
        Ok(())
    }

    /// Whether opening finished.
    pub fn is_ready(&self) -> bool {
        self.state == OpenState::Ready
    }

    /// The parsed cluster 0.
    pub fn header_area(&self) -> &HeaderArea {
        &self.area
    }

    /// Geometry.
    pub fn layout(&self) -> &Layout {
        &self.lay
    }

    /// Virtual disk size.
    pub fn size(&self) -> u64 {
        self.lay.size
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Host file length as far as the image knows (grows as clusters are
    /// allocated past the end).
    pub fn file_end(&self) -> u64 {
        self.file_end
    }

    /// The backing file name, if any.
    pub fn backing_name(&self) -> Option<&[u8]> {
        self.area
            .has_backing()
            .then(|| self.area.backing_name.as_bytes())
    }

    /// The backing format recorded in the image (empty: not recorded).
    pub fn backing_format(&self) -> &[u8] {
        self.area.backing_format.as_bytes()
    }

    /// Whether any metadata waits for a flush plan.
    pub fn has_dirty_metadata(&self) -> bool {
        let w = self.words.as_ref();
        self.l2c.dirty_count(w) > 0
            || self.rbc.dirty_count(w) > 0
            || self.l1_dirty.0 < self.l1_dirty.1
            || self.rt_dirty.0 < self.rt_dirty.1
            || self.header_dirty
            || self.frees_n > 0
    }

    pub(crate) fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    pub(crate) fn l1_entry(&self, i: u64) -> u64 {
        self.words.as_ref()[self.l1_at + i as usize]
    }

    pub(crate) fn rt_entry(&self, i: u64) -> u64 {
        self.words.as_ref()[self.rt_at + i as usize]
    }

    /// The L2 table offset for L1 index `l1i` (0: none), checked.
    pub(crate) fn l2_offset(&self, l1i: u64) -> Result<(u64, bool), Qcow2Error> {
        let (off, copied) = self.lay.decode_l1(self.l1_entry(l1i), l1i)?;
        if off != 0 {
            self.check_meta_cluster(Meta::L2Table, off)?;
        }
        Ok((off, copied))
    }

    /// A metadata cluster must not be cluster 0 and must lie in the file.
    pub(crate) fn check_meta_cluster(&self, what: Meta, off: u64) -> Result<(), Qcow2Error> {
        if off < self.lay.cluster_size() {
            return Err(Qcow2Error::Overlap {
                what,
                with: Meta::Header,
                offset: off,
            });
        }
        if off > MAX_HOST_OFFSET || off >= self.file_end {
            return Err(Qcow2Error::BeyondEnd { what, offset: off });
        }
        Ok(())
    }

    /// Host data must lie inside the file: an entry pointing past its end
    /// is corruption (a truncated or hostile image), refused rather than
    /// read as zeroes or written sparse far past the end.
    pub(crate) fn check_data(&self, host: u64, len: u64) -> Result<(), Qcow2Error> {
        match host.checked_add(len) {
            Some(end)
                if end <= self.file_end.max(self.lay.cluster_size())
                    && end <= MAX_HOST_OFFSET + 1 =>
            {
                Ok(())
            }
            _ => Err(Qcow2Error::BeyondEnd {
                what: Meta::Data,
                offset: host,
            }),
        }
    }

    /// QEMU's overlap check for a metadata cluster before it is used (and
    /// so before it can ever be written back): an L2 table or refcount
    /// block must not be one of the fixed structures (an L1 entry pointing
    /// at the L1 table itself would make every L2 update overwrite the L1),
    /// and an L2 table must not be a refcount block or the reverse.
    pub(crate) fn check_table_overlap(&self, what: Meta, off: u64) -> Result<(), Qcow2Error> {
        let c = self.lay.cluster_size();
        let mut ex = [Extent {
            what: Meta::Header,
            start: 0,
            end: 0,
        }; 6 + SNAPSHOT_L1_CAP];
        let n = self.fixed_extents(&mut ex);
        for e in &ex[..n] {
            if off < e.end && e.start < off.saturating_add(c) {
                return Err(Qcow2Error::Overlap {
                    what,
                    with: e.what,
                    offset: off,
                });
            }
        }
        let w = self.words.as_ref();
        let (table, with) = match what {
            Meta::L2Table => (
                &w[self.rt_at..self.rt_at + self.rt_used],
                Meta::RefcountBlock,
            ),
            _ => (&w[self.l1_at..self.l1_at + self.l1_used], Meta::L2Table),
        };
        if table.iter().any(|&e| e & super::layout::OFFSET_MASK == off) {
            return Err(Qcow2Error::Overlap {
                what,
                with,
                offset: off,
            });
        }
        Ok(())
    }

    fn install_cluster(&mut self, l2: bool, load: Load, bytes: &[u8]) -> Result<(), Qcow2Error> {
        let c = self.lay.cluster_size();
        if load.len != c || self.lay.in_cluster(load.offset) != 0 {
            return Err(Qcow2Error::Protocol);
        }
        self.check_meta_cluster(load.what, load.offset)?;
        self.check_table_overlap(load.what, load.offset)?;
        let geom = if l2 { self.l2c } else { self.rbc };
        if geom.find(self.words.as_ref(), load.offset).is_some() {
            // Loaded twice (two requests asked at once): keep the cached copy,
            // it may be newer than the disk.
            return Ok(());
        }
        let slot = geom
            .victim(self.words.as_ref())
            .ok_or(Qcow2Error::Protocol)?;
        let clock = self.tick();
        let w = self.words.as_mut();
        geom.assign(w, slot, load.offset, clock);
        let r = geom.range(slot);
        let dst = &mut w[r];
        for (i, d) in dst.iter_mut().enumerate() {
            *d = be64(bytes, i * 8).unwrap_or(0);
        }
        // A partial last word (file ends mid-word) reads as zero-padded.
        let full = bytes.len() / 8;
        if bytes.len() % 8 != 0 {
            let mut a = [0u8; 8];
            a[..bytes.len() % 8].copy_from_slice(&bytes[full * 8..]);
            dst[full] = u64::from_be_bytes(a);
        }
        Ok(())
    }

    /// The cached slot of the cluster at `off`, or what to do first.
    pub(crate) fn slot_for(&mut self, l2: bool, off: u64) -> Result<usize, Need> {
        let geom = if l2 { self.l2c } else { self.rbc };
        if let Some(i) = geom.find(self.words.as_ref(), off) {
            let clock = self.tick();
            geom.touch(self.words.as_mut(), i, clock);
            return Ok(i);
        }
        if geom.victim(self.words.as_ref()).is_none() {
            return Err(Need::Flush);
        }
        Err(Need::Load(Load {
            what: if l2 {
                Meta::L2Table
            } else {
                Meta::RefcountBlock
            },
            offset: off,
            len: self.lay.cluster_size(),
            epoch: self.epoch,
        }))
    }

    /// Decoded L2 entry `idx` of the table in slot `slot`.
    pub(crate) fn l2_get(
        &self,
        slot: usize,
        idx: u64,
        guest: u64,
    ) -> Result<ClusterMap, Qcow2Error> {
        let r = self.l2c.range(slot);
        let w = &self.words.as_ref()[r];
        let k = (idx * self.lay.l2_entry_words()) as usize;
        let e = w.get(k).copied().unwrap_or(0);
        let b = if self.lay.extended_l2 {
            w.get(k + 1).copied().unwrap_or(0)
        } else {
            0
        };
        self.lay.decode_l2(e, b, guest)
    }

    /// Sets L2 entry `idx` in slot `slot` (raw words) and marks it dirty.
    pub(crate) fn l2_put(&mut self, slot: usize, idx: u64, entry: (u64, u64)) {
        let r = self.l2c.range(slot);
        let ew = self.lay.l2_entry_words();
        let ext = self.lay.extended_l2;
        let geom = self.l2c;
        let w = self.words.as_mut();
        let k = r.start + (idx * ew) as usize;
        if k < r.end {
            w[k] = entry.0;
            if ext && k + 1 < r.end {
                w[k + 1] = entry.1;
            }
        }
        geom.set_dirty(w, slot, true);
    }

    /// Maps the first run of `[offset, offset + max_len)` (clipped to the
    /// disk): where its bytes are, or which metadata to load first.
    ///
    /// A run never crosses an L2 table (so one answer needs at most one
    /// table) and covers whole subclusters of one kind, merging clusters
    /// that are contiguous in the host file.
    pub fn map(&mut self, offset: u64, max_len: u64) -> Result<MapResult, Qcow2Error> {
        if self.state != OpenState::Ready {
            return Err(Qcow2Error::Protocol);
        }
        if offset >= self.lay.size || max_len == 0 {
            return Err(Qcow2Error::OutOfRange);
        }
        let len = max_len.min(self.lay.size - offset);
        let end = offset + len;
        let (l1i, _) = self.lay.split(offset);
        let (l2_off, _) = self.l2_offset(l1i)?;
        let span = self.lay.l2_span();
        if l2_off == 0 {
            // Unallocated L2 tables: merge following empty L1 entries.
            let mut stop = ((l1i + 1) * span).min(end);
            let mut i = l1i + 1;
            while stop < end && self.l1_entry(i) & super::layout::OFFSET_MASK == 0 {
                stop = ((i + 1) * span).min(end);
                i += 1;
            }
            return Ok(MapResult::Run(Run {
                offset,
                length: stop - offset,
                mapping: Mapping::Unallocated,
            }));
        }
        let slot = match self.slot_for(true, l2_off) {
            Ok(s) => s,
            Err(n) => return Ok(MapResult::Need(n)),
        };
        let table_end = ((l1i + 1) * span).min(end);
        self.run_in_table(slot, offset, table_end)
            .map(MapResult::Run)
    }

    /// The run at `offset` inside the L2 table in `slot`, up to `stop`.
    pub(crate) fn run_in_table(
        &self,
        slot: usize,
        offset: u64,
        stop: u64,
    ) -> Result<Run, Qcow2Error> {
        let cb = self.lay.cluster_bits;
        let sb = self.lay.subcluster_bits();
        let sub = 1u64 << sb;
        let mut pos = offset;
        let mut first: Option<Mapping> = None;
        // Each iteration consumes at least one subcluster or a whole
        // cluster, so this is bounded by the table's entries × 32.
        while pos < stop {
            let cstart = pos >> cb << cb;
            let (_, l2i) = self.lay.split(pos);
            let m = self.l2_get(slot, l2i, cstart)?;
            let (kind, piece_end) = match m {
                ClusterMap::Compressed { host, len } => {
                    let k = Mapping::Compressed {
                        host,
                        len,
                        cluster_start: cstart,
                    };
                    if first.is_some() {
                        break; // each compressed cluster is its own run
                    }
                    (k, cstart + (1 << cb))
                }
                ClusterMap::Standard {
                    host, alloc, zero, ..
                } => {
                    let si = ((pos - cstart) >> sb) as u32;
                    let bit = 1u32 << si;
                    let kind = if alloc & bit != 0 {
                        Mapping::Data {
                            host: host + (pos - cstart),
                        }
                    } else if zero & bit != 0 {
                        Mapping::Zero
                    } else {
                        Mapping::Unallocated
                    };
                    // Extend over following subclusters of the same kind
                    // within this cluster.
                    let mut n = si + 1;
                    let subs = self.lay.subclusters();
                    while n < subs {
                        let b = 1u32 << n;
                        let same = match kind {
                            Mapping::Data { .. } => alloc & b != 0,
                            Mapping::Zero => alloc & b == 0 && zero & b != 0,
                            _ => alloc & b == 0 && zero & b == 0,
                        };
                        if !same {
                            break;
                        }
                        n += 1;
                    }
                    (kind, cstart + n as u64 * sub)
                }
            };
            match (first, kind) {
                (None, k) => first = Some(k),
                (Some(Mapping::Data { host: h0 }), Mapping::Data { host }) => {
                    if host != h0 + (pos - offset) {
                        break;
                    }
                }
                (Some(Mapping::Zero), Mapping::Zero) => {}
                (Some(Mapping::Unallocated), Mapping::Unallocated) => {}
                _ => break,
            }
            pos = piece_end.min(stop);
            if matches!(kind, Mapping::Compressed { .. }) {
                break;
            }
        }
        Ok(Run {
            offset,
            length: pos - offset,
            mapping: first.unwrap_or(Mapping::Unallocated),
        })
    }

    /// Whether the bitmaps extension data is marked consistent.
    pub fn bitmaps_consistent(&self) -> bool {
        self.area.bitmaps.is_some() && self.area.header.autoclear_features & autoclear::BITMAPS != 0
    }
}
