//! Multi-connection consistency and durability with real clients: four
//! libnbd connections to one export (the server advertises
//! CAN_MULTI_CONN), writes completed on three of them, reads and a flush
//! on the fourth, then a crash (SIGKILL) of the server.
//!
//! The export is a loop device (`losetup`), so that "on the device" can be
//! checked below the page cache the server writes through: the loop
//! device's backing file receives data only when the kernel writes the
//! loop device's dirty pages back, which a flush forces (the loop driver
//! then also fsyncs the backing file).
//!
//! What is lost: nothing that was acknowledged. A flush on one connection
//! puts every write completed on any connection onto the device (the
//! backing file holds them right after the flush reply), a FUA write is on
//! the device when it is acknowledged, reads on one connection see the
//! writes completed on the others, and after SIGKILL of the server every
//! acknowledged write, flushed or not, is still in the exported device
//! and served by the restarted server.
//!
//! losetup needs root: under CI not being root is a failure.

use blockwire_tests::*;
use std::process::Command;
use std::time::Duration;

/// A loop device over a file, detached on drop.
struct LoopDev {
    dev: String,
}

impl LoopDev {
    fn attach(backing: &std::path::Path) -> LoopDev {
        let out = run_ok("losetup", &["-f", "--show", backing.to_str().unwrap()]);
        LoopDev {
            dev: stdout_str(&out).trim().to_string(),
        }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

const BS: u64 = 64 * KIB;
/// Blocks each writer owns: writer w writes blocks w*64 .. w*64+32.
const PER_WRITER: u64 = 32;

/// What block `blk` holds after round `rnd` wrote it.
fn block(rnd: u64, blk: u64) -> Vec<u8> {
    let mut unit = rnd.to_le_bytes().to_vec();
    unit.extend_from_slice(&blk.to_le_bytes());
    unit.repeat((BS / 16) as usize)
}

const CLIENTS: &str = r#"
import struct, sys, nbd
BS, PER = 65536, 32
hs = []
for u in sys.argv[1:]:
    h = nbd.NBD()
    h.connect_uri(u)
    assert h.can_multi_conn(), "CAN_MULTI_CONN not advertised"
    hs.append(h)
reader = hs[1]
writers = [hs[0], hs[2], hs[3]]
def block(rnd, blk):
    return struct.pack("<QQ", rnd, blk) * (BS // 16)
def write_round(rnd):
    pending = []
    for w, h in enumerate(writers):
        for k in range(PER):
            blk = w * 64 + k
            pending.append((h, h.aio_pwrite(block(rnd, blk), blk * BS)))
    for h, c in pending:
        while not h.aio_command_completed(c):
            h.poll(-1)
def check_round(rnd):
    for w in range(len(writers)):
        for k in range(PER):
            blk = w * 64 + k
            assert reader.pread(BS, blk * BS) == block(rnd, blk), \
                "round %d: block %d written on another connection not seen" % (rnd, blk)
for rnd in (1, 2, 3):
    write_round(rnd)
    check_round(rnd)
    reader.flush()
    print("FLUSHED %d" % rnd, flush=True)
    sys.stdin.readline()
# A FUA write, no flush.
writers[0].pwrite(block(9, 200), 200 * BS, nbd.CMD_FLAG_FUA)
print("FUA", flush=True)
sys.stdin.readline()
# Round 4: acknowledged, never flushed; then the server is killed.
write_round(4)
check_round(4)
print("ACKED", flush=True)
sys.stdin.readline()
"#;

#[test]
fn flush_on_one_connection_covers_writes_completed_on_others_and_survives_a_crash() {
    require!("python3-nbd", "losetup");
    if !need_root("losetup") {
        return;
    }
    if is_standin() {
        return; // restarts blockwire
    }
    let dir = TmpDir::new("multiconn");
    let backing = dir.join("backing.img");
    sparse_file(&backing, 64 * MIB);
    let lo = LoopDev::attach(&backing);
    let Some(mut srv) = Server::start(&[&lo.dev]) else {
        return;
    };
    let [(_, u), (_, t)] = srv.uris();
    let mut c = PyChild::spawn(CLIENTS, &[&u, &t, &u, &t]);
    let on_device =
        |rnd: u64, blk: u64| read_at(&backing, blk * BS, BS as usize) == block(rnd, blk);
    let blocks = || (0..3u64).flat_map(|w| (0..PER_WRITER).map(move |k| w * 64 + k));
    for rnd in 1..=3 {
        c.wait_line(&format!("FLUSHED {rnd}"), Duration::from_secs(120));
        for blk in blocks() {
            assert!(
                on_device(rnd, blk),
                "round {rnd}: block {blk}, completed on another connection, is not on the device after the flush"
            );
        }
        c.send("go");
    }
    c.wait_line("FUA", Duration::from_secs(120));
    assert!(
        on_device(9, 200),
        "an acknowledged FUA write is not on the device"
    );
    c.send("go");
    c.wait_line("ACKED", Duration::from_secs(120));
    srv.kill();
    c.kill();
    // The exported device holds every acknowledged write.
    for blk in blocks() {
        assert!(
            read_at(std::path::Path::new(&lo.dev), blk * BS, BS as usize) == block(4, blk),
            "block {blk}: acknowledged write lost in the crash"
        );
    }
    srv.restart();
    let script = r#"
import struct, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for w in range(3):
    for k in range(32):
        blk = w * 64 + k
        assert h.pread(65536, blk * 65536) == struct.pack("<QQ", 4, blk) * 4096, blk
assert h.pread(65536, 200 * 65536) == struct.pack("<QQ", 9, 200) * 4096
h.shutdown()
"#;
    py_ok(script, &[&srv.uri_unix("")]);
    srv.stop();
}
