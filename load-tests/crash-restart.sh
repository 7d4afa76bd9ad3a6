#!/usr/bin/env bash
# Times starts after a kill -9 on a data directory (seed a large one first with
# `linkpulse-load seed`).
#
#   crash-restart.sh BIN DIR ROUNDS                 # crash at rest
#   crash-restart.sh BIN DIR ROUNDS LOAD SECONDS    # crash under redirect load
#
# First the server is started on DIR, used, and killed with SIGKILL; then each round starts it
# again and prints the time from spawning the process to its first `200` on /healthz and to the
# first `302` of code s0000001, and the start-up check its log names (clean, quick or full);
# then uses it and kills it again. "Used" is 100 clicks and 1.5 s of rest; with LOAD (the
# linkpulse-load binary) it is SECONDS of `LOAD redirect` (32 connections, 1000 codes), killed
# mid-load. The server listens on 127.0.0.1:$PORT (default 18391). Every wait is bounded.
set -euo pipefail
BIN=$1 DIR=$2 ROUNDS=$3 LOAD=${4:-} SECONDS_OF_LOAD=${5:-30}
PORT=${PORT:-18391}
BASE=http://127.0.0.1:$PORT
LOG=$(mktemp)
export LINKPULSE_INITIAL_API_KEY=lp_restart_key_0123456789 LINKPULSE_LOG=info
export LINKPULSE_CREATE_RATE_PER_KEY=0 LINKPULSE_CREATE_RATE_PER_IP=0
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# Starts the server; sets PID; prints "LABEL: healthz MS, first redirect (STATUS) MS, check C".
start() {
    local t0 i
    t0=$(date +%s%N)
    "$BIN" --listen 127.0.0.1:"$PORT" --data-dir "$DIR" >/dev/null 2>"$LOG" &
    PID=$!
    for i in $(seq 1 12000); do
        curl -sf -o /dev/null --max-time 1 "$BASE/healthz" && break
        kill -0 "$PID" 2>/dev/null || { echo "the server ended:"; tail -5 "$LOG"; exit 1; }
        sleep 0.005
    done
    local up status
    up=$(ms "$t0")
    status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$BASE/s0000001")
    echo "$1: healthz ${up} ms, first redirect ($status) $(ms "$t0") ms," \
        "$(grep -o 'check="[a-z]*"' "$LOG" | tail -1)"
    # Why a full check ran, if one did.
    grep -o 'full check of every record (.*' "$LOG" | sed 's/^/  /' || true
}

use_and_kill() {
    if [[ -n $LOAD ]]; then
        LINKPULSE_API_KEY=$LINKPULSE_INITIAL_API_KEY timeout $((SECONDS_OF_LOAD + 120)) \
            "$LOAD" --base-url "$BASE" redirect --requests 100000000 --connections 32 \
            --codes 1000 --pick random >/dev/null 2>&1 &
        local load=$!
        sleep "$SECONDS_OF_LOAD"
        kill -9 "$PID"; wait "$PID" 2>/dev/null || true
        kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true
    else
        for _ in $(seq 1 100); do curl -s -o /dev/null --max-time 10 "$BASE/s0000001"; done
        sleep 1.5
        kill -9 "$PID"; wait "$PID" 2>/dev/null || true
    fi
    ls -l "$DIR"/*.jnl | awk '{n++; s+=$5} END {printf "  killed; journal: %d files, %.0f MiB\n", n, s/1048576}'
}

start "first start"
use_and_kill
for round in $(seq 1 "$ROUNDS"); do
    start "round $round"
    use_and_kill
done
rm -f "$LOG"
