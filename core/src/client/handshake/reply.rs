//! The server's answers to the handshake's options, parsed by the `wire`
//! value types and acted on: the next option, an event, or the end.

use crate::wire::codec::PayloadError;
use crate::wire::option::{Info, MetaContextEntry, ServerEntry};
use crate::wire::{HeaderMode, MAX_MIN_BLOCK, OptionType, ReplyType};

use super::super::output::Output;
use super::super::{BlockSize, Config, Error, Event, Mode, TlsPolicy, text};
use super::request::{Step, final_step};
use super::{Handshake, Next, check_size};

impl Handshake {
    /// Act on one whole option reply to `step`.
    pub(super) fn answer<'i>(
        &mut self,
        step: Step,
        reply: ReplyType,
        payload: &'i [u8],
        config: &Config,
        out: &mut Output,
    ) -> Result<(Option<Event<'i>>, Next), Error> {
        if reply.is_error() {
            return self.refused(step, reply, payload, config, out);
        }
        let option = step.option(config.mode);
        let malformed = |cause: PayloadError| Error::MalformedOptionReply {
            option,
            reply,
            cause,
        };
        let stay = |e: Option<Event<'i>>| (e, Next::Stay);
        match (step, reply) {
            (_, ReplyType::ACK) if !payload.is_empty() => {
                Err(malformed(PayloadError::BadLength("NBD_REP_ACK")))
            }
            (_, ReplyType::ACK) => self.ack(step, config, out),
            (Step::List, ReplyType::SERVER) => {
                // The name is used again (to open the export), so it must
                // be a valid NBD string; a description over 4096 bytes is
                // refused as qemu's client refuses it.
                let e = ServerEntry::parse(payload).map_err(malformed)?;
                Ok(stay(Some(Event::ExportListed {
                    name: e.name,
                    description: text(e.description),
                })))
            }
            (Step::Info | Step::Go, ReplyType::INFO) => {
                let info = Info::parse(payload).map_err(malformed)?;
                self.info(info, out).map(stay)
            }
            (Step::MetaContext, ReplyType::META_CONTEXT) => {
                let e = MetaContextEntry::parse(payload).map_err(malformed)?;
                let event = Event::MetaContext {
                    id: e.id,
                    name: e.name,
                };
                if config.mode == Mode::Info {
                    // Listed, not selected: ids mean nothing.
                    return Ok(stay(Some(event)));
                }
                if self.contexts.iter().any(|&(i, _)| i == e.id) {
                    return Err(Error::DuplicateContext { id: e.id });
                }
                let query = config
                    .meta_contexts()
                    .position(|q| q == e.name)
                    .map(|i| i as u8);
                self.contexts
                    .push((e.id, query))
                    .map_err(|_| Error::TooManyContexts)?;
                Ok(stay(Some(event)))
            }
            _ => Err(Error::UnexpectedOptionReply { option, reply }),
        }
    }

    /// One `NBD_REP_INFO` of `INFO` or `GO`.
    fn info<'i>(&mut self, info: Info<'i>, out: &mut Output) -> Result<Option<Event<'i>>, Error> {
        match info {
            Info::Export { size, flags } => {
                let export = check_size(size, flags).map_err(|e| Self::abort_with(out, e))?;
                self.export = Some(export);
                Ok(None)
            }
            Info::Name(n) => Ok(Some(Event::CanonicalName(text(n)))),
            Info::Description(d) => Ok(Some(Event::Description(text(d)))),
            Info::BlockSize {
                minimum,
                preferred,
                maximum,
            } => {
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
            // Information we did not ask for or do not know: ignored, as
            // the spec says.
            Info::Unknown(_) => Ok(None),
        }
    }

    /// `NBD_REP_ACK`: the option is done.
    fn ack<'i>(
        &mut self,
        step: Step,
        config: &Config,
        out: &mut Output,
    ) -> Result<(Option<Event<'i>>, Next), Error> {
        let next = match step {
            Step::StartTls => return Ok((Some(Event::StartTls), Next::AwaitTls)),
            Step::List => {
                Self::abort(out)?;
                return Ok((Some(Event::Finished), Next::Finished { owed: false }));
            }
            Step::ExtendedHeaders => {
                self.mode = HeaderMode::Extended;
                self.after_extended(config)
            }
            Step::StructuredReply => {
                self.mode = HeaderMode::Structured;
                self.after_headers(config)
            }
            Step::MetaContext => final_step(config),
            Step::Info => {
                let export = self.make_export().map_err(|e| Self::abort_with(out, e))?;
                Self::abort(out)?;
                return Ok((Some(Event::Info(export)), Next::Finished { owed: true }));
            }
            Step::Go => {
                let export = self.make_export()?;
                return Ok((Some(Event::Ready(export)), Next::Transmission(export)));
            }
        };
        self.start(next, config, out)?;
        Ok((None, Next::Stay))
    }

    /// An error reply: a refusal to live with, or the end.
    fn refused<'i>(
        &mut self,
        step: Step,
        reply: ReplyType,
        payload: &'i [u8],
        config: &Config,
        out: &mut Output,
    ) -> Result<(Option<Event<'i>>, Next), Error> {
        let option = step.option(config.mode);
        if reply == ReplyType::ERR_SHUTDOWN {
            return Err(Self::abort_with(out, Error::ServerShutdown));
        }
        if reply == ReplyType::ERR_TLS_REQD && !self.tls_active {
            return Err(Self::abort_with(out, Error::TlsRequired));
        }
        let next = match step {
            Step::StartTls if config.tls == TlsPolicy::Require => {
                return Err(Self::abort_with(out, Error::TlsRefused { reply }));
            }
            Step::StartTls => self.after_tls(config),
            Step::ExtendedHeaders => self.after_extended(config),
            Step::StructuredReply => self.after_headers(config),
            Step::MetaContext => {
                // Selection failed: nothing is selected (and listed names
                // must be disregarded, which `Refused` tells the caller).
                self.contexts.clear();
                final_step(config)
            }
            Step::Go if reply == ReplyType::ERR_UNSUP => {
                if self.mode == HeaderMode::Extended {
                    // EXPORT_NAME cannot carry extended headers.
                    return Err(Error::GoUnsupportedWithExtendedHeaders);
                }
                self.start_export_name(config, out)?;
                return Ok((Some(refusal(option, reply, payload)), Next::Stay));
            }
            Step::Info | Step::Go if reply == ReplyType::ERR_UNKNOWN => {
                return Err(Self::abort_with(out, Error::UnknownExport));
            }
            Step::List | Step::Info | Step::Go => {
                return Err(Self::abort_with(out, Error::OptionFailed { option, reply }));
            }
        };
        self.start(next, config, out)?;
        Ok((Some(refusal(option, reply, payload)), Next::Stay))
    }
}

fn refusal(option: OptionType, reply: ReplyType, message: &[u8]) -> Event<'_> {
    Event::Refused {
        option,
        reply,
        message: text(message),
    }
}
