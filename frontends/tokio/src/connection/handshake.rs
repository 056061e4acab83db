//! The handshake: the core's machine driven step by step in the
//! connection's task, until transmission, STARTTLS or the end.

use std::io;

use blockwire_core::server::{Event, Server, Session};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::ConnContext;
use crate::io::{InBuf, Socket};
use crate::registry::Snapshot;

pub(super) enum Handshake {
    Ready(Session),
    StartTls,
    Closed,
}

/// `fut`, failed with `TimedOut` if it is still running at `deadline`.
pub(super) async fn bounded<T>(
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

pub(super) async fn handshake<S: Socket>(
    server: &mut Server<Snapshot>,
    sock: &mut S,
    input: &mut InBuf,
    ctx: &ConnContext,
) -> io::Result<Handshake> {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        transmit(server, sock).await?;
        while !input.is_empty() {
            let p = server.handle_input(input.data());
            let consumed = p.consumed;
            let outcome = match p.event {
                None if consumed == 0 => break,
                None => None,
                Some(Event::StartTls) => Some(Handshake::StartTls),
                Some(Event::Ready(s)) => Some(Handshake::Ready(s)),
                Some(Event::Close(r)) => {
                    debug!("handshake ended: {r:?}");
                    Some(Handshake::Closed)
                }
                Some(other) => {
                    warn!("unexpected event in handshake: {other:?}");
                    Some(Handshake::Closed)
                }
            };
            input.consume(consumed);
            transmit(server, sock).await?;
            if let Some(h) = outcome {
                if let Handshake::StartTls = h {
                    // Plaintext sent before the TLS handshake could be
                    // injected by a man in the middle: never act on it.
                    input.clear();
                }
                return Ok(h);
            }
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
