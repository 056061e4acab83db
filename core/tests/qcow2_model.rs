//! Property tests of the qcow2 core without QEMU: images the core formats
//! itself, driven by random writes, zeroes, discards and flushes, must read
//! back like a byte-array model and keep refcounts exact (no reference
//! above its refcount, no leak), for every geometry: cluster sizes 512 B to
//! 64 KiB, refcount widths 1 to 64 bits, versions 2 and 3, extended L2
//! entries, tiny caches.

mod qcow2_support;

mod qcow2_model {
    use super::qcow2_support::*;
    use blockwire_core::qcow2::create::Options;
    use blockwire_core::qcow2::header::HeaderArea;
    use blockwire_core::qcow2::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Cmd {
        Write(u64, u64, u8),
        Zero(u64, u64, bool),
        Discard(u64, u64),
        Flush,
    }

    fn cmd(size: u64) -> impl Strategy<Value = Cmd> {
        let range = (0..size).prop_flat_map(move |o| (Just(o), 1..=(size - o).min(200_000)));
        prop_oneof![
            4 => (range.clone(), any::<u8>()).prop_map(|((o, l), p)| Cmd::Write(o, l, p)),
            2 => (range.clone(), any::<bool>()).prop_map(|((o, l), u)| Cmd::Zero(o, l, u)),
            1 => range.prop_map(|(o, l)| Cmd::Discard(o, l)),
            1 => Just(Cmd::Flush),
        ]
    }

    fn geometry() -> impl Strategy<Value = (u32, u32, u32, bool, usize)> {
        prop_oneof![
            (9u32..=16, Just(3u32), 0u32..=6, Just(false), 2usize..=6),
            (Just(16u32), Just(2u32), Just(4u32), Just(false), 2usize..=4),
            (14u32..=16, Just(3u32), 0u32..=6, Just(true), 2usize..=4),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn random_ops_match_model_and_keep_refcounts_exact(
            (cb, version, order, ext, slots) in geometry(),
            cmds in proptest::collection::vec(cmd(3 << 20), 1..30),
        ) {
            let size = 3u64 << 20;
            let opts = Options {
                size,
                cluster_bits: cb,
                version,
                refcount_order: if version == 2 { 4 } else { order },
                extended_l2: ext,
                ..Options::default()
            };
            let bytes = create_bytes(&opts);
            prop_assert_eq!(check_refcounts(&bytes), (0, 0));
            let cfg = Config { l2_slots: slots, refblock_slots: slots + 2, ..default_cfg(false) };
            let mut im = Image::open_store(Store::mem(bytes), std::path::Path::new("/"), &cfg).unwrap();
            let c = im.q.layout().cluster_size();
            let mut model = vec![0u8; size as usize];
            for cmd in &cmds {
                match *cmd {
                    Cmd::Write(o, l, p) => {
                        let data = pattern(p as u64 + o, l as usize);
                        im.write(o, &data).unwrap();
                        model[o as usize..(o + l) as usize].copy_from_slice(&data);
                    }
                    Cmd::Zero(o, l, u) => {
                        im.write_zeroes(o, l, u).unwrap();
                        model[o as usize..(o + l) as usize].fill(0);
                    }
                    Cmd::Discard(o, l) => {
                        im.discard(o, l).unwrap();
                        let s = o.div_ceil(c) * c;
                        let e = if o + l == size { size } else { (o + l) / c * c };
                        if s < e {
                            model[s as usize..e as usize].fill(0);
                        }
                    }
                    Cmd::Flush => im.flush().unwrap(),
                }
                let mut buf = vec![0u8; 70_000.min(size as usize)];
                let at = (o_of(cmd)).min(size - buf.len() as u64);
                im.read(at, &mut buf).unwrap();
                prop_assert!(buf == model[at as usize..at as usize + buf.len()], "read after {:?}", cmd);
            }
            im.flush().unwrap();
            prop_assert!(im.read_all() == model);
            let bytes = im.store.mem.clone();
            prop_assert_eq!(check_refcounts(&bytes), (0, 0));
            // Reopened from the bytes alone, the image reads the same.
            let mut again = Image::open_store(Store::mem(bytes), std::path::Path::new("/"), &default_cfg(true)).unwrap();
            prop_assert!(again.read_all() == model);
        }

        #[test]
        fn header_area_round_trips(
            cb in 9u32..=21,
            version in 2u32..=3,
            name in proptest::collection::vec(1u8..=255, 0..200),
            fmt in proptest::collection::vec(b'a'..=b'z', 0..15),
            size in 0u64..(1 << 36),
        ) {
            let opts = Options {
                size,
                cluster_bits: cb,
                version,
                backing_file: &name,
                backing_format: &fmt,
                ..Options::default()
            };
            let c = blockwire_core::qcow2::create::Create::new(&opts).unwrap();
            let mut b = vec![0u8; c.cluster_size() as usize];
            c.cluster(0, &mut b).unwrap();
            let a = HeaderArea::parse(&b).unwrap();
            prop_assert_eq!(a.backing_name.as_bytes(), &name[..]);
            prop_assert_eq!(a.backing_format.as_bytes(), &fmt[..]);
            prop_assert_eq!(a.header.size, size);
            let mut a2 = a.clone();
            let mut b2 = vec![0u8; b.len()];
            a2.emit(&mut b2).unwrap();
            prop_assert_eq!(HeaderArea::parse(&b2).unwrap(), a);
        }

        #[test]
        fn refcount_entries_of_every_width(order in 0u32..=6, vals in proptest::collection::vec(any::<u64>(), 1..200)) {
            let h = Header::parse(&{
                let c = blockwire_core::qcow2::create::Create::new(&Options { size: 1 << 20, refcount_order: order, ..Options::default() }).unwrap();
                let mut b = vec![0u8; 65536];
                c.cluster(0, &mut b).unwrap();
                b
            }).unwrap();
            let lay = blockwire_core::qcow2::layout::Layout::new(&h);
            let mut words = vec![0u64; 8192];
            let max = lay.refcount_max();
            for (i, v) in vals.iter().enumerate() {
                lay.refcount_set(&mut words, i as u64 * 7, v & max);
            }
            for (i, v) in vals.iter().enumerate() {
                // Later writes to the same index win; indices are distinct.
                prop_assert_eq!(lay.refcount_get(&words, i as u64 * 7), v & max);
            }
        }

        #[test]
        fn arbitrary_cluster0_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048), fs in 0u64..(1 << 30)) {
            let mut b = bytes;
            if b.len() >= 8 && b[0] % 2 == 0 {
                b[..4].copy_from_slice(b"QFI\xfb");
                let v = 2 + (b[4] as u32 % 2);
                b[4..8].copy_from_slice(&v.to_be_bytes());
            }
            if let Ok(a) = HeaderArea::parse(&b) {
                let _ = Qcow2::words_needed(&a, &Config::default());
                if let Ok(words) = Qcow2::words_needed(&a, &Config { max_l1_bytes: 1 << 16, max_reftable_bytes: 1 << 16, ..Config::default() }) {
                    let _ = Qcow2::open(a, fs, &Config { max_l1_bytes: 1 << 16, max_reftable_bytes: 1 << 16, ..Config::default() }, vec![0u64; words]);
                }
            }
        }
    }

    fn o_of(c: &Cmd) -> u64 {
        match *c {
            Cmd::Write(o, ..) | Cmd::Zero(o, ..) | Cmd::Discard(o, _) => o,
            Cmd::Flush => 0,
        }
    }

    #[test]
    fn tiny_caches_still_work_with_many_tables() {
        // Two L2 slots, four refcount slots, 512-byte clusters: every write
        // evicts; dirty slots force flushes from inside plans.
        let size = 2u64 << 20;
        let bytes = create_bytes(&Options {
            size,
            cluster_bits: 9,
            refcount_order: 6,
            ..Options::default()
        });
        let cfg = Config {
            l2_slots: 2,
            refblock_slots: 4,
            ..default_cfg(false)
        };
        let mut im = Image::open_store(Store::mem(bytes), std::path::Path::new("/"), &cfg).unwrap();
        let mut model = vec![0u8; size as usize];
        let mut r = Rng(5);
        for i in 0..300 {
            let o = r.below(size - 5000);
            let l = 1 + r.below(5000);
            let p = pattern(i, l as usize);
            im.write(o, &p).unwrap();
            model[o as usize..(o + l) as usize].copy_from_slice(&p);
        }
        im.flush().unwrap();
        assert!(im.read_all() == model);
        assert_eq!(check_refcounts(&im.store.mem), (0, 0));
    }

    #[test]
    fn read_only_refuses_writes_and_plans_need_an_open_image() {
        let bytes = create_bytes(&Options {
            size: 1 << 20,
            ..Options::default()
        });
        let mut im = Image::open_store(
            Store::mem(bytes.clone()),
            std::path::Path::new("/"),
            &default_cfg(true),
        )
        .unwrap();
        assert_eq!(im.write(0, &[1]), Err(Qcow2Error::ReadOnly));
        assert_eq!(im.discard(0, 65536), Err(Qcow2Error::ReadOnly));
        // Before the tables are loaded nothing answers.
        let area = HeaderArea::parse(&bytes).unwrap();
        let cfg = Config::default();
        let words = Qcow2::words_needed(&area, &cfg).unwrap();
        let mut q = Qcow2::open(area, bytes.len() as u64, &cfg, vec![0u64; words]).unwrap();
        assert!(q.open_need().is_some());
        assert_eq!(q.map(0, 1), Err(Qcow2Error::Protocol));
        // Bytes for something that was not asked for are refused.
        let bogus = Load {
            what: Meta::L2Table,
            offset: 65536 * 9,
            len: 65536,
            epoch: 0,
        };
        assert_eq!(q.install(bogus, &[0; 10]), Err(Qcow2Error::Protocol));
        // Out of range requests.
        let mut im = Image::open_store(
            Store::mem(bytes),
            std::path::Path::new("/"),
            &default_cfg(false),
        )
        .unwrap();
        assert_eq!(im.write(1 << 20, &[1]), Err(Qcow2Error::OutOfRange));
        assert_eq!(im.q.map(1 << 20, 1), Err(Qcow2Error::OutOfRange));
    }

    #[test]
    fn a_load_that_crosses_a_flush_is_ignored() {
        // Reader asks for an L2 table; before its bytes arrive someone else
        // loads, changes, flushes and evicts the table. The late bytes are
        // stale and must not be installed.
        let bytes = create_bytes(&Options {
            size: 8 << 20,
            cluster_bits: 12,
            ..Options::default()
        });
        let cfg = Config {
            l2_slots: 2,
            ..default_cfg(false)
        };
        let mut im = Image::open_store(Store::mem(bytes), std::path::Path::new("/"), &cfg).unwrap();
        im.write(0, &[1u8; 4096]).unwrap();
        im.flush().unwrap();
        // Evict table 0 by touching two other tables.
        im.write(2 << 20, &[2u8; 10]).unwrap();
        im.write(4 << 20, &[2u8; 10]).unwrap();
        im.flush().unwrap();
        let stale_load = match im.q.map(0, 4096).unwrap() {
            MapResult::Need(Need::Load(l)) => l,
            other => panic!("{other:?}"),
        };
        let mut stale = vec![0u8; stale_load.len as usize];
        im.store.read_at(stale_load.offset, &mut stale);
        // Meanwhile: table 0 changes (a new cluster at 8 KiB) and is flushed.
        im.write(8192, &[3u8; 4096]).unwrap();
        im.flush().unwrap();
        im.write(2 << 20, &[4u8; 10]).unwrap();
        im.write(4 << 20, &[4u8; 10]).unwrap();
        im.flush().unwrap();
        im.q.install(stale_load, &stale).unwrap();
        let mut b = vec![0u8; 4096];
        im.read(8192, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 3), "stale L2 table installed");
    }

    #[test]
    fn flush_plan_orders_refcounts_before_l2_before_l1() {
        let bytes = create_bytes(&Options {
            size: 8 << 20,
            ..Options::default()
        });
        let mut im = Image::open_store(
            Store::mem(bytes),
            std::path::Path::new("/"),
            &default_cfg(false),
        )
        .unwrap();
        im.write(5 << 20, &[3u8; 100]).unwrap();
        let mut steps = Vec::new();
        let Plan::Planned(p) = im.q.plan_flush(&mut |s| steps.push(s)).unwrap() else {
            panic!()
        };
        let pos = |m: Meta| {
            steps
                .iter()
                .position(|s| matches!(s, Step::Meta { what, .. } if *what == m))
                .unwrap()
        };
        let flush_between =
            |a: usize, b: usize| steps[a..b].iter().any(|s| matches!(s, Step::Flush));
        let (rb, l2, l1) = (
            pos(Meta::RefcountBlock),
            pos(Meta::L2Table),
            pos(Meta::L1Table),
        );
        assert!(
            rb < l2 && l2 < l1 && flush_between(rb, l2) && flush_between(l2, l1),
            "{steps:?}"
        );
        assert!(matches!(steps.last(), Some(Step::Flush)));
        // No other plan while a flush is in flight.
        assert_eq!(
            im.q.plan_write(0, 1, &mut |_| {}),
            Err(Qcow2Error::Protocol)
        );
        im.q.abort(p.ticket);
    }
}

mod qcow2_abort {
    use super::qcow2_support::*;
    use blockwire_core::qcow2::create::Options;
    use blockwire_core::qcow2::*;

    #[test]
    fn aborted_allocating_write_leaks_nothing_and_changes_nothing() {
        let bytes = create_bytes(&Options {
            size: 4 << 20,
            ..Options::default()
        });
        let mut im = Image::open_store(
            Store::mem(bytes),
            std::path::Path::new("/"),
            &default_cfg(false),
        )
        .unwrap();
        im.write(0, &[1u8; 100]).unwrap();
        im.flush().unwrap();
        // Plan a write into a fresh cluster, then abort it (a step failed).
        let p = loop {
            let mut steps = Vec::new();
            match im
                .q
                .plan_write(1 << 20, 4096, &mut |s| steps.push(s))
                .unwrap()
            {
                Plan::Planned(p) if p.covered > 0 => break p,
                Plan::Planned(p) => im.q.commit(p.ticket).unwrap(),
                Plan::Need(Need::Load(l)) => {
                    let mut b = vec![0u8; l.len as usize];
                    im.store.read_at(l.offset, &mut b);
                    im.q.install(l, &b).unwrap();
                }
                Plan::Need(Need::Flush) => im.flush().unwrap(),
            }
        };
        im.q.abort(p.ticket);
        im.flush().unwrap();
        let mut b = vec![9u8; 4096];
        im.read(1 << 20, &mut b).unwrap();
        assert!(b.iter().all(|&x| x == 0));
        assert_eq!(check_refcounts(&im.store.mem), (0, 0));
    }
}
