//! Block accounting against naive sums and a brute-force window model.

// Wrapped so `cargo test block` selects these tests by name.
mod block_stats {
    use blockwire_core::block::stats::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    struct Io {
        gap: u64,
        latency: u64,
        kind: usize,
        outcome: u8, // 0 done, 1 failed, 2 invalid
        bytes: u64,
    }

    const KINDS: [AcctType; 4] = [
        AcctType::Read,
        AcctType::Write,
        AcctType::Flush,
        AcctType::Unmap,
    ];

    fn io() -> impl Strategy<Value = Io> {
        (
            0u64..3_000_000_000,
            0u64..2_000_000_000,
            0usize..4,
            prop_oneof![6 => Just(0u8), 1 => Just(1), 1 => Just(2)],
            0u64..1 << 20,
        )
            .prop_map(|(gap, latency, kind, outcome, bytes)| Io {
                gap,
                latency,
                kind,
                outcome,
                bytes,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn counters_and_windows_match_models(
            ios in prop::collection::vec(io(), 0..40),
            account_failed in any::<bool>(),
            account_invalid in any::<bool>(),
            secs in 1u64..5,
            tail in 0u64..10_000_000_000,
        ) {
            let mut acct: BlockAcct<1> = BlockAcct::new(account_invalid, account_failed);
            let t0 = 1_000u64;
            acct.add_interval(secs, t0).unwrap();
            let mut now = t0;
            let mut last_access = None;
            let mut ops = [0u64; 4];
            let mut bytes = [0u64; 4];
            let mut total = [0u64; 4];
            let mut failed = [0u64; 4];
            let mut invalid = [0u64; 4];
            let mut accounted: Vec<(u64, usize, u64)> = Vec::new(); // (time, kind, latency)
            for io in &ios {
                // Completions arrive in time order; the request started `latency` earlier.
                now += io.gap;
                let kind = KINDS[io.kind];
                match io.outcome {
                    2 => {
                        acct.invalid(kind, now);
                        invalid[io.kind] += 1;
                        if account_invalid { last_access = Some(now); }
                    }
                    o => {
                        let c = acct.start(now.saturating_sub(io.latency), kind, io.bytes);
                        let lat = now - c.start_ns;
                        if o == 0 { acct.done(c, now); ops[io.kind] += 1; bytes[io.kind] += io.bytes; }
                        else { acct.failed(c, now); failed[io.kind] += 1; }
                        if o == 0 || account_failed {
                            total[io.kind] += lat;
                            last_access = Some(now);
                            accounted.push((now, io.kind, lat));
                        }
                    }
                }
            }
            let q = now + tail;
            let s = acct.stats(q);
            prop_assert_eq!([s.rd_operations, s.wr_operations, s.flush_operations, s.unmap_operations], ops);
            prop_assert_eq!([s.rd_bytes, s.wr_bytes, 0, s.unmap_bytes], [bytes[0], bytes[1], 0, bytes[3]]);
            prop_assert_eq!([s.rd_total_time_ns, s.wr_total_time_ns, s.flush_total_time_ns, s.unmap_total_time_ns], total);
            prop_assert_eq!([s.failed_rd_operations, s.failed_wr_operations, s.failed_flush_operations, s.failed_unmap_operations], failed);
            prop_assert_eq!([s.invalid_rd_operations, s.invalid_wr_operations, s.invalid_flush_operations, s.invalid_unmap_operations], invalid);
            prop_assert_eq!(s.idle_time_ns, last_access.map(|t| q - t));

            // Brute force: window w's boundaries are t0 + off_w + k*P; at time
            // q it holds what arrived since the last boundary <= q, and the one
            // with the earlier next boundary is reported.
            let p = secs * 1_000_000_000 * 4 / 3;
            let next_boundary = |off: u64| { let mut b = t0 + off; while b <= q { b += p; } b };
            let (e0, e1) = (next_boundary(p / 2), next_boundary(p));
            let exp = e0.min(e1);
            let from = exp.saturating_sub(p);
            let elapsed = p - (exp - q);
            let mut got = Vec::new();
            acct.timed_stats(q, &mut |t| got.push(t));
            prop_assert_eq!(got.len(), 1);
            let t = got[0];
            prop_assert_eq!(t.interval_length, secs);
            let figs = |k: usize| {
                let lats: Vec<u64> = accounted.iter().filter(|a| a.1 == k && a.0 >= from).map(|a| a.2).collect();
                let sum: u64 = lats.iter().sum();
                let n = lats.len() as u64;
                (lats.iter().copied().min().unwrap_or(0), lats.iter().copied().max().unwrap_or(0),
                 if n > 0 { sum / n } else { 0 }, sum as f64 / elapsed as f64)
            };
            let (mn, mx, av, qd) = figs(0);
            prop_assert_eq!((t.min_rd_latency_ns, t.max_rd_latency_ns, t.avg_rd_latency_ns), (mn, mx, av));
            prop_assert!((t.avg_rd_queue_depth - qd).abs() < 1e-9);
            let (mn, mx, av, qd) = figs(1);
            prop_assert_eq!((t.min_wr_latency_ns, t.max_wr_latency_ns, t.avg_wr_latency_ns), (mn, mx, av));
            prop_assert!((t.avg_wr_queue_depth - qd).abs() < 1e-9);
            let (mn, mx, av, _) = figs(2);
            prop_assert_eq!((t.min_flush_latency_ns, t.max_flush_latency_ns, t.avg_flush_latency_ns), (mn, mx, av));
        }
    }

    #[test]
    fn highest_offset_merged_and_limits() {
        let mut a: BlockAcct<1> = BlockAcct::new(false, false);
        assert_eq!(a.stats(5).idle_time_ns, None);
        a.wrote(100, 50);
        a.wrote(10, 10);
        a.wrote(u64::MAX, 10);
        assert_eq!(a.stats(0).wr_highest_offset, u64::MAX);
        a.merged(AcctType::Read, 3);
        a.merged(AcctType::Write, u64::MAX);
        a.merged(AcctType::Write, 1);
        let s = a.stats(0);
        assert_eq!((s.rd_merged, s.wr_merged), (3, u64::MAX));
        assert_eq!(a.add_interval(0, 0), Err(StatsError::BadInterval));
        assert_eq!(a.add_interval(u64::MAX, 0), Err(StatsError::BadInterval));
        assert_eq!(a.add_interval(1, u64::MAX), Ok(()));
        assert_eq!(a.add_interval(1, 0), Err(StatsError::Full));
        // Completion before start (clock misuse) and time at the end of u64.
        let c = a.start(u64::MAX, AcctType::Flush, 0);
        a.done(c, 3);
        a.timed_stats(u64::MAX, &mut |t| assert_eq!(t.max_flush_latency_ns, 0));
        assert_eq!(a.stats(u64::MAX).flush_operations, 1);
    }
}
