#!/usr/bin/env bash
# End-to-end test of the smoltcp NBD server on a TAP device, with the real
# NBD tools as clients: nbdinfo, nbdcopy in and out, qemu-img compare;
# then ROUNDS reconnect rounds (nbdcopy --connections=4 in and out), three
# bursts of 16 connections at once (each served or refused, none cut off
# after the greeting), and clients killed mid-write, whose slots must all
# be free again within the reaping bound.
#
# Everything lives in a private network namespace (bwtap-test-PID) holding
# the TAP device: 10.213.0.1/24 is the host side, 10.213.0.2 is smoltcp.
# Needs root (namespaces, TAP). Prints nbdcopy throughput both ways.
set -euo pipefail
cd "$(dirname "$0")"

NS="bwtap-test-$$"
TAP=bwtap0
HOST_IP=10.213.0.1
SERVER_IP=10.213.0.2
SIZE_MIB=${SIZE_MIB:-64}
MTU=${MTU:-1500}
URI="nbd://$SERVER_IP"
CONNS=${CONNS:-8}
ROUNDS=${ROUNDS:-5}
# The server's PEER_TIMEOUT + CLOSE_DEADLINE (frontends/smoltcp), plus slack.
REAP_S=${REAP_S:-25}
burst="$PWD/../microvm/scripts/burst.py"

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: needs root (network namespace, TAP device)" >&2
  exit 1
fi
for tool in nbdinfo nbdcopy qemu-img ip python3; do
  command -v "$tool" >/dev/null || { echo "test.sh: $tool missing" >&2; exit 1; }
done

cargo build --release --quiet
bin="$PWD/target/release/blockwire-linux-tap"

work=$(mktemp -d)
pid=
cleanup() {
  # `ip netns exec` may fork: stop whatever runs in our private namespace
  # (only what this script started) before deleting it.
  ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true
  [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

in_ns() { ip netns exec "$NS" "$@"; }

ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" tuntap add dev "$TAP" mode tap
ip -n "$NS" link set "$TAP" mtu "$MTU"
ip -n "$NS" addr add "$HOST_IP/24" dev "$TAP"
ip -n "$NS" link set "$TAP" up

in_ns "$bin" --tap "$TAP" --ip "$SERVER_IP/24" --size "${SIZE_MIB}M" --conns "$CONNS" 2>"$work/server.log" &
pid=$!

# The server answers once the TAP is attached and ARP resolves.
for _ in $(seq 100); do
  in_ns nbdinfo --size "$URI" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
  sleep 0.1
done

fail() { echo "FAIL: $*" >&2; cat "$work/server.log" >&2; exit 1; }

echo "== nbdinfo"
in_ns nbdinfo "$URI" | tee "$work/info"
grep -q "export-size: $((SIZE_MIB << 20))" "$work/info" || fail "export size"
grep -q "can_multi_conn: true" "$work/info" || fail "multi-conn flag"
grep -q "base:allocation" "$work/info" || fail "base:allocation context"
in_ns nbdinfo --map "$URI" | tee "$work/map0"
grep -Eq "^ +0 +$((SIZE_MIB << 20)) +3 +hole,zero" "$work/map0" || fail "fresh disk is one hole"

echo "== patterned image: random data, zero runs, holes"
img="$work/in.raw"
truncate -s "${SIZE_MIB}M" "$img"
# Data at several offsets (one unaligned), a run of explicit zeroes.
for off_kib in 0 1024 4096 10000 40000; do
  head -c $((1 << 20)) /dev/urandom | dd of="$img" bs=1K seek="$off_kib" conv=notrunc status=none
done
printf 'odd bytes at an odd offset' | dd of="$img" bs=1 seek=$((20 << 20 | 12345)) conv=notrunc status=none
dd if=/dev/zero of="$img" bs=1M seek=30 count=2 conv=notrunc status=none

secs() { date +%s.%N; }
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f MiB/s", b / 1048576 / s }'; }

echo "== nbdcopy in, qemu-img compare against the export"
in_ns nbdcopy --flush "$img" "$URI"
in_ns qemu-img compare -f raw -F raw "$img" "$URI" || fail "qemu-img compare (export)"

echo "== nbdcopy out, every byte read (no block status)"
out="$work/out.raw"
in_ns nbdcopy --no-extents "$URI" "$out"
in_ns qemu-img compare -f raw -F raw "$img" "$out" || fail "qemu-img compare (copy out)"

echo "== block status after the copy"
in_ns nbdinfo --map "$URI" | tee "$work/map1"
grep -q "data" "$work/map1" || fail "no data extents after writing"
grep -q "hole" "$work/map1" || fail "no hole extents left (nbdcopy should skip zeroes)"

echo "== sparse copy out through block status"
in_ns nbdcopy "$URI" "$work/out2.raw"
in_ns qemu-img compare -f raw -F raw "$img" "$work/out2.raw" || fail "qemu-img compare (sparse copy)"

echo "== throughput: $SIZE_MIB MiB of random data in and out"
# Random data has no zero runs, so nothing goes out as holes.
head -c $((SIZE_MIB << 20)) /dev/urandom >"$work/rand.raw"
bytes=$((SIZE_MIB << 20))
t0=$(secs)
in_ns nbdcopy --flush "$work/rand.raw" "$URI"
t1=$(secs)
in_ns nbdcopy --no-extents "$URI" "$work/rand.out"
t2=$(secs)
cmp "$work/rand.raw" "$work/rand.out" || fail "random data round trip"
echo "nbdcopy in:  $(rate $bytes "$(echo "$t1 - $t0" | bc)")"
echo "nbdcopy out: $(rate $bytes "$(echo "$t2 - $t1" | bc)")"

# nbdcopy opens at most one connection per thread (by default one per
# core): say both, so it opens four on any machine.
copy4() { in_ns nbdcopy --connections=4 --threads=4 "$@"; }

echo "== $ROUNDS reconnect rounds: nbdcopy x4 in and out, back to back"
head -c $((4 << 20)) /dev/urandom >"$work/r4"
t0=$(secs)
for round in $(seq "$ROUNDS"); do
  printf 'round %08d' "$round" | dd of="$work/r4" bs=1 seek=$((round * 4099)) conv=notrunc status=none
  copy4 "$work/r4" "$URI" || fail "round $round: nbdcopy in"
  rm -f "$work/r4.out"
  copy4 "$URI" "$work/r4.out" || fail "round $round: nbdcopy out"
  cmp -n $((4 << 20)) "$work/r4" "$work/r4.out" || fail "round $round: round trip"
done
echo "rounds: $ROUNDS in $(echo "$(secs) - $t0" | bc) s"

# Every slot listening again; waits at most REAP_S, fails on any cut.
all_slots_free() {
  local until=$(($(date +%s) + REAP_S))
  while :; do
    in_ns python3 "$burst" "$SERVER_IP" 10809 -n "$CONNS" --min-served "$CONNS" --timeout 10 >"$work/burst" && return 0
    cat "$work/burst"
    grep -q " cut=0 " "$work/burst" || fail "a connection was cut after the greeting"
    [ "$(date +%s)" -lt "$until" ] || fail "$1: not all $CONNS slots free within ${REAP_S} s"
    sleep 0.5
  done
}

echo "== 16 connections at once (--conns $CONNS): each served or refused before the greeting"
for b in 1 2 3; do
  in_ns python3 "$burst" "$SERVER_IP" 10809 -n 16 --timeout 20 || fail "burst $b: a connection was cut, or left hanging"
  all_slots_free "after burst $b"
done

echo "== clients killed mid-write free their slots"
# (In a subshell: bash would report the SIGKILL of a foreground job.)
(in_ns python3 "$burst" "$SERVER_IP" 10809 -n "$CONNS" --min-served "$CONNS" --die-mid-write --wait-free "$REAP_S" --timeout 10 \
  >"$work/die" || true) 2>/dev/null
grep -q "dying with $CONNS writes half-sent" "$work/die" || { cat "$work/die"; fail "mid-write clients"; }
all_slots_free "after $CONNS clients died mid-write"

echo "== server stats"
grep "busy" "$work/server.log" | tail -n 1
ip netns pids "$NS" | xargs -r kill; wait "$pid" 2>/dev/null || true; pid=
echo "linux-tap: OK"
