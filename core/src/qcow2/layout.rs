//! Geometry derived from the header, and the L1, L2 and refcount entry
//! formats (docs/interop/qcow2.txt "Cluster mapping", "Extended L2 Entries",
//! "Host cluster management").

use super::error::{Meta, Qcow2Error};
use super::header::Header;

/// Largest L1 table QEMU opens (32 MiB).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table QEMU opens (8 MiB).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Most internal snapshots QEMU opens.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Largest snapshot table QEMU opens (an average of 1 KiB per snapshot).
pub const MAX_SNAPSHOT_TABLE_BYTES: u64 = 1024 * MAX_SNAPSHOTS as u64;
/// Most extra data per snapshot table entry QEMU accepts.
pub const MAX_SNAPSHOT_EXTRA: u32 = 1024;
/// Host offsets must stay below 2^56.
pub const MAX_HOST_OFFSET: u64 = (1 << 56) - 1;

/// Bits 9..=55 of L1, L2 and refcount table entries: a host offset.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L1/L2: refcount is exactly one.
pub const OFLAG_COPIED: u64 = 1 << 63;
/// L2: compressed cluster.
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
/// L2 (version 3, standard entries): reads as zeroes.
pub const OFLAG_ZERO: u64 = 1;
/// Reserved bits of a standard L2 entry (1..=8 and 56..=61).
const L2_STD_RESERVED: u64 = 0x3f00_0000_0000_01fe;
/// Reserved bits of a refcount table entry (0..=8).
const REFT_RESERVED: u64 = 0x1ff;
/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;

/// Geometry of an open image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// log2 cluster size.
    pub cluster_bits: u32,
    /// Extended L2 entries (subclusters).
    pub extended_l2: bool,
    /// log2 of entries per L2 table.
    pub l2_bits: u32,
    /// log2 of the refcount width.
    pub refcount_order: u32,
    /// Virtual size.
    pub size: u64,
    /// Whether the zero flag exists (version 3).
    pub zero_flag: bool,
}

impl Layout {
    /// Geometry of `h` (already checked by [`Header::parse`]).
    pub fn new(h: &Header) -> Self {
        let extended = h.extended_l2();
        Self {
            cluster_bits: h.cluster_bits,
            extended_l2: extended,
            l2_bits: h.cluster_bits - if extended { 4 } else { 3 },
            refcount_order: h.refcount_order,
            size: h.size,
            zero_flag: h.version >= 3,
        }
    }

    /// Cluster size.
    pub const fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Offset within its cluster.
    pub const fn in_cluster(&self, off: u64) -> u64 {
        off & (self.cluster_size() - 1)
    }

    /// Entries per L2 table.
    pub const fn l2_entries(&self) -> u64 {
        1 << self.l2_bits
    }

    /// Words (u64) per L2 entry.
    pub const fn l2_entry_words(&self) -> u64 {
        if self.extended_l2 { 2 } else { 1 }
    }

    /// Bytes of guest disk one L2 table maps.
    pub const fn l2_span(&self) -> u64 {
        1 << (self.cluster_bits + self.l2_bits)
    }

    /// Subclusters per cluster (1 without extended L2 entries).
    pub const fn subclusters(&self) -> u32 {
        if self.extended_l2 { SUBCLUSTERS } else { 1 }
    }

    /// log2 of the subcluster size.
    pub const fn subcluster_bits(&self) -> u32 {
        if self.extended_l2 {
            self.cluster_bits - 5
        } else {
            self.cluster_bits
        }
    }

    /// Refcount width in bits.
    pub const fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// Largest refcount value.
    pub const fn refcount_max(&self) -> u64 {
        if self.refcount_order == 6 {
            u64::MAX
        } else {
            (1 << self.refcount_bits()) - 1
        }
    }

    /// log2 of refcount entries per refcount block.
    pub const fn refblock_bits(&self) -> u32 {
        self.cluster_bits + 3 - self.refcount_order
    }

    /// L1 entries the virtual size needs.
    pub fn l1_needed(&self) -> u64 {
        self.size.div_ceil(self.l2_span())
    }

    /// L1 index and L2 index of guest offset `g`.
    pub const fn split(&self, g: u64) -> (u64, u64) {
        let c = g >> self.cluster_bits;
        (c >> self.l2_bits, c & (self.l2_entries() - 1))
    }

    /// Checks that `[offset, offset + len)` is a cluster-aligned structure
    /// below 2^56 inside a file of `file_size` bytes.
    pub fn check_table(
        &self,
        what: Meta,
        offset: u64,
        len: u64,
        file_size: u64,
    ) -> Result<(), Qcow2Error> {
        if self.in_cluster(offset) != 0 {
            return Err(Qcow2Error::Unaligned { what, offset });
        }
        match offset.checked_add(len) {
            Some(end) if end <= file_size && end <= MAX_HOST_OFFSET + 1 => Ok(()),
            _ => Err(Qcow2Error::BeyondEnd { what, offset }),
        }
    }
}

/// What one guest cluster maps to, normalised so that images with and
/// without extended L2 entries look alike: without subclusters the whole
/// cluster is subcluster 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterMap {
    /// A standard cluster.
    Standard {
        /// Host cluster offset, 0 if none.
        host: u64,
        /// Bit 63: refcount is exactly one, writes may go in place.
        copied: bool,
        /// Subclusters whose data is at `host`.
        alloc: u32,
        /// Subclusters that read as zeroes.
        zero: u32,
    },
    /// A compressed cluster: `len` bytes of deflate data at `host`.
    Compressed {
        /// Host byte offset (not aligned).
        host: u64,
        /// Bytes of compressed data.
        len: u64,
    },
}

impl ClusterMap {
    /// An unallocated cluster.
    pub const UNALLOCATED: Self = ClusterMap::Standard {
        host: 0,
        copied: false,
        alloc: 0,
        zero: 0,
    };
}

impl Layout {
    /// Mask of all subclusters.
    pub const fn all_subs(&self) -> u32 {
        if self.extended_l2 { u32::MAX } else { 1 }
    }

    /// Decodes an L2 entry (`bitmap` is the second word of an extended
    /// entry, ignored otherwise). `guest` names the cluster in errors.
    ///
    /// As QEMU does, an unaligned host offset, a subcluster both allocated
    /// and zero, or allocated subclusters without a host offset is an error
    /// (QEMU marks the image corrupt and fails the request); reserved bits
    /// are an error too, so that a hostile entry can never point past 2^56.
    pub fn decode_l2(&self, entry: u64, bitmap: u64, guest: u64) -> Result<ClusterMap, Qcow2Error> {
        let bad = Qcow2Error::BadEntry {
            what: Meta::L2Table,
            offset: guest,
        };
        if entry & OFLAG_COMPRESSED != 0 {
            if entry & OFLAG_COPIED != 0 {
                return Err(bad);
            }
            // x = 62 - (cluster_bits - 8): offset in bits 0..x, additional
            // 512-byte sectors in bits x..62.
            let x = 62 - (self.cluster_bits - 8);
            let host = entry & ((1u64 << x) - 1);
            let sectors = ((entry >> x) & ((1u64 << (self.cluster_bits - 8)) - 1)) + 1;
            let len = sectors * 512 - (host & 511);
            if host > MAX_HOST_OFFSET || host == 0 {
                return Err(bad);
            }
            return Ok(ClusterMap::Compressed { host, len });
        }
        let host = entry & OFFSET_MASK;
        let copied = entry & OFLAG_COPIED != 0;
        let reserved = if self.extended_l2 {
            // Bit 0 is reserved with extended entries.
            L2_STD_RESERVED | OFLAG_ZERO
        } else {
            L2_STD_RESERVED
        };
        if entry & reserved != 0 || self.in_cluster(host) != 0 {
            return Err(bad);
        }
        if self.extended_l2 {
            let alloc = bitmap as u32;
            let zero = (bitmap >> 32) as u32;
            if alloc & zero != 0 || (alloc != 0 && host == 0) {
                return Err(bad);
            }
            Ok(ClusterMap::Standard {
                host,
                copied,
                alloc,
                zero,
            })
        } else {
            let zflag = entry & OFLAG_ZERO != 0;
            if zflag && !self.zero_flag {
                return Err(bad);
            }
            let alloc = (host != 0 && !zflag) as u32;
            Ok(ClusterMap::Standard {
                host,
                copied,
                alloc,
                zero: zflag as u32,
            })
        }
    }

    /// Encodes a standard cluster back into `(entry, bitmap)`.
    pub fn encode_l2(&self, host: u64, copied: bool, alloc: u32, zero: u32) -> (u64, u64) {
        let c = if copied && host != 0 { OFLAG_COPIED } else { 0 };
        if self.extended_l2 {
            (host | c, (alloc as u64) | ((zero as u64) << 32))
        } else if zero != 0 {
            (host | c | OFLAG_ZERO, 0)
        } else {
            (host | c, 0)
        }
    }

    /// Decodes an L1 entry into the L2 table offset (0: none) and its
    /// COPIED flag; `l1_index` names it in errors. QEMU masks reserved bits
    /// and refuses unaligned offsets.
    pub fn decode_l1(&self, entry: u64, l1_index: u64) -> Result<(u64, bool), Qcow2Error> {
        let off = entry & OFFSET_MASK;
        if self.in_cluster(off) != 0 {
            return Err(Qcow2Error::BadEntry {
                what: Meta::L1Table,
                offset: l1_index << (self.cluster_bits + self.l2_bits),
            });
        }
        Ok((off, entry & OFLAG_COPIED != 0))
    }

    /// Decodes a refcount table entry (0: no block); `index` names it.
    pub fn decode_reftable(&self, entry: u64, index: u64) -> Result<u64, Qcow2Error> {
        let off = entry & !REFT_RESERVED;
        if entry & REFT_RESERVED != 0 || self.in_cluster(off) != 0 || off > MAX_HOST_OFFSET {
            return Err(Qcow2Error::BadEntry {
                what: Meta::RefcountTable,
                offset: index << (self.refblock_bits() + self.cluster_bits),
            });
        }
        Ok(off)
    }

    /// Refcount entry `i` of a refcount block held as big-endian-decoded
    /// words (`words[k]` = bytes `8k..8k+8` read as big-endian `u64`).
    pub fn refcount_get(&self, words: &[u64], i: u64) -> u64 {
        let (w, shift, mask) = self.refcount_pos(i);
        words.get(w).map_or(0, |v| (v >> shift) & mask)
    }

    /// Sets refcount entry `i` (value masked to the width).
    pub fn refcount_set(&self, words: &mut [u64], i: u64, v: u64) {
        let (w, shift, mask) = self.refcount_pos(i);
        if let Some(word) = words.get_mut(w) {
            *word = (*word & !(mask << shift)) | ((v & mask) << shift);
        }
    }

    fn refcount_pos(&self, i: u64) -> (usize, u32, u64) {
        let bits = self.refcount_bits() as u64;
        let bit = i * bits;
        let byte = bit / 8;
        let word = (byte / 8) as usize;
        let byte_shift = (7 - (byte % 8)) as u32 * 8;
        let mask = self.refcount_max();
        if bits >= 8 {
            // Big-endian multi-byte entry starting at `byte`.
            (word, byte_shift + 8 - bits as u32, mask)
        } else {
            // Sub-byte entries: bit 0 is the least significant bit of the byte.
            (word, byte_shift + (bit % 8) as u32, mask)
        }
    }
}
