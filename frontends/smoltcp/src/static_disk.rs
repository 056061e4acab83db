//! A read-only disk over a byte slice (an image in flash or in the binary).

use blockwire_core::block::contract::BlockError;

use blockwire_core::block::BlockDevice;
use blockwire_core::block::device::byte_range;

/// A read-only export of `data`, e.g. `include_bytes!` of a boot image or a
/// memory-mapped flash region. Block status reports everything as data:
/// the slice cannot say what is a hole.
pub struct StaticDisk<'a> {
    data: &'a [u8],
}

impl<'a> StaticDisk<'a> {
    pub const fn new(data: &'a [u8]) -> Self {
        Self { data }
    }
}

impl BlockDevice for StaticDisk<'_> {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_only(&self) -> bool {
        true
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let r = byte_range(offset, buf.len(), self.size())?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) -> Result<(), BlockError> {
        // EPERM on the wire, the errno a read-only export answers with.
        Err(BlockError::Busy)
    }

    fn trim(&mut self, _offset: u64, _length: u64) -> Result<(), BlockError> {
        Err(BlockError::Busy)
    }

    fn write_zeroes(
        &mut self,
        _offset: u64,
        _length: u64,
        _may_unmap: bool,
    ) -> Result<(), BlockError> {
        Err(BlockError::Busy)
    }
}
