//! Shared pieces of the fuzz targets: a test export table, input splitting,
//! drivers that run the documented loops of the server and client
//! machines, and the byte scripts the seed corpora are made of.
//!
//! Every target that takes raw bytes starts with the same 5-byte header:
//! one configuration byte (its bits mean something per target) and four
//! chunk sizes, cycled, that say how the rest is cut into `handle_input`
//! calls (0 means "everything that is left").

pub mod client;
pub mod qcow2;
pub mod scripts;
pub mod server;

/// Bytes of the common header: a configuration byte and four split sizes.
pub const HEADER: usize = 5;

/// Configuration byte, split sizes, and the rest of a raw input.
pub fn split_header(data: &[u8]) -> Option<(u8, [u8; 4], &[u8])> {
    if data.len() < HEADER {
        return None;
    }
    Some((
        data[0],
        [data[1], data[2], data[3], data[4]],
        &data[HEADER..],
    ))
}

/// Cuts a byte stream into pieces of the given (cycled) sizes.
pub struct Splitter<'a> {
    rest: &'a [u8],
    sizes: [u8; 4],
    i: usize,
}

impl<'a> Splitter<'a> {
    pub fn new(bytes: &'a [u8], sizes: [u8; 4]) -> Self {
        Self {
            rest: bytes,
            sizes,
            i: 0,
        }
    }

    pub fn remaining(&self) -> usize {
        self.rest.len()
    }
}

impl<'a> Iterator for Splitter<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let s = self.sizes[self.i % 4] as usize;
        self.i += 1;
        let n = if s == 0 {
            self.rest.len()
        } else {
            s.min(self.rest.len())
        };
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Some(a)
    }
}

#[path = "../../core/tests/common/exports.rs"]
mod exports;
pub use exports::*;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(b[at..at + 2].try_into().unwrap())
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// Big-endian readers for the targets.
pub mod be {
    pub fn u16(b: &[u8], at: usize) -> u16 {
        super::be16(b, at)
    }
    pub fn u32(b: &[u8], at: usize) -> u32 {
        super::be32(b, at)
    }
    pub fn u64(b: &[u8], at: usize) -> u64 {
        super::be64(b, at)
    }
}

/// Check that a server's handshake output is a greeting followed by whole
/// option replies, optionally ending with an `EXPORT_NAME` reply (10 or 134
/// bytes) when `export_name_ok`.
pub fn check_server_handshake_output(out: &[u8], export_name_ok: bool) {
    assert!(out.len() >= 18, "no greeting");
    assert_eq!(&out[..16], b"NBDMAGICIHAVEOPT");
    let mut rest = &out[18..];
    while rest.len() >= 20 && be64(rest, 0) == blockwire_core::wire::OPTION_REPLY_MAGIC {
        let len = be32(rest, 16) as usize;
        assert!(rest.len() >= 20 + len, "truncated option reply");
        let ty = be32(rest, 12);
        let body = &rest[20..20 + len];
        // Payloads of the fixed-layout replies must match their type.
        match ty {
            1 => assert_eq!(len, 0, "ACK with a payload"),
            2 => {
                assert!(len >= 4);
                assert!(be32(body, 0) as usize <= len - 4, "SERVER name overruns");
            }
            3 => {
                assert!(len >= 2);
                match be16(body, 0) {
                    0 => assert_eq!(len, 12),
                    3 => assert_eq!(len, 14),
                    _ => {}
                }
            }
            4 => assert!(len >= 4),
            _ => {}
        }
        rest = &rest[20 + len..];
    }
    if !rest.is_empty() {
        assert!(
            export_name_ok && (rest.len() == 10 || rest.len() == 134),
            "trailing handshake bytes: {} (export name ok: {export_name_ok})",
            rest.len()
        );
    }
}

/// Check that a client's handshake output is client flags followed by whole
/// options with the `IHAVEOPT` magic; returns the option codes.
pub fn check_client_handshake_output(out: &[u8]) -> Vec<u32> {
    if out.is_empty() {
        return Vec::new();
    }
    assert!(out.len() >= 4);
    let flags = be32(out, 0);
    assert_eq!(flags & !3, 0, "unknown client flags {flags:#x}");
    let mut rest = &out[4..];
    let mut opts = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 16, "truncated option header");
        assert_eq!(&rest[..8], b"IHAVEOPT");
        let opt = be32(rest, 8);
        let len = be32(rest, 12) as usize;
        assert!(rest.len() >= 16 + len, "truncated option payload");
        opts.push(opt);
        rest = &rest[16 + len..];
        // After EXPORT_NAME the client may not send options.
        if opt == 1 {
            break;
        }
    }
    opts
}
