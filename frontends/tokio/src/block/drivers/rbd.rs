//! `rbd`: an image of a Ceph cluster as a node, with QEMU's
//! `BlockdevOptionsRbd` (QEMU 7.2) and the behaviour of QEMU's block/rbd.c,
//! on `blockwire-rbd` (librbd's C API).
//!
//! Data requests are `rbd_aio_*` submissions completed by librbd's own
//! threads, which wake the request's future: no thread per request. Each
//! request owns a copy of its data (a read's buffer, a write's bytes) for
//! as long as librbd may touch it, so a request whose future is dropped
//! (a client that disconnects) cannot leave librbd writing into freed
//! memory. Allocation queries and resizing block in librbd; they run on
//! the image's one worker thread (see `blockwire_rbd::Image`).
//!
//! What each NBD request becomes:
//!
//! * read / write: `rbd_aio_read` / `rbd_aio_write`; `FUA` is the write
//!   followed by `rbd_aio_flush`, which makes every completed write
//!   durable (librbd's cache included).
//! * flush: `rbd_aio_flush` (nothing with `cache.no-flush`, as QEMU).
//!   After one failed, every later one fails: librbd's cache reports
//!   writes it could not write back only once.
//! * trim: `rbd_aio_discard`.
//! * write-zeroes: `rbd_aio_write_zeroes`; with `NO_HOLE` as a thick
//!   write of zeroes, which is no faster than the client's own write, so
//!   `FAST_ZERO` with `NO_HOLE` fails with `ENOTSUP` (and without
//!   `NO_HOLE` it is object removal and OSD-side zeroing: fast).
//! * block status (`base:allocation`): `rbd_diff_iterate2` with
//!   `whole_object`, i.e. the object map: a missing object is a hole that
//!   reads as zeroes; an image without a valid fast-diff map is all data,
//!   as in QEMU.
//! * `block_resize`: `rbd_resize`.
//!
//! `CAN_MULTI_CONN` holds: every connection to an export of this node goes
//! through the node's one image handle, so a flush covers every write
//! completed before it whatever the connection, and the exclusive lock (if
//! the image has one) is never passed between connections.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use blockwire_core::block::contract::{STATE_HOLE, STATE_ZERO};
use blockwire_rbd::{
    AuthMode, Cluster, ClusterOptions, Image, ImageSpec, MonAddr, Secret, ZeroMode,
};

use crate::block::io::Io;
use crate::block::node::{Driver, DriverInfo, Status, Zeroes, invalid};
use crate::block::options::{CacheOptions, RbdOptions};

/// How long connecting and opening may take unless told otherwise (Ceph's
/// own defaults are 300 s for connecting and forever for opening).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Extents one block-status answer may carry (the client asks again for
/// the rest).
const MAX_EXTENTS: usize = 1024;

/// What opening an `rbd` node takes: its options, with `key-secret`
/// resolved to the secret's bytes.
pub struct RbdOpen {
    pub opts: RbdOptions,
    pub key: Option<Arc<[u8]>>,
    pub read_only: bool,
    pub auto_read_only: bool,
    pub cache: CacheOptions,
}

pub struct Rbd {
    image: Image,
    size: AtomicU64,
    read_only: bool,
    object_size: u64,
    no_flush: bool,
    /// A flush failed: writes acknowledged from librbd's write-back cache
    /// may never have reached the cluster, and librbd reports that only
    /// once (a later flush succeeds). Every later flush fails, as the file
    /// driver's do after a failed fdatasync, until the node is reopened.
    writes_lost: AtomicBool,
    filename: String,
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// The message of a build without librbd.
pub fn not_built() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "the rbd driver is not built into this blockwire (build it with `--features rbd`, which needs librbd-dev)",
    )
}

/// How long a process that is exiting waits for its RBD images to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// For a process about to exit, after its graph is gone: waits until every
/// RBD image it opened is closed (librbd flushed, the exclusive lock
/// released and the header watch removed), so that the next client opens
/// the image at once instead of waiting for the cluster to time out this
/// process's watch.
pub fn wait_closed() {
    if !blockwire_rbd::wait_closed(CLOSE_TIMEOUT) {
        tracing::warn!(
            "RBD images still open after {} s; exiting anyway",
            CLOSE_TIMEOUT.as_secs()
        );
    }
}

/// Seconds as Ceph writes them (`30`, `2.5`).
fn parse_secs(key: &str, v: &str) -> io::Result<Duration> {
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| invalid(format!("Ceph option {key}={v}: expected seconds")))
}

/// Standard base64 with padding: the form librados takes a key in.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// QEMU's `filename` for the node: `json:{...}` of the options that pick
/// the image (its strong runtime options), in QEMU's order.
fn qemu_filename(o: &RbdOptions) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let mut f = format!(r#"json:{{"driver": "rbd", "pool": {}"#, q(&o.pool));
    if let Some(ns) = &o.namespace {
        f += &format!(r#", "namespace": {}"#, q(ns));
    }
    f += &format!(r#", "image": {}"#, q(&o.image));
    if let Some(c) = &o.conf {
        f += &format!(r#", "conf": {}"#, q(&c.to_string_lossy()));
    }
    if let Some(s) = &o.snapshot {
        f += &format!(r#", "snapshot": {}"#, q(s));
    }
    if let Some(u) = &o.user {
        f += &format!(r#", "user": {}"#, q(u));
    }
    if !o.server.is_empty() {
        let list: Vec<String> = o
            .server
            .iter()
            .map(|(h, p)| format!(r#"{{"host": {}, "port": {}}}"#, q(h), q(p)))
            .collect();
        f += &format!(r#", "server": [{}]"#, list.join(", "));
    }
    f + "}"
}

impl Rbd {
    pub async fn open(o: RbdOpen) -> io::Result<Rbd> {
        if !blockwire_rbd::AVAILABLE {
            return Err(not_built());
        }
        let opts = &o.opts;
        // QEMU's rbd driver: a snapshot is only opened read-only, and
        // asking for a writable one is an error unless auto-read-only.
        if opts.snapshot.is_some() && !o.read_only && !o.auto_read_only {
            return Err(invalid("rbd snapshots are read-only"));
        }
        let mut servers = Vec::new();
        for (i, (host, port)) in opts.server.iter().enumerate() {
            let port = port.parse::<u16>().map_err(|_| {
                invalid(format!(
                    "Parameter 'server.{i}.port' expects a port number, not '{port}'"
                ))
            })?;
            servers.push(MonAddr::new(host.clone(), port));
        }
        let mut auth = Vec::new();
        for m in &opts.auth_client_required {
            auth.push(match m.as_str() {
                "cephx" => AuthMode::Cephx,
                "none" => AuthMode::None,
                other => return Err(invalid(format!("unknown auth mode '{other}'"))),
            });
        }
        // The two timeouts a user sets with Ceph's own option names (in an
        // `rbd:` file name); every other option goes to librados as it is.
        let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;
        let mut osd_op_timeout = None;
        // librados' own messages go to its log (ceph.conf's `log file`), not
        // to stderr: a failure is the one line the error says; an `rbd:`
        // file name may turn them back on (`:err_to_stderr=true`).
        let mut config = vec![
            ("err_to_stderr".to_owned(), "false".to_owned()),
            ("log_to_stderr".to_owned(), "false".to_owned()),
        ];
        for (k, v) in &opts.config {
            match k.as_str() {
                "client_mount_timeout" => connect_timeout = parse_secs(k, v)?,
                "rados_osd_op_timeout" => osd_op_timeout = Some(parse_secs(k, v)?),
                _ => config.push((k.clone(), v.clone())),
            }
        }
        // As QEMU sets it after the user's options: librbd's write-back
        // cache unless the node bypasses caches (cache.direct).
        config.push((
            "rbd_cache".to_owned(),
            if o.cache.direct { "false" } else { "true" }.to_owned(),
        ));
        let cluster_opts = ClusterOptions {
            conf: opts.conf.clone(),
            user: opts.user.clone(),
            // A secret object holds the key's bytes (QEMU's
            // `qcrypto_secret_lookup_as_base64`): librados wants base64.
            key: o.key.as_deref().map(|k| Secret::new(base64(k))),
            servers,
            auth_client_required: auth,
            connect_timeout,
            osd_op_timeout,
            config,
        };
        let read_only = o.read_only || opts.snapshot.is_some();
        let spec = ImageSpec {
            pool: opts.pool.clone(),
            namespace: opts.namespace.clone(),
            image: opts.image.clone(),
            snapshot: opts.snapshot.clone(),
            read_only,
        };
        let cluster = Cluster::connect(cluster_opts).await?;
        // Opening reads the image's header objects from the OSDs, which
        // librados waits for without end if their placement groups are
        // down: bounded by the same timeout.
        let shown = spec.to_string();
        let image = tokio::time::timeout(connect_timeout, cluster.open(spec))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "cannot open RBD image {shown} within {} s (are its OSDs up?)",
                        connect_timeout.as_secs_f64()
                    ),
                )
            })??;
        let info = image.opened_info().clone();
        Ok(Rbd {
            size: AtomicU64::new(info.size),
            read_only: info.read_only,
            object_size: info.object_size,
            no_flush: o.cache.no_flush,
            writes_lost: AtomicBool::new(false),
            filename: qemu_filename(opts),
            image,
        })
    }

    async fn read_into(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        // librbd fills its own buffer; it is copied out only once the
        // request is complete.
        let (r, data) = self.image.read(offset, vec![0u8; buf.len()]).await;
        let n = r?;
        buf[..n].copy_from_slice(&data[..n]);
        // librbd stops at the end of the image: past it (a shrink by
        // another client) reads as zeroes, as QEMU's rbd driver pads.
        buf[n..].fill(0);
        Ok(())
    }

    async fn flush_now(&self) -> io::Result<()> {
        if self.no_flush {
            return Ok(());
        }
        if self.writes_lost.load(Ordering::Relaxed) {
            return Err(errno(libc::EIO));
        }
        let r = self.image.flush().await.0.map(drop);
        if let Err(e) = &r
            && !self.writes_lost.swap(true, Ordering::Relaxed)
        {
            tracing::error!(
                "{}: a flush failed ({e}): writes acknowledged before it may be lost; every later flush fails until the node is reopened",
                self.filename
            );
        }
        r
    }

    async fn write_from(&self, offset: u64, data: Vec<u8>, fua: bool) -> io::Result<()> {
        self.image.write(offset, data).await.0?;
        if fua { self.flush_now().await } else { Ok(()) }
    }

    async fn zero(&self, offset: u64, len: u64, z: Zeroes) -> io::Result<()> {
        let mode = if z.may_unmap {
            ZeroMode::Unmap
        } else {
            ZeroMode::Allocate
        };
        if z.fast && !mode.is_fast() {
            return Err(errno(libc::ENOTSUP));
        }
        self.image.write_zeroes(offset, len, mode).await.0?;
        if z.fua {
            self.flush_now().await
        } else {
            Ok(())
        }
    }

    async fn status(&self, offset: u64, len: u64, out: &mut Vec<Status>) -> io::Result<()> {
        let a = self.image.allocation(offset, len, MAX_EXTENTS).await?;
        if a.extents.is_empty() {
            // The image ends before the range (another client shrank it):
            // nothing is known to be a hole.
            out.push(Status::data(len));
            return Ok(());
        }
        for e in a.extents {
            out.push(Status {
                len: e.length,
                flags: if e.data { 0 } else { STATE_HOLE | STATE_ZERO },
                // A protocol node: everything is allocated in it, as QEMU
                // reports for its rbd driver.
                depth: 1,
            });
        }
        Ok(())
    }
}

impl Driver for Rbd {
    fn driver_name(&self) -> &'static str {
        "rbd"
    }

    fn info(&self) -> DriverInfo {
        DriverInfo {
            read_only: self.read_only,
            blocking: false,
            waits: true,
            fast_zero: true,
            // Block status is a trip to the image's worker (and, without
            // the exclusive lock, to the object map's OSD): too dear to
            // look for holes on every read.
            sparse: false,
            // See the module documentation: one handle for every
            // connection.
            multi_conn: true,
            preferred_block: u32::try_from(self.object_size).unwrap_or(u32::MAX),
            align: 1,
            max_transfer: 0,
        }
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn filename(&self) -> String {
        self.filename.clone()
    }

    fn read<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> Io<'a, ()> {
        if buf.is_empty() {
            return Io::ok(());
        }
        Io::pending(self.read_into(offset, buf))
    }

    fn write<'a>(&'a self, offset: u64, data: &'a [u8], fua: bool) -> Io<'a, ()> {
        if data.is_empty() {
            return if fua {
                Io::pending(self.flush_now())
            } else {
                Io::ok(())
            };
        }
        Io::pending(self.write_from(offset, data.to_vec(), fua))
    }

    fn flush(&self) -> Io<'_, ()> {
        if self.no_flush {
            return Io::ok(());
        }
        Io::pending(self.flush_now())
    }

    fn discard(&self, offset: u64, len: u64) -> Io<'_, ()> {
        if len == 0 {
            return Io::ok(());
        }
        Io::pending(async move { self.image.discard(offset, len).await.0.map(drop) })
    }

    fn write_zeroes(&self, offset: u64, len: u64, z: Zeroes) -> Io<'_, ()> {
        if len == 0 {
            return Io::ok(());
        }
        Io::pending(self.zero(offset, len, z))
    }

    fn block_status<'a>(&'a self, offset: u64, len: u64, out: &'a mut Vec<Status>) -> Io<'a, ()> {
        if len == 0 {
            return Io::ok(());
        }
        Io::pending(self.status(offset, len, out))
    }

    fn resize(&self, size: u64) -> Io<'_, ()> {
        Io::pending(async move {
            self.image.resize(size).await?;
            self.size.store(size, Ordering::Relaxed);
            Ok(())
        })
    }
}

/// `rbd:POOL/[NAMESPACE/]IMAGE[@SNAPSHOT][:KEY=VALUE]...` as QEMU's
/// `qemu_rbd_parse_filename` reads it: `\` escapes the next character,
/// `conf=` is the configuration file, `id=` the user, and every other
/// pair a Ceph option (`mon_host=...`, `keyring=...`,
/// `client_mount_timeout=...`).
pub fn parse_filename(name: &str) -> Result<RbdOptions, String> {
    let Some(rest) = name.strip_prefix("rbd:") else {
        return Err("File name must start with 'rbd:'".into());
    };
    let (pool, rest) = next_tok(rest, '/');
    let Some(rest) = rest else {
        return Err("Pool name is required".into());
    };
    let mut o = RbdOptions {
        pool: unescape(pool),
        ..RbdOptions::default()
    };
    let (image, mut rest) = if rest.contains('@') {
        let (image, rest) = next_tok(rest, '@');
        let (snap, rest) = next_tok(rest.unwrap_or(""), ':');
        o.snapshot = Some(unescape(snap));
        (image, rest)
    } else {
        next_tok(rest, ':')
    };
    // A namespace before the first unescaped '/'.
    let image = match next_tok(image, '/') {
        (ns, Some(img)) => {
            o.namespace = Some(unescape(ns)).filter(|n| !n.is_empty());
            img
        }
        (img, None) => img,
    };
    o.image = unescape(image);
    while let Some(p) = rest {
        let (key, after) = next_tok(p, '=');
        let key = unescape(key);
        let Some(after) = after else {
            return Err(format!("conf option {key} has no value"));
        };
        let (value, after) = next_tok(after, ':');
        let value = unescape(value);
        match key.as_str() {
            "conf" => o.conf = Some(PathBuf::from(value)),
            "id" => o.user = Some(value),
            _ => o.config.push((key, value)),
        }
        rest = after;
    }
    if o.pool.is_empty() {
        return Err("Pool name is required".into());
    }
    if o.image.is_empty() {
        return Err("Image name is required".into());
    }
    Ok(o)
}

/// QEMU's `qemu_rbd_next_tok`: up to the first `delim` not escaped by
/// `\`, and what follows it (`None` without one).
fn next_tok(s: &str, delim: char) -> (&str, Option<&str>) {
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == delim {
            return (&s[..i], Some(&s[i + c.len_utf8()..]));
        }
        if c == '\\' {
            chars.next();
        }
    }
    (s, None)
}

/// QEMU's `qemu_rbd_unescape`: `\x` is `x`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        // A trailing '\\' stays itself.
        let c = if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        };
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_parse_as_qemu() {
        let o = parse_filename("rbd:pool/image").unwrap();
        assert_eq!((o.pool.as_str(), o.image.as_str()), ("pool", "image"));
        assert_eq!(
            (o.namespace, o.snapshot, o.conf, o.user),
            (None, None, None, None)
        );

        let o = parse_filename(
            r"rbd:p/ns/img@s1:conf=/etc/c\:x.conf:id=bw:mon_host=127.0.0.1\:6789:rbd_cache=false",
        )
        .unwrap();
        assert_eq!(o.pool, "p");
        assert_eq!(o.namespace.as_deref(), Some("ns"));
        assert_eq!(o.image, "img");
        assert_eq!(o.snapshot.as_deref(), Some("s1"));
        assert_eq!(o.conf, Some(PathBuf::from("/etc/c:x.conf")));
        assert_eq!(o.user.as_deref(), Some("bw"));
        assert_eq!(
            o.config,
            [
                ("mon_host".to_owned(), "127.0.0.1:6789".to_owned()),
                ("rbd_cache".to_owned(), "false".to_owned())
            ]
        );
        // An escaped '/' and '@' belong to the name.
        let o = parse_filename(r"rbd:p/a\/b").unwrap();
        assert_eq!((o.namespace.as_deref(), o.image.as_str()), (None, "a/b"));
    }

    #[test]
    fn bad_filenames_are_one_line() {
        for (name, msg) in [
            ("rbd:", "Pool name is required"),
            ("rbd:pool", "Pool name is required"),
            ("rbd:/img", "Pool name is required"),
            ("rbd:pool/", "Image name is required"),
            ("rbd:p/i:conf", "conf option conf has no value"),
            ("file:x", "File name must start with 'rbd:'"),
        ] {
            assert_eq!(parse_filename(name).unwrap_err(), msg, "{name}");
        }
    }

    #[test]
    fn base64_is_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"h"), "aA==");
        assert_eq!(base64(b"hi"), "aGk=");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
    }

    #[test]
    fn filename_is_json_of_the_strong_options() {
        let o = RbdOptions {
            pool: "p".into(),
            image: "i\"".into(),
            snapshot: Some("s".into()),
            server: vec![("127.0.0.1".into(), "6789".into())],
            ..RbdOptions::default()
        };
        assert_eq!(
            qemu_filename(&o),
            r#"json:{"driver": "rbd", "pool": "p", "image": "i\"", "snapshot": "s", "server": [{"host": "127.0.0.1", "port": "6789"}]}"#
        );
    }
}
