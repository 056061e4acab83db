//! One client connection: the core's server machine driven over a socket.
//!
//! The handshake runs in the connection's task, step by step as the core's
//! module docs describe. Transmission then splits the socket: this task
//! reads and decodes requests and dispatches each as its own task (bounded
//! by [`MAX_IN_FLIGHT`] requests and [`BYTE_BUDGET`] payload bytes, so a
//! client that does not read its replies stops being read from); a writer
//! task sends replies as they complete, out of order, several at once when
//! several are ready, each read as header plus data in one vectored write.

use std::io::{self, IoSlice};
use std::sync::Arc;
use std::time::Duration;

use blockwire_core::block::Extent;
use blockwire_core::block::contract::{MAX_EXTENT_LEN_32, StatusQuery};
use blockwire_core::block::throttle::Direction;
use blockwire_core::server::{
    CloseReason, ErrorReply, Event, MAX_REPLY_HEADER, ReplyEncoder, ReplyHeader, Request, Server,
    ServerConfig, Session,
};
use blockwire_core::time::Instant;
use blockwire_core::wire::{CommandFlags, CommandType, Errno, HeaderMode};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, warn};

use crate::io::{BufPool, InBuf, Socket, close, write_all_vectored};
use crate::registry::{Export, Registry, Snapshot};
use crate::stack::Segment;

/// Requests one connection may have in flight.
pub const MAX_IN_FLIGHT: usize = 64;
/// Read and write payload bytes one connection may have in flight.
pub const BYTE_BUDGET: usize = 256 << 20;
/// Input buffer per connection: many small requests per read.
const INPUT_BUFFER: usize = 256 << 10;
/// Replies sent in one vectored write at most.
const MAX_BATCH: usize = 64;
/// Extents per block-status chunk at most; clients ask again for the rest.
const MAX_STATUS_EXTENTS: u32 = 1 << 16;
/// Reads and writes up to this size on a device that never blocks run in
/// the connection's task (see `dispatch`).
const INLINE_MAX: usize = 64 << 10;
/// Reads shorter than this are not worth a block-status lookup for holes.
const SPARSE_READ_MIN: u64 = 64 << 10;

/// What every connection shares.
pub struct ConnContext {
    pub registry: Arc<Registry>,
    pub config: ServerConfig,
    pub tls: Option<TlsAcceptor>,
    /// Becomes `true` when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    pub epoch: tokio::time::Instant,
}

impl ConnContext {
    fn now(&self) -> Instant {
        Instant(self.epoch.elapsed().as_nanos() as u64)
    }

    fn deadline(&self, at: Instant) -> tokio::time::Instant {
        self.epoch + Duration::from_nanos(at.0)
    }
}

/// Serves one accepted connection until it ends; never fails the server.
pub async fn serve<S: Socket>(sock: S, peer: String, ctx: Arc<ConnContext>) {
    let span = tracing::info_span!("conn", %peer, export = tracing::field::Empty);
    async move {
        info!("connected");
        match run(sock, &ctx).await {
            Ok(()) => info!("closed"),
            Err(e) => info!("closed: {e}"),
        }
    }
    .instrument(span)
    .await
}

enum Handshake {
    Ready(Session),
    StartTls,
    Closed,
}

async fn run<S: Socket>(mut sock: S, ctx: &ConnContext) -> io::Result<()> {
    let snapshot = Snapshot(ctx.registry.snapshot());
    let mut server = Server::new(snapshot, ctx.config, ctx.now());
    let mut input = InBuf::new(INPUT_BUFFER);
    // The core enforces its deadline only while it waits for input; a
    // client that stalls a TLS handshake or never reads our replies must
    // not hold the connection past it either, so the whole negotiation is
    // bounded by the same instant.
    let deadline = server.poll_timeout().map(|d| ctx.deadline(d));
    match bounded(deadline, handshake(&mut server, &mut sock, &mut input, ctx)).await? {
        Handshake::Ready(session) => transmission(server, session, sock, input, ctx).await,
        Handshake::Closed => {
            close(&mut sock).await;
            Ok(())
        }
        Handshake::StartTls => {
            let Some(acceptor) = &ctx.tls else {
                // The core only offers STARTTLS when TLS is configured.
                return Err(io::Error::other("STARTTLS without a TLS configuration"));
            };
            let mut tls = bounded(deadline, async { Ok(acceptor.accept(sock).await?) }).await?;
            server.tls_established();
            debug!("tls established");
            match bounded(deadline, handshake(&mut server, &mut tls, &mut input, ctx)).await? {
                Handshake::Ready(session) => transmission(server, session, tls, input, ctx).await,
                Handshake::StartTls => Err(io::Error::other("STARTTLS twice")),
                Handshake::Closed => {
                    close(&mut tls).await;
                    Ok(())
                }
            }
        }
    }
}

/// `fut`, failed with `TimedOut` if it is still running at `deadline`.
async fn bounded<T>(
    deadline: Option<tokio::time::Instant>,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, fut)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))?,
        None => fut.await,
    }
}

/// Sends what the handshake has queued.
async fn transmit<W: AsyncWrite + Unpin>(
    server: &mut Server<Snapshot>,
    w: &mut W,
) -> io::Result<()> {
    let mut wrote = false;
    loop {
        let out = server.poll_transmit();
        if out.is_empty() {
            break;
        }
        let n = out.len();
        w.write_all(out).await?;
        server.transmitted(n);
        wrote = true;
    }
    if wrote {
        w.flush().await?;
    }
    Ok(())
}

enum HsEvent {
    StartTls,
    Ready(Session),
    Close(CloseReason),
}

async fn handshake<S: Socket>(
    server: &mut Server<Snapshot>,
    sock: &mut S,
    input: &mut InBuf,
    ctx: &ConnContext,
) -> io::Result<Handshake> {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        transmit(server, sock).await?;
        while !input.is_empty() {
            let p = server.handle_input(input.data(), ctx.now());
            let consumed = p.consumed;
            let ev = match p.event {
                None => None,
                Some(Event::StartTls) => Some(HsEvent::StartTls),
                Some(Event::Ready(s)) => Some(HsEvent::Ready(s)),
                Some(Event::Close(r)) => Some(HsEvent::Close(r)),
                Some(other) => {
                    warn!("unexpected event in handshake: {other:?}");
                    Some(HsEvent::Close(CloseReason::Closed))
                }
            };
            input.consume(consumed);
            match ev {
                None if consumed == 0 => break,
                None => {}
                Some(HsEvent::StartTls) => {
                    transmit(server, sock).await?;
                    // Plaintext sent before the TLS handshake could be
                    // injected by a man in the middle: never act on it.
                    input.clear();
                    return Ok(Handshake::StartTls);
                }
                Some(HsEvent::Ready(s)) => {
                    transmit(server, sock).await?;
                    return Ok(Handshake::Ready(s));
                }
                Some(HsEvent::Close(r)) => {
                    transmit(server, sock).await?;
                    debug!("handshake ended: {r:?}");
                    return Ok(Handshake::Closed);
                }
            }
            transmit(server, sock).await?;
        }
        let deadline = server.poll_timeout().map(|d| ctx.deadline(d));
        tokio::select! {
            r = input.fill(sock) => {
                if r? == 0 {
                    debug!("client left during handshake");
                    return Ok(Handshake::Closed);
                }
            }
            _ = sleep_until(deadline) => {
                if server.handle_timeout(ctx.now()).is_some() {
                    info!("handshake timed out");
                    return Ok(Handshake::Closed);
                }
            }
            _ = shutdown.wait_for(|s| *s) => {
                server.shutdown();
                return Ok(Handshake::Closed);
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A reply ready to send.
pub enum Reply {
    Header(ReplyHeader),
    Error(ErrorReply),
    /// One data chunk (or the simple reply's header) and `len` bytes of `buf`.
    Data {
        head: ReplyHeader,
        buf: Vec<u8>,
        len: usize,
    },
    /// A sparse read: chunk headers, each followed by its range of `buf`
    /// (empty for holes).
    Chunks {
        parts: Vec<(ReplyHeader, usize, usize)>,
        buf: Vec<u8>,
    },
    Bytes(Vec<u8>),
}

impl Reply {
    fn slices<'a>(&'a self, out: &mut Vec<IoSlice<'a>>) {
        match self {
            Reply::Header(h) => out.push(IoSlice::new(h.as_bytes())),
            Reply::Error(e) => out.push(IoSlice::new(e.as_bytes())),
            Reply::Data { head, buf, len } => {
                out.push(IoSlice::new(head.as_bytes()));
                out.push(IoSlice::new(&buf[..*len]));
            }
            Reply::Chunks { parts, buf } => {
                for (h, a, b) in parts {
                    out.push(IoSlice::new(h.as_bytes()));
                    if b > a {
                        out.push(IoSlice::new(&buf[*a..*b]));
                    }
                }
            }
            Reply::Bytes(b) => out.push(IoSlice::new(b)),
        }
    }

    fn recycle(self, pool: &BufPool) {
        match self {
            Reply::Data { buf, .. } | Reply::Chunks { buf, .. } => pool.put(buf),
            _ => {}
        }
    }
}

/// Flow-control permits a request holds until its reply is on the wire.
struct Ticket {
    _request: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

struct Outgoing {
    reply: Reply,
    _ticket: Ticket,
}

/// Per-connection state each request task needs.
struct Job {
    export: Arc<Export>,
    encoder: ReplyEncoder,
    pool: Arc<BufPool>,
    blocking: bool,
    sparse_reads: bool,
}

async fn transmission<S: Socket>(
    mut server: Server<Snapshot>,
    session: Session,
    sock: S,
    mut input: InBuf,
    ctx: &ConnContext,
) -> io::Result<()> {
    let Some(export) = server.exports().0.get(session.export).cloned() else {
        return Err(io::Error::other(
            "session names an export not in the snapshot",
        ));
    };
    tracing::Span::current().record("export", export.name.as_str());
    info!(mode = ?session.mode, contexts = session.contexts.len(), "transmission");
    let caps = export.device.caps();
    let job = Arc::new(Job {
        encoder: session.encoder(),
        pool: Arc::new(BufPool::default()),
        blocking: caps.blocking,
        sparse_reads: caps.sparse_reads,
        export,
    });
    let (mut rd, wr) = sock.split_owned();
    let requests = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let bytes = Arc::new(Semaphore::new(BYTE_BUDGET));
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer_gone = Arc::new(Notify::new());
    let writer =
        tokio::spawn(writer(wr, rx, job.pool.clone(), writer_gone.clone()).in_current_span());
    let mut shutdown = ctx.shutdown.clone();

    let result: io::Result<()> = async {
        loop {
            while !input.is_empty() {
                let p = server.handle_input(input.data(), ctx.now());
                let consumed = p.consumed;
                let action = match p.event {
                    None => None,
                    Some(Event::Request(req)) => Some(Action::Request(req)),
                    Some(Event::Reject { reply, close }) => Some(Action::Reject(reply, close)),
                    Some(Event::Disconnect) => Some(Action::End),
                    Some(Event::Close(r)) => Some(Action::Close(r)),
                    Some(other) => {
                        // WriteData cannot come: payloads are taken below
                        // right after their request.
                        warn!("unexpected event in transmission: {other:?}");
                        Some(Action::Close(CloseReason::Closed))
                    }
                };
                input.consume(consumed);
                match action {
                    None if consumed == 0 => break,
                    None => {}
                    Some(Action::Request(req)) => {
                        let payload = server.write_payload_remaining().unwrap_or(0) as usize;
                        let ticket = tokio::select! {
                            t = ticket(&requests, &bytes, &req, payload) => t,
                            _ = writer_gone.notified() => return Ok(()),
                        };
                        let data = if req.command == CommandType::WRITE {
                            let mut buf = job.pool.get(payload);
                            let have = input.len().min(payload);
                            buf[..have].copy_from_slice(&input.data()[..have]);
                            input.consume(have);
                            server.skip_payload(have as u64);
                            if have < payload {
                                // The rest goes from the socket straight
                                // into the request's buffer.
                                tokio::select! {
                                    r = rd.read_exact(&mut buf[have..payload]) => { r?; }
                                    _ = writer_gone.notified() => return Ok(()),
                                    _ = shutdown.wait_for(|s| *s) => {
                                        server.shutdown();
                                        return Ok(());
                                    }
                                }
                                server.skip_payload((payload - have) as u64);
                            }
                            Some((buf, payload))
                        } else {
                            None
                        };
                        dispatch(job.clone(), req, data, ticket, tx.clone());
                    }
                    Some(Action::Reject(reply, close)) => {
                        debug!(errno = ?reply.errno(), "request rejected");
                        let ticket = ticket(&requests, &bytes, &NO_REQUEST, 0).await;
                        let _ = tx.send(Outgoing {
                            reply: Reply::Error(reply),
                            _ticket: ticket,
                        });
                        if let Some(r) = close {
                            debug!("closing: {r:?}");
                            return Ok(());
                        }
                    }
                    Some(Action::End) => {
                        debug!("client disconnected");
                        return Ok(());
                    }
                    Some(Action::Close(r)) => {
                        info!("closing: {r:?}");
                        return Ok(());
                    }
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => {
                    server.shutdown();
                    return Ok(());
                }
                _ = writer_gone.notified() => return Ok(()),
                r = input.fill(&mut rd) => {
                    if r? == 0 {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;

    // Let in-flight requests finish and their replies go out.
    let _all = requests.acquire_many(MAX_IN_FLIGHT as u32).await;
    drop(tx);
    let _ = writer.await;
    result
}

enum Action {
    Request(Request),
    Reject(ErrorReply, Option<CloseReason>),
    End,
    Close(CloseReason),
}

const NO_REQUEST: Request = Request {
    cookie: 0,
    command: CommandType::FLUSH,
    flags: CommandFlags::empty(),
    offset: 0,
    length: 0,
    contexts: blockwire_core::server::ContextSet::EMPTY,
};

async fn ticket(
    requests: &Arc<Semaphore>,
    bytes: &Arc<Semaphore>,
    req: &Request,
    payload: usize,
) -> Ticket {
    let n = match req.command {
        CommandType::READ => req.length as usize,
        CommandType::WRITE => payload,
        _ => 0,
    }
    .min(BYTE_BUDGET);
    // The semaphores are never closed, so acquiring cannot fail.
    let request = requests
        .clone()
        .acquire_owned()
        .await
        .expect("semaphore closed");
    let bytes = if n > 0 {
        Some(
            bytes
                .clone()
                .acquire_many_owned(n as u32)
                .await
                .expect("semaphore closed"),
        )
    } else {
        None
    };
    Ticket {
        _request: request,
        _bytes: bytes,
    }
}

fn dispatch(
    job: Arc<Job>,
    req: Request,
    data: Option<(Vec<u8>, usize)>,
    ticket: Ticket,
    tx: mpsc::UnboundedSender<Outgoing>,
) {
    let device = &job.export.device;
    let span = tracing::Span::current();
    if !job.blocking
        && !device.throttled()
        && device.latency().is_none()
        && matches!(req.command, CommandType::READ | CommandType::WRITE)
        && req.length as usize <= INLINE_MAX
    {
        // On a device that never waits (memory, a file on tmpfs) a small
        // read or write is a copy of a microsecond or two: handing it to
        // another task or thread costs several context switches more.
        // Devices that can block (disks) always go to the blocking pool,
        // so a slow read never stalls this connection's other requests.
        let reply = execute(&job, &req, data);
        let _ = tx.send(Outgoing {
            reply,
            _ticket: ticket,
        });
        return;
    }
    if job.blocking && !device.throttled() && device.latency().is_none() {
        // Nothing to wait for first: straight to the blocking pool, one
        // hand-off per request instead of a task and then a thread.
        tokio::task::spawn_blocking(move || {
            let _e = span.enter();
            let reply = execute(&job, &req, data);
            let _ = tx.send(Outgoing {
                reply,
                _ticket: ticket,
            });
        });
        return;
    }
    tokio::spawn(
        async move {
            let device = &job.export.device;
            let dir = match req.command {
                CommandType::READ => Some(Direction::Read),
                CommandType::WRITE | CommandType::WRITE_ZEROES | CommandType::TRIM => {
                    Some(Direction::Write)
                }
                _ => None,
            };
            if let Some(dir) = dir {
                device.admit(dir, req.length).await;
            }
            if let Some(l) = device.latency() {
                tokio::time::sleep(l).await;
            }
            let reply = if job.blocking {
                let j = job.clone();
                match tokio::task::spawn_blocking(move || execute(&j, &req, data)).await {
                    Ok(r) => r,
                    Err(e) => {
                        warn!("request task failed: {e}");
                        Reply::Error(job.encoder.error(&req, Errno::EIO, "internal error"))
                    }
                }
            } else {
                execute(&job, &req, data)
            };
            let _ = tx.send(Outgoing {
                reply,
                _ticket: ticket,
            });
        }
        .instrument(span),
    );
}

fn error_reply(job: &Job, req: &Request, e: io::Error) -> Reply {
    let errno = Errno::from_host(e.raw_os_error().unwrap_or(libc::EIO));
    debug!(cookie = req.cookie, command = ?req.command, "request failed: {e}");
    Reply::Error(job.encoder.error(req, errno, &e.to_string()))
}

/// Carries out one request and encodes its reply.
fn execute(job: &Job, req: &Request, data: Option<(Vec<u8>, usize)>) -> Reply {
    let device = &job.export.device;
    let enc = &job.encoder;
    let fua = req.flags.contains(CommandFlags::FUA);
    let done = |r: io::Result<()>| match r {
        Ok(()) => Reply::Header(enc.ok(req)),
        Err(e) => error_reply(job, req, e),
    };
    match req.command {
        CommandType::READ => read(job, req),
        CommandType::WRITE => {
            let Some((buf, len)) = data else {
                return done(Ok(()));
            };
            let r = device.write(req.offset, &buf[..len], fua);
            job.pool.put(buf);
            done(r)
        }
        CommandType::FLUSH => done(device.flush()),
        CommandType::TRIM => done(device.trim(req.offset, req.length, fua)),
        CommandType::WRITE_ZEROES => done(device.write_zeroes(
            req.offset,
            req.length,
            !req.flags.contains(CommandFlags::NO_HOLE),
            req.flags.contains(CommandFlags::FAST_ZERO),
            fua,
        )),
        CommandType::CACHE => done(device.cache(req.offset, req.length)),
        CommandType::BLOCK_STATUS => match block_status(job, req) {
            Ok(b) => Reply::Bytes(b),
            Err(e) => error_reply(job, req, e),
        },
        _ => Reply::Error(enc.error(req, Errno::EINVAL, "unsupported command")),
    }
}

fn read(job: &Job, req: &Request) -> Reply {
    let device = &job.export.device;
    let enc = &job.encoder;
    let len = req.length as usize;
    if len == 0 {
        return Reply::Header(enc.ok(req));
    }
    let mut buf = job.pool.get(len);
    let sparse = job.sparse_reads
        && enc.supports_holes()
        && !req.flags.contains(CommandFlags::DF)
        && req.length >= SPARSE_READ_MIN;
    if !sparse {
        return match device.read(req.offset, &mut buf[..len]) {
            Ok(()) => Reply::Data {
                head: enc.data(req, req.offset, len as u32, true),
                buf,
                len,
            },
            Err(e) => {
                job.pool.put(buf);
                error_reply(job, req, e)
            }
        };
    }
    let mut segs: Vec<Segment> = Vec::new();
    if let Err(e) = device.read_sparse(req.offset, &mut buf[..len], &mut segs) {
        job.pool.put(buf);
        return error_reply(job, req, e);
    }
    if let [s] = segs.as_slice() {
        if !s.zero {
            return Reply::Data {
                head: enc.data(req, req.offset, len as u32, true),
                buf,
                len,
            };
        }
    }
    let last = segs.len().saturating_sub(1);
    let parts = segs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let offset = req.offset + s.start;
            let (a, b) = (s.start as usize, (s.start + s.len) as usize);
            if s.zero {
                // Holes are only produced in structured mode.
                let h = enc
                    .hole(req, offset, s.len as u32, i == last)
                    .unwrap_or_else(|| enc.ok(req));
                (h, a, a)
            } else {
                (enc.data(req, offset, s.len as u32, i == last), a, b)
            }
        })
        .collect();
    Reply::Chunks { parts, buf }
}

fn block_status(job: &Job, req: &Request) -> io::Result<Vec<u8>> {
    let enc = &job.encoder;
    let max_len = if enc.mode() == HeaderMode::Extended {
        u64::MAX
    } else {
        MAX_EXTENT_LEN_32
    };
    let q = StatusQuery::new(req.offset, req.length)
        .req_one(req.flags.contains(CommandFlags::REQ_ONE))
        .max_extents(MAX_STATUS_EXTENTS)
        .max_extent_len(max_len);
    let mut out = Vec::new();
    let mut extents: Vec<Extent> = Vec::new();
    let n = req.contexts.len() as usize;
    for (k, id) in req.contexts.iter().enumerate() {
        let kind = job
            .export
            .contexts
            .get(id as usize)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        extents.clear();
        job.export.device.block_status(kind, &q, &mut |e| {
            extents.push(e);
            true
        })?;
        let start = out.len();
        out.resize(start + MAX_REPLY_HEADER + 8 + 16 * extents.len().max(1), 0);
        let written = enc
            .block_status(
                req,
                id,
                extents.iter().copied(),
                k + 1 == n,
                &mut out[start..],
            )
            .ok_or_else(|| io::Error::other("block status buffer too small"))?;
        out.truncate(start + written);
    }
    Ok(out)
}

async fn writer<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    pool: Arc<BufPool>,
    gone: Arc<Notify>,
) {
    let mut batch: Vec<Outgoing> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(o) => batch.push(o),
                Err(_) => break,
            }
        }
        let mut slices = Vec::with_capacity(batch.len() * 2);
        for o in &batch {
            o.reply.slices(&mut slices);
        }
        let r = match write_all_vectored(&mut w, &mut slices).await {
            Ok(()) => w.flush().await,
            Err(e) => Err(e),
        };
        drop(slices);
        for o in batch.drain(..) {
            o.reply.recycle(&pool);
        }
        if let Err(e) = r {
            debug!("cannot send replies: {e}");
            // Dropping the receiver fails later sends, which frees their
            // permits, so the reader's final wait cannot hang.
            rx.close();
            while rx.try_recv().is_ok() {}
            gone.notify_one();
            return;
        }
    }
    close(&mut w).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, MemoryBackend};
    use crate::registry::ExportPolicy;
    use crate::stack::{ContextKind, Device, DeviceConfig};
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixStream;

    fn context() -> (Arc<ConnContext>, watch::Sender<bool>) {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(1 << 20).unwrap());
        let device = Device::new(DeviceConfig {
            backend,
            cow_top: None,
            read_only: false,
            dirty_bitmaps: vec![],
            throttle: None,
            blkdebug: None,
        })
        .unwrap();
        let registry = Arc::new(Registry::new());
        registry
            .add(Export::new(
                "".into(),
                String::new(),
                Arc::new(device),
                vec![ContextKind::Allocation],
                ExportPolicy { multi_conn: true },
            ))
            .unwrap();
        let (tx, rx) = watch::channel(false);
        let ctx = ConnContext {
            registry,
            config: ServerConfig::default(),
            tls: None,
            shutdown: rx,
            epoch: tokio::time::Instant::now(),
        };
        (Arc::new(ctx), tx)
    }

    /// Old-fashioned client: NBD_OPT_EXPORT_NAME, simple replies.
    async fn connect(c: &mut UnixStream) {
        let mut greeting = [0u8; 18];
        c.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        c.write_all(&3u32.to_be_bytes()).await.unwrap();
        let mut opt = b"IHAVEOPT".to_vec();
        opt.extend_from_slice(&1u32.to_be_bytes());
        opt.extend_from_slice(&0u32.to_be_bytes());
        c.write_all(&opt).await.unwrap();
        let mut info = [0u8; 10];
        c.read_exact(&mut info).await.unwrap();
        assert_eq!(u64::from_be_bytes(info[..8].try_into().unwrap()), 1 << 20);
    }

    fn request(ty: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&ty.to_be_bytes());
        r.extend_from_slice(&cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r
    }

    async fn simple_reply(c: &mut UnixStream) -> (u32, u64) {
        let mut r = [0u8; 16];
        c.read_exact(&mut r).await.unwrap();
        assert_eq!(&r[..4], &0x6744_6698u32.to_be_bytes());
        (
            u32::from_be_bytes(r[4..8].try_into().unwrap()),
            u64::from_be_bytes(r[8..].try_into().unwrap()),
        )
    }

    #[tokio::test]
    async fn write_read_error_and_disconnect() {
        let (ctx, _stop) = context();
        let (mut c, s) = UnixStream::pair().unwrap();
        let server = tokio::spawn(serve(s, "test".into(), ctx));
        connect(&mut c).await;
        // Header and payload split across writes, payload larger than one
        // input buffer read, so both payload paths run.
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        c.write_all(&request(1, 7, 4096, data.len() as u32))
            .await
            .unwrap();
        c.write_all(&data[..1000]).await.unwrap();
        c.write_all(&data[1000..]).await.unwrap();
        assert_eq!(simple_reply(&mut c).await, (0, 7));
        c.write_all(&request(0, 8, 4096, data.len() as u32))
            .await
            .unwrap();
        assert_eq!(simple_reply(&mut c).await, (0, 8));
        let mut back = vec![0u8; data.len()];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(back, data);
        // Out of range: EINVAL, and the connection stays usable.
        c.write_all(&request(0, 9, 1 << 20, 512)).await.unwrap();
        assert_eq!(simple_reply(&mut c).await, (22, 9));
        c.write_all(&request(3, 10, 0, 0)).await.unwrap();
        assert_eq!(simple_reply(&mut c).await, (0, 10));
        c.write_all(&request(2, 11, 0, 0)).await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn many_requests_in_flight_all_answered() {
        let (ctx, _stop) = context();
        let (mut c, s) = UnixStream::pair().unwrap();
        tokio::spawn(serve(s, "test".into(), ctx));
        connect(&mut c).await;
        let n = 3 * MAX_IN_FLIGHT as u64;
        let (mut r, mut w) = c.into_split();
        let sender = tokio::spawn(async move {
            for i in 0..n {
                w.write_all(&request(0, i, i * 512, 512)).await.unwrap();
            }
            w
        });
        let mut seen = vec![false; n as usize];
        for _ in 0..n {
            let mut h = [0u8; 16];
            r.read_exact(&mut h).await.unwrap();
            let cookie = u64::from_be_bytes(h[8..].try_into().unwrap());
            let mut d = [0u8; 512];
            r.read_exact(&mut d).await.unwrap();
            assert!(!std::mem::replace(&mut seen[cookie as usize], true));
        }
        assert!(seen.iter().all(|&s| s));
        drop(sender.await.unwrap());
    }

    #[tokio::test]
    async fn shutdown_ends_idle_connections() {
        let (ctx, stop) = context();
        let (mut c, s) = UnixStream::pair().unwrap();
        let server = tokio::spawn(serve(s, "test".into(), ctx));
        connect(&mut c).await;
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("connection did not end")
            .unwrap();
    }

    /// A client that floods options and never reads the replies blocks our
    /// writes; the handshake deadline must still end the connection.
    #[tokio::test]
    async fn handshake_deadline_bounds_a_client_that_never_reads() {
        let (ctx, _stop) = context();
        let mut ctx = Arc::try_unwrap(ctx).ok().unwrap();
        ctx.config.handshake_timeout = Some(Duration::from_millis(500));
        let (mut c, s) = UnixStream::pair().unwrap();
        let server = tokio::spawn(serve(s, "test".into(), Arc::new(ctx)));
        c.write_all(&3u32.to_be_bytes()).await.unwrap();
        let mut list = b"IHAVEOPT".to_vec();
        list.extend_from_slice(&3u32.to_be_bytes());
        list.extend_from_slice(&0u32.to_be_bytes());
        let flood = list.repeat(20_000);
        // Our own write may block too once the server stops reading.
        let _ = tokio::time::timeout(Duration::from_secs(5), c.write_all(&flood)).await;
        tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("a client that never reads held the connection past the deadline")
            .unwrap();
    }
}
