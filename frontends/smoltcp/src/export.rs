//! The one export a server offers, as the handshake machine sees it.

use blockwire_core::block::contract::Op;
use blockwire_core::server::{BlockSizes, DeviceCaps, ExportInfo, Exports};
use blockwire_core::wire::{TransmissionFlags, context};

use crate::block_device::BlockDevice;

/// Name, size and flags of the export, copied out of the device once so
/// each connection's machine can own its own copy (a few words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Export<'n> {
    pub name: &'n str,
    pub description: &'n str,
    pub size: u64,
    pub flags: TransmissionFlags,
    pub block_sizes: BlockSizes,
    /// Clients must honour `block_sizes` (the device has an alignment).
    pub block_size_required: bool,
}

impl<'n> Export<'n> {
    /// What `device` can do, under `name`.
    pub fn of<D: BlockDevice + ?Sized>(device: &D, name: &'n str, description: &'n str) -> Self {
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
        let flags = caps.transmission_flags();
        // No limit from the device's longest transfer: reads and writes
        // reach it in pieces no larger than the socket's buffers.
        let limits = device.limits();
        let block_sizes = BlockSizes::of_device(limits.align, limits.opt_write_zero, 0);
        Self {
            name,
            description,
            size: device.size(),
            flags,
            block_sizes,
            block_size_required: block_sizes.minimum > 1,
        }
    }
}

impl Exports for Export<'_> {
    fn find(&self, name: &str) -> Option<usize> {
        (name == self.name).then_some(0)
    }

    fn export(&self, index: usize) -> Option<ExportInfo<'_>> {
        (index == 0).then_some(ExportInfo {
            name: self.name,
            description: self.description,
            size: self.size,
            flags: self.flags,
            block_sizes: self.block_sizes,
            block_size_required: self.block_size_required,
        })
    }

    fn meta_context(&self, export: usize, index: usize) -> Option<&str> {
        (export == 0 && index == 0).then_some(context::BASE_ALLOCATION)
    }
}
