//! What the client asks of the server. The machine owns its configuration:
//! the export name and the metadata context queries are copied into fixed
//! inline storage, so a client needs no heap and borrows nothing.

use core::fmt;
use core::time::Duration;

use crate::wire::MAX_STRING;

use super::MAX_CONTEXTS;

/// Bytes of metadata context queries one configuration holds, all queries
/// together. Room for the longest context name qemu makes
/// (`qemu:dirty-bitmap:` and a 1023-byte bitmap name) beside
/// `base:allocation` and `qemu:allocation-depth`.
pub const QUERY_BYTES: usize = 2048;

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
    /// the configured queries, all contexts if there are none, when
    /// structured replies are available), then `NBD_OPT_ABORT`.
    Info,
    /// `NBD_OPT_LIST`, then `NBD_OPT_ABORT`.
    List,
}

/// Client configuration, valid by construction: the export name and the
/// queries are checked as they are added.
#[derive(Clone, Debug)]
pub struct Config {
    export_name: heapless::String<MAX_STRING>,
    /// The queries, back to back; `ends[i]` is where query `i` ends.
    queries: heapless::String<QUERY_BYTES>,
    ends: heapless::Vec<u16, MAX_CONTEXTS>,
    pub tls: TlsPolicy,
    /// Ask for `NBD_OPT_STRUCTURED_REPLY` (if extended headers are not
    /// wanted or refused).
    pub structured_replies: bool,
    /// Ask for `NBD_OPT_EXTENDED_HEADERS`.
    pub extended_headers: bool,
    pub mode: Mode,
    /// Give up on a handshake that takes longer than this.
    pub handshake_timeout: Option<Duration>,
}

impl Config {
    /// A configuration for `export_name` (empty: the default export), with
    /// the defaults: no TLS, structured replies and extended headers
    /// wanted, no metadata contexts, `Mode::Go`, no timeout.
    pub fn new(export_name: &str) -> Result<Self, ConfigError> {
        let mut name = heapless::String::new();
        name.push_str(export_name)
            .map_err(|_| ConfigError::ExportNameTooLong)?;
        Ok(Self {
            export_name: name,
            queries: heapless::String::new(),
            ends: heapless::Vec::new(),
            tls: TlsPolicy::Disable,
            structured_replies: true,
            extended_headers: true,
            mode: Mode::Go,
            handshake_timeout: None,
        })
    }

    /// Add a metadata context to select (`Mode::Go`) or a query to list
    /// (`Mode::Info`). Nothing is added if it fails.
    pub fn add_meta_context(&mut self, query: &str) -> Result<(), ConfigError> {
        if query.is_empty() {
            return Err(ConfigError::EmptyContextQuery);
        }
        if self.ends.is_full() {
            return Err(ConfigError::TooManyContexts);
        }
        self.queries
            .push_str(query)
            .map_err(|_| ConfigError::ContextQueriesTooLong)?;
        // QUERY_BYTES fits in a u16 (asserted below); `ends` has room
        // (checked above), so the push cannot fail.
        let end = self.queries.len() as u16;
        self.ends
            .push(end)
            .map_err(|_| ConfigError::TooManyContexts)
    }

    pub fn export_name(&self) -> &str {
        &self.export_name
    }

    /// The configured metadata context queries, in order.
    pub fn meta_contexts(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.ends.len()).map(|i| self.meta_context(i).unwrap_or(""))
    }

    /// Query `i`, if there are that many.
    pub fn meta_context(&self, i: usize) -> Option<&str> {
        let end = usize::from(*self.ends.get(i)?);
        let start = match i.checked_sub(1) {
            Some(p) => usize::from(*self.ends.get(p)?),
            None => 0,
        };
        self.queries.get(start..end)
    }

    pub(crate) fn meta_context_count(&self) -> usize {
        self.ends.len()
    }
}

const _: () = assert!(QUERY_BYTES <= u16::MAX as usize);

/// Why a [`Config`] refused a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The export name is longer than 4096 bytes (the spec's limit).
    ExportNameTooLong,
    /// More than [`MAX_CONTEXTS`] metadata context queries.
    TooManyContexts,
    /// An empty metadata context query.
    EmptyContextQuery,
    /// The queries together exceed [`QUERY_BYTES`].
    ContextQueriesTooLong,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ExportNameTooLong => {
                write!(f, "export name longer than {MAX_STRING} bytes")
            }
            ConfigError::TooManyContexts => {
                write!(f, "more than {MAX_CONTEXTS} metadata contexts")
            }
            ConfigError::EmptyContextQuery => f.write_str("empty metadata context name"),
            ConfigError::ContextQueriesTooLong => {
                write!(
                    f,
                    "metadata context names longer than {QUERY_BYTES} bytes together"
                )
            }
        }
    }
}

impl core::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;

    #[test]
    fn names_and_queries_are_kept_and_bounded() {
        let name = "n".repeat(MAX_STRING);
        let mut c = Config::new(&name).unwrap();
        assert_eq!(c.export_name(), name);
        assert_eq!(
            Config::new(&"n".repeat(MAX_STRING + 1)).unwrap_err(),
            ConfigError::ExportNameTooLong
        );
        c.add_meta_context("base:allocation").unwrap();
        c.add_meta_context("qemu:dirty-bitmap:b").unwrap();
        assert_eq!(
            c.meta_contexts().collect::<Vec<_>>(),
            ["base:allocation", "qemu:dirty-bitmap:b"]
        );
        assert_eq!(c.meta_context(2), None);
        assert_eq!(c.add_meta_context(""), Err(ConfigError::EmptyContextQuery));
        let long: String = "q".repeat(QUERY_BYTES);
        assert_eq!(
            c.add_meta_context(&long),
            Err(ConfigError::ContextQueriesTooLong)
        );
        // A refused query leaves the others as they were.
        assert_eq!(c.meta_contexts().len(), 2);
        for _ in 2..MAX_CONTEXTS {
            c.add_meta_context("a:b").unwrap();
        }
        assert_eq!(c.add_meta_context("a:b"), Err(ConfigError::TooManyContexts));
        assert_eq!(c.meta_contexts().last(), Some("a:b"));
    }

    #[test]
    fn one_query_may_fill_the_store() {
        let mut c = Config::new("").unwrap();
        c.add_meta_context(&"q".repeat(QUERY_BYTES)).unwrap();
        assert_eq!(c.meta_context(0).map(str::len), Some(QUERY_BYTES));
        assert_eq!(
            c.add_meta_context("x"),
            Err(ConfigError::ContextQueriesTooLong)
        );
    }
}
