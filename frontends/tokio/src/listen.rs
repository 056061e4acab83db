//! Listening sockets: addresses, systemd socket activation, the accept
//! loop with its connection limit.

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, warn};

use crate::connection::{self, ConnContext};
use crate::sys;

/// Where to listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// `tcp:HOST:PORT` (HOST may be a name, an IPv4 address or `[IPv6]`).
    Tcp(String),
    /// `unix:PATH`.
    Unix(PathBuf),
}

impl ListenAddr {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path, e.g. unix:/tmp/nbd.sock".into());
            }
            return Ok(ListenAddr::Unix(path.into()));
        }
        let hp = s.strip_prefix("tcp:").unwrap_or(s);
        let Some((host, port)) = hp.rsplit_once(':') else {
            return Err(format!(
                "invalid listen address {s:?}: expected tcp:HOST:PORT or unix:PATH"
            ));
        };
        if host.is_empty()
            || port.parse::<u16>().is_err()
            || host.contains(':') && !host.starts_with('[')
        {
            return Err(format!(
                "invalid listen address {s:?}: expected tcp:HOST:PORT (IPv6 as [::1]:PORT) or unix:PATH"
            ));
        }
        Ok(ListenAddr::Tcp(hp.to_owned()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "tcp:{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

pub enum Listener {
    Tcp(TcpListener),
    /// The path is removed at exit when we created it.
    Unix(UnixListener, Option<PathBuf>),
}

impl Listener {
    pub async fn bind(addr: &ListenAddr) -> io::Result<Self> {
        let annotate =
            |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"));
        match addr {
            ListenAddr::Tcp(a) => Ok(Listener::Tcp(
                TcpListener::bind(a.as_str()).await.map_err(annotate)?,
            )),
            ListenAddr::Unix(p) => {
                // A socket file left by an earlier run would make bind fail;
                // only sockets are removed, never other files.
                if let Ok(m) = std::fs::symlink_metadata(p) {
                    use std::os::unix::fs::FileTypeExt;
                    if m.file_type().is_socket() {
                        let _ = std::fs::remove_file(p);
                    }
                }
                let l = UnixListener::bind(p).map_err(annotate)?;
                Ok(Listener::Unix(l, Some(p.clone())))
            }
        }
    }

    /// What this listener is bound to, for logs.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => format!("tcp:{a}"),
                Err(_) => "tcp:?".into(),
            },
            Listener::Unix(l, p) => match (p, l.local_addr()) {
                (Some(p), _) => format!("unix:{}", p.display()),
                (None, Ok(a)) => format!("unix:{:?}", a.as_pathname()),
                _ => "unix:?".into(),
            },
        }
    }

    /// Removes the socket file we created.
    pub fn cleanup(&self) {
        if let Listener::Unix(_, Some(p)) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A socket inherited from a service manager, not yet registered with
/// the runtime.
pub enum Inherited {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

/// Sockets passed by a service manager (`LISTEN_PID`, `LISTEN_FDS`, fds
/// from 3); empty when the variables are absent or meant for another
/// process. Call before any thread starts: the variables are removed so
/// that they are not mistaken for ours by anything we might start later.
pub fn inherited() -> io::Result<Vec<Inherited>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(vec![]);
    };
    if pid.trim().parse::<u32>().ok() != Some(sys::pid()) {
        return Ok(vec![]);
    }
    let n: i32 = fds
        .trim()
        .parse()
        .map_err(|_| io::Error::other(format!("LISTEN_FDS={fds:?} is not a number")))?;
    sys::clear_listen_env();
    let mut out = Vec::new();
    for fd in 3..3 + n {
        let domain = sys::socket_domain(fd)?;
        let owned: OwnedFd = sys::adopt_listen_fd(fd)?;
        out.push(if domain == libc::AF_UNIX {
            Inherited::Unix(owned.into())
        } else {
            Inherited::Tcp(owned.into())
        });
    }
    Ok(out)
}

impl Listener {
    /// Registers an inherited socket with the runtime.
    pub fn from_inherited(i: Inherited) -> io::Result<Self> {
        Ok(match i {
            Inherited::Tcp(l) => {
                l.set_nonblocking(true)?;
                Listener::Tcp(TcpListener::from_std(l)?)
            }
            Inherited::Unix(l) => {
                l.set_nonblocking(true)?;
                Listener::Unix(UnixListener::from_std(l)?, None)
            }
        })
    }
}

/// Counts live connections so shutdown can wait for them.
#[derive(Clone)]
pub struct Tracker {
    count: Arc<watch::Sender<usize>>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            count: Arc::new(watch::channel(0).0),
        }
    }
}

pub struct TrackerGuard(Arc<watch::Sender<usize>>);

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl Tracker {
    pub fn enter(&self) -> TrackerGuard {
        self.count.send_modify(|n| *n += 1);
        TrackerGuard(self.count.clone())
    }

    pub async fn idle(&self) {
        let mut rx = self.count.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// Accepts on every listener until shutdown, serving each client in its
/// own task; returns the listeners for cleanup.
///
/// One loop for all listeners, so that the connection limit is one
/// decision: a free slot is taken first, then the next client on whichever
/// listener has one is accepted. (With a loop per listener, the loop
/// holding the last slot waited on its own socket while clients of the
/// others waited in their backlogs, even on an idle server.) When full, no
/// listener accepts and new clients wait in the kernel's backlog, as with
/// qemu-nbd's `--shared`, which stops watching all its sockets.
pub async fn accept_loop(
    listeners: Vec<Listener>,
    ctx: Arc<ConnContext>,
    limit: Option<Arc<Semaphore>>,
    tracker: Tracker,
) -> Vec<Listener> {
    let mut shutdown = ctx.shutdown.clone();
    let mut next = 0;
    loop {
        // With a limit, a full server stops accepting: new clients wait in
        // the kernel's backlog instead of being taken and dropped.
        let permit = match &limit {
            Some(s) => tokio::select! {
                p = s.clone().acquire_owned() => Some(p.expect("semaphore closed")),
                _ = shutdown.wait_for(|s| *s) => break,
            },
            None => None,
        };
        let accepted = tokio::select! {
            r = accept_any(&listeners, &mut next) => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match accepted {
            Ok(conn) => {
                let guard = tracker.enter();
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    match conn {
                        Accepted::Tcp(s, peer) => connection::serve(s, peer, ctx).await,
                        Accepted::Unix(s, peer) => connection::serve(s, peer, ctx).await,
                    }
                    drop(permit);
                    drop(guard);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    listeners
}

/// The next client of any listener. The listener polled first moves on by
/// one each time, so that a busy one cannot starve the others.
async fn accept_any(listeners: &[Listener], next: &mut usize) -> io::Result<Accepted> {
    let n = listeners.len();
    if n == 0 {
        return std::future::pending().await;
    }
    let start = *next % n;
    *next = start + 1;
    let accepted = std::future::poll_fn(|cx| {
        for i in 0..n {
            let l = &listeners[(start + i) % n];
            if let Poll::Ready(r) = l.poll_accept(cx) {
                return Poll::Ready(r);
            }
        }
        Poll::Pending
    })
    .await?;
    if let Accepted::Tcp(s, _) = &accepted {
        // Replies are written whole; Nagle would only delay them.
        if let Err(e) = s.set_nodelay(true) {
            debug!("TCP_NODELAY: {e}");
        }
        // Reap connections whose peer vanished without a FIN: about two
        // minutes of silence plus a minute of unanswered probes.
        if let Err(e) = crate::sys::tcp_keepalive(s.as_raw_fd(), 120, 10, 6) {
            debug!("TCP keepalive: {e}");
        }
    }
    Ok(accepted)
}

impl Listener {
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Accepted>> {
        match self {
            Listener::Tcp(l) => l
                .poll_accept(cx)
                .map_ok(|(s, peer)| Accepted::Tcp(s, peer.to_string())),
            Listener::Unix(l, _) => l.poll_accept(cx).map_ok(|(s, _)| {
                let peer = match s.peer_cred() {
                    Ok(c) => format!("unix pid {}", c.pid().unwrap_or(-1)),
                    Err(_) => "unix".into(),
                };
                Accepted::Unix(s, peer)
            }),
        }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream, String),
    Unix(tokio::net::UnixStream, String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            ListenAddr::parse("tcp:127.0.0.1:10809"),
            Ok(ListenAddr::Tcp("127.0.0.1:10809".into()))
        );
        assert_eq!(
            ListenAddr::parse("localhost:1"),
            Ok(ListenAddr::Tcp("localhost:1".into()))
        );
        assert_eq!(
            ListenAddr::parse("tcp:[::1]:0"),
            Ok(ListenAddr::Tcp("[::1]:0".into()))
        );
        assert_eq!(
            ListenAddr::parse("unix:/tmp/a"),
            Ok(ListenAddr::Unix("/tmp/a".into()))
        );
        assert!(ListenAddr::parse("tcp:host").is_err());
        assert!(ListenAddr::parse("tcp:host:99999").is_err());
        assert!(ListenAddr::parse("unix:").is_err());
        assert!(ListenAddr::parse("tcp:::1:5").is_err());
    }
}
