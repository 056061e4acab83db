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
        if how.direct {
            return Err(invalid("cache.direct=on is not supported by this build"));
        }
        match how.aio {
            Aio::Threads => {}
            Aio::Native => {
                return Err(invalid(
                    "aio=native was specified, but it requires cache.direct=on, which was not specified.",
                ));
            }
            Aio::IoUring => return Err(invalid("aio=io_uring is not supported by this build")),
        }
        if how.locking == OnOffAuto::On {
            return Err(invalid("locking=on is not supported by this build"));
        }
        let read_only = how.read_only;
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("Could not open '{}': {e}", path.display()),
                )
            })?;
        let meta = file.metadata()?;
        let block_device = meta.file_type().is_block_device();
        if how.host_device && !block_device {
            return Err(invalid(format!(
                "'host_device' driver requires '{}' to be either a character or block device",
                path.display()
            )));
        }
        if !how.host_device && block_device {
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
        Ok(Self {
            file,
            path: path.to_owned(),
            size: AtomicU64::new(size),
            read_only,
            block_device,
            data_extent: Mutex::new((0, 0)),
            sparse: AtomicBool::new(sparse),
            memory_fs,
            no_flush: how.no_flush,
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
    fn read_sync(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
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

    fn write_sync(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn flush_sync(&self) -> io::Result<()> {
        if self.read_only || self.no_flush {
            return Ok(());
        }
        self.file.sync_data()
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
}
