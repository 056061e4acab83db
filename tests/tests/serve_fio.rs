//! fio's nbd engine (libnbd) against `blockwire serve`: random 4 KiB writes
//! at queue depth 16, then crc32c verification of everything written.

use blockwire_tests::*;

fn fio_verify(uri: &str, label: &str) {
    let uri_arg = format!("--uri={uri}");
    let args = [
        "--name=bw-randwrite",
        "--ioengine=nbd",
        uri_arg.as_str(),
        "--rw=randwrite",
        "--bs=4k",
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
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .to_lowercase();
    let verify_errors = [
        "verify: bad",
        "verify failed",
        "bad magic",
        "bad header",
        "crc32c: verify",
    ];
    assert!(
        out.status.success() && !verify_errors.iter().any(|e| text.contains(e)),
        "{label}: fio failed: {}",
        explain("fio", &args, &out)
    );
    assert!(
        text.contains("err= 0"),
        "{label}: fio reported errors: {}",
        explain("fio", &args, &out)
    );
}

#[test]
fn fio_randwrite_verify_crc32c_unix() {
    require!("fio-nbd");
    let Some(srv) = Server::start(&["--memory", "64M"]) else {
        return;
    };
    fio_verify(&srv.uri_unix(""), "unix");
}

#[test]
fn fio_randwrite_verify_crc32c_tcp_file_backend() {
    require!("fio-nbd");
    let dir = TmpDir::new("fio");
    let img = dir.join("fio.img");
    sparse_file(&img, 64 * MIB);
    let Some(srv) = Server::start(&[img.to_str().unwrap()]) else {
        return;
    };
    fio_verify(&srv.uri_tcp(""), "tcp");
}
