//! Why an image or an operation was refused.
//!
//! Every refusal names what was wrong, so that a frontend can print one line
//! that a person can act on ("L1 table at 0x30200 is not cluster aligned"),
//! as QEMU's `error_setg` messages do.

use core::fmt;

use crate::block::contract::BlockError;

/// Which piece of qcow2 metadata a message is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Meta {
    /// The header cluster (cluster 0).
    Header,
    /// The active L1 table.
    L1Table,
    /// An L2 table.
    L2Table,
    /// The refcount table.
    RefcountTable,
    /// A refcount block.
    RefcountBlock,
    /// The snapshot table.
    SnapshotTable,
    /// The L1 table of an internal snapshot.
    InactiveL1,
    /// The bitmap directory.
    BitmapDirectory,
    /// A bitmap table.
    BitmapTable,
    /// A guest data cluster.
    Data,
}

impl Meta {
    /// The name used in messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Meta::Header => "header",
            Meta::L1Table => "L1 table",
            Meta::L2Table => "L2 table",
            Meta::RefcountTable => "refcount table",
            Meta::RefcountBlock => "refcount block",
            Meta::SnapshotTable => "snapshot table",
            Meta::InactiveL1 => "snapshot L1 table",
            Meta::BitmapDirectory => "bitmap directory",
            Meta::BitmapTable => "bitmap table",
            Meta::Data => "data cluster",
        }
    }
}

/// A feature name from the image's feature name table (at most 46 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FeatureName {
    bytes: [u8; 46],
    len: u8,
}

impl FeatureName {
    /// An empty name (the table had none for this bit).
    pub const EMPTY: Self = Self {
        bytes: [0; 46],
        len: 0,
    };

    /// From the table's 46-byte field (zero padded).
    pub fn from_field(field: &[u8]) -> Self {
        let mut out = Self::EMPTY;
        let n = field
            .iter()
            .take(46)
            .position(|&b| b == 0)
            .unwrap_or(field.len().min(46));
        out.bytes[..n].copy_from_slice(&field[..n]);
        out.len = n as u8;
        out
    }

    /// The name as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl fmt::Debug for FeatureName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", Printable(self.as_bytes()))
    }
}

/// Prints bytes as text, escaping what is not printable ASCII.
pub(crate) struct Printable<'a>(pub &'a [u8]);

impl fmt::Debug for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        fmt::Display::fmt(self, f)?;
        f.write_str("\"")
    }
}

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if (0x20..0x7f).contains(&b) && b != b'\\' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// Why a qcow2 image or request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qcow2Error {
    /// The file is shorter than the piece of metadata that must be there.
    Truncated {
        /// What was cut off.
        what: Meta,
        /// Where it starts.
        offset: u64,
    },
    /// The first four bytes are not `QFI\xfb`.
    BadMagic,
    /// Only versions 2 and 3 exist.
    UnsupportedVersion(u32),
    /// `header_length` is below 104, not a multiple of 8, or past cluster 0.
    BadHeaderLength(u32),
    /// `cluster_bits` outside 9..=21 (QEMU's 512 B to 2 MiB), or below 14
    /// with extended L2 entries.
    BadClusterBits(u32),
    /// `refcount_order` above 6, or not 4 in a version 2 image.
    BadRefcountOrder(u32),
    /// The image is encrypted (`crypt_method` 1 = AES, 2 = LUKS).
    Encrypted(u32),
    /// An incompatible feature bit this implementation does not know.
    UnknownIncompatibleFeature {
        /// The bit number (0..=63).
        bit: u8,
        /// Its name in the image's feature name table, if it has one.
        name: FeatureName,
    },
    /// Incompatible feature bit 2: guest data lives in an external data file.
    ExternalDataFile,
    /// Compressed clusters use a compression type other than zlib (1 = zstd).
    UnsupportedCompression(u8),
    /// The compression type field and its incompatible bit disagree.
    BadCompressionType(u8),
    /// A header extension runs past the end of cluster 0 or its length is bad.
    BadExtension {
        /// The extension type.
        kind: u32,
    },
    /// A header extension that may appear once appears twice.
    DuplicateExtension {
        /// The extension type.
        kind: u32,
    },
    /// The backing file name is longer than 1023 bytes.
    BackingNameTooLong(u32),
    /// The backing file name does not lie inside cluster 0.
    BadBackingNameOffset(u64),
    /// A metadata structure is not aligned to a cluster boundary.
    Unaligned {
        /// Which structure.
        what: Meta,
        /// Its offset.
        offset: u64,
    },
    /// A metadata structure reaches past the end of the image file (or
    /// past 2^56, where no host offset may be).
    BeyondEnd {
        /// Which structure.
        what: Meta,
        /// Its offset.
        offset: u64,
    },
    /// A table is larger than QEMU's implementation limit for it, or than
    /// the storage the caller gave for it.
    TooLarge {
        /// Which table.
        what: Meta,
        /// Its size in bytes (saturated).
        bytes: u64,
        /// The limit it exceeds.
        limit: u64,
    },
    /// The L1 table has fewer entries than the virtual size needs.
    L1TooSmall {
        /// Entries in the image.
        entries: u32,
        /// Entries the virtual size needs.
        needed: u64,
    },
    /// The virtual disk size is larger than this image can map.
    BadSize(u64),
    /// Two metadata structures overlap (QEMU's overlap checks).
    Overlap {
        /// The structure being placed or checked.
        what: Meta,
        /// The one it overlaps.
        with: Meta,
        /// The host offset of the overlap.
        offset: u64,
    },
    /// An entry of a metadata table has reserved bits set or points at an
    /// unaligned offset (QEMU marks such images corrupt).
    BadEntry {
        /// The table holding the entry.
        what: Meta,
        /// The guest (L2) or host (refcount) offset it describes.
        offset: u64,
    },
    /// A compressed cluster's data could not be inflated to a full cluster.
    BadCompressedData {
        /// The guest offset of the cluster.
        offset: u64,
    },
    /// A refcount would exceed the width of a refcount entry.
    RefcountOverflow {
        /// The host cluster offset.
        offset: u64,
    },
    /// A refcount would go below zero (a double free: the image is corrupt).
    RefcountUnderflow {
        /// The host cluster offset.
        offset: u64,
    },
    /// The snapshot table is malformed: too many snapshots, an entry too
    /// long, or an entry past the table.
    BadSnapshotTable {
        /// The snapshot's index.
        index: u32,
    },
    /// The bitmaps extension, directory or a bitmap table is malformed.
    BadBitmap {
        /// Index of the directory entry (or `u32::MAX` for the extension).
        index: u32,
    },
    /// The image has the corrupt bit set: it may be opened read-only only.
    MarkedCorrupt,
    /// The image has the dirty bit set (lazy refcounts were in use and it
    /// was not closed cleanly): refcounts need a repair before writing
    /// (`qemu-img check -r all`). Read-only access is allowed.
    Dirty,
    /// A write to an image opened read-only.
    ReadOnly,
    /// Caller-provided storage is too small (the message says for what).
    StorageTooSmall {
        /// What needs the storage.
        what: Meta,
        /// Words needed.
        needed: u64,
    },
    /// The image would need to grow beyond what this implementation or the
    /// caller's storage can address.
    NoSpace,
    /// The request lies outside the virtual disk, or is otherwise invalid.
    OutOfRange,
    /// The caller fed bytes that were not asked for, or called out of turn.
    Protocol,
    /// The header (with its extensions and backing file name) does not fit
    /// into cluster 0, or unknown extensions are too large to preserve.
    HeaderOverflow,
}

impl Qcow2Error {
    /// The block-layer error a frontend should report for this refusal.
    pub const fn block_error(self) -> BlockError {
        match self {
            Qcow2Error::ReadOnly | Qcow2Error::MarkedCorrupt | Qcow2Error::Dirty => {
                BlockError::Busy
            }
            Qcow2Error::OutOfRange => BlockError::OutOfRange,
            Qcow2Error::NoSpace => BlockError::NoSpace,
            Qcow2Error::StorageTooSmall { .. } => BlockError::StorageTooSmall,
            Qcow2Error::Protocol => BlockError::Invalid,
            _ => BlockError::Io(5),
        }
    }
}

impl fmt::Display for Qcow2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Qcow2Error::Truncated { what, offset } => {
                write!(f, "qcow2: {} at {offset:#x} is cut off by the end of the file", what.as_str())
            }
            Qcow2Error::BadMagic => f.write_str("qcow2: not a qcow2 image (bad magic)"),
            Qcow2Error::UnsupportedVersion(v) => {
                write!(f, "qcow2: unsupported version {v} (only 2 and 3 exist)")
            }
            Qcow2Error::BadHeaderLength(n) => write!(f, "qcow2: invalid header_length {n}"),
            Qcow2Error::BadClusterBits(b) => write!(
                f,
                "qcow2: cluster size 2^{b} is outside 512 B..2 MiB (16 KiB minimum with extended L2 entries)"
            ),
            Qcow2Error::BadRefcountOrder(o) => write!(f, "qcow2: invalid refcount_order {o}"),
            Qcow2Error::Encrypted(m) => {
                write!(f, "qcow2: encrypted images (crypt_method {m}) are not supported")
            }
            Qcow2Error::UnknownIncompatibleFeature { bit, name } => {
                if name.as_bytes().is_empty() {
                    write!(f, "qcow2: unsupported incompatible feature bit {bit}")
                } else {
                    write!(
                        f,
                        "qcow2: unsupported incompatible feature bit {bit} ({})",
                        Printable(name.as_bytes())
                    )
                }
            }
            Qcow2Error::ExternalDataFile => {
                f.write_str("qcow2: images with an external data file are not supported")
            }
            Qcow2Error::UnsupportedCompression(t) => match t {
                1 => f.write_str(
                    "qcow2: zstd-compressed images are not supported (no no_std, allocation-free zstd decoder)",
                ),
                _ => write!(f, "qcow2: unknown compression type {t}"),
            },
            Qcow2Error::BadCompressionType(t) => write!(
                f,
                "qcow2: compression type {t} contradicts the compression type feature bit"
            ),
            Qcow2Error::BadExtension { kind } => {
                write!(f, "qcow2: header extension {kind:#010x} is malformed or runs past cluster 0")
            }
            Qcow2Error::DuplicateExtension { kind } => {
                write!(f, "qcow2: header extension {kind:#010x} appears more than once")
            }
            Qcow2Error::BackingNameTooLong(n) => {
                write!(f, "qcow2: backing file name of {n} bytes is longer than 1023")
            }
            Qcow2Error::BadBackingNameOffset(o) => {
                write!(f, "qcow2: backing file name at {o:#x} is not inside the first cluster")
            }
            Qcow2Error::Unaligned { what, offset } => {
                write!(f, "qcow2: {} at {offset:#x} is not cluster aligned", what.as_str())
            }
            Qcow2Error::BeyondEnd { what, offset } => {
                write!(f, "qcow2: {} at {offset:#x} lies beyond the end of the image", what.as_str())
            }
            Qcow2Error::TooLarge { what, bytes, limit } => write!(
                f,
                "qcow2: {} of {bytes} bytes exceeds the limit of {limit} bytes",
                what.as_str()
            ),
            Qcow2Error::L1TooSmall { entries, needed } => write!(
                f,
                "qcow2: L1 table of {entries} entries is too small for the disk size ({needed} needed)"
            ),
            Qcow2Error::BadSize(s) => write!(f, "qcow2: virtual size {s} cannot be mapped"),
            Qcow2Error::Overlap { what, with, offset } => write!(
                f,
                "qcow2: {} overlaps the {} at {offset:#x}",
                what.as_str(),
                with.as_str()
            ),
            Qcow2Error::BadEntry { what, offset } => write!(
                f,
                "qcow2: {} entry for offset {offset:#x} is invalid (reserved bits or unaligned offset)",
                what.as_str()
            ),
            Qcow2Error::BadCompressedData { offset } => {
                write!(f, "qcow2: compressed cluster at guest offset {offset:#x} does not inflate")
            }
            Qcow2Error::RefcountOverflow { offset } => {
                write!(f, "qcow2: refcount of cluster {offset:#x} would overflow")
            }
            Qcow2Error::RefcountUnderflow { offset } => {
                write!(f, "qcow2: refcount of cluster {offset:#x} would drop below zero")
            }
            Qcow2Error::BadSnapshotTable { index } => {
                write!(f, "qcow2: snapshot table entry {index} is invalid")
            }
            Qcow2Error::BadBitmap { index } => {
                if index == u32::MAX {
                    f.write_str("qcow2: bitmaps extension is invalid")
                } else {
                    write!(f, "qcow2: bitmap directory entry {index} is invalid")
                }
            }
            Qcow2Error::MarkedCorrupt => f.write_str(
                "qcow2: image is marked corrupt; it can only be opened read-only (repair: qemu-img check -r all)",
            ),
            Qcow2Error::Dirty => f.write_str(
                "qcow2: image is dirty (lazy refcounts); repair with qemu-img check -r all before writing",
            ),
            Qcow2Error::ReadOnly => f.write_str("qcow2: image is read-only"),
            Qcow2Error::StorageTooSmall { what, needed } => write!(
                f,
                "qcow2: caller storage too small for the {} ({needed} words needed)",
                what.as_str()
            ),
            Qcow2Error::NoSpace => f.write_str("qcow2: image cannot grow further"),
            Qcow2Error::OutOfRange => f.write_str("qcow2: request outside the virtual disk"),
            Qcow2Error::Protocol => f.write_str("qcow2: call out of turn or unexpected bytes"),
            Qcow2Error::HeaderOverflow => {
                f.write_str("qcow2: header, extensions and backing file name do not fit cluster 0")
            }
        }
    }
}
