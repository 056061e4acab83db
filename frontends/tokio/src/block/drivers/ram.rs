//! `blockwire-ram`: a sparse RAM disk with exact `base:allocation`.
//!
//! Data lives in 64 KiB chunks allocated on first write, in sharded maps
//! so that requests on different chunks rarely contend. The allocation
//! state of each chunk is kept by the core's [`AllocMap`] at the same
//! granularity; a chunk's data and its map entry are only changed under
//! that chunk's shard lock, so the map can never claim zeroes where data
//! was written, whatever clients send concurrently.

use std::collections::HashMap;
use std::io;
use std::sync::{Mutex, RwLock};

use blockwire_core::block::alloc_map::{AllocMap, AllocState};

use crate::block::io::Io;
use crate::block::node::{Driver, DriverInfo, Status, Zeroes};

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// Bytes per chunk, and the allocation map's granularity.
pub const CHUNK: u64 = 64 << 10;
const SHARDS: usize = 64;

type Shard = RwLock<HashMap<u64, Box<[u8]>>>;

pub struct Ram {
    size: u64,
    shards: Box<[Shard]>,
    map: Mutex<AllocMap<Vec<u64>>>,
}

impl Ram {
    /// A disk of `size` bytes reading as zeroes, every chunk a hole.
    pub fn new(size: u64) -> io::Result<Self> {
        let map = AllocMap::new_vec(size, CHUNK, AllocState::HoleZero).map_err(|e| {
            io::Error::other(format!(
                "cannot track allocation of a {size}-byte memory disk: {e:?}"
            ))
        })?;
        Ok(Self {
            size,
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            map: Mutex::new(map),
        })
    }

    fn shard(&self, chunk: u64) -> &Shard {
        &self.shards[(chunk % SHARDS as u64) as usize]
    }

    /// Bytes of chunks currently allocated.
    pub fn allocated_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).len() as u64 * CHUNK)
            .sum()
    }

    /// Calls `f(chunk, offset within chunk, range start, length)` for each
    /// chunk piece of `[offset, offset+len)`.
    fn pieces(
        offset: u64,
        len: u64,
        mut f: impl FnMut(u64, usize, u64, usize) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let chunk = pos / CHUNK;
            let within = pos % CHUNK;
            let n = (CHUNK - within).min(end - pos);
            f(chunk, within as usize, pos, n as usize)?;
            pos += n;
        }
        Ok(())
    }

    fn mark(
        &self,
        f: impl FnOnce(
            &mut AllocMap<Vec<u64>>,
        ) -> Result<(), blockwire_core::block::contract::BlockError>,
    ) -> io::Result<()> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut map).map_err(|_| errno(libc::EINVAL))
    }

    /// Zero or trim: whole chunks are freed, partial ones zeroed in place
    /// when `zero_partial`.
    fn clear(
        &self,
        offset: u64,
        len: u64,
        zero_partial: bool,
        mark: impl Fn(
            &mut AllocMap<Vec<u64>>,
            u64,
            u64,
        ) -> Result<(), blockwire_core::block::contract::BlockError>,
    ) -> io::Result<()> {
        Self::pieces(offset, len, |chunk, within, pos, n| {
            let mut shard = self.shard(chunk).write().unwrap_or_else(|p| p.into_inner());
            let chunk_len = CHUNK.min(self.size - chunk * CHUNK) as usize;
            if within == 0 && n == chunk_len {
                shard.remove(&chunk);
            } else if zero_partial {
                if let Some(c) = shard.get_mut(&chunk) {
                    c[within..within + n].fill(0);
                }
            }
            self.mark(|m| mark(m, pos, n as u64))
        })
    }
}

impl Ram {
    fn read_sync(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut at = 0usize;
        Self::pieces(offset, buf.len() as u64, |chunk, within, _, n| {
            let dst = &mut buf[at..at + n];
            at += n;
            let shard = self.shard(chunk).read().unwrap_or_else(|p| p.into_inner());
            match shard.get(&chunk) {
                Some(c) => dst.copy_from_slice(&c[within..within + n]),
                None => dst.fill(0),
            }
            Ok(())
        })
    }

    fn write_sync(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut at = 0usize;
        Self::pieces(offset, data.len() as u64, |chunk, within, pos, n| {
            let src = &data[at..at + n];
            at += n;
            let mut shard = self.shard(chunk).write().unwrap_or_else(|p| p.into_inner());
            let c = shard
                .entry(chunk)
                .or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
            c[within..within + n].copy_from_slice(src);
            self.mark(|m| m.mark_data(pos, n as u64))
        })
    }

    fn status_sync(&self, offset: u64, len: u64, out: &mut Vec<Status>) -> io::Result<()> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let q =
            blockwire_core::block::contract::StatusQuery::new(offset, len).max_extent_len(u64::MAX);
        map.block_status(&q, &mut |e| {
            out.push(Status {
                len: e.length,
                flags: e.flags,
                depth: 1,
            });
            true
        })
        .map(|_| ())
        .map_err(|_| errno(libc::EINVAL))
    }
}

impl Driver for Ram {
    fn driver_name(&self) -> &'static str {
        "blockwire-ram"
    }

    fn info(&self) -> DriverInfo {
        DriverInfo {
            fast_zero: true,
            sparse: true,
            ..DriverInfo::default()
        }
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn filename(&self) -> String {
        format!("blockwire-ram://{}", self.size)
    }

    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> Io<'a, ()> {
        Io::from_result(self.read_sync(offset, buf))
    }

    fn write<'a>(&'a self, offset: u64, data: &'a [u8], _fua: bool) -> Io<'a, ()> {
        Io::from_result(self.write_sync(offset, data))
    }

    fn flush(&self) -> Io<'_, ()> {
        Io::ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Io<'_, ()> {
        Io::from_result(self.clear(offset, len, false, |m, o, l| m.mark_hole(o, l, true)))
    }

    fn write_zeroes(&self, offset: u64, len: u64, z: Zeroes) -> Io<'_, ()> {
        // Freed chunks read as zeroes either way; NO_HOLE only changes what
        // block status reports (allocated zeroes rather than a hole).
        Io::from_result(self.clear(offset, len, true, |m, o, l| m.mark_zero(o, l, z.may_unmap)))
    }

    fn block_status<'a>(&'a self, offset: u64, len: u64, out: &'a mut Vec<Status>) -> Io<'a, ()> {
        Io::from_result(self.status_sync(offset, len, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(m: &Ram, offset: u64, len: u64) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        m.status_sync(offset, len, &mut v).unwrap();
        v.iter().map(|s| (s.len, s.flags)).collect()
    }

    #[test]
    fn fresh_disk_is_one_zero_hole() {
        let m = Ram::new(1 << 20).unwrap();
        assert_eq!(runs(&m, 0, 1 << 20), vec![(1 << 20, 3)]);
        let mut buf = vec![1u8; 4096];
        m.read_sync(12345, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn write_across_chunks_reads_back_and_allocates() {
        let m = Ram::new(1 << 20).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        m.write_sync(CHUNK - 10, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        m.read_sync(CHUNK - 10, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(
            runs(&m, 0, 1 << 20),
            vec![(3 * CHUNK, 0), ((1 << 20) - 3 * CHUNK, 3)]
        );
        assert_eq!(m.allocated_bytes(), 3 * CHUNK);
    }

    #[test]
    fn trim_frees_whole_chunks_only() {
        let m = Ram::new(4 * CHUNK).unwrap();
        m.write_sync(0, &vec![0xab; (4 * CHUNK) as usize]).unwrap();
        m.clear(CHUNK / 2, 2 * CHUNK, false, |m, o, l| {
            m.mark_hole(o, l, true)
        })
        .unwrap();
        assert_eq!(m.allocated_bytes(), 3 * CHUNK);
        assert_eq!(
            runs(&m, 0, 4 * CHUNK),
            vec![(CHUNK, 0), (CHUNK, 3), (2 * CHUNK, 0)]
        );
        // The partial pieces keep their data: trim is advisory.
        let mut b = [0u8; 1];
        m.read_sync(CHUNK / 2, &mut b).unwrap();
        assert_eq!(b[0], 0xab);
    }

    #[test]
    fn write_zeroes_zeroes_partials_and_honours_no_hole() {
        let m = Ram::new(4 * CHUNK).unwrap();
        m.write_sync(0, &vec![0xcd; (4 * CHUNK) as usize]).unwrap();
        m.clear(10, 2 * CHUNK, true, |m, o, l| m.mark_zero(o, l, false))
            .unwrap();
        let mut buf = vec![1u8; (2 * CHUNK) as usize];
        m.read_sync(10, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        let mut edge = [0u8; 2];
        m.read_sync(8, &mut edge).unwrap();
        assert_eq!(edge, [0xcd, 0xcd]);
        // Chunk 1 fully covered, allocated-zero because NO_HOLE.
        assert_eq!(runs(&m, CHUNK, CHUNK), vec![(CHUNK, 2)]);
        m.clear(3 * CHUNK, CHUNK, true, |m, o, l| m.mark_zero(o, l, true))
            .unwrap();
        assert_eq!(runs(&m, 3 * CHUNK, CHUNK), vec![(CHUNK, 3)]);
    }

    #[test]
    fn short_last_chunk() {
        let size = CHUNK + 512;
        let m = Ram::new(size).unwrap();
        m.write_sync(CHUNK, &[7u8; 512]).unwrap();
        assert_eq!(runs(&m, 0, size), vec![(CHUNK, 3), (512, 0)]);
        m.clear(CHUNK, 512, false, |m, o, l| m.mark_hole(o, l, true))
            .unwrap();
        assert_eq!(runs(&m, 0, size), vec![(size, 3)]);
        assert_eq!(m.allocated_bytes(), 0);
    }
}
