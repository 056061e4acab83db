//! An OSD of the test cluster killed and restarted under a verified fio
//! load through `blockwire serve` on an RBD image: fio's verification
//! passes, and after recovery `rbd export` holds what the server read
//! back, so no acknowledged write was lost.
//!
//! A test binary of its own: it kills an OSD, which no other test may see
//! (cargo runs test binaries one after the other).

#![cfg(feature = "rbd")]

mod rbd_common;

use std::time::Duration;

use blockwire_tests::*;
use rbd_common::*;

/// How long a step may take before the test fails rather than hangs.
const STEP: Duration = Duration::from_secs(180);

#[test]
fn an_osd_killed_and_restarted_under_fio_verify_loses_no_acknowledged_write() {
    let Some(c) = ceph() else { return };
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
    c.cluster("kill-osd", &["1"]);
    // The writes go on with one copy (min_size 1) once the PGs re-peer.
    assert!(
        wait_until(STEP, || load.is_finished() || c.du_used(&img) >= 32 * MIB),
        "writes did not go on with osd.1 down"
    );
    c.cluster("restart-osd", &["1"]);
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
