//! The QMP commands, each answering as qemu-storage-daemon 7.2 does:
//! the same argument checks (by the visitor, see [`super::schema`]), the
//! same error classes and messages, the same return values.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Daemon, limits, nbd_server_config, schema};
use crate::block::export_options::ExportOptions;
use crate::block::graph::GraphError;
use crate::block::node::MAX_BITMAPS;
use crate::block::node::Node;
use crate::block::node::{NodeOptions, lock};
use crate::block::qapi::block_core::{self, BLOCKDEV_OPTIONS_TYPE};
use crate::block::qapi::schema::{Struct, Type};
use crate::block::qapi::{self, introspect, visit};
use crate::block::report;
use crate::registry::{ContextKind, Export};
use blockwire_core::block::dirty_bitmap::{BitmapError, BitmapSet};

/// A QMP error reply: `{"class": ..., "desc": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    pub class: &'static str,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> Self {
        Self {
            class: "GenericError",
            desc: desc.into(),
        }
    }

    pub fn command_not_found(desc: impl Into<String>) -> Self {
        Self {
            class: "CommandNotFound",
            desc: desc.into(),
        }
    }
}

impl From<GraphError> for QmpError {
    fn from(e: GraphError) -> Self {
        match e {
            GraphError::NotFound(_) => Self {
                class: "DeviceNotFound",
                desc: e.to_string(),
            },
            GraphError::Generic(m) => Self::generic(m),
        }
    }
}

impl From<qapi::Error> for QmpError {
    fn from(e: qapi::Error) -> Self {
        Self::generic(e.desc())
    }
}

type Reply = Result<Value, QmpError>;

fn check(s: &'static Struct, args: &Value) -> Result<Value, QmpError> {
    Ok(visit::visit(&Type::Struct(s), args, false)?)
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// Runs one command (capabilities negotiation is the session's).
pub async fn execute(d: &Daemon, cmd: &str, args: &Value) -> Reply {
    match cmd {
        "query-version" => {
            check(&schema::EMPTY, args)?;
            // The QEMU version whose behaviour the daemon follows, so that
            // tools checking for features by version see what they get.
            Ok(json!({
                "qemu": {"major": 7, "minor": 2, "micro": 0},
                "package": concat!("blockwire ", env!("CARGO_PKG_VERSION")),
            }))
        }
        "query-commands" => {
            check(&schema::EMPTY, args)?;
            Ok(Value::Array(
                schema::COMMAND_TABLE
                    .iter()
                    .map(|c| json!({"name": c.name}))
                    .collect(),
            ))
        }
        // Type names masked with numbers, as QEMU 7.2 answers.
        "query-qmp-schema" => {
            check(&schema::EMPTY, args)?;
            Ok(Value::Array(introspect::schema_info_with_events(
                &schema::COMMAND_TABLE,
                &schema::EVENTS,
                true,
            )))
        }
        "quit" => {
            check(&schema::EMPTY, args)?;
            // The reply goes out before the process stops: the session
            // writes it, then the main task sees the flag.
            Ok(json!({}))
        }
        "blockdev-add" => {
            let checked = visit::visit(&BLOCKDEV_OPTIONS_TYPE, args, false)?;
            let opts = block_core::convert(&checked, false)?;
            let node = d.graph.add(opts).await?;
            remember(d, node.name(), checked);
            Ok(json!({}))
        }
        "blockdev-del" => {
            let a = check(&schema::BLOCKDEV_DEL, args)?;
            let name = str_of(&a, "node-name");
            d.graph.remove(name)?;
            lock(&d.options).remove(name);
            Ok(json!({}))
        }
        "blockdev-reopen" => blockdev_reopen(d, &check(&schema::BLOCKDEV_REOPEN, args)?),
        "query-named-block-nodes" => {
            let a = check(&schema::QUERY_NAMED_BLOCK_NODES, args)?;
            let mut v = report::named_block_nodes(&d.graph, a["flat"].as_bool().unwrap_or(false));
            mark_busy(d, &mut v);
            newest_first(&mut v);
            Ok(v)
        }
        // Only nodes attached to a named BlockBackend (a guest device) are
        // listed; qemu-storage-daemon has none, and neither has this.
        "query-block" => {
            check(&schema::EMPTY, args)?;
            Ok(json!([]))
        }
        "object-add" => {
            let o = qapi::object_options(args, false)?;
            o.add_to(&d.graph)?;
            Ok(json!({}))
        }
        "object-del" => {
            let a = check(&schema::OBJECT_DEL, args)?;
            let id = str_of(&a, "id");
            let g = &d.graph;
            let r = if g.throttle_group(id).is_some() {
                g.remove_throttle_group(id)
            } else if g.tls_creds(id).is_some() {
                g.remove_tls_creds(id)
            } else {
                g.remove_secret(id)
            };
            r?;
            Ok(json!({}))
        }
        "nbd-server-start" => {
            let a = check(&schema::NBD_SERVER_START, args)?;
            let c = nbd_server_config(&a, true).map_err(QmpError::generic)?;
            d.nbd_start(c).await.map_err(QmpError::generic)?;
            Ok(json!({}))
        }
        "nbd-server-stop" => {
            check(&schema::EMPTY, args)?;
            d.nbd_stop().await.map_err(QmpError::generic)?;
            Ok(json!({}))
        }
        "block-export-add" => {
            let e = qapi::export_options(args, false)?;
            add_export(d, &e).await?;
            Ok(json!({}))
        }
        "block-export-del" => {
            let a = check(&schema::BLOCK_EXPORT_DEL, args)?;
            let id = str_of(&a, "id");
            let hard = a["mode"].as_str() == Some("hard");
            let Some(e) = d.registry.snapshot().iter().find(|e| e.id == id).cloned() else {
                return Err(QmpError::generic(format!("Export '{id}' is not found")));
            };
            if !hard && e.clients() > 0 {
                return Err(QmpError::generic(format!("export '{id}' still in use")));
            }
            let _ = d.registry.remove(id);
            if hard {
                e.disconnect_all();
            }
            Ok(json!({}))
        }
        "query-block-exports" => {
            check(&schema::EMPTY, args)?;
            // Newest first, as QEMU 7.2 lists them.
            let table = d.registry.snapshot();
            let exports: Vec<_> = table.iter().collect();
            Ok(Value::Array(
                exports
                    .into_iter()
                    .rev()
                    .map(|e| {
                        json!({
                            "type": "nbd",
                            "id": e.id,
                            "node-name": e.node.name(),
                            "shutting-down": false,
                        })
                    })
                    .collect(),
            ))
        }
        "block-dirty-bitmap-add"
        | "block-dirty-bitmap-remove"
        | "block-dirty-bitmap-clear"
        | "block-dirty-bitmap-enable"
        | "block-dirty-bitmap-disable"
        | "block-dirty-bitmap-merge" => {
            let a = check(bitmap_args(cmd), args)?;
            bitmap_op(d, cmd, &a, &mut Vec::new())?;
            Ok(json!({}))
        }
        "transaction" => {
            let a = check(&schema::TRANSACTION, args)?;
            transaction(d, &a)?;
            Ok(json!({}))
        }
        "query-blockstats" => {
            let a = check(&schema::QUERY_BLOCKSTATS, args)?;
            // Without query-nodes QEMU lists BlockBackends with a name or
            // a device: qemu-storage-daemon has none.
            if a["query-nodes"].as_bool().unwrap_or(false) {
                Ok(report::blockstats(&d.graph, crate::block::node::now_ns()))
            } else {
                Ok(json!([]))
            }
        }
        "block_resize" => block_resize(d, &check(&schema::BLOCK_RESIZE, args)?).await,
        "block_set_io_throttle" => {
            limits::block_set_io_throttle(d, &check(&schema::BLOCK_IO_THROTTLE, args)?)
        }
        "qom-set" => limits::qom_set(d, &check(&schema::QOM_SET, args)?),
        "qom-get" => limits::qom_get(d, &check(&schema::QOM_GET, args)?),
        "block-set-write-threshold" => {
            let a = check(&schema::BLOCK_SET_WRITE_THRESHOLD, args)?;
            let name = str_of(&a, "node-name");
            let Some(node) = d.graph.get(name) else {
                return Err(QmpError::generic(format!("Device '{name}' not found")));
            };
            node.set_write_threshold(a["write-threshold"].as_u64().unwrap_or(0));
            Ok(json!({}))
        }
        _ => Err(QmpError::command_not_found(format!(
            "The command {cmd} has not been found"
        ))),
    }
}

/// `block-export-add` (and `--export`), with QEMU 7.2's checks in its
/// order: the id, the node and bitmaps, the server, the name.
pub async fn add_export(d: &Daemon, e: &ExportOptions) -> Result<(), QmpError> {
    let table = d.registry.snapshot();
    if table.iter().any(|x| x.id == e.id) {
        return Err(QmpError::generic(format!(
            "Block export id '{}' is already in use",
            e.id
        )));
    }
    e.check(&d.graph).map_err(QmpError::generic)?;
    if !d.nbd_running().await {
        return Err(QmpError::generic("NBD server not running"));
    }
    if table.iter().any(|t| t.name == e.name) {
        return Err(QmpError::generic(format!(
            "NBD server already has export named '{}'",
            e.name
        )));
    }
    let cfg = e.config(&d.graph, true).map_err(QmpError::generic)?;
    let export = Export::new(&d.graph, cfg)?;
    d.registry
        .add(export)
        .map_err(|err| QmpError::generic(err.to_string()))?;
    Ok(())
}

/// Whether an export offers bitmap `name` of `node`.
fn exported(d: &Daemon, node: &Arc<Node>, name: &str) -> bool {
    d.registry.snapshot().iter().any(|e| {
        e.contexts.iter().any(|c| {
            matches!(c, ContextKind::DirtyBitmap { node: n, name: b, .. } if Arc::ptr_eq(n, node) && b == name)
        })
    })
}

/// QEMU 7.2 builds both lists of `query-named-block-nodes` by prepending
/// (`QAPI_LIST_PREPEND`): the newest node, and on each node the newest
/// bitmap, come first.
fn newest_first(v: &mut Value) {
    if let Some(nodes) = v.as_array_mut() {
        nodes.reverse();
        for n in nodes {
            if let Some(b) = n.get_mut("dirty-bitmaps").and_then(Value::as_array_mut) {
                b.reverse();
            }
        }
    }
}

/// `busy` in `query-named-block-nodes`: exported bitmaps are.
fn mark_busy(d: &Daemon, v: &mut Value) {
    for n in v.as_array_mut().into_iter().flatten() {
        let Some(node) = n["node-name"].as_str().and_then(|name| d.graph.get(name)) else {
            continue;
        };
        for b in n
            .get_mut("dirty-bitmaps")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let name = b["name"].as_str().unwrap_or("").to_owned();
            if exported(d, &node, &name) {
                b["busy"] = json!(true);
            }
        }
    }
}

fn busy(name: &str) -> QmpError {
    QmpError::generic(format!(
        "Bitmap '{name}' is currently in use by another operation and cannot be used"
    ))
}

fn bitmap_error(e: BitmapError, name: &str) -> QmpError {
    QmpError::generic(match e {
        BitmapError::NotFound => format!("Dirty bitmap '{name}' not found"),
        BitmapError::Exists => format!("Bitmap already exists: {name}"),
        BitmapError::BadName if name.is_empty() => "Bitmap name cannot be empty".into(),
        // QEMU allows 1023 bytes; the core keeps names in 128.
        BitmapError::BadName => format!("Bitmap name too long: {name}"),
        BitmapError::BadGranularity => "Granularity must be power of 2 and at least 512".into(),
        BitmapError::Frozen => {
            return busy(name);
        }
        BitmapError::Disabled => format!("Bitmap '{name}' is disabled"),
        BitmapError::Full => format!("Too many dirty bitmaps: cannot add '{name}'"),
        BitmapError::StorageTooSmall => {
            format!("Cannot allocate memory for bitmap '{name}'")
        }
        BitmapError::OutOfRange => format!("Bitmap '{name}': range out of bounds"),
    })
}

/// QEMU's `block_dirty_bitmap_lookup`.
fn lookup_bitmap(d: &Daemon, node: &str, name: &str) -> Result<(Arc<Node>, String), QmpError> {
    let Some(n) = d.graph.get(node) else {
        return Err(QmpError::generic(format!("Node '{node}' not found")));
    };
    if !n.has_bitmap(name) {
        return Err(QmpError::generic(format!(
            "Dirty bitmap '{name}' not found"
        )));
    }
    Ok((n, name.to_owned()))
}

fn bitmap_add(d: &Daemon, a: &Value, undo: &mut Vec<Undo>) -> Result<(), QmpError> {
    let node = str_of(a, "node");
    let name = str_of(a, "name");
    if name.is_empty() {
        return Err(QmpError::generic("Bitmap name cannot be empty"));
    }
    let Some(n) = d.graph.get(node) else {
        return Err(QmpError::generic(format!(
            "Cannot find device='{node}' nor node-name='{node}'"
        )));
    };
    let granularity = match a["granularity"].as_u64() {
        Some(g) if g < 512 || !g.is_power_of_two() => {
            return Err(QmpError::generic(
                "Granularity must be power of 2 and at least 512",
            ));
        }
        g => g.map(|g| g as u32),
    };
    if a["persistent"].as_bool() == Some(true) {
        // Checked with the granularity the bitmap gets (QEMU checks the
        // store before it creates the bitmap, with the same default).
        let g = granularity.unwrap_or(blockwire_core::block::dirty_bitmap::DEFAULT_GRANULARITY);
        n.check_persistent(name, g).map_err(QmpError::generic)?;
    }
    n.add_bitmap(name, granularity, a["disabled"].as_bool().unwrap_or(false))
        .map_err(|e| bitmap_error(e, name))?;
    if a["persistent"].as_bool() == Some(true) {
        n.set_persistent(name);
    }
    undo.push(Undo::Remove {
        node: n,
        name: name.to_owned(),
    });
    Ok(())
}

/// `block-dirty-bitmap-merge`: every source is checked before the target
/// changes, so a bad source leaves it as it was (QEMU merges into a
/// scratch copy for the same reason).
fn bitmap_merge(d: &Daemon, a: &Value, undo: &mut Vec<Undo>) -> Result<(), QmpError> {
    let (target_node, target) = lookup_bitmap(d, str_of(a, "node"), str_of(a, "target"))?;
    if exported(d, &target_node, &target) {
        return Err(busy(&target));
    }
    let mut ranges = Vec::new();
    for src in a["bitmaps"].as_array().into_iter().flatten() {
        let (node, name) = match src {
            Value::String(s) => {
                if !target_node.has_bitmap(s) {
                    return Err(QmpError::generic(format!("Dirty bitmap '{s}' not found")));
                }
                (target_node.clone(), s.clone())
            }
            o => lookup_bitmap(d, str_of(o, "node"), str_of(o, "name"))?,
        };
        // A source may be disabled, not busy (QEMU's BDRV_BITMAP_ALLOW_RO).
        if exported(d, &node, &name) {
            return Err(busy(&name));
        }
        node.with_bitmaps(|set| {
            if let Some(b) = set.get(&name) {
                b.for_each_dirty(0, b.size(), &mut |off, len| ranges.push((off, len)));
            }
        });
    }
    let size = target_node.size();
    undo.push(Undo::Bits {
        ranges: dirty_ranges(&target_node, &target),
        node: target_node.clone(),
        name: target.clone(),
    });
    target_node
        .with_bitmaps(|set| {
            let Some(t) = set.get_mut(&target) else {
                return Err(BitmapError::NotFound);
            };
            for (off, len) in ranges {
                // Sources of another node may be longer: past the end is
                // nothing to mark.
                let end = (off + len).min(size);
                if off < end {
                    t.set_dirty(off, end - off)?;
                }
            }
            Ok(())
        })
        .map_err(|e| bitmap_error(e, &target))?;
    Ok(())
}

/// `block_resize`, by node name (a `device` is a BlockBackend name, and
/// qemu-storage-daemon has none).
async fn block_resize(d: &Daemon, a: &Value) -> Reply {
    let device = a["device"].as_str();
    let node_name = a["node-name"].as_str();
    let node = node_name.and_then(|n| d.graph.get(n));
    let Some(node) = node.filter(|_| device.is_none() || node_name.is_some()) else {
        return Err(QmpError::generic(format!(
            "Cannot find device='{}' nor node-name='{}'",
            device.unwrap_or(""),
            node_name.unwrap_or("")
        )));
    };
    let size = a["size"].as_i64().unwrap_or(-1);
    if size < 0 {
        return Err(QmpError::generic("Parameter 'size' expects a >0 size"));
    }
    if node.read_only() {
        return Err(QmpError::generic("Block node is read-only"));
    }
    node.run(move |n| async move { n.resize(size as u64).wait().await })
        .await
        .map_err(|e| QmpError::generic(e.to_string()))?;
    Ok(json!({}))
}

/// Keeps the checked options `name` was added with.
pub fn remember(d: &Daemon, name: &str, checked: Value) {
    lock(&d.options).insert(name.to_owned(), checked);
}

/// The options `blockdev-reopen` changes on a node that is open: its
/// generic state. Every other option must stay as the node was added.
const REOPENABLE: &[&str] = &["node-name", "read-only", "detect-zeroes", "discard"];

/// Whether a writable export reaches `node` through children that are
/// written (every role but `backing`).
fn written_by_export(d: &Daemon, node: &Arc<Node>) -> bool {
    fn reaches(from: &Arc<Node>, to: &Arc<Node>) -> bool {
        Arc::ptr_eq(from, to)
            || from
                .children()
                .iter()
                .any(|c| c.role != "backing" && reaches(&c.node, to))
    }
    d.registry
        .snapshot()
        .iter()
        .any(|e| e.writable && reaches(&e.node, node))
}

/// `blockdev-reopen`: all the nodes or none. QEMU 7.2 can also swap a
/// node's children and some drivers' options (raw's offset, a throttle
/// node's group); here those are refused by name ("Cannot change the
/// option"), and `read-only`, `detect-zeroes` and `discard` change.
fn blockdev_reopen(d: &Daemon, a: &Value) -> Reply {
    let mut plan = Vec::new();
    for o in a["options"].as_array().into_iter().flatten() {
        let Some(name) = o["node-name"].as_str() else {
            return Err(QmpError::generic("node-name not specified"));
        };
        let Some(node) = d.graph.get(name) else {
            return Err(QmpError::generic(format!(
                "Failed to find node with node-name='{name}'"
            )));
        };
        let Some(old) = lock(&d.options).get(name).cloned() else {
            return Err(QmpError::generic(format!(
                "Node '{name}' was created inline: blockwire reopens nodes added by blockdev-add or --blockdev"
            )));
        };
        let (Some(was), Some(now)) = (old.as_object(), o.as_object()) else {
            return Err(QmpError::generic("internal error: options are not objects"));
        };
        let fixed = |k: &String| !REOPENABLE.contains(&k.as_str());
        // Options dropped first, then options changed or added, as QEMU
        // reports them for a reopen that changes the driver.
        if let Some(k) = was.keys().find(|k| fixed(k) && !now.contains_key(*k)) {
            return Err(QmpError::generic(format!(
                "Option '{k}' cannot be reset to its default value"
            )));
        }
        if let Some(k) = now
            .iter()
            .find(|(k, v)| fixed(k) && was.get(*k) != Some(*v))
            .map(|(k, _)| k)
        {
            return Err(QmpError::generic(format!("Cannot change the option '{k}'")));
        }
        let typed = block_core::convert(o, false)?;
        if typed.read_only && !node.read_only() && written_by_export(d, &node) {
            return Err(QmpError::generic(format!(
                "Read-only block node '{name}' cannot support read-write users"
            )));
        }
        let opts = NodeOptions {
            read_only: typed.read_only,
            discard: typed.discard,
            detect_zeroes: typed.detect_zeroes,
            cache: node.options().cache,
        };
        plan.push((node, opts, o.clone()));
    }
    // Children before parents (the graph's creation order): a parent
    // that becomes writable checks that its child already is.
    let order: Vec<String> = d
        .graph
        .nodes()
        .iter()
        .map(|n| n.name().to_owned())
        .collect();
    plan.sort_by_key(|(n, _, _)| order.iter().position(|o| o == n.name()));
    let mut done: Vec<(Arc<Node>, NodeOptions)> = Vec::new();
    for (node, opts, _) in &plan {
        let before = node.options();
        if let Err(e) = node.reopen(opts) {
            // Back to where the nodes were.
            for (n, o) in done.iter().rev() {
                let _ = n.reopen(o);
            }
            return Err(QmpError::generic(e.to_string()));
        }
        done.push((node.clone(), before));
    }
    let mut saved = lock(&d.options);
    for (node, _, o) in plan {
        saved.insert(node.name().to_owned(), o);
    }
    Ok(json!({}))
}

fn bitmap_args(cmd: &str) -> &'static Struct {
    match cmd {
        "block-dirty-bitmap-add" => &schema::BLOCK_DIRTY_BITMAP_ADD,
        "block-dirty-bitmap-merge" => &schema::BLOCK_DIRTY_BITMAP_MERGE,
        _ => &schema::BLOCK_DIRTY_BITMAP,
    }
}

/// The dirty ranges of bitmap `name` of `node`.
fn dirty_ranges(node: &Node, name: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    node.with_bitmaps(|set| {
        if let Some(b) = set.get(name) {
            b.for_each_dirty(0, b.size(), &mut |off, len| out.push((off, len)));
        }
    });
    out
}

/// How to take back one bitmap change of a transaction that fails later.
pub enum Undo {
    /// An added bitmap.
    Remove { node: Arc<Node>, name: String },
    /// A removed bitmap, as it was.
    Readd {
        node: Arc<Node>,
        name: String,
        granularity: u32,
        recording: bool,
        persistent: bool,
        ranges: Vec<(u64, u64)>,
    },
    /// A cleared or merged-into bitmap's previous bits.
    Bits {
        node: Arc<Node>,
        name: String,
        ranges: Vec<(u64, u64)>,
    },
    /// An enabled or disabled bitmap's previous state.
    Recording {
        node: Arc<Node>,
        name: String,
        recording: bool,
    },
}

fn set_bits(set: &mut BitmapSet<Vec<u64>, MAX_BITMAPS>, name: &str, ranges: &[(u64, u64)]) {
    if let Some(b) = set.get_mut(name) {
        let size = b.size();
        let _ = b.reset(0, size);
        for &(off, len) in ranges {
            let _ = b.set_dirty(off, len);
        }
    }
}

impl Undo {
    fn apply(self) {
        match self {
            Undo::Remove { node, name } => {
                let _ = node.with_bitmaps(|s| s.remove(&name).map(drop));
            }
            Undo::Readd {
                node,
                name,
                granularity,
                recording,
                persistent,
                ranges,
            } => {
                if node
                    .add_bitmap(&name, Some(granularity), !recording)
                    .is_ok()
                {
                    if persistent {
                        node.set_persistent(&name);
                    }
                    node.with_bitmaps(|s| set_bits(s, &name, &ranges));
                }
            }
            Undo::Bits { node, name, ranges } => node.with_bitmaps(|s| set_bits(s, &name, &ranges)),
            Undo::Recording {
                node,
                name,
                recording,
            } => {
                let _ = node.with_bitmaps(|s| {
                    if recording {
                        s.enable(&name)
                    } else {
                        s.disable(&name)
                    }
                });
            }
        }
    }
}

/// One bitmap command on checked arguments; what it changed goes on
/// `undo`.
fn bitmap_op(d: &Daemon, cmd: &str, a: &Value, undo: &mut Vec<Undo>) -> Result<(), QmpError> {
    match cmd {
        "block-dirty-bitmap-add" => return bitmap_add(d, a, undo),
        "block-dirty-bitmap-merge" => return bitmap_merge(d, a, undo),
        _ => {}
    }
    let (node, name) = lookup_bitmap(d, str_of(a, "node"), str_of(a, "name"))?;
    // QEMU marks a bitmap an NBD export offers busy, so that it does not
    // change under a backup reading it.
    if exported(d, &node, &name) {
        return Err(busy(&name));
    }
    let info = node.bitmaps().into_iter().find(|b| b.name == name);
    let (granularity, recording) = info.map_or((0, false), |i| (i.granularity, i.recording));
    let before = match cmd {
        "block-dirty-bitmap-remove" => Undo::Readd {
            node: node.clone(),
            name: name.clone(),
            granularity,
            recording,
            persistent: node.is_persistent(&name),
            ranges: dirty_ranges(&node, &name),
        },
        "block-dirty-bitmap-clear" => Undo::Bits {
            node: node.clone(),
            name: name.clone(),
            ranges: dirty_ranges(&node, &name),
        },
        _ => Undo::Recording {
            node: node.clone(),
            name: name.clone(),
            recording,
        },
    };
    let stored = cmd == "block-dirty-bitmap-remove" && node.is_persistent(&name);
    node.with_bitmaps(|set| match cmd {
        "block-dirty-bitmap-remove" => set.remove(&name).map(drop),
        // QEMU clears disabled bitmaps too (the core's clear is for
        // active ones only), so by range here.
        "block-dirty-bitmap-clear" => match set.get_mut(&name) {
            Some(b) => {
                let size = b.size();
                b.reset(0, size)
            }
            None => Err(BitmapError::NotFound),
        },
        "block-dirty-bitmap-enable" => set.enable(&name),
        _ => set.disable(&name),
    })
    .map_err(|e| bitmap_error(e, &name))?;
    if stored {
        // Out of the image now, as QEMU's
        // bdrv_remove_persistent_dirty_bitmap; should that fail, the
        // store at close leaves it out all the same.
        node.remove_stored_bitmap(&name);
    }
    undo.push(before);
    Ok(())
}

/// `transaction` of bitmap actions (and `abort`): each is carried out in
/// order; if one fails, those before it are taken back and the error is
/// the failing action's, so the bitmaps change all together or not at
/// all (how backup tools rotate them). `completion-mode: grouped` is for
/// block jobs: bitmap actions refuse it, as in QEMU.
fn transaction(d: &Daemon, a: &Value) -> Result<(), QmpError> {
    let mode = a["properties"]["completion-mode"]
        .as_str()
        .unwrap_or("individual");
    let mut undo = Vec::new();
    for action in a["actions"].as_array().into_iter().flatten() {
        let ty = str_of(action, "type");
        let r = if ty == "abort" {
            Err(QmpError::generic("Transaction aborted using Abort action"))
        } else if mode != "individual" {
            Err(QmpError::generic(format!(
                "Action '{ty}' does not support Transaction property completion-mode = {mode}"
            )))
        } else {
            bitmap_op(d, ty, &action["data"], &mut undo)
        };
        if let Err(e) = r {
            for u in undo.into_iter().rev() {
                u.apply();
            }
            return Err(e);
        }
    }
    Ok(())
}
