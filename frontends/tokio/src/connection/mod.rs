//! One client connection: the core's server machine driven over a socket.
//!
//! The handshake runs in the connection's task, step by step as the core's
//! driving loop says ([`handshake`]). Transmission then splits the socket:
//! this task reads and decodes requests and hands each to [`dispatch`],
//! bounded by [`MAX_IN_FLIGHT`] requests and [`BYTE_BUDGET`] payload bytes
//! so that a client that does not read its replies stops being read from
//! ([`reader`]); a [`writer`] task sends replies as they complete, out of
//! order, several at once when several are ready, each read as header plus
//! data in one vectored write.

mod dispatch;
mod handshake;
mod reader;
mod writer;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use blockwire_core::server::{Server, ServerConfig};
use blockwire_core::time::Instant;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info};

use crate::io::{InBuf, Socket, close};
use crate::registry::{Registry, Snapshot};
use handshake::{Handshake, bounded, handshake};

/// Requests one connection may have in flight.
pub const MAX_IN_FLIGHT: usize = 64;
/// Read and write payload bytes one connection may have in flight (a
/// request larger than this waits until it can hold all of it, alone).
/// With the buffer pool bounded by the same figure, a connection's
/// buffers never exceed twice this, whatever the client queues: the
/// server's memory is its base plus connections × 2 × `BYTE_BUDGET`, or
/// one maximal request. Four MiB keeps four 1 MiB or sixteen 256 KiB
/// requests in flight, more than a file on tmpfs or in the page cache
/// needs to keep the socket busy; at 256 MiB, `nbdcopy`'s 4 × 64 requests
/// of 256 KiB held three times nbdkit's peak RSS.
pub const BYTE_BUDGET: usize = 4 << 20;
/// Input buffer per connection: many small requests per read.
const INPUT_BUFFER: usize = 256 << 10;

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

async fn run<S: Socket>(mut sock: S, ctx: &ConnContext) -> io::Result<()> {
    let snapshot = Snapshot(ctx.registry.snapshot());
    let mut server = Server::new(snapshot, ctx.config, ctx.now());
    let mut input = InBuf::new(INPUT_BUFFER);
    // The core enforces its deadline only while it waits for input; a
    // client that stalls a TLS handshake or never reads our replies must
    // not hold the connection past it either, so the whole negotiation is
    // bounded by the same instant.
    let deadline = server.poll_timeout().map(|d| ctx.deadline(d));
    let h = bounded(deadline, handshake(&mut server, &mut sock, &mut input, ctx)).await?;
    let Handshake::StartTls = h else {
        return after_handshake(h, server, sock, input, ctx).await;
    };
    let Some(acceptor) = &ctx.tls else {
        // The core only offers STARTTLS when TLS is configured.
        return Err(io::Error::other("STARTTLS without a TLS configuration"));
    };
    let mut tls = bounded(deadline, async { Ok(acceptor.accept(sock).await?) }).await?;
    server.tls_established();
    debug!("tls established");
    let h = bounded(deadline, handshake(&mut server, &mut tls, &mut input, ctx)).await?;
    after_handshake(h, server, tls, input, ctx).await
}

/// Transmission, or the end of a connection whose handshake is over
/// (with or without TLS).
async fn after_handshake<S: Socket>(
    h: Handshake,
    server: Server<Snapshot>,
    mut sock: S,
    input: InBuf,
    ctx: &ConnContext,
) -> io::Result<()> {
    match h {
        Handshake::Ready(session) => reader::transmission(server, session, sock, input, ctx).await,
        Handshake::Closed => {
            close(&mut sock).await;
            Ok(())
        }
        // Only a plaintext handshake can end in STARTTLS (the core offers
        // it once), and run handles that one.
        Handshake::StartTls => Err(io::Error::other("STARTTLS twice")),
    }
}
