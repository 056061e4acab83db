#![no_std]
#![forbid(unsafe_code)]

#[cfg(any(test, feature = "alloc"))]
extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod block;
pub mod client;
pub mod server;
pub mod time;
pub mod wire;
