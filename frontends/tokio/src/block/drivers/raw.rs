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
    probed: bool,
}

/// Bytes at the start that format probing looks at (QEMU's first sector
/// check, `BLOCK_PROBE_BUF_SIZE` is larger, but a qcow2 magic is in the
/// first four bytes).
const PROBED_SECTOR: u64 = 512;

impl Raw {
    /// Checks the window against the child as QEMU does.
    pub fn new(file: Arc<Node>, offset: u64, size: Option<u64>) -> io::Result<Self> {
        let raw = Self {
            file,
            offset,
            size,
            probed: false,
        };
        raw.window()?;
        Ok(raw)
    }

    /// The format was probed: refuse writes that would make the first
    /// sector probe as qcow2 (QEMU's raw driver on a probed image; else a
    /// guest could write a qcow2 header naming any host file as its
    /// backing file, to be opened at the next start).
    pub fn probed(mut self, probed: bool) -> Self {
        self.probed = probed;
        self
    }

    /// The first sector as it would be after writing `data` at `offset`.
    async fn probes_as_other_format(&self, offset: u64, data: &[u8]) -> std::io::Result<bool> {
        let mut first = [0u8; PROBED_SECTOR as usize];
        let n = (self.size().min(PROBED_SECTOR)) as usize;
        if offset > 0 || (data.len() as u64) < n as u64 {
            self.file.read(self.offset, &mut first[..n]).wait().await?;
        }
        let within = (n as u64).saturating_sub(offset) as usize;
        let k = within.min(data.len());
        first[offset as usize..offset as usize + k].copy_from_slice(&data[..k]);
        Ok(&first[..4] == super::qcow2::MAGIC)
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
        if self.probed && offset < PROBED_SECTOR && !data.is_empty() {
            return Io::pending(async move {
                if self.probes_as_other_format(offset, data).await? {
                    return Err(std::io::Error::from_raw_os_error(libc::EPERM));
                }
                self.file
                    .write(self.offset + offset, data, fua)
                    .wait()
                    .await
            });
        }
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
