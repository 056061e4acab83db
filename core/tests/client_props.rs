//! Properties of the client machine: any input split gives the same
//! events; arbitrary server bytes never panic, never grow output, and never
//! make a read succeed without every byte delivered inside its buffer.

#[path = "client_support.rs"]
mod support;

use std::collections::HashMap;

use blockwire_core::client::{Client, Config, Cookie, Mode};
use blockwire_core::time::Instant;
use blockwire_core::wire::{CommandFlags, HeaderMode, OptionType, ReplyType};
use proptest::prelude::*;
use support::*;

const F: CommandFlags = CommandFlags::empty();
const SIZE: u64 = 1 << 20;

/// Cookie of the k-th request submitted right after the handshake.
fn cookie(k: u64) -> Cookie {
    Cookie(((k + 1) << 16) | k)
}

fn rich_handshake() -> Script {
    Script::new()
        .greeting(3)
        .opt(
            OptionType::EXTENDED_HEADERS,
            ReplyType::ERR_UNSUP,
            b"not here",
        )
        .ack(OptionType::STRUCTURED_REPLY)
        .meta_context(OptionType::SET_META_CONTEXT, 5, "base:allocation")
        .ack(OptionType::SET_META_CONTEXT)
        .info_string(OptionType::GO, 1, "name")
        .info_string(OptionType::GO, 2, "description")
        .info_export(OptionType::GO, SIZE, ALL_FLAGS)
        .info_block_size(OptionType::GO, 512, 4096, 1 << 25)
        .ack(OptionType::GO)
}

fn rich_config() -> Config {
    let mut c = Config::new("disk").unwrap();
    c.add_meta_context("base:allocation").unwrap();
    c
}

/// Requests 0..4 then replies that exercise every chunk kind.
fn submit(c: &mut Client) {
    assert_eq!(c.read(0, 8192, F), Ok(cookie(0)));
    assert_eq!(c.block_status(0, 65536, F), Ok(cookie(1)));
    assert_eq!(c.read(8192, 4096, F), Ok(cookie(2)));
    assert_eq!(c.flush(), Ok(cookie(3)));
}

fn rich_replies() -> Script {
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    Script::new()
        .chunk(0, OFFSET_DATA, cookie(0), &data_payload(4096, &data))
        .chunk(
            0,
            BLOCK_STATUS,
            cookie(1),
            &status32(5, &[(4096, 0), (4096, 3), (512, 0), (1 << 20, 1)]),
        )
        .chunk(0, OFFSET_HOLE, cookie(0), &hole_payload(0, 4096))
        .chunk(
            DONE,
            ERROR,
            cookie(2),
            &error_payload(5, "media error", None),
        )
        .simple(cookie(3), 0, b"")
        .chunk(DONE, NONE, cookie(0), &[])
        .chunk(DONE, NONE, cookie(1), &[])
}

fn session(sizes: &[usize]) -> (Vec<Ev>, Vec<u8>) {
    let mut c: Client = Client::new(rich_config(), Instant(0));
    let mut run = Run::default();
    feed(&mut c, &rich_handshake().0, sizes, &mut run);
    submit(&mut c);
    feed(&mut c, &rich_replies().0, sizes, &mut run);
    assert_eq!(c.in_flight(), 0);
    (normalize(run.events), run.sent)
}

#[test]
fn whole_and_byte_at_a_time_agree() {
    let (whole, sent) = session(&[usize::MAX]);
    assert_eq!(whole.len(), 13);
    assert!(whole.contains(&Ev::Completed(cookie(0), Ok(()))));
    assert!(whole.contains(&Ev::Completed(cookie(1), Ok(()))));
    let (bytes, sent1) = session(&[1]);
    assert_eq!(whole, bytes);
    assert_eq!(sent, sent1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_split_gives_the_same_events(sizes in proptest::collection::vec(1usize..64, 1..32)) {
        let (whole, sent) = session(&[usize::MAX]);
        let (split, sent2) = session(&sizes);
        prop_assert_eq!(whole, split);
        prop_assert_eq!(sent, sent2);
    }

    #[test]
    fn arbitrary_handshake_bytes_never_panic(
        prefix in 0usize..4,
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        sizes in proptest::collection::vec(1usize..300, 1..8),
        mode in 0u8..3,
    ) {
        let mut config = rich_config();
        config.mode = [Mode::Go, Mode::Info, Mode::List][mode as usize];
        let mut c: Client = Client::new(config, Instant(0));
        // Sometimes start from a valid greeting (and option reply magic) to go deeper.
        let mut input = match prefix {
            0 => vec![],
            1 => Script::new().greeting(3).0,
            2 => Script::new().greeting(3).raw(&OPT_REPLY_MAGIC.to_be_bytes()).0,
            _ => rich_handshake().0[..200].to_vec(),
        };
        input.extend_from_slice(&bytes);
        let mut run = Run::default();
        feed(&mut c, &input, &sizes, &mut run);
        prop_assert!(run.max_pending <= 64 * 1024);
        prop_assert!(run.sent.len() <= 64 * 1024);
        // At most one failure, and nothing after it.
        if let Some(i) = run.events.iter().position(|e| matches!(e, Ev::Failed(_))) {
            prop_assert_eq!(i, run.events.len() - 1);
        }
        let _ = c.handle_eof();
    }

    #[test]
    fn hostile_replies_never_fake_a_read(
        chunks in proptest::collection::vec(chunk_strategy(), 0..24),
        sizes in proptest::collection::vec(1usize..200, 1..8),
        mode in 0u8..3,
    ) {
        let mode = [HeaderMode::Simple, HeaderMode::Structured, HeaderMode::Extended][mode as usize];
        let mut c = ready_client(mode, &["base:allocation"], SIZE, ALL_FLAGS);
        // Four reads and a block status in flight.
        let mut reqs: HashMap<Cookie, (u64, u64)> = HashMap::new();
        for (o, l) in [(0u64, 4096u32), (4096, 512), (SIZE - 1024, 1024), (65536, 8192)] {
            let k = c.read(o, l, F).unwrap();
            reqs.insert(k, (o, u64::from(l)));
        }
        let bs = if mode != HeaderMode::Simple { c.block_status(0, 8192, F).ok() } else { None };
        let cookies: Vec<Cookie> = {
            let mut v: Vec<Cookie> = reqs.keys().copied().collect();
            v.sort();
            v.extend(bs);
            v
        };
        let mut s = Script::new();
        for ch in &chunks {
            s = ch.encode(s, &cookies, &reqs, mode);
        }
        let mut run = Run::default();
        feed(&mut c, &s.0, &sizes, &mut run);
        prop_assert!(run.max_pending <= 64 * 32 + 32);
        let mut delivered: HashMap<Cookie, Vec<bool>> = HashMap::new();
        for e in &run.events {
            match e {
                Ev::ReadData(k, o, d) => {
                    let (ro, rl) = reqs[k];
                    prop_assert!(*o >= ro && o - ro + d.len() as u64 <= rl, "inside the buffer");
                    let m = delivered.entry(*k).or_insert_with(|| vec![false; rl as usize]);
                    for i in 0..d.len() {
                        let at = (o - ro) as usize + i;
                        prop_assert!(!m[at], "never twice");
                        m[at] = true;
                    }
                }
                Ev::ReadHole(k, o, l) => {
                    let (ro, rl) = reqs[k];
                    prop_assert!(*l > 0 && *o >= ro && o - ro + u64::from(*l) <= rl);
                    let m = delivered.entry(*k).or_insert_with(|| vec![false; rl as usize]);
                    for i in 0..*l as usize {
                        let at = (o - ro) as usize + i;
                        prop_assert!(!m[at], "never twice");
                        m[at] = true;
                    }
                }
                Ev::BlockStatus(_, _, _, x) => prop_assert!(x.iter().all(|e| e.length > 0)),
                Ev::Completed(k, Ok(())) if reqs.contains_key(k) => {
                    let m = delivered.get(k);
                    prop_assert!(m.is_some_and(|m| m.iter().all(|b| *b)), "success means every byte");
                }
                _ => {}
            }
        }
        if let Some(i) = run.events.iter().position(|e| matches!(e, Ev::Failed(_))) {
            prop_assert_eq!(i, run.events.len() - 1);
        }
    }
}

/// A reply a hostile server might send: mostly well-formed headers with
/// arbitrary fields, sometimes garbage.
#[derive(Clone, Debug)]
enum Chunk {
    Simple {
        req: usize,
        error: u32,
        data: bool,
    },
    Data {
        req: usize,
        done: bool,
        at: u64,
        len: u16,
        wild: Option<u64>,
    },
    Hole {
        req: usize,
        done: bool,
        at: u64,
        len: u32,
    },
    Status {
        req: usize,
        done: bool,
        ctx: u32,
        ext: Vec<(u32, u32)>,
    },
    Error {
        req: usize,
        done: bool,
        ty: u16,
        errno: u32,
        msg: u16,
        extra: u8,
    },
    None {
        req: usize,
        done: bool,
    },
    Garbage(Vec<u8>),
}

fn chunk_strategy() -> impl Strategy<Value = Chunk> {
    prop_oneof![
        (0usize..6, any::<u32>(), any::<bool>()).prop_map(|(req, e, data)| Chunk::Simple {
            req,
            error: e % 3 * 5,
            data
        }),
        (
            0usize..6,
            any::<bool>(),
            0u64..9000,
            0u16..5000,
            proptest::option::weighted(0.1, any::<u64>())
        )
            .prop_map(|(req, done, at, len, wild)| Chunk::Data {
                req,
                done,
                at,
                len,
                wild
            }),
        (0usize..6, any::<bool>(), 0u64..9000, 0u32..9000)
            .prop_map(|(req, done, at, len)| Chunk::Hole { req, done, at, len }),
        (
            0usize..6,
            any::<bool>(),
            0u32..3,
            proptest::collection::vec((0u32..5000, 0u32..4), 0..5)
        )
            .prop_map(|(req, done, ctx, ext)| Chunk::Status {
                req,
                done,
                ctx,
                ext
            }),
        (
            0usize..6,
            any::<bool>(),
            prop_oneof![Just(0x8001u16), Just(0x8002), Just(0x8555)],
            any::<u32>(),
            0u16..40,
            0u8..20
        )
            .prop_map(|(req, done, ty, errno, msg, extra)| Chunk::Error {
                req,
                done,
                ty,
                errno,
                msg,
                extra
            }),
        (0usize..6, any::<bool>()).prop_map(|(req, done)| Chunk::None { req, done }),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Chunk::Garbage),
    ]
}

impl Chunk {
    fn encode(
        &self,
        s: Script,
        cookies: &[Cookie],
        reqs: &HashMap<Cookie, (u64, u64)>,
        mode: HeaderMode,
    ) -> Script {
        let pick = |i: usize| cookies.get(i).copied().unwrap_or(Cookie(0xbad));
        let base = |k: Cookie| reqs.get(&k).map_or(0, |r| r.0);
        let flags = |done: bool| if done { DONE } else { 0 };
        let emit = |s: Script, f: u16, ty: u16, k: Cookie, p: &[u8]| match mode {
            HeaderMode::Extended => s.ext_chunk(f, ty, k, base(k), p),
            _ => s.chunk(f, ty, k, p),
        };
        match self {
            Chunk::Simple { req, error, data } => {
                let k = pick(*req);
                let len = reqs.get(&k).map_or(0, |r| r.1) as usize;
                let payload = if *data { vec![0x5a; len] } else { vec![] };
                s.simple(k, *error, &payload)
            }
            Chunk::Data {
                req,
                done,
                at,
                len,
                wild,
            } => {
                let k = pick(*req);
                let off = wild.unwrap_or(base(k) + at);
                emit(
                    s,
                    flags(*done),
                    OFFSET_DATA,
                    k,
                    &data_payload(off, &vec![0xd0; *len as usize]),
                )
            }
            Chunk::Hole { req, done, at, len } => {
                let k = pick(*req);
                emit(
                    s,
                    flags(*done),
                    OFFSET_HOLE,
                    k,
                    &hole_payload(base(k) + at, *len),
                )
            }
            Chunk::Status {
                req,
                done,
                ctx,
                ext,
            } => {
                let k = pick(*req);
                if mode == HeaderMode::Extended {
                    let e: Vec<(u64, u64)> = ext
                        .iter()
                        .map(|&(l, f)| (u64::from(l), u64::from(f)))
                        .collect();
                    emit(s, flags(*done), BLOCK_STATUS_EXT, k, &status64(*ctx, &e))
                } else {
                    emit(s, flags(*done), BLOCK_STATUS, k, &status32(*ctx, ext))
                }
            }
            Chunk::Error {
                req,
                done,
                ty,
                errno,
                msg,
                extra,
            } => {
                let k = pick(*req);
                let mut p = error_payload(*errno, &"m".repeat(*msg as usize), None);
                p.extend(std::iter::repeat_n(0u8, *extra as usize));
                emit(s, flags(*done), *ty, k, &p)
            }
            Chunk::None { req, done } => emit(s, flags(*done), NONE, pick(*req), &[]),
            Chunk::Garbage(g) => s.raw(g),
        }
    }
}
