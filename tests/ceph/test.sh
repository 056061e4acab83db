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

dir=$(mktemp -d "${TMPDIR:-/tmp}/blockwire-ceph.XXXXXX")
trap 'tests/ceph/cluster.sh stop "$dir"' EXIT
t0=$SECONDS
eval "$(tests/ceph/cluster.sh start "$dir")"
echo "ceph test cluster in $dir, ready after $((SECONDS - t0)) s"
cargo test -p blockwire-rbd --features librbd
# The rbd block driver through `blockwire serve` (a release build with the
# `rbd` feature; tests/run's release build may already be one), same cluster.
cargo build --release -p blockwire --features rbd
BLOCKWIRE_BIN="$(pwd)/target/release/blockwire" \
  cargo test -p blockwire-tests --features rbd --test serve_rbd --test serve_rbd_faults
echo "ceph tests done after $((SECONDS - t0)) s; daemon memory (KiB RSS):"
tests/ceph/cluster.sh rss "$dir"
