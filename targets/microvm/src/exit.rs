//! Powering off through QEMU's `isa-debug-exit` device (iobase 0xf4): QEMU
//! exits with status `(code << 1) | 1`, so 0 here is 1 there.

use crate::port::outb;

pub const ISA_DEBUG_EXIT: u16 = 0xf4;

pub fn exit(code: u8) -> ! {
    outb(ISA_DEBUG_EXIT, code);
    // Without the device the write does nothing: stop here instead.
    loop {
        core::hint::spin_loop();
    }
}
