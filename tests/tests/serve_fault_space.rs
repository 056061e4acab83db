//! Fault: the backend runs out of space. A 64 MiB sparse file on a small
//! file system (tmpfs with `size=8m`, and ext4 on a loop-mounted 16 MiB
//! image) is exported; writes past what the file system can allocate fail.
//!
//! What is lost: nothing that was acknowledged. The writes that cannot be
//! allocated fail with ENOSPC (libnbd's `errnum`, qemu-io's "No space left
//! on device"), and only those: reads, overwrites of allocated blocks,
//! flushes and trims keep working on the same connection, the server keeps
//! serving other clients, space freed by a trim can be written again, and
//! every acknowledged write reads back, through the server and in the file
//! after the server stopped.
//!
//! Mounting needs root: under CI (CI=true) not being root is a failure.

use blockwire_tests::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A file system mounted on a fresh directory, unmounted on drop (lazily
/// if something still holds it, so that a failing test cannot leave a
/// mount behind).
struct Mount {
    dir: TmpDir,
    point: PathBuf,
}

impl Mount {
    fn tmpfs(size: &str) -> Mount {
        let dir = TmpDir::new("tmpfs");
        let point = dir.join("mnt");
        std::fs::create_dir(&point).unwrap();
        run_ok(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                point.to_str().unwrap(),
            ],
        );
        Mount { dir, point }
    }

    /// ext4 in an image file of `size` bytes, loop-mounted (`mount -o
    /// loop` detaches the loop device again on unmount).
    fn ext4(size: u64) -> Mount {
        let dir = TmpDir::new("ext4");
        let image = dir.join("fs.img");
        sparse_file(&image, size);
        run_ok("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        let point = dir.join("mnt");
        std::fs::create_dir(&point).unwrap();
        run_ok(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap(),
                point.to_str().unwrap(),
            ],
        );
        Mount { dir, point }
    }

    fn path(&self) -> &Path {
        &self.point
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let p = self.point.to_str().unwrap();
        let ok = Command::new("umount")
            .arg(p)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").args(["-l", p]).status();
        }
        let _ = &self.dir;
    }
}

const EXPORT_SIZE: u64 = 64 * MIB;

/// Fills the file system through one libnbd connection with 1 MiB writes
/// (block i carries bytes derived from i), then checks what the module
/// comment promises; prints `FULL <first failed block>` when the file
/// system is full and waits for a line on stdin (the test runs qemu-io
/// and nbdinfo meanwhile), then `OK <acknowledged blocks as JSON>`.
const FILLER: &str = r#"
import errno, json, sys, nbd
uri = sys.argv[1]
MB = 1 << 20
def block(i, gen=0):
    return bytes([(i * 7 + gen * 13 + 1) % 251]) * 4096 * 256
def enospc(what, f, *a):
    try:
        f(*a)
    except nbd.Error as e:
        assert e.errnum == errno.ENOSPC, "%s: expected ENOSPC, got %s (%s)" % (what, e.errnum, e)
        return True
    return False
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
nblocks = h.get_size() // MB
acked, failed = [], []
for i in range(nblocks):
    if enospc("write of block %d" % i, h.pwrite, block(i), i * MB):
        failed.append(i)
    else:
        acked.append(i)
assert len(acked) >= 3, "only %d writes succeeded" % len(acked)
assert failed, "the file system never filled up"
# Still full: a write of zeroes that must allocate (NO_HOLE) fails too.
assert enospc("zero NO_HOLE of block %d" % failed[-1],
              lambda: h.zero(MB, failed[-1] * MB, nbd.CMD_FLAG_NO_HOLE)), "zero allocated on a full fs"
# Only those fail: reads, overwrites of allocated blocks, flush, status.
for i in acked:
    assert h.pread(MB, i * MB) == block(i), "acknowledged block %d reads back wrong" % i
h.pread(MB, failed[-1] * MB)
h.pwrite(block(acked[0], 1), acked[0] * MB)
h.flush()
seen = []
h.block_status(h.get_size(), 0, lambda ctx, off, ents, err: seen.append(len(ents)))
assert seen, "no block status reply"
print("FULL %d" % failed[-1], flush=True)
sys.stdin.readline()
# Trim frees space; a block that failed before can be written now.
for i in acked[-2:]:
    h.trim(MB, i * MB)
    assert h.pread(MB, i * MB) == bytes(MB), "trimmed block %d does not read as zeroes" % i
h.pwrite(block(failed[-1]), failed[-1] * MB)
assert h.pread(MB, failed[-1] * MB) == block(failed[-1])
h.flush()
h.shutdown()
final = {i: 0 for i in acked[:-2]}
final[acked[0]] = 1
final[failed[-1]] = 0
print("OK " + json.dumps(final), flush=True)
"#;

fn block(i: u64, generation: u64) -> Vec<u8> {
    vec![((i * 7 + generation * 13 + 1) % 251) as u8; MIB as usize]
}

fn out_of_space(fs: &Mount, what: &str) {
    let img = fs.path().join("disk.img");
    sparse_file(&img, EXPORT_SIZE);
    let Some(mut srv) = Server::start(&[img.to_str().unwrap()]) else {
        return;
    };
    let mut filler = PyChild::spawn(FILLER, &[&srv.uri_unix("")]);
    let full = filler.wait_line("FULL ", Duration::from_secs(120));
    let failed: u64 = full["FULL ".len()..].parse().unwrap();

    // While full, qemu-io's write into unallocated space fails with the
    // message of ENOSPC, and the server serves reads to everyone.
    let offset = (failed * MIB).to_string();
    let args = [
        "-f",
        "raw",
        "-c",
        &format!("write -P 0x5a {offset} 1M"),
        &srv.uri_tcp(""),
    ];
    let out = run("qemu-io", &args);
    let text = stdout_str(&out) + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("No space left on device"),
        "{what}: qemu-io write on a full file system: {}",
        explain("qemu-io", &args, &out)
    );
    let args = ["-f", "raw", "-c", "read 0 1M", &srv.uri_tcp("")];
    let out = run("qemu-io", &args);
    assert!(
        stdout_str(&out).contains("read 1048576/1048576"),
        "{what}: qemu-io read on a full file system: {}",
        explain("qemu-io", &args, &out)
    );
    for (t, uri) in srv.uris() {
        let out = run("nbdinfo", &[uri.as_str()]);
        assert!(
            out.status.success(),
            "{what}: {t}: nbdinfo while full: {}",
            explain("nbdinfo", &[&uri], &out)
        );
    }

    filler.send("go");
    let ok = filler.wait_line("OK ", Duration::from_secs(120));
    filler.finish_ok(Duration::from_secs(30));
    srv.assert_running(what);
    for st in srv.stop() {
        assert!(st.success(), "{what}: server exit {st}\n{}", srv.stderr());
    }
    // Every acknowledged write is in the file.
    let acked: serde_json::Value = serde_json::from_str(&ok["OK ".len()..]).unwrap();
    let acked = acked.as_object().unwrap();
    assert!(acked.len() >= 2, "{what}: too few acknowledged blocks");
    for (i, generation) in acked {
        let i: u64 = i.parse().unwrap();
        let got = read_at(&img, i * MIB, MIB as usize);
        assert!(
            got == block(i, generation.as_u64().unwrap()),
            "{what}: acknowledged block {i} is not in the file"
        );
    }
}

#[test]
fn enospc_on_tmpfs_fails_only_the_writes_that_need_space() {
    require!("python3-nbd", "qemu-io", "nbdinfo");
    if !need_root("mounting a tmpfs") {
        return;
    }
    let fs = Mount::tmpfs("8m");
    out_of_space(&fs, "tmpfs size=8m");
}

#[test]
fn enospc_on_ext4_fails_only_the_writes_that_need_space() {
    require!("python3-nbd", "qemu-io", "nbdinfo", "mkfs.ext4");
    if !need_root("loop-mounting ext4") {
        return;
    }
    let fs = Mount::ext4(16 * MIB);
    out_of_space(&fs, "ext4 16 MiB");
}
