//! How the server machine sees the exports a frontend offers.

use crate::wire::{
    DEFAULT_MAX_PAYLOAD, DEFAULT_MIN_BLOCK, DEFAULT_PREFERRED_BLOCK, MAX_MIN_BLOCK,
    TransmissionFlags,
};

/// Size constraints of an export, as `NBD_INFO_BLOCK_SIZE` carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockSizes {
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

impl BlockSizes {
    /// The spec's defaults, with qemu-nbd's 32 MiB maximum payload.
    pub const DEFAULT: Self = Self {
        minimum: DEFAULT_MIN_BLOCK,
        preferred: DEFAULT_PREFERRED_BLOCK,
        maximum: DEFAULT_MAX_PAYLOAD,
    };

    /// What an export over a device advertises, from the device's
    /// request alignment, preferred request size and longest transfer (0
    /// for no limit): each rounded up to a power of two within the spec's
    /// bounds, the preferred size at least 4 KiB (the page size clients
    /// cache in) and at most the default maximum payload, the maximum the
    /// device's limit or the default payload, whichever is lower, but never
    /// below the preferred size.
    pub const fn of_device(align: u64, preferred: u64, max_transfer: u64) -> Self {
        let minimum = pow2_within(align, 1, MAX_MIN_BLOCK);
        let mut preferred = pow2_within(
            if preferred > 4096 { preferred } else { 4096 },
            512,
            DEFAULT_MAX_PAYLOAD,
        );
        if preferred < minimum {
            preferred = minimum;
        }
        let mut maximum = DEFAULT_MAX_PAYLOAD;
        if max_transfer > 0 && max_transfer < maximum as u64 {
            maximum = max_transfer as u32;
        }
        if maximum < preferred {
            maximum = preferred;
        }
        Self {
            minimum,
            preferred,
            maximum,
        }
    }

    /// Whether these values obey the spec's rules for advertising them:
    /// minimum a power of two ≤ 64 KiB, preferred a power of two ≥
    /// max(minimum, 512), maximum ≥ preferred.
    pub const fn is_valid(&self) -> bool {
        self.minimum.is_power_of_two()
            && self.minimum <= MAX_MIN_BLOCK
            && self.preferred.is_power_of_two()
            && self.preferred >= self.minimum
            && self.preferred >= 512
            && self.maximum >= self.preferred
    }
}

/// `v` rounded up to a power of two within `[lo, hi]` (both powers of
/// two).
const fn pow2_within(v: u64, lo: u32, hi: u32) -> u32 {
    if v <= lo as u64 {
        lo
    } else if v >= hi as u64 {
        hi
    } else {
        (v as u32).next_power_of_two()
    }
}

impl Default for BlockSizes {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What an export's device can do, as far as the transmission flags the
/// export advertises depend on it.
///
/// Every frontend turns its device's abilities into flags here, so the
/// same device is advertised the same way everywhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DeviceCaps {
    /// Writes, trims and zeroing are refused.
    pub read_only: bool,
    /// The device honours `NBD_CMD_TRIM` (even as a no-op: trim is advisory).
    pub trim: bool,
    /// The device answers `NBD_CMD_WRITE_ZEROES` (natively or by writing).
    pub write_zeroes: bool,
    /// Zeroing is cheap, so `NBD_CMD_FLAG_FAST_ZERO` can be honoured.
    pub fast_zero: bool,
    /// The device answers `NBD_CMD_CACHE` (even as a no-op).
    pub cache: bool,
    /// A flush on one connection covers writes completed on every other
    /// (one device state behind every connection).
    pub multi_conn: bool,
    /// Seeks are costly (a spinning disk).
    pub rotational: bool,
}

impl DeviceCaps {
    /// The flags an export over this device advertises. `FLUSH` and `FUA`
    /// are always offered (a device without a cache flushes trivially);
    /// writing commands only on writable exports, as qemu-nbd does; the
    /// machine adds `HAS_FLAGS`, `SEND_DF` and `BLOCK_STAT_PAYLOAD` per
    /// session.
    pub const fn transmission_flags(&self) -> TransmissionFlags {
        let mut f = TransmissionFlags::SEND_FLUSH.union(TransmissionFlags::SEND_FUA);
        if self.read_only {
            f = f.union(TransmissionFlags::READ_ONLY);
        } else {
            if self.trim {
                f = f.union(TransmissionFlags::SEND_TRIM);
            }
            if self.write_zeroes {
                f = f.union(TransmissionFlags::SEND_WRITE_ZEROES);
                if self.fast_zero {
                    f = f.union(TransmissionFlags::SEND_FAST_ZERO);
                }
            }
        }
        if self.cache {
            f = f.union(TransmissionFlags::SEND_CACHE);
        }
        if self.multi_conn {
            f = f.union(TransmissionFlags::CAN_MULTI_CONN);
        }
        if self.rotational {
            f = f.union(TransmissionFlags::ROTATIONAL);
        }
        f
    }
}

/// One export as the handshake describes it.
///
/// `flags` are what the export supports (`READ_ONLY`, `SEND_FLUSH`,
/// `SEND_FUA`, `SEND_TRIM`, `SEND_WRITE_ZEROES`, `SEND_FAST_ZERO`,
/// `SEND_CACHE`, `CAN_MULTI_CONN`, `ROTATIONAL`); the machine adds
/// `HAS_FLAGS`, and `SEND_DF` / `BLOCK_STAT_PAYLOAD` where the session's
/// negotiation allows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportInfo<'a> {
    /// Canonical name, as `NBD_OPT_LIST` shows it.
    pub name: &'a str,
    /// Human-readable description; empty for none.
    pub description: &'a str,
    pub size: u64,
    pub flags: TransmissionFlags,
    pub block_sizes: BlockSizes,
    /// Refuse `NBD_OPT_GO` without an `NBD_INFO_BLOCK_SIZE` request
    /// (`NBD_REP_ERR_BLOCK_SIZE_REQD`) and `NBD_OPT_EXPORT_NAME` altogether:
    /// for exports whose constraints are not the defaults.
    pub block_size_required: bool,
}

impl<'a> ExportInfo<'a> {
    /// An export of a device that can do `caps`, needing `block_sizes`:
    /// clients must honour them when the device has an alignment (a
    /// minimum above 1).
    pub const fn of_device(
        name: &'a str,
        description: &'a str,
        size: u64,
        caps: DeviceCaps,
        block_sizes: BlockSizes,
    ) -> Self {
        Self {
            name,
            description,
            size,
            flags: caps.transmission_flags(),
            block_sizes,
            block_size_required: block_sizes.minimum > 1,
        }
    }
}

/// One export on its own is a table of one that offers `base:allocation`
/// only: all a frontend with a single export and no other context needs.
impl Exports for ExportInfo<'_> {
    fn find(&self, name: &str) -> Option<usize> {
        (name == self.name).then_some(0)
    }

    fn export(&self, index: usize) -> Option<ExportInfo<'_>> {
        (index == 0).then_some(*self)
    }

    fn meta_context(&self, export: usize, index: usize) -> Option<&str> {
        (export == 0 && index == 0).then_some(crate::wire::context::BASE_ALLOCATION)
    }
}

/// The frontend's table of exports, consulted during the handshake.
///
/// Exports are addressed by position so the machine can walk them for
/// `NBD_OPT_LIST` without allocating; a frontend that changes exports at run
/// time hands each connection a snapshot, so positions stay meaningful for
/// the connection's lifetime.
pub trait Exports {
    /// Position of the export called `name`. The machine makes `""`, if no
    /// export has that name, the default export: the first.
    fn find(&self, name: &str) -> Option<usize>;

    /// The export at `index`, or `None` past the last.
    fn export(&self, index: usize) -> Option<ExportInfo<'_>>;

    /// The `index`th metadata context the export offers, by full name
    /// (`base:allocation`, `qemu:allocation-depth`,
    /// `qemu:dirty-bitmap:NAME`). A context's position is its id on the
    /// wire; positions past [`super::MAX_CONTEXTS`] are not offered.
    fn meta_context(&self, export: usize, index: usize) -> Option<&str>;
}

impl<T: Exports + ?Sized> Exports for &T {
    fn find(&self, name: &str) -> Option<usize> {
        (**self).find(name)
    }
    fn export(&self, index: usize) -> Option<ExportInfo<'_>> {
        (**self).export(index)
    }
    fn meta_context(&self, export: usize, index: usize) -> Option<&str> {
        (**self).meta_context(export, index)
    }
}

/// The export a client's `name` asks for: the one of that name, else for
/// `""` the default export (the first), the spec's reading of an empty name.
pub(super) fn resolve(exports: &impl Exports, name: &str) -> Option<usize> {
    exports
        .find(name)
        .or_else(|| (name.is_empty() && exports.export(0).is_some()).then_some(0))
}

/// A set of metadata contexts of one export, by id (position).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ContextSet(pub u64);

impl ContextSet {
    pub const EMPTY: Self = Self(0);

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn contains(self, id: u32) -> bool {
        id < 64 && self.0 & (1 << id) != 0
    }

    pub fn insert(&mut self, id: u32) {
        if id < 64 {
            self.0 |= 1 << id;
        }
    }

    pub const fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// Ids in ascending order.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        let mut bits = self.0;
        core::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let id = bits.trailing_zeros();
            bits &= bits - 1;
            Some(id)
        })
    }
}
