//! Shared helpers for the `blockwire serve` interop tests in `tests/tests/`.
//!
//! * [`need`] / [`require!`]: find a peer program; a missing peer fails the
//!   test when `CI=true`, and is a loud skip otherwise.
//! * [`Server`]: `blockwire serve ARGS --listen unix:.. --listen tcp:..`, with
//!   readiness polling, URIs, stderr capture and SIGTERM/SIGKILL on drop.
//!   With `BLOCKWIRE_TEST_SERVER=qemu-nbd` the same arguments are translated
//!   to qemu-nbd (one process per socket), to check the tests themselves
//!   against a known-good server.
//! * [`run`] / [`run_ok`] / [`py`]: run a command with a hard timeout.
//!
//! Nothing here asserts on timing: deadlines exist only so that a broken
//! server fails a test instead of hanging it.
//!
//! Environment:
//! * `BLOCKWIRE_BIN`: the server binary (tests/run sets it after a release
//!   build); else `target/release/blockwire`, `target/debug/blockwire`, else
//!   built once with `cargo build -p blockwire --release`.
//! * `BLOCKWIRE_TEST_SERVER=qemu-nbd`: run the suite against qemu-nbd, to
//!   check the tests themselves; options qemu-nbd cannot emulate skip loudly.
//! * `CI=true`: a missing peer (or a qemu older than 10) fails the test.
//! * `BLOCKWIRE_TESTS_KEEP`: keep temp dirs (server logs, images).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Default limit for any external command.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server may take to accept connections after it was spawned.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The Python with the libnbd `nbd` module (Debian's python3-libnbd); the
/// `python3` on PATH may be a pyenv build without it.
pub const PYTHON: &str = "/usr/bin/python3";

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * 1024 * 1024;

// ---------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------

/// `CI=true` in the environment: missing peers are failures, not skips.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Full path of `prog` (absolute, or searched in PATH).
pub fn which(prog: &str) -> Option<PathBuf> {
    let p = Path::new(prog);
    if p.is_absolute() {
        return is_executable(p).then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|c| is_executable(c))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn python_nbd_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        Command::new(PYTHON)
            .args(["-c", "import nbd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn fio_has_nbd_engine() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        Command::new("fio")
            .arg("--enghelp")
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim() == "nbd")
            })
    })
}

/// Reports a missing peer: panics under `CI=true`, prints a loud skip
/// message otherwise.
pub fn missing(what: &str) {
    if in_ci() {
        panic!("peer `{what}` not installed; with CI=true a missing peer is a failure, not a skip");
    }
    eprintln!("\n**********\n*** SKIPPED: {what} not installed\n**********\n");
}

/// True when every peer is available. Special names: `python3-nbd` (the
/// `nbd` module in [`PYTHON`]) and `fio-nbd` (fio with `--ioengine=nbd`).
/// Everything else is a program looked up in PATH.
pub fn need(peers: &[&str]) -> bool {
    for &p in peers {
        let ok = match p {
            "python3-nbd" => python_nbd_available(),
            "fio-nbd" => which("fio").is_some() && fio_has_nbd_engine(),
            prog => which(prog).is_some(),
        };
        if !ok {
            missing(p);
            return false;
        }
    }
    true
}

/// `require!("nbdinfo", "qemu-io");` returns from the test (after a loud
/// SKIPPED message, or panics under CI) when a peer is missing.
#[macro_export]
macro_rules! require {
    ($($peer:expr),+ $(,)?) => {
        if !$crate::need(&[$($peer),+]) {
            return;
        }
    };
}

/// Major version of a qemu tool (`qemu-io`, `qemu-img`, `qemu-nbd`).
pub fn qemu_major(tool: &str) -> Option<u32> {
    let out = Command::new(tool).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next()?;
    let ver = first
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    ver.split('.').next()?.parse().ok()
}

/// qemu >= 10 negotiates NBD extended headers by default. When `tool` is
/// older: under CI a failure, otherwise a loud warning and `false`.
pub fn qemu_has_extended_headers(tool: &str) -> bool {
    match qemu_major(tool) {
        Some(v) if v >= 10 => true,
        v => {
            let msg = format!(
                "{tool} version {v:?} is not 10.x: it cannot negotiate NBD extended headers \
                 (was qemu-utils downgraded by apt? see DEVELOPERS.md)"
            );
            if in_ci() {
                panic!("{msg}");
            }
            eprintln!(
                "\n**********\n*** WARNING: {msg}; extended-header checks SKIPPED\n**********\n"
            );
            false
        }
    }
}

// ---------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------

/// A unique directory under `std::env::temp_dir()`, removed on drop (kept
/// when `BLOCKWIRE_TESTS_KEEP` is set).
pub struct TmpDir {
    path: PathBuf,
}

impl TmpDir {
    pub fn new(tag: &str) -> TmpDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // Keep it short: Unix socket paths are limited to 107 bytes.
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        let path =
            std::env::temp_dir().join(format!("bw-{tag}-{}-{n}-{nanos:x}", std::process::id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TmpDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        if std::env::var_os("BLOCKWIRE_TESTS_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.contains(char::is_whitespace) || a.contains('\n') || a.is_empty() {
            if a.len() > 200 {
                s.push_str(" '<script>'");
            } else {
                let _ = write!(s, " '{a}'");
            }
        } else {
            let _ = write!(s, " {a}");
        }
    }
    s
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs `cmd` to completion, killing it (and failing) after `timeout`.
pub fn run_cmd(mut cmd: Command, timeout: Duration) -> Output {
    let what = describe(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `{what}`: {e}"));
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "`{what}` did not finish within {timeout:?}; killed.\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs `prog args..` with [`CMD_TIMEOUT`].
pub fn run<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> Output {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    run_cmd(cmd, CMD_TIMEOUT)
}

/// Formats a finished command for a failure message.
pub fn explain(prog: &str, args: &[impl AsRef<OsStr>], out: &Output) -> String {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    format!(
        "`{}` -> {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        describe(&cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `prog args..` and panics (with its output) unless it exits 0.
pub fn run_ok<S: AsRef<OsStr>>(prog: &str, args: &[S]) -> Output {
    let out = run(prog, args);
    assert!(
        out.status.success(),
        "command failed: {}",
        explain(prog, args, &out)
    );
    out
}

/// Runs a Python script with [`PYTHON`]: `python3 -c SCRIPT ARGS..`.
pub fn py(script: &str, args: &[&str]) -> Output {
    let mut a: Vec<&str> = vec!["-c", script];
    a.extend_from_slice(args);
    run(PYTHON, &a)
}

/// [`py`] that panics with the script's output unless it exits 0.
pub fn py_ok(script: &str, args: &[&str]) -> Output {
    let out = py(script, args);
    assert!(
        out.status.success(),
        "python script failed (args {args:?}): {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout_str(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "output is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `sha256sum FILE` (the hex digest).
pub fn sha256(path: &Path) -> String {
    let out = run_ok("sha256sum", &[path]);
    stdout_str(&out)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

// ---------------------------------------------------------------------------
// Test data
// ---------------------------------------------------------------------------

/// The byte pattern of [`write_patterned`]: every 4 KiB block is different;
/// blocks in every 5th 256 KiB region are all zero (to exercise holes and
/// zero detection).
pub fn pattern(size: u64) -> Vec<u8> {
    let mut v = vec![0u8; size as usize];
    for (blk, chunk) in v.chunks_mut(4096).enumerate() {
        let off = blk as u64 * 4096;
        if (off / (256 * KIB)) % 5 == 3 {
            continue;
        }
        for (i, w) in chunk.chunks_mut(8).enumerate() {
            let x = (off + i as u64 * 8).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xB10C_3D17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
    }
    v
}

/// Writes a `size`-byte patterned raw image to `path`.
pub fn write_patterned(path: &Path, size: u64) {
    fs::write(path, pattern(size)).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Creates a sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) {
    let f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.set_len(size).expect("set_len");
}

/// Parses `64M`, `1G`, `4096`, `512K` (binary units).
pub fn parse_size(s: &str) -> u64 {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], KIB),
        Some('m' | 'M') => (&s[..s.len() - 1], MIB),
        Some('g' | 'G') => (&s[..s.len() - 1], GIB),
        Some('t' | 'T') => (&s[..s.len() - 1], 1024 * GIB),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .unwrap_or_else(|_| panic!("bad size {s:?}"))
        * mul
}

/// Server certificate files in `dir`: `server-cert.pem`, `server-key.pem`,
/// and `ca-cert.pem` (what libnbd's `tls-certificates=DIR` and qemu's
/// `tls-creds-x509,dir=DIR,endpoint=client` look for).
pub struct Certs {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

fn openssl(args: &[&OsStr]) {
    run_ok("openssl", args);
}

/// A self-signed certificate for `localhost` / 127.0.0.1 (`openssl req
/// -x509`, so it is its own CA): `ca-cert.pem` is a copy of the server
/// certificate.
pub fn self_signed_cert(dir: &Path) -> Certs {
    let cert = dir.join("server-cert.pem");
    let key = dir.join("server-key.pem");
    let s = |x: &'static str| OsStr::new(x);
    openssl(&[
        s("req"),
        s("-x509"),
        s("-newkey"),
        s("rsa:2048"),
        s("-nodes"),
        s("-days"),
        s("2"),
        s("-subj"),
        s("/CN=localhost"),
        s("-addext"),
        s("subjectAltName=DNS:localhost,IP:127.0.0.1"),
        s("-keyout"),
        key.as_os_str(),
        s("-out"),
        cert.as_os_str(),
    ]);
    let ca = dir.join("ca-cert.pem");
    fs::copy(&cert, &ca).expect("copy ca-cert.pem");
    Certs {
        dir: dir.to_path_buf(),
        cert,
        key,
        ca,
    }
}

/// A test CA (`ca-cert.pem`) and a server certificate it signed for
/// `localhost` / 127.0.0.1 (CA:FALSE, serverAuth), as a real deployment
/// would have. (qemu-nbd refuses to serve a CA certificate, so the
/// stand-in needs this.)
pub fn ca_signed_cert(dir: &Path) -> Certs {
    let ca = dir.join("ca-cert.pem");
    let ca_key = dir.join("ca-key.pem");
    let cert = dir.join("server-cert.pem");
    let key = dir.join("server-key.pem");
    let csr = dir.join("server.csr");
    let ext = dir.join("server.ext");
    fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("write server.ext");
    let s = |x: &'static str| OsStr::new(x);
    openssl(&[
        s("req"),
        s("-x509"),
        s("-newkey"),
        s("rsa:2048"),
        s("-nodes"),
        s("-days"),
        s("2"),
        s("-subj"),
        s("/CN=blockwire test CA"),
        s("-keyout"),
        ca_key.as_os_str(),
        s("-out"),
        ca.as_os_str(),
    ]);
    openssl(&[
        s("req"),
        s("-newkey"),
        s("rsa:2048"),
        s("-nodes"),
        s("-subj"),
        s("/CN=localhost"),
        s("-keyout"),
        key.as_os_str(),
        s("-out"),
        csr.as_os_str(),
    ]);
    openssl(&[
        s("x509"),
        s("-req"),
        s("-in"),
        csr.as_os_str(),
        s("-CA"),
        ca.as_os_str(),
        s("-CAkey"),
        ca_key.as_os_str(),
        s("-set_serial"),
        s("2"),
        s("-days"),
        s("2"),
        s("-extfile"),
        ext.as_os_str(),
        s("-out"),
        cert.as_os_str(),
    ]);
    Certs {
        dir: dir.to_path_buf(),
        cert,
        key,
        ca,
    }
}

// ---------------------------------------------------------------------------
// The blockwire binary
// ---------------------------------------------------------------------------

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// The `blockwire` binary: `$BLOCKWIRE_BIN`, else `target/release/blockwire`,
/// else `target/debug/blockwire`; if none exists, `cargo build -p blockwire
/// --release` (once per process, and under a file lock across processes).
pub fn blockwire_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(b) = std::env::var_os("BLOCKWIRE_BIN") {
            let b = PathBuf::from(b);
            assert!(b.is_file(), "BLOCKWIRE_BIN={} does not exist", b.display());
            return b;
        }
        let target = target_dir();
        let candidates = [
            target.join("release/blockwire"),
            target.join("debug/blockwire"),
        ];
        if let Some(b) = candidates.iter().find(|b| b.is_file()) {
            eprintln!("blockwire-tests: using {}", b.display());
            return b.clone();
        }
        fs::create_dir_all(&target).expect("create target dir");
        let lock = File::create(target.join(".blockwire-tests-build.lock")).expect("lock file");
        lock.lock().expect("lock build");
        if !candidates[0].is_file() {
            eprintln!("blockwire-tests: building blockwire (cargo build -p blockwire --release)");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "blockwire", "--release"])
                .current_dir(workspace_root());
            let out = run_cmd(cmd, Duration::from_secs(1800));
            assert!(
                out.status.success(),
                "cargo build -p blockwire --release failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = lock.unlock();
        assert!(
            candidates[0].is_file(),
            "{} missing after build",
            candidates[0].display()
        );
        candidates[0].clone()
    })
    .clone()
}

// ---------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Blockwire,
    /// qemu-nbd as a stand-in (`BLOCKWIRE_TEST_SERVER=qemu-nbd`).
    QemuNbd,
}

pub fn server_kind() -> ServerKind {
    match std::env::var("BLOCKWIRE_TEST_SERVER").as_deref() {
        Ok("qemu-nbd") => ServerKind::QemuNbd,
        Ok("blockwire") | Err(_) => ServerKind::Blockwire,
        Ok(other) => panic!("BLOCKWIRE_TEST_SERVER={other}: expected blockwire or qemu-nbd"),
    }
}

pub fn is_standin() -> bool {
    server_kind() == ServerKind::QemuNbd
}

/// Picks a TCP port that is free right now (bind port 0, release).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Percent-encodes an export name for a URI path.
fn uri_escape(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

/// A running `blockwire serve`, listening on a Unix socket and on
/// 127.0.0.1:`port`. Dropping it sends SIGTERM, then SIGKILL.
pub struct Server {
    children: Vec<Child>,
    stderr_paths: Vec<PathBuf>,
    dir: TmpDir,
    pub sock: PathBuf,
    pub port: u16,
    /// Export name from `-n/--name` (default "").
    pub name: String,
    /// Directory with `ca-cert.pem` when the server was started with TLS.
    pub tls_dir: Option<PathBuf>,
    pub args: Vec<String>,
}

impl Server {
    /// Starts `blockwire serve ARGS --listen unix:SOCK --listen tcp:127.0.0.1:PORT`
    /// and waits until both accept connections. `None` only with the
    /// qemu-nbd stand-in, for options it cannot emulate (after a loud
    /// message).
    pub fn start(args: &[&str]) -> Option<Server> {
        for attempt in 0.. {
            let dir = TmpDir::new("srv");
            let sock = dir.join("s.sock");
            let port = free_port();
            let spawned = match server_kind() {
                ServerKind::Blockwire => Some(spawn_blockwire(args, &dir, &sock, port)),
                ServerKind::QemuNbd => spawn_qemu_nbd(args, &dir, &sock, port),
            };
            let (children, stderr_paths) = spawned?;
            let mut srv = Server {
                children,
                stderr_paths,
                dir,
                sock,
                port,
                name: export_name(args),
                tls_dir: tls_dir(args),
                args: args.iter().map(|s| s.to_string()).collect(),
            };
            match srv.wait_ready() {
                Ok(()) => return Some(srv),
                Err(e) => {
                    let stderr = srv.stderr();
                    let in_use = stderr.contains("in use") || stderr.contains("AddrInUse");
                    if in_use && attempt < 3 {
                        continue; // lost the race for the free port; try another
                    }
                    panic!(
                        "server did not start: {e}\nargs: {args:?}\nkind: {:?}\n--- server stderr ---\n{stderr}",
                        server_kind()
                    );
                }
            }
        }
        unreachable!()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut unix_ok = false;
        let mut tcp_ok = false;
        loop {
            for c in &mut self.children {
                if let Some(st) = c.try_wait().expect("try_wait") {
                    return Err(format!("server exited early with {st}"));
                }
            }
            unix_ok = unix_ok || UnixStream::connect(&self.sock).is_ok();
            tcp_ok = tcp_ok || TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if unix_ok && tcp_ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not accepting after {START_TIMEOUT:?} (unix {}: {unix_ok}, tcp port {}: {tcp_ok})",
                    self.sock.display(),
                    self.port
                ));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// The server's temp dir (socket, stderr logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PIDs of the server process(es) (several only with the stand-in).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// `nbd+unix:///NAME?socket=SOCK`.
    pub fn uri_unix(&self, name: &str) -> String {
        format!(
            "nbd+unix:///{}?socket={}",
            uri_escape(name),
            self.sock.display()
        )
    }

    /// `nbd://127.0.0.1:PORT/NAME`.
    pub fn uri_tcp(&self, name: &str) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.port, uri_escape(name))
    }

    /// Both URIs for the default export, labelled `unix` and `tcp`.
    pub fn uris(&self) -> [(&'static str, String); 2] {
        self.uris_for(&self.name.clone())
    }

    pub fn uris_for(&self, name: &str) -> [(&'static str, String); 2] {
        [("unix", self.uri_unix(name)), ("tcp", self.uri_tcp(name))]
    }

    /// TLS URIs (libnbd syntax) for the default export:
    /// `nbds://localhost:PORT/NAME?tls-certificates=DIR` and the Unix one.
    pub fn tls_uris(&self) -> [(&'static str, String); 2] {
        let dir = self
            .tls_dir
            .as_ref()
            .expect("server started without --tls-cert");
        let name = uri_escape(&self.name);
        [
            (
                "unix",
                format!(
                    "nbds+unix:///{name}?socket={}&tls-certificates={}",
                    self.sock.display(),
                    dir.display()
                ),
            ),
            (
                "tcp",
                format!(
                    "nbds://localhost:{}/{name}?tls-certificates={}",
                    self.port,
                    dir.display()
                ),
            ),
        ]
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        for p in &self.stderr_paths {
            if self.stderr_paths.len() > 1 {
                let _ = writeln!(s, "=== {} ===", p.display());
            }
            s.push_str(&fs::read_to_string(p).unwrap_or_default());
        }
        s
    }

    /// True while every server process is running.
    pub fn is_running(&mut self) -> bool {
        self.children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Panics with the server's stderr if it has exited.
    pub fn assert_running(&mut self, context: &str) {
        for c in &mut self.children {
            if let Some(st) = c.try_wait().expect("try_wait") {
                panic!(
                    "{context}: server exited with {st}\n--- server stderr ---\n{}",
                    self.stderr()
                );
            }
        }
    }

    /// Like [`Server::assert_running`], through a shared reference.
    pub fn assert_running_ref(&self, context: &str) {
        for pid in self.pids() {
            // SAFETY: signal 0 only checks that our child exists.
            let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
            let mut status = 0;
            // SAFETY: non-blocking waitpid on our own child, reaping a zombie.
            let reaped = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
            assert!(
                alive && reaped == 0,
                "{context}: server (pid {pid}) exited\n--- server stderr ---\n{}",
                self.stderr()
            );
        }
    }

    /// Sends `sig` to every server process.
    pub fn signal(&self, sig: i32) {
        for c in &self.children {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(c.id() as libc::pid_t, sig);
            }
        }
    }

    /// SIGKILL (a crash: nothing is flushed, no socket file is removed)
    /// and reaps every server process.
    pub fn kill(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }

    /// Starts the server again with the same arguments on the same Unix
    /// socket and TCP port (after [`Server::stop`] or [`Server::kill`]),
    /// and waits until it accepts connections. Its stderr is appended to
    /// the same log. Only blockwire (the stand-in is one process per
    /// socket and is not restarted).
    pub fn restart(&mut self) {
        assert!(
            self.children.is_empty(),
            "restart: the server is still running"
        );
        assert_eq!(
            server_kind(),
            ServerKind::Blockwire,
            "restart: blockwire only"
        );
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let bin = blockwire_bin();
        let log = fs::OpenOptions::new()
            .append(true)
            .open(&self.stderr_paths[0])
            .expect("open stderr log");
        let child = Command::new(&bin)
            .arg("serve")
            .args(&args)
            .arg("--listen")
            .arg(format!("unix:{}", self.sock.display()))
            .arg("--listen")
            .arg(format!("tcp:127.0.0.1:{}", self.port))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        self.children = vec![child];
        if let Err(e) = self.wait_ready() {
            panic!(
                "server did not restart: {e}\n--- server stderr ---\n{}",
                self.stderr()
            );
        }
    }

    /// SIGTERM, then waits (up to [`STOP_TIMEOUT`], then SIGKILL and panic)
    /// and returns the exit status of each process.
    pub fn stop(&mut self) -> Vec<ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut out = Vec::new();
        for i in 0..self.children.len() {
            loop {
                if let Some(st) = self.children[i].try_wait().expect("try_wait") {
                    out.push(st);
                    break;
                }
                if Instant::now() >= deadline {
                    for c in &mut self.children {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    panic!(
                        "server did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed\n--- server stderr ---\n{}",
                        self.stderr()
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        self.children.clear();
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        if thread::panicking() {
            eprintln!("--- server stderr ({:?}) ---\n{}", self.args, self.stderr());
        }
    }
}

fn export_name(args: &[&str]) -> String {
    let mut name = String::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "-n" | "--name" => name = it.next().expect("--name value").to_string(),
            a if a.starts_with("--name=") => name = a["--name=".len()..].to_string(),
            _ => {}
        }
    }
    name
}

fn tls_dir(args: &[&str]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if *a == "--tls-cert" {
            return Path::new(it.next()?).parent().map(Path::to_path_buf);
        }
    }
    None
}

fn spawn_blockwire(
    args: &[&str],
    dir: &TmpDir,
    sock: &Path,
    port: u16,
) -> (Vec<Child>, Vec<PathBuf>) {
    let bin = blockwire_bin();
    let err_path = dir.join("stderr.log");
    let err = File::create(&err_path).expect("create stderr log");
    let mut cmd = Command::new(&bin);
    cmd.arg("serve")
        .args(args)
        .arg("--listen")
        .arg(format!("unix:{}", sock.display()))
        .arg("--listen")
        .arg(format!("tcp:127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(err.try_clone().expect("dup"))
        .stderr(err);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    (vec![child], vec![err_path])
}

/// Translates blockwire's `serve` options to qemu-nbd. One qemu-nbd process
/// per socket (qemu-nbd listens on one); both open the same image with
/// locking off, so they see each other's writes.
fn spawn_qemu_nbd(
    args: &[&str],
    dir: &TmpDir,
    sock: &Path,
    port: u16,
) -> Option<(Vec<Child>, Vec<PathBuf>)> {
    let unsupported = |what: &str| {
        eprintln!(
            "\n**********\n*** SKIPPED (stand-in qemu-nbd cannot emulate `{what}`)\n**********\n"
        );
        None::<(Vec<Child>, Vec<PathBuf>)>
    };
    let mut file: Option<String> = None;
    let mut memory: Option<u64> = None;
    let mut null: Option<u64> = None;
    let mut common: Vec<String> = vec![
        "-t".into(),
        "--discard=unmap".into(),
        "--cache=writeback".into(),
    ];
    let mut tls: Option<&str> = None;
    let mut cert: Option<String> = None;
    let mut key: Option<String> = None;
    let mut blkdebug: Option<String> = None;
    let mut shared = "0".to_string(); // 0: unlimited
    let mut it = args.iter().copied();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| panic!("{a} needs a value"))
                .to_string()
        };
        match a {
            "--memory" => memory = Some(parse_size(&val())),
            "--null" => null = Some(parse_size(&val())),
            "-n" | "--name" => {
                common.push("-x".into());
                common.push(val());
            }
            "--description" => {
                common.push("-D".into());
                common.push(val());
            }
            "-r" | "--read-only" => common.push("-r".into()),
            "--allocation-depth" => common.push("-A".into()),
            "--tls" => {
                let v = val();
                match v.as_str() {
                    "off" => {}
                    "require" => tls = Some("require"),
                    _ => return unsupported("--tls on"),
                }
            }
            "--tls-cert" => cert = Some(val()),
            "--tls-key" => key = Some(val()),
            "--tls-ca" => return unsupported("--tls-ca"),
            "--handshake-timeout" => common.push(format!("--handshake-limit={}", val())),
            "--max-connections" => shared = val(),
            "--multi-conn" => {}
            "--blkdebug" => blkdebug = Some(val()),
            "--pid-file" => {
                common.push("--pid-file".into());
                common.push(val());
            }
            "-v" | "-q" => {}
            a if a.starts_with('-') => return unsupported(a),
            a => file = Some(a.to_string()),
        }
    }
    common.push(format!("--shared={shared}"));
    if tls == Some("require") {
        let (cert, key) = (cert.expect("--tls-cert"), key.expect("--tls-key"));
        let tdir = dir.join("qemu-tls");
        fs::create_dir_all(&tdir).expect("mkdir");
        fs::copy(&cert, tdir.join("server-cert.pem")).expect("copy cert");
        fs::copy(&key, tdir.join("server-key.pem")).expect("copy key");
        // The CA next to the certificate (see `ca_signed_cert`), else the
        // certificate itself.
        let ca = Path::new(&cert).with_file_name("ca-cert.pem");
        let ca = if ca.is_file() {
            ca
        } else {
            PathBuf::from(&cert)
        };
        fs::copy(&ca, tdir.join("ca-cert.pem")).expect("copy ca");
        common.push("--object".into());
        common.push(format!(
            "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=off",
            tdir.display()
        ));
        common.push("--tls-creds=tls0".into());
    }
    let image = if let Some(size) = null {
        if blkdebug.is_some() {
            return unsupported("--blkdebug with --null");
        }
        format!("driver=null-co,size={size},read-zeroes=on")
    } else {
        let path = match (file, memory) {
            (Some(f), None) => f,
            (None, m) => {
                let p = dir.join("memory.img");
                sparse_file(&p, m.unwrap_or(GIB));
                p.display().to_string()
            }
            (Some(_), Some(_)) => panic!("both FILE and --memory"),
        };
        match blkdebug {
            None => format!("driver=raw,file.driver=file,file.filename={path},file.locking=off"),
            Some(rules) => {
                let mut s = format!(
                    "driver=raw,file.driver=blkdebug,file.image.driver=file,file.image.filename={path},file.image.locking=off"
                );
                for (i, rule) in rules.split(';').enumerate() {
                    let kv: HashMap<&str, &str> =
                        rule.split(',').filter_map(|p| p.split_once('=')).collect();
                    for (k, v) in kv {
                        let v = match (k, v) {
                            ("event", "read") => "read_aio",
                            ("event", "write") => "write_aio",
                            _ => v,
                        };
                        let _ = write!(s, ",file.inject-error.{i}.{k}={v}");
                    }
                }
                s
            }
        }
    };
    let mut children = Vec::new();
    let mut logs = Vec::new();
    for (i, listen) in [
        vec!["-k".to_string(), sock.display().to_string()],
        vec![
            "-b".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let log = dir.join(&format!("qemu-nbd.{i}.log"));
        let f = File::create(&log).expect("log");
        let mut cmd = Command::new("qemu-nbd");
        cmd.args(&common)
            .args(listen)
            .arg("--image-opts")
            .arg(&image)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f);
        children.push(cmd.spawn().expect("spawn qemu-nbd"));
        logs.push(log);
    }
    Some((children, logs))
}

// ---------------------------------------------------------------------------
// Extents
// ---------------------------------------------------------------------------

/// Merges adjacent extents `(offset, length, kind)` with equal `kind`.
pub fn merge_extents<K: PartialEq + Clone>(ext: &[(u64, u64, K)]) -> Vec<(u64, u64, K)> {
    let mut out: Vec<(u64, u64, K)> = Vec::new();
    for (o, l, k) in ext {
        if let Some(last) = out.last_mut()
            && last.2 == *k
            && last.0 + last.1 == *o
        {
            last.1 += l;
            continue;
        }
        out.push((*o, *l, k.clone()));
    }
    out
}

/// `nbdinfo --map[=CONTEXT] --json URI` as `(offset, length, type)`.
pub fn nbdinfo_map(uri: &str, context: Option<&str>) -> Vec<(u64, u64, u64)> {
    let map_arg = match context {
        Some(c) => format!("--map={c}"),
        None => "--map".to_string(),
    };
    let out = run_ok("nbdinfo", &[map_arg.as_str(), "--json", uri]);
    let v = json(&out);
    v.as_array()
        .unwrap_or_else(|| panic!("nbdinfo --map --json: not an array: {v}"))
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().expect("offset"),
                e["length"].as_u64().expect("length"),
                e["type"].as_u64().expect("type"),
            )
        })
        .collect()
}

/// Writes `data` to `path` at `offset` (for preparing backing files).
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for write");
    f.write_all_at(data, offset).expect("write_all_at");
}

/// Reads `len` bytes of `path` at `offset`.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path).expect("open for read");
    let mut buf = vec![0; len];
    f.read_exact_at(&mut buf, offset).expect("read_exact_at");
    buf
}

/// Writes `s` to a new file `name` in `dir` and returns its path.
pub fn write_file(dir: &TmpDir, name: &str, s: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = File::create(&p).expect("create");
    f.write_all(s.as_bytes()).expect("write");
    p
}

/// One operation for [`libnbd_ops`].
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// Write `len` bytes of `byte` at `offset`.
    Write(u64, u64, u8),
    Trim(u64, u64),
    Zero(u64, u64),
    Flush,
}

/// Applies `ops` through libnbd (python3 `nbd`), for preparing an export's
/// contents independently of the client under test.
pub fn libnbd_ops(uri: &str, ops: &[Op]) {
    let mut list = String::new();
    for op in ops {
        let _ = match *op {
            Op::Write(o, l, b) => write!(list, "('w', {o}, {l}, {b}),"),
            Op::Trim(o, l) => write!(list, "('t', {o}, {l}, 0),"),
            Op::Zero(o, l) => write!(list, "('z', {o}, {l}, 0),"),
            Op::Flush => write!(list, "('f', 0, 0, 0),"),
        };
    }
    let script = format!(
        r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for op, o, l, b in [{list}]:
    if op == "w":
        h.pwrite(bytes([b]) * l, o)
    elif op == "t":
        h.trim(l, o)
    elif op == "z":
        h.zero(l, o)
    else:
        h.flush()
h.shutdown()
"#
    );
    py_ok(&script, &[uri]);
}

// ---------------------------------------------------------------------------
// Long-running Python clients
// ---------------------------------------------------------------------------

/// A Python child (libnbd scripts) whose stdout lines arrive on a channel
/// and whose stdin takes commands, so that a test can step it: wait for a
/// line that says it got somewhere, act (kill the server, start another
/// client), then tell it to go on.
pub struct PyChild {
    pub child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl PyChild {
    pub fn spawn(script: &str, args: &[&str]) -> PyChild {
        use std::io::BufRead;
        let mut child = Command::new(PYTHON)
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python");
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().expect("stderr");
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        PyChild {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            stderr: Some(stderr),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one line to the child's stdin.
    pub fn send(&mut self, line: &str) {
        let w = self.stdin.as_mut().expect("stdin closed");
        writeln!(w, "{line}")
            .and_then(|()| w.flush())
            .unwrap_or_else(|e| panic!("python child: cannot send {line:?}: {e}"));
    }

    /// Waits for a line starting with `prefix` (bounded by `timeout`);
    /// panics with the child's stderr if it ends or the time runs out.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(e) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "python child: no line {prefix:?} ({e:?})\n--- stderr ---\n{}",
                        self.take_stderr()
                    );
                }
            }
        }
    }

    /// The next line if one has arrived, without waiting.
    pub fn try_line(&mut self) -> Option<String> {
        self.lines.try_recv().ok()
    }

    pub fn take_stderr(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// Closes stdin and waits for the child to exit (bounded by
    /// `timeout`, then SIGKILL and panic); returns its status and stderr.
    pub fn finish(mut self, timeout: Duration) -> (ExitStatus, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return (st, self.take_stderr());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "python child did not finish within {timeout:?}:\n{}",
                    self.take_stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`PyChild::finish`] that panics (with stderr) unless it exited 0.
    pub fn finish_ok(self, timeout: Duration) -> String {
        let (st, err) = self.finish(timeout);
        assert!(
            st.success(),
            "python child exited with {st}\n--- stderr ---\n{err}"
        );
        err
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PyChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// What a process holds
// ---------------------------------------------------------------------------

/// Open file descriptors of `pid` (entries of /proc/PID/fd).
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// Resident set size of `pid` in bytes (VmRSS of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * KIB)
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Waits (polling, bounded by `timeout`) until `cond` holds; false if it
/// never did. For conditions that must become true, never for timing.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// True when running as root (mounts, loop devices).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// Root is needed for `what`: under CI a failure, otherwise a loud skip
/// (false).
pub fn need_root(what: &str) -> bool {
    if is_root() {
        return true;
    }
    if in_ci() {
        panic!("{what} needs root; with CI=true that is a failure, not a skip");
    }
    eprintln!("\n**********\n*** SKIPPED: {what} needs root\n**********\n");
    false
}

/// The descriptor count of an idle `pid` once it has stopped changing
/// (the same for a second), e.g. after the connections that probed a new
/// server are closed on its side. Call only while no client is connected
/// or connecting.
pub fn idle_fd_count(pid: u32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = fd_count(pid);
    let mut same = 0;
    while same < 20 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        let n = fd_count(pid);
        same = if n == last { same + 1 } else { 0 };
        last = n;
    }
    last
}
