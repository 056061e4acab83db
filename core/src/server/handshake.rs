//! Option haggling (fixed newstyle): from the greeting to `NBD_OPT_GO`.

use zerocopy::IntoBytes;

use super::exports::{ContextSet, ExportInfo, Exports};
use super::{
    CloseReason, MAX_CONTEXTS, MAX_OPTION_LENGTH, OPTION_BUFFER, ServerConfig, Session,
    TRANSMIT_BUFFER, TlsPolicy,
};
use crate::wire::headers::{
    ExportNameReply, Greeting, InfoBlockSize, InfoExport, OptionReply, OptionRequest,
};
use crate::wire::{
    ClientFlags, EXPORT_NAME_PADDING, HandshakeFlags, HeaderMode, IHAVEOPT, InfoType, MAX_STRING,
    NBD_MAGIC, OPTION_REPLY_MAGIC, OptionType, ReplyType, TransmissionFlags, decode,
};

type Out = heapless::Vec<u8, TRANSMIT_BUFFER>;

pub(super) fn write_greeting(out: &mut Out) {
    let g = Greeting {
        magic: NBD_MAGIC.into(),
        ihaveopt: IHAVEOPT.into(),
        flags: (HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES)
            .bits()
            .into(),
    };
    let _ = out.extend_from_slice(g.as_bytes());
}

/// Append one option reply. `out` is sized for the largest reply we build,
/// and the machine only writes into it once it has been drained.
fn reply(out: &mut Out, option: OptionType, ty: ReplyType, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let h = OptionReply {
        magic: OPTION_REPLY_MAGIC.into(),
        option: option.0.into(),
        reply_type: ty.0.into(),
        length: (len as u32).into(),
    };
    let _ = out.extend_from_slice(h.as_bytes());
    for p in parts {
        let _ = out.extend_from_slice(p);
    }
}

fn error(out: &mut Out, option: OptionType, ty: ReplyType, message: &str) {
    reply(out, option, ty, &[message.as_bytes()]);
}

/// A string as the spec allows it: at most 4096 bytes of UTF-8 without NUL.
fn valid_string(bytes: &[u8]) -> Option<&str> {
    if bytes.len() > MAX_STRING || bytes.contains(&0) {
        return None;
    }
    core::str::from_utf8(bytes).ok()
}

/// A bounds-checked reader over an option's payload.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn u16(&mut self) -> Option<u16> {
        let (h, t) = self.0.split_first_chunk::<2>()?;
        self.0 = t;
        Some(u16::from_be_bytes(*h))
    }
    fn u32(&mut self) -> Option<u32> {
        let (h, t) = self.0.split_first_chunk::<4>()?;
        self.0 = t;
        Some(u32::from_be_bytes(*h))
    }
    fn bytes(&mut self, n: u32) -> Option<&'a [u8]> {
        let n = usize::try_from(n).ok()?;
        if n > self.0.len() {
            return None;
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Some(h)
    }
}

#[derive(Clone, Copy, Debug)]
enum State {
    ClientFlags,
    OptionHeader,
    OptionData {
        option: OptionType,
        remaining: u32,
        store: bool,
        /// Decided from the header alone: answer with this error once the
        /// payload has been skipped.
        verdict: Option<(ReplyType, &'static str)>,
    },
}

/// Replies generated one at a time as the output drains, so that a long
/// export or context list never needs more than one reply's worth of buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    None,
    List {
        next: usize,
    },
    Contexts {
        option: OptionType,
        export: usize,
        set: ContextSet,
    },
}

/// An option's payload, read and resolved.
enum Parsed {
    Nothing,
    Invalid(&'static str),
    Export(Option<usize>),
    Info {
        export: Option<usize>,
        want: InfoWanted,
    },
    Contexts {
        export: Option<usize>,
        selected: ContextSet,
    },
}

#[derive(Clone, Copy, Default)]
struct InfoWanted {
    name: bool,
    description: bool,
    block_size: bool,
}

pub(super) struct Step {
    pub consumed: usize,
    pub outcome: Outcome,
}

pub(super) enum Outcome {
    Continue,
    StartTls,
    Ready(Session),
    Close(CloseReason),
}

#[derive(Debug)]
pub(crate) struct Handshake {
    state: State,
    hdr: [u8; OptionRequest::SIZE],
    hdr_len: usize,
    client_flags: ClientFlags,
    mode: HeaderMode,
    tls: bool,
    /// Contexts chosen by the last `SET_META_CONTEXT`, and for which export.
    meta: Option<(usize, ContextSet)>,
    pending: Pending,
}

impl Handshake {
    pub(super) fn new() -> Self {
        Self {
            state: State::ClientFlags,
            hdr: [0; OptionRequest::SIZE],
            hdr_len: 0,
            client_flags: ClientFlags::empty(),
            mode: HeaderMode::Simple,
            tls: false,
            meta: None,
            pending: Pending::None,
        }
    }

    /// State after `STARTTLS` succeeded: the spec forbids keeping anything
    /// negotiated in plaintext.
    pub(super) fn after_tls(self) -> Self {
        Self {
            state: State::OptionHeader,
            client_flags: self.client_flags,
            tls: true,
            ..Self::new()
        }
    }

    /// Whether the shared buffer holds an option's payload being read (and
    /// so nothing to send).
    pub(super) fn collecting(&self) -> bool {
        matches!(self.state, State::OptionData { store: true, .. })
    }

    pub(super) fn has_pending_replies(&self) -> bool {
        self.pending != Pending::None
    }

    fn fill_hdr(&mut self, input: &[u8], want: usize) -> usize {
        let take = (want - self.hdr_len).min(input.len());
        self.hdr[self.hdr_len..self.hdr_len + take].copy_from_slice(&input[..take]);
        self.hdr_len += take;
        take
    }

    pub(super) fn step(
        &mut self,
        input: &[u8],
        exports: &impl Exports,
        config: &ServerConfig,
        out: &mut Out,
        shutting_down: bool,
    ) -> Step {
        let mut used = 0;
        let step = |consumed, outcome| Step { consumed, outcome };
        loop {
            match self.state {
                State::ClientFlags => {
                    used += self.fill_hdr(&input[used..], 4);
                    if self.hdr_len < 4 {
                        return step(used, Outcome::Continue);
                    }
                    self.hdr_len = 0;
                    let raw =
                        u32::from_be_bytes([self.hdr[0], self.hdr[1], self.hdr[2], self.hdr[3]]);
                    let Some(flags) = ClientFlags::from_bits(raw) else {
                        return step(used, Outcome::Close(CloseReason::UnknownClientFlags));
                    };
                    // TLS is only negotiable in fixed newstyle.
                    if config.tls == TlsPolicy::Required
                        && !flags.contains(ClientFlags::FIXED_NEWSTYLE)
                    {
                        return step(used, Outcome::Close(CloseReason::NotFixedNewstyle));
                    }
                    self.client_flags = flags;
                    self.state = State::OptionHeader;
                }
                State::OptionHeader => {
                    used += self.fill_hdr(&input[used..], OptionRequest::SIZE);
                    if self.hdr_len < OptionRequest::SIZE {
                        return step(used, Outcome::Continue);
                    }
                    self.hdr_len = 0;
                    let Ok(h) = decode::<OptionRequest>(&self.hdr) else {
                        return step(used, Outcome::Close(CloseReason::BadOptionMagic));
                    };
                    if h.magic.get() != IHAVEOPT {
                        return step(used, Outcome::Close(CloseReason::BadOptionMagic));
                    }
                    let option = OptionType(h.option.get());
                    let length = h.length.get();
                    match self.classify(option, length, config, shutting_down) {
                        Ok(s) => self.state = s,
                        Err(reason) => return step(used, Outcome::Close(reason)),
                    }
                }
                State::OptionData {
                    option,
                    remaining,
                    store,
                    verdict,
                } => {
                    let avail = input.len() - used;
                    let take = (remaining as usize).min(avail);
                    if store {
                        // The payload shares the buffer replies are built
                        // in: handle_input only runs once it is drained,
                        // and classify() checked the length against it.
                        let _ = out.extend_from_slice(&input[used..used + take]);
                    }
                    used += take;
                    let remaining = remaining - take as u32;
                    if remaining > 0 {
                        self.state = State::OptionData {
                            option,
                            remaining,
                            store,
                            verdict,
                        };
                        return step(used, Outcome::Continue);
                    }
                    self.state = State::OptionHeader;
                    let parsed = self.parse(option, out, exports);
                    out.clear();
                    let outcome = self.finish(option, verdict, parsed, exports, config, out);
                    return step(used, outcome);
                }
            }
        }
    }

    /// Decide from an option's header alone what to do with its payload.
    fn classify(
        &self,
        option: OptionType,
        length: u32,
        config: &ServerConfig,
        shutting_down: bool,
    ) -> Result<State, CloseReason> {
        let fixed = self.client_flags.contains(ClientFlags::FIXED_NEWSTYLE);
        if !fixed && option != OptionType::EXPORT_NAME {
            // Without fixed newstyle there is no way to send an error reply.
            return Err(CloseReason::NotFixedNewstyle);
        }
        if length > MAX_OPTION_LENGTH {
            return Err(CloseReason::OptionTooLong);
        }
        let tls_needed = config.tls == TlsPolicy::Required && !self.tls;
        // EXPORT_NAME cannot carry an error reply: refusing it means closing.
        if option == OptionType::EXPORT_NAME
            && (tls_needed || shutting_down || length as usize > MAX_STRING)
        {
            return Err(if shutting_down {
                CloseReason::Shutdown
            } else {
                CloseReason::ExportNameRefused
            });
        }
        let verdict: Option<(ReplyType, &'static str)> =
            if shutting_down && option != OptionType::ABORT {
                Some((ReplyType::ERR_SHUTDOWN, "server is shutting down"))
            } else if tls_needed && option != OptionType::STARTTLS && option != OptionType::ABORT {
                Some((
                    ReplyType::ERR_TLS_REQD,
                    "TLS is required before this option",
                ))
            } else {
                match option {
                    OptionType::EXPORT_NAME
                    | OptionType::INFO
                    | OptionType::GO
                    | OptionType::LIST_META_CONTEXT
                    | OptionType::SET_META_CONTEXT => {
                        if length as usize > OPTION_BUFFER {
                            Some((ReplyType::ERR_TOO_BIG, "option payload too large"))
                        } else {
                            None
                        }
                    }
                    // The spec asks the server to ignore data sent with ABORT.
                    OptionType::ABORT => None,
                    OptionType::LIST
                    | OptionType::STARTTLS
                    | OptionType::STRUCTURED_REPLY
                    | OptionType::EXTENDED_HEADERS => {
                        if length != 0 {
                            Some((ReplyType::ERR_INVALID, "option does not take a payload"))
                        } else {
                            None
                        }
                    }
                    _ => Some((ReplyType::ERR_UNSUP, "unsupported option")),
                }
            };
        Ok(State::OptionData {
            option,
            remaining: length,
            store: verdict.is_none() && option != OptionType::ABORT,
            verdict,
        })
    }

    fn finish(
        &mut self,
        option: OptionType,
        verdict: Option<(ReplyType, &'static str)>,
        parsed: Parsed,
        exports: &impl Exports,
        config: &ServerConfig,
        out: &mut Out,
    ) -> Outcome {
        if option == OptionType::ABORT {
            reply(out, option, ReplyType::ACK, &[]);
            return Outcome::Close(CloseReason::Aborted);
        }
        if let Some((ty, msg)) = verdict {
            // SET_META_CONTEXT replaces the selection even when it fails.
            if option == OptionType::SET_META_CONTEXT {
                self.meta = None;
            }
            error(out, option, ty, msg);
            return Outcome::Continue;
        }
        match option {
            OptionType::LIST => {
                self.pending = Pending::List { next: 0 };
                self.refill(exports, out);
            }
            OptionType::STARTTLS => {
                if self.tls {
                    error(out, option, ReplyType::ERR_INVALID, "TLS is already active");
                } else if config.tls == TlsPolicy::Off {
                    error(out, option, ReplyType::ERR_POLICY, "TLS is not configured");
                } else {
                    reply(out, option, ReplyType::ACK, &[]);
                    return Outcome::StartTls;
                }
            }
            OptionType::STRUCTURED_REPLY => match self.mode {
                _ if !config.structured_replies => error(
                    out,
                    option,
                    ReplyType::ERR_UNSUP,
                    "structured replies disabled",
                ),
                HeaderMode::Extended => error(
                    out,
                    option,
                    ReplyType::ERR_EXT_HEADER_REQD,
                    "extended headers already negotiated",
                ),
                HeaderMode::Structured => error(
                    out,
                    option,
                    ReplyType::ERR_INVALID,
                    "structured replies already negotiated",
                ),
                HeaderMode::Simple => {
                    self.mode = HeaderMode::Structured;
                    reply(out, option, ReplyType::ACK, &[]);
                }
            },
            OptionType::EXTENDED_HEADERS => match self.mode {
                _ if !config.extended_headers => error(
                    out,
                    option,
                    ReplyType::ERR_UNSUP,
                    "extended headers disabled",
                ),
                HeaderMode::Extended => error(
                    out,
                    option,
                    ReplyType::ERR_INVALID,
                    "extended headers already negotiated",
                ),
                _ => {
                    self.mode = HeaderMode::Extended;
                    reply(out, option, ReplyType::ACK, &[]);
                }
            },
            OptionType::EXPORT_NAME => return self.export_name(parsed, exports, out),
            OptionType::INFO | OptionType::GO => {
                return self.info_or_go(option, parsed, exports, out);
            }
            OptionType::LIST_META_CONTEXT | OptionType::SET_META_CONTEXT => {
                self.meta_context(option, parsed, exports, out)
            }
            // classify() gave every other option a verdict.
            _ => error(out, option, ReplyType::ERR_UNSUP, "unsupported option"),
        }
        Outcome::Continue
    }

    fn flags_for(&self, export: usize, info: &ExportInfo<'_>) -> TransmissionFlags {
        let mut f = info.flags
            - (TransmissionFlags::SEND_DF
                | TransmissionFlags::BLOCK_STAT_PAYLOAD
                | TransmissionFlags::SEND_RESIZE);
        f |= TransmissionFlags::HAS_FLAGS;
        if self.mode.structured() {
            f |= TransmissionFlags::SEND_DF;
        }
        if self.mode == HeaderMode::Extended && !self.contexts_for(export).is_empty() {
            f |= TransmissionFlags::BLOCK_STAT_PAYLOAD;
        }
        f
    }

    fn contexts_for(&self, export: usize) -> ContextSet {
        match self.meta {
            Some((e, set)) if e == export => set,
            _ => ContextSet::EMPTY,
        }
    }

    fn session(&self, export: usize, info: &ExportInfo<'_>, agreed: bool) -> Session {
        Session {
            export,
            size: info.size,
            flags: self.flags_for(export, info),
            block_sizes: info.block_sizes,
            block_sizes_agreed: agreed,
            mode: self.mode,
            contexts: self.contexts_for(export),
            client_flags: self.client_flags,
            tls: self.tls,
        }
    }

    fn export_name(&mut self, parsed: Parsed, exports: &impl Exports, out: &mut Out) -> Outcome {
        // A client that negotiated extended headers MUST NOT use
        // EXPORT_NAME, and the option cannot carry an error: close.
        if self.mode == HeaderMode::Extended {
            return Outcome::Close(CloseReason::ExportNameRefused);
        }
        let Parsed::Export(Some(index)) = parsed else {
            return Outcome::Close(CloseReason::ExportNameRefused);
        };
        let Some(info) = exports.export(index) else {
            return Outcome::Close(CloseReason::ExportNameRefused);
        };
        if info.block_size_required {
            return Outcome::Close(CloseReason::ExportNameRefused);
        }
        let session = self.session(index, &info, false);
        let r = ExportNameReply {
            size: info.size.into(),
            flags: session.flags.bits().into(),
        };
        let _ = out.extend_from_slice(r.as_bytes());
        if !self.client_flags.contains(ClientFlags::NO_ZEROES) {
            let _ = out.extend_from_slice(&[0u8; EXPORT_NAME_PADDING]);
        }
        Outcome::Ready(session)
    }

    fn info_or_go(
        &mut self,
        option: OptionType,
        parsed: Parsed,
        exports: &impl Exports,
        out: &mut Out,
    ) -> Outcome {
        let (index, want) = match parsed {
            Parsed::Info { export, want } => (export, want),
            Parsed::Invalid(msg) => {
                error(out, option, ReplyType::ERR_INVALID, msg);
                return Outcome::Continue;
            }
            _ => (None, InfoWanted::default()),
        };
        let InfoWanted {
            name: want_name,
            description: want_description,
            block_size: want_block_size,
        } = want;
        let Some((index, info)) = index.and_then(|i| exports.export(i).map(|e| (i, e))) else {
            error(out, option, ReplyType::ERR_UNKNOWN, "export not found");
            return Outcome::Continue;
        };
        let session = self.session(index, &info, option == OptionType::GO && want_block_size);
        let info_type = |t: InfoType| t.0.to_be_bytes();
        if want_name {
            let n = super::reply::truncate(info.name, MAX_STRING);
            reply(
                out,
                option,
                ReplyType::INFO,
                &[&info_type(InfoType::NAME), n.as_bytes()],
            );
        }
        if want_description && !info.description.is_empty() {
            let d = super::reply::truncate(info.description, MAX_STRING);
            reply(
                out,
                option,
                ReplyType::INFO,
                &[&info_type(InfoType::DESCRIPTION), d.as_bytes()],
            );
        }
        // Sent unasked too, as qemu-nbd does: harmless to clients that do not
        // understand it, and it saves a round trip for those that do.
        let bs = InfoBlockSize {
            info_type: InfoType::BLOCK_SIZE.0.into(),
            minimum: info.block_sizes.minimum.into(),
            preferred: info.block_sizes.preferred.into(),
            maximum: info.block_sizes.maximum.into(),
        };
        reply(out, option, ReplyType::INFO, &[bs.as_bytes()]);
        if option == OptionType::GO && info.block_size_required && !want_block_size {
            error(
                out,
                option,
                ReplyType::ERR_BLOCK_SIZE_REQD,
                "this export requires NBD_INFO_BLOCK_SIZE",
            );
            return Outcome::Continue;
        }
        let ex = InfoExport {
            info_type: InfoType::EXPORT.0.into(),
            size: info.size.into(),
            flags: session.flags.bits().into(),
        };
        reply(out, option, ReplyType::INFO, &[ex.as_bytes()]);
        reply(out, option, ReplyType::ACK, &[]);
        if option == OptionType::GO {
            Outcome::Ready(session)
        } else {
            Outcome::Continue
        }
    }

    fn meta_context(
        &mut self,
        option: OptionType,
        parsed: Parsed,
        exports: &impl Exports,
        out: &mut Out,
    ) {
        let set = option == OptionType::SET_META_CONTEXT;
        if set {
            self.meta = None;
        }
        let (export, selected) = match parsed {
            Parsed::Contexts { export, selected } => (export, selected),
            Parsed::Invalid(msg) => return error(out, option, ReplyType::ERR_INVALID, msg),
            _ => (None, ContextSet::EMPTY),
        };
        let Some(export) = export else {
            error(out, option, ReplyType::ERR_UNKNOWN, "export not found");
            return;
        };
        if set {
            self.meta = Some((export, selected));
        }
        self.pending = Pending::Contexts {
            option,
            export,
            set: selected,
        };
        self.refill(exports, out);
    }

    /// Read what an option's payload says out of the shared buffer, before
    /// the buffer is reused for the replies: names are resolved to export
    /// positions and queries to context sets, both small.
    fn parse(&self, option: OptionType, data: &[u8], exports: &impl Exports) -> Parsed {
        match option {
            OptionType::EXPORT_NAME => {
                Parsed::Export(valid_string(data).and_then(|n| exports.find(n)))
            }
            OptionType::INFO | OptionType::GO => Self::parse_info(data, exports),
            OptionType::LIST_META_CONTEXT | OptionType::SET_META_CONTEXT => {
                if !self.mode.structured() {
                    return Parsed::Invalid("structured replies must be negotiated first");
                }
                Self::parse_contexts(data, option == OptionType::SET_META_CONTEXT, exports)
            }
            _ => Parsed::Nothing,
        }
    }

    fn parse_info(data: &[u8], exports: &impl Exports) -> Parsed {
        let mut c = Cursor(data);
        let Some(name_len) = c.u32() else {
            return Parsed::Invalid("option too short");
        };
        // "MUST be no larger than the option data length - 6".
        if name_len as usize > data.len().saturating_sub(6) {
            return Parsed::Invalid("name length exceeds option length");
        }
        let Some(name_bytes) = c.bytes(name_len) else {
            return Parsed::Invalid("name length exceeds option length");
        };
        let Some(name) = valid_string(name_bytes) else {
            return Parsed::Invalid("export name too long, not UTF-8, or containing NUL");
        };
        let Some(count) = c.u16() else {
            return Parsed::Invalid("option too short");
        };
        if c.0.len() != 2 * count as usize {
            return Parsed::Invalid("information request count does not match option length");
        }
        let mut want = InfoWanted::default();
        while let Some(t) = c.u16() {
            match InfoType(t) {
                InfoType::NAME => want.name = true,
                InfoType::DESCRIPTION => want.description = true,
                InfoType::BLOCK_SIZE => want.block_size = true,
                // EXPORT is always sent; unknown requests MUST be ignored.
                _ => {}
            }
        }
        Parsed::Info {
            export: exports.find(name),
            want,
        }
    }

    fn parse_contexts(data: &[u8], set: bool, exports: &impl Exports) -> Parsed {
        let mut c = Cursor(data);
        let Some(name) = c.u32().and_then(|n| c.bytes(n)) else {
            return Parsed::Invalid("export name length exceeds option length");
        };
        let Some(name) = valid_string(name) else {
            return Parsed::Invalid("export name too long, not UTF-8, or containing NUL");
        };
        let Some(count) = c.u32() else {
            return Parsed::Invalid("option too short");
        };
        // Check the whole request before acting on any of it.
        let queries = c.0;
        let mut check = Cursor(queries);
        for _ in 0..count {
            let Some(q) = check.u32().and_then(|n| check.bytes(n)) else {
                return Parsed::Invalid("query length exceeds option length");
            };
            if valid_string(q).is_none() {
                return Parsed::Invalid("query too long, not UTF-8, or containing NUL");
            }
        }
        if !check.0.is_empty() {
            return Parsed::Invalid("trailing data after queries");
        }
        let Some(export) = exports.find(name) else {
            return Parsed::Contexts {
                export: None,
                selected: ContextSet::EMPTY,
            };
        };
        let mut selected = ContextSet::EMPTY;
        for id in 0..MAX_CONTEXTS {
            let Some(ctx) = exports.meta_context(export, id) else {
                break;
            };
            let matched = if count == 0 {
                // No queries: LIST shows everything, SET selects nothing.
                !set
            } else {
                let mut q = Cursor(queries);
                (0..count).any(|_| {
                    let query = q.u32().and_then(|n| q.bytes(n)).unwrap_or(&[]);
                    query_matches(query, ctx.as_bytes(), set)
                })
            };
            if matched {
                selected.insert(id as u32);
            }
        }
        Parsed::Contexts {
            export: Some(export),
            selected,
        }
    }

    /// Emit the next lazily generated reply into an empty `out`.
    pub(super) fn refill(&mut self, exports: &impl Exports, out: &mut Out) {
        match self.pending {
            Pending::None => {}
            Pending::List { next } => match exports.export(next) {
                Some(e) => {
                    let name = super::reply::truncate(e.name, MAX_STRING);
                    let desc = super::reply::truncate(e.description, MAX_STRING);
                    let len = (name.len() as u32).to_be_bytes();
                    reply(
                        out,
                        OptionType::LIST,
                        ReplyType::SERVER,
                        &[&len, name.as_bytes(), desc.as_bytes()],
                    );
                    self.pending = Pending::List { next: next + 1 };
                }
                None => {
                    reply(out, OptionType::LIST, ReplyType::ACK, &[]);
                    self.pending = Pending::None;
                }
            },
            Pending::Contexts {
                option,
                export,
                mut set,
            } => match set.iter().next() {
                Some(id) => {
                    set.0 &= !(1u64 << id);
                    let name = exports
                        .meta_context(export, id as usize)
                        .map(|n| super::reply::truncate(n, MAX_STRING))
                        .unwrap_or("");
                    // LIST's ids are reserved and SHOULD be zero.
                    let wire_id = if option == OptionType::SET_META_CONTEXT {
                        id
                    } else {
                        0
                    };
                    reply(
                        out,
                        option,
                        ReplyType::META_CONTEXT,
                        &[&wire_id.to_be_bytes(), name.as_bytes()],
                    );
                    self.pending = Pending::Contexts {
                        option,
                        export,
                        set,
                    };
                }
                None => {
                    reply(out, option, ReplyType::ACK, &[]);
                    self.pending = Pending::None;
                }
            },
        }
    }
}

/// Whether `query` selects context `ctx`. For `LIST_META_CONTEXT` a query
/// ending in `:` after a namespace (`base:`, `qemu:`,
/// `qemu:dirty-bitmap:`) is a wildcard over everything under it, as
/// qemu-nbd does; `SET_META_CONTEXT` selects exact names only.
fn query_matches(query: &[u8], ctx: &[u8], set: bool) -> bool {
    if query == ctx {
        return true;
    }
    !set && query.ends_with(b":") && ctx.starts_with(query)
}
