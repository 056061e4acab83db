#!/usr/bin/env bash
# Boot from a network disk: the microvm image built with `--features
# netboot` connects as an NBD client to a server on the host (QEMU's user
# network shows the host as 10.0.2.2), reads the stage-2 test kernel (an
# ELF stored at the start of the disk), loads it and jumps to it; stage 2
# prints "booted from nbd" and exits QEMU with status 33.
#
# The host server is blockwire (BLOCKWIRE_BIN, default the workspace's
# release build); with NETBOOT_SERVER=qemu-nbd, qemu-nbd instead.
set -euo pipefail
cd "$(dirname "$0")"

PORT=${PORT:-10829}
root=$(cd ../.. && pwd)
BLOCKWIRE_BIN=${BLOCKWIRE_BIN:-$root/target/release/blockwire}

cargo build --release --quiet --features netboot --target-dir target/netboot
elf="$PWD/target/netboot/x86_64-unknown-none/release/blockwire-microvm"
(cd stage2 && cargo build --release --quiet)
stage2="$PWD/stage2/target/x86_64-unknown-none/release/blockwire-stage2"
qemu=$(scripts/qemu-system.sh)
qroot=$(dirname "$(dirname "$(dirname "$qemu")")")

work=$(mktemp -d)
spid=
cleanup() {
  if [ -n "$spid" ]; then kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# The disk: the stage-2 ELF at offset 0, padded to 1 MiB.
cp "$stage2" "$work/disk.img"
truncate -s 1M "$work/disk.img"

if [ "${NETBOOT_SERVER:-blockwire}" = qemu-nbd ]; then
  qemu-nbd -f raw -t -r -b 127.0.0.1 -p "$PORT" "$work/disk.img" &
else
  [ -x "$BLOCKWIRE_BIN" ] || (cd "$root" && cargo build --release -p blockwire --quiet)
  "$BLOCKWIRE_BIN" serve "$work/disk.img" --listen "tcp:127.0.0.1:$PORT" &
fi
spid=$!
for _ in $(seq 100); do
  nbdinfo --size "nbd://127.0.0.1:$PORT" >/dev/null 2>&1 && break
  sleep 0.05
done

echo "== booting the netboot image ($(stat -c %s "$elf") bytes) against 10.0.2.2:$PORT"
status=0
timeout 60 "$qemu" -L "$qroot/share/qemu" -M microvm -accel tcg -m 128M \
  -nodefaults -no-user-config -nographic -no-reboot \
  -serial stdio -kernel "$elf" -append "server=10.0.2.2:$PORT" \
  -netdev user,id=n0 -device virtio-net-device,netdev=n0 \
  -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
  </dev/null >"$work/console" 2>&1 || status=$?
cat "$work/console"
grep -q "booted from nbd" "$work/console" || { echo "FAIL: stage 2 did not run" >&2; exit 1; }
# Stage 2 writes 0x10 to isa-debug-exit: (0x10 << 1) | 1 = 33.
[ "$status" = 33 ] || { echo "FAIL: QEMU exit status $status, expected 33" >&2; exit 1; }
echo "netboot: OK"
