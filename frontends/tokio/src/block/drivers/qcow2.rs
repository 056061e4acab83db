//! `qcow2`: QEMU's image format (`BlockdevOptionsQcow2`) over a `file`
//! child, with an optional `backing` node of any driver. The sans-IO core
//! ([`blockwire_core::qcow2`]) answers every lookup and plans every change;
//! this driver only performs the I/O the core names, in the core's order.
//!
//! # Concurrency
//!
//! The core's rules (its module docs): calls take `&mut self`, so the image
//! sits behind a `std` mutex held only for planning, `map`, `install` and
//! `commit`, never across I/O. Requests touching the same guest cluster
//! must be serialised, and nothing may plan between a flush plan and its
//! commit. This driver meets both with one reader-writer lock over
//! requests: reads and block status share it (they only map and read, and
//! loads that race a flush are refused by the core's epoch check and asked
//! for again), while writes, write-zeroes, discards and flushes hold it
//! alone, so a write's copy-on-write source and the mapping it replaces
//! cannot change under it, and a cluster freed by one request cannot be
//! reused while a read still reads it. A read that finds every cache slot
//! dirty (`Need::Flush`) lets go of the shared lock and flushes under the
//! exclusive one.
//!
//! # Durability
//!
//! L2, L1 and refcount changes stay in memory until a flush plan writes
//! them in the crash-safe order; an NBD flush (or a FUA write) runs flush
//! plans until no metadata is dirty, so every acknowledged flush covers
//! every write completed before it. The steps a plan marks as barriers are
//! flushes of the file child.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use blockwire_core::block::contract::{STATE_HOLE, STATE_ZERO};
use blockwire_core::qcow2::chain::{ChainGuard, DEFAULT_MAX_DEPTH};
use blockwire_core::qcow2::layout::MAX_L1_BYTES;
use blockwire_core::qcow2::{
    Alloc, Config, HeaderArea, Inflater, Load, MapResult, Mapping, Need, Plan, Qcow2, Qcow2Error,
    Source, Step,
};
use tracing::error;

use crate::block::io::Io;
use crate::block::node::{
    Child, Driver, DriverInfo, Node, Status, StoredBitmap, Zeroes, invalid, lock,
};

/// Magic of a qcow2 image, for probing.
pub const MAGIC: &[u8; 4] = b"QFI\xfb";

/// QEMU's upper bound for the L2 cache when no size is given
/// (`DEFAULT_L2_CACHE_MAX_SIZE`).
const DEFAULT_L2_CACHE_MAX: u64 = 32 << 20;
/// Slots the default L2 cache never exceeds: the core's cache is searched
/// linearly, so a huge slot count for tiny clusters would cost more per
/// lookup than the misses it saves.
const DEFAULT_L2_SLOTS_MAX: u64 = 512;
/// QEMU's minimums: two L2 tables, four refcount blocks.
const MIN_L2_SLOTS: u64 = 2;
const MIN_REFBLOCK_SLOTS: u64 = 4;
/// Blocks in a status answer before it stops (the caller asks again).
const STATUS_RUNS: usize = 1024;

/// The cache sizes of `BlockdevOptionsQcow2` in bytes (`cache-size`,
/// `l2-cache-size`, `refcount-cache-size`), as given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheSizes {
    pub total: Option<u64>,
    pub l2: Option<u64>,
    pub refcount: Option<u64>,
}

/// How an image is opened.
#[derive(Clone, Copy, Debug, Default)]
pub struct Qcow2Open {
    pub read_only: bool,
    pub cache: CacheSizes,
    /// `pass-discard-request`: clusters freed by a discard or an unmapping
    /// write-zeroes are discarded in the file too.
    pub pass_discard: bool,
}

/// Where the backing node comes from (`backing` of `BlockdevOptionsQcow2`).
pub enum BackingChoice {
    /// Absent: the one the image names, if any.
    FromImage,
    /// `null`: none, whatever the image says.
    None,
}

/// An image whose tables are loaded, before its backing node is known.
pub struct Opened {
    q: Qcow2<Vec<u64>>,
    how: Qcow2Open,
    metadata_preallocation: bool,
    bitmaps: Vec<StoredBitmap>,
}

impl Opened {
    /// The backing file name recorded in the image.
    pub fn backing_name(&self) -> Option<String> {
        self.q
            .backing_name()
            .map(|n| String::from_utf8_lossy(n).into_owned())
    }

    /// The backing format recorded in the image (empty: not recorded).
    pub fn backing_format(&self) -> String {
        String::from_utf8_lossy(self.q.backing_format()).into_owned()
    }
}

/// A core error on a request: the errno the block layer gives it, the
/// message in the log (the client only sees the errno).
fn qerr(e: Qcow2Error) -> io::Error {
    if matches!(
        e.block_error(),
        blockwire_core::block::contract::BlockError::Io(_)
    ) {
        error!("{e}");
    }
    io::Error::from_raw_os_error(e.block_error().nbd_errno() as i32)
}

/// Reads `buf` from `node` at `off`; what lies past the node's end reads
/// as zeroes. Returns the bytes that were inside.
async fn read_clamped(node: &Node, off: u64, buf: &mut [u8]) -> io::Result<usize> {
    let size = node.size();
    if off >= size {
        buf.fill(0);
        return Ok(0);
    }
    let n = ((size - off) as usize).min(buf.len());
    node.read(off, &mut buf[..n]).wait().await?;
    buf[n..].fill(0);
    Ok(n)
}

fn cache_slots(q_cluster: u64, l2_tables: u64, c: CacheSizes) -> io::Result<(usize, usize)> {
    let per = |bytes: u64| bytes / q_cluster;
    let (l2, rb) = match (c.total, c.l2, c.refcount) {
        (Some(_), Some(_), Some(_)) => {
            return Err(invalid(
                "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time",
            ));
        }
        (Some(t), Some(l), None) => {
            if l > t {
                return Err(invalid("l2-cache-size may not exceed cache-size"));
            }
            (per(l), per(t - l))
        }
        (Some(t), None, Some(r)) => {
            if r > t {
                return Err(invalid("refcount-cache-size may not exceed cache-size"));
            }
            (per(t - r), per(r))
        }
        (Some(t), None, None) => {
            // QEMU gives the L2 cache what covers the image, the rest to
            // refcounts.
            let l2 = per(t).saturating_sub(MIN_REFBLOCK_SLOTS).min(l2_tables);
            (l2, per(t) - l2)
        }
        (None, l, r) => {
            let l2 = match l {
                Some(l) => per(l),
                None => l2_tables
                    .min(per(DEFAULT_L2_CACHE_MAX))
                    .min(DEFAULT_L2_SLOTS_MAX),
            };
            (l2, r.map(per).unwrap_or(l2 / 4))
        }
    };
    Ok((
        l2.max(MIN_L2_SLOTS) as usize,
        rb.max(MIN_REFBLOCK_SLOTS) as usize,
    ))
}

/// Opens the image on `file`: header, then the L1, refcount and snapshot
/// tables, with every hostile-image check the core makes.
pub async fn open_image(file: &Node, how: Qcow2Open) -> io::Result<Opened> {
    let name = file.filename();
    let bad = |e: Qcow2Error| invalid(format!("Could not open '{name}': {e}"));
    let size = file.size();
    let mut first = vec![0u8; 4096.min(size) as usize];
    file.read(0, &mut first).wait().await?;
    let need = HeaderArea::needed_len(&first, size).map_err(bad)?;
    let mut hdr = vec![0u8; need.min(size) as usize];
    file.read(0, &mut hdr).wait().await?;
    let area = HeaderArea::parse(&hdr).map_err(bad)?;
    let lay = blockwire_core::qcow2::layout::Layout::new(&area.header);
    let cluster = lay.cluster_size();
    let l2_tables = area.header.size.div_ceil(cluster * lay.l2_entries());
    let (l2_slots, refblock_slots) = cache_slots(cluster, l2_tables, how.cache)?;
    let cfg = Config {
        read_only: how.read_only,
        l2_slots,
        refblock_slots,
        max_l1_bytes: MAX_L1_BYTES,
        ..Config::default()
    };
    let words = Qcow2::words_needed(&area, &cfg).map_err(bad)?;
    let mut q = Qcow2::open(area, size, &cfg, vec![0u64; words]).map_err(bad)?;
    while let Some(load) = q.open_need() {
        let mut buf = vec![0u8; load.len as usize];
        let n = read_clamped(file, load.offset, &mut buf).await?;
        q.install(load, &buf[..n]).map_err(bad)?;
    }
    let metadata_preallocation = detect_metadata_preallocation(file, &q).await?;
    let bitmaps = load_bitmaps(file, &q, &bad).await?;
    if !how.read_only {
        mark_in_use(file, &mut q, &bitmaps).await?;
    }
    Ok(Opened {
        q,
        how,
        metadata_preallocation,
        bitmaps,
    })
}

/// The image's persistent dirty bitmaps (the bitmaps extension, trusted
/// only while its autoclear bit is set, as the specification says), with
/// their dirty runs. Bitmaps marked in use (inconsistent) or with extra
/// data they do not declare compatible are left out with a warning, as
/// QEMU refuses to use them. A corrupt directory or table refuses the
/// image, as QEMU's open does.
async fn load_bitmaps(
    file: &Node,
    q: &Qcow2<Vec<u64>>,
    bad: &(dyn Fn(Qcow2Error) -> io::Error + Sync),
) -> io::Result<Vec<StoredBitmap>> {
    use blockwire_core::qcow2::bitmaps::{self, Directory, TableEntry};
    use blockwire_core::qcow2::header::autoclear;
    let area = q.header_area();
    let Some(ext) = area.bitmaps else {
        return Ok(Vec::new());
    };
    if area.header.autoclear_features & autoclear::BITMAPS == 0
        || ext.directory_size > bitmaps::MAX_DIRECTORY_SIZE
    {
        return Ok(Vec::new());
    }
    let mut dir = vec![0u8; ext.directory_size as usize];
    read_clamped(file, ext.directory_offset, &mut dir).await?;
    let size = q.size();
    let cb = q.layout().cluster_bits;
    let d = Directory::parse(&dir, ext.nb_bitmaps, size, cb).map_err(bad)?;
    let mut out = Vec::new();
    let mut data = vec![0u8; 1 << cb];
    for e in d.entries(size, cb) {
        let name = String::from_utf8_lossy(e.name).into_owned();
        if !e.usable() {
            tracing::warn!(
                "{}: stored dirty bitmap {name:?} is inconsistent (in use) or has unknown extra data: not loaded",
                file.filename()
            );
            out.push(StoredBitmap {
                name,
                granularity: 1u32 << e.granularity_bits.min(31),
                disabled: true,
                dirty: Vec::new(),
                inconsistent: true,
            });
            continue;
        }
        let mut table = vec![0u8; e.table_size as usize * 8];
        read_clamped(file, e.table_offset, &mut table).await?;
        let mut dirty: Vec<(u64, u64)> = Vec::new();
        for (i, t) in table.chunks_exact(8).enumerate() {
            let e64 = u64::from_be_bytes(t.try_into().expect("8 bytes"));
            let te = bitmaps::decode_table_entry(e64, cb).map_err(bad)?;
            data.fill(0);
            if let TableEntry::At(off) = te {
                read_clamped(file, off, &mut data).await?;
            }
            bitmaps::for_each_dirty(
                te,
                &data,
                i as u64,
                cb,
                e.granularity_bits,
                size,
                &mut |o, l| match dirty.last_mut() {
                    Some(last) if last.0 + last.1 == o => last.1 += l,
                    _ => dirty.push((o, l)),
                },
            );
        }
        out.push(StoredBitmap {
            name,
            granularity: 1u32 << e.granularity_bits.min(31),
            disabled: e.flags & bitmaps::FLAG_AUTO == 0,
            dirty,
            inconsistent: false,
        });
    }
    Ok(out)
}

/// Opening to write, as QEMU's `qcow2_load_dirty_bitmaps` does: every
/// loaded bitmap is marked `in_use` in the directory, in place and durably
/// before any write, so that a crash before close leaves them marked
/// inconsistent rather than silently stale; the driver stores them at
/// close. The bitmaps autoclear bit then stays set.
async fn mark_in_use(
    file: &Node,
    q: &mut Qcow2<Vec<u64>>,
    loaded: &[StoredBitmap],
) -> io::Result<()> {
    use blockwire_core::qcow2::bitmaps::{self, Directory};
    let Some(ext) = q.header_area().bitmaps else {
        return Ok(());
    };
    if !q.bitmaps_consistent() || loaded.is_empty() {
        return Ok(());
    }
    let mut dir = vec![0u8; ext.directory_size as usize];
    read_clamped(file, ext.directory_offset, &mut dir).await?;
    let (size, cb) = (q.size(), q.layout().cluster_bits);
    let d = Directory::parse(&dir, ext.nb_bitmaps, size, cb)
        .map_err(|e| invalid(format!("{}: {e}", file.filename())))?;
    for e in d.entries(size, cb) {
        if e.usable() {
            let f = (e.flags | bitmaps::FLAG_IN_USE).to_be_bytes();
            file.write(e.flags_host_offset(ext.directory_offset), &f, false)
                .wait()
                .await?;
        }
    }
    file.flush().wait().await?;
    q.track_bitmaps(true);
    Ok(())
}

/// Dirty runs, sorted, as the core's encoder asks for them.
struct Runs<'a>(&'a [(u64, u64)]);

impl blockwire_core::qcow2::bitmaps::DirtySource for Runs<'_> {
    fn for_each_dirty(&self, offset: u64, end: u64, f: &mut dyn FnMut(u64, u64)) {
        let i = self.0.partition_point(|&(o, l)| o + l <= offset);
        for &(o, l) in &self.0[i..] {
            if o >= end {
                break;
            }
            f(o, l);
        }
    }
}

/// QEMU's `qcow2_detect_metadata_preallocation`: the image has clearly
/// more clusters in use (refcount above 0) than the file has storage
/// allocated, so its data clusters may be holes in the file. Only then
/// does QEMU's block status ask the file whether a data cluster reads as
/// zeroes (`BDRV_BLOCK_RECURSE`); block status follows it exactly.
async fn detect_metadata_preallocation(file: &Node, q: &Qcow2<Vec<u64>>) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    if !matches!(file.driver_name(), "file" | "host_device") {
        return Ok(false);
    }
    let Ok(meta) = std::fs::metadata(file.filename()) else {
        return Ok(false);
    };
    let lay = q.layout();
    let c = lay.cluster_size();
    let real_clusters = meta.blocks() * 512 / c;
    let threshold = (real_clusters * 10 / 9).max(real_clusters + 2);
    let end_cluster = file.size().div_ceil(c);
    let h = &q.header_area().header;
    let per_block = 1u64 << lay.refblock_bits();
    let mut table = vec![0u8; h.refcount_table_clusters as usize * c as usize];
    read_clamped(file, h.refcount_table_offset, &mut table).await?;
    let mut block = vec![0u8; c as usize];
    let mut words = vec![0u64; c as usize / 8];
    let mut count = 0u64;
    for (ti, e) in table.chunks_exact(8).enumerate() {
        let first = ti as u64 * per_block;
        if first >= end_cluster || count >= threshold {
            break;
        }
        let off = u64::from_be_bytes(e.try_into().expect("8 bytes")) & !0x1ff;
        if off == 0 {
            continue;
        }
        read_clamped(file, off, &mut block).await?;
        for (w, b) in words.iter_mut().zip(block.chunks_exact(8)) {
            *w = u64::from_be_bytes(b.try_into().expect("8 bytes"));
        }
        for i in 0..per_block.min(end_cluster - first) {
            count += u64::from(lay.refcount_get(&words, i) != 0);
            if count >= threshold {
                break;
            }
        }
    }
    Ok(count >= threshold)
}

/// Whether the first bytes of `node` are a qcow2 header's magic (what
/// qemu-nbd's probing looks at, without `-f`).
pub async fn probe(node: &Node) -> io::Result<bool> {
    if node.size() < 4 {
        return Ok(false);
    }
    let mut m = [0u8; 4];
    node.read(0, &mut m).wait().await?;
    Ok(&m == MAGIC)
}

fn file_id(p: &Path) -> io::Result<u128> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p)?;
    Ok(((m.dev() as u128) << 64) | m.ino() as u128)
}

/// Resolves a backing file name as QEMU does: absolute as it is, relative
/// to the directory of the image that names it. Only images that are
/// files have a directory.
pub fn resolve_backing(image: &Node, name: &str) -> io::Result<PathBuf> {
    if name.starts_with("json:") {
        return Err(invalid(format!(
            "backing file name '{name}' of '{}': json: backing names are not supported",
            image.filename()
        )));
    }
    let p = Path::new(name);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    if !matches!(image.driver_name(), "file" | "host_device") {
        return Err(invalid(format!(
            "Cannot use relative backing file names for '{}'",
            image.filename()
        )));
    }
    let dir = Path::new(&image.filename())
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    Ok(dir.join(p))
}

/// Walks the chain below `top` by file names before any of it is opened:
/// a chain that loops or runs deeper than the core's limit is refused
/// here, so that opening it (one node per layer, each opening the next)
/// never recurses without end. Layers that are not qcow2 end the walk.
pub fn check_chain(top: &Path, first: &Path) -> io::Result<()> {
    let mut ids = [0u128; DEFAULT_MAX_DEPTH];
    let mut guard = ChainGuard::new(&mut ids);
    let refuse = |e| invalid(format!("{}: {e}", top.display()));
    guard.enter(file_id(top)?).map_err(refuse)?;
    let mut path = first.to_path_buf();
    loop {
        let id = file_id(&path).map_err(|e| {
            invalid(format!(
                "Could not open backing file '{}': {e}",
                path.display()
            ))
        })?;
        guard.enter(id).map_err(refuse)?;
        let Some(next) = backing_of(&path)? else {
            return Ok(());
        };
        let n = Path::new(&next);
        path = if n.is_absolute() {
            n.to_path_buf()
        } else {
            path.parent().unwrap_or(Path::new("")).join(n)
        };
    }
}

/// The backing name a file on disk records, if it is a qcow2 image that
/// names one (a header that does not parse names none: opening that layer
/// will report why).
fn backing_of(path: &Path) -> io::Result<Option<String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; 4096.min(len) as usize];
    f.read_exact(&mut buf)?;
    if !buf.starts_with(MAGIC) {
        return Ok(None);
    }
    let Ok(need) = HeaderArea::needed_len(&buf, len) else {
        return Ok(None);
    };
    let mut hdr = vec![0u8; need.min(len) as usize];
    use std::os::unix::fs::FileExt;
    f.read_exact_at(&mut hdr, 0)?;
    Ok(HeaderArea::parse(&hdr).ok().and_then(|a| {
        a.has_backing()
            .then(|| String::from_utf8_lossy(a.backing_name.as_bytes()).into_owned())
    }))
}

/// The `qcow2` driver.
pub struct Qcow2Driver {
    file: Arc<Node>,
    backing: Option<Arc<Node>>,
    image: Mutex<Qcow2<Vec<u64>>>,
    inflater: Mutex<Box<Inflater>>,
    requests: tokio::sync::RwLock<()>,
    size: u64,
    cluster: u64,
    read_only: bool,
    pass_discard: bool,
    /// Data clusters may be file holes: block status asks the file.
    metadata_preallocation: bool,
    /// The image's bitmaps until the node takes them.
    bitmaps: Mutex<Vec<StoredBitmap>>,
    /// Names of stored bitmaps that were inconsistent at open: kept in the
    /// directory as they are (QEMU keeps them until removed).
    kept: Vec<String>,
}

/// What a write-like request plans.
#[derive(Clone, Copy)]
enum Change {
    Write,
    Zeroes { unmap: bool },
    Discard,
}

/// Whether a shared-lock pass got through, or must flush first.
enum Pass {
    Done,
    Flush,
}

impl Qcow2Driver {
    pub fn new(file: Arc<Node>, image: Opened, backing: Option<Arc<Node>>) -> Self {
        let q = image.q;
        Self {
            size: q.size(),
            cluster: q.layout().cluster_size(),
            read_only: q.read_only(),
            pass_discard: image.how.pass_discard,
            metadata_preallocation: image.metadata_preallocation,
            kept: image
                .bitmaps
                .iter()
                .filter(|b| b.inconsistent)
                .map(|b| b.name.clone())
                .collect(),
            bitmaps: Mutex::new(image.bitmaps),
            file,
            backing,
            image: Mutex::new(q),
            inflater: Mutex::new(Box::new(Inflater::new())),
            requests: tokio::sync::RwLock::new(()),
        }
    }

    async fn load(&self, l: Load) -> io::Result<()> {
        let mut buf = vec![0u8; l.len as usize];
        let n = read_clamped(&self.file, l.offset, &mut buf).await?;
        // A load that crossed a flush is ignored by the core; the caller
        // maps again and is asked again.
        lock(&self.image).install(l, &buf[..n]).map_err(qerr)
    }

    /// Guest bytes `[guest, guest + dst.len())` of a compressed cluster.
    async fn read_compressed(
        &self,
        host: u64,
        len: u64,
        cluster_start: u64,
        guest: u64,
        dst: &mut [u8],
    ) -> io::Result<()> {
        let mut input = vec![0u8; len as usize];
        read_clamped(&self.file, host, &mut input).await?;
        let mut out = vec![0u8; self.cluster as usize];
        lock(&self.inflater)
            .inflate_cluster(&input, &mut out, cluster_start)
            .map_err(qerr)?;
        let s = (guest - cluster_start) as usize;
        dst.copy_from_slice(&out[s..s + dst.len()]);
        Ok(())
    }

    /// The backing node's bytes at the same guest offset: zeroes past its
    /// end or without one.
    async fn read_backing(&self, guest: u64, dst: &mut [u8]) -> io::Result<()> {
        match &self.backing {
            Some(b) => read_clamped(b, guest, dst).await.map(|_| ()),
            None => {
                dst.fill(0);
                Ok(())
            }
        }
    }

    /// Reads what it can under the shared lock; `pos` advances.
    async fn read_pass(&self, offset: u64, buf: &mut [u8], pos: &mut usize) -> io::Result<Pass> {
        while *pos < buf.len() {
            let g = offset + *pos as u64;
            let m = lock(&self.image)
                .map(g, (buf.len() - *pos) as u64)
                .map_err(qerr)?;
            let r = match m {
                MapResult::Need(Need::Load(l)) => {
                    self.load(l).await?;
                    continue;
                }
                MapResult::Need(Need::Flush) => return Ok(Pass::Flush),
                MapResult::Run(r) => r,
            };
            let dst = &mut buf[*pos..*pos + r.length as usize];
            match r.mapping {
                Mapping::Data { host } => {
                    read_clamped(&self.file, host, dst).await?;
                }
                Mapping::Zero => dst.fill(0),
                Mapping::Unallocated => self.read_backing(g, dst).await?,
                Mapping::Compressed {
                    host,
                    len,
                    cluster_start,
                } => {
                    self.read_compressed(host, len, cluster_start, g, dst)
                        .await?
                }
            }
            *pos += r.length as usize;
        }
        Ok(Pass::Done)
    }

    /// Block status under the shared lock.
    async fn status_pass(
        &self,
        offset: u64,
        len: u64,
        out: &mut Vec<Status>,
        pos: &mut u64,
    ) -> io::Result<Pass> {
        let start = out.len();
        while *pos < len && out.len() - start < STATUS_RUNS {
            let g = offset + *pos;
            let m = lock(&self.image).map(g, len - *pos).map_err(qerr)?;
            let r = match m {
                MapResult::Need(Need::Load(l)) => {
                    self.load(l).await?;
                    continue;
                }
                MapResult::Need(Need::Flush) => return Ok(Pass::Flush),
                MapResult::Run(r) => r,
            };
            let done = match r.mapping {
                Mapping::Data { .. } | Mapping::Compressed { .. }
                    if !self.metadata_preallocation =>
                {
                    out.push(Status::data(r.length));
                    r.length
                }
                Mapping::Data { host } => {
                    // As QEMU's block layer does for data clusters: ask the
                    // file whether the host range reads as zeroes (a
                    // preallocated cluster over a hole), past its end it
                    // does.
                    let conv = |s: Status| Status {
                        len: s.len,
                        flags: s.flags & STATE_ZERO,
                        depth: 1,
                    };
                    let past = Status {
                        len: 0,
                        flags: STATE_ZERO,
                        depth: 1,
                    };
                    self.below(&self.file, host, r.length, out, conv, past)
                        .await?
                }
                Mapping::Compressed { .. } => {
                    out.push(Status::data(r.length));
                    r.length
                }
                Mapping::Zero => {
                    out.push(Status {
                        len: r.length,
                        flags: STATE_HOLE | STATE_ZERO,
                        depth: 1,
                    });
                    r.length
                }
                Mapping::Unallocated => match &self.backing {
                    None => {
                        out.push(Status {
                            len: r.length,
                            flags: STATE_HOLE | STATE_ZERO,
                            depth: 0,
                        });
                        r.length
                    }
                    // The backing node's answer, one layer deeper.
                    Some(b) => {
                        let conv = |s: Status| Status {
                            depth: if s.depth == 0 { 0 } else { s.depth + 1 },
                            ..s
                        };
                        // Past the end of a shorter backing node QEMU
                        // counts the range as allocated in that node (it
                        // reads as zeroes from there), one layer down.
                        let past = Status {
                            len: 0,
                            flags: STATE_HOLE | STATE_ZERO,
                            depth: 2,
                        };
                        self.below(b, g, r.length, out, conv, past).await?
                    }
                },
            };
            *pos += done;
            if done < r.length {
                // The layer below stopped early: so does this answer.
                break;
            }
        }
        Ok(Pass::Done)
    }

    /// Status of `[off, off + len)` of `node`, converted by `conv`; what
    /// lies past the node's end is `past`. Returns the bytes answered
    /// (less than `len` when the node stopped early).
    async fn below(
        &self,
        node: &Node,
        off: u64,
        len: u64,
        out: &mut Vec<Status>,
        conv: impl Fn(Status) -> Status,
        past: Status,
    ) -> io::Result<u64> {
        let inside = node.size().saturating_sub(off).min(len);
        let mut got = 0;
        if inside > 0 {
            let mut v = Vec::new();
            node.block_status(off, inside, &mut v).wait().await?;
            for s in v {
                let s = Status {
                    len: s.len.min(inside - got),
                    ..s
                };
                if s.len == 0 {
                    break;
                }
                got += s.len;
                out.push(conv(s));
            }
            if got == 0 {
                // A node that answers nothing: call it data.
                out.push(conv(Status::data(inside)));
                got = inside;
            }
            if got < inside {
                return Ok(got);
            }
        }
        if got < len {
            out.push(Status {
                len: len - got,
                ..past
            });
        }
        Ok(len)
    }

    /// Grows the file to hold `end` (to whole clusters, what QEMU's
    /// allocation leaves behind too): the file node refuses writes past
    /// its end.
    async fn grow(&self, end: u64) -> io::Result<()> {
        if end > self.file.size() {
            if self.file.driver_name() == "host_device" {
                // A device does not grow: the image is full.
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let end = end.div_ceil(self.cluster) * self.cluster;
            self.file.resize(end).wait().await?;
        }
        Ok(())
    }

    /// `n` contiguous new clusters for bitmap metadata; their refcounts
    /// are durable after the next flush plan.
    async fn alloc(&self, n: u64) -> io::Result<u64> {
        loop {
            let mut steps = Vec::new();
            let a = lock(&self.image)
                .alloc_clusters(n, &mut |s| steps.push(s))
                .map_err(qerr)?;
            match a {
                Alloc::At(h) => return Ok(h),
                Alloc::Need(Need::Load(l)) => self.load(l).await?,
                Alloc::Need(Need::Flush) => self.flush_locked().await?,
                Alloc::Planned(p) => match self.run_steps(&steps, &[]).await {
                    Ok(()) => lock(&self.image).commit(p.ticket).map_err(qerr)?,
                    Err(e) => {
                        lock(&self.image).abort(p.ticket);
                        return Err(e);
                    }
                },
            }
        }
    }

    /// Writes `b` at `host` (newly allocated clusters).
    async fn put(&self, host: u64, b: &[u8]) -> io::Result<()> {
        self.grow(host + b.len() as u64).await?;
        self.file.write(host, b, false).wait().await
    }

    /// Drops the clusters of `[host, host + len)` after the next flush.
    async fn free(&self, host: u64, len: u64) -> io::Result<()> {
        let len = len.div_ceil(self.cluster).max(1) * self.cluster;
        loop {
            let need = lock(&self.image).free_clusters(host, len).map_err(qerr)?;
            match need {
                None => return Ok(()),
                Some(Need::Flush) => self.flush_locked().await?,
                Some(Need::Load(l)) => self.load(l).await?,
            }
        }
    }

    /// Stores `list` as the image's persistent bitmaps, in QEMU's order
    /// (`qcow2_store_persistent_dirty_bitmaps`): data clusters, tables and
    /// a new directory written to new clusters and made durable with
    /// their refcounts; then the header points at the new directory; then
    /// what the old directory used is freed. A crash leaves the old or the
    /// new set, with leaked clusters at worst. Entries that were
    /// inconsistent at open are carried over as they are.
    async fn store_locked(&self, list: &[StoredBitmap]) -> io::Result<()> {
        use blockwire_core::qcow2::bitmaps::{self, Directory, TableEntry};
        use blockwire_core::qcow2::header::BitmapsExt;
        let (size, cb, old, consistent, version) = {
            let q = lock(&self.image);
            let a = q.header_area();
            (
                q.size(),
                q.layout().cluster_bits,
                a.bitmaps,
                q.bitmaps_consistent(),
                a.header.version,
            )
        };
        if old.is_none() && list.is_empty() {
            return Ok(());
        }
        if version < 3 {
            return Err(invalid("Cannot store dirty bitmaps in qcow2 v2 files"));
        }
        let c = self.cluster;
        let bad = |e: Qcow2Error| invalid(format!("{}: {e}", self.file.filename()));
        // The old directory, trusted only while the autoclear bit says so
        // (otherwise its clusters are leaked, as QEMU leaves them).
        let old_dir = match old {
            Some(ext) if consistent => {
                let mut d = vec![0u8; ext.directory_size as usize];
                read_clamped(&self.file, ext.directory_offset, &mut d).await?;
                Directory::parse(&d, ext.nb_bitmaps, size, cb).map_err(bad)?;
                Some((ext, d))
            }
            _ => None,
        };
        let mut dir = Vec::new();
        let mut nb = 0u32;
        if let Some((ext, d)) = &old_dir {
            let od = Directory::parse(d, ext.nb_bitmaps, size, cb).map_err(bad)?;
            for e in od.entries(size, cb) {
                let name = String::from_utf8_lossy(e.name);
                if self.kept.iter().any(|k| *k == name) && !list.iter().any(|b| b.name == name) {
                    dir.extend_from_slice(e.raw);
                    nb += 1;
                }
            }
        }
        let mut data = vec![0u8; c as usize];
        for b in list {
            let gb = b.granularity.trailing_zeros() as u8;
            let n = bitmaps::table_entries(size, gb, cb);
            let mut table = vec![0u8; (n * 8).div_ceil(c).max(1) as usize * c as usize];
            for i in 0..n {
                if bitmaps::encode_cluster(&Runs(&b.dirty), i, cb, gb, size, &mut data) {
                    let h = self.alloc(1).await?;
                    self.put(h, &data).await?;
                    table[i as usize * 8..i as usize * 8 + 8].copy_from_slice(&h.to_be_bytes());
                }
            }
            let th = self.alloc(table.len() as u64 / c).await?;
            self.put(th, &table).await?;
            let flags = if b.disabled { 0 } else { bitmaps::FLAG_AUTO };
            let mut ent = vec![0u8; bitmaps::entry_len(b.name.len(), 0)];
            bitmaps::emit_entry(&mut ent, th, n as u32, flags, gb, b.name.as_bytes())
                .map_err(bad)?;
            dir.extend_from_slice(&ent);
            nb += 1;
        }
        let ext = if nb == 0 {
            None
        } else {
            let len = dir.len() as u64;
            dir.resize((len.div_ceil(c) * c) as usize, 0);
            let dh = self.alloc(dir.len() as u64 / c).await?;
            self.put(dh, &dir).await?;
            Some(BitmapsExt {
                nb_bitmaps: nb,
                directory_size: len,
                directory_offset: dh,
            })
        };
        // New clusters and their refcounts durable before anything points
        // at them.
        self.flush_locked().await?;
        self.file.flush().wait().await?;
        {
            let mut q = lock(&self.image);
            q.set_bitmaps_extension(ext).map_err(qerr)?;
            q.track_bitmaps(true);
        }
        self.flush_locked().await?;
        self.file.flush().wait().await?;
        if let Some((ext, d)) = &old_dir {
            let od = Directory::parse(d, ext.nb_bitmaps, size, cb).map_err(bad)?;
            let mut frees = Vec::new();
            for e in od.entries(size, cb) {
                let name = String::from_utf8_lossy(e.name);
                if self.kept.iter().any(|k| *k == name) && !list.iter().any(|b| b.name == name) {
                    continue;
                }
                let mut t = vec![0u8; e.table_size as usize * 8];
                read_clamped(&self.file, e.table_offset, &mut t).await?;
                for x in t.chunks_exact(8) {
                    let v = u64::from_be_bytes(x.try_into().expect("8 bytes"));
                    if let Ok(TableEntry::At(h)) = bitmaps::decode_table_entry(v, cb) {
                        frees.push((h, c));
                    }
                }
                frees.push((e.table_offset, e.table_size as u64 * 8));
            }
            frees.push((ext.directory_offset, ext.directory_size));
            for (h, l) in frees {
                self.free(h, l).await?;
            }
            self.flush_locked().await?;
        }
        Ok(())
    }

    /// QEMU's `qcow2_co_remove_persistent_dirty_bitmap`: a new directory
    /// without `name` (the other entries copied as they are, in-use flags
    /// and all), made durable, pointed at by the header, then the
    /// removed bitmap's clusters and the old directory freed.
    async fn remove_locked(&self, name: &str) -> io::Result<()> {
        use blockwire_core::qcow2::bitmaps::{self, Directory, TableEntry};
        use blockwire_core::qcow2::header::BitmapsExt;
        let (size, cb, old, consistent) = {
            let q = lock(&self.image);
            (
                q.size(),
                q.layout().cluster_bits,
                q.header_area().bitmaps,
                q.bitmaps_consistent(),
            )
        };
        let Some(ext) = old.filter(|_| consistent) else {
            return Ok(());
        };
        let c = self.cluster;
        let bad = |e: Qcow2Error| invalid(format!("{}: {e}", self.file.filename()));
        let mut d = vec![0u8; ext.directory_size as usize];
        read_clamped(&self.file, ext.directory_offset, &mut d).await?;
        let od = Directory::parse(&d, ext.nb_bitmaps, size, cb).map_err(bad)?;
        let Some(gone) = od.find(name.as_bytes(), size, cb) else {
            return Ok(());
        };
        let mut dir = Vec::new();
        for e in od.entries(size, cb) {
            if e.at != gone.at {
                dir.extend_from_slice(e.raw);
            }
        }
        let new = if dir.is_empty() {
            None
        } else {
            let len = dir.len() as u64;
            dir.resize((len.div_ceil(c) * c) as usize, 0);
            let dh = self.alloc(dir.len() as u64 / c).await?;
            self.put(dh, &dir).await?;
            Some(BitmapsExt {
                nb_bitmaps: ext.nb_bitmaps - 1,
                directory_size: len,
                directory_offset: dh,
            })
        };
        self.flush_locked().await?;
        self.file.flush().wait().await?;
        lock(&self.image).set_bitmaps_extension(new).map_err(qerr)?;
        self.flush_locked().await?;
        self.file.flush().wait().await?;
        let mut t = vec![0u8; gone.table_size as usize * 8];
        read_clamped(&self.file, gone.table_offset, &mut t).await?;
        for x in t.chunks_exact(8) {
            let v = u64::from_be_bytes(x.try_into().expect("8 bytes"));
            if let Ok(TableEntry::At(h)) = bitmaps::decode_table_entry(v, cb) {
                self.free(h, c).await?;
            }
        }
        self.free(gone.table_offset, gone.table_size as u64 * 8)
            .await?;
        self.free(ext.directory_offset, ext.directory_size).await?;
        self.flush_locked().await
    }

    /// Carries out one plan's steps in order.
    async fn run_steps(&self, steps: &[Step], payload: &[u8]) -> io::Result<()> {
        // The file node refuses writes past its end: grow it first, to
        // whole clusters (what QEMU's allocation leaves behind too).
        let end = steps
            .iter()
            .map(|s| match *s {
                Step::Data { host, length, .. }
                | Step::Fill { host, length, .. }
                | Step::Meta { host, length, .. } => host + length,
                Step::Flush | Step::Discard { .. } => 0,
            })
            .max()
            .unwrap_or(0);
        self.grow(end).await?;
        for s in steps {
            match *s {
                Step::Data {
                    host,
                    length,
                    buf_offset,
                } => {
                    let b = &payload[buf_offset as usize..(buf_offset + length) as usize];
                    self.file.write(host, b, false).wait().await?;
                }
                Step::Fill {
                    host,
                    guest,
                    length,
                    source,
                } => {
                    let mut b = vec![0u8; length as usize];
                    match source {
                        Source::Zeroes => {}
                        Source::Backing => self.read_backing(guest, &mut b).await?,
                        Source::Host(h) => {
                            read_clamped(&self.file, h, &mut b).await?;
                        }
                        Source::Compressed {
                            host,
                            len,
                            cluster_start,
                        } => {
                            self.read_compressed(host, len, cluster_start, guest, &mut b)
                                .await?
                        }
                    }
                    self.file.write(host, &b, false).wait().await?;
                }
                Step::Meta {
                    host, length, src, ..
                } => {
                    let mut b = vec![0u8; length as usize];
                    lock(&self.image).meta_bytes(&src, &mut b).map_err(qerr)?;
                    self.file.write(host, &b, false).wait().await?;
                }
                Step::Flush => self.file.flush().wait().await?,
                Step::Discard { host, length } => {
                    if self.pass_discard {
                        let size = self.file.size();
                        let l = size.saturating_sub(host).min(length);
                        // Optional: a failure only costs space.
                        if l > 0 {
                            let _ = self.file.discard(host, l).wait().await;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs flush plans until no metadata is dirty. The caller holds the
    /// request lock alone.
    async fn flush_locked(&self) -> io::Result<()> {
        loop {
            let mut steps = Vec::new();
            let plan = lock(&self.image)
                .plan_flush(&mut |s| steps.push(s))
                .map_err(qerr)?;
            match plan {
                Plan::Need(Need::Load(l)) => self.load(l).await?,
                Plan::Need(Need::Flush) => return Err(qerr(Qcow2Error::Protocol)),
                Plan::Planned(p) => {
                    match self.run_steps(&steps, &[]).await {
                        Ok(()) => lock(&self.image).commit(p.ticket).map_err(qerr)?,
                        Err(e) => {
                            lock(&self.image).abort(p.ticket);
                            return Err(e);
                        }
                    }
                    if !lock(&self.image).has_dirty_metadata() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// One write-like request, alone: planned run by run, each run's steps
    /// carried out and then committed (or aborted on failure).
    async fn modify(
        &self,
        offset: u64,
        len: u64,
        payload: &[u8],
        change: Change,
        fua: bool,
    ) -> io::Result<()> {
        let _alone = self.requests.write().await;
        let mut pos = 0u64;
        while pos < len {
            let mut steps = Vec::new();
            let plan = {
                let mut q = lock(&self.image);
                let mut sink = |s| steps.push(s);
                let (o, l) = (offset + pos, len - pos);
                match change {
                    Change::Write => q.plan_write(o, l, &mut sink),
                    Change::Zeroes { unmap } => q.plan_write_zeroes(o, l, unmap, &mut sink),
                    Change::Discard => q.plan_discard(o, l, &mut sink),
                }
                .map_err(qerr)?
            };
            match plan {
                Plan::Need(Need::Load(l)) => self.load(l).await?,
                Plan::Need(Need::Flush) => self.flush_locked().await?,
                Plan::Planned(p) => {
                    let pl = if payload.is_empty() {
                        payload
                    } else {
                        &payload[pos as usize..]
                    };
                    match self.run_steps(&steps, pl).await {
                        Ok(()) => lock(&self.image).commit(p.ticket).map_err(qerr)?,
                        Err(e) => {
                            lock(&self.image).abort(p.ticket);
                            return Err(e);
                        }
                    }
                    pos += p.covered;
                }
            }
        }
        if fua {
            self.flush_locked().await?;
        }
        Ok(())
    }
}

/// Closing a node (`blockdev-del`, the end of the program) writes its
/// dirty metadata back, as QEMU's close does: writes acknowledged but
/// never flushed are kept too. Only when the file child answers at once
/// (a file); otherwise, and on failure, the log says what was lost (the
/// image stays consistent either way).
impl Drop for Qcow2Driver {
    fn drop(&mut self) {
        if self.read_only || !lock(&self.image).has_dirty_metadata() {
            return;
        }
        let mut fut = std::pin::pin!(async {
            let _alone = self.requests.write().await;
            self.flush_locked().await
        });
        match crate::block::io::poll_once(fut.as_mut()) {
            Some(Ok(())) => {}
            Some(Err(e)) => error!(
                "{}: metadata not written back at close: {e}",
                self.file.filename()
            ),
            None => error!(
                "{}: metadata not written back at close: the file child would wait",
                self.file.filename()
            ),
        }
    }
}

impl Driver for Qcow2Driver {
    fn driver_name(&self) -> &'static str {
        "qcow2"
    }

    fn info(&self) -> DriverInfo {
        let f = self.file.info();
        let b = self.backing.as_ref().map(|b| b.info());
        DriverInfo {
            read_only: self.read_only || f.read_only,
            blocking: f.blocking || b.is_some_and(|b| b.blocking),
            // Requests wait for each other (the request lock).
            waits: true,
            // Partial clusters and version 2 images write zeroes.
            fast_zero: false,
            sparse: true,
            // One image state behind every connection.
            multi_conn: true,
            preferred_block: f.preferred_block,
            align: 1,
            max_transfer: 0,
        }
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn children(&self) -> Vec<Child> {
        let mut v = vec![Child {
            role: "file",
            node: self.file.clone(),
        }];
        if let Some(b) = &self.backing {
            v.push(Child {
                role: "backing",
                node: b.clone(),
            });
        }
        v
    }

    fn filename(&self) -> String {
        self.file.filename()
    }

    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> Io<'a, ()> {
        Io::pending(async move {
            let mut pos = 0;
            loop {
                let shared = self.requests.read().await;
                match self.read_pass(offset, buf, &mut pos).await? {
                    Pass::Done => return Ok(()),
                    Pass::Flush => {
                        drop(shared);
                        let _alone = self.requests.write().await;
                        self.flush_locked().await?;
                    }
                }
            }
        })
    }

    fn write<'a>(&'a self, offset: u64, data: &'a [u8], fua: bool) -> Io<'a, ()> {
        Io::pending(self.modify(offset, data.len() as u64, data, Change::Write, fua))
    }

    fn flush(&self) -> Io<'_, ()> {
        Io::pending(async move {
            let _alone = self.requests.write().await;
            self.flush_locked().await
        })
    }

    fn discard(&self, offset: u64, len: u64) -> Io<'_, ()> {
        Io::pending(self.modify(offset, len, &[], Change::Discard, false))
    }

    fn write_zeroes(&self, offset: u64, len: u64, z: Zeroes) -> Io<'_, ()> {
        if z.fast {
            return Io::errno(libc::ENOTSUP);
        }
        Io::pending(self.modify(
            offset,
            len,
            &[],
            Change::Zeroes { unmap: z.may_unmap },
            z.fua,
        ))
    }

    fn stored_bitmaps(&self) -> Vec<StoredBitmap> {
        std::mem::take(&mut *lock(&self.bitmaps))
    }

    /// QEMU 7.2's `qcow2_co_can_store_new_dirty_bitmap` checks.
    fn can_store_bitmap(&self, name: &str, granularity: u32) -> Result<(), String> {
        use blockwire_core::qcow2::bitmaps;
        let q = lock(&self.image);
        if q.header_area().header.version < 3 {
            return Err("Cannot store dirty bitmaps in qcow2 v2 files".into());
        }
        let gb = granularity.trailing_zeros();
        if gb > bitmaps::MAX_GRANULARITY_BITS as u32 {
            return Err(format!(
                "Granularity exceeds maximum ({} bytes)",
                1u64 << bitmaps::MAX_GRANULARITY_BITS
            ));
        }
        if gb < bitmaps::MIN_GRANULARITY_BITS as u32 {
            return Err(format!(
                "Granularity is under minimum ({} bytes)",
                1u64 << bitmaps::MIN_GRANULARITY_BITS
            ));
        }
        // In 128 bits: the limits shifted by the granularity exceed 64.
        let len = self.size as u128;
        if len > (bitmaps::MAX_PHYS_SIZE as u128) << gb
            || len > ((bitmaps::MAX_TABLE_SIZE * self.cluster) as u128) << gb
        {
            return Err(
                "Too much space will be occupied by the bitmap. Use larger granularity".into(),
            );
        }
        if name.len() > bitmaps::MAX_NAME {
            return Err(format!(
                "Name length exceeds maximum ({} characters)",
                bitmaps::MAX_NAME
            ));
        }
        Ok(())
    }

    fn remove_stored_bitmap<'a>(&'a self, name: &'a str) -> Io<'a, ()> {
        if self.read_only {
            return Io::ok(());
        }
        Io::pending(async move {
            let _alone = self.requests.write().await;
            self.remove_locked(name).await
        })
    }

    fn store_bitmaps<'a>(&'a self, list: &'a [StoredBitmap]) -> Io<'a, ()> {
        if self.read_only {
            return Io::ok(());
        }
        Io::pending(async move {
            let _alone = self.requests.write().await;
            self.store_locked(list).await
        })
    }

    fn block_status<'a>(&'a self, offset: u64, len: u64, out: &'a mut Vec<Status>) -> Io<'a, ()> {
        Io::pending(async move {
            let mut pos = 0;
            loop {
                let shared = self.requests.read().await;
                match self.status_pass(offset, len, out, &mut pos).await? {
                    Pass::Done => return Ok(()),
                    Pass::Flush => {
                        drop(shared);
                        let _alone = self.requests.write().await;
                        self.flush_locked().await?;
                    }
                }
            }
        })
    }
}

/// The node for the backing file an image names, as QEMU opens it: the
/// file resolved against the image's directory, read-only, in the format
/// the image records (`qcow2` or `raw`), probed when it records none.
/// The whole chain below is checked for loops and depth first.
pub fn backing_options(
    image: &Node,
    name: &str,
    format: &str,
) -> io::Result<crate::block::options::BlockdevOptions> {
    use crate::block::options::{Aio, BlockdevOptions, BlockdevRef, DriverOptions, OnOffAuto};
    let path = resolve_backing(image, name)?;
    check_chain(Path::new(&image.filename()), &path)?;
    let format = match format {
        "" => {
            let mut m = [0u8; 4];
            let probed = std::fs::File::open(&path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut m))
                .is_ok()
                && &m == MAGIC;
            if probed { "qcow2" } else { "raw" }
        }
        f => f,
    };
    let file = BlockdevOptions::new(DriverOptions::File {
        host_device: false,
        filename: path,
        aio: Aio::Threads,
        locking: OnOffAuto::Off,
    })
    .read_only(true);
    let file = BlockdevRef::Inline(Box::new(file));
    let driver = match format {
        "qcow2" => DriverOptions::Qcow2 {
            file,
            backing: None,
            cache_size: None,
            l2_cache_size: None,
            refcount_cache_size: None,
            pass_discard_request: None,
        },
        "raw" => DriverOptions::Raw {
            file,
            offset: 0,
            size: None,
            // Read-only: nothing to guard.
            probed: false,
        },
        other => {
            return Err(invalid(format!(
                "backing file '{name}' of '{}': format '{other}' is not supported (qcow2 and raw are)",
                image.filename()
            )));
        }
    };
    Ok(BlockdevOptions::new(driver).read_only(true))
}

/// What a `--cow FILE` overlay is after [`prepare_overlay`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlay {
    /// A new, empty image was made.
    Created,
    /// The file already was an overlay of this base: it is kept, with
    /// every write it holds (an overlay survives a restart).
    Reopened,
}

/// Makes `path` a qcow2 overlay of `base` (format `base_format`, size
/// `size`) unless it already is one: an image QEMU opens as it is, with
/// the base as its backing file (by absolute path). Written to a
/// temporary name, flushed and renamed, so a crash never leaves half an
/// image under the name.
pub fn prepare_overlay(
    path: &Path,
    base: &Path,
    base_format: &str,
    size: u64,
) -> io::Result<Overlay> {
    use blockwire_core::qcow2::create::{Create, Options};
    use std::io::Write;
    let ctx = |e: &dyn std::fmt::Display| invalid(format!("{}: {e}", path.display()));
    let base = std::fs::canonicalize(base).map_err(|e| ctx(&e))?;
    let base_name = base.to_string_lossy().into_owned();
    if path.exists() {
        let same_base = backing_of(path)
            .ok()
            .flatten()
            .is_some_and(|b| std::fs::canonicalize(b).is_ok_and(|b| b == base));
        if same_base {
            return Ok(Overlay::Reopened);
        }
    }
    let c = Create::new(&Options {
        size,
        backing_file: base_name.as_bytes(),
        backing_format: base_format.as_bytes(),
        ..Options::default()
    })
    .map_err(|e| ctx(&e))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut f = std::fs::File::create(&tmp).map_err(|e| ctx(&e))?;
    let mut buf = vec![0u8; c.cluster_size() as usize];
    for i in 0..c.clusters() {
        c.cluster(i, &mut buf).map_err(|e| ctx(&e))?;
        f.write_all(&buf).map_err(|e| ctx(&e))?;
    }
    f.sync_all().map_err(|e| ctx(&e))?;
    std::fs::rename(&tmp, path).map_err(|e| ctx(&e))?;
    Ok(Overlay::Created)
}
