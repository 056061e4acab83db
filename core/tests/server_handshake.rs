//! The server machine's handshake, against the spec's reactions.

mod common;

use blockwire_core::server::{CloseReason, ServerConfig, TlsPolicy};
use blockwire_core::wire::*;
use common::*;

fn errors_only(replies: &[(OptionType, ReplyType, Vec<u8>)]) -> Vec<ReplyType> {
    replies.iter().map(|r| r.1).collect()
}

/// After a scenario, a LIST must still be answered: the stream is in sync.
fn assert_in_sync(p: &mut Pair) {
    p.from_server.clear();
    p.feed(&opt(OptionType::LIST, &[]));
    let r = p.all_option_replies();
    assert!(!r.is_empty(), "no reply to LIST: out of sync");
    assert_eq!(r.last().unwrap().1, ReplyType::ACK);
    assert_eq!(r.iter().filter(|x| x.1 == ReplyType::SERVER).count(), 3);
}

#[test]
fn unknown_client_flags_disconnect() {
    for split in SPLITS {
        let mut p = Pair::new(split);
        p.expect_greeting();
        p.feed(&[0, 0, 0, 0x07]);
        assert_eq!(
            p.take_events(),
            vec![Ev::Close(CloseReason::UnknownClientFlags)]
        );
        assert!(p.server.is_closed());
    }
}

#[test]
fn bad_option_magic_disconnects() {
    for split in SPLITS {
        let mut p = Pair::start(split, 1);
        let mut o = opt(OptionType::LIST, &[]);
        o[0] ^= 0xff;
        p.feed(&o);
        assert_eq!(
            p.take_events(),
            vec![Ev::Close(CloseReason::BadOptionMagic)]
        );
        assert!(p.from_server.is_empty());
    }
}

#[test]
fn unknown_option_with_payload_is_unsupported_and_in_sync() {
    for split in SPLITS {
        let mut p = Pair::start(split, 3);
        p.feed(&opt(OptionType(0x1234), &[0xaa; 300]));
        let r = p.all_option_replies();
        assert_eq!(errors_only(&r), vec![ReplyType::ERR_UNSUP]);
        assert_eq!(r[0].0, OptionType(0x1234));
        assert_in_sync(&mut p);
    }
}

#[test]
fn options_that_take_no_data_reject_data() {
    let config = ServerConfig {
        tls: TlsPolicy::Allowed,
        ..ServerConfig::default()
    };
    for split in SPLITS {
        for o in [
            OptionType::LIST,
            OptionType::STARTTLS,
            OptionType::STRUCTURED_REPLY,
            OptionType::EXTENDED_HEADERS,
        ] {
            let mut p = Pair::with(TestExports::standard(), config, split);
            p.expect_greeting();
            p.feed(&3u32.to_be_bytes());
            p.feed(&opt(o, b"xyz"));
            assert_eq!(
                errors_only(&p.all_option_replies()),
                vec![ReplyType::ERR_INVALID],
                "{o:?}"
            );
            assert!(p.take_events().is_empty());
            assert_in_sync(&mut p);
        }
    }
}

#[test]
fn info_name_length_beyond_option_is_one_invalid() {
    for split in SPLITS {
        for name_len in [100u32, 0xffff_ffff, 5] {
            for o in [OptionType::INFO, OptionType::GO] {
                let mut p = Pair::start(split, 3);
                // 4 + 4 + 2 = 10 bytes: a name length of 5 exceeds 10 - 6.
                let mut data = name_len.to_be_bytes().to_vec();
                data.extend_from_slice(b"disk");
                data.extend_from_slice(&0u16.to_be_bytes());
                p.feed(&opt(o, &data));
                assert_eq!(
                    errors_only(&p.all_option_replies()),
                    vec![ReplyType::ERR_INVALID]
                );
                assert_in_sync(&mut p);
            }
        }
    }
}

#[test]
fn info_request_count_must_match_length() {
    for split in SPLITS {
        let mut p = Pair::start(split, 3);
        let mut data = go_payload("disk", &[]);
        data.truncate(data.len() - 2);
        data.extend_from_slice(&3u16.to_be_bytes()); // claims 3, carries none
        p.feed(&opt(OptionType::INFO, &data));
        assert_eq!(
            errors_only(&p.all_option_replies()),
            vec![ReplyType::ERR_INVALID]
        );
        assert_in_sync(&mut p);
    }
}

#[test]
fn unknown_4096_byte_name_is_unknown() {
    for split in SPLITS {
        let mut p = Pair::start(split, 3);
        let name = "n".repeat(4096);
        p.feed(&opt(OptionType::GO, &go_payload(&name, &[])));
        assert_eq!(
            errors_only(&p.all_option_replies()),
            vec![ReplyType::ERR_UNKNOWN]
        );
        assert_in_sync(&mut p);
    }
}

#[test]
fn name_over_4096_bytes_is_refused() {
    for split in SPLITS {
        for len in [4097usize, 9000, 70_000] {
            let mut p = Pair::start(split, 3);
            let name = "n".repeat(len);
            p.feed(&opt(OptionType::GO, &go_payload(&name, &[])));
            let r = errors_only(&p.all_option_replies());
            assert!(
                r == [ReplyType::ERR_INVALID] || r == [ReplyType::ERR_TOO_BIG],
                "{len}: {r:?}"
            );
            assert_in_sync(&mut p);
        }
    }
}

#[test]
fn names_with_nul_or_bad_utf8_get_an_error() {
    for split in SPLITS {
        for name in [&b"di\0sk"[..], &[0xff, 0xfe][..], &[0xc3][..]] {
            let mut p = Pair::start(split, 3);
            p.feed(&opt(OptionType::GO, &go_payload_raw(name, &[])));
            let r = errors_only(&p.all_option_replies());
            assert_eq!(r.len(), 1);
            assert!(r[0].is_error());
            assert!(p.take_events().is_empty());
            assert_in_sync(&mut p);
        }
    }
}

#[test]
fn option_length_near_4gib_disconnects_unread() {
    for split in SPLITS {
        let mut p = Pair::start(split, 3);
        let mut o = opt(OptionType(99), &[]);
        o[12..16].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        o.extend_from_slice(&[0u8; 64]);
        let before = p.consumed;
        p.feed(&o);
        assert_eq!(p.take_events(), vec![Ev::Close(CloseReason::OptionTooLong)]);
        assert_eq!(p.consumed - before, 16, "read past the header");
        for known in [OptionType::GO, OptionType::SET_META_CONTEXT] {
            let mut p = Pair::start(split, 3);
            let mut o = opt(known, &[]);
            o[12..16].copy_from_slice(&0xffff_ffffu32.to_be_bytes());
            p.feed(&o);
            assert_eq!(p.take_events(), vec![Ev::Close(CloseReason::OptionTooLong)]);
        }
    }
}

#[test]
fn abort_is_acknowledged_then_closed() {
    for split in SPLITS {
        let mut p = Pair::start(split, 3);
        p.feed(&opt(OptionType::ABORT, b"ignored"));
        assert_eq!(errors_only(&p.all_option_replies()), vec![ReplyType::ACK]);
        assert_eq!(p.take_events(), vec![Ev::Close(CloseReason::Aborted)]);
    }
}

#[test]
fn list_sends_one_server_reply_per_export_with_description() {
    for split in SPLITS {
        let mut p = Pair::start(split, 3);
        p.feed(&opt(OptionType::LIST, &[]));
        let r = p.all_option_replies();
        assert_eq!(r.len(), 4);
        let names: Vec<_> = r[..3]
            .iter()
            .map(|(_, t, d)| {
                assert_eq!(*t, ReplyType::SERVER);
                let n = u32::from_be_bytes(d[..4].try_into().unwrap()) as usize;
                (
                    String::from_utf8(d[4..4 + n].to_vec()).unwrap(),
                    String::from_utf8(d[4 + n..].to_vec()).unwrap(),
                )
            })
            .collect();
        assert_eq!(names[0], ("disk".into(), "the test disk".into()));
        assert_eq!(names[1], ("ro".into(), "".into()));
        assert_eq!(r[3].1, ReplyType::ACK);
    }
}

#[test]
fn long_list_is_generated_within_the_transmit_buffer() {
    let long: &'static str = Box::leak("x".repeat(4096).into_boxed_str());
    let exports = TestExports(
        (0..50)
            .map(|_| TestExport {
                name: long,
                description: long,
                size: 4096,
                flags: all_flags(),
                block_sizes: Default::default(),
                required: false,
                contexts: &[],
            })
            .collect(),
    );
    let mut p = Pair::with(exports, ServerConfig::default(), Split::Whole);
    p.expect_greeting();
    p.feed(&3u32.to_be_bytes());
    p.feed(&opt(OptionType::LIST, &[]));
    let r = p.all_option_replies();
    assert_eq!(r.len(), 51);
    assert_eq!(r[0].2.len(), 4 + 4096 + 4096);
}

#[test]
fn export_name_enters_transmission_with_or_without_zeroes() {
    for split in SPLITS {
        for (flags, extra) in [(1u32, 124usize), (3, 0)] {
            let mut p = Pair::start(split, flags);
            p.feed(&opt(OptionType::EXPORT_NAME, b"disk"));
            let evs = p.take_events();
            let Some(Ev::Ready(s)) = evs.first() else {
                panic!("{evs:?}")
            };
            assert_eq!(s.size, 1 << 20);
            assert_eq!(p.from_server.len(), 10 + extra);
            assert_eq!(&p.from_server[..8], &(1u64 << 20).to_be_bytes());
            let tf = u16::from_be_bytes([p.from_server[8], p.from_server[9]]);
            assert!(TransmissionFlags::from_bits_retain(tf).contains(TransmissionFlags::HAS_FLAGS));
            assert!(p.from_server[10..].iter().all(|&b| b == 0));
        }
    }
}

#[test]
fn export_name_unknown_disconnects() {
    for split in SPLITS {
        let mut p = Pair::start(split, 3);
        p.feed(&opt(OptionType::EXPORT_NAME, b"nope"));
        assert_eq!(
            p.take_events(),
            vec![Ev::Close(CloseReason::ExportNameRefused)]
        );
    }
}

#[test]
fn nonfixed_newstyle_may_only_send_export_name() {
    for split in SPLITS {
        let mut p = Pair::start(split, 0);
        p.feed(&opt(OptionType::LIST, &[]));
        assert_eq!(
            p.take_events(),
            vec![Ev::Close(CloseReason::NotFixedNewstyle)]
        );
        let mut p = Pair::start(split, 0);
        p.feed(&opt(OptionType::EXPORT_NAME, b""));
        assert!(matches!(p.take_events()[..], [Ev::Ready(_)]));
        assert_eq!(p.from_server.len(), 134);
    }
}

#[test]
fn go_replies_with_requested_info_and_enters_transmission() {
    for split in SPLITS {
        let mut p = Pair::start(split, 3);
        p.feed(&opt(
            OptionType::GO,
            &go_payload(
                "",
                &[
                    InfoType::NAME.0,
                    InfoType::DESCRIPTION.0,
                    InfoType::BLOCK_SIZE.0,
                    77,
                ],
            ),
        ));
        let r = p.all_option_replies();
        let infos: Vec<u16> = r
            .iter()
            .filter(|x| x.1 == ReplyType::INFO)
            .map(|x| u16::from_be_bytes([x.2[0], x.2[1]]))
            .collect();
        assert_eq!(infos, vec![1, 2, 3, 0]);
        let name = &r[0].2[2..];
        assert_eq!(name, b"disk", "canonical name of the default export");
        let export = &r[3].2;
        assert_eq!(export.len(), 12);
        assert_eq!(r.last().unwrap().1, ReplyType::ACK);
        let evs = p.take_events();
        let [Ev::Ready(s)] = &evs[..] else {
            panic!("{evs:?}")
        };
        assert!(s.block_sizes_agreed);
        assert_eq!(s.mode, HeaderMode::Simple);
        assert!(
            !s.flags.contains(TransmissionFlags::SEND_DF),
            "DF needs structured replies"
        );
    }
}

#[test]
fn info_then_go_on_another_name() {
    for split in SPLITS {
        let mut p = Pair::start(split, 3);
        p.feed(&opt(OptionType::INFO, &go_payload("ro", &[])));
        let r = p.all_option_replies();
        assert_eq!(r.last().unwrap().1, ReplyType::ACK);
        let ro = r
            .iter()
            .find(|x| x.1 == ReplyType::INFO && x.2[..2] == [0, 0])
            .unwrap();
        assert_eq!(
            u64::from_be_bytes(ro.2[2..10].try_into().unwrap()),
            64 << 10
        );
        assert!(
            p.take_events().is_empty(),
            "INFO must not enter transmission"
        );
        p.feed(&opt(OptionType::GO, &go_payload("disk", &[])));
        let evs = p.take_events();
        let [Ev::Ready(s)] = &evs[..] else {
            panic!("{evs:?}")
        };
        assert_eq!(s.export, 0);
        assert_eq!(s.size, 1 << 20);
    }
}

#[test]
fn block_size_required_exports() {
    for split in SPLITS {
        let mut p = Pair::start(split, 3);
        p.feed(&opt(OptionType::GO, &go_payload("bs", &[])));
        let r = p.all_option_replies();
        assert_eq!(
            errors_only(&r),
            vec![ReplyType::INFO, ReplyType::ERR_BLOCK_SIZE_REQD],
            "block size info first, to save a round trip"
        );
        p.feed(&opt(
            OptionType::GO,
            &go_payload("bs", &[InfoType::BLOCK_SIZE.0]),
        ));
        assert!(matches!(p.take_events()[..], [Ev::Ready(_)]));
        let mut p = Pair::start(split, 3);
        p.feed(&opt(OptionType::EXPORT_NAME, b"bs"));
        assert_eq!(
            p.take_events(),
            vec![Ev::Close(CloseReason::ExportNameRefused)]
        );
    }
}

#[test]
fn structured_and_extended_negotiation_rules() {
    for split in SPLITS {
        let mut p = Pair::start(split, 3);
        p.feed(&opt(OptionType::STRUCTURED_REPLY, &[]));
        p.feed(&opt(OptionType::STRUCTURED_REPLY, &[]));
        p.feed(&opt(OptionType::EXTENDED_HEADERS, &[]));
        p.feed(&opt(OptionType::STRUCTURED_REPLY, &[]));
        p.feed(&opt(OptionType::EXTENDED_HEADERS, &[]));
        assert_eq!(
            errors_only(&p.all_option_replies()),
            vec![
                ReplyType::ACK,
                ReplyType::ERR_INVALID,
                ReplyType::ACK,
                ReplyType::ERR_EXT_HEADER_REQD,
                ReplyType::ERR_INVALID
            ]
        );
        // EXPORT_NAME is forbidden after extended headers.
        p.feed(&opt(OptionType::EXPORT_NAME, b"disk"));
        assert_eq!(
            p.take_events(),
            vec![Ev::Close(CloseReason::ExportNameRefused)]
        );
    }
}

#[test]
fn meta_contexts_need_structured_replies() {
    for split in SPLITS {
        let mut p = Pair::start(split, 3);
        p.feed(&opt(
            OptionType::SET_META_CONTEXT,
            &meta_payload("disk", &["base:allocation"]),
        ));
        p.feed(&opt(
            OptionType::LIST_META_CONTEXT,
            &meta_payload("disk", &[]),
        ));
        assert_eq!(
            errors_only(&p.all_option_replies()),
            vec![ReplyType::ERR_INVALID, ReplyType::ERR_INVALID]
        );
    }
}

fn context_names(r: &[(OptionType, ReplyType, Vec<u8>)]) -> Vec<(u32, String)> {
    r.iter()
        .filter(|x| x.1 == ReplyType::META_CONTEXT)
        .map(|x| {
            (
                u32::from_be_bytes(x.2[..4].try_into().unwrap()),
                String::from_utf8(x.2[4..].to_vec()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn list_meta_context_with_wildcards() {
    for split in SPLITS {
        let mut p = Pair::start(split, 3);
        p.feed(&opt(OptionType::STRUCTURED_REPLY, &[]));
        p.all_option_replies();
        let cases: [(&[&str], &[&str]); 5] = [
            (
                &[],
                &[
                    "base:allocation",
                    "qemu:allocation-depth",
                    "qemu:dirty-bitmap:b1",
                    "qemu:dirty-bitmap:b2",
                ],
            ),
            (&["base:"], &["base:allocation"]),
            (
                &["qemu:"],
                &[
                    "qemu:allocation-depth",
                    "qemu:dirty-bitmap:b1",
                    "qemu:dirty-bitmap:b2",
                ],
            ),
            (
                &["qemu:dirty-bitmap:"],
                &["qemu:dirty-bitmap:b1", "qemu:dirty-bitmap:b2"],
            ),
            (
                &["x-unknown:thing", "nocolon", "qemu:dirty-bitmap:b2"],
                &["qemu:dirty-bitmap:b2"],
            ),
        ];
        for (queries, want) in cases {
            p.feed(&opt(
                OptionType::LIST_META_CONTEXT,
                &meta_payload("disk", queries),
            ));
            let r = p.all_option_replies();
            assert_eq!(r.last().unwrap().1, ReplyType::ACK);
            let got: Vec<String> = context_names(&r).into_iter().map(|x| x.1).collect();
            assert_eq!(got, want, "{queries:?}");
        }
    }
}

#[test]
fn set_meta_context_selects_exact_names_with_ids() {
    for split in SPLITS {
        let (p, s) = Pair::ready(
            split,
            HeaderMode::Structured,
            "disk",
            &[
                "base:allocation",
                "qemu:dirty-bitmap:b2",
                "qemu:",
                "qemu:dirty-bitmap:nope",
            ],
        );
        drop(p);
        assert_eq!(s.contexts.iter().collect::<Vec<_>>(), vec![0, 3]);
        assert!(s.flags.contains(TransmissionFlags::SEND_DF));
        assert!(!s.flags.contains(TransmissionFlags::BLOCK_STAT_PAYLOAD));

        let mut p = Pair::start(split, 3);
        p.feed(&opt(OptionType::STRUCTURED_REPLY, &[]));
        p.feed(&opt(
            OptionType::SET_META_CONTEXT,
            &meta_payload("disk", &["qemu:dirty-bitmap:b1", "base:allocation"]),
        ));
        let r = p.all_option_replies();
        assert_eq!(
            context_names(&r),
            vec![
                (0, "base:allocation".into()),
                (2, "qemu:dirty-bitmap:b1".into())
            ]
        );
    }
}

#[test]
fn contexts_set_for_another_export_do_not_carry_over() {
    for split in SPLITS {
        let mut p = Pair::start(split, 3);
        p.feed(&opt(OptionType::STRUCTURED_REPLY, &[]));
        p.feed(&opt(
            OptionType::SET_META_CONTEXT,
            &meta_payload("ro", &["base:allocation"]),
        ));
        p.feed(&opt(OptionType::GO, &go_payload("disk", &[])));
        let evs = p.take_events();
        let [Ev::Ready(s)] = &evs[..] else {
            panic!("{evs:?}")
        };
        assert!(s.contexts.is_empty());
    }
}

#[test]
fn meta_context_malformed_queries_are_invalid() {
    for split in SPLITS {
        let mut p = Pair::start(split, 3);
        p.feed(&opt(OptionType::STRUCTURED_REPLY, &[]));
        p.all_option_replies();
        let mut bad = meta_payload("disk", &["base:allocation"]);
        let n = bad.len();
        bad[n - 19..n - 15].copy_from_slice(&0xffff_0000u32.to_be_bytes());
        p.feed(&opt(OptionType::SET_META_CONTEXT, &bad));
        let mut trailing = meta_payload("disk", &[]);
        trailing.push(7);
        p.feed(&opt(OptionType::LIST_META_CONTEXT, &trailing));
        p.feed(&opt(
            OptionType::LIST_META_CONTEXT,
            &meta_payload("nope", &[]),
        ));
        assert_eq!(
            errors_only(&p.all_option_replies()),
            vec![
                ReplyType::ERR_INVALID,
                ReplyType::ERR_INVALID,
                ReplyType::ERR_UNKNOWN
            ]
        );
        assert_in_sync(&mut p);
    }
}

fn tls_pair(split: Split, policy: TlsPolicy) -> Pair {
    let config = ServerConfig {
        tls: policy,
        ..ServerConfig::default()
    };
    let mut p = Pair::with(TestExports::standard(), config, split);
    p.expect_greeting();
    p.feed(&3u32.to_be_bytes());
    p
}

#[test]
fn starttls_policy_off_is_refused_by_policy() {
    for split in SPLITS {
        let mut p = tls_pair(split, TlsPolicy::Off);
        p.feed(&opt(OptionType::STARTTLS, &[]));
        assert_eq!(
            errors_only(&p.all_option_replies()),
            vec![ReplyType::ERR_POLICY]
        );
        assert!(p.take_events().is_empty());
    }
}

#[test]
fn state_negotiated_before_starttls_is_forgotten() {
    for split in SPLITS {
        let mut p = tls_pair(split, TlsPolicy::Allowed);
        p.feed(&opt(OptionType::STRUCTURED_REPLY, &[]));
        p.feed(&opt(
            OptionType::SET_META_CONTEXT,
            &meta_payload("disk", &["base:allocation"]),
        ));
        p.feed(&opt(OptionType::STARTTLS, &[]));
        assert_eq!(p.take_events(), vec![Ev::StartTls]);
        p.server.tls_established();
        p.feed(&opt(OptionType::STARTTLS, &[]));
        p.feed(&opt(OptionType::GO, &go_payload("disk", &[])));
        let r = p.all_option_replies();
        assert!(
            r.iter()
                .any(|x| x.0 == OptionType::STARTTLS && x.1 == ReplyType::ERR_INVALID)
        );
        let evs = p.take_events();
        let [Ev::Ready(s)] = &evs[..] else {
            panic!("{evs:?}")
        };
        assert_eq!(s.mode, HeaderMode::Simple);
        assert!(s.contexts.is_empty());
        assert!(s.tls);
    }
}

#[test]
fn plaintext_after_starttls_closes() {
    for split in [Split::Whole, Split::OneByte] {
        let mut p = tls_pair(split, TlsPolicy::Required);
        let mut bytes = opt(OptionType::STARTTLS, &[]);
        // An injected option riding behind STARTTLS in the same segment.
        bytes.extend_from_slice(&opt(OptionType::STRUCTURED_REPLY, &[]));
        p.feed(&bytes);
        assert_eq!(
            p.take_events(),
            vec![Ev::StartTls, Ev::Close(CloseReason::PlaintextAfterStartTls)]
        );
    }
}

#[test]
fn tls_required_refuses_everything_but_starttls_and_abort() {
    for split in SPLITS {
        let mut p = tls_pair(split, TlsPolicy::Required);
        for (o, data) in [
            (OptionType::LIST, vec![]),
            (OptionType::INFO, go_payload("disk", &[])),
            (OptionType::GO, go_payload("disk", &[])),
            (OptionType::STRUCTURED_REPLY, vec![]),
            (OptionType::EXTENDED_HEADERS, vec![]),
            (OptionType::LIST_META_CONTEXT, meta_payload("disk", &[])),
            (OptionType::SET_META_CONTEXT, meta_payload("disk", &[])),
            (OptionType(42), vec![1, 2, 3]),
        ] {
            p.feed(&opt(o, &data));
            assert_eq!(
                errors_only(&p.all_option_replies()),
                vec![ReplyType::ERR_TLS_REQD],
                "{o:?}"
            );
        }
        assert!(p.take_events().is_empty());
        p.feed(&opt(OptionType::EXPORT_NAME, b"disk"));
        assert_eq!(
            p.take_events(),
            vec![Ev::Close(CloseReason::ExportNameRefused)]
        );

        let mut p = tls_pair(split, TlsPolicy::Required);
        p.feed(&opt(OptionType::ABORT, &[]));
        assert_eq!(errors_only(&p.all_option_replies()), vec![ReplyType::ACK]);

        let mut p = tls_pair(split, TlsPolicy::Required);
        p.feed(&opt(OptionType::STARTTLS, &[]));
        assert_eq!(errors_only(&p.all_option_replies()), vec![ReplyType::ACK]);
        assert_eq!(p.take_events(), vec![Ev::StartTls]);
        p.server.tls_established();
        p.feed(&opt(OptionType::GO, &go_payload("disk", &[])));
        assert!(matches!(p.take_events()[..], [Ev::Ready(_)]));
    }
}

#[test]
fn tls_required_needs_fixed_newstyle() {
    let config = ServerConfig {
        tls: TlsPolicy::Required,
        ..ServerConfig::default()
    };
    let mut p = Pair::with(TestExports::standard(), config, Split::Whole);
    p.expect_greeting();
    p.feed(&[0, 0, 0, 0]);
    assert_eq!(
        p.take_events(),
        vec![Ev::Close(CloseReason::NotFixedNewstyle)]
    );
}

#[test]
fn handshake_timeout_closes() {
    use blockwire_core::time::Instant;
    let mut p = Pair::start(Split::Whole, 3);
    let deadline = p.server.poll_timeout().expect("a handshake deadline");
    assert_eq!(deadline, Instant(10_000_000_000));
    assert!(p.server.handle_timeout(Instant(deadline.0 - 1)).is_none());
    assert!(matches!(
        p.server.handle_timeout(deadline),
        Some(blockwire_core::server::Event::Close(
            CloseReason::HandshakeTimeout
        ))
    ));
    let (p, _) = Pair::ready(Split::Whole, HeaderMode::Simple, "disk", &[]);
    assert_eq!(
        p.server.poll_timeout(),
        None,
        "no deadline once transmission starts"
    );
}

#[test]
fn shutdown_refuses_options() {
    for split in SPLITS {
        let mut p = Pair::start(split, 3);
        p.server.shutdown();
        p.feed(&opt(OptionType::GO, &go_payload("disk", &[])));
        assert_eq!(
            errors_only(&p.all_option_replies()),
            vec![ReplyType::ERR_SHUTDOWN]
        );
        p.feed(&opt(OptionType::EXPORT_NAME, b"disk"));
        assert_eq!(p.take_events(), vec![Ev::Close(CloseReason::Shutdown)]);
    }
}

/// Found by fuzzing: a timeout while an option's payload is half read must
/// not leave that payload in the output (the buffer is shared).
#[test]
fn timeout_mid_option_payload_sends_nothing_more() {
    let mut p = Pair::start(Split::Whole, 3);
    let o = opt(OptionType::GO, &go_payload("disk", &[1, 2, 3]));
    p.feed(&o[..o.len() - 3]);
    assert!(p.from_server.is_empty());
    let deadline = p.server.poll_timeout().unwrap();
    assert!(p.server.handle_timeout(deadline).is_some());
    assert!(
        p.server.poll_transmit().is_empty(),
        "payload echoed as output"
    );
}
