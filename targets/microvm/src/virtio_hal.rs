//! What `virtio-drivers` needs of the platform: DMA memory and address
//! translation. Memory is identity-mapped, so a pointer is its physical
//! address; DMA pages come from a pool carved out of RAM at boot.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

static POOL_NEXT: AtomicU64 = AtomicU64::new(0);
static POOL_END: AtomicU64 = AtomicU64::new(0);

/// Hand `pool` to the DMA allocator (once, before any device is set up).
pub fn give_pool(pool: &'static mut [u8]) {
    let start = pool.as_mut_ptr() as u64;
    POOL_NEXT.store(start.next_multiple_of(PAGE_SIZE as u64), Ordering::Relaxed);
    POOL_END.store(start + pool.len() as u64, Ordering::Relaxed);
}

pub struct IdentityHal;

// SAFETY: dma_alloc returns page-aligned, zeroed, never-reused pool pages
// (the pool is exclusively the allocator's); addresses are identity-mapped
// so physical and virtual addresses agree and sharing needs no copies.
unsafe impl Hal for IdentityHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let len = (pages * PAGE_SIZE) as u64;
        let start = POOL_NEXT.fetch_add(len, Ordering::Relaxed);
        assert!(
            start + len <= POOL_END.load(Ordering::Relaxed),
            "DMA pool exhausted"
        );
        let ptr = start as *mut u8;
        // SAFETY: [start, start+len) is pool memory handed out only now.
        unsafe { ptr.write_bytes(0, len as usize) };
        (start, NonNull::new(ptr).expect("pool is not at address 0"))
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // Devices live as long as the kernel: nothing is ever returned.
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("MMIO at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
