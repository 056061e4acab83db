//! The handshake's requests: which option comes next, and its bytes, all
//! written through the `wire` value types.

use crate::wire::codec::Overflow;
use crate::wire::option::{InfoRequest, MetaContextRequest, emit_request};
use crate::wire::{HeaderMode, InfoType, OptionType};

use super::super::output::Output;
use super::super::{Config, Error, MAX_CONTEXTS, Mode, TlsPolicy};
use super::{At, Handshake};

/// One request of the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    StartTls,
    List,
    ExtendedHeaders,
    StructuredReply,
    /// `SET_META_CONTEXT`, or `LIST_META_CONTEXT` in `Mode::Info`.
    MetaContext,
    Info,
    Go,
}

/// What `INFO` and `GO` ask for besides `NBD_INFO_EXPORT` (always sent):
/// the canonical name and description for `blockwire info`, and the block
/// sizes every request is checked against.
const INFO_REQUESTS: [InfoType; 3] = [InfoType::NAME, InfoType::DESCRIPTION, InfoType::BLOCK_SIZE];

impl Step {
    pub(crate) fn option(self, mode: Mode) -> OptionType {
        match self {
            Step::StartTls => OptionType::STARTTLS,
            Step::List => OptionType::LIST,
            Step::ExtendedHeaders => OptionType::EXTENDED_HEADERS,
            Step::StructuredReply => OptionType::STRUCTURED_REPLY,
            Step::MetaContext if mode == Mode::Info => OptionType::LIST_META_CONTEXT,
            Step::MetaContext => OptionType::SET_META_CONTEXT,
            Step::Info => OptionType::INFO,
            Step::Go => OptionType::GO,
        }
    }
}

/// Write a request into the output queue. The queue is sized for the
/// largest request a [`Config`] can make, so running out of room is a bug
/// here, not something a server can cause: it fails loudly in debug builds
/// and ends the connection (never sends a truncated request) in release.
pub(super) fn emit(
    out: &mut Output,
    write: impl FnOnce(&mut Output) -> Result<(), Overflow>,
) -> Result<(), Error> {
    write(out).map_err(|Overflow| {
        if cfg!(debug_assertions) {
            panic!("client output queue too small for an option request");
        }
        Error::OutputOverflow
    })
}

impl Handshake {
    /// The first option after the greeting.
    pub(super) fn first_step(&self, config: &Config) -> Step {
        if config.tls == TlsPolicy::Disable {
            self.after_tls(config)
        } else {
            Step::StartTls
        }
    }

    /// The option after `STARTTLS` (done or refused).
    pub(super) fn after_tls(&self, config: &Config) -> Step {
        if config.mode == Mode::List {
            Step::List
        } else if config.extended_headers {
            Step::ExtendedHeaders
        } else {
            self.after_extended(config)
        }
    }

    /// The option after `EXTENDED_HEADERS` (done, refused or not wanted).
    pub(super) fn after_extended(&self, config: &Config) -> Step {
        if self.mode == HeaderMode::Simple && config.structured_replies {
            Step::StructuredReply
        } else {
            self.after_headers(config)
        }
    }

    /// The option once the header mode is settled: contexts only make
    /// sense with structured replies.
    pub(super) fn after_headers(&self, config: &Config) -> Step {
        let wanted = match config.mode {
            // Zero queries list every context.
            Mode::Info => true,
            _ => config.meta_context_count() > 0,
        };
        if self.mode.structured() && wanted {
            Step::MetaContext
        } else {
            final_step(config)
        }
    }

    /// Queue `step`'s request and wait for its replies.
    pub(super) fn start(
        &mut self,
        step: Step,
        config: &Config,
        out: &mut Output,
    ) -> Result<(), Error> {
        let option = step.option(config.mode);
        let name = config.export_name();
        match step {
            Step::Info | Step::Go => {
                // A fresh GO/INFO describes the export anew.
                self.export = None;
                self.block_size = None;
                emit(out, |o| InfoRequest::emit(o, option, name, &INFO_REQUESTS))?;
            }
            Step::MetaContext => {
                self.contexts.clear();
                let mut queries = [""; MAX_CONTEXTS];
                let n = queries.len().min(config.meta_context_count());
                for (q, c) in queries.iter_mut().zip(config.meta_contexts()) {
                    *q = c;
                }
                let queries = queries.get(..n).unwrap_or(&[]);
                emit(out, |o| MetaContextRequest::emit(o, option, name, queries))?;
            }
            Step::StartTls | Step::List | Step::ExtendedHeaders | Step::StructuredReply => {
                emit(out, |o| emit_request(o, option, &[]))?
            }
        }
        self.at = At::Option(step);
        Ok(())
    }

    /// Queue `NBD_OPT_EXPORT_NAME`, for a server without `GO`; its reply
    /// is the export's size and flags, with no option reply header.
    pub(super) fn start_export_name(
        &mut self,
        config: &Config,
        out: &mut Output,
    ) -> Result<(), Error> {
        let name = config.export_name().as_bytes();
        emit(out, |o| emit_request(o, OptionType::EXPORT_NAME, &[name]))?;
        self.at = At::ExportNameReply;
        Ok(())
    }

    /// Queue `NBD_OPT_ABORT`: the client ends the handshake by choice (a
    /// soft disconnect).
    pub(super) fn abort(out: &mut Output) -> Result<(), Error> {
        emit(out, |o| emit_request(o, OptionType::ABORT, &[]))
    }

    /// [`abort`](Self::abort), then fail with `e`.
    pub(super) fn abort_with(out: &mut Output, e: Error) -> Error {
        match Self::abort(out) {
            Ok(()) => e,
            Err(overflow) => overflow,
        }
    }
}

/// The option that ends the handshake.
pub(super) fn final_step(config: &Config) -> Step {
    match config.mode {
        Mode::Info => Step::Info,
        _ => Step::Go,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::Sink;

    /// An option request that does not fit is a sizing bug: loud in debug
    /// builds (so a test catches it), never a truncated request.
    #[test]
    #[should_panic(expected = "client output queue too small")]
    fn an_overflowing_request_is_a_loud_bug() {
        let mut out = Output::new();
        while out.put(&[0]).is_ok() {}
        emit(&mut out, |o| emit_request(o, OptionType::ABORT, &[])).ok();
    }

    #[test]
    fn a_request_that_fits_is_written_whole() {
        let mut out = Output::new();
        emit(&mut out, |o| emit_request(o, OptionType::ABORT, &[])).unwrap();
        assert_eq!(out.pending(), 16);
        assert_eq!(&out.poll()[..8], b"IHAVEOPT");
    }
}
