//! The NBD protocol as sans-IO state machines, and block-driver logic as
//! pure functions: no I/O, no clock, no heap, no `unsafe`.
//!
//! * [`wire`]: every constant, fixed header and payload of the NBD spec,
//!   read through one checked reader and written through one checked sink.
//! * [`server`]: one [`server::Server`] per client connection, producing
//!   typed requests ([`server::Command`]) and planning their replies.
//! * [`client`]: one [`client::Client`] per connection to a server.
//! * [`block`]: allocation maps, dirty bitmaps, overlays, throttling, error
//!   injection, statistics.
//! * [`time`]: time is an input.
//!
//! # The driving loop
//!
//! Both machines are driven the same way. A machine owns no socket, no
//! clock and no heap; the frontend moves bytes and time through it, in
//! this order, for as long as the connection lives:
//!
//! 1. **Transmit.** Send what `poll_transmit()` returns and report how much
//!    went out with `transmitted(n)`; repeat until it returns an empty
//!    slice. Do this first, always: a machine stops reading input while its
//!    own output waits, which is what keeps its memory bounded.
//! 2. **Receive.** Pass received bytes to `handle_input(bytes)`. It returns
//!    a `Progress`: how many bytes it `consumed` and at most one `Event`.
//!    Drop the consumed bytes, act on the event, and call again with the
//!    rest. `consumed == 0` with no event means "give me more bytes" (or
//!    "transmit first", step 1). Any split of the input works, down to one
//!    byte per call, as long as the frontend keeps the bytes not consumed
//!    and passes them again with what arrives next (the client takes a
//!    fixed-size unit only once it is whole, so its frontend keeps at least
//!    [`client::INPUT_BUFFER`] bytes). An event borrows only the input it came from, so a
//!    write's payload (server) or a read's data (client) reaches the
//!    frontend in pieces without the machine ever buffering it.
//! 3. **Time.** Before waiting for the socket, ask `poll_timeout()` for the
//!    next deadline; when it passes, call `handle_timeout(now)`, which may
//!    end the connection (a peer that dawdles in the handshake).
//!
//! What differs, and is documented on each machine:
//!
//! * **Output paths.** The server's `poll_transmit` carries only the
//!   handshake; transmission replies are encoded by a `Copy`
//!   [`server::ReplyEncoder`] on whichever task finishes the I/O, in any
//!   order, and read data is sent from the frontend's own buffer right
//!   after its header. The client's `poll_transmit` carries everything it
//!   sends but write payloads: option requests, then request headers; a
//!   write's data is sent by the frontend from its own buffer after the
//!   header, and reported with `payload_sent`.
//! * **A synchronous device.** A frontend whose device answers before it
//!   returns can hand all of the server side to
//!   [`server::sync::SyncConnection`], which runs this loop, carries out
//!   each request and streams its reply into the frontend's
//!   [`server::sync::Transport`]; the frontend then only moves bytes (the
//!   smoltcp frontend does this).
//! * **End of stream.** Only the client is told about it
//!   (`handle_eof`), because only it can say whether a close was expected;
//!   a server frontend simply stops.
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
