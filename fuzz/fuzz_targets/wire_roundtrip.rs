//! Decode → encode → decode is canonical for every fixed header, flag
//! field, option and chunk payload value type, and the reply encoder's
//! output.
//!
//! Input: a selector byte, then header bytes.
#![no_main]

use blockwire_core::server::{ReplyEncoder, ReplyTo};
use blockwire_core::wire::chunk::{
    ErrorPayload, Hole, StatusFilter, StatusHead, descriptor_size, emit_descriptor,
    parse_descriptor,
};
use blockwire_core::wire::headers::*;
use blockwire_core::wire::option::{
    Info, InfoRequest, MetaContextEntry, MetaContextRequest, ServerEntry,
};
use blockwire_core::wire::*;
use blockwire_fuzz::be;
use libfuzzer_sys::fuzz_target;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

fn roundtrip<T>(bytes: &[u8])
where
    T: FromBytes + IntoBytes + KnownLayout + Immutable + PartialEq + core::fmt::Debug,
{
    let size = core::mem::size_of::<T>();
    match decode::<T>(bytes) {
        Ok(t) => {
            assert!(bytes.len() >= size);
            let enc = t.as_bytes();
            assert_eq!(enc, &bytes[..size], "encode is not the input");
            let again: T = decode(enc).expect("re-decode");
            assert_eq!(again, t);
            assert_eq!(again.as_bytes(), enc);
        }
        Err(WireError::Short { needed }) => {
            assert!(bytes.len() < size);
            assert_eq!(needed, size);
        }
        Err(e) => panic!("unexpected {e:?}"),
    }
}

fn flags(bytes: &[u8]) {
    if bytes.len() < 4 {
        return;
    }
    let v16 = be::u16(bytes, 0);
    let v32 = be::u32(bytes, 0);
    let t = TransmissionFlags::from_bits_retain(v16);
    assert_eq!(t.bits(), v16);
    let tt = TransmissionFlags::from_bits_truncate(v16);
    assert_eq!(TransmissionFlags::from_bits(tt.bits()), Some(tt));
    let c = CommandFlags::from_bits_retain(v16);
    assert_eq!(c.bits(), v16);
    let ct = CommandFlags::from_bits_truncate(v16);
    assert_eq!(CommandFlags::from_bits(ct.bits()), Some(ct));
    let cl = ClientFlags::from_bits_truncate(v32);
    assert_eq!(ClientFlags::from_bits(cl.bits()), Some(cl));
    let h = HandshakeFlags::from_bits_truncate(v16);
    assert_eq!(HandshakeFlags::from_bits(h.bits()), Some(h));
    let r = ReplyFlags::from_bits_truncate(v16);
    assert_eq!(ReplyFlags::from_bits(r.bits()), Some(r));
}

/// Encode replies from fuzzed request fields and decode them back with the
/// wire headers: every field must survive.
fn replies(bytes: &[u8]) {
    if bytes.len() < 32 {
        return;
    }
    let mode = match bytes[0] % 3 {
        0 => HeaderMode::Simple,
        1 => HeaderMode::Structured,
        _ => HeaderMode::Extended,
    };
    // Any command, known or not: rejections are encoded for those too.
    let req = ReplyTo {
        cookie: be::u64(bytes, 2),
        offset: be::u64(bytes, 12),
        kind: CommandType(u16::from(bytes[1] % 9)),
    };
    // A structured (32-bit) data chunk's length field holds the 8-byte
    // offset too, so `ReplyEncoder::data` takes at most u32::MAX - 8 there
    // (its documented bound; the server's reads stop at the maximum
    // payload, far below). Extended chunks take any u32.
    let len = match mode {
        HeaderMode::Structured => be::u32(bytes, 28).min(u32::MAX - 8),
        _ => be::u32(bytes, 28),
    };
    let enc = ReplyEncoder::new(mode);
    let check_chunk = |h: &[u8], ty: ChunkType, done: bool, payload: u64| match mode {
        HeaderMode::Simple => unreachable!(),
        HeaderMode::Structured => {
            let r: StructuredReply = decode(h).unwrap();
            assert_eq!(r.magic.get(), STRUCTURED_REPLY_MAGIC);
            assert_eq!(r.cookie.get(), req.cookie);
            assert_eq!(r.chunk_type.get(), ty.0);
            assert_eq!(r.flags.get() & 1 != 0, done);
            assert_eq!(u64::from(r.length.get()), payload);
        }
        HeaderMode::Extended => {
            let r: ExtendedReply = decode(h).unwrap();
            assert_eq!(r.magic.get(), EXTENDED_REPLY_MAGIC);
            assert_eq!(r.cookie.get(), req.cookie);
            assert_eq!(r.offset.get(), req.offset);
            assert_eq!(r.chunk_type.get(), ty.0);
            assert_eq!(r.flags.get() & 1 != 0, done);
            assert_eq!(r.length.get(), payload);
        }
    };
    let done = bytes[1] & 0x80 != 0;
    let head = if mode == HeaderMode::Extended { 32 } else { 20 };
    if mode == HeaderMode::Simple {
        for h in [enc.data(req, req.offset, len, done), enc.ok(req)] {
            let r: SimpleReply = decode(h.as_bytes()).unwrap();
            assert_eq!(h.as_bytes().len(), 16);
            assert_eq!(r.magic.get(), SIMPLE_REPLY_MAGIC);
            assert_eq!(r.error.get(), 0);
            assert_eq!(r.cookie.get(), req.cookie);
        }
        assert!(enc.hole(req, req.offset, len, done).is_none());
        let e = enc.error(req, Errno(u32::from(bytes[1])), "m");
        let r: SimpleReply = decode(e.as_bytes()).unwrap();
        assert_ne!(r.error.get(), 0);
        assert_eq!(r.error.get(), e.errno().0);
        return;
    }
    let off = be::u64(bytes, 12) ^ u64::from(len);
    let h = enc.data(req, off, len, done);
    check_chunk(
        h.as_bytes(),
        ChunkType::OFFSET_DATA,
        done,
        8 + u64::from(len),
    );
    let d: OffsetData = decode(&h.as_bytes()[head..]).unwrap();
    assert_eq!(d.offset.get(), off);
    match enc.hole(req, off, len, done) {
        None => assert_eq!(len, 0),
        Some(h) => {
            check_chunk(h.as_bytes(), ChunkType::OFFSET_HOLE, done, 12);
            let o: OffsetHole = decode(&h.as_bytes()[head..]).unwrap();
            assert_eq!((o.offset.get(), o.length.get()), (off, len));
        }
    }
    // The message: any bytes of the rest, cut to valid UTF-8.
    let msg_bytes = &bytes[32..];
    let msg = match core::str::from_utf8(msg_bytes) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&msg_bytes[..e.valid_up_to()]).unwrap(),
    };
    let errno = Errno(be::u32(bytes, 28) >> 24);
    for with_off in [false, true] {
        let e = if with_off {
            enc.error_at(req, errno, off, msg)
        } else {
            enc.error(req, errno, msg)
        };
        let b = e.as_bytes();
        let ty = if with_off {
            ChunkType::ERROR_OFFSET
        } else {
            ChunkType::ERROR
        };
        let payload = (b.len() - head) as u64;
        check_chunk(b, ty, true, payload);
        let ec: ErrorChunk = decode(&b[head..]).unwrap();
        assert_ne!(ec.error.get(), 0);
        assert_eq!(ec.error.get(), e.errno().0);
        let mlen = usize::from(ec.message_length.get());
        let tail = if with_off { 8 } else { 0 };
        assert_eq!(head + 6 + mlen + tail, b.len());
        let m = core::str::from_utf8(&b[head + 6..head + 6 + mlen]).expect("message not UTF-8");
        assert!(msg.starts_with(m));
        if with_off {
            assert_eq!(be::u64(b, b.len() - 8), off);
        }
    }
}

/// Every payload value type: parsing never panics, and what parses emits
/// back to bytes that parse to the same value.
fn payloads(bytes: &[u8]) {
    let Some((&kind, p)) = bytes.split_first() else {
        return;
    };
    let reparse = |out: &[u8], skip: usize| out[skip..].to_vec();
    match kind % 8 {
        0 => {
            if let Ok(r) = InfoRequest::parse(p) {
                let types: Vec<InfoType> = r.requests.iter().take(8).collect();
                if types.len() == r.requests.len() {
                    let mut out = Vec::new();
                    InfoRequest::emit(&mut out, OptionType::GO, r.name, &types).unwrap();
                    assert_eq!(InfoRequest::parse(&reparse(&out, 16)).unwrap(), r);
                }
            }
        }
        1 => {
            if let Ok(r) = MetaContextRequest::parse(p) {
                let qs: Vec<&str> = r.queries.iter().collect();
                assert_eq!(qs.len() as u32, r.queries.len());
                let mut out = Vec::new();
                MetaContextRequest::emit(&mut out, OptionType::SET_META_CONTEXT, r.export, &qs)
                    .unwrap();
                let back = reparse(&out, 16);
                let again = MetaContextRequest::parse(&back).unwrap();
                assert_eq!(again.export, r.export);
                assert!(again.queries.iter().eq(r.queries.iter()));
            }
        }
        2 => {
            if let Ok(e) = ServerEntry::parse(p) {
                let mut out = Vec::new();
                e.emit(&mut out).unwrap();
                assert_eq!(ServerEntry::parse(&reparse(&out, 20)).unwrap(), e);
            }
        }
        3 => {
            if let Ok(e) = MetaContextEntry::parse(p) {
                let mut out = Vec::new();
                e.emit(&mut out, OptionType::LIST_META_CONTEXT).unwrap();
                assert_eq!(MetaContextEntry::parse(&reparse(&out, 20)).unwrap(), e);
            }
        }
        4 => {
            if let Ok(i) = Info::parse(p) {
                let mut out = Vec::new();
                i.emit(&mut out, OptionType::INFO).unwrap();
                assert_eq!(Info::parse(&reparse(&out, 20)).unwrap(), i);
            }
        }
        5 => {
            if let Ok(h) = Hole::parse(p) {
                let mut out = Vec::new();
                h.emit(&mut out).unwrap();
                assert_eq!(out, p);
            }
        }
        6 => {
            for ty in [ChunkType::ERROR, ChunkType::ERROR_OFFSET, ChunkType(0x8003)] {
                if let Ok(e) = ErrorPayload::parse(p, ty) {
                    let mut out = Vec::new();
                    e.emit(&mut out).unwrap();
                    assert_eq!(out.len(), e.len());
                    let back = ErrorPayload::parse(&out, e.chunk_type()).unwrap();
                    assert_eq!(back, e);
                }
            }
        }
        _ => {
            if let Ok(f) = StatusFilter::parse(p) {
                let ids: Vec<u32> = f.ids().collect();
                let mut out = Vec::new();
                StatusFilter::emit(&mut out, f.effect_length, &ids).unwrap();
                assert_eq!(out, p);
            }
            for wide in [false, true] {
                if let Ok(h) = StatusHead::parse(p, wide) {
                    let mut out = Vec::new();
                    h.emit(&mut out).unwrap();
                    assert_eq!(out, p[..StatusHead::size(wide)]);
                }
                if let Ok(e) = parse_descriptor(p, wide) {
                    let mut out = Vec::new();
                    emit_descriptor(&mut out, e, wide).unwrap();
                    assert_eq!(out, p[..descriptor_size(wide)]);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    match sel % 24 {
        0 => roundtrip::<Greeting>(bytes),
        1 => roundtrip::<OptionRequest>(bytes),
        2 => roundtrip::<OptionReply>(bytes),
        3 => roundtrip::<ExportNameReply>(bytes),
        4 => roundtrip::<InfoExport>(bytes),
        5 => roundtrip::<InfoBlockSize>(bytes),
        6 => roundtrip::<InfoString>(bytes),
        7 => roundtrip::<MetaContextReply>(bytes),
        8 => roundtrip::<CompactRequest>(bytes),
        9 => roundtrip::<ExtendedRequest>(bytes),
        10 => roundtrip::<SimpleReply>(bytes),
        11 => roundtrip::<StructuredReply>(bytes),
        12 => roundtrip::<ExtendedReply>(bytes),
        13 => roundtrip::<OffsetData>(bytes),
        14 => roundtrip::<OffsetHole>(bytes),
        15 => roundtrip::<ErrorChunk>(bytes),
        16 => roundtrip::<BlockStatusHeader>(bytes),
        17 => roundtrip::<BlockStatusExtHeader>(bytes),
        18 => roundtrip::<Extent32>(bytes),
        19 => roundtrip::<Extent64>(bytes),
        20 => roundtrip::<BlockStatusPayload>(bytes),
        21 => flags(bytes),
        22 => payloads(bytes),
        _ => replies(bytes),
    }
});
