//! A disk on NOR flash: erase blocks, read-modify-write through one
//! caller-provided erase-block buffer that doubles as a write-back cache.

use blockwire_core::block::contract::{BlockError, Limits, Op, check_range};
use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};

use blockwire_core::block::BlockDevice;

/// Bounce buffer for reads whose ends are not `READ_SIZE`-aligned, and the
/// window used to compare a cached block with flash.
const BOUNCE: usize = 64;

/// An NBD disk on any [`NorFlash`] (the `embedded-storage` trait HALs
/// implement).
///
/// NBD writes arrive in TCP-segment-sized pieces at any offset; erasing a
/// block per piece would wear the flash out and be slow. Instead the block
/// being written is held in `erase_buf` (one erase block, provided by the
/// caller) and written back — erase, then program the whole block — only
/// when a write moves to another block, on flush/FUA, or when the
/// connection ends. A block whose contents did not change is not erased.
/// Reads see the cached block.
pub struct FlashDisk<'b, F> {
    flash: F,
    buf: &'b mut [u8],
    /// Erase block held in `buf`, and whether it differs from flash.
    open: Option<u32>,
    dirty: bool,
    erases: u64,
}

fn flash_err(kind: NorFlashErrorKind) -> BlockError {
    match kind {
        NorFlashErrorKind::OutOfBounds => BlockError::OutOfRange,
        NorFlashErrorKind::NotAligned => BlockError::Misaligned,
        _ => BlockError::Io(5),
    }
}

impl<'b, F: NorFlash> FlashDisk<'b, F> {
    /// A disk over all of `flash`. `erase_buf` must be exactly
    /// `F::ERASE_SIZE` bytes; `F::READ_SIZE` may be at most 64.
    pub fn new(flash: F, erase_buf: &'b mut [u8]) -> Result<Self, BlockError> {
        if erase_buf.len() != F::ERASE_SIZE
            || F::READ_SIZE > BOUNCE
            || !F::READ_SIZE.is_power_of_two()
            || F::ERASE_SIZE % F::WRITE_SIZE != 0
        {
            return Err(BlockError::Invalid);
        }
        Ok(Self {
            flash,
            buf: erase_buf,
            open: None,
            dirty: false,
            erases: 0,
        })
    }

    /// Erase operations performed so far (a wear indicator).
    pub fn erases(&self) -> u64 {
        self.erases
    }

    /// The flash, after writing back the cached block.
    pub fn into_inner(mut self) -> Result<F, BlockError> {
        self.commit()?;
        Ok(self.flash)
    }

    fn block_size(&self) -> u64 {
        F::ERASE_SIZE as u64
    }

    /// Read from flash at any offset and length, bouncing unaligned ends.
    fn read_flash(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let rs = F::READ_SIZE as u64;
        let mut pos = offset;
        let mut done = 0usize;
        while done < buf.len() {
            let left = buf.len() - done;
            let aligned = pos % rs == 0;
            if aligned && left as u64 >= rs {
                let n = left - left % F::READ_SIZE;
                self.flash
                    .read(pos as u32, &mut buf[done..done + n])
                    .map_err(|e| flash_err(e.kind()))?;
                done += n;
                pos += n as u64;
            } else {
                let base = pos - pos % rs;
                let mut bounce = [0u8; BOUNCE];
                let b = &mut bounce[..F::READ_SIZE];
                self.flash
                    .read(base as u32, b)
                    .map_err(|e| flash_err(e.kind()))?;
                let skip = (pos - base) as usize;
                let n = (F::READ_SIZE - skip).min(left);
                buf[done..done + n].copy_from_slice(&b[skip..skip + n]);
                done += n;
                pos += n as u64;
            }
        }
        Ok(())
    }

    /// Write the cached block back if it changed.
    fn commit(&mut self) -> Result<(), BlockError> {
        let Some(block) = self.open else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let start = block as u64 * self.block_size();
        if self.differs_from_flash(start)? {
            let end = start + self.block_size();
            self.flash
                .erase(start as u32, end as u32)
                .map_err(|e| flash_err(e.kind()))?;
            self.erases += 1;
            self.flash
                .write(start as u32, self.buf)
                .map_err(|e| flash_err(e.kind()))?;
        }
        self.dirty = false;
        Ok(())
    }

    fn differs_from_flash(&mut self, start: u64) -> Result<bool, BlockError> {
        let mut window = [0u8; BOUNCE];
        let mut at = 0usize;
        while at < self.buf.len() {
            let n = (self.buf.len() - at).min(BOUNCE);
            // BOUNCE is a multiple of READ_SIZE (both powers of two, READ_SIZE ≤ BOUNCE)
            // and so is the block, so every window read is aligned.
            self.flash
                .read((start + at as u64) as u32, &mut window[..n])
                .map_err(|e| flash_err(e.kind()))?;
            if window[..n] != self.buf[at..at + n] {
                return Ok(true);
            }
            at += n;
        }
        Ok(false)
    }

    /// Make `block` the cached one, loading it unless `whole` is about to
    /// overwrite all of it.
    fn open_block(&mut self, block: u32, whole: bool) -> Result<(), BlockError> {
        if self.open == Some(block) {
            return Ok(());
        }
        self.commit()?;
        self.open = None;
        if !whole {
            let start = block as u64 * self.block_size();
            // Lend the buffer out so `read_flash` can borrow `self`.
            let buf = core::mem::take(&mut self.buf);
            let r = self.read_flash(start, &mut *buf);
            self.buf = buf;
            r?;
        }
        self.open = Some(block);
        self.dirty = false;
        Ok(())
    }
}

impl<F: NorFlash> BlockDevice for FlashDisk<'_, F> {
    fn size(&self) -> u64 {
        self.flash.capacity() as u64
    }

    fn supports(&self, op: Op) -> bool {
        matches!(
            op,
            Op::Read | Op::Write | Op::Flush | Op::BlockStatus | Op::WriteZeroes
        )
    }

    fn limits(&self) -> Limits {
        // The erase block is the preferred write size: whole-block writes
        // skip the read half of read-modify-write.
        Limits {
            opt_write_zero: self.block_size(),
            ..Limits::default()
        }
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_range(offset, buf.len() as u64, self.size())?;
        self.read_flash(offset, buf)?;
        // Overlay the cached block, which may be newer than flash.
        if let Some(block) = self.open {
            let bs = self.block_size();
            let (start, end) = (block as u64 * bs, (block as u64 + 1) * bs);
            let (lo, hi) = (offset.max(start), (offset + buf.len() as u64).min(end));
            if lo < hi {
                let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
                dst.copy_from_slice(&self.buf[(lo - start) as usize..(hi - start) as usize]);
            }
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        check_range(offset, data.len() as u64, self.size())?;
        let bs = self.block_size();
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let block = (pos / bs) as u32;
            let within = (pos % bs) as usize;
            let n = rest.len().min(bs as usize - within);
            self.open_block(block, within == 0 && n == bs as usize)?;
            self.buf[within..within + n].copy_from_slice(&rest[..n]);
            self.dirty = true;
            pos += n as u64;
            rest = &rest[n..];
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        self.commit()
    }
}
