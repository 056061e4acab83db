//! I/O accounting for `query-blockstats`: `BlockDeviceStats` and
//! `BlockDeviceTimedStats`, computed as QEMU's block accounting does.
//!
//! A frontend calls [`BlockAcct::start`] when a request begins and
//! [`BlockAcct::done`] or [`BlockAcct::failed`] when it ends, passing
//! nanosecond timestamps from any monotonic source of its choice (time is an
//! input, nothing here reads a clock). Write-zeroes requests are accounted
//! as writes, as QEMU does; discards have their own `unmap` counters (which
//! newer QEMU reports).
//!
//! Timed statistics follow QEMU's `TimedAverage`: each configured interval
//! keeps two windows of 4/3 × the interval, staggered by half a window, and
//! reports the older one, so figures always cover between 2/3 and 4/3 of the
//! interval. The average queue depth is the summed latency divided by the
//! window's elapsed time (Little's law).
//!
//! ```
//! use blockwire_core::block::stats::{AcctType, BlockAcct};
//!
//! let mut acct: BlockAcct<2> = BlockAcct::new(true, true);
//! acct.add_interval(60, 0).unwrap();
//! let c = acct.start(1_000, AcctType::Read, 4096);
//! acct.done(c, 51_000);
//! let s = acct.stats(61_000);
//! assert_eq!((s.rd_bytes, s.rd_operations, s.rd_total_time_ns), (4096, 1, 50_000));
//! assert_eq!(s.idle_time_ns, Some(10_000));
//! let mut lat = 0;
//! acct.timed_stats(61_000, &mut |t| lat = t.max_rd_latency_ns);
//! assert_eq!(lat, 50_000);
//! ```

const NS_PER_SEC: u64 = 1_000_000_000;

/// The kinds of I/O accounted separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AcctType {
    /// Reads.
    Read = 0,
    /// Writes and write-zeroes.
    Write = 1,
    /// Flushes.
    Flush = 2,
    /// Discards.
    Unmap = 3,
}

/// An in-flight request, returned by [`BlockAcct::start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cookie {
    /// Kind of request.
    pub kind: AcctType,
    /// Bytes it transfers.
    pub bytes: u64,
    /// When it started (ns).
    pub start_ns: u64,
}

/// `BlockDeviceStats` (plus the `unmap_*` fields of newer QEMU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BlockDeviceStats {
    /// Bytes moved by completed reads.
    pub rd_bytes: u64,
    /// Bytes moved by completed writes.
    pub wr_bytes: u64,
    /// Bytes moved by completed discards.
    pub unmap_bytes: u64,
    /// Completed reads.
    pub rd_operations: u64,
    /// Completed writes.
    pub wr_operations: u64,
    /// Completed flushes.
    pub flush_operations: u64,
    /// Completed discards.
    pub unmap_operations: u64,
    /// Total latency of reads, ns.
    pub rd_total_time_ns: u64,
    /// Total latency of writes, ns.
    pub wr_total_time_ns: u64,
    /// Total latency of flushes, ns.
    pub flush_total_time_ns: u64,
    /// Total latency of discards, ns.
    pub unmap_total_time_ns: u64,
    /// The offset after the greatest byte written.
    pub wr_highest_offset: u64,
    /// Reads merged into other requests.
    pub rd_merged: u64,
    /// Writes merged into other requests.
    pub wr_merged: u64,
    /// Discards merged into other requests.
    pub unmap_merged: u64,
    /// Time since the last accounted I/O; `None` before any.
    pub idle_time_ns: Option<u64>,
    /// Failed reads.
    pub failed_rd_operations: u64,
    /// Failed writes.
    pub failed_wr_operations: u64,
    /// Failed flushes.
    pub failed_flush_operations: u64,
    /// Failed discards.
    pub failed_unmap_operations: u64,
    /// Invalid reads.
    pub invalid_rd_operations: u64,
    /// Invalid writes.
    pub invalid_wr_operations: u64,
    /// Invalid flushes.
    pub invalid_flush_operations: u64,
    /// Invalid discards.
    pub invalid_unmap_operations: u64,
    /// Whether invalid requests count as accesses.
    pub account_invalid: bool,
    /// Whether failed requests count as accesses and towards latency.
    pub account_failed: bool,
}

/// `BlockDeviceTimedStats` for one interval.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct BlockDeviceTimedStats {
    /// Interval in seconds.
    pub interval_length: u64,
    /// Minimum latency of reads in the window, ns.
    pub min_rd_latency_ns: u64,
    /// Maximum latency of reads in the window, ns.
    pub max_rd_latency_ns: u64,
    /// Average latency of reads in the window, ns.
    pub avg_rd_latency_ns: u64,
    /// Minimum latency of writes in the window, ns.
    pub min_wr_latency_ns: u64,
    /// Maximum latency of writes in the window, ns.
    pub max_wr_latency_ns: u64,
    /// Average latency of writes in the window, ns.
    pub avg_wr_latency_ns: u64,
    /// Minimum latency of flushes in the window, ns.
    pub min_flush_latency_ns: u64,
    /// Maximum latency of flushes in the window, ns.
    pub max_flush_latency_ns: u64,
    /// Average latency of flushes in the window, ns.
    pub avg_flush_latency_ns: u64,
    /// Average number of reads in flight in the window.
    pub avg_rd_queue_depth: f64,
    /// Average number of writes in flight in the window.
    pub avg_wr_queue_depth: f64,
}

/// Why an interval could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsError {
    /// Interval of 0 seconds, or too long to express in nanoseconds.
    BadInterval,
    /// No room for another interval.
    Full,
}

#[derive(Clone, Copy, Debug)]
struct Window {
    min: u64,
    max: u64,
    sum: u64,
    count: u64,
    expiration: u64,
}

impl Window {
    const EMPTY: Window = Window {
        min: u64::MAX,
        max: 0,
        sum: 0,
        count: 0,
        expiration: 0,
    };
}

#[derive(Clone, Copy, Debug)]
struct TimedAverage {
    period: u64,
    windows: [Window; 2],
}

impl TimedAverage {
    fn new(period: u64, now: u64) -> Self {
        let mut w = [Window::EMPTY; 2];
        w[0].expiration = now.saturating_add(period / 2);
        w[1].expiration = now.saturating_add(period);
        Self { period, windows: w }
    }

    /// Resets expired windows and returns (index of the older one, elapsed).
    fn check(&mut self, now: u64) -> (usize, u64) {
        for w in self.windows.iter_mut() {
            if w.expiration <= now {
                let since = (now - w.expiration) % self.period;
                *w = Window::EMPTY;
                w.expiration = now.saturating_add(self.period - since);
            }
        }
        let cur = if self.windows[0].expiration < self.windows[1].expiration {
            0
        } else {
            1
        };
        let remaining = self.windows[cur].expiration.saturating_sub(now);
        (cur, self.period.saturating_sub(remaining))
    }

    fn account(&mut self, now: u64, v: u64) {
        self.check(now);
        for w in self.windows.iter_mut() {
            w.min = w.min.min(v);
            w.max = w.max.max(v);
            w.sum = w.sum.saturating_add(v);
            w.count += 1;
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Interval {
    secs: u64,
    latency: [TimedAverage; 3],
}

/// Accounting state of one device, with up to `N` timed intervals.
#[derive(Clone, Debug)]
pub struct BlockAcct<const N: usize> {
    bytes: [u64; 4],
    ops: [u64; 4],
    total_ns: [u64; 4],
    merged: [u64; 4],
    failed: [u64; 4],
    invalid: [u64; 4],
    wr_highest_offset: u64,
    last_access_ns: Option<u64>,
    account_invalid: bool,
    account_failed: bool,
    intervals: heapless::Vec<Interval, N>,
}

impl<const N: usize> BlockAcct<N> {
    /// Empty statistics. `account_invalid` / `account_failed` decide whether
    /// invalid / failed requests count as accesses (and failed ones towards
    /// latency), as the QAPI fields of those names describe.
    pub fn new(account_invalid: bool, account_failed: bool) -> Self {
        Self {
            bytes: [0; 4],
            ops: [0; 4],
            total_ns: [0; 4],
            merged: [0; 4],
            failed: [0; 4],
            invalid: [0; 4],
            wr_highest_offset: 0,
            last_access_ns: None,
            account_invalid,
            account_failed,
            intervals: heapless::Vec::new(),
        }
    }

    /// Adds a timed-statistics interval of `secs` seconds starting at `now_ns`.
    pub fn add_interval(&mut self, secs: u64, now_ns: u64) -> Result<(), StatsError> {
        let period = secs
            .checked_mul(NS_PER_SEC)
            .and_then(|p| p.checked_mul(4))
            .map(|p| p / 3)
            .filter(|&p| p > 0)
            .ok_or(StatsError::BadInterval)?;
        let ta = TimedAverage::new(period, now_ns);
        self.intervals
            .push(Interval {
                secs,
                latency: [ta; 3],
            })
            .map_err(|_| StatsError::Full)
    }

    /// A request begins.
    pub fn start(&self, now_ns: u64, kind: AcctType, bytes: u64) -> Cookie {
        Cookie {
            kind,
            bytes,
            start_ns: now_ns,
        }
    }

    fn account(&mut self, c: Cookie, now_ns: u64, failed: bool) {
        let k = c.kind as usize;
        if failed {
            self.failed[k] += 1;
        } else {
            self.bytes[k] = self.bytes[k].saturating_add(c.bytes);
            self.ops[k] += 1;
        }
        if !failed || self.account_failed {
            let latency = now_ns.saturating_sub(c.start_ns);
            self.total_ns[k] = self.total_ns[k].saturating_add(latency);
            self.last_access_ns = Some(now_ns);
            if k < 3 {
                for i in self.intervals.iter_mut() {
                    i.latency[k].account(now_ns, latency);
                }
            }
        }
    }

    /// The request behind `c` succeeded at `now_ns`.
    pub fn done(&mut self, c: Cookie, now_ns: u64) {
        self.account(c, now_ns, false);
    }

    /// The request behind `c` failed at `now_ns`.
    pub fn failed(&mut self, c: Cookie, now_ns: u64) {
        self.account(c, now_ns, true);
    }

    /// A request was rejected as invalid (bad range, flags …) at `now_ns`.
    pub fn invalid(&mut self, kind: AcctType, now_ns: u64) {
        self.invalid[kind as usize] += 1;
        if self.account_invalid {
            self.last_access_ns = Some(now_ns);
        }
    }

    /// `n` requests of `kind` were merged into others.
    pub fn merged(&mut self, kind: AcctType, n: u64) {
        self.merged[kind as usize] = self.merged[kind as usize].saturating_add(n);
    }

    /// A write (or write-zeroes) of `[offset, offset+length)` was issued.
    pub fn wrote(&mut self, offset: u64, length: u64) {
        self.wr_highest_offset = self.wr_highest_offset.max(offset.saturating_add(length));
    }

    /// `BlockDeviceStats` as of `now_ns`.
    pub fn stats(&self, now_ns: u64) -> BlockDeviceStats {
        let [rd, wr, fl, un] = [0, 1, 2, 3];
        BlockDeviceStats {
            rd_bytes: self.bytes[rd],
            wr_bytes: self.bytes[wr],
            unmap_bytes: self.bytes[un],
            rd_operations: self.ops[rd],
            wr_operations: self.ops[wr],
            flush_operations: self.ops[fl],
            unmap_operations: self.ops[un],
            rd_total_time_ns: self.total_ns[rd],
            wr_total_time_ns: self.total_ns[wr],
            flush_total_time_ns: self.total_ns[fl],
            unmap_total_time_ns: self.total_ns[un],
            wr_highest_offset: self.wr_highest_offset,
            rd_merged: self.merged[rd],
            wr_merged: self.merged[wr],
            unmap_merged: self.merged[un],
            idle_time_ns: self.last_access_ns.map(|t| now_ns.saturating_sub(t)),
            failed_rd_operations: self.failed[rd],
            failed_wr_operations: self.failed[wr],
            failed_flush_operations: self.failed[fl],
            failed_unmap_operations: self.failed[un],
            invalid_rd_operations: self.invalid[rd],
            invalid_wr_operations: self.invalid[wr],
            invalid_flush_operations: self.invalid[fl],
            invalid_unmap_operations: self.invalid[un],
            account_invalid: self.account_invalid,
            account_failed: self.account_failed,
        }
    }

    /// Calls `f` with `BlockDeviceTimedStats` for each interval as of
    /// `now_ns`, in the order they were added.
    pub fn timed_stats(&mut self, now_ns: u64, f: &mut dyn FnMut(BlockDeviceTimedStats)) {
        for iv in self.intervals.iter_mut() {
            let mut out = BlockDeviceTimedStats {
                interval_length: iv.secs,
                ..Default::default()
            };
            let mut fig = [(0u64, 0u64, 0u64, 0f64); 3];
            for (k, ta) in iv.latency.iter_mut().enumerate() {
                let (cur, elapsed) = ta.check(now_ns);
                let w = &ta.windows[cur];
                let min = if w.count > 0 { w.min } else { 0 };
                let avg = w.sum.checked_div(w.count).unwrap_or(0);
                let depth = if elapsed > 0 {
                    w.sum as f64 / elapsed as f64
                } else {
                    0.0
                };
                fig[k] = (min, w.max, avg, depth);
            }
            (
                out.min_rd_latency_ns,
                out.max_rd_latency_ns,
                out.avg_rd_latency_ns,
                out.avg_rd_queue_depth,
            ) = fig[0];
            (
                out.min_wr_latency_ns,
                out.max_wr_latency_ns,
                out.avg_wr_latency_ns,
                out.avg_wr_queue_depth,
            ) = fig[1];
            (
                out.min_flush_latency_ns,
                out.max_flush_latency_ns,
                out.avg_flush_latency_ns,
                _,
            ) = fig[2];
            f(out);
        }
    }
}
