//! The server machine's transmission phase, against the spec's reactions.

mod common;

use blockwire_core::block::Extent;
use blockwire_core::block::contract::{BlockError, Zeroes};
use blockwire_core::block::stats::AcctType;
use blockwire_core::server::{
    CloseReason, Command, ContextSet, Fault, ReplyEncoder, Request, Step,
};
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

// ---- what a request asks of the device ----

#[test]
fn plans_spell_out_fua_and_empty_writes() {
    let plan = |command| Request { cookie: 1, command }.plan().collect::<Vec<_>>();
    let write = |len, fua| Command::Write {
        offset: 8,
        len,
        fua,
    };
    assert_eq!(
        plan(write(512, true)),
        [Step::Write {
            offset: 8,
            len: 512,
            fua: true
        }]
    );
    // An empty write stores nothing; with FUA it is a flush.
    assert_eq!(plan(write(0, false)), []);
    assert_eq!(plan(write(0, true)), [Step::Flush]);
    let trim = |fua| Command::Trim {
        offset: 8,
        len: 4096,
        fua,
    };
    assert_eq!(
        plan(trim(false)),
        [Step::Discard {
            offset: 8,
            len: 4096
        }]
    );
    assert_eq!(
        plan(trim(true)),
        [
            Step::Discard {
                offset: 8,
                len: 4096
            },
            Step::Flush
        ]
    );
    let how = Zeroes {
        may_unmap: true,
        fast: true,
        fua: true,
    };
    let zeroes = Command::WriteZeroes {
        offset: 8,
        len: 4096,
        how,
    };
    assert_eq!(
        plan(zeroes),
        [Step::WriteZeroes {
            offset: 8,
            len: 4096,
            how
        }]
    );
    assert_eq!(plan(Command::Flush), [Step::Flush]);
    assert_eq!(
        plan(Command::Cache { offset: 8, len: 1 }),
        [Step::Cache { offset: 8, len: 1 }]
    );
    let read = Command::Read {
        offset: 0,
        len: 1,
        no_fragment: false,
    };
    assert_eq!(plan(read), [Step::Read]);
    let r = Request {
        cookie: 1,
        command: read,
    };
    assert_eq!(r.acct_type(), Some(AcctType::Read));
    let r = Request {
        cookie: 1,
        command: zeroes,
    };
    assert_eq!(r.acct_type(), Some(AcctType::Write));
    let r = Request {
        cookie: 1,
        command: trim(true),
    };
    assert_eq!(r.acct_type(), Some(AcctType::Unmap));
    let r = Request {
        cookie: 1,
        command: Command::Cache { offset: 0, len: 1 },
    };
    assert_eq!(r.acct_type(), None);
}

#[test]
fn device_errors_reach_the_client_with_their_message() {
    let f = Fault::from(BlockError::NoSpace);
    assert_eq!(
        (f.errno, f.message),
        (Errno::ENOSPC, "no space left on the device")
    );
    let f = Fault::from(BlockError::Io(5));
    assert_eq!((f.errno, f.message), (Errno::EIO, "I/O error"));
    assert_eq!(BlockError::Io(5).to_string(), "I/O error (errno 5)");
}

// ---- reply encoding ----

fn a_request(cmd: CommandType, flags: CommandFlags, offset: u64, length: u64) -> Request {
    let command = match cmd {
        CommandType::READ => Command::Read {
            offset,
            len: length as u32,
            no_fragment: flags.contains(CommandFlags::DF),
        },
        CommandType::WRITE => Command::Write {
            offset,
            len: length as u32,
            fua: flags.contains(CommandFlags::FUA),
        },
        CommandType::BLOCK_STATUS => Command::BlockStatus {
            offset,
            len: length,
            req_one: flags.contains(CommandFlags::REQ_ONE),
            contexts: ContextSet(1 << 7),
        },
        other => panic!("no test request for {other:?}"),
    };
    Request {
        cookie: 0x0102_0304_0506_0708,
        command,
    }
}

/// One block-status chunk for context 7 of `r` from `ex`, into `room` bytes.
fn status_chunk(enc: ReplyEncoder, r: &Request, ex: &[Extent], room: usize) -> Vec<u8> {
    let mut scratch: Vec<Extent> = Vec::new();
    let mut buf = vec![0u8; room];
    let mut slice = blockwire_core::wire::codec::SliceSink::new(&mut buf);
    enc.block_status(r, u32::MAX, &mut scratch, &mut slice, |id, q, push| {
        assert_eq!(id, 7);
        assert_eq!((q.offset, q.length), (r.offset(), r.len()));
        for e in ex {
            if !push(*e) {
                break;
            }
        }
        Ok::<(), ()>(())
    })
    .unwrap();
    let n = slice.written();
    buf.truncate(n);
    buf
}

#[test]
fn encoder_headers_per_mode() {
    let r = a_request(CommandType::READ, CommandFlags::empty(), 4096, 8192);
    let simple = ReplyEncoder::new(HeaderMode::Simple);
    assert_eq!(simple.data(&r, 4096, 8192, true).as_bytes().len(), 16);
    assert!(simple.hole(&r, 4096, 512, false).is_none());
    let st = ReplyEncoder::new(HeaderMode::Structured);
    let h = st.data(&r, 6144, 1024, false);
    let b = h.as_bytes();
    assert_eq!(b.len(), 28);
    assert_eq!(reply_magic(b), STRUCTURED_REPLY_MAGIC);
    assert_eq!(u16::from_be_bytes([b[4], b[5]]), 0);
    assert_eq!(u32::from_be_bytes(b[16..20].try_into().unwrap()), 1024 + 8);
    assert_eq!(u64::from_be_bytes(b[20..28].try_into().unwrap()), 6144);
    let hole = st.hole(&r, 4096, 2048, true).unwrap();
    assert_eq!(hole.as_bytes().len(), 32);
    let ok = st.ok(&r);
    assert_eq!(ok.as_bytes().len(), 20, "READ ends with a NONE chunk");
    let w = a_request(CommandType::WRITE, CommandFlags::empty(), 0, 512);
    assert_eq!(
        st.ok(&w).as_bytes().len(),
        16,
        "non-reads may use simple replies"
    );
    let ext = ReplyEncoder::new(HeaderMode::Extended);
    let b = ext.ok(&w);
    assert_eq!(b.as_bytes().len(), 32);
    assert_eq!(reply_magic(b.as_bytes()), EXTENDED_REPLY_MAGIC);
    let d = ext.data(&r, 6144, 1024, true);
    let b = d.as_bytes();
    assert_eq!(b.len(), 40);
    assert_eq!(
        u64::from_be_bytes(b[16..24].try_into().unwrap()),
        4096,
        "offset echoes the request"
    );
    assert_eq!(u64::from_be_bytes(b[32..40].try_into().unwrap()), 6144);
    let e = st.error_at(&r, Errno::EIO, 5000, "bad sector");
    let b = e.as_bytes();
    assert_eq!(u16::from_be_bytes([b[6], b[7]]), ChunkType::ERROR_OFFSET.0);
    assert_eq!(&b[b.len() - 8..], &5000u64.to_be_bytes());
    let long = "é".repeat(200);
    let e = st.error(&r, Errno(0), &long);
    assert_eq!(e.errno(), Errno::EIO, "an error reply never says success");
    assert!(e.as_bytes().len() <= 20 + 6 + 120);
}

fn decode_bs32(b: &[u8]) -> (u32, Vec<(u32, u32)>) {
    let len = u32::from_be_bytes(b[16..20].try_into().unwrap()) as usize;
    assert_eq!(b.len(), 20 + len);
    let id = u32::from_be_bytes(b[20..24].try_into().unwrap());
    let ex = b[24..]
        .chunks(8)
        .map(|c| {
            (
                u32::from_be_bytes(c[..4].try_into().unwrap()),
                u32::from_be_bytes(c[4..].try_into().unwrap()),
            )
        })
        .collect();
    (id, ex)
}

#[test]
fn block_status_encoding_merges_clips_and_honours_req_one() {
    let st = ReplyEncoder::new(HeaderMode::Structured);
    let r = a_request(CommandType::BLOCK_STATUS, CommandFlags::empty(), 0, 10_000);
    let ex = [
        Extent::new(1000, 3),
        Extent::new(0, 1),
        Extent::new(1000, 3),
        Extent::new(3000, 0),
        Extent::new(1 << 40, 3),
    ];
    let (id, got) = decode_bs32(&status_chunk(st, &r, &ex, 4096));
    assert_eq!(id, 7);
    assert_eq!(got, vec![(2000, 3), (3000, 0), (5000, 3)]);
    let one = a_request(CommandType::BLOCK_STATUS, CommandFlags::REQ_ONE, 0, 1500);
    assert_eq!(
        decode_bs32(&status_chunk(st, &one, &ex, 4096)).1,
        vec![(1500, 3)]
    );
    assert_eq!(
        decode_bs32(&status_chunk(st, &r, &[], 4096)).1,
        vec![(10_000, 0)],
        "empty source: status 0"
    );
    let many: Vec<Extent> = (0..1000).map(|i| Extent::new(1, i % 2)).collect();
    assert_eq!(
        decode_bs32(&status_chunk(st, &r, &many, 20 + 4 + 8 * 10))
            .1
            .len(),
        10,
        "descriptors are limited to what the reply's room holds"
    );

    let ext = ReplyEncoder::new(HeaderMode::Extended);
    let big = a_request(CommandType::BLOCK_STATUS, CommandFlags::empty(), 0, 1 << 40);
    let b = status_chunk(ext, &big, &[Extent::new(1 << 40, 1)], 4096);
    assert_eq!(
        u16::from_be_bytes([b[6], b[7]]),
        ChunkType::BLOCK_STATUS_EXT.0
    );
    assert_eq!(
        u32::from_be_bytes(b[36..40].try_into().unwrap()),
        1,
        "descriptor count"
    );
    assert_eq!(u64::from_be_bytes(b[40..48].try_into().unwrap()), 1 << 40);
}

#[test]
fn read_replies_follow_one_hole_rule() {
    use blockwire_core::server::{MIN_HOLE, ReadChunk, ReadReply, status_from};
    let r = a_request(CommandType::READ, CommandFlags::empty(), 1 << 20, 1 << 20);
    // data 8K, a short zero run (kept as data), data, a long zero run.
    let ex = [
        Extent::new(8192, 0),
        Extent::new(MIN_HOLE - 512, 3),
        Extent::new(8192, 0),
        Extent::new(1 << 20, 3),
    ];
    let plan = |mode, holes, cap| {
        let mut p = ReadReply::new(&r, ReplyEncoder::new(mode), holes).unwrap();
        let mut status = status_from(&ex, 1 << 20);
        let mut out = vec![];
        while let Some(c) = p.next_chunk(cap, &mut status) {
            out.push(match c {
                ReadChunk::Data { offset, len, .. } => ('d', offset - (1 << 20), len),
                ReadChunk::Hole { offset, len, .. } => ('h', offset - (1 << 20), len),
                ReadChunk::Empty(_) => ('e', 0, 0),
            });
        }
        assert!(p.is_done());
        out
    };
    let short = 8192 + MIN_HOLE as u32 - 512 + 8192;
    assert_eq!(
        plan(HeaderMode::Structured, true, u64::MAX),
        vec![('d', 0, short), ('h', short as u64, (1 << 20) - short)]
    );
    assert_eq!(
        plan(HeaderMode::Simple, true, 4096),
        vec![('d', 0, 1 << 20)],
        "simple replies are one chunk whatever the cap"
    );
    assert_eq!(
        plan(HeaderMode::Extended, false, u64::MAX),
        vec![('d', 0, 1 << 20)],
        "a device without holes is not asked"
    );
    let capped = plan(HeaderMode::Structured, true, 10_000);
    assert_eq!(capped[0], ('d', 0, 10_000));
    assert_eq!(capped.last().unwrap().0, 'h');
    let zero = Request {
        cookie: 1,
        command: Command::Read {
            offset: 0,
            len: 0,
            no_fragment: false,
        },
    };
    let mut p = ReadReply::new(&zero, ReplyEncoder::new(HeaderMode::Structured), true).unwrap();
    assert!(matches!(
        p.next_chunk(1, |_, m| Extent::new(m, 0)),
        Some(ReadChunk::Empty(_))
    ));
    assert!(p.next_chunk(1, |_, m| Extent::new(m, 0)).is_none());
}

#[test]
fn device_limits_become_block_sizes() {
    use blockwire_core::server::BlockSizes;
    let b = |a, p, m| {
        let s = BlockSizes::of_device(a, p, m);
        assert!(s.is_valid(), "{s:?}");
        (s.minimum, s.preferred, s.maximum)
    };
    assert_eq!(b(0, 0, 0), (1, 4096, DEFAULT_MAX_PAYLOAD));
    assert_eq!(b(3, 65537, 1 << 20), (4, 1 << 17, 1 << 20));
    // A large alignment: the preferred size and the maximum follow it.
    assert_eq!(b(1 << 16, 512, 4096), (1 << 16, 1 << 16, 1 << 16));
    assert_eq!(
        b(1 << 30, 1 << 30, 1 << 30),
        (MAX_MIN_BLOCK, DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_PAYLOAD)
    );
}

#[test]
fn device_caps_become_flags() {
    use blockwire_core::server::DeviceCaps;
    let rw = DeviceCaps {
        trim: true,
        write_zeroes: true,
        fast_zero: true,
        cache: true,
        multi_conn: true,
        ..DeviceCaps::default()
    };
    let f = rw.transmission_flags();
    assert!(f.contains(
        TransmissionFlags::SEND_FLUSH
            | TransmissionFlags::SEND_FUA
            | TransmissionFlags::SEND_TRIM
            | TransmissionFlags::SEND_WRITE_ZEROES
            | TransmissionFlags::SEND_FAST_ZERO
            | TransmissionFlags::SEND_CACHE
            | TransmissionFlags::CAN_MULTI_CONN
    ));
    let ro = DeviceCaps {
        read_only: true,
        ..rw
    }
    .transmission_flags();
    assert!(ro.contains(TransmissionFlags::READ_ONLY));
    assert!(!ro.intersects(
        TransmissionFlags::SEND_TRIM
            | TransmissionFlags::SEND_WRITE_ZEROES
            | TransmissionFlags::SEND_FAST_ZERO
    ));
    let slow = DeviceCaps {
        fast_zero: true,
        write_zeroes: false,
        ..rw
    };
    assert!(
        !slow
            .transmission_flags()
            .contains(TransmissionFlags::SEND_FAST_ZERO)
    );
}

/// One handshake buffer serves option payloads and replies alike, so a
/// connection's state stays a little over one buffer: what a bare-metal
/// frontend pays per socket.
#[test]
fn a_connection_costs_one_handshake_buffer() {
    use blockwire_core::server::{Server, TRANSMIT_BUFFER};
    let size = std::mem::size_of::<Server<&TestExports>>();
    assert!(
        size <= TRANSMIT_BUFFER + 1024,
        "Server is {size} bytes; the buffer is {TRANSMIT_BUFFER}"
    );
}
