//! A compact disk image format for tests and the fuzzer: a disk of many
//! mostly-zero sectors written as only the non-zero ones. Little endian:
//! `u64` disk size, then records of `u64` byte offset (a multiple of 512)
//! and 512 bytes of data. A later record for a sector replaces an earlier
//! one; sectors with no record read as zeros. A trailing partial record
//! is ignored.

use crate::Disk;

pub const SECTOR: usize = 512;
const RECORD: usize = 8 + SECTOR;

pub struct Sparse<'a> {
    size: u64,
    records: &'a [u8],
}

impl<'a> Sparse<'a> {
    /// `None` if `image` has no size header.
    pub fn new(image: &'a [u8], max_size: u64) -> Option<Self> {
        let size = u64::from_le_bytes(image.get(..8)?.try_into().ok()?).min(max_size);
        let body = &image[8..];
        Some(Sparse {
            size,
            records: &body[..body.len() - body.len() % RECORD],
        })
    }

    fn sector(&self, at: u64) -> Option<&'a [u8]> {
        self.records
            .chunks_exact(RECORD)
            .rev()
            .find(|r| r[..8] == at.to_le_bytes())
            .map(|r| &r[8..])
    }
}

impl Disk for Sparse<'_> {
    type Error = &'static str;
    fn size(&self) -> u64 {
        self.size
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), &'static str> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.size)
        {
            return Err("read past the end of the disk");
        }
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let base = at - at % SECTOR as u64;
            let within = (at - base) as usize;
            let n = (SECTOR - within).min(buf.len() - done);
            match self.sector(base) {
                Some(s) => buf[done..done + n].copy_from_slice(&s[within..within + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
        Ok(())
    }
}
