//! A scripted NBD client driving the core server machine, like quinn-proto's
//! `Pair`: bytes are fed whole, one at a time, or in random splits, and every
//! scenario runs under all three.
#![allow(dead_code)]

mod exports;
pub use exports::*;

include!("bytes.rs");

use blockwire_core::server::{CloseReason, Request, Server, ServerConfig, Session};
use blockwire_core::time::Instant;
use blockwire_core::wire::*;

/// An event with its borrowed data copied out.
#[derive(Debug, Clone, PartialEq)]
pub enum Ev {
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
        errno: Errno,
        cookie: u64,
        close: Option<CloseReason>,
    },
    Disconnect,
    Close(CloseReason),
}

#[derive(Clone, Copy, Debug)]
pub enum Split {
    Whole,
    OneByte,
    Random(u64),
}

pub const SPLITS: [Split; 4] = [
    Split::Whole,
    Split::OneByte,
    Split::Random(1),
    Split::Random(0xdead_beef),
];

pub struct Pair {
    pub server: Server<TestExports>,
    /// Bytes the server sent, not yet parsed by the test.
    pub from_server: Vec<u8>,
    pub events: Vec<Ev>,
    /// Total input bytes the server consumed.
    pub consumed: usize,
    /// Received but not yet consumed, as in a frontend's read buffer.
    pub buf: Vec<u8>,
    split: Split,
    rng: u64,
}

impl Pair {
    pub fn new(split: Split) -> Self {
        Self::with(TestExports::standard(), ServerConfig::default(), split)
    }

    pub fn with(exports: TestExports, config: ServerConfig, split: Split) -> Self {
        let mut p = Pair {
            server: Server::new(exports, config, Instant(0)),
            from_server: Vec::new(),
            events: Vec::new(),
            consumed: 0,
            buf: Vec::new(),
            split,
            rng: match split {
                Split::Random(s) => s | 1,
                _ => 1,
            },
        };
        p.drain();
        p
    }

    fn next_len(&mut self, max: usize) -> usize {
        match self.split {
            Split::Whole => max,
            Split::OneByte => 1.min(max),
            Split::Random(_) => {
                // xorshift: deterministic splits from the seed.
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                1 + (self.rng as usize % max.max(1)).min(max.saturating_sub(1))
            }
        }
    }

    pub fn drain(&mut self) {
        loop {
            let out = self.server.poll_transmit();
            if out.is_empty() {
                break;
            }
            assert!(out.len() <= blockwire_core::server::TRANSMIT_BUFFER);
            self.from_server.extend_from_slice(out);
            let n = out.len();
            self.server.transmitted(n);
        }
    }

    /// Feed `bytes` in this pair's split, running the documented loop over
    /// a receive buffer, as a frontend would.
    pub fn feed(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = self.next_len(rest.len());
            let (chunk, tail) = rest.split_at(n);
            self.buf.extend_from_slice(chunk);
            rest = tail;
            self.pump();
        }
        self.pump();
    }

    /// Run the machine over the receive buffer until it wants more input.
    pub fn pump(&mut self) {
        loop {
            self.drain();
            let p = self.server.handle_input(&self.buf);
            let consumed = p.consumed;
            let ev = p.event.map(owned);
            self.consumed += consumed;
            self.buf.drain(..consumed);
            let got_event = ev.is_some();
            if let Some(ev) = ev {
                self.events.push(ev);
            }
            if !got_event && consumed == 0 {
                self.drain();
                if self.server.poll_transmit().is_empty() {
                    return;
                }
            }
        }
    }

    pub fn take_events(&mut self) -> Vec<Ev> {
        std::mem::take(&mut self.events)
    }

    /// Parse one option reply off the server's output.
    pub fn option_reply(&mut self) -> Option<(OptionType, ReplyType, Vec<u8>)> {
        if self.from_server.len() < 20 {
            return None;
        }
        let h = &self.from_server;
        assert_eq!(
            u64::from_be_bytes(h[0..8].try_into().unwrap()),
            OPTION_REPLY_MAGIC
        );
        let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
        let ty = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        if h.len() < 20 + len {
            return None;
        }
        let data = h[20..20 + len].to_vec();
        self.from_server.drain(..20 + len);
        Some((OptionType(opt), ReplyType(ty), data))
    }

    pub fn all_option_replies(&mut self) -> Vec<(OptionType, ReplyType, Vec<u8>)> {
        std::iter::from_fn(|| self.option_reply()).collect()
    }

    /// Greeting checked and consumed, client flags sent.
    pub fn start(split: Split, client_flags: u32) -> Self {
        let mut p = Self::new(split);
        p.expect_greeting();
        p.feed(&client_flags.to_be_bytes());
        p
    }

    pub fn expect_greeting(&mut self) {
        assert_eq!(&self.from_server[..8], b"NBDMAGIC");
        assert_eq!(&self.from_server[8..16], b"IHAVEOPT");
        assert_eq!(&self.from_server[16..18], &[0, 3]);
        self.from_server.drain(..18);
    }

    /// Fixed newstyle with NO_ZEROES, optionally structured/extended, then GO.
    pub fn ready(
        split: Split,
        mode: HeaderMode,
        export: &str,
        contexts: &[&str],
    ) -> (Self, Session) {
        let mut p = Self::start(split, 3);
        match mode {
            HeaderMode::Simple => {}
            HeaderMode::Structured => p.feed(&opt(OptionType::STRUCTURED_REPLY, &[])),
            HeaderMode::Extended => p.feed(&opt(OptionType::EXTENDED_HEADERS, &[])),
        }
        if !contexts.is_empty() {
            p.feed(&opt(
                OptionType::SET_META_CONTEXT,
                &meta_payload(export, contexts),
            ));
        }
        p.feed(&opt(
            OptionType::GO,
            &go_payload(export, &[InfoType::BLOCK_SIZE.0]),
        ));
        let evs = p.take_events();
        let session = match evs.last() {
            Some(Ev::Ready(s)) => *s,
            other => panic!(
                "expected Ready, got {other:?}; replies {:?}",
                p.all_option_replies()
            ),
        };
        p.from_server.clear();
        (p, session)
    }
}

fn owned(e: blockwire_core::server::Event<'_>) -> Ev {
    use blockwire_core::server::Event as E;
    match e {
        E::StartTls => Ev::StartTls,
        E::Ready(s) => Ev::Ready(s),
        E::Request(r) => Ev::Request(r),
        E::WriteData {
            cookie,
            offset,
            data,
            last,
        } => Ev::WriteData {
            cookie,
            offset,
            data: data.to_vec(),
            last,
        },
        E::Reject { reply, close } => Ev::Reject {
            bytes: reply.as_bytes().to_vec(),
            errno: reply.errno(),
            cookie: reply.cookie(),
            close,
        },
        E::Disconnect => Ev::Disconnect,
        E::Close(r) => Ev::Close(r),
    }
}

pub fn request(
    mode: HeaderMode,
    flags: CommandFlags,
    cmd: CommandType,
    cookie: u64,
    offset: u64,
    len: u64,
) -> Vec<u8> {
    let mut v = Vec::new();
    if mode == HeaderMode::Extended {
        v.extend_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
        v.extend_from_slice(&flags.bits().to_be_bytes());
        v.extend_from_slice(&cmd.0.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
    } else {
        v.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        v.extend_from_slice(&flags.bits().to_be_bytes());
        v.extend_from_slice(&cmd.0.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&(len as u32).to_be_bytes());
    }
    v
}

/// The magic of an encoded reply.
pub fn reply_magic(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes[0..4].try_into().unwrap())
}
