//! The handshake: greeting, option haggling, `EXPORT_NAME` fallback.

use zerocopy::IntoBytes;

use crate::wire::headers::{
    ExportNameReply, InfoBlockSize, InfoExport, OptionReply, OptionRequest,
};
use crate::wire::{
    ClientFlags, EXPORT_NAME_PADDING, HandshakeFlags, HeaderMode, IHAVEOPT, InfoType,
    MAX_MIN_BLOCK, MAX_STRING, NBD_MAGIC, OLDSTYLE_MAGIC, OPTION_REPLY_MAGIC, OptionType,
    ReplyType, TransmissionFlags, decode,
};

use super::{
    BlockSize, Client, Error, Export, MAX_OPTION_REPLY, Mode, OptRx, Out, Phase, Raw, Span, Src,
    TlsPolicy,
};

/// One option exchange of the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    StartTls,
    List,
    ExtendedHeaders,
    StructuredReply,
    MetaContext,
    Info,
    Go,
}

/// Export sizes from 2^63 up are refused: offsets past them overflow
/// signed arithmetic everywhere (`off_t`, qemu), and no real disk is that big.
pub const MAX_EXPORT_SIZE: u64 = (1 << 63) - 1;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let a: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(a))
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let a: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
    Some(u16::from_be_bytes(a))
}

fn option_header(option: OptionType, length: usize) -> OptionRequest {
    OptionRequest {
        magic: IHAVEOPT.into(),
        option: option.0.into(),
        length: (length as u32).into(),
    }
}

impl<'c, const N: usize> Client<'c, N> {
    fn option_of(&self, step: Step) -> OptionType {
        match step {
            Step::StartTls => OptionType::STARTTLS,
            Step::List => OptionType::LIST,
            Step::ExtendedHeaders => OptionType::EXTENDED_HEADERS,
            Step::StructuredReply => OptionType::STRUCTURED_REPLY,
            Step::MetaContext if self.config.mode == Mode::Info => OptionType::LIST_META_CONTEXT,
            Step::MetaContext => OptionType::SET_META_CONTEXT,
            Step::Info => OptionType::INFO,
            Step::Go => OptionType::GO,
        }
    }

    pub(crate) fn after_tls(&self) -> Option<Step> {
        if self.config.mode == Mode::List {
            Some(Step::List)
        } else if self.config.extended_headers {
            Some(Step::ExtendedHeaders)
        } else {
            self.after_extended()
        }
    }

    fn after_extended(&self) -> Option<Step> {
        if self.mode == HeaderMode::Simple && self.config.structured_replies {
            Some(Step::StructuredReply)
        } else {
            self.after_headers()
        }
    }

    fn after_headers(&self) -> Option<Step> {
        let wanted = match self.config.mode {
            Mode::Info => true,
            _ => !self.config.meta_contexts.is_empty(),
        };
        if self.mode.structured() && wanted {
            Some(Step::MetaContext)
        } else {
            self.final_step()
        }
    }

    fn final_step(&self) -> Option<Step> {
        match self.config.mode {
            Mode::Info => Some(Step::Info),
            _ => Some(Step::Go),
        }
    }

    /// Queue `step`'s option and wait for its reply; `None` means
    /// `EXPORT_NAME`.
    pub(crate) fn start(&mut self, step: Option<Step>) {
        let Some(step) = step else {
            let name = self.config.export_name.as_bytes();
            self.tx
                .push_small(option_header(OptionType::EXPORT_NAME, name.len()).as_bytes());
            self.tx.push_borrowed(name);
            self.phase = Phase::ExportNameReply;
            return;
        };
        let option = self.option_of(step);
        let name = self.config.export_name.as_bytes();
        match step {
            Step::Info | Step::Go => {
                self.export_info = None;
                self.block_size = None;
                let len = 4 + name.len() + 2 + 6;
                let mut head = [0u8; 20];
                head[..16].copy_from_slice(option_header(option, len).as_bytes());
                head[16..].copy_from_slice(&(name.len() as u32).to_be_bytes());
                self.tx.push_small(&head);
                self.tx.push_borrowed(name);
                let mut tail = [0u8; 8];
                tail[..2].copy_from_slice(&3u16.to_be_bytes());
                tail[2..4].copy_from_slice(&InfoType::NAME.0.to_be_bytes());
                tail[4..6].copy_from_slice(&InfoType::DESCRIPTION.0.to_be_bytes());
                tail[6..].copy_from_slice(&InfoType::BLOCK_SIZE.0.to_be_bytes());
                self.tx.push_small(&tail);
            }
            Step::MetaContext => {
                self.contexts.clear();
                let queries = self.config.meta_contexts;
                let len = 4 + name.len() + 4 + queries.iter().map(|q| 4 + q.len()).sum::<usize>();
                let mut head = [0u8; 20];
                head[..16].copy_from_slice(option_header(option, len).as_bytes());
                head[16..].copy_from_slice(&(name.len() as u32).to_be_bytes());
                self.tx.push_small(&head);
                self.tx.push_borrowed(name);
                self.tx.push_small(&(queries.len() as u32).to_be_bytes());
                for q in queries {
                    self.tx.push_small(&(q.len() as u32).to_be_bytes());
                    self.tx.push_borrowed(q.as_bytes());
                }
            }
            _ => {
                self.tx.push_small(option_header(option, 0).as_bytes());
            }
        }
        self.phase = Phase::Option {
            step,
            rx: OptRx::Header,
        };
    }

    fn abort(&mut self) {
        self.tx
            .push_small(option_header(OptionType::ABORT, 0).as_bytes());
    }

    /// End the handshake by choice: `NBD_OPT_ABORT` (a soft disconnect),
    /// then the error.
    fn abort_with(&mut self, e: Error) -> Error {
        self.abort();
        e
    }

    pub(crate) fn handshake_step(&mut self, input: &[u8]) -> Result<Out, Error> {
        match self.phase {
            Phase::Greeting => self.greeting(input),
            Phase::AwaitTls if input.is_empty() => Ok(Out::took(0)),
            Phase::AwaitTls => Err(Error::PlaintextAfterStartTls),
            Phase::Option {
                step,
                rx: OptRx::Header,
            } => {
                let c = self.header.fill(input, OptionReply::SIZE);
                if self.header.len < OptionReply::SIZE {
                    return Ok(Out::took(c));
                }
                let r: OptionReply =
                    decode(self.header.bytes()).map_err(|_| Error::UnexpectedEof)?;
                self.header.clear();
                let option = self.option_of(step);
                let reply = ReplyType(r.reply_type.get());
                if r.magic.get() != OPTION_REPLY_MAGIC {
                    return Err(Error::BadOptionReplyMagic {
                        found: r.magic.get(),
                    });
                }
                if r.option.get() != option.0 {
                    return Err(Error::UnexpectedOptionReply { option, reply });
                }
                let length = r.length.get();
                if length as usize > MAX_OPTION_REPLY {
                    return Err(Error::OptionReplyTooLong { option, length });
                }
                self.payload.clear();
                self.phase = Phase::Option {
                    step,
                    rx: OptRx::Payload {
                        reply,
                        length: length as usize,
                    },
                };
                Ok(Out::next(c, None))
            }
            Phase::Option {
                step,
                rx: OptRx::Payload { reply, length },
            } => {
                let c = self.payload.fill(input, length);
                if self.payload.len < length {
                    return Ok(Out::took(c));
                }
                self.phase = Phase::Option {
                    step,
                    rx: OptRx::Header,
                };
                let raw = self.option_reply(step, reply)?;
                Ok(Out::next(c, raw))
            }
            Phase::ExportNameReply => {
                let c = self.header.fill(input, ExportNameReply::SIZE);
                if self.header.len < ExportNameReply::SIZE {
                    return Ok(Out::took(c));
                }
                let r: ExportNameReply =
                    decode(self.header.bytes()).map_err(|_| Error::UnexpectedEof)?;
                self.header.clear();
                self.export_info = Some(self.check_size(r.size.get(), r.flags.get())?);
                let export = self.make_export()?;
                let left = if self.no_zeroes {
                    0
                } else {
                    EXPORT_NAME_PADDING
                };
                self.phase = Phase::ExportNamePadding { left, export };
                Ok(Out::next(c, None))
            }
            Phase::ExportNamePadding { left, export } => {
                let k = left.min(input.len());
                if left - k > 0 {
                    self.phase = Phase::ExportNamePadding {
                        left: left - k,
                        export,
                    };
                    return Ok(Out::took(k));
                }
                Ok(Out::next(k, Some(self.enter_transmission(export))))
            }
            Phase::Transmission { .. } | Phase::Finished | Phase::Failed => Ok(Out::took(0)),
        }
    }

    fn greeting(&mut self, input: &[u8]) -> Result<Out, Error> {
        let mut c = self.header.fill(input, 16);
        if self.header.len < 16 {
            return Ok(Out::took(c));
        }
        let b = self.header.bytes();
        let magic = u64::from_be_bytes(b[..8].try_into().unwrap_or([0; 8]));
        let second = u64::from_be_bytes(b[8..16].try_into().unwrap_or([0; 8]));
        if magic != NBD_MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        if second == OLDSTYLE_MAGIC {
            return Err(Error::Oldstyle);
        }
        if second != IHAVEOPT {
            return Err(Error::BadMagic { found: second });
        }
        c += self.header.fill(input.get(c..).unwrap_or(&[]), 18);
        if self.header.len < 18 {
            return Ok(Out::took(c));
        }
        let flags = HandshakeFlags::from_bits_retain(be16(self.header.bytes(), 16).unwrap_or(0));
        self.header.clear();
        if !flags.contains(HandshakeFlags::FIXED_NEWSTYLE) {
            return Err(Error::NotFixedNewstyle);
        }
        let mut ours = ClientFlags::FIXED_NEWSTYLE;
        if flags.contains(HandshakeFlags::NO_ZEROES) {
            ours |= ClientFlags::NO_ZEROES;
            self.no_zeroes = true;
        }
        self.tx.push_small(&ours.bits().to_be_bytes());
        let step = if self.config.tls == TlsPolicy::Disable {
            self.after_tls()
        } else {
            Some(Step::StartTls)
        };
        self.start(step);
        Ok(Out::next(c, None))
    }

    fn check_size(&mut self, size: u64, flags: u16) -> Result<(u64, TransmissionFlags), Error> {
        if size > MAX_EXPORT_SIZE {
            return Err(Error::ExportTooLarge { size });
        }
        Ok((size, TransmissionFlags::from_bits_retain(flags)))
    }

    fn make_export(&self) -> Result<Export, Error> {
        let (size, flags) = self.export_info.ok_or(Error::MissingExportInfo)?;
        Ok(Export {
            size,
            flags,
            block_size: self.block_size,
            mode: self.mode,
        })
    }

    fn enter_transmission(&mut self, export: Export) -> Raw {
        self.export = Some(export);
        let limit = export.max_payload().max(crate::wire::DEFAULT_MAX_PAYLOAD);
        // Room for the fixed part of any chunk (ERROR_OFFSET's 14 bytes).
        self.max_chunk = u64::from(limit) + 64;
        self.phase = Phase::Transmission {
            disconnecting: false,
        };
        self.deadline = None;
        Raw::Ready(export)
    }

    fn option_reply(&mut self, step: Step, reply: ReplyType) -> Result<Option<Raw>, Error> {
        let option = self.option_of(step);
        if reply.is_error() {
            return self.option_error(step, reply);
        }
        let len = self.payload.len;
        let malformed = Error::MalformedOptionReply { option, reply };
        match (step, reply) {
            (_, ReplyType::ACK) if len != 0 => Err(malformed),
            (_, ReplyType::ACK) => self.option_ack(step),
            (Step::List, ReplyType::SERVER) => {
                let b = self.payload.bytes();
                let name_len = be32(b, 0).ok_or(malformed)? as usize;
                // The name must fit in the reply: name_len <= length - 4.
                if name_len > len - 4 || name_len > MAX_STRING {
                    return Err(malformed);
                }
                let name = Span::name(Src::Payload, b, 4, 4 + name_len)?;
                let description = Span::text(Src::Payload, b, 4 + name_len, len);
                Ok(Some(Raw::ExportListed { name, description }))
            }
            (Step::Info | Step::Go, ReplyType::INFO) => self.info_reply(option, reply),
            (Step::MetaContext, ReplyType::META_CONTEXT) => {
                let b = self.payload.bytes();
                let id = be32(b, 0).ok_or(malformed)?;
                if len - 4 > MAX_STRING {
                    return Err(malformed);
                }
                let name = Span::name(Src::Payload, b, 4, len)?;
                if self.config.mode == Mode::Info {
                    return Ok(Some(Raw::MetaContext { id, name }));
                }
                if self.contexts.iter().any(|&(i, _)| i == id) {
                    return Err(Error::DuplicateContext { id });
                }
                let text = b.get(4..len).unwrap_or(&[]);
                let query = self
                    .config
                    .meta_contexts
                    .iter()
                    .position(|q| q.as_bytes() == text)
                    .map(|i| i as u8);
                self.contexts
                    .push((id, query))
                    .map_err(|_| Error::TooManyContexts)?;
                Ok(Some(Raw::MetaContext { id, name }))
            }
            _ => Err(Error::UnexpectedOptionReply { option, reply }),
        }
    }

    fn info_reply(&mut self, option: OptionType, reply: ReplyType) -> Result<Option<Raw>, Error> {
        let malformed = Error::MalformedOptionReply { option, reply };
        let b = self.payload.bytes();
        let len = b.len();
        let ty = InfoType(be16(b, 0).ok_or(malformed)?);
        match ty {
            InfoType::EXPORT => {
                if len != InfoExport::SIZE {
                    return Err(malformed);
                }
                let i: InfoExport = decode(b).map_err(|_| malformed)?;
                let info = self.check_size(i.size.get(), i.flags.get());
                self.export_info = Some(info.map_err(|e| self.abort_with(e))?);
                Ok(None)
            }
            InfoType::NAME | InfoType::DESCRIPTION => {
                if len - 2 > MAX_STRING {
                    return Err(malformed);
                }
                let s = Span::text(Src::Payload, b, 2, len);
                Ok(Some(if ty == InfoType::NAME {
                    Raw::CanonicalName(s)
                } else {
                    Raw::Description(s)
                }))
            }
            InfoType::BLOCK_SIZE => {
                if len != InfoBlockSize::SIZE {
                    return Err(malformed);
                }
                let i: InfoBlockSize = decode(b).map_err(|_| malformed)?;
                let (minimum, preferred, maximum) =
                    (i.minimum.get(), i.preferred.get(), i.maximum.get());
                let valid = minimum.is_power_of_two()
                    && minimum <= MAX_MIN_BLOCK
                    && preferred.is_power_of_two()
                    && preferred >= minimum
                    && maximum >= preferred;
                if !valid {
                    return Err(Error::InvalidBlockSize {
                        minimum,
                        preferred,
                        maximum,
                    });
                }
                self.block_size = Some(BlockSize {
                    minimum,
                    preferred,
                    maximum,
                });
                Ok(None)
            }
            // Information we did not ask for or do not know: ignored.
            _ => Ok(None),
        }
    }

    fn option_ack(&mut self, step: Step) -> Result<Option<Raw>, Error> {
        match step {
            Step::StartTls => {
                self.phase = Phase::AwaitTls;
                Ok(Some(Raw::StartTls))
            }
            Step::List => {
                self.abort();
                self.phase = Phase::Finished;
                Ok(Some(Raw::Finished))
            }
            Step::ExtendedHeaders => {
                self.mode = HeaderMode::Extended;
                let next = self.after_extended();
                self.start(next);
                Ok(None)
            }
            Step::StructuredReply => {
                self.mode = HeaderMode::Structured;
                let next = self.after_headers();
                self.start(next);
                Ok(None)
            }
            Step::MetaContext => {
                let next = self.final_step();
                self.start(next);
                Ok(None)
            }
            Step::Info => {
                let export = self.make_export().map_err(|e| self.abort_with(e))?;
                self.abort();
                self.phase = Phase::Finished;
                self.pending = Some(Raw::Finished);
                Ok(Some(Raw::Info(export)))
            }
            Step::Go => {
                let export = self.make_export()?;
                Ok(Some(self.enter_transmission(export)))
            }
        }
    }

    fn option_error(&mut self, step: Step, reply: ReplyType) -> Result<Option<Raw>, Error> {
        let option = self.option_of(step);
        let message = Span::text(Src::Payload, self.payload.bytes(), 0, self.payload.len);
        let refused = Some(Raw::Refused {
            option,
            reply,
            message,
        });
        if reply == ReplyType::ERR_SHUTDOWN {
            return Err(self.abort_with(Error::ServerShutdown));
        }
        if reply == ReplyType::ERR_TLS_REQD && !self.tls_active {
            return Err(self.abort_with(Error::TlsRequired));
        }
        match step {
            Step::StartTls => {
                if self.config.tls == TlsPolicy::Require {
                    return Err(self.abort_with(Error::TlsRefused { reply }));
                }
                let next = self.after_tls();
                self.start(next);
                Ok(refused)
            }
            Step::ExtendedHeaders => {
                let next = self.after_extended();
                self.start(next);
                Ok(refused)
            }
            Step::StructuredReply => {
                let next = self.after_headers();
                self.start(next);
                Ok(refused)
            }
            Step::MetaContext => {
                // Selection failed: nothing is selected (and listed names
                // must be disregarded, which `Refused` tells the caller).
                self.contexts.clear();
                let next = self.final_step();
                self.start(next);
                Ok(refused)
            }
            Step::Go if reply == ReplyType::ERR_UNSUP => {
                if self.mode == HeaderMode::Extended {
                    return Err(Error::GoUnsupportedWithExtendedHeaders);
                }
                self.start(None);
                Ok(refused)
            }
            Step::Info | Step::Go if reply == ReplyType::ERR_UNKNOWN => {
                Err(self.abort_with(Error::UnknownExport))
            }
            Step::List | Step::Info | Step::Go => {
                Err(self.abort_with(Error::OptionFailed { option, reply }))
            }
        }
    }
}
