//! The qemu-nbd-style command line as a block graph: each short-form
//! export (`--file`, `--memory`, `--null`, `--export`, with `--cow`,
//! `--offset`, `--throttle`, `--blkdebug`, `--dirty-bitmap`...) spelled
//! as the `--blockdev` nodes it stands for.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use blockwire_core::block::zero_policy::Discard;
use tracing::info;

use super::Error;
use crate::block::Graph;
use crate::block::drivers::file::FileDriver;
use crate::block::options::{Aio, BlockdevOptions, BlockdevRef, DriverOptions, OnOffAuto};
use crate::cli::{ExportSpec, ImageFormat, ServeArgs, SourceSpec};
use crate::registry::ExportConfig;

/// The default disk when nothing else is asked for.
const DEFAULT_MEMORY: u64 = 1 << 30;

/// What one export is made of, whichever option described it.
pub(super) struct Plan {
    pub(super) name: String,
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

pub(super) fn plans(args: &ServeArgs) -> Vec<Plan> {
    let main_source = match (&args.file, args.memory, args.null) {
        (Some(f), _, _) => Some(SourceSpec::File(f.clone())),
        (None, Some(m), _) => Some(SourceSpec::Memory(m)),
        (None, None, Some(n)) => Some(SourceSpec::Null(n)),
        // --export or --blockdev alone replace the default disk.
        (None, None, None) if !args.exports.is_empty() || !args.blockdevs.is_empty() => None,
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
    for e in args.export_specs() {
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

/// Every node of the short form passes trims down (`discard=unmap`), as
/// blockwire always did, where `--blockdev` JSON defaults to QEMU's
/// `ignore`.
fn unmap(mut o: BlockdevOptions) -> BlockdevOptions {
    o.discard = Discard::Unmap;
    o
}

fn by_name(name: &str) -> BlockdevRef {
    BlockdevRef::Name(name.to_owned())
}

/// Builds the graph one short-form export stands for, as the sequence of
/// `--blockdev` nodes that would spell it (each referring to the one
/// before by name): the protocol node `file{i}` / `ram{i}` / `null{i}`,
/// `raw{i}` over files (qemu-nbd's raw format), then `top{i}` and `cow{i}`
/// for copy-on-write, `blkdebug{i}`, `throttle{i}` over throttle group
/// `tg{i}`. Returns the export on the outermost node.
pub(super) async fn sugar(
    i: usize,
    p: Plan,
    args: &ServeArgs,
    graph: &Arc<Graph>,
) -> Result<ExportConfig, Error> {
    let ctx = |e: &dyn std::fmt::Display| format!("export {:?}: {e}", p.name);
    let add = |o: BlockdevOptions| async move { graph.add(unmap(o)).await };
    // A copy-on-write base is never written.
    let base_ro = p.read_only || p.cow.is_some();
    let protocol = match &p.source {
        // qemu-nbd's `rbd:pool/image[@snap][:key=value...]`.
        SourceSpec::File(path) if is_rbd(path) => {
            let name = path.to_string_lossy();
            let o = crate::block::drivers::rbd::parse_filename(&name).map_err(|e| ctx(&e))?;
            BlockdevOptions::new(DriverOptions::Rbd(o)).named(format!("rbd{i}"))
        }
        SourceSpec::File(path) => BlockdevOptions::new(DriverOptions::File {
            host_device: is_block_device(path),
            filename: path.clone(),
            aio: Aio::Threads,
            locking: OnOffAuto::Off,
        })
        .named(format!("file{i}")),
        SourceSpec::Memory(n) => {
            BlockdevOptions::new(DriverOptions::Ram { size: *n }).named(format!("ram{i}"))
        }
        SourceSpec::Null(n) => BlockdevOptions::new(DriverOptions::NullCo {
            size: *n,
            latency_ns: args.latency_ns.unwrap_or(0),
            read_zeroes: true,
        })
        .named(format!("null{i}")),
    };
    let mut node = add(protocol.read_only(base_ro))
        .await
        .map_err(|e| ctx(&e))?;
    // The base file and its format, when a qcow2 overlay can name it.
    let mut base_file: Option<(&Path, &str)> = None;
    if let SourceSpec::File(path) = &p.source {
        let (format, how) = match args.format {
            Some(f) => (f, "given"),
            None => {
                let q = crate::block::drivers::qcow2::probe(&node)
                    .await
                    .map_err(|e| ctx(&e))?;
                (
                    if q {
                        ImageFormat::Qcow2
                    } else {
                        ImageFormat::Raw
                    },
                    "probed",
                )
            }
        };
        let name = match format {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        };
        info!(
            "export {:?}: {}: format {name} ({how})",
            p.name,
            path.display()
        );
        if p.window.is_none() {
            base_file = Some((path, name));
        }
        if format == ImageFormat::Qcow2 {
            let q = BlockdevOptions::new(DriverOptions::Qcow2 {
                file: by_name(node.name()),
                backing: None,
                cache_size: None,
                l2_cache_size: None,
                refcount_cache_size: None,
                pass_discard_request: None,
            });
            node = add(q.named(format!("qcow2{i}")).read_only(base_ro))
                .await
                .map_err(|e| ctx(&e))?;
        }
        // A window is a raw node over the format node, as qemu-nbd's
        // --offset is.
        if format == ImageFormat::Raw || p.window.is_some() {
            let (offset, size) = p.window.unwrap_or((0, None));
            let raw = BlockdevOptions::new(DriverOptions::Raw {
                file: by_name(node.name()),
                offset,
                size,
                probed: format == ImageFormat::Raw && how == "probed",
            });
            node = add(raw.named(format!("raw{i}")).read_only(base_ro))
                .await
                .map_err(|e| ctx(&e))?;
        }
    }
    if let (Some(Some(path)), Some((base, base_format))) = (&p.cow, base_file) {
        // A file overlay of a file is a qcow2 image with the base as its
        // backing file, so QEMU can open it and it survives a restart.
        let size = node.size();
        let how = crate::block::drivers::qcow2::prepare_overlay(path, base, base_format, size)
            .map_err(|e| ctx(&e))?;
        info!(
            "export {:?}: copy-on-write overlay {} ({})",
            p.name,
            path.display(),
            match how {
                crate::block::drivers::qcow2::Overlay::Created => "new qcow2 image",
                crate::block::drivers::qcow2::Overlay::Reopened =>
                    "existing qcow2 overlay of this base",
            }
        );
        let top = BlockdevOptions::new(DriverOptions::File {
            host_device: false,
            filename: path.clone(),
            aio: Aio::Threads,
            locking: OnOffAuto::Off,
        });
        let top = add(top.named(format!("top{i}")).read_only(p.read_only))
            .await
            .map_err(|e| ctx(&e))?;
        let cow = BlockdevOptions::new(DriverOptions::Qcow2 {
            file: by_name(top.name()),
            backing: Some(Some(by_name(node.name()))),
            cache_size: None,
            l2_cache_size: None,
            refcount_cache_size: None,
            pass_discard_request: None,
        });
        node = add(cow.named(format!("cow{i}")).read_only(p.read_only))
            .await
            .map_err(|e| ctx(&e))?;
    } else if let Some(top) = &p.cow {
        let size = node.size();
        let top_driver = match top {
            None => DriverOptions::Ram { size },
            Some(path) => {
                FileDriver::create_scratch(path, size).map_err(|e| ctx(&e))?;
                DriverOptions::File {
                    host_device: false,
                    filename: path.clone(),
                    aio: Aio::Threads,
                    locking: OnOffAuto::Off,
                }
            }
        };
        let top = add(BlockdevOptions::new(top_driver).named(format!("top{i}")))
            .await
            .map_err(|e| ctx(&e))?;
        let cow = BlockdevOptions::new(DriverOptions::Cow {
            backing: by_name(node.name()),
            file: Some(by_name(top.name())),
            cluster_size: crate::block::drivers::cow::DEFAULT_CLUSTER,
        });
        node = add(cow.named(format!("cow{i}")).read_only(p.read_only))
            .await
            .map_err(|e| ctx(&e))?;
    }
    if let Some(rules) = &p.blkdebug {
        let (inject_error, set_state) =
            crate::block::drivers::blkdebug::parse_rules(rules).map_err(|e| ctx(&e))?;
        let d = BlockdevOptions::new(DriverOptions::Blkdebug {
            image: by_name(node.name()),
            align: 1,
            max_transfer: 0,
            inject_error,
            set_state,
        });
        node = add(d.named(format!("blkdebug{i}")).read_only(p.read_only))
            .await
            .map_err(|e| ctx(&e))?;
    }
    if let Some(limits) = p.throttle.filter(|l| l.is_enabled()) {
        let id = format!("tg{i}");
        graph.add_throttle_group(&id, limits).map_err(|e| ctx(&e))?;
        let t = BlockdevOptions::new(DriverOptions::Throttle {
            file: by_name(node.name()),
            throttle_group: id,
        });
        node = add(t.named(format!("throttle{i}")).read_only(p.read_only))
            .await
            .map_err(|e| ctx(&e))?;
    }
    for b in &p.bitmaps {
        // A bitmap the image stores (qcow2) is exported as it is.
        if node.find_below(&|n| n.has_inconsistent_bitmap(b)).is_some() {
            return Err(ctx(&format!(
                "Bitmap '{b}' is inconsistent and cannot be used (stored in the image, in use by a writer that did not close it; remove it with qemu-img bitmap --remove)"
            ))
            .into());
        }
        if node.find_below(&|n| n.has_bitmap(b)).is_some() {
            info!("export {:?}: dirty bitmap {b:?} from the image", p.name);
            continue;
        }
        node.add_bitmap(b, None, false)
            .map_err(|e| ctx(&format!("dirty bitmap {b:?}: {e}")))?;
    }
    Ok(ExportConfig {
        id: p.name.clone(),
        node_name: node.name().to_owned(),
        name: p.name,
        description: p.description,
        writable: !p.read_only,
        bitmaps: p.bitmaps,
        allocation_depth: p.allocation_depth,
        multi_conn: args.multi_conn(),
    })
}

/// A file name that names an RBD image, as qemu-nbd reads it (a local
/// file of that name is `./rbd:...`).
fn is_rbd(p: &Path) -> bool {
    p.to_str().is_some_and(|s| s.starts_with("rbd:"))
}

fn is_block_device(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}
