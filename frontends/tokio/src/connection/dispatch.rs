//! Carrying out one request on the export's node: where it runs, what it
//! asks of the node, and the reply the core encodes for it.
//!
//! Where it runs follows from what the node says of everything below it
//! (see [`crate::block`]): a request that neither blocks nor waits runs
//! right here in the connection's task (small ones; large copies go to a
//! task so the connection keeps reading); one that blocks goes to the
//! blocking pool; one that waits becomes a task. Nothing else about the
//! node (throttling, latency, the network) is known here.

use std::io;
use std::sync::Arc;

use blockwire_core::block::Extent;
use blockwire_core::block::contract::StatusGather;
use blockwire_core::server::{
    Command, Fault, ReadChunk, ReadReply, ReplyEncoder, Request, StatusError, Step, status_from,
};
use blockwire_core::wire::Errno;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, warn};

use super::writer::{Outgoing, Reply, Ticket};
use crate::block::node::now_ns;
use crate::block::throttle_group::ThrottleGroup;
use crate::block::{Event, Node, io::poll_once};
use crate::io::BufPool;
use crate::registry::{ContextKind, Export};

/// Extents per block-status chunk at most; clients ask again for the rest.
const MAX_STATUS_EXTENTS: u32 = 1 << 16;
/// Reads and writes up to this size on a node that neither blocks nor
/// waits run in the connection's task.
const INLINE_MAX: u32 = 64 << 10;

/// Per-connection state each request needs.
pub(super) struct Job {
    pub(super) export: Arc<Export>,
    pub(super) encoder: ReplyEncoder,
    pub(super) pool: Arc<BufPool>,
}

impl Job {
    fn node(&self) -> &Arc<Node> {
        &self.export.node
    }
}

/// Runs `req` (with its write payload in `data`, empty otherwise) and
/// queues its reply.
pub(super) fn dispatch(
    job: Arc<Job>,
    req: Request,
    data: Vec<u8>,
    ticket: Ticket,
    tx: mpsc::UnboundedSender<Outgoing>,
) {
    let node = job.node();
    let throttle = job.export.throttle();
    let (blocks, waits) = (node.blocking(), node.waits() || throttle.is_some());
    let send = move |reply| {
        let _ = tx.send(Outgoing {
            reply,
            _ticket: ticket,
        });
    };
    if blocks {
        // One hand-off to the blocking pool; a node that also waits (a
        // throttled file) waits there.
        let handle = tokio::runtime::Handle::current();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _e = span.enter();
            let mut fut = std::pin::pin!(execute(&job, &req, data, throttle));
            let reply = match poll_once(fut.as_mut()) {
                Some(r) => r,
                None => handle.block_on(fut),
            };
            send(reply);
        });
        return;
    }
    let small = req.data_len() <= INLINE_MAX;
    if !waits && small {
        // On a node that never waits (memory, a file on tmpfs) a small
        // read or write is a copy of a microsecond or two: handing it to
        // another task or thread costs several context switches more.
        let mut fut = std::pin::pin!(execute(&job, &req, data, throttle));
        let reply = match poll_once(fut.as_mut()) {
            Some(r) => r,
            None => {
                // A driver said it never waits and then did: finish it
                // correctly, if slowly, without stalling the runtime.
                warn!("a node that never waits returned pending I/O");
                tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(fut))
            }
        };
        send(reply);
        return;
    }
    // The span is looked up only here and for the blocking pool: on the
    // inline path above it would cost some 80 instructions a request.
    tokio::spawn(
        async move {
            let reply = execute(&job, &req, data, throttle).await;
            send(reply);
        }
        .instrument(tracing::Span::current()),
    );
}

/// Carries out one request, accounts it on the export's node, and returns
/// its reply.
async fn execute(
    job: &Job,
    req: &Request,
    data: Vec<u8>,
    throttle: Option<Arc<ThrottleGroup>>,
) -> Reply {
    let node = job.node();
    if let Some((group, (dir, bytes))) = throttle.zip(req.throttled_as()) {
        group.admitted(dir, bytes).await;
    }
    let started = req
        .acct_type()
        .map(|k| node.acct().start(now_ns(), k, req.len()));
    let result = run(job, req, data).await;
    if let Some(c) = started {
        let mut acct = node.acct();
        match result {
            Ok(_) => acct.done(c, now_ns()),
            Err(_) => acct.failed(c, now_ns()),
        }
    }
    result.unwrap_or_else(|e| failed(job, req, &e))
}

/// The error reply of a request that failed with `e`; a failure of the
/// storage (not of a client's invalid request) is also a `BLOCK_IO_ERROR`
/// event, as QEMU raises it.
fn failed(job: &Job, req: &Request, e: &io::Error) -> Reply {
    let errno = e.raw_os_error().unwrap_or(libc::EIO);
    debug!(cookie = req.cookie, command = ?req.kind(), "request failed: {e}");
    if !matches!(errno, libc::EINVAL | libc::EPERM | libc::ENOTSUP) {
        let node = job.node();
        node.events().send(Event::IoError {
            node_name: node.name().to_owned(),
            operation: match req.writes() || matches!(req.command, Command::Flush) {
                true => "write",
                false => "read",
            },
            nospace: errno == libc::ENOSPC,
            reason: e.to_string(),
        });
    }
    let message = e.to_string();
    let fault = Fault::new(Errno::from_host(errno), &message);
    Reply::Short(job.encoder.result(req, Err(fault)))
}

async fn run(job: &Job, req: &Request, mut data: Vec<u8>) -> io::Result<Reply> {
    let node = job.node();
    for step in req.plan() {
        match step {
            Step::Read => return read(job, req).await,
            Step::BlockStatus => return block_status(job, req).await,
            // The node makes a write durable itself (`fua`).
            Step::Write { offset, len, fua } => {
                let data = std::mem::take(&mut data);
                let r = node.write(offset, &data[..len as usize], fua).wait().await;
                job.pool.put(data);
                r?
            }
            Step::Discard { offset, len } => node.discard(offset, len).wait().await?,
            Step::WriteZeroes { offset, len, how } => {
                node.write_zeroes(offset, len, how).wait().await?
            }
            Step::Cache { offset, len } => node.cache(offset, len).wait().await?,
            Step::Flush => node.flush().wait().await?,
        }
    }
    Ok(Reply::Short(job.encoder.result(req, Ok(()))))
}

/// A read, as the core plans its reply: one data chunk, or data and hole
/// chunks from the node's allocation.
async fn read(job: &Job, req: &Request) -> io::Result<Reply> {
    let node = job.node();
    let Some(mut plan) = ReadReply::new(req, job.encoder, node.info().sparse) else {
        return Err(io::Error::other("not a read"));
    };
    let (start, len) = (req.offset(), req.len());
    let mut extents: Vec<Extent> = Vec::new();
    if plan.wants_status() {
        status(node, start, len, usize::MAX, &mut extents, |s| s.flags).await?;
    }
    let mut buf = job.pool.get(len as usize);
    let mut status = status_from(&extents, start);
    // Most reads are one chunk: the list of parts is only allocated for a
    // second (a heap allocation and free a request otherwise).
    let mut first = None;
    let mut parts = Vec::new();
    while let Some(chunk) = plan.next_chunk(u64::MAX, &mut status) {
        let (header, at, n) = match chunk {
            ReadChunk::Data {
                header,
                offset,
                len,
            } => {
                let at = (offset - start) as usize;
                let dst = &mut buf[at..at + len as usize];
                if let Err(e) = node.read(offset, dst).wait().await {
                    job.pool.put(buf);
                    return Err(e);
                }
                (header, at, len as usize)
            }
            ReadChunk::Hole { header, offset, .. } => (header, (offset - start) as usize, 0),
            ReadChunk::Empty(header) => (header, 0, 0),
        };
        match first {
            None => first = Some((header, at, at + n)),
            Some(_) => parts.push((header, at, at + n)),
        }
    }
    Ok(match first {
        Some((head, 0, len)) if parts.is_empty() => Reply::Data { head, len, buf },
        Some(f) => {
            parts.insert(0, f);
            Reply::Chunks { parts, buf }
        }
        None => Reply::Chunks { parts, buf },
    })
}

/// The node's status of `[offset, offset+len)` as extents of one field
/// (`base:allocation` flags or the allocation depth), gathered as the core
/// plans it, until `max` extents.
async fn status(
    node: &Node,
    offset: u64,
    len: u64,
    max: usize,
    out: &mut Vec<Extent>,
    field: impl Fn(&crate::block::Status) -> u64,
) -> io::Result<()> {
    let mut gather = StatusGather::new(offset, len);
    let mut runs = Vec::new();
    while let Some((pos, n)) = gather.query().filter(|_| out.len() < max) {
        runs.clear();
        node.block_status(pos, n, &mut runs).wait().await?;
        let extents = runs.iter().map(|s| Extent::new(s.len, field(s)));
        gather.answer(extents, |e| out.push(e));
    }
    Ok(())
}

/// One chunk per selected context, assembled by the core from what the
/// node (or a bitmap) says.
async fn block_status(job: &Job, req: &Request) -> io::Result<Reply> {
    let Command::BlockStatus { contexts, .. } = req.command else {
        return Err(io::Error::other("not a block status request"));
    };
    // Gather each context's extents first (node I/O may wait), then let
    // the core encode: it asks synchronously.
    let q = job.encoder.status_query(req, MAX_STATUS_EXTENTS);
    let max = if q.req_one { 1 } else { q.max_extents as usize };
    let (node, at, len) = (job.node(), q.offset, q.length);
    let einval = || io::Error::from_raw_os_error(libc::EINVAL);
    let mut answers: Vec<Vec<Extent>> = Vec::new();
    for id in contexts.iter() {
        let mut ex = Vec::new();
        match job.export.contexts.get(id as usize).ok_or_else(einval)? {
            ContextKind::Allocation => status(node, at, len, max, &mut ex, |s| s.flags).await?,
            ContextKind::AllocationDepth => {
                status(node, at, len, max, &mut ex, |s| u64::from(s.depth)).await?
            }
            ContextKind::DirtyBitmap { node, name, .. } => node.with_bitmaps(|set| {
                let answer = set
                    .get(name)
                    .ok_or_else(einval)?
                    .block_status(&q, &mut |e| {
                        ex.push(e);
                        true
                    });
                answer.map(|_| ()).map_err(|_| einval())
            })?,
        }
        answers.push(ex);
    }
    // The core asks for the contexts in the order of `contexts`.
    let (mut out, mut answers) = (Vec::new(), answers.iter());
    let mut answer = |_, _: &_, sink: &mut dyn FnMut(Extent) -> bool| {
        // `all` stops where the sink is full.
        let _ = answers.next().into_iter().flatten().all(|e| sink(*e));
        Ok::<(), io::Error>(())
    };
    match job.encoder.block_status(
        req,
        MAX_STATUS_EXTENTS,
        &mut Vec::new(),
        &mut out,
        &mut answer,
    ) {
        Ok(()) => Ok(Reply::Bytes(out)),
        Err(StatusError::Device(e)) => Err(e),
        // `out` grows as needed, so only a sizing bug gets here.
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}
