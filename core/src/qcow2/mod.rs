//! qcow2 images as a sans-IO planner: QEMU's format (docs/interop/qcow2.txt)
//! read and written through caller-provided storage, with no I/O, no
//! allocation and no `unsafe`.
//!
//! (The full docs — API, crash-ordering argument, supported features —
//! follow below.)

pub mod bitmaps;
mod cache;
pub mod chain;
pub mod compress;
pub mod create;
pub mod error;
pub mod header;
mod image;
pub mod layout;
mod refcount;
pub mod write;

pub use compress::Inflater;
pub use error::{Meta, Qcow2Error};
pub use header::{Header, HeaderArea};
pub use image::{Config, Load, MapResult, Mapping, Need, Qcow2, Run};
pub use write::Alloc;
pub use write::{MetaSrc, Plan, Planned, Source, Step, Ticket};
