//! Smaller `blockwire serve` options end to end: --cow, --null, --pid-file,
//! SIGINT, and the real `nbdsh` binary.

use blockwire_tests::*;

#[test]
fn cow_overlay_leaves_the_base_untouched() {
    require!("python3-nbd");
    let dir = TmpDir::new("cow");
    let base = dir.join("base.img");
    write_patterned(&base, 4 * MIB);
    let before = sha256(&base);
    let Some(srv) = Server::start(&[base.to_str().unwrap(), "--cow"]) else {
        return;
    };
    let [(_, u), (_, t)] = srv.uris();
    let script = format!(
        r#"
import sys, nbd
base = open({:?}, "rb").read()
a, b = nbd.NBD(), nbd.NBD()
a.connect_uri(sys.argv[1]); b.connect_uri(sys.argv[2])
assert not a.is_read_only(), "--cow export is read-only"
a.pwrite(b"\x99" * 8192, 4096)
a.flush()
assert b.pread(8192, 4096) == b"\x99" * 8192, "overlay write not visible on another connection"
assert b.pread(4096, 0) == base[:4096], "unwritten range does not read through to the base"
assert b.pread(65536, 1 << 20) == base[1 << 20:(1 << 20) + 65536]
a.trim(4096, 4096); a.flush()
a.shutdown(); b.shutdown()
print("OK")
"#,
        base.to_str().unwrap()
    );
    py_ok(&script, &[&u, &t]);
    drop(srv);
    assert_eq!(sha256(&base), before, "--cow changed the base file");
}

#[test]
fn null_device_reads_zeroes_and_drops_writes() {
    require!("python3-nbd");
    let Some(srv) = Server::start(&["--null", "64M"]) else {
        return;
    };
    let [(_, u), (_, t)] = srv.uris();
    py_ok(
        r#"
import sys, nbd
for uri in sys.argv[1:]:
    h = nbd.NBD(); h.connect_uri(uri)
    assert h.get_size() == 64 << 20
    h.pwrite(b"\x55" * 65536, 0)
    h.flush()
    assert h.pread(65536, 0) == bytes(65536), "null device returned written data"
    assert h.pread(1 << 20, (64 << 20) - (1 << 20)) == bytes(1 << 20)
    h.shutdown()
"#,
        &[&u, &t],
    );
}

#[test]
fn pid_file_and_sigint_exit_zero() {
    require!("nbdinfo");
    if is_standin() {
        // qemu-nbd's --pid-file works, but its SIGINT exit status is its own.
        eprintln!("SKIPPED (stand-in): SIGINT exit status is blockwire's contract");
        return;
    }
    let dir = TmpDir::new("pidfile");
    let pid_file = dir.join("bw.pid");
    let Some(mut srv) =
        Server::start(&["--memory", "8M", "--pid-file", pid_file.to_str().unwrap()])
    else {
        return;
    };
    let pid = std::fs::read_to_string(&pid_file).unwrap_or_else(|e| panic!("pid file: {e}"));
    assert_eq!(pid.trim(), srv.pids()[0].to_string(), "--pid-file contents");
    run_ok("nbdinfo", &[srv.uri_tcp("").as_str()]);
    srv.signal(libc::SIGINT);
    let deadline = std::time::Instant::now() + STOP_TIMEOUT;
    while srv.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "server still running {STOP_TIMEOUT:?} after SIGINT"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let st = srv.stop();
    assert!(
        st.iter().all(|s| s.success()),
        "exit after SIGINT: {st:?}\n{}",
        srv.stderr()
    );
}

#[test]
fn nbdsh_binary_connects() {
    require!("nbdsh");
    require!("python3-nbd");
    let nbdsh = which("nbdsh").unwrap().display().to_string();
    let Some(srv) = Server::start(&["--memory", "32M", "-n", "sh"]) else {
        return;
    };
    for (t, uri) in srv.uris() {
        // nbdsh runs `python3 -mnbd` from PATH, which may be a Python
        // without the nbd module (pyenv): put /usr/bin first.
        let mut cmd = std::process::Command::new(&nbdsh);
        cmd.env(
            "PATH",
            format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .args(["-u", uri.as_str()])
        .args(["-c", "assert h.get_size() == 32 << 20"])
        .args(["-c", "h.pwrite(b'\\x07' * 4096, 0)"])
        .args(["-c", "assert h.pread(4096, 0) == b'\\x07' * 4096"])
        .args(["-c", "print(h.get_export_name())"]);
        let out = run_cmd(cmd, CMD_TIMEOUT);
        assert!(
            out.status.success(),
            "{t}: nbdsh failed: {}\n{}",
            stdout_str(&out),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout_str(&out).contains("sh"), "{t}: {}", stdout_str(&out));
    }
}
