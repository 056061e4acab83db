//! Nanoseconds per request decode plus reply encode, per command.
//!
//! Run with `cargo bench -p blockwire-core --bench codec` (benches/peers runs
//! it too). Not a test: nothing here asserts a time.

#[path = "support.rs"]
mod support;

use blockwire_core::wire::CommandType;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use support::*;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode+encode");
    g.throughput(Throughput::Elements(1));

    let mut s = session();
    let read = request(CommandType::READ, 4096);
    g.bench_function("read_4k", |b| b.iter(|| read_4k(&mut s, &read)));

    let mut s = session();
    let write = write_request();
    g.bench_function("write_4k", |b| b.iter(|| write_4k(&mut s, &write)));

    let mut s = session();
    let bs = request(CommandType::BLOCK_STATUS, 1 << 20);
    let mut out = vec![0u8; 4096];
    let mut scratch = Vec::new();
    g.bench_function("block_status_16_extents", |b| {
        b.iter(|| block_status_16(&mut s, &bs, &mut out, &mut scratch))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
