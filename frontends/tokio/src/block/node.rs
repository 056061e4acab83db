//! A node of the graph: one driver, plus what every node has whatever its
//! driver (QEMU's generic `BlockDriverState` part): its name, read-only
//! state, `discard` and `detect-zeroes` policies, dirty bitmaps, write
//! threshold and statistics.
//!
//! A driver knows only its own children. Every call into a node goes
//! through [`Node`]'s methods, which check the request against the node
//! (range, permission), apply the node's policies with the core's pure
//! logic (`zero_policy`, `write_threshold`, `dirty_bitmap`) and then call
//! the driver.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use blockwire_core::block::dirty_bitmap::{BitmapError, BitmapSet, DirtyBitmapStatus};
use blockwire_core::block::stats::BlockAcct;
use blockwire_core::block::write_threshold::WriteThreshold;
use blockwire_core::block::zero_policy::{DetectZeroes, Discard, WriteAction, ZeroPolicy};

use super::events::{Event, Events};
use super::io::Io;
use super::options::CacheOptions;

/// Dirty bitmaps one node can carry.
pub const MAX_BITMAPS: usize = 64;
/// Intervals of timed statistics one node keeps.
pub const MAX_STATS_INTERVALS: usize = 8;

/// Monotonic nanoseconds from one process-wide epoch: the clock of the
/// nodes' accounting.
pub fn now_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub use super::driver::{Child, Driver, DriverInfo, Status, StoredBitmap, Zeroes};

/// The per-node options every driver accepts (`BlockdevOptionsBase`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeOptions {
    pub read_only: bool,
    pub discard: Discard,
    pub detect_zeroes: DetectZeroes,
    /// As opened; the driver honours it.
    pub cache: CacheOptions,
}

/// A dirty bitmap as `query-named-block-nodes` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BitmapInfo {
    pub name: String,
    pub count: u64,
    pub granularity: u32,
    pub recording: bool,
    pub busy: bool,
    pub persistent: bool,
}

/// A named node.
pub struct Node {
    name: String,
    /// Named by the graph (`#blockNNN`), not by the user.
    auto_named: bool,
    driver: Box<dyn Driver>,
    /// This driver or one below it blocks / waits.
    blocking: bool,
    waits: bool,
    read_only: AtomicBool,
    cache: CacheOptions,
    policy: Mutex<ZeroPolicy>,
    bitmaps: Mutex<BitmapSet<Vec<u64>, MAX_BITMAPS>>,
    has_bitmaps: AtomicBool,
    /// Names of stored bitmaps that could not be loaded (inconsistent).
    inconsistent_bitmaps: Mutex<Vec<String>>,
    /// Names of the bitmaps the image stores at close (`persistent`).
    persistent: Mutex<Vec<String>>,
    /// The persistent bitmaps were stored (close): not again at drop.
    stored: AtomicBool,
    threshold: Mutex<WriteThreshold>,
    threshold_armed: AtomicBool,
    wr_highest_offset: AtomicU64,
    acct: Mutex<BlockAcct<MAX_STATS_INTERVALS>>,
    events: Events,
}

/// Why a node cannot be built.
pub fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

impl Node {
    /// A node over `driver`, checked against QEMU's rules: `detect-zeroes
    /// =unmap` needs `discard=unmap`; a writable node over a driver that
    /// cannot write is refused.
    pub(crate) fn new(
        name: String,
        auto_named: bool,
        driver: Box<dyn Driver>,
        opts: &NodeOptions,
        events: Events,
    ) -> io::Result<Self> {
        let policy = ZeroPolicy::new(opts.detect_zeroes, opts.discard).map_err(|_| {
            invalid("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
        })?;
        let info = driver.info();
        let children = driver.children();
        let blocking = info.blocking || children.iter().any(|c| c.node.blocking);
        let waits = info.waits || children.iter().any(|c| c.node.waits);
        let threshold = WriteThreshold::new(&name)
            .map_err(|_| invalid(format!("node name {name:?} is too long")))?;
        Ok(Self {
            read_only: AtomicBool::new(opts.read_only || info.read_only),
            cache: opts.cache,
            name,
            auto_named,
            driver,
            blocking,
            waits,
            policy: Mutex::new(policy),
            bitmaps: Mutex::new(BitmapSet::new()),
            has_bitmaps: AtomicBool::new(false),
            inconsistent_bitmaps: Mutex::new(Vec::new()),
            persistent: Mutex::new(Vec::new()),
            stored: AtomicBool::new(false),
            threshold: Mutex::new(threshold),
            threshold_armed: AtomicBool::new(false),
            wr_highest_offset: AtomicU64::new(0),
            acct: Mutex::new(BlockAcct::new(false, false)),
            events,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn auto_named(&self) -> bool {
        self.auto_named
    }

    pub fn driver_name(&self) -> &'static str {
        self.driver.driver_name()
    }

    pub fn driver(&self) -> &dyn Driver {
        &*self.driver
    }

    pub fn info(&self) -> DriverInfo {
        let mut i = self.driver.info();
        i.read_only = self.read_only();
        i.blocking = self.blocking;
        i.waits = self.waits;
        i
    }

    pub fn size(&self) -> u64 {
        self.driver.size()
    }

    pub fn children(&self) -> Vec<Child> {
        self.driver.children()
    }

    /// This node or the first below it, depth first, that `pred` accepts:
    /// where an export looks for its bitmaps.
    pub fn find_below(self: &Arc<Self>, pred: &dyn Fn(&Node) -> bool) -> Option<Arc<Node>> {
        if pred(self) {
            return Some(self.clone());
        }
        self.children().iter().find_map(|c| c.node.find_below(pred))
    }

    pub fn filename(&self) -> String {
        self.driver.filename()
    }

    pub fn read_only(&self) -> bool {
        self.read_only.load(Ordering::Relaxed)
    }

    /// Whether a request may block its thread / may wait, anywhere below.
    pub fn blocking(&self) -> bool {
        self.blocking
    }

    pub fn waits(&self) -> bool {
        self.waits
    }

    /// Runs `op` on the node where its I/O may run: on the blocking pool
    /// for a node that blocks its thread (the runtime's threads must not
    /// block), right here for any other.
    pub async fn run<T, F>(
        self: &Arc<Self>,
        op: impl FnOnce(Arc<Node>) -> F + Send + 'static,
    ) -> io::Result<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = io::Result<T>> + Send,
    {
        if !self.blocking {
            return op(self.clone()).await;
        }
        let (node, handle) = (self.clone(), tokio::runtime::Handle::current());
        tokio::task::spawn_blocking(move || handle.block_on(op(node)))
            .await
            .map_err(io::Error::other)?
    }

    pub fn options(&self) -> NodeOptions {
        let p = lock(&self.policy);
        NodeOptions {
            read_only: self.read_only(),
            discard: p.discard(),
            detect_zeroes: p.detect_zeroes(),
            cache: self.cache,
        }
    }

    /// `blockdev-reopen` of the generic options. Making a node writable
    /// needs a driver that can write.
    pub fn reopen(&self, opts: &NodeOptions) -> io::Result<()> {
        if !opts.read_only && self.driver.info().read_only {
            return Err(invalid(format!("Block node '{}' is read-only", self.name)));
        }
        let policy = ZeroPolicy::new(opts.detect_zeroes, opts.discard).map_err(|_| {
            invalid("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
        })?;
        *lock(&self.policy) = policy;
        self.read_only.store(opts.read_only, Ordering::Relaxed);
        Ok(())
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    fn check_write(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only() {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
        }
    }

    /// What every write-like request does to the node's own state before
    /// the driver sees it: bitmaps record the range (before the write, so
    /// a crash never leaves a written range unrecorded), the threshold may
    /// fire, the highest written offset moves.
    fn note_write(&self, offset: u64, len: u64) {
        if self.has_bitmaps.load(Ordering::Relaxed) {
            lock(&self.bitmaps).mark(offset, len);
        }
        if self.threshold_armed.load(Ordering::Relaxed) {
            let mut t = lock(&self.threshold);
            if let Some(ev) = t.check_write(offset, len) {
                self.events.send(Event::WriteThreshold {
                    node_name: ev.node_name.to_owned(),
                    amount_exceeded: ev.amount_exceeded,
                    write_threshold: ev.write_threshold,
                });
                self.threshold_armed.store(false, Ordering::Relaxed);
            }
        }
        self.wr_highest_offset
            .fetch_max(offset.saturating_add(len), Ordering::Relaxed);
    }

    pub fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> Io<'a, ()> {
        if let Err(e) = self.check(offset, buf.len() as u64) {
            return Io::err(e);
        }
        self.driver.read(offset, buf)
    }

    pub fn write<'a>(&'a self, offset: u64, data: &'a [u8], fua: bool) -> Io<'a, ()> {
        let len = data.len() as u64;
        if let Err(e) = self.check_write(offset, len) {
            return Io::err(e);
        }
        let action = lock(&self.policy).plan_write(data);
        self.note_write(offset, len);
        match action {
            WriteAction::Write => self.driver.write(offset, data, fua),
            WriteAction::WriteZeroes { may_unmap } => self.driver.write_zeroes(
                offset,
                len,
                Zeroes {
                    may_unmap,
                    fast: false,
                    fua,
                },
            ),
        }
    }

    pub fn flush(&self) -> Io<'_, ()> {
        self.driver.flush()
    }

    /// `discard=ignore` drops the request (it is advisory); `unmap`
    /// passes it on.
    pub fn discard(&self, offset: u64, len: u64) -> Io<'_, ()> {
        if let Err(e) = self.check_write(offset, len) {
            return Io::err(e);
        }
        if lock(&self.policy).discard() == Discard::Ignore {
            return Io::ok(());
        }
        self.note_write(offset, len);
        self.driver.discard(offset, len)
    }

    /// Deallocation is allowed only where the client allows it and the
    /// node's `discard=unmap` does (QEMU's `BDRV_O_UNMAP`).
    pub fn write_zeroes(&self, offset: u64, len: u64, mut z: Zeroes) -> Io<'_, ()> {
        if let Err(e) = self.check_write(offset, len) {
            return Io::err(e);
        }
        z.may_unmap &= lock(&self.policy).discard() == Discard::Unmap;
        self.note_write(offset, len);
        self.driver.write_zeroes(offset, len, z)
    }

    pub fn cache(&self, offset: u64, len: u64) -> Io<'_, ()> {
        if let Err(e) = self.check(offset, len) {
            return Io::err(e);
        }
        self.driver.cache(offset, len)
    }

    pub fn block_status<'a>(
        &'a self,
        offset: u64,
        len: u64,
        out: &'a mut Vec<Status>,
    ) -> Io<'a, ()> {
        if let Err(e) = self.check(offset, len) {
            return Io::err(e);
        }
        self.driver.block_status(offset, len, out)
    }

    pub fn resize(&self, size: u64) -> Io<'_, ()> {
        if self.read_only() {
            return Io::errno(libc::EPERM);
        }
        // Bitmaps follow the node's size, as QEMU's
        // bdrv_dirty_bitmap_truncate does; one in use by a backup
        // (frozen) cannot change under it.
        if lock(&self.bitmaps)
            .iter()
            .any(|b| b.status() == DirtyBitmapStatus::Frozen)
        {
            return Io::err(invalid(format!(
                "Cannot resize node '{}': a dirty bitmap is in use",
                self.name
            )));
        }
        self.driver.resize(size).and_then(move |()| {
            Io::from_result(self.resize_bitmaps(size).map_err(|e| {
                invalid(format!(
                    "node '{}' resized, but its dirty bitmaps could not be: {e:?}",
                    self.name
                ))
            }))
        })
    }

    /// Rebuilds every bitmap for a node of `size` bytes: bits past the
    /// new end are dropped, a grown tail starts clean, each keeps its
    /// name, granularity and recording state.
    fn resize_bitmaps(&self, size: u64) -> Result<(), BitmapError> {
        let mut set = lock(&self.bitmaps);
        if !self.has_bitmaps.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut next: BitmapSet<Vec<u64>, MAX_BITMAPS> = BitmapSet::new();
        for b in set.iter() {
            let recording = b.status() == DirtyBitmapStatus::Active;
            next.add_vec(b.name(), size, Some(b.granularity()))?;
            if let Some(n) = next.get_mut(b.name()) {
                let mut err = Ok(());
                b.for_each_dirty(0, size.min(b.size()), &mut |off, len| {
                    let len = len.min(size.saturating_sub(off));
                    if err.is_ok() && len > 0 {
                        err = n.set_dirty(off, len);
                    }
                });
                err?;
            }
            if !recording {
                next.disable(b.name())?;
            }
        }
        *set = next;
        Ok(())
    }

    // ---- dirty bitmaps ----

    /// `block-dirty-bitmap-add`.
    pub fn add_bitmap(
        &self,
        name: &str,
        granularity: Option<u32>,
        disabled: bool,
    ) -> Result<(), BitmapError> {
        let mut set = lock(&self.bitmaps);
        set.add_vec(name, self.size(), granularity)?;
        if disabled {
            set.disable(name)?;
        }
        self.has_bitmaps.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Runs `f` on the node's bitmaps (remove, clear, enable, disable,
    /// merge, block status).
    pub fn with_bitmaps<T>(&self, f: impl FnOnce(&mut BitmapSet<Vec<u64>, MAX_BITMAPS>) -> T) -> T {
        let mut set = lock(&self.bitmaps);
        let r = f(&mut set);
        self.has_bitmaps
            .store(set.iter().next().is_some(), Ordering::Relaxed);
        // A removed bitmap is no longer stored either.
        lock(&self.persistent).retain(|n| set.get(n).is_some());
        r
    }

    /// `persistent` of `block-dirty-bitmap-add`: the driver must be able
    /// to store the bitmap (QEMU 7.2's `bdrv_can_store_new_dirty_bitmap`
    /// and its messages).
    pub fn check_persistent(&self, name: &str, granularity: u32) -> Result<(), String> {
        self.driver
            .can_store_bitmap(name, granularity)
            .map_err(|e| {
                if e.is_empty() {
                    format!(
                        "Can't store persistent bitmaps to {}: Operation not supported",
                        self.name
                    )
                } else {
                    format!(
                        "Can't make bitmap '{name}' persistent in '{}': {e}",
                        self.name
                    )
                }
            })
    }

    /// Marks bitmap `name` persistent (stored in the image at close).
    pub fn set_persistent(&self, name: &str) {
        let mut p = lock(&self.persistent);
        if !p.iter().any(|n| n == name) {
            p.push(name.to_owned());
        }
    }

    pub fn is_persistent(&self, name: &str) -> bool {
        lock(&self.persistent).iter().any(|n| n == name)
    }

    /// The persistent bitmaps as the image is to store them.
    fn persistent_bitmaps(&self) -> Vec<StoredBitmap> {
        let names = lock(&self.persistent).clone();
        let set = lock(&self.bitmaps);
        // Newest first, the order of QEMU's list of a node's bitmaps
        // (each one, loaded or added, goes to its head), which is the
        // order it stores them in.
        names
            .iter()
            .rev()
            .filter_map(|n| set.get(n))
            .map(|b| {
                let mut dirty = Vec::new();
                b.for_each_dirty(0, b.size(), &mut |o, l| dirty.push((o, l)));
                StoredBitmap {
                    name: b.name().to_owned(),
                    granularity: b.granularity(),
                    disabled: b.status() == DirtyBitmapStatus::Disabled,
                    dirty,
                    inconsistent: false,
                }
            })
            .collect()
    }

    /// Removes bitmap `name` from the image at once (its clusters freed,
    /// the other stored bitmaps untouched). Run in place: the driver's
    /// file child answers at once; otherwise, or on failure, the log says
    /// so and the store at close leaves the bitmap out.
    pub fn remove_stored_bitmap(&self, name: &str) {
        if self.driver.info().read_only {
            return;
        }
        let mut fut = std::pin::pin!(self.driver.remove_stored_bitmap(name).wait());
        match super::io::poll_once(fut.as_mut()) {
            Some(Ok(())) => {}
            Some(Err(e)) => tracing::warn!(
                "node {:?}: bitmap {name:?} stays in the image until close: {e}",
                self.name
            ),
            None => tracing::warn!(
                "node {:?}: bitmap {name:?} stays in the image until close: the driver would wait",
                self.name
            ),
        }
    }

    /// Close: the persistent bitmaps are written into the image (QEMU's
    /// `bdrv_close` storing them via `qcow2_store_persistent_dirty_bitmaps`).
    /// Once; writes after it are not recorded in the image.
    pub async fn store_bitmaps(&self) -> io::Result<()> {
        if self.driver.info().read_only || self.stored.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let list = self.persistent_bitmaps();
        self.driver.store_bitmaps(&list).wait().await
    }

    /// Loads the bitmaps the driver's image stores into the node's set.
    /// One the set cannot hold (a granularity above 64 MiB, too many) is
    /// left out with a warning: the image still opens.
    pub(crate) fn load_stored_bitmaps(&self) {
        for b in self.driver.stored_bitmaps() {
            if b.inconsistent {
                lock(&self.inconsistent_bitmaps).push(b.name);
                continue;
            }
            let loaded = self
                .add_bitmap(&b.name, Some(b.granularity), false)
                .inspect(|()| self.set_persistent(&b.name))
                .and_then(|()| {
                    self.with_bitmaps(|set| {
                        if let Some(m) = set.get_mut(&b.name) {
                            for &(o, l) in &b.dirty {
                                m.set_dirty(o, l)?;
                            }
                        }
                        if b.disabled {
                            set.disable(&b.name)?;
                        }
                        Ok(())
                    })
                });
            if let Err(e) = loaded {
                let _ = self.with_bitmaps(|set| set.remove(&b.name));
                tracing::warn!(
                    "node {:?}: stored dirty bitmap {:?} not loaded: {e:?}",
                    self.name,
                    b.name
                );
            }
        }
    }

    /// The image stores a bitmap of this name that cannot be used.
    pub fn has_inconsistent_bitmap(&self, name: &str) -> bool {
        lock(&self.inconsistent_bitmaps).iter().any(|n| n == name)
    }

    pub fn has_bitmap(&self, name: &str) -> bool {
        lock(&self.bitmaps).get(name).is_some()
    }

    pub fn bitmaps(&self) -> Vec<BitmapInfo> {
        lock(&self.bitmaps)
            .iter()
            .map(|b| {
                let i = b.info();
                BitmapInfo {
                    name: i.name.to_owned(),
                    count: i.count,
                    granularity: i.granularity,
                    recording: i.status == DirtyBitmapStatus::Active,
                    busy: i.status == DirtyBitmapStatus::Frozen,
                    persistent: self.is_persistent(i.name),
                }
            })
            .collect()
    }

    // ---- write threshold ----

    /// `block-set-write-threshold`; 0 disables.
    pub fn set_write_threshold(&self, threshold: u64) {
        lock(&self.threshold).set(threshold);
        self.threshold_armed.store(threshold > 0, Ordering::Relaxed);
    }

    pub fn write_threshold(&self) -> u64 {
        lock(&self.threshold).get()
    }

    // ---- statistics ----

    pub fn wr_highest_offset(&self) -> u64 {
        self.wr_highest_offset.load(Ordering::Relaxed)
    }

    /// The node's accounting, kept for the node an export attaches to.
    pub fn acct(&self) -> MutexGuard<'_, BlockAcct<MAX_STATS_INTERVALS>> {
        lock(&self.acct)
    }

    pub fn events(&self) -> &Events {
        &self.events
    }
}

/// A node dropped without [`Node::store_bitmaps`] (`blockdev-del`) stores
/// them now, when the driver answers at once (a file child).
impl Drop for Node {
    fn drop(&mut self) {
        if self.driver.info().read_only || self.stored.load(Ordering::Relaxed) {
            return;
        }
        let mut fut = std::pin::pin!(self.store_bitmaps());
        match super::io::poll_once(fut.as_mut()) {
            Some(Ok(())) => {}
            Some(Err(e)) => tracing::error!(
                "node {:?}: persistent dirty bitmaps not stored: {e}",
                self.name
            ),
            None => tracing::error!(
                "node {:?}: persistent dirty bitmaps not stored: the driver would wait",
                self.name
            ),
        }
    }
}
