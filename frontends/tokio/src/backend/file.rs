//! A regular file or block device, with positional I/O so that many
//! requests share one descriptor without seeking.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek as _, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use blockwire_core::block::contract::{STATE_HOLE, STATE_ZERO};

use super::{Backend, Caps, errno, write_zero_buffers};
use crate::sys::{self, Seek};

pub struct FileBackend {
    file: File,
    path: PathBuf,
    size: u64,
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
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::ENODEV)
    )
}

impl FileBackend {
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let block_device = file.metadata()?.file_type().is_block_device();
        // For block devices metadata().len() is 0; seeking to the end asks
        // the driver (what BLKGETSIZE64 would) without an ioctl.
        let size = file.seek(SeekFrom::End(0))?;
        let sparse = !block_device && {
            use std::os::unix::fs::MetadataExt;
            file.metadata()?.blocks().saturating_mul(512) < size
        };
        let memory_fs = sys::on_memory_fs(&file);
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
            read_only,
            block_device,
            data_extent: Mutex::new((0, 0)),
            sparse: AtomicBool::new(sparse),
            memory_fs,
        })
    }

    /// A new sparse file of `size` bytes (truncating an old one), for a
    /// copy-on-write overlay's data.
    pub fn create_scratch(path: &Path, size: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        file.set_len(size)?;
        let memory_fs = sys::on_memory_fs(&file);
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
            read_only: false,
            block_device: false,
            data_extent: Mutex::new((0, 0)),
            sparse: AtomicBool::new(true),
            memory_fs,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl FileBackend {
    fn forget_extent(&self) {
        *self.data_extent.lock().unwrap_or_else(|p| p.into_inner()) = (0, 0);
    }
}

impl Backend for FileBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn caps(&self) -> Caps {
        Caps {
            read_only: self.read_only,
            trim: true,
            fast_zero: true,
            blocking: !self.memory_fs,
            sparse_reads: !self.block_device,
        }
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
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

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.forget_extent();
        self.sparse.store(true, Ordering::Relaxed);
        match sys::punch_hole(&self.file, offset, len) {
            // Trim is advisory: a filesystem that cannot punch keeps data.
            Err(e) if unsupported(&e) => Ok(()),
            r => r,
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool, fast: bool) -> io::Result<()> {
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

    fn maybe_sparse(&self) -> bool {
        self.sparse.load(Ordering::Relaxed)
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        sys::will_need(&self.file, offset, len)
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
            let next_hole = sys::seek(&self.file, data, Seek::Hole)?.unwrap_or(self.size);
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
        let b = FileBackend::open(&path, false).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            crate::sys::on_memory_fs(&b.file),
            "/dev/shm is tmpfs on Linux"
        );
        assert!(!b.caps().blocking);
    }

    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("blockwire-file-{}-{name}", std::process::id()))
    }

    fn runs(b: &FileBackend) -> Vec<(u64, u64)> {
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
        let b = FileBackend::create_scratch(&p, 4 << 20).unwrap();
        assert_eq!(b.size(), 4 << 20);
        b.write(1 << 20, &vec![0x5a; 1 << 20]).unwrap();
        let mut back = vec![0u8; 1 << 20];
        b.read(1 << 20, &mut back).unwrap();
        assert!(back.iter().all(|&x| x == 0x5a));
        let r = runs(&b);
        // tmpfs and most filesystems report the write as the only data.
        if r.len() == 3 {
            assert_eq!(r[1], (1 << 20, 0));
        }
        b.write_zeroes(1 << 20, 1 << 20, true, true).unwrap();
        b.read(1 << 20, &mut back).unwrap();
        assert!(back.iter().all(|&x| x == 0));
        b.flush().unwrap();
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn read_only_open_refuses_nothing_to_read() {
        let p = tmp("ro");
        std::fs::write(&p, vec![1u8; 8192]).unwrap();
        let b = FileBackend::open(&p, true).unwrap();
        assert!(b.caps().read_only);
        let mut buf = [0u8; 16];
        b.read(8000, &mut buf).unwrap();
        assert_eq!(buf, [1u8; 16]);
        assert!(b.write(0, &[0]).is_err());
        std::fs::remove_file(&p).unwrap();
    }
}
