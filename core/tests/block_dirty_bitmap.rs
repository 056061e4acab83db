//! Dirty bitmaps against a `Vec<bool>` model of each bitmap and its status.

// Wrapped so `cargo test block` selects these tests by name.
mod block_dirty_bitmap {
    use blockwire_core::block::Extent;
    use blockwire_core::block::contract::StatusQuery;
    use blockwire_core::block::dirty_bitmap::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Cmd {
        Mark(u64, u64),
        Clear(usize),
        Enable(usize),
        Disable(usize),
        Merge(usize, usize),
        Freeze(usize),
        Abdicate(usize),
        Reclaim(usize),
        Reset(usize, u64, u64),
        Remove(usize),
    }

    #[derive(Clone, Debug)]
    struct MBitmap {
        g: u64,
        bits: Vec<bool>,
        enabled: bool,
        successor: Option<Vec<bool>>,
    }

    const NAMES: [&str; 2] = ["a", "b"];

    fn dirty_runs(bm: &DirtyBitmap<Vec<u64>>, q: &StatusQuery) -> Vec<Extent> {
        let mut v = Vec::new();
        bm.block_status(q, &mut |e| {
            v.push(e);
            true
        })
        .unwrap();
        v
    }

    fn range(size: u64) -> impl Strategy<Value = (u64, u64)> {
        (0..=size, 0..=size).prop_map(|(a, b)| (a.min(b), a.max(b) - a.min(b)))
    }

    fn cmd(size: u64) -> impl Strategy<Value = Cmd> {
        prop_oneof![
            4 => range(size).prop_map(|(o, l)| Cmd::Mark(o, l)),
            1 => (0usize..2).prop_map(Cmd::Clear),
            1 => (0usize..2).prop_map(Cmd::Enable),
            1 => (0usize..2).prop_map(Cmd::Disable),
            1 => (0usize..2, 0usize..2).prop_map(|(a, b)| Cmd::Merge(a, b)),
            1 => (0usize..2).prop_map(Cmd::Freeze),
            1 => (0usize..2).prop_map(Cmd::Abdicate),
            1 => (0usize..2).prop_map(Cmd::Reclaim),
            1 => (0usize..2, range(size)).prop_map(|(i, (o, l))| Cmd::Reset(i, o, l)),
            1 => (0usize..2).prop_map(Cmd::Remove),
        ]
    }

    fn case() -> impl Strategy<Value = (u64, [u32; 2], Vec<Cmd>)> {
        (1u64..40_000, 9u32..13, 9u32..13).prop_flat_map(|(size, g1, g2)| {
            (
                Just(size),
                Just([1 << g1, 1 << g2]),
                prop::collection::vec(cmd(size), 0..25),
            )
        })
    }

    fn model_status(m: &MBitmap) -> DirtyBitmapStatus {
        if m.successor.is_some() {
            DirtyBitmapStatus::Frozen
        } else if m.enabled {
            DirtyBitmapStatus::Active
        } else {
            DirtyBitmapStatus::Disabled
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn set_agrees_with_model((size, gran, cmds) in case()) {
            let mut set: BitmapSet<Vec<u64>, 2> = BitmapSet::new();
            let mut model: [Option<MBitmap>; 2] = [None, None];
            for i in 0..2 {
                set.add_vec(NAMES[i], size, Some(gran[i])).unwrap();
                let g = u64::from(gran[i]);
                model[i] = Some(MBitmap { g, bits: vec![false; size.div_ceil(g) as usize], enabled: true, successor: None });
            }
            for c in &cmds {
                match *c {
                    Cmd::Mark(o, l) => {
                        set.mark(o, l);
                        for m in model.iter_mut().flatten() {
                            if l == 0 || !m.enabled { continue; }
                            let target = m.successor.as_mut().unwrap_or(&mut m.bits);
                            for cell in (o / m.g)..(o + l).div_ceil(m.g) { target[cell as usize] = true; }
                        }
                    }
                    Cmd::Clear(i) => {
                        let r = set.clear(NAMES[i]);
                        match &mut model[i] {
                            None => prop_assert_eq!(r, Err(BitmapError::NotFound)),
                            Some(m) => match model_status(m) {
                                DirtyBitmapStatus::Active => { prop_assert_eq!(r, Ok(())); m.bits.fill(false); }
                                DirtyBitmapStatus::Frozen => prop_assert_eq!(r, Err(BitmapError::Frozen)),
                                DirtyBitmapStatus::Disabled => prop_assert_eq!(r, Err(BitmapError::Disabled)),
                            },
                        }
                    }
                    Cmd::Enable(i) | Cmd::Disable(i) => {
                        let on = matches!(c, Cmd::Enable(_));
                        let r = if on { set.enable(NAMES[i]) } else { set.disable(NAMES[i]) };
                        match &mut model[i] {
                            None => prop_assert_eq!(r, Err(BitmapError::NotFound)),
                            Some(m) if m.successor.is_some() => prop_assert_eq!(r, Err(BitmapError::Frozen)),
                            Some(m) => { prop_assert_eq!(r, Ok(())); m.enabled = on; }
                        }
                    }
                    Cmd::Merge(t, s) => {
                        let r = set.merge(NAMES[t], NAMES[s]);
                        if model[t].is_none() || model[s].is_none() {
                            prop_assert_eq!(r, Err(BitmapError::NotFound));
                            continue;
                        }
                        let src = model[s].clone().unwrap();
                        let m = model[t].as_mut().unwrap();
                        match model_status(m) {
                            DirtyBitmapStatus::Frozen => prop_assert_eq!(r, Err(BitmapError::Frozen)),
                            DirtyBitmapStatus::Disabled => prop_assert_eq!(r, Err(BitmapError::Disabled)),
                            DirtyBitmapStatus::Active => {
                                prop_assert_eq!(r, Ok(()));
                                for b in 0..size {
                                    if src.bits[(b / src.g) as usize] { m.bits[(b / m.g) as usize] = true; }
                                }
                            }
                        }
                    }
                    Cmd::Freeze(i) => {
                        let r = set.freeze_vec(NAMES[i]);
                        match &mut model[i] {
                            None => prop_assert_eq!(r, Err(BitmapError::NotFound)),
                            Some(m) if m.successor.is_some() => prop_assert_eq!(r, Err(BitmapError::Frozen)),
                            Some(m) => { prop_assert_eq!(r, Ok(())); m.successor = Some(vec![false; m.bits.len()]); }
                        }
                    }
                    Cmd::Abdicate(i) | Cmd::Reclaim(i) => {
                        let abdicate = matches!(c, Cmd::Abdicate(_));
                        let r = if abdicate { set.abdicate(NAMES[i]) } else { set.reclaim(NAMES[i]) };
                        match model[i].as_mut().and_then(|m| m.successor.take().map(|s| (m, s))) {
                            None => prop_assert_eq!(r.err(), Some(BitmapError::NotFound)),
                            Some((m, succ)) => {
                                prop_assert!(r.is_ok());
                                if abdicate {
                                    m.bits = succ;
                                } else {
                                    for (b, s) in m.bits.iter_mut().zip(succ) { *b |= s; }
                                }
                            }
                        }
                    }
                    Cmd::Reset(i, o, l) => {
                        let r = set.get_mut(NAMES[i]).map(|bm| bm.reset(o, l));
                        match &mut model[i] {
                            None => prop_assert!(r.is_none()),
                            Some(m) if m.successor.is_some() => prop_assert_eq!(r, Some(Err(BitmapError::Frozen))),
                            Some(m) => {
                                prop_assert_eq!(r, Some(Ok(())));
                                for (c, bit) in m.bits.iter_mut().enumerate() {
                                    let cs = c as u64 * m.g;
                                    let ce = (cs + m.g).min(size);
                                    if l > 0 && o <= cs && ce <= o + l { *bit = false; }
                                }
                            }
                        }
                    }
                    Cmd::Remove(i) => {
                        let r = set.remove(NAMES[i]);
                        match &model[i] {
                            None => prop_assert_eq!(r.err(), Some(BitmapError::NotFound)),
                            Some(m) if m.successor.is_some() => prop_assert_eq!(r.err(), Some(BitmapError::Frozen)),
                            Some(_) => { prop_assert!(r.is_ok()); model[i] = None; }
                        }
                    }
                }
                // Full agreement after every command.
                for i in 0..2 {
                    let bm = set.get(NAMES[i]);
                    prop_assert_eq!(bm.is_some(), model[i].is_some());
                    let (Some(bm), Some(m)) = (bm, &model[i]) else { continue };
                    let info = bm.info();
                    prop_assert_eq!(info.status, model_status(m));
                    let want_count: u64 = (0..size).filter(|b| m.bits[(b / m.g) as usize]).count() as u64;
                    prop_assert_eq!(info.count, want_count);
                    let ext = dirty_runs(bm, &StatusQuery::new(0, size));
                    let got: Vec<bool> = ext.iter().flat_map(|e| std::iter::repeat_n(e.flags == 1, e.length as usize)).collect();
                    let want: Vec<bool> = (0..size).map(|b| m.bits[(b / m.g) as usize]).collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
    }

    #[test]
    fn granularity_bounds() {
        let mut set: BitmapSet<Vec<u64>, 8> = BitmapSet::new();
        assert_eq!(
            set.add_vec("x", 1 << 20, Some(256)),
            Err(BitmapError::BadGranularity)
        );
        assert_eq!(
            set.add_vec("x", 1 << 20, Some(3000)),
            Err(BitmapError::BadGranularity)
        );
        assert_eq!(
            set.add_vec("x", 1 << 20, Some(128 << 20)),
            Err(BitmapError::BadGranularity)
        );
        assert_eq!(set.add_vec("x", 1 << 20, Some(512)), Ok(()));
        assert_eq!(
            set.add_vec("x", 1 << 20, Some(512)),
            Err(BitmapError::Exists)
        );
        assert_eq!(set.add_vec("y", 1 << 20, Some(64 << 20)), Ok(()));
        assert_eq!(set.add_vec("z", 1 << 20, None), Ok(()));
        assert_eq!(set.get("z").unwrap().granularity(), DEFAULT_GRANULARITY);
        assert_eq!(set.add_vec("", 1 << 20, None), Err(BitmapError::BadName));
        let long = "n".repeat(NAME_CAP + 1);
        assert_eq!(set.add_vec(&long, 1 << 20, None), Err(BitmapError::BadName));
        let mut w = [0u64; 1];
        let mut tiny: BitmapSet<&mut [u64], 1> = BitmapSet::new();
        assert_eq!(
            tiny.add("t", &mut w[..], 1 << 20, Some(512)),
            Err(BitmapError::StorageTooSmall)
        );
    }

    #[test]
    fn unaligned_edges_at_512_and_64m() {
        let mut set: BitmapSet<Vec<u64>, 2> = BitmapSet::new();
        let size = (1u64 << 40) + 4096; // 1 TiB plus a short last granule
        set.add_vec("big", size, Some(64 << 20)).unwrap();
        set.add_vec("small", 1 << 20, Some(512)).unwrap();
        set.mark(size - 1, 1);
        set.mark(1000, 20); // granule 1 of "small", granule 0 of "big"
        let big = set.get("big").unwrap();
        assert_eq!(big.info().count, (64 << 20) + 4096);
        assert!(big.is_dirty(size - 1) && !big.is_dirty(size - 4097));
        let q = StatusQuery::new(size - 10, 10);
        assert_eq!(dirty_runs(big, &q), vec![Extent::new(10, 1)]);
        let small = set.get("small").unwrap();
        assert_eq!(small.info().count, 512);
        let q = StatusQuery::new(700, 1000).req_one(true);
        assert_eq!(dirty_runs(small, &q), vec![Extent::new(324, 1)]);
        // Marks past the end are ignored, never a panic.
        set.mark(u64::MAX - 1, 100);
        set.mark(1 << 20, 1);
        assert_eq!(set.get("small").unwrap().info().count, 512);
    }

    #[test]
    fn huge_disk_geometry_does_not_overflow() {
        let disk = 1u64 << 63;
        assert_eq!(
            DirtyBitmap::<Vec<u64>>::words_needed(disk, 64 << 20),
            Some(1 << 31)
        );
        let mut w = [0u64; 4];
        assert_eq!(
            DirtyBitmap::new("h", &mut w[..], disk, 64 << 20).err(),
            Some(BitmapError::StorageTooSmall)
        );
        let mut w = [0u64; 1];
        let mut bm = DirtyBitmap::new("h", &mut w[..], 64 << 20, 64 << 20).unwrap();
        assert_eq!(bm.set_dirty(u64::MAX, 1), Err(BitmapError::OutOfRange));
        assert_eq!(bm.reset(1, u64::MAX), Err(BitmapError::OutOfRange));
        let mut sink = |_: Extent| true;
        assert_eq!(
            bm.block_status(&StatusQuery::new(u64::MAX, 1), &mut sink),
            Err(BitmapError::OutOfRange)
        );
    }

    #[test]
    fn context_names_and_backup_cycle() {
        let mut set: BitmapSet<Vec<u64>, 2> = BitmapSet::new();
        set.add_vec("inc0", 1 << 20, None).unwrap();
        assert!(set.find_context("qemu:dirty-bitmap:inc0").is_some());
        assert!(set.find_context("qemu:dirty-bitmap:nope").is_none());
        assert!(set.find_context("base:allocation").is_none());
        set.mark(0, 1);
        set.freeze_vec("inc0").unwrap();
        assert_eq!(set.get("inc0").unwrap().status(), DirtyBitmapStatus::Frozen);
        set.mark(200_000, 1); // recorded by the successor only
        assert_eq!(set.get("inc0").unwrap().info().count, 65536);
        assert_eq!(set.remove("inc0").err(), Some(BitmapError::Frozen));
        set.abdicate("inc0").unwrap();
        let bm = set.get("inc0").unwrap();
        assert!(!bm.is_dirty(0) && bm.is_dirty(200_000));
        assert_eq!(bm.status().as_str(), "active");
    }
}
