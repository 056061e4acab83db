//! Carrying out one request: where it runs (inline, on the blocking pool,
//! or as a task that first waits for the throttle), what it does to the
//! export's device, and the reply the core encodes for it.

use std::io;
use std::sync::Arc;

use blockwire_core::block::Extent;
use blockwire_core::block::contract::StatusQuery;
use blockwire_core::block::throttle::Direction;
use blockwire_core::server::{
    Command, Fault, ReadChunk, ReadReply, ReplyEncoder, Request, StatusError, status_from,
};
use blockwire_core::wire::Errno;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, warn};

use super::writer::{Outgoing, Reply, Ticket};
use crate::io::BufPool;
use crate::registry::Export;

/// Extents per block-status chunk at most; clients ask again for the rest.
const MAX_STATUS_EXTENTS: u32 = 1 << 16;
/// Reads and writes up to this size on a device that never blocks run in
/// the connection's task (see [`dispatch`]).
const INLINE_MAX: u32 = 64 << 10;

/// Per-connection state each request needs.
pub(super) struct Job {
    pub(super) export: Arc<Export>,
    pub(super) encoder: ReplyEncoder,
    pub(super) pool: Arc<BufPool>,
    blocking: bool,
    sparse_reads: bool,
}

impl Job {
    pub(super) fn new(export: Arc<Export>, encoder: ReplyEncoder, pool: Arc<BufPool>) -> Self {
        let caps = export.device.caps();
        Self {
            export,
            encoder,
            pool,
            blocking: caps.blocking,
            sparse_reads: caps.sparse_reads,
        }
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
    let device = &job.export.device;
    let span = tracing::Span::current();
    let waits = device.throttled() || device.latency().is_some();
    let small = matches!(
        req.command,
        Command::Read { len, .. } | Command::Write { len, .. } if len <= INLINE_MAX
    );
    if !job.blocking && !waits && small {
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
    if job.blocking && !waits {
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
                Command::Read { .. } => Some(Direction::Read),
                Command::Write { .. } | Command::WriteZeroes { .. } | Command::Trim { .. } => {
                    Some(Direction::Write)
                }
                Command::Flush | Command::Cache { .. } | Command::BlockStatus { .. } => None,
            };
            if let Some(dir) = dir {
                device.admit(dir, req.len()).await;
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
                        Reply::Short(
                            job.encoder
                                .result(&req, Err(Fault::new(Errno::EIO, "internal error"))),
                        )
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

fn error_reply(job: &Job, req: &Request, e: &io::Error) -> Reply {
    let errno = Errno::from_host(e.raw_os_error().unwrap_or(libc::EIO));
    debug!(cookie = req.cookie, command = ?req.kind(), "request failed: {e}");
    Reply::Short(
        job.encoder
            .result(req, Err(Fault::new(errno, &e.to_string()))),
    )
}

fn short(job: &Job, req: &Request, r: io::Result<()>) -> Reply {
    match r {
        Ok(()) => Reply::Short(job.encoder.result(req, Ok(()))),
        Err(e) => error_reply(job, req, &e),
    }
}

/// Carries out one request and returns its reply.
fn execute(job: &Job, req: &Request, data: Vec<u8>) -> Reply {
    let device = &job.export.device;
    match req.command {
        Command::Read { .. } => read(job, req),
        Command::Write { offset, len, fua } => {
            let r = device.write(offset, &data[..len as usize], fua);
            job.pool.put(data);
            short(job, req, r)
        }
        Command::Flush => short(job, req, device.flush()),
        Command::Trim { offset, len, fua } => short(job, req, device.trim(offset, len, fua)),
        Command::WriteZeroes {
            offset,
            len,
            may_trim,
            fast,
            fua,
        } => short(
            job,
            req,
            device.write_zeroes(offset, len, may_trim, fast, fua),
        ),
        Command::Cache { offset, len } => short(job, req, device.cache(offset, len)),
        Command::BlockStatus { .. } => block_status(job, req),
    }
}

/// A read, as the core plans its reply: one data chunk, or data and hole
/// chunks from the device's allocation.
fn read(job: &Job, req: &Request) -> Reply {
    let device = &job.export.device;
    let holes = job.sparse_reads && device.maybe_sparse();
    let Some(mut plan) = ReadReply::new(req, job.encoder, holes) else {
        return short(job, req, Err(io::Error::other("not a read")));
    };
    let (start, len) = (req.offset(), req.len());
    if let Err(e) = device.begin_read(start, len) {
        return error_reply(job, req, &e);
    }
    let mut buf = job.pool.get(len as usize);
    let mut extents: Vec<Extent> = Vec::new();
    if plan.wants_status() {
        let q = StatusQuery::new(start, len).max_extent_len(u64::MAX);
        if let Err(e) = device.allocation(&q, &mut |e| {
            extents.push(e);
            true
        }) {
            job.pool.put(buf);
            return error_reply(job, req, &e);
        }
    }
    let mut status = status_from(&extents, start);
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
                if let Err(e) = device.read_data(offset, dst) {
                    job.pool.put(buf);
                    return error_reply(job, req, &e);
                }
                (header, at, len as usize)
            }
            ReadChunk::Hole { header, offset, .. } => (header, (offset - start) as usize, 0),
            ReadChunk::Empty(header) => (header, 0, 0),
        };
        parts.push((header, at, at + n));
    }
    match parts.as_slice() {
        [(head, 0, n)] => Reply::Data {
            head: *head,
            len: *n,
            buf,
        },
        _ => Reply::Chunks { parts, buf },
    }
}

fn block_status(job: &Job, req: &Request) -> Reply {
    let mut out = Vec::new();
    let mut scratch: Vec<Extent> = Vec::new();
    let answered = job.encoder.block_status(
        req,
        MAX_STATUS_EXTENTS,
        &mut scratch,
        &mut out,
        |id, q, sink| {
            let kind = job
                .export
                .contexts
                .get(id as usize)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            job.export.device.block_status(kind, q, sink)
        },
    );
    match answered {
        Ok(()) => Reply::Bytes(out),
        Err(StatusError::Device(e)) => error_reply(job, req, &e),
        // `out` grows as needed, so only a sizing bug gets here.
        Err(e) => error_reply(job, req, &io::Error::other(e.to_string())),
    }
}
