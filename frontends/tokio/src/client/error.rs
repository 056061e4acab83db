//! One error type for the client library, with messages meant for users.

use std::fmt;
use std::sync::Arc;

use blockwire_core::client::{ConfigError, Error as ProtocolError, RequestError, RequestFailure};
use blockwire_core::wire::Errno;

use super::uri::UriError;

#[derive(Clone, Debug)]
pub enum ClientError {
    Uri(UriError),
    /// Connecting, reading or writing the socket failed.
    Io(Arc<std::io::Error>),
    Tls(String),
    /// The export name or a metadata context name does not fit the
    /// client's configuration.
    Config(ConfigError),
    /// The connection ended on a protocol error (or a refusal in the
    /// handshake).
    Protocol(ProtocolError),
    /// The server answered the request with an error; the connection goes
    /// on.
    Request {
        what: &'static str,
        offset: u64,
        len: u64,
        failure: RequestFailure,
        message: Option<String>,
    },
    /// The client machine refused to send the request (caller mistake or
    /// a command the export does not support).
    Refused {
        what: &'static str,
        error: RequestError,
    },
    /// The connection is gone (an earlier error, or it was closed).
    Closed(String),
    /// No selected metadata context of that name.
    NoContext(String),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(Arc::new(e))
    }
}

impl From<ConfigError> for ClientError {
    fn from(e: ConfigError) -> Self {
        ClientError::Config(e)
    }
}

impl From<UriError> for ClientError {
    fn from(e: UriError) -> Self {
        ClientError::Uri(e)
    }
}

fn errno_name(e: Errno) -> String {
    match e.name() {
        Some(n) => format!("{n} ({})", std::io::Error::from_raw_os_error(e.0 as i32)),
        None => format!("error {}", e.0),
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Uri(e) => write!(f, "{e}"),
            ClientError::Io(e) => write!(f, "{e}"),
            ClientError::Tls(e) => write!(f, "TLS: {e}"),
            ClientError::Config(e) => write!(f, "bad client configuration: {e}"),
            ClientError::Protocol(e) => write!(f, "NBD protocol: {e}"),
            ClientError::Request {
                what,
                offset,
                len,
                failure,
                message,
            } => {
                write!(f, "{what} of {len} bytes at offset {offset} failed: ")?;
                match failure {
                    RequestFailure::Server(e) => write!(f, "{}", errno_name(*e))?,
                    RequestFailure::Incomplete => write!(f, "incomplete reply from the server")?,
                }
                match message {
                    // The server's words: shown, never obeyed by the terminal.
                    Some(m) if !m.is_empty() => write!(f, " ({})", super::text::escape(m)),
                    _ => Ok(()),
                }
            }
            ClientError::Refused { what, error } => write!(f, "{what} not sent: {error}"),
            ClientError::Closed(why) => write!(f, "connection closed: {why}"),
            ClientError::NoContext(c) => {
                write!(
                    f,
                    "metadata context {c:?} was not negotiated with the server"
                )
            }
        }
    }
}

impl std::error::Error for ClientError {}
