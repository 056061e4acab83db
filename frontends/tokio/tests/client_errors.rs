//! Errors surface and nothing hangs: nbdkit's error and delay filters,
//! through the library API and through `blockwire copy`.

#[path = "client_support.rs"]
mod support;

use blockwire::client::{ClientError, Connection, NbdUri, Options};
use support::*;

/// Connect within the caller's runtime (the connection's tasks live
/// there).
async fn connect(uri: &str) -> Connection {
    let uri = NbdUri::parse(uri).unwrap();
    let opts = Options {
        meta_contexts: vec!["base:allocation".into()],
        ..Options::default()
    };
    Connection::connect(&uri, &opts).await.expect("connect")
}

#[test]
fn read_errors_surface_in_the_library() {
    let dir = TmpDir::new("err-lib");
    let Some(k) = nbdkit(
        &dir,
        &[
            "--filter=error",
            "memory",
            "16M",
            "error-pread=EIO",
            "error-pread-rate=100%",
        ],
    ) else {
        return;
    };
    block_on(async {
        let c = connect(&k.uri).await;
        let e = c.read_vec(0, 4096).await.expect_err("read must fail");
        assert!(matches!(e, ClientError::Request { .. }), "{e}");
        assert!(e.to_string().contains("EIO"), "{e}");
        // The connection survives a failed request.
        c.write(0, &[7; 4096]).await.unwrap();
        c.flush().await.unwrap();
    });
}

#[test]
fn pipelined_requests_and_block_status() {
    let dir = TmpDir::new("err-pipe");
    let Some(k) = nbdkit(&dir, &["memory", "64M"]) else {
        return;
    };
    block_on(async {
        let c = connect(&k.uri).await;
        // 256 writes of distinct data, then read back, all concurrently.
        let writes = (0..256u64).map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                c.write_vec(i * 65536, vec![(i % 250) as u8 + 1; 4096], false)
                    .await
            })
        });
        for w in writes.collect::<Vec<_>>() {
            w.await.unwrap().unwrap();
        }
        let mut buf = vec![0; 64 << 20];
        c.read(0, &mut buf).await.unwrap();
        for i in 0..256usize {
            assert!(
                buf[i * 65536..i * 65536 + 4096]
                    .iter()
                    .all(|&b| b == (i % 250) as u8 + 1)
            );
            assert!(
                buf[i * 65536 + 4096..(i + 1) * 65536]
                    .iter()
                    .all(|&b| b == 0)
            );
        }
        let ext = c
            .block_status("base:allocation", 0, 64 << 20)
            .await
            .unwrap();
        assert!(!ext.is_empty());
        c.zero(0, 1 << 20, false, false).await.unwrap();
        c.trim(1 << 20, 1 << 20).await.unwrap();
        let mut b = vec![1; 4096];
        c.read(0, &mut b).await.unwrap();
        assert!(b.iter().all(|&x| x == 0));
        assert!(matches!(
            c.block_status("qemu:nope", 0, 4096).await,
            Err(ClientError::NoContext(_))
        ));
    });
}

#[test]
fn copy_fails_loudly_on_read_and_write_errors() {
    let dir = TmpDir::new("err-copy");
    let Some(k) = nbdkit(
        &dir,
        &[
            "--filter=error",
            "pattern",
            "16M",
            "error-pread=EIO",
            "error-pread-rate=100%",
        ],
    ) else {
        return;
    };
    let dst = dir.join("dst.img");
    let out = run(
        env!("CARGO_BIN_EXE_blockwire"),
        &["copy", "--no-progress", &k.uri, dst.to_str().unwrap()],
    );
    assert!(!out.status.success(), "a copy with read errors must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FAILED") && err.contains("EIO"), "{err}");

    let dir2 = TmpDir::new("err-copy-w");
    let Some(k) = nbdkit(
        &dir2,
        &[
            "--filter=error",
            "memory",
            "16M",
            "error-pwrite=ENOSPC",
            "error-pwrite-rate=100%",
        ],
    ) else {
        return;
    };
    let src = dir2.join("src.img");
    sparse_image(&src, 16 << 20);
    let out = run(
        env!("CARGO_BIN_EXE_blockwire"),
        &["copy", "--no-progress", src.to_str().unwrap(), &k.uri],
    );
    assert!(!out.status.success(), "a copy with write errors must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ENOSPC"));
}

#[test]
fn slow_server_completes() {
    let dir = TmpDir::new("err-delay");
    let Some(k) = nbdkit(
        &dir,
        &[
            "--filter=delay",
            "memory",
            "8M",
            "rdelay=10ms",
            "wdelay=10ms",
        ],
    ) else {
        return;
    };
    let src = dir.join("src.img");
    sparse_image(&src, 8 << 20);
    let back = dir.join("back.img");
    blockwire(&["copy", "--no-progress", src.to_str().unwrap(), &k.uri]);
    blockwire(&["copy", "--no-progress", &k.uri, back.to_str().unwrap()]);
    assert_eq!(sha256(&src), sha256(&back));
}

#[test]
fn server_dying_fails_requests() {
    let dir = TmpDir::new("err-die");
    let Some(k) = nbdkit(&dir, &["--filter=delay", "memory", "8M", "rdelay=3"]) else {
        return;
    };
    let mut k = Some(k);
    block_on(async {
        let c = connect(&k.as_ref().unwrap().uri).await;
        let pending = tokio::spawn(async move { c.read_vec(0, 4096).await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(k.take());
        let r = pending.await.unwrap();
        assert!(r.is_err(), "a read whose server died must fail");
    });
}

/// Buffers handed back by `write_buf` and reused by `read_into` never show
/// what they held before: a sparse read (blockwire serves holes as hole
/// chunks) zeroes its holes in the reused buffer.
#[test]
fn reused_buffers_read_holes_as_zeroes() {
    let dir = TmpDir::new("err-reuse");
    let s = blockwire_serve(&dir, &["--memory", "16M"]);
    block_on(async {
        let c = connect(&s.uri).await;
        let back = c.write_buf(65536, vec![0x5a; 65536], false).await.unwrap();
        // Whether the payload came back depends on timing; either is fine.
        assert!(back.is_empty() || back == vec![0x5a; 65536]);
        let stale = vec![0xa5; 1 << 20];
        let got = c.read_into(0, 256 << 10, stale).await.unwrap();
        assert_eq!(got.len(), 256 << 10);
        assert!(got[..65536].iter().all(|&b| b == 0), "hole before the data");
        assert!(got[65536..131072].iter().all(|&b| b == 0x5a));
        assert!(got[131072..].iter().all(|&b| b == 0), "hole after the data");
        // A buffer shorter than the read grows.
        let got = c.read_into(65536, 4096, vec![1; 10]).await.unwrap();
        assert_eq!(got, vec![0x5a; 4096]);
    });
}
