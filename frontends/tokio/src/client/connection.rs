//! One NBD connection in transmission: a writer task that submits requests
//! to the core machine and sends them, a reader task that feeds replies to
//! the machine and completes requests, and a cheap cloneable handle.
//!
//! Up to [`MAX_IN_FLIGHT`] requests are pipelined; a semaphore makes
//! callers wait for a slot so the machine's table never overflows. The
//! reader and writer never wait on each other, so a server that stops
//! reading while it sends replies cannot deadlock the connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use blockwire_core::block::Extent;
use blockwire_core::client::{Cookie, Event, Export, Mode, RequestError};
use blockwire_core::wire::{CommandFlags, TransmissionFlags};
use std::io::IoSlice;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::{Duration, Instant};

use super::error::{ClientError, Result};
use super::handshake::{self, Details, MAX_IN_FLIGHT, Machine, Options, Stream};
use super::uri::NbdUri;
use crate::io::write_all_vectored;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Flush,
    Trim,
    Zero,
    Cache,
    BlockStatus,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Flush => "flush",
            Kind::Trim => "trim",
            Kind::Zero => "write zeroes",
            Kind::Cache => "cache",
            Kind::BlockStatus => "block status",
        }
    }
}

enum Reply {
    Done,
    Data(Vec<u8>),
    Extents(Vec<Extent>),
}

struct Request {
    kind: Kind,
    offset: u64,
    len: u64,
    flags: CommandFlags,
    payload: Option<Vec<u8>>,
    /// A read: the buffer its data lands in (the caller's, to reuse it).
    into: Vec<u8>,
    /// Block status: the context whose extents the caller wants.
    context: u32,
    reply: oneshot::Sender<Result<Reply>>,
    permit: OwnedSemaphorePermit,
}

struct Pending {
    kind: Kind,
    offset: u64,
    len: u64,
    /// A read's data as it arrives; a write's payload once it is sent,
    /// handed back to the caller for reuse.
    data: Vec<u8>,
    context: u32,
    extents: Vec<Extent>,
    message: Option<String>,
    reply: oneshot::Sender<Result<Reply>>,
    _permit: OwnedSemaphorePermit,
}

struct State {
    machine: Box<Machine>,
    pending: HashMap<u64, Pending>,
    /// Why new requests fail, once the connection cannot take them.
    closed: Option<ClientError>,
    /// When the server last showed life while requests were in flight:
    /// its last byte, the last of our bytes it took, or the first request
    /// after an idle spell. The request timeout counts from here.
    progress: Instant,
}

impl State {
    fn fail_all(&mut self, e: &ClientError) {
        if self.closed.is_none() {
            self.closed = Some(e.clone());
        }
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(e.clone()));
        }
    }
}

struct Inner {
    state: Mutex<State>,
    slots: Arc<Semaphore>,
    export: Export,
    details: Details,
    /// Becomes true when the writer task has ended (after `NBD_CMD_DISC`,
    /// or on an error).
    writer_done: watch::Receiver<bool>,
    /// [`Options::request_timeout`].
    request_timeout: Option<Duration>,
    /// Set when the connection fails on the reader's side (a timeout), so
    /// that a writer stuck on a server that stopped reading ends too.
    abort: watch::Sender<bool>,
    /// Wakes the reader when requests go in flight on an idle
    /// connection, so that it arms the request timeout.
    armed: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not hide the connection's state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A handle on one connection; clones share it. Dropping the last handle
/// disconnects politely (`NBD_CMD_DISC`).
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
    tx: mpsc::UnboundedSender<Request>,
}

impl Connection {
    /// Connect to `uri` and enter transmission.
    pub async fn connect(uri: &NbdUri, opts: &Options) -> Result<Connection> {
        let s = handshake::connect(uri, opts, Mode::Go).await?;
        let mut details = s.details;
        // The machine knows which contexts survived negotiation.
        details.contexts = s
            .machine
            .contexts()
            .filter_map(|(id, name)| Some((id, name?.to_owned())))
            .collect();
        let export = details
            .export
            .ok_or(ClientError::Closed("no export".into()))?;
        Ok(Self::start(
            s.machine,
            s.stream,
            s.leftover,
            export,
            details,
            opts.request_timeout,
        ))
    }

    fn start(
        machine: Box<Machine>,
        stream: Stream,
        leftover: Vec<u8>,
        export: Export,
        details: Details,
        request_timeout: Option<Duration>,
    ) -> Connection {
        let (done_tx, writer_done) = watch::channel(false);
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                machine,
                pending: HashMap::new(),
                closed: None,
                progress: Instant::now(),
            }),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            export,
            details,
            writer_done,
            request_timeout,
            abort: watch::Sender::new(false),
            armed: Notify::new(),
        });
        let (r, w) = tokio::io::split(stream);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(reader(inner.clone(), r, leftover));
        let for_writer = inner.clone();
        tokio::spawn(async move {
            writer(for_writer, w, rx).await;
            done_tx.send_replace(true);
        });
        Connection { inner, tx }
    }

    pub fn export(&self) -> &Export {
        &self.inner.export
    }

    pub fn details(&self) -> &Details {
        &self.inner.details
    }

    pub fn size(&self) -> u64 {
        self.inner.export.size
    }

    pub fn has(&self, flag: TransmissionFlags) -> bool {
        self.inner.export.has(flag)
    }

    /// The id of a selected metadata context.
    pub fn context_id(&self, name: &str) -> Option<u32> {
        self.inner
            .details
            .contexts
            .iter()
            .find(|(_, n)| n == name)
            .map(|(id, _)| *id)
    }

    /// Whether the connection takes no more requests (it failed, or the
    /// server is shutting down): a new request would only get that error,
    /// without having been sent.
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed.is_some()
    }

    /// Largest read or write sent as one request.
    pub fn max_request(&self) -> u64 {
        u64::from(self.inner.export.max_payload()).clamp(512, 32 << 20)
    }

    async fn submit(
        &self,
        kind: Kind,
        offset: u64,
        len: u64,
        flags: CommandFlags,
        // A write's payload, or the buffer a read fills.
        data: Vec<u8>,
        context: u32,
    ) -> Result<Reply> {
        let (payload, into) = match kind {
            Kind::Write => (Some(data), Vec::new()),
            _ => (None, data),
        };
        let permit = self
            .inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed("connection closed".into()))?;
        if let Some(e) = &self.inner.lock().closed {
            return Err(e.clone());
        }
        let (reply, rx) = oneshot::channel();
        let req = Request {
            kind,
            offset,
            len,
            flags,
            payload,
            into,
            context,
            reply,
            permit,
        };
        if self.tx.send(req).is_err() {
            return Err(self.gone("connection closed"));
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(self.gone("connection task ended")),
        }
    }

    /// The error that ended the connection (`fallback` if none was kept).
    fn gone(&self, fallback: &str) -> ClientError {
        self.inner
            .lock()
            .closed
            .clone()
            .unwrap_or_else(|| ClientError::Closed(fallback.into()))
    }

    /// Read `len` bytes at `offset` into a new buffer (one request: `len`
    /// at most [`max_request`](Self::max_request)).
    pub async fn read_vec(&self, offset: u64, len: u32) -> Result<Vec<u8>> {
        self.read_into(offset, len, Vec::new()).await
    }

    /// Like [`read_vec`](Self::read_vec), into `buf` (resized to `len`;
    /// its old contents are all overwritten, holes with zeroes). The reply's
    /// data is copied once, from the socket's buffer into `buf`; passing
    /// back the buffers of earlier reads spares allocating and zeroing a
    /// fresh one per request, which at 256 KiB cost as much as the copy.
    pub async fn read_into(&self, offset: u64, len: u32, buf: Vec<u8>) -> Result<Vec<u8>> {
        match self
            .submit(
                Kind::Read,
                offset,
                len.into(),
                CommandFlags::empty(),
                buf,
                0,
            )
            .await?
        {
            Reply::Data(d) => Ok(d),
            _ => Err(ClientError::Closed("read got no data".into())),
        }
    }

    /// Fill `buf` from `offset`, in as many requests as needed, pipelined.
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let max = self.max_request() as usize;
        let reads = buf.chunks(max).enumerate().map(|(i, c)| {
            let at = offset + (i * max) as u64;
            self.read_vec(at, c.len() as u32)
        });
        let parts = futures_join(reads).await;
        for (dst, part) in buf.chunks_mut(max).zip(parts) {
            dst.copy_from_slice(&part?);
        }
        Ok(())
    }

    /// Write `data` at `offset` in one request (at most `max_request`).
    pub async fn write_vec(&self, offset: u64, data: Vec<u8>, fua: bool) -> Result<()> {
        self.write_buf(offset, data, fua).await.map(drop)
    }

    /// Like [`write_vec`](Self::write_vec), handing `data` back once
    /// written, for the caller to reuse (empty if the reply came before
    /// the payload could be kept).
    pub async fn write_buf(&self, offset: u64, data: Vec<u8>, fua: bool) -> Result<Vec<u8>> {
        let flags = if fua {
            CommandFlags::FUA
        } else {
            CommandFlags::empty()
        };
        let len = data.len() as u64;
        match self
            .submit(Kind::Write, offset, len, flags, data, 0)
            .await?
        {
            Reply::Data(d) => Ok(d),
            _ => Ok(Vec::new()),
        }
    }

    /// Write `data` at `offset`, split as needed, pipelined.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let max = self.max_request() as usize;
        let writes = data
            .chunks(max)
            .enumerate()
            .map(|(i, c)| self.write_vec(offset + (i * max) as u64, c.to_vec(), false));
        futures_join(writes).await.into_iter().collect()
    }

    pub async fn flush(&self) -> Result<()> {
        self.submit(Kind::Flush, 0, 0, CommandFlags::empty(), Vec::new(), 0)
            .await
            .map(drop)
    }

    pub async fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.submit(
            Kind::Trim,
            offset,
            len,
            CommandFlags::empty(),
            Vec::new(),
            0,
        )
        .await
        .map(drop)
    }

    /// `NBD_CMD_WRITE_ZEROES`: `fast` fails with `ENOTSUP` unless the
    /// server can zero faster than writing; `no_hole` keeps it allocated.
    pub async fn zero(&self, offset: u64, len: u64, fast: bool, no_hole: bool) -> Result<()> {
        let mut flags = CommandFlags::empty();
        flags.set(CommandFlags::FAST_ZERO, fast);
        flags.set(CommandFlags::NO_HOLE, no_hole);
        self.submit(Kind::Zero, offset, len, flags, Vec::new(), 0)
            .await
            .map(drop)
    }

    pub async fn cache(&self, offset: u64, len: u64) -> Result<()> {
        self.submit(
            Kind::Cache,
            offset,
            len,
            CommandFlags::empty(),
            Vec::new(),
            0,
        )
        .await
        .map(drop)
    }

    /// Extents of `context` from `offset`, covering at most `len` bytes
    /// (the server may describe less; never zero bytes on success).
    pub async fn block_status(&self, context: &str, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let id = self
            .context_id(context)
            .ok_or_else(|| ClientError::NoContext(context.to_owned()))?;
        match self
            .submit(
                Kind::BlockStatus,
                offset,
                len,
                CommandFlags::empty(),
                Vec::new(),
                id,
            )
            .await?
        {
            Reply::Extents(e) => Ok(e),
            _ => Err(ClientError::Closed("block status got no extents".into())),
        }
    }

    /// Disconnect once requests in flight are answered. Closing the last
    /// handle waits until `NBD_CMD_DISC` is sent, so a process that exits
    /// right after still ends the session politely; with other handles
    /// alive, the disconnect happens when the last of them goes.
    pub async fn close(self) {
        let last = self.tx.strong_count() == 1;
        let mut done = self.inner.writer_done.clone();
        // Dropping the last sender ends the writer, which sends DISC.
        drop(self.tx);
        if last {
            // An error only means the writer is gone already.
            let _ = done.wait_for(|d| *d).await;
        }
    }
}

/// Await all futures concurrently, results in order. (A tiny join_all, to
/// avoid a dependency for it.)
async fn futures_join<F, T>(futs: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let futs: Vec<_> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    let mut futs: Vec<_> = futs.into_iter().map(Some).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, f) in out.iter_mut().zip(futs.iter_mut()) {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *slot = Some(v);
                        *f = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

fn refused(kind: Kind, error: RequestError) -> ClientError {
    ClientError::Refused {
        what: kind.name(),
        error,
    }
}

/// Queue one request in the machine; returns its header bytes.
/// `woke`: set if the table was empty (the reader must arm its timeout).
/// Returns the payload to send after the header, and the cookie.
fn enqueue(
    state: &mut State,
    req: Request,
    header: &mut Vec<u8>,
    woke: &mut bool,
) -> Result<Option<(Vec<u8>, u64)>> {
    let m = &mut state.machine;
    let cookie: std::result::Result<Cookie, RequestError> = match req.kind {
        Kind::Read => u32::try_from(req.len)
            .map_err(|_| RequestError::TooLong)
            .and_then(|l| m.read(req.offset, l, req.flags)),
        Kind::Write => u32::try_from(req.len)
            .map_err(|_| RequestError::TooLong)
            .and_then(|l| m.write(req.offset, l, req.flags)),
        Kind::Flush => m.flush(),
        Kind::Trim => m.trim(req.offset, req.len, req.flags),
        Kind::Zero => m.write_zeroes(req.offset, req.len, req.flags),
        Kind::Cache => m.cache(req.offset, req.len),
        Kind::BlockStatus => m.block_status(req.offset, req.len, req.flags),
    };
    let cookie = match cookie {
        Ok(c) => c,
        Err(e) => {
            let _ = req.reply.send(Err(refused(req.kind, e)));
            return Ok(None);
        }
    };
    loop {
        let out = m.poll_transmit();
        if out.is_empty() {
            break;
        }
        header.extend_from_slice(out);
        let n = out.len();
        m.transmitted(n);
    }
    if req.kind == Kind::Write {
        // Only this task writes the socket, and it writes the payload
        // right after this header: in stream order it is as good as sent.
        m.payload_sent().map_err(|e| refused(req.kind, e))?;
    }
    let data = if req.kind == Kind::Read {
        // Only growth is zeroed: the machine completes a read `Ok` only
        // once every byte came as data or a hole, and holes are zeroed as
        // they come, so what a reused buffer held is never seen.
        let mut d = req.into;
        d.resize(req.len as usize, 0);
        d
    } else {
        Vec::new()
    };
    if state.pending.is_empty() {
        state.progress = Instant::now();
        *woke = true;
    }
    state.pending.insert(
        cookie.0,
        Pending {
            kind: req.kind,
            offset: req.offset,
            len: req.len,
            data,
            context: req.context,
            extents: Vec::new(),
            message: None,
            reply: req.reply,
            _permit: req.permit,
        },
    );
    Ok(req.payload.map(|p| (p, cookie.0)))
}

async fn writer(inner: Arc<Inner>, w: WriteHalf<Stream>, rx: mpsc::UnboundedReceiver<Request>) {
    let mut abort = inner.abort.subscribe();
    tokio::select! {
        () = write_requests(&inner, w, rx) => {}
        // The reader failed the connection (every request has its error):
        // a write blocked on a server that stopped reading ends here.
        _ = abort.wait_for(|a| *a) => {}
    }
}

async fn write_requests(
    inner: &Inner,
    mut w: WriteHalf<Stream>,
    mut rx: mpsc::UnboundedReceiver<Request>,
) {
    // Headers and small payloads gather in `out`, sent when the queue runs
    // dry; a large payload goes out with what gathered before it in one
    // vectored write, neither copied into a buffer nor preceded by a
    // write of its lone header.
    let mut out: Vec<u8> = Vec::with_capacity(OUT_BUFFER);
    let mut header = Vec::with_capacity(64);
    let result: Result<()> = async {
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            // Batch whatever is queued into one flush.
            while let Some(req) = next {
                header.clear();
                let mut woke = false;
                let payload = {
                    let mut st = inner.lock();
                    if let Some(e) = &st.closed {
                        let _ = req.reply.send(Err(e.clone()));
                        None
                    } else {
                        enqueue(&mut st, req, &mut header, &mut woke)?
                    }
                };
                if woke && inner.request_timeout.is_some() {
                    inner.armed.notify_one();
                }
                out.extend_from_slice(&header);
                if let Some((p, cookie)) = payload {
                    if p.len() < DIRECT_PAYLOAD && out.len() + p.len() <= OUT_BUFFER {
                        out.extend_from_slice(&p);
                    } else {
                        let mut slices = [IoSlice::new(&out), IoSlice::new(&p)];
                        write_all_vectored(&mut w, &mut slices).await?;
                        out.clear();
                    }
                    // The server took a payload: alive, if slow to answer.
                    let mut st = inner.lock();
                    st.progress = Instant::now();
                    // Handed back with the reply, for the caller to reuse.
                    if let Some(pending) = st.pending.get_mut(&cookie) {
                        pending.data = p;
                    }
                }
                if out.len() >= OUT_BUFFER {
                    w.write_all(&out).await?;
                    out.clear();
                }
                next = rx.try_recv().ok();
            }
            w.write_all(&out).await?;
            out.clear();
            w.flush().await?;
            inner.lock().progress = Instant::now();
        }
        // Every handle is gone: disconnect politely.
        header.clear();
        {
            let mut st = inner.lock();
            if st.machine.disconnect().is_ok() {
                let m = &mut st.machine;
                loop {
                    let out = m.poll_transmit();
                    if out.is_empty() {
                        break;
                    }
                    header.extend_from_slice(out);
                    let n = out.len();
                    m.transmitted(n);
                }
            }
        }
        w.write_all(&header).await?;
        w.flush().await?;
        w.shutdown().await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        inner.lock().fail_all(&e);
    }
}

/// Bytes of headers and small payloads gathered before a write.
const OUT_BUFFER: usize = 256 << 10;
/// Payloads this large are sent from the caller's buffer, not copied.
const DIRECT_PAYLOAD: usize = 64 << 10;

/// The reader's buffer: large reads for throughput, and far more than the
/// machine's largest whole unit.
const READ_BUFFER: usize = 1 << 20;
const _: () = assert!(READ_BUFFER >= blockwire_core::client::INPUT_BUFFER);

async fn reader(inner: Arc<Inner>, mut r: ReadHalf<Stream>, leftover: Vec<u8>) {
    let mut buf = vec![0u8; READ_BUFFER.max(leftover.len())];
    let (mut start, mut end) = (0, leftover.len());
    buf[..end].copy_from_slice(&leftover);
    loop {
        {
            let mut st = inner.lock();
            if !process(&mut st, &buf[start..end], &mut start) {
                return;
            }
        }
        if start == end {
            (start, end) = (0, 0);
        } else if end == buf.len() {
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        let read = match inner.request_timeout {
            None => r.read(&mut buf[end..]).await,
            Some(limit) => match read_or_time_out(&inner, &mut r, &mut buf[end..], limit).await {
                Some(read) => read,
                None => return,
            },
        };
        match read {
            Ok(0) => {
                let mut st = inner.lock();
                let e = match st.machine.handle_eof() {
                    Ok(()) => ClientError::Closed("disconnected".into()),
                    Err(_) => ClientError::Closed("the server closed the connection".into()),
                };
                st.fail_all(&e);
                return;
            }
            Ok(n) => {
                end += n;
                inner.lock().progress = Instant::now();
            }
            Err(e) => {
                inner.lock().fail_all(&e.into());
                return;
            }
        }
    }
}

/// One read under the request timeout: `None` once the connection has
/// failed on it (the server sent nothing for `limit` with requests in
/// flight).
async fn read_or_time_out(
    inner: &Inner,
    r: &mut ReadHalf<Stream>,
    buf: &mut [u8],
    limit: Duration,
) -> Option<std::io::Result<usize>> {
    loop {
        let deadline = {
            let mut st = inner.lock();
            if st.pending.is_empty() {
                None
            } else if Instant::now() >= st.progress + limit {
                let waiting = st.pending.len();
                let e = ClientError::Closed(format!(
                    "the server neither answered nor took anything for {} with {waiting} request{} waiting (timeout)",
                    super::handshake::seconds(limit),
                    if waiting == 1 { "" } else { "s" },
                ));
                st.fail_all(&e);
                drop(st);
                inner.abort.send_replace(true);
                return None;
            } else {
                Some(st.progress + limit)
            }
        };
        tokio::select! {
            read = r.read(buf) => return Some(read),
            // Requests went in flight: arm the deadline.
            () = inner.armed.notified(), if deadline.is_none() => {}
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
        }
    }
}

/// Feed `input` to the machine and act on its events; false once the
/// connection is over.
fn process(st: &mut State, input: &[u8], start: &mut usize) -> bool {
    let mut at = 0;
    loop {
        let p = st.machine.handle_input(&input[at..]);
        at += p.consumed;
        let Some(ev) = p.event else {
            if p.consumed == 0 {
                *start += at;
                return true;
            }
            continue;
        };
        match ev {
            Event::ReadData {
                cookie,
                offset,
                data,
            } => {
                if let Some(p) = st.pending.get_mut(&cookie.0) {
                    // The machine checked the data lies inside the request.
                    let at = (offset - p.offset) as usize;
                    if let Some(dst) = p.data.get_mut(at..at + data.len()) {
                        dst.copy_from_slice(data);
                    }
                }
            }
            Event::ReadHole {
                cookie,
                offset,
                len,
            } => {
                // The buffer may be a reused one: holes are zeroed here.
                if let Some(p) = st.pending.get_mut(&cookie.0) {
                    let at = (offset - p.offset) as usize;
                    if let Some(dst) = p.data.get_mut(at..at + len as usize) {
                        dst.fill(0);
                    }
                }
            }
            Event::BlockStatus {
                cookie,
                context_id,
                extents,
                ..
            } => {
                if let Some(p) = st.pending.get_mut(&cookie.0) {
                    if p.context == context_id {
                        p.extents.extend(extents);
                    }
                }
            }
            Event::ReplyError {
                cookie, message, ..
            } => {
                if let Some(p) = st.pending.get_mut(&cookie.0) {
                    p.message = Some(message.to_owned());
                }
            }
            Event::Completed { cookie, result } => {
                if let Some(p) = st.pending.remove(&cookie.0) {
                    let r = match result {
                        Ok(()) => Ok(match p.kind {
                            Kind::Read | Kind::Write => Reply::Data(p.data),
                            Kind::BlockStatus => Reply::Extents(p.extents),
                            _ => Reply::Done,
                        }),
                        Err(failure) => Err(ClientError::Request {
                            what: p.kind.name(),
                            offset: p.offset,
                            len: p.len,
                            failure,
                            message: p.message,
                        }),
                    };
                    let _ = p.reply.send(r);
                }
            }
            Event::ServerShutdown => {
                // Requests in flight finish; no new ones are sent.
                if st.closed.is_none() {
                    st.closed = Some(ClientError::Closed("the server is shutting down".into()));
                }
            }
            Event::Failed(e) => {
                st.fail_all(&ClientError::Protocol(e));
                return false;
            }
            _ => {}
        }
    }
}

/// Several connections to one export, used round-robin. More than one is
/// opened only when the server advertises `CAN_MULTI_CONN` (otherwise a
/// flush on one connection would not cover writes on another).
#[derive(Clone)]
pub struct Pool {
    conns: Vec<Connection>,
}

impl Pool {
    pub async fn connect(uri: &NbdUri, opts: &Options, connections: usize) -> Result<Pool> {
        let first = Connection::connect(uri, opts).await?;
        let mut conns = vec![first];
        if conns[0].has(TransmissionFlags::CAN_MULTI_CONN) {
            for _ in 1..connections.max(1) {
                conns.push(Connection::connect(uri, opts).await?);
            }
        }
        Ok(Pool { conns })
    }

    pub fn connections(&self) -> &[Connection] {
        &self.conns
    }

    pub fn get(&self, i: usize) -> &Connection {
        &self.conns[i % self.conns.len()]
    }

    /// Flush every connection (with multi-conn one would do; all is safe).
    pub async fn flush(&self) -> Result<()> {
        for c in &self.conns {
            c.flush().await?;
        }
        Ok(())
    }
}
