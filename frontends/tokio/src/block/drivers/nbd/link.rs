//! The connection under an `nbd` node, and what happens when it is lost:
//! QEMU's `NBDClientState` machine (block/nbd.c) on tokio.
//!
//! * **Up**: requests go to the connection, pipelined (the client library
//!   keeps up to 64 in flight on it).
//! * A request that finds the connection gone (socket error, EOF, the
//!   server shutting down) reports it once; the link then goes
//!   * with `reconnect-delay` > 0 to **Waiting**: a task on the runtime
//!     reconnects, retrying, until the delay since the loss has passed.
//!     Requests in flight and new ones wait, and are sent again on the new
//!     connection (QEMU's `NBD_CLIENT_CONNECTING_WAIT`; NBD reads and
//!     writes are idempotent, so re-sending a write whose reply was lost
//!     is safe). If the delay passes first, the waiting requests fail
//!     with `EIO` and the link is **Down**;
//!   * with `reconnect-delay` = 0 straight to **Down**: requests in flight
//!     fail with `EIO` (`NBD_CLIENT_CONNECTING_NOWAIT`).
//! * **Down**: the next request makes one attempt to connect (**Trying**;
//!   requests arriving meanwhile share its outcome). QEMU's request in
//!   this state fails at once and starts a connection thread whose result
//!   a later request picks up; trying once in the request instead means
//!   the first request after the server is back succeeds, so the node is
//!   usable again without a failed request nobody asked for. When the
//!   server is still away, the attempt fails as fast as the connect does,
//!   so requests still "immediately fail" as QEMU documents.
//! * **Quit**: the server broke the protocol (`NBD_CLIENT_QUIT`, which
//!   QEMU enters on any channel error but `EIO`): every request fails,
//!   for good. A server that sends garbage is not talked to again.
//!
//! A request is only ever answered with success when the server answered
//! it with success. One more case needs care: writes the server
//! acknowledged but no flush covered, on a connection that is then lost.
//! The server may have lost them with it (a restarted process), and a
//! flush on a new connection cannot vouch for writes sent on another (the
//! spec scopes a flush to the writes that server completed). So every
//! flush after such a loss fails with `EIO`: a retried flush that
//! succeeded would vouch for them. This is the rule QEMU's file-posix
//! keeps after a failed `fdatasync` (`page_cache_inconsistent`), and the
//! `file` driver's; QEMU's nbd driver itself re-sends the flush and
//! reports success. Reads and writes go on; reopening the node (delete
//! and add it) starts afresh.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use blockwire_core::client::{Export, RequestError, RequestFailure};
use blockwire_core::wire::Errno;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::block::node::lock;
use crate::client::{ClientError, Connection, NbdUri, Options};

/// First pause between connection attempts, doubled after each failure
/// up to [`RETRY_MAX`]. QEMU's connection thread starts at 1 s and goes to
/// 16 s; a `reconnect-delay` is typically a few seconds, so finer steps
/// waste less of it.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// Where to connect, and how.
pub struct Target {
    pub uri: NbdUri,
    pub opts: Options,
    /// The node's filename, for messages.
    pub label: String,
}

/// What the writes acknowledged on one connection owe to a flush.
#[derive(Default)]
struct Durability {
    /// Writes acknowledged (not counting FUA ones, durable on reply).
    acked: u64,
    /// `acked` as it was when the last successful flush was sent.
    flushed: u64,
    /// The connection was reported lost.
    lost: bool,
}

/// One connection to the server.
pub struct Upstream {
    pub conn: Connection,
    /// Which connection of the node this is (1, 2, ...).
    epoch: u64,
    durability: Mutex<Durability>,
}

impl Upstream {
    fn new(conn: Connection, epoch: u64) -> Self {
        Self {
            conn,
            epoch,
            durability: Mutex::new(Durability::default()),
        }
    }

    /// Before a flush is sent: the writes it will cover.
    pub fn flush_begin(&self) -> u64 {
        lock(&self.durability).acked
    }

    /// The flush sent when `flush_begin` said `upto` succeeded.
    pub fn flush_done(&self, upto: u64) {
        let mut d = lock(&self.durability);
        d.flushed = d.flushed.max(upto);
    }
}

/// How a request failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// The connection is gone: reconnect as the policy says.
    Lost(String),
    /// The server broke the protocol.
    Broken(String),
    /// The request failed; the connection goes on.
    Errno(i32),
}

/// The host errno for an NBD error (QEMU's `nbd_errno_to_system_errno`;
/// the core already turned unknown values into `EINVAL`).
fn host_errno(e: Errno) -> i32 {
    match e {
        Errno::EPERM => libc::EPERM,
        Errno::EIO => libc::EIO,
        Errno::ENOMEM => libc::ENOMEM,
        Errno::ENOSPC => libc::ENOSPC,
        Errno::EOVERFLOW => libc::EOVERFLOW,
        Errno::ENOTSUP => libc::ENOTSUP,
        Errno::ESHUTDOWN => libc::ESHUTDOWN,
        _ => libc::EINVAL,
    }
}

pub fn classify(e: &ClientError) -> Failure {
    match e {
        ClientError::Io(_) | ClientError::Closed(_) => Failure::Lost(e.to_string()),
        ClientError::Protocol(_) => Failure::Broken(e.to_string()),
        // The server refuses work because it is going away: the request
        // was not done, and can be on the next connection.
        ClientError::Request {
            failure: RequestFailure::Server(Errno::ESHUTDOWN),
            ..
        } => Failure::Lost(e.to_string()),
        ClientError::Request {
            failure: RequestFailure::Server(n),
            ..
        } => Failure::Errno(host_errno(*n)),
        // A reply that ended short of what was asked: never a success.
        ClientError::Request { .. } => Failure::Errno(libc::EIO),
        ClientError::Refused { error, .. } => Failure::Errno(match error {
            // The machine left transmission: the connection is over.
            RequestError::NotReady => return Failure::Lost(e.to_string()),
            RequestError::NotSupported => libc::ENOTSUP,
            RequestError::OutOfRange
            | RequestError::Misaligned
            | RequestError::TooLong
            | RequestError::ZeroLength
            | RequestError::InvalidFlags => libc::EINVAL,
            _ => libc::EIO,
        }),
        ClientError::NoContext(_) => Failure::Errno(libc::ENOTSUP),
        // Set-up errors, which only opening or reconnecting meets.
        ClientError::Uri(_) | ClientError::Tls(_) | ClientError::Config(_) => {
            Failure::Errno(libc::EIO)
        }
    }
}

enum State {
    Up(Arc<Upstream>),
    /// The connection was lost; a task reconnects until the delay ends.
    Waiting,
    /// Connection `epoch` was lost; the next request tries once.
    Down {
        epoch: u64,
    },
    /// A request's attempt to connect is under way.
    Trying,
    Quit,
}

/// The node's link to its server.
pub struct Link {
    target: Target,
    /// The export as the node was opened on it; a reconnection must find
    /// the same (size, flags, block sizes, headers), or the node's promises
    /// to the layers above would no longer hold.
    export: Export,
    /// Flushes exist, so unflushed writes can be lost with a connection.
    flush: bool,
    reconnect_delay: Duration,
    state: watch::Sender<State>,
    next_epoch: AtomicU64,
    /// A connection was lost with writes no flush covered (for good).
    lost_writes: AtomicBool,
    /// Where reconnection tasks run (node I/O may be polled from the
    /// blocking pool, which has no runtime of its own to spawn on).
    runtime: tokio::runtime::Handle,
}

async fn connect(target: &Target) -> Result<Connection, String> {
    Connection::connect(&target.uri, &target.opts)
        .await
        .map_err(|e| e.to_string())
}

/// Connects, retrying with growing pauses until `deadline` (opening with
/// `open-timeout`); the error is the last attempt's.
async fn connect_until(target: &Target, deadline: Instant) -> Result<Connection, String> {
    let mut pause = RETRY_FIRST;
    let mut last = None;
    loop {
        let attempt = match tokio::time::timeout_at(deadline, connect(target)).await {
            Ok(r) => r,
            Err(_) => Err(last
                .take()
                .unwrap_or_else(|| "no connection before the time ran out".to_owned())),
        };
        match attempt {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}

impl Link {
    /// Opens the first connection: one attempt, or (`open-timeout` > 0)
    /// attempts until the timeout, as QEMU's `nbd_open`.
    pub async fn open(
        target: Target,
        reconnect_delay: Duration,
        open_timeout: Duration,
    ) -> Result<Arc<Link>, String> {
        let conn = if open_timeout.is_zero() {
            connect(&target).await?
        } else {
            connect_until(&target, Instant::now() + open_timeout).await?
        };
        let export = *conn.export();
        let flush = export.has(blockwire_core::wire::TransmissionFlags::SEND_FLUSH);
        let (state, _) = watch::channel(State::Up(Arc::new(Upstream::new(conn, 1))));
        Ok(Arc::new(Link {
            target,
            export,
            flush,
            reconnect_delay,
            state,
            next_epoch: AtomicU64::new(2),
            lost_writes: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
        }))
    }

    /// The connection, if the link is up.
    pub fn current(&self) -> Option<Arc<Upstream>> {
        match &*self.state.borrow() {
            State::Up(u) => Some(u.clone()),
            _ => None,
        }
    }

    /// A reconnection must find the export the node was opened on.
    fn same_export(&self, conn: &Connection) -> Result<(), String> {
        let now = conn.export();
        if *now == self.export {
            return Ok(());
        }
        Err(format!(
            "the server came back with a different export (size {} flags {:#x} block sizes {:?}, \
             was size {} flags {:#x} block sizes {:?}): not using it",
            now.size,
            now.flags.bits(),
            now.block_size,
            self.export.size,
            self.export.flags.bits(),
            self.export.block_size
        ))
    }

    /// Runs `op` on the connection, as the reconnect policy says: again on
    /// a new connection after a loss (with `reconnect-delay`), or failing
    /// with `EIO`.
    pub async fn run<T, F, Fut>(self: &Arc<Self>, mut op: F) -> io::Result<T>
    where
        F: FnMut(Arc<Upstream>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        loop {
            let up = self.acquire().await?;
            let e = match op(up.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            match classify(&e) {
                Failure::Errno(n) => return Err(errno(n)),
                Failure::Broken(why) => {
                    self.quit(&up, &why);
                    return Err(errno(libc::EIO));
                }
                Failure::Lost(why) => {
                    self.lost(&up, &why);
                    if self.reconnect_delay.is_zero() {
                        return Err(errno(libc::EIO));
                    }
                }
            }
        }
    }

    /// The connection to send on, once there is one.
    async fn acquire(self: &Arc<Self>) -> io::Result<Arc<Upstream>> {
        enum Step {
            Lost(Arc<Upstream>),
            Wait,
            Try(u64),
        }
        let mut rx = self.state.subscribe();
        // This request waited for a reconnection: if that failed, so does
        // the request, without an attempt of its own.
        let mut waited = false;
        loop {
            let step = match &*rx.borrow_and_update() {
                // A connection the client already knows is closed would
                // refuse the request unsent: treat it as lost first, so the
                // request counts as new rather than as caught in flight.
                State::Up(up) if up.conn.is_closed() => Step::Lost(up.clone()),
                State::Up(up) => return Ok(up.clone()),
                State::Waiting | State::Trying => Step::Wait,
                State::Down { .. } if waited => return Err(errno(libc::EIO)),
                State::Down { epoch } => Step::Try(*epoch),
                State::Quit => return Err(errno(libc::EIO)),
            };
            match step {
                Step::Lost(up) => self.lost(&up, "the connection was closed"),
                Step::Wait => {
                    waited = true;
                    // The sender lives in `self`: this cannot fail.
                    rx.changed().await.map_err(|_| errno(libc::EIO))?;
                }
                Step::Try(epoch) => self.try_once(epoch),
            }
        }
    }

    /// Down → Trying, with one attempt on the runtime (a task, so that a
    /// request dropped meanwhile cannot leave the link Trying for ever).
    fn try_once(self: &Arc<Self>, epoch: u64) {
        let started = self.state.send_if_modified(|s| match s {
            State::Down { epoch: g } if *g == epoch => {
                *s = State::Trying;
                true
            }
            _ => false,
        });
        if started {
            let me = Arc::downgrade(self);
            self.runtime
                .spawn(async move { Link::reconnect(me, epoch, None).await });
        }
    }

    /// Connection `up` is gone; the first to say so moves the link on.
    fn lost(self: &Arc<Self>, up: &Upstream, why: &str) {
        {
            let mut d = lock(&up.durability);
            if !d.lost {
                d.lost = true;
                if d.acked > d.flushed {
                    self.lost_writes.store(true, Ordering::Release);
                }
            }
        }
        let epoch = up.epoch;
        let delay = self.reconnect_delay;
        self.state.send_if_modified(|s| {
            if !matches!(s, State::Up(u) if u.epoch == epoch) {
                return false;
            }
            if delay.is_zero() {
                tracing::warn!(
                    "{}: connection lost ({why}); requests in flight fail, the next one reconnects",
                    self.target.label
                );
                *s = State::Down { epoch };
            } else {
                tracing::warn!(
                    "{}: connection lost ({why}); reconnecting for up to {delay:?}",
                    self.target.label
                );
                *s = State::Waiting;
                let me = Arc::downgrade(self);
                let deadline = Instant::now() + delay;
                self.runtime
                    .spawn(async move { Link::reconnect(me, epoch, Some(deadline)).await });
            }
            true
        });
    }

    /// The server broke the protocol on `up`: no more requests, ever.
    fn quit(&self, up: &Upstream, why: &str) {
        let epoch = up.epoch;
        self.state.send_if_modified(|s| {
            if !matches!(s, State::Up(u) if u.epoch == epoch) {
                return false;
            }
            tracing::error!(
                "{}: {why}; the node fails every request from now on",
                self.target.label
            );
            *s = State::Quit;
            true
        });
    }

    /// Waiting or Trying: one attempt (`deadline` None) or attempts until
    /// `deadline`; then Up, or Down. The task holds the link only during
    /// an attempt, so a node deleted meanwhile stops it (as QEMU's close
    /// detaches its connection thread) instead of leaving it connecting.
    async fn reconnect(link: Weak<Self>, epoch: u64, deadline: Option<Instant>) {
        let mut pause = RETRY_FIRST;
        let mut last: Option<String> = None;
        loop {
            let Some(me) = link.upgrade() else {
                return;
            };
            let attempt = match deadline {
                Some(d) => match tokio::time::timeout_at(d, connect(&me.target)).await {
                    Ok(r) => r,
                    Err(_) => Err(last
                        .take()
                        .unwrap_or_else(|| "no connection before the delay ran out".into())),
                },
                None => connect(&me.target).await,
            }
            .and_then(|c| me.same_export(&c).map(|()| c));
            let e = match attempt {
                Ok(conn) => {
                    let epoch = me.next_epoch.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("{}: reconnected", me.target.label);
                    me.state
                        .send_replace(State::Up(Arc::new(Upstream::new(conn, epoch))));
                    return;
                }
                Err(e) => e,
            };
            let Some(d) = deadline.filter(|&d| Instant::now() < d) else {
                if deadline.is_some() {
                    tracing::warn!(
                        "{}: no reconnection within reconnect-delay ({e}); requests fail until one finds the server back",
                        me.target.label
                    );
                }
                me.state.send_replace(State::Down { epoch });
                return;
            };
            last = Some(e);
            drop(me);
            tokio::time::sleep_until((Instant::now() + pause).min(d)).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }

    /// A write-like request succeeded on `up`; `durable` if the server
    /// made it durable before replying (FUA).
    pub fn wrote(&self, up: &Upstream, durable: bool) {
        if durable || !self.flush {
            return;
        }
        let mut d = lock(&up.durability);
        if d.lost {
            // Acknowledged on a connection already reported lost.
            self.lost_writes.store(true, Ordering::Release);
        } else {
            d.acked += 1;
        }
    }

    /// Whether a lost connection took writes no flush covered.
    pub fn writes_lost(&self) -> bool {
        self.lost_writes.load(Ordering::Acquire)
    }

    pub fn label(&self) -> &str {
        &self.target.label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_as_qemu_does() {
        use std::sync::Arc as A;
        assert!(matches!(
            classify(&ClientError::Io(A::new(io::Error::other("x")))),
            Failure::Lost(_)
        ));
        assert!(matches!(
            classify(&ClientError::Closed("gone".into())),
            Failure::Lost(_)
        ));
        let req = |failure| ClientError::Request {
            what: "read",
            offset: 0,
            len: 1,
            failure,
            message: None,
        };
        assert_eq!(
            classify(&req(RequestFailure::Server(Errno::ENOSPC))),
            Failure::Errno(libc::ENOSPC)
        );
        assert!(matches!(
            classify(&req(RequestFailure::Server(Errno::ESHUTDOWN))),
            Failure::Lost(_)
        ));
        assert_eq!(
            classify(&req(RequestFailure::Incomplete)),
            Failure::Errno(libc::EIO)
        );
        let refused = |error| ClientError::Refused {
            what: "trim",
            error,
        };
        assert_eq!(
            classify(&refused(RequestError::NotSupported)),
            Failure::Errno(libc::ENOTSUP)
        );
        assert_eq!(
            classify(&refused(RequestError::Misaligned)),
            Failure::Errno(libc::EINVAL)
        );
        assert!(matches!(
            classify(&refused(RequestError::NotReady)),
            Failure::Lost(_)
        ));
        assert!(matches!(
            classify(&ClientError::Protocol(
                blockwire_core::client::Error::Oldstyle
            )),
            Failure::Broken(_)
        ));
    }
}
