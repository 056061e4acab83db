//! `throttle`: requests to the child wait for their turn in a throttle
//! group, which several throttle nodes may share.

use std::sync::Arc;

use blockwire_core::block::throttle::Direction;

use crate::block::io::Io;
use crate::block::node::{Child, Driver, DriverInfo, Node, Status, Zeroes};
use crate::block::throttle_group::ThrottleGroup;

pub struct Throttle {
    file: Arc<Node>,
    group: Arc<ThrottleGroup>,
}

impl Throttle {
    pub fn new(file: Arc<Node>, group: Arc<ThrottleGroup>) -> Self {
        Self { file, group }
    }

    pub fn group(&self) -> &Arc<ThrottleGroup> {
        &self.group
    }

    /// Runs `then` once the group admits a request of `bytes`: at once if
    /// it does now, else after waiting (as often as the group says).
    fn admitted<'a, T: Send + 'a>(
        &'a self,
        dir: Direction,
        bytes: u64,
        then: impl FnOnce() -> Io<'a, T> + Send + 'a,
    ) -> Io<'a, T> {
        let Some(mut wait) = self.group.admit(dir, bytes) else {
            return then();
        };
        Io::pending(async move {
            loop {
                tokio::time::sleep(wait).await;
                match self.group.admit(dir, bytes) {
                    None => break,
                    Some(w) => wait = w,
                }
            }
            then().wait().await
        })
    }
}

impl Driver for Throttle {
    fn driver_name(&self) -> &'static str {
        "throttle"
    }

    fn info(&self) -> DriverInfo {
        DriverInfo {
            waits: true,
            ..self.file.info()
        }
    }

    fn size(&self) -> u64 {
        self.file.size()
    }

    fn children(&self) -> Vec<Child> {
        vec![Child {
            role: "file",
            node: self.file.clone(),
        }]
    }

    fn filename(&self) -> String {
        format!(
            "json:{{\"driver\": \"throttle\", \"throttle-group\": \"{}\", \"file\": \"{}\"}}",
            self.group.id(),
            self.file.name()
        )
    }

    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> Io<'a, ()> {
        let n = buf.len() as u64;
        self.admitted(Direction::Read, n, move || self.file.read(offset, buf))
    }

    fn write<'a>(&'a self, offset: u64, data: &'a [u8], fua: bool) -> Io<'a, ()> {
        self.admitted(Direction::Write, data.len() as u64, move || {
            self.file.write(offset, data, fua)
        })
    }

    /// Flushes are not throttled (QEMU throttles reads and writes only).
    fn flush(&self) -> Io<'_, ()> {
        self.file.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> Io<'_, ()> {
        self.admitted(Direction::Write, len, move || {
            self.file.discard(offset, len)
        })
    }

    fn write_zeroes(&self, offset: u64, len: u64, z: Zeroes) -> Io<'_, ()> {
        self.admitted(Direction::Write, len, move || {
            self.file.write_zeroes(offset, len, z)
        })
    }

    fn cache(&self, offset: u64, len: u64) -> Io<'_, ()> {
        self.file.cache(offset, len)
    }

    fn block_status<'a>(&'a self, offset: u64, len: u64, out: &'a mut Vec<Status>) -> Io<'a, ()> {
        self.file.block_status(offset, len, out)
    }

    fn resize(&self, size: u64) -> Io<'_, ()> {
        self.file.resize(size)
    }
}
