//! Throttle: parsing, validation, and a tick simulation checking that the
//! admitted amount over any window stays within the leaky-bucket bounds.

// Wrapped so `cargo test block` selects these tests by name.
mod block_throttle {
    use blockwire_core::block::throttle::*;
    use proptest::prelude::*;

    const NS: u128 = 1_000_000_000;

    #[test]
    fn parse_names_and_aliases() {
        let l = ThrottleLimits::parse("bps=10M,iops=100").unwrap();
        assert_eq!(l.bps_total.avg, 10 << 20);
        assert_eq!(l.iops_total.avg, 100);
        let l = ThrottleLimits::parse(
        "bps-read=1000,bps-read-max=5000,bps-read-max-length=4,iops-write=10,iops_write_max=20,iops-size=4096",
    )
    .unwrap();
        assert_eq!(
            l.bps_read,
            BucketLimit {
                avg: 1000,
                max: 5000,
                max_length: 4
            }
        );
        assert_eq!(
            l.iops_write,
            BucketLimit {
                avg: 10,
                max: 20,
                max_length: 0
            }
        );
        assert_eq!(l.iops_size, 4096);
        let l =
            ThrottleLimits::parse(" bps-total=1k , bps-max=2K, iops-total-max=5, iops=1 ").unwrap();
        assert_eq!(
            l.bps_total,
            BucketLimit {
                avg: 1024,
                max: 2048,
                max_length: 0
            }
        );
        assert_eq!(
            l.iops_total,
            BucketLimit {
                avg: 1,
                max: 5,
                max_length: 0
            }
        );
        assert_eq!(ThrottleLimits::parse(""), Ok(ThrottleLimits::default()));
        assert!(!ThrottleLimits::default().is_enabled());
    }

    #[test]
    fn parse_errors() {
        use ThrottleError::*;
        let e = |s| ThrottleLimits::parse(s).unwrap_err();
        assert_eq!(e("bps-totl=1"), UnknownKey);
        assert_eq!(e("bpsx=1"), UnknownKey);
        assert_eq!(e("bps-read-burst=1"), UnknownKey);
        assert_eq!(e("bps"), BadValue);
        assert_eq!(e("bps=-1"), BadValue);
        assert_eq!(e("bps=1.5"), BadValue);
        assert_eq!(e("bps=99999999999999999999"), BadValue);
        assert_eq!(e("bps=20000000T"), BadValue);
        assert_eq!(e("bps=1,bps-read=1"), TotalAndReadWrite);
        assert_eq!(
            e("iops-max=10,iops-write=1,iops-write-max=2,iops=1"),
            TotalAndReadWrite
        );
        assert_eq!(e("bps=1000000000000001"), ValueTooLarge);
        assert_eq!(e("bps=1,bps-max-length=2"), BurstLengthWithoutMax);
        assert_eq!(
            e("bps=1,bps-max=1000000,bps-max-length=1000000000000"),
            BurstTooLong
        );
        assert_eq!(e("iops-read-max=5"), MaxWithoutAvg);
        assert_eq!(e("iops-read=5,iops-read-max=4"), MaxBelowAvg);
    }

    #[test]
    fn time_going_backwards_and_huge_values_do_not_panic() {
        let l = ThrottleLimits::parse("bps=1,iops=1,iops-size=1").unwrap();
        let mut t = Throttle::new(l).unwrap();
        assert_eq!(
            t.try_start(u64::MAX, Direction::Write, u64::MAX),
            Admission::Start
        );
        assert_eq!(
            t.try_start(5, Direction::Write, u64::MAX),
            Admission::NotBefore(u64::MAX)
        );
        assert!(t.wait_ns(u64::MAX, Direction::Read) > 0);
        let mut unlimited = Throttle::new(ThrottleLimits::default()).unwrap();
        for i in 0..100 {
            assert_eq!(
                unlimited.try_start(i, Direction::Read, u64::MAX),
                Admission::Start
            );
        }
    }

    #[test]
    fn iops_size_counts_large_requests_as_several() {
        let l = ThrottleLimits::parse("iops=10,iops-size=4096").unwrap();
        let mut t = Throttle::new(l).unwrap();
        assert_eq!(t.try_start(0, Direction::Read, 40960), Admission::Start); // 10 ops
        // Level 10 ops, capacity 1: wait until 9 ops leaked = 0.9 s.
        assert_eq!(
            t.try_start(0, Direction::Read, 1),
            Admission::NotBefore(900_000_000)
        );
    }

    #[derive(Clone, Debug)]
    struct Req {
        gap_ns: u64,
        write: bool,
        bytes: u64,
    }

    fn limits() -> impl Strategy<Value = ThrottleLimits> {
        // One bucket of each kind, optionally with a burst.
        (
            1u64..5000,
            0u64..4,
            1u64..5,
            1u64..50,
            0u64..3,
            any::<bool>(),
            prop::option::of(100u64..5000),
        )
            .prop_map(
                |(bps, bps_burst_mul, len, iops, iops_burst_mul, split, iops_size)| {
                    let mut l = ThrottleLimits::default();
                    let bps_b = BucketLimit {
                        avg: bps,
                        max: bps * bps_burst_mul,
                        max_length: if bps_burst_mul > 0 { len } else { 0 },
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
                        max: iops * iops_burst_mul,
                        max_length: 0,
                    };
                    l.iops_size = iops_size.unwrap_or(0);
                    l
                },
            )
    }

    fn reqs() -> impl Strategy<Value = Vec<Req>> {
        prop::collection::vec(
            (0u64..300_000_000, any::<bool>(), 1u64..3000).prop_map(|(gap_ns, write, bytes)| Req {
                gap_ns,
                write,
                bytes,
            }),
            1..60,
        )
    }

    /// Scaled units of one request in bucket `kind` (0 bytes, 1 operations).
    fn units(l: &ThrottleLimits, kind: usize, bytes: u64) -> u128 {
        if kind == 0 {
            bytes as u128 * NS
        } else if l.iops_size > 0 && bytes > l.iops_size {
            bytes as u128 * NS / l.iops_size as u128
        } else {
            NS
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn admitted_rate_is_bounded(l in limits(), rs in reqs()) {
            let mut t = Throttle::new(l).unwrap();
            // Tick simulator: each request arrives `gap` after the previous one
            // started and waits, in FIFO order, until the throttle admits it.
            let mut now = 0u64;
            let mut admitted: Vec<(u64, bool, u64)> = Vec::new();
            for r in &rs {
                now += r.gap_ns;
                let dir = if r.write { Direction::Write } else { Direction::Read };
                let mut tries = 0;
                loop {
                    match t.try_start(now, dir, r.bytes) {
                        Admission::Start => break,
                        Admission::NotBefore(at) => {
                            prop_assert!(at > now);
                            // Waiting exactly as told always suffices.
                            now = at;
                            tries += 1;
                            prop_assert!(tries <= 1, "not admitted at the promised time");
                        }
                    }
                }
                admitted.push((now, r.write, r.bytes));
            }
            let buckets = [
                (0usize, l.bps_total, None),
                (0, l.bps_read, Some(false)),
                (0, l.bps_write, Some(true)),
                (1, l.iops_total, None),
            ];
            for (kind, b, dir) in buckets {
                if b.avg == 0 { continue; }
                let avg = b.avg as u128;
                let cap = if b.max == 0 { avg * NS / 10 } else { b.max as u128 * b.max_length.max(1) as u128 * NS };
                let biggest = admitted.iter().filter(|a| dir.is_none_or(|d| a.1 == d)).map(|a| units(&l, kind, a.2)).max().unwrap_or(0);
                for i in 0..admitted.len() {
                    let mut sum = 0u128;
                    for j in i..admitted.len() {
                        let (tj, w, bytes) = admitted[j];
                        if dir.is_some_and(|d| d != w) { continue; }
                        sum += units(&l, kind, bytes);
                        let span = (tj - admitted[i].0) as u128;
                        // Never more than the bucket, the average rate over the
                        // window, and one request admitted at the brim.
                        prop_assert!(sum <= cap + avg * span + biggest,
                            "avg bound: kind {kind} sum {sum} cap {cap} span {span}");
                        if b.max_length > 1 {
                            prop_assert!(sum <= b.max as u128 * NS / 10 + b.max as u128 * span + biggest,
                                "burst bound: kind {kind} sum {sum} span {span}");
                        }
                    }
                }
            }
        }

        #[test]
        fn saturated_throughput_reaches_the_limit(avg in 1u64..200) {
            // A client that always has work must get close to `avg` per second.
            let l = ThrottleLimits { iops_total: BucketLimit { avg, max: 0, max_length: 0 }, ..Default::default() };
            let mut t = Throttle::new(l).unwrap();
            let mut now = 0u64;
            let mut n = 0u64;
            while now < 10_000_000_000 {
                match t.try_start(now, Direction::Read, 512) {
                    Admission::Start => n += 1,
                    Admission::NotBefore(at) => now = at,
                }
            }
            prop_assert!(n >= avg * 10, "{n} ops in 10 s at {avg}/s");
            prop_assert!(n <= avg * 10 + avg / 10 + 2, "{n} ops in 10 s at {avg}/s");
        }
    }
}
