# Raw-socket NBD client for hostile-client and extended-header tests of
# `blockwire serve` (used by tests/tests/serve_raw.rs).
#
#   python3 nbd_raw.py CASE ADDR EXPORT
#
# ADDR is unix:/path or tcp:HOST:PORT. Prints OK on success; any failure is
# an exception (non-zero exit). Plain `socket`/`struct`, no libnbd.

import socket
import struct
import sys
import time

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
ERR = 1 << 31
REP_ERR_UNSUP = ERR + 1
REP_ERR_INVALID = ERR + 3
REP_ERR_TOO_BIG = ERR + 9

INFO_EXPORT = 0

REQUEST_MAGIC = 0x25609513
EXT_REQUEST_MAGIC = 0x21E41C71
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
EXT_REPLY_MAGIC = 0x6E8A278C

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
CMD_BLOCK_STATUS = 7
REPLY_FLAG_DONE = 1
CMD_FLAG_FUA = 1 << 0
CMD_FLAG_PAYLOAD_LEN = 1 << 5
RT_NONE, RT_OFFSET_DATA, RT_OFFSET_HOLE = 0, 1, 2
RT_BLOCK_STATUS, RT_BLOCK_STATUS_EXT = 5, 6
RT_ERROR, RT_ERROR_OFFSET = (1 << 15) + 1, (1 << 15) + 2

TIMEOUT = 20.0


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def connect(addr):
    if addr.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        s.connect(addr[len("unix:"):])
    else:
        host, port = addr[len("tcp:"):].rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    s.settimeout(TIMEOUT)
    return s


def recvn(s, n, what="data"):
    buf = b""
    while len(buf) < n:
        try:
            c = s.recv(n - len(buf))
        except socket.timeout:
            raise AssertionError("timed out (%ss) reading %s: got %d of %d bytes" % (TIMEOUT, what, len(buf), n))
        if not c:
            raise AssertionError("server closed the connection reading %s (%d of %d bytes)" % (what, len(buf), n))
        buf += c
    return buf


def greet(s):
    magic, opt, flags = struct.unpack(">QQH", recvn(s, 18, "greeting"))
    check(magic == NBDMAGIC and opt == IHAVEOPT, "bad greeting %x %x" % (magic, opt))
    check(flags & FLAG_FIXED_NEWSTYLE, "server is not fixed-newstyle: flags %x" % flags)
    s.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES)))
    return flags


def send_opt(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)


def recv_rep(s, opt):
    magic, ropt, typ, ln = struct.unpack(">QIII", recvn(s, 20, "option reply header"))
    check(magic == REPLY_MAGIC, "bad option reply magic %x" % magic)
    check(ropt == opt, "reply for option %d, expected %d" % (ropt, opt))
    check(ln <= 65536, "option reply of %d bytes" % ln)
    return typ, recvn(s, ln, "option reply payload")


def expect_closed(s, what):
    """The server must close the connection (bytes before EOF, e.g. an error
    reply, are tolerated). Returns what was received."""
    got = b""
    while True:
        try:
            c = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return got
        except socket.timeout:
            raise AssertionError("%s: server did not close the connection within %ss (got %d bytes)"
                                 % (what, TIMEOUT, len(got)))
        if not c:
            return got
        got += c
        check(len(got) < (1 << 20), what + ": server keeps sending")


def opt_list(s, export):
    send_opt(s, OPT_LIST)
    names = []
    while True:
        typ, data = recv_rep(s, OPT_LIST)
        if typ == REP_ACK:
            break
        check(typ == REP_SERVER, "NBD_OPT_LIST: reply type %x" % typ)
        (n,) = struct.unpack(">I", data[:4])
        names.append(data[4:4 + n].decode())
    check(export in names, "NBD_OPT_LIST: %r not in %r" % (export, names))
    return names


def go(s, export):
    name = export.encode()
    send_opt(s, OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    size = flags = None
    while True:
        typ, data = recv_rep(s, OPT_GO)
        if typ == REP_ACK:
            break
        check(typ == REP_INFO, "NBD_OPT_GO: reply type %x %r" % (typ, data))
        (info,) = struct.unpack(">H", data[:2])
        if info == INFO_EXPORT:
            size, flags = struct.unpack(">QH", data[2:12])
    check(size is not None, "NBD_OPT_GO: no NBD_INFO_EXPORT")
    return size, flags


def abort(s):
    send_opt(s, OPT_ABORT)
    try:
        typ, _ = recv_rep(s, OPT_ABORT)
        check(typ == REP_ACK, "NBD_OPT_ABORT: reply %x" % typ)
    except AssertionError as e:
        if "closed" not in str(e):
            raise
    s.close()


# --- cases ------------------------------------------------------------------

def case_bad_option_magic(addr, export):
    s = connect(addr)
    greet(s)
    s.sendall(struct.pack(">QII", 0x1234567812345678, OPT_LIST, 0))
    expect_closed(s, "bad option magic")


def case_huge_option_length(addr, export):
    s = connect(addr)
    greet(s)
    # Claim 4 GiB - 16 of payload and send none: the server must not try to
    # read (or allocate) it.
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, 0xFFFFFFF0))
    expect_closed(s, "option length 0xFFFFFFF0")


def case_unknown_option_then_list(addr, export):
    s = connect(addr)
    greet(s)
    send_opt(s, 0x4242, b"\xaa" * 100)
    typ, _ = recv_rep(s, 0x4242)
    check(typ == REP_ERR_UNSUP, "unknown option: reply %x, expected NBD_REP_ERR_UNSUP" % typ)
    opt_list(s, export)  # still in sync
    send_opt(s, 0x7FFF, b"")
    typ, _ = recv_rep(s, 0x7FFF)
    check(typ == REP_ERR_UNSUP, "unknown empty option: reply %x" % typ)
    opt_list(s, export)
    abort(s)


def case_go_name_length_overflow(addr, export):
    s = connect(addr)
    greet(s)
    # Name length 0xFFFFFFFF inside a 6-byte option.
    send_opt(s, OPT_GO, struct.pack(">IH", 0xFFFFFFFF, 0))
    typ, _ = recv_rep(s, OPT_GO)
    check(typ == REP_ERR_INVALID, "GO with name length 0xFFFFFFFF: reply %x, expected NBD_REP_ERR_INVALID" % typ)
    opt_list(s, export)  # still in sync
    # A GO whose info count overruns the option.
    name = export.encode()
    send_opt(s, OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 1000))
    typ, _ = recv_rep(s, OPT_GO)
    check(typ == REP_ERR_INVALID, "GO with 1000 infos in 0 bytes: reply %x" % typ)
    opt_list(s, export)
    size, _ = go(s, export)  # and a real GO still works
    check(size > 0, "size %d" % size)
    s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 1, 0, 0))
    s.close()


def case_write_claiming_2g(addr, export):
    s = connect(addr)
    greet(s)
    size, _ = go(s, export)  # no structured replies: simple replies
    s.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 0xC0FFEE, 0, 0x80000000))
    # None of the claimed payload is sent: the server must answer without
    # waiting for it (and unread bytes would turn its close into a TCP RST).
    magic, error, cookie = struct.unpack(">IIQ", recvn(s, 16, "reply to a 2 GiB write"))
    check(magic == SIMPLE_REPLY_MAGIC, "reply magic %x" % magic)
    check(cookie == 0xC0FFEE, "reply cookie %x" % cookie)
    check(error != 0, "a 2 GiB write was answered with success")
    expect_closed(s, "after refusing a 2 GiB write")


def case_extended_headers(addr, export):
    s = connect(addr)
    greet(s)
    send_opt(s, OPT_EXTENDED_HEADERS)
    typ, _ = recv_rep(s, OPT_EXTENDED_HEADERS)
    check(typ == REP_ACK, "NBD_OPT_EXTENDED_HEADERS: reply %x, expected ACK" % typ)
    ctx = b"base:allocation"
    name = export.encode()
    send_opt(s, OPT_SET_META_CONTEXT,
             struct.pack(">I", len(name)) + name + struct.pack(">II", 1, len(ctx)) + ctx)
    ctx_id = None
    while True:
        typ, data = recv_rep(s, OPT_SET_META_CONTEXT)
        if typ == REP_ACK:
            break
        check(typ == REP_META_CONTEXT, "SET_META_CONTEXT: reply %x" % typ)
        (ctx_id,) = struct.unpack(">I", data[:4])
        check(data[4:] == ctx, "context %r" % data[4:])
    check(ctx_id is not None, "base:allocation not selected")
    size, _ = go(s, export)
    check(size >= (4 << 20), "export too small: %d" % size)

    cookie = [100]

    def request(typ, offset, length, payload=b"", flags=0):
        cookie[0] += 1
        s.sendall(struct.pack(">IHHQQQ", EXT_REQUEST_MAGIC, flags, typ, cookie[0], offset, length) + payload)
        return cookie[0]

    def reply(c):
        magic, flags, typ, rc, off, ln = struct.unpack(">IHHQQQ", recvn(s, 32, "extended reply header"))
        check(magic == EXT_REPLY_MAGIC, "reply magic %x (extended headers were negotiated)" % magic)
        check(rc == c, "reply cookie %d, expected %d" % (rc, c))
        check(ln <= (64 << 20), "reply payload %d" % ln)
        return flags, typ, off, recvn(s, ln, "extended reply payload")

    data = bytes((i * 13 + 7) & 0xFF for i in range(256)) * 256  # 64 KiB
    base = 1 << 20
    # With extended headers a write carries NBD_CMD_FLAG_PAYLOAD_LEN (as
    # qemu 10 sends it).
    c = request(CMD_WRITE, base, len(data), data, CMD_FLAG_PAYLOAD_LEN)
    flags, typ, _, payload = reply(c)
    check(typ == RT_NONE and flags & REPLY_FLAG_DONE, "write reply type %d flags %d %r" % (typ, flags, payload))
    c = request(CMD_WRITE, base + 65536, 4096, bytes(4096), CMD_FLAG_PAYLOAD_LEN | CMD_FLAG_FUA)
    flags, typ, _, payload = reply(c)
    check(typ == RT_NONE and flags & REPLY_FLAG_DONE, "FUA write reply type %d flags %d %r" % (typ, flags, payload))
    # qemu 10.0's client sends extended writes WITHOUT PAYLOAD_LEN (a FUA
    # write is flags 0x0001 followed by its data); qemu-nbd accepts them
    # ("noncompliant client ... proceed"), and so must a drop-in server.
    c = request(CMD_WRITE, base + 65536, 4096, bytes(4096), CMD_FLAG_FUA)
    flags, typ, _, payload = reply(c)
    check(typ == RT_NONE and flags & REPLY_FLAG_DONE,
          "write without PAYLOAD_LEN (as qemu 10 sends it): reply type %d flags %d %r" % (typ, flags, payload))

    c = request(CMD_FLUSH, 0, 0)
    flags, typ, _, _ = reply(c)
    check(typ == RT_NONE and flags & REPLY_FLAG_DONE, "flush reply type %d" % typ)

    # Read [base - 64k, base + 128k): hole/zeros, data, zeros.
    want = bytes(65536) + data + bytes(65536)
    got = bytearray(len(want))
    covered = 0
    c = request(CMD_READ, base - 65536, len(want))
    while True:
        flags, typ, _, payload = reply(c)
        if typ == RT_OFFSET_DATA:
            (off,) = struct.unpack(">Q", payload[:8])
            chunk = payload[8:]
            rel = off - (base - 65536)
            check(0 <= rel and rel + len(chunk) <= len(want), "data chunk %d+%d out of range" % (off, len(chunk)))
            got[rel:rel + len(chunk)] = chunk
            covered += len(chunk)
        elif typ == RT_OFFSET_HOLE:
            check(len(payload) in (12, 16), "hole payload %d bytes" % len(payload))
            (off,) = struct.unpack(">Q", payload[:8])
            n = struct.unpack(">I", payload[8:])[0] if len(payload) == 12 else struct.unpack(">Q", payload[8:])[0]
            covered += n
        elif typ == RT_NONE:
            pass
        else:
            raise AssertionError("read reply type %x %r" % (typ, payload[:64]))
        if flags & REPLY_FLAG_DONE:
            break
    check(covered == len(want), "read chunks cover %d of %d bytes" % (covered, len(want)))
    check(bytes(got) == want, "read back different data")

    c = request(CMD_BLOCK_STATUS, 0, 4 << 20)
    seen = 0
    while True:
        flags, typ, _, payload = reply(c)
        if typ == RT_BLOCK_STATUS_EXT:
            cid, count = struct.unpack(">II", payload[:8])
            check(cid == ctx_id, "block status for context %d" % cid)
            check(count >= 1 and len(payload) == 8 + 16 * count, "descriptor count %d, %d bytes" % (count, len(payload)))
            length, _status = struct.unpack(">QQ", payload[8:24])
            check(length > 0, "zero-length extent")
            seen += 1
        elif typ != RT_NONE:
            raise AssertionError("block status reply type %x (extended headers need BLOCK_STATUS_EXT)" % typ)
        if flags & REPLY_FLAG_DONE:
            break
    check(seen == 1, "%d block status chunks" % seen)

    # A compact (non-extended) request header is a protocol error now; we do
    # not send one. Disconnect cleanly.
    request(CMD_DISC, 0, 0)
    s.close()


def main():
    case, addr, export = sys.argv[1], sys.argv[2], sys.argv[3]
    globals()["case_" + case](addr, export)
    print("OK")


if __name__ == "__main__":
    main()
