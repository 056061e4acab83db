//! Writes the synthetic seed corpora to `fuzz/seeds/<target>/`: valid
//! sessions for every target that takes raw bytes, in the targets' input
//! formats. Run with `cargo +nightly test --test seeds -- --ignored`.

use std::path::PathBuf;

use blockwire_core::wire::*;
use blockwire_fuzz::client::replies_setup;
use blockwire_fuzz::scripts::*;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// Header: configuration byte and split sizes (whole input by default).
fn with_header(cfg: u8, splits: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut v = vec![cfg];
    v.extend_from_slice(&splits);
    v.extend_from_slice(body);
    v
}

const WHOLE: [u8; 4] = [0, 0, 0, 0];
const ODD: [u8; 4] = [1, 7, 3, 29];

fn requests(mode: HeaderMode, contexts: bool) -> Vec<u8> {
    let ext = mode == HeaderMode::Extended;
    let mut v = Vec::new();
    v.extend(request(mode, 0, CommandType::READ, 1, 0, 4096));
    let wflags = if ext { 0x20 | 1 } else { 1 };
    v.extend(request(mode, wflags, CommandType::WRITE, 2, 4096, 512));
    v.extend(std::iter::repeat_n(0xAB, 512));
    v.extend(request(mode, 0, CommandType::FLUSH, 3, 0, 0));
    v.extend(request(mode, 0, CommandType::TRIM, 4, 8192, 4096));
    v.extend(request(mode, 2, CommandType::WRITE_ZEROES, 5, 16384, 4096));
    v.extend(request(mode, 0, CommandType::CACHE, 6, 0, 65536));
    if contexts {
        v.extend(request(mode, 0, CommandType::BLOCK_STATUS, 7, 0, 1 << 20));
        v.extend(request(mode, 8, CommandType::BLOCK_STATUS, 8, 4096, 4096));
        if ext {
            // Block status with a payload naming context 0.
            v.extend(request(mode, 0x20, CommandType::BLOCK_STATUS, 9, 0, 12));
            v.extend(65536u64.to_be_bytes());
            v.extend(0u32.to_be_bytes());
        }
    }
    // A bad request (past the end), then a disconnect.
    v.extend(request(mode, 0, CommandType::READ, 10, 1 << 20, 512));
    v.extend(request(mode, 0, CommandType::DISC, 11, 0, 0));
    v
}

#[test]
#[ignore]
fn write_seeds() {
    // ---- server_handshake ---------------------------------------------
    let flags = 3u32.to_be_bytes().to_vec();
    let go = |name: &str| opt(OptionType::GO, &go_payload(name, &[InfoType::BLOCK_SIZE.0]));
    let mut s = flags.clone();
    s.extend(go("disk"));
    write("server_handshake", "go", &with_header(0, WHOLE, &s));
    write("server_handshake", "go_split", &with_header(0, ODD, &s));
    let mut s = flags.clone();
    s.extend(opt(OptionType::STRUCTURED_REPLY, &[]));
    s.extend(opt(
        OptionType::LIST_META_CONTEXT,
        &meta_payload("disk", &["base:", "qemu:dirty-bitmap:"]),
    ));
    s.extend(opt(
        OptionType::SET_META_CONTEXT,
        &meta_payload("disk", &["base:allocation", "qemu:allocation-depth"]),
    ));
    s.extend(go("disk"));
    s.extend(requests(HeaderMode::Structured, true));
    write(
        "server_handshake",
        "structured_meta_go",
        &with_header(0, WHOLE, &s),
    );
    let mut s = flags.clone();
    s.extend(opt(OptionType::EXTENDED_HEADERS, &[]));
    s.extend(opt(
        OptionType::SET_META_CONTEXT,
        &meta_payload("disk", &["base:allocation"]),
    ));
    s.extend(go("disk"));
    write(
        "server_handshake",
        "extended_go",
        &with_header(0, WHOLE, &s),
    );
    let mut s = flags.clone();
    s.extend(opt(OptionType::LIST, &[]));
    s.extend(opt(
        OptionType::INFO,
        &go_payload(
            "bs",
            &[
                InfoType::NAME.0,
                InfoType::DESCRIPTION.0,
                InfoType::BLOCK_SIZE.0,
            ],
        ),
    ));
    s.extend(opt(OptionType::INFO, &go_payload("nope", &[])));
    s.extend(opt(OptionType(99), b"junk"));
    s.extend(opt(OptionType::ABORT, &[]));
    write(
        "server_handshake",
        "list_info_abort",
        &with_header(0, WHOLE, &s),
    );
    let mut s = 1u32.to_be_bytes().to_vec();
    s.extend(opt(OptionType::EXPORT_NAME, b"disk"));
    write(
        "server_handshake",
        "export_name",
        &with_header(0, WHOLE, &s),
    );
    let mut s = 0u32.to_be_bytes().to_vec();
    s.extend(opt(OptionType::EXPORT_NAME, b""));
    write(
        "server_handshake",
        "export_name_old",
        &with_header(0, WHOLE, &s),
    );
    let mut s = flags.clone();
    s.extend(opt(OptionType::STARTTLS, &[]));
    s.extend(go("disk"));
    write(
        "server_handshake",
        "starttls_go",
        &with_header(2, WHOLE, &s),
    );
    write(
        "server_handshake",
        "starttls_inject",
        &with_header(0x21, WHOLE, &s),
    );

    // ---- server_transmission --------------------------------------------
    for (cfg, name) in [
        (0u8, "simple"),
        (1, "structured"),
        (2, "extended"),
        (0x11, "structured_ctx"),
        (0x12, "extended_ctx"),
        (0x19, "bs_structured_ctx"),
        (0x04, "ro_simple"),
        (0x52, "extended_ctx_skip"),
    ] {
        let mode = transmission_mode(cfg);
        let body = requests(mode, cfg & 0x10 != 0);
        write("server_transmission", name, &with_header(cfg, WHOLE, &body));
    }
    write(
        "server_transmission",
        "structured_split",
        &with_header(0x11, ODD, &requests(HeaderMode::Structured, true)),
    );

    // ---- client_negotiation ---------------------------------------------
    for (cfg, name, mode) in [
        (0u8, "go_simple", HeaderMode::Simple),
        (0x04, "go_structured", HeaderMode::Structured),
        (0x0c, "go_extended", HeaderMode::Extended),
    ] {
        let s = client_handshake_script(mode, &[]);
        write("client_negotiation", name, &with_header(cfg, WHOLE, &s.0));
    }
    let s = client_handshake_script(HeaderMode::Structured, CLIENT_CONTEXTS);
    write(
        "client_negotiation",
        "go_contexts",
        &with_header(0x44, WHOLE, &s.0),
    );
    write(
        "client_negotiation",
        "go_contexts_split",
        &with_header(0x44, ODD, &s.0),
    );
    let s = Script::new()
        .greeting(3)
        .ack(OptionType::STARTTLS)
        .ack(OptionType::STRUCTURED_REPLY)
        .info_export(OptionType::GO, 1 << 20, ALL_FLAGS)
        .info_string(OptionType::GO, 1, "disk")
        .info_string(OptionType::GO, 2, "a disk")
        .ack(OptionType::GO);
    write(
        "client_negotiation",
        "starttls_go",
        &with_header(0x06, WHOLE, &s.0),
    );
    let s = Script::new()
        .greeting(3)
        .ack(OptionType::STRUCTURED_REPLY)
        .info_export(OptionType::INFO, 1 << 20, ALL_FLAGS)
        .info_block_size(OptionType::INFO, 512, 4096, 1 << 25)
        .ack(OptionType::INFO)
        .meta_context(OptionType::LIST_META_CONTEXT, 0, "base:allocation")
        .ack(OptionType::LIST_META_CONTEXT);
    write(
        "client_negotiation",
        "info",
        &with_header(0x14, WHOLE, &s.0),
    );
    let s = Script::new()
        .greeting(3)
        .server_entry("disk", "the disk")
        .server_entry("other", "")
        .ack(OptionType::LIST);
    write(
        "client_negotiation",
        "list",
        &with_header(0x20, WHOLE, &s.0),
    );
    // GO unsupported: fall back to EXPORT_NAME (size, flags, 124 zeroes).
    let mut s = Script::new()
        .greeting(1)
        .opt(OptionType::GO, ReplyType::ERR_UNSUP, b"no GO")
        .raw(&(1u64 << 20).to_be_bytes())
        .raw(&ALL_FLAGS.to_be_bytes());
    s.0.extend(std::iter::repeat_n(0, 124));
    write(
        "client_negotiation",
        "export_name_fallback",
        &with_header(0, WHOLE, &s.0),
    );

    // ---- client_replies -------------------------------------------------
    // Requests: read 4 KiB at 0, write 1 KiB at 8 KiB, flush, trim, zero,
    // cache, block status 8 KiB at 0.
    let spec: Vec<u8> = vec![
        0, 0, 0, 7, 0, //
        1, 0, 16, 1, 0, //
        2, 0, 0, 0, 0, //
        3, 0, 32, 7, 0, //
        4, 0, 48, 7, 2, //
        5, 0, 0, 15, 0, //
        6, 0, 0, 15, 0, //
    ];
    for (cfg, name) in [
        (0u8, "simple"),
        (1, "structured"),
        (2, "extended"),
        (5, "structured_ctx"),
        (6, "extended_ctx"),
    ] {
        let (_d, reqs) = replies_setup(cfg, &spec);
        let mode = match cfg & 3 {
            0 => HeaderMode::Simple,
            1 => HeaderMode::Structured,
            _ => HeaderMode::Extended,
        };
        let mut s = Script::new();
        for &(cookie, kind, offset, len) in &reqs {
            let c = cookie.0;
            if mode == HeaderMode::Simple {
                let data = if kind == 0 {
                    vec![0x5a; len as usize]
                } else {
                    Vec::new()
                };
                s = s.simple(c, 0, &data);
                continue;
            }
            match kind {
                0 => {
                    let half = len / 2;
                    s = s
                        .any_chunk(
                            mode,
                            0,
                            1,
                            c,
                            offset,
                            &data_payload(offset, &vec![0x5a; half as usize]),
                        )
                        .any_chunk(
                            mode,
                            0,
                            2,
                            c,
                            offset,
                            &hole_payload(offset + u64::from(half), len - half),
                        )
                        .any_chunk(mode, 1, 0, c, offset, &[]);
                }
                6 => {
                    for id in [1u32, 2] {
                        let done = if id == 2 { 1 } else { 0 };
                        if mode == HeaderMode::Extended {
                            let p = status64(id, &[(4096, 0), (u64::from(len) - 4096, 3)]);
                            s = s.ext_chunk(done, 6, c, offset, &p);
                        } else {
                            let p = status32(id, &[(4096, 0), (len - 4096, 3)]);
                            s = s.chunk(done, 5, c, &p);
                        }
                    }
                }
                3 => {
                    s = s.any_chunk(
                        mode,
                        1,
                        0x8002,
                        c,
                        offset,
                        &error_payload(5, "io error", Some(offset)),
                    );
                }
                _ if mode == HeaderMode::Extended => s = s.ext_chunk(1, 0, c, offset, &[]),
                _ => s = s.simple(c, 0, &[]),
            }
        }
        let mut body = vec![(spec.len() / 5 - 1) as u8];
        body.extend_from_slice(&spec);
        body.extend_from_slice(&s.0);
        write("client_replies", name, &with_header(cfg, WHOLE, &body));
        write(
            "client_replies",
            &format!("{name}_split"),
            &with_header(cfg, ODD, &body),
        );
    }

    // ---- wire_roundtrip -------------------------------------------------
    let mut w = vec![8u8];
    w.extend(request(
        HeaderMode::Simple,
        1,
        CommandType::WRITE,
        7,
        4096,
        512,
    ));
    write("wire_roundtrip", "compact_request", &w);
    let mut w = vec![9u8];
    w.extend(request(
        HeaderMode::Extended,
        0x20,
        CommandType::WRITE,
        7,
        4096,
        512,
    ));
    write("wire_roundtrip", "extended_request", &w);
    let mut w = vec![22u8, 2, 0x80];
    w.extend(7u64.to_be_bytes());
    w.extend(0u16.to_be_bytes());
    w.extend(4096u64.to_be_bytes());
    w.extend(512u64.to_be_bytes());
    w.extend(512u32.to_be_bytes());
    w.extend(b"error message");
    write("wire_roundtrip", "replies_extended", &w);
}

/// The committed seeds are what they claim: valid sessions that reach the
/// interesting states (run by `cargo +nightly test` in fuzz/).
#[test]
fn seeds_are_valid_sessions() {
    use blockwire_core::server::ServerConfig;
    use blockwire_fuzz::server::ServerDriver;
    use blockwire_fuzz::{Splitter, TestExports, split_header};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for e in std::fs::read_dir(dir.join("client_replies")).unwrap() {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        let (cfg, sizes, rest) = split_header(&data).unwrap();
        let n = (rest[0] as usize % 8 + 1) * 5;
        let (spec, bytes) = rest[1..].split_at(n);
        let (mut d, reqs) = replies_setup(cfg, spec);
        for p in Splitter::new(bytes, sizes) {
            d.feed(p);
        }
        assert!(d.failed.is_none(), "{:?}", d.failed);
        assert_eq!(d.completed, reqs.len());
        assert!(d.completed_ok + 1 >= reqs.len(), "only the trim fails");
    }
    for e in std::fs::read_dir(dir.join("server_transmission")).unwrap() {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let (cfg, sizes, bytes) = split_header(&data).unwrap();
        let mut d = ServerDriver::new(TestExports::standard(), ServerConfig::default());
        d.skip_payloads = cfg & 0x40 != 0;
        for p in Splitter::new(&transmission_prefix(cfg), sizes) {
            d.feed(p);
        }
        assert!(d.session.is_some());
        for p in Splitter::new(bytes, sizes) {
            d.feed(p);
        }
        assert!(d.closed, "{path:?} did not reach the disconnect");
        assert!(d.requests >= 2, "{path:?}: {} requests", d.requests);
    }
}
