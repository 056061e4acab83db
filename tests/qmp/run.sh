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
[ -x "$BLOCKWIRE_BIN" ] || { echo "no blockwire binary at $BLOCKWIRE_BIN (cargo build --release -p blockwire)" >&2; exit 1; }
exec "$venv/bin/python" "$root/tests/qmp/test_daemon.py" "$@"
