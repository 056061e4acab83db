//! `blockwire serve --blockdev / --object / --export` with values that are
//! wrong: every one gives one line that names the member, worded as
//! qemu-storage-daemon words it, and exit status 1 before anything
//! listens.
//!
//! The wording is not taken on trust: every case QEMU shares (its types,
//! its drivers, its checks) is also given to the real qemu-storage-daemon
//! 7.2 (the version the QMP differential test uses), whose message must be
//! the same. Cases that are blockwire's own (its drivers, the QEMU members
//! it refuses) are checked against blockwire alone. Where the installed
//! QEMU 10 words a message differently from 7.2, 7.2 is what counts.
//!
//! qemu-storage-daemon 7.2 comes from Debian's qemu-system-common,
//! unpacked by `targets/microvm/scripts/qemu-system.sh` into
//! `targets/microvm/target/qemu-system/`; `QSD72` may name another copy.
//! Under `CI=true` a missing one is a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use blockwire_tests::*;

const TIMEOUT: Duration = Duration::from_secs(30);

/// One wrong invocation: options before it (nodes an export needs), the
/// option and value under test, the message, and whether
/// qemu-storage-daemon 7.2 shares it.
struct Case {
    pre: &'static [(&'static str, &'static str)],
    opt: &'static str,
    value: &'static str,
    msg: &'static str,
    qemu: bool,
}

const fn bd(value: &'static str, msg: &'static str) -> Case {
    Case {
        pre: &[],
        opt: "--blockdev",
        value,
        msg,
        qemu: true,
    }
}

const fn obj(value: &'static str, msg: &'static str) -> Case {
    Case {
        pre: &[],
        opt: "--object",
        value,
        msg,
        qemu: true,
    }
}

const NODES: &[(&str, &str)] = &[
    ("--blockdev", "null-co,node-name=n"),
    ("--blockdev", "null-co,node-name=ro,read-only=on"),
];

const fn exp(value: &'static str, msg: &'static str) -> Case {
    Case {
        pre: NODES,
        opt: "--export",
        value,
        msg,
        qemu: true,
    }
}

/// Only blockwire has it (its drivers, the members it refuses).
const fn ours(mut c: Case) -> Case {
    c.qemu = false;
    c
}

const CASES: &[Case] = &[
    // ---- JSON syntax ----
    bd(r#"{"driver":"null-co""#, "JSON parse error, premature EOI"),
    bd(
        r#"{"driver":"null-co",}"#,
        "JSON parse error, expecting value",
    ),
    bd(
        r#"{"driver" "null-co"}"#,
        "JSON parse error, missing : in object pair",
    ),
    bd(
        r#"{"driver":"null-co" "size":1}"#,
        "JSON parse error, expected separator in dict",
    ),
    bd(
        r#"{"driver":"null-co","size":01}"#,
        "JSON parse error, stray '01'",
    ),
    bd(
        r#"{"driver":"null-co","read-only":ture}"#,
        "JSON parse error, invalid keyword 'ture'",
    ),
    bd(
        r#"{"driver":"null-co","driver":"raw"}"#,
        "JSON parse error, duplicate key",
    ),
    bd(
        r#"{"driver":"null-co"}}"#,
        "Expecting at most one JSON value",
    ),
    // ---- BlockdevOptions: the union and common members ----
    bd(
        r#"{"driver":"foo"}"#,
        "Parameter 'driver' does not accept value 'foo'",
    ),
    bd(r#"{"node-name":"x"}"#, "Parameter 'driver' is missing"),
    bd(
        r#"{"driver":5}"#,
        "Invalid parameter type for 'driver', expected: string",
    ),
    bd(
        r#"{"driver":"null-co","foo":1}"#,
        "Parameter 'foo' is unexpected",
    ),
    bd(
        r#"{"driver":"null-co","read-only":"yes"}"#,
        "Invalid parameter type for 'read-only', expected: boolean",
    ),
    bd(
        r#"{"driver":"null-co","node-name":5}"#,
        "Invalid parameter type for 'node-name', expected: string",
    ),
    bd(
        r#"{"driver":"null-co","cache":true}"#,
        "Invalid parameter type for 'cache', expected: object",
    ),
    bd(
        r#"{"driver":"null-co","cache":{"direct":1}}"#,
        "Invalid parameter type for 'cache.direct', expected: boolean",
    ),
    bd(
        r#"{"driver":"null-co","cache":{"foo":1}}"#,
        "Parameter 'cache.foo' is unexpected",
    ),
    bd(
        r#"{"driver":"null-co","discard":"trim"}"#,
        "Parameter 'discard' does not accept value 'trim'",
    ),
    bd(
        r#"{"driver":"null-co","detect-zeroes":"yes"}"#,
        "Parameter 'detect-zeroes' does not accept value 'yes'",
    ),
    // ---- children: BlockdevRef ----
    bd(r#"{"driver":"raw"}"#, "Parameter 'file' is missing"),
    bd(
        r#"{"driver":"raw","file":5}"#,
        "Invalid parameter type for 'file', expected: BlockdevRef",
    ),
    bd(
        r#"{"driver":"raw","file":{}}"#,
        "Parameter 'file.driver' is missing",
    ),
    bd(
        r#"{"driver":"raw","file":{"driver":"file"}}"#,
        "Parameter 'file.filename' is missing",
    ),
    bd(
        r#"{"driver":"raw","file":{"driver":"null-co","bar":1}}"#,
        "Parameter 'file.bar' is unexpected",
    ),
    bd(
        r#"{"driver":"raw","file":{"driver":"file","filename":5}}"#,
        "Invalid parameter type for 'file.filename', expected: string",
    ),
    bd(
        r#"{"driver":"raw","file":{"driver":"file","filename":"x","aio":"posix"}}"#,
        "Parameter 'aio' does not accept value 'posix'",
    ),
    bd(
        r#"{"driver":"blkdebug","image":{"driver":"raw","file":{"driver":"file"}}}"#,
        "Parameter 'image.file.filename' is missing",
    ),
    // ---- driver members ----
    bd(
        r#"{"driver":"null-co","size":"1G"}"#,
        "Invalid parameter type for 'size', expected: integer",
    ),
    bd(
        r#"{"driver":"null-co","size":1.5}"#,
        "Invalid parameter type for 'size', expected: integer",
    ),
    bd(
        r#"{"driver":"null-co","latency-ns":"x"}"#,
        "Parameter 'latency-ns' expects uint64",
    ),
    bd(
        r#"{"driver":"null-co","read-zeroes":"on"}"#,
        "Invalid parameter type for 'read-zeroes', expected: boolean",
    ),
    bd(
        r#"{"driver":"file","filename":"x","locking":"maybe"}"#,
        "Parameter 'locking' does not accept value 'maybe'",
    ),
    // ---- rbd ----
    bd(
        r#"{"driver":"rbd","image":"i"}"#,
        "Parameter 'pool' is missing",
    ),
    // QEMU's enum visitor names an enum in a list 'null' (it has no name).
    bd(
        r#"{"driver":"rbd","pool":"p","image":"i","auth-client-required":["krb"]}"#,
        "Parameter 'null' does not accept value 'krb'",
    ),
    bd(
        r#"{"driver":"rbd","pool":"p","image":"i","server":[{"host":"h"}]}"#,
        "Parameter 'server[0].port' is missing",
    ),
    ours(bd(
        r#"{"driver":"rbd","pool":"p","image":"i","encrypt":{"format":"luks","key-secret":"s"}}"#,
        "Parameter 'encrypt' is not supported by blockwire",
    )),
    bd(r#"{"driver":"nbd"}"#, "Parameter 'server' is missing"),
    bd(
        r#"{"driver":"nbd","server":{}}"#,
        "Parameter 'server.type' is missing",
    ),
    bd(
        r#"{"driver":"nbd","server":{"type":"tcp"}}"#,
        "Parameter 'type' does not accept value 'tcp'",
    ),
    bd(
        r#"{"driver":"nbd","server":{"type":"inet","host":"h"}}"#,
        "Parameter 'server.port' is missing",
    ),
    bd(
        r#"{"driver":"nbd","server":{"type":"inet","host":"h","port":10809}}"#,
        "Invalid parameter type for 'server.port', expected: string",
    ),
    bd(
        r#"{"driver":"nbd","server":{"type":"unix","path":"/x","foo":1}}"#,
        "Parameter 'server.foo' is unexpected",
    ),
    bd(
        r#"{"driver":"nbd","server":{"type":"unix","path":"/x"},"reconnect-delay":4294967296}"#,
        "Parameter 'reconnect-delay' expects uint32_t",
    ),
    bd(
        r#"{"driver":"raw","file":{"driver":"null-co"},"offset":"0"}"#,
        "Invalid parameter type for 'offset', expected: integer",
    ),
    bd(
        r#"{"driver":"throttle","file":{"driver":"null-co"}}"#,
        "Parameter 'throttle-group' is missing",
    ),
    bd(
        r#"{"driver":"blkdebug","image":"x","max-transfer":2147483648}"#,
        "Parameter 'max-transfer' expects int32_t",
    ),
    bd(
        r#"{"driver":"blkdebug","image":"x","inject-error":{}}"#,
        "Invalid parameter type for 'inject-error', expected: array",
    ),
    bd(
        r#"{"driver":"blkdebug","image":"x","inject-error":[5]}"#,
        "Invalid parameter type for 'inject-error[0]', expected: object",
    ),
    bd(
        r#"{"driver":"blkdebug","image":"x","inject-error":[{}]}"#,
        "Parameter 'inject-error[0].event' is missing",
    ),
    bd(
        r#"{"driver":"blkdebug","image":"x","inject-error":[{"event":"boom"}]}"#,
        "Parameter 'event' does not accept value 'boom'",
    ),
    bd(
        r#"{"driver":"blkdebug","image":"x","inject-error":[{"event":"read_aio"},{"event":"read_aio","errno":"EIO"}]}"#,
        "Invalid parameter type for 'inject-error[1].errno', expected: integer",
    ),
    bd(
        r#"{"driver":"blkdebug","image":"x","set-state":[{"event":"read_aio"}]}"#,
        "Parameter 'set-state[0].new_state' is missing",
    ),
    // ---- key=value ----
    bd(
        "foo,node-name=n",
        "Parameter 'driver' does not accept value 'foo'",
    ),
    bd(
        "null-co,node-name=n,size=1G",
        "Parameter 'size' expects integer",
    ),
    bd(
        "null-co,node-name=n,read-only=1",
        "Parameter 'read-only' expects 'on' or 'off'",
    ),
    bd(
        "null-co,node-name=n,cache.direct=1",
        "Parameter 'cache.direct' expects 'on' or 'off'",
    ),
    bd(
        "null-co,node-name=n,size.x=1",
        "Parameters 'size.*' are unexpected",
    ),
    bd(
        "null-co,node-name=n,size=1,size.x=1",
        "Parameters 'size.*' used inconsistently",
    ),
    bd("null-co,node-name=n,a..b=1", "Invalid parameter 'a..b'"),
    bd(
        "null-co,node-name=n,flag",
        "Expected '=' after parameter 'flag'",
    ),
    bd(
        "raw,node-name=r,file.driver=file",
        "Parameter 'file.filename' is missing",
    ),
    bd(
        "blkdebug,node-name=d,image=x,inject-error.1.event=read_aio",
        "Parameter 'inject-error.0' missing",
    ),
    bd(
        "blkdebug,node-name=d,image=x,inject-error.0.event=read_aio,inject-error.0.errno=x",
        "Parameter 'inject-error.0.errno' expects integer",
    ),
    // ---- checks when the node is built ----
    bd(
        r#"{"driver":"null-co"}"#,
        "'node-name' must be specified for the root node",
    ),
    bd(
        r#"{"driver":"null-co","node-name":"0n"}"#,
        "Invalid node-name: '0n'",
    ),
    bd(
        r#"{"driver":"null-co","node-name":"abcdefghijabcdefghijabcdefghijab"}"#,
        "Node name too long",
    ),
    bd(
        r#"{"driver":"null-co","node-name":"n","force-share":true}"#,
        "force-share=on can only be used with read-only images",
    ),
    bd(
        r#"{"driver":"null-co","node-name":"n","detect-zeroes":"unmap"}"#,
        "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap",
    ),
    bd(
        r#"{"driver":"raw","node-name":"r","file":{"driver":"null-co"},"size":1000}"#,
        "Specified size is not multiple of 512",
    ),
    bd(
        r#"{"driver":"raw","node-name":"r","file":{"driver":"null-co"},"offset":-1}"#,
        "Parameter 'offset' expects a non-negative number below 2^64",
    ),
    bd(
        r#"{"driver":"raw","node-name":"r","file":{"driver":"null-co","size":1048576},"size":2097152}"#,
        "The sum of offset (0) and size (2097152) has to be smaller or equal to the  actual size of the containing file (1048576)",
    ),
    bd(
        r#"{"driver":"blkdebug","node-name":"d","image":{"driver":"null-co"},"align":3}"#,
        "Cannot meet constraints with align 3",
    ),
    bd(
        r#"{"driver":"blkdebug","node-name":"d","image":"nope"}"#,
        "Cannot find device='nope' nor node-name='nope'",
    ),
    bd(
        r#"{"driver":"file","node-name":"f","filename":""}"#,
        "The 'file' block driver requires a file name",
    ),
    bd(
        r#"{"driver":"file","node-name":"f","filename":"/etc/hostname","aio":"native"}"#,
        "aio=native was specified, but it requires cache.direct=on, which was not specified.",
    ),
    bd(
        r#"{"driver":"file","node-name":"f","filename":"/dev/null"}"#,
        "'file' driver requires '/dev/null' to be a regular file",
    ),
    bd(
        r#"{"driver":"host_device","node-name":"f","filename":"/etc/hostname"}"#,
        "'host_device' driver requires '/etc/hostname' to be either a character or block device",
    ),
    bd(
        r#"{"driver":"throttle","node-name":"t","file":{"driver":"null-co"},"throttle-group":"nope"}"#,
        "Throttle group 'nope' does not exist",
    ),
    // ---- blockwire's own ----
    ours(bd(
        r#"{"driver":"blockwire-ram","node-name":"m"}"#,
        "Parameter 'size' is missing",
    )),
    ours(bd(
        "blockwire-ram,node-name=m,size=1.5",
        "Parameter 'size' expects size",
    )),
    ours(bd(
        r#"{"driver":"blockwire-cow","node-name":"c","backing":null}"#,
        "Parameter 'backing' must name a node: a blockwire-cow overlay needs a backing node",
    )),
    ours(bd(
        "blockwire-cow,node-name=c,backing=b,cluster-size=3k",
        "Cluster size must be a power of two between 512 and 2048k",
    )),
    ours(bd(
        r#"{"driver":"file","node-name":"f","filename":"x","pr-manager":"pr0"}"#,
        "Parameter 'pr-manager' is not supported by blockwire",
    )),
    ours(bd(
        r#"{"driver":"raw","node-name":"r","file":{"driver":"file","filename":"x","drop-cache":false}}"#,
        "Parameter 'file.drop-cache' is not supported by blockwire",
    )),
    ours(bd(
        r#"{"driver":"blkdebug","node-name":"d","image":"x","inject-error":[{"event":"read","iotype":"read"}]}"#,
        "Parameter 'inject-error[0].iotype' is not supported by blockwire",
    )),
    ours(bd(
        r#"{"driver":"nbd","node-name":"n","server":{"type":"inet","host":"h","port":"1","ipv4":true}}"#,
        "Parameter 'server.ipv4' is not supported by blockwire",
    )),
    ours(bd(
        "vmdk,node-name=q,file=f",
        "Parameter 'driver' does not accept value 'vmdk'",
    )),
    ours(bd(
        "qcow2,node-name=q,file=f,lazy-refcounts=on",
        "Parameter 'lazy-refcounts' is not supported by blockwire",
    )),
    ours(bd(
        r#"{"driver":"qcow2","node-name":"q","file":"f","encrypt":{"format":"luks"}}"#,
        "Parameter 'encrypt' is not supported by blockwire",
    )),
    // ---- --object ----
    obj(
        "foo,id=x",
        "Parameter 'qom-type' does not accept value 'foo'",
    ),
    obj("secret,data=x", "Parameter 'id' is missing"),
    obj(
        "secret,id=0s,data=x",
        "Parameter 'id' expects an identifier",
    ),
    obj("secret,id=s0", "Either 'file' or 'data' must be provided"),
    obj(
        "secret,id=s0,data=x,file=/etc/hostname",
        "'file' and 'data' are mutually exclusive",
    ),
    obj(
        "secret,id=s0,data=!!!!,format=base64",
        "Base64 data contains invalid characters",
    ),
    obj(
        "secret,id=s0,data=x,format=hex",
        "Parameter 'format' does not accept value 'hex'",
    ),
    obj(
        r#"{"qom-type":"secret","id":"s","data":5}"#,
        "Invalid parameter type for 'data', expected: string",
    ),
    obj(
        r#"{"qom-type":"secret","id":"s","data":"x","bad":1}"#,
        "Parameter 'bad' is unexpected",
    ),
    obj(
        "throttle-group,id=t,limits.iops-total=x",
        "Parameter 'limits.iops-total' expects integer",
    ),
    obj(
        r#"{"qom-type":"throttle-group","id":"t","limits":{"iops-total":"x"}}"#,
        "Invalid parameter type for 'limits.iops-total', expected: integer",
    ),
    obj(
        r#"{"qom-type":"throttle-group","id":"t","limits":{"iops":5}}"#,
        "Parameter 'limits.iops' is unexpected",
    ),
    obj(
        "throttle-group,id=t,limits.bps-total=1,limits.bps-read=2",
        "bps/iops/max total values and read/write values cannot be used at the same time",
    ),
    obj(
        "throttle-group,id=t,limits.bps-total=-1",
        "bps/iops/max values must be within [0, 1000000000000000]",
    ),
    obj(
        "throttle-group,id=t,limits.bps-total-max=5",
        "bps_max/iops_max require corresponding bps/iops values",
    ),
    obj(
        "throttle-group,id=t,limits.bps-total=10,limits.bps-total-max=5",
        "bps_max/iops_max cannot be lower than bps/iops",
    ),
    obj(
        "throttle-group,id=t,limits.bps-total=10,limits.bps-total-max-length=5",
        "burst length set without burst rate",
    ),
    obj(
        "throttle-group,id=t,limits.bps-total=10,limits.bps-total-max=20,limits.bps-total-max-length=0",
        "the burst length cannot be 0",
    ),
    obj(
        "throttle-group,id=t,limits.iops-size=512",
        "iops size requires an iops value to be set",
    ),
    obj(
        "throttle-group,id=t,x-iops-total=-1",
        "Property values cannot be negative",
    ),
    // ---- --export ----
    exp("nbd,id=e", "Parameter 'node-name' is missing"),
    exp(
        r#"{"type":"nbd","node-name":"n"}"#,
        "Parameter 'id' is missing",
    ),
    exp("nbd,id=0e,node-name=n", "Invalid block export id"),
    exp(
        r#"{"type":"nbd","id":"e","node-name":"n","writable":"yes"}"#,
        "Invalid parameter type for 'writable', expected: boolean",
    ),
    exp(
        r#"{"type":"nbd","id":"e","node-name":"n","foo":1}"#,
        "Parameter 'foo' is unexpected",
    ),
    exp(
        r#"{"type":"nbd","id":"e","node-name":"n","bitmaps":"b"}"#,
        "Invalid parameter type for 'bitmaps', expected: array",
    ),
    exp(
        r#"{"type":"nbd","id":"e","node-name":"n","bitmaps":[5]}"#,
        "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr",
    ),
    exp(
        r#"{"type":"nbd","id":"e","node-name":"n","bitmaps":[{"node":"n"}]}"#,
        "Parameter 'bitmaps[0].name' is missing",
    ),
    exp(
        "nbd,id=e,node-name=nope",
        "Cannot find device='' nor node-name='nope'",
    ),
    exp(
        "nbd,id=e,node-name=ro,writable=on",
        "Cannot export read-only node as writable",
    ),
    exp(
        "nbd,id=e,node-name=n,bitmaps.0=b0",
        "Bitmap 'b0' is not found",
    ),
    ours(exp(
        "nbd,id=e,node-name=n,iothread=io0",
        "Parameter 'iothread' is not supported by blockwire",
    )),
    ours(exp(
        "fuse,id=e,node-name=n",
        "Parameter 'type' does not accept value 'fuse'",
    )),
];

/// qemu-storage-daemon 7.2, unpacked by the microVM tests' script.
fn qsd72() -> Option<PathBuf> {
    static QSD: OnceLock<Option<PathBuf>> = OnceLock::new();
    QSD.get_or_init(|| {
        let bin = match std::env::var_os("QSD72") {
            Some(p) => PathBuf::from(p),
            None => {
                let root = workspace_root().join("targets/microvm");
                let bin = root.join("target/qemu-system/root/usr/bin/qemu-storage-daemon");
                if !bin.is_file() {
                    // Downloads and unpacks Debian's 7.2 packages.
                    let mut cmd = Command::new(root.join("scripts/qemu-system.sh"));
                    cmd.current_dir(&root);
                    let out = run_cmd(cmd, Duration::from_secs(900));
                    if !out.status.success() {
                        eprintln!(
                            "qemu-system.sh failed:\n{}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                }
                bin
            }
        };
        let version = Command::new(&bin).arg("--version").output().ok()?;
        let text = String::from_utf8_lossy(&version.stdout).into_owned();
        if !text.contains("version 7.2") {
            eprintln!("{}: not qemu-storage-daemon 7.2: {text}", bin.display());
            return None;
        }
        Some(bin)
    })
    .clone()
}

/// Runs `prog args`; returns (exit code, stderr).
fn run_args(prog: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    let out = run_cmd(cmd, TIMEOUT);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_qapi_values_fail_with_one_qemu_worded_line_before_listening() {
    let dir = TmpDir::new("qapi");
    let sock = dir.join("bw.sock");
    let listen = format!("unix:{}", sock.display());
    let bin = blockwire_bin();
    let mut failures = Vec::new();
    for c in CASES {
        let mut args = vec!["serve"];
        for (o, v) in c.pre {
            args.extend([*o, *v]);
        }
        args.extend([c.opt, c.value, "--listen", &listen]);
        let (code, stderr) = run_args(&bin, &args);
        let want = format!("blockwire: {} {}: {}\n", c.opt, c.value, c.msg);
        if code != Some(1) || stderr != want {
            failures.push(format!(
                "blockwire {args:?}\n  exit {code:?}, stderr:\n  {stderr:?}\n  wanted exit 1 and:\n  {want:?}"
            ));
        }
        if sock.exists() {
            failures.push(format!("blockwire {args:?} listened on {}", sock.display()));
            let _ = std::fs::remove_file(&sock);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn qemu_storage_daemon_72_words_the_shared_cases_the_same() {
    let Some(qsd) = qsd72() else {
        missing("qemu-storage-daemon 7.2 (targets/microvm/scripts/qemu-system.sh)");
        return;
    };
    let dir = TmpDir::new("qapi-qsd");
    let nbd = format!(
        "addr.type=unix,addr.path={}",
        dir.join("qsd.sock").display()
    );
    let mut failures = Vec::new();
    let mut checked = 0;
    for c in CASES.iter().filter(|c| c.qemu) {
        let mut args = Vec::new();
        for (o, v) in c.pre {
            args.extend([*o, *v]);
        }
        if c.opt == "--export" {
            args.extend(["--nbd-server", nbd.as_str()]);
        }
        args.extend([c.opt, c.value]);
        let (code, stderr) = run_args(&qsd, &args);
        let want = format!("qemu-storage-daemon: {} {}: {}", c.opt, c.value, c.msg);
        // QEMU may add hint lines after the message (what an identifier
        // is, what size suffixes mean); blockwire keeps to the one line.
        if code != Some(1) || stderr.lines().next() != Some(want.as_str()) {
            failures.push(format!(
                "qemu-storage-daemon {args:?}\n  exit {code:?}, stderr:\n  {stderr:?}\n  wanted exit 1 and:\n  {want:?}"
            ));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(checked > 80, "only {checked} cases shared with QEMU");
}

/// A graph given as qemu-storage-daemon would be given it (an object, a
/// stack of `--blockdev` nodes in both syntaxes, two `--export`s) is
/// served: writes through `raw` (a window) → `throttle` → `blkdebug` →
/// `file` land in the file at the window's offset, the read-only export
/// (QEMU's default) refuses writes, names and descriptions are the
/// export options'.
#[test]
fn a_blockdev_stack_serves_as_configured() {
    require!("qemu-io", "nbdinfo");
    if is_standin() {
        eprintln!("SKIPPED: the qemu-nbd stand-in takes no --blockdev");
        return;
    }
    let dir = TmpDir::new("qapi-stack");
    let img = dir.join("base.img");
    write_patterned(&img, 16 * MIB);
    let file = format!(
        r#"{{"driver":"file","node-name":"f0","filename":{:?}}}"#,
        img.display().to_string()
    );
    let Some(mut srv) = Server::start(&[
        "--object",
        "throttle-group,id=tg0,limits.iops-total=100000",
        "--blockdev",
        &file,
        "--blockdev",
        "blkdebug,node-name=d0,image=f0",
        "--blockdev",
        r#"{"driver":"throttle","node-name":"t0","throttle-group":"tg0","file":"d0"}"#,
        "--blockdev",
        "raw,node-name=r0,file=t0,offset=1048576,size=8388608",
        "--export",
        r#"{"type":"nbd","id":"e0","node-name":"r0","name":"win","writable":true,"description":"a window"}"#,
        "--export",
        "nbd,id=e1,node-name=f0,name=whole",
    ]) else {
        return;
    };
    let win = srv.uri_unix("win");
    let whole = srv.uri_unix("whole");
    let list = stdout_str(&run_ok("nbdinfo", &["--list", "--json", &win]));
    let list: serde_json::Value = serde_json::from_str(&list).expect("nbdinfo --list --json");
    let exports = list["exports"].as_array().expect("exports");
    let find = |name: &str| {
        exports
            .iter()
            .find(|e| e["export-name"] == name)
            .unwrap_or_else(|| panic!("no export {name:?} in {list}"))
    };
    assert_eq!(find("win")["description"], "a window");
    assert_eq!(find("win")["export-size"], 8 * MIB);
    assert_eq!(find("whole")["export-size"], 16 * MIB);
    assert_eq!(find("whole")["is_read_only"], true);
    run_ok(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x44 4096 65536", &win],
    );
    run_ok(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 0x44 1052672 65536",
            &whole,
        ],
    );
    let refused = run("qemu-io", &["-f", "raw", "-c", "write -P 1 0 512", &whole]);
    assert!(
        !refused.status.success(),
        "writable open of a read-only export worked"
    );
    srv.assert_running("after the clients");
    drop(srv);
    let mut want = pattern(16 * MIB);
    want[(MIB + 4096) as usize..(MIB + 4096 + 65536) as usize].fill(0x44);
    assert!(
        std::fs::read(&img).unwrap() == want,
        "the file is not the pattern plus the one write"
    );
}

/// An inline `file` child defaults to `discard=unmap`, so a trim through
/// `raw,discard=unmap` punches the file; over a `file` node added on its
/// own (default `ignore`) it does not. Both as qemu-storage-daemon 7.2
/// does it (checked by hand with its `--export` and `qemu-io discard`).
#[test]
fn trims_reach_inline_files_only_as_in_qemu() {
    require!("qemu-io");
    if is_standin() {
        eprintln!("SKIPPED: the qemu-nbd stand-in takes no --blockdev");
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let dir = TmpDir::new("qapi-trim");
    for inline in [true, false] {
        let img = dir.join(&format!("t{inline}.img"));
        write_patterned(&img, 8 * MIB);
        let path = img.display().to_string();
        let file = format!(r#"{{"driver":"file","filename":{path:?}}}"#);
        let named = format!(r#"{{"driver":"file","node-name":"f","filename":{path:?}}}"#);
        let raw = if inline {
            format!(r#"{{"driver":"raw","node-name":"r","discard":"unmap","file":{file}}}"#)
        } else {
            r#"{"driver":"raw","node-name":"r","discard":"unmap","file":"f"}"#.to_owned()
        };
        let mut args = Vec::new();
        if !inline {
            args.extend(["--blockdev", named.as_str()]);
        }
        args.extend([
            "--blockdev",
            raw.as_str(),
            "--export",
            "nbd,id=e,node-name=r,writable=on",
        ]);
        let Some(srv) = Server::start(&args) else {
            return;
        };
        let before = std::fs::metadata(&img).unwrap().blocks();
        run_ok(
            "qemu-io",
            &["-f", "raw", "-c", "discard 0 4M", &srv.uri_unix("r")],
        );
        drop(srv);
        let after = std::fs::metadata(&img).unwrap().blocks();
        if inline {
            // 4 MiB fewer 512-byte blocks (the file system may keep a
            // little more or less at the edges).
            assert!(
                before - after >= 7 * 1024,
                "inline file not trimmed: {before} -> {after} blocks"
            );
        } else {
            assert_eq!(before, after, "a separately added file node was trimmed");
        }
    }
}
