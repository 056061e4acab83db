//! blockwire on tokio: the `blockwire` command's building blocks.
//!
//! The server side is a [`block`] graph of named nodes, a [`registry`] of
//! exports on top of it, [`listen`] to accept clients and [`connection`]
//! to drive the core's sans-IO server machine for each. The client side is
//! [`client`] (the library) and [`tools`] (`info`, `copy`).

#![deny(unsafe_code)]

pub mod block;
pub mod cli;
pub mod client;
pub mod connection;
pub mod daemon;
pub mod io;
pub mod listen;
pub mod pid_file;
pub mod registry;
pub mod serve;
pub mod shutdown;
pub mod size;
// The one exception: the few system calls std does not wrap, each with
// its safety argument.
#[allow(unsafe_code)]
mod sys;
pub mod tls;
pub mod tools;
