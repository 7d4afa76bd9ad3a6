#!/usr/bin/env bash
# The long tail on a cluster: [codes] distinct codes created and clicked once each through one
# node, first on one fjall node (the reference, started with --create-rate-per-key 0), then
# through node a of deploy/local-cluster.sh (3 nats-servers, 3 nodes, replicas 3), one after
# the other on the same machine:
#
#   load-tests/cluster-longtail.sh [codes] [concurrency]
#
# For each it prints linkpulse-load distinct's lines (`click time: X s (N/s)` is the rate),
# then `sum of clickCount` over the codes (linkpulse-load counts, read on the loaded node once
# its backlog is empty) and `dropped` (linkpulse_clicks_dropped_total summed over its reasons,
# on the loaded node). Ends with the cluster's click rate as a ratio of fjall's, and exits 1
# if a click was dropped or a count is not exact (the sum must equal [codes]).
#
# Needs nats-server (2.10.19 or later), nginx, curl, python3 and a release build of the
# workspace (linkpulse and linkpulse-load). Everything is on 127.0.0.1; each phase is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

NCODES=${1:-200000}
CONC=${2:-64}
BIN=$(realpath "${LINKPULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/linkpulse}")
LOAD=$(realpath "${LINKPULSE_LOAD_BIN:-$(dirname "$BIN")/linkpulse-load}")
KEY=lp_cluster_longtail_key_0123456789
TMP=$(mktemp -d)
# shellcheck source=load-tests/cluster-lib.sh
source load-tests/cluster-lib.sh
CLUSTER=$TMP/cluster
cleanup() {
    stop_started
    deploy/local-cluster.sh down "$CLUSTER" >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT
[ -x "$BIN" ] || { echo "no release binary at $BIN (cargo build --release)"; exit 1; }
[ -x "$LOAD" ] || { echo "no linkpulse-load at $LOAD (cargo build --release --workspace)"; exit 1; }

# Waits until the node has stored every click it took (linkpulse_backlog_clicks 0), 120 s at most.
drained() { # base_url
    for _ in $(seq 240); do
        local b
        b=$(curl -sf --max-time 5 "$1/metrics" | awk '$1 == "linkpulse_backlog_clicks" {print $2}')
        [ "${b:-1}" = 0 ] && return 0
        sleep 0.5
    done
    echo "the backlog of $1 did not empty within 120 s"
}

# Runs the long tail against BASE (server PID); prints its lines and sets RATE, SUM, DROPPED.
run() { # name base_url pid
    echo "== $1: $NCODES distinct codes, once each, $CONC at once"
    local out
    out=$("$LOAD" --base-url "$2" --key "$KEY" --server-pid "$3" distinct --codes "$NCODES" \
        --concurrency "$CONC" --sample-every 5 2>&1) || { echo "$out"; echo "distinct failed"; exit 1; }
    echo "$out" | grep -E '^(codes|create time|click time|clicks|peak rss)'
    RATE=$(echo "$out" | sed -n 's/^click time:.*(\([0-9.]*\)\/s).*/\1/p')
    drained "$2"
    SUM=$("$LOAD" --base-url "$2" --key "$KEY" counts --codes "$NCODES" --prefix d |
        sed -n 's/^sum of clickCount: *//p')
    DROPPED=$(dropped_of "$2")
    echo "sum of clickCount: $SUM (of $NCODES)"
    echo "dropped: $DROPPED"
}

port=$(free_port)
start_node fj "$port" default
run "fjall, one node" "http://127.0.0.1:$port" "${STARTED_PIDS[-1]}"
FJ_RATE=$RATE FJ_SUM=$SUM FJ_DROPPED=$DROPPED
stop_started

# The nodes take the environment: create limits lifted as for the fjall node.
LINKPULSE_BIN=$BIN LINKPULSE_CREATE_RATE_PER_KEY=0 LINKPULSE_CREATE_RATE_PER_IP=0 \
    deploy/local-cluster.sh up "$CLUSTER" >/dev/null
# shellcheck disable=SC1091
source "$CLUSTER/cluster.env"
KEY=$LP_KEY
run "cluster, through node a" "http://$LP_NODE_A_ADDR" "$LP_NODE_A_PID"

echo "== result"
echo "click rate, cluster / fjall: $(ratio "$RATE" "$FJ_RATE") ($RATE/s against $FJ_RATE/s)"
status=0
for pair in "fjall $FJ_SUM $FJ_DROPPED" "cluster $SUM $DROPPED"; do
    read -r name sum dropped <<<"$pair"
    if [ "$sum" != "$NCODES" ] || [ "$dropped" != 0 ]; then
        echo "$name: NOT EXACT (sum $sum of $NCODES, $dropped dropped)"
        status=1
    fi
done
exit $status
