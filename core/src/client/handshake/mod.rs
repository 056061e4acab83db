//! The handshake phase: the greeting, option haggling, and the
//! `EXPORT_NAME` fallback, with everything negotiated so far.
//!
//! [`request`] says which option comes next and writes it; [`reply`] reads
//! the server's answers and acts on them. This file frames the input: each
//! unit (greeting, option reply, `EXPORT_NAME` reply) is taken only once it
//! is whole.

mod reply;
mod request;

use crate::wire::codec::{Reader, Sink};
use crate::wire::headers::{ExportNameReply, OptionReply};
use crate::wire::{
    ClientFlags, EXPORT_NAME_PADDING, HandshakeFlags, HeaderMode, IHAVEOPT, NBD_MAGIC,
    OLDSTYLE_MAGIC, OPTION_REPLY_MAGIC, ReplyType, TransmissionFlags,
};

use super::output::Output;
use super::{BlockSize, Config, Error, Export, MAX_CONTEXTS, MAX_OPTION_REPLY, Out};

pub(crate) use request::Step;

/// Export sizes from 2^63 up are refused: offsets past them overflow
/// signed arithmetic everywhere (`off_t`, qemu), and no real disk is that big.
const MAX_EXPORT_SIZE: u64 = (1 << 63) - 1;

/// Selected metadata contexts: the server's id, and the index of the
/// configured query that named it.
pub(crate) type Contexts = heapless::Vec<(u32, Option<u8>), MAX_CONTEXTS>;

/// Where the handshake is.
#[derive(Clone, Copy, Debug)]
enum At {
    Greeting,
    /// Replies to this option are coming.
    Option(Step),
    ExportNameReply,
    /// The `EXPORT_NAME` reply's zero padding, `left` bytes of it.
    ExportNamePadding {
        left: usize,
        export: Export,
    },
}

/// Where the handshake goes after a step.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Next {
    Stay,
    /// `STARTTLS` was accepted: wait for TLS.
    AwaitTls,
    /// The export is open.
    Transmission(Export),
    /// `Mode::Info`/`Mode::List` are done; `owed`: `Finished` is still to
    /// be reported.
    Finished {
        owed: bool,
    },
}

/// The handshake's state: where it is, and what was negotiated.
#[derive(Debug)]
pub(crate) struct Handshake {
    at: At,
    /// The server offered `NBD_FLAG_NO_ZEROES` and we took it.
    no_zeroes: bool,
    tls_active: bool,
    mode: HeaderMode,
    /// `NBD_INFO_EXPORT` of the current `INFO`/`GO`.
    export: Option<(u64, TransmissionFlags)>,
    /// `NBD_INFO_BLOCK_SIZE` of the current `INFO`/`GO`.
    block_size: Option<BlockSize>,
    contexts: Contexts,
}

impl Handshake {
    pub(crate) const fn new() -> Self {
        Self {
            at: At::Greeting,
            no_zeroes: false,
            tls_active: false,
            mode: HeaderMode::Simple,
            export: None,
            block_size: None,
            contexts: heapless::Vec::new(),
        }
    }

    pub(crate) fn tls_active(&self) -> bool {
        self.tls_active
    }

    pub(crate) fn contexts(&self) -> &[(u32, Option<u8>)] {
        &self.contexts
    }

    /// What transmission keeps of the handshake.
    pub(crate) fn into_contexts(self) -> Contexts {
        self.contexts
    }

    /// TLS is up: go on with the option after `STARTTLS`.
    pub(crate) fn tls_up(&mut self, config: &Config, out: &mut Output) -> Result<(), Error> {
        self.tls_active = true;
        let step = self.after_tls(config);
        self.start(step, config, out)
    }

    /// Take the next unit of `input`, if it is whole.
    pub(crate) fn step<'i>(
        &mut self,
        input: &'i [u8],
        config: &Config,
        out: &mut Output,
    ) -> Result<(Out<'i>, Next), Error> {
        match self.at {
            At::Greeting => self.greeting(input, config, out).map(|o| (o, Next::Stay)),
            At::Option(step) => self.option_reply(step, input, config, out),
            At::ExportNameReply => {
                let Ok(r) = Reader::new(input).header::<ExportNameReply>("export name reply")
                else {
                    return Ok((Out::NEED_MORE, Next::Stay));
                };
                self.export = Some(check_size(r.size.get(), r.flags.get())?);
                let export = self.make_export()?;
                let left = if self.no_zeroes {
                    0
                } else {
                    EXPORT_NAME_PADDING
                };
                self.at = At::ExportNamePadding { left, export };
                Ok((Out::took(ExportNameReply::SIZE), Next::Stay))
            }
            At::ExportNamePadding { left, export } => {
                let k = left.min(input.len());
                if k == 0 && left > 0 {
                    return Ok((Out::NEED_MORE, Next::Stay));
                }
                if k < left {
                    self.at = At::ExportNamePadding {
                        left: left - k,
                        export,
                    };
                    return Ok((Out::took(k), Next::Stay));
                }
                Ok((
                    Out::event(k, super::Event::Ready(export)),
                    Next::Transmission(export),
                ))
            }
        }
    }

    /// The server's greeting; the answer is our flags and the first
    /// option.
    fn greeting<'i>(
        &mut self,
        input: &'i [u8],
        config: &Config,
        out: &mut Output,
    ) -> Result<Out<'i>, Error> {
        let mut r = Reader::new(input);
        // The magics are checked as soon as they are here: an oldstyle or
        // foreign server is refused without waiting for more.
        let (Ok(magic), Ok(second)) = (r.u64("NBDMAGIC"), r.u64("IHAVEOPT")) else {
            return Ok(Out::NEED_MORE);
        };
        if magic != NBD_MAGIC {
            return Err(Error::BadMagic { found: magic });
        }
        if second == OLDSTYLE_MAGIC {
            return Err(Error::Oldstyle);
        }
        if second != IHAVEOPT {
            return Err(Error::BadMagic { found: second });
        }
        let Ok(flags) = r.u16("handshake flags") else {
            return Ok(Out::NEED_MORE);
        };
        let flags = HandshakeFlags::from_bits_retain(flags);
        if !flags.contains(HandshakeFlags::FIXED_NEWSTYLE) {
            return Err(Error::NotFixedNewstyle);
        }
        let mut ours = ClientFlags::FIXED_NEWSTYLE;
        if flags.contains(HandshakeFlags::NO_ZEROES) {
            ours |= ClientFlags::NO_ZEROES;
            self.no_zeroes = true;
        }
        request::emit(out, |o| o.put(&ours.bits().to_be_bytes()))?;
        let step = self.first_step(config);
        self.start(step, config, out)?;
        Ok(Out::took(input.len() - r.remaining()))
    }

    /// One option reply, taken once header and payload are both here.
    fn option_reply<'i>(
        &mut self,
        step: Step,
        input: &'i [u8],
        config: &Config,
        out: &mut Output,
    ) -> Result<(Out<'i>, Next), Error> {
        let mut r = Reader::new(input);
        let Ok(h) = r.header::<OptionReply>("option reply") else {
            return Ok((Out::NEED_MORE, Next::Stay));
        };
        let option = step.option(config.mode);
        let reply = ReplyType(h.reply_type.get());
        if h.magic.get() != OPTION_REPLY_MAGIC {
            return Err(Error::BadOptionReplyMagic {
                found: h.magic.get(),
            });
        }
        if h.option.get() != option.0 {
            return Err(Error::UnexpectedOptionReply { option, reply });
        }
        let length = h.length.get();
        if length as usize > MAX_OPTION_REPLY {
            return Err(Error::OptionReplyTooLong { option, length });
        }
        let Ok(payload) = r.bytes(length as usize, "option reply payload") else {
            return Ok((Out::NEED_MORE, Next::Stay));
        };
        let (event, next) = self.answer(step, reply, payload, config, out)?;
        Ok((Out::maybe(OptionReply::SIZE + payload.len(), event), next))
    }

    fn make_export(&self) -> Result<Export, Error> {
        let (size, flags) = self.export.ok_or(Error::MissingExportInfo)?;
        Ok(Export {
            size,
            flags,
            block_size: self.block_size,
            mode: self.mode,
        })
    }
}

fn check_size(size: u64, flags: u16) -> Result<(u64, TransmissionFlags), Error> {
    if size > MAX_EXPORT_SIZE {
        return Err(Error::ExportTooLarge { size });
    }
    Ok((size, TransmissionFlags::from_bits_retain(flags)))
}
