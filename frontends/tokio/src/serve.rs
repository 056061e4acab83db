//! `blockwire serve`: builds the exports from the command line, listens,
//! and runs until a signal.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use blockwire_core::server::ServerConfig;
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::backend::{Backend, FileBackend, MemoryBackend, NullBackend};
use crate::cli::{ExportSpec, ServeArgs, SourceSpec, TlsMode};
use crate::connection::ConnContext;
use crate::listen::{self, Inherited, ListenAddr, Listener, Tracker};
use crate::registry::{Export, ExportPolicy, Registry};
use crate::size::human;
use crate::stack::{ContextKind, Device, DeviceConfig, Window};
use crate::{shutdown, tls};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The default disk when nothing else is asked for.
pub const DEFAULT_MEMORY: u64 = 1 << 30;
/// How long a graceful shutdown waits for connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// The default listening address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10809";

/// What one export is made of, whichever option described it.
struct Plan {
    name: String,
    description: String,
    source: SourceSpec,
    read_only: bool,
    window: Option<(u64, Option<u64>)>,
    cow: Option<Option<PathBuf>>,
    bitmaps: Vec<String>,
    allocation_depth: bool,
    throttle: Option<blockwire_core::block::throttle::ThrottleLimits>,
    blkdebug: Option<String>,
}

fn plans(args: &ServeArgs) -> Vec<Plan> {
    let main_source = match (&args.file, args.memory, args.null) {
        (Some(f), _, _) => Some(SourceSpec::File(f.clone())),
        (None, Some(m), _) => Some(SourceSpec::Memory(m)),
        (None, None, Some(n)) => Some(SourceSpec::Null(n)),
        // --export alone replaces the default disk.
        (None, None, None) if !args.exports.is_empty() => None,
        (None, None, None) => Some(SourceSpec::Memory(DEFAULT_MEMORY)),
    };
    let mut out = Vec::new();
    if let Some(source) = main_source {
        out.push(Plan {
            name: args.name.clone(),
            description: args.description.clone(),
            source,
            read_only: args.read_only,
            window: None,
            cow: args.cow.clone(),
            bitmaps: args.dirty_bitmaps.clone(),
            allocation_depth: args.allocation_depth,
            throttle: args.throttle,
            blkdebug: args.blkdebug.clone(),
        });
    }
    for e in &args.exports {
        out.push(plan_of(e, args));
    }
    out
}

fn plan_of(e: &ExportSpec, args: &ServeArgs) -> Plan {
    Plan {
        name: e.name.clone(),
        description: e.description.clone(),
        source: e.source.clone(),
        read_only: e.read_only || args.read_only,
        window: (e.offset.is_some() || e.size.is_some()).then(|| (e.offset.unwrap_or(0), e.size)),
        cow: e.cow.then_some(None),
        bitmaps: e.bitmaps.clone(),
        allocation_depth: e.allocation_depth,
        throttle: e.throttle,
        blkdebug: e.blkdebug.clone(),
    }
}

fn open_backend(
    source: &SourceSpec,
    read_only: bool,
    latency: Option<Duration>,
) -> io::Result<Arc<dyn Backend>> {
    Ok(match source {
        SourceSpec::File(p) => Arc::new(FileBackend::open(p, read_only)?),
        SourceSpec::Memory(n) => Arc::new(MemoryBackend::new(*n)?),
        SourceSpec::Null(n) => Arc::new(NullBackend::new(*n, latency)),
    })
}

fn describe(source: &SourceSpec) -> String {
    match source {
        SourceSpec::File(p) => format!("file {}", p.display()),
        SourceSpec::Memory(n) => format!("{} in memory", human(*n)),
        SourceSpec::Null(n) => format!("{} null device", human(*n)),
    }
}

fn build_export(p: Plan, args: &ServeArgs) -> Result<Export, Error> {
    let latency = args.latency_ns.map(Duration::from_nanos);
    // A copy-on-write base is never written.
    let base_ro = p.read_only || p.cow.is_some();
    let mut backend = open_backend(&p.source, base_ro, latency)?;
    if let Some((offset, size)) = p.window {
        backend = Arc::new(Window::new(backend, offset, size)?);
    }
    let cow_top: Option<Arc<dyn Backend>> = match &p.cow {
        None => None,
        Some(None) => Some(Arc::new(MemoryBackend::new(backend.size())?)),
        Some(Some(path)) => Some(Arc::new(FileBackend::create_scratch(path, backend.size())?)),
    };
    let device = Device::new(DeviceConfig {
        backend,
        cow_top,
        read_only: p.read_only,
        dirty_bitmaps: p.bitmaps.clone(),
        throttle: p.throttle,
        blkdebug: p.blkdebug.clone(),
    })
    .map_err(|e| format!("export {:?}: {e}", p.name))?;
    let mut contexts = vec![ContextKind::Allocation];
    if p.allocation_depth {
        contexts.push(ContextKind::AllocationDepth);
    }
    contexts.extend(p.bitmaps.iter().cloned().map(ContextKind::DirtyBitmap));
    info!(
        "export {:?}: {}, {} bytes{}{}",
        p.name,
        describe(&p.source),
        device.size(),
        if device.read_only() {
            ", read-only"
        } else {
            ""
        },
        if p.cow.is_some() {
            ", copy-on-write"
        } else {
            ""
        },
    );
    Ok(Export::new(
        p.name,
        p.description,
        Arc::new(device),
        contexts,
        ExportPolicy {
            multi_conn: args.multi_conn(),
        },
    ))
}

/// Everything `serve` prepares before the runtime starts (it must run
/// while the process is still single-threaded).
pub struct Prepared {
    inherited: Vec<Inherited>,
}

pub fn prepare() -> Result<Prepared, Error> {
    Ok(Prepared {
        inherited: listen::inherited().map_err(|e| format!("socket activation: {e}"))?,
    })
}

pub async fn run(args: ServeArgs, prepared: Prepared) -> Result<(), Error> {
    let registry = Arc::new(Registry::new());
    for p in plans(&args) {
        let name = p.name.clone();
        registry
            .add(build_export(p, &args)?)
            .map_err(|e| format!("export {name:?}: {e}"))?;
    }

    let mode = args.tls_mode();
    let acceptor = match mode {
        TlsMode::Off => None,
        _ => {
            let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
                return Err("--tls on/require needs --tls-cert and --tls-key".into());
            };
            Some(tls::acceptor(cert, key, args.tls_ca.as_deref())?)
        }
    };
    let config = ServerConfig {
        tls: tls::policy(mode),
        handshake_timeout: (args.handshake_timeout > 0)
            .then(|| Duration::from_secs(args.handshake_timeout)),
        ..ServerConfig::default()
    };

    let mut listeners = Vec::new();
    for i in prepared.inherited {
        listeners.push(Listener::from_inherited(i)?);
    }
    let mut addrs = args.listen.clone();
    if addrs.is_empty() && listeners.is_empty() {
        addrs.push(ListenAddr::Tcp(DEFAULT_LISTEN.into()));
    }
    for a in &addrs {
        listeners.push(Listener::bind(a).await?);
    }
    for l in &listeners {
        info!("listening on {}", l.describe());
    }
    let _pid_file = match &args.pid_file {
        Some(p) => Some(PidFile::create(p)?),
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    shutdown::install(stop_tx)?;
    let ctx = Arc::new(ConnContext {
        registry: registry.clone(),
        config,
        tls: acceptor,
        shutdown: stop_rx.clone(),
        epoch: tokio::time::Instant::now(),
    });
    let limit = (args.max_connections > 0).then(|| Arc::new(Semaphore::new(args.max_connections)));
    let tracker = Tracker::default();
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            tokio::spawn(listen::accept_loop(
                l,
                ctx.clone(),
                limit.clone(),
                tracker.clone(),
            ))
        })
        .collect();

    let mut stop = stop_rx;
    let _ = stop.wait_for(|s| *s).await;
    for l in loops {
        if let Ok(l) = l.await {
            l.cleanup();
        }
    }
    info!("waiting for connections to finish");
    // In-flight requests have usually been carried out already; what can
    // hang is sending their replies to a client that stopped reading. Give
    // connections a grace period, then flush and exit regardless.
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.idle())
        .await
        .is_err()
    {
        warn!(
            "connections still open after {}s; stopping anyway",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    for e in registry.snapshot().iter() {
        let d = e.device.clone();
        let r = tokio::task::spawn_blocking(move || d.flush()).await;
        if let Ok(Err(err)) = r {
            warn!("export {:?}: flush failed: {err}", e.name);
        }
    }
    info!("stopped");
    Ok(())
}

/// Removes the pid file on drop.
struct PidFile(PathBuf);

impl PidFile {
    fn create(p: &Path) -> Result<Self, Error> {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| format!("{}: cannot write pid file: {e}", p.display()))?;
        Ok(Self(p.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
