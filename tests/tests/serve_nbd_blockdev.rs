//! `blockwire serve --blockdev '{"driver":"nbd",...}'`: blockwire as a
//! proxy of another server's export, checked with real clients (qemu-io
//! patterns, qemu-img compare, nbdinfo --map) through a chain
//! blockwire → blockwire → qemu-nbd, and across the upstream being killed
//! and started again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use std::{fs, thread};

use blockwire_tests::*;

/// A persistent qemu-nbd on a raw file, export `base`, with
/// `qemu:allocation-depth`.
struct QemuNbd {
    child: Child,
    sock: PathBuf,
}

impl QemuNbd {
    fn start(img: &Path, sock: &Path) -> QemuNbd {
        let _ = fs::remove_file(sock);
        let child = Command::new("qemu-nbd")
            .args([
                "-t",
                "-e",
                "8",
                "-f",
                "raw",
                "-x",
                "base",
                "-A",
                "--cache=writeback",
            ])
            .arg("-k")
            .arg(sock)
            .arg(img)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn qemu-nbd");
        let deadline = Instant::now() + START_TIMEOUT;
        while std::os::unix::net::UnixStream::connect(sock).is_err() {
            assert!(Instant::now() < deadline, "qemu-nbd did not listen");
            thread::sleep(Duration::from_millis(20));
        }
        QemuNbd {
            child,
            sock: sock.to_owned(),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `--blockdev` for an nbd node `up` over a Unix socket.
fn nbd_blockdev(sock: &Path, export: &str, reconnect_delay: u32) -> String {
    format!(
        r#"{{"driver":"nbd","node-name":"up","server":{{"type":"unix","path":"{}"}},"export":"{export}","reconnect-delay":{reconnect_delay}}}"#,
        sock.display()
    )
}

/// `blockwire serve` exporting node `up` as `name`, writable, with
/// `qemu:allocation-depth`.
fn proxy(blockdev: &str, name: &str) -> Option<Server> {
    let export = format!(
        r#"{{"type":"nbd","id":"e0","node-name":"up","name":"{name}","writable":true,"allocation-depth":true}}"#
    );
    Server::start(&["--blockdev", blockdev, "--export", &export])
}

fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(uri);
    let out = run_ok("qemu-io", &args);
    let text = stdout_str(&out);
    assert!(
        !text.contains("Pattern verification failed") && !text.contains("failed:"),
        "qemu-io {cmds:?}:\n{text}"
    );
    text
}

#[test]
fn a_chain_of_two_blockwire_proxies_over_qemu_nbd() {
    require!("qemu-nbd", "qemu-io", "qemu-img", "nbdinfo");
    if is_standin() {
        eprintln!("*** SKIPPED: --blockdev nbd is blockwire's");
        return;
    }
    let dir = TmpDir::new("chain");
    let img = dir.join("base.img");
    let reference = dir.join("ref.img");
    write_patterned(&img, 64 * MIB);
    fs::copy(&img, &reference).unwrap();
    let q = QemuNbd::start(&img, &dir.join("q.sock"));
    let Some(mid) = proxy(&nbd_blockdev(&q.sock, "base", 0), "mid") else {
        return;
    };
    let Some(top) = proxy(&nbd_blockdev(&mid.sock, "mid", 0), "top") else {
        return;
    };
    let top_uri = top.uri_unix("top");

    // The chain reads what qemu-nbd serves.
    run_ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            img.to_str().unwrap(),
            &top_uri,
        ],
    );
    // Writes (one longer than 32 MiB, split on the way), zeroes and a
    // trim, through both proxies.
    qemu_io(
        &top_uri,
        &[
            "write -P 0xab 1M 64k",
            "write -P 0xcd 8M 40M",
            "write -z 2M 1M",
            "write -z -u 4M 2M",
            "flush",
            "read -P 0xab 1M 64k",
            "read -P 0xcd 8M 40M",
            "read -P 0 2M 1M",
            "read -P 0 4M 2M",
        ],
    );
    write_at(&reference, MIB, &vec![0xab; 64 * KIB as usize]);
    write_at(&reference, 8 * MIB, &vec![0xcd; 40 * MIB as usize]);
    write_at(&reference, 2 * MIB, &vec![0; MIB as usize]);
    write_at(&reference, 4 * MIB, &vec![0; 2 * MIB as usize]);
    // On qemu-nbd's file, and as the chain reads it.
    run_ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            reference.to_str().unwrap(),
            &top_uri,
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
            reference.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    );
    // The maps agree at every level.
    let base_uri = format!("nbd+unix:///base?socket={}", q.sock.display());
    for ctx in ["base:allocation", "qemu:allocation-depth"] {
        let want = merge_extents(&nbdinfo_map(&base_uri, Some(ctx)));
        assert_eq!(
            merge_extents(&nbdinfo_map(&mid.uri_unix("mid"), Some(ctx))),
            want,
            "{ctx} one proxy up"
        );
        assert_eq!(
            merge_extents(&nbdinfo_map(&top_uri, Some(ctx))),
            want,
            "{ctx} two proxies up"
        );
    }
}

/// The upstream killed and started again between two clients: with
/// `reconnect-delay` and without it, the proxy serves the second client
/// (the first request after the server is back reconnects).
#[test]
fn the_proxy_outlives_its_upstream_restarting() {
    require!("qemu-nbd", "qemu-io");
    if is_standin() {
        return;
    }
    for delay in [0, 600] {
        let dir = TmpDir::new("restart");
        let img = dir.join("base.img");
        sparse_file(&img, 16 * MIB);
        let qsock = dir.join("q.sock");
        let mut q = QemuNbd::start(&img, &qsock);
        let Some(p) = proxy(&nbd_blockdev(&qsock, "base", delay), "p") else {
            return;
        };
        let uri = p.uri_unix("p");
        qemu_io(&uri, &["write -P 0x11 0 1M", "flush"]);
        q.kill();
        q = QemuNbd::start(&img, &qsock);
        qemu_io(&uri, &["read -P 0x11 0 1M", "write -P 0x22 1M 1M", "flush"]);
        drop(q);
        assert!(read_at(&img, MIB, MIB as usize).iter().all(|&b| b == 0x22));
    }
}

/// A proxy whose upstream is not there does not start: one line naming
/// the server, exit status 1, nothing listening.
#[test]
fn a_missing_upstream_is_an_error_at_start() {
    if is_standin() {
        return;
    }
    let dir = TmpDir::new("noup");
    let sock = dir.join("nobody.sock");
    let out = run(
        blockwire_bin().to_str().unwrap(),
        &[
            "serve",
            "--blockdev",
            &nbd_blockdev(&sock, "x", 0),
            "--export",
            r#"{"type":"nbd","id":"e0","node-name":"up"}"#,
            "--listen",
            &format!("unix:{}", dir.join("s.sock").display()),
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        explain("blockwire", &["serve"], &out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&sock.display().to_string()), "{err}");
    assert!(!dir.join("s.sock").exists(), "nothing listened");
}

/// `--object tls-creds-x509` names the credentials an nbd node's
/// `tls-creds` uses: a proxy in plaintext in front of a qemu-nbd that
/// requires TLS.
#[test]
fn a_proxy_speaks_tls_to_its_upstream() {
    require!("qemu-nbd", "qemu-io", "openssl");
    if is_standin() {
        return;
    }
    let dir = TmpDir::new("tlsup");
    let pki = dir.join("pki");
    fs::create_dir_all(&pki).unwrap();
    let certs = ca_signed_cert(&pki);
    let img = dir.join("base.img");
    write_patterned(&img, 8 * MIB);
    let qsock = dir.join("q.sock");
    let _ = fs::remove_file(&qsock);
    let mut q = Command::new("qemu-nbd")
        .args([
            "-t",
            "-e",
            "4",
            "-f",
            "raw",
            "-x",
            "base",
            "--cache=writeback",
        ])
        .arg("--object")
        .arg(format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=off",
            certs.dir.display()
        ))
        .args(["--tls-creds", "tls0", "-k"])
        .arg(&qsock)
        .arg(&img)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn qemu-nbd");
    let deadline = Instant::now() + START_TIMEOUT;
    while std::os::unix::net::UnixStream::connect(&qsock).is_err() {
        assert!(Instant::now() < deadline, "qemu-nbd did not listen");
        thread::sleep(Duration::from_millis(20));
    }
    let object = format!("tls-creds-x509,id=up-tls,dir={}", certs.dir.display());
    let blockdev = format!(
        r#"{{"driver":"nbd","node-name":"up","server":{{"type":"unix","path":"{}"}},"export":"base","tls-creds":"up-tls"}}"#,
        qsock.display()
    );
    let export = r#"{"type":"nbd","id":"e0","node-name":"up","name":"p","writable":true}"#;
    let Some(p) = Server::start(&[
        "--object",
        &object,
        "--blockdev",
        &blockdev,
        "--export",
        export,
    ]) else {
        return;
    };
    let uri = p.uri_unix("p");
    run_ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            img.to_str().unwrap(),
            &uri,
        ],
    );
    qemu_io(
        &uri,
        &["write -P 0x5e 1M 256k", "flush", "read -P 0x5e 1M 256k"],
    );
    drop(p);
    let _ = q.kill();
    let _ = q.wait();
    assert!(
        read_at(&img, MIB, 256 * KIB as usize)
            .iter()
            .all(|&b| b == 0x5e)
    );

    // Without the credentials the proxy does not start, and says why.
    let bad = blockdev.replace("up-tls", "nope");
    let out = run(
        blockwire_bin().to_str().unwrap(),
        &[
            "serve",
            "--blockdev",
            &bad,
            "--export",
            export,
            "--listen",
            "unix:/nonexistent/x",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No TLS credentials with id 'nope'"), "{err}");
}
