// Byte builders for both sides of the protocol, shared by the core's
// integration tests and the fuzz crate through include!() (so this file
// holds items only). Needs `blockwire_core::wire::*` in scope.

pub fn opt(option: OptionType, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&option.0.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

pub fn go_payload(name: &str, infos: &[u16]) -> Vec<u8> {
    go_payload_raw(name.as_bytes(), infos)
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

pub fn go_payload_raw(name: &[u8], infos: &[u16]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name);
    v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v
}

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

    pub fn simple(self, cookie: impl Into<u64>, error: u32, data: &[u8]) -> Self {
        self.raw(&SIMPLE_REPLY_MAGIC.to_be_bytes())
            .raw(&error.to_be_bytes())
            .raw(&cookie.into().to_be_bytes())
            .raw(data)
    }

    pub fn chunk(self, flags: u16, ty: u16, cookie: impl Into<u64>, payload: &[u8]) -> Self {
        self.raw(&STRUCTURED_REPLY_MAGIC.to_be_bytes())
            .raw(&flags.to_be_bytes())
            .raw(&ty.to_be_bytes())
            .raw(&cookie.into().to_be_bytes())
            .raw(&(payload.len() as u32).to_be_bytes())
            .raw(payload)
    }

    pub fn ext_chunk(
        self,
        flags: u16,
        ty: u16,
        cookie: impl Into<u64>,
        offset: u64,
        payload: &[u8],
    ) -> Self {
        self.raw(&EXTENDED_REPLY_MAGIC.to_be_bytes())
            .raw(&flags.to_be_bytes())
            .raw(&ty.to_be_bytes())
            .raw(&cookie.into().to_be_bytes())
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
        cookie: impl Into<u64>,
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
