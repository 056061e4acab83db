//! The block-driver stack under one export, built from the core's block
//! logic: throttle → blkdebug → dirty bitmaps → copy-on-write overlay →
//! raw window → backend.
//!
//! [`Device`] is what connections talk to. Its I/O methods are
//! synchronous (they run on the blocking pool when the backend blocks);
//! only admission through the throttle is async, because it sleeps.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use blockwire_core::block::Extent;
use blockwire_core::block::blkdebug::{Blkdebug, BlkdebugError, OpKind};
use blockwire_core::block::contract::{BlockError, ExtentEmitter, StatusQuery};
use blockwire_core::block::dirty_bitmap::{BitmapError, BitmapSet, CONTEXT_PREFIX};
use blockwire_core::block::overlay::{Overlay, ReadStep, Source, WriteStep};
use blockwire_core::block::raw_window::RawWindow;
use blockwire_core::block::throttle::{Admission, Direction, Throttle, ThrottleLimits};

use crate::backend::{Backend, Caps, errno};

/// Bitmaps one export can carry.
pub const MAX_BITMAPS: usize = 16;
/// Blkdebug rules one export can carry.
pub const MAX_BLKDEBUG_RULES: usize = 32;
/// Copy-on-write cluster size (qcow2's default).
pub const COW_CLUSTER: u64 = 64 << 10;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn block_err(e: BlockError) -> io::Error {
    errno(e.nbd_errno() as i32)
}

/// A metadata context an export offers; its position is its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContextKind {
    Allocation,
    AllocationDepth,
    DirtyBitmap(String),
}

impl ContextKind {
    pub fn name(&self) -> String {
        match self {
            ContextKind::Allocation => "base:allocation".into(),
            ContextKind::AllocationDepth => "qemu:allocation-depth".into(),
            ContextKind::DirtyBitmap(n) => format!("{CONTEXT_PREFIX}{n}"),
        }
    }
}

/// A backend seen through the raw driver's `offset=` / `size=` window.
pub struct Window {
    child: Arc<dyn Backend>,
    window: RawWindow,
}

impl Window {
    pub fn new(child: Arc<dyn Backend>, offset: u64, size: Option<u64>) -> io::Result<Self> {
        let window = RawWindow::new(child.size(), offset, size).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "window offset={offset} size={size:?} does not fit a {}-byte image \
                     (size must be a multiple of 512): {e:?}",
                    child.size()
                ),
            )
        })?;
        Ok(Self { child, window })
    }

    fn at(&self, offset: u64, len: u64) -> io::Result<u64> {
        self.window.to_child(offset, len).map_err(block_err)
    }
}

impl Backend for Window {
    fn size(&self) -> u64 {
        self.window.size()
    }
    fn caps(&self) -> Caps {
        self.child.caps()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.child.read(self.at(offset, buf.len() as u64)?, buf)
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.child.write(self.at(offset, data.len() as u64)?, data)
    }
    fn flush(&self) -> io::Result<()> {
        self.child.flush()
    }
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.child.trim(self.at(offset, len)?, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool, fast: bool) -> io::Result<()> {
        self.child
            .write_zeroes(self.at(offset, len)?, len, may_unmap, fast)
    }
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        self.child.cache(self.at(offset, len)?, len)
    }
    fn allocation(
        &self,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(u64, u64) -> bool,
    ) -> io::Result<()> {
        let child_at = self.at(offset, len)?;
        let mut at = offset;
        self.child.allocation(child_at, len, &mut |l, f| {
            let e = self.window.clip_extent(at, Extent::new(l, f));
            at += e.length;
            e.length > 0 && sink(e.length, e.flags)
        })
    }
    fn latency(&self) -> Option<Duration> {
        self.child.latency()
    }
}

struct Cow {
    top: Arc<dyn Backend>,
    map: Mutex<Overlay<Vec<u64>>>,
    /// The overlay wants overlapping writes serialised (as QEMU does);
    /// writes are serialised as a whole, reads are not.
    writes: Mutex<()>,
}

/// Everything a [`Device`] is built from.
pub struct DeviceConfig {
    pub backend: Arc<dyn Backend>,
    /// Copy-on-write top (same size as the backend), if any.
    pub cow_top: Option<Arc<dyn Backend>>,
    pub read_only: bool,
    pub dirty_bitmaps: Vec<String>,
    pub throttle: Option<ThrottleLimits>,
    pub blkdebug: Option<String>,
}

/// The stack of one export.
pub struct Device {
    base: Arc<dyn Backend>,
    cow: Option<Cow>,
    bitmaps: Mutex<BitmapSet<Vec<u64>, MAX_BITMAPS>>,
    throttle: Option<Mutex<Throttle>>,
    blkdebug: Option<Mutex<Blkdebug<MAX_BLKDEBUG_RULES>>>,
    read_only: bool,
    size: u64,
    epoch: std::time::Instant,
}

impl Device {
    pub fn new(cfg: DeviceConfig) -> io::Result<Self> {
        let size = cfg.backend.size();
        let cow = match cfg.cow_top {
            None => None,
            Some(top) => {
                if top.size() < size {
                    return Err(io::Error::other("copy-on-write top smaller than its base"));
                }
                let map = Overlay::new_vec(size, COW_CLUSTER)
                    .map_err(|e| io::Error::other(format!("copy-on-write map: {e:?}")))?;
                Some(Cow {
                    top,
                    map: Mutex::new(map),
                    writes: Mutex::new(()),
                })
            }
        };
        let mut bitmaps = BitmapSet::new();
        for name in &cfg.dirty_bitmaps {
            bitmaps.add_vec(name, size, None).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("dirty bitmap {name:?}: {}", bitmap_error(e)),
                )
            })?;
        }
        let throttle = match cfg.throttle {
            Some(l) if l.is_enabled() => Some(Mutex::new(Throttle::new(l).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("throttle: {e:?}"))
            })?)),
            _ => None,
        };
        let blkdebug = match cfg.blkdebug {
            Some(rules) => Some(Mutex::new(Blkdebug::parse(&rules).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("blkdebug rules {rules:?}: {}", blkdebug_error(e)),
                )
            })?)),
            None => None,
        };
        let read_only = cfg.read_only || (cow.is_none() && cfg.backend.caps().read_only);
        Ok(Self {
            base: cfg.backend,
            cow,
            bitmaps: Mutex::new(bitmaps),
            throttle,
            blkdebug,
            read_only,
            size,
            epoch: std::time::Instant::now(),
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Capabilities of the layer that takes writes.
    pub fn caps(&self) -> Caps {
        let base = self.base.caps();
        match &self.cow {
            Some(c) => {
                let top = c.top.caps();
                Caps {
                    read_only: self.read_only,
                    blocking: base.blocking || top.blocking,
                    sparse_reads: base.sparse_reads && top.sparse_reads,
                    ..top
                }
            }
            None => Caps {
                read_only: self.read_only,
                ..base
            },
        }
    }

    /// Whether a status lookup before a read can find zero runs now
    /// (cheap: called per read).
    pub fn maybe_sparse(&self) -> bool {
        self.cow.is_some() || self.base.maybe_sparse()
    }

    pub fn latency(&self) -> Option<Duration> {
        self.base.latency()
    }

    /// Whether requests may have to wait for the throttle.
    pub fn throttled(&self) -> bool {
        self.throttle.is_some()
    }

    pub fn has_bitmap(&self, name: &str) -> bool {
        lock(&self.bitmaps).get(name).is_some()
    }

    /// Waits until the throttle admits a request of `bytes`.
    pub async fn admit(&self, dir: Direction, bytes: u64) {
        let Some(t) = &self.throttle else { return };
        loop {
            let now = self.epoch.elapsed().as_nanos() as u64;
            let wait = match lock(t).try_start(now, dir, bytes) {
                Admission::Start => return,
                Admission::NotBefore(at) => at.saturating_sub(now),
            };
            tokio::time::sleep(Duration::from_nanos(wait)).await;
        }
    }

    fn inject(&self, kind: OpKind, offset: u64, len: u64) -> io::Result<()> {
        if let Some(d) = &self.blkdebug {
            if let Some(inj) = lock(d).on_request(kind, offset, len) {
                return Err(errno(inj.errno as i32));
            }
        }
        Ok(())
    }

    fn mark_dirty(&self, offset: u64, len: u64) {
        lock(&self.bitmaps).mark(offset, len);
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(errno(libc::EPERM))
        } else {
            Ok(())
        }
    }

    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.begin_read(offset, buf.len() as u64)?;
        self.read_data(offset, buf)
    }

    /// The once-per-request part of a read (error injection), for a
    /// caller that then reads the request in pieces with
    /// [`read_data`](Self::read_data).
    pub fn begin_read(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inject(OpKind::Read, offset, len)
    }

    /// Reads `buf` from `offset`, without the per-request part.
    pub fn read_data(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let Some(cow) = &self.cow else {
            return self.base.read(offset, buf);
        };
        let mut steps: Vec<ReadStep> = Vec::new();
        lock(&cow.map)
            .plan_read(offset, buf.len() as u64, &mut |s| {
                steps.push(s);
                true
            })
            .map_err(block_err)?;
        for s in steps {
            let dst = &mut buf[s.buf_offset as usize..(s.buf_offset + s.length) as usize];
            match s.source {
                Source::Top => cow.top.read(s.offset, dst)?,
                Source::Base => self.base.read(s.offset, dst)?,
                Source::Zeroes => dst.fill(0),
            }
        }
        Ok(())
    }

    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        self.writable()?;
        self.inject(OpKind::Write, offset, data.len() as u64)?;
        match &self.cow {
            None => self.base.write(offset, data)?,
            Some(cow) => {
                let _serial = lock(&cow.writes);
                let mut steps = Vec::new();
                lock(&cow.map)
                    .plan_write(offset, data.len() as u64, &mut |s| {
                        steps.push(s);
                        true
                    })
                    .map_err(block_err)?;
                self.run_cow_steps(cow, &steps, data)?;
                lock(&cow.map)
                    .commit_write(offset, data.len() as u64)
                    .map_err(block_err)?;
            }
        }
        self.mark_dirty(offset, data.len() as u64);
        if fua { self.flush_layers() } else { Ok(()) }
    }

    fn run_cow_steps(&self, cow: &Cow, steps: &[WriteStep], data: &[u8]) -> io::Result<()> {
        for s in steps {
            match *s {
                WriteStep::CopyUp { offset, length } => {
                    let mut tmp = vec![0u8; length as usize];
                    self.base.read(offset, &mut tmp)?;
                    cow.top.write(offset, &tmp)?;
                }
                WriteStep::ZeroTop { offset, length } => {
                    cow.top.write_zeroes(offset, length, true, false)?
                }
                WriteStep::WriteTop {
                    offset,
                    length,
                    buf_offset,
                } => cow.top.write(
                    offset,
                    &data[buf_offset as usize..(buf_offset + length) as usize],
                )?,
                // Releasing top storage is optional; a failure only costs space.
                WriteStep::DiscardTop { offset, length } => {
                    let _ = cow.top.trim(offset, length);
                }
            }
        }
        Ok(())
    }

    fn flush_layers(&self) -> io::Result<()> {
        match &self.cow {
            Some(c) => c.top.flush(),
            None => self.base.flush(),
        }
    }

    pub fn flush(&self) -> io::Result<()> {
        self.inject(OpKind::Flush, 0, 0)?;
        self.flush_layers()
    }

    pub fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.writable()?;
        self.inject(OpKind::Discard, offset, len)?;
        match &self.cow {
            None => self.base.trim(offset, len)?,
            Some(cow) => {
                let _serial = lock(&cow.writes);
                let mut steps = Vec::new();
                lock(&cow.map)
                    .plan_trim(offset, len, &mut |s| {
                        steps.push(s);
                        true
                    })
                    .map_err(block_err)?;
                self.run_cow_steps(cow, &steps, &[])?;
                lock(&cow.map).commit_trim(offset, len).map_err(block_err)?;
            }
        }
        self.mark_dirty(offset, len);
        if fua { self.flush_layers() } else { Ok(()) }
    }

    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_unmap: bool,
        fast: bool,
        fua: bool,
    ) -> io::Result<()> {
        self.writable()?;
        self.inject(OpKind::Zero, offset, len)?;
        match &self.cow {
            None => self.base.write_zeroes(offset, len, may_unmap, fast)?,
            Some(cow) => {
                let _serial = lock(&cow.writes);
                let mut steps = Vec::new();
                lock(&cow.map)
                    .plan_write_zeroes(offset, len, &mut |s| {
                        steps.push(s);
                        true
                    })
                    .map_err(block_err)?;
                self.run_cow_steps(cow, &steps, &[])?;
                lock(&cow.map)
                    .commit_write_zeroes(offset, len)
                    .map_err(block_err)?;
            }
        }
        self.mark_dirty(offset, len);
        if fua { self.flush_layers() } else { Ok(()) }
    }

    pub fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        match &self.cow {
            Some(c) => c.top.cache(offset, len),
            None => self.base.cache(offset, len),
        }
    }

    /// `base:allocation` answer into `sink`.
    pub fn allocation(
        &self,
        q: &StatusQuery,
        sink: &mut dyn FnMut(Extent) -> bool,
    ) -> io::Result<()> {
        match &self.cow {
            None => {
                let mut em = ExtentEmitter::new(q, sink);
                self.base
                    .allocation(q.offset, q.length, &mut |l, f| em.push(l, f))?;
                em.finish();
                Ok(())
            }
            Some(cow) => {
                let mut base_err = None;
                let mut base = |offset: u64, max_len: u64| {
                    let mut first = Extent::new(max_len, 0);
                    if let Err(e) = self.base.allocation(offset, max_len, &mut |l, f| {
                        first = Extent::new(l.min(max_len), f);
                        false
                    }) {
                        base_err = Some(e);
                    }
                    first
                };
                lock(&cow.map)
                    .allocation_status(q, &mut base, sink)
                    .map_err(block_err)?;
                base_err.map_or(Ok(()), Err)
            }
        }
    }

    /// Answers one metadata context for `q`.
    pub fn block_status(
        &self,
        ctx: &ContextKind,
        q: &StatusQuery,
        sink: &mut dyn FnMut(Extent) -> bool,
    ) -> io::Result<()> {
        match ctx {
            ContextKind::Allocation => self.allocation(q, sink),
            ContextKind::AllocationDepth => match &self.cow {
                // A single layer holds every byte.
                None => {
                    let mut em = ExtentEmitter::new(q, sink);
                    em.push(q.length, 1);
                    em.finish();
                    Ok(())
                }
                Some(cow) => lock(&cow.map)
                    .allocation_depth(q, &mut |_, l| Extent::new(l, 1), sink)
                    .map(|_| ())
                    .map_err(block_err),
            },
            ContextKind::DirtyBitmap(name) => {
                let set = lock(&self.bitmaps);
                let bm = set.get(name).ok_or_else(|| errno(libc::EINVAL))?;
                bm.block_status(q, sink)
                    .map(|_| ())
                    .map_err(|_| errno(libc::EINVAL))
            }
        }
    }
}

fn bitmap_error(e: BitmapError) -> String {
    format!("{e:?}")
}

fn blkdebug_error(e: BlkdebugError) -> &'static str {
    match e {
        BlkdebugError::Full => "too many rules",
        BlkdebugError::MissingEvent => "a rule without event=",
        BlkdebugError::UnknownEvent => "unknown event name",
        BlkdebugError::UnknownKey => "unknown key for this kind of rule",
        BlkdebugError::BadValue => "a value that does not parse",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;

    fn mem(size: u64) -> Arc<dyn Backend> {
        Arc::new(MemoryBackend::new(size).unwrap())
    }

    fn dev(cfg: impl FnOnce(&mut DeviceConfig)) -> Device {
        let mut c = DeviceConfig {
            backend: mem(1 << 20),
            cow_top: None,
            read_only: false,
            dirty_bitmaps: vec![],
            throttle: None,
            blkdebug: None,
        };
        cfg(&mut c);
        Device::new(c).unwrap()
    }

    fn status(d: &Device, ctx: &ContextKind, off: u64, len: u64) -> Vec<(u64, u64)> {
        let mut v = vec![];
        d.block_status(ctx, &StatusQuery::new(off, len), &mut |e| {
            v.push((e.length, e.flags));
            true
        })
        .unwrap();
        v
    }

    #[test]
    fn cow_keeps_base_untouched() {
        let base = mem(1 << 20);
        base.write(0, &[1u8; 8192]).unwrap();
        let d = dev(|c| {
            c.backend = base.clone();
            c.cow_top = Some(mem(1 << 20));
        });
        d.write(100, &[2u8; 10], false).unwrap();
        let mut b = [0u8; 8192];
        d.read(0, &mut b).unwrap();
        assert_eq!(&b[98..112], &[1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1]);
        base.read(0, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 1));
        assert_eq!(
            status(&d, &ContextKind::AllocationDepth, 0, 128 << 10),
            vec![(64 << 10, 1), (64 << 10, 2)]
        );
        d.trim(0, 1 << 20, false).unwrap();
        d.read(0, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
    }

    #[test]
    fn bitmap_records_writes() {
        let d = dev(|c| c.dirty_bitmaps = vec!["b0".into()]);
        d.write(70_000, &[1u8; 10], false).unwrap();
        let ctx = ContextKind::DirtyBitmap("b0".into());
        assert_eq!(ctx.name(), "qemu:dirty-bitmap:b0");
        assert_eq!(
            status(&d, &ctx, 0, 1 << 20),
            vec![(64 << 10, 0), (64 << 10, 1), ((1 << 20) - (128 << 10), 0)]
        );
    }

    #[test]
    fn blkdebug_fails_matching_request_only() {
        let d = dev(|c| c.blkdebug = Some("event=read,errno=5,sector=8,once=on".into()));
        let mut b = [0u8; 512];
        d.read(0, &mut b).unwrap();
        assert_eq!(d.read(4096, &mut b).unwrap_err().raw_os_error(), Some(5));
        d.read(4096, &mut b).unwrap();
    }

    #[test]
    fn read_only_refuses_writes() {
        let d = dev(|c| c.read_only = true);
        assert_eq!(
            d.write(0, &[0], false).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
    }

    #[test]
    fn window_shifts_and_clips() {
        let base = mem(1 << 20);
        base.write(4096, &[5u8; 512]).unwrap();
        let w = Window::new(base, 4096, Some(8192)).unwrap();
        assert_eq!(w.size(), 8192);
        let mut b = [0u8; 512];
        w.read(0, &mut b).unwrap();
        assert_eq!(b, [5u8; 512]);
        assert!(w.read(8000, &mut b).is_err());
        assert!(Window::new(mem(4096), 0, Some(1000)).is_err());
    }
}
