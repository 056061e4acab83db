//! One request through the core server machine, decode plus reply encode,
//! per command: what `benches/codec.rs` times and what
//! `examples/instructions.rs` counts instructions of.

use std::hint::black_box;

use blockwire_core::block::Extent;
use blockwire_core::server::{
    BlockSizes, Event, ExportInfo, Exports, ReplyEncoder, Server, ServerConfig,
};
use blockwire_core::time::Instant;
use blockwire_core::wire::codec::SliceSink;
use blockwire_core::wire::*;

pub struct Disk;
impl Exports for Disk {
    fn find(&self, _: &str) -> Option<usize> {
        Some(0)
    }
    fn export(&self, i: usize) -> Option<ExportInfo<'_>> {
        (i == 0).then_some(ExportInfo {
            name: "disk",
            description: "",
            size: 1 << 30,
            flags: TransmissionFlags::SEND_FLUSH | TransmissionFlags::SEND_FUA,
            block_sizes: BlockSizes::DEFAULT,
            block_size_required: false,
        })
    }
    fn meta_context(&self, _: usize, i: usize) -> Option<&str> {
        (i == 0).then_some(context::BASE_ALLOCATION)
    }
}

pub fn option(o: OptionType, data: &[u8]) -> Vec<u8> {
    let mut v = IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&o.0.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// A server past the handshake with structured replies and base:allocation.
pub fn session() -> Server<Disk> {
    let mut s = Server::new(Disk, ServerConfig::default(), Instant(0));
    let mut input = 3u32.to_be_bytes().to_vec();
    input.extend(option(OptionType::STRUCTURED_REPLY, &[]));
    let mut meta = 4u32.to_be_bytes().to_vec();
    meta.extend_from_slice(b"disk");
    meta.extend_from_slice(&1u32.to_be_bytes());
    meta.extend_from_slice(&15u32.to_be_bytes());
    meta.extend_from_slice(b"base:allocation");
    input.extend(option(OptionType::SET_META_CONTEXT, &meta));
    let mut go = 4u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"disk");
    go.extend_from_slice(&0u16.to_be_bytes());
    input.extend(option(OptionType::GO, &go));
    let mut rest = &input[..];
    loop {
        let n = s.poll_transmit().len();
        s.transmitted(n);
        let p = s.handle_input(rest);
        let (c, done) = (p.consumed, matches!(p.event, Some(Event::Ready(_))));
        rest = &rest[c..];
        if done {
            let n = s.poll_transmit().len();
            s.transmitted(n);
            return s;
        }
    }
}

pub fn request(cmd: CommandType, len: u32) -> Vec<u8> {
    let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&0u16.to_be_bytes());
    v.extend_from_slice(&cmd.0.to_be_bytes());
    v.extend_from_slice(&42u64.to_be_bytes());
    v.extend_from_slice(&(1u64 << 20).to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

/// A WRITE of 4 KiB: header and payload.
pub fn write_request() -> Vec<u8> {
    let mut write = request(CommandType::WRITE, 4096);
    write.extend(std::iter::repeat_n(0u8, 4096));
    write
}

/// READ 4K: decode, then the data chunk's header.
pub fn read_4k(s: &mut Server<Disk>, read: &[u8]) {
    let p = s.handle_input(black_box(read));
    let Some(Event::Request(r)) = p.event else {
        unreachable!()
    };
    let enc = ReplyEncoder::new(HeaderMode::Structured);
    black_box(enc.data(&r, r.offset(), r.len() as u32, true));
}

/// WRITE 4K: decode, payload pieces, then the reply.
pub fn write_4k(s: &mut Server<Disk>, write: &[u8]) {
    let mut rest = black_box(write);
    let mut req = None;
    while !rest.is_empty() {
        let p = s.handle_input(rest);
        match p.event {
            Some(Event::Request(r)) => req = Some(r),
            Some(Event::WriteData { data, .. }) => {
                black_box(data);
            }
            _ => {}
        }
        rest = &rest[p.consumed..];
    }
    let enc = ReplyEncoder::new(HeaderMode::Structured);
    black_box(enc.result(&req.unwrap(), Ok(())));
}

/// BLOCK_STATUS of 1 MiB answered with 16 extents.
pub fn block_status_16(s: &mut Server<Disk>, bs: &[u8], out: &mut [u8], scratch: &mut Vec<Extent>) {
    let p = s.handle_input(black_box(bs));
    let Some(Event::Request(r)) = p.event else {
        unreachable!()
    };
    let enc = ReplyEncoder::new(HeaderMode::Structured);
    let mut sink = SliceSink::new(out);
    let r = enc.block_status(&r, 1 << 16, scratch, &mut sink, |_, _, push| {
        for i in 0..16 {
            push(Extent::new(65536, i % 2 * 3));
        }
        Ok::<(), ()>(())
    });
    r.expect("16 extents fit the reply buffer");
    black_box(sink.written());
}
