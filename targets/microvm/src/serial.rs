//! The console: COM1, which QEMU's microvm has by default (`isa-serial`).

use core::fmt;

use crate::port::{inb, outb};

const COM1: u16 = 0x3f8;

pub struct Serial;

impl Serial {
    /// 115200 8N1, FIFOs on, no interrupts.
    pub fn init() -> Self {
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x80);
        outb(COM1, 0x01);
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03);
        outb(COM1 + 2, 0xc7);
        Serial
    }

    /// A byte typed on the console, if any.
    #[cfg_attr(feature = "netboot", allow(dead_code))]
    pub fn try_read() -> Option<u8> {
        (inb(COM1 + 5) & 0x01 != 0).then(|| inb(COM1))
    }

    fn put(&mut self, b: u8) {
        // Transmit holding register empty.
        while inb(COM1 + 5) & 0x20 == 0 {}
        outb(COM1, b);
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

/// `println!` to COM1.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::serial::Serial, $($arg)*);
    }};
}
