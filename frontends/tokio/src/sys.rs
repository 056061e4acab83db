//! The few system calls std does not wrap. Every `unsafe` block of the
//! crate lives here so that the rest can stay safe code.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn off(v: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Deallocate `[offset, offset+len)`; the range then reads as zeroes.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

/// Make `[offset, offset+len)` read as zeroes, keeping it allocated.
pub fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (o, l) = (off(offset)?, off(len)?);
    // SAFETY: fallocate only reads its integer arguments; the descriptor is
    // valid for as long as `file` is borrowed.
    check(unsafe { libc::fallocate(file.as_raw_fd(), mode, o, l) })
}

/// Ask the kernel to read `[offset, offset+len)` into the page cache.
pub fn will_need(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (o, l) = (off(offset)?, off(len)?);
    // SAFETY: integer arguments only; the descriptor is valid while borrowed.
    let ret = unsafe { libc::posix_fadvise(file.as_raw_fd(), o, l, libc::POSIX_FADV_WILLNEED) };
    // posix_fadvise returns the error number instead of setting errno.
    if ret != 0 {
        Err(io::Error::from_raw_os_error(ret))
    } else {
        Ok(())
    }
}

/// Where the next data or hole starts at or after `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    Data,
    Hole,
}

/// `lseek(SEEK_DATA / SEEK_HOLE)`: `Ok(None)` when there is no data at or
/// after `offset` (ENXIO). The descriptor's file position changes, which
/// nothing else relies on: all I/O is positional.
pub fn seek(file: &File, offset: u64, what: Seek) -> io::Result<Option<u64>> {
    let whence = match what {
        Seek::Data => libc::SEEK_DATA,
        Seek::Hole => libc::SEEK_HOLE,
    };
    let o = off(offset)?;
    // SAFETY: integer arguments only; the descriptor is valid while borrowed.
    let ret = unsafe { libc::lseek(file.as_raw_fd(), o, whence) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(ret as u64))
}

/// Socket family of an inherited descriptor.
pub fn socket_domain(fd: RawFd) -> io::Result<libc::c_int> {
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `domain` and `len` are valid for writes of the sizes given;
    // the kernel checks the descriptor.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(domain)
}

/// Take ownership of a descriptor passed by the service manager
/// (`LISTEN_FDS`), after checking that it is an open socket.
pub fn adopt_listen_fd(fd: RawFd) -> io::Result<OwnedFd> {
    socket_domain(fd)?;
    // SAFETY: the descriptor is open (getsockopt succeeded) and, per the
    // sd_listen_fds protocol, belongs to this process alone; it is adopted
    // exactly once because the caller walks each inherited number once and
    // then clears LISTEN_FDS.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // The service manager leaves the descriptors inheritable; children
    // (none today) must not keep the listening sockets open.
    // SAFETY: integer arguments only on a descriptor we own.
    check(unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(owned)
}

/// This process's id, to match against `LISTEN_PID`.
pub fn pid() -> u32 {
    std::process::id()
}

/// Forget the socket-activation variables once their sockets are ours.
pub fn clear_listen_env() {
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called from `main` before the tokio runtime or any other
        // thread exists, so nothing reads the environment concurrently.
        unsafe { std::env::remove_var(v) };
    }
}

/// Turn on TCP keepalive probes: after `idle_secs` of silence, probe every
/// `interval_secs`, and give up after `count` unanswered probes. A client
/// whose host vanished without closing would otherwise hold its connection
/// (and its in-flight slots) forever.
pub fn tcp_keepalive(fd: RawFd, idle_secs: i32, interval_secs: i32, count: i32) -> io::Result<()> {
    let set = |level, name, value: libc::c_int| {
        // SAFETY: `fd` is a socket owned by the caller for the duration of
        // the call; the option value is a live c_int of the size we pass.
        check(unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle_secs)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval_secs)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count)
}

/// Whether `file` lives in memory (tmpfs, ramfs), where I/O cannot wait for
/// a device: nothing there is worth handing to a thread pool.
pub fn on_memory_fs(file: &File) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs writes a `statfs` into the buffer we own, and only
    // reads the descriptor, which `file` keeps open for the call.
    let ret = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) };
    if ret != 0 {
        return false;
    }
    // SAFETY: fstatfs succeeded, so it initialised the struct (and zeroed
    // memory is a valid statfs anyway).
    let st = unsafe { st.assume_init() };
    matches!(st.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC)
}

/// A zeroed heap buffer aligned for `O_DIRECT` I/O (whose buffers must be
/// aligned to the device's logical block size).
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: the buffer is plain owned memory; nothing in it is tied to a
// thread.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads through `&self`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zeroed bytes aligned to `align` (a power of two).
    pub fn new(len: usize, align: usize) -> io::Result<Self> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), align)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the layout has a nonzero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(raw)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(Self { ptr, layout })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised (zeroed or
        // written) bytes owned by `self`, borrowed for `&self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the borrow exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// An open-file-description lock's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
}

fn flock_of(start: u64, len: u64, kind: LockKind) -> io::Result<libc::flock> {
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = match kind {
        LockKind::Shared => libc::F_RDLCK,
        LockKind::Exclusive => libc::F_WRLCK,
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = off(start)?;
    fl.l_len = off(len)?;
    Ok(fl)
}

/// `fcntl(F_OFD_SETLK)`: takes a byte-range lock owned by the
/// open file description, as QEMU's file-posix does for its permission
/// bytes (released when the file is closed); fails at once (EAGAIN) if
/// another holder conflicts.
pub fn ofd_lock(file: &File, start: u64, len: u64, kind: LockKind) -> io::Result<()> {
    let fl = flock_of(start, len, kind)?;
    // SAFETY: F_OFD_SETLK reads the flock we own for the call.
    check(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) })
}

/// `fcntl(F_OFD_GETLK)`: whether someone else holds a lock on the range
/// that conflicts with taking one of `kind`.
pub fn ofd_conflicts(file: &File, start: u64, len: u64, kind: LockKind) -> io::Result<bool> {
    let mut fl = flock_of(start, len, kind)?;
    // SAFETY: F_OFD_GETLK writes into the flock we own for the call.
    check(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) })?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// The logical block size of a block device (`BLKSSZGET`), the alignment
/// `O_DIRECT` needs on it.
pub fn logical_block_size(file: &File) -> io::Result<u32> {
    const BLKSSZGET: libc::c_ulong = 0x1268;
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int into the variable we own.
    check(unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut size) })?;
    Ok(size.max(512) as u32)
}
