//! Option haggling (fixed newstyle): from the greeting to `NBD_OPT_GO`.

use core::fmt::Write as _;

use super::exports::{ContextSet, ExportInfo, Exports, resolve};
use super::{
    CloseReason, MAX_CONTEXTS, MAX_OPTION_LENGTH, OPTION_BUFFER, ServerConfig, Session,
    TRANSMIT_BUFFER, TlsPolicy,
};
use crate::wire::codec::{Overflow, PayloadError, Reader, Sink, nbd_string};
use crate::wire::headers::{ExportNameReply, Greeting, OptionRequest};
use crate::wire::option::{
    Info, InfoRequest, MetaContextEntry, MetaContextRequest, ServerEntry, emit_reply,
};
use crate::wire::{
    ClientFlags, EXPORT_NAME_PADDING, HandshakeFlags, HeaderMode, IHAVEOPT, InfoType, MAX_STRING,
    NBD_MAGIC, OptionType, ReplyType, TransmissionFlags, decode,
};

type Out = heapless::Vec<u8, TRANSMIT_BUFFER>;
/// Output of a step: `Overflow` means a reply did not fit the machine's
/// buffer, which its sizing rules out (a bug, not a peer's doing).
type Emit<T> = Result<T, Overflow>;

pub(super) fn write_greeting(out: &mut Out) -> Emit<()> {
    out.put_header(&Greeting {
        magic: NBD_MAGIC.into(),
        ihaveopt: IHAVEOPT.into(),
        flags: (HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES)
            .bits()
            .into(),
    })
}

/// Append one option reply. `out` is sized for the largest reply we build,
/// and the machine only writes into it once it has been drained.
fn reply(out: &mut Out, option: OptionType, ty: ReplyType, parts: &[&[u8]]) -> Emit<()> {
    emit_reply(out, option, ty, parts)
}

fn error(out: &mut Out, option: OptionType, ty: ReplyType, message: &str) -> Emit<()> {
    reply(out, option, ty, &[message.as_bytes()])
}

/// Why an option's payload is refused with `NBD_REP_ERR_INVALID`.
#[derive(Clone, Copy)]
enum Invalid {
    Payload(PayloadError),
    Because(&'static str),
}

fn invalid(out: &mut Out, option: OptionType, why: Invalid) -> Emit<()> {
    let mut msg: heapless::String<96> = heapless::String::new();
    match why {
        // The message names the field; one that does not fit is cut.
        Invalid::Payload(e) => {
            if write!(msg, "{e}").is_err() {
                msg.clear();
                let _ = msg.push_str(e.summary());
            }
        }
        Invalid::Because(m) => {
            let _ = msg.push_str(m);
        }
    }
    error(out, option, ReplyType::ERR_INVALID, &msg)
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
    Invalid(Invalid),
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
                    let raw = Reader::new(&self.hdr[..4])
                        .u32("client flags")
                        .unwrap_or(u32::MAX);
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
                    let Ok(h) = decode::<OptionRequest>(&self.hdr[..]) else {
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
                        if out.put(&input[used..used + take]).is_err() {
                            return step(used, overflow());
                        }
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
                    let outcome = self
                        .finish(option, verdict, parsed, exports, config, out)
                        .unwrap_or_else(|_| overflow());
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
    ) -> Emit<Outcome> {
        if option == OptionType::ABORT {
            reply(out, option, ReplyType::ACK, &[])?;
            return Ok(Outcome::Close(CloseReason::Aborted));
        }
        if let Some((ty, msg)) = verdict {
            // SET_META_CONTEXT replaces the selection even when it fails.
            if option == OptionType::SET_META_CONTEXT {
                self.meta = None;
            }
            error(out, option, ty, msg)?;
            return Ok(Outcome::Continue);
        }
        match option {
            OptionType::LIST => {
                self.pending = Pending::List { next: 0 };
                self.refill(exports, out)?;
            }
            OptionType::STARTTLS => {
                if self.tls {
                    error(out, option, ReplyType::ERR_INVALID, "TLS is already active")?;
                } else if config.tls == TlsPolicy::Off {
                    error(out, option, ReplyType::ERR_POLICY, "TLS is not configured")?;
                } else {
                    reply(out, option, ReplyType::ACK, &[])?;
                    return Ok(Outcome::StartTls);
                }
            }
            OptionType::STRUCTURED_REPLY => match self.mode {
                _ if !config.structured_replies => error(
                    out,
                    option,
                    ReplyType::ERR_UNSUP,
                    "structured replies disabled",
                )?,
                HeaderMode::Extended => error(
                    out,
                    option,
                    ReplyType::ERR_EXT_HEADER_REQD,
                    "extended headers already negotiated",
                )?,
                HeaderMode::Structured => error(
                    out,
                    option,
                    ReplyType::ERR_INVALID,
                    "structured replies already negotiated",
                )?,
                HeaderMode::Simple => {
                    self.mode = HeaderMode::Structured;
                    reply(out, option, ReplyType::ACK, &[])?;
                }
            },
            OptionType::EXTENDED_HEADERS => match self.mode {
                _ if !config.extended_headers => error(
                    out,
                    option,
                    ReplyType::ERR_UNSUP,
                    "extended headers disabled",
                )?,
                HeaderMode::Extended => error(
                    out,
                    option,
                    ReplyType::ERR_INVALID,
                    "extended headers already negotiated",
                )?,
                _ => {
                    self.mode = HeaderMode::Extended;
                    reply(out, option, ReplyType::ACK, &[])?;
                }
            },
            OptionType::EXPORT_NAME => return self.export_name(parsed, exports, out),
            OptionType::INFO | OptionType::GO => {
                return self.info_or_go(option, parsed, exports, out);
            }
            OptionType::LIST_META_CONTEXT | OptionType::SET_META_CONTEXT => {
                self.meta_context(option, parsed, exports, out)?
            }
            // classify() gave every other option a verdict.
            _ => error(out, option, ReplyType::ERR_UNSUP, "unsupported option")?,
        }
        Ok(Outcome::Continue)
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

    fn export_name(
        &mut self,
        parsed: Parsed,
        exports: &impl Exports,
        out: &mut Out,
    ) -> Emit<Outcome> {
        // A client that negotiated extended headers MUST NOT use
        // EXPORT_NAME, and the option cannot carry an error: close.
        if self.mode == HeaderMode::Extended {
            return Ok(Outcome::Close(CloseReason::ExportNameRefused));
        }
        let Parsed::Export(Some(index)) = parsed else {
            return Ok(Outcome::Close(CloseReason::ExportNameRefused));
        };
        let Some(info) = exports.export(index) else {
            return Ok(Outcome::Close(CloseReason::ExportNameRefused));
        };
        if info.block_size_required {
            return Ok(Outcome::Close(CloseReason::ExportNameRefused));
        }
        let session = self.session(index, &info, false);
        out.put_header(&ExportNameReply {
            size: info.size.into(),
            flags: session.flags.bits().into(),
        })?;
        if !self.client_flags.contains(ClientFlags::NO_ZEROES) {
            out.put(&[0u8; EXPORT_NAME_PADDING])?;
        }
        Ok(Outcome::Ready(session))
    }

    fn info_or_go(
        &mut self,
        option: OptionType,
        parsed: Parsed,
        exports: &impl Exports,
        out: &mut Out,
    ) -> Emit<Outcome> {
        let (index, want) = match parsed {
            Parsed::Info { export, want } => (export, want),
            Parsed::Invalid(why) => {
                invalid(out, option, why)?;
                return Ok(Outcome::Continue);
            }
            _ => (None, InfoWanted::default()),
        };
        let Some((index, info)) = index.and_then(|i| exports.export(i).map(|e| (i, e))) else {
            error(out, option, ReplyType::ERR_UNKNOWN, "export not found")?;
            return Ok(Outcome::Continue);
        };
        let session = self.session(index, &info, option == OptionType::GO && want.block_size);
        if want.name {
            let n = super::reply::truncate(info.name, MAX_STRING);
            Info::Name(n.as_bytes()).emit(out, option)?;
        }
        if want.description && !info.description.is_empty() {
            let d = super::reply::truncate(info.description, MAX_STRING);
            Info::Description(d.as_bytes()).emit(out, option)?;
        }
        // Sent unasked too, as qemu-nbd does: harmless to clients that do not
        // understand it, and it saves a round trip for those that do.
        Info::BlockSize {
            minimum: info.block_sizes.minimum,
            preferred: info.block_sizes.preferred,
            maximum: info.block_sizes.maximum,
        }
        .emit(out, option)?;
        if option == OptionType::GO && info.block_size_required && !want.block_size {
            error(
                out,
                option,
                ReplyType::ERR_BLOCK_SIZE_REQD,
                "this export requires NBD_INFO_BLOCK_SIZE",
            )?;
            return Ok(Outcome::Continue);
        }
        Info::Export {
            size: info.size,
            flags: session.flags.bits(),
        }
        .emit(out, option)?;
        reply(out, option, ReplyType::ACK, &[])?;
        Ok(if option == OptionType::GO {
            Outcome::Ready(session)
        } else {
            Outcome::Continue
        })
    }

    fn meta_context(
        &mut self,
        option: OptionType,
        parsed: Parsed,
        exports: &impl Exports,
        out: &mut Out,
    ) -> Emit<()> {
        let set = option == OptionType::SET_META_CONTEXT;
        if set {
            self.meta = None;
        }
        let (export, selected) = match parsed {
            Parsed::Contexts { export, selected } => (export, selected),
            Parsed::Invalid(why) => return invalid(out, option, why),
            _ => (None, ContextSet::EMPTY),
        };
        let Some(export) = export else {
            return error(out, option, ReplyType::ERR_UNKNOWN, "export not found");
        };
        if set {
            self.meta = Some((export, selected));
        }
        self.pending = Pending::Contexts {
            option,
            export,
            set: selected,
        };
        self.refill(exports, out)
    }

    /// Read what an option's payload says out of the shared buffer, before
    /// the buffer is reused for the replies: names are resolved to export
    /// positions and queries to context sets, both small.
    fn parse(&self, option: OptionType, data: &[u8], exports: &impl Exports) -> Parsed {
        match option {
            OptionType::EXPORT_NAME => {
                Parsed::Export(nbd_string(data).and_then(|n| resolve(exports, n)))
            }
            OptionType::INFO | OptionType::GO => match InfoRequest::parse(data) {
                Ok(r) => Parsed::Info {
                    export: resolve(exports, r.name),
                    want: InfoWanted {
                        name: r.requests.contains(InfoType::NAME),
                        description: r.requests.contains(InfoType::DESCRIPTION),
                        // EXPORT is always sent; unknown requests MUST be
                        // ignored.
                        block_size: r.requests.contains(InfoType::BLOCK_SIZE),
                    },
                },
                Err(e) => Parsed::Invalid(Invalid::Payload(e)),
            },
            OptionType::LIST_META_CONTEXT | OptionType::SET_META_CONTEXT => {
                if !self.mode.structured() {
                    return Parsed::Invalid(Invalid::Because(
                        "structured replies must be negotiated first",
                    ));
                }
                match MetaContextRequest::parse(data) {
                    Ok(r) => {
                        Self::select_contexts(r, option == OptionType::SET_META_CONTEXT, exports)
                    }
                    Err(e) => Parsed::Invalid(Invalid::Payload(e)),
                }
            }
            _ => Parsed::Nothing,
        }
    }

    fn select_contexts(r: MetaContextRequest<'_>, set: bool, exports: &impl Exports) -> Parsed {
        let Some(export) = resolve(exports, r.export) else {
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
            let matched = if r.queries.is_empty() {
                // No queries: LIST shows everything, SET selects nothing.
                !set
            } else {
                r.queries
                    .iter()
                    .any(|q| query_matches(q.as_bytes(), ctx.as_bytes(), set))
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
    pub(super) fn refill(&mut self, exports: &impl Exports, out: &mut Out) -> Emit<()> {
        match self.pending {
            Pending::None => {}
            Pending::List { next } => match exports.export(next) {
                Some(e) => {
                    ServerEntry {
                        name: super::reply::truncate(e.name, MAX_STRING),
                        description: super::reply::truncate(e.description, MAX_STRING).as_bytes(),
                    }
                    .emit(out)?;
                    self.pending = Pending::List { next: next + 1 };
                }
                None => {
                    reply(out, OptionType::LIST, ReplyType::ACK, &[])?;
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
                    MetaContextEntry { id: wire_id, name }.emit(out, option)?;
                    self.pending = Pending::Contexts {
                        option,
                        export,
                        set,
                    };
                }
                None => {
                    reply(out, option, ReplyType::ACK, &[])?;
                    self.pending = Pending::None;
                }
            },
        }
        Ok(())
    }
}

/// A reply did not fit the machine's buffer: a sizing bug. Debug builds
/// stop here; release builds end the connection rather than send a
/// truncated frame.
fn overflow() -> Outcome {
    debug_assert!(false, "handshake reply larger than the transmit buffer");
    Outcome::Close(CloseReason::ReplyTooLarge)
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
