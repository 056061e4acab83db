//! Storage behind an export: the [`Backend`] trait and its implementations.
//!
//! Backends are synchronous: a file backend does blocking system calls and
//! is run on tokio's blocking pool by the caller (see [`Caps::blocking`]);
//! memory and null backends are cheap enough to run on the reactor
//! threads. Every method takes `&self` because many requests from many
//! connections run at once; a backend serialises what it must itself.

pub mod file;
pub mod memory;
pub mod null;

use std::io;
use std::time::Duration;

pub use file::FileBackend;
pub use memory::MemoryBackend;
pub use null::NullBackend;

/// What a backend can do, used to choose the transmission flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Opened without write access.
    pub read_only: bool,
    /// `trim` deallocates (otherwise it is accepted and ignored).
    pub trim: bool,
    /// `write_zeroes` can be fast (deallocating or by the kernel), so
    /// `FAST_ZERO` is worth advertising.
    pub fast_zero: bool,
    /// Calls block the thread: run them on the blocking pool.
    pub blocking: bool,
    /// `allocation` is exact and cheap enough to consult on every read, so
    /// that structured reads can send holes instead of zeroes.
    pub sparse_reads: bool,
}

/// One storage device, addressed in bytes from 0 to [`size`](Self::size).
///
/// Callers have checked every range against the size.
pub trait Backend: Send + Sync + 'static {
    fn size(&self) -> u64;
    fn caps(&self) -> Caps;
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Advisory discard; contents afterwards are unspecified (but reads
    /// must agree with what [`allocation`](Self::allocation) reports).
    fn trim(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Make the range read as zeroes. `may_unmap`: deallocating is
    /// allowed (no `NO_HOLE`). `fast`: fail with `ENOTSUP` rather than
    /// fall back to writing zeroes.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool, fast: bool) -> io::Result<()>;
    /// Prefetch hint.
    fn cache(&self, offset: u64, len: u64) -> io::Result<()>;
    /// `base:allocation` of `[offset, offset+len)` as runs of
    /// `(length, flags)` in order, until `sink` returns `false`. Runs may
    /// be shorter or longer than asked; the caller clips and merges.
    fn allocation(
        &self,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(u64, u64) -> bool,
    ) -> io::Result<()>;
    /// Whether some range may read as zeroes without being stored, i.e.
    /// whether looking for holes before a read can pay off. Called per
    /// read, so it must be cheap.
    fn maybe_sparse(&self) -> bool {
        true
    }
    /// Artificial delay before each request (null backend's `--latency-ns`).
    fn latency(&self) -> Option<Duration> {
        None
    }
}

pub(crate) fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// Fill `[offset, offset+len)` with zeroes by writing, in pieces, for
/// backends that cannot zero any other way.
pub(crate) fn write_zero_buffers(
    offset: u64,
    len: u64,
    mut write: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    const PIECE: u64 = 1 << 20;
    let zeroes = vec![0u8; PIECE.min(len) as usize];
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let n = PIECE.min(end - pos);
        write(pos, &zeroes[..n as usize])?;
        pos += n;
    }
    Ok(())
}
