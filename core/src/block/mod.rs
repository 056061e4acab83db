//! Block-driver logic as pure, sans-IO functions.
//!
//! Each submodule is one piece of QEMU's block layer, re-expressed as a
//! planner plus state that a frontend drives (see [`contract`]). Storage that
//! grows with the disk is always caller-provided `u64` words; the `alloc`
//! feature adds `Vec`-backed constructors.

mod cells;
mod extent;

pub mod alloc_map;
pub mod blkdebug;
pub mod contract;
pub mod device;
pub mod dirty_bitmap;
pub mod overlay;
pub mod raw_window;
pub mod stats;
pub mod throttle;
pub mod write_threshold;
pub mod zero_policy;

pub use device::BlockDevice;
pub use extent::Extent;

/// `Display` and `core::error::Error` for the block logic's error types:
/// messages a frontend can show a user as they are.
mod error_text {
    use core::fmt;

    use super::blkdebug::BlkdebugError;
    use super::contract::BlockError;
    use super::dirty_bitmap::BitmapError;
    use super::stats::StatsError;
    use super::throttle::ThrottleError;

    macro_rules! text {
        ($ty:ty { $($pat:pat => $msg:expr),* $(,)? }) => {
            impl fmt::Display for $ty {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    match self { $($pat => f.write_str($msg)),* }
                }
            }
            impl core::error::Error for $ty {}
        };
    }

    impl BlockError {
        /// What went wrong, in words for a user or a client (the message
        /// of an NBD error chunk).
        pub const fn message(&self) -> &'static str {
            match self {
                BlockError::OutOfRange => "request outside the device",
                BlockError::Misaligned => "request not aligned to the device",
                BlockError::TooLarge => "request too large for the device",
                BlockError::Invalid => "invalid request or configuration",
                BlockError::NotSupported => "not supported by the device",
                BlockError::NoSpace => "no space left on the device",
                BlockError::Busy => "not permitted in the current state",
                BlockError::StorageTooSmall => "storage too small for the geometry",
                BlockError::Io(_) => "I/O error",
            }
        }
    }

    impl fmt::Display for BlockError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.message())?;
            match self {
                BlockError::Io(e) => write!(f, " (errno {e})"),
                _ => Ok(()),
            }
        }
    }
    impl core::error::Error for BlockError {}

    text!(ThrottleError {
        ThrottleError::UnknownKey => "unknown throttle limit",
        ThrottleError::BadValue => "throttle value is not a number",
        ThrottleError::TotalAndReadWrite => "bps/iops/max total values and read/write values cannot be used at the same time",
        ThrottleError::ValueTooLarge => "throttle values must be within [0, 1000000000000000]",
        ThrottleError::BurstLengthWithoutMax => "bps_max_length/iops_max_length require corresponding bps_max/iops_max",
        ThrottleError::BurstTooLong => "burst length too high for this burst rate",
        ThrottleError::MaxWithoutAvg => "bps_max/iops_max require corresponding bps/iops values",
        ThrottleError::MaxBelowAvg => "bps_max/iops_max cannot be lower than bps/iops",
    });

    text!(BlkdebugError {
        BlkdebugError::Full => "too many blkdebug rules",
        BlkdebugError::MissingEvent => "a blkdebug rule without event=",
        BlkdebugError::UnknownEvent => "unknown blkdebug event name",
        BlkdebugError::UnknownKey => "unknown key for this kind of blkdebug rule",
        BlkdebugError::BadValue => "a blkdebug value that does not parse",
    });

    text!(BitmapError {
        BitmapError::NotFound => "Dirty bitmap not found",
        BitmapError::Exists => "Bitmap already exists",
        BitmapError::BadName => "Bitmap name must be 1 to 128 bytes",
        BitmapError::BadGranularity => "Granularity must be power of 2 and at least 512",
        BitmapError::Frozen => "Bitmap is busy",
        BitmapError::Disabled => "Bitmap is disabled",
        BitmapError::Full => "Too many dirty bitmaps on this node",
        BitmapError::StorageTooSmall => "Bitmap storage too small for the disk",
        BitmapError::OutOfRange => "Range past the end of the disk",
    });

    text!(StatsError {
        StatsError::BadInterval => "invalid statistics interval",
        StatsError::Full => "too many statistics intervals",
    });
}
