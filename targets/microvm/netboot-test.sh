#!/usr/bin/env bash
# Boot from a network disk: the microvm image built with `--features
# netboot` connects as an NBD client to `blockwire serve` on the host
# (QEMU's user network shows the host as 10.0.2.2) and boots what the
# export holds.
#
# Cases, each against its own disk:
# - stage 2 (fast): an ELF at the start of a raw disk; it prints "booted
#   from nbd" and exits QEMU with status 33.
# - Debian: a GPT disk built by scripts/make-boot-disk.sh (sgdisk,
#   mkfs.fat, mtools) from linux-image-cloud-amd64 and busybox-static;
#   Linux reaches the initramfs's /init, which prints the marker and
#   powers off (QEMU status 0).
# - Broken disks (no partition table, no ESP, an ESP without FAT, no
#   entry, an entry naming a missing file, a kernel that is not a
#   bzImage, a kernel larger than RAM): one console line saying what is
#   wrong and QEMU status 9 (firmware exit code 4), never a hang or reset.
#
# The host server is blockwire (BLOCKWIRE_BIN, default the workspace's
# release build); with NETBOOT_SERVER=qemu-nbd, qemu-nbd instead.
# NETBOOT_CASES="stage2 debian ..." runs a subset.
set -euo pipefail
cd "$(dirname "$0")"

PORT=${PORT:-10829}
root=$(cd ../.. && pwd)
BLOCKWIRE_BIN=${BLOCKWIRE_BIN:-$root/target/release/blockwire}
cases=${NETBOOT_CASES:-"stage2 debian no-gpt no-esp not-fat no-entry missing-file not-bzimage too-large"}

for tool in sgdisk mkfs.fat mcopy mmd; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is missing (packages gdisk, dosfstools, mtools)" >&2; exit 1; }
done
cargo build --release --quiet --features netboot --target-dir target/netboot
elf="$PWD/target/netboot/x86_64-unknown-none/release/blockwire-microvm"
(cd stage2 && cargo build --release --quiet)
stage2="$PWD/stage2/target/x86_64-unknown-none/release/blockwire-stage2"
qemu=$(scripts/qemu-system.sh)
qroot=$(dirname "$(dirname "$(dirname "$qemu")")")
[ -x "$BLOCKWIRE_BIN" ] || (cd "$root" && cargo build --release -p blockwire --quiet)

work=$(mktemp -d)
spid=
stop_server() {
  if [ -n "$spid" ]; then kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; fi
  spid=
}
cleanup() {
  stop_server
  rm -rf "$work"
}
trap cleanup EXIT

# boot DISK MEMORY: serve DISK, boot the netboot image against it; the
# console is in $work/console, QEMU's exit status in $status.
boot() {
  if [ "${NETBOOT_SERVER:-blockwire}" = qemu-nbd ]; then
    qemu-nbd -f raw -t -r -b 127.0.0.1 -p "$PORT" "$1" &
  else
    "$BLOCKWIRE_BIN" serve "$1" --listen "tcp:127.0.0.1:$PORT" 2>"$work/server.log" &
  fi
  spid=$!
  for _ in $(seq 100); do
    nbdinfo --size "nbd://127.0.0.1:$PORT" >/dev/null 2>&1 && break
    sleep 0.05
  done
  status=0
  # The bound is for a broken build only: the Debian boot takes 6-8 s on
  # an idle machine, ~35 s with both cores busy compiling.
  timeout 300 "$qemu" -L "$qroot/share/qemu" -M microvm -accel tcg -m "$2" \
    -nodefaults -no-user-config -nographic -no-reboot \
    -serial stdio -kernel "$elf" -append "server=10.0.2.2:$PORT" \
    -netdev user,id=n0 -device virtio-net-device,netdev=n0 \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    </dev/null >"$work/console" 2>&1 || status=$?
  stop_server
}

fail() {
  cat "$work/console"
  echo "FAIL: $*" >&2
  exit 1
}

# expect_refusal CASE MESSAGE [MEMORY]: the broken disk CASE is refused
# with MESSAGE and status 9.
expect_refusal() {
  echo "== $1: expecting \"$2\""
  local disk=$work/$1.img
  if [ "$1" = too-large ]; then disk=$work/debian.img; [ -e "$disk" ] || scripts/make-boot-disk.sh "$disk"
  else scripts/make-boot-disk.sh "$disk" "$1"; fi
  boot "$disk" "${3:-256M}"
  grep "netboot: cannot boot" "$work/console" || true
  grep -qF "$2" "$work/console" || fail "$1: no \"$2\" on the console"
  [ "$status" = 9 ] || fail "$1: QEMU exit status $status, expected 9"
  rm -f "$work/$1.img"
}

for c in $cases; do
  case $c in
    stage2)
      echo "== stage 2: an ELF at offset 0 ($(stat -c %s "$elf")-byte netboot image)"
      cp "$stage2" "$work/stage2.img"
      truncate -s 1M "$work/stage2.img"
      boot "$work/stage2.img" 128M
      grep -q "booted from nbd" "$work/console" || fail "stage 2 did not run"
      # Stage 2 writes 0x10 to isa-debug-exit: (0x10 << 1) | 1 = 33.
      [ "$status" = 33 ] || fail "QEMU exit status $status, expected 33"
      grep "netboot: loaded" "$work/console"
      ;;
    debian)
      echo "== Debian's cloud kernel from a GPT/FAT/BLS disk"
      scripts/make-boot-disk.sh "$work/debian.img"
      start=$(date +%s%N)
      boot "$work/debian.img" 256M
      took=$(( ($(date +%s%N) - start) / 1000000 ))
      grep -E "^netboot: (entry|linux|loaded)" "$work/console" || true
      grep -q "BLOCKWIRE-NETBOOT-MARKER" "$work/console" || fail "Linux did not reach the initramfs marker"
      grep -q "Kernel panic" "$work/console" && fail "Linux panicked"
      [ "$status" = 0 ] || fail "QEMU exit status $status, expected 0 (ACPI power-off)"
      grep "BLOCKWIRE-NETBOOT-MARKER" "$work/console"
      echo "power-on to Linux power-off: $took ms (QEMU start to exit, TCG)"
      ;;
    no-gpt) expect_refusal no-gpt "no GPT partition table" ;;
    no-esp) expect_refusal no-esp "no EFI system or XBOOTLDR partition" ;;
    not-fat) expect_refusal not-fat "the boot partition is not FAT" ;;
    no-entry) expect_refusal no-entry "no boot entry (loader/entries/*.conf)" ;;
    missing-file) expect_refusal missing-file "/vmlinuz-not-there: no such file on the boot partition" ;;
    not-bzimage) expect_refusal not-bzimage "the kernel is not a 64-bit Linux bzImage" ;;
    # The kernel's init_size (~52 MiB) is more than 48 MiB of RAM holds.
    too-large) expect_refusal too-large "does not fit in RAM" 48M ;;
    *) echo "unknown case $c" >&2; exit 2 ;;
  esac
done
echo "netboot: OK"
