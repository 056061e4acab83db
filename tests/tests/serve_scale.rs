//! Memory that must not grow with the export's size: a 16 TiB `--memory`
//! export with a dirty bitmap has a 64 MiB allocation map and a 32 MiB
//! bitmap (2 bits and 1 bit per 64 KiB), which must stay out of the
//! server's resident memory until written. Measured in /proc, not timed.

use blockwire_tests::*;

const TIB: u64 = 1 << 40;
const MIB: u64 = 1 << 20;
/// Resident-memory ceiling for the server with the export above, written
/// in a few places: well above an idle server (~10 MiB), well below the
/// 96 MiB of metadata it would hold if the map and bitmap were resident.
const RSS_BOUND: u64 = 48 * MIB;

fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    kb * 1024
}

const WRITES: &str = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = h.get_size()
for off in (0, size // 2, size - 65536):
    h.pwrite(b"\xab" * 65536, off)
h.flush()
assert h.pread(65536, size // 2) == b"\xab" * 65536
assert h.pread(4096, size // 2 + 65536) == bytes(4096)
h.shutdown()
"#;

#[test]
fn huge_memory_export_metadata_is_not_resident() {
    if is_standin() || !need(&["nbdinfo", "python3-nbd"]) {
        return;
    }
    let size = 16 * TIB;
    let srv = Server::start(&["--memory", "16T", "--dirty-bitmap", "b0"]).expect("server");
    let pid = srv.pids()[0];
    let idle = rss(pid);
    assert!(
        idle < RSS_BOUND,
        "16 TiB memory export + bitmap: RSS {} MiB at start, bound {} MiB",
        idle / MIB,
        RSS_BOUND / MIB
    );
    let uri = srv.uri_unix("");
    py_ok(WRITES, &[&uri]);
    let half = size / 2;
    let chunk = 65536;
    let want_alloc = vec![
        (0, chunk, 0),
        (chunk, half - chunk, 3),
        (half, chunk, 0),
        (half + chunk, half - 2 * chunk, 3),
        (size - chunk, chunk, 0),
    ];
    assert_eq!(
        merge_extents(&nbdinfo_map(&uri, None)),
        want_alloc,
        "base:allocation"
    );
    let dirty: Vec<_> = want_alloc
        .iter()
        .map(|&(o, l, t)| (o, l, if t == 0 { 1 } else { 0 }))
        .collect();
    assert_eq!(
        merge_extents(&nbdinfo_map(&uri, Some("qemu:dirty-bitmap:b0"))),
        dirty,
        "qemu:dirty-bitmap:b0"
    );
    let after = rss(pid);
    assert!(
        after < RSS_BOUND,
        "16 TiB memory export + bitmap after writes and two full maps: RSS {} MiB, bound {} MiB",
        after / MIB,
        RSS_BOUND / MIB
    );
}

/// A 4 TiB disk's 16 MiB map and 8 MiB bitmap are below glibc's largest
/// dynamic mmap threshold: they must still not be resident (the server
/// fixes the threshold). Compared with a null export of the same size,
/// which has neither.
#[test]
fn mid_size_memory_export_metadata_is_not_resident() {
    if is_standin() {
        return;
    }
    let null = Server::start(&["--null", "4T"]).expect("server");
    let base = rss(null.pids()[0]);
    drop(null);
    let srv = Server::start(&["--memory", "4T", "--dirty-bitmap", "b0"]).expect("server");
    let got = rss(srv.pids()[0]);
    assert!(
        got < base + 4 * MIB,
        "4 TiB memory export + bitmap: RSS {} KiB, a null export's {} KiB (+4 MiB allowed; map and bitmap are 24 MiB)",
        got / 1024,
        base / 1024
    );
}
