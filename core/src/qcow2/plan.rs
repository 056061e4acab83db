//! Plans: the steps a write, write-zeroes, discard, flush or refcount
//! table growth emits, the ticket that commits or aborts it, and the
//! checks every planning call shares.
//!
//! A plan is a sequence of [`Step`]s emitted into a sink, plus a
//! [`Ticket`]. The caller carries the steps out in order (steps between two
//! [`Step::Flush`] barriers touch disjoint host ranges and may run
//! concurrently), then calls [`Qcow2::commit`] with the ticket, or
//! [`Qcow2::abort`] if a step failed. A plan may cover less than asked
//! ([`Planned::covered`]; zero for a prerequisite): the caller plans again
//! from where it ended.

use super::error::{Meta, Qcow2Error};
use super::image::{Need, Qcow2};
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
    pub(super) kind: MetaKind,
    pub(super) a: u64,
    pub(super) b: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MetaKind {
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
    pub(super) kind: TicketKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TicketKind {
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
pub(super) struct WriteRun {
    pub(super) slot: usize,
    /// Guest byte range written (with fills).
    pub(super) start: u64,
    pub(super) end: u64,
    /// Host cluster offset of the run's first cluster when newly
    /// allocated, 0 for in-place.
    pub(super) new_host: u64,
    /// Clusters in the run.
    pub(super) clusters: u64,
    /// Free-queue slots reserved for commit.
    pub(super) reserved: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ZeroRun {
    pub(super) slot: usize,
    pub(super) start: u64,
    pub(super) end: u64,
    /// Free the host clusters (write-zeroes with unmap, discard).
    pub(super) unmap: bool,
    /// Discard: unallocated result instead of zero when nothing shows
    /// through.
    pub(super) discard: bool,
    /// Free-queue slots reserved for commit.
    pub(super) reserved: usize,
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

pub(super) type Sink<'a> = dyn FnMut(Step) + 'a;

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
    pub(super) fn writable(&self) -> Result<(), Qcow2Error> {
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

    pub(super) fn finish(
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
}
