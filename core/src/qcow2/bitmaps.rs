//! Persistent dirty bitmaps in QEMU's layout (docs/interop/qcow2.txt
//! "Bitmaps extension" and "Bitmaps"; QEMU's block/qcow2-bitmap.c for the
//! limits and flags).
//!
//! The bitmaps extension points at a *directory* of variable-length
//! entries; each entry names a bitmap and points at its *bitmap table*,
//! whose entries point at clusters of bitmap data (bit `n` of the data is
//! granule `n`, least significant bit first within each byte; a table
//! entry of 0 is a cluster of zeroes, 1 a cluster of ones).
//!
//! Everything here is pure: parsing and emitting directory entries, table
//! entries and data clusters. Loading is: read the directory (its extent is
//! [`HeaderArea::bitmaps`](super::HeaderArea)), [`Directory::entries`],
//! read the entry's table, [`decode_table_entry`] each, read each data
//! cluster and [`for_each_dirty`] it into a bitmap. Storing follows QEMU's
//! order (see [`Qcow2::alloc_clusters`](super::Qcow2::alloc_clusters)):
//! allocate and write data clusters, table and a new directory; flush (the
//! new refcounts and bytes are durable); point the header extension at the
//! new directory ([`Qcow2::set_bitmaps_extension`](super::Qcow2)); flush;
//! free what the old directory used. A crash at any point leaves either
//! the old or the new directory, with leaks at worst.

use super::error::Qcow2Error;
use super::header::{align8, be16, be32, be64, put32, put64};

/// Most bitmaps QEMU accepts in one image.
pub const MAX_BITMAPS: u32 = 65535;
/// Largest bitmap directory QEMU accepts.
pub const MAX_DIRECTORY_SIZE: u64 = 1024 * MAX_BITMAPS as u64;
/// Longest bitmap name QEMU accepts.
pub const MAX_NAME: usize = 1023;
/// Largest bitmap table QEMU accepts (entries).
pub const MAX_TABLE_SIZE: u64 = 0x800_0000;
/// Largest bitmap data QEMU accepts (bytes).
pub const MAX_PHYS_SIZE: u64 = 0x2000_0000;
/// Granularity bits QEMU accepts.
pub const MIN_GRANULARITY_BITS: u8 = 9;
/// Granularity bits QEMU accepts.
pub const MAX_GRANULARITY_BITS: u8 = 31;
/// The only bitmap type: dirty tracking.
pub const TYPE_DIRTY_TRACKING: u8 = 1;

/// Directory entry flag: not saved correctly, may be inconsistent.
pub const FLAG_IN_USE: u32 = 1 << 0;
/// Directory entry flag: enabled, must track every write.
pub const FLAG_AUTO: u32 = 1 << 1;
/// Directory entry flag: unknown extra data may be ignored.
pub const FLAG_EXTRA_DATA_COMPATIBLE: u32 = 1 << 2;
const FLAGS_KNOWN: u32 = FLAG_IN_USE | FLAG_AUTO | FLAG_EXTRA_DATA_COMPATIBLE;

/// Reserved bits of a bitmap table entry (QEMU's mask).
const TABLE_RESERVED: u64 = 0xff00_0000_0000_01fe;

/// Bytes of bitmap data for a disk of `size` bytes at `granularity_bits`.
pub fn data_bytes(size: u64, granularity_bits: u8) -> u64 {
    size.div_ceil(1u64 << granularity_bits).div_ceil(8)
}

/// Entries of the bitmap table for that data and `cluster_bits`.
pub fn table_entries(size: u64, granularity_bits: u8, cluster_bits: u32) -> u64 {
    data_bytes(size, granularity_bits).div_ceil(1u64 << cluster_bits)
}

/// Size of a directory entry with this name and extra data (padded to 8).
pub const fn entry_len(name_len: usize, extra_len: usize) -> usize {
    align8(24 + name_len + extra_len)
}

/// One directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry<'a> {
    /// Offset of the bitmap table.
    pub table_offset: u64,
    /// Entries of the bitmap table.
    pub table_size: u32,
    /// `FLAG_*`.
    pub flags: u32,
    /// `log2` of bytes per bit.
    pub granularity_bits: u8,
    /// The name.
    pub name: &'a [u8],
    /// Type-specific extra data.
    pub extra: &'a [u8],
    /// Where the entry starts in the directory.
    pub at: usize,
    /// The entry's bytes (with padding), to copy it into a new directory.
    pub raw: &'a [u8],
}

impl DirEntry<'_> {
    /// Granularity in bytes.
    pub fn granularity(&self) -> u64 {
        1u64 << self.granularity_bits
    }

    /// Whether the bitmap may be used: not in use (inconsistent) and
    /// without extra data it would have to understand.
    pub fn usable(&self) -> bool {
        self.flags & FLAG_IN_USE == 0
            && (self.extra.is_empty() || self.flags & FLAG_EXTRA_DATA_COMPATIBLE != 0)
    }

    /// Host offset of this entry's flags word, for an in-place update
    /// (QEMU sets `in_use` on auto bitmaps when it opens an image to write).
    pub fn flags_host_offset(&self, directory_offset: u64) -> u64 {
        directory_offset + self.at as u64 + 12
    }
}

/// A parsed, checked bitmap directory.
#[derive(Clone, Copy, Debug)]
pub struct Directory<'a> {
    bytes: &'a [u8],
    count: u32,
}

impl<'a> Directory<'a> {
    /// Checks every entry of `bytes` (the directory as the extension
    /// describes it: `nb_bitmaps` entries, `directory_size` bytes) against
    /// QEMU's rules for an image of `size` bytes with `cluster_bits`.
    pub fn parse(
        bytes: &'a [u8],
        nb_bitmaps: u32,
        size: u64,
        cluster_bits: u32,
    ) -> Result<Self, Qcow2Error> {
        let d = Directory {
            bytes,
            count: nb_bitmaps,
        };
        let mut at = 0usize;
        // One pass: linear in the directory. Names are not checked for
        // uniqueness here (QEMU refuses a duplicate only when it loads the
        // second bitmap); [`find`](Self::find) takes the first.
        for i in 0..nb_bitmaps {
            let e = d.entry_at(at, i, size, cluster_bits)?;
            at += e.raw.len();
        }
        if at != bytes.len() {
            return Err(Qcow2Error::BadBitmap { index: u32::MAX });
        }
        Ok(d)
    }

    fn entry_at(
        &self,
        at: usize,
        index: u32,
        size: u64,
        cluster_bits: u32,
    ) -> Result<DirEntry<'a>, Qcow2Error> {
        let bad = Qcow2Error::BadBitmap { index };
        let b = self.bytes.get(at..).ok_or(bad)?;
        let table_offset = be64(b, 0).ok_or(bad)?;
        let table_size = be32(b, 8).ok_or(bad)?;
        let flags = be32(b, 12).ok_or(bad)?;
        let kind = *b.get(16).ok_or(bad)?;
        let granularity_bits = *b.get(17).ok_or(bad)?;
        let name_len = be16(b, 18).ok_or(bad)? as usize;
        let extra_len = be32(b, 20).ok_or(bad)? as usize;
        if extra_len > MAX_DIRECTORY_SIZE as usize {
            return Err(bad);
        }
        let len = entry_len(name_len, extra_len);
        let raw = b.get(..len).ok_or(bad)?;
        let extra = &raw[24..24 + extra_len];
        let name = &raw[24 + extra_len..24 + extra_len + name_len];
        let c = 1u64 << cluster_bits;
        let ok_gran = (MIN_GRANULARITY_BITS..=MAX_GRANULARITY_BITS).contains(&granularity_bits);
        let ok = kind == TYPE_DIRTY_TRACKING
            && ok_gran
            && name_len > 0
            && name_len <= MAX_NAME
            && flags & !FLAGS_KNOWN == 0
            && table_offset % c == 0
            && table_offset != 0
            && (table_size as u64) <= MAX_TABLE_SIZE
            && raw[24 + extra_len + name_len..].iter().all(|&x| x == 0);
        if !ok {
            return Err(bad);
        }
        // A consistent bitmap's table matches the disk size (QEMU checks
        // this for bitmaps it will load; in-use ones are only listed).
        if flags & FLAG_IN_USE == 0 {
            let phys = data_bytes(size, granularity_bits);
            if phys > MAX_PHYS_SIZE || table_size as u64 != phys.div_ceil(c) {
                return Err(bad);
            }
        }
        Ok(DirEntry {
            table_offset,
            table_size,
            flags,
            granularity_bits,
            name,
            extra,
            at,
            raw,
        })
    }

    /// The entries, in directory order (already checked by
    /// [`parse`](Self::parse)).
    pub fn entries(&self, size: u64, cluster_bits: u32) -> impl Iterator<Item = DirEntry<'a>> + '_ {
        let mut at = 0usize;
        (0..self.count).map_while(move |i| {
            let e = self.entry_at(at, i, size, cluster_bits).ok()?;
            at += e.raw.len();
            Some(e)
        })
    }

    /// The entry named `name`.
    pub fn find(&self, name: &[u8], size: u64, cluster_bits: u32) -> Option<DirEntry<'a>> {
        self.entries(size, cluster_bits).find(|e| e.name == name)
    }
}

/// Writes a directory entry into `out`; returns its length.
pub fn emit_entry(
    out: &mut [u8],
    table_offset: u64,
    table_size: u32,
    flags: u32,
    granularity_bits: u8,
    name: &[u8],
) -> Result<usize, Qcow2Error> {
    let len = entry_len(name.len(), 0);
    let bad = Qcow2Error::BadBitmap { index: u32::MAX };
    if name.is_empty() || name.len() > MAX_NAME || flags & !FLAGS_KNOWN != 0 {
        return Err(bad);
    }
    let o = out.get_mut(..len).ok_or(bad)?;
    o.fill(0);
    put64(o, 0, table_offset).ok_or(bad)?;
    put32(o, 8, table_size).ok_or(bad)?;
    put32(o, 12, flags).ok_or(bad)?;
    o[16] = TYPE_DIRTY_TRACKING;
    o[17] = granularity_bits;
    o[18..20].copy_from_slice(&(name.len() as u16).to_be_bytes());
    o[24..24 + name.len()].copy_from_slice(name);
    Ok(len)
}

/// A bitmap table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableEntry {
    /// The cluster of bitmap data reads as zeroes.
    Zeroes,
    /// The cluster of bitmap data reads as ones.
    Ones,
    /// The cluster of bitmap data is at this host offset.
    At(u64),
}

/// Decodes bitmap table entry `e` (QEMU's `check_table_entry`).
pub fn decode_table_entry(e: u64, cluster_bits: u32) -> Result<TableEntry, Qcow2Error> {
    let bad = Qcow2Error::BadBitmap { index: u32::MAX };
    if e & TABLE_RESERVED != 0 {
        return Err(bad);
    }
    let off = e & 0x00ff_ffff_ffff_fe00;
    if off == 0 {
        return Ok(if e & 1 != 0 {
            TableEntry::Ones
        } else {
            TableEntry::Zeroes
        });
    }
    if e & 1 != 0 || off % (1u64 << cluster_bits) != 0 {
        return Err(bad);
    }
    Ok(TableEntry::At(off))
}

/// Something that knows which bytes of a disk are dirty.
pub trait DirtySource {
    /// Calls `f(offset, length)` for each dirty run in `[offset, end)`.
    fn for_each_dirty(&self, offset: u64, end: u64, f: &mut dyn FnMut(u64, u64));
}

impl<S: AsRef<[u64]> + AsMut<[u64]>> DirtySource for crate::block::dirty_bitmap::DirtyBitmap<S> {
    fn for_each_dirty(&self, offset: u64, end: u64, f: &mut dyn FnMut(u64, u64)) {
        crate::block::dirty_bitmap::DirtyBitmap::for_each_dirty(self, offset, end, f)
    }
}

/// Calls `f(offset, length)` for each dirty run that data cluster `index`
/// (bytes `data`, or all ones/zeroes per `entry`) of a bitmap describes,
/// clipped to the disk `size`.
pub fn for_each_dirty(
    entry: TableEntry,
    data: &[u8],
    index: u64,
    cluster_bits: u32,
    granularity_bits: u8,
    size: u64,
    f: &mut dyn FnMut(u64, u64),
) {
    let bits_per_cluster = 8u64 << cluster_bits;
    let g = 1u64 << granularity_bits;
    let first_bit = index * bits_per_cluster;
    let total_bits = size.div_ceil(g);
    if first_bit >= total_bits {
        return;
    }
    let nbits = bits_per_cluster.min(total_bits - first_bit);
    let bit = |i: u64| -> bool {
        match entry {
            TableEntry::Zeroes => false,
            TableEntry::Ones => true,
            TableEntry::At(_) => data
                .get((i / 8) as usize)
                .is_some_and(|b| b >> (i % 8) & 1 != 0),
        }
    };
    let mut i = 0;
    // One pass over the cluster's bits.
    while i < nbits {
        if !bit(i) {
            i += 1;
            continue;
        }
        let s = i;
        while i < nbits && bit(i) {
            i += 1;
        }
        let start = (first_bit + s) * g;
        let end = ((first_bit + i) * g).min(size);
        f(start, end - start);
    }
}

/// Fills `out` (one cluster) with data cluster `index` of a bitmap of
/// `src`; returns whether any bit is set (an all-zero cluster is stored as
/// table entry 0, as QEMU does).
pub fn encode_cluster(
    src: &dyn DirtySource,
    index: u64,
    cluster_bits: u32,
    granularity_bits: u8,
    size: u64,
    out: &mut [u8],
) -> bool {
    out.fill(0);
    let g = 1u64 << granularity_bits;
    let bits_per_cluster = 8u64 << cluster_bits;
    let first_bit = index * bits_per_cluster;
    let start = first_bit.saturating_mul(g).min(size);
    let end = (first_bit + bits_per_cluster).saturating_mul(g).min(size);
    let mut any = false;
    src.for_each_dirty(start, end, &mut |o, l| {
        // Clip what the source reports to the asked range.
        let (o, e) = (o.max(start), o.saturating_add(l).min(end));
        if o >= e {
            return;
        }
        let b0 = o / g - first_bit;
        let b1 = (e.div_ceil(g) - first_bit).min(bits_per_cluster);
        for b in b0..b1 {
            if let Some(x) = out.get_mut((b / 8) as usize) {
                *x |= 1 << (b % 8);
                any = true;
            }
        }
    });
    any
}
