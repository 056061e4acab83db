#!/usr/bin/env python3
"""Log both directions of NBD connections: listen on a Unix socket, forward
each connection to an upstream Unix socket, and write the bytes of connection
N to OUTDIR/N.c2s and OUTDIR/N.s2c. Used to record fuzz seeds from real
clients (qemu-img, nbdinfo, nbdcopy) and servers (qemu-nbd, nbdkit).

usage: capture.py LISTEN_PATH UPSTREAM_PATH OUTDIR
"""
import os
import socket
import sys
import threading


def pump(src, dst, log):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            log.write(b)
            log.flush()
            dst.sendall(b)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main():
    listen, upstream, outdir = sys.argv[1:4]
    os.makedirs(outdir, exist_ok=True)
    if os.path.exists(listen):
        os.unlink(listen)
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(listen)
    srv.listen(8)
    n = 0
    while True:
        c, _ = srv.accept()
        u = socket.socket(socket.AF_UNIX)
        u.connect(upstream)
        base = os.path.join(outdir, str(n))
        n += 1
        a = open(base + ".c2s", "wb")
        b = open(base + ".s2c", "wb")
        threading.Thread(target=pump, args=(c, u, a), daemon=True).start()
        threading.Thread(target=pump, args=(u, c, b), daemon=True).start()


main()
