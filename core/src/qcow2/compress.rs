//! Compressed clusters: raw deflate (zlib compression type 0, no zlib
//! header, as QEMU writes them with `deflateInit2(-12)`), inflated by
//! `miniz_oxide`'s allocation-free core into a caller buffer.
//!
//! The decompressor state (about 11 KiB) is caller-provided too, so a
//! frontend keeps one per concurrent reader instead of the stack.

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};

use super::error::Qcow2Error;

/// Inflater state, reusable across clusters.
pub struct Inflater {
    state: DecompressorOxide,
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Inflater")
    }
}

impl Inflater {
    /// A fresh inflater.
    pub fn new() -> Self {
        Self {
            state: DecompressorOxide::new(),
        }
    }

    /// Inflates the deflate stream `input` (the bytes a
    /// [`Mapping::Compressed`](super::Mapping::Compressed) names) into `out`,
    /// which must be exactly one cluster. As QEMU does, decompression stops
    /// once a full cluster is produced; trailing input (the rest of the
    /// last sector) is ignored. A stream that ends early or is malformed is
    /// refused: `guest` names the cluster in the error.
    pub fn inflate_cluster(
        &mut self,
        input: &[u8],
        out: &mut [u8],
        guest: u64,
    ) -> Result<(), Qcow2Error> {
        self.state.init();
        let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
        let (status, _, produced) = decompress(&mut self.state, input, out, 0, flags);
        let full = produced == out.len();
        match status {
            TINFLStatus::Done | TINFLStatus::HasMoreOutput if full => Ok(()),
            // The stream may be cut at the last sector: enough output is all
            // that matters (QEMU accepts Z_BUF_ERROR with a full buffer).
            TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress if full => Ok(()),
            _ => Err(Qcow2Error::BadCompressedData { offset: guest }),
        }
    }
}
