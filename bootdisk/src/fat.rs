//! FAT12, FAT16 and FAT32 (Microsoft's FAT specification, 2005), read
//! only: the boot sector's BPB, cluster chains, directories with long
//! (VFAT) names, paths and file contents. The type is decided by the
//! cluster count, as the specification says, never by the label.

use crate::{Disk, Error, u16_at, u32_at};

/// A directory holds at most 65536 entries (the specification's limit),
/// which bounds every directory walk.
const MAX_DIR_BYTES: u64 = 65536 * 32;
/// Path components followed at most.
const MAX_DEPTH: usize = 16;
pub const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_LONG_NAME: u8 = 0x0F;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Fat12,
    Fat16,
    Fat32,
}

/// A directory entry: its name (the long name if it has a valid one,
/// else the 8.3 name; ASCII only, other characters become `?`), where its
/// data starts and how long it is.
#[derive(Clone, Copy)]
pub struct Entry {
    name: [u8; 255],
    name_len: u8,
    pub attr: u8,
    pub cluster: u32,
    pub size: u32,
}

impl Entry {
    pub fn name(&self) -> &[u8] {
        &self.name[..usize::from(self.name_len)]
    }
    pub fn is_dir(&self) -> bool {
        self.attr & ATTR_DIRECTORY != 0
    }
}

/// Where a directory's entries are: the fixed root region of FAT12/16 or
/// a cluster chain.
#[derive(Clone, Copy, Debug)]
enum Dir {
    Fixed { offset: u64, len: u64 },
    Chain(u32),
}

pub struct Fat {
    kind: Kind,
    /// Absolute byte offsets on the disk.
    fat_at: u64,
    data_at: u64,
    root: Dir,
    cluster_size: u64,
    /// Highest valid cluster number + 1 (clusters are numbered from 2).
    cluster_end: u32,
    /// One sector of the FAT, so walking a chain costs one read per 128
    /// to 341 clusters rather than one per cluster.
    cache: [u8; 512],
    cache_at: u64,
    /// The last (chain start, cluster index, cluster) a read reached, so
    /// reading a file or directory front to back walks its chain once.
    cursor: (u32, u64, u32),
}

impl Fat {
    /// Open the FAT file system in the `len` bytes at `offset`.
    pub fn open<D: Disk>(disk: &mut D, offset: u64, len: u64) -> Result<Self, Error<D::Error>> {
        if len < 512 || offset.checked_add(len).is_none_or(|e| e > disk.size()) {
            return Err(Error::NotFat("partition smaller than a boot sector"));
        }
        let mut bs = [0u8; 512];
        disk.read(offset, &mut bs)?;
        if bs[510] != 0x55 || bs[511] != 0xAA {
            return Err(Error::NotFat("no 0x55AA boot sector signature"));
        }
        let bytes_per_sector = u64::from(u16_at(&bs, 11));
        let sectors_per_cluster = u64::from(bs[13]);
        let reserved = u64::from(u16_at(&bs, 14));
        let fats = u64::from(bs[16]);
        let root_entries = u64::from(u16_at(&bs, 17));
        let total = match u16_at(&bs, 19) {
            0 => u64::from(u32_at(&bs, 32)),
            n => u64::from(n),
        };
        let fat_sectors = match u16_at(&bs, 22) {
            0 => u64::from(u32_at(&bs, 36)),
            n => u64::from(n),
        };
        if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
            return Err(Error::NotFat("bytes per sector not 512..4096"));
        }
        if sectors_per_cluster == 0 || !sectors_per_cluster.is_power_of_two() {
            return Err(Error::NotFat("sectors per cluster not a power of two"));
        }
        if reserved == 0 || fats == 0 || fat_sectors == 0 || total == 0 {
            return Err(Error::NotFat(
                "zero reserved sectors, FATs, FAT size or total size",
            ));
        }
        let cluster_size = bytes_per_sector * sectors_per_cluster;
        if cluster_size > 64 * 1024 {
            return Err(Error::NotFat("clusters larger than 64 KiB"));
        }
        if total * bytes_per_sector > len {
            return Err(Error::NotFat("file system larger than its partition"));
        }
        let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
        let meta = reserved + fats * fat_sectors + root_sectors;
        if meta >= total {
            return Err(Error::NotFat("no data region"));
        }
        let clusters = (total - meta) / sectors_per_cluster;
        let kind = if clusters < 4085 {
            Kind::Fat12
        } else if clusters < 65525 {
            Kind::Fat16
        } else {
            Kind::Fat32
        };
        if clusters == 0 || clusters > 0x0FFF_FFF5 {
            return Err(Error::NotFat("cluster count out of range"));
        }
        // The FAT must have an entry for every cluster.
        let entry_bits = match kind {
            Kind::Fat12 => 12,
            Kind::Fat16 => 16,
            Kind::Fat32 => 32,
        };
        if (clusters + 2) * entry_bits > fat_sectors * bytes_per_sector * 8 {
            return Err(Error::NotFat("FAT too small for the cluster count"));
        }
        let fat_at = offset + reserved * bytes_per_sector;
        let root_at = fat_at + fats * fat_sectors * bytes_per_sector;
        let data_at = root_at + root_sectors * bytes_per_sector;
        let cluster_end = clusters as u32 + 2;
        let root = if kind == Kind::Fat32 {
            let c = u32_at(&bs, 44);
            if !(2..cluster_end).contains(&c) {
                return Err(Error::BadFat("root directory cluster out of range"));
            }
            Dir::Chain(c)
        } else {
            if root_entries == 0 {
                return Err(Error::NotFat("FAT12/16 without a root directory"));
            }
            Dir::Fixed {
                offset: root_at,
                len: root_entries * 32,
            }
        };
        Ok(Fat {
            kind,
            fat_at,
            data_at,
            root,
            cluster_size,
            cluster_end,
            cache: [0; 512],
            cache_at: u64::MAX,
            cursor: (0, 0, 0),
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    fn fat_byte<D: Disk>(&mut self, disk: &mut D, at: u64) -> Result<u8, Error<D::Error>> {
        let sector = at & !511;
        if sector != self.cache_at {
            self.cache_at = u64::MAX;
            disk.read(sector, &mut self.cache)?;
            self.cache_at = sector;
        }
        Ok(self.cache[(at - sector) as usize])
    }

    /// The cluster after `c` in its chain, `None` at the end.
    fn next<D: Disk>(&mut self, disk: &mut D, c: u32) -> Result<Option<u32>, Error<D::Error>> {
        let c64 = u64::from(c);
        let (value, eoc) = match self.kind {
            Kind::Fat12 => {
                let at = self.fat_at + c64 + c64 / 2;
                let v = u16::from(self.fat_byte(disk, at)?)
                    | (u16::from(self.fat_byte(disk, at + 1)?) << 8);
                let v = if c & 1 == 1 { v >> 4 } else { v & 0xFFF };
                (u32::from(v), 0xFF8)
            }
            Kind::Fat16 => {
                let at = self.fat_at + c64 * 2;
                let v = u16::from(self.fat_byte(disk, at)?)
                    | (u16::from(self.fat_byte(disk, at + 1)?) << 8);
                (u32::from(v), 0xFFF8)
            }
            Kind::Fat32 => {
                let at = self.fat_at + c64 * 4;
                let mut v = 0u32;
                for i in 0..4 {
                    v |= u32::from(self.fat_byte(disk, at + i)?) << (8 * i);
                }
                (v & 0x0FFF_FFFF, 0x0FFF_FFF8)
            }
        };
        if value >= eoc {
            return Ok(None);
        }
        if !(2..self.cluster_end).contains(&value) {
            return Err(Error::BadFat(
                "cluster chain points outside the data region",
            ));
        }
        Ok(Some(value))
    }

    fn cluster_at(&self, c: u32) -> u64 {
        self.data_at + u64::from(c - 2) * self.cluster_size
    }

    /// The `index`-th cluster of the chain starting at `first`, `None` if
    /// the chain is shorter.
    fn seek<D: Disk>(
        &mut self,
        disk: &mut D,
        first: u32,
        index: u64,
    ) -> Result<Option<u32>, Error<D::Error>> {
        if !(2..self.cluster_end).contains(&first) {
            return Err(Error::BadFat("first cluster outside the data region"));
        }
        let (mut i, mut c) = match self.cursor {
            (f, i, c) if f == first && i <= index => (i, c),
            _ => (0, first),
        };
        while i < index {
            match self.next(disk, c)? {
                Some(n) => c = n,
                None => return Ok(None),
            }
            i += 1;
        }
        self.cursor = (first, i, c);
        Ok(Some(c))
    }

    /// Read `buf.len()` bytes at `pos` of the chain starting at `first`,
    /// one disk read per run of consecutive clusters.
    fn read_chain<D: Disk>(
        &mut self,
        disk: &mut D,
        first: u32,
        pos: u64,
        buf: &mut [u8],
    ) -> Result<(), Error<D::Error>> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = pos + done as u64;
            let index = at / self.cluster_size;
            let Some(c) = self.seek(disk, first, index)? else {
                return Err(Error::BadFat("cluster chain shorter than the file"));
            };
            let within = at % self.cluster_size;
            let want = (buf.len() - done) as u64;
            // Extend the run while the chain stays contiguous on disk.
            let (mut run, mut last, mut last_index) = (self.cluster_size - within, c, index);
            while run < want {
                match self.next(disk, last)? {
                    Some(n) if n == last + 1 => {
                        last = n;
                        last_index += 1;
                        run += self.cluster_size;
                        self.cursor = (first, last_index, last);
                    }
                    _ => break,
                }
            }
            let n = run.min(want) as usize;
            disk.read(self.cluster_at(c) + within, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Read `buf.len()` bytes at `pos` of the directory's entries; `false`
    /// past its end.
    fn read_dir<D: Disk>(
        &mut self,
        disk: &mut D,
        dir: Dir,
        pos: u64,
        buf: &mut [u8],
    ) -> Result<bool, Error<D::Error>> {
        match dir {
            Dir::Fixed { offset, len } => {
                if pos + buf.len() as u64 > len {
                    return Ok(false);
                }
                disk.read(offset + pos, buf)?;
                Ok(true)
            }
            Dir::Chain(first) => {
                if pos + buf.len() as u64 > MAX_DIR_BYTES {
                    return Ok(false);
                }
                if self.seek(disk, first, pos / self.cluster_size)?.is_none() {
                    return Ok(false);
                }
                self.read_chain(disk, first, pos, buf)?;
                Ok(true)
            }
        }
    }

    /// Call `f` with each entry of `dir` (not `.`, `..`, volume labels or
    /// deleted entries) until it returns `true`; that entry is returned.
    fn scan<D: Disk>(
        &mut self,
        disk: &mut D,
        dir: Dir,
        f: &mut dyn FnMut(&Entry) -> bool,
    ) -> Result<Option<Entry>, Error<D::Error>> {
        let mut sector = [0u8; 512];
        let mut lfn = [0u16; 260];
        // Long-name state: the sequence number expected next (counting
        // down to 1), the checksum all parts carry, and the name length.
        let mut expect = 0u8;
        let mut sum = 0u8;
        let mut lfn_len = 0usize;
        let mut pos = 0u64;
        while self.read_dir(disk, dir, pos, &mut sector)? {
            pos += 512;
            for raw in sector.chunks_exact(32) {
                if raw[0] == 0 {
                    return Ok(None);
                }
                if raw[0] == 0xE5 {
                    expect = 0;
                    continue;
                }
                let attr = raw[11];
                if attr & 0x3F == ATTR_LONG_NAME {
                    let seq = raw[0] & 0x1F;
                    if raw[0] & 0x40 != 0 {
                        if seq == 0 || seq > 20 {
                            expect = 0;
                            continue;
                        }
                        sum = raw[13];
                        lfn_len = usize::from(seq) * 13;
                        lfn[..lfn_len].fill(0xFFFF);
                    } else if expect == 0 || seq != expect || raw[13] != sum {
                        expect = 0;
                        continue;
                    }
                    let base = usize::from(seq - 1) * 13;
                    let offs = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
                    for (k, &o) in offs.iter().enumerate() {
                        lfn[base + k] = u16_at(raw, o);
                    }
                    // Parts come last-first; `expect` reaching 1 means the
                    // first part is in and the 8.3 entry is next.
                    expect = if seq == 1 { 1 | 0x80 } else { seq - 1 };
                    continue;
                }
                let long_done = expect == 0x81;
                expect = 0;
                if attr & ATTR_VOLUME_ID != 0 || raw[0] == b'.' {
                    continue;
                }
                let mut e = Entry {
                    name: [0; 255],
                    name_len: 0,
                    attr,
                    cluster: (u32::from(u16_at(raw, 20)) << 16) | u32::from(u16_at(raw, 26)),
                    size: u32_at(raw, 28),
                };
                if self.kind != Kind::Fat32 {
                    e.cluster &= 0xFFFF;
                }
                if long_done && short_checksum(&raw[..11]) == sum {
                    let n = lfn[..lfn_len]
                        .iter()
                        .position(|&c| c == 0 || c == 0xFFFF)
                        .unwrap_or(lfn_len)
                        .min(255);
                    for (d, &c) in e.name.iter_mut().zip(&lfn[..n]) {
                        *d = if c < 0x80 { c as u8 } else { b'?' };
                    }
                    e.name_len = n as u8;
                } else {
                    let mut n = 0;
                    let mut push = |b: u8, e: &mut Entry| {
                        e.name[n] = if b < 0x80 { b } else { b'?' };
                        n += 1;
                    };
                    let base = if raw[0] == 0x05 {
                        [0xE5].as_slice()
                    } else {
                        &raw[..1]
                    };
                    let stem_end = raw[..8]
                        .iter()
                        .rposition(|&b| b != b' ')
                        .map_or(0, |p| p + 1);
                    for (k, &b) in raw[..stem_end].iter().enumerate() {
                        push(if k == 0 { base[0] } else { b }, &mut e);
                    }
                    let ext_end = raw[8..11]
                        .iter()
                        .rposition(|&b| b != b' ')
                        .map_or(0, |p| p + 1);
                    if ext_end > 0 {
                        push(b'.', &mut e);
                        for &b in &raw[8..8 + ext_end] {
                            push(b, &mut e);
                        }
                    }
                    e.name_len = n as u8;
                }
                if f(&e) {
                    return Ok(Some(e));
                }
            }
        }
        Ok(None)
    }

    fn dir_of<D: Disk>(&self, e: &Entry) -> Result<Dir, Error<D::Error>> {
        // A directory entry whose cluster is 0 is the root (`..` style).
        if e.cluster == 0 {
            return Ok(self.root);
        }
        if !(2..self.cluster_end).contains(&e.cluster) {
            return Err(Error::BadFat("directory cluster outside the data region"));
        }
        Ok(Dir::Chain(e.cluster))
    }

    /// The entry at `path` (`/`-separated, relative to the root, compared
    /// case-insensitively as FAT does); `Err(NotFound)` if any part is
    /// missing or a non-final part is not a directory.
    pub fn lookup<D: Disk>(&mut self, disk: &mut D, path: &[u8]) -> Result<Entry, Error<D::Error>> {
        let mut dir = self.root;
        let mut parts = path
            .split(|&b| b == b'/')
            .filter(|p| !p.is_empty())
            .peekable();
        let mut depth = 0;
        while let Some(part) = parts.next() {
            depth += 1;
            if depth > MAX_DEPTH {
                return Err(Error::NotFound);
            }
            let found = self.scan(disk, dir, &mut |e| e.name().eq_ignore_ascii_case(part))?;
            let e = found.ok_or(Error::NotFound)?;
            if parts.peek().is_none() {
                return Ok(e);
            }
            if !e.is_dir() {
                return Err(Error::NotFound);
            }
            dir = self.dir_of::<D>(&e)?;
        }
        Err(Error::NotFound)
    }

    /// Call `f` with every entry of the directory `e` until it returns true.
    pub fn for_each<D: Disk>(
        &mut self,
        disk: &mut D,
        e: &Entry,
        f: &mut dyn FnMut(&Entry) -> bool,
    ) -> Result<(), Error<D::Error>> {
        if !e.is_dir() {
            return Err(Error::NotFound);
        }
        let dir = self.dir_of::<D>(e)?;
        self.scan(disk, dir, f)?;
        Ok(())
    }

    /// Read `buf.len()` bytes at `pos` of the file `e`.
    pub fn read<D: Disk>(
        &mut self,
        disk: &mut D,
        e: &Entry,
        pos: u64,
        buf: &mut [u8],
    ) -> Result<(), Error<D::Error>> {
        if e.is_dir() {
            return Err(Error::NotFound);
        }
        if pos
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > u64::from(e.size))
        {
            return Err(Error::BadFat("read past the end of the file"));
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.read_chain(disk, e.cluster, pos, buf)
    }
}

/// The checksum a long name's parts carry of their 8.3 entry.
fn short_checksum(name: &[u8]) -> u8 {
    name.iter()
        .fold(0u8, |s, &b| s.rotate_right(1).wrapping_add(b))
}
