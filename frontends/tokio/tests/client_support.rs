//! Helpers for the client interop tests (`client_*.rs` include this file
//! with `#[path]`): peers started on private sockets, killed on drop, and
//! commands run with hard timeouts. A missing peer fails under `CI=true`
//! and is a loud skip otherwise. Nothing asserts on timing: deadlines
//! only turn a hang into a failure.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Whether `prog` is installed; if not, skip loudly (or fail in CI).
pub fn need(prog: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()));
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{prog} is not installed and CI=true");
        }
        eprintln!("\n*** SKIPPED: {prog} is not installed ***\n");
    }
    found
}

pub struct TmpDir(pub PathBuf);

impl TmpDir {
    pub fn new(tag: &str) -> TmpDir {
        let p = std::env::temp_dir().join(format!(
            "bw-client-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let p = PathBuf::from(p.to_string_lossy().replace([' ', '{', '}', ':', ','], ""));
        std::fs::create_dir_all(&p).unwrap();
        TmpDir(p)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server process, killed (by its own pid) when dropped.
pub struct Peer {
    child: Child,
    pub uri: String,
    /// For servers that daemonize: where the daemon writes its pid.
    pidfile: Option<PathBuf>,
}

impl Peer {
    /// Start `prog args` and wait until `probe` (a unix socket path or a
    /// TCP port) accepts connections.
    pub fn start(prog: &str, args: &[&str], probe: Probe, uri: String) -> Peer {
        Self::spawn(prog, args, probe, uri, None)
    }

    fn spawn(
        prog: &str,
        args: &[&str],
        probe: Probe,
        uri: String,
        pidfile: Option<PathBuf>,
    ) -> Peer {
        let child = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {prog}: {e}"));
        let mut peer = Peer {
            child,
            uri,
            pidfile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = match &probe {
                Probe::Unix(p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
                Probe::Tcp(port) => std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok(),
            };
            if ok {
                return peer;
            }
            if let Ok(Some(st)) = peer.child.try_wait() {
                // A daemonizing server's parent exits, successfully.
                assert!(
                    peer.pidfile.is_some() && st.success(),
                    "{prog} exited early: {st}"
                );
            }
            assert!(Instant::now() < deadline, "{prog} did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let daemon = self
            .pidfile
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok());
        if let Some(pid) = daemon.and_then(|s| s.trim().parse::<i32>().ok()) {
            // SAFETY: signalling the daemon this test started, by its pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

pub enum Probe {
    Unix(PathBuf),
    Tcp(u16),
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn unix_uri(sock: &Path, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", sock.display())
}

/// `qemu-nbd` serving `file` (raw) on a unix socket.
pub fn qemu_nbd(dir: &TmpDir, file: &Path, extra: &[&str]) -> Option<Peer> {
    if !need("qemu-nbd") {
        return None;
    }
    let sock = dir.join("qemu.sock");
    let mut args = vec!["-f", "raw", "-t", "-e", "8", "-x", "disk", "-k"];
    let s = sock.to_str().unwrap().to_owned();
    args.push(&s);
    args.extend_from_slice(extra);
    let f = file.to_str().unwrap().to_owned();
    args.push(&f);
    let uri = unix_uri(&sock, "disk");
    Some(Peer::start("qemu-nbd", &args, Probe::Unix(sock), uri))
}

/// `nbdkit [filters] PLUGIN ARGS` on a unix socket, in the foreground.
pub fn nbdkit(dir: &TmpDir, args: &[&str]) -> Option<Peer> {
    if !need("nbdkit") {
        return None;
    }
    let sock = dir.join("nbdkit.sock");
    let s = sock.to_str().unwrap().to_owned();
    let mut all = vec!["-f", "-U", &s];
    all.extend_from_slice(args);
    let uri = unix_uri(&sock, "");
    Some(Peer::start("nbdkit", &all, Probe::Unix(sock), uri))
}

/// `nbd-server` (old-style config file, no structured replies) exporting
/// `file` as "disk" on a free TCP port.
pub fn nbd_server(dir: &TmpDir, file: &Path) -> Option<Peer> {
    if !need("nbd-server") {
        return None;
    }
    let port = free_port();
    let config = dir.join("nbd-server.conf");
    std::fs::write(
        &config,
        format!(
            "[generic]\n\tlistenaddr = 127.0.0.1\n\tport = {port}\n\tallowlist = true\n\
             [disk]\n\texportname = {}\n",
            file.display()
        ),
    )
    .unwrap();
    let uri = format!("nbd://127.0.0.1:{port}/disk");
    // In the foreground (-d) nbd-server serves a single client and exits:
    // let it daemonize, and stop it through its pid file.
    let pidfile = dir.join("nbd-server.pid");
    Some(Peer::spawn(
        "nbd-server",
        &[
            "-C",
            config.to_str().unwrap(),
            "-p",
            pidfile.clone().to_str().unwrap(),
        ],
        Probe::Tcp(port),
        uri,
        Some(pidfile.clone()),
    ))
}

/// `blockwire serve ARGS` on a unix socket.
pub fn blockwire_serve(dir: &TmpDir, args: &[&str]) -> Peer {
    let sock = dir.join("bw.sock");
    let listen = format!("unix:{}", sock.display());
    let mut all = vec!["serve", "--listen", &listen];
    all.extend_from_slice(args);
    let uri = unix_uri(&sock, "");
    Peer::start(
        env!("CARGO_BIN_EXE_blockwire"),
        &all,
        Probe::Unix(sock),
        uri,
    )
}

/// Run a command, killing it if it outlives [`TIMEOUT`].
pub fn run(prog: &str, args: &[&str]) -> Output {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {prog}: {e}"));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{prog} {args:?} hung; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `blockwire ARGS`, which must succeed.
pub fn blockwire(args: &[&str]) -> String {
    let out = run(env!("CARGO_BIN_EXE_blockwire"), args);
    assert!(
        out.status.success(),
        "blockwire {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn sha256(path: &Path) -> String {
    let out = run("sha256sum", &[path.to_str().unwrap()]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// A sparse file of `size` bytes with a few patterned data runs.
pub fn sparse_image(path: &Path, size: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for (i, at) in [0, size / 3, size / 2 + 4096, size - 65536]
        .iter()
        .enumerate()
    {
        let len = 65536 * (i + 1);
        let data: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let len = data.len().min((size - at) as usize);
        f.write_all_at(&data[..len], *at).unwrap();
    }
}

/// A tokio runtime for library-level tests, and a bound on the test.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(TIMEOUT, f)
                .await
                .expect("test timed out")
        })
}
