//! Allocation map against a per-granule model and a byte-content model.

// Wrapped so `cargo test block` selects these tests by name.
mod block_alloc_map {
    use blockwire_core::block::Extent;
    use blockwire_core::block::alloc_map::{AllocMap, AllocState};
    use blockwire_core::block::contract::{BlockError, MAX_EXTENTS, StatusQuery};
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum OpK {
        Data(u64, u64),
        Zero(u64, u64, bool),
        Hole(u64, u64, bool),
    }

    fn status(map: &AllocMap<Vec<u64>>, q: &StatusQuery) -> Vec<Extent> {
        let mut v = Vec::new();
        map.block_status(q, &mut |e| {
            v.push(e);
            true
        })
        .unwrap();
        v
    }

    fn expand(ext: &[Extent]) -> Vec<u64> {
        ext.iter()
            .flat_map(|e| std::iter::repeat_n(e.flags, e.length as usize))
            .collect()
    }

    /// Per-granule flags with the documented rules, applied granule by granule.
    struct Model {
        g: u64,
        size: u64,
        cells: Vec<u64>,
        content: Vec<u8>,
    }

    impl Model {
        fn apply(&mut self, op: &OpK) {
            let (off, len) = match *op {
                OpK::Data(o, l) | OpK::Zero(o, l, _) | OpK::Hole(o, l, _) => (o, l),
            };
            if len == 0 {
                return;
            }
            let end = off + len;
            for c in 0..self.cells.len() as u64 {
                let cs = c * self.g;
                let ce = (cs + self.g).min(self.size);
                let touched = cs < end && off < ce;
                let full = off <= cs && ce <= end;
                if !touched {
                    continue;
                }
                let cell = &mut self.cells[c as usize];
                match *op {
                    OpK::Data(..) => *cell = 0,
                    OpK::Zero(_, _, unmap) if full => *cell = if unmap { 3 } else { 2 },
                    OpK::Zero(..) => {
                        if *cell & 2 == 0 {
                            *cell = 0
                        }
                    }
                    OpK::Hole(_, _, z) if full => *cell = if z { 3 } else { 1 },
                    OpK::Hole(..) => {}
                }
            }
            for b in off..end {
                self.content[b as usize] = match *op {
                    OpK::Data(..) => 0xFF,
                    OpK::Zero(..) => 0,
                    OpK::Hole(..) => self.content[b as usize],
                };
            }
            if let OpK::Hole(_, _, z) = *op {
                // Trimmed whole granules read as zero or garbage.
                for c in 0..self.cells.len() as u64 {
                    let cs = c * self.g;
                    let ce = (cs + self.g).min(self.size);
                    if off <= cs && ce <= end {
                        for b in cs..ce {
                            self.content[b as usize] = if z { 0 } else { 0xEE };
                        }
                    }
                }
            }
        }
    }

    fn op_strategy(size: u64) -> impl Strategy<Value = OpK> {
        (0..=size, 0..=size, 0u8..3, any::<bool>()).prop_map(move |(a, b, k, f)| {
            let (o, e) = (a.min(b), a.max(b));
            match k {
                0 => OpK::Data(o, e - o),
                1 => OpK::Zero(o, e - o, f),
                _ => OpK::Hole(o, e - o, f),
            }
        })
    }

    fn case() -> impl Strategy<Value = (u64, u64, Vec<OpK>, u64, u64, bool)> {
        (1u64..3000, 0u32..10).prop_flat_map(|(size, gs)| {
            let g = 1u64 << gs;
            (
                Just(size),
                Just(g),
                prop::collection::vec(op_strategy(size), 0..12),
                0..=size,
                0..=size,
                any::<bool>(),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn map_agrees_with_models((size, g, ops, qa, qb, req_one) in case()) {
            let mut map = AllocMap::new_vec(size, g, AllocState::HoleZero).unwrap();
            let cells = size.div_ceil(g) as usize;
            let mut model = Model { g, size, cells: vec![3; cells], content: vec![0; size as usize] };
            for op in &ops {
                match *op {
                    OpK::Data(o, l) => map.mark_data(o, l).unwrap(),
                    OpK::Zero(o, l, u) => map.mark_zero(o, l, u).unwrap(),
                    OpK::Hole(o, l, z) => map.mark_hole(o, l, z).unwrap(),
                }
                model.apply(op);
            }
            let whole = expand(&status(&map, &StatusQuery::new(0, size)));
            let want: Vec<u64> = (0..size).map(|b| model.cells[(b / g) as usize]).collect();
            prop_assert_eq!(&whole, &want);
            for (b, f) in whole.iter().enumerate() {
                if f & 2 != 0 {
                    prop_assert_eq!(model.content[b], 0, "byte {} reported zero", b);
                }
            }
            let (o, e) = (qa.min(qb), qa.max(qb));
            let q = StatusQuery::new(o, e - o).req_one(req_one);
            let part = status(&map, &q);
            if req_one && e > o {
                prop_assert_eq!(part.len(), 1);
                let first = &want[o as usize..];
                let run = first.iter().take_while(|&&f| f == first[0]).count() as u64;
                prop_assert_eq!(part[0], Extent::new(run.min(e - o), first[0]));
            } else {
                prop_assert_eq!(expand(&part), want[o as usize..e as usize].to_vec());
                prop_assert!(part.windows(2).all(|w| w[0].flags != w[1].flags));
            }
        }
    }

    #[test]
    fn last_byte_of_a_2_63_disk() {
        let disk = 1u64 << 63;
        let mut map = AllocMap::new_vec(disk, 1 << 40, AllocState::HoleZero).unwrap();
        map.mark_data(disk - 1, 1).unwrap();
        let q = StatusQuery::new(disk - 1, 1);
        assert_eq!(status(&map, &q), vec![Extent::new(1, 0)]);
        let q = StatusQuery::new(disk - (1 << 41), 1 << 41).max_extent_len(u64::MAX);
        assert_eq!(
            status(&map, &q),
            vec![Extent::new(1 << 40, 3), Extent::new(1 << 40, 0)]
        );
        assert_eq!(map.state_at(disk - 1), Some(AllocState::Data));
        assert_eq!(map.state_at(disk), None);
        assert_eq!(status(&map, &StatusQuery::new(disk, 0)), vec![]);
        assert_eq!(map.mark_data(disk, 1), Err(BlockError::OutOfRange));
        assert_eq!(
            map.mark_zero(u64::MAX, 2, true),
            Err(BlockError::OutOfRange)
        );
        let mut sink = |_: Extent| true;
        assert_eq!(
            map.block_status(&StatusQuery::new(1, u64::MAX), &mut sink),
            Err(BlockError::OutOfRange)
        );
        // 32-bit extents: the whole disk needs many, all capped.
        let mut n = 0u64;
        let mut total = 0u64;
        map.block_status(&StatusQuery::new(0, disk).max_extents(5), &mut |e| {
            n += 1;
            total += e.length;
            assert!(e.length <= u32::MAX as u64);
            true
        })
        .unwrap();
        assert_eq!(n, 5);
        assert_eq!(total, 5 * ((u32::MAX as u64) & !511));
        // A full-granularity-2^63 map is a single granule.
        let mut w = [0u64; 1];
        let mut one = AllocMap::new(&mut w[..], disk, disk, AllocState::Hole).unwrap();
        one.mark_zero(0, disk, false).unwrap();
        assert_eq!(one.state_at(disk - 1), Some(AllocState::Zero));
    }

    #[test]
    fn granularity_512_and_64m_unaligned_heads_and_tails() {
        for g in [512u64, 64 << 20] {
            let size = 10 * g + 100; // short last granule
            let mut map = AllocMap::new_vec(size, g, AllocState::HoleZero).unwrap();
            map.mark_data(g - 1, 2).unwrap(); // touches granules 0 and 1
            map.mark_zero(3 * g + 1, 2 * g, false).unwrap(); // partial 3 and 5, full 4
            map.mark_hole(9 * g + 10, size - 9 * g - 10, false).unwrap(); // partial 9, full short 10
            let got = status(&map, &StatusQuery::new(0, size).max_extent_len(u64::MAX));
            assert_eq!(
                got,
                vec![
                    Extent::new(2 * g, 0),
                    Extent::new(2 * g, 3),
                    Extent::new(g, 2),
                    Extent::new(5 * g, 3),
                    Extent::new(100, 1),
                ],
                "granularity {g}"
            );
        }
    }

    #[test]
    fn extent_cap_is_2_pow_20() {
        let n = (MAX_EXTENTS as u64) + 10;
        let mut map = AllocMap::new_vec(n, 1, AllocState::HoleZero).unwrap();
        let mut i = 0;
        while i < n {
            map.mark_data(i, 1).unwrap();
            i += 2;
        }
        let mut count = 0u64;
        let s = map
            .block_status(&StatusQuery::new(0, n), &mut |_| {
                count += 1;
                true
            })
            .unwrap();
        assert_eq!(count, MAX_EXTENTS as u64);
        assert_eq!(s.extents, MAX_EXTENTS);
        assert_eq!(s.covered, MAX_EXTENTS as u64);
    }

    #[test]
    fn storage_checks() {
        assert_eq!(AllocMap::<&mut [u64]>::words_needed(1 << 20, 512), Some(64));
        assert_eq!(AllocMap::<&mut [u64]>::words_needed(1 << 20, 500), None);
        let mut w = [0u64; 63];
        assert_eq!(
            AllocMap::new(&mut w[..], 1 << 20, 512, AllocState::Data).err(),
            Some(BlockError::StorageTooSmall)
        );
        assert_eq!(
            AllocMap::new(&mut w[..], 1 << 20, 0, AllocState::Data).err(),
            Some(BlockError::Invalid)
        );
        let mut w = [0u64; 0];
        let empty = AllocMap::new(&mut w[..], 0, 512, AllocState::Data).unwrap();
        assert_eq!(empty.first_extent(0, 10), Extent::new(0, 3));
    }
}
