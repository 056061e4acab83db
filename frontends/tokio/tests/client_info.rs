//! `blockwire info` against real servers; `--json` must equal
//! `nbdinfo --json` field for field on qemu-nbd.

#[path = "client_support.rs"]
mod support;

use support::*;

fn same_json(args: &[&str], uri: &str) {
    if !need("nbdinfo") {
        return;
    }
    let mut ours = args.to_vec();
    ours.insert(0, "info");
    ours.push(uri);
    let mine = blockwire(&ours);
    let mut theirs = args.to_vec();
    theirs.push(uri);
    let out = run("nbdinfo", &theirs);
    assert!(out.status.success(), "nbdinfo {theirs:?} failed");
    let nbdinfo = String::from_utf8(out.stdout).unwrap();
    // Compare parsed values, so whitespace cannot matter; then the text.
    let a: serde_json::Value = serde_json::from_str(&mine).expect("our JSON parses");
    let b: serde_json::Value = serde_json::from_str(&nbdinfo).expect("nbdinfo JSON parses");
    assert_eq!(a, b, "blockwire:\n{mine}\nnbdinfo:\n{nbdinfo}");
    assert_eq!(mine, nbdinfo);
}

#[test]
fn json_matches_nbdinfo_on_qemu_nbd() {
    let dir = TmpDir::new("info-qemu");
    let img = dir.join("disk.img");
    sparse_image(&img, 64 << 20);
    let Some(q) = qemu_nbd(&dir, &img, &["-D", "a \"quoted\" description"]) else {
        return;
    };
    same_json(&["--json"], &q.uri);
    same_json(&["--json", "--list"], &q.uri);
    same_json(&["--json", "--map"], &q.uri);
    let text = blockwire(&["info", &q.uri]);
    assert!(text.contains("export-size: 67108864 (64M)"), "{text}");
    assert!(text.contains("base:allocation"), "{text}");
    assert_eq!(blockwire(&["info", "--size", &q.uri]).trim(), "67108864");
}

#[test]
fn read_only_export_and_block_sizes_on_qemu_nbd() {
    let dir = TmpDir::new("info-qemu-ro");
    let img = dir.join("disk.img");
    sparse_image(&img, 8 << 20);
    let Some(q) = qemu_nbd(&dir, &img, &["-r"]) else {
        return;
    };
    same_json(&["--json"], &q.uri);
    let v: serde_json::Value =
        serde_json::from_str(&blockwire(&["info", "--json", &q.uri])).unwrap();
    assert_eq!(v["exports"][0]["is_read_only"], true);
}

#[test]
fn nbdkit_memory_and_nbd_server() {
    let dir = TmpDir::new("info-peers");
    if let Some(k) = nbdkit(&dir, &["memory", "64M"]) {
        assert_eq!(blockwire(&["info", "--size", &k.uri]).trim(), "67108864");
        let v: serde_json::Value =
            serde_json::from_str(&blockwire(&["info", "--json", &k.uri])).unwrap();
        assert_eq!(v["structured"], true);
        assert_eq!(v["exports"][0]["export-size"], 67108864);
        let map = blockwire(&["info", "--map", &k.uri]);
        assert!(map.contains("hole,zero"), "{map}");
    }
    let img = dir.join("nbd-server.img");
    sparse_image(&img, 16 << 20);
    if let Some(s) = nbd_server(&dir, &img) {
        // No structured replies: the client falls back to simple ones.
        let v: serde_json::Value =
            serde_json::from_str(&blockwire(&["info", "--json", &s.uri])).unwrap();
        assert_eq!(v["structured"], false);
        let list = blockwire(&["info", "--list", &s.uri]);
        assert!(list.contains("export=\"disk\""), "{list}");
    }
}

#[test]
fn blockwire_serve_export() {
    let dir = TmpDir::new("info-bw");
    let s = blockwire_serve(&dir, &["--memory", "32M", "--description", "bw disk"]);
    let v: serde_json::Value =
        serde_json::from_str(&blockwire(&["info", "--json", &s.uri])).unwrap();
    assert_eq!(v["exports"][0]["export-size"], 32 << 20);
    assert_eq!(v["exports"][0]["description"], "bw disk");
    if need("nbdinfo") {
        same_json(&["--json", "--map"], &s.uri);
    }
}

#[test]
fn bad_uris_and_dead_servers_fail_cleanly() {
    let dir = TmpDir::new("info-bad");
    let out = run(env!("CARGO_BIN_EXE_blockwire"), &["info", "http://x/"]);
    assert!(!out.status.success());
    let sock = dir.join("nothing.sock");
    let uri = unix_uri(&sock, "");
    let out = run(env!("CARGO_BIN_EXE_blockwire"), &["info", &uri]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing.sock"));
}
