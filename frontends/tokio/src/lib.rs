//! blockwire on tokio: the `blockwire` command's building blocks.
//!
//! The server side is a [`registry`] of exports, each a [`stack`] of
//! block-driver layers from `blockwire_core::block` over a [`backend`];
//! [`listen`] accepts clients and [`connection`] drives the core's sans-IO
//! server machine for each. Client-side tools (`info`, `copy`) are meant to
//! live beside these modules and add their subcommands to [`cli::Command`].

#![deny(unsafe_code)]

pub mod backend;
pub mod block;
pub mod cli;
pub mod client;
pub mod connection;
pub mod io;
pub mod listen;
pub mod registry;
pub mod serve;
pub mod shutdown;
pub mod size;
pub mod stack;
// The one exception: the few system calls std does not wrap, each with
// its safety argument.
#[allow(unsafe_code)]
mod sys;
pub mod tls;
pub mod tools;
