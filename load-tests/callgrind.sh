#!/usr/bin/env bash
# Instructions per request, repeatable on a noisy machine: the server runs under callgrind
# with instrumentation off through start-up and warm-up, then on for a wrk run of a few
# seconds; total instructions (every thread: handler, actor, writer) / requests answered.
#
#   load-tests/callgrind.sh <head|hot|wide|salvo-head|salvo-hot> [seconds] [codes]
#
# LINKPULSE_BIN / SALVO_REF_BIN pick the binaries; the callgrind output stays in
# $CALLGRIND_OUT.1 (default /tmp/callgrind.<mode>.out.1) for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:?head, hot, wide, salvo-head or salvo-hot}
SECS=${2:-4}
NCODES=${3:-10000}
BIN=${LINKPULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/linkpulse}
SALVO_BIN=${SALVO_REF_BIN:-$(dirname "$BIN")/salvo-ref}
LOAD=${LINKPULSE_LOAD:-$(dirname "$BIN")/linkpulse-load}
OUT=${CALLGRIND_OUT:-/tmp/callgrind.$MODE.out}
KEY=lp_profile_key_0123456789abcdef
TMP=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
    [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && for _ in $(seq 300); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    rm -rf "$TMP"
}
trap cleanup EXIT
rm -f "$OUT" "$OUT".*
VG=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT")
case $MODE in
    salvo-*)
        "${VG[@]}" "$SALVO_BIN" "127.0.0.1:$PORT" >"$TMP/log" 2>&1 &
        PID=$!
        for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$PORT/x" && break; sleep 0.1; done
        ;;
    *)
        LINKPULSE_CREATE_RATE_PER_KEY=0 LINKPULSE_CREATE_RATE_PER_IP=0 \
        LINKPULSE_MAX_CONNECTIONS_PER_CLIENT=0 LINKPULSE_INITIAL_API_KEY=$KEY LINKPULSE_LOG=warn \
            "${VG[@]}" "$BIN" --listen "127.0.0.1:$PORT" --data-dir "$TMP/data" >"$TMP/log" 2>&1 &
        PID=$!
        for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
        n=1; [ "$MODE" = wide ] && n=$NCODES
        LINKPULSE_API_KEY=$KEY "$LOAD" --base-url "http://127.0.0.1:$PORT" redirect \
            --requests "$n" --connections 16 --codes "$n" >/dev/null
        ;;
esac
seq -f "r%07g" 1 "$NCODES" > "$TMP/codes"
url="http://127.0.0.1:$PORT/r0000001"
script=()
case $MODE in
    *head) script=(-s load-tests/wrk-head.lua) ;;
    wide) url="http://127.0.0.1:$PORT/"; script=(-s load-tests/wrk-codes.lua) ;;
esac
# Warm-up (connections made, caches filled), then the measured run on fresh connections.
CODES="$TMP/codes" wrk -t1 -c16 -d2s "${script[@]}" "$url" >/dev/null
callgrind_control -i on "$PID" >/dev/null
CODES="$TMP/codes" wrk -t1 -c16 -d"${SECS}s" "${script[@]}" "$url" > "$TMP/wrk"
sleep 0.5 # the clicks of the last requests reach the writer
callgrind_control -i off "$PID" >/dev/null
callgrind_control -d "$PID" >/dev/null
sleep 0.5
reqs=$(awk '/requests in/ {print $1}' "$TMP/wrk")
total=$(callgrind_annotate "$OUT.1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t {gsub(",","",$1); print $1; t=1}')
echo "$MODE: $reqs requests, $total instructions, $((total / reqs)) per request"
