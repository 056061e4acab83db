//! A connection to a Ceph cluster (one librados handle), shared by every
//! image opened through it.

use std::ffi::CString;
use std::io;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::error::{failed, invalid};
use crate::image::Image;
use crate::oneshot;
use crate::options::{ClusterOptions, ImageSpec, ceph_secs, wipe};
use crate::sys;

const ENOENT: i32 = 2;
const EPERM: i32 = 1;
const EACCES: i32 = 13;
const ETIMEDOUT: i32 = 110;
const ENOSYS: i32 = 38;

/// A connected cluster. Cheap to clone; the connection ends when the last
/// clone and the last image opened through it are gone.
#[derive(Clone)]
pub struct Cluster {
    pub(crate) rados: Arc<sys::Rados>,
    pub(crate) desc: Arc<Desc>,
}

/// What error messages say about the connection.
pub(crate) struct Desc {
    pub client: String,
    pub mon_host: String,
    pub timeout: Duration,
}

/// Whether this build can reach a cluster at all (the `librbd` feature).
pub const AVAILABLE: bool = cfg!(feature = "librbd");

/// The error every entry point returns in a build without the `librbd`
/// feature.
pub fn not_built() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "blockwire was built without librbd (build blockwire-rbd with the `librbd` feature; it needs librbd-dev)",
    )
}

impl Cluster {
    /// Connect. The blocking `rados_connect` runs on a short-lived thread of
    /// its own (connecting is no per-request cost), bounded by
    /// `opts.connect_timeout`. Unreachable monitors, a wrong key, an unknown
    /// user each fail with one line naming the monitors and the client.
    pub async fn connect(opts: ClusterOptions) -> io::Result<Cluster> {
        if !AVAILABLE {
            return Err(not_built());
        }
        let (tx, rx) = oneshot::channel();
        thread::Builder::new()
            .name("rbd-connect".into())
            .spawn(move || tx.send(connect_blocking(opts)))
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start a thread: {e}")))?;
        rx.await
            .unwrap_or_else(|| Err(io::Error::other("the rbd connect thread panicked")))
    }

    /// The `client.ID` this connection authenticated as.
    pub fn client(&self) -> &str {
        &self.desc.client
    }

    /// The monitors in effect (`mon_host` after the configuration and the
    /// options were applied).
    pub fn mon_host(&self) -> &str {
        &self.desc.mon_host
    }

    /// Open an image. Opening (pool lookup, header reads, the exclusive-lock
    /// watch) blocks, so it runs on the image's own worker thread, which
    /// stays for the image's blocking calls and closes it at the end.
    pub async fn open(&self, spec: ImageSpec) -> io::Result<Image> {
        let (tx, rx) = oneshot::channel();
        let rados = Arc::clone(&self.rados);
        let desc = Arc::clone(&self.desc);
        let s = spec.clone();
        crate::lane::start(move || open_blocking(&rados, &desc, &s), tx)?;
        let opened = rx
            .await
            .unwrap_or_else(|| Err(io::Error::other("the rbd worker thread panicked")))?;
        Image::new(opened, spec).await
    }
}

fn cstring(what: &str, value: &str) -> io::Result<CString> {
    CString::new(value).map_err(|_| invalid(format!("{what} {value:?} contains a NUL byte")))
}

fn connect_blocking(opts: ClusterOptions) -> io::Result<Cluster> {
    let client = opts.client_name();
    let name = cstring("user", &client)?;
    let mut r = sys::Rados::create(&name)
        .map_err(|e| failed(e, format!("cannot create a librados handle for {client}")))?;

    match &opts.conf {
        Some(path) => {
            let p = path.to_str().ok_or_else(|| {
                invalid(format!(
                    "Ceph configuration path {} is not UTF-8",
                    path.display()
                ))
            })?;
            r.read_conf_file(Some(&cstring("conf", p)?)).map_err(|e| {
                failed(
                    e,
                    format!("cannot read Ceph configuration {}", path.display()),
                )
            })?
        }
        // As QEMU: without an explicit file, a missing default one is fine.
        None => {
            let _ = r.read_conf_file(None);
        }
    }

    let mut set = |k: &str, v: &str| -> io::Result<()> {
        r.conf_set(&cstring("option", k)?, &cstring(k, v)?)
            .map_err(|e| failed(e, format!("invalid Ceph option {k}={v}")))
    };
    for (k, v) in &opts.config {
        set(k, v)?;
    }
    let secs = ceph_secs(opts.connect_timeout);
    set("client_mount_timeout", &secs)?;
    set("rados_mon_op_timeout", &secs)?;
    if let Some(t) = opts.osd_op_timeout {
        set("rados_osd_op_timeout", &ceph_secs(t))?;
    }
    if let Some(m) = opts.mon_host() {
        set("mon_host", &m)?;
    }
    if let Some(a) = opts.auth() {
        set("auth_client_required", &a)?;
    }
    if let Some(key) = &opts.key {
        if !key.is_cephx_key() {
            return Err(invalid(format!(
                "the key for {client} is not a cephx key (base64, as `ceph auth get-key` prints it)"
            )));
        }
        let mut k = key.bytes().to_vec();
        let c = CString::new(std::mem::take(&mut k))
            .map_err(|_| invalid("the key contains a NUL byte"))?;
        // The value is never part of an error message.
        let res = r
            .conf_set(c"key", &c)
            .map_err(|e| failed(e, "invalid Ceph key"));
        let mut bytes = c.into_bytes();
        wipe(&mut bytes);
        res?;
    }

    let mon_host = r.conf_get(c"mon_host").unwrap_or_default();
    if mon_host.trim().is_empty() {
        // librados would go on to DNS SRV lookups; say what is missing.
        return Err(invalid(format!(
            "no Ceph monitors for {client}: give `server` addresses or a configuration with mon_host"
        )));
    }
    let desc = Desc {
        client,
        mon_host,
        timeout: opts.connect_timeout,
    };
    r.connect().map_err(|e| connect_error(e, &desc))?;
    Ok(Cluster {
        rados: Arc::new(r),
        desc: Arc::new(desc),
    })
}

fn connect_error(e: i32, d: &Desc) -> io::Error {
    let (client, mons) = (&d.client, &d.mon_host);
    match e {
        ETIMEDOUT => failed(
            e,
            format!(
                "cannot connect to the Ceph monitors {mons} as {client} within {} s",
                ceph_secs(d.timeout)
            ),
        ),
        EACCES | EPERM => failed(
            e,
            format!(
                "the Ceph monitors {mons} refused {client} (wrong key, unknown user, or no auth method in common)"
            ),
        ),
        ENOENT => failed(
            e,
            format!("no key for {client}: give a key, or a configuration with its keyring"),
        ),
        _ => failed(
            e,
            format!("cannot connect to the Ceph monitors {mons} as {client}"),
        ),
    }
}

fn open_blocking(rados: &Arc<sys::Rados>, d: &Desc, spec: &ImageSpec) -> io::Result<sys::Image> {
    let pool = cstring("pool", &spec.pool)?;
    let image = cstring("image", &spec.image)?;
    let snap = spec
        .snapshot
        .as_deref()
        .map(|s| cstring("snapshot", s))
        .transpose()?;
    let ns = spec
        .namespace
        .as_deref()
        .map(|s| cstring("namespace", s))
        .transpose()?;

    let mut io = sys::IoCtx::create(rados, &pool).map_err(|e| match e {
        ENOENT => failed(e, format!("Ceph pool '{}' does not exist", spec.pool)),
        ETIMEDOUT => failed(
            e,
            format!(
                "Ceph pool '{}': no answer from the monitors {} within {} s",
                spec.pool,
                d.mon_host,
                ceph_secs(d.timeout)
            ),
        ),
        _ => failed(
            e,
            format!("cannot open Ceph pool '{}' as {}", spec.pool, d.client),
        ),
    })?;
    if let Some(ns) = &ns {
        io.set_namespace(ns);
    }
    sys::Image::open(io, &image, snap.as_deref(), spec.effective_read_only()).map_err(|e| match e {
        ENOENT if spec.snapshot.is_some() => {
            failed(e, format!("RBD image or snapshot {spec} does not exist"))
        }
        ENOENT => failed(e, format!("RBD image {spec} does not exist")),
        EACCES | EPERM => failed(e, format!("{} may not open RBD image {spec}", d.client)),
        ENOSYS => failed(
            e,
            format!("RBD image {spec} uses features this librbd lacks"),
        ),
        _ => failed(e, format!("cannot open RBD image {spec}")),
    })
}
