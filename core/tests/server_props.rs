//! Properties of the server machine under arbitrary input.

mod common;

use blockwire_core::server::{Event, Server, ServerConfig, TRANSMIT_BUFFER, TlsPolicy};
use blockwire_core::time::Instant;
use blockwire_core::wire::*;
use common::*;
use proptest::prelude::*;

/// Drive the documented loop over `input` cut at `cuts`; return bytes sent.
fn drive(config: ServerConfig, prefix: &[u8], input: &[u8], cuts: &[usize]) -> usize {
    drive_counting(config, prefix, input, cuts).0
}

/// As `drive`, also counting answers (Request or Reject events) and
/// whether the connection ended.
fn drive_counting(
    config: ServerConfig,
    prefix: &[u8],
    input: &[u8],
    cuts: &[usize],
) -> (usize, usize, bool) {
    let mut answers = 0usize;
    let mut server = Server::new(TestExports::standard(), config, Instant(0));
    let mut buf: Vec<u8> = Vec::new();
    let mut sent = 0usize;
    let mut pieces: Vec<&[u8]> = vec![prefix];
    let mut last = 0;
    for &c in cuts {
        let c = c.min(input.len());
        if c > last {
            pieces.push(&input[last..c]);
            last = c;
        }
    }
    pieces.push(&input[last..]);
    let mut steps = 0usize;
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            steps += 1;
            assert!(steps < 10_000_000, "machine does not make progress");
            loop {
                let out = server.poll_transmit();
                assert!(out.len() <= TRANSMIT_BUFFER);
                if out.is_empty() {
                    break;
                }
                sent += out.len();
                let n = out.len();
                server.transmitted(n);
            }
            let p = server.handle_input(&buf);
            let consumed = p.consumed;
            assert!(consumed <= buf.len());
            let ev = p.event.is_some();
            if matches!(
                p.event,
                Some(Event::Request(_)) | Some(Event::Reject { .. })
            ) {
                answers += 1;
            }
            if let Some(Event::StartTls) = p.event {
                buf.drain(..consumed);
                server.tls_established();
                continue;
            }
            buf.drain(..consumed);
            if !ev && consumed == 0 && server.poll_transmit().is_empty() {
                break;
            }
        }
    }
    (sent, answers, server.is_closed())
}

fn handshake_prefix() -> Vec<u8> {
    let mut v = 3u32.to_be_bytes().to_vec();
    v.extend_from_slice(&opt(OptionType::STRUCTURED_REPLY, &[]));
    v.extend_from_slice(&opt(OptionType::GO, &go_payload("disk", &[])));
    v
}

fn option_stream() -> impl Strategy<Value = Vec<u8>> {
    // Options that are well framed but otherwise arbitrary: these reach deep
    // into the option parsers instead of dying at the magic check.
    let one = (0u32..14, prop::collection::vec(any::<u8>(), 0..64))
        .prop_map(|(o, d)| opt(OptionType(o), &d));
    prop::collection::vec(one, 0..12).prop_map(|v| {
        let mut out = 3u32.to_be_bytes().to_vec();
        for o in v {
            out.extend_from_slice(&o);
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_handshake_bytes_never_panic(
        input in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in prop::collection::vec(0usize..2048, 0..8),
        tls in 0u8..3,
    ) {
        let config = ServerConfig {
            tls: [TlsPolicy::Off, TlsPolicy::Allowed, TlsPolicy::Required][tls as usize],
            ..ServerConfig::default()
        };
        let sent = drive(config, &[], &input, &cuts);
        // Bounded output: a reply per option, each bounded, and options need
        // at least 16 bytes of input each.
        prop_assert!(sent <= 18 + (input.len() / 16 + 1) * TRANSMIT_BUFFER);
    }

    #[test]
    fn framed_options_never_panic(input in option_stream(), cuts in prop::collection::vec(0usize..1024, 0..8)) {
        drive(ServerConfig::default(), &[], &input, &cuts);
    }

    #[test]
    fn arbitrary_transmission_bytes_never_panic(
        input in prop::collection::vec(any::<u8>(), 0..4096),
        cuts in prop::collection::vec(0usize..4096, 0..8),
    ) {
        let sent = drive(ServerConfig::default(), &handshake_prefix(), &input, &cuts);
        // Transmission-phase input never produces handshake output.
        prop_assert!(sent < 4096);
    }

    #[test]
    fn framed_requests_never_panic(
        reqs in prop::collection::vec((0u16..10, 0u16..64, any::<u64>(), 0u64..(1 << 21), 0u32..5000), 0..16),
        extended in any::<bool>(),
    ) {
        let mode = if extended { HeaderMode::Extended } else { HeaderMode::Structured };
        let mut prefix = 3u32.to_be_bytes().to_vec();
        prefix.extend_from_slice(&opt(if extended { OptionType::EXTENDED_HEADERS } else { OptionType::STRUCTURED_REPLY }, &[]));
        prefix.extend_from_slice(&opt(OptionType::SET_META_CONTEXT, &meta_payload("disk", &["base:allocation"])));
        prefix.extend_from_slice(&opt(OptionType::GO, &go_payload("disk", &[])));
        let mut input = Vec::new();
        let mut expected = 0;
        let mut disc = false;
        for (cmd, flags, cookie, off, len) in reqs {
            let flags = CommandFlags::from_bits_retain(flags);
            input.extend_from_slice(&request(mode, flags, CommandType(cmd), cookie, off, len as u64));
            let has_payload = cmd == 1 || (extended && flags.contains(CommandFlags::PAYLOAD_LEN));
            if has_payload {
                input.extend(std::iter::repeat_n(0xab, len as usize));
            }
            if cmd == 2 {
                disc = true;
            }
            if !disc {
                expected += 1;
            }
        }
        let (_, answers, closed) = drive_counting(ServerConfig::default(), &prefix, &input, &[]);
        // Every request before DISC gets exactly one answer: the stream
        // never desynchronises, whatever the flags and lengths.
        prop_assert_eq!(answers, expected);
        prop_assert_eq!(closed, disc);
    }
}
