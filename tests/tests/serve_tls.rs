//! TLS (`--tls require|on`, x509): plaintext clients are refused under
//! `require`; libnbd (`nbds://...?tls-certificates=DIR`) and qemu
//! (`tls-creds-x509,endpoint=client`) connect, over TCP and a Unix socket.

use blockwire_tests::*;

/// A server with a self-signed certificate (what the issue asks for); the
/// qemu-nbd stand-in refuses to serve a CA certificate, so it gets a
/// CA-signed one.
fn tls_server(dir: &TmpDir, mode: &str) -> Option<Server> {
    if is_standin() {
        tls_server_with(ca_signed_cert(dir.path()), mode)
    } else {
        tls_server_with(self_signed_cert(dir.path()), mode)
    }
}

fn tls_server_with(certs: Certs, mode: &str) -> Option<Server> {
    Server::start(&[
        "--memory",
        "16M",
        "-n",
        "secure",
        "--tls",
        mode,
        "--tls-cert",
        certs.cert.to_str().unwrap(),
        "--tls-key",
        certs.key.to_str().unwrap(),
    ])
}

/// qemu `--image-opts` for the export over TLS (`tls0` = client creds).
fn qemu_opts(srv: &Server, transport: &str) -> String {
    match transport {
        "tcp" => format!(
            "driver=nbd,host=localhost,port={},export=secure,tls-creds=tls0",
            srv.port
        ),
        _ => format!(
            "driver=nbd,path={},export=secure,tls-creds=tls0,tls-hostname=localhost",
            srv.sock.display()
        ),
    }
}

#[test]
fn tls_require_refuses_plaintext_clients() {
    require!("openssl", "nbdinfo");
    let dir = TmpDir::new("tlsreq");
    let Some(srv) = tls_server(&dir, "require") else {
        return;
    };
    for (t, uri) in srv.uris() {
        let out = run("nbdinfo", &[uri.as_str()]);
        assert!(
            !out.status.success(),
            "{t}: plaintext nbdinfo succeeded against --tls require: {}",
            explain("nbdinfo", &[&uri], &out)
        );
        let out = run("nbdinfo", &["--list", uri.as_str()]);
        assert!(
            !out.status.success() || !stdout_str(&out).contains("export-size"),
            "{t}: plaintext nbdinfo --list revealed exports under --tls require: {}",
            explain("nbdinfo", &["--list", &uri], &out)
        );
    }
    if need(&["qemu-io"]) {
        let uri = srv.uri_tcp("secure");
        let out = run("qemu-io", &["-f", "raw", "-c", "read 0 4k", &uri]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("read 4096/4096"),
            "plaintext qemu-io read data under --tls require: {}",
            explain("qemu-io", &[&uri], &out)
        );
    }
    srv.assert_running_ref("after refused plaintext clients");
}

#[test]
fn tls_require_nbdinfo_nbdsh_and_qemu_connect() {
    require!("openssl", "nbdinfo", "python3-nbd", "qemu-io", "qemu-img");
    let dir = TmpDir::new("tlsok");
    let Some(srv) = tls_server(&dir, "require") else {
        return;
    };
    for (t, uri) in srv.tls_uris() {
        let out = run_ok("nbdinfo", &["--json", uri.as_str()]);
        let v = json(&out);
        assert_eq!(v["TLS"], true, "{t}: {v}");
        assert_eq!(v["exports"][0]["export-name"], "secure", "{t}: {v}");
        assert_eq!(
            v["exports"][0]["export-size"].as_u64(),
            Some(16 * MIB),
            "{t}: {v}"
        );
    }
    // libnbd writes over TLS (both transports) ...
    let [(_, u), (_, t)] = srv.tls_uris();
    py_ok(
        r#"
import sys, nbd
for i, uri in enumerate(sys.argv[1:]):
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_uri_allow_local_file(True)
    h.connect_uri(uri)
    h.pwrite(bytes([0x5c + i]) * 65536, i * 65536)
    h.flush()
    assert h.pread(65536, i * 65536) == bytes([0x5c + i]) * 65536
    h.shutdown()
"#,
        &[&u, &t],
    );
    // ... and qemu reads it back over TLS, and writes.
    let object = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=client",
        dir.path().display()
    );
    for t in ["tcp", "unix"] {
        let opts = qemu_opts(&srv, t);
        let args = [
            "--object",
            &object,
            "--image-opts",
            &opts,
            "-c",
            "read -P 0x5c 0 64k",
            "-c",
            "read -P 0x5d 64k 64k",
            "-c",
            "write -P 0x77 1M 64k",
            "-c",
            "read -P 0x77 1M 64k",
        ];
        let out = run("qemu-io", &args);
        let text = format!(
            "{}{}",
            stdout_str(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("fail") && !text.contains("rror"),
            "{t}: qemu-io over TLS: {}",
            explain("qemu-io", &args, &out)
        );
        let img = dir.join(&format!("out-{t}.img"));
        let img_s = img.to_str().unwrap();
        run_ok(
            "qemu-img",
            &[
                "convert",
                "--object",
                &object,
                "--image-opts",
                &opts,
                "-O",
                "raw",
                img_s,
            ],
        );
        assert!(
            read_at(&img, 0, 65536) == vec![0x5c; 65536],
            "{t}: qemu-img convert over TLS"
        );
        assert!(
            read_at(&img, MIB, 65536) == vec![0x77; 65536],
            "{t}: qemu-img convert over TLS"
        );
    }
}

#[test]
fn tls_on_accepts_plaintext_and_tls() {
    require!("openssl", "nbdinfo");
    let dir = TmpDir::new("tlson");
    let Some(srv) = tls_server(&dir, "on") else {
        return;
    };
    for (t, uri) in srv.uris() {
        let v = json(&run_ok("nbdinfo", &["--json", uri.as_str()]));
        assert_eq!(v["TLS"], false, "{t}: {v}");
    }
    for (t, uri) in srv.tls_uris() {
        let v = json(&run_ok("nbdinfo", &["--json", uri.as_str()]));
        assert_eq!(v["TLS"], true, "{t}: {v}");
    }
}

#[test]
fn tls_with_ca_signed_certificate() {
    require!("openssl", "nbdinfo");
    let dir = TmpDir::new("tlsca");
    let Some(srv) = tls_server_with(ca_signed_cert(dir.path()), "require") else {
        return;
    };
    for (t, uri) in srv.tls_uris() {
        let v = json(&run_ok("nbdinfo", &["--json", uri.as_str()]));
        assert_eq!(v["TLS"], true, "{t}: {v}");
        assert_eq!(v["exports"][0]["export-name"], "secure", "{t}: {v}");
    }
    for (t, uri) in srv.uris() {
        let out = run("nbdinfo", &[uri.as_str()]);
        assert!(
            !out.status.success(),
            "{t}: plaintext accepted: {}",
            explain("nbdinfo", &[&uri], &out)
        );
    }
}

/// blockwire's own client (`blockwire info` / `blockwire copy`) over TLS
/// against blockwire serve. rustls, like any WebPKI verifier, will not
/// accept a CA certificate as a server's, so this uses the CA-signed pair.
#[test]
fn blockwire_client_over_tls() {
    require!("openssl");
    if is_standin() {
        return;
    }
    let dir = TmpDir::new("tlsclient");
    let certs = ca_signed_cert(dir.path());
    let Some(srv) = tls_server_with(certs, "require") else {
        return;
    };
    let bin = blockwire_bin();
    let bin = bin.to_str().unwrap();
    for (t, uri) in srv.tls_uris() {
        let out = run_ok(bin, &["info", "--json", uri.as_str()]);
        let j = json(&out);
        assert_eq!(j["exports"][0]["export-size"], 16 << 20, "{t}: {j}");
        assert_eq!(j["exports"][0]["export-name"], "secure", "{t}: {j}");

        let src = dir.join(&format!("src-{t}.img"));
        let back = dir.join(&format!("back-{t}.img"));
        write_patterned(&src, 16 << 20);
        run_ok(
            bin,
            &["copy", "--no-progress", src.to_str().unwrap(), uri.as_str()],
        );
        run_ok(
            bin,
            &[
                "copy",
                "--no-progress",
                uri.as_str(),
                back.to_str().unwrap(),
            ],
        );
        assert_eq!(sha256(&src), sha256(&back), "{t}: TLS copy round trip");
    }
    // Without the CA the server's certificate must not be trusted.
    let untrusted = TmpDir::new("tlsnoca");
    let uri = format!(
        "nbds://localhost:{}/secure?tls-certificates={}",
        srv.port,
        untrusted.path().display()
    );
    let out = run(bin, &["info", uri.as_str()]);
    assert!(
        !out.status.success(),
        "an untrusted server certificate was accepted: {}",
        explain(bin, &["info", &uri], &out)
    );
    srv.assert_running_ref("after blockwire's TLS clients");
}

/// `nbds://` means TLS is required: blockwire's client must refuse a
/// plaintext server rather than fall back to cleartext.
#[test]
fn blockwire_client_refuses_plaintext_server_when_tls_required() {
    if is_standin() {
        return;
    }
    let Some(srv) = Server::start(&["--memory", "1M"]) else {
        return;
    };
    let dir = TmpDir::new("tlsplain");
    let certs = ca_signed_cert(dir.path());
    let bin = blockwire_bin();
    let uri = format!(
        "nbds://localhost:{}/?tls-certificates={}",
        srv.port,
        certs.dir.display()
    );
    let out = run(bin.to_str().unwrap(), &["info", uri.as_str()]);
    assert!(
        !out.status.success(),
        "nbds:// connected to a plaintext server: {}",
        explain(bin.to_str().unwrap(), &["info", &uri], &out)
    );
}
