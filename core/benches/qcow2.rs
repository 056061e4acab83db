//! Nanoseconds the qcow2 core spends per request, without I/O: mapping a
//! 4 KiB read (L2 table cached), planning and committing a 4 KiB write into
//! an allocated cluster (in place) and into a fresh one (allocation: the
//! refcount and L2 updates), and a flush plan after 64 allocating writes.
//!
//! Run with `cargo bench -p blockwire-core --bench qcow2`. Not a test:
//! nothing here asserts a time.

use std::hint::black_box;

use blockwire_core::qcow2::create::{Create, Options};
use blockwire_core::qcow2::*;
use criterion::{Criterion, criterion_group, criterion_main};

const SIZE: u64 = 1 << 30;

fn image() -> (Qcow2<Vec<u64>>, Vec<u8>) {
    let c = Create::new(&Options {
        size: SIZE,
        ..Options::default()
    })
    .unwrap();
    let cs = c.cluster_size() as usize;
    let mut file = vec![0u8; c.clusters() as usize * cs];
    for i in 0..c.clusters() {
        c.cluster(i, &mut file[i as usize * cs..][..cs]).unwrap();
    }
    let area = HeaderArea::parse(&file).unwrap();
    let cfg = Config {
        l2_slots: 64,
        refblock_slots: 8,
        ..Config::default()
    };
    let words = Qcow2::words_needed(&area, &cfg).unwrap();
    let mut q = Qcow2::open(area, file.len() as u64, &cfg, vec![0u64; words]).unwrap();
    while let Some(l) = q.open_need() {
        let b = file[l.offset as usize..][..l.len as usize].to_vec();
        q.install(l, &b).unwrap();
    }
    (q, file)
}

/// Plans, "executes" (metadata bytes are produced, data is not moved) and
/// commits until the request is covered; loads come from `file`.
fn write(q: &mut Qcow2<Vec<u64>>, file: &mut Vec<u8>, off: u64, len: u64, scratch: &mut Vec<u8>) {
    let mut pos = 0;
    while pos < len {
        let mut steps: [Option<Step>; 8] = [None; 8];
        let mut n = 0;
        let plan = q
            .plan_write(off + pos, len - pos, &mut |s| {
                if n < 8 {
                    steps[n] = Some(s);
                }
                n += 1;
            })
            .unwrap();
        match plan {
            Plan::Planned(p) => {
                pos += p.covered;
                q.commit(p.ticket).unwrap();
            }
            Plan::Need(Need::Load(l)) => load(q, file, l),
            Plan::Need(Need::Flush) => flush(q, file, scratch),
        }
    }
}

fn load(q: &mut Qcow2<Vec<u64>>, file: &[u8], l: Load) {
    let mut b = vec![0u8; l.len as usize];
    let have = file.len().saturating_sub(l.offset as usize).min(b.len());
    if have > 0 {
        b[..have].copy_from_slice(&file[l.offset as usize..][..have]);
    }
    q.install(l, &b).unwrap();
}

fn flush(q: &mut Qcow2<Vec<u64>>, file: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    loop {
        let mut steps = Vec::new();
        match q.plan_flush(&mut |s| steps.push(s)).unwrap() {
            Plan::Need(Need::Load(l)) => load(q, file, l),
            Plan::Need(Need::Flush) => unreachable!(),
            Plan::Planned(p) => {
                for s in steps {
                    if let Step::Meta {
                        host, length, src, ..
                    } = s
                    {
                        scratch.resize(length as usize, 0);
                        q.meta_bytes(&src, scratch).unwrap();
                        // Keep the file small (it would grow to the host
                        // offset of the newest L2 table): only metadata in
                        // the first 64 MiB is stored; the bench's caches
                        // hold every table it touches, so nothing else is
                        // ever loaded back.
                        let end = (host + length) as usize;
                        if end <= 64 << 20 {
                            if file.len() < end {
                                file.resize(end, 0);
                            }
                            file[host as usize..end].copy_from_slice(scratch);
                        }
                    }
                }
                q.commit(p.ticket).unwrap();
                if !q.has_dirty_metadata() {
                    return;
                }
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut scratch = Vec::new();
    let (mut q, mut file) = image();
    // Allocate the first 64 MiB so reads and in-place writes hit data.
    for i in 0..1024u64 {
        write(&mut q, &mut file, i * 65536, 65536, &mut scratch);
    }
    flush(&mut q, &mut file, &mut scratch);
    let mut i = 0u64;
    c.bench_function("qcow2 map 4k (cached L2)", |b| {
        b.iter(|| {
            i = (i + 7919) % 16384;
            black_box(q.map(i * 4096, 4096).unwrap())
        })
    });
    c.bench_function("qcow2 write 4k in place (plan+commit)", |b| {
        b.iter(|| {
            i = (i + 7919) % 16384;
            write(&mut q, &mut file, i * 4096, 4096, &mut scratch)
        })
    });
    let mut next = 64u64 << 20;
    c.bench_function(
        "qcow2 write 4k allocating (plan+commit, flush every 64)",
        |b| {
            b.iter(|| {
                if next + 65536 > SIZE {
                    let (q2, f2) = image();
                    q = q2;
                    file = f2;
                    next = 0;
                }
                write(&mut q, &mut file, next, 4096, &mut scratch);
                next += 65536;
                if (next >> 16) % 64 == 0 {
                    flush(&mut q, &mut file, &mut scratch);
                }
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
