//! One file per driver. [`open`] builds the driver a `BlockdevOptions`
//! names, opening or looking up its children through the graph.

pub mod blkdebug;
pub mod cow;
pub mod file;
pub mod nbd;
pub mod null;
pub mod qcow2;
pub mod ram;
pub mod raw;
pub mod rbd;
pub mod throttle;

use std::sync::Arc;

use super::graph::{ChildResolver, GraphError};
use super::node::Driver;
use super::options::{BlockdevOptions, DriverOptions};

/// Builds the driver of `opts`. The node's generic options (`read-only`,
/// `discard`, `detect-zeroes`) are the graph's business; `cache` and the
/// driver's own options are the driver's.
pub async fn open(
    opts: BlockdevOptions,
    children: &mut ChildResolver<'_>,
) -> Result<Box<dyn Driver>, GraphError> {
    let read_only = opts.read_only;
    Ok(match opts.driver {
        DriverOptions::File {
            host_device,
            filename,
            aio,
            locking,
        } => {
            let how = file::FileOpen {
                read_only,
                host_device,
                aio,
                locking,
                direct: opts.cache.direct,
                no_flush: opts.cache.no_flush,
                force_share: opts.force_share,
            };
            match file::FileDriver::open(&filename, how) {
                // `auto-read-only`: a file that cannot be opened for
                // writing is opened read-only instead, as QEMU's
                // file-posix does on EACCES / EROFS.
                Err(e)
                    if opts.auto_read_only
                        && !read_only
                        && matches!(
                            e.kind(),
                            std::io::ErrorKind::PermissionDenied
                                | std::io::ErrorKind::ReadOnlyFilesystem
                        ) =>
                {
                    Box::new(file::FileDriver::open(
                        &filename,
                        file::FileOpen {
                            read_only: true,
                            ..how
                        },
                    )?)
                }
                r => Box::new(r?),
            }
        }
        DriverOptions::NullCo {
            size,
            latency_ns,
            read_zeroes,
        } => Box::new(null::NullCo::new(size, latency_ns, read_zeroes)),
        DriverOptions::Ram { size } => Box::new(ram::Ram::new(size)?),
        DriverOptions::Nbd {
            server,
            export,
            tls_creds,
            tls_hostname,
            reconnect_delay,
            open_timeout,
        } => {
            let tls_creds = match tls_creds {
                Some(id) => Some(children.tls_creds(&id, super::tls_creds::TlsEndpoint::Client)?),
                None => None,
            };
            Box::new(
                nbd::Nbd::open(nbd::NbdOpen {
                    server,
                    export,
                    tls_creds,
                    tls_hostname,
                    reconnect_delay,
                    open_timeout,
                })
                .await?,
            )
        }
        DriverOptions::Raw {
            file,
            offset,
            size,
            probed,
        } => {
            let file = children.open("file", file, true).await?;
            Box::new(raw::Raw::new(file, offset, size)?.probed(probed))
        }
        DriverOptions::Throttle {
            file,
            throttle_group,
        } => {
            let group = children.throttle_group(&throttle_group)?;
            let file = children.open("file", file, true).await?;
            Box::new(throttle::Throttle::new(file, group))
        }
        DriverOptions::Blkdebug {
            image,
            align,
            max_transfer,
            inject_error,
            set_state,
        } => {
            let image = children.open("image", image, true).await?;
            Box::new(blkdebug::Blkdebug::new(
                image,
                align,
                max_transfer,
                &inject_error,
                &set_state,
            )?)
        }
        DriverOptions::Cow {
            backing,
            file,
            cluster_size,
        } => {
            let backing = children.open("backing", backing, false).await?;
            let top = match file {
                Some(f) => children.open("file", f, true).await?,
                None => {
                    // The top in memory, as an unnamed child of its own.
                    let ram = super::options::BlockdevOptions::new(DriverOptions::Ram {
                        size: backing.size(),
                    });
                    children.open("file", ram.into(), true).await?
                }
            };
            Box::new(cow::Cow::new(top, backing, cluster_size)?)
        }
        DriverOptions::Qcow2 {
            file,
            backing,
            cache_size,
            l2_cache_size,
            refcount_cache_size,
            pass_discard_request,
        } => {
            let file = children.open("file", file, true).await?;
            let how = qcow2::Qcow2Open {
                read_only: read_only || file.read_only(),
                cache: qcow2::CacheSizes {
                    total: cache_size,
                    l2: l2_cache_size,
                    refcount: refcount_cache_size,
                },
                // QEMU's default: what the node's `discard` option says.
                pass_discard: pass_discard_request
                    .unwrap_or(opts.discard == blockwire_core::block::zero_policy::Discard::Unmap),
            };
            let image = qcow2::open_image(&file, how).await?;
            let backing = match backing {
                Some(Some(r)) => Some(children.open("backing", r, false).await?),
                Some(None) => None,
                None => match image.backing_name() {
                    None => None,
                    Some(name) => {
                        let o = qcow2::backing_options(&file, &name, &image.backing_format())?;
                        Some(children.open("backing", o.into(), false).await?)
                    }
                },
            };
            Box::new(qcow2::Qcow2Driver::new(file, image, backing))
        }
        DriverOptions::Rbd(o) => {
            let key = match &o.key_secret {
                Some(id) => Some(
                    children
                        .graph()
                        .secret(id)
                        .ok_or_else(|| GraphError::Generic(format!("No secret with id '{id}'")))?,
                ),
                None => None,
            };
            Box::new(
                rbd::Rbd::open(rbd::RbdOpen {
                    opts: o,
                    key,
                    read_only,
                    auto_read_only: opts.auto_read_only,
                    cache: opts.cache,
                })
                .await?,
            )
        }
    })
}

/// A node built from options, for tests and for code that needs one.
pub async fn open_node(
    graph: &super::graph::Graph,
    opts: BlockdevOptions,
) -> Result<Arc<super::node::Node>, GraphError> {
    graph.add(opts).await
}
