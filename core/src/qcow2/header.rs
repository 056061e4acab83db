//! The qcow2 header, its extensions and the backing file name: everything
//! in cluster 0, parsed from bytes and emitted back (docs/interop/qcow2.txt,
//! "Header" and "Header extensions").
//!
//! [`Header`] is the fixed part (72 bytes in version 2, `header_length` in
//! version 3). [`HeaderArea`] adds what follows it in cluster 0: the
//! extensions this implementation understands (backing format, feature name
//! table, bitmaps), every unknown extension kept verbatim so that a rewrite
//! preserves it (the spec requires that of compatible extensions), and the
//! backing file name.

use super::error::{FeatureName, Meta, Qcow2Error};

/// `QFI\xfb`.
pub const MAGIC: u32 = 0x5146_49fb;
/// Length of a version 2 header.
pub const V2_HEADER_LEN: u32 = 72;
/// Smallest version 3 header.
pub const V3_MIN_HEADER_LEN: u32 = 104;
/// The version 3 header length QEMU writes: 104 bytes plus the
/// compression type byte, padded to a multiple of 8.
pub const V3_HEADER_LEN: u32 = 112;
/// Longest backing file name (spec: "must not be longer than 1023 bytes").
pub const MAX_BACKING_NAME: usize = 1023;
/// Longest backing format name QEMU accepts (its buffer is 16 bytes with
/// the terminating NUL).
pub const MAX_BACKING_FORMAT: usize = 15;
/// Smallest and largest `cluster_bits` QEMU opens.
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest `cluster_bits` QEMU opens (2 MiB).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Unknown header extensions kept for a rewrite, in bytes.
pub const UNKNOWN_EXT_CAP: usize = 1024;
/// Unknown additional header fields (past byte 104) kept for a rewrite.
pub const EXTRA_FIELDS_CAP: usize = 256;

/// Incompatible feature bits.
pub mod incompatible {
    /// Refcounts may be inconsistent (lazy refcounts in use).
    pub const DIRTY: u64 = 1 << 0;
    /// Any structure may be corrupt: no writes.
    pub const CORRUPT: u64 = 1 << 1;
    /// Guest data lives in an external data file.
    pub const DATA_FILE: u64 = 1 << 2;
    /// The compression type field is present and non-zero.
    pub const COMPRESSION: u64 = 1 << 3;
    /// L2 entries are 128 bits with subcluster bitmaps.
    pub const EXTENDED_L2: u64 = 1 << 4;
    /// Every bit this implementation knows.
    pub const KNOWN: u64 = DIRTY | CORRUPT | DATA_FILE | COMPRESSION | EXTENDED_L2;
}

/// Compatible feature bits.
pub mod compatible {
    /// Lazy refcount updates may be used.
    pub const LAZY_REFCOUNTS: u64 = 1 << 0;
}

/// Autoclear feature bits.
pub mod autoclear {
    /// The bitmaps extension is consistent.
    pub const BITMAPS: u64 = 1 << 0;
    /// The external data file is a consistent raw image.
    pub const RAW_DATA: u64 = 1 << 1;
    /// Every bit this implementation knows.
    pub const KNOWN: u64 = BITMAPS | RAW_DATA;
}

/// Header extension types.
pub mod ext {
    /// End of the extension area.
    pub const END: u32 = 0;
    /// Backing file format name.
    pub const BACKING_FORMAT: u32 = 0xe279_2aca;
    /// Feature name table.
    pub const FEATURE_TABLE: u32 = 0x6803_f857;
    /// Bitmaps extension.
    pub const BITMAPS: u32 = 0x2385_2875;
    /// Full disk encryption header pointer.
    pub const CRYPTO: u32 = 0x0537_be77;
    /// External data file name.
    pub const DATA_FILE: u32 = 0x4441_5441;
}

pub(crate) fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

pub(crate) fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

pub(crate) fn be64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_be_bytes(a))
}

pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) -> Option<()> {
    b.get_mut(at..at.checked_add(4)?)?
        .copy_from_slice(&v.to_be_bytes());
    Some(())
}

pub(crate) fn put64(b: &mut [u8], at: usize, v: u64) -> Option<()> {
    b.get_mut(at..at.checked_add(8)?)?
        .copy_from_slice(&v.to_be_bytes());
    Some(())
}

pub(crate) const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// The fixed header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Where the backing file name is (0: none).
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters the refcount table occupies.
    pub refcount_table_clusters: u32,
    /// Internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (0 in version 2).
    pub incompatible_features: u64,
    /// Compatible feature bits (0 in version 2).
    pub compatible_features: u64,
    /// Autoclear feature bits (0 in version 2).
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits (4 in version 2).
    pub refcount_order: u32,
    /// Length of the header structure (72 in version 2).
    pub header_length: u32,
    /// 0 zlib, 1 zstd.
    pub compression_type: u8,
}

impl Header {
    /// Parses and checks the fixed header from the start of the file.
    ///
    /// Checks what the header alone decides: magic, version, lengths,
    /// cluster size, refcount width, encryption, and the incompatible
    /// features (an unknown bit refuses the image, naming the bit; the name
    /// from the feature table is added by [`HeaderArea::parse`]).
    pub fn parse(b: &[u8]) -> Result<Self, Qcow2Error> {
        let cut = Qcow2Error::Truncated {
            what: Meta::Header,
            offset: 0,
        };
        if be32(b, 0).ok_or(cut)? != MAGIC {
            return Err(Qcow2Error::BadMagic);
        }
        let version = be32(b, 4).ok_or(cut)?;
        if version != 2 && version != 3 {
            return Err(Qcow2Error::UnsupportedVersion(version));
        }
        let f64_ = |at| be64(b, at).ok_or(cut);
        let f32_ = |at| be32(b, at).ok_or(cut);
        let mut h = Header {
            version,
            backing_file_offset: f64_(8)?,
            backing_file_size: f32_(16)?,
            cluster_bits: f32_(20)?,
            size: f64_(24)?,
            crypt_method: f32_(32)?,
            l1_size: f32_(36)?,
            l1_table_offset: f64_(40)?,
            refcount_table_offset: f64_(48)?,
            refcount_table_clusters: f32_(56)?,
            nb_snapshots: f32_(60)?,
            snapshots_offset: f64_(64)?,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            compression_type: 0,
        };
        if version == 3 {
            h.incompatible_features = f64_(72)?;
            h.compatible_features = f64_(80)?;
            h.autoclear_features = f64_(88)?;
            h.refcount_order = f32_(96)?;
            h.header_length = f32_(100)?;
            if h.header_length < V3_MIN_HEADER_LEN || h.header_length % 8 != 0 {
                return Err(Qcow2Error::BadHeaderLength(h.header_length));
            }
            if h.header_length > V3_MIN_HEADER_LEN {
                h.compression_type = *b.get(104).ok_or(cut)?;
            }
        }
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&h.cluster_bits) {
            return Err(Qcow2Error::BadClusterBits(h.cluster_bits));
        }
        if h.header_length as u64 > h.cluster_size() {
            return Err(Qcow2Error::BadHeaderLength(h.header_length));
        }
        if h.refcount_order > 6 || (version == 2 && h.refcount_order != 4) {
            return Err(Qcow2Error::BadRefcountOrder(h.refcount_order));
        }
        let unknown = h.incompatible_features & !incompatible::KNOWN;
        if unknown != 0 {
            return Err(Qcow2Error::UnknownIncompatibleFeature {
                bit: unknown.trailing_zeros() as u8,
                name: FeatureName::EMPTY,
            });
        }
        if h.crypt_method != 0 {
            return Err(Qcow2Error::Encrypted(h.crypt_method));
        }
        if h.incompatible_features & incompatible::DATA_FILE != 0 {
            return Err(Qcow2Error::ExternalDataFile);
        }
        let has_type_bit = h.incompatible_features & incompatible::COMPRESSION != 0;
        match (has_type_bit, h.compression_type) {
            (false, 0) => {}
            (true, 0) | (false, _) => {
                return Err(Qcow2Error::BadCompressionType(h.compression_type));
            }
            (true, t) => return Err(Qcow2Error::UnsupportedCompression(t)),
        }
        if h.extended_l2() && h.cluster_bits < 14 {
            return Err(Qcow2Error::BadClusterBits(h.cluster_bits));
        }
        Ok(h)
    }

    /// Cluster size in bytes.
    pub const fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Whether L2 entries are extended (128 bits, subclusters).
    pub const fn extended_l2(&self) -> bool {
        self.incompatible_features & incompatible::EXTENDED_L2 != 0
    }

    /// Refcount entry width in bits.
    pub const fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// Writes the fixed header (`header_length` bytes in version 3, of
    /// which bytes past 105 come from `extra`, zero if shorter). Returns
    /// the bytes written.
    pub fn emit(&self, extra: &[u8], out: &mut [u8]) -> Result<usize, Qcow2Error> {
        let len = self.header_length as usize;
        let area = out.get_mut(..len).ok_or(Qcow2Error::HeaderOverflow)?;
        area.fill(0);
        let o = Qcow2Error::HeaderOverflow;
        put32(area, 0, MAGIC).ok_or(o)?;
        put32(area, 4, self.version).ok_or(o)?;
        put64(area, 8, self.backing_file_offset).ok_or(o)?;
        put32(area, 16, self.backing_file_size).ok_or(o)?;
        put32(area, 20, self.cluster_bits).ok_or(o)?;
        put64(area, 24, self.size).ok_or(o)?;
        put32(area, 32, self.crypt_method).ok_or(o)?;
        put32(area, 36, self.l1_size).ok_or(o)?;
        put64(area, 40, self.l1_table_offset).ok_or(o)?;
        put64(area, 48, self.refcount_table_offset).ok_or(o)?;
        put32(area, 56, self.refcount_table_clusters).ok_or(o)?;
        put32(area, 60, self.nb_snapshots).ok_or(o)?;
        put64(area, 64, self.snapshots_offset).ok_or(o)?;
        if self.version >= 3 {
            put64(area, 72, self.incompatible_features).ok_or(o)?;
            put64(area, 80, self.compatible_features).ok_or(o)?;
            put64(area, 88, self.autoclear_features).ok_or(o)?;
            put32(area, 96, self.refcount_order).ok_or(o)?;
            put32(area, 100, self.header_length).ok_or(o)?;
            if len > 104 {
                let tail = &mut area[104..];
                let n = extra.len().min(tail.len());
                tail[..n].copy_from_slice(&extra[..n]);
                tail[0] = self.compression_type;
            }
        }
        Ok(len)
    }
}

/// The bitmaps header extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitmapsExt {
    /// Bitmaps in the directory (at least 1).
    pub nb_bitmaps: u32,
    /// Directory size in bytes.
    pub directory_size: u64,
    /// Directory offset (cluster aligned).
    pub directory_offset: u64,
}

/// A short byte string held inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InlineBytes<const N: usize> {
    bytes: [u8; N],
    len: u16,
}

impl<const N: usize> InlineBytes<N> {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
        }
    }

    /// A copy of `b`, or `None` if longer than `N`.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        let mut s = Self::new();
        s.bytes.get_mut(..b.len())?.copy_from_slice(b);
        s.len = b.len() as u16;
        Some(s)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const N: usize> Default for InlineBytes<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Debug for InlineBytes<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(&super::error::Printable(self.as_bytes()), f)
    }
}

/// Everything cluster 0 holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderArea {
    /// The fixed header.
    pub header: Header,
    /// Header bytes past 104 (compression type, unknown later fields).
    pub extra_fields: InlineBytes<EXTRA_FIELDS_CAP>,
    /// Backing file name (empty: none).
    pub backing_name: InlineBytes<MAX_BACKING_NAME>,
    /// Backing file format (empty: not recorded, probe).
    pub backing_format: InlineBytes<MAX_BACKING_FORMAT>,
    /// The bitmaps extension, if present.
    pub bitmaps: Option<BitmapsExt>,
    /// Where in cluster 0 the bitmaps extension's data starts (for an in
    /// place update), 0 if absent.
    pub bitmaps_ext_at: u32,
    /// Unknown extensions, verbatim with their type/length words and padding.
    pub unknown_exts: InlineBytes<UNKNOWN_EXT_CAP>,
    /// Unknown extensions did not fit [`UNKNOWN_EXT_CAP`]: a rewrite of
    /// cluster 0 would lose them and is refused.
    pub unknown_overflow: bool,
    /// End of the extension area (offset of the end marker's end).
    pub ext_end: u32,
}

impl HeaderArea {
    /// Parses cluster 0 (or a prefix of it). `b` must hold the header, the
    /// extensions and the backing name; when it is too short the error is
    /// [`Qcow2Error::Truncated`] and [`needed_len`](Self::needed_len) says
    /// how much to read.
    pub fn parse(b: &[u8]) -> Result<Self, Qcow2Error> {
        let header = match Header::parse(b) {
            Err(Qcow2Error::UnknownIncompatibleFeature { bit, .. }) => {
                // Name the bit from the feature table if the image has one.
                let name = feature_name(b, 0, bit).unwrap_or(FeatureName::EMPTY);
                return Err(Qcow2Error::UnknownIncompatibleFeature { bit, name });
            }
            r => r?,
        };
        let cluster = header.cluster_size();
        let mut area = HeaderArea {
            header,
            extra_fields: InlineBytes::new(),
            backing_name: InlineBytes::new(),
            backing_format: InlineBytes::new(),
            bitmaps: None,
            bitmaps_ext_at: 0,
            unknown_exts: InlineBytes::new(),
            unknown_overflow: false,
            ext_end: header.header_length,
        };
        if header.header_length > V3_MIN_HEADER_LEN {
            let extra = b
                .get(104..header.header_length as usize)
                .ok_or(Qcow2Error::Truncated {
                    what: Meta::Header,
                    offset: 0,
                })?;
            area.extra_fields =
                InlineBytes::from_slice(&extra[..extra.len().min(EXTRA_FIELDS_CAP)])
                    .unwrap_or_default();
        }
        let mut unknown = [0u8; UNKNOWN_EXT_CAP];
        let mut unknown_len = 0usize;
        let mut seen_backing_fmt = false;
        let mut seen_features = false;
        // Version 2 images have extensions too (QEMU writes the backing
        // format extension into them).
        let mut at = header.header_length as usize;
        // Each extension is at least 8 bytes, so this loop ends within
        // cluster/8 iterations.
        loop {
            if at as u64 + 8 > cluster {
                // No end marker inside cluster 0: QEMU stops at the cluster
                // end ("ext.len too large" only for an extension crossing it).
                area.ext_end = at as u32;
                break;
            }
            let cut = Qcow2Error::Truncated {
                what: Meta::Header,
                offset: at as u64,
            };
            let kind = be32(b, at).ok_or(cut)?;
            let len = be32(b, at + 4).ok_or(cut)? as u64;
            if kind == ext::END {
                area.ext_end = at as u32 + 8;
                break;
            }
            let data_at = at as u64 + 8;
            if data_at + len > cluster {
                return Err(Qcow2Error::BadExtension { kind });
            }
            let data = b
                .get(data_at as usize..(data_at + len) as usize)
                .ok_or(cut)?;
            let next = align8((data_at + len) as usize);
            match kind {
                ext::BACKING_FORMAT => {
                    if seen_backing_fmt {
                        return Err(Qcow2Error::DuplicateExtension { kind });
                    }
                    seen_backing_fmt = true;
                    area.backing_format =
                        InlineBytes::from_slice(data).ok_or(Qcow2Error::BadExtension { kind })?;
                }
                ext::FEATURE_TABLE => {
                    if seen_features {
                        return Err(Qcow2Error::DuplicateExtension { kind });
                    }
                    seen_features = true;
                    if data.len() % 48 != 0 {
                        return Err(Qcow2Error::BadExtension { kind });
                    }
                }
                ext::BITMAPS => {
                    if area.bitmaps.is_some() {
                        return Err(Qcow2Error::DuplicateExtension { kind });
                    }
                    area.bitmaps = Some(parse_bitmaps_ext(data)?);
                    area.bitmaps_ext_at = data_at as u32;
                }
                ext::DATA_FILE => return Err(Qcow2Error::ExternalDataFile),
                ext::CRYPTO => return Err(Qcow2Error::Encrypted(header.crypt_method)),
                _ => {
                    let whole = b.get(at..next.min(b.len())).ok_or(cut)?;
                    if unknown_len + whole.len() <= UNKNOWN_EXT_CAP {
                        unknown[unknown_len..unknown_len + whole.len()].copy_from_slice(whole);
                        // Padding may be absent at the very end of a short
                        // buffer; keep the record 8-aligned.
                        unknown_len = align8(unknown_len + whole.len());
                    } else {
                        area.unknown_overflow = true;
                    }
                }
            }
            at = next;
        }
        area.unknown_exts = InlineBytes::from_slice(&unknown[..unknown_len]).unwrap_or_default();
        if header.backing_file_offset != 0 {
            let n = header.backing_file_size;
            if n as usize > MAX_BACKING_NAME {
                return Err(Qcow2Error::BackingNameTooLong(n));
            }
            let off = header.backing_file_offset;
            if off >= cluster || off + n as u64 > cluster {
                return Err(Qcow2Error::BadBackingNameOffset(off));
            }
            let name =
                b.get(off as usize..off as usize + n as usize)
                    .ok_or(Qcow2Error::Truncated {
                        what: Meta::Header,
                        offset: off,
                    })?;
            area.backing_name = InlineBytes::from_slice(name).unwrap_or_default();
        }
        if header.autoclear_features & autoclear::BITMAPS != 0 && area.bitmaps.is_none() {
            // Spec: "It is an error if this bit is set without the bitmaps
            // extension present." QEMU only warns and clears the bit on the
            // next write; do the same (the bit is dropped on first write).
        }
        Ok(area)
    }

    /// How many bytes of cluster 0 [`parse`](Self::parse) needs, given a
    /// prefix `b` that holds at least the fixed header: the whole cluster,
    /// capped at `file_size`.
    pub fn needed_len(b: &[u8], file_size: u64) -> Result<u64, Qcow2Error> {
        let h = match Header::parse(b) {
            Err(Qcow2Error::UnknownIncompatibleFeature { .. }) => {
                // Read the whole first cluster so the feature table can name it.
                let bits = be32(b, 20).unwrap_or(MAX_CLUSTER_BITS);
                return Ok((1u64 << bits.clamp(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS)).min(file_size));
            }
            r => r?,
        };
        Ok(h.cluster_size().min(file_size))
    }

    /// Whether the image has a backing file.
    pub fn has_backing(&self) -> bool {
        self.header.backing_file_offset != 0
    }

    /// Emits cluster 0's content: header, extensions (backing format,
    /// QEMU's feature name table in version 3, bitmaps, the preserved
    /// unknown ones), end marker, backing file name. `header.
    /// backing_file_offset/size` are recomputed. Returns the bytes used;
    /// the rest of `out` (up to the cluster size) should be zero.
    pub fn emit(&mut self, out: &mut [u8]) -> Result<usize, Qcow2Error> {
        // The feature name table is optional: leave it out when cluster 0
        // (512-byte clusters) has no room for it.
        match self.emit_with(out, true) {
            Err(Qcow2Error::HeaderOverflow) if self.header.version >= 3 => {
                self.emit_with(out, false)
            }
            r => r,
        }
    }

    fn emit_with(&mut self, out: &mut [u8], feature_table: bool) -> Result<usize, Qcow2Error> {
        if self.unknown_overflow {
            return Err(Qcow2Error::HeaderOverflow);
        }
        let cluster = self.header.cluster_size() as usize;
        let out = out.get_mut(..cluster).ok_or(Qcow2Error::HeaderOverflow)?;
        out.fill(0);
        if self.header.version >= 3 && self.header.header_length < V3_HEADER_LEN {
            self.header.header_length = V3_HEADER_LEN;
        }
        let o = Qcow2Error::HeaderOverflow;
        let mut at = self.header.header_length as usize;
        let mut put_ext = |at: &mut usize, kind: u32, data: &[u8]| -> Result<(), Qcow2Error> {
            let end = align8(*at + 8 + data.len());
            if end + 8 > cluster {
                return Err(o);
            }
            put32(out, *at, kind).ok_or(o)?;
            put32(out, *at + 4, data.len() as u32).ok_or(o)?;
            out[*at + 8..*at + 8 + data.len()].copy_from_slice(data);
            *at = end;
            Ok(())
        };
        if !self.backing_format.is_empty() {
            put_ext(&mut at, ext::BACKING_FORMAT, self.backing_format.as_bytes())?;
        }
        if self.header.version >= 3 && feature_table {
            let mut table = [0u8; 48 * FEATURE_NAMES.len()];
            for (i, (kind, bit, name)) in FEATURE_NAMES.iter().enumerate() {
                let e = &mut table[i * 48..(i + 1) * 48];
                e[0] = *kind;
                e[1] = *bit;
                e[2..2 + name.len()].copy_from_slice(name.as_bytes());
            }
            put_ext(&mut at, ext::FEATURE_TABLE, &table)?;
        }
        self.bitmaps_ext_at = 0;
        if let Some(bm) = self.bitmaps {
            let mut d = [0u8; 24];
            put32(&mut d, 0, bm.nb_bitmaps).ok_or(o)?;
            put64(&mut d, 8, bm.directory_size).ok_or(o)?;
            put64(&mut d, 16, bm.directory_offset).ok_or(o)?;
            self.bitmaps_ext_at = at as u32 + 8;
            put_ext(&mut at, ext::BITMAPS, &d)?;
        }
        let unknown = self.unknown_exts.as_bytes();
        if at + unknown.len() + 8 > cluster {
            return Err(o);
        }
        out[at..at + unknown.len()].copy_from_slice(unknown);
        at += unknown.len();
        // End marker: type 0, length 0 (already zero).
        at += 8;
        self.ext_end = at as u32;
        let name = self.backing_name.as_bytes();
        if name.is_empty() {
            self.header.backing_file_offset = 0;
            self.header.backing_file_size = 0;
        } else {
            if at + name.len() > cluster {
                return Err(o);
            }
            out[at..at + name.len()].copy_from_slice(name);
            self.header.backing_file_offset = at as u64;
            self.header.backing_file_size = name.len() as u32;
            at += name.len();
        }
        self.header.emit(self.extra_fields.as_bytes(), out)?;
        Ok(at)
    }
}

/// QEMU's feature name table entries: (type, bit, name).
const FEATURE_NAMES: [(u8, u8, &str); 8] = [
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
];

fn parse_bitmaps_ext(d: &[u8]) -> Result<BitmapsExt, Qcow2Error> {
    let bad = Qcow2Error::BadBitmap { index: u32::MAX };
    if d.len() < 24 {
        return Err(bad);
    }
    let nb_bitmaps = be32(d, 0).ok_or(bad)?;
    let reserved = be32(d, 4).ok_or(bad)?;
    let directory_size = be64(d, 8).ok_or(bad)?;
    let directory_offset = be64(d, 16).ok_or(bad)?;
    // QEMU's limits: 1..=65535 bitmaps, directory at most 1 KiB each.
    if reserved != 0
        || nb_bitmaps == 0
        || nb_bitmaps > super::bitmaps::MAX_BITMAPS
        || directory_size == 0
        || directory_size > super::bitmaps::MAX_DIRECTORY_SIZE
    {
        return Err(bad);
    }
    Ok(BitmapsExt {
        nb_bitmaps,
        directory_size,
        directory_offset,
    })
}

/// The name of incompatible-feature `bit` from the feature name table in
/// `b`, if `b` holds a parsable extension area with one.
fn feature_name(b: &[u8], kind: u8, bit: u8) -> Option<FeatureName> {
    let hlen = be32(b, 100)? as usize;
    let cluster = 1usize << be32(b, 20)?.clamp(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS);
    let mut at = hlen;
    while at + 8 <= cluster.min(b.len()) {
        let t = be32(b, at)?;
        let len = be32(b, at + 4)? as usize;
        if t == ext::END {
            return None;
        }
        let data = b.get(at + 8..(at + 8).checked_add(len)?)?;
        if t == ext::FEATURE_TABLE {
            return data
                .chunks_exact(48)
                .find(|e| e[0] == kind && e[1] == bit)
                .map(|e| FeatureName::from_field(&e[2..48]));
        }
        at = align8(at + 8 + len);
    }
    None
}
