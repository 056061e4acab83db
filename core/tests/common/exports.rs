//! The export table shared by the core's integration tests and the fuzz
//! targets (included by path from `fuzz/src/lib.rs`), so both drive the
//! server machine against the same exports.

use blockwire_core::server::{BlockSizes, ExportInfo, Exports};
use blockwire_core::wire::TransmissionFlags;

pub struct TestExport {
    pub name: &'static str,
    pub description: &'static str,
    pub size: u64,
    pub flags: TransmissionFlags,
    pub block_sizes: BlockSizes,
    pub required: bool,
    pub contexts: &'static [&'static str],
}

pub struct TestExports(pub Vec<TestExport>);

pub fn all_flags() -> TransmissionFlags {
    TransmissionFlags::SEND_FLUSH
        | TransmissionFlags::SEND_FUA
        | TransmissionFlags::SEND_TRIM
        | TransmissionFlags::SEND_WRITE_ZEROES
        | TransmissionFlags::SEND_FAST_ZERO
        | TransmissionFlags::SEND_CACHE
        | TransmissionFlags::CAN_MULTI_CONN
}

impl TestExports {
    /// "disk" (default, 1 MiB, everything), "ro" (read-only, 64 KiB, no
    /// FAST_ZERO), "bs" (4 KiB minimum block, sizes required).
    pub fn standard() -> Self {
        TestExports(vec![
            TestExport {
                name: "disk",
                description: "the test disk",
                size: 1 << 20,
                flags: all_flags(),
                block_sizes: BlockSizes::DEFAULT,
                required: false,
                contexts: &[
                    "base:allocation",
                    "qemu:allocation-depth",
                    "qemu:dirty-bitmap:b1",
                    "qemu:dirty-bitmap:b2",
                ],
            },
            TestExport {
                name: "ro",
                description: "",
                size: 64 << 10,
                flags: TransmissionFlags::READ_ONLY
                    | TransmissionFlags::SEND_FLUSH
                    | TransmissionFlags::SEND_FUA,
                block_sizes: BlockSizes::DEFAULT,
                required: false,
                contexts: &["base:allocation"],
            },
            TestExport {
                name: "bs",
                description: "aligned",
                size: 1 << 20,
                flags: all_flags(),
                block_sizes: BlockSizes {
                    minimum: 4096,
                    preferred: 4096,
                    maximum: 1 << 20,
                },
                required: true,
                contexts: &["base:allocation"],
            },
        ])
    }

    /// One small RAM disk export for whole sessions.
    pub fn ram(size: u64, min_block: u32, max_payload: u32) -> Self {
        TestExports(vec![TestExport {
            name: "ram",
            description: "ram disk",
            size,
            flags: all_flags(),
            block_sizes: BlockSizes {
                minimum: min_block,
                preferred: 4096u32.max(min_block),
                maximum: max_payload,
            },
            required: min_block > 1,
            contexts: &["base:allocation", "qemu:allocation-depth"],
        }])
    }
}

impl Exports for TestExports {
    // No rule for "": the machine's default export is what is tested.
    fn find(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|e| e.name == name)
    }
    fn export(&self, index: usize) -> Option<ExportInfo<'_>> {
        self.0.get(index).map(|e| ExportInfo {
            name: e.name,
            description: e.description,
            size: e.size,
            flags: e.flags,
            block_sizes: e.block_sizes,
            block_size_required: e.required,
        })
    }
    fn meta_context(&self, export: usize, index: usize) -> Option<&str> {
        self.0.get(export)?.contexts.get(index).copied()
    }
}
