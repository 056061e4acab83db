//! Faults from peers: a client that reads its replies slowly, TLS peers
//! killed mid-handshake and mid-transfer, and clients queued behind
//! `--max-connections 1`.

use blockwire_tests::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

// ---------------------------------------------------------------------------
// A client that reads its replies slowly
// ---------------------------------------------------------------------------

/// A small deterministic random source (xorshift64*), for read sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The old-style handshake (NBD_OPT_EXPORT_NAME ""): simple replies.
fn handshake<S: Read + Write>(c: &mut S) {
    let mut greeting = [0u8; 18];
    c.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    c.write_all(&1u32.to_be_bytes()).unwrap();
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.extend_from_slice(&0u32.to_be_bytes());
    c.write_all(&opt).unwrap();
    let mut info = [0u8; 134];
    c.read_exact(&mut info).unwrap();
}

fn read_request(cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
    r.extend_from_slice(&[0, 0, 0, 0]); // flags, NBD_CMD_READ
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&len.to_be_bytes());
    r
}

/// Reads exactly `buf.len()` bytes in pieces of random size (1 to 7 bytes
/// a quarter of the time, else up to 16 KiB), pausing 5 ms after every
/// 2 MiB.
struct SlowReader<R> {
    inner: R,
    rng: Rng,
    since_pause: usize,
}

impl<R: Read> SlowReader<R> {
    fn read_exact(&mut self, buf: &mut [u8]) {
        let mut at = 0;
        while at < buf.len() {
            let r = self.rng.next();
            let want = if r % 4 == 0 {
                1 + (r >> 8) as usize % 7
            } else {
                1 + (r >> 8) as usize % 16384
            };
            let end = buf.len().min(at + want);
            let n = self.inner.read(&mut buf[at..end]).expect("read reply");
            assert!(n > 0, "server closed the connection mid-reply");
            at += n;
            self.since_pause += n;
            if self.since_pause >= 2 << 20 {
                self.since_pause = 0;
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

const SLOW_EXPORT: u64 = 64 * MIB;
const SLOW_REQUESTS: u64 = 384;
const SLOW_LEN: u64 = MIB;

/// Sends all of [`SLOW_REQUESTS`] reads at once, reads the replies slowly
/// and checks each against the file; returns the largest server RSS seen
/// above the RSS before the requests.
fn slow_reader<S: Read + Write + Send + 'static>(
    mut sock: S,
    writer: impl FnOnce() -> Box<dyn Write + Send>,
    pid: u32,
    want: Arc<Vec<u8>>,
) -> u64 {
    handshake(&mut sock);
    let base = rss_bytes(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(base));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut w = writer();
    let sender = thread::spawn(move || {
        for i in 0..SLOW_REQUESTS {
            let off = (i * SLOW_LEN) % SLOW_EXPORT;
            w.write_all(&read_request(i, off, SLOW_LEN as u32))
                .expect("send request");
        }
        w
    });
    let mut r = SlowReader {
        inner: sock,
        rng: Rng(0x5EED_0001),
        since_pause: 0,
    };
    let mut seen = vec![false; SLOW_REQUESTS as usize];
    let mut data = vec![0u8; SLOW_LEN as usize];
    for _ in 0..SLOW_REQUESTS {
        let mut head = [0u8; 16];
        r.read_exact(&mut head);
        assert_eq!(
            u32::from_be_bytes(head[..4].try_into().unwrap()),
            0x6744_6698,
            "bad reply magic"
        );
        let err = u32::from_be_bytes(head[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(head[8..].try_into().unwrap());
        assert_eq!(err, 0, "read {cookie} failed");
        assert!(
            cookie < SLOW_REQUESTS && !seen[cookie as usize],
            "unexpected cookie {cookie}"
        );
        seen[cookie as usize] = true;
        r.read_exact(&mut data);
        let off = ((cookie * SLOW_LEN) % SLOW_EXPORT) as usize;
        assert!(
            data[..] == want[off..off + SLOW_LEN as usize],
            "read {cookie} (offset {off}) returned wrong data"
        );
    }
    drop(sender.join().unwrap());
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    peak.load(Ordering::Relaxed) - base
}

/// A client sends 384 reads of 1 MiB at once (384 MiB of replies) and
/// reads the replies a few bytes at a time with pauses.
///
/// What is lost: nothing; every reply arrives whole and correct. Memory:
/// the server stops reading requests while a connection has 64 requests
/// (or 256 MiB) in flight, so it holds at most 64 MiB of these replies;
/// the bound asserted is 128 MiB above its RSS before the requests (twice
/// that, for the allocator). Without flow control it would hold all
/// 384 MiB.
#[test]
fn slow_reader_gets_every_reply_in_bounded_server_memory() {
    require!("nbdinfo");
    if is_standin() {
        return; // qemu-nbd's limits are its own.
    }
    let dir = TmpDir::new("slowread");
    let img = dir.join("d.img");
    write_patterned(&img, SLOW_EXPORT);
    let want = Arc::new(pattern(SLOW_EXPORT));
    let Some(mut srv) = Server::start(&[img.to_str().unwrap()]) else {
        return;
    };
    let pid = srv.pids()[0];
    const BOUND: u64 = 128 * MIB;
    let u = UnixStream::connect(&srv.sock).unwrap();
    let uw = u.try_clone().unwrap();
    let grew = slow_reader(u, move || Box::new(uw), pid, want.clone());
    eprintln!("unix: server RSS grew by {} MiB", grew >> 20);
    assert!(
        grew <= BOUND,
        "unix: server RSS grew by {} MiB with a slow reader (bound {} MiB)",
        grew >> 20,
        BOUND >> 20
    );
    let t = std::net::TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    let tw = t.try_clone().unwrap();
    let grew = slow_reader(t, move || Box::new(tw), pid, want);
    eprintln!("tcp: server RSS grew by {} MiB", grew >> 20);
    assert!(
        grew <= BOUND,
        "tcp: server RSS grew by {} MiB with a slow reader (bound {} MiB)",
        grew >> 20,
        BOUND >> 20
    );
    srv.assert_running("after the slow readers");
    let out = run("nbdinfo", &[srv.uri_unix("").as_str()]);
    assert!(out.status.success(), "nbdinfo after the slow readers");
}

// ---------------------------------------------------------------------------
// TLS peers killed mid-handshake and mid-transfer
// ---------------------------------------------------------------------------

/// A peer that negotiates STARTTLS by hand and then fails at `mode`:
/// `close` (closes right after the server's ACK), `stall` (never sends a
/// ClientHello), `half-hello` (half a ClientHello), `hello-stall` (a whole
/// ClientHello, then never answers the server's flight), `after-tls` (TLS
/// established, then half an option header). Prints `AT <mode>` when it
/// got there, then waits on stdin (the test kills it, or lets it go).
const TLS_PEER: &str = r#"
import socket, ssl, struct, sys
mode, kind, addr = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "unix":
    s = socket.socket(socket.AF_UNIX)
    s.connect(addr)
else:
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
def recvn(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("server closed after %d of %d bytes" % (len(b), n))
        b += c
    return b
assert recvn(18)[:8] == b"NBDMAGIC"
s.sendall(struct.pack(">I", 3))                     # FIXED_NEWSTYLE | NO_ZEROES
s.sendall(b"IHAVEOPT" + struct.pack(">II", 5, 0))   # NBD_OPT_STARTTLS
_, opt, typ, ln = struct.unpack(">QIII", recvn(20))
recvn(ln)
assert opt == 5 and typ == 1, "STARTTLS answered %x" % typ
def at():
    print("AT " + mode, flush=True)
    sys.stdin.readline()
    sys.exit(0)
if mode == "close":
    s.close()
    at()
if mode == "stall":
    at()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(inc, out, server_hostname="localhost")
def step():
    try:
        tls.do_handshake()
        return True
    except ssl.SSLWantReadError:
        return False
step()
hello = out.read()
if mode == "half-hello":
    s.sendall(hello[: len(hello) // 2])
    at()
s.sendall(hello)
if mode == "hello-stall":
    assert s.recv(65536), "no server flight"
    at()
while not step():
    if out.pending:
        s.sendall(out.read())
    got = s.recv(65536)
    if not got:
        raise EOFError("server closed during the TLS handshake")
    inc.write(got)
if out.pending:
    s.sendall(out.read())
tls.write(b"IHAVEOPT\x00\x00")
s.sendall(out.read())
at()
"#;

const TLS_OTHER: &str = r#"
import sys, nbd
h = nbd.NBD()
h.set_uri_allow_local_file(True)
h.connect_uri(sys.argv[1])
n = 0
print("READY", flush=True)
for line in sys.stdin:
    n += 1
    buf = bytes([n % 256]) * 65536
    off = (32 << 20) + n * 65536
    h.pwrite(buf, off)
    h.flush()
    assert h.pread(65536, off) == buf
    print("OK %d" % n, flush=True)
h.shutdown()
"#;

/// TLS peers that fail mid-handshake, at every step (closing right after
/// STARTTLS; before, inside and after the TLS handshake: no ClientHello,
/// half of one, no answer to the server's flight, half an option after
/// TLS), each once SIGKILLed there and once left stalled there, and
/// nbdcopy over TLS SIGKILLed mid-transfer in both directions.
///
/// What is lost: nothing. Another TLS client connected throughout keeps
/// being served after each failure, the stalled peers are dropped at the
/// handshake timeout while still connected, and the server's descriptors
/// return to what they were (no leaked socket or TLS state).
#[test]
fn tls_peers_killed_mid_handshake_and_mid_transfer_leak_nothing() {
    require!("python3-nbd", "nbdcopy", "openssl");
    if is_standin() {
        return; // counts the descriptors of blockwire's one process
    }
    let dir = TmpDir::new("tlskill");
    let certs = self_signed_cert(dir.path());
    let Some(mut srv) = Server::start(&[
        "--memory",
        "64M",
        "--tls",
        "require",
        "--tls-cert",
        certs.cert.to_str().unwrap(),
        "--tls-key",
        certs.key.to_str().unwrap(),
        "--handshake-timeout",
        "5",
    ]) else {
        return;
    };
    let pid = srv.pids()[0];
    // Before any client (the start-up probes closed): the other client
    // below holds one more.
    let base = idle_fd_count(pid) + 1;
    let [(_, tls_unix), (_, tls_tcp)] = srv.tls_uris();
    // Data to copy, through a first, complete TLS copy.
    let src = dir.join("src.img");
    write_patterned(&src, 64 * MIB);
    run_ok("nbdcopy", &[src.to_str().unwrap(), tls_tcp.as_str()]);

    let mut other = PyChild::spawn(TLS_OTHER, &[&tls_unix]);
    other.wait_line("READY", Duration::from_secs(60));
    let mut rounds = 0;
    let mut serves = |other: &mut PyChild, what: &str| {
        rounds += 1;
        other.send("io");
        let l = other.wait_line("OK ", Duration::from_secs(60));
        assert_eq!(l, format!("OK {rounds}"), "after {what}");
    };
    serves(&mut other, "start");
    let settles = |what: &str| {
        let mut now = 0;
        let ok = wait_until(Duration::from_secs(30), || {
            now = fd_count(pid);
            now <= base
        });
        assert!(
            ok,
            "{what}: server holds {now} descriptors, {base} before (leak?)\n{}",
            srv.stderr()
        );
    };

    let sock = srv.sock.display().to_string();
    let tcp = format!("127.0.0.1:{}", srv.port);
    let peers = [("unix", sock.as_str()), ("tcp", tcp.as_str())];
    // Killed at each step of the handshake (or closing after STARTTLS):
    // the server sees the connection end and lets it go at once.
    for (kind, addr) in peers {
        for mode in ["close", "stall", "half-hello", "hello-stall", "after-tls"] {
            let what = format!("{kind} peer {mode}, killed");
            let mut p = PyChild::spawn(TLS_PEER, &[mode, kind, addr]);
            p.wait_line(&format!("AT {mode}"), Duration::from_secs(60));
            if mode == "close" {
                p.finish_ok(Duration::from_secs(30));
            } else {
                p.kill();
            }
            settles(&what);
            serves(&mut other, &what);
        }
    }
    // Stalled at each step, all at once, and kept alive: the server drops
    // every one of them at the handshake timeout, by itself.
    let mut stalled = Vec::new();
    for (kind, addr) in peers {
        for mode in ["stall", "half-hello", "hello-stall", "after-tls"] {
            let mut p = PyChild::spawn(TLS_PEER, &[mode, kind, addr]);
            p.wait_line(&format!("AT {mode}"), Duration::from_secs(60));
            stalled.push(p);
        }
    }
    settles("peers stalled mid-handshake (still connected)");
    for mut p in stalled {
        p.kill();
    }
    settles("stalled peers killed");
    serves(&mut other, "stalled peers");

    // nbdcopy over TLS, SIGKILLed mid-transfer: reading (1 MiB of its
    // stdout read, the rest blocked in the pipe), and writing (8 MiB of its
    // stdin taken: it is connected and has sent writes).
    for uri in [&tls_unix, &tls_tcp] {
        let mut c = std::process::Command::new("nbdcopy")
            .args([uri.as_str(), "-"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut got = vec![0u8; MIB as usize];
        c.stdout.as_mut().unwrap().read_exact(&mut got).unwrap();
        assert!(got == pattern(MIB), "nbdcopy over TLS read wrong data");
        c.kill().unwrap();
        c.wait().unwrap();
        settles(&format!("nbdcopy {uri} - killed"));
        serves(&mut other, "nbdcopy reading, killed");

        let mut c = std::process::Command::new("nbdcopy")
            .args(["-", uri.as_str()])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        c.stdin
            .as_mut()
            .unwrap()
            .write_all(&pattern(8 * MIB))
            .unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        settles(&format!("nbdcopy - {uri} killed"));
        serves(&mut other, "nbdcopy writing, killed");
    }
    other.finish_ok(Duration::from_secs(30));
    srv.assert_running("after the TLS peers");
}

// ---------------------------------------------------------------------------
// --max-connections 1
// ---------------------------------------------------------------------------

/// A: connects, writes, says CONNECTED, waits for a line, writes again
/// and disconnects.
const FIRST: &str = r#"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"\xa1" * 65536, 0)
print("CONNECTED", flush=True)
sys.stdin.readline()
h.pwrite(b"\xa2" * 65536, 65536)
h.flush()
h.shutdown()
print("DONE", flush=True)
"#;

/// B: connects its socket itself (so that it says QUEUED only once its
/// connection is in the server's backlog), then negotiates through libnbd,
/// sees both of A's writes, and writes.
const SECOND: &str = r#"
import socket, sys, nbd
kind, addr, name = sys.argv[1], sys.argv[2], sys.argv[3]
if kind == "unix":
    s = socket.socket(socket.AF_UNIX)
    s.connect(addr)
else:
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
print("QUEUED", flush=True)
h = nbd.NBD()
h.set_export_name(name)
h.connect_socket(s.detach())
print("CONNECTED", flush=True)
assert h.pread(65536, 0) == b"\xa1" * 65536
assert h.pread(65536, 65536) == b"\xa2" * 65536, "A's last write not seen"
h.pwrite(b"\xb1" * 65536, 131072)
h.shutdown()
print("DONE", flush=True)
"#;

/// `--max-connections 1`: while one client is connected a second waits in
/// the backlog (on the other listener too) and is served once the first
/// disconnects; neither fails. On an idle server a client on either
/// listener is served at once (regression: the accept loop of one
/// listener held the only slot while waiting for its own clients, so
/// clients of the other listener waited forever).
///
/// What is lost: nothing; the second client sees every write of the first.
#[test]
fn max_connections_1_queues_the_second_client_until_the_first_leaves() {
    require!("python3-nbd", "nbdinfo");
    let Some(srv) = Server::start(&["--memory", "16M", "--max-connections", "1"]) else {
        return;
    };
    for round in 0..3 {
        for (t, uri) in srv.uris() {
            let mut cmd = std::process::Command::new("nbdinfo");
            cmd.arg(&uri);
            let out = run_cmd(cmd, Duration::from_secs(30));
            assert!(
                out.status.success(),
                "round {round}: {t}: nbdinfo on an idle server with --max-connections 1"
            );
        }
    }
    let sock = srv.sock.display().to_string();
    let tcp = format!("127.0.0.1:{}", srv.port);
    let mut pairs = vec![
        (srv.uri_unix(""), "unix", sock.as_str()),
        (srv.uri_unix(""), "tcp", tcp.as_str()),
        (srv.uri_tcp(""), "unix", sock.as_str()),
    ];
    if is_standin() {
        // One qemu-nbd per socket, each with its own limit.
        pairs.truncate(1);
    }
    for (a_uri, b_kind, b_addr) in pairs {
        let what = format!("A on {a_uri}, B on {b_kind}");
        let mut a = PyChild::spawn(FIRST, &[&a_uri]);
        a.wait_line("CONNECTED", Duration::from_secs(60));
        let fds = (!is_standin()).then(|| fd_count(srv.pids()[0]));
        let mut b = PyChild::spawn(SECOND, &[b_kind, b_addr, &srv.name]);
        b.wait_line("QUEUED", Duration::from_secs(60));
        // B's connection is in the backlog: not accepted while A is
        // connected, so B cannot have got past the handshake.
        if let Some(n) = fds {
            assert_eq!(fd_count(srv.pids()[0]), n, "{what}: B was accepted");
        }
        assert_eq!(
            b.try_line(),
            None,
            "{what}: B was served while A was connected"
        );
        a.send("go");
        a.wait_line("DONE", Duration::from_secs(60));
        a.finish_ok(Duration::from_secs(30));
        b.wait_line("CONNECTED", Duration::from_secs(60));
        b.wait_line("DONE", Duration::from_secs(60));
        b.finish_ok(Duration::from_secs(30));
    }
    srv.assert_running_ref("after the queued clients");
}
