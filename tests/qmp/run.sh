#!/usr/bin/env bash
# QMP tests of `blockwire daemon`, driven by the real qemu.qmp client
# from PyPI, installed (pinned) in a virtual environment under target/.
# Usage: tests/qmp/run.sh [TEST...]   (BLOCKWIRE_BIN: the binary to test,
# default target/release/blockwire)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
venv="$root/target/qmp-venv/venv"
want="qemu.qmp==0.0.6"
if ! "$venv/bin/python" -c 'import qemu.qmp' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "$want"
fi
export BLOCKWIRE_BIN="${BLOCKWIRE_BIN:-$root/target/release/blockwire}"
# qemu-storage-daemon 7.2 for the differential test: Debian's
# qemu-system-common, unpacked with dpkg -x beside qemu-system (never
# installed: that would replace the QEMU 10 utilities).
if [ -z "${QSD:-}" ]; then
  QSD="$(dirname "$(targets/microvm/scripts/qemu-system.sh)")/qemu-storage-daemon"
fi
export QSD
"$QSD" --version | grep -q 'version 7\.2\.' || { echo "$QSD is not qemu-storage-daemon 7.2" >&2; exit 1; }
[ -x "$BLOCKWIRE_BIN" ] || { echo "no blockwire binary at $BLOCKWIRE_BIN (cargo build --release -p blockwire)" >&2; exit 1; }
exec "$venv/bin/python" "$root/tests/qmp/test_daemon.py" "$@"
