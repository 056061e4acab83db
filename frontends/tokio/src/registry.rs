//! The exports a server offers, changeable while it runs.
//!
//! An [`Export`] is a node shown to NBD clients under a name. The table
//! is immutable once built and swapped whole on change, so a connection
//! takes one [`Snapshot`] at accept time and the positions the core's
//! handshake uses stay valid for the connection's lifetime; an export
//! removed later lives on for the connections still using it, and lets go
//! of its node (raising `BLOCK_EXPORT_DELETED`) when the last one leaves.

use std::sync::{Arc, RwLock};

use blockwire_core::server::{ExportInfo, Exports};

pub use crate::block::export::{ContextKind, Export, ExportConfig};

/// An immutable list of exports; the first is the default export.
pub type ExportTable = Vec<Arc<Export>>;

#[derive(Debug, PartialEq, Eq)]
pub enum RegistryError {
    Exists(String),
    NotFound(String),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::Exists(n) => write!(f, "export {n:?} already exists"),
            RegistryError::NotFound(n) => write!(f, "no export named {n:?}"),
        }
    }
}

impl std::error::Error for RegistryError {}

/// The live table.
#[derive(Default)]
pub struct Registry {
    current: RwLock<Arc<ExportTable>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The table as it is now.
    pub fn snapshot(&self) -> Arc<ExportTable> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update<T>(
        &self,
        f: impl FnOnce(&mut Vec<Arc<Export>>) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut exports = ExportTable::clone(&cur);
        let out = f(&mut exports)?;
        *cur = Arc::new(exports);
        Ok(out)
    }

    /// Adds an export; names and ids are unique.
    pub fn add(&self, export: Export) -> Result<Arc<Export>, RegistryError> {
        self.update(|v| {
            if v.iter().any(|e| e.name == export.name || e.id == export.id) {
                return Err(RegistryError::Exists(export.name.clone()));
            }
            let e = Arc::new(export);
            v.push(e.clone());
            Ok(e)
        })
    }

    /// Removes an export from new connections (by id); existing ones keep
    /// it until they end.
    pub fn remove(&self, id: &str) -> Result<Arc<Export>, RegistryError> {
        self.update(|v| {
            let i = v
                .iter()
                .position(|e| e.id == id)
                .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
            Ok(v.remove(i))
        })
    }
}

/// One connection's view of the table, as the core's handshake sees it.
pub struct Snapshot(pub Arc<ExportTable>);

impl Exports for Snapshot {
    fn find(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|e| e.name == name)
    }

    fn export(&self, index: usize) -> Option<ExportInfo<'_>> {
        let e = self.0.get(index)?;
        Some(ExportInfo {
            name: &e.name,
            description: &e.description,
            // The node's size now: an export follows a resize for new
            // connections.
            size: e.node.size(),
            flags: e.flags,
            block_sizes: e.block_sizes,
            block_size_required: e.block_size_required,
        })
    }

    fn meta_context(&self, export: usize, index: usize) -> Option<&str> {
        self.0
            .get(export)?
            .contexts
            .get(index)
            .map(ContextKind::name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::export::tests::{cfg, graph_with};

    #[tokio::test]
    async fn snapshots_survive_changes() {
        let g = graph_with(&["n0", "n1"]).await;
        let r = Registry::new();
        r.add(Export::new(&g, cfg("n0", "a")).unwrap()).unwrap();
        r.add(Export::new(&g, cfg("n1", "b")).unwrap()).unwrap();
        assert!(r.add(Export::new(&g, cfg("n0", "a")).unwrap()).is_err());
        let snap = Snapshot(r.snapshot());
        r.remove("a").unwrap();
        assert_eq!(snap.find("b"), Some(1));
        assert_eq!(snap.export(0).unwrap().name, "a");
        assert_eq!(snap.meta_context(1, 1), Some("qemu:allocation-depth"));
        assert_eq!(snap.meta_context(1, 2), None);
        let now = Snapshot(r.snapshot());
        assert_eq!(now.find("a"), None);
        assert_eq!(now.export(0).unwrap().name, "b");
        // The node of a removed export is free once nobody uses the export.
        assert_eq!(g.users("n0"), 1);
        drop(snap);
        assert_eq!(g.users("n0"), 0);
    }
}
