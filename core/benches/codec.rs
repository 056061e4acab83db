//! Nanoseconds per request decode plus reply encode, per command.
//!
//! Run with `cargo bench -p blockwire-core --bench codec` (benches/peers runs
//! it too). Not a test: nothing here asserts a time.

use std::hint::black_box;

use blockwire_core::block::Extent;
use blockwire_core::server::{BlockSizes, Event, ExportInfo, Exports, Server, ServerConfig};
use blockwire_core::time::Instant;
use blockwire_core::wire::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

struct Disk;
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

fn option(o: OptionType, data: &[u8]) -> Vec<u8> {
    let mut v = IHAVEOPT.to_be_bytes().to_vec();
    v.extend_from_slice(&o.0.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// A server past the handshake with structured replies and base:allocation.
fn session() -> Server<Disk> {
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

fn request(cmd: CommandType, len: u32) -> Vec<u8> {
    let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&0u16.to_be_bytes());
    v.extend_from_slice(&cmd.0.to_be_bytes());
    v.extend_from_slice(&42u64.to_be_bytes());
    v.extend_from_slice(&(1u64 << 20).to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode+encode");
    g.throughput(Throughput::Elements(1));

    let mut s = session();
    let read = request(CommandType::READ, 4096);
    g.bench_function("read_4k", |b| {
        b.iter(|| {
            let p = s.handle_input(black_box(&read));
            let Some(Event::Request(r)) = p.event else {
                unreachable!()
            };
            let enc = blockwire_core::server::ReplyEncoder::new(HeaderMode::Structured);
            black_box(enc.data(&r, r.offset, r.length as u32, true));
        })
    });

    let mut s = session();
    let mut write = request(CommandType::WRITE, 4096);
    write.extend(std::iter::repeat_n(0u8, 4096));
    g.bench_function("write_4k", |b| {
        b.iter(|| {
            let mut rest = black_box(&write[..]);
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
            let enc = blockwire_core::server::ReplyEncoder::new(HeaderMode::Structured);
            black_box(enc.ok(&req.unwrap()));
        })
    });

    let mut s = session();
    let bs = request(CommandType::BLOCK_STATUS, 1 << 20);
    let mut out = vec![0u8; 4096];
    g.bench_function("block_status_16_extents", |b| {
        b.iter(|| {
            let p = s.handle_input(black_box(&bs));
            let Some(Event::Request(r)) = p.event else {
                unreachable!()
            };
            let enc = blockwire_core::server::ReplyEncoder::new(HeaderMode::Structured);
            let extents = (0..16).map(|i| Extent::new(65536, i % 2 * 3));
            black_box(enc.block_status(&r, 0, extents, true, &mut out));
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
