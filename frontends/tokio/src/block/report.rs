//! The graph as QMP reports it: `query-named-block-nodes`
//! (`BlockDeviceInfo`) and `query-blockstats` (`BlockStats`), shaped as
//! QEMU 7.2 shapes them, so the QMP monitor serves them as they are and
//! `serve` can log them now.

use std::sync::Arc;

use blockwire_core::block::stats::BlockDeviceStats;
use blockwire_core::block::zero_policy::DetectZeroes;
use serde_json::{Value, json};

use super::graph::Graph;
use super::node::Node;

fn detect_zeroes(d: DetectZeroes) -> &'static str {
    match d {
        DetectZeroes::Off => "off",
        DetectZeroes::On => "on",
        DetectZeroes::Unmap => "unmap",
    }
}

/// The backing node of `node`, if its driver has one.
fn backing(node: &Node) -> Option<Arc<Node>> {
    node.children()
        .into_iter()
        .find(|c| c.role == "backing")
        .map(|c| c.node)
}

/// `ImageInfo` of a node and (as `backing-image`) its backing chain.
fn image_info(node: &Node, depth: usize) -> Value {
    let mut info = json!({
        "filename": node.filename(),
        "format": node.driver_name(),
        "virtual-size": node.size(),
        "dirty-flag": false,
    });
    // A backing chain cannot loop (children exist before parents), but
    // a depth limit keeps a bug from becoming a stack overflow.
    if let Some(b) = backing(node).filter(|_| depth < 64) {
        info["backing-filename"] = json!(b.filename());
        info["full-backing-filename"] = json!(b.filename());
        info["backing-image"] = image_info(&b, depth + 1);
    }
    info
}

/// `BlockDeviceInfo` of one node, as `query-named-block-nodes` lists it.
pub fn block_device_info(node: &Node) -> Value {
    let mut depth = 0;
    let mut b = backing(node);
    while let Some(n) = b {
        depth += 1;
        b = backing(&n);
        if depth > 64 {
            break;
        }
    }
    let opts = node.options();
    let mut v = json!({
        "file": node.filename(),
        "node-name": node.name(),
        "ro": node.read_only(),
        "drv": node.driver_name(),
        "encrypted": false,
        "detect_zeroes": detect_zeroes(opts.detect_zeroes),
        "bps": 0, "bps_rd": 0, "bps_wr": 0,
        "iops": 0, "iops_rd": 0, "iops_wr": 0,
        // An `int` in the schema: a threshold set as uint64 above
        // INT64_MAX reads back negative, as in QEMU.
        "write_threshold": node.write_threshold() as i64,
        "backing_file_depth": depth,
        "cache": {
            "writeback": true,
            "direct": opts.cache.direct,
            "no-flush": opts.cache.no_flush,
        },
        "image": image_info(node, 0),
    });
    if let Some(b) = backing(node) {
        v["backing_file"] = json!(b.filename());
    }
    let bitmaps = node.bitmaps();
    if !bitmaps.is_empty() {
        v["dirty-bitmaps"] = Value::Array(
            bitmaps
                .iter()
                .map(|b| {
                    json!({
                        "name": b.name,
                        "count": b.count,
                        "granularity": b.granularity,
                        "recording": b.recording,
                        "busy": b.busy,
                        "persistent": b.persistent,
                    })
                })
                .collect(),
        );
    }
    v
}

/// `query-named-block-nodes`; with `flat` false each node's image also
/// carries its backing chain (`backing-image`), as QEMU does.
pub fn named_block_nodes(graph: &Graph, flat: bool) -> Value {
    Value::Array(
        graph
            .nodes()
            .iter()
            .map(|n| {
                let mut v = block_device_info(n);
                if flat {
                    if let Some(img) = v.get_mut("image").and_then(Value::as_object_mut) {
                        img.remove("backing-image");
                    }
                }
                v
            })
            .collect(),
    )
}

/// `BlockDeviceStats` as QMP spells it.
pub fn stats_json(s: &BlockDeviceStats) -> Value {
    let mut v = json!({
        "rd_bytes": s.rd_bytes,
        "wr_bytes": s.wr_bytes,
        "unmap_bytes": s.unmap_bytes,
        "rd_operations": s.rd_operations,
        "wr_operations": s.wr_operations,
        "flush_operations": s.flush_operations,
        "unmap_operations": s.unmap_operations,
        "rd_total_time_ns": s.rd_total_time_ns,
        "wr_total_time_ns": s.wr_total_time_ns,
        "flush_total_time_ns": s.flush_total_time_ns,
        "unmap_total_time_ns": s.unmap_total_time_ns,
        "wr_highest_offset": s.wr_highest_offset,
        "rd_merged": s.rd_merged,
        "wr_merged": s.wr_merged,
        "unmap_merged": s.unmap_merged,
        "failed_rd_operations": s.failed_rd_operations,
        "failed_wr_operations": s.failed_wr_operations,
        "failed_flush_operations": s.failed_flush_operations,
        "failed_unmap_operations": s.failed_unmap_operations,
        "invalid_rd_operations": s.invalid_rd_operations,
        "invalid_wr_operations": s.invalid_wr_operations,
        "invalid_flush_operations": s.invalid_flush_operations,
        "invalid_unmap_operations": s.invalid_unmap_operations,
        "account_invalid": s.account_invalid,
        "account_failed": s.account_failed,
        "timed_stats": [],
    });
    if let Some(idle) = s.idle_time_ns {
        v["idle_time_ns"] = json!(idle);
    }
    v
}

fn node_stats(node: &Node, now_ns: u64, depth: usize) -> Value {
    let mut s = node.acct().stats(now_ns);
    s.wr_highest_offset = s.wr_highest_offset.max(node.wr_highest_offset());
    let mut v = json!({
        "node-name": node.name(),
        "stats": stats_json(&s),
    });
    if depth < 64 {
        for c in node.children() {
            match c.role {
                "backing" => v["backing"] = node_stats(&c.node, now_ns, depth + 1),
                _ if v.get("parent").is_none() => {
                    v["parent"] = node_stats(&c.node, now_ns, depth + 1)
                }
                _ => {}
            }
        }
    }
    v
}

/// `query-blockstats` with `query-nodes: true`: every named node.
pub fn blockstats(graph: &Graph, now_ns: u64) -> Value {
    Value::Array(
        graph
            .nodes()
            .iter()
            .map(|n| node_stats(n, now_ns, 0))
            .collect(),
    )
}

/// A node and the chain of data children below it, as one line for a log
/// (`name (driver) -> name (driver)`); backing nodes are left out.
pub fn chain(node: &Arc<Node>) -> String {
    let mut chain = Vec::new();
    let mut n = Some(node.clone());
    while let Some(node) = n {
        chain.push(format!("{} ({})", node.name(), node.driver_name()));
        n = node
            .children()
            .into_iter()
            .find(|c| c.role != "backing")
            .map(|c| c.node);
    }
    chain.join(" -> ")
}

/// On `SIGUSR1`, logs the graph as `query-named-block-nodes` and
/// `query-blockstats` would answer.
pub fn log_on_sigusr1(graph: Arc<Graph>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = signal(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            let nodes = named_block_nodes(&graph, true);
            let stats = blockstats(&graph, super::node::now_ns());
            tracing::info!("query-named-block-nodes: {nodes}");
            tracing::info!("query-blockstats: {stats}");
        }
    });
    Ok(())
}
