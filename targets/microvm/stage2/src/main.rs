//! The second stage of the netboot demonstration: entered in 64-bit mode
//! by the boot client (its page tables and stack still in place), it says
//! where it came from on COM1 and powers off through isa-debug-exit with a
//! code of its own, so the test can tell it ran.
#![no_std]
#![no_main]

use core::arch::asm;

/// The exit code; QEMU exits with `(EXIT_CODE << 1) | 1` = 33.
const EXIT_CODE: u8 = 0x10;

fn outb(port: u16, value: u8) {
    // SAFETY: COM1 and isa-debug-exit ports only; no memory is touched.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) }
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: reads COM1's line status register only.
    unsafe { asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack)) }
    v
}

fn print(s: &str) {
    for b in s.bytes() {
        while inb(0x3fd) & 0x20 == 0 {}
        outb(0x3f8, b);
    }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.entry")]
pub extern "C" fn stage2_start() -> ! {
    print("booted from nbd\r\n");
    outb(0xf4, EXIT_CODE);
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    outb(0xf4, 0x7f);
    loop {}
}
