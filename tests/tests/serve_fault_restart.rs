//! Fault: the server is restarted (gracefully, and killed with requests in
//! flight) under clients that reconnect: qemu-io and qemu-img with the nbd
//! driver's `reconnect-delay`, on the same socket and the same file.
//!
//! What is lost: nothing that was acknowledged, and nothing the client
//! was still waiting for. qemu re-sends requests that were in flight when
//! the connection broke once it has reconnected (within reconnect-delay),
//! so a write issued while the server was frozen and then killed completes
//! on the new server, and every read after the restart returns the data
//! written before it. Neither client reports an error.

use blockwire_tests::*;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// How long qemu waits for the server to come back. Only a bound: the
/// restart takes well under a second; a larger delay never slows the test.
const RECONNECT_DELAY: u32 = 30;

/// qemu-io reading commands from a pipe. One command at a time: qemu-io
/// takes one command per wake-up of its stdin, so a second line sent with
/// the first would wait for more input. A command is done when qemu-io
/// prints its next prompt (aio commands print their results later, before
/// some later prompt).
struct QemuIo {
    child: Child,
    stdin: Option<ChildStdin>,
    chunks: mpsc::Receiver<Vec<u8>>,
    /// Everything printed so far (stdout and stderr).
    out: String,
    prompts: usize,
}

const PROMPT: &str = "qemu-io> ";

impl QemuIo {
    fn spawn(image_opts: &str) -> QemuIo {
        let mut child = Command::new("qemu-io")
            .args(["--image-opts", image_opts])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn qemu-io");
        let (tx, rx) = mpsc::channel();
        for mut out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            });
        }
        let mut q = QemuIo {
            stdin: child.stdin.take(),
            child,
            chunks: rx,
            out: String::new(),
            prompts: 0,
        };
        q.wait_prompt("connecting");
        q
    }

    /// Waits for the next prompt; panics if qemu-io ends first.
    fn wait_prompt(&mut self, what: &str) {
        let want = self.prompts + 1;
        while self.out.matches(PROMPT).count() < want {
            match self.chunks.recv_timeout(CMD_TIMEOUT) {
                Ok(c) => self.out.push_str(&String::from_utf8_lossy(&c)),
                Err(e) => panic!(
                    "qemu-io: no prompt after {what} ({e:?})\n--- output ---\n{}",
                    self.out
                ),
            }
        }
        self.prompts = want;
        assert!(
            !self.out.contains("failed") && !self.out.contains("rror"),
            "qemu-io reported an error after {what}\n--- output ---\n{}",
            self.out
        );
    }

    /// Runs one command to its prompt.
    fn cmd(&mut self, cmd: &str) {
        let w = self.stdin.as_mut().unwrap();
        writeln!(w, "{cmd}")
            .and_then(|()| w.flush())
            .expect("qemu-io stdin");
        self.wait_prompt(cmd);
    }

    /// Asserts qemu-io has printed `what`.
    fn printed(&self, what: &str) {
        assert!(
            self.out.contains(what),
            "qemu-io did not print {what:?}\n--- output ---\n{}",
            self.out
        );
    }

    fn quit(mut self) {
        drop(self.stdin.take());
        let st = self.child.wait().expect("wait qemu-io");
        while let Ok(c) = self.chunks.recv_timeout(Duration::from_secs(5)) {
            self.out.push_str(&String::from_utf8_lossy(&c));
        }
        assert!(
            st.success() && !self.out.contains("failed"),
            "qemu-io exited with {st}\n--- output ---\n{}",
            self.out
        );
    }
}

impl Drop for QemuIo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wrote(offset: u64) -> String {
    format!("wrote 1048576/1048576 bytes at offset {offset}")
}

fn read(offset: u64) -> String {
    format!("read 1048576/1048576 bytes at offset {offset}")
}

#[test]
fn qemu_io_reconnects_across_restarts_and_a_crash_with_writes_in_flight() {
    require!("qemu-io");
    if is_standin() {
        return;
    }
    let dir = TmpDir::new("restartio");
    let img = dir.join("d.img");
    sparse_file(&img, 16 * MIB);
    let Some(mut srv) = Server::start(&[img.to_str().unwrap()]) else {
        return;
    };
    let mut q = QemuIo::spawn(&format!(
        "driver=nbd,server.type=unix,server.path={},reconnect-delay={RECONNECT_DELAY}",
        srv.sock.display()
    ));
    q.cmd("write -P 0x55 0 1M");
    q.printed(&wrote(0));
    q.cmd("flush");

    // A graceful restart (SIGTERM) between requests.
    for st in srv.stop() {
        assert!(st.success(), "server exit {st}\n{}", srv.stderr());
    }
    srv.restart();
    q.cmd("read -P 0x55 0 1M");
    q.printed(&read(0));
    q.cmd("write -P 0x66 1M 1M");
    q.printed(&wrote(MIB));

    // A crash with writes in flight: the server is frozen (SIGSTOP) so
    // that the writes cannot be answered, then killed.
    srv.signal(libc::SIGSTOP);
    q.cmd("aio_write -P 0x77 2M 1M");
    q.cmd("aio_write -P 0x78 3M 1M");
    srv.kill();
    srv.restart();
    // aio_flush waits for both writes, then flushes.
    q.cmd("aio_flush");
    q.printed(&wrote(2 * MIB));
    q.printed(&wrote(3 * MIB));
    for (p, off) in [(0x55, 0), (0x66, MIB), (0x77, 2 * MIB), (0x78, 3 * MIB)] {
        q.cmd(&format!("read -P 0x{p:x} {off} 1M"));
        q.printed(&read(off));
    }
    q.cmd("flush");
    q.quit();
    srv.assert_running("after qemu-io quit");
    srv.stop();
    for (p, off) in [(0x55u8, 0), (0x66, MIB), (0x77, 2 * MIB), (0x78, 3 * MIB)] {
        assert!(
            read_at(&img, off, MIB as usize).iter().all(|&b| b == p),
            "the file lacks the write of 0x{p:x} at {off}"
        );
    }
}

#[test]
fn qemu_img_convert_survives_a_server_crash_mid_copy() {
    require!("qemu-img");
    if is_standin() {
        return;
    }
    let dir = TmpDir::new("restartimg");
    let src = dir.join("src.img");
    let dst = dir.join("dst.img");
    const SIZE: u64 = 32 * MIB;
    write_patterned(&src, SIZE);
    // The throttle makes the copy take seconds (32 MiB at 8 MiB/s), so
    // that the crash falls in the middle of it.
    let Some(mut srv) = Server::start(&[src.to_str().unwrap(), "--throttle", "bps-read=8M"]) else {
        return;
    };
    let opts = format!(
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={},reconnect-delay={RECONNECT_DELAY}",
        srv.port
    );
    let mut convert = Command::new("qemu-img")
        .args(["convert", "--image-opts", &opts, "-O", "raw"])
        .arg(&dst)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qemu-img");
    let copying = wait_until(CMD_TIMEOUT, || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&dst).is_ok_and(|m| m.blocks() > 0)
    });
    assert!(copying, "qemu-img convert never wrote anything");
    srv.signal(libc::SIGSTOP);
    assert!(
        convert.try_wait().unwrap().is_none(),
        "qemu-img convert finished before the crash: the throttle did not hold it"
    );
    srv.kill();
    srv.restart();
    let deadline = std::time::Instant::now() + CMD_TIMEOUT;
    let st = loop {
        if let Some(st) = convert.try_wait().unwrap() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "qemu-img convert did not finish after the restart"
        );
        thread::sleep(Duration::from_millis(50));
    };
    let out = convert.wait_with_output().unwrap();
    assert!(
        st.success(),
        "qemu-img convert failed across the restart: {st}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sha256(&src),
        sha256(&dst),
        "the copy differs from the source"
    );
}
