//! `file` and `host_device`: a regular file or block device, with
//! positional I/O so that many requests share one descriptor without
//! seeking. Calls are system calls that may block, so the driver says so
//! (unless the file lives in memory, on tmpfs) and requests through it run
//! on the blocking pool.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek as _, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use blockwire_core::block::contract::{STATE_HOLE, STATE_ZERO};

use crate::block::io::Io;
use crate::block::node::{Driver, DriverInfo, Status, Zeroes, invalid};
use crate::block::options::{Aio, OnOffAuto};
use crate::sys::{self, Seek};

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// Fill `[offset, offset+len)` with zeroes by writing, in pieces, where
/// the file system cannot zero any other way.
fn write_zero_buffers(
    offset: u64,
    len: u64,
    mut write: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    const PIECE: u64 = 1 << 20;
    let zeroes = vec![0u8; PIECE.min(len) as usize];
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        let n = PIECE.min(end - pos);
        write(pos, &zeroes[..n as usize])?;
        pos += n;
    }
    Ok(())
}

/// How a `file` node is opened (`BlockdevOptionsFile` and the node's
/// `cache` options).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileOpen {
    pub read_only: bool,
    pub host_device: bool,
    pub aio: Aio,
    pub locking: OnOffAuto,
    pub direct: bool,
    pub no_flush: bool,
    /// Refuse nothing to other users of the image (`force-share`).
    pub force_share: bool,
}

pub struct FileDriver {
    file: File,
    path: PathBuf,
    size: AtomicU64,
    read_only: bool,
    block_device: bool,
    /// The last data extent lseek found, `[start, end)`, as qemu's
    /// file-posix keeps one: sequential reads then cost no lseek, which
    /// matters on tmpfs, where SEEK_HOLE walks the page cache up to the
    /// next hole. Writes only add data, so only trims and zeroes clear it.
    data_extent: Mutex<(u64, u64)>,
    /// Whether the file may have holes: known at open from its allocated
    /// blocks, and set again whenever we punch one. Asking the kernel on
    /// every read (an fstat, then lseeks) cost more than the reads on
    /// page-cached files. A hole made by another process goes unseen, which
    /// is safe: it reads, and is reported, as data that is zero.
    sparse: AtomicBool,
    /// On tmpfs or ramfs: I/O is memory copies and never waits for a
    /// device, so requests need not go through the blocking pool.
    memory_fs: bool,
    no_flush: bool,
    /// `cache.direct=on`: the file is open with `O_DIRECT`.
    direct: Option<Direct>,
    /// A flush failed: Linux may have dropped the dirty pages it could
    /// not write, so a later fdatasync that succeeds proves nothing about
    /// them. Every flush fails from then on, as QEMU's file-posix does
    /// (`page_cache_inconsistent`), rather than acknowledge lost writes.
    flush_failed: AtomicBool,
}

/// `O_DIRECT` I/O needs offsets, lengths and buffers aligned to the
/// storage's block size. Requests that are not are carried out as QEMU's
/// block layer does for them: through an aligned bounce buffer, reading
/// the partial blocks at the edges first for writes (read-modify-write).
struct Direct {
    align: u64,
    /// Read-modify-write must not interleave with another write of the
    /// same block: unaligned writes take this exclusively, aligned ones
    /// shared.
    rmw: std::sync::RwLock<()>,
}

/// QEMU's permission bits and the bytes file-posix locks for them: byte
/// 100 + bit while using a permission, 200 + bit while refusing to share it.
const LOCK_PERM_BASE: u64 = 100;
const LOCK_SHARED_BASE: u64 = 200;
const PERM_NAMES: [&str; 4] = ["consistent read", "write", "write unchanged", "resize"];
const PERM_READ: u32 = 1 << 0;
const PERM_WRITE: u32 = 1 << 1;
const PERM_WRITE_UNCHANGED: u32 = 1 << 2;
const PERM_RESIZE: u32 = 1 << 3;

/// Takes QEMU's locks for `perm` (used) and `unshared` (refused to
/// others), then checks nobody else holds a conflicting one, in
/// file-posix's order and with its messages. `None` if the file system
/// has no OFD locks and locking is only `auto`.
fn lock_image(
    file: &File,
    path: &Path,
    perm: u32,
    unshared: u32,
    required: bool,
) -> io::Result<()> {
    for bit in 0..PERM_NAMES.len() as u64 {
        for (set, base) in [(perm, LOCK_PERM_BASE), (unshared, LOCK_SHARED_BASE)] {
            if set & (1 << bit) == 0 {
                continue;
            }
            match sys::ofd_lock(file, base + bit, 1, sys::LockKind::Shared) {
                Ok(()) => {}
                Err(e) if !required && unsupported(&e) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    return Err(lock_conflict(path, base == LOCK_SHARED_BASE, bit));
                }
                Err(e) => return Err(e),
            }
        }
    }
    for bit in 0..PERM_NAMES.len() as u64 {
        // Someone refuses to share what we use, or uses what we refuse.
        if perm & (1 << bit) != 0
            && sys::ofd_conflicts(file, LOCK_SHARED_BASE + bit, 1, sys::LockKind::Exclusive)?
        {
            return Err(lock_conflict(path, false, bit));
        }
        if unshared & (1 << bit) != 0
            && sys::ofd_conflicts(file, LOCK_PERM_BASE + bit, 1, sys::LockKind::Exclusive)?
        {
            return Err(lock_conflict(path, true, bit));
        }
    }
    Ok(())
}

fn lock_conflict(path: &Path, shared: bool, bit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::WouldBlock,
        format!(
            "Failed to get {}\"{}\" lock. Is another process using the image [{}]?",
            if shared { "shared " } else { "" },
            PERM_NAMES[bit as usize],
            path.display()
        ),
    )
}

/// The smallest alignment `O_DIRECT` reads accept here: the logical block
/// size of a device, or for a file the first of 512 and 4096 that a read
/// accepts (what QEMU probes).
fn probe_alignment(file: &File, block_device: bool) -> io::Result<u64> {
    if block_device {
        return sys::logical_block_size(file).map(u64::from);
    }
    for align in [512usize, 4096] {
        let mut b = sys::AlignedBuf::new(align, align)?;
        match file.read_at(b.as_mut_slice(), 0) {
            Ok(_) => return Ok(align as u64),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(4096)
}

impl Direct {
    /// The aligned range covering `[offset, offset+len)`.
    fn span(&self, offset: u64, len: u64) -> (u64, u64) {
        let start = offset & !(self.align - 1);
        let end = (offset + len).div_ceil(self.align) * self.align;
        (start, end.max(start + self.align))
    }
}

/// An OS error as QEMU prints it (`strerror`), without Rust's
/// " (os error N)" suffix.
fn os_message(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_owned(),
        _ => s,
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::ENODEV)
    )
}

impl FileDriver {
    pub fn open(path: &Path, how: FileOpen) -> io::Result<Self> {
        // Options not implemented are refused, never silently ignored.
        match how.aio {
            Aio::Threads => {}
            Aio::Native if !how.direct => {
                return Err(invalid(
                    "aio=native was specified, but it requires cache.direct=on, which was not specified.",
                ));
            }
            Aio::Native => {
                return Err(invalid(
                    "aio=native is not supported by this build; use aio=threads",
                ));
            }
            Aio::IoUring => {
                return Err(invalid(
                    "aio=io_uring is not supported by this build; use aio=threads",
                ));
            }
        }
        let read_only = how.read_only;
        let mut opts = OpenOptions::new();
        opts.read(true).write(!read_only);
        if how.direct {
            use std::os::unix::fs::OpenOptionsExt;
            opts.custom_flags(libc::O_DIRECT);
        }
        let mut file = opts.open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("Could not open '{}': {}", path.display(), os_message(&e)),
            )
        })?;
        let meta = file.metadata()?;
        let block_device = meta.file_type().is_block_device();
        // QEMU's file-posix: `file` takes only regular files,
        // `host_device` character or block devices.
        if how.host_device && !(block_device || meta.file_type().is_char_device()) {
            return Err(invalid(format!(
                "'host_device' driver requires '{}' to be either a character or block device",
                path.display()
            )));
        }
        if !how.host_device && !meta.file_type().is_file() {
            return Err(invalid(format!(
                "'file' driver requires '{}' to be a regular file",
                path.display()
            )));
        }
        // For block devices metadata().len() is 0; seeking to the end asks
        // the driver (what BLKGETSIZE64 would) without an ioctl.
        let size = file.seek(SeekFrom::End(0))?;
        let sparse = !block_device && {
            use std::os::unix::fs::MetadataExt;
            meta.blocks().saturating_mul(512) < size
        };
        let memory_fs = sys::on_memory_fs(&file);
        let direct = match how.direct {
            false => None,
            true => Some(Direct {
                align: probe_alignment(&file, block_device)?,
                rmw: std::sync::RwLock::new(()),
            }),
        };
        if how.locking != OnOffAuto::Off {
            // As QEMU: a reader uses "consistent read" and refuses to share
            // "write" and "resize" (the image must not change under it); a
            // writer uses write too.
            let perm = if read_only {
                PERM_READ
            } else {
                PERM_READ | PERM_WRITE | PERM_WRITE_UNCHANGED | PERM_RESIZE
            };
            lock_image(
                &file,
                path,
                perm,
                PERM_WRITE | PERM_RESIZE,
                how.locking == OnOffAuto::On,
            )?;
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            size: AtomicU64::new(size),
            read_only,
            block_device,
            data_extent: Mutex::new((0, 0)),
            sparse: AtomicBool::new(sparse),
            // O_DIRECT bypasses the page cache: I/O waits for the device.
            memory_fs: memory_fs && direct.is_none(),
            no_flush: how.no_flush,
            direct,
            flush_failed: AtomicBool::new(false),
        })
    }

    /// Creates (or truncates) a sparse file of `size` bytes: the scratch
    /// storage of a copy-on-write overlay given by path on the command line.
    pub fn create_scratch(path: &Path, size: u64) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        file.set_len(size)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl FileDriver {
    fn forget_extent(&self) {
        *self.data_extent.lock().unwrap_or_else(|p| p.into_inner()) = (0, 0);
    }
}

impl FileDriver {
    /// Reads what the file holds, zeroes past its end.
    fn pread_zero_fill(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self.file.read_exact_at(buf, offset) {
            // A regular file may have been shortened behind our back; what
            // is gone reads as zeroes rather than failing the client.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                let mut done = 0;
                while done < buf.len() {
                    match self.file.read_at(&mut buf[done..], offset + done as u64)? {
                        0 => break,
                        n => done += n,
                    }
                }
                buf[done..].fill(0);
                Ok(())
            }
            r => r,
        }
    }

    fn read_sync(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let Some(d) = &self.direct else {
            return self.pread_zero_fill(offset, buf);
        };
        let (start, end) = d.span(offset, buf.len() as u64);
        let mut bounce = sys::AlignedBuf::new((end - start) as usize, d.align as usize)?;
        self.pread_zero_fill(start, bounce.as_mut_slice())?;
        let at = (offset - start) as usize;
        buf.copy_from_slice(&bounce.as_slice()[at..at + buf.len()]);
        Ok(())
    }

    fn write_sync(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let Some(d) = &self.direct else {
            return self.file.write_all_at(data, offset);
        };
        let len = data.len() as u64;
        if len == 0 {
            return Ok(());
        }
        let (start, end) = d.span(offset, len);
        let mut bounce = sys::AlignedBuf::new((end - start) as usize, d.align as usize)?;
        let aligned = start == offset && end == offset + len;
        // Shared for whole blocks; exclusive while the edges are read and
        // written back, so no other write of those blocks interleaves.
        let _guard_shared;
        let _guard_exclusive;
        if aligned {
            _guard_shared = d.rmw.read().unwrap_or_else(|p| p.into_inner());
        } else {
            _guard_exclusive = d.rmw.write().unwrap_or_else(|p| p.into_inner());
            let b = bounce.as_mut_slice();
            let a = d.align as usize;
            if offset > start {
                self.pread_zero_fill(start, &mut b[..a])?;
            }
            let tail = end - d.align;
            if offset + len < end && (tail > start || offset == start) {
                let t = (tail - start) as usize;
                self.pread_zero_fill(tail, &mut b[t..t + a])?;
            }
        }
        let at = (offset - start) as usize;
        bounce.as_mut_slice()[at..at + data.len()].copy_from_slice(data);
        self.file.write_all_at(bounce.as_slice(), start)
    }

    fn flush_sync(&self) -> io::Result<()> {
        if self.read_only || self.no_flush {
            return Ok(());
        }
        if self.flush_failed.load(Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let r = self.file.sync_data();
        if let Err(e) = &r {
            // Only errors about the data, not about the call.
            if !matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EINVAL)) {
                self.flush_failed.store(true, Ordering::Relaxed);
            }
        }
        r
    }

    fn discard_sync(&self, offset: u64, len: u64) -> io::Result<()> {
        self.forget_extent();
        self.sparse.store(true, Ordering::Relaxed);
        match sys::punch_hole(&self.file, offset, len) {
            // Trim is advisory: a filesystem that cannot punch keeps data.
            Err(e) if unsupported(&e) => Ok(()),
            r => r,
        }
    }

    fn zeroes_sync(&self, offset: u64, len: u64, may_unmap: bool, fast: bool) -> io::Result<()> {
        self.forget_extent();
        if may_unmap {
            self.sparse.store(true, Ordering::Relaxed);
            match sys::punch_hole(&self.file, offset, len) {
                Err(e) if unsupported(&e) => {}
                r => return r,
            }
        }
        match sys::zero_range(&self.file, offset, len) {
            Err(e) if unsupported(&e) => {}
            r => return r,
        }
        if fast {
            return Err(errno(libc::ENOTSUP));
        }
        write_zero_buffers(offset, len, |o, b| self.file.write_all_at(b, o))
    }

    fn allocation(
        &self,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(u64, u64) -> bool,
    ) -> io::Result<()> {
        let end = offset + len;
        if self.block_device {
            sink(len, 0);
            return Ok(());
        }
        let mut pos = offset;
        while pos < end {
            let (cs, ce) = *self.data_extent.lock().unwrap_or_else(|p| p.into_inner());
            if cs <= pos && pos < ce {
                let n = ce.min(end) - pos;
                if !sink(n, 0) {
                    return Ok(());
                }
                pos += n;
                continue;
            }
            let data = match sys::seek(&self.file, pos, Seek::Data) {
                Ok(d) => d.unwrap_or(end).min(end),
                // No SEEK_DATA here (old filesystem): all data, which is
                // always a correct answer.
                Err(e) if unsupported(&e) => {
                    sink(end - pos, 0);
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if data > pos && !sink(data - pos, STATE_HOLE | STATE_ZERO) {
                return Ok(());
            }
            if data >= end {
                return Ok(());
            }
            let next_hole = sys::seek(&self.file, data, Seek::Hole)?.unwrap_or(self.size());
            let hole = next_hole.min(end);
            if hole <= data {
                // A file changing under us; report the rest as data.
                sink(end - data, 0);
                return Ok(());
            }
            *self.data_extent.lock().unwrap_or_else(|p| p.into_inner()) = (data, next_hole);
            if !sink(hole - data, 0) {
                return Ok(());
            }
            pos = hole;
        }
        Ok(())
    }
}

impl Driver for FileDriver {
    fn driver_name(&self) -> &'static str {
        if self.block_device {
            "host_device"
        } else {
            "file"
        }
    }

    fn info(&self) -> DriverInfo {
        DriverInfo {
            read_only: self.read_only,
            blocking: !self.memory_fs,
            fast_zero: true,
            // The file says whether it may have holes now; looking for
            // them costs lseeks, so only where they can exist.
            sparse: !self.block_device && self.sparse.load(Ordering::Relaxed),
            ..DriverInfo::default()
        }
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn filename(&self) -> String {
        self.path.display().to_string()
    }

    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> Io<'a, ()> {
        Io::from_result(self.read_sync(offset, buf))
    }

    fn write<'a>(&'a self, offset: u64, data: &'a [u8], fua: bool) -> Io<'a, ()> {
        let r = self.write_sync(offset, data);
        Io::from_result(if fua {
            r.and_then(|()| self.flush_sync())
        } else {
            r
        })
    }

    fn flush(&self) -> Io<'_, ()> {
        Io::from_result(self.flush_sync())
    }

    fn discard(&self, offset: u64, len: u64) -> Io<'_, ()> {
        Io::from_result(self.discard_sync(offset, len))
    }

    fn write_zeroes(&self, offset: u64, len: u64, z: Zeroes) -> Io<'_, ()> {
        let r = self.zeroes_sync(offset, len, z.may_unmap, z.fast);
        Io::from_result(if z.fua {
            r.and_then(|()| self.flush_sync())
        } else {
            r
        })
    }

    fn cache(&self, offset: u64, len: u64) -> Io<'_, ()> {
        Io::from_result(sys::will_need(&self.file, offset, len))
    }

    fn block_status<'a>(&'a self, offset: u64, len: u64, out: &'a mut Vec<Status>) -> Io<'a, ()> {
        Io::from_result(self.allocation(offset, len, &mut |l, f| {
            out.push(Status {
                len: l,
                flags: f,
                depth: 1,
            });
            true
        }))
    }

    /// `block_resize`: the file grows (sparsely) or shrinks; a block
    /// device cannot.
    fn resize(&self, size: u64) -> Io<'_, ()> {
        if self.block_device {
            return Io::err(invalid("Cannot grow device files"));
        }
        let r = self.file.set_len(size).map(|()| {
            self.size.store(size, Ordering::Relaxed);
            self.sparse.store(true, Ordering::Relaxed);
            self.forget_extent();
        });
        Io::from_result(r)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn files_in_memory_do_not_need_the_blocking_pool() {
        let shm = std::path::Path::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        let path = shm.join(format!("blockwire-test-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let b = FileDriver::open(&path, FileOpen::default()).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            crate::sys::on_memory_fs(&b.file),
            "/dev/shm is tmpfs on Linux"
        );
        assert!(!b.info().blocking);
    }

    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("blockwire-file-{}-{name}", std::process::id()))
    }

    fn runs(b: &FileDriver) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = Vec::new();
        b.allocation(0, b.size(), &mut |l, f| {
            match v.last_mut() {
                Some(last) if last.1 == f => last.0 += l,
                _ => v.push((l, f)),
            }
            true
        })
        .unwrap();
        v
    }

    #[test]
    fn read_write_punch_and_map() {
        let p = tmp("rw");
        FileDriver::create_scratch(&p, 4 << 20).unwrap();
        let b = FileDriver::open(&p, FileOpen::default()).unwrap();
        assert_eq!(b.size(), 4 << 20);
        b.write_sync(1 << 20, &vec![0x5a; 1 << 20]).unwrap();
        let mut back = vec![0u8; 1 << 20];
        b.read_sync(1 << 20, &mut back).unwrap();
        assert!(back.iter().all(|&x| x == 0x5a));
        let r = runs(&b);
        // tmpfs and most filesystems report the write as the only data.
        if r.len() == 3 {
            assert_eq!(r[1], (1 << 20, 0));
        }
        b.zeroes_sync(1 << 20, 1 << 20, true, true).unwrap();
        b.read_sync(1 << 20, &mut back).unwrap();
        assert!(back.iter().all(|&x| x == 0));
        b.flush_sync().unwrap();
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn read_only_open_refuses_nothing_to_read() {
        let p = tmp("ro");
        std::fs::write(&p, vec![1u8; 8192]).unwrap();
        let b = FileDriver::open(
            &p,
            FileOpen {
                read_only: true,
                ..FileOpen::default()
            },
        )
        .unwrap();
        assert!(b.info().read_only);
        let mut buf = [0u8; 16];
        b.read_sync(8000, &mut buf).unwrap();
        assert_eq!(buf, [1u8; 16]);
        assert!(b.write_sync(0, &[0]).is_err());
        std::fs::remove_file(&p).unwrap();
    }

    /// A directory on the machine's disk (the build tree): O_DIRECT and
    /// OFD locks need a real file system, which /tmp may not be.
    fn disk_tmp(name: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-files");
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(format!("file-{}-{name}", std::process::id()))
    }

    #[test]
    fn direct_io_serves_unaligned_requests() {
        let p = disk_tmp("direct");
        std::fs::write(&p, vec![7u8; 64 << 10]).unwrap();
        let how = FileOpen {
            direct: true,
            ..FileOpen::default()
        };
        let b = FileDriver::open(&p, how).unwrap();
        assert!(b.direct.as_ref().unwrap().align >= 512);
        // Unaligned in every way: offset, length, crossing blocks.
        b.write_sync(1000, &[1u8; 5000]).unwrap();
        b.write_sync(8191, &[2u8; 2]).unwrap();
        b.write_sync(0, &[3u8; 10]).unwrap();
        let mut back = vec![0u8; 64 << 10];
        b.read_sync(0, &mut back).unwrap();
        let mut want = vec![7u8; 64 << 10];
        want[1000..6000].fill(1);
        want[8191..8193].fill(2);
        want[..10].fill(3);
        assert_eq!(back, want);
        let mut piece = [0u8; 3];
        b.read_sync(8190, &mut piece).unwrap();
        assert_eq!(piece, [7, 2, 2]);
        // The bytes on disk agree, read without O_DIRECT.
        drop(b);
        assert_eq!(std::fs::read(&p).unwrap(), want);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn locks_are_taken_as_qemu_takes_them() {
        let p = disk_tmp("lock");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let on = |read_only| FileOpen {
            read_only,
            locking: OnOffAuto::On,
            ..FileOpen::default()
        };
        let writer = FileDriver::open(&p, on(false)).unwrap();
        // A second writer, or a reader that will not share write, fails
        // with file-posix's message.
        let e = FileDriver::open(&p, on(false)).err().unwrap().to_string();
        assert!(e.contains("Failed to get") && e.contains("lock"), "{e}");
        let e = FileDriver::open(&p, on(true)).err().unwrap().to_string();
        assert!(e.contains("Failed to get shared \"write\" lock"), "{e}");
        // Without locking, nothing is checked.
        let off = FileOpen {
            locking: OnOffAuto::Off,
            ..FileOpen::default()
        };
        FileDriver::open(&p, off).unwrap();
        drop(writer);
        // Readers share.
        let r1 = FileDriver::open(&p, on(true)).unwrap();
        let _r2 = FileDriver::open(&p, on(true)).unwrap();
        assert!(FileDriver::open(&p, on(false)).is_err());
        drop(r1);
        std::fs::remove_file(&p).unwrap();
    }
}
