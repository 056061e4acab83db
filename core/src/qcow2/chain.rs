//! Backing chains: a guard against loops and unbounded depth.
//!
//! The core never opens files, so it cannot follow a backing file name by
//! itself; the frontend opening the chain asks a [`ChainGuard`] before each
//! layer, with an identity of the file it is about to open (on Unix the
//! device and inode numbers, so that two names of one file are one layer).
//! A name that leads back to a file already in the chain, or a chain deeper
//! than the guard's limit, is refused with a clear error instead of
//! recursing until memory or the stack runs out. (`qemu-img info
//! --backing-chain` refuses loops the same way.)

use core::fmt;

/// Default depth limit (layers, the top image included).
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Why a backing chain was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// The file at this depth is already in the chain at `first`.
    Loop {
        /// Depth of the layer that would repeat (0 = top).
        depth: usize,
        /// Depth where the file already is.
        first: usize,
    },
    /// More layers than the limit.
    TooDeep {
        /// The limit.
        limit: usize,
    },
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ChainError::Loop { depth, first } => write!(
                f,
                "qcow2: backing chain loops: layer {depth} is the same file as layer {first}"
            ),
            ChainError::TooDeep { limit } => {
                write!(f, "qcow2: backing chain is deeper than {limit} layers")
            }
        }
    }
}

/// Identities of the files opened so far, in caller-provided storage
/// (its length is the depth limit).
#[derive(Debug)]
pub struct ChainGuard<'a> {
    ids: &'a mut [u128],
    len: usize,
}

impl<'a> ChainGuard<'a> {
    /// A guard for chains of at most `ids.len()` layers.
    pub fn new(ids: &'a mut [u128]) -> Self {
        Self { ids, len: 0 }
    }

    /// Records the next layer (the top image first). Refuses a file that
    /// is already in the chain or a layer past the limit.
    pub fn enter(&mut self, id: u128) -> Result<usize, ChainError> {
        if let Some(first) = self.ids[..self.len].iter().position(|&x| x == id) {
            return Err(ChainError::Loop {
                depth: self.len,
                first,
            });
        }
        let slot = self
            .ids
            .get_mut(self.len)
            .ok_or(ChainError::TooDeep { limit: self.len })?;
        *slot = id;
        self.len += 1;
        Ok(self.len - 1)
    }

    /// Layers recorded.
    pub fn depth(&self) -> usize {
        self.len
    }
}
