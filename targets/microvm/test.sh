#!/usr/bin/env bash
# Boots the blockwire-microvm unikernel under QEMU (microvm machine, TCG,
# user networking with a host port forwarded to the guest's 10809), then
# checks it with nbdinfo, a qemu-io write-then-read-back and an nbdcopy
# round trip, and powers it off through isa-debug-exit. Prints the image
# size, boot-to-first-greeting time and nbdcopy throughput.
# No root needed (except to install QEMU's libraries the first time).
set -euo pipefail
cd "$(dirname "$0")"

PORT=${PORT:-10819}
MEM=${MEM:-256M}
SIZE=${SIZE:-64M}
URI="nbd://127.0.0.1:$PORT"

cargo build --release --quiet
elf="$PWD/target/x86_64-unknown-none/release/blockwire-microvm"
qemu=$(scripts/qemu-system.sh)
qroot=$(dirname "$(dirname "$(dirname "$qemu")")")

work=$(mktemp -d)
qpid=
cleanup() {
  if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then kill "$qpid"; fi
  exec 3>&- 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; cat "$work/console" >&2; exit 1; }

echo "== image: $(stat -c %s "$elf") bytes ($(size -A "$elf" | awk '/^\.(text|rodata|data)/ { s += $2 } END { print s }') loaded)"

# The console's input is a FIFO so the test can type `q` to power off.
mkfifo "$work/in"
start=$(date +%s%N)
"$qemu" -L "$qroot/share/qemu" -M microvm -accel tcg -m "$MEM" \
  -nodefaults -no-user-config -nographic -no-reboot \
  -serial stdio -kernel "$elf" -append "ip=10.0.2.15/24 port=10809 size=$SIZE" \
  -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$PORT-:10809" \
  -device virtio-net-device,netdev=n0 \
  -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
  <"$work/in" >"$work/console" 2>&1 &
qpid=$!
exec 3>"$work/in"

ms=$(python3 scripts/wait_greeting.py 127.0.0.1 "$PORT" "$start" 20) || fail "no NBD greeting within 20 s"
echo "== boot to first NBD greeting: $ms ms (QEMU start included)"

echo "== nbdinfo"
nbdinfo "$URI" | tee "$work/info"
grep -q "export-size: $((64 << 20))" "$work/info" || [ "$SIZE" != 64M ] || fail "export size"
grep -q "base:allocation" "$work/info" || fail "base:allocation"

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

echo "== power off through isa-debug-exit"
echo q >&3
status=0
wait "$qpid" || status=$?
qpid=
cat "$work/console"
# isa-debug-exit: QEMU exits with (code << 1) | 1; the kernel writes 0.
[ "$status" = 1 ] || fail "QEMU exit status $status, expected 1"
echo "microvm: OK"
