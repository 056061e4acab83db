//! The server machine's transmission phase, against the spec's reactions.

mod common;

use blockwire_core::server::{CloseReason, Command, Request};
use blockwire_core::wire::*;
use common::*;

const MODES: [HeaderMode; 3] = [
    HeaderMode::Simple,
    HeaderMode::Structured,
    HeaderMode::Extended,
];

fn req(mode: HeaderMode, cmd: CommandType, cookie: u64, offset: u64, len: u64) -> Vec<u8> {
    request(mode, CommandFlags::empty(), cmd, cookie, offset, len)
}

fn payload_flag(mode: HeaderMode) -> CommandFlags {
    if mode == HeaderMode::Extended {
        CommandFlags::PAYLOAD_LEN
    } else {
        CommandFlags::empty()
    }
}

fn expect_reject(p: &mut Pair, errno: Errno) -> Ev {
    let evs = p.take_events();
    match &evs[..] {
        [ev @ Ev::Reject { errno: e, .. }] if *e == errno => ev.clone(),
        other => panic!("expected {errno:?}, got {other:?}"),
    }
}

fn expect_request(p: &mut Pair) -> Request {
    let evs = p.take_events();
    match &evs[..] {
        [Ev::Request(r)] => *r,
        other => panic!("expected a request, got {other:?}"),
    }
}

/// A reject's reply must match the session's header mode; in structured
/// mode it is always a structured ERROR chunk, even for reads.
fn check_reply_shape(mode: HeaderMode, bytes: &[u8], errno: Errno, cookie: u64) {
    match mode {
        HeaderMode::Simple => {
            assert_eq!(bytes.len(), 16);
            assert_eq!(reply_magic(bytes), SIMPLE_REPLY_MAGIC);
            assert_eq!(u32::from_be_bytes(bytes[4..8].try_into().unwrap()), errno.0);
            assert_eq!(u64::from_be_bytes(bytes[8..16].try_into().unwrap()), cookie);
        }
        HeaderMode::Structured => {
            assert_eq!(reply_magic(bytes), STRUCTURED_REPLY_MAGIC);
            assert_eq!(u16::from_be_bytes([bytes[4], bytes[5]]), 1, "DONE");
            assert_eq!(u16::from_be_bytes([bytes[6], bytes[7]]), ChunkType::ERROR.0);
            assert_eq!(u64::from_be_bytes(bytes[8..16].try_into().unwrap()), cookie);
            let len = u32::from_be_bytes(bytes[16..20].try_into().unwrap()) as usize;
            assert_eq!(bytes.len(), 20 + len);
            assert_eq!(
                u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
                errno.0
            );
            let msg = u16::from_be_bytes([bytes[24], bytes[25]]) as usize;
            assert_eq!(len, 6 + msg);
        }
        HeaderMode::Extended => {
            assert_eq!(reply_magic(bytes), EXTENDED_REPLY_MAGIC);
            assert_eq!(u16::from_be_bytes([bytes[6], bytes[7]]), ChunkType::ERROR.0);
            let len = u64::from_be_bytes(bytes[24..32].try_into().unwrap()) as usize;
            assert_eq!(bytes.len(), 32 + len);
            assert_eq!(
                u32::from_be_bytes(bytes[32..36].try_into().unwrap()),
                errno.0
            );
        }
    }
}

/// After a scenario, a READ is still decoded: the stream is in sync.
fn assert_in_sync(p: &mut Pair, mode: HeaderMode) {
    p.feed(&req(mode, CommandType::READ, 0x5151, 0, 512));
    let r = expect_request(p);
    assert_eq!((r.cookie, r.len()), (0x5151, 512));
}

#[test]
fn valid_requests_of_every_kind_are_handed_over() {
    for split in SPLITS {
        for mode in MODES {
            let ctx: &[&str] = if mode.structured() {
                &["base:allocation"]
            } else {
                &[]
            };
            let (mut p, _) = Pair::ready(split, mode, "disk", ctx);
            let mut cmds = vec![
                (CommandType::READ, CommandFlags::empty()),
                (CommandType::FLUSH, CommandFlags::empty()),
                (CommandType::TRIM, CommandFlags::FUA),
                (CommandType::CACHE, CommandFlags::empty()),
                (
                    CommandType::WRITE_ZEROES,
                    CommandFlags::NO_HOLE | CommandFlags::FAST_ZERO,
                ),
            ];
            if mode.structured() {
                cmds.push((CommandType::BLOCK_STATUS, CommandFlags::REQ_ONE));
                cmds.push((CommandType::READ, CommandFlags::DF));
            }
            for (i, (cmd, flags)) in cmds.into_iter().enumerate() {
                let (off, len) = if cmd == CommandType::FLUSH {
                    (0, 0)
                } else {
                    (4096, 8192)
                };
                p.feed(&request(mode, flags, cmd, i as u64, off, len));
                let r = expect_request(&mut p);
                assert_eq!((r.kind(), r.flags(), r.cookie), (cmd, flags, i as u64));
                if let Command::BlockStatus { contexts, .. } = r.command {
                    assert_eq!(contexts.iter().collect::<Vec<_>>(), vec![0]);
                }
            }
        }
    }
}

#[test]
fn write_payload_arrives_in_pieces_never_buffered() {
    for split in SPLITS {
        for mode in MODES {
            let (mut p, _) = Pair::ready(split, mode, "disk", &[]);
            let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
            let mut bytes = request(
                mode,
                payload_flag(mode),
                CommandType::WRITE,
                9,
                1000,
                data.len() as u64,
            );
            bytes.extend_from_slice(&data);
            p.feed(&bytes);
            let evs = p.take_events();
            let Ev::Request(r) = &evs[0] else {
                panic!("{evs:?}")
            };
            assert_eq!(
                r.command,
                Command::Write {
                    offset: 1000,
                    len: 70_000,
                    fua: false
                }
            );
            let mut got = Vec::new();
            let mut next = 1000;
            for (i, ev) in evs[1..].iter().enumerate() {
                let Ev::WriteData {
                    cookie,
                    offset,
                    data,
                    last,
                } = ev
                else {
                    panic!("{ev:?}")
                };
                assert_eq!((*cookie, *offset), (9, next));
                assert_eq!(*last, i == evs.len() - 2);
                next += data.len() as u64;
                got.extend_from_slice(data);
            }
            assert_eq!(got, data);
            assert_in_sync(&mut p, mode);
        }
    }
}

#[test]
fn frontend_may_take_the_payload_itself() {
    let (mut p, _) = Pair::ready(Split::Whole, HeaderMode::Simple, "disk", &[]);
    p.feed(&req(HeaderMode::Simple, CommandType::WRITE, 1, 0, 4096));
    expect_request(&mut p);
    assert_eq!(p.server.write_payload_remaining(), Some(4096));
    p.server.skip_payload(1000);
    assert_eq!(p.server.write_payload_remaining(), Some(3096));
    p.server.skip_payload(3096);
    assert_eq!(p.server.write_payload_remaining(), None);
    assert_in_sync(&mut p, HeaderMode::Simple);
}

#[test]
fn out_of_bounds_requests() {
    for split in SPLITS {
        for mode in MODES {
            let (mut p, _) = Pair::ready(split, mode, "disk", &[]);
            let size = 1u64 << 20;
            for (cmd, off, len, errno) in [
                (CommandType::READ, size - 512, 1024, Errno::EINVAL),
                (CommandType::TRIM, size, 1, Errno::EINVAL),
                (CommandType::CACHE, size + 1, 0, Errno::EINVAL),
                (CommandType::WRITE_ZEROES, size - 1, 2, Errno::ENOSPC),
                (CommandType::READ, u64::MAX - 10, 100, Errno::EINVAL),
                (CommandType::TRIM, u64::MAX, 1, Errno::EINVAL),
            ] {
                p.feed(&req(mode, cmd, 7, off, len));
                let ev = expect_reject(&mut p, errno);
                let Ev::Reject {
                    bytes,
                    cookie,
                    close,
                    ..
                } = ev
                else {
                    unreachable!()
                };
                assert_eq!((cookie, close), (7, None));
                check_reply_shape(mode, &bytes, errno, 7);
            }
            // A write past the end: ENOSPC, and its payload is skipped.
            let mut w = request(
                mode,
                payload_flag(mode),
                CommandType::WRITE,
                8,
                size - 100,
                200,
            );
            w.extend_from_slice(&[0x55; 200]);
            p.feed(&w);
            expect_reject(&mut p, Errno::ENOSPC);
            assert_in_sync(&mut p, mode);
        }
    }
}

#[test]
fn read_of_four_gib_minus_one_is_invalid() {
    for split in SPLITS {
        for mode in MODES {
            let (mut p, _) = Pair::ready(split, mode, "disk", &[]);
            p.feed(&req(mode, CommandType::READ, 1, 0, 0xffff_ffff));
            expect_reject(&mut p, Errno::EINVAL);
            assert_in_sync(&mut p, mode);
        }
    }
}

#[test]
fn write_claiming_2gib_is_refused_and_closes_without_buffering() {
    for split in SPLITS {
        for mode in MODES {
            let (mut p, _) = Pair::ready(split, mode, "disk", &[]);
            let before = p.consumed;
            let mut bytes = request(mode, payload_flag(mode), CommandType::WRITE, 3, 0, 2 << 30);
            bytes.extend_from_slice(&[0xaa; 4096]);
            p.feed(&bytes);
            let evs = p.take_events();
            let [
                Ev::Reject {
                    close: Some(CloseReason::PayloadTooLarge),
                    errno,
                    ..
                },
            ] = &evs[..]
            else {
                panic!("{evs:?}")
            };
            assert_eq!(*errno, Errno::EINVAL);
            assert_eq!(p.consumed - before, mode.request_size(), "payload was read");
            assert!(p.server.is_closed());
        }
    }
}

#[test]
fn bad_request_magic_disconnects() {
    for split in SPLITS {
        for mode in MODES {
            let (mut p, _) = Pair::ready(split, mode, "disk", &[]);
            let mut bytes = req(mode, CommandType::READ, 1, 0, 512);
            bytes[3] ^= 1;
            p.feed(&bytes);
            assert_eq!(
                p.take_events(),
                vec![Ev::Close(CloseReason::BadRequestMagic)]
            );
        }
        // A compact request in an extended session has the wrong magic.
        let (mut p, _) = Pair::ready(split, HeaderMode::Extended, "disk", &[]);
        let mut bytes = req(HeaderMode::Simple, CommandType::READ, 1, 0, 512);
        bytes.extend_from_slice(&[0; 4]);
        p.feed(&bytes);
        assert_eq!(
            p.take_events(),
            vec![Ev::Close(CloseReason::BadRequestMagic)]
        );
    }
}

#[test]
fn unknown_commands_and_flags_are_invalid() {
    for split in SPLITS {
        for mode in MODES {
            let (mut p, _) = Pair::ready(split, mode, "disk", &[]);
            for (cmd, flags) in [
                (CommandType(99), CommandFlags::empty()),
                (CommandType::RESIZE, CommandFlags::empty()),
                (CommandType::READ, CommandFlags::from_bits_retain(1 << 9)),
                (CommandType::READ, CommandFlags::NO_HOLE),
                (CommandType::WRITE_ZEROES, CommandFlags::REQ_ONE),
                (CommandType::TRIM, CommandFlags::FAST_ZERO),
                (CommandType::FLUSH, CommandFlags::DF),
            ] {
                p.feed(&request(mode, flags, cmd, 5, 0, 512));
                expect_reject(&mut p, Errno::EINVAL);
            }
            assert_in_sync(&mut p, mode);
        }
    }
}

#[test]
fn payload_len_on_a_command_without_payload_is_consumed_then_invalid() {
    for split in SPLITS {
        let mode = HeaderMode::Extended;
        let (mut p, _) = Pair::ready(split, mode, "disk", &[]);
        let mut bytes = request(
            mode,
            CommandFlags::PAYLOAD_LEN,
            CommandType::TRIM,
            5,
            0,
            100,
        );
        bytes.extend_from_slice(&[1; 100]);
        p.feed(&bytes);
        expect_reject(&mut p, Errno::EINVAL);
        // A write without PAYLOAD_LEN still carries its data, as QEMU 10's
        // client sends it and qemu-nbd accepts it.
        let mut w = request(mode, CommandFlags::FUA, CommandType::WRITE, 6, 0, 100);
        w.extend_from_slice(&[7; 100]);
        p.feed(&w);
        let evs = p.take_events();
        assert!(
            matches!(evs[0], Ev::Request(r) if r.len() == 100),
            "{evs:?}"
        );
        assert!(
            matches!(evs.last(), Some(Ev::WriteData { last: true, .. })),
            "{evs:?}"
        );
        assert_in_sync(&mut p, mode);
        // A compact session has no PAYLOAD_LEN at all.
        let (mut p, _) = Pair::ready(split, HeaderMode::Structured, "disk", &[]);
        p.feed(&request(
            HeaderMode::Structured,
            CommandFlags::PAYLOAD_LEN,
            CommandType::READ,
            6,
            0,
            100,
        ));
        expect_reject(&mut p, Errno::EINVAL);
        assert_in_sync(&mut p, HeaderMode::Structured);
    }
}

#[test]
fn writes_on_read_only_are_eperm() {
    for split in SPLITS {
        for mode in MODES {
            let (mut p, s) = Pair::ready(split, mode, "ro", &[]);
            assert!(s.flags.contains(TransmissionFlags::READ_ONLY));
            let mut w = request(mode, payload_flag(mode), CommandType::WRITE, 1, 0, 512);
            w.extend_from_slice(&[0; 512]);
            p.feed(&w);
            expect_reject(&mut p, Errno::EPERM);
            for cmd in [CommandType::TRIM, CommandType::WRITE_ZEROES] {
                p.feed(&req(mode, cmd, 2, 0, 512));
                expect_reject(&mut p, Errno::EPERM);
            }
            assert_in_sync(&mut p, mode);
        }
    }
}

#[test]
fn zero_length_read_gets_a_request_not_a_disconnect() {
    for split in SPLITS {
        for mode in MODES {
            let (mut p, _) = Pair::ready(split, mode, "disk", &[]);
            p.feed(&req(mode, CommandType::READ, 1, 100, 0));
            assert_eq!(expect_request(&mut p).len(), 0);
            assert!(!p.server.is_closed());
        }
    }
}

#[test]
fn fast_zero_not_advertised_is_invalid() {
    for split in SPLITS {
        // "ro" lacks SEND_FAST_ZERO (and is read-only: flags are checked first).
        let (mut p, s) = Pair::ready(split, HeaderMode::Simple, "ro", &[]);
        assert!(!s.flags.contains(TransmissionFlags::SEND_FAST_ZERO));
        p.feed(&request(
            HeaderMode::Simple,
            CommandFlags::FAST_ZERO,
            CommandType::WRITE_ZEROES,
            1,
            0,
            512,
        ));
        expect_reject(&mut p, Errno::EINVAL);
    }
}

#[test]
fn df_without_structured_replies_is_invalid() {
    for split in SPLITS {
        let (mut p, _) = Pair::ready(split, HeaderMode::Simple, "disk", &[]);
        p.feed(&request(
            HeaderMode::Simple,
            CommandFlags::DF,
            CommandType::READ,
            1,
            0,
            512,
        ));
        expect_reject(&mut p, Errno::EINVAL);
    }
}

#[test]
fn block_status_without_contexts_is_invalid() {
    for split in SPLITS {
        for mode in MODES {
            let (mut p, _) = Pair::ready(split, mode, "disk", &[]);
            p.feed(&req(mode, CommandType::BLOCK_STATUS, 1, 0, 512));
            expect_reject(&mut p, Errno::EINVAL);
        }
    }
}

#[test]
fn block_status_of_zero_length_is_invalid() {
    let (mut p, _) = Pair::ready(
        Split::Whole,
        HeaderMode::Structured,
        "disk",
        &["base:allocation"],
    );
    p.feed(&req(
        HeaderMode::Structured,
        CommandType::BLOCK_STATUS,
        1,
        0,
        0,
    ));
    expect_reject(&mut p, Errno::EINVAL);
}

#[test]
fn misaligned_requests_on_a_4k_export_are_invalid() {
    for split in SPLITS {
        let (mut p, s) = Pair::ready(split, HeaderMode::Structured, "bs", &[]);
        assert!(s.block_sizes_agreed);
        for (off, len) in [(512, 4096), (0, 100), (4095, 1)] {
            p.feed(&req(HeaderMode::Structured, CommandType::READ, 1, off, len));
            expect_reject(&mut p, Errno::EINVAL);
        }
        p.feed(&req(
            HeaderMode::Structured,
            CommandType::READ,
            1,
            4096,
            8192,
        ));
        expect_request(&mut p);
    }
}

#[test]
fn bytes_after_disc_are_ignored() {
    for split in SPLITS {
        for mode in MODES {
            let (mut p, _) = Pair::ready(split, mode, "disk", &[]);
            let mut bytes = req(mode, CommandType::DISC, 0, 0, 0);
            bytes.extend_from_slice(&req(mode, CommandType::READ, 1, 0, 512));
            bytes.extend_from_slice(&[0xff; 100]);
            p.feed(&bytes);
            assert_eq!(p.take_events(), vec![Ev::Disconnect]);
            assert!(p.server.is_closed());
        }
    }
}

#[test]
fn structured_reads_never_get_simple_replies_even_for_errors() {
    for split in SPLITS {
        for mode in [HeaderMode::Structured, HeaderMode::Extended] {
            let (mut p, _) = Pair::ready(split, mode, "disk", &[]);
            for (flags, off, len) in [
                (CommandFlags::empty(), 1 << 20, 512),
                (CommandFlags::NO_HOLE, 0, 512),
                (CommandFlags::empty(), 0, 1 << 30),
            ] {
                p.feed(&request(mode, flags, CommandType::READ, 77, off, len));
                let Ev::Reject { bytes, errno, .. } = expect_reject(&mut p, Errno::EINVAL) else {
                    unreachable!()
                };
                assert_ne!(reply_magic(&bytes), SIMPLE_REPLY_MAGIC);
                check_reply_shape(mode, &bytes, errno, 77);
            }
        }
    }
}

#[test]
fn shutdown_answers_new_requests_with_eshutdown() {
    for mode in MODES {
        let (mut p, _) = Pair::ready(Split::Whole, mode, "disk", &[]);
        p.server.shutdown();
        let mut w = request(mode, payload_flag(mode), CommandType::WRITE, 1, 0, 512);
        w.extend_from_slice(&[0; 512]);
        p.feed(&w);
        expect_reject(&mut p, Errno::ESHUTDOWN);
        p.feed(&req(mode, CommandType::READ, 2, 0, 512));
        expect_reject(&mut p, Errno::ESHUTDOWN);
    }
}

fn bs_payload(effect: u64, ids: &[u32]) -> Vec<u8> {
    let mut v = effect.to_be_bytes().to_vec();
    for id in ids {
        v.extend_from_slice(&id.to_be_bytes());
    }
    v
}

#[test]
fn extended_block_status_payload_selects_contexts() {
    for split in SPLITS {
        let mode = HeaderMode::Extended;
        let (mut p, s) = Pair::ready(
            split,
            mode,
            "disk",
            &["base:allocation", "qemu:dirty-bitmap:b1"],
        );
        assert!(s.flags.contains(TransmissionFlags::BLOCK_STAT_PAYLOAD));
        let flags = CommandFlags::PAYLOAD_LEN;
        let body = bs_payload(8192, &[2]);
        let mut bytes = request(
            mode,
            flags,
            CommandType::BLOCK_STATUS,
            4,
            0,
            body.len() as u64,
        );
        bytes.extend_from_slice(&body);
        p.feed(&bytes);
        let r = expect_request(&mut p);
        assert_eq!(r.len(), 8192);
        let Command::BlockStatus { contexts, .. } = r.command else {
            panic!("{r:?}")
        };
        assert_eq!(contexts.iter().collect::<Vec<_>>(), vec![2]);
        // Unknown and repeated ids: payload consumed, EINVAL.
        for ids in [&[1u32][..], &[0, 0][..], &[][..]] {
            let body = bs_payload(8192, ids);
            let mut bytes = request(
                mode,
                flags,
                CommandType::BLOCK_STATUS,
                4,
                0,
                body.len() as u64,
            );
            bytes.extend_from_slice(&body);
            p.feed(&bytes);
            expect_reject(&mut p, Errno::EINVAL);
        }
        // Oversized payload form: skipped, EINVAL, still in sync.
        let mut bytes = request(mode, flags, CommandType::BLOCK_STATUS, 4, 0, 1000);
        bytes.extend_from_slice(&[0; 1000]);
        p.feed(&bytes);
        expect_reject(&mut p, Errno::EINVAL);
        assert_in_sync(&mut p, mode);
    }
}

#[test]
fn extended_requests_carry_64_bit_effect_lengths() {
    let mode = HeaderMode::Extended;
    let (mut p, _) = Pair::ready(Split::Whole, mode, "disk", &["base:allocation"]);
    p.feed(&req(mode, CommandType::BLOCK_STATUS, 1, 0, (1 << 32) + 512));
    expect_reject(&mut p, Errno::EINVAL); // past the 1 MiB end
    p.feed(&req(mode, CommandType::TRIM, 1, 0, 1 << 20));
    assert_eq!(expect_request(&mut p).len(), 1 << 20);
}
