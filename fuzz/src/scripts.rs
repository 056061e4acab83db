//! Byte builders for both sides of the protocol (as in `core/tests`), used
//! for the fixed handshake prefixes and the seed corpora.

use blockwire_core::wire::*;

include!("../../core/tests/common/bytes.rs");

// ---- client → server ------------------------------------------------------

pub fn request(
    mode: HeaderMode,
    flags: u16,
    cmd: CommandType,
    cookie: u64,
    offset: u64,
    len: u64,
) -> Vec<u8> {
    let mut v = Vec::new();
    if mode == HeaderMode::Extended {
        v.extend_from_slice(&EXTENDED_REQUEST_MAGIC.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&cmd.0.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
    } else {
        v.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&cmd.0.to_be_bytes());
        v.extend_from_slice(&cookie.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&(len as u32).to_be_bytes());
    }
    v
}

/// Export picked by bits of a server_transmission configuration byte.
pub fn transmission_export(cfg: u8) -> &'static str {
    match (cfg >> 2) & 3 {
        1 => "ro",
        2 => "bs",
        _ => "disk",
    }
}

pub fn transmission_mode(cfg: u8) -> HeaderMode {
    match cfg & 3 {
        0 => HeaderMode::Simple,
        1 => HeaderMode::Structured,
        _ => HeaderMode::Extended,
    }
}

/// The fixed client handshake prefix of `server_transmission`: flags
/// (fixed newstyle, no zeroes), the header mode's option, contexts if asked
/// (and structured), and `GO` with a block size request.
pub fn transmission_prefix(cfg: u8) -> Vec<u8> {
    let mode = transmission_mode(cfg);
    let export = transmission_export(cfg);
    let mut v = 3u32.to_be_bytes().to_vec();
    match mode {
        HeaderMode::Simple => {}
        HeaderMode::Structured => v.extend(opt(OptionType::STRUCTURED_REPLY, &[])),
        HeaderMode::Extended => v.extend(opt(OptionType::EXTENDED_HEADERS, &[])),
    }
    if cfg & 0x10 != 0 && mode != HeaderMode::Simple {
        let q: &[&str] = if export == "disk" {
            &["base:allocation", "qemu:dirty-bitmap:"]
        } else {
            &["base:allocation"]
        };
        v.extend(opt(OptionType::SET_META_CONTEXT, &meta_payload(export, q)));
    }
    v.extend(opt(
        OptionType::GO,
        &go_payload(export, &[InfoType::BLOCK_SIZE.0]),
    ));
    v
}

// ---- server → client ------------------------------------------------------

/// Flags of the export in client scripts: HAS_FLAGS, FLUSH, FUA, TRIM,
/// WRITE_ZEROES, DF, CACHE, FAST_ZERO.
pub const ALL_FLAGS: u16 = 1 | 4 | 8 | 32 | 64 | 128 | 1024 | 2048;

/// Contexts the client targets ask for.
pub const CLIENT_CONTEXTS: &[&str] = &["base:allocation", "qemu:dirty-bitmap:b"];

/// Size of the export the client scripts describe.
pub const CLIENT_EXPORT_SIZE: u64 = 1 << 20;

/// Server handshake script for `GO` in `mode`, contexts with ids 1, 2, ...
pub fn client_handshake_script(mode: HeaderMode, contexts: &[&str]) -> Script {
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
    s.info_export(OptionType::GO, CLIENT_EXPORT_SIZE, ALL_FLAGS)
        .info_block_size(OptionType::GO, 512, 4096, 1 << 25)
        .ack(OptionType::GO)
}
