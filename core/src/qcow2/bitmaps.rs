//! Persistent dirty bitmaps (docs/interop/qcow2.txt "Bitmaps").

/// Most bitmaps QEMU accepts in one image.
pub const MAX_BITMAPS: u32 = 65535;
/// Largest bitmap directory QEMU accepts.
pub const MAX_DIRECTORY_SIZE: u64 = 1024 * MAX_BITMAPS as u64;
