//! `BlockdevOptions` as typed values: what `blockdev-add` takes, with the
//! schema's member names in the comments. The JSON form is parsed into
//! these by [`super::qapi`]; the short command-line options build them
//! directly, so both reach the graph the same way.

use std::path::PathBuf;

use blockwire_core::block::zero_policy::{DetectZeroes, Discard};

/// `BlockdevOptions`: the members every node has, and its driver's.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockdevOptions {
    /// `node-name`; generated (`#blockNNN`) for inline children without one.
    pub node_name: Option<String>,
    /// `read-only` (default false).
    pub read_only: bool,
    /// `auto-read-only` (default false): open read-only if writing is
    /// impossible, instead of failing.
    pub auto_read_only: bool,
    /// `force-share` (read-only nodes only): take no lock that keeps
    /// others from writing the image.
    pub force_share: bool,
    /// `discard` (default `ignore`).
    pub discard: Discard,
    /// `detect-zeroes` (default `off`).
    pub detect_zeroes: DetectZeroes,
    /// `cache`.
    pub cache: CacheOptions,
    pub driver: DriverOptions,
}

impl BlockdevOptions {
    pub fn new(driver: DriverOptions) -> Self {
        Self {
            node_name: None,
            read_only: false,
            auto_read_only: false,
            force_share: false,
            discard: Discard::Ignore,
            detect_zeroes: DetectZeroes::Off,
            cache: CacheOptions::default(),
            driver,
        }
    }

    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.node_name = Some(name.into());
        self
    }

    pub fn read_only(mut self, ro: bool) -> Self {
        self.read_only = ro;
        self
    }
}

/// `BlockdevCacheOptions`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheOptions {
    /// `direct`: bypass the host page cache (`O_DIRECT`).
    pub direct: bool,
    /// `no-flush`: ignore flush requests.
    pub no_flush: bool,
}

/// `BlockdevRef`: another node by name, or one defined inline.
#[derive(Clone, Debug, PartialEq)]
pub enum BlockdevRef {
    Name(String),
    Inline(Box<BlockdevOptions>),
}

impl From<BlockdevOptions> for BlockdevRef {
    fn from(o: BlockdevOptions) -> Self {
        BlockdevRef::Inline(Box::new(o))
    }
}

/// `OnOffAuto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnOffAuto {
    #[default]
    Auto,
    On,
    Off,
}

/// `BlockdevAioOptions`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Aio {
    #[default]
    Threads,
    Native,
    IoUring,
}

/// `SocketAddress` (type `inet` or `unix`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketAddress {
    Inet { host: String, port: String },
    Unix { path: PathBuf },
}

impl std::fmt::Display for SocketAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SocketAddress::Inet { host, port } if host.contains(':') => {
                write!(f, "[{host}]:{port}")
            }
            SocketAddress::Inet { host, port } => write!(f, "{host}:{port}"),
            SocketAddress::Unix { path } => write!(f, "unix:{}", path.display()),
        }
    }
}

/// `BlkdebugInjectErrorOptions` and `BlkdebugSetStateOptions`, as the
/// core's blkdebug rules (event names as the schema spells them).
pub use blockwire_core::block::blkdebug::{InjectError, SetState};

/// The driver and its own options.
#[derive(Clone, Debug, PartialEq)]
pub enum DriverOptions {
    /// `file` and `host_device` (`BlockdevOptionsFile`).
    File {
        host_device: bool,
        filename: PathBuf,
        aio: Aio,
        locking: OnOffAuto,
    },
    /// `null-co` (`BlockdevOptionsNull`): `size` default 2^30.
    NullCo {
        size: u64,
        latency_ns: u64,
        read_zeroes: bool,
    },
    /// `blockwire-ram`: a sparse disk in memory. QEMU has no such driver;
    /// the vendor prefix keeps the name from ever meaning something else.
    Ram { size: u64 },
    /// `nbd` (`BlockdevOptionsNbd`, QEMU 7.2).
    Nbd {
        /// `server`.
        server: SocketAddress,
        /// `export` (absent: the server's default export, "").
        export: Option<String>,
        /// `tls-creds`: the id of a `tls-creds-x509` object.
        tls_creds: Option<String>,
        /// `tls-hostname`: the name the server's certificate must carry
        /// (default: the inet host).
        tls_hostname: Option<String>,
        /// `reconnect-delay` in seconds (default 0): how long requests wait
        /// for a lost connection to come back.
        reconnect_delay: u32,
        /// `open-timeout` in seconds (default 0: one attempt): how long
        /// opening keeps trying to connect.
        open_timeout: u32,
    },
    /// `raw` (`BlockdevOptionsRaw`): a window of `file`.
    Raw {
        file: BlockdevRef,
        offset: u64,
        size: Option<u64>,
        /// Not in the schema: the format was probed, not given (`serve
        /// FILE` without `-f`). As QEMU's raw driver then does, writes
        /// that would make the first sector probe as another format are
        /// refused.
        probed: bool,
    },
    /// `throttle` (`BlockdevOptionsThrottle`).
    Throttle {
        file: BlockdevRef,
        throttle_group: String,
    },
    /// `blkdebug` (`BlockdevOptionsBlkdebug`).
    Blkdebug {
        image: BlockdevRef,
        align: u64,
        max_transfer: u64,
        inject_error: Vec<InjectError>,
        set_state: Vec<SetState>,
    },
    /// `blockwire-cow`: writes go to `file` (a node of the same size, or
    /// memory when absent), reads of what was never written come from
    /// `backing`. The qcow2 driver replaces it with a real format.
    Cow {
        backing: BlockdevRef,
        file: Option<BlockdevRef>,
        cluster_size: u64,
    },
    /// `qcow2` (`BlockdevOptionsQcow2`): the image on `file`.
    Qcow2 {
        file: BlockdevRef,
        /// `backing`: absent, the image's own backing file (opened
        /// read-only, format as recorded or probed); `Some(None)` for
        /// `null`, none; or that node.
        backing: Option<Option<BlockdevRef>>,
        /// `cache-size`, `l2-cache-size`, `refcount-cache-size` in bytes.
        cache_size: Option<u64>,
        l2_cache_size: Option<u64>,
        refcount_cache_size: Option<u64>,
        /// `pass-discard-request` (default: the node's `discard=unmap`).
        pass_discard_request: Option<bool>,
    },
    /// `rbd` (`BlockdevOptionsRbd`, QEMU 7.2): an image of a Ceph cluster.
    Rbd(RbdOptions),
}

/// `BlockdevOptionsRbd`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RbdOptions {
    pub pool: String,
    /// `namespace`: a RADOS namespace in the pool (absent or "": none).
    pub namespace: Option<String>,
    pub image: String,
    /// `conf`: a ceph.conf (absent: librados' default search).
    pub conf: Option<PathBuf>,
    /// `snapshot`: opened read-only.
    pub snapshot: Option<String>,
    /// `user`: the cephx id without `client.` (absent: `admin`).
    pub user: Option<String>,
    /// `auth-client-required`: `cephx`, `none`.
    pub auth_client_required: Vec<String>,
    /// `key-secret`: the id of a `secret` object holding the key.
    pub key_secret: Option<String>,
    /// `server`: monitors (`host`, `port`), Ceph's `mon_host`.
    pub server: Vec<(String, String)>,
    /// Further Ceph options, in order: only the `rbd:` file name carries
    /// them (qemu-nbd's `rbd:pool/image:key=value:...`).
    pub config: Vec<(String, String)>,
}

impl DriverOptions {
    /// The schema's name for the driver.
    pub fn name(&self) -> &'static str {
        match self {
            DriverOptions::File {
                host_device: true, ..
            } => "host_device",
            DriverOptions::File { .. } => "file",
            DriverOptions::NullCo { .. } => "null-co",
            DriverOptions::Ram { .. } => "blockwire-ram",
            DriverOptions::Nbd { .. } => "nbd",
            DriverOptions::Raw { .. } => "raw",
            DriverOptions::Throttle { .. } => "throttle",
            DriverOptions::Blkdebug { .. } => "blkdebug",
            DriverOptions::Cow { .. } => "blockwire-cow",
            DriverOptions::Qcow2 { .. } => "qcow2",
            DriverOptions::Rbd(_) => "rbd",
        }
    }
}

/// `ThrottleGroupProperties` / the `throttle-group` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThrottleGroupOptions {
    pub id: String,
    pub limits: blockwire_core::block::throttle::ThrottleLimits,
}
