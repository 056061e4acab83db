//! Clusters for metadata the caller writes itself (persistent bitmaps),
//! their release, and the header's bitmaps extension.

use super::error::Qcow2Error;
use super::header::autoclear;
use super::image::{Need, Qcow2};
use super::plan::{Plan, Planned, Sink};
use super::refcount::Stop;

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
