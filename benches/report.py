#!/usr/bin/env python3
"""Markdown table and ratio plot from a benches/peers JSON file.

    python3 benches/report.py benches/results/DATE.json   # rewrites DATE.md/.png

A ratio is blockwire's standing against the best peer on that row, written
so that > 1 means blockwire is ahead: blockwire / best peer for IOPS and
MiB/s, best peer / blockwire for latency, CPU and RSS.
"""

import json
import statistics
import sys
from pathlib import Path

BLOCKWIRE = ["blockwire-mem", "blockwire-file", "blockwire-qcow2"]
PEERS = ["nbdkit-mem", "nbdkit-file", "qemu-nbd-file"]
SERVERS = ["blockwire-mem", "nbdkit-mem", "nbdkit-file", "qemu-nbd-file", "blockwire-file",
           "qemu-nbd-qcow2", "blockwire-qcow2", "blockwire-mem-base", "blockwire-file-base"]
# benches/peers --base-bin: the same exports from an earlier build.
BASE = {"blockwire-mem": "blockwire-mem-base", "blockwire-file": "blockwire-file-base"}
TRANSPORTS = ["unix", "tcp"]
# The peers backed like each blockwire export: its VmHWM is compared with
# the lightest of them (a memory server's RSS is mostly the disk it holds).
LIKE = {"blockwire-mem": ["nbdkit-mem"], "blockwire-file": ["nbdkit-file", "qemu-nbd-file"],
        "blockwire-qcow2": ["qemu-nbd-qcow2"]}
# Compared only with the peer serving the same format (the raw peers do
# less work per request).
ONLY_LIKE = ["blockwire-qcow2"]

# (job, metric, higher is better)
PERF_ROWS = [
    ("randread-4k-qd1", "iops", True), ("randread-4k-qd1", "p50_us", False),
    ("randread-4k-qd1", "p99_us", False),
    ("randread-4k-qd32", "iops", True), ("randread-4k-qd32", "p99_us", False),
    ("randwrite-4k-qd32", "iops", True), ("randwrite-4k-qd32", "p99_us", False),
    ("read-1m-qd8", "mibs", True), ("write-1m-qd8", "mibs", True),
    ("nbdcopy-to-null", "mibs", True), ("nbdcopy-from-file", "mibs", True),
]
JOB_ORDER = ["randread-4k-qd1", "randread-4k-qd32", "randwrite-4k-qd32", "read-1m-qd8",
             "write-1m-qd8", "nbdcopy-to-null", "nbdcopy-from-file"]
UNIT = {"iops": "IOPS", "mibs": "MiB/s", "p50_us": "p50 µs", "p99_us": "p99 µs",
        "cpu_s_per_gib": "CPU s/GiB", "hwm_mib": "VmHWM MiB"}


def fmt(v, metric):
    if v is None:
        return "–"
    if metric == "iops":
        return f"{v / 1000:.1f}k"
    if metric in ("p50_us", "p99_us"):
        return f"{v:.0f}" if v >= 100 else f"{v:.1f}"
    if metric == "cpu_s_per_gib":
        return f"{v:.2f}"
    return f"{v:.0f}"


class Table:
    def __init__(self, raw):
        self.raw = raw
        self.cells = {}
        for r in raw["records"]:
            for m in ("iops", "mibs", "p50_us", "p99_us", "cpu_s_per_gib", "hwm_mib"):
                if m in r:
                    self.cells.setdefault((r["job"], r["transport"], r["server"], m), []).append(r[m])
        self.servers = [s for s in SERVERS if any(k[2] == s for k in self.cells)]
        self.transports = [t for t in TRANSPORTS if any(k[1] == t for k in self.cells)]
        self.jobs = [j for j in JOB_ORDER if any(k[0] == j for k in self.cells)]

    def med(self, job, tr, sv, m):
        v = self.cells.get((job, tr, sv, m))
        return statistics.median(v) if v else None

    def cell(self, job, tr, sv, m):
        v = self.cells.get((job, tr, sv, m))
        if not v:
            return "–"
        s = fmt(statistics.median(v), m)
        if len(v) > 1:
            s += f" [{fmt(min(v), m)}–{fmt(max(v), m)}]"
        return s

    def best_peer(self, job, tr, m, higher, sv=None):
        peers = LIKE[sv] if sv in ONLY_LIKE else PEERS
        vals = [(self.med(job, tr, p, m), p) for p in peers]
        vals = [(v, p) for v, p in vals if v is not None]
        if not vals:
            return None, None
        return (max if higher else min)(vals)

    def ratio(self, job, tr, sv, m, higher):
        b = self.med(job, tr, sv, m)
        if m == "hwm_mib":
            # RSS of a memory-backed server is mostly the disk it holds:
            # compare like with like (blockwire-mem with nbdkit-mem,
            # blockwire-file with qemu-nbd on the same file).
            vals = [v for v in (self.med(job, tr, p, m) for p in LIKE[sv]) if v]
            best = min(vals) if vals else None
        else:
            best, _ = self.best_peer(job, tr, m, higher, sv)
        if not b or not best:
            return None
        return b / best if higher else best / b

    def rows(self, spec):
        """(label, job, transport, metric, higher) for the rows present."""
        for job, m, higher in spec:
            if job not in self.jobs:
                continue
            for tr in self.transports:
                yield f"{job} {tr} {UNIT[m]}", job, tr, m, higher

    def cost_spec(self):
        return [(j, m, False) for m in ("cpu_s_per_gib", "hwm_mib") for j in self.jobs]

    def markdown_table(self, spec):
        bws = [b for b in BLOCKWIRE if b in self.servers]
        head = ["row"] + self.servers + [f"{b} / best peer" for b in bws]
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, job, tr, m, higher in self.rows(spec):
            cols = [label] + [self.cell(job, tr, s, m) for s in self.servers]
            for b in bws:
                r = self.ratio(job, tr, b, m, higher)
                cols.append("–" if r is None else (f"**{r:.2f}**" if r >= 1 else f"{r:.2f}"))
            out.append("| " + " | ".join(cols) + " |")
        return "\n".join(out)


def loopback(raw):
    by = {}
    for r in raw["loopback"]:
        by.setdefault(r["transport"], []).append(r["mibs"])
    return {t: statistics.median(v) for t, v in by.items()}, by


def goals(t, raw):
    """Issue 18's goals, row by row, for each blockwire export."""
    lb, _ = loopback(raw)
    lines = []

    def verdict(bad, seen):
        # A goal no row measured (no peer in the run) is not met by default.
        if not seen:
            return "not measured (no peer in this run)"
        return "met" if not bad else "**not met** (" + ", ".join(bad) + ")"

    four_k = ("randread-4k-qd1", "randread-4k-qd32", "randwrite-4k-qd32")
    for b in [b for b in BLOCKWIRE if b in t.servers]:
        lines.append(f"\n**{b}**\n")
        bad, bad32 = [], []
        seen = seen32 = 0
        for label, job, tr, m, hi in t.rows(PERF_ROWS):
            if m not in ("iops", "mibs"):
                continue
            r = t.ratio(job, tr, b, m, hi)
            if r is None:
                continue
            seen += 1
            seen32 += job.endswith("qd32")
            if r < 1.1:
                bad.append(f"{job} {tr} {r:.2f}")
            if job.endswith("qd32") and r < 1.3:
                bad32.append(f"{job} {tr} {r:.2f}")
        lines.append("- every row ≥ 1.1× the best peer: " + verdict(bad, seen))
        lines.append("- 4 KiB QD32 rows ≥ 1.3×: " + verdict(bad32, seen32))
        bad, seen = [], 0
        for tr in t.transports:
            for job in t.jobs:
                r = t.ratio(job, tr, b, "cpu_s_per_gib", False)
                need = 2 if job in four_k else 1
                seen += r is not None
                if r is not None and r < need:
                    bad.append(f"{job} {tr} {r:.2f}")
        lines.append("- CPU s/GiB ≤ ½ the best peer's on 4 KiB rows, ≤ the best peer's "
                     "elsewhere (ratio ≥ 2 / ≥ 1): " + verdict(bad, seen))
        bad, seen = [], 0
        for tr in t.transports:
            for job in t.jobs:
                r = t.ratio(job, tr, b, "hwm_mib", False)
                seen += r is not None
                if r is not None and r < 1:
                    bad.append(f"{job} {tr} {r:.2f}")
        lines.append(f"- VmHWM ≤ the lightest of {', '.join(LIKE[b])} on every row: "
                     + verdict(bad, seen))
        parts = []
        for job in ("read-1m-qd8", "write-1m-qd8"):
            for tr in t.transports:
                v = t.med(job, tr, b, "mibs")
                if v and lb.get(tr):
                    parts.append(f"{job} {tr} {v / lb[tr]:.0%}")
        if parts:
            lines.append("- 1 MiB sequential, share of the loopback limit: " + ", ".join(parts))
    return "\n".join(lines)


def before_after(t):
    """blockwire against its --base-bin build, row by row (> 1: now ahead)."""
    pairs = [(b, base) for b, base in BASE.items() if b in t.servers and base in t.servers]
    if not pairs:
        return ""
    head = ["row"] + [f"{b} now / before" for b, _ in pairs]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    spec = PERF_ROWS + t.cost_spec()
    worse = 0
    n = 0
    for label, job, tr, m, hi in t.rows(spec):
        cols = [label]
        for b, base in pairs:
            now, was = t.med(job, tr, b, m), t.med(job, tr, base, m)
            if not now or not was:
                cols.append("–")
                continue
            r = now / was if hi else was / now
            n += 1
            worse += r < 0.9
            cols.append(f"**{r:.2f}**" if r >= 1 else f"{r:.2f}")
        out.append("| " + " | ".join(cols) + " |")
    out.append("")
    out.append(f"{worse} of {n} cells more than 10% behind the earlier build.")
    return "\n".join(out)


def plot(t, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: no plot", file=sys.stderr)
        return False
    rows = list(t.rows(PERF_ROWS)) + list(t.rows(t.cost_spec()))
    bws = [b for b in BLOCKWIRE if b in t.servers]
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.5))
    h = 0.8 / max(len(bws), 1)
    colors = {"blockwire-mem": "#1f77b4", "blockwire-file": "#ff7f0e",
              "blockwire-qcow2": "#2ca02c"}
    labels = [r[0] for r in rows]
    for i, b in enumerate(bws):
        ys = [n + (i - (len(bws) - 1) / 2) * h for n in range(len(rows))]
        xs = [t.ratio(job, tr, b, m, hi) or 0 for _, job, tr, m, hi in rows]
        ax.barh(ys, xs, height=h, color=colors.get(b), label=f"{b} vs best peer")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.axvline(1.3, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    from matplotlib.ticker import FixedLocator, NullLocator
    ticks = [0.1, 0.25, 0.5, 0.75, 1, 1.3, 2, 3, 5, 10]
    lo, hi = ax.get_xlim()
    ticks = [x for x in ticks if lo <= x <= hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{x:g}" for x in ticks])
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio to best peer (VmHWM: to the like-backed peer); > 1: blockwire ahead; "
                  "log scale; dashed: 1.3", fontsize=8)
    m = t.raw["machine"]
    ax.set_title(f"blockwire vs qemu-nbd / nbdkit — {m['seconds']} s × {m['reps']} reps, "
                 f"{m['nproc']} CPUs", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def write(raw, md_path, png_path, extra=""):
    t = Table(raw)
    m = raw["machine"]
    lb, lb_all = loopback(raw)
    has_plot = plot(t, png_path)
    s = [f"# blockwire vs qemu-nbd and nbdkit — {md_path.stem}", ""]
    s.append(f"`benches/peers --seconds {m['seconds']} --reps {m['reps']}`: every job runs "
             f"{m['seconds']} s (fio, time_based) against a fresh server; repetitions are "
             "interleaved (repetition loop outside, server loop inside, server order rotated). "
             "Cells are medians with the min–max spread over repetitions. Ratios: blockwire "
             "against the best of nbdkit and qemu-nbd on that row, > 1 means blockwire is "
             "ahead (bold).")
    s.append("")
    s.append("Servers: `blockwire serve --memory 1G`; `nbdkit memory 1G`; `nbdkit file` "
             "(plugin defaults) and `qemu-nbd -f raw -t "
             "--shared=8 --cache=writeback --aio=threads` on a 1 GiB file in /dev/shm; "
             "`blockwire serve` on that same file; `qemu-nbd -f qcow2` (same options) and "
             "`blockwire serve` on one qcow2 image `qemu-img convert` made from the same "
             "random data (blockwire-qcow2 is compared with qemu-nbd-qcow2 only). Read jobs on the memory servers are "
             "pre-filled with 1 GiB of random data (nbdcopy) first; the file holds random "
             "data from the start. fio: `--ioengine=nbd`, one job, latency = `clat_ns` "
             "percentiles. nbdcopy: default options, 1 GiB server → `null:` and a 1 GiB "
             "random file → server.")
    if m.get("note"):
        s += ["", m["note"]]
    if has_plot:
        s += ["", f"![ratios]({png_path.name})"]
    s += ["", "## Throughput and latency", "", t.markdown_table(PERF_ROWS)]
    s += ["", "## Server cost", "",
          "CPU: the server's utime + stime during the job over the GiB moved. VmHWM: the "
          "server's peak RSS during the job (reset after the pre-fill through "
          "`/proc/PID/clear_refs`). For the memory-backed servers the RSS includes the disk "
          "contents they hold, so compare blockwire-mem with nbdkit-mem and blockwire-file "
          "with the file-backed peers for what the server itself costs: the VmHWM ratios do "
          "exactly that (blockwire-mem against nbdkit-mem, blockwire-file against the "
          "lighter of nbdkit file and qemu-nbd).", "",
          t.markdown_table(t.cost_spec())]
    s += ["", "## Loopback baseline", "",
          "One process sending 1 MiB `sendall` calls, one receiving with 1 MiB `recv_into`, "
          "4 GiB per run, default socket buffers:", ""]
    for tr, v in lb.items():
        spread = lb_all[tr]
        s.append(f"- {tr}: {v:.0f} MiB/s" + (f" [{min(spread):.0f}–{max(spread):.0f}]"
                                             if len(spread) > 1 else ""))
    s += ["", "## Goals (issue 18)", goals(t, raw)]
    ba = before_after(t)
    if ba:
        s += ["", "## Against the earlier build", "",
              f"`--base-bin {m.get('base_bin')}`: the same memory and file exports served by "
              "that build, interleaved with the rest. Ratios > 1: this build ahead.", "", ba]
    if raw.get("criterion"):
        s += ["", "## Core codec (criterion, quick settings)", "",
              "`cargo bench -p blockwire-core --bench codec -- --warm-up-time 1 "
              "--measurement-time 3`:", ""]
        for k, (ns, pm) in raw["criterion"].items():
            s.append(f"- {k}: {ns:.0f} ns/iter (± {pm:.0f})")
    s += ["", "## Machine", ""]
    for k in ("nproc", "cpu", "kernel", "blockwire", "qemu-nbd", "nbdkit", "fio", "nbdcopy"):
        s.append(f"- {k}: {m.get(k)}")
    s.append(f"- 1-min load average: {m.get('load_before', 0):.2f} before, "
             f"{m.get('load_after', 0):.2f} after; {m.get('elapsed_s', 0)} s for the matrix")
    if extra:
        s += ["", extra]
    md_path.write_text("\n".join(s) + "\n")


if __name__ == "__main__":
    p = Path(sys.argv[1])
    raw = json.loads(p.read_text())
    extra_path = p.with_suffix(".notes.md")
    extra = extra_path.read_text() if extra_path.exists() else ""
    write(raw, p.with_suffix(".md"), p.with_suffix(".png"), extra)
