//! qcow2 images from arbitrary bytes: header and extension parsing, the
//! opener's L1/refcount/snapshot table checks, L1/L2 lookups, refcount
//! blocks and allocation, compressed clusters, the bitmap directory — then
//! writes, zeroes, discards and flushes planned on whatever opened, and a
//! reopen of the result, which must read back what was written. Input: one
//! configuration byte (bit 0: read-only; bits 1-2: cache slots - 2; bits
//! 3-7: seed of the operations), then the image file.
#![no_main]

use blockwire_fuzz::qcow2::{Stop, open};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, image)) = data.split_first() else {
        return;
    };
    let ro = cfg & 1 != 0;
    let slots = 2 + ((cfg >> 1) & 3) as usize;
    let Some(mut m) = open(image.to_vec(), ro, slots) else {
        return;
    };
    let _ = m.bitmaps();
    let size = m.q.size();
    if size == 0 {
        return;
    }
    let mut seed = u64::from(cfg >> 3)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(image.len() as u64)
        | 1;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    };
    let mut buf = vec![0u8; (size.min(256 << 10)) as usize];
    let _ = m.read(0, &mut buf);
    if ro {
        return;
    }
    let mut written: Option<(u64, Vec<u8>)> = None;
    for i in 0..6u8 {
        let off = rnd(size);
        let len = 1 + rnd((size - off).min(100_000));
        let is_write = rnd(2) == 0;
        let r = if is_write {
            let p = vec![i.wrapping_mul(37) | 1; len as usize];
            let r = m.write(off, &p);
            written = r.is_ok().then_some((off, p));
            r
        } else {
            // Any other operation may touch the last write's bytes.
            written = None;
            if rnd(2) == 0 {
                m.zero(off, len, rnd(2) == 0)
            } else {
                m.discard(off, len)
            }
        };
        if let Err(Stop::Loop) = r {
            panic!("qcow2 plan loop did not progress");
        }
    }
    if let Err(Stop::Loop) = m.flush() {
        panic!("qcow2 flush loop did not progress");
    }
    if let Some((off, p)) = written {
        let mut b = vec![0u8; p.len()];
        if m.read(off, &mut b).is_ok() {
            assert!(b == p, "a completed write does not read back");
        }
        // The flushed file reopens and reads the same.
        if m.flush().is_ok() {
            if let Some(mut again) = open(m.file.clone(), true, 2) {
                let mut b2 = vec![0u8; p.len()];
                if again.read(off, &mut b2).is_ok() {
                    assert!(b2 == p, "a flushed write does not survive a reopen");
                }
            }
        }
    }
});
