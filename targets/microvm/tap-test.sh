#!/usr/bin/env bash
# Boots the blockwire-microvm unikernel on a TAP device in a private
# network namespace (bwvm-test-PID), where no user-mode network stands
# between the host's SYN and the guest: measures power-on to the first
# accepted connection (host clock, from QEMU's start, and guest clock, from
# the vCPU's reset), then runs a `nbdcopy --connections=4` round trip,
# bursts of 16 connections at once (each served or refused with a plain
# reset, none cut after the greeting) and clients killed mid-write, whose
# slots must all be free again within the reaping bound.
# Needs root (namespace, TAP). The user-network path is test.sh.
set -euo pipefail
cd "$(dirname "$0")"

NS="bwvm-test-$$"
TAP=bwvm0
HOST_IP=10.214.0.1
GUEST_IP=10.214.0.2
# QEMU's default virtio-net MAC, given explicitly: the namespace gets a
# static neighbour entry for it, so the first SYN needs no ARP round.
MAC=52:54:00:12:34:56
MEM=${MEM:-256M}
CONNS=${CONNS:-8}
REAP_S=${REAP_S:-25}
URI="nbd://$GUEST_IP"

if [ "$(id -u)" != 0 ]; then
  echo "tap-test.sh: needs root (network namespace, TAP device)" >&2
  exit 1
fi

cargo build --release --quiet
elf="$PWD/target/x86_64-unknown-none/release/blockwire-microvm"
qemu=$(scripts/qemu-system.sh)
qroot=$(dirname "$(dirname "$(dirname "$qemu")")")

work=$(mktemp -d)
qpid=
cleanup() {
  ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true
  [ -n "$qpid" ] && wait "$qpid" 2>/dev/null || true
  exec 3>&- 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; cat "$work/console" >&2; exit 1; }
in_ns() { ip netns exec "$NS" "$@"; }

ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" tuntap add dev "$TAP" mode tap
ip -n "$NS" addr add "$HOST_IP/24" dev "$TAP"
ip -n "$NS" link set "$TAP" up
ip -n "$NS" neigh replace "$GUEST_IP" lladdr "$MAC" dev "$TAP" nud permanent

# The prober runs before QEMU starts, so the measurement holds no Python
# start-up (hundreds of ms on a loaded host). A 20 ms connect timeout: a SYN
# sent before the guest's NIC is up is lost (no reset), and a fresh one
# follows at once.
in_ns python3 scripts/wait_greeting.py "$GUEST_IP" 10809 0 30 0.02 "$work/probing" >"$work/greet" &
probe=$!
for _ in $(seq 200); do [ -e "$work/probing" ] && break; sleep 0.05; done
[ -e "$work/probing" ] || fail "the prober did not start"

mkfifo "$work/in"
start=$(date +%s%N)
in_ns "$qemu" -L "$qroot/share/qemu" -M microvm -accel tcg -m "$MEM" \
  -nodefaults -no-user-config -nographic -no-reboot \
  -serial stdio -kernel "$elf" -append "ip=$GUEST_IP/24 port=10809 size=64M conns=$CONNS" \
  -netdev "tap,id=n0,ifname=$TAP,script=no,downscript=no" \
  -device "virtio-net-device,netdev=n0,mac=$MAC" \
  -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
  <"$work/in" >"$work/console" 2>&1 &
qpid=$!
exec 3>"$work/in"

wait "$probe" || fail "no NBD greeting within 30 s"
ms=$(awk -v g="$(cat "$work/greet")" -v s="$start" 'BEGIN { printf "%.1f", (g - s) / 1e6 }')
echo "== TAP: QEMU start to first NBD greeting: $ms ms (host clock)"
for _ in $(seq 100); do grep -q "first connection" "$work/console" && break; sleep 0.05; done
grep -o "first connection .*" "$work/console" | sed 's/^/== TAP: /'

echo "== nbdcopy --connections=4 round trip"
head -c $((16 << 20)) /dev/urandom >"$work/rand"
in_ns nbdcopy --connections=4 --threads=4 "$work/rand" "$URI" || fail "nbdcopy in"
in_ns nbdcopy --connections=4 --threads=4 "$URI" "$work/back" || fail "nbdcopy out"
cmp -n $((16 << 20)) "$work/rand" "$work/back" || fail "round trip"
in_ns qemu-img compare -q -f raw -F raw "$work/back" "$URI" || fail "qemu-img compare"

all_slots_free() {
  local until=$(($(date +%s) + REAP_S))
  while :; do
    in_ns python3 scripts/burst.py "$GUEST_IP" 10809 -n "$CONNS" --min-served "$CONNS" --timeout 10 >"$work/burst" && return 0
    cat "$work/burst"
    grep -q " cut=0 " "$work/burst" || fail "a connection was cut after the greeting"
    [ "$(date +%s)" -lt "$until" ] || fail "$1: not all $CONNS slots free within ${REAP_S} s"
    sleep 0.5
  done
}

echo "== 16 connections at once (conns=$CONNS): each served or refused before the greeting"
for b in 1 2 3; do
  in_ns python3 scripts/burst.py "$GUEST_IP" 10809 -n 16 --timeout 20 || fail "burst $b"
  all_slots_free "after burst $b"
done

echo "== clients killed mid-write free their slots"
(in_ns python3 scripts/burst.py "$GUEST_IP" 10809 -n "$CONNS" --min-served "$CONNS" --die-mid-write --wait-free "$REAP_S" \
  --timeout 10 >"$work/die" || true) 2>/dev/null
grep -q "dying with $CONNS writes half-sent" "$work/die" || { cat "$work/die"; fail "mid-write clients"; }
all_slots_free "after $CONNS clients died mid-write"

echo "== power off"
echo q >&3
status=0
wait "$qpid" || status=$?
qpid=
cat "$work/console"
[ "$status" = 1 ] || fail "QEMU exit status $status, expected 1"
echo "microvm (TAP): OK"
