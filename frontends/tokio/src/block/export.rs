//! One block export: a node of the [graph](crate::block::Graph) shown to
//! NBD clients under a name, with the metadata contexts it offers (QEMU's
//! `BlockExport` of type `nbd`). Made by `block-export-add` or the
//! command line; the [registry](crate::registry) lists the exports a
//! server offers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use blockwire_core::block::dirty_bitmap::CONTEXT_PREFIX;
use blockwire_core::server::{BlockSizes, DeviceCaps};
use blockwire_core::wire::TransmissionFlags;

use crate::block::throttle_group::ThrottleGroup;
use crate::block::{Event, Graph, GraphError, Node};

/// A metadata context an export offers; its position is its id.
#[derive(Clone)]
pub enum ContextKind {
    Allocation,
    AllocationDepth,
    /// A dirty bitmap `name` of `node` (the export's node or one below
    /// it), offered as the context `context`.
    DirtyBitmap {
        node: Arc<Node>,
        name: String,
        context: String,
    },
}

impl ContextKind {
    /// The context's name, as clients ask for it.
    pub fn name(&self) -> &str {
        match self {
            ContextKind::Allocation => "base:allocation",
            ContextKind::AllocationDepth => "qemu:allocation-depth",
            ContextKind::DirtyBitmap { context, .. } => context,
        }
    }
}

/// What an export is made of (`BlockExportOptionsNbd`).
#[derive(Clone, Debug, Default)]
pub struct ExportConfig {
    /// `id` of the block export (QMP); defaults to the name.
    pub id: String,
    pub node_name: String,
    /// `name`: what clients ask for.
    pub name: String,
    pub description: String,
    pub writable: bool,
    /// Dirty bitmaps to offer as `qemu:dirty-bitmap:NAME`.
    pub bitmaps: Vec<String>,
    pub allocation_depth: bool,
    /// Advertise `CAN_MULTI_CONN` where the node allows it.
    pub multi_conn: bool,
}

/// Holds the export's node while the export exists; lets go of it (and
/// says so) when the last connection using the export is gone.
struct Lease {
    graph: Arc<Graph>,
    node: String,
    id: String,
    /// The export was made: its end is an event. (One that failed to be
    /// made never existed, and QEMU says nothing of it.)
    made: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.graph.detach(&self.node);
        if self.made {
            self.graph.events().send(Event::ExportDeleted {
                id: self.id.clone(),
            });
        }
    }
}

/// One export: what the handshake shows and the node behind it.
pub struct Export {
    pub id: String,
    pub name: String,
    pub description: String,
    pub node: Arc<Node>,
    pub writable: bool,
    /// What the export supports (the core adds `HAS_FLAGS` and the rest).
    pub flags: TransmissionFlags,
    pub block_sizes: BlockSizes,
    /// Clients must honour the block sizes (the node has an alignment).
    pub block_size_required: bool,
    /// Offered metadata contexts; position = context id.
    pub contexts: Vec<ContextKind>,
    /// Connections in transmission on this export (QEMU's export refcount
    /// less its own reference: what `block-export-del` in `safe` mode
    /// refuses to cut off).
    clients: Arc<AtomicUsize>,
    /// Set to end every connection on this export (`block-export-del`
    /// with `mode: hard`, `nbd-server-stop`).
    disconnect: watch::Sender<bool>,
    /// `block_set_io_throttle`'s limits: the export is QEMU's
    /// BlockBackend, whose I/O limits apply before its node.
    throttle: RwLock<Option<Arc<ThrottleGroup>>>,
    _lease: Lease,
}

/// A connection's hold on an export; counts it as a client until dropped.
pub struct ClientGuard(Arc<AtomicUsize>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Export {
    /// `block-export-add type=nbd`: checks the node and bitmaps as QEMU's
    /// NBD server does, and takes hold of the node.
    pub fn new(graph: &Arc<Graph>, cfg: ExportConfig) -> Result<Self, GraphError> {
        let node = graph.attach(&cfg.node_name, cfg.writable)?;
        // Taken at once, so an error below lets go of the node again.
        let mut lease = Lease {
            graph: graph.clone(),
            node: cfg.node_name.clone(),
            id: cfg.id.clone(),
            made: false,
        };
        let mut contexts = vec![ContextKind::Allocation];
        if cfg.allocation_depth {
            contexts.push(ContextKind::AllocationDepth);
        }
        for b in &cfg.bitmaps {
            // Where QEMU looks for an export's bitmaps: the node or below.
            let Some(owner) = node.find_below(&|n| n.has_bitmap(b)) else {
                return Err(GraphError::Generic(format!("Bitmap '{b}' is not found")));
            };
            let recording = owner.bitmaps().iter().any(|i| i.name == *b && i.recording);
            // QEMU's rule: a read-only export of a node others may still
            // write must not offer a bitmap that keeps recording, whose
            // contents would change under the client's feet.
            if !cfg.writable && !node.read_only() && recording {
                return Err(GraphError::Generic(format!(
                    "Enabled bitmap '{b}' incompatible with readonly export"
                )));
            }
            contexts.push(ContextKind::DirtyBitmap {
                node: owner,
                name: b.clone(),
                context: format!("{CONTEXT_PREFIX}{b}"),
            });
        }
        let info = node.info();
        let read_only = !cfg.writable || node.read_only();
        let flags = DeviceCaps {
            read_only,
            // Every node accepts trim (advisory: at worst ignored),
            // write-zeroes (at worst written) and cache (a hint).
            trim: true,
            write_zeroes: true,
            fast_zero: info.fast_zero,
            cache: true,
            multi_conn: cfg.multi_conn && info.multi_conn,
            rotational: false,
        }
        .transmission_flags();
        let block_sizes = BlockSizes::of_device(
            info.align.into(),
            info.preferred_block.into(),
            info.max_transfer.into(),
        );
        lease.made = true;
        Ok(Self {
            id: cfg.id,
            name: cfg.name,
            description: cfg.description,
            node,
            writable: cfg.writable,
            flags,
            block_sizes,
            block_size_required: block_sizes.minimum > 1,
            contexts,
            clients: Arc::new(AtomicUsize::new(0)),
            disconnect: watch::channel(false).0,
            throttle: RwLock::new(None),
            _lease: lease,
        })
    }

    /// A connection starts using the export: counted until the guard is
    /// dropped; the receiver says when it must disconnect.
    pub fn enter(&self) -> (ClientGuard, watch::Receiver<bool>) {
        self.clients.fetch_add(1, Ordering::Relaxed);
        (
            ClientGuard(self.clients.clone()),
            self.disconnect.subscribe(),
        )
    }

    /// Connections now in transmission on this export.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// The throttle group the export's requests wait in, if any.
    pub fn throttle(&self) -> Option<Arc<ThrottleGroup>> {
        self.throttle
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts the export's requests in `group` (or none): connections
    /// already open follow from their next request.
    pub fn set_throttle(&self, group: Option<Arc<ThrottleGroup>>) {
        *self.throttle.write().unwrap_or_else(|p| p.into_inner()) = group;
    }

    /// Ends every connection on this export (they finish the requests in
    /// flight first).
    pub fn disconnect_all(&self) {
        self.disconnect.send_replace(true);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::block::options::{BlockdevOptions, DriverOptions};

    pub(crate) async fn graph_with(names: &[&str]) -> Arc<Graph> {
        let g = Arc::new(Graph::new());
        for n in names {
            g.add(BlockdevOptions::new(DriverOptions::Ram { size: 1 << 20 }).named(*n))
                .await
                .unwrap();
        }
        g
    }

    pub(crate) fn cfg(node: &str, name: &str) -> ExportConfig {
        ExportConfig {
            id: name.into(),
            node_name: node.into(),
            name: name.into(),
            description: format!("{name} disk"),
            writable: true,
            allocation_depth: true,
            multi_conn: true,
            ..ExportConfig::default()
        }
    }

    #[tokio::test]
    async fn flags_follow_the_node_and_bitmaps_must_exist() {
        let g = graph_with(&["n0"]).await;
        let e = Export::new(&g, cfg("n0", "x")).unwrap();
        assert!(
            e.flags
                .contains(TransmissionFlags::SEND_TRIM | TransmissionFlags::CAN_MULTI_CONN)
        );
        assert!(!e.flags.contains(TransmissionFlags::READ_ONLY));
        let mut c = cfg("n0", "y");
        c.writable = false;
        assert!(
            Export::new(&g, c)
                .unwrap()
                .flags
                .contains(TransmissionFlags::READ_ONLY)
        );
        let mut c = cfg("n0", "z");
        c.bitmaps = vec!["nope".into()];
        let err = Export::new(&g, c).err().unwrap().to_string();
        assert_eq!(err, "Bitmap 'nope' is not found");
    }
}
