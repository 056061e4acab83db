//! The server handshake fed arbitrary client bytes in arbitrary splits.
//!
//! Input: configuration byte, four split sizes, client bytes.
//! Configuration bits: 0-1 TLS policy (Off, Allowed, Required, Allowed);
//! 2 no structured replies; 3 no extended headers; 4-5 what the frontend
//! does on StartTls (proper, keep buffer, never, proper); 6 shut down
//! halfway; 7 fire the handshake timeout at the end.
#![no_main]

use blockwire_core::server::{ServerConfig, TlsPolicy};
use blockwire_core::time::Instant;
use blockwire_fuzz::server::{ServerDriver, TlsHandling};
use blockwire_fuzz::{Splitter, TestExports, split_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((cfg, sizes, bytes)) = split_header(data) else {
        return;
    };
    let config = ServerConfig {
        tls: match cfg & 3 {
            0 => TlsPolicy::Off,
            2 => TlsPolicy::Required,
            _ => TlsPolicy::Allowed,
        },
        structured_replies: cfg & 4 == 0,
        extended_headers: cfg & 8 == 0,
        ..ServerConfig::default()
    };
    let mut d = ServerDriver::new(TestExports::standard(), config);
    d.tls = match (cfg >> 4) & 3 {
        1 => TlsHandling::KeepBuffer,
        2 => TlsHandling::Never,
        _ => TlsHandling::Proper,
    };
    let half = bytes.len() / 2;
    let mut fed = 0;
    let mut shut = false;
    for piece in Splitter::new(bytes, sizes) {
        d.feed(piece);
        fed += piece.len();
        if cfg & 0x40 != 0 && !shut && fed >= half {
            shut = true;
            d.shutdown();
            d.pump();
        }
        // Bounded buffering: the machine stalls only while output waits
        // (the driver always drains it) or for one option's payload.
        assert!(
            d.closed || d.buf.len() <= piece.len() + blockwire_core::server::OPTION_BUFFER + 64,
            "receive buffer grows: {}",
            d.buf.len()
        );
    }
    if cfg & 0x80 != 0 {
        let deadline = d.server.poll_timeout();
        let ev = d.server.handle_timeout(Instant(u64::MAX));
        assert_eq!(ev.is_some(), deadline.is_some());
        if ev.is_some() {
            assert!(d.server.is_closed());
            assert!(d.server.poll_timeout().is_none());
        }
    }
    d.drain();
    d.check_output();
});
