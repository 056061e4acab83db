//! Reply encoding: what the core's `ReplyEncoder` emits for each request
//! and header mode.

mod common;

use blockwire_core::block::Extent;
use blockwire_core::server::{Command, ContextSet, ReplyEncoder, Request};
use blockwire_core::wire::*;
use common::*;

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
    assert!(f.contains(all_flags()));
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
