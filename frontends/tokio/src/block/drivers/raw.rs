//! `raw`: the child as it is, or a window of it (`offset`, `size`), as
//! QEMU's raw format driver.

use std::io;
use std::sync::Arc;

use blockwire_core::block::raw_window::RawWindow;

use crate::block::io::Io;
use crate::block::node::{Child, Driver, DriverInfo, Node, Status, Zeroes, invalid};

pub struct Raw {
    file: Arc<Node>,
    offset: u64,
    size: Option<u64>,
}

impl Raw {
    /// Checks the window against the child as QEMU does.
    pub fn new(file: Arc<Node>, offset: u64, size: Option<u64>) -> io::Result<Self> {
        let raw = Self { file, offset, size };
        raw.window()?;
        Ok(raw)
    }

    /// The window over the child's current size: without `size` it
    /// follows the child (a resize shows through).
    fn window(&self) -> io::Result<RawWindow> {
        let child = self.file.size();
        RawWindow::new(child, self.offset, self.size).map_err(|_| {
            match self.size {
                Some(s) if s % 512 != 0 => invalid("Specified size is not multiple of 512"),
                Some(s) => invalid(format!(
                    // QEMU's words, its double space included.
                    "The sum of offset ({}) and size ({s}) has to be smaller or equal to the  actual size of the containing file ({child})",
                    self.offset
                )),
                None => invalid(format!(
                    "Offset ({}) cannot be greater than size of the containing file ({child})",
                    self.offset
                )),
            }
        })
    }
}

impl Driver for Raw {
    fn driver_name(&self) -> &'static str {
        "raw"
    }

    fn info(&self) -> DriverInfo {
        self.file.info()
    }

    fn size(&self) -> u64 {
        self.window().map(|w| w.size()).unwrap_or(0)
    }

    fn children(&self) -> Vec<Child> {
        vec![Child {
            role: "file",
            node: self.file.clone(),
        }]
    }

    fn filename(&self) -> String {
        self.file.filename()
    }

    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> Io<'a, ()> {
        self.file.read(self.offset + offset, buf)
    }

    fn write<'a>(&'a self, offset: u64, data: &'a [u8], fua: bool) -> Io<'a, ()> {
        self.file.write(self.offset + offset, data, fua)
    }

    fn flush(&self) -> Io<'_, ()> {
        self.file.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> Io<'_, ()> {
        self.file.discard(self.offset + offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, z: Zeroes) -> Io<'_, ()> {
        self.file.write_zeroes(self.offset + offset, len, z)
    }

    fn cache(&self, offset: u64, len: u64) -> Io<'_, ()> {
        self.file.cache(self.offset + offset, len)
    }

    fn block_status<'a>(&'a self, offset: u64, len: u64, out: &'a mut Vec<Status>) -> Io<'a, ()> {
        self.file.block_status(self.offset + offset, len, out)
    }

    /// A raw node without a window resizes its child; a window is fixed.
    fn resize(&self, size: u64) -> Io<'_, ()> {
        if self.offset != 0 || self.size.is_some() {
            return Io::err(invalid(
                "Cannot resize a raw node with a fixed offset or size",
            ));
        }
        self.file.resize(size)
    }
}
