//! `blockwire serve` on qcow2 images made by qemu-img 10, against
//! qemu-nbd on the same images: reads byte for byte, `base:allocation`
//! and `qemu:allocation-depth` maps; writes checked by `qemu-img check`
//! and `qemu-img compare` against a raw file given the same writes; the
//! server killed under a write load; hostile images refused.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use blockwire_tests::*;

/// qemu-nbd serving one qcow2 image read-only, persistent, with
/// `qemu:allocation-depth`.
struct QemuNbd {
    child: Child,
    sock: PathBuf,
}

impl QemuNbd {
    fn start(img: &Path, dir: &TmpDir) -> QemuNbd {
        let sock = dir.join("qemu-nbd.sock");
        let _ = fs::remove_file(&sock);
        let mut child = Command::new("qemu-nbd")
            .args(["-t", "-e", "4", "-r", "-f", "qcow2", "-A", "-k"])
            .arg(&sock)
            .arg(img)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn qemu-nbd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&sock).is_err() {
            if let Some(st) = child.try_wait().expect("try_wait") {
                panic!("qemu-nbd on {} exited with {st}", img.display());
            }
            assert!(Instant::now() < deadline, "qemu-nbd not listening");
            thread::sleep(Duration::from_millis(20));
        }
        QemuNbd { child, sock }
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.sock.display())
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn qemu_img(args: &[&str]) {
    run_ok("qemu-img", args);
}

/// qemu-io on an image of format `fmt`; fails on any failure message.
fn qemu_io(fmt: &str, target: &str, cmds: &[String]) {
    let mut args: Vec<&str> = vec!["-f", fmt];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(target);
    let out = run("qemu-io", &args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("fail") && !text.contains("rror"),
        "qemu-io failed: {}",
        explain("qemu-io", &args, &out)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn cmds(v: &[&str]) -> Vec<String> {
    v.iter().map(|c| c.to_string()).collect()
}

/// Random reads (unaligned offsets and lengths) through libnbd: one hash
/// over all of them.
const RANDOM_READS: &str = r#"
import hashlib, random, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = h.get_size()
r = random.Random(int(sys.argv[2]))
d = hashlib.sha256()
for _ in range(200):
    n = r.randint(1, 300000)
    off = r.randrange(0, max(1, size - n))
    d.update(h.pread(min(n, size - off), off))
print(d.hexdigest())
"#;

fn random_reads(uri: &str, seed: u64) -> String {
    stdout_str(&py_ok(RANDOM_READS, &[uri, &seed.to_string()]))
        .trim()
        .to_string()
}

/// The whole disk through `nbdcopy`.
fn whole(uri: &str, out: &Path) -> Vec<u8> {
    run_ok("nbdcopy", &[uri, s(out)]);
    let v = fs::read(out).unwrap();
    fs::remove_file(out).unwrap();
    v
}

/// Serves `img` with blockwire and qemu-nbd and compares everything a
/// client can see.
fn same_as_qemu_nbd(dir: &TmpDir, img: &Path, what: &str) {
    same_as_qemu_nbd_on(dir, &["-r", "--allocation-depth", s(img)], img, what);
}

/// blockwire with `args` against qemu-nbd on `img`.
fn same_as_qemu_nbd_on(dir: &TmpDir, args: &[&str], img: &Path, what: &str) {
    let Some(srv) = Server::start(args) else {
        return;
    };
    let q = QemuNbd::start(img, dir);
    let (bw, qn) = (srv.uri_unix(""), q.uri());
    let a = whole(&bw, &dir.join("bw.raw"));
    let b = whole(&qn, &dir.join("qn.raw"));
    assert!(a == b, "{what}: contents differ from qemu-nbd's");
    assert_eq!(
        random_reads(&bw, 7),
        random_reads(&qn, 7),
        "{what}: random reads differ"
    );
    for ctx in [None, Some("qemu:allocation-depth")] {
        let m1 = merge_extents(&nbdinfo_map(&bw, ctx));
        let m2 = merge_extents(&nbdinfo_map(&qn, ctx));
        assert_eq!(m1, m2, "{what}: map {ctx:?} differs from qemu-nbd's");
    }
}

fn create(img: &Path, opts: &str, size: &str) {
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", opts, s(img), size]);
}

/// A mix of data, zero clusters (v3), partial clusters and discards.
fn scribble(img: &Path) {
    qemu_io(
        "qcow2",
        s(img),
        &cmds(&[
            "write -P 0x11 0 100k",
            "write -P 0x22 1000k 4k",
            "write -z 2M 192k",
            "write -P 0x33 5M 1M",
            "discard 5M 64k",
            "write -P 0x44 7M 1536",
            "write -P 0x55 12M 2M",
        ]),
    );
}

#[test]
fn images_read_and_map_as_qemu_nbd_serves_them() {
    require!(
        "qemu-img",
        "qemu-io",
        "qemu-nbd",
        "nbdinfo",
        "nbdcopy",
        "python3-nbd"
    );
    let dir = TmpDir::new("qcow2-read");
    for (name, opts) in [
        ("v2", "compat=0.10"),
        ("v3-512", "cluster_size=512"),
        ("v3-64k", "cluster_size=64k"),
        ("v3-2m", "cluster_size=2M"),
        ("extl2", "extended_l2=on,cluster_size=128k"),
        ("refcount1", "refcount_bits=1"),
    ] {
        let img = dir.join(&format!("{name}.qcow2"));
        create(&img, opts, "32M");
        scribble(&img);
        same_as_qemu_nbd(&dir, &img, name);
    }

    // Extended L2: writes of single subclusters, zeroes of subclusters.
    let img = dir.join("sub.qcow2");
    create(&img, "extended_l2=on,cluster_size=64k", "16M");
    qemu_io(
        "qcow2",
        s(&img),
        &cmds(&[
            "write -P 0x61 2k 2k",
            "write -P 0x62 70k 6k",
            "write -z 68k 2k",
        ]),
    );
    same_as_qemu_nbd(&dir, &img, "subclusters");

    // Compressed clusters from convert -c.
    let raw = dir.join("src.raw");
    write_patterned(&raw, 8 * MIB);
    qemu_io("raw", s(&raw), &cmds(&["write -z 1M 1M"]));
    let comp = dir.join("comp.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        s(&raw),
        s(&comp),
    ]);
    same_as_qemu_nbd(&dir, &comp, "compressed");

    // preallocation=metadata: data clusters over holes of the file.
    let pre = dir.join("prealloc.qcow2");
    create(&pre, "preallocation=metadata", "16M");
    qemu_io("qcow2", s(&pre), &cmds(&["write -P 0x71 64k 64k"]));
    same_as_qemu_nbd(&dir, &pre, "preallocation=metadata");

    // A three-deep chain: raw base, two qcow2 layers, a qcow2 top (the
    // top smaller layers than the base show it past their ends too).
    let base = dir.join("base.raw");
    write_patterned(&base, 16 * MIB);
    let mid = dir.join("mid.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        "base.raw",
        s(&mid),
        "16M",
    ]);
    qemu_io(
        "qcow2",
        s(&mid),
        &cmds(&["write -P 0x81 1M 1M", "write -z 4M 64k"]),
    );
    let mid2 = dir.join("mid2.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        "mid.qcow2",
        s(&mid2),
        "24M",
    ]);
    qemu_io(
        "qcow2",
        s(&mid2),
        &cmds(&["write -P 0x82 1536k 1M", "discard 8M 128k"]),
    );
    let top = dir.join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        "mid2.qcow2",
        s(&top),
        "32M",
    ]);
    qemu_io(
        "qcow2",
        s(&top),
        &cmds(&["write -P 0x83 100k 8k", "write -P 0x84 20M 64k"]),
    );
    same_as_qemu_nbd(&dir, &top, "three-deep chain");
}

/// `qemu-img check`: no corruption, no leak, no check error.
fn assert_check_clean(img: &Path, what: &str) {
    let out = run("qemu-img", &["check", "-f", "qcow2", s(img)]);
    assert!(
        out.status.success(),
        "{what}: qemu-img check: {}",
        explain("qemu-img", &["check", s(img)], &out)
    );
}

fn assert_same_as_raw(img: &Path, raw: &Path, what: &str) {
    let out = run(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", s(img), s(raw)],
    );
    assert!(
        out.status.success(),
        "{what}: qemu-img compare: {}",
        explain("qemu-img", &["compare", s(img), s(raw)], &out)
    );
}

/// One request of a write workload.
enum W {
    Write(u8, u64, u64),
    Zero(u64, u64),
    ZeroUnmap(u64, u64),
    Discard(u64, u64),
}

/// Applies `ops` through blockwire serving `img`, and to `raw` directly
/// with what they mean for qcow2 (a discard zeroes the whole clusters it
/// covers and leaves partial ones alone, as QEMU's qcow2 does), then
/// checks the image and compares it with the raw file.
fn writes_match_raw(img: &Path, raw: &Path, cluster: u64, ops: &[W], what: &str) {
    let Some(mut srv) = Server::start(&[s(img)]) else {
        return;
    };
    let mut through = Vec::new();
    let mut direct = Vec::new();
    for op in ops {
        match *op {
            W::Write(p, o, l) => {
                through.push(format!("write -P {p} {o} {l}"));
                direct.push(format!("write -P {p} {o} {l}"));
            }
            W::Zero(o, l) => {
                through.push(format!("write -z {o} {l}"));
                direct.push(format!("write -z {o} {l}"));
            }
            W::ZeroUnmap(o, l) => {
                through.push(format!("write -z -u {o} {l}"));
                direct.push(format!("write -z {o} {l}"));
            }
            W::Discard(o, l) => {
                through.push(format!("discard {o} {l}"));
                let (a, b) = (o.div_ceil(cluster) * cluster, (o + l) / cluster * cluster);
                if a < b {
                    direct.push(format!("write -z {a} {}", b - a));
                }
            }
        }
    }
    through.push("flush".into());
    qemu_io("raw", &srv.uri_unix(""), &through);
    qemu_io("raw", s(raw), &direct);
    // Reads through the server agree before it stops, too.
    qemu_io("raw", &srv.uri_unix(""), &cmds(&["read 0 64k"]));
    srv.stop();
    assert_check_clean(img, what);
    assert_same_as_raw(img, raw, what);
}

#[test]
fn writes_leave_images_qemu_img_check_clean_and_equal_to_raw() {
    require!("qemu-img", "qemu-io");
    let dir = TmpDir::new("qcow2-write");
    const K: u64 = 1024;
    const M: u64 = 1024 * 1024;

    // Over a raw backing file shorter than the image: copy-on-write of
    // partial clusters, writes across the backing file's end, growth past
    // the first L2 table (64 KiB clusters: one table maps 512 MiB).
    let base = dir.join("base.raw");
    write_patterned(&base, 32 * M);
    let img = dir.join("over-backing.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        "base.raw",
        s(&img),
        "1536M",
    ]);
    let raw = dir.join("over-backing.raw");
    fs::copy(&base, &raw).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&raw)
        .unwrap()
        .set_len(1536 * M)
        .unwrap();
    let ops = [
        W::Write(0xa1, 60 * K, 8 * K),
        W::Write(0xa2, 1000 * K, 300 * K),
        W::Zero(130 * K, 200 * K),
        W::ZeroUnmap(2 * M, M),
        W::Discard(3000 * K, 500 * K),
        W::Write(0xa3, 700 * M, 128 * K),
        W::Write(0xa4, 1200 * M + 512, 4 * K),
        W::Write(0xa5, 30 * M, 4 * M),
        W::Write(0xa6, 100 * K, K),
        W::Discard(700 * M, 64 * K),
        W::Zero(1200 * M, 64 * K),
        W::Discard(8 * M, 256 * K),
    ];
    writes_match_raw(&img, &raw, 64 * K, &ops, "64k over raw backing");

    // No backing file, for each geometry: 512 B clusters (refcount table
    // growth after 8 MiB of host data), 2 MiB clusters, version 2 (zeroes
    // written, no zero flag), extended L2 (subcluster allocation).
    for (name, opts, cluster) in [
        ("c512", "cluster_size=512", 512),
        ("c2m", "cluster_size=2M", 2 * M),
        ("v2", "compat=0.10", 64 * K),
        ("extl2", "extended_l2=on,cluster_size=64k", 64 * K),
    ] {
        let img = dir.join(&format!("{name}.qcow2"));
        create(&img, opts, "64M");
        let raw = dir.join(&format!("{name}.raw"));
        sparse_file(&raw, 64 * M);
        let ops = [
            W::Write(0xb1, 0, 12 * M),
            W::Write(0xb2, 20 * M + 3 * K, 5 * K),
            W::Zero(K, 3 * K),
            W::ZeroUnmap(4 * M - 1000, 4 * M),
            W::Discard(6 * M + 100, 2 * M),
            W::Write(0xb3, 40 * M, 2 * K),
            W::Write(0xb4, 40 * M + 6 * K, 2 * K),
            W::Zero(40 * M + K, 2 * K),
            W::Write(0xb5, 63 * M, M),
            W::Discard(0, 64 * M),
            W::Write(0xb6, 33 * M, 3 * M),
        ];
        writes_match_raw(&img, &raw, cluster, &ops, name);
    }
}

/// Writes patterned ranges, one per slot (so no two overlap), with FUA at
/// random or followed by a flush at random; prints `D OFF LEN BYTE` for
/// each write once it is durable (its FUA reply, or the reply of a later
/// flush), then `END`, and waits; `DEAD` once the server is gone.
const CRASH_WRITER: &str = r#"
import random, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("READY", flush=True)
first, count, seed, slot = (int(a) for a in sys.argv[2:6])
r = random.Random(seed)
pending = []
try:
    for i in range(first, first + count):
        off = i * slot + r.randrange(0, 64 * 1024)
        n = r.randint(1, slot - 64 * 1024)
        p = i % 250 + 1
        fua = r.random() < 0.3
        h.pwrite(bytes([p]) * n, off, nbd.CMD_FLAG_FUA if fua else 0)
        if fua:
            print("D", off, n, p, flush=True)
        else:
            pending.append((off, n, p))
        if r.random() < 0.2:
            h.flush()
            for (o, l, q) in pending:
                print("D", o, l, q, flush=True)
            pending = []
except nbd.Error:
    print("DEAD", flush=True)
    sys.exit(0)
print("END", flush=True)
sys.stdin.read()
"#;

/// `qemu-img check`: corruptions and check errors (leaks are allowed
/// after a crash, as QEMU allows them).
fn assert_not_corrupt(img: &Path, what: &str) {
    let out = run(
        "qemu-img",
        &["check", "--output=json", "-f", "qcow2", s(img)],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: qemu-img check output: {e}: {}",
            explain("qemu-img", &["check", s(img)], &out)
        )
    });
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    assert!(
        n("corruptions") == 0 && n("check-errors") == 0 && matches!(out.status.code(), Some(0 | 3)),
        "{what}: qemu-img check: {v}"
    );
}

#[test]
fn sigkill_under_writes_never_corrupts_and_keeps_durable_writes() {
    require!("qemu-img", "qemu-io", "python3-nbd");
    let dir = TmpDir::new("qcow2-crash");
    // Over a raw backing file, so that partial clusters are copied up.
    let base = dir.join("base.raw");
    write_patterned(&base, 64 * MIB);
    let img = dir.join("crash.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        "base.raw",
        s(&img),
        "256M",
    ]);
    const ITERATIONS: u64 = 30;
    const PER: u64 = 32;
    const SLOT: u64 = 192 * 1024;
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n.max(1)
    };
    let mut durable: Vec<String> = Vec::new();
    for it in 0..ITERATIONS {
        let what = format!("iteration {it}");
        let Some(mut srv) = Server::start(&[s(&img)]) else {
            return;
        };
        let uri = srv.uri_unix("");
        let args = [
            uri.clone(),
            (it * PER).to_string(),
            PER.to_string(),
            it.to_string(),
            SLOT.to_string(),
        ];
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut w = PyChild::spawn(CRASH_WRITER, &a);
        w.wait_line("READY", Duration::from_secs(60));
        let mut lines = Vec::new();
        // Kill after a random number of acknowledged writes, a random
        // moment later: inside writes, copy-ups, flushes, growth.
        let target = next(PER + 1);
        let mut ended = false;
        while (lines.len() as u64) < target {
            let l = w.wait_line("", Duration::from_secs(60));
            if l == "END" {
                ended = true;
                break;
            }
            lines.push(l);
        }
        thread::sleep(Duration::from_micros(next(3000)));
        srv.kill();
        // Every line the writer printed before the kill counts: read up
        // to its last word.
        while !ended {
            let l = w.wait_line("", Duration::from_secs(60));
            ended = l == "END" || l == "DEAD";
            lines.push(l);
        }
        let _ = w.finish(Duration::from_secs(30));
        for l in lines {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.first() == Some(&"D") {
                durable.push(format!("read -P {} {} {}", f[3], f[1], f[2]));
            }
        }
        assert_not_corrupt(&img, &what);
        if !durable.is_empty() {
            qemu_io("qcow2", s(&img), &durable);
        }
    }
    eprintln!("{} durable writes verified", durable.len());
    assert!(!durable.is_empty(), "no write was ever acknowledged");
}

/// `blockwire serve IMG` on a hostile image: exit status 1 and one clear
/// line about the image, promptly.
fn refused(img: &Path, dir: &TmpDir, expect: &str) {
    if is_standin() {
        return;
    }
    let mut cmd = Command::new(blockwire_bin());
    cmd.args(["serve", "--listen"])
        .arg(format!("unix:{}", dir.join("hostile.sock").display()))
        .arg(img);
    let out = run_cmd(cmd, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}: {err}", img.display());
    assert!(
        err.contains(expect) && err.trim().lines().count() == 1,
        "{}: expected one line with {expect:?}, got: {err}",
        img.display()
    );
}

fn patch(img: &Path, offset: u64, bytes: &[u8]) {
    write_at(img, offset, bytes);
}

#[test]
fn hostile_images_are_refused_with_a_clear_error() {
    require!("qemu-img", "qemu-io");
    let dir = TmpDir::new("qcow2-hostile");
    let fresh = |name: &str| {
        let img = dir.join(name);
        create(&img, "cluster_size=64k", "64M");
        qemu_io("qcow2", s(&img), &cmds(&["write -P 1 0 64k"]));
        img
    };
    // L1 table past the end of the file (CVE-2014-0144 class).
    let img = fresh("l1-beyond.qcow2");
    patch(&img, 40, &(1u64 << 40).to_be_bytes());
    refused(&img, &dir, "Could not open");
    // An L1 table larger than any memory limit (CVE-2014-0143 class).
    let img = fresh("l1-huge.qcow2");
    patch(&img, 36, &0x7fff_ffffu32.to_be_bytes());
    refused(&img, &dir, "Could not open");
    // A refcount table far larger than the file.
    let img = fresh("reftable-huge.qcow2");
    patch(&img, 56, &0x00ff_ffffu32.to_be_bytes());
    refused(&img, &dir, "Could not open");
    // An unknown incompatible feature.
    let img = fresh("incompat.qcow2");
    patch(&img, 72, &(1u64 << 40).to_be_bytes());
    refused(&img, &dir, "Could not open");
    // Snapshot table claiming more snapshots than the limit
    // (CVE-2014-0145/0146 class).
    let img = fresh("snapshots.qcow2");
    patch(&img, 60, &0x00ff_ffffu32.to_be_bytes());
    patch(&img, 64, &(64u64 * 1024).to_be_bytes());
    refused(&img, &dir, "Could not open");
    // A backing chain that loops: a -> b -> a.
    let b = dir.join("b.qcow2");
    create(&b, "cluster_size=64k", "64M");
    let a = dir.join("a.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        "b.qcow2",
        s(&a),
        "64M",
    ]);
    qemu_img(&[
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        "a.qcow2",
        s(&b),
    ]);
    refused(&a, &dir, "backing chain loops");
}

/// An L2 entry with an unaligned host offset (QEMU: corruption) fails
/// the read that meets it with EIO; the server goes on serving the rest.
#[test]
fn bad_l2_entries_fail_the_request_not_the_server() {
    require!("qemu-img", "qemu-io", "python3-nbd");
    let dir = TmpDir::new("qcow2-badl2");
    let img = dir.join("bad-l2.qcow2");
    create(&img, "cluster_size=64k", "64M");
    qemu_io(
        "qcow2",
        s(&img),
        &cmds(&["write -P 1 0 64k", "write -P 2 1M 64k"]),
    );
    // Find the L2 table through the L1 table and point cluster 0 inside
    // a cluster.
    let hdr = read_at(&img, 40, 8);
    let l1 = u64::from_be_bytes(hdr.try_into().unwrap());
    let e = read_at(&img, l1, 8);
    let l2 = u64::from_be_bytes(e.try_into().unwrap()) & 0x00ff_ffff_ffff_fe00;
    patch(&img, l2, &((1u64 << 63) | (MIB + 512)).to_be_bytes());
    let Some(mut srv) = Server::start(&["-r", s(&img)]) else {
        return;
    };
    let out = py(
        r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
try:
    h.pread(4096, 0)
    print("read succeeded")
except nbd.Error as e:
    print("errno", e.errno)
print("ok" if h.pread(65536, 1 << 20) == b"\x02" * 65536 else "bad")
"#,
        &[&srv.uri_unix("")],
    );
    let text = stdout_str(&out);
    assert!(
        text.contains("errno EIO") && text.contains("ok"),
        "bad L2 entry: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    srv.assert_running("after a bad L2 entry");
    assert!(
        srv.stderr().contains("qcow2"),
        "the log names the problem: {}",
        srv.stderr()
    );
}

/// `--blockdev` graphs: the qcow2 node over a named file node, its backing
/// given by node name, inline, or `null`.
#[test]
fn blockdev_qcow2_nodes_with_every_kind_of_backing() {
    require!(
        "qemu-img",
        "qemu-io",
        "qemu-nbd",
        "nbdinfo",
        "nbdcopy",
        "python3-nbd"
    );
    if is_standin() {
        return;
    }
    let dir = TmpDir::new("qcow2-blockdev");
    let base = dir.join("base.raw");
    write_patterned(&base, 8 * MIB);
    let top = dir.join("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        "base.raw",
        s(&top),
        "8M",
    ]);
    qemu_io(
        "qcow2",
        s(&top),
        &cmds(&["write -P 0x91 100k 200k", "write -z 2M 64k"]),
    );
    let export = r#"{"type":"nbd","id":"e","node-name":"q","name":"","allocation-depth":true}"#;
    let file = format!(
        r#"{{"driver":"file","node-name":"f","locking":"off","filename":"{}"}}"#,
        s(&top)
    );
    let bfile = format!(
        r#"{{"driver":"file","node-name":"bf","locking":"off","filename":"{}"}}"#,
        s(&base)
    );

    // The image's own backing file.
    let q = r#"{"driver":"qcow2","node-name":"q","file":"f"}"#;
    same_as_qemu_nbd_on(
        &dir,
        &["--blockdev", &file, "--blockdev", q, "--export", export],
        &top,
        "backing from the image",
    );

    // Backing by node name, and inline.
    let braw = r#"{"driver":"raw","node-name":"b","file":"bf"}"#;
    let q = r#"{"driver":"qcow2","node-name":"q","file":"f","backing":"b"}"#;
    same_as_qemu_nbd_on(
        &dir,
        &[
            "--blockdev",
            &file,
            "--blockdev",
            &bfile,
            "--blockdev",
            braw,
            "--blockdev",
            q,
            "--export",
            export,
        ],
        &top,
        "backing by node name",
    );
    let q = format!(
        r#"{{"driver":"qcow2","node-name":"q","file":"f","backing":{{"driver":"raw","file":{{"driver":"file","locking":"off","filename":"{}"}}}}}}"#,
        s(&base)
    );
    same_as_qemu_nbd_on(
        &dir,
        &["--blockdev", &file, "--blockdev", &q, "--export", export],
        &top,
        "inline backing",
    );

    // No backing: what qemu-nbd serves of a copy with the backing file
    // name removed.
    let alone = dir.join("alone.qcow2");
    fs::copy(&top, &alone).unwrap();
    qemu_img(&["rebase", "-q", "-u", "-f", "qcow2", "-b", "", s(&alone)]);
    let q = r#"{"driver":"qcow2","node-name":"q","file":"f","backing":null}"#;
    same_as_qemu_nbd_on(
        &dir,
        &["--blockdev", &file, "--blockdev", q, "--export", export],
        &alone,
        "backing null",
    );
}

/// `-f` chooses the format; without it the log says what probing chose.
#[test]
fn serve_probes_the_format_and_says_so() {
    require!("qemu-img", "nbdinfo", "python3-nbd");
    if is_standin() {
        return;
    }
    let dir = TmpDir::new("qcow2-probe");
    let img = dir.join("disk.qcow2");
    create(&img, "cluster_size=64k", "16M");
    let Some(mut srv) = Server::start(&["-v", "-r", s(&img)]) else {
        return;
    };
    let size = stdout_str(&run_ok("nbdinfo", &["--size", &srv.uri_unix("")]));
    assert_eq!(
        size.trim(),
        (16 * MIB).to_string(),
        "probed qcow2: virtual size"
    );
    srv.stop();
    assert!(
        srv.stderr().contains("format qcow2 (probed)"),
        "{}",
        srv.stderr()
    );
    // Told raw, the same file is served as it is.
    let Some(mut srv) = Server::start(&["-v", "-r", "-f", "raw", s(&img)]) else {
        return;
    };
    let size = stdout_str(&run_ok("nbdinfo", &["--size", &srv.uri_unix("")]));
    assert_eq!(
        size.trim(),
        fs::metadata(&img).unwrap().len().to_string(),
        "-f raw"
    );
    srv.stop();
    assert!(
        srv.stderr().contains("format raw (given)"),
        "{}",
        srv.stderr()
    );

    // A raw file probed as raw: a write that would make it probe as
    // qcow2 next time is refused (EPERM), as QEMU's probed raw driver
    // refuses it; other writes to the first sector are fine. Given
    // `-f raw`, the same write is allowed.
    let raw = dir.join("disk.raw");
    sparse_file(&raw, 4 * MIB);
    let Some(srv) = Server::start(&[s(&raw)]) else {
        return;
    };
    let py_write = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for data, off in ((b"QFI\xfb", 0), (b"\xfb", 3), (b"hello", 0), (b"QFI\xfb", 512)):
    try:
        h.pwrite(data, off)
        print("ok", off)
    except nbd.Error as e:
        print("refused", off, e.errno)
"#;
    let out = stdout_str(&py_ok(py_write, &[&srv.uri_unix("")]));
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["refused 0 EPERM", "ok 3", "ok 0", "ok 512"],
        "{out}"
    );
    drop(srv);
    let Some(srv) = Server::start(&["-f", "raw", s(&raw)]) else {
        return;
    };
    let out = stdout_str(&py_ok(py_write, &[&srv.uri_unix("")]));
    assert!(out.starts_with("ok 0"), "{out}");
}

/// Hundreds of writes in flight at once over two connections, many into
/// the same clusters (distinct 4 KiB blocks, so the result is defined),
/// each also applied to a raw file.
const CONCURRENT_WRITES: &str = r#"
import os, random, sys, nbd
uri, raw, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = random.Random(seed)
hs = []
for _ in range(2):
    h = nbd.NBD()
    h.connect_uri(uri)
    hs.append(h)
size = hs[0].get_size()
blocks = r.sample(range(size // 4096), 600)
fd = os.open(raw, os.O_WRONLY)
done = [0]
def cb(err):
    assert err.value == 0, err
    done[0] += 1
    return 1
issued = 0
for i, b in enumerate(blocks):
    n = r.randint(1, 4096)
    off = b * 4096 + r.randrange(0, 4096 - n + 1)
    h = hs[i % 2]
    if r.random() < 0.15:
        h.aio_zero(n, off, completion=cb)
        os.pwrite(fd, bytes(n), off)
    else:
        data = bytes([i % 251 + 1]) * n
        h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(data)), off, completion=cb)
        os.pwrite(fd, data, off)
    issued += 1
    while issued - done[0] >= 64:
        for h in hs:
            if h.aio_in_flight() > 0:
                h.poll(-1)
                break
while done[0] < issued:
    for h in hs:
        if h.aio_in_flight() > 0:
            h.poll(-1)
            break
for h in hs:
    h.flush()
os.close(fd)
print("done", done[0])
"#;

#[test]
fn concurrent_writes_into_shared_clusters_stay_consistent() {
    require!("qemu-img", "python3-nbd");
    let dir = TmpDir::new("qcow2-concurrent");
    let base = dir.join("base.raw");
    write_patterned(&base, 8 * MIB);
    for (name, opts) in [
        ("c64k", "cluster_size=64k"),
        ("extl2", "extended_l2=on,cluster_size=64k"),
        ("c512", "cluster_size=512"),
    ] {
        let img = dir.join(&format!("{name}.qcow2"));
        let o = format!("{opts},backing_file=base.raw,backing_fmt=raw");
        create(&img, &o, "8M");
        let raw = dir.join(&format!("{name}.raw"));
        fs::copy(&base, &raw).unwrap();
        let Some(mut srv) = Server::start(&[s(&img)]) else {
            return;
        };
        let out = py_ok(CONCURRENT_WRITES, &[&srv.uri_unix(""), s(&raw), "5"]);
        assert!(
            stdout_str(&out).contains("done 600"),
            "{name}: {}",
            stdout_str(&out)
        );
        srv.stop();
        assert_check_clean(&img, name);
        assert_same_as_raw(&img, &raw, name);
    }
}

/// `--cow FILE` over a file: a qcow2 overlay with the base as backing
/// file, clean for `qemu-img check`, equal to the base plus the writes,
/// kept across a restart; the base never changes.
#[test]
fn cow_file_overlays_are_qcow2_images_that_survive_a_restart() {
    require!("qemu-img", "qemu-io");
    if is_standin() {
        return;
    }
    let dir = TmpDir::new("qcow2-cow");
    for fmt in ["raw", "qcow2"] {
        let src = dir.join("src.raw");
        write_patterned(&src, 16 * MIB);
        let base = dir.join(&format!("base.{fmt}"));
        qemu_img(&["convert", "-q", "-f", "raw", "-O", fmt, s(&src), s(&base)]);
        let before = sha256(&base);
        let ov = dir.join(&format!("over-{fmt}.qcow2"));
        let expect = dir.join(&format!("expect-{fmt}.raw"));
        fs::copy(&src, &expect).unwrap();
        let writes = [
            "write -P 0x51 100k 10k",
            "write -z 3M 200k",
            "write -P 0x52 15M 1M",
        ];
        let Some(mut srv) = Server::start(&[s(&base), "--cow", s(&ov)]) else {
            return;
        };
        qemu_io("raw", &srv.uri_unix(""), &cmds(&writes[..2]));
        srv.stop();
        // Restarted: the overlay is reopened, its writes still there.
        let Some(mut srv) = Server::start(&[s(&base), "--cow", s(&ov)]) else {
            return;
        };
        qemu_io("raw", &srv.uri_unix(""), &cmds(&writes[2..]));
        srv.stop();
        qemu_io("raw", s(&expect), &cmds(&writes));
        assert_check_clean(&ov, fmt);
        assert_same_as_raw(&ov, &expect, fmt);
        assert_eq!(sha256(&base), before, "{fmt}: the base changed");
        let info = stdout_str(&run_ok("qemu-img", &["info", "--output=json", s(&ov)]));
        assert!(
            info.contains(&format!("\"backing-filename-format\": \"{fmt}\"")),
            "{info}"
        );
    }
}

/// Persistent bitmaps recorded by QEMU (qemu-img bitmap, qemu-io writes)
/// are exported as `qemu:dirty-bitmap:NAME` as qemu-nbd exports them.
#[test]
fn stored_bitmaps_are_exported_as_qemu_nbd_exports_them() {
    require!("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo");
    if is_standin() {
        return;
    }
    let dir = TmpDir::new("qcow2-bitmaps");
    let img = dir.join("bm.qcow2");
    create(&img, "cluster_size=64k", "64M");
    qemu_img(&["bitmap", "--add", s(&img), "b0"]);
    qemu_img(&["bitmap", "--add", "-g", "512k", s(&img), "b1"]);
    qemu_io(
        "qcow2",
        s(&img),
        &cmds(&["write -P 1 100k 10k", "write -z 5M 3M"]),
    );
    qemu_img(&["bitmap", "--disable", s(&img), "b1"]);
    qemu_io(
        "qcow2",
        s(&img),
        &cmds(&["write -P 2 40M 1M", "discard 63M 64k"]),
    );
    let Some(srv) = Server::start(&[
        "-r",
        "--dirty-bitmap",
        "b0",
        "--dirty-bitmap",
        "b1",
        s(&img),
    ]) else {
        return;
    };
    for b in ["b0", "b1"] {
        let sock = dir.join(&format!("qn-{b}.sock"));
        let mut qn = Command::new("qemu-nbd")
            .args(["-t", "-r", "-f", "qcow2", "-B", b, "-k"])
            .arg(&sock)
            .arg(&img)
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-nbd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&sock).is_err() {
            assert!(qn.try_wait().unwrap().is_none(), "qemu-nbd -B {b} exited");
            assert!(Instant::now() < deadline, "qemu-nbd not listening");
            thread::sleep(Duration::from_millis(20));
        }
        let ctx = format!("qemu:dirty-bitmap:{b}");
        let ours = merge_extents(&nbdinfo_map(&srv.uri_unix(""), Some(&ctx)));
        let theirs = merge_extents(&nbdinfo_map(
            &format!("nbd+unix:///?socket={}", sock.display()),
            Some(&ctx),
        ));
        let _ = qn.kill();
        let _ = qn.wait();
        assert_eq!(ours, theirs, "{ctx}");
        assert!(
            ours.iter().any(|e| e.2 == 1),
            "{ctx}: nothing dirty: {ours:?}"
        );
    }
}

/// Through the QMP daemon: `blockdev-add` of a qcow2 node, an export,
/// writes, then `block-export-del` and `blockdev-del` without a flush
/// from the client: closing the node writes its metadata back, so the
/// image is clean and holds the writes.
#[test]
fn qmp_blockdev_add_and_del_of_a_qcow2_node_keeps_its_writes() {
    require!("qemu-img", "qemu-io");
    if is_standin() {
        return;
    }
    let dir = TmpDir::new("qcow2-qmp");
    let img = dir.join("d.qcow2");
    create(&img, "cluster_size=64k", "64M");
    let qmp = dir.join("qmp.sock");
    let nbd = dir.join("nbd.sock");
    let mut daemon = Command::new(blockwire_bin())
        .arg("daemon")
        .arg("--qmp")
        .arg(format!("unix:{}", qmp.display()))
        .arg("--nbd-server")
        .arg(format!("addr.type=unix,addr.path={}", nbd.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn blockwire daemon");
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&qmp).is_err() {
        assert!(daemon.try_wait().unwrap().is_none(), "daemon exited");
        assert!(Instant::now() < deadline, "QMP socket not listening");
        thread::sleep(Duration::from_millis(20));
    }
    let script = r#"
import json, socket, subprocess, sys
qmp, img, nbd = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX)
s.connect(qmp)
f = s.makefile("rw")
def reply():
    while True:
        m = json.loads(f.readline())
        if "event" not in m:
            return m
def cmd(c, **a):
    f.write(json.dumps({"execute": c, "arguments": a}) + "\n")
    f.flush()
    r = reply()
    assert "return" in r, (c, r)
reply()
cmd("qmp_capabilities")
cmd("blockdev-add", **{"driver": "qcow2", "node-name": "q",
    "file": {"driver": "file", "filename": img}})
cmd("block-export-add", **{"type": "nbd", "id": "e", "node-name": "q",
    "name": "d", "writable": True})
out = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 2M",
    "-c", "write -P 0x5b 40M 4k", "nbd+unix:///d?socket=" + nbd],
    capture_output=True, text=True)
assert out.returncode == 0 and "wrote" in out.stdout, out
cmd("block-export-del", id="e")
cmd("blockdev-del", **{"node-name": "q"})
print("done")
"#;
    let out = py_ok(script, &[s(&qmp), s(&img), s(&nbd)]);
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(stdout_str(&out).contains("done"));
    assert_check_clean(&img, "after blockdev-del");
    qemu_io(
        "qcow2",
        s(&img),
        &cmds(&["read -P 0x5a 1M 2M", "read -P 0x5b 40M 4k"]),
    );
}

/// fio random writes with crc32c verification on qcow2 exports (over a
/// backing file, and with 512 B clusters), then `qemu-img check`.
#[test]
fn fio_verify_on_qcow2_then_check_clean() {
    require!("fio-nbd", "qemu-img");
    let dir = TmpDir::new("qcow2-fio");
    let base = dir.join("base.raw");
    write_patterned(&base, 64 * MIB);
    for (name, opts) in [
        (
            "over-backing",
            "cluster_size=64k,backing_file=base.raw,backing_fmt=raw",
        ),
        ("c512", "cluster_size=512"),
        ("extl2", "extended_l2=on,cluster_size=32k"),
    ] {
        let img = dir.join(&format!("{name}.qcow2"));
        create(&img, opts, "64M");
        let Some(mut srv) = Server::start(&[s(&img)]) else {
            return;
        };
        let uri = format!("--uri={}", srv.uri_unix(""));
        let args = [
            "--name=qcow2-randwrite",
            "--ioengine=nbd",
            uri.as_str(),
            "--rw=randwrite",
            "--bs=4k",
            "--bsrange=512-64k",
            "--size=64M",
            "--io_size=16M",
            "--iodepth=16",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--do_verify=1",
            "--randrepeat=0",
            "--verify_state_save=0",
        ];
        let out = run("fio", &args);
        let text = stdout_str(&out);
        assert!(
            out.status.success() && text.contains("err= 0") && !text.contains("verify: bad"),
            "{name}: {}",
            explain("fio", &args, &out)
        );
        srv.stop();
        assert_check_clean(&img, name);
    }
}

/// A stored bitmap left in use (its writer was killed) is inconsistent:
/// exporting it is refused, as QEMU refuses it, instead of exporting a
/// fresh, empty bitmap under its name.
#[test]
fn an_inconsistent_stored_bitmap_is_refused() {
    require!("qemu-img", "qemu-nbd");
    if is_standin() {
        return;
    }
    let dir = TmpDir::new("qcow2-bitmap-in-use");
    let img = dir.join("bm.qcow2");
    create(&img, "cluster_size=64k", "16M");
    qemu_img(&["bitmap", "--add", s(&img), "b0"]);
    // qemu-nbd opened read-write marks the bitmap in use; SIGKILL leaves it so.
    let sock = dir.join("rw.sock");
    let mut qn = Command::new("qemu-nbd")
        .args(["-t", "-f", "qcow2", "-k"])
        .arg(&sock)
        .arg(&img)
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "qemu-nbd not listening");
        thread::sleep(Duration::from_millis(20));
    }
    // Marking happens as it takes the image for writing: wait for it.
    loop {
        let info = stdout_str(&run_ok("qemu-img", &["info", "-U", s(&img)]));
        if info.contains("in-use") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bitmap never marked in use: {info}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let _ = qn.kill();
    let _ = qn.wait();
    let mut cmd = Command::new(blockwire_bin());
    cmd.args(["serve", "-r", "--dirty-bitmap", "b0", "--listen"])
        .arg(format!("unix:{}", dir.join("bw.sock").display()))
        .arg(&img);
    let out = run_cmd(cmd, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Bitmap 'b0' is inconsistent"), "{err}");
}

/// The dirty runs of bitmap `name` of `img` as QEMU sees them: merged by
/// `qemu-img bitmap --merge` into a fresh image, mapped through
/// `qemu-nbd -B`.
fn dirty_via_qemu(dir: &TmpDir, img: &Path, name: &str, size: &str) -> Vec<(u64, u64, u64)> {
    let fresh = dir.join(&format!("fresh-{name}.qcow2"));
    let _ = fs::remove_file(&fresh);
    create(&fresh, "cluster_size=64k", size);
    qemu_img(&["bitmap", "--add", s(&fresh), "m"]);
    qemu_img(&[
        "bitmap",
        "--merge",
        name,
        "-b",
        s(img),
        "-F",
        "qcow2",
        s(&fresh),
        "m",
    ]);
    let sock = dir.join(&format!("qn-m-{name}.sock"));
    let _ = fs::remove_file(&sock);
    let mut qn = Command::new("qemu-nbd")
        .args(["-t", "-r", "-f", "qcow2", "-B", "m", "-k"])
        .arg(&sock)
        .arg(&fresh)
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-nbd");
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&sock).is_err() {
        assert!(qn.try_wait().unwrap().is_none(), "qemu-nbd -B m exited");
        assert!(Instant::now() < deadline, "qemu-nbd not listening");
        thread::sleep(Duration::from_millis(20));
    }
    let map = merge_extents(&nbdinfo_map(
        &format!("nbd+unix:///?socket={}", sock.display()),
        Some("qemu:dirty-bitmap:m"),
    ));
    let _ = qn.kill();
    let _ = qn.wait();
    map.into_iter().filter(|e| e.2 == 1).collect()
}

/// `qemu-img info`'s bitmaps: (name, flags), by name (QEMU stores a
/// node's bitmaps newest first, so the order turns at each store).
fn stored_bitmaps(img: &Path) -> Vec<(String, Vec<String>)> {
    let v = json(&run_ok(
        "qemu-img",
        &["info", "-U", "--output=json", s(img)],
    ));
    let mut out: Vec<(String, Vec<String>)> = v["format-specific"]["data"]["bitmaps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let mut f: Vec<String> = b["flags"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| x.as_str().unwrap().to_owned())
                .collect();
            f.sort();
            (b["name"].as_str().unwrap().to_owned(), f)
        })
        .collect();
    out.sort();
    out
}

/// A bitmap added by `qemu-img bitmap --add`, recorded by a writable
/// `blockwire serve` (marked in use while it runs, as QEMU marks it),
/// stored at shutdown: QEMU's tools list it and see the written ranges,
/// over two sessions, and `qemu-img check` stays clean.
#[test]
fn bitmaps_recorded_by_serve_are_stored_for_qemu() {
    require!("qemu-img", "qemu-io", "qemu-nbd", "nbdinfo");
    if is_standin() {
        return;
    }
    let dir = TmpDir::new("qcow2-bitmaps-store");
    let img = dir.join("rec.qcow2");
    create(&img, "cluster_size=64k", "64M");
    qemu_img(&["bitmap", "--add", s(&img), "b0"]);
    qemu_img(&["bitmap", "--add", "-g", "1M", s(&img), "b1"]);
    qemu_img(&["bitmap", "--disable", s(&img), "b1"]);
    let auto = vec!["auto".to_string()];
    let mut want = Vec::new();
    for (round, (w, runs)) in [
        ("write -P 1 100k 10k", vec![(64 << 10, 64 << 10)]),
        ("write -z 40M 1M", vec![(40 << 20, 1 << 20)]),
    ]
    .into_iter()
    .enumerate()
    {
        let Some(mut srv) = Server::start(&[s(&img)]) else {
            return;
        };
        let listed = stored_bitmaps(&img);
        assert!(
            listed
                .iter()
                .all(|(_, f)| f.contains(&"in-use".to_string())),
            "round {round}: open for writing, not in use: {listed:?}"
        );
        run_ok("qemu-io", &["-f", "raw", "-c", w, &srv.uri_unix("")]);
        srv.stop();
        assert_eq!(
            stored_bitmaps(&img),
            vec![("b0".into(), auto.clone()), ("b1".into(), vec![])],
            "round {round}"
        );
        assert_check_clean(&img, &format!("round {round}"));
        want.extend(runs.into_iter().map(|(o, l)| (o, l, 1)));
        assert_eq!(
            dirty_via_qemu(&dir, &img, "b0", "64M"),
            want,
            "round {round}"
        );
        assert_eq!(
            dirty_via_qemu(&dir, &img, "b1", "64M"),
            vec![],
            "round {round}"
        );
    }
}
