//! The client machine's handshake against scripted servers, hostile ones
//! included.

#[path = "client_support.rs"]
mod support;

use blockwire_core::client::{
    BlockSize, Client, Config, ConfigError, Error, Mode, RequestError, TlsPolicy,
};
use blockwire_core::time::Instant;
use blockwire_core::wire::codec::PayloadError;
use blockwire_core::wire::{CommandFlags, HeaderMode, OptionType, ReplyType, TransmissionFlags};
use core::time::Duration;
use support::*;

fn client(config: Config) -> Client {
    Client::new(config, Instant(0))
}

fn plain(name: &str) -> Config {
    let mut c = Config::new(name).unwrap();
    c.structured_replies = false;
    c.extended_headers = false;
    c
}

#[test]
fn go_with_simple_replies_sends_exactly_what_the_spec_says() {
    let mut c = client(plain("disk"));
    let s = Script::new()
        .greeting(3)
        .info_string(OptionType::GO, 1, "canonical")
        .info_string(OptionType::GO, 2, "a disk")
        .info_export(OptionType::GO, 1 << 20, 1 | 4)
        .info_block_size(OptionType::GO, 512, 4096, 1 << 20)
        .opt(OptionType::GO, ReplyType::INFO, &[0, 99, 1, 2]) // unknown info: ignored
        .ack(OptionType::GO);
    let run = run_whole(&mut c, &s.0);
    let export = match run.events.as_slice() {
        [Ev::CanonicalName(n), Ev::Description(d), Ev::Ready(e)] => {
            assert_eq!((n.as_str(), d.as_str()), ("canonical", "a disk"));
            *e
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(export.size, 1 << 20);
    assert_eq!(
        export.flags,
        TransmissionFlags::HAS_FLAGS | TransmissionFlags::SEND_FLUSH
    );
    assert_eq!(export.mode, HeaderMode::Simple);
    assert_eq!(
        export.block_size,
        Some(BlockSize {
            minimum: 512,
            preferred: 4096,
            maximum: 1 << 20
        })
    );
    let (flags, opts) = parse_options(&run.sent);
    assert_eq!(flags, 3);
    let mut go = 4u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"disk");
    go.extend_from_slice(&[0, 3, 0, 1, 0, 2, 0, 3]);
    assert_eq!(opts, vec![(7, go)]);
    assert!(c.is_ready());
    assert_eq!(c.export(), Some(&export));
}

#[test]
fn extended_headers_and_meta_contexts() {
    let contexts = ["base:allocation", "qemu:dirty-bitmap:b"];
    let mut config = Config::new("").unwrap();
    for q in contexts {
        config.add_meta_context(q).unwrap();
    }
    let mut c = client(config.clone());
    let s = Script::new()
        .greeting(1)
        .ack(OptionType::EXTENDED_HEADERS)
        .meta_context(OptionType::SET_META_CONTEXT, 7, "base:allocation")
        .meta_context(OptionType::SET_META_CONTEXT, 9, "qemu:dirty-bitmap:b")
        .ack(OptionType::SET_META_CONTEXT)
        .info_export(OptionType::GO, 4096, 1)
        .ack(OptionType::GO);
    let run = run_whole(&mut c, &s.0);
    assert!(matches!(run.events.last(), Some(Ev::Ready(e)) if e.mode == HeaderMode::Extended));
    assert_eq!(
        c.contexts().collect::<Vec<_>>(),
        vec![
            (7, Some("base:allocation")),
            (9, Some("qemu:dirty-bitmap:b"))
        ]
    );
    assert_eq!(c.context_id("qemu:dirty-bitmap:b"), Some(9));
    let (flags, opts) = parse_options(&run.sent);
    assert_eq!(flags, 1, "no NO_ZEROES unless the server offers it");
    let kinds: Vec<u32> = opts.iter().map(|o| o.0).collect();
    assert_eq!(kinds, vec![11, 10, 7]);
    let mut set = 0u32.to_be_bytes().to_vec();
    set.extend_from_slice(&2u32.to_be_bytes());
    for q in contexts {
        set.extend_from_slice(&(q.len() as u32).to_be_bytes());
        set.extend_from_slice(q.as_bytes());
    }
    assert_eq!(opts[1].1, set);
}

#[test]
fn extended_refused_falls_back_to_structured() {
    let contexts = ["base:allocation"];
    let mut config = Config::new("d").unwrap();
    for q in contexts {
        config.add_meta_context(q).unwrap();
    }
    let mut c = client(config.clone());
    let s = Script::new()
        .greeting(3)
        .opt(OptionType::EXTENDED_HEADERS, ReplyType::ERR_UNSUP, b"no")
        .ack(OptionType::STRUCTURED_REPLY)
        .opt(OptionType::SET_META_CONTEXT, ReplyType::ERR_POLICY, b"")
        .info_export(OptionType::GO, 4096, 1)
        .ack(OptionType::GO);
    let run = run_whole(&mut c, &s.0);
    assert_eq!(
        run.events[0],
        Ev::Refused(
            OptionType::EXTENDED_HEADERS,
            ReplyType::ERR_UNSUP,
            "no".into()
        )
    );
    assert!(matches!(
        run.events[1],
        Ev::Refused(OptionType::SET_META_CONTEXT, ..)
    ));
    assert!(matches!(run.events[2], Ev::Ready(e) if e.mode == HeaderMode::Structured));
    assert_eq!(c.contexts().count(), 0);
    assert_eq!(
        c.block_status(0, 512, CommandFlags::empty()),
        Err(RequestError::NotSupported)
    );
}

#[test]
fn go_unsupported_falls_back_to_export_name() {
    for (greeting, padding) in [(3u16, 0usize), (1, 124)] {
        let mut c = client(plain("old"));
        let mut s = Script::new()
            .greeting(greeting)
            .opt(OptionType::GO, ReplyType::ERR_UNSUP, b"")
            .raw(&(8192u64).to_be_bytes())
            .raw(&3u16.to_be_bytes())
            .raw(&vec![0; padding]);
        // Padding must be consumed, not taken as a reply.
        s = s.raw(&[]);
        let run = run_whole(&mut c, &s.0);
        assert!(matches!(
            run.events[0],
            Ev::Refused(OptionType::GO, ReplyType::ERR_UNSUP, _)
        ));
        assert!(
            matches!(run.events[1], Ev::Ready(e) if e.size == 8192 && e.block_size.is_none()),
            "{:?}",
            run.events
        );
        let (_, opts) = parse_options(&run.sent);
        assert_eq!(opts.last().unwrap(), &(1, b"old".to_vec()));
        assert!(c.is_ready());
    }
}

#[test]
fn go_unsupported_after_extended_headers_is_fatal() {
    let mut c = client(Config::new("d").unwrap());
    let s = Script::new()
        .greeting(3)
        .ack(OptionType::EXTENDED_HEADERS)
        .opt(OptionType::GO, ReplyType::ERR_UNSUP, b"");
    let run = run_whole(&mut c, &s.0);
    assert_eq!(
        last_failure(&run),
        Some(Error::GoUnsupportedWithExtendedHeaders)
    );
    assert!(c.is_closed());
}

#[test]
fn refuses_oldstyle_non_fixed_and_garbage() {
    let mut old = b"NBDMAGIC".to_vec();
    old.extend_from_slice(&0x00420281861253u64.to_be_bytes());
    old.extend_from_slice(&[0; 136]);
    let cases: [(Vec<u8>, Error); 3] = [
        (old, Error::Oldstyle),
        (Script::new().greeting(0).0, Error::NotFixedNewstyle),
        (
            b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
            Error::BadMagic {
                found: u64::from_be_bytes(*b"HTTP/1.1"),
            },
        ),
    ];
    for (bytes, err) in cases {
        let mut c = client(Config::new("").unwrap());
        let run = run_whole(&mut c, &bytes);
        assert_eq!(run.events, vec![Ev::Failed(err)]);
        assert!(run.sent.is_empty(), "nothing sent to a server we refuse");
        assert_eq!(c.handle_eof(), Err(err));
    }
}

#[test]
fn tls_required_and_started() {
    let mut config = plain("secure");
    config.tls = TlsPolicy::Require;
    let mut c = client(config.clone());
    let s = Script::new()
        .greeting(3)
        .ack(OptionType::STARTTLS)
        .info_export(OptionType::GO, 512, 1)
        .ack(OptionType::GO);
    let run = run_whole(&mut c, &s.0);
    assert_eq!(run.events[0], Ev::StartTls);
    assert!(matches!(run.events[1], Ev::Ready(_)));
    assert!(c.tls_active());
    let (_, opts) = parse_options(&run.sent);
    assert_eq!(opts.iter().map(|o| o.0).collect::<Vec<_>>(), vec![5, 7]);
}

#[test]
fn plaintext_injected_after_starttls_is_refused() {
    let mut config = plain("secure");
    config.tls = TlsPolicy::Require;
    let mut c = client(config.clone());
    let s = Script::new()
        .greeting(3)
        .ack(OptionType::STARTTLS)
        .raw(b"evil");
    let mut input = &s.0[..];
    let mut events = Vec::new();
    let mut run = Run::default();
    loop {
        drain(&mut c, &mut run);
        let p = c.handle_input(input);
        input = &input[p.consumed..];
        match p.event.map(Ev::from) {
            Some(e) => events.push(e),
            None if p.consumed == 0 => break,
            None => {}
        }
    }
    assert_eq!(
        events,
        vec![Ev::StartTls, Ev::Failed(Error::PlaintextAfterStartTls)]
    );
}

#[test]
fn tls_refusals() {
    // We require TLS; the server will not: soft disconnect with ABORT.
    let mut config = plain("x");
    config.tls = TlsPolicy::Require;
    let mut c = client(config.clone());
    let run = run_whole(
        &mut c,
        &Script::new()
            .greeting(3)
            .opt(OptionType::STARTTLS, ReplyType::ERR_POLICY, b"")
            .0,
    );
    assert_eq!(
        last_failure(&run),
        Some(Error::TlsRefused {
            reply: ReplyType::ERR_POLICY
        })
    );
    let (_, opts) = parse_options(&run.sent);
    assert_eq!(opts.iter().map(|o| o.0).collect::<Vec<_>>(), vec![5, 2]);

    // We allow TLS; the server lacks it: go on in plaintext.
    let mut config = plain("x");
    config.tls = TlsPolicy::Allow;
    let mut c = client(config.clone());
    let run = run_whole(
        &mut c,
        &Script::new()
            .greeting(3)
            .opt(OptionType::STARTTLS, ReplyType::ERR_UNSUP, b"")
            .info_export(OptionType::GO, 512, 1)
            .ack(OptionType::GO)
            .0,
    );
    assert!(matches!(run.events[1], Ev::Ready(_)));
    assert!(!c.tls_active());

    // We have no TLS; the server requires it (on any option).
    for opt_script in
        [Script::new()
            .greeting(3)
            .opt(OptionType::GO, ReplyType::ERR_TLS_REQD, b"tls please")]
    {
        let mut c = client(plain("x"));
        let run = run_whole(&mut c, &opt_script.0);
        assert_eq!(last_failure(&run), Some(Error::TlsRequired));
        let (_, opts) = parse_options(&run.sent);
        assert_eq!(opts.last().unwrap().0, 2, "ABORT sent");
    }
    let mut c = client(Config::new("x").unwrap());
    let run = run_whole(
        &mut c,
        &Script::new()
            .greeting(3)
            .opt(OptionType::EXTENDED_HEADERS, ReplyType::ERR_TLS_REQD, b"")
            .0,
    );
    assert_eq!(last_failure(&run), Some(Error::TlsRequired));
}

#[test]
fn list_mode_lists_and_aborts() {
    let mut config = Config::new("").unwrap();
    config.mode = Mode::List;
    let mut c = client(config.clone());
    let s = Script::new()
        .greeting(3)
        .server_entry("a", "")
        .server_entry("b", "the b disk")
        .ack(OptionType::LIST);
    let run = run_whole(&mut c, &s.0);
    assert_eq!(
        run.events,
        vec![
            Ev::ExportListed("a".into(), "".into()),
            Ev::ExportListed("b".into(), "the b disk".into()),
            Ev::Finished
        ]
    );
    let (_, opts) = parse_options(&run.sent);
    assert_eq!(opts, vec![(3, vec![]), (2, vec![])]);
    assert_eq!(c.handle_eof(), Ok(()));
}

#[test]
fn endless_list_is_one_event_per_entry_with_bounded_memory() {
    let mut config = Config::new("").unwrap();
    config.mode = Mode::List;
    let mut c = client(config.clone());
    let name = "n".repeat(4096);
    let mut s = Script::new().greeting(3);
    for _ in 0..2000 {
        s = s.server_entry(&name, &"d".repeat(4096));
    }
    let mut run = Run::default();
    feed(&mut c, &s.0, &[65536], &mut run);
    assert_eq!(run.events.len(), 2000);
    assert!(
        run.events
            .iter()
            .all(|e| matches!(e, Ev::ExportListed(n, d) if n.len() == 4096 && d.len() == 4096))
    );
    assert!(run.max_pending < 64, "nothing queued while listing");
    // A cap is the caller's policy: it just stops and closes.
    assert_eq!(c.handle_eof(), Err(Error::UnexpectedEof));
}

#[test]
fn oversized_list_replies_are_refused_unread() {
    let mut config = Config::new("").unwrap();
    config.mode = Mode::List;
    // A reply announcing 4 GiB.
    let mut c = client(config.clone());
    let mut s = Script::new().greeting(3);
    s = s
        .raw(&OPT_REPLY_MAGIC.to_be_bytes())
        .raw(&3u32.to_be_bytes())
        .raw(&2u32.to_be_bytes())
        .raw(&u32::MAX.to_be_bytes());
    let run = run_whole(&mut c, &s.0);
    assert_eq!(
        last_failure(&run),
        Some(Error::OptionReplyTooLong {
            option: OptionType::LIST,
            length: u32::MAX
        })
    );
    // A name longer than the reply.
    let mut c = client(config.clone());
    let mut d = 100u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"short");
    let run = run_whole(
        &mut c,
        &Script::new()
            .greeting(3)
            .opt(OptionType::LIST, ReplyType::SERVER, &d)
            .0,
    );
    assert_eq!(
        last_failure(&run),
        Some(Error::MalformedOptionReply {
            option: OptionType::LIST,
            reply: ReplyType::SERVER,
            cause: PayloadError::LengthPastEnd("export name"),
        })
    );
    // A name longer than 4096 bytes.
    let mut c = client(config.clone());
    let big = "x".repeat(4097);
    let run = run_whole(&mut c, &Script::new().greeting(3).server_entry(&big, "").0);
    assert!(matches!(
        last_failure(&run),
        Some(Error::MalformedOptionReply { .. })
    ));
    // A reply shorter than its name length field.
    let mut c = client(config.clone());
    let run = run_whole(
        &mut c,
        &Script::new()
            .greeting(3)
            .opt(OptionType::LIST, ReplyType::SERVER, &[0, 0])
            .0,
    );
    assert!(matches!(
        last_failure(&run),
        Some(Error::MalformedOptionReply { .. })
    ));
    // A non-UTF-8 name.
    let mut c = client(config.clone());
    let run = run_whole(
        &mut c,
        &Script::new()
            .greeting(3)
            .opt(OptionType::LIST, ReplyType::SERVER, &[0, 0, 0, 1, 0xff])
            .0,
    );
    assert_eq!(
        last_failure(&run),
        Some(Error::MalformedOptionReply {
            option: OptionType::LIST,
            reply: ReplyType::SERVER,
            cause: PayloadError::BadString("export name"),
        })
    );
    // A description over 4096 bytes (qemu's client refuses it too).
    let mut c = client(config.clone());
    let run = run_whole(
        &mut c,
        &Script::new()
            .greeting(3)
            .server_entry("a", &"d".repeat(4097))
            .0,
    );
    assert_eq!(
        last_failure(&run),
        Some(Error::MalformedOptionReply {
            option: OptionType::LIST,
            reply: ReplyType::SERVER,
            cause: PayloadError::BadString("export description"),
        })
    );
}

#[test]
fn info_mode_reports_export_and_contexts() {
    let mut config = Config::new("disk").unwrap();
    config.mode = Mode::Info;
    let mut c = client(config.clone());
    let s = Script::new()
        .greeting(3)
        .ack(OptionType::EXTENDED_HEADERS)
        .meta_context(OptionType::LIST_META_CONTEXT, 0, "base:allocation")
        .meta_context(OptionType::LIST_META_CONTEXT, 0, "qemu:allocation-depth")
        .ack(OptionType::LIST_META_CONTEXT)
        .info_string(OptionType::INFO, 2, "desc")
        .info_export(OptionType::INFO, 1 << 30, 1 | 2)
        .ack(OptionType::INFO);
    let run = run_whole(&mut c, &s.0);
    assert_eq!(run.events.len(), 5, "{:?}", run.events);
    assert_eq!(run.events[0], Ev::MetaContext(0, "base:allocation".into()));
    assert_eq!(run.events[2], Ev::Description("desc".into()));
    assert!(
        matches!(run.events[3], Ev::Info(e) if e.size == 1 << 30 && e.has(TransmissionFlags::READ_ONLY))
    );
    assert_eq!(run.events[4], Ev::Finished);
    let (_, opts) = parse_options(&run.sent);
    assert_eq!(
        opts.iter().map(|o| o.0).collect::<Vec<_>>(),
        vec![11, 9, 6, 2]
    );
    // LIST_META_CONTEXT with zero queries lists everything.
    assert_eq!(opts[1].1, [0, 0, 0, 4, b'd', b'i', b's', b'k', 0, 0, 0, 0]);
    assert_eq!(c.handle_eof(), Ok(()));
}

#[test]
fn export_of_2_pow_63_is_refused() {
    for size in [1u64 << 63, u64::MAX] {
        let mut c = client(plain("big"));
        let run = run_whole(
            &mut c,
            &Script::new()
                .greeting(3)
                .info_export(OptionType::GO, size, 1)
                .0,
        );
        assert_eq!(last_failure(&run), Some(Error::ExportTooLarge { size }));
        // Via EXPORT_NAME too.
        let mut c = client(plain("big"));
        let s = Script::new()
            .greeting(3)
            .opt(OptionType::GO, ReplyType::ERR_UNSUP, b"")
            .raw(&size.to_be_bytes())
            .raw(&[0, 1]);
        let run = run_whole(&mut c, &s.0);
        assert_eq!(last_failure(&run), Some(Error::ExportTooLarge { size }));
    }
    let mut c = client(plain("big"));
    let s = Script::new()
        .greeting(3)
        .info_export(OptionType::GO, (1 << 63) - 1, 1)
        .ack(OptionType::GO);
    assert!(matches!(run_whole(&mut c, &s.0).events[0], Ev::Ready(_)));
}

#[test]
fn server_dying_mid_go_is_an_error() {
    let full = Script::new()
        .greeting(3)
        .info_export(OptionType::GO, 4096, 1)
        .ack(OptionType::GO);
    // Every truncation short of the full handshake.
    for cut in 0..full.0.len() {
        let mut c = client(plain("d"));
        let run = run_whole(&mut c, &full.0[..cut]);
        assert!(run.events.is_empty(), "cut {cut}: {:?}", run.events);
        assert_eq!(c.handle_eof(), Err(Error::UnexpectedEof), "cut {cut}");
        assert!(c.is_closed());
        assert!(c.read(0, 512, CommandFlags::empty()).is_err());
    }
}

#[test]
fn handshake_refusals_are_typed() {
    let cases = [
        (ReplyType::ERR_UNKNOWN, Error::UnknownExport),
        (ReplyType::ERR_SHUTDOWN, Error::ServerShutdown),
        (
            ReplyType::ERR_BLOCK_SIZE_REQD,
            Error::OptionFailed {
                option: OptionType::GO,
                reply: ReplyType::ERR_BLOCK_SIZE_REQD,
            },
        ),
        (
            ReplyType(0x8000_1234),
            Error::OptionFailed {
                option: OptionType::GO,
                reply: ReplyType(0x8000_1234),
            },
        ),
    ];
    for (reply, err) in cases {
        let mut c = client(plain("d"));
        let run = run_whole(
            &mut c,
            &Script::new()
                .greeting(3)
                .opt(OptionType::GO, reply, b"msg")
                .0,
        );
        assert_eq!(last_failure(&run), Some(err));
        let (_, opts) = parse_options(&run.sent);
        assert_eq!(opts.last().unwrap().0, 2, "soft disconnect with ABORT");
    }
}

#[test]
fn malformed_handshake_replies_are_fatal() {
    let bad: Vec<(Script, Error)> = vec![
        (
            Script::new().greeting(3).ack(OptionType::GO).raw(&[]),
            Error::MissingExportInfo,
        ),
        (
            Script::new().greeting(3).ack(OptionType::LIST),
            Error::UnexpectedOptionReply {
                option: OptionType::GO,
                reply: ReplyType::ACK,
            },
        ),
        (
            Script::new()
                .greeting(3)
                .opt(OptionType::GO, ReplyType::ACK, b"x"),
            Error::MalformedOptionReply {
                option: OptionType::GO,
                reply: ReplyType::ACK,
                cause: PayloadError::BadLength("NBD_REP_ACK"),
            },
        ),
        (
            Script::new().greeting(3).server_entry("x", ""),
            Error::UnexpectedOptionReply {
                option: OptionType::GO,
                reply: ReplyType::SERVER,
            },
        ),
        (
            Script::new()
                .greeting(3)
                .opt(OptionType::GO, ReplyType::INFO, &[0]),
            Error::MalformedOptionReply {
                option: OptionType::GO,
                reply: ReplyType::INFO,
                cause: PayloadError::Short("information type"),
            },
        ),
        (
            Script::new()
                .greeting(3)
                .opt(OptionType::GO, ReplyType::INFO, &[0, 0, 1]),
            Error::MalformedOptionReply {
                option: OptionType::GO,
                reply: ReplyType::INFO,
                cause: PayloadError::BadLength("NBD_INFO_EXPORT"),
            },
        ),
        (
            Script::new()
                .greeting(3)
                .info_block_size(OptionType::GO, 3, 4096, 1 << 20),
            Error::InvalidBlockSize {
                minimum: 3,
                preferred: 4096,
                maximum: 1 << 20,
            },
        ),
        (
            Script::new()
                .greeting(3)
                .info_block_size(OptionType::GO, 1 << 17, 1 << 17, 1 << 20),
            Error::InvalidBlockSize {
                minimum: 1 << 17,
                preferred: 1 << 17,
                maximum: 1 << 20,
            },
        ),
        (
            Script::new().greeting(3).raw(&[0; 20]),
            Error::BadOptionReplyMagic { found: 0 },
        ),
    ];
    for (s, err) in bad {
        let mut c = client(plain("d"));
        let run = run_whole(&mut c, &s.0);
        assert_eq!(last_failure(&run), Some(err));
    }
}

#[test]
fn duplicate_or_too_many_contexts() {
    let contexts = ["base:allocation"];
    let mut config = Config::new("d").unwrap();
    config.extended_headers = false;
    for q in contexts {
        config.add_meta_context(q).unwrap();
    }
    let mut c = client(config.clone());
    let s = Script::new()
        .greeting(3)
        .ack(OptionType::STRUCTURED_REPLY)
        .meta_context(OptionType::SET_META_CONTEXT, 1, "base:allocation")
        .meta_context(OptionType::SET_META_CONTEXT, 1, "base:allocation");
    assert_eq!(
        last_failure(&run_whole(&mut c, &s.0)),
        Some(Error::DuplicateContext { id: 1 })
    );
    let mut c = client(config.clone());
    let mut s = Script::new().greeting(3).ack(OptionType::STRUCTURED_REPLY);
    for i in 0..17 {
        s = s.meta_context(OptionType::SET_META_CONTEXT, i, "x:y");
    }
    assert_eq!(
        last_failure(&run_whole(&mut c, &s.0)),
        Some(Error::TooManyContexts)
    );
}

#[test]
fn handshake_timeout() {
    let mut config = plain("d");
    config.handshake_timeout = Some(Duration::from_secs(5));
    let mut c: Client = Client::new(config.clone(), Instant(1_000));
    assert_eq!(c.poll_timeout(), Some(Instant(5_000_001_000)));
    assert!(c.handle_timeout(Instant(5_000_000_999)).is_none());
    assert!(c.handle_timeout(Instant(5_000_001_000)).is_some());
    assert_eq!(c.handle_eof(), Err(Error::Timeout));
    // No deadline in transmission.
    let mut c: Client = Client::new(config, Instant(0));
    run_whole(
        &mut c,
        &Script::new()
            .greeting(3)
            .info_export(OptionType::GO, 512, 1)
            .ack(OptionType::GO)
            .0,
    );
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn config_is_validated() {
    let long = "x".repeat(4097);
    assert_eq!(
        Config::new(&long).unwrap_err(),
        ConfigError::ExportNameTooLong
    );
    let mut c = Config::new("").unwrap();
    for _ in 0..16 {
        c.add_meta_context("a:b").unwrap();
    }
    assert_eq!(c.add_meta_context("a:b"), Err(ConfigError::TooManyContexts));
    assert_eq!(c.meta_contexts().count(), 16);
}

/// The largest configuration there is — a 4096-byte export name and every
/// byte of `QUERY_BYTES` in 16 queries — goes out whole: the output queue
/// is sized for it (an undersized queue panics in debug builds).
#[test]
fn the_largest_config_fits_the_output_queue() {
    use blockwire_core::client::{MAX_CONTEXTS, QUERY_BYTES, TRANSMIT_BUFFER};
    let name = "n".repeat(4096);
    let each = QUERY_BYTES / MAX_CONTEXTS;
    let queries: Vec<String> = (0..MAX_CONTEXTS)
        .map(|i| format!("{i:x}:{}", "q".repeat(each - 2)))
        .collect();
    for mode in [Mode::Go, Mode::Info] {
        let mut config = Config::new(&name).unwrap();
        config.mode = mode;
        for q in &queries {
            config.add_meta_context(q).unwrap();
        }
        let mut c = client(config);
        let s = Script::new().greeting(3).ack(OptionType::EXTENDED_HEADERS);
        let run = run_whole(&mut c, &s.0);
        assert!(run.max_pending <= TRANSMIT_BUFFER);
        let (_, opts) = parse_options(&run.sent);
        let refs: Vec<&str> = queries.iter().map(String::as_str).collect();
        assert_eq!(opts[1].1, meta_payload(&name, &refs), "{mode:?}");
        // Then GO (or INFO) with the long name.
        let option = match mode {
            Mode::Info => OptionType::LIST_META_CONTEXT,
            _ => OptionType::SET_META_CONTEXT,
        };
        let run = run_whole(&mut c, &Script::new().ack(option).0);
        let (_, opts) = parse_options(&[&[0; 4][..], &run.sent].concat());
        assert_eq!(opts[0].1, go_payload(&name, &[1, 2, 3]));
    }
}

/// The handshake is a conversation: no reply is read while the request it
/// answers has not been sent.
#[test]
fn no_input_is_taken_while_a_request_waits() {
    let mut c = client(plain("d"));
    let s = Script::new()
        .greeting(3)
        .info_export(OptionType::GO, 4096, 1)
        .ack(OptionType::GO);
    let p = c.handle_input(&s.0);
    assert_eq!((p.consumed, p.event.is_none()), (18, true));
    let rest = &s.0[18..];
    assert!(c.pending_transmit() > 0, "flags and GO queued");
    let p = c.handle_input(rest);
    assert_eq!((p.consumed, p.event.is_none()), (0, true));
    // Sent in part: still waiting.
    c.transmitted(4);
    assert_eq!(c.handle_input(rest).consumed, 0);
    let mut run = Run::default();
    drain(&mut c, &mut run);
    let run = run_whole(&mut c, rest);
    assert!(matches!(run.events[..], [Ev::Ready(_)]), "{:?}", run.events);
}

/// Every error a user may see reads as a sentence in the spec's terms, not
/// as a Rust value.
#[test]
fn errors_display_for_people() {
    use blockwire_core::client::{ConfigError, RequestFailure};
    use blockwire_core::wire::{ChunkType, CommandType, Errno};
    let errors: Vec<Box<dyn std::error::Error>> = vec![
        Box::new(Error::UnexpectedOptionReply {
            option: OptionType::GO,
            reply: ReplyType::SERVER,
        }),
        Box::new(Error::MalformedOptionReply {
            option: OptionType::LIST,
            reply: ReplyType::SERVER,
            cause: PayloadError::LengthPastEnd("export name"),
        }),
        Box::new(Error::OptionFailed {
            option: OptionType(99),
            reply: ReplyType(0x8000_0063),
        }),
        Box::new(Error::UnexpectedChunk {
            cookie: 7,
            chunk: ChunkType::OFFSET_HOLE,
            command: CommandType::WRITE,
        }),
        Box::new(RequestError::TooLong),
        Box::new(RequestError::InvalidFlags),
        Box::new(RequestFailure::Server(Errno::ENOSPC)),
        Box::new(RequestFailure::Incomplete),
        Box::new(ConfigError::ContextQueriesTooLong),
        Box::new(ConfigError::ExportNameTooLong),
    ];
    let texts: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(texts[0], "unexpected NBD_REP_SERVER in reply to NBD_OPT_GO");
    assert_eq!(
        texts[1],
        "malformed NBD_REP_SERVER in reply to NBD_OPT_LIST: \
         export name length exceeds the payload length"
    );
    assert_eq!(texts[2], "option 99 failed: reply type 0x80000063");
    assert_eq!(
        texts[3],
        "unexpected NBD_REPLY_TYPE_OFFSET_HOLE chunk for NBD_CMD_WRITE (cookie 7)"
    );
    assert_eq!(texts[6], "server error ENOSPC");
    for t in &texts {
        assert!(
            !t.contains('{') && !t.contains("(\"") && !t.contains("Some("),
            "reads like a Debug value: {t}"
        );
    }
}

/// The `EXPORT_NAME` fallback in any split, its padding arriving alone
/// included.
#[test]
fn export_name_fallback_in_pieces() {
    let s = Script::new()
        .greeting(1)
        .opt(OptionType::GO, ReplyType::ERR_UNSUP, b"")
        .raw(&(8192u64).to_be_bytes())
        .raw(&3u16.to_be_bytes())
        .raw(&[0; 124]);
    let mut whole = client(plain("old"));
    let expected = run_whole(&mut whole, &s.0).events;
    assert!(
        matches!(expected.last(), Some(Ev::Ready(_))),
        "{expected:?}"
    );
    // 18 + 20 + 10 puts the padding in a piece of its own.
    for sizes in [&[1][..], &[7, 3], &[18, 20, 10, 124], &[48, 1]] {
        let mut c = client(plain("old"));
        let mut run = Run::default();
        feed(&mut c, &s.0, sizes, &mut run);
        assert_eq!(run.events, expected, "{sizes:?}");
        assert!(c.is_ready());
    }
}
