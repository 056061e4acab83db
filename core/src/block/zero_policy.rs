//! `detect-zeroes` (`BlockdevDetectZeroesOptions`) and `discard`
//! (`BlockdevDiscardOptions`) policies.
//!
//! * `discard=ignore` drops trim requests; `discard=unmap` forwards them and
//!   lets write-zeroes deallocate.
//! * `detect-zeroes=on` turns writes whose payload is all zeroes into
//!   write-zeroes; `unmap` additionally lets them deallocate, which QEMU
//!   only accepts together with `discard=unmap`.
//!
//! ```
//! use blockwire_core::block::zero_policy::{Discard, DetectZeroes, WriteAction, ZeroPolicy};
//!
//! let p = ZeroPolicy::new(DetectZeroes::Unmap, Discard::Unmap).unwrap();
//! assert_eq!(p.plan_write(&[0; 4096]), WriteAction::WriteZeroes { may_unmap: true });
//! assert_eq!(p.plan_write(&[1; 16]), WriteAction::Write);
//! assert!(ZeroPolicy::new(DetectZeroes::Unmap, Discard::Ignore).is_err());
//! ```

use super::contract::{BlockError, ReqFlags};

/// `BlockdevDetectZeroesOptions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DetectZeroes {
    /// No detection (default).
    #[default]
    Off,
    /// Convert zero writes to write-zeroes.
    On,
    /// Convert and allow deallocation.
    Unmap,
}

/// `BlockdevDiscardOptions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Discard {
    /// Ignore discard requests (default).
    #[default]
    Ignore,
    /// Forward them as unmap requests.
    Unmap,
}

impl DetectZeroes {
    /// Parses `off`, `on` or `unmap`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(Self::Off),
            "on" => Some(Self::On),
            "unmap" => Some(Self::Unmap),
            _ => None,
        }
    }
}

impl Discard {
    /// Parses `ignore` or `unmap` (and QEMU's `off` / `on` spellings).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ignore" | "off" => Some(Self::Ignore),
            "unmap" | "on" => Some(Self::Unmap),
            _ => None,
        }
    }
}

/// What to do with a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteAction {
    /// Write the payload.
    Write,
    /// Write zeroes instead; deallocation allowed if `may_unmap`.
    WriteZeroes {
        /// The range may be deallocated.
        may_unmap: bool,
    },
}

/// What to do with a trim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiscardAction {
    /// Report success without doing anything.
    Ignore,
    /// Unmap the range.
    Unmap,
}

/// The two options together, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ZeroPolicy {
    detect: DetectZeroes,
    discard: Discard,
}

/// Whether every byte of `buf` is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    let (head, body) = buf.split_at(buf.len() % 16);
    head.iter().all(|&b| b == 0)
        && body
            .chunks_exact(16)
            .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0)
}

impl ZeroPolicy {
    /// Combines the options; `detect-zeroes=unmap` needs `discard=unmap`.
    pub fn new(detect: DetectZeroes, discard: Discard) -> Result<Self, BlockError> {
        if detect == DetectZeroes::Unmap && discard != Discard::Unmap {
            return Err(BlockError::Invalid);
        }
        Ok(Self { detect, discard })
    }

    /// The detect-zeroes setting.
    pub fn detect_zeroes(&self) -> DetectZeroes {
        self.detect
    }

    /// The discard setting.
    pub fn discard(&self) -> Discard {
        self.discard
    }

    /// Decides how to perform a write with this payload.
    pub fn plan_write(&self, payload: &[u8]) -> WriteAction {
        match self.detect {
            DetectZeroes::Off => WriteAction::Write,
            _ if !is_zero(payload) => WriteAction::Write,
            DetectZeroes::On => WriteAction::WriteZeroes { may_unmap: false },
            DetectZeroes::Unmap => WriteAction::WriteZeroes { may_unmap: true },
        }
    }

    /// Whether a write-zeroes request with `flags` may deallocate: only
    /// without `NO_HOLE` and with `discard=unmap`.
    pub fn zeroes_may_unmap(&self, flags: ReqFlags) -> bool {
        self.discard == Discard::Unmap && !flags.contains(ReqFlags::NO_HOLE)
    }

    /// Decides how to perform a trim.
    pub fn plan_discard(&self) -> DiscardAction {
        match self.discard {
            Discard::Ignore => DiscardAction::Ignore,
            Discard::Unmap => DiscardAction::Unmap,
        }
    }
}
