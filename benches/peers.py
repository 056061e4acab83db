#!/usr/bin/env python3
"""The matrix behind benches/peers (run that: it installs peers and builds).

For each repetition (outer loop), transport, job, and then each server
(inner loop, order rotated per repetition, so servers compared on one row
run back to back): start a fresh server, pre-fill it when the job reads,
reset its peak RSS, run the job, read the server's VmHWM and CPU time,
stop it. Medians over repetitions with their min-max spread; ratios of
each blockwire to the best peer, written so that > 1 means blockwire ahead.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BW = Path(os.environ.get("BLOCKWIRE_BIN") or ROOT / "target" / "release" / "blockwire")
GiB = 1 << 30
MiB = 1 << 20
DISK = GiB
CLK = os.sysconf("SC_CLK_TCK")

SERVERS = ["blockwire-mem", "nbdkit-mem", "nbdkit-file", "qemu-nbd-file", "blockwire-file",
           "qemu-nbd-qcow2", "blockwire-qcow2"]
# With --base-bin: the same two exports served by an earlier build, so a
# change is measured against what it replaced in one interleaved run.
BASE = ["blockwire-mem-base", "blockwire-file-base"]
BLOCKWIRE = ["blockwire-mem", "blockwire-file", "blockwire-qcow2"]
# Both serve the same qcow2 image, made by qemu-img from the random data.
QCOW2 = ["qemu-nbd-qcow2", "blockwire-qcow2"]
PEERS = ["nbdkit-mem", "nbdkit-file", "qemu-nbd-file"]
TRANSPORTS = ["unix", "tcp"]

# name -> (kind, fio options, reads data)
JOBS = {
    "randread-4k-qd1": ("fio", dict(rw="randread", bs="4k", iodepth=1), True),
    "randread-4k-qd32": ("fio", dict(rw="randread", bs="4k", iodepth=32), True),
    "randwrite-4k-qd32": ("fio", dict(rw="randwrite", bs="4k", iodepth=32), False),
    "read-1m-qd8": ("fio", dict(rw="read", bs="1m", iodepth=8), True),
    "write-1m-qd8": ("fio", dict(rw="write", bs="1m", iodepth=8), False),
    "nbdcopy-to-null": ("copy-out", None, True),
    "nbdcopy-from-file": ("copy-in", None, False),
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
    return 0


def reset_hwm(pid):
    # Writing 5 to clear_refs resets VmHWM to the current RSS, so the peak
    # seen afterwards belongs to the job, not to the pre-fill.
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Server:
    def __init__(self, kind, transport, work, disk_file, logdir, qcow2_file=None, base_bin=None):
        self.kind = kind
        sock = work / f"{kind}.sock"
        if sock.exists():
            sock.unlink()
        port = free_port()
        if transport == "unix":
            self.uri = f"nbd+unix:///?socket={sock}"
            self.addr = (socket.AF_UNIX, str(sock))
        else:
            self.uri = f"nbd://127.0.0.1:{port}/"
            self.addr = (socket.AF_INET, ("127.0.0.1", port))
        if kind.startswith("blockwire"):
            listen = f"unix:{sock}" if transport == "unix" else f"tcp:127.0.0.1:{port}"
            backing = (["--memory", "1G"] if kind.startswith("blockwire-mem") else
                       [str(qcow2_file)] if kind == "blockwire-qcow2" else [str(disk_file)])
            binary = base_bin if kind in BASE else BW
            cmd = [str(binary), "serve", *backing, "--listen", listen, "-q"]
        elif kind == "nbdkit-mem":
            where = ["-U", str(sock)] if transport == "unix" else ["-i", "127.0.0.1", "-p", str(port)]
            cmd = ["nbdkit", "-f", "--exit-with-parent", *where, "memory", "1G"]
        elif kind == "nbdkit-file":
            # The file plugin's defaults (cache=default, fadvise=normal):
            # what a user of nbdkit gets, as qemu-nbd runs with writeback.
            where = ["-U", str(sock)] if transport == "unix" else ["-i", "127.0.0.1", "-p", str(port)]
            cmd = ["nbdkit", "-f", "--exit-with-parent", *where, "file", str(disk_file)]
        elif kind == "qemu-nbd-file":
            where = ["-k", str(sock)] if transport == "unix" else ["-b", "127.0.0.1", "-p", str(port)]
            cmd = ["qemu-nbd", "-f", "raw", "-t", "--shared=8", "--cache=writeback",
                   "--aio=threads", *where, str(disk_file)]
        elif kind == "qemu-nbd-qcow2":
            where = ["-k", str(sock)] if transport == "unix" else ["-b", "127.0.0.1", "-p", str(port)]
            cmd = ["qemu-nbd", "-f", "qcow2", "-t", "--shared=8", "--cache=writeback",
                   "--aio=threads", *where, str(qcow2_file)]
        else:
            raise ValueError(kind)
        self.errlog = open(logdir / f"{kind}-{transport}.log", "ab")
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.errlog)
        self.pid = self.p.pid
        deadline = time.monotonic() + 10
        while True:
            if self.p.poll() is not None:
                raise RuntimeError(f"{kind} exited at start: see {logdir}")
            try:
                with socket.socket(self.addr[0]) as s:
                    s.connect(self.addr[1])
                    s.recv(8)  # the server's greeting: it is serving
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} did not listen")
                time.sleep(0.02)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.errlog.close()


def run_fio(uri, opts, seconds):
    cmd = ["fio", "--name=job", "--ioengine=nbd", f"--uri={uri}", "--time_based",
           f"--runtime={seconds}", "--output-format=json", "--numjobs=1"]
    cmd += [f"--{k}={v}" for k, v in opts.items()]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    j = json.loads(out[out.index("{"):])["jobs"][0]
    d = j["read"] if j["read"]["io_bytes"] else j["write"]
    pct = d["clat_ns"].get("percentile", {})
    return dict(
        iops=d["iops"],
        mibs=d["bw_bytes"] / MiB,
        p50_us=pct.get("50.000000", 0) / 1000,
        p99_us=pct.get("99.000000", 0) / 1000,
        bytes=d["io_bytes"],
    )


def run_copy(src, dst):
    t = time.perf_counter()
    subprocess.run(["nbdcopy", src, dst], check=True)
    el = time.perf_counter() - t
    return dict(mibs=DISK / MiB / el, bytes=DISK, seconds=el)


def loopback(transport, total=4 * GiB, chunk=1 * MiB):
    """What a plain socket moves on this machine: one sender process, one
    receiver, 1 MiB send/recv calls, default socket buffers."""
    with tempfile.TemporaryDirectory() as d:
        if transport == "unix":
            fam, addr = socket.AF_UNIX, os.path.join(d, "s")
        else:
            fam, addr = socket.AF_INET, ("127.0.0.1", 0)
        srv = socket.socket(fam)
        srv.bind(addr)
        addr = srv.getsockname()
        srv.listen(1)
        pid = os.fork()
        if pid == 0:
            try:
                c = socket.socket(fam)
                c.connect(addr)
                buf = os.urandom(chunk)
                for _ in range(total // chunk):
                    c.sendall(buf)
                c.close()
            finally:
                os._exit(0)
        conn, _ = srv.accept()
        buf = bytearray(chunk)
        got = 0
        t = time.perf_counter()
        while True:
            n = conn.recv_into(buf)
            if not n:
                break
            got += n
        el = time.perf_counter() - t
        os.waitpid(pid, 0)
        conn.close()
        srv.close()
        return got / MiB / el


def criterion():
    """The core's codec bench, quick settings; {name: ns/iter}."""
    log("==> cargo bench -p blockwire-core --bench codec (quick)")
    r = subprocess.run(
        ["cargo", "bench", "-q", "-p", "blockwire-core", "--bench", "codec", "--",
         "--warm-up-time", "1", "--measurement-time", "3", "--noplot",
         "--output-format", "bencher"],
        cwd=ROOT, capture_output=True, text=True)
    out = {}
    for m in re.finditer(r"^test (\S+) \.\.\. bench:\s+([\d,.]+) ns/iter \(\+/- ([\d,.]+)\)",
                         r.stdout, re.M):
        out[m.group(1)] = (float(m.group(2).replace(",", "")), float(m.group(3).replace(",", "")))
    if r.returncode != 0 or not out:
        log(r.stdout[-2000:], r.stderr[-2000:])
    return out


def version(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "missing"


def machine():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "load_before": os.getloadavg()[0],
        "blockwire": version([str(BW), "--version"]) + " @ " + subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
            text=True).stdout.strip(),
        "qemu-nbd": version(["qemu-nbd", "--version"]),
        "nbdkit": version(["nbdkit", "--version"]),
        "fio": version(["fio", "--version"]),
        "nbdcopy": version(["nbdcopy", "--version"]),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2 s per job, 1 repetition")
    ap.add_argument("--out", help="results directory (default benches/results, "
                    "or a scratch directory with --quick)")
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--transports", default=",".join(TRANSPORTS))
    ap.add_argument("--jobs", default=",".join(JOBS))
    ap.add_argument("--no-criterion", action="store_true")
    ap.add_argument("--base-bin", metavar="PATH",
                    help="also run blockwire-mem-base and blockwire-file-base with this "
                    "earlier build of blockwire, interleaved with the rest")
    ap.add_argument("--perf", metavar="DIR",
                    help="perf record -g each blockwire server during its job into DIR")
    ap.add_argument("--note", default="", help="text added to the results file")
    a = ap.parse_args()
    if a.quick:
        a.seconds, a.reps = 2, 1
    servers = [s for s in a.servers.split(",") if s]
    if a.base_bin:
        # The earlier build serves the exports this run compares.
        servers += [b for b in BASE if b not in servers and b.removesuffix("-base") in servers]
    if not shutil.which("qemu-nbd") and "qemu-nbd-file" in servers:
        servers.remove("qemu-nbd-file")
    if not shutil.which("qemu-img"):
        # No image to serve: neither qcow2 server runs.
        servers = [s for s in servers if s not in QCOW2]
    transports = a.transports.split(",")
    jobs = a.jobs.split(",")
    for j in jobs:
        if j not in JOBS:
            sys.exit(f"unknown job {j}; jobs: {', '.join(JOBS)}")
    out = Path(a.out) if a.out else (
        Path(tempfile.mkdtemp(prefix="peers-")) if a.quick else ROOT / "benches" / "results")
    out.mkdir(parents=True, exist_ok=True)
    if a.perf:
        Path(a.perf).mkdir(parents=True, exist_ok=True)

    info = machine()
    info.update(seconds=a.seconds, reps=a.reps, note=a.note)
    if a.base_bin:
        info["base_bin"] = str(a.base_bin)
    crit = {} if a.no_criterion else criterion()

    work = Path(tempfile.mkdtemp(prefix="bw-peers-", dir="/dev/shm"))
    logdir = Path(tempfile.mkdtemp(prefix="bw-peers-logs-"))
    log(f"server logs: {logdir}")
    src = work / "src.img"     # random data: nbdcopy's source and the pre-fill
    disk = work / "disk.img"   # the file qemu-nbd and blockwire-file serve
    try:
        with open(src, "wb") as f:
            for _ in range(DISK // (16 * MiB)):
                f.write(os.urandom(16 * MiB))
        shutil.copyfile(src, disk)
        qcow2 = work / "disk.qcow2"  # the image both qcow2 servers serve
        if any(s in QCOW2 for s in servers):
            subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2",
                            str(src), str(qcow2)], check=True)
        records, loop = [], []
        t0 = time.monotonic()
        for rep in range(a.reps):
            for tr in transports:
                loop.append(dict(rep=rep, transport=tr, mibs=loopback(tr)))
                log(f"rep {rep} loopback {tr}: {loop[-1]['mibs']:.0f} MiB/s")
            order = servers[rep % len(servers):] + servers[:rep % len(servers)]
            for tr in transports:
                for job in jobs:
                    kind, opts, reads = JOBS[job]
                    for sv in order:
                        s = Server(sv, tr, work, disk, logdir, qcow2, a.base_bin)
                        perf = None
                        try:
                            if reads and "-mem" in sv:
                                subprocess.run(["nbdcopy", str(src), s.uri], check=True)
                            reset_hwm(s.pid)
                            cpu0 = proc_cpu(s.pid)
                            if a.perf and sv in BLOCKWIRE:
                                perf = subprocess.Popen(
                                    ["perf", "record", "-g", "-q", "-p", str(s.pid), "-o",
                                     f"{a.perf}/{sv}-{tr}-{job}.data"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                                time.sleep(0.3)
                            if kind == "fio":
                                r = run_fio(s.uri, opts, a.seconds)
                            elif kind == "copy-out":
                                r = run_copy(s.uri, "null:")
                            else:
                                r = run_copy(str(src), s.uri)
                            if perf:
                                perf.send_signal(signal.SIGINT)
                                perf.wait()
                            r["cpu_s"] = proc_cpu(s.pid) - cpu0
                            r["hwm_mib"] = proc_status(s.pid, "VmHWM") / 1024
                            r["cpu_s_per_gib"] = r["cpu_s"] / (r["bytes"] / GiB)
                        finally:
                            s.stop()
                        r.update(rep=rep, server=sv, transport=tr, job=job)
                        records.append(r)
                        log(f"rep {rep} {tr:4} {job:18} {sv:15} "
                            + " ".join(f"{k}={r[k]:.1f}" for k in
                                       ("iops", "mibs", "p50_us", "p99_us", "cpu_s_per_gib",
                                        "hwm_mib") if k in r))
        info["elapsed_s"] = round(time.monotonic() - t0)
        info["load_after"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    date = datetime.date.today().isoformat()
    raw = dict(machine=info, criterion=crit, loopback=loop, records=records)
    (out / f"{date}.json").write_text(json.dumps(raw, indent=1) + "\n")
    import report  # benches/report.py
    notes = out / f"{date}.notes.md"  # hand-written diagnosis, kept across re-runs
    report.write(raw, out / f"{date}.md", out / f"{date}.png",
                 notes.read_text() if notes.exists() else "")
    log(f"==> {out}/{date}.md")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
