//! The NBD client on tokio, driving `blockwire_core::client`'s sans-IO
//! machine: connect by [`NbdUri`], then pipelined async requests on a
//! [`Connection`] (or several, in a [`Pool`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), blockwire::client::ClientError> {
//! use blockwire::client::{Connection, NbdUri, Options};
//! let uri = NbdUri::parse("nbd+unix:///disk?socket=/tmp/nbd.sock")?;
//! let conn = Connection::connect(&uri, &Options::default()).await?;
//! let mut buf = vec![0; 4096];
//! conn.read(0, &mut buf).await?;
//! conn.write(4096, &buf).await?;
//! conn.flush().await?;
//! # Ok(()) }
//! ```

mod connection;
mod error;
mod handshake;
pub mod text;
mod tls;
pub mod uri;

pub use connection::{Connection, Pool};
pub use error::{ClientError, Result};
pub use handshake::{
    Details, MAX_IN_FLIGHT, MAX_LISTED, MAX_LISTED_BYTES, Options, connect as handshake, seconds,
};
pub use uri::{NbdUri, Transport};
