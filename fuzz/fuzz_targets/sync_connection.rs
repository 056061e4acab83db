//! The bare-metal server path: the core's `server::sync::SyncConnection`
//! (machine, request execution, read streaming, reply slot) over a RAM
//! device and an in-memory transport, after the fixed valid handshake of
//! `server_transmission`, with arbitrary request bytes in arbitrary splits.
//! It must never panic, never overfill the send buffer, and, once the
//! client has closed, always finish (or break): a slot that never frees is
//! the bug this target looks for.
//!
//! Input: configuration byte, four split sizes, request bytes.
//! Configuration bits: 0-4 as `server_transmission` (header mode, export,
//! metadata contexts); 5-6 send-buffer size (61, 512, 4096, 65536 bytes);
//! 7 reads fail past half the device.
#![no_main]

use blockwire_core::block::BlockDevice;
use blockwire_core::block::contract::{BlockError, Limits, Op};
use blockwire_core::server::ServerConfig;
use blockwire_core::server::sync::{
    Gone, Pumped, ServerStats, SyncConnection, Transport, export_of,
};
use blockwire_core::time::Instant;
use blockwire_fuzz::scripts::{transmission_export, transmission_prefix};
use blockwire_fuzz::{Splitter, split_header};
use libfuzzer_sys::fuzz_target;

const SIZE: usize = 64 << 10;

struct Ram {
    data: Vec<u8>,
    read_only: bool,
    align: u64,
    fail_from: u64,
}

impl BlockDevice for Ram {
    fn size(&self) -> u64 {
        SIZE as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn supports(&self, _: Op) -> bool {
        true
    }
    fn fast_zero(&self) -> bool {
        true
    }
    fn limits(&self) -> Limits {
        Limits {
            align: self.align,
            ..Limits::default()
        }
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        if offset + buf.len() as u64 > self.fail_from {
            return Err(BlockError::Io(5));
        }
        let o = offset as usize;
        buf.copy_from_slice(
            self.data
                .get(o..o + buf.len())
                .ok_or(BlockError::OutOfRange)?,
        );
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        let o = offset as usize;
        let dst = self
            .data
            .get_mut(o..o + data.len())
            .ok_or(BlockError::OutOfRange)?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

struct Pipe {
    input: Vec<u8>,
    pos: usize,
    closed: bool,
    cap: usize,
    queued: usize,
}

impl Transport for Pipe {
    fn send_capacity(&self) -> usize {
        self.cap
    }
    fn send_queue(&self) -> usize {
        self.queued
    }
    fn send_slice(&mut self, bytes: &[u8]) -> Result<usize, Gone> {
        let n = bytes.len().min(self.cap - self.queued);
        self.queued += n;
        Ok(n)
    }
    fn send_with(&mut self, fill: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<usize, Gone> {
        let mut room = vec![0; self.cap - self.queued];
        let n = fill(&mut room);
        assert!(n <= room.len(), "filled past the room it was given");
        self.queued += n;
        Ok(n)
    }
    fn recv_with(&mut self, take: &mut dyn FnMut(&[u8]) -> usize) -> Result<bool, Gone> {
        if self.pos == self.input.len() {
            return Ok(false);
        }
        let n = take(&self.input[self.pos..]);
        assert!(
            self.pos + n <= self.input.len(),
            "consumed more than it was given"
        );
        self.pos += n;
        Ok(true)
    }
    fn may_recv(&self) -> bool {
        !self.closed || self.pos < self.input.len()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((cfg, sizes, bytes)) = split_header(data) else {
        return;
    };
    let export = transmission_export(cfg);
    let mut dev = Ram {
        data: vec![0; SIZE],
        read_only: export == "ro",
        align: if export == "bs" { 512 } else { 1 },
        fail_from: if cfg & 0x80 != 0 {
            SIZE as u64 / 2
        } else {
            u64::MAX
        },
    };
    let mut conn = SyncConnection::new(
        export_of(&dev, export, ""),
        ServerConfig::default(),
        Instant(0),
    );
    let mut pipe = Pipe {
        input: Vec::new(),
        pos: 0,
        closed: false,
        cap: [61, 512, 4096, 65536][usize::from((cfg >> 5) & 3)],
        queued: 0,
    };
    let mut stats = ServerStats::default();
    let mut input = transmission_prefix(cfg);
    input.extend_from_slice(bytes);
    let pieces: Vec<&[u8]> = Splitter::new(&input, sizes).collect();
    let last = pieces.len();
    for (i, piece) in pieces.into_iter().enumerate() {
        pipe.input.extend_from_slice(piece);
        pipe.closed = i + 1 == last;
        // With the send buffer emptied before every pump, a connection
        // that is not finished always has something to do once the
        // client has closed: twice in a row nothing is a hang. Before
        // that, nothing to do means it waits for the next piece.
        let mut idle = 0;
        loop {
            let p = conn.pump(&mut pipe, &mut dev, &mut stats);
            assert!(pipe.queued <= pipe.cap);
            pipe.queued = 0;
            if p == Pumped::Broken || conn.is_finished() {
                return;
            }
            if p == Pumped::Progress(false) {
                if !pipe.closed {
                    break;
                }
                idle += 1;
                assert!(
                    idle < 2,
                    "the connection did not finish after the client closed"
                );
            } else {
                idle = 0;
            }
        }
    }
});
