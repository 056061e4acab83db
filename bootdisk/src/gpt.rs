//! The GUID partition table (UEFI 2.10 §5.3): the primary header at LBA 1
//! and its entry array, both checked against their CRC-32s, with 512-byte
//! logical blocks (what an NBD export of a disk image has).

use crate::{Disk, Error, crc32, u32_at, u64_at};

pub const SECTOR: u64 = 512;
/// Entries scanned at most: the 128 the spec reserves room for, times 8.
const MAX_ENTRIES: u32 = 1024;

/// `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`, EFI system partition, in its
/// on-disk (mixed-endian) byte order.
pub const ESP: [u8; 16] = guid(
    0xC12A7328,
    0xF81F,
    0x11D2,
    [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
);
/// `BC13C2FF-59E6-4262-A352-B275FD6F7172`, the Boot Loader
/// Specification's extended boot loader partition (XBOOTLDR).
pub const XBOOTLDR: [u8; 16] = guid(
    0xBC13C2FF,
    0x59E6,
    0x4262,
    [0xA3, 0x52, 0xB2, 0x75, 0xFD, 0x6F, 0x71, 0x72],
);

/// A GUID in its on-disk byte order: the first three fields little endian.
pub const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub type_guid: [u8; 16],
    /// Byte offset of the first block and length in bytes.
    pub offset: u64,
    pub len: u64,
    /// Index in the entry array.
    pub index: u32,
}

/// The partition the boot entries live on: the XBOOTLDR partition if
/// there is one, else the EFI system partition (as the Boot Loader
/// Specification orders them).
pub fn boot_partition<D: Disk>(disk: &mut D) -> Result<Partition, Error<D::Error>> {
    let sectors = disk.size() / SECTOR;
    if sectors < 3 {
        return Err(Error::NoPartitionTable);
    }
    let mut hdr = [0u8; SECTOR as usize];
    disk.read(SECTOR, &mut hdr)?;
    if &hdr[..8] != b"EFI PART" {
        return Err(Error::NoPartitionTable);
    }
    let hsize = u32_at(&hdr, 12) as usize;
    if !(92..=SECTOR as usize).contains(&hsize) {
        return Err(Error::BadPartitionTable("header size outside 92..512"));
    }
    let stored = u32_at(&hdr, 16);
    hdr[16..20].fill(0);
    if crc32(0, &hdr[..hsize]) != stored {
        return Err(Error::BadPartitionTable("header CRC mismatch"));
    }
    if u64_at(&hdr, 24) != 1 {
        return Err(Error::BadPartitionTable("header is not at LBA 1"));
    }
    let (first_usable, last_usable) = (u64_at(&hdr, 40), u64_at(&hdr, 48));
    if first_usable > last_usable || last_usable >= sectors {
        return Err(Error::BadPartitionTable("usable range outside the disk"));
    }
    let entries_lba = u64_at(&hdr, 72);
    let count = u32_at(&hdr, 80);
    let esize = u32_at(&hdr, 84);
    if !(128..=4096).contains(&esize) || !esize.is_power_of_two() {
        return Err(Error::BadPartitionTable("entry size is not 128 x 2^n"));
    }
    if count > MAX_ENTRIES {
        return Err(Error::BadPartitionTable("more than 1024 entries"));
    }
    let array_len = u64::from(count) * u64::from(esize);
    let array_at = entries_lba
        .checked_mul(SECTOR)
        .filter(|&at| {
            entries_lba >= 2 && at.checked_add(array_len).is_some_and(|e| e <= disk.size())
        })
        .ok_or(Error::BadPartitionTable("entry array outside the disk"))?;
    let array_crc = u32_at(&hdr, 88);

    let mut crc = 0;
    let mut esp = None;
    let mut xbootldr = None;
    let mut entry = [0u8; 4096];
    let entry = &mut entry[..esize as usize];
    for i in 0..count {
        disk.read(array_at + u64::from(i) * u64::from(esize), entry)?;
        crc = crc32(crc, entry);
        let type_guid: [u8; 16] = entry[..16].try_into().unwrap_or([0; 16]);
        let slot = match type_guid {
            XBOOTLDR => &mut xbootldr,
            ESP => &mut esp,
            _ => continue,
        };
        if slot.is_some() {
            continue;
        }
        let (first, last) = (u64_at(entry, 32), u64_at(entry, 40));
        if first < first_usable || first > last || last > last_usable {
            return Err(Error::BadPartitionTable(
                "boot partition outside the usable range",
            ));
        }
        *slot = Some(Partition {
            type_guid,
            offset: first * SECTOR,
            len: (last - first + 1) * SECTOR,
            index: i,
        });
    }
    if crc != array_crc {
        return Err(Error::BadPartitionTable("entry array CRC mismatch"));
    }
    xbootldr.or(esp).ok_or(Error::NoBootPartition)
}
