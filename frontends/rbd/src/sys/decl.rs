//! The C declarations this crate uses from `rados/librados.h` and
//! `rbd/librbd.h` (Debian's librbd-dev, librbd 1.16 /
//! Ceph 16 "pacific"), written by hand rather than generated, so that
//! building needs no libclang.
//!
//! `tests/header_abi.rs` parses this file and has the C compiler check every
//! item against the real headers: each function's full type
//! (`__builtin_types_compatible_p` against `__typeof__(&f)`), each typedef,
//! each constant's value, and the size, member offsets and member types of
//! each struct (every `pub type` names a typedef of the headers; the feature bits of `rbd/features.h` are in the always-built
//! `crate::features` and checked the same way). Keep to the forms that test understands: `pub type`,
//! `pub const`, `#[repr(C)] pub struct`, and functions in `unsafe extern "C"`
//! blocks with the primitive types below.
//!
//! Type mapping (x86-64 and aarch64 Linux, the platforms Debian ships
//! librbd for): `int` = `c_int`, `size_t` = `usize`, `ssize_t` = `isize`,
//! `uintN_t` = `uN`, `char` = `c_char`.

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void};

// ---- librados.h ------------------------------------------------------------

/// A cluster handle (`typedef void *rados_t`).
pub type rados_t = *mut c_void;
/// An I/O context: one pool (and namespace) of a cluster.
pub type rados_ioctx_t = *mut c_void;

#[link(name = "rados")]
unsafe extern "C" {
    pub fn rados_create2(
        pcluster: *mut rados_t,
        clustername: *const c_char,
        name: *const c_char,
        flags: u64,
    ) -> c_int;
    pub fn rados_conf_read_file(cluster: rados_t, path: *const c_char) -> c_int;
    pub fn rados_conf_set(cluster: rados_t, option: *const c_char, value: *const c_char) -> c_int;
    pub fn rados_conf_get(
        cluster: rados_t,
        option: *const c_char,
        buf: *mut c_char,
        len: usize,
    ) -> c_int;
    pub fn rados_connect(cluster: rados_t) -> c_int;
    pub fn rados_shutdown(cluster: rados_t);
    pub fn rados_ioctx_create(
        cluster: rados_t,
        pool_name: *const c_char,
        ioctx: *mut rados_ioctx_t,
    ) -> c_int;
    pub fn rados_ioctx_destroy(io: rados_ioctx_t);
    pub fn rados_ioctx_set_namespace(io: rados_ioctx_t, nspace: *const c_char);
}

// ---- librbd.h ----------------------------------------------------------------

/// An open image (`typedef void *rbd_image_t`).
pub type rbd_image_t = *mut c_void;
/// An asynchronous request's completion (`typedef void *rbd_completion_t`).
pub type rbd_completion_t = *mut c_void;
/// `typedef void (*rbd_callback_t)(rbd_completion_t cb, void *arg)`.
pub type rbd_callback_t = Option<unsafe extern "C" fn(cb: rbd_completion_t, arg: *mut c_void)>;

pub const RBD_MAX_BLOCK_NAME_SIZE: usize = 24;
pub const RBD_MAX_IMAGE_NAME_SIZE: usize = 96;

/// What `rbd_stat` fills in (the deprecated members are kept for layout).
#[repr(C)]
pub struct rbd_image_info_t {
    pub size: u64,
    pub obj_size: u64,
    pub num_objs: u64,
    pub order: c_int,
    pub block_name_prefix: [c_char; RBD_MAX_BLOCK_NAME_SIZE],
    pub parent_pool: i64,
    pub parent_name: [c_char; RBD_MAX_IMAGE_NAME_SIZE],
}

pub const RBD_FLAG_OBJECT_MAP_INVALID: u64 = 1 << 0;
pub const RBD_FLAG_FAST_DIFF_INVALID: u64 = 1 << 1;

/// `rbd_aio_write_zeroes` flag: allocate zeroed data instead of a hole.
pub const RBD_WRITE_ZEROES_FLAG_THICK_PROVISION: c_int = 1 << 0;

#[link(name = "rbd")]
unsafe extern "C" {
    pub fn rbd_version(major: *mut c_int, minor: *mut c_int, extra: *mut c_int);
    pub fn rbd_open(
        io: rados_ioctx_t,
        name: *const c_char,
        image: *mut rbd_image_t,
        snap_name: *const c_char,
    ) -> c_int;
    pub fn rbd_open_read_only(
        io: rados_ioctx_t,
        name: *const c_char,
        image: *mut rbd_image_t,
        snap_name: *const c_char,
    ) -> c_int;
    pub fn rbd_close(image: rbd_image_t) -> c_int;
    pub fn rbd_stat(image: rbd_image_t, info: *mut rbd_image_info_t, infosize: usize) -> c_int;
    pub fn rbd_get_features(image: rbd_image_t, features: *mut u64) -> c_int;
    pub fn rbd_get_flags(image: rbd_image_t, flags: *mut u64) -> c_int;
    pub fn rbd_resize(image: rbd_image_t, size: u64) -> c_int;
    pub fn rbd_diff_iterate2(
        image: rbd_image_t,
        fromsnapname: *const c_char,
        ofs: u64,
        len: u64,
        include_parent: u8,
        whole_object: u8,
        cb: Option<
            unsafe extern "C" fn(offs: u64, len: usize, exists: c_int, arg: *mut c_void) -> c_int,
        >,
        arg: *mut c_void,
    ) -> c_int;

    pub fn rbd_aio_create_completion(
        cb_arg: *mut c_void,
        complete_cb: rbd_callback_t,
        c: *mut rbd_completion_t,
    ) -> c_int;
    pub fn rbd_aio_get_return_value(c: rbd_completion_t) -> isize;
    pub fn rbd_aio_release(c: rbd_completion_t);
    pub fn rbd_aio_read(
        image: rbd_image_t,
        off: u64,
        len: usize,
        buf: *mut c_char,
        c: rbd_completion_t,
    ) -> c_int;
    pub fn rbd_aio_write(
        image: rbd_image_t,
        off: u64,
        len: usize,
        buf: *const c_char,
        c: rbd_completion_t,
    ) -> c_int;
    pub fn rbd_aio_discard(image: rbd_image_t, off: u64, len: u64, c: rbd_completion_t) -> c_int;
    pub fn rbd_aio_write_zeroes(
        image: rbd_image_t,
        off: u64,
        len: usize,
        c: rbd_completion_t,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> c_int;
    pub fn rbd_aio_flush(image: rbd_image_t, c: rbd_completion_t) -> c_int;
}
