//! `blockwire serve` on Ceph RBD images (the `rbd` driver) against real
//! clients, on the cluster of tests/ceph/test.sh: qemu-img, qemu-io,
//! nbdcopy with four connections and fio write what they write, and `rbd
//! export` then holds exactly that; a trim shows as a hole in `nbdinfo
//! --map` and in `rbd du`; two servers serve two images of one pool at
//! once; snapshots are read-only; `block_resize` through `blockwire
//! daemon`'s QMP resizes the image; start-up failures are one line and
//! exit status 1.
//!
//! Needs the `rbd` feature of this crate and a `blockwire` built with
//! `--features rbd` (`BLOCKWIRE_BIN`); tests/ceph/test.sh arranges both.

#![cfg(feature = "rbd")]

mod rbd_common;

use std::process::Command;
use std::time::Duration;

use blockwire_tests::*;
use rbd_common::*;

const SIZE: u64 = 32 * MIB;

/// `qemu-io -f raw [-r] -c CMD... TARGET`, failing on any failed command.
fn qemu_io(target: &str, read_only: bool, cmds: &[&str]) -> String {
    let mut args: Vec<&str> = vec!["-f", "raw"];
    if read_only {
        args.push("-r");
    }
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(target);
    let out = run_ok("qemu-io", &args);
    let text = stdout_str(&out);
    assert!(
        !text.contains("Pattern verification failed") && !text.contains("failed"),
        "qemu-io {cmds:?} on {target}: {text}"
    );
    text
}

#[test]
fn clients_write_through_blockwire_and_rbd_export_agrees() {
    let Some(c) = ceph() else { return };
    let dir = TmpDir::new("rbd-interop");
    let a = c.create("interop-a", 32, &[]);
    let b = c.create("interop-b", 32, &[]);
    let f = c.create("interop-fio", 64, &[]);
    let export_b = format!("name=b,file={}", c.filename(&b));
    let export_f = format!("name=fio,file={}", c.filename(&f));
    let mut srv = serve(
        &c.filename(&a),
        &["--export", &export_b, "--export", &export_f],
    );
    let ua = srv.uri_unix("");
    let ub = srv.uri_tcp("b");
    let uf = srv.uri_unix("fio");

    // What the server says about an RBD image: its object size is the
    // preferred block size, and every capability is there.
    let info = json(&run_ok("nbdinfo", &["--json", &ua]));
    let e = &info["exports"][0];
    assert_eq!(e["export-size"], SIZE, "{info}");
    assert_eq!(e["block_size_preferred"], 4 * MIB, "{info}");
    for flag in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_fast_zero",
        "can_multi_conn",
    ] {
        assert_eq!(e[flag], true, "{flag}: {info}");
    }
    assert_eq!(e["is_read_only"], false, "{info}");

    // qemu-img convert in, compare.
    let src = dir.join("src.img");
    write_patterned(&src, SIZE);
    let src_s = src.to_str().unwrap();
    run_ok(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", src_s, &ua],
    );
    run_ok(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", src_s, &ua],
    );

    // qemu-io patterns, unaligned ones included, zeroes with and without
    // unmap; the same on a local mirror of what the image must hold.
    let mirror = dir.join("mirror.img");
    std::fs::copy(&src, &mirror).unwrap();
    let writes = [
        "write -P 0x11 1M 64k",
        "write -P 0x22 5000 3000",
        "write -P 0x33 4194000 1000",
        "write -z 8M 1M",
        "write -z -u 12M 4M",
        "write -P 0x44 31M 1M",
        "writev -P 0x55 20M 4k 8k 512",
        "flush",
    ];
    qemu_io(&ua, false, &writes);
    qemu_io(mirror.to_str().unwrap(), false, &writes);
    qemu_io(
        &ua,
        true,
        &[
            "read -P 0x11 1M 64k",
            "read -P 0x22 5000 3000",
            "read -P 0x33 4194000 1000",
            "read -P 0 8M 1M",
            "read -P 0 12M 4M",
            "read -P 0x44 31M 1M",
            "readv -P 0x55 20M 4k 8k 512",
        ],
    );
    run_ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            mirror.to_str().unwrap(),
            &ua,
        ],
    );

    // nbdcopy over four connections into the second image, read back.
    let src2 = dir.join("src2.img");
    let data2: Vec<u8> = pattern(SIZE).iter().map(|b| b ^ 0xa5).collect();
    std::fs::write(&src2, &data2).unwrap();
    run_ok(
        "nbdcopy",
        &["--connections=4", "--flush", src2.to_str().unwrap(), &ub],
    );
    assert_same(&read_all(&ub, &dir, "b.out"), &data2, "nbdcopy in and out");

    // fio: random 4 KiB writes at depth 16, verified.
    fio_verify(
        &uf,
        "fio on rbd",
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--size=64M",
            "--io_size=8M",
            "--iodepth=16",
        ],
    );
    let fio_seen = read_all(&uf, &dir, "fio.out");

    // The server flushes at exit; `rbd export` is what the clients wrote.
    let st = srv.stop();
    assert!(st.iter().all(|s| s.success()), "server exit {st:?}");
    assert_same(
        &c.export(&a),
        &std::fs::read(&mirror).unwrap(),
        "rbd export of the qemu image vs the mirror",
    );
    assert_same(&c.export(&b), &data2, "rbd export of the nbdcopy image");
    assert_same(
        &c.export(&f),
        &fio_seen,
        "rbd export of the fio image vs what the server read",
    );
}

#[test]
fn a_trim_is_a_hole_in_the_map_and_in_rbd_du() {
    let Some(c) = ceph() else { return };
    let img = c.create("trim", 64, &[]);
    let srv = serve(&c.filename(&img), &[]);
    let uri = srv.uri_unix("");

    qemu_io(&uri, false, &["write -P 0x77 0 64M", "flush"]);
    assert_eq!(
        merge_extents(&nbdinfo_map(&uri, None)),
        [(0, 64 * MIB, 0)],
        "all data after writing everything"
    );
    assert_eq!(c.du_used(&img), 64 * MIB);

    // Trim 8 whole objects (4 MiB each) and a piece of another.
    qemu_io(&uri, false, &["discard 16M 32M", "discard 50M 1M", "flush"]);
    let map = merge_extents(&nbdinfo_map(&uri, None));
    assert_eq!(
        map,
        [
            (0, 16 * MIB, 0),
            (16 * MIB, 32 * MIB, 3),
            (48 * MIB, 16 * MIB, 0)
        ],
        "the trimmed objects are a hole (3 = hole|zero); the partly trimmed one is data"
    );
    assert_eq!(c.du_used(&img), 32 * MIB, "rbd du agrees with the map");
    qemu_io(
        &uri,
        true,
        &[
            "read -P 0 16M 32M",
            "read -P 0 50M 1M",
            "read -P 0x77 51M 1M",
        ],
    );

    // Write-zeroes that may unmap leaves a hole too; FAST_ZERO is refused
    // only where zeroing would write zeroes (NO_HOLE).
    let out = py_ok(
        r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
mib = 1 << 20
h.zero(8 * mib, 0, nbd.CMD_FLAG_FAST_ZERO)
try:
    h.zero(4 * mib, 56 * mib, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_NO_HOLE)
    print("no-hole fast zero: accepted")
except nbd.Error as e:
    print("no-hole fast zero: errno", e.errnum)
h.zero(4 * mib, 60 * mib, nbd.CMD_FLAG_NO_HOLE)
h.flush()
h.shutdown()
"#,
        &[&uri],
    );
    assert_eq!(
        stdout_str(&out).trim(),
        format!("no-hole fast zero: errno {}", libc::ENOTSUP),
    );
    let map = merge_extents(&nbdinfo_map(&uri, None));
    assert_eq!(
        map,
        [
            (0, 8 * MIB, 3),
            (8 * MIB, 8 * MIB, 0),
            (16 * MIB, 32 * MIB, 3),
            (48 * MIB, 16 * MIB, 0)
        ],
        "zeroes that may unmap are a hole; NO_HOLE zeroes stay allocated"
    );
    assert_eq!(c.du_used(&img), 24 * MIB);
    qemu_io(
        &uri,
        false,
        &["read -P 0 0 8M", "read -P 0x77 56M 4M", "read -P 0 60M 4M"],
    );
}

#[test]
fn two_servers_serve_two_images_of_one_pool_at_once() {
    let Some(c) = ceph() else { return };
    let dir = TmpDir::new("rbd-two");
    let one = c.create("two-a", 64, &[]);
    let two = c.create("two-b", 64, &["--object-size", "1M"]);
    // The first as qemu-nbd spells it; the second as --blockdev with the
    // key in a secret object and the monitor in a `server` list, no
    // configuration file at all.
    let srv1 = serve(&c.filename(&one), &[]);
    let (host, port) = c.mon_v1.rsplit_once(':').unwrap();
    let blockdev = serde_json::json!({
        "driver": "rbd", "node-name": "r0", "pool": c.pool, "image": two,
        "user": c.user, "key-secret": "k0",
        "auth-client-required": ["cephx"],
        "server": [{"host": host, "port": port}],
    })
    .to_string();
    let secret = format!("secret,id=k0,data={},format=base64", c.key);
    let srv2 = Server::start(&[
        "--object",
        &secret,
        "--blockdev",
        &blockdev,
        "--export",
        "nbd,id=e0,node-name=r0,name=two,writable=on",
    ])
    .expect("blockwire serve --blockdev rbd");
    let u1 = srv1.uri_tcp("");
    let u2 = srv2.uri_unix("two");
    let info = json(&run_ok("nbdinfo", &["--json", &u2]));
    assert_eq!(
        info["exports"][0]["block_size_preferred"], MIB,
        "the object size: {info}"
    );

    let fio = |uri: String, label: &'static str| {
        std::thread::spawn(move || {
            fio_verify(
                &uri,
                label,
                &[
                    "--rw=randwrite",
                    "--bs=4k",
                    "--size=64M",
                    "--io_size=8M",
                    "--iodepth=16",
                ],
            )
        })
    };
    let t1 = fio(u1.clone(), "server 1");
    let t2 = fio(u2.clone(), "server 2");
    t1.join().expect("fio on server 1");
    t2.join().expect("fio on server 2");

    let seen1 = read_all(&u1, &dir, "one.out");
    let seen2 = read_all(&u2, &dir, "two.out");
    drop((srv1, srv2));
    assert_same(&c.export(&one), &seen1, "image one");
    assert_same(&c.export(&two), &seen2, "image two");
}

#[test]
fn a_snapshot_is_served_read_only() {
    let Some(c) = ceph() else { return };
    let img = c.create("snap", 16, &[]);
    {
        let srv = serve(&c.filename(&img), &[]);
        qemu_io(&srv.uri_unix(""), false, &["write -P 0x61 0 16M"]);
    }
    c.rbd(&["snap", "create", &format!("{}@s1", c.spec(&img))]);
    {
        let srv = serve(&c.filename(&img), &[]);
        qemu_io(&srv.uri_unix(""), false, &["write -P 0x62 0 1M"]);
    }
    let snap = format!(
        "rbd:{}@s1:conf={}:id={}",
        c.spec(&img),
        c.conf.display(),
        c.user
    );
    let srv = serve(&snap, &["--read-only"]);
    let uri = srv.uri_unix("");
    let info = json(&run_ok("nbdinfo", &["--json", &uri]));
    assert_eq!(info["exports"][0]["is_read_only"], true, "{info}");
    qemu_io(&uri, true, &["read -P 0x61 0 16M"]);
    drop(srv);

    // Writable is refused, as QEMU refuses it.
    let out = start_failure(&[&snap]);
    assert_one_line(&out, "rbd snapshots are read-only");
}

/// `blockwire serve ARGS` that must fail at start: its output.
fn start_failure(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(blockwire_bin());
    cmd.arg("serve")
        .args(args)
        .args(["--listen", "unix:/nonexistent-dir/never.sock"]);
    // A hang is a failure: bounded well beyond the 5 s connect timeouts.
    run_cmd(cmd, Duration::from_secs(90))
}

fn assert_one_line(out: &std::process::Output, expect: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {err:?}");
    assert!(
        lines[0].starts_with("blockwire: ") && lines[0].contains(expect),
        "{expect:?} in {err:?}"
    );
}

#[test]
fn start_up_failures_are_one_line_and_exit_1() {
    let Some(c) = ceph() else { return };
    let img = c.create("fail", 8, &[]);
    let conf = c.conf.display().to_string();
    let id = &c.user;
    let cases: Vec<(String, String)> = vec![
        (
            format!("rbd:nosuchpool/{img}:conf={conf}:id={id}"),
            "Ceph pool 'nosuchpool' does not exist".into(),
        ),
        (
            format!("rbd:{}/nosuchimage:conf={conf}:id={id}", c.pool),
            format!("RBD image {}/nosuchimage does not exist", c.pool),
        ),
        (
            // A well-formed key that is not client.blockwire's.
            format!(
                "rbd:{}:conf={conf}:id={id}:key=AQBmTw9rxeyHBhAAeTLF5W6PM4pa6b+j2/jLzA==",
                c.spec(&img)
            ),
            "refused client.blockwire (wrong key".into(),
        ),
        (
            // Nothing listens on port 1: monitors that cannot be reached.
            format!(
                "rbd:{}:id={id}:mon_host=127.0.0.1\\:1:client_mount_timeout=5",
                c.spec(&img)
            ),
            "cannot connect to the Ceph monitors 127.0.0.1:1 as client.blockwire within 5 s".into(),
        ),
        (format!("rbd:{}", c.pool), "Pool name is required".into()),
    ];
    for (name, expect) in &cases {
        let out = start_failure(&[name]);
        assert_one_line(&out, expect);
    }
    // The same through --blockdev: an unknown secret, an unreachable
    // monitor list.
    let bd = serde_json::json!({
        "driver": "rbd", "node-name": "r", "pool": c.pool, "image": img,
        "key-secret": "nokey", "conf": conf,
    })
    .to_string();
    assert_one_line(
        &start_failure(&["--blockdev", &bd]),
        "No secret with id 'nokey'",
    );
}

#[test]
fn block_resize_through_qmp_resizes_the_image() {
    let Some(c) = ceph() else { return };
    let img = c.create("resize", 64, &[]);
    let dir = TmpDir::new("rbd-resize");
    let (nbd, qmp) = (dir.join("nbd.sock"), dir.join("qmp.sock"));
    let blockdev = serde_json::json!({
        "driver": "rbd", "node-name": "r0", "pool": c.pool, "image": img,
        "conf": c.conf, "user": c.user,
    })
    .to_string();
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    let mut daemon = Command::new(blockwire_bin())
        .arg("daemon")
        .args(["--blockdev", &blockdev])
        .arg("--nbd-server")
        .arg(format!("addr.type=unix,addr.path={}", nbd.display()))
        .args(["--export", "type=nbd,id=e0,node-name=r0,writable=on"])
        .arg("--qmp")
        .arg(format!("unix:{}", qmp.display()))
        .stderr(log)
        .spawn()
        .expect("blockwire daemon");
    let up = wait_until(START_TIMEOUT, || {
        qmp.exists() && nbd.exists() || daemon.try_wait().unwrap().is_some()
    });
    let log_text = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    assert!(
        up && daemon.try_wait().unwrap().is_none(),
        "daemon did not start: {}",
        log_text()
    );
    let uri = format!("nbd+unix:///r0?socket={}", nbd.display());
    qemu_io(&uri, false, &["write -P 0x21 60M 4M"]);

    let out = py_ok(
        r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
for cmd in [{"execute": "qmp_capabilities"},
            {"execute": "block_resize", "arguments": {"node-name": "r0", "size": 96 << 20}}]:
    f.write(json.dumps(cmd) + "\n")
    f.flush()
    print(f.readline().strip())
"#,
        &[qmp.to_str().unwrap()],
    );
    assert_eq!(
        stdout_str(&out).trim(),
        "{\"return\":{}}\n{\"return\":{}}",
        "{}",
        log_text()
    );
    let info = json(&run_ok("nbdinfo", &["--json", &uri]));
    assert_eq!(info["exports"][0]["export-size"], 96 * MIB, "{info}");
    let rbd_info: serde_json::Value =
        serde_json::from_slice(&c.rbd(&["info", "--format", "json", &c.spec(&img)]).stdout)
            .unwrap();
    assert_eq!(rbd_info["size"], 96 * MIB, "{rbd_info}");
    // The old data stays, the new end reads as zeroes and takes writes.
    qemu_io(
        &uri,
        false,
        &[
            "read -P 0x21 60M 4M",
            "read -P 0 64M 32M",
            "write -P 0x22 95M 1M",
        ],
    );
    // SAFETY: kill(2) on the pid of our own child, not yet waited for.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let mut status = None;
    let stopped = wait_until(STOP_TIMEOUT, || {
        status = daemon.try_wait().unwrap();
        status.is_some()
    });
    if !stopped {
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "daemon exit {status:?}: {}",
        log_text()
    );
    let data = c.export(&img);
    assert_eq!(data.len() as u64, 96 * MIB);
    assert!(data[95 << 20..].iter().all(|&b| b == 0x22));
}
