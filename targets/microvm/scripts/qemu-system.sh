#!/usr/bin/env bash
# Prints the path of a qemu-system-x86_64 that does not disturb the
# installed QEMU 10 utilities: the Debian packages are downloaded with
# `apt-get download` and unpacked with `dpkg -x` into target/qemu-system/
# (build output); only their missing library dependencies are installed
# with apt, never a qemu-* package (that would replace the utilities).
set -euo pipefail
cd "$(dirname "$0")/.."
dest="$PWD/target/qemu-system"
bin="$dest/root/usr/bin/qemu-system-x86_64"

if [ ! -x "$bin" ]; then
  mkdir -p "$dest/debs"
  fetch() { (cd "$dest/debs" && apt-get download qemu-system-x86 qemu-system-data qemu-system-common seabios >&2); }
  # A fresh machine may have no package lists yet.
  fetch || { apt-get update -qq >&2 && fetch; }
  for deb in "$dest"/debs/*.deb; do dpkg -x "$deb" "$dest/root"; done
fi

# Library dependencies (lib* only) not yet installed.
missing=()
for deb in "$dest"/debs/qemu-system-x86_*.deb; do
  deps=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/^ *//; s/ .*//; s/|.*//')
  for pkg in $deps; do
    case "$pkg" in
      lib*) dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg") ;;
    esac
  done
done
if ((${#missing[@]})); then
  echo "qemu-system: installing libraries ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
if ldd "$bin" | grep -q "not found"; then
  ldd "$bin" | grep "not found" >&2
  exit 1
fi
echo "$bin"
