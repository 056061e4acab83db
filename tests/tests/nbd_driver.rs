//! The `nbd` block driver against real servers: a block graph is built in
//! this process with an `nbd` node (typed `BlockdevOptions`, as
//! `blockdev-add` takes them) and I/O goes through the node, against
//! qemu-nbd, nbdkit (memory, file and eval plugins; log, pause, delay,
//! error, nozero, fua and blocksize-policy filters) and `blockwire serve`.
//! What the node reports is checked against what `nbdinfo` sees of the
//! same server, and written data against the server's file or
//! `qemu-img compare`.
//!
//! Requests "in flight" are made so without timing: nbdkit's pause filter
//! holds requests, and its log filter (outside the pause) shows when they
//! have reached the server. Killing the server then leaves them
//! unanswered.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use std::{fs, io, thread};

use blockwire::block::options::SocketAddress;
use blockwire::block::{
    BlockdevOptions, DriverOptions, Graph, Node, TlsCredsX509, TlsEndpoint, Zeroes,
};
use blockwire_core::block::zero_policy::Discard;
use blockwire_tests::*;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

const EXPORT: &str = "exp";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------
// Servers that can be killed and started again on the same socket
// ---------------------------------------------------------------------------

/// An upstream server process listening on `sock`.
struct Peer {
    prog: &'static str,
    args: Vec<String>,
    sock: PathBuf,
    stderr: PathBuf,
    child: Option<Child>,
}

impl Peer {
    fn start(prog: &'static str, args: Vec<String>, sock: &Path) -> Peer {
        let mut p = Peer {
            prog,
            args,
            sock: sock.to_owned(),
            stderr: sock.with_extension("stderr"),
            child: None,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let _ = fs::remove_file(&self.sock);
        let err = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .expect("stderr log");
        let child = Command::new(self.prog)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(err.try_clone().expect("dup"))
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.prog));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while UnixStream::connect(&self.sock).is_err() {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} {:?} exited with {st}:\n{}",
                    self.prog,
                    self.args,
                    self.stderr_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not listening on {} after {START_TIMEOUT:?}:\n{}",
                self.prog,
                self.sock.display(),
                self.stderr_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the server goes away without answering anything.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn restart_with(&mut self, args: Vec<String>) {
        self.kill();
        self.args = args;
        self.spawn();
    }

    fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.sock.display())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// qemu-nbd on a raw file, persistent, several clients at once (the node
/// and nbdinfo), export `exp`, `qemu:allocation-depth` offered.
fn qemu_nbd(img: &Path, sock: &Path, extra: &[&str]) -> Peer {
    let mut args = strings(&["-t", "-e", "8", "-f", "raw", "-x", EXPORT, "-A"]);
    args.extend(strings(extra));
    args.push("-k".into());
    args.push(sock.display().to_string());
    args.push(img.display().to_string());
    Peer::start("qemu-nbd", args, sock)
}

fn nbdkit_args(sock: &Path, rest: &[&str]) -> Vec<String> {
    let mut args = strings(&["-f", "--exit-with-parent", "-U"]);
    args.push(sock.display().to_string());
    args.extend(strings(rest));
    args
}

fn nbdkit(sock: &Path, rest: &[&str]) -> Peer {
    Peer::start("nbdkit", nbdkit_args(sock, rest), sock)
}

/// Sends a command to nbdkit's pause filter and waits for its answer
/// ('P' once requests received before the pause are done, 'R').
fn pause_ctl(ctl: &Path, cmd: u8) {
    let mut s = UnixStream::connect(ctl).expect("pause control socket");
    s.set_read_timeout(Some(CMD_TIMEOUT)).unwrap();
    s.write_all(&[cmd]).unwrap();
    let mut a = [0u8; 1];
    s.read_exact(&mut a).expect("pause filter answer");
    assert_eq!(a[0], cmd.to_ascii_uppercase());
}

/// Lines of nbdkit's log filter: `connection=N Write id=..` when a request
/// starts, `connection=N ...Write id=.. return=..` when it ends.
fn log_starts(log: &str, action: &str) -> usize {
    let start = format!(" {action} id=");
    log.lines().filter(|l| l.contains(&start)).count()
}

fn log_returns(log: &str, action: &str) -> usize {
    let ret = format!("...{action} id=");
    log.lines().filter(|l| l.contains(&ret)).count()
}

/// Waits until the log satisfies `ok` (a broken driver fails the test at
/// the deadline instead of hanging it).
fn wait_log(log: &Path, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + CMD_TIMEOUT;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if ok(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "log never showed {what}:\n{text}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// The node
// ---------------------------------------------------------------------------

fn unix(path: &Path) -> SocketAddress {
    SocketAddress::Unix { path: path.into() }
}

fn nbd(server: SocketAddress, export: Option<&str>, reconnect_delay: u32) -> DriverOptions {
    DriverOptions::Nbd {
        server,
        export: export.map(str::to_owned),
        tls_creds: None,
        tls_hostname: None,
        reconnect_delay,
        open_timeout: 0,
    }
}

/// The node `up`, with `discard=unmap` so that trims reach the driver
/// (QEMU's default, `ignore`, drops them in the node).
async fn open(graph: &Graph, d: DriverOptions) -> Arc<Node> {
    let mut o = BlockdevOptions::new(d).named("up");
    o.discard = Discard::Unmap;
    graph
        .add(o)
        .await
        .unwrap_or_else(|e| panic!("open nbd node: {e}"))
}

async fn open_err(d: DriverOptions) -> String {
    match Graph::new().add(BlockdevOptions::new(d).named("up")).await {
        Ok(_) => panic!("opening the node succeeded"),
        Err(e) => e.to_string(),
    }
}

async fn read(node: &Node, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    node.read(offset, &mut buf).wait().await?;
    Ok(buf)
}

async fn read_ok(node: &Node, offset: u64, len: usize) -> Vec<u8> {
    read(node, offset, len)
        .await
        .unwrap_or_else(|e| panic!("read {len} at {offset}: {e}"))
}

async fn write_ok(node: &Node, offset: u64, data: &[u8], fua: bool) {
    node.write(offset, data, fua)
        .wait()
        .await
        .unwrap_or_else(|e| panic!("write {} at {offset}: {e}", data.len()));
}

fn errno_of<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("an error without errno: {e}")),
    }
}

fn spawn_read(
    rt: &Runtime,
    node: &Arc<Node>,
    offset: u64,
    len: usize,
) -> JoinHandle<io::Result<Vec<u8>>> {
    let node = node.clone();
    rt.spawn(async move { read(&node, offset, len).await })
}

fn spawn_write(
    rt: &Runtime,
    node: &Arc<Node>,
    offset: u64,
    data: Vec<u8>,
) -> JoinHandle<io::Result<()>> {
    let node = node.clone();
    rt.spawn(async move { node.write(offset, &data, false).wait().await })
}

/// The node's block status of `[offset, offset+len)` as `(offset, length,
/// base:allocation flags)` and `(offset, length, depth)`, adjacent equal
/// runs merged.
async fn node_maps(
    node: &Node,
    offset: u64,
    len: u64,
) -> (Vec<(u64, u64, u64)>, Vec<(u64, u64, u64)>) {
    let (mut alloc, mut depth) = (Vec::new(), Vec::new());
    let mut pos = offset;
    while pos < offset + len {
        let mut runs = Vec::new();
        node.block_status(pos, offset + len - pos, &mut runs)
            .wait()
            .await
            .unwrap_or_else(|e| panic!("block status at {pos}: {e}"));
        assert!(!runs.is_empty(), "block status at {pos} described nothing");
        for s in runs {
            assert!(s.len > 0, "an empty run at {pos}");
            alloc.push((pos, s.len, s.flags));
            depth.push((pos, s.len, u64::from(s.depth)));
            pos += s.len;
        }
    }
    assert_eq!(pos, offset + len, "block status went past the request");
    (merge_extents(&alloc), merge_extents(&depth))
}

fn nbdinfo_json(uri: &str) -> serde_json::Value {
    let v = json(&run_ok("nbdinfo", &["--json", uri]));
    v["exports"][0].clone()
}

/// `nbdinfo --map` of a context, adjacent equal extents merged.
fn nbdinfo_merged(uri: &str, context: &str) -> Vec<(u64, u64, u64)> {
    merge_extents(&nbdinfo_map(uri, Some(context)))
}

// ---------------------------------------------------------------------------
// What the node reports
// ---------------------------------------------------------------------------

/// The node's size, flags and limits are the server's, as nbdinfo sees
/// them; where the server gives no block sizes, the alignment is QEMU's
/// choice (1 with block status, else 512).
fn check_info(node: &Node, uri: &str) {
    let e = nbdinfo_json(uri);
    let info = node.info();
    assert_eq!(node.size(), e["export-size"].as_u64().unwrap(), "size");
    assert_eq!(
        info.read_only,
        e["is_read_only"].as_bool().unwrap(),
        "read_only"
    );
    assert_eq!(
        info.multi_conn,
        e["can_multi_conn"].as_bool().unwrap(),
        "multi_conn"
    );
    assert_eq!(
        info.fast_zero,
        e["can_zero"].as_bool().unwrap() && e["can_fast_zero"].as_bool().unwrap(),
        "fast_zero"
    );
    assert!(
        info.waits && !info.blocking,
        "a network node waits and never blocks"
    );
    let has_alloc = e["contexts"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c == "base:allocation"));
    let min = e["block_size_minimum"].as_u64();
    let expected_align = match min {
        Some(m) => m,
        None if node.size() % 512 != 0 || has_alloc => 1,
        None => 512,
    };
    assert_eq!(u64::from(info.align), expected_align, "align");
    assert_eq!(
        u64::from(info.preferred_block),
        e["block_size_preferred"].as_u64().unwrap_or(0),
        "preferred block"
    );
    let max = e["block_size_maximum"]
        .as_u64()
        .unwrap_or(32 * MIB)
        .min(32 * MIB);
    assert_eq!(u64::from(info.max_transfer), max, "max transfer");
}

#[test]
fn reports_what_nbdinfo_sees_of_each_server() {
    require!("qemu-nbd", "nbdkit", "nbdinfo");
    let dir = TmpDir::new("nbdinfo");
    let img = dir.join("disk.img");
    sparse_file(&img, 16 * MIB + 512);
    let rt = runtime();

    let q = qemu_nbd(&img, &dir.join("q.sock"), &[]);
    let q_ro = qemu_nbd(&img, &dir.join("qro.sock"), &["-r"]);
    let mem = nbdkit(&dir.join("m.sock"), &["memory", "64M"]);
    let sizes = nbdkit(
        &dir.join("b.sock"),
        &[
            "--filter=blocksize-policy",
            "memory",
            "64M",
            "blocksize-minimum=4096",
            "blocksize-preferred=65536",
            "blocksize-maximum=1M",
        ],
    );
    let noextents = nbdkit(
        &dir.join("n.sock"),
        &["--filter=noextents", "memory", "64M"],
    );
    rt.block_on(async {
        for (peer, export) in [
            (&q, Some(EXPORT)),
            (&mem, None),
            (&sizes, None),
            (&noextents, None),
        ] {
            let g = Graph::new();
            let node = open(&g, nbd(unix(&peer.sock), export, 0)).await;
            check_info(&node, &peer.uri(export.unwrap_or("")));
            let expected = match export {
                Some(e) => format!("nbd+unix:///{e}?socket={}", peer.sock.display()),
                None => format!("nbd+unix://?socket={}", peer.sock.display()),
            };
            assert_eq!(node.filename(), expected);
            assert_eq!(node.driver_name(), "nbd");
        }

        // A read-only export makes a read-only node, and only one.
        let err = open_err(nbd(unix(&q_ro.sock), Some(EXPORT), 0)).await;
        assert!(err.contains("read-only"), "{err}");
        let g = Graph::new();
        let node = g
            .add(
                BlockdevOptions::new(nbd(unix(&q_ro.sock), Some(EXPORT), 0))
                    .named("ro")
                    .read_only(true),
            )
            .await
            .unwrap();
        check_info(&node, &q_ro.uri(EXPORT));
        assert!(node.read_only());
        assert_eq!(
            errno_of(node.write(0, &[1u8; 512], false).wait().await),
            libc::EPERM
        );
    });
}

#[test]
fn blockwire_serve_over_tcp_as_upstream() {
    require!("nbdinfo");
    let Some(srv) = Server::start(&["--memory", "64M", "--allocation-depth"]) else {
        return;
    };
    let rt = runtime();
    rt.block_on(async {
        let g = Graph::new();
        let server = SocketAddress::Inet {
            host: "127.0.0.1".into(),
            port: srv.port.to_string(),
        };
        let node = open(&g, nbd(server, None, 0)).await;
        assert_eq!(node.filename(), format!("nbd://127.0.0.1:{}", srv.port));
        let uri = srv.uri_tcp("");
        check_info(&node, &uri);
        let data = pattern(3 * MIB);
        write_ok(&node, MIB, &data, false).await;
        node.write_zeroes(
            2 * MIB,
            MIB,
            Zeroes {
                may_unmap: true,
                ..Zeroes::default()
            },
        )
        .wait()
        .await
        .unwrap();
        node.flush().wait().await.unwrap();
        let back = read_ok(&node, MIB, 3 * MIB as usize).await;
        assert_eq!(&back[..MIB as usize], &data[..MIB as usize]);
        assert!(back[MIB as usize..2 * MIB as usize].iter().all(|&b| b == 0));
        assert_eq!(&back[2 * MIB as usize..], &data[2 * MIB as usize..]);
        let (alloc, depth) = node_maps(&node, 0, node.size()).await;
        assert_eq!(alloc, nbdinfo_merged(&uri, "base:allocation"));
        assert_eq!(depth, nbdinfo_merged(&uri, "qemu:allocation-depth"));
    });
}

// ---------------------------------------------------------------------------
// I/O
// ---------------------------------------------------------------------------

#[test]
fn qemu_nbd_data_and_maps_round_trip() {
    require!("qemu-nbd", "qemu-img", "nbdinfo");
    let dir = TmpDir::new("nbdqio");
    let size = 64 * MIB;
    let img = dir.join("disk.img");
    let reference = dir.join("ref.img");
    sparse_file(&img, size);
    sparse_file(&reference, size);
    let q = qemu_nbd(
        &img,
        &dir.join("q.sock"),
        &["--discard=unmap", "--cache=writeback"],
    );
    let uri = q.uri(EXPORT);
    let rt = runtime();
    rt.block_on(async {
        let g = Graph::new();
        let node = open(&g, nbd(unix(&q.sock), Some(EXPORT), 0)).await;
        // 40 MiB in one request: more than qemu-nbd's 32 MiB payload, so
        // the driver splits it.
        let big = pattern(40 * MIB);
        write_ok(&node, MIB, &big, false).await;
        write_at(&reference, MIB, &big);
        let small: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
        write_ok(&node, 50 * MIB, &small, true).await;
        write_at(&reference, 50 * MIB, &small);
        // Zeroes that may leave a hole, and zeroes that must stay allocated.
        let unmap = Zeroes {
            may_unmap: true,
            ..Zeroes::default()
        };
        node.write_zeroes(4 * MIB, 8 * MIB, unmap)
            .wait()
            .await
            .unwrap();
        write_at(&reference, 4 * MIB, &vec![0u8; 8 * MIB as usize]);
        node.write_zeroes(20 * MIB, MIB, Zeroes::default())
            .wait()
            .await
            .unwrap();
        write_at(&reference, 20 * MIB, &vec![0u8; MIB as usize]);
        // qemu-nbd can zero fast on a file.
        node.write_zeroes(
            24 * MIB,
            MIB,
            Zeroes {
                fast: true,
                ..unmap
            },
        )
        .wait()
        .await
        .unwrap();
        write_at(&reference, 24 * MIB, &vec![0u8; MIB as usize]);
        // A trim is advisory; what it leaves is whatever reads back.
        node.discard(30 * MIB, 2 * MIB).wait().await.unwrap();
        let trimmed = read_ok(&node, 30 * MIB, 2 * MIB as usize).await;
        write_at(&reference, 30 * MIB, &trimmed);
        node.cache(0, 4 * MIB).wait().await.unwrap();
        node.flush().wait().await.unwrap();

        // Reads: a long one (split), and one at an odd offset and length.
        let back = read_ok(&node, MIB, 40 * MIB as usize).await;
        assert!(
            back == read_at(&reference, MIB, 40 * MIB as usize),
            "40 MiB read back"
        );
        let odd = read_ok(&node, 50 * MIB + 7, 1001).await;
        assert_eq!(odd, read_at(&reference, 50 * MIB + 7, 1001));

        // The node's map is the server's, in both contexts.
        let (alloc, depth) = node_maps(&node, 0, size).await;
        assert_eq!(alloc, nbdinfo_merged(&uri, "base:allocation"));
        assert_eq!(depth, nbdinfo_merged(&uri, "qemu:allocation-depth"));
        // The zeroes that could unmap read as a hole, the others as zero.
        assert!(
            alloc
                .iter()
                .any(|&(o, l, f)| o <= 4 * MIB && o + l >= 12 * MIB && f == 3),
            "{alloc:?}"
        );
        assert!(
            alloc
                .iter()
                .any(|&(o, l, f)| o <= 20 * MIB && o + l >= 21 * MIB && f & 2 != 0),
            "{alloc:?}"
        );

        // NBD cannot resize: the same size is fine, another is refused.
        node.resize(size).wait().await.unwrap();
        let e = node.resize(size * 2).wait().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
    });
    drop(q);
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
}

/// Requests are pipelined on the one connection, and a write longer than
/// the server's maximum goes as several requests at once: with nbdkit's
/// pause filter holding everything, all of them reach the server before
/// any is answered.
#[test]
fn requests_are_pipelined_and_split_on_one_connection() {
    require!("nbdkit");
    let dir = TmpDir::new("nbdpipe");
    let log = dir.join("log");
    let ctl = dir.join("ctl");
    let peer = nbdkit(
        &dir.join("k.sock"),
        &[
            "--filter=log",
            "--filter=pause",
            "--filter=blocksize-policy",
            "memory",
            "64M",
            "blocksize-maximum=1M",
            &format!("logfile={}", log.display()),
            &format!("pause-control={}", ctl.display()),
        ],
    );
    let rt = runtime();
    let g = Graph::new();
    let node = rt.block_on(open(&g, nbd(unix(&peer.sock), None, 0)));
    assert_eq!(node.info().max_transfer, 1 << 20);
    pause_ctl(&ctl, b'p');
    let reads: Vec<_> = (0..8)
        .map(|i| spawn_read(&rt, &node, i * 64 * KIB, 64 * KIB as usize))
        .collect();
    let data = pattern(3 * MIB);
    let w = spawn_write(&rt, &node, 8 * MIB, data.clone());
    let text = wait_log(&log, "8 reads and 3 writes in flight", |t| {
        log_starts(t, "Read") >= 8 && log_starts(t, "Write") >= 3
    });
    assert_eq!(
        log_returns(&text, "Read") + log_returns(&text, "Write"),
        0,
        "{text}"
    );
    assert_eq!(
        log_starts(&text, "Write"),
        3,
        "one 1 MiB request per piece:\n{text}"
    );
    assert!(
        text.lines()
            .filter(|l| l.contains(" Write id="))
            .all(|l| l.contains("count=0x100000")),
        "{text}"
    );
    let conns: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.contains(" Read id=") || l.contains(" Write id="))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("connection=")))
        .collect();
    assert_eq!(conns.len(), 1, "one connection: {conns:?}");
    pause_ctl(&ctl, b'r');
    rt.block_on(async {
        for r in reads {
            r.await.unwrap().unwrap();
        }
        w.await.unwrap().unwrap();
        assert_eq!(read_ok(&node, 8 * MIB, 3 * MIB as usize).await, data);
    });
}

/// Without write-zeroes or FUA on the server, the node falls back as
/// QEMU's block layer does, and says `ENOTSUP` to a fast zero.
#[test]
fn fallbacks_for_missing_commands() {
    require!("nbdkit");
    let dir = TmpDir::new("nbdfall");
    let log = dir.join("log");
    let peer = nbdkit(
        &dir.join("k.sock"),
        &[
            "--filter=log",
            "--filter=nozero",
            // The fua filter's default mode hides FUA from clients.
            "--filter=fua",
            "memory",
            "16M",
            "zeromode=none",
            &format!("logfile={}", log.display()),
        ],
    );
    // A server with nothing but reads and writes: no flush, trim, zero.
    let file = dir.join("plain.img");
    write_patterned(&file, 4 * MIB);
    let plain = nbdkit(
        &dir.join("p.sock"),
        &[
            "eval",
            "config=ln -sf \"$(realpath \"$3\")\" $tmpdir/file",
            "get_size=stat -Lc %s $tmpdir/file",
            "pread=dd if=$tmpdir/file skip=$4 count=$3 iflag=count_bytes,skip_bytes",
            "pwrite=dd of=$tmpdir/file seek=$4 conv=notrunc oflag=seek_bytes",
            "can_zero=exit 3",
            // After `config`, which handles it.
            &format!("file={}", file.display()),
        ],
    );
    let rt = runtime();
    rt.block_on(async {
        let g = Graph::new();
        let node = open(&g, nbd(unix(&peer.sock), None, 0)).await;
        assert!(!node.info().fast_zero);
        write_ok(&node, 0, &[0xaa; 4096], true).await;
        let text = wait_log(&log, "the write and its flush", |t| {
            log_returns(t, "Flush") >= 1
        });
        let write_at = text.find(" Write id=").expect("write logged");
        let flush_at = text.find(" Flush id=").expect("flush logged");
        assert!(
            write_at < flush_at,
            "FUA became a flush after the write:\n{text}"
        );

        write_ok(&node, MIB, &vec![0x55; 2 * MIB as usize], false).await;
        let fast = Zeroes {
            fast: true,
            ..Zeroes::default()
        };
        assert_eq!(
            errno_of(node.write_zeroes(MIB, MIB, fast).wait().await),
            libc::ENOTSUP
        );
        node.write_zeroes(MIB, MIB, Zeroes::default())
            .wait()
            .await
            .unwrap();
        assert!(
            read_ok(&node, MIB, MIB as usize)
                .await
                .iter()
                .all(|&b| b == 0)
        );
        assert!(
            read_ok(&node, 2 * MIB, MIB as usize)
                .await
                .iter()
                .all(|&b| b == 0x55)
        );
        let text = fs::read_to_string(&log).unwrap();
        assert_eq!(
            log_starts(&text, "Zero"),
            0,
            "no zero command was sent:\n{text}"
        );

        let g = Graph::new();
        let node = open(&g, nbd(unix(&plain.sock), None, 0)).await;
        check_info(&node, &plain.uri(""));
        let before = read_ok(&node, 0, MIB as usize).await;
        // No trim: advisory, nothing happens. No flush: nothing to do.
        node.discard(0, MIB).wait().await.unwrap();
        assert_eq!(read_ok(&node, 0, MIB as usize).await, before);
        node.flush().wait().await.unwrap();
        write_ok(&node, 4096, &[7u8; 4096], true).await;
        // nbdkit emulates write-zeroes with writes, so it refuses a fast
        // one itself: the server's ENOTSUP comes through.
        assert_eq!(
            errno_of(node.write_zeroes(8192, 8192, fast).wait().await),
            libc::ENOTSUP
        );
        node.write_zeroes(8192, 8192, Zeroes::default())
            .wait()
            .await
            .unwrap();
        node.flush().wait().await.unwrap();
    });
    let back = read_at(&file, 0, 16384);
    assert!(back[4096..8192].iter().all(|&b| b == 7));
    assert!(back[8192..].iter().all(|&b| b == 0));
}

/// A server's error answers come through as errnos, and the node goes on.
#[test]
fn server_errors_pass_through() {
    require!("nbdkit");
    let dir = TmpDir::new("nbderr");
    let peer = nbdkit(
        &dir.join("k.sock"),
        &[
            "--filter=error",
            "memory",
            "16M",
            "error-pwrite=ENOSPC",
            "error-pwrite-rate=100%",
            "error-trim=EPERM",
            "error-trim-rate=100%",
        ],
    );
    let rt = runtime();
    rt.block_on(async {
        let g = Graph::new();
        let node = open(&g, nbd(unix(&peer.sock), None, 0)).await;
        assert_eq!(
            errno_of(node.write(0, &[1u8; 4096], false).wait().await),
            libc::ENOSPC
        );
        assert_eq!(errno_of(node.discard(0, 4096).wait().await), libc::EPERM);
        assert_eq!(read_ok(&node, 0, 4096).await, vec![0u8; 4096]);
    });
}

/// A server that advertises 4 KiB blocks: unaligned reads are widened,
/// unaligned writes refused (the node's `align` told the parent).
#[test]
fn block_size_constraints_are_kept() {
    require!("nbdkit");
    let dir = TmpDir::new("nbdbs");
    let peer = nbdkit(
        &dir.join("k.sock"),
        &[
            "--filter=blocksize-policy",
            "memory",
            "16M",
            "blocksize-minimum=4096",
            "blocksize-error-policy=error",
        ],
    );
    let rt = runtime();
    rt.block_on(async {
        let g = Graph::new();
        let node = open(&g, nbd(unix(&peer.sock), None, 0)).await;
        assert_eq!(node.info().align, 4096);
        let data = pattern(64 * KIB);
        write_ok(&node, 0, &data, false).await;
        assert_eq!(read_ok(&node, 100, 5000).await, &data[100..5100]);
        assert_eq!(
            errno_of(node.write(100, &[1u8; 512], false).wait().await),
            libc::EINVAL
        );
        // A trim of less than a block is nothing to send.
        node.discard(100, 1000).wait().await.unwrap();
        assert_eq!(read_ok(&node, 0, data.len()).await, data);
    });
}

// ---------------------------------------------------------------------------
// Losing the server
// ---------------------------------------------------------------------------

/// nbdkit's file plugin on `file` behind log and pause filters (`paused`),
/// or behind the log filter only.
fn file_server_args(sock: &Path, file: &Path, log: &Path, ctl: Option<&Path>) -> Vec<String> {
    let mut rest = vec!["--filter=log".to_string()];
    if ctl.is_some() {
        rest.push("--filter=pause".into());
    }
    rest.push("file".into());
    rest.push(file.display().to_string());
    rest.push(format!("logfile={}", log.display()));
    if let Some(c) = ctl {
        rest.push(format!("pause-control={}", c.display()));
    }
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    nbdkit_args(sock, &rest)
}

fn fill(byte: u8, len: u64) -> Vec<u8> {
    vec![byte; len as usize]
}

/// With `reconnect-delay`, requests caught in flight when the server dies
/// wait for it, are sent again on the new connection and succeed; the
/// writes are then really on the server's disk.
#[test]
fn reconnect_delay_resends_requests_in_flight() {
    require!("nbdkit");
    let dir = TmpDir::new("nbdrc");
    let file = dir.join("disk.img");
    sparse_file(&file, 16 * MIB);
    write_at(&file, 8 * MIB, &fill(0x42, MIB));
    let (sock, log, ctl) = (dir.join("k.sock"), dir.join("log"), dir.join("ctl"));
    let mut peer = Peer::start(
        "nbdkit",
        file_server_args(&sock, &file, &log, Some(&ctl)),
        &sock,
    );
    let rt = runtime();
    let g = Graph::new();
    // Long enough never to run out here: the server is back at once.
    let node = rt.block_on(open(&g, nbd(unix(&sock), None, 600)));
    rt.block_on(async {
        write_ok(&node, 0, &fill(1, 64 * KIB), false).await;
        node.flush().wait().await.unwrap();
    });
    pause_ctl(&ctl, b'p');
    let writes: Vec<_> = (0..4u8)
        .map(|i| {
            spawn_write(
                &rt,
                &node,
                MIB * (1 + u64::from(i)),
                fill(0x10 + i, 256 * KIB),
            )
        })
        .collect();
    let reads: Vec<_> = (0..2)
        .map(|i| spawn_read(&rt, &node, 8 * MIB + i * 4096, 4096))
        .collect();
    wait_log(&log, "4 writes and 2 reads in flight", |t| {
        log_starts(t, "Write") >= 5 && log_starts(t, "Read") >= 2
    });
    peer.restart_with(file_server_args(&sock, &file, &dir.join("log2"), None));
    rt.block_on(async {
        for w in writes {
            w.await
                .unwrap()
                .expect("a write caught in flight is sent again and succeeds");
        }
        for r in reads {
            assert_eq!(
                r.await.unwrap().expect("read caught in flight"),
                fill(0x42, 4096)
            );
        }
        // Nothing acknowledged was lost with the old connection: the flush
        // covers the re-sent writes and succeeds.
        node.flush().wait().await.unwrap();
    });
    let sent_again = fs::read_to_string(dir.join("log2")).unwrap();
    assert_eq!(log_returns(&sent_again, "Write"), 4, "{sent_again}");
    for i in 0..4u8 {
        assert_eq!(
            read_at(&file, MIB * (1 + u64::from(i)), 256 * KIB as usize),
            fill(0x10 + i, 256 * KIB)
        );
    }
    assert_eq!(read_at(&file, 0, 64 * KIB as usize), fill(1, 64 * KIB));
}

/// Writes the server acknowledged but no flush covered may be gone with
/// the server: no flush after that succeeds (as the file driver's after a
/// failed fdatasync), while reads and writes go on.
#[test]
fn writes_lost_with_the_connection_fail_every_later_flush() {
    require!("nbdkit");
    let dir = TmpDir::new("nbdlost");
    let sock = dir.join("k.sock");
    // nbdkit memory: a restarted server really has forgotten everything.
    let mut peer = nbdkit(&sock, &["memory", "16M"]);
    let rt = runtime();
    let g = Graph::new();
    let node = rt.block_on(open(&g, nbd(unix(&sock), None, 600)));
    rt.block_on(async {
        write_ok(&node, 0, &fill(9, 4096), false).await;
    });
    peer.restart();
    rt.block_on(async {
        // The acknowledged write is gone...
        assert_eq!(read_ok(&node, 0, 4096).await, fill(0, 4096));
        // ...and no flush pretends otherwise, however often it is tried.
        assert_eq!(errno_of(node.flush().wait().await), libc::EIO);
        assert_eq!(errno_of(node.flush().wait().await), libc::EIO);
        write_ok(&node, 0, &fill(5, 4096), false).await;
        assert_eq!(errno_of(node.flush().wait().await), libc::EIO);
        assert_eq!(read_ok(&node, 0, 4096).await, fill(5, 4096));
    });

    // Flushed writes, and FUA ones, owe nothing to the next connection.
    let g = Graph::new();
    let node = rt.block_on(open(&g, nbd(unix(&sock), None, 600)));
    rt.block_on(async {
        write_ok(&node, 0, &fill(5, 4096), false).await;
        node.flush().wait().await.unwrap();
        write_ok(&node, 4096, &fill(6, 4096), true).await;
    });
    peer.restart();
    rt.block_on(async {
        node.flush().wait().await.unwrap();
        // (A memory server's "durable" is its process's life.)
        assert_eq!(read_ok(&node, 0, 8192).await, fill(0, 8192));
    });
}

/// When the server stays away longer than `reconnect-delay`, the waiting
/// requests fail with EIO, new ones too, and the node works again once a
/// request finds the server back.
#[test]
fn reconnect_delay_runs_out_with_eio() {
    require!("nbdkit");
    let dir = TmpDir::new("nbdexp");
    let file = dir.join("disk.img");
    sparse_file(&file, 16 * MIB);
    let (sock, log, ctl) = (dir.join("k.sock"), dir.join("log"), dir.join("ctl"));
    let mut peer = Peer::start(
        "nbdkit",
        file_server_args(&sock, &file, &log, Some(&ctl)),
        &sock,
    );
    let rt = runtime();
    let g = Graph::new();
    let node = rt.block_on(open(&g, nbd(unix(&sock), None, 1)));
    pause_ctl(&ctl, b'p');
    let w = spawn_write(&rt, &node, 0, fill(3, 4096));
    let r = spawn_read(&rt, &node, 4096, 4096);
    wait_log(&log, "a write and a read in flight", |t| {
        log_starts(t, "Write") >= 1 && log_starts(t, "Read") >= 1
    });
    peer.kill();
    rt.block_on(async {
        assert_eq!(errno_of(w.await.unwrap()), libc::EIO);
        assert_eq!(errno_of(r.await.unwrap()), libc::EIO);
        assert_eq!(errno_of(read(&node, 0, 4096).await), libc::EIO);
    });
    peer.restart_with(file_server_args(&sock, &file, &log, None));
    rt.block_on(async {
        assert_eq!(
            read_ok(&node, 0, 4096).await,
            fill(0, 4096),
            "the failed write was not acknowledged"
        );
        write_ok(&node, 0, &fill(4, 4096), false).await;
        node.flush().wait().await.unwrap();
    });
    assert_eq!(read_at(&file, 0, 4096), fill(4, 4096));
}

/// Without `reconnect-delay`, requests in flight fail with EIO at once,
/// and the next request reconnects.
#[test]
fn without_reconnect_delay_in_flight_fail_and_the_next_request_reconnects() {
    require!("nbdkit");
    let dir = TmpDir::new("nbdnodly");
    let file = dir.join("disk.img");
    sparse_file(&file, 16 * MIB);
    let (sock, log, ctl) = (dir.join("k.sock"), dir.join("log"), dir.join("ctl"));
    let mut peer = Peer::start(
        "nbdkit",
        file_server_args(&sock, &file, &log, Some(&ctl)),
        &sock,
    );
    let rt = runtime();
    let g = Graph::new();
    let node = rt.block_on(open(&g, nbd(unix(&sock), None, 0)));
    pause_ctl(&ctl, b'p');
    let w = spawn_write(&rt, &node, 0, fill(3, 4096));
    let r = spawn_read(&rt, &node, 4096, 4096);
    wait_log(&log, "a write and a read in flight", |t| {
        log_starts(t, "Write") >= 1 && log_starts(t, "Read") >= 1
    });
    peer.kill();
    rt.block_on(async {
        assert_eq!(errno_of(w.await.unwrap()), libc::EIO);
        assert_eq!(errno_of(r.await.unwrap()), libc::EIO);
        // Still away: a new request fails too (after one attempt).
        assert_eq!(errno_of(read(&node, 0, 4096).await), libc::EIO);
    });
    peer.restart_with(file_server_args(&sock, &file, &log, None));
    rt.block_on(async {
        write_ok(&node, 0, &fill(4, 4096), false).await;
        node.flush().wait().await.unwrap();
        assert_eq!(read_ok(&node, 0, 4096).await, fill(4, 4096));
    });
    // The server went away with nothing in flight: the next request
    // reconnects, and nothing fails.
    peer.restart();
    rt.block_on(async {
        assert_eq!(read_ok(&node, 0, 4096).await, fill(4, 4096));
    });
}

/// A server that comes back with a different export is not used: the
/// node would no longer be what it told its parents.
#[test]
fn a_different_export_is_not_reconnected_to() {
    require!("nbdkit");
    let dir = TmpDir::new("nbddiff");
    let sock = dir.join("k.sock");
    let mut peer = nbdkit(&sock, &["memory", "16M"]);
    let rt = runtime();
    let g = Graph::new();
    let node = rt.block_on(open(&g, nbd(unix(&sock), None, 1)));
    peer.restart_with(nbdkit_args(&sock, &["memory", "32M"]));
    rt.block_on(async {
        assert_eq!(errno_of(read(&node, 0, 4096).await), libc::EIO);
    });
    peer.restart_with(nbdkit_args(&sock, &["memory", "16M"]));
    rt.block_on(async {
        assert_eq!(read_ok(&node, 0, 4096).await, fill(0, 4096));
    });
}

// ---------------------------------------------------------------------------
// Opening
// ---------------------------------------------------------------------------

#[test]
fn open_errors_name_what_is_wrong() {
    require!("qemu-nbd");
    let dir = TmpDir::new("nbdopen");
    let img = dir.join("disk.img");
    sparse_file(&img, MIB);
    let q = qemu_nbd(&img, &dir.join("q.sock"), &[]);
    let rt = runtime();
    rt.block_on(async {
        let missing = dir.join("nobody.sock");
        let e = open_err(nbd(unix(&missing), Some(EXPORT), 0)).await;
        assert!(e.contains(&missing.display().to_string()), "{e}");
        let e = open_err(nbd(unix(&q.sock), Some("no-such-export"), 0)).await;
        assert!(e.contains("no-such-export"), "{e}");
        let e = open_err(nbd(
            SocketAddress::Inet {
                host: "127.0.0.1".into(),
                port: "nbd".into(),
            },
            None,
            0,
        ))
        .await;
        assert!(e.contains("server.port"), "{e}");
        let e = open_err(DriverOptions::Nbd {
            server: unix(&q.sock),
            export: Some(EXPORT.into()),
            tls_creds: None,
            tls_hostname: Some("localhost".into()),
            reconnect_delay: 0,
            open_timeout: 0,
        })
        .await;
        assert!(e.contains("tls-hostname"), "{e}");
        let e = open_err(nbd(unix(&q.sock), Some(&"x".repeat(4097)), 0)).await;
        assert!(e.contains("export name too long"), "{e}");
    });
}

/// `open-timeout`: opening keeps trying until the server is there.
#[test]
fn open_timeout_waits_for_the_server() {
    require!("nbdkit");
    let dir = TmpDir::new("nbdot");
    let sock = dir.join("k.sock");
    let rt = runtime();
    let opening = {
        let sock = sock.clone();
        rt.spawn(async move {
            let g = Graph::new();
            let mut d = nbd(unix(&sock), None, 0);
            if let DriverOptions::Nbd { open_timeout, .. } = &mut d {
                *open_timeout = 600;
            }
            let node = open(&g, d).await;
            read(&node, 0, 512).await
        })
    };
    let _peer = nbdkit(&sock, &["memory", "1M"]);
    assert_eq!(rt.block_on(opening).unwrap().unwrap(), vec![0u8; 512]);
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

#[test]
fn tls_creds_objects_for_qemu_nbd_over_tls() {
    require!("qemu-nbd", "openssl");
    let dir = TmpDir::new("nbdtls");
    let certs_dir = dir.join("pki");
    fs::create_dir_all(&certs_dir).unwrap();
    let certs = ca_signed_cert(&certs_dir);
    let img = dir.join("disk.img");
    sparse_file(&img, 4 * MIB);
    let port = free_port();
    // qemu-nbd on TCP with TLS required (Peer waits on Unix sockets; this
    // one waits for the port).
    let qemu_log = fs::File::create(dir.join("qemu-nbd.stderr")).unwrap();
    let mut child = Command::new("qemu-nbd")
        .args([
            "-t",
            "-e",
            "4",
            "-f",
            "raw",
            "-x",
            EXPORT,
            "-b",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "--object",
            &format!(
                "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=off",
                certs.dir.display()
            ),
            "--tls-creds",
            "tls0",
            img.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(qemu_log)
        .spawn()
        .expect("spawn qemu-nbd");
    let deadline = Instant::now() + START_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "qemu-nbd with TLS did not listen"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "qemu-nbd with TLS exited"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let inet = |host: &str| SocketAddress::Inet {
        host: host.into(),
        port: port.to_string(),
    };
    let tls = |host: &str, creds: &str, hostname: Option<&str>| DriverOptions::Nbd {
        server: inet(host),
        export: Some(EXPORT.into()),
        tls_creds: Some(creds.into()),
        tls_hostname: hostname.map(str::to_owned),
        reconnect_delay: 0,
        open_timeout: 0,
    };
    // The same over a Unix socket: the certificate names localhost.
    let obj = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=off",
        certs.dir.display()
    );
    let q_unix = qemu_nbd(
        &img,
        &dir.join("tls.sock"),
        &["--object", &obj, "--tls-creds", "tls0", "--cache=writeback"],
    );
    let rt = runtime();
    rt.block_on(async {
        let g = Graph::new();
        g.add_tls_creds(TlsCredsX509::client("tls0", &certs.dir))
            .unwrap();
        g.add_tls_creds(TlsCredsX509 {
            endpoint: TlsEndpoint::Server,
            ..TlsCredsX509::client("srv", &certs.dir)
        })
        .unwrap();
        // The certificate names 127.0.0.1 and localhost.
        let node = g
            .add(BlockdevOptions::new(tls("127.0.0.1", "tls0", None)).named("a"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        write_ok(&node, 0, &fill(0x77, 4096), false).await;
        node.flush().wait().await.unwrap();
        let node2 = g
            .add(BlockdevOptions::new(tls("127.0.0.1", "tls0", Some("localhost"))).named("b"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_ok(&node2, 0, 4096).await, fill(0x77, 4096));
        // In use by a node: cannot be deleted.
        assert!(g.remove_tls_creds("tls0").is_err());

        let err = |r: Result<Arc<Node>, blockwire::block::GraphError>| match r {
            Ok(_) => panic!("opened"),
            Err(e) => e.to_string(),
        };
        let e = err(g
            .add(BlockdevOptions::new(tls("127.0.0.1", "tls0", Some("example.com"))).named("c"))
            .await);
        assert!(
            e.contains("example.com") || e.to_lowercase().contains("certificate"),
            "{e}"
        );
        let e = err(g
            .add(BlockdevOptions::new(tls("127.0.0.1", "nope", None)).named("c"))
            .await);
        assert_eq!(e, "No TLS credentials with id 'nope'");
        let e = err(g
            .add(BlockdevOptions::new(tls("127.0.0.1", "srv", None)).named("c"))
            .await);
        assert_eq!(e, "Expected TLS credentials for a client endpoint");
        let over_unix = g
            .add(
                BlockdevOptions::new(DriverOptions::Nbd {
                    server: unix(&q_unix.sock),
                    export: Some(EXPORT.into()),
                    tls_creds: Some("tls0".into()),
                    tls_hostname: None,
                    reconnect_delay: 0,
                    open_timeout: 0,
                })
                .named("u"),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read_ok(&over_unix, 0, 4096).await, fill(0x77, 4096));
        // Plaintext to a server that requires TLS.
        let e = err(g
            .add(BlockdevOptions::new(nbd(inet("127.0.0.1"), Some(EXPORT), 0)).named("c"))
            .await);
        assert!(e.to_lowercase().contains("tls"), "{e}");
        // Missing files are found when the object is added.
        let e = g
            .add_tls_creds(TlsCredsX509::client("empty", dir.path()))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("Unable to access credentials"), "{e}");
        assert!(
            g.add_tls_creds(TlsCredsX509::client("tls0", &certs.dir))
                .is_err(),
            "duplicate id"
        );
    });
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------
// Stacked, and under load
// ---------------------------------------------------------------------------

/// A copy-on-write overlay over an `nbd` backing pointing at qemu-nbd:
/// the overlay reads the server's data, keeps its own writes, and the
/// server's image is never written (the inline backing opens read-only).
#[test]
fn overlay_over_an_nbd_backing() {
    require!("qemu-nbd");
    let dir = TmpDir::new("nbdcow");
    let img = dir.join("base.img");
    write_patterned(&img, 8 * MIB);
    let before = fs::read(&img).unwrap();
    let q = qemu_nbd(&img, &dir.join("q.sock"), &[]);
    let rt = runtime();
    rt.block_on(async {
        let g = Graph::new();
        let backing = BlockdevOptions::new(nbd(unix(&q.sock), Some(EXPORT), 0));
        let top = g
            .add(
                BlockdevOptions::new(DriverOptions::Cow {
                    backing: backing.into(),
                    file: None,
                    cluster_size: 64 * KIB,
                })
                .named("top"),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let nbd_node = top
            .children()
            .into_iter()
            .find(|c| c.role == "backing")
            .expect("backing child")
            .node;
        assert_eq!(nbd_node.driver_name(), "nbd");
        assert!(nbd_node.read_only(), "a backing is opened read-only");
        write_ok(&top, 100 * KIB, &fill(0xee, 8 * KIB), false).await;
        top.flush().wait().await.unwrap();
        let back = read_ok(&top, 0, 8 * MIB as usize).await;
        let mut expected = before.clone();
        expected[100 * KIB as usize..108 * KIB as usize].fill(0xee);
        assert!(
            back == expected,
            "overlay reads its writes over the server's data"
        );
    });
    drop(q);
    assert!(
        fs::read(&img).unwrap() == before,
        "the server's image is unchanged"
    );
}

/// Many requests at once from many tasks, of many sizes (some split),
/// against qemu-nbd: every read returns what the last write there put.
#[test]
fn concurrent_mixed_io_stays_consistent() {
    require!("qemu-nbd");
    let dir = TmpDir::new("nbdload");
    let size = 256 * MIB;
    let img = dir.join("disk.img");
    sparse_file(&img, size);
    let q = qemu_nbd(&img, &dir.join("q.sock"), &["--cache=writeback"]);
    let rt = runtime();
    let g = Graph::new();
    let node = rt.block_on(open(&g, nbd(unix(&q.sock), Some(EXPORT), 0)));
    // 32 tasks, each owning a 8 MiB slot: writes of 4 KiB .. 3 MiB at
    // varying places in it, each checked by reading it back, plus reads
    // of the whole slot against a model of it.
    let tasks: Vec<_> = (0..32u64)
        .map(|t| {
            let node = node.clone();
            rt.spawn(async move {
                let base = t * 8 * MIB;
                let mut model = vec![0u8; 8 * MIB as usize];
                let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for round in 0..12u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let len = [4 * KIB, 64 * KIB, 512 * KIB, 3 * MIB][(x % 4) as usize];
                    let at = (x >> 8) % (8 * MIB - len) / 512 * 512;
                    let byte = (t * 16 + round) as u8;
                    let data = fill(byte, len);
                    node.write(base + at, &data, round % 5 == 0).wait().await?;
                    model[at as usize..(at + len) as usize].fill(byte);
                    let mut back = vec![0u8; len as usize];
                    node.read(base + at, &mut back).wait().await?;
                    assert!(back == data, "task {t} round {round}: read back");
                }
                node.flush().wait().await?;
                let mut whole = vec![0u8; 8 * MIB as usize];
                node.read(base, &mut whole).wait().await?;
                assert!(whole == model, "task {t}: slot matches its model");
                io::Result::Ok(model)
            })
        })
        .collect();
    let models: Vec<Vec<u8>> = rt.block_on(async {
        let mut v = Vec::new();
        for t in tasks {
            v.push(t.await.unwrap().unwrap());
        }
        v
    });
    drop(q);
    for (t, m) in models.iter().enumerate() {
        assert!(
            read_at(&img, t as u64 * 8 * MIB, m.len()) == *m,
            "slot {t} on the server's disk"
        );
    }
}

/// A server that answers a read with garbage: the connection ends on a
/// protocol error, and as QEMU's (`NBD_CLIENT_QUIT`) the node never talks
/// to that server again, though it would accept a new connection.
#[test]
fn a_server_that_breaks_the_protocol_is_not_used_again() {
    require!(PYTHON);
    let dir = TmpDir::new("nbdquit");
    let sock = dir.join("bad.sock");
    // Newstyle, no structured replies: simple replies, the first of which
    // has a wrong magic. Each connection that gets to NBD_OPT_GO is logged.
    let script = r#"
import socket, struct, sys, threading
path = sys.argv[1]
def recvn(c, n):
    b = b""
    while len(b) < n:
        x = c.recv(n - len(b))
        if not x:
            raise EOFError
        b += x
    return b
def serve(c):
    try:
        c.sendall(struct.pack(">QQH", 0x4E42444D41474943, 0x49484156454F5054, 3))
        recvn(c, 4)
        while True:
            _, opt, ln = struct.unpack(">QII", recvn(c, 16))
            recvn(c, ln)
            if opt == 7:
                print("GO", file=sys.stderr, flush=True)
                info = struct.pack(">HQH", 0, 1 << 20, 1)
                c.sendall(struct.pack(">QIII", 0x3E889045565A9, opt, 3, len(info)) + info)
                c.sendall(struct.pack(">QIII", 0x3E889045565A9, opt, 1, 0))
                break
            c.sendall(struct.pack(">QIII", 0x3E889045565A9, opt, (1 << 31) + 1, 0))
        _, _, _, cookie, _, _ = struct.unpack(">IHHQQI", recvn(c, 28))
        c.sendall(struct.pack(">IIQ", 0xDEADBEEF, 0, cookie))
        while c.recv(65536):
            pass
    except (EOFError, OSError):
        pass
    c.close()
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(8)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;
    let peer = Peer::start(
        PYTHON,
        vec!["-c".into(), script.into(), sock.display().to_string()],
        &sock,
    );
    let rt = runtime();
    rt.block_on(async {
        let g = Graph::new();
        let node = open(&g, nbd(unix(&sock), None, 60)).await;
        assert_eq!(errno_of(read(&node, 0, 512).await), libc::EIO);
        assert_eq!(errno_of(read(&node, 0, 512).await), libc::EIO);
        assert_eq!(
            errno_of(node.write(0, &[1u8; 512], false).wait().await),
            libc::EIO
        );
    });
    let log = peer.stderr_text();
    assert_eq!(log.matches("GO").count(), 1, "one connection only:\n{log}");
}
