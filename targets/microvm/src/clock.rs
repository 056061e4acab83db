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
/// Windows measured; the slowest rate wins (see [`Clock::calibrate`]).
const CALIBRATION_WINDOWS: usize = 3;

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

/// One window: the TSC at its start and the rate it measured.
fn window() -> Option<(u64, u64)> {
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
    Some((
        t0,
        ((t1 - t0) as u128 * PIT_HZ as u128 / ticks as u128) as u64,
    ))
}

impl Clock {
    /// Measure the TSC rate, if there is a PIT to measure it with.
    ///
    /// The PIT wraps every 55 ms, so a stall longer than that between two
    /// reads (the vCPU thread descheduled on a loaded host) loses whole
    /// wraps and makes the TSC look faster than it is — once by 12x, which
    /// stretched every timeout alike. A stall can only err that way, so
    /// the slowest of a few windows is the rate.
    pub fn calibrate() -> Option<Self> {
        // Channel 0, lobyte/hibyte, mode 2 (rate generator), reload 65536.
        outb(0x43, 0x34);
        outb(0x40, 0);
        outb(0x40, 0);
        let mut start = 0;
        let mut tsc_hz = u64::MAX;
        for _ in 0..CALIBRATION_WINDOWS {
            let (t0, hz) = window()?;
            if start == 0 {
                start = t0;
            }
            tsc_hz = tsc_hz.min(hz);
        }
        Some(Self {
            start,
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
