//! qcow2 images as a sans-IO planner: QEMU's format (docs/interop/qcow2.txt,
//! docs/interop/bitmaps.rst) read and written through caller-provided
//! storage, with no I/O, no allocation and no `unsafe`. Where the
//! specification leaves room, this does what QEMU's `block/qcow2*.c` does,
//! and says so where it matters.
//!
//! # Driving it
//!
//! A frontend (the future `qcow2` block-graph driver, or the std executor in
//! `core/tests/qcow2_support`) owns the image file and performs every read
//! and write; the core only says which.
//!
//! **Open.** Read cluster 0 (at least 4 KiB, then
//! [`HeaderArea::needed_len`] bytes) and [`HeaderArea::parse`] it. Choose a
//! [`Config`] (cache slots, memory limits for the L1 and refcount tables),
//! allocate [`Qcow2::words_needed`] `u64` words (a `Vec`, a static array),
//! and call [`Qcow2::open`]. Then, while [`Qcow2::open_need`] returns a
//! [`Load`], read it and [`Qcow2::install`] it (L1 table, refcount table,
//! snapshot table, in chunks of at most 64 KiB or one cluster). Every
//! hostile-image check runs on the way; see [`Qcow2Error`].
//!
//! **Read.** [`Qcow2::map`]`(offset, len)` answers the first [`Run`]: data
//! at a host offset, zeroes, unallocated (read the backing file at the same
//! guest offset; zeroes past its end or without one) or part of a
//! compressed cluster (read it, [`Inflater::inflate_cluster`], copy). Or it
//! answers [`Need::Load`] (an L2 table to read and install) or
//! [`Need::Flush`] (every cache slot is dirty: run a flush plan). Loop until
//! the range is covered. The same runs answer `base:allocation`
//! ([`Run::base_allocation`]) and `qemu:allocation-depth`
//! ([`Run::allocated_here`]).
//!
//! **Write, write-zeroes, discard.** [`Qcow2::plan_write`],
//! [`Qcow2::plan_write_zeroes`] and [`Qcow2::plan_discard`] return a
//! [`Plan`]: either a `Need` (nothing emitted; satisfy it and plan again) or
//! [`Planned`] steps emitted into the caller's sink plus a [`Ticket`]. Carry
//! the [`Step`]s out in order — `Data` (the request's payload to a host
//! offset), `Fill` (copy-on-write: guest bytes from the backing file,
//! zeroes, another host offset or a compressed cluster, written to a host
//! offset), `Meta` (metadata bytes from [`Qcow2::meta_bytes`]), `Flush`
//! (a barrier: everything before it durable before anything after it
//! starts), `Discard` (optional hole punch) — then [`Qcow2::commit`] the
//! ticket, or [`Qcow2::abort`] it if a step failed. A plan covers
//! [`Planned::covered`] bytes (one run inside one L2 table; 0 for a
//! prerequisite such as the first-write header update or refcount table
//! growth): plan again from there. Steps between two barriers touch
//! disjoint host ranges and may run concurrently.
//!
//! **Flush** (NBD flush, FUA). [`Qcow2::plan_flush`] writes back dirty
//! metadata in the order below and ends with a barrier; run it until
//! [`Qcow2::has_dirty_metadata`] is false (deferred frees take one more
//! round). A FUA write is the write's plans followed by a flush.
//!
//! **Concurrency rules** (QEMU's `s->lock` and request serialisation, made
//! explicit). Calls take `&mut self`; a driver puts the image behind a lock
//! held for planning, committing and `map`, not for data I/O nor for
//! reading a [`Load`] (a load that crosses a flush is ignored by
//! `install`, see [`Load::epoch`], and asked for again). Requests
//! touching the same guest cluster must be serialised (a write's
//! copy-on-write reads and the mapping it replaces must not change under
//! it). Between `plan_flush` (or a growth plan) and its commit nothing else
//! may plan or commit ([`Qcow2Error::Protocol`] otherwise): the flush
//! writes the caches as they are.
//!
//! # Why a crash at any step leaves a consistent image
//!
//! Consistent means what `qemu-img check` means: no cluster referenced more
//! often than its refcount, no structure pointing at garbage. Leaked
//! clusters (refcount without reference) are allowed, as QEMU allows them.
//!
//! * Data and copy-on-write steps only ever write clusters that no durable
//!   L2 entry points to yet (fresh allocations), or clusters whose refcount
//!   is exactly one (the COPIED flag) in place. A crash among them loses
//!   unflushed data, nothing else.
//! * L2 entries change only in memory ([`Qcow2::commit`]) and reach the
//!   disk only in a flush plan, which writes, separated by barriers:
//!   (1) refcount blocks, then the refcount table entries of new blocks;
//!   (2) L2 tables; (3) L1 entries; (4) the header. So a durable L2 entry
//!   never points at a cluster whose refcount is 0 on disk (QEMU's
//!   dependency of the L2 cache on the refcount cache), a durable L1 entry
//!   never points at an unwritten L2 table, and the barrier before (2) also
//!   makes the data that in-place writes expose (subcluster or zero bits
//!   flipped) durable first.
//! * Refcount *decrements* (a cluster replaced by copy-on-write, discarded,
//!   zeroed with unmap) wait in a queue until the flush that persists the
//!   L2 change dropping the reference has completed; only the next flush
//!   applies them. A crash in between leaks the cluster; a freed cluster is
//!   never reused while a durable reference to it remains.
//! * Cache slots leave memory only when clean, so nothing reaches the disk
//!   outside a flush plan's order.
//! * Refcount table growth writes the new refcount blocks (describing the
//!   new area itself) and the new table in fresh clusters, then a barrier,
//!   then the header fields, then a barrier; the old table is freed
//!   afterwards. A crash before the header write leaves the old table in
//!   force and the new area leaked.
//! * Stored bitmaps follow QEMU's order (see [`bitmaps`]): new data, tables
//!   and directory, flush, header extension, flush, then frees.
//!
//! `core/tests/qcow2_crash.rs` replays every prefix of recorded workloads
//! (durable part only, everything, and mixes) through `qemu-img check`.
//!
//! # What of the format is supported
//!
//! | Feature | Status |
//! | --- | --- |
//! | Versions 2 and 3, header emit and parse, `header_length` > 104 (fields preserved) | yes |
//! | Cluster sizes 512 B to 2 MiB | yes |
//! | Refcount widths 1 to 64 bits | yes |
//! | Standard clusters, zero clusters (v3, with and without preallocated offset) | read and write |
//! | Extended L2 entries (subclusters) | read and write (COW per subcluster) |
//! | Compressed clusters, zlib (deflate via `miniz_oxide`, no allocator) | read; writes copy them to standard clusters; writing new compressed clusters: no |
//! | Compressed clusters, zstd | refused at open: no `no_std`, allocation-free zstd decoder exists |
//! | Backing file name and format extension | yes; the chain itself is opened by the frontend, guarded by [`chain::ChainGuard`] (loops, depth) |
//! | Copy-on-write of partial clusters from the backing file | yes (plans read the backing) |
//! | Cluster allocation, L2 table allocation, L2 copy-on-write (shared tables), refcount block creation, refcount table growth | yes |
//! | Discard and write-zeroes as QEMU does them (whole clusters / subclusters; `MAY_UNMAP`; v2 falls back to writing zeroes) | yes |
//! | Feature name table | read for error messages, written as QEMU writes it |
//! | Unknown incompatible bits | refused, naming the bit (and its name from the table) |
//! | Unknown autoclear bits | cleared on the first write |
//! | Unknown header extensions | preserved on rewrite (up to 1 KiB) |
//! | Dirty bit (lazy refcounts) | read-only open only; no refcount repair (use `qemu-img check -r all`); lazy refcounts are never used when writing (the compatible bit is ignored, as allowed) |
//! | Corrupt bit | read-only open only; never set (detected corruption fails the request instead) |
//! | Persistent dirty bitmaps (extension, directory, tables, `in_use`/`auto`/`extra_data_compatible`) | load and store |
//! | Internal snapshots | table checked and its L1 tables overlap-checked; the active image is read and written correctly over shared clusters; creating, applying or deleting snapshots: no |
//! | External data files, encryption (AES, LUKS) | refused at open |
//! | Resize, preallocation when creating ([`create`] makes sparse images) | no |
//!
//! The modules: [`header`] (cluster 0), [`layout`] (geometry, entry
//! formats), [`create`] (new images), [`compress`], [`bitmaps`],
//! [`chain`], [`plan`] (the steps and tickets of write, write-zeroes,
//! discard, flush and table growth, planned in `write`, `zero`, `flush`
//! and `alloc`), [`error`].

mod alloc;
pub mod bitmaps;
mod cache;
pub mod chain;
pub mod compress;
pub mod create;
pub mod error;
mod flush;
pub mod header;
mod image;
pub mod layout;
pub mod plan;
mod refcount;
mod write;
mod zero;

pub use alloc::Alloc;
pub use compress::Inflater;
pub use error::{Meta, Qcow2Error};
pub use header::{Header, HeaderArea};
pub use image::{Config, Load, MapResult, Mapping, Need, Qcow2, Run};
pub use plan::{MetaSrc, Plan, Planned, Source, Step, Ticket};
