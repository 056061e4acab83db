//! `server::sync`: a whole connection over a synchronous device, driven
//! through an in-memory transport whose send buffer and reads are cut as
//! small as one byte, so every blocked path runs.

use blockwire_core::block::BlockDevice;
use blockwire_core::block::contract::BlockError;
use blockwire_core::server::sync::{
    Gone, Pumped, ServerStats, SyncConnection, Transport, export_of,
};
use blockwire_core::server::{ExportInfo, ServerConfig, TlsPolicy};
use blockwire_core::time::Instant;
use blockwire_core::wire::*;

include!("common/bytes.rs");

const SIZE: usize = 64 << 10;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Memory, with a read that fails from `fail_from` on.
struct Ram {
    data: Vec<u8>,
    fail_from: u64,
    flushes: u32,
}

impl Ram {
    fn new() -> Self {
        Self {
            data: vec![0; SIZE],
            fail_from: u64::MAX,
            flushes: 0,
        }
    }
}

impl BlockDevice for Ram {
    fn size(&self) -> u64 {
        SIZE as u64
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        if offset + buf.len() as u64 > self.fail_from {
            return Err(BlockError::Io(5));
        }
        let o = offset as usize;
        buf.copy_from_slice(&self.data[o..o + buf.len()]);
        Ok(())
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), BlockError> {
        let o = offset as usize;
        self.data[o..o + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        self.flushes += 1;
        Ok(())
    }
}

/// The client's bytes in; what the server sent out, through a send buffer
/// of `cap` bytes that the "network" empties between pumps.
struct Pipe {
    input: Vec<u8>,
    pos: usize,
    recv_max: usize,
    closed: bool,
    cap: usize,
    queued: usize,
    out: Vec<u8>,
}

impl Pipe {
    fn new(input: Vec<u8>, cap: usize, recv_max: usize, closed: bool) -> Self {
        Self {
            input,
            pos: 0,
            recv_max,
            closed,
            cap,
            queued: 0,
            out: Vec::new(),
        }
    }
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
        self.out.extend_from_slice(&bytes[..n]);
        self.queued += n;
        Ok(n)
    }
    fn send_with(&mut self, fill: &mut dyn FnMut(&mut [u8]) -> usize) -> Result<usize, Gone> {
        let mut room = vec![0xee; self.cap - self.queued];
        let n = fill(&mut room);
        self.out.extend_from_slice(&room[..n]);
        self.queued += n;
        Ok(n)
    }
    fn recv_with(&mut self, take: &mut dyn FnMut(&[u8]) -> usize) -> Result<bool, Gone> {
        if self.pos == self.input.len() {
            return Ok(false);
        }
        let end = self.input.len().min(self.pos + self.recv_max);
        self.pos += take(&self.input[self.pos..end]);
        Ok(true)
    }
    fn may_recv(&self) -> bool {
        !self.closed || self.pos < self.input.len()
    }
}

fn connection(dev: &Ram) -> SyncConnection<ExportInfo<'static>> {
    // TLS asked for, and turned off by the connection: it has no TLS
    // layer, and a client without TLS is served.
    let config = ServerConfig {
        tls: TlsPolicy::Required,
        ..ServerConfig::default()
    };
    SyncConnection::new(export_of(dev, "disk", ""), config, Instant(0))
}

/// Client flags (FIXED_NEWSTYLE | NO_ZEROES) and NBD_OPT_EXPORT_NAME:
/// the server answers with 18 bytes of greeting and 10 of export info,
/// then simple replies.
fn handshake() -> Vec<u8> {
    let mut v = 3u32.to_be_bytes().to_vec();
    v.extend(opt(OptionType::EXPORT_NAME, b"disk"));
    v
}

fn req(flags: CommandFlags, cmd: CommandType, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
    v.extend(flags.bits().to_be_bytes());
    v.extend(cmd.0.to_be_bytes());
    v.extend(cookie.to_be_bytes());
    v.extend(offset.to_be_bytes());
    v.extend(len.to_be_bytes());
    v
}

fn simple(errno: u32, cookie: u64) -> Vec<u8> {
    let mut v = SIMPLE_REPLY_MAGIC.to_be_bytes().to_vec();
    v.extend(errno.to_be_bytes());
    v.extend(cookie.to_be_bytes());
    v
}

/// Pumps until the connection is finished (or broken); the output.
fn run(conn: &mut SyncConnection<ExportInfo<'static>>, pipe: &mut Pipe, dev: &mut Ram) -> Pumped {
    let mut stats = ServerStats::default();
    for _ in 0..1_000_000 {
        let p = conn.pump(pipe, dev, &mut stats);
        pipe.queued = 0;
        if p == Pumped::Broken || conn.is_finished() {
            return p;
        }
    }
    panic!("the connection neither finished nor broke");
}

#[test]
fn requests_are_served_in_order_whatever_the_buffer_sizes() {
    let payload: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 1) as u8).collect();
    let mut input = handshake();
    input.extend(req(CommandFlags::FUA, CommandType::WRITE, 1, 4096, 4096));
    input.extend(&payload);
    input.extend(req(CommandFlags::empty(), CommandType::READ, 2, 4096, 4096));
    input.extend(req(CommandFlags::empty(), CommandType::READ, 3, 0, 8192));
    // Past the end: EINVAL, and the stream goes on.
    input.extend(req(
        CommandFlags::empty(),
        CommandType::READ,
        4,
        SIZE as u64,
        1,
    ));
    input.extend(req(CommandFlags::empty(), CommandType::FLUSH, 5, 0, 0));
    input.extend(req(CommandFlags::empty(), CommandType::DISC, 6, 0, 0));

    let mut want = Vec::new();
    want.extend(simple(0, 1));
    want.extend(simple(0, 2));
    want.extend(&payload);
    want.extend(simple(0, 3));
    want.extend([0; 4096]);
    want.extend(&payload);
    want.extend(simple(Errno::EINVAL.0, 4));
    want.extend(simple(0, 5));

    for cap in [1, 7, 100, 4112, 1 << 20] {
        for recv_max in [1, 5, 1 << 20] {
            let mut dev = Ram::new();
            let mut conn = connection(&dev);
            let mut pipe = Pipe::new(input.clone(), cap, recv_max, false);
            let end = run(&mut conn, &mut pipe, &mut dev);
            assert_eq!(end, Pumped::Progress(true), "cap {cap}, recv {recv_max}");
            let out = &pipe.out;
            assert_eq!(&out[..16], b"NBDMAGICIHAVEOPT");
            let (size, rest) = out[18..].split_at(8);
            assert_eq!(u64::from_be_bytes(size.try_into().unwrap()), SIZE as u64);
            assert!(
                rest[2..] == want[..],
                "cap {cap}, recv {recv_max}: replies differ"
            );
            assert_eq!(&dev.data[4096..8192], &payload[..]);
            // The FUA write and the flush each reached the device.
            assert_eq!(dev.flushes, 2);
        }
    }
}

#[test]
fn a_device_failing_after_the_read_header_breaks_the_connection() {
    // A simple reply's header promises all the data: a failure after it
    // cannot be reported, and the stream must not go on as if it could.
    let mut input = handshake();
    input.extend(req(CommandFlags::empty(), CommandType::READ, 1, 0, 8192));
    let mut dev = Ram::new();
    dev.fail_from = 6000;
    let mut conn = connection(&dev);
    let mut pipe = Pipe::new(input, 4096, 1 << 20, false);
    assert_eq!(run(&mut conn, &mut pipe, &mut dev), Pumped::Broken);
    let replies = &pipe.out[28..];
    assert_eq!(&replies[..16], &simple(0, 1)[..]);
    assert!(replies.len() < 16 + 8192, "a truncated read went out whole");
}

#[test]
fn a_client_that_leaves_mid_payload_frees_the_connection() {
    // The write can never complete: no reply, and the connection is
    // finished rather than waiting for the rest of the payload forever.
    let mut input = handshake();
    input.extend(req(CommandFlags::empty(), CommandType::WRITE, 1, 0, 4096));
    input.extend([0x5a; 1000]);
    let mut dev = Ram::new();
    let mut conn = connection(&dev);
    let mut pipe = Pipe::new(input, 1 << 20, 1 << 20, true);
    assert_ne!(run(&mut conn, &mut pipe, &mut dev), Pumped::Broken);
    assert!(conn.is_finished());
    assert_eq!(pipe.out.len(), 28, "a reply went out for a write cut short");
}
