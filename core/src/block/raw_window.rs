//! The raw driver's `offset` and `size` options: a window onto a child.
//!
//! Requests are checked against the window's size and shifted by its offset;
//! extents from the child are clipped so that nothing past the window leaks
//! out. As in QEMU, an explicit `size` must be a multiple of 512 and the
//! window must lie inside the child.
//!
//! ```
//! use blockwire_core::block::raw_window::RawWindow;
//!
//! let w = RawWindow::new(1 << 20, 4096, Some(8192)).unwrap();
//! assert_eq!(w.size(), 8192);
//! assert_eq!(w.to_child(512, 1024), Ok(4608));
//! assert!(w.to_child(8000, 1024).is_err());
//! ```

use super::Extent;
use super::contract::{BlockError, check_range};

/// `BlockdevOptionsRaw` resolved against the child's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RawWindow {
    offset: u64,
    size: u64,
}

impl RawWindow {
    /// A window at `offset` into a child of `child_size` bytes, `size` bytes
    /// long (default: the rest of the child).
    pub fn new(child_size: u64, offset: u64, size: Option<u64>) -> Result<Self, BlockError> {
        if offset > child_size {
            return Err(BlockError::OutOfRange);
        }
        let size = match size {
            None => child_size - offset,
            Some(s) if s % 512 != 0 => return Err(BlockError::Misaligned),
            Some(s) => {
                check_range(offset, s, child_size)?;
                s
            }
        };
        Ok(Self { offset, size })
    }

    /// Start of the window in the child.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Size the window presents.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Child offset of window bytes `[offset, offset+length)`, after checking
    /// they lie inside the window.
    pub fn to_child(&self, offset: u64, length: u64) -> Result<u64, BlockError> {
        check_range(offset, length, self.size)?;
        // Cannot overflow: offset + length <= size and self.offset + size
        // was checked against the child size.
        Ok(self.offset + offset)
    }

    /// Clips an extent the child reported at window offset `at` so it does
    /// not reach past the window.
    pub fn clip_extent(&self, at: u64, e: Extent) -> Extent {
        Extent::new(e.length.min(self.size.saturating_sub(at)), e.flags)
    }
}
