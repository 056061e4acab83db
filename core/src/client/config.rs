//! What the client asks of the server.

use core::time::Duration;

use crate::wire::MAX_STRING;

use super::MAX_CONTEXTS;

/// Whether the client upgrades the connection to TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Never send `NBD_OPT_STARTTLS`. A server that answers
    /// `NBD_REP_ERR_TLS_REQD` ends the handshake with
    /// [`Error::TlsRequired`](super::Error::TlsRequired).
    #[default]
    Disable,
    /// Send `NBD_OPT_STARTTLS` first; continue in plaintext if the server
    /// refuses.
    Allow,
    /// Send `NBD_OPT_STARTTLS` first; end the handshake with
    /// [`Error::TlsRefused`](super::Error::TlsRefused) if the server refuses.
    Require,
}

/// What the handshake is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Enter transmission with `NBD_OPT_GO` (falling back to
    /// `NBD_OPT_EXPORT_NAME` for old servers).
    #[default]
    Go,
    /// `NBD_OPT_INFO` on the export (and `NBD_OPT_LIST_META_CONTEXT` with
    /// [`Config::meta_contexts`] as queries, all contexts if empty, when
    /// structured replies are available), then `NBD_OPT_ABORT`.
    Info,
    /// `NBD_OPT_LIST`, then `NBD_OPT_ABORT`.
    List,
}

/// Client configuration; strings are borrowed for the life of the client
/// and sent from where they are, never copied.
#[derive(Clone, Copy, Debug)]
pub struct Config<'c> {
    /// Export to open (empty: the default export).
    pub export_name: &'c str,
    pub tls: TlsPolicy,
    /// Ask for `NBD_OPT_STRUCTURED_REPLY` (if extended headers are not
    /// wanted or refused).
    pub structured_replies: bool,
    /// Ask for `NBD_OPT_EXTENDED_HEADERS`.
    pub extended_headers: bool,
    /// Metadata contexts to select (`Mode::Go`) or list (`Mode::Info`);
    /// at most [`MAX_CONTEXTS`].
    pub meta_contexts: &'c [&'c str],
    pub mode: Mode,
    /// Give up on a handshake that takes longer than this.
    pub handshake_timeout: Option<Duration>,
}

impl<'c> Config<'c> {
    /// Defaults: no TLS, structured replies and extended headers wanted,
    /// no metadata contexts, `Mode::Go`, no timeout.
    pub const fn new(export_name: &'c str) -> Self {
        Self {
            export_name,
            tls: TlsPolicy::Disable,
            structured_replies: true,
            extended_headers: true,
            meta_contexts: &[],
            mode: Mode::Go,
            handshake_timeout: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.export_name.len() > MAX_STRING {
            return Err(ConfigError::ExportNameTooLong);
        }
        if self.meta_contexts.len() > MAX_CONTEXTS {
            return Err(ConfigError::TooManyContexts);
        }
        for q in self.meta_contexts {
            if q.is_empty() || q.len() > MAX_STRING {
                return Err(ConfigError::BadContextQuery);
            }
        }
        Ok(())
    }
}

/// Why a [`Config`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// More than 4096 bytes.
    ExportNameTooLong,
    /// More than [`MAX_CONTEXTS`] queries.
    TooManyContexts,
    /// An empty query or one over 4096 bytes.
    BadContextQuery,
}
