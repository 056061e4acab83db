//! The block graph through real clients: drivers alone and stacked from
//! `--blockdev` JSON, shared throttle groups, the node policies
//! (`detect-zeroes`, `discard`), `cache.direct` with unaligned requests,
//! and the short options building the same graph as the equivalent JSON.

use std::time::Duration;

use blockwire_tests::*;

fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut args: Vec<String> = vec!["-f".into(), "raw".into()];
    for c in cmds {
        args.push("-c".into());
        args.push((*c).into());
    }
    args.push(uri.into());
    let out = run_ok("qemu-io", &args);
    let text = stdout_str(&out);
    assert!(
        !text.contains("Pattern verification failed") && !text.contains("failed"),
        "qemu-io {cmds:?}: {text}"
    );
    text
}

fn fio_verify(uri: &str, label: &str) {
    let uri_arg = format!("--uri={uri}");
    let args = [
        "--name=graph",
        "--ioengine=nbd",
        uri_arg.as_str(),
        "--rw=randwrite",
        "--bs=4k",
        "--size=16M",
        "--io_size=4M",
        "--iodepth=16",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--randrepeat=0",
        "--verify_state_save=0",
    ];
    let out = run("fio", &args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("err= 0") && !text.contains("verify: bad"),
        "{label}: {}",
        explain("fio", &args, &out)
    );
}

/// A stack of every filter over a file, from JSON: raw (a window) over
/// throttle over blkdebug over file; written and verified by qemu-io, fio
/// and qemu-img, and mapped by nbdinfo.
#[test]
fn stacked_filters_from_json_serve_real_clients() {
    if !need(&["qemu-io", "qemu-img", "nbdinfo", "fio"]) {
        return;
    }
    let dir = TmpDir::new("graph-stack");
    let img = dir.join("disk.img");
    sparse_file(&img, 64 * MIB);
    let file = format!(
        r#"{{"driver":"file","node-name":"f0","filename":"{}","discard":"unmap"}}"#,
        img.display()
    );
    let args = [
        "--object",
        "throttle-group,id=tg0,x-iops-total=100000",
        "--blockdev",
        &file,
        "--blockdev",
        r#"{"driver":"blkdebug","node-name":"d0","image":"f0","discard":"unmap"}"#,
        "--blockdev",
        r#"{"driver":"throttle","node-name":"t0","file":"d0","throttle-group":"tg0","discard":"unmap"}"#,
        "--blockdev",
        r#"{"driver":"raw","node-name":"r0","file":"t0","offset":1048576,"size":33554432,"discard":"unmap"}"#,
        "--export",
        r#"{"type":"nbd","id":"e0","node-name":"r0","name":"disk","writable":true}"#,
    ];
    let Some(srv) = Server::start(&args) else {
        return;
    };
    let uri = srv.uri_unix("disk");
    let info = run_ok("nbdinfo", &["--json", &uri]);
    let j = json(&info);
    assert_eq!(
        j["exports"][0]["export-size"],
        32 * MIB,
        "the raw window's size"
    );
    qemu_io(
        &uri,
        &["write -P 0x5a 0 1M", "write -P 0xc3 8M 64k", "flush"],
    );
    qemu_io(
        &uri,
        &[
            "read -P 0x5a 0 1M",
            "read -P 0xc3 8M 64k",
            "read -P 0 16M 1M",
        ],
    );
    // The window starts 1 MiB into the file.
    assert_eq!(read_at(&img, MIB, 4), vec![0x5a; 4]);
    assert_eq!(read_at(&img, MIB - 4, 4), vec![0; 4]);
    // A trim passes all the way down (discard=unmap on every node) and
    // shows as a hole.
    qemu_io(&uri, &["discard 0 1M"]);
    let map = nbdinfo_map(&uri, None);
    assert!(
        map.iter()
            .any(|&(o, l, f)| o == 0 && l >= MIB && f & 1 == 1),
        "hole after trim: {map:?}"
    );
    fio_verify(&uri, "stack");
    let copy = dir.join("copy.raw");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri,
            copy.to_str().unwrap(),
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
            copy.to_str().unwrap(),
            &uri,
        ],
    );
}

/// A copy-on-write overlay over a read-only file: writes land in memory,
/// the base never changes, allocation depth says which layer holds what.
#[test]
fn cow_overlay_from_json_keeps_its_base() {
    if !need(&["qemu-io", "nbdinfo"]) {
        return;
    }
    let dir = TmpDir::new("graph-cow");
    let img = dir.join("base.img");
    write_patterned(&img, 8 * MIB);
    let before = sha256(&img);
    let base = format!(
        r#"{{"driver":"file","node-name":"base","filename":"{}","read-only":true}}"#,
        img.display()
    );
    let args = [
        "--blockdev",
        &base,
        "--blockdev",
        r#"{"driver":"blockwire-cow","node-name":"top","backing":"base"}"#,
        "--export",
        r#"{"type":"nbd","id":"e","node-name":"top","name":"o","writable":true,"allocation-depth":true}"#,
    ];
    let Some(srv) = Server::start(&args) else {
        return;
    };
    let uri = srv.uri_unix("o");
    qemu_io(&uri, &["write -P 0x11 65536 4096", "flush"]);
    qemu_io(&uri, &["read -P 0x11 65536 4096"]);
    let depth = nbdinfo_map(&uri, Some("qemu:allocation-depth"));
    assert!(
        depth
            .iter()
            .any(|&(o, l, d)| o <= 65536 && o + l > 65536 && d == 1),
        "the written cluster is in the top: {depth:?}"
    );
    assert!(
        depth.iter().any(|&(_, _, d)| d == 2),
        "the rest comes from the base: {depth:?}"
    );
    assert_eq!(sha256(&img), before, "the base is never written");
}

/// Two exports over two throttle nodes sharing one group: together they
/// stay within the group's iops-total. The check is a ratio of requests
/// done to requests allowed over the measured time, not a timing.
#[test]
fn throttle_group_is_shared_by_two_exports() {
    if !need(&["fio"]) {
        return;
    }
    let args = [
        "--object",
        "throttle-group,id=tg,x-iops-total=200",
        "--blockdev",
        r#"{"driver":"blockwire-ram","node-name":"m0","size":16777216}"#,
        "--blockdev",
        r#"{"driver":"blockwire-ram","node-name":"m1","size":16777216}"#,
        "--blockdev",
        r#"{"driver":"throttle","node-name":"t0","file":"m0","throttle-group":"tg"}"#,
        "--blockdev",
        r#"{"driver":"throttle","node-name":"t1","file":"m1","throttle-group":"tg"}"#,
        "--export",
        r#"{"type":"nbd","id":"a","node-name":"t0","name":"a","writable":true}"#,
        "--export",
        r#"{"type":"nbd","id":"b","node-name":"t1","name":"b","writable":true}"#,
    ];
    let Some(srv) = Server::start(&args) else {
        return;
    };
    let run_for = 4.0;
    // The window the server saw requests in lies inside this one, which
    // includes fio's start-up: the bound below is taken over it.
    let wall = std::time::Instant::now();
    let jobs: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| {
            let uri = srv.uri_unix(name);
            std::thread::spawn(move || {
                let uri_arg = format!("--uri={uri}");
                let rt = format!("--runtime={run_for}");
                let out = run_ok(
                    "fio",
                    &[
                        "--name=t",
                        "--ioengine=nbd",
                        &uri_arg,
                        "--rw=randread",
                        "--bs=4k",
                        "--iodepth=8",
                        "--time_based",
                        &rt,
                        "--output-format=json",
                    ],
                );
                // fio may print notes before its JSON.
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let start = text.find('{').expect("fio JSON output");
                let j: serde_json::Value = serde_json::from_str(&text[start..])
                    .unwrap_or_else(|e| panic!("fio output {text}: {e}"));
                let job = &j["jobs"][0];
                (
                    job["read"]["total_ios"].as_u64().unwrap(),
                    job["read"]["runtime"].as_u64().unwrap() as f64 / 1000.0,
                )
            })
        })
        .collect();
    let results: Vec<(u64, f64)> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
    let wall = wall.elapsed().as_secs_f64();
    let ios: u64 = results.iter().map(|r| r.0).sum();
    let secs = results.iter().map(|r| r.1).fold(0.0, f64::max);
    // The group allows 200/s plus a burst of at most 1/10 s of it at start
    // (QEMU's bucket without a -max), plus what was already in flight.
    let allowed = 200.0 * wall + 20.0 + 16.0;
    assert!(
        (ios as f64) <= allowed,
        "{ios} requests in {wall:.2}s through a 200 iops group ({results:?})"
    );
    assert!(
        results.iter().all(|r| r.0 > 20),
        "both exports ran: {results:?}"
    );
    assert!(
        ios as f64 >= 0.5 * 200.0 * secs,
        "throttled far below its limit: {ios} in {secs:.2}s"
    );
}

/// `detect-zeroes=unmap` turns zero writes into holes; `discard=ignore`
/// drops trims, so data stays.
#[test]
fn zero_detection_and_discard_policy() {
    if !need(&["qemu-io", "nbdinfo"]) {
        return;
    }
    let args = [
        "--blockdev",
        r#"{"driver":"blockwire-ram","node-name":"z","size":8388608,"detect-zeroes":"unmap","discard":"unmap"}"#,
        "--blockdev",
        r#"{"driver":"blockwire-ram","node-name":"i","size":8388608,"discard":"ignore"}"#,
        "--export",
        r#"{"type":"nbd","id":"z","node-name":"z","name":"z","writable":true}"#,
        "--export",
        r#"{"type":"nbd","id":"i","node-name":"i","name":"i","writable":true}"#,
    ];
    let Some(srv) = Server::start(&args) else {
        return;
    };
    let z = srv.uri_unix("z");
    qemu_io(&z, &["write -P 0x7 0 1M", "write -P 0 0 512k", "flush"]);
    let map = nbdinfo_map(&z, None);
    assert!(
        map.iter()
            .any(|&(o, l, f)| o == 0 && l >= 512 * KIB && f == 3),
        "zero writes became a hole: {map:?}"
    );
    qemu_io(&z, &["read -P 0 0 512k", "read -P 0x7 512k 512k"]);

    let i = srv.uri_unix("i");
    qemu_io(&i, &["write -P 0x9 0 1M", "discard 0 1M", "flush"]);
    qemu_io(&i, &["read -P 0x9 0 1M"]);
    let map = nbdinfo_map(&i, None);
    assert!(
        map.iter().any(|&(o, l, f)| o == 0 && l >= MIB && f == 0),
        "discard=ignore keeps the data: {map:?}"
    );
}

/// `cache.direct=on` over a file on the machine's disk (O_DIRECT works
/// there): client requests that are not block-aligned are served by
/// read-modify-write inside the driver.
#[test]
fn direct_io_serves_unaligned_clients() {
    if !need(&["qemu-io"]) {
        return;
    }
    // The build tree is on a real file system; TmpDir may be tmpfs.
    let dir = workspace_root().join("target").join("test-direct");
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join(format!("direct-{}.img", std::process::id()));
    std::fs::write(&img, vec![0xeeu8; 4 * MIB as usize]).unwrap();
    let file = format!(
        r#"{{"driver":"file","node-name":"d","filename":"{}","cache":{{"direct":true}}}}"#,
        img.display()
    );
    let args = [
        "--blockdev",
        &file,
        "--export",
        r#"{"type":"nbd","id":"d","node-name":"d","name":"d","writable":true}"#,
    ];
    let Some(srv) = Server::start(&args) else {
        return;
    };
    let uri = srv.uri_unix("d");
    qemu_io(
        &uri,
        &["write -P 0x1 1000 5000", "write -P 0x2 8191 3", "flush"],
    );
    qemu_io(
        &uri,
        &[
            "read -P 0xee 0 1000",
            "read -P 0x1 1000 5000",
            "read -P 0xee 6000 2191",
            "read -P 0x2 8191 3",
        ],
    );
    drop(srv);
    let data = std::fs::read(&img).unwrap();
    assert!(data[..1000].iter().all(|&b| b == 0xee));
    assert!(data[1000..6000].iter().all(|&b| b == 1));
    assert!(data[8191..8194].iter().all(|&b| b == 2));
    let _ = std::fs::remove_file(&img);
}

/// The nodes `blockwire serve` reports on SIGUSR1, in
/// `query-named-block-nodes`' shape: (node-name, drv, ro) in order.
fn reported_nodes(srv: &Server) -> Vec<(String, String, bool)> {
    srv.signal(libc::SIGUSR1);
    let mut line = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            line = srv.stderr().lines().find_map(|l| {
                l.split_once("query-named-block-nodes: ")
                    .map(|(_, j)| j.to_owned())
            });
            line.is_some()
        }),
        "no report on SIGUSR1:\n{}",
        srv.stderr()
    );
    let v: serde_json::Value = serde_json::from_str(line.unwrap().trim()).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node-name"].as_str().unwrap().to_owned(),
                n["drv"].as_str().unwrap().to_owned(),
                n["ro"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// The short options and the equivalent `--blockdev` JSON make the same
/// graph: the same nodes, drivers and permissions, in the same order.
#[test]
fn short_options_build_the_graph_json_would() {
    let dir = TmpDir::new("graph-sugar");
    let img = dir.join("d.img");
    sparse_file(&img, 16 * MIB);
    let path = img.to_str().unwrap();
    let Some(short) = Server::start(&[
        path,
        "--cow",
        "--blkdebug",
        "event=read,errno=5,sector=999999,once=on",
        "--throttle",
        "iops=100000",
        "-v",
    ]) else {
        return;
    };
    let a = reported_nodes(&short);
    drop(short);
    let file = format!(
        r#"{{"driver":"file","node-name":"file0","filename":"{path}","read-only":true,"discard":"unmap","locking":"off"}}"#
    );
    let Some(long) = Server::start(&[
        "--object",
        "throttle-group,id=tg0,x-iops-total=100000",
        "--blockdev",
        &file,
        "--blockdev",
        r#"{"driver":"raw","node-name":"raw0","file":"file0","read-only":true,"discard":"unmap"}"#,
        "--blockdev",
        r#"{"driver":"blockwire-ram","node-name":"top0","size":16777216,"discard":"unmap"}"#,
        "--blockdev",
        r#"{"driver":"blockwire-cow","node-name":"cow0","backing":"raw0","file":"top0","discard":"unmap"}"#,
        "--blockdev",
        r#"{"driver":"blkdebug","node-name":"blkdebug0","image":"cow0","discard":"unmap","inject-error":[{"event":"read","errno":5,"sector":999999,"once":true}]}"#,
        "--blockdev",
        r#"{"driver":"throttle","node-name":"throttle0","file":"blkdebug0","throttle-group":"tg0","discard":"unmap"}"#,
        "--export",
        r#"{"type":"nbd","id":"e0","node-name":"throttle0","name":"","writable":true}"#,
        "-v",
    ]) else {
        return;
    };
    let b = reported_nodes(&long);
    assert_eq!(a, b, "short options vs JSON");
    assert_eq!(
        a.iter().map(|n| n.0.as_str()).collect::<Vec<_>>(),
        ["file0", "raw0", "top0", "cow0", "blkdebug0", "throttle0"]
    );
}
