//! The NBD protocol as sans-IO state machines, and block-driver logic as
//! pure functions: no I/O, no clock, no heap, no `unsafe`.
//!
//! * [`wire`]: every constant and fixed header of the NBD spec.
//! * [`server`]: one [`server::Server`] per connection; its module docs
//!   describe the driving loop every frontend runs.
//! * [`client`]: the same loop for the client side.
//! * [`block`]: allocation maps, dirty bitmaps, overlays, throttling, error
//!   injection, statistics.
//! * [`time`]: time is an input.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(any(test, feature = "alloc"))]
extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod block;
pub mod client;
pub mod qcow2;
pub mod server;
pub mod time;
pub mod wire;

/// The README's example, compiled and run as a doctest so it cannot rot.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
