#!/usr/bin/env bash
# Click-to-screen across cluster nodes beside one fjall node, in the same session:
#
#   cluster  deploy/local-cluster.sh (3 nats-servers, nodes a, b, c on R3, nginx unused here):
#            clicks to node a, viewers spread round-robin over nodes b and c
#            (linkpulse-load fanout --click-url A --viewer-urls B,C)
#   fjall    one node on fjall, clicks and viewers on it (the reference)
#
#   load-tests/cluster-fanout.sh [viewer counts] [clicks] [rate] [node deliveries/s]
#   load-tests/cluster-fanout.sh "1000 10000" 300 100 50000   (the defaults)
#
# For each viewer count, runs fanout on fjall, then on the cluster: one link, all viewers on
# it, [clicks] clicks at [rate]/s, up to 30 s to settle. Prints each run's full linkpulse-load
# output, then a table: delivery to all p50/p99/max (from sending a click until every viewer
# had a frame with its count or a later one), clicks seen by all, viewers at the final count.
#
# Raises its open-file limit to the hard limit (the nodes and the tool inherit it): 10,000
# viewers need more than 10,000 descriptors. The nodes run with the per-client stream cap
# lifted (every viewer comes from 127.0.0.1); --sse-max-per-link and --sse-max-total stay at
# their defaults (15,000 per node). Each run is bounded by `timeout`. After each run, and as
# the table's last column: who used the CPU during it, in % of one core (cpu-share.py): the
# node(s), the nats-servers, the load tool, and rest (everything else on the machine).
set -euo pipefail
cd "$(dirname "$0")/.."

VIEWERS=${1:-1000 10000}
CLICKS=${2:-300}
RATE=${3:-100}
# --sse-deliveries-per-sec of each cluster node (the fjall node keeps the default, 100000).
# Nodes b and c share this machine's two cores, each pacing its viewers as if it had them
# all; 50000 gives each its half of the one node's budget.
NODE_DELIVERIES=${4:-50000}
BIN=$(realpath "${LINKPULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/linkpulse}")
LOAD=$(realpath "${LINKPULSE_LOAD_BIN:-$(dirname "$BIN")/linkpulse-load}")
KEY=lp_cluster_fanout_key_0123456789

for tool in nginx nats-server curl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool"; exit 1; }
done
[ -x "$BIN" ] || { echo "no release binary at $BIN"; exit 1; }
[ -x "$LOAD" ] || { echo "no linkpulse-load at $LOAD"; exit 1; }
ulimit -n "$(ulimit -Hn)"
for n in $VIEWERS; do
    if [ $((n + 200)) -gt "$(ulimit -n)" ]; then
        echo "the open-file limit ($(ulimit -n)) is too low for $n viewers"
        exit 1
    fi
done

TMP=$(mktemp -d /tmp/lp-cluster-fanout.XXXXXX)
# shellcheck source-path=SCRIPTDIR source=cluster-lib.sh
. load-tests/cluster-lib.sh
CLUSTER_DIR=$TMP/cluster
cleanup() {
    if [ -d "$CLUSTER_DIR" ]; then deploy/local-cluster.sh down "$CLUSTER_DIR" >/dev/null 2>&1 || true; fi
    stop_started
    rm -rf "$TMP"
}
trap cleanup EXIT

FJ_PORT=$(free_port)
start_node fjall "$FJ_PORT" default
FJ_PID=${STARTED_PIDS[-1]}
echo "starting deploy/local-cluster.sh under $CLUSTER_DIR..." >&2
LINKPULSE_SSE_MAX_PER_CLIENT=0 LINKPULSE_MAX_CONNECTIONS_PER_CLIENT=0 LINKPULSE_BIN=$BIN \
    LINKPULSE_SSE_DELIVERIES_PER_SEC=$NODE_DELIVERIES \
    deploy/local-cluster.sh up "$CLUSTER_DIR" >"$TMP/cluster.out"
node_addr() { sed -n "s/^node=$1 .* addr=//p" "$TMP/cluster.out"; }
node_pid() { sed -n "s/^node=$1 pid=\([0-9]*\) .*/\1/p" "$TMP/cluster.out"; }
# shellcheck disable=SC1091
NATS_PIDS=$(. "$CLUSTER_DIR/cluster.env" && echo "$LP_NATS_PIDS")
A=http://$(node_addr a)
B=http://$(node_addr b)
C=http://$(node_addr c)
CLUSTER_KEY=$(sed -n 's/^key=//p' "$TMP/cluster.out")

# The value of a `key: value` line of a linkpulse-load summary.
field() { sed -n "s/^$2: *//p" "$1" | head -n1; }

RESULTS=()
run() { # label viewers out-file api-key cpu-groups linkpulse-load-args...
    local label=$1 n=$2 out=$3 key=$4 cpu rc=0 pid
    local -a groups
    read -r -a groups <<<"$5"
    shift 5
    echo
    echo "== $label, $n viewers: linkpulse-load fanout --subscribers $n --links 1 --clicks $CLICKS --rate $RATE --settle-timeout 30 $*"
    LINKPULSE_API_KEY=$key timeout 300 "$LOAD" fanout --subscribers "$n" --links 1 --clicks "$CLICKS" --rate "$RATE" \
        --settle-timeout 30 "$@" >"$out" 2>&1 &
    pid=$!
    # Who used the CPU: from the start to the last snapshot taken while the tool still ran.
    python3 load-tests/cpu-share.py snap "$TMP/cpu-0"
    rm -f "$TMP/cpu-1"
    while kill -0 "$pid" 2>/dev/null; do
        python3 load-tests/cpu-share.py snap "$TMP/cpu-next"
        if kill -0 "$pid" 2>/dev/null; then mv "$TMP/cpu-next" "$TMP/cpu-1"; fi
        sleep 1
    done
    wait "$pid" || rc=$?
    cpu=-
    if [ -f "$TMP/cpu-1" ]; then
        cpu=$(python3 load-tests/cpu-share.py report "$TMP/cpu-0" "$TMP/cpu-1" "${groups[@]}" load=comm:linkpulse-load)
    fi
    cat "$out"
    echo "cpu during the run (% of one core): $cpu"
    [ "$rc" -eq 0 ] || echo "(exit status $rc)"
    RESULTS+=("$label|$n|$out|$rc|$cpu")
}
for n in $VIEWERS; do
    run "fjall, one node" "$n" "$TMP/fjall-$n.out" "$KEY" "node=$FJ_PID" \
        --base-url "http://127.0.0.1:$FJ_PORT" --server-pid "$FJ_PID" \
        --prefix "f${n}x"
    run "cluster, clicks a, viewers b+c" "$n" "$TMP/cluster-$n.out" "$CLUSTER_KEY" \
        "a=$(node_pid a) b+c=$(node_pid b),$(node_pid c) nats=${NATS_PIDS// /,}" \
        --base-url "$A" --click-url "$A" --viewer-urls "$B,$C" \
        --prefix "g${n}x"
done

echo
echo "$CLICKS clicks at $RATE/s on one link; delivery to all = from sending a click until every viewer had its count"
printf '%-32s %7s %11s %11s %11s %10s %12s %10s %4s  %s\n' \
    setup viewers p50 p99 max "seen by all" "at final" settle rc "cpu (% of one core)"
for entry in "${RESULTS[@]}"; do
    IFS='|' read -r label n out rc cpu <<<"$entry"
    printf '%-32s %7s %11s %11s %11s %10s %12s %10s %4s  %s\n' "$label" "$n" \
        "$(field "$out" 'delivery to all p50')" "$(field "$out" 'delivery to all p99')" \
        "$(field "$out" 'delivery to all max')" \
        "$(field "$out" 'clicks seen by all' | awk '{print $1}')" \
        "$(field "$out" 'at final count' | awk '{print $1}')" \
        "$(field "$out" 'settle time')" "$rc" "$cpu"
done
