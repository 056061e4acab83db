#!/usr/bin/env bash
# Prints the directory holding Debian's cloud kernel and busybox-static,
# unpacked (apt-get download + dpkg -x, never installed) into
# target/debian-linux/root once and reused: boot/vmlinuz-* and
# bin/busybox.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="$PWD/target/debian-linux"
root="$dest/root"
if ! ls "$root"/boot/vmlinuz-* >/dev/null 2>&1 || [ ! -x "$root/bin/busybox" ]; then
  rm -rf "$dest"
  mkdir -p "$dest/debs" "$root"
  # linux-image-cloud-amd64 is a metapackage: the kernel is the
  # linux-image-* it depends on.
  kpkg() { apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}'; }
  pkg=$(kpkg)
  [ -n "$pkg" ] || { apt-get update -qq >&2; pkg=$(kpkg); }
  [ -n "$pkg" ] || { echo "debian-linux.sh: no linux-image-cloud-amd64 in the package lists" >&2; exit 1; }
  (cd "$dest/debs" && apt-get download "$pkg" busybox-static >&2 2> >(grep -v '^W: Download is performed unsandboxed' >&2))
  for deb in "$dest"/debs/*.deb; do dpkg -x "$deb" "$root"; done
fi
echo "$root"
