//! x86 I/O ports: the serial console, the PIT and isa-debug-exit.

use core::arch::asm;

pub fn outb(port: u16, value: u8) {
    // SAFETY: port writes touch only the emulated devices this kernel
    // drives (COM1, PIT, isa-debug-exit); no memory is involved.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`; reading these ports has no memory effects.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}
