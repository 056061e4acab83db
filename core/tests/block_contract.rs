//! Extent emission rules, range checks and request splitting.

// Wrapped so `cargo test block` selects these tests by name.
mod block_contract {
    use blockwire_core::block::Extent;
    use blockwire_core::block::contract::*;
    use proptest::prelude::*;

    /// The naive answer: expand runs to bytes, clip, merge, split, cap.
    fn naive(runs: &[(u64, u64)], q: &StatusQuery) -> Vec<Extent> {
        let mut bytes = Vec::new();
        for &(len, flags) in runs {
            for _ in 0..len {
                bytes.push(flags);
            }
        }
        bytes.truncate(q.length as usize);
        let mut merged: Vec<Extent> = Vec::new();
        for f in bytes {
            match merged.last_mut() {
                Some(e) if e.flags == f => e.length += 1,
                _ => merged.push(Extent::new(1, f)),
            }
        }
        let max_len = q.max_extent_len.max(1);
        let mut out = Vec::new();
        for e in merged {
            let mut left = e.length;
            while left > 0 {
                let n = left.min(max_len);
                out.push(Extent::new(n, e.flags));
                left -= n;
            }
        }
        let cap = if q.req_one {
            1
        } else {
            q.max_extents.max(1) as usize
        };
        out.truncate(cap);
        out
    }

    fn emit(
        runs: &[(u64, u64)],
        q: &StatusQuery,
        stop_after: usize,
    ) -> (Vec<Extent>, StatusSummary) {
        let mut got = Vec::new();
        let mut sink = |e: Extent| {
            got.push(e);
            got.len() < stop_after
        };
        let mut em = ExtentEmitter::new(q, &mut sink);
        for &(len, flags) in runs {
            if !em.push(len, flags) {
                break;
            }
        }
        let s = em.finish();
        (got, s)
    }

    proptest! {
        #[test]
        fn emitter_matches_naive(
            runs in prop::collection::vec((0u64..40, 0u64..3), 0..30),
            length in 0u64..600,
            req_one in any::<bool>(),
            max_extents in 0u32..12,
            max_len in 0u64..50,
        ) {
            let q = StatusQuery::new(0, length).req_one(req_one).max_extents(max_extents).max_extent_len(max_len);
            let (got, s) = emit(&runs, &q, usize::MAX);
            let want = naive(&runs, &q);
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(s.extents as usize, got.len());
            prop_assert_eq!(s.covered, got.iter().map(|e| e.length).sum::<u64>());
            prop_assert!(s.covered <= length);
            prop_assert!(got.iter().all(|e| e.length > 0));
        }

        #[test]
        fn sink_can_stop_early(
            runs in prop::collection::vec((1u64..40, 0u64..3), 1..30),
            stop in 1usize..5,
        ) {
            let q = StatusQuery::new(0, 10_000);
            let (got, s) = emit(&runs, &q, stop);
            let want = naive(&runs, &q);
            prop_assert_eq!(got.len(), want.len().min(stop));
            prop_assert_eq!(&got[..], &want[..got.len()]);
            prop_assert_eq!(s.extents as usize, got.len());
        }

        #[test]
        fn split_covers_and_respects_limits(
            offset in 0u64..10_000,
            length in 0u64..10_000,
            opt_shift in 0u32..8,
            max_mul in 0u64..6,
            op_is_zero in any::<bool>(),
        ) {
            let opt = 1u64 << opt_shift;
            let op = if op_is_zero { Op::WriteZeroes } else { Op::Trim };
            let limits = Limits {
                opt_write_zero: opt, max_write_zero: opt * max_mul,
                opt_discard: opt, max_discard: opt * max_mul,
                ..Limits::default()
            };
            prop_assert!(limits.validate().is_ok());
            let pieces: Vec<_> = limits.split(op, offset, length).collect();
            let mut pos = offset;
            for (i, &(o, l)) in pieces.iter().enumerate() {
                prop_assert_eq!(o, pos);
                prop_assert!(l > 0 && l <= limits.max_for(op));
                if i > 0 {
                    prop_assert_eq!(o % opt, 0, "piece {} of {:?} unaligned", i, pieces);
                }
                pos += l;
            }
            prop_assert_eq!(pos, offset + length);
        }
    }

    #[test]
    fn check_range_edges() {
        let disk = 1u64 << 63;
        assert_eq!(check_range(0, 0, 0), Ok(0));
        assert_eq!(check_range(disk, 0, disk), Ok(disk));
        assert_eq!(check_range(disk - 1, 1, disk), Ok(disk));
        assert_eq!(check_range(disk, 1, disk), Err(BlockError::OutOfRange));
        assert_eq!(
            check_range(u64::MAX, 1, u64::MAX),
            Err(BlockError::OutOfRange)
        );
        assert_eq!(
            check_range(1, u64::MAX, u64::MAX),
            Err(BlockError::OutOfRange)
        );
    }

    #[test]
    fn limits_check_and_validate() {
        let l = Limits {
            align: 512,
            max_transfer: 4096,
            ..Limits::default()
        };
        assert!(l.validate().is_ok());
        let req = |op, offset, length| Request {
            op,
            offset,
            length,
            flags: ReqFlags::empty(),
        };
        assert_eq!(l.check(&req(Op::Read, 512, 1024), 1 << 20), Ok(()));
        assert_eq!(
            l.check(&req(Op::Read, 500, 1024), 1 << 20),
            Err(BlockError::Misaligned)
        );
        assert_eq!(
            l.check(&req(Op::Write, 0, 8192), 1 << 20),
            Err(BlockError::TooLarge)
        );
        assert_eq!(l.check(&req(Op::WriteZeroes, 1, 3), 1 << 20), Ok(()));
        assert_eq!(
            l.check(&req(Op::Read, 1 << 20, 512), 1 << 20),
            Err(BlockError::OutOfRange)
        );
        assert_eq!(l.check(&req(Op::Flush, u64::MAX, u64::MAX), 0), Ok(()));
        assert!(
            Limits {
                align: 3,
                ..Limits::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Limits {
                align: 512,
                max_transfer: 1000,
                ..Limits::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Limits {
                opt_discard: 4096,
                max_discard: 6144,
                ..Limits::default()
            }
            .validate()
            .is_err()
        );
        assert_eq!(BlockError::OutOfRange.nbd_errno(), 22);
        assert_eq!(BlockError::Io(5).nbd_errno(), 5);
    }

    #[test]
    fn split_at_top_of_address_space() {
        let l = Limits {
            opt_discard: 1 << 20,
            max_discard: 1 << 30,
            ..Limits::default()
        };
        let start = u64::MAX - 3 * (1 << 30) - 17;
        let pieces: Vec<_> = l.split(Op::Trim, start, u64::MAX - start).collect();
        assert_eq!(pieces.iter().map(|p| p.1).sum::<u64>(), u64::MAX - start);
        assert_eq!(pieces.last().map(|p| p.0 + p.1), Some(u64::MAX));
    }

    #[test]
    fn req_one_clips_to_request_and_zero_length_is_empty() {
        let q = StatusQuery::new(0, 10).req_one(true);
        let (got, _) = emit(&[(100, 1)], &q, usize::MAX);
        assert_eq!(got, vec![Extent::new(10, 1)]);
        let (got, s) = emit(&[(100, 1)], &StatusQuery::new(0, 0), usize::MAX);
        assert!(got.is_empty());
        assert_eq!(s, StatusSummary::default());
    }

    #[test]
    fn status_gather_clips_skips_empty_runs_and_asks_again_where_short() {
        let mut g = StatusGather::new(100, 1000);
        let mut got = Vec::new();
        g.answer([Extent::new(0, 1), Extent::new(300, 3)], |e| got.push(e));
        assert_eq!(g.query(), Some((400, 700)));
        // Runs past the end are clipped, and the rest of an answer is dropped.
        g.answer([Extent::new(900, 0), Extent::new(5, 2)], |e| got.push(e));
        assert_eq!(g.query(), None);
        assert_eq!(got, [Extent::new(300, 3), Extent::new(700, 0)]);
        // Nothing to gather: nothing asked, nothing said.
        let mut g = StatusGather::new(7, 0);
        assert_eq!(g.query(), None);
        g.answer([Extent::new(1, 1)], |_| panic!("extent for an empty range"));
    }
}
