#!/usr/bin/env python3
"""Open N NBD connections to HOST:PORT at once and classify each.

With --ports K they are spread round-robin over PORT .. PORT+K-1: QEMU's
user network accepts each forwarded port with a listen backlog of one, so
the host kernel holds at most two pending connections per port and makes
the others retry their SYN after 1, 3, 7... s. Several forwards to the
same guest port let a burst reach the guest at once; each connection
binds its own source port first, since behind the forwards they all
share one guest address and port (see attempt()).

Every connection is opened before any is read from, so all N are in the
server's hands together. Each then runs the fixed-newstyle handshake
(NBD_OPT_GO on the default export), one 4 KiB read, and NBD_CMD_DISC.

  served   greeting, GO acknowledged, read answered
  refused  no greeting byte at all: connection refused, or reset/closed
           before the server said anything (under QEMU's user network a
           guest's refusal reaches the host as an accepted connection
           that closes at once)
  cut      closed or reset after the server started the greeting: the
           failure this tool exists to catch

Prints one line `served=S refused=R cut=C` and exits 1 if any was cut,
if fewer than --min-served were served, or if a connection is still
unresolved after --timeout seconds (no read blocks past that deadline).

With --die-mid-write, each served connection is held after GO instead.
Once every connection is resolved and at least --min-served were served,
each held one sends a 1 MiB write request with only part of its payload
and the process kills itself (SIGKILL): clients that vanish mid-transfer,
for checking that the server frees their slots. With fewer served, the
held ones end cleanly (NBD_CMD_DISC) and nothing is written. With
--wait-free SECS the whole attempt is then made again, every 0.5 s for up
to SECS: a slot listens again only once the server has seen its last
client's close, and the caller's own probes may have closed just before,
so a refusal then is the server being right, not a precondition met. A
cut connection is never retried.
"""
import argparse
import os
import signal
import selectors
import socket
import struct
import sys
import time

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
OPT_GO = 7
REP_ACK = 1
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2
DIE_MID_WRITE = False
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.got_any = False
        self.state = "greeting"
        self.result = None

    def need(self, n):
        if len(self.buf) < n:
            return None
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def step(self):
        """Advance on buffered input; returns True once finished."""
        while True:
            if self.state == "greeting":
                g = self.need(18)
                if g is None:
                    return False
                if g[:8] != NBDMAGIC or struct.unpack(">Q", g[8:16])[0] != IHAVEOPT:
                    self.result = "cut"
                    return True
                flags = struct.unpack(">H", g[16:18])[0]
                cflags = FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES)
                data = struct.pack(">IH", 0, 0)  # empty name, no info requests
                self.sock.sendall(
                    struct.pack(">I", cflags) + struct.pack(">QII", IHAVEOPT, OPT_GO, len(data)) + data
                )
                self.state = "options"
            elif self.state == "options":
                h = self.need(20)
                if h is None:
                    return False
                magic, opt, rtype, length = struct.unpack(">QIII", h)
                if magic != OPT_REPLY_MAGIC or opt != OPT_GO:
                    self.result = "cut"
                    return True
                self.skip = length
                self.rtype = rtype
                self.state = "option-data"
            elif self.state == "option-data":
                if self.need(self.skip) is None:
                    return False
                if self.rtype == REP_ACK and DIE_MID_WRITE:
                    self.result = "served"
                    self.state = "held"
                    return True
                if self.rtype == REP_ACK:
                    self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 1, 0, 4096))
                    self.state = "reply"
                elif self.rtype & 0x80000000:
                    self.result = "cut"  # an error reply to GO: not served
                    return True
                else:
                    self.state = "options"
            elif self.state == "held":
                return False
            elif self.state == "reply":
                r = self.need(16 + 4096)
                if r is None:
                    return False
                magic, err, cookie = struct.unpack(">IIQ", r[:16])
                if magic != SIMPLE_REPLY_MAGIC or err != 0 or cookie != 1:
                    self.result = "cut"
                    return True
                self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 2, 0, 0))
                self.result = "served"
                return True


def attempt(a):
    """One burst; returns (results, unresolved), or dies as --die-mid-write says."""
    deadline = time.monotonic() + a.timeout
    conns = []
    results = {"served": 0, "refused": 0, "cut": 0}
    for i in range(a.n):
        s = socket.socket()
        # An exclusive source port: connect() alone may give two sockets
        # the same one when their destination ports differ, and QEMU's
        # user network maps every forward to the guest's one port, keeping
        # the source port: two such connections are one TCP connection to
        # the guest, and the second's SYN lands in the first (it hangs
        # unanswered until slirp gives up, 75 s on). bind() to port 0
        # never hands out a port another socket holds (on any local
        # address: HOST is the server's, which may not be ours).
        s.bind(("", 0))
        s.setblocking(False)
        s.connect_ex((a.host, a.port + i % a.ports))
        conns.append(Conn(s))
    ports = [c.sock.getsockname()[1] for c in conns]
    if len(set(ports)) != len(ports):
        sys.exit(f"burst.py: two connections share a source port: {sorted(ports)}")
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
    pending = len(conns)
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
            c = key.data
            try:
                data = c.sock.recv(65536)
            except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, TimeoutError):
                data = None
            except BlockingIOError:
                continue
            done = False
            if data:
                c.got_any = True
                c.buf += data
                try:
                    done = c.step()
                except OSError:
                    c.result, done = ("cut" if c.got_any else "refused"), True
            else:
                c.result = "cut" if c.got_any else "refused"
                done = True
            if done:
                results[c.result] += 1
                sel.unregister(c.sock)
                if c.state != "held":
                    c.sock.close()
                pending -= 1
    for i, c in enumerate(conns):
        if c.result is None:
            # Say where it hangs: a TCP connect the host never completed
            # (the forwarder's accept queue), or a connection waiting for
            # the server's first byte.
            try:
                c.sock.getpeername()
                where = f"connected, {len(c.buf)} bytes, state {c.state}"
            except OSError:
                where = "TCP connect not completed"
            print(f"unresolved: connection {i} (port {a.port + i % a.ports}): {where}", flush=True)
    held = [c for c in conns if c.state == "held"]
    if DIE_MID_WRITE and not pending and not results["cut"] and results["served"] >= a.min_served:
        for c in held:
            c.sock.setblocking(True)
            c.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 1, 0, 1 << 20))
            c.sock.sendall(b"\xa5" * (100 << 10))
        # The kernel closes the sockets for us, as for a crashed client:
        # with the server's unread replies pending, possibly with a reset.
        print(f"dying with {results['served']} writes half-sent", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    for c in held:
        # Too few served to die: leave cleanly, so the slots free at once.
        try:
            c.sock.setblocking(True)
            c.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 2, 0, 0))
        except OSError:
            pass
        c.sock.close()
    return results, pending


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--ports", type=int, default=1)
    ap.add_argument("--min-served", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--die-mid-write", action="store_true")
    ap.add_argument("--wait-free", type=float, default=0, metavar="SECS")
    a = ap.parse_args()
    global DIE_MID_WRITE
    DIE_MID_WRITE = a.die_mid_write
    until = time.monotonic() + a.wait_free
    while True:
        results, pending = attempt(a)
        line = f"served={results['served']} refused={results['refused']} cut={results['cut']} unresolved={pending}"
        busy = DIE_MID_WRITE and not pending and not results["cut"]
        if not busy or time.monotonic() >= until:
            break
        print(f"{line}: fewer than {a.min_served} slots free; again", flush=True)
        time.sleep(0.5)
    print(line)
    bad = results["cut"] or pending or results["served"] < a.min_served
    sys.exit(1 if bad else 0)


main()
