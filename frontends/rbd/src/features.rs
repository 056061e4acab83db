//! RBD image feature bits (`rbd/features.h`; checked against the header by
//! `tests/header_abi.rs` like the declarations in `sys`).

use std::fmt;

pub const RBD_FEATURE_LAYERING: u64 = 1 << 0;
pub const RBD_FEATURE_STRIPINGV2: u64 = 1 << 1;
pub const RBD_FEATURE_EXCLUSIVE_LOCK: u64 = 1 << 2;
pub const RBD_FEATURE_OBJECT_MAP: u64 = 1 << 3;
pub const RBD_FEATURE_FAST_DIFF: u64 = 1 << 4;
pub const RBD_FEATURE_DEEP_FLATTEN: u64 = 1 << 5;
pub const RBD_FEATURE_JOURNALING: u64 = 1 << 6;
pub const RBD_FEATURE_DATA_POOL: u64 = 1 << 7;
pub const RBD_FEATURE_OPERATIONS: u64 = 1 << 8;
pub const RBD_FEATURE_MIGRATING: u64 = 1 << 9;
pub const RBD_FEATURE_NON_PRIMARY: u64 = 1 << 10;
pub const RBD_FEATURE_DIRTY_CACHE: u64 = 1 << 11;

/// The names `rbd info` prints, in bit order.
const NAMES: [(u64, &str); 12] = [
    (RBD_FEATURE_LAYERING, "layering"),
    (RBD_FEATURE_STRIPINGV2, "striping"),
    (RBD_FEATURE_EXCLUSIVE_LOCK, "exclusive-lock"),
    (RBD_FEATURE_OBJECT_MAP, "object-map"),
    (RBD_FEATURE_FAST_DIFF, "fast-diff"),
    (RBD_FEATURE_DEEP_FLATTEN, "deep-flatten"),
    (RBD_FEATURE_JOURNALING, "journaling"),
    (RBD_FEATURE_DATA_POOL, "data-pool"),
    (RBD_FEATURE_OPERATIONS, "operations"),
    (RBD_FEATURE_MIGRATING, "migrating"),
    (RBD_FEATURE_NON_PRIMARY, "non-primary"),
    (RBD_FEATURE_DIRTY_CACHE, "dirty-cache"),
];

/// An image's feature bits.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Features(pub u64);

impl Features {
    pub fn contains(self, bit: u64) -> bool {
        self.0 & bit == bit
    }

    /// With `exclusive-lock`, two handles writing the same image hand the
    /// lock back and forth; an NBD export may advertise `CAN_MULTI_CONN`
    /// only when every connection shares one handle.
    pub fn exclusive_lock(self) -> bool {
        self.contains(RBD_FEATURE_EXCLUSIVE_LOCK)
    }

    /// `fast-diff` (with `object-map`): allocation queries read the object
    /// map instead of asking every object.
    pub fn fast_diff(self) -> bool {
        self.contains(RBD_FEATURE_FAST_DIFF)
    }

    /// The names of the set bits, as `rbd info` prints them; unknown bits
    /// as hex.
    pub fn names(self) -> Vec<String> {
        let mut out: Vec<String> = NAMES
            .iter()
            .filter(|(b, _)| self.contains(*b))
            .map(|(_, n)| n.to_string())
            .collect();
        let known = NAMES.iter().fold(0, |a, (b, _)| a | b);
        if self.0 & !known != 0 {
            out.push(format!("{:#x}", self.0 & !known));
        }
        out
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Features({})", self.names().join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rbd_info() {
        // 61 is librbd's default: layering, exclusive-lock, object-map,
        // fast-diff, deep-flatten.
        let f = Features(61);
        assert_eq!(
            f.names(),
            [
                "layering",
                "exclusive-lock",
                "object-map",
                "fast-diff",
                "deep-flatten"
            ]
        );
        assert!(f.exclusive_lock() && f.fast_diff());
        assert!(!Features(1).exclusive_lock());
        assert_eq!(Features(1 << 40).names(), ["0x10000000000"]);
    }
}
