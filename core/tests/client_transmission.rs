//! The client machine in transmission: requests, replies in every header
//! mode, and a hostile server's worst.

#[path = "client_support.rs"]
mod support;

use blockwire_core::block::Extent;
use blockwire_core::client::{Client, Cookie, Error, RequestError, RequestFailure};
use blockwire_core::wire::{ChunkType, CommandFlags, CommandType, Errno, HeaderMode};
use support::*;

const SIZE: u64 = 1 << 20;
const F: CommandFlags = CommandFlags::empty();

fn structured() -> Client {
    ready_client(
        HeaderMode::Structured,
        &["base:allocation"],
        SIZE,
        ALL_FLAGS,
    )
}

fn extended() -> Client {
    ready_client(
        HeaderMode::Extended,
        &["base:allocation", "x:y"],
        SIZE,
        ALL_FLAGS,
    )
}

fn sent_requests(client: &mut Client) -> Vec<u8> {
    let mut run = Run::default();
    drain(client, &mut run);
    run.sent
}

/// Reassemble a read's data from its events; `None` where nothing landed.
fn assemble(events: &[Ev], cookie: Cookie, base: u64, len: usize) -> Vec<Option<u8>> {
    let mut buf = vec![None; len];
    for e in events {
        match e {
            Ev::ReadData(c, o, d) if *c == cookie => {
                let at = (o - base) as usize;
                for (i, b) in d.iter().enumerate() {
                    assert!(buf[at + i].is_none(), "byte written twice");
                    buf[at + i] = Some(*b);
                }
            }
            Ev::ReadHole(c, o, l) if *c == cookie => {
                let at = (o - base) as usize;
                for slot in &mut buf[at..at + *l as usize] {
                    assert!(slot.is_none(), "byte written twice");
                    *slot = Some(0);
                }
            }
            _ => {}
        }
    }
    buf
}

#[test]
fn simple_mode_read_write_flush() {
    let mut c = ready_client(HeaderMode::Simple, &[], SIZE, ALL_FLAGS);
    let r = c.read(4096, 1024, F).unwrap();
    let w = c.write(0, 512, CommandFlags::FUA).unwrap();
    assert_eq!(c.flush(), Err(RequestError::PayloadOwed));
    assert_eq!(
        c.payload_sent(),
        Err(RequestError::NoPayloadOwed),
        "header not drained yet"
    );
    let sent = sent_requests(&mut c);
    assert_eq!(sent.len(), 56);
    // Compact read header.
    assert_eq!(&sent[..4], &0x25609513u32.to_be_bytes());
    assert_eq!(&sent[4..8], &[0, 0, 0, 0]);
    assert_eq!(&sent[8..16], &r.0.to_be_bytes());
    assert_eq!(&sent[16..24], &4096u64.to_be_bytes());
    assert_eq!(&sent[24..28], &1024u32.to_be_bytes());
    // Compact write header, FUA, no PAYLOAD_LEN.
    assert_eq!(&sent[28 + 4..28 + 8], &[0, 1, 0, 1]);
    c.payload_sent().unwrap();
    let f = c.flush().unwrap();
    assert_eq!(c.in_flight(), 3);

    let data: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
    let s = Script::new()
        .simple(w, 0, b"")
        .simple(r, 0, &data)
        .simple(f, 5, b"");
    let run = run_whole(&mut c, &s.0);
    assert_eq!(run.events[0], Ev::Completed(w, Ok(())));
    assert_eq!(
        assemble(&run.events, r, 4096, 1024),
        data.iter().copied().map(Some).collect::<Vec<_>>()
    );
    assert!(run.events.contains(&Ev::Completed(r, Ok(()))));
    assert_eq!(
        run.events.last(),
        Some(&Ev::Completed(f, Err(RequestFailure::Server(Errno::EIO))))
    );
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn simple_read_error_has_no_payload() {
    let mut c = ready_client(HeaderMode::Simple, &[], SIZE, ALL_FLAGS);
    let r = c.read(0, 512, F).unwrap();
    let r2 = c.read(512, 512, F).unwrap();
    // Unknown error values are EINVAL.
    let s = Script::new().simple(r, 12345, b"").simple(r2, 0, &[1; 512]);
    let run = run_whole(&mut c, &s.0);
    assert_eq!(
        run.events[0],
        Ev::Completed(r, Err(RequestFailure::Server(Errno::EINVAL)))
    );
    assert_eq!(run.events.last(), Some(&Ev::Completed(r2, Ok(()))));
}

#[test]
fn structured_read_out_of_order_with_hole() {
    let mut c = structured();
    let r = c.read(8192, 4096, F).unwrap();
    let s = Script::new()
        .chunk(0, OFFSET_DATA, r, &data_payload(8192 + 3072, &[3; 1024]))
        .chunk(0, OFFSET_HOLE, r, &hole_payload(8192 + 1024, 2048))
        .chunk(0, OFFSET_DATA, r, &data_payload(8192, &[1; 1024]))
        .chunk(DONE, NONE, r, &[]);
    let run = run_whole(&mut c, &s.0);
    let buf = assemble(&run.events, r, 8192, 4096);
    assert!(buf.iter().all(|b| b.is_some()));
    assert_eq!(buf[0], Some(1));
    assert_eq!(buf[1024], Some(0));
    assert_eq!(buf[4095], Some(3));
    assert_eq!(run.events.last(), Some(&Ev::Completed(r, Ok(()))));
}

#[test]
fn extended_headers_encode_payload_len_and_check_offsets() {
    let mut c = extended();
    let w = c.write(4096, 4096, F).unwrap();
    let sent = sent_requests(&mut c);
    assert_eq!(sent.len(), 32);
    assert_eq!(&sent[..4], &0x21e41c71u32.to_be_bytes());
    assert_eq!(&sent[4..6], &32u16.to_be_bytes(), "PAYLOAD_LEN");
    assert_eq!(&sent[24..32], &4096u64.to_be_bytes());
    c.payload_sent().unwrap();
    // 64-bit effect lengths.
    let z = c.write_zeroes(0, SIZE, CommandFlags::NO_HOLE).unwrap();
    let sent = sent_requests(&mut c);
    assert_eq!(&sent[4..8], &[0, 2, 0, 6]);
    let s = Script::new()
        .ext_chunk(DONE, NONE, w, 4096, &[])
        .ext_chunk(DONE, NONE, z, 0, &[]);
    let run = run_whole(&mut c, &s.0);
    assert_eq!(
        run.events,
        vec![Ev::Completed(w, Ok(())), Ev::Completed(z, Ok(()))]
    );
    // An extended reply must carry the request's offset.
    let r = c.read(0, 512, F).unwrap();
    let run = run_whole(&mut c, &Script::new().ext_chunk(DONE, NONE, r, 512, &[]).0);
    assert_eq!(
        last_failure(&run),
        Some(Error::ReplyOffsetMismatch { cookie: r.0 })
    );
}

#[test]
fn extended_read_and_block_status() {
    let mut c = extended();
    let r = c.read(0, 1024, F).unwrap();
    let b = c.block_status(0, 1 << 19, F).unwrap();
    let s = Script::new()
        .ext_chunk(0, OFFSET_DATA, r, 0, &data_payload(0, &[9; 1024]))
        .ext_chunk(
            0,
            BLOCK_STATUS_EXT,
            b,
            0,
            &status64(2, &[(1 << 18, 3), (1 << 40, 0)]),
        )
        .ext_chunk(DONE, NONE, r, 0, &[])
        .ext_chunk(DONE, BLOCK_STATUS_EXT, b, 0, &status64(1, &[(4096, 1)]));
    let run = normalize(run_whole(&mut c, &s.0).events);
    assert_eq!(
        run,
        vec![
            Ev::ReadData(r, 0, vec![9; 1024]),
            Ev::BlockStatus(
                b,
                2,
                0,
                vec![Extent::new(1 << 18, 3), Extent::new(1 << 40, 0)]
            ),
            Ev::Completed(r, Ok(())),
            Ev::BlockStatus(b, 1, 0, vec![Extent::new(4096, 1)]),
            Ev::Completed(b, Ok(())),
        ]
    );
}

#[test]
fn block_status_32_bit_and_its_checks() {
    let mut c = structured();
    let b = c.block_status(4096, 8192, F).unwrap();
    let s = Script::new().chunk(
        DONE,
        BLOCK_STATUS,
        b,
        &status32(1, &[(512, 3), (7000, 0), (1 << 20, 1)]),
    );
    let run = run_whole(&mut c, &s.0);
    assert_eq!(
        normalize(run.events),
        vec![
            Ev::BlockStatus(
                b,
                1,
                4096,
                vec![
                    Extent::new(512, 3),
                    Extent::new(7000, 0),
                    Extent::new(1 << 20, 1)
                ]
            ),
            Ev::Completed(b, Ok(()))
        ]
    );

    // Zero-length extent.
    let b = c.block_status(0, 4096, F).unwrap();
    let run = run_whole(
        &mut c,
        &Script::new()
            .chunk(DONE, BLOCK_STATUS, b, &status32(1, &[(0, 0)]))
            .0,
    );
    assert_eq!(last_failure(&run), Some(Error::EmptyExtent { cookie: b.0 }));

    // An extent starting past the request.
    let mut c = structured();
    let b = c.block_status(0, 4096, F).unwrap();
    let run = run_whole(
        &mut c,
        &Script::new()
            .chunk(DONE, BLOCK_STATUS, b, &status32(1, &[(4096, 0), (512, 0)]))
            .0,
    );
    assert_eq!(
        last_failure(&run),
        Some(Error::ExtentBeyondRequest { cookie: b.0 })
    );

    // REQ_ONE: one extent, no longer than asked.
    let mut c = structured();
    let b = c.block_status(0, 4096, CommandFlags::REQ_ONE).unwrap();
    let run = run_whole(
        &mut c,
        &Script::new()
            .chunk(DONE, BLOCK_STATUS, b, &status32(1, &[(8192, 0)]))
            .0,
    );
    assert_eq!(
        last_failure(&run),
        Some(Error::ExtentBeyondRequest { cookie: b.0 })
    );

    // A context never selected; a context twice; a context missing.
    let mut c = structured();
    let b = c.block_status(0, 4096, F).unwrap();
    let run = run_whole(
        &mut c,
        &Script::new()
            .chunk(DONE, BLOCK_STATUS, b, &status32(7, &[(4096, 0)]))
            .0,
    );
    assert_eq!(
        last_failure(&run),
        Some(Error::UnknownContext { cookie: b.0, id: 7 })
    );
    let mut c = structured();
    let b = c.block_status(0, 4096, F).unwrap();
    let s = Script::new()
        .chunk(0, BLOCK_STATUS, b, &status32(1, &[(4096, 0)]))
        .chunk(DONE, BLOCK_STATUS, b, &status32(1, &[(4096, 0)]));
    assert_eq!(
        last_failure(&run_whole(&mut c, &s.0)),
        Some(Error::DuplicateStatus { cookie: b.0, id: 1 })
    );
    let mut c = structured();
    let b = c.block_status(0, 4096, F).unwrap();
    let run = run_whole(&mut c, &Script::new().chunk(DONE, NONE, b, &[]).0);
    assert_eq!(
        run.events,
        vec![Ev::Completed(b, Err(RequestFailure::Incomplete))]
    );

    // Wrong width for the mode, bad length.
    let mut c = structured();
    let b = c.block_status(0, 4096, F).unwrap();
    let run = run_whole(
        &mut c,
        &Script::new()
            .chunk(DONE, BLOCK_STATUS_EXT, b, &status64(1, &[(4096, 0)]))
            .0,
    );
    assert!(matches!(
        last_failure(&run),
        Some(Error::UnexpectedChunk { .. })
    ));
    let mut c = structured();
    let b = c.block_status(0, 4096, F).unwrap();
    let run = run_whole(
        &mut c,
        &Script::new()
            .chunk(DONE, BLOCK_STATUS, b, &[0, 0, 0, 1, 0])
            .0,
    );
    assert!(matches!(
        last_failure(&run),
        Some(Error::MalformedChunk { .. })
    ));
    let mut c = extended();
    let b = c.block_status(0, 4096, F).unwrap();
    let mut p = status64(1, &[(4096, 0)]);
    p[7] = 2; // count says 2, one descriptor follows
    let run = run_whole(
        &mut c,
        &Script::new().ext_chunk(DONE, BLOCK_STATUS_EXT, b, 0, &p).0,
    );
    assert!(matches!(
        last_failure(&run),
        Some(Error::MalformedChunk { .. })
    ));
}

#[test]
fn chunk_offset_near_2_pow_64_is_refused() {
    for (offset, len) in [
        (u64::MAX, 1usize),
        (u64::MAX - 8, 16),
        (SIZE - 512, 1024),
        (0, 4097),
    ] {
        let mut c = structured();
        let r = c.read(0, 4096, F).unwrap();
        let run = run_whole(
            &mut c,
            &Script::new()
                .chunk(DONE, OFFSET_DATA, r, &data_payload(offset, &vec![0; len]))
                .0,
        );
        assert!(
            matches!(last_failure(&run), Some(Error::ChunkOutOfRange { .. })),
            "{offset} {len}: {:?}",
            run.events
        );
        assert!(
            !run.events.iter().any(|e| matches!(e, Ev::ReadData(..))),
            "nothing delivered"
        );
    }
    // Holes too.
    let mut c = structured();
    let r = c.read(0, 4096, F).unwrap();
    let run = run_whole(
        &mut c,
        &Script::new()
            .chunk(DONE, OFFSET_HOLE, r, &hole_payload(u64::MAX, u32::MAX))
            .0,
    );
    assert!(matches!(
        last_failure(&run),
        Some(Error::ChunkOutOfRange { .. })
    ));
    // Found by fuzzing: ERROR_OFFSET is not valid for a flush. The reply is
    // an error (EIO here), and no offset is reported for it.
    let mut c = structured();
    let f = c.flush().unwrap();
    let run = run_whole(
        &mut c,
        &Script::new()
            .chunk(DONE, ERROR_OFFSET, f, &error_payload(5, "x", Some(1 << 40)))
            .0,
    );
    assert!(last_failure(&run).is_none(), "{:?}", run.events);
    assert!(
        run.events
            .iter()
            .any(|e| matches!(e, Ev::ReplyError(c, Errno::EIO, None, _) if *c == f))
    );
    assert!(run.events.iter().any(
        |e| matches!(e, Ev::Completed(c, Err(RequestFailure::Server(Errno::EIO))) if *c == f)
    ));
}

#[test]
fn overlapping_chunks_are_refused() {
    let mut c = structured();
    let r = c.read(0, 4096, F).unwrap();
    let s = Script::new()
        .chunk(0, OFFSET_DATA, r, &data_payload(0, &[1; 2048]))
        .chunk(0, OFFSET_HOLE, r, &hole_payload(2047, 10));
    let run = run_whole(&mut c, &s.0);
    assert_eq!(
        last_failure(&run),
        Some(Error::ChunkOverlap {
            cookie: r.0,
            offset: 2047,
            length: 10
        })
    );
}

#[test]
fn done_twice_and_unknown_cookies_are_fatal() {
    let mut c = structured();
    let r = c.read(0, 512, F).unwrap();
    let s = Script::new()
        .chunk(DONE, OFFSET_DATA, r, &data_payload(0, &[0; 512]))
        .chunk(DONE, NONE, r, &[]);
    let run = run_whole(&mut c, &s.0);
    assert_eq!(run.events[1], Ev::Completed(r, Ok(())));
    assert_eq!(
        last_failure(&run),
        Some(Error::UnknownCookie { cookie: r.0 })
    );

    for mode in [HeaderMode::Simple, HeaderMode::Structured] {
        let mut c = ready_client(mode, &[], SIZE, ALL_FLAGS);
        let never = Cookie(0xdead_beef);
        let run = run_whole(&mut c, &Script::new().simple(never, 0, b"").0);
        assert_eq!(
            last_failure(&run),
            Some(Error::UnknownCookie { cookie: never.0 })
        );
    }
    // Cookie whose slot bits are valid but whose generation is not.
    let mut c = structured();
    let r = c.flush().unwrap();
    let stale = Cookie(r.0 + (1 << 16));
    let run = run_whole(&mut c, &Script::new().chunk(DONE, NONE, stale, &[]).0);
    assert_eq!(
        last_failure(&run),
        Some(Error::UnknownCookie { cookie: stale.0 })
    );
}

#[test]
fn empty_hole_is_refused() {
    let mut c = structured();
    let r = c.read(0, 512, F).unwrap();
    let run = run_whole(
        &mut c,
        &Script::new()
            .chunk(DONE, OFFSET_HOLE, r, &hole_payload(0, 0))
            .0,
    );
    assert_eq!(last_failure(&run), Some(Error::EmptyHole { cookie: r.0 }));
}

#[test]
fn structured_chunk_while_only_simple_negotiated() {
    let mut c = ready_client(HeaderMode::Simple, &[], SIZE, ALL_FLAGS);
    let r = c.read(0, 512, F).unwrap();
    let run = run_whole(
        &mut c,
        &Script::new()
            .chunk(DONE, OFFSET_DATA, r, &data_payload(0, &[0; 512]))
            .0,
    );
    assert_eq!(
        last_failure(&run),
        Some(Error::BadReplyMagic { found: 0x668e33ef })
    );
    // And a simple reply after extended headers; a simple reply to a read
    // with structured replies.
    let mut c = extended();
    let f = c.flush().unwrap();
    let run = run_whole(&mut c, &Script::new().simple(f, 0, b"").0);
    assert_eq!(
        last_failure(&run),
        Some(Error::BadReplyMagic { found: 0x67446698 })
    );
    let mut c = structured();
    let r = c.read(0, 512, F).unwrap();
    let run = run_whole(&mut c, &Script::new().simple(r, 0, &[0; 512]).0);
    assert_eq!(
        last_failure(&run),
        Some(Error::SimpleReplyToRead { cookie: r.0 })
    );
    // Simple replies to other commands are fine with structured replies.
    let mut c = structured();
    let f = c.flush().unwrap();
    let run = run_whole(&mut c, &Script::new().simple(f, 0, b"").0);
    assert_eq!(run.events, vec![Ev::Completed(f, Ok(()))]);
}

#[test]
fn short_read_is_never_success() {
    let mut c = structured();
    let r = c.read(0, 4096, F).unwrap();
    let s = Script::new()
        .chunk(0, OFFSET_DATA, r, &data_payload(0, &[1; 1024]))
        .chunk(DONE, NONE, r, &[]);
    let run = run_whole(&mut c, &s.0);
    assert_eq!(
        run.events.last(),
        Some(&Ev::Completed(r, Err(RequestFailure::Incomplete)))
    );
    // Nothing at all.
    let r = c.read(0, 4096, F).unwrap();
    let run = run_whole(&mut c, &Script::new().chunk(DONE, NONE, r, &[]).0);
    assert_eq!(
        run.events,
        vec![Ev::Completed(r, Err(RequestFailure::Incomplete))]
    );
}

#[test]
fn error_chunks() {
    let mut c = structured();
    let r = c.read(0, 4096, F).unwrap();
    let s = Script::new()
        .chunk(0, OFFSET_DATA, r, &data_payload(0, &[1; 1024]))
        .chunk(
            0,
            ERROR_OFFSET,
            r,
            &error_payload(5, "bad sector", Some(1024)),
        )
        .chunk(0, OFFSET_DATA, r, &data_payload(2048, &[1; 2048]))
        .chunk(DONE, ERROR, r, &error_payload(28, "", None));
    let run = run_whole(&mut c, &s.0);
    assert!(run.events.contains(&Ev::ReplyError(
        r,
        Errno::EIO,
        Some(1024),
        "bad sector".into()
    )));
    assert!(
        run.events
            .contains(&Ev::ReplyError(r, Errno::ENOSPC, None, "".into()))
    );
    assert_eq!(
        run.events.last(),
        Some(&Ev::Completed(r, Err(RequestFailure::Server(Errno::EIO))))
    );

    // Unknown errno and a zero errno are EINVAL; unknown error chunk types
    // fail the request but keep the connection.
    let f = c.flush().unwrap();
    let t = c.trim(0, 4096, F).unwrap();
    let s = Script::new()
        .chunk(DONE, ERROR, f, &error_payload(0, "zero", None))
        .chunk(DONE, 0x8123, t, &error_payload(999, "odd", None));
    let run = run_whole(&mut c, &s.0);
    assert_eq!(
        run.events,
        vec![
            Ev::ReplyError(f, Errno::EINVAL, None, "zero".into()),
            Ev::Completed(f, Err(RequestFailure::Server(Errno::EINVAL))),
            Ev::ReplyError(t, Errno::EINVAL, None, "odd".into()),
            Ev::Completed(t, Err(RequestFailure::Server(Errno::EINVAL))),
        ]
    );
    assert!(c.is_ready());

    // A message longer than the chunk.
    let f = c.flush().unwrap();
    let mut p = error_payload(5, "abc", None);
    p[5] = 200;
    let run = run_whole(&mut c, &Script::new().chunk(DONE, ERROR, f, &p).0);
    assert_eq!(
        last_failure(&run),
        Some(Error::ErrorMessageTooLong {
            cookie: f.0,
            message_length: 200
        })
    );
    // An error offset outside the request.
    let mut c = structured();
    let r = c.read(0, 4096, F).unwrap();
    let run = run_whole(
        &mut c,
        &Script::new()
            .chunk(DONE, ERROR_OFFSET, r, &error_payload(5, "", Some(4096)))
            .0,
    );
    assert!(matches!(
        last_failure(&run),
        Some(Error::ChunkOutOfRange { .. })
    ));
}

#[test]
fn unknown_or_misplaced_chunk_types_are_fatal() {
    for (ty, payload) in [
        (77u16, vec![]),
        (OFFSET_DATA, data_payload(0, &[0; 4])), // data for a flush
        (BLOCK_STATUS, status32(1, &[(1, 0)])),  // status for a flush
    ] {
        let mut c = structured();
        let f = c.flush().unwrap();
        let run = run_whole(&mut c, &Script::new().chunk(DONE, ty, f, &payload).0);
        assert_eq!(
            last_failure(&run),
            Some(Error::UnexpectedChunk {
                cookie: f.0,
                chunk: ChunkType(ty),
                command: CommandType::FLUSH
            })
        );
    }
    // NONE without DONE, short data chunk.
    let mut c = structured();
    let f = c.flush().unwrap();
    let run = run_whole(&mut c, &Script::new().chunk(0, NONE, f, &[]).0);
    assert!(matches!(
        last_failure(&run),
        Some(Error::MalformedChunk { .. })
    ));
    let mut c = structured();
    let r = c.read(0, 512, F).unwrap();
    let run = run_whole(
        &mut c,
        &Script::new().chunk(DONE, OFFSET_DATA, r, &[0; 8]).0,
    );
    assert!(matches!(
        last_failure(&run),
        Some(Error::MalformedChunk { .. })
    ));
}

#[test]
fn chunks_longer_than_the_payload_limit_are_refused_unread() {
    let mut c = extended();
    let r = c.read(0, 4096, F).unwrap();
    let mut s = Script::new()
        .raw(&0x6e8a278cu32.to_be_bytes())
        .raw(&[0, 0, 0, 1])
        .raw(&r.0.to_be_bytes())
        .raw(&0u64.to_be_bytes())
        .raw(&(1u64 << 40).to_be_bytes());
    s = s.raw(&[0; 64]);
    let run = run_whole(&mut c, &s.0);
    assert_eq!(
        last_failure(&run),
        Some(Error::ChunkTooLong {
            cookie: r.0,
            length: 1 << 40
        })
    );
}

#[test]
fn eshutdown_is_reported_once() {
    let mut c = structured();
    let a = c.flush().unwrap();
    let b = c.flush().unwrap();
    let s = Script::new()
        .chunk(DONE, ERROR, a, &error_payload(108, "", None))
        .simple(b, 108, b"");
    let run = run_whole(&mut c, &s.0);
    let shut = Err(RequestFailure::Server(Errno::ESHUTDOWN));
    assert_eq!(
        run.events,
        vec![
            Ev::ReplyError(a, Errno::ESHUTDOWN, None, "".into()),
            Ev::Completed(a, shut),
            Ev::ServerShutdown,
            Ev::Completed(b, shut),
        ]
    );
    c.disconnect().unwrap();
    assert_eq!(c.handle_eof(), Ok(()));
}

#[test]
fn scattered_reads_are_reassembled() {
    // The spec: content chunks MAY come in any order and the client MUST
    // reassemble them. Every other 256-byte block, then the gaps, as holes
    // and data: more disjoint pieces than the range table tracks.
    let mut c = structured();
    let r = c.read(0, 4096, F).unwrap();
    let mut s = Script::new();
    for i in (0..16).step_by(2) {
        s = s.chunk(
            0,
            OFFSET_DATA,
            r,
            &data_payload(i * 256, &[i as u8 + 1; 256]),
        );
    }
    for i in (1..16).step_by(2) {
        s = s.chunk(0, OFFSET_HOLE, r, &hole_payload(i * 256, 256));
    }
    s = s.chunk(DONE, NONE, r, &[]);
    let run = run_whole(&mut c, &s.0);
    assert_eq!(run.events.last(), Some(&Ev::Completed(r, Ok(()))));
    let got = assemble(&run.events, r, 0, 4096);
    for (i, b) in got.iter().enumerate() {
        let block = i as u64 / 256;
        let want = if block % 2 == 0 { block as u8 + 1 } else { 0 };
        assert_eq!(*b, Some(want), "byte {i}");
    }
    assert!(c.is_ready());
}

#[test]
fn scattered_reads_with_an_untracked_overlap_are_refused() {
    // Past the range table the client still counts bytes: one byte more
    // than the request is an overlap, whichever pieces it hits.
    let mut c = structured();
    let r = c.read(0, 4096, F).unwrap();
    let mut s = Script::new();
    for i in (0..16).step_by(2) {
        s = s.chunk(0, OFFSET_DATA, r, &data_payload(i * 256, &[1; 256]));
    }
    for i in (1..16).step_by(2) {
        s = s.chunk(0, OFFSET_DATA, r, &data_payload(i * 256, &[2; 256]));
    }
    // Block 14 again: not in the (full) table, but over the byte count.
    s = s.chunk(0, OFFSET_DATA, r, &data_payload(14 * 256, &[3; 256]));
    let run = run_whole(&mut c, &s.0);
    assert_eq!(
        last_failure(&run),
        Some(Error::ChunkOverlap {
            cookie: r.0,
            offset: 14 * 256,
            length: 256
        })
    );
}

#[test]
fn df_allows_one_content_chunk() {
    let mut c = structured();
    let r = c.read(0, 1024, CommandFlags::DF).unwrap();
    let s = Script::new()
        .chunk(0, OFFSET_DATA, r, &data_payload(0, &[0; 512]))
        .chunk(DONE, OFFSET_DATA, r, &data_payload(512, &[0; 512]));
    assert_eq!(
        last_failure(&run_whole(&mut c, &s.0)),
        Some(Error::FragmentedDf { cookie: r.0 })
    );
}

#[test]
fn request_validation() {
    let mut c = ready_client(HeaderMode::Simple, &[], SIZE, 1 | 2); // read only, no flush
    assert_eq!(c.write(0, 512, F), Err(RequestError::NotSupported));
    assert_eq!(c.trim(0, 512, F), Err(RequestError::NotSupported));
    assert_eq!(c.flush(), Err(RequestError::NotSupported));
    assert_eq!(c.block_status(0, 512, F), Err(RequestError::NotSupported));
    assert_eq!(c.read(SIZE - 512, 1024, F), Err(RequestError::OutOfRange));
    assert_eq!(c.read(u64::MAX, 1, F), Err(RequestError::OutOfRange));
    assert_eq!(c.read(100, 512, F), Err(RequestError::Misaligned));
    assert_eq!(c.read(0, 0, F), Err(RequestError::ZeroLength));
    assert_eq!(
        c.read(0, 512, CommandFlags::DF),
        Err(RequestError::InvalidFlags)
    );
    assert_eq!(
        c.read(0, 512, CommandFlags::FUA),
        Err(RequestError::InvalidFlags)
    );
    assert_eq!(
        c.read(0, 512, CommandFlags::PAYLOAD_LEN),
        Err(RequestError::InvalidFlags)
    );
    let mut big = ready_client(HeaderMode::Simple, &[], 1 << 40, ALL_FLAGS);
    assert_eq!(big.read(0, 1 << 26, F), Err(RequestError::TooLong));
    assert_eq!(
        big.trim(0, 1 << 33, F),
        Err(RequestError::TooLong),
        "compact: 32 bits"
    );
    assert!(
        c.pending_transmit() == 0,
        "nothing queued by refused requests"
    );
}

#[test]
fn many_requests_in_flight() {
    let mut c = structured();
    let cookies: Vec<Cookie> = (0..64).map(|i| c.read(i * 512, 512, F).unwrap()).collect();
    assert_eq!(c.read(0, 512, F), Err(RequestError::TooManyInFlight));
    let sent = sent_requests(&mut c);
    assert_eq!(sent.len(), 64 * 28);
    // Reply in reverse order.
    let mut s = Script::new();
    for (i, r) in cookies.iter().enumerate().rev() {
        s = s.chunk(
            DONE,
            OFFSET_DATA,
            *r,
            &data_payload(i as u64 * 512, &[i as u8; 512]),
        );
    }
    let run = run_whole(&mut c, &s.0);
    let done = run
        .events
        .iter()
        .filter(|e| matches!(e, Ev::Completed(_, Ok(()))))
        .count();
    assert_eq!(done, 64);
    assert_eq!(c.in_flight(), 0);
    assert!(c.read(0, 512, F).is_ok());
}

#[test]
fn disconnect_and_eof() {
    let mut c = structured();
    let f = c.flush().unwrap();
    c.disconnect().unwrap();
    assert_eq!(c.flush(), Err(RequestError::NotReady));
    let sent = sent_requests(&mut c);
    assert_eq!(&sent[28 + 6..28 + 8], &[0, 2], "NBD_CMD_DISC");
    assert_eq!(sent.len(), 56);
    // Still in flight: EOF now loses it.
    let mut c2 = structured();
    c2.flush().unwrap();
    c2.disconnect().unwrap();
    assert_eq!(c2.handle_eof(), Err(Error::UnexpectedEof));
    // Replies still arrive after DISC.
    let run = run_whole(&mut c, &Script::new().chunk(DONE, NONE, f, &[]).0);
    assert_eq!(run.events, vec![Ev::Completed(f, Ok(()))]);
    assert_eq!(c.handle_eof(), Ok(()));
    // EOF without DISC is unexpected.
    let mut c3 = structured();
    assert_eq!(c3.handle_eof(), Err(Error::UnexpectedEof));
}

#[test]
fn events_borrow_only_the_input() {
    let mut c = structured();
    let r = c.read(0, 512, F).unwrap();
    sent_requests(&mut c);
    let reply = Script::new()
        .chunk(0, OFFSET_DATA, r, &data_payload(0, &[9; 512]))
        .chunk(DONE, NONE, r, &[]);
    let input = &reply.0[..];
    let p = c.handle_input(input);
    let Some(blockwire_core::client::Event::ReadData { data, .. }) = p.event else {
        panic!("{:?}", p.event);
    };
    // The data is the caller's bytes, not a copy ...
    assert!(input.as_ptr_range().contains(&data.as_ptr()));
    assert_eq!(data, &[9; 512][..]);
    // ... and the event does not hold the client: it may be used while the
    // next request is queued.
    let f = c.flush().unwrap();
    assert_eq!(data.len(), 512);
    let run = run_whole(&mut c, &input[p.consumed..]);
    assert_eq!(run.events, vec![Ev::Completed(r, Ok(()))]);
    assert_ne!(f, r);
}

#[test]
fn a_unit_is_taken_only_whole() {
    let mut c = extended();
    let r = c.read(0, 4096, F).unwrap();
    sent_requests(&mut c);
    let reply = Script::new()
        .ext_chunk(DONE, ERROR, r, 0, &error_payload(5, "boom", None))
        .0;
    // Header and error payload are one unit: nothing is taken before the
    // last byte is there, and all of it then.
    for cut in 0..reply.len() {
        let p = c.handle_input(&reply[..cut]);
        assert_eq!((p.consumed, p.event.is_none()), (0, true), "cut {cut}");
    }
    let p = c.handle_input(&reply);
    assert_eq!(p.consumed, reply.len());
    assert_eq!(
        p.event.map(Ev::from),
        Some(Ev::ReplyError(r, Errno::EIO, None, "boom".into()))
    );
}

#[test]
fn eof_inside_a_reply_after_disconnect_is_unexpected() {
    let mut c = structured();
    let f = c.flush().unwrap();
    c.disconnect().unwrap();
    sent_requests(&mut c);
    let mut s = Script::new().chunk(DONE, NONE, f, &[]).0;
    // The start of a reply nobody asked for, cut off by the close.
    s.extend_from_slice(&[0x66, 0x8e]);
    let run = run_whole(&mut c, &s);
    assert_eq!(run.events, vec![Ev::Completed(f, Ok(()))]);
    assert_eq!(c.handle_eof(), Err(Error::UnexpectedEof));
}

/// What a connection costs: the configuration, the output queue and the
/// table of requests in flight, nothing else (the receive buffer is the
/// frontend's, at least `INPUT_BUFFER`).
#[test]
fn a_connection_costs_its_config_its_output_and_its_table() {
    use blockwire_core::client::{Config, INPUT_BUFFER, QUERY_BYTES, TRANSMIT_BUFFER};
    let config = std::mem::size_of::<Config>();
    assert!(
        config <= 4096 + QUERY_BYTES + 128,
        "Config is {config} bytes"
    );
    let fixed = config + TRANSMIT_BUFFER + 512;
    let per_request = 128;
    for (n, size) in [
        (1, std::mem::size_of::<Client<1>>()),
        (4, std::mem::size_of::<Client<4>>()),
        (64, std::mem::size_of::<Client<64>>()),
    ] {
        assert!(
            size <= fixed + n * per_request,
            "Client<{n}> is {size} bytes, more than {fixed} + {n} * {per_request}"
        );
    }
    // The numbers the module docs state.
    assert!(std::mem::size_of::<Client<64>>() <= 20_400);
    const { assert!(INPUT_BUFFER == 8_216) };
}
