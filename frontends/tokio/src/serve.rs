//! `blockwire serve`: builds the exports from the command line, listens,
//! and runs until a signal.

mod cli_graph;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use blockwire_core::server::ServerConfig;
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::block::export_options::{BitmapRef, ExportOptions};
use crate::block::{Graph, Node};
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

/// One line about an export for the log: its node chain.
fn describe(export: &Export) -> String {
    let mut chain = Vec::new();
    let mut n = Some(export.node.clone());
    while let Some(node) = n {
        chain.push(format!("{} ({})", node.name(), node.driver_name()));
        n = node
            .children()
            .into_iter()
            .find(|c| c.role != "backing")
            .map(|c| c.node);
    }
    format!(
        "export {:?}: {} bytes{}, {}",
        export.name,
        export.node.size(),
        if export.writable { "" } else { ", read-only" },
        chain.join(" -> ")
    )
}

/// `BlockExportOptions` as the registry's export configuration. A bitmap
/// given as `{node, name}` must be on the exported node or below it,
/// where the export looks bitmaps up.
pub(crate) fn qapi_export(
    e: &ExportOptions,
    graph: &Graph,
    multi_conn: bool,
) -> Result<ExportConfig, String> {
    let top = graph
        .get(&e.node_name)
        .ok_or_else(|| format!("Cannot find device='' nor node-name='{}'", e.node_name))?;
    let mut bitmaps = Vec::new();
    for b in &e.bitmaps {
        if let BitmapRef::Node { node, name } = b {
            if top.find_below(&|n| n.name() == node).is_none() {
                return Err(format!(
                    "Bitmap '{name}' of node '{node}' cannot be exported: \
                     blockwire exports bitmaps of the exported node or of nodes below it"
                ));
            }
        }
        bitmaps.push(b.name().to_owned());
    }
    Ok(ExportConfig {
        id: e.id.clone(),
        node_name: e.node_name.clone(),
        name: e.name.clone(),
        description: e.description.clone().unwrap_or_default(),
        writable: e.writable,
        bitmaps,
        allocation_depth: e.allocation_depth,
        multi_conn,
    })
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
        let export = Export::new(graph, cfg).map_err(|e| format!("export {name:?}: {e}"))?;
        info!("{}", describe(&export));
        registry
            .add(export)
            .map_err(|e| format!("export {name:?}: {e}"))?;
    }
    for (i, e) in qapi.exports.iter().enumerate() {
        qapi.check_export(i, graph)?;
        let cfg = qapi_export(e, graph, args.multi_conn()).map_err(|m| qapi.export_error(i, m))?;
        let export = Export::new(graph, cfg).map_err(|m| qapi.export_error(i, m))?;
        info!("{}", describe(&export));
        registry.add(export).map_err(|m| qapi.export_error(i, m))?;
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
    report_on_sigusr1(graph.clone())?;

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
    for e in registry.snapshot().iter() {
        if let Err(err) = flush(&e.node).await {
            warn!("export {:?}: flush failed: {err}", e.name);
        }
        // Closing: every node below stores its persistent bitmaps (a
        // qcow2 image's, loaded at open), top down as QEMU's close does.
        let mut todo = vec![e.node.clone()];
        while let Some(n) = todo.pop() {
            if let Err(err) = store_bitmaps(&n).await {
                warn!(
                    "node {:?}: persistent dirty bitmaps not stored: {err}",
                    n.name()
                );
            }
            todo.extend(n.children().into_iter().map(|c| c.node));
        }
    }
    info!("stopped");
    Ok(())
}

/// Flushes `node` where its I/O may run.
pub(crate) async fn flush(node: &Arc<Node>) -> io::Result<()> {
    node.run(|n| async move { n.flush().wait().await }).await
}

/// Stores `node`'s persistent dirty bitmaps (close) where its I/O may
/// run.
pub(crate) async fn store_bitmaps(node: &Arc<Node>) -> io::Result<()> {
    node.run(|n| async move { n.store_bitmaps().await }).await
}

/// On `SIGUSR1`, logs the graph as `query-named-block-nodes` and
/// `query-blockstats` would answer.
fn report_on_sigusr1(graph: Arc<Graph>) -> io::Result<()> {
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            let nodes = crate::block::report::named_block_nodes(&graph, true);
            let stats = crate::block::report::blockstats(&graph, crate::block::node::now_ns());
            info!("query-named-block-nodes: {nodes}");
            info!("query-blockstats: {stats}");
        }
    });
    Ok(())
}
