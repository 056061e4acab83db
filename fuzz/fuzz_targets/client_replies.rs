//! The client's transmission phase against a hostile server: a valid
//! handshake, a few requests of every kind with caller buffers, then
//! arbitrary reply bytes in arbitrary splits.
//!
//! Input: configuration byte (bits 0-1 header mode, 2 contexts), four split
//! sizes, a request count byte, 5 bytes per request (see
//! `client::replies_setup`), then server bytes.
//!
//! Invariants (checked by the driver): read data lands inside the read's
//! buffer, never overlapping earlier data; a read completes `Ok` only when
//! every byte arrived; each request completes exactly once; nothing
//! happens after `Failed`.
#![no_main]

use blockwire_fuzz::client::replies_setup;
use blockwire_fuzz::{Splitter, split_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((cfg, sizes, rest)) = split_header(data) else {
        return;
    };
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let n = (n as usize % 8 + 1) * 5;
    if rest.len() < n {
        return;
    }
    let (spec, bytes) = rest.split_at(n);
    let (mut d, _reqs) = replies_setup(cfg, spec);
    for piece in Splitter::new(bytes, sizes) {
        // The driver checks that the client never waits with
        // INPUT_BUFFER bytes or more unconsumed: a frontend with that much
        // room is never stuck.
        d.feed(piece);
    }
    if d.failed.is_none() {
        assert_eq!(d.client.in_flight(), d.pending.len());
    }
    let _ = d.client.handle_eof();
    assert!(d.client.is_closed());
});
