//! The graph: named nodes, the objects they refer to (throttle groups,
//! TLS credentials), and QEMU's rules for changing it.
//!
//! * Node names are unique and well-formed (QEMU's `id_wellformed`: a
//!   letter, then letters, digits, `-`, `.`, `_`); inline children without
//!   a name get `#blockNNN`, which no user name can collide with.
//! * Permissions are checked when a parent is attached: a writable node
//!   cannot sit on a read-only child it writes to.
//! * A node used by an export or by a parent cannot be deleted; deleting a
//!   node deletes the unnamed children it created with it.
//! * Only nodes added at the top (by `blockdev-add` or `--blockdev`) can be
//!   deleted, as QEMU allows only monitor-owned nodes.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use blockwire_core::block::throttle::ThrottleLimits;

use super::drivers;
use super::events::Events;
use super::node::{Node, NodeOptions, lock};
use super::options::{BlockdevOptions, BlockdevRef};
use super::throttle_group::ThrottleGroup;
use super::tls_creds::{TlsCredsX509, TlsEndpoint};

/// Why a graph change was refused; the message is QEMU's where QEMU has
/// one.
#[derive(Debug)]
pub enum GraphError {
    /// `DeviceNotFound` in QMP: no such node.
    NotFound(String),
    /// `GenericError`: everything else, with its message.
    Generic(String),
}

impl std::fmt::Display for GraphError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GraphError::NotFound(name) => {
                write!(f, "Cannot find device={name} nor node-name={name}")
            }
            GraphError::Generic(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for GraphError {}

impl From<io::Error> for GraphError {
    fn from(e: io::Error) -> Self {
        GraphError::Generic(e.to_string())
    }
}

fn generic(m: impl Into<String>) -> GraphError {
    GraphError::Generic(m.into())
}

/// QEMU's `id_wellformed`: what a user-chosen node name must look like.
pub fn id_wellformed(id: &str) -> bool {
    let mut c = id.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic())
        && c.all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '.' | '_'))
}

/// Node names are shorter than this (QEMU's `node_name[32]`).
pub const NODE_NAME_MAX: usize = 32;

struct Entry {
    node: Arc<Node>,
    /// Added at the top by the user (deletable), not created inline.
    owned: bool,
    /// Nodes created inline with this one, deleted with it.
    implicit: Vec<String>,
}

#[derive(Default)]
struct Inner {
    /// In creation order, as `query-named-block-nodes` lists them.
    order: Vec<String>,
    nodes: HashMap<String, Entry>,
    /// Users of each node that are not nodes (exports), by node name.
    users: HashMap<String, usize>,
    throttle_groups: HashMap<String, Arc<ThrottleGroup>>,
    /// `tls-creds-x509` objects, by id.
    tls_creds: HashMap<String, Arc<TlsCredsX509>>,
    /// `secret` objects by id (for drivers' key-secret options).
    secrets: HashMap<String, Arc<[u8]>>,
}

impl Inner {
    /// QEMU keeps every user-created object in one container, so one id
    /// names one object whatever its type.
    fn object_exists(&self, id: &str) -> bool {
        self.throttle_groups.contains_key(id)
            || self.tls_creds.contains_key(id)
            || self.secrets.contains_key(id)
    }
}

fn duplicate_object(id: &str) -> GraphError {
    generic(format!(
        "attempt to add duplicate property '{id}' to object (type 'container')"
    ))
}

/// The block graph of one process.
#[derive(Default)]
pub struct Graph {
    inner: Mutex<Inner>,
    next_auto: AtomicU64,
    events: Events,
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    /// `blockdev-add`: builds `opts` and its inline children; all or
    /// nothing. Top-level nodes must be named.
    pub async fn add(&self, opts: BlockdevOptions) -> Result<Arc<Node>, GraphError> {
        if opts.node_name.is_none() {
            return Err(generic("'node-name' must be specified for the root node"));
        }
        let mut created = Vec::new();
        match self.build(opts, &mut created).await {
            Ok(node) => {
                let mut g = lock(&self.inner);
                let implicit: Vec<String> = created
                    .iter()
                    .filter(|n| n.as_str() != node.name())
                    .cloned()
                    .collect();
                if let Some(e) = g.nodes.get_mut(node.name()) {
                    e.owned = true;
                    e.implicit = implicit;
                }
                Ok(node)
            }
            Err(e) => {
                let mut g = lock(&self.inner);
                for name in created.iter().rev() {
                    g.nodes.remove(name);
                    g.order.retain(|n| n != name);
                }
                Err(e)
            }
        }
    }

    /// Builds one node (children first), registering each as it is made.
    fn build<'a>(
        &'a self,
        opts: BlockdevOptions,
        created: &'a mut Vec<String>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Arc<Node>, GraphError>> + Send + 'a>> {
        Box::pin(async move {
            let (name, auto) = match &opts.node_name {
                Some(n) => {
                    if !id_wellformed(n) {
                        return Err(generic(format!("Invalid node-name: '{n}'")));
                    }
                    if lock(&self.inner).nodes.contains_key(n) {
                        return Err(generic(format!("Duplicate nodes with node-name='{n}'")));
                    }
                    // QEMU keeps node names in 32 bytes with the NUL.
                    if n.len() >= NODE_NAME_MAX {
                        return Err(generic("Node name too long"));
                    }
                    (n.clone(), false)
                }
                None => (
                    format!(
                        "#block{:03}",
                        self.next_auto.fetch_add(1, Ordering::Relaxed) + 1
                    ),
                    true,
                ),
            };
            let node_opts = NodeOptions {
                read_only: opts.read_only,
                discard: opts.discard,
                detect_zeroes: opts.detect_zeroes,
                cache: opts.cache,
            };
            let auto_read_only = opts.auto_read_only;
            let mut children = ChildResolver {
                graph: self,
                created,
                parent_writes: !opts.read_only,
            };
            let driver = drivers::open(opts, &mut children).await?;
            let mut node_opts = node_opts;
            if driver.info().read_only {
                // A driver that cannot write (a read-only file, a
                // snapshot) makes the node read-only only if the user did
                // not ask for a writable one (that is an error, as in
                // QEMU) or allowed it with `auto-read-only`.
                if !node_opts.read_only && !auto_read_only {
                    return Err(generic(format!(
                        "Could not open '{}': Permission denied (node is read-only)",
                        driver.filename()
                    )));
                }
                node_opts.read_only = true;
            }
            let node = Arc::new(Node::new(
                name.clone(),
                auto,
                driver,
                &node_opts,
                self.events.clone(),
            )?);
            node.load_stored_bitmaps();
            let mut g = lock(&self.inner);
            if g.nodes.contains_key(&name) {
                return Err(generic(format!("Duplicate nodes with node-name='{name}'")));
            }
            g.nodes.insert(
                name.clone(),
                Entry {
                    node: node.clone(),
                    owned: false,
                    implicit: Vec::new(),
                },
            );
            g.order.push(name.clone());
            drop(g);
            created.push(name);
            Ok(node)
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Node>> {
        lock(&self.inner).nodes.get(name).map(|e| e.node.clone())
    }

    /// Looks a node up as QMP commands do: `DeviceNotFound` if absent.
    pub fn find(&self, name: &str) -> Result<Arc<Node>, GraphError> {
        self.get(name)
            .ok_or_else(|| GraphError::NotFound(name.to_owned()))
    }

    /// Every node, in creation order.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        let g = lock(&self.inner);
        g.order
            .iter()
            .filter_map(|n| g.nodes.get(n).map(|e| e.node.clone()))
            .collect()
    }

    /// Closes the graph when the process ends, as QEMU's `bdrv_close_all`
    /// does: parents before their children (a child exists before any
    /// parent can name it, so that is reverse creation order), and on each
    /// node its persistent dirty bitmaps stored (a qcow2 image's, loaded at
    /// open) before it is flushed, as `bdrv_inactivate` stores them before
    /// the flush: so what storing writes into a child is flushed with it.
    /// Failures are logged; closing goes on with the other nodes.
    pub async fn close(&self) {
        for n in self.nodes().into_iter().rev() {
            if let Err(e) = n.run(|n| async move { n.store_bitmaps().await }).await {
                tracing::warn!(
                    "node {:?}: persistent dirty bitmaps not stored: {e}",
                    n.name()
                );
            }
            if !n.read_only()
                && let Err(e) = n.run(|n| async move { n.flush().wait().await }).await
            {
                tracing::warn!("node {:?}: flush failed: {e}", n.name());
            }
        }
    }

    /// Names of the parents of `name` (nodes whose driver has it as a child).
    fn parents(g: &Inner, name: &str) -> Vec<String> {
        g.nodes
            .values()
            .filter(|e| e.node.children().iter().any(|c| c.node.name() == name))
            .map(|e| e.node.name().to_owned())
            .collect()
    }

    /// `blockdev-del`.
    pub fn remove(&self, name: &str) -> Result<(), GraphError> {
        let mut g = lock(&self.inner);
        let Some(e) = g.nodes.get(name) else {
            return Err(generic(format!(
                "Failed to find node with node-name='{name}'"
            )));
        };
        if !e.owned {
            return Err(generic(format!("Node {name} is not owned by the monitor")));
        }
        // QEMU 7.2's two messages: a node under a BlockBackend (here: an
        // export) is "in use"; one referenced by another node is a
        // "block device in use" (its refcount is above one).
        if g.users.get(name).copied().unwrap_or(0) > 0 {
            return Err(generic(format!("Node {name} is in use")));
        }
        if !Self::parents(&g, name).is_empty() {
            return Err(generic(format!("Block device {name} is in use")));
        }
        let implicit = e.implicit.clone();
        g.nodes.remove(name);
        g.order.retain(|n| n != name);
        // Unnamed children go with their parent unless someone else holds
        // them too.
        for child in implicit.iter().rev() {
            if g.users.get(child).copied().unwrap_or(0) == 0 && Self::parents(&g, child).is_empty()
            {
                g.nodes.remove(child);
                g.order.retain(|n| n != child);
            }
        }
        Ok(())
    }

    /// An export (or another non-node user) starts using `name`; a
    /// writable user needs a writable node.
    pub fn attach(&self, name: &str, writable: bool) -> Result<Arc<Node>, GraphError> {
        let mut g = lock(&self.inner);
        let node = g
            .nodes
            .get(name)
            .map(|e| e.node.clone())
            .ok_or_else(|| GraphError::NotFound(name.to_owned()))?;
        if writable && node.read_only() {
            return Err(generic(format!("Block node '{name}' is read-only")));
        }
        *g.users.entry(name.to_owned()).or_default() += 1;
        Ok(node)
    }

    pub fn detach(&self, name: &str) {
        let mut g = lock(&self.inner);
        if let Some(n) = g.users.get_mut(name) {
            *n = n.saturating_sub(1);
        }
    }

    /// Users of a node that are not nodes (exports).
    pub fn users(&self, name: &str) -> usize {
        lock(&self.inner).users.get(name).copied().unwrap_or(0)
    }

    // ---- throttle groups ----

    /// `object-add qom-type=throttle-group`.
    pub fn add_throttle_group(&self, id: &str, limits: ThrottleLimits) -> Result<(), GraphError> {
        if !id_wellformed(id) {
            return Err(generic(format!("Parameter 'id' expects an identifier")));
        }
        let group = ThrottleGroup::new(id, limits).map_err(generic)?;
        let mut g = lock(&self.inner);
        if g.object_exists(id) {
            return Err(duplicate_object(id));
        }
        g.throttle_groups.insert(id.to_owned(), Arc::new(group));
        Ok(())
    }

    pub fn throttle_group(&self, id: &str) -> Option<Arc<ThrottleGroup>> {
        lock(&self.inner).throttle_groups.get(id).cloned()
    }

    /// `object-add qom-type=secret`: objects share one namespace, as in
    /// QEMU's `/objects`.
    pub fn add_secret(&self, id: &str, data: Arc<[u8]>) -> Result<(), GraphError> {
        if !id_wellformed(id) {
            return Err(generic("Parameter 'id' expects an identifier"));
        }
        let mut g = lock(&self.inner);
        if g.object_exists(id) {
            return Err(duplicate_object(id));
        }
        g.secrets.insert(id.to_owned(), data);
        Ok(())
    }

    /// A secret's bytes, by id.
    pub fn secret(&self, id: &str) -> Option<Arc<[u8]>> {
        lock(&self.inner).secrets.get(id).cloned()
    }

    /// `object-del` of a secret.
    pub fn remove_secret(&self, id: &str) -> Result<(), GraphError> {
        match lock(&self.inner).secrets.remove(id) {
            Some(_) => Ok(()),
            None => Err(generic(format!("object '{id}' not found"))),
        }
    }

    /// `object-del` of a throttle group no node uses.
    pub fn remove_throttle_group(&self, id: &str) -> Result<(), GraphError> {
        let mut g = lock(&self.inner);
        let Some(group) = g.throttle_groups.get(id) else {
            return Err(generic(format!("object '{id}' not found")));
        };
        if Arc::strong_count(group) > 1 {
            return Err(generic(format!(
                "object '{id}' is in use, can not be deleted"
            )));
        }
        g.throttle_groups.remove(id);
        Ok(())
    }
}

impl Graph {
    // ---- TLS credentials ----

    /// `object-add qom-type=tls-creds-x509`: checked as QEMU loads it.
    pub fn add_tls_creds(&self, creds: TlsCredsX509) -> Result<(), GraphError> {
        if !id_wellformed(&creds.id) {
            return Err(generic("Parameter 'id' expects an identifier"));
        }
        creds.check().map_err(generic)?;
        let mut g = lock(&self.inner);
        if g.object_exists(&creds.id) {
            return Err(duplicate_object(&creds.id));
        }
        g.tls_creds.insert(creds.id.clone(), Arc::new(creds));
        Ok(())
    }

    pub fn tls_creds(&self, id: &str) -> Option<Arc<TlsCredsX509>> {
        lock(&self.inner).tls_creds.get(id).cloned()
    }

    /// `object-del` of credentials no node holds.
    pub fn remove_tls_creds(&self, id: &str) -> Result<(), GraphError> {
        let mut g = lock(&self.inner);
        let Some(creds) = g.tls_creds.get(id) else {
            return Err(generic(format!("object '{id}' not found")));
        };
        if Arc::strong_count(creds) > 1 {
            return Err(generic(format!(
                "object '{id}' is in use, can not be deleted"
            )));
        }
        g.tls_creds.remove(id);
        Ok(())
    }
}

/// How a driver gets its children while it is being opened: by name
/// (checked to exist) or built inline.
pub struct ChildResolver<'a> {
    graph: &'a Graph,
    created: &'a mut Vec<String>,
    /// The node being opened will write (it is not read-only).
    parent_writes: bool,
}

impl ChildResolver<'_> {
    pub fn graph(&self) -> &Graph {
        self.graph
    }

    /// The child for `role`; `writes` says whether the parent writes to
    /// it (a `file` of a writable format does, a `backing` never does).
    pub async fn open(
        &mut self,
        role: &'static str,
        r: BlockdevRef,
        writes: bool,
    ) -> Result<Arc<Node>, GraphError> {
        let node = match r {
            BlockdevRef::Name(n) => self
                .graph
                .get(&n)
                // QEMU looks a child reference up as a device or a node.
                .ok_or_else(|| generic(format!("Cannot find device='{n}' nor node-name='{n}'")))?,
            BlockdevRef::Inline(mut o) => {
                // An inline child inherits read-only from a parent that
                // does not write to it, as QEMU's option inheritance does.
                if !(writes && self.parent_writes) && !o.read_only {
                    o.read_only = true;
                }
                self.graph.build(*o, self.created).await?
            }
        };
        if writes && self.parent_writes && node.read_only() {
            return Err(generic(format!(
                "Block node '{}' is read-only: it cannot be the writable {role} of a writable node",
                node.name()
            )));
        }
        Ok(node)
    }

    /// Looks up a throttle group by id.
    pub fn throttle_group(&self, id: &str) -> Result<Arc<ThrottleGroup>, GraphError> {
        self.graph
            .throttle_group(id)
            .ok_or_else(|| generic(format!("Throttle group '{id}' does not exist")))
    }

    /// Looks up TLS credentials by id for the `endpoint` end of a
    /// connection, with QEMU's messages (`nbd_get_tls_creds`).
    pub fn tls_creds(
        &self,
        id: &str,
        endpoint: TlsEndpoint,
    ) -> Result<Arc<TlsCredsX509>, GraphError> {
        let g = lock(&self.graph.inner);
        let Some(creds) = g.tls_creds.get(id) else {
            return Err(generic(if g.object_exists(id) {
                format!("Object with id '{id}' is not TLS credentials")
            } else {
                format!("No TLS credentials with id '{id}'")
            }));
        };
        if creds.endpoint != endpoint {
            return Err(generic(format!(
                "Expected TLS credentials for a {} endpoint",
                endpoint.as_str()
            )));
        }
        Ok(creds.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_follow_qemu() {
        for ok in ["a", "disk0", "a-b.c_d", "Z9"] {
            assert!(id_wellformed(ok), "{ok}");
        }
        for bad in ["", "0a", "-a", "a b", "#block1", "é", "a/b"] {
            assert!(!id_wellformed(bad), "{bad}");
        }
    }
}
