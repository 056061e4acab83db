//! blkdebug against a literal transcription of QEMU's rule lists.

// Wrapped so `cargo test block` selects these tests by name.
mod block_blkdebug {
    use blockwire_core::block::blkdebug::*;
    use proptest::prelude::*;

    const EVENTS: [BlkdebugEvent; 5] = [
        BlkdebugEvent::Read,
        BlkdebugEvent::Write,
        BlkdebugEvent::ReadAio,
        BlkdebugEvent::FlushToDisk,
        BlkdebugEvent::L2Load,
    ];

    /// QEMU's structures: rules in order, active rules as a list with
    /// insertion at the head, and a state starting at 1.
    struct Model {
        rules: Vec<(usize, Rule)>,
        active: Vec<usize>,
        state: u32,
    }

    impl Model {
        fn fire(&mut self, events: &[BlkdebugEvent]) {
            let mut injected = false;
            let mut new_state = self.state;
            for &(id, r) in &self.rules {
                let (ev, st) = match r {
                    Rule::Inject(i) => (i.event, i.state),
                    Rule::SetState(s) => (s.event, s.state),
                };
                if !events.contains(&ev) || (st != 0 && st != self.state) {
                    continue;
                }
                match r {
                    Rule::Inject(_) => {
                        if !injected {
                            self.active.clear();
                            injected = true;
                        }
                        self.active.insert(0, id);
                    }
                    Rule::SetState(s) => new_state = s.new_state,
                }
            }
            self.state = new_state;
        }

        fn check(&mut self, offset: u64, len: u64) -> Option<Injection> {
            let id = *self.active.iter().find(|&&id| {
                let Some(&(_, Rule::Inject(r))) = self.rules.iter().find(|(i, _)| *i == id) else {
                    return false;
                };
                match r.sector {
                    None => true,
                    Some(s) => len > 0 && s * 512 >= offset && s * 512 < offset + len,
                }
            })?;
            let Some(&(_, Rule::Inject(r))) = self.rules.iter().find(|(i, _)| *i == id) else {
                return None;
            };
            if r.errno == 0 {
                return None;
            }
            if r.once {
                self.active.retain(|&a| a != id);
                self.rules.retain(|&(i, _)| i != id);
            }
            Some(Injection {
                errno: r.errno,
                immediately: r.immediately,
            })
        }
    }

    fn rule() -> impl Strategy<Value = Rule> {
        let ev = (0usize..5).prop_map(|i| EVENTS[i]);
        prop_oneof![
            (
                ev.clone(),
                0u32..3,
                0u32..3,
                prop::option::of(0u64..8),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(event, state, errno, sector, once, immediately)| {
                    Rule::Inject(InjectError {
                        event,
                        state,
                        errno,
                        sector,
                        once,
                        immediately,
                    })
                }),
            (ev, 0u32..3, 1u32..3).prop_map(|(event, state, new_state)| Rule::SetState(SetState {
                event,
                state,
                new_state
            })),
        ]
    }

    #[derive(Clone, Debug)]
    enum Cmd {
        Request(OpKind, u64, u64),
        Fire(usize),
        Check(u64, u64),
    }

    fn cmd() -> impl Strategy<Value = Cmd> {
        let kind = prop_oneof![
            Just(OpKind::Read),
            Just(OpKind::Write),
            Just(OpKind::Flush),
            Just(OpKind::Zero)
        ];
        prop_oneof![
            (kind, 0u64..4096, 0u64..2048).prop_map(|(k, o, l)| Cmd::Request(k, o, l)),
            (0usize..5).prop_map(Cmd::Fire),
            (0u64..4096, 0u64..2048).prop_map(|(o, l)| Cmd::Check(o, l)),
        ]
    }

    proptest! {
        #[test]
        fn agrees_with_qemu_lists(rules in prop::collection::vec(rule(), 0..8), cmds in prop::collection::vec(cmd(), 0..30)) {
            let mut d: Blkdebug<8> = Blkdebug::new();
            let mut m = Model { rules: vec![], active: vec![], state: 1 };
            for (i, r) in rules.iter().enumerate() {
                d.add(*r).unwrap();
                m.rules.push((i, *r));
            }
            for c in &cmds {
                let (got, want) = match *c {
                    Cmd::Request(k, o, l) => {
                        let evs = match k {
                            OpKind::Read => [BlkdebugEvent::Read, BlkdebugEvent::ReadAio],
                            OpKind::Write => [BlkdebugEvent::Write, BlkdebugEvent::WriteAio],
                            OpKind::Flush => [BlkdebugEvent::Flush, BlkdebugEvent::FlushToDisk],
                            OpKind::Discard => [BlkdebugEvent::Discard, BlkdebugEvent::ClusterFree],
                            OpKind::Zero => [BlkdebugEvent::Zero, BlkdebugEvent::PwritevZero],
                        };
                        m.fire(&evs);
                        (d.on_request(k, o, l), m.check(o, l))
                    }
                    Cmd::Fire(e) => {
                        d.fire(&[EVENTS[e]]);
                        m.fire(&[EVENTS[e]]);
                        (None, None)
                    }
                    Cmd::Check(o, l) => (d.check(o, l), m.check(o, l)),
                };
                prop_assert_eq!(got, want, "{:?}", c);
                prop_assert_eq!(d.state(), m.state);
                prop_assert_eq!(d.rule_count(), m.rules.len());
            }
        }
    }

    #[test]
    fn parse_syntax() {
        let d: Blkdebug<4> = Blkdebug::parse(
        "event=read_aio,errno=EIO,sector=0,once=on; event=flush,state=2,errno=28,immediately=yes ;\
         event=l2_load,new_state=2",
    )
    .unwrap();
        assert_eq!(d.rule_count(), 3);
        assert_eq!(
            Rule::parse("event=write,errno=ENOSPC,once=off"),
            Ok(Rule::Inject(InjectError {
                errno: 28,
                ..InjectError::new(BlkdebugEvent::Write)
            }))
        );
        assert_eq!(
            Rule::parse("event=cor_write,state=3,new_state=4"),
            Ok(Rule::SetState(SetState {
                event: BlkdebugEvent::CorWrite,
                state: 3,
                new_state: 4
            }))
        );
        assert_eq!(Rule::parse("errno=5"), Err(BlkdebugError::MissingEvent));
        assert_eq!(Rule::parse("event=nope"), Err(BlkdebugError::UnknownEvent));
        assert_eq!(
            Rule::parse("event=read,colour=red"),
            Err(BlkdebugError::UnknownKey)
        );
        assert_eq!(
            Rule::parse("event=read,once=maybe"),
            Err(BlkdebugError::BadValue)
        );
        assert_eq!(
            Rule::parse("event=read,sector=-1"),
            Err(BlkdebugError::BadValue)
        );
        assert_eq!(
            Rule::parse("event=read,errno=5,new_state=2"),
            Err(BlkdebugError::UnknownKey)
        );
        assert_eq!(Rule::parse("event"), Err(BlkdebugError::BadValue));
        assert_eq!(
            Blkdebug::<1>::parse("event=read;event=write").err(),
            Some(BlkdebugError::Full)
        );
        for e in BlkdebugEvent::ALL {
            assert_eq!(BlkdebugEvent::from_name(e.name()), Some(*e));
        }
        assert_eq!(BlkdebugEvent::ALL.len(), 46 + 5);
    }

    #[test]
    fn state_machine_and_huge_sectors() {
        // Fail writes only after the first flush.
        let mut d: Blkdebug<4> =
            Blkdebug::parse("event=flush,new_state=2; event=write,state=2,errno=5").unwrap();
        assert_eq!(d.on_request(OpKind::Write, 0, 512), None);
        assert_eq!(d.on_request(OpKind::Flush, 0, 0), None);
        assert_eq!(d.state(), 2);
        assert_eq!(
            d.on_request(OpKind::Write, 0, 512),
            Some(Injection {
                errno: 5,
                immediately: false
            })
        );
        // A sector whose byte offset overflows never matches and never panics.
        let mut d: Blkdebug<2> = Blkdebug::parse("event=read,sector=18446744073709551615").unwrap();
        assert_eq!(d.on_request(OpKind::Read, u64::MAX - 10, u64::MAX), None);
        let mut d: Blkdebug<2> = Blkdebug::parse("event=read,sector=18014398509481983").unwrap();
        assert_eq!(
            d.on_request(OpKind::Read, (1 << 63) - 512, 512)
                .map(|i| i.errno),
            Some(5)
        );
        assert_eq!(d.on_request(OpKind::Read, (1 << 63) - 512, 0), None);
    }
}
