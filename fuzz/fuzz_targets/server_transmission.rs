//! The server's transmission phase: a fixed valid handshake for the chosen
//! header mode and export, then arbitrary request bytes in arbitrary splits.
//!
//! Input: configuration byte, four split sizes, request bytes.
//! Configuration bits: 0-1 header mode (simple, structured, extended,
//! extended); 2-3 export (disk, ro, bs, disk); 4 select metadata contexts;
//! 5 shut down halfway; 6 take write payloads with `skip_payload`.
#![no_main]

use blockwire_core::server::ServerConfig;
use blockwire_fuzz::scripts::{transmission_mode, transmission_prefix};
use blockwire_fuzz::server::ServerDriver;
use blockwire_fuzz::{Splitter, TestExports, split_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((cfg, sizes, bytes)) = split_header(data) else {
        return;
    };
    let mut d = ServerDriver::new(TestExports::standard(), ServerConfig::default());
    d.skip_payloads = cfg & 0x40 != 0;
    let prefix = transmission_prefix(cfg);
    for piece in Splitter::new(&prefix, sizes) {
        d.feed(piece);
    }
    let session = d
        .session
        .expect("valid handshake prefix did not reach Ready");
    assert_eq!(session.mode, transmission_mode(cfg));
    let half = bytes.len() / 2;
    let mut fed = 0;
    let mut shut = false;
    for piece in Splitter::new(bytes, sizes) {
        d.feed(piece);
        fed += piece.len();
        if cfg & 0x20 != 0 && !shut && fed >= half {
            shut = true;
            d.shutdown();
            d.pump();
        }
        // The machine never buffers more than a header; the frontend's
        // buffer only holds what it was just given.
        assert!(d.buf.len() <= piece.len() + 32 || d.closed);
    }
    d.drain();
    d.check_output();
});
