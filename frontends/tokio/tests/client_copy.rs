//! `blockwire copy` round trips through real servers, checked by sha256.

#[path = "client_support.rs"]
mod support;

use support::*;

/// file → NBD → file, both copies must equal the original.
fn round_trip(dir: &TmpDir, uri: &str, size: u64) {
    let src = dir.join("src.img");
    sparse_image(&src, size);
    let back = dir.join("back.img");
    blockwire(&["copy", "--no-progress", src.to_str().unwrap(), uri]);
    blockwire(&["copy", "--no-progress", uri, back.to_str().unwrap()]);
    assert_eq!(sha256(&src), sha256(&back), "round trip through {uri}");
}

#[test]
fn qemu_nbd_extended_headers() {
    let dir = TmpDir::new("copy-qemu");
    let img = dir.join("served.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let Some(q) = qemu_nbd(&dir, &img, &[]) else {
        return;
    };
    round_trip(&dir, &q.uri, 64 << 20);
    // The destination is sparse: holes were skipped, not written.
    let back = dir.join("back.img");
    let used = std::fs::metadata(&back).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    });
    assert!(used.unwrap() < 32 << 20, "holes were written");
}

#[test]
fn nbdkit_memory_several_connections() {
    let dir = TmpDir::new("copy-nbdkit");
    let Some(k) = nbdkit(&dir, &["memory", "64M"]) else {
        return;
    };
    let src = dir.join("src.img");
    sparse_image(&src, 64 << 20);
    let back = dir.join("back.img");
    let s = src.to_str().unwrap();
    blockwire(&["copy", "--no-progress", "-C", "4", "-R", "16", s, &k.uri]);
    blockwire(&[
        "copy",
        "--no-progress",
        "-C",
        "2",
        "--request-size",
        "64K",
        &k.uri,
        back.to_str().unwrap(),
    ]);
    assert_eq!(sha256(&src), sha256(&back));
}

#[test]
fn nbdkit_file_plugin() {
    let dir = TmpDir::new("copy-nbdkit-file");
    let served = dir.join("served.img");
    sparse_image(&served, 16 << 20);
    let Some(k) = nbdkit(&dir, &["file", served.to_str().unwrap()]) else {
        return;
    };
    let back = dir.join("back.img");
    blockwire(&["copy", "--no-progress", &k.uri, back.to_str().unwrap()]);
    assert_eq!(sha256(&served), sha256(&back));
}

#[test]
fn nbd_server_without_structured_replies() {
    let dir = TmpDir::new("copy-nbd-server");
    let img = dir.join("served.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let Some(s) = nbd_server(&dir, &img) else {
        return;
    };
    round_trip(&dir, &s.uri, 16 << 20);
}

#[test]
fn blockwire_serve_memory() {
    let dir = TmpDir::new("copy-bw");
    let s = blockwire_serve(&dir, &["--memory", "32M"]);
    round_trip(&dir, &s.uri, 32 << 20);
}

#[test]
fn nbd_to_nbd_and_null() {
    let dir = TmpDir::new("copy-n2n");
    let img = dir.join("served.img");
    sparse_image(&img, 32 << 20);
    let Some(q) = qemu_nbd(&dir, &img, &["-r"]) else {
        return;
    };
    let dir2 = TmpDir::new("copy-n2n-dst");
    let Some(k) = nbdkit(&dir2, &["memory", "32M"]) else {
        return;
    };
    blockwire(&["copy", "--no-progress", &q.uri, &k.uri]);
    blockwire(&["copy", "--no-progress", &q.uri, "null:"]);
    let back = dir.join("back.img");
    blockwire(&["copy", "--no-progress", &k.uri, back.to_str().unwrap()]);
    assert_eq!(sha256(&img), sha256(&back));
}

#[test]
fn small_destination_is_refused() {
    let dir = TmpDir::new("copy-small");
    let Some(k) = nbdkit(&dir, &["memory", "1M"]) else {
        return;
    };
    let src = dir.join("src.img");
    sparse_image(&src, 4 << 20);
    let out = run(
        env!("CARGO_BIN_EXE_blockwire"),
        &["copy", src.to_str().unwrap(), &k.uri],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("smaller"));
}
