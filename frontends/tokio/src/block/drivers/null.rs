//! `null-co`: reads return zeroes, writes are forgotten; for measuring the
//! protocol path without storage in the way. `latency-ns` delays every
//! request, as QEMU's does.

use std::time::Duration;

use blockwire_core::block::contract::{STATE_HOLE, STATE_ZERO};

use crate::block::io::Io;
use crate::block::node::{Driver, DriverInfo, Status, Zeroes};

pub struct NullCo {
    size: u64,
    latency: Option<Duration>,
    read_zeroes: bool,
}

impl NullCo {
    pub fn new(size: u64, latency_ns: u64, read_zeroes: bool) -> Self {
        Self {
            size,
            latency: (latency_ns > 0).then(|| Duration::from_nanos(latency_ns)),
            read_zeroes,
        }
    }

    fn done<'a>(&self, then: impl FnOnce() + Send + 'a) -> Io<'a, ()> {
        match self.latency {
            None => {
                then();
                Io::ok(())
            }
            Some(d) => Io::pending(async move {
                tokio::time::sleep(d).await;
                then();
                Ok(())
            }),
        }
    }
}

impl Driver for NullCo {
    fn driver_name(&self) -> &'static str {
        "null-co"
    }

    fn info(&self) -> DriverInfo {
        DriverInfo {
            waits: self.latency.is_some(),
            fast_zero: true,
            sparse: self.read_zeroes,
            ..DriverInfo::default()
        }
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn filename(&self) -> String {
        "null-co://".into()
    }

    /// With `read-zeroes=off` QEMU leaves the buffer as it was; a server
    /// must never send one client's stale data to another, so the buffer
    /// is zeroed anyway, and only block status says "data" instead of
    /// "zero", as QEMU's does.
    fn read<'a>(&'a self, _offset: u64, buf: &'a mut [u8]) -> Io<'a, ()> {
        self.done(move || buf.fill(0))
    }

    fn write<'a>(&'a self, _: u64, _: &'a [u8], _: bool) -> Io<'a, ()> {
        self.done(|| {})
    }

    fn flush(&self) -> Io<'_, ()> {
        self.done(|| {})
    }

    fn discard(&self, _: u64, _: u64) -> Io<'_, ()> {
        self.done(|| {})
    }

    fn write_zeroes(&self, _: u64, _: u64, _: Zeroes) -> Io<'_, ()> {
        self.done(|| {})
    }

    fn block_status<'a>(&'a self, _: u64, len: u64, out: &'a mut Vec<Status>) -> Io<'a, ()> {
        let flags = if self.read_zeroes {
            STATE_HOLE | STATE_ZERO
        } else {
            0
        };
        out.push(Status {
            len,
            flags,
            depth: 1,
        });
        Io::ok(())
    }
}
