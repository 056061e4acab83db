//! `nbd`: another NBD server's export as a node, through blockwire's own
//! client library, with QEMU's `BlockdevOptionsNbd` (QEMU 7.2) and the
//! behaviour of QEMU's block/nbd.c.
//!
//! Opening connects and negotiates what the client library does
//! (extended headers, else structured replies; the `base:allocation` and
//! `qemu:allocation-depth` contexts where offered) and learns size, flags
//! and block sizes, which the node reports as its [`DriverInfo`].
//!
//! Every request is async on the runtime and pipelined on the one
//! connection; requests longer than the server takes are split, and the
//! pieces sent together. Where the server lacks a command the node
//! answers as QEMU's block layer does: `FUA` becomes a flush after the
//! write, a flush without `SEND_FLUSH` and a trim without `SEND_TRIM`
//! succeed (there is nothing to make durable; trim is advisory),
//! write-zeroes without `SEND_WRITE_ZEROES` writes zeroes (unless `fast`,
//! which fails with `ENOTSUP`, as it does without `SEND_FAST_ZERO`).
//!
//! What happens when the connection is lost (`reconnect-delay`) is
//! [`link`]'s business; how block status is built, [`extents`]'.

mod extents;
mod link;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use blockwire_core::wire::{HeaderMode, TransmissionFlags as T, context as meta_context};

use crate::block::io::Io;
use crate::block::node::{Driver, DriverInfo, Status, Zeroes, invalid};
use crate::block::options::SocketAddress;
use crate::block::tls_creds::TlsCredsX509;
use crate::client::uri::Tls;
use crate::client::{NbdUri, Options, Transport};

use link::{Link, Target};

/// `NBD_MAX_STRING_SIZE`: longest export name the protocol carries.
const MAX_EXPORT_NAME: usize = 4096;

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// What opening an `nbd` node takes: its options, with `tls-creds`
/// resolved to the object it names.
pub struct NbdOpen {
    pub server: SocketAddress,
    pub export: Option<String>,
    pub tls_creds: Option<Arc<TlsCredsX509>>,
    pub tls_hostname: Option<String>,
    pub reconnect_delay: u32,
    pub open_timeout: u32,
}

/// What the server offers, fixed at open (a reconnection must offer the
/// same).
#[derive(Clone, Copy, Debug)]
struct Caps {
    size: u64,
    read_only: bool,
    flush: bool,
    fua: bool,
    trim: bool,
    zeroes: bool,
    fast_zero: bool,
    cache: bool,
    multi_conn: bool,
    /// The server's own minimum block size: what requests must keep to.
    min_block: u64,
    /// The alignment the node asks of its parents (QEMU's
    /// `request_alignment`, see [`Caps::of`]).
    align: u32,
    preferred: u32,
    /// Longest read or write sent as one request (a multiple of
    /// `min_block`).
    max_io: u64,
    /// Longest trim, write-zeroes and block-status request.
    max_trim: u64,
    max_zero: u64,
    max_status: u64,
}

impl Caps {
    fn of(conn: &crate::client::Connection) -> Caps {
        let e = conn.export();
        let min_block = u64::from(e.min_block()).max(1);
        let round = |n: u64| (n - n % min_block).max(min_block);
        let max_io = round(conn.max_request());
        let extended = e.mode == HeaderMode::Extended;
        // QEMU's nbd_refresh_limits: without extended headers trims and
        // block status stay below 2^31 and zeroes below the payload limit;
        // with them, QEMU assumes the server takes any length.
        let (max_trim, max_zero, max_status) = if extended {
            (u64::MAX, u64::MAX, u64::MAX)
        } else {
            let int_max = round(i32::MAX as u64);
            (int_max, max_io, int_max)
        };
        // QEMU again: a server that gives no alignment gets 1 if the size
        // is not a multiple of 512 or block status was negotiated (its
        // extents may be byte-granular), else 512, as old servers may not
        // cope with less.
        let align = match e.block_size {
            Some(b) => b.minimum.max(1),
            None if e.size % 512 != 0
                || conn.context_id(meta_context::BASE_ALLOCATION).is_some() =>
            {
                1
            }
            None => 512,
        };
        Caps {
            size: e.size,
            read_only: e.has(T::READ_ONLY),
            flush: e.has(T::SEND_FLUSH),
            fua: e.has(T::SEND_FUA),
            trim: e.has(T::SEND_TRIM),
            zeroes: e.has(T::SEND_WRITE_ZEROES),
            fast_zero: e.has(T::SEND_WRITE_ZEROES) && e.has(T::SEND_FAST_ZERO),
            cache: e.has(T::SEND_CACHE),
            multi_conn: e.has(T::CAN_MULTI_CONN),
            min_block,
            align,
            preferred: e.block_size.map_or(0, |b| b.preferred),
            max_io,
            max_trim,
            max_zero,
            max_status,
        }
    }

    fn aligned(&self, offset: u64, len: u64) -> bool {
        offset % self.min_block == 0 && len % self.min_block == 0
    }
}

pub struct Nbd {
    link: Arc<Link>,
    caps: Caps,
    filename: String,
    /// Held so that the credentials cannot be deleted while in use.
    _tls_creds: Option<Arc<TlsCredsX509>>,
}

/// QEMU's `nbd_refresh_filename`, byte for byte: the export and socket
/// path are not escaped and an IPv6 host is not bracketed, as QEMU prints
/// them, so the name matches what QEMU shows for the same options.
fn qemu_filename(server: &SocketAddress, export: Option<&str>) -> String {
    match (server, export) {
        (SocketAddress::Unix { path }, Some(e)) => {
            format!("nbd+unix:///{e}?socket={}", path.display())
        }
        (SocketAddress::Unix { path }, None) => format!("nbd+unix://?socket={}", path.display()),
        (SocketAddress::Inet { host, port }, Some(e)) => format!("nbd://{host}:{port}/{e}"),
        (SocketAddress::Inet { host, port }, None) => format!("nbd://{host}:{port}"),
    }
}

impl Nbd {
    pub async fn open(o: NbdOpen) -> io::Result<Nbd> {
        if o.export.as_ref().is_some_and(|e| e.len() > MAX_EXPORT_NAME) {
            return Err(invalid("export name too long to send to server"));
        }
        // QEMU reads tls-hostname only with tls-creds and ignores it
        // otherwise; an option that does nothing is refused here instead.
        if o.tls_hostname.is_some() && o.tls_creds.is_none() {
            return Err(invalid("'tls-hostname' needs 'tls-creds'"));
        }
        let transport = match &o.server {
            SocketAddress::Inet { host, port } => {
                if host.is_empty() {
                    return Err(invalid("Parameter 'server.host' must not be empty"));
                }
                let port = port.parse::<u16>().map_err(|_| {
                    invalid(format!(
                        "Parameter 'server.port' expects a port number, not '{port}' (service names are not supported)"
                    ))
                })?;
                Transport::Tcp {
                    host: host.clone(),
                    port,
                }
            }
            SocketAddress::Unix { path } => {
                if path.as_os_str().is_empty() {
                    return Err(invalid("Parameter 'server.path' must not be empty"));
                }
                Transport::Unix(path.clone())
            }
        };
        let filename = qemu_filename(&o.server, o.export.as_deref());
        let uri = NbdUri {
            transport,
            export: o.export.clone().unwrap_or_default(),
            tls: if o.tls_creds.is_some() {
                Tls::Require
            } else {
                Tls::Off
            },
            tls_certificates: o.tls_creds.as_ref().map(|c| c.dir.clone()),
            // Without tls-hostname the client checks the inet host, as
            // QEMU does. Over a Unix socket QEMU checks no name at all;
            // the TLS library here always checks one, "localhost", so a
            // certificate for a Unix socket must carry it (or the node
            // tls-hostname).
            tls_hostname: o.tls_hostname.clone(),
            tls_verify_peer: o.tls_creds.as_ref().is_none_or(|c| c.verify_peer),
        };
        let opts = Options {
            meta_contexts: vec![
                meta_context::BASE_ALLOCATION.to_owned(),
                meta_context::QEMU_ALLOCATION_DEPTH.to_owned(),
            ],
            ..Options::default()
        };
        let target = Target {
            uri,
            opts,
            label: filename.clone(),
        };
        let link = Link::open(
            target,
            Duration::from_secs(o.reconnect_delay.into()),
            Duration::from_secs(o.open_timeout.into()),
        )
        .await
        .map_err(|e| {
            io::Error::other(format!(
                "Could not open '{filename}': cannot connect to NBD server {}: {e}",
                o.server
            ))
        })?;
        let caps = link
            .current()
            .map(|up| Caps::of(&up.conn))
            .ok_or_else(|| errno(libc::EIO))?;
        Ok(Nbd {
            link,
            caps,
            filename,
            _tls_creds: o.tls_creds,
        })
    }

    async fn read_aligned(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let max = self.caps.max_io as usize;
        all(buf
            .chunks_mut(max)
            .enumerate()
            .map(|(i, piece)| async move {
                let at = offset + (i * max) as u64;
                let n = piece.len() as u32;
                let data = self
                    .link
                    .run(|up| async move { up.conn.read_vec(at, n).await })
                    .await?;
                if data.len() != piece.len() {
                    return Err(errno(libc::EIO));
                }
                piece.copy_from_slice(&data);
                Ok(())
            })
            .collect::<Vec<_>>())
        .await
    }

    /// Reads anywhere: a request the server's block size does not allow
    /// is widened to whole blocks, and the part asked for copied out.
    async fn read_any(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let len = buf.len() as u64;
        if len == 0 {
            return Ok(());
        }
        if self.caps.aligned(offset, len) {
            return self.read_aligned(offset, buf).await;
        }
        let b = self.caps.min_block;
        let start = offset - offset % b;
        let end = (offset + len).div_ceil(b) * b;
        if end > self.caps.size {
            return Err(errno(libc::EINVAL));
        }
        let mut whole = vec![0u8; (end - start) as usize];
        self.read_aligned(start, &mut whole).await?;
        let at = (offset - start) as usize;
        buf.copy_from_slice(&whole[at..at + buf.len()]);
        Ok(())
    }

    /// Writes `data`, split as the server needs; `fua` as the server can,
    /// or by a flush afterwards.
    async fn write_all(&self, offset: u64, data: &[u8], fua: bool) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        // A parent that ignores the node's alignment gets what blkdebug
        // gives it; read-modify-write here could race other writes.
        if !self.caps.aligned(offset, data.len() as u64) {
            return Err(errno(libc::EINVAL));
        }
        let native_fua = fua && self.caps.fua;
        let max = self.caps.max_io as usize;
        let link = &self.link;
        all(data
            .chunks(max)
            .enumerate()
            .map(|(i, piece)| {
                let at = offset + (i * max) as u64;
                link.run(move |up| async move {
                    up.conn.write_vec(at, piece.to_vec(), native_fua).await?;
                    link.wrote(&up, native_fua);
                    Ok(())
                })
            })
            .collect::<Vec<_>>())
        .await?;
        if fua && !native_fua {
            self.flush_all().await?;
        }
        Ok(())
    }

    async fn flush_all(&self) -> io::Result<()> {
        if !self.caps.flush {
            // Nothing the server could make more durable (QEMU: success).
            return Ok(());
        }
        if self.link.writes_lost() {
            return Err(errno(libc::EIO));
        }
        self.link
            .run(|up| async move {
                let upto = up.flush_begin();
                up.conn.flush().await?;
                up.flush_done(upto);
                Ok(())
            })
            .await?;
        if self.link.writes_lost() {
            tracing::error!(
                "{}: flush fails: writes the server acknowledged were not flushed before a connection was lost, and may be gone",
                self.link.label()
            );
            return Err(errno(libc::EIO));
        }
        Ok(())
    }

    /// Write-zeroes where the server has no command for it: zeroes
    /// written, as QEMU's block layer falls back to.
    async fn write_zero_buffers(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        // Pieces of at most 1 MiB, 16 at a time: each write copies its
        // piece, so memory stays bounded however long the range.
        const PIECE: u64 = 1 << 20;
        const TOGETHER: usize = 16;
        let piece = self.caps.max_io.min(PIECE).min(len);
        let zeroes = vec![0u8; piece as usize];
        let all_pieces: Vec<(u64, u64)> = pieces(offset, len, piece).collect();
        for batch in all_pieces.chunks(TOGETHER) {
            all(batch
                .iter()
                .map(|&(at, n)| self.write_all(at, &zeroes[..n as usize], false))
                .collect::<Vec<_>>())
            .await?;
        }
        if fua { self.flush_all().await } else { Ok(()) }
    }

    async fn zero_all(&self, offset: u64, len: u64, z: Zeroes) -> io::Result<()> {
        if !self.caps.zeroes {
            if z.fast {
                return Err(errno(libc::ENOTSUP));
            }
            return self.write_zero_buffers(offset, len, z.fua).await;
        }
        if z.fast && !self.caps.fast_zero {
            return Err(errno(libc::ENOTSUP));
        }
        if !self.caps.aligned(offset, len) {
            return Err(errno(libc::EINVAL));
        }
        let link = &self.link;
        all(pieces(offset, len, self.caps.max_zero)
            .map(|(at, n)| {
                link.run(move |up| async move {
                    up.conn.zero(at, n, z.fast, !z.may_unmap).await?;
                    link.wrote(&up, false);
                    Ok(())
                })
            })
            .collect::<Vec<_>>())
        .await?;
        // The client library sends write-zeroes without FUA; a flush
        // after it gives the same guarantee.
        if z.fua {
            self.flush_all().await
        } else {
            Ok(())
        }
    }

    async fn trim_all(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.caps.trim {
            return Ok(());
        }
        // Advisory: only the whole blocks inside the range are trimmed.
        let b = self.caps.min_block;
        let start = offset.div_ceil(b) * b;
        let end = (offset + len) - (offset + len) % b;
        if end <= start {
            return Ok(());
        }
        // A lost trim loses no data, so it does not count as a write
        // owed to a flush.
        let link = &self.link;
        all(pieces(start, end - start, self.caps.max_trim)
            .map(|(at, n)| link.run(move |up| async move { up.conn.trim(at, n).await }))
            .collect::<Vec<_>>())
        .await
    }

    async fn cache_all(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.caps.cache || len == 0 {
            return Ok(());
        }
        // A prefetch hint: widened to whole blocks.
        let b = self.caps.min_block;
        let start = offset - offset % b;
        let end = ((offset + len).div_ceil(b) * b).min(self.caps.size);
        let link = &self.link;
        all(pieces(start, end - start, self.caps.max_io)
            .map(|(at, n)| link.run(move |up| async move { up.conn.cache(at, n).await }))
            .collect::<Vec<_>>())
        .await
    }

    async fn status(&self, offset: u64, len: u64, out: &mut Vec<Status>) -> io::Result<()> {
        let len = len.min(self.caps.max_status);
        let got = self
            .link
            .run(|up| async move {
                let alloc = meta_context::BASE_ALLOCATION;
                let depth = meta_context::QEMU_ALLOCATION_DEPTH;
                if up.conn.context_id(alloc).is_none() {
                    return Ok(None);
                }
                if up.conn.context_id(depth).is_none() {
                    let a = up.conn.block_status(alloc, offset, len).await?;
                    return Ok(Some((a, None)));
                }
                // Both contexts' requests in flight together.
                let (a, d) = join2(
                    up.conn.block_status(alloc, offset, len),
                    up.conn.block_status(depth, offset, len),
                )
                .await;
                Ok(Some((a?, Some(d?))))
            })
            .await?;
        let Some((alloc, depth)) = got else {
            // No base:allocation: everything is data, as QEMU says.
            out.push(Status::data(len));
            return Ok(());
        };
        let n = extents::merge(
            offset,
            len,
            self.caps.min_block,
            self.caps.size,
            &alloc,
            depth.as_deref(),
            out,
        );
        if n == 0 {
            tracing::warn!(
                "{}: block status at {offset}: the server described nothing",
                self.link.label()
            );
            return Err(errno(libc::EIO));
        }
        Ok(())
    }
}

/// `[offset, offset+len)` in pieces of at most `max`.
fn pieces(offset: u64, len: u64, max: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = offset + len;
    let max = max.max(1);
    std::iter::successors(Some(offset), move |&at| Some(at.saturating_add(max)))
        .take_while(move |&at| at < end)
        .map(move |at| (at, max.min(end - at)))
}

/// Runs the futures together; all of them finish, and the first error
/// (in order) is the result. A single one runs as it is, unboxed.
///
/// The futures are collected before anything is awaited: an iterator
/// adapter's closure held across an await makes the future's `Send`
/// depend on lifetimes the compiler cannot generalise.
async fn all<F>(mut futs: Vec<F>) -> io::Result<()>
where
    F: Future<Output = io::Result<()>>,
{
    if futs.len() <= 1 {
        return match futs.pop() {
            Some(f) => f.await,
            None => Ok(()),
        };
    }
    let mut pending: Vec<Option<Pin<Box<F>>>> =
        futs.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut results: Vec<io::Result<()>> = Vec::new();
    results.resize_with(pending.len(), || Ok(()));
    std::future::poll_fn(|cx: &mut Context<'_>| {
        let mut busy = false;
        for (slot, r) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *r = v;
                        *slot = None;
                    }
                    Poll::Pending => busy = true,
                }
            }
        }
        if busy { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    results.into_iter().collect()
}

/// Both futures together.
async fn join2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    match (ra, rb) {
        (Some(a), Some(b)) => (a, b),
        _ => unreachable!("both futures finished"),
    }
}

impl Driver for Nbd {
    fn driver_name(&self) -> &'static str {
        "nbd"
    }

    fn info(&self) -> DriverInfo {
        let c = &self.caps;
        DriverInfo {
            read_only: c.read_only,
            blocking: false,
            waits: true,
            fast_zero: c.fast_zero,
            // Block status is a round trip to the server: not cheap
            // enough to look for holes on every read.
            sparse: false,
            // All the node's requests share its one connection, so a flush
            // through it covers every write through it whatever the server
            // says; passing the server's CAN_MULTI_CONN on is the
            // conservative choice (it also says other clients of the
            // server see a consistent export).
            multi_conn: c.multi_conn,
            preferred_block: c.preferred,
            align: c.align,
            max_transfer: u32::try_from(c.max_io).unwrap_or(u32::MAX),
        }
    }

    fn size(&self) -> u64 {
        self.caps.size
    }

    fn filename(&self) -> String {
        self.filename.clone()
    }

    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> Io<'a, ()> {
        Io::pending(self.read_any(offset, buf))
    }

    fn write<'a>(&'a self, offset: u64, data: &'a [u8], fua: bool) -> Io<'a, ()> {
        Io::pending(self.write_all(offset, data, fua))
    }

    fn flush(&self) -> Io<'_, ()> {
        Io::pending(self.flush_all())
    }

    fn discard(&self, offset: u64, len: u64) -> Io<'_, ()> {
        Io::pending(self.trim_all(offset, len))
    }

    fn write_zeroes(&self, offset: u64, len: u64, z: Zeroes) -> Io<'_, ()> {
        if len == 0 {
            return Io::ok(());
        }
        Io::pending(self.zero_all(offset, len, z))
    }

    fn cache(&self, offset: u64, len: u64) -> Io<'_, ()> {
        Io::pending(self.cache_all(offset, len))
    }

    fn block_status<'a>(&'a self, offset: u64, len: u64, out: &'a mut Vec<Status>) -> Io<'a, ()> {
        if len == 0 {
            return Io::ok(());
        }
        Io::pending(self.status(offset, len, out))
    }

    /// NBD has no resize in the protocol this client speaks (the resize
    /// extension is experimental and neither the core's client machine
    /// nor qemu-nbd or nbdkit implement it), so as QEMU's
    /// `nbd_co_truncate`: the same size is fine, any other fails.
    fn resize(&self, size: u64) -> Io<'_, ()> {
        if size == self.caps.size {
            return Io::ok(());
        }
        Io::err(io::Error::new(
            io::ErrorKind::Unsupported,
            "Cannot resize NBD nodes",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_are_qemus() {
        let unix = SocketAddress::Unix {
            path: "/tmp/s.sock".into(),
        };
        let inet = SocketAddress::Inet {
            host: "localhost".into(),
            port: "10809".into(),
        };
        assert_eq!(
            qemu_filename(&unix, Some("disk")),
            "nbd+unix:///disk?socket=/tmp/s.sock"
        );
        assert_eq!(qemu_filename(&unix, None), "nbd+unix://?socket=/tmp/s.sock");
        assert_eq!(
            qemu_filename(&inet, Some("disk")),
            "nbd://localhost:10809/disk"
        );
        assert_eq!(qemu_filename(&inet, None), "nbd://localhost:10809");
    }

    #[test]
    fn pieces_cover_the_range() {
        let p: Vec<_> = pieces(10, 25, 10).collect();
        assert_eq!(p, vec![(10, 10), (20, 10), (30, 5)]);
        assert_eq!(pieces(0, 5, u64::MAX).collect::<Vec<_>>(), vec![(0, 5)]);
        assert_eq!(pieces(7, 0, 4).count(), 0);
    }

    #[tokio::test]
    async fn all_waits_for_every_future_and_keeps_the_first_error() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let done = AtomicUsize::new(0);
        let done = &done;
        let r = all((0..4)
            .map(|i| async move {
                tokio::task::yield_now().await;
                done.fetch_add(1, Ordering::Relaxed);
                match i {
                    1 => Err(errno(libc::ENOSPC)),
                    3 => Err(errno(libc::EIO)),
                    _ => Ok(()),
                }
            })
            .collect::<Vec<_>>())
        .await;
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(done.load(Ordering::Relaxed), 4);
    }
}
