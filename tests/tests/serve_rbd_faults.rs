//! OSDs of the test cluster killed under `blockwire serve` on an RBD
//! image:
//!
//! * one killed and restarted under a verified fio load: fio's
//!   verification passes, and after recovery `rbd export` holds what the
//!   server read back, so no acknowledged write was lost;
//! * both OSDs of a data object killed with `rados_osd_op_timeout` set:
//!   requests to it fail with `EIO` instead of hanging, and the same server
//!   serves them again once the OSDs are back.
//!
//! A test binary of its own: it kills OSDs, which no other test may see
//! (cargo runs test binaries one after the other; the tests here take
//! turns).

#![cfg(feature = "rbd")]

mod rbd_common;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use blockwire_tests::*;
use rbd_common::*;

/// How long a step may take before the test fails rather than hangs.
const STEP: Duration = Duration::from_secs(180);

/// OSDs this test killed, restarted when it ends however it ends, so that
/// a failure leaves the cluster whole for the tests after it.
struct Killed<'a> {
    c: &'a Ceph,
    osds: Vec<String>,
}

impl Killed<'_> {
    fn kill(&mut self, osd: &str) {
        self.c.cluster("kill-osd", &[osd]);
        self.osds.push(osd.to_owned());
    }

    fn restart_all(&mut self) {
        while let Some(osd) = self.osds.pop() {
            self.c.cluster("restart-osd", &[&osd]);
        }
    }
}

impl Drop for Killed<'_> {
    fn drop(&mut self) {
        if !self.osds.is_empty() && std::thread::panicking() {
            for osd in self.osds.drain(..) {
                let _ = std::process::Command::new(workspace_root().join("tests/ceph/cluster.sh"))
                    .arg("restart-osd")
                    .arg(&self.c.dir)
                    .arg(&osd)
                    .status();
            }
        }
    }
}

/// The tests of this binary kill OSDs: one at a time.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn an_osd_killed_and_restarted_under_fio_verify_loses_no_acknowledged_write() {
    let Some(c) = ceph() else { return };
    let _turn = one_at_a_time();
    let dir = TmpDir::new("rbd-osd");
    // 1 MiB objects: `rbd du` then follows a sequential writer closely,
    // which is how the test knows the load is under way.
    let img = c.create("osd-fault", 64, &["--object-size", "1M"]);
    let mut srv = serve(&c.filename(&img), &[]);
    let uri = srv.uri_unix("");

    // Sequential 64 KiB writes at depth 16, limited to 8 MiB/s so that the
    // OSD goes down and comes back while they run; then fio reads all of
    // it back and checks every block's crc32c.
    let load = {
        let uri = uri.clone();
        std::thread::spawn(move || {
            fio_verify(
                &uri,
                "fio under an OSD failure",
                &[
                    "--rw=write",
                    "--bs=64k",
                    "--size=64M",
                    "--iodepth=16",
                    "--rate=8m",
                ],
            )
        })
    };
    assert!(
        wait_until(STEP, || load.is_finished() || c.du_used(&img) >= 16 * MIB),
        "fio never got to 16 MiB"
    );
    assert!(
        !load.is_finished(),
        "fio finished before the OSD was killed"
    );
    let mut killed = Killed {
        c: &c,
        osds: Vec::new(),
    };
    killed.kill("1");
    // The writes go on with one copy (min_size 1) once the PGs re-peer.
    assert!(
        wait_until(STEP, || load.is_finished() || c.du_used(&img) >= 32 * MIB),
        "writes did not go on with osd.1 down"
    );
    killed.restart_all();
    load.join().expect("fio verify under the OSD failure");

    c.cluster("wait-clean", &[]);
    let seen = read_all(&uri, &dir, "after.out");
    let st = srv.stop();
    assert!(st.iter().all(|s| s.success()), "server exit {st:?}");
    assert_same(
        &c.export(&img),
        &seen,
        "rbd export after recovery vs what the server read back",
    );
}

#[test]
fn with_an_osd_timeout_requests_to_a_pg_without_osds_fail_and_recover() {
    let Some(c) = ceph() else { return };
    let _turn = one_at_a_time();
    let img = c.create("osd-timeout", 256, &[]);
    let info = c.info(&img);
    let (id, prefix) = (
        info["id"].as_str().unwrap().to_owned(),
        info["block_name_prefix"].as_str().unwrap().to_owned(),
    );
    // A data object whose two OSDs are not the header's: with them down the
    // header (watch, lock) stays reachable and only data requests wait.
    // The object is written first, so the object map is not needed either.
    let header = c.acting(&format!("rbd_header.{id}"));
    let (objno, victims) = (0..64u64)
        .map(|n| (n, c.acting(&format!("{prefix}.{n:016x}"))))
        .find(|(_, a)| *a != header)
        .expect("a data object on other OSDs than the header");
    let off = (objno * 4 * MIB).to_string();
    let filename = format!("{}:rados_osd_op_timeout=3", c.filename(&img));
    let srv = serve(&filename, &[]);
    let uri = srv.uri_unix("");
    run_ok(
        "qemu-io",
        &["-f", "raw", "-c", &format!("write -P 1 {off} 4k"), &uri],
    );

    let mut killed = Killed {
        c: &c,
        osds: Vec::new(),
    };
    for osd in &victims {
        killed.kill(&osd.to_string());
    }
    let out = py_ok(
        r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
off = int(sys.argv[2])
# A plain write may be acknowledged from librbd's write-back cache; one
# with FUA is durable when acknowledged, so it must fail. The read is of
# a part of the object no request has touched: not in the cache.
for what, op in [("fua write", lambda: h.pwrite(b"\2" * 4096, off, nbd.CMD_FLAG_FUA)),
                 ("read", lambda: h.pread(4096, off + (1 << 20)))]:
    try:
        op()
        print(what, "ok")
    except nbd.Error as e:
        print(what, "errno", e.errnum)
h.shutdown()
"#,
        &[&uri, &off],
    );
    assert_eq!(
        stdout_str(&out).trim(),
        format!("fua write errno {eio}\nread errno {eio}", eio = libc::EIO),
        "requests to a PG without OSDs fail after rados_osd_op_timeout"
    );

    killed.restart_all();
    c.cluster("wait-clean", &[]);
    // The same server serves the object again. Whether its flushes do
    // depends on where the FUA write failed: in the write (nothing was
    // acknowledged, flushes succeed) or in its flush, after librbd's cache
    // had taken it (the node then fails every later flush, since librbd
    // reports a lost write-back only once).
    let out = py_ok(
        r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
off = int(sys.argv[2])
h.pwrite(b"\3" * 4096, off)
assert h.pread(4096, off) == b"\3" * 4096
try:
    h.flush()
    print("flush ok")
except nbd.Error as e:
    print("flush errno", e.errnum)
h.shutdown()
"#,
        &[&uri, &off],
    );
    let lost = srv.stderr().contains("a flush failed");
    let want = if lost {
        format!("flush errno {}", libc::EIO)
    } else {
        "flush ok".to_owned()
    };
    assert_eq!(stdout_str(&out).trim(), want, "{}", srv.stderr());
    drop(srv);
    // A new server (the node reopened) flushes in either case.
    let srv = serve(&filename, &[]);
    run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            &format!("write -P 4 {off} 4k"),
            "-c",
            "flush",
            "-c",
            &format!("read -P 4 {off} 4k"),
            &srv.uri_unix(""),
        ],
    );
}
