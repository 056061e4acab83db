//! Scripted NBD server bytes and a driver for the client machine, shared by
//! the `client_*` integration tests (included with `#[path]`).
#![allow(dead_code)]

use blockwire_core::block::Extent;
use blockwire_core::client::{
    Client, Config, Cookie, Error, Event, Export, INPUT_BUFFER, RequestFailure,
};
use blockwire_core::time::Instant;
use blockwire_core::wire::*;

pub const OPT_REPLY_MAGIC: u64 = 0x3e889045565a9;

include!("common/bytes.rs");

pub const DONE: u16 = 1;
pub const NONE: u16 = 0;
pub const OFFSET_DATA: u16 = 1;
pub const OFFSET_HOLE: u16 = 2;
pub const BLOCK_STATUS: u16 = 5;
pub const BLOCK_STATUS_EXT: u16 = 6;
pub const ERROR: u16 = 0x8001;
pub const ERROR_OFFSET: u16 = 0x8002;

/// An event with its borrows copied out.
#[derive(Clone, Debug, PartialEq)]
pub enum Ev {
    StartTls,
    Refused(OptionType, ReplyType, String),
    ExportListed(String, String),
    MetaContext(u32, String),
    CanonicalName(String),
    Description(String),
    Info(Export),
    Finished,
    Ready(Export),
    ReadData(Cookie, u64, Vec<u8>),
    ReadHole(Cookie, u64, u32),
    BlockStatus(Cookie, u32, u64, Vec<Extent>),
    ReplyError(Cookie, Errno, Option<u64>, String),
    Completed(Cookie, Result<(), RequestFailure>),
    ServerShutdown,
    Failed(Error),
}

impl Ev {
    pub fn from(e: Event<'_>) -> Self {
        match e {
            Event::StartTls => Ev::StartTls,
            Event::Refused {
                option,
                reply,
                message,
            } => Ev::Refused(option, reply, message.into()),
            Event::ExportListed { name, description } => {
                Ev::ExportListed(name.into(), description.into())
            }
            Event::MetaContext { id, name } => Ev::MetaContext(id, name.into()),
            Event::CanonicalName(n) => Ev::CanonicalName(n.into()),
            Event::Description(d) => Ev::Description(d.into()),
            Event::Info(e) => Ev::Info(e),
            Event::Finished => Ev::Finished,
            Event::Ready(e) => Ev::Ready(e),
            Event::ReadData {
                cookie,
                offset,
                data,
            } => Ev::ReadData(cookie, offset, data.to_vec()),
            Event::ReadHole {
                cookie,
                offset,
                len,
            } => Ev::ReadHole(cookie, offset, len),
            Event::BlockStatus {
                cookie,
                context_id,
                offset,
                extents,
            } => Ev::BlockStatus(cookie, context_id, offset, extents.collect()),
            Event::ReplyError {
                cookie,
                error,
                offset,
                message,
            } => Ev::ReplyError(cookie, error, offset, message.into()),
            Event::Completed { cookie, result } => Ev::Completed(cookie, result),
            Event::ServerShutdown => Ev::ServerShutdown,
            Event::Failed(e) => Ev::Failed(e),
        }
    }
}

/// Merge pieces that a different input split would have delivered
/// together (read data, block status batches), so runs can be compared.
pub fn normalize(events: Vec<Ev>) -> Vec<Ev> {
    let mut out: Vec<Ev> = Vec::new();
    for e in events {
        match (out.last_mut(), e) {
            (Some(Ev::ReadData(c, o, d)), Ev::ReadData(c2, o2, d2))
                if *c == c2 && *o + d.len() as u64 == o2 =>
            {
                d.extend_from_slice(&d2)
            }
            (Some(Ev::BlockStatus(c, id, _, x)), Ev::BlockStatus(c2, id2, _, x2))
                if *c == c2 && *id == id2 =>
            {
                x.extend(x2)
            }
            (_, e) => out.push(e),
        }
    }
    out
}

/// Everything a run produced.
#[derive(Default, Debug)]
pub struct Run {
    pub events: Vec<Ev>,
    pub sent: Vec<u8>,
    /// Largest `pending_transmit` seen.
    pub max_pending: usize,
}

/// Drain the client's output into `run.sent`.
pub fn drain<const N: usize>(client: &mut Client<N>, run: &mut Run) {
    run.max_pending = run.max_pending.max(client.pending_transmit());
    loop {
        let out = client.poll_transmit();
        if out.is_empty() {
            break;
        }
        run.sent.extend_from_slice(out);
        let n = out.len();
        client.transmitted(n);
    }
}

/// Feed `input` cut into pieces of the given sizes (cycled; the buffer
/// keeps unconsumed bytes like a real frontend would), draining output
/// before every call (the documented loop) and collecting events. TLS is
/// "established" at once on `StartTls`.
///
/// Checks the client's input contract: whenever it asks for more, what it
/// left unconsumed is less than [`INPUT_BUFFER`] (a frontend with that
/// much room is never stuck).
pub fn feed<const N: usize>(client: &mut Client<N>, input: &[u8], sizes: &[usize], run: &mut Run) {
    let mut buf: Vec<u8> = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    let mut guard = 0usize;
    loop {
        drain(client, run);
        // Take in the next piece.
        if pos < input.len() {
            let n = sizes
                .get(i % sizes.len().max(1))
                .copied()
                .unwrap_or(usize::MAX)
                .max(1);
            i += 1;
            let end = input.len().min(pos.saturating_add(n));
            buf.extend_from_slice(&input[pos..end]);
            pos = end;
        }
        loop {
            guard += 1;
            assert!(guard < 50_000_000, "machine does not make progress");
            drain(client, run);
            let p = client.handle_input(&buf);
            let consumed = p.consumed;
            assert!(consumed <= buf.len());
            let ev = p.event.map(Ev::from);
            buf.drain(..consumed);
            match ev {
                Some(Ev::StartTls) => {
                    run.events.push(Ev::StartTls);
                    client.tls_established();
                }
                Some(e) => run.events.push(e),
                None if consumed == 0 => {
                    assert!(
                        buf.len() < INPUT_BUFFER,
                        "client waits with {} bytes unconsumed",
                        buf.len()
                    );
                    break;
                }
                None => {}
            }
        }
        if pos >= input.len() {
            break;
        }
    }
    drain(client, run);
}

pub fn run_whole<const N: usize>(client: &mut Client<N>, input: &[u8]) -> Run {
    let mut run = Run::default();
    feed(client, input, &[usize::MAX], &mut run);
    run
}

/// Parse the client's handshake output: client flags, then options.
pub fn parse_options(sent: &[u8]) -> (u32, Vec<(u32, Vec<u8>)>) {
    let flags = u32::from_be_bytes(sent[..4].try_into().unwrap());
    let mut rest = &sent[4..];
    let mut out = Vec::new();
    while rest.len() >= 16 {
        assert_eq!(&rest[..8], b"IHAVEOPT");
        let opt = u32::from_be_bytes(rest[8..12].try_into().unwrap());
        let len = u32::from_be_bytes(rest[12..16].try_into().unwrap()) as usize;
        out.push((opt, rest[16..16 + len].to_vec()));
        rest = &rest[16 + len..];
    }
    assert!(rest.is_empty(), "trailing bytes {rest:?}");
    (flags, out)
}

pub fn last_failure(run: &Run) -> Option<Error> {
    run.events.iter().rev().find_map(|e| match e {
        Ev::Failed(e) => Some(*e),
        _ => None,
    })
}

/// Handshake script for `GO` with the given header mode; contexts are
/// selected with ids 1, 2, ... in order.
pub fn handshake_script(
    mode: blockwire_core::wire::HeaderMode,
    contexts: &[&str],
    size: u64,
    flags: u16,
) -> Script {
    use blockwire_core::wire::HeaderMode;
    let mut s = Script::new().greeting(3);
    match mode {
        HeaderMode::Extended => s = s.ack(OptionType::EXTENDED_HEADERS),
        HeaderMode::Structured => s = s.ack(OptionType::STRUCTURED_REPLY),
        HeaderMode::Simple => {}
    }
    if mode != HeaderMode::Simple && !contexts.is_empty() {
        for (i, c) in contexts.iter().enumerate() {
            s = s.meta_context(OptionType::SET_META_CONTEXT, i as u32 + 1, c);
        }
        s = s.ack(OptionType::SET_META_CONTEXT);
    }
    s.info_export(OptionType::GO, size, flags)
        .info_block_size(OptionType::GO, 512, 4096, 1 << 25)
        .ack(OptionType::GO)
}

/// A client in transmission with the given mode and contexts.
pub fn ready_client<'c>(
    mode: blockwire_core::wire::HeaderMode,
    contexts: &'c [&'c str],
    size: u64,
    flags: u16,
) -> Client {
    use blockwire_core::wire::HeaderMode;
    let mut config = Config::new("disk").unwrap();
    config.structured_replies = mode != HeaderMode::Simple;
    config.extended_headers = mode == HeaderMode::Extended;
    for q in contexts.iter() {
        config.add_meta_context(q).unwrap();
    }
    let mut client: Client = Client::new(config, Instant(0));
    let script = handshake_script(mode, contexts, size, flags);
    let run = run_whole(&mut client, &script.0);
    assert!(
        matches!(run.events.last(), Some(Ev::Ready(e)) if e.mode == mode),
        "{:?}",
        run.events
    );
    client
}

/// All transmission flags a test export may want.
pub const ALL_FLAGS: u16 = 1 | 4 | 8 | 32 | 64 | 128 | 1024 | 2048;
