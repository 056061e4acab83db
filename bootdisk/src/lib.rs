//! Reading a boot disk the way firmware does, with no allocator: the GPT
//! ([`gpt`]), the FAT file system of the boot partition ([`fat`]), the Boot
//! Loader Specification Type #1 entries in `loader/entries/` ([`bls`]) and
//! the header of the Linux x86 kernel they name ([`bzimage`]).
//!
//! Everything reads through [`Disk`], a byte-addressed read, so the same
//! code runs against an NBD export on bare metal and a byte slice in the
//! tests and the fuzzer. Every length and offset on the disk is hostile:
//! it is range-checked before use, and chains and sequences are bounded.
#![no_std]

pub mod bls;
pub mod bzimage;
pub mod fat;
pub mod gpt;
pub mod sparse;

use core::fmt;

/// What the reader needs from a disk.
pub trait Disk {
    type Error: fmt::Debug;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fill `buf` from byte `offset` (the caller keeps reads inside
    /// [`Disk::size`]).
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
}

/// A disk held in memory.
impl Disk for &[u8] {
    type Error = ();
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), ()> {
        let start = usize::try_from(offset).map_err(|_| ())?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(())?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Why a disk cannot be booted. Each says what is wrong in one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The disk failed a read.
    Io(E),
    /// No GPT header at LBA 1.
    NoPartitionTable,
    /// The GPT is there but damaged.
    BadPartitionTable(&'static str),
    /// No EFI system or XBOOTLDR partition.
    NoBootPartition,
    /// The boot partition holds no FAT file system.
    NotFat(&'static str),
    /// The FAT file system is damaged.
    BadFat(&'static str),
    /// `loader/entries/` has no usable `.conf`.
    NoEntry,
    /// The chosen entry cannot be used.
    BadEntry(&'static str),
    /// A path the entry names is not a file on the partition.
    NotFound,
    /// The kernel is not a 64-bit Linux bzImage.
    NotBzImage(&'static str),
    /// The kernel or initramfs does not fit in the free RAM.
    TooLarge(&'static str),
}

impl<E> From<E> for Error<E> {
    fn from(e: E) -> Self {
        Error::Io(e)
    }
}

impl<E: fmt::Debug> fmt::Display for Error<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "disk read failed: {e:?}"),
            Error::NoPartitionTable => {
                f.write_str("no GPT partition table (no \"EFI PART\" header at LBA 1)")
            }
            Error::BadPartitionTable(why) => write!(f, "damaged GPT: {why}"),
            Error::NoBootPartition => f.write_str("no EFI system or XBOOTLDR partition in the GPT"),
            Error::NotFat(why) => write!(f, "the boot partition is not FAT: {why}"),
            Error::BadFat(why) => write!(f, "damaged FAT file system: {why}"),
            Error::NoEntry => {
                f.write_str("no boot entry (loader/entries/*.conf) on the boot partition")
            }
            Error::BadEntry(why) => write!(f, "unusable boot entry: {why}"),
            Error::NotFound => f.write_str("no such file on the boot partition"),
            Error::NotBzImage(why) => write!(f, "the kernel is not a 64-bit Linux bzImage: {why}"),
            Error::TooLarge(why) => write!(f, "does not fit in RAM: {why}"),
        }
    }
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// CRC-32 (IEEE, reflected, as the GPT uses), continued from `crc`
/// (start with 0). Bitwise: the tables it checks are a few KiB.
pub fn crc32(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = (c >> 1) ^ (0xEDB8_8320 & (c & 1).wrapping_neg());
        }
    }
    !c
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32_check_value() {
        assert_eq!(super::crc32(0, b"123456789"), 0xCBF4_3926);
        let split = super::crc32(super::crc32(0, b"1234"), b"56789");
        assert_eq!(split, 0xCBF4_3926);
    }
}
