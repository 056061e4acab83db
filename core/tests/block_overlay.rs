//! Copy-on-write overlay: executing its plans on byte arrays must match a
//! plain byte-array disk, and its status answers must match a cluster model.

// Wrapped so `cargo test block` selects these tests by name.
mod block_overlay {
    use blockwire_core::block::Extent;
    use blockwire_core::block::contract::{BlockError, StatusQuery};
    use blockwire_core::block::overlay::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Cmd {
        Write(u64, u64, u8),
        Zero(u64, u64),
        Trim(u64, u64),
    }

    /// Top storage: bytes the overlay's plans read and write; starts as garbage.
    struct Disk {
        base: Vec<u8>,
        top: Vec<u8>,
    }

    impl Disk {
        fn run(&mut self, step: WriteStep, payload: &[u8]) {
            match step {
                WriteStep::CopyUp { offset, length } => {
                    let r = offset as usize..(offset + length) as usize;
                    self.top[r.clone()].copy_from_slice(&self.base[r]);
                }
                WriteStep::ZeroTop { offset, length } => {
                    self.top[offset as usize..(offset + length) as usize].fill(0)
                }
                WriteStep::WriteTop {
                    offset,
                    length,
                    buf_offset,
                } => {
                    let src = &payload[buf_offset as usize..(buf_offset + length) as usize];
                    self.top[offset as usize..(offset + length) as usize].copy_from_slice(src);
                }
                WriteStep::DiscardTop { offset, length } => {
                    self.top[offset as usize..(offset + length) as usize].fill(0xDD)
                }
            }
        }

        fn read(&self, ov: &Overlay<Vec<u64>>, offset: u64, length: u64) -> Vec<u8> {
            let mut out = vec![0x55; length as usize];
            ov.plan_read(offset, length, &mut |s| {
                let dst = &mut out[s.buf_offset as usize..(s.buf_offset + s.length) as usize];
                let r = s.offset as usize..(s.offset + s.length) as usize;
                match s.source {
                    Source::Top => dst.copy_from_slice(&self.top[r]),
                    Source::Base => dst.copy_from_slice(&self.base[r]),
                    Source::Zeroes => dst.fill(0),
                }
                true
            })
            .unwrap();
            out
        }
    }

    fn range(size: u64) -> impl Strategy<Value = (u64, u64)> {
        (0..=size, 0..=size).prop_map(|(a, b)| (a.min(b), a.max(b) - a.min(b)))
    }

    fn case() -> impl Strategy<Value = (u64, u64, Vec<Cmd>)> {
        (1u64..2500, 0u32..9).prop_flat_map(|(size, cs)| {
            let cmd = prop_oneof![
                3 => (range(size), 1u8..255).prop_map(|((o, l), v)| Cmd::Write(o, l, v)),
                1 => range(size).prop_map(|(o, l)| Cmd::Zero(o, l)),
                1 => range(size).prop_map(|(o, l)| Cmd::Trim(o, l)),
            ];
            (
                Just(size),
                Just(1u64 << cs),
                prop::collection::vec(cmd, 0..15),
            )
        })
    }

    fn collect(
        f: impl FnOnce(
            &mut dyn FnMut(Extent) -> bool,
        ) -> Result<blockwire_core::block::contract::StatusSummary, BlockError>,
    ) -> Vec<u64> {
        let mut v = Vec::new();
        f(&mut |e| {
            v.extend(std::iter::repeat_n(e.flags, e.length as usize));
            true
        })
        .unwrap();
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn overlay_matches_byte_model((size, cluster, cmds) in case()) {
            let base: Vec<u8> = (0..size).map(|i| (i % 251) as u8 | 1).collect();
            let mut disk = Disk { base: base.clone(), top: vec![0xCC; size as usize] };
            let mut ov = Overlay::new_vec(size, cluster).unwrap();
            let mut model = base.clone();
            // 0 unallocated, 1 data, 2 zero, per cluster.
            let nclusters = size.div_ceil(cluster) as usize;
            let mut cl = vec![0u8; nclusters];
            let span = |o: u64, l: u64| {
                (0..nclusters as u64).filter_map(move |c| {
                    let cs = c * cluster;
                    let ce = (cs + cluster).min(size);
                    (l > 0 && cs < o + l && o < ce).then_some((c as usize, o <= cs && ce <= o + l))
                })
            };
            for c in &cmds {
                let mut steps = Vec::new();
                match *c {
                    Cmd::Write(o, l, v) => {
                        ov.plan_write(o, l, &mut |s| { steps.push(s); true }).unwrap();
                        let payload = vec![v; l as usize];
                        for s in steps { disk.run(s, &payload); }
                        ov.commit_write(o, l).unwrap();
                        model[o as usize..(o + l) as usize].fill(v);
                        for (i, _) in span(o, l) { cl[i] = 1; }
                    }
                    Cmd::Zero(o, l) => {
                        ov.plan_write_zeroes(o, l, &mut |s| { steps.push(s); true }).unwrap();
                        for s in steps { disk.run(s, &[]); }
                        ov.commit_write_zeroes(o, l).unwrap();
                        model[o as usize..(o + l) as usize].fill(0);
                        for (i, full) in span(o, l) {
                            if full { cl[i] = 2 } else if cl[i] == 0 { cl[i] = 1 }
                        }
                    }
                    Cmd::Trim(o, l) => {
                        ov.plan_trim(o, l, &mut |s| { steps.push(s); true }).unwrap();
                        for s in &steps { let discard = matches!(s, WriteStep::DiscardTop { .. }); prop_assert!(discard); }
                        for s in steps { disk.run(s, &[]); }
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
                prop_assert_eq!(disk.read(&ov, 0, size), model.clone(), "after {:?}", c);
            }
            let per_byte = |b: u64| cl[(b / cluster) as usize];
            let depth = collect(|sink| ov.allocation_depth(&StatusQuery::new(0, size), &mut |_, len| Extent::new(len, 1), sink));
            let want: Vec<u64> = (0..size).map(|b| if per_byte(b) == 0 { 2 } else { 1 }).collect();
            prop_assert_eq!(depth, want);
            let no_backing = collect(|sink| ov.allocation_depth(&StatusQuery::new(0, size), &mut |_, len| Extent::new(len, 0), sink));
            let want: Vec<u64> = (0..size).map(|b| if per_byte(b) == 0 { 0 } else { 1 }).collect();
            prop_assert_eq!(no_backing, want);
            // Base reports alternating 7-byte runs of data and holes.
            let alloc = collect(|sink| ov.allocation_status(&StatusQuery::new(0, size), &mut |o, len| {
                Extent::new((7 - o % 7).min(len), if (o / 7) % 2 == 0 { 0 } else { 1 })
            }, sink));
            let want: Vec<u64> = (0..size).map(|b| match per_byte(b) {
                0 => if (b / 7) % 2 == 0 { 0 } else { 1 },
                1 => 0,
                _ => 3,
            }).collect();
            prop_assert_eq!(&alloc, &want);
            for (b, f) in alloc.iter().enumerate() {
                if f & 2 != 0 { prop_assert_eq!(model[b], 0); }
            }
        }
    }

    #[test]
    fn last_byte_of_a_2_63_disk() {
        let disk = 1u64 << 63;
        let cluster = 1u64 << 40;
        let mut ov = Overlay::new_vec(disk, cluster).unwrap();
        let mut steps = Vec::new();
        ov.plan_write(disk - 1, 1, &mut |s| {
            steps.push(s);
            true
        })
        .unwrap();
        assert_eq!(
            steps,
            vec![
                WriteStep::CopyUp {
                    offset: disk - cluster,
                    length: cluster - 1
                },
                WriteStep::WriteTop {
                    offset: disk - 1,
                    length: 1,
                    buf_offset: 0
                },
            ]
        );
        ov.commit_write(disk - 1, 1).unwrap();
        assert_eq!(ov.state_at(disk - 1), Some(ClusterState::Data));
        let q = StatusQuery::new(disk - 2, 2);
        let depth =
            collect(|sink| ov.allocation_depth(&q, &mut |_, len| Extent::new(len, 1), sink));
        assert_eq!(depth, vec![1, 1]);
        ov.commit_trim(0, disk).unwrap();
        assert_eq!(ov.state_at(disk - 1), Some(ClusterState::Zero));
        let mut sink = |_: ReadStep| true;
        assert_eq!(
            ov.plan_read(disk, 1, &mut sink),
            Err(BlockError::OutOfRange)
        );
        assert_eq!(ov.commit_write(u64::MAX, 2), Err(BlockError::OutOfRange));
        let mut n = 0;
        ov.plan_read(disk, 0, &mut |_| {
            n += 1;
            true
        })
        .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn zero_in_one_partial_cluster_copies_up_both_sides() {
        let ov = Overlay::new_vec(4096, 1024).unwrap();
        let mut steps = Vec::new();
        ov.plan_write_zeroes(1100, 100, &mut |s| {
            steps.push(s);
            true
        })
        .unwrap();
        assert_eq!(
            steps,
            vec![
                WriteStep::CopyUp {
                    offset: 1024,
                    length: 76
                },
                WriteStep::CopyUp {
                    offset: 1200,
                    length: 848
                },
                WriteStep::ZeroTop {
                    offset: 1100,
                    length: 100
                },
            ]
        );
        assert_eq!(Overlay::<Vec<u64>>::words_needed(4096, 1000), None);
        assert!(Overlay::new_vec(4096, 0).is_err());
    }
}
