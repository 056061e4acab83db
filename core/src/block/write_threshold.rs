//! `block-set-write-threshold` and the one-shot `BLOCK_WRITE_THRESHOLD`
//! event.
//!
//! A write (or write-zeroes) whose end passes the threshold fires one event
//! carrying the node name, the bytes beyond the threshold and the threshold;
//! the threshold is then disarmed until set again. A threshold of 0 is
//! disabled.
//!
//! ```
//! use blockwire_core::block::write_threshold::WriteThreshold;
//!
//! let mut t = WriteThreshold::new("disk0").unwrap();
//! t.set(1 << 20);
//! assert!(t.check_write(0, 4096).is_none());
//! let ev = t.check_write((1 << 20) - 512, 1024).unwrap();
//! assert_eq!((ev.node_name, ev.amount_exceeded, ev.write_threshold), ("disk0", 512, 1 << 20));
//! assert!(t.check_write(1 << 21, 1).is_none()); // one-shot
//! ```

use super::contract::BlockError;

/// Longest node name accepted.
pub const NODE_NAME_CAP: usize = 128;

/// `BLOCK_WRITE_THRESHOLD`'s data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ThresholdEvent<'a> {
    /// `node-name`.
    pub node_name: &'a str,
    /// `amount-exceeded`, in bytes.
    pub amount_exceeded: u64,
    /// `write-threshold`, the threshold that was crossed.
    pub write_threshold: u64,
}

/// The threshold of one node.
#[derive(Clone, Debug)]
pub struct WriteThreshold {
    node_name: heapless::String<NODE_NAME_CAP>,
    threshold: u64,
}

impl WriteThreshold {
    /// A disarmed threshold for `node_name` (at most [`NODE_NAME_CAP`] bytes).
    pub fn new(node_name: &str) -> Result<Self, BlockError> {
        let node_name = heapless::String::try_from(node_name).map_err(|_| BlockError::Invalid)?;
        Ok(Self {
            node_name,
            threshold: 0,
        })
    }

    /// `block-set-write-threshold`; 0 disables.
    pub fn set(&mut self, threshold: u64) {
        self.threshold = threshold;
    }

    /// The armed threshold (0 when disabled or already fired).
    pub fn get(&self) -> u64 {
        self.threshold
    }

    /// Checks a write of `[offset, offset+length)`; returns the event and
    /// disarms if it reaches past the threshold.
    pub fn check_write(&mut self, offset: u64, length: u64) -> Option<ThresholdEvent<'_>> {
        let end = offset.saturating_add(length);
        if self.threshold == 0 || end <= self.threshold {
            return None;
        }
        let write_threshold = core::mem::take(&mut self.threshold);
        Some(ThresholdEvent {
            node_name: &self.node_name,
            amount_exceeded: end - write_threshold,
            write_threshold,
        })
    }
}
