//! `blockwire serve`: builds the exports from the command line, listens,
//! and runs until a signal.

mod cli_graph;

use std::sync::Arc;
use std::time::Duration;

use blockwire_core::server::ServerConfig;
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::block::{Graph, report};
use crate::cli::{ServeArgs, TlsMode};
use crate::connection::ConnContext;
use crate::listen::{self, Inherited, ListenAddr, Listener, Tracker};
use crate::pid_file::PidFile;
use crate::registry::{Export, ExportConfig, Registry};
use crate::{shutdown, tls};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long a graceful shutdown waits for connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// The default listening address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:10809";

/// Makes the export `cfg`, logs it and adds it to `registry`.
fn add_export(graph: &Arc<Graph>, registry: &Registry, cfg: ExportConfig) -> Result<(), String> {
    let export = Export::new(graph, cfg).map_err(|e| e.to_string())?;
    let ro = if export.writable { "" } else { ", read-only" };
    let (name, size) = (&export.name, export.node.size());
    info!(
        "export {name:?}: {size} bytes{ro}, {}",
        report::chain(&export.node)
    );
    registry.add(export).map(drop).map_err(|e| e.to_string())
}

/// Builds the graph and the exports the command line asks for: the
/// objects and nodes of --object / --blockdev, the short form's exports,
/// then the QAPI --export values (which may name nodes of either).
async fn build(args: &ServeArgs, graph: &Arc<Graph>, registry: &Registry) -> Result<(), Error> {
    let qapi = args.qapi_config()?;
    qapi.build_nodes(graph).await?;
    for (i, p) in cli_graph::plans(args).into_iter().enumerate() {
        let name = p.name.clone();
        let cfg = cli_graph::sugar(i, p, args, graph).await?;
        add_export(graph, registry, cfg).map_err(|e| format!("export {name:?}: {e}"))?;
    }
    for (i, e) in qapi.exports.iter().enumerate() {
        qapi.check_export(i, graph)?;
        let cfg = e.config(graph, args.multi_conn());
        cfg.and_then(|cfg| add_export(graph, registry, cfg))
            .map_err(|m| qapi.export_error(i, m))?;
    }
    Ok(())
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
    let graph = Arc::new(Graph::new());
    let registry = Arc::new(Registry::new());
    build(&args, &graph, &registry).await?;
    report::log_on_sigusr1(graph.clone())?;

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

    let inherited = prepared.inherited.into_iter();
    let mut listeners = inherited
        .map(Listener::from_inherited)
        .collect::<Result<Vec<_>, _>>()?;
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
    let _pid_file = args.pid_file.as_deref().map(PidFile::create).transpose()?;

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
    let accepting = tokio::spawn(listen::accept_loop(
        listeners,
        ctx.clone(),
        limit,
        tracker.clone(),
    ));

    let mut stop = stop_rx;
    let _ = stop.wait_for(|s| *s).await;
    if let Ok(listeners) = accepting.await {
        for l in listeners {
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
    graph.close().await;
    info!("stopped");
    Ok(())
}
