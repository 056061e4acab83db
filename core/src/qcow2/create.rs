//! Formatting a new, empty image, laid out as QEMU's `qcow2_co_create`
//! lays it out: the header in cluster 0, the refcount table from cluster 1,
//! then the refcount blocks, then the L1 table; every one of those
//! clusters has refcount 1 and nothing else is allocated.
//!
//! [`Create::new`] checks the options and computes the layout;
//! [`Create::cluster`] produces the bytes of each of the
//! [`Create::clusters`] initial clusters. Writing them in order and then
//! flushing gives an image that `qemu-img check` finds clean (an image
//! crashed half way is not an image yet: write to a temporary name and
//! rename, as `qemu-img create` effectively does).

use super::error::{Meta, Qcow2Error};
use super::header::{
    Header, HeaderArea, InlineBytes, MAX_BACKING_FORMAT, MAX_BACKING_NAME, MAX_CLUSTER_BITS,
    MIN_CLUSTER_BITS, V2_HEADER_LEN, V3_HEADER_LEN, incompatible,
};
use super::layout::{Layout, MAX_L1_BYTES, MAX_REFTABLE_BYTES};

/// Options of a new image (`qemu-img create -o` names in the docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options<'a> {
    /// Virtual size in bytes.
    pub size: u64,
    /// `cluster_size` as log2 (9..=21; 16 = 64 KiB is QEMU's default).
    pub cluster_bits: u32,
    /// `compat`: 2 for 0.10, 3 for 1.1 (QEMU's default).
    pub version: u32,
    /// `refcount_bits` as log2 (4 = 16 bits, QEMU's default).
    pub refcount_order: u32,
    /// `extended_l2`.
    pub extended_l2: bool,
    /// `backing_file` (empty: none).
    pub backing_file: &'a [u8],
    /// `backing_fmt` (empty: not recorded).
    pub backing_format: &'a [u8],
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            size: 0,
            cluster_bits: 16,
            version: 3,
            refcount_order: 4,
            extended_l2: false,
            backing_file: b"",
            backing_format: b"",
        }
    }
}

/// A computed layout of a new image.
#[derive(Clone, Debug)]
pub struct Create {
    area: HeaderArea,
    lay: Layout,
    reftable_clusters: u64,
    refblocks: u64,
    l1_clusters: u64,
}

impl Create {
    /// Checks `o` and lays the image out.
    pub fn new(o: &Options<'_>) -> Result<Self, Qcow2Error> {
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&o.cluster_bits)
            || (o.extended_l2 && o.cluster_bits < 14)
        {
            return Err(Qcow2Error::BadClusterBits(o.cluster_bits));
        }
        if o.version != 2 && o.version != 3 {
            return Err(Qcow2Error::UnsupportedVersion(o.version));
        }
        if o.refcount_order > 6 || (o.version == 2 && o.refcount_order != 4) {
            return Err(Qcow2Error::BadRefcountOrder(o.refcount_order));
        }
        if o.extended_l2 && o.version < 3 {
            return Err(Qcow2Error::UnsupportedVersion(2));
        }
        if o.backing_file.len() > MAX_BACKING_NAME {
            return Err(Qcow2Error::BackingNameTooLong(o.backing_file.len() as u32));
        }
        if o.backing_format.len() > MAX_BACKING_FORMAT {
            return Err(Qcow2Error::BadExtension {
                kind: super::header::ext::BACKING_FORMAT,
            });
        }
        if o.size > i64::MAX as u64 {
            return Err(Qcow2Error::BadSize(o.size));
        }
        let header = Header {
            version: o.version,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: o.cluster_bits,
            size: o.size,
            crypt_method: 0,
            l1_size: 0,
            l1_table_offset: 0,
            refcount_table_offset: 1 << o.cluster_bits,
            refcount_table_clusters: 0,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: if o.extended_l2 {
                incompatible::EXTENDED_L2
            } else {
                0
            },
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: o.refcount_order,
            header_length: if o.version == 2 {
                V2_HEADER_LEN
            } else {
                V3_HEADER_LEN
            },
            compression_type: 0,
        };
        let lay = Layout::new(&header);
        let c = lay.cluster_size();
        let l1 = lay.l1_needed();
        if l1 * 8 > MAX_L1_BYTES {
            return Err(Qcow2Error::TooLarge {
                what: Meta::L1Table,
                bytes: l1 * 8,
                limit: MAX_L1_BYTES,
            });
        }
        let l1_clusters = (l1 * 8).div_ceil(c);
        let per = 1u64 << lay.refblock_bits();
        let mut refblocks = 1u64;
        let mut reftable = 1u64;
        // Converges: every round grows one count, and both are bounded by
        // QEMU's table limits checked below.
        loop {
            let total = 1 + reftable + refblocks + l1_clusters;
            let need_blocks = total.div_ceil(per);
            let need_table = (need_blocks * 8).div_ceil(c);
            if need_blocks <= refblocks && need_table <= reftable {
                break;
            }
            refblocks = refblocks.max(need_blocks);
            reftable = reftable.max(need_table);
            if reftable * c > MAX_REFTABLE_BYTES {
                return Err(Qcow2Error::TooLarge {
                    what: Meta::RefcountTable,
                    bytes: reftable * c,
                    limit: MAX_REFTABLE_BYTES,
                });
            }
        }
        let mut area = HeaderArea {
            header,
            extra_fields: InlineBytes::new(),
            backing_name: InlineBytes::from_slice(o.backing_file).unwrap_or_default(),
            backing_format: InlineBytes::from_slice(o.backing_format).unwrap_or_default(),
            bitmaps: None,
            bitmaps_ext_at: 0,
            unknown_exts: InlineBytes::new(),
            unknown_overflow: false,
            ext_end: 0,
        };
        area.header.refcount_table_clusters = reftable as u32;
        area.header.l1_size = l1 as u32;
        area.header.l1_table_offset = if l1 > 0 {
            (1 + reftable + refblocks) << o.cluster_bits
        } else {
            0
        };
        Ok(Create {
            area,
            lay,
            reftable_clusters: reftable,
            refblocks,
            l1_clusters,
        })
    }

    /// Clusters of the initial image (its file size is `clusters() <<
    /// cluster_bits`).
    pub fn clusters(&self) -> u64 {
        1 + self.reftable_clusters + self.refblocks + self.l1_clusters
    }

    /// Cluster size.
    pub fn cluster_size(&self) -> u64 {
        self.lay.cluster_size()
    }

    /// Writes cluster `i` (`< clusters()`) into `out` (one cluster).
    pub fn cluster(&self, i: u64, out: &mut [u8]) -> Result<(), Qcow2Error> {
        let c = self.lay.cluster_size() as usize;
        let out = out.get_mut(..c).ok_or(Qcow2Error::HeaderOverflow)?;
        out.fill(0);
        let rt_end = 1 + self.reftable_clusters;
        let rb_end = rt_end + self.refblocks;
        if i == 0 {
            let mut a = self.area.clone();
            a.emit(out)?;
        } else if i < rt_end {
            // Refcount table entries pointing at the blocks.
            let per_cluster = (c / 8) as u64;
            let first = (i - 1) * per_cluster;
            for e in first..(first + per_cluster).min(self.refblocks) {
                let at = ((e - first) * 8) as usize;
                out[at..at + 8]
                    .copy_from_slice(&((rt_end + e) << self.lay.cluster_bits).to_be_bytes());
            }
        } else if i < rb_end {
            let per = 1u64 << self.lay.refblock_bits();
            let first = (i - rt_end) * per;
            let total = self.clusters();
            let mut words = [0u64; 1];
            let bits = self.lay.refcount_bits() as u64;
            for k in first..(first + per).min(total) {
                let idx = k - first;
                let wi = (idx * bits / 64) as usize;
                words[0] = u64::from_be_bytes(out[wi * 8..wi * 8 + 8].try_into().unwrap_or([0; 8]));
                self.lay.refcount_set(&mut words, idx % (64 / bits), 1);
                out[wi * 8..wi * 8 + 8].copy_from_slice(&words[0].to_be_bytes());
            }
        } else if i >= self.clusters() {
            return Err(Qcow2Error::OutOfRange);
        }
        // L1 clusters are all zero.
        Ok(())
    }
}
