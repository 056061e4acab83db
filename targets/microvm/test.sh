#!/usr/bin/env bash
# Boots the blockwire-microvm unikernel under QEMU (microvm machine, TCG,
# user networking with a host port forwarded to the guest's 10809), then
# checks it with nbdinfo, a qemu-io write-then-read-back and an nbdcopy
# round trip; then ROUNDS rounds of {nbdinfo, qemu-io write + read back,
# nbdcopy --connections=4 in and out, qemu-img compare} back to back; then
# 16 connections at once (each served or refused before the greeting,
# none cut off after it); then clients killed mid-write, whose slots must
# all be free again within the reaping bound. Powers off through
# isa-debug-exit. Prints the image size, boot-to-first-greeting time,
# nbdcopy throughput and the time per round.
# No root needed (except to install QEMU's libraries the first time).
set -euo pipefail
cd "$(dirname "$0")"

PORT=${PORT:-10819}
MEM=${MEM:-256M}
SIZE=${SIZE:-64M}
CONNS=${CONNS:-8}
# Host ports PORT .. PORT+FWDS-1 all forward to the guest's 10809; see
# scripts/burst.py for why one is not enough for a burst.
FWDS=8
ROUNDS=${ROUNDS:-20}
# The server's PEER_TIMEOUT + CLOSE_DEADLINE (frontends/smoltcp), plus
# slack: no dead client may hold a slot longer.
REAP_S=${REAP_S:-25}
URI="nbd://127.0.0.1:$PORT"

cargo build --release --quiet
elf="$PWD/target/x86_64-unknown-none/release/blockwire-microvm"
qemu=$(scripts/qemu-system.sh)
qroot=$(dirname "$(dirname "$(dirname "$qemu")")")

work=$(mktemp -d)
qpid=
probe=
cleanup() {
  if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then kill "$qpid"; fi
  if [ -n "$probe" ] && kill -0 "$probe" 2>/dev/null; then kill "$probe"; fi
  exec 3>&- 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; cat "$work/console" >&2; exit 1; }

echo "== image: $(stat -c %s "$elf") bytes ($(size -A "$elf" | awk '/^\.(text|rodata|data)/ { s += $2 } END { print s }') loaded)"

# The console's input is a FIFO so the test can type `q` to power off.
# The prober runs before QEMU starts, so the measurement holds no Python
# start-up (hundreds of ms on a loaded host).
python3 scripts/wait_greeting.py 127.0.0.1 "$PORT" 0 30 0.5 "$work/probing" >"$work/greet" &
probe=$!
for _ in $(seq 200); do [ -e "$work/probing" ] && break; sleep 0.05; done
[ -e "$work/probing" ] || fail "the prober did not start"

mkfifo "$work/in"
start=$(date +%s%N)
"$qemu" -L "$qroot/share/qemu" -M microvm -accel tcg -m "$MEM" \
  -nodefaults -no-user-config -nographic -no-reboot \
  -serial stdio -kernel "$elf" -append "ip=10.0.2.15/24 port=10809 size=$SIZE conns=$CONNS" \
  -netdev "user,id=n0$(for i in $(seq 0 $((FWDS - 1))); do printf ',hostfwd=tcp:127.0.0.1:%d-:10809' $((PORT + i)); done)" \
  -device virtio-net-device,netdev=n0 \
  -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
  <"$work/in" >"$work/console" 2>&1 &
qpid=$!
exec 3>"$work/in"

wait "$probe" || fail "no NBD greeting within 30 s"
ms=$(awk -v g="$(cat "$work/greet")" -v s="$start" 'BEGIN { printf "%.1f", (g - s) / 1e6 }')
echo "== boot to first NBD greeting: $ms ms (QEMU start included)"

echo "== nbdinfo"
nbdinfo "$URI" | tee "$work/info"
grep -q "export-size: $((64 << 20))" "$work/info" || [ "$SIZE" != 64M ] || fail "export size"
grep -q "base:allocation" "$work/info" || fail "base:allocation"
# Multi-conn is offered only with enough slots for the clients it invites.
if [ "$CONNS" -ge 4 ]; then want=true; else want=false; fi
grep -q "can_multi_conn: $want" "$work/info" || fail "can_multi_conn should be $want with conns=$CONNS"

echo "== qemu-io: write, then read back"
qemu-io -f raw -c "write -P 0x5a 1000 300000" -c "write -P 0xc3 4M 1M" -c flush "$URI" >"$work/qio" || fail "qemu-io write"
qemu-io -f raw -c "read -P 0x5a 1000 300000" -c "read -P 0xc3 4M 1M" -c "read -P 0 8M 1M" "$URI" >"$work/qio2" \
  || { cat "$work/qio2"; fail "qemu-io read-back"; }
grep -q "Pattern verification failed" "$work/qio2" && { cat "$work/qio2"; fail "pattern mismatch"; }
cat "$work/qio2"

echo "== nbdcopy round trip (16 MiB random at the start of the disk)"
head -c $((16 << 20)) /dev/urandom >"$work/rand"
secs() { date +%s.%N; }
t0=$(secs)
nbdcopy "$work/rand" "$URI"  # the rest of the disk: whatever was there
t1=$(secs)
nbdcopy --no-extents "$URI" "$work/back"
t2=$(secs)
cmp -n $((16 << 20)) "$work/rand" "$work/back" || fail "nbdcopy round trip"
rate() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f MiB/s", b / 1048576 / s }'; }
echo "nbdcopy in:  $(rate $((16 << 20)) "$(echo "$t1 - $t0" | bc)") (16 MiB)"
echo "nbdcopy out: $(rate "$(stat -c %s "$work/back")" "$(echo "$t2 - $t1" | bc)") (whole disk, holes as OFFSET_HOLE)"
qemu-img compare -f raw -F raw "$work/back" "$URI" || fail "qemu-img compare"

# nbdcopy opens at most one connection per thread (by default one per
# core): say both, so it opens four on any machine.
copy4() { nbdcopy --connections=4 --threads=4 "$@"; }

echo "== $ROUNDS rounds back to back: nbdinfo, qemu-io write + read back, nbdcopy x4 in and out, qemu-img compare"
head -c $((4 << 20)) /dev/urandom >"$work/r4"
tr0=$(secs)
for round in $(seq "$ROUNDS"); do
  nbdinfo --size "$URI" >/dev/null || fail "round $round: nbdinfo"
  pat=$(printf '0x%02x' $((round * 7 % 255 + 1)))
  off=$(((8 << 20) + round * 65536))
  qemu-io -f raw -c "write -P $pat $off 65536" "$URI" >/dev/null || fail "round $round: qemu-io write"
  qemu-io -f raw -c "read -P $pat $off 65536" "$URI" >"$work/qio3" || fail "round $round: qemu-io read"
  grep -q "Pattern verification failed" "$work/qio3" && fail "round $round: pattern mismatch"
  # A different 4 MiB at the start of the disk each round.
  printf 'round %08d' "$round" | dd of="$work/r4" bs=1 seek=$((round * 4099)) conv=notrunc status=none
  copy4 "$work/r4" "$URI" || fail "round $round: nbdcopy in"
  rm -f "$work/out"
  copy4 "$URI" "$work/out" || fail "round $round: nbdcopy out"
  cmp -n $((4 << 20)) "$work/r4" "$work/out" || fail "round $round: nbdcopy round trip"
  qemu-img compare -q -f raw -F raw "$work/out" "$URI" || fail "round $round: qemu-img compare"
done
tr1=$(secs)
echo "rounds: $ROUNDS in $(echo "$tr1 - $tr0" | bc) s ($(echo "scale=2; ($tr1 - $tr0) / $ROUNDS" | bc) s each)"

# Every slot listening again; waits at most REAP_S, fails on any cut.
all_slots_free() {
  local until=$(($(date +%s) + REAP_S))
  while :; do
    python3 scripts/burst.py 127.0.0.1 "$PORT" --ports "$FWDS" -n "$CONNS" --min-served "$CONNS" --timeout 10 >"$work/burst" && return 0
    cat "$work/burst"
    grep -q " cut=0 " "$work/burst" || fail "a connection was cut after the greeting"
    [ "$(date +%s)" -lt "$until" ] || fail "$1: not all $CONNS slots free within ${REAP_S} s"
    sleep 0.5
  done
}

echo "== 16 connections at once (conns=$CONNS): each served or refused before the greeting"
# --min-served 0: the burst checks that no connection is cut or left
# hanging. How many it finds free depends on timing: all_slots_free's own
# probes close just before, and their slots listen again only once the
# guest has seen their close (a run found all 16 refused, cleanly). The
# slots themselves are checked by all_slots_free after each burst.
for burst in 1 2 3; do
  python3 scripts/burst.py 127.0.0.1 "$PORT" --ports "$FWDS" -n 16 --min-served 0 --timeout 20 | tee "$work/burst" \
    || fail "burst $burst: a connection was cut, or left hanging"
  all_slots_free "after burst $burst"
done

echo "== clients killed mid-write free their slots"
# --wait-free: all_slots_free's probes closed just before, and a slot
# listens again only once the guest has seen its client leave; until all
# $CONNS are free burst.py takes none and asks again (see its docs).
# (In a subshell: bash would report the SIGKILL of a foreground job.)
(python3 scripts/burst.py 127.0.0.1 "$PORT" --ports "$FWDS" -n "$CONNS" --min-served "$CONNS" \
  --die-mid-write --wait-free "$REAP_S" --timeout 10 >"$work/die" || true) 2>/dev/null
grep -q "dying with $CONNS writes half-sent" "$work/die" || { cat "$work/die"; fail "mid-write clients"; }
t0=$(secs)
all_slots_free "after $CONNS clients died mid-write"
echo "all $CONNS slots served again $(echo "$(secs) - $t0" | bc) s after the kill"
# And a real client killed mid-copy: nbdcopy streaming from a pipe that
# stalls after 8 MiB, so it is certainly mid-transfer when killed.
mkfifo "$work/pipe"
(head -c $((8 << 20)) /dev/urandom; exec sleep 60) >"$work/pipe" &
wpid=$!
copy4 - "$URI" <"$work/pipe" &
cpid=$!
sleep 2
kill -9 "$cpid" 2>/dev/null || fail "nbdcopy from the stalled pipe ended by itself"
wait "$cpid" 2>/dev/null || true
kill "$wpid" 2>/dev/null || true
wait "$wpid" 2>/dev/null || true
all_slots_free "after nbdcopy was killed"

echo "== power off through isa-debug-exit"
echo q >&3
status=0
wait "$qpid" || status=$?
qpid=
cat "$work/console"
# isa-debug-exit: QEMU exits with (code << 1) | 1; the kernel writes 0.
[ "$status" = 1 ] || fail "QEMU exit status $status, expected 1"
echo "microvm: OK"
