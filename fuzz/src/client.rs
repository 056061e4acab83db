//! A frontend for the client machine: runs the documented loop, keeps the
//! caller's buffers of requests in flight, and checks every event.

use std::collections::HashMap;

use blockwire_core::client::{
    Client, Config, Cookie, Error, Event, Export, INPUT_BUFFER, RequestFailure, TRANSMIT_BUFFER,
};
use blockwire_core::time::Instant;
use blockwire_core::wire::{CommandFlags, CommandType, HeaderMode};

/// What the frontend remembers of a request in flight.
#[derive(Debug)]
pub enum Kind {
    Read {
        buf: Vec<u8>,
        filled: Vec<bool>,
        /// The data the read must return (whole sessions only).
        expect: Option<Vec<u8>>,
    },
    BlockStatus {
        req_one: bool,
        /// The disk contents at submission (whole sessions only): a
        /// hole-and-zero extent must cover zeroes.
        expect: Option<Vec<u8>>,
    },
    Other(CommandType),
}

#[derive(Debug)]
pub struct Pending {
    pub offset: u64,
    pub length: u64,
    pub kind: Kind,
    pub error_seen: bool,
}

pub struct ClientDriver<const N: usize = 64> {
    pub client: Client<N>,
    /// Everything the client sent.
    pub out: Vec<u8>,
    /// Bytes sent since the last `take_output`.
    pub fresh: Vec<u8>,
    pub buf: Vec<u8>,
    pub failed: Option<Error>,
    pub ready: Option<Export>,
    pub finished: bool,
    /// On StartTls drop buffered plaintext (as documented) or keep it.
    pub tls_clear_buffer: bool,
    pub pending: HashMap<u64, Pending>,
    pub completed: usize,
    pub completed_ok: usize,
    pub events: usize,
    shutdown_seen: bool,
}

impl<const N: usize> ClientDriver<N> {
    pub fn new(config: Config) -> Self {
        let mut d = Self {
            client: Client::new(config, Instant(0)),
            out: Vec::new(),
            fresh: Vec::new(),
            buf: Vec::new(),
            failed: None,
            ready: None,
            finished: false,
            tls_clear_buffer: true,
            pending: HashMap::new(),
            completed: 0,
            completed_ok: 0,
            events: 0,
            shutdown_seen: false,
        };
        d.drain();
        d
    }

    pub fn drain(&mut self) {
        assert!(self.client.pending_transmit() <= TRANSMIT_BUFFER);
        loop {
            let out = self.client.poll_transmit();
            if out.is_empty() {
                break;
            }
            self.out.extend_from_slice(out);
            self.fresh.extend_from_slice(out);
            let n = out.len();
            self.client.transmitted(n);
        }
    }

    pub fn take_output(&mut self) -> Vec<u8> {
        self.drain();
        std::mem::take(&mut self.fresh)
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.pump();
    }

    /// Run the loop until the machine wants more input.
    pub fn pump(&mut self) {
        let mut guard = 0usize;
        loop {
            guard += 1;
            assert!(guard < 10_000_000, "client makes no progress");
            self.drain();
            let before = self.buf.len();
            let p = self.client.handle_input(&self.buf);
            let consumed = p.consumed;
            assert!(consumed <= before, "consumed more than given");
            let got = p.event.is_some();
            if let Some(ev) = p.event {
                // Checks need `self`; copy what they need out of the borrow.
                let ev = Owned::from(ev);
                self.buf.drain(..consumed);
                self.events += 1;
                self.on_event(ev);
            } else {
                self.buf.drain(..consumed);
            }
            if !got && consumed == 0 {
                // The machine waits only for a unit that is not whole yet,
                // and none is as large as INPUT_BUFFER.
                assert!(
                    self.buf.len() < INPUT_BUFFER,
                    "client waits with {} bytes unconsumed",
                    self.buf.len()
                );
                self.drain();
                return;
            }
            if self.failed.is_some() || self.finished {
                // Everything after the end is swallowed without events.
                let p = self.client.handle_input(&self.buf);
                assert!(p.event.is_none(), "event after the end");
                let c = p.consumed;
                self.buf.drain(..c);
                self.drain();
                return;
            }
        }
    }

    /// Register a request the client accepted.
    pub fn submitted(&mut self, cookie: Cookie, offset: u64, length: u64, kind: Kind) {
        assert!(
            self.pending
                .insert(
                    cookie.0,
                    Pending {
                        offset,
                        length,
                        kind,
                        error_seen: false
                    }
                )
                .is_none(),
            "cookie reused while in flight"
        );
        assert!(self.pending.len() <= N);
    }

    fn on_event(&mut self, ev: Owned) {
        match ev {
            Owned::StartTls => {
                assert!(self.ready.is_none());
                self.drain();
                if self.tls_clear_buffer {
                    self.buf.clear();
                }
                self.client.tls_established();
            }
            Owned::Ready(e) => {
                assert!(self.ready.is_none(), "Ready twice");
                assert!(e.size < 1 << 63);
                if let Some(b) = e.block_size {
                    assert!(b.minimum.is_power_of_two() && b.minimum <= 65536);
                    assert!(b.preferred >= b.minimum && b.maximum >= b.minimum);
                }
                let cfg = self.client.config();
                match e.mode {
                    HeaderMode::Extended => assert!(cfg.extended_headers),
                    HeaderMode::Structured => {
                        assert!(cfg.structured_replies || cfg.extended_headers)
                    }
                    HeaderMode::Simple => {}
                }
                assert_eq!(self.client.export(), Some(&e));
                self.ready = Some(e);
            }
            Owned::Finished => {
                self.finished = true;
            }
            Owned::Handshake => {}
            Owned::ReadData {
                cookie,
                offset,
                data,
            } => self.deliver(cookie, offset, data.len() as u64, Some(&data)),
            Owned::ReadHole {
                cookie,
                offset,
                len,
            } => {
                assert!(len > 0, "empty hole");
                self.deliver(cookie, offset, u64::from(len), None)
            }
            Owned::BlockStatus {
                cookie,
                context_id,
                offset,
                extents,
            } => {
                assert!(
                    self.client.contexts().any(|(id, _)| id == context_id),
                    "status for an unselected context"
                );
                let p = self
                    .pending
                    .get(&cookie.0)
                    .expect("status for unknown cookie");
                let Kind::BlockStatus { req_one, expect } = &p.kind else {
                    panic!("status for a {:?}", p.kind);
                };
                let end = p.offset + p.length;
                let mut at = offset;
                assert!(offset >= p.offset);
                for (len, flags) in extents {
                    assert!(len > 0, "zero-length extent delivered");
                    assert!(at < end, "extent starts past the request");
                    if *req_one {
                        assert!(len <= p.length);
                    }
                    if let (Some(snap), 0, true) = (expect, context_id, flags & 2 != 0) {
                        // Reported as zero: the disk must read as zero there.
                        let a = (at - p.offset) as usize;
                        let b = ((at + len).min(end) - p.offset) as usize;
                        assert!(snap[a..b].iter().all(|&x| x == 0), "zero extent over data");
                    }
                    at = at.saturating_add(len);
                }
            }
            Owned::ReplyError {
                cookie,
                error,
                offset,
            } => {
                assert_ne!(error.0, 0);
                let p = self
                    .pending
                    .get_mut(&cookie.0)
                    .expect("error for unknown cookie");
                if let Some(o) = offset {
                    assert!(o >= p.offset && o < p.offset + p.length.max(1));
                }
                p.error_seen = true;
            }
            Owned::Completed { cookie, result } => {
                let p = self
                    .pending
                    .remove(&cookie.0)
                    .expect("completion for a request not in flight");
                self.completed += 1;
                if p.error_seen {
                    assert!(result.is_err(), "error chunk but success");
                }
                if let Err(RequestFailure::Server(e)) = result {
                    assert_ne!(e.0, 0);
                }
                if result.is_ok() {
                    self.completed_ok += 1;
                    if let Kind::Read {
                        buf,
                        filled,
                        expect,
                    } = &p.kind
                    {
                        assert!(
                            filled.iter().all(|&f| f),
                            "read reported successful with bytes missing"
                        );
                        if let Some(e) = expect {
                            assert!(buf == e, "read data differs from the disk");
                        }
                    }
                }
            }
            Owned::ServerShutdown => {
                assert!(!self.shutdown_seen, "ServerShutdown twice");
                self.shutdown_seen = true;
            }
            Owned::Failed(e) => {
                assert!(self.failed.is_none(), "Failed twice");
                assert!(self.client.is_closed());
                self.failed = Some(e);
            }
        }
        if self.failed.is_none() && self.ready.is_some() {
            assert_eq!(self.client.in_flight(), self.pending.len());
        }
    }

    /// Copy read content into the caller's buffer at the validated place.
    fn deliver(&mut self, cookie: Cookie, offset: u64, len: u64, data: Option<&[u8]>) {
        let p = self
            .pending
            .get_mut(&cookie.0)
            .expect("read data for a request not in flight");
        let Kind::Read { buf, filled, .. } = &mut p.kind else {
            panic!("read data for a {:?}", p.kind);
        };
        assert!(offset >= p.offset, "read data before the buffer");
        let rel = (offset - p.offset) as usize;
        let end = rel.checked_add(len as usize).expect("overflow");
        assert!(end <= buf.len(), "read data past the buffer");
        assert!(
            filled[rel..end].iter().all(|&f| !f),
            "read data overlaps earlier data"
        );
        match data {
            Some(d) => buf[rel..end].copy_from_slice(d),
            None => buf[rel..end].fill(0),
        }
        filled[rel..end].fill(true);
    }
}

/// Submit a request of `kind` (0 read, 1 write, 2 flush, 3 trim, 4 write
/// zeroes, 5 cache, 6 block status) with flags, sending a write's payload
/// (`fill` bytes) right away. Returns the cookie if the client accepted it.
pub fn submit<const N: usize>(
    d: &mut ClientDriver<N>,
    kind: u8,
    offset: u64,
    length: u32,
    flags: CommandFlags,
    fill: u8,
    snapshot: Option<&[u8]>,
) -> Option<Cookie> {
    let c = &mut d.client;
    let len64 = u64::from(length);
    let r = match kind % 7 {
        0 => c.read(offset, length, flags),
        1 => c.write(offset, length, flags),
        2 => c.flush(),
        3 => c.trim(offset, len64, flags),
        4 => c.write_zeroes(offset, len64, flags),
        5 => c.cache(offset, len64),
        _ => c.block_status(offset, len64, flags),
    };
    let cookie = r.ok()?;
    let snap = |s: Option<&[u8]>| s.map(|s| s[offset as usize..(offset + len64) as usize].to_vec());
    let (o, l, k) = match kind % 7 {
        0 => (
            offset,
            len64,
            Kind::Read {
                buf: vec![0xA5; length as usize],
                filled: vec![false; length as usize],
                expect: snap(snapshot),
            },
        ),
        2 => (0, 0, Kind::Other(CommandType::FLUSH)),
        6 => (
            offset,
            len64,
            Kind::BlockStatus {
                req_one: flags.contains(CommandFlags::REQ_ONE),
                expect: snap(snapshot),
            },
        ),
        k => (offset, len64, Kind::Other(CommandType(k as u16))),
    };
    d.submitted(cookie, o, l, k);
    if kind % 7 == 1 {
        d.drain();
        d.fresh.extend(std::iter::repeat_n(fill, length as usize));
        d.out.extend(std::iter::repeat_n(fill, length as usize));
        d.client.payload_sent().expect("payload_sent");
    }
    Some(cookie)
}

/// Client config for the client targets from configuration bits: 0-1 TLS
/// (disable, allow, require, disable); 2 structured; 3 extended; 4-5 mode
/// (go, info, list, go); 6 contexts.
pub fn config_from(cfg: u8) -> Config {
    use blockwire_core::client::{Mode, TlsPolicy};
    let mut c = Config::new("disk").expect("config");
    c.tls = match cfg & 3 {
        1 => TlsPolicy::Allow,
        2 => TlsPolicy::Require,
        _ => TlsPolicy::Disable,
    };
    c.structured_replies = cfg & 4 != 0;
    c.extended_headers = cfg & 8 != 0;
    c.mode = match (cfg >> 4) & 3 {
        1 => Mode::Info,
        2 => Mode::List,
        _ => Mode::Go,
    };
    if cfg & 0x40 != 0 {
        for q in crate::scripts::CLIENT_CONTEXTS {
            c.add_meta_context(q).expect("config");
        }
    }
    c
}

/// A client in transmission for `client_replies`: mode from bits 0-1
/// (simple, structured, extended, extended), contexts from bit 2; then the
/// requests described by `spec` (5 bytes each: kind, offset/512 as u16,
/// length/512 - 1 as a byte, flags), at most 8. Returns the driver and the
/// rest of the input.
pub fn replies_setup(cfg: u8, spec: &[u8]) -> (ClientDriver, Vec<(Cookie, u8, u64, u32)>) {
    let mode = match cfg & 3 {
        0 => HeaderMode::Simple,
        1 => HeaderMode::Structured,
        _ => HeaderMode::Extended,
    };
    let contexts: &'static [&'static str] = if cfg & 4 != 0 {
        crate::scripts::CLIENT_CONTEXTS
    } else {
        &[]
    };
    let mut config = Config::new("disk").expect("config");
    config.structured_replies = mode != HeaderMode::Simple;
    config.extended_headers = mode == HeaderMode::Extended;
    for q in contexts {
        config.add_meta_context(q).expect("config");
    }
    let mut d = ClientDriver::new(config);
    let script = crate::scripts::client_handshake_script(mode, contexts);
    d.feed(&script.0);
    let e = d.ready.expect("valid handshake did not reach Ready");
    assert_eq!(e.mode, mode);
    let mut reqs = Vec::new();
    for r in spec.chunks_exact(5).take(8) {
        let kind = r[0] % 7;
        let offset = u64::from(u16::from_be_bytes([r[1], r[2]]) % 2048) * 512;
        let length = (u32::from(r[3]) + 1) * 512;
        let flags = CommandFlags::from_bits_truncate(u16::from(r[4]) & 0x1f);
        if let Some(c) = submit(&mut d, kind, offset, length, flags, r[0], None) {
            reqs.push((c, kind, offset, length));
        }
    }
    (d, reqs)
}

/// Owned copy of an event's data.
#[derive(Debug)]
enum Owned {
    StartTls,
    Ready(Export),
    Finished,
    /// Refused, ExportListed, MetaContext, CanonicalName, Description, Info.
    Handshake,
    ReadData {
        cookie: Cookie,
        offset: u64,
        data: Vec<u8>,
    },
    ReadHole {
        cookie: Cookie,
        offset: u64,
        len: u32,
    },
    BlockStatus {
        cookie: Cookie,
        context_id: u32,
        offset: u64,
        extents: Vec<(u64, u64)>,
    },
    ReplyError {
        cookie: Cookie,
        error: blockwire_core::wire::Errno,
        offset: Option<u64>,
    },
    Completed {
        cookie: Cookie,
        result: Result<(), RequestFailure>,
    },
    ServerShutdown,
    Failed(Error),
}

impl Owned {
    fn from(e: Event<'_>) -> Self {
        match e {
            Event::StartTls => Owned::StartTls,
            Event::Ready(e) => Owned::Ready(e),
            Event::Finished => Owned::Finished,
            Event::Refused { message, .. } => {
                let _ = message.len();
                Owned::Handshake
            }
            Event::ExportListed { name, description } => {
                let _ = (name.len(), description.len());
                Owned::Handshake
            }
            Event::MetaContext { name, .. } => {
                let _ = name.len();
                Owned::Handshake
            }
            Event::CanonicalName(_) | Event::Description(_) | Event::Info(_) => Owned::Handshake,
            Event::ReadData {
                cookie,
                offset,
                data,
            } => Owned::ReadData {
                cookie,
                offset,
                data: data.to_vec(),
            },
            Event::ReadHole {
                cookie,
                offset,
                len,
            } => Owned::ReadHole {
                cookie,
                offset,
                len,
            },
            Event::BlockStatus {
                cookie,
                context_id,
                offset,
                extents,
            } => Owned::BlockStatus {
                cookie,
                context_id,
                offset,
                extents: extents.map(|e| (e.length, e.flags)).collect(),
            },
            Event::ReplyError {
                cookie,
                error,
                offset,
                message,
            } => {
                let _ = message.len();
                Owned::ReplyError {
                    cookie,
                    error,
                    offset,
                }
            }
            Event::Completed { cookie, result } => Owned::Completed { cookie, result },
            Event::ServerShutdown => Owned::ServerShutdown,
            Event::Failed(e) => Owned::Failed(e),
        }
    }
}
