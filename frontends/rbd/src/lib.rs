//! Ceph RBD images for blockwire, on librbd's C API.
//!
//! * [`Cluster::connect`] with [`ClusterOptions`] (QEMU's `rbd` options:
//!   `conf`, `user`, `key-secret`, `server`, `auth-client-required`, plus a
//!   connect timeout that bounds unreachable monitors and a settable OSD
//!   request timeout).
//! * [`Cluster::open`] an [`ImageSpec`] (`pool`, `namespace`, `image`,
//!   `snapshot` → read-only) → [`Image`]: [`Image::opened_info`] /
//!   [`Image::info`] (size, object size, features such as exclusive-lock),
//!   and the requests NBD needs: [`Image::read`], [`Image::write`],
//!   [`Image::flush`], [`Image::discard`], [`Image::write_zeroes`],
//!   [`Image::allocation`] (`rbd_diff_iterate2`, whole objects),
//!   [`Image::resize`].
//!
//! Data requests are `rbd_aio_*` with a completion callback that wakes the
//! waiting future: no thread per request. A request owns its buffer until
//! librbd is done with it, whether or not its future is still alive, so
//! dropping a future mid-flight is safe. librbd calls that block run on one
//! worker thread per image. All `unsafe` code is in the private `sys`
//! module, with its invariants; everything else is safe (`deny(unsafe_code)`).
//!
//! Without the `librbd` cargo feature the crate builds without librbd-dev and
//! [`Cluster::connect`] fails with "built without librbd" ([`AVAILABLE`] is
//! false).

#![deny(unsafe_code)]

mod cluster;
mod error;
mod features;
mod image;
mod lane;
mod oneshot;
mod options;

#[cfg(feature = "librbd")]
#[allow(unsafe_code)]
mod sys;
#[cfg(not(feature = "librbd"))]
#[path = "sys_absent.rs"]
mod sys;

pub use cluster::{AVAILABLE, Cluster, not_built};
pub use error::{RbdError, errno};
pub use features::*;
pub use image::{Allocation, Extent, Image, ImageInfo, Request, ZeroMode};
pub use lane::wait_closed;
pub use options::{AuthMode, ClusterOptions, ImageSpec, MonAddr, Secret};

/// The linked librbd's version (`rbd_version`), `(0, 0, 0)` without the
/// `librbd` feature.
pub fn librbd_version() -> (i32, i32, i32) {
    sys::librbd_version()
}
