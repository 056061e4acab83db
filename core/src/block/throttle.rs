//! I/O throttling with `ThrottleLimits`' meaning: QEMU's leaky buckets, in
//! exact integer arithmetic.
//!
//! Each of the six buckets (bps / iops × total / read / write) has an average
//! rate `avg`, an optional burst rate `max` and a burst period `max-length`
//! (seconds, default 1). A bucket's level rises by each admitted request's
//! units (bytes, or operations — an operation larger than `iops-size` counts
//! as `bytes / iops-size` operations) and leaks at `avg` per second. As in
//! QEMU, a request may start when every bucket it touches is at or below its
//! capacity — `avg / 10` without a burst, `max × max-length` with one — and,
//! for bursts longer than one second, when the burst level (leaking at `max`)
//! is at or below `max / 10`. The request's own size is accounted after
//! admission, so a large request is never starved.
//!
//! Time is a `u64` count of nanoseconds from any monotonic source chosen by
//! the caller; a `now` earlier than a previous one is treated as no time
//! passing.
//!
//! The `--throttle` syntax is `key=value,...` with `ThrottleLimits` key
//! names (`bps-total`, `iops-read-max`, `bps-write-max-length`, `iops-size`,
//! …; `_` may replace `-`), `bps` / `iops` / `bps-max` / `iops-max` as
//! aliases for the totals, and values as decimal integers optionally
//! followed by `K`, `M`, `G` or `T` (powers of 1024).
//!
//! ```
//! use blockwire_core::block::throttle::{Admission, Direction, Throttle, ThrottleLimits};
//!
//! let limits = ThrottleLimits::parse("iops=10").unwrap();
//! let mut t = Throttle::new(limits).unwrap();
//! // The bucket holds avg/10 = 1 operation before it throttles.
//! assert_eq!(t.try_start(0, Direction::Read, 4096), Admission::Start);
//! assert_eq!(t.try_start(0, Direction::Read, 4096), Admission::Start);
//! assert_eq!(t.try_start(0, Direction::Read, 4096), Admission::NotBefore(100_000_000));
//! assert_eq!(t.try_start(100_000_000, Direction::Read, 4096), Admission::Start);
//! ```

const NS_PER_SEC: u128 = 1_000_000_000;

/// Largest value any limit may take (QEMU's `THROTTLE_VALUE_MAX`).
pub const THROTTLE_VALUE_MAX: u64 = 1_000_000_000_000_000;

/// One bucket's configuration. Zero means "not set".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BucketLimit {
    /// Average rate per second.
    pub avg: u64,
    /// Burst rate per second.
    pub max: u64,
    /// Burst period in seconds (0 or 1: one second).
    pub max_length: u64,
}

/// `ThrottleLimits`: zero fields are unset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ThrottleLimits {
    /// `bps-total`, `bps-total-max`, `bps-total-max-length`.
    pub bps_total: BucketLimit,
    /// `bps-read*`.
    pub bps_read: BucketLimit,
    /// `bps-write*`.
    pub bps_write: BucketLimit,
    /// `iops-total*`.
    pub iops_total: BucketLimit,
    /// `iops-read*`.
    pub iops_read: BucketLimit,
    /// `iops-write*`.
    pub iops_write: BucketLimit,
    /// `iops-size`: operations larger than this count as several.
    pub iops_size: u64,
}

/// Why a throttle configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThrottleError {
    /// A key that is not a `ThrottleLimits` name or alias.
    UnknownKey,
    /// A value that is not a number, or an item without `=`.
    BadValue,
    /// A total and a read/write limit of the same kind are both set.
    TotalAndReadWrite,
    /// A value above [`THROTTLE_VALUE_MAX`].
    ValueTooLarge,
    /// `-max-length` given without `-max`.
    BurstLengthWithoutMax,
    /// `max × max-length` above [`THROTTLE_VALUE_MAX`].
    BurstTooLong,
    /// `-max` given without the average.
    MaxWithoutAvg,
    /// `-max` lower than the average.
    MaxBelowAvg,
}

/// Which direction a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Reads.
    Read,
    /// Writes, write-zeroes and discards.
    Write,
}

/// The answer to "may this request start at `now`?".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Admission {
    /// Start now; it has been accounted.
    Start,
    /// Ask again at this time (ns); nothing was accounted.
    NotBefore(u64),
}

impl ThrottleLimits {
    fn buckets(&self) -> [&BucketLimit; 6] {
        [
            &self.bps_total,
            &self.bps_read,
            &self.bps_write,
            &self.iops_total,
            &self.iops_read,
            &self.iops_write,
        ]
    }

    fn bucket_mut(&mut self, i: usize) -> &mut BucketLimit {
        match i {
            0 => &mut self.bps_total,
            1 => &mut self.bps_read,
            2 => &mut self.bps_write,
            3 => &mut self.iops_total,
            4 => &mut self.iops_read,
            _ => &mut self.iops_write,
        }
    }

    /// Whether any limit is set.
    pub fn is_enabled(&self) -> bool {
        self.buckets().iter().any(|b| b.avg > 0)
    }

    /// Checks the rules QEMU's `throttle_is_valid` applies.
    pub fn validate(&self) -> Result<(), ThrottleError> {
        let b = self.buckets();
        for (t, r, w) in [(0, 1, 2), (3, 4, 5)] {
            if (b[t].avg > 0 && (b[r].avg > 0 || b[w].avg > 0))
                || (b[t].max > 0 && (b[r].max > 0 || b[w].max > 0))
            {
                return Err(ThrottleError::TotalAndReadWrite);
            }
        }
        if self.iops_size > THROTTLE_VALUE_MAX {
            return Err(ThrottleError::ValueTooLarge);
        }
        for k in b {
            if k.avg > THROTTLE_VALUE_MAX || k.max > THROTTLE_VALUE_MAX {
                return Err(ThrottleError::ValueTooLarge);
            }
            if k.max_length > 1 && k.max == 0 {
                return Err(ThrottleError::BurstLengthWithoutMax);
            }
            if k.max > 0 && k.max_length > THROTTLE_VALUE_MAX / k.max {
                return Err(ThrottleError::BurstTooLong);
            }
            if k.max > 0 && k.avg == 0 {
                return Err(ThrottleError::MaxWithoutAvg);
            }
            if k.max > 0 && k.max < k.avg {
                return Err(ThrottleError::MaxBelowAvg);
            }
        }
        Ok(())
    }

    /// Parses the `--throttle` syntax (see the module docs) and validates.
    pub fn parse(s: &str) -> Result<Self, ThrottleError> {
        let mut l = ThrottleLimits::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item.split_once('=').ok_or(ThrottleError::BadValue)?;
            let v = parse_size(v.trim()).ok_or(ThrottleError::BadValue)?;
            l.set(k.trim(), v)?;
        }
        l.validate()?;
        Ok(l)
    }

    /// Sets one field by its `ThrottleLimits` name (or alias).
    pub fn set(&mut self, key: &str, value: u64) -> Result<(), ThrottleError> {
        const KINDS: [&str; 2] = ["bps", "iops"];
        const DIRS: [&str; 3] = ["total", "read", "write"];
        if eq_key(key, "iops-size") {
            self.iops_size = value;
            return Ok(());
        }
        let (kind, rest) = KINDS
            .iter()
            .enumerate()
            .find_map(|(i, k)| {
                let rest = key.strip_prefix(k)?;
                (rest.is_empty() || rest.starts_with(['-', '_'])).then_some((i, rest))
            })
            .ok_or(ThrottleError::UnknownKey)?;
        let rest = rest.get(1..).unwrap_or("");
        let (dir, field) = DIRS
            .iter()
            .enumerate()
            .find_map(|(i, d)| {
                let f = rest.strip_prefix(d)?;
                (f.is_empty() || f.starts_with(['-', '_'])).then(|| (i, f.get(1..).unwrap_or("")))
            })
            .unwrap_or((0, rest));
        let b = self.bucket_mut(kind * 3 + dir);
        if field.is_empty() {
            b.avg = value;
        } else if eq_key(field, "max") {
            b.max = value;
        } else if eq_key(field, "max-length") {
            b.max_length = value;
        } else {
            return Err(ThrottleError::UnknownKey);
        }
        Ok(())
    }
}

fn eq_key(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || (x == b'_' && y == b'-'))
}

/// A decimal number with an optional `K`/`M`/`G`/`T` (1024-based) suffix.
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let (digits, mul) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&s[..s.len() - 1], 1 << 20),
        b'g' | b'G' => (&s[..s.len() - 1], 1 << 30),
        b't' | b'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(mul)
}

#[derive(Clone, Copy, Debug, Default)]
struct Level {
    /// Units × 10^9, so leaking `avg` units per second is `avg` per ns.
    level: u128,
    burst: u128,
}

/// Throttling state for one device (or one throttle group).
#[derive(Clone, Debug)]
pub struct Throttle {
    limits: ThrottleLimits,
    levels: [Level; 6],
    last_ns: u64,
}

impl Throttle {
    /// A throttle with empty buckets.
    pub fn new(limits: ThrottleLimits) -> Result<Self, ThrottleError> {
        limits.validate()?;
        Ok(Self {
            limits,
            levels: [Level::default(); 6],
            last_ns: 0,
        })
    }

    /// Replaces the limits; like QEMU, this empties the buckets.
    pub fn set_limits(&mut self, limits: ThrottleLimits) -> Result<(), ThrottleError> {
        limits.validate()?;
        self.limits = limits;
        self.levels = [Level::default(); 6];
        Ok(())
    }

    /// The configured limits.
    pub fn limits(&self) -> &ThrottleLimits {
        &self.limits
    }

    fn relevant(dir: Direction) -> [usize; 4] {
        match dir {
            Direction::Read => [0, 1, 3, 4],
            Direction::Write => [0, 2, 3, 5],
        }
    }

    fn leak(&mut self, now_ns: u64) {
        let d = u128::from(now_ns.saturating_sub(self.last_ns));
        self.last_ns = self.last_ns.max(now_ns);
        for (lv, b) in self.levels.iter_mut().zip(self.limits.buckets()) {
            lv.level = lv.level.saturating_sub(u128::from(b.avg) * d);
            if b.max_length > 1 {
                lv.burst = lv.burst.saturating_sub(u128::from(b.max) * d);
            }
        }
    }

    fn bucket_wait(b: &BucketLimit, lv: &Level) -> u128 {
        if b.avg == 0 {
            return 0;
        }
        let (cap, burst_cap) = if b.max == 0 {
            (u128::from(b.avg) * NS_PER_SEC / 10, 0)
        } else {
            let len = u128::from(b.max_length.max(1));
            (
                u128::from(b.max) * len * NS_PER_SEC,
                u128::from(b.max) * NS_PER_SEC / 10,
            )
        };
        // QEMU reports the main bucket's wait first and the burst wait on
        // the next wake-up; both levels only fall, so the later of the two
        // is when the request can really start — one wake-up instead of two.
        let main = lv.level.saturating_sub(cap).div_ceil(u128::from(b.avg));
        let burst = if b.max_length > 1 {
            lv.burst
                .saturating_sub(burst_cap)
                .div_ceil(u128::from(b.max))
        } else {
            0
        };
        main.max(burst)
    }

    /// Nanoseconds from `now_ns` until a `dir` request may start (0: now).
    pub fn wait_ns(&mut self, now_ns: u64, dir: Direction) -> u64 {
        self.leak(now_ns);
        let b = self.limits.buckets();
        let w = Self::relevant(dir)
            .iter()
            .map(|&i| Self::bucket_wait(b[i], &self.levels[i]))
            .max()
            .unwrap_or(0);
        u64::try_from(w).unwrap_or(u64::MAX)
    }

    /// Units (× 10^9) a request of `bytes` adds to bucket `i`.
    fn units(&self, i: usize, bytes: u64) -> u128 {
        if i < 3 {
            u128::from(bytes) * NS_PER_SEC
        } else if self.limits.iops_size > 0 && bytes > self.limits.iops_size {
            u128::from(bytes) * NS_PER_SEC / u128::from(self.limits.iops_size)
        } else {
            NS_PER_SEC
        }
    }

    /// Admits and accounts a `dir` request of `bytes` at `now_ns`, or says
    /// when to ask again.
    pub fn try_start(&mut self, now_ns: u64, dir: Direction, bytes: u64) -> Admission {
        let wait = self.wait_ns(now_ns, dir);
        if wait > 0 {
            return Admission::NotBefore(now_ns.saturating_add(wait));
        }
        for i in Self::relevant(dir) {
            let u = self.units(i, bytes);
            let lv = &mut self.levels[i];
            lv.level = lv.level.saturating_add(u);
            lv.burst = lv.burst.saturating_add(u);
        }
        Admission::Start
    }
}
