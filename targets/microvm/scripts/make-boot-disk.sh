#!/usr/bin/env bash
# make-boot-disk.sh OUT [CASE]: build a GPT boot disk image at OUT with
# the standard tools (sgdisk, mkfs.fat, mtools) from Debian's cloud kernel
# and an initramfs whose /init (busybox-static) prints
# "BLOCKWIRE-NETBOOT-MARKER" and powers off. The EFI system partition
# holds the kernel, the initramfs and loader/entries/debian.conf (Boot
# Loader Specification Type #1).
#
# CASE builds a broken disk instead, for the error paths:
#   no-gpt        a FAT file system on the whole disk, no partition table
#   no-esp        the partition is typed Linux filesystem, not ESP
#   not-fat       an ESP that holds no file system
#   no-entry      no loader/entries/*.conf
#   missing-file  the entry names a kernel that is not on the partition
#   not-bzimage   the "kernel" is busybox (an ELF, not a bzImage)
set -euo pipefail
out=$1 case=${2:-good}
here=$(cd "$(dirname "$0")" && pwd)
root=$("$here/debian-linux.sh")
kernel=$(ls "$root"/boot/vmlinuz-* | head -1)
kver=${kernel##*/vmlinuz-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export MTOOLS_SKIP_CHECK=1

# The initramfs: a newc cpio written directly (fixed owners and times, so
# the image is reproducible, and /dev/console without needing mknod).
initrd=$work/initrd.img
python3 - "$root/bin/busybox" "$initrd" <<'PY'
import gzip, sys
busybox, out = sys.argv[1], sys.argv[2]
init = b"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "BLOCKWIRE-NETBOOT-MARKER: Linux $(/bin/busybox uname -r) reached userspace from an NBD disk"
/bin/busybox poweroff -f
"""
entries = [(".", 0o040755, b"", 0), ("bin", 0o040755, b"", 0), ("dev", 0o040755, b"", 0),
           ("proc", 0o040755, b"", 0), ("dev/console", 0o020600, b"", (5 << 8) | 1),
           ("bin/busybox", 0o100755, open(busybox, "rb").read(), 0), ("init", 0o100755, init, 0)]
cpio = bytearray()
def add(name, mode, data, rdev, ino):
    n = name.encode() + b"\0"
    hdr = "070701" + "".join("%08x" % v for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev >> 8, rdev & 0xff, len(n), 0))
    cpio.extend(hdr.encode() + n)
    cpio.extend(b"\0" * (-len(cpio) % 4))
    cpio.extend(data)
    cpio.extend(b"\0" * (-len(cpio) % 4))
for i, e in enumerate(entries):
    add(*e, i + 1)
add("TRAILER!!!", 0, b"", 0, 0)
open(out, "wb").write(gzip.compress(bytes(cpio), mtime=0))
PY

mib=$(( ($(stat -c %s "$kernel") + $(stat -c %s "$initrd")) / 1048576 + 8 ))
truncate -s "${mib}M" "$out"
part=$work/part.img
if [ "$case" = no-gpt ]; then
  mkfs.fat --invariant -i 0b007d15 -n BOOT "$out" >/dev/null
  mcopy -i "$out" "$kernel" ::vmlinuz
  exit 0
fi
ptype=ef00
[ "$case" = no-esp ] && ptype=8300
sgdisk -o -n 1:2048:0 -t 1:$ptype -c 1:boot "$out" >/dev/null 2>&1
last=$(sgdisk -i 1 "$out" | awk '/Last sector/{print $3}')
[ "$case" = not-fat ] && exit 0
truncate -s $(( (last - 2048 + 1) * 512 )) "$part"
mkfs.fat --invariant -i 0b007d15 -n BOOT "$part" >/dev/null
linux=/vmlinuz-$kver
if [ "$case" = not-bzimage ]; then
  mcopy -i "$part" "$root/bin/busybox" "::vmlinuz-$kver"
else
  mcopy -i "$part" "$kernel" "::vmlinuz-$kver"
fi
mcopy -i "$part" "$initrd" "::initrd.img-$kver"
[ "$case" = missing-file ] && linux=/vmlinuz-not-there
if [ "$case" != no-entry ]; then
  mmd -i "$part" ::loader ::loader/entries
  cat >"$work/entry.conf" <<CONF
title   Debian GNU/Linux 12 ($kver)
version $kver
linux   $linux
initrd  /initrd.img-$kver
options panic=-1
CONF
  mcopy -i "$part" "$work/entry.conf" ::loader/entries/debian.conf
fi
dd if="$part" of="$out" bs=512 seek=2048 conv=notrunc status=none
