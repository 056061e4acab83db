//! A device that reads zeroes and forgets writes (nbdkit's `null`), for
//! benchmarking the protocol path without storage in the way.

use std::io;
use std::time::Duration;

use blockwire_core::block::contract::{STATE_HOLE, STATE_ZERO};

use super::{Backend, Caps};

pub struct NullBackend {
    size: u64,
    latency: Option<Duration>,
}

impl NullBackend {
    pub fn new(size: u64, latency: Option<Duration>) -> Self {
        Self { size, latency }
    }
}

impl Backend for NullBackend {
    fn size(&self) -> u64 {
        self.size
    }
    fn caps(&self) -> Caps {
        Caps {
            read_only: false,
            trim: true,
            fast_zero: true,
            blocking: false,
            sparse_reads: true,
        }
    }
    fn read(&self, _offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write(&self, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    fn trim(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    fn write_zeroes(&self, _: u64, _: u64, _: bool, _: bool) -> io::Result<()> {
        Ok(())
    }
    fn cache(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    fn allocation(
        &self,
        _offset: u64,
        len: u64,
        sink: &mut dyn FnMut(u64, u64) -> bool,
    ) -> io::Result<()> {
        sink(len, STATE_HOLE | STATE_ZERO);
        Ok(())
    }
    fn latency(&self) -> Option<Duration> {
        self.latency
    }
}
