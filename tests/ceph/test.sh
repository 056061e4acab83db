#!/usr/bin/env bash
# Every Ceph test, on one cluster: start it (tests/ceph/cluster.sh), run the
# blockwire-rbd tests with the `librbd` feature against it, stop it and
# delete it, also when a test fails. In CI (CI=true) missing Ceph packages
# are a failure; elsewhere the tests are skipped with a warning.
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
for prog in ceph-mon ceph-mgr ceph-osd ceph rbd; do
  command -v "$prog" >/dev/null || missing+=("$prog")
done
[ -e /usr/include/rbd/librbd.h ] || missing+=(librbd-dev)
if ((${#missing[@]})); then
  msg="Ceph tests need ${missing[*]} (Debian: ceph-mon ceph-mgr ceph-osd ceph-common librbd-dev)"
  if [ "${CI:-}" = true ]; then echo "ERROR: $msg" >&2; exit 1; fi
  echo "WARNING: $msg; skipping the Ceph tests" >&2
  exit 0
fi

# Not on a tmpfs: BlueStore's O_DIRECT opens of its block files fail there,
# and three sparse 10 GiB files would be charged to memory. $TMPDIR is
# preferred otherwise because its short path keeps the daemons' admin
# socket paths under the 107-byte limit of a Unix socket address.
base=${TMPDIR:-/tmp}
if [ "$(stat -f -c %T "$base")" = tmpfs ]; then
  mkdir -p target
  base=$(pwd)/target
fi
dir=$(mktemp -d "$base/blockwire-ceph.XXXXXX")
trap 'tests/ceph/cluster.sh stop "$dir"' EXIT
t0=$SECONDS
# Not `eval "$(cluster.sh start ...)"`: eval of a failed command substitution
# succeeds (its status is eval's, 0 for an empty string), and the tests then
# ran without a cluster. The assignment carries the substitution's status.
env_lines=$(tests/ceph/cluster.sh start "$dir") || {
  echo "ERROR: the Ceph test cluster did not start; its logs:" >&2
  tail -n 40 "$dir"/log/*.log >&2 2>/dev/null || true
  exit 1
}
eval "$env_lines"
echo "ceph test cluster in $dir, ready after $((SECONDS - t0)) s"
cargo test -p blockwire-rbd --features librbd
# The rbd block driver through `blockwire serve` (a release build with the
# `rbd` feature; tests/run's release build may already be one), same cluster.
cargo build --release -p blockwire --features rbd
BLOCKWIRE_BIN="$(pwd)/target/release/blockwire" \
  cargo test -p blockwire-tests --features rbd --test serve_rbd --test serve_rbd_faults
echo "ceph tests done after $((SECONDS - t0)) s; daemon memory (KiB RSS):"
tests/ceph/cluster.sh rss "$dir"
