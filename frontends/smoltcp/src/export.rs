//! The one export a server offers, as the handshake machine sees it: the
//! core's [`ExportInfo`], which is a table of one offering
//! `base:allocation`.

use blockwire_core::block::contract::Op;
use blockwire_core::server::{BlockSizes, DeviceCaps, ExportInfo};

use crate::block_device::BlockDevice;

/// Name, size and flags of the export, copied out of the device once so
/// each connection's machine can own its own copy (a few words).
pub type Export<'n> = ExportInfo<'n>;

/// What `device` can do, as the export `name`.
pub fn of<'n, D: BlockDevice + ?Sized>(
    device: &D,
    name: &'n str,
    description: &'n str,
) -> Export<'n> {
    let caps = DeviceCaps {
        read_only: device.read_only(),
        trim: device.supports(Op::Trim),
        write_zeroes: device.supports(Op::WriteZeroes),
        fast_zero: device.fast_zero(),
        cache: device.supports(Op::Cache),
        // Every connection drives the same device from one loop and a
        // flush reaches everything written on any of them.
        multi_conn: true,
        rotational: false,
    };
    // No limit from the device's longest transfer: reads and writes reach
    // it in pieces no larger than the socket's buffers.
    let limits = device.limits();
    let block_sizes = BlockSizes::of_device(limits.align, limits.opt_write_zero, 0);
    ExportInfo::of_device(name, description, device.size(), caps, block_sizes)
}
