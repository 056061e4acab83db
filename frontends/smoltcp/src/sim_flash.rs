//! NOR flash simulated in RAM, with real NOR rules, for tests and demos.

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash, check_erase, check_read,
    check_write,
};

/// NOR flash over a `&mut [u8]`: erase sets a block to `0xff`, programming
/// can only clear bits (`cell &= data`), and alignment is enforced, so a
/// driver that forgets to erase or misaligns is caught rather than hidden.
pub struct RamFlash<'a, const READ: usize, const WRITE: usize, const ERASE: usize> {
    mem: &'a mut [u8],
    erases: u64,
}

/// What went wrong, as `embedded-storage` classifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamFlashError(pub NorFlashErrorKind);

impl NorFlashError for RamFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        self.0
    }
}

impl<'a, const READ: usize, const WRITE: usize, const ERASE: usize>
    RamFlash<'a, READ, WRITE, ERASE>
{
    /// Flash over `mem` as it is (erased flash is all `0xff`).
    pub fn new(mem: &'a mut [u8]) -> Self {
        Self { mem, erases: 0 }
    }

    /// Erases performed on the chip.
    pub fn erases(&self) -> u64 {
        self.erases
    }

    pub fn contents(&self) -> &[u8] {
        self.mem
    }
}

impl<const READ: usize, const WRITE: usize, const ERASE: usize> ErrorType
    for RamFlash<'_, READ, WRITE, ERASE>
{
    type Error = RamFlashError;
}

impl<const READ: usize, const WRITE: usize, const ERASE: usize> ReadNorFlash
    for RamFlash<'_, READ, WRITE, ERASE>
{
    const READ_SIZE: usize = READ;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        check_read(self, offset, bytes.len()).map_err(RamFlashError)?;
        let at = offset as usize;
        bytes.copy_from_slice(&self.mem[at..at + bytes.len()]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

impl<const READ: usize, const WRITE: usize, const ERASE: usize> NorFlash
    for RamFlash<'_, READ, WRITE, ERASE>
{
    const WRITE_SIZE: usize = WRITE;
    const ERASE_SIZE: usize = ERASE;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        check_erase(self, from, to).map_err(RamFlashError)?;
        self.mem[from as usize..to as usize].fill(0xff);
        self.erases += u64::from(to - from) / ERASE as u64;
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        check_write(self, offset, bytes.len()).map_err(RamFlashError)?;
        let at = offset as usize;
        for (cell, b) in self.mem[at..at + bytes.len()].iter_mut().zip(bytes) {
            *cell &= *b;
        }
        Ok(())
    }
}
