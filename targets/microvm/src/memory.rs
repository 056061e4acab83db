//! RAM past the kernel image, handed out once, front to back: the disk,
//! its allocation map, socket buffers, DMA rings. Nothing is ever freed.

pub struct Carve {
    next: u64,
    end: u64,
}

unsafe extern "C" {
    /// End of the image (`.bss` included), from the linker script.
    static __kernel_end: u8;
}

/// Address of the first byte past the image.
pub fn kernel_end() -> u64 {
    core::ptr::addr_of!(__kernel_end) as u64
}

impl Carve {
    /// The RAM from the end of the kernel image to the end of its region.
    pub fn after_kernel(region_end: u64) -> Self {
        Self {
            next: kernel_end(),
            end: region_end,
        }
    }

    /// First address not handed out yet.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// End of the region.
    pub fn end(&self) -> u64 {
        self.end
    }

    pub fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.next)
    }

    /// `len` bytes aligned to `align`. The contents are whatever the RAM
    /// holds: zero for memory nothing touched since the VM started.
    pub fn bytes(&mut self, len: usize, align: u64) -> Option<&'static mut [u8]> {
        let start = self.next.checked_next_multiple_of(align)?;
        let end = start.checked_add(len as u64)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        // SAFETY: [start, end) is RAM (inside the region the PVH memory
        // map reported), identity-mapped, past everything the image uses,
        // and handed out only this once, so the slice is unaliased.
        Some(unsafe { core::slice::from_raw_parts_mut(start as *mut u8, len) })
    }

    /// `n` zeroed words.
    pub fn words(&mut self, n: usize) -> Option<&'static mut [u64]> {
        let b = self.bytes(n * 8, 8)?;
        b.fill(0);
        let ptr = b.as_mut_ptr() as *mut u64;
        // SAFETY: the bytes are 8-aligned, `n * 8` long and exclusively
        // ours; reinterpreting them as initialized u64s is valid.
        Some(unsafe { core::slice::from_raw_parts_mut(ptr, n) })
    }

    /// `n` values of `T`, the `i`-th initialized to `init(i)`: memory for
    /// what the count of is only known at run time (connection slots and
    /// their sockets, sized by `conns=N`).
    pub fn array<T>(
        &mut self,
        n: usize,
        mut init: impl FnMut(usize) -> T,
    ) -> Option<&'static mut [T]> {
        let len = n.checked_mul(core::mem::size_of::<T>())?;
        let b = self.bytes(len, core::mem::align_of::<T>() as u64)?;
        let ptr = b.as_mut_ptr() as *mut T;
        for i in 0..n {
            // SAFETY: `ptr` is aligned for T and `n * size_of::<T>()` bytes
            // of memory exclusively ours; each element is written once,
            // without reading (or dropping) the uninitialized old value.
            unsafe { ptr.add(i).write(init(i)) };
        }
        // SAFETY: all `n` elements were just initialized.
        Some(unsafe { core::slice::from_raw_parts_mut(ptr, n) })
    }
}
