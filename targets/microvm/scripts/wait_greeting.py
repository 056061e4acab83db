#!/usr/bin/env python3
"""Poll a TCP port until an NBD server greets (b"NBDMAGIC"), then print
the milliseconds since the given start time (ns, from `date +%s%N`).
An optional fifth argument is the connect timeout in seconds (0.5 by
default; on a TAP device, where a SYN the guest is not up for is simply
lost, a short one makes the measurement as fine as the retry interval).
A start time of 0 prints the greeting's absolute time (ns) instead, for a
prober started before the VM; then a sixth argument names a file created
once the probing has begun.

QEMU's user network accepts on the forwarded host port before the guest
listens (and then drops the connection), so only the greeting proves the
guest accepted a connection."""
import socket
import sys
import time

host, port, start_ns, limit_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
connect_s = float(sys.argv[5]) if len(sys.argv) > 5 else 0.5
if len(sys.argv) > 6:
    open(sys.argv[6], "w").close()
deadline = time.time() + limit_s
while time.time() < deadline:
    try:
        with socket.create_connection((host, port), timeout=connect_s) as s:
            # A SYN slirp sent before the guest was up is retried only
            # after ~0.5 s: give up quickly and open a fresh connection.
            s.settimeout(0.05)
            if s.recv(8) == b"NBDMAGIC":
                now = time.time_ns()
                print(now if start_ns == 0 else f"{(now - start_ns) / 1e6:.1f}")
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.002)
sys.exit(1)
