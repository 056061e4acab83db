//! The contract between a node and its driver: what a driver says of
//! itself ([`DriverInfo`]), its children ([`Child`]), the allocation status
//! it answers ([`Status`]), the operations it implements ([`Driver`]) and
//! the bitmaps a format driver stores ([`StoredBitmap`]). [`Node`] is the
//! only caller of a driver.
//!
//! [`Node`]: super::Node

use std::sync::Arc;

use blockwire_core::block::contract::STATE_ZERO;

use super::Node;
use super::io::Io;

/// One run of a block-status answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub len: u64,
    /// `base:allocation` bits (`STATE_HOLE`, `STATE_ZERO`).
    pub flags: u64,
    /// `qemu:allocation-depth`: 0 unallocated anywhere in the chain, 1 in
    /// this node (or its protocol layer), 2.. in the backing chain.
    pub depth: u32,
}

impl Status {
    pub const fn data(len: u64) -> Self {
        Self {
            len,
            flags: 0,
            depth: 1,
        }
    }
    pub fn is_zero(&self) -> bool {
        self.flags & STATE_ZERO != 0
    }
}

/// How a range is zeroed: the core's, as NBD and QEMU define it.
pub use blockwire_core::block::contract::Zeroes;

/// What a driver tells its parents and the exports above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverInfo {
    /// Writes are impossible here (opened read-only, a snapshot).
    pub read_only: bool,
    /// Calls block the calling thread (system calls on a disk): the
    /// request runs on the blocking pool.
    pub blocking: bool,
    /// Calls may return [`Io::Pending`] (network, timers).
    pub waits: bool,
    /// Write-zeroes is cheap, so `FAST_ZERO` can be honoured.
    pub fast_zero: bool,
    /// Block status is exact and cheap, and zero runs exist: reads can
    /// send holes.
    pub sparse: bool,
    /// A flush through any handle covers writes through every other one,
    /// so `CAN_MULTI_CONN` holds for exports of this node.
    pub multi_conn: bool,
    /// The block size the storage prefers (0: no preference).
    pub preferred_block: u32,
    /// Reads and writes must be aligned to this (a power of two; 1: any).
    pub align: u32,
    /// Longest read or write in one request (0: no limit).
    pub max_transfer: u32,
}

impl Default for DriverInfo {
    fn default() -> Self {
        Self {
            read_only: false,
            blocking: false,
            waits: false,
            fast_zero: false,
            sparse: false,
            multi_conn: true,
            preferred_block: 0,
            align: 1,
            max_transfer: 0,
        }
    }
}

/// A driver's reference to one of its children.
#[derive(Clone)]
pub struct Child {
    /// The schema's name for the edge: `file`, `backing`, `image`.
    pub role: &'static str,
    pub node: Arc<Node>,
}

/// One block driver. Offsets are checked by [`Node`] before a driver sees
/// them (`offset + len <= size`), and writes are only sent to writable
/// nodes.
pub trait Driver: Send + Sync + 'static {
    /// The schema's driver name (`file`, `raw`, `throttle`, ...).
    fn driver_name(&self) -> &'static str;

    fn info(&self) -> DriverInfo;

    /// Current size in bytes.
    fn size(&self) -> u64;

    /// The nodes this driver reads from, for the graph's bookkeeping.
    fn children(&self) -> Vec<Child> {
        Vec::new()
    }

    /// What `query-named-block-nodes` shows as the node's `file`: the
    /// path for files, a URI or a `json:` description otherwise.
    fn filename(&self) -> String;

    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> Io<'a, ()>;

    fn write<'a>(&'a self, offset: u64, data: &'a [u8], fua: bool) -> Io<'a, ()>;

    /// Make every completed write durable.
    fn flush(&self) -> Io<'_, ()>;

    /// Advisory: contents afterwards are unspecified (but must agree with
    /// block status).
    fn discard(&self, offset: u64, len: u64) -> Io<'_, ()>;

    fn write_zeroes(&self, offset: u64, len: u64, z: Zeroes) -> Io<'_, ()>;

    /// Prefetch hint.
    fn cache(&self, _offset: u64, _len: u64) -> Io<'_, ()> {
        Io::ok(())
    }

    /// Status of `[offset, offset+len)` in order, appended to `out`; may
    /// stop early (the caller asks again for the rest).
    fn block_status<'a>(&'a self, offset: u64, len: u64, out: &'a mut Vec<Status>) -> Io<'a, ()>;

    /// `block_resize`: grow (or shrink) to `size`.
    fn resize(&self, _size: u64) -> Io<'_, ()> {
        Io::errno(libc::ENOTSUP)
    }

    /// Dirty bitmaps the image itself stores (qcow2's persistent
    /// bitmaps), handed over once when the node is made.
    fn stored_bitmaps(&self) -> Vec<StoredBitmap> {
        Vec::new()
    }

    /// Whether a new persistent bitmap `name` of `granularity` could be
    /// stored here; the error is QEMU's message without its prefix.
    fn can_store_bitmap(&self, _name: &str, _granularity: u32) -> Result<(), String> {
        Err(String::new())
    }

    /// Writes the node's persistent bitmaps into the image (at close),
    /// replacing what it stores: a bitmap no longer listed is removed.
    fn store_bitmaps<'a>(&'a self, _bitmaps: &'a [StoredBitmap]) -> Io<'a, ()> {
        Io::ok(())
    }

    /// Removes stored bitmap `name` from the image now.
    fn remove_stored_bitmap<'a>(&'a self, _name: &'a str) -> Io<'a, ()> {
        Io::ok(())
    }
}

/// A dirty bitmap an image stores, as loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBitmap {
    pub name: String,
    pub granularity: u32,
    /// Not recording (QEMU loads bitmaps without the `auto` flag disabled).
    pub disabled: bool,
    /// Dirty runs `(offset, length)`.
    pub dirty: Vec<(u64, u64)>,
    /// Marked in use (its writer never closed it) or with extra data it
    /// does not declare compatible: not loaded, its name only remembered
    /// so that nothing else takes its place unnoticed.
    pub inconsistent: bool,
}
