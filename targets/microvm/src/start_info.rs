//! The `hvm_start_info` block QEMU's PVH boot hands over in `ebx`: where
//! the kernel command line and the memory map are.

/// `XEN_HVM_START_MAGIC_VALUE`.
const MAGIC: u32 = 0x336e_c578;
/// `XEN_HVM_MEMMAP_TYPE_RAM`.
const MEMMAP_RAM: u32 = 1;

#[repr(C)]
struct StartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct MemmapEntry {
    addr: u64,
    size: u64,
    kind: u32,
    reserved: u32,
}

/// What the kernel needs from the boot block, copied out of guest memory.
pub struct BootInfo {
    pub cmdline: &'static str,
    /// RAM ranges `(start, end)`, at most 16.
    pub ram: [(u64, u64); 16],
    pub ram_count: usize,
    /// The whole memory map `(start, size, type)` (types as in E820),
    /// at most 32 entries: what a Linux kernel booted from here is given.
    #[cfg_attr(not(feature = "netboot"), allow(dead_code))]
    pub map: [(u64, u64, u32); 32],
    #[cfg_attr(not(feature = "netboot"), allow(dead_code))]
    pub map_count: usize,
    /// Physical address of the ACPI RSDP (0: none).
    #[cfg_attr(not(feature = "netboot"), allow(dead_code))]
    pub rsdp: u64,
}

impl BootInfo {
    /// Read the block at physical address `paddr`; `None` if it is not a
    /// PVH start info.
    pub fn read(paddr: u64) -> Option<Self> {
        if paddr == 0 {
            return None;
        }
        // SAFETY: QEMU put a `hvm_start_info` at `paddr` (below 4 GiB, so
        // identity-mapped) and nothing writes it; we only read it.
        let si = unsafe { &*(paddr as *const StartInfo) };
        if si.magic != MAGIC {
            return None;
        }
        let cmdline = if si.cmdline_paddr == 0 {
            ""
        } else {
            // SAFETY: a NUL-terminated string QEMU wrote at boot, never
            // written again, identity-mapped.
            let c =
                unsafe { core::ffi::CStr::from_ptr(si.cmdline_paddr as *const core::ffi::c_char) };
            c.to_str().unwrap_or("")
        };
        let mut info = BootInfo {
            cmdline,
            ram: [(0, 0); 16],
            ram_count: 0,
            map: [(0, 0, 0); 32],
            map_count: 0,
            rsdp: si.rsdp_paddr,
        };
        if si.version >= 1 && si.memmap_paddr != 0 {
            for i in 0..si.memmap_entries as usize {
                // SAFETY: `memmap_entries` entries at `memmap_paddr`, as
                // the PVH boot ABI (version >= 1) defines them.
                let e = unsafe { *(si.memmap_paddr as *const MemmapEntry).add(i) };
                if info.map_count < info.map.len() {
                    info.map[info.map_count] = (e.addr, e.size, e.kind);
                    info.map_count += 1;
                }
                if e.kind == MEMMAP_RAM && info.ram_count < info.ram.len() {
                    info.ram[info.ram_count] = (e.addr, e.addr + e.size);
                    info.ram_count += 1;
                }
            }
        }
        Some(info)
    }

    /// The RAM range holding `addr`.
    pub fn ram_around(&self, addr: u64) -> Option<(u64, u64)> {
        self.ram[..self.ram_count]
            .iter()
            .copied()
            .find(|&(s, e)| s <= addr && addr < e)
    }
}
