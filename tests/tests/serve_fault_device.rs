//! Fault: the device fails writes, flushes, zeroes and trims with EIO
//! (`blkdebug=` rules on file exports; reads are covered by
//! `serve_faults::blkdebug_eio_fails_only_that_request`).
//!
//! What is lost: nothing that was acknowledged. The failing request gets
//! EIO and only it: the connection stays usable, every other kind of
//! request succeeds, a failed write or zero leaves what was acknowledged
//! before in place (blkdebug fails the request before it reaches the
//! file, as QEMU's does), and everything acknowledged is in the file after
//! the server stopped.
//!
//! The rules are QEMU's: a rule becomes active when its event fires and
//! then fails every read, write, zero, trim and flush that touches its
//! sector until another rule fires, so each export has one rule, the
//! other requests on it stay clear of the rule's sector, and the flush
//! rule (a flush has no sector) is `once=on`, one export per round.

use blockwire_tests::*;

const CHECK: &str = r#"
import errno, sys, nbd
MB = 1 << 20
def eio(what, f, *a):
    try:
        f(*a)
    except nbd.Error as e:
        assert e.errnum == errno.EIO, "%s: expected EIO, got %s (%s)" % (what, e.errnum, e)
        return
    raise AssertionError(what + ": succeeded despite the blkdebug rule")
def pat(b):
    return bytes([b]) * MB
rnd = 0
for base in sys.argv[1:]:
    for sr in (True, False):
        rnd += 1
        def conn(name):
            h = nbd.NBD()
            h.set_request_structured_replies(sr)
            h.connect_uri(base.replace("EXPORT", name))
            return h
        ctx = lambda name, what: "%s sr=%s export %s: %s" % (base, sr, name, what)
        # The rules fail requests touching 1 MiB..2 MiB (sector 2048);
        # flush has no sector and always fails.
        h = conn("wr")
        h.pwrite(pat(1), 0)
        eio(ctx("wr", "write at 1 MiB"), h.pwrite, pat(2), MB)
        eio(ctx("wr", "FUA write at 1 MiB"), h.pwrite, pat(2), MB, nbd.CMD_FLAG_FUA)
        assert h.pread(MB, 0) == pat(1), ctx("wr", "acknowledged write lost")
        h.pwrite(pat(3), 2 * MB, nbd.CMD_FLAG_FUA)
        h.zero(MB, 3 * MB)
        h.trim(MB, 3 * MB)
        h.flush()
        assert h.pread(MB, 2 * MB) == pat(3), ctx("wr", "write after EIO")
        h.shutdown()

        fl = "fl%d" % rnd
        h = conn(fl)
        h.pwrite(pat(4), 0)
        eio(ctx(fl, "flush"), h.flush)
        h.pwrite(pat(5), MB, nbd.CMD_FLAG_FUA)
        assert h.pread(MB, 0) == pat(4) and h.pread(MB, MB) == pat(5), ctx(fl, "reads after EIO")
        h.flush()
        h.shutdown()

        h = conn("zr")
        if rnd == 1:
            h.pwrite(pat(6), MB)
        eio(ctx("zr", "zero at 1 MiB"), h.zero, MB, MB)
        eio(ctx("zr", "zero NO_HOLE at 1 MiB"), h.zero, 4096, MB, nbd.CMD_FLAG_NO_HOLE)
        # The rule, now active, fails reads of its sector too: read past it.
        assert h.pread(MB - 4096, MB + 4096) == pat(6)[4096:], ctx("zr", "failed zero changed data")
        h.pwrite(pat(7), 0)
        h.zero(MB, 2 * MB)
        h.flush()
        assert h.pread(MB, 2 * MB) == bytes(MB), ctx("zr", "zero elsewhere")
        h.shutdown()

        h = conn("tr")
        if rnd == 1:
            h.pwrite(pat(8), MB)
        eio(ctx("tr", "trim at 1 MiB"), h.trim, MB, MB)
        assert h.pread(MB - 4096, MB + 4096) == pat(8)[4096:], ctx("tr", "failed trim changed data")
        h.trim(MB, 2 * MB)
        h.pwrite(pat(9), 0)
        h.flush()
        h.shutdown()
print("OK")
"#;

#[test]
fn blkdebug_eio_on_write_flush_zero_and_trim_fails_only_that_request() {
    require!("python3-nbd", "qemu-io");
    if is_standin() {
        // qemu-nbd has no per-export rules; its blkdebug needs --image-opts.
        return;
    }
    let dir = TmpDir::new("eiodev");
    let mut args = Vec::new();
    let mut files = Vec::new();
    let exports = [
        ("wr", "write,,sector=2048"),
        ("fl1", "flush,,once=on"),
        ("fl2", "flush,,once=on"),
        ("fl3", "flush,,once=on"),
        ("fl4", "flush,,once=on"),
        ("zr", "zero,,sector=2048"),
        ("tr", "discard,,sector=2048"),
    ];
    for (name, rule) in exports {
        let f = dir.join(&format!("{name}.img"));
        sparse_file(&f, 4 * MIB);
        args.push("--export".to_string());
        args.push(format!(
            "name={name},file={},blkdebug=event={rule},,errno=5",
            f.display()
        ));
        files.push((name, f));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let Some(mut srv) = Server::start(&args) else {
        return;
    };
    let [(_, u), (_, t)] = srv.uris_for("EXPORT");
    py_ok(CHECK, &[&u, &t]);

    // qemu-io sees the same errors (its messages for EIO).
    for (name, cmd) in [("wr", "write -P 0x11 1M 4k"), ("zr", "write -z 1M 4k")] {
        let args = ["-f", "raw", "-c", cmd, &srv.uri_unix(name)];
        let out = run("qemu-io", &args);
        let text = stdout_str(&out) + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("write failed: Input/output error"),
            "{name}: {}",
            explain("qemu-io", &args, &out)
        );
    }
    srv.assert_running("after the injected errors");
    srv.stop();
    // What the last round acknowledged is in the files.
    let pat = |b: u8| vec![b; MIB as usize];
    let want: [(&str, u64, Vec<u8>); 6] = [
        ("wr", 0, pat(1)),
        ("wr", 2 * MIB, pat(3)),
        ("fl4", 0, pat(4)),
        ("fl4", MIB, pat(5)),
        ("zr", 0, pat(7)),
        ("tr", 0, pat(9)),
    ];
    for (name, off, data) in want {
        let f = &files.iter().find(|(n, _)| *n == name).unwrap().1;
        assert!(
            read_at(f, off, MIB as usize) == data,
            "export {name}: acknowledged write at {off} is not in the file"
        );
    }
    for (name, b) in [("zr", 6), ("tr", 8)] {
        let f = &files.iter().find(|(n, _)| *n == name).unwrap().1;
        assert!(
            read_at(f, MIB, MIB as usize) == pat(b),
            "{name}: the failed request changed the file"
        );
    }
}
