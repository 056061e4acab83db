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
pub mod dirty_bitmap;
pub mod overlay;
pub mod raw_window;
pub mod stats;
pub mod throttle;
pub mod write_threshold;
pub mod zero_policy;

pub use extent::Extent;
