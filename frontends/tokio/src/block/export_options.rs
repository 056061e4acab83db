//! `BlockExportOptions` for NBD exports as typed values: what
//! `block-export-add` and qemu-storage-daemon's `--export` take (QEMU 7.2
//! `qapi/block-export.json`, `type: nbd`). The JSON and key=value forms
//! are parsed into these by [`super::qapi`]; code building exports from
//! other options fills them in directly.

use super::graph::Graph;
use crate::registry::ExportConfig;

/// Longest export name or description (`NBD_MAX_STRING_SIZE`).
pub const NBD_MAX_STRING_SIZE: usize = 4096;

/// `BlockExportOptions` with `BlockExportOptionsNbd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportOptions {
    /// `id`: names the export for `block-export-del` and events.
    pub id: String,
    /// `node-name`: the node exported.
    pub node_name: String,
    /// `writable` (default false).
    pub writable: bool,
    /// `name`: the NBD export name (default: the node name).
    pub name: String,
    /// `description`: shown by `NBD_OPT_LIST` / `nbdinfo --list`.
    pub description: Option<String>,
    /// `bitmaps`: dirty bitmaps offered as `qemu:dirty-bitmap:NAME`.
    pub bitmaps: Vec<BitmapRef>,
    /// `allocation-depth`: offer `qemu:allocation-depth`.
    pub allocation_depth: bool,
}

/// `BlockDirtyBitmapOrStr`: a bitmap of the exported node by name, or of
/// any node (QEMU 7.2 accepts both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BitmapRef {
    Name(String),
    Node { node: String, name: String },
}

impl BitmapRef {
    /// The bitmap's own name (what `qemu:dirty-bitmap:` is followed by).
    pub fn name(&self) -> &str {
        match self {
            BitmapRef::Name(n) | BitmapRef::Node { name: n, .. } => n,
        }
    }
}

impl ExportOptions {
    /// An export of `node_name` with QEMU's defaults: read-only, named
    /// after the node, no description, bitmaps or allocation depth.
    pub fn new(id: impl Into<String>, node_name: impl Into<String>) -> Self {
        let node_name = node_name.into();
        Self {
            id: id.into(),
            name: node_name.clone(),
            node_name,
            writable: false,
            description: None,
            bitmaps: Vec::new(),
            allocation_depth: false,
        }
    }

    /// What `block-export-add` checks against the graph before it exports,
    /// with QEMU 7.2's messages: the node exists, is writable if the
    /// export is, and has the bitmaps named.
    pub fn check(&self, graph: &Graph) -> Result<(), String> {
        let not_found = |n: &str| format!("Cannot find device='' nor node-name='{n}'");
        let node = graph
            .get(&self.node_name)
            .ok_or_else(|| not_found(&self.node_name))?;
        if self.writable && node.read_only() {
            return Err("Cannot export read-only node as writable".into());
        }
        for b in &self.bitmaps {
            match b {
                BitmapRef::Name(n) if !node.has_bitmap(n) => {
                    return Err(format!("Bitmap '{n}' is not found"));
                }
                // QEMU looks these up as block-dirty-bitmap-* do.
                BitmapRef::Node { node, name } => {
                    let owner = graph
                        .get(node)
                        .ok_or_else(|| format!("Node '{node}' not found"))?;
                    if !owner.has_bitmap(name) {
                        return Err(format!("Dirty bitmap '{name}' not found"));
                    }
                }
                BitmapRef::Name(_) => {}
            }
        }
        Ok(())
    }

    /// The registry's configuration of this export. A bitmap given as
    /// `{node, name}` must be on the exported node or below it, where the
    /// export looks bitmaps up.
    pub fn config(&self, graph: &Graph, multi_conn: bool) -> Result<ExportConfig, String> {
        let top = graph
            .get(&self.node_name)
            .ok_or_else(|| format!("Cannot find device='' nor node-name='{}'", self.node_name))?;
        let mut bitmaps = Vec::new();
        for b in &self.bitmaps {
            if let BitmapRef::Node { node, name } = b
                && top.find_below(&|n| n.name() == node).is_none()
            {
                return Err(format!(
                    "Bitmap '{name}' of node '{node}' cannot be exported: \
                     blockwire exports bitmaps of the exported node or of nodes below it"
                ));
            }
            bitmaps.push(b.name().to_owned());
        }
        Ok(ExportConfig {
            id: self.id.clone(),
            node_name: self.node_name.clone(),
            name: self.name.clone(),
            description: self.description.clone().unwrap_or_default(),
            writable: self.writable,
            bitmaps,
            allocation_depth: self.allocation_depth,
            multi_conn,
        })
    }
}
