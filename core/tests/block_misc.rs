//! Raw window, zero/discard policy and write threshold.

// Wrapped so `cargo test block` selects these tests by name.
mod block_misc {
    use blockwire_core::block::Extent;
    use blockwire_core::block::contract::{BlockError, ReqFlags};
    use blockwire_core::block::raw_window::RawWindow;
    use blockwire_core::block::write_threshold::WriteThreshold;
    use blockwire_core::block::zero_policy::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn raw_window_maps_exactly_the_window(
            child in 0u64..1 << 20, off in 0u64..1 << 20, sectors in prop::option::of(0u64..2048),
            a in 0u64..1 << 21, l in 0u64..1 << 21,
        ) {
            let size = sectors.map(|s| s * 512);
            let w = RawWindow::new(child, off, size);
            let valid = off <= child && size.is_none_or(|s| off + s <= child);
            prop_assert_eq!(w.is_ok(), valid);
            let Ok(w) = w else { return Ok(()) };
            prop_assert_eq!(w.size(), size.unwrap_or(child - off));
            let r = w.to_child(a, l);
            if a + l <= w.size() {
                prop_assert_eq!(r, Ok(off + a));
                prop_assert!(off + a + l <= child);
            } else {
                prop_assert_eq!(r, Err(BlockError::OutOfRange));
            }
            let e = w.clip_extent(a.min(w.size()), Extent::new(l, 1));
            prop_assert!(a.min(w.size()) + e.length <= w.size());
        }

        #[test]
        fn detect_zeroes_matches_naive(buf in prop::collection::vec(prop_oneof![9 => Just(0u8), 1 => any::<u8>()], 0..100)) {
            let naive = buf.iter().all(|&b| b == 0);
            prop_assert_eq!(is_zero(&buf), naive);
            let on = ZeroPolicy::new(DetectZeroes::On, Discard::Ignore).unwrap();
            let want = if naive { WriteAction::WriteZeroes { may_unmap: false } } else { WriteAction::Write };
            prop_assert_eq!(on.plan_write(&buf), want);
            prop_assert_eq!(ZeroPolicy::default().plan_write(&buf), WriteAction::Write);
        }

        #[test]
        fn threshold_fires_once_when_passed(t in 0u64..10_000, writes in prop::collection::vec((0u64..12_000, 0u64..3000), 0..20)) {
            let mut wt = WriteThreshold::new("node").unwrap();
            wt.set(t);
            let mut fired = false;
            for (o, l) in writes {
                let ev = wt.check_write(o, l).map(|e| (e.amount_exceeded, e.write_threshold));
                let should = !fired && t > 0 && o + l > t;
                prop_assert_eq!(ev, should.then(|| (o + l - t, t)));
                fired |= should;
            }
            prop_assert_eq!(wt.get(), if fired { 0 } else { t });
        }
    }

    #[test]
    fn raw_window_edges() {
        let disk = 1u64 << 63;
        assert_eq!(RawWindow::new(disk, 0, None).unwrap().size(), disk);
        let w = RawWindow::new(disk, disk - 512, Some(512)).unwrap();
        assert_eq!(w.to_child(511, 1), Ok(disk - 1));
        assert_eq!(w.to_child(512, 0), Ok(disk));
        assert_eq!(w.to_child(512, 1), Err(BlockError::OutOfRange));
        assert_eq!(w.to_child(u64::MAX, 2), Err(BlockError::OutOfRange));
        assert_eq!(
            RawWindow::new(100, 0, Some(100)).err(),
            Some(BlockError::Misaligned)
        );
        assert_eq!(
            RawWindow::new(100, 101, None).err(),
            Some(BlockError::OutOfRange)
        );
        assert_eq!(
            RawWindow::new(u64::MAX, u64::MAX - 100, Some(512)).err(),
            Some(BlockError::OutOfRange)
        );
        assert_eq!(RawWindow::new(0, 0, Some(0)).map(|w| w.size()), Ok(0));
    }

    #[test]
    fn policies() {
        assert_eq!(
            ZeroPolicy::new(DetectZeroes::Unmap, Discard::Ignore),
            Err(BlockError::Invalid)
        );
        let p = ZeroPolicy::new(DetectZeroes::Unmap, Discard::Unmap).unwrap();
        assert_eq!(
            p.plan_write(&[]),
            WriteAction::WriteZeroes { may_unmap: true }
        );
        assert!(p.zeroes_may_unmap(ReqFlags::empty()));
        assert!(!p.zeroes_may_unmap(ReqFlags::NO_HOLE));
        assert_eq!(p.plan_discard(), DiscardAction::Unmap);
        let q = ZeroPolicy::new(DetectZeroes::On, Discard::Ignore).unwrap();
        assert!(!q.zeroes_may_unmap(ReqFlags::empty()));
        assert_eq!(q.plan_discard(), DiscardAction::Ignore);
        assert_eq!(DetectZeroes::parse("unmap"), Some(DetectZeroes::Unmap));
        assert_eq!(DetectZeroes::parse("yes"), None);
        assert_eq!(Discard::parse("on"), Some(Discard::Unmap));
        assert_eq!(Discard::parse("ignore"), Some(Discard::Ignore));
        assert_eq!(Discard::parse(""), None);
        assert!(!is_zero(
            &[0; 33].iter().copied().chain([1]).collect::<Vec<_>>()
        ));
    }

    #[test]
    fn threshold_edges() {
        let disk = 1u64 << 63;
        let mut t = WriteThreshold::new("n").unwrap();
        assert!(t.check_write(u64::MAX, u64::MAX).is_none()); // disabled
        t.set(disk - 1);
        assert!(t.check_write(disk - 2, 1).is_none());
        let e = t.check_write(disk - 1, 1).unwrap();
        assert_eq!(
            (e.amount_exceeded, e.write_threshold, e.node_name),
            (1, disk - 1, "n")
        );
        t.set(5);
        assert_eq!(
            t.check_write(u64::MAX, u64::MAX).map(|e| e.amount_exceeded),
            Some(u64::MAX - 5)
        );
        assert!(WriteThreshold::new(&"x".repeat(200)).is_err());
    }
}
