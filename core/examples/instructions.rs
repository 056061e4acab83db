//! Runs `N` requests of one kind through the core server machine (decode
//! plus reply encode), for `benches/instructions`, which counts the
//! instructions with callgrind at two values of `N` and divides the
//! difference: instructions per request, whatever the set-up costs.
//!
//! `cargo run --release -p blockwire-core --example instructions -- read|write|status N`

#[path = "../benches/support.rs"]
mod support;

use blockwire_core::wire::CommandType;
use support::*;

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_default();
    let n: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let mut s = session();
    match kind.as_str() {
        "read" => {
            let read = request(CommandType::READ, 4096);
            (0..n).for_each(|_| read_4k(&mut s, &read));
        }
        "write" => {
            let write = write_request();
            (0..n).for_each(|_| write_4k(&mut s, &write));
        }
        "status" => {
            let bs = request(CommandType::BLOCK_STATUS, 1 << 20);
            let mut out = vec![0u8; 4096];
            let mut scratch = Vec::new();
            (0..n).for_each(|_| block_status_16(&mut s, &bs, &mut out, &mut scratch));
        }
        other => {
            eprintln!("unknown request kind {other:?}: read, write or status");
            std::process::exit(2);
        }
    }
}
