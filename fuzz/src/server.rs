//! A frontend for the server machine that runs the documented loop over a
//! receive buffer, answers requests with the `ReplyEncoder`, and checks
//! every event against the protocol's invariants.

use blockwire_core::block::Extent;
use blockwire_core::server::{
    CloseReason, Command, ContextSet, Event, Exports, MAX_REPLY_HEADER, Request, Server,
    ServerConfig, Session, StatusError, TRANSMIT_BUFFER,
};
use blockwire_core::wire::codec::SliceSink;
use blockwire_core::time::Instant;
use blockwire_core::wire::*;

use crate::be;

/// What to do on `StartTls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsHandling {
    /// As documented: send the ACK, drop buffered plaintext, run TLS, call
    /// `tls_established`.
    Proper,
    /// Call `tls_established` but keep the buffered bytes (as if they had
    /// come through TLS).
    KeepBuffer,
    /// Never call `tls_established`: later bytes are plaintext injection.
    Never,
}

pub struct ServerDriver<E: Exports> {
    pub server: Server<E>,
    /// Handshake bytes the server sent.
    pub out: Vec<u8>,
    /// Reply bytes the frontend produced (counted, then dropped).
    pub reply_bytes: usize,
    /// Received, not yet consumed.
    pub buf: Vec<u8>,
    pub session: Option<Session>,
    pub closed: bool,
    pub tls: TlsHandling,
    /// Take write payloads straight from the buffer (`skip_payload`).
    pub skip_payloads: bool,
    pub shutting_down: bool,
    /// A write whose payload is still coming: request, next offset, end.
    write: Option<(Request, u64, u64)>,
    pub requests: usize,
    pub events: usize,
    export_name: bool,
    /// RAM disk mode: requests are carried out on this disk and every
    /// byte the server side sends (handshake and replies) goes to `wire`.
    pub disk: Option<Vec<u8>>,
    pub wire: Vec<u8>,
    /// RAM disk replies: send zero blocks as holes, chunks in reverse.
    pub holes: bool,
    pub reverse: bool,
}

impl<E: Exports> ServerDriver<E> {
    pub fn new(exports: E, config: ServerConfig) -> Self {
        let mut d = Self {
            server: Server::new(exports, config, Instant(0)),
            out: Vec::new(),
            reply_bytes: 0,
            buf: Vec::new(),
            session: None,
            closed: false,
            tls: TlsHandling::Proper,
            skip_payloads: false,
            shutting_down: false,
            write: None,
            requests: 0,
            events: 0,
            export_name: false,
            disk: None,
            wire: Vec::new(),
            holes: false,
            reverse: false,
        };
        d.drain();
        d
    }

    pub fn drain(&mut self) {
        loop {
            let out = self.server.poll_transmit();
            if out.is_empty() {
                break;
            }
            assert!(out.len() <= TRANSMIT_BUFFER);
            if self.session.is_some() {
                // Only the handshake's last bytes may come after Ready.
                assert!(
                    self.out.len() + out.len() <= 1 << 20,
                    "unbounded output after Ready"
                );
            }
            self.out.extend_from_slice(out);
            self.wire.extend_from_slice(out);
            let n = out.len();
            self.server.transmitted(n);
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.pump();
    }

    pub fn shutdown(&mut self) {
        self.server.shutdown();
        self.shutting_down = true;
    }

    /// Handshake output must be well-formed (call once input is done).
    pub fn check_output(&self) {
        crate::check_server_handshake_output(&self.out, self.export_name);
    }

    /// Run the loop until the machine wants more input.
    pub fn pump(&mut self) {
        let mut guard = 0usize;
        loop {
            guard += 1;
            assert!(guard < 10_000_000, "server makes no progress");
            self.drain();
            if self.skip_payloads {
                self.take_payload();
            }
            let before = self.buf.len();
            let p = self.server.handle_input(&self.buf);
            let consumed = p.consumed;
            assert!(consumed <= before, "consumed more than given");
            let ev = p.event.map(Owned::from);
            if self.closed {
                assert!(ev.is_none(), "event after the end: {ev:?}");
            }
            self.buf.drain(..consumed);
            match ev {
                Some(ev) => {
                    self.events += 1;
                    self.on_event(ev);
                }
                None if consumed == 0 => {
                    self.drain();
                    if self.server.poll_transmit().is_empty() {
                        return;
                    }
                }
                None => {}
            }
        }
    }

    fn take_payload(&mut self) {
        let Some(remaining) = self.server.write_payload_remaining() else {
            return;
        };
        let (req, next, end) = self.write.expect("payload without a write");
        assert_eq!(remaining, end - next, "payload remaining disagrees");
        let n = (remaining as usize).min(self.buf.len());
        if n == 0 {
            return;
        }
        if let Some(disk) = &mut self.disk {
            disk[next as usize..next as usize + n].copy_from_slice(&self.buf[..n]);
        }
        self.buf.drain(..n);
        self.server.skip_payload(n as u64);
        let next = next + n as u64;
        self.write = if next == end {
            assert_eq!(self.server.write_payload_remaining(), None);
            self.reply_ok(req);
            None
        } else {
            Some((req, next, end))
        };
    }

    fn reply_ok(&mut self, req: Request) {
        let s = self.session.expect("reply without session");
        let h = s.encoder().ok(&req);
        check_reply_header(s.mode, h.as_bytes(), req.cookie);
        self.send(h.as_bytes());
    }

    fn send(&mut self, bytes: &[u8]) {
        self.reply_bytes += bytes.len();
        if self.disk.is_some() {
            self.wire.extend_from_slice(bytes);
        }
    }

    fn on_event(&mut self, ev: Owned) {
        match ev {
            Owned::StartTls => {
                assert!(self.session.is_none());
                self.drain();
                match self.tls {
                    TlsHandling::Proper => {
                        self.buf.clear();
                        self.server.tls_established();
                    }
                    TlsHandling::KeepBuffer => self.server.tls_established(),
                    TlsHandling::Never => {}
                }
            }
            Owned::Ready(s) => {
                assert!(self.session.is_none(), "Ready twice");
                assert_eq!(self.server.session(), Some(&s));
                let info = self
                    .server
                    .exports()
                    .export(s.export)
                    .expect("no such export");
                assert_eq!(info.size, s.size);
                assert!(s.flags.contains(TransmissionFlags::HAS_FLAGS));
                let cfg = *self.server.config();
                match s.mode {
                    HeaderMode::Extended => assert!(cfg.extended_headers),
                    HeaderMode::Structured => assert!(cfg.structured_replies),
                    HeaderMode::Simple => {}
                }
                if cfg.tls == blockwire_core::server::TlsPolicy::Required {
                    assert!(s.tls, "entered transmission without TLS");
                }
                // 10 or 134 trailing bytes mean EXPORT_NAME was used.
                self.export_name = true;
                self.session = Some(s);
            }
            Owned::Request(r) => self.on_request(r),
            Owned::WriteData {
                cookie,
                offset,
                data,
                last,
            } => {
                let len = data.len();
                let (req, next, end) = self.write.expect("WriteData without a write");
                let c = req.cookie;
                if let Some(disk) = &mut self.disk {
                    disk[offset as usize..offset as usize + len].copy_from_slice(&data);
                }
                assert_eq!(c, cookie);
                assert_eq!(offset, next, "write pieces not contiguous");
                assert!(len > 0, "empty write piece");
                let next = next + len as u64;
                assert!(next <= end, "write data past the request");
                assert_eq!(last, next == end, "last flag wrong");
                self.write = if last {
                    self.reply_ok(req);
                    None
                } else {
                    Some((req, next, end))
                };
            }
            Owned::Reject {
                bytes,
                cookie,
                errno,
                close,
            } => {
                let s = self.session.expect("Reject before Ready");
                assert!(self.write.is_none());
                assert_ne!(errno.0, 0);
                check_whole_reply(s.mode, &bytes, cookie);
                self.send(&bytes);
                if close.is_some() {
                    self.closed = true;
                    assert!(self.server.is_closed());
                }
            }
            Owned::Disconnect => {
                assert!(self.session.is_some());
                self.closed = true;
                assert!(self.server.is_closed());
            }
            Owned::Close(reason) => {
                if reason == CloseReason::PlaintextAfterStartTls {
                    assert_eq!(self.tls, TlsHandling::Never);
                }
                self.closed = true;
                assert!(self.server.is_closed());
            }
        }
    }

    fn on_request(&mut self, r: Request) {
        use CommandType as C;
        let s = self.session.expect("request before Ready");
        assert!(self.write.is_none(), "request inside a write payload");
        assert!(!self.shutting_down, "request accepted while shutting down");
        self.requests += 1;
        let tf = s.flags;
        let known = matches!(
            r.kind(),
            C::READ | C::WRITE | C::FLUSH | C::TRIM | C::CACHE | C::WRITE_ZEROES | C::BLOCK_STATUS
        );
        assert!(known, "unknown command accepted");
        if r.kind() != C::FLUSH {
            let end = r.offset().checked_add(r.len()).expect("range overflows");
            assert!(end <= s.size, "request past the end accepted");
            let min = u64::from(s.block_sizes.minimum.max(1));
            assert!(r.offset() % min == 0 && r.len() % min == 0, "misaligned");
        }
        let writes = matches!(r.kind(), C::WRITE | C::TRIM | C::WRITE_ZEROES);
        assert!(!(writes && tf.contains(TransmissionFlags::READ_ONLY)));
        if r.flags().contains(CommandFlags::FUA) {
            assert!(tf.contains(TransmissionFlags::SEND_FUA));
        }
        if r.flags().contains(CommandFlags::DF) {
            assert!(r.kind() == C::READ && s.mode.structured());
        }
        if self.disk.is_some() {
            return self.ram_request(s, r);
        }
        let enc = s.encoder();
        match r.kind() {
            C::READ => {
                assert!(r.len() <= u64::from(s.block_sizes.maximum));
                let len = r.len() as u32;
                if !s.mode.structured() {
                    let h = enc.data(&r, r.offset(), len, true);
                    check_reply_header(s.mode, h.as_bytes(), r.cookie);
                    self.reply_bytes += h.as_bytes().len() + len as usize;
                } else {
                    // Data for the first half, a hole for the rest, then done.
                    let half = len / 2;
                    let h = enc.data(&r, r.offset(), half, false);
                    check_chunk(s.mode, h.as_bytes(), r.cookie, 8 + u64::from(half));
                    assert_eq!(be::u64(h.as_bytes(), h.as_bytes().len() - 8), r.offset());
                    match enc.hole(&r, r.offset() + u64::from(half), len - half, false) {
                        Some(h) => check_chunk(s.mode, h.as_bytes(), r.cookie, 12),
                        None => assert_eq!(len - half, 0),
                    }
                    let h = enc.ok(&r);
                    check_chunk(s.mode, h.as_bytes(), r.cookie, 0);
                }
            }
            C::WRITE if r.len() > 0 => {
                self.write = Some((r, r.offset(), r.offset() + r.len()));
                if self.skip_payloads {
                    self.take_payload();
                }
            }
            C::BLOCK_STATUS => {
                assert!(r.len() > 0);
                let contexts = contexts_of(&r);
                assert!(!contexts.is_empty());
                assert_eq!(contexts.0 & !s.contexts.0, 0, "unselected context");
                // Answer every context into a buffer of varying size, with
                // extents derived from the cookie (fuzzed).
                let room = (r.cookie as usize % 300) + 16;
                let mut buf = vec![0u8; room];
                let mut out = SliceSink::new(&mut buf);
                let mut scratch: Vec<Extent> = Vec::new();
                let answered = enc.block_status(&r, u32::MAX, &mut scratch, &mut out, |id, q, push| {
                    assert!(contexts.contains(id));
                    assert_eq!((q.offset, q.length), (r.offset(), r.len()));
                    let mut seed = r.cookie ^ u64::from(id);
                    for _ in 0..(r.cookie >> 8) % 40 {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        if !push(Extent::new((seed >> 33) % (r.len() + 2), (seed >> 20) & 3)) {
                            break;
                        }
                    }
                    Ok::<(), ()>(())
                });
                match answered {
                    Ok(()) => {
                        let used = out.written();
                        check_status_reply(s.mode, &buf[..used], &r, contexts);
                        self.reply_bytes += used;
                    }
                    Err(StatusError::NoRoom) => {
                        assert!(room < contexts.len() as usize * enc.status_chunk_len(1));
                    }
                    Err(e) => panic!("block status failed: {e:?}"),
                }
            }
            _ => {
                let h = enc.ok(&r);
                check_reply_header(s.mode, h.as_bytes(), r.cookie);
                self.reply_bytes += h.as_bytes().len();
            }
        }
    }
}

impl<E: Exports> ServerDriver<E> {
    /// Carry out a validated request on the RAM disk and send its reply.
    fn ram_request(&mut self, s: Session, r: Request) {
        use CommandType as C;
        let enc = s.encoder();
        let (off, len) = (r.offset() as usize, r.len() as usize);
        match r.kind() {
            C::READ => {
                let data = self.disk.as_ref().unwrap()[off..off + len].to_vec();
                if !s.mode.structured() {
                    let h = enc.data(&r, r.offset(), len as u32, true);
                    self.send(h.as_bytes());
                    self.send(&data);
                    return;
                }
                // 4 KiB-aligned pieces, zero ones as holes if asked, in
                // order or reversed (any order is allowed), then NONE+DONE.
                let mut pieces = Vec::new();
                let mut at = off;
                while at < off + len {
                    let end = ((at / 4096 + 1) * 4096).min(off + len);
                    pieces.push((at, end));
                    at = end;
                }
                if r.flags().contains(CommandFlags::DF) {
                    // Don't fragment: one data chunk for the whole read.
                    pieces = vec![(off, off + len)];
                } else if self.reverse {
                    pieces.reverse();
                }
                for (a, b) in pieces {
                    let piece = &data[a - off..b - off];
                    let zero = piece.iter().all(|&x| x == 0);
                    if self.holes && zero && !r.flags().contains(CommandFlags::DF) {
                        let h = enc.hole(&r, a as u64, (b - a) as u32, false).unwrap();
                        self.send(h.as_bytes());
                    } else {
                        let h = enc.data(&r, a as u64, (b - a) as u32, false);
                        self.send(h.as_bytes());
                        self.send(piece);
                    }
                }
                let h = enc.ok(&r);
                self.send(h.as_bytes());
            }
            C::WRITE if len > 0 => {
                self.write = Some((r, r.offset(), r.offset() + r.len()));
                if self.skip_payloads {
                    self.take_payload();
                }
            }
            C::TRIM | C::WRITE_ZEROES => {
                self.disk.as_mut().unwrap()[off..off + len].fill(0);
                self.reply_ok(r);
            }
            C::BLOCK_STATUS => {
                let contexts = contexts_of(&r);
                let disk = self.disk.as_ref().unwrap();
                let mut out = Vec::new();
                let mut scratch: Vec<Extent> = Vec::new();
                enc.block_status(&r, u32::MAX, &mut scratch, &mut out, |id, _, push| {
                    // id 0: base:allocation (zero 4 KiB blocks are holes);
                    // id 1: allocation depth 1 everywhere.
                    let mut at = off;
                    while at < disk.len() && at < off + len.max(1) {
                        let end = ((at / 4096 + 1) * 4096).min(disk.len());
                        let flags = if id == 0 && disk[at..end].iter().all(|&x| x == 0) {
                            3
                        } else if id == 0 {
                            0
                        } else {
                            1
                        };
                        if !push(Extent::new((end - at) as u64, flags)) {
                            break;
                        }
                        at = end;
                    }
                    Ok::<(), ()>(())
                })
                .expect("block status into a growable buffer");
                check_status_reply(s.mode, &out, &r, contexts);
                self.send(&out);
            }
            _ => self.reply_ok(r),
        }
    }
}

/// A reply (simple, or a structured/extended chunk) with the right magic
/// for the mode and the request's cookie.
pub fn check_reply_header(mode: HeaderMode, bytes: &[u8], cookie: u64) {
    assert!(bytes.len() >= 16 && bytes.len() <= MAX_REPLY_HEADER + 200);
    match be::u32(bytes, 0) {
        SIMPLE_REPLY_MAGIC => {
            assert_ne!(mode, HeaderMode::Extended, "simple reply in extended mode")
        }
        STRUCTURED_REPLY_MAGIC => assert_eq!(mode, HeaderMode::Structured),
        EXTENDED_REPLY_MAGIC => assert_eq!(mode, HeaderMode::Extended),
        m => panic!("bad reply magic {m:#x}"),
    }
    assert_eq!(be::u64(bytes, 8), cookie, "reply cookie");
}

/// A whole small reply (an error): the chunk length covers the payload and
/// the message fits.
fn check_whole_reply(mode: HeaderMode, bytes: &[u8], cookie: u64) {
    check_reply_header(mode, bytes, cookie);
    let (head, len) = match be::u32(bytes, 0) {
        SIMPLE_REPLY_MAGIC => {
            assert_eq!(bytes.len(), 16);
            assert_ne!(be::u32(bytes, 4), 0, "error reply with error 0");
            return;
        }
        STRUCTURED_REPLY_MAGIC => (20, be::u32(bytes, 16) as usize),
        _ => (32, be::u64(bytes, 24) as usize),
    };
    assert_eq!(head + len, bytes.len(), "error chunk length");
    assert_ne!(be::u32(bytes, head), 0, "error chunk with error 0");
    let mlen = be::u16(bytes, head + 4) as usize;
    assert!(head + 6 + mlen <= bytes.len());
}

fn check_chunk(mode: HeaderMode, bytes: &[u8], cookie: u64, payload: u64) {
    check_reply_header(mode, bytes, cookie);
    let len = match mode {
        HeaderMode::Extended => be::u64(bytes, 24),
        _ => u64::from(be::u32(bytes, 16)),
    };
    assert_eq!(len, payload, "chunk length field");
}

fn contexts_of(r: &Request) -> ContextSet {
    match r.command {
        Command::BlockStatus { contexts, .. } => contexts,
        _ => ContextSet::EMPTY,
    }
}

/// A whole block-status reply: one chunk per context in id order, each
/// well-formed, the last (and only the last) with DONE.
fn check_status_reply(mode: HeaderMode, mut bytes: &[u8], r: &Request, contexts: ContextSet) {
    let head = if mode == HeaderMode::Extended { 32 } else { 20 };
    let n = contexts.len() as usize;
    for (i, id) in contexts.iter().enumerate() {
        assert!(bytes.len() >= head, "status reply cut short");
        let len = match mode {
            HeaderMode::Extended => be::u64(bytes, 24) as usize,
            _ => be::u32(bytes, 16) as usize,
        };
        let (chunk, rest) = bytes.split_at(head + len);
        let done = be::u16(chunk, 4) & 1 == 1;
        assert_eq!(done, i + 1 == n, "DONE on the last chunk only");
        check_status_chunk(mode, chunk, r, id);
        bytes = rest;
    }
    assert!(bytes.is_empty(), "bytes after the last status chunk");
}

fn check_status_chunk(mode: HeaderMode, bytes: &[u8], r: &Request, id: u32) {
    let ext = mode == HeaderMode::Extended;
    let (head, prefix, each) = if ext { (32, 8, 16) } else { (20, 4, 8) };
    let payload = bytes.len() - head;
    check_chunk(mode, &bytes[..head], r.cookie, payload as u64);
    assert_eq!(be::u32(bytes, head), id);
    let body = &bytes[head + prefix..];
    assert_eq!(body.len() % each, 0);
    let count = body.len() / each;
    assert!(count >= 1, "status chunk without descriptors");
    if ext {
        assert_eq!(be::u32(bytes, head + 4) as usize, count);
    }
    if r.flags().contains(CommandFlags::REQ_ONE) {
        assert_eq!(count, 1);
    }
    let mut sum = 0u64;
    for d in body.chunks_exact(each) {
        let len = if ext {
            be::u64(d, 0)
        } else {
            u64::from(be::u32(d, 0))
        };
        assert!(len > 0, "zero-length descriptor");
        sum += len;
    }
    assert!(sum <= r.len().max(1), "descriptors past the request");
}

/// An event with its borrowed data reduced to what the checks need.
#[derive(Debug)]
enum Owned {
    StartTls,
    Ready(Session),
    Request(Request),
    WriteData {
        cookie: u64,
        offset: u64,
        data: Vec<u8>,
        last: bool,
    },
    Reject {
        bytes: Vec<u8>,
        cookie: u64,
        errno: Errno,
        close: Option<CloseReason>,
    },
    Disconnect,
    Close(CloseReason),
}

impl Owned {
    fn from(e: Event<'_>) -> Self {
        match e {
            Event::StartTls => Owned::StartTls,
            Event::Ready(s) => Owned::Ready(s),
            Event::Request(r) => Owned::Request(r),
            Event::WriteData {
                cookie,
                offset,
                data,
                last,
            } => Owned::WriteData {
                cookie,
                offset,
                data: data.to_vec(),
                last,
            },
            Event::Reject { reply, close } => Owned::Reject {
                bytes: reply.as_bytes().to_vec(),
                cookie: reply.cookie(),
                errno: reply.errno(),
                close,
            },
            Event::Disconnect => Owned::Disconnect,
            Event::Close(r) => Owned::Close(r),
        }
    }
}
