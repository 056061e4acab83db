//! The `sys` interface in a build without the `librbd` feature: the same
//! types, uninhabited, so that the safe layer compiles unchanged. Nothing
//! can reach them: `Cluster::connect` returns `cluster::not_built()` first,
//! and without a `Cluster` no image can exist.

use std::ffi::CStr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::task::{Context, Poll};

pub type Errno = i32;

pub enum Never {}

pub fn librbd_version() -> (i32, i32, i32) {
    (0, 0, 0)
}

pub struct Rados(Never);

impl Rados {
    pub fn create(_name: &CStr) -> Result<Rados, Errno> {
        Err(38) // ENOSYS
    }
    pub fn read_conf_file(&mut self, _path: Option<&CStr>) -> Result<(), Errno> {
        match self.0 {}
    }
    pub fn conf_set(&mut self, _option: &CStr, _value: &CStr) -> Result<(), Errno> {
        match self.0 {}
    }
    pub fn conf_get(&self, _option: &CStr) -> Result<String, Errno> {
        match self.0 {}
    }
    pub fn connect(&mut self) -> Result<(), Errno> {
        match self.0 {}
    }
}

pub struct IoCtx(Never);

impl IoCtx {
    pub fn create(cluster: &Arc<Rados>, _pool: &CStr) -> Result<IoCtx, Errno> {
        match cluster.0 {}
    }
    pub fn set_namespace(&mut self, _namespace: &CStr) {
        match self.0 {}
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub size: u64,
    pub obj_size: u64,
    pub num_objs: u64,
    pub order: i32,
}

pub struct Image(Never);

impl Image {
    pub fn open(
        io: IoCtx,
        _name: &CStr,
        _snapshot: Option<&CStr>,
        _read_only: bool,
    ) -> Result<Image, Errno> {
        match io.0 {}
    }
    pub fn stat(&self) -> Result<Stat, Errno> {
        match self.0 {}
    }
    pub fn features(&self) -> Result<u64, Errno> {
        match self.0 {}
    }
    pub fn flags(&self) -> Result<u64, Errno> {
        match self.0 {}
    }
    pub fn fast_diff_invalid(_flags: u64) -> bool {
        false
    }
    pub fn resize(&self, _size: u64) -> Result<(), Errno> {
        match self.0 {}
    }
    pub fn diff_iterate(
        &self,
        _off: u64,
        _len: u64,
        _include_parent: bool,
        _whole_object: bool,
        _f: &mut dyn FnMut(u64, u64, bool) -> ControlFlow<()>,
    ) -> Result<bool, Errno> {
        match self.0 {}
    }
    pub fn aio_read<B>(&self, _off: u64, _buf: B) -> Result<Aio<B>, (Errno, B)> {
        match self.0 {}
    }
    pub fn aio_write<B>(&self, _off: u64, _buf: B) -> Result<Aio<B>, (Errno, B)> {
        match self.0 {}
    }
    pub fn aio_discard(&self, _off: u64, _len: u64) -> Result<Aio<()>, Errno> {
        match self.0 {}
    }
    pub fn aio_write_zeroes(&self, _off: u64, _len: usize, _thick: bool) -> Result<Aio<()>, Errno> {
        match self.0 {}
    }
    pub fn aio_flush(&self) -> Result<Aio<()>, Errno> {
        match self.0 {}
    }
}

pub struct Aio<B>(Never, std::marker::PhantomData<B>);

impl<B> Aio<B> {
    pub fn poll_complete(&self, _cx: &mut Context<'_>) -> Poll<(isize, B)> {
        match self.0 {}
    }
}
