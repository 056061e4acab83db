//! The block layer: a graph of named nodes, as QEMU's block-core schema
//! describes it.
//!
//! * [`graph::Graph`] holds the nodes by name and enforces QEMU's rules
//!   (well-formed unique names, no removal while in use, permissions when
//!   a parent is attached).
//! * [`node::Node`] is one driver plus what every node has: read-only
//!   state, `discard` and `detect-zeroes` policies, dirty bitmaps, write
//!   threshold, statistics.
//! * [`drivers`]: one file per driver (`file`, `host_device`, `null-co`,
//!   `blockwire-ram`, `nbd`, `raw`, `throttle`, `blkdebug`,
//!   `blockwire-cow`), each knowing only its children.
//! * [`export::Export`] is a node shown to NBD clients (QEMU's block
//!   export of type `nbd`).
//! * [`options`] is `BlockdevOptions` as typed values, [`export_options`]
//!   the NBD export's; [`qapi`] parses the schema's JSON (and QEMU's
//!   key=value form) into them, strictly, with QEMU's error messages.
//!
//! # How a request runs
//!
//! Node I/O returns an [`io::Io`]: ready now, or a future. A node reports
//! whether anything below it *blocks* (a file on a disk: system calls
//! that sleep) and whether anything *waits* (the network, a throttle, a
//! lock). The caller picks the cheapest place that is correct:
//!
//! * neither: in the caller's task, with no allocation and no hand-off
//!   (a RAM disk, a file on tmpfs);
//! * blocks, never waits: one hand-off to the blocking pool (a file);
//! * waits, never blocks: a task on the runtime (an NBD upstream, a
//!   throttled RAM disk);
//! * both: the blocking pool, waiting there (a throttled file).

pub mod driver;
pub mod drivers;
pub mod events;
pub mod export;
pub mod export_options;
pub mod graph;
pub mod io;
pub mod node;
pub mod options;
pub mod qapi;
pub mod report;
pub mod throttle_group;
pub mod tls_creds;

pub use events::{Event, Events};
pub use export_options::ExportOptions;
pub use graph::{Graph, GraphError};
pub use io::Io;
pub use node::{Driver, DriverInfo, Node, Status, Zeroes};
pub use options::{BlockdevOptions, BlockdevRef, DriverOptions};
pub use tls_creds::{TlsCredsX509, TlsEndpoint};
