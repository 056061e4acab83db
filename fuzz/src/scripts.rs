//! Byte builders for both sides of the protocol (as in `core/tests`), used
//! for the fixed handshake prefixes and the seed corpora.

use blockwire_core::wire::*;

// ---- client → server ------------------------------------------------------

pub fn opt(option: OptionType, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&option.0.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

pub fn go_payload(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

pub fn meta_payload(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(export.len() as u32).to_be_bytes());
    v.extend_from_slice(export.as_bytes());
    v.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        v.extend_from_slice(&(q.len() as u32).to_be_bytes());
        v.extend_from_slice(q.as_bytes());
    }
    v
}

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

/// Server bytes under construction.
#[derive(Default, Clone)]
pub struct Script(pub Vec<u8>);

impl Script {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }

    pub fn greeting(self, flags: u16) -> Self {
        self.raw(b"NBDMAGICIHAVEOPT").raw(&flags.to_be_bytes())
    }

    pub fn opt(self, option: OptionType, reply: ReplyType, data: &[u8]) -> Self {
        self.raw(&OPTION_REPLY_MAGIC.to_be_bytes())
            .raw(&option.0.to_be_bytes())
            .raw(&reply.0.to_be_bytes())
            .raw(&(data.len() as u32).to_be_bytes())
            .raw(data)
    }

    pub fn ack(self, option: OptionType) -> Self {
        self.opt(option, ReplyType::ACK, &[])
    }

    pub fn info_export(self, option: OptionType, size: u64, flags: u16) -> Self {
        let mut d = vec![0, 0];
        d.extend_from_slice(&size.to_be_bytes());
        d.extend_from_slice(&flags.to_be_bytes());
        self.opt(option, ReplyType::INFO, &d)
    }

    pub fn info_block_size(self, option: OptionType, min: u32, pref: u32, max: u32) -> Self {
        let mut d = vec![0, 3];
        for v in [min, pref, max] {
            d.extend_from_slice(&v.to_be_bytes());
        }
        self.opt(option, ReplyType::INFO, &d)
    }

    pub fn info_string(self, option: OptionType, ty: u16, s: &str) -> Self {
        let mut d = ty.to_be_bytes().to_vec();
        d.extend_from_slice(s.as_bytes());
        self.opt(option, ReplyType::INFO, &d)
    }

    pub fn meta_context(self, option: OptionType, id: u32, name: &str) -> Self {
        let mut d = id.to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        self.opt(option, ReplyType::META_CONTEXT, &d)
    }

    pub fn server_entry(self, name: &str, description: &str) -> Self {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(description.as_bytes());
        self.opt(OptionType::LIST, ReplyType::SERVER, &d)
    }

    pub fn simple(self, cookie: u64, error: u32, data: &[u8]) -> Self {
        self.raw(&SIMPLE_REPLY_MAGIC.to_be_bytes())
            .raw(&error.to_be_bytes())
            .raw(&cookie.to_be_bytes())
            .raw(data)
    }

    pub fn chunk(self, flags: u16, ty: u16, cookie: u64, payload: &[u8]) -> Self {
        self.raw(&STRUCTURED_REPLY_MAGIC.to_be_bytes())
            .raw(&flags.to_be_bytes())
            .raw(&ty.to_be_bytes())
            .raw(&cookie.to_be_bytes())
            .raw(&(payload.len() as u32).to_be_bytes())
            .raw(payload)
    }

    pub fn ext_chunk(self, flags: u16, ty: u16, cookie: u64, offset: u64, payload: &[u8]) -> Self {
        self.raw(&EXTENDED_REPLY_MAGIC.to_be_bytes())
            .raw(&flags.to_be_bytes())
            .raw(&ty.to_be_bytes())
            .raw(&cookie.to_be_bytes())
            .raw(&offset.to_be_bytes())
            .raw(&(payload.len() as u64).to_be_bytes())
            .raw(payload)
    }

    /// A chunk in the given mode (structured or extended).
    pub fn any_chunk(
        self,
        mode: HeaderMode,
        flags: u16,
        ty: u16,
        cookie: u64,
        offset: u64,
        payload: &[u8],
    ) -> Self {
        if mode == HeaderMode::Extended {
            self.ext_chunk(flags, ty, cookie, offset, payload)
        } else {
            self.chunk(flags, ty, cookie, payload)
        }
    }
}

pub fn data_payload(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut p = offset.to_be_bytes().to_vec();
    p.extend_from_slice(data);
    p
}

pub fn hole_payload(offset: u64, len: u32) -> Vec<u8> {
    let mut p = offset.to_be_bytes().to_vec();
    p.extend_from_slice(&len.to_be_bytes());
    p
}

pub fn error_payload(error: u32, message: &str, offset: Option<u64>) -> Vec<u8> {
    let mut p = error.to_be_bytes().to_vec();
    p.extend_from_slice(&(message.len() as u16).to_be_bytes());
    p.extend_from_slice(message.as_bytes());
    if let Some(o) = offset {
        p.extend_from_slice(&o.to_be_bytes());
    }
    p
}

pub fn status32(context: u32, extents: &[(u32, u32)]) -> Vec<u8> {
    let mut p = context.to_be_bytes().to_vec();
    for (l, f) in extents {
        p.extend_from_slice(&l.to_be_bytes());
        p.extend_from_slice(&f.to_be_bytes());
    }
    p
}

pub fn status64(context: u32, extents: &[(u64, u64)]) -> Vec<u8> {
    let mut p = context.to_be_bytes().to_vec();
    p.extend_from_slice(&(extents.len() as u32).to_be_bytes());
    for (l, f) in extents {
        p.extend_from_slice(&l.to_be_bytes());
        p.extend_from_slice(&f.to_be_bytes());
    }
    p
}

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
