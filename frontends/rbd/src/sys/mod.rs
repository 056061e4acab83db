//! Every `unsafe` of the crate: safe owners of librados/librbd handles and
//! the completion machinery of `rbd_aio_*`. The rest of the crate is
//! `#![deny(unsafe_code)]` and only sees the types below.
//!
//! # Invariants
//!
//! 1. **Handles.** A [`Rados`] owns one `rados_t` from `rados_create2`,
//!    shut down exactly once in `Drop`. An [`IoCtx`] owns one
//!    `rados_ioctx_t` and holds an `Arc<Rados>`, so the cluster handle
//!    outlives it. An [`Image`] owns one `rbd_image_t` and its `IoCtx`, so
//!    the pool context outlives the image; `Drop` closes the image first
//!    (fields drop in declaration order after `Drop::drop`). Configuration
//!    calls (`rados_conf_*`, `rados_connect`) take `&mut Rados`: librados
//!    wants them before any concurrent use. After `rados_connect`, librados
//!    and librbd handles are thread-safe (their public calls take internal
//!    locks; `rbd-nbd` and QEMU both submit I/O on one image handle from
//!    several threads), hence `Send + Sync`.
//!
//! 2. **A submitted request owns its buffer until librbd is done with it.**
//!    Each `rbd_aio_*` request has one heap [`AioOp`] shared by two `Arc`s:
//!    the caller's [`Aio`] and one turned into the completion's `cb_arg` with
//!    `Arc::into_raw`. The buffer lives inside the `AioOp`, so dropping the
//!    caller's future early (cancellation) cannot free or move memory that
//!    librbd still reads or writes: the callback's `Arc`, released only when
//!    the callback has run, keeps it alive. The buffer is touched by Rust
//!    only (a) before the request is shared, to take its pointer once, and
//!    (b) after the callback has published the result under the op's mutex,
//!    which orders every librbd access before it.
//!
//! 3. **Submission either hands the completion to librbd or fails.** Every
//!    `rbd_aio_*` call used here returns a negative errno only before it
//!    queues the request (argument checks); its errors after that arrive
//!    through the completion. So on a negative return the callback will never
//!    run: we release the completion and take the callback's `Arc` back. This
//!    is also how QEMU's `block/rbd.c` treats a failed submission.
//!
//! 4. **The callback runs on a librbd thread and only publishes.** It reads
//!    the return value, releases the completion (allowed inside the callback,
//!    as QEMU does), stores the result, wakes the waker, and counts the
//!    request as finished. It never calls into librbd again, never blocks
//!    beyond one short mutex, and never drops the last reference to an image
//!    (it holds none), so it cannot deadlock librbd's finisher.
//!
//! 5. **No close under in-flight requests.** `Image::drop` waits until every
//!    request it submitted has reached its callback before `rbd_close`
//!    (librbd's close also drains its own queue; this makes it independent of
//!    that). The crate calls this drop on its per-image worker thread.
//!
//! 6. **No unwinding into C.** The callbacks only lock, store and wake; a
//!    panicking `Waker` would abort (Rust aborts on unwinding out of an
//!    `extern "C"` function) rather than corrupt librbd.

mod decl;

use std::cell::UnsafeCell;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::ops::ControlFlow;
use std::ptr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use decl::*;

/// A positive errno value, as librados/librbd return them negated.
pub type Errno = i32;

const ECANCELED: Errno = 125;
const ENAMETOOLONG: Errno = 36;

fn check(r: c_int) -> Result<c_int, Errno> {
    if r < 0 { Err(-r) } else { Ok(r) }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half
    // updated (each critical section is a single store or take).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// librbd's version triple (`rbd_version`).
pub fn librbd_version() -> (i32, i32, i32) {
    let (mut a, mut b, mut c) = (0, 0, 0);
    // SAFETY: rbd_version writes three ints through valid pointers.
    unsafe { rbd_version(&mut a, &mut b, &mut c) };
    (a, b, c)
}

// ---- cluster -------------------------------------------------------------

/// A librados cluster handle (invariant 1).
pub struct Rados {
    h: rados_t,
}

// SAFETY: invariant 1: configuration needs `&mut self`; after that librados
// handles are used concurrently by design.
unsafe impl Send for Rados {}
unsafe impl Sync for Rados {}

impl Rados {
    /// `rados_create2(cluster "ceph", name)`; `name` is `client.ID`.
    pub fn create(name: &CStr) -> Result<Rados, Errno> {
        let mut h: rados_t = ptr::null_mut();
        // SAFETY: valid out-pointer and NUL-terminated strings.
        check(unsafe { rados_create2(&mut h, c"ceph".as_ptr(), name.as_ptr(), 0) })?;
        Ok(Rados { h })
    }

    /// `rados_conf_read_file`; `None` searches librados' default locations
    /// (`$CEPH_CONF`, `/etc/ceph/ceph.conf`, `~/.ceph/config`, `./ceph.conf`).
    pub fn read_conf_file(&mut self, path: Option<&CStr>) -> Result<(), Errno> {
        let p = path.map_or(ptr::null(), CStr::as_ptr);
        // SAFETY: live handle (invariant 1); NULL or a C string.
        check(unsafe { rados_conf_read_file(self.h, p) }).map(drop)
    }

    pub fn conf_set(&mut self, option: &CStr, value: &CStr) -> Result<(), Errno> {
        // SAFETY: live handle; C strings, copied by librados.
        check(unsafe { rados_conf_set(self.h, option.as_ptr(), value.as_ptr()) }).map(drop)
    }

    pub fn conf_get(&self, option: &CStr) -> Result<String, Errno> {
        let mut len = 512;
        loop {
            let mut buf = vec![0u8; len];
            // SAFETY: live handle; librados writes at most `len` bytes,
            // NUL-terminated, or fails with ENAMETOOLONG.
            let r = unsafe {
                rados_conf_get(self.h, option.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            };
            match check(r) {
                Ok(_) => {
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    buf.truncate(end);
                    return Ok(String::from_utf8_lossy(&buf).into_owned());
                }
                Err(ENAMETOOLONG) if len < 1 << 20 => len *= 8,
                Err(e) => return Err(e),
            }
        }
    }

    /// `rados_connect`: blocks up to `client_mount_timeout`.
    pub fn connect(&mut self) -> Result<(), Errno> {
        // SAFETY: live, not yet connected handle.
        check(unsafe { rados_connect(self.h) }).map(drop)
    }
}

impl Drop for Rados {
    fn drop(&mut self) {
        // SAFETY: invariant 1: the last owner; every IoCtx (which holds an
        // Arc<Rados>) is gone. Valid for connected and unconnected handles.
        unsafe { rados_shutdown(self.h) }
    }
}

/// A pool (and namespace) I/O context (invariant 1).
pub struct IoCtx {
    io: rados_ioctx_t,
    _cluster: Arc<Rados>,
}

// SAFETY: the context is used by one thread at a time (the image worker) and
// librados allows moving it between threads.
unsafe impl Send for IoCtx {}

impl IoCtx {
    /// `rados_ioctx_create`: ENOENT when the pool does not exist.
    pub fn create(cluster: &Arc<Rados>, pool: &CStr) -> Result<IoCtx, Errno> {
        let mut io: rados_ioctx_t = ptr::null_mut();
        // SAFETY: connected handle (Cluster only exists after connect).
        check(unsafe { rados_ioctx_create(cluster.h, pool.as_ptr(), &mut io) })?;
        Ok(IoCtx {
            io,
            _cluster: Arc::clone(cluster),
        })
    }

    pub fn set_namespace(&mut self, namespace: &CStr) {
        // SAFETY: live context; librados copies the string.
        unsafe { rados_ioctx_set_namespace(self.io, namespace.as_ptr()) }
    }
}

impl Drop for IoCtx {
    fn drop(&mut self) {
        // SAFETY: invariant 1: any image opened on it has been closed.
        unsafe { rados_ioctx_destroy(self.io) }
    }
}

// ---- image ---------------------------------------------------------------

/// Requests submitted and not yet completed (invariant 5).
struct InFlight {
    count: Mutex<usize>,
    idle: Condvar,
}

impl InFlight {
    fn start(&self) {
        *lock(&self.count) += 1;
    }
    fn finish(&self) {
        let mut n = lock(&self.count);
        *n -= 1;
        if *n == 0 {
            self.idle.notify_all();
        }
    }
    fn wait_idle(&self) {
        let mut n = lock(&self.count);
        while *n > 0 {
            n = self.idle.wait(n).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// What `rbd_stat` reports.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub size: u64,
    pub obj_size: u64,
    pub num_objs: u64,
    pub order: i32,
}

/// An open RBD image (invariants 1 and 5).
pub struct Image {
    img: rbd_image_t,
    inflight: Arc<InFlight>,
    _io: IoCtx,
}

// SAFETY: invariant 1: librbd image handles accept concurrent calls.
unsafe impl Send for Image {}
unsafe impl Sync for Image {}

impl Image {
    /// `rbd_open` / `rbd_open_read_only`, at `snapshot` if given.
    pub fn open(
        io: IoCtx,
        name: &CStr,
        snapshot: Option<&CStr>,
        read_only: bool,
    ) -> Result<Image, Errno> {
        let mut img: rbd_image_t = ptr::null_mut();
        let snap = snapshot.map_or(ptr::null(), CStr::as_ptr);
        // SAFETY: live ioctx; C strings; valid out-pointer.
        let r = unsafe {
            if read_only {
                rbd_open_read_only(io.io, name.as_ptr(), &mut img, snap)
            } else {
                rbd_open(io.io, name.as_ptr(), &mut img, snap)
            }
        };
        check(r)?;
        Ok(Image {
            img,
            inflight: Arc::new(InFlight {
                count: Mutex::new(0),
                idle: Condvar::new(),
            }),
            _io: io,
        })
    }

    pub fn stat(&self) -> Result<Stat, Errno> {
        let mut info = rbd_image_info_t {
            size: 0,
            obj_size: 0,
            num_objs: 0,
            order: 0,
            block_name_prefix: [0; RBD_MAX_BLOCK_NAME_SIZE],
            parent_pool: 0,
            parent_name: [0; RBD_MAX_IMAGE_NAME_SIZE],
        };
        // SAFETY: open image; librbd fills at most `infosize` bytes.
        check(unsafe { rbd_stat(self.img, &mut info, size_of::<rbd_image_info_t>()) })?;
        Ok(Stat {
            size: info.size,
            obj_size: info.obj_size,
            num_objs: info.num_objs,
            order: info.order,
        })
    }

    pub fn features(&self) -> Result<u64, Errno> {
        let mut f = 0u64;
        // SAFETY: open image, valid out-pointer.
        check(unsafe { rbd_get_features(self.img, &mut f) })?;
        Ok(f)
    }

    /// The image flags (`RBD_FLAG_*_INVALID`).
    pub fn flags(&self) -> Result<u64, Errno> {
        let mut f = 0u64;
        // SAFETY: open image, valid out-pointer.
        check(unsafe { rbd_get_flags(self.img, &mut f) })?;
        Ok(f)
    }

    pub fn fast_diff_invalid(flags: u64) -> bool {
        flags & (RBD_FLAG_FAST_DIFF_INVALID | RBD_FLAG_OBJECT_MAP_INVALID) != 0
    }

    /// `rbd_resize` (blocking: run it off the reactor).
    pub fn resize(&self, size: u64) -> Result<(), Errno> {
        // SAFETY: open image.
        check(unsafe { rbd_resize(self.img, size) }).map(drop)
    }

    /// `rbd_diff_iterate2(NULL, off, len, include_parent, whole_object)`
    /// (blocking). `f(offset, length, exists)` sees each extent and may stop
    /// the walk with `Break`; returns `Ok(true)` if the walk was complete.
    pub fn diff_iterate(
        &self,
        off: u64,
        len: u64,
        include_parent: bool,
        whole_object: bool,
        f: &mut dyn FnMut(u64, u64, bool) -> ControlFlow<()>,
    ) -> Result<bool, Errno> {
        struct State<'a> {
            f: &'a mut dyn FnMut(u64, u64, bool) -> ControlFlow<()>,
            stopped: bool,
        }
        unsafe extern "C" fn cb(offs: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int {
            // SAFETY: `arg` is the `&mut State` below, alive for the whole
            // synchronous rbd_diff_iterate2 call, which runs callbacks one at
            // a time.
            let st = unsafe { &mut *arg.cast::<State<'_>>() };
            match (st.f)(offs, len as u64, exists != 0) {
                ControlFlow::Continue(()) => 0,
                ControlFlow::Break(()) => {
                    st.stopped = true;
                    -ECANCELED
                }
            }
        }
        let mut st = State { f, stopped: false };
        // SAFETY: open image; NULL from-snapshot (diff against nothing: the
        // allocated extents); the callback and its argument as above.
        let r = unsafe {
            rbd_diff_iterate2(
                self.img,
                ptr::null(),
                off,
                len,
                include_parent as u8,
                whole_object as u8,
                Some(cb),
                (&mut st as *mut State<'_>).cast(),
            )
        };
        match check(r) {
            Ok(_) => Ok(true),
            Err(ECANCELED) if st.stopped => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `rbd_aio_read` into `buf` (its whole length).
    pub fn aio_read<B>(&self, off: u64, buf: B) -> Result<Aio<B>, (Errno, B)>
    where
        B: AsMut<[u8]> + Send + 'static,
    {
        let img = self.img;
        self.submit(
            buf,
            |b| {
                let s = b.as_mut();
                (s.as_mut_ptr(), s.len())
            },
            // SAFETY: `p..p+len` is the op's buffer, alive and untouched by
            // Rust until completion (invariant 2); the image is open.
            |p, len, c| unsafe { rbd_aio_read(img, off, len, p.cast::<c_char>(), c) },
        )
    }

    /// `rbd_aio_write` of all of `buf`.
    pub fn aio_write<B>(&self, off: u64, buf: B) -> Result<Aio<B>, (Errno, B)>
    where
        B: AsRef<[u8]> + Send + 'static,
    {
        let img = self.img;
        self.submit(
            buf,
            |b| {
                let s = b.as_ref();
                (s.as_ptr().cast_mut(), s.len())
            },
            // SAFETY: as in aio_read; librbd only reads the buffer.
            |p, len, c| unsafe { rbd_aio_write(img, off, len, p.cast_const().cast::<c_char>(), c) },
        )
    }

    /// `rbd_aio_discard` (partial objects per `rbd_skip_partial_discard`).
    pub fn aio_discard(&self, off: u64, len: u64) -> Result<Aio<()>, Errno> {
        let img = self.img;
        // SAFETY: open image; the completion is fresh.
        self.submit((), no_buffer, |_, _, c| unsafe {
            rbd_aio_discard(img, off, len, c)
        })
        .map_err(|(e, ())| e)
    }

    /// `rbd_aio_write_zeroes`; `thick` = `RBD_WRITE_ZEROES_FLAG_THICK_PROVISION`.
    pub fn aio_write_zeroes(&self, off: u64, len: usize, thick: bool) -> Result<Aio<()>, Errno> {
        let img = self.img;
        let flags = if thick {
            RBD_WRITE_ZEROES_FLAG_THICK_PROVISION
        } else {
            0
        };
        // SAFETY: open image; the completion is fresh.
        self.submit((), no_buffer, |_, _, c| unsafe {
            rbd_aio_write_zeroes(img, off, len, c, flags, 0)
        })
        .map_err(|(e, ())| e)
    }

    /// `rbd_aio_flush`.
    pub fn aio_flush(&self) -> Result<Aio<()>, Errno> {
        let img = self.img;
        // SAFETY: open image; the completion is fresh.
        self.submit((), no_buffer, |_, _, c| unsafe { rbd_aio_flush(img, c) })
            .map_err(|(e, ())| e)
    }

    /// The one submission path (invariants 2 and 3). `region` runs the
    /// buffer's own `as_mut`/`as_ref` once, before anything is shared with
    /// librbd (so a panic there leaks nothing); `start` is only the FFI
    /// call, given that region and the completion.
    fn submit<B: Send + 'static>(
        &self,
        buf: B,
        region: impl FnOnce(&mut B) -> (*mut u8, usize),
        start: impl FnOnce(*mut u8, usize, rbd_completion_t) -> c_int,
    ) -> Result<Aio<B>, (Errno, B)> {
        let op = Arc::new(AioOp {
            slot: Mutex::new(Slot {
                ret: None,
                waker: None,
            }),
            buf: UnsafeCell::new(Some(buf)),
            inflight: Arc::clone(&self.inflight),
        });
        // SAFETY: `op` has one owner and no request exists yet: exclusive
        // access. The region stays valid: the buffer is on the heap inside
        // the op, which the callback's Arc keeps alive, and nothing moves or
        // touches it until completion.
        let (ptr, len) = region(unsafe { (*op.buf.get()).as_mut() }.expect("buffer present"));
        let arg = Arc::into_raw(Arc::clone(&op)) as *mut c_void;
        let mut c: rbd_completion_t = ptr::null_mut();
        // SAFETY: `arg` is a leaked Arc<AioOp<B>>, reclaimed by exactly one of
        // `on_complete::<B>` or the failure paths below.
        let r = unsafe { rbd_aio_create_completion(arg, Some(on_complete::<B>), &mut c) };
        if r < 0 {
            // SAFETY: no completion exists, so no callback will reclaim it.
            drop(unsafe { Arc::from_raw(arg as *const AioOp<B>) });
            return Err((-r, op.take_buf_unshared()));
        }
        self.inflight.start();
        let r = start(ptr, len, c);
        if r < 0 {
            // Invariant 3: librbd did not take the completion.
            // SAFETY: `c` is ours to release; reclaim the callback's Arc.
            unsafe {
                rbd_aio_release(c);
                drop(Arc::from_raw(arg as *const AioOp<B>));
            }
            self.inflight.finish();
            return Err((-r, op.take_buf_unshared()));
        }
        Ok(Aio { op })
    }
}

fn no_buffer(_: &mut ()) -> (*mut u8, usize) {
    (ptr::null_mut(), 0)
}

impl Drop for Image {
    fn drop(&mut self) {
        self.inflight.wait_idle();
        // SAFETY: invariant 5: no request of ours is in flight, and `&mut
        // self` means no new one can start. rbd_close flushes librbd's cache.
        unsafe { rbd_close(self.img) };
    }
}

// ---- completions ---------------------------------------------------------

struct Slot {
    ret: Option<isize>,
    waker: Option<Waker>,
}

/// One in-flight request (invariant 2).
struct AioOp<B> {
    slot: Mutex<Slot>,
    /// `Some` until the caller takes it after completion. Accessed only as
    /// invariant 2 allows.
    buf: UnsafeCell<Option<B>>,
    inflight: Arc<InFlight>,
}

// SAFETY: invariant 2: `buf` is never accessed by two threads at once (before
// sharing, by librbd during the request, after completion under the slot
// mutex's happens-before); B itself may move to the thread that drops it.
unsafe impl<B: Send> Send for AioOp<B> {}
unsafe impl<B: Send> Sync for AioOp<B> {}

impl<B> AioOp<B> {
    /// The buffer of an op that was never submitted (the caller's Arc is
    /// the only one left).
    fn take_buf_unshared(self: Arc<Self>) -> B {
        match Arc::try_unwrap(self) {
            Ok(op) => op.buf.into_inner().expect("buffer present until taken"),
            Err(_) => unreachable!("an unsubmitted request has one owner"),
        }
    }
}

/// The completion callback (invariant 4). Runs on a librbd thread.
unsafe extern "C" fn on_complete<B: Send + 'static>(c: rbd_completion_t, arg: *mut c_void) {
    // SAFETY: `c` is the completion we created; reading its value and
    // releasing it inside the callback is allowed (QEMU does the same).
    let ret = unsafe { rbd_aio_get_return_value(c) };
    unsafe { rbd_aio_release(c) };
    // SAFETY: `arg` is the Arc leaked in `submit` for this completion.
    let op = unsafe { Arc::from_raw(arg as *const AioOp<B>) };
    let waker = {
        let mut slot = lock(&op.slot);
        slot.ret = Some(ret);
        slot.waker.take()
    };
    op.inflight.finish();
    if let Some(w) = waker {
        w.wake();
    }
    // Dropping `op` may drop the buffer here if the caller gave up waiting.
}

/// The caller's side of one request.
pub struct Aio<B> {
    op: Arc<AioOp<B>>,
}

impl<B> Aio<B> {
    /// `Ready((return value, buffer))` once librbd completed the request.
    /// Call it again after `Ready` and it panics: the buffer has been given
    /// back.
    pub fn poll_complete(&self, cx: &mut Context<'_>) -> Poll<(isize, B)> {
        let mut slot = lock(&self.op.slot);
        match slot.ret {
            Some(ret) => {
                drop(slot);
                // SAFETY: invariant 2(b): the callback stored `ret` under the
                // mutex we just held, after librbd's last access to the
                // buffer; nothing else touches it now.
                let buf = unsafe { (*self.op.buf.get()).take() };
                Poll::Ready((ret, buf.expect("request polled after completion")))
            }
            None => {
                match &slot.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => slot.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }
}
