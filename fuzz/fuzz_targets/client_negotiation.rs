//! The client handshake against a hostile server: arbitrary server bytes in
//! arbitrary splits.
//!
//! Input: configuration byte (see `client::config_from`; bit 7 keeps
//! buffered bytes on StartTls instead of dropping them), four split sizes,
//! server bytes.
#![no_main]

use blockwire_fuzz::client::{ClientDriver, config_from};
use blockwire_fuzz::{Splitter, check_client_handshake_output, split_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((cfg, sizes, bytes)) = split_header(data) else {
        return;
    };
    let mut d: ClientDriver = ClientDriver::new(config_from(cfg));
    d.tls_clear_buffer = cfg & 0x80 == 0;
    for piece in Splitter::new(bytes, sizes) {
        // The driver checks that the client never waits with
        // INPUT_BUFFER bytes or more unconsumed: a frontend with that much
        // room is never stuck.
        d.feed(piece);
    }
    check_client_handshake_output(&d.out);
    let eof = d.client.handle_eof();
    if eof.is_ok() {
        assert!(d.client.is_closed());
        assert!(d.finished || d.ready.is_some());
    }
});
