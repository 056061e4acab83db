//! The Linux x86 boot protocol (Documentation/arch/x86/boot.rst): the
//! setup header of a bzImage and where its protected-mode part and an
//! initramfs go in RAM for the 64-bit entry point.

use crate::{u16_at, u32_at, u64_at};

/// Bytes of the file [`parse`] needs: the boot sector and the header.
pub const HEAD: usize = 1024;
/// Offset of the setup header in the file and in `boot_params`.
pub const HEADER_AT: usize = 0x1f1;
/// `xloadflags` bit: the kernel has the 64-bit entry at +0x200.
const XLF_KERNEL_64: u16 = 1;
/// Boot protocol 2.12: the first with `xloadflags`.
const MIN_VERSION: u16 = 0x020c;
const PAGE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    pub version: u16,
    /// Bytes before the protected-mode kernel (the real-mode setup).
    pub setup_len: u64,
    /// Length of the protected-mode kernel in the file.
    pub payload_len: u64,
    /// RAM the kernel needs from its load address (at least its length).
    pub init_size: u64,
    pub pref_address: u64,
    pub alignment: u64,
    pub relocatable: bool,
    pub initrd_max: u64,
    pub cmdline_max: u64,
    /// End of the setup header in the file (what is copied to
    /// `boot_params`).
    pub header_end: usize,
}

/// Check `head` (the first [`HEAD`] bytes of a `file_len`-byte file) is a
/// bzImage with a 64-bit entry point.
pub fn parse(head: &[u8], file_len: u64) -> Result<Kernel, &'static str> {
    if head.len() < HEAD || file_len < HEAD as u64 {
        return Err("shorter than a boot sector and setup header");
    }
    if u16_at(head, 0x1fe) != 0xAA55 {
        return Err("no 0xAA55 boot flag");
    }
    if &head[0x202..0x206] != b"HdrS" {
        return Err("no \"HdrS\" setup header");
    }
    let version = u16_at(head, 0x206);
    if version < MIN_VERSION {
        return Err("boot protocol older than 2.12");
    }
    if head[0x211] & 1 == 0 {
        return Err("not a bzImage (LOADED_HIGH unset)");
    }
    if u16_at(head, 0x236) & XLF_KERNEL_64 == 0 {
        return Err("no 64-bit entry point");
    }
    let header_end = 0x202 + usize::from(head[0x201]);
    if !(0x268..=HEAD).contains(&header_end) {
        return Err("setup header length out of range");
    }
    let sects = match head[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let setup_len = (sects + 1) * 512;
    if setup_len >= file_len {
        return Err("no protected-mode kernel after the setup");
    }
    let payload_len = file_len - setup_len;
    let alignment = u64::from(u32_at(head, 0x230));
    if !alignment.is_power_of_two() || alignment < PAGE {
        return Err("kernel alignment not a power of two of at least 4 KiB");
    }
    let init_size = u64::from(u32_at(head, 0x260)).max(payload_len);
    Ok(Kernel {
        version,
        setup_len,
        payload_len,
        init_size,
        pref_address: u64_at(head, 0x258),
        alignment,
        relocatable: head[0x234] != 0,
        initrd_max: u64::from(u32_at(head, 0x22c)),
        cmdline_max: u64::from(u32_at(head, 0x238)),
        header_end,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Load address of the protected-mode kernel (entry at +0x200).
    pub kernel: u64,
    /// End of the RAM the kernel may use while it decompresses.
    pub kernel_end: u64,
    /// Load address of the initramfs (page aligned, above the kernel).
    pub initrd: u64,
}

/// Place the kernel and an `initrd_len`-byte initramfs in the free RAM
/// `[low, high)`: the kernel at its preferred address if that fits, else
/// (if relocatable) at the first aligned address; the initramfs as high
/// as the kernel allows, as boot loaders do.
pub fn layout(k: &Kernel, initrd_len: u64, low: u64, high: u64) -> Result<Layout, &'static str> {
    let fits = |at: u64| at >= low && at.checked_add(k.init_size).is_some_and(|e| e <= high);
    let kernel = if fits(k.pref_address) {
        k.pref_address
    } else if !k.relocatable {
        return Err("the kernel needs its fixed load address, which is not free RAM");
    } else {
        match low.checked_next_multiple_of(k.alignment) {
            Some(at) if fits(at) => at,
            _ => return Err("the kernel (its init_size) is larger than the free RAM"),
        }
    };
    let kernel_end = kernel + k.init_size;
    let top = high.min(k.initrd_max.saturating_add(1));
    let initrd = top
        .checked_sub(initrd_len)
        .map(|at| at & !(PAGE - 1))
        .filter(|&at| at >= kernel_end.next_multiple_of(PAGE))
        .ok_or("the initramfs does not fit in the RAM above the kernel")?;
    Ok(Layout {
        kernel,
        kernel_end,
        initrd,
    })
}
