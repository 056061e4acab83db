//! A monotonic clock: the TSC, calibrated once against the PIT.
//!
//! Under TCG the TSC follows the host's; its rate is unknown to the guest,
//! so it is measured against PIT channel 0 (1.193182 MHz, emulated from
//! QEMU's virtual clock) over a few milliseconds at boot.

use core::arch::x86_64::_rdtsc;

use crate::port::{inb, outb};

const PIT_HZ: u64 = 1_193_182;
/// Calibration window: 5 ms of PIT ticks.
const CALIBRATION_TICKS: u64 = PIT_HZ / 200;

pub struct Clock {
    start: u64,
    tsc_hz: u64,
}

fn rdtsc() -> u64 {
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { _rdtsc() }
}

fn pit_count() -> u16 {
    outb(0x43, 0x00); // latch channel 0
    let lo = inb(0x40);
    let hi = inb(0x40);
    u16::from_le_bytes([lo, hi])
}

impl Clock {
    /// Measure the TSC rate, if there is a PIT to measure it with.
    pub fn calibrate() -> Option<Self> {
        // Channel 0, lobyte/hibyte, mode 2 (rate generator), reload 65536.
        outb(0x43, 0x34);
        outb(0x40, 0);
        outb(0x40, 0);
        let mut prev = pit_count();
        let t0 = rdtsc();
        let mut ticks = 0u64;
        let mut spins = 0u64;
        while ticks < CALIBRATION_TICKS {
            let now = pit_count();
            ticks += u64::from(prev.wrapping_sub(now));
            prev = now;
            spins += 1;
            if spins > 50_000_000 {
                return None; // no PIT: the count never moves
            }
        }
        let t1 = rdtsc();
        let tsc_hz = ((t1 - t0) as u128 * PIT_HZ as u128 / ticks as u128) as u64;
        Some(Self {
            start: t0,
            tsc_hz: tsc_hz.max(1),
        })
    }

    /// TSC ticks per second.
    pub fn hz(&self) -> u64 {
        self.tsc_hz
    }

    /// Microseconds since calibration began.
    pub fn micros(&self) -> u64 {
        let d = rdtsc().wrapping_sub(self.start) as u128;
        (d * 1_000_000 / self.tsc_hz as u128) as u64
    }

    /// Microseconds since the TSC was reset (roughly: since the VM started).
    pub fn micros_since_reset(&self) -> u64 {
        (rdtsc() as u128 * 1_000_000 / self.tsc_hz as u128) as u64
    }
}
