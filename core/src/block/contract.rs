//! The block-device contract between frontends and the drivers in this module.
//!
//! Every driver here is a *planner plus state*: a frontend hands it a
//! [`Request`], the driver answers with the child I/O to perform (or with an
//! error, a delay, an extent list), the frontend performs that I/O however it
//! likes (tokio, a DMA engine, a `Vec<u8>`) and reports completion back so the
//! driver can update its state. Nothing here blocks, allocates or reads a
//! clock; time is always a `u64` count of nanoseconds supplied by the caller
//! from any monotonic source.
//!
//! Block-status answers go through [`ExtentEmitter`], which applies the NBD
//! rules once for every context: adjacent runs with equal flags merge, the
//! reply holds at most [`StatusQuery::max_extents`] extents (2^20 by default),
//! each extent is at most [`StatusQuery::max_extent_len`] long, and with
//! `REQ_ONE` exactly one extent is produced, clipped to the request.
//!
//! ```
//! use blockwire_core::block::contract::{ExtentEmitter, StatusQuery};
//! use blockwire_core::block::Extent;
//!
//! let q = StatusQuery::new(0, 4096).req_one(true);
//! let mut got = None;
//! let mut sink = |e: Extent| { got = Some(e); true };
//! let mut em = ExtentEmitter::new(&q, &mut sink);
//! em.push(1024, 3);
//! em.push(1024, 3);
//! em.push(2048, 0);
//! let summary = em.finish();
//! assert_eq!(summary.extents, 1);
//! assert_eq!(got, Some(Extent::new(2048, 3)));
//! ```

use super::Extent;

/// Most extents a block-status reply chunk should carry (NBD: 2^20).
pub const MAX_EXTENTS: u32 = 1 << 20;

/// Longest extent that fits a 32-bit `NBD_REPLY_TYPE_BLOCK_STATUS`
/// descriptor while staying a multiple of 512.
pub const MAX_EXTENT_LEN_32: u64 = (u32::MAX as u64) & !511;

/// `base:allocation`: the extent is a hole.
pub const STATE_HOLE: u64 = 1;
/// `base:allocation`: the extent reads as zeroes.
pub const STATE_ZERO: u64 = 2;
/// `qemu:dirty-bitmap:NAME`: the extent is dirty.
pub const STATE_DIRTY: u64 = 1;

/// The operations a block device offers, as NBD commands name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read bytes.
    Read,
    /// Write bytes.
    Write,
    /// Make completed writes durable.
    Flush,
    /// Discard (unmap) a range; contents become unspecified.
    Trim,
    /// Make a range read as zeroes.
    WriteZeroes,
    /// Prefetch a range into a cache.
    Cache,
    /// Report status of a range in one metadata context.
    BlockStatus,
}

bitflags::bitflags! {
    /// Request flags; bit values equal NBD's command flags so a frontend can
    /// convert with `from_bits_truncate`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct ReqFlags: u16 {
        /// Force unit access: durable before the reply.
        const FUA = 1 << 0;
        /// Write-zeroes must not deallocate (punch a hole).
        const NO_HOLE = 1 << 1;
        /// Read: do not fragment the reply.
        const DF = 1 << 2;
        /// Block status: exactly one extent.
        const REQ_ONE = 1 << 3;
        /// Write-zeroes: fail fast instead of falling back to slow writes.
        const FAST_ZERO = 1 << 4;
    }
}

/// One request as a frontend received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub op: Op,
    /// First byte.
    pub offset: u64,
    /// Byte count.
    pub length: u64,
    /// Modifiers.
    pub flags: ReqFlags,
}

/// Why a request or configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockError {
    /// The request reaches past the end of the device (or overflows `u64`).
    OutOfRange,
    /// Offset or length violates the request alignment.
    Misaligned,
    /// Longer than the device accepts in one request.
    TooLarge,
    /// A malformed argument or configuration.
    Invalid,
    /// The device cannot do this (e.g. fast zero unavailable).
    NotSupported,
    /// No space left (thin provisioning exhausted).
    NoSpace,
    /// Not permitted in the current state (e.g. a frozen bitmap).
    Busy,
    /// Caller-provided storage is too small for the geometry.
    StorageTooSmall,
    /// An I/O error with this errno (EIO = 5 unless injected otherwise).
    Io(u32),
}

impl BlockError {
    /// The NBD error value a server should send for this error.
    pub const fn nbd_errno(self) -> u32 {
        match self {
            BlockError::OutOfRange | BlockError::Misaligned | BlockError::Invalid => 22,
            BlockError::TooLarge => 75,
            BlockError::NotSupported => 95,
            BlockError::NoSpace => 28,
            BlockError::Busy => 1,
            BlockError::StorageTooSmall => 12,
            BlockError::Io(e) => e,
        }
    }
}

/// `offset + length`, refusing ranges that overflow or pass `size`.
///
/// A zero-length range is valid anywhere up to and including `size`.
pub const fn check_range(offset: u64, length: u64, size: u64) -> Result<u64, BlockError> {
    match offset.checked_add(length) {
        Some(end) if end <= size => Ok(end),
        _ => Err(BlockError::OutOfRange),
    }
}

/// How a range is to be made to read as zeroes: NBD's `WRITE_ZEROES`
/// flags, QEMU's `BDRV_REQ_MAY_UNMAP`, `BDRV_REQ_NO_FALLBACK` and
/// `BDRV_REQ_FUA`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Zeroes {
    /// The range may be deallocated (no `NBD_CMD_FLAG_NO_HOLE`).
    pub may_unmap: bool,
    /// Fail with `NotSupported` rather than write zeroes slowly
    /// (`NBD_CMD_FLAG_FAST_ZERO`).
    pub fast: bool,
    /// Durable before it completes.
    pub fua: bool,
}

/// Size and alignment limits of a device, named as blkdebug's options name
/// them. Zero means "no particular limit / preference".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Offsets and lengths of reads and writes must be multiples of this
    /// (a power of two; 1 accepts everything).
    pub align: u64,
    /// Longest read or write in one request.
    pub max_transfer: u64,
    /// Preferred alignment of write-zeroes requests.
    pub opt_write_zero: u64,
    /// Longest write-zeroes request.
    pub max_write_zero: u64,
    /// Preferred alignment of discard requests.
    pub opt_discard: u64,
    /// Longest discard request.
    pub max_discard: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            align: 1,
            max_transfer: 0,
            opt_write_zero: 0,
            max_write_zero: 0,
            opt_discard: 0,
            max_discard: 0,
        }
    }
}

impl Limits {
    /// Checks the relations blkdebug imposes: `align` a power of two, the
    /// other values multiples of `align`, and each maximum a multiple of its
    /// preferred alignment.
    pub fn validate(&self) -> Result<(), BlockError> {
        if !self.align.is_power_of_two() {
            return Err(BlockError::Invalid);
        }
        let multiple = |v: u64, of: u64| of == 0 || v % of == 0;
        let ok = multiple(self.max_transfer, self.align)
            && multiple(self.opt_write_zero, self.align)
            && multiple(self.max_write_zero, self.align)
            && multiple(self.max_write_zero, self.opt_write_zero)
            && multiple(self.opt_discard, self.align)
            && multiple(self.max_discard, self.align)
            && multiple(self.max_discard, self.opt_discard);
        if ok { Ok(()) } else { Err(BlockError::Invalid) }
    }

    /// Longest single request of `op`, `u64::MAX` when unlimited.
    pub fn max_for(&self, op: Op) -> u64 {
        let m = match op {
            Op::Read | Op::Write | Op::Cache => self.max_transfer,
            Op::WriteZeroes => self.max_write_zero,
            Op::Trim => self.max_discard,
            Op::Flush | Op::BlockStatus => 0,
        };
        if m == 0 { u64::MAX } else { m }
    }

    /// Preferred alignment for `op`'s pieces (at least `align`).
    pub fn opt_for(&self, op: Op) -> u64 {
        let o = match op {
            Op::WriteZeroes => self.opt_write_zero,
            Op::Trim => self.opt_discard,
            _ => 0,
        };
        o.max(self.align).max(1)
    }

    /// Checks a request against a device of `size` bytes: range, alignment
    /// (reads, writes and cache only — zero and trim are split instead) and
    /// length (reads and writes only).
    pub fn check(&self, req: &Request, size: u64) -> Result<(), BlockError> {
        if req.op == Op::Flush {
            return Ok(());
        }
        check_range(req.offset, req.length, size)?;
        if matches!(req.op, Op::Read | Op::Write | Op::Cache) {
            let a = self.align.max(1);
            if req.offset % a != 0 || req.length % a != 0 {
                return Err(BlockError::Misaligned);
            }
            if req.length > self.max_for(req.op) {
                return Err(BlockError::TooLarge);
            }
        }
        Ok(())
    }

    /// Splits `[offset, offset+length)` into pieces no longer than
    /// [`max_for`](Self::max_for)`(op)`, cutting at multiples of
    /// [`opt_for`](Self::opt_for)`(op)` so that all pieces but the unaligned
    /// head and tail are aligned — the way the block layer fragments a large
    /// zero or discard request before handing it to a child.
    pub fn split(&self, op: Op, offset: u64, length: u64) -> Split {
        let opt = self.opt_for(op);
        let mut max = self.max_for(op);
        if max != u64::MAX && max >= opt {
            max -= max % opt;
        }
        Split {
            pos: offset,
            end: offset.saturating_add(length),
            opt,
            max: max.max(1),
        }
    }
}

/// Iterator of `(offset, length)` pieces from [`Limits::split`].
#[derive(Clone, Debug)]
pub struct Split {
    pos: u64,
    end: u64,
    opt: u64,
    max: u64,
}

impl Iterator for Split {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        if self.pos >= self.end {
            return None;
        }
        let left = self.end - self.pos;
        let mis = self.pos % self.opt;
        let len = if mis != 0 {
            // Unaligned head: stop at the next preferred boundary.
            (self.opt - mis).min(left).min(self.max)
        } else if left > self.max {
            self.max
        } else if left > self.opt {
            // Leave an unaligned tail as its own piece.
            left - left % self.opt
        } else {
            left
        };
        let piece = (self.pos, len);
        self.pos += len;
        Some(piece)
    }
}

/// A block-status request for one metadata context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusQuery {
    /// First byte.
    pub offset: u64,
    /// Bytes to describe.
    pub length: u64,
    /// `NBD_CMD_FLAG_REQ_ONE`: one extent, no longer than `length`.
    pub req_one: bool,
    /// Cap on extents; [`MAX_EXTENTS`] by default.
    pub max_extents: u32,
    /// Cap on one extent's length; [`MAX_EXTENT_LEN_32`] by default, use
    /// `u64::MAX` for extended (64-bit) replies.
    pub max_extent_len: u64,
}

impl StatusQuery {
    /// A query for `[offset, offset+length)` with the default caps.
    pub const fn new(offset: u64, length: u64) -> Self {
        Self {
            offset,
            length,
            req_one: false,
            max_extents: MAX_EXTENTS,
            max_extent_len: MAX_EXTENT_LEN_32,
        }
    }

    /// Sets `REQ_ONE`.
    pub const fn req_one(mut self, on: bool) -> Self {
        self.req_one = on;
        self
    }

    /// Sets the extent-count cap (0 is treated as 1).
    pub const fn max_extents(mut self, n: u32) -> Self {
        self.max_extents = n;
        self
    }

    /// Sets the per-extent length cap (0 is treated as 1).
    pub const fn max_extent_len(mut self, n: u64) -> Self {
        self.max_extent_len = n;
        self
    }
}

/// What a block-status answer produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StatusSummary {
    /// Extents delivered to the sink.
    pub extents: u32,
    /// Sum of their lengths; less than the request when a cap or the sink
    /// cut the answer short (the client is expected to ask again).
    pub covered: u64,
}

/// The sink type every block-status function takes: return `false` to stop.
pub type ExtentSink<'a> = dyn FnMut(Extent) -> bool + 'a;

/// Turns runs of `(length, flags)` into a capped, merged extent stream.
pub struct ExtentEmitter<'q, 's> {
    sink: &'s mut ExtentSink<'q>,
    remaining: u64,
    pending: Extent,
    max_extents: u32,
    max_len: u64,
    req_one: bool,
    summary: StatusSummary,
    stopped: bool,
}

impl<'q, 's> ExtentEmitter<'q, 's> {
    /// An emitter answering `q` into `sink`.
    pub fn new(q: &StatusQuery, sink: &'s mut ExtentSink<'q>) -> Self {
        Self {
            sink,
            remaining: q.length,
            pending: Extent::new(0, 0),
            max_extents: q.max_extents.max(1),
            max_len: q.max_extent_len.max(1),
            req_one: q.req_one,
            summary: StatusSummary::default(),
            stopped: q.length == 0,
        }
    }

    /// Bytes the producer still needs to describe (0 once stopped).
    pub fn remaining(&self) -> u64 {
        if self.stopped { 0 } else { self.remaining }
    }

    /// Adds the next run. Returns `false` once no more runs are wanted, so
    /// producers can stop walking their structure.
    pub fn push(&mut self, length: u64, flags: u64) -> bool {
        if self.stopped {
            return false;
        }
        let length = length.min(self.remaining);
        if length == 0 {
            return self.remaining > 0;
        }
        self.remaining -= length;
        if self.pending.length > 0 && self.pending.flags != flags {
            let p = self.pending;
            self.pending.length = 0;
            if !self.emit(p) || self.req_one {
                self.stopped = true;
                return false;
            }
        }
        self.pending.flags = flags;
        self.pending.length += length;
        while self.pending.length > self.max_len {
            let piece = Extent::new(self.max_len, flags);
            self.pending.length -= self.max_len;
            if !self.emit(piece) || self.req_one {
                self.pending.length = 0;
                self.stopped = true;
                return false;
            }
        }
        if self.remaining == 0 {
            return false;
        }
        true
    }

    fn emit(&mut self, e: Extent) -> bool {
        if self.summary.extents >= self.max_extents {
            return false;
        }
        self.summary.extents += 1;
        self.summary.covered += e.length;
        (self.sink)(e) && self.summary.extents < self.max_extents
    }

    /// Flushes the last run and reports what was sent.
    pub fn finish(mut self) -> StatusSummary {
        // A stop always drops the pending run, so anything left is wanted.
        if self.pending.length > 0 {
            let p = self.pending;
            self.emit(p);
        }
        self.summary
    }
}

/// The status of a range gathered from a device that may answer only part
/// of what it is asked (a driver stops at a cluster or an object edge):
/// ask again where it stopped short, until the range is covered.
///
/// ```
/// use blockwire_core::block::Extent;
/// use blockwire_core::block::contract::StatusGather;
///
/// let mut g = StatusGather::new(0, 8192);
/// let mut got = Vec::new();
/// assert_eq!(g.query(), Some((0, 8192)));
/// g.answer([Extent::new(4096, 3)], |e| got.push(e));
/// assert_eq!(g.query(), Some((4096, 4096)));
/// // An answer that covers nothing: the rest is data.
/// g.answer([], |e| got.push(e));
/// assert_eq!(g.query(), None);
/// assert_eq!(got, [Extent::new(4096, 3), Extent::new(4096, 0)]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusGather {
    pos: u64,
    end: u64,
}

impl StatusGather {
    /// Gathering `[offset, offset + length)`.
    pub const fn new(offset: u64, length: u64) -> Self {
        Self {
            pos: offset,
            end: offset.saturating_add(length),
        }
    }

    /// The range to ask the device for next, as `(offset, length)`; `None`
    /// once the whole range is described.
    pub const fn query(&self) -> Option<(u64, u64)> {
        if self.pos < self.end {
            Some((self.pos, self.end - self.pos))
        } else {
            None
        }
    }

    /// The device's answer to [`query`](Self::query): its runs in order
    /// from the offset asked, passed on to `out` clipped to the range,
    /// empty ones dropped. An answer that describes nothing ends the
    /// gathering with the rest as data (status 0, always a safe answer), so
    /// a device that never answers cannot make a caller loop.
    pub fn answer(&mut self, runs: impl IntoIterator<Item = Extent>, mut out: impl FnMut(Extent)) {
        let before = self.pos;
        for run in runs {
            if self.pos >= self.end {
                break;
            }
            let n = run.length.min(self.end - self.pos);
            if n > 0 {
                out(Extent::new(n, run.flags));
                self.pos += n;
            }
        }
        if self.pos == before && self.pos < self.end {
            out(Extent::new(self.end - self.pos, 0));
            self.pos = self.end;
        }
    }
}
