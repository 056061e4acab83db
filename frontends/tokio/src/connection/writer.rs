//! Sending replies: a task per connection that takes replies as requests
//! complete, in any order, and writes whatever is ready in one vectored
//! write.

use std::io::IoSlice;
use std::sync::Arc;

use blockwire_core::server::{ReplyHeader, ShortReply};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};
use tracing::debug;

use crate::io::{BufPool, close, write_all_vectored};

/// Replies sent in one vectored write at most.
const MAX_BATCH: usize = 64;

/// A reply ready to send. The bytes are all encoded by the core; this only
/// says where they live.
pub(super) enum Reply {
    /// A whole reply without data (success or error).
    Short(ShortReply),
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
    /// Several chunks encoded into one buffer (block status).
    Bytes(Vec<u8>),
}

impl Reply {
    fn slices<'a>(&'a self, out: &mut Vec<IoSlice<'a>>) {
        match self {
            Reply::Short(r) => out.push(IoSlice::new(r.as_bytes())),
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
pub(super) struct Ticket {
    pub(super) _request: OwnedSemaphorePermit,
    pub(super) _bytes: OwnedSemaphorePermit,
}

/// A reply and the permits it releases once sent.
pub(super) struct Outgoing {
    pub(super) reply: Reply,
    pub(super) _ticket: Ticket,
}

/// Sends replies until every sender is gone; on a write error, drops what
/// is queued (freeing its permits, so the reader's final wait cannot hang)
/// and tells the reader through `gone`.
pub(super) async fn writer<W: AsyncWrite + Unpin>(
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
            rx.close();
            while rx.try_recv().is_ok() {}
            gone.notify_one();
            return;
        }
    }
    close(&mut w).await;
}
