//! Opening a connection: the socket, the core machine's handshake, and the
//! STARTTLS upgrade in the middle of it.

use std::time::Duration;

use blockwire_core::client::{Client, Config, Event, Export, INPUT_BUFFER, Mode, TlsPolicy};
use blockwire_core::time::Instant;
use blockwire_core::wire::HeaderMode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::error::{ClientError, Result};
use super::uri::{NbdUri, Tls, Transport};

/// Requests one connection keeps in flight at most (the machine's table).
pub const MAX_IN_FLIGHT: usize = 64;

pub type Machine = Client<MAX_IN_FLIGHT>;

/// The handshake's receive buffer: room for any option reply the machine
/// takes whole, and for a server that answers quickly.
const RECEIVE_BUFFER: usize = 64 * 1024;
const _: () = assert!(RECEIVE_BUFFER >= INPUT_BUFFER);

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The socket, plain or TLS: boxed so that STARTTLS can swap it mid-way.
pub type Stream = Box<dyn Io>;

/// What to negotiate beyond what the URI says.
#[derive(Clone, Debug)]
pub struct Options {
    /// Metadata contexts to select (`Mode::Go`) or list queries
    /// (`Mode::Info`; empty lists all).
    pub meta_contexts: Vec<String>,
    pub structured_replies: bool,
    pub extended_headers: bool,
    /// The whole handshake, connecting included, must finish within this.
    /// nbdinfo and qemu's client wait forever; the default, 30 s, is three
    /// times the handshake limit qemu-nbd and `blockwire serve` give their
    /// clients (10 s), so an honest server on a slow link (TLS included)
    /// is never cut off, and a silent one fails in bounded time.
    pub handshake_timeout: Duration,
    /// While requests are in flight, the server must send something within
    /// this, or the connection fails (every request on it with the same
    /// error). `None` (the default, as nbdinfo, nbdcopy and qemu): wait
    /// for as long as the server takes. An idle connection never times
    /// out; the clock restarts with every byte received and every request
    /// the server takes, so a slow server that keeps working is not cut
    /// off.
    pub request_timeout: Option<Duration>,
}

/// `NBD_OPT_LIST` (and listed metadata contexts) ends with a clear error
/// past this many entries: a server may list forever. qemu-nbd serves
/// at most a few hundred exports in practice.
pub const MAX_LISTED: usize = 10_000;

/// ... or past this many bytes of names and descriptions (the byte bound
/// trips first when entries are large: 2,048 of the largest, 8 KiB
/// each).
pub const MAX_LISTED_BYTES: usize = 16 << 20;

impl Default for Options {
    fn default() -> Self {
        Self {
            meta_contexts: Vec::new(),
            structured_replies: true,
            extended_headers: true,
            handshake_timeout: Duration::from_secs(30),
            request_timeout: None,
        }
    }
}

/// Everything the handshake told us.
#[derive(Clone, Debug, Default)]
pub struct Details {
    pub export: Option<Export>,
    pub canonical_name: Option<String>,
    pub description: Option<String>,
    /// Contexts listed (`Mode::Info`, id 0) or selected (`Mode::Go`).
    pub contexts: Vec<(u32, String)>,
    /// `Mode::List`: name and description of each export.
    pub exports: Vec<(String, String)>,
    pub tls: bool,
    /// The last option refusal the server explained, for error messages.
    pub last_refusal: Option<String>,
    /// Bytes of names and descriptions listed so far (bounded by
    /// [`MAX_LISTED_BYTES`]).
    pub listed_bytes: usize,
}

impl Details {
    /// Whether structured replies (or extended headers, which imply them)
    /// are in use.
    pub fn structured(&self) -> bool {
        self.export.is_some_and(|e| e.mode != HeaderMode::Simple)
    }
}

/// A connection in the transmission phase (or closed, after Info/List).
pub struct Session {
    pub machine: Box<Machine>,
    pub stream: Stream,
    /// Bytes received past the end of the handshake.
    pub leftover: Vec<u8>,
    pub details: Details,
}

/// A duration for a message: "30 s", "0.5 s".
pub fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Nanoseconds since the first call: the machine only compares instants.
pub fn now() -> Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let e = *EPOCH.get_or_init(std::time::Instant::now);
    Instant(u64::try_from(e.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

async fn open(uri: &NbdUri) -> Result<Stream> {
    match &uri.transport {
        Transport::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("connect to {host}:{port}: {e}"))
                })?;
            // Request headers are small and latency-bound.
            s.set_nodelay(true)?;
            Ok(Box::new(s))
        }
        Transport::Unix(path) => {
            let s = connect_unix(path).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("connect to {}: {e}", path.display()))
            })?;
            Ok(Box::new(s))
        }
    }
}

async fn connect_unix(path: &std::path::Path) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // A leading NUL names a socket in Linux's abstract namespace.
    if let Some(name) = bytes.strip_prefix(b"\0") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            s.set_nonblocking(true)?;
            return UnixStream::from_std(s);
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::other("abstract sockets need Linux"));
        }
    }
    UnixStream::connect(path).await
}

/// The machine's configuration for `uri` and `opts`.
fn config(uri: &NbdUri, opts: &Options, mode: Mode) -> Result<Config> {
    let mut config = Config::new(&uri.export)?;
    for q in &opts.meta_contexts {
        config.add_meta_context(q)?;
    }
    config.structured_replies = opts.structured_replies;
    config.extended_headers = opts.extended_headers;
    config.mode = mode;
    config.tls = match uri.tls {
        Tls::Off => TlsPolicy::Disable,
        Tls::Require => TlsPolicy::Require,
    };
    Ok(config)
}

async fn send_all(machine: &mut Machine, stream: &mut Stream) -> Result<()> {
    loop {
        let out = machine.poll_transmit();
        if out.is_empty() {
            break;
        }
        stream.write_all(out).await?;
        let n = out.len();
        machine.transmitted(n);
    }
    stream.flush().await?;
    Ok(())
}

enum Step {
    More,
    StartTls,
    Done,
    Failed(blockwire_core::client::Error),
    /// The server sent more than the client takes.
    TooMuch(String),
}

/// Connect and negotiate per `mode`: `Go` ends in transmission, `Info` and
/// `List` end with the connection closed and `details` filled in.
pub async fn connect(uri: &NbdUri, opts: &Options, mode: Mode) -> Result<Session> {
    match tokio::time::timeout(opts.handshake_timeout, negotiate(uri, opts, mode)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Closed(format!(
            "handshake with {uri} did not finish within {} (timeout)",
            seconds(opts.handshake_timeout)
        ))),
    }
}

async fn negotiate(uri: &NbdUri, opts: &Options, mode: Mode) -> Result<Session> {
    let mut machine = Box::new(Machine::new(config(uri, opts, mode)?, now()));
    let mut stream = open(uri).await?;
    let mut details = Details::default();
    let mut buf = vec![0u8; RECEIVE_BUFFER];
    let (mut start, mut end) = (0, 0);
    loop {
        // 1. Transmit first: the handshake takes no input while a request
        //    waits to be sent.
        send_all(&mut machine, &mut stream).await?;
        // 2. Feed what is buffered, until the machine wants more.
        let mut step = Step::More;
        let mut progressed = false;
        while matches!(step, Step::More) {
            let p = machine.handle_input(&buf[start..end]);
            start += p.consumed;
            step = match p.event {
                None if p.consumed == 0 => break,
                None => Step::More,
                Some(ev) => record(ev, &mut details),
            };
            progressed = true;
        }
        match step {
            // It may have queued a request (and wait for it to be sent).
            Step::More if progressed => continue,
            Step::More => {}
            Step::StartTls => {
                if start != end {
                    return Err(ClientError::Tls("server sent data after STARTTLS".into()));
                }
                let (connector, name) = super::tls::connector(uri).map_err(ClientError::Tls)?;
                stream = Box::new(
                    connector
                        .connect(name, stream)
                        .await
                        .map_err(|e| ClientError::Tls(e.to_string()))?,
                );
                details.tls = true;
                machine.tls_established();
                continue;
            }
            Step::Done => {
                send_all(&mut machine, &mut stream).await?;
                if mode != Mode::Go {
                    let _ = stream.shutdown().await;
                }
                return Ok(Session {
                    machine,
                    stream,
                    leftover: buf[start..end].to_vec(),
                    details,
                });
            }
            Step::TooMuch(why) => {
                let _ = stream.shutdown().await;
                return Err(ClientError::Closed(why));
            }
            Step::Failed(e) => {
                // The machine may have queued NBD_OPT_ABORT: be polite.
                let _ = send_all(&mut machine, &mut stream).await;
                return Err(match (e, details.last_refusal.take()) {
                    (e, Some(msg)) if !msg.is_empty() => ClientError::Closed(format!(
                        "{e}: server said: {}",
                        super::text::escape(&msg)
                    )),
                    (e, _) => ClientError::Protocol(e),
                });
            }
        }
        // 3. Read more behind what is left.
        if start == end {
            (start, end) = (0, 0);
        } else if end == buf.len() {
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        let n = stream.read(&mut buf[end..]).await?;
        if n == 0 {
            return Err(match machine.handle_eof() {
                Ok(()) => ClientError::Closed("server closed during the handshake".into()),
                Err(e) => ClientError::Protocol(e),
            });
        }
        end += n;
    }
}

/// Why a list with `have` entries already and `bytes` of text with the
/// next one is too long, if it is.
fn too_many(have: usize, bytes: usize, what: &str) -> Option<String> {
    if have >= MAX_LISTED {
        Some(format!(
            "the server listed more than {MAX_LISTED} {what}; stopped reading the list"
        ))
    } else if bytes > MAX_LISTED_BYTES {
        Some(format!(
            "the server listed more than {} MiB of {what} (names and descriptions); \
             stopped reading the list",
            MAX_LISTED_BYTES >> 20
        ))
    } else {
        None
    }
}

fn record(ev: Event<'_>, d: &mut Details) -> Step {
    match ev {
        Event::StartTls => return Step::StartTls,
        Event::Refused { message, .. } => d.last_refusal = Some(message.to_owned()),
        Event::ExportListed { name, description } => {
            // A server may list forever: bounded, and said so.
            d.listed_bytes += name.len() + description.len();
            if let Some(why) = too_many(d.exports.len(), d.listed_bytes, "exports") {
                return Step::TooMuch(why);
            }
            d.exports.push((name.to_owned(), description.to_owned()));
        }
        Event::MetaContext { id, name } => {
            d.listed_bytes += name.len();
            if let Some(why) = too_many(d.contexts.len(), d.listed_bytes, "metadata contexts") {
                return Step::TooMuch(why);
            }
            d.contexts.push((id, name.to_owned()));
        }
        Event::CanonicalName(n) => d.canonical_name = Some(n.to_owned()),
        Event::Description(s) => d.description = Some(s.to_owned()),
        Event::Info(e) => d.export = Some(e),
        Event::Finished => return Step::Done,
        Event::Ready(e) => {
            d.export = Some(e);
            return Step::Done;
        }
        Event::Failed(e) => return Step::Failed(e),
        // Transmission events cannot come before Ready.
        _ => {}
    }
    Step::More
}
