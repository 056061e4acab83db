#!/usr/bin/env bash
# A throw-away single-host Ceph cluster for tests: one mon, one mgr, three
# bluestore OSDs on sparse files, all inside DIR, all on 127.0.0.1, cephx on.
# See tests/ceph/README.md for the layout and why each setting is there.
#
#   cluster.sh start DIR              create and start; prints the env lines
#   cluster.sh stop DIR               kill every daemon of DIR, delete DIR (idempotent)
#   cluster.sh env DIR                print `export CEPH_CONF=...` etc. for `eval`
#   cluster.sh status DIR             `ceph -s`
#   cluster.sh kill-osd DIR ID        SIGKILL one OSD and wait until the mon marks it down
#   cluster.sh restart-osd DIR ID     start it again and wait until it is up
#   cluster.sh wait-clean DIR         wait until every PG is active+clean
#   cluster.sh create-pool DIR POOL [PG_NUM]     replicated pool, `rbd pool init`
#   cluster.sh create-image DIR POOL/IMAGE SIZE [rbd create options...]
#   cluster.sh ceph DIR ARGS...       run the `ceph` CLI as client.admin
#   cluster.sh rbd DIR ARGS...        run the `rbd` CLI as client.admin
#   cluster.sh rss DIR                resident memory of each daemon (KiB)
#
# Needs Debian's ceph-mon, ceph-mgr, ceph-osd, ceph-common (`tests/run`
# installs them). Never binds anything but 127.0.0.1.
set -euo pipefail

# Every wait below is bounded: a cluster that does not come up fails loudly
# instead of hanging the test run.
WAIT_SECS=${CEPH_TEST_WAIT_SECS:-180}
OSDS=3
POOL=${CEPH_TEST_POOL:-blockwire}

die() { echo "cluster.sh: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

abs_dir() {
  [ -n "${1:-}" ] || usage
  case "$1" in
    /*) printf '%s\n' "${1%/}" ;;
    *) printf '%s/%s\n' "$(pwd)" "${1%/}" ;;
  esac
}

conf_of() { printf '%s/ceph.conf\n' "$1"; }

# The `ceph` CLI as client.admin, with a bounded connect time.
cephc() {
  local dir=$1; shift
  ceph --conf "$(conf_of "$dir")" --name client.admin --connect-timeout 30 "$@"
}
rbdc() {
  local dir=$1; shift
  rbd --conf "$(conf_of "$dir")" --name client.admin "$@"
}

# A free TCP port on 127.0.0.1 (the kernel picks it; the tiny race until the
# mon binds it is acceptable on a test machine, and a clash fails loudly).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Poll CMD (a shell function name + args) until it succeeds, at most WAIT_SECS.
wait_for() {
  local what=$1; shift
  local deadline=$((SECONDS + WAIT_SECS))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      die "timed out after ${WAIT_SECS}s waiting for $what"
    fi
    sleep 0.5
  done
}

osd_count_up() {  # prints "up in"
  cephc "$1" osd stat -f json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); d=d.get("osdmap",d); print(d["num_up_osds"], d["num_in_osds"])'
}
all_osds_up() { [ "$(osd_count_up "$1")" = "$OSDS $OSDS" ]; }

osd_is() {  # osd_is DIR ID up|down
  local state
  state=$(cephc "$1" osd dump -f json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); o=[o for o in d["osds"] if o["osd"]=='"$2"']; print("up" if o and o[0]["up"] else "down")') || return 1
  [ "$state" = "$3" ]
}

pgs_clean() {
  local out
  out=$(cephc "$1" status -f json 2>/dev/null |
    python3 -c '
import json, sys
d = json.load(sys.stdin)["pgmap"]
total = d.get("num_pgs", 0)
clean = sum(s["count"] for s in d.get("pgs_by_state", []) if s["state_name"] == "active+clean")
print("yes" if total > 0 and clean == total else "no")') || return 1
  [ "$out" = yes ]
}

mgr_available() {
  [ "$(cephc "$1" mgr stat -f json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("available"))')" = True ]
}

# ---------------------------------------------------------------------------

write_conf() {
  local dir=$1 fsid=$2 port_v2=$3 port_v1=$4
  cat >"$dir/ceph.conf" <<EOF
# Written by tests/ceph/cluster.sh: a test cluster in $dir
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$port_v2,v1:127.0.0.1:$port_v1]
mon initial members = a
# Loopback only: every daemon binds to 127.0.0.1, never another address.
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.0/8
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
# Two copies so that one OSD can fail; stay writable with one copy left.
osd pool default size = 2
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
# One host: replicas go to different OSDs, not different hosts.
osd crush chooseleaf type = 0
# A killed OSD is reported by either survivor at once (connection refused).
mon osd min down reporters = 1
mon allow pool delete = true
run dir = $dir/run
pid file = $dir/run/\$name.pid
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
mon cluster log file = $dir/log/cluster.log
log to stderr = false
err to stderr = true
crash dir = $dir/crash

[client]
keyring = $dir/\$cluster.\$name.keyring
# Clients are many processes of one name: one log and socket per process.
log file = $dir/log/\$name.\$pid.log
admin socket = $dir/run/\$name.\$pid.\$cctid.asok

[mon]
mon data = $dir/mon/\$id
keyring = $dir/mon/\$id/keyring
mon data avail warn = 2
mon data avail crit = 1

[mgr]
mgr data = $dir/mgr/\$id
keyring = $dir/mgr/\$id/keyring
# Only what the tests use: the mgr's C++ core keeps PG statistics; the Python
# modules (even the always-on ones) cost memory and CPU for nothing here.
mgr disabled modules = diskprediction_local iostat nfs restful
mgr initial modules =

[osd]
osd data = $dir/osd/\$id
keyring = $dir/osd/\$id/keyring
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 10737418240
bluestore fsck on mkfs = false
# Modest memory: fixed small caches instead of the 4 GiB autotuned target.
bluestore cache autotune = false
bluestore cache size = 67108864
osd memory target = 939524096
bluestore rocksdb options = compression=kNoCompression,max_write_buffer_number=2,min_write_buffer_number_to_merge=1,recycle_log_file_num=2,write_buffer_size=16777216,writable_file_max_buffer_size=0,compaction_readahead_size=2097152
osd op num shards = 2
osd op num threads per shard = 1
ms async op threads = 2
osd max backfills = 4
EOF
}

start_osd_daemon() {
  local dir=$1 id=$2
  # Daemons fork; their few stderr lines go to the log dir, not the test output.
  ceph-osd --conf "$(conf_of "$dir")" -i "$id" 2>>"$dir/log/osd.$id.stderr"
}

cmd_start() {
  local dir=$1 t0=$SECONDS
  command -v ceph-mon >/dev/null && command -v ceph-osd >/dev/null &&
    command -v ceph-mgr >/dev/null && command -v ceph >/dev/null ||
    die "ceph-mon, ceph-mgr, ceph-osd and ceph (ceph-common) are needed"
  [ ! -e "$dir/ceph.conf" ] || die "$dir already holds a cluster (stop it first)"
  mkdir -p "$dir"/{run,log,crash,mon/a,mgr/x}

  local fsid port_v2 port_v1
  fsid=$(uuidgen)
  port_v2=$(free_port)
  port_v1=$(free_port)
  [ "$port_v2" != "$port_v1" ] || port_v1=$(free_port)
  write_conf "$dir" "$fsid" "$port_v2" "$port_v1"
  local conf
  conf=$(conf_of "$dir")

  # Keys: mon., client.admin (everything), client.blockwire (what a
  # blockwire server needs: `profile rbd` on the test pool only).
  ceph-authtool "$dir/mon.keyring" --create-keyring --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$dir/ceph.client.admin.keyring" --create-keyring --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
  ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/ceph.client.admin.keyring" >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port_v2,v1:127.0.0.1:$port_v1]" "$dir/monmap" >/dev/null
  ceph-mon --conf "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon.keyring"
  ceph-mon --conf "$conf" -i a 2>>"$dir/log/mon.a.stderr"
  wait_for "the monitor" cephc "$dir" mon stat >/dev/null
  log "mon up after $((SECONDS - t0))s"

  cephc "$dir" auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
    -o "$dir/mgr/x/keyring"
  ceph-mgr --conf "$conf" -i x 2>>"$dir/log/mgr.x.stderr"

  local i uuid secret id
  for ((i = 0; i < OSDS; i++)); do
    uuid=$(uuidgen)
    secret=$(ceph-authtool --gen-print-key)
    id=$(printf '{"cephx_secret": "%s"}' "$secret" | cephc "$dir" osd new "$uuid" -i -)
    mkdir -p "$dir/osd/$id"
    ceph-authtool "$dir/osd/$id/keyring" --create-keyring --name "osd.$id" --add-key "$secret" >/dev/null
    ceph-osd --conf "$conf" -i "$id" --mkfs --osd-uuid "$uuid" >"$dir/log/osd.$id.mkfs.log" 2>&1 ||
      { cat "$dir/log/osd.$id.mkfs.log" >&2; die "mkfs of osd.$id failed"; }
    start_osd_daemon "$dir" "$id"
  done
  wait_for "$OSDS OSDs up and in" all_osds_up "$dir"
  log "$OSDS OSDs up after $((SECONDS - t0))s"

  cmd_create_pool "$dir" "$POOL" 8
  cephc "$dir" auth get-or-create client.blockwire mon 'profile rbd' osd "profile rbd pool=$POOL" \
    mgr "profile rbd pool=$POOL" -o "$dir/ceph.client.blockwire.keyring"
  wait_for "the mgr" mgr_available "$dir"
  wait_for "all PGs active+clean" pgs_clean "$dir"
  log "cluster ready in $((SECONDS - t0))s (pool $POOL)"
  cmd_env "$dir"
}

# Kill every process whose command line names this cluster's ceph.conf:
# exactly the daemons this script started for DIR, nothing else.
cluster_pids() {
  local conf=$1 p
  for p in /proc/[0-9]*; do
    [ -r "$p/cmdline" ] || continue
    if tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qxF -- "$conf"; then
      echo "${p#/proc/}"
    fi
  done
}

cmd_stop() {
  local dir=$1 conf pids deadline
  conf=$(conf_of "$dir")
  pids=$(cluster_pids "$conf")
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    # The cluster is thrown away: a short grace for a clean exit, then KILL.
    deadline=$((SECONDS + 3))
    while [ -n "$(cluster_pids "$conf")" ] && ((SECONDS < deadline)); do sleep 0.2; done
    pids=$(cluster_pids "$conf")
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while [ -n "$(cluster_pids "$conf")" ] && ((SECONDS < deadline)); do sleep 0.2; done
    [ -z "$(cluster_pids "$conf")" ] || die "daemons of $dir survived SIGKILL: $(cluster_pids "$conf")"
  fi
  rm -rf -- "$dir"
}

cmd_env() {
  local dir=$1 conf mon_host
  conf=$(conf_of "$dir")
  [ -e "$conf" ] || die "no cluster in $dir"
  mon_host=$(sed -n 's/^mon host = //p' "$conf")
  local v1=${mon_host##*v1:}
  v1=${v1%]}
  cat <<EOF
export CEPH_CONF='$conf'
export BLOCKWIRE_CEPH_DIR='$dir'
export BLOCKWIRE_CEPH_MON_HOST='$mon_host'
export BLOCKWIRE_CEPH_MON_V1='$v1'
export BLOCKWIRE_CEPH_POOL='$POOL'
export BLOCKWIRE_CEPH_USER='blockwire'
export BLOCKWIRE_CEPH_KEY='$(ceph-authtool -p -n client.blockwire "$dir/ceph.client.blockwire.keyring")'
export BLOCKWIRE_CEPH_ADMIN_KEY='$(ceph-authtool -p -n client.admin "$dir/ceph.client.admin.keyring")'
EOF
}

cmd_kill_osd() {
  local dir=$1 id=$2 pidf pid
  pidf="$dir/run/osd.$id.pid"
  [ -s "$pidf" ] || die "osd.$id has no pid file"
  pid=$(cat "$pidf")
  kill -KILL "$pid" 2>/dev/null || die "osd.$id (pid $pid) is not running"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  rm -f "$pidf"
  wait_for "osd.$id marked down" osd_is "$dir" "$id" down
}

cmd_restart_osd() {
  local dir=$1 id=$2
  start_osd_daemon "$dir" "$id"
  wait_for "osd.$id up" osd_is "$dir" "$id" up
}

cmd_create_pool() {
  local dir=$1 pool=$2 pgs=${3:-8}
  cephc "$dir" osd pool create "$pool" "$pgs" "$pgs" replicated >/dev/null
  rbdc "$dir" pool init "$pool"
}

cmd_create_image() {
  local dir=$1 spec=$2 size=$3
  shift 3
  rbdc "$dir" create --size "$size" "$@" "$spec"
}

cmd_rss() {
  local dir=$1 p args total=0 rss
  for p in $(cluster_pids "$(conf_of "$dir")"); do
    args=$(tr '\0' ' ' <"/proc/$p/cmdline")
    case "$args" in ceph-mon* | ceph-mgr* | ceph-osd*) ;; *) continue ;; esac
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status")
    total=$((total + rss))
    echo "$args" | awk -v rss="$rss" '{sub(/^ceph-/, "", $1); printf "%s.%s %d KiB\n", $1, $NF, rss}'
  done
  echo "total $total KiB"
}

cmd=${1:-}
[ $# -ge 2 ] || usage
dir=$(abs_dir "$2")
shift 2
case "$cmd" in
  start) cmd_start "$dir" ;;
  stop) cmd_stop "$dir" ;;
  env) cmd_env "$dir" ;;
  status) cephc "$dir" -s ;;
  kill-osd) [ $# = 1 ] || usage; cmd_kill_osd "$dir" "$1" ;;
  restart-osd) [ $# = 1 ] || usage; cmd_restart_osd "$dir" "$1" ;;
  wait-clean) wait_for "all PGs active+clean" pgs_clean "$dir" ;;
  create-pool) [ $# -ge 1 ] || usage; cmd_create_pool "$dir" "$@" ;;
  create-image) [ $# -ge 2 ] || usage; cmd_create_image "$dir" "$@" ;;
  ceph) cephc "$dir" "$@" ;;
  rbd) rbdc "$dir" "$@" ;;
  rss) cmd_rss "$dir" ;;
  *) usage ;;
esac
