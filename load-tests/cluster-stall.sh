#!/usr/bin/env bash
# A JetStream stall under load: deploy/local-cluster.sh up, wrk on one link of node a, every
# nats-server frozen with SIGSTOP for STALL seconds, then continued. Prints how long after the
# thaw node a makes a link again, how many clicks were answered, dropped (past
# --click-backlog) and stored, and whether every answered click not dropped is stored exactly.
#
#   load-tests/cluster-stall.sh path/to/linkpulse [stall-seconds] [wrk-seconds]
#
# Needs nats-server, nginx, wrk, curl, python3. Everything is on 127.0.0.1; every wait is
# bounded.
set -euo pipefail

BIN=${1:?usage: cluster-stall.sh LINKPULSE_BINARY [stall-seconds] [wrk-seconds]}
STALL=${2:-10}
SECS=${3:-30}
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=$(mktemp -d)
cleanup() {
    for pid in ${LP_NATS_PIDS:-}; do kill -CONT "$pid" 2>/dev/null || true; done
    "$HERE/../deploy/local-cluster.sh" down "$DIR" >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT

LINKPULSE_BIN=$BIN "$HERE/../deploy/local-cluster.sh" up "$DIR" >/dev/null
# shellcheck disable=SC1091
source "$DIR/cluster.env"
A=$LP_NODE_A_ADDR
KEY=$LP_KEY
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
metric() { curl -fsS "http://$A/metrics" | awk -v n="$1" '$1==n {print $2}'; }

curl -fsS "http://$A/api/links" -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
    -d '{"url":"https://example.com/stall","code":"stall"}' >/dev/null

wrk -t2 -c64 -d"${SECS}s" "http://$A/stall" >"$DIR/wrk.txt" 2>&1 &
WRK=$!
sleep 5
echo "freezing every nats-server for ${STALL}s"
for pid in $LP_NATS_PIDS; do kill -STOP "$pid"; done
sleep "$STALL"
for pid in $LP_NATS_PIDS; do kill -CONT "$pid"; done
THAW=$(date +%s.%N)
n=0
until curl -fsS -o /dev/null -m 10 "http://$A/api/links" -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' -d "{\"url\":\"https://example.com/x\",\"code\":\"after$n\"}"; do
    n=$((n + 1))
    [ "$n" -lt 120 ] || { echo "node a made no link within 60 s of the thaw"; exit 1; }
    sleep 0.5
done
MADE=$(python3 -c "import sys,time; print(f'{time.time()-float(sys.argv[1]):.2f}')" "$THAW")
echo "node a made a link ${MADE}s after the thaw"
wait "$WRK"
REQS=$(awk '/requests in/ {print $1}' "$DIR/wrk.txt")
BAD=$(awk '/Non-2xx or 3xx/ {print $5}' "$DIR/wrk.txt")
ERRS=$(awk '/Socket errors/ {print $0}' "$DIR/wrk.txt")
ANSWERED=$((REQS - ${BAD:-0}))
DROPPED=$(metric 'linkpulse_clicks_dropped_total{reason="backlog"}')
EXPECT=$((ANSWERED - DROPPED))
for _ in $(seq 1 120); do
    STORED=$(curl -fsS "http://$A/api/links/stall" -H "Authorization: Bearer $KEY" | json '["clickCount"]')
    [ "$STORED" -ge "$EXPECT" ] && break
    sleep 0.5
done
echo "wrk: $REQS requests, ${BAD:-0} not 2xx/3xx ${ERRS:+($ERRS)}"
echo "answered 302: $ANSWERED; dropped past the backlog: $DROPPED; stored: $STORED (expected $EXPECT)"
# wrk does not count the requests in flight when its time is up (at most one per connection,
# 64), which the server may have answered and counted.
EXTRA=$((STORED - EXPECT))
if [ "$EXTRA" -ge 0 ] && [ "$EXTRA" -le 64 ]; then
    echo "every answered click not dropped is stored ($EXTRA more: requests wrk left in flight)"
else
    echo "MISMATCH: $EXTRA"
    exit 1
fi
