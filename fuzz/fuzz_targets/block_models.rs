//! Block logic against naive models under arbitrary operation sequences:
//! the allocation map (per-granule flags and byte contents), dirty bitmaps
//! (a `Vec<bool>` per bitmap), the copy-on-write overlay (plans executed on
//! byte arrays vs a plain disk), and the throttle (admitted amount within
//! the leaky-bucket bounds). Same models as `core/tests/block_*.rs`.
#![no_main]

use arbitrary::Arbitrary;
use blockwire_core::block::Extent;
use blockwire_core::block::alloc_map::{AllocMap, AllocState};
use blockwire_core::block::contract::StatusQuery;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    Alloc {
        size: u16,
        gshift: u8,
        ops: Vec<(u8, u16, u16, bool)>,
        query: (u16, u16, bool),
    },
    Bitmaps {
        size: u16,
        g: [u8; 2],
        cmds: Vec<(u8, u8, u16, u16)>,
    },
    Overlay {
        size: u16,
        cshift: u8,
        cmds: Vec<(u8, u16, u16, u8)>,
    },
    Throttle {
        limits: (u16, u8, u8, u8, u8, bool, Option<u16>),
        reqs: Vec<(u32, bool, u16)>,
    },
}

fn range(size: u64, a: u16, b: u16) -> (u64, u64) {
    let (a, b) = (u64::from(a) % (size + 1), u64::from(b) % (size + 1));
    (a.min(b), a.max(b) - a.min(b))
}

fn alloc(size: u16, gshift: u8, ops: &[(u8, u16, u16, bool)], query: (u16, u16, bool)) {
    let size = u64::from(size) % 3000 + 1;
    let g = 1u64 << (gshift % 10);
    let mut map = AllocMap::new_vec(size, g, AllocState::HoleZero).unwrap();
    let ncells = size.div_ceil(g) as usize;
    let mut cells = vec![3u64; ncells];
    let mut content = vec![0u8; size as usize];
    for &(k, a, b, f) in ops.iter().take(24) {
        let (off, len) = range(size, a, b);
        match k % 3 {
            0 => map.mark_data(off, len).unwrap(),
            1 => map.mark_zero(off, len, f).unwrap(),
            _ => map.mark_hole(off, len, f).unwrap(),
        }
        if len == 0 {
            continue;
        }
        let end = off + len;
        for c in 0..ncells as u64 {
            let cs = c * g;
            let ce = (cs + g).min(size);
            if !(cs < end && off < ce) {
                continue;
            }
            let full = off <= cs && ce <= end;
            let cell = &mut cells[c as usize];
            match k % 3 {
                0 => *cell = 0,
                1 if full => *cell = if f { 3 } else { 2 },
                1 => {
                    if *cell & 2 == 0 {
                        *cell = 0
                    }
                }
                _ if full => *cell = if f { 3 } else { 1 },
                _ => {}
            }
        }
        for byte in off..end {
            content[byte as usize] = match k % 3 {
                0 => 0xFF,
                1 => 0,
                _ => content[byte as usize],
            };
        }
        if k % 3 == 2 {
            for c in 0..ncells as u64 {
                let cs = c * g;
                let ce = (cs + g).min(size);
                if off <= cs && ce <= end {
                    content[cs as usize..ce as usize].fill(if f { 0 } else { 0xEE });
                }
            }
        }
    }
    let status = |q: &StatusQuery| {
        let mut v = Vec::new();
        map.block_status(q, &mut |e: Extent| {
            v.push(e);
            true
        })
        .unwrap();
        v
    };
    let expand = |ext: &[Extent]| -> Vec<u64> {
        ext.iter()
            .flat_map(|e| std::iter::repeat_n(e.flags, e.length as usize))
            .collect()
    };
    let whole = expand(&status(&StatusQuery::new(0, size)));
    let want: Vec<u64> = (0..size).map(|b| cells[(b / g) as usize]).collect();
    assert_eq!(whole, want);
    for (b, f) in whole.iter().enumerate() {
        if f & 2 != 0 {
            assert_eq!(content[b], 0, "byte {b} reported zero");
        }
    }
    let (o, l) = range(size, query.0, query.1);
    let part = status(&StatusQuery::new(o, l).req_one(query.2));
    if query.2 && l > 0 {
        assert_eq!(part.len(), 1);
        let first = &want[o as usize..];
        let run = first.iter().take_while(|&&f| f == first[0]).count() as u64;
        assert_eq!(part[0], Extent::new(run.min(l), first[0]));
    } else {
        assert_eq!(expand(&part), want[o as usize..(o + l) as usize].to_vec());
        assert!(part.windows(2).all(|w| w[0].flags != w[1].flags));
    }
}

fn bitmaps(size: u16, g: [u8; 2], cmds: &[(u8, u8, u16, u16)]) {
    use blockwire_core::block::dirty_bitmap::*;
    #[derive(Clone)]
    struct M {
        g: u64,
        bits: Vec<bool>,
        enabled: bool,
        successor: Option<Vec<bool>>,
    }
    fn st(m: &M) -> DirtyBitmapStatus {
        if m.successor.is_some() {
            DirtyBitmapStatus::Frozen
        } else if m.enabled {
            DirtyBitmapStatus::Active
        } else {
            DirtyBitmapStatus::Disabled
        }
    }
    const NAMES: [&str; 2] = ["a", "b"];
    let size = u64::from(size) % 8000 + 1;
    let mut set: BitmapSet<Vec<u64>, 2> = BitmapSet::new();
    let mut model: [Option<M>; 2] = [None, None];
    for i in 0..2 {
        let gran = 1u32 << (9 + g[i] % 4);
        set.add_vec(NAMES[i], size, Some(gran)).unwrap();
        let gg = u64::from(gran);
        model[i] = Some(M {
            g: gg,
            bits: vec![false; size.div_ceil(gg) as usize],
            enabled: true,
            successor: None,
        });
    }
    for &(k, which, a, b) in cmds.iter().take(30) {
        let i = usize::from(which & 1);
        let (o, l) = range(size, a, b);
        match k % 10 {
            0..=2 => {
                set.mark(o, l);
                for m in model.iter_mut().flatten() {
                    if l == 0 || !m.enabled {
                        continue;
                    }
                    let gg = m.g;
                    let target = m.successor.as_mut().unwrap_or(&mut m.bits);
                    for cell in (o / gg)..(o + l).div_ceil(gg) {
                        target[cell as usize] = true;
                    }
                }
            }
            3 => {
                let r = set.clear(NAMES[i]);
                match &mut model[i] {
                    None => assert_eq!(r, Err(BitmapError::NotFound)),
                    Some(m) => match st(m) {
                        DirtyBitmapStatus::Active => {
                            assert_eq!(r, Ok(()));
                            m.bits.fill(false);
                        }
                        DirtyBitmapStatus::Frozen => assert_eq!(r, Err(BitmapError::Frozen)),
                        DirtyBitmapStatus::Disabled => assert_eq!(r, Err(BitmapError::Disabled)),
                    },
                }
            }
            4 => {
                let on = which & 2 != 0;
                let r = if on {
                    set.enable(NAMES[i])
                } else {
                    set.disable(NAMES[i])
                };
                match &mut model[i] {
                    None => assert_eq!(r, Err(BitmapError::NotFound)),
                    Some(m) if m.successor.is_some() => assert_eq!(r, Err(BitmapError::Frozen)),
                    Some(m) => {
                        assert_eq!(r, Ok(()));
                        m.enabled = on;
                    }
                }
            }
            5 => {
                let (t, s) = (i, usize::from((which >> 1) & 1));
                let r = set.merge(NAMES[t], NAMES[s]);
                if model[t].is_none() || model[s].is_none() {
                    assert_eq!(r, Err(BitmapError::NotFound));
                    continue;
                }
                let src = model[s].clone().unwrap();
                let m = model[t].as_mut().unwrap();
                match st(m) {
                    DirtyBitmapStatus::Frozen => assert_eq!(r, Err(BitmapError::Frozen)),
                    DirtyBitmapStatus::Disabled => assert_eq!(r, Err(BitmapError::Disabled)),
                    DirtyBitmapStatus::Active => {
                        assert_eq!(r, Ok(()));
                        for byte in 0..size {
                            if src.bits[(byte / src.g) as usize] {
                                m.bits[(byte / m.g) as usize] = true;
                            }
                        }
                    }
                }
            }
            6 => {
                let r = set.freeze_vec(NAMES[i]);
                match &mut model[i] {
                    None => assert_eq!(r, Err(BitmapError::NotFound)),
                    Some(m) if m.successor.is_some() => assert_eq!(r, Err(BitmapError::Frozen)),
                    Some(m) => {
                        assert_eq!(r, Ok(()));
                        m.successor = Some(vec![false; m.bits.len()]);
                    }
                }
            }
            7 => {
                let abdicate = which & 2 != 0;
                let r = if abdicate {
                    set.abdicate(NAMES[i])
                } else {
                    set.reclaim(NAMES[i])
                };
                match model[i]
                    .as_mut()
                    .and_then(|m| m.successor.take().map(|s| (m, s)))
                {
                    None => assert_eq!(r.err(), Some(BitmapError::NotFound)),
                    Some((m, succ)) => {
                        assert!(r.is_ok());
                        if abdicate {
                            m.bits = succ;
                        } else {
                            for (b, s) in m.bits.iter_mut().zip(succ) {
                                *b |= s;
                            }
                        }
                    }
                }
            }
            8 => {
                let r = set.get_mut(NAMES[i]).map(|bm| bm.reset(o, l));
                match &mut model[i] {
                    None => assert!(r.is_none()),
                    Some(m) if m.successor.is_some() => {
                        assert_eq!(r, Some(Err(BitmapError::Frozen)))
                    }
                    Some(m) => {
                        assert_eq!(r, Some(Ok(())));
                        for (c, bit) in m.bits.iter_mut().enumerate() {
                            let cs = c as u64 * m.g;
                            let ce = (cs + m.g).min(size);
                            if l > 0 && o <= cs && ce <= o + l {
                                *bit = false;
                            }
                        }
                    }
                }
            }
            _ => {
                let r = set.remove(NAMES[i]);
                match &model[i] {
                    None => assert_eq!(r.err(), Some(BitmapError::NotFound)),
                    Some(m) if m.successor.is_some() => {
                        assert_eq!(r.err(), Some(BitmapError::Frozen))
                    }
                    Some(_) => {
                        assert!(r.is_ok());
                        model[i] = None;
                    }
                }
            }
        }
        for i in 0..2 {
            let bm = set.get(NAMES[i]);
            assert_eq!(bm.is_some(), model[i].is_some());
            let (Some(bm), Some(m)) = (bm, &model[i]) else {
                continue;
            };
            let info = bm.info();
            assert_eq!(info.status, st(m));
            let want_count = (0..size).filter(|b| m.bits[(b / m.g) as usize]).count() as u64;
            assert_eq!(info.count, want_count);
            let mut got = Vec::new();
            bm.block_status(&StatusQuery::new(0, size), &mut |e: Extent| {
                got.extend(std::iter::repeat_n(e.flags == 1, e.length as usize));
                true
            })
            .unwrap();
            let want: Vec<bool> = (0..size).map(|b| m.bits[(b / m.g) as usize]).collect();
            assert_eq!(got, want);
            // A sub-range query with REQ_ONE answers the first run.
            let (qo, ql) = range(size, (size / 3) as u16, (size / 2) as u16);
            if ql > 0 {
                let mut first = Vec::new();
                bm.block_status(&StatusQuery::new(qo, ql).req_one(true), &mut |e: Extent| {
                    first.push(e);
                    true
                })
                .unwrap();
                assert_eq!(first.len(), 1);
                let w = &want[qo as usize..(qo + ql) as usize];
                let run = w.iter().take_while(|&&x| x == w[0]).count() as u64;
                assert_eq!(first[0], Extent::new(run, u64::from(w[0])));
            }
        }
    }
}

fn overlay(size: u16, cshift: u8, cmds: &[(u8, u16, u16, u8)]) {
    use blockwire_core::block::overlay::*;
    let size = u64::from(size) % 2500 + 1;
    let cluster = 1u64 << (cshift % 9);
    let base: Vec<u8> = (0..size).map(|i| (i % 251) as u8 | 1).collect();
    let mut top = vec![0xCCu8; size as usize];
    let mut ov = Overlay::new_vec(size, cluster).unwrap();
    let mut model = base.clone();
    let nclusters = size.div_ceil(cluster) as usize;
    let mut cl = vec![0u8; nclusters];
    let span = |o: u64, l: u64| {
        (0..nclusters as u64).filter_map(move |c| {
            let cs = c * cluster;
            let ce = (cs + cluster).min(size);
            (l > 0 && cs < o + l && o < ce).then_some((c as usize, o <= cs && ce <= o + l))
        })
    };
    let run = |top: &mut Vec<u8>, step: WriteStep, payload: &[u8]| match step {
        WriteStep::CopyUp { offset, length } => {
            let r = offset as usize..(offset + length) as usize;
            top[r.clone()].copy_from_slice(&base[r]);
        }
        WriteStep::ZeroTop { offset, length } => {
            top[offset as usize..(offset + length) as usize].fill(0)
        }
        WriteStep::WriteTop {
            offset,
            length,
            buf_offset,
        } => {
            let src = &payload[buf_offset as usize..(buf_offset + length) as usize];
            top[offset as usize..(offset + length) as usize].copy_from_slice(src);
        }
        WriteStep::DiscardTop { offset, length } => {
            top[offset as usize..(offset + length) as usize].fill(0xDD)
        }
    };
    for &(k, a, b, v) in cmds.iter().take(20) {
        let (o, l) = range(size, a, b);
        let mut steps = Vec::new();
        match k % 5 {
            0..=2 => {
                let v = v | 1;
                ov.plan_write(o, l, &mut |s| {
                    steps.push(s);
                    true
                })
                .unwrap();
                let payload = vec![v; l as usize];
                for s in steps {
                    run(&mut top, s, &payload);
                }
                ov.commit_write(o, l).unwrap();
                model[o as usize..(o + l) as usize].fill(v);
                for (i, _) in span(o, l) {
                    cl[i] = 1;
                }
            }
            3 => {
                ov.plan_write_zeroes(o, l, &mut |s| {
                    steps.push(s);
                    true
                })
                .unwrap();
                for s in steps {
                    run(&mut top, s, &[]);
                }
                ov.commit_write_zeroes(o, l).unwrap();
                model[o as usize..(o + l) as usize].fill(0);
                for (i, full) in span(o, l) {
                    if full {
                        cl[i] = 2
                    } else if cl[i] == 0 {
                        cl[i] = 1
                    }
                }
            }
            _ => {
                ov.plan_trim(o, l, &mut |s| {
                    steps.push(s);
                    true
                })
                .unwrap();
                for s in steps {
                    assert!(matches!(s, WriteStep::DiscardTop { .. }));
                    run(&mut top, s, &[]);
                }
                ov.commit_trim(o, l).unwrap();
                for (i, full) in span(o, l) {
                    if full {
                        cl[i] = 2;
                        let cs = i as u64 * cluster;
                        model[cs as usize..((cs + cluster).min(size)) as usize].fill(0);
                    }
                }
            }
        }
        // Read everything back through the read planner.
        let mut out = vec![0x55u8; size as usize];
        ov.plan_read(0, size, &mut |s| {
            let dst = &mut out[s.buf_offset as usize..(s.buf_offset + s.length) as usize];
            let r = s.offset as usize..(s.offset + s.length) as usize;
            match s.source {
                Source::Top => dst.copy_from_slice(&top[r]),
                Source::Base => dst.copy_from_slice(&base[r]),
                Source::Zeroes => dst.fill(0),
            }
            true
        })
        .unwrap();
        assert_eq!(out, model);
    }
    let per_byte = |b: u64| cl[(b / cluster) as usize];
    let mut depth = Vec::new();
    ov.allocation_depth(
        &StatusQuery::new(0, size),
        &mut |_, len| Extent::new(len, 1),
        &mut |e: Extent| {
            depth.extend(std::iter::repeat_n(e.flags, e.length as usize));
            true
        },
    )
    .unwrap();
    let want: Vec<u64> = (0..size)
        .map(|b| if per_byte(b) == 0 { 2 } else { 1 })
        .collect();
    assert_eq!(depth, want);
    let mut alloc = Vec::new();
    ov.allocation_status(
        &StatusQuery::new(0, size),
        &mut |o, len| Extent::new((7 - o % 7).min(len), if (o / 7) % 2 == 0 { 0 } else { 1 }),
        &mut |e: Extent| {
            alloc.extend(std::iter::repeat_n(e.flags, e.length as usize));
            true
        },
    )
    .unwrap();
    let want: Vec<u64> = (0..size)
        .map(|b| match per_byte(b) {
            0 => {
                if (b / 7) % 2 == 0 {
                    0
                } else {
                    1
                }
            }
            1 => 0,
            _ => 3,
        })
        .collect();
    assert_eq!(alloc, want);
}

fn throttle(limits: (u16, u8, u8, u8, u8, bool, Option<u16>), reqs: &[(u32, bool, u16)]) {
    use blockwire_core::block::throttle::*;
    const NS: u128 = 1_000_000_000;
    let (bps, bps_mul, len, iops, iops_mul, split, iops_size) = limits;
    let bps = u64::from(bps) % 5000 + 1;
    let bps_mul = u64::from(bps_mul % 4);
    let len = u64::from(len % 4) + 1;
    let iops = u64::from(iops) % 50 + 1;
    let iops_mul = u64::from(iops_mul % 3);
    let mut l = ThrottleLimits::default();
    let bps_b = BucketLimit {
        avg: bps,
        max: bps * bps_mul,
        max_length: if bps_mul > 0 { len } else { 0 },
    };
    if split {
        l.bps_read = bps_b;
        l.bps_write = BucketLimit {
            avg: bps * 2,
            max: bps_b.max * 2,
            max_length: bps_b.max_length,
        };
    } else {
        l.bps_total = bps_b;
    }
    l.iops_total = BucketLimit {
        avg: iops,
        max: iops * iops_mul,
        max_length: 0,
    };
    l.iops_size = iops_size.map_or(0, |s| u64::from(s) % 4900 + 100);
    let mut t = Throttle::new(l).unwrap();
    let units = |kind: usize, bytes: u64| -> u128 {
        if kind == 0 {
            bytes as u128 * NS
        } else if l.iops_size > 0 && bytes > l.iops_size {
            bytes as u128 * NS / l.iops_size as u128
        } else {
            NS
        }
    };
    let mut now = 0u64;
    let mut admitted: Vec<(u64, bool, u64)> = Vec::new();
    for &(gap, write, bytes) in reqs.iter().take(60) {
        now += u64::from(gap) % 300_000_000;
        let bytes = u64::from(bytes) % 3000 + 1;
        let dir = if write {
            Direction::Write
        } else {
            Direction::Read
        };
        let mut tries = 0;
        loop {
            match t.try_start(now, dir, bytes) {
                Admission::Start => break,
                Admission::NotBefore(at) => {
                    assert!(at > now);
                    now = at;
                    tries += 1;
                    assert!(tries <= 1, "not admitted at the promised time");
                }
            }
        }
        admitted.push((now, write, bytes));
    }
    let buckets = [
        (0usize, l.bps_total, None),
        (0, l.bps_read, Some(false)),
        (0, l.bps_write, Some(true)),
        (1, l.iops_total, None),
    ];
    for (kind, b, dir) in buckets {
        if b.avg == 0 {
            continue;
        }
        let avg = b.avg as u128;
        let cap = if b.max == 0 {
            avg * NS / 10
        } else {
            b.max as u128 * b.max_length.max(1) as u128 * NS
        };
        let biggest = admitted
            .iter()
            .filter(|a| dir.is_none_or(|d| a.1 == d))
            .map(|a| units(kind, a.2))
            .max()
            .unwrap_or(0);
        for i in 0..admitted.len() {
            let mut sum = 0u128;
            for j in i..admitted.len() {
                let (tj, w, bytes) = admitted[j];
                if dir.is_some_and(|d| d != w) {
                    continue;
                }
                sum += units(kind, bytes);
                let span = (tj - admitted[i].0) as u128;
                assert!(
                    sum <= cap + avg * span + biggest,
                    "avg bound: kind {kind} sum {sum} cap {cap} span {span}"
                );
                if b.max_length > 1 {
                    assert!(
                        sum <= b.max as u128 * NS / 10 + b.max as u128 * span + biggest,
                        "burst bound: kind {kind} sum {sum} span {span}"
                    );
                }
            }
        }
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Alloc {
            size,
            gshift,
            ops,
            query,
        } => alloc(size, gshift, &ops, query),
        Input::Bitmaps { size, g, cmds } => bitmaps(size, g, &cmds),
        Input::Overlay { size, cshift, cmds } => overlay(size, cshift, &cmds),
        Input::Throttle { limits, reqs } => throttle(limits, &reqs),
    }
});
