//! Transmission, reading side: decode requests, take write payloads
//! straight into the request's buffer, and keep what is in flight within
//! the connection's budgets (flow control: a client that does not read its
//! replies stops being read from).

use std::io;
use std::sync::Arc;

use blockwire_core::server::{Event, Server, Session, ShortReply};
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, Semaphore, mpsc};
use tracing::{Instrument, debug, info, warn};

use super::dispatch::{Job, dispatch};
use super::writer::{Outgoing, Reply, Ticket, writer};
use super::{BYTE_BUDGET, ConnContext, MAX_IN_FLIGHT};

/// A write payload this large is read straight from the socket into its
/// request's buffer: after such a write the next read from the socket
/// asks only for [`HEADER_READ`] bytes, enough for the next request's
/// header. Filling the input buffer as usual would take most of the next
/// payload into it, to be copied again into the request's buffer: a user
/// space copy of every byte written that made a third of the data copying
/// on `nbdcopy` to a file export (256 KiB writes).
const DIRECT_PAYLOAD: usize = 64 << 10;
/// The read after a large write payload: a few request headers, so that
/// small requests that follow still come several to a read.
const HEADER_READ: usize = 4 << 10;
use crate::io::{BufPool, InBuf, Socket};
use crate::registry::Snapshot;

/// Why reading stops before the client ends the connection.
enum Stop {
    /// The server shuts down, or the export was removed by force: the
    /// machine is told, so that requests still in flight end as it says.
    Shutdown,
    /// The writer task could not send: nothing more can be answered.
    WriterGone,
}

impl Stop {
    fn end(self, server: &mut Server<Snapshot>) {
        if let Stop::Shutdown = self {
            server.shutdown();
        }
    }
}

/// The connection's budgets: requests in flight, and payload bytes in
/// flight (read data or write payloads), each held until the reply is sent.
struct Budget {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
}

impl Budget {
    /// Waits for room for a request carrying `bytes` of data either way.
    async fn ticket(&self, bytes: u64) -> Ticket {
        let n = bytes.min(BYTE_BUDGET as u64) as u32;
        // The semaphores are never closed, so acquiring cannot fail.
        let closed = "semaphore closed";
        Ticket {
            _request: self.requests.clone().acquire_owned().await.expect(closed),
            _bytes: self
                .bytes
                .clone()
                .acquire_many_owned(n)
                .await
                .expect(closed),
        }
    }
}

pub(super) async fn transmission<S: Socket>(
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
    // Counted as the export's client while in transmission, and told to
    // leave when the export is removed by force.
    let (_client, mut kicked) = export.enter();
    info!(mode = ?session.mode, contexts = session.contexts.len(), "transmission");
    let (encoder, pool) = (session.encoder(), Arc::new(BufPool::default()));
    let job = Arc::new(Job {
        export,
        encoder,
        pool,
    });
    let (mut rd, wr) = sock.split_owned();
    let budget = Budget {
        requests: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        bytes: Arc::new(Semaphore::new(BYTE_BUDGET)),
    };
    let (tx, rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer_gone = Arc::new(Notify::new());
    let writer =
        tokio::spawn(writer(wr, rx, job.pool.clone(), writer_gone.clone()).in_current_span());
    let mut shutdown = ctx.shutdown.clone();
    // Everything that ends reading early, as one future made once: built
    // anew in every select below (a watch wait twice and a Notify each
    // time round), it was a quarter of the server's instructions per 4 KiB
    // read at queue depth 1.
    let stop = async {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => Stop::Shutdown,
            _ = kicked.wait_for(|s| *s) => Stop::Shutdown,
            _ = writer_gone.notified() => Stop::WriterGone,
        }
    };
    tokio::pin!(stop);
    // Whether the last request had a large payload (see DIRECT_PAYLOAD).
    let mut after_large = false;

    let result: io::Result<()> = async {
        loop {
            while !input.is_empty() {
                let p = server.handle_input(input.data());
                let consumed = p.consumed;
                // Only `WriteData` borrows the input, and it cannot come:
                // payloads are taken below right after their request.
                let req = match p.event {
                    None if consumed == 0 => break,
                    None => None,
                    Some(Event::Request(req)) => Some(req),
                    Some(Event::Reject { reply, close }) => {
                        debug!(errno = ?reply.errno(), "request rejected");
                        let reply = Reply::Short(ShortReply::Error(reply));
                        let _ticket = budget.ticket(0).await;
                        let _ = tx.send(Outgoing { reply, _ticket });
                        if let Some(r) = close {
                            debug!("closing: {r:?}");
                            return Ok(());
                        }
                        None
                    }
                    Some(Event::Disconnect) => {
                        debug!("client disconnected");
                        return Ok(());
                    }
                    Some(Event::Close(r)) => {
                        info!("closing: {r:?}");
                        return Ok(());
                    }
                    Some(other) => {
                        warn!("unexpected event in transmission: {other:?}");
                        return Ok(());
                    }
                };
                input.consume(consumed);
                let Some(req) = req else { continue };
                let ticket = tokio::select! {
                    t = budget.ticket(u64::from(req.data_len())) => t,
                    why = &mut stop => return Ok(why.end(&mut server)),
                };
                // A write's payload, taken from what was read with its
                // header and the rest straight from the socket into the
                // request's buffer.
                let payload = req.payload_len() as usize;
                after_large = payload >= DIRECT_PAYLOAD;
                let mut buf = Vec::new();
                if payload > 0 {
                    buf = job.pool.get(payload);
                    let have = input.len().min(payload);
                    buf[..have].copy_from_slice(&input.data()[..have]);
                    input.consume(have);
                    server.skip_payload(have as u64);
                    if have < payload {
                        tokio::select! {
                            r = rd.read_exact(&mut buf[have..payload]) => { r?; }
                            why = &mut stop => return Ok(why.end(&mut server)),
                        }
                        server.skip_payload((payload - have) as u64);
                    }
                }
                dispatch(job.clone(), req, buf, ticket, tx.clone());
            }
            tokio::select! {
                biased;
                why = &mut stop => return Ok(why.end(&mut server)),
                r = input.fill_upto(&mut rd, if after_large { HEADER_READ } else { usize::MAX }) => {
                    if r? == 0 {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;

    // Let in-flight requests finish and their replies go out.
    let _all = budget.requests.acquire_many(MAX_IN_FLIGHT as u32).await;
    drop(tx);
    let _ = writer.await;
    result
}
