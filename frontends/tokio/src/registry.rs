//! The exports a server offers, changeable while it runs.
//!
//! The table is immutable once built and swapped whole on change, so a
//! connection takes one [`Snapshot`] at accept time and the positions the
//! core's handshake uses stay valid for the connection's lifetime; an
//! export removed later lives on for the connections still using it.

use std::sync::{Arc, RwLock};

use blockwire_core::server::{BlockSizes, DeviceCaps, ExportInfo, Exports};
use blockwire_core::wire::TransmissionFlags;

use crate::stack::{ContextKind, Device};

/// One export: what the handshake shows and the stack behind it.
pub struct Export {
    pub name: String,
    pub description: String,
    pub device: Arc<Device>,
    /// What the export supports (the core adds `HAS_FLAGS` and the rest).
    pub flags: TransmissionFlags,
    pub block_sizes: BlockSizes,
    /// Offered metadata contexts; position = context id.
    pub contexts: Vec<ContextKind>,
    context_names: Vec<String>,
}

/// Per-export policy the server applies when building flags.
#[derive(Clone, Copy, Debug)]
pub struct ExportPolicy {
    pub multi_conn: bool,
}

impl Export {
    pub fn new(
        name: String,
        description: String,
        device: Arc<Device>,
        contexts: Vec<ContextKind>,
        policy: ExportPolicy,
    ) -> Self {
        let flags = export_flags(&device, policy);
        let context_names = contexts.iter().map(ContextKind::name).collect();
        Self {
            name,
            description,
            device,
            flags,
            block_sizes: BlockSizes::DEFAULT,
            contexts,
            context_names,
        }
    }
}

/// Transmission flags for a device, as the core derives them from what it
/// can do.
///
/// Every backend accepts trim (advisory: at worst ignored), write-zeroes
/// (at worst written) and cache (a prefetch hint). `CAN_MULTI_CONN` is
/// true unless disabled: every connection to an export shares one
/// [`Device`] in this process (one descriptor, one page cache, one RAM
/// disk), so a flush on any connection covers writes completed on all of
/// them — the guarantee the flag makes.
pub fn export_flags(device: &Device, policy: ExportPolicy) -> TransmissionFlags {
    DeviceCaps {
        read_only: device.read_only(),
        trim: true,
        write_zeroes: true,
        fast_zero: device.caps().fast_zero,
        cache: true,
        multi_conn: policy.multi_conn,
        rotational: false,
    }
    .transmission_flags()
}

/// An immutable list of exports; the first is the default export.
#[derive(Default)]
pub struct ExportTable {
    exports: Vec<Arc<Export>>,
}

impl ExportTable {
    pub fn get(&self, i: usize) -> Option<&Arc<Export>> {
        self.exports.get(i)
    }
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Export>> {
        self.exports.iter()
    }
    pub fn len(&self) -> usize {
        self.exports.len()
    }
    pub fn is_empty(&self) -> bool {
        self.exports.is_empty()
    }
    pub fn find(&self, name: &str) -> Option<usize> {
        self.exports.iter().position(|e| e.name == name)
    }
}

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
        let mut exports = cur.exports.clone();
        let out = f(&mut exports)?;
        *cur = Arc::new(ExportTable { exports });
        Ok(out)
    }

    pub fn add(&self, export: Export) -> Result<(), RegistryError> {
        self.update(|v| {
            if v.iter().any(|e| e.name == export.name) {
                return Err(RegistryError::Exists(export.name.clone()));
            }
            v.push(Arc::new(export));
            Ok(())
        })
    }

    /// Removes an export from new connections; existing ones keep it.
    pub fn remove(&self, name: &str) -> Result<Arc<Export>, RegistryError> {
        self.update(|v| {
            let i = v
                .iter()
                .position(|e| e.name == name)
                .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
            Ok(v.remove(i))
        })
    }
}

/// One connection's view of the table, as the core's handshake sees it.
pub struct Snapshot(pub Arc<ExportTable>);

impl Exports for Snapshot {
    fn find(&self, name: &str) -> Option<usize> {
        match self.0.find(name) {
            Some(i) => Some(i),
            // "" is the default export: the first, whatever its name.
            None if name.is_empty() && !self.0.is_empty() => Some(0),
            None => None,
        }
    }

    fn export(&self, index: usize) -> Option<ExportInfo<'_>> {
        let e = self.0.get(index)?;
        Some(ExportInfo {
            name: &e.name,
            description: &e.description,
            size: e.device.size(),
            flags: e.flags,
            block_sizes: e.block_sizes,
            block_size_required: false,
        })
    }

    fn meta_context(&self, export: usize, index: usize) -> Option<&str> {
        self.0
            .get(export)?
            .context_names
            .get(index)
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, MemoryBackend};
    use crate::stack::DeviceConfig;

    fn export(name: &str) -> Export {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(1 << 20).unwrap());
        let device = Arc::new(
            Device::new(DeviceConfig {
                backend,
                cow_top: None,
                read_only: false,
                dirty_bitmaps: vec![],
                throttle: None,
                blkdebug: None,
            })
            .unwrap(),
        );
        Export::new(
            name.into(),
            format!("{name} disk"),
            device,
            vec![ContextKind::Allocation, ContextKind::AllocationDepth],
            ExportPolicy { multi_conn: true },
        )
    }

    #[test]
    fn snapshots_survive_changes() {
        let r = Registry::new();
        r.add(export("a")).unwrap();
        r.add(export("b")).unwrap();
        assert_eq!(r.add(export("a")), Err(RegistryError::Exists("a".into())));
        let snap = Snapshot(r.snapshot());
        r.remove("a").unwrap();
        assert_eq!(snap.find("b"), Some(1));
        assert_eq!(snap.find(""), Some(0));
        assert_eq!(snap.export(0).unwrap().name, "a");
        assert_eq!(snap.meta_context(1, 1), Some("qemu:allocation-depth"));
        assert_eq!(snap.meta_context(1, 2), None);
        let now = Snapshot(r.snapshot());
        assert_eq!(now.find("a"), None);
        assert_eq!(now.find(""), Some(0));
        assert_eq!(now.export(0).unwrap().name, "b");
    }

    #[test]
    fn flags_follow_the_device() {
        let e = export("x");
        let f = e.flags;
        assert!(f.contains(TransmissionFlags::SEND_TRIM | TransmissionFlags::CAN_MULTI_CONN));
        assert!(!f.contains(TransmissionFlags::READ_ONLY));
    }
}
